"""The benchmark compares like with like: its three methods give the same per-prompt numbers.

Runs the benchmark's own building blocks (bench/bench_encoding.py) at tiny sizes on a tiny random
model, so a speed-up in its table can never come from one method computing something different.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

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
