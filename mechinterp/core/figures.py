"""Small pieces every chapter's figures share: token labels, the colour map, PNG bytes.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no GUI, no show()): every plot function
takes numbers and returns the figure; the caller saves it with the numbers behind it beside it, and a
notebook shows it inline.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
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


def axis_label(token: str) -> str:
    """A token as an axis label: quotes show leading spaces; newlines and control characters escaped."""
    text = repr(token)
    text = text if len(text) <= 22 else text[:20] + "…'"
    # Two '$' in a label (GPT-2 has tokens like '$$$$') would start matplotlib's math mode and crash it.
    return text.replace("$", r"\$")


# Where a label may sit, in points from its point: right, above, below, left, then further out.
LABEL_OFFSETS = [(dx * k, dy * k) for k in (1, 2, 3) for dx, dy in ((5, 3), (5, -9), (-5, 3), (-5, -9), (0, 9), (0, -13))]


def place_labels(ax: Any, xy: Sequence[tuple[float, float]], texts: Sequence[str], fontsize: float = 8) -> list[str]:
    """Annotate points so that no two labels overlap and none leaves the axes.

    Labels of points on the same spot are joined. Each label tries :data:`LABEL_OFFSETS` in turn and takes
    the first place whose box meets no label placed before it (the first labels get the best places: pass
    the most important first); a far place gets a thin line to its point. A label that fits nowhere is not
    drawn; those are returned, for the caller to list in a note.
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
            if inside and not any(box.overlaps(other) for other in placed):
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
