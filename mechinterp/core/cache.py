"""On-disk cache of per-prompt feature summaries, so reruns only encode what changed.

People edit a prompt file and rerun, again and again. Each prompt's sparse summary (features that
fired, their max and mean activation, the token count) is stored under a key made of

* the model and SAE identity (release/id, or the SAE folder and its weights' size and mtime),
* the encoding settings that change the numbers (project encoding version), and
* the prompt's text,

so editing one line re-encodes exactly one prompt, and a rerun with nothing changed needs neither the
model nor the SAE (the metadata needed for titles and links is stored beside the entries).

Layout: ``<cache>/activations/<config-hash>/meta.json`` and one ``<prompt-hash>.npz`` per prompt,
each written atomically, so an interrupted run leaves only complete entries behind.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from mechinterp.core.io import atomic_path, write_json
from mechinterp.core.summaries import SparseRow

# Bump when anything about how summaries are computed changes; old entries are then never read.
ENCODING_VERSION = "2"  # 2: SAE-context cut, peak positions and tokens stored


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ActivationCache:
    """Per-prompt :class:`SparseRow` entries for one model + SAE configuration."""

    def __init__(self, root: Path, identity: dict[str, str]):
        key = json.dumps({**identity, "encoding_version": ENCODING_VERSION}, sort_keys=True)
        self.identity = identity
        self.folder = Path(root) / _digest(key)[:20]
        self.hits = 0
        self.misses = 0

    def _entry(self, prompt: str) -> Path:
        return self.folder / f"{_digest(prompt)}.npz"

    def get(self, prompt: str) -> SparseRow | None:
        path = self._entry(prompt)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return SparseRow(
                    idx=data["idx"], max=data["max"], mean=data["mean"],
                    n_tokens=int(data["n_tokens"]), truncated=bool(data["truncated"]),
                    peak=data["peak"], tokens=data["tokens"], token_strs=[str(t) for t in data["token_strs"]],
                )
        except (OSError, ValueError, KeyError):
            return None  # unreadable entry (e.g. from a crashed disk): recompute it

    def lookup(self, prompts: list[str]) -> dict[int, SparseRow]:
        """The cached rows among ``prompts``, by index; counts hits and misses."""
        found = {}
        for i, prompt in enumerate(prompts):
            row = self.get(prompt)
            if row is not None:
                found[i] = row
        self.hits += len(found)
        self.misses += len(prompts) - len(found)
        return found

    def put(self, prompt: str, row: SparseRow) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._entry(prompt)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(
                    f, idx=row.idx, max=row.max, mean=row.mean,
                    n_tokens=np.int64(row.n_tokens), truncated=np.bool_(row.truncated),
                    peak=row.peak, tokens=row.tokens, token_strs=np.array(row.token_strs, dtype=str),
                )

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
