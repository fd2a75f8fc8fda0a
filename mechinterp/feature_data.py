"""Which features to look at, and their activations over many texts (Chapters 3, 4 and 6).

Choosing: feature ids from the command line, a Chapter 2 ``feature_stats.csv`` or the demo's planted
features, validated against the SAE. Collecting: the per-token activations of those few features over
every text, stored compactly so that top examples, firing rates, typical maxima and histograms all
come from one pass.

The BOS position(s) and padding are excluded from every statistic here (firing rates, top examples,
typical maximum activation): GPT-2's BOS residual has a huge norm and lights up the same features in
every prompt.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mechinterp.encoding import Tokenized, encode_positions, for_each_batch, tokenize
from mechinterp.errors import UserError
from mechinterp.loading import Loaded

# Columns a Chapter 2 feature_stats.csv must have for --from-results (it has more; these are the ones used).
RESULTS_COLUMNS = ("group", "feature", "rank")
# Tokens shown on each side of the peak when an example is long (corpus documents can be 1024 tokens).
EXAMPLE_WINDOW = 40

# --- choosing and validating features -----------------------------------------------------------------


def validate_features(features: Sequence[int], d_sae: int) -> list[int]:
    """Check every id is a feature of this SAE; returns the ids with duplicates removed (order kept).

    Raises:
        UserError: naming the bad id and the valid range ``0..d_sae-1``.
    """
    for f in features:
        if not 0 <= int(f) < d_sae:
            raise UserError(
                f"feature {f} does not exist: this SAE has {d_sae} features, so ids run from 0 to {d_sae - 1}"
            )
    return list(dict.fromkeys(int(f) for f in features))


@dataclass
class ResultsPick:
    """One feature chosen from a Chapter 2 results table."""

    feature: int
    group: str
    rank: int


@dataclass
class FeatureChoice:
    """Which features a Chapter 3/4 run looks at, and where each came from."""

    features: list[int]
    groups: dict[int, str]  # feature -> its Chapter 2 group, or the demo concept it was planted for
    ranks: dict[int, int]  # feature -> its rank in that group (features from --from-results only)
    how: str  # one line for the output: how the features were chosen


def choose_features(
    given: Sequence[int], from_results: Path | None, top_n: int, demo: bool, d_sae: int
) -> FeatureChoice:
    """``--feature`` ids, plus the top ``top_n`` per group of a Chapter 2 CSV, else the demo's planted ones."""
    features, groups, ranks = list(given), {}, {}
    how = "given with --feature"
    if from_results is not None:
        for pick in read_results_csv(from_results, top_n):
            if pick.feature not in features:
                features.append(pick.feature)
            groups.setdefault(pick.feature, pick.group)
            ranks.setdefault(pick.feature, pick.rank)
        how = f"top {top_n} per group of {from_results}" + (" plus --feature" if given else "")
    if not features and demo:
        from mechinterp.toyworld import planted_features

        planted = planted_features().concept
        features, groups = list(planted.values()), {f: c for c, f in planted.items()}
        how = "the demo's planted concept features (no --feature given)"
    if not features:
        raise UserError("no feature given: pass --feature ID (repeatable) or --from-results feature_stats.csv")
    return FeatureChoice(validate_features(features, d_sae), groups, ranks, how)


def read_results_csv(path: Path, top_n: int) -> list[ResultsPick]:
    """The top ``top_n`` features of each group in a Chapter 2 ``feature_stats.csv``.

    ``rank`` 1 is the strongest feature within its group. A feature that tops several groups is
    listed once, under the first group in which it appears (groups in file order). Rows without a
    rank (Chapter 2's always-on features) are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--from-results {path} does not exist; run Chapter 2 first or give --feature ID")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"--from-results {path} is not a readable CSV ({err})") from None
    missing = [c for c in RESULTS_COLUMNS if c not in columns]
    if missing:
        raise UserError(
            f"--from-results {path} lacks the column(s) {', '.join(missing)}; expected Chapter 2's "
            f"feature_stats.csv (columns group, feature, rank, ...)"
        )
    picks: list[ResultsPick] = []
    seen: set[int] = set()
    for line, row in enumerate(rows, start=2):
        if not (row.get("rank") or "").strip():
            continue  # not ranked (Chapter 2 leaves always-on features unranked)
        try:
            feature, rank = int(row["feature"]), int(row["rank"])
        except (TypeError, ValueError):
            raise UserError(f"{path} line {line}: feature and rank must be whole numbers") from None
        if rank <= top_n and feature not in seen:
            seen.add(feature)
            picks.append(ResultsPick(feature, row["group"], rank))
    if not picks:
        raise UserError(f"--from-results {path} has no rows with rank <= {top_n}")
    group_order = list(dict.fromkeys(r["group"] for r in rows))
    picks.sort(key=lambda p: (group_order.index(p.group), p.rank))
    return picks


# --- activations of a few features over many texts ---------------------------------------------------


@dataclass
class FeatureActivations:
    """Per-token activations of a few features over a list of texts (BOS and padding already removed)."""

    features: list[int]
    texts: list[str]
    sources: list[str]  # the group of each text, or "corpus"
    token_ids: list[list[int]]  # each text's own tokens (no BOS)
    acts: list[np.ndarray]  # per text: float32 [n_text_tokens, n_features]
    n_skip: int  # BOS positions removed from the front of every text
    truncated: list[int] = field(default_factory=list)  # texts cut to the SAE's (or model's) context

    def column(self, feature: int) -> int:
        return self.features.index(feature)

    def prompt_max(self, feature: int) -> np.ndarray:
        """``[n_texts]`` each text's maximum activation of ``feature`` over its tokens."""
        j = self.column(feature)
        return np.array([a[:, j].max() if len(a) else 0.0 for a in self.acts], dtype=np.float32)

    def token_values(self, feature: int, source: str | None = None) -> np.ndarray:
        """All per-token activations of ``feature`` (optionally of one source), zeros included."""
        j = self.column(feature)
        parts = [a[:, j] for a, s in zip(self.acts, self.sources) if source is None or s == source]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def firing(self, feature: int, source: str | None = None) -> tuple[int, int]:
        """``(tokens where the feature fires, tokens)`` over the texts (of ``source``)."""
        values = self.token_values(feature, source)
        return int((values > 0).sum()), int(values.size)

    @property
    def source_names(self) -> list[str]:
        return list(dict.fromkeys(self.sources))


def collect_feature_activations(
    loaded: Loaded,
    texts: Sequence[str],
    sources: Sequence[str],
    features: Sequence[int],
    batch_size: int,
    tokenized: Tokenized | None = None,
) -> FeatureActivations:
    """Encode ``texts`` and keep the activations of ``features`` only, at the texts' own tokens.

    The SAE encodes every feature at once (its encoder is one matrix product, and TopK/JumpReLU SAEs
    cannot compute one feature alone), so ``[text tokens of one batch, d_sae]`` exists for one batch at a
    time; BOS and padding never reach the encoder. A batch too large for memory is halved once.
    """
    tokenized = tokenized or tokenize(loaded, texts)
    cols = torch.tensor(list(features), dtype=torch.long)
    acts: list[np.ndarray | None] = [None] * len(texts)

    def process(batch: list[int], tokens: torch.Tensor, valid: torch.Tensor) -> None:
        feats = encode_positions(loaded, tokens, valid)  # [n_valid, d_sae], row-major over the batch
        picked = feats[:, cols.to(feats.device)].float().cpu()  # [n_valid, n_features]
        del feats
        for i, part in zip(batch, torch.split(picked, valid.sum(1).tolist())):
            acts[i] = part.numpy()

    for_each_batch(tokenized, batch_size, process)
    return FeatureActivations(
        features=list(features),
        texts=list(texts),
        sources=list(sources),
        token_ids=[ids[tokenized.n_skip :] for ids in tokenized.ids],
        acts=[a if a is not None else np.zeros((0, len(features)), np.float32) for a in acts],
        n_skip=tokenized.n_skip,
        truncated=list(tokenized.truncated),
    )


def typical_max_activation(fa: FeatureActivations, feature: int) -> tuple[float, int]:
    """The feature's typical maximum activation: the median, over texts where it fires, of each text's max.

    A median of per-text maxima is robust to one outlier text and does not depend on how many texts
    the feature ignores, so "2x the typical max" means the same for a rare and a common feature.

    Returns:
        ``(value, number of texts where it fires)``; ``(0.0, 0)`` when it never fires.
    """
    maxes = fa.prompt_max(feature)
    fired = maxes[maxes > 0]
    return (float(np.median(fired)), int(fired.size)) if fired.size else (0.0, 0)


def filter_note(fa: FeatureActivations) -> str:
    """What was left out of every statistic, in words for the outputs."""
    note = (
        f"the first {fa.n_skip} position(s) of each text (BOS) and all padding are excluded from every number"
        if fa.n_skip
        else "padding is excluded from every number (this SAE uses no BOS)"
    )
    if fa.truncated:
        note += f"; {len(fa.truncated)} text(s) were cut to the context the SAE was trained on (or the model's, if smaller)"
    return note



def histogram_counts(fa: FeatureActivations, feature: int, bins: int = 30) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Histogram of the feature's non-zero per-token activations, one count array per source.

    Returns:
        ``(edges [bins + 1], {source: counts [bins]})``.
    """
    nonzero = {s: v[v > 0] for s in fa.source_names for v in [fa.token_values(feature, s)]}
    values = np.concatenate(list(nonzero.values())) if nonzero else np.zeros(0)
    top = float(values.max()) if values.size else 1.0
    edges = np.linspace(0.0, top * 1.0001 if top > 0 else 1.0, bins + 1)
    return edges, {s: np.histogram(v, bins=edges)[0] for s, v in nonzero.items()}

