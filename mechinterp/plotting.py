"""Figures for every chapter, built with ``matplotlib.figure.Figure`` (no pyplot, no GUI, no show()).

Every function takes the numbers and a path, writes one PNG, and returns the path; the caller saves
the numbers behind the figure beside it. Titles name the model, SAE and hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from mechinterp.io import save_figure


def display_token(token: str) -> str:
    """Make whitespace and control characters visible in axis labels."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·") or "∅"


def _cmap_with_white_zero():
    return colormaps["magma_r"].with_extremes(under="white")


def token_heatmap(
    acts: np.ndarray,
    tokens: Sequence[str],
    features: Sequence[int],
    title: str,
    path: Path,
) -> Path:
    """Features x tokens heatmap (Chapter 1).

    Args:
        acts: ``[n_features, n_tokens]`` activations, one row per feature in ``features``.
        tokens: the text's tokens (BOS already removed), one per column.
        features: feature ids labelling the rows, strongest first.
    """
    n_feat, n_tok = acts.shape
    fig = Figure(figsize=(max(6.0, 0.42 * n_tok + 2.5), max(3.0, 0.32 * n_feat + 1.8)))
    ax = fig.subplots()
    vmax = float(acts.max()) if acts.size and acts.max() > 0 else 1.0
    # Exact zeros (the feature is off) are white, so sparsity is visible at a glance.
    image = ax.imshow(acts, aspect="auto", cmap=_cmap_with_white_zero(), vmin=1e-6, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(n_tok), [display_token(t) for t in tokens], rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(n_feat), [f"#{f}" for f in features], fontsize=9)
    ax.set_xlabel("token (BOS excluded; · marks a leading space)")
    ax.set_ylabel("feature (strongest first)")
    # Thin grid lines between cells make it easy to follow one token down the column.
    ax.set_xticks(np.arange(-0.5, n_tok, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_feat, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="SAE feature activation (white = 0, off)", fraction=0.04, pad=0.02)
    return save_figure(fig, path)
