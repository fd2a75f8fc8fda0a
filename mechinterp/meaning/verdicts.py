"""Meanings that survive confounds: telling a concept feature from a length, position or stray-word difference.

Chapter 2 finds features whose per-prompt activation differs between a group of prompts and its
baseline, and replicates them on held-out prompts. A difference is not a meaning, though: hand-written
prompt sets differ in more than the concept (length, sentence structure, extra words, punctuation),
and a held-out split cannot catch a *systematic* difference. This module asks, for every significant,
replicated feature, where its difference comes from, and answers with exactly one verdict:

* ``concept``: it peaks on several different words that mark the group (most of its peaks are on
  them), still separates the prompts that use none of its top words, and survives the length, token
  and position controls;
* ``lexical``: one token type carries it: most of its peaks are on that token, conditioning on the
  token removes the difference, and putting the token into baseline prompts reproduces the difference
  (the falsification test of arXiv 2601.05679; the token replaces a word, so length and positions
  stay the same, except that a sentence opener goes in front of the first word: see inject_token);
* ``positional``: its peaks sit at one absolute position, and prompts with its top token at the same
  position (or prompts that all reach that position) do not differ between the sets;
* ``length``: it rises or falls with prompt length within the sets, the sets differ in length, and
  the difference does not survive among prompts of equal length;
* ``context``: anything else; typically it peaks on tokens the baseline has as well (``' and'``,
  ``'.'``), more often or more strongly in the group, and does not pass the concept tests.

The controls are stratified re-tests: the group difference is measured again *within* strata of a
possible confound (equal token length; with / without the top token; the top token at the same
position; reaching the peak position or not). A control is *survived* when at least half of the
effect (AUROC - 0.5) remains and is significant within strata, and *explains* the difference when
less than half remains and (given enough prompts in strata that hold both sets) it is no longer
significant. Typical signatures: an inserted word shifts every later token by one, so a ' the'
detector locked to position 10 fires at 10 in baseline prompts and not at 11 in the group; among
prompts with ' the' at the same position the sets agree (positional). A '!' feature is carried by
one token type: with and without '!' the sets agree, and '!' put into baseline prompts makes them fire
(lexical). A length feature correlates with length within both sets and agrees among prompts of
equal length (length).

Everything here is numpy/scipy on small per-prompt summaries (the tests themselves are in
:mod:`mechinterp.meaning.stats`); the model is reached only through an ``encode`` callable for the
token-injection test, so the module is testable with a fake encoder.

Inputs (all BOS-free; "position" is the index among a prompt's text tokens, 0 = first token after BOS):

* :class:`~mechinterp.meaning.design.TokenizedPrompts`: per prompt its text, text-token ids and token strings;
* :class:`FeatureActivity`: per prompt and feature the statistic Chapter 2 tested (max or mean over
  text tokens) and the position of the feature's maximum (its *peak*), -1 where it did not fire.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from mechinterp.core.positions import BOS_ZERO, model_position
from mechinterp.meaning.design import TRAILING_PUNCT, TokenizedPrompts, token_counts, vocabulary
from mechinterp.meaning.options import ConfoundSettings
from mechinterp.meaning.stats import (
    StratifiedTest,
    auroc,
    fisher_greater,
    mann_whitney,
    van_elteren,
    within_group_rank_correlation,
)

CONCEPT = "concept"
LEXICAL = "lexical"
POSITIONAL = "positional"
LENGTH = "length"
CONTEXT = "context"
VERDICTS = (CONCEPT, LEXICAL, POSITIONAL, LENGTH, CONTEXT)

# Outcomes of a controlled re-test (a stratified test compared with the unstratified one).
SURVIVES = "survives"  # the difference keeps >= half its size within strata and is significant there
VANISHES = "vanishes"  # less than half of the difference is left and it is no longer significant
WEAKENED = "weakened"  # less than half is left but it is still significant (large prompt sets)
INCONCLUSIVE = "inconclusive"  # too few prompts in strata that hold both sets to tell

# One (per-prompt statistic) encoder for the injection test: texts and feature ids in,
# ``[len(texts), len(features)]`` values out, computed exactly like FeatureActivity.value.
Encoder = Callable[[list[str], np.ndarray], np.ndarray]
# A token that holds only part of a character is labelled "text[j/n]" (mechinterp.core.tokens.decode_tokens):
# its label is not text that could be typed into a prompt.
_PIECE_LABEL = re.compile(r"\[\d/\d\]$")
CONTROLS = ("length", "token", "position", "reach")  # the controlled re-tests, in the order they are reported


class _SummaryRow(Protocol):
    idx: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    peak: np.ndarray


@dataclass
class FeatureActivity:
    """Per-prompt summaries of the features to judge, for one prompt set.

    Attributes:
        features: ``[n_features]`` feature ids.
        value: ``[n_prompts, n_features]`` the per-prompt statistic Chapter 2 tested (max or mean over
            the text tokens); 0 where the feature did not fire.
        peak: ``[n_prompts, n_features]`` int, position (text-token index, 0 = first token after BOS)
            of the feature's maximum in the prompt (first one on ties), -1 where it did not fire.
    """

    features: np.ndarray
    value: np.ndarray
    peak: np.ndarray

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.int64).reshape(-1)
        self.value = np.asarray(self.value, dtype=np.float64)
        self.peak = np.asarray(self.peak, dtype=np.int64)
        shape = (self.value.shape[0], len(self.features))
        if self.value.shape != shape or self.peak.shape != shape:
            raise ValueError(f"value {self.value.shape} and peak {self.peak.shape} must both be {shape}")
        if np.any((self.value > 0) & (self.peak < 0)) or np.any((self.peak < 0) & (self.value != 0)):
            raise ValueError("peak must be -1 exactly where the feature did not fire (value 0)")

    @classmethod
    def from_rows(cls, rows: Sequence[_SummaryRow], features: np.ndarray, agg: str = "max") -> FeatureActivity:
        """Dense summaries of ``features`` from Chapter 2's sparse per-prompt rows.

        Each row needs ``idx`` (fired feature ids), ``max``/``mean`` and ``peak`` (argmax position per
        fired feature), all parallel arrays; ``agg`` picks the tested statistic.
        """
        features = np.asarray(features, dtype=np.int64)
        order = np.argsort(features)
        sorted_f = features[order]
        value = np.zeros((len(rows), len(features)))
        peak = np.full((len(rows), len(features)), -1, dtype=np.int64)
        for r, row in enumerate(rows):
            idx = np.asarray(row.idx, dtype=np.int64)
            at = np.minimum(np.searchsorted(sorted_f, idx), max(len(features) - 1, 0))
            hit = (sorted_f[at] == idx) & (np.asarray(row.max) > 0) if len(features) else np.zeros(len(idx), bool)
            cols = order[at[hit]]
            value[r, cols] = np.asarray(getattr(row, agg))[hit]
            peak[r, cols] = np.asarray(row.peak)[hit]
        return cls(features, value, peak)




@dataclass
class PeakToken:
    """A token a feature peaks on: in how many firing prompts of each set, and how common it is."""

    token: str
    token_id: int
    peaks_group: int  # group prompts whose peak is on this token
    peaks_baseline: int
    prompts_group: int  # group prompts containing the token at all
    prompts_baseline: int


@dataclass
class FeatureEvidence:
    """Where a feature's difference comes from, described (no verdict yet)."""

    feature: int
    direction: str  # "up" (group higher) or "down"
    auroc: float  # group over baseline, on the prompts given
    fired_group: int
    fired_baseline: int
    peak_tokens: list[PeakToken]  # most frequent peak tokens of the higher set first
    n_peak_types: int  # distinct peak tokens in the higher set
    separating_tokens: list[str]  # peak tokens that mark the higher set (> ratio x the other's share of prompts)
    separating_share: float  # share of the higher set's firing prompts that peak on one of them
    top_token: str  # most frequent peak token of the higher set
    top_token_id: int
    top_token_share: float  # of the higher set's firing prompts
    peak_position: int  # most frequent peak position in the higher set (0 = first text token)
    position_share_group: float  # share of firing group prompts peaking at peak_position
    position_share_baseline: float
    length_r: float  # rank correlation with token length within groups
    length_p: float
    length_explains: bool  # lengths differ and the correlation points the way of the difference


@dataclass
class ControlTest:
    """One controlled re-test: the group difference within strata of a possible confound."""

    name: str  # one of CONTROLS
    strata: str  # what the strata are, in words
    auroc: float  # within-strata AUROC, group over baseline (nan: no stratum holds both sets)
    p_value: float
    retained: float  # share of the unstratified effect (AUROC - 0.5) left within strata
    n_informative_group: int
    n_informative_baseline: int
    outcome: str  # survives / vanishes / weakened / inconclusive


@dataclass
class Injection:
    """The falsification test: the top peak token put into the lower set's prompts."""

    token: str
    n_injected: int  # prompts of the lower set that lacked the token and got it (see inject_token)
    auroc_before: float  # higher set over lower set (> 0.5)
    auroc_after: float  # higher set over the lower set with the token put in
    reproduced: float  # (before - after) / (before - 0.5): share of the difference the token alone makes
    example: str = ""  # one edited prompt, quoted by the verdict so a reader can see the edit is real text


@dataclass
class Generalisation:
    """Does the feature separate prompts that use none of its top distinctive words?"""

    without_tokens: list[str]  # the feature's top distinctive peak words, removed
    n_group: int  # group prompts containing none of them
    n_baseline: int
    auroc: float  # group over baseline on those prompts (nan: too few)
    p_value: float
    passes: bool


@dataclass
class Verdict:
    """Exactly one of :data:`VERDICTS`, and one plain sentence saying why."""

    feature: int
    verdict: str
    evidence: str


@dataclass
class FeatureReport:
    """Evidence, controls and verdict for one feature of one contrast."""

    evidence: FeatureEvidence
    length_control: ControlTest
    token_control: ControlTest
    position_control: ControlTest  # strata: position of the top token nearest the peak position
    reach_control: ControlTest  # strata: whether the prompt reaches the peak position
    generalisation: Generalisation
    injection: Injection | None
    verdict: Verdict

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# Closed-class words that open a noun phrase or are one. A sentence-initial token of this kind takes the
# place of the prompt's first word, which in hand-written prompts is usually of the same kind
# ("My brother was tired." + 'The' -> "The brother was tired."; "She was tired." + 'I' -> "I was tired.").
_NOUN_OPENERS = frozenset({
    "the", "a", "an", "my", "your", "his", "her", "its", "our", "their", "this", "that", "these", "those",
    "some", "any", "every", "each", "no", "i", "you", "he", "she", "it", "we", "they",
})
# Function words written in lower case inside a sentence: a sentence opener put in front of one lowers its
# capital ("The cat slept." -> "Today the cat slept."). Other capitalised words (a name, "I", "Monday")
# keep theirs, as they would inside a sentence.
_LOWER_INSIDE = (_NOUN_OPENERS - {"i"}) | frozenset({
    "there", "after", "before", "when", "while", "if", "as", "since", "because", "although", "though",
    "once", "until", "at", "in", "on", "for", "with", "by", "from", "during", "and", "but", "so", "then",
})
# The first word of a prompt (with its apostrophes: "Tom's", "I'm") and what follows it.
_FIRST_WORD = re.compile(r"(\w+(?:['’]\w+)*)(.*)", re.DOTALL)
# What may follow a first word that stands alone ("Yes, ...", "Thanks!", "Hello."): a clause mark, or
# nothing but the closing punctuation.
_STANDS_ALONE = re.compile(r"[,;:!?]|[^\w\s]*\s*$")


def inject_token(text: str, token: str, at: float, at_end: bool, at_start: bool = False) -> str:
    """Put one token's text into a prompt *in place of* what is there, so its length and the
    positions of its other tokens stay the same (an insertion would shift every later token and
    lengthen the prompt, and a position or length feature would then look lexical); the one
    exception, a sentence opener in front of the first word, is argued in :func:`_inject_first`.

    The token goes where text of its kind stands, so that the edited prompt reads as a sentence and
    holds the very token the feature peaks on: ``'Today'`` opening a sentence and ``' today'`` inside
    one are different tokens, and ``'Today'`` glued onto a word ("MyToday brother was tired.") is
    text nobody writes.

    Args:
        text: the prompt.
        token: the token's string as decoded. A word token (``' glad'``) replaces the word at ``at``
            (never the first word, whose token has no leading space), keeping the punctuation around
            it; other tokens (``','``, a word piece) are attached after that word instead, as in the
            text they come from, since there is nothing of their kind to replace.
        at: where, as a fraction of the prompt's words (matched to where the feature peaks on it).
        at_end: the feature peaks on the token at the end of prompts: it replaces the trailing
            punctuation (``'ready.'`` -> ``'ready!'``).
        at_start: the feature peaks on the token at the start of prompts: it goes to text position 0
            (see :func:`_inject_first`). A word token takes this over ``at_end`` (a one-token
            prompt is both); a punctuation mark does not.
    """
    if at_start and (token.strip()[:1].isalnum() or not at_end):
        return _inject_first(text, token)
    lead = text[: len(text) - len(text.lstrip())]  # leading spaces stay where they are, not a word
    body = text.strip()
    m = TRAILING_PUNCT.search(body)
    stem, trail = (body[: m.start()], m.group(0)) if m else (body, "")
    if at_end:
        return lead + stem + token
    words = stem.split(" ")
    # Only a word that follows a space can take a word token's place: after a quote or a bracket the
    # token would lose its leading space and be another token ('"glad' is '"', 'gl', 'ad').
    plain = [j for j in range(1, len(words)) if words[j][:1].isalnum()]
    if token.startswith(" ") and token[1:].isalnum() and plain:
        k = min(max(round(at * len(words)), 1), len(words) - 1)
        k = min(plain, key=lambda j: (abs(j - k), j))
        word = _FIRST_WORD.match(words[k])
        words[k] = token[1:] + word.group(2)  # keep punctuation attached to the replaced word
        return lead + " ".join(words) + trail
    k = min(max(round(at * len(words)), 1), len(words))
    head, rest = " ".join(words[:k]), " ".join(words[k:])
    return lead + head + token + (" " + rest if rest else "") + trail


def _inject_first(text: str, token: str) -> str:
    """Put a sentence-initial token at text position 0, where the feature peaks on it.

    Replacing the first word keeps length and positions, like every other injection, and reads as a
    sentence where that word is of the token's kind (a determiner or pronoun for one: "My brother was
    tired." + 'The' -> "The brother was tired."), stands alone ("Yes, I was tired." + 'Today' ->
    "Today, I was tired.") or is the whole prompt ("Thanks!" -> "Today!"). Elsewhere it breaks the
    sentence ("Today brother was tired."), so an opener such as 'Today' goes in front of the first
    word instead: "Today my brother was tired.". That one insertion lengthens the prompt by a token and
    shifts the later ones, which the replacing rule exists to avoid; it is the lesser harm here, because
    the token sits at position 0, which nothing shifts, and a causal model's activation there depends on
    that token alone, so the feature's peak is measured exactly where it is in the higher set. The old
    first word loses its capital only when it is a function word ("My" -> "my"), not a name or "I".

    Leading spaces go (the token brings its own: ``' Today'`` is another token than ``'Today'``). A
    prompt that opens with a quote or bracket keeps it whole after the token, with its own capital
    ('Today "My brother was tired," she said.'), since the token inside the quote would sit at
    position 1. Opening punctuation as the token (``'"'``, ``'('``) attaches to the first word.
    """
    body = text.lstrip()
    if not token.strip()[:1].isalnum():
        return token + body
    m = _FIRST_WORD.match(body)
    if m is None:  # a quotation, a number sign, a dash: nothing to replace, nothing to lower
        return token + (" " + body if body else "")
    first, rest = m.groups()
    if token.strip().lower() in _NOUN_OPENERS or _STANDS_ALONE.match(rest):
        return token + rest
    if first.istitle() and first.lower() in _LOWER_INSIDE:
        first = first.lower()
    return token + " " + first + rest


def _outcome(test: StratifiedTest, k: int, a0: float, sign: int, s: ConfoundSettings) -> tuple[float, str]:
    """(retained share, outcome) of feature k's stratified re-test against its unstratified AUROC a0."""
    a = float(test.auroc[k])
    if not np.isfinite(a):
        return float("nan"), INCONCLUSIVE
    lift0 = (a0 - 0.5) * sign
    retained = (a - 0.5) * sign / lift0 if lift0 > 0 else float("nan")
    same_way = np.sign(test.z[k]) == sign
    significant = float(test.p_value[k]) < s.alpha and same_way
    if retained >= s.retained and float(test.p_value[k]) < s.survive_p and same_way:
        return retained, SURVIVES
    if min(test.n_informative_group[k], test.n_informative_baseline[k]) < s.min_informative:
        return retained, INCONCLUSIVE
    if retained < s.retained:
        return retained, WEAKENED if significant else VANISHES
    return retained, INCONCLUSIVE


def _control(
    name: str, strata: str, test: StratifiedTest, k: int, a0: float, sign: int, s: ConfoundSettings
) -> ControlTest:
    retained, outcome = _outcome(test, k, a0, sign, s)
    return ControlTest(name, strata, float(test.auroc[k]), float(test.p_value[k]), retained,
                       int(test.n_informative_group[k]), int(test.n_informative_baseline[k]), outcome)


@dataclass
class _Side:
    """One prompt set's data, arranged for per-feature look-ups."""

    tokens: TokenizedPrompts
    acts: FeatureActivity
    matrix: np.ndarray  # [n, longest] token ids, -1 padded
    presence: np.ndarray  # [n, vocab] bool
    peak_tok: np.ndarray  # [n, n_features] token id at the peak, -1 where silent

    @classmethod
    def build(cls, tokens: TokenizedPrompts, acts: FeatureActivity, col: dict[int, int]) -> _Side:
        if acts.value.shape[0] != len(tokens):
            raise ValueError(f"{acts.value.shape[0]} rows of activity for {len(tokens)} prompts")
        if np.any(acts.peak >= tokens.lengths[:, None]):
            raise ValueError("a peak position lies beyond its prompt's text tokens (BOS must not be counted)")
        matrix = tokens.token_matrix()
        rows = np.arange(len(tokens))[:, None]
        peak_tok = np.where(acts.peak >= 0, matrix[rows, np.maximum(acts.peak, 0)], -1)
        return cls(tokens, acts, matrix, token_counts(tokens, col) > 0, peak_tok)


@dataclass
class _Peaks:
    """One feature's peaks, oriented: ``hi`` is the set (0 group, 1 baseline) where it is higher."""

    sign: int  # +1 group higher, -1 baseline higher, 0 no difference
    hi: int
    lo: int
    fired_hi: np.ndarray  # [n_hi] bool
    counts_hi: Counter  # peak token id -> firing prompts of the higher set peaking on it
    counts_lo: Counter
    top: int  # most frequent peak token of the higher set (-1: it never fires there)
    p_star: int  # most frequent peak position of the higher set
    ordered: list[int]  # the higher set's peak tokens, most frequent first
    separating: list[int]  # those that mark the higher set (> separating_ratio x the other set's share of prompts)


@dataclass
class _Sets:
    """Both prompt sets of one contrast (index 0 the group, 1 the baseline), arranged for the evidence."""

    features: np.ndarray  # [n_features] feature ids
    sides: tuple[_Side, _Side]
    col: dict[int, int]  # token id -> vocabulary column
    spell: dict[int, str]  # token id -> its string (first spelling seen)
    doc: tuple[np.ndarray, np.ndarray]  # per set, [vocab] prompts containing each token
    values: np.ndarray  # [n_group + n_baseline, n_features] the tested statistic, both sets stacked
    in_group: np.ndarray  # [n_group + n_baseline] bool
    lengths: np.ndarray  # [n_group + n_baseline] text tokens per prompt
    a0: np.ndarray  # [n_features] AUROC of group over baseline on all prompts

    @classmethod
    def build(cls, group: TokenizedPrompts, baseline: TokenizedPrompts, group_acts: FeatureActivity,
              baseline_acts: FeatureActivity) -> _Sets:
        col, vocab_ids, vocab_strs = vocabulary(group, baseline)
        sides = (_Side.build(group, group_acts, col), _Side.build(baseline, baseline_acts, col))
        return cls(
            group_acts.features, sides, col, dict(zip(vocab_ids, vocab_strs)),
            (sides[0].presence.sum(axis=0), sides[1].presence.sum(axis=0)),
            np.concatenate([group_acts.value, baseline_acts.value]),
            np.r_[np.ones(len(group), bool), np.zeros(len(baseline), bool)],
            np.r_[group.lengths, baseline.lengths], auroc(group_acts.value, baseline_acts.value),
        )


@dataclass
class _Length:
    """How length relates to the sets and to each feature."""

    p: float  # Mann-Whitney p of the two sets' token lengths
    sign: int  # +1 when group prompts are longer on average, -1 shorter, 0 equal
    r: np.ndarray  # [n_features] rank correlation with length within the sets
    r_p: np.ndarray


def explain_features(
    group: TokenizedPrompts,
    baseline: TokenizedPrompts,
    group_acts: FeatureActivity,
    baseline_acts: FeatureActivity,
    group_name: str = "group",
    baseline_name: str = "baseline",
    encode: Encoder | None = None,
    settings: ConfoundSettings | None = None,
) -> list[FeatureReport]:
    """Evidence, controlled re-tests and a verdict for each feature in ``group_acts.features``.

    Pass the features Chapter 2 found significant and replicated, and *all* prompts of both sets
    (discovery and held-out): the controls re-test features already selected, and every prompt
    adds information to the strata.

    Args:
        group, baseline: the sets' text tokens (BOS excluded).
        group_acts, baseline_acts: the features' per-prompt statistic and peak position in each set
            (same features, same order).
        encode: model access for the injection test: ``encode(texts, features) -> [n_texts,
            n_features]``, the same per-prompt statistic as ``FeatureActivity.value``. Without it the
            lexical verdict rests on the token control alone.
        settings: thresholds (defaults documented on :class:`~mechinterp.meaning.options.ConfoundSettings`).

    Returns:
        One :class:`FeatureReport` per feature, in input order.
    """
    s = settings or ConfoundSettings()
    if not np.array_equal(group_acts.features, baseline_acts.features):
        raise ValueError("group_acts and baseline_acts must describe the same features in the same order")
    if len(group_acts.features) == 0:
        return []
    sets = _Sets.build(group, baseline, group_acts, baseline_acts)
    ng = len(group)
    length = _Length(
        float(mann_whitney(sets.lengths[:ng, None].astype(float), sets.lengths[ng:, None].astype(float))[1][0]),
        int(np.sign(group.lengths.mean() - baseline.lengths.mean())),
        *within_group_rank_correlation(sets.values, sets.lengths, sets.in_group),
    )
    facts = [_peaks(sets, k, s) for k in range(len(sets.features))]
    tests = (van_elteren(sets.values, sets.in_group, sets.lengths),
             *(van_elteren(sets.values, sets.in_group, strata) for strata in _control_strata(sets, facts)))
    reports = [_feature_report(sets, k, fk, length, tests, s) for k, fk in enumerate(facts)]
    if encode is not None and s.injection != "none":
        _run_injections(reports, facts, sets, encode, s)
    for rep in reports:
        rep.verdict = decide(rep, (group_name, baseline_name), s)
    return reports


def _peaks(sets: _Sets, k: int, s: ConfoundSettings) -> _Peaks:
    """Feature ``k``'s peaks in the set where it is higher (and in the other set)."""
    sign = 1 if sets.a0[k] > 0.5 else -1 if sets.a0[k] < 0.5 else 0
    hi, lo = (0, 1) if sign >= 0 else (1, 0)
    side_hi, side_lo = sets.sides[hi], sets.sides[lo]
    fired_hi = side_hi.acts.peak[:, k] >= 0
    counts_hi = Counter(side_hi.peak_tok[fired_hi, k].tolist())
    counts_lo = Counter(side_lo.peak_tok[side_lo.acts.peak[:, k] >= 0, k].tolist())
    if counts_hi:
        top = min(counts_hi, key=lambda t: (-counts_hi[t], t))
        pos_counts = Counter(side_hi.acts.peak[fired_hi, k].tolist())
        p_star = min(pos_counts, key=lambda q: (-pos_counts[q], q))
    else:
        top, p_star = -1, 0
    ordered = sorted(counts_hi, key=lambda t: (-counts_hi[t], t))
    n_hi, n_lo = len(side_hi.tokens), len(side_lo.tokens)
    doc, col = sets.doc, sets.col
    separating = [t for t in ordered if doc[hi][col[t]] / n_hi > s.separating_ratio * doc[lo][col[t]] / n_lo]
    if separating:
        # A share ratio alone is noise when one set is small: 2 of 30 baseline prompts against 20% of the
        # group looks like "3x", yet such a word can be as common in both. A word the other set uses must
        # be significantly more common on this side; one it never uses (a concept's rare words, each in a
        # few prompts) keeps the ratio test alone.
        k_hi = np.array([doc[hi][col[t]] for t in separating])
        k_lo = np.array([doc[lo][col[t]] for t in separating])
        p = fisher_greater(k_hi, n_hi, k_lo, n_lo)
        separating = [t for t, kl, pt in zip(separating, k_lo, p) if kl == 0 or pt < s.alpha]
    return _Peaks(sign, hi, lo, fired_hi, counts_hi, counts_lo, top, p_star, ordered, separating)


def _control_strata(sets: _Sets, facts: list[_Peaks]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[n_prompts, n_features]`` strata of the token, position and reach controls.

    Token control: contains the top token or not. Position control: where the top token sits (its
    occurrence nearest the peak position), or absent. Reach control: prompt long enough to have the
    peak position at all.
    """
    token, position, reach = (np.zeros((len(sets.in_group), len(facts)), dtype=np.int64) for _ in range(3))
    for k, fk in enumerate(facts):
        off = 0
        for side in sets.sides:
            rows = slice(off, off + len(side.tokens))
            off += len(side.tokens)
            if fk.top >= 0:
                token[rows, k] = side.presence[:, sets.col[fk.top]]
                hits = side.matrix == fk.top
                offset = np.abs(np.arange(side.matrix.shape[1])[None, :] - fk.p_star)
                dist = np.where(hits, offset, np.iinfo(np.int64).max)
                position[rows, k] = np.where(hits.any(axis=1), dist.argmin(axis=1), -1)
            reach[rows, k] = side.tokens.lengths > fk.p_star
    return token, position, reach


def _feature_report(sets: _Sets, k: int, fk: _Peaks, length: _Length, tests: tuple[StratifiedTest, ...],
                    s: ConfoundSettings) -> FeatureReport:
    """Feature ``k``'s evidence, its four controls and its generalisation (the verdict comes later)."""
    evidence = _evidence(sets, k, fk, length, s)
    top_s = repr(sets.spell.get(fk.top, ""))
    # p_star indexes text tokens; the words show the model's position (BOS = 0), as every chapter does.
    strata = ("prompts of equal token length", f"prompts with / without {top_s}",
              f"prompts with {top_s} at the same position",
              f"prompts that reach / do not reach position {model_position(fk.p_star)}")
    controls = [_control(name, words, test, k, sets.a0[k], fk.sign, s)
                for name, words, test in zip(CONTROLS, strata, tests)]
    return FeatureReport(evidence, *controls, _generalisation(sets, k, fk, s), None,
                         Verdict(evidence.feature, "", ""))


def _evidence(sets: _Sets, k: int, fk: _Peaks, length: _Length, s: ConfoundSettings) -> FeatureEvidence:
    """Where feature ``k``'s difference comes from: its peak tokens and positions, and length."""
    spell, doc, col = sets.spell, sets.doc, sets.col
    side_hi, side_lo = sets.sides[fk.hi], sets.sides[fk.lo]
    peaks_by_side = (fk.counts_hi, fk.counts_lo) if fk.hi == 0 else (fk.counts_lo, fk.counts_hi)
    peak_tokens = [
        PeakToken(spell[t], t, peaks_by_side[0].get(t, 0), peaks_by_side[1].get(t, 0),
                  int(doc[0][col[t]]), int(doc[1][col[t]]))
        for t in fk.ordered[: s.top_tokens]
    ]
    firing = [int((sd.acts.peak[:, k] >= 0).sum()) for sd in sets.sides]
    pos_hi = side_hi.acts.peak[fk.fired_hi, k]
    share_hi = float((pos_hi == fk.p_star).mean()) if len(pos_hi) else 0.0
    lo_peaks = side_lo.acts.peak[side_lo.acts.peak[:, k] >= 0, k]
    share_lo = float((lo_peaks == fk.p_star).mean()) if len(lo_peaks) else 0.0
    n_fired_hi = max(int(fk.fired_hi.sum()), 1)
    length_explains = bool(
        length.p < s.alpha and length.sign != 0 and length.r_p[k] < s.length_corr_p
        and np.sign(length.r[k]) * length.sign == fk.sign
    )
    return FeatureEvidence(
        feature=int(sets.features[k]), direction="up" if fk.sign >= 0 else "down", auroc=float(sets.a0[k]),
        fired_group=firing[0], fired_baseline=firing[1], peak_tokens=peak_tokens,
        n_peak_types=len(fk.counts_hi), separating_tokens=[spell[t] for t in fk.separating],
        separating_share=sum(fk.counts_hi[t] for t in fk.separating) / n_fired_hi,
        top_token=spell.get(fk.top, ""), top_token_id=int(fk.top),
        top_token_share=fk.counts_hi[fk.top] / n_fired_hi if fk.top >= 0 else 0.0,
        peak_position=int(fk.p_star),
        position_share_group=share_hi if fk.hi == 0 else share_lo,
        position_share_baseline=share_lo if fk.hi == 0 else share_hi,
        length_r=float(length.r[k]), length_p=float(length.r_p[k]), length_explains=length_explains,
    )


def _generalisation(sets: _Sets, k: int, fk: _Peaks, s: ConfoundSettings) -> Generalisation:
    """Drop the top distinctive words (covering ``generalisation_cover`` of the distinctive peaks, at
    least one word kept back); test the prompts of both sets that contain none of them."""
    spell, separating, counts_hi, hi, lo = sets.spell, fk.separating, fk.counts_hi, fk.hi, fk.lo
    if len(separating) < 2:
        return Generalisation([spell[t] for t in separating], 0, 0, float("nan"), 1.0, False)
    total = sum(counts_hi[t] for t in separating)
    held, covered = [], 0
    for t in separating[:-1]:  # keep at least one distinctive word for the prompts left over
        held.append(t)
        covered += counts_hi[t]
        if covered >= s.generalisation_cover * total:
            break
    cols = [sets.col[t] for t in held]
    keep = [~sd.presence[:, cols].any(axis=1) for sd in sets.sides]
    x, y = sets.sides[hi].acts.value[keep[hi], k], sets.sides[lo].acts.value[keep[lo], k]
    n_x, n_y = len(x), len(y)
    counts = (n_x, n_y) if hi == 0 else (n_y, n_x)
    if min(n_x, n_y) < s.generalisation_min:
        return Generalisation([spell[t] for t in held], *counts, float("nan"), 1.0, False)
    u, p = mann_whitney(x[:, None], y[:, None])
    a_hi = float(u[0] / (n_x * n_y))  # higher set over lower set
    passes = a_hi >= s.generalisation_auroc and float(p[0]) < s.alpha
    a = a_hi if hi == 0 else 1.0 - a_hi
    return Generalisation([spell[t] for t in held], *counts, a, float(p[0]), bool(passes))


def _is_concept(rep: FeatureReport, s: ConfoundSettings) -> bool:
    """Several distinctive peak words, generalises to prompts without the top ones, and survives the
    token and position controls; the length control may instead be inconclusive (lengths that
    barely overlap cannot be stratified) when length does not explain the feature either."""
    e = rep.evidence
    return (
        len(e.separating_tokens) >= s.min_separating
        and e.separating_share >= s.separating_share
        and rep.generalisation.passes
        and (rep.length_control.outcome == SURVIVES
             or (rep.length_control.outcome == INCONCLUSIVE and not e.length_explains))
        and rep.token_control.outcome == SURVIVES
        and rep.position_control.outcome == SURVIVES
        and rep.reach_control.outcome == SURVIVES
    )


def _run_injections(
    reports: list[FeatureReport], facts: list[_Peaks], sets: _Sets, encode: Encoder, s: ConfoundSettings
) -> None:
    """Put each candidate feature's top peak token into the lower set's prompts that lack it, encode
    all edited texts in one call (a text shared by several features is encoded once), and store
    how much of the difference the token alone reproduces."""
    jobs = [job for k, rep in enumerate(reports) if (job := _injection_job(k, rep, facts[k], sets, s)) is not None]
    if not jobs:
        return
    unique = sorted({t for *_, texts in jobs for t in texts})
    index = {t: i for i, t in enumerate(unique)}
    feats = np.array(sorted({int(reports[k].evidence.feature) for k, _, _, texts in jobs if texts}), dtype=np.int64)
    fcol = {int(f): j for j, f in enumerate(feats)}
    encoded = np.asarray(encode(unique, feats), dtype=np.float64) if unique else np.zeros((0, len(feats)))
    if encoded.shape != (len(unique), len(feats)):
        raise ValueError(f"encode returned shape {encoded.shape}, expected {(len(unique), len(feats))}")
    for k, rows, lacking, texts in jobs:
        hi, lo = facts[k].hi, facts[k].lo
        rep = reports[k]
        x = sets.sides[hi].acts.value[:, k]
        y = sets.sides[lo].acts.value[:, k].copy()
        if len(texts):
            y[lacking] = encoded[[index[t] for t in texts], fcol[rep.evidence.feature]]
        y = y[rows]
        before = float(auroc(x[:, None], sets.sides[lo].acts.value[rows, k][:, None])[0])
        after = float(auroc(x[:, None], y[:, None])[0])
        reproduced = (before - after) / (before - 0.5) if before > 0.5 else float("nan")
        rep.injection = Injection(rep.evidence.top_token, len(lacking), before, after, reproduced,
                                  texts[0] if len(texts) else "")


def _injection_job(k: int, rep: FeatureReport, fk: _Peaks, sets: _Sets,
                   s: ConfoundSettings) -> tuple[int, np.ndarray, np.ndarray, list[str]] | None:
    """``(k, lower-set rows compared, those edited, edited texts)`` for feature ``k``, or None when it is not tested:
    no difference, a concept or a survived token control (with ``injection="candidates"``), or a top
    token that is no text (whitespace, part of a character)."""
    if fk.top < 0 or fk.sign == 0:
        return None
    if s.injection == "candidates" and (_is_concept(rep, s) or rep.token_control.outcome == SURVIVES):
        return None
    token = rep.evidence.top_token
    if not token.strip() or _PIECE_LABEL.search(token):
        return None
    side_hi, side_lo = sets.sides[fk.hi], sets.sides[fk.lo]
    # Put the token where the feature peaks on it in the higher set: at the start, at the end, or that far
    # into the prompt.
    on_top = fk.fired_hi & (side_hi.peak_tok[:, k] == fk.top)
    pos = side_hi.acts.peak[on_top, k]
    n_tok = side_hi.tokens.lengths[on_top]
    at = float(np.median(pos / n_tok))
    at_end = bool(np.mean(pos == n_tok - 1) >= 0.5)
    at_start = bool(np.mean(pos == 0) >= 0.5)
    if not at_start and token[:1].isupper():
        # A capitalised token without a leading space is a word of its own where it follows no letter or
        # digit (first, or after a quote or a line break): it opens the edited prompt too, rather than
        # being glued onto a word ("MyToday"). After a letter or digit it is a piece of a word ('5GB')
        # and attaches like one.
        strs = side_hi.tokens.strs
        opens = [p == 0 or not strs[i][p - 1][-1:].isalnum() for i, p in zip(np.flatnonzero(on_top), pos)]
        at_start = bool(np.mean(opens) >= 0.5)
    rows = np.arange(len(side_lo.tokens))
    if len(rows) > s.injection_prompts:
        # A seeded sample of the lower set bounds the model runs (2,000 prompts x every candidate feature
        # would be tens of thousands of edited prompts); the share of the gap the token closes is
        # estimated on it, before and after alike.
        rows = np.sort(np.random.default_rng(int(rep.evidence.feature)).choice(rows, s.injection_prompts, replace=False))
    lacking = rows[~(side_lo.matrix[rows] == fk.top).any(axis=1)]
    texts = side_lo.tokens.texts
    return k, rows, lacking, [inject_token(texts[i], token, at, at_end, at_start) for i in lacking]


# --------------------------------------------------------------------------------------------------
# The verdict


def decide(rep: FeatureReport, names: tuple[str, str], settings: ConfoundSettings | None = None) -> Verdict:
    """The verdict and its one-sentence evidence for one feature (see the module docstring).

    Order: ``concept`` first (it must pass every test, so nothing else can be mistaken for it), then
    the confounds from the most specific to the least: one token, one position, length; ``context``
    for what remains.
    """
    s = settings or ConfoundSettings()
    e = rep.evidence
    if e.auroc == 0.5 or not np.isfinite(e.auroc):
        return Verdict(e.feature, "", "no difference between the sets on these prompts")
    o = _Oriented.of(e, names)
    for verdict_if in (_concept_verdict, _lexical_verdict, _positional_verdict, _length_verdict):
        verdict = verdict_if(rep, o, s)
        if verdict is not None:
            return verdict
    return _context_verdict(rep, o, s)


@dataclass
class _Oriented:
    """One feature's two sets named by where it is higher, for the verdict's sentences."""

    hi_name: str
    lo_name: str
    hi_idx: int  # 0: higher in the group, 1: higher in the baseline

    @classmethod
    def of(cls, e: FeatureEvidence, names: tuple[str, str]) -> _Oriented:
        hi_name, lo_name = names if e.direction == "up" else names[::-1]
        return cls(hi_name, lo_name, 0 if e.direction == "up" else 1)

    def higher(self, group_value, baseline_value):
        """Of a (group, baseline) pair of numbers, the higher set's."""
        return group_value if self.hi_idx == 0 else baseline_value

    def lower(self, group_value, baseline_value):
        return baseline_value if self.hi_idx == 0 else group_value

    def auroc(self, group_over_baseline: float) -> float:
        """An AUROC of group over baseline, turned into higher set over lower set."""
        return group_over_baseline if self.hi_idx == 0 else 1.0 - group_over_baseline

    def prompts_with(self, t: PeakToken) -> str:
        return (f"{self.higher(t.prompts_group, t.prompts_baseline)} {self.hi_name} and "
                f"{self.lower(t.prompts_group, t.prompts_baseline)} {self.lo_name} prompts")


def _token_explains(rep: FeatureReport) -> bool:
    return rep.token_control.outcome in (VANISHES, WEAKENED)


def _reproduces(rep: FeatureReport, s: ConfoundSettings) -> bool:
    """The injected token alone reproduces at least ``injection_reproduces`` of the difference."""
    inj = rep.injection
    return bool(inj is not None and np.isfinite(inj.reproduced) and inj.reproduced >= s.injection_reproduces)


def _reproduced_words(inj: Injection, o: _Oriented, only: bool = False) -> str:
    """How much of the difference the injected token reproduces, as the verdicts print it.

    The measured share is printed as it is between 0 and 100%. Above 100% the edited prompts of the
    lower set now score *above* the higher set (AUROC after < 0.5): the token alone gives them more
    than the higher set has, e.g. because the higher set lacks the token in some of its prompts, or
    because the edit puts it where the feature responds more strongly. For the verdict that is "all
    of the difference", so the sentence says 100%, marked as capped and followed by the measured value,
    so an overshoot is never read as an exact match. Below 0 the edits moved the lower set further
    from the higher set; "none of it" is said likewise, with the value measured.
    """
    r, lo, hi = inj.reproduced, o.lo_name, o.hi_name
    if not np.isfinite(r):
        return f"no measurable share (the {lo} prompts compared show no difference to reproduce)"
    if round(r * 100) > 100:
        return (f"100% of the difference (capped: measured {r:.0%}, the edited {lo} prompts overshoot "
                f"the {hi} prompts)")
    if round(r * 100) < 0:
        return (f"none of the difference (measured {r:.0%}: the edited {lo} prompts move away from "
                f"the {hi} prompts)")
    return f"{'only ' if only else ''}{r:.0%} of the difference"


def _concept_verdict(rep: FeatureReport, o: _Oriented, s: ConfoundSettings) -> Verdict | None:
    if not _is_concept(rep, s):
        return None
    e, g = rep.evidence, rep.generalisation
    shown = ", ".join(f"{t.token!r} {o.higher(t.peaks_group, t.peaks_baseline)}"
                      for t in e.peak_tokens if t.token in e.separating_tokens[:4])
    return Verdict(e.feature, CONCEPT, (
        f"peaks on {len(e.separating_tokens)} different words that mark {o.hi_name} prompts ({shown}, ...); it still "
        f"separates the {o.higher(g.n_group, g.n_baseline)} {o.hi_name} prompts without "
        f"{', '.join(map(repr, g.without_tokens))} (AUROC {o.auroc(g.auroc):.2f}) "
        f"and survives the length, token and position controls"
    ))


EXAMPLE_CHARS = 60  # an edited prompt quoted in a verdict is cut to this length


def _as_in(inj: Injection) -> str:
    """' (as in "Today my brother was tired.")': the edit the measured share comes from, as text."""
    if not inj.example:
        return ""
    text = inj.example if len(inj.example) <= EXAMPLE_CHARS else inj.example[:EXAMPLE_CHARS - 3] + "..."
    return f' (as in "{text}")'


def _lexical_verdict(rep: FeatureReport, o: _Oriented, s: ConfoundSettings) -> Verdict | None:
    """One token carries it: most peaks on it, and the token control or the injection shows it."""
    e, inj = rep.evidence, rep.injection
    reproduces = _reproduces(rep, s)
    lexical = e.top_token_share >= s.lexical_share and (
        (_token_explains(rep) and (inj is None or reproduces))
        or (rep.token_control.outcome == INCONCLUSIVE and reproduces)
    )
    if not lexical or not e.peak_tokens:
        return None
    top, top_s = e.peak_tokens[0], repr(e.top_token)
    why = (f"putting {top_s} into {o.lo_name} prompts{_as_in(inj)} reproduces {_reproduced_words(inj, o)}"
           if inj is not None else
           f"prompts with and without {top_s} show no {o.hi_name}/{o.lo_name} difference "
           f"(AUROC {o.auroc(rep.token_control.auroc):.2f})")
    return Verdict(e.feature, LEXICAL, (
        f"peaks on {top_s} in {o.higher(top.peaks_group, top.peaks_baseline)} of "
        f"{o.higher(e.fired_group, e.fired_baseline)} firing {o.hi_name} prompts; "
        f"{top_s} occurs in {o.prompts_with(top)}; {why}"
    ))


def _positional_verdict(rep: FeatureReport, o: _Oriented, s: ConfoundSettings) -> Verdict | None:
    """One absolute position carries it: most peaks there, and the position or reach control shows it."""
    e = rep.evidence
    explains = [c for c in (rep.position_control, rep.reach_control) if c.outcome in (VANISHES, WEAKENED)]
    share_hi = o.higher(e.position_share_group, e.position_share_baseline)
    share_lo = o.lower(e.position_share_group, e.position_share_baseline)
    if not (share_hi >= s.position_share and explains):
        return None
    c = max(explains, key=lambda c: c.p_value)
    fired_hi, fired_lo = o.higher(e.fired_group, e.fired_baseline), o.lower(e.fired_group, e.fired_baseline)
    gone = "the sets do not differ" if c.outcome == VANISHES else "less than half of the difference is left"
    at = model_position(e.peak_position)  # evidence indexes text tokens; shown as every chapter shows positions
    return Verdict(e.feature, POSITIONAL, (
        f"peaks at position {at} ({BOS_ZERO}) in {round(share_hi * fired_hi)} of {fired_hi} firing {o.hi_name} "
        f"prompts (and in {round(share_lo * fired_lo)} of {fired_lo} firing {o.lo_name} prompts); among {c.strata} "
        f"{gone} (AUROC {o.auroc(c.auroc):.2f}, p = {c.p_value:.2g})"
    ))


def _length_verdict(rep: FeatureReport, o: _Oriented, s: ConfoundSettings) -> Verdict | None:
    """Length carries it: it follows length within the sets, the sets differ in length, and the
    length control does not show it surviving."""
    e, c = rep.evidence, rep.length_control
    if not (e.length_explains and c.outcome != SURVIVES):
        return None
    trend = "rises" if e.length_r > 0 else "falls"
    gone = "vanishes" if c.outcome == VANISHES else "mostly goes"
    within = (
        f"among prompts of equal length the difference {gone} (AUROC {o.auroc(c.auroc):.2f})"
        if c.outcome in (VANISHES, WEAKENED)
        else "too few prompts of equal length exist in both sets to test it directly"
    )
    return Verdict(e.feature, LENGTH, (
        f"its activation {trend} with token length within both sets (rank r = {e.length_r:.2f}, "
        f"p = {e.length_p:.2g}) and the sets differ in length; {within}"
    ))


def _context_verdict(rep: FeatureReport, o: _Oriented, s: ConfoundSettings) -> Verdict:
    """None of the confounds explains it, but it is not a concept either: say which tests it failed."""
    e, inj = rep.evidence, rep.injection
    n_tok, top_s = len(e.separating_tokens), repr(e.top_token)
    reasons = []
    if n_tok < s.min_separating:
        reasons.append(f"it peaks on {n_tok} word(s) that mark {o.hi_name} prompts (a concept needs {s.min_separating})")
    elif e.separating_share < s.separating_share:
        reasons.append(f"only {e.separating_share:.0%} of its {o.hi_name} peaks are on words that mark {o.hi_name} prompts")
    elif not rep.generalisation.passes:
        reasons.append(f"it does not separate prompts without {', '.join(map(repr, rep.generalisation.without_tokens))}")
    for c in (rep.length_control, rep.token_control, rep.position_control, rep.reach_control):
        if c.outcome in (VANISHES, WEAKENED):
            reasons.append(f"the difference {c.outcome} among {c.strata}")
        elif c.outcome == INCONCLUSIVE and (c.name != "length" or e.length_explains):
            reasons.append(f"too few {c.strata} hold both sets to show it survives")
    if inj is not None and not _reproduces(rep, s) and _token_explains(rep):
        share = _reproduced_words(inj, o, only=True)
        reasons.append(f"putting {top_s} into {o.lo_name} prompts reproduces {share}")
    lead = (f"peaks mostly on {top_s}, which occurs in {o.prompts_with(e.peak_tokens[0])}" if e.peak_tokens
            else f"fires in {o.higher(e.fired_group, e.fired_baseline)} {o.hi_name} prompts")
    why_not = "; ".join(reasons or ["it does not pass the controls"])
    return Verdict(e.feature, CONTEXT, f"{lead}; not a concept: {why_not}")


def verdict_table(reports: Sequence[FeatureReport]) -> dict[int, Verdict]:
    """Feature id -> verdict, for filling Chapter 2's ``verdict`` and ``evidence`` columns (features
    not judged, i.e. not significant or not replicated, get empty cells)."""
    return {rep.evidence.feature: rep.verdict for rep in reports}
