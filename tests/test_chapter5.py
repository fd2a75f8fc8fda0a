"""Chapter 5: training SAEs - scored against ground truth, saved, and used by Chapter 1 through --sae-path."""

from __future__ import annotations

import csv
import json
import re
import warnings
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import MechInterpInitialInvestigation as ch1
import MechInterpTrainSAE as ch5
from mechinterp.core.errors import UserError
from mechinterp.training.common import ARCHITECTURES, MODE_DEFAULTS
from mechinterp.training.on_model import ModelOptions, model_training_spec, training_data
from mechinterp.training.synthetic import SyntheticOptions


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


SMALL_SYNTHETIC = [
    "--synthetic", "--n-features", "64", "--hidden-dim", "16", "--training-tokens", "300000",
    "--batch-size", "512", "--lr", "0.01", "--l1-coefficient", "0.5", "--k", "4", "--eval-samples", "5000",
    "--quiet",
]


def test_synthetic_recovers_planted_features_far_above_chance(tmp_path):
    assert ch5.main([*SMALL_SYNTHETIC, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "MI8.json").read_text())
    rows = read_csv(tmp_path / "MI8.csv")
    assert len(rows) == 64

    # Chance level, computed here independently: the same 64 true features (SAELens' dictionary is
    # deterministic from the seed) against 64 random unit directions, averaged over a few draws.
    from sae_lens.synthetic import FeatureDictionary

    true = FeatureDictionary(64, 16, seed=0).feature_vectors.detach()
    true = true / true.norm(dim=1, keepdim=True)
    chance_mean, chance_recovery = [], []
    for seed in range(5):
        rand = torch.randn(64, 16, generator=torch.Generator().manual_seed(100 + seed))
        rand = rand / rand.norm(dim=1, keepdim=True)
        best = (rand @ true.T).abs().max(dim=0).values
        chance_mean.append(float(best.mean()))
        chance_recovery.append(float((best > 0.9).float().mean()))
    assert max(chance_recovery) < 0.1

    for result in summary["results"]:
        arch = result["architecture"]
        max_cos = np.array([float(r[f"{arch}_max_cos"]) for r in rows])
        # The table's numbers are the ones behind the figure.
        assert result["recovery"] == pytest.approx(float((max_cos > 0.9).mean()))
        assert result["mean_max_cos"] == pytest.approx(float(max_cos.mean()), abs=1e-6)
        assert result["mean_max_cos"] > np.mean(chance_mean) + 0.3
        assert result["dead_latents"] < 16
    assert summary["best_recovery"] >= 0.6 > 6 * max(chance_recovery)
    topk = next(r for r in summary["results"] if r["architecture"] == "topk")
    assert topk["l0"] <= 4 + 1e-9  # TopK never has more than k active latents
    assert (tmp_path / "MI7.png").stat().st_size > 20_000 and (tmp_path / "MI8.png").stat().st_size > 20_000
    curves = read_csv(tmp_path / "MI7.csv")
    assert {r["architecture"] for r in curves} == {"standard", "topk"}
    # Training works: the final explained variance is far above the first step's.
    std = [r for r in curves if r["architecture"] == "standard"]
    assert float(std[-1]["explained_variance"]) > float(std[0]["explained_variance"]) + 0.3


@pytest.fixture(scope="module")
def trained_demo(world, tmp_path_factory):
    """A small --demo training run (toy model, demo sentences), shared by the tests below.

    120,000 tokens: with the happy direction carried over to the tokens after each happy word, 40,000
    left its closest latent at cos 0.73 (0.85 here), and angry's was at 0.80-0.82 even before.
    """
    out = tmp_path_factory.mktemp("ch5_demo")
    code = ch5.main([
        "--demo", "--training-tokens", "120000", "--batch-size", "512", "--d-sae", "128",
        "--checkpoints", "1", "--eval-batches", "2", "--quiet", "--out", str(out),
    ])
    assert code == 0
    return out


def test_demo_training_saves_a_loadable_evaluated_sae(trained_demo, world):
    from mechinterp.core.loading import load_sae

    loaded = load_sae("", "", trained_demo / "sae", "cpu")
    assert loaded.hook_name == "blocks.8.hook_resid_pre" and loaded.d_sae == 128
    assert loaded.log_sparsity is not None and loaded.log_sparsity.shape == (128,)
    assert float(loaded.log_sparsity.max()) <= 0 and float(loaded.log_sparsity.max()) > -3  # log10 densities
    assert loaded.model_kwargs == {"center_writing_weights": True}
    torch.testing.assert_close(loaded.sae.W_dec.norm(dim=1), torch.ones(128), atol=1e-4, rtol=0)

    record = json.loads((trained_demo / "MechInterpTrainSAE_run.json").read_text())
    ev = record["evaluation"]
    assert 0.5 < ev["l0"] < 64 and 0.5 < ev["explained_variance"] <= 1
    for key in ("ce_loss_clean", "ce_loss_with_sae", "ce_loss_zero_ablated"):
        assert np.isfinite(ev[key]) and ev[key] > 0
    # The toy world's planted concept directions are learned: a decoder row points along each.
    for concept in ("happy", "angry"):
        assert record["planted_directions"][concept]["cos"] > 0.8
    assert list(Path(record["checkpoints"]).glob("*/cfg.json")), "a checkpoint was saved"
    curves = read_csv(trained_demo / "MI7.csv")
    assert float(curves[-1]["explained_variance"]) > float(curves[0]["explained_variance"])


def _reference_top(sae_dir: Path, model, text: str, k: int) -> tuple[list[int], np.ndarray]:
    """Top features of ``text`` from SAELens directly: load_from_disk + the model's hook, BOS dropped."""
    from sae_lens import SAE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SAELens' advice about model kwargs
        sae = SAE.load_from_disk(sae_dir, device="cpu")
    tokens = model.to_tokens(text)  # BOS prepended
    _, cache = model.run_with_cache(tokens, names_filter=sae.cfg.metadata.hook_name)
    acts = sae.encode(cache[sae.cfg.metadata.hook_name])[0, 1:].detach()
    best = acts.max(dim=0).values
    top = torch.argsort(-best, stable=True)[:k]
    return top.tolist(), best[top].numpy()


def test_trained_sae_is_used_by_chapter1_via_sae_path(trained_demo, world, loaded_toy, tmp_path):
    text = "The teacher was thrilled."
    assert ch1.main([
        "--model", str(world.model_dir), "--sae-path", str(trained_demo / "sae"),
        "--text", text, "--top-k", "5", "--quiet", "--out", str(tmp_path),
    ]) == 0
    rows = read_csv(tmp_path / "MI1.csv")
    features, values = _reference_top(trained_demo / "sae", loaded_toy.model, text, 5)
    assert [int(r["feature"]) for r in rows] == features
    np.testing.assert_allclose([float(r["max_activation"]) for r in rows], values, atol=1e-4, rtol=0)
    assert all(int(r["feature"]) < 128 for r in rows)  # our 128-latent SAE, not the toy's 512


def test_demo_flag_with_sae_path_uses_the_trained_sae(trained_demo, loaded_toy, tmp_path):
    text = "The teacher was thrilled."
    assert ch1.main([
        "--demo", "--sae-path", str(trained_demo / "sae"), "--text", text, "--top-k", "5", "--quiet",
        "--out", str(tmp_path),
    ]) == 0
    rows = read_csv(tmp_path / "MI1.csv")
    features, _ = _reference_top(trained_demo / "sae", loaded_toy.model, text, 5)
    assert [int(r["feature"]) for r in rows] == features


@pytest.mark.parametrize(
    "argv",
    [
        ["--synthetic", "--demo"],
        ["--synthetic", "--text-file", "x.txt"],
        ["--architecture", "both", "--demo"],
        ["--demo", "--text-file", "a.txt", "--dataset", "b"],
        ["--demo", "--sae-path", "somewhere"],
        ["--synthetic", "--lr", "-1"],
        ["--synthetic", "--firing-prob", "0.01", "0.1"],
        ["--synthetic", "--batch-size", "2048", "--training-tokens", "1000"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        ch5.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_user_errors_exit_2_without_traceback(world, tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    assert ch5.main(["--demo", "--text-file", str(missing), "--out", str(tmp_path), "--quiet"]) == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    assert ch5.main(["--demo", "--text-file", str(empty), "--out", str(tmp_path), "--quiet"]) == 2
    assert ch5.main(["--demo", "--hook", "blocks.99.hook_resid_pre", "--training-tokens", "4096",
                     "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "missing.txt" in err and "no text" in err and "blocks.99" in err


# --- the options of each mode ---------------------------------------------------------------------

# The knob defaults per mode as README.md's table and --help give them (synthetic / --demo / a real model).
DOCUMENTED = {
    "synthetic": {"training_tokens": 1_500_000, "batch_size": 1024, "lr": 3e-3, "l1_coefficient": 0.2, "k": 5},
    "demo": {"training_tokens": 300_000, "batch_size": 1024, "lr": 3e-3, "l1_coefficient": 2.0, "k": 8},
    "model": {"training_tokens": 2_000_000, "batch_size": 4096, "lr": 3e-4, "l1_coefficient": 5.0, "k": 32},
}


def options_of(argv: list[str]):
    return ch5.mode_options(ch5.parse_args(argv))


def test_each_mode_gets_its_own_knob_defaults():
    assert {mode: asdict(d) for mode, d in MODE_DEFAULTS.items()} == DOCUMENTED
    synthetic = options_of(["--synthetic"])
    assert isinstance(synthetic, SyntheticOptions) and synthetic.architectures == ARCHITECTURES
    cfg = synthetic
    assert (cfg.training_tokens, cfg.batch_size, cfg.lr, cfg.l1_coefficient, cfg.k) == tuple(DOCUMENTED["synthetic"].values())
    assert cfg.d_sae == cfg.n_features == 256
    demo = options_of(["--demo"])
    assert isinstance(demo, ModelOptions) and asdict(demo.knobs) == DOCUMENTED["demo"]
    assert demo.architecture == "standard" and demo.d_sae is None  # None: 8 x the model's width, once loaded
    assert asdict(options_of([]).knobs) == DOCUMENTED["model"]


def test_given_knobs_win_over_the_mode_defaults():
    demo = options_of(["--demo", "--lr", "0.01", "--k", "3", "--architecture", "topk", "--d-sae", "40"])
    assert (demo.lr, demo.k, demo.architecture, demo.d_sae) == (0.01, 3, "topk", 40)
    assert demo.l1_coefficient == DOCUMENTED["demo"]["l1_coefficient"] and demo.training_tokens == 300_000
    synthetic = options_of(["--synthetic", "--n-features", "32", "--training-tokens", "5000", "--architecture", "topk"])
    assert synthetic.architectures == ("topk",)
    assert (synthetic.d_sae, synthetic.training_tokens) == (32, 5000)
    assert SyntheticOptions(n_features=32, d_sae=100).d_sae == 100


def test_run_record_shows_the_knobs_as_used():
    args = ch5.parse_args(["--demo", "--k", "3"])
    flags = ch5.recorded_flags(args, ch5.mode_options(args))
    assert {k: flags[k] for k in DOCUMENTED["demo"]} == {**DOCUMENTED["demo"], "k": 3}
    assert flags["architecture"] == "standard" and flags["d_sae"] is None and flags["demo"] is True
    args = ch5.parse_args(["--synthetic", "--n-features", "128"])
    flags = ch5.recorded_flags(args, ch5.mode_options(args))
    assert flags["architecture"] == "both" and flags["d_sae"] == 128 and flags["lr"] == 3e-3
    assert args.lr is None and args.architecture is None  # the Namespace itself is left as parsed


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ModelOptions(architecture="both"), "for --synthetic"),
        (lambda: ModelOptions(architecture="jumprelu"), "unknown architecture"),
        (lambda: ModelOptions(text_file=Path("a.txt"), dataset="b"), "either --text-file or --dataset"),
        (lambda: ModelOptions(checkpoints=-1), "0 or more"),
        # The demo's default batch (1024) is larger than the 500 tokens asked for.
        (lambda: ModelOptions(demo=True, training_tokens=500), "--batch-size 1024 is larger"),
        (lambda: ModelOptions(architecture="topk", k=50, d_sae=40), "cannot exceed the dictionary size"),
        (lambda: SyntheticOptions(hidden_dim=1), "--hidden-dim"),
        (lambda: SyntheticOptions(firing_prob=(0.01, 0.1)), "MIN must not exceed MAX"),
        (lambda: SyntheticOptions(training_tokens=100), "--batch-size 1024 is larger"),
        (lambda: SyntheticOptions(n_features=4, hidden_dim=2, architecture="topk"), "--k 5 cannot exceed"),
        (lambda: SyntheticOptions(architecture="jumprelu"), "unknown architecture"),
    ],
)
def test_invalid_options_raise_user_errors(make, message):
    with pytest.raises(UserError, match=re.escape(message)):
        make()


def test_model_training_spec_takes_the_width_from_the_model(tmp_path):
    model = SimpleNamespace(cfg=SimpleNamespace(d_model=48, n_ctx=64))
    data = SimpleNamespace(label="some text")
    spec = model_training_spec(ModelOptions(demo=True, context_size=64), model, "toy", "cpu", data, tmp_path)
    assert spec.d_sae == 8 * 48 and spec.checkpoint_dir == tmp_path and spec.dataset_path == "some text"
    assert spec.total_steps == 300_000 // 1024
    no_checkpoints = ModelOptions(demo=True, checkpoints=0, context_size=64, d_sae=100)
    spec = model_training_spec(no_checkpoints, model, "toy", "cpu", data, tmp_path)
    # No periodic checkpoints, but still a folder: Ctrl-C saves one there to resume from.
    assert spec.d_sae == 100 and spec.n_checkpoints == 0 and spec.checkpoint_dir == tmp_path
    with pytest.raises(UserError, match="lower --k"):
        model_training_spec(ModelOptions(architecture="topk", k=400), model, "m", "cpu", data, tmp_path)
    with pytest.raises(UserError, match="context of 64"):
        model_training_spec(ModelOptions(context_size=65), model, "m", "cpu", data, tmp_path)


def test_training_data_holds_out_the_last_tenth_of_a_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"document {i}" for i in range(30)) + "\n", encoding="utf-8")
    data = training_data(ModelOptions(text_file=path))
    assert data.train_texts == [f"document {i}" for i in range(27)]
    assert data.eval_texts == [f"document {i}" for i in range(27, 30)] and data.dataset_name is None
    from mechinterp.core.toyworld import demo_corpus

    demo = training_data(ModelOptions(demo=True, training_tokens=4000, batch_size=512, seed=3))
    assert demo.train_texts == demo_corpus(400, seed=3)  # max(200, tokens / 10) sentences
    assert demo.eval_texts == demo_corpus(400, seed=2024 + 3) != demo.train_texts  # fresh sentences
    streamed = training_data(ModelOptions())
    assert streamed.dataset_name == "Skylion007/openwebtext" and streamed.train_texts is None


# --- the results in a notebook --------------------------------------------------------------------


def test_synthetic_results_read_in_a_notebook():
    """The package API without the script: one call trains and scores; each result says its gist in a repr."""
    from mechinterp.training.synthetic import run_synthetic_comparison

    options = SyntheticOptions(n_features=16, hidden_dim=8, training_tokens=20_480, batch_size=512, lr=0.01, k=3,
                               eval_samples=2_000)
    comparison = run_synthetic_comparison(options)
    standard, topk = comparison.results
    assert (standard.architecture, topk.architecture) == ARCHITECTURES
    # Recovery computed here from the per-feature cosines, not read from the objects' properties.
    rec = {r.architecture: float((r.match.max_cos > 0.9).mean()) for r in comparison.results}
    random_rec = float((comparison.baseline.max_cos > 0.9).mean())
    assert max(rec.values()) > random_rec
    shown = repr(comparison)
    assert shown.startswith("SyntheticComparison(16 true features in 8 dims, 16 latents per SAE; recovered (|cos| > 0.9): ")
    assert (f"standard {rec['standard']:.1%}, topk {rec['topk']:.1%}, random directions {random_rec:.1%}; "
            f"best: {comparison.best.architecture})") in shown
    assert comparison.summary()["best_architecture"] == comparison.best.architecture

    mean_cos = float(topk.match.max_cos.mean())
    assert repr(topk.match) == (f"MatchScores(16 true features: {rec['topk']:.1%} recovered (|cos| > 0.9), mean max "
                                f"|cos| {mean_cos:.3f})")
    assert repr(topk).startswith(f"SyntheticResult(topk: {rec['topk']:.1%} of 16 true features recovered")
    assert f"L0 {topk.l0:.2f} (true {topk.true_l0:.2f})" in repr(topk) and topk.l0 <= 3 + 1e-9

    curve = topk.curve  # 40 steps of 512 samples, every step recorded
    assert curve.step == list(range(1, 41)) and curve.samples[-1] == 20_480
    assert repr(curve) == (f"TrainingCurve(40 points to step 40 (20,480 samples); last: loss {curve.loss[-1]:.4g}, "
                           f"L0 {curve.l0[-1]:.2f}, explained variance {curve.explained_variance[-1]:.3f}, "
                           f"{curve.dead[-1]} dead)")
    expected_l0 = float(comparison.world.firing_probabilities.sum())
    assert repr(comparison.world) == f"SyntheticWorld(16 true features in 8 dims, {expected_l0:.2f} firing per sample on average)"
    for obj in (comparison, standard, topk, curve, comparison.world):
        assert len(repr(obj)) < 600


@pytest.mark.filterwarnings("ignore::UserWarning")  # SAELens' advice on model kwargs, tokenising and epochs
def test_model_results_read_in_a_notebook(world, tmp_path):
    """Model mode through the package API, as a notebook would run it: train, save, load, evaluate."""
    from mechinterp.core.loading import load_hooked_model, load_sae
    from mechinterp.training.evaluation import evaluate_on_model
    from mechinterp.training.on_model import (
        MODEL_KWARGS,
        inference_sae,
        save_trained_sae,
        text_dataset,
        train_on_model,
    )

    options = ModelOptions(demo=True, training_tokens=4096, batch_size=512, d_sae=64, checkpoints=0, context_size=32)
    model = load_hooked_model(str(world.model_dir), "cpu", MODEL_KWARGS)
    data = training_data(options)
    assert repr(data) == (f"TrainingData(toyworld.demo_corpus(409, seed=0): 409 training documents, 400 for the "
                          f"evaluation: {data.eval_note})")
    spec = model_training_spec(options, model, "toy", "cpu", data, tmp_path / "checkpoints")
    trained = train_on_model(model, spec, text_dataset(data.train_texts))
    curve = trained.curve
    assert curve.step[-1] == 8 and curve.samples[-1] == 4096
    assert repr(trained) == (
        f"ModelTrainingResult(standard SAE, 64 latents, blocks.8.hook_resid_pre: 8 steps in "
        f"{trained.train_seconds:.0f}s; last: loss {curve.loss[-1]:.4g}, L0 {curve.l0[-1]:.2f}, explained variance "
        f"{curve.explained_variance[-1]:.3f}; checkpoints: none)"
    )

    save_trained_sae(inference_sae(trained.sae), trained.log_sparsity, trained.runner_cfg, tmp_path / "sae")
    loaded = load_sae("", "", tmp_path / "sae", "cpu")
    evaluation = evaluate_on_model(loaded.sae, model, text_dataset(data.eval_texts), 32, 2)
    assert 0 < evaluation.l0 <= 64 and evaluation.n_tokens > 0 and 0 <= evaluation.dead_latents <= 64
    recovered = evaluation.loss_recovered
    assert repr(evaluation) == (
        f"ModelEvaluation(L0 {evaluation.l0:.2f}, explained variance {evaluation.explained_variance:.3f}, next-token "
        f"loss clean {evaluation.ce_loss_clean:.4f} / with SAE {evaluation.ce_loss_with_sae:.4f} / zeroed "
        f"{evaluation.ce_loss_zero_ablated:.4f} (recovered {'n/a' if recovered is None else f'{recovered:.3f}'}), "
        f"{evaluation.dead_latents} dead latents, {evaluation.n_tokens:,} tokens)"
    )
    for obj in (data, trained, evaluation):
        assert len(repr(obj)) < 600
