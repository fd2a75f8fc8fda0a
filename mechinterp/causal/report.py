"""Chapter 4's figure (MI6): a feature's ablation against matched controls, and its steering curve.

Built with ``matplotlib.figure.Figure`` (no pyplot, no GUI, no show()); the script saves it with the
numbers behind it beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from mechinterp.core.figures import NotebookFigure


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
    fig = NotebookFigure(figsize=(15, 10.5), layout="constrained")
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
