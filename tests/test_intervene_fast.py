"""Chapter 4's fast scoring gives the straightforward computation's numbers bit for bit (issue 25).

``intervention_effects`` scores the text positions only, a few rows at a time, with the clean run's
probabilities computed once per batch and the unembedding's output buffer reused. The reference is
Chapter 4's code before that change, kept in bench/bench_steering.py (``straightforward_effects``): the
whole batch's log-softmax per intervention. They must agree *exactly*, not to a tolerance: Chapter 4's
CSVs print every digit of these floats, and issue 25 allowed no change to them. Exact equality holds on
any CPU because every row is computed by the same kernels on the same inputs; the awkward cases are
what could break it: a batch with one text position (a lone row's sum is split between threads), chunks
of 2 and 3 rows, padding, a vocabulary of GPT-2's 50,257 tokens (above PyTorch's 32,768-element grain,
where reductions start to use threads), and one and two threads.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mechinterp.causal import intervene
from mechinterp.causal.intervene import ablation_hook, intervention_effects, make_batches, steering_hook
from mechinterp.causal.unembed import reused_unembed
from mechinterp.core.encoding import Tokenized

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def wide_vocab_world():
    """A 2-layer random model of width 32 with GPT-2's vocabulary size, and a 96-feature SAE at block 1."""
    sys.path.insert(0, str(BENCH))
    encoding_bench = _bench("bench_encoding")
    shape = encoding_bench.ModelShape(n_layers=2, d_model=32, n_heads=4, d_mlp=64, d_vocab=50257, n_ctx=64)
    world = encoding_bench.build_world(shape, d_sae=96, hook_layer=1, seed=0, l0=8.0)
    with encoding_bench.as_project_loads_it(world):
        yield world


@pytest.mark.parametrize("threads", [1, 2])
# Batches of 11: the last holds the one-position prompt alone; of 5: padding and chunks of 3 across rows.
@pytest.mark.parametrize("chunk_rows,batch_size", [(2, 11), (3, 5), (10, 16)])
def test_fast_scores_equal_the_straightforward_computation(wide_vocab_world, monkeypatch, threads, chunk_rows,
                                                           batch_size):
    steering = _bench("bench_steering")
    world = wide_vocab_world
    vocab = world.shape.d_vocab
    monkeypatch.setattr(intervene, "CHUNK_ELEMENTS", chunk_rows * vocab)
    prompts = steering.random_prompts(11, 3, 14, vocab, world.bos, seed=2)
    prompts.append([world.bos, 17])  # one text position: sorted last
    batches = make_batches(world.loaded, Tokenized(prompts, n_skip=1), batch_size)
    assert batch_size != 11 or int(batches[-1].valid.sum()) == 1
    rates = intervene.firing_rates(world.loaded, batches)
    fires = [int(f) for f in torch.tensor(rates).argsort(descending=True)[:3]]
    located = {f"feature {f}": f for f in fires} | {"family": (fires[0], fires[1])}
    hooks = {name: ablation_hook(world.loaded, f, 1) for name, f in located.items()}
    direction = world.sae.W_dec[fires[0]].detach()
    hooks |= {f"steer {c}": steering_hook(c * direction, 1) for c in (0.0, 4.0)}
    targets = [5, 1234, 50000]
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = intervention_effects(world.loaded, batches, hooks, targets, located)
        reference = steering.straightforward_effects(world.loaded, batches, hooks, targets, located)
    finally:
        torch.set_num_threads(saved)
    assert fast[0]["feature " + str(fires[0])].kl > 0  # the comparison can fail: the ablations do something
    assert fast[0]["steer 4.0"].kl > 0 and fast[0]["steer 0.0"].kl == 0
    assert fast == reference  # dataclasses of Python floats: equal means every bit


def test_reused_unembed_is_the_modules_output_and_restores_it(wide_vocab_world):
    model = wide_vocab_world.model
    x = torch.randn(2, 9, model.cfg.d_model)
    with torch.inference_mode():
        expected = model.unembed(x)
        with reused_unembed(model, reuse_output=True) as used:
            assert used and "forward" in vars(model.unembed)
            first = model.unembed(x)
            assert torch.equal(first, expected)
            second = model.unembed(x[:1])
            assert second.data_ptr() == first.data_ptr()  # the same buffer, overwritten
        assert "forward" not in vars(model.unembed)
        assert torch.equal(model.unembed(x), expected)


def test_reused_unembed_steps_aside_when_it_would_differ(wide_vocab_world, monkeypatch):
    """A module whose product is computed differently (an older TransformerLens: einsum) keeps its forward."""
    model = wide_vocab_world.model
    unembed = model.unembed
    monkeypatch.setattr(unembed, "forward", lambda r: torch.einsum("bpd,dv->bpv", r, unembed.W_U) + unembed.b_U + 1)
    with torch.inference_mode(), reused_unembed(model) as used:
        assert not used
    assert vars(unembed)["forward"] is not None
