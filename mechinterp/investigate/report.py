"""Chapter 1's report: :class:`TextFeatures` as terminal text, as tables (MI1.csv) and as the heatmap (MI1).

The analysis (:mod:`mechinterp.investigate.text_features`) returns numbers; this module only shows and
writes them, so a notebook can take the result object, the text or the figure alone.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mechinterp.core import constants
from mechinterp.core.figures import NotebookFigure, display_token, white_zero_cmap
from mechinterp.core.io import OutputFolder
from mechinterp.core.positions import BOS_ZERO, model_position
from mechinterp.core.tables import WIDTH, format_table, plural
from mechinterp.investigate.flags import (
    MARKERS,
    POSITIONAL_MIN_TEXTS,
    POSITIONAL_SHARE,
    ReferenceFlags,
    marker,
)
from mechinterp.investigate.text_features import DENSE_THRESHOLD, TextFeatures

# Columns per row of a token heatmap: at 0.42 inch a column and 150 dpi, 80 tokens make ~5,400 px, so a
# long text wraps onto further rows instead of becoming a 50,000-pixel-wide image.
MAX_TOKENS_PER_ROW = 80
# The wrapped rows stop at this height (5,400 px at 150 dpi, under the 6,000 px every figure keeps to):
# a 1,000-token text made a heatmap 12,500 px tall with 20 features. MI1_token_activations.csv has every token.
MAX_HEATMAP_INCHES = 36.0
MAX_FEATURES_IN_HEATMAP = 50  # rows of the heatmap (a feature each); MI1.csv lists every --top-k feature


def heatmap_extent(n_features: int, n_tokens: int) -> tuple[int, int]:
    """How much of a features x tokens heatmap :func:`token_heatmap` draws: ``(features, tokens)``.

    The strongest features up to :data:`MAX_FEATURES_IN_HEATMAP`, then the text's first tokens, as many
    rows of :data:`MAX_TOKENS_PER_ROW` as fit in :data:`MAX_HEATMAP_INCHES`.
    """
    n_feat = min(n_features, MAX_FEATURES_IN_HEATMAP)
    rows = max(1, int(MAX_HEATMAP_INCHES // _panel_height(n_feat)))
    return n_feat, min(n_tokens, rows * MAX_TOKENS_PER_ROW)


def _panel_height(n_features: int) -> float:
    """Inches of one row of the heatmap (one wrapped piece of the text)."""
    return max(3.0, 0.32 * n_features + 1.8)


def token_heatmap(
    acts: np.ndarray,
    tokens: Sequence[str],
    features: Sequence[int],
    title: str,
    n_skip: int = 1,
    flags: Sequence[list[str]] | None = None,
) -> Figure:
    """Features x tokens heatmap (Chapter 1); texts longer than ``MAX_TOKENS_PER_ROW`` wrap onto more rows.

    What does not fit (:func:`heatmap_extent`) is left out, the weakest features and the text's end,
    and the title says so.

    Args:
        acts: ``[n_features, n_tokens]`` activations, one row per feature in ``features``.
        tokens: the text's tokens (BOS already removed), one per column.
        features: feature ids labelling the rows, strongest first.
        n_skip: positions in front of the text (1 for BOS), so wrapped rows name their positions as
            every chapter does (BOS = 0).
        flags: per feature, what makes it not a word feature (``TopFeature.flags``): a marker after its
            id, and a legend line under the title.
    """
    flags = flags or [[] for _ in features]
    n_feat, n_tok = heatmap_extent(*acts.shape)
    total_feat, total_tok = acts.shape
    if (n_feat, n_tok) != acts.shape:
        title = f"{title}\n{_left_out(n_feat, total_feat, n_tok, total_tok)}"
        acts, features = acts[:n_feat, :n_tok], features[:n_feat]
    if legend := flag_legend([f for fl in flags[:n_feat] for f in fl]):
        title = f"{title}\n{legend}"
    chunks = [range(start, min(start + MAX_TOKENS_PER_ROW, n_tok)) for start in range(0, n_tok, MAX_TOKENS_PER_ROW)] or [range(0)]
    width = min(n_tok, MAX_TOKENS_PER_ROW)
    panel_height = _panel_height(n_feat)
    fig = NotebookFigure(figsize=(max(6.0, 0.42 * width + 2.5), panel_height * len(chunks)))
    axes = fig.subplots(len(chunks), 1, squeeze=False)[:, 0]
    vmax = float(acts.max()) if acts.size and acts.max() > 0 else 1.0
    for ax, cols in zip(axes, chunks):
        # Exact zeros (the feature is off) are white, so sparsity is visible at a glance.
        image = ax.imshow(acts[:, cols.start:cols.stop], aspect="auto", cmap=white_zero_cmap(), vmin=1e-6,
                          vmax=vmax, interpolation="nearest")
        n_cols = len(cols)
        if len(chunks) > 1:
            # Wrapped rows keep the same cell width, so a short last row does not stretch.
            ax.set_xlim(-0.5, MAX_TOKENS_PER_ROW - 0.5)
        ax.set_xticks(range(n_cols), [display_token(tokens[i]) for i in cols], rotation=60, ha="right", fontsize=9)
        ax.set_yticks(range(n_feat), [f"#{f}{marker(fl)}" for f, fl in zip(features, flags)], fontsize=9)
        ax.set_xlabel("token (BOS excluded; · marks a leading space)" if len(chunks) == 1 and n_tok == total_tok
                      else f"positions {model_position(cols.start, n_skip)}-{model_position(cols.stop - 1, n_skip)} "
                           f"({BOS_ZERO}, excluded) of the text's {total_tok:,} tokens; · marks a leading space")
        ax.set_ylabel("feature (strongest first)")
        # Thin grid lines between cells make it easy to follow one token down the column.
        ax.set_xticks(np.arange(-0.5, n_cols, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, n_feat, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
    axes[0].set_title(title, fontsize=10)
    if len(chunks) > 1:
        fig.subplots_adjust(hspace=0.6)  # room for each row's rotated token labels
    fig.colorbar(image, ax=list(axes) if len(chunks) > 1 else axes[0], label="SAE feature activation (white = 0, off)",
                 fraction=0.04 / len(chunks), pad=0.02)
    return fig


# What each flag means, in the heatmap's legend line.
FLAG_MEANINGS = {"positional": "positional: fires at one position, whatever the token",
                 "BOS": "fires on BOS", "dense": f"dense: fires on over {100 * DENSE_THRESHOLD:.0f}% of tokens"}


def flag_legend(flags: Sequence[str]) -> str:
    """``"not word features: ◆ positional: ... · ▲ dense: ..."`` for the flags present ("" when none)."""
    present = [f for f in MARKERS if f in flags]
    if not present:
        return ""
    return "not word features: " + " · ".join(f"{MARKERS[f]} {FLAG_MEANINGS[f]}" for f in present)


def _left_out(n_feat: int, total_feat: int, n_tok: int, total_tok: int) -> str:
    """The heatmap title's line on what it leaves out (every cell is in MI1_token_activations.csv)."""
    drawn = []
    if n_feat < total_feat:
        drawn.append(f"the top {n_feat} of {total_feat} features")
    if n_tok < total_tok:
        drawn.append(f"the first {n_tok:,} of {total_tok:,} tokens")
    return f"drawn: {' and '.join(drawn)}, to keep the figure readable (every cell is in {constants.MI1_TOKENS_CSV})"


def density_text(density: float | None) -> str:
    """A density as a percentage; sparsity files floor never-seen features at about 1e-10, shown as "<0.0001%"."""
    if density is None:
        return "-"
    return "<0.0001%" if density < 1e-6 else f"{100 * density:.3g}%"


def _wrap(text: str) -> str:
    # As mechinterp.core.tables.print_wrapped prints prose: WIDTH columns, continuation lines indented.
    return textwrap.fill(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False)


def feature_table(result: TextFeatures) -> str:
    """The top features as an aligned table; ◆ ● ▲ mark positional, BOS and dense features."""
    return format_table(
        ["rank", "feature", "max act", "peak token", "pos", "density", "neuronpedia"],
        [[r.rank, f"{r.feature}{marker(r.flags)}", f"{r.max_activation:.3f}", repr(r.peak_token),
          r.peak_position, density_text(r.density), r.neuronpedia_url or "-"]
         for r in result.rows],
    )


def results_text(result: TextFeatures, title: str, text: str, top_k: int,
                 reference: ReferenceFlags | None = None) -> str:
    """What Chapter 1 prints: the run's title, the text, the table, what its density column and flags mean.

    Args:
        title: names the model, SAE and hook (``Loaded.title``).
        text: the text that was encoded.
        top_k: the number of features asked for (the table says so when fewer fire).
        reference: how positional features were decided (None: they were not).
    """
    k = len(result.rows)
    lines = ["", title, _wrap(f"Text ({len(result.tokens)} tokens, BOS excluded from every number): {text!r}")]
    if result.truncation:
        lines.append(_wrap(f"Note: {result.truncation}."))
    lines += [_wrap(f"{result.n_fired} of {result.d_sae} features fire on at least one token; top {k} by max "
                    "activation:"), "", feature_table(result)]
    pos = f"pos = position in the model's token sequence ({BOS_ZERO}), as in every chapter."
    if result.has_density:
        n_dense = sum(r.dense for r in result.rows)
        lines.append(_wrap(f"density = share of the SAE's training tokens on which the feature fires (its sparsity "
                           f"file). ▲ = dense (over {100 * DENSE_THRESHOLD:.0f}%): it fires on almost any text, so "
                           f"its rank and peak token say little about this one ({n_dense} of {k} here). {pos}"))
    else:
        lines.append(_wrap(f"density: this SAE ships no sparsity file, so dense features cannot be marked. {pos}"))
    lines.append(_wrap(flags_note(result, reference)))
    if k < top_k:
        fire = "fires" if k == 1 else "fire"
        lines += ["", f"(only {plural(k, 'feature')} {fire} on this text, fewer than --top-k {top_k})"]
    return "\n".join(lines)


def flags_note(result: TextFeatures, reference: ReferenceFlags | None) -> str:
    """One line on the positional and BOS flags: how they were decided, on how many reference texts."""
    def count(flag: str) -> str:
        return f"{sum(flag in r.flags for r in result.rows)} of {len(result.rows)} here"

    bos = f"{MARKERS['BOS']} BOS = fires on this text's BOS token ({count('BOS')})"
    if reference is None or not reference.n_texts:
        where = f" ({reference.path} is missing)" if reference is not None else ""
        return f"Not word features: positional features were not looked for{where}; {bos}."
    return (f"Not word features: {MARKERS['positional']} positional = in {reference.n_texts} reference texts "
            f"({reference.path.parent.name}/{reference.path.name}, each prompt followed by the next) it fired in "
            f">= {POSITIONAL_MIN_TEXTS} and >= {100 * POSITIONAL_SHARE:.0f}% of its peaks sat at one position, "
            f"on varied tokens: its peak token here is whatever sits there ({count('positional')}); {bos}.")


def write_outputs(out: OutputFolder, result: TextFeatures, title: str) -> list[Path]:
    """MI1.png (the heatmap), MI1.csv (the table behind it) and MI1_token_activations.csv (every cell).

    MI1.csv's ``flag`` column names what makes a feature not a word feature ("positional", "BOS",
    "dense", joined by ";"), empty for the rest.
    """
    fig = token_heatmap(result.heat, result.tokens, result.features,
                        f"Top {len(result.rows)} SAE features by max activation\n{title}", result.n_skip,
                        [r.flags for r in result.rows])
    png = out.save_figure(fig, constants.MI1_PNG)
    csv_path = out.write_csv(
        constants.MI1_CSV,
        ["rank", "feature", "max_activation", "peak_token", "peak_position", "neuronpedia_url", "density", "dense",
         "flag"],
        [r.row() for r in result.rows],
    )
    tokens_csv = out.write_csv(
        constants.MI1_TOKENS_CSV,
        ["feature", "position", "token", "activation"],
        [
            [f, model_position(i, result.n_skip), result.tokens[i], float(result.heat[row, i])]
            for row, f in enumerate(result.features)
            for i in range(len(result.tokens))  # i indexes the text's tokens; the column is the model's position
        ],
    )
    return [png, csv_path, tokens_csv]
