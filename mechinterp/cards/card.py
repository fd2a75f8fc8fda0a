"""Feature cards (Chapter 3): where a feature fires, what it writes, and how often it fires.

A card answers "what is this feature, really?" from three independent angles:

* **Where it fires** - the prompts (and corpus documents) on which it reaches its highest activations,
  token by token, with the peak token marked. This is the input side: what the encoder detects.
* **What it writes** - the decoder direction pushed straight through the unembedding,
  ``W_dec[f] @ W_U`` on the model as loaded. This is the output side: which next tokens the feature's
  direction pushes up or down, ignoring the layers between the hook and the output (the "direct path";
  a first guess that Chapter 4's interventions then test).
* **How often** - the density the SAE's authors measured on its training data (when the release ships
  a sparsity file) beside the firing rate on the user's own prompts.

With a mined corpus (:mod:`mechinterp.cards.mining`: ``--corpus FILE`` or ``--dataset NAME``), a card also
has a :class:`CorpusEvidence`: the feature's density over the corpus, its top windows there, windows
at lower activation levels, and the histogram of its activations over every corpus token.

:func:`feature_cards` makes the cards of a few features from prompts (and a mined corpus) in one call:
what Chapter 3's script computes, for a notebook too. Rendering a card (terminal text, HTML) lives in
:mod:`mechinterp.cards.render`, its figures in :mod:`mechinterp.cards.figures`, and the files a run
writes in :mod:`mechinterp.cards.report`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mechinterp.cards.mining import DEFAULT_BATCH_SIZE, MinedExample, MiningResult, window_activations
from mechinterp.core.encoding import default_batch_size, tokenize, warn_truncated
from mechinterp.core.errors import UserError
from mechinterp.core.features import (
    FeatureActivations,
    collect_feature_activations,
    filter_note,
    histogram_counts,
    typical_max_activation,
)
from mechinterp.core.loading import Loaded, neuronpedia_url
from mechinterp.core.logits import LogitEffect, logit_effects
from mechinterp.core.options import option, positive_int
from mechinterp.core.positions import model_position
from mechinterp.core.progress import Log, silent
from mechinterp.core.records import RunRecord
from mechinterp.core.tables import plural
from mechinterp.core.tokens import decode_tokens

COLOR_MODES = ("auto", "always", "never")
# Characters of text a repr shows around an example's peak (a repr is read in a notebook, at a glance).
REPR_CONTEXT = 60


@dataclass
class CardOptions:
    """What a card shows, and how its texts are encoded (Chapter 3's "what to show" flags, --batch-size).

    Attributes:
        baseline: the prompt group each card is compared with (``--baseline``): the card then gives its
            firing rate there beside the rate in the group where it fires most. None: no comparison.
    """

    batch_size: int | None = option(
        None, "texts per forward pass (default: 16 on CPU, 64 on GPU; for corpus mining, windows per pass, "
        f"default {DEFAULT_BATCH_SIZE})", type=positive_int)
    top_prompts: int = option(10, "top activating texts (and corpus windows) per card", type=positive_int)
    n_tokens: int = option(15, "how many promoted and suppressed tokens of W_dec[f] @ W_U to list", type=positive_int)
    color: str = option("auto", "colour the terminal highlights: auto = only when stdout is a terminal",
                        choices=COLOR_MODES)
    baseline: str | None = None

    def __post_init__(self) -> None:
        for name in ("top_prompts", "n_tokens"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise UserError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.color not in COLOR_MODES:
            raise UserError(f"color must be one of {', '.join(COLOR_MODES)}, got {self.color!r}")

# --- how often it fires --------------------------------------------------------------------------


def density_from_sparsity(loaded: Loaded, feature: int) -> float | None:
    """Fraction of training tokens the feature fires on, from the release's sparsity file (log10)."""
    log_sparsity = loaded.sae.log_sparsity
    if log_sparsity is None:
        return None
    return float(10 ** float(log_sparsity[feature]))


# --- the card -----------------------------------------------------------------------------------------


@dataclass
class Example:
    """One top-activating text, with its tokens and their activations of the card's feature."""

    rank: int
    text_index: int
    source: str
    tokens: list[str]
    acts: np.ndarray  # float32 [n_tokens]
    peak: int  # index into tokens (BOS already removed)
    label: str = ""  # why this example is on the card: "" for the top ones, else e.g. "median level"
    where: str = ""  # where a corpus window is, e.g. "document 12 (line 14), tokens 127-253"; "" for a prompt
    n_skip: int = 1  # positions the model saw before tokens[0] (1 for BOS)

    @property
    def max_act(self) -> float:
        return float(self.acts[self.peak])

    @property
    def peak_position(self) -> int:
        """The peak's position in the model's token sequence (BOS = 0), as every chapter writes positions."""
        return model_position(self.peak, self.n_skip)

    def context(self, chars: int = REPR_CONTEXT) -> str:
        """The text around the peak token: up to ``chars`` characters on each side ("…" where cut)."""
        before, after = "".join(self.tokens[: self.peak]), "".join(self.tokens[self.peak + 1 :])
        left = "…" + before[-chars:] if len(before) > chars else before
        right = after[:chars] + "…" if len(after) > chars else after
        return left + self.tokens[self.peak] + right

    def __repr__(self) -> str:
        rank = f"#{self.rank} " if self.rank > 0 else ""
        where = f", {self.where}" if self.where else ""
        why = f" ({_clip(self.label, 70)})" if self.label else ""
        return (f"Example({rank}[{self.source}{where}] max {self.max_act:.3f} at {self.tokens[self.peak]!r}{why}: "
                f"{self.context()!r})")


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _rate(fired_tokens: tuple[int, int]) -> float:
    fired, tokens = fired_tokens
    return fired / tokens if tokens else 0.0


@dataclass(frozen=True)
class BaselineComparison:
    """A feature's firing rate in the baseline group beside its rate in the group where it fires most.

    A concept feature fires in its own group and not in the baseline; one that fires as often in the
    baseline is about something every prompt shares (a word, a position), not the group's concept.

    Attributes:
        baseline: the reference group; ``fired`` of its ``tokens`` are where the feature fires.
        group: the other group with the highest firing rate (the first such, in the groups' order);
            None when the prompts have no other group. ``group_fired`` of ``group_tokens`` fire there.
    """

    baseline: str
    fired: int
    tokens: int
    group: str | None
    group_fired: int
    group_tokens: int

    @property
    def rate(self) -> float:
        return _rate((self.fired, self.tokens))

    @property
    def group_rate(self) -> float:
        return _rate((self.group_fired, self.group_tokens))

    def to_dict(self) -> dict:
        return {"baseline": self.baseline, "fired_tokens": self.fired, "tokens": self.tokens,
                "firing_rate": self.rate, "top_group": self.group, "top_group_fired_tokens": self.group_fired,
                "top_group_tokens": self.group_tokens, "top_group_firing_rate": self.group_rate}


@dataclass
class FeatureCard:
    feature: int
    url: str
    density: float | None  # from the SAE's sparsity file, or None
    fired_by_source: dict[str, tuple[int, int]]  # source -> (tokens fired, tokens)
    typical_max: float
    n_texts_fired: int
    n_texts: int
    examples: list[Example]
    promoted: list[LogitEffect]
    suppressed: list[LogitEffect]
    filtered: str
    more_examples: list[Example] = field(default_factory=list)  # lower activation levels, other groups
    origin: str = ""  # where the feature came from, e.g. "happy rank 1, q = 4e-08, replicated, verdict concept"
    corpus: CorpusEvidence | None = None  # what a mined corpus says (--corpus / --dataset), else None
    baseline: str | None = None  # the group the card compares its firing with (--baseline), else None
    # The histogram of its non-zero activations over the texts: edges [bins + 1], and per source counts [bins].
    hist_edges: np.ndarray = field(default_factory=lambda: np.linspace(0.0, 1.0, 31))
    hist_counts: dict[str, np.ndarray] = field(default_factory=dict)
    # How well stated labels explain it over the corpus (mechinterp.cards.label_score.LabelScore), if scored.
    label_scores: list = field(default_factory=list)

    def __repr__(self) -> str:
        fired, total = self.fired_total
        parts = [f"#{self.feature}" + (f" ({_clip(self.origin, 80)})" if self.origin else ""),
                 f"fires on {fired:,} of {total:,} tokens ({100 * self.firing_rate:.3g}%), in {self.n_texts_fired} "
                 f"of {self.n_texts} texts"]
        busiest = max(self.fired_by_source, key=lambda s: _rate(self.fired_by_source[s]), default=None)
        if busiest is not None and fired:
            parts[-1] += f", most in {busiest!r} ({100 * _rate(self.fired_by_source[busiest]):.3g}%)"
        comparison = self.against_baseline()
        if comparison is not None:
            parts.append(f"baseline {comparison.baseline!r} {100 * comparison.rate:.3g}%")
        if self.examples:
            top = self.examples[0]
            parts.append(f"top {top.tokens[top.peak]!r} {top.max_act:.3f}")
        parts.append("promotes " + (", ".join(f"{x.token!r} {x.value:+.3g}" for x in self.promoted[:3]) or "nothing"))
        if self.corpus is not None:
            parts.append(f"corpus density {100 * self.corpus.density:.3g}% of {self.corpus.n_tokens:,} tokens")
        return f"FeatureCard({'; '.join(parts)})"

    def against_baseline(self) -> BaselineComparison | None:
        """The baseline group's firing rate beside the busiest other group's; None without a baseline."""
        if self.baseline is None:
            return None
        others = [s for s in self.fired_by_source if s != self.baseline]
        group = max(others, key=lambda s: _rate(self.fired_by_source[s]), default=None)
        group_fired, group_tokens = self.fired_by_source[group] if group is not None else (0, 0)
        fired, tokens = self.fired_by_source.get(self.baseline, (0, 0))
        return BaselineComparison(self.baseline, fired, tokens, group, group_fired, group_tokens)

    @property
    def fired_total(self) -> tuple[int, int]:
        fired = sum(v[0] for v in self.fired_by_source.values())
        total = sum(v[1] for v in self.fired_by_source.values())
        return fired, total

    @property
    def firing_rate(self) -> float:
        fired, total = self.fired_total
        return fired / total if total else 0.0

    def to_dict(self) -> dict:
        """Everything on the card, as plain JSON-able numbers."""
        return {
            "feature": self.feature,
            "neuronpedia_url": self.url,
            "density_from_sparsity_file": self.density,
            "firing_rate_on_prompts": self.firing_rate,
            "fired_tokens_by_source": {s: {"fired": a, "tokens": b} for s, (a, b) in self.fired_by_source.items()},
            "typical_max_activation": self.typical_max,
            "texts_where_it_fires": self.n_texts_fired,
            "texts": self.n_texts,
            "filtered": self.filtered,
            "origin": self.origin,
            "top_examples": [_example_dict(e) for e in self.examples],
            "more_examples": [_example_dict(e) | {"why": e.label} for e in self.more_examples],
            "promoted": [vars(x) for x in self.promoted],
            "suppressed": [vars(x) for x in self.suppressed],
        } | ({"corpus": self.corpus.to_dict()} if self.corpus is not None else {}) | (
            {"against_baseline": self.against_baseline().to_dict()} if self.baseline is not None else {}) | (
            {"label_scores": [x.to_dict() for x in self.label_scores]} if self.label_scores else {})


def _example_dict(e: Example) -> dict:
    return {
        "rank": e.rank,
        "text_index": e.text_index,
        "source": e.source,
        "max_activation": e.max_act,
        "peak_token": e.tokens[e.peak],
        "peak_position": e.peak_position,  # BOS = 0; "tokens" below leave BOS out
        "tokens": e.tokens,
        "activations": [round(float(a), 5) for a in e.acts],
    } | ({"where": e.where} if e.where else {})


# Activation levels shown below the top examples, as quantiles of the per-text maxima where it fires: the
# top examples alone can all be one word at one strength, which hides what the feature does more weakly.
LEVELS = ((0.75, "upper quartile"), (0.5, "median"), (0.25, "lower quartile"))


def build_card(
    loaded: Loaded, fa: FeatureActivations, feature: int, n_examples: int = 10, n_logits: int = 15, origin: str = "",
    baseline: str | None = None,
) -> FeatureCard:
    """Assemble the card of ``feature`` from activations already collected over the texts.

    Besides the ``n_examples`` top texts, the card shows one text at each of :data:`LEVELS` of the
    per-text maxima where the feature fires, and the top text of every source (prompt group or corpus)
    where it fires that the top examples do not already include. With ``baseline`` (a source of
    ``fa``), the card compares its firing there with the group where it fires most.
    """
    examples, more = card_examples(loaded, fa, feature, n_examples)
    promoted, suppressed = logit_effects(loaded, feature, n_logits)
    typical, n_fired = typical_max_activation(fa, feature)
    edges, counts = histogram_counts(fa, feature)
    return FeatureCard(
        feature=feature,
        url=neuronpedia_url(loaded.sae.neuronpedia_id, feature),
        density=density_from_sparsity(loaded, feature),
        fired_by_source={s: fa.firing(feature, s) for s in fa.source_names},
        typical_max=typical,
        n_texts_fired=n_fired,
        n_texts=len(fa.texts),
        examples=examples,
        promoted=promoted,
        suppressed=suppressed,
        filtered=filter_note(fa),
        more_examples=more,
        origin=origin,
        baseline=baseline,
        hist_edges=edges,
        hist_counts=counts,
    )


def card_examples(loaded: Loaded, fa: FeatureActivations, feature: int,
                  n_examples: int = 10) -> tuple[list[Example], list[Example]]:
    """Where ``feature`` fires, as a card shows it: ``(top examples, more examples)``.

    The ``n_examples`` texts with the highest maximum, then one text at each of :data:`LEVELS` of the
    per-text maxima where it fires, and the top text of every source where it fires that the others do
    not already include (see :func:`build_card`). Every text appears at most once.
    """
    j = fa.column(feature)
    maxes = fa.prompt_max(feature)
    # Stable sort on -max: ties keep input order, so the card is deterministic.
    ranked = [int(i) for i in np.argsort(-maxes, kind="stable") if maxes[i] > 0]
    order = ranked[:n_examples]
    tok = loaded.model.tokenizer

    def example(rank: int, i: int, label: str = "") -> Example:
        acts = fa.acts[i][:, j]
        return Example(rank=rank, text_index=i, source=fa.sources[i], tokens=decode_tokens(tok, fa.token_ids[i]),
                       acts=acts, peak=int(acts.argmax()), label=label, n_skip=fa.n_skip)

    examples = [example(rank, i) for rank, i in enumerate(order, start=1)]
    shown = set(order)
    more = []
    for q, name in LEVELS:
        if len(ranked) <= n_examples:
            break  # every text where it fires is already on the card
        target = float(np.quantile(maxes[ranked], q))
        i = min((i for i in ranked if i not in shown), key=lambda i: (abs(maxes[i] - target), i), default=None)
        if i is not None:
            shown.add(i)
            more.append(example(ranked.index(i) + 1, i, f"{name} of the per-text maxima where it fires ({target:.3g})"))
    for source in fa.source_names:
        if any(fa.sources[i] == source for i in shown):
            continue
        best = next((i for i in ranked if fa.sources[i] == source), None)
        if best is not None:
            shown.add(best)
            more.append(example(ranked.index(best) + 1, best, f"the top text of '{source}'"))
    return examples, more


# --- what a mined corpus says -------------------------------------------------------------------------


@dataclass
class CorpusEvidence:
    """One feature over a mined corpus: how often it fires there, its top windows, windows at lower
    activation levels, and the histogram of its activations. BOS and padding are in none of it.

    Attributes:
        corpus: the corpus in words (a file, or a streamed dataset).
        scope: how much of it was mined, in words (e.g. "its first 100,000 tokens (--max-tokens)").
        n_tokens, n_windows, n_documents: what the pass read (tokens: the density's denominator).
        window: tokens per window, BOS included.
        fired: corpus tokens where the feature fires; ``windows_fired``: windows where it fires.
        max_activation: its largest activation in the corpus.
        typical_max: the median of the per-window maxima where it fires, the corpus's counterpart of the
            card's typical max (see ``MiningResult.window_max_quantile``: exact when it fires in at most
            16 windows, else exact to one histogram bin).
        examples: the top windows, highest peak first.
        levels: ``(name, value)`` of each of :data:`LEVELS` of the per-window maxima where it fires
            (computed like ``typical_max``); empty when it never fires.
        level_examples: windows drawn at random where it fires, picked nearest to each level; each
            ``label`` says which level and its value.
        hist_edges: ``[n + 1]`` the fixed log-spaced bins of the pass, trimmed to where it fires.
        hist_counts: ``[n]`` corpus tokens per bin; ``window_hist_counts``: windows per bin of their peak.
        rescored_from: the dtype the pass computed in (e.g. "bfloat16") when its top windows were re-scored
            in float32 (``mine(..., rescore_with=...)``): the top windows and every example's activations
            are then float32's, the density, histogram and levels the pass's. None for a float32 pass.
        uncertain: re-scored, but flagged by the re-score: a window the pass ranked below its candidates
            might belong among the top windows, so they may differ from a float32 pass's.
    """

    corpus: str
    scope: str
    n_tokens: int
    n_windows: int
    n_documents: int
    window: int
    fired: int
    windows_fired: int
    max_activation: float
    typical_max: float
    examples: list[Example]
    levels: list[tuple[str, float]]
    level_examples: list[Example]
    hist_edges: np.ndarray
    hist_counts: np.ndarray
    window_hist_counts: np.ndarray
    rescored_from: str | None = None
    uncertain: bool = False

    @property
    def density(self) -> float:
        return self.fired / self.n_tokens if self.n_tokens else 0.0

    def __repr__(self) -> str:
        top = self.examples[0] if self.examples else None
        best = f"top {top.tokens[top.peak]!r} {top.max_act:.3f}" if top else "never fires there"
        return (f"CorpusEvidence(fires on {100 * self.density:.3g}% of {self.n_tokens:,} tokens of "
                f"{_clip(self.corpus, 100)} (in {self.windows_fired:,} of {self.n_windows:,} windows of {self.window}); "
                f"max {self.max_activation:.3f}, typical max ~{self.typical_max:.3g}; {len(self.examples)} top windows, "
                f"{best}; {len(self.level_examples)} at lower levels)")

    def to_dict(self) -> dict:
        return {
            "corpus": self.corpus,
            "scope": self.scope,
            "tokens": self.n_tokens,
            "windows": self.n_windows,
            "documents": self.n_documents,
            "window_tokens": self.window,
            "fired_tokens": self.fired,
            "density": self.density,
            "windows_fired": self.windows_fired,
            "max_activation": self.max_activation,
            "typical_max_activation_approx": self.typical_max,
            "top_examples": [_example_dict(e) for e in self.examples],
            "levels_of_window_maxima": {name: value for name, value in self.levels},
            "level_examples": [_example_dict(e) | {"why": e.label} for e in self.level_examples],
            "histogram": {"bin_low": [float(x) for x in self.hist_edges[:-1]],
                          "bin_high": [float(x) for x in self.hist_edges[1:]],
                          "tokens": [int(c) for c in self.hist_counts],
                          "windows_by_peak": [int(c) for c in self.window_hist_counts]},
        } | ({"rescored_in_float32_from": self.rescored_from, "top_windows_may_differ_from_float32": self.uncertain}
             if self.rescored_from is not None else {})


def corpus_evidence(
    loaded: Loaded, result: MiningResult, feature: int, n_examples: int = 10, scope: str = "", batch_size: int = 16,
    windows_with: Loaded | None = None,
) -> CorpusEvidence:
    """The corpus part of ``feature``'s card, from a mining pass.

    The pass keeps each window's peak only; the windows shown here are encoded again (a handful), so
    that every token can be coloured by its activation. Below the ``n_examples`` top windows, one window
    at each of :data:`LEVELS` of the per-window maxima where the feature fires: of the windows the pass
    drew at random among those, the one nearest to the level (none when every window where it fires
    is already a top one).

    Args:
        windows_with: the model and SAE that encode the windows shown (default ``loaded``): the float32
            copy that re-scored a reduced-precision pass, so that the tokens' activations are as exact
            as the re-scored peaks.
    """
    top = result.examples(feature)[:n_examples]
    fired_windows = result.windows_fired(feature)
    levels = [(name, result.window_max_quantile(feature, q)) for q, name in LEVELS] if fired_windows else []
    picks: list[tuple[MinedExample, str]] = []
    if fired_windows > len(top):  # else every window where it fires is a top one already
        shown = {e.window.window_id for e in top}
        candidates = [s for s in result.samples(feature) if s.window.window_id not in shown]
        for name, target in levels:
            best = min(candidates, key=lambda s: (abs(s.value - target), s.window.window_id), default=None)
            if best is None:
                break
            candidates.remove(best)
            picks.append((best, f"{name} of the per-window maxima where it fires (~{target:.3g}); drawn at random"))
    mined = top + [s for s, _ in picks]
    acts = window_activations(windows_with or loaded, [m.window for m in mined], [feature], batch_size)
    tok = loaded.model.tokenizer
    n_bos = 1 if loaded.sae.prepend_bos else 0  # window_activations puts BOS in front when the SAE uses it

    def example(m: MinedExample, a: np.ndarray, rank: int, label: str = "") -> Example:
        w = m.window
        line = f" (line {w.line})" if w.line else ""
        where = f"document {w.doc + 1}{line}, tokens {w.start}-{w.start + len(w.tokens) - 1}"
        return Example(rank=rank, text_index=w.doc, source="corpus", tokens=decode_tokens(tok, w.tokens.tolist()),
                       acts=a[:, 0], peak=m.position, label=label, where=where, n_skip=n_bos)

    examples = [example(m, a, m.rank) for m, a in zip(top, acts)]
    level_examples = [example(m, a, 0, label) for (m, label), a in zip(picks, acts[len(top):])]
    edges, counts = result.histogram(feature)
    _, window_counts = result.histogram(feature, per_window=True)
    return CorpusEvidence(
        corpus=result.corpus, scope=scope, n_tokens=result.n_tokens, n_windows=result.n_windows,
        n_documents=result.n_documents, window=result.window, fired=result.fired(feature),
        windows_fired=fired_windows, max_activation=result.max_activation(feature),
        typical_max=result.window_max_quantile(feature, 0.5), examples=examples, levels=levels,
        level_examples=level_examples,
        hist_edges=edges, hist_counts=counts, window_hist_counts=window_counts,
        **_rescore_flags(result, feature),
    )


def _rescore_flags(result: MiningResult, feature: int) -> dict:
    """What a float32 re-score of the pass says about ``feature`` (CorpusEvidence's fields; none without one)."""
    rescore = result.rescore
    if rescore is None:
        return {}
    return {"rescored_from": rescore.dtype.removeprefix("torch."),
            "uncertain": bool(np.isin(feature, rescore.uncertain_features))}


# --- every card of a run ------------------------------------------------------------------------------


def feature_cards(
    loaded: Loaded,
    features: Sequence[int],
    texts: Sequence[str],
    sources: Sequence[str],
    options: CardOptions | None = None,
    *,
    origins: Mapping[int, str] | None = None,
    corpus: MiningResult | None = None,
    corpus_scope: str = "",
    log: Log = silent,
    record: RunRecord | None = None,
    activations: FeatureActivations | None = None,
    windows_with: Loaded | None = None,
) -> list[FeatureCard]:
    """The cards of ``features``: what Chapter 3 computes, from prompts and optionally a mined corpus.

    The texts are encoded once for all the features (BOS and padding excluded), then each card is built
    from those activations (:func:`build_card`); with ``corpus`` each card also gets its
    :class:`CorpusEvidence`, whose few windows are encoded again. E.g. in a notebook::

        texts, groups = load_prompt_sets("prompts/").flat()
        cards = feature_cards(loaded, [501, 409], texts, groups, CardOptions(baseline="baseline"))

    Args:
        features: feature ids, validated against the SAE (see ``core.features.validate_features``).
        texts, sources: the prompts, and each one's group (the card's "by source" line).
        options: how many examples and logit effects, the encoding batch size, and the baseline group.
        origins: per feature, where it came from (the card's "From" line).
        corpus: a finished :func:`~mechinterp.cards.mining.mine` pass that mined these features.
        corpus_scope: how much of the corpus the pass covers, in words, for the card.
        record: a run record to add the "encode" and "cards" seconds to.
        activations: the texts' activations already collected for (at least) ``features``, e.g. with
            the members of the families carded beside them (:func:`prompt_activations`); default: the
            texts are encoded here.
        windows_with: the float32 model and SAE that re-scored ``corpus`` (a reduced-precision pass):
            the corpus windows shown are encoded with it (see :func:`corpus_evidence`).

    Raises:
        UserError: the baseline is not one of ``sources``, or a feature was not mined in ``corpus``.
    """
    options = options or CardOptions()
    check_baseline(options.baseline, sources)
    timed = record.timed if record is not None else lambda _stage: contextlib.nullcontext()
    fa = activations
    if fa is None:
        with timed("encode"):
            fa = prompt_activations(loaded, texts, sources, features, options.batch_size, log)
    cards = []
    with timed("cards"):
        for feature in features:
            card = build_card(loaded, fa, feature, options.top_prompts, options.n_tokens,
                              (origins or {}).get(feature, ""), options.baseline)
            if corpus is not None:
                card.corpus = corpus_evidence(loaded, corpus, feature, options.top_prompts, corpus_scope,
                                              options.batch_size or DEFAULT_BATCH_SIZE, windows_with)
            cards.append(card)
    return cards


def prompt_activations(loaded: Loaded, texts: Sequence[str], sources: Sequence[str], features: Sequence[int],
                       batch_size: int | None = None, log: Log = silent) -> FeatureActivations:
    """The features' per-token activations over the texts (none when there are no texts or features)."""
    if not texts or not features:
        return FeatureActivations(features=list(features), texts=[], sources=[], token_ids=[], acts=[],
                                  n_skip=1 if loaded.sae.prepend_bos else 0)
    log(f"encoding {plural(len(texts), 'text')} for {plural(len(features), 'feature')} ...")
    tokenized = tokenize(loaded, texts)
    warn_truncated(list(texts), tokenized, int(loaded.model.cfg.n_ctx))
    return collect_feature_activations(
        loaded, texts, sources, features, batch_size or default_batch_size(loaded.device, loaded), tokenized
    )


def check_baseline(baseline: str | None, sources: Sequence[str]) -> None:
    """Refuse a baseline group that is not among the prompts' groups (nothing to compare with)."""
    if baseline is None:
        return
    groups = list(dict.fromkeys(sources))
    if not groups:
        raise UserError(f"baseline group {baseline!r} given, but there are no prompts to compare with; "
                        "pass --prompts DIR with a <group>.txt per group")
    if baseline not in groups:
        raise UserError(f"baseline group {baseline!r} is not among the prompt groups; available: {', '.join(groups)}")

