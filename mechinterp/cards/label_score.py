"""Does a stated label explain a feature? Specificity, sensitivity and AUROC of the label over a corpus,
with bootstrap intervals and a chance level, in one streaming pass of flat memory.

Why it exists: a card's top examples are chosen by the feature, so they always look like the label one
has in mind. Scoring the label on every token of a corpus turns "it looks like joy" into numbers that
can be wrong (Anthropic's "specificity plot": how much of the feature's activation sits on tokens the
label covers, and how many label tokens it misses):

* **Specificity**: the share of the feature's activation mass on covered tokens, and the share of its
  firings above each quartile of its non-zero activations that are on covered tokens.
* **Sensitivity**: the share of the label's occurrences on which the feature fires (on any token the
  occurrence covers), and the activation there.
* **AUROC**: covered vs other tokens, ranked by activation (0.5 = the activation says nothing).
* **95% intervals** by a Poisson bootstrap over documents: each document gets a Poisson(1) weight per
  replicate (from the seed and its index, so the weights do not depend on batching), and each replicate's
  weighted sums are kept; the document, not the token, is the unit that repeats.
* **Chance level**: the same scores for random word lists of the label's corpus frequency (single-token
  whole words, drawn after a tokenizer-only pre-pass), scored by the same accumulator in the same pass.

Every statistic comes from fixed histograms (:data:`FINE_PER_DECADE` log-spaced bins) and sums, so the
state does not grow with the corpus. The BOS position and padding are never counted (the pass encodes as
:mod:`mechinterp.cards.mining` does). AUROC counts two activations in the same fine bin as a tie; the
bound on that error is kept (``auroc_tie_bound``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mechinterp.cards.corpus import Corpus, MinedWindow, iter_windows
from mechinterp.cards.labels import Coverage, Label, Matcher, TokenText, draw_random_words, whole_word_tokens
from mechinterp.cards.mining import (
    DEFAULT_BATCH_SIZE,
    MiningOptions,
    _batch_activations,
    _Batcher,
    _window_and_bos,
)
from mechinterp.core.errors import UserError
from mechinterp.core.loading import Loaded

# Fine histogram of activations: 40 bins per decade from 1e-3 to 1e3, plus (0, 1e-3) and [1e3, inf).
# Two activations within 6% of each other share a bin; AUROC counts them as a tie.
FINE_LOW, FINE_HIGH, FINE_PER_DECADE = 1e-3, 1e3, 40
QUARTILES = (0.25, 0.5, 0.75)
CONTEXT_BEFORE, CONTEXT_AFTER = 10, 4  # tokens shown around an example
RANDOM_TOLERANCE = 0.1  # a random word list's corpus frequency is the label's within ±10%

Progress = Callable[[int, "int | None"], None]


def fine_edges() -> np.ndarray:
    """float64 inner edges ``[n]``: bin 0 is (0, edges[0]), bin i is [edges[i-1], edges[i]), the last is open."""
    decades = int(round(np.log10(FINE_HIGH / FINE_LOW)))
    return np.logspace(np.log10(FINE_LOW), np.log10(FINE_HIGH), decades * FINE_PER_DECADE + 1)


def bin_of(values: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The fine bin of each activation > 0 (zeros are counted apart)."""
    return np.searchsorted(inner, values, side="right")


# --- what is scored -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """A feature, or a family scored on its family activation (max over members of activation / scale).

    Attributes:
        name: ``"501"`` or ``"262+291"``.
        members: the feature ids; ``scales``: each member's divisor (1.0 for a single feature).
    """

    name: str
    members: tuple[int, ...]
    scales: tuple[float, ...] = (1.0,)


@dataclass
class Snippet:
    """An example shown beside the scores: a token in its context, ``[[...]]`` around it."""

    activation: float
    text: str
    doc: int
    position: int

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class LabelScore:
    """How well one label explains one feature (or family) over the corpus; BOS and padding not counted.

    Attributes:
        specificity: activation mass on covered tokens / all activation mass.
        above: per quartile q of the non-zero activations, ``(threshold, share of firings >= threshold
            on covered tokens)``; the threshold is the lower edge of the fine bin holding the quartile.
        sensitivity: occurrences where the feature fires on a covered token / occurrences.
        occurrence_quartiles: activation quartiles over the occurrences (their max; 0 where silent).
        auroc: covered vs other tokens by activation; ties within a fine bin count half;
            ``auroc_tie_bound``: the most that counting can be off from the exact AUROC.
        ci: per score, the bootstrap's 95% interval (empty without a bootstrap).
        baseline: per score, ``(median, 5th, 95th percentile)`` over the random word lists.
        hist_*: the fine histogram (non-zero activations) of covered and other tokens.
    """

    unit: str
    label: Label
    n_tokens: int
    n_covered: int
    n_fired: int
    n_covered_fired: int
    mass: float
    mass_covered: float
    specificity: float
    above: list[tuple[float, float]]
    n_occurrences: int
    n_occurrences_fired: int
    sensitivity: float
    occurrence_quartiles: list[float]
    auroc: float
    auroc_tie_bound: float
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    baseline: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    random_labels: list[tuple[str, ...]] = field(default_factory=list)
    random_occurrences: list[int] = field(default_factory=list)
    hist_edges: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hist_covered: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    hist_other: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    off_label: list[Snippet] = field(default_factory=list)
    silent: list[Snippet] = field(default_factory=list)
    n_boot: int = 0

    def __repr__(self) -> str:
        return (f"LabelScore(#{self.unit} vs {self.label.describe()!r}: specificity {self.specificity:.3f}, "
                f"sensitivity {self.sensitivity:.3f} of {self.n_occurrences:,} occurrences, AUROC {self.auroc:.3f}, "
                f"over {self.n_tokens:,} tokens)")

    def to_dict(self) -> dict:
        return {
            "unit": self.unit, "label": self.label.to_dict(), "n_tokens": self.n_tokens, "n_covered": self.n_covered,
            "n_fired": self.n_fired, "n_covered_fired": self.n_covered_fired, "mass": self.mass,
            "mass_covered": self.mass_covered, "specificity": self.specificity,
            "specificity_above_quartiles": [{"quartile": q, "threshold": t, "share": s}
                                            for q, (t, s) in zip(QUARTILES, self.above)],
            "n_occurrences": self.n_occurrences, "n_occurrences_fired": self.n_occurrences_fired,
            "sensitivity": self.sensitivity, "occurrence_activation_quartiles": self.occurrence_quartiles,
            "auroc": self.auroc, "auroc_tie_bound": self.auroc_tie_bound,
            "ci95": {k: list(v) for k, v in self.ci.items()}, "bootstrap_replicates": self.n_boot,
            "random_baseline": {k: {"median": v[0], "p5": v[1], "p95": v[2]} for k, v in self.baseline.items()},
            "random_labels": [list(w) for w in self.random_labels], "random_occurrences": self.random_occurrences,
            "off_label_firings": [s.to_dict() for s in self.off_label],
            "silent_occurrences": [s.to_dict() for s in self.silent],
        }


# --- the running sums ---------------------------------------------------------------------------------


class _Sums:
    """The running sums of one unit against many labels; ``boot`` labels also keep per-replicate sums."""

    def __init__(self, n_labels: int, n_bins: int, boot_labels: Sequence[int], n_boot: int):
        self.cov = np.zeros((n_labels, n_bins + 1), dtype=np.int64)  # bin 0: zero activations
        self.oth = np.zeros((n_labels, n_bins + 1), dtype=np.int64)
        self.mass_cov = np.zeros(n_labels)
        self.mass = 0.0
        self.occ = np.zeros(n_labels, dtype=np.int64)
        self.occ_hist = np.zeros((n_labels, n_bins + 1), dtype=np.int64)
        self.boot_labels = list(boot_labels)
        nb = len(self.boot_labels)
        self.b_cov = np.zeros((nb, n_boot, n_bins + 1))
        self.b_oth = np.zeros((nb, n_boot, n_bins + 1))
        self.b_mass_cov = np.zeros((nb, n_boot))
        self.b_mass = np.zeros(n_boot)
        self.b_occ = np.zeros((nb, n_boot))
        self.b_occ_fired = np.zeros((nb, n_boot))


def _fold(sums: _Sums, act_all: np.ndarray, keep: np.ndarray, win_all: np.ndarray, covs: list[list[Coverage]],
          weights: np.ndarray | None, n_windows: int) -> None:
    """Add one batch to a unit's sums.

    Args:
        act_all: float ``[N]`` the unit's activation on every text token of the batch's windows, in order.
        keep: bool ``[N]`` the tokens counted (False only at a BOS token inside a text).
        win_all: int ``[N]`` each token's window row in the batch.
        covs: ``covs[l][w]``: label ``l``'s coverage of window ``w`` (``offset``: where it starts in ``act_all``).
        weights: float ``[n_windows, n_boot]`` the bootstrap weight of each window's document, or None.
    """
    n_bins1 = sums.cov.shape[1]
    act, win = act_all[keep], win_all[keep]
    bins = np.zeros(len(act), dtype=np.int64)
    fired = act > 0
    bins[fired] = bins_for(act[fired])
    sums.mass += float(act.sum())
    if weights is not None:
        sums.b_mass += weights.T @ np.bincount(win, weights=act, minlength=n_windows)
    boot_of = {l: i for i, l in enumerate(sums.boot_labels)}
    for l, windows in enumerate(covs):
        covered = np.concatenate([c.covered for c in windows])[keep]
        sums.cov[l] += np.bincount(bins[covered], minlength=n_bins1)
        sums.oth[l] += np.bincount(bins[~covered], minlength=n_bins1)
        sums.mass_cov[l] += float(act[covered].sum())
        occ_max, occ_win = _occurrence_maxima(windows, act_all)
        sums.occ[l] += len(occ_max)
        if len(occ_max):
            occ_bins = np.zeros(len(occ_max), dtype=np.int64)
            occ_bins[occ_max > 0] = bins_for(occ_max[occ_max > 0])
            sums.occ_hist[l] += np.bincount(occ_bins, minlength=n_bins1)
        if weights is None or l not in boot_of:
            continue
        i = boot_of[l]
        flat = win * n_bins1 + bins
        for target, mask in ((sums.b_cov, covered), (sums.b_oth, ~covered)):
            target[i] += weights.T @ np.bincount(flat[mask], minlength=n_windows * n_bins1).reshape(n_windows, n_bins1)
        sums.b_mass_cov[i] += weights.T @ np.bincount(win[covered], weights=act[covered], minlength=n_windows)
        sums.b_occ[i] += weights.T @ np.bincount(occ_win, minlength=n_windows)
        sums.b_occ_fired[i] += weights.T @ np.bincount(occ_win[occ_max > 0], minlength=n_windows)


_INNER = fine_edges()


def bins_for(values: np.ndarray) -> np.ndarray:
    """Fine bin + 1 of each activation > 0 (bin 0 of the sums holds the zeros)."""
    return bin_of(values, _INNER) + 1


def _occurrence_maxima(windows: list[Coverage], act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each occurrence's max activation over the tokens it covers, and its window row (``act`` is flat over
    the batch's windows in order; ``Coverage.offset`` is where each window starts in it)."""
    maxima, rows = [], []
    for w, c in enumerate(windows):
        for positions in c.occurrences:
            maxima.append(float(act[c.offset + positions].max()))
            rows.append(w)
    return np.asarray(maxima, dtype=np.float64), np.asarray(rows, dtype=np.int64)


# --- scores from the sums -----------------------------------------------------------------------------


def auroc_from_hist(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """AUROC of positives over negatives from their counts per ascending bin, ties within a bin counted
    half, and the largest possible error of that against the exact AUROC (bin 0, exact zeros, are true ties).

    Returns:
        ``(auroc, bound)``; ``(nan, 0)`` when either class is empty.
    """
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan"), 0.0
    below = np.cumsum(neg) - neg
    auc = float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))
    bound = float(0.5 * (pos[1:] * neg[1:]).sum() / (n_pos * n_neg))
    return auc, bound


def _auroc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """:func:`auroc_from_hist` of each row of ``[R, bins]`` counts."""
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)


def quartile_thresholds(counts: np.ndarray) -> list[int]:
    """For each of :data:`QUARTILES`, the fine bin (of the sums, 1-based) holding that quantile of the
    non-zero activations counted in ``counts`` (bin 0, the zeros, is left out)."""
    nz = counts[1:]
    total = nz.sum()
    if total == 0:
        return [1 for _ in QUARTILES]
    cum = np.cumsum(nz)
    return [int(np.searchsorted(cum, q * total, side="left")) + 1 for q in QUARTILES]


def edge_below(b: int) -> float:
    """Lower edge of sums bin ``b`` (1 = (0, FINE_LOW))."""
    return 0.0 if b <= 1 else float(_INNER[b - 2])


def hist_quantile(counts: np.ndarray, q: float) -> float:
    """The ``q`` quantile of values counted in sums bins (bin 0 = exact zeros), log-interpolated in its bin."""
    total = counts.sum()
    if total == 0:
        return 0.0
    cum = np.cumsum(counts)
    b = int(np.searchsorted(cum, q * total, side="left"))
    if b == 0:
        return 0.0
    share = (q * total - (cum[b - 1] if b else 0)) / max(counts[b], 1)
    lo = edge_below(b)
    hi = float(_INNER[b - 1]) if b - 1 < len(_INNER) else lo * 1.06
    lo = lo if lo > 0 else hi / 10
    return float(lo * (hi / lo) ** min(max(share, 0.0), 1.0))


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def _point(s: _Sums, l: int) -> dict[str, float]:
    """The three headline scores of label ``l``."""
    occ_fired = int(s.occ[l] - s.occ_hist[l, 0])
    return {"specificity": _ratio(s.mass_cov[l], s.mass), "sensitivity": _ratio(occ_fired, s.occ[l]),
            "auroc": auroc_from_hist(s.cov[l], s.oth[l])[0]}


def _interval(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def _boot_ci(s: _Sums, i: int) -> dict[str, tuple[float, float]]:
    with np.errstate(invalid="ignore", divide="ignore"):
        spec = s.b_mass_cov[i] / s.b_mass
        sens = s.b_occ_fired[i] / s.b_occ[i]
    return {"specificity": _interval(spec), "sensitivity": _interval(sens),
            "auroc": _interval(_auroc_rows(s.b_cov[i], s.b_oth[i]))}


def _score(s: _Sums, unit: Unit, label: Label, l: int, boot_index: int | None, randoms: list[int],
           n_boot: int) -> LabelScore:
    """The :class:`LabelScore` of label ``l`` (its random lists ``randoms``) from a unit's sums."""
    cov, oth = s.cov[l], s.oth[l]
    both = cov + oth
    above = []
    for b in quartile_thresholds(both):
        above.append((edge_below(b), _ratio(float(cov[b:].sum()), float(both[b:].sum()))))
    point = _point(s, l)
    auc, bound = auroc_from_hist(cov, oth)
    baseline = {}
    if randoms:
        for name in point:
            vals = np.array([_point(s, r)[name] for r in randoms], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            baseline[name] = ((float(np.median(vals)), float(np.percentile(vals, 5)), float(np.percentile(vals, 95)))
                              if vals.size else (float("nan"),) * 3)
    return LabelScore(
        unit=unit.name, label=label, n_tokens=int(both.sum()), n_covered=int(cov.sum()),
        n_fired=int(both[1:].sum()), n_covered_fired=int(cov[1:].sum()), mass=float(s.mass),
        mass_covered=float(s.mass_cov[l]), specificity=point["specificity"], above=above,
        n_occurrences=int(s.occ[l]), n_occurrences_fired=int(s.occ[l] - s.occ_hist[l, 0]),
        sensitivity=point["sensitivity"], occurrence_quartiles=[hist_quantile(s.occ_hist[l], q) for q in QUARTILES],
        auroc=auc, auroc_tie_bound=bound, ci=_boot_ci(s, boot_index) if boot_index is not None and n_boot else {},
        baseline=baseline, n_boot=n_boot, hist_edges=np.concatenate([[0.0], _INNER, [np.inf]]),
        hist_covered=cov[1:].copy(), hist_other=oth[1:].copy(),
    )


# --- examples beside the scores --------------------------------------------------------------------------


def _priority(window_id: int, position: int) -> float:
    """A fixed pseudo-random rank of an occurrence, so the silent ones shown do not depend on batching."""
    z = (window_id * 1_000_003 + position) * 0x9E3779B97F4A7C15 % (1 << 64)
    z = (z ^ (z >> 31)) * 0xBF58476D1CE4E5B9 % (1 << 64)
    return (z >> 11) / float(1 << 53)


class _Examples:
    """The top firings off the label (highest activation) and a draw of label occurrences where the unit is
    silent (or weakest), each a bounded heap of ``k`` entries whose context text is decoded on entry."""

    def __init__(self, k: int, tokenizer: Any):
        self.k, self.tokenizer = k, tokenizer
        self.off: list[tuple[float, int, Snippet]] = []
        self.silent: list[tuple[float, float, Snippet]] = []

    def _snippet(self, window: MinedWindow, first: int, last: int, act: float) -> Snippet:
        ids = window.tokens.tolist()
        decode = self.tokenizer.decode
        before = decode(ids[max(0, first - CONTEXT_BEFORE):first])
        text = before + "[[" + decode(ids[first:last + 1]) + "]]" + decode(ids[last + 1:last + 1 + CONTEXT_AFTER])
        return Snippet(act, " ".join(text.split()), window.doc, window.start + first)

    def add(self, act: np.ndarray, keep: np.ndarray, windows: Sequence[MinedWindow], covs: list[Coverage]) -> None:
        covered = np.concatenate([c.covered for c in covs])
        offsets = np.array([c.offset for c in covs])
        candidates = np.flatnonzero((act > 0) & ~covered & keep)
        if candidates.size:
            for j in candidates[np.argsort(-act[candidates], kind="stable")[: self.k]].tolist():
                w = int(np.searchsorted(offsets, j, side="right")) - 1
                key = (float(act[j]), -(windows[w].window_id * 100_000 + j - offsets[w]))
                if len(self.off) < self.k or key > self.off[0][:2]:
                    entry = (*key, self._snippet(windows[w], j - offsets[w], j - offsets[w], float(act[j])))
                    (heapq.heappush if len(self.off) < self.k else heapq.heapreplace)(self.off, entry)
        for w, c in enumerate(covs):
            for positions, first in zip(c.occurrences, c.first):
                peak = float(act[c.offset + positions].max())
                key = (-peak, _priority(windows[w].window_id, first))
                if len(self.silent) < self.k or key > self.silent[0][:2]:
                    entry = (*key, self._snippet(windows[w], first, int(positions[-1]), peak))
                    (heapq.heappush if len(self.silent) < self.k else heapq.heapreplace)(self.silent, entry)

    def result(self) -> tuple[list[Snippet], list[Snippet]]:
        off = [e[2] for e in sorted(self.off, key=lambda e: e[:2], reverse=True)]
        silent = [e[2] for e in sorted(self.silent, key=lambda e: e[:2], reverse=True)]
        return off, silent


# --- the pass -------------------------------------------------------------------------------------------


@dataclass
class LabelPassOptions:
    """How the label pass reads the corpus and what it adds beside each score.

    Attributes:
        max_tokens: corpus tokens read (BOS not counted); None = the whole corpus.
        window: tokens per window, BOS included; None = the SAE's training context (as mining).
        n_random: random word lists per stated label (the chance level); n_boot: bootstrap replicates.
        k: examples kept of off-label firings and of silent occurrences.
    """

    max_tokens: int | None = None
    window: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    n_random: int = 20
    n_boot: int = 200
    seed: int = 0
    k: int = 5


@dataclass
class LabelPassResult:
    """Every unit's scores against its labels over ``n_tokens`` corpus tokens (BOS and padding excluded)."""

    scores: dict[str, list[LabelScore]]
    n_tokens: int
    n_windows: int
    n_documents: int
    corpus: str
    prompt_words: list[tuple[str, float]] = field(default_factory=list)

    def __repr__(self) -> str:
        first = next((s[0] for s in self.scores.values() if s), None)
        return (f"LabelPassResult({len(self.scores)} units over {self.n_tokens:,} tokens of {self.corpus}"
                + (f"; e.g. {first!r}" if first is not None else "") + ")")

    def for_unit(self, name: str) -> list[LabelScore]:
        return self.scores.get(str(name), [])


def text_length(loaded: Loaded, options: LabelPassOptions) -> tuple[int, int, int | None]:
    """Text tokens per window, BOS positions in front (0 or 1) and the BOS id: as the mining pass has them."""
    window, n_bos, bos_id = _window_and_bos(loaded, MiningOptions(features=(0,), window=options.window))
    return window - n_bos, n_bos, bos_id


def _vocab_words(tokenizer: Any, vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per token id: the whole-word token (``" happy"``) it is a case or space variant of (-1 if none), whether
    it glues onto the previous token, and whether it ends in a letter or digit (the matcher's boundary rules)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    ok = whole_word_tokens(tokenizer, vocab_size)
    spaced = {p[1:]: i for i, p in enumerate(pieces) if ok[i]}
    canonical = np.full(vocab_size + 1, -1, dtype=np.int64)  # the extra entry: "no token"
    # Byte-level BPE writes a space, newline, ... as a character in U+0100..U+0143 ("Ġ" is a letter to Python).
    def plain(c: str) -> bool:
        return c.isalnum() and not 0x100 <= ord(c) <= 0x143

    continues = np.zeros(vocab_size + 1, dtype=bool)
    ends = np.zeros(vocab_size + 1, dtype=bool)
    for i, p in enumerate(pieces):
        if not p:
            continue
        continues[i], ends[i] = plain(p[0]), plain(p[-1])
        word = p[1:] if p[0] == "\u0120" else p
        canonical[i] = spaced.get(word.lower(), -1) if word.isalpha() else -1
    return canonical, continues, ends


def count_pass(corpus: Corpus, tokenizer: Any, text_len: int, max_tokens: int | None, matchers: Sequence[Matcher],
               vocab_size: int) -> tuple[np.ndarray, list[int]]:
    """Tokenizer-only pre-pass: how often each single-token whole word occurs (``" happy"``, with ``"happy"``,
    ``" Happy"``, ``"Happy"`` counted under it, at word boundaries as the matcher has them), and each
    matcher's occurrences; flat memory (one count per vocabulary entry).

    Returns:
        ``(counts int64 [vocab] indexed by the spaced lower-case token, occurrences per matcher)``.
    """
    canonical, continues, ends = _vocab_words(tokenizer, vocab_size)
    spaced = np.array([p[:1] == "\u0120" for p in tokenizer.convert_ids_to_tokens(list(range(vocab_size)))] + [True])
    counts = np.zeros(vocab_size, dtype=np.int64)
    occurrences = [0] * len(matchers)
    for window, _, _ in iter_windows(corpus, tokenizer, text_len, max_tokens=max_tokens):
        t = window.tokens.astype(np.int64)
        nxt, prev = np.append(t[1:], vocab_size), np.insert(t[:-1], 0, vocab_size)
        word = canonical[t]
        counted = (word >= 0) & ~continues[nxt] & (spaced[t] | ~ends[prev])
        counts += np.bincount(word[counted], minlength=vocab_size)
        for i, m in enumerate(matchers):
            occurrences[i] += len(m.spans(window.tokens))
    return counts, occurrences


def random_labels(stated: Sequence[Label], occurrences: Sequence[int], counts: np.ndarray, tokenizer: Any,
                  n_random: int, seed: int) -> list[list[Label]]:
    """Per stated label, ``n_random`` lists of single-token whole words whose corpus count matches its own."""
    ok = whole_word_tokens(tokenizer, len(counts))
    ids = np.flatnonzero(ok & (counts > 0))
    words = [p[1:] for p in tokenizer.convert_ids_to_tokens(ids.tolist())]
    out = []
    for i, label in enumerate(stated):
        rng = np.random.default_rng([seed, i])
        out.append([Label(f"random {r + 1}", draw_random_words(counts, words, ids, occurrences[i], rng,
                                                               RANDOM_TOLERANCE, label.words),
                          None, label.window, "random")
                    for r in range(n_random)])
    return out


def _unit_activation(acts: np.ndarray, unit: Unit, column: dict[int, int]) -> np.ndarray:
    """A unit's activation ``[N]`` from the members' ``[N, M]``: a family's is the max of activation / scale."""
    cols = [column[m] for m in unit.members]
    if len(cols) == 1:
        return acts[:, cols[0]].astype(np.float64)
    scales = np.array([s if s > 0 else 1.0 for s in unit.scales], dtype=np.float32)
    return (acts[:, cols] / scales).max(axis=1).astype(np.float64)


def _doc_weights(docs: Sequence[int], n_boot: int, seed: int) -> np.ndarray:
    """float ``[len(docs), n_boot]`` each window's Poisson(1) bootstrap weights, fixed by (seed, document)."""
    cache: dict[int, np.ndarray] = {}
    for d in docs:
        if d not in cache:
            cache[d] = np.random.default_rng([seed, 7, d]).poisson(1.0, n_boot).astype(np.float64)
    return np.stack([cache[d] for d in docs])


@dataclass
class _Plan:
    """One unit's labels among the pass's: global indices (its stated labels first, then their random
    lists), which of them keep a bootstrap, and each stated label's random lists (local indices)."""

    labels: list[int]
    boot: list[int]
    randoms: dict[int, list[int]]


def _plans(units: Sequence[Unit], labels: dict[str, Sequence[Label]], stated: list[Label],
           randoms: list[list[Label]]) -> dict[str, _Plan]:
    starts = np.cumsum([len(stated)] + [len(r) for r in randoms]).tolist()
    plans = {}
    for u in units:
        mine = [stated.index(label) for label in labels[u.name]]
        plan = _Plan(list(mine), list(range(len(mine))), {})
        for j, g in enumerate(mine):
            plan.randoms[j] = list(range(len(plan.labels), len(plan.labels) + len(randoms[g])))
            plan.labels += range(starts[g], starts[g] + len(randoms[g]))
        plans[u.name] = plan
    return plans


def _batch_tokens(acts: np.ndarray, valid: np.ndarray, windows: Sequence[MinedWindow], n_bos: int,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The batch's text tokens flat, in window order: activations ``[N, M]``, counted ``[N]``, window row
    ``[N]``, and each window's offset ``[B]`` (BOS and padding left out here)."""
    lengths = np.array([len(w.tokens) for w in windows])
    flat = np.concatenate([acts[r, n_bos:n_bos + n] for r, n in enumerate(lengths)])
    keep = np.concatenate([valid[r, n_bos:n_bos + n] for r, n in enumerate(lengths)])
    win = np.repeat(np.arange(len(windows)), lengths)
    return flat, keep, win, np.concatenate([[0], np.cumsum(lengths)[:-1]])


def _coverages(matchers: Sequence[Matcher], windows: Sequence[MinedWindow], offsets: np.ndarray) -> list[list[Coverage]]:
    out = []
    for m in matchers:
        row = []
        for w, offset in zip(windows, offsets.tolist()):
            c = m.cover(w.tokens)
            c.offset = offset
            row.append(c)
        out.append(row)
    return out


def score_labels(loaded: Loaded, corpus: Corpus, units: Sequence[Unit], labels: dict[str, Sequence[Label]],
                 options: LabelPassOptions | None = None, progress: Progress | None = None) -> LabelPassResult:
    """Score each unit against its labels (and their random lists) in one streaming pass over ``corpus``.

    With random lists, a tokenizer-only pre-pass first counts the corpus's single-token words and each
    label's occurrences (``count_pass``), so the lists can match the label's frequency.

    Args:
        units: the features and families to score.
        labels: per unit name, the labels stated for it.

    Returns:
        A :class:`LabelPassResult`; memory stays flat in the corpus size (sums, fixed histograms, k examples).
    """
    options = options or LabelPassOptions()
    tok = loaded.model.tokenizer
    text_len, n_bos, bos_id = text_length(loaded, options)
    stated = list(dict.fromkeys(label for u in units for label in labels[u.name]))
    if not stated:
        raise UserError("no label to score")
    text = TokenText(tok)
    matchers = [Matcher(label, tok, text) for label in stated]
    randoms: list[list[Label]] = [[] for _ in stated]
    if options.n_random:
        counts, occurrences = count_pass(corpus, tok, text_len, options.max_tokens, matchers, len(tok))
        randoms = random_labels(stated, occurrences, counts, tok, options.n_random, options.seed)
        matchers += [Matcher(label, tok, text) for rs in randoms for label in rs]
    plans = _plans(units, labels, stated, randoms)
    sums = {u.name: _Sums(len(plans[u.name].labels), len(_INNER) + 1, plans[u.name].boot, options.n_boot)
            for u in units}
    examples = {(u.name, j): _Examples(options.k, tok) for u in units for j in plans[u.name].boot}
    totals = _run_pass(loaded, corpus, units, matchers, plans, sums, examples, options, text_len, n_bos, bos_id,
                       progress)
    scores = {}
    for u in units:
        plan, s = plans[u.name], sums[u.name]
        scores[u.name] = []
        for j in plan.boot:
            label = stated[plan.labels[j]]
            score = _score(s, u, label, j, j, plan.randoms[j], options.n_boot)
            score.random_labels = [matchers[plan.labels[r]].label.words for r in plan.randoms[j]]
            score.random_occurrences = [int(s.occ[r]) for r in plan.randoms[j]]
            score.off_label, score.silent = examples[(u.name, j)].result()
            scores[u.name].append(score)
    return LabelPassResult(scores, *totals, corpus.describe())


def _run_pass(loaded: Loaded, corpus: Corpus, units: Sequence[Unit], matchers: Sequence[Matcher],
              plans: dict[str, _Plan], sums: dict[str, _Sums], examples: dict[tuple[str, int], _Examples],
              options: LabelPassOptions, text_len: int, n_bos: int, bos_id: int | None,
              progress: Progress | None) -> tuple[int, int, int]:
    """The streaming loop; returns (tokens counted, windows, documents)."""
    members = sorted({m for u in units for m in u.members})
    column = {m: i for i, m in enumerate(members)}
    cols = torch.tensor(members, dtype=torch.long, device=loaded.device)
    stream = iter_windows(corpus, loaded.model.tokenizer, text_len, max_tokens=options.max_tokens)
    n_tokens = n_windows = n_documents = n_read = 0
    for batch in _Batcher(stream, options.batch_size * (text_len + n_bos), n_bos):
        windows = [w for w, _, _ in batch]
        acts, valid = _batch_activations(loaded, windows, n_bos, bos_id, cols)
        flat, keep, win, offsets = _batch_tokens(acts.cpu().numpy(), valid.cpu().numpy(), windows, n_bos)
        del acts
        covs = _coverages(matchers, windows, offsets)
        weights = _doc_weights([w.doc for w in windows], options.n_boot, options.seed) if options.n_boot else None
        for u in units:
            act = _unit_activation(flat, u, column)
            plan = plans[u.name]
            _fold(sums[u.name], act, keep, win, [covs[g] for g in plan.labels], weights, len(windows))
            for j in plan.boot:
                examples[(u.name, j)].add(act, keep, windows, covs[plan.labels[j]])
        n_tokens += int(keep.sum())
        n_read += len(keep)
        n_windows += len(windows)
        n_documents = windows[-1].doc + 1
        if progress is not None:
            progress(n_read, options.max_tokens)
    return n_tokens, n_windows, n_documents
