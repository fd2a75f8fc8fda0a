"""Chapter 4's presentation: a :class:`~mechinterp.causal.intervene.FeatureTest` as terminal text, as the
tables behind the figure, and as the figure (MI6): the ablation against matched controls, and the
steering curve.

The analysis (:mod:`mechinterp.causal.intervene`) returns numbers; everything here only formats them, so
the script and a notebook show the same thing. Text functions return strings (the script prints them).
The figure is built with ``matplotlib.figure.Figure`` (no pyplot, no GUI, no show()).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from mechinterp.causal.intervene import ABLATION_MEASURES, FeatureTest
from mechinterp.core import constants
from mechinterp.core.features import name_of
from mechinterp.core.figures import NotebookFigure, group_colours
from mechinterp.core.tables import WIDTH, format_table, safe_text, wrapped

# How the tables name each ablation measure (an Effect field each, in ABLATION_MEASURES order).
MEASURE_NAMES = {"delta_logp_targets": "Δ log P(tgt)", "delta_logodds_targets": "Δ log-odds(tgt)",
                 "kl": "KL(clean‖abl)"}
# Clean P(targets) above this where the feature fires: the model predicts the targets without it.
ALREADY_PREDICTED = 0.5
# KL(clean || steered) above this many nats: the steered model no longer resembles the clean one.
OVERWRITTEN_KL = 1.0
# |Δ log P(tgt)| where the feature fires below this many nats (P(targets) falls by under 10%): a small effect.
SMALL_EFFECT = 0.1
# An empirical p at or below this: the effect stands out from the controls' (1/21 with 20 controls).
SIGNIFICANT = 0.05
# The measure the summary leads with (where the feature fires and over all tokens).
SUMMARY_MEASURE = "delta_logodds_targets"


# --- terminal text -------------------------------------------------------------------------------------


def fmt_tokens(tokens: list[str]) -> str:
    return ", ".join(safe_text(repr(t)) for t in tokens)


def side_by_side(left: str, right: str, width: int) -> list[str]:
    """Two texts wrapped into two columns of ``width`` characters."""
    a = textwrap.wrap(left, width) or [""]
    b = textwrap.wrap(right, width) or [""]
    a += [""] * (len(b) - len(a))
    b += [""] * (len(a) - len(b))
    return [f"{x:<{width}} │ {y}" for x, y in zip(a, b)]


def is_family(test: FeatureTest) -> bool:
    return not isinstance(test.feature, int)


def _typical(test: FeatureTest, digits: int = 4) -> str:
    """The typical max, e.g. "2.999", or a family's per member: "#409 2.996, #501 2.999"."""
    if not is_family(test):
        return f"{test.typical_max:.{digits}g}"
    return ", ".join(f"#{m} {t:.{digits}g}" for m, t in zip(test.members, test.typical_max))


def direction_text(test: FeatureTest, digits: int = 4) -> str:
    """What coefficient 1 adds, in words: "2.999 × W_dec[501]", or "(2.996 × W_dec[409] + 2.999 × W_dec[501])"."""
    if not is_family(test):
        return f"{test.typical_max:.{digits}g} × W_dec[{test.feature}]"
    return "(" + " + ".join(f"{t:.{digits}g} × W_dec[{m}]" for m, t in zip(test.members, test.typical_max)) + ")"


def feature_test_text(test: FeatureTest, origin: str | None = None, columns: int = WIDTH) -> str:
    """The feature's (or family's) targets and typical max, then its ablation, steering curve and generations.

    Args:
        origin: where the feature came from (e.g. its row in a results table), for the heading.
        columns: the terminal's width; the continuations are shown in two columns that fit in it.
    """
    kind, where = ("Family", " (where any member fires)") if is_family(test) else ("Feature", "")
    lines = ["", wrapped(f"=== {kind} {test.label}" + (f" ({origin})" if origin else "")),
             wrapped(f"Targets (tgt): {fmt_tokens(test.target_tokens)} ({test.target_how})"),
             wrapped(f"Typical max activation: {_typical(test)} ({test.typical_max_how})"),
             wrapped(f"Firing rate by group{where}: "
                     + ", ".join(f"{g} {100 * r:.3g}%" for g, r in test.firing_rate_by_group.items()))]
    lines += ablation_lines(test) + located_lines(test) + steering_lines(test) + generation_lines(test, columns)
    return "\n".join(lines)


def ablation_lines(test: FeatureTest) -> list[str]:
    """The ablation against the controls, one table row per measure (or why it was skipped)."""
    ablation, group = test.ablation, test.ablation_group
    what = "family" if is_family(test) else "feature"
    if ablation is None:
        return ["", wrapped(f"Ablation on '{group}' ({test.ablation_group_how}): skipped - the {what} never fires "
                            "on these prompts, so removing it changes nothing (the error term keeps everything "
                            "else exactly as it was).")]
    rows = []
    for which in ABLATION_MEASURES:
        value = getattr(ablation.effect, which)
        ctrl = np.array([getattr(e, which) for e in ablation.control_effects])
        rows.append([
            MEASURE_NAMES[which], f"{value:+.4g}", f"{np.median(ctrl):+.3g}", f"{ctrl.min():+.3g}",
            f"{ctrl.max():+.3g}", f"{len(ctrl) - ablation.n_controls_at_least(which)} of {len(ctrl)}",
            f"{ablation.empirical_p(which):.3g}",
        ])
    every = f"every member of {test.label} at once, " if is_family(test) else ""
    return ["",
            wrapped(f"Ablation on '{group}' ({test.ablation_group_how}), {every}{test.n_ablation_prompts} prompts, "
                    f"{ablation.effect.n_positions} text positions; error term kept."),
            wrapped(controls_text(test)),
            format_table(["mean per token", what, "ctrl median", "ctrl min", "ctrl max", f"|{what}| beats",
                          "empirical p"], rows)]


def controls_text(test: FeatureTest) -> str:
    """How the controls were drawn: random features matched in firing rate, or for a family random sets of
    as many features, each member's stand-in matched to that member."""
    a = test.ablation
    c = a.controls
    if not c.pools:
        return (f"Controls: {len(c.features)} random features drawn from the {c.pool_size} whose firing rate "
                f"on these prompts is {100 * c.rate_low:.3g}%-{100 * c.rate_high:.3g}% "
                f"(feature: {100 * a.rate:.3g}%).")
    pools = "; ".join(f"#{m}'s from {size} features at {100 * low:.3g}%-{100 * high:.3g}%" if high > 0 else
                      f"#{m} never fires here, its stand-ins neither (from {size} such features)"
                      for m, (size, low, high) in c.pools.items())
    return (f"Controls: {len(c.features)} random sets of {len(test.members)} features, each member's stand-in drawn "
            f"from the features whose firing rate on these prompts is close to its own ({pools}). Where any member "
            f"fires: family {100 * a.rate:.3g}%, sets median {100 * float(np.median(a.control_rates)):.3g}%.")


def located_lines(test: FeatureTest) -> list[str]:
    """The ablation where the feature fires, and one position later (averages over all tokens dilute it),
    then the clean scores the ablation started from."""
    a = test.ablation
    if a is None:
        return []
    lines = []
    if a.located is not None:
        at, nxt = a.located.firing, a.located.next
        ctrl = [c.firing for c in a.control_located if c.firing.n_positions]
        rows = [["where it fires", at.n_positions] + [f"{getattr(at, k):+.4g}" for k in ABLATION_MEASURES],
                ["one token later", nxt.n_positions] + [f"{getattr(nxt, k):+.4g}" for k in ABLATION_MEASURES]]
        if ctrl:
            rows.append(["controls where they fire (median)", int(np.median([c.n_positions for c in ctrl]))]
                        + [f"{np.median([getattr(c, k) for c in ctrl]):+.3g}" for k in ABLATION_MEASURES])
        where = "a member of the family fires" if is_family(test) else "the feature fires"
        lines += ["", wrapped(f"Where it matters: the same ablation, averaged only over the {at.n_positions} "
                              f"positions where {where} (of {a.effect.n_positions}), and over the "
                              "positions right after them:"),
                  format_table(["positions", "n"] + [MEASURE_NAMES[k] for k in ABLATION_MEASURES], rows)]
        lines += saturation_note(test, where)
    lines.append(wrapped(f"(tgt = {fmt_tokens(test.target_tokens)}. Clean means on these prompts: log P(tgt) "
                         f"{a.clean.logp_targets:.4g}, log-odds {a.clean.logodds_targets:.4g}; empirical p = (1 + "
                         "controls at least as large) / (1 + controls); log P saturates when the targets already "
                         "hold most of the probability, log-odds do not)"))
    return lines


def saturation_note(test: FeatureTest, where: str) -> list[str]:
    """The caveat for a small effect where the feature fires, when the clean model already predicted the
    targets there; nothing when the effect is not small (it needs no excuse) or the targets were not predicted."""
    located = test.ablation.located
    at, clean_p = located.firing, float(np.exp(located.clean_firing.logp_targets))
    if not at.n_positions or clean_p <= ALREADY_PREDICTED or abs(at.delta_logp_targets) >= SMALL_EFFECT:
        return []
    return [wrapped(
        f"Note: the effect where {where} is small (|Δ log P(tgt)| {abs(at.delta_logp_targets):.2g} < "
        f"{SMALL_EFFECT:g} nat, i.e. P(tgt) falls by under {1 - np.exp(-SMALL_EFFECT):.0%}), but there the clean "
        f"model already gives the targets P = {clean_p:.0%}; removing one feature cannot lower a prediction that "
        "other features carry too, so this small effect does not mean the feature does nothing.")]


def steering_lines(test: FeatureTest) -> list[str]:
    """The steering curve as a table, flagging coefficients where the steering overwrites the model."""
    s = test.steering
    clean = s.logp_targets[s.coeffs.index(0.0)]
    rows = [[f"{c:g}", f"{abs(c) * test.unit_norm:.3g}", f"{lp:.4g}", f"{lp - clean:+.4g}", f"{lo:.4g}",
             f"{k:.4g}" + (" !" if k > OVERWRITTEN_KL else "")]
            for c, lp, lo, k in zip(s.coeffs, s.logp_targets, s.logodds_targets, s.kl)]
    lines = ["", wrapped(f"Steering '{test.steer_group}' prompts: add coeff × {direction_text(test)} "
                         "at every text position (teacher-forced, means over text positions):"),
             format_table(["coeff", "added norm", "log P(tgt)", "Δ vs clean", "log-odds(tgt)", "KL(clean‖steered)"],
                          rows)]
    overwritten = [c for c, k in zip(s.coeffs, s.kl) if k > OVERWRITTEN_KL]
    if overwritten:
        lines.append(wrapped(
            f"! KL above {OVERWRITTEN_KL:g} nat from coeff {min(overwritten, key=abs):g} on: there the steering "
            "overwrites the model's distribution rather than nudging it; target gains in that range show what the "
            "direction can force, not what the feature does at its natural strength."))
    return lines


def generation_lines(test: FeatureTest, columns: int = WIDTH) -> list[str]:
    """Each prompt's clean and steered continuations side by side, greedy then sampled."""
    coeff = test.generation_coeff
    width = max(30, (min(columns, WIDTH) - 5) // 2)
    added = (f"+{coeff * test.typical_max:.3g} × W_dec[{test.feature}]" if not is_family(test)
             else f"+{coeff:g} × {direction_text(test, 3)}")
    lines = ["", wrapped(f"Continuations ({test.max_new_tokens} new tokens), clean vs steered at coeff {coeff:g} "
                         f"({added}):")]
    for g in test.generations:
        if g.mode == "greedy":
            lines += ["", f"  prompt: {safe_text(g.prompt)}",
                      "  " + "\n  ".join(side_by_side("clean", f"steered ×{coeff:g}", width))]
        lines += [f"  -- {g.mode}", "  " + "\n  ".join(side_by_side(safe_text(g.clean), safe_text(g.steered), width))]
    return lines


def brief_test_lines(test: FeatureTest, origin: str | None = None) -> list[str]:
    """The feature (or family) in a few lines for the terminal summary: its targets, where it fires, the
    ablation where it fires and over all tokens, the steering, and one steered continuation."""
    kind = "Family" if is_family(test) else "Feature"
    rates = sorted(test.firing_rate_by_group.items(), key=lambda kv: -kv[1])
    lines = ["", wrapped(f"=== {kind} {test.label}" + (f" ({origin})" if origin else "")),
             wrapped(indent="    ", text=f"  targets {fmt_tokens(test.target_tokens)}; typical max {_typical(test)}; fires on "
                     + ", ".join(f"{100 * r:.3g}% of {g}" for g, r in rates[:2]) + " tokens"
                     + (f" ({', '.join(g for g, _ in rates[2:])}: {max(r for _, r in rates[2:]) * 100:.3g}% at most)"
                        if len(rates) > 2 else ""))]
    a, which = test.ablation, SUMMARY_MEASURE
    if a is None:
        lines.append(wrapped(indent="    ", text=f"  ablation on '{test.ablation_group}': skipped, it never fires there"))
    else:
        fires = a.located is not None and a.located.firing.n_positions > 0
        ctrl = a.located_controls(which) if fires else np.array([])
        here = (f"{getattr(a.located.firing, which):+.4g} where it fires (controls' median "
                f"{np.median(ctrl):+.3g}, p {_p(a.located_empirical_p(which))}), " if fires and len(ctrl) else "")
        lines.append(wrapped(indent="    ", text=f"  ablation on '{test.ablation_group}': Δ log-odds(tgt) {here}"
                             f"{getattr(a.effect, which):+.4g} over all {a.effect.n_positions} positions (p "
                             f"{_p(a.empirical_p(which))}); KL {a.effect.kl:.3g}"))
    s, coeff = test.steering, test.generation_coeff
    overwritten = [c for c, k in zip(s.coeffs, s.kl) if k > OVERWRITTEN_KL]
    lines.append(wrapped(indent="    ", text=f"  steering '{test.steer_group}': Δ log P(tgt) {s.delta_logp(coeff):+.4g} at coeff {coeff:g}"
                         + (f" (KL above {OVERWRITTEN_KL:g} nat from coeff {min(overwritten, key=abs):g}: "
                            "the direction overwrites the model there)" if overwritten else "")))
    g = next((g for g in test.generations if g.mode == "greedy"), None)
    if g is not None:
        lines.append(wrapped(indent="    ", text=f"  continuation at ×{coeff:g}: {safe_text(g.prompt)!r} + clean {safe_text(g.clean)!r}"
                             f" / steered {safe_text(g.steered)!r}"))
    return lines


SUMMARY_HEADER = ["feature", "ablated on", "where it fires", "ctrl median", "p", "all tokens", "p", "KL", "p"]


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def summary_row(test: FeatureTest) -> list:
    """One row of the closing summary table: the undiluted effect first (Δ log-odds(tgt) where the feature
    fires, its controls' median where they fire, and its empirical p), then the same measure over all text
    tokens, the KL over all text tokens, and the steering."""
    a, which = test.ablation, SUMMARY_MEASURE
    fires = a is not None and a.located is not None and a.located.firing.n_positions > 0
    ctrl = a.located_controls(which) if fires else np.array([])
    return [
        test.name, test.ablation_group,
        f"{getattr(a.located.firing, which):+.3g}" if fires else "-",
        f"{np.median(ctrl):+.3g}" if len(ctrl) else "-",
        _p(a.located_empirical_p(which)) if fires else "-",
        f"{getattr(a.effect, which):+.3g}" if a else "-",
        _p(a.empirical_p(which)) if a else "-",
        f"{a.effect.kl:.3g}" if a else "-",
        _p(a.empirical_p("kl")) if a else "-",
        f"{test.steering.delta_logp(test.generation_coeff):+.3g}",
    ]


def disagreement(test: FeatureTest) -> str | None:
    """One line when the effect where the feature fires and the effect over all tokens disagree (one stands
    out from the controls at p <= SIGNIFICANT, the other does not); None when they agree."""
    a, which = test.ablation, SUMMARY_MEASURE
    p_fires = a.located_empirical_p(which) if a is not None else None
    if p_fires is None:
        return None
    at, n_all, p_all = a.located.firing, a.effect.n_positions, a.empirical_p(which)
    if (p_fires <= SIGNIFICANT) == (p_all <= SIGNIFICANT):
        return None
    if p_fires <= SIGNIFICANT:
        return (f"{test.name}: significant where it fires (p {p_fires:.3g}), diluted over all tokens (p {p_all:.3g}): "
                f"it fires on {at.n_positions} of {n_all} positions, and the average over all of them shrinks "
                "its effect toward the controls'.")
    return (f"{test.name}: significant over all tokens (p {p_all:.3g}) but not where it fires (p {p_fires:.3g}): "
            "its effect lies elsewhere, e.g. on later positions (see 'one token later').")


def summary_text(tests: Sequence[FeatureTest], coeff: float) -> str:
    """The closing table: one row per feature, its ablation where it fires and over all tokens (p against the
    controls) and its steering, then a line for each feature whose two ablation effects disagree."""
    notes = [wrapped(line) for t in tests if (line := disagreement(t))]
    heading = wrapped(f"Summary. Ablation: Δ log-odds(tgt) where the feature fires, beside its controls' median "
                      "where they fire, then per text token over all tokens, and KL per text token; p: empirical, "
                      f"against the controls (significant: p <= {SIGNIFICANT:g}). Steering: Δ log P(tgt) at "
                      f"coeff {coeff:g}.")
    return ("\n" + heading + "\n\n"
            + format_table([*SUMMARY_HEADER, f"steer ×{coeff:g}"], [summary_row(t) for t in tests])
            + "".join("\n" + n for n in notes))


# --- the numbers behind the figure ---------------------------------------------------------------------


def target_label(test: FeatureTest) -> str:
    """How figures name the target set: "targets", or the one target token."""
    return "targets" if len(test.target_ids) > 1 else safe_text(repr(test.target_tokens[0]))


def feature_test_tables(test: FeatureTest) -> list[tuple[str, list[str], list[list]]]:
    """The CSV tables of one feature's test, as ``(file name, header, rows)``: the ablation (feature, then
    controls; no rows when it was skipped), the steering curve, and the generations."""
    f, a, s = test.name, test.ablation, test.steering
    ablation_rows = []
    if a is not None:  # a family and its control sets are named by their ids joined by '+'
        ablation_rows = [["feature", test.feature if not is_family(test) else f, a.rate,
                          *(getattr(a.effect, k) for k in ABLATION_MEASURES)]]
        ablation_rows += [["control", cf if isinstance(cf, int) else name_of(cf), r,
                           *(getattr(e, k) for k in ABLATION_MEASURES)]
                          for cf, r, e in zip(a.controls.features, a.control_rates, a.control_effects)]
    return [
        (constants.MI6_ABLATION_CSV.format(feature=f),
         ["role", "feature", "firing_rate", "delta_mean_logp_targets", "delta_mean_logodds_targets", "mean_kl"],
         ablation_rows),
        (constants.MI6_STEERING_CSV.format(feature=f),
         ["coeff", "added_activation", "mean_logp_targets", "mean_logodds_targets", "mean_kl"],
         [[c, c * test.typical_max if not is_family(test) else "", lp, lo, k]
          for c, lp, lo, k in zip(s.coeffs, s.logp_targets, s.logodds_targets, s.kl)]),
        (constants.MI6_GENERATIONS_CSV.format(feature=f), ["prompt", "mode", "coeff", "clean", "steered"],
         [[g.prompt, g.mode, test.generation_coeff, g.clean, g.steered] for g in test.generations]),
    ]


# --- the figure ------------------------------------------------------------------------------------------


def feature_test_figure(test: FeatureTest) -> Figure:
    """MI6 of one feature's (or family's) test (see :func:`causal_figure`)."""
    a, keys = test.ablation, ABLATION_MEASURES
    subject = f"family {test.label}" if is_family(test) else f"feature {test.label}"
    added = (f"{test.typical_max:.3g} (typical max activation) × W_dec[{test.feature}]" if not is_family(test)
             else f"{direction_text(test, 3)} (each member at its typical max)")
    return causal_figure(
        subject, test.ablation_group, target_label(test),
        {k: getattr(a.effect, k) for k in keys} if a else None,
        {k: np.array([getattr(e, k) for e in a.control_effects]) for k in keys} if a else None,
        test.steering.coeffs, test.steering.columns(), test.steer_group, added, test.title,
        # From every group the feature was measured on: the same colours as in this run's other figures.
        colours=group_colours([*test.firing_rate_by_group, test.ablation_group, test.steer_group]),
    )


def causal_figure(
    subject: str,
    group: str,
    target_label: str,
    feature_effect: dict[str, float] | None,
    control_effects: dict[str, np.ndarray] | None,
    coeffs: Sequence[float],
    curve: dict[str, Sequence[float]],
    steer_group: str,
    added: str,
    title: str,
    colours: dict[str, str] | None = None,
) -> Figure:
    """MI6: the ablation effect against firing-rate-matched controls (top), the steering curve (bottom).

    The feature's ablation effect is drawn in the ablation group's colour and the steering curves in the
    steered group's (``colours``, default :func:`~mechinterp.core.figures.group_colours` of the two), the
    colours the groups have in every other figure.

    Args:
        subject: what was ablated and steered, e.g. "feature #501" or "family #409+#501".
        feature_effect: the ablation's ``delta_logp_targets``, ``delta_logodds_targets`` and ``kl``, or
            None when the feature never fires on the group's prompts.
        control_effects: the same keys, one value per control ``[n_controls]``.
        coeffs: steering coefficients in units of the feature's typical max activation.
        curve: per coefficient, ``logp_targets``, ``logodds_targets`` and ``kl`` (means per text token).
        added: what coefficient 1 adds, e.g. "3 (typical max activation) × W_dec[501]".
    """
    colours = colours or group_colours([group, steer_group])
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
            ax.text(0.5, 0.5, f"{subject} never fires on\nthe '{group}' prompts:\nnothing to ablate",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
            continue
        ctrl = np.asarray(control_effects[key])
        ax.scatter(rng.uniform(-0.18, 0.18, size=len(ctrl)), ctrl, s=22, color="#7f7f7f", alpha=0.8,
                   label=f"{len(ctrl)} random controls\n(firing-rate matched)")
        ax.boxplot([ctrl], positions=[0], widths=0.5, showfliers=False, medianprops={"color": "black"})
        value = feature_effect[key]
        beyond = int((np.abs(ctrl) >= abs(value)).sum())
        # A black edge keeps the star apart from the grey controls when the group is the (grey) baseline.
        ax.scatter([0], [value], s=180, marker="*", color=colours[group], edgecolors="black", linewidths=0.7, zorder=5,
                   label=f"{subject}: {value:+.3g}\n{beyond} of {len(ctrl)} controls have |effect| ≥ it")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlim(-0.6, 0.6)
        ax.set_xticks([])  # again: boxplot adds a tick at its position
        ax.set_ylabel(ylabel)
        # Below the panel: inside it, a legend would sit on some of the control points.
        ax.legend(fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.02), frameon=False)
        ax.grid(axis="y", alpha=0.3)

    _steering_panels(bottom, coeffs, curve, target_label, steer_group, added, colours[steer_group])
    fig.suptitle(
        f"{subject[0].upper() + subject[1:]}: does it matter? Ablation (SAE error term kept) vs random controls, and "
        f"steering\n{title}",
        fontsize=11,
    )
    return fig


def _steering_panels(
    bottom: list, coeffs: Sequence[float], curve: dict[str, Sequence[float]], target_label: str,
    steer_group: str, added: str, colour: str,
) -> None:
    """MI6's bottom row: the target tokens' log P and log-odds (left), the KL to the clean model (right).

    Every curve is in the steered group's ``colour``; log P and log-odds differ by line style and marker.
    The KL panel draws the line at :data:`OVERWRITTEN_KL` nat, the one above which the steering table
    marks a coefficient with "!".
    """
    ax_t, ax_kl = bottom
    ax_t.plot(coeffs, curve["logp_targets"], marker="o", color=colour, label=f"mean log P({target_label})")
    ax_t.plot(coeffs, curve["logodds_targets"], marker="s", markerfacecolor="white", linestyle="--", color=colour,
              label=f"mean log-odds({target_label})")
    ax_t.set_ylabel("nats")
    # log-odds = log P - log(1 - P): equal where P is small, so there one line hides the other; said in
    # the title, where no note can cover a point.
    meet = ("\nwhere the two lines meet, P(targets) is small: log-odds ≈ log P"
            if _lines_meet(curve["logp_targets"], curve["logodds_targets"]) else "")
    ax_t.set_title(f"Steering '{steer_group}' prompts: the target tokens{meet}", fontsize=10)
    ax_kl.plot(coeffs, curve["kl"], marker="o", color=colour, label="mean KL(clean ‖ steered)")
    # Black and dashed-dotted, not a colour: a group (angry: red) may have any colour of the palette.
    ax_kl.axhline(OVERWRITTEN_KL, color="black", linestyle="-.", linewidth=1.2,
                  label=f"{OVERWRITTEN_KL:g} nat: above it the table marks the coefficient with '!'")
    kl_max = max((float(v) for v in curve["kl"] if np.isfinite(v)), default=0.0)
    if kl_max > 10 * OVERWRITTEN_KL:
        # On a linear axis to 25 nats the 1-nat line would sit on the 0 line; linear up to 1 nat, log above.
        ax_kl.set_yscale("symlog", linthresh=OVERWRITTEN_KL)
        ax_kl.set_ylim(0, kl_max * 2)  # KL is never negative; room above the top point for the legend
        ax_kl.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 10, not 10^1
        ax_kl.set_ylabel("mean KL(clean ‖ steered), nats\n(linear up to 1, log scale above)")
    else:
        ax_kl.set_ylabel("mean KL(clean ‖ steered), nats")
    ax_kl.set_title("Steering: how far the whole next-token distribution moves", fontsize=10)
    for ax in bottom:
        ax.axvline(0, color="black", linewidth=0.6)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel(f"steering coefficient c: adds c × {added}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="best")


def _lines_meet(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two curves drawn on one axis share a point, within 1% of the axis' span."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    both = np.concatenate([a, b])
    span = float(np.nanmax(both) - np.nanmin(both)) if np.isfinite(both).any() else 0.0
    return bool(np.any(np.abs(a - b) <= 0.01 * span)) if span > 0 else False
