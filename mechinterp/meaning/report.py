"""Chapter 2's figures: group means (MI2), per-group heatmaps (MI3) and volcano plots (MI4).

Built with ``matplotlib.figure.Figure`` (no pyplot, no GUI, no show()). Every function takes the
numbers and returns the figure; the caller saves it (through its ``OutputFolder``) with the numbers
behind it beside it, and a notebook shows it inline. Titles name the model, SAE and hook.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from mechinterp.core.figures import NotebookFigure, white_zero_cmap

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
