"""One colour per prompt group, in every figure of every chapter and in every run.

A learner reads MI2, MI4_happy, MI5 and MI6 side by side: happy was red in one and blue in another,
because each figure coloured groups by their position in its own list. These build each figure from
small stand-ins (no model) with two different sets of groups, read the colours back from the
matplotlib artists, and check that a group keeps its colour and that the baseline is grey.
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex

from mechinterp.cards.figures import feature_figure
from mechinterp.causal.report import causal_figure
from mechinterp.core.figures import BASELINE_COLOUR, GROUP_PALETTE, KNOWN_GROUP_COLOURS, group_colours
from mechinterp.meaning import figures

D_SAE = 32
RUN_A = ["baseline", "angry", "happy"]  # the tutorial's prompt folder
RUN_B = ["baseline", "control", "fear", "happy", "joy", "sad", "weather"]  # another run, other groups


def hexes(colours) -> set[str]:
    return {to_hex(c) for c in np.atleast_2d(colours)}


# --- the rule ------------------------------------------------------------------------------------------


def test_a_group_keeps_its_colour_whatever_the_other_groups():
    a, b = group_colours(RUN_A), group_colours(RUN_B)
    assert a["baseline"] == b["baseline"] == BASELINE_COLOUR
    assert a["happy"] == b["happy"] == KNOWN_GROUP_COLOURS["happy"]
    # The order the groups come in changes nothing; a name not in the known list gets the same
    # colour in every process (crc32, not Python's salted hash()).
    assert group_colours(list(reversed(RUN_B))) == b
    assert group_colours(["baseline", "joy"])["joy"] == group_colours(["joy", "weather", "baseline"])["joy"]
    assert group_colours(["weather"])["weather"] == "#2ca02c"  # pinned: crc32("weather") % 9 == 2


def test_no_two_groups_of_one_figure_share_a_colour():
    names = ["baseline", *KNOWN_GROUP_COLOURS, *(f"group{i}" for i in range(9))]
    colours = group_colours(names)
    assert len(set(colours.values())) == len(names) == 1 + len(GROUP_PALETTE)
    assert BASELINE_COLOUR not in GROUP_PALETTE  # grey is the baseline's alone
    # Another baseline: that group is grey, and the group called "baseline" gets a colour of its own.
    other = group_colours(["calm", "baseline", "happy"], baseline="calm")
    assert other["calm"] == BASELINE_COLOUR and other["baseline"] != BASELINE_COLOUR


# --- the figures ---------------------------------------------------------------------------------------


def mi2_colours(groups: list[str]) -> dict[str, str]:
    rng = np.random.default_rng(0)
    means = {g: rng.exponential(1.0, D_SAE) for g in groups}
    fig = figures.group_mean_overview(means, [3], "TEST", "max")
    panels = [ax for ax in fig.axes if ax.collections]
    return {ax.get_ylabel().split("\n")[0]: to_hex(ax.collections[0].get_colors()[0]) for ax in panels}


def mi4_colours(group: str) -> tuple[str, str]:
    effect = np.array([0.9, 0.8, -0.7, 0.1])
    q = np.array([1e-4, 1e-3, 1e-3, 0.5])
    fig = figures.volcano(effect, q, np.arange(4), [0, 1], 0.05, group, "baseline", "TEST")
    by_label = {c.get_label(): c for c in fig.axes[0].collections}
    return (hexes(by_label[f"higher in {group}"].get_facecolor()).pop(),
            hexes(by_label["higher in baseline"].get_facecolor()).pop())


def mi5_colours(sources: list[str]) -> dict[str, str]:
    counts = {s: np.arange(1, 11, dtype=float) for s in sources}
    fig = feature_figure(7, np.linspace(0.1, 3.0, 11), counts, 10, 100, [(" a", 1.0)], [(" b", -1.0)], "TEST")
    legend = fig.axes[0].get_legend()
    return {t.get_text().split(" (")[0]: to_hex(h.get_facecolor())
            for t, h in zip(legend.get_texts(), legend.legend_handles)}


def mi6_colours(group: str, steer_group: str) -> tuple[str, str]:
    effect = {"delta_logp_targets": -0.5, "delta_logodds_targets": -4.0, "kl": 0.5}
    controls = {k: np.linspace(-0.01, 0.01, 20) for k in effect}
    curve = {"logp_targets": [-5, -1, 0], "logodds_targets": [-9, 5, 9], "kl": [0.3, 0.0, 3.0]}
    fig = causal_figure("feature #1", group, "targets", effect, controls, [-1, 0, 1], curve, steer_group,
                        "3 × W_dec[1]", "TEST")
    star = next(c for c in fig.axes[0].collections if c.get_label().startswith("feature #1"))
    steering = next(ax for ax in fig.axes if ax.get_ylabel() == "nats")
    return hexes(star.get_facecolor()).pop(), to_hex(steering.get_lines()[0].get_color())


@pytest.mark.parametrize("group", ["happy", "angry", "joy"])
def test_a_group_has_one_colour_in_mi2_mi4_mi5_and_mi6_of_two_different_runs(group):
    runs = [RUN_A, RUN_B] if group != "joy" else [["baseline", "joy"], RUN_B]
    runs = [r if group in r else [*r, group] for r in runs]
    expected = group_colours(runs[0])[group]
    for groups in runs:
        assert mi2_colours(groups)[group] == expected, groups
        assert mi2_colours(groups)["baseline"] == BASELINE_COLOUR
        assert mi5_colours(groups)[group] == expected, groups
        assert mi5_colours(groups)["baseline"] == BASELINE_COLOUR
    assert mi4_colours(group) == (expected, BASELINE_COLOUR)
    assert mi6_colours(group, "baseline") == (expected, BASELINE_COLOUR)
    assert mi6_colours("baseline", group) == (BASELINE_COLOUR, expected)


def test_mi3_row_labels_are_in_the_groups_colours():
    acts = np.random.default_rng(0).random((10, 3))
    panels = [(g, "", acts, 5, [1, 2, 3]) for g in ("happy", "joy")]
    fig = figures.group_heatmaps(panels, "baseline", "TEST", "max")
    for ax in (ax for ax in fig.axes if ax.images and ax.get_title()):
        group = ax.get_title().split(":")[0]
        colours = [to_hex(t.get_color()) for t in ax.get_yticklabels()]
        assert colours == [group_colours(["baseline", "happy", "joy"])[group], BASELINE_COLOUR]
