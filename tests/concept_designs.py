"""Prompt designs for the later structures of the GPT-2-faithful world (tests/gpt2_world.py).

Why it exists: the world plants four structures that real SAEs and real prompt sets have, and each
needs prompt sets that show it, with a known answer:

* :func:`split_design`: a fear group whose lines use the words of either half of the split fear concept
  (``FEAR_WORDS_A`` for the feature ``fear_a``, ``FEAR_WORDS_B`` for ``fear_b``), half and half;
* :func:`topic_design`: a joy group in which most lines also mention the weather (the topic feature),
  as hand-written sets drift towards one topic;
* :func:`opener_design`: a joy group in which most lines open with 'Today', a template word;
* :func:`carry_design`: a sad group, the sad word never last, so the tokens it carries over to exist;
* :func:`mixed_design`: all of them at once.

Every line is a natural English sentence from one of several templates, with varied subjects and a
slot word (neutral in the baseline, the group's word otherwise). Every line also has one prepositional
phrase: an event ("after the meeting") or, where a design asks for the topic, the weather ("in the
rain"), three GPT-2 tokens either way, so the topic changes no length. ``control`` is a null group
drawn exactly like the baseline. The designs are deterministic from ``seed``, no line appears twice
in a design, and shares are exact (``round(n * share)`` lines, spread at random).

Run ``python -m tests.concept_designs`` to print a few lines of each design.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tests.gpt2_world import (
    ANGRY_WORDS,
    FEAR_WORDS_A,
    FEAR_WORDS_B,
    HAPPY_WORDS,
    OPENER,
    SAD_WORDS,
    TOPIC_WORDS,
)

SUBJECTS = ("My brother", "My sister", "The teacher", "Our neighbour", "The driver", "His mother", "Her uncle",
            "The old man", "A student", "The nurse", "My friend", "The manager")
# Slot words of the baseline: feelings the world did not plant.
NEUTRAL_WORDS = ("tired", "busy", "quiet", "ready", "calm", "hungry", "cold", "sleepy", "serious", "careful",
                 "awake", "curious")
# The planted happy words that read as adjectives after "was" (HAPPY_WORDS also has nouns: joy, delight).
JOY_WORDS = ("happy", "thrilled", "delighted", "glad", "cheerful", "joyful", "grateful", "excited", "pleased")
EVENT_PHRASES = ("after the meeting", "during the lecture", "after the game", "before the interview",
                 "after the film", "during the lesson")
# One phrase per weather noun of TOPIC_WORDS, in the same order.
TOPIC_PHRASES = ("in the rain", "after the storm", "in the wind", "in the snow", "in the fog", "despite the weather")
# {s}: the subject, {w}: the slot word, {x}: the phrase. The slot word is never last. Templates that
# open with the subject can take the opener ("Today my brother was ...").
TEMPLATES = (
    "{s} was {w} {x} and went straight home.",
    "{s} felt {w} {x}, so we talked for a while.",
    "{s} looked {w} when we met at the station {x}.",
    "{s} seemed {w} {x} and did not say much.",
    "{s} was {w} about the letter {x} and read it twice.",
    "{s} sounded {w} on the phone {x}, and then the line went quiet.",
    "When we got back {x}, {l} was {w} and waved at us.",
    "We could tell that {l} was {w} {x} from the way {p} walked.",
)
SUBJECT_FIRST = TEMPLATES[:6]
PRONOUN = {"My brother": "he", "The old man": "he", "Her uncle": "he", "My sister": "she", "His mother": "she"}


def _check_words() -> None:
    """Every group word is planted where its design says, and no neutral word is planted anywhere."""
    if not set(JOY_WORDS) <= set(HAPPY_WORDS):
        raise RuntimeError(f"{sorted(set(JOY_WORDS) - set(HAPPY_WORDS))} are not planted happy words")
    planted = set(HAPPY_WORDS + ANGRY_WORDS + FEAR_WORDS_A + FEAR_WORDS_B + SAD_WORDS + TOPIC_WORDS)
    neutral = set(NEUTRAL_WORDS) | {w for phrase in EVENT_PHRASES for w in phrase.split()}
    if neutral & planted:
        raise RuntimeError(f"{sorted(neutral & planted)} are planted words")
    if [p.split()[-1] for p in TOPIC_PHRASES] != list(TOPIC_WORDS):
        raise RuntimeError("TOPIC_PHRASES must name the weather nouns of TOPIC_WORDS, in order")


class _Writer:
    """Lines of one design: one random stream, and the lines written so far (none may repeat)."""

    def __init__(self, seed: int):
        _check_words()
        self.rng = np.random.default_rng(seed)
        self.seen: set[str] = set()

    def pick(self, options: tuple[str, ...]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def flags(self, n: int, share: float) -> list[bool]:
        """Exactly ``round(n * share)`` of ``n`` lines flagged, at random places."""
        out = np.zeros(n, dtype=bool)
        out[: round(n * share)] = True
        return [bool(f) for f in self.rng.permutation(out)]

    def line(self, word: str, topic: bool = False, opener: bool = False, subject_first: bool = False) -> str:
        """A new sentence with ``word`` in the slot, a weather phrase if ``topic``, 'Today ...' if ``opener``
        (the opener and ``subject_first`` take only the templates that open with the subject)."""
        for _ in range(1000):
            subject = self.pick(SUBJECTS)
            template = self.pick(SUBJECT_FIRST if opener or subject_first else TEMPLATES)
            phrase = self.pick(TOPIC_PHRASES if topic else EVENT_PHRASES)
            text = template.format(s=subject, l=subject[0].lower() + subject[1:], w=word, x=phrase,
                                   p=PRONOUN.get(subject, "they"))
            if opener:
                text = f"{OPENER} {text[0].lower()}{text[1:]}"
            if text not in self.seen:
                self.seen.add(text)
                return text
        raise RuntimeError("the templates gave no new sentence in 1000 draws")

    def group(self, words: tuple[str, ...] | Callable[[int], tuple[str, ...]], n: int, topic_share: float = 0.0,
              opener_share: float = 0.0, subject_first: bool = False) -> list[str]:
        """``n`` lines, each with one word of ``words`` (or of ``words(i)`` for line i)."""
        topics, openers = self.flags(n, topic_share), self.flags(n, opener_share)
        return [self.line(self.pick(words(i) if callable(words) else words), topics[i], openers[i], subject_first)
                for i in range(n)]

    def halves(self, n: int, first: tuple[str, ...], second: tuple[str, ...]) -> Callable[[int], tuple[str, ...]]:
        """Line i's word list: ``first`` for half the lines, ``second`` for the others, at random places."""
        sides = self.flags(n, 0.5)
        return lambda i: first if sides[i] else second


def split_design(n: int = 60, seed: int = 0) -> dict[str, list[str]]:
    """baseline, fear (one fear word a line: half from FEAR_WORDS_A, half from FEAR_WORDS_B), control."""
    w = _Writer(seed)
    baseline = w.group(NEUTRAL_WORDS, n)
    fear = w.group(w.halves(n, FEAR_WORDS_A, FEAR_WORDS_B), n)
    return {"baseline": baseline, "fear": fear, "control": w.group(NEUTRAL_WORDS, n)}


def topic_design(n: int = 60, topic_share: float = 0.7, baseline_topic_share: float = 0.05,
                 seed: int = 0) -> dict[str, list[str]]:
    """baseline and control (the weather in ``baseline_topic_share`` of the lines), joy (a happy word in
    every line, the weather in ``topic_share`` of them)."""
    w = _Writer(seed)
    baseline = w.group(NEUTRAL_WORDS, n, baseline_topic_share)
    joy = w.group(JOY_WORDS, n, topic_share)
    return {"baseline": baseline, "joy": joy, "control": w.group(NEUTRAL_WORDS, n, baseline_topic_share)}


def opener_design(n: int = 60, share: float = 0.7, seed: int = 0) -> dict[str, list[str]]:
    """baseline ("My brother was tired ..."), joy (a happy word in every line, and ``share`` of the lines
    open with 'Today': "Today my brother was glad ..."), control. Every line opens with its subject, so
    the opener is the only systematic difference besides the happy words."""
    w = _Writer(seed)
    baseline = w.group(NEUTRAL_WORDS, n, subject_first=True)
    joy = w.group(JOY_WORDS, n, opener_share=share, subject_first=True)
    return {"baseline": baseline, "joy": joy, "control": w.group(NEUTRAL_WORDS, n, subject_first=True)}


def carry_design(n: int = 60, seed: int = 0) -> dict[str, list[str]]:
    """baseline, sad (one sad word a line, never the last word: the tokens after it exist), control."""
    w = _Writer(seed)
    baseline = w.group(NEUTRAL_WORDS, n)
    sad = w.group(SAD_WORDS, n)
    return {"baseline": baseline, "sad": sad, "control": w.group(NEUTRAL_WORDS, n)}


def mixed_design(n: int = 60, topic_share: float = 0.7, opener_share: float = 0.5,
                 seed: int = 0) -> dict[str, list[str]]:
    """All structures at once: baseline; joy with the weather in ``topic_share`` and 'Today' in
    ``opener_share`` of its lines (the opener only on subject-first templates); fear (split, half and
    half); sad; and control."""
    w = _Writer(seed)
    baseline = w.group(NEUTRAL_WORDS, n, 0.05)
    joy = w.group(JOY_WORDS, n, topic_share, opener_share)
    fear = w.group(w.halves(n, FEAR_WORDS_A, FEAR_WORDS_B), n, 0.05)
    sad = w.group(SAD_WORDS, n, 0.05)
    return {"baseline": baseline, "joy": joy, "fear": fear, "sad": sad, "control": w.group(NEUTRAL_WORDS, n, 0.05)}


DESIGNS = {"split": split_design, "topic": topic_design, "opener": opener_design, "carry": carry_design,
           "mixed": mixed_design}


if __name__ == "__main__":
    for name, make in DESIGNS.items():
        print(f"== {name}")
        for group, lines in make().items():
            print(f"  {group} ({len(lines)}): {lines[0]!r} | {lines[1]!r}")
