"""One token, one position number in every chapter (BOS = 0, the model's own index).

The toy world plants a feature that fires on whatever token sits at one absolute position. The test
follows one such token through the chapters' outputs:

* Chapter 3's card, over the demo's happy prompts, writes its top example and the peak's ``peak_position``;
* Chapter 1, on that example's text, prints and writes the same token at the same ``pos``;
* Chapter 2's verdict on the happy prompts says the feature "peaks at position N (BOS = 0)", and
  ``feature_evidence.csv`` writes the same ``peak_position``;
* Chapter 6, on the same text, splits a head's contribution by source and finds BOS N tokens back.

The number is anchored to TransformerLens: it indexes ``cache[hook][0, pos]`` at the feature's
maximum. Before the convention was shared, Chapters 2 and 3 said 13 where Chapters 1 and 6 said 14.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import MechInterpFeatureInspect as ch3
import MechInterpFeatureMeaning as ch2
import MechInterpFeatureToWeights as ch6
import MechInterpInitialInvestigation as ch1
from mechinterp.core.positions import BOS_ZERO
from mechinterp.core.source import demo_prompts_dir
from mechinterp.core.toyworld import POSITION_FEATURES

TEXT_POSITION = max(POSITION_FEATURES)  # the toy world plants it among text tokens (0 = first after BOS)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _run(main, argv: list[str]) -> str:
    """A chapter's ``main`` in-process; returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def followed(world, tmp_path_factory) -> dict:
    """Chapter 3's top example of the position feature: the token the other chapters must agree on.

    Only the happy prompts are read (the longer ones, that reach the position): a quarter of the work."""
    feature = world.planted.position[TEXT_POSITION]
    prompts = tmp_path_factory.mktemp("prompts")
    shutil.copy(demo_prompts_dir() / "happy.txt", prompts / "happy.txt")
    out = tmp_path_factory.mktemp("ch3")
    _run(ch3.main, ["--demo", "--quiet", "--prompts", str(prompts), "--feature", str(feature), "--top-prompts", "1",
                    "--out", str(out)])
    top = json.loads((out / f"feature_{feature}.json").read_text(encoding="utf-8"))["top_examples"][0]
    return {"feature": feature, "text": "".join(top["tokens"]), "token": top["peak_token"],
            "position": top["peak_position"], "max": top["max_activation"]}


def test_chapter3_position_indexes_the_transformerlens_cache(followed, loaded_toy):
    """The card's position is the model's index: BOS at 0, and the SAE's maximum at cache[hook][0, pos]."""
    model, sae = loaded_toy.model, loaded_toy.sae
    pos = followed["position"]
    assert pos == TEXT_POSITION + 1  # one BOS in front of the text
    assert model.to_str_tokens(followed["text"])[pos] == followed["token"]
    with torch.inference_mode():
        _, cache = model.run_with_cache(followed["text"], names_filter=sae.hook_name)
        acts = sae.sae.encode(cache[sae.hook_name][0])[:, followed["feature"]]  # [pos], BOS included
    assert int(acts[1:].argmax()) + 1 == pos  # the peak among text tokens, counted with BOS = 0
    assert float(acts[pos]) == pytest.approx(followed["max"], abs=1e-4)


def test_chapter1_prints_and_writes_the_same_position(followed, tmp_path):
    printed = _run(ch1.main, ["--demo", "--text", followed["text"], "--top-k", "20", "--out", str(tmp_path)])
    row = next(r for r in _read_csv(tmp_path / "MI1.csv") if int(r["feature"]) == followed["feature"])
    assert (row["peak_token"], int(row["peak_position"])) == (followed["token"], followed["position"])
    cells = [r for r in _read_csv(tmp_path / "MI1_token_activations.csv") if int(r["feature"]) == followed["feature"]]
    peak_cell = max(cells, key=lambda r: float(r["activation"]))
    assert (peak_cell["token"], int(peak_cell["position"])) == (followed["token"], followed["position"])
    # The printed table's row: rank, feature and its markers, max act, peak token, pos.
    # (after the id, markers: ▲ dense, ◆ positional, ● BOS)
    row_text = rf"\s*\d+\s+{followed['feature']}( [▲◆●]+)?\s+\S+\s+{re.escape(repr(followed['token']))}\s+(\d+)\s"
    shown = [m.group(2) for m in map(re.compile(row_text).match, printed.splitlines()) if m]
    assert shown == [str(followed["position"])], printed
    assert f"pos = position in the model's token sequence ({BOS_ZERO})" in " ".join(printed.split())  # wrapped


def test_chapter2_verdict_and_evidence_give_the_same_position(followed, tmp_path):
    _run(ch2.main, ["--demo", "--quiet", "--groups", "happy", "--out", str(tmp_path)])
    row = next(r for r in _read_csv(tmp_path / "feature_evidence.csv")
               if r["group"] == "happy" and int(r["feature"]) == followed["feature"])
    assert row["verdict"] == "positional", row
    assert int(row["peak_position"]) == followed["position"]
    assert f"peaks at position {followed['position']} ({BOS_ZERO})" in row["evidence"], row["evidence"]
    # Every position the sentence names (its peak, and the reach control's "reach / do not reach position N").
    assert set(re.findall(r"position (\d+)", row["evidence"])) == {str(followed["position"])}, row["evidence"]
    assert "text position" not in row["evidence"]  # the old, BOS-less count


def test_chapter6_distances_end_at_the_positions_chapter1_prints(followed, world, tmp_path):
    """Chapter 6 writes distances: from a token at position p, BOS is p tokens back, and a source at
    position q is p - q back. The carry-over happy feature fires on its word and the next tokens, which
    attention brings there; the position feature has no attention sources in the demo world."""
    feature = world.planted.concept[world.planted.carry]
    ch1_out = tmp_path / "ch1"
    _run(ch1.main, ["--demo", "--text", followed["text"], "--top-k", "20", "--out", str(ch1_out)])
    cells = [r for r in _read_csv(ch1_out / "MI1_token_activations.csv")
             if int(r["feature"]) == feature and float(r["activation"]) > 0]
    firing = {int(r["position"]) for r in cells}  # as Chapter 1 writes them (BOS = 0)
    word = max(cells, key=lambda r: float(r["activation"]))  # the concept word: the feature peaks on it
    assert len(firing) >= 2  # the word and at least one token after it
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "one.txt").write_text(followed["text"] + "\n", encoding="utf-8")
    out = tmp_path / "out"
    _run(ch6.main, ["--demo", "--quiet", "--prompts", str(prompts), "--feature", str(feature),
                    "--top-heads", "1", "--n-sources", "64", "--n-ablate", "0", "--out", str(out)])
    sources = _read_csv(out / f"MI9_{feature}_sources.csv")
    bos = [r for r in sources if r["source_token"] == "<BOS>"]
    assert bos and int(bos[0]["typical_offset"]) in firing, (sources, firing)
    own = [r for r in sources if r["source_token"] == word["token"]]
    assert own and int(own[0]["typical_offset"]) in {p - int(word["position"]) for p in firing}, own
    offsets = _read_csv(out / f"MI9_{feature}_offsets.csv")
    assert max(int(r["tokens_back"]) for r in offsets) <= max(firing)  # nothing lies further back than BOS
