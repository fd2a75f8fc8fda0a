"""Chapter 1's figure: the features x tokens heatmap (MI1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from mechinterp.core.figures import NotebookFigure, display_token, white_zero_cmap

# Columns per row of a token heatmap: at 0.42 inch a column and 150 dpi, 80 tokens make ~5,400 px, so a
# long text wraps onto further rows instead of becoming a 50,000-pixel-wide image.
MAX_TOKENS_PER_ROW = 80


def token_heatmap(
    acts: np.ndarray,
    tokens: Sequence[str],
    features: Sequence[int],
    title: str,
) -> Figure:
    """Features x tokens heatmap (Chapter 1); texts longer than ``MAX_TOKENS_PER_ROW`` wrap onto more rows.

    Args:
        acts: ``[n_features, n_tokens]`` activations, one row per feature in ``features``.
        tokens: the text's tokens (BOS already removed), one per column.
        features: feature ids labelling the rows, strongest first.
    """
    n_feat, n_tok = acts.shape
    chunks = [range(start, min(start + MAX_TOKENS_PER_ROW, n_tok)) for start in range(0, n_tok, MAX_TOKENS_PER_ROW)] or [range(0)]
    width = min(n_tok, MAX_TOKENS_PER_ROW)
    panel_height = max(3.0, 0.32 * n_feat + 1.8)
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
        ax.set_yticks(range(n_feat), [f"#{f}" for f in features], fontsize=9)
        ax.set_xlabel("token (BOS excluded; · marks a leading space)" if len(chunks) == 1
                      else f"tokens {cols.start + 1}-{cols.stop} of {n_tok} (BOS excluded; · marks a leading space)")
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
