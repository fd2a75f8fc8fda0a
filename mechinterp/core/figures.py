"""Small pieces every chapter's figures share: token labels, the colour map, PNG bytes.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no GUI, no show()): every plot function
takes numbers and returns the figure; the caller saves it with the numbers behind it beside it, and a
notebook shows it inline.
"""

from __future__ import annotations

import io

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


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes, e.g. to inline in a self-contained HTML page."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    check_figure_size(buffer.getvalue()[:24], "a figure")
    return buffer.getvalue()
