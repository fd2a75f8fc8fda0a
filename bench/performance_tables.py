"""float32 and bfloat16 side by side: one table from the latest encoding, mining and Chapter 4 benchmarks.

Each benchmark writes its own JSON under bench/results/ (git-ignored), and its own table; comparing the
dtypes across them meant copying numbers by hand. This script reads the latest

  * ``bench_encoding[_quick].json`` (Chapter 1/2's encoding path, (c): tokens/s),
  * ``bench_mining[_quick][_float32_bfloat16].json`` (Chapter 3's corpus mining pass: tokens/s),
  * ``bench_steering[_quick].json`` (Chapter 4: seconds per intervention, per workload),

and writes one markdown table: the float32 value, the bfloat16 value, bfloat16's speed against float32's,
whether the CPU multiplies bfloat16 natively (its flags, as each run recorded them) or emulates it, and the
date, CPU, threads and load average of each run. A benchmark that has not been run gives a row that says
which command makes it.

Run from the repository root:
    python bench/performance_tables.py --quick           # print the table of the --quick runs
    python bench/performance_tables.py --write           # put it in docs/performance.md and bench/README.md

``--write`` replaces only the text between ``<!-- dtype-table:start -->`` and ``<!-- dtype-table:end -->``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
START = "<!-- dtype-table:start -->"
END = "<!-- dtype-table:end -->"
DOCS = (ROOT / "docs" / "performance.md", BENCH_DIR / "README.md")  # the files --write fills
# bench_mining.py names a several-dtype run after its dtypes (bench_mining_float32_bfloat16.json).
DTYPE_SUFFIX = re.compile(r"(_(float32|bfloat16|float16))*")


@dataclass
class Row:
    """One line of the table: one measure of one benchmark in both dtypes."""

    bench: str
    measure: str
    float32: str = "-"
    bfloat16: str = "-"
    speed: str = "-"  # bfloat16's speed over float32's, in words
    bf16: str = "-"  # native (which flags) or emulated
    run: str = "-"  # date, CPU, threads, load average
    note: str = ""

    def cells(self) -> list[str]:
        return [self.bench, self.measure, self.float32, self.bfloat16, self.speed, self.bf16, self.run, self.note]


@dataclass
class Bench:
    """Where a benchmark's results live, and the command that makes them."""

    name: str
    stem: str
    measure: str
    command: str


BENCHES = (
    Bench("encoding (Chapters 1-2, (c))", "bench_encoding", "tokens/s", "python bench/bench_encoding.py"),
    Bench("corpus mining (Chapter 3)", "bench_mining", "tokens/s",
          "python bench/bench_mining.py --dtype float32 bfloat16"),
    Bench("Chapter 4 interventions, (b)", "bench_steering", "s per intervention",
          "python bench/bench_steering.py --dtype float32 bfloat16"),
)


# --- finding and reading the results ------------------------------------------------------------------


def latest(results: Path, stem: str) -> Path | None:
    """The newest ``stem[_dtype...].json`` that ran both float32 and bfloat16, else the newest one."""
    found = [p for p in results.glob(f"{stem}*.json") if DTYPE_SUFFIX.fullmatch(p.stem[len(stem):])]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    both = [p for p in found if {"float32", "bfloat16"} <= dtypes_of(json.loads(p.read_text()))]
    return (both or found or [None])[0]


def dtypes_of(data: dict[str, Any]) -> set[str]:
    """The dtypes a result holds, whichever benchmark wrote it."""
    if "speed" in data:  # bench_encoding: float32 always, the reduced dtype beside it
        return {"float32"} | ({data["reduced"]["dtype"]} if data.get("reduced") else set())
    if "runs" in data:
        return {r.get("dtype", "float32") for r in data["runs"]}
    return {t.get("dtype", data.get("dtype", "float32")) for t in data.get("timings", [])}


def bf16_words(data: dict[str, Any]) -> str:
    """Native (the flags the run recorded) or emulated; a GPU run says so."""
    device = data.get("config", {}).get("device") or "cpu"
    if device.startswith("cuda"):
        return f"GPU: {data['machine'].get('gpu')}"
    flags = data["machine"].get("bf16_instructions")
    if flags is None:
        return "unknown"
    return f"native: {', '.join(flags)}" if flags else "none: emulated"


def run_words(data: dict[str, Any], path: Path, threads: Any) -> str:
    """When and where the run was: date, CPU, torch threads, 1-minute load average at start and end."""
    started = data.get("started")
    when = (started[:16].replace("T", " ") if started
            else time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)) + " (file)")
    load = data.get("load_average") or [data["load_average_start"][0], data["load_average_end"][0]]
    plural = "" if threads == 1 else "s"
    return f"{when}; {data['machine']['cpu']}; {threads} thread{plural}; load {load[0]:.2f} -> {load[-1]:.2f}"


def number(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:#.3g}"  # 3 digits even when slow


def speed_words(ratio: float) -> str:
    """bfloat16's speed as a multiple of float32's, with the slow-down spelled out below 1."""
    return f"{ratio:.2g}x" + (f" ({1 / ratio:.2g}x slower)" if ratio < 1 else "")


# --- one benchmark's rows -----------------------------------------------------------------------------


def encoding_rows(data: dict[str, Any], path: Path, bench: Bench) -> list[Row]:
    f32 = data["speed"]["pipeline"]
    row = Row(bench.name, bench.measure, number(f32["tokens_per_second"]), bf16=bf16_words(data),
              run=run_words(data, path, data["machine"]["torch_threads"]))
    reduced = data.get("reduced")
    if not reduced or reduced["dtype"] != "bfloat16":
        row.bfloat16, row.note = "not run", f"bfloat16 not run: `{bench.command}` (its default --dtype bfloat16)"
        return [row]
    bf16, same = reduced["pipeline"], reduced["float32_same_prompts"]
    row.bfloat16 = number(bf16["tokens_per_second"])
    row.speed = speed_words(reduced["speedup_vs_float32"])
    row.note = f"{f32['prompts']} prompts, {f32['tokens']:,} tokens"
    apart = same != {k: f32[k] for k in same}  # emulated bfloat16 runs once; float32 is then timed again
    if apart:
        row.note += (f"; the ratio is against float32 on bfloat16's {bf16['prompts']} prompts, timed right "
                     f"after it ({number(same['tokens_per_second'])} tokens/s)")
    busy = data.get("other_processes_cpu_share") or {}
    row.note += others_words(busy.get("pipeline"), busy.get("reduced")) + ("" if apart else "; interleaved")
    return [row]


def others_words(float32: float | None, bfloat16: float | None) -> str:
    """The share of the cores other programs used while each dtype was timed (0%: alone)."""
    if float32 is None or bfloat16 is None:
        return ""
    return f"; other programs used {float32:.0%} (float32) and {bfloat16:.0%} (bfloat16) of the cores"


def mining_rows(data: dict[str, Any], path: Path, bench: Bench) -> list[Row]:
    last = {}  # per dtype, the run that mined the most tokens (the smaller sizes are milestones of it)
    for r in data["runs"]:
        dtype = r.get("dtype", "float32")
        if dtype not in last or r["tokens"] >= last[dtype]["tokens"]:
            last[dtype] = r
    row = Row(bench.name, bench.measure, bf16=bf16_words(data), run=run_words(data, path, data["config"]["threads"]))
    f32, bf16 = last.get("float32"), last.get("bfloat16")
    if f32:
        row.float32, row.note = number(f32["tokens_per_second"]), f"{f32['tokens']:,} tokens"
    if not (f32 and bf16):
        row.float32 = row.float32 if f32 else "not run"
        row.note = f"{'float32' if bf16 else 'bfloat16'} not run: `{bench.command}`"
        row.bfloat16 = number(bf16["tokens_per_second"]) if bf16 else "not run"
        return [row]
    row.bfloat16 = number(bf16["tokens_per_second"])
    row.speed = speed_words(bf16["tokens_per_second"] / f32["tokens_per_second"])
    if bf16["tokens"] != f32["tokens"]:
        row.note += f" (bfloat16: {bf16['tokens']:,})"
    if bf16.get("rescore"):
        row.note += f"; bfloat16's pass alone (its float32 re-score took {bf16['rescore']['seconds']:.1f} s more)"
    # bench_mining runs the dtypes one after the other, each in its own process: load can differ between them
    row.note += others_words(f32.get("other_processes_cpu_share"), bf16.get("other_processes_cpu_share"))
    row.note += "; one dtype after the other"
    return [row]


def steering_rows(data: dict[str, Any], path: Path, bench: Bench) -> list[Row]:
    by_workload: dict[str, dict[str, dict[str, Any]]] = {}
    for t in data["timings"]:
        by_workload.setdefault(t["workload"], {})[t.get("dtype", data.get("dtype", "float32"))] = t
    rows = []
    for workload, entries in by_workload.items():
        row = Row(f"{bench.name}: {workload}", bench.measure, bf16=bf16_words(data),
                  run=run_words(data, path, data["machine"]["torch_threads"]))
        seconds = {d: t["seconds_per_intervention"]["project"] for d, t in entries.items()}
        row.float32 = f"{seconds['float32']:.3f}" if "float32" in seconds else "not run"
        row.bfloat16 = f"{seconds['bfloat16']:.3f}" if "bfloat16" in seconds else "not run"
        if "float32" in seconds and "bfloat16" in seconds:
            row.speed = speed_words(seconds["float32"] / seconds["bfloat16"])
        else:
            row.note = f"{'float32' if 'bfloat16' in seconds else 'bfloat16'} not run: `{bench.command}`; "
        first = next(iter(entries.values()))
        row.note += f"{first['positions']:,} text positions, {first['interventions']} interventions; "
        same = all(t["identical"] for t in entries.values())
        row.note += "(a) = (b) bit for bit in each dtype" if same else "(a) and (b) DIFFER"
        rows.append(row)
    return rows


READERS = {"bench_encoding": encoding_rows, "bench_mining": mining_rows, "bench_steering": steering_rows}


# --- the table ----------------------------------------------------------------------------------------


def rows_for(results: Path, quick: bool) -> tuple[list[Row], list[Path]]:
    """Every benchmark's rows (a 'not run' row where it has no results), and the files read."""
    rows, read = [], []
    for bench in BENCHES:
        if quick:
            bench = replace(bench, stem=bench.stem + "_quick", command=bench.command + " --quick")
        path = latest(results, bench.stem)
        if path is None:
            rows.append(Row(bench.name, bench.measure, note=f"not run: `{bench.command}`"))
            continue
        rows += READERS[bench.stem.removesuffix("_quick")](json.loads(path.read_text()), path, bench)
        read.append(path)
    return rows, read


def markdown(rows: Sequence[Row], read: Sequence[Path], quick: bool) -> str:
    header = ["benchmark", "measure", "float32", "bfloat16", "bfloat16's speed vs float32", "bf16 instructions",
              "run (date; CPU; threads; load average start -> end)", "notes"]
    files = ", ".join(f"`{p.name}`" for p in read) or "none"
    lines = [f"Generated by `python bench/performance_tables.py{' --quick' if quick else ''}` from {files}.", "",
             "| " + " | ".join(header) + " |", "|---|---|---:|---:|---:|---|---|---|"]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    lines += ["", ("Speed: float32's time over bfloat16's on the same work (tokens/s: bfloat16's over float32's); "
                   "above 1x bfloat16 is faster. Where bf16 instructions are none, PyTorch emulates bfloat16 through "
                   "float32 and these ratios measure the emulation, not bfloat16 hardware.")]
    return "\n".join(lines)


def replace_block(text: str, block: str, where: str = "the file") -> str:
    """``text`` with everything between the markers replaced by ``block`` (the markers kept)."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{where} has no {START} ... {END} block to fill")
    return text[: start + len(START)] + "\n" + block.strip("\n") + "\n" + text[end:]


def write_block(paths: Sequence[Path], block: str) -> list[Path]:
    """Fill the marked block of each file; returns the files changed. Every file is checked for its
    markers before any is written, so a missing block leaves all of them as they were."""
    texts = {path: path.read_text(encoding="utf-8") for path in paths}
    filled = {path: replace_block(old, block, str(path)) for path, old in texts.items()}
    changed = [path for path in paths if filled[path] != texts[path]]
    for path in changed:
        path.write_text(filled[path], encoding="utf-8")
    return changed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="read the benchmarks' --quick results (*_quick.json)")
    parser.add_argument("--write", action="store_true",
                        help="replace the marked block of docs/performance.md and bench/README.md instead of printing")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of the benchmarks' JSON results")
    parser.add_argument("--files", type=Path, nargs="+", default=list(DOCS),
                        help="the files --write fills (default: docs/performance.md and bench/README.md)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows, read = rows_for(args.results, args.quick)
    block = markdown(rows, read, args.quick)
    if not args.write:
        print(block)
        return 0
    try:
        changed = write_block(args.files, block)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"filled the table in {len(changed)} of {len(args.files)} files"
          + (f": {', '.join(str(p) for p in changed)}" if changed else " (already up to date)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
