"""Chapter 1 flags what is not a word feature: positional, BOS and dense features.

The rule (:mod:`mechinterp.investigate.flags`) on small synthetic summaries, each condition able to
fail on its own; then the demo world, where the planted position features must be flagged positional
and the planted word features must not; then the BOS flag, on a feature made to fire on BOS.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

import MechInterpInitialInvestigation as ch1
from mechinterp.core.source import resolve_prompt_folder
from mechinterp.core.summaries import PromptAggregates, SparseRow
from mechinterp.investigate import flags as fl
from mechinterp.investigate import text_features as tf
from mechinterp.investigate.report import flag_legend, token_heatmap

D_SAE = 8
N_TEXTS = 10
POS_FEATURE, TEMPLATE_FEATURE, RARE_FEATURE, SPREAD_FEATURE = 1, 2, 3, 4


def _aggregates() -> PromptAggregates:
    """Ten 12-token texts: feature 1 peaks at text index 5 on a different token in each; feature 2 also
    peaks at 5 but always on token 99 (a template word); feature 3 peaks at 5 in only 4 texts; feature 4
    peaks at 5 in half the texts and elsewhere in the rest."""
    rows = []
    for i in range(N_TEXTS):
        tokens = np.arange(100 + 12 * i, 112 + 12 * i, dtype=np.int32)
        tokens[5] = 99 if i % 2 else tokens[5]  # half the texts have the template word at index 5
        feats, peaks = [POS_FEATURE, SPREAD_FEATURE], [5, 5 if i < 5 else i + 1]
        if i % 2:
            feats.append(TEMPLATE_FEATURE)
            peaks.append(5)
        if i < 4:
            feats.append(RARE_FEATURE)
            peaks.append(5)
        n = len(feats)
        rows.append(SparseRow(np.array(feats, dtype=np.int32), np.ones(n, np.float32), np.ones(n, np.float32), 12,
                              peak=np.array(peaks, dtype=np.int32), tokens=tokens))
    return PromptAggregates(rows, D_SAE)


def test_positional_rule_each_condition():
    agg = _aggregates()
    found = fl.positional_features(agg, [POS_FEATURE, TEMPLATE_FEATURE, RARE_FEATURE, SPREAD_FEATURE, 7], n_skip=1)
    # Only the feature at one position on varied tokens, reported at its model position (BOS = 0).
    assert found == {POS_FEATURE: 6}
    assert fl.positional_features(agg, [POS_FEATURE], n_skip=0) == {POS_FEATURE: 5}


def test_positional_rule_thresholds_are_the_named_constants(monkeypatch):
    agg = _aggregates()
    monkeypatch.setattr(fl, "POSITIONAL_MIN_TEXTS", 4)  # 4 texts are now enough
    assert RARE_FEATURE in fl.positional_features(agg, [RARE_FEATURE], 1)
    monkeypatch.setattr(fl, "POSITIONAL_SHARE", 0.5)  # half the peaks at one place are now enough
    assert SPREAD_FEATURE in fl.positional_features(agg, [SPREAD_FEATURE], 1)
    monkeypatch.setattr(fl, "POSITIONAL_MAX_TOKEN_SHARE", 1.0)  # a template word now passes too
    assert TEMPLATE_FEATURE in fl.positional_features(agg, [TEMPLATE_FEATURE], 1)


def test_reference_texts_pair_each_prompt_with_the_next(tmp_path):
    path = tmp_path / "baseline.txt"
    path.write_text("A one.\nB two.\nC three.\n", encoding="utf-8")
    assert fl.reference_texts(path) == ["A one. B two.", "B two. C three.", "C three. A one."]


def test_heatmap_marks_flagged_rows_and_explains_them():
    fig = token_heatmap(np.ones((3, 4)), ["a", "b", "c", "d"], [7, 8, 9], "t", 1,
                        [["positional"], [], ["BOS", "dense"]])
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["#7 ◆", "#8", "#9 ●▲"]
    title = ax.get_title()
    assert "◆ positional" in title and "● fires on BOS" in title and "▲ dense" in title
    assert flag_legend([]) == ""


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_demo_flags_planted_positions_and_not_planted_words(world, tmp_path, capsys):
    assert ch1.main(["--demo", "--out", str(tmp_path)]) == 0
    rows = {int(r["feature"]): r for r in read_csv(tmp_path / "MI1.csv")}
    planted = world.planted
    for text_pos, feature in planted.position.items():
        assert rows[feature]["flag"] == "positional", (text_pos, feature)
        assert int(rows[feature]["peak_position"]) == text_pos + 1  # BOS = 0
    for concept in ("happy", "angry"):
        assert rows[planted.concept[concept]]["flag"] == ""
    positional = {f for f, r in rows.items() if "positional" in r["flag"]}
    assert positional == set(planted.position.values())
    # Dense stays as the sparsity file decides it.
    assert all(("dense" in r["flag"]) == (r["dense"] == "yes") for r in rows.values())
    printed = capsys.readouterr().out
    n_ref = len(fl.reference_texts(resolve_prompt_folder(None, True) / "baseline.txt"))
    assert f"in {n_ref} reference texts" in printed
    assert any(line.startswith(f"   5  {planted.position[11]} ◆") for line in printed.splitlines())
    record = json.loads((tmp_path / "MechInterpInitialInvestigation_run.json").read_text())
    assert record["flags"]["n_reference_texts"] == n_ref
    assert set(record["flags"]["positional"]) == {str(f) for f in planted.position.values()}


def test_bos_flag_marks_a_feature_that_fires_on_bos(loaded_toy, monkeypatch):
    real = tf.encode_tokens
    fake = 7  # a feature made to fire hugely on BOS and a little on one text token

    def encode_with_bos_feature(loaded, tokens):
        acts = real(loaded, tokens).clone()
        acts[0, 0, fake], acts[0, 2, fake] = 9.0, 5.0
        return acts

    monkeypatch.setattr(tf, "encode_tokens", encode_with_bos_feature)
    result = tf.top_features(loaded_toy, "I was thrilled when it came.", top_k=30)
    by_feature = {r.feature: r for r in result.rows}
    assert "BOS" in by_feature[fake].flags
    assert [f for f, r in by_feature.items() if "BOS" in r.flags] == [fake]


# The GPT-2-faithful world's check is in tests/test_gpt2_world.py, on its shared default Chapter 1 run.
