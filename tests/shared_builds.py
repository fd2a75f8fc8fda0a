"""Expensive, deterministic test artifacts built once per test session and shared by every file and worker.

With ``-n 2`` each pytest-xdist worker is its own process, so a ``scope="session"`` fixture runs once per
worker, and a ``scope="module"`` one once per file. :func:`shared_build` builds into a folder that both
workers see (the session's base temporary folder: the parent of each worker's own), under a file lock,
keyed by a hash of the builder's source files and parameters; the second caller waits for the first
build and reuses it. Without xdist the folder is the session's own base temporary folder.

A caller that gets a build must treat it as read-only; :func:`gpt2_world` (the GPT-2-faithful world of
tests/gpt2_world.py) and :func:`demo_world` (the toy world of ``--demo``) hand each caller its own copy
(copying takes a fraction of a second, building a few), so a test may run scripts that write into it.
The folder belongs to one session, so a build never outlives the sources it was made from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent


def _session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's base is <session base>/popen-gwN; the session base is shared by them.
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _key(name: str, sources: Iterable[Path], params: object) -> str:
    digest = hashlib.sha256(name.encode())
    for path in sorted(sources):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    digest.update(repr(params).encode())
    return digest.hexdigest()[:16]


def shared_build(tmp_path_factory: pytest.TempPathFactory, name: str, sources: Iterable[Path], params: object,
                 build: Callable[[Path], object]) -> tuple[Path, object, float]:
    """``build(folder)`` once per session for this name, source and parameters; every caller gets its result.

    Returns:
        The folder built into, ``build``'s (picklable) result, and how many seconds the build took.
    """
    folder = _session_root(tmp_path_factory) / f"shared-{name}-{_key(name, sources, params)}"
    done = folder / "result.pickle"
    with FileLock(str(folder) + ".lock"):
        if not done.is_file():
            if folder.exists():  # a build that crashed half-way: start over
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            start = time.perf_counter()
            result = build(folder)
            seconds = time.perf_counter() - start
            done.write_bytes(pickle.dumps((result, seconds)))
    result, seconds = pickle.loads(done.read_bytes())
    return folder, result, seconds


def _rebase(value: object, old: Path, new: Path) -> object:
    if isinstance(value, Path) and value.is_relative_to(old):
        return new / value.relative_to(old)
    return value


def gpt2_world(tmp_path_factory: pytest.TempPathFactory, hf_home: Path):
    """The GPT-2-faithful world (tests/gpt2_world.py) as ``build_gpt2_world(hf_home)`` returns it, and the
    seconds its one build of the session took; ``hf_home`` is this caller's own copy of that build."""
    from tests import gpt2_world as gw

    sources = [ROOT / "tests" / "gpt2_world.py", ROOT / "mechinterp" / "core" / "toyworld.py"]
    _, built, seconds = shared_build(tmp_path_factory, "gpt2_world", sources, (gw.SEED, gw.WORLD_VERSION),
                                     lambda f: gw.build_gpt2_world(f / "hf_home"))
    shutil.copytree(built.hf_home, hf_home, symlinks=True)
    fields = {f.name: _rebase(getattr(built, f.name), built.hf_home, Path(hf_home)) for f in dataclasses.fields(built)}
    return dataclasses.replace(built, **fields), seconds


def demo_world(tmp_path_factory: pytest.TempPathFactory, root: Path):
    """The toy world (``mechinterp.core.toyworld.build_world``) as ``build_world(root)`` returns it; ``root``
    is this caller's own copy of the session's one build."""
    from mechinterp.core import toyworld

    sources = [ROOT / "mechinterp" / "core" / "toyworld.py"]
    _, built, _ = shared_build(tmp_path_factory, "demo_world", sources, toyworld.SEED,
                               lambda f: toyworld.build_world(f / "demo"))
    shutil.copytree(built.root, root, symlinks=True)
    fields = {f.name: _rebase(getattr(built, f.name), built.root, Path(root)) for f in dataclasses.fields(built)}
    return dataclasses.replace(built, **fields)
