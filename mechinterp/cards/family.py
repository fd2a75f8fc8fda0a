"""A feature family's card (Chapter 3): one concept that the SAE splits across several features, as one card.

Why it exists: an SAE often splits a concept across features, each firing on part of its words (one on
' happy' and ' glad', another on ' thrilled'). Each member's own card then shows only its part, and
ablating one member in Chapter 4 removes only its part. A family card shows the concept as the SAE
represents it:

* **Where the family fires**: on each token, the largest of its members' activations, each divided by
  that member's typical max activation over the texts carded (the median of its per-text maxima), so
  that members on different scales compare (1 = a member at its typical max); every top text says
  which member fired at its peak.
* **Each member's own row**: its density, firing rate, typical max, the words where it peaks, and the
  tokens it promotes; and on how many tokens it is the member that carries the family.
* **What it writes**: the direct logit effect of the members' decoder directions, each scaled by its
  typical max, ``sum(typical_max[m] * W_dec[m]) @ W_U``: what Chapter 4 steers the family with.

The card reuses a feature card's pieces (:func:`~mechinterp.cards.card.card_examples` on the family's
activation, the same histogram and levels); :mod:`mechinterp.cards.render` and
:mod:`mechinterp.cards.report` show and write it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mechinterp.cards.card import (
    CardOptions,
    Example,
    card_examples,
    density_from_sparsity,
    prompt_activations,
)
from mechinterp.core.features import (
    FAMILY_COLUMN,
    FamilyActivations,
    FeatureActivations,
    family_activations,
    filter_note,
    histogram_counts,
    label_of,
    name_of,
    typical_max_activation,
)
from mechinterp.core.loading import Loaded, neuronpedia_url
from mechinterp.core.logits import LogitEffect, family_logit_effects, logit_effects
from mechinterp.core.progress import Log, silent
from mechinterp.core.tokens import decode_token

# How the card explains the family's activation (terminal, page and JSON say the same).
SCALE_NOTE = ("on each token, the largest of its members' activations, each divided by that member's typical max "
              "activation on these texts (the median of its per-text maxima), so members on different scales "
              "compare: 1 = a member at its typical max")
# The words a member row lists (where the member peaks most often).
PEAK_WORDS = 3


@dataclass
class MemberRow:
    """One member of a family, on its own: how often and how strongly it fires, where, and what it writes.

    Attributes:
        typical_max: its typical max activation on the texts, the scale its activations are divided by
            in the family's activation (0: it never fires on them, and adds nothing to the family).
        carries: tokens where it is the member that gives the family activation.
        peak_words: ``(token, texts)``: the tokens where it peaks, in the most texts first.
        promoted: the tokens its own decoder direction promotes most (``W_dec[m] @ W_U``).
    """

    feature: int
    url: str
    density: float | None
    fired: tuple[int, int]  # (tokens where it fires, tokens)
    typical_max: float
    n_texts_fired: int
    carries: int
    peak_words: list[tuple[str, int]]
    promoted: list[LogitEffect]

    @property
    def firing_rate(self) -> float:
        return self.fired[0] / self.fired[1] if self.fired[1] else 0.0

    def to_dict(self) -> dict:
        return {"feature": self.feature, "neuronpedia_url": self.url, "density_from_sparsity_file": self.density,
                "fired_tokens": self.fired[0], "tokens": self.fired[1], "firing_rate_on_prompts": self.firing_rate,
                "typical_max_activation": self.typical_max, "texts_where_it_fires": self.n_texts_fired,
                "tokens_it_carries": self.carries, "peak_words": [[w, n] for w, n in self.peak_words],
                "promoted": [vars(x) for x in self.promoted]}


@dataclass
class FamilyCard:
    """A family's card: where the family fires (its normalised activation), each member's row, what it writes.

    Like a :class:`~mechinterp.cards.card.FeatureCard`, with the family's activation (:data:`SCALE_NOTE`)
    in place of a feature's: ``fired_by_source``, ``typical_max``, the examples and the histogram are the
    family activation's. ``peak_members`` maps each example's text index to the member at its peak.
    """

    members: tuple[int, ...]
    rows: list[MemberRow]
    fired_by_source: dict[str, tuple[int, int]]  # source -> (tokens where any member fires, tokens)
    typical_max: float  # of the family activation: about 1 by construction
    n_texts_fired: int
    n_texts: int
    examples: list[Example]
    more_examples: list[Example]
    peak_members: dict[int, int]  # text index of an example -> the member that fired at its peak
    promoted: list[LogitEffect]  # of sum(typical_max[m] * W_dec[m]) @ W_U
    suppressed: list[LogitEffect]
    filtered: str
    origin: str = ""
    hist_edges: np.ndarray = field(default_factory=lambda: np.linspace(0.0, 1.0, 31))
    hist_counts: dict[str, np.ndarray] = field(default_factory=dict)
    label_scores: list = field(default_factory=list)  # LabelScore of stated labels on the family activation

    @property
    def name(self) -> str:
        """``"409+501"``: how its files are named (Chapter 2's ``family`` column)."""
        return name_of(self.members)

    @property
    def label(self) -> str:
        """``"#409+#501"``: how the outputs label it."""
        return label_of(self.members)

    @property
    def fired_total(self) -> tuple[int, int]:
        return sum(v[0] for v in self.fired_by_source.values()), sum(v[1] for v in self.fired_by_source.values())

    @property
    def firing_rate(self) -> float:
        fired, total = self.fired_total
        return fired / total if total else 0.0

    def __repr__(self) -> str:
        fired, total = self.fired_total
        members = ", ".join(f"#{r.feature} typical max {r.typical_max:.3g} carries {r.carries}" for r in self.rows)
        top = self.examples[0] if self.examples else None
        peak = (f"; top {top.tokens[top.peak]!r} {top.max_act:.3f} (#{self.peak_members[top.text_index]})"
                if top else "")
        return (f"FamilyCard({self.label}: fires on {fired:,} of {total:,} tokens ({100 * self.firing_rate:.3g}%), in "
                f"{self.n_texts_fired} of {self.n_texts} texts; {members}{peak})")

    def to_dict(self) -> dict:
        """Everything on the card, as plain JSON-able numbers (``family_<name>.json``)."""
        def example(e: Example, why: bool) -> dict:
            return ({"rank": e.rank, "text_index": e.text_index, "source": e.source, "member": self.peak_members[
                e.text_index], "max_activation": e.max_act, "peak_token": e.tokens[e.peak], "peak_index": e.peak,
                "tokens": e.tokens, "activations": [round(float(a), 5) for a in e.acts]}
                | ({"why": e.label} if why else {}))

        return {
            "family": self.name, "members": list(self.members), "activation": SCALE_NOTE,
            "member_rows": [r.to_dict() for r in self.rows],
            "firing_rate_on_prompts": self.firing_rate,
            "fired_tokens_by_source": {s: {"fired": a, "tokens": b} for s, (a, b) in self.fired_by_source.items()},
            "typical_max_activation": self.typical_max, "texts_where_it_fires": self.n_texts_fired,
            "texts": self.n_texts, "filtered": self.filtered, "origin": self.origin,
            "top_examples": [example(e, False) for e in self.examples],
            "more_examples": [example(e, True) for e in self.more_examples],
            "promoted": [vars(x) for x in self.promoted], "suppressed": [vars(x) for x in self.suppressed],
        } | ({"label_scores": [x.to_dict() for x in self.label_scores]} if self.label_scores else {})


def member_row(loaded: Loaded, fa: FeatureActivations, family: FamilyActivations, feature: int) -> MemberRow:
    """One member's row of the family card, from the texts' activations (``fa``) and the family's."""
    j, index = fa.column(feature), family.members.index(feature)
    tok = loaded.model.tokenizer
    peaks = Counter(decode_token(tok, ids[int(a[:, j].argmax())])
                    for a, ids in zip(fa.acts, fa.token_ids) if len(a) and a[:, j].max() > 0)
    typical, n_fired = typical_max_activation(fa, feature)
    return MemberRow(
        feature=feature, url=neuronpedia_url(loaded.sae.neuronpedia_id, feature),
        density=density_from_sparsity(loaded, feature), fired=fa.firing(feature), typical_max=typical,
        n_texts_fired=n_fired, carries=int(sum((s == index).sum() for s in family.strongest)),
        peak_words=peaks.most_common(PEAK_WORDS), promoted=logit_effects(loaded, feature, PEAK_WORDS)[0],
    )


def build_family_card(loaded: Loaded, fa: FeatureActivations, members: Sequence[int], n_examples: int = 10,
                      n_logits: int = 15, origin: str = "") -> FamilyCard:
    """The card of the family ``members`` from activations already collected over the texts (all members').

    Its examples, levels and histogram are a feature card's, computed on the family's activation
    (:func:`~mechinterp.core.features.family_activations`).
    """
    family = family_activations(fa, members)
    examples, more = card_examples(loaded, family.acts, FAMILY_COLUMN, n_examples)
    typical, n_fired = typical_max_activation(family.acts, FAMILY_COLUMN)
    edges, counts = histogram_counts(family.acts, FAMILY_COLUMN)
    promoted, suppressed = family_logit_effects(loaded, dict(zip(family.members, family.scales)), n_logits)
    return FamilyCard(
        members=family.members,
        rows=[member_row(loaded, fa, family, m) for m in family.members],
        fired_by_source={s: family.acts.firing(FAMILY_COLUMN, s) for s in fa.source_names},
        typical_max=typical, n_texts_fired=n_fired, n_texts=len(fa.texts), examples=examples, more_examples=more,
        peak_members={e.text_index: family.member_at(e.text_index, e.peak) for e in examples + more},
        promoted=promoted, suppressed=suppressed, filtered=filter_note(fa), origin=origin,
        hist_edges=edges, hist_counts=counts,
    )


def family_cards(
    loaded: Loaded,
    families: Sequence[Sequence[int]],
    texts: Sequence[str],
    sources: Sequence[str],
    options: CardOptions | None = None,
    *,
    origins: Mapping[tuple[int, ...], str] | None = None,
    activations: FeatureActivations | None = None,
    log: Log = silent,
) -> list[FamilyCard]:
    """The cards of ``families`` (each a sequence of member ids) over the prompts; a notebook's entry point::

        texts, groups = load_prompt_sets("prompts/").flat()
        cards = family_cards(loaded, [(409, 501)], texts, groups)

    Args:
        origins: per family (its member ids, ascending), where it came from (the card's "From" line).
        activations: the texts' activations already collected for every member (e.g. with the single
            features carded beside them); default: the texts are encoded here.
    """
    options = options or CardOptions()
    families = [tuple(sorted(set(f))) for f in families]
    members = list(dict.fromkeys(m for f in families for m in f))
    fa = activations if activations is not None else prompt_activations(
        loaded, texts, sources, members, options.batch_size, log)
    return [build_family_card(loaded, fa, f, options.top_prompts, options.n_tokens, (origins or {}).get(f, ""))
            for f in families]
