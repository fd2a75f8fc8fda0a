"""Every figure stays readable and under 6,000 px a side, whatever the input's size.

A user's Chapter 2 run on 2,000 / 2,000 / 600 / 40 prompts made MI3 29,019 px tall (one row per prompt),
and a 5,000-prompt group 50,155 px with its top 1,200 px blank. These build the figures' inputs at such
sizes directly (no model): MI3 from a small stand-in for a Chapter 2 result, MI1 from a 1,024-token
text, and check that each figure is bounded, says what it leaves out, and that the CSV beside it holds
exactly the numbers drawn.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from mechinterp.cards.figures import MAX_LOGIT_BARS, feature_figure
from mechinterp.core.figures import NotebookFigure, png_bytes
from mechinterp.core.io import MAX_FIGURE_PX, FigureSizeWarning, OutputFolder, png_size
from mechinterp.investigate import report as ch1_report
from mechinterp.investigate.text_features import TextFeatures, TopFeature
from mechinterp.meaning import figures
from mechinterp.meaning.options import MeaningOptions

D_SAE = 24  # features in the stand-in SAE: enough for a top 10, small enough to stay fast


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def png_side(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


class DenseAggregates:
    """The one method of the per-prompt summaries that the figures read, over a dense matrix."""

    def __init__(self, acts: np.ndarray):
        self.acts = acts

    def dense(self, agg: str, indices, features) -> np.ndarray:
        return self.acts[np.asarray(indices)][:, np.asarray(features)].astype(np.float32)


def fake_result(sizes: dict[str, int], seed: int = 0) -> SimpleNamespace:
    """What the Chapter 2 figure writers read from a ``MeaningResult``: the baseline first, then the groups,
    each group with one planted feature (its rank 1, verdict concept) over sparse random activations."""
    rng = np.random.default_rng(seed)
    n = sum(sizes.values())
    acts = rng.exponential(1.0, (n, D_SAE)) * (rng.random((n, D_SAE)) < 0.3)
    index, findings, start = {}, {}, 0
    for k, (group, size) in enumerate(sizes.items()):
        index[group] = np.arange(start, start + size)
        if k:
            planted = k % D_SAE
            acts[start:start + size, planted] += 2.0
            order = [planted] + [f for f in range(D_SAE) if f != planted]
            findings[group] = SimpleNamespace(
                top=lambda j, o=order: [SimpleNamespace(feature=f, q=1e-3) for f in o[:j]],
                n_significant=lambda alpha: 1, verdicts={planted: SimpleNamespace(verdict="concept")})
        start += size
    baseline = next(iter(sizes))
    return SimpleNamespace(
        prompts=SimpleNamespace(groups={g: [f"{g} prompt {i}" for i in range(m)] for g, m in sizes.items()},
                                baseline=baseline),
        summaries=SimpleNamespace(aggregates=DenseAggregates(acts), info=SimpleNamespace(title="TEST · model")),
        index=index, findings=findings, acts=acts,
    )


@pytest.fixture
def captured(monkeypatch):
    """The figures the writers build, kept for inspection after they are saved."""
    made = []

    def keep(fn):
        def wrapper(*args, **kwargs):
            made.append(fn(*args, **kwargs))
            return made[-1]
        return wrapper

    monkeypatch.setattr(figures, "group_heatmaps", keep(figures.group_heatmaps))
    monkeypatch.setattr(ch1_report, "token_heatmap", keep(ch1_report.token_heatmap))
    return made


def test_mi3_of_a_large_design_is_bounded_sampled_and_its_csv_is_what_is_drawn(tmp_path, captured):
    sizes = {"baseline": 2000, "null": 2000, "joy": 600, "small": 40}
    result = fake_result(sizes)
    with OutputFolder(tmp_path) as out:
        png, mi3_csv = figures.write_heatmaps(out, result, MeaningOptions())
    width, height = png_side(png)
    assert width < MAX_FIGURE_PX and height < MAX_FIGURE_PX, (width, height)
    cap = figures.MAX_ROWS_PER_SIDE
    rows = read_rows(mi3_csv)
    fig = captured[0]
    assert "random sample" in fig.get_suptitle() and f"{cap}" in fig.get_suptitle()
    shown = {ax.get_title().split(":")[0]: ax for ax in fig.axes if ax.images and ax.get_title()}
    assert list(shown) == ["null", "joy", "small"]
    for panel, ax in shown.items():
        mine = [r for r in rows if r["panel"] == panel]
        # One row per prompt drawn and feature: at most the cap of each side, the small group whole.
        prompts = {side: list(dict.fromkeys(r["prompt"] for r in mine if r["prompt_group"] == side))
                   for side in (panel, "baseline")}
        assert len(prompts[panel]) == min(sizes[panel], cap) and len(prompts["baseline"]) == cap
        for side in (panel, "baseline"):
            assert {(r["prompts_drawn"], r["prompts_in_set"]) for r in mine if r["prompt_group"] == side} == {
                (str(len(prompts[side])), str(sizes[side]))}
        # The rows are a seeded sample, in file order, and the numbers are the prompts' own.
        lines = {side: [int(p.rsplit(" ", 1)[1]) for p in prompts[side]] for side in prompts}
        assert lines[panel] == figures.sample_rows(sizes[panel], 0, panel).tolist() == sorted(lines[panel])
        feats = list(dict.fromkeys(int(r["feature"]) for r in mine))
        table = np.array([float(r["activation"]) for r in mine]).reshape(-1, len(feats))
        expected = result.acts[np.concatenate([result.index[panel][lines[panel]],
                                               result.index["baseline"][lines["baseline"]]])][:, feats]
        np.testing.assert_allclose(table, expected, atol=1e-6)  # the CSV rounds to 6 decimals
        # What is drawn: each column of the CSV scaled to its max, row for row.
        drawn = np.asarray(ax.images[0].get_array())
        np.testing.assert_allclose(drawn, table / np.where(table.max(0) > 0, table.max(0), 1), atol=1e-5)
        labels = [t.get_text() for t in ax.get_yticklabels()]
        if sizes[panel] > cap:
            assert f"{cap} of {sizes[panel]:,}" in labels[0] and "random" in labels[0]
        else:
            assert labels[0] == f"{panel}\n({sizes[panel]})"
        assert f"{cap} of 2,000" in labels[1]


def test_the_sample_is_reproducible_and_small_sets_are_whole():
    assert figures.sample_rows(48, 0, "happy").tolist() == list(range(48))
    first = figures.sample_rows(5000, 0, "happy")
    assert len(first) == figures.MAX_ROWS_PER_SIDE and np.all(np.diff(first) > 0)
    assert np.array_equal(first, figures.sample_rows(5000, 0, "happy"))
    assert not np.array_equal(first, figures.sample_rows(5000, 1, "happy"))
    assert not np.array_equal(first, figures.sample_rows(5000, 0, "angry"))


def test_mi3_samples_a_large_panel_given_whole():
    """A notebook may hand group_heatmaps every prompt: the figure samples them itself."""
    cap = figures.MAX_ROWS_PER_SIDE
    acts = np.random.default_rng(0).random((5000 + 70, 3))
    fig = figures.group_heatmaps([("big", "", acts, 5000, [7, 8, 9])], "baseline", "TEST · model", "max")
    ax = next(ax for ax in fig.axes if ax.images)
    assert ax.images[0].get_array().shape == (2 * cap, 3)
    group_label, baseline_label = (t.get_text() for t in ax.get_yticklabels())
    assert f"{cap} of 5,000" in group_label and f"{cap} of 70" in baseline_label
    assert "random sample" in fig.get_suptitle()
    assert max(fig.get_size_inches()) * 150 < MAX_FIGURE_PX


@pytest.mark.parametrize("n_features", [1, 10, 11, 20, 50])
def test_mi3_layout_fits_any_number_of_groups(n_features):
    for n_panels in (1, 3, 7, 12, 25, 100):
        drawn, per_row, n_rows = figures.heatmap_layout(n_panels, n_features)
        assert 1 <= drawn <= n_panels and drawn <= per_row * n_rows
        width = figures._panel_width(n_features) * per_row + 1.5
        height = max(4.5, 0.075 * 2 * figures.MAX_ROWS_PER_SIDE + 3.0) * n_rows
        assert width <= figures.MAX_INCHES + 1.5 and height <= figures.MAX_INCHES, (n_panels, width, height)
    assert figures.heatmap_layout(3, 10) == (3, 3, 1)  # the demo: one row, as it always was


def test_mi3_names_the_groups_and_features_it_leaves_out(monkeypatch):
    # A small limit, so that a few small panels already overflow it (the real limit needs ~20).
    monkeypatch.setattr(figures, "MAX_INCHES", 14.0)
    panels = [figures.HeatmapPanel(f"group_{i:02d}", "1 feature at q < 0.05", np.ones((8, 30)), 4,
                                   list(range(30)), 900, 900) for i in range(5)]
    fig = figures.group_heatmaps(panels, "baseline", "TEST · model", "max")
    drawn = figures.heatmap_layout(5, 30)[0]
    title = fig.get_suptitle()
    assert drawn < 5
    assert f"{drawn} of 5 groups drawn" in title and f"group_{drawn:02d}" in title
    assert f"the top {figures.MAX_FEATURES_PER_PANEL} of 30 ranked features" in title
    assert "random sample" in title
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(images) == drawn and all(a.shape == (8, figures.MAX_FEATURES_PER_PANEL) for a in images)


def test_mi2_with_many_groups_keeps_to_the_limit():
    rng = np.random.default_rng(0)
    means = {f"g{i:02d}": rng.random(64) for i in range(30)}
    fig = figures.group_mean_overview(means, [3], "TEST · model", "max")
    assert f"the first {figures.MAX_MI2_GROUPS} of 30 groups drawn" in fig.get_suptitle()
    assert "g29" in fig.get_suptitle() or "more" in fig.get_suptitle()
    assert len(fig.axes) == figures.MAX_MI2_GROUPS
    # The size before cropping bounds the saved one (rendering 18 panels is slow; MI2 draws nothing
    # outside the figure but its y label, on the narrow side).
    width, height = fig.get_size_inches() * 150
    assert width < MAX_FIGURE_PX and height < MAX_FIGURE_PX, (width, height)
    # No blank band under the title: its block keeps to about 1.3 inches, however tall the figure.
    assert (1 - fig.subplotpars.top) * fig.get_size_inches()[1] < 1.5


def test_chapter1_heatmap_of_a_long_text_is_bounded_and_says_what_it_draws(tmp_path, captured):
    n_feat, n_tok = ch1_report.MAX_FEATURES_IN_HEATMAP, 200  # the most features drawn: two rows of tokens fit
    rng = np.random.default_rng(0)
    heat = rng.exponential(1.0, (n_feat, n_tok)) * (rng.random((n_feat, n_tok)) < 0.2)
    rows = [TopFeature(k + 1, 100 + k, float(heat[k].max()), " word", 1, "") for k in range(n_feat)]
    text = TextFeatures([f" w{i}" for i in range(n_tok)], 1, rows, heat, n_feat, 512)
    with OutputFolder(tmp_path) as out:
        png, _, tokens_csv = ch1_report.write_outputs(out, text, "TEST · model")
    width, height = png_side(png)
    assert width < MAX_FIGURE_PX and height < MAX_FIGURE_PX, (width, height)
    shown_feat, shown_tok = ch1_report.heatmap_extent(n_feat, n_tok)
    assert shown_feat == n_feat and shown_tok < n_tok
    fig = captured[0]
    assert f"drawn: the first {shown_tok:,} of {n_tok:,} tokens" in fig.axes[0].get_title()
    drawn = np.concatenate([np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images], axis=1)
    np.testing.assert_array_equal(drawn, heat[:shown_feat, :shown_tok])
    # The CSV keeps every cell of the text, the drawn ones among them, as the title says.
    cells = read_rows(tokens_csv)
    assert len(cells) == n_feat * n_tok
    table = np.array([float(r["activation"]) for r in cells]).reshape(n_feat, n_tok)
    np.testing.assert_allclose(table[:shown_feat, :shown_tok], drawn)


def test_chapter1_heatmap_of_many_features_draws_the_strongest():
    n_feat, cap = 200, ch1_report.MAX_FEATURES_IN_HEATMAP
    fig = ch1_report.token_heatmap(np.ones((n_feat, 40)), [f" w{i}" for i in range(40)], list(range(n_feat)), "TEST")
    assert f"drawn: the top {cap} of {n_feat} features" in fig.axes[0].get_title()
    assert fig.axes[0].images[0].get_array().shape == (cap, 40)
    assert max(fig.get_size_inches()) * 150 < MAX_FIGURE_PX  # the size before cropping; rendering is slow


def test_chapter3_logit_panel_draws_at_most_its_cap():
    tokens = [(f" t{i}", 1.0 - i / 200) for i in range(100)]
    fig = feature_figure(7, np.linspace(0, 1, 11), {"a": np.ones(10)}, 5, 20, tokens, tokens, "TEST")
    promoted, suppressed = fig.axes[1:3]  # one panel each, with its own scale
    assert len(promoted.patches) == len(suppressed.patches) == MAX_LOGIT_BARS
    assert "all 100 promoted and 100 suppressed" in suppressed.get_xlabel()


def test_a_figure_over_the_limit_is_flagged(tmp_path):
    fig = NotebookFigure(figsize=(MAX_FIGURE_PX / 100, 2))  # at 150 dpi: 9,000 px wide
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1])
    with pytest.warns(FigureSizeWarning, match="over the 6,000 px"):
        OutputFolder(tmp_path).save_figure(fig, "wide.png")
    with pytest.warns(FigureSizeWarning):
        png_bytes(fig, dpi=150)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FigureSizeWarning)
        small = NotebookFigure(figsize=(4, 3))
        small.subplots().plot([0, 1], [0, 1])
        assert max(png_size(png_bytes(small, dpi=150))) < MAX_FIGURE_PX  # a small one passes quietly


def test_token_labels_with_dollar_signs_draw_as_text():
    """GPT-2 has tokens like '$$$$': two '$' in a label would start matplotlib's math mode and crash."""
    import matplotlib.pyplot as plt

    from mechinterp.core.figures import axis_label

    fig, ax = plt.subplots()
    ax.set_yticks([0, 1], [axis_label("$$$$"), axis_label(" $5 and $6")])
    fig.canvas.draw()  # raises on a math-mode parse error
    assert [t.get_text() for t in ax.get_yticklabels()] == [r"'\$\$\$\$'", r"' \$5 and \$6'"]
    plt.close(fig)


def test_volcano_labels_never_overlap_and_points_on_one_spot_share_a_label():
    """MI4 with a tight cluster of strong features, several on exactly the same spot (equal statistics,
    as the demo's ',' ' as' ' always' detectors have): every label box is apart from every other, and
    the features it could not label are named in a note."""
    from mechinterp.meaning.figures import volcano

    rng = np.random.default_rng(0)
    effect = np.r_[rng.uniform(0.80, 0.95, 12), 0.83, 0.83, 0.83, rng.uniform(-0.3, 0.3, 100)]
    q = np.r_[10 ** -rng.uniform(5.5, 6.2, 12), 1e-6, 1e-6, 1e-6, rng.uniform(0.2, 1.0, 100)]
    features = np.arange(1000, 1000 + len(q))
    labelled = [int(f) for f in features[np.argsort(q)[:15]]]
    fig = volcano(effect, q, features, labelled, 0.05, "happy", "baseline", "test")
    renderer = fig._get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text().startswith("#")]
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    shown = " ".join(t.get_text() for t in labels).split()
    note = [t.get_text() for t in ax.texts if t.get_text().startswith("no room to label")]
    missing = note[0].split(": ", 1)[1].split() if note else []
    assert sorted(shown + missing) == sorted(f"#{f}" for f in labelled)  # every one named once
    assert any(t.get_text() == "#1012 #1013 #1014" for t in labels) or {"#1012", "#1013", "#1014"} <= set(missing)


def test_card_logit_panels_give_suppression_its_own_scale():
    """A +4 promotion and a -0.017 suppression: each panel's x range fits its own bars, so the small
    ones are not drawn as nothing, and no token label runs into the histogram."""
    from mechinterp.cards.figures import feature_figure

    edges = np.linspace(0.1, 3.0, 11)
    fig = feature_figure(501, edges, {"happy": np.arange(10)}, 100, 145,
                         [(" sunshine", 4.0), (" laughter", 3.9)],
                         [(" Accountability", -0.017), ("<|endoftext|>", -0.012)], "test")
    fig.draw_without_rendering()  # constrained layout places the axes at draw time
    renderer = fig._get_renderer()
    hist = fig.axes[0]
    promoted, suppressed = fig.axes[1:3]  # the logit panels, top and bottom
    assert promoted.get_xlim()[1] >= 4.0 and suppressed.get_xlim()[0] <= -0.017
    assert suppressed.get_xlim()[0] > -0.1  # its own scale, not the promoted one's
    hist_box = hist.get_window_extent(renderer)
    for label in suppressed.get_yticklabels() + promoted.get_yticklabels():
        assert label.get_window_extent(renderer).x0 > hist_box.x1, label.get_text()
