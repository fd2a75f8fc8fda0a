"""Chapter 2's analysis: which features tell each prompt group apart from the baseline.

The statistics themselves live in :mod:`mechinterp.stats`; this module runs them for every group the
way Chapter 2 does (discovery split, ranking, held-out re-test, always-on features) and returns typed
results that the script prints and writes, and that a notebook can read directly::

    result = contrast_groups(summaries.aggregates, labels, groups, "baseline", MeaningOptions())
    finding = result.findings["happy"]
    finding.top(1)[0].feature
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mechinterp import stats
from mechinterp.summaries import PromptAggregates


@dataclass
class MeaningOptions:
    """Options of the contrast.

    Attributes:
        agg: summarise each prompt by the feature's "max" or "mean" activation over its text tokens.
        alpha: false discovery rate for q-values.
        holdout: share of each group held out to re-test findings (0 = no held-out split).
        seed: seed of the discovery/held-out split.
        always_on: a feature firing in at least this share of the prompts of every group is "always on".
    """

    agg: str = "max"
    alpha: float = 0.05
    holdout: float = 0.0
    seed: int = 0
    always_on: float = 0.9


@dataclass
class Replication:
    """The held-out re-test of one feature that was significant in discovery."""

    auroc: float
    q_value: float  # BH over the re-tested features of this group
    replicated: bool  # same direction and q < alpha on the held-out prompts


@dataclass
class RankedFeature:
    """One ranked feature of a group, with the numbers the tables show."""

    rank: int
    feature: int
    position: int  # index into the group's Contrast arrays
    replication: Replication | None


@dataclass
class GroupFinding:
    """One group against the baseline.

    Attributes:
        group: the group's name.
        contrast: per tested feature statistics (see :class:`mechinterp.stats.Contrast`).
        order: positions into ``contrast`` in rank order (always-on features excluded).
        replication: held-out re-test per feature id, for the features significant in discovery.
    """

    group: str
    contrast: stats.Contrast
    order: np.ndarray
    replication: dict[int, Replication] = field(default_factory=dict)

    def n_significant(self, alpha: float) -> int:
        return int((self.contrast.q_value < alpha).sum())

    def top(self, k: int) -> list[RankedFeature]:
        """The ``k`` best-ranked features."""
        return [
            RankedFeature(r, int(self.contrast.tested[pos]), int(pos), self.replication.get(int(self.contrast.tested[pos])))
            for r, pos in enumerate(self.order[:k], start=1)
        ]

    def always_on_differences(self, always_on: np.ndarray, alpha: float) -> list[int]:
        """Positions into ``contrast`` of always-on features with q < alpha, smallest q first.

        They are left out of the ranking (they fire in nearly every prompt, so "fires here, not there" does
        not apply), but their strength can still differ a lot between groups, and that must not be hidden.
        """
        c = self.contrast
        mask = np.isin(c.tested, always_on) & (c.q_value < alpha)
        positions = np.flatnonzero(mask)
        return [int(p) for p in positions[np.argsort(c.q_value[positions], kind="stable")]]

    def rank_of_position(self) -> dict[int, int]:
        """Rank (1 = best) of each position into ``contrast`` that is ranked."""
        return {int(pos): r for r, pos in enumerate(self.order, start=1)}


@dataclass
class MeaningResult:
    """Chapter 2's result for every group.

    Attributes:
        baseline: the reference group.
        findings: one :class:`GroupFinding` per contrasted group, in file order.
        always_on: ids of the always-on features (not ranked).
        fired_fraction: per group, the share of its prompts in which each feature fires (``[d_sae]``).
        means: per group, each feature's mean over prompts of the per-prompt ``agg`` (``[d_sae]``).
        index: per group, the rows of its prompts in the aggregates.
        holdout: the share held out (0 = none).
    """

    baseline: str
    findings: dict[str, GroupFinding]
    always_on: np.ndarray
    fired_fraction: dict[str, np.ndarray]
    means: dict[str, np.ndarray]
    index: dict[str, np.ndarray]
    holdout: float


def contrast_groups(
    agg: PromptAggregates,
    labels: Sequence[str],
    groups: Sequence[str],
    baseline: str,
    options: MeaningOptions,
) -> MeaningResult:
    """Contrast every group in ``groups`` (other than ``baseline``) with the baseline.

    Args:
        agg: per-prompt summaries of every prompt (rows in the order of ``labels``).
        labels: the group of each prompt.
        groups: every group, baseline included, in display order.
        baseline: the reference group.
        options: see :class:`MeaningOptions`.
    """
    index = {g: np.flatnonzero(np.array(labels) == g) for g in groups}
    fired_frac = {g: agg.fire_fraction(idx) for g, idx in index.items()}
    always = stats.always_on(fired_frac, options.always_on)
    rng = np.random.default_rng(options.seed)
    splits = {
        g: stats.split_indices(len(idx), options.holdout, rng) if options.holdout else (np.arange(len(idx)), None)
        for g, idx in index.items()
    }
    findings = {
        group: _analyse(agg, options, index, splits, group, baseline, always)
        for group in groups if group != baseline
    }
    means = {g: agg.column_means(options.agg, idx) for g, idx in index.items()}
    return MeaningResult(baseline, findings, always, fired_frac, means, index, options.holdout)


def _analyse(agg, options, index, splits, group, baseline, always) -> GroupFinding:
    """Discovery statistics for ``group`` vs ``baseline``, its ranking, and the held-out re-test."""
    g_idx, b_idx = index[group], index[baseline]
    g_disc, g_hold = splits[group]
    b_disc, b_hold = splits[baseline]
    disc_rows_g, disc_rows_b = g_idx[g_disc], b_idx[b_disc]
    features = np.flatnonzero(agg.fired_any(np.concatenate([disc_rows_g, disc_rows_b])))
    x = agg.dense(options.agg, disc_rows_g, features)
    y = agg.dense(options.agg, disc_rows_b, features)
    c = stats.contrast(x, y, features)
    c.n_never_fired = agg.d_sae - len(features)
    order = stats.rank_order(c, exclude=always)
    replication: dict[int, Replication] = {}
    if g_hold is not None:
        significant = order[c.q_value[order] < options.alpha]
        feats = c.tested[significant]
        if len(feats):
            xh = agg.dense(options.agg, g_idx[g_hold], feats)
            yh = agg.dense(options.agg, b_idx[b_hold], feats)
            u, p = stats.mann_whitney(xh, yh)
            q = stats.benjamini_hochberg(p)
            auroc = u / (len(g_hold) * len(b_hold))
            same_dir = np.sign(auroc - 0.5) == np.sign(c.effect_size[significant])
            for f, a, qq, ok in zip(feats, auroc, q, same_dir & (q < options.alpha)):
                replication[int(f)] = Replication(float(a), float(qq), bool(ok))
    return GroupFinding(group, c, order, replication)
