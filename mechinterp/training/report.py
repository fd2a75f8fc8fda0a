"""Figures for Chapter 5: training curves (MI7) and learned-vs-true feature matching (MI8).

Built with ``matplotlib.figure.Figure`` (no pyplot, no GUI); each function returns the figure, and the
caller saves it with the numbers behind it beside it.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from mechinterp.core.figures import NotebookFigure
from mechinterp.training.train import ARCHITECTURE_LABELS, MatchScores, TrainingCurve

COLORS = {"standard": "tab:blue", "topk": "tab:orange"}


def training_curves(
    curves: dict[str, TrainingCurve],
    title: str,
    samples_label: str = "tokens",
    true_l0: float | None = None,
) -> Figure:
    """MI7: loss, L0 and explained variance against the training step, one line per SAE.

    Args:
        curves: architecture name ("standard"/"topk") -> its recorded curve.
        samples_label: what one training sample is ("tokens", or "samples" of synthetic data).
        true_l0: synthetic data only: the average number of true features active per sample.
    """
    fig = NotebookFigure(figsize=(13, 4.2))
    ax_loss, ax_l0, ax_ev = fig.subplots(1, 3)
    for arch, curve in curves.items():
        color = COLORS.get(arch, "tab:green")
        label = ARCHITECTURE_LABELS.get(arch, arch)
        ax_loss.plot(curve.step, curve.loss, color=color, lw=1.5, label=f"{label}: total loss")
        ax_loss.plot(curve.step, curve.mse, color=color, lw=1.0, ls="--", label=f"{label}: MSE part")
        ax_l0.plot(curve.step, curve.l0, color=color, lw=1.5, label=label)
        ax_ev.plot(curve.step, curve.explained_variance, color=color, lw=1.5, label=label)
    ax_loss.set_yscale("log")
    ax_l0.set_yscale("log")
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    for axis in (ax_loss, ax_l0):
        # One format for every label (plain numbers, major and minor alike), with the in-between ticks
        # labelled when the range spans few decades (else one label per decade is enough).
        axis.yaxis.set_major_formatter(plain)
        axis.yaxis.set_minor_formatter(plain if _spans_few_decades(axis) else NullFormatter())
    for axis in (ax_loss, ax_l0, ax_ev):
        axis.tick_params(which="both", labelsize=8)  # one label size everywhere: decades, in-betweens, linear axes
    if true_l0 is not None:
        ax_l0.axhline(true_l0, color="black", lw=0.8, ls="--", label=f"true features per sample ({true_l0:.2f})")
    ax_loss.set_title("training loss (log scale)", fontsize=10)
    ax_l0.set_title("L0: active latents per input (log scale)", fontsize=10)
    ax_ev.set_title("explained variance of the input", fontsize=10)
    # The first steps can be far below 0 (worse than predicting the mean); the axis starts at -0.2.
    ax_ev.set_ylim(max(-0.2, min(0.0, min((min(c.explained_variance) for c in curves.values()), default=0.0))), 1.02)
    first = next(iter(curves.values()))
    per_step = first.samples[-1] / first.step[-1] if first.step else 0
    for ax in (ax_loss, ax_l0, ax_ev):
        ax.set_xlabel(f"training step ({per_step:,.0f} {samples_label} per step)")
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    if len(curves) > 1 or true_l0 is not None:
        ax_l0.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _spans_few_decades(axis) -> bool:
    low, high = axis.axes.get_ylim()
    return low > 0 and high / low < 30


def feature_matching(
    matches: dict[str, MatchScores],
    baseline: MatchScores,
    firing_probabilities: np.ndarray,
    threshold: float,
    title: str,
) -> Figure:
    """MI8: for every true feature, its best |cosine| with any learned decoder row.

    Left: sorted, one curve per SAE; a curve that stays above the threshold line across the whole x
    range means every true feature has a latent pointing along it; grey is what random directions get.
    Right: the same numbers against how often each feature fires, which shows *which* features are
    missed (with a fixed training budget, the rarest ones).
    """
    fig = NotebookFigure(figsize=(13, 5.0))
    ax, ax_freq = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    n = len(baseline.max_cos)
    ranks = np.arange(1, n + 1)
    for arch, match in matches.items():
        color = COLORS.get(arch, "tab:green")
        label = ARCHITECTURE_LABELS.get(arch, arch)
        ax.plot(
            ranks,
            np.sort(match.max_cos)[::-1],
            color=color,
            lw=2,
            label=f"{label}: {match.recovery:.1%} recovered, mean {match.mean_max_cos:.3f}",
        )
        ax_freq.scatter(firing_probabilities, match.max_cos, s=10, color=color, alpha=0.6, label=label)
    ax.plot(
        ranks,
        np.sort(baseline.max_cos)[::-1],
        color="grey",
        lw=1.5,
        ls=":",
        label=f"random directions: {baseline.recovery:.1%} recovered, mean {baseline.mean_max_cos:.3f}",
    )
    ax_freq.scatter(firing_probabilities, baseline.max_cos, s=6, color="grey", alpha=0.4, label="random directions")
    for axis in (ax, ax_freq):
        axis.axhline(threshold, color="black", lw=0.8, ls="--")
        axis.set_ylim(0, 1.03)
        axis.grid(alpha=0.3)
    ax.text(2, threshold - 0.015, f"recovered above this line (|cos| > {threshold})", ha="left", va="top", fontsize=8)
    ax.set_xlim(1, n)
    ax.set_xlabel("true features, sorted by how well they are matched (best first)")
    ax.set_ylabel("max |cos| between the true feature and any decoder row")
    ax.legend(loc="lower left", fontsize=8)
    ax_freq.set_xscale("log")
    ax_freq.set_xlabel("firing probability of the true feature (log scale)")
    ax_freq.set_title("which features are missed? (one dot per true feature)", fontsize=10)
    ax_freq.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
