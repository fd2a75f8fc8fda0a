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

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

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


def contrast(x: np.ndarray, y: np.ndarray, features: np.ndarray | None = None) -> Contrast:
    """Compare group ``x`` with baseline ``y`` feature by feature (vectorised, in feature chunks).

    Args:
        x: ``[n_group, n_features]`` per-prompt activations of the group.
        y: ``[n_baseline, n_features]`` per-prompt activations of the baseline.
        features: the feature ids of the columns (default ``arange(n_features)``).
    """
    if features is None:
        features = np.arange(x.shape[1])
    fired = (x > 0).any(axis=0) | (y > 0).any(axis=0)
    cols = np.flatnonzero(fired)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("u", "p", "d")}
    for start in range(0, len(cols), CHUNK):
        block = cols[start : start + CHUNK]
        xb, yb = x[:, block], y[:, block]
        u, p = mann_whitney(xb, yb)
        parts["u"].append(u)
        parts["p"].append(p)
        parts["d"].append(cohens_d(xb.astype(np.float64), yb.astype(np.float64)))
    cat = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()}
    n1, n2 = x.shape[0], y.shape[0]
    a = cat["u"] / (n1 * n2)
    xs, ys = x[:, cols], y[:, cols]
    return Contrast(
        tested=np.asarray(features)[cols],
        n_group=n1,
        n_baseline=n2,
        mean_group=xs.mean(axis=0),
        mean_baseline=ys.mean(axis=0),
        frac_group=(xs > 0).mean(axis=0),
        frac_baseline=(ys > 0).mean(axis=0),
        u_stat=cat["u"],
        auroc=a,
        effect_size=2.0 * a - 1.0,
        cohens_d=cat["d"],
        p_value=cat["p"],
        q_value=benjamini_hochberg(cat["p"]),
        n_never_fired=int((~fired).sum()),
    )


def rank_order(c: Contrast, exclude: np.ndarray | None = None) -> np.ndarray:
    """Positions into ``c.tested``, strongest finding first.

    Criterion: smallest q-value; ties (common when several features separate the groups perfectly)
    broken by the larger |effect size|, then by the larger absolute difference in mean activation.
    Features in ``exclude`` (e.g. always-on) are left out.
    """
    keep = np.ones(len(c.tested), dtype=bool) if exclude is None else ~np.isin(c.tested, exclude)
    pos = np.flatnonzero(keep)
    keys = (
        -np.abs(c.mean_group[pos] - c.mean_baseline[pos]),
        -np.abs(c.effect_size[pos]),
        c.q_value[pos],
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


def auroc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``[n_features]`` AUROC of x over y (ties count half), via the Mann-Whitney U."""
    u, _ = mann_whitney(np.atleast_2d(x.T).T, np.atleast_2d(y.T).T)
    return u / (x.shape[0] * y.shape[0])
