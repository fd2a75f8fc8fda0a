"""The state of a mining pass, saved and restored: what makes a pass resumable and reusable.

Why it exists: mining a large corpus takes minutes to hours, so an interrupted pass must continue where
it stopped and a finished one must be read back instead of mined again. The running statistics of a
pass (:class:`PassState`) are saved atomically, now and then and on Ctrl-C, to a checkpoint file in the
project cache named by a hash of its key: everything that determines the pass's numbers (model, SAE
and a hash of their weights, their dtypes, corpus, options; see ``mining.checkpoint_key``). A
checkpoint is read only when its key matches exactly, or, for a finished pass, when it differs only in
having mined more features (e.g. every feature): its rows then answer the smaller question.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechinterp.cards.corpus import Corpus, CorpusPosition, MinedWindow
from mechinterp.core.io import atomic_path
from mechinterp.core.progress import Log


class PassState:
    """The running statistics of a pass (on the compute device) and its place in the corpus."""

    # The tensors saved in a checkpoint, besides the kept windows.
    ARRAYS = ("values", "windows", "positions", "hist", "window_hist", "sample_keys", "sample_windows",
              "sample_positions", "sample_values")

    def __init__(self, n_features: int, k: int, n_bins: int, n_samples: int, device: str):
        self.values = torch.full((n_features, k), -math.inf, dtype=torch.float32, device=device)
        self.windows = torch.full((n_features, k), -1, dtype=torch.long, device=device)
        self.positions = torch.zeros((n_features, k), dtype=torch.long, device=device)
        self.hist = torch.zeros((n_features, n_bins), dtype=torch.long, device=device)
        self.window_hist = torch.zeros((n_features, n_bins), dtype=torch.long, device=device)
        # The random draw: the highest priorities (window_priority) among the windows where it fires.
        self.sample_keys = torch.full((n_features, n_samples), -math.inf, dtype=torch.float32, device=device)
        self.sample_windows = torch.full((n_features, n_samples), -1, dtype=torch.long, device=device)
        self.sample_positions = torch.zeros((n_features, n_samples), dtype=torch.long, device=device)
        self.sample_values = torch.zeros((n_features, n_samples), dtype=torch.float32, device=device)
        self.pool: dict[int, MinedWindow] = {}
        self.n_tokens = 0  # counted positions (the density's denominator)
        self.n_read = 0  # corpus tokens consumed (what max_tokens limits)
        self.n_windows = 0
        self.n_documents = 0
        self.bytes_read = 0
        self.batches = 0  # since this run started (for pruning the pool now and then)
        self.position = CorpusPosition()
        self.complete = False

    def meta(self) -> dict[str, Any]:
        return {"n_tokens": self.n_tokens, "n_read": self.n_read, "n_windows": self.n_windows,
                "n_documents": self.n_documents, "bytes_read": self.bytes_read,
                "position": self.position.to_dict(), "complete": self.complete}

    def prune_pool(self) -> None:
        """Keep exactly the windows some top-k or sample entry points to."""
        if self.pool:
            kept = set(torch.unique(self.windows).tolist()) | set(torch.unique(self.sample_windows).tolist())
            self.pool = {i: w for i, w in self.pool.items() if i in kept}


# --- checkpoints ----------------------------------------------------------------------------------------


def _canonical(key: dict[str, Any]) -> dict[str, Any]:
    """The key as JSON reads it back (tuples become lists), for comparisons with a saved key."""
    return json.loads(json.dumps(key, sort_keys=True))


def checkpoint_path(folder: Path, key: dict[str, Any]) -> Path:
    return Path(folder) / f"mining-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]}.npz"


def finished_checkpoint_covering(folder: Path, key: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """A finished pass in ``folder`` that is the same pass as ``key`` except that it mined more features
    (every feature, or a superset of ``key``'s), so its results answer ``key`` without encoding anything.

    Returns:
        ``(path, its key)``, or None.
    """
    wanted = _canonical(key)
    same = {name: value for name, value in wanted.items() if name != "features"}
    for path in sorted(Path(folder).glob("mining-*.npz")):
        try:
            with np.load(path, allow_pickle=False) as data:
                theirs = json.loads(str(data["key"]))
                complete = json.loads(str(data["meta"]))["complete"]
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            continue
        if not complete or {name: value for name, value in theirs.items() if name != "features"} != same:
            continue
        if theirs["features"] == "all" or (
            wanted["features"] != "all" and set(wanted["features"]) <= set(theirs["features"])
        ):
            return path, theirs
    return None


def finished_pass_exists(folder: Path, corpus: Corpus) -> bool:
    """Whether ``folder`` holds a finished pass over ``corpus`` (any model or options): cheap, read before
    loading the model, e.g. to let an offline run reuse a streamed dataset's pass instead of failing."""
    wanted = _canonical({"corpus": corpus.identity()})["corpus"]
    for path in Path(folder).glob("mining-*.npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                if json.loads(str(data["key"]))["corpus"] == wanted and json.loads(str(data["meta"]))["complete"]:
                    return True
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            continue
    return False


def save_state(path: Path, state: PassState, key: dict[str, Any]) -> None:
    state.prune_pool()
    pool = sorted(state.pool.values(), key=lambda w: w.window_id)
    tokens = [w.tokens for w in pool]
    arrays = {
        "key": np.array(json.dumps(key, sort_keys=True)),
        "meta": np.array(json.dumps(state.meta())),
        **{name: getattr(state, name).cpu().numpy() for name in PassState.ARRAYS},
        "pool": np.array([[w.window_id, w.doc, w.line, w.start, len(w.tokens)] for w in pool],
                         dtype=np.int64).reshape(-1, 5),
        "pool_tokens": np.concatenate(tokens).astype(np.int32) if tokens else np.zeros(0, dtype=np.int32),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_state(path: Path, key: dict[str, Any], state: PassState, log: Log) -> bool:
    """Fill ``state`` from a checkpoint made with the same ``key``; False (with a note) if unusable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if json.loads(str(data["key"])) != _canonical(key):
                return False
            meta = json.loads(str(data["meta"]))
            arrays = {}
            for name in PassState.ARRAYS:
                saved = torch.from_numpy(data[name])
                if tuple(saved.shape) != tuple(getattr(state, name).shape):
                    raise ValueError(f"{name} has shape {tuple(saved.shape)}")
                arrays[name] = saved
            pool, flat = data["pool"], data["pool_tokens"]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        log(f"warning: ignoring the unreadable mining checkpoint {path} ({err}); starting over")
        return False
    for name, saved in arrays.items():  # only once all of it was read: a failed read leaves the state as it was
        setattr(state, name, saved.to(getattr(state, name).device))
    ends = np.cumsum(pool[:, 4]) if len(pool) else np.zeros(0, dtype=np.int64)
    state.pool = {
        int(i): MinedWindow(int(i), int(doc), int(line), int(start), flat[end - n : end].copy())
        for (i, doc, line, start, n), end in zip(pool.tolist(), ends.tolist())
    }
    state.n_tokens, state.n_read, state.n_windows = meta["n_tokens"], meta["n_read"], meta["n_windows"]
    state.n_documents, state.bytes_read, state.complete = meta["n_documents"], meta["bytes_read"], meta["complete"]
    state.position = CorpusPosition(**meta["position"])
    return True



# --- where a pass starts --------------------------------------------------------------------------------


@dataclass
class Restored:
    """What a pass starts from: a state (empty, part-mined or finished) and the file it is saved to.

    Attributes:
        features: the rows of ``state`` when a finished pass over more features was read back instead
            (every feature, or a superset of those asked for); None when the rows are the features asked for.
        resumed_at: corpus tokens already mined when the pass continues an interrupted one, else 0.
        reused: the state is a finished pass: nothing is left to encode.
    """

    state: PassState
    path: Path | None
    features: np.ndarray | None = None
    resumed_at: int = 0
    reused: bool = False


def restore(folder: Path | None, key: dict[str, Any], resume: bool, new_state: Callable[[int], PassState],
            n_features: int, d_sae: int, log: Log) -> Restored:
    """The state a pass with ``key`` starts from: its own checkpoint in ``folder`` (finished, or to be
    continued), else a finished pass over more features, else an empty state (also without ``resume``).

    Args:
        new_state: an empty state for this many features.
        n_features: the features the pass mines (``d_sae`` when it mines every feature).
    """
    state = new_state(n_features)
    path = checkpoint_path(folder, key) if folder is not None else None
    if path is None or not resume:
        return Restored(state, path)
    found, features = path.is_file() and load_state(path, key, state, log), None
    if found and state.complete:
        log(f"reading the saved pass: {state.n_tokens:,} tokens' results from {path}")
    else:
        covering = _covering_pass(folder, key, new_state, d_sae, log)
        if covering is not None:
            (state, path, features), found = covering, True
    if found and not state.complete:
        log(f"resuming from {path}: {state.n_read:,} tokens ({state.n_windows:,} windows) already mined")
        return Restored(state, path, features, resumed_at=state.n_read)
    return Restored(state, path, features, reused=found and state.complete)


def _covering_pass(folder: Path, key: dict[str, Any], new_state: Callable[[int], PassState], d_sae: int,
                   log: Log) -> tuple[PassState, Path, np.ndarray] | None:
    """A finished pass over more features than ``key``'s, read back: ``(state, its file, its features)``."""
    covering = finished_checkpoint_covering(folder, key)
    if covering is None:
        return None
    path, their_key = covering
    every = their_key["features"] == "all"
    features = np.arange(d_sae, dtype=np.int64) if every else np.array(their_key["features"], np.int64)
    state = new_state(len(features))
    if not load_state(path, their_key, state, log):
        return None
    log(f"reading the saved pass over {'every feature' if every else 'more features'}: "
        f"{state.n_tokens:,} tokens' results from {path}")
    return state, path, features
