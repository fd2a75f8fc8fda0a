"""MI6, MI7 and MI9 read without guessing: every line shows, every label sits clear of the others.

Built from small stand-ins for each chapter's results (no model): a steering curve that passes 1 nat
(MI6), a TopK curve whose MSE part is its whole loss and an L0 from 15 to 460 (MI7), and a feature
whose causal check has 7 of 8 points at (0, 0) and a head/MLP grid of 1e-10 noise (MI9).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from mechinterp.attribution.attribute import (
    AblationRow, CausalCheck, ComponentRow, DirectAttribution, FeatureAttribution, WeightsView,
)
from mechinterp.attribution.report import attribution_figure
from mechinterp.causal.report import OVERWRITTEN_KL, causal_figure
from mechinterp.training.common import TrainingCurve
from mechinterp.training.report import training_curves


def drawn(fig):
    """Lay the figure out as saving it would, and return the renderer that measures its text."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def overlaps(a, b) -> bool:
    return a.width > 0 and b.width > 0 and a.overlaps(b)


def visible_yticks(ax) -> list[str]:
    low, high = sorted(ax.get_ylim())
    return [t.get_text() for t, v in zip(ax.get_yticklabels(), ax.get_yticks()) if low <= v <= high and t.get_text()]


# --- MI2 ---------------------------------------------------------------------------------------------


def test_mi2_panels_hold_only_data():
    """A feature near id 0 or near the last id reaches the panel's top corners: the legend's ▼ stood beside
    the data's ▼ at feature 5, and the count of active features sat on the tallest line at the right end.
    The title explains ▼, and each count sits beside its group's name, outside the panel."""
    from mechinterp.meaning.figures import group_mean_overview

    means = {g: np.zeros(64) for g in ("baseline", "happy")}
    for m in means.values():
        m[[5, 20, 63]] = [3.0, 0.5, 3.0]
    fig = group_mean_overview(means, [5], "TEST", "max")
    renderer = drawn(fig)
    for ax in fig.axes:
        assert ax.get_legend() is None and not ax.texts
        assert ax.get_ylabel().split("\n")[1] == "3 active"
        assert ax.yaxis.label.get_window_extent(renderer).x1 <= ax.get_window_extent(renderer).x0
    assert "▼ always-on" in fig.get_suptitle()


# --- MI3 ---------------------------------------------------------------------------------------------


def test_mi3_row_labels_and_titles_clear_of_the_neighbouring_panels():
    """Long group names ran over the image of the panel to their left, and the figure's title over the
    panels' titles, when the panels were few and short."""
    from mechinterp.meaning.figures import group_heatmaps

    acts = np.random.default_rng(0).random((10, 3))
    panels = [(g, "2 features at q < 0.05", acts, 5, [1, 2, 3])
              for g in ("happy", "a_much_longer_group_name", "control_group_two")]
    fig = group_heatmaps(panels, "baseline_reference", "TEST", "max")
    renderer = drawn(fig)
    axes = [ax for ax in fig.axes if ax.images and ax.get_title()]
    title = fig._suptitle.get_window_extent(renderer)
    for left, ax in itertools.pairwise([None, *axes]):
        assert not overlaps(title, ax.title.get_window_extent(renderer)), ax.get_title()
        if left is None:
            continue
        for label in ax.get_yticklabels():
            assert label.get_window_extent(renderer).x0 > left.get_window_extent(renderer).x1, label.get_text()


# --- MI5 corpus ---------------------------------------------------------------------------------------


def corpus_evidence(levels: list[float], lowest_top: float):
    from types import SimpleNamespace

    edges = np.geomspace(0.01, 10, 31)
    counts = np.zeros(30, dtype=int)
    counts[25:28] = [5, 40, 3]
    names = ("upper quartile", "median", "lower quartile")
    return SimpleNamespace(
        corpus="corpus.txt", hist_edges=edges, hist_counts=counts, fired=48, n_tokens=10_000, density=0.0048,
        windows_fired=40, n_windows=400, levels=list(zip(names, levels)),
        examples=[SimpleNamespace(max_act=v) for v in np.linspace(4.0, lowest_top, 10)])


def vertical_lines(ax) -> list:
    return [line for line in ax.get_lines() if len(set(np.atleast_1d(line.get_xdata()))) == 1]


@pytest.mark.parametrize("case", ["one strength", "spread"])
def test_mi5_corpus_reference_lines_are_apart_or_one_line_named_for_all(case):
    """A feature that fires at one strength put its quartiles, median and lowest top window on one spot:
    four lines drawn over each other with four legend entries. Lines on one spot are now one line whose
    entry names them all; lines apart stay apart, each with its own entry."""
    from mechinterp.cards.figures import SAME_PLACE, corpus_figure

    levels, lowest = ([3.0, 3.0, 3.0], 3.0) if case == "one strength" else ([3.5, 2.0, 0.8], 3.2)
    fig = corpus_figure(7, corpus_evidence(levels, lowest), "TEST")
    drawn(fig)
    ax = fig.axes[0]
    lines = vertical_lines(ax)
    low, high = ax.get_xlim()
    where = sorted(np.log10(line.get_xdata()[0] / low) / np.log10(high / low) for line in lines)
    assert all(b - a >= SAME_PLACE for a, b in itertools.pairwise(where)), where
    labels = [line.get_label() for line in lines]
    if case == "one strength":
        assert len(lines) == 1
        assert "upper quartile = median = lower quartile of the per-window maxima" in labels[0]
        assert "= lowest of the top 10 windows" in labels[0] and lines[0].get_color() == "#b00020"
    else:
        assert len(lines) == 4 and len({(line.get_linestyle(), line.get_color()) for line in lines}) == 4
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert all(label in legend for label in labels)


# --- MI6 ---------------------------------------------------------------------------------------------


def test_mi6_kl_panel_marks_one_nat():
    coeffs = [-2, 0, 0.5, 1, 2, 4]
    curve = {"logp_targets": [-5, -3, -1, 0, 0, 0], "logodds_targets": [-9, -3, 5, 9, 12, 13],
             "kl": [0.3, 0.0, 0.4, 3.0, 12.0, 20.0]}
    effect = {"delta_logp_targets": -0.5, "delta_logodds_targets": -4.0, "kl": 0.5}
    controls = {k: np.linspace(-0.01, 0.01, 20) for k in effect}
    fig = causal_figure("feature #1", "happy", "targets", effect, controls, coeffs, curve, "baseline",
                        "3 × W_dec[1]", "TEST")
    ax_kl = next(ax for ax in fig.axes if ax.get_ylabel().startswith("mean KL(clean ‖ steered)"))
    at_one = [line for line in ax_kl.get_lines() if np.allclose(line.get_ydata(), OVERWRITTEN_KL)]
    assert OVERWRITTEN_KL == 1.0 and at_one, "no horizontal line at 1 nat"
    assert "1 nat" in at_one[0].get_label()
    assert "1 nat" in " ".join(t.get_text() for t in ax_kl.get_legend().get_texts())


def test_mi6_one_nat_stands_apart_from_zero_when_steering_moves_kl_by_25_nats():
    """KL from 0 to 26.5 nats: on a linear axis the 1-nat line sat on the 0 line. Linear to 1 and log
    above, the two are at least a tenth of the panel apart; log P and log-odds meeting is said."""
    coeffs = [-2, 0, 0.5, 1, 2, 4, 8]
    curve = {"logp_targets": [-36, -6, 0, 0, 0, 0, 0], "logodds_targets": [-36, -6, 16, 22, 25, 26, 26],
             "kl": [0.3, 0.0, 16, 22, 25, 26, 26.5]}
    effect = {"delta_logp_targets": -0.5, "delta_logodds_targets": -4.0, "kl": 0.5}
    controls = {k: np.linspace(-0.01, 0.01, 20) for k in effect}
    fig = causal_figure("feature #1", "happy", "targets", effect, controls, coeffs, curve, "baseline",
                        "3 × W_dec[1]", "TEST")
    drawn(fig)
    ax_kl = next(ax for ax in fig.axes if ax.get_ylabel().startswith("mean KL(clean ‖ steered)"))
    low, high = ax_kl.get_ylim()
    assert low >= 0 and high >= 26.5, "KL is never negative, and every point is inside"
    to_axes = ax_kl.transData + ax_kl.transAxes.inverted()
    one, zero = (to_axes.transform((0, v))[1] for v in (OVERWRITTEN_KL, 0.0))
    assert one - zero >= 0.1, f"1 nat and 0 are {one - zero:.3f} of the panel apart"
    ax_t = next(ax for ax in fig.axes if ax.get_ylabel() == "nats")
    assert "log-odds ≈ log P" in ax_t.get_title()
    a, b = ax_t.get_lines()[:2]
    assert (a.get_linestyle(), a.get_marker()) != (b.get_linestyle(), b.get_marker())


# --- MI7 ---------------------------------------------------------------------------------------------


def curve(n: int, l0: np.ndarray, loss: np.ndarray, mse: np.ndarray) -> TrainingCurve:
    step = list(range(1, n + 1))
    return TrainingCurve(every=1, step=step, samples=[1024 * s for s in step], loss=list(loss), mse=list(mse),
                         l0=list(l0), explained_variance=list(np.linspace(-3, 0.75, n)), dead=[0] * n,
                         lr=[3e-3] * n)


@pytest.mark.parametrize("which", ["demo", "synthetic"])
def test_mi7_every_line_distinct_and_every_axis_ticked(which):
    n = 300
    decay = np.exp(-np.arange(n) / 100)
    standard = curve(n, 15 + 445 * decay, 10 + 50 * decay, 3.5 + 20 * decay)
    curves = {"standard": standard}
    if which == "synthetic":
        topk_loss = 0.5 + 3 * decay
        curves["topk"] = curve(n, np.full(n, 5.0), topk_loss, topk_loss)  # TopK: MSE is the whole loss
    fig = training_curves(curves, "TEST", true_l0=3.65 if which == "synthetic" else None)
    drawn(fig)
    for ax in fig.axes:
        lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]
        for a, b in itertools.combinations(lines, 2):
            assert (a.get_linestyle(), a.get_marker()) != (b.get_linestyle(), b.get_marker()), \
                f"{ax.get_title()}: {a.get_label()!r} and {b.get_label()!r} look alike"
        assert len(visible_yticks(ax)) >= 3, f"{ax.get_title()}: y ticks {visible_yticks(ax)}"
    if which == "synthetic":
        mse = next(line for line in fig.axes[0].get_lines() if line.get_label().startswith("TopK: MSE"))
        assert mse.get_marker() not in ("None", "", None) and mse.get_zorder() > 2
        assert "= total" in mse.get_label()


def test_mi7_true_l0_line_clear_of_the_frame_and_mi8_plain_numbers():
    """The true-L0 line (3.65) sat on the L0 panel's lower edge, where it read as the frame; MI8's log
    axis of firing probabilities (0.01 to 0.08) was labelled 2 x 10^-2."""
    from mechinterp.training.report import feature_matching
    from mechinterp.training.synthetic import MatchScores

    n = 300
    decay = np.exp(-np.arange(n) / 100)
    curves = {"standard": curve(n, 8 + 200 * decay, 1 + 2 * decay, 0.4 + decay),
              "topk": curve(n, np.full(n, 5.0), 0.5 + decay, 0.5 + decay)}
    fig = training_curves(curves, "TEST", true_l0=3.65)
    drawn(fig)
    ax_l0 = fig.axes[1]
    to_axes = ax_l0.transData + ax_l0.transAxes.inverted()
    assert to_axes.transform((0, 3.65))[1] >= 0.05
    rng = np.random.default_rng(0)
    probabilities = np.geomspace(0.01, 0.08, 64)
    scores = MatchScores(rng.uniform(0.8, 1.0, 64), np.arange(64), 0.9)
    fig = feature_matching({"standard": scores}, MatchScores(rng.uniform(0.2, 0.5, 64), np.arange(64), 0.9),
                           probabilities, 0.9, "TEST")
    drawn(fig)
    ax_freq = fig.axes[1]
    low, high = ax_freq.get_xlim()
    labels = [t.get_text() for t in ax_freq.get_xticklabels(minor=True) + ax_freq.get_xticklabels()
              if t.get_text() and low <= t.get_position()[0] <= high]
    assert len(labels) >= 3 and not any("times" in t or "^" in t for t in labels), labels


# --- MI9 ---------------------------------------------------------------------------------------------


def stacked_attribution() -> FeatureAttribution:
    """Feature 409 of the demo: the embedding builds it, every head and MLP adds ~1e-10."""
    rng = np.random.default_rng(0)
    rows = [ComponentRow("embed", "embed", None, None, 4.5, 1.5, 0.3, 1.0, 4.4),
            ComponentRow("pos_embed", "pos_embed", None, None, 1e-9, 0.0, 0.0, 0.5, 0.0)]
    for layer in range(8):
        rows += [ComponentRow(f"L{layer}H{h}", "head", layer, h, float(rng.normal(0, 5e-11)), 0.0, 0.0, 0.5, 0.0)
                 for h in range(4)]
        rows.append(ComponentRow(f"{layer}_mlp_out", "mlp", layer, None, float(rng.normal(0, 5e-11)), 0.0, 0.0,
                                 0.5, 0.0))
    rows.append(ComponentRow("sae_bias", "sae_bias", None, None, -1.5, -0.5, 0.0, 0.0, 0.0))
    direct = DirectAttribution(rows, 48, 10, 500, 3.0, 3.0, 3.0, 0.0, 1e-7)
    ablated = ["embed", "pos_embed", "7_mlp_out", "6_mlp_out", "5_mlp_out", "L5H2", "0_mlp_out", "L3H2"]
    causal = CausalCheck([AblationRow(c, 4.4 if c == "embed" else 1e-9 * k, 4.4 if c == "embed" else 2e-3, 0.0, 1.0)
                          for k, c in enumerate(ablated)], 1.0, 2, 0.1, "texts")
    return FeatureAttribution(409, "blocks.8.hook_resid_pre", "none", -1.5, direct, [],
                              WeightsView([], [], [], [], []), causal, "")


def test_mi9_labels_clear_and_colour_scale_is_the_mean_pre_activation():
    fig = attribution_figure(stacked_attribution(), n_heads=4, title="TEST")
    renderer = drawn(fig)
    ax_bar, ax_map, ax_abl = fig.axes[:3]
    colorbar_ax = next(ax for ax in fig.axes if ax not in (ax_bar, ax_map, ax_abl))
    # The colour scale: ±|mean pre-activation|, said in the bar's label; 1e-10 noise is not a colour.
    image = ax_map.get_images()[0]
    assert image.get_clim() == pytest.approx((-3.0, 3.0))
    bar_label = colorbar_ax.xaxis.label if colorbar_ax.xaxis.label.get_text() else colorbar_ax.yaxis.label
    assert "mean pre-activation" in bar_label.get_text()
    # Every point label in the causal panel clear of the others; 7 stacked points listed in a note.
    labels = [t for t in ax_abl.texts if t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in labels]
    for (a, ta), (b, tb) in itertools.combinations(zip(boxes, labels), 2):
        assert not overlaps(a, b), f"{ta.get_text()!r} overlaps {tb.get_text()!r}"
    note = next(t.get_text() for t in labels if "5_mlp_out" in t.get_text())
    assert all(name in note for name in ("pos_embed", "7_mlp_out", "L3H2"))
    # The colour bar's label and the point labels clear of every axis label and tick label.
    others = [ax.yaxis.label for ax in (ax_bar, ax_map, ax_abl)] + [ax.xaxis.label for ax in (ax_bar, ax_map, ax_abl)]
    others += [t for ax in (ax_bar, ax_map, ax_abl) for t in ax.get_yticklabels() + ax.get_xticklabels()]
    for mine in [bar_label] + labels:
        box = mine.get_window_extent(renderer)
        for other in others:
            if other is not mine and other.get_text():
                assert not overlaps(box, other.get_window_extent(renderer)), \
                    f"{mine.get_text()!r} overlaps {other.get_text()!r}"


def test_mi9_draws_no_zero_rows_or_points_and_counts_them_in_one_note():
    """Chapter 6 folds components whose contribution is zero (at most 1e-6 of the mean pre-activation)
    in its terminal output; MI9 does the same: no empty bar, no point at (0, 0), one note with counts."""
    result = stacked_attribution()
    causal = result.causal
    causal.zero_threshold = 1e-6 * result.direct.mean_pre_activation
    causal.rows += [AblationRow("L1H1", 0.0, 1e-9, 0.0, 1.0), AblationRow("L2H2", 1e-10, 0.0, -2e-7, 1.0)]
    fig = attribution_figure(result, n_heads=4, title="TEST")
    drawn(fig)
    ax_bar, ax_map, ax_abl = fig.axes[:3]
    zero = {r.component for r in result.direct.zero_rows()}
    assert len(zero) == 41  # pos_embed, 32 heads, 8 MLPs: each within 1e-9 of nothing
    assert {t.get_text().split()[0] for t in ax_bar.get_yticklabels()} == {"embed", "sae_bias"}
    widths = [p.get_width() for p in ax_bar.patches if np.isfinite(p.get_width())]
    assert len(widths) == 2 and all(abs(w) > 1 for w in widths)
    points = ax_abl.collections[0].get_offsets()
    assert len(points) == len(causal.rows) - 2
    assert not any(name in t.get_text() for t in ax_abl.texts for name in ("L1H1", "L2H2"))
    notes = [line for line in fig.get_suptitle().splitlines() if "not drawn" in line]
    assert len(notes) == 1 and "41 components" in notes[0] and "2 ablated components" in notes[0]
    # The heatmap still shows every head, round-off written as 0, and its title says they add nothing.
    assert {t.get_text() for t in ax_map.texts} <= {"0"}
    assert "all contribute nothing" in ax_map.get_title()


def test_mi9_without_zero_rows_has_no_note():
    rows = [ComponentRow("embed", "embed", None, None, 2.0, 0.5, 0.3, 1.0, 2.0),
            ComponentRow("L0H0", "head", 0, 0, 1.0, 0.25, 0.3, 1.0, 1.0),
            ComponentRow("sae_bias", "sae_bias", None, None, 1.0, 0.25, 0.0, 0.0, 0.0)]
    direct = DirectAttribution(rows, 10, 2, 50, 4.0, 4.0, 4.0, 0.0, 1e-7)
    result = FeatureAttribution(1, "blocks.1.hook_resid_pre", "none", 1.0, direct, [],
                                WeightsView([], [], [], [], []), None, "")
    fig = attribution_figure(result, n_heads=1, title="TEST")
    assert "not drawn" not in fig.get_suptitle()
    # Each bar's value beside its name, so that a small one still reads.
    assert [t.get_text().split() for t in fig.axes[0].get_yticklabels()] == [
        ["embed", "+2.0"], ["L0H0", "+1.0"], ["sae_bias", "+1.0"]]
