"""Chapter 2's presentation: the terminal text, the CSV tables and the run record's facts.

The analysis modules return data (:class:`~mechinterp.meaning.contrast.MeaningResult` and what it holds);
this module turns it into what a person reads. Text comes back as lines (the script prints them, a
notebook may too), tables as rows under a header. The figures (MI2, MI3, MI4) are in
:mod:`mechinterp.meaning.figures`.

* tables: ``feature_stats.csv``, ``always_on_features.csv``, ``design_checks.csv`` (+ ``design_pairs.csv``
  when paired), ``feature_evidence.csv`` and ``concept_word_sets.csv`` (:func:`write_tables`);
* terminal: the design checks, and per group the top features with their verdicts (:func:`summary_lines`);
* run record: what the run's record says about its inputs, counts, controls and verdicts (:func:`record_facts`).
"""

from __future__ import annotations

import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mechinterp.core import constants
from mechinterp.core.io import OutputFolder
from mechinterp.core.loading import neuronpedia_url
from mechinterp.core.pipeline import Summaries
from mechinterp.core.positions import BOS_ZERO, model_position
from mechinterp.core.prompts import PromptSets
from mechinterp.core.provenance import PROVENANCE_COLUMNS
from mechinterp.core.tables import WIDTH, format_table, plural, wrapped
from mechinterp.meaning import themes
from mechinterp.meaning.contrast import GroupFinding, MeaningResult
from mechinterp.meaning.design import DesignReport
from mechinterp.meaning.families import CONCEPT_SPLIT
from mechinterp.meaning.options import ConfoundSettings, MeaningOptions
from mechinterp.meaning.themes import TOPIC
from mechinterp.meaning.verdicts import FeatureReport

PAIRS_SHOWN = 3  # pairs printed per group with paired prompts (all of them are in DESIGN_PAIRS_CSV)


def _inputs(result: MeaningResult) -> tuple[PromptSets, Summaries]:
    """The prompt sets and summaries a result was computed from (results of contrast_prompts carry them)."""
    if result.prompts is None or result.summaries is None:
        raise ValueError("this result carries no prompt sets or summaries; make it with "
                         "mechinterp.meaning.run.contrast_prompts")
    return result.prompts, result.summaries


# --------------------------------------------------------------------------------------------------
# Tables


def _six(x: float) -> float:
    return round(float(x), 6)


def _num(x: float | None, digits: int = 4) -> float | str:
    return "" if x is None or not np.isfinite(x) else round(float(x), digits)


def _p(x: float | None) -> str:
    return "" if x is None or not np.isfinite(x) else f"{float(x):.4g}"


STATS_HEADER = [
    "group", "feature", "rank", "direction", "mean_group", "mean_baseline", "frac_active_group",
    "frac_active_baseline", "auroc", "effect_size", "cohens_d", "p_value", "q_value", "test", "p_method",
    "p_firing_fisher", "holdout_auroc", "holdout_q_value", "replicated", "verdict", "evidence", "family", "words",
    "word_set_flag", "always_on", "neuronpedia_url",
    "alpha", *PROVENANCE_COLUMNS,
]


def write_tables(out: OutputFolder, result: MeaningResult, options: MeaningOptions) -> list[Path]:
    """feature_stats.csv (every tested feature of every group), always_on_features.csv,
    design_checks.csv (+ design_pairs.csv when paired) and feature_evidence.csv; returns the paths.

    Every row of the first two carries the model, SAE and hook (so Chapters 3, 4 and 6 can refuse a
    file made with another SAE), and feature_stats.csv the false discovery rate the significance was
    judged at.
    """
    sets, summaries = _inputs(result)
    info, groups = summaries.info, list(sets.groups)
    neuronpedia_id, stamp = info.neuronpedia_id, info.provenance.row()
    written = [
        out.write_csv(constants.FEATURE_STATS_CSV, STATS_HEADER, stats_rows(result, neuronpedia_id, stamp)),
        out.write_csv(
            constants.ALWAYS_ON_CSV,
            ["feature", *[f"frac_active_{g}" for g in groups], *[f"mean_{g}" for g in groups], "neuronpedia_url",
             *PROVENANCE_COLUMNS],
            [[int(f), *[_six(result.fired_fraction[g][f]) for g in groups], *[_six(result.means[g][f]) for g in groups],
              neuronpedia_url(neuronpedia_id, int(f)), *stamp] for f in result.always_on],
        ),
    ]
    designs = [f.design for f in result.findings.values() if f.design is not None]
    written.append(out.write_csv(constants.DESIGN_CSV, DESIGN_HEADER,
                                 [r for d in designs for r in design_rows(d, options.confounds)]))
    if any(d.pairs is not None for d in designs):
        written.append(out.write_csv(constants.DESIGN_PAIRS_CSV, PAIR_HEADER, [r for d in designs for r in pair_rows(d)]))
    evidence = [r for f in result.findings.values() for r in evidence_rows(f)]
    written.append(out.write_csv(constants.EVIDENCE_CSV, EVIDENCE_HEADER, evidence))
    written.append(out.write_csv(constants.WORD_SETS_CSV, WORD_SET_HEADER,
                                 [r for f in result.findings.values() for r in word_set_rows(f)]))
    return written


def stats_rows(result: MeaningResult, neuronpedia_id: str | None, stamp: list[str]) -> list[list[object]]:
    """One row per tested feature of every group (:data:`STATS_HEADER`), in feature order."""
    always = set(result.always_on.tolist())
    rows = []
    for group, finding in result.findings.items():
        c = finding.contrast
        rank_of = finding.rank_of_position()
        for pos in range(len(c.tested)):
            f = int(c.tested[pos])
            h, v = finding.replication.get(f), finding.verdicts.get(f)
            fam, ws = finding.family_of(f), finding.word_set_of(f)
            rows.append([
                group, f, rank_of.get(pos, ""), {1: "up", -1: "down", 0: "none"}[int(c.direction[pos])],
                _six(c.mean_group[pos]), _six(c.mean_baseline[pos]), _six(c.frac_group[pos]),
                _six(c.frac_baseline[pos]), _six(c.auroc[pos]), _six(c.effect_size[pos]), _six(c.cohens_d[pos]),
                f"{c.p_value[pos]:.6g}", f"{c.q_value[pos]:.6g}", result.test,
                "exact" if c.exact is not None and c.exact[pos] else "normal approximation",
                f"{c.p_firing[pos]:.6g}" if c.p_firing is not None else "", _six(h.auroc) if h else "",
                f"{h.q_value:.6g}" if h else "", ("yes" if h.replicated else "no") if h else "not tested",
                v.verdict if v else "", v.evidence if v else "", fam.label if fam else "",
                " ".join(map(repr, ws.words)) if ws else "", ws.flag if ws else "", "yes" if f in always else "no",
                neuronpedia_url(neuronpedia_id, f), result.alpha, *stamp,
            ])
    return rows


DESIGN_HEADER = [
    "group", "baseline", "check", "item", "group_value", "baseline_value", "measure", "test", "effect_size",
    "p_value", "q_value", "flagged",
]


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
    only = design.only_group
    for w, n_prompts in (only.words if only is not None else []):
        rows.append([g, b, "word only in group", repr(w), n_prompts, 0, "prompts containing it", "", "", "", "", "no"])
    if only is not None and only.words:
        rows.append([g, b, "words only in group", f"all {len(only.words)} together", only.n_prompts, 0,
                     "prompts containing any of them", "", "", "", "", "no"])
    for e in design.endings:
        rows.append([g, b, "sentence ending", repr(e.ending) if e.ending != "none" else "none", e.group, e.baseline,
                     "prompts ending with it", "Fisher exact, two-sided", "", _p(e.p_value), "",
                     "yes" if e.p_value < settings.ending_warn_p else "no"])
    return rows


# Each design check on its own, one table per check (the script writes DESIGN_HEADER's combined table).
LENGTH_HEADER = [
    "group", "baseline", "test", "mean_group", "mean_baseline", "median_group", "median_baseline", "auroc",
    "effect_size", "p_value", "differs",
]
TOKEN_HEADER = ["group", "baseline", "token", "token_id", "prompts_group", "prompts_baseline", "count_group",
                "count_baseline", "more_in", "p_value", "q_value"]
ENDING_HEADER = ["group", "baseline", "ending", "prompts_group", "prompts_baseline", "p_value"]
PAIR_HEADER = ["group", "baseline", "line", "only_in_group", "only_in_baseline"]


def length_rows(design: DesignReport) -> list[list[object]]:
    n = design.length
    return [[design.group, design.baseline, n.test, _num(n.mean_group), _num(n.mean_baseline), n.median_group,
             n.median_baseline, _num(n.auroc), _num(n.effect_size), _p(n.p_value), "yes" if n.differs else "no"]]


def token_rows(design: DesignReport) -> list[list[object]]:
    return [[design.group, design.baseline, t.token, t.token_id, t.prompts_group, t.prompts_baseline,
             t.count_group, t.count_baseline, t.more_in, _p(t.p_value), _p(t.q_value)] for t in design.tokens]


def ending_rows(design: DesignReport) -> list[list[object]]:
    return [[design.group, design.baseline, e.ending, e.group, e.baseline, _p(e.p_value)] for e in design.endings]


def pair_rows(design: DesignReport) -> list[list[object]]:
    """Each line pair's differing tokens (:data:`PAIR_HEADER`; lines counted from 1)."""
    return [[design.group, design.baseline, d.line + 1, " ".join(map(repr, d.only_group)),
             " ".join(map(repr, d.only_baseline))] for d in (design.pairs or [])]


EVIDENCE_COLUMNS = [
    "feature", "verdict", "evidence", "direction", "auroc", "fired_group", "fired_baseline",
    "peak_tokens", "n_peak_types", "separating_tokens", "top_token", "top_token_share",
    "peak_position", "position_share_group", "position_share_baseline", "length_r", "length_p",
    "length_control", "length_control_auroc", "length_control_p", "token_control", "token_control_auroc",
    "token_control_p", "position_control", "position_control_auroc", "position_control_p",
    "reach_control", "reach_control_auroc", "reach_control_p", "generalisation_without",
    "generalisation_auroc", "generalisation_p", "generalisation_prompts", "injection_token",
    "injection_reproduced", "injection_example",
]
EVIDENCE_HEADER = ["group", "baseline", "rank", "replicated", *EVIDENCE_COLUMNS]


def evidence_cells(rep: FeatureReport) -> list[object]:
    """One feature's evidence, controls and verdict as cells under :data:`EVIDENCE_COLUMNS`.

    ``peak_position`` is written as the model's position (BOS = 0), as in every chapter's files; the
    evidence itself indexes text tokens from 0.
    """
    e, g, inj = rep.evidence, rep.generalisation, rep.injection
    peaks = "; ".join(f"{t.token!r} {t.peaks_group}/{t.peaks_baseline} in {t.prompts_group}/{t.prompts_baseline}"
                      for t in e.peak_tokens)
    out = [
        e.feature, rep.verdict.verdict, rep.verdict.evidence, e.direction, _num(e.auroc), e.fired_group,
        e.fired_baseline, peaks, e.n_peak_types, " ".join(map(repr, e.separating_tokens)), e.top_token,
        _num(e.top_token_share), model_position(e.peak_position), _num(e.position_share_group),
        _num(e.position_share_baseline), _num(e.length_r), _p(e.length_p),
    ]
    for c in (rep.length_control, rep.token_control, rep.position_control, rep.reach_control):
        out += [c.outcome, _num(c.auroc), _p(c.p_value)]
    out += [" ".join(map(repr, g.without_tokens)), _num(g.auroc), _p(g.p_value), f"{g.n_group}/{g.n_baseline}",
            inj.token if inj else "", _num(inj.reproduced) if inj else "", inj.example if inj else ""]
    return out


def evidence_rows(finding: GroupFinding) -> list[list[object]]:
    """One row per significant ranked feature of a contrast (:data:`EVIDENCE_HEADER`), best rank first:
    its peak tokens, positions, length correlation, the four controls, generalisation and injection."""
    rank_of = finding.rank_of_position()
    position = {int(f): p for p, f in enumerate(finding.contrast.tested)}
    rows = []
    for f, rep in sorted(finding.reports.items(), key=lambda kv: rank_of[position[kv[0]]]):
        h = finding.replication.get(f)
        replicated = ("yes" if h.replicated else "no") if h else "not tested"
        rows.append([finding.group, finding.baseline, rank_of[position[f]], replicated, *evidence_cells(rep)])
    for fam in finding.families:
        # The family's combined activation has no rank or held-out re-test of its own; its "feature" is
        # the members joined by '+', as in feature_stats.csv's family column.
        cells = evidence_cells(fam.report)
        cells[0] = fam.label
        rows.append([finding.group, finding.baseline, "", "", *cells])
    return rows


WORD_SET_HEADER = ["group", "baseline", "finding", "features", "words", "prompts_group", "prompts_baseline",
                   "size_group", "size_baseline", "pairs_differ", "stated_share", "flag"]


def word_set_rows(finding: GroupFinding) -> list[list[object]]:
    """One row per concept finding of a contrast (:data:`WORD_SET_HEADER`): its words and their prompts."""
    return [[finding.group, finding.baseline, w.label, "+".join(map(str, w.features)), " ".join(map(repr, w.words)),
             w.n_group, w.n_baseline, w.size_group, w.size_baseline, "" if w.pairs_differ is None else w.pairs_differ,
             _num(w.stated_share), w.flag] for w in finding.word_sets]


# --------------------------------------------------------------------------------------------------
# Terminal text


def _wrapped(text: str) -> str:
    """Prose wrapped to :data:`~mechinterp.core.tables.WIDTH` columns (continuation lines indented)."""
    return textwrap.fill(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False)


def _tokens_wrapped(text: str, indent: str = "  ") -> str:
    """Like :func:`_wrapped`, but with its own continuation indent (quoted tokens are never broken)."""
    return wrapped(text, indent)


def summary_lines(result: MeaningResult, options: MeaningOptions) -> list[str]:
    """What the script prints: the design checks, then per group its top features with their verdicts."""
    sets, summaries = _inputs(result)
    info, always = summaries.info, result.always_on
    lines = ["", info.title, _wrapped(
        f"{sum(len(p) for p in sets.groups.values())} prompts, {summaries.aggregates.n_tokens} text tokens "
        f"(BOS and padding excluded); per-prompt {options.agg} activation; {result.test} test; "
        f"cache: {summaries.cache_hits} hits, {summaries.cache_misses} misses"
    )]
    if len(always):
        shown = ", ".join(f"#{f}" for f in always[:12]) + (" ..." if len(always) > 12 else "")
        lines.append(_wrapped(f"{len(always)} always-on features (fire in >= {options.always_on:.0%} of prompts of "
                              f"every group), listed in always_on_features.csv and not ranked: {shown}"))
    lines += design_lines(result)
    for finding in result.findings.values():
        lines += group_lines(result, finding, options)
    lines.append("")
    if info.neuronpedia_id:
        lines.append(_wrapped(f"Each feature's page: {constants.NEURONPEDIA_BASE}/{info.neuronpedia_id}/<feature> "
                              f"(every link is in {constants.FEATURE_STATS_CSV})"))
    lines.append(_wrapped(
        f"Rank = significant features (q < {options.alpha:g}) first, by the size of the difference |AUROC - 0.5| "
        f"in either direction (with thousands of prompts nearly everything is significant, and q measures "
        f"the sample size more than the effect), then the rest by q. 'fire p' = Fisher's exact test of the "
        f"two firing shares. p-values are exact where the normal approximation fails (small or unequal "
        f"sets with many silent prompts: column p_method of {constants.FEATURE_STATS_CSV}). "
        f"'replic.' = same direction and q < {options.alpha:g} on held-out prompts ('-': not re-tested, "
        f"because not significant in discovery or no held-out split)."))
    lines.append(_wrapped(
        "Verdicts (for significant features that replicated, or with no held-out split for every "
        "significant feature): concept = several words of the group "
        "carry it and it survives the length, token and position controls; concept (split) = several "
        "features pass that test together and none alone; '(topic?)' = its words are a second theme of the "
        "group or miss many of its prompts; lexical = one token carries "
        f"it; positional = one absolute position (counted with {BOS_ZERO}, as in every chapter); length = "
        "prompt length; context = none of these, but "
        f"not a concept either. The evidence for each is in {constants.EVIDENCE_CSV}."))
    return lines


BRIEF_ROWS = 5  # features per group in the summary (the full report shows --top-k, the CSV all)


def brief_lines(result: MeaningResult, options: MeaningOptions) -> list[str]:
    """The terminal summary: one line per design check, then per group its top features and what they are.

    Everything here is also in the full report (:func:`summary_lines`), which adds the reasons behind
    every verdict and the definitions of the columns.
    """
    sets, summaries = _inputs(result)
    info, always = summaries.info, result.always_on
    lines = ["", info.title, _wrapped(
        f"{sum(len(p) for p in sets.groups.values())} prompts, {summaries.aggregates.n_tokens} text tokens "
        f"(BOS and padding excluded); per-prompt {options.agg} activation; {result.test} test"
        + (f"; {len(always)} always-on features not ranked ({constants.ALWAYS_ON_CSV})" if len(always) else ""))]
    lines += ["", f"Design checks: what else differs from {result.baseline}, before any feature is looked at "
              f"({constants.DESIGN_CSV}):"]
    lines += [_tokens_wrapped(f"  {line}", "    ") for f in result.findings.values()
              for line in [brief_design_line(f.design, options.confounds)]]
    for finding in result.findings.values():
        lines += brief_group_lines(result, finding, options)
    return lines


def brief_design_line(design: DesignReport, settings: ConfoundSettings) -> str:
    """What the design checks flagged for one group, in one line."""
    parts = []
    if design.length.differs:
        parts.append(f"length ({design.length.mean_group:.1f} vs {design.length.mean_baseline:.1f} tokens)")
    for side, word in (("group", "more"), ("baseline", "fewer")):
        flagged = [t.token for t in design.tokens if t.more_in == side and t.q_value < settings.token_warn_q]
        if flagged:
            parts.append(f"{word} " + " ".join(map(repr, flagged[:4])) + (" ..." if len(flagged) > 4 else ""))
    endings = [e.ending for e in design.endings if e.p_value < settings.ending_warn_p]
    if endings:
        parts.append("endings " + " ".join(map(repr, endings)))
    return f"{design.group}: " + ("; ".join(parts) if parts else "nothing flagged")


def brief_group_lines(result: MeaningResult, finding: GroupFinding, options: MeaningOptions) -> list[str]:
    """One group in the summary: its significant count, its top features, its concepts and families."""
    c, group, baseline = finding.contrast, finding.group, result.baseline
    n_sig = finding.n_significant(options.alpha)
    lines = ["", _wrapped(f"=== {group} vs {baseline}: {n_sig} of {len(c.tested)} features with q < {options.alpha:g} "
                          f"({c.n_group} vs {c.n_baseline} prompts"
                          + ("; held-out re-test)" if result.holdout else ")"))]
    lines += [_wrapped(line) for line in imbalance_lines(result, finding)]
    top = finding.top(min(options.top_k, BRIEF_ROWS))
    if not n_sig:
        if top:
            lines.append(f"  none: the closest is #{top[0].feature} (q = {top[0].q:.2g}, AUROC {top[0].auroc:.2f})")
        return lines
    rows = [[r.rank, r.feature, "up" if c.effect_size[r.position] > 0 else "down", f"{r.q:.2g}", f"{r.auroc:.2f}",
             f"{r.frac_group:.0%}", f"{r.frac_baseline:.0%}",
             ("yes" if r.replicated else "no") if r.replication else "-", _verdict_cell(finding, r)]
            for r in top if r.q < options.alpha]
    lines.append(format_table(["rank", "feature", "dir", "q", "AUROC", f"in {group}", f"in {baseline}", "replic.",
                              "verdict"], rows))
    counts = {k: n for k, n in finding.verdict_counts().items() if n}
    if counts:
        lines.append(_wrapped("Verdicts: " + ", ".join(f"{n} {k}" for k, n in counts.items())))
    lines += [_tokens_wrapped(f"  {w.label}" + (f" ({TOPIC})" if w.flag else "") + f" on {' '.join(map(repr, w.words[:5]))}"
                              + (f" +{len(w.words) - 5}" if len(w.words) > 5 else "")
                              + f" (in {w.n_group} of {w.size_group} {group}, {w.n_baseline} of {w.size_baseline} "
                              f"{baseline} prompts)", "    ")
              for w in finding.word_sets]
    if finding.themes:
        lines.append(_wrapped(f"warning: {group}'s concepts rest on disjoint word sets: a second theme or a topic "
                              "(the full report says what to do)"))
    return lines


ONLY_WORDS_SHOWN = 10  # words shown of a group's words that the baseline never uses (all are in the CSV)


def design_summary_lines(design: DesignReport) -> list[str]:
    """A short "your prompt sets differ in ..." section for one contrast."""
    if not design.warnings:
        lines = [(f"{design.group} vs {design.baseline}: no difference in token length, sentence endings or "
                  f"stray tokens was flagged")]
    else:
        lines = [f"{design.group} vs {design.baseline}: your prompt sets differ in"] + [f"  - {w}" for w in design.warnings]
    only = design.only_group
    if only is not None and only.words:
        shown = ", ".join(f"{w!r} {n}" for w, n in only.words[:ONLY_WORDS_SHOWN])
        lines.append(f"  - words in {design.group} prompts and in no {design.baseline} prompt ({len(only.words)}, "
                     f"together in {only.n_prompts} of {only.size} {design.group} prompts; the words of the concept "
                     f"belong here, any other theme is one the baseline lacks): {shown}"
                     + (" ..." if len(only.words) > ONLY_WORDS_SHOWN else ""))
    return lines


def design_lines(result: MeaningResult) -> list[str]:
    """The "your prompt sets differ in ..." section: how each group's prompts differ from the baseline's."""
    lines = ["", _wrapped(
        "Design checks: how each group's prompts differ from the baseline's, before any feature is "
        "looked at (a group's own concept words are expected among the tokens; anything else is "
        f"a confound a feature can pick up; details in {constants.DESIGN_CSV}):")]
    for finding in result.findings.values():
        design = finding.design
        for line in design_summary_lines(design):
            lines.append(_tokens_wrapped(line, "      " if line.startswith("  - ") else "  "))
        for pair in (design.pairs or [])[:PAIRS_SHOWN]:
            lines.append(_tokens_wrapped(f"    pair {pair.line + 1}: only in {design.group}: "
                                         f"{' '.join(map(repr, pair.only_group)) or '-'}; only in {design.baseline}: "
                                         f"{' '.join(map(repr, pair.only_baseline)) or '-'}", "      "))
        if design.pairs and len(design.pairs) > PAIRS_SHOWN:
            lines.append(f"    ... every pair is in {constants.DESIGN_PAIRS_CSV}")
    return lines


def group_lines(result: MeaningResult, finding: GroupFinding, options: MeaningOptions) -> list[str]:
    """One group's table of top features (with verdicts), and why the verdicts were given."""
    c, holdout, group, baseline = finding.contrast, result.holdout, finding.group, result.baseline
    split = (f"discovery on {c.n_group} vs {c.n_baseline} prompts, re-tested on the held-out "
             f"{holdout:.0%}" if holdout else f"{c.n_group} vs {c.n_baseline} prompts, no held-out split")
    lines = ["", _wrapped(f"=== {group} vs {baseline}: {split}" + (" (paired line by line)" if options.paired else "")),
             _wrapped(f"{plural(finding.n_significant(options.alpha), 'feature')} with q < {options.alpha:g} (of "
                      f"{len(c.tested)} tested; {c.n_never_fired} never fired in either group and were skipped)"
                      + (f"; the top {options.top_k} are shown, every one is in {constants.FEATURE_STATS_CSV}"
                         if finding.n_significant(options.alpha) > options.top_k else ""))]
    lines += [_wrapped(line) for line in imbalance_lines(result, finding)]
    rows, examples = [], {}
    for ranked in finding.top(options.top_k):
        v = finding.verdicts.get(ranked.feature)
        rows.append([
            ranked.rank, ranked.feature, "up" if c.effect_size[ranked.position] > 0 else "down", f"{ranked.q:.2g}",
            f"{ranked.auroc:.2f}", f"{ranked.frac_group:.0%}", f"{ranked.frac_baseline:.0%}",
            f"{c.p_firing[ranked.position]:.2g}" if c.p_firing is not None else "-",
            ("yes" if ranked.replicated else "no") if ranked.replication else "-", _verdict_cell(finding, ranked),
        ])
        if ranked.verdict and ranked.verdict not in examples:
            examples[ranked.verdict] = v
    lines.append(format_table(["rank", "feature", "dir", "q", "AUROC", f"in {group}", f"in {baseline}", "fire p",
                               "replic.", "verdict"], rows))
    counts = {k: n for k, n in finding.verdict_counts().items() if n}
    if counts:
        n = sum(counts.values())
        judged = (plural(n, "significant, replicated feature") if holdout
                  else plural(n, "significant feature") + " (no held-out split, so none re-tested)")
        concepts = counts.get("concept", 0) + counts.get(CONCEPT_SPLIT, 0)
        # A family's members share one sentence, printed with the families below.
        shown = [v for k, v in examples.items() if k != CONCEPT_SPLIT]
        lines.append(_wrapped(f"Verdicts of the {judged}: " + ", ".join(f"{n} {k}" for k, n in counts.items())
                              + ("" if concepts else " (none passed as a concept)")
                              + ("; why, one example of each:" if shown else "")))
        lines += [_tokens_wrapped(f"  #{v.feature} {v.verdict}: {v.evidence}", "    ") for v in shown]
    lines += family_lines(finding) + word_set_lines(finding, options.paired)
    return lines + always_on_lines(finding, result.always_on, options.alpha)


def _verdict_cell(finding: GroupFinding, ranked) -> str:
    """The verdict as the table shows it: flagged concepts carry '(topic?)'."""
    if not ranked.verdict:
        return "-"
    ws = finding.word_set_of(ranked.feature)
    return f"{ranked.verdict} ({TOPIC})" if ws is not None and ws.flag and ranked.verdict != "context" else ranked.verdict


def family_lines(finding: GroupFinding) -> list[str]:
    """The group's feature families: a concept the SAE splits, one finding each."""
    if not finding.families:
        return []
    lines = [_wrapped(f"Feature families ({len(finding.families)}): a concept the SAE splits across features, "
                      f"none of which passes alone (details in {constants.EVIDENCE_CSV}):")]
    return lines + [_tokens_wrapped(f"  {fam.name} {fam.verdict.verdict}: {fam.verdict.evidence}", "    ")
                    for fam in finding.families]


def word_set_lines(finding: GroupFinding, paired: bool) -> list[str]:
    """Which words each concept finding rests on, how often they occur, and what a flag means."""
    sets = finding.word_sets
    if not sets:
        return []
    group, baseline = finding.group, finding.baseline
    lines = [_wrapped(f"Concept word sets (prompts holding any of the words; {constants.WORD_SETS_CSV}):")]
    for w in sets:
        shown = " ".join(map(repr, w.words[:6])) + (f" +{len(w.words) - 6}" if len(w.words) > 6 else "")
        lines.append(_tokens_wrapped(f"  {w.label}: {shown}: in {w.n_group} of {w.size_group} {group}, "
                                     f"{w.n_baseline} of {w.size_baseline} {baseline} prompts"
                                     + (f" - {w.flag}" if w.flag else ""), "    "))
    if finding.themes:
        lines.append(_wrapped(f"warning: {group}'s concept findings rest on disjoint word sets: the prompts mix "
                              "two themes, or one is a topic that co-occurs with the concept."))
    lines += [_wrapped(a) for a in themes.advice(sets, group, paired, finding.stated_words is not None)]
    return lines


IMBALANCE_RATIO = 4  # a group this many times bigger than the other gets the warning


def imbalance_lines(result: MeaningResult, finding: GroupFinding) -> list[str]:
    """The warning for unbalanced sets: what the imbalance does to power, and what the split leaves."""
    group, baseline = finding.group, result.baseline
    n_g, n_b = len(result.index[group]), len(result.index[baseline])
    if max(n_g, n_b) < IMBALANCE_RATIO * min(n_g, n_b):
        return []
    small, big = (group, baseline) if n_g < n_b else (baseline, group)
    # A rank test's variance goes as 1/n_group + 1/n_baseline: the balanced design of equal power has
    # the harmonic mean of the two sizes in each set.
    equal = 2.0 / (1.0 / n_g + 1.0 / n_b)
    c = finding.contrast
    split = (f" The held-out split leaves {c.n_group:,} vs {c.n_baseline:,} prompts for discovery and the rest "
             f"for re-testing." if result.holdout else "")
    return [f"warning: unbalanced sets: {group} has {n_g:,} prompts, {baseline} {n_b:,} "
            f"({max(n_g, n_b) / min(n_g, n_b):.0f}:1). Power is set by the smaller set: this contrast is about "
            f"as sensitive as {equal:.0f} vs {equal:.0f} prompts, and more {big} prompts add little; add {small} "
            f"prompts, or sample {big} with --max-prompts to save time at little cost.{split}"]


def always_on_lines(finding: GroupFinding, always: np.ndarray, alpha: float) -> list[str]:
    """The always-on features whose strength differs between the groups: not ranked, but not hidden."""
    positions = finding.always_on_differences(always, alpha)
    if not positions:
        return []
    c = finding.contrast
    return ["", _wrapped(
        f"Always-on features that also differ ({len(positions)}; not ranked, because they fire in nearly every "
        f"prompt, but their strength differs; mean = mean of the per-prompt summary):"), format_table(
        ["feature", "dir", "q", "AUROC", f"mean {finding.group}", f"mean {finding.baseline}"],
        [[int(c.tested[p]), "up" if c.effect_size[p] > 0 else "down", f"{c.q_value[p]:.2g}", f"{c.auroc[p]:.2f}",
          f"{c.mean_group[p]:.3g}", f"{c.mean_baseline[p]:.3g}"] for p in positions],
    )]


# --------------------------------------------------------------------------------------------------
# The run record


def record_facts(result: MeaningResult, options: MeaningOptions) -> dict:
    """What the run record says: inputs, counts and filtering, then the design checks, controls and verdicts."""
    return {**_run_facts(result, options), **_confound_facts(result, options)}


def _run_facts(result: MeaningResult, options: MeaningOptions) -> dict:
    sets, summaries = _inputs(result)
    info, findings = summaries.info, result.findings
    return dict(
        model=info.model_label, sae=info.sae_label, hook=info.hook_name, d_sae=info.d_sae,
        prompts_folder=str(sets.folder), prompt_file_sha256=sets.file_hashes,
        n_prompts={g: len(p) for g, p in sets.groups.items()},
        tokens_in_prompts=summaries.aggregates.n_tokens, tokens_encoded=summaries.tokens_encoded,
        cache_hits=summaries.cache_hits, cache_misses=summaries.cache_misses,
        model_loaded=summaries.loaded is not None, seed=options.seed, holdout=result.holdout,
        always_on_features=[int(f) for f in result.always_on],
        filtered=[
            "BOS position and padding excluded from every per-prompt summary",
            "features that never fired in either group were not tested: "
            + ", ".join(f"{g}: {fd.contrast.n_never_fired}" for g, fd in findings.items()),
            f"{len(result.always_on)} always-on features (fire in >= {options.always_on:g} of prompts in every "
            "group) not ranked and not judged",
            "verdicts only for features significant in discovery that replicated on the held-out prompts (or, "
            "without a held-out split, were not re-tested); the others keep an empty verdict",
            *sets.notes,
        ],
        discoveries={g: fd.n_significant(options.alpha) for g, fd in findings.items()},
    )


def _confound_facts(result: MeaningResult, options: MeaningOptions) -> dict:
    findings, injected = result.findings.values(), result.injection_runs
    return dict(
        test=result.test, paired=options.paired,
        design_warnings={f.group: f.design.warnings for f in findings if f.design},
        verdicts={f.group: f.verdict_counts() for f in findings},
        not_judged={f.group: sorted(set(f.reports) - set(f.verdicts)) for f in findings},
        controls=[
            "design checks: token length (Mann-Whitney, or Wilcoxon signed-rank when paired), tokens in more "
            "prompts of one set (one-sided Fisher, BH over token types), sentence endings (two-sided Fisher)",
            "each significant ranked feature re-tested on all prompts of both sets within strata (van Elteren): "
            "equal token length; with / without its top peak token; that token at the same position; prompts "
            "that reach / do not reach its peak position",
            "generalisation: the feature must still separate the prompts without its top distinctive words",
            f"token injection: the top peak token put in place of a word of the other set's prompts, "
            f"{result.injection_texts} edited prompts encoded ("
            f"{sum(r['hits'] for r in injected)} from the cache, {sum(r['misses'] for r in injected)} new)",
        ],
        injection=dict(texts=result.injection_texts, cache_hits=sum(r["hits"] for r in injected),
                       cache_misses=sum(r["misses"] for r in injected),
                       model_loaded=any(r["model_loaded"] for r in injected),
                       seconds={k: round(sum(r["seconds"].get(k, 0.0) for r in injected), 4)
                                for k in ("load", "encode", "cache")}),
        confound_settings=asdict(options.confounds),
    )
