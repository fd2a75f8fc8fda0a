"""Prompt files at a learner's real scale: thousands of lines, unequal groups, repeated lines.

A user pasted 5,000 scraped lines and got 4,700 lines of warnings. Here each file's repeats are one
counted line, prompts shared by two files one more, ``--duplicates error`` still stops at the first
repeat naming file and line, and ``--max-prompts`` samples big groups the same way on every machine,
keeping file order and, with ``--paired``, keeping pairs together.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import MechInterpFeatureMeaning as ch2
from mechinterp.core.errors import UserError
from mechinterp.core.prompts import load_prompt_sets


def write_lines(folder: Path, name: str, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def happy(i: int) -> str:
    return f"I was so happy about the garden number {i} this morning."


def calm(i: int) -> str:
    return f"The garden number {i} was watered this morning."


@pytest.fixture
def scraped(tmp_path) -> Path:
    """5,000 happy lines of 312 distinct prompts, 2,000 baseline lines, 40 angry lines with 3 repeats."""
    folder = tmp_path / "prompts"
    write_lines(folder, "happy.txt", [happy(i % 312) for i in range(5000)])
    write_lines(folder, "baseline.txt", [calm(i) for i in range(2000)])
    write_lines(folder, "angry.txt", [f"I was furious about the fence number {i % 37}." for i in range(40)])
    return folder


def warnings_of(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]


def test_repeated_lines_are_one_counted_warning_per_file(scraped, capsys):
    sets = load_prompt_sets(scraped)
    assert {g: len(p) for g, p in sets.groups.items()} == {"baseline": 2000, "angry": 37, "happy": 312}
    warned = warnings_of(capsys)
    assert warned == [
        ("warning: angry.txt: 3 duplicate lines of 3 distinct prompts dropped (first occurrence kept; "
         "e.g. 'I was furious about the fence number 0.')"),
        ("warning: happy.txt: 4,688 duplicate lines of 312 distinct prompts dropped (first occurrence kept; "
         "e.g. 'I was so happy about the garden number 0...')"),
    ]
    assert sets.notes == [w.removeprefix("warning: ") for w in warned]  # the run record gets the same lines
    assert sets.dropped == {"baseline": 0, "angry": 3, "happy": 4688}
    assert sets.groups["happy"] == [happy(i) for i in range(312)]  # first occurrences, in file order


def test_prompts_in_two_files_are_one_line_naming_the_file_that_keeps_them(tmp_path, capsys):
    folder = tmp_path / "prompts"
    write_lines(folder, "baseline.txt", [calm(i) for i in range(50)])
    write_lines(folder, "happy.txt", [happy(i) for i in range(50)] + [calm(i) for i in range(20)] + [calm(3)] * 4)
    sets = load_prompt_sets(folder)
    assert warnings_of(capsys) == [
        ("warning: happy.txt: 24 lines (20 distinct prompts) also in baseline.txt dropped (baseline.txt, read "
         "first, keeps them; e.g. 'The garden number 3 was watered this mor...')"),
    ]
    assert len(sets.groups["happy"]) == 50 and len(sets.groups["baseline"]) == 50


def test_duplicates_error_stops_at_the_first_naming_file_and_line(scraped, tmp_path):
    with pytest.raises(UserError, match=r"^angry.txt line 38: prompt 'I was furious about the fence number "
                                        r"0.' is already earlier in this file \(line 1\); remove the duplicate"):
        load_prompt_sets(scraped, duplicates="error")
    folder = tmp_path / "two"
    write_lines(folder, "baseline.txt", ["# a comment", "", calm(0), calm(1)])
    write_lines(folder, "happy.txt", [happy(0), calm(1)])
    with pytest.raises(UserError, match=r"^happy.txt line 2: .* is already in baseline.txt \(line 4\)"):
        load_prompt_sets(folder, duplicates="error")


def test_max_prompts_samples_reproducibly_in_file_order_after_dropping_duplicates(scraped, capsys):
    sets = load_prompt_sets(scraped, max_prompts=250)
    assert {g: len(p) for g, p in sets.groups.items()} == {"baseline": 250, "angry": 37, "happy": 250}
    assert sets.sampled_from == {"baseline": 2000, "happy": 312}  # happy: counted after dropping repeats
    err = capsys.readouterr().err
    assert "note: baseline.txt: 2,000 prompts, 250 sampled (--max-prompts 250, --sample-seed 0)" in err
    assert "note: happy.txt: 312 prompts, 250 sampled (--max-prompts 250, --sample-seed 0)" in err
    assert "baseline.txt: 2,000 prompts, 250 sampled (--max-prompts 250, --sample-seed 0)" in sets.notes
    baseline = [calm(i) for i in range(2000)]
    lines = [baseline.index(p) for p in sets.groups["baseline"]]
    assert lines == sorted(lines) and len(set(lines)) == 250  # file order kept, no line twice
    # The sample depends only on the text and the seed (a hash, not a random generator), so these
    # pinned lines hold on every machine (regenerate: print lines[:5]).
    assert lines[:5] == [9, 20, 21, 25, 26]
    assert load_prompt_sets(scraped, max_prompts=250).groups == sets.groups
    other = load_prompt_sets(scraped, max_prompts=250, sample_seed=1).groups["baseline"]
    assert len(other) == 250 and other != sets.groups["baseline"]
    assert load_prompt_sets(scraped, max_prompts=5000).groups == load_prompt_sets(scraped).groups


def test_paired_sampling_keeps_pairs_together(tmp_path, capsys):
    folder = tmp_path / "pairs"
    write_lines(folder, "baseline.txt", [calm(i) for i in range(3000)])
    write_lines(folder, "happy.txt", [happy(i) for i in range(3000)])
    write_lines(folder, "angry.txt", [f"I was furious about the garden number {i}." for i in range(3000)])
    sets = load_prompt_sets(folder, max_prompts=400, paired=True)
    numbers = {g: [int(p.split("number ")[1].split()[0].rstrip(".")) for p in prompts]
               for g, prompts in sets.groups.items()}
    assert numbers["baseline"] == numbers["happy"] == numbers["angry"] == sorted(numbers["baseline"])
    assert len(numbers["baseline"]) == 400
    assert "the same line numbers in every file, so pairs stay together" in capsys.readouterr().err
    # Paired files cannot lose a line to duplicates: pairs after it would shift.
    write_lines(folder, "happy.txt", [happy(i) for i in range(2999)] + [happy(0)])
    with pytest.raises(UserError, match="so no line may be dropped, but happy.txt: 1 duplicate line"):
        load_prompt_sets(folder, max_prompts=400, paired=True)


def test_chapter2_samples_with_max_prompts_and_records_it(world, tmp_path, capsys):
    folder = tmp_path / "prompts"
    write_lines(folder, "baseline.txt", [calm(i) for i in range(300)])
    write_lines(folder, "happy.txt", [happy(i % 150) for i in range(600)])
    out = tmp_path / "out"
    argv = ["--demo", "--prompts", str(folder), "--out", str(out), "--quiet", "--no-cache"]
    assert ch2.main([*argv, "--max-prompts", "60"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: happy.txt: 450 duplicate lines of 150 distinct prompts dropped") == 1
    assert "note: happy.txt: 150 prompts, 60 sampled (--max-prompts 60, --sample-seed 0)" in err
    record = json.loads((out / "MechInterpFeatureMeaning_run.json").read_text())
    assert record["n_prompts"] == {"baseline": 60, "happy": 60}
    assert any("baseline.txt: 300 prompts, 60 sampled" in line for line in record["filtered"])
    assert ch2.main([*argv, "--max-prompts", "3"]) == 2
    assert "--max-prompts 3 is too few: the statistics need at least 5 prompts per group" in capsys.readouterr().err


def test_concept_lines_state_the_concept_words(tmp_path):
    from mechinterp.core.prompts import concept_words, load_prompt_sets

    (tmp_path / "baseline.txt").write_text("I was ready.\nI was busy.\n", encoding="utf-8")
    (tmp_path / "joy.txt").write_text("# concept: happy, glad\n#Concept:thrilled,  glad ,\nI was happy.\n"
                                      "# a plain comment: not words\nI was glad.\n", encoding="utf-8")
    assert concept_words(tmp_path / "joy.txt") == ["happy", "glad", "thrilled"]
    assert concept_words(tmp_path / "baseline.txt") == []
    sets = load_prompt_sets(tmp_path)
    assert sets.concept_words == {"joy": ["happy", "glad", "thrilled"]}
    assert sets.groups["joy"] == ["I was happy.", "I was glad."]  # the concept line is a comment
