"""Corpus-scale feature mining: a feature's top examples, firing density and activation histogram over
millions of tokens, in one streaming pass whose memory does not grow with the corpus.

Why it exists: Chapter 3's prompt files hold a few thousand tokens; the examples on Neuronpedia come
from millions. Finding a feature's real top examples means encoding a large corpus, which does not fit
in memory as activations (1M tokens x 24,576 features is 98 GB as float32) and takes long enough that
an interrupted run must not start over. So:

* **Windows, streamed.** The corpus is read one document at a time and cut into windows of the SAE's
  training context (:mod:`mechinterp.cards.corpus`); a batch of windows is encoded, folded into the
  running statistics and dropped.
* **Bounded state.** Per feature: the running top-k windows (value, window, peak position), merged with
  each batch's per-window maxima by one vectorised sort; activation histogram counts over fixed
  log-spaced bin edges (the firing count is their sum); the same histogram of the per-window maxima;
  and a few windows drawn at random among those where it fires (a deterministic pseudo-random
  priority per window, so the draw does not depend on batching or resuming), from which a card picks
  examples at lower activation levels. Only windows that some top-k or random entry points to are
  kept, so memory is bounded by ``n_features * (k + samples)`` windows whatever the corpus size (and
  by the number of windows read, for a small corpus).
* **float32 statistics.** Activations are cast to float32 before anything is counted, compared or
  kept, so a model or SAE computing in bfloat16 gives the same kind of numbers (at its precision).
* **float32 re-score.** bfloat16 rounds near-equal peaks into ties, so its top-k can hold other
  windows, in another order, than a float32 pass's. A reduced-precision pass can keep more candidates
  per feature (``MiningOptions.candidates``) and have them encoded again in float32
  (``mine(..., rescore_with=...)``): the top-k are re-ranked by their float32 peaks, and features
  whose true top-k might lie outside the candidates are flagged (:class:`Rescore`).
* **Resumable.** The state is saved now and then to a checkpoint keyed by everything that determines
  the numbers (:mod:`mechinterp.cards.store`): the same command continues an interrupted pass, and a
  finished pass (or a finished pass over more features) is read back at once.

The BOS position, padding and any BOS-token position are excluded from every statistic (counts,
histograms, top examples): GPT-2's BOS residual has a huge norm and lights up the same features in
every window.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechinterp.cards.corpus import Corpus, CorpusPosition, MinedWindow, iter_windows, resolve_window
from mechinterp.cards.store import PassState, Restored, restore, save_state
from mechinterp.core.encoding import hook_activations, is_out_of_memory, sae_encode
from mechinterp.core.errors import EnvironmentProblem, UserError
from mechinterp.core.loading import Loaded
from mechinterp.core.progress import Log, silent
from mechinterp.core.tables import plural

# Bump when anything that changes the mined numbers changes; older checkpoints are then never read.
MINING_VERSION = "2"
DEFAULT_K = 10
# Windows drawn at random per feature among those where it fires: a card picks its examples at the
# quartiles and the median of the per-window maxima from them (the draw's nearest to each level is,
# with 16 draws, typically within ~3 percentiles of it).
DEFAULT_SAMPLES = 16
# Windows per forward pass at the full window length (16 x 128 tokens x 24,576 features is a ~200 MB
# activation tensor, the largest object of the pass).
DEFAULT_BATCH_SIZE = 16
# About 130k tokens between checkpoints: a few minutes of GPT-2 small on a CPU, seconds on a GPU.
DEFAULT_CHECKPOINT_EVERY = 1024
# Histogram bins: log-spaced from HIST_LOW to HIST_HIGH (10 per decade), plus (0, HIST_LOW) and
# [HIST_HIGH, inf). Fixed in advance because a streaming pass cannot know each feature's range.
HIST_LOW = 1e-2
HIST_HIGH = 1e3
HIST_BINS = 50
# Batches between prunings of the kept windows: between two, at most this many batches' windows are
# kept beyond those the top-k point to (torch.unique over F x k ids is too slow to run every batch).
PRUNE_EVERY = 32
# Features whose density a MiningResult's repr lists (a repr is read at a glance).
REPR_FEATURES = 5
# GPT-2's tokenizer averages about 4 bytes of English per token; only the first progress estimate uses it.
BYTES_PER_TOKEN = 4.0

Progress = Callable[[int, "int | None"], None]


# --- options --------------------------------------------------------------------------------------------


@dataclass
class MiningOptions:
    """What to mine and how.

    Attributes:
        features: feature ids whose top examples, density and histogram are kept (duplicates dropped).
        all_features: keep them for every feature of the SAE instead (``features`` is then ignored).
        k: top examples kept per feature (each from a different window).
        samples: windows drawn at random (uniformly among the windows where the feature fires) and kept
            per feature, for examples below the top; 0 = none.
        max_tokens: stop after this many corpus tokens (BOS not counted); None = the whole corpus.
        window: tokens per window, BOS included; None = the SAE's training context
            (``sae.cfg.metadata.context_size``), or the model's ``n_ctx`` if the SAE does not record it.
        batch_size: windows per forward pass at full length; shorter windows are packed more per batch,
            so a batch never holds more than ``batch_size * window`` positions.
        hist_low, hist_high, hist_bins: the histogram's log-spaced bins between ``hist_low`` and
            ``hist_high``; one more bin each holds (0, hist_low) and [hist_high, inf).
        checkpoint_dir: folder for the resumable state; None = no checkpoints.
        checkpoint_every: save the state after at least this many windows since the last save.
        resume: continue from (or reuse) a matching checkpoint; False starts over and overwrites it.
        candidates: windows kept per feature during the pass (at least ``k``; None = ``k``), for a
            float32 re-score of a reduced-precision pass (``mine(..., rescore_with=...)``): bfloat16
            rounding can push a true top-k window just below the k-th place, so a few more candidates
            let the re-score find it. The result still holds ``k`` per feature.
    """

    features: tuple[int, ...] = ()
    all_features: bool = False
    k: int = DEFAULT_K
    samples: int = DEFAULT_SAMPLES
    max_tokens: int | None = None
    window: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    hist_low: float = HIST_LOW
    hist_high: float = HIST_HIGH
    hist_bins: int = HIST_BINS
    checkpoint_dir: Path | None = None
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    resume: bool = True
    candidates: int | None = None

    def __post_init__(self) -> None:
        self.features = tuple(dict.fromkeys(int(f) for f in self.features))
        if not self.features and not self.all_features:
            raise UserError("nothing to mine: give feature ids (--feature ID) or mine every feature (--all-features)")
        for name in ("k", "batch_size", "hist_bins", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if int(self.samples) < 0:
            raise UserError(f"samples must be 0 or more, got {self.samples}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UserError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.window is not None and self.window < 2:
            raise UserError(f"window must be at least 2 tokens (BOS plus one token), got {self.window}")
        if not 0 < self.hist_low < self.hist_high < math.inf:
            raise UserError(f"histogram range must satisfy 0 < low < high, got {self.hist_low}, {self.hist_high}")
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = Path(self.checkpoint_dir)
        if self.candidates is not None and int(self.candidates) < int(self.k):
            raise UserError(f"candidates must be at least k ({self.k}), got {self.candidates}")

    @property
    def slots(self) -> int:
        """Top windows kept per feature during the pass: ``candidates``, or ``k``."""
        return max(int(self.k), int(self.candidates or 0))

    def hist_edges(self) -> np.ndarray:
        """float32 ``[hist_bins + 3]``: 0, the log-spaced edges from ``hist_low`` to ``hist_high``, inf."""
        inner = np.logspace(math.log10(self.hist_low), math.log10(self.hist_high), self.hist_bins + 1)
        return np.concatenate([[0.0], inner, [np.inf]]).astype(np.float32)



# --- the result -----------------------------------------------------------------------------------------


@dataclass
class MinedExample:
    """One of a feature's top windows: its peak activation there and where.

    Attributes:
        position: index of the peak token in ``window.tokens`` (BOS not counted); the document's token
            index is ``window.start + position``.
    """

    feature: int
    rank: int
    value: float
    position: int
    window: MinedWindow

    @property
    def token_id(self) -> int:
        return int(self.window.tokens[self.position])


@dataclass
class Rescore:
    """What a float32 re-score of a reduced-precision pass's top windows did.

    The pass (e.g. in bfloat16) keeps ``candidates`` windows per feature; each is encoded again with the
    model and SAE in float32 and the feature's top ``k`` are picked from them by their float32 peaks, so
    the values, peak positions and order are a float32 pass's whenever its top-k windows are among the
    candidates.

    Attributes:
        dtype: what the pass computed in (e.g. ``"torch.bfloat16"``).
        candidates: windows kept per feature by the pass and re-scored.
        windows_encoded: distinct windows encoded again (the re-score's cost, at most ``F x candidates``).
        features_changed: features whose top-k (window, peak position) set changed through it.
        order_changed: features whose set stayed but whose order changed.
        uncertain: features whose float32 k-th value is within the observed rounding error of the last
            candidate's reduced-precision value (of zero, where fewer candidates fired than were kept:
            then the error is also taken from any feature's candidates at that level): a window outside
            the candidates might belong in their top-k (more ``candidates`` would tell).
        max_abs_change: the largest |float32 - reduced-precision| peak among the re-scored candidates.
        seconds: how long the re-score took (each candidate window encoded in float32 and in the pass's
            precision): part of a run's time that is not the pass's.
        before_windows, before_positions, before_values: ``[F, k]`` the pass's own top-k, before the
            re-score (for comparisons; not part of :meth:`to_dict`).
    """

    dtype: str
    candidates: int
    windows_encoded: int
    features_changed: int
    order_changed: int
    uncertain: int
    max_abs_change: float
    uncertain_features: np.ndarray = field(repr=False)
    before_windows: np.ndarray = field(repr=False)
    before_positions: np.ndarray = field(repr=False)
    before_values: np.ndarray = field(repr=False)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary for a run record."""
        return {"done": True, "pass_dtype": self.dtype, "candidates": self.candidates,
                "windows_encoded": self.windows_encoded, "features_changed": self.features_changed,
                "order_changed": self.order_changed, "uncertain": self.uncertain,
                "max_abs_change": self.max_abs_change, "seconds": round(self.seconds, 2)}


@dataclass
class MiningResult:
    """What a pass found, per feature, over ``n_tokens`` corpus tokens (BOS and padding excluded).

    Attributes:
        features: int64 ``[F]`` the features mined (row ``i`` of every array is ``features[i]``).
        top_values: float32 ``[F, k]`` each top window's peak activation, highest first (ties: the
            earlier window first); 0 where fewer than ``k`` windows fired.
        top_windows: int64 ``[F, k]`` window ids into ``windows`` (-1 where empty).
        top_positions: int64 ``[F, k]`` the peak's index in the window's tokens.
        windows: the windows that some top or sample entry points to, by id.
        hist_edges: float32 ``[bins + 1]`` fixed edges: 0, log-spaced ``hist_low .. hist_high``, inf.
        hist_counts: int64 ``[F, bins]`` tokens whose activation falls in ``[edges[b], edges[b+1])``
            (only activations > 0 are counted).
        window_hist_counts: int64 ``[F, bins]`` the same for each window's maximum: windows where the
            feature fires, by their peak activation (their sum: the windows where it fires).
        sample_windows: int64 ``[F, samples]`` windows drawn at random among those where the feature
            fires, in draw order (-1 where it fires in fewer windows); ``sample_positions`` and
            ``sample_values``: each one's peak position and peak activation.
        n_tokens: corpus tokens encoded and counted (the density's denominator).
        n_windows, n_documents: windows encoded; documents read.
        window: tokens per window, BOS included; ``n_bos``: 1 when BOS was put in front, else 0.
        complete: the whole corpus (or ``max_tokens``) was read.
        resumed_at: tokens already done when this run started (from a checkpoint), else 0.
        reused: this run read a finished pass from its checkpoint instead of encoding anything.
        rescore: the float32 re-score of the top windows, when the pass ran in reduced precision and
            one was asked for (``mine(..., rescore_with=...)``); None otherwise.
    """

    features: np.ndarray
    top_values: np.ndarray
    top_windows: np.ndarray
    top_positions: np.ndarray
    windows: dict[int, MinedWindow]
    hist_edges: np.ndarray
    hist_counts: np.ndarray
    window_hist_counts: np.ndarray
    sample_windows: np.ndarray
    sample_positions: np.ndarray
    sample_values: np.ndarray
    n_tokens: int
    n_windows: int
    n_documents: int
    window: int
    n_bos: int
    corpus: str
    complete: bool
    checkpoint: Path | None = None
    resumed_at: int = 0
    reused: bool = False
    rescore: Rescore | None = None
    _rows: dict[int, int] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        n = len(self.features)
        densities = ", ".join(f"#{int(f)} {100 * d:.3g}%" for f, d in zip(self.features[:REPR_FEATURES],
                                                                          self.densities[:REPR_FEATURES]))
        more = f", ... ({n:,} in all)" if n > REPR_FEATURES else ""
        corpus = self.corpus if len(self.corpus) <= 100 else self.corpus[:99] + "…"
        state = ("complete" if self.complete else "incomplete") + (", read back from its checkpoint" if self.reused else "")
        state += ", top windows re-scored in float32" if self.rescore is not None else ""
        return (f"MiningResult({plural(n, 'feature')} over {self.n_tokens:,} tokens of {corpus} "
                f"({self.n_windows:,} windows of {self.window} tokens, {self.n_documents:,} documents); top {self.k} "
                f"windows each; {state}; density {densities}{more})")

    @property
    def k(self) -> int:
        return int(self.top_values.shape[1])

    def row(self, feature: int) -> int:
        """The row of ``feature`` in the arrays; raises UserError for a feature that was not mined."""
        if not self._rows:
            self._rows = {int(f): i for i, f in enumerate(self.features)}
        try:
            return self._rows[int(feature)]
        except KeyError:
            raise UserError(f"feature {feature} was not mined; add it with --feature or use --all-features") from None

    @property
    def fired_counts(self) -> np.ndarray:
        """int64 ``[F]`` tokens where each feature fires (activation > 0)."""
        return self.hist_counts.sum(axis=1)

    @property
    def densities(self) -> np.ndarray:
        """float64 ``[F]`` the fraction of corpus tokens where each feature fires."""
        return self.fired_counts / max(self.n_tokens, 1)

    def subset(self, rows: torch.Tensor | np.ndarray) -> MiningResult:
        """The same pass with only these rows (features), in this order; itself when it is every row."""
        rows = np.asarray(rows, dtype=np.int64)
        if np.array_equal(rows, np.arange(len(self.features))):
            return self
        arrays = ("features", "top_values", "top_windows", "top_positions", "hist_counts", "window_hist_counts",
                  "sample_windows", "sample_positions", "sample_values")
        return dataclasses.replace(self, **{name: getattr(self, name)[rows] for name in arrays}, _rows={})

    def fired(self, feature: int) -> int:
        return int(self.hist_counts[self.row(feature)].sum())

    def density(self, feature: int) -> float:
        return self.fired(feature) / self.n_tokens if self.n_tokens else 0.0

    def max_activation(self, feature: int) -> float:
        """The feature's largest activation on the corpus (0 if it never fires)."""
        return float(max(self.top_values[self.row(feature), 0], 0.0))

    def examples(self, feature: int) -> list[MinedExample]:
        """The feature's top windows, highest peak first."""
        return self._entries(feature, self.top_windows, self.top_values, self.top_positions)

    def _entries(self, feature: int, windows: np.ndarray, values: np.ndarray, positions: np.ndarray) -> list[MinedExample]:
        """One feature's row of a ``[features, slots]`` table of windows, as examples, up to the first empty slot."""
        r = self.row(feature)
        out = []
        for j in range(windows.shape[1]):
            window_id = int(windows[r, j])
            if window_id < 0:
                break
            out.append(MinedExample(int(feature), j + 1, float(values[r, j]), int(positions[r, j]),
                                    self.windows[window_id]))
        return out

    def windows_fired(self, feature: int) -> int:
        """In how many windows the feature fires (at one token or more)."""
        return int(self.window_hist_counts[self.row(feature)].sum())

    def samples(self, feature: int) -> list[MinedExample]:
        """The windows drawn at random among those where the feature fires, in draw order (``rank``)."""
        return self._entries(feature, self.sample_windows, self.sample_values, self.sample_positions)

    def window_max_quantile(self, feature: int, q: float) -> float:
        """The ``q`` quantile of the per-window maxima where the feature fires (0.0 if it never fires).

        Exact (``np.quantile``'s linear rule) when the feature fires in no more windows than the draw
        holds: every such window is then drawn, with its maximum. Otherwise the histogram of the maxima
        gives the quantile's bin exactly, and its place inside the bin is read off the drawn windows
        that fall in that bin (a random sample of them), or, with fewer than two there, spread evenly
        over the bin on a log scale.
        """
        r = self.row(feature)
        counts = self.window_hist_counts[r]
        total = int(counts.sum())
        if total == 0:
            return 0.0
        drawn = self.sample_values[r][self.sample_windows[r] >= 0].astype(np.float64)
        if len(drawn) == total:
            return float(np.quantile(drawn, q))
        cumulative = np.cumsum(counts)
        b = min(int(np.searchsorted(cumulative, q * total, side="left")), len(counts) - 1)
        below = int(cumulative[b - 1]) if b > 0 else 0
        share = min(max((q * total - below) / max(int(counts[b]), 1), 0.0), 1.0)
        lo, hi = float(self.hist_edges[b]), float(self.hist_edges[b + 1])
        inside = drawn[(drawn >= lo) & (drawn < hi)]
        if len(inside) >= 2:
            return float(np.quantile(inside, share))
        top = self.max_activation(feature)
        if top < hi:  # the last bin where it fires ends at its maximum (the top bin is open)
            hi = np.nextafter(top, np.inf)
        if hi <= lo:
            return lo
        value = lo + share * (hi - lo) if lo == 0.0 else float(lo * (hi / lo) ** share)
        return float(min(value, np.nextafter(hi, -np.inf)))  # inside [lo, hi): the bin's upper edge is not

    def histogram(self, feature: int, per_window: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The feature's histogram trimmed to its non-empty range, with finite edges.

        Args:
            per_window: count windows by their peak (``window_hist_counts``) instead of tokens, on the
                same trimmed bins as the token histogram (a window's peak is one of its tokens, so its
                bins are among the tokens' non-empty ones).

        Returns:
            ``(edges [n + 1], counts [n])``: bins from the first to the last non-empty one; an open last
            bin ``[hist_high, inf)`` is closed at the feature's maximum activation. A feature that
            never fires gives one empty bin ``[0, hist_low)``.
        """
        counts = self.hist_counts[self.row(feature)]
        shown = self.window_hist_counts[self.row(feature)] if per_window else counts
        filled = np.flatnonzero(counts)
        if filled.size == 0:
            return self.hist_edges[:2].astype(np.float64), np.zeros(1, dtype=np.int64)
        lo, hi = int(filled[0]), int(filled[-1])
        edges = self.hist_edges[lo : hi + 2].astype(np.float64)
        if not np.isfinite(edges[-1]):
            edges[-1] = np.nextafter(self.max_activation(feature), np.inf)
        return edges, shown[lo : hi + 1].copy()

    def histogram_with(self, feature: int, others: dict[str, np.ndarray], label: str = "corpus",
                       ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The corpus histogram beside other activations of the feature (e.g. per prompt group), on the
        same fixed bins, trimmed together to the non-empty range with finite edges.

        Args:
            others: per source, the feature's per-token activations (zeros are not counted).
            label: the corpus's name among the sources.

        Returns:
            ``(edges [n + 1], {label: counts [n], source: counts [n], ...})``.
        """
        full = self.hist_edges.astype(np.float64)
        counts = {label: self.hist_counts[self.row(feature)]}
        top = self.max_activation(feature)
        for source, values in others.items():
            values = np.asarray(values, dtype=np.float32)
            values = values[values > 0]
            inner = self.hist_edges[1:-1]
            counts[source] = np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(full) - 1)
            top = max(top, float(values.max()) if values.size else 0.0)
        filled = np.flatnonzero(sum(counts.values()))
        if filled.size == 0:
            return full[:2].copy(), {s: np.zeros(1, dtype=np.int64) for s in counts}
        lo, hi = int(filled[0]), int(filled[-1])
        edges = full[lo : hi + 2].copy()
        if not np.isfinite(edges[-1]):
            edges[-1] = np.nextafter(top, np.inf)
        return edges, {s: c[lo : hi + 1].copy() for s, c in counts.items()}


# --- the pass -------------------------------------------------------------------------------------------


def merge_topk(
    values: torch.Tensor, windows: torch.Tensor, positions: torch.Tensor,
    new_values: torch.Tensor, new_windows: torch.Tensor, new_positions: torch.Tensor, k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` best of a running top-k and new candidates, per row, in one sort.

    Order: value descending, then window id ascending (deterministic ties, whatever the batching).
    Candidates whose value is not > 0 never enter (their window must be -1 or their value -inf/0).

    Args:
        values, windows, positions: ``[F, k]`` the running top-k (float32, int64, int64).
        new_values, new_windows, new_positions: ``[F, m]`` the candidates.

    Returns:
        The new ``[F, k]`` values, windows and positions; empty slots are ``(-inf, -1, 0)``.
    """
    v, w, p = _merge([values, windows, positions], [new_values, new_windows, new_positions], k)
    return v, w, p


def _merge(current: Sequence[torch.Tensor], new: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """:func:`merge_topk` for ``[values, windows, *payloads]``: the payloads follow their entries."""
    cat = [torch.cat([a, b], dim=1) for a, b in zip(current, new)]
    empty = ~(cat[0] > 0)
    cat = [cat[0].masked_fill(empty, -math.inf), cat[1].masked_fill(empty, -1)] + [c.masked_fill(empty, 0) for c in cat[2:]]
    # Lexicographic (value desc, window asc): sort by window, then a stable sort by value keeps that
    # order among equal values.
    by_window = torch.argsort(cat[1], dim=1, stable=True)
    by_value = torch.argsort(cat[0].gather(1, by_window), dim=1, descending=True, stable=True)[:, :k]
    order = by_window.gather(1, by_value)
    return [c.gather(1, order) for c in cat]


def window_priority(window_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """Each window's place in the random draw: a pseudo-random float32 in (0, 1], from its id alone.

    SplitMix64's mixing function of the window id, top 24 bits (exact in float32). The draw keeps, per
    feature, the windows of highest priority among those where it fires: a uniform random sample that
    is the same whatever the batch size, the other features or an interruption, and that a brute-force
    reference can reproduce.

    Returns:
        float32 ``[n]``.
    """
    z = np.asarray(window_ids, dtype=np.uint64).reshape(-1) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float32) + np.float32(1.0)) / np.float32(2**24)


def _window_tokens(windows: Sequence[MinedWindow], n_bos: int, bos_id: int | None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """A batch of windows as right-padded tokens ``[B, T]`` (BOS first when the SAE was trained with
    it), ``valid [B, T]`` (the text tokens that are not BOS) and each row's length."""
    lengths = [n_bos + len(w.tokens) for w in windows]
    longest = max(lengths)
    tokens = torch.zeros((len(windows), longest), dtype=torch.long)
    valid = torch.zeros((len(windows), longest), dtype=torch.bool)
    for r, w in enumerate(windows):
        if n_bos:
            tokens[r, 0] = bos_id
        tokens[r, n_bos : lengths[r]] = torch.from_numpy(w.tokens.astype(np.int64))
        valid[r, n_bos : lengths[r]] = True
    if bos_id is not None:
        valid &= tokens != bos_id
    return tokens, valid, lengths


@torch.inference_mode()
def _pre_activations(
    loaded: Loaded, windows: Sequence[MinedWindow], n_bos: int, bos_id: int | None, cols: torch.Tensor | None,
    resid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SAE's pre-activations (``hook_sae_acts_pre``, before its ReLU or threshold) ``[B, T, F]`` in
    float32, and ``valid [B, T]``: the re-score compares them across dtypes, negative values included.
    ``resid``: the windows' activations at the SAE's hook, when already computed."""
    tokens, valid, _ = _window_tokens(windows, n_bos, bos_id)
    sae, seen = loaded.sae.sae, []
    if resid is None:
        resid = hook_activations(loaded, tokens.to(loaded.device))
    with sae.hooks(fwd_hooks=[("hook_sae_acts_pre", lambda t, hook: seen.append(t))]):
        sae_encode(sae, resid)  # a hook on the pre-activations: SAELens' own encode, which shows them
    pre = seen[0] if cols is None else seen[0].index_select(2, cols)
    return pre.float(), valid.to(pre.device)


@torch.inference_mode()
def _batch_activations(
    loaded: Loaded, windows: Sequence[MinedWindow], n_bos: int, bos_id: int | None, cols: torch.Tensor | None,
    resid: torch.Tensor | None = None, in_float32: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature activations ``[B, T, F]`` of a batch of windows as float32 (zero wherever not counted),
    and ``valid [B, T]``: True at the windows' text tokens, False at BOS, padding and any BOS-token
    position. ``resid``: the windows' activations at the SAE's hook, when already computed.
    ``in_float32=False`` leaves them in the SAE's dtype, for a caller that converts only what it keeps."""
    tokens, valid, lengths = _window_tokens(windows, n_bos, bos_id)
    longest = tokens.shape[1]
    if resid is None:
        resid = hook_activations(loaded, tokens.to(loaded.device))
    acts = sae_encode(loaded.sae.sae, resid)
    if cols is not None:
        acts = acts.index_select(2, cols)
    # Every statistic is taken in float32: with a bfloat16 model or SAE, top-k values, histogram bins
    # and counts are then those of the activations as computed, not of a second rounding.
    if in_float32 and acts.dtype != torch.float32:
        acts = acts.float()
    # Zero what is not counted. Whole slices where possible: a masked_fill over [B, T, F] costs as much
    # as the statistics themselves at 24,576 features.
    acts[:, :n_bos] = 0.0
    for r, n in enumerate(lengths):
        if n < longest:
            acts[r, n:] = 0.0
    stray = ~valid
    stray[:, :n_bos] = False
    for r, n in enumerate(lengths):
        stray[r, n:] = False
    if bool(stray.any()):  # a BOS token inside the text (only with a tokenizer that ignores split_special_tokens)
        acts[stray.to(acts.device)] = 0.0
    return acts, valid.to(acts.device)


@dataclass
class _BatchUpdate:
    """One batch's contribution, computed in full before any of it touches the running state."""

    hist_index: torch.Tensor  # int64 [M] flat (feature * bins + bin) of every activation > 0
    window_hist_index: torch.Tensor  # int64 [W] flat (feature * bins + bin) of every window peak > 0
    top_rows: torch.Tensor  # int64 [R] the rows whose top-k changes
    top: list[torch.Tensor]  # their merged values, windows, positions, [R, k] each
    sample_rows: torch.Tensor  # int64 [R'] the rows whose draw changes
    samples: list[torch.Tensor]  # their merged keys, windows, positions, values, [R', samples] each
    n_tokens: int
    entered: list[MinedWindow]  # the batch's windows that entered some top-k or draw


@torch.inference_mode()
def _batch_update(state: PassState, acts: torch.Tensor, valid: torch.Tensor, windows: Sequence[MinedWindow],
                  n_bos: int, inner_edges: torch.Tensor, k: int) -> _BatchUpdate:
    """What one batch's activations ``[B, T, F]`` add to the histograms, the top-k and the draw.

    The dense tensor is read once, to list the activations > 0 (~60 per token of 24,576 features);
    everything else works on that list: the histogram bins, each window's peak per feature, and the
    peak's first position. Windows arrive in corpus order, so a batch's windows come after every
    window already in the top-k and enter a feature's top-k only above its current k-th value (ties go
    to the earlier window); only the features where some window enters are merged. The random draw
    works the same way, with each window's fixed priority in place of its peak.
    """
    n_windows, length, n_features = acts.shape
    n_bins = state.hist.shape[1]
    flat_acts = acts.reshape(-1)
    flat = torch.nonzero(flat_acts).squeeze(1)  # row-major: (window, position, feature)
    vals = flat_acts[flat].float()  # exact: float32 holds every bfloat16 or float16 value
    if not bool((vals > 0).all()):  # an SAE with negative outputs: only > 0 counts as firing
        keep = vals > 0
        flat, vals = flat[keep], vals[keep]
    feature = flat % n_features
    window_pos = flat // n_features
    window, pos = window_pos // length, window_pos % length
    del flat, window_pos
    hist_index = feature * n_bins + torch.bucketize(vals, inner_edges, right=True)

    cell = feature * n_windows + window  # into [F, B]
    peak = torch.zeros(n_features * n_windows, dtype=vals.dtype, device=vals.device)
    peak = peak.scatter_reduce_(0, cell, vals, reduce="amax").view(n_features, n_windows)
    fires = peak > 0
    fired_cells = fires.view(-1).nonzero().squeeze(1)  # flat (feature * B + window) where it fires
    window_hist_index = (fired_cells // n_windows) * n_bins + torch.bucketize(
        peak.view(-1)[fired_cells], inner_edges, right=True)
    enter = fires & (peak > state.values[:, -1:])  # the k-th value is -inf until k are found
    ids = torch.tensor([w.window_id for w in windows], dtype=torch.long, device=acts.device)
    n_samples = state.sample_keys.shape[1]
    if n_samples:
        priority = torch.from_numpy(window_priority(ids.cpu().numpy())).to(acts.device)  # [B]
        drawn = fires & (priority > state.sample_keys[:, -1:])
    else:
        priority, drawn = None, torch.zeros_like(fires)
    no_rows = torch.zeros(0, dtype=torch.long, device=acts.device)
    top_rows, top, sample_rows, samples = no_rows, [], no_rows, []
    entering = enter | drawn
    if bool(entering.any()):
        # The first position where an entering window reaches its peak.
        at_peak = entering.view(-1)[cell] & (vals == peak.view(-1)[cell])
        first = torch.full((n_features * n_windows,), length, dtype=torch.long, device=vals.device)
        first = first.scatter_reduce_(0, cell[at_peak], pos[at_peak], reduce="amin").view(n_features, n_windows)
        first = first - n_bos
        top_rows = enter.any(dim=1).nonzero().squeeze(1)
        if top_rows.numel():
            sub = enter[top_rows]  # [R, B]
            top = list(merge_topk(
                state.values[top_rows], state.windows[top_rows], state.positions[top_rows],
                peak[top_rows].masked_fill(~sub, -math.inf), ids.expand(len(top_rows), -1).masked_fill(~sub, -1),
                first[top_rows], k,
            ))
        sample_rows = drawn.any(dim=1).nonzero().squeeze(1)
        if sample_rows.numel():
            sub = drawn[sample_rows]
            samples = _merge(
                [t[sample_rows] for t in _sample_tensors(state)],
                [priority.expand(len(sample_rows), -1).masked_fill(~sub, -math.inf),
                 ids.expand(len(sample_rows), -1).masked_fill(~sub, -1), first[sample_rows], peak[sample_rows]],
                n_samples,
            )
    entered = entering.any(dim=0).nonzero().squeeze(1).tolist()
    return _BatchUpdate(hist_index, window_hist_index, top_rows, top, sample_rows, samples,
                        int(valid.sum()), [windows[i] for i in entered])


def _sample_tensors(state: PassState) -> list[torch.Tensor]:
    return [state.sample_keys, state.sample_windows, state.sample_positions, state.sample_values]


def _commit(state: PassState, update: _BatchUpdate, batch: Sequence[tuple[MinedWindow, CorpusPosition, int]]) -> None:
    """Fold a computed batch into the state: the only place the running statistics change."""
    windows = [w for w, _, _ in batch]
    state.hist.view(-1).index_add_(0, update.hist_index, torch.ones_like(update.hist_index))
    state.window_hist.view(-1).index_add_(0, update.window_hist_index, torch.ones_like(update.window_hist_index))
    for tensor, rows in zip((state.values, state.windows, state.positions), update.top):
        tensor[update.top_rows] = rows
    for tensor, rows in zip(_sample_tensors(state), update.samples):
        tensor[update.sample_rows] = rows
    state.pool.update((w.window_id, w) for w in update.entered)
    state.batches += 1
    if state.batches % PRUNE_EVERY == 0:
        state.prune_pool()
    state.n_tokens += update.n_tokens
    state.n_windows += len(windows)
    state.n_read += sum(len(w.tokens) for w in windows)
    state.n_documents = windows[-1].doc + 1
    state.bytes_read = max(state.bytes_read, batch[-1][2])
    state.position = batch[-1][1]


class _Batcher:
    """Groups windows into batches of at most ``budget`` padded positions (at least one window each).

    The budget can be lowered between batches (after running out of memory); the window that did not
    fit the previous batch is held, never lost.
    """

    def __init__(self, items: Iterator[tuple[MinedWindow, CorpusPosition, int]], budget: int, n_bos: int):
        self.items, self.budget, self.n_bos = items, budget, n_bos
        self.held: tuple[MinedWindow, CorpusPosition, int] | None = None

    def __iter__(self) -> _Batcher:
        return self

    def __next__(self) -> list[tuple[MinedWindow, CorpusPosition, int]]:
        batch: list[tuple[MinedWindow, CorpusPosition, int]] = []
        longest = 0
        while True:
            item, self.held = (self.held, None) if self.held is not None else (next(self.items, None), None)
            if item is None:
                break
            size = self.n_bos + len(item[0].tokens)
            if batch and (len(batch) + 1) * max(longest, size) > self.budget:
                self.held = item
                break
            batch.append(item)
            longest = max(longest, size)
        if not batch:
            raise StopIteration
        return batch


def checkpoint_key(loaded: Loaded, corpus: Corpus, options: MiningOptions, window: int,
                   identity: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything that determines a pass's numbers; a checkpoint is used only when all of it matches."""
    return {
        "version": MINING_VERSION,
        "identity": identity or {},
        "weights": _weights_fingerprint(loaded),
        # The compute dtypes: a bfloat16 run gives other (rounded) activations than a float32 one.
        "dtype": [str(getattr(loaded.model.cfg, "dtype", "")), str(loaded.sae.sae.W_enc.dtype)],
        "hook": loaded.sae.hook_name,
        "corpus": corpus.identity(),
        "features": "all" if options.all_features else list(options.features),
        "d_sae": loaded.sae.d_sae,
        "k": options.k,
        # Only when it differs from k, so that the keys (and saved passes) of plain passes stay as they were.
        **({"candidates": options.slots} if options.slots != options.k else {}),
        "samples": options.samples,
        "window": window,
        "prepend_bos": bool(loaded.sae.prepend_bos),
        "max_tokens": options.max_tokens,
        "hist": [options.hist_low, options.hist_high, options.hist_bins],
    }


@torch.inference_mode()
def _weights_fingerprint(loaded: Loaded) -> str:
    """A hash of a slice of the SAE's and model's weights: a changed SAE at the same path is noticed."""
    sae, model = loaded.sae.sae, loaded.model
    digest = hashlib.sha256()
    for tensor in (sae.W_enc[:, :16], sae.b_enc, model.W_E[:16]):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]




def mine(
    loaded: Loaded,
    corpus: Corpus,
    options: MiningOptions,
    identity: dict[str, str] | None = None,
    progress: Progress | None = None,
    log: Log | None = None,
    rescore_with: Loaded | None = None,
) -> MiningResult:
    """One streaming pass over ``corpus``: top-k windows, firing counts, histograms and a random draw of
    windows per feature.

    With ``options.checkpoint_dir`` and ``options.resume``, a finished pass with the same key is read
    back at once ("already mined"), and so is a finished pass that differs only in mining more
    features (e.g. every feature: the result then holds all of them); an interrupted one is continued.

    Args:
        loaded: the model and SAE.
        corpus: e.g. :class:`~mechinterp.cards.corpus.TextFileCorpus` or
            :class:`~mechinterp.cards.corpus.HFDatasetCorpus`.
        options: what to mine (see :class:`MiningOptions`).
        identity: names the model and SAE for the checkpoint key (e.g. ``Source.cache_identity()``);
            a hash of their weights is part of the key in any case.
        progress: called after every batch with ``(corpus tokens read, estimated total or None)``.
        log: one-line messages for a person (resuming, checkpoints, out-of-memory retries, the re-score).
        rescore_with: the same model and SAE loaded in float32, when ``loaded`` computes in a reduced
            precision: the ``options.slots`` top windows per feature are encoded again with it and the
            top ``k`` re-ranked by their float32 peaks (see :class:`Rescore`). Not saved in the
            checkpoint: a read-back pass is re-scored again. A re-scored result holds only the
            features asked for, also when a saved pass over more features answers.

    Returns:
        The :class:`MiningResult`. Memory stays bounded: the state is ``F x (2k + 2 bins + 2 samples)``
        numbers plus at most ``F x (k + samples)`` windows of tokens, whatever the corpus size.
    """
    log = log or silent
    window, n_bos, bos_id = _window_and_bos(loaded, options)
    features, cols = _features_to_mine(loaded, options)
    edges = options.hist_edges()
    key = checkpoint_key(loaded, corpus, options, window, identity)
    new_state = functools.partial(PassState, k=options.slots, n_bins=len(edges) - 1, n_samples=options.samples,
                                  device=loaded.device)
    start = restore(options.checkpoint_dir, key, options.resume, new_state, len(features), loaded.sae.d_sae, log)
    if not start.state.complete:
        inner_edges = torch.from_numpy(edges[1:-1].copy()).to(loaded.device)
        _run(loaded, corpus, options, start.state, window - n_bos, n_bos, bos_id, cols, inner_edges, start.path, key,
             progress, log)
    start.state.prune_pool()
    result = _result(start, features if start.features is None else start.features, edges, window, n_bos, corpus,
                     options.k)
    if rescore_with is not None:
        rows = _asked_rows(result, options)
        # A saved pass over more features answers with the rows asked for only: every row of a re-scored
        # result is then float32's, and the re-score encodes no window for features nobody asked about.
        result = result.subset(rows)
        on = rows.to(start.state.values.device)
        candidates = start.state.windows[on]
        # It encodes every distinct candidate window twice (float32 and the pass's precision): with many
        # features that can be most of the corpus, so say what the wait after the pass is.
        distinct = int(torch.unique(candidates[candidates >= 0]).numel())
        most = (" Most of the corpus: for this many features a float32 pass (--dtype float32) costs no more,"
                " with no re-score." if 2 * distinct > result.n_windows else "")
        log(f"re-scoring the top windows in float32: {distinct:,} distinct candidate windows of the pass's "
            f"{result.n_windows:,} ({options.slots} per feature, {plural(len(rows), 'feature')}) ...{most}")
        began = time.perf_counter()
        _rescore(result, start.state.values[on], candidates, (rescore_with, loaded),
                 str(loaded.sae.sae.W_enc.dtype), n_bos, bos_id, options.batch_size)
        result.rescore.seconds = time.perf_counter() - began
    return result


def _asked_rows(result: MiningResult, options: MiningOptions) -> torch.Tensor:
    """The rows of ``result`` that hold the features ``options`` asks for (every row for every feature)."""
    if options.all_features:
        return torch.arange(len(result.features))
    return torch.tensor([result.row(f) for f in options.features], dtype=torch.long)


def _window_and_bos(loaded: Loaded, options: MiningOptions) -> tuple[int, int, int | None]:
    """Tokens per window (BOS included), BOS positions in front of each (0 or 1), and the BOS token id."""
    window, _why = resolve_window(loaded, options.window)
    n_bos = 1 if loaded.sae.prepend_bos else 0
    if window <= n_bos:
        raise UserError(f"a window of {window} tokens leaves no room for text after BOS")
    bos_id = getattr(loaded.model.tokenizer, "bos_token_id", None)
    if n_bos and bos_id is None:
        raise UserError("the SAE was trained with a BOS token, but the model's tokenizer has none")
    return window, n_bos, bos_id


def _features_to_mine(loaded: Loaded, options: MiningOptions) -> tuple[np.ndarray, torch.Tensor | None]:
    """The features mined (int64 ``[F]``) and the SAE columns to keep (None: every column)."""
    d_sae = loaded.sae.d_sae
    if options.all_features:
        return np.arange(d_sae, dtype=np.int64), None
    bad = [f for f in options.features if not 0 <= f < d_sae]
    if bad:
        raise UserError(
            f"feature {bad[0]} does not exist: this SAE has {d_sae} features, so ids run from 0 to {d_sae - 1}"
        )
    features = np.array(options.features, dtype=np.int64)
    return features, torch.tensor(features, dtype=torch.long, device=loaded.device)


def _result(start: Restored, features: np.ndarray, edges: np.ndarray, window: int, n_bos: int,
            corpus: Corpus, k: int) -> MiningResult:
    """The finished (or read back) state as a :class:`MiningResult` of numpy arrays (``k`` top windows each)."""
    state = start.state
    return MiningResult(
        features=features,
        top_values=np.maximum(state.values[:, :k].cpu().numpy(), 0.0),
        top_windows=state.windows[:, :k].cpu().numpy(),
        top_positions=state.positions[:, :k].cpu().numpy(),
        windows=dict(sorted(state.pool.items())),
        hist_edges=edges,
        hist_counts=state.hist.cpu().numpy(),
        window_hist_counts=state.window_hist.cpu().numpy(),
        sample_windows=state.sample_windows.cpu().numpy(),
        sample_positions=state.sample_positions.cpu().numpy(),
        sample_values=state.sample_values.cpu().numpy(),
        n_tokens=state.n_tokens,
        n_windows=state.n_windows,
        n_documents=state.n_documents,
        window=window,
        n_bos=n_bos,
        corpus=corpus.describe(),
        complete=state.complete,
        checkpoint=start.path,
        resumed_at=start.resumed_at,
        reused=start.reused,
    )


def _run(loaded: Loaded, corpus: Corpus, options: MiningOptions, state: PassState, text_len: int, n_bos: int,
         bos_id: int | None, cols: torch.Tensor | None, inner_edges: torch.Tensor, path: Path | None,
         key: dict[str, Any], progress: Progress | None, log: Log) -> None:
    """The streaming loop: encode batches of windows, fold them into ``state``, checkpoint now and then.

    When a batch does not fit in memory, the batch size is halved once and the run continues with the
    batch that failed (nothing is counted twice: a batch changes the state only once it is complete);
    a second failure is reported with advice.
    """
    left = None if options.max_tokens is None else options.max_tokens - state.n_read
    stream = iter_windows(corpus, loaded.model.tokenizer, text_len, state.position, left, state.n_windows)
    full = text_len + n_bos
    batches = _Batcher(stream, options.batch_size * full, n_bos)
    size = corpus.size_bytes()
    queue: list[list[tuple[MinedWindow, CorpusPosition, int]]] = []
    since_save = 0
    retried = False
    committing = False

    def estimate() -> int | None:
        if options.max_tokens is not None:
            return options.max_tokens
        if size is None:
            return None
        if state.bytes_read and state.n_read:  # this corpus's own tokens per byte so far
            return max(state.n_read, round(size * state.n_read / state.bytes_read))
        return round(size / BYTES_PER_TOKEN)

    if progress is not None:
        progress(state.n_read, estimate())
    try:
        while True:
            batch = queue.pop(0) if queue else next(batches, None)
            if batch is None:
                break
            windows = [w for w, _, _ in batch]
            try:
                # In the SAE's dtype: the update converts the activations > 0 alone to float32 (~60 per
                # token of 24,576), not the whole [B, T, F] tensor (75 ms a batch of 16 x 128 tokens).
                acts, valid = _batch_activations(loaded, windows, n_bos, bos_id, cols, in_float32=False)
                update = _batch_update(state, acts, valid, windows, n_bos, inner_edges, options.slots)
                del acts
            except Exception as err:
                if not is_out_of_memory(err):
                    raise
                if retried or batches.budget <= full:
                    raise EnvironmentProblem(
                        f"out of memory even at --batch-size {max(1, batches.budget // full)}; lower "
                        "--batch-size further or use a machine with more memory"
                    ) from err
                retried = True
                batches.budget //= 2
                log(f"warning: out of memory; continuing with --batch-size {max(1, batches.budget // full)}")
                queue = list(_Batcher(iter(batch), batches.budget, n_bos)) + queue
                continue
            committing = True  # an interrupt now would leave a half-updated state: it must not be saved
            _commit(state, update, batch)
            committing = False
            since_save += len(batch)
            if path is not None and since_save >= options.checkpoint_every:
                save_state(path, state, key)
                since_save = 0
            if progress is not None:
                progress(state.n_read, estimate())
    except KeyboardInterrupt:
        if path is not None and not committing:
            save_state(path, state, key)
            log(f"saved the progress so far ({state.n_read:,} tokens) to {path}; the same command continues from it")
        raise
    state.complete = True
    if path is not None:
        save_state(path, state, key)




# --- the float32 re-score --------------------------------------------------------------------------------


@torch.inference_mode()
def _rescore(result: MiningResult, values: torch.Tensor, windows: torch.Tensor, models: tuple[Loaded, Loaded],
             dtype: str, n_bos: int, bos_id: int | None, batch_size: int) -> None:
    """Re-rank each feature's candidate windows by their float32 peaks; sets ``result``'s top-k and
    ``result.rescore``.

    Args:
        values, windows: ``[F, c]`` the pass's candidates for ``result``'s rows (its state's top table).
        models: (the float32 reference, the reduced-precision model and SAE of the pass).

    Only the candidates are encoded again (each distinct window once, whichever features keep it), so
    the cost is that of a float32 pass over at most ``F x candidates`` windows, not over the corpus.
    """
    reference = models[0]
    cand_windows = windows.to(reference.device)  # [F, c], -1 = empty
    old_values = values.to(reference.device)
    values, positions, missed = _float32_peaks(result, cand_windows, models, n_bos, bos_id, batch_size)
    k = result.k
    empty = torch.zeros((len(cand_windows), 0), device=values.device)
    top_v, top_w, top_p = _merge([empty, empty.long(), empty.long()], [values, cand_windows, positions], k)
    before = (result.top_windows, result.top_positions, result.top_values)
    result.top_values = np.maximum(top_v.cpu().numpy(), 0.0)
    result.top_windows, result.top_positions = top_w.cpu().numpy(), top_p.cpu().numpy()
    same_set, same_order = same_entries(before[0], before[1], result.top_windows, result.top_positions)
    fired = cand_windows >= 0
    change = (values - old_values.clamp(min=0)).abs().masked_fill(~fired, 0)  # values <= 0: did not fire in float32
    full = fired[:, -1]
    kth = top_v[:, k - 1].clamp(min=0)
    # A window outside a full candidate list fired in reduced precision, below the last candidate: its
    # float32 peak can move about as much as the candidates' peaks did. A window outside a list that is
    # not full did not fire at all and left no trace: its float32 peak is a rounding error near zero,
    # which this feature's peaks (mostly far from zero) need not show (on the demo world a feature's
    # largest peak error, 0.0018, missed a window that fired at 0.0027 in float32 only). Its
    # pre-activations on every token of its candidate windows, fired or not, show that error directly.
    own = change.max(dim=1).values
    per_feature = torch.where(full, own, torch.maximum(own, missed))
    # A feature with no candidate (it never fired in reduced precision) has no error of its own to
    # show; it may still fire weakly in float32, so it gets the largest error seen on any feature.
    per_feature = torch.where(fired.any(dim=1), per_feature, change.max())
    # Could such a window's float32 peak reach the float32 k-th value (0 when fewer than k fired: any
    # positive peak would enter)?
    bound = torch.where(full, old_values[:, -1].clamp(min=0), 0.0) + per_feature
    uncertain = (kth < bound) | (full & (kth <= bound))
    result.rescore = Rescore(
        dtype=dtype, candidates=int(cand_windows.shape[1]),
        windows_encoded=int(torch.unique(cand_windows[fired]).numel()),
        features_changed=int((~same_set).sum()), order_changed=int((same_set & ~same_order).sum()),
        uncertain=int(uncertain.sum()), uncertain_features=result.features[uncertain.cpu().numpy()],
        max_abs_change=float(change.max()),
        before_windows=before[0], before_positions=before[1], before_values=before[2],
    )


def _float32_peaks(result: MiningResult, cand_windows: torch.Tensor, models: tuple[Loaded, Loaded], n_bos: int,
                   bos_id: int | None, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each candidate's float32 peak and its first position: ``[F, c]`` float32 (-inf where empty or not
    firing) and int64, encoded with the float32 reference in batches of distinct windows; and per feature
    ``[F]``, the largest difference between its float32 and reduced-precision pre-activations on any
    text token of its candidate windows: how far a window that never fired in the pass (pre-activation
    at most 0 there) might reach in float32."""
    reference, reduced = models
    ids = torch.unique(cand_windows[cand_windows >= 0])  # sorted
    index = torch.searchsorted(ids, cand_windows.clamp(min=0))  # [F, c] into ids (garbage where empty)
    values = torch.full(cand_windows.shape, -math.inf, device=cand_windows.device)
    positions = torch.zeros(cand_windows.shape, dtype=torch.long, device=cand_windows.device)
    features = torch.from_numpy(result.features).to(reference.device)  # row r: SAE column features[r]
    missed = torch.zeros(cand_windows.shape, device=cand_windows.device)
    for lo in range(0, len(ids), batch_size):
        hi = min(lo + batch_size, len(ids))
        batch = [result.windows[int(i)] for i in ids[lo:hi].tolist()]
        rows, slots = ((index >= lo) & (index < hi) & (cand_windows >= 0)).nonzero(as_tuple=True)
        b = index[rows, slots] - lo
        # Only the features with a candidate in this batch: with every feature of a large SAE that is a
        # few hundred of 24,576 columns, and every dense [B, T, F] step below shrinks with it. The encode
        # is still full width, so the numbers are the same as over every column.
        need = torch.unique(rows)
        col = torch.searchsorted(need, rows)  # [P] each candidate's column among need
        cols = features[need]
        # One float32 forward for both the values (the pass's own encode, so they equal a float32 pass's)
        # and the pre-activations (SAELens' encode, whose hook shows them).
        resid = hook_activations(reference, _window_tokens(batch, n_bos, bos_id)[0].to(reference.device))
        acts, _ = _batch_activations(reference, batch, n_bos, bos_id, cols, resid)
        peak, where = acts.max(dim=1)  # [B, len(need)]; max returns the first position of the maximum
        values[rows, slots] = peak[b, col]
        positions[rows, slots] = where[b, col] - n_bos
        exact, valid = _pre_activations(reference, batch, n_bos, bos_id, cols, resid)
        rounded, _ = _pre_activations(reduced, batch, n_bos, bos_id, cols)
        error = (exact - rounded.to(exact.device)).abs().masked_fill(~valid[..., None], 0).amax(dim=1)
        missed[rows, slots] = error[b, col]
    return values, positions, missed.max(dim=1).values


def same_entries(windows_a: np.ndarray, positions_a: np.ndarray, windows_b: np.ndarray,
                  positions_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: whether two ``[F, k]`` top-k tables hold the same (window, position) set, and the same order."""
    same_order = (windows_a == windows_b).all(axis=1) & (positions_a == positions_b).all(axis=1)
    same_set = np.array([
        same_order[r] or set(zip(windows_a[r].tolist(), positions_a[r].tolist()))
        == set(zip(windows_b[r].tolist(), positions_b[r].tolist()))
        for r in range(len(windows_a))
    ], dtype=bool)
    return same_set, same_order


ROUNDING_RTOL = 1e-5  # float32's rounding between two batches is ~1e-7 relative; bfloat16's ~4e-3


def _clear_of_the_kth(windows: np.ndarray, positions: np.ndarray, values: np.ndarray, kth: float,
                      rtol: float) -> set[tuple[int, int]]:
    clear = values > kth + rtol * abs(kth) + 1e-6
    return set(zip(windows[clear].tolist(), positions[clear].tolist()))


TopK = tuple[np.ndarray, np.ndarray, np.ndarray]  # [F, k] windows, peak positions, values


def differs_beyond_rounding(a: TopK, b: TopK, rtol: float = ROUNDING_RTOL) -> np.ndarray:
    """Per row, whether two ``[F, k]`` top-k tables ``(windows, positions, values)`` differ beyond float32
    rounding: in a value (at ``rtol``), or in a (window, position) that is not tied with the k-th value.

    Two float32 passes agree only to rounding where a CPU's matmul kernels round a row's last bits by the
    batch's shape (AVX-512 ones among them). A feature that fires with one value, to 1e-6, on hundreds of
    windows then orders them by that noise; which of them fill the last places says nothing about the
    feature, so windows tied with the k-th value (within ``rtol``) are interchangeable.
    """
    va, vb = a[2], b[2]
    close = (np.abs(va - vb) <= rtol * np.maximum(np.abs(va), np.abs(vb)) + 1e-6).all(axis=1)
    out = ~close
    for f in np.flatnonzero(close):
        kth = float(min(va[f, -1], vb[f, -1]))
        out[f] = (_clear_of_the_kth(a[0][f], a[1][f], va[f], kth, rtol)
                  != _clear_of_the_kth(b[0][f], b[1][f], vb[f], kth, rtol))
    return out


# --- what the card needs ------------------------------------------------------------------------------


@torch.inference_mode()
def window_activations(
    loaded: Loaded, windows: Sequence[MinedWindow], features: Sequence[int], batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[np.ndarray]:
    """Per-token activations of ``features`` on each window, encoded again as in the pass.

    The pass keeps only each window's peak; a card that highlights every token needs the rest, for a
    handful of windows. BOS is put in front again when the SAE uses it and is not part of the output.

    Returns:
        Per window, float32 ``[len(window.tokens), len(features)]``.
    """
    n_bos = 1 if loaded.sae.prepend_bos else 0
    bos_id = getattr(loaded.model.tokenizer, "bos_token_id", None)
    cols = torch.tensor(list(features), dtype=torch.long, device=loaded.device)
    out: list[np.ndarray] = []
    for start in range(0, len(windows), batch_size):
        batch = list(windows[start : start + batch_size])
        acts, _ = _batch_activations(loaded, batch, n_bos, bos_id, cols)
        acts = acts.cpu().numpy()
        out += [acts[r, n_bos : n_bos + len(w.tokens)].copy() for r, w in enumerate(batch)]
    return out


def example_activations(loaded: Loaded, result: MiningResult, feature: int,
                        batch_size: int = DEFAULT_BATCH_SIZE) -> list[np.ndarray]:
    """Per-token activations of ``feature`` over each of its top windows: float32 ``[n_tokens]`` each."""
    windows = [ex.window for ex in result.examples(feature)]
    return [a[:, 0] for a in window_activations(loaded, windows, [feature], batch_size)]
