"""The benchmark compares like with like: its three methods give the same per-prompt numbers.

Runs the benchmark's own building blocks (bench/bench_encoding.py) at tiny sizes on a tiny random
model, so a speed-up in its table can never come from one method computing something different.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH_FILE = Path(__file__).resolve().parent.parent / "bench" / "bench_encoding.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_encoding", BENCH_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_encoding", module)
    spec.loader.exec_module(module)
    return module


def test_naive_saelens_and_pipeline_agree_per_prompt():
    bench = _bench_module()
    shape = bench.ModelShape(n_layers=3, d_model=32, n_heads=4, d_mlp=64, d_vocab=97, n_ctx=64)
    world = bench.build_world(shape, d_sae=128, hook_layer=2, seed=0, l0=6.0)
    # Lengths from 2 (BOS + one token) to 40, so batches of 4 carry plenty of padding.
    prompts = bench.random_prompts(11, 2, 40, shape.d_vocab, world.bos, seed=1)
    assert all(p[0] == world.bos and world.bos not in p[1:] for p in prompts)

    naive = bench.run_naive(world, prompts)
    saelens = bench.run_saelens(world, bench.build_saelens_model(world), prompts)
    pipeline = bench.run_pipeline(world, prompts, batch_size=4)

    # The comparison must be able to fail: activations are unit-scale and sparse, not all zero.
    fired = pipeline.max > 0
    assert pipeline.max.max() > 0.5 and 0.01 < fired.mean() < 0.9
    for other in (naive, saelens):
        assert other.max.shape == pipeline.max.shape == (len(prompts), 128)
        np.testing.assert_allclose(other.max, pipeline.max, atol=1e-4, rtol=0)
        np.testing.assert_allclose(other.mean, pipeline.mean, atol=1e-4, rtol=0)
        assert other.n_positions == pipeline.n_positions == sum(map(len, prompts))


@pytest.mark.slow  # ~15 s: it builds GPT-2 small's full-size random model
def test_mining_benchmark_runs_and_reports_the_peak_at_each_size(tmp_path):
    """bench_mining.py end to end at toy sizes (a narrow SAE, an early hook): one pass, a row per size."""
    import json
    import subprocess

    cmd = [sys.executable, str(BENCH_FILE.parent / "bench_mining.py"), "--sizes", "1500", "3000", "--d-sae", "256",
           "--hook-layer", "0", "--checkpoint-every", "0", "--out", str(tmp_path), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "bench_mining.json").read_text())
    runs = results["runs"]
    assert [r["requested_tokens"] for r in runs] == [1500, 3000]
    assert 1500 <= runs[0]["tokens"] < runs[1]["tokens"] == 3000  # the second row is the whole pass
    assert runs[0]["peak_rss_mb"] <= runs[1]["peak_rss_mb"]  # a peak so far can only grow
    assert results["target"]["value"] == pytest.approx(runs[1]["peak_rss_mb"] / runs[0]["peak_rss_mb"], abs=1e-4)
    assert "| 3,000 |" in done.stdout
