"""Chapter 2's analysis: which features tell each prompt group apart from the baseline, and why.

The statistics themselves live in :mod:`mechinterp.meaning.stats`, the design checks in
:mod:`mechinterp.meaning.design` and the verdicts in :mod:`mechinterp.meaning.verdicts`; this module
runs them for every group the way Chapter 2 does (discovery split, ranking, held-out re-test,
always-on features; with ``paired``, the Wilcoxon signed-rank test on line-matched prompts) and, given
the prompt texts, checks each contrast's design and gives every significant, replicated feature a
verdict (concept, lexical, positional, length or context). It returns typed results that the script
prints and writes, and that a notebook reads directly (:func:`mechinterp.meaning.run.contrast_prompts`
does the whole run from the prompt files)::

    result = contrast_groups(summaries.aggregates, labels, groups, "baseline", MeaningOptions(), texts=texts)
    happy = result.group("happy")
    best = happy.top(1)[0]
    best.feature, best.q, best.verdict, happy.design.warnings
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from mechinterp.core.pipeline import Summaries
from mechinterp.core.prompts import PromptSets
from mechinterp.core.summaries import PromptAggregates
from mechinterp.meaning import stats
from mechinterp.meaning import themes
from mechinterp.meaning.design import DesignReport, TokenizedPrompts, check_design
from mechinterp.meaning.families import CONCEPT_SPLIT, Family, find_families, member_verdict
from mechinterp.meaning.options import MeaningOptions
from mechinterp.meaning.themes import WordSet
from mechinterp.meaning.verdicts import (
    CONCEPT,
    CONTEXT,
    VERDICTS,
    Encoder,
    FeatureActivity,
    FeatureReport,
    Verdict,
    explain_features,
)

# Model access for the token-injection test: prompt texts in, their per-prompt summaries out (Chapter
# 2 passes a cached encoder, so a rerun needs the model only for texts it has never seen).
PromptEncoder = Callable[[list[str]], PromptAggregates]

MANN_WHITNEY = "Mann-Whitney U"
WILCOXON = "Wilcoxon signed-rank (paired)"
REPR_TOP = 3  # features named in a finding's repr


@dataclass
class Replication:
    """The held-out re-test of one feature that was significant in discovery."""

    auroc: float
    q_value: float  # BH over the re-tested features of this group
    replicated: bool  # same direction and q < alpha on the held-out prompts


@dataclass(repr=False)
class RankedFeature:
    """One ranked feature of a group, with the numbers the tables show.

    Attributes:
        rank: 1 = best (significant features by |AUROC - 0.5|, then the rest by q; see
            :func:`mechinterp.meaning.stats.rank_order`).
        feature: the SAE feature id.
        position: index into the group's :class:`~mechinterp.meaning.stats.Contrast` arrays.
        replication: the held-out re-test (None: not re-tested).
        q, p, auroc: its q-value, p-value and AUROC (group over baseline) in discovery.
        frac_group, frac_baseline: the share of discovery prompts of each set in which it fires.
        verdict: concept, lexical, positional, length or context; None when it was not judged (not
            significant, or not replicated).
        evidence: the verdict's one-sentence reason (None when not judged).
    """

    rank: int
    feature: int
    position: int
    replication: Replication | None
    q: float = float("nan")
    p: float = float("nan")
    auroc: float = float("nan")
    frac_group: float = float("nan")
    frac_baseline: float = float("nan")
    verdict: str | None = None
    evidence: str | None = None

    @property
    def replicated(self) -> bool | None:
        """Same direction and significant on the held-out prompts; None when not re-tested."""
        return None if self.replication is None else self.replication.replicated

    def __repr__(self) -> str:
        return (f"RankedFeature(rank={self.rank}, feature={self.feature}, q={self.q:.2g}, auroc={self.auroc:.2f}, "
                f"fires {self.frac_group:.0%} vs {self.frac_baseline:.0%}, replicated={self.replicated}, "
                f"verdict={self.verdict!r})")


@dataclass(repr=False)
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
        baseline: the baseline's name.
        alpha: the false discovery rate that "significant" means here.
        families: concepts split across several judged features (:mod:`mechinterp.meaning.families`);
            their members' verdict is ``concept (split)``.
        word_sets: the word set of every concept finding (features and families), with how many
            prompts of each set hold its words and a flag when it may not be the group's concept
            (:mod:`mechinterp.meaning.themes`).
        themes: two or more concept findings rest on disjoint word sets.
        stated_words: the concept words the group's file states (``# concept: ...``), or None.
    """

    group: str
    contrast: stats.Contrast
    order: np.ndarray
    replication: dict[int, Replication] = field(default_factory=dict)
    design: DesignReport | None = None
    reports: dict[int, FeatureReport] = field(default_factory=dict)
    verdicts: dict[int, Verdict] = field(default_factory=dict)
    baseline: str = "baseline"
    alpha: float = 0.05
    families: list[Family] = field(default_factory=list)
    word_sets: list[WordSet] = field(default_factory=list)
    themes: bool = False
    stated_words: list[str] | None = None

    def family_of(self, feature: int) -> Family | None:
        """The family a feature belongs to, if any."""
        return next((fam for fam in self.families if feature in fam.members), None)

    def word_set_of(self, feature: int) -> WordSet | None:
        """The word set of the concept finding (the feature, or its family) a feature belongs to."""
        return next((w for w in self.word_sets if feature in w.features), None)

    def n_significant(self, alpha: float | None = None) -> int:
        """Tested features with q < ``alpha`` (default: the finding's own)."""
        return int((self.contrast.q_value < (self.alpha if alpha is None else alpha)).sum())

    def top(self, k: int | None = None) -> list[RankedFeature]:
        """The ``k`` best-ranked features (all of them when ``k`` is None)."""
        return [self._ranked(r, int(pos)) for r, pos in enumerate(self.order[:k], start=1)]

    def _ranked(self, rank: int, pos: int) -> RankedFeature:
        c, f = self.contrast, int(self.contrast.tested[pos])
        v = self.verdicts.get(f)
        return RankedFeature(
            rank, f, pos, self.replication.get(f), q=float(c.q_value[pos]), p=float(c.p_value[pos]),
            auroc=float(c.auroc[pos]), frac_group=float(c.frac_group[pos]), frac_baseline=float(c.frac_baseline[pos]),
            verdict=(v.verdict or None) if v else None, evidence=v.evidence if v else None,
        )

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
        """How many features got each verdict, in the order of :data:`mechinterp.meaning.verdicts.VERDICTS`."""
        counts = {v: 0 for v in (CONCEPT, CONCEPT_SPLIT, *VERDICTS[1:])}
        for v in self.verdicts.values():
            if v.verdict:
                counts[v.verdict] += 1
        return counts

    def __repr__(self) -> str:
        replicated = sum(h.replicated for h in self.replication.values())
        counts = ", ".join(f"{n} {v}" for v, n in self.verdict_counts().items() if n)
        best = [r for r in self.top(REPR_TOP) if r.q < self.alpha]
        shown = ", ".join(_short(r) for r in best) or "none"
        return (f"GroupFinding({self.group!r} vs {self.baseline!r}: {self.n_significant()} of "
                f"{len(self.contrast.tested)} tested at q < {self.alpha:g}, {replicated} replicated"
                + (f"; verdicts {counts}" if counts else "") + f"; top: {shown})")


def _short(r: RankedFeature) -> str:
    return f"#{r.feature}" + (f" {r.verdict}" if r.verdict else "") + f" q={r.q:.2g}"


@dataclass(repr=False)
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
        alpha: the false discovery rate that "significant" means here.
        prompts, summaries: the prompt sets and their per-prompt summaries (with what the encoding
            cost), when the run started from the prompt files (:func:`mechinterp.meaning.run.contrast_prompts`).
        injection_runs: per encoding call of the injection test, its cache ``hits``, ``misses``,
            ``model_loaded`` and ``seconds``.
        seconds: wall-clock seconds per stage ("load", "encode", "cache", "statistics").
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
    alpha: float = 0.05
    prompts: PromptSets | None = None
    summaries: Summaries | None = None
    injection_runs: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def group(self, name: str) -> GroupFinding:
        """The finding of one contrasted group."""
        if name not in self.findings:
            raise KeyError(f"no group {name!r}; the contrasted groups are {', '.join(self.findings)} "
                           f"(the baseline {self.baseline!r} is not contrasted with itself)")
        return self.findings[name]

    @property
    def groups(self) -> list[str]:
        """The contrasted groups (the baseline excluded), in file order."""
        return list(self.findings)

    def __repr__(self) -> str:
        n = sum(f.n_significant() for f in self.findings.values())
        tops = []
        for name, finding in self.findings.items():
            best = finding.top(1)
            tops.append(f"{name} " + (_short(best[0]) if best and best[0].q < self.alpha else "none"))
        split = f"holdout {self.holdout:g}" if self.holdout else "no holdout"
        return (f"MeaningResult(groups={self.groups!r}, baseline={self.baseline!r}, {self.test}, {split}, "
                f"{n} significant at q < {self.alpha:g}, top: {', '.join(tops)})")


def contrast_groups(
    agg: PromptAggregates,
    labels: Sequence[str],
    groups: Sequence[str],
    baseline: str,
    options: MeaningOptions,
    texts: Sequence[str] | None = None,
    encode: PromptEncoder | None = None,
    concept_words: dict[str, list[str]] | None = None,
) -> MeaningResult:
    """Contrast every group in ``groups`` (other than ``baseline``) with the baseline.

    Args:
        agg: per-prompt summaries of every prompt (rows in the order of ``labels``).
        labels: the group of each prompt.
        groups: every group, baseline included, in display order.
        baseline: the reference group.
        options: see :class:`~mechinterp.meaning.options.MeaningOptions`; a ``holdout`` of None is
            resolved from the group sizes (:meth:`~mechinterp.meaning.options.MeaningOptions.holdout_for`).
        texts: the prompt texts (in the order of ``labels``). With them, each finding also gets its
            design check and the evidence and verdicts of its significant features; the rows of
            ``agg`` must then carry their tokens (:func:`mechinterp.core.pipeline.summarise_prompts` stores them).
        encode: model access for the token-injection test (see :data:`PromptEncoder`); without it the
            lexical verdict rests on the token control alone.
        concept_words: per group, the words its file states as the concept (see
            :func:`mechinterp.core.prompts.concept_words`); a finding resting on other words is then not
            a concept of that group.

    Raises:
        ValueError: ``paired`` with a group whose size differs from the baseline's.
    """
    index = {g: np.flatnonzero(np.array(labels) == g) for g in groups}
    if options.paired:
        uneven = [g for g in groups if len(index[g]) != len(index[baseline])]
        if uneven:
            raise ValueError(f"paired groups need as many prompts as the baseline ({len(index[baseline])}): "
                             + ", ".join(f"{g} has {len(index[g])}" for g in uneven))
    if texts is not None and len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts for {len(labels)} labels")
    holdout = options.holdout_for({g: len(idx) for g, idx in index.items()})
    fired_frac = {g: agg.fire_fraction(idx) for g, idx in index.items()}
    always = stats.always_on(fired_frac, options.always_on)
    splits = _splits(index, baseline, holdout, options)
    findings = {
        group: _analyse(agg, options, index, splits, group, baseline, always)
        for group in groups if group != baseline
    }
    for group, words in (concept_words or {}).items():
        if group in findings and words:
            findings[group].stated_words = list(words)
    means = {g: agg.column_means(options.agg, idx) for g, idx in index.items()}
    result = MeaningResult(baseline, findings, always, fired_frac, means, index, holdout,
                           WILCOXON if options.paired else MANN_WHITNEY, alpha=options.alpha)
    if texts is not None:
        _judge_all(result, agg, texts, options, encode)
    return result


def _splits(index: dict[str, np.ndarray], baseline: str, holdout: float,
            options: MeaningOptions) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Per group, the (discovery, held-out) positions among its prompts (held-out None: no split)."""
    rng = np.random.default_rng(options.seed)
    if options.paired:
        # One split for every group, so that line i of a group and line i of the baseline stay together.
        shared = (stats.split_indices(len(index[baseline]), holdout, rng) if holdout
                  else (np.arange(len(index[baseline])), None))
        return {g: shared for g in index}
    return {
        g: stats.split_indices(len(idx), holdout, rng) if holdout else (np.arange(len(idx)), None)
        for g, idx in index.items()
    }


def _test(x: np.ndarray, y: np.ndarray, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(auroc, p)`` per column of group ``x`` against baseline ``y``; rows are pairs when ``paired``."""
    u, p, _ = stats.rank_test(x, y)
    if paired:
        p, _ = stats.paired_rank_test(x, y)
    return u / (x.shape[0] * y.shape[0]), p


def _blocks(agg: PromptAggregates, how: str, rows_g: np.ndarray, rows_b: np.ndarray,
            features: np.ndarray) -> Iterator[stats.Block]:
    """The two sets' per-prompt values, :data:`~mechinterp.meaning.stats.CHUNK` features at a time: a
    dense ``[prompts, features]`` array of 10,000 prompts and 20,000 fired features would take 800 MB."""
    for start in range(0, len(features), stats.CHUNK):
        block = features[start:start + stats.CHUNK]
        yield block, agg.dense(how, rows_g, block), agg.dense(how, rows_b, block)


def _analyse(agg, options, index, splits, group, baseline, always) -> GroupFinding:
    """Discovery statistics for ``group`` vs ``baseline``, its ranking, and the held-out re-test."""
    g_idx, b_idx = index[group], index[baseline]
    g_disc, g_hold = splits[group]
    b_disc, b_hold = splits[baseline]
    disc_rows_g, disc_rows_b = g_idx[g_disc], b_idx[b_disc]
    features = np.flatnonzero(agg.fired_any(np.concatenate([disc_rows_g, disc_rows_b])))
    c = stats.contrast_blocks(_blocks(agg, options.agg, disc_rows_g, disc_rows_b, features),
                              len(disc_rows_g), len(disc_rows_b), paired=options.paired)
    c.n_never_fired = agg.d_sae - len(c.tested)
    order = stats.rank_order(c, exclude=always, alpha=options.alpha)
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
    return GroupFinding(group, c, order, replication, baseline=baseline, alpha=options.alpha)


def _judge_all(result: MeaningResult, agg: PromptAggregates, texts: Sequence[str], options: MeaningOptions,
               encode: PromptEncoder | None) -> None:
    """Every finding's design check, and evidence and verdicts for its significant features."""
    lookup = None
    if encode is not None:
        # Which edited prompts the injection tests need does not depend on their outcome, so a first
        # pass collects them for every group, one encode call serves them all (the model is loaded at
        # most once), and the second pass reads the results.
        recorder = _Recorder()
        for finding in result.findings.values():
            _judge(finding, agg, texts, result, options, recorder, final=False)
        lookup = _Lookup(recorder.texts, encode(recorder.texts) if recorder.texts else None, options.agg)
        result.injection_texts = len(recorder.texts)
    for finding in result.findings.values():
        _judge(finding, agg, texts, result, options, lookup)


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


def _judge(finding: GroupFinding, agg: PromptAggregates, texts: Sequence[str], result: MeaningResult,
           options: MeaningOptions, encode: Encoder | None, final: bool = True) -> None:
    """The design check of one contrast, and evidence and verdicts for its significant features.

    The controls re-test features already selected, so they use every prompt of both sets (discovery
    and held-out). Only features that replicated (or were not re-tested) get a verdict and the
    model-running injection test; the others get their evidence, marked as not judged.
    """
    group, baseline, s = finding.group, result.baseline, options.confounds
    finding.reports, finding.verdicts = {}, {}
    g_rows, b_rows = result.index[group], result.index[baseline]
    g_tok, b_tok = tokenized_prompts(agg, texts, g_rows), tokenized_prompts(agg, texts, b_rows)
    finding.design = check_design(g_tok, b_tok, group, baseline, paired=options.paired, settings=s)
    c = finding.contrast
    significant = [int(c.tested[p]) for p in finding.order if c.q_value[p] < options.alpha]

    def judged(f: int) -> bool:
        rep = finding.replication.get(f)
        return rep.replicated if rep is not None else not result.holdout

    for judge in (True, False):
        feats = np.array([f for f in significant if judged(f) == judge], dtype=np.int64)
        if not len(feats):
            continue
        g_act = FeatureActivity.from_rows([agg.rows[i] for i in g_rows], feats, options.agg)
        b_act = FeatureActivity.from_rows([agg.rows[i] for i in b_rows], feats, options.agg)
        reports = explain_features(g_tok, b_tok, g_act, b_act, group, baseline,
                                   encode=encode if judge else None, settings=s)
        if judge and final:
            finding.families = find_families(g_tok, b_tok, g_act, b_act, reports, (group, baseline), s)
        for rep in reports:
            f = rep.evidence.feature
            if judge:
                finding.verdicts[f] = rep.verdict
            else:
                rep.verdict = Verdict(f, "", "not judged: it did not replicate on the held-out prompts")
            finding.reports[f] = rep
    if final:
        _word_sets(finding, g_tok, b_tok, options.paired)


def _word_sets(finding: GroupFinding, g_tok: TokenizedPrompts, b_tok: TokenizedPrompts, paired: bool) -> None:
    """Families' members get ``concept (split)``; every concept finding gets its word set, flags for a
    second theme or low coverage, and, where the group's file states its concept words, a finding that
    rests on other words loses its concept verdict."""
    for fam in finding.families:
        for f in fam.members:
            finding.verdicts[f] = member_verdict(fam, finding.verdicts[f])
    stated = finding.stated_words
    sets = [themes.word_set(f"#{f}", [f], finding.reports[f].evidence.separating_tokens, g_tok, b_tok, paired, stated)
            for f, v in finding.verdicts.items() if v.verdict == CONCEPT]
    sets += [themes.word_set(fam.name, fam.members, fam.words, g_tok, b_tok, paired, stated)
             for fam in finding.families]
    finding.themes = themes.flag_themes(sets, finding.group)
    finding.word_sets = sorted(sets, key=lambda w: (-w.coverage, w.features))
    for w in sets:
        if w.stated_share is None or w.stated_share >= themes.STATED_SHARE:
            continue
        for f in w.features:
            old = finding.verdicts[f]
            finding.verdicts[f] = Verdict(f, CONTEXT, (
                f"not a concept of {finding.group}: it rests on {' '.join(map(repr, w.words[:6]))}, not on the "
                f"stated concept words ({', '.join(stated[:6])}{' ...' if len(stated) > 6 else ''}); "
                f"as found: {old.evidence}"))
