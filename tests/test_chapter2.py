"""Chapter 2 on the toy world (known answers) and against the offline cache under the real names.

The toy world's prompt sets carry planted confounds (longer happy prompts with stray words, angry
prompts ending in '!', a null control group) and planted confound features (two position features, a
length feature, a '!' and a ' really' feature): the verdicts must call the concepts concept and none
of the confounds.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

import MechInterpFeatureMeaning as ch2
from mechinterp.cli import options_from
from mechinterp.core import constants
from mechinterp.core.encoding import PromptAggregates, aggregate_prompts, tokenize
from mechinterp.core.errors import UserError
from mechinterp.core.pipeline import EncodeOptions
from mechinterp.core.prompts import PromptOptions
from mechinterp.core.source import SourceOptions, demo_prompts_dir, resolve_source
from mechinterp.core.summaries import SparseRow
from mechinterp.core.toyworld import GROUP_STYLE, LENGTH_START, demo_prompt_sets
from mechinterp.meaning import design, stats, verdicts
from mechinterp.meaning.contrast import MeaningOptions, contrast_groups
from mechinterp.meaning.options import ConfoundSettings
from mechinterp.meaning.run import contrast_prompts


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def demo_run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ch2demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert ch2.main(["--demo", "--out", str(out), "--quiet", "--verbose"]) == 0
    (out / "stdout.txt").write_text(printed.getvalue(), encoding="utf-8")
    return out


def test_planted_concepts_are_rank_one_and_replicate(world, demo_run):
    rows = read_rows(demo_run / "feature_stats.csv")
    for concept, feature in world.planted.concept.items():
        top = next(r for r in rows if r["group"] == concept and r["rank"] == "1")
        assert int(top["feature"]) == feature
        assert float(top["q_value"]) < 1e-6
        assert float(top["auroc"]) == 1.0 and top["direction"] == "up"
        assert top["replicated"] == "yes"
        assert float(top["frac_active_group"]) == 1.0 and float(top["frac_active_baseline"]) == 0.0


def test_null_group_has_no_discoveries(demo_run):
    rows = read_rows(demo_run / "feature_stats.csv")
    control = [r for r in rows if r["group"] == "control"]
    assert control, "the control group was analysed"
    assert sum(float(r["q_value"]) < 0.05 for r in control) == 0
    assert not any(r["replicated"] == "yes" for r in control)


def test_always_on_features_are_listed_not_ranked(world, demo_run):
    listed = {int(r["feature"]) for r in read_rows(demo_run / "always_on_features.csv")}
    assert set(world.planted.always_on) <= listed
    for r in read_rows(demo_run / "feature_stats.csv"):
        if int(r["feature"]) in listed:
            assert r["rank"] == "" and r["always_on"] == "yes"
    record = json.loads((demo_run / "MechInterpFeatureMeaning_run.json").read_text())
    assert set(world.planted.always_on) <= set(record["always_on_features"])
    assert any("BOS" in note for note in record["filtered"])


def test_figures_and_their_numbers_are_written(demo_run):
    from PIL import Image

    for name in ("MI2.png", "MI3.png", "MI4_happy.png", "MI4_angry.png", "MI4_control.png"):
        with Image.open(demo_run / name) as img:
            assert img.size[0] > 800 and np.asarray(img.convert("L")).std() > 10
    mi3 = read_rows(demo_run / "MI3.csv")
    happy_top = [r for r in mi3 if r["panel"] == "happy" and r["prompt_group"] == "happy"]
    assert len({r["prompt"] for r in happy_top}) == 48


def test_fdr_holds_for_null_groups_across_seeds(loaded_toy):
    """Two groups drawn from the same distribution, five seeds: at most one seed may show any discovery."""
    seeds_with_discoveries = 0
    for seed in range(5):
        groups = demo_prompt_sets(n_per_group=40, seed=100 + seed)
        texts = groups["baseline"] + groups["control"]
        rows = aggregate_prompts(loaded_toy, tokenize(loaded_toy, texts), batch_size=32)
        agg = PromptAggregates(rows, loaded_toy.sae.d_sae)
        x, y = agg.dense("max", range(40, 80)), agg.dense("max", range(40))
        c = stats.contrast(x, y)
        seeds_with_discoveries += bool((c.q_value < 0.05).any())
    assert seeds_with_discoveries <= 1


def test_pvalues_match_scipy_on_a_sample_of_features(world, loaded_toy, tmp_path):
    out = tmp_path / "out"
    assert ch2.main(["--demo", "--out", str(out), "--no-holdout", "--groups", "happy", "--quiet", "--verbose"]) == 0
    rows = {int(r["feature"]): r for r in read_rows(out / "feature_stats.csv") if r["group"] == "happy"}
    # Recompute the per-prompt max activations independently, then test each feature with scipy.
    groups = demo_prompt_sets()
    texts = groups["happy"] + groups["baseline"]
    agg = PromptAggregates(aggregate_prompts(loaded_toy, tokenize(loaded_toy, texts), batch_size=1), loaded_toy.sae.d_sae)
    # Batch size 1 here, 16 in the script: the same activations differ in the 7th digit (more on some
    # CPUs), so ties between prompts would flip. The project's statistics count values within 1e-4
    # (relative) of each other as tied (stats.snap_ties); the reference sees the same snapped values.
    both = stats.snap_ties(agg.dense("max", range(96)).astype(float))
    x, y = both[:48], both[48:]
    sample = np.random.default_rng(0).choice(sorted(rows), size=25, replace=False)
    for f in [*sample, world.planted.concept["happy"]]:
        # 48 vs 48: U's distribution is symmetric, so the normal approximation serves (no exact p needed).
        assert rows[f]["p_method"] == "normal approximation"
        ref = sps.mannwhitneyu(x[:, f], y[:, f], method="asymptotic")
        assert float(rows[f]["p_value"]) == pytest.approx(ref.pvalue, rel=1e-5), f
        auroc = ref.statistic / (48 * 48)
        assert float(rows[f]["auroc"]) == pytest.approx(auroc, abs=1e-6)


def test_user_adds_a_group_without_code_changes(world, tmp_path, capsys):
    """The default model flags (offline cache under the real names), the shipped prompts, plus sad.txt."""
    prompts = tmp_path / "prompts"
    shutil.copytree(Path(ch2.__file__).parent / "prompts", prompts)
    (prompts / "sad.txt").write_text(
        "# sad prompts added by a user\n"
        + "\n".join(f"I felt sad and lonely on day {i} of the long grey winter." for i in range(12))
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    assert ch2.main(["--prompts", str(prompts), "--out", str(out), "--verbose"]) == 0
    printed = capsys.readouterr().out
    assert "=== sad vs baseline" in printed and "gpt2-small-res-jb/blocks.8.hook_resid_pre" in printed
    assert (out / "MI4_sad.png").is_file()
    groups = {r["group"] for r in read_rows(out / "feature_stats.csv")}
    assert groups == {"happy", "angry", "sad"}
    # sad has 12 prompts (< 20), so the held-out split is off by default and the run says so.
    assert "no held-out split" in printed


def test_mean_aggregation_also_recovers_planted_features(world, tmp_path):
    out = tmp_path / "out"
    assert ch2.main(["--demo", "--out", str(out), "--agg", "mean", "--no-holdout", "--quiet", "--verbose"]) == 0
    rows = read_rows(out / "feature_stats.csv")
    happy_top = next(r for r in rows if r["group"] == "happy" and r["rank"] == "1")
    assert int(happy_top["feature"]) == world.planted.concept["happy"]
    # Mean activation over a ~12-token prompt is the max diluted by the prompt's length.
    assert 0.05 < float(happy_top["mean_group"]) < 0.5
    record = json.loads((out / "MechInterpFeatureMeaning_run.json").read_text())
    assert record["holdout"] == 0.0 and happy_top["replicated"] == "not tested"


# --------------------------------------------------------------------------------------------------
# Confounds: design checks, evidence and verdicts (issue 14)


def significant_replicated(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r["rank"] and float(r["q_value"]) < 0.05 and r["replicated"] == "yes"]


def test_verdicts_on_the_demo_world(world, demo_run):
    """Every planted concept is rank 1 with verdict concept, at most one other concept per group, no
    planted confound feature is a concept (each significant one gets its own verdict), the null group
    gets none, and exactly the significant, replicated features have a verdict."""
    rows = read_rows(demo_run / "feature_stats.csv")
    planted = world.planted
    expected = {planted.length: "length", **{f: "positional" for f in planted.position.values()},
                **{f: "lexical" for f in [*planted.punctuation.values(), *planted.stray.values()]}}
    judged_confounds = {}
    for group in ("happy", "angry", "control"):
        mine = [r for r in rows if r["group"] == group]
        judged = significant_replicated(mine)
        assert {int(r["feature"]) for r in mine if r["verdict"]} == {int(r["feature"]) for r in judged}
        assert all(r["verdict"] in verdicts.VERDICTS and r["evidence"] for r in judged)
        assert all(not r["evidence"] for r in mine if not r["verdict"])
        concepts = [int(r["feature"]) for r in judged if r["verdict"] == "concept"]
        if group == "control":
            assert judged == [] and concepts == []
            continue
        top = next(r for r in mine if r["rank"] == "1")
        assert int(top["feature"]) == planted.concept[group] and top["verdict"] == "concept", top["evidence"]
        assert len(concepts) <= 2
        for r in judged:
            if int(r["feature"]) in expected:
                judged_confounds[int(r["feature"])] = r["verdict"]
    assert judged_confounds == {f: expected[f] for f in judged_confounds}
    # The demo's confounds are strong enough that every planted confound feature is found and judged.
    assert set(judged_confounds) == set(expected)


def test_design_checks_warn_about_the_planted_confounds_only(demo_run):
    rows = read_rows(demo_run / constants.DESIGN_CSV)
    length = {r["group"]: r for r in rows if r["check"] == "token length" and r["measure"] == "mean"}
    assert length["happy"]["flagged"] == "yes" and float(length["happy"]["p_value"]) < 1e-4
    assert length["angry"]["flagged"] == "no" and length["control"]["flagged"] == "no"
    # The counts are the prompt files' own: ' really' in 22 happy and 3 baseline prompts, and so on.
    groups = demo_prompt_sets()
    really = next(r for r in rows if r["group"] == "happy" and r["item"] == "' really'")
    assert int(really["group_value"]) == sum(" really " in t for t in groups["happy"])
    assert int(really["baseline_value"]) == sum(" really " in t for t in groups["baseline"])
    bang = next(r for r in rows if r["group"] == "angry" and r["check"] == "sentence ending" and r["item"] == "'!'")
    assert int(bang["group_value"]) == sum(t.endswith("!") for t in groups["angry"]) and bang["flagged"] == "yes"
    ref = sps.fisher_exact([[int(bang["group_value"]), 48 - int(bang["group_value"])], [0, 48]])
    assert float(bang["p_value"]) == pytest.approx(ref.pvalue, rel=1e-3)
    assert not [r for r in rows if r["group"] == "control" and r["flagged"] == "yes"]
    printed = (demo_run / "stdout.txt").read_text(encoding="utf-8")
    assert "happy vs baseline: your prompt sets differ in" in printed and "token length: happy prompts are longer" in printed
    assert "control vs baseline: no difference in token length" in printed


def test_evidence_matches_the_prompts(world, demo_run):
    """The '!' feature's evidence, counted again from the prompt files."""
    bang = world.planted.punctuation["!"]
    rows = read_rows(demo_run / constants.EVIDENCE_CSV)
    row = next(r for r in rows if r["group"] == "angry" and int(r["feature"]) == bang)
    n_bang = sum(t.endswith("!") for t in demo_prompt_sets()["angry"])
    assert row["verdict"] == "lexical" and row["top_token"] == "!" and row["peak_position"]
    assert int(row["fired_group"]) == n_bang and int(row["fired_baseline"]) == 0
    assert row["peak_tokens"] == f"'!' {n_bang}/0 in {n_bang}/0"
    assert f"peaks on '!' in {n_bang} of {n_bang} firing angry prompts" in row["evidence"]
    assert float(row["injection_reproduced"]) > 0.9 and row["token_control"] in ("vanishes", "weakened")
    stats_row = next(r for r in read_rows(demo_run / "feature_stats.csv")
                     if r["group"] == "angry" and int(r["feature"]) == bang)
    assert stats_row["evidence"] == row["evidence"]
    # Every significant ranked feature has evidence, judged or not.
    for group in ("happy", "angry"):
        sig = {int(r["feature"]) for r in read_rows(demo_run / "feature_stats.csv")
               if r["group"] == group and r["rank"] and float(r["q_value"]) < 0.05}
        assert {int(r["feature"]) for r in rows if r["group"] == group} == sig


def test_verdicts_are_shown_and_recorded(world, demo_run):
    printed = (demo_run / "stdout.txt").read_text(encoding="utf-8")
    assert "verdict" in printed.splitlines()[printed.splitlines().index(next(
        line for line in printed.splitlines() if line.startswith("rank  feature")))]
    assert f"#{world.planted.concept['happy']} concept: peaks on 8 different words" in printed
    mi3 = read_rows(demo_run / "MI3.csv")
    assert {r["verdict"] for r in mi3 if int(r["feature"]) == world.planted.concept["angry"]} == {"concept"}
    record = json.loads((demo_run / "MechInterpFeatureMeaning_run.json").read_text())
    # In happy: the planted concept and, at most, the holiday topic that 70% of the happy prompts mention,
    # and then flagged as a second theme. Nothing else is a concept.
    planted, stats = world.planted, read_rows(demo_run / "feature_stats.csv")
    happy = {int(r["feature"]): r for r in stats if r["group"] == "happy"}
    concepts = {f for f, r in happy.items() if r["verdict"] == "concept"}
    assert planted.concept["happy"] in concepts <= {planted.concept["happy"], planted.topic}
    assert happy[planted.concept["happy"]]["word_set_flag"] == ""
    if planted.topic in concepts:
        assert happy[planted.topic]["word_set_flag"].startswith("a second theme")
        assert "happy's concept findings rest on disjoint word sets" in " ".join(printed.split())
    # In calm: the two halves are one family, and nothing is a single-feature concept.
    calm = {int(r["feature"]): r for r in stats if r["group"] == "calm"}
    label = "+".join(map(str, sorted(planted.split["calm"])))
    assert {f for f, r in calm.items() if r["verdict"]} == set(planted.split["calm"])
    assert all(calm[f]["verdict"] == "concept (split)" and calm[f]["family"] == label for f in planted.split["calm"])
    assert not [r for r in stats if r["group"] != "calm" and r["family"]]
    assert record["verdicts"]["happy"]["concept"] == len(concepts) and sum(record["verdicts"]["control"].values()) == 0
    assert record["design_warnings"]["control"] == [] and record["design_warnings"]["happy"]
    assert record["test"] == "Mann-Whitney U" and any("van Elteren" in c for c in record["controls"])
    assert any("replicated" in note for note in record["filtered"])


def test_planted_confound_features_fire_where_planted(world, loaded_toy):
    texts = ["The driver opened the window and was quiet.", "My sister visited the garden at noon and was really glad!",
             "Our team painted a red car last week and was really glad, as always."]
    rows = aggregate_prompts(loaded_toy, tokenize(loaded_toy, texts), batch_size=3)
    agg = PromptAggregates(rows, loaded_toy.sae.d_sae)
    planted = world.planted
    n_tokens = [r.n_tokens for r in rows]
    assert n_tokens[0] <= LENGTH_START < n_tokens[1] < n_tokens[2]
    features = np.array([*planted.position.values(), planted.length])
    peaks, values = agg.peaks(range(3), features), agg.dense("max", range(3), features)
    for k, position in enumerate(planted.position):
        for i in range(3):
            assert (peaks[i, k] == position) == (n_tokens[i] > position)  # any token there, nothing elsewhere
    # The length feature is silent before LENGTH_START and peaks on the last token, higher in longer prompts.
    assert list(peaks[:, -1]) == [-1, n_tokens[1] - 1, n_tokens[2] - 1] and values[2, -1] > values[1, -1] > 0
    tok = loaded_toy.model.tokenizer
    for token, feature in {**planted.punctuation, **planted.stray}.items():
        fires = agg.dense("max", range(3), np.array([feature]))[:, 0] > 0
        assert list(fires) == [token in tok.decode(tok.encode(t)) for t in texts]


def test_design_check_warns_on_longer_prompts_and_stays_quiet_on_matched_ones(world):
    """Five other draws of the demo's prompt sets, tokenized with the demo's tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world.model_dir)

    def tokenized(texts):
        ids = [tok.encode(t) for t in texts]
        return design.TokenizedPrompts(texts, ids, [[tok.decode([i]) for i in row] for row in ids])

    assert GROUP_STYLE["happy"][1] > 0 and GROUP_STYLE["angry"][:2] == GROUP_STYLE["baseline"][:2]
    for seed in range(5):
        groups = demo_prompt_sets(n_per_group=40, seed=200 + seed)
        base = tokenized(groups["baseline"])
        assert design.check_design(tokenized(groups["happy"]), base).length.differs
        for quiet in ("angry", "calm", "control"):
            assert not design.check_design(tokenized(groups[quiet]), base).length.differs
        assert design.check_design(tokenized(groups["control"]), base).warnings == []


def test_paired_demo_matches_scipy_wilcoxon_and_lists_each_pair(world, loaded_toy, tmp_path):
    out = tmp_path / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert ch2.main(["--demo", "--paired", "--no-holdout", "--groups", "happy", "--out", str(out), "--quiet", "--verbose"]) == 0
    rows = {int(r["feature"]): r for r in read_rows(out / "feature_stats.csv")}
    assert {r["test"] for r in rows.values()} == {"Wilcoxon signed-rank (paired)"}
    happy = world.planted.concept["happy"]
    assert rows[happy]["rank"] == "1" and rows[happy]["verdict"] == "concept"
    # p-values: scipy's Wilcoxon signed-rank test on the 48 line pairs, recomputed from the model.
    groups = demo_prompt_sets()
    agg = PromptAggregates(aggregate_prompts(loaded_toy, tokenize(loaded_toy, groups["happy"] + groups["baseline"]),
                                             batch_size=48), loaded_toy.sae.d_sae)
    x, y = agg.dense("max", range(48)).astype(float), agg.dense("max", range(48, 96)).astype(float)
    # Differences within 1e-4 (relative) of the pair's activations are float noise (batch size 48 here, 16
    # in the script), counted as zero, and tied |d| made equal, as the project does; below 50 non-zero
    # differences p is exact, checked here by enumerating every sign pattern where that is quick.
    d = np.where(np.abs(x - y) <= 1e-4 * np.maximum(x, y), 0.0, x - y)
    d = np.sign(d) * stats.snap_ties(np.abs(d))
    checked = [f for f in rows if 0 < np.count_nonzero(d[:, f]) <= 14]
    assert len(checked) >= 10
    for f in checked:
        assert rows[f]["p_method"] == "exact"
        assert float(rows[f]["p_value"]) == pytest.approx(enumerated_signed_rank(d[:, f]), rel=1e-5), f  # 6 digits in the CSV
    # Each pair's differing tokens: the happy line's tokens not in its baseline line, and the reverse.
    tok = loaded_toy.model.tokenizer
    pairs = read_rows(out / constants.DESIGN_PAIRS_CSV)
    assert [int(p["line"]) for p in pairs] == list(range(1, 49))

    def extra(a: list[str], b: list[str]) -> str:
        """The tokens of ``a`` beyond those of ``b`` (as multisets), in ``a``'s order."""
        left, out = Counter(a) - Counter(b), []
        for t in a:
            if left[t] > 0:
                out.append(repr(t))
                left[t] -= 1
        return " ".join(out)

    for p, g, b in zip(pairs, groups["happy"], groups["baseline"]):
        gt, bt = [tok.decode([i]) for i in tok.encode(g)], [tok.decode([i]) for i in tok.encode(b)]
        assert (p["only_in_group"], p["only_in_baseline"]) == (extra(gt, bt), extra(bt, gt)), p
    assert "pair 1: only in happy:" in printed.getvalue()
    record = json.loads((out / "MechInterpFeatureMeaning_run.json").read_text())
    assert record["paired"] and "paired lines" in " ".join(record["design_warnings"]["happy"])


def _rows_from(values: np.ndarray) -> list[SparseRow]:
    """Sparse per-prompt rows of a dense ``[n_prompts, d_sae]`` max (peak at token 0, one token per prompt)."""
    out = []
    for v in values:
        idx = np.flatnonzero(v > 0).astype(np.int32)
        out.append(SparseRow(idx, v[idx].astype(np.float32), v[idx].astype(np.float32), 1,
                             peak=np.zeros(len(idx), np.int32)))
    return out


def enumerated_signed_rank(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p over every sign pattern of the non-zero differences (midranks)."""
    nz = d[d != 0]
    ranks = sps.rankdata(np.abs(nz))
    signs = (np.arange(2 ** len(nz))[:, None] >> np.arange(len(nz))[None, :]) & 1
    sums = signs @ ranks
    observed = ranks[nz > 0].sum()
    return min(1.0, 2 * min((sums >= observed - 1e-9).mean(), (sums <= observed + 1e-9).mean()))


def test_paired_contrast_keeps_pairs_together_and_uses_wilcoxon():
    rng = np.random.default_rng(3)
    n, d = 14, 40
    base = np.where(rng.random((n, d)) < 0.6, rng.gamma(2.0, 0.5, (n, d)), 0.0).round(2)
    shift = np.where(np.arange(d) < 10, 0.6, 0.05)  # ten features rise in the group, line by line
    group = np.where(base > 0, base + shift + rng.normal(0.0, 0.2, (n, d)), 0.0).clip(0).round(2)
    agg = PromptAggregates(_rows_from(np.r_[base, group]), d)
    # The summaries are float32, as the encoder stores them; the reference sees the same numbers.
    base, group = base.astype(np.float32).astype(float), group.astype(np.float32).astype(float)
    labels = ["baseline"] * n + ["g"] * n
    result = contrast_groups(agg, labels, ["baseline", "g"], "baseline", MeaningOptions(paired=True, no_holdout=True))
    c = result.findings["g"].contrast
    for pos, f in enumerate(c.tested):
        if np.any(group[:, f] != base[:, f]):
            diff = np.round(group[:, f] - base[:, f], 4)  # the 0.01 grid, without float32 noise
            # At 0.01 resolution no difference is float noise and every tie is exact: p is the exact p.
            assert c.exact[pos] and c.p_value[pos] == pytest.approx(enumerated_signed_rank(diff), rel=1e-9)
    # With a held-out split, line i of the group is held out exactly when line i of the baseline is.
    n = 30
    base = np.where(rng.random((n, d)) < 0.6, rng.gamma(2.0, 0.5, (n, d)), 0.0).round(2)
    group = np.where(base > 0, base + shift + rng.normal(0.0, 0.2, (n, d)), 0.0).clip(0).round(2)
    agg = PromptAggregates(_rows_from(np.r_[base, group]), d)
    base, group = base.astype(np.float32).astype(float), group.astype(np.float32).astype(float)
    labels = ["baseline"] * n + ["g"] * n
    split = contrast_groups(agg, labels, ["baseline", "g"], "baseline", MeaningOptions(paired=True, holdout=0.5))
    assert split.findings["g"].contrast.n_group == split.findings["g"].contrast.n_baseline == 15
    held = stats.split_indices(n, 0.5, np.random.default_rng(0))[1]
    retested = split.findings["g"].replication
    assert len(retested) >= 3
    p_ref = [enumerated_signed_rank(np.round(group[held, f] - base[held, f], 4)) for f in retested]
    for (f, rep), q in zip(retested.items(), sps.false_discovery_control(p_ref)):
        assert rep.q_value == pytest.approx(q, rel=1e-9)
        unpaired = sps.mannwhitneyu(group[held, f], base[held, f], method="asymptotic")
        assert rep.auroc == pytest.approx(unpaired.statistic / 15**2)
    with pytest.raises(ValueError, match="as many prompts as the baseline"):
        contrast_groups(agg, labels[:-1] + ["baseline"], ["baseline", "g"], "baseline", MeaningOptions(paired=True))


def test_paired_refuses_files_of_different_lengths(tmp_path, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "baseline.txt").write_text("\n".join(f"The door {i} was closed." for i in range(12)), encoding="utf-8")
    (prompts / "happy.txt").write_text("\n".join(f"The door {i} was glad." for i in range(11)), encoding="utf-8")
    assert ch2.main(["--demo", "--paired", "--prompts", str(prompts), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--paired needs as many prompts in each group as in the baseline (12), but happy has 11" in err


# --------------------------------------------------------------------------------------------------
# The package without the script: the entry point, the accessors and the reprs a notebook shows


@pytest.fixture(scope="module")
def demo_result(world, demo_run):
    """contrast_prompts with the script's default options, after the script ran (so from the cache)."""
    source = resolve_source(SourceOptions(demo=True))
    return contrast_prompts(source, PromptOptions(), MeaningOptions(holdout=None), encode=EncodeOptions(quiet=True))


def test_contrast_prompts_computes_what_the_script_writes(demo_run, demo_result):
    rows = read_rows(demo_run / "feature_stats.csv")
    assert demo_result.groups == ["angry", "calm", "control", "happy"] and demo_result.holdout == 0.5
    assert demo_result.prompts.folder == demo_prompts_dir() and demo_result.summaries.cache_misses == 0
    for group in demo_result.groups:
        ranked = sorted((r for r in rows if r["group"] == group and r["rank"]), key=lambda r: int(r["rank"]))
        top = demo_result.group(group).top()
        assert [t.feature for t in top] == [int(r["feature"]) for r in ranked]
        for t, r in zip(top, ranked):
            assert f"{t.q:.6g}" == r["q_value"] and f"{t.p:.6g}" == r["p_value"]
            assert round(t.auroc, 6) == float(r["auroc"]) and round(t.frac_group, 6) == float(r["frac_active_group"])
            assert round(t.frac_baseline, 6) == float(r["frac_active_baseline"])
            assert t.replicated == {"yes": True, "no": False, "not tested": None}[r["replicated"]]
            assert (t.verdict or "") == r["verdict"] and (t.evidence if t.verdict else "") == r["evidence"]
    # The run record's facts come from the same result.
    record = json.loads((demo_run / "MechInterpFeatureMeaning_run.json").read_text())
    assert record["discoveries"] == {g: f.n_significant() for g, f in demo_result.findings.items()}
    assert set(demo_result.seconds) == {"load", "encode", "cache", "statistics"}


def test_accessors_and_short_reprs(world, demo_result):
    happy = demo_result.group("happy")
    assert happy is demo_result.findings["happy"] and happy.baseline == "baseline" and happy.alpha == 0.05
    best = happy.top(1)[0]
    assert (best.rank, best.feature, best.verdict, best.replicated) == (1, world.planted.concept["happy"], "concept", True)
    assert best.q == happy.contrast.q_value[best.position] and best.q < 1e-6
    assert best.auroc == 1.0 and (best.frac_group, best.frac_baseline) == (1.0, 0.0)
    assert best.evidence.startswith("peaks on 8 different words that mark happy prompts")
    with pytest.raises(KeyError, match="the contrasted groups are angry, calm, control, happy"):
        demo_result.group("baseline")
    # The control group: nothing significant, nothing judged.
    control = demo_result.group("control").top(3)
    assert all(r.verdict is None and r.evidence is None and r.replicated is None and r.q >= 0.05 for r in control)

    text = repr(demo_result)
    assert len(text) < 1000
    n = sum(f.n_significant() for f in demo_result.findings.values())
    angry = demo_result.group("angry").top(1)[0]
    calm = demo_result.group("calm").top(1)[0]  # one of the two features the calm concept is split over
    assert calm.feature in world.planted.split["calm"] and calm.q < 0.05 and calm.verdict
    assert text == (
        "MeaningResult(groups=['angry', 'calm', 'control', 'happy'], baseline='baseline', Mann-Whitney U, "
        f"holdout 0.5, {n} significant at q < 0.05, top: angry #{angry.feature} concept q={angry.q:.2g}, "
        f"calm #{calm.feature} {calm.verdict} q={calm.q:.2g}, control none, happy #{best.feature} concept "
        f"q={best.q:.2g})"
    )
    finding = repr(happy)
    assert len(finding) < 1000
    assert finding.startswith(f"GroupFinding('happy' vs 'baseline': {happy.n_significant()} of "
                              f"{len(happy.contrast.tested)} tested at q < 0.05, ")
    assert f"top: #{best.feature} concept q={best.q:.2g}, " in finding
    counts = happy.verdict_counts()
    assert "verdicts " + ", ".join(f"{c} {v}" for v, c in counts.items() if c) in finding
    assert repr(demo_result.group("control")).endswith("0 replicated; top: none)")
    assert repr(best) == (f"RankedFeature(rank=1, feature={best.feature}, q={best.q:.2g}, auroc=1.00, "
                          "fires 100% vs 0%, replicated=True, verdict='concept')")


def test_holdout_is_resolved_by_the_options():
    sizes = {"baseline": 48, "happy": 20}
    assert MeaningOptions().holdout_for(sizes) == 0.5  # the default, in a notebook as on the command line
    assert MeaningOptions(holdout=0.0).holdout_for(sizes) == 0.0
    assert MeaningOptions(holdout=None).holdout_for({"baseline": 48, "happy": 19}) == 0.0
    assert MeaningOptions(holdout=0.3).holdout_for(sizes) == 0.3
    assert MeaningOptions(holdout=None, no_holdout=True).holdout_for(sizes) == 0.0
    assert MeaningOptions(holdout=0.3).holdout_given and not MeaningOptions(holdout=None).holdout_given
    with pytest.raises(UserError, match="contradict each other"):
        MeaningOptions(holdout=0.3, no_holdout=True)
    with pytest.raises(UserError, match="agg must be 'max' or 'mean'"):
        MeaningOptions(agg="median")


def test_flags_come_from_the_options(capsys):
    """Every flag keeps its name, args attribute and default; the options are built back from them."""
    args = ch2.parse_args([])
    assert {k: v for k, v in vars(args).items() if k in (
        "prompts", "groups", "baseline", "duplicates", "max_prompts", "sample_seed", "agg", "alpha", "holdout",
        "no_holdout", "seed", "always_on", "top_k", "paired", "batch_size", "no_cache")} == {
        "prompts": None, "groups": None, "baseline": "baseline", "duplicates": "drop", "max_prompts": None,
        "sample_seed": 0, "agg": "max", "alpha": 0.05, "holdout": None, "no_holdout": False, "seed": 0,
        "always_on": 0.9, "top_k": 10, "paired": False, "batch_size": None, "no_cache": False}
    assert list(vars(args))[:16] == ["prompts", "groups", "baseline", "duplicates", "max_prompts", "sample_seed",
                                     "agg", "alpha", "holdout", "no_holdout", "seed", "always_on", "top_k", "paired",
                                     "batch_size", "no_cache"]
    args = ch2.parse_args(["--no-cache", "--batch-size", "3", "--holdout", "0.25", "--agg", "mean", "--paired"])
    assert options_from(args, EncodeOptions, quiet=True) == EncodeOptions(batch_size=3, use_cache=False, quiet=True)
    options = options_from(args, MeaningOptions)
    assert (options.holdout, options.agg, options.paired, options.confounds) == (0.25, "mean", True, ConfoundSettings())
    with pytest.raises(SystemExit):
        ch2.parse_args(["--holdout", "0.3", "--no-holdout"])
    assert "--holdout and --no-holdout contradict each other; pick one" in capsys.readouterr().err


def test_default_terminal_is_a_short_summary_and_the_full_report_is_saved(world, demo_run, tmp_path, capsys):
    """Without --verbose the demo prints at most about 60 lines; the full report is a file, the same as --verbose."""
    out = tmp_path / "out"
    assert ch2.main(["--demo", "--out", str(out), "--quiet"]) == 0
    brief = capsys.readouterr().out
    assert len(brief.splitlines()) <= 62, brief
    # The summary still names each group's concept and its words, the split family and the topic flag ...
    happy, angry = world.planted.concept["happy"], world.planted.concept["angry"]
    assert f"      {happy}  up " in brief and f"      {angry}  up " in brief
    assert f"#{happy} on ' elated'" in brief.replace("\n    ", " ")
    assert "concept (split)" in brief and "(topic?)" in brief
    assert "control: nothing flagged" in brief and "angry: more '!'" in brief
    # ... and points to the full report, which is what --verbose prints (without the list of written files).
    report = (out / "MechInterpFeatureMeaning_report.txt").read_text(encoding="utf-8")
    assert str(out / "MechInterpFeatureMeaning_report.txt") in brief.replace("\n  ", "")
    verbose = (demo_run / "stdout.txt").read_text(encoding="utf-8")
    cache = re.compile(r"cache: \d+ hits, \d+ misses")  # this run found the fixture's prompts in the cache
    assert cache.sub("", report.strip()) == cache.sub("", verbose.split("\nWrote ")[0].strip())
    assert "why, one example of each" in report and "Rank = significant features" in report
