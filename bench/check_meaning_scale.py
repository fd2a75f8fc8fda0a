"""Acceptance check of issue 20: Chapter 2 at a learner's real scale, run as a user runs it.

Builds the GPT-2-faithful world (tests/gpt2_world.py: GPT-2's real tokenizer, planted happy and angry
features) in a temporary Hugging Face home, writes the prompt folders of tests/scale_designs.py and runs

    python MechInterpFeatureMeaning.py --prompts DIR --out OUT

once per design, in a fresh process with the world's environment and a fresh activation cache. It
measures the run's wall time and peak resident memory (``os.wait4``: the child's own rusage), counts
the files left in the cache, reads MI3.png's size, and checks each "Done when" bullet of issue 20 from
what the script wrote (the stats CSV, the printed text):

* each concept group: its planted feature is rank 1 with verdict ``concept``, at most one other
  feature of the group is ``concept``;
* the null group (the baseline's own generator) has no feature with q < 0.05;
* the imbalance of the group sizes is named in the output;
* under 4 minutes, under 2.5 GB peak, under 500 cache files, MI3 under 6,000 px tall.

Run from the repository root:
    python bench/check_meaning_scale.py                    # designs A and B at full size
    python bench/check_meaning_scale.py --design B --keep  # one design; keep prompts, outputs and cache
    python bench/check_meaning_scale.py --design C         # the issue's other direction (not "Done when")
    python bench/check_meaning_scale.py --scale 0.15       # the same designs, 15% of the lines
    python bench/check_meaning_scale.py --in-process --scale 0.15   # one process for all runs (tests)

Prints a PASS/FAIL table per criterion and design, and writes bench/results/meaning_scale.json and
.md (meaning_scale_quick.* when --scale is below 1). Exit status 0 when every criterion passes, 1 if not.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:  # the project's package and tests/, whatever the current folder
    sys.path.insert(0, str(ROOT))

from tests import gpt2_world as gw
from tests import scale_designs as sd

SCRIPT = ROOT / "MechInterpFeatureMeaning.py"
RESULTS_DIR = BENCH_DIR / "results"
# The targets of issue 20's "Done when".
MAX_SECONDS = 240.0
MAX_PEAK_MB = 2500.0
MAX_CACHE_FILES = 500
MAX_MI3_HEIGHT = 6000
SIGNIFICANT_Q = 0.05
MAX_OTHER_CONCEPTS = 1
TOP_ROWS = 10  # rows per group kept in the results, for reading what went wrong
# Words that name unequal group sizes. Adjust here once the script's warning has its final wording.
IMBALANCE_WORDS = re.compile(r"\b(imbalanc\w*|unbalanc\w*|unequal\w*)", re.IGNORECASE)


def imbalance_named(text: str) -> str | None:
    """The first phrase of ``text`` that names unequal group sizes (None when there is none)."""
    match = IMBALANCE_WORDS.search(text)
    if match is None:
        return None
    line_start = text.rfind("\n", 0, match.start()) + 1
    line_end = text.find("\n", match.end())
    return text[line_start: line_end if line_end >= 0 else None].strip()[:200]


# --- running the script --------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """What one run of the script left: exit status, printed text and measurements."""

    returncode: int | str
    stdout: str
    stderr: str
    seconds: float
    peak_mb: float | None  # None when runs share a process (in-process mode)


def run_measured(argv: list[str], env: dict[str, str], folder: Path, timeout: float) -> RunOutcome:
    """``python SCRIPT argv`` in a fresh process; wall time and the child's own peak RSS (``wait4``)."""
    out_path, err_path = folder / "stdout.txt", folder / "stderr.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(SCRIPT), *argv], cwd=ROOT, env=env, stdout=out, stderr=err)
        deadline, timed_out = start + timeout, False
        while True:  # wait4 on this pid gives this run's rusage alone, not every child's so far
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # so that Popen does not wait for it again
    # ru_maxrss is in kilobytes on Linux, in bytes on macOS.
    peak_mb = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    code: int | str = "timeout" if timed_out else proc.returncode
    return RunOutcome(code, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"),
                      seconds, peak_mb)


def run_in_process(argv: list[str], env: dict[str, str]) -> RunOutcome:
    """The script as ``__main__`` in this process (imports paid once for all runs; no peak memory)."""
    saved_argv, saved_env = sys.argv, dict(os.environ)
    os.environ.update(env)
    sys.argv = [str(SCRIPT), *argv]
    out, err = io.StringIO(), io.StringIO()
    code: int | str = 0
    start = time.perf_counter()
    # huggingface_hub reads HF_HOME once, at import: point an already-imported one at this world too.
    hub = gw.hub_cache(Path(env["HF_HOME"])) if "HF_HOME" in env else contextlib.nullcontext()
    try:
        with hub, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a crash is a result to report
        code = "crash"
        err.write(traceback.format_exc())
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return RunOutcome(code, out.getvalue(), err.getvalue(), time.perf_counter() - start, None)


# --- reading what the script wrote ---------------------------------------------------------------------

# Column names of the stats CSV, with the names a redesign might use instead.
_COLUMNS = {
    "group": ("group",), "feature": ("feature",), "rank": ("rank",), "verdict": ("verdict",),
    "q": ("q_value", "q"), "auroc": ("auroc", "AUROC"), "fires_group": ("frac_active_group", "fires_group"),
    "fires_baseline": ("frac_active_baseline", "fires_baseline"), "always_on": ("always_on",),
}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def read_stats(out: Path) -> list[dict[str, Any]]:
    """Every row of the stats CSV(s) (``feature_stats*.csv``), with the columns under fixed names."""
    rows = []
    for path in sorted(out.glob("feature_stats*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            for raw in csv.DictReader(f):
                row = {key: next((raw[n] for n in names if n in raw), None) for key, names in _COLUMNS.items()}
                rank = _number(row["rank"])
                rows.append({
                    **row, "feature": int(row["feature"]), "rank": int(rank) if rank is not None else None,
                    "q": _number(row["q"]), "auroc": _number(row["auroc"]),
                    "fires_group": _number(row["fires_group"]), "fires_baseline": _number(row["fires_baseline"]),
                    "verdict": row["verdict"] or "",
                })
    return rows


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, or None when there is no such file."""
    if not path.is_file():
        return None
    head = path.read_bytes()[:24]
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


@dataclass
class WorldInfo:
    """What each feature of the world's residual SAE is, in words."""

    planted: gw.PlantedFeatures
    decode: Any  # token id -> text

    def describe(self, feature: int) -> str:
        p = self.planted
        named = {p.happy: "planted happy", p.angry: "planted angry", p.position: f"position {p.position_index}",
                 p.bang: "'!' feature", p.bos: "BOS feature"}
        if feature in named:
            return named[feature]
        if feature in p.always_on:
            return "always-on"
        token = p.detectors.get(feature)
        return f"detector of {self.decode(token)!r}" if token is not None else "?"


def world_info(world: gw.Gpt2World) -> WorldInfo:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(world.model_dir / "tokenizer.json"))
    return WorldInfo(world.planted, lambda token: tokenizer.decode([token]))


# --- the criteria ----------------------------------------------------------------------------------------


@dataclass
class Criterion:
    design: str
    name: str
    value: Any
    target: str
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"design": self.design, "criterion": self.name, "value": self.value, "target": self.target,
                "passed": self.passed}


def concept_criteria(design: str, group: str, planted: int, rows: list[dict]) -> list[Criterion]:
    """The planted feature is rank 1 with verdict ``concept``; at most one other feature is ``concept``."""
    mine = [r for r in rows if r["group"] == group]
    top = next((r for r in mine if r["rank"] == 1), None)
    planted_row = next((r for r in mine if r["feature"] == planted), None)
    rank = planted_row["rank"] if planted_row else None
    verdict = planted_row["verdict"] if planted_row else "(not in the table)"
    others = sorted(r["feature"] for r in mine if r["verdict"] == "concept" and r["feature"] != planted)
    top_text = f"#{top['feature']}" if top else "none"
    return [
        Criterion(design, f"{group}: planted #{planted} is rank 1", f"rank {rank} (rank 1: {top_text})",
                  "rank 1", rank == 1),
        Criterion(design, f"{group}: planted #{planted} verdict", verdict or "(none)", "concept",
                  verdict == "concept"),
        Criterion(design, f"{group}: other concept features", f"{len(others)} {others[:8]}",
                  f"<= {MAX_OTHER_CONCEPTS}", len(others) <= MAX_OTHER_CONCEPTS),
    ]


def null_criterion(design: str, group: str, rows: list[dict]) -> Criterion:
    significant = [r for r in rows if r["group"] == group and r["q"] is not None and r["q"] < SIGNIFICANT_Q]
    n_always = sum(r["always_on"] == "yes" for r in significant)
    value = f"{len(significant)} ({n_always} always-on)" if n_always else str(len(significant))
    return Criterion(design, f"{group}: features with q < {SIGNIFICANT_Q}", value, "0", not significant)


def design_criteria(
    design: sd.Design, outcome: RunOutcome, out: Path, cache: Path, world: gw.PlantedFeatures
) -> list[Criterion]:
    """Every "Done when" bullet of issue 20 for one design's run."""
    name = design.name
    criteria = [Criterion(name, "exit status", outcome.returncode, "0", outcome.returncode == 0)]
    rows = read_stats(out)
    planted = {"happy": world.happy, "angry": world.angry}
    for group in design.groups:
        if group.name == design.baseline:
            continue
        if group.concept is None:
            criteria.append(null_criterion(name, group.name, rows))
        else:
            criteria += concept_criteria(name, group.name, planted[group.concept], rows)
    phrase = imbalance_named(outcome.stdout + "\n" + outcome.stderr)
    criteria.append(Criterion(name, "imbalance named in the output", phrase or "not named", "named",
                              phrase is not None))
    criteria.append(Criterion(name, "wall time (s)", round(outcome.seconds, 1), f"< {MAX_SECONDS:.0f}",
                              outcome.seconds < MAX_SECONDS))
    if outcome.peak_mb is not None:
        criteria.append(Criterion(name, "peak RSS (MB)", round(outcome.peak_mb), f"< {MAX_PEAK_MB:.0f}",
                                  outcome.peak_mb < MAX_PEAK_MB))
    n_files = count_files(cache)
    criteria.append(Criterion(name, "cache files", n_files, f"< {MAX_CACHE_FILES}", n_files < MAX_CACHE_FILES))
    size = png_size(out / "MI3.png")
    height = size[1] if size else None
    criteria.append(Criterion(name, "MI3.png height (px)", height if size else "no MI3.png",
                              f"< {MAX_MI3_HEIGHT}", height is not None and height < MAX_MI3_HEIGHT))
    return criteria


def read_peaks(out: Path) -> dict[tuple[str, int], str]:
    """(group, feature) -> the peak tokens the script found (feature_evidence.csv), for judged features."""
    path = out / "feature_evidence.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {(r["group"], int(r["feature"])): r.get("peak_tokens") or "" for r in csv.DictReader(f)}


def top_rows(rows: list[dict], info: WorldInfo, peaks: dict, n: int = TOP_ROWS) -> dict[str, list[dict]]:
    """Per group, the first ``n`` ranked rows, each with what its feature is in the world."""
    out: dict[str, list[dict]] = {}
    for group in sorted({r["group"] for r in rows}):
        ranked = sorted((r for r in rows if r["group"] == group and r["rank"] is not None), key=lambda r: r["rank"])
        out[group] = [{
            "rank": r["rank"], "feature": r["feature"], "world": info.describe(r["feature"]), "q": r["q"],
            "auroc": r["auroc"], "fires_group": r["fires_group"], "fires_baseline": r["fires_baseline"],
            "verdict": r["verdict"], "peaks": peaks.get((group, r["feature"]), "")[:90],
        } for r in ranked[:n]]
    return out


def run_facts(out: Path, outcome: RunOutcome, info: WorldInfo) -> dict[str, Any]:
    """What a reader needs besides PASS/FAIL: the top rows, figure sizes, the record's counts."""
    rows = read_stats(out)
    record_path = out / "MechInterpFeatureMeaning_run.json"
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    figures = {p.name: png_size(p) for p in sorted(out.glob("*.png"))}
    significant = {
        group: sum(1 for r in rows if r["group"] == group and r["q"] is not None and r["q"] < SIGNIFICANT_Q)
        for group in sorted({r["group"] for r in rows})
    }
    return {
        "top_rows": top_rows(rows, info, read_peaks(out)), "significant": significant, "figures": figures,
        "n_prompts": record.get("n_prompts"), "seconds_by_step": record.get("seconds"),
        "printed_lines": len(outcome.stdout.splitlines()) + len(outcome.stderr.splitlines()),
        "stderr_tail": outcome.stderr[-2000:] if outcome.returncode != 0 else "",
    }


# --- the whole check -------------------------------------------------------------------------------------


def check_design(
    design: sd.Design, root: Path, world: gw.Gpt2World, info: WorldInfo, in_process: bool, timeout: float
) -> dict[str, Any]:
    """Write one design's prompts, run the script on them, and check the criteria."""
    folder = root / f"design_{design.name}"
    prompts, out, cache = folder / "prompts", folder / "out", folder / "cache"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sd.write_design(design, prompts)
    argv = ["--prompts", str(prompts), "--out", str(out)]
    env = world.env(cache)
    if in_process:
        outcome = run_in_process(argv, env)
        (folder / "stdout.txt").write_text(outcome.stdout, encoding="utf-8")
        (folder / "stderr.txt").write_text(outcome.stderr, encoding="utf-8")
    else:
        outcome = run_measured(argv, {**os.environ, **env}, folder, timeout)
    criteria = design_criteria(design, outcome, out, cache, world.planted)
    return {
        "design": design.to_dict(), "folder": str(folder), "command": f"python {SCRIPT.name} {' '.join(argv)}",
        "seconds": round(outcome.seconds, 1), "peak_mb": None if outcome.peak_mb is None else round(outcome.peak_mb),
        "cache_files": count_files(cache), "criteria": [c.to_dict() for c in criteria],
        **run_facts(out, outcome, info),
    }


def table(results: dict[str, Any]) -> str:
    """The PASS/FAIL table as markdown: one row per criterion and design."""
    lines = ["| design | criterion | value | target | result |", "|---|---|---|---|---|"]
    for run in results["designs"]:
        for c in run["criteria"]:
            value = str(c["value"]).replace("|", "\\|")
            lines.append(f"| {c['design']} | {c['criterion']} | {value} | {c['target']} | "
                         f"{'PASS' if c['passed'] else 'FAIL'} |")
    return "\n".join(lines)


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def top_tables(results: dict[str, Any]) -> str:
    """Per design and group, the top rows of the stats table with what each feature is in the world."""
    parts = []
    for run in results["designs"]:
        sizes = ", ".join(f"{k} {v}" for k, v in (run.get("n_prompts") or {}).items())
        parts.append(f"### Design {run['design']['name']} (prompts after dropping repeats: {sizes or '?'})\n")
        for group, rows in run["top_rows"].items():
            parts.append(f"**{group}** vs baseline: {run['significant'].get(group, 0)} features with "
                         f"q < {SIGNIFICANT_Q}\n")
            parts.append("| rank | feature | in the world | q | AUROC | fires group vs baseline | verdict | peaks on |")
            parts.append("|---|---|---|---|---|---|---|---|")
            for r in rows:
                q = "-" if r["q"] is None else f"{r['q']:.2g}"
                auroc = "-" if r["auroc"] is None else f"{r['auroc']:.2f}"
                parts.append(f"| {r['rank']} | {r['feature']} | {r['world']} | {q} | {auroc} | "
                             f"{_percent(r['fires_group'])} vs {_percent(r['fires_baseline'])} | {r['verdict']} | "
                             f"{r.get('peaks', '').replace('|', '/')} |")
            parts.append("")
    return "\n".join(parts)


def _git_commit() -> str | None:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.stdout.strip() or None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Check issue 20's 'Done when' on the GPT-2-faithful world: "
                                     "Chapter 2 on big, unbalanced prompt sets with repeated lines.")
    parser.add_argument("--design", choices=("A", "B", "C", "both", "all"), default="both",
                        help="A: 2,000/2,000/600/40 lines with repeats; B: a 30-line baseline against "
                        "2,500/2,500; both: A and B, the designs of 'Done when' (the default); C: a 2,500-line "
                        "baseline against 30/30, the issue's other direction; all: A, B and C")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of every group's lines, for a quick run (default: 1; groups keep 20 lines)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the world, prompt folders, outputs and caches (their paths are printed)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the world and the runs (default: a new temporary folder)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every design in this process (imports paid once; no peak memory measured)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run is stopped")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="folder for meaning_scale.json and .md (default: bench/results)")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1:
        parser.error("--scale must be in (0, 1]")
    return args


def run_checks(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Build the world under ``root``, run the chosen designs, return everything measured."""
    start = time.perf_counter()
    world = gw.build_gpt2_world(root / "hf_home")
    info = world_info(world)
    keys = {"both": ("A", "B"), "all": ("A", "B", "C")}.get(args.design, (args.design,))
    runs = []
    for key in keys:
        design = sd.scaled(sd.DESIGNS[key], args.scale)
        print(f"design {key}: {', '.join(f'{g.name} {g.lines}' for g in design.groups)} lines ...", flush=True)
        runs.append(check_design(design, root, world, info, args.in_process, args.timeout))
        failed = sum(not c["passed"] for c in runs[-1]["criteria"])
        print(f"  {runs[-1]['seconds']} s, {failed} criteria failed", flush=True)
    return {
        "scale": args.scale, "in_process": args.in_process, "git_commit": _git_commit(), "cpus": os.cpu_count(),
        "world_seed": gw.SEED, "world_version": gw.WORLD_VERSION, "work": str(root),
        "seconds_total": round(time.perf_counter() - start, 1), "designs": runs,
        "passed": all(c["passed"] for run in runs for c in run["criteria"]),
    }


def write_results(results: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    stem = "meaning_scale" if results["scale"] == 1 else "meaning_scale_quick"
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    head = (f"# Chapter 2 at scale (issue 20): scale {results['scale']}, commit {results['git_commit']}, "
            f"{results['cpus']} CPUs\n\n")
    md_path.write_text(head + table(results) + "\n\n" + top_tables(results), encoding="utf-8")
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.work or Path(tempfile.mkdtemp(prefix="meaning_scale_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        results = run_checks(args, root)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(root, ignore_errors=True)
    print(table(results))
    written = write_results(results, args.results_dir)
    print(f"\n{'every criterion passed' if results['passed'] else 'some criteria FAILED'}; wrote "
          f"{', '.join(map(str, written))}")
    if args.keep:
        print(f"kept: {root}")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
