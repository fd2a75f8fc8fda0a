"""Figures for Chapters 3 and 4: a feature's card figure (MI5) and its causal tests (MI6).

Built with ``matplotlib.figure.Figure`` (no pyplot, no GUI, no show()). Both functions return the
figure: the script saves it (Chapter 3 also inlines it in the HTML card) with the numbers behind it
beside it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure


def _label(token: str) -> str:
    """A token as an axis label: quotes show leading spaces; newlines and control characters escaped."""
    text = repr(token)
    return text if len(text) <= 22 else text[:20] + "…'"


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes, e.g. to inline in a self-contained HTML page."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


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
    fig = Figure(figsize=(14, 7.2))
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
    labels = [_label(t) for t, _ in promoted] + [""] + [_label(t) for t, _ in reversed(suppressed)]
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


def causal_figure(
    feature: int,
    group: str,
    target_label: str,
    feature_effect: dict[str, float] | None,
    control_effects: dict[str, np.ndarray] | None,
    coeffs: Sequence[float],
    curve: dict[str, Sequence[float]],
    steer_group: str,
    typical_max: float,
    title: str,
) -> Figure:
    """MI6: the ablation effect against firing-rate-matched controls (top), the steering curve (bottom).

    Args:
        feature_effect: the ablation's ``delta_logp_targets``, ``delta_logodds_targets`` and ``kl``, or
            None when the feature never fires on the group's prompts.
        control_effects: the same keys, one value per control ``[n_controls]``.
        coeffs: steering coefficients in units of the feature's typical max activation.
        curve: per coefficient, ``logp_targets``, ``logodds_targets`` and ``kl`` (means per text token).
    """
    fig = Figure(figsize=(15, 10.5), layout="constrained")
    grid = fig.add_gridspec(2, 6)
    top = [fig.add_subplot(grid[0, 2 * i : 2 * i + 2]) for i in range(3)]
    bottom = [fig.add_subplot(grid[1, 0:3]), fig.add_subplot(grid[1, 3:6])]
    rng = np.random.default_rng(0)  # horizontal jitter only, so tied control points stay visible
    panels = (
        ("delta_logp_targets", f"Δ mean log P({target_label})", "target tokens: log-probability"),
        ("delta_logodds_targets", f"Δ mean log-odds({target_label})", "target tokens: log-odds"),
        ("kl", "mean KL(clean ‖ ablated), nats", "whole next-token distribution"),
    )
    for ax, (key, ylabel, what) in zip(top, panels):
        ax.set_title(f"Ablation on '{group}': {what}", fontsize=10)
        ax.set_xticks([])
        if feature_effect is None or control_effects is None:
            ax.text(0.5, 0.5, f"feature #{feature} never fires on\nthe '{group}' prompts:\nnothing to ablate",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
            continue
        ctrl = np.asarray(control_effects[key])
        ax.scatter(rng.uniform(-0.18, 0.18, size=len(ctrl)), ctrl, s=22, color="#7f7f7f", alpha=0.8,
                   label=f"{len(ctrl)} random controls\n(firing-rate matched)")
        ax.boxplot([ctrl], positions=[0], widths=0.5, showfliers=False, medianprops={"color": "black"})
        value = feature_effect[key]
        beyond = int((np.abs(ctrl) >= abs(value)).sum())
        ax.scatter([0], [value], s=160, marker="*", color="#d62728", zorder=5,
                   label=f"feature #{feature}: {value:+.3g}\n{beyond} of {len(ctrl)} controls have |effect| ≥ it")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlim(-0.6, 0.6)
        ax.set_xticks([])  # again: boxplot adds a tick at its position
        ax.set_ylabel(ylabel)
        # Below the panel: inside it, a legend would sit on some of the control points.
        ax.legend(fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.02), frameon=False)
        ax.grid(axis="y", alpha=0.3)

    ax_t, ax_kl = bottom
    ax_t.plot(coeffs, curve["logp_targets"], marker="o", color="#1f77b4", label=f"mean log P({target_label})")
    ax_t.plot(coeffs, curve["logodds_targets"], marker="s", linestyle="--", color="#9467bd",
              label=f"mean log-odds({target_label})")
    ax_t.set_ylabel("nats")
    ax_t.set_title(f"Steering '{steer_group}' prompts: the target tokens", fontsize=10)
    ax_kl.plot(coeffs, curve["kl"], marker="o", color="#ff7f0e", label="mean KL(clean ‖ steered)")
    ax_kl.set_ylabel("mean KL(clean ‖ steered), nats")
    ax_kl.set_title("Steering: how far the whole next-token distribution moves", fontsize=10)
    for ax in bottom:
        ax.axvline(0, color="black", linewidth=0.6)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel(f"steering coefficient c: adds c × {typical_max:.3g} (typical max activation) × W_dec[{feature}]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="best")
    fig.suptitle(
        f"Feature #{feature}: does it matter? Ablation (SAE error term kept) vs random controls, and steering\n{title}",
        fontsize=11,
    )
    return fig
