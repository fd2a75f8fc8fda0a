"""Chapter 3 mining a corpus in bfloat16, with its top windows re-scored in float32 (issue 25).

``MechInterpFeatureInspect.py --demo --dtype bfloat16 --corpus FILE`` mines in bfloat16, loads a float32
copy of the model and SAE through the project's loader and re-scores each feature's candidate windows
with it. The reference is the same command in float32. For every feature the re-score does not flag,
the bfloat16 run must report float32's top windows: the same windows, peak positions and float32
activations, to float32 rounding. The re-score encodes with the same float32 weights, but in other
batches, and some CPUs' kernels round by batch; so numbers are compared at a relative 1e-5, and the
runs use an encoder that rounds by batch (tests/helpers.py), so that the test holds on every CPU.
The flags must agree everywhere they are reported: the summary line, the run record and each card.

The bfloat16 pass is interrupted once and continued, so the re-scored result is that of a resumed pass;
a rerun reads the saved pass back and re-scores it again. bfloat16 is emulated on CPUs without bf16
instructions (~50x slower than float32), so the corpus is small (~2,300 tokens).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re

import pytest
import torch
from matplotlib.figure import Figure

import MechInterpFeatureInspect as ch3
from mechinterp.cards import mining, report
from mechinterp.core import constants
from mechinterp.core.toyworld import demo_corpus
from tests.helpers import batch_dependent_rounding

# The run's line about the re-score, wrapped anywhere in the terminal.
SUMMARY = re.compile(r"Mined\s+in\s+bfloat16;\s+top-k\s+windows\s+re-scored\s+in\s+float32:\s+(\d+)\s+of\s+(\d+)\s+"
                     r"features?\s+may\s+still\s+differ\s+from\s+float32\s+\(flagged\)\.")
# Cards: the planted 'angry' and 'happy' features (plateaus: flagged) and features that fire in more than
# 10 windows of this corpus. In bfloat16 alone the top 10 of #1, #3 and #100 differ from float32's (measured
# with mine() on this corpus); the re-score makes them float32's and does not flag them; #300 is flagged.
CARDED = (1, 3, 100, 185, 300, 409, 501)


def same_to_rounding(a, b) -> bool:
    """``a == b`` for JSON-like values, numbers (not their strings) compared at a relative 1e-5."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-5 * max(abs(a), abs(b)) + 1e-7
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_to_rounding(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_to_rounding(x, y) for x, y in zip(a, b))
    return a == b


def blank_figure(*_args, **_kwargs) -> Figure:
    return Figure(figsize=(1, 1))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    sentences = demo_corpus(200, seed=3)
    path = tmp_path_factory.mktemp("bf16corpus") / "corpus.txt"
    path.write_text("\n".join(" ".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3)) + "\n",
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(world, corpus_file, tmp_path_factory):
    """The float32 run, the bfloat16 run (interrupted once, then continued) and a bfloat16 rerun that
    reads the saved pass; the dtypes the loader was asked for; each run's output folder and printout."""
    base = tmp_path_factory.mktemp("bf16runs")
    prompts = base / "prompts"
    prompts.mkdir()
    (prompts / "happy.txt").write_text("The teacher was glad.\nMy sister was thrilled!\n", encoding="utf-8")
    (prompts / "baseline.txt").write_text("The teacher was ready.\n", encoding="utf-8")
    patch = pytest.MonkeyPatch()
    loads, loaded = [], {}
    real_load = ch3.load

    def load(source, log=None):  # the real loader, once per dtype (the model is read-only here)
        loads.append(source.dtype)
        if source.dtype not in loaded:
            loaded[source.dtype] = real_load(source, log=log)
        return loaded[source.dtype]

    patch.setattr(ch3, "load", load)
    patch.setattr(mining, "sae_encode", batch_dependent_rounding(mining.sae_encode))
    patch.setattr(report, "card_figure", blank_figure)  # the figures are tested in test_chapter3*
    patch.setattr(report, "corpus_figure", blank_figure)
    patch.setattr(constants, "mining_cache_dir", lambda: base / "mining")
    features = [a for f in CARDED for a in ("--feature", str(f))]

    def run(name: str, *argv: str) -> dict:
        out = base / name
        printed, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(err):
            code = ch3.main(["--demo", "--prompts", str(prompts), "--corpus", str(corpus_file), "--batch-size", "8",
                             "--color", "never", "--verbose", *features, "--out", str(out), *argv])
        return {"code": code, "out": out, "printed": printed.getvalue(), "err": err.getvalue()}

    try:
        result = {"float32": run("float32", "--all-features")}
        calls = []

        def interrupt(self, done, total):
            calls.append(done)
            if len(calls) == 3:  # after two batches of the pass
                raise KeyboardInterrupt

        with patch.context() as cut:
            cut.setattr(report.MiningProgress, "__call__", interrupt)
            result["interrupted"] = run("bfloat16", "--all-features", "--dtype", "bfloat16")
        result["bfloat16"] = run("bfloat16", "--all-features", "--dtype", "bfloat16")
        # Only the carded features: the saved every-feature pass answers, re-scored for them alone.
        result["reread"] = run("reread", "--dtype", "bfloat16", "--candidates-factor", "2")
        result["loads"] = loads
        yield result
    finally:
        patch.undo()


def card(run: dict, feature: int) -> dict:
    return json.loads((run["out"] / constants.CARD_JSON.format(feature=feature)).read_text(encoding="utf-8"))


def record(run: dict) -> dict:
    return json.loads((run["out"] / "MechInterpFeatureInspect_run.json").read_text(encoding="utf-8"))


def every_feature_table(run: dict) -> dict[int, dict]:
    with open(run["out"] / constants.CORPUS_FEATURES_CSV, encoding="utf-8") as f:
        return {int(row["feature"]): row for row in csv.DictReader(f)}


def top_windows(run: dict, feature: int) -> list[tuple]:
    """A card's top corpus windows as the user reads them: where, peak, and every token's activation."""
    return [(ex["text_index"], ex["where"], ex["peak_position"], ex["peak_token"], ex["max_activation"],
             ex["activations"]) for ex in card(run, feature)["corpus"]["top_examples"]]


def test_the_pass_is_interrupted_then_continued_in_bfloat16_with_a_float32_copy(runs):
    assert runs["float32"]["code"] == 0, runs["float32"]["err"]
    assert runs["interrupted"]["code"] == 130 and "saved the progress so far" in runs["interrupted"]["err"]
    resumed = runs["bfloat16"]
    assert resumed["code"] == 0, resumed["err"]
    assert "resuming from" in resumed["err"] and "loading a float32 copy" in resumed["err"]
    # Each bfloat16 run loads the model twice through the loader: in bfloat16, then in float32.
    assert runs["loads"] == ["float32", "bfloat16", "float32", "bfloat16", "float32", "bfloat16", "float32"]
    assert "Mined in" not in runs["float32"]["printed"] and "rescore" not in record(runs["float32"])["corpus"]


def test_unflagged_features_show_float32s_top_windows(runs):
    f32, bf16 = runs["float32"], runs["bfloat16"]
    flagged = set(record(bf16)["corpus"]["rescore"]["uncertain_features"])
    # Every feature's top window (corpus_features.csv), where the re-score vouches for it.
    ours, theirs = every_feature_table(bf16), every_feature_table(f32)
    columns = ("max_activation", "examples", "top_doc", "top_doc_token", "top_token", "top_context")
    vouched = [f for f in theirs if f not in flagged and int(theirs[f]["examples"]) > 0]
    assert len(vouched) >= 100
    # The top window may be another of a plateau's windows (the same activation to rounding on the same
    # token, whose order is batch noise on some CPUs); anything else must be float32's own.
    plateau_swaps = 0
    for f in vouched:
        assert float(ours[f]["max_activation"]) == pytest.approx(float(theirs[f]["max_activation"]), rel=1e-5), f
        assert ours[f]["examples"] == theirs[f]["examples"], f
        if [ours[f][c] for c in columns[2:]] != [theirs[f][c] for c in columns[2:]]:
            assert ours[f]["top_token"] == theirs[f]["top_token"], f
            plateau_swaps += 1
    assert plateau_swaps <= len(vouched) // 20
    # The cards' whole top 10: windows, peaks and float32 activations of every token.
    unflagged = [f for f in CARDED if f not in flagged]
    assert len(unflagged) >= 3
    for f in unflagged:
        assert len(top_windows(f32, f)) == 10 and same_to_rounding(top_windows(bf16, f), top_windows(f32, f)), f
    # The re-score changed what the bfloat16 pass alone would show: the flags are not decoration. The
    # planted 'happy' feature is a plateau (3.0 in bfloat16 in many windows) and its top windows differ.
    assert record(bf16)["corpus"]["rescore"]["features_changed"] > 0
    happy = 501
    assert happy in flagged and top_windows(bf16, happy) != top_windows(f32, happy)
    # Even a flagged card's activations are float32's: its peaks are not bfloat16 numbers (3.0, 2.984375).
    peaks = torch.tensor([ex[4] for ex in top_windows(bf16, happy)])
    assert not (peaks.bfloat16().float() == peaks).any()


def test_flags_agree_in_the_summary_the_record_and_the_cards(runs):
    bf16 = runs["bfloat16"]
    corpus = record(bf16)["corpus"]
    rescore = corpus["rescore"]
    assert corpus["dtype"] == "bfloat16" and rescore["done"] and rescore["pass_dtype"] == "torch.bfloat16"
    assert rescore["candidates"] == 20 and corpus["k"] == 10 and corpus["features_rescored"] == 512
    assert rescore["uncertain"] == len(rescore["uncertain_features"]) and 0 < rescore["uncertain"] < 512
    assert 0 < rescore["windows_encoded"] <= corpus["windows"]
    match = SUMMARY.search(bf16["printed"])
    assert match is not None, bf16["printed"][:2000]
    assert (int(match[1]), int(match[2])) == (rescore["uncertain"], 512)
    report_text = (bf16["out"] / "MechInterpFeatureInspect_report.txt").read_text(encoding="utf-8")
    assert SUMMARY.search(report_text)
    for f in CARDED:
        c = card(bf16, f)["corpus"]
        flagged = f in rescore["uncertain_features"]
        assert c["rescored_in_float32_from"] == "bfloat16" and c["top_windows_may_differ_from_float32"] == flagged
        page = (bf16["out"] / constants.CARD_HTML.format(feature=f)).read_text(encoding="utf-8")
        assert ("may differ from a float32 pass" in page) == flagged
        assert ("re-scored in float32, so they and their" in page) == (not flagged)
    # The text card: one flagged note per flagged card in the full report.
    assert report_text.count("Note: its top corpus windows may differ from a float32 pass's.") == sum(
        f in rescore["uncertain_features"] for f in CARDED)
    assert "float32" not in json.dumps(card(runs["float32"], CARDED[0])["corpus"])


RESCORING = re.compile(r"re-scoring the top windows in float32: ([\d,]+) distinct candidate windows of the "
                       r"pass's ([\d,]+) \(20 per feature, (\d+) features\) \.\.\.(.*)")
RESCORED = re.compile(r"re-scored ([\d,]+) windows in float32 in ([\d.]+)s")
MINED = re.compile(r"mined ([\d,]+) tokens \(([\d,]+) windows, [\d,]+ documents\) in ([\d.]+)s, "
                   r"([\d,]+) tokens/s")


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_the_log_says_what_the_re_score_encodes_and_times_it_apart_from_the_pass(runs):
    """The re-score encodes every distinct candidate window again, in float32 and in bfloat16: the log
    says how many before the wait (and when that is most of the corpus), and its time is not the pass's."""
    for name, n_features in (("bfloat16", 512), ("reread", len(CARDED))):
        run = runs[name]
        corpus = record(run)["corpus"]
        rescore = corpus["rescore"]
        before, after = RESCORING.search(run["err"]), RESCORED.search(run["err"])
        assert before is not None and after is not None, run["err"][-3000:]
        assert number(before[1]) == number(after[1]) == rescore["windows_encoded"] > 0
        assert (number(before[2]), number(before[3])) == (corpus["windows"], n_features)
        most = 2 * rescore["windows_encoded"] > corpus["windows"]
        assert ("Most of the corpus" in before[4]) == most, before[4]
        assert 0 < rescore["seconds"] and float(after[2]) == pytest.approx(rescore["seconds"], abs=0.06)
        assert before.end() < after.start()
    # 20 candidates per feature cover most of this small corpus (67 windows), even for seven features.
    assert "Most of the corpus" in RESCORING.search(runs["bfloat16"]["err"])[4]
    # The pass that encoded (the continued one) reports its own speed, without the re-score's time.
    mined = MINED.search(runs["bfloat16"]["err"])
    assert mined is not None and number(mined[2]) == record(runs["bfloat16"])["corpus"]["windows"]
    assert MINED.search(runs["reread"]["err"]) is None  # read back: nothing mined, only re-scored
    pass_seconds, rate = float(mined[3]), number(mined[4])
    total = pass_seconds + record(runs["bfloat16"])["corpus"]["rescore"]["seconds"]
    assert rate * pass_seconds <= number(mined[1]) * (1 + 0.05 / pass_seconds) + rate * 0.05
    assert rate * total > number(mined[1]) - 1 or total < 0.1  # a rate over the whole call would be lower


def test_a_reread_pass_is_re_scored_again_for_the_features_asked(runs):
    """The saved pass holds the bfloat16 candidates, never the re-score: reading it back (here the
    every-feature pass, for the carded features only) re-scores the features asked for, to the same cards."""
    again = runs["reread"]
    assert again["code"] == 0 and "reading the saved pass over every feature" in again["err"]
    assert "mined " not in again["err"]
    corpus, whole = record(again)["corpus"], record(runs["bfloat16"])["corpus"]["rescore"]
    assert corpus["features_rescored"] == len(CARDED) and corpus["rescore"]["candidates"] == 20
    assert corpus["rescore"]["uncertain_features"] == [f for f in whole["uncertain_features"] if f in CARDED]
    match = SUMMARY.search(again["printed"])
    assert match is not None and int(match[2]) == len(CARDED)
    for f in CARDED:
        assert same_to_rounding(card(again, f)["corpus"], card(runs["bfloat16"], f)["corpus"]), f


def test_candidates_factor_needs_a_reduced_precision_corpus_pass(corpus_file, capsys):
    assert ch3.main(["--demo", "--candidates-factor", "3"]) == 2
    assert "is about corpus mining" in capsys.readouterr().err
    assert ch3.main(["--demo", "--corpus", str(corpus_file), "--candidates-factor", "3"]) == 2
    assert "applies to a pass in --dtype bfloat16 or float16" in capsys.readouterr().err
    assert "candidates_factor" not in vars(ch3.parse_args(["--demo"]))  # a float32 run records no new flag
