"""Writing files so that an interrupted run never leaves a half-written result behind.

Every output goes to a temporary name in the same folder and is renamed into place (an atomic
operation on POSIX and Windows), so a reader sees either the previous complete file or the new one.

Inside a script's output folder, renames are held back until the run has finished
(:func:`begin_outputs` / :func:`finish_outputs`, driven by :func:`mechinterp.errors.run_cli`): a run
that fails or is interrupted leaves the previous results untouched, instead of a mix of old and new
files. Writes elsewhere (the activation cache) are renamed at once, so finished work is kept.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


# The output folder of the running script, and the (temporary, final) paths waiting to be renamed.
_scope: Path | None = None
_pending: list[tuple[Path, Path]] = []


def begin_outputs(folder: Path) -> None:
    """From now on, hold back the final rename of files written under ``folder``."""
    global _scope
    _scope = Path(folder).resolve()
    _pending.clear()


def finish_outputs(commit: bool) -> None:
    """Rename every held-back file into place (``commit``), or delete them all."""
    global _scope
    for tmp, final in _pending:
        if commit:
            os.replace(tmp, final)
        else:
            tmp.unlink(missing_ok=True)
    _pending.clear()
    _scope = None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file owner-only (0600); give it the permissions an ordinary open() would.
    os.chmod(tmp, 0o666 & ~_umask())
    deferred = False
    try:
        yield tmp
        if _scope is not None and path.resolve().is_relative_to(_scope):
            _pending.append((tmp, path))
            deferred = True
        else:
            os.replace(tmp, path)
    finally:
        if not deferred:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) and return ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON and return ``path``."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Atomically write a CSV with a header row and return ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    return Path(path)


def save_figure(fig: Any, path: Path, dpi: int = 150) -> Path:
    """Atomically save a matplotlib ``Figure`` as PNG and return ``path``.

    Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so no GUI backend is ever
    involved, nothing can block on ``show()``, and no global figure list needs closing.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)
