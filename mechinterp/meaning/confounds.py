"""Meanings that survive confounds: telling a concept feature from a length, position or stray-word difference.

Chapter 2 finds features whose per-prompt activation differs between a group of prompts and its
baseline, and replicates them on held-out prompts. A difference is not a meaning, though: hand-written
prompt sets differ in more than the concept (length, sentence structure, extra words, punctuation),
and a held-out split cannot catch a *systematic* difference. This module asks, for every significant,
replicated feature, where its difference comes from, and answers with exactly one verdict:

* ``concept``: it peaks on several different words that mark the group (most of its peaks are on
  them), still separates the prompts that use none of its top words, and survives the length, token
  and position controls;
* ``lexical``: one token type carries it: most of its peaks are on that token, conditioning on the
  token removes the difference, and putting the token into baseline prompts reproduces the difference
  (the falsification test of arXiv 2601.05679; the token replaces a word, so length and positions
  stay the same);
* ``positional``: its peaks sit at one absolute position, and prompts with its top token at the same
  position (or prompts that all reach that position) do not differ between the sets;
* ``length``: it rises or falls with prompt length within the sets, the sets differ in length, and
  the difference does not survive among prompts of equal length;
* ``context``: anything else; typically it peaks on tokens the baseline has as well (``' and'``,
  ``'.'``), more often or more strongly in the group, and does not pass the concept tests.

The controls are stratified re-tests: the group difference is measured again *within* strata of a
possible confound (equal token length; with / without the top token; the top token at the same
position; reaching the peak position or not). A control is *survived* when at least half of the
effect (AUROC - 0.5) remains and is significant within strata, and *explains* the difference when
less than half remains and (given enough prompts in strata that hold both sets) it is no longer
significant. Typical signatures: an inserted word shifts every later token by one, so a ' the'
detector locked to position 10 fires at 10 in baseline prompts and not at 11 in the group; among
prompts with ' the' at the same position the sets agree (positional). A '!' feature is carried by
one token type: with and without '!' the sets agree, and '!' put into baseline prompts makes them fire
(lexical). A length feature correlates with length within both sets and agrees among prompts of
equal length (length).

It also checks the *design* before any feature is looked at: whether the two prompt sets differ in
token length, in stray tokens and in sentence-final punctuation.

Everything here is numpy/scipy on small per-prompt summaries; the model is reached only through an
``encode`` callable for the token-injection test, so the module is testable with a fake encoder.

Inputs (all BOS-free; "position" is the index among a prompt's text tokens, 0 = first token after BOS):

* :class:`TokenizedPrompts`: per prompt its text, text-token ids and token strings;
* :class:`FeatureActivity`: per prompt and feature the statistic Chapter 2 tested (max or mean over
  text tokens) and the position of the feature's maximum (its *peak*), -1 where it did not fire.

The statistics, each tested against a reference in ``tests/test_confounds.py``:

* **van Elteren's stratified Mann-Whitney test** (:func:`van_elteren`): rank sums within strata,
  weighted by 1 / (stratum size + 1), normal approximation with the exact tie-corrected
  permutation variance and no continuity correction; one stratum gives exactly
  ``scipy.stats.mannwhitneyu(method="asymptotic", use_continuity=False)``.
* **within-group rank correlation** with length (:func:`within_group_rank_correlation`): Spearman's
  correlation of within-group normalised ranks (the group offset removed), t-test on n - 1 - groups
  degrees of freedom; one group gives exactly ``scipy.stats.spearmanr``.
* **one-sided Fisher exact test** for tokens over-represented in one set (:func:`fisher_greater`).
* **Wilcoxon signed-rank test** for paired designs (:func:`wilcoxon_signed_rank`), exactly
  ``scipy.stats.wilcoxon(zero_method="wilcox", correction=True, method="asymptotic")``.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Protocol

import numpy as np
from scipy import stats as sps

from mechinterp.meaning.stats import benjamini_hochberg, mann_whitney

CONCEPT = "concept"
LEXICAL = "lexical"
POSITIONAL = "positional"
LENGTH = "length"
CONTEXT = "context"
VERDICTS = (CONCEPT, LEXICAL, POSITIONAL, LENGTH, CONTEXT)

# Outcomes of a controlled re-test (a stratified test compared with the unstratified one).
SURVIVES = "survives"  # the difference keeps >= half its size within strata and is significant there
VANISHES = "vanishes"  # less than half of the difference is left and it is no longer significant
WEAKENED = "weakened"  # less than half is left but it is still significant (large prompt sets)
INCONCLUSIVE = "inconclusive"  # too few prompts in strata that hold both sets to tell

# One (per-prompt statistic) encoder for the injection test: texts and feature ids in,
# ``[len(texts), len(features)]`` values out, computed exactly like FeatureActivity.value.
Encoder = Callable[[list[str], np.ndarray], np.ndarray]

_TRAILING_PUNCT = re.compile(r"[^\w\s]+$")
# A token that holds only part of a character is labelled "text[j/n]" (mechinterp.core.tokens.decode_tokens):
# its label is not text that could be typed into a prompt.
_PIECE_LABEL = re.compile(r"\[\d/\d\]$")


@dataclass(frozen=True)
class ConfoundSettings:
    """Thresholds of the design checks, controls and verdicts; the defaults are tuned for 30-60
    prompts per set (see each comment for why)."""

    # Controls re-test single, already selected features, so a nominal level is right (no FDR).
    # A difference "vanishes" only when it is no longer significant at alpha ...
    alpha: float = 0.05
    # ... and it "survives" a control only at p < 0.01: survival rules a confound *out*, and at 0.05
    # one length or position artefact in 40 would be waved through by chance alone.
    survive_p: float = 0.01
    # A control "explains" a difference when less than this share of the effect (AUROC - 0.5) is
    # left within its strata: more than half the difference is then due to the confound.
    retained: float = 0.5
    # "Vanishes" needs this many prompts of *each* set in strata that hold both sets: with fewer,
    # a real difference (AUROC 0.8) would look halved by chance too often (sd of AUROC ~0.1 at 8 v 8).
    min_informative: int = 8
    # A feature is position-locked when this share of its firing prompts (on the higher side) peak
    # at one absolute position; concept words in free text rarely share one position this often.
    position_share: float = 0.6
    # Within-group length correlation that can *block* a concept verdict is held to 0.01: one
    # spurious correlation per hundred features should not cost a real concept its verdict.
    length_corr_p: float = 0.01
    # Design check: warn about token length when Mann-Whitney p < 0.01 *and* AUROC is >= 0.1 away
    # from 0.5 (a one-token shift of sentences with sd ~1.5 tokens gives ~0.68; big sets alone
    # should not trigger a warning about a tenth of a token).
    length_warn_p: float = 0.01
    length_warn_auroc: float = 0.1
    # Design check: a sentence ending whose share differs at Fisher p < 0.01 is reported.
    ending_warn_p: float = 0.01
    # Design check: stray tokens are warned about at BH q < 0.05 over all token types; single concept
    # words (each in a few prompts) do not reach this, systematic extra words do.
    token_warn_q: float = 0.05
    # "Fires on several different tokens that separate the groups": >= 3 distinct peak tokens, each
    # found in over twice the share of the higher side's prompts as of the other side's, and together
    # holding >= half of the higher side's peaks (a feature that peaks anywhere also peaks, now and
    # then, on the group's stray words; a concept feature peaks on its words most of the time).
    min_separating: int = 3
    separating_ratio: float = 2.0
    separating_share: float = 0.5
    # Generalisation: drop the feature's top distinctive words (those covering half of its
    # distinctive peaks); the prompts left, which use only other words, must still separate with
    # AUROC >= 0.7 and p < alpha, on >= 5 prompts per side (a concept has more than one word).
    generalisation_cover: float = 0.5
    generalisation_min: int = 5
    generalisation_auroc: float = 0.7
    # "One token type carries it": the feature peaks on that token in at least half of its firing
    # prompts of the higher set (a position feature peaks on whatever token sits there).
    lexical_share: float = 0.5
    # Injection: the token alone must close at least half the gap between the sets.
    injection_reproduces: float = 0.5
    # Which features get the (model-running) injection test: "candidates" = those a token may
    # carry (not concept, token control not survived); "all"; or "none".
    injection: str = "candidates"
    # Peak tokens listed per feature in the evidence.
    top_tokens: int = 8

    def __post_init__(self) -> None:
        for name in ("alpha", "survive_p", "lexical_share", "retained", "length_corr_p", "length_warn_p",
                     "ending_warn_p", "token_warn_q", "generalisation_cover", "injection_reproduces",
                     "position_share", "separating_share"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.injection not in ("candidates", "all", "none"):
            raise ValueError(f"injection must be 'candidates', 'all' or 'none', got {self.injection!r}")
        if not 0.5 < self.generalisation_auroc <= 1.0:
            raise ValueError("generalisation_auroc must be in (0.5, 1]")


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class TokenizedPrompts:
    """The prompts of one set as the model saw them, BOS excluded.

    Attributes:
        texts: the prompt texts, ``[n_prompts]``.
        ids: per prompt its text-token ids, ``[n_tokens_i]`` int (no BOS, no padding).
        strs: per prompt its token strings, each id decoded on its own (e.g. ``' the'``, ``'!'``).
    """

    texts: list[str]
    ids: list[np.ndarray]
    strs: list[list[str]]

    def __post_init__(self) -> None:
        if not len(self.texts) == len(self.ids) == len(self.strs):
            raise ValueError(
                f"texts, ids and strs differ in length: {len(self.texts)}, {len(self.ids)}, {len(self.strs)}"
            )
        self.ids = [np.asarray(i, dtype=np.int64).reshape(-1) for i in self.ids]
        self.strs = [list(s) for s in self.strs]
        for i, (ids, strs) in enumerate(zip(self.ids, self.strs)):
            if len(ids) == 0:
                raise ValueError(f"prompt {i} ({self.texts[i]!r}) has no text tokens")
            if len(ids) != len(strs):
                raise ValueError(f"prompt {i}: {len(ids)} ids but {len(strs)} token strings")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def lengths(self) -> np.ndarray:
        """``[n_prompts]`` number of text tokens per prompt."""
        return np.array([len(i) for i in self.ids], dtype=np.int64)

    def token_matrix(self) -> np.ndarray:
        """``[n_prompts, longest]`` token ids, right-padded with -1."""
        out = np.full((len(self), int(self.lengths.max())), -1, dtype=np.int64)
        for r, ids in enumerate(self.ids):
            out[r, : len(ids)] = ids
        return out


class _SummaryRow(Protocol):
    idx: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    peak: np.ndarray


@dataclass
class FeatureActivity:
    """Per-prompt summaries of the features to judge, for one prompt set.

    Attributes:
        features: ``[n_features]`` feature ids.
        value: ``[n_prompts, n_features]`` the per-prompt statistic Chapter 2 tested (max or mean over
            the text tokens); 0 where the feature did not fire.
        peak: ``[n_prompts, n_features]`` int, position (text-token index, 0 = first token after BOS)
            of the feature's maximum in the prompt (first one on ties), -1 where it did not fire.
    """

    features: np.ndarray
    value: np.ndarray
    peak: np.ndarray

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.int64).reshape(-1)
        self.value = np.asarray(self.value, dtype=np.float64)
        self.peak = np.asarray(self.peak, dtype=np.int64)
        shape = (self.value.shape[0], len(self.features))
        if self.value.shape != shape or self.peak.shape != shape:
            raise ValueError(f"value {self.value.shape} and peak {self.peak.shape} must both be {shape}")
        if np.any((self.value > 0) & (self.peak < 0)) or np.any((self.peak < 0) & (self.value != 0)):
            raise ValueError("peak must be -1 exactly where the feature did not fire (value 0)")

    @classmethod
    def from_rows(cls, rows: Sequence[_SummaryRow], features: np.ndarray, agg: str = "max") -> FeatureActivity:
        """Dense summaries of ``features`` from Chapter 2's sparse per-prompt rows.

        Each row needs ``idx`` (fired feature ids), ``max``/``mean`` and ``peak`` (argmax position per
        fired feature), all parallel arrays; ``agg`` picks the tested statistic.
        """
        features = np.asarray(features, dtype=np.int64)
        order = np.argsort(features)
        sorted_f = features[order]
        value = np.zeros((len(rows), len(features)))
        peak = np.full((len(rows), len(features)), -1, dtype=np.int64)
        for r, row in enumerate(rows):
            idx = np.asarray(row.idx, dtype=np.int64)
            at = np.minimum(np.searchsorted(sorted_f, idx), max(len(features) - 1, 0))
            hit = (sorted_f[at] == idx) & (np.asarray(row.max) > 0) if len(features) else np.zeros(len(idx), bool)
            cols = order[at[hit]]
            value[r, cols] = np.asarray(getattr(row, agg))[hit]
            peak[r, cols] = np.asarray(row.peak)[hit]
        return cls(features, value, peak)


# --------------------------------------------------------------------------------------------------
# Statistics (vectorised over features)


@dataclass
class StratifiedTest:
    """van Elteren's test per feature: group vs baseline within strata, ``[n_features]`` arrays."""

    z: np.ndarray  # > 0 when the group ranks higher
    p_value: np.ndarray  # two-sided, normal approximation
    auroc: np.ndarray  # weighted within-stratum AUROC of group over baseline; nan without informative strata
    n_informative_group: np.ndarray  # group prompts in strata that also hold baseline prompts
    n_informative_baseline: np.ndarray
    n_strata: np.ndarray  # informative strata


def van_elteren(values: np.ndarray, in_group: np.ndarray, strata: np.ndarray) -> StratifiedTest:
    """Stratified Mann-Whitney test (van Elteren 1960), vectorised over features.

    Within each stratum s the group's rank sum W_s (midranks for ties) has permutation mean
    m_s (N_s + 1) / 2 and variance m_s n_s / 12 * (N_s + 1 - sum(t^3 - t) / (N_s (N_s - 1))). The
    statistic sums w_s (W_s - E W_s) with w_s = 1 / (N_s + 1) (locally most powerful for shift
    alternatives); z = T / sqrt(sum w_s^2 Var W_s), two-sided normal p, no continuity correction.
    Strata holding only one set carry no information and drop out.

    Args:
        values: ``[n_prompts, n_features]`` (or ``[n_prompts]``) per-prompt statistics, both sets stacked.
        in_group: ``[n_prompts]`` bool, True for group prompts, False for baseline prompts.
        strata: ``[n_prompts]`` stratum labels shared by all features, or ``[n_prompts, n_features]``
            labels per feature (any integers).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n, n_feat = x.shape
    g = np.asarray(in_group, dtype=bool)
    s_raw = np.asarray(strata)
    if s_raw.ndim == 1:
        s_raw = np.broadcast_to(s_raw[:, None], (n, n_feat))
    if g.shape != (n,) or s_raw.shape != (n, n_feat):
        raise ValueError(f"in_group {g.shape} and strata {s_raw.shape} do not match values {x.shape}")
    s = (sps.rankdata(s_raw, method="dense", axis=0) - 1).astype(np.int64)  # 0..S-1 per column
    n_strata = int(s.max()) + 1 if n else 1
    # Midranks within each stratum, for all columns at once: rank a composite (stratum, value) key,
    # then subtract the number of prompts in lower strata.
    key = s * (n + 1) + sps.rankdata(x, method="dense", axis=0).astype(np.int64)
    rank = sps.rankdata(key, method="average", axis=0) - (sps.rankdata(s, method="min", axis=0) - 1)
    tie = sps.rankdata(key, method="max", axis=0) - sps.rankdata(key, method="min", axis=0) + 1.0
    flat = (np.arange(n_feat)[None, :] * n_strata + s).ravel()
    size = n_feat * n_strata

    def per_stratum(weights: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=np.broadcast_to(weights, (n, n_feat)).ravel(), minlength=size).reshape(
            n_feat, n_strata
        )

    big_n = per_stratum(np.ones((n, 1)))
    m = per_stratum(g[:, None].astype(np.float64))
    w_sum = per_stratum(rank * g[:, None])
    ties = per_stratum(tie * tie - 1.0)  # sum over tie groups of t^3 - t
    nb = big_n - m
    informative = (m > 0) & (nb > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(
            informative, m * nb / 12.0 * ((big_n + 1) - ties / np.maximum(big_n * (big_n - 1), 1)), 0.0
        )
        w = 1.0 / (big_n + 1.0)
        t_stat = (w * np.where(informative, w_sum - m * (big_n + 1) / 2.0, 0.0)).sum(axis=1)
        var_t = (w * w * var).sum(axis=1)
        z = np.where(var_t > 0, t_stat / np.sqrt(var_t), 0.0)
        u = w_sum - m * (m + 1) / 2.0
        denom = (w * m * nb * informative).sum(axis=1)
        auroc = np.where(denom > 0, (w * u * informative).sum(axis=1) / denom, np.nan)
    p = np.where(var_t > 0, np.clip(2.0 * sps.norm.sf(np.abs(z)), 0.0, 1.0), 1.0)
    return StratifiedTest(
        z=z, p_value=p, auroc=auroc,
        n_informative_group=(m * informative).sum(axis=1).astype(np.int64),
        n_informative_baseline=(nb * informative).sum(axis=1).astype(np.int64),
        n_strata=informative.sum(axis=1).astype(np.int64),
    )


def within_group_rank_correlation(
    values: np.ndarray, covariate: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rank correlation of each feature with a covariate (e.g. length) *within* groups, pooled.

    Values and covariate are ranked within each group (midranks), divided by (group size + 1) so
    that groups of different sizes weigh per prompt, and centred per group; r is the correlation of
    these, tested with t = r sqrt(df / (1 - r^2)) on df = n - 1 - (number of groups). For one group
    this is exactly Spearman's rho with scipy's p-value; for several it is the partial rank
    correlation with the group removed, so a group difference alone cannot create a correlation.

    Args:
        values: ``[n_prompts, n_features]`` per-prompt statistics.
        covariate: ``[n_prompts]``.
        groups: ``[n_prompts]`` group labels.

    Returns:
        ``(r, p)``, each ``[n_features]``; r = 0 and p = 1 where a feature is constant within every group.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    c = np.asarray(covariate, dtype=np.float64)
    labels = np.asarray(groups)
    xr = np.zeros_like(x)
    cr = np.zeros_like(c)
    uniq = np.unique(labels)
    for lab in uniq:
        rows = labels == lab
        k = rows.sum()
        rx = sps.rankdata(x[rows], axis=0) / (k + 1.0)
        rc = sps.rankdata(c[rows]) / (k + 1.0)
        xr[rows] = rx - rx.mean(axis=0)
        cr[rows] = rc - rc.mean()
    sxx = (xr * xr).sum(axis=0)
    scc = float((cr * cr).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where((sxx > 0) & (scc > 0), (xr * cr[:, None]).sum(axis=0) / np.sqrt(sxx * scc), 0.0)
    r = np.clip(r, -1.0, 1.0)
    df = len(c) - 1 - len(uniq)
    if df < 1:
        return r, np.ones_like(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * np.sqrt(df / np.maximum(1.0 - r * r, 1e-300))
    p = np.where(np.abs(r) < 1.0, 2.0 * sps.t.sf(np.abs(t), df), 0.0)
    return r, np.where((sxx > 0) & (scc > 0), p, 1.0)


def fisher_greater(k_a: np.ndarray, n_a: int, k_b: np.ndarray, n_b: int) -> np.ndarray:
    """One-sided Fisher exact p that set A holds the token in a larger share of its prompts than set B.

    ``k_a`` of ``n_a`` prompts of A and ``k_b`` of ``n_b`` of B contain it; p = P(X >= k_a) for X
    hypergeometric (the table's margins fixed), exactly ``scipy.stats.fisher_exact(..., "greater")``.
    """
    k_a = np.asarray(k_a)
    k_b = np.asarray(k_b)
    return sps.hypergeom.sf(k_a - 1, n_a + n_b, k_a + k_b, n_a)


@dataclass
class WilcoxonResult:
    """Paired group-minus-baseline comparison per feature, ``[n_features]`` arrays."""

    r_plus: np.ndarray  # rank sum of positive differences (group higher)
    r_minus: np.ndarray
    n_nonzero: np.ndarray  # pairs with a non-zero difference (zero differences are dropped)
    z: np.ndarray  # > 0 when the group is higher; continuity-corrected
    p_value: np.ndarray  # two-sided; 1 where every difference is zero
    rank_biserial: np.ndarray  # (r_plus - r_minus) / (r_plus + r_minus), in [-1, 1]


def wilcoxon_signed_rank(x: np.ndarray, y: np.ndarray) -> WilcoxonResult:
    """Wilcoxon signed-rank test of paired ``x - y`` per column.

    Matches ``scipy.stats.wilcoxon(x, y, zero_method="wilcox", correction=True, method="asymptotic")``:
    zero differences are dropped (a feature silent in both prompts of a pair says nothing about it),
    tied |differences| get midranks and the variance their tie correction, and z carries a 0.5
    continuity correction. scipy's default ``method="auto"`` would switch to an exact or permutation
    p-value for small samples, which cannot be vectorised over thousands of features.

    Args:
        x: ``[n_pairs, n_features]`` (group line i).
        y: ``[n_pairs, n_features]`` (baseline line i).
    """
    d = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    if d.ndim == 1:
        d = d[:, None]
    zero = d == 0
    n_zero = zero.sum(axis=0)
    count = (d.shape[0] - n_zero).astype(np.float64)
    a = np.where(zero, np.inf, np.abs(d))  # zeros rank last and are then ignored
    ranks = sps.rankdata(a, axis=0)
    r_plus = (ranks * (d > 0)).sum(axis=0)
    r_minus = (ranks * (d < 0)).sum(axis=0)
    # Sum over tie groups of non-zero |d| of t^3 - t, as the sum over their members of t^2 - 1.
    t = sps.rankdata(a, method="max", axis=0) - sps.rankdata(a, method="min", axis=0) + 1.0
    ties = np.where(zero, 0.0, t * t - 1.0).sum(axis=0)
    mean = count * (count + 1) / 4.0
    se = np.sqrt(np.maximum(count * (count + 1) * (2 * count + 1) - ties / 2.0, 0.0) / 24.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (r_plus - mean) / se
        z = z - np.sign(z) * 0.5 / se
        rb = np.where(r_plus + r_minus > 0, (r_plus - r_minus) / (r_plus + r_minus), 0.0)
    ok = se > 0
    z = np.where(ok, z, 0.0)
    p = np.where(ok, np.clip(2.0 * sps.norm.sf(np.abs(z)), 0.0, 1.0), 1.0)
    return WilcoxonResult(r_plus, r_minus, count.astype(np.int64), z, p, rb)


def _auroc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``[n_features]`` AUROC of x over y (ties count half), via the Mann-Whitney U."""
    u, _ = mann_whitney(np.atleast_2d(x.T).T, np.atleast_2d(y.T).T)
    return u / (x.shape[0] * y.shape[0])


# --------------------------------------------------------------------------------------------------
# Design checks


@dataclass
class LengthCheck:
    """Token lengths of the two sets and the test of their difference."""

    test: str  # "Mann-Whitney" or "Wilcoxon signed-rank" (paired)
    mean_group: float
    mean_baseline: float
    median_group: float
    median_baseline: float
    auroc: float  # P(group prompt longer than baseline prompt), ties half
    effect_size: float  # rank-biserial: 2 * auroc - 1, or for pairs (r+ - r-) / (r+ + r-) of the differences
    p_value: float
    differs: bool


@dataclass
class TokenCount:
    """One token type's presence in the two sets."""

    token: str
    token_id: int
    prompts_group: int  # prompts containing it
    prompts_baseline: int
    count_group: int  # occurrences
    count_baseline: int
    more_in: str  # "group" or "baseline"
    p_value: float  # one-sided Fisher exact, in the direction of more_in
    q_value: float  # Benjamini-Hochberg over all token types, per direction


@dataclass
class EndingCount:
    """How many prompts of each set end with one kind of sentence-final punctuation."""

    ending: str  # e.g. ".", "!", "?!", or "none"
    group: int
    baseline: int
    p_value: float  # two-sided Fisher exact: share of this ending, group vs baseline


@dataclass
class PairDiff:
    """Tokens that differ between line i of the group and line i of the baseline (paired designs)."""

    line: int  # 0-based
    only_group: list[str]
    only_baseline: list[str]


@dataclass
class DesignReport:
    """How two prompt sets differ besides the concept, before any feature is looked at."""

    group: str
    baseline: str
    n_group: int
    n_baseline: int
    length: LengthCheck
    tokens: list[TokenCount]  # p < alpha in either direction, strongest first
    endings: list[EndingCount]
    pairs: list[PairDiff] | None  # paired designs only
    warnings: list[str] = field(default_factory=list)

    TOKEN_HEADER: ClassVar[list[str]] = ["group", "baseline", "token", "token_id", "prompts_group", "prompts_baseline",
                    "count_group", "count_baseline", "more_in", "p_value", "q_value"]
    ENDING_HEADER: ClassVar[list[str]] = ["group", "baseline", "ending", "prompts_group", "prompts_baseline", "p_value"]
    LENGTH_HEADER: ClassVar[list[str]] = [
        "group", "baseline", "test", "mean_group", "mean_baseline", "median_group", "median_baseline", "auroc",
        "effect_size", "p_value", "differs",
    ]
    PAIR_HEADER: ClassVar[list[str]] = ["group", "baseline", "line", "only_in_group", "only_in_baseline"]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def length_rows(self) -> list[list[object]]:
        n = self.length
        return [[self.group, self.baseline, n.test, _r(n.mean_group), _r(n.mean_baseline), n.median_group,
                 n.median_baseline, _r(n.auroc), _r(n.effect_size), _g(n.p_value), "yes" if n.differs else "no"]]

    def token_rows(self) -> list[list[object]]:
        return [[self.group, self.baseline, t.token, t.token_id, t.prompts_group, t.prompts_baseline,
                 t.count_group, t.count_baseline, t.more_in, _g(t.p_value), _g(t.q_value)] for t in self.tokens]

    def ending_rows(self) -> list[list[object]]:
        return [[self.group, self.baseline, e.ending, e.group, e.baseline, _g(e.p_value)] for e in self.endings]

    def pair_rows(self) -> list[list[object]]:
        return [[self.group, self.baseline, d.line + 1, " ".join(map(repr, d.only_group)),
                 " ".join(map(repr, d.only_baseline))] for d in (self.pairs or [])]

    def summary_lines(self) -> list[str]:
        """A short "your prompt sets differ in ..." section, for the script to print."""
        if not self.warnings:
            return [(f"{self.group} vs {self.baseline}: no difference in token length, sentence endings or "
                     f"stray tokens was flagged")]
        return [f"{self.group} vs {self.baseline}: your prompt sets differ in"] + [f"  - {w}" for w in self.warnings]


def _ending(text: str) -> str:
    m = _TRAILING_PUNCT.search(text.rstrip())
    return m.group(0) if m else "none"


def _vocabulary(*sets: TokenizedPrompts) -> tuple[dict[int, int], list[int], list[str]]:
    """Token id -> column, and per column its id and string (first spelling seen)."""
    col: dict[int, int] = {}
    ids: list[int] = []
    strs: list[str] = []
    for tp in sets:
        for row_ids, row_strs in zip(tp.ids, tp.strs):
            for t, s in zip(row_ids.tolist(), row_strs):
                if t not in col:
                    col[t] = len(ids)
                    ids.append(t)
                    strs.append(s)
    return col, ids, strs


def _counts(tp: TokenizedPrompts, col: dict[int, int]) -> np.ndarray:
    """``[n_prompts, vocab]`` occurrences of each token type per prompt."""
    out = np.zeros((len(tp), len(col)), dtype=np.int64)
    for r, row in enumerate(tp.ids):
        np.add.at(out[r], [col[t] for t in row.tolist()], 1)
    return out


def pair_differences(group: TokenizedPrompts, baseline: TokenizedPrompts) -> list[PairDiff]:
    """For each line pair, the tokens only in the group line and only in the baseline line (an
    alignment of the two token sequences, so a token moved by an insertion does not count)."""
    if len(group) != len(baseline):
        raise ValueError(f"paired sets need equal sizes, got {len(group)} and {len(baseline)}")
    out = []
    for i, (a, b) in enumerate(zip(baseline.strs, group.strs)):
        only_g: list[str] = []
        only_b: list[str] = []
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
            if op != "equal":
                only_b += a[i1:i2]
                only_g += b[j1:j2]
        out.append(PairDiff(i, only_g, only_b))
    return out


def check_design(
    group: TokenizedPrompts,
    baseline: TokenizedPrompts,
    group_name: str = "group",
    baseline_name: str = "baseline",
    paired: bool = False,
    settings: ConfoundSettings | None = None,
) -> DesignReport:
    """Compare two prompt sets in token length, token content and sentence-final punctuation.

    Args:
        group, baseline: the two sets' text tokens (BOS excluded).
        paired: line i of the group belongs with line i of the baseline (then lengths are compared
            with the Wilcoxon signed-rank test, and every pair's differing tokens are listed).
    """
    s = settings or ConfoundSettings()
    ng, nb = len(group), len(baseline)
    lg, lb = group.lengths.astype(np.float64), baseline.lengths.astype(np.float64)
    auroc = float(_auroc(lg[:, None], lb[:, None])[0])
    if paired:
        if ng != nb:
            raise ValueError(f"paired sets need equal sizes, got {ng} and {nb}")
        w = wilcoxon_signed_rank(lg[:, None], lb[:, None])
        p_len, effect, test = float(w.p_value[0]), float(w.rank_biserial[0]), "Wilcoxon signed-rank"
    else:
        p_len, effect, test = float(mann_whitney(lg[:, None], lb[:, None])[1][0]), 2.0 * auroc - 1.0, "Mann-Whitney"
    differs = p_len < s.length_warn_p and abs(effect) >= 2.0 * s.length_warn_auroc
    length = LengthCheck(test, float(lg.mean()), float(lb.mean()), float(np.median(lg)), float(np.median(lb)),
                         auroc, effect, p_len, bool(differs))
    warnings = []
    if differs:
        longer = group_name if lg.mean() > lb.mean() else baseline_name
        warnings.append(
            f"token length: {longer} prompts are longer (mean {lg.mean():.1f} vs {lb.mean():.1f} tokens, "
            f"{test} p = {p_len:.2g}); features can differ through length or position alone"
        )

    col, ids, strs = _vocabulary(group, baseline)
    cg, cb = _counts(group, col), _counts(baseline, col)
    kg, kb = (cg > 0).sum(axis=0), (cb > 0).sum(axis=0)
    p_up, p_down = fisher_greater(kg, ng, kb, nb), fisher_greater(kb, nb, kg, ng)
    q_up, q_down = benjamini_hochberg(p_up), benjamini_hochberg(p_down)
    tokens = []
    for j in range(len(ids)):
        up = kg[j] / ng >= kb[j] / nb
        p, q = (p_up[j], q_up[j]) if up else (p_down[j], q_down[j])
        if p < s.alpha:
            tokens.append(TokenCount(
                strs[j], ids[j], int(kg[j]), int(kb[j]), int(cg[:, j].sum()), int(cb[:, j].sum()),
                "group" if up else "baseline", float(p), float(q),
            ))
    tokens.sort(key=lambda t: (t.p_value, -(t.prompts_group + t.prompts_baseline), t.token_id))
    for side, name, other in (("group", group_name, baseline_name), ("baseline", baseline_name, group_name)):
        flagged = [t for t in tokens if t.more_in == side and t.q_value < s.token_warn_q]
        if flagged:
            shown = ", ".join(
                f"{t.token!r} ({t.prompts_group if side == 'group' else t.prompts_baseline} vs "
                f"{t.prompts_baseline if side == 'group' else t.prompts_group})" for t in flagged[:8]
            )
            warnings.append(f"tokens more common in {name} than in {other} prompts (prompts with it): {shown}"
                            + (" ..." if len(flagged) > 8 else ""))

    eg = Counter(_ending(t) for t in group.texts)
    eb = Counter(_ending(t) for t in baseline.texts)
    endings = []
    for ending in sorted(set(eg) | set(eb), key=lambda e: -(eg[e] + eb[e])):
        table = [[eg[ending], ng - eg[ending]], [eb[ending], nb - eb[ending]]]
        p = float(sps.fisher_exact(table).pvalue)
        endings.append(EndingCount(ending, eg[ending], eb[ending], p))
        if p < s.ending_warn_p:
            warnings.append(f"sentence endings: {ending!r} ends {eg[ending]} of {ng} {group_name} and "
                            f"{eb[ending]} of {nb} {baseline_name} prompts (Fisher p = {p:.2g})")

    pairs = pair_differences(group, baseline) if paired else None
    if pairs is not None:
        # A token added in a fifth of the pairs is systematic, not the varied wording of a concept.
        extra = Counter(t for d in pairs for t in set(d.only_group))
        common = [f"{t!r} in {c}" for t, c in extra.most_common(5) if c >= max(2, 0.2 * len(pairs))]
        if common:
            warnings.append(f"paired lines: {group_name} lines add the same token to many pairs ("
                            + ", ".join(common) + f" of {len(pairs)} pairs)")
    return DesignReport(group_name, baseline_name, ng, nb, length, tokens, endings, pairs, warnings)


# --------------------------------------------------------------------------------------------------
# Feature evidence, controls and verdicts


@dataclass
class PeakToken:
    """A token a feature peaks on: in how many firing prompts of each set, and how common it is."""

    token: str
    token_id: int
    peaks_group: int  # group prompts whose peak is on this token
    peaks_baseline: int
    prompts_group: int  # group prompts containing the token at all
    prompts_baseline: int


@dataclass
class FeatureEvidence:
    """Where a feature's difference comes from, described (no verdict yet)."""

    feature: int
    direction: str  # "up" (group higher) or "down"
    auroc: float  # group over baseline, on the prompts given
    fired_group: int
    fired_baseline: int
    peak_tokens: list[PeakToken]  # most frequent peak tokens of the higher set first
    n_peak_types: int  # distinct peak tokens in the higher set
    separating_tokens: list[str]  # peak tokens that mark the higher set (> ratio x the other's share of prompts)
    separating_share: float  # share of the higher set's firing prompts that peak on one of them
    top_token: str  # most frequent peak token of the higher set
    top_token_id: int
    top_token_share: float  # of the higher set's firing prompts
    peak_position: int  # most frequent peak position in the higher set (0 = first text token)
    position_share_group: float  # share of firing group prompts peaking at peak_position
    position_share_baseline: float
    length_r: float  # rank correlation with token length within groups
    length_p: float
    length_explains: bool  # lengths differ and the correlation points the way of the difference


@dataclass
class ControlTest:
    """One controlled re-test: the group difference within strata of a possible confound."""

    name: str  # "length", "token", "position of token", "reaches position"
    strata: str  # what the strata are, in words
    auroc: float  # within-strata AUROC, group over baseline (nan: no stratum holds both sets)
    p_value: float
    retained: float  # share of the unstratified effect (AUROC - 0.5) left within strata
    n_informative_group: int
    n_informative_baseline: int
    outcome: str  # survives / vanishes / weakened / inconclusive


@dataclass
class Injection:
    """The falsification test: the top peak token put into the lower set's prompts."""

    token: str
    n_injected: int  # prompts of the lower set that lacked the token and got it (see inject_token)
    auroc_before: float  # higher set over lower set (> 0.5)
    auroc_after: float  # higher set over the lower set with the token put in
    reproduced: float  # (before - after) / (before - 0.5): share of the difference the token alone makes


@dataclass
class Generalisation:
    """Does the feature separate prompts that use none of its top distinctive words?"""

    without_tokens: list[str]  # the feature's top distinctive peak words, removed
    n_group: int  # group prompts containing none of them
    n_baseline: int
    auroc: float  # group over baseline on those prompts (nan: too few)
    p_value: float
    passes: bool


@dataclass
class Verdict:
    """Exactly one of :data:`VERDICTS`, and one plain sentence saying why."""

    feature: int
    verdict: str
    evidence: str


@dataclass
class FeatureReport:
    """Evidence, controls and verdict for one feature of one contrast."""

    evidence: FeatureEvidence
    length_control: ControlTest
    token_control: ControlTest
    position_control: ControlTest  # strata: position of the top token nearest the peak position
    reach_control: ControlTest  # strata: whether the prompt reaches the peak position
    generalisation: Generalisation
    injection: Injection | None
    verdict: Verdict

    HEADER: ClassVar[list[str]] = [
        "feature", "verdict", "evidence", "direction", "auroc", "fired_group", "fired_baseline",
        "peak_tokens", "n_peak_types", "separating_tokens", "top_token", "top_token_share",
        "peak_position", "position_share_group", "position_share_baseline", "length_r", "length_p",
        "length_control", "length_control_auroc", "length_control_p", "token_control", "token_control_auroc",
        "token_control_p", "position_control", "position_control_auroc", "position_control_p",
        "reach_control", "reach_control_auroc", "reach_control_p", "generalisation_without",
        "generalisation_auroc", "generalisation_p", "generalisation_prompts", "injection_token",
        "injection_reproduced",
    ]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def row(self) -> list[object]:
        """One CSV row under :attr:`HEADER`."""
        e, g, inj = self.evidence, self.generalisation, self.injection
        peaks = "; ".join(f"{t.token!r} {t.peaks_group}/{t.peaks_baseline} in {t.prompts_group}/{t.prompts_baseline}"
                          for t in e.peak_tokens)
        out = [
            e.feature, self.verdict.verdict, self.verdict.evidence, e.direction, _r(e.auroc), e.fired_group,
            e.fired_baseline, peaks, e.n_peak_types, " ".join(map(repr, e.separating_tokens)), e.top_token,
            _r(e.top_token_share), e.peak_position, _r(e.position_share_group), _r(e.position_share_baseline),
            _r(e.length_r), _g(e.length_p),
        ]
        for c in (self.length_control, self.token_control, self.position_control, self.reach_control):
            out += [c.outcome, _r(c.auroc), _g(c.p_value)]
        out += [" ".join(map(repr, g.without_tokens)), _r(g.auroc), _g(g.p_value), f"{g.n_group}/{g.n_baseline}",
                inj.token if inj else "", _r(inj.reproduced) if inj else ""]
        return out


def _r(x: float) -> float | str:
    return "" if x is None or not np.isfinite(x) else round(float(x), 4)


def _g(x: float) -> str:
    return "" if x is None or not np.isfinite(x) else f"{float(x):.4g}"


def inject_token(text: str, token: str, at: float, at_end: bool) -> str:
    """Put one token's text into a prompt *in place of* what is there, so its length and the
    positions of its other tokens stay the same (an insertion would shift every later token and
    lengthen the prompt, and a position or length feature would then look lexical).

    Args:
        text: the prompt.
        token: the token's string as decoded. A word token (``' glad'``) replaces the word at ``at``
            (never the first word, whose token has no leading space); other tokens (``','``, a word
            piece) are attached after that word instead, as there is nothing of their kind to replace.
        at: where, as a fraction of the prompt's words (matched to where the feature peaks on it).
        at_end: the feature peaks on the token at the end of prompts: it replaces the trailing
            punctuation (``'ready.'`` -> ``'ready!'``).
    """
    body = text.rstrip()
    m = _TRAILING_PUNCT.search(body)
    stem, trail = (body[: m.start()], m.group(0)) if m else (body, "")
    if at_end:
        return stem + token
    words = stem.split(" ")
    if token.startswith(" ") and token[1:].isalnum() and len(words) > 1:
        k = min(max(round(at * len(words)), 1), len(words) - 1)
        word = re.match(r"(\w*)(.*)", words[k])
        words[k] = token[1:] + word.group(2)  # keep punctuation attached to the replaced word
        return " ".join(words) + trail
    k = min(max(round(at * len(words)), 1), len(words))
    head, rest = " ".join(words[:k]), " ".join(words[k:])
    return head + token + (" " + rest if rest else "") + trail


def _outcome(test: StratifiedTest, k: int, a0: float, sign: int, s: ConfoundSettings) -> tuple[float, str]:
    """(retained share, outcome) of feature k's stratified re-test against its unstratified AUROC a0."""
    a = float(test.auroc[k])
    if not np.isfinite(a):
        return float("nan"), INCONCLUSIVE
    lift0 = (a0 - 0.5) * sign
    retained = (a - 0.5) * sign / lift0 if lift0 > 0 else float("nan")
    same_way = np.sign(test.z[k]) == sign
    significant = float(test.p_value[k]) < s.alpha and same_way
    if retained >= s.retained and float(test.p_value[k]) < s.survive_p and same_way:
        return retained, SURVIVES
    if min(test.n_informative_group[k], test.n_informative_baseline[k]) < s.min_informative:
        return retained, INCONCLUSIVE
    if retained < s.retained:
        return retained, WEAKENED if significant else VANISHES
    return retained, INCONCLUSIVE


def _control(
    name: str, strata: str, test: StratifiedTest, k: int, a0: float, sign: int, s: ConfoundSettings
) -> ControlTest:
    retained, outcome = _outcome(test, k, a0, sign, s)
    return ControlTest(name, strata, float(test.auroc[k]), float(test.p_value[k]), retained,
                       int(test.n_informative_group[k]), int(test.n_informative_baseline[k]), outcome)


@dataclass
class _Side:
    """One prompt set's data, arranged for per-feature look-ups."""

    tokens: TokenizedPrompts
    acts: FeatureActivity
    matrix: np.ndarray  # [n, longest] token ids, -1 padded
    presence: np.ndarray  # [n, vocab] bool
    peak_tok: np.ndarray  # [n, n_features] token id at the peak, -1 where silent

    @classmethod
    def build(cls, tokens: TokenizedPrompts, acts: FeatureActivity, col: dict[int, int]) -> _Side:
        if acts.value.shape[0] != len(tokens):
            raise ValueError(f"{acts.value.shape[0]} rows of activity for {len(tokens)} prompts")
        if np.any(acts.peak >= tokens.lengths[:, None]):
            raise ValueError("a peak position lies beyond its prompt's text tokens (BOS must not be counted)")
        matrix = tokens.token_matrix()
        rows = np.arange(len(tokens))[:, None]
        peak_tok = np.where(acts.peak >= 0, matrix[rows, np.maximum(acts.peak, 0)], -1)
        return cls(tokens, acts, matrix, _counts(tokens, col) > 0, peak_tok)


@dataclass
class _Peaks:
    """One feature's peaks, oriented: ``hi`` is the set (0 group, 1 baseline) where it is higher."""

    sign: int  # +1 group higher, -1 baseline higher, 0 no difference
    hi: int
    lo: int
    fired_hi: np.ndarray  # [n_hi] bool
    counts_hi: Counter  # peak token id -> firing prompts of the higher set peaking on it
    counts_lo: Counter
    top: int  # most frequent peak token of the higher set (-1: it never fires there)
    p_star: int  # most frequent peak position of the higher set


def explain_features(
    group: TokenizedPrompts,
    baseline: TokenizedPrompts,
    group_acts: FeatureActivity,
    baseline_acts: FeatureActivity,
    group_name: str = "group",
    baseline_name: str = "baseline",
    encode: Encoder | None = None,
    settings: ConfoundSettings | None = None,
) -> list[FeatureReport]:
    """Evidence, controlled re-tests and a verdict for each feature in ``group_acts.features``.

    Pass the features Chapter 2 found significant and replicated, and *all* prompts of both sets
    (discovery and held-out): the controls re-test features already selected, and every prompt
    adds information to the strata.

    Args:
        group, baseline: the sets' text tokens (BOS excluded).
        group_acts, baseline_acts: the features' per-prompt statistic and peak position in each set
            (same features, same order).
        encode: model access for the injection test: ``encode(texts, features) -> [n_texts,
            n_features]``, the same per-prompt statistic as ``FeatureActivity.value``. Without it the
            lexical verdict rests on the token control alone.
        settings: thresholds (defaults documented on :class:`ConfoundSettings`).

    Returns:
        One :class:`FeatureReport` per feature, in input order.
    """
    s = settings or ConfoundSettings()
    if not np.array_equal(group_acts.features, baseline_acts.features):
        raise ValueError("group_acts and baseline_acts must describe the same features in the same order")
    features = group_acts.features
    if len(features) == 0:
        return []
    col, vocab_ids, vocab_strs = _vocabulary(group, baseline)
    spell = dict(zip(vocab_ids, vocab_strs))
    sides = (_Side.build(group, group_acts, col), _Side.build(baseline, baseline_acts, col))
    ng, nb = len(group), len(baseline)
    doc = (sides[0].presence.sum(axis=0), sides[1].presence.sum(axis=0))  # prompts containing each token
    names = (group_name, baseline_name)

    values = np.concatenate([group_acts.value, baseline_acts.value])
    in_group = np.r_[np.ones(ng, bool), np.zeros(nb, bool)]
    lengths = np.r_[group.lengths, baseline.lengths]
    a0 = _auroc(group_acts.value, baseline_acts.value)
    len_p = float(mann_whitney(lengths[:ng, None].astype(float), lengths[ng:, None].astype(float))[1][0])
    len_sign = int(np.sign(group.lengths.mean() - baseline.lengths.mean()))
    len_r, len_rp = within_group_rank_correlation(values, lengths, in_group)
    length_test = van_elteren(values, in_group, lengths)

    # Per-feature facts from the peaks, and the strata of the token and position controls.
    n_feat = len(features)
    token_strata = np.zeros((ng + nb, n_feat), dtype=np.int64)
    position_strata = np.zeros((ng + nb, n_feat), dtype=np.int64)
    reach_strata = np.zeros((ng + nb, n_feat), dtype=np.int64)
    facts: list[_Peaks] = []
    for k in range(n_feat):
        sign = 1 if a0[k] > 0.5 else -1 if a0[k] < 0.5 else 0
        hi, lo = (0, 1) if sign >= 0 else (1, 0)
        fired_hi = sides[hi].acts.peak[:, k] >= 0
        counts_hi = Counter(sides[hi].peak_tok[fired_hi, k].tolist())
        counts_lo = Counter(sides[lo].peak_tok[sides[lo].acts.peak[:, k] >= 0, k].tolist())
        if counts_hi:
            top = min(counts_hi, key=lambda t: (-counts_hi[t], t))
            pos_counts = Counter(sides[hi].acts.peak[fired_hi, k].tolist())
            p_star = min(pos_counts, key=lambda q: (-pos_counts[q], q))
        else:
            top, p_star = -1, 0
        # Token control: contains the top token or not. Position control: where the top token sits
        # (its occurrence nearest the peak position), or absent. Reach control: prompt long enough
        # to have the peak position at all.
        for side_i, off in ((0, 0), (1, ng)):
            side = sides[side_i]
            if top >= 0:
                token_strata[off : off + len(side.tokens), k] = side.presence[:, col[top]]
                hits = side.matrix == top
                offset = np.abs(np.arange(side.matrix.shape[1])[None, :] - p_star)
                dist = np.where(hits, offset, np.iinfo(np.int64).max)
                nearest = dist.argmin(axis=1)
                position_strata[off : off + len(side.tokens), k] = np.where(hits.any(axis=1), nearest, -1)
            reach_strata[off : off + len(side.tokens), k] = side.tokens.lengths > p_star
        facts.append(_Peaks(sign, hi, lo, fired_hi, counts_hi, counts_lo, top, p_star))
    token_test = van_elteren(values, in_group, token_strata)
    position_test = van_elteren(values, in_group, position_strata)
    reach_test = van_elteren(values, in_group, reach_strata)

    reports: list[FeatureReport] = []
    for k, fk in enumerate(facts):
        sign, hi, lo, top, p_star = fk.sign, fk.hi, fk.lo, fk.top, fk.p_star
        fired_hi, counts_hi, counts_lo = fk.fired_hi, fk.counts_hi, fk.counts_lo
        n_hi, n_lo = len(sides[hi].tokens), len(sides[lo].tokens)
        peaks_by_side = (counts_hi, counts_lo) if hi == 0 else (counts_lo, counts_hi)
        ordered = sorted(counts_hi, key=lambda t: (-counts_hi[t], t))
        peak_tokens = [
            PeakToken(spell[t], t, peaks_by_side[0].get(t, 0), peaks_by_side[1].get(t, 0),
                      int(doc[0][col[t]]), int(doc[1][col[t]]))
            for t in ordered[: s.top_tokens]
        ]
        # Distinctive peak tokens: the higher set holds them in > ratio x the other set's share of prompts.
        separating = [t for t in ordered
                      if doc[hi][col[t]] / n_hi > s.separating_ratio * doc[lo][col[t]] / n_lo]
        firing = [int((sd.acts.peak[:, k] >= 0).sum()) for sd in sides]
        pos_hi = sides[hi].acts.peak[fired_hi, k]
        share_hi = float((pos_hi == p_star).mean()) if len(pos_hi) else 0.0
        lo_peaks = sides[lo].acts.peak[sides[lo].acts.peak[:, k] >= 0, k]
        share_lo = float((lo_peaks == p_star).mean()) if len(lo_peaks) else 0.0
        length_explains = bool(
            len_p < s.alpha and len_sign != 0 and len_rp[k] < s.length_corr_p
            and np.sign(len_r[k]) * len_sign == sign
        )
        evidence = FeatureEvidence(
            feature=int(features[k]), direction="up" if sign >= 0 else "down", auroc=float(a0[k]),
            fired_group=firing[0], fired_baseline=firing[1], peak_tokens=peak_tokens,
            n_peak_types=len(counts_hi), separating_tokens=[spell[t] for t in separating],
            separating_share=sum(counts_hi[t] for t in separating) / max(int(fired_hi.sum()), 1),
            top_token=spell.get(top, ""), top_token_id=int(top),
            top_token_share=counts_hi[top] / max(int(fired_hi.sum()), 1) if top >= 0 else 0.0,
            peak_position=int(p_star),
            position_share_group=share_hi if hi == 0 else share_lo,
            position_share_baseline=share_lo if hi == 0 else share_hi,
            length_r=float(len_r[k]), length_p=float(len_rp[k]), length_explains=length_explains,
        )
        top_s = repr(spell.get(top, ""))
        controls = (
            _control("length", "prompts of equal token length", length_test, k, a0[k], sign, s),
            _control("token", f"prompts with / without {top_s}", token_test, k, a0[k], sign, s),
            _control("position", f"prompts with {top_s} at the same position", position_test, k, a0[k], sign, s),
            _control(
                "reach", f"prompts that reach / do not reach position {p_star}", reach_test, k, a0[k], sign, s
            ),
        )
        gen = _generalisation(sides, k, hi, lo, separating, counts_hi, col, spell, s)
        reports.append(FeatureReport(evidence, *controls, gen, None, Verdict(int(features[k]), "", "")))

    if encode is not None and s.injection != "none":
        _run_injections(reports, facts, sides, encode, s)
    for rep in reports:
        rep.verdict = decide(rep, names, s)
    return reports


def _generalisation(sides, k, hi, lo, separating, counts_hi, col, spell, s: ConfoundSettings) -> Generalisation:
    """Drop the top distinctive words (covering ``generalisation_cover`` of the distinctive peaks, at
    least one word kept back); test the prompts of both sets that contain none of them."""
    if len(separating) < 2:
        return Generalisation([spell[t] for t in separating], 0, 0, float("nan"), 1.0, False)
    total = sum(counts_hi[t] for t in separating)
    held, covered = [], 0
    for t in separating[:-1]:  # keep at least one distinctive word for the prompts left over
        held.append(t)
        covered += counts_hi[t]
        if covered >= s.generalisation_cover * total:
            break
    cols = [col[t] for t in held]
    keep = [~sd.presence[:, cols].any(axis=1) for sd in sides]
    x, y = sides[hi].acts.value[keep[hi], k], sides[lo].acts.value[keep[lo], k]
    n_x, n_y = len(x), len(y)
    counts = (n_x, n_y) if hi == 0 else (n_y, n_x)
    if min(n_x, n_y) < s.generalisation_min:
        return Generalisation([spell[t] for t in held], *counts, float("nan"), 1.0, False)
    u, p = mann_whitney(x[:, None], y[:, None])
    a_hi = float(u[0] / (n_x * n_y))  # higher set over lower set
    passes = a_hi >= s.generalisation_auroc and float(p[0]) < s.alpha
    auroc = a_hi if hi == 0 else 1.0 - a_hi
    return Generalisation([spell[t] for t in held], *counts, auroc, float(p[0]), bool(passes))


def _is_concept(rep: FeatureReport, s: ConfoundSettings) -> bool:
    """Several distinctive peak words, generalises to prompts without the top ones, and survives the
    token and position controls; the length control may instead be inconclusive (lengths that
    barely overlap cannot be stratified) when length does not explain the feature either."""
    e = rep.evidence
    return (
        len(e.separating_tokens) >= s.min_separating
        and e.separating_share >= s.separating_share
        and rep.generalisation.passes
        and (rep.length_control.outcome == SURVIVES
             or (rep.length_control.outcome == INCONCLUSIVE and not e.length_explains))
        and rep.token_control.outcome == SURVIVES
        and rep.position_control.outcome == SURVIVES
        and rep.reach_control.outcome == SURVIVES
    )


def _run_injections(
    reports: list[FeatureReport], facts: list[_Peaks], sides: tuple[_Side, _Side], encode: Encoder, s: ConfoundSettings
) -> None:
    """Put each candidate feature's top peak token into the lower set's prompts that lack it, encode
    all edited texts in one call (a text shared by several features is encoded once), and store
    how much of the difference the token alone reproduces."""
    jobs = []  # (report index, lower-set rows edited, edited texts)
    for k, rep in enumerate(reports):
        fk = facts[k]
        hi, lo, top = fk.hi, fk.lo, fk.top
        if top < 0 or fk.sign == 0:
            continue
        if s.injection == "candidates" and (_is_concept(rep, s) or rep.token_control.outcome == SURVIVES):
            continue
        token = rep.evidence.top_token
        if not token.strip() or _PIECE_LABEL.search(token):
            continue
        side_hi, side_lo = sides[hi], sides[lo]
        on_top = fk.fired_hi & (side_hi.peak_tok[:, k] == top)
        pos = side_hi.acts.peak[on_top, k]
        n_tok = side_hi.tokens.lengths[on_top]
        at = float(np.median(pos / n_tok))
        at_end = bool(np.mean(pos == n_tok - 1) >= 0.5)
        lacking = np.flatnonzero(~(side_lo.matrix == top).any(axis=1))
        texts = [inject_token(side_lo.tokens.texts[i], token, at, at_end) for i in lacking]
        jobs.append((k, lacking, texts))
    if not jobs:
        return
    unique = sorted({t for _, _, texts in jobs for t in texts})
    index = {t: i for i, t in enumerate(unique)}
    feats = np.array(sorted({int(reports[k].evidence.feature) for k, _, texts in jobs if texts}), dtype=np.int64)
    fcol = {int(f): j for j, f in enumerate(feats)}
    encoded = np.asarray(encode(unique, feats), dtype=np.float64) if unique else np.zeros((0, len(feats)))
    if encoded.shape != (len(unique), len(feats)):
        raise ValueError(f"encode returned shape {encoded.shape}, expected {(len(unique), len(feats))}")
    for k, lacking, texts in jobs:
        hi, lo = facts[k].hi, facts[k].lo
        rep = reports[k]
        x = sides[hi].acts.value[:, k]
        y = sides[lo].acts.value[:, k].copy()
        if len(texts):
            y[lacking] = encoded[[index[t] for t in texts], fcol[rep.evidence.feature]]
        before = float(_auroc(x[:, None], sides[lo].acts.value[:, k][:, None])[0])
        after = float(_auroc(x[:, None], y[:, None])[0])
        reproduced = (before - after) / (before - 0.5) if before > 0.5 else float("nan")
        rep.injection = Injection(rep.evidence.top_token, len(lacking), before, after, reproduced)


def decide(rep: FeatureReport, names: tuple[str, str], settings: ConfoundSettings | None = None) -> Verdict:
    """The verdict and its one-sentence evidence for one feature (see the module docstring).

    Order: ``concept`` first (it must pass every test, so nothing else can be mistaken for it), then
    the confounds from the most specific to the least: one token, one position, length; ``context``
    for what remains.
    """
    s = settings or ConfoundSettings()
    e = rep.evidence
    f = e.feature
    if e.auroc == 0.5 or not np.isfinite(e.auroc):
        return Verdict(f, "", "no difference between the sets on these prompts")
    hi_name, lo_name = names if e.direction == "up" else names[::-1]
    hi_idx = 0 if e.direction == "up" else 1
    fired_hi = e.fired_group if hi_idx == 0 else e.fired_baseline
    n_tok = len(e.separating_tokens)
    top = e.peak_tokens[0] if e.peak_tokens else None
    top_s = repr(e.top_token)

    def prompts_with(t: PeakToken) -> str:
        a, b = (t.prompts_group, t.prompts_baseline) if hi_idx == 0 else (t.prompts_baseline, t.prompts_group)
        return f"{a} {hi_name} and {b} {lo_name} prompts"

    if _is_concept(rep, s):
        shown = ", ".join(f"{t.token!r} {t.peaks_group if hi_idx == 0 else t.peaks_baseline}"
                          for t in e.peak_tokens if t.token in e.separating_tokens[:4])
        g = rep.generalisation
        a_hi = g.auroc if hi_idx == 0 else 1.0 - g.auroc
        n_hi = g.n_group if hi_idx == 0 else g.n_baseline
        return Verdict(f, CONCEPT, (
            f"peaks on {n_tok} different words that mark {hi_name} prompts ({shown}, ...); it still separates "
            f"the {n_hi} {hi_name} prompts without {', '.join(map(repr, g.without_tokens))} (AUROC {a_hi:.2f}) "
            f"and survives the length, token and position controls"
        ))

    inj = rep.injection
    token_explains = rep.token_control.outcome in (VANISHES, WEAKENED)
    reproduces = inj is not None and np.isfinite(inj.reproduced) and inj.reproduced >= s.injection_reproduces
    lexical = e.top_token_share >= s.lexical_share and (
        (token_explains and (inj is None or reproduces))
        or (rep.token_control.outcome == INCONCLUSIVE and reproduces)
    )
    if lexical and top is not None:
        n_top = top.peaks_group if hi_idx == 0 else top.peaks_baseline
        why = (f"putting {top_s} into {lo_name} prompts reproduces {min(inj.reproduced, 1.0):.0%} of the difference"
               if inj is not None else
               f"prompts with and without {top_s} show no {hi_name}/{lo_name} difference "
               f"(AUROC {_oriented(rep.token_control.auroc, hi_idx):.2f})")
        return Verdict(f, LEXICAL, f"peaks on {top_s} in {n_top} of {fired_hi} firing {hi_name} prompts; "
                                   f"{top_s} occurs in {prompts_with(top)}; {why}")

    position_explains = [c for c in (rep.position_control, rep.reach_control) if c.outcome in (VANISHES, WEAKENED)]
    share_hi = e.position_share_group if hi_idx == 0 else e.position_share_baseline
    share_lo = e.position_share_baseline if hi_idx == 0 else e.position_share_group
    if share_hi >= s.position_share and position_explains:
        c = max(position_explains, key=lambda c: c.p_value)
        n_at = round(share_hi * fired_hi)
        fired_lo = e.fired_baseline if hi_idx == 0 else e.fired_group
        gone = "the sets do not differ" if c.outcome == VANISHES else "less than half of the difference is left"
        return Verdict(f, POSITIONAL, (
            f"peaks at text position {e.peak_position} in {n_at} of {fired_hi} firing {hi_name} prompts "
            f"(and in {round(share_lo * fired_lo)} of {fired_lo} firing {lo_name} prompts); among {c.strata} {gone} "
            f"(AUROC {_oriented(c.auroc, hi_idx):.2f}, p = {c.p_value:.2g})"
        ))

    if e.length_explains and rep.length_control.outcome != SURVIVES:
        c = rep.length_control
        trend = "rises" if e.length_r > 0 else "falls"
        gone = "vanishes" if c.outcome == VANISHES else "mostly goes"
        within = (
            f"among prompts of equal length the difference {gone} (AUROC {_oriented(c.auroc, hi_idx):.2f})"
            if c.outcome in (VANISHES, WEAKENED)
            else "too few prompts of equal length exist in both sets to test it directly"
        )
        return Verdict(f, LENGTH, (
            f"its activation {trend} with token length within both sets (rank r = {e.length_r:.2f}, "
            f"p = {e.length_p:.2g}) and the sets differ in length; {within}"
        ))

    reasons = []
    if n_tok < s.min_separating:
        reasons.append(f"it peaks on {n_tok} word(s) that mark {hi_name} prompts (a concept needs {s.min_separating})")
    elif e.separating_share < s.separating_share:
        reasons.append(f"only {e.separating_share:.0%} of its {hi_name} peaks are on words that mark {hi_name} prompts")
    elif not rep.generalisation.passes:
        reasons.append(f"it does not separate prompts without {', '.join(map(repr, rep.generalisation.without_tokens))}")
    for c in (rep.length_control, rep.token_control, rep.position_control, rep.reach_control):
        if c.outcome in (VANISHES, WEAKENED):
            reasons.append(f"the difference {c.outcome} among {c.strata}")
        elif c.outcome == INCONCLUSIVE and (c.name != "length" or e.length_explains):
            reasons.append(f"too few {c.strata} hold both sets to show it survives")
    if inj is not None and not reproduces and token_explains:
        reasons.append(f"putting {top_s} into {lo_name} prompts reproduces only {max(inj.reproduced, 0.0):.0%} of it")
    lead = (f"peaks mostly on {top_s}, which occurs in {prompts_with(top)}" if top is not None
            else f"fires in {fired_hi} {hi_name} prompts")
    why_not = "; ".join(reasons or ["it does not pass the controls"])
    return Verdict(f, CONTEXT, f"{lead}; not a concept: {why_not}")


def _oriented(auroc: float, hi_idx: int) -> float:
    """An AUROC of group over baseline, turned into higher set over lower set."""
    return auroc if hi_idx == 0 else 1.0 - auroc


def verdict_table(reports: Sequence[FeatureReport]) -> dict[int, Verdict]:
    """Feature id -> verdict, for filling Chapter 2's ``verdict`` and ``evidence`` columns (features
    not judged, i.e. not significant or not replicated, get empty cells)."""
    return {rep.evidence.feature: rep.verdict for rep in reports}
