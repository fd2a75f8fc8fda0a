"""Chapter 1's flags: which of a text's top features are not word features, and how that was decided.

A feature at the top of Chapter 1's table reads as "a feature for the word it peaks on". Three kinds
are not, and a learner cannot tell them apart from the table alone:

* **positional**: it fires at one absolute position whatever the token there (GPT-2's SAEs have such
  features). Decided on a short reference set of ordinary text, the baseline prompts, encoded once
  through the activation cache (:func:`mechinterp.core.pipeline.summarise_prompts`): in enough
  reference texts most of its peaks sit at one position, on varied tokens. The tokens must vary
  because templated prompts put the same word at the same place, and a word feature then peaks there too.
* **BOS**: it fires on the beginning-of-sequence token of the text being investigated; the
  statistics leave BOS out, so such a feature's activation elsewhere is a leftover of a BOS feature.
* **dense**: its sparsity file says it fires on more than ``DENSE_THRESHOLD`` of training tokens
  (:attr:`TopFeature.dense`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mechinterp.core.loading import Loaded
from mechinterp.core.pipeline import EncodeOptions, summarise_prompts
from mechinterp.core.positions import model_position
from mechinterp.core.progress import Log, silent
from mechinterp.core.prompts import PROMPT_SUFFIX, read_prompt_file
from mechinterp.core.source import Source, resolve_prompt_folder
from mechinterp.core.summaries import PromptAggregates
from mechinterp.investigate.text_features import TextFeatures

REFERENCE_GROUP = "baseline"  # the prompt file of ordinary text the positional rule reads
# A feature is positional when it fires in at least this many reference texts ...
POSITIONAL_MIN_TEXTS = 5
# ... and at least this share of its peaks there sit at one absolute position ...
POSITIONAL_SHARE = 0.6
# ... on varied tokens: no one token takes more than this share of those peaks (else it is a word that
# templated prompts put at the same place).
POSITIONAL_MAX_TOKEN_SHARE = 0.5

# The marker each flag puts after a feature id, in the terminal table and on MI1's rows.
MARKERS = {"positional": "◆", "BOS": "●", "dense": "▲"}


@dataclass
class ReferenceFlags:
    """What the reference set says about the top features.

    Attributes:
        positional: feature -> the model position (BOS = 0) where it fires in the reference texts.
        n_texts: reference texts encoded (0 when the reference prompt file is missing).
        path: the reference prompt file.
    """

    positional: dict[int, int] = field(default_factory=dict)
    n_texts: int = 0
    path: Path | None = None

    def to_dict(self) -> dict:
        return {"reference": str(self.path), "n_reference_texts": self.n_texts,
                "positional": {str(f): p for f, p in self.positional.items()}}


def reference_texts(path: Path) -> list[str]:
    """The reference prompts, each followed by the next one (the last by the first).

    Joined in pairs so that the texts reach positions twice as far as one short prompt does, while
    staying ordinary text; as many texts as prompts.
    """
    prompts = read_prompt_file(path)
    return [f"{a} {b}" for a, b in zip(prompts, prompts[1:] + prompts[:1])] if len(prompts) > 1 else prompts


def positional_features(agg: PromptAggregates, features: list[int], n_skip: int) -> dict[int, int]:
    """Which of ``features`` are positional in ``agg`` (the rule in the module docstring).

    Returns:
        feature -> the model position (BOS = 0) holding most of its peaks.
    """
    if not features or not agg.rows:
        return {}
    peaks = agg.peaks(range(len(agg.rows)), np.asarray(features))  # [n_texts, n_features], -1 = silent
    out = {}
    for col, feature in enumerate(features):
        fired = np.flatnonzero(peaks[:, col] >= 0)
        if len(fired) < POSITIONAL_MIN_TEXTS:
            continue
        where = Counter(int(peaks[r, col]) for r in fired)
        position, count = where.most_common(1)[0]
        if count / len(fired) < POSITIONAL_SHARE:
            continue
        tokens = Counter(int(agg.rows[r].tokens[position]) for r in fired if peaks[r, col] == position)
        if tokens.most_common(1)[0][1] / count <= POSITIONAL_MAX_TOKEN_SHARE:
            out[feature] = model_position(position, n_skip)
    return out


def reference_flags(source: Source, loaded: Loaded, result: TextFeatures, demo: bool,
                    log: Log = silent) -> ReferenceFlags:
    """Encode the reference set (through the activation cache) and find the positional top features.

    Args:
        loaded: the model and SAE of ``source``, already loaded (reused for what the cache misses).
        demo: read the demo world's reference prompts instead of the shipped ones.
    """
    path = resolve_prompt_folder(None, demo) / f"{REFERENCE_GROUP}{PROMPT_SUFFIX}"
    if not path.is_file():
        return ReferenceFlags(path=path)
    texts = reference_texts(path)
    summaries = summarise_prompts(source, texts, ["reference"] * len(texts), EncodeOptions(quiet=True),
                                  log, loaded=loaded)
    return ReferenceFlags(positional_features(summaries.aggregates, result.features, result.n_skip),
                          len(texts), path)


def apply_flags(result: TextFeatures, reference: ReferenceFlags) -> None:
    """Put "positional" first in the flags of the rows the reference set found positional
    (:func:`~mechinterp.investigate.text_features.top_features` already set "BOS" and "dense")."""
    for row in result.rows:
        if row.feature in reference.positional and "positional" not in row.flags:
            row.flags.insert(0, "positional")


def marker(flags: list[str]) -> str:
    """``" ◆▲"``: the markers of ``flags``, after a space ("" for a word feature)."""
    return f" {''.join(MARKERS[f] for f in flags)}" if flags else ""
