"""Chapter 3's figure of a feature's card (MI5): its activation histogram and the tokens it writes.

Built with ``matplotlib.figure.Figure`` (no pyplot, no GUI, no show()); the script saves it, inlines it in
the HTML card, and writes the numbers behind it beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from mechinterp.core.figures import NotebookFigure, axis_label


def feature_figure(
    feature: int,
    edges: np.ndarray,
    counts: dict[str, np.ndarray],
    zeros: int,
    total: int,
    promoted: Sequence[tuple[str, float]],
    suppressed: Sequence[tuple[str, float]],
    title: str,
) -> Figure:
    """MI5: where the feature fires (activation histogram) and what it writes (top logit effects).

    Args:
        edges: ``[bins + 1]`` histogram bin edges over non-zero activations.
        counts: per source (prompt group or corpus), ``[bins]`` token counts, stacked in the plot.
        zeros: tokens where the feature is 0 (not drawn: they would dwarf the rest), ``total``: all tokens.
        promoted, suppressed: ``(token, logit effect)`` pairs, strongest first.
    """
    fig = NotebookFigure(figsize=(14, 7.2))
    ax_hist, ax_logit = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    widths = np.diff(edges)
    bottom = np.zeros(len(widths))
    palette = colormaps["tab10"]
    for i, (source, c) in enumerate(counts.items()):
        if c.sum() == 0:
            continue
        ax_hist.bar(edges[:-1], c, width=widths, bottom=bottom, align="edge", color=palette(i % 10),
                    edgecolor="white", linewidth=0.4, label=f"{source} ({int(c.sum())} tokens)")
        bottom += c
    fired = total - zeros
    if fired == 0:
        ax_hist.text(0.5, 0.5, "never fires on these texts", ha="center", va="center", transform=ax_hist.transAxes)
    else:
        # Headroom above the tallest bar, so the legend never covers a bar.
        ax_hist.set_ylim(0, float(bottom.max()) * 1.45)
        ax_hist.legend(title="texts from", fontsize=9, title_fontsize=9, loc="upper right")
    ax_hist.set_xlabel("activation (tokens where it fires; BOS and padding excluded)")
    ax_hist.set_ylabel("number of tokens")
    ax_hist.set_title(
        f"Where it fires: {fired} of {total} tokens ({100 * fired / max(total, 1):.3g}%); "
        f"{zeros} zeros not drawn",
        fontsize=10,
    )
    ax_hist.grid(axis="y", alpha=0.3)

    # Promoted on top (strongest first), suppressed below (strongest last), a gap between.
    labels = [axis_label(t) for t, _ in promoted] + [""] + [axis_label(t) for t, _ in reversed(suppressed)]
    values = [v for _, v in promoted] + [0.0] + [v for _, v in reversed(suppressed)]
    colors = ["#2e7d32"] * len(promoted) + ["white"] + ["#c62828"] * len(suppressed)
    y = np.arange(len(values))[::-1]
    ax_logit.barh(y, values, color=colors, height=0.75)
    ax_logit.set_yticks(y, labels, fontsize=8.5, family="monospace")
    ax_logit.axvline(0, color="black", linewidth=0.8)
    ax_logit.set_xlabel(f"direct logit effect of one unit of feature #{feature} (W_dec[f] @ W_U)")
    ax_logit.set_title(f"What it writes: {len(promoted)} most promoted (green), {len(suppressed)} most suppressed (red)",
                       fontsize=10)
    ax_logit.grid(axis="x", alpha=0.3)
    ax_logit.margins(y=0.01)
    fig.suptitle(f"Feature #{feature}\n{title}", fontsize=11)
    return fig
