"""Chapter 6's presentation: a :class:`~mechinterp.attribution.attribute.FeatureAttribution` as terminal
text, as the tables behind the figure, and as the figure (MI9): where a feature's pre-activation comes
from, and whether ablation agrees.

The analysis (:mod:`mechinterp.attribution.attribute`) returns numbers; everything here only formats them,
so the script and a notebook show the same thing. Text functions return strings (the script prints them).
The figure is built with ``matplotlib.figure.Figure`` (no pyplot, no GUI, no show()); the script saves it
and writes the numbers behind every panel beside it as CSV.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from mechinterp.attribution.attribute import (
    ZERO_TOLERANCE,
    CausalCheck,
    DirectAttribution,
    FeatureAttribution,
    HeadSources,
    WeightRow,
    WeightsView,
    is_zero,
)
from mechinterp.core import constants
from mechinterp.core.figures import NotebookFigure, place_labels
from mechinterp.core.tables import WIDTH, format_table, safe_text, wrapped

# One colour per component kind, the same in every panel and every figure.
KIND_COLOURS = {
    "head": "#1f77b4",
    "mlp": "#ff7f0e",
    "embed": "#2ca02c",
    "pos_embed": "#98df8a",
    "bias": "#7f7f7f",
    "sae_bias": "#bcbd22",
}
ANNOTATE_MAX_CELLS = 160  # write the value into each heatmap cell up to this many cells
# Bars in MI9's left panel: each adds 0.3 inch to the figure, so --top-components 200 once asked for a
# figure 9,400 px tall. Every row is in MI9_<id>.csv whatever the figure shows.
MAX_BARS = 40


def head_mlp_grid(result: FeatureAttribution, n_heads: int) -> tuple[np.ndarray, int]:
    """Heads' mean contributions as ``[layers, n_heads + 1]``, the last column the layer's MLP (NaN: none).

    Returns:
        ``(grid, n_layers)``; ``n_layers`` is 0 when no block writes before the hook.
    """
    assert result.direct is not None
    rows = result.direct.rows
    layers = [r.layer for r in rows if r.kind in ("head", "mlp") and r.layer is not None]
    n_layers = max(layers) + 1 if layers else 0
    grid = np.full((n_layers, n_heads + 1), np.nan)
    for r in rows:
        if r.kind == "head":
            grid[r.layer, r.head] = r.mean_contribution
        elif r.kind == "mlp":
            grid[r.layer, n_heads] = r.mean_contribution
    return grid, n_layers


def attribution_figure(result: FeatureAttribution, n_heads: int, title: str, n_top: int = 15) -> Figure:
    """MI9: the top components (bars), every head and MLP (layer x head heatmap), predicted vs measured drops.

    Args:
        result: the feature's attribution; ``result.direct`` must not be None (the feature fired).
        n_heads: the model's heads per layer (the heatmap's width).
        title: names the model, SAE and hook.
        n_top: bars in the left panel (at most :data:`MAX_BARS`; the panel's title says when fewer).
    """
    direct = result.direct
    if direct is None:
        raise ValueError("no figure for a feature that never fires")
    n_live = len(direct.rows) - len(direct.zero_rows())
    capped = min(n_top, n_live) > MAX_BARS
    n_top = min(n_top, MAX_BARS)
    # As tall as the bars drawn need: rows that contribute nothing are not drawn.
    fig = NotebookFigure(figsize=(19, max(6.5, 0.3 * min(n_top, n_live) + 2.5)), layout="constrained")
    ax_bar, ax_map, ax_abl = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.0, 1.25, 0.95]})
    _bars_panel(ax_bar, direct, n_top)
    if capped:
        ax_bar.set_title(f"{ax_bar.get_title()}\nthe largest {n_top} drawn (every row is in "
                         f"{output_name(constants.MI9_CSV, result.feature)})", fontsize=10)
    _heads_panel(fig, ax_map, result, n_heads)
    fig.suptitle(
        f"Feature #{result.feature}: where its pre-activation comes from (hook {result.hook_name})\n{title}"
        + _folded_note(result),
        fontsize=11,
    )
    _causal_panel(ax_abl, direct, result.causal)  # last: it places its labels in the finished layout
    return fig


def _folded_note(result: FeatureAttribution) -> str:
    """The figure's one line on what it leaves out: components that contribute nothing (not a bar) and
    ablations that change nothing (not a point), as the terminal folds them; "" when there are none."""
    direct, causal = result.direct, result.causal
    parts = []
    if direct is not None and (n := len(direct.zero_rows())):
        parts.append(f"{n} component{'s' if n != 1 else ''} that contribute{'s' if n == 1 else ''} nothing (bars)")
    if causal is not None and (n := sum(causal.is_zero_row(r) for r in causal.rows)):
        parts.append(f"{n} ablated component{'s' if n != 1 else ''} that change{'s' if n == 1 else ''} nothing "
                     "(points)")
    if not parts:
        return ""
    files = output_name(constants.MI9_CSV, result.feature) + (
        " and " + output_name(constants.MI9_ABLATION_CSV, result.feature) if causal is not None else "")
    return (f"\nnot drawn: {' and '.join(parts)}, i.e. at most {ZERO_TOLERANCE:g} × the mean pre-activation "
            f"(every row is in {files})")


def _bars_panel(ax: Axes, direct: DirectAttribution, n_top: int) -> None:
    """Left: the largest rows that contribute something, strongest on top, spread over the firing tokens as
    error bars. Rows that contribute nothing are left out (the figure's title counts them)."""
    zero = {r.component for r in direct.zero_rows()}
    top = [r for r in direct.top(len(direct.rows)) if r.component not in zero][:n_top]
    if not top:
        ax.text(0.5, 0.5, "no component contributes anything", ha="center", va="center", transform=ax.transAxes)
    y = np.arange(len(top))[::-1]
    ax.barh(
        y,
        [r.mean_contribution for r in top],
        xerr=[r.std_contribution for r in top],
        color=[KIND_COLOURS[r.kind] for r in top],
        height=0.75,
        error_kw={"elinewidth": 0.8, "alpha": 0.6},
    )
    # Each row's value beside its name: a real but small contribution (0.01 next to 4.5) has no visible bar.
    width = max((len(r.component) for r in top), default=0)
    ax.set_yticks(y, [f"{r.component:<{width}} {num(r.mean_contribution, 2, sign=True):>8}" for r in top],
                  fontsize=9, family="monospace")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.axvline(
        direct.mean_pre_activation,
        color="#d62728",
        linestyle="--",
        linewidth=1.0,
        label=f"mean pre-activation {direct.mean_pre_activation:.3g}",
    )
    for kind, colour in KIND_COLOURS.items():
        if any(r.kind == kind for r in top):
            ax.barh([np.nan], [np.nan], color=colour, label=kind)
    ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("mean contribution to the pre-activation (bar: spread over firing tokens)")
    ax.set_title(
        f"1. Direct attribution on {direct.n_tokens} firing tokens\nall {len(direct.rows)} rows add up to "
        f"{direct.sum_of_rows:.4f} (SAE: {direct.mean_pre_activation:.4f}, residual {direct.residual:+.1e})",
        fontsize=10,
    )
    ax.grid(axis="x", alpha=0.3)


def _heads_panel(fig: Figure, ax: Axes, result: FeatureAttribution, n_heads: int) -> None:
    """Middle: every head as a layer x head heatmap, the MLP of each layer in the last column."""
    grid, n_layers = head_mlp_grid(result, n_heads)
    if n_layers == 0:
        ax.text(0.5, 0.5, "no block writes before this hook", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    vmax = heatmap_limit(grid, result.direct.mean_pre_activation)
    largest = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0
    cmap = colormaps["RdBu_r"].with_extremes(bad="#eeeeee")
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=cmap,
        vmin=-vmax,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
    )
    ax.axvline(n_heads - 0.5, color="white", linewidth=4)
    ax.set_xticks(range(n_heads + 1), [f"H{h}" for h in range(n_heads)] + ["MLP"], fontsize=8)
    ax.set_yticks(range(n_layers), [f"L{layer}" for layer in range(n_layers)], fontsize=8)
    ax.set_xlabel("attention head (last column: the layer's MLP)")
    ax.set_ylabel("layer")
    if grid.size <= ANNOTATE_MAX_CELLS:
        threshold = result.direct.zero_threshold
        for (row, col), value in np.ndenumerate(grid):
            if np.isfinite(value):
                # Round-off (1e-10 from a head that does nothing) reads "0", as the terminal counts it.
                text = "0" if is_zero(value, threshold) else f"{value:+.2g}"
                ax.text(col, row, text, ha="center", va="center", fontsize=7,
                        color="white" if abs(value) > 0.6 * vmax else "black")
    # Below the heatmap: on its right, the bar's label met the next panel's y label.
    fig.colorbar(image, ax=ax, location="bottom", shrink=0.8, pad=0.02, aspect=40,
                 extend="both" if largest > vmax else "neither",
                 label=f"mean contribution, scale ±{vmax:.3g} = the mean pre-activation (red builds the feature)")
    # When every cell is round-off, say so: "the largest cell is 1.5e-10" over a grid of 0s reads as a contradiction.
    mean = f"the mean pre-activation {result.direct.mean_pre_activation:.3g}"
    largest_text = (f"all contribute nothing (the largest, {largest:.2g}, is at most {ZERO_TOLERANCE:g} × {mean})"
                    if is_zero(largest, result.direct.zero_threshold) else f"the largest cell is {largest:.2g} ({mean})")
    ax.set_title(f"Every head and MLP, mean over firing tokens\n{largest_text}", fontsize=10)


def heatmap_limit(grid: np.ndarray, mean_pre_activation: float) -> float:
    """The heatmap's colour limit: ±|mean pre-activation|, the size of the whole signal, so a cell reads
    as a share of it and noise (1e-10 from a head that does nothing) stays white. The largest cell when
    the mean pre-activation is 0, and 1 when everything is 0."""
    limit = abs(float(mean_pre_activation))
    if not np.isfinite(limit) or limit == 0:
        limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0
    return limit if limit > 0 else 1.0


# Points closer than this (axes fractions, x and y) draw their markers over one another: one label
# names them, and a note under the panel lists them. Points further apart each get their own label,
# placed by :func:`~mechinterp.core.figures.place_labels` where it covers no other.
LABEL_APART = (0.025, 0.025)


def point_groups(
    x: np.ndarray, y: np.ndarray, size: np.ndarray, apart: tuple[float, float] = LABEL_APART,
) -> list[list[int]]:
    """Points in groups drawn on one spot: each group's first point is its largest (``size``), and every
    other member lies within ``apart`` of it (``x``, ``y`` as axes fractions)."""
    order = np.argsort(-np.asarray(size), kind="stable")
    groups: list[list[int]] = []
    for i in order:
        home = next((g for g in groups if abs(x[g[0]] - x[i]) < apart[0] and abs(y[g[0]] - y[i]) < apart[1]), None)
        if home is None:
            groups.append([int(i)])
        else:
            home.append(int(i))
    return groups


def _label_points(ax: Axes, names: Sequence[str], x: np.ndarray, y: np.ndarray) -> None:
    """Name each point, no label over another; a stack of points gets a count, and a note under the panel
    lists it (and any label that found no room)."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    groups = point_groups((x - x0) / (x1 - x0), (y - y0) / (y1 - y0), np.maximum(np.abs(x), np.abs(y)))
    tiny = 1e-3 * max(x1 - x0, y1 - y0)  # rounding noise (1e-10 of a drop) reads as 0
    notes, texts = [], []
    for group in groups:
        lead = group[0]
        if len(group) == 1:
            texts.append(names[lead])
            continue
        px, py = (0.0 if abs(v) < tiny else float(v) for v in (x[lead], y[lead]))
        texts.append(f"[{len(notes) + 1}] {len(group)} points")
        notes.append(f"{texts[-1].split()[0]} near ({px:.2g}, {py:.2g}): " + ", ".join(names[i] for i in group))
    note = ax.annotate("\n".join(textwrap.fill(n, 70, subsequent_indent="    ") for n in notes), (0.0, 0.0),
                       xycoords=("axes fraction", ax.xaxis.label), xytext=(0, -4), textcoords="offset points",
                       va="top", ha="left", fontsize=8)  # under the x label, whatever its height
    # Lay the figure out first: labels are placed in points, so the axes must have their final size.
    ax.figure.draw_without_rendering()
    renderer = ax.figure._get_renderer()
    # No label on the legend or on a marker (4 points around each centre: the markers' radius and a little).
    avoid = [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() else []
    r = 4 * ax.figure.dpi / 72
    avoid += [Bbox.from_extents(px - r, py - r, px + r, py + r) for px, py in ax.transData.transform(np.c_[x, y])]
    left_out = place_labels(ax, [(x[g[0]], y[g[0]]) for g in groups], texts, fontsize=7.5, avoid=avoid)
    if left_out:
        note.set_text("\n".join(filter(None, [note.get_text(), textwrap.fill(
            "no room to label: " + ", ".join(left_out), 70, subsequent_indent="    ")])))


def _causal_panel(ax: Axes, direct: DirectAttribution, causal: CausalCheck | None) -> None:
    """Right: the causal check, predicted (direct path) against measured (all paths) drops."""
    if causal is None or not causal.rows:
        ax.text(0.5, 0.5, "no ablation run", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    # Components whose ablation changes nothing would all sit on (0, 0): the title counts them instead.
    rows = [r for r in causal.rows if not causal.is_zero_row(r)]
    if not rows:
        ax.text(0.5, 0.5, "no ablated component changes the feature", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    predicted = np.array([r.predicted_drop for r in rows])
    measured = np.array([r.measured_drop_pre for r in rows])
    kinds = [next(x.kind for x in direct.rows if x.component == r.component) for r in rows]
    ax.scatter(predicted, measured, c=[KIND_COLOURS[k] for k in kinds], s=40, zorder=3)
    low = float(min(predicted.min(), measured.min(), 0.0))
    high = float(max(predicted.max(), measured.max(), 0.0))
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="black", linewidth=0.8, linestyle="--",
            label="measured = predicted")
    # Room on the right and top for the point labels.
    ax.set_xlim(low - pad, high + 3 * pad)
    ax.set_ylim(low - pad, high + 3 * pad)
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.axvline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("predicted drop of the pre-activation (direct path only)")
    ax.set_ylabel("measured drop after mean-ablation (all paths)")
    corr = f", r = {causal.correlation:.3f}" if causal.correlation is not None else ""
    ax.set_title(
        f"4. Causal check: {causal.n_agree} of {causal.n_nonzero} non-zero agree within {causal.agree_tolerance:.0%}{corr}",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    _label_points(ax, [r.component for r in rows], predicted, measured)  # last: in the finished layout


# --- text for the terminal ----------------------------------------------------------------------------


def _wrap(text: str, indent: str = "") -> list[str]:
    """Prose at 100 columns, continuation lines indented two more spaces."""
    return textwrap.wrap(
        text, WIDTH, initial_indent=indent, subsequent_indent=indent + "  ", break_on_hyphens=False
    )


def _chunks(items: list[str], indent: str, per_line: int = 4) -> list[str]:
    """A list of short items, ``per_line`` to a line, never split inside an item (tokens can hold spaces)."""
    rows = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)] or ["(none)"]
    return [(indent if i == 0 else " " * len(indent)) + row for i, row in enumerate(rows)]


def num(x: float, digits: int = 4, sign: bool = False) -> str:
    """``x`` to ``digits`` significant digits (``0`` for an exact zero; never ``-0.0000``)."""
    if x == 0:
        return "0"
    text = f"{x:{'+' if sign else ''}#.{digits}g}"
    return text[:-1] if text.endswith(".") else text


def percent(x: float, digits: int = 3) -> str:
    """A fraction as a percentage to ``digits`` significant digits (``-`` when undefined)."""
    return "-" if x != x else num(100 * x, digits) + "%"


def format_attribution_text(result: FeatureAttribution, title: str, n_rows: int = 12) -> str:
    """The four answers as terminal text (the script prints it; ``n_rows``: components listed)."""
    lines = [f"=== Feature #{result.feature} · {title}", *_wrap(f"Filtered: {result.filtered}")]
    for note in result.notes:
        lines += _wrap(f"Note: {note}")
    threshold = result.direct.zero_threshold if result.direct is not None else 0.0
    lines += direct_lines(result.direct, n_rows) + source_lines(result.head_sources, threshold)
    lines += weights_lines(result.weights) + causal_lines(result.causal, fired=result.direct is not None)
    return "\n".join(lines)


BRIEF_ITEMS = 4  # components, heads and tokens per answer in the terminal summary


def brief_attribution_lines(result: FeatureAttribution, origin: str | None = None) -> list[str]:
    """The four answers in a line or two each, for the terminal summary (the full report lists every row)."""
    lines = ["", f"=== Feature #{result.feature}" + (f" ({origin})" if origin else "")]
    d = result.direct
    if d is None:
        return lines + ["   It never fires on these texts: nothing to attribute."]
    live = [r for r in d.top(len(d.rows)) if r not in d.zero_rows()]
    shown = ", ".join(f"{r.component} {num(r.mean_contribution, 3, sign=True)} ({percent(r.share)})"
                      for r in live[:BRIEF_ITEMS])
    lines += _brief_wrap(f"1. Direct: mean pre-activation {num(d.mean_pre_activation)} over {d.n_tokens} firing tokens; the "
                   f"{len(d.rows)} rows add up to it (residual {d.residual:+.1e}). Largest: {shown}"
                   + (f"; {len(d.zero_rows())} rows are zero" if d.zero_rows() else ""), "   ")
    lines += (_brief_wrap("2. Sources: " + "; ".join(safe_text(hs.sentence) for hs in result.head_sources[:2]), "   ")
              if result.head_sources else ["   2. Sources: no head contributes, so there is nothing to trace."])
    wv = result.weights
    heads = [r for r in wv.heads if not is_zero(r.score, wv.zero_threshold)]
    tokens = [r for r in wv.tokens_up if not is_zero(r.score, wv.zero_threshold)]
    lines += _brief_wrap("3. Weights alone (direct path only): heads "
                   + (", ".join(f"{r.component} {num(r.score, 3)}" for r in heads[:BRIEF_ITEMS]) or "none")
                   + "; tokens " + (", ".join(f"{safe_text(repr(r.component))} {num(r.score, 3, sign=True)}"
                                              for r in tokens[:BRIEF_ITEMS]) or "none"), "   ")
    if result.causal is not None:
        lines += _brief_wrap(f"4. Causal check: {result.causal.summary}.", "   ")
    return lines


def _brief_wrap(text: str, indent: str) -> list[str]:
    """``text`` wrapped with ``indent``, continuation lines two further in, quoted tokens kept whole."""
    return wrapped(indent + text, indent + "  ").split("\n")


def _zero_line(n: int, what: str, threshold: float, of: str, indent: str = "   ") -> list[str]:
    """The one counted line that stands for ``n`` rows that are zero (none when ``n`` is 0); ``of`` names
    the value and the scale the threshold is a fraction of, e.g. ``"|mean|", "the mean pre-activation"``."""
    if not n:
        return []
    value, scale = of
    below = f"{value} <= {threshold:.2g}, {ZERO_TOLERANCE:g} x {scale}" if threshold else "exactly zero"
    return _wrap(f"{n} {what} ({below})", indent)


def direct_lines(d: DirectAttribution | None, n_rows: int = 12) -> list[str]:
    """Question 1: the sum check, the ``n_rows`` largest non-zero rows, then one line counting the zero rows."""
    if d is None:
        return ["", "1. Direct attribution: the feature never fires on these texts."]
    lines = ["", *_wrap(
        f"1. Direct attribution: mean pre-activation {num(d.mean_pre_activation)} (mean activation "
        f"{num(d.mean_activation)}) over {d.n_tokens} firing tokens in {d.n_texts} texts "
        f"(of {d.n_text_tokens} text tokens)."
    )]
    lines += _wrap(
        f"Check: the {len(d.rows)} rows add up to {num(d.sum_of_rows, 7)}; the SAE's own hook_sae_acts_pre gives "
        f"{num(d.mean_pre_activation, 7)}; residual {d.residual:+.2e} (largest on one token "
        f"{d.max_token_residual:.2e}).",
        "   ",
    )
    zero = d.zero_rows()
    live = [r for r in d.top(len(d.rows)) if r not in zero]
    lines.append(f"   {'component':<12} {'mean':>10} {'share':>8} {'spread':>10}")
    for r in live[:n_rows]:
        lines.append(f"   {r.component:<12} {num(r.mean_contribution, sign=True):>10} {percent(r.share):>8} "
                     f"{num(r.std_contribution, 3):>10}")
    if len(live) > n_rows:
        lines.append(f"   {len(live) - n_rows} smaller non-zero components are in the CSV")
    lines += _zero_line(len(zero), f"{'other ' if live else ''}components contribute nothing", d.zero_threshold,
                        ("|mean|", "the mean pre-activation; every row is in the CSV"))
    return lines


def source_lines(head_sources: list[HeadSources], threshold: float = 0.0) -> list[str]:
    """Question 2: each traced head's sentence and its non-zero source tokens (``threshold``: the direct
    attribution's :attr:`~DirectAttribution.zero_threshold`)."""
    if not head_sources:
        return ["", "2. From which tokens: no head contributes, so there is nothing to trace."]
    lines = ["", "2. From which tokens (top heads, split exactly by source position):"]
    for hs in head_sources:
        lines += _wrap(safe_text(hs.sentence), "   ")
        live = [s for s in hs.sources if not is_zero(s.mean_contribution, threshold)]
        for s in live:
            lines.append(
                f"      {safe_text(repr(s.token)):<18} {num(s.mean_contribution, sign=True):>10} "
                f"({percent(s.share):>6}), typically {s.typical_offset} back, {s.n_pairs} pairs"
            )
        lines += _zero_line(len(hs.sources) - len(live), f"{'other ' if live else ''}source tokens bring nothing",
                            threshold, ("|mean|", "the mean pre-activation"), "      ")
    return lines


def _weight_items(rows: list[WeightRow], threshold: float, shown: int, indent: str, noun: str) -> list[str]:
    """Up to ``shown`` non-zero rows of one weights-only list, four to a line, then the zero rows counted."""
    live = [r for r in rows if not is_zero(r.score, threshold)]
    name = (lambda r: safe_text(repr(r.component))) if noun == "tokens" else (lambda r: r.component)
    lines = _chunks([f"{name(r)} {num(r.score, 3, sign=True)}" for r in live[:shown]], indent) if live else []
    zero = _zero_line(len(rows) - len(live), f"{'other ' if live else ''}listed {noun} write nothing", threshold,
                      ("|score|", "the largest"), " " * len(indent))
    if not live and zero:
        zero[0] = indent + zero[0].lstrip()
    return lines + zero


def weights_lines(wv: WeightsView) -> list[str]:
    """Question 3: the neurons, heads and tokens that write most onto the encoder direction; rows that write
    nothing are counted, not listed (the CSV keeps every row)."""
    t = wv.zero_threshold
    lines = ["", "3. Weights alone (no data; DIRECT PATH ONLY: every path through other layers is ignored):",
             "   MLP neurons whose output row writes most onto the encoder direction (per unit of activation):"]
    lines += _weight_items(wv.neurons_up, t, 8, "      up:   ", "neurons")
    lines += _weight_items(wv.neurons_down, t, 8, "      down: ", "neurons")
    lines.append("   Heads whose OV circuit writes most onto it (gain for one fully attended, normalised source):")
    live = [r for r in wv.heads if not is_zero(r.score, t)]
    lines += [f"      {r.component:<8} {num(r.score, 3):>8}  {safe_text(r.detail)}" for r in live[:5]]
    lines += _zero_line(len(wv.heads) - len(live), f"{'other ' if live else ''}listed heads write nothing", t,
                        ("|gain|", "the largest score"), "      ")
    lines.append("   Tokens whose embedding reads most strongly onto it (embedding -> hook, skipping every block):")
    lines += _weight_items(wv.tokens_up, t, 8, "      up:   ", "tokens")
    lines += _weight_items(wv.tokens_down, t, 8, "      down: ", "tokens")
    return lines


def causal_lines(c: CausalCheck | None, fired: bool = True) -> list[str]:
    """Question 4: predicted against measured drops of each mean-ablated component that changes anything."""
    if c is None:
        return ["", "4. Causal check: not run." if fired else "4. Causal check: nothing to ablate."]
    lines = ["", *_wrap(f"4. Causal check: mean-ablate each top component ({c.ablated_on}).")]
    lines.append(f"   {'component':<12} {'predicted':>10} {'measured':>10} {'act. drop':>10} {'removed':>8}")
    live = [r for r in c.rows if not c.is_zero_row(r)]
    for r in live:
        lines.append(
            f"   {r.component:<12} {num(r.predicted_drop, sign=True):>10} {num(r.measured_drop_pre, sign=True):>10} "
            f"{num(r.measured_drop_act, sign=True):>10} {percent(r.removed_fraction):>8}"
        )
    lines += _zero_line(len(c.rows) - len(live), f"{'other ' if live else ''}ablated components change nothing",
                        c.zero_threshold, ("|drop|", "the mean pre-activation; every row is in the CSV"))
    lines += _wrap(
        f"{c.summary}. Predicted = direct path only; measured = the SAE's pre-activation after the "
        "real ablation (all paths); act. drop = of the activation (after the ReLU).",
        "   ",
    )
    return lines


SUMMARY_HEADER = ["feature", "firing tokens", "mean pre-act", "sum of rows", "residual", "top component",
                  "top head's source", "top token (direct path)", "ablation agrees"]


def summary_row(result: FeatureAttribution) -> list:
    """One row of ``feature_to_weights.csv`` (and of the closing table, which leaves out the head's source)."""
    d, c = result.direct, result.causal
    top = d.top(1, exclude=("sae_bias",))[0] if d is not None else None
    return [
        result.feature,
        d.n_tokens if d else 0,
        num(d.mean_pre_activation, 5) if d else "-",
        num(d.sum_of_rows, 5) if d else "-",
        f"{d.residual:.1e}" if d else "-",
        f"{top.component} ({top.share:.0%})" if top else "-",
        result.head_sources[0].sentence if result.head_sources else "-",
        repr(result.weights.tokens_up[0].component) if result.weights.tokens_up else "-",
        f"{c.n_agree}/{c.n_nonzero}" + (f", r={c.correlation:.2f}" if c.correlation is not None else "")
        if c
        else "-",
    ]


def summary_text(rows: Sequence[list]) -> str:
    """The closing table, one row per feature (:func:`summary_row`), without the head's source sentence."""
    return ("\nSummary (BOS and padding excluded; the weights-only column is the direct path only):\n\n"
            + format_table(SUMMARY_HEADER[:6] + SUMMARY_HEADER[7:], [row[:6] + row[7:] for row in rows]))


# --- the numbers behind the figure -----------------------------------------------------------------------


def output_name(template: str, feature: int) -> str:
    """``MI9_{feature}.csv`` -> ``MI9_501.csv``."""
    return template.format(feature=feature)


def attribution_tables(result: FeatureAttribution) -> list[tuple[str, list[str], list[list]]]:
    """The CSV tables of one feature's attribution, as ``(file name template, header, rows)``.

    In order: the component rows (``MI9_<id>.csv``, only when the feature fires), the top heads' source
    tokens and distances, the weights-only lists, and the causal check (when it ran).
    """
    tables = []
    d = result.direct
    if d is not None:
        tables.append((constants.MI9_CSV, [
            "rank", "component", "kind", "layer", "head", "mean_contribution", "share", "std_contribution",
            "frac_positive", "predicted_ablation_drop",
        ], [
            [i, r.component, r.kind, "" if r.layer is None else r.layer, "" if r.head is None else r.head,
             r.mean_contribution, r.share, r.std_contribution, r.frac_positive, r.predicted_ablation_drop]
            for i, r in enumerate(d.top(len(d.rows)), 1)
        ]))
    tables.append((constants.MI9_SOURCES_CSV, [
        "head", "rank", "source_token", "token_id", "mean_contribution", "share_of_head", "pairs", "typical_offset",
    ], [
        [h.component, i, s.token, "" if s.token_id is None else s.token_id, s.mean_contribution, s.share, s.n_pairs,
         s.typical_offset]
        for h in result.head_sources for i, s in enumerate(h.sources, 1)
    ]))
    tables.append((constants.MI9_OFFSETS_CSV, ["head", "tokens_back", "mean_contribution"],
                   [[h.component, o, v] for h in result.head_sources for o, v in sorted(h.by_offset)]))
    tables.append((constants.MI9_WEIGHTS_CSV, [
        "list", "rank", "kind", "component", "layer", "index", "score", "detail",
    ], [
        [name, i, r.kind, r.component, "" if r.layer is None else r.layer, r.index, r.score, r.detail]
        for name in ("neurons_up", "neurons_down", "heads", "tokens_up", "tokens_down")
        for i, r in enumerate(getattr(result.weights, name), 1)
    ]))
    if result.causal is not None:
        tables.append((constants.MI9_ABLATION_CSV, [
            "component", "predicted_drop", "measured_drop_pre", "measured_drop_act", "clean_activation",
            "removed_fraction",
        ], [
            [r.component, r.predicted_drop, r.measured_drop_pre, r.measured_drop_act, r.clean_activation,
             r.removed_fraction]
            for r in result.causal.rows
        ]))
    return tables
