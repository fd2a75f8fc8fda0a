"""Chapter 3's label flags end to end on the demo world with a ``--corpus`` file (issue 24).

The model load is replaced by the session's already loaded toy world and the figures by blank ones
(except in the first run), as tests/test_chapter3_corpus.py does.
"""

from __future__ import annotations

import csv
import json
import random

import pytest
from matplotlib.figure import Figure

import MechInterpFeatureInspect as ch3
from mechinterp.cards import label_report, report
from mechinterp.core import constants
from mechinterp.core.toyworld import CONCEPT_WORDS, NEUTRAL_WORDS, make_sentence

JOY = "joy: " + ", ".join(CONCEPT_WORDS["happy"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(11)
    docs = []
    for i in range(60):
        parts = [make_sentence(rng, rng.choice(NEUTRAL_WORDS)) for _ in range(6)]
        if i % 2:
            parts[rng.randrange(6)] = make_sentence(rng, rng.choice(CONCEPT_WORDS["happy"]))
        if i % 3 == 0:
            parts[rng.randrange(6)] = make_sentence(rng, rng.choice(CONCEPT_WORDS["angry"]))
        docs.append(" ".join(parts))
    path = tmp_path_factory.mktemp("labels_cli") / "corpus.txt"
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return path


def blank_figure(*_args, **_kwargs) -> Figure:
    return Figure(figsize=(1, 1))


@pytest.fixture
def run(loaded_toy, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ch3, "load", lambda source, log=None: loaded_toy)
    for name in ("card_figure", "corpus_figure", "family_figure"):
        monkeypatch.setattr(report, name, blank_figure)
    monkeypatch.setattr(constants, "mining_cache_dir", lambda: tmp_path / "mining")

    def call(*argv: str) -> tuple[int, str, str]:
        code = ch3.main(["--demo", "--color", "never", "--label-random", "5", "--label-bootstrap", "30", *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def test_a_label_is_scored_on_each_card_and_family(run, corpus, world, tmp_path):
    happy, angry = world.planted.concept["happy"], world.planted.concept["angry"]
    out = tmp_path / "out"
    code, printed, err = run("--feature", str(happy), "--feature", str(angry), "--family", f"{angry}+{happy}",
                             "--corpus", str(corpus), "--label", JOY, "--out", str(out))
    assert code == 0, err
    cards = {f: json.loads((out / constants.CARD_JSON.format(feature=f)).read_text()) for f in (happy, angry)}
    joy_on_happy, joy_on_angry = cards[happy]["label_scores"][0], cards[angry]["label_scores"][0]
    assert joy_on_happy["sensitivity"] >= 0.9 and joy_on_happy["auroc"] >= 0.9
    assert joy_on_angry["specificity"] <= 0.2 and joy_on_angry["sensitivity"] <= 0.2
    assert len(joy_on_happy["random_labels"]) == 5 and set(joy_on_happy["ci95"]) == {"specificity", "sensitivity", "auroc"}
    family = json.loads((out / constants.FAMILY_JSON.format(family=f"{angry}+{happy}")).read_text())
    assert family["label_scores"][0]["sensitivity"] >= 0.9  # the family activation fires wherever the happy member does
    for name in (happy, angry, f"{angry}+{happy}"):
        assert (out / label_report.LABEL_PNG.format(feature=name)).is_file()
        with open(out / label_report.LABEL_CSV.format(feature=name), newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows and {"label", "bin_low", "bin_high", "label_tokens", "other_tokens"} <= set(rows[0])
    # The CSV's counts are the figure's: the covered tokens where it fires.
    with open(out / label_report.LABEL_CSV.format(feature=happy), newline="") as f:
        covered = sum(int(r["label_tokens"]) for r in csv.DictReader(f))
    assert covered == joy_on_happy["n_covered_fired"]
    assert "Does the label explain it?" in (out / constants.CARD_HTML.format(feature=happy)).read_text()
    assert "label scores (corpus)" in (out / constants.CARDS_INDEX_HTML).read_text()
    with open(out / constants.CARDS_CSV, newline="") as f:
        summary = list(csv.DictReader(f))
    assert all(r["label"] == "joy" for r in summary) and float(summary[0]["label_auroc"]) >= 0.9
    # The terminal block: five statements per card, each wrapped to 100 columns (continuations indented 4).
    assert all(len(line) <= 100 for line in printed.splitlines() if "occurrences" in line or "random lists" in line)
    lines = printed.replace("\n    ", " ").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Label 'joy")]
    assert len(starts) == 3
    for i in starts:
        block = lines[i:i + 5]
        assert block[1].lstrip().startswith("specificity") and block[4].lstrip().startswith("figure:")


def test_each_feature_gets_its_own_chapter2_word_set(run, corpus, world, tmp_path):
    happy, angry = world.planted.concept["happy"], world.planted.concept["angry"]
    stats = tmp_path / "feature_stats.csv"
    with open(stats, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["group", "feature", "rank", "q_value", "alpha", "replicated", "verdict", "family", "words"])
        for group, feature in (("happy", happy), ("angry", angry)):
            w.writerow([group, feature, 1, 1e-8, 0.05, "yes", "concept", "",
                        " ".join(repr(" " + x) for x in CONCEPT_WORDS[group])])
    out = tmp_path / "out"
    code, _, err = run("--from-results", str(stats), "--top-n", "1", "--label-from-results", "--corpus",
                       str(corpus), "--label-regex", r"\bwas\b", "--out", str(out))
    assert code == 0, err
    for feature, group in ((happy, "happy"), (angry, "angry")):
        scores = json.loads((out / constants.CARD_JSON.format(feature=feature)).read_text())["label_scores"]
        own, regex = scores
        assert own["label"]["words"] == list(CONCEPT_WORDS[group]) and own["sensitivity"] >= 0.9
        assert regex["label"]["regex"] == r"\bwas\b" and regex["specificity"] <= 0.2


def test_a_label_needs_a_corpus(run, tmp_path, capsys):
    code, _, err = run("--feature", "1", "--label", JOY, "--out", str(tmp_path / "out"))
    assert code == 2 and "--corpus" in err


def test_a_prompt_file_becomes_a_word_list(run, corpus, world, tmp_path):
    happy = world.planted.concept["happy"]
    prompts = tmp_path / "joy_prompts.txt"
    words = CONCEPT_WORDS["happy"]
    rng = random.Random(3)  # sentences like the corpus's, each with a happy word: only those stand out
    prompts.write_text("\n".join(make_sentence(rng, w) for w in words * 3) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code, printed, err = run("--feature", str(happy), "--corpus", str(corpus), "--label-prompts", str(prompts),
                             "--label-random", "0", "--label-bootstrap", "0", "--out", str(out))
    assert code == 0, err
    assert "--label-prompts words:" in " ".join(printed.split())
    score = json.loads((out / constants.CARD_JSON.format(feature=happy)).read_text())["label_scores"][0]
    assert set(score["label"]["words"]) == set(words) and score["sensitivity"] >= 0.9
