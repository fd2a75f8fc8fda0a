"""Small pieces every chapter's figures share: token labels, the colour maps, group colours, PNG bytes.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no GUI, no show()): every plot function
takes numbers and returns the figure; the caller saves it with the numbers behind it beside it, and a
notebook shows it inline.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from mechinterp.core.io import check_figure_size


class NotebookFigure(Figure):
    """A matplotlib Figure that shows itself in Jupyter, with no pyplot and no backend to set up.

    The package never imports pyplot (a script must not open windows or change global state), so
    Jupyter's inline backend never hears of these figures and would print ``<Figure size ...>``.
    ``_repr_png_`` is IPython's hook for showing an object as a picture; saving is unchanged.
    """

    def _repr_png_(self) -> bytes:
        return png_bytes(self)


def display_token(token: str) -> str:
    """Make whitespace and control characters visible in axis labels."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·") or "∅"


def white_zero_cmap():
    """magma, with exact zeros (below vmin) drawn white so silent cells read as empty."""
    return colormaps["magma_r"].with_extremes(under="white")


# --- one colour per prompt group ---------------------------------------------------------------------
# A learner compares figures side by side: happy must be the same colour in MI2, MI4_happy, MI5 and MI6,
# and in today's run as in yesterday's with other groups. So a group's colour depends on its name only,
# never on its position in this run's list of groups.

BASELINE_COLOUR = "#7f7f7f"  # the reference group is always grey: what every other group is compared with
# tab10 without its grey (kept for the baseline), then tab20's light shades, used only when a figure has
# more groups than the nine strong colours.
GROUP_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
                 "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5")
STRONG_COLOURS = 9  # the first nine of GROUP_PALETTE: where a name's hash lands
# Names the tutorial, the demo and the tests use get fixed strong colours, with meaning where one helps
# (angry red, calm blue); no two share one, so they never collide with each other.
KNOWN_GROUP_COLOURS = {
    "calm": GROUP_PALETTE[0], "happy": GROUP_PALETTE[1], "neutral": GROUP_PALETTE[2], "angry": GROUP_PALETTE[3],
    "sad": GROUP_PALETTE[4], "fear": GROUP_PALETTE[5], "surprise": GROUP_PALETTE[6], "disgust": GROUP_PALETTE[7],
    "control": GROUP_PALETTE[8],
}
DEFAULT_BASELINE = "baseline"  # the reference group's default name (--baseline)


def group_colours(groups: Iterable[str], baseline: str | None = DEFAULT_BASELINE) -> dict[str, str]:
    """A colour for each group, from its name: the same group gets the same colour in every figure and run.

    The baseline is grey; a name in :data:`KNOWN_GROUP_COLOURS` gets its colour; any other name a stable
    hash (crc32, unlike ``hash()`` the same in every process) into the strong colours, moving on to the
    next free colour of :data:`GROUP_PALETTE` when another group of the same call has it. Pass a run's
    whole list of groups to every figure of the run, so that even a moved colour is the same in all of
    them. Beyond 18 groups colours repeat.
    """
    names = list(dict.fromkeys(groups))
    colours = {g: BASELINE_COLOUR for g in names if g == baseline}
    colours |= {g: KNOWN_GROUP_COLOURS[g] for g in names if g in KNOWN_GROUP_COLOURS and g not in colours}
    # Sorted, so that which of two colliding names moves does not depend on the order they came in.
    for name in sorted(g for g in names if g not in colours):
        taken = set(colours.values())
        start = zlib.crc32(name.encode("utf-8")) % STRONG_COLOURS
        order = [GROUP_PALETTE[(start + k) % STRONG_COLOURS] for k in range(STRONG_COLOURS)]
        order += [GROUP_PALETTE[STRONG_COLOURS + (start + k) % STRONG_COLOURS] for k in range(STRONG_COLOURS)]
        colours[name] = next((c for c in order if c not in taken), order[0])
    return {g: colours[g] for g in names}


def group_colour(group: str, baseline: str | None = DEFAULT_BASELINE) -> str:
    """One group's colour when it is the only group in the figure besides the baseline."""
    return group_colours([group], baseline)[group]


def axis_label(token: str) -> str:
    """A token as an axis label: quotes show leading spaces; newlines and control characters escaped."""
    text = repr(token)
    text = text if len(text) <= 22 else text[:20] + "…'"
    # Two '$' in a label (GPT-2 has tokens like '$$$$') would start matplotlib's math mode and crash it.
    return text.replace("$", r"\$")


# Where a label may sit, in points from its point: right, above, below, left, then further out.
LABEL_OFFSETS = [(dx * k, dy * k) for k in (1, 2, 3) for dx, dy in ((5, 3), (5, -9), (-5, 3), (-5, -9), (0, 9), (0, -13))]


def place_labels(ax: Any, xy: Sequence[tuple[float, float]], texts: Sequence[str], fontsize: float = 8,
                 avoid: Sequence[Any] = ()) -> list[str]:
    """Annotate points so that no two labels overlap and none leaves the axes.

    Labels of points on the same spot are joined. Each label tries :data:`LABEL_OFFSETS` in turn and takes
    the first place whose box meets no label placed before it and none of ``avoid`` (boxes in display
    coordinates: a legend, the markers); the first labels get the best places: pass the most important
    first. A far place gets a thin line to its point. A label that fits nowhere is not drawn; those are
    returned, for the caller to list in a note.
    """
    renderer = ax.figure._get_renderer()
    frame = ax.get_window_extent(renderer)
    # Points drawn on the same spot (features with equal statistics) share one label: "#80 #146".
    merged: dict[tuple[float, float], list[str]] = {}
    for (x, y), text in zip(xy, texts):
        merged.setdefault((round(float(x), 6), round(float(y), 6)), []).append(text)
    placed, left_out = [], []
    for (x, y), names in merged.items():
        text = " ".join(names)
        for n, (dx, dy) in enumerate(LABEL_OFFSETS):
            far = n >= 6  # beyond the first ring a thin line ties the label to its point
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                ha="left" if dx >= 0 else "right",
                                arrowprops=dict(arrowstyle="-", lw=0.5, color="#777777") if far else None)
            box = label.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in [*placed, *avoid]):
                placed.append(box)
                break
            label.remove()
        else:
            left_out += names
    return left_out


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes, e.g. to inline in a self-contained HTML page."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    check_figure_size(buffer.getvalue()[:24], "a figure")
    return buffer.getvalue()
