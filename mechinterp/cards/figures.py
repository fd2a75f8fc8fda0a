"""Chapter 3's figures of a feature's card: MI5 (its activation histogram over the prompts and the tokens
it writes) and MI5 corpus (the histogram of its activations over a mined corpus).

Built with ``matplotlib.figure.Figure`` (no pyplot, no GUI, no show()); the script saves them, inlines them
in the HTML card, and writes the numbers behind them beside them. In a notebook they display inline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from mechinterp.cards.card import CorpusEvidence, FeatureCard
from mechinterp.cards.family import FamilyCard
from mechinterp.core import constants
from mechinterp.core.figures import DEFAULT_BASELINE, NotebookFigure, axis_label, group_colours

# Tokens drawn on each side of MI5's logit panel: the panel has a fixed height, so --n-tokens 200 would
# squeeze 401 labels into it. MI5_<id>.csv and the card's page list every one.
MAX_LOGIT_BARS = 25


def card_figure(card: FeatureCard, title: str = "") -> Figure:
    """MI5 of a card: :func:`feature_figure` with the card's histogram and logit effects."""
    fired, total = card.fired_total
    return feature_figure(
        card.feature, card.hist_edges, card.hist_counts, total - fired, total,
        [(x.token, x.value) for x in card.promoted], [(x.token, x.value) for x in card.suppressed], title,
        baseline=card.baseline or DEFAULT_BASELINE,
    )


def feature_figure(
    feature: int | str,
    edges: np.ndarray,
    counts: dict[str, np.ndarray],
    zeros: int,
    total: int,
    promoted: Sequence[tuple[str, float]],
    suppressed: Sequence[tuple[str, float]],
    title: str,
    *,
    heading: str | None = None,
    activation: str = "activation",
    writes: str | None = None,
    baseline: str | None = DEFAULT_BASELINE,
) -> Figure:
    """MI5: where the feature fires (activation histogram) and what it writes (top logit effects).

    Args:
        feature: the feature's id, or a family's name (``"409+501"``): the name of MI5's files.
        edges: ``[bins + 1]`` histogram bin edges over non-zero activations.
        counts: per source (prompt group or corpus), ``[bins]`` token counts, stacked in the plot.
        zeros: tokens where the feature is 0 (not drawn: they would dwarf the rest), ``total``: all tokens.
        promoted, suppressed: ``(token, logit effect)`` pairs, strongest first (the first
            :data:`MAX_LOGIT_BARS` of each are drawn).
        heading, activation, writes: for a family's card, the figure's heading (default "Feature #id"),
            what the histogram counts, and what the logit effects are of (default one unit of the feature).
        baseline: the reference group, drawn grey; every source has its colour of
            :func:`~mechinterp.core.figures.group_colours`, as in Chapter 2's figures.
    """
    listed = len(promoted), len(suppressed)
    promoted, suppressed = promoted[:MAX_LOGIT_BARS], suppressed[:MAX_LOGIT_BARS]
    # Constrained layout leaves the logit panels' long token labels room of their own.
    fig = NotebookFigure(figsize=(14, 7.2), layout="constrained")
    # The histogram on the left; on the right, promoted above suppressed, each as tall as its rows need.
    grid = fig.add_gridspec(2, 2, width_ratios=[1.25, 1],
                            height_ratios=[min(len(promoted), MAX_LOGIT_BARS) + 2, min(len(suppressed), MAX_LOGIT_BARS) + 2])
    ax_hist = fig.add_subplot(grid[:, 0])
    logit_axes = fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 1])
    widths = np.diff(edges)
    bottom = np.zeros(len(widths))
    colours = group_colours(counts, baseline)
    for source, c in counts.items():
        if c.sum() == 0:
            continue
        ax_hist.bar(edges[:-1], c, width=widths, bottom=bottom, align="edge", color=colours[source],
                    edgecolor="white", linewidth=0.4, label=f"{source} ({int(c.sum())} tokens)")
        bottom += c
    fired = total - zeros
    if fired == 0:
        ax_hist.text(0.5, 0.5, "never fires on these texts", ha="center", va="center", transform=ax_hist.transAxes)
    else:
        # Headroom above the tallest bar, so the legend never covers a bar.
        ax_hist.set_ylim(0, float(bottom.max()) * 1.45)
        ax_hist.legend(title="texts from", fontsize=9, title_fontsize=9, loc="upper right")
    ax_hist.set_xlabel(f"{activation} (tokens where it fires; BOS and padding excluded)")
    ax_hist.set_ylabel("number of tokens")
    ax_hist.set_title(
        f"Where it fires: {fired} of {total} tokens ({100 * fired / max(total, 1):.3g}%); "
        f"{zeros} zeros not drawn",
        fontsize=10,
    )
    ax_hist.grid(axis="y", alpha=0.3)

    of_listed = (f"\n(the strongest drawn; all {listed[0]} promoted and {listed[1]} suppressed are in "
                 f"{constants.MI5_CSV.format(feature=feature)})" if listed != (len(promoted), len(suppressed)) else "")
    writes = writes or f"one unit of feature #{feature} (W_dec[f] @ W_U)"
    _logit_panels(logit_axes, promoted, suppressed, f"direct logit effect of {writes}{of_listed}")
    fig.suptitle(f"{heading or f'Feature #{feature}'}\n{title}", fontsize=11)
    return fig


def _logit_panels(axes: tuple[Axes, Axes], promoted: Sequence[tuple[str, float]],
                  suppressed: Sequence[tuple[str, float]], xlabel: str) -> None:
    """What it writes, in two panels with their own scales: promoted tokens above (strongest first), suppressed
    below. One shared scale would draw a -0.017 suppression as nothing next to a +4 promotion."""
    top, bottom = axes
    for panel, rows, color, name in ((top, promoted, "#2e7d32", "promoted"), (bottom, suppressed, "#c62828", "suppressed")):
        y = np.arange(len(rows))[::-1]
        panel.barh(y, [v for _, v in rows], color=color, height=0.75)
        panel.set_yticks(y, [axis_label(t) for t, _ in rows], fontsize=8.5, family="monospace")
        panel.axvline(0, color="black", linewidth=0.8)
        panel.grid(axis="x", alpha=0.3)
        panel.margins(y=0.02)
        panel.set_title(("What it writes: " if name == "promoted" else "")
                        + f"{len(rows)} most {name}" + (" (its own scale)" if name == "suppressed" else ""),
                        fontsize=10 if name == "promoted" else 9, loc="left")
        if not rows:
            panel.text(0.5, 0.5, f"none {name}", ha="center", va="center", transform=panel.transAxes)
    bottom.set_xlabel(xlabel)


def family_figure(card: FamilyCard, title: str = "") -> Figure:
    """MI5 of a family's card: the histogram of the family's activation, and what the family writes."""
    fired, total = card.fired_total
    return feature_figure(
        card.name, card.hist_edges, card.hist_counts, total - fired, total,
        [(x.token, x.value) for x in card.promoted], [(x.token, x.value) for x in card.suppressed], title,
        # Two lines each: the two panels' labels would overlap on one.
        heading=f"Family {card.label}", activation="family activation: each member ÷ its typical max\n",
        writes="the family\n(Σ typical max × W_dec[m] @ W_U: every member at its typical max)",
    )


# --- the corpus histogram ------------------------------------------------------------------------------


def log_activation_axis(ax: Axes, lows: np.ndarray, highs: np.ndarray) -> None:
    """A log x axis over histogram bins ``lows``-``highs`` of activations, at least one decade wide, so that a
    feature firing in one or two bins still shows a readable axis, with plain numbers (0.5, 1, 2) rather
    than 2.5x10^0."""
    ax.set_xscale("log")
    lo, hi = float(lows.min()), float(highs.max())
    if hi / lo < 10:
        middle = float(np.sqrt(lo * hi))
        lo, hi = middle / 10 ** 0.5, middle * 10 ** 0.5
    ax.set_xlim(lo / 1.1, hi * 1.1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(_minor_label))


def _minor_label(x: float, _pos: int) -> str:
    """Minor log-axis ticks: only 2 and 5 of each decade are labelled."""
    if x <= 0:
        return ""
    leading = x / 10 ** np.floor(np.log10(x))
    return f"{x:g}" if min(abs(leading - 2), abs(leading - 5)) < 1e-6 else ""


def corpus_figure(feature: int, c: CorpusEvidence, title: str) -> Figure:
    """MI5 corpus: the histogram of the feature's activations over every mined corpus token.

    The bins are the pass's fixed log-spaced ones (a streaming pass cannot know a feature's range in
    advance), drawn on a log axis so each has the same width; the y axis counts tokens. The first bin,
    (0, lowest edge), has no log width: it is drawn hatched, as wide as one bin, left of the edge.
    Vertical lines mark the quartiles and the median of the per-window maxima where it fires (the
    levels of the card's lower examples) and the lowest of the top windows shown.
    """
    fig = NotebookFigure(figsize=(10, 6), layout="constrained")
    ax = fig.subplots()
    edges, counts = np.asarray(c.hist_edges, dtype=float), np.asarray(c.hist_counts)
    if c.fired == 0:
        ax.text(0.5, 0.5, "never fires in the corpus", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
    else:
        lows, highs = edges[:-1].copy(), edges[1:].copy()
        first = int(lows[0] <= 0)  # 1 when the first bin starts at 0
        if first:
            step = highs[1] / highs[0] if len(highs) > 1 and highs[0] > 0 else 10 ** 0.1
            lows[0] = highs[0] / step
        ax.bar(lows[first:], counts[first:], width=(highs - lows)[first:], align="edge", color="#1f77b4",
               edgecolor="white", linewidth=0.4, label=f"corpus tokens where it fires ({c.fired:,} in all)")
        if first:
            ax.bar(lows[0], counts[0], width=highs[0] - lows[0], align="edge", color="#9ecae1", hatch="//",
                   edgecolor="white", linewidth=0.4, label=f"all activations below {highs[0]:.3g} ({int(counts[0]):,})")
        log_activation_axis(ax, lows, highs)
        _reference_lines(ax, c)
        ax.set_ylim(0, float(counts.max()) * 1.1)
        ax.legend(fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    ax.set_xlabel("activation (log scale; corpus tokens where it fires, BOS and padding excluded)")
    ax.set_ylabel("number of tokens")
    ax.set_title(
        f"In the corpus: fires on {c.fired:,} of {c.n_tokens:,} tokens ({100 * c.density:.3g}%), "
        f"in {c.windows_fired:,} of {c.n_windows:,} windows; {c.n_tokens - c.fired:,} zeros not drawn",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Feature #{feature} over {c.corpus}\n{title}", fontsize=11)
    return fig


# Reference lines closer than this share of the log axis' width are drawn as one: two lines a pixel or
# two apart read as one line with two legend entries, and the reader cannot tell which is which.
SAME_PLACE = 0.01


def _reference_lines(ax: Axes, c: CorpusEvidence) -> None:
    """MI5 corpus' vertical lines: the quartiles and median of the per-window maxima, and the lowest of
    the top windows shown. Lines on one spot (a feature that fires at one strength) become one line whose
    legend entry names them all: "lower quartile = median of the per-window maxima = lowest of the top
    10 windows (~3)"."""
    # (name, value, is a level of the per-window maxima, style)
    # Three styles a reader tells apart at a glance (a dense dash-dot beside "-." did not), and the
    # lowest top window red and dotted.
    lines = [(name, float(value), True, {"color": "#444", "linestyle": style, "linewidth": 1})
             for (name, value), style in zip(c.levels, ("--", "-", "-."))]
    if c.examples:
        lines.append((f"lowest of the top {len(c.examples)} windows", float(c.examples[-1].max_act), False,
                      {"color": "#b00020", "linestyle": ":", "linewidth": 1.5}))
    low, high = ax.get_xlim()
    width = np.log10(high / low)
    spots: list[list[tuple]] = []
    for line in sorted(lines, key=lambda item: item[1]):
        last = spots[-1][-1][1] if spots else None
        if last is not None and last > 0 and line[1] > 0 and np.log10(line[1] / last) / width < SAME_PLACE:
            spots[-1].append(line)
        else:
            spots.append([line])
    for spot in spots:
        levels = " = ".join(name for name, _, level, _ in spot if level)
        names = [f"{levels} of the per-window maxima"] if levels else []
        names += [name for name, _, level, _ in spot if not level]
        # The lowest top window's red line is the one a reader looks for: it keeps its style on a shared spot.
        style = next((kw for _, _, level, kw in spot if not level), spot[0][3])
        ax.axvline(spot[0][1], **style, label=f"{' = '.join(names)} (~{spot[0][1]:.3g})")
