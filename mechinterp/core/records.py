"""Run records: every run writes ``<out>/<script-stem>_run.json`` saying exactly how its outputs were made.

The record holds the command line, the resolved options, library versions, the model and SAE, the
project's git commit, input hashes, counts, timings and the list of files written.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from mechinterp.core.constants import PROJECT_ROOT, RUN_RECORD_JSON
from mechinterp.core.io import OutputFolder

LIBRARIES = ("sae-lens", "transformer-lens", "torch", "transformers", "numpy", "scipy", "matplotlib")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    """The project's commit (with ``+dirty`` when files are modified), or None outside a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _earlier_files(record: Path) -> set[str]:
    """Names of the files an earlier run's record in the same folder lists as written there."""
    try:
        written = json.loads(record.read_text(encoding="utf-8")).get("files_written", [])
    except (OSError, ValueError, AttributeError):
        return set()  # no earlier record, or one that cannot be read: nothing is retired
    return {Path(p).name for p in written if isinstance(p, str) and Path(p).parent.name == record.parent.name}


class RunRecord:
    """Collects what a run did; :meth:`write` saves it as JSON beside the outputs."""

    def __init__(self, script: str, argv: list[str] | None, options: Mapping[str, Any]):
        """``options``: the run's resolved options, e.g. ``vars(args)`` of the script's flags."""
        self.script = Path(script).stem
        self.data: dict[str, Any] = {
            "script": Path(script).name,
            "argv": list(sys.argv[1:] if argv is None else argv),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()},
            "versions": library_versions(),
            "git_commit": git_commit(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": {},
            "files_written": [],
        }

    @contextmanager
    def timed(self, stage: str):
        """Add the wall-clock seconds of a ``with`` block to ``seconds[stage]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = self.data["seconds"]
            seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - start, 4)

    def add_seconds(self, seconds: dict[str, float]) -> None:
        """Add stage timings measured elsewhere (e.g. inside the encoding pipeline)."""
        for stage, value in seconds.items():
            self.data["seconds"][stage] = round(self.data["seconds"].get(stage, 0.0) + value, 4)

    def wrote(self, *paths: Path) -> None:
        self.data["files_written"].extend(str(p) for p in paths)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    def write(self, out: OutputFolder) -> Path:
        """Save the record into the run's output folder (renamed into place when the run commits)."""
        name = RUN_RECORD_JSON.format(script=self.script)
        self.data["files_written"].append(str(out / name))
        # Files an earlier run of this script wrote here and this one did not (MI4_angry.png after
        # --groups happy) would sit beside this run's tables as if they belonged to it: retire them.
        current = {Path(p).name for p in self.data["files_written"]}
        stale = sorted(n for n in _earlier_files(out.path / name) - current if (out.path / n).is_file())
        if stale:
            out.retire(stale)
            self.data["removed_earlier_files"] = stale
        self.data["seconds"]["total"] = round(sum(v for k, v in self.data["seconds"].items() if k != "total"), 4)
        return out.write_json(name, self.data)
