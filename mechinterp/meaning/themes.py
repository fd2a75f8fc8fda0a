"""Which words a concept rests on, and when a group's prompts carry two themes.

A ``concept`` verdict says a feature peaks on several words that mark the group. It does not say the
words are the *intended* concept: if half of a group's "joy" prompts also mention the weather, a
weather feature passes the same test, and is reported beside the joy feature as a second concept. The
two rest on two unrelated word sets, and only the word sets show it. So every concept finding (a
feature, or a family of :mod:`mechinterp.meaning.families`) gets its word set and how many prompts of
each set contain any of its words, and:

* two or more concept findings on disjoint word sets (overlap coefficient <= :data:`DISJOINT`) are named
  as two themes; the finding whose words are in fewer of the group's prompts is the likelier topic;
* a concept whose words are in less than :data:`COVER` of the group's prompts is flagged alone too: the
  group's other prompts do not carry it, so it may stand for a topic that co-occurs with the concept;
* the learner can state the concept's words (a ``# concept: happy, glad, ...`` line in the group's
  prompt file, read by :func:`mechinterp.core.prompts.concept_words`). A concept finding with fewer
  than half of its distinctive words among them is then not a concept of the group.

Words are matched as GPT-2 writes them, without the leading space and case (``' Happy'`` matches
"happy"); a stated word that the tokenizer splits matches none of its pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mechinterp.meaning.design import TokenizedPrompts

COVER = 0.9  # a concept's words should be in nearly every prompt of its group
DISJOINT = 0.25  # two word sets sharing at most this share of the smaller are two themes
STATED_SHARE = 0.5  # with stated words: a concept needs at least half of its words among them
TOPIC = "topic?"  # the flag's short form, shown after the verdict in the terminal table


def normal(word: str) -> str:
    """A token or stated word as it is compared: no surrounding space, lower case."""
    return word.strip().lower()


@dataclass
class WordSet:
    """One concept finding's words, and how many prompts of each set contain any of them.

    Attributes:
        label: ``#1007`` or ``#12 + #345`` (a family).
        features: the finding's feature ids.
        words: its distinctive words (token strings, e.g. ``' happy'``).
        n_group, n_baseline: prompts of each set containing at least one of the words.
        size_group, size_baseline: prompts in each set.
        pairs_differ: with paired prompts, pairs whose group line has one of the words and whose baseline
            line has none (None: not paired).
        stated_share: the share of its words among the stated concept words (None: none stated).
        flag: "" or why the finding may not be the group's concept (a second theme, low coverage).
    """

    label: str
    features: tuple[int, ...]
    words: list[str]
    n_group: int
    n_baseline: int
    size_group: int
    size_baseline: int
    pairs_differ: int | None = None
    stated_share: float | None = None
    flag: str = ""

    @property
    def coverage(self) -> float:
        return self.n_group / max(self.size_group, 1)


def _contains(tp: TokenizedPrompts, words: set[str]) -> np.ndarray:
    """``[n_prompts]`` bool: the prompt has a token among ``words`` (normalised)."""
    return np.array([any(normal(t) in words for t in strs) for strs in tp.strs], dtype=bool)


def word_set(label: str, features: Sequence[int], words: Sequence[str], group: TokenizedPrompts,
             baseline: TokenizedPrompts, paired: bool, stated: Sequence[str] | None) -> WordSet:
    """The word set of one concept finding, counted in both prompt sets."""
    norm = {normal(w) for w in words}
    in_g, in_b = _contains(group, norm), _contains(baseline, norm)
    pairs = int((in_g & ~in_b).sum()) if paired and len(in_g) == len(in_b) else None
    share = None
    if stated:
        said = {normal(w) for w in stated}
        share = sum(normal(w) in said for w in words) / max(len(words), 1)
    return WordSet(label, tuple(int(f) for f in features), list(words), int(in_g.sum()), int(in_b.sum()),
                   len(group), len(baseline), pairs, share)


def disjoint(a: WordSet, b: WordSet) -> bool:
    wa, wb = {normal(w) for w in a.words}, {normal(w) for w in b.words}
    return len(wa & wb) <= DISJOINT * min(len(wa), len(wb))


def flag_themes(sets: list[WordSet], group: str) -> bool:
    """Set each word set's ``flag``; True when two or more rest on disjoint words (two themes).

    With two themes, the one in most of the group's prompts is taken as the concept and the others are
    flagged; any set in less than :data:`COVER` of the group's prompts is flagged as well.
    """
    live = [w for w in sets if w.stated_share is None or w.stated_share >= STATED_SHARE]
    themes = any(disjoint(a, b) for i, a in enumerate(live) for b in live[i + 1:])
    main = max(live, key=lambda w: (w.coverage, -w.n_baseline)) if live else None
    for w in sets:
        if w.stated_share is not None and w.stated_share < STATED_SHARE:
            w.flag = f"rests on words other than the stated concept words of {group}"
        elif themes and w is not main and disjoint(w, main):
            w.flag = (f"a second theme: its words are in {w.n_group} of {w.size_group} {group} prompts, "
                      f"those of {main.label} in {main.n_group}; likely a topic that co-occurs with the concept")
        elif w.coverage < COVER:
            w.flag = (f"its words are in only {w.n_group} of {w.size_group} {group} prompts: it may stand for a "
                      f"topic that co-occurs with the concept rather than the concept")
    return themes


def advice(sets: list[WordSet], group: str, paired: bool, stated: bool) -> list[str]:
    """What to do about flagged word sets, one sentence each."""
    if not any(w.flag for w in sets):
        return []
    out = []
    if not stated:
        out.append(f"State the concept's words with a line '# concept: word, word, ...' in {group}.txt: a "
                   f"finding that rests on other words is then not a concept of {group}.")
    if paired:
        for w in sets:
            if w.flag and w.pairs_differ is not None:
                out.append(f"{w.label}'s words differ within {w.pairs_differ} of {w.size_group} pairs"
                           + (": the pairs do not remove them; rewrite those lines so that only the concept "
                              "word changes." if w.pairs_differ else ": the pairs hold them constant."))
    else:
        out.append("Minimal pairs remove a co-occurring topic: write line i of the group as line i of the "
                   "baseline with only the concept word changed, and run with --paired (it lists what differs "
                   "within each pair).")
    return out
