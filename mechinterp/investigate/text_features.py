"""Chapter 1's computation: the top SAE features of one text, with their peak tokens.

Kept apart from the script so a notebook gets the same numbers as a typed object::

    result = top_features(loaded, "I was thrilled ...", top_k=20)
    result                      # TextFeatures(19 tokens, 90 of 24576 features fire; top: #501 ...)
    result.top(3)[0].feature, result.top(3)[0].peak_token

The chapter's options (:class:`TextOptions`) are defined here once; ``mechinterp.cli`` makes the
``--text`` and ``--top-k`` flags from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mechinterp.core.encoding import encode_tokens, tokenize, truncation_note, warn_truncated
from mechinterp.core.errors import UserError
from mechinterp.core.loading import Loaded, neuronpedia_url
from mechinterp.core.options import option, positive_int
from mechinterp.core.positions import model_position
from mechinterp.core.source import demo_threads
from mechinterp.core.tokens import decode_tokens

# A feature active on more than this share of the SAE's training tokens is "dense": it fires on nearly
# any text, so its appearance at the top of a table, and its peak token, say little about this text.
DENSE_THRESHOLD = 0.1
# The tutorial's sentence: one happy and one angry word, so two concept features should top the list.
DEFAULT_TEXT = "I was thrilled when the package finally arrived, but furious that the box was crushed."
REPR_ROWS = 3  # features a TextFeatures repr names


@dataclass
class TextOptions:
    """Which text Chapter 1 encodes, and how many of its features it shows (validated on creation)."""

    text: str = option(DEFAULT_TEXT, "the text to encode (default: a sentence with a happy and an angry word)")
    top_k: int = option(20, "how many features to show (default: %(default)s)", type=positive_int)

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise UserError("--text is empty; give some words to encode")
        try:
            self.text.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 reach Python as lone surrogates
            raise UserError("--text is not valid UTF-8; save or type the text as UTF-8") from None
        if self.top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {self.top_k}")


@dataclass
class TopFeature:
    """One row of Chapter 1's table."""

    rank: int
    feature: int
    max_activation: float
    peak_token: str
    peak_position: int  # in the model's token sequence, BOS = 0, as every chapter shows positions
    neuronpedia_url: str  # "" when the SAE is not on Neuronpedia
    density: float | None = None  # share of training tokens it fires on (the SAE's sparsity file), if shipped
    # What makes it not a word feature: "positional" (set by mechinterp.investigate.flags), "BOS" (fires on
    # the text's BOS token), "dense" (see the property).
    flags: list[str] = field(default_factory=list)

    @property
    def dense(self) -> bool:
        return self.density is not None and self.density > DENSE_THRESHOLD

    def row(self) -> list:
        return [self.rank, self.feature, self.max_activation, self.peak_token, self.peak_position,
                self.neuronpedia_url, "" if self.density is None else self.density, "yes" if self.dense else "no",
                ";".join(self.flags)]

    def short(self) -> str:
        """``#501 4.21 on ' thrilled'``: the feature, its max activation and where it peaks."""
        return f"#{self.feature} {self.max_activation:.2f} on {self.peak_token!r}"

    def __repr__(self) -> str:
        density = "" if self.density is None else f", density {100 * self.density:.3g}%{' (dense)' if self.dense else ''}"
        return f"TopFeature(rank {self.rank}: {self.short()} at position {self.peak_position}{density})"


@dataclass
class TextFeatures:
    """The top features of a text.

    Attributes:
        tokens: the text's tokens as strings (BOS excluded).
        n_skip: positions before the text (1 for BOS, else 0); token i is at model position i + n_skip.
        rows: the top features, strongest first.
        heat: ``[k, n_tokens]`` activations of the top features on every text token.
        n_fired: features that fire on at least one text token.
        d_sae: the SAE's width.
        truncation: "" or, for a text longer than the SAE's training context, how it was cut.
    """

    tokens: list[str]
    n_skip: int
    rows: list[TopFeature]
    heat: np.ndarray
    n_fired: int
    d_sae: int
    truncation: str = ""

    @property
    def features(self) -> list[int]:
        return [r.feature for r in self.rows]

    @property
    def has_density(self) -> bool:
        return any(r.density is not None for r in self.rows)

    def top(self, k: int) -> list[TopFeature]:
        """The ``k`` strongest features (fewer when fewer fire)."""
        return self.rows[:k]

    def __repr__(self) -> str:
        shown = ", ".join(r.short() for r in self.top(REPR_ROWS))
        more = f" (+{len(self.rows) - REPR_ROWS} more)" if len(self.rows) > REPR_ROWS else ""
        cut = "; truncated" if self.truncation else ""
        return (f"TextFeatures({len(self.tokens)} tokens, {self.n_fired} of {self.d_sae} features fire; "
                f"top: {shown or 'none'}{more}{cut})")


def top_features(loaded: Loaded, text: str, top_k: int) -> TextFeatures:
    """Encode ``text`` and rank features by their max activation over its tokens (BOS excluded)."""
    tokenized = tokenize(loaded, [text])
    warn_truncated([text], tokenized, int(loaded.model.cfg.n_ctx))
    ids = tokenized.ids[0]
    with demo_threads(loaded.is_demo):
        acts = encode_tokens(loaded, torch.tensor([ids]))[0]
    # The BOS position is dropped here, once: every number below is over the text's own tokens.
    skip = tokenized.n_skip
    text_acts = acts[skip:].float().cpu().numpy()  # [n_tokens, d_sae]
    str_tokens = decode_tokens(loaded.model.tokenizer, ids[skip:])  # whole characters, never '�'

    max_acts = text_acts.max(axis=0)
    n_fired = int((max_acts > 0).sum())
    k = min(top_k, n_fired)
    # Stable sort on -max gives a deterministic order for ties (lower feature id first).
    top = np.argsort(-max_acts, kind="stable")[:k]
    log_sparsity = loaded.sae.log_sparsity
    # BOS is read only to flag the features that fire on it (a BOS feature's leftovers); no number uses it.
    at_bos = acts[0].float().cpu().numpy() if skip else np.zeros(text_acts.shape[1], dtype=np.float32)
    rows = []
    for rank, feature in enumerate(top, start=1):
        peak = int(text_acts[:, feature].argmax())
        density = float(10 ** float(log_sparsity[feature])) if log_sparsity is not None else None
        row = TopFeature(rank, int(feature), float(max_acts[feature]), str_tokens[peak], model_position(peak, skip),
                         neuronpedia_url(loaded.sae.neuronpedia_id, int(feature)), density)
        row.flags = [name for name, on in (("BOS", at_bos[feature] > 0), ("dense", row.dense)) if on]
        rows.append(row)
    truncation = f"the text {truncation_note(tokenized, 0)}" if tokenized.truncated else ""
    return TextFeatures(str_tokens, skip, rows, text_acts[:, top].T, n_fired, loaded.sae.d_sae, truncation)
