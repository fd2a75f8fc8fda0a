"""A generated corpus of plain English documents with the GPT-2-faithful world's emotion words mixed in.

Why it exists: scoring a label (``mechinterp.cards.label_score``) needs real text where the planted
features' words occur at known rates among ordinary words. Each document is a few sentences of common
words; some sentences carry one happy, angry or sad word (``tests/gpt2_world.py``), always lower-case and
after a space, so each is the single GPT-2 token the world plants its feature on. Deterministic from a
seed, and streamed line by line so a benchmark can write millions of tokens without holding them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from tests.gpt2_world import ANGRY_WORDS, HAPPY_WORDS, SAD_WORDS

SUBJECTS = ("the teacher", "my sister", "the driver", "our neighbour", "the old man", "a student", "the doctor",
            "his friend", "the family", "the manager", "her brother", "the children", "the crew", "my uncle")
VERBS = ("walked to", "looked at", "talked about", "waited for", "cleaned", "opened", "carried", "painted",
         "visited", "counted", "moved", "checked", "fixed", "bought", "read about", "wrote about")
OBJECTS = ("the station", "a small table", "the garden", "the report", "the kitchen", "a red door", "the river",
           "the market", "a long letter", "the bridge", "the window", "the school", "the library", "a new car",
           "the morning train", "the office", "the village", "a wooden box", "the field", "the museum")
TAILS = ("before lunch", "after the meeting", "on Monday", "in the evening", "near the corner", "with a map",
         "during the storm season", "for an hour", "at noon", "without a word", "by the road", "last week")
FRAMES = ("{s} was {w} when {t} {v} {o}.", "{s} felt {w} and {v} {o} {t}.", "It was a {w} day, so {s} {v} {o}.",
          "{s} {v} {o} and seemed {w} {t}.")
KINDS = {"happy": tuple(w for w in HAPPY_WORDS if w.islower()), "angry": tuple(w for w in ANGRY_WORDS if w.islower()),
         "sad": SAD_WORDS}


def plain_sentence(rng: random.Random) -> str:
    s = rng.choice(SUBJECTS)
    return f"{s[0].upper()}{s[1:]} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}."


def emotion_sentence(rng: random.Random, kind: str) -> str:
    text = rng.choice(FRAMES).format(s=rng.choice(SUBJECTS), w=rng.choice(KINDS[kind]), t=rng.choice(TAILS),
                                     v=rng.choice(VERBS), o=rng.choice(OBJECTS))
    return text[0].upper() + text[1:]


def documents(seed: int = 0, rates: dict[str, float] | None = None) -> Iterator[str]:
    """Endless documents of 3-12 sentences; each sentence carries an emotion word with the given rates."""
    rng = random.Random(seed)
    rates = rates or {"happy": 0.12, "angry": 0.12, "sad": 0.08}
    while True:
        sentences = []
        for _ in range(rng.randint(3, 12)):
            x, kind = rng.random(), None
            for k, p in rates.items():
                if x < p:
                    kind = k
                    break
                x -= p
            sentences.append(emotion_sentence(rng, kind) if kind else plain_sentence(rng))
        yield " ".join(sentences)


def write_corpus(path: Path, n_tokens: int, tokenizer, seed: int = 0) -> int:
    """Write documents (one per line) until about ``n_tokens`` GPT-2 tokens; returns the tokens written."""
    total = 0
    with open(path, "w", encoding="utf-8") as f:
        for doc in documents(seed):
            f.write(doc + "\n")
            total += len(tokenizer.encode(doc, add_special_tokens=False))
            if total >= n_tokens:
                return total
    return total
