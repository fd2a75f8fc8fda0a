"""Every statistical test of Chapter 2, vectorised over features: one group of prompts against a baseline.

Each prompt is one observation (its per-feature max or mean activation over its text tokens), so a
long prompt does not count more than a short one. For every feature, vectorised over all of them:

* **Mann-Whitney U** (two-sided, normal approximation with tie and continuity corrections, exactly as
  ``scipy.stats.mannwhitneyu(method="asymptotic")``): SAE activations are zero-inflated and heavy-tailed,
  so a rank test is the honest choice over a t-test.
* **AUROC** = U / (n_group * n_baseline): the probability that a random group prompt out-activates a
  random baseline prompt (ties count half). 0.5 means no difference.
* **Effect size**: the rank-biserial correlation 2*AUROC - 1, from -1 (baseline always higher) to +1
  (group always higher); it is the effect size that belongs with the Mann-Whitney test. Cohen's d of
  the activations is reported beside it for magnitude.
* **Benjamini-Hochberg q-values** across all tested features of the contrast: with 24,576 tests, a
  p < 0.05 threshold alone would hand out ~1,200 false discoveries.

Features that never fire in either group cannot differ and are not tested (they are counted).

The design checks and the controlled re-tests behind the verdicts (:mod:`mechinterp.meaning.design`,
:mod:`mechinterp.meaning.verdicts`) use these rank tests, each tested against a reference in
``tests/test_confounds.py``:

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

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import fft as spfft
from scipy import stats as sps
from scipy.special import gammaln

CHUNK = 2048  # features per vectorised block: bounds memory at [n_prompts, CHUNK] floats


@dataclass
class Contrast:
    """Per-feature results of one group vs the baseline, over the ``tested`` features."""

    tested: np.ndarray  # int feature ids, ascending
    n_group: int
    n_baseline: int
    mean_group: np.ndarray
    mean_baseline: np.ndarray
    frac_group: np.ndarray
    frac_baseline: np.ndarray
    u_stat: np.ndarray  # U of the group sample
    auroc: np.ndarray
    effect_size: np.ndarray  # rank-biserial correlation, 2 * auroc - 1
    cohens_d: np.ndarray
    p_value: np.ndarray  # two-sided
    q_value: np.ndarray  # Benjamini-Hochberg over the tested features
    n_never_fired: int
    exact: np.ndarray | None = None  # bool: p from the exact permutation distribution (else normal approximation)
    p_firing: np.ndarray | None = None  # two-sided Fisher exact p of "fires in this share of prompts vs that"

    @property
    def direction(self) -> np.ndarray:
        """+1 where the group tends higher, -1 where the baseline does, 0 for no difference."""
        return np.sign(self.effect_size).astype(int)


def _tie_sum(sorted_cols: np.ndarray) -> np.ndarray:
    """Sum over tie groups of (t^3 - t), per column of an axis-0-sorted array."""
    n = sorted_cols.shape[0]
    new_run = np.ones_like(sorted_cols, dtype=bool)
    new_run[1:] = sorted_cols[1:] != sorted_cols[:-1]
    idx = np.arange(n)[:, None]
    run_start = np.maximum.accumulate(np.where(new_run, idx, 0), axis=0)
    # Each element's tie-group size t, via the next run's start; summing (t^2 - 1) over the elements of
    # a group gives t * (t^2 - 1) = t^3 - t.
    ends_run = np.ones_like(new_run)
    ends_run[:-1] = new_run[1:]
    run_end = np.minimum.accumulate(np.where(ends_run, idx, n - 1)[::-1], axis=0)[::-1]
    t = (run_end - run_start + 1).astype(np.float64)
    return (t * t - 1.0).sum(axis=0)


def mann_whitney(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Mann-Whitney U test per column, as scipy's asymptotic method with continuity correction.

    Args:
        x: ``[n_x, n_features]`` observations of the group.
        y: ``[n_y, n_features]`` observations of the baseline.

    Returns:
        ``(u_x, p)``, each ``[n_features]``: U of ``x`` and the two-sided p-value. Columns where every
        value is tied have p = 1.
    """
    n1, n2 = x.shape[0], y.shape[0]
    both = np.concatenate([x, y], axis=0).astype(np.float64)
    ranks = sps.rankdata(both, axis=0)
    u1 = ranks[:n1].sum(axis=0) - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    tie = _tie_sum(np.sort(both, axis=0))
    var = n1 * n2 / 12.0 * ((n + 1) - tie / (n * (n - 1)))
    u_big = np.maximum(u1, n1 * n2 - u1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u_big - n1 * n2 / 2.0 - 0.5) / np.sqrt(var)
    p = np.clip(2.0 * sps.norm.sf(z), 0.0, 1.0)
    p = np.where(var > 0, p, 1.0)
    return u1, p


def needs_exact(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``[n_features]`` bool: where the normal approximation of the Mann-Whitney p is unreliable.

    U is the sum of the smaller sample's rank scores, drawn without replacement from the pooled ranks.
    Its permutation distribution is symmetric for equal sizes, but with unequal sizes and a huge tie at
    zero (a rare feature) it is badly skewed: 3 of 15 baseline prompts firing against 0 of 1,211 get
    p = 1e-54 from the normal approximation and 3e-6 from the exact distribution. The p is exact where
    that skewness exceeds :data:`MAX_SKEW` (an Edgeworth term of 0.05 already doubles a tail of 1e-5)
    and the smaller sample is expected to hold at most about :data:`EXACT_MAX_FIRING` firing prompts,
    and wherever the smaller sample has fewer than :data:`EXACT_SMALL` prompts. With more firing
    prompts than that in both samples, U is a sum of many informative scores and the normal
    approximation holds (within a factor of about 2 at p < 0.05 in simulations of 15-300 against
    1,000-2,000 prompts),
    while the exact sum over subsets would cost O(S k^2) for k of them.
    """
    n1, n2 = x.shape[0], y.shape[0]
    n, m = n1 + n2, min(n1, n2)
    if m < EXACT_SMALL:
        return np.ones(x.shape[1], dtype=bool) & ((x != 0).any(axis=0) | (y != 0).any(axis=0))
    ranks = sps.rankdata(np.concatenate([x, y], axis=0), axis=0) - (n + 1) / 2.0
    var_pop, mu3_pop = (ranks ** 2).mean(axis=0), (ranks ** 3).mean(axis=0)
    # Moments of the sum of m draws without replacement from N values (finite-population formulas).
    var_t = m * (n - m) / (n - 1) * var_pop
    mu3_t = m * (n - m) * (n - 2 * m) * n / ((n - 1) * (n - 2)) * mu3_pop
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.where(var_t > 0, mu3_t / var_t ** 1.5, 0.0)
    k = (x != 0).sum(axis=0) + (y != 0).sum(axis=0)
    expected = m * k / n  # firing prompts expected in the smaller sample, and their spread
    spread = np.sqrt(expected * (1 - k / n) * (n - m) / max(n - 1, 1))
    return (np.abs(skew) > MAX_SKEW) & (expected + 8 * spread <= EXACT_MAX_FIRING)


def rank_test(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chapter 2's activation test per column: Mann-Whitney U, exact where the normal approximation
    fails (:func:`needs_exact`), on activations whose float-noise differences are ties (:func:`snap_ties`).

    Returns:
        ``(u_x, p, exact)``: U of ``x``, the two-sided p, and where p is exact.
    """
    both = snap_ties(np.concatenate([x, y], axis=0))
    xs, ys = both[: x.shape[0]], both[x.shape[0]:]
    u, p = mann_whitney(xs, ys)
    exact = needs_exact(xs, ys)
    if exact.any():
        p[exact] = exact_mann_whitney(xs[:, exact], ys[:, exact])
    return u, p, exact


def cohens_d(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Standardised mean difference (x - y) / pooled SD per column; 0 where both are constant and equal."""
    n1, n2 = x.shape[0], y.shape[0]
    pooled = ((n1 - 1) * x.var(axis=0, ddof=1) + (n2 - 1) * y.var(axis=0, ddof=1)) / max(n1 + n2 - 2, 1)
    diff = x.mean(axis=0) - y.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = diff / np.sqrt(pooled)
    return np.where(pooled > 0, d, np.where(diff == 0, 0.0, np.copysign(np.inf, diff)))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); controls the false discovery rate."""
    if p.size == 0:
        return p.copy()
    return sps.false_discovery_control(p, method="bh")


Block = tuple[np.ndarray, np.ndarray, np.ndarray]  # (feature ids, group values, baseline values) of some columns


def contrast(x: np.ndarray, y: np.ndarray, features: np.ndarray | None = None, paired: bool = False) -> Contrast:
    """Compare group ``x`` with baseline ``y`` feature by feature (vectorised, in feature chunks).

    Args:
        x: ``[n_group, n_features]`` per-prompt activations of the group.
        y: ``[n_baseline, n_features]`` per-prompt activations of the baseline.
        features: the feature ids of the columns (default ``arange(n_features)``).
        paired: rows are pairs (see :func:`contrast_blocks`).
    """
    features = np.arange(x.shape[1]) if features is None else np.asarray(features)
    blocks = ((features[s:s + CHUNK], x[:, s:s + CHUNK], y[:, s:s + CHUNK]) for s in range(0, x.shape[1], CHUNK))
    return contrast_blocks(blocks, x.shape[0], y.shape[0], paired)


def contrast_blocks(blocks: Iterable[Block], n_group: int, n_baseline: int, paired: bool = False) -> Contrast:
    """:func:`contrast` over column blocks made on demand, so that memory stays at one block of
    ``[n_prompts, CHUNK]`` however many prompts and features there are. With ``paired`` (row i of the
    group belongs with row i of the baseline), p comes from :func:`paired_rank_test` instead."""
    parts: dict[str, list[np.ndarray]] = {}
    n_never = 0
    for feats, xb, yb in blocks:
        fired = (xb > 0).any(axis=0) | (yb > 0).any(axis=0)
        n_never += int((~fired).sum())
        xb, yb = xb[:, fired].astype(np.float64), yb[:, fired].astype(np.float64)
        u, p, exact = rank_test(xb, yb)
        if paired:
            p, exact = paired_rank_test(xb, yb)
        k_x, k_y = (xb > 0).sum(axis=0), (yb > 0).sum(axis=0)
        for key, value in (("tested", feats[fired]), ("u", u), ("p", p), ("exact", exact), ("d", cohens_d(xb, yb)),
                           ("mean_x", xb.mean(axis=0)), ("mean_y", yb.mean(axis=0)), ("k_x", k_x), ("k_y", k_y),
                           ("p_firing", fisher_two_sided(k_x, n_group, k_y, n_baseline))):
            parts.setdefault(key, []).append(value)
    cat = {k: np.concatenate(v) for k, v in parts.items()} if parts else {}
    empty = np.zeros(0)
    get = lambda k: cat.get(k, empty)  # noqa: E731
    a = get("u") / (n_group * n_baseline)
    return Contrast(
        tested=get("tested").astype(np.int64), n_group=n_group, n_baseline=n_baseline,
        mean_group=get("mean_x"), mean_baseline=get("mean_y"),
        frac_group=get("k_x") / n_group, frac_baseline=get("k_y") / n_baseline,
        u_stat=get("u"), auroc=a, effect_size=2.0 * a - 1.0, cohens_d=get("d"), p_value=get("p"),
        q_value=benjamini_hochberg(get("p")), n_never_fired=n_never,
        exact=get("exact").astype(bool), p_firing=get("p_firing"),
    )


def rank_order(c: Contrast, exclude: np.ndarray | None = None, alpha: float = 0.05) -> np.ndarray:
    """Positions into ``c.tested``, strongest finding first.

    The significant features (q < ``alpha``) come first, by the size of the difference |AUROC - 0.5|
    (either direction), then the rest by q. With thousands of prompts nearly every difference is
    significant and q mostly measures the sample size: a feature at AUROC 0.94 must not sit below one at
    0.38 because the latter's q is smaller. Ties are broken by q, then by the larger absolute difference
    in mean activation. Features in ``exclude`` (e.g. always-on) are left out.
    """
    keep = np.ones(len(c.tested), dtype=bool) if exclude is None else ~np.isin(c.tested, exclude)
    pos = np.flatnonzero(keep)
    significant = c.q_value[pos] < alpha
    keys = (
        -np.abs(c.mean_group[pos] - c.mean_baseline[pos]),
        c.q_value[pos],
        np.where(significant, -np.abs(c.auroc[pos] - 0.5), 0.0),
        ~significant,
    )
    return pos[np.lexsort(keys)]


def always_on(fractions_by_group: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    """Feature ids that fire in at least ``threshold`` of the prompts of *every* group.

    Such features (position, "this is text", punctuation) say nothing about any concept; they are
    listed separately rather than silently dropped.
    """
    frac = np.stack(list(fractions_by_group.values()))
    return np.flatnonzero((frac >= threshold).all(axis=0))


def split_indices(n: int, holdout: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random (discovery, held-out) split of ``range(n)``; the held-out part has round(holdout * n)."""
    perm = rng.permutation(n)
    n_hold = int(round(holdout * n))
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


# --------------------------------------------------------------------------------------------------
# Rank tests of the design checks and the controls (vectorised over features)


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
        within = np.where(denom > 0, (w * u * informative).sum(axis=1) / denom, np.nan)
    p = np.where(var_t > 0, np.clip(2.0 * sps.norm.sf(np.abs(z)), 0.0, 1.0), 1.0)
    return StratifiedTest(
        z=z, p_value=p, auroc=within,
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


def paired_rank_test(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chapter 2's paired test per column: the Wilcoxon signed-rank test of ``x - y``, with differences
    smaller than :data:`TIE_RTOL` of the pair's activations counted as zero (a feature that reads the
    same tokens in both prompts of a pair gives the same number up to float noise) and tied |d| made
    equal, exact below :data:`WILCOXON_EXACT_BELOW` non-zero differences (as scipy's ``method="auto"``).

    Returns:
        ``(p, exact)`` per column.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    d = x - y
    d = np.where(np.abs(d) <= TIE_RTOL * np.maximum(np.abs(x), np.abs(y)), 0.0, d)
    d = np.sign(d) * snap_ties(np.abs(d))
    p = wilcoxon_signed_rank(d, np.zeros_like(d)).p_value
    exact = (d != 0).sum(axis=0) < WILCOXON_EXACT_BELOW
    for col in np.flatnonzero(exact):
        p[col] = exact_signed_rank(d[:, col])
    return p, exact


def auroc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``[n_features]`` AUROC of x over y (ties count half), via the Mann-Whitney U."""
    u, _ = mann_whitney(np.atleast_2d(x.T).T, np.atleast_2d(y.T).T)
    return u / (x.shape[0] * y.shape[0])


# --------------------------------------------------------------------------------------------------
# Ties that are float noise, and exact p-values where the normal approximation fails

TIE_RTOL = 1e-4  # activations closer than 1 part in 10,000 count as tied (see snap_ties)
MAX_SKEW = 0.05  # exact Mann-Whitney p where U's permutation distribution is more skewed than this ...
EXACT_SMALL = 10  # ... or the smaller sample has fewer prompts than this
EXACT_MAX_FIRING = 30  # ... as long as the smaller sample is not expected to hold more firing prompts
WILCOXON_EXACT_BELOW = 50  # exact signed-rank p below this many non-zero differences (scipy's own cut-off)
P_FLOOR = 1e-15  # exact p-values are sums of float64 probabilities: smaller ones are rounding noise
NEGLIGIBLE = np.log(1e-18)  # hypergeometric weights below this cannot move an exact p


def snap_ties(values: np.ndarray, rtol: float = TIE_RTOL) -> np.ndarray:
    """Per column, make values that differ by less than ``rtol`` (relative) from their neighbour in
    sorted order exactly equal (each run of them takes its smallest value); exact zeros stay zero.

    Why: the same activation computed in a batch of 1 and in a batch of 16, or by another CPU's matrix
    kernel, differs in the 7th digit. Rank tests see any difference, so a tie (AUROC 0.5) would become
    0.4998 on one machine and 0.5002 on another. Real differences between SAE activations are far larger
    than 1e-4 of their size, and float32 noise far smaller.
    """
    x = np.array(values, dtype=np.float64, copy=True)
    flat = x.ndim == 1
    x = x[:, None] if flat else x
    if x.shape[0] > 1:
        order = np.argsort(x, axis=0, kind="stable")
        s = np.take_along_axis(x, order, axis=0)
        starts = np.ones_like(s, dtype=bool)
        starts[1:] = (s[1:] - s[:-1]) > rtol * np.maximum(np.abs(s[1:]), np.abs(s[:-1]))
        first = np.maximum.accumulate(np.where(starts, np.arange(len(s))[:, None], 0), axis=0)
        np.put_along_axis(x, order, np.take_along_axis(s, first, axis=0), axis=0)
    return x[:, 0] if flat else x


def _log_comb(n, k) -> np.ndarray:
    """log C(n, k), elementwise."""
    return gammaln(np.add(n, 1.0)) - gammaln(np.add(k, 1.0)) - gammaln(np.subtract(n, k) + 1.0)


def subset_sum_counts(scores: np.ndarray, most: int, size: int | None = None) -> np.ndarray:
    """``counts[a, ..., s]``: how many ``a``-element subsets of the items have integer ``scores`` summing
    to ``s``, for a = 0..``most`` (items with equal scores are still distinct items); ``scores`` is
    ``[n]``, or ``[columns, n]`` with -1 for "no item" (then one count table per column).

    These are the coefficients of the elementary symmetric polynomials e_a(q^score_1, ..., q^score_n).
    At the roots of unity the power sums p_k = sum_i q^(k score_i) are the scores' histogram Fourier-
    transformed and read at k times each frequency, and Newton's identities
    a e_a = sum_k (-1)^(k-1) e_(a-k) p_k then give every e_a: O(S most^2) for S possible sums, where the
    direct recursion over items costs O(S most n), and it runs on many columns at once. Error ~1e-16 of
    C(n, a) (tests/test_stats.py checks it against the recursion).
    """
    cols = np.atleast_2d(scores)
    if size is None:
        top = int(np.sort(cols, axis=1)[:, ::-1][:, :most].clip(0).sum(axis=1).max())
        size = spfft.next_fast_len(top + 1, real=True)
    hist = np.zeros((len(cols), size))
    row, item = np.nonzero(cols >= 0)
    np.add.at(hist, (row, cols[row, item]), 1.0)
    spectrum = spfft.fft(hist, axis=1)
    freq = np.arange(size // 2 + 1)  # the coefficients are real: half the spectrum determines the rest
    power = [spectrum[:, (k * freq) % size] for k in range(most + 1)]
    e = np.zeros((most + 1, len(cols), len(freq)), dtype=np.complex128)
    e[0] = 1.0
    for a in range(1, most + 1):
        acc = np.zeros((len(cols), len(freq)), dtype=np.complex128)
        for k in range(1, a + 1):
            if k % 2:
                acc += e[a - k] * power[k]
            else:
                acc -= e[a - k] * power[k]
        e[a] = acc / a
    counts = spfft.irfft(e, n=size, axis=-1)
    return counts[:, 0] if np.ndim(scores) == 1 else counts


EXACT_CELLS = 4_000_000  # complex numbers per batch of columns in the exact computation (~64 MB)


def exact_mann_whitney(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided p of the Mann-Whitney U per column from its exact permutation distribution, ties
    included, for non-negative data (SAE activations: the big tie is at zero). ``x``, ``y``: ``[n, columns]``
    or ``[n]``.

    Under the null every split of the pooled values into samples of these sizes is equally likely.
    With m the smaller sample, a its number of non-zero values and R their rank sum among the K non-zero
    values, U = R - a(a+1)/2 + a Z + (m - a) Z / 2, Z being the other sample's zeros. So U's distribution
    is a hypergeometric mixture over a of the distributions of R given a: the sum of a random a-subset of
    the non-zero midranks (:func:`subset_sum_counts`). Two-sided p = twice the smaller tail, capped at
    1, as ``scipy.stats.permutation_test`` computes it (tests/test_stats.py checks it by enumeration).
    """
    single = np.ndim(x) == 1
    x, y = np.atleast_2d(np.asarray(x, dtype=np.float64).T).T, np.atleast_2d(np.asarray(y, dtype=np.float64).T).T
    small, other = (x, y) if len(x) <= len(y) else (y, x)
    m, n = len(small), len(other)
    both = np.concatenate([small, other])
    nonzero = both != 0
    k = nonzero.sum(axis=0)
    # Zeros rank first, so a value's midrank among the non-zero values is its midrank minus the zeros.
    doubled = np.where(nonzero, np.rint(2.0 * (sps.rankdata(both, axis=0) - (m + n - k))), -1).astype(np.int64)
    a_obs = nonzero[:m].sum(axis=0)
    a = np.arange(m + 1)[:, None]
    possible = (a >= k - n) & (a <= k)
    with np.errstate(invalid="ignore"):
        log_w = np.where(possible, _log_comb(k, a) + _log_comb(m + n - k, m - a) - _log_comb(m + n, m), -np.inf)
    # Subsets bigger than where the hypergeometric weight is negligible cannot move p.
    last = np.maximum(np.where(log_w > NEGLIGIBLE, a, 0).max(axis=0), a_obs)
    top = np.take_along_axis(np.cumsum(np.sort(doubled.clip(0), axis=0)[::-1], axis=0), np.maximum(last - 1, 0)[None], 0)[0]
    p = np.ones(x.shape[1])
    order = np.argsort(top, kind="stable")
    start = 0
    while start < len(order):
        size = spfft.next_fast_len(int(top[order[start]]) + 1, real=True)
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * (last[order[start:stop + 1]].max() + 1) * spfft.next_fast_len(
                int(top[order[stop]]) + 1, real=True) <= EXACT_CELLS:
            stop += 1
        cols = order[start:stop]
        p[cols] = _exact_tails(doubled[:, cols], int(last[cols].max()), m, n, k[cols], a_obs[cols], log_w[:, cols])
        start = stop
    return p[0] if single else p


def _exact_tails(doubled, most, m, n, k, a_obs, log_w) -> np.ndarray:
    """The exact two-sided p of :func:`exact_mann_whitney` for a batch of columns."""
    counts = subset_sum_counts(doubled.T, most)  # [a, column, R]
    a = np.arange(most + 1)[:, None, None]
    with np.errstate(invalid="ignore", over="ignore"):
        weight = np.exp(log_w[: most + 1, :, None] - _log_comb(k[None, :, None], a))
    prob = np.where(np.isfinite(weight), np.clip(counts, 0.0, None) * np.nan_to_num(weight), 0.0)
    # 2U for every (a, column, R): integers, so the two tails compare exactly.
    two_u = np.arange(counts.shape[-1])[None, None, :] - a * (a + 1) + (m + a) * (n - k[None, :, None] + a)
    observed = (np.where(np.arange(len(doubled))[:, None] < m, doubled.clip(0), 0).sum(axis=0)
                - a_obs * (a_obs + 1) + (m + a_obs) * (n - k + a_obs))
    upper = (prob * (two_u >= observed[None, :, None])).sum(axis=(0, 2))
    lower = (prob * (two_u <= observed[None, :, None])).sum(axis=(0, 2))
    constant = (doubled.clip(0).max(axis=0) == doubled.clip(0).min(axis=0))  # every value tied: no information
    return np.where(constant, 1.0, np.clip(2.0 * np.minimum(upper, lower), P_FLOOR, 1.0))


def exact_signed_rank(d: np.ndarray) -> float:
    """Two-sided p of the Wilcoxon signed-rank statistic from its exact distribution, ties included:
    the non-zero differences ``d`` keep their |d| midranks and, under the null, each sign is a fair coin."""
    d = d[d != 0]
    if len(d) == 0:
        return 1.0
    doubled = np.rint(2.0 * sps.rankdata(np.abs(d))).astype(np.int64)
    counts = np.zeros(int(doubled.sum()) + 1)
    counts[0] = 1.0
    for s in doubled:  # each item adds its score with probability 1/2 (doubled midranks are >= 2)
        counts[s:] = counts[s:] + counts[:-s]
    counts /= counts.sum()
    observed = int(doubled[d > 0].sum())
    return float(np.clip(2.0 * min(counts[observed:].sum(), counts[: observed + 1].sum()), P_FLOOR, 1.0))


def fisher_two_sided(k_a: np.ndarray, n_a: int, k_b: np.ndarray, n_b: int) -> np.ndarray:
    """Two-sided Fisher exact p per feature that set A (``k_a`` of ``n_a`` prompts firing) and set B fire
    at different rates: the probability, margins fixed, of every table at most as likely as the observed
    one, exactly ``scipy.stats.fisher_exact``. Vectorised over features; memory [features, min(n_a, n_b) + 1].
    """
    k_a, k_b = np.asarray(k_a, dtype=np.int64), np.asarray(k_b, dtype=np.int64)
    if n_a > n_b:  # enumerate the smaller set's counts: the table is the same
        k_a, n_a, k_b, n_b = k_b, n_b, k_a, n_a
    k = (k_a + k_b)[:, None]
    a = np.arange(n_a + 1)[None, :]
    valid = (a <= k) & (k - a <= n_b)
    with np.errstate(invalid="ignore"):
        log_p = np.where(valid, _log_comb(k, a) + _log_comb(n_a + n_b - k, n_a - a), -np.inf)
    log_p -= _log_comb(n_a + n_b, n_a)
    observed = np.take_along_axis(log_p, k_a[:, None], axis=1)
    # scipy's relative tolerance for "as likely": tables equally likely in exact arithmetic tie here too.
    p = np.where(log_p <= observed + np.log1p(1e-7), np.exp(log_p), 0.0).sum(axis=1)
    return np.clip(p, 0.0, 1.0)
