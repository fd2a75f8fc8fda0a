"""How a label's scores are shown: the card's short terminal block, the specificity figure with the numbers
behind it (``MI5_<id>_label.png`` / ``.csv``), the card page's section and the summary table's columns.

Why it exists: :mod:`mechinterp.cards.label_score` returns numbers; this module turns them into what a
person reads, so a change of wording never touches a number. Nothing here prints.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mechinterp.cards.figures import log_activation_axis
from mechinterp.cards.label_score import FINE_PER_DECADE, LabelScore
from mechinterp.core.figures import NotebookFigure
from mechinterp.core.io import OutputFolder
from mechinterp.core.tables import wrapped

LABEL_PNG = "MI5_{feature}_label.png"  # activation histogram split into label-covered and other tokens
LABEL_CSV = "MI5_{feature}_label.csv"  # the numbers behind it
# The figure merges the pass's fine bins (40 per decade) into 10 per decade: readable bars.
SHOWN_PER_DECADE = 10
SUMMARY_COLUMNS = ["label", "label_specificity", "label_sensitivity", "label_auroc", "label_auroc_ci_low",
                   "label_auroc_ci_high", "random_label_auroc_median"]


def _num(x: float, digits: int = 2) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _ci(score: LabelScore, name: str, digits: int = 2) -> str:
    lo, hi = score.ci.get(name, (float("nan"), float("nan")))
    return "" if not math.isfinite(lo) else f" [{_num(lo, digits)}-{_num(hi, digits)}]"


def _chance(score: LabelScore, name: str, digits: int = 2) -> str:
    if name not in score.baseline:
        return ""
    med, lo, hi = score.baseline[name]
    return f"; random lists {_num(med, digits)} [{_num(lo, digits)}-{_num(hi, digits)}]"


def label_text(scores: Sequence[LabelScore], name: str) -> list[str]:
    """The card's label block: at most 5 lines per label (scores with 95% intervals, chance, files)."""
    lines = []
    for s in scores:
        if not s.n_occurrences:  # no score means anything then: say so instead of printing zeros
            lines.append(f"Label {s.label.describe()!r}: it never occurs in the {s.n_tokens:,} corpus tokens, so "
                         "it cannot be scored; check its spelling, or use a corpus that has its words")
            continue
        median = s.above[1][1] if len(s.above) > 1 else float("nan")
        lines += [
            wrapped(f"Label {s.label.describe()!r}: {s.n_occurrences:,} occurrences, {s.n_covered:,} of "
                    f"{s.n_tokens:,} corpus tokens covered (95% bootstrap intervals over documents):", "    "),
            f"  specificity {_num(s.specificity)}{_ci(s, 'specificity')} of its activation on the label "
            f"({_num(median)} of firings above its median){_chance(s, 'specificity')}",
            f"  sensitivity {_num(s.sensitivity)}{_ci(s, 'sensitivity')}: fires on {s.n_occurrences_fired:,} of "
            f"{s.n_occurrences:,} occurrences{_chance(s, 'sensitivity')}",
            f"  AUROC {_num(s.auroc, 3)}{_ci(s, 'auroc', 3)} label vs other tokens{_chance(s, 'auroc', 3)}",
        ]
    lines = [wrapped(line, "    ") for line in lines]
    if scores:
        lines.append(f"  figure: {LABEL_PNG.format(feature=name)} (numbers: {LABEL_CSV.format(feature=name)})")
    return lines


def display_bins(score: LabelScore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fine histogram merged to :data:`SHOWN_PER_DECADE` bins, trimmed to where the unit fires.

    Returns:
        ``(edges [n + 1], covered [n], other [n])``; the first bin starts at 0 and the open top bin ends
        at its next fine edge.
    """
    group = FINE_PER_DECADE // SHOWN_PER_DECADE
    edges = score.hist_edges  # 0, fine inner edges, inf: one more than the counts
    cov, oth = score.hist_covered, score.hist_other
    # (0, lowest edge) alone, then groups of fine bins, then the open top bin alone.
    starts = sorted({0, *range(1, len(cov) - 1, group), len(cov) - 1})
    c = np.add.reduceat(cov, starts)
    o = np.add.reduceat(oth, starts)
    e = np.array([edges[s] for s in starts] + [edges[-2] * 10 ** (1 / SHOWN_PER_DECADE)], dtype=float)
    filled = np.flatnonzero(c + o)
    if filled.size == 0:
        return e[:2], np.zeros(1, np.int64), np.zeros(1, np.int64)
    lo, hi = int(filled[0]), int(filled[-1])
    return e[lo:hi + 2], c[lo:hi + 1], o[lo:hi + 1]


def label_figure(scores: Sequence[LabelScore], name: str, title: str) -> Figure:
    """One panel per label: the unit's non-zero activations, each bin's tokens split into those the label
    covers (coloured) and the rest (grey), stacked; the scores in the panel's title."""
    fig = NotebookFigure(figsize=(9, 3.8 * len(scores) + 0.8), layout="constrained")
    axes = fig.subplots(len(scores), 1, squeeze=False)[:, 0]
    for ax, s in zip(axes, scores):
        edges, cov, oth = display_bins(s)
        lows, highs = edges[:-1].copy(), edges[1:].copy()
        if lows[0] <= 0:  # (0, lowest edge) has no log width: drawn one bin wide
            lows[0] = highs[0] / 10 ** (1 / SHOWN_PER_DECADE)
        widths = highs - lows
        ax.bar(lows, oth, width=widths, align="edge", color="#b0b0b0", edgecolor="white", linewidth=0.4,
               label=f"other tokens ({int(oth.sum()):,})")
        ax.bar(lows, cov, bottom=oth, width=widths, align="edge", color="#d95f02", edgecolor="white", linewidth=0.4,
               label=f"tokens the label covers ({int(cov.sum()):,})")
        log_activation_axis(ax, lows, highs)  # as MI5_<id>_corpus.png
        ax.set_ylabel("tokens where it fires")
        ax.set_xlabel("activation (log scale; tokens where it is 0 not drawn; BOS and padding excluded)", fontsize=9)
        # Below the axis: a legend inside would cover the tallest bars.
        ax.legend(fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
        ax.grid(axis="y", alpha=0.3)
        heading = textwrap.shorten(f"label {s.label.describe()}", 110, placeholder=" …")
        ax.set_title(f"{heading}\nspecificity {_num(s.specificity)}, sensitivity {_num(s.sensitivity)}, "
                     f"AUROC {_num(s.auroc, 3)}", fontsize=9.5)
    fig.suptitle(f"#{name}: does the label explain it? ({scores[0].n_tokens:,} corpus tokens)\n{title}", fontsize=10.5)
    return fig


def label_csv_rows(scores: Sequence[LabelScore]) -> list[list]:
    rows = []
    for s in scores:
        edges, cov, oth = display_bins(s)
        rows += [[s.label.name, float(edges[b]), float(edges[b + 1]), int(cov[b]), int(oth[b])] for b in range(len(cov))]
    return rows


def write_label_files(out: OutputFolder, name: object, scores: Sequence[LabelScore], title: str,
                      ) -> tuple[bytes | None, list[Path]]:
    """MI5_<name>_label.png and .csv; returns the PNG's bytes (for the page) and the paths (none without scores)."""
    if not scores:
        return None, []
    from mechinterp.core.figures import png_bytes

    png = png_bytes(label_figure(scores, str(name), title), dpi=120)
    png_name = LABEL_PNG.format(feature=name)
    with out.staged(png_name) as tmp:
        tmp.write_bytes(png)
    csv_path = out.write_csv(LABEL_CSV.format(feature=name), ["label", "bin_low", "bin_high", "label_tokens",
                                                              "other_tokens"], label_csv_rows(scores))
    return png, [out / png_name, csv_path]


def label_html(scores: Sequence[LabelScore], png: bytes | None) -> str:
    """The card page's section: the scores with intervals and chance, the figure, and the examples."""
    if not scores:
        return ""
    import base64

    esc = html.escape
    parts = ["<h2>Does the label explain it?</h2>",
             "<p class=\"sub\">Over the corpus, BOS and padding excluded; 95% bootstrap intervals over documents; "
             "random lists: median [5th-95th percentile] of word lists of the label's corpus frequency.</p>"]
    for s in scores:
        rows = "".join(f"<tr><td>{k}</td><td>{esc(v)}</td></tr>" for k, v in (
            ("specificity", _num(s.specificity) + _ci(s, "specificity") + _chance(s, "specificity")),
            ("sensitivity", _num(s.sensitivity) + _ci(s, "sensitivity") + _chance(s, "sensitivity")
             + f" ({s.n_occurrences_fired:,} of {s.n_occurrences:,} occurrences)"),
            ("activation on the occurrences (quartiles)", ", ".join(f"{q:.3g}" for q in s.occurrence_quartiles)),
            ("AUROC", _num(s.auroc, 3) + _ci(s, "auroc", 3) + _chance(s, "auroc", 3)
             + (f" (binned: within ±{s.auroc_tie_bound:.2g} of the exact value)" if s.auroc_tie_bound
                else " (binned, and exact here)")),
            ("firings above each quartile on the label",
             ", ".join(f"≥{t:.3g}: {_num(v)}" for t, v in s.above))))
        off = "".join(f"<li>{esc(x.text)} ({x.activation:.3g})</li>" for x in s.off_label) or "<li>none</li>"
        silent = "".join(f"<li>{esc(x.text)} ({x.activation:.3g})</li>" for x in s.silent) or "<li>none</li>"
        parts += [f"<h3>{esc(s.label.describe())}</h3>", f"<table class=\"stats\">{rows}</table>",
                  f"<p><b>Top firings off the label</b></p><ul>{off}</ul>",
                  f"<p><b>Label occurrences where it is weakest</b></p><ul>{silent}</ul>"]
    if png is not None:
        parts.append(f'<img alt="label figure" style="max-width:100%" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode("ascii")}">')
    return "\n".join(parts)


def summary_values(scores: Sequence[LabelScore]) -> list:
    """The summary table's label columns (:data:`SUMMARY_COLUMNS`) for a card: its first label's scores."""
    if not scores:
        return [""] * len(SUMMARY_COLUMNS)
    s = scores[0]
    lo, hi = s.ci.get("auroc", (float("nan"), float("nan")))
    chance = s.baseline.get("auroc", (float("nan"),) * 3)[0]

    def r(x: float) -> float | str:
        return "" if not math.isfinite(x) else round(float(x), 4)

    return [s.label.name, r(s.specificity), r(s.sensitivity), r(s.auroc), r(lo), r(hi), r(chance)]


def index_text(scores: Sequence[dict]) -> str:
    """index.html's cell: the first label's scores, from the card's JSON."""
    if not scores:
        return ""
    s = scores[0]
    return (f"{s['label']['name']}: spec {_num(s['specificity'])}, sens {_num(s['sensitivity'])}, "
            f"AUROC {_num(s['auroc'], 3)}")
