"""Chapter 2's figures: group means (MI2), per-group heatmaps (MI3) and volcano plots (MI4).

Each plot function takes numbers and returns a ``matplotlib.figure.Figure`` (no pyplot, no GUI, no
show()); :func:`write_figures` saves them through the script's ``OutputFolder`` with the numbers behind
each one beside it, and a notebook shows them inline. Titles name the model, SAE and hook.

Every figure stays readable and under 6,000 pixels a side whatever the prompt sets: a user's run with
thousands of prompts per group once made MI3 50,000 pixels tall, one row per prompt. So MI3 draws at
most :data:`MAX_ROWS_PER_SIDE` prompts of each set, a seeded random sample of larger ones, and says so
in the figure and in MI3.csv; MI2 and MI3 draw a bounded number of groups and say which were left out.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mechinterp.core import constants
from mechinterp.core.figures import (
    DEFAULT_BASELINE,
    NotebookFigure,
    group_colours,
    place_labels,
    white_zero_cmap,
)
from mechinterp.core.io import OutputFolder
from mechinterp.core.tables import plural
from mechinterp.meaning.contrast import MeaningResult
from mechinterp.meaning.options import MeaningOptions
from mechinterp.meaning.report import _inputs, _six

LABELLED_IN_VOLCANO = 8  # strongest significant features named in each MI4 plot

# Prompts drawn per side (group, baseline) of an MI3 panel. A random sample rather than the strongest
# rows: picking rows by activation would make the separation look cleaner than it is. 60 keeps the
# tidy designs of 48-60 prompts a group whole, and a panel of 120 rows still shows single prompts.
MAX_ROWS_PER_SIDE = 60
MAX_FEATURES_PER_PANEL = 20  # MI3 columns per group; more would not leave room for their labels
MI3_PANEL_WIDTH = 4.2  # inches per MI3 panel of up to 10 features
MAX_MI2_GROUPS = 18  # MI2 panels: 1.9 inches each, 18 make ~5,300 px at 150 dpi
# The largest side the figures are laid out to, in inches: 5,400 px at the 150 dpi they are saved at,
# under the 6,000 px every figure keeps to (OutputFolder.save_figure warns beyond it).
MAX_INCHES = 36.0


# --------------------------------------------------------------------------------------------------
# MI2


def group_mean_overview(
    means: dict[str, np.ndarray],
    always_on: Sequence[int],
    title: str,
    agg: str,
    baseline: str = DEFAULT_BASELINE,
) -> Figure:
    """MI2: every feature's mean activation in each group (one panel per group), always-on marked.

    At most :data:`MAX_MI2_GROUPS` groups are drawn (the first ones); the title names the others. Each
    group is drawn in its colour of :func:`~mechinterp.core.figures.group_colours` (the baseline grey).

    Args:
        means: group -> ``[d_sae]`` mean over the group's prompts of the per-prompt ``agg`` activation.
        always_on: feature ids that fire in nearly every prompt of every group.
    """
    groups = list(means)[:MAX_MI2_GROUPS]
    left_out = list(means)[MAX_MI2_GROUPS:]
    d_sae = len(next(iter(means.values())))
    height = 1.9 * len(groups) + 1.2
    fig = NotebookFigure(figsize=(11, height))
    # The title block keeps its size in inches (a fifth of an inch a line): the defaults, shares of the
    # figure's height, left the top of a tall figure blank or its title on the first panel.
    title_top = max(0.98, 1 - 0.18 / height)
    fig.subplots_adjust(top=max(0.88, 1 - (0.48 + 0.2 * (4 if left_out else 3)) / height))
    axes = fig.subplots(len(groups), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    always = np.asarray(list(always_on), dtype=int)
    top = max(float(means[g].max()) for g in groups) or 1.0
    colours = group_colours(means, baseline)
    for ax, group in zip(axes, groups):
        m = means[group]
        ids = np.flatnonzero(m > 0)
        ax.vlines(ids, 0, m[ids], color=colours[group], linewidth=0.8)
        if len(always):
            # No legend: the title says what ▼ is, and a legend's ▼ sat beside the data's at feature 5.
            ax.scatter(always, m[always], s=28, marker="v", color="black", zorder=3, label="always-on")
        ax.set_ylim(0, top * 1.12)
        # The count beside the group's name: inside the panel it sat on the tallest lines at the right end.
        ax.set_ylabel(f"{group}\n{len(ids)} active", rotation=0, ha="right", va="center", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xlabel(f"feature id (0 to {d_sae - 1}); active = mean above 0")
    axes[-1].set_xlim(-0.5, d_sae - 0.5)
    fig.supylabel(f"mean of per-prompt {agg} activation", x=0.0)
    not_drawn = (f"\nthe first {len(groups)} of {len(means)} groups drawn; not drawn (their means are in "
                 f"{constants.MI2_CSV}): {_names(left_out)}" if left_out else "")
    fig.suptitle(
        f"Every SAE feature's mean over prompts of its per-prompt {agg} activation, per group "
        f"(BOS and padding excluded)\n"
        f"▼ always-on features (fire in nearly every prompt of every group; not ranked){not_drawn}\n{title}",
        fontsize=10, y=title_top,
    )
    return fig


def _names(groups: Sequence[str], shown: int = 8) -> str:
    """Group names for a title, the list cut after ``shown`` so that the title stays one line."""
    return ", ".join(groups[:shown]) + (f" and {len(groups) - shown} more" if len(groups) > shown else "")


# --------------------------------------------------------------------------------------------------
# MI3


class HeatmapPanel(NamedTuple):
    """One MI3 panel: a group's prompts above the baseline's, against the group's top features.

    ``of_group`` / ``of_baseline``: how many prompts the set has in all, when ``acts`` holds a sample
    of them (None: every prompt is drawn).
    """

    group: str
    subtitle: str
    acts: np.ndarray  # [n_group + n_baseline drawn, n_features]
    n_group: int  # the first n_group rows are the group's prompts, the rest the baseline's
    features: list[int]
    of_group: int | None = None
    of_baseline: int | None = None


def sample_rows(n: int, seed: int, name: str, cap: int = MAX_ROWS_PER_SIDE) -> np.ndarray:
    """Which of a set's ``n`` prompts MI3 draws: all up to ``cap``, else a random sample of ``cap``.

    The sample depends only on the seed, the set's name and its size (not on which other groups ran),
    so a rerun draws the same rows; they stay in file order, not sorted by activation.
    """
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    return np.sort(rng.choice(n, size=cap, replace=False))


def heatmap_layout(n_panels: int, n_features: int) -> tuple[int, int, int]:
    """MI3's grid within :data:`MAX_INCHES` a side: ``(panels drawn, panels per row, rows of panels)``.

    ``n_features``: the most features any panel has (at most :data:`MAX_FEATURES_PER_PANEL` are drawn).
    """
    fit_across = max(1, int((MAX_INCHES - 1.5) // _panel_width(n_features)))
    row_height = max(4.5, 0.075 * 2 * MAX_ROWS_PER_SIDE + 3.0)  # the tallest a row of panels can be
    n_rows = max(1, min(math.ceil(n_panels / fit_across), int(MAX_INCHES // row_height)))
    per_row = max(1, min(fit_across, math.ceil(n_panels / n_rows)))  # rows as even as they can be
    return min(n_panels, per_row * n_rows), per_row, n_rows


def _panel_width(n_features: int) -> float:
    """Inches of one MI3 panel: wider for more than 10 features, so that their labels still fit."""
    return MI3_PANEL_WIDTH * max(1.0, min(n_features, MAX_FEATURES_PER_PANEL) / 10)


def group_heatmaps(
    panels: Sequence[HeatmapPanel],
    baseline: str,
    title: str,
    agg: str,
    verdicts: Sequence[Sequence[str]] | None = None,
    seed: int = 0,
    colours: dict[str, str] | None = None,
) -> Figure:
    """MI3: per contrast group, prompts x that group's top features, group prompts above baseline ones.

    Each column is scaled to its own maximum: one strong feature would otherwise saturate a shared scale
    and leave every other column a faint yellow. The column labels give each maximum (and, when given,
    the feature's verdict, concept in bold), and the CSV beside the figure has the unscaled numbers.
    At most :data:`MAX_ROWS_PER_SIDE` prompts a side (a sample of larger sets, :func:`sample_rows`), at
    most :data:`MAX_FEATURES_PER_PANEL` features a panel and the panels that fit :func:`heatmap_layout`
    are drawn; the row labels and the title say what was left out.

    Args:
        panels: one :class:`HeatmapPanel` (or tuple of its fields) per group.
        verdicts: per panel, one verdict per feature ("" for none: not significant or not replicated).
        seed: the seed of the sample of larger sets (:func:`write_heatmaps` passes them sampled already).
        colours: group -> colour of its row label (default: :func:`group_colours` of these groups).
    """
    panels = [_sampled(HeatmapPanel(*p), baseline, seed) for p in panels]
    colours = colours or group_colours([baseline, *(p.group for p in panels)], baseline)
    most = max(len(p.features) for p in panels)
    n_drawn, per_row, n_rows = heatmap_layout(len(panels), most)
    drawn = [p._replace(acts=p.acts[:, :MAX_FEATURES_PER_PANEL], features=list(p.features[:MAX_FEATURES_PER_PANEL]))
             for p in panels[:n_drawn]]
    rows = max(p.acts.shape[0] for p in drawn)
    size = (max(5.0, _panel_width(most) * per_row + 1.5), max(4.5, 0.075 * rows + 3.0) * n_rows)
    # The constrained layout gives each panel's row labels (a group's name can be long) room clear of the
    # panel to its left, and the title room above the panels' titles; fixed spacing did neither.
    fig = NotebookFigure(figsize=size, layout="constrained")
    axes = fig.subplots(n_rows, per_row, squeeze=False).ravel()
    for ax in axes[n_drawn:]:
        ax.set_visible(False)
    image = None
    for i, (ax, panel) in enumerate(zip(axes, drawn)):
        image = _heatmap_panel(ax, panel, baseline, list(verdicts[i]) if verdicts is not None else None)
        for tick, side in zip(ax.get_yticklabels(), (panel.group, baseline)):
            tick.set_color(colours[side])  # the row labels in the groups' colours, as in MI2 and MI4
    if image is not None:
        fig.colorbar(image, ax=list(axes[:n_drawn]), label=f"per-prompt {agg} activation ÷ the column's max "
                     "(white = 0)", fraction=0.03, pad=0.02, aspect=50)
    fig.suptitle(f"Each row is one prompt; always-on features removed; each column scaled to its own max"
                 f"{_heatmap_notes(panels, n_drawn, most)}\n{title}", fontsize=10)
    return fig


def _sampled(panel: HeatmapPanel, baseline: str, seed: int) -> HeatmapPanel:
    """The panel with each side cut to :data:`MAX_ROWS_PER_SIDE` rows by :func:`sample_rows`."""
    n_group, n_baseline = panel.n_group, panel.acts.shape[0] - panel.n_group
    group_rows, baseline_rows = sample_rows(n_group, seed, panel.group), sample_rows(n_baseline, seed, baseline)
    if len(group_rows) == n_group and len(baseline_rows) == n_baseline:
        return panel
    return panel._replace(acts=np.concatenate([panel.acts[group_rows], panel.acts[n_group + baseline_rows]]),
                          n_group=len(group_rows), of_group=panel.of_group or n_group,
                          of_baseline=panel.of_baseline or n_baseline)


def _heatmap_panel(ax: Axes, panel: HeatmapPanel, baseline: str, labels: list[str] | None):
    """One group's panel of MI3; returns its image (for the colour bar)."""
    group, subtitle, acts, n_group, feats = panel[:5]
    col_max = acts.max(axis=0) if acts.size else np.zeros(0)
    scaled = acts / np.where(col_max > 0, col_max, 1.0)
    image = ax.imshow(scaled, aspect="auto", cmap=white_zero_cmap(), vmin=1e-6, vmax=1.0, interpolation="nearest")
    ax.axhline(n_group - 0.5, color="black", linewidth=1.5)
    shown = labels if labels is not None else [""] * len(feats)
    ax.set_xticks(range(len(feats)), [f"#{f} ({m:.2g})" + (f" {v}" if v else "")
                                      for f, m, v in zip(feats, col_max, shown)], rotation=70, fontsize=7.5)
    for tick, v in zip(ax.get_xticklabels(), shown):
        if v.startswith("concept"):  # concept and concept (split)
            tick.set_fontweight("bold")
    n_baseline = acts.shape[0] - n_group
    ax.set_yticks([n_group / 2, n_group + n_baseline / 2],
                  [f"{group}\n{_rows_label(n_group, panel.of_group)}",
                   f"{baseline}\n{_rows_label(n_baseline, panel.of_baseline)}"], fontsize=9)
    ax.set_title(f"{group}: top {len(feats)} features\n{subtitle}", fontsize=10)
    ax.set_xlabel("feature (its max), rank 1 at left" if labels is None
                  else "feature (its max) and verdict, rank 1 at left")
    return image


def _rows_label(drawn: int, total: int | None) -> str:
    """A side's row label: "(48)" when every prompt is drawn, else how many of how many, sampled."""
    if total is None or total <= drawn:
        return f"({drawn})"
    return f"{drawn} of {total:,}\nprompts,\nrandom\nsample"


def _heatmap_notes(panels: list[HeatmapPanel], n_drawn: int, most: int) -> str:
    """Title lines saying what MI3 leaves out: prompts not sampled, features and groups beyond its caps."""
    notes = ""
    if any(p.of_group or p.of_baseline for p in panels[:n_drawn]):
        notes += (f"\nsets of more than {MAX_ROWS_PER_SIDE} prompts: a seeded random sample of "
                  f"{MAX_ROWS_PER_SIDE}, in file order ({constants.MI3_CSV} has the rows drawn)")
    if most > MAX_FEATURES_PER_PANEL:
        notes += f"\nthe top {MAX_FEATURES_PER_PANEL} of {most} ranked features per group drawn"
    if n_drawn < len(panels):
        notes += (f"\n{n_drawn} of {len(panels)} groups drawn; not drawn: "
                  f"{_names([p.group for p in panels[n_drawn:]])}")
    if most > MAX_FEATURES_PER_PANEL or n_drawn < len(panels):
        notes += f" (all in {constants.FEATURE_STATS_CSV})"
    return notes


# --------------------------------------------------------------------------------------------------
# MI4


def volcano(
    effect: np.ndarray,
    q: np.ndarray,
    features: np.ndarray,
    labelled: Sequence[int],
    alpha: float,
    group: str,
    baseline: str,
    title: str,
    colours: dict[str, str] | None = None,
) -> Figure:
    """MI4: effect size (rank-biserial) against -log10 q for every tested feature, top ones labelled.

    Features higher in the group are drawn in the group's colour, those higher in the baseline in the
    baseline's (``colours``, default :func:`group_colours` of the two), as in every other figure.
    """
    colours = colours or group_colours([baseline, group], baseline)
    fig = NotebookFigure(figsize=(8, 6))
    ax = fig.subplots()
    floor = np.finfo(float).tiny
    y = -np.log10(np.maximum(q, floor))
    sig = q < alpha
    # Not significant: small, pale and hollow, so it never reads as the baseline's grey.
    ax.scatter(effect[~sig], y[~sig], s=9, facecolors="none", edgecolors="#c8c8c8", label=f"q ≥ {alpha:g}",
               linewidths=0.6)
    ax.scatter(effect[sig & (effect > 0)], y[sig & (effect > 0)], s=14, color=colours[group],
               label=f"higher in {group}")
    ax.scatter(effect[sig & (effect < 0)], y[sig & (effect < 0)], s=14, color=colours[baseline],
               label=f"higher in {baseline}")
    line = -np.log10(alpha)
    ax.axhline(line, color="black", linestyle="--", linewidth=0.8)
    # The threshold's label sits at the right end of its line, away from the legend (upper left).
    ax.text(1.03, line, f"q = {alpha:g} ", va="bottom", ha="right", fontsize=8)
    ax.set_xlim(-1.05, 1.05)
    # Keep the threshold line well inside the plot even when nothing comes near it (a null group).
    ax.set_ylim(bottom=-0.05 * max(float(y.max(initial=0.0)), line), top=max(float(y.max(initial=0.0)), line) * 1.25)
    position = {int(f): i for i, f in enumerate(features)}
    rows = [position[int(f)] for f in labelled]
    # Labels go where they do not cover one another; those that fit nowhere are named below the plot.
    left_out = place_labels(ax, [(effect[i], y[i]) for i in rows], [f"#{f}" for f in labelled])
    if left_out:
        ax.text(0.99, 0.01, "no room to label: " + " ".join(left_out), transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, color="#555555")
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
    # One colour per group, from the run's whole list of groups, for every figure of the run.
    colours = group_colours(sets.groups, sets.baseline)
    written = [out.save_figure(group_mean_overview(result.means, always_list, title, options.agg, sets.baseline),
                               constants.MI2_PNG)]
    active = np.flatnonzero(np.any(np.stack(list(result.means.values())) > 0, axis=0))
    written.append(out.write_csv(
        constants.MI2_CSV, ["feature", *[f"mean_{g}" for g in sets.groups], "always_on"],
        [[int(f), *[_six(result.means[g][f]) for g in sets.groups], "yes" if f in set(always_list) else "no"]
         for f in active],
    ))
    written += write_heatmaps(out, result, options, colours)
    for group, finding in result.findings.items():
        c = finding.contrast
        # Label the strongest findings only: labels on non-significant points would invite over-reading.
        labelled = [r.feature for r in finding.top(LABELLED_IN_VOLCANO) if r.q < options.alpha]
        fig = volcano(c.effect_size, c.q_value, c.tested, labelled, options.alpha, group, sets.baseline, title,
                      colours)
        written.append(out.save_figure(fig, constants.MI4_PNG.format(group=group)))
    return written


MI3_HEADER = ["panel", "prompt_group", "prompt", "feature", "verdict", "activation", "prompts_drawn", "prompts_in_set"]


def write_heatmaps(out: OutputFolder, result: MeaningResult, options: MeaningOptions,
                   colours: dict[str, str] | None = None) -> list[Path]:
    """MI3.png and MI3.csv (nothing when a group has no ranked feature to show).

    MI3.csv holds exactly the cells drawn (:func:`group_heatmaps` leaves out what does not fit), each
    row with how many of its set's prompts were drawn and how many the set has: fewer drawn means a
    random sample (:func:`sample_rows`).
    """
    sets, summaries = _inputs(result)
    index, baseline = result.index, sets.baseline
    base_rows = sample_rows(len(index[baseline]), options.seed, baseline)
    panels, verdicts, heat_rows = [], [], []
    n_drawn = heatmap_layout(len(result.findings), options.top_k)[0]
    for number, (group, finding) in enumerate(result.findings.items()):
        feats = [r.feature for r in finding.top(options.top_k)]
        group_rows = sample_rows(len(index[group]), options.seed, group)
        rows_idx = np.concatenate([index[group][group_rows], index[baseline][base_rows]])
        acts = summaries.aggregates.dense(options.agg, rows_idx, np.array(feats, dtype=int))
        subtitle = f"{plural(finding.n_significant(options.alpha), 'feature')} at q < {options.alpha:g}"
        sizes = {group: (len(group_rows), len(index[group])), baseline: (len(base_rows), len(index[baseline]))}
        panels.append(HeatmapPanel(group, subtitle, acts, len(group_rows), feats,
                                   *[None if drawn == total else total for drawn, total in sizes.values()]))
        labels = [finding.verdicts[f].verdict if f in finding.verdicts else "" for f in feats]
        verdicts.append(labels)
        if number >= n_drawn:
            continue
        prompts = ([(group, sets.groups[group][i]) for i in group_rows]
                   + [(baseline, sets.groups[baseline][i]) for i in base_rows])
        for r, (g, prompt) in enumerate(prompts):
            for k, f in enumerate(feats[:MAX_FEATURES_PER_PANEL]):
                heat_rows.append([group, g, prompt, f, labels[k], _six(acts[r, k]), *sizes[g]])
    if not (panels and all(p.features for p in panels)):
        return []
    fig = group_heatmaps(panels, baseline, summaries.info.title, options.agg, verdicts=verdicts, seed=options.seed,
                         colours=colours)
    return [out.save_figure(fig, constants.MI3_PNG), out.write_csv(constants.MI3_CSV, MI3_HEADER, heat_rows)]
