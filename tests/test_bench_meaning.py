"""The Chapter 2 benchmark's building blocks still do what its table claims (bench/bench_meaning.py).

The benchmark runs for tens of minutes, so it is rarely run; these tests run its pieces at tiny sizes
so that it cannot rot unnoticed: the world it writes loads under the real names and fires the calibrated
number of features, the prompts are what it says, the wrapper measures the command's peak memory
alone, and the report judges the targets as documented.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH_FILE = Path(__file__).resolve().parent.parent / "bench" / "bench_meaning.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_meaning", BENCH_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_meaning", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer_and_words(bench):
    tokenizer, vocab, _ = bench.gpt2_tokenizer()
    return tokenizer, bench.word_list(vocab)


def test_prompts_are_distinct_sentences_of_12_to_40_tokens_with_the_concept_planted(bench, tokenizer_and_words):
    tokenizer, words = tokenizer_and_words
    sets = bench.prompt_sets(20, seed=3, words=words)
    assert list(sets) == list(bench.GROUPS) and all(len(p) == 20 for p in sets.values())
    every = [t for prompts in sets.values() for t in prompts]
    assert len(set(every)) == len(every)  # the script would drop a duplicate
    lengths = [len(tokenizer.encode(t).ids) for t in every]
    assert 12 <= min(lengths) and max(lengths) <= 40
    for group, concept in bench.CONCEPTS.items():
        assert all(any(f" {w} " in f" {t[:-1]} " for w in concept) for t in sets[group])
    planted = {w for concept in bench.CONCEPTS.values() for w in concept}
    assert not any(w in planted for t in sets["baseline"] for w in t[:-1].split(" "))
    assert bench.prompt_sets(20, seed=3, words=words) == sets  # seeded


@pytest.fixture(scope="module")
def tiny_world(bench, tokenizer_and_words, tmp_path_factory):
    """A world of the benchmark's kind at toy width: (HF home, the facts write_world returned)."""
    hf_home = tmp_path_factory.mktemp("bench_meaning") / "hf_home"
    shape = bench.Shape(d_model=32, n_heads=4, d_sae=512)
    return hf_home, bench.write_world(hf_home, shape, l0=20.0, seed=0, words=tokenizer_and_words[1])


def test_the_world_is_written_as_gpt2_and_gpt2_small_res_jb(bench, tiny_world):
    from safetensors.numpy import load_file

    from tests import gpt2_world as gw

    hf_home, facts = tiny_world
    model_dir = gw.snapshot_dir(hf_home, gw.MODEL_REPO)
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["n_head"], config["vocab_size"]) == (12, 32, 4, 50257)
    weights = load_file(model_dir / "model.safetensors")
    assert weights["wte.weight"].shape == (50257, 32) and weights["h.11.mlp.c_fc.weight"].shape == (32, 128)
    sae_dir = gw.snapshot_dir(hf_home, gw.SAE_REPO) / gw.SAE_ID
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    assert (cfg["hook_point"], cfg["d_in"], cfg["d_sae"]) == ("blocks.8.hook_resid_pre", 32, 512)
    assert facts["sae_l0_calibration"] == pytest.approx(20.0, rel=0.05)
    # Each concept's planted features fire on its words and (nearly) nowhere else.
    assert facts["planted_fire_on_concept_words"] > 0.9 and facts["planted_fire_elsewhere"] < 0.05


def test_the_sae_fires_the_calibrated_l0_on_new_prompts(bench, tiny_world, tokenizer_and_words):
    """Calibrated on a few sentences, the SAE fires about ``l0`` features per token on the benchmark's
    prompts too, computed by an independent GPT-2 forward pass (tests/gpt2_world.py's)."""
    from safetensors.numpy import load_file

    from tests import gpt2_world as gw

    hf_home, _ = tiny_world
    tokenizer, words = tokenizer_and_words
    weights = load_file(gw.snapshot_dir(hf_home, gw.MODEL_REPO) / "model.safetensors")
    sae = load_file(gw.snapshot_dir(hf_home, gw.SAE_REPO) / gw.SAE_ID / "sae_weights.safetensors")
    fired = []
    for text in bench.prompt_sets(10, seed=1, words=words)["baseline"]:
        x, _ = gw.gpt2_forward(weights, 4, np.array([[gw.BOS_ID, *tokenizer.encode(text).ids]]), gw.SAE_LAYER)
        centred = x[0, 1:] - x[0, 1:].mean(-1, keepdims=True)  # as TransformerLens' centring leaves it
        fired.append((gw.standard_encode(sae, centred) > 0).sum(-1))
    assert np.concatenate(fired).mean() == pytest.approx(20.0, rel=0.3)


@pytest.mark.slow  # ~30 s on a busy 2-core machine: TransformerLens and SAELens load in-process
def test_the_world_loads_by_its_real_names(bench, tiny_world, tokenizer_and_words):
    """The model and SAE load as gpt2-small and gpt2-small-res-jb, as the chapter loads them, and the SAE
    fires about the calibrated number of features per token there too."""
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from tests import gpt2_world as gw

    hf_home, _ = tiny_world
    with gw.hub_cache(hf_home), torch.inference_mode():
        sae = SAE.from_pretrained(gw.SAE_RELEASE, gw.SAE_ID)
        model = HookedTransformer.from_pretrained(gw.MODEL_NAME, **sae.cfg.metadata.model_from_pretrained_kwargs)
        assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (12, 32, 50257)
        fired = []
        for text in bench.prompt_sets(10, seed=1, words=tokenizer_and_words[1])["baseline"]:
            _, cache = model.run_with_cache(model.to_tokens(text), names_filter=gw.SAE_ID)
            fired.append((sae.encode(cache[gw.SAE_ID][0, 1:]) > 0).sum(-1).float())
    assert torch.cat(fired).mean().item() == pytest.approx(20.0, rel=0.3)


def test_the_wrapper_measures_the_commands_peak_not_its_parents(tmp_path):
    """Linux carries a parent's peak RSS into its children; the wrapper must report the command's own."""
    import subprocess

    ballast = np.ones(200 * 2**20 // 8)  # this process now holds ~200 MB, more than the command will
    cmd = [sys.executable, "-c", "b = bytearray(60 * 2**20); b[::4096] = b'x' * len(b[::4096])"]
    result_path, log_path = tmp_path / "measure.json", tmp_path / "log.txt"
    wrapper = BENCH_FILE.parent / "measure_command.py"
    subprocess.run([sys.executable, str(wrapper), str(result_path), str(log_path), "--", *cmd], check=True, timeout=60)
    measured = json.loads(result_path.read_text())
    assert measured["returncode"] == 0 and measured["seconds"] > 0
    assert 60 <= measured["peak_rss_mb"] < 60 + 60, measured  # the interpreter itself is ~10 MB
    assert ballast.sum() > 0


def test_png_size_reads_the_header(bench, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots(figsize=(3, 2))
    fig.savefig(tmp_path / "f.png", dpi=100)
    plt.close(fig)
    assert bench.png_size(tmp_path / "f.png") == (300, 200)
    assert bench.figure_sizes(tmp_path) == {"f.png": [300, 200]}


def _row(n: int, seconds: float, peak: float) -> dict:
    run = {"seconds": seconds, "peak_rss_mb": peak, "cache": {"files": 3 * n, "mb": 1.0}, "figures": {"MI3.png": [800, 600]},
           "others_cpu_share": 0.0, "stage_seconds": {"load": 1.0, "encode": 2.0, "total": 3.0},
           "injection_seconds": {"encode": 0.5}, "injection_texts": 10, "discoveries": {"happy": 2},
           "peak_rss_at_seconds": 1.0}
    return {"per_group": n, "total_prompts": 3 * n, "prompt_tokens": 75 * n, "cold": run, "warm": dict(run)}


@pytest.mark.parametrize("seconds, peak, time_ok, memory_ok", [
    (100.0, 1200.0, True, True),  # 10x the prompts in 10x the time, 1.2x the memory: both met exactly
    (101.0, 1201.0, False, False),
])
def test_targets_compare_the_largest_size_with_the_one_below(bench, seconds, peak, time_ok, memory_ok):
    rows = [_row(10, 1.0, 900.0), _row(100, 10.0, 1000.0), _row(1000, seconds, peak)]
    targets = bench.evaluate_targets(rows)
    assert targets["per_prompt_time"]["ok"] is time_ok and targets["peak_memory"]["ok"] is memory_ok
    assert targets["per_prompt_time"]["compared"] == "1,000 vs 100 per group"
    results = {"machine": bench.machine(), "rows": rows, "targets": targets, "load_average": [0.1, 0.2],
               "world": {"shape": {}, "sae_l0_calibration": 60.0}, "git_commit": "abc"}
    table = bench.markdown(results)
    assert table.count("| 1,000 | 3,000 |") == 1 and ("PASS" if time_ok else "FAIL") in table


@pytest.mark.slow  # ~1-2 minutes: Chapter 2 runs twice in subprocesses
def test_the_benchmark_runs_chapter_2_end_to_end(bench, tmp_path):
    args = bench.parse_args(["--sizes", "10", "20", "--d-model", "32", "--n-heads", "4", "--d-sae", "256", "--no-warm",
                             "--work", str(tmp_path / "work"), "--out", str(tmp_path), "--quiet"])
    results = bench.run(args)
    saved = json.loads((tmp_path / "bench_meaning.json").read_text())
    assert [r["per_group"] for r in saved["rows"]] == [10, 20] and saved["targets"] == results["targets"]
    for row in saved["rows"]:
        cold = row["cold"]
        assert cold["n_prompts"] == {g: row["per_group"] for g in ("baseline", "angry", "happy")}
        assert cold["tokens"] == row["prompt_tokens"] and cold["cache_misses"] == row["total_prompts"]
        assert cold["peak_rss_mb"] > 100 and cold["stage_seconds"]["encode"] > 0 and "MI2.png" in cold["figures"]
    assert "| 20 | 60 |" in (tmp_path / "bench_meaning.md").read_text()
