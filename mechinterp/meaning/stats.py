"""Statistics that attach meanings to features: one group of prompts against a baseline.

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
    auroc = cat["u"] / (n1 * n2)
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
        auroc=auroc,
        effect_size=2.0 * auroc - 1.0,
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
