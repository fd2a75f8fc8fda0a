"""Writing files so that an interrupted run never leaves a half-written result behind.

Every output goes to a temporary name in the same folder and is renamed into place (an atomic
operation on POSIX and Windows), so a reader sees either the previous complete file or the new one.

A script writes its results through an :class:`OutputFolder`, which holds every rename back until the
run has finished (``with OutputFolder(path) as out: ...``): a run that fails or is interrupted leaves
the previous results untouched, instead of a mix of old and new files. The module-level writers
(used for the activation cache) rename at once, so finished work is kept. Every figure saved is
checked against :data:`MAX_FIGURE_PX` a side (a warning beyond it).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import struct
import tempfile
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_beside(path: Path) -> Path:
    """A new empty file in ``path``'s folder (created if needed), with ordinary permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates the file owner-only (0600); give it the permissions an ordinary open() would.
    os.chmod(tmp_name, 0o666 & ~_umask())
    return Path(tmp_name)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
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
        _write_csv_file(tmp, header, rows)
    return Path(path)


def _write_csv_file(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def save_figure(fig: Any, path: Path, dpi: int = 150) -> Path:
    """Atomically save a matplotlib ``Figure`` as PNG and return ``path``.

    Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so no GUI backend is ever
    involved, nothing can block on ``show()``, and no global figure list needs closing.
    """
    with atomic_path(path) as tmp:
        _save_png(fig, tmp, dpi, Path(path).name)
    return Path(path)


# The largest side of a saved figure, in pixels. Each figure caps what it draws (rows, tokens, groups) to
# stay under it; beyond it an image is slow to open and no longer readable as one picture.
MAX_FIGURE_PX = 6000


class FigureSizeWarning(UserWarning):
    """A saved figure is larger than :data:`MAX_FIGURE_PX` on a side (a figure's own cap has a gap)."""


def png_size(header: bytes) -> tuple[int, int]:
    """``(width, height)`` in pixels, read from the first 24 bytes of a PNG (its IHDR chunk)."""
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def check_figure_size(header: bytes, name: str) -> tuple[int, int]:
    """Warn (:class:`FigureSizeWarning`) when a PNG is over :data:`MAX_FIGURE_PX` on a side; returns its size.

    A warning, not an error: the figure is still right, only too big to read, and failing would throw
    away the run's other results.
    """
    width, height = png_size(header)
    if max(width, height) > MAX_FIGURE_PX:
        warnings.warn(f"{name} is {width:,} x {height:,} px, over the {MAX_FIGURE_PX:,} px a side that figures "
                      "keep to (it is complete, but hard to open and read)", FigureSizeWarning, stacklevel=3)
    return width, height


def _save_png(fig: Any, path: Path, dpi: int, name: str) -> None:
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
    with open(path, "rb") as f:
        check_figure_size(f.read(24), name)


EARLIER_RUNS = "earlier_runs"  # where an output folder moves files an earlier run wrote and this one did not


class OutputFolder:
    """A script's output folder, written as one unit: new files appear only when the run succeeds.

    Every file is written to a temporary name beside its final one; :meth:`commit` renames them all into
    place, :meth:`discard` deletes them. Used as a context manager it commits when the block finishes
    and discards when it raises (an error, or Ctrl-C), so earlier results are never mixed with a
    half-finished run's.

    Args:
        path: the folder (created if missing).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._pending: list[tuple[Path, Path]] = []  # (temporary, final)
        self._retired: list[str] = []  # earlier runs' files to remove when this run commits

    def __truediv__(self, name: str) -> Path:
        """The final path of ``name`` inside the folder (nothing is written)."""
        return self.path / name

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    @contextlib.contextmanager
    def staged(self, name: str) -> Iterator[Path]:
        """Yield a temporary path to write ``name`` to; it is renamed into place on :meth:`commit`."""
        final = self.path / name
        tmp = _temporary_beside(final)
        try:
            yield tmp
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._pending.append((tmp, final))

    def write_text(self, name: str, text: str) -> Path:
        with self.staged(name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, json.dumps(obj, indent=2, default=str) + "\n")

    def write_csv(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
        with self.staged(name) as tmp:
            _write_csv_file(tmp, header, rows)
        return self.path / name

    def save_figure(self, fig: Any, name: str, dpi: int = 150) -> Path:
        with self.staged(name) as tmp:
            _save_png(fig, tmp, dpi, name)
        return self.path / name

    def retire(self, names: Sequence[str]) -> None:
        """Move these files of an earlier run into :data:`EARLIER_RUNS` when this run commits (never when it
        fails), and say so: the folder then shows one run, and nothing is lost."""
        self._retired += [n for n in names if n not in self._retired]

    def commit(self) -> None:
        """Rename every staged file into place, and remove the retired ones."""
        for tmp, final in self._pending:
            os.replace(tmp, final)
        self._pending.clear()
        if self._retired:
            aside = self.path / EARLIER_RUNS
            aside.mkdir(exist_ok=True)
            for name in self._retired:
                if (self.path / name).is_file():
                    os.replace(self.path / name, aside / name)
            print(textwrap.fill(
                f"Moved {len(self._retired)} file(s) that an earlier run of this script wrote here, and this run "
                f"did not, to {aside}/: {', '.join(self._retired)}", 100, subsequent_indent="  "))
        self._retired.clear()

    def discard(self) -> None:
        """Delete every staged file; the folder keeps what it had before the run."""
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending.clear()
        self._retired.clear()
