"""An output folder tells one run's story: files an earlier run of the same script wrote there, and
this run did not, are moved aside (never deleted) when the run succeeds, and the run says so."""

from __future__ import annotations

import json

import pytest

from mechinterp.core.io import EARLIER_RUNS, OutputFolder
from mechinterp.core.records import RunRecord


def _run(folder, names, script="MechInterpFeatureMeaning.py", fail=False):
    with OutputFolder(folder) as out:
        record = RunRecord(script, [], {})
        record.wrote(*[out.write_text(n, n) for n in names])
        record.write(out)
        if fail:
            raise KeyboardInterrupt


def test_files_of_an_earlier_run_that_this_run_did_not_write_are_moved_aside(tmp_path, capsys):
    _run(tmp_path, ["MI4_angry.png", "MI4_happy.png", "feature_stats.csv"])
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")  # the user's own file
    _run(tmp_path, ["MI1.png"], script="MechInterpInitialInvestigation.py")  # another script's outputs
    capsys.readouterr()
    _run(tmp_path, ["MI4_happy.png", "feature_stats.csv"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "Moved 1 file(s) that an earlier run of this script wrote here" in printed and "MI4_angry.png" in printed
    assert not (tmp_path / "MI4_angry.png").exists()
    assert (tmp_path / EARLIER_RUNS / "MI4_angry.png").read_text(encoding="utf-8") == "MI4_angry.png"
    for kept in ("MI4_happy.png", "feature_stats.csv", "notes.txt", "MI1.png"):
        assert (tmp_path / kept).is_file(), kept
    record = json.loads((tmp_path / "MechInterpFeatureMeaning_run.json").read_text(encoding="utf-8"))
    assert record["removed_earlier_files"] == ["MI4_angry.png"]


def test_a_failed_run_moves_nothing_and_a_repeated_run_says_nothing(tmp_path, capsys):
    _run(tmp_path, ["a.csv", "b.csv"])
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, ["a.csv"], fail=True)
    assert (tmp_path / "b.csv").is_file() and not (tmp_path / EARLIER_RUNS).exists()
    capsys.readouterr()
    _run(tmp_path, ["a.csv", "b.csv"])
    assert "Moved" not in capsys.readouterr().out
