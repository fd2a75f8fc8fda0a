"""Chapter 2's analysis: which features tell each prompt group apart from the baseline, and why.

The statistics themselves live in :mod:`mechinterp.meaning.stats` and :mod:`mechinterp.meaning.confounds`; this module
runs them for every group the way Chapter 2 does (discovery split, ranking, held-out re-test,
always-on features; with ``paired``, the Wilcoxon signed-rank test on line-matched prompts) and, given
the prompt texts, checks each contrast's design and gives every significant, replicated feature a
verdict (concept, lexical, positional, length or context). It returns typed results that the script
prints and writes, and that a notebook can read directly::

    result = contrast_groups(summaries.aggregates, labels, groups, "baseline", MeaningOptions(), texts=texts)
    finding = result.findings["happy"]
    best = finding.top(1)[0].feature
    finding.verdicts[best].verdict, finding.design.warnings
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mechinterp.core.summaries import PromptAggregates
from mechinterp.meaning import confounds, stats
from mechinterp.meaning.confounds import (
    ConfoundSettings,
    DesignReport,
    FeatureActivity,
    FeatureReport,
    TokenizedPrompts,
    Verdict,
)

# Model access for the token-injection test: prompt texts in, their per-prompt summaries out (Chapter
# 2 passes a cached encoder, so a rerun needs the model only for texts it has never seen).
PromptEncoder = Callable[[list[str]], PromptAggregates]

MANN_WHITNEY = "Mann-Whitney U"
WILCOXON = "Wilcoxon signed-rank (paired)"


@dataclass
class MeaningOptions:
    """Options of the contrast.

    Attributes:
        agg: summarise each prompt by the feature's "max" or "mean" activation over its text tokens.
        alpha: false discovery rate for q-values.
        holdout: share of each group held out to re-test findings (0 = no held-out split).
        seed: seed of the discovery/held-out split.
        always_on: a feature firing in at least this share of the prompts of every group is "always on".
        paired: line i of every group belongs with line i of the baseline (same frame, one word
            changed): the test is the Wilcoxon signed-rank test on the pairs, and one discovery/held-out
            split is shared by all groups so that pairs stay together. Every group must have as many
            prompts as the baseline.
        confounds: thresholds of the design checks, controls and verdicts (see
            :class:`mechinterp.meaning.confounds.ConfoundSettings`).
    """

    agg: str = "max"
    alpha: float = 0.05
    holdout: float = 0.0
    seed: int = 0
    always_on: float = 0.9
    paired: bool = False
    confounds: ConfoundSettings = field(default_factory=ConfoundSettings)

    def __post_init__(self) -> None:
        if self.agg not in ("max", "mean"):
            raise ValueError(f"agg must be 'max' or 'mean', got {self.agg!r}")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")


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
        contrast: per tested feature statistics (see :class:`mechinterp.meaning.stats.Contrast`).
        order: positions into ``contrast`` in rank order (always-on features excluded).
        replication: held-out re-test per feature id, for the features significant in discovery.
        design: how the group's prompts differ from the baseline's besides the concept (token length,
            stray tokens, sentence endings; with ``paired``, each pair's differing tokens). None when
            the texts were not given.
        reports: evidence, controlled re-tests and verdict per feature id, for every ranked feature
            significant in discovery (computed on all prompts of both sets).
        verdicts: feature id -> verdict, for the significant features that replicated (or, without a
            held-out split, were not re-tested); features that failed to replicate get none.
    """

    group: str
    contrast: stats.Contrast
    order: np.ndarray
    replication: dict[int, Replication] = field(default_factory=dict)
    design: DesignReport | None = None
    reports: dict[int, FeatureReport] = field(default_factory=dict)
    verdicts: dict[int, Verdict] = field(default_factory=dict)

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

    def verdict_counts(self) -> dict[str, int]:
        """How many features got each verdict, in the order of :data:`mechinterp.meaning.confounds.VERDICTS`."""
        counts = {v: 0 for v in confounds.VERDICTS}
        for v in self.verdicts.values():
            if v.verdict:
                counts[v.verdict] += 1
        return counts


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
        test: the test behind p and q (:data:`MANN_WHITNEY`, or :data:`WILCOXON` for paired prompts).
        injection_texts: edited prompts encoded for the token-injection test (all groups, each once).
    """

    baseline: str
    findings: dict[str, GroupFinding]
    always_on: np.ndarray
    fired_fraction: dict[str, np.ndarray]
    means: dict[str, np.ndarray]
    index: dict[str, np.ndarray]
    holdout: float
    test: str = MANN_WHITNEY
    injection_texts: int = 0


def contrast_groups(
    agg: PromptAggregates,
    labels: Sequence[str],
    groups: Sequence[str],
    baseline: str,
    options: MeaningOptions,
    texts: Sequence[str] | None = None,
    encode: PromptEncoder | None = None,
) -> MeaningResult:
    """Contrast every group in ``groups`` (other than ``baseline``) with the baseline.

    Args:
        agg: per-prompt summaries of every prompt (rows in the order of ``labels``).
        labels: the group of each prompt.
        groups: every group, baseline included, in display order.
        baseline: the reference group.
        options: see :class:`MeaningOptions`.
        texts: the prompt texts (in the order of ``labels``). With them, each finding also gets its
            design check and the evidence and verdicts of its significant features; the rows of
            ``agg`` must then carry their tokens (:func:`mechinterp.core.pipeline.summarise_prompts` stores them).
        encode: model access for the token-injection test (see :data:`PromptEncoder`); without it the
            lexical verdict rests on the token control alone.

    Raises:
        ValueError: ``paired`` with a group whose size differs from the baseline's.
    """
    index = {g: np.flatnonzero(np.array(labels) == g) for g in groups}
    if options.paired:
        uneven = [g for g in groups if len(index[g]) != len(index[baseline])]
        if uneven:
            raise ValueError(f"paired groups need as many prompts as the baseline ({len(index[baseline])}): "
                             + ", ".join(f"{g} has {len(index[g])}" for g in uneven))
    fired_frac = {g: agg.fire_fraction(idx) for g, idx in index.items()}
    always = stats.always_on(fired_frac, options.always_on)
    rng = np.random.default_rng(options.seed)
    if options.paired:
        # One split for every group, so that line i of a group and line i of the baseline stay together.
        shared = (stats.split_indices(len(index[baseline]), options.holdout, rng) if options.holdout
                  else (np.arange(len(index[baseline])), None))
        splits = {g: shared for g in index}
    else:
        splits = {
            g: stats.split_indices(len(idx), options.holdout, rng) if options.holdout else (np.arange(len(idx)), None)
            for g, idx in index.items()
        }
    findings = {
        group: _analyse(agg, options, index, splits, group, baseline, always)
        for group in groups if group != baseline
    }
    means = {g: agg.column_means(options.agg, idx) for g, idx in index.items()}
    result = MeaningResult(baseline, findings, always, fired_frac, means, index, options.holdout,
                           WILCOXON if options.paired else MANN_WHITNEY)
    if texts is not None:
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts for {len(labels)} labels")
        lookup = None
        if encode is not None:
            # Which edited prompts the injection tests need does not depend on their outcome, so a first
            # pass collects them for every group, one encode call serves them all (the model is loaded at
            # most once), and the second pass reads the results.
            recorder = _Recorder()
            for finding in findings.values():
                _judge(finding, agg, texts, index, baseline, options, recorder)
            lookup = _Lookup(recorder.texts, encode(recorder.texts) if recorder.texts else None, options.agg)
            result.injection_texts = len(recorder.texts)
        for finding in findings.values():
            _judge(finding, agg, texts, index, baseline, options, lookup)
    return result


def _test(x: np.ndarray, y: np.ndarray, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(auroc, p)`` per column of group ``x`` against baseline ``y``; rows are pairs when ``paired``."""
    u, p = stats.mann_whitney(x, y)
    if paired:
        p = confounds.wilcoxon_signed_rank(x, y).p_value
    return u / (x.shape[0] * y.shape[0]), p


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
    if options.paired:
        # Every column fired somewhere (features = fired_any), so stats.contrast kept them all, in order.
        c.p_value = confounds.wilcoxon_signed_rank(x, y).p_value
        c.q_value = stats.benjamini_hochberg(c.p_value)
    c.n_never_fired = agg.d_sae - len(features)
    order = stats.rank_order(c, exclude=always)
    replication: dict[int, Replication] = {}
    if g_hold is not None:
        significant = order[c.q_value[order] < options.alpha]
        feats = c.tested[significant]
        if len(feats):
            xh = agg.dense(options.agg, g_idx[g_hold], feats)
            yh = agg.dense(options.agg, b_idx[b_hold], feats)
            auroc, p = _test(xh, yh, options.paired)
            q = stats.benjamini_hochberg(p)
            same_dir = np.sign(auroc - 0.5) == np.sign(c.effect_size[significant])
            for f, a, qq, ok in zip(feats, auroc, q, same_dir & (q < options.alpha)):
                replication[int(f)] = Replication(float(a), float(qq), bool(ok))
    return GroupFinding(group, c, order, replication)


class _Recorder:
    """A stand-in encoder that only notes which edited prompts the injection tests ask for."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._seen: set[str] = set()

    def __call__(self, texts: list[str], features: np.ndarray) -> np.ndarray:
        for t in texts:
            if t not in self._seen:
                self._seen.add(t)
                self.texts.append(t)
        return np.zeros((len(texts), len(features)))


class _Lookup:
    """The injection tests' encoder: the same per-prompt statistic as the contrast, read from summaries
    of the edited prompts encoded in advance."""

    def __init__(self, texts: list[str], encoded: PromptAggregates | None, agg: str):
        self.row = {t: i for i, t in enumerate(texts)}
        self.encoded = encoded
        self.agg = agg

    def __call__(self, texts: list[str], features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.int64)
        if not texts:
            return np.zeros((0, len(features)))
        return self.encoded.dense(self.agg, [self.row[t] for t in texts], features)


def tokenized_prompts(agg: PromptAggregates, texts: Sequence[str], rows: np.ndarray) -> TokenizedPrompts:
    """The prompts at ``rows`` as the model saw them (text tokens and their strings, BOS excluded)."""
    picked = [agg.rows[i] for i in rows]
    if any(len(r.tokens) == 0 or len(r.token_strs) != len(r.tokens) for r in picked):
        raise ValueError("the per-prompt summaries carry no tokens; make them with "
                         "mechinterp.core.pipeline.summarise_prompts, which stores them")
    return TokenizedPrompts([texts[i] for i in rows], [r.tokens for r in picked], [r.token_strs for r in picked])


def _judge(finding: GroupFinding, agg: PromptAggregates, texts: Sequence[str], index: dict[str, np.ndarray],
           baseline: str, options: MeaningOptions, encode: confounds.Encoder | None) -> None:
    """The design check of one contrast, and evidence and verdicts for its significant features.

    The controls re-test features already selected, so they use every prompt of both sets (discovery
    and held-out). Only features that replicated (or were not re-tested) get a verdict and the
    model-running injection test; the others get their evidence, marked as not judged.
    """
    group, s = finding.group, options.confounds
    finding.reports, finding.verdicts = {}, {}
    g_rows, b_rows = index[group], index[baseline]
    g_tok, b_tok = tokenized_prompts(agg, texts, g_rows), tokenized_prompts(agg, texts, b_rows)
    finding.design = confounds.check_design(g_tok, b_tok, group, baseline, paired=options.paired, settings=s)
    c = finding.contrast
    significant = [int(c.tested[p]) for p in finding.order if c.q_value[p] < options.alpha]

    def judged(f: int) -> bool:
        rep = finding.replication.get(f)
        return rep.replicated if rep is not None else not options.holdout

    for judge in (True, False):
        feats = np.array([f for f in significant if judged(f) == judge], dtype=np.int64)
        if not len(feats):
            continue
        g_act = FeatureActivity.from_rows([agg.rows[i] for i in g_rows], feats, options.agg)
        b_act = FeatureActivity.from_rows([agg.rows[i] for i in b_rows], feats, options.agg)
        reports = confounds.explain_features(g_tok, b_tok, g_act, b_act, group, baseline,
                                             encode=encode if judge else None, settings=s)
        for rep in reports:
            f = rep.evidence.feature
            if judge:
                finding.verdicts[f] = rep.verdict
            else:
                rep.verdict = Verdict(f, "", "not judged: it did not replicate on the held-out prompts")
            finding.reports[f] = rep


# --------------------------------------------------------------------------------------------------
# Tables of the design checks and the evidence (the script writes them; a notebook can too)

DESIGN_HEADER = [
    "group", "baseline", "check", "item", "group_value", "baseline_value", "measure", "test", "effect_size",
    "p_value", "q_value", "flagged",
]


def _num(x: float | None, digits: int = 4) -> float | str:
    return "" if x is None or not np.isfinite(x) else round(float(x), digits)


def _p(x: float | None) -> str:
    return "" if x is None or not np.isfinite(x) else f"{float(x):.4g}"


def design_rows(design: DesignReport, settings: ConfoundSettings) -> list[list[object]]:
    """One row per design check of a contrast (:data:`DESIGN_HEADER`): token length, every token whose
    share of prompts differs at p < alpha, every sentence ending; ``flagged`` says which warned."""
    g, b, n = design.group, design.baseline, design.length
    flag = "yes" if n.differs else "no"
    rows: list[list[object]] = [
        [g, b, "token length", "tokens per prompt", _num(n.mean_group), _num(n.mean_baseline), "mean", n.test,
         _num(n.effect_size), _p(n.p_value), "", flag],
        [g, b, "token length", "tokens per prompt", n.median_group, n.median_baseline, "median", "", "", "", "", flag],
    ]
    for t in design.tokens:
        rows.append([
            g, b, "token", repr(t.token), t.prompts_group, t.prompts_baseline,
            f"prompts containing it ({t.count_group} / {t.count_baseline} occurrences)",
            f"Fisher exact, one-sided (more in {g if t.more_in == 'group' else b})", "", _p(t.p_value),
            _p(t.q_value), "yes" if t.q_value < settings.token_warn_q else "no",
        ])
    for e in design.endings:
        rows.append([g, b, "sentence ending", repr(e.ending) if e.ending != "none" else "none", e.group, e.baseline,
                     "prompts ending with it", "Fisher exact, two-sided", "", _p(e.p_value), "",
                     "yes" if e.p_value < settings.ending_warn_p else "no"])
    return rows


EVIDENCE_HEADER = ["group", "baseline", "rank", "replicated", *FeatureReport.HEADER]


def evidence_rows(finding: GroupFinding, baseline: str) -> list[list[object]]:
    """One row per significant ranked feature of a contrast (:data:`EVIDENCE_HEADER`), best rank first:
    its peak tokens, positions, length correlation, the four controls, generalisation and injection."""
    rank_of = finding.rank_of_position()
    position = {int(f): p for p, f in enumerate(finding.contrast.tested)}
    rows = []
    for f, rep in sorted(finding.reports.items(), key=lambda kv: rank_of[position[kv[0]]]):
        h = finding.replication.get(f)
        replicated = ("yes" if h.replicated else "no") if h else "not tested"
        rows.append([finding.group, baseline, rank_of[position[f]], replicated, *rep.row()])
    return rows
