"""Feature families and word sets on simulated prompt sets, against brute force.

A split concept (two features, each on half of the concept's words) must come out as one
``concept (split)`` family; a single concept feature, a topic feature and a null group must give none.
The family search is checked against an exhaustive search that judges every subset of the candidates
on its own, and the family's activation and AUROC against a per-prompt loop.
"""

from __future__ import annotations

import itertools
import random
import re
import zlib

import numpy as np
import pytest

from mechinterp.meaning import design, families, themes, verdicts
from mechinterp.meaning.options import ConfoundSettings
from tests.test_confounds import Vocab  # the same regex tokenizer: words with their leading space

HALF_A = ("scared", "afraid", "terrified", "frightened")
HALF_B = ("nervous", "worried", "anxious", "uneasy")
TOPIC = ("rain", "storm", "snow", "wind", "cloud", "thunder")
NEUTRAL = ("ready", "quiet", "busy", "early", "late", "seated", "awake", "tired")
SUBJECTS = ("The teacher", "My neighbour", "The driver", "Our team", "The old man", "My sister", "A student")
VERBS = ("walked to", "looked at", "opened", "cleaned", "painted", "visited", "passed", "closed")
OBJECTS = ("the station", "the window", "a small box", "the garden", "the kitchen", "the office", "the bridge")


def _noise(text: str, salt: int, n: int) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(text.encode()) * 31 + salt).random(n)


def on_words(words, salt, base=3.0):
    def rule(text, toks):
        return np.where([t.strip() in words for t in toks], base + _noise(text, salt, len(toks)), 0.0)
    return rule


RULES = {
    "half_a": on_words(HALF_A, 1),
    "half_b": on_words(HALF_B, 2, base=1.0),  # another scale: the family must normalise members
    "whole": on_words(HALF_A + HALF_B, 3),
    "topic": on_words(TOPIC, 4),
}
FEATURE_ID = {name: 200 + i for i, name in enumerate(RULES)}
NAME_OF = {v: k for k, v in FEATURE_ID.items()}


def side(vocab: Vocab, texts: list[str], names: list[str]):
    ids, strs = zip(*(vocab(t) for t in texts))
    value = np.zeros((len(texts), len(names)))
    peak = np.full((len(texts), len(names)), -1)
    for i, (text, toks) in enumerate(zip(texts, strs)):
        for j, name in enumerate(names):
            acts = RULES[name](text, toks)
            if acts.max() > 0:
                value[i, j], peak[i, j] = acts.max(), int(acts.argmax())
    return (design.TokenizedPrompts(list(texts), list(ids), list(strs)),
            verdicts.FeatureActivity([FEATURE_ID[n] for n in names], value, peak))


def world(seed: int, n: int = 48, words=HALF_A + HALF_B, topic_share=0.0, base_topic=0.0):
    """Group lines each carry one concept word (and a topic word in ``topic_share`` of them); baseline
    lines a neutral word (and a topic word in ``base_topic``); one template for both."""
    rng = random.Random(seed)

    def line(word: str, share: float) -> str:
        tail = f" in the {rng.choice(TOPIC)}" if rng.random() < share else " this morning"
        return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} and was {word}{tail}."

    group = [line(words[i % len(words)], topic_share) for i in range(n)]
    baseline = [line(rng.choice(NEUTRAL), base_topic) for _ in range(n)]
    return group, baseline


def judged(group_texts, base_texts, names, settings=None):
    vocab = Vocab()
    g_tok, g_act = side(vocab, group_texts, names)
    b_tok, b_act = side(vocab, base_texts, names)
    reports = verdicts.explain_features(g_tok, b_tok, g_act, b_act, "fear", "baseline", settings=settings)
    return g_tok, b_tok, g_act, b_act, reports


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_split_concept_is_one_family_and_no_member_passes_alone(seed):
    g_tok, b_tok, g_act, b_act, reports = judged(*world(seed), ["half_a", "half_b"])
    assert [r.verdict.verdict for r in reports] == ["context", "context"]
    assert all(not r.generalisation.passes for r in reports)
    fams = families.find_families(g_tok, b_tok, g_act, b_act, reports, ("fear", "baseline"))
    assert len(fams) == 1
    fam = fams[0]
    assert fam.members == (FEATURE_ID["half_a"], FEATURE_ID["half_b"])
    assert fam.verdict.verdict == families.CONCEPT_SPLIT
    assert fam.report.generalisation.passes
    assert {w.strip() for w in fam.words} == set(HALF_A + HALF_B)
    assert fam.cofiring == 0.0
    assert fam.label == f"{FEATURE_ID['half_a']}+{FEATURE_ID['half_b']}"
    assert "together separate fear prompts" in fam.verdict.evidence


def test_the_family_activation_and_auroc_match_a_per_prompt_loop():
    g_tok, b_tok, g_act, b_act, reports = judged(*world(3), ["half_a", "half_b"])
    fam = families.find_families(g_tok, b_tok, g_act, b_act, reports)[0]
    # Each member's typical max: the median of its per-prompt values where it fires, both sets together.
    scale = [float(np.median([v for v in np.r_[g_act.value[:, j], b_act.value[:, j]] if v > 0])) for j in range(2)]

    def by_loop(acts):
        return [max(acts.value[i, j] / scale[j] for j in range(2)) for i in range(len(acts.value))]

    x, y = by_loop(g_act), by_loop(b_act)
    pairs = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y)
    assert fam.auroc == pytest.approx(pairs / (len(x) * len(y)))
    value, peak = families.combined(g_act, [0, 1], np.array(scale))
    np.testing.assert_allclose(value, x)
    for i in range(len(x)):  # the peak is the peak of the member giving the maximum
        j = int(np.argmax([g_act.value[i, k] / scale[k] for k in range(2)]))
        assert peak[i] == (g_act.peak[i, j] if x[i] > 0 else -1)


def _exhaustive(g_tok, b_tok, g_act, b_act, reports, s):
    """Judge every subset of the candidates on its own (one explain_features call per subset), keep
    those that pass as a concept and need every member, and pick smallest first, as the search does."""
    cand = families.candidates(reports, s)
    words = [set(reports[k].evidence.separating_tokens) for k in cand]
    fired = g_act.peak[:, cand] >= 0
    scale = families.typical_max(np.concatenate([g_act.value, b_act.value]))
    passing = {}
    for size in range(2, families.FAMILY_MAX + 1):
        for combo in itertools.combinations(range(len(cand)), size):
            if not all(families._compatible(i, j, words, fired)[0] for i, j in itertools.combinations(combo, 2)):
                continue
            if any(sub in passing for sub in itertools.combinations(combo, size - 1)):
                continue
            cols = [cand[i] for i in combo]
            fg = verdicts.FeatureActivity([0], *[a[:, None] for a in families.combined(g_act, cols, scale)])
            fb = verdicts.FeatureActivity([0], *[a[:, None] for a in families.combined(b_act, cols, scale)])
            rep = verdicts.explain_features(g_tok, b_tok, fg, fb, settings=s)[0]
            if rep.verdict.verdict == verdicts.CONCEPT and not families.is_covered(
                    rep, families.concept_words(reports)):
                passing[combo] = rep
    chosen, used = [], set()
    for combo in sorted(passing, key=lambda c: (len(c), -passing[c].generalisation.auroc,
                                                -passing[c].evidence.auroc, c)):
        if used.isdisjoint(combo):
            used.update(combo)
            chosen.append(tuple(sorted(reports[cand[i]].evidence.feature for i in combo)))
    return sorted(chosen)


@pytest.mark.parametrize("seed", [4, 5])
def test_the_family_search_equals_an_exhaustive_search(seed):
    group, baseline = world(seed, topic_share=0.5, base_topic=0.05)
    g_tok, b_tok, g_act, b_act, reports = judged(group, baseline, ["half_a", "half_b", "topic"])
    s = ConfoundSettings()
    found = sorted(f.members for f in families.find_families(g_tok, b_tok, g_act, b_act, reports, settings=s))
    assert found == _exhaustive(g_tok, b_tok, g_act, b_act, reports, s)
    assert found == [(FEATURE_ID["half_a"], FEATURE_ID["half_b"])]  # the topic joins no family


def test_an_unsplit_concept_and_a_null_group_give_no_family():
    g_tok, b_tok, g_act, b_act, reports = judged(*world(6, topic_share=0.3), ["whole", "topic"])
    assert reports[0].verdict.verdict == "concept"
    assert families.find_families(g_tok, b_tok, g_act, b_act, reports) == []
    # Finer features beside a concept feature on the same words (absorption) form no second finding.
    g_tok, b_tok, g_act, b_act, reports = judged(*world(6), ["whole", "half_a", "half_b"])
    assert [r.verdict.verdict for r in reports] == ["concept", "context", "context"]
    assert families.find_families(g_tok, b_tok, g_act, b_act, reports) == []
    null = world(7, words=NEUTRAL)
    g_tok, b_tok, g_act, b_act, reports = judged(null[1], world(8, words=NEUTRAL)[1], ["half_a", "half_b", "topic"])
    assert families.find_families(g_tok, b_tok, g_act, b_act, reports) == []


def _sets(group, baseline, names, stated=None):
    g_tok, b_tok, g_act, b_act, reports = judged(group, baseline, names)
    out = [themes.word_set(f"#{r.evidence.feature}", [r.evidence.feature], r.evidence.separating_tokens,
                           g_tok, b_tok, False, stated) for r in reports if r.verdict.verdict == "concept"]
    return reports, out


def test_a_topic_in_most_prompts_is_flagged_as_a_second_theme():
    group, baseline = world(9, words=HALF_A + HALF_B, topic_share=0.7, base_topic=0.05)
    reports, sets = _sets(group, baseline, ["whole", "topic"])
    by_name = {NAME_OF[r.evidence.feature]: r for r in reports}
    assert by_name["whole"].verdict.verdict == "concept"
    topic = [w for w in sets if w.features == (FEATURE_ID["topic"],)]
    whole = [w for w in sets if w.features == (FEATURE_ID["whole"],)][0]
    assert whole.n_group == len(group) and whole.n_baseline == 0
    if topic:
        expected_topic = sum(any(re.search(rf"\b{w.strip()}\b", t) for w in topic[0].words) for t in group)  # concept or not, the topic is never an unflagged concept
        themes_found = themes.flag_themes(sets, "fear")
        assert themes_found and topic[0].flag.startswith("a second theme")
        assert topic[0].n_group == expected_topic
        assert whole.flag == ""
    else:
        assert by_name["topic"].verdict.verdict != "concept"


def test_stated_words_keep_a_topic_from_being_the_concept():
    group, baseline = world(10, words=HALF_A + HALF_B, topic_share=0.8, base_topic=0.0)
    stated = ["scared", "Afraid ", "terrified", "frightened", "nervous", "worried", "anxious", "uneasy"]
    _, sets = _sets(group, baseline, ["whole", "topic"], stated)
    themes.flag_themes(sets, "fear")
    by_id = {w.features[0]: w for w in sets}
    assert by_id[FEATURE_ID["whole"]].stated_share == 1.0 and by_id[FEATURE_ID["whole"]].flag == ""
    if FEATURE_ID["topic"] in by_id:
        assert by_id[FEATURE_ID["topic"]].stated_share == 0.0
        assert by_id[FEATURE_ID["topic"]].flag.startswith("rests on words other than")


def test_a_concept_in_few_of_its_groups_prompts_is_flagged_even_alone():
    w = themes.WordSet("#1", (1,), [" rain", " storm"], 35, 2, 50, 50)
    assert themes.flag_themes([w], "joy") is False
    assert "only 35 of 50 joy prompts" in w.flag


def test_paired_word_sets_count_the_pairs_that_differ_in_them():
    """With minimal pairs, a topic the pairs hold constant differs in no pair; one only the group line
    has differs in every pair that has it, and the advice says which."""
    vocab = Vocab()
    group = [f"The teacher opened the window and was {w} in the storm." for w in (HALF_A + HALF_B) * 2]
    same = [f"The teacher opened the window and was {w} in the storm." for w in NEUTRAL * 2]
    other = [f"The teacher opened the window and was {w} in the rain." for w in NEUTRAL * 2]
    g_tok = design.TokenizedPrompts(group, *zip(*(vocab(t) for t in group)))
    for base, n_base, differ in ((same, 16, 0), (other, 0, 16)):
        b_tok = design.TokenizedPrompts(base, *zip(*(vocab(t) for t in base)))
        w = themes.word_set("#7", [7], [" storm", " snow"], g_tok, b_tok, True, None)
        assert (w.n_group, w.n_baseline, w.pairs_differ) == (16, n_base, differ)
        w.flag = "a second theme"
        advice = " ".join(themes.advice([w], "fear", paired=True, stated=False))
        assert f"#7's words differ within {differ} of 16 pairs" in advice
        assert ("the pairs hold them constant" in advice) == (differ == 0)


def test_the_design_check_lists_the_words_the_baseline_never_uses():
    vocab = Vocab()
    group = ["I was scared in the rain.", "I was afraid of 12 storms.", "I was calm, really."]
    base = ["I was calm.", "I was ready, really."]
    only = design.only_words(design.TokenizedPrompts(group, *zip(*(vocab(t) for t in group))),
                             design.TokenizedPrompts(base, *zip(*(vocab(t) for t in base))))
    # Letters only and 3 or more of them: not ' in', ' 12', '.' or ' I'; ' calm' and ' really' are in the baseline.
    assert only.words == [(" afraid", 1), (" rain", 1), (" scared", 1), (" storms", 1), (" the", 1)]
    assert (only.n_prompts, only.size) == (2, 3)
