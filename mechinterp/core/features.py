"""Which features to look at, and their activations over many texts (Chapters 3, 4 and 6).

Choosing: feature ids from the command line, a Chapter 2 ``feature_stats.csv`` or the demo's planted
features, validated against the SAE. Collecting: the per-token activations of those few features over
every text, stored compactly so that top examples, firing rates, typical maxima and histograms all
come from one pass.

Families: an SAE often splits one concept across several features, each firing on part of the
concept's words; Chapter 2 marks such a group as a family (its ``family`` column, e.g. ``12+345``, and
the verdict ``concept (split)``). Chapters 3 and 4 can look at a family as one: here a family is the
tuple of its member ids, ascending, and :func:`family_activations` gives its activation per token.

The BOS position(s) and padding are excluded from every statistic here (firing rates, top examples,
typical maximum activation): GPT-2's BOS residual has a huge norm and lights up the same features in
every prompt.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mechinterp.core.encoding import Tokenized, encode_positions, for_each_batch, tokenize
from mechinterp.core.errors import UserError
from mechinterp.core.loading import Loaded
from mechinterp.core.options import option, positive_int
from mechinterp.core.provenance import PROVENANCE_COLUMNS, Provenance
from mechinterp.core.toyworld import planted_features

# Columns a Chapter 2 feature_stats.csv must have for --from-results (it has more; these are the ones used).
RESULTS_COLUMNS = ("group", "feature", "rank")
# Chapter 2's verdicts that the --from-results gate takes: one feature carries the concept, or the SAE
# split the concept across a family of features (each member then carries part of its words).
CONCEPT_VERDICTS = ("concept", "concept (split)")
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


# --- feature families -------------------------------------------------------------------------------------


def parse_family(text: str) -> tuple[int, ...]:
    """A family's member ids from ``"12+345"`` (``"#12+#345"`` too, as the outputs label it): ascending.

    Raises:
        ValueError: not ids joined by '+', or fewer than two different ids (a family of one is a feature).
    """
    try:
        ids = {int(part.strip().lstrip("#")) for part in str(text).split("+")}
    except ValueError:
        raise ValueError(f"expected feature ids joined by '+', e.g. 12+345, got {text!r}") from None
    if len(ids) < 2:
        raise ValueError(f"a family has at least two different features, got {text!r}")
    return tuple(sorted(ids))


def family_ids(text: str) -> tuple[int, ...]:
    """argparse type of ``--family``: :func:`parse_family`, its complaint as argparse's usage error."""
    try:
        return parse_family(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def name_of(what: int | Sequence[int]) -> str:
    """How file names and tables name a feature or a family: ``"501"``, ``"409+501"`` (Chapter 2's form)."""
    return str(what) if isinstance(what, int) else "+".join(str(m) for m in what)


def label_of(what: int | Sequence[int]) -> str:
    """How the outputs label a feature or a family: ``"#501"``, ``"#409+#501"``."""
    return f"#{what}" if isinstance(what, int) else "+".join(f"#{m}" for m in what)


@dataclass
class ResultsPick:
    """One feature chosen from a Chapter 2 results table, with the evidence it was chosen on."""

    feature: int
    group: str
    rank: int
    q_value: float | None = None
    replicated: str = ""  # "yes", "no" or "not tested"
    verdict: str = ""  # Chapter 2's verdict ("concept", "lexical", ...), "" when it has none
    family: tuple[int, ...] = ()  # the family it belongs to (Chapter 2's ``family`` column), () when none

    def describe(self) -> str:
        """E.g. "happy rank 1, q = 3.7e-08, replicated, verdict concept"."""
        parts = [f"{self.group} rank {self.rank}"]
        if self.q_value is not None:
            parts.append(f"q = {self.q_value:.2g}")
        if self.replicated:
            parts.append({"yes": "replicated", "no": "NOT replicated"}.get(self.replicated, "replication not tested"))
        if self.verdict:
            parts.append(f"verdict {self.verdict}")
        return ", ".join(parts)


@dataclass
class ResultsSelection:
    """What a significance-gated read of a Chapter 2 table picked, and what it passed over."""

    picks: list[ResultsPick]
    skipped: list[ResultsPick]  # ranked within top_n but not significant / not replicated / not "concept"
    gate: str  # the rule, in words

    def note(self) -> str:
        if not self.skipped:
            return f"all picks pass the gate ({self.gate})"
        names = ", ".join(f"#{p.feature} ({p.describe()})" for p in self.skipped[:6])
        more = f" and {len(self.skipped) - 6} more" if len(self.skipped) > 6 else ""
        one = len(self.skipped) == 1
        return (f"skipped {len(self.skipped)} feature{'' if one else 's'} that {'fails' if one else 'fail'} the gate "
                f"({self.gate}): {names}{more}; --include-nonsignificant takes them anyway")


@dataclass
class FeatureSelection:
    """Which features to look at (the "which features" flags of Chapters 3, 4 and 6).

    The chapters differ only in the verb of ``--feature``'s help and in ``--top-n``'s default, which they
    pass to ``cli.add_options``.
    """

    feature: list[int] = option(
        help="a feature to look at; repeat for several (with --demo and no ids: the planted features)",
        default_factory=list, type=int, action="append", metavar="ID")
    from_results: Path | None = option(
        None, "look at the top features of each group in a Chapter 2 feature_stats.csv", type=Path, metavar="CSV")
    top_n: int = option(3, "with --from-results: how many features per group (rank 1 = strongest)", type=positive_int)
    include_nonsignificant: bool = option(
        False, "with --from-results: also take features that are not significant, not replicated or not judged "
        "'concept' (by default they are skipped, and the output says which)")


@dataclass
class FamilySelection:
    """Which feature families to look at as one (the ``--family`` flag of Chapters 3 and 4).

    A chapter that can look at families adds this beside :class:`FeatureSelection`; with ``--from-results``
    the families of Chapter 2's table (its ``family`` column) are looked at as one there too.
    """

    family: list[tuple[int, ...]] = option(
        help="a feature family to look at as one: its member ids joined by '+', e.g. 12+345 (Chapter 2's family "
        "column); repeat for several", default_factory=list, type=family_ids, action="append", metavar="ID+ID")


@dataclass
class FeatureChoice:
    """Which features (and feature families) a Chapter 3/4 run looks at, and where each came from.

    A family is the tuple of its member ids; ``groups`` and :meth:`origin` take a feature or a family.
    """

    features: list[int]
    groups: dict[int | tuple[int, ...], str]  # feature (or family) -> its Chapter 2 group, or its demo concept
    ranks: dict[int, int]  # feature -> its rank in that group (features from --from-results only)
    how: str  # one line for the output: how the features were chosen
    picks: dict[int, ResultsPick] = field(default_factory=dict)  # feature -> its Chapter 2 row
    note: str = ""  # what the significance gate skipped, for the output
    families: list[tuple[int, ...]] = field(default_factory=list)  # looked at as one; no member is in features
    family_picks: dict[tuple[int, ...], list[ResultsPick]] = field(default_factory=dict)  # family -> its rows

    def __repr__(self) -> str:
        def clip(text: str) -> str:
            return text if len(text) <= 200 else text[:199] + "…"

        ids = ", ".join(str(f) for f in self.features[:12])
        more = f", ... ({len(self.features)} in all)" if len(self.features) > 12 else ""
        families = f" and families {', '.join(name_of(f) for f in self.families)}" if self.families else ""
        note = f"; {clip(self.note)}" if self.note else ""
        return f"FeatureChoice([{ids}{more}]{families}: {clip(self.how)}{note})"

    @property
    def members(self) -> list[int]:
        """Every family's members, once each, in order (the features whose activations a family needs)."""
        return list(dict.fromkeys(m for family in self.families for m in family))

    def origin(self, what: int | tuple[int, ...]) -> str | None:
        """Where a feature or family came from, with its q and verdict when it came from a results table."""
        if what in self.family_picks:
            return "; ".join(f"#{p.feature}: {p.describe()}" for p in self.family_picks[what])
        if what in self.picks:
            return self.picks[what].describe()
        if what in self.groups:
            return f"planted '{self.groups[what]}' feature"
        return None


def choose_features(
    given: Sequence[int], from_results: Path | None, top_n: int, demo: bool, d_sae: int,
    include_nonsignificant: bool = False, provenance: Provenance | None = None,
    families: Sequence[Sequence[int]] | None = None,
) -> FeatureChoice:
    """``--feature`` ids, plus the top ``top_n`` per group of a Chapter 2 CSV, else the demo's planted ones.

    From a results table only features that pass the significance gate are taken (see
    :func:`read_results_csv`), and the table must have been made with this model, SAE and hook.

    Args:
        families: ``--family`` member ids, for a chapter that looks at families as one; a family row of
            the table (a member that passes the gate) then brings its whole family, and no member is also
            looked at alone unless given with ``--feature``. None: the chapter looks at features only, and
            a family's members that pass the gate are taken one by one like any feature.
    """
    features, groups, ranks, picks, note = list(given), {}, {}, {}, ""
    wanted = [tuple(sorted(set(f))) for f in families or ()]
    if any(len(f) < 2 for f in wanted):
        raise UserError("a family has at least two different features (one feature alone: --feature ID)")
    family_picks: dict[tuple[int, ...], list[ResultsPick]] = {}
    flags = " and ".join(flag for flag, used in (("--feature", given), ("--family", wanted)) if used)
    how = f"given with {flags}"
    if from_results is not None:
        selection = read_results_csv(from_results, top_n, include_nonsignificant, provenance)
        for pick in selection.picks:
            if families is not None and pick.family:
                family_picks.setdefault(pick.family, []).append(pick)
                continue
            if pick.feature not in features:
                features.append(pick.feature)
            groups.setdefault(pick.feature, pick.group)
            ranks.setdefault(pick.feature, pick.rank)
            picks.setdefault(pick.feature, pick)
        gate = "every ranked feature, significant or not" if include_nonsignificant else selection.gate
        how = f"top {top_n} per group of {from_results} ({gate})" + (f" plus {flags}" if flags else "")
        note = selection.note() if not include_nonsignificant else ""
    for family, rows in family_picks.items():
        wanted.append(family)
        groups.setdefault(family, rows[0].group)
    wanted = list(dict.fromkeys(wanted))
    # A member is looked at within its family, not twice; only an id given with --feature is also alone.
    in_families = {m for family in wanted for m in family}
    features = [f for f in features if f not in in_families or f in given]
    if not features and not wanted and demo:
        planted = planted_features().concept
        features, groups = list(planted.values()), {f: c for c, f in planted.items()}
        how = "the demo's planted concept features (no --feature given)"
    if not features and not wanted:
        raise UserError("no feature given: pass --feature ID (repeatable) or --from-results feature_stats.csv"
                        + (" or --family ID+ID" if families is not None else ""))
    validate_features([m for family in wanted for m in family], d_sae)
    return FeatureChoice(validate_features(features, d_sae), groups, ranks, how, picks, note, wanted, family_picks)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def read_results_csv(
    path: Path, top_n: int, include_nonsignificant: bool = False, provenance: Provenance | None = None,
) -> ResultsSelection:
    """The top ``top_n`` features of each group in a Chapter 2 ``feature_stats.csv`` that pass the gate.

    The gate: q below the table's alpha, replicated on held-out prompts (when the run had a held-out
    split), and, when Chapter 2 gave verdicts, the verdict ``concept`` or ``concept (split)`` (a member
    of a family: each pick carries its ``family``, read from the optional ``family`` column). A rank-1
    feature of a null group (q = 1) is therefore never picked unless ``include_nonsignificant``. ``rank``
    1 is the strongest feature within its group; a feature that tops several groups is listed once, under
    the first group in which it appears (groups in file order). Unranked rows (always-on features) are
    skipped.

    Raises:
        UserError: the file is missing or malformed, was made with another SAE (``provenance``), or no
            feature passes the gate.
    """
    path = Path(path)
    columns, rows = _read_results_rows(path)
    if provenance is not None and rows:
        stamps = {tuple(row.get(c, "") for c in PROVENANCE_COLUMNS) for row in rows}
        for stamp in stamps:
            provenance.check(dict(zip(PROVENANCE_COLUMNS, stamp)), f"--from-results {path}")
    alpha = _float(rows[0].get("alpha")) if rows else None
    alpha = alpha if alpha is not None else 0.05
    had_holdout = any(row.get("replicated") in ("yes", "no") for row in rows)
    has_verdicts = "verdict" in columns
    gate = (f"q < {alpha:g}" + (", replicated" if had_holdout else "")
            + (", verdict concept or concept (split)" if has_verdicts else ""))

    def passes(pick: ResultsPick) -> bool:
        if pick.q_value is None or not pick.q_value < alpha:
            return False
        if had_holdout and pick.replicated != "yes":
            return False
        return not has_verdicts or pick.verdict in CONCEPT_VERDICTS

    picks: list[ResultsPick] = []
    skipped: list[ResultsPick] = []
    seen: set[int] = set()
    taken: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if not (row.get("rank") or "").strip():
            continue  # not ranked (Chapter 2 leaves always-on features unranked)
        try:
            feature, rank = int(row["feature"]), int(row["rank"])
        except (TypeError, ValueError):
            raise UserError(f"{path} line {line}: feature and rank must be whole numbers") from None
        pick = ResultsPick(feature, row["group"], rank, _float(row.get("q_value")),
                           (row.get("replicated") or "").strip(), (row.get("verdict") or "").strip(),
                           _family(row.get("family"), feature, f"{path} line {line}"))
        if rank > top_n or feature in seen:
            continue
        if include_nonsignificant or passes(pick):
            seen.add(feature)
            picks.append(pick)
            taken[pick.group] = taken.get(pick.group, 0) + 1
        else:
            skipped.append(pick)
    if not picks:
        raise UserError(
            f"--from-results {path}: none of the top {top_n} features of any group passes the gate ({gate}); "
            "there is nothing significant to look at. Add --include-nonsignificant to look anyway, or "
            "--top-n to look further down the ranking"
        )
    group_order = list(dict.fromkeys(r["group"] for r in rows))
    picks.sort(key=lambda p: (group_order.index(p.group), p.rank))
    return ResultsSelection(picks, skipped, gate)


def _read_results_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a Chapter 2 table; UserError when it is missing, unreadable or lacks a column."""
    if not path.is_file():
        raise UserError(f"--from-results {path} does not exist; run Chapter 2 first or give --feature ID")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"--from-results {path} is not a readable CSV ({err})") from None
    missing = [c for c in RESULTS_COLUMNS if c not in columns]
    if missing:
        raise UserError(
            f"--from-results {path} lacks the column(s) {', '.join(missing)}; expected Chapter 2's "
            f"feature_stats.csv (columns group, feature, rank, ...)"
        )
    return columns, rows


def _family(text: str | None, feature: int, where: str) -> tuple[int, ...]:
    """A row's ``family`` cell as member ids; () when empty or absent (tables from before families)."""
    if not (text or "").strip():
        return ()
    try:
        family = parse_family(text)
    except ValueError as err:
        raise UserError(f"{where}: family {text!r}: {err}") from None
    if feature not in family:
        raise UserError(f"{where}: feature {feature} is not a member of its family {text!r}")
    return family


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


# The id of the one column of a family's activations (FamilyActivations.acts): no SAE feature has it.
FAMILY_COLUMN = -1


@dataclass
class FamilyActivations:
    """A family's activation per token over the texts, and which member gives it.

    Attributes:
        members: the family's feature ids, ascending.
        scales: each member's typical max activation over these texts (:func:`typical_max_activation`);
            0 for a member that never fires on them.
        acts: one column, :data:`FAMILY_COLUMN`: per token the largest of the members' activations, each
            divided by its member's scale (1 = a member at its typical max), so every statistic of a
            feature (top texts, firing rate, typical max, histogram) applies to the family unchanged.
        strongest: per text, ``[n_text_tokens]`` the index into ``members`` of the member that gives the
            family activation there; -1 where no member fires.
    """

    members: tuple[int, ...]
    scales: list[float]
    acts: FeatureActivations
    strongest: list[np.ndarray]

    def member_at(self, text: int, position: int) -> int | None:
        """The member that gives the family activation at ``position`` of text ``text``; None if none fires."""
        index = int(self.strongest[text][position])
        return self.members[index] if index >= 0 else None


def family_activations(fa: FeatureActivations, members: Sequence[int]) -> FamilyActivations:
    """The family's activation per token: the max over members of activation / that member's typical max.

    Members fire on different words and on different scales (one may peak at 3, another at 40); dividing
    each by its own typical max over these texts puts them on one scale, so the family's top texts are
    not all the louder member's. ``fa`` must hold every member's activations.
    """
    members = tuple(sorted(members))
    scales = [typical_max_activation(fa, m)[0] for m in members]
    # A member that never fires here is 0 everywhere: any divisor keeps it 0, and 1 avoids 0 / 0.
    divisors = np.array([s if s > 0 else 1.0 for s in scales], dtype=np.float32)
    cols = [fa.column(m) for m in members]
    values, strongest = [], []
    for a in fa.acts:
        normed = a[:, cols] / divisors  # [n_text_tokens, n_members]
        top = normed.max(axis=1) if len(a) else np.zeros(0, np.float32)
        values.append(top[:, None].astype(np.float32))
        strongest.append(np.where(top > 0, normed.argmax(axis=1) if len(a) else 0, -1))
    acts = FeatureActivations(features=[FAMILY_COLUMN], texts=fa.texts, sources=fa.sources, token_ids=fa.token_ids,
                              acts=values, n_skip=fa.n_skip, truncated=fa.truncated)
    return FamilyActivations(members, scales, acts, strongest)


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

