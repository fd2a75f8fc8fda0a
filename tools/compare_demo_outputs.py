"""Show that every chapter's ``--demo`` outputs are byte-identical between two versions of the project.

Why it exists: a refactor must not change a single number. This runs each chapter's demo command in a
checkout of a reference revision (a temporary ``git worktree``) and in this working tree, each with a
fresh project cache, then compares every file written, byte for byte, and the terminal output. Only
what legitimately changes from run to run is masked: in run records the start time, timings, git
commit and the run's scratch folder (output and cache paths); in the terminal output, durations such as ``2.3s``;
in Chapter 5, the random checkpoint folder id SAELens draws (``uuid4``, which no seed controls) and the
measured training seconds. Running the reference against itself shows exactly these differences and no others.

Run (takes a few minutes on 2 CPU cores; Chapter 5's demo training dominates):
    python tools/compare_demo_outputs.py --ref main
    python tools/compare_demo_outputs.py --ref 2c2a372 --chapters 1 2

Prints one line per chapter and file, and exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each chapter's demo command, as the README gives it (output folder added by this tool).
DEMO_COMMANDS: dict[str, list[str]] = {
    "1": ["MechInterpInitialInvestigation.py", "--demo"],
    "2": ["MechInterpFeatureMeaning.py", "--demo"],
    "3": ["MechInterpFeatureInspect.py", "--demo"],
    "4": ["MechInterpSteering.py", "--demo"],
    "5": ["MechInterpTrainSAE.py", "--demo"],
    "5s": ["MechInterpTrainSAE.py", "--synthetic"],
    "6": ["MechInterpFeatureToWeights.py", "--demo"],
}
# Run-record fields that differ between any two runs (when, how long, which commit, where).
VOLATILE_RECORD_KEYS = {"started", "seconds", "git_commit", "train_seconds"}
DURATION = re.compile(r"\d+(\.\d+)?\s?(s|ms|min)\b")
CHECKPOINT_ID = re.compile(r"checkpoints/[0-9a-f]{8}")  # SAELens: checkpoints/<uuid4()[:8]>/
TRAIN_SECONDS_CELL = re.compile(r"^((standard|topk)\s.*\s)\d+\.\d$", re.M)  # the synthetic table's "train s"


def normalise_record(data: object, work: str) -> object:
    """A run record with its volatile fields dropped and the run's scratch folder replaced by ``WORK``."""
    if isinstance(data, dict):
        return {k: normalise_record(v, work) for k, v in data.items() if k not in VOLATILE_RECORD_KEYS}
    if isinstance(data, list):
        return [normalise_record(v, work) for v in data]
    if isinstance(data, str):
        return CHECKPOINT_ID.sub("checkpoints/ID", data.replace(work, "WORK"))
    return data


def digest_outputs(out: Path, work: Path) -> dict[str, str]:
    """sha256 of every file under ``out`` (run records normalised first)."""
    digests = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = CHECKPOINT_ID.sub("checkpoints/ID", str(path.relative_to(out)))
        if path.suffix == ".json":  # run records, MI8.json, the trained SAE's runner_cfg.json ...
            record = normalise_record(json.loads(path.read_text()), str(work))
            payload = json.dumps(record, sort_keys=True).encode()
        else:
            payload = path.read_bytes()
        digests[rel] = hashlib.sha256(payload).hexdigest()
    return digests


def run_chapter(tree: Path, chapter: str, work: Path) -> tuple[dict[str, str], str]:
    """Run one chapter's demo in ``tree`` with a fresh cache; return file digests and masked stdout."""
    out = work / "out"
    env = {**os.environ, "MECHINTERP_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    script, *flags = DEMO_COMMANDS[chapter]
    result = subprocess.run(
        [sys.executable, str(tree / script), *flags, "--out", str(out)],
        cwd=tree, env=env, capture_output=True, text=True, timeout=1800,
    )
    if result.returncode != 0:
        raise SystemExit(f"chapter {chapter} failed in {tree} (exit {result.returncode}):\n{result.stderr[-2000:]}")
    stdout = DURATION.sub("<t>", result.stdout.replace(str(work), "WORK"))
    stdout = TRAIN_SECONDS_CELL.sub(r"\1<t>", CHECKPOINT_ID.sub("checkpoints/ID", stdout))
    return digest_outputs(out, work), stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="main", help="the revision to compare with (default: %(default)s)")
    parser.add_argument("--chapters", nargs="+", default=list(DEMO_COMMANDS), choices=list(DEMO_COMMANDS),
                        help="which demos to run (default: all; 5s is Chapter 5's --synthetic mode)")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="compare-demo-"))
    ref_tree = scratch / "ref"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(ref_tree), args.ref], cwd=ROOT, check=True)
    differences = 0
    try:
        for chapter in args.chapters:
            ref_files, ref_stdout = run_chapter(ref_tree, chapter, scratch / f"ref-{chapter}")
            new_files, new_stdout = run_chapter(ROOT, chapter, scratch / f"new-{chapter}")
            for name in sorted(set(ref_files) | set(new_files)):
                same = ref_files.get(name) == new_files.get(name)
                differences += not same
                state = "identical" if same else ("only in ref" if name not in new_files else
                                                  "only in new" if name not in ref_files else "DIFFERS")
                print(f"chapter {chapter:>2}  {state:<11}  {name}")
            same_stdout = ref_stdout == new_stdout
            differences += not same_stdout
            print(f"chapter {chapter:>2}  {'identical' if same_stdout else 'DIFFERS':<11}  (terminal output)")
            if not same_stdout:
                (scratch / f"stdout-{chapter}-ref.txt").write_text(ref_stdout)
                (scratch / f"stdout-{chapter}-new.txt").write_text(new_stdout)
                print(f"            diff {scratch}/stdout-{chapter}-ref.txt {scratch}/stdout-{chapter}-new.txt")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(ref_tree)], cwd=ROOT, check=False)
    print(f"\n{differences} difference(s) against {args.ref}")
    if not differences:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
