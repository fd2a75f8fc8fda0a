"""Benchmark: the project's encoding path against the naive loop and SAELens, on a GPT-2-small-sized model.

Everything runs offline on random weights of the real shapes (speed does not depend on the values):
a TransformerLens ``HookedTransformer`` shaped exactly like GPT-2 small (12 layers, d_model 768,
12 heads, d_mlp 3072, vocab 50,257, context 1024) and a SAELens ``StandardSAE`` shaped like
``gpt2-small-res-jb`` (768 -> 24,576) reading ``blocks.8.hook_resid_pre``. Prompts are seeded random
token ids (BOS first). One run measures, side by side on the same prompts:

  (a) the naive loop: one prompt at a time, ``run_with_cache`` of the whole model, ``sae.encode``,
      every token's dense 24,576-wide feature vector kept, per-prompt max/mean computed at the end;
  (b) SAELens' ``HookedSAETransformer.run_with_cache_with_saes``, one prompt at a time;
  (c) this project's ``mechinterp.encoding.aggregate_prompts`` at its default CPU batch size;
  (d) the GFLOP/s that (c) achieves against plain ``torch`` matmuls of the same shapes;

checks that (a), (b) and (c) give the same per-prompt numbers, and measures the peak resident memory
of (c) for several numbers of prompts, each in a fresh subprocess.

Run from the repository root:
    python bench/bench_encoding.py            # the full run (about 10 minutes on 2 quiet cores)
    python bench/bench_encoding.py --quick    # a ~1-minute smoke run at small sizes

Prints a markdown table with PASS/FAIL beside each target and writes
``bench/results/bench_encoding[_quick].json`` (everything measured) and ``.md`` (the table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:  # `python bench/bench_encoding.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

from mechinterp.cli import positive_int  # noqa: E402
from mechinterp.encoding import (  # noqa: E402
    PromptAggregates,
    Tokenized,
    aggregate_prompts,
    default_batch_size,
)
from mechinterp.cli import run_cli  # noqa: E402
from mechinterp.errors import UserError  # noqa: E402
from mechinterp.io import write_json, write_text  # noqa: E402
from mechinterp.loading import Loaded, LoadedSAE, quiet_third_party, use_fused_gelu  # noqa: E402
from mechinterp.records import library_versions  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
GPT2_BOS = 50256  # GPT-2's <|endoftext|>, which is also its BOS and its padding token
GPT2_SAE_L0 = 60.0  # SAELens' pretrained_saes.yaml lists l0: 60 for gpt2-small-res-jb blocks.8

# Targets from issue #4, point 5.
TARGET_VS_NAIVE = 8.0
TARGET_VS_SAELENS = 3.0
TARGET_MATMUL_SHARE = 0.60
TARGET_MEMORY_GROWTH = 1.5
CONTENTION_WARNING = 0.05  # share of the cores used by other processes above which timings are suspect


@dataclass(frozen=True)
class ModelShape:
    """The transformer's dimensions; the defaults are GPT-2 small's."""

    n_layers: int = 12
    d_model: int = 768
    n_heads: int = 12
    d_mlp: int = 3072
    d_vocab: int = 50257
    n_ctx: int = 1024

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


@dataclass
class World:
    """A random model + SAE of the benchmarked shapes, wrapped the way the project's pipeline expects."""

    model: Any  # transformer_lens.HookedTransformer
    sae: Any  # sae_lens.StandardSAE
    loaded: Loaded
    shape: ModelShape
    hook_name: str
    bos: int

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def hook_layer(self) -> int:
        return self.loaded.sae.hook_layer


@dataclass
class MethodResult:
    """What one method produced on a list of prompts, and how long it took."""

    name: str
    seconds: float
    n_prompts: int
    n_positions: int  # every non-padding position the model saw, BOS included
    max: np.ndarray = field(repr=False)  # [n_prompts, d_sae] per-prompt max over text tokens (BOS excluded)
    mean: np.ndarray = field(repr=False)  # [n_prompts, d_sae] per-prompt mean over text tokens

    @property
    def tokens_per_second(self) -> float:
        return self.n_positions / self.seconds

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "prompts": self.n_prompts,
            "tokens": self.n_positions,
            "tokens_per_second": round(self.tokens_per_second, 1),
        }


# --- building the model, the SAE and the prompts ---------------------------------------------------


def model_config(shape: ModelShape, init_weights: bool = True) -> Any:
    """A TransformerLens config with GPT-2 small's architecture (LayerNorm, gelu_new, learned positions)."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=shape.n_layers,
        d_model=shape.d_model,
        n_heads=shape.n_heads,
        d_head=shape.d_head,
        d_mlp=shape.d_mlp,
        d_vocab=shape.d_vocab,
        n_ctx=shape.n_ctx,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        init_weights=init_weights,
        device="cpu",
        dtype=torch.float32,
    )


def build_world(shape: ModelShape, d_sae: int, hook_layer: int, seed: int, l0: float) -> World:
    """A random model and SAE; the SAE is scaled and biased so ~``l0`` features fire per token.

    Random SAE weights with a zero bias make half of all features fire on every token, which no real
    SAE does and which would inflate the per-prompt summaries the pipeline keeps. Calibrating the
    encoder's bias to the real SAE's sparsity (L0 about 60 at this hook) keeps the memory measurement
    honest; speed does not change, since the encoder matmul is dense either way.
    """
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformer_lens import HookedTransformer

    torch.manual_seed(seed)
    with quiet_third_party():  # TransformerLens' deprecation notice says nothing about this benchmark
        model = HookedTransformer(model_config(shape), move_to_device=False)
    model.eval()
    # A random model has no tokenizer; code that consults one (TransformerLens reads padding_side, the
    # project may read pad/BOS ids) sees GPT-2's settings: right padding, pad = BOS = <|endoftext|>.
    bos = min(GPT2_BOS, shape.d_vocab - 1)
    model.tokenizer = SimpleNamespace(bos_token_id=bos, pad_token_id=bos, padding_side="right")
    hook_name = f"blocks.{hook_layer}.hook_resid_pre"
    cfg = StandardSAEConfig(
        d_in=shape.d_model,
        d_sae=d_sae,
        metadata=SAEMetadata(model_name="random-gpt2-shape", hook_name=hook_name, prepend_bos=True),
    )
    sae = StandardSAE(cfg)
    sae.eval()
    loaded = Loaded(
        model=model,
        sae=LoadedSAE(sae=sae, hook_name=hook_name, label="random SAE", neuronpedia_id=None, log_sparsity=None),
        model_label="random GPT-2-shaped model",
        device="cpu",
    )
    _calibrate_sparsity(model, sae, hook_name, hook_layer, shape, bos, seed, l0)
    return World(model, sae, loaded, shape, hook_name, bos)


@torch.inference_mode()
def _calibrate_sparsity(
    model: Any, sae: Any, hook_name: str, hook_layer: int, shape: ModelShape, bos: int, seed: int, l0: float
) -> None:
    """Scale W_enc to unit-variance pre-activations and set b_enc so ``l0`` features fire per token."""
    prompts = random_prompts(8, 16, 64, shape.d_vocab, bos, seed + 1)
    resid = torch.cat(
        [
            model.run_with_cache(
                torch.tensor([p]), names_filter=hook_name, stop_at_layer=hook_layer + 1, return_type=None
            )[1][hook_name][0, 1:]
            for p in prompts
        ]
    )  # [tokens, d_model], BOS excluded like every statistic
    pre = sae.process_sae_in(resid) @ sae.W_enc
    # Unit-scale activations make the 1e-4 agreement check between methods meaningful.
    sae.W_enc.mul_(1.0 / pre.std())
    pre = pre / pre.std()
    k = max(1, min(pre.numel(), round(l0 * pre.shape[0])))
    threshold = pre.flatten().topk(k).values[-1]
    sae.b_enc.fill_(-float(threshold))


def random_prompts(n: int, min_len: int, max_len: int, d_vocab: int, bos: int, seed: int) -> list[list[int]]:
    """``n`` token-id lists, lengths uniform in [min_len, max_len] (BOS included), BOS first."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=n)
    prompts = []
    for length in lengths:
        body = rng.integers(0, d_vocab - 1, size=int(length) - 1)
        body[body >= bos] += 1  # BOS only at position 0
        prompts.append([bos, *body.tolist()])
    return prompts


# --- the three methods -----------------------------------------------------------------------------


def _summaries(per_prompt: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt max and mean over text tokens from ``[T, d_sae]`` tensors (position 0 is BOS)."""
    maxes = torch.stack([acts[1:].amax(0) for acts in per_prompt])
    means = torch.stack([acts[1:].mean(0) for acts in per_prompt])
    return maxes.numpy(), means.numpy()


@torch.inference_mode()
def run_naive(world: World, prompts: Sequence[list[int]]) -> MethodResult:
    """(a) One prompt at a time, every hook of the full model cached, every dense feature vector kept."""
    start = time.perf_counter()
    kept: list[torch.Tensor] = []
    for ids in prompts:
        _, cache = world.model.run_with_cache(torch.tensor([ids]))
        kept.append(world.sae.encode(cache[world.hook_name])[0])  # [T, d_sae], dense
        del cache
    maxes, means = _summaries(kept)  # aggregated at the end, as the naive loop does
    seconds = time.perf_counter() - start
    return MethodResult("naive", seconds, len(prompts), sum(map(len, prompts)), maxes, means)


def build_saelens_model(world: World) -> Any:
    """A ``HookedSAETransformer`` with the very same weights as the world's ``HookedTransformer``."""
    from sae_lens import HookedSAETransformer

    with quiet_third_party():
        sae_model = HookedSAETransformer(model_config(world.shape, init_weights=False), move_to_device=False)
    sae_model.load_state_dict(world.model.state_dict())
    sae_model.eval()
    return sae_model


@torch.inference_mode()
def run_saelens(world: World, sae_model: Any, prompts: Sequence[list[int]]) -> MethodResult:
    """(b) SAELens' reference, ``run_with_cache_with_saes`` one prompt at a time, summarised per prompt."""
    start = time.perf_counter()
    maxes, means = [], []
    for ids in prompts:
        _, cache = sae_model.run_with_cache_with_saes(torch.tensor([ids]), saes=[world.sae])
        acts = cache[f"{world.hook_name}.hook_sae_acts_post"][0]  # [T, d_sae], where SAELens caches them
        maxes.append(acts[1:].amax(0))
        means.append(acts[1:].mean(0))
        del cache, acts
    seconds = time.perf_counter() - start
    return MethodResult(
        "saelens", seconds, len(prompts), sum(map(len, prompts)), torch.stack(maxes).numpy(), torch.stack(means).numpy()
    )


@contextlib.contextmanager
def as_project_loads_it(world: World):
    """The model as the project's loader leaves it: gelu_new on PyTorch's fused kernel
    (``mechinterp.loading.use_fused_gelu``). (a) and (b) keep TransformerLens' own, as a user
    loading the model directly would; the numbers agree to ~1e-6 (checked in every run)."""
    saved = [block.mlp.act_fn for block in world.model.blocks]
    use_fused_gelu(world.model)
    try:
        yield
    finally:
        for block, act_fn in zip(world.model.blocks, saved):
            block.mlp.act_fn = act_fn


def run_pipeline(world: World, prompts: Sequence[list[int]], batch_size: int) -> MethodResult:
    """(c) The project's pipeline: length-sorted batches, stop at the hook, sparse streaming summaries."""
    start = time.perf_counter()
    with as_project_loads_it(world):
        rows = aggregate_prompts(world.loaded, Tokenized([list(p) for p in prompts], n_skip=1), batch_size)
    seconds = time.perf_counter() - start
    aggregates = PromptAggregates(rows, world.d_sae)
    return MethodResult(
        "pipeline", seconds, len(prompts), sum(map(len, prompts)), aggregates.dense("max"), aggregates.dense("mean")
    )


def agreement(reference: MethodResult, other: MethodResult) -> dict[str, float]:
    """Largest absolute differences of the per-prompt max and mean between two methods."""
    return {
        "max_abs_diff_of_max": float(np.abs(reference.max - other.max).max()),
        "max_abs_diff_of_mean": float(np.abs(reference.mean - other.mean).max()),
    }


# --- FLOPs and the matmul ceiling ------------------------------------------------------------------


def encoding_flops(lengths: Sequence[int], shape: ModelShape, n_blocks: int, d_sae: int, n_skip: int = 1) -> int:
    """Forward FLOPs needed for SAE features at ``blocks.{n_blocks}.hook_resid_pre`` (see bench/README.md).

    Per prompt of T real positions (BOS included, padding excluded), with d = d_model and a multiply-add
    counted as 2 FLOPs:  T*d (positional add) + n_blocks * (2*T*d*3d [Q,K,V] + 2*T*T*d [scores]
    + 2*T*T*d [pattern @ V] + 2*T*d*d [output] + 2*2*T*d*d_mlp [MLP in and out])
    + 2*(T - n_skip)*d*d_sae [encoder, on the text tokens only: BOS is in no statistic].
    LayerNorms, GELU, softmax and biases (a few FLOPs per element, well under 1%) are not counted.
    """
    d, d_mlp = shape.d_model, shape.d_mlp
    total = 0
    for t in lengths:
        block = 2 * t * d * 3 * d + 2 * t * t * d + 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * d_mlp
        total += t * d + n_blocks * block + 2 * (t - n_skip) * d * d_sae
    return total


def rows_per_batch(lengths: Sequence[int], batch_size: int, n_skip: int = 1) -> tuple[float, float]:
    """Mean matmul rows per batch of the pipeline, batching as it does (longest first).

    Returns (padded rows = batch x longest length, which the transformer blocks process; text rows =
    positions after BOS, which the SAE encoder needs).
    """
    ordered = sorted(lengths, reverse=True)
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    padded = float(np.mean([len(b) * max(b) for b in batches]))
    text = float(np.mean([sum(t - n_skip for t in b) for b in batches]))
    return padded, text


def _best_seconds(fn: Callable[[], Any], min_seconds: float) -> float:
    """Best time per call of ``fn`` over repeated timings lasting ``min_seconds`` in all."""
    for _ in range(3):
        fn()
    reps = 1
    while True:  # a repeat count worth ~50 ms per timing
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        if time.perf_counter() - start >= 0.05:
            break
        reps *= 2
    best, spent = float("inf"), 0.0
    while spent < min_seconds:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        took = time.perf_counter() - start
        spent += took
        best = min(best, took / reps)
    return best


def time_matmul(m: int, k: int, n: int, min_seconds: float = 0.5) -> dict[str, float]:
    """GFLOP/s of a plain float32 ``[m, k] @ [k, n]``: as written (``a @ b``, allocating its result,
    the reference) and into a preallocated ``out=`` (no allocation, no page faults; for comparison)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    with torch.inference_mode():
        plain = _best_seconds(lambda: a @ b, min_seconds)
        into = _best_seconds(lambda: torch.matmul(a, b, out=out), min_seconds / 2)
    flops = 2 * m * k * n
    return {"m": m, "k": k, "n": n, "seconds": plain, "gflops": flops / plain / 1e9, "gflops_preallocated_out": flops / into / 1e9}


def matmul_reference(
    rows: int, text_rows: int, shape: ModelShape, n_blocks: int, d_sae: int, min_seconds: float
) -> dict[str, Any]:
    """Plain-matmul GFLOP/s for the matmuls the pipeline does, at the pipeline's rows per batch.

    ``mix`` is the rate of doing all of them in the same proportions as the pipeline (n_blocks x
    [Q, K, V, O at d x d, MLP in d x d_mlp, MLP out d_mlp x d] at ``rows``, and the SAE encoder
    d x d_sae at ``text_rows``): the time plain torch would need for the same matmul work, with no
    framework around it.
    """
    d = shape.d_model
    sq = time_matmul(rows, d, d, min_seconds)
    mlp_in = time_matmul(rows, d, shape.d_mlp, min_seconds)
    mlp_out = time_matmul(rows, shape.d_mlp, d, min_seconds)
    enc = time_matmul(text_rows, d, d_sae, min_seconds)
    flops = n_blocks * (4 * 2 * rows * d * d + 2 * 2 * rows * d * shape.d_mlp) + 2 * text_rows * d * d_sae
    seconds = n_blocks * (4 * sq["seconds"] + mlp_in["seconds"] + mlp_out["seconds"]) + enc["seconds"]
    return {
        "rows": rows,
        "text_rows": text_rows,
        "shapes": {"d_x_d": sq, "d_x_dmlp": mlp_in, "dmlp_x_d": mlp_out, "d_x_dsae": enc},
        "mix_gflops": flops / seconds / 1e9,
        "best_single_gflops": max(s["gflops"] for s in (sq, mlp_in, mlp_out, enc)),
    }


# --- where the pipeline's time goes ---------------------------------------------------------------

# (label, file name ending, function name): the pieces of (c) worth naming, timed inclusively by cProfile.
PROFILE_PARTS = (
    ("whole pipeline (aggregate_prompts)", "mechinterp/encoding.py", ("aggregate_prompts",)),
    ("model forward up to the hook", "transformer_lens/HookedTransformer.py", ("forward",)),
    ("transformer blocks, all", "components/transformer_block.py", ("forward",)),
    ("attention, in the blocks", "components/abstract_attention.py", ("forward",)),
    ("MLP, in the blocks", "components/mlps/mlp.py", ("forward",)),
    ("gelu_new (unfused elementwise), in the MLP", "utilities/activation_functions.py", ("gelu_new",)),
    ("LayerNorms, in the blocks", "components/layer_norm.py", ("forward",)),
    ("SAE encode", "saes/standard_sae.py", ("encode",)),
    ("per-prompt summaries", "mechinterp/encoding.py", ("summarise_batch", "summarise_positions")),
    ("padding batches", "mechinterp/encoding.py", ("pad_batch",)),
)
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear")


def profile_pipeline(world: World, prompts: Sequence[list[int]], batch_size: int) -> dict[str, Any]:
    """Run (c) once under cProfile (time per named piece) and once under torch.profiler (time per op).

    Timings under a profiler run a little slow; the shares are what matter. The number of transformer
    blocks actually run is reported too: ``stop_at_layer`` is exclusive, so it shows whether the block
    that owns the hook was computed although only its input is needed.
    """
    import cProfile
    import pstats

    from torch.profiler import ProfilerActivity, profile

    blocks_run = [0]
    handles = [block.register_forward_hook(lambda *_: blocks_run.__setitem__(0, blocks_run[0] + 1)) for block in world.model.blocks]
    profiler = cProfile.Profile()
    try:
        profiler.runcall(run_pipeline, world, prompts, batch_size)
    finally:
        for handle in handles:
            handle.remove()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = None
    parts = []
    for label, file_end, funcs in PROFILE_PARTS:
        hits = [v for (f, _, name), v in stats.items() if name in funcs and f.replace(os.sep, "/").endswith(file_end)]
        seconds, calls = sum(v[3] for v in hits), sum(v[1] for v in hits)
        total = seconds if total is None else total
        if calls:  # pieces the current encoding code does not have are left out
            parts.append({"part": label, "seconds": round(seconds, 3), "share": round(seconds / total, 3) if total else None, "calls": calls})
    n_batches = -(-len(prompts) // batch_size)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_pipeline(world, prompts, batch_size)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    op_total = sum(e.self_cpu_time_total for e in ops)
    matmul = sum(e.self_cpu_time_total for e in ops if e.key in MATMUL_OPS)
    return {
        "parts": parts,
        "blocks_run_per_batch": blocks_run[0] / n_batches,
        "blocks_needed": world.hook_layer,
        "matmul_share_of_op_time": round(matmul / op_total, 3),
        "top_ops": [
            {"op": e.key, "calls": e.count, "self_seconds": round(e.self_cpu_time_total / 1e6, 3), "share": round(e.self_cpu_time_total / op_total, 3)}
            for e in ops[:12]
        ],
    }


# --- peak memory, one fresh process per size -------------------------------------------------------


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports ru_maxrss in KiB).

    Linux keeps ru_maxrss across ``execve``: a child started by a big process starts with the parent's
    peak. The full run therefore measures memory before it builds anything (the parent is then a few
    hundred MB, far below a child's peak) and records the parent's peak at that moment as a floor.
    """
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 1024 / 1024


def vm_hwm_mb() -> float | None:
    """The kernel's per-address-space peak RSS (VmHWM), which a new program starts afresh; a cross-check."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """In this (fresh) process: build the world, run the pipeline on N prompts, report peak RSS."""
    world = build_world(ModelShape(), args.d_sae, args.hook_layer, args.seed, args.sae_l0)
    after_load = rss_mb()
    prompts = random_prompts(args.memory_child, args.min_len, args.max_len, world.shape.d_vocab, world.bos, args.seed + 7)
    start = time.perf_counter()
    with as_project_loads_it(world):
        rows = aggregate_prompts(world.loaded, Tokenized(prompts, n_skip=1), args.batch_size)
    seconds = time.perf_counter() - start
    n_positions = sum(map(len, prompts))
    return {
        "prompts": len(prompts),
        "tokens": n_positions,
        "peak_rss_mb": round(rss_mb(), 1),
        "peak_vm_hwm_mb": None if vm_hwm_mb() is None else round(vm_hwm_mb() or 0.0, 1),
        "peak_rss_after_load_mb": round(after_load, 1),
        "encode_seconds": round(seconds, 3),
        "tokens_per_second": round(n_positions / seconds, 1),
        "summaries_mb": round(sum(r.idx.nbytes + r.max.nbytes + r.mean.nbytes for r in rows) / 2**20, 2),
        "mean_features_fired_per_prompt": round(float(np.mean([len(r.idx) for r in rows])), 1),
    }


def measure_memory(args: argparse.Namespace, sizes: Sequence[int], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run :func:`memory_child` for each size in its own subprocess, so the peaks are independent."""
    results = []
    for n in sizes:
        log(f"memory: pipeline on {n} prompts in a fresh process ...")
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "--memory-child", str(n),
            "--seed", str(args.seed), "--min-len", str(args.min_len), "--max-len", str(args.max_len),
            "--batch-size", str(args.batch_size), "--sae-l0", str(args.sae_l0), "--threads", str(args.threads),
            "--d-sae", str(args.d_sae), "--hook-layer", str(args.hook_layer),
        ]
        floor = rss_mb()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"the memory measurement for {n} prompts failed:\n{done.stderr[-2000:]}")
        results.append({**json.loads(done.stdout.strip().splitlines()[-1]), "parent_peak_rss_at_start_mb": round(floor, 1)})
        log(f"  peak RSS {results[-1]['peak_rss_mb']:.0f} MB, {results[-1]['tokens_per_second']:.0f} tokens/s")
    return results


# --- the machine -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        total_kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory_gb = round(total_kib / 2**20, 1)
    except (OSError, ValueError, IndexError):
        memory_gb = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": memory_gb,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "versions": library_versions(),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall seconds, CPU-seconds busy machine-wide, CPU-seconds of this process and its children)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick  # all but idle and iowait
    own = os.times()
    return time.time(), busy, own.user + own.system + own.children_user + own.children_system


def others_cpu_share(start: tuple[float, float, float] | None, end: tuple[float, float, float] | None) -> float | None:
    """Share of the machine's cores used by other processes between two snapshots (0 = we were alone).

    The load average includes the benchmark's own threads; this subtracts them, so it says whether
    another program competed for the cores while a method was being timed.
    """
    if start is None or end is None or end[0] <= start[0]:
        return None
    others = (end[1] - start[1]) - (end[2] - start[2])
    return round(max(0.0, others) / ((end[0] - start[0]) * (os.cpu_count() or 1)), 3)


def wait_for_quiet(threshold: float, max_minutes: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Wait (up to ``max_minutes``) until the 1-minute load average is below ``threshold``."""
    start = time.time()
    while os.getloadavg()[0] > threshold and time.time() - start < max_minutes * 60:
        log(f"load average {os.getloadavg()[0]:.2f} > {threshold}; waiting for a quiet machine ...")
        time.sleep(30)
    quiet = os.getloadavg()[0] <= threshold
    return {"threshold": threshold, "waited_seconds": round(time.time() - start), "quiet_at_start": quiet}


# --- the report ------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def evaluate_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of issue #4 with the measured value and PASS/FAIL."""
    speed = results["speed"]
    targets = {
        "pipeline_vs_naive": {
            "target": f">= {TARGET_VS_NAIVE:g}x", "value": speed["speedup_vs_naive"],
            "pass": speed["speedup_vs_naive"] >= TARGET_VS_NAIVE,
        },
        "pipeline_vs_saelens": {
            "target": f">= {TARGET_VS_SAELENS:g}x", "value": speed["speedup_vs_saelens"],
            "pass": speed["speedup_vs_saelens"] >= TARGET_VS_SAELENS,
        },
        "share_of_matmul_gflops": {
            "target": f">= {TARGET_MATMUL_SHARE:.0%}", "value": results["flops"]["share_of_matmul_mix"],
            "pass": results["flops"]["share_of_matmul_mix"] >= TARGET_MATMUL_SHARE,
        },
    }
    memory = results.get("memory") or []
    if len(memory) >= 2:
        growth = memory[-1]["peak_rss_mb"] / memory[0]["peak_rss_mb"]
        targets["memory_growth"] = {
            "target": f"<= {TARGET_MEMORY_GROWTH:g}x ({memory[-1]['prompts']:,} vs {memory[0]['prompts']:,} prompts)",
            "value": round(growth, 3),
            "pass": growth <= TARGET_MEMORY_GROWTH,
        }
    return targets


def _share(results: dict[str, Any], phase: str) -> str:
    value = results.get("other_processes_cpu_share", {}).get(phase)
    return "?" if value is None else f"{value:.0%}"


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables (what the README's performance section shows)."""
    m, speed, flops, targets = results["machine"], results["speed"], results["flops"], results["targets"]
    n = speed["pipeline"]["prompts"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM; torch {m['versions']['torch']} "
        f"with {m['torch_threads']} threads; load average {results['load_average_start'][0]:.2f} at start, "
        f"{results['load_average_end'][0]:.2f} at end (these include the benchmark's own threads); "
        f"other processes used {_share(results, 'pipeline')}, {_share(results, 'naive')} and "
        f"{_share(results, 'saelens')} of the cores while (c), (a) and (b) were timed.",
        f"Model: random weights, GPT-2 small's shape; SAE: random StandardSAE 768 x {results['config']['d_sae']:,} "
        f"at {results['config']['hook_name']}; {n} prompts of {results['config']['min_len']}-"
        f"{results['config']['max_len']} tokens (BOS included), {speed['pipeline']['tokens']:,} tokens.",
    ]
    busiest = max((v for v in results.get("other_processes_cpu_share", {}).values() if v is not None), default=0.0)
    if busiest > CONTENTION_WARNING:
        lines.append(
            f"\n**Warning:** other processes used up to {busiest:.0%} of the cores during the timings, which "
            "slows PyTorch far more than that share suggests; rerun on a quiet machine (`--wait-for-quiet 1.2`)."
        )
    lines += [
        "",
        "| method | seconds | tokens/s | (c) is faster by | target | |",
        "|---|---:|---:|---:|---|---|",
        f"| (a) naive loop: 1 prompt, full `run_with_cache`, dense features kept | {speed['naive']['seconds']:.1f} | "
        f"{speed['naive']['tokens_per_second']:,.0f} | {speed['speedup_vs_naive']:.2f}x | "
        f"{targets['pipeline_vs_naive']['target']} | {verdict(targets['pipeline_vs_naive']['pass'])} |",
        f"| (b) SAELens `run_with_cache_with_saes`, 1 prompt | {speed['saelens']['seconds']:.1f} | "
        f"{speed['saelens']['tokens_per_second']:,.0f} | {speed['speedup_vs_saelens']:.2f}x | "
        f"{targets['pipeline_vs_saelens']['target']} | {verdict(targets['pipeline_vs_saelens']['pass'])} |",
        f"| (c) this project, `aggregate_prompts`, batch {results['config']['batch_size']} (median of "
        f"{len(speed['pipeline']['all_runs_seconds'])} runs) | "
        f"{speed['pipeline']['seconds']:.1f} | {speed['pipeline']['tokens_per_second']:,.0f} | 1x | | |",
        "",
        f"Same numbers: largest |difference| of per-prompt max activation, (a) vs (c) "
        f"{speed['agreement']['naive_vs_pipeline']['max_abs_diff_of_max']:.1e}, (b) vs (c) "
        f"{speed['agreement']['saelens_vs_pipeline']['max_abs_diff_of_max']:.1e} (activations are unit-scale).",
        "",
        "| (d) compute | GFLOP/s | share | target | |",
        "|---|---:|---:|---|---|",
        f"| (c) achieved ({flops['pipeline_gflop']:,.0f} GFLOP needed / {speed['pipeline']['seconds']:.1f} s) | "
        f"{flops['pipeline_gflops']:.1f} | | | |",
        f"| plain torch matmuls, same shapes and mix ({flops['matmul']['rows']} rows, encoder {flops['matmul']['text_rows']}) | "
        f"{flops['matmul']['mix_gflops']:.1f} | {flops['share_of_matmul_mix']:.0%} | "
        f"{targets['share_of_matmul_gflops']['target']} | {verdict(targets['share_of_matmul_gflops']['pass'])} |",
    ]
    for key, label in (("d_x_dsae", "SAE encoder"), ("d_x_dmlp", "MLP in"), ("dmlp_x_d", "MLP out"), ("d_x_d", "attention Q/K/V/O")):
        s = flops["matmul"]["shapes"][key]
        lines.append(
            f"| plain `[{s['m']}, {s['k']}] @ [{s['k']}, {s['n']}]` ({label}; into a preallocated `out=`: "
            f"{s['gflops_preallocated_out']:.0f}) | {s['gflops']:.1f} | "
            f"{flops['pipeline_gflops'] / s['gflops']:.0%} | | |"
        )
    memory = results.get("memory") or []
    if memory:
        base = memory[0]["peak_rss_mb"]
        lines += [
            "",
            "| (c) prompts | tokens | peak RSS (MB) | of which after loading (MB) | vs smallest | summaries (MB) | tokens/s |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in memory:
            lines.append(
                f"| {row['prompts']:,} | {row['tokens']:,} | {row['peak_rss_mb']:,.0f} | "
                f"{row['peak_rss_after_load_mb']:,.0f} | {row['peak_rss_mb'] / base:.2f}x | "
                f"{row['summaries_mb']:,.1f} | {row['tokens_per_second']:,.0f} |"
            )
        busy = results.get("other_processes_cpu_share_memory")
        if busy is not None and busy > CONTENTION_WARNING:
            lines.append(f"\n(Other processes used {busy:.0%} of the cores during these runs: their tokens/s are slowed; "
                         "peak memory is not affected.)")
        if "memory_growth" in targets:
            t = targets["memory_growth"]
            lines.append(f"\nPeak memory growth: {t['value']:.2f}x, target {t['target']}: {verdict(t['pass'])}.")
    prof = results.get("profile")
    if prof:
        lines += ["", "| where (c)'s time goes (cProfile, inclusive times) | seconds | share |", "|---|---:|---:|"]
        for part in prof["parts"]:
            lines.append(f"| {part['part']} | {part['seconds']:.2f} | {part['share']:.0%} |")
        lines.append(
            f"\nMatmuls are {prof['matmul_share_of_op_time']:.0%} of (c)'s op time (torch.profiler). Transformer blocks "
            f"run per batch: {prof['blocks_run_per_batch']:g}; needed for the hook: {prof['blocks_needed']}."
        )
    lines += ["", "| target | measured | |", "|---|---:|---|"]
    for name, t in targets.items():
        value = f"{t['value']:.0%}" if name == "share_of_matmul_gflops" else f"{t['value']:.2f}x"
        lines.append(f"| {name.replace('_', ' ')} {t['target']} | {value} | {verdict(t['pass'])} |")
    return "\n".join(lines) + "\n"


# --- the command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the project's SAE encoding path against a naive loop and SAELens "
        "(random weights of GPT-2 small's shape; offline). Results go to bench/results/.",
    )
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke run at small sizes (writes *_quick.*)")
    parser.add_argument(
        "--prompts", type=positive_int, default=None, help="prompts for the speed comparison (default: 300; 12 with --quick)"
    )
    parser.add_argument(
        "--memory-sizes", type=positive_int, nargs="*", default=None, metavar="N",
        help="numbers of prompts for the peak-memory runs (default: 100 1000 5000; 10 40 with --quick); "
        "give the flag with no numbers to skip them",
    )
    parser.add_argument("--min-len", type=positive_int, default=16, help="shortest prompt in tokens, BOS included (default: %(default)s)")
    parser.add_argument("--max-len", type=positive_int, default=64, help="longest prompt in tokens, BOS included (default: %(default)s)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=default_batch_size("cpu"),
        help="batch size of the pipeline (c) (default: the project's CPU default, %(default)s)",
    )
    parser.add_argument("--d-sae", type=positive_int, default=24576, help="SAE width (default: %(default)s, as gpt2-small-res-jb)")
    parser.add_argument("--hook-layer", type=int, default=8, help="the SAE reads blocks.LAYER.hook_resid_pre (default: %(default)s)")
    parser.add_argument(
        "--sae-l0", type=float, default=GPT2_SAE_L0,
        help="features firing per token, calibrated into the random SAE's bias (default: %(default)s, as gpt2-small-res-jb)",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=torch.get_num_threads(),
        help="torch threads (default: torch's own choice on this machine, %(default)s)",
    )
    parser.add_argument(
        "--pipeline-repeats", type=positive_int, default=3,
        help="times (c) is run on the speed prompts; the median run is reported (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the prompts (default: %(default)s)")
    parser.add_argument(
        "--matmul-seconds", type=float, default=1.0,
        help="seconds spent timing each reference matmul shape (default: %(default)s; 0.2 with --quick)",
    )
    parser.add_argument(
        "--wait-for-quiet", type=float, default=None, metavar="LOAD",
        help="before measuring, wait (up to --wait-minutes) until the 1-minute load average is below LOAD",
    )
    parser.add_argument("--wait-minutes", type=float, default=20.0, help="longest wait for --wait-for-quiet (default: %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, metavar="DIR",
        help="folder for the JSON and markdown results (default: bench/results beside this script)",
    )
    parser.add_argument(
        "--memory-child", type=positive_int, default=None, metavar="N",
        help="internal: only run the pipeline on N prompts in this process and print its peak memory as JSON "
        "(the full run starts one such process per memory size)",
    )
    parser.add_argument(
        "--no-profile", dest="profile", action="store_false",
        help="skip the profile of (c) that runs after the timings (it says where the time goes)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the results table, no progress")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = parser.parse_args(argv)
    if args.min_len < 2 or args.max_len < args.min_len:
        parser.error("need 2 <= --min-len <= --max-len (a prompt is BOS plus at least one token)")
    if args.prompts is None:
        args.prompts = 12 if args.quick else 300
    if args.memory_sizes is None:
        args.memory_sizes = [10, 40] if args.quick else [100, 1000, 5000]
    if args.quick:
        args.matmul_seconds = min(args.matmul_seconds, 0.2)
    return args


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args)))
        return 0
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.max_len > ModelShape().n_ctx:
        raise UserError(f"--max-len {args.max_len} exceeds GPT-2's context of {ModelShape().n_ctx} tokens")
    waited = wait_for_quiet(args.wait_for_quiet, args.wait_minutes, log) if args.wait_for_quiet else None
    results: dict[str, Any] = {
        "argv": list(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_start": load_average(),
        "wait": waited,
        "machine": machine(),
        "config": {
            "quick": args.quick, "prompts": args.prompts, "min_len": args.min_len, "max_len": args.max_len,
            "batch_size": args.batch_size, "d_sae": args.d_sae, "hook_name": f"blocks.{args.hook_layer}.hook_resid_pre",
            "sae_l0": args.sae_l0, "seed": args.seed, "model_shape": asdict(ModelShape()),
            "memory_sizes": args.memory_sizes,
        },
    }
    # Memory first, while this process is still small: Linux carries a parent's peak RSS into children.
    snap = cpu_snapshot()
    results["memory"] = measure_memory(args, sorted(args.memory_sizes), log) if args.memory_sizes else []
    results["load_average_after_memory"] = load_average()
    results["other_processes_cpu_share_memory"] = others_cpu_share(snap, cpu_snapshot())
    log(f"building a random GPT-2-small-shaped model and a {args.d_sae:,}-feature SAE ...")
    world = build_world(ModelShape(), args.d_sae, args.hook_layer, args.seed, args.sae_l0)
    sae_model = build_saelens_model(world)
    prompts = random_prompts(args.prompts, args.min_len, args.max_len, world.shape.d_vocab, world.bos, args.seed + 3)
    # One batch's worth of different prompts, so every method has met batch-sized shapes before timing.
    warm = random_prompts(min(args.batch_size, args.prompts), args.min_len, args.max_len, world.shape.d_vocab, world.bos, args.seed + 5)
    log(f"warming up each method on {len(warm)} prompts ...")
    run_pipeline(world, warm, args.batch_size)
    run_naive(world, warm)
    run_saelens(world, sae_model, warm)

    trace = results["load_average_trace"] = {"before_speed": load_average()}
    others = results["other_processes_cpu_share"] = {}
    log(f"(c) pipeline on {len(prompts)} prompts, batch size {args.batch_size} ...")
    snap = cpu_snapshot()
    # (c) takes seconds where (a) and (b) take minutes, so a short burst of other work would distort
    # it most: it is run a few times and the median run is reported (all runs are in the JSON).
    runs = sorted((run_pipeline(world, prompts, args.batch_size) for _ in range(args.pipeline_repeats)), key=lambda r: r.seconds)
    pipeline = runs[len(runs) // 2]
    others["pipeline"] = others_cpu_share(snap, cpu_snapshot())
    trace["after_pipeline"] = load_average()
    log(f"    {pipeline.seconds:.1f} s, {pipeline.tokens_per_second:,.0f} tokens/s")
    lengths = [len(p) for p in prompts]
    rows, text_rows = (round(x) for x in rows_per_batch(lengths, args.batch_size))
    log(f"(d) plain torch matmuls at {rows} rows ({text_rows} for the encoder) ...")
    snap = cpu_snapshot()
    reference = matmul_reference(rows, text_rows, world.shape, world.hook_layer, world.d_sae, args.matmul_seconds)
    others["matmul"] = others_cpu_share(snap, cpu_snapshot())
    log(f"(a) naive loop on {len(prompts)} prompts ...")
    snap = cpu_snapshot()
    naive = run_naive(world, prompts)
    others["naive"] = others_cpu_share(snap, cpu_snapshot())
    trace["after_naive"] = load_average()
    log(f"    {naive.seconds:.1f} s, {naive.tokens_per_second:,.0f} tokens/s")
    log(f"(b) SAELens run_with_cache_with_saes on {len(prompts)} prompts ...")
    snap = cpu_snapshot()
    saelens = run_saelens(world, sae_model, prompts)
    others["saelens"] = others_cpu_share(snap, cpu_snapshot())
    trace["after_saelens"] = load_average()
    log(f"    {saelens.seconds:.1f} s, {saelens.tokens_per_second:,.0f} tokens/s")

    needed = encoding_flops(lengths, world.shape, world.hook_layer, world.d_sae)
    results["speed"] = {
        "naive": naive.summary(),
        "saelens": saelens.summary(),
        "pipeline": {**pipeline.summary(), "all_runs_seconds": [round(r.seconds, 3) for r in runs]},
        "speedup_vs_naive": round(naive.seconds / pipeline.seconds, 3),
        "speedup_vs_saelens": round(saelens.seconds / pipeline.seconds, 3),
        "agreement": {
            "naive_vs_pipeline": agreement(naive, pipeline),
            "saelens_vs_pipeline": agreement(saelens, pipeline),
            "largest_activation": float(pipeline.max.max()),
            "mean_features_fired_per_prompt": float((pipeline.max > 0).sum(1).mean()),
        },
    }
    results["flops"] = {
        "formula": encoding_flops.__doc__.split("\n\n")[1].strip() if encoding_flops.__doc__ else "",
        "pipeline_gflop": needed / 1e9,
        "pipeline_gflops": needed / pipeline.seconds / 1e9,
        "matmul": reference,
        "share_of_matmul_mix": round(needed / pipeline.seconds / 1e9 / reference["mix_gflops"], 4),
        "share_of_best_single_matmul": round(needed / pipeline.seconds / 1e9 / reference["best_single_gflops"], 4),
    }
    if args.profile:
        log(f"profiling (c) on {len(prompts)} prompts (cProfile, then torch.profiler) ...")
        results["profile"] = profile_pipeline(world, prompts, args.batch_size)
    results["load_average_end"] = load_average()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results["targets"] = evaluate_targets(results)

    table = markdown(results)
    stem = "bench_encoding_quick" if args.quick else "bench_encoding"
    out = Path(args.out)
    write_json(out / f"{stem}.json", results)
    write_text(out / f"{stem}.md", table)
    print(table)
    log(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
