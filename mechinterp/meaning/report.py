"""Chapter 2's presentation: the terminal text, the CSV tables, the run record's facts, and the figures.

The analysis modules return data (:class:`~mechinterp.meaning.contrast.MeaningResult` and what it holds);
this module turns it into what a person reads. Text comes back as lines (the script prints them, a
notebook may too), tables as rows under a header, figures as ``matplotlib.figure.Figure`` objects
(no pyplot, no GUI, no show()) that the caller saves through its ``OutputFolder`` with the numbers
behind them beside them, or that a notebook shows inline. Titles name the model, SAE and hook.

* figures: group means (MI2), per-group heatmaps (MI3) and volcano plots (MI4);
* tables: ``feature_stats.csv``, ``always_on_features.csv``, ``design_checks.csv`` (+ ``design_pairs.csv``
  when paired) and ``feature_evidence.csv`` (:func:`write_tables`);
* terminal: the design checks, and per group the top features with their verdicts (:func:`summary_lines`);
* run record: what the run's record says about its inputs, counts, controls and verdicts (:func:`record_facts`).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mechinterp.core import constants
from mechinterp.core.figures import NotebookFigure, white_zero_cmap
from mechinterp.core.io import OutputFolder
from mechinterp.core.loading import neuronpedia_url
from mechinterp.core.pipeline import Summaries
from mechinterp.core.prompts import PromptSets
from mechinterp.core.provenance import PROVENANCE_COLUMNS
from mechinterp.core.tables import WIDTH, format_table, plural
from mechinterp.meaning.contrast import GroupFinding, MeaningResult
from mechinterp.meaning.design import DesignReport
from mechinterp.meaning.options import ConfoundSettings, MeaningOptions
from mechinterp.meaning.verdicts import FeatureReport

LABELLED_IN_VOLCANO = 8  # strongest significant features named in each MI4 plot
PAIRS_SHOWN = 3  # pairs printed per group with paired prompts (all of them are in DESIGN_PAIRS_CSV)


GROUP_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


def group_mean_overview(
    means: dict[str, np.ndarray],
    always_on: Sequence[int],
    title: str,
    agg: str,
) -> Figure:
    """MI2: every feature's mean activation in each group (one panel per group), always-on marked.

    Args:
        means: group -> ``[d_sae]`` mean over the group's prompts of the per-prompt ``agg`` activation.
        always_on: feature ids that fire in nearly every prompt of every group.
    """
    groups = list(means)
    d_sae = len(next(iter(means.values())))
    fig = NotebookFigure(figsize=(11, 1.9 * len(groups) + 1.2))
    axes = fig.subplots(len(groups), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    always = np.asarray(list(always_on), dtype=int)
    top = max(float(m.max()) for m in means.values()) or 1.0
    for i, (ax, group) in enumerate(zip(axes, groups)):
        m = means[group]
        ids = np.flatnonzero(m > 0)
        ax.vlines(ids, 0, m[ids], color=GROUP_COLOURS[i % len(GROUP_COLOURS)], linewidth=0.8)
        if len(always):
            ax.scatter(always, m[always], s=28, marker="v", color="black", zorder=3, label="always-on")
        ax.set_ylim(0, top * 1.12)
        ax.set_ylabel(group, rotation=0, ha="right", va="center", fontsize=11)
        ax.text(0.995, 0.92, f"{len(ids)} features active", transform=ax.transAxes, ha="right", va="top", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if len(always):
        axes[0].legend(loc="upper left", fontsize=8, frameon=False)
    axes[-1].set_xlabel(f"feature id (0 to {d_sae - 1})")
    axes[-1].set_xlim(-0.5, d_sae - 0.5)
    fig.supylabel(f"mean of per-prompt {agg} activation", x=0.0)
    fig.suptitle(
        f"Every SAE feature's mean over prompts of its per-prompt {agg} activation, per group "
        f"(BOS and padding excluded)\n"
        f"▼ always-on features (fire in nearly every prompt of every group; not ranked)\n{title}",
        fontsize=10,
    )
    return fig


def group_heatmaps(
    panels: list[tuple[str, str, np.ndarray, int, list[int]]],
    baseline: str,
    title: str,
    agg: str,
    verdicts: Sequence[Sequence[str]] | None = None,
) -> Figure:
    """MI3: per contrast group, prompts x that group's top features, group prompts above baseline ones.

    Each column is scaled to its own maximum: one strong feature would otherwise saturate a shared scale
    and leave every other column a faint yellow. The column labels give each maximum (and, when given,
    the feature's verdict, concept in bold), and the CSV beside the figure has the unscaled numbers.

    Args:
        panels: ``(group, subtitle, acts [n_group + n_baseline, n_top], n_group, feature_ids)`` per group.
        verdicts: per panel, one verdict per feature ("" for none: not significant or not replicated).
    """
    n = len(panels)
    rows = max(p[2].shape[0] for p in panels)
    fig = NotebookFigure(figsize=(max(5.0, 4.2 * n + 1.5), max(4.5, 0.075 * rows + 3.0)))
    # Room between panels for the next panel's row labels.
    axes = fig.subplots(1, n, squeeze=False, gridspec_kw={"wspace": 0.45})[0]
    image = None
    for i, (ax, (group, subtitle, acts, n_group, feats)) in enumerate(zip(axes, panels)):
        col_max = acts.max(axis=0) if acts.size else np.zeros(0)
        scaled = acts / np.where(col_max > 0, col_max, 1.0)
        image = ax.imshow(scaled, aspect="auto", cmap=white_zero_cmap(), vmin=1e-6, vmax=1.0,
                          interpolation="nearest")
        ax.axhline(n_group - 0.5, color="black", linewidth=1.5)
        labels = list(verdicts[i]) if verdicts is not None else [""] * len(feats)
        ax.set_xticks(range(len(feats)), [f"#{f} ({m:.2g})" + (f" {v}" if v else "")
                                          for f, m, v in zip(feats, col_max, labels)], rotation=70, fontsize=7.5)
        for tick, v in zip(ax.get_xticklabels(), labels):
            if v == "concept":
                tick.set_fontweight("bold")
        ax.set_yticks(
            [n_group / 2, n_group + (acts.shape[0] - n_group) / 2],
            [f"{group}\n({n_group})", f"{baseline}\n({acts.shape[0] - n_group})"],
            fontsize=9,
        )
        ax.set_title(f"{group}: top {len(feats)} features\n{subtitle}", fontsize=10)
        ax.set_xlabel("feature (its max) and verdict, rank 1 at left" if verdicts is not None
                      else "feature (its max), rank 1 at left")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label=f"per-prompt {agg} activation ÷ the column's max (white = 0)",
                     fraction=0.03, pad=0.02)
    fig.suptitle(f"Each row is one prompt; always-on features removed; each column scaled to its own max\n{title}",
                 fontsize=10)
    return fig


def volcano(
    effect: np.ndarray,
    q: np.ndarray,
    features: np.ndarray,
    labelled: Sequence[int],
    alpha: float,
    group: str,
    baseline: str,
    title: str,
) -> Figure:
    """MI4: effect size (rank-biserial) against -log10 q for every tested feature, top ones labelled."""
    fig = NotebookFigure(figsize=(8, 6))
    ax = fig.subplots()
    floor = np.finfo(float).tiny
    y = -np.log10(np.maximum(q, floor))
    sig = q < alpha
    ax.scatter(effect[~sig], y[~sig], s=9, color="#bbbbbb", label=f"q ≥ {alpha:g}", linewidths=0)
    ax.scatter(effect[sig & (effect > 0)], y[sig & (effect > 0)], s=14, color="#d95f02", label=f"higher in {group}")
    ax.scatter(effect[sig & (effect < 0)], y[sig & (effect < 0)], s=14, color="#1b9e77", label=f"higher in {baseline}")
    line = -np.log10(alpha)
    ax.axhline(line, color="black", linestyle="--", linewidth=0.8)
    # The threshold's label sits at the right end of its line, away from the legend (upper left).
    ax.text(1.03, line, f"q = {alpha:g} ", va="bottom", ha="right", fontsize=8)
    position = {int(f): i for i, f in enumerate(features)}
    for f in labelled:
        i = position[int(f)]
        ax.annotate(f"#{f}", (effect[i], y[i]), xytext=(4, 3), textcoords="offset points", fontsize=8)
    ax.set_xlim(-1.05, 1.05)
    # Keep the threshold line well inside the plot even when nothing comes near it (a null group).
    ax.set_ylim(bottom=-0.05 * max(float(y.max(initial=0.0)), line), top=max(float(y.max(initial=0.0)), line) * 1.25)
    if not sig.any():
        ax.text(0.5, 0.5, f"no feature reaches q < {alpha:g}:\nno evidence that any feature differs",
                transform=ax.transAxes, ha="center", va="center", fontsize=9, color="#555555")
    ax.set_xlabel(f"effect size: rank-biserial r = 2·AUROC − 1  (+1: always higher in {group})")
    ax.set_ylabel("−log10 q  (Benjamini-Hochberg)")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    ax.set_title(f"{group} vs {baseline}: {int(sig.sum())} of {len(q)} tested features at q < {alpha:g}\n{title}", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------------
# Figures with their numbers, as the script writes them


def write_figures(out: OutputFolder, result: MeaningResult, options: MeaningOptions) -> list[Path]:
    """MI2.png (+MI2.csv), MI3.png (+MI3.csv) and one MI4_<group>.png per group; returns the paths."""
    sets, summaries = _inputs(result)
    title = summaries.info.title
    always_list = result.always_on.tolist()
    written = [out.save_figure(group_mean_overview(result.means, always_list, title, options.agg), constants.MI2_PNG)]
    active = np.flatnonzero(np.any(np.stack(list(result.means.values())) > 0, axis=0))
    written.append(out.write_csv(
        constants.MI2_CSV, ["feature", *[f"mean_{g}" for g in sets.groups], "always_on"],
        [[int(f), *[_six(result.means[g][f]) for g in sets.groups], "yes" if f in set(always_list) else "no"]
         for f in active],
    ))
    written += _write_heatmaps(out, result, options)
    for group, finding in result.findings.items():
        c = finding.contrast
        # Label the strongest findings only: labels on non-significant points would invite over-reading.
        labelled = [r.feature for r in finding.top(LABELLED_IN_VOLCANO) if r.q < options.alpha]
        fig = volcano(c.effect_size, c.q_value, c.tested, labelled, options.alpha, group, sets.baseline, title)
        written.append(out.save_figure(fig, constants.MI4_PNG.format(group=group)))
    return written


def _write_heatmaps(out: OutputFolder, result: MeaningResult, options: MeaningOptions) -> list[Path]:
    """MI3.png and MI3.csv (nothing when a group has no ranked feature to show)."""
    sets, summaries = _inputs(result)
    index = result.index
    panels, verdicts, heat_rows = [], [], []
    for group, finding in result.findings.items():
        feats = [r.feature for r in finding.top(options.top_k)]
        rows_idx = np.concatenate([index[group], index[sets.baseline]])
        acts = summaries.aggregates.dense(options.agg, rows_idx, np.array(feats, dtype=int))
        subtitle = f"{plural(finding.n_significant(options.alpha), 'feature')} at q < {options.alpha:g}"
        panels.append((group, subtitle, acts, len(index[group]), feats))
        labels = [finding.verdicts[f].verdict if f in finding.verdicts else "" for f in feats]
        verdicts.append(labels)
        prompts = sets.groups[group] + sets.groups[sets.baseline]
        groups_of = [group] * len(index[group]) + [sets.baseline] * len(index[sets.baseline])
        for r, (prompt, g) in enumerate(zip(prompts, groups_of)):
            for k, f in enumerate(feats):
                heat_rows.append([group, g, prompt, f, labels[k], _six(acts[r, k])])
    if not (panels and all(p[4] for p in panels)):
        return []
    fig = group_heatmaps(panels, sets.baseline, summaries.info.title, options.agg, verdicts=verdicts)
    return [out.save_figure(fig, constants.MI3_PNG),
            out.write_csv(constants.MI3_CSV, ["panel", "prompt_group", "prompt", "feature", "verdict", "activation"],
                          heat_rows)]


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
    "p_firing_fisher", "holdout_auroc", "holdout_q_value", "replicated", "verdict", "evidence", "always_on", "neuronpedia_url",
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
            rows.append([
                group, f, rank_of.get(pos, ""), {1: "up", -1: "down", 0: "none"}[int(c.direction[pos])],
                _six(c.mean_group[pos]), _six(c.mean_baseline[pos]), _six(c.frac_group[pos]),
                _six(c.frac_baseline[pos]), _six(c.auroc[pos]), _six(c.effect_size[pos]), _six(c.cohens_d[pos]),
                f"{c.p_value[pos]:.6g}", f"{c.q_value[pos]:.6g}", result.test,
                "exact" if c.exact is not None and c.exact[pos] else "normal approximation",
                f"{c.p_firing[pos]:.6g}" if c.p_firing is not None else "", _six(h.auroc) if h else "",
                f"{h.q_value:.6g}" if h else "", ("yes" if h.replicated else "no") if h else "not tested",
                v.verdict if v else "", v.evidence if v else "", "yes" if f in always else "no",
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
    "injection_reproduced",
]
EVIDENCE_HEADER = ["group", "baseline", "rank", "replicated", *EVIDENCE_COLUMNS]


def evidence_cells(rep: FeatureReport) -> list[object]:
    """One feature's evidence, controls and verdict as cells under :data:`EVIDENCE_COLUMNS`."""
    e, g, inj = rep.evidence, rep.generalisation, rep.injection
    peaks = "; ".join(f"{t.token!r} {t.peaks_group}/{t.peaks_baseline} in {t.prompts_group}/{t.prompts_baseline}"
                      for t in e.peak_tokens)
    out = [
        e.feature, rep.verdict.verdict, rep.verdict.evidence, e.direction, _num(e.auroc), e.fired_group,
        e.fired_baseline, peaks, e.n_peak_types, " ".join(map(repr, e.separating_tokens)), e.top_token,
        _num(e.top_token_share), e.peak_position, _num(e.position_share_group), _num(e.position_share_baseline),
        _num(e.length_r), _p(e.length_p),
    ]
    for c in (rep.length_control, rep.token_control, rep.position_control, rep.reach_control):
        out += [c.outcome, _num(c.auroc), _p(c.p_value)]
    out += [" ".join(map(repr, g.without_tokens)), _num(g.auroc), _p(g.p_value), f"{g.n_group}/{g.n_baseline}",
            inj.token if inj else "", _num(inj.reproduced) if inj else ""]
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
    return rows


# --------------------------------------------------------------------------------------------------
# Terminal text


def _wrapped(text: str) -> str:
    """Prose wrapped to :data:`~mechinterp.core.tables.WIDTH` columns (continuation lines indented)."""
    return textwrap.fill(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False)


_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")


def _tokens_wrapped(text: str, indent: str = "  ") -> str:
    """Like :func:`_wrapped`, but never breaks a line inside a quoted token such as ' seated'."""
    protected = _QUOTED.sub(lambda m: m.group(0).replace(" ", "\0"), text)
    return textwrap.fill(protected, WIDTH, subsequent_indent=indent, break_on_hyphens=False).replace("\0", " ")


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
        "carry it and it survives the length, token and position controls; lexical = one token carries "
        "it; positional = one absolute position; length = prompt length; context = none of these, but "
        f"not a concept either. The evidence for each is in {constants.EVIDENCE_CSV}."))
    return lines


def design_summary_lines(design: DesignReport) -> list[str]:
    """A short "your prompt sets differ in ..." section for one contrast."""
    if not design.warnings:
        return [(f"{design.group} vs {design.baseline}: no difference in token length, sentence endings or "
                 f"stray tokens was flagged")]
    return [f"{design.group} vs {design.baseline}: your prompt sets differ in"] + [f"  - {w}" for w in design.warnings]


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
                      f"{len(c.tested)} tested; {c.n_never_fired} never fired in either group and were skipped)")]
    lines += [_wrapped(line) for line in imbalance_lines(result, finding)]
    rows, examples = [], {}
    for ranked in finding.top(options.top_k):
        v = finding.verdicts.get(ranked.feature)
        rows.append([
            ranked.rank, ranked.feature, "up" if c.effect_size[ranked.position] > 0 else "down", f"{ranked.q:.2g}",
            f"{ranked.auroc:.2f}", f"{ranked.frac_group:.0%}", f"{ranked.frac_baseline:.0%}",
            f"{c.p_firing[ranked.position]:.2g}" if c.p_firing is not None else "-",
            ("yes" if ranked.replicated else "no") if ranked.replication else "-", ranked.verdict or "-",
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
        lines.append(_wrapped(f"Verdicts of the {judged}: " + ", ".join(f"{n} {k}" for k, n in counts.items())
                              + ("" if counts.get("concept") else " (none passed as a concept)")
                              + "; why, one example of each:"))
        lines += [_tokens_wrapped(f"  #{v.feature} {v.verdict}: {v.evidence}", "    ") for v in examples.values()]
    return lines + always_on_lines(finding, result.always_on, options.alpha)


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
