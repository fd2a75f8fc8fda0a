"""Prompt folders at a learner's real scale, for Chapter 2 on the GPT-2-faithful world (issue 20).

Why it exists: Chapter 2 was checked on tidy designs (48-60 prompts per group, equal sizes, no repeated
lines). Real users paste in thousands of scraped lines in groups of very different sizes. The writers here
make such folders over GPT-2's real words, with a known answer in the world of tests/gpt2_world.py:

* one **sentence generator** of neutral text: many frames, common words (``' was'``, ``' felt'``,
  ``' the'``), names, places and numbers, 8-30 GPT-2 tokens, tens of thousands of distinct sentences;
* the **null group** is the baseline's own generator with another seed: no feature may differ;
* a **concept group** is the same generator with one or two slot words (an adjective, a ``with`` noun or
  an adverb) swapped for planted happy or angry words, at whatever place the frame has its slot. Frames
  without a slot get a mood clause (which the neutral generator also adds, with neutral words, to 30%
  of sentences), so the planted happy/angry SAE features are the true concepts and everything else
  differs only as a side effect of the swap;
* **repeated lines**, as scraped files have: a share of a file's lines repeat other lines, one of them
  many times.

Design A: baseline 2,000, null 2,000, happy 600, angry 40 lines, repeats included. Design B: a 30-line
baseline against 2,500 joyful and 2,500 null lines. Design C (beyond "Done when"): the other direction,
a 2,500-line baseline against 30 joyful lines, a tenth of which say it in words the world did not plant,
and 30 null lines. ``scale`` writes the same designs smaller.

Run ``python -m tests.scale_designs DIR [--scale 0.15]`` to write both designs for a look by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tests.gpt2_world import ANGRY_WORDS, HAPPY_WORDS

# --- words -------------------------------------------------------------------------------------------

NAMES = ("Anna", "Tom", "Maria", "David", "Sarah", "James", "Emma", "Peter", "Laura", "Michael", "Kate",
         "John", "Lucy", "Daniel", "Alice", "Mark", "Rachel", "Paul", "Sophie", "Ben")
PEOPLE = ("the teacher", "my neighbour", "the driver", "our manager", "the old man", "my sister", "the doctor",
          "his friend", "the nurse", "a student", "the farmer", "her uncle")
PLACES = ("London", "Paris", "Berlin", "Chicago", "Boston", "Dublin", "Madrid", "Toronto", "the station",
          "the park", "the office", "the library", "the market", "the harbour", "the school", "the hospital",
          "the bridge", "the kitchen", "the garden", "the hotel")
NOUNS = ("letter", "train", "meeting", "book", "parcel", "report", "car", "dinner", "phone", "door", "box",
         "game", "class", "film", "map", "bill", "ticket", "radio")
THINGS = ("books", "clothes", "tools", "papers", "plates", "photos", "records", "shoes")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
BE = ("was", "was", "was", "felt", "felt", "seemed", "looked")  # ' was' and ' felt' most often, as in text
MOVES = ("walked", "drove", "went", "returned", "ran", "came", "hurried")
PRONOUNS = ("she", "he", "they", "we")

# Slot fillers by kind. Neutral words fill slots in every group; a concept group swaps one or two of a
# sentence's slots for its own words of the same kind.
NEUTRAL_SLOTS = {
    "adj": ("tired", "busy", "quiet", "ready", "calm", "late", "early", "sure", "hungry", "cold", "warm",
            "careful", "surprised", "nervous", "sleepy", "serious"),
    "noun": ("care", "interest", "patience", "surprise", "caution", "attention"),
    "adv": ("slowly", "quietly", "carefully", "quickly", "politely", "finally"),
}
# Planted words by kind (each a single GPT-2 token with its leading space, see tests/gpt2_world.py).
CONCEPT_SLOTS = {
    "happy": {
        "adj": ("happy", "thrilled", "delighted", "glad", "cheerful", "joyful", "grateful", "lovely",
                "wonderful", "fantastic", "excited", "pleased", "amazing"),
        "noun": ("joy", "delight"),
        "adv": (),
    },
    "angry": {
        "adj": ("angry", "furious", "outraged", "annoyed", "irritated", "enraged", "frustrated", "hostile",
                "bitter", "upset", "disgusted"),
        "noun": ("anger", "rage", "outrage", "hate"),
        "adv": ("angrily", "furiously"),
    },
}
# The same feelings in words the world did not plant: a concept group with some of these lines is one
# whose planted feature misses a few prompts (AUROC below 1), as a real concept feature does.
UNPLANTED_SLOTS = {
    "happy": {"adj": ("proud", "content", "elated", "overjoyed", "jubilant"), "noun": ("laughter", "pride"),
              "adv": ("gladly", "happily")},
    "angry": {"adj": ("mad", "livid", "cross", "fuming", "resentful"), "noun": ("fury", "spite"),
              "adv": ("bitterly", "sharply")},
}
MOOD_SHARE = 0.3  # share of neutral sentences with a mood clause (", and she was calm")


def _check_planted_words() -> None:
    every_planted = set(HAPPY_WORDS) | set(ANGRY_WORDS)
    for concept, planted in (("happy", HAPPY_WORDS), ("angry", ANGRY_WORDS)):
        words = {w for kind in CONCEPT_SLOTS[concept].values() for w in kind}
        if not words <= set(planted):
            raise RuntimeError(f"{sorted(words - set(planted))} are not planted {concept} words")
        unplanted = {w for kind in UNPLANTED_SLOTS[concept].values() for w in kind}
        if unplanted & every_planted:
            raise RuntimeError(f"{sorted(unplanted & every_planted)} are planted words")


# --- sentences ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A place in a sentence that a concept word of the same kind may take."""

    kind: str  # adj | noun | adv
    word: str

    def text(self) -> str:
        return f"with {self.word}" if self.kind == "noun" else self.word


Part = str | Slot


class SentenceGenerator:
    """Neutral sentences from many frames; the same seed gives the same sentences."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def pick(self, options: tuple[str, ...]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def slot(self, kind: str) -> Slot:
        return Slot(kind, self.pick(NEUTRAL_SLOTS[kind]))

    def subject(self) -> str:
        return self.pick(NAMES) if self.rng.random() < 0.6 else self.pick(PEOPLE)

    def number(self) -> str:
        return str(int(self.rng.integers(2, 400)))

    def frame(self) -> list[Part]:
        """One sentence as words and slots, from one of 15 frames (slots early, late, or none)."""
        s, s2, place, noun = self.subject(), self.subject(), self.pick(PLACES), self.pick(NOUNS)
        be, day, n, move, pron = self.pick(BE), self.pick(DAYS), self.number(), self.pick(MOVES), self.pick(PRONOUNS)
        hour, year = str(int(self.rng.integers(1, 13))), str(int(self.rng.integers(1950, 2024)))
        a, b, w, v = self.slot("adj"), self.slot("adj"), self.slot("noun"), self.slot("adv")
        frames: list[list[Part]] = [
            [f"{s} {be}", a, f"at {place} on {day}."],
            [f"On {day}, {s} {move} to {place} and {be}", a, f"for {n} minutes."],
            [f"{s} said that the {noun} in {place} {be}", a, "."],
            [f"At {hour} o'clock the {noun} {be}", a, f", so {s} {move} to {place}."],
            [f"In {year}, {s} moved to {place} with {n} boxes of {self.pick(THINGS)}."],
            [f"The {noun} cost {n} dollars, and {s} felt", a, "about it."],
            [f"{s} {move} to {place}", v, f"and {pron} {agree(pron, be)}", a, f"by {hour}."],
            [f"We waited {n} minutes at {place} while {s} read the {noun}", w, "."],
            [f"{s} and {s2} {move} past the {noun} in {place} last {day}."],
            [f"There were {n} people at {place}, and most of them {be}", a, "."],
            [f"{s} looked at the {noun}", w, f"and then {move} home."],
            [f"After {n} days in {place}, {s} felt", a, "and a little", b, "."],
            [f"The report from {place} said {n} people saw the {noun} on {day}."],
            [f"{s}", v, f"opened the {noun} at {hour} and {be}", a, "."],
            [f"Everyone at {place} {be}", a, f"when the {noun} arrived {n} minutes late."],
        ]
        parts = frames[int(self.rng.integers(len(frames)))]
        if self.rng.random() < MOOD_SHARE:
            parts = self.with_mood(parts)
        return parts

    def with_mood(self, parts: list[Part]) -> list[Part]:
        """The sentence with a mood clause before its final full stop (", and he was calm.")."""
        last = parts[-1]
        head, tail = (parts, ".") if isinstance(last, Slot) else (parts[:-1], last)
        if not tail.endswith("."):
            raise ValueError(f"a frame must end with a full stop: {tail!r}")
        pron, be = self.pick(PRONOUNS), self.pick(BE)
        clause: list[Part] = [", and", pron, agree(pron, be), self.slot("adj")]
        return [*head, *([tail[:-1]] if tail[:-1].strip() else []), *clause, "."]

    def neutral(self) -> str:
        return render(self.frame())

    def concept(self, concept: str, planted: bool = True) -> str:
        """A neutral sentence with one (a quarter of the time two) slots swapped for ``concept`` words.

        ``planted=False`` swaps in words of the same feeling that the world did not plant.
        """
        words = (CONCEPT_SLOTS if planted else UNPLANTED_SLOTS)[concept]
        parts = self.frame()
        usable = [i for i, p in enumerate(parts) if isinstance(p, Slot) and words[p.kind]]
        if not usable:
            parts = self.with_mood(parts)
            usable = [i for i, p in enumerate(parts) if isinstance(p, Slot) and words[p.kind]]
        n_swap = 2 if len(usable) > 1 and self.rng.random() < 0.25 else 1
        for i in self.rng.choice(usable, size=n_swap, replace=False):
            kind = parts[int(i)].kind
            parts[int(i)] = Slot(kind, self.pick(words[kind]))
        return render(parts)


def agree(pronoun: str, verb: str) -> str:
    return "were" if verb == "was" and pronoun in ("they", "we") else verb


def render(parts: list[Part]) -> str:
    """Words joined by spaces, with no space before punctuation; the first letter capitalised."""
    text = ""
    for part in parts:
        piece = part.text() if isinstance(part, Slot) else part
        text += piece if (not text or piece[:1] in ",.;") else " " + piece
    return text[:1].upper() + text[1:]


# --- groups and designs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSpec:
    """One prompt file of a design."""

    name: str
    lines: int  # lines in the file, repeats included
    concept: str | None  # None: neutral sentences; "happy" / "angry": the planted concept
    seed: int
    repeat_share: float = 0.0  # share of the lines that repeat another line of the file
    planted_share: float = 1.0  # share of a concept group's sentences with a planted word (the rest: unplanted)


@dataclass(frozen=True)
class Design:
    """A prompt folder: its groups, the baseline first."""

    name: str
    groups: tuple[GroupSpec, ...]
    baseline: str = "baseline"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# Seeds differ per design and group, so no two groups share sentences (and no cache entry is shared).
DESIGN_A = Design("A", (
    GroupSpec("baseline", 2000, None, seed=101, repeat_share=0.15),
    GroupSpec("null", 2000, None, seed=102, repeat_share=0.10),
    GroupSpec("happy", 600, "happy", seed=103, repeat_share=0.20),
    GroupSpec("angry", 40, "angry", seed=104),
))
# As in the report: no repeats added (the generator's own collisions remain).
DESIGN_B = Design("B", (
    GroupSpec("baseline", 30, None, seed=201),
    GroupSpec("joyful", 2500, "happy", seed=202),
    GroupSpec("null", 2500, None, seed=203),
))
# Not in "Done when": issue 20's report of the other direction, a large baseline against 30 joyful
# prompts whose planted feature reaches AUROC 0.94 (a tenth of them say it in unplanted words).
DESIGN_C = Design("C", (
    GroupSpec("baseline", 2500, None, seed=301),
    GroupSpec("joyful", 30, "happy", seed=302, planted_share=0.9),
    GroupSpec("null", 30, None, seed=303),
))
DESIGNS = {"A": DESIGN_A, "B": DESIGN_B, "C": DESIGN_C}
MIN_SCALED_LINES = 30  # a scaled group keeps at least this many lines: design B's 30-line baseline stays whole


def scaled(design: Design, scale: float) -> Design:
    """The same design with every group ``scale`` times as long (groups of up to 30 lines kept whole)."""
    if scale == 1:
        return design
    groups = tuple(
        GroupSpec(g.name, max(round(g.lines * scale), min(g.lines, MIN_SCALED_LINES)), g.concept, g.seed,
                  g.repeat_share, g.planted_share)
        for g in design.groups
    )
    return Design(design.name, groups, design.baseline)


def distinct_sentences(n: int, concept: str | None, seed: int, planted_share: float = 1.0) -> list[str]:
    """``n`` different sentences of the generator, in the order it made them.

    Of a concept group's sentences, ``round(n * planted_share)`` hold planted words, spread evenly.
    """
    gen = SentenceGenerator(seed)
    n_planted = round(n * planted_share)
    seen: dict[str, None] = {}
    for _ in range(50 * n + 100):
        if len(seen) == n:
            break
        # Bresenham-style: sentence k is planted when it raises floor(k * share), so any prefix has the share.
        planted = (len(seen) + 1) * n_planted // n > len(seen) * n_planted // n
        seen.setdefault(gen.neutral() if concept is None else gen.concept(concept, planted), None)
    if len(seen) < n:
        raise RuntimeError(f"the generator gave only {len(seen)} distinct sentences of {n}")
    return list(seen)


def with_repeats(lines: list[str], n_repeats: int, seed: int) -> list[str]:
    """``lines`` plus ``n_repeats`` repeats of them, shuffled in, as in scraped files.

    A third of the repeats are one line over and over (a header or boilerplate line); the rest repeat
    random lines, a few of them more than once.
    """
    if n_repeats == 0:
        return list(lines)
    rng = np.random.default_rng(seed)
    hot = n_repeats // 3
    extra = [lines[int(rng.integers(len(lines)))]] * hot
    extra += [lines[int(i)] for i in rng.integers(len(lines), size=n_repeats - hot)]
    out = list(lines) + extra
    order = rng.permutation(len(out))
    return [out[int(i)] for i in order]


def group_lines(group: GroupSpec) -> list[str]:
    """The lines of one group's file."""
    n_repeats = round(group.lines * group.repeat_share)
    distinct = distinct_sentences(group.lines - n_repeats, group.concept, group.seed, group.planted_share)
    return with_repeats(distinct, n_repeats, group.seed + 7919)


def write_design(design: Design, folder: Path) -> Path:
    """Write ``<group>.txt`` (one prompt per line) for every group into ``folder``; returns ``folder``."""
    _check_planted_words()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for group in design.groups:
        (folder / f"{group.name}.txt").write_text("\n".join(group_lines(group)) + "\n", encoding="utf-8")
    return folder


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write designs A, B and C of issue 20 as prompt folders.")
    parser.add_argument("folder", type=Path, help="where to write A/, B/ and C/")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each group's size (default: 1)")
    cli = parser.parse_args()
    for key, spec in DESIGNS.items():
        written = write_design(scaled(spec, cli.scale), cli.folder / key)
        print(f"design {key}: {written}")
