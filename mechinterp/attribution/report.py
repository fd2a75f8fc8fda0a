"""Figure for Chapter 6 (MI9): where a feature's pre-activation comes from, and whether ablation agrees.

Built with ``matplotlib.figure.Figure`` (no pyplot, no GUI, no show()); the script saves it with
:func:`mechinterp.core.io.save_figure` and writes the numbers behind every panel beside it as CSV.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from mechinterp.attribution.attribute import FeatureAttribution
from mechinterp.core.figures import NotebookFigure

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
        n_top: bars in the left panel.
    """
    direct = result.direct
    if direct is None:
        raise ValueError("no figure for a feature that never fires")
    fig = NotebookFigure(figsize=(19, max(6.5, 0.3 * n_top + 2.5)), layout="constrained")
    ax_bar, ax_map, ax_abl = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.0, 1.25, 0.95]})

    # Left: the largest rows, strongest on top, spread over the firing tokens as error bars.
    top = direct.top(n_top)
    y = np.arange(len(top))[::-1]
    ax_bar.barh(
        y,
        [r.mean_contribution for r in top],
        xerr=[r.std_contribution for r in top],
        color=[KIND_COLOURS[r.kind] for r in top],
        height=0.75,
        error_kw={"elinewidth": 0.8, "alpha": 0.6},
    )
    ax_bar.set_yticks(y, [r.component for r in top], fontsize=9, family="monospace")
    ax_bar.axvline(0, color="black", linewidth=0.8)
    ax_bar.axvline(
        direct.mean_pre_activation,
        color="#d62728",
        linestyle="--",
        linewidth=1.0,
        label=f"mean pre-activation {direct.mean_pre_activation:.3g}",
    )
    for kind, colour in KIND_COLOURS.items():
        if any(r.kind == kind for r in top):
            ax_bar.barh([np.nan], [np.nan], color=colour, label=kind)
    ax_bar.legend(fontsize=8, loc="best")
    ax_bar.set_xlabel("mean contribution to the pre-activation (bar: spread over firing tokens)")
    ax_bar.set_title(
        f"1. Direct attribution on {direct.n_tokens} firing tokens\nall {len(direct.rows)} rows add up to "
        f"{direct.sum_of_rows:.4f} (SAE: {direct.mean_pre_activation:.4f}, residual {direct.residual:+.1e})",
        fontsize=10,
    )
    ax_bar.grid(axis="x", alpha=0.3)

    # Middle: every head as a layer x head heatmap, the MLP of each layer in the last column.
    grid, n_layers = head_mlp_grid(result, n_heads)
    if n_layers == 0:
        ax_map.text(
            0.5, 0.5, "no block writes before this hook", ha="center", va="center", transform=ax_map.transAxes
        )
        ax_map.set_axis_off()
    else:
        vmax = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0
        vmax = vmax if vmax > 0 else 1.0
        cmap = colormaps["RdBu_r"].with_extremes(bad="#eeeeee")
        image = ax_map.imshow(
            np.ma.masked_invalid(grid),
            cmap=cmap,
            vmin=-vmax,
            vmax=vmax,
            aspect="auto",
            interpolation="nearest",
        )
        ax_map.axvline(n_heads - 0.5, color="white", linewidth=4)
        ax_map.set_xticks(range(n_heads + 1), [f"H{h}" for h in range(n_heads)] + ["MLP"], fontsize=8)
        ax_map.set_yticks(range(n_layers), [f"L{layer}" for layer in range(n_layers)], fontsize=8)
        ax_map.set_xlabel("attention head (last column: the layer's MLP)")
        ax_map.set_ylabel("layer")
        if grid.size <= ANNOTATE_MAX_CELLS:
            for (row, col), value in np.ndenumerate(grid):
                if np.isfinite(value):
                    ax_map.text(
                        col,
                        row,
                        f"{value:+.2g}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if abs(value) > 0.6 * vmax else "black",
                    )
        fig.colorbar(
            image, ax=ax_map, fraction=0.04, pad=0.02, label="mean contribution (red = builds the feature)"
        )
        # The colour scale adapts to the largest cell: say how large that is next to the whole signal.
        ax_map.set_title(
            f"Every head and MLP, mean over firing tokens\ncolour scale ±{vmax:.2g} "
            f"(the mean pre-activation is {direct.mean_pre_activation:.3g})",
            fontsize=10,
        )

    # Right: the causal check, predicted (direct path) against measured (all paths) drops.
    causal = result.causal
    if causal is None or not causal.rows:
        ax_abl.text(0.5, 0.5, "no ablation run", ha="center", va="center", transform=ax_abl.transAxes)
        ax_abl.set_axis_off()
    else:
        predicted = np.array([r.predicted_drop for r in causal.rows])
        measured = np.array([r.measured_drop_pre for r in causal.rows])
        kinds = [next(x.kind for x in direct.rows if x.component == r.component) for r in causal.rows]
        ax_abl.scatter(predicted, measured, c=[KIND_COLOURS[k] for k in kinds], s=40, zorder=3)
        # Name the points that stand out; labels of the many near-zero points would only overlap.
        size = np.maximum(np.abs(predicted), np.abs(measured))
        for r, px, my, s in zip(causal.rows, predicted, measured, size):
            if s >= 0.05 * size.max():
                ax_abl.annotate(
                    r.component, (px, my), fontsize=7.5, xytext=(3, 3), textcoords="offset points"
                )
        low = float(min(predicted.min(), measured.min(), 0.0))
        high = float(max(predicted.max(), measured.max(), 0.0))
        pad = 0.05 * (high - low or 1.0)
        ax_abl.plot(
            [low - pad, high + pad],
            [low - pad, high + pad],
            color="black",
            linewidth=0.8,
            linestyle="--",
            label="measured = predicted",
        )
        # Room on the right and top for the point labels.
        ax_abl.set_xlim(low - pad, high + 3 * pad)
        ax_abl.set_ylim(low - pad, high + 3 * pad)
        ax_abl.axhline(0, color="grey", linewidth=0.5)
        ax_abl.axvline(0, color="grey", linewidth=0.5)
        ax_abl.set_xlabel("predicted drop of the pre-activation (direct path only)")
        ax_abl.set_ylabel("measured drop after mean-ablation (all paths)")
        corr = f", r = {causal.correlation:.3f}" if causal.correlation is not None else ""
        ax_abl.set_title(
            f"4. Causal check: {causal.n_agree} of {len(causal.rows)} agree within "
            f"{causal.agree_tolerance:.0%}{corr}",
            fontsize=10,
        )
        ax_abl.legend(fontsize=8, loc="upper left")
        ax_abl.grid(alpha=0.3)
    fig.suptitle(
        f"Feature #{result.feature}: where its pre-activation comes from (hook {result.hook_name})\n{title}",
        fontsize=11,
    )
    return fig
