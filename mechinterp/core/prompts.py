"""Prompt sets: one text file per group, one prompt per line.

``prompts/<group>.txt`` holds the prompts of ``<group>`` (the file stem). Blank lines and lines
starting with ``#`` are ignored. Every problem a hand-edited file can have is reported as a
:class:`~mechinterp.core.errors.UserError` that names the file, the line and the fix.

Files pasted together from scraped text repeat lines by the thousand and differ in size by orders of
magnitude, so repeated lines are reported as one counted line per file (not one per line), and large
groups can be sampled down reproducibly (``--max-prompts``).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mechinterp.core.errors import UserError
from mechinterp.core.options import option, positive_int

PROMPT_SUFFIX = ".txt"


@dataclass
class PromptOptions:
    """Which prompt files (the "prompts" flags; each chapter takes the ones it needs with ``only=``)."""

    prompts: Path | None = option(
        None, "folder with one <group>.txt per group, one prompt per line (default: prompts/ beside the script; "
        "the demo's own with --demo)", type=Path, metavar="DIR")
    groups: list[str] | None = option(None, "use only these groups (default: all)", nargs="+", metavar="NAME")
    baseline: str = option("baseline", "the reference group every other group is compared with (default: %(default)s)")
    duplicates: str = option(
        "drop", "a prompt listed twice: keep the first occurrence and warn (one counted line per file), or "
        "stop at the first with an error (default: %(default)s)", choices=("drop", "error"))
    max_prompts: int | None = option(
        None, "sample every group with more prompts down to N (after dropping duplicates), keeping file order; "
        "the same files give the same sample on every machine (default: all prompts)", type=positive_int,
        metavar="N")
    sample_seed: int = option(0, "which sample --max-prompts draws (default: %(default)s)", type=int, metavar="SEED")


@dataclass
class PromptSets:
    """Prompt groups read from a folder, in a stable order (baseline first, then alphabetical)."""

    groups: dict[str, list[str]]
    baseline: str
    folder: Path
    file_hashes: dict[str, str] = field(default_factory=dict)  # group -> sha256 of its file
    notes: list[str] = field(default_factory=list)  # what was dropped or sampled, one line per file
    dropped: dict[str, int] = field(default_factory=dict)  # group -> duplicate lines dropped from its file
    sampled_from: dict[str, int] = field(default_factory=dict)  # group -> its prompts before sampling
    # group -> the words its file states as the concept ("# concept: happy, glad"); absent when none
    concept_words: dict[str, list[str]] = field(default_factory=dict)

    @property
    def contrasts(self) -> list[str]:
        """The groups compared against the baseline."""
        return [g for g in self.groups if g != self.baseline]

    def flat(self) -> tuple[list[str], list[str]]:
        """All prompts and, in parallel, the group of each."""
        texts, labels = [], []
        for group, prompts in self.groups.items():
            texts += prompts
            labels += [group] * len(prompts)
        return texts, labels


def available_groups(folder: Path) -> list[str]:
    return sorted(p.stem for p in Path(folder).glob(f"*{PROMPT_SUFFIX}") if p.is_file())


def read_prompt_file(path: Path) -> list[str]:
    """The prompts in one file; raises :class:`UserError` on anything a user should fix."""
    return [prompt for _, prompt in read_prompt_lines(path)]


def read_prompt_lines(path: Path) -> list[tuple[int, str]]:
    """The prompts in one file with their line numbers (from 1); raises :class:`UserError` on anything a
    user should fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file {path} does not exist")
    data = path.read_bytes()
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise UserError(f"{path} contains a NUL byte on line {line}; it looks like a binary file, not text")
    try:
        text = data.decode("utf-8-sig")  # tolerate the BOM some editors add
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"{path} is not UTF-8 text (bad byte on line {line}); save it as UTF-8") from None
    prompts = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        prompts.append((number, line))
    if not prompts:
        what = "is empty" if not text.strip() else "has only comments and blank lines"
        raise UserError(f"{path} {what}; add one prompt per line")
    return prompts


CONCEPT_LINE = re.compile(r"^#\s*concept\s*:(.*)$", re.IGNORECASE)


def concept_words(path: Path) -> list[str]:
    """The words a prompt file states as its concept, in ``# concept: happy, glad, thrilled`` lines
    (comma-separated, any number of such lines); [] when it states none. Chapter 2 then refuses the
    verdict ``concept`` to a feature that rests on other words (:mod:`mechinterp.meaning.themes`)."""
    words: list[str] = []
    for raw in Path(path).read_text(encoding="utf-8-sig", errors="replace").splitlines():
        m = CONCEPT_LINE.match(raw.strip())
        if m:
            words += [w.strip() for w in m.group(1).split(",") if w.strip()]
    return list(dict.fromkeys(words))


def load_prompt_sets(
    folder: Path,
    groups: Sequence[str] | None = None,
    baseline: str = "baseline",
    min_per_group: int = 1,
    duplicates: str = "drop",
    *,
    max_prompts: int | None = None,
    sample_seed: int = 0,
    paired: bool = False,
) -> PromptSets:
    """Read and validate the prompt groups in ``folder``.

    Repeated prompts are reported with one counted line per file (printed, and kept in ``notes``).

    Args:
        groups: the groups to use (default: every ``*.txt`` in the folder); the baseline is added.
        baseline: the reference group every other group is contrasted against.
        min_per_group: the fewest prompts a group may have (the statistics need some).
        duplicates: "drop" (warn and keep the first occurrence; a prompt in two files stays in the file
            read first: the baseline, then the others alphabetically) or "error" (stop at the first).
        max_prompts: sample each larger group down to this many prompts, after dropping duplicates; the
            sampled lines keep their file order. The sample depends only on the prompts' text and
            ``sample_seed``, so it is the same on every machine.
        paired: line i of every file belongs with line i of the baseline (Chapter 2's ``--paired``): no
            line may be dropped, every file must be as long as the baseline, and sampling keeps the
            same line numbers in every file.
    """
    folder = Path(folder)
    if max_prompts is not None and max_prompts < min_per_group:
        raise UserError(f"--max-prompts {max_prompts} is too few: the statistics need at least {min_per_group} "
                        "prompts per group")
    order = _group_order(folder, groups, baseline)
    sets = PromptSets(groups={}, baseline=baseline, folder=folder)
    owner: dict[str, tuple[str, int]] = {}  # prompt -> (group, line) of its first occurrence
    for group in order:
        path = folder / f"{group}{PROMPT_SUFFIX}"
        sets.file_hashes[group] = hashlib.sha256(path.read_bytes()).hexdigest()
        stated = concept_words(path)
        if stated:
            sets.concept_words[group] = stated
        kept, notes, dropped = _drop_duplicates(group, read_prompt_lines(path), owner, duplicates == "error")
        sets.groups[group], sets.dropped[group] = kept, dropped
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        sets.notes += notes
    if paired:
        _check_pairs(sets)
    if max_prompts is not None:
        _sample(sets, max_prompts, sample_seed, paired)
    for group, kept in sets.groups.items():
        if len(kept) < min_per_group:
            raise UserError(
                f"group {group!r} has {len(kept)} prompt(s) after removing duplicates; the statistics "
                f"need at least {min_per_group} per group"
            )
    return sets


def _group_order(folder: Path, groups: Sequence[str] | None, baseline: str) -> list[str]:
    """The groups to read, baseline first, then alphabetically; raises :class:`UserError` naming the fix."""
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"prompt folder {folder} {what}; pass --prompts DIR with one .txt file per group")
    available = available_groups(folder)
    if not available:
        raise UserError(f"prompt folder {folder} has no .txt files; add e.g. happy.txt and baseline.txt")
    if baseline not in available:
        raise UserError(f"baseline group {baseline!r} not found in {folder}; available: {', '.join(available)}")
    wanted = list(dict.fromkeys(groups)) if groups else available
    unknown = [g for g in wanted if g not in available]
    if unknown:
        raise UserError(f"unknown group(s) {', '.join(unknown)} in {folder}; available: {', '.join(available)}")
    order = [baseline] + sorted(g for g in wanted if g != baseline)
    if len(order) < 2:
        raise UserError(f"only the baseline {baseline!r} was selected; add a group to contrast with it")
    return order


def _count(n: int, noun: str) -> str:
    """``4,700 lines``, ``1 line``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _quote(prompt: str) -> str:
    return repr(prompt[:40] + "..." if len(prompt) > 40 else prompt)


def _drop_duplicates(group: str, lines: list[tuple[int, str]], owner: dict[str, tuple[str, int]],
                     refuse: bool) -> tuple[list[str], list[str], int]:
    """The file's prompts without repeats (first occurrence kept), one note per kind of repeat (within
    the file; per other file that has the prompt), and how many lines were dropped.

    ``owner`` maps each prompt seen so far to its group and line, and gains this file's new prompts.
    With ``refuse``, the first repeat raises :class:`UserError` naming both places.
    """
    kept: list[str] = []
    repeats: dict[str, Counter[str]] = {}  # owning group -> how often each of its prompts repeats here
    for number, prompt in lines:
        if prompt not in owner:
            owner[prompt] = (group, number)
            kept.append(prompt)
            continue
        first, first_line = owner[prompt]
        if refuse:
            where = "earlier in this file" if first == group else f"in {first}{PROMPT_SUFFIX}"
            raise UserError(
                f"{group}{PROMPT_SUFFIX} line {number}: prompt {_quote(prompt)} is already {where} (line "
                f"{first_line}); remove the duplicate (or pass --duplicates drop)")
        repeats.setdefault(first, Counter())[prompt] += 1
    notes = []
    for first, counts in repeats.items():
        n_lines, n_prompts = sum(counts.values()), _count(len(counts), "distinct prompt")
        example = _quote(counts.most_common(1)[0][0])
        if first == group:
            notes.append(f"{group}{PROMPT_SUFFIX}: {_count(n_lines, 'duplicate line')} of {n_prompts} dropped "
                         f"(first occurrence kept; e.g. {example})")
        else:
            notes.append(f"{group}{PROMPT_SUFFIX}: {_count(n_lines, 'line')} ({n_prompts}) also in "
                         f"{first}{PROMPT_SUFFIX} dropped ({first}{PROMPT_SUFFIX}, read first, keeps them; "
                         f"e.g. {example})")
    return kept, notes, sum(sum(c.values()) for c in repeats.values())


def _check_pairs(sets: PromptSets) -> None:
    """Line i of each file pairs with line i of the baseline: no line dropped, every file as long."""
    if any(sets.dropped.values()):
        raise UserError(f"--paired pairs line i of each file with line i of {sets.baseline}{PROMPT_SUFFIX}, so no "
                        f"line may be dropped, but {sets.notes[0]}; make every line unique")
    sizes = {g: len(p) for g, p in sets.groups.items()}
    uneven = [g for g in sets.contrasts if sizes[g] != sizes[sets.baseline]]
    if uneven:
        raise UserError(
            f"--paired needs as many prompts in each group as in the baseline ({sizes[sets.baseline]}), but "
            + ", ".join(f"{g} has {sizes[g]}" for g in uneven) + "; fix the files or drop --paired"
        )


def _sample_order(prompts: Sequence[str], seed: int) -> list[int]:
    """Line indices in a random order fixed by the prompts' text and ``seed`` alone (a hash, not a random
    generator, so no library version or machine changes it, and adding a line keeps the others' order)."""
    keys = [hashlib.sha256(f"{seed}\n{prompt}".encode()).digest() for prompt in prompts]
    return sorted(range(len(prompts)), key=keys.__getitem__)


def _sample(sets: PromptSets, max_prompts: int, seed: int, paired: bool) -> None:
    """Sample every group larger than ``max_prompts`` down to it (in paired files: the same line numbers,
    drawn from the baseline's lines), keeping file order, with one note per sampled file."""
    how = f"--max-prompts {max_prompts}, --sample-seed {seed}"
    if paired:
        how += "; the same line numbers in every file, so pairs stay together"
    chosen: list[int] | None = None
    if paired:
        chosen = sorted(_sample_order(sets.groups[sets.baseline], seed)[:max_prompts])
    for group, prompts in sets.groups.items():
        if len(prompts) <= max_prompts:
            continue
        lines = chosen if chosen is not None else sorted(_sample_order(prompts, seed)[:max_prompts])
        sets.groups[group] = [prompts[i] for i in lines]
        sets.sampled_from[group] = len(prompts)
        note = f"{group}{PROMPT_SUFFIX}: {len(prompts):,} prompts, {max_prompts:,} sampled ({how})"
        print(f"note: {note}", file=sys.stderr)
        sets.notes.append(note)


def collect_texts(folder: Path, folder_required: bool, corpus: Path | None) -> tuple[list[str], list[str], str]:
    """Every prompt in ``folder`` (labelled by its group) and every document of ``corpus`` (labelled
    "corpus"), and a sentence saying where they came from.

    Args:
        folder: a folder of ``<group>.txt`` prompt files.
        folder_required: the user chose ``folder`` (so it must exist and hold prompt files); otherwise a
            missing default folder is fine when ``corpus`` gives texts.
        corpus: a text file, one document per line (same rules as prompt files), or None.
    """
    texts: list[str] = []
    sources: list[str] = []
    if folder_required and not folder.is_dir():
        raise UserError(f"prompt folder {folder} does not exist; pass --prompts DIR with one .txt file per group")
    groups = available_groups(folder) if folder.is_dir() else []
    if folder_required and not groups:
        raise UserError(f"prompt folder {folder} has no .txt files; add one file per group, one prompt per line")
    for group in groups:
        prompts = read_prompt_file(folder / f"{group}.txt")
        texts += prompts
        sources += [group] * len(prompts)
    described = f"{len(texts)} prompt{'s' if len(texts) != 1 else ''} in {len(groups)} group{'s' if len(groups) != 1 else ''} from {folder}" if groups else ""
    if corpus is not None:
        docs = read_prompt_file(corpus)  # same rules: one document per line, '#' lines ignored
        texts += docs
        sources += ["corpus"] * len(docs)
        described += ("; " if described else "") + f"{len(docs)} documents from {corpus}"
    if not texts:
        raise UserError(
            f"no texts to search: {folder} has no prompt files; pass --prompts DIR, --corpus FILE, or --demo"
        )
    return texts, sources, described
