"""Prompt sets: one text file per group, one prompt per line.

``prompts/<group>.txt`` holds the prompts of ``<group>`` (the file stem). Blank lines and lines
starting with ``#`` are ignored. Every problem a hand-edited file can have is reported as a
:class:`~mechinterp.core.errors.UserError` that names the file, the line and the fix.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mechinterp.core.errors import UserError
from mechinterp.core.options import option

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
        "drop", "a prompt listed twice: warn and keep the first occurrence, or stop with an error "
        "(default: %(default)s)", choices=("drop", "error"))


@dataclass
class PromptSets:
    """Prompt groups read from a folder, in a stable order (baseline first, then alphabetical)."""

    groups: dict[str, list[str]]
    baseline: str
    folder: Path
    file_hashes: dict[str, str] = field(default_factory=dict)  # group -> sha256 of its file
    notes: list[str] = field(default_factory=list)  # what was filtered, for the run record

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
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        prompts.append(line)
    if not prompts:
        what = "is empty" if not text.strip() else "has only comments and blank lines"
        raise UserError(f"{path} {what}; add one prompt per line")
    return prompts


def load_prompt_sets(
    folder: Path,
    groups: Sequence[str] | None = None,
    baseline: str = "baseline",
    min_per_group: int = 1,
    duplicates: str = "drop",
) -> PromptSets:
    """Read and validate the prompt groups in ``folder``.

    Args:
        groups: the groups to use (default: every ``*.txt`` in the folder); the baseline is added.
        baseline: the reference group every other group is contrasted against.
        min_per_group: the fewest prompts a group may have (the statistics need some).
        duplicates: "drop" (warn and keep the first occurrence) or "error".
    """
    folder = Path(folder)
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

    sets = PromptSets(groups={}, baseline=baseline, folder=folder)
    owner: dict[str, str] = {}
    for group in order:
        path = folder / f"{group}{PROMPT_SUFFIX}"
        sets.file_hashes[group] = hashlib.sha256(path.read_bytes()).hexdigest()
        kept: list[str] = []
        for prompt in read_prompt_file(path):
            if prompt in owner:
                where = "twice in" if owner[prompt] == group else f"in both {owner[prompt]} and"
                message = f"prompt {prompt[:50]!r} appears {where} {group}"
                if duplicates == "error":
                    raise UserError(f"{message}; remove the duplicate (or pass --duplicates drop)")
                note = f"{message}; kept only the first occurrence"
                print(f"warning: {note}", file=sys.stderr)
                sets.notes.append(note)
                continue
            owner[prompt] = group
            kept.append(prompt)
        if len(kept) < min_per_group:
            raise UserError(
                f"group {group!r} has {len(kept)} prompt(s) after removing duplicates; the statistics "
                f"need at least {min_per_group} per group"
            )
        sets.groups[group] = kept
    return sets


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
