"""On-disk cache of per-prompt feature summaries, so reruns only encode what changed.

People edit a prompt file and rerun, again and again. Each prompt's sparse summary (features that
fired, their max and mean activation, the token count) is stored under a key made of

* the model and SAE identity (release/id, or the SAE folder and its weights' size and mtime),
* the encoding settings that change the numbers (project encoding version), and
* the prompt's text,

so editing one line re-encodes exactly one prompt, and a rerun with nothing changed needs neither the
model nor the SAE (the metadata needed for titles and links is stored beside the entries).

Layout: ``<cache>/activations/<config-hash>/meta.json`` and shards ``shard-<n>-<pid>-<random>.npz``,
each holding ``n`` prompts under their text's SHA-256 (the ``keys`` array). A run writes a shard every
:data:`SHARD_PROMPTS` prompts and one for the rest at its end, so 10,000 prompts make about 40 files,
not 10,000. Runs of the same configuration can share the folder at the same time:

* a shard is written under a temporary name and renamed into place, so readers only ever see complete
  shards (an interrupted or killed run leaves nothing half-written);
* names are unique (process id and a random part), so two writers never replace each other's shard; a
  prompt both encoded is stored twice, identically, which is harmless;
* small shards (reruns that encoded a few edited prompts) are merged once there are more than
  :data:`COMPACT_AFTER` of them: the merged shard is renamed into place before its parts are deleted,
  and a reader that finds a shard gone lists the folder again, so every prompt stays findable.

A shard that cannot be read (a crashed disk) is ignored, and its prompts are encoded again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mechinterp.core.io import atomic_path, write_json
from mechinterp.core.summaries import SparseRow

# Bump when anything about how summaries are computed or stored changes; old entries are then never read.
ENCODING_VERSION = "3"  # 2: SAE-context cut, peak positions and tokens stored; 3: shards of many prompts

SHARD_PROMPTS = 256  # prompts per shard while encoding: ~40 files for 10,000 prompts, a few MB each
COMPACT_AFTER = 16  # shards of fewer prompts a folder may hold before they are merged into one
_SHARD_GLOB = "shard-*.npz"
# Anything a damaged or truncated shard can raise while being read (a vanished one is told apart first).
_UNREADABLE = (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile)
# Key lists of shards already read in this process, by path: a shard never changes once renamed into
# place (names are unique), so each is read once per process however often the folder is looked up.
# None marks a shard that could not be read.
_KEYS: dict[str, frozenset[str] | None] = {}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _shard_size(path: Path) -> int:
    """The number of prompts a shard holds, from its name (``shard-<n>-...``) without opening it."""
    try:
        return int(path.name.split("-")[1])
    except (IndexError, ValueError):
        return 0


class ActivationCache:
    """Per-prompt :class:`SparseRow` entries for one model + SAE configuration, stored in shards.

    :meth:`lookup` finds many prompts at once (each shard's key list is read once per process);
    :meth:`put` collects rows and writes a shard every ``shard_prompts`` of them; :meth:`flush` writes
    the rest (call it when a run ends or is interrupted: rows not yet flushed are not stored).
    """

    def __init__(self, root: Path, identity: dict[str, str], shard_prompts: int = SHARD_PROMPTS):
        key = json.dumps({**identity, "encoding_version": ENCODING_VERSION}, sort_keys=True)
        self.identity = identity
        self.folder = Path(root) / _digest(key)[:20]
        self.shard_prompts = shard_prompts
        self.hits = 0
        self.misses = 0
        self._pending: dict[str, SparseRow] = {}  # digest -> row, not yet written

    def lookup(self, prompts: list[str]) -> dict[int, SparseRow]:
        """The cached rows among ``prompts``, by index; counts hits and misses."""
        wanted: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            wanted.setdefault(_digest(prompt), []).append(i)
        found: dict[int, SparseRow] = {}
        # Look again when a shard was merged away by another run meanwhile, or turned out damaged (another
        # shard may hold the same prompts): the next listing finds the merged shard and skips the damaged.
        for _attempt in range(5):
            placed, again = _by_shard(self.folder, wanted)
            for path, digests in placed.items():
                rows = _read_rows(path, digests)
                if rows is None:
                    again = True
                    continue
                for digest, row in rows.items():
                    for i in wanted.pop(digest):
                        found[i] = row
            if not again or not wanted:
                break
        self.hits += len(found)
        self.misses += len(prompts) - len(found)
        return found

    def get(self, prompt: str) -> SparseRow | None:
        """One prompt's cached row, or None (counted like :meth:`lookup`)."""
        return self.lookup([prompt]).get(0)

    def put(self, prompt: str, row: SparseRow) -> None:
        """Collect ``prompt``'s row; every ``shard_prompts`` rows are written as one shard."""
        self._pending[_digest(prompt)] = row
        if len(self._pending) >= self.shard_prompts:
            self.flush()

    def flush(self) -> Path | None:
        """Write the collected rows as one shard (then merge small shards if there are many); returns
        the shard written, or None when nothing was pending."""
        if not self._pending:
            return None
        path = write_shard(self.folder, self._pending.keys(), list(self._pending.values()))
        self._pending.clear()
        compact(self.folder)
        return path

    @property
    def meta(self) -> dict[str, Any] | None:
        path = self.folder / "meta.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def save_meta(self, meta: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.folder / "meta.json", {**meta, "identity": self.identity})


def shards(folder: Path) -> list[Path]:
    """The complete shards in a configuration's folder (temporary files of writers are hidden)."""
    return sorted(Path(folder).glob(_SHARD_GLOB)) if Path(folder).is_dir() else []


def stored_prompts(folder: Path) -> int:
    """How many distinct prompts the readable shards of ``folder`` hold."""
    keys: set[str] = set()
    for path in shards(folder):
        try:
            keys.update(_keys(path) or ())
        except FileNotFoundError:
            continue
    return len(keys)


def _keys(path: Path) -> frozenset[str] | None:
    """The shard's key list (memoised), None if it cannot be read; raises FileNotFoundError if it is gone."""
    name = str(path)
    if name not in _KEYS:
        try:
            with np.load(path, allow_pickle=False) as data:
                _KEYS[name] = frozenset(data["keys"].astype("U64").tolist())
        except FileNotFoundError:
            raise
        except _UNREADABLE:
            _KEYS[name] = None
    return _KEYS[name]


def _by_shard(folder: Path, wanted: dict[str, list[int]]) -> tuple[dict[Path, list[str]], bool]:
    """The wanted digests grouped by a shard that holds them, and whether a listed shard had vanished
    before its keys were read (merged by another run: list the folder again to find the merged one)."""
    found: dict[Path, list[str]] = {}
    remaining = set(wanted)
    vanished = False
    for path in shards(folder):
        try:
            keys = _keys(path)
        except FileNotFoundError:
            vanished = True
            continue
        held = remaining.intersection(keys or ())
        if held:
            found[path] = list(held)
            remaining -= held
    return found, vanished


def _load(path: Path, only: set[str] | None = None) -> tuple[int, dict[str, SparseRow]] | None:
    """A shard's size and its rows (those in ``only``, or all): (0, {}) if the shard cannot be read,
    None if it has vanished (merged by another run since the folder was listed)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        return len(arrays["keys"]), _unpack(arrays, only)
    except FileNotFoundError:
        return None
    except _UNREADABLE:
        _KEYS[str(path)] = None
        return 0, {}


def _read_rows(path: Path, digests: list[str]) -> dict[str, SparseRow] | None:
    """The rows of ``digests`` in one shard; None if it has vanished or cannot be read."""
    loaded = _load(path, set(digests))
    if loaded is None or loaded[0] == 0:
        return None
    size, rows = loaded
    # A row that shares memory with a mostly unused shard would keep the whole shard alive: copy it.
    if len(digests) * 2 < size:
        return {digest: _copied(row) for digest, row in rows.items()}
    return rows


def write_shard(folder: Path, digests: Iterable[str], rows: list[SparseRow]) -> Path:
    """Write one shard of ``rows`` (keyed by their prompts' digests) atomically; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _pack(list(digests), rows)
    path = folder / f"shard-{len(rows)}-{os.getpid()}-{secrets.token_hex(4)}.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def compact(folder: Path, threshold: int = COMPACT_AFTER, small: int = SHARD_PROMPTS) -> Path | None:
    """Merge the shards of fewer than ``small`` prompts into one, once there are more than ``threshold``.

    Safe beside readers and other writers: the merged shard is in place before any part is deleted, and
    only shards whose rows it holds are deleted (a shard another run merged first is skipped).
    Returns the merged shard, or None when nothing was merged.
    """
    parts = [p for p in shards(folder) if _shard_size(p) < small]
    if len(parts) <= threshold:
        return None
    merged: dict[str, SparseRow] = {}
    used = []
    for path in parts:
        loaded = _load(path)
        if loaded is not None:  # a damaged shard has no rows to keep, and goes too
            merged.update(loaded[1])
            used.append(path)
    target = write_shard(folder, merged.keys(), list(merged.values())) if merged else None
    for path in used:
        try:
            path.unlink(missing_ok=True)
        except OSError:  # Windows: a reader has it open; its rows are in the merged shard, merged again later
            pass
    return target


def _pack(digests: list[str], rows: list[SparseRow]) -> dict[str, np.ndarray]:
    """Rows as a few flat arrays plus per-row lengths: eight npz members per shard, whatever its size.

    ``ints`` is every row's ``idx`` then every row's ``peak`` (``floats``: ``max`` then ``mean``), so
    each row's arrays are contiguous slices.
    """
    table: dict[str, int] = {}  # each distinct token label once, by first use
    label_ids = [table.setdefault(s, len(table)) for row in rows for s in row.token_strs]

    def cat(name: str, dtype: type) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(row, name), dtype=dtype) for row in rows]
                              + [np.zeros(0, dtype=dtype)])

    return dict(
        keys=np.array(digests, dtype="S64"),
        # Per row: features fired, tokens encoded (BOS included), text tokens, labels, truncated (0/1).
        counts=np.array([[len(row.idx), row.n_tokens, len(row.tokens), len(row.token_strs), row.truncated]
                         for row in rows], dtype=np.int64).reshape(len(rows), 5),
        ints=np.concatenate([cat("idx", np.int32), cat("peak", np.int32)]),
        floats=np.concatenate([cat("max", np.float32), cat("mean", np.float32)]),
        tokens=cat("tokens", np.int32),
        # Token labels: each distinct label once, as one UTF-8 text plus each label's length in characters
        # (any character may occur in a label, so no separator is safe, and a fixed-width string array
        # would waste space), and per token the number of its label.
        label_ids=np.array(label_ids, dtype=np.int32),
        label_chars=np.array([len(s) for s in table], dtype=np.int64),
        labels=np.frombuffer("".join(table).encode("utf-8"), dtype=np.uint8),
    )


def _offsets(lengths: np.ndarray) -> list[int]:
    return [0, *np.cumsum(lengths).tolist()]


def _unpack(arrays: dict[str, np.ndarray], only: set[str] | None = None) -> dict[str, SparseRow]:
    """The rows of a shard by digest (those in ``only``, or all); raises ValueError when its arrays do
    not fit together."""
    keys, counts = arrays["keys"].astype("U64").tolist(), arrays["counts"]
    ints, floats, tokens = arrays["ints"], arrays["floats"], arrays["tokens"]
    fired, text, labels = _offsets(counts[:, 0]), _offsets(counts[:, 2]), _offsets(counts[:, 3])
    if counts.shape != (len(keys), 5) or not len(ints) == len(floats) == 2 * fired[-1] or \
            len(tokens) != text[-1] or len(arrays["label_ids"]) != labels[-1]:
        raise ValueError("the arrays of the shard do not add up")
    chars, text_of_labels = _offsets(arrays["label_chars"]), arrays["labels"].tobytes().decode("utf-8")
    table = np.array([text_of_labels[a:b] for a, b in itertools.pairwise(chars)], dtype=object)
    all_labels = table[arrays["label_ids"]].tolist()  # an IndexError for a damaged shard
    n_fired, n_tokens, truncated = fired[-1], counts[:, 1].tolist(), counts[:, 4].tolist()
    rows = {}
    for r, digest in enumerate(keys):
        if only is not None and digest not in only:
            continue
        a, b = fired[r], fired[r + 1]
        rows[digest] = SparseRow(
            idx=ints[a:b], max=floats[a:b], mean=floats[n_fired + a:n_fired + b], n_tokens=n_tokens[r],
            truncated=bool(truncated[r]), peak=ints[n_fired + a:n_fired + b], tokens=tokens[text[r]:text[r + 1]],
            token_strs=all_labels[labels[r]:labels[r + 1]],
        )
    return rows


def _copied(row: SparseRow) -> SparseRow:
    return SparseRow(idx=row.idx.copy(), max=row.max.copy(), mean=row.mean.copy(), n_tokens=row.n_tokens,
                     truncated=row.truncated, peak=row.peak.copy(), tokens=row.tokens.copy(),
                     token_strs=list(row.token_strs))
