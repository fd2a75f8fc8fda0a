"""Per-prompt summaries of feature activations, stored sparsely (numpy only, no torch).

Kept apart from :mod:`mechinterp.core.encoding` so that a rerun served entirely from the activation cache
never has to import PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def _empty_int() -> np.ndarray:
    return np.zeros(0, dtype=np.int32)


@dataclass
class SparseRow:
    """One prompt's summary over its text tokens: features that fired, their max and mean activation.

    ``peak``, ``tokens`` and ``token_strs`` let Chapter 2 say *where* a feature fires (which token, at
    which position) without re-encoding: the evidence behind a verdict comes from the cache too.
    """

    idx: np.ndarray  # int32 feature ids with max > 0
    max: np.ndarray  # float32
    mean: np.ndarray  # float32
    n_tokens: int
    truncated: bool = False
    peak: np.ndarray = field(default_factory=_empty_int)  # int32 per fired feature: text-token index of its max
    tokens: np.ndarray = field(default_factory=_empty_int)  # int32 the text's token ids (BOS excluded)
    token_strs: list[str] = field(default_factory=list)  # the same tokens as whole-character labels


@dataclass
class PromptAggregates:
    """Per-prompt, per-feature summaries for a list of prompts (BOS and padding excluded)."""

    rows: list[SparseRow]
    d_sae: int

    def dense(self, agg: str, indices: Sequence[int] | None = None, features: np.ndarray | None = None) -> np.ndarray:
        """A dense ``[n_prompts, n_features]`` float32 array of ``agg`` ("max" or "mean")."""
        rows = self.rows if indices is None else [self.rows[i] for i in indices]
        if features is None:
            out = np.zeros((len(rows), self.d_sae), dtype=np.float32)
            for r, row in enumerate(rows):
                out[r, row.idx] = getattr(row, agg)
            return out
        lookup = np.full(self.d_sae, -1, dtype=np.int64)
        lookup[features] = np.arange(len(features))
        out = np.zeros((len(rows), len(features)), dtype=np.float32)
        for r, row in enumerate(rows):
            cols = lookup[row.idx]
            keep = cols >= 0
            out[r, cols[keep]] = getattr(row, agg)[keep]
        return out

    def peaks(self, indices: Sequence[int], features: np.ndarray) -> np.ndarray:
        """``[n_prompts, n_features]`` text-token index of each feature's max in each prompt, -1 where it
        did not fire (index 0 is the first token after BOS)."""
        lookup = np.full(self.d_sae, -1, dtype=np.int64)
        lookup[features] = np.arange(len(features))
        out = np.full((len(indices), len(features)), -1, dtype=np.int64)
        for r, i in enumerate(indices):
            row = self.rows[i]
            cols = lookup[row.idx]
            keep = cols >= 0
            out[r, cols[keep]] = row.peak[keep]
        return out

    def fired_any(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Boolean ``[d_sae]``: did the feature fire in any of these prompts?"""
        rows = self.rows if indices is None else [self.rows[i] for i in indices]
        out = np.zeros(self.d_sae, dtype=bool)
        for row in rows:
            out[row.idx] = True
        return out

    def fire_fraction(self, indices: Sequence[int]) -> np.ndarray:
        """``[d_sae]`` share of these prompts in which each feature fired (max > 0)."""
        counts = np.zeros(self.d_sae, dtype=np.int64)
        for i in indices:
            counts[self.rows[i].idx] += 1
        return counts / max(len(indices), 1)

    def column_means(self, agg: str, indices: Sequence[int]) -> np.ndarray:
        """``[d_sae]`` mean over these prompts of each feature's per-prompt ``agg`` activation."""
        total = np.zeros(self.d_sae, dtype=np.float64)
        for i in indices:
            row = self.rows[i]
            total[row.idx] += getattr(row, agg)
        return total / max(len(indices), 1)

    @property
    def n_tokens(self) -> int:
        return int(sum(row.n_tokens for row in self.rows))
