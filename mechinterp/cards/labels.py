"""A stated meaning for a feature ("joy: happy, glad, thrilled"), and the tokens of a text it covers.

Why it exists: a feature card shows where a feature fires; it does not say whether the name a person
gives it is right. To score a label on real text (:mod:`mechinterp.cards.label_score`) the label must
first say, for every corpus token, "this token is what I mean" or not. This module is that rule:

* **A word list** (``--label "joy: happy, glad"``). Each word is matched as GPT-2 tokenizes it: the
  variants ``" happy"``, ``"happy"``, ``" Happy"`` and ``"Happy"`` are each tokenized, and an occurrence
  is a contiguous run of one variant's token ids at a word boundary: the token before (for a variant
  without its leading space) and the token after must not continue the word (``"happy"`` inside
  ``"unhappy"`` or ``" happy"`` followed by ``"ness"`` is no occurrence).
* **A regular expression** (``--label-regex``) over the window's text, decoded token by token; the tokens
  whose characters overlap a match are its occurrence.
* **A prompt file** (``--label-prompts``) turned into a word list: the words over-represented in it
  against the corpus (:func:`words_from_prompts`).
* **A window after each occurrence** (``--label-window A:B``): the label covers the tokens A to B places
  after the occurrence's last token (A = 0: from its first token), so "fires on the token after a sad
  word" can be stated.

A match never crosses a window of the pass (windows never cross documents): a word cut by a window
boundary is not counted in either window.
"""

from __future__ import annotations

import argparse
import ast
import csv
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mechinterp.core.errors import UserError
from mechinterp.core.options import non_negative_int, option, positive_int

# Random word lists per stated label: the chance level a score is read against (median, 90% range).
DEFAULT_RANDOM_LABELS = 20
# Bootstrap replicates over documents (Poisson weights): enough for a 95% interval to ~±0.01.
DEFAULT_BOOTSTRAP = 200
DEFAULT_SEED = 0
# --label-prompts: the words kept, and the add-alpha smoothing of both word distributions.
PROMPT_WORDS = 20
PROMPT_ALPHA = 0.5
PROMPT_MIN_COUNT = 2  # a word seen once in the prompts is no evidence of over-representation
# ... nor a word only a little more frequent there: a kept word is at least 4x as frequent (smoothed).
PROMPT_MIN_LOG_ODDS = math.log(4.0)
WORD_RE = re.compile(r"[A-Za-z][A-Za-z']+")


def label_window(text: str) -> tuple[int, int]:
    """argparse type for --label-window: ``A:B`` with 0 <= A <= B (``0:0``: the occurrence itself)."""
    parts = text.split(":")
    try:
        a, b = (int(parts[0]), int(parts[1])) if len(parts) == 2 else (None, None)
    except ValueError:
        a = b = None
    if a is None or b is None or not 0 <= a <= b:
        raise argparse.ArgumentTypeError(f"expected A:B with 0 <= A <= B (e.g. 0:0, 1:1, 0:3), got {text!r}")
    return a, b


@dataclass
class LabelOptions:
    """A stated meaning to score each carded feature (and family) against, over the mined corpus.

    ``label``, ``label_regex`` and ``label_prompts`` each state one label (several may be given: each is
    scored); ``label_from_results`` scores each feature of ``--from-results`` with its own Chapter 2 word set.
    """

    label: list[str] = option(
        help="a label as a word list, e.g. \"joy: happy, glad, thrilled\" (name optional): scored on every card "
        "over the corpus; matched as GPT-2 tokenizes it (with or without a leading space, lower or capitalised); "
        "repeatable", default_factory=list, action="append", metavar="[NAME:] WORD, WORD")
    label_regex: str | None = option(
        None, "a label as a regular expression over each window's text: the tokens overlapping a match", metavar="PATTERN")
    label_prompts: Path | None = option(
        None, f"a label from a prompt file (\"text like this\"): its {PROMPT_WORDS} words most over-represented "
        "against the corpus (smoothed log-odds; printed)", type=Path, metavar="FILE")
    label_from_results: bool = option(
        False, "with --from-results: score each feature (and family) with its own Chapter 2 word set (the "
        "'words' column) as its label")
    label_window: tuple[int, int] = option(
        (0, 0), "the label covers the tokens A to B places after each occurrence's last token (A = 0: the "
        "occurrence too); e.g. 1:1 = the token after the word (default: 0:0, the word itself)",
        type=label_window, metavar="A:B")
    label_random: int = option(
        DEFAULT_RANDOM_LABELS, "random word lists of the same corpus frequency scored beside each label (the "
        "chance level: median and 90%% range); 0 = none", type=non_negative_int, metavar="R")
    label_bootstrap: int = option(
        DEFAULT_BOOTSTRAP, "bootstrap replicates over documents for the 95%% intervals (0 = none)",
        type=non_negative_int, metavar="N")
    label_seed: int = option(DEFAULT_SEED, f"seed of the random word lists and of the bootstrap (default: {DEFAULT_SEED})",
                             type=int, metavar="N")
    label_examples: int = option(5, "examples shown of firings off the label and of label words where it is silent",
                                 type=positive_int, metavar="K")

    def __post_init__(self) -> None:
        self.label = list(self.label or [])
        self.label_window = tuple(self.label_window)  # type: ignore[assignment]
        a, b = self.label_window
        if not 0 <= a <= b:
            raise UserError(f"--label-window needs 0 <= A <= B, got {a}:{b}")
        if self.label_regex is not None:
            try:
                re.compile(self.label_regex)
            except re.error as err:
                raise UserError(f"--label-regex {self.label_regex!r} is not a regular expression ({err})") from None
        if self.label_prompts is not None and not Path(self.label_prompts).is_file():
            raise UserError(f"--label-prompts {self.label_prompts} does not exist")

    @property
    def wanted(self) -> bool:
        """Some label is stated (a corpus pass is then needed)."""
        return bool(self.label or self.label_regex or self.label_prompts or self.label_from_results)


# --- a label -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Label:
    """A stated meaning: a word list or a regular expression, and the window it covers after each occurrence.

    Attributes:
        name: how the outputs call it (``joy``; a random list: ``random 3``).
        words: the words (without spaces), or () for a regex label.
        regex: the pattern, or None for a word list.
        window: ``(A, B)``: the tokens A to B places after each occurrence's last token (A = 0: from its first).
        source: how it was stated (``--label``, ``--label-prompts FILE``, ``Chapter 2 word set``, ``random``).
    """

    name: str
    words: tuple[str, ...] = ()
    regex: str | None = None
    window: tuple[int, int] = (0, 0)
    source: str = "--label"

    def describe(self) -> str:
        what = f"/{self.regex}/" if self.regex is not None else ", ".join(self.words[:8]) + (
            f" +{len(self.words) - 8}" if len(self.words) > 8 else "")
        where = "" if self.window == (0, 0) else f", tokens {self.window[0]}..{self.window[1]} after each"
        return f"{self.name}: {what}{where}"

    def to_dict(self) -> dict:
        return {"name": self.name, "words": list(self.words), "regex": self.regex, "window": list(self.window),
                "source": self.source}


def parse_label(text: str, window: tuple[int, int] = (0, 0), source: str = "--label") -> Label:
    """``"joy: happy, glad"`` (or ``"happy, glad"``) as a :class:`Label`; words split on commas."""
    name, sep, rest = text.partition(":")
    if not sep:
        name, rest = "", text
    words = tuple(dict.fromkeys(w.strip() for w in rest.split(",") if w.strip()))
    if not words:
        raise UserError(f"--label {text!r} names no word; write e.g. \"joy: happy, glad, thrilled\"")
    return Label(name.strip() or words[0], words, None, window, source)


def stated_labels(options: LabelOptions, prompt_words: Sequence[str] = ()) -> list[Label]:
    """The labels stated with --label, --label-regex and --label-prompts (its words chosen already)."""
    labels = [parse_label(text, options.label_window) for text in options.label]
    if options.label_regex is not None:
        labels.append(Label("regex", (), options.label_regex, options.label_window, "--label-regex"))
    if options.label_prompts is not None and prompt_words:
        labels.append(Label(Path(options.label_prompts).stem, tuple(prompt_words), None, options.label_window,
                            f"--label-prompts {options.label_prompts}"))
    return labels


def results_word_sets(path: Path) -> dict[str, tuple[str, ...]]:
    """Chapter 2's word set per feature (``"409"``) and per family (``"262+291"``), from feature_stats.csv.

    The ``words`` column holds the tokens as Python reprs (``' happy' ' glad'``); the family's row gives its
    family's set. A feature in several groups keeps its first row's set.
    """
    sets: dict[str, tuple[str, ...]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            text = (row.get("words") or "").strip()
            words = tuple(dict.fromkeys(str(ast.literal_eval(m)).strip() for m in
                                        re.findall(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", text)))
            words = tuple(w for w in words if w)
            if not words:
                continue
            sets.setdefault(str(row.get("feature", "")).strip(), words)
            family = (row.get("family") or "").strip()
            if family:  # named as Chapter 3 names a family: its members ascending, joined by '+'
                try:
                    family = "+".join(str(m) for m in sorted(int(x) for x in family.split("+")))
                except ValueError:
                    pass
                sets.setdefault(family, words)
    if not sets:
        raise UserError(f"--label-from-results: {path} has no word sets (no 'words' column filled); rerun Chapter 2")
    return sets


# --- matching -----------------------------------------------------------------------------------------


class TokenText:
    """Each token id's text, decoded once (a token's text decides word boundaries and character spans)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._text: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._text.get(token_id)
        if text is None:
            text = self._text[token_id] = self.tokenizer.decode([int(token_id)])
        return text

    def continues_word(self, token_id: int) -> bool:
        """The token glues onto the previous one as part of a word (starts with a letter or digit)."""
        text = self(token_id)
        return bool(text) and text[0].isalnum()

    def ends_word(self, token_id: int) -> bool:
        text = self(token_id)
        return bool(text) and text[-1].isalnum()


def word_variants(tokenizer: Any, word: str) -> list[tuple[int, ...]]:
    """The token ids of ``" word"``, ``"word"``, ``" Word"``, ``"Word"`` (each once), as GPT-2 tokenizes them."""
    cased = {word, word[:1].upper() + word[1:], word.lower()}
    out: dict[tuple[int, ...], None] = {}
    for w in sorted(cased):
        for text in (" " + w, w):
            ids = tuple(tokenizer.encode(text, add_special_tokens=False))
            if ids:
                out[ids] = None
    return list(out)


@dataclass
class Coverage:
    """What a label covers in one window.

    Attributes:
        covered: bool ``[n]`` tokens the label covers.
        occurrences: per occurrence, int64 positions of the tokens it covers (within the window).
        first: per occurrence, the position of its first token (for showing it).
    """

    covered: np.ndarray
    occurrences: list[np.ndarray] = field(default_factory=list)
    first: list[int] = field(default_factory=list)
    offset: int = 0  # where the window starts among a batch's tokens (set by the pass)


class Matcher:
    """Finds a :class:`Label`'s occurrences in windows of token ids."""

    def __init__(self, label: Label, tokenizer: Any, text: TokenText | None = None):
        self.label = label
        self.text = text or TokenText(tokenizer)
        self.regex = re.compile(label.regex) if label.regex is not None else None
        self.by_first: dict[int, list[tuple[int, ...]]] = {}
        for word in label.words:
            for ids in word_variants(tokenizer, word):
                self.by_first.setdefault(ids[0], []).append(ids)
        for seqs in self.by_first.values():
            seqs.sort(key=len, reverse=True)  # the longest variant first: "happy" + "ness" is not "happy"
        self.first_ids = np.array(sorted(self.by_first), dtype=np.int64)

    def spans(self, tokens: np.ndarray) -> list[tuple[int, int]]:
        """Each occurrence's (first, last) token position."""
        return self._regex_spans(tokens) if self.regex is not None else self._word_spans(tokens)

    def _word_spans(self, tokens: np.ndarray) -> list[tuple[int, int]]:
        found = []
        n = len(tokens)
        for i in np.flatnonzero(np.isin(tokens, self.first_ids)).tolist():
            if found and i <= found[-1][1]:
                continue
            for seq in self.by_first[int(tokens[i])]:
                end = i + len(seq)
                if end > n or tuple(tokens[i:end].tolist()) != seq:
                    continue
                spaced = self.text(seq[0])[:1].isspace()
                if not spaced and i > 0 and self.text.ends_word(int(tokens[i - 1])):
                    continue  # "happy" inside "unhappy"
                if end < n and self.text.continues_word(int(tokens[end])):
                    continue  # " happy" + "ness"
                found.append((i, end - 1))
                break
        return found

    def _regex_spans(self, tokens: np.ndarray) -> list[tuple[int, int]]:
        pieces = [self.text(int(t)) for t in tokens]
        starts = np.cumsum([0] + [len(p) for p in pieces])  # character start of each token, and the end
        found = []
        for m in self.regex.finditer("".join(pieces)):  # type: ignore[union-attr]
            if m.end() <= m.start():
                continue
            first = int(np.searchsorted(starts, m.start(), side="right")) - 1
            last = int(np.searchsorted(starts, m.end(), side="left")) - 1
            found.append((first, max(first, last)))
        return found

    def cover(self, tokens: np.ndarray) -> Coverage:
        """The tokens the label covers in ``tokens`` (int ``[n]``, one window without BOS)."""
        n = len(tokens)
        covered = np.zeros(n, dtype=bool)
        a, b = self.label.window
        coverage = Coverage(covered)
        for first, last in self.spans(tokens):
            lo, hi = (first if a == 0 else last + a), min(last + b, n - 1)
            if lo > hi:
                continue  # the window after it is cut off by the window's end
            positions = np.arange(lo, hi + 1)
            covered[positions] = True
            coverage.occurrences.append(positions)
            coverage.first.append(first)
        return coverage


# --- words of the corpus and of a prompt file ----------------------------------------------------------


def whole_word_tokens(tokenizer: Any, vocab_size: int) -> np.ndarray:
    """bool ``[vocab]``: tokens that are a whole lower-case word with its leading space (``" happy"``).

    The random word lists are drawn from these: a single token each, so their frequency is counted exactly
    by a pass that only tokenizes.
    """
    ok = np.zeros(vocab_size, dtype=bool)
    pieces = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    for i, piece in enumerate(pieces):
        # GPT-2's byte-level BPE writes a leading space as "Ġ".
        if piece and piece[0] == "\u0120" and len(piece) >= 2 and piece[1:].isalpha() and piece[1:].islower() \
                and piece[1:].isascii():
            ok[i] = True
    return ok


def words_from_prompts(path: Path, word_counts: Counter, n_words: int = PROMPT_WORDS,
                       alpha: float = PROMPT_ALPHA, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
    """The words of a prompt file most over-represented against the corpus, with their log-odds.

    Score of word w (lower-cased, letters and apostrophes): ``log((p_w + a) / (N_p + a V)) - log((c_w + a) /
    (N_c + a V))`` with ``p_w``/``c_w`` its counts in the prompts and in the corpus, ``N`` their totals, ``V``
    the words of both and ``a`` = ``alpha``: the add-alpha smoothed log ratio of its frequencies. Words seen
    fewer than :data:`PROMPT_MIN_COUNT` times in the prompts, or under :data:`PROMPT_MIN_LOG_ODDS`, are not taken.
    """
    prompts = Counter(w.lower() for line in Path(path).read_text(encoding="utf-8-sig").splitlines()
                      if line.strip() and not line.lstrip().startswith("#") for w in WORD_RE.findall(line))
    if not prompts:
        raise UserError(f"--label-prompts {path} holds no words")
    n_p, n_c = sum(prompts.values()), sum(word_counts.values())
    vocab = len(set(prompts) | set(word_counts))
    skip = set(exclude)
    scores = [(w, math.log((c + alpha) / (n_p + alpha * vocab)) - math.log((word_counts.get(w, 0) + alpha)
                                                                           / (n_c + alpha * vocab)))
              for w, c in prompts.items() if c >= PROMPT_MIN_COUNT and w not in skip]
    scores = [x for x in scores if x[1] >= PROMPT_MIN_LOG_ODDS]
    scores.sort(key=lambda x: (-x[1], x[0]))
    return scores[:n_words]


def draw_random_words(counts: np.ndarray, words: Sequence[str], ids: np.ndarray, target: int, rng: np.random.Generator,
                      tolerance: float = 0.1, exclude: Iterable[str] = ()) -> tuple[str, ...]:
    """Single-token words whose corpus counts add up to ``target`` within ``tolerance`` (relative).

    Words are taken in a random order while they fit under the upper bound, until the sum reaches the lower
    bound; the words of the stated label are excluded. With too few words (a tiny corpus) the list may fall
    short: its actual frequency is reported beside it.
    """
    skip = {w.lower() for w in exclude}
    hi, lo = target * (1 + tolerance), target * (1 - tolerance)
    chosen: list[str] = []
    total = 0
    for j in rng.permutation(len(ids)):
        c = int(counts[ids[j]])
        w = words[j]
        if c == 0 or w in skip or total + c > hi:
            continue
        chosen.append(w)
        total += c
        if total >= lo:
            break
    return tuple(chosen)
