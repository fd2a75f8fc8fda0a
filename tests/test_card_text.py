"""What Chapter 3 shows, in words and units: percent everywhere, a peak box that keeps the space before
its word, an index that says what each card is, and agreement in number."""

from __future__ import annotations

import numpy as np

from mechinterp.cards import render, report
from mechinterp.cards.card import Example
from mechinterp.core.features import ResultsPick, ResultsSelection


def test_the_peak_box_leaves_the_space_before_its_word_outside():
    ex = Example(1, 0, "happy", ["I", " was", " glad", "."], np.array([0, 0, 3.0, 0], np.float32), 2)
    page = render.example_html(ex, 3.0)
    # "was" and "glad" stay two words when the box around ' glad' is drawn: the space is outside the span.
    assert '> <span class="t peak"' in page and '>glad</span>' in page and "> glad</span>" not in page


def test_summary_rows_are_percent_in_the_csv_and_on_screen():
    row = [501, 5.7, 5.95, 2.997, "' cheerful'", "' sunshine'", "-"]
    assert report.shown_row(row)[:4] == [501, "5.7%", "5.95%", "2.997"]
    assert report.shown_row([*row, 0.0316])[-1] == "0.0316%"  # with a corpus: its density, in percent too
    assert report.shown_row(["262+291", "", 1.72, 1.0, "-", "-", "-"])[1] == "-"  # a family has no density
    assert report._pct(0.000316) == 0.0316  # the fraction a card prints as 0.0316%
    assert report.SUMMARY_COLUMNS[1:3] == ["density_sparsity_file_percent", "firing_rate_prompts_percent"]


def test_the_index_row_names_density_and_the_top_example():
    card = {"feature": 501, "origin": "planted 'happy' feature", "firing_rate_on_prompts": 0.0595,
            "typical_max_activation": 3.0, "density_from_sparsity_file": 0.057,
            "top_examples": [{"tokens": ["The", " driver", " was", " really", " glad", ",", " as"],
                              "activations": [0, 0, 0, 0, 3.0, 1.8, 1.0]}]}
    row = report._index_row(card)
    assert row["density"] == 0.057 and row["top_example"] == "The driver was really[ glad]"
    page = render.render_index([row], "demo")
    assert "5.7%" in page and "The driver was really[ glad]" in page and "<th>density</th>" in page


def test_the_gate_note_agrees_in_number():
    pick = ResultsPick(17, "happy", 3, 0.2, "no", "")
    assert "skipped 1 feature that fails the gate" in ResultsSelection([], [pick], "q < 0.05").note()
    assert "skipped 2 features that fail the gate" in ResultsSelection([], [pick, pick], "q < 0.05").note()
