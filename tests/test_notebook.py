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


def outputs_of(cell) -> tuple[str, list[bytes]]:
    """A cell's text (stdout and text/plain results) and its PNG pictures."""
    import base64

    text, pngs = [], []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            text.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            text.append(out.data.get("text/plain", ""))
            if "image/png" in out.data:
                pngs.append(base64.b64decode(out.data["image/png"]))
        elif out.output_type == "error":
            raise AssertionError(f"the notebook failed: {out.ename}: {out.evalue}")
    return "\n".join(text), pngs


@pytest.fixture(scope="module")
def executed(world):
    """The tour, executed by a Jupyter kernel in this session's offline environment (demo world built)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs (python tools/make_tour_notebook.py)"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


def test_the_tour_is_the_one_the_tool_writes():
    import nbformat

    from tools.make_tour_notebook import build

    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in build().cells]


def test_the_tour_runs_and_shows_figures_inline(executed, world, loaded_toy):
    from mechinterp.investigate.text_features import top_features

    cells = [outputs_of(c) for c in executed.cells if c.cell_type == "code"]
    text = "\n".join(t for t, _ in cells)
    pngs = [p for _, ps in cells for p in ps]
    # Chapter 1: the notebook's result is the package's, computed here on the same model and SAE.
    sentence = "I was thrilled when the package finally arrived, but furious that the box was crushed."
    assert repr(top_features(loaded_toy, sentence, 8)) in text
    # Chapter 2: the planted happy feature comes first, and passes as a concept.
    happy = world.planted.concept["happy"]
    assert f"chapter 2: happy rank 1 = #{happy} (concept)" in text
    # Chapters 3, 4 and 6 show their results as one short line each.
    assert f"FeatureCard(#{happy}" in text
    assert f"FeatureTest(#{happy}" in text
    assert f"FeatureAttribution(#{happy}" in text and "rows add up" in text
    # The four figures (heatmap, volcano, card, attribution) display inline as pictures.
    assert len(pngs) == 4
    assert all(p[:8] == b"\x89PNG\r\n\x1a\n" and len(p) > 10_000 for p in pngs)


def test_every_block_of_docs_python_runs_in_the_tour():
    """docs/python.md shows the calls; each of its Python blocks is a cell of the executed tour, in order."""
    import re

    import nbformat

    doc = (ROOT / "docs" / "python.md").read_text(encoding="utf-8")
    blocks = [b.strip() for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S)]
    cells = [c.source.strip() for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    assert len(blocks) >= 6
    assert blocks == cells
