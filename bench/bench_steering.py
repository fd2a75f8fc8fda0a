"""Benchmark: Chapter 4's interventions, scored the straightforward way and the project's way (issue 25).

Chapter 4 reruns the model from the SAE's hook once per intervention (the feature, 20 controls, each
steering coefficient, on every batch) and scores each run against the clean one over GPT-2's 50,257-token
vocabulary: log P(targets), their log-odds and KL(clean || edited). This measures, on the same batches
and interventions, the seconds per intervention of

  (a) the straightforward computation, Chapter 4's code before issue 25 (:func:`straightforward_effects`):
      log-softmax of the whole ``[batch, positions, 50,257]`` logits per intervention, the clean run's
      ``exp`` per intervention, every padding and BOS row included;
  (b) the project's ``mechinterp.causal.intervene.intervention_effects``: the text positions only, a few
      rows at a time, the clean probabilities once per batch, the unembedding's transposed weight made
      once and its output buffer reused (``mechinterp.causal.unembed``);

checks that both give the same numbers bit for bit, and profiles both (the share of each part). Two worlds:

  * ``faithful``: the GPT-2-faithful test world (tests/gpt2_world.py: GPT-2's tokenizer and 50,257-token
    vocabulary, 12 layers of width 64, ``gpt2-small-res-jb``'s names), loaded through the project's loader,
    with exactly the default run's interventions: the planted happy feature and its 20 matched controls
    ablated on prompts/happy.txt, the default sweep steered on prompts/baseline.txt, target ``' happy'``;
  * ``gpt2-small``: random weights of GPT-2 small's real shape (bench_encoding.py's world: 768 wide, SAE
    768 -> 24,576 at ``blocks.8.hook_resid_pre``), seeded random prompts, fewer interventions (each costs
    a 768 x 50,257 unembedding).

Run from the repository root:
    python bench/bench_steering.py                      # both worlds, float32 (10-15 minutes on 2 busy cores)
    python bench/bench_steering.py --quick              # the faithful world only, 2 repeats: a smoke run
    python bench/bench_steering.py --dtype bfloat16     # the project's loader casts model and SAE
    python bench/bench_steering.py --dtype float32 bfloat16   # both, interleaved, with bfloat16's speed ratio

Several dtypes are timed in one run on the same worlds and interventions, interleaved (a slow spell of the
machine hits every dtype alike); (a) and (b) must agree bit for bit within each dtype.

Prints a markdown table and writes ``bench/results/bench_steering[_quick].json`` and ``.md`` (whatever
the dtypes; ``bench/performance_tables.py`` reads them).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for folder in (ROOT, BENCH_DIR):  # the package and the tests, and bench_encoding beside this file
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from bench_encoding import (
    GPT2_SAE_L0,
    ModelShape,
    build_world,
    load_average,
    machine,
    part_seconds,
    random_prompts,
    world_in_dtype,
    write_report,
)

from mechinterp.causal import intervene
from mechinterp.causal.intervene import (
    DEFAULT_SWEEP,
    Batch,
    CleanScores,
    Effect,
    GroupBatches,
    HookFn,
    LocatedEffects,
    Target,
    ablation_hook,
    firing_rates,
    logits_from_hook,
    make_batches,
    matched_controls,
    steering_direction,
    steering_hook,
    target_scores,
)
from mechinterp.cli import positive_int, run_cli
from mechinterp.core.encoding import Tokenized, hook_activations
from mechinterp.core.loading import DTYPES, Loaded, cpu_bf16_instructions

RESULTS_DIR = BENCH_DIR / "results"
FAITHFUL_FEATURE_TARGET = "happy"  # the default run's --target (tests/test_gpt2_world.py's ch4_default)
Effects = tuple[dict[str, Effect], CleanScores, dict[str, LocatedEffects]]


# --- (a) the straightforward computation: Chapter 4's scoring before issue 25 ---------------------------


@torch.inference_mode()
def straightforward_effects(loaded: Loaded, batches: Sequence[Batch], hooks: dict[str, HookFn],
                            targets: Sequence[int], located: dict[str, Target] | None = None) -> Effects:
    """``intervention_effects`` as it was before issue 25, kept as the reference: the whole batch's
    log-softmax per intervention, and the clean run's probabilities recomputed per intervention."""
    located = located or {}
    sums = {name: np.zeros(3) for name in hooks}
    where_sums = {name: {w: np.zeros(4) for w in ("firing", "next")} for name in located}
    clean_where = {name: np.zeros(2) for name in located}
    clean_sums, n = np.zeros(2), 0
    for batch in batches:
        resid = intervene.block_input(loaded, batch.tokens)
        clean = logits_from_hook(loaded, resid).float().log_softmax(-1)  # [B, T, d_vocab]
        valid = batch.valid
        clean_lp, clean_lo = target_scores(clean, targets)
        clean_sums += [float(clean_lp[valid].sum()), float(clean_lo[valid].sum())]
        n += int(valid.sum())
        masks = {}
        if located:
            acts = loaded.sae.sae.encode(hook_activations(loaded, batch.tokens))
            for name, f in located.items():
                fires = (acts[..., [f] if isinstance(f, int) else list(f)] > 0).any(-1) & valid
                after = torch.zeros_like(fires)
                after[:, 1:] = fires[:, :-1]
                masks[name] = {"firing": fires, "next": after & valid}
                clean_where[name] += [float(clean_lp[fires].sum()), float(clean_lo[fires].sum())]
        for name, fn in hooks.items():
            edited = logits_from_hook(loaded, resid, fn).float().log_softmax(-1)
            lp, lo = target_scores(edited, targets)
            kl = (clean.exp() * (clean - edited)).sum(-1)
            d_lp, d_lo = lp - clean_lp, lo - clean_lo
            sums[name] += [float(d_lp[valid].sum()), float(d_lo[valid].sum()), float(kl[valid].sum())]
            for where, mask in masks.get(name, {}).items():
                where_sums[name][where] += [float(d_lp[mask].sum()), float(d_lo[mask].sum()),
                                            float(kl[mask].sum()), float(mask.sum())]
    effects = {k: Effect(v[0] / n, v[1] / n, v[2] / n, n) for k, v in sums.items()}

    def mean(v: np.ndarray) -> Effect:
        m = max(v[3], 1.0)
        return Effect(v[0] / m, v[1] / m, v[2] / m, int(v[3]))

    at = {name: LocatedEffects(mean(w["firing"]), mean(w["next"]),
                               CleanScores(*(clean_where[name] / max(w["firing"][3], 1.0))))
          for name, w in where_sums.items()}
    return effects, CleanScores(clean_sums[0] / n, clean_sums[1] / n), at


# --- the workloads --------------------------------------------------------------------------------------


@dataclass
class Workload:
    """One set of interventions on one set of batches, as ``intervention_effects`` takes them."""

    name: str
    loaded: Loaded
    batches: list[Batch]
    hooks: dict[str, HookFn]
    targets: list[int]
    located: dict[str, Target]

    @property
    def positions(self) -> int:
        return int(sum(int(b.valid.sum()) for b in self.batches))


def ablation_workload(name: str, loaded: Loaded, batches: list[Batch], feature: int, n_controls: int,
                      targets: list[int], controls: Sequence[int] | None = None) -> Workload:
    """The feature and ``n_controls`` firing-rate-matched controls ablated, as ``run_ablation`` does
    (``controls``: given, so that every dtype ablates the same features; bfloat16 shifts firing rates)."""
    if controls is None:
        controls = matched_controls(firing_rates(loaded, batches), feature, n_controls, seed=0).features
    located: dict[str, Target] = {"feature": feature} | {f"control {c}": c for c in controls}
    hooks = {key: ablation_hook(loaded, f, 1) for key, f in located.items()}
    return Workload(name, loaded, batches, hooks, targets, located)


def steering_workload(name: str, loaded: Loaded, batches: list[Batch], feature: int, typical: float,
                      coeffs: Sequence[float], targets: list[int]) -> Workload:
    """The steering curve's interventions, as ``steering_curve`` builds them."""
    hooks = {f"{c!r}": steering_hook(steering_direction(loaded, feature, c, typical), 1) for c in coeffs}
    return Workload(name, loaded, batches, hooks, targets, {})


def reference_dtype(dtypes: Sequence[str]) -> str:
    """The dtype whose run picks the features and scales, so that every dtype does the same interventions."""
    return "float32" if "float32" in dtypes else dtypes[0]


def faithful_workloads(dtypes: Sequence[str], home: Path) -> dict[str, list[Workload]]:
    """The default Chapter 4 run's ablation and steering on the GPT-2-faithful world (built once in
    ``home``), loaded once per dtype through the project's loader, so every dtype has the same weights;
    the controls and the typical activation come from the reference dtype's run."""
    from mechinterp.core.features import typical_max_activation
    from mechinterp.core.prompts import load_prompt_sets
    from mechinterp.core.source import SourceOptions, load, resolve_source
    from tests import gpt2_world as gw

    world = gw.build_gpt2_world(home / "hf_home")
    options = intervene.FeatureTestOptions(target=(FAITHFUL_FEATURE_TARGET,))
    sets = load_prompt_sets(ROOT / "prompts", baseline="baseline")
    groups = {}
    for dtype in dtypes:
        with gw.hub_cache(world.hf_home):
            loaded = load(resolve_source(SourceOptions(dtype=dtype)))
        groups[dtype] = (loaded, GroupBatches.of(loaded, sets, options))
    happy = world.planted.happy
    ref_loaded, ref = groups[reference_dtype(dtypes)]
    controls = matched_controls(firing_rates(ref_loaded, ref.batches("happy")), happy, 20, seed=0).features
    typical, _ = typical_max_activation(ref.activations([happy]), happy)
    targets = intervene.resolve_target_tokens(ref_loaded, options.target)
    return {dtype: [
        ablation_workload("faithful: ablation (feature + 20 controls, happy.txt)", loaded, prompts.batches("happy"),
                          happy, 20, targets, controls),
        steering_workload("faithful: steering curve (7 coefficients, baseline.txt)", loaded,
                          prompts.batches("baseline"), happy, typical, options.coeffs, targets),
    ] for dtype, (loaded, prompts) in groups.items()}


def gpt2_small_workloads(dtypes: Sequence[str], n_prompts: int, n_controls: int,
                         seed: int) -> dict[str, list[Workload]]:
    """Random weights of GPT-2 small's shape (built once in float32, then cast per dtype as the project's
    loader casts them) on seeded random prompts; the feature that fires about as often as the faithful
    world's happy feature ablated beside ``n_controls`` controls, and steered over three coefficients.
    The features are picked in the reference dtype, so every dtype does the same interventions."""
    base = build_world(ModelShape(), 24_576, 8, seed, GPT2_SAE_L0)
    worlds = {dtype: world_in_dtype(base, dtype) for dtype in dtypes}
    prompts = random_prompts(n_prompts, 8, 28, base.shape.d_vocab, base.bos, seed)
    batches = {dtype: make_batches(w.loaded, Tokenized(prompts, n_skip=1), 16) for dtype, w in worlds.items()}
    ref = reference_dtype(dtypes)
    rates = firing_rates(worlds[ref].loaded, batches[ref])
    feature = int(np.argmin(np.abs(rates - 0.04)))
    controls = matched_controls(rates, feature, n_controls, seed=0).features
    targets = [int(t) for t in np.random.default_rng(seed).choice(base.shape.d_vocab - 1, 3, replace=False)]
    return {dtype: [
        ablation_workload(f"gpt2-small shape: ablation (feature + {n_controls} controls)", w.loaded, batches[dtype],
                          feature, n_controls, targets, controls),
        steering_workload("gpt2-small shape: steering (3 coefficients)", w.loaded, batches[dtype], feature, 1.0,
                          (0.0, 1.0, DEFAULT_SWEEP[-1]), targets),
    ] for dtype, w in worlds.items()}


# --- timing and profiling -------------------------------------------------------------------------------

METHODS: dict[str, Callable[..., Effects]] = {
    "straightforward": straightforward_effects,
    "project": intervene.intervention_effects,
}


def run_method(method: str, w: Workload) -> Effects:
    return METHODS[method](w.loaded, w.batches, w.hooks, w.targets, w.located)


def time_workload(w: Workload, repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Both methods, interleaved (a slow spell of the machine hits both), ``repeats`` times each."""
    return time_workloads({w.loaded.dtype: w}, repeats, log)[0]


def time_workloads(by_dtype: dict[str, Workload], repeats: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One workload in each dtype, both methods, ``repeats`` times each: every repeat runs every
    (dtype, method) once, so a slow spell of the machine hits all of them alike.

    Returns:
        One timing entry per dtype (in ``by_dtype``'s order), each naming its ``dtype``; ``identical``
        compares (a) with (b) within that dtype (different dtypes give different numbers).
    """
    seconds = {d: {m: [] for m in METHODS} for d in by_dtype}
    effects: dict[str, dict[str, Effects]] = {d: {} for d in by_dtype}
    for r in range(repeats):
        for dtype, w in by_dtype.items():
            for method in METHODS:
                start = time.perf_counter()
                effects[dtype][method] = run_method(method, w)
                seconds[dtype][method].append(time.perf_counter() - start)
                log(f"{w.name} [{dtype}]: {method} run {r + 1}: {seconds[dtype][method][-1]:.2f} s")
    timings = []
    for dtype, w in by_dtype.items():
        per = {m: statistics.median(s) / len(w.hooks) for m, s in seconds[dtype].items()}
        timings.append({
            "workload": w.name, "dtype": dtype, "batches": len(w.batches), "positions": w.positions,
            "interventions": len(w.hooks), "seconds": seconds[dtype], "seconds_per_intervention": per,
            "speedup": per["straightforward"] / per["project"],
            "identical": effects[dtype]["straightforward"] == effects[dtype]["project"],
        })
    return add_dtype_ratios(timings)


def add_dtype_ratios(timings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each non-float32 entry ``speed_vs_float32``: per method, float32's seconds per intervention
    over this dtype's on the same workload (above 1: faster than float32); None without a float32 entry."""
    float32 = {t["workload"]: t for t in timings if t.get("dtype", "float32") == "float32"}
    for t in timings:
        ref = float32.get(t["workload"])
        if t.get("dtype", "float32") == "float32" or ref is None:
            t["speed_vs_float32"] = None
            continue
        t["speed_vs_float32"] = {m: ref["seconds_per_intervention"][m] / t["seconds_per_intervention"][m]
                                 for m in METHODS}
    return timings


def profile_parts() -> list[tuple[str, Callable[[tuple], bool]]]:
    """The named parts of a run, each as a test on cProfile's (file, line, name) keys."""
    return [
        ("model from the hook on (logits_from_hook)", lambda k: k[2] == "logits_from_hook"),
        ("  of which the unembedding", lambda k: k[0].endswith("unembed.py") and k[2] == "forward"),
        ("  of which the intervention hook (SAE encode/decode, or the added direction)",
         lambda k: k[0].endswith("intervene.py") and k[2] == "hook"),
        ("log-softmax", lambda k: k[0] == "~" and "log_softmax" in k[2]),
        ("target scores (target_scores)", lambda k: k[2] == "target_scores"),
        ("firing positions (SAE encode)", lambda k: k[2] in ("_located_masks", "hook_activations")),
    ]


def profile_workload(w: Workload) -> dict[str, list[dict[str, Any]]]:
    """Each method once under cProfile: seconds and share of the whole per named part."""
    shares = {}
    for method, fn in METHODS.items():
        profiler = cProfile.Profile()
        profiler.runcall(run_method, method, w)
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        whole = part_seconds(stats, {k for k in stats if k[2] == fn.__name__})[0]
        rows = []
        for label, test in profile_parts():
            seconds, _ = part_seconds(stats, {k for k in stats if test(k)})
            rows.append({"part": label, "seconds": round(seconds, 3), "share": round(seconds / whole, 3)})
        named = sum(r["seconds"] for r in rows if not r["part"].startswith("  "))
        rows.append({"part": "the rest (KL, differences, sums, index copies)", "seconds": round(whole - named, 3),
                     "share": round((whole - named) / whole, 3)})
        shares[method] = [{"part": "whole", "seconds": round(whole, 3), "share": 1.0}, *rows]
    return shares


# --- the report -----------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """The timings table (a dtype column; with several dtypes, each one's speed against float32's), then
    a cProfile share table per workload and dtype."""
    m = results["machine"]
    bf16 = ", ".join(m["bf16_instructions"] or []) or "none"
    dtypes = results.get("dtypes") or [results["dtype"]]
    ratio = len(dtypes) > 1  # the speed column only means something beside a float32 run
    lines = [
        (f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['versions'].get('torch', '?')} with "
        f"{m['torch_threads']} threads; bf16 instructions (/proc/cpuinfo): {bf16}; dtype {', '.join(dtypes)}; "
        f"load average {results['load_average'][0]} at start, {results['load_average'][1]} at end."),
        "",
        ("| workload | dtype | batches | text positions | interventions | (a) straightforward, s per intervention "
        "| (b) project, s per intervention | speed-up | same numbers |"
         + (" (b) speed vs float32 |" if ratio else "")),
        "|---|---|---:|---:|---:|---:|---:|---:|---|" + ("---:|" if ratio else ""),
    ]
    for t in results["timings"]:
        per = t["seconds_per_intervention"]
        row = (f"| {t['workload']} | {t.get('dtype', dtypes[0])} | {t['batches']} | {t['positions']:,} | "
               f"{t['interventions']} | {per['straightforward']:.3f} | {per['project']:.3f} | {t['speedup']:.1f}x | "
               f"{'bit for bit' if t['identical'] else 'NO'} |")
        if ratio:
            speed = t.get("speed_vs_float32")
            row += f" {speed['project']:.2f}x |" if speed else " 1x |" if t.get("dtype") == "float32" else " - |"
        lines.append(row)
    lines.append(f"\nMedian of {results['repeats']} interleaved runs; a run scores every intervention on "
                 "every batch, and its seconds are divided by the number of interventions (the clean run "
                 "of each batch included). 'Same numbers' compares (a) with (b) within a dtype."
                 + (" '(b) speed vs float32': float32's seconds per intervention over this dtype's (above 1: "
                    "faster than float32)." if ratio else ""))
    for t in results["timings"]:
        if not t["profile"].get("straightforward"):
            continue
        lines += ["", f"Profile, {t['workload']}, {t.get('dtype', dtypes[0])} (cProfile; nested parts indented):", "",
                  "| part | (a) seconds | (a) share | (b) seconds | (b) share |", "|---|---:|---:|---:|---:|"]
        a, b = t["profile"]["straightforward"], t["profile"]["project"]
        for ra, rb in zip(a, b):
            lines.append(f"| {ra['part']} | {ra['seconds']:.2f} | {ra['share']:.0%} | {rb['seconds']:.2f} | "
                         f"{rb['share']:.0%} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the faithful world only, 2 repeats: a smoke run")
    parser.add_argument("--worlds", nargs="+", choices=["faithful", "gpt2-small"], default=None,
                        help="which worlds to measure (default: both; --quick: faithful)")
    parser.add_argument("--dtype", nargs="+", choices=[d for d in DTYPES if d != "float16"], default=["float32"],
                        help="what the model and the SAE compute in; several (float32 bfloat16): each timed on "
                             "the same workloads, interleaved, with its speed against float32's (bfloat16 is "
                             "emulated, and slow, on CPUs without bf16 instructions)")
    parser.add_argument("--repeats", type=positive_int, default=None, help="timed runs per method (default 3; "
                        "--quick: 2)")
    parser.add_argument("--gpt2-prompts", type=positive_int, default=32, help="random prompts in the gpt2-small world")
    parser.add_argument("--gpt2-controls", type=positive_int, default=5,
                        help="controls ablated beside the feature in the gpt2-small world")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: torch's own; the test world's runs use 1). On a machine "
                             "other programs keep busy, several threads spin-wait for each other and every "
                             "timing inflates several-fold")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random world and prompts")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for the JSON and markdown results")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    log = (lambda _: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    worlds = args.worlds or (["faithful"] if args.quick else ["faithful", "gpt2-small"])
    dtypes = list(dict.fromkeys(args.dtype))  # each once, in the order given
    repeats = args.repeats or (2 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "bfloat16" in dtypes and not cpu_bf16_instructions():
        log("note: this CPU has no bf16 instructions: PyTorch emulates bfloat16, many times slower than float32")
    results: dict[str, Any] = {"argv": list(sys.argv[1:] if argv is None else argv), "machine": machine(),
                               "dtype": ", ".join(dtypes), "dtypes": dtypes, "repeats": repeats,
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average": [load_average()[0]],
                               "timings": []}
    with tempfile.TemporaryDirectory(prefix="bench_steering_") as home:
        for by_dtype in workloads_by_dtype(args, worlds, dtypes, Path(home)):
            timings = time_workloads(by_dtype, repeats, log)
            for t in timings:
                t["profile"] = {} if args.no_profile else profile_workload(by_dtype[t["dtype"]])
            results["timings"] += timings
    results["load_average"].append(load_average()[0])
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_report(Path(args.out), "bench_steering_quick" if args.quick else "bench_steering", results,
                 markdown(results), log)
    return 0 if all(t["identical"] for t in results["timings"]) else 1


def workloads_by_dtype(args: argparse.Namespace, worlds: Sequence[str], dtypes: Sequence[str],
                       home: Path) -> list[dict[str, Workload]]:
    """Each workload of the chosen worlds as ``{dtype: the workload in that dtype}``."""
    lists: dict[str, list[Workload]] = {d: [] for d in dtypes}
    made = []
    if "faithful" in worlds:
        made.append(faithful_workloads(dtypes, home))
    if "gpt2-small" in worlds:
        made.append(gpt2_small_workloads(dtypes, args.gpt2_prompts, args.gpt2_controls, args.seed))
    for per_dtype in made:
        for d in dtypes:
            lists[d] += per_dtype[d]
    return [{d: lists[d][i] for d in dtypes} for i in range(len(lists[dtypes[0]]))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
