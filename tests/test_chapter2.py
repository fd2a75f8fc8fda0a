"""Chapter 2 on the toy world (known answers) and against the offline cache under the real names."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

import MechInterpFeatureMeaning as ch2
from mechinterp import stats
from mechinterp.encoding import PromptAggregates, aggregate_prompts, tokenize
from mechinterp.toyworld import demo_prompt_sets


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def demo_run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ch2demo")
    assert ch2.main(["--demo", "--out", str(out), "--quiet"]) == 0
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
    assert ch2.main(["--demo", "--out", str(out), "--no-holdout", "--groups", "happy", "--quiet"]) == 0
    rows = {int(r["feature"]): r for r in read_rows(out / "feature_stats.csv") if r["group"] == "happy"}
    # Recompute the per-prompt max activations independently, then test each feature with scipy.
    groups = demo_prompt_sets()
    texts = groups["happy"] + groups["baseline"]
    agg = PromptAggregates(aggregate_prompts(loaded_toy, tokenize(loaded_toy, texts), batch_size=1), loaded_toy.sae.d_sae)
    x, y = agg.dense("max", range(48)), agg.dense("max", range(48, 96))
    sample = np.random.default_rng(0).choice(sorted(rows), size=25, replace=False)
    for f in [*sample, world.planted.concept["happy"]]:
        ref = sps.mannwhitneyu(x[:, f].astype(float), y[:, f].astype(float), method="asymptotic")
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
    assert ch2.main(["--prompts", str(prompts), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "=== sad vs baseline" in printed and "gpt2-small-res-jb/blocks.8.hook_resid_pre" in printed
    assert (out / "MI4_sad.png").is_file()
    groups = {r["group"] for r in read_rows(out / "feature_stats.csv")}
    assert groups == {"happy", "angry", "sad"}
    # sad has 12 prompts (< 20), so the held-out split is off by default and the run says so.
    assert "no held-out split" in printed


def test_mean_aggregation_also_recovers_planted_features(world, tmp_path):
    out = tmp_path / "out"
    assert ch2.main(["--demo", "--out", str(out), "--agg", "mean", "--no-holdout", "--quiet"]) == 0
    rows = read_rows(out / "feature_stats.csv")
    happy_top = next(r for r in rows if r["group"] == "happy" and r["rank"] == "1")
    assert int(happy_top["feature"]) == world.planted.concept["happy"]
    # Mean activation over a ~12-token prompt is the max diluted by the prompt's length.
    assert 0.05 < float(happy_top["mean_group"]) < 0.5
    record = json.loads((out / "MechInterpFeatureMeaning_run.json").read_text())
    assert record["holdout"] == 0.0 and happy_top["replicated"] == "not tested"
