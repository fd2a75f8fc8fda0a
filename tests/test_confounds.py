"""The confound checks: each statistic against scipy or brute force, and the verdicts on simulated
prompt sets where every confound type is planted by a simple rule.

The simulated worlds tokenize with a regex (words with their leading space, punctuation alone) and
compute each feature's per-token activation by rule, so the "model" that the injection test calls
is the same rule applied to the edited text. Where an injection puts its token is checked with
GPT-2's real tokenizer (tests/gpt2_world.py's files), since the token id is what the feature sees.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import zlib
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as sps
from tokenizers import Tokenizer

from mechinterp.meaning import design, report, stats, verdicts
from mechinterp.meaning.options import ConfoundSettings
from tests import gpt2_world as gw

# ---------------------------------------------------------------------------------------------------
# A simulated world

CONCEPT = ("delighted", "cheerful", "glad", "thrilled", "grateful", "joyful", "elated", "overjoyed")
NEUTRAL = ("ready", "quiet", "busy", "early", "late", "seated", "awake", "tired")
SUBJECTS = (
    "The teacher", "My neighbour", "The driver", "Our team", "The old man", "My sister", "The manager",
    "A student", "The doctor", "His friend",
)
VERBS = (
    "walked to", "looked at", "opened", "cleaned", "painted", "visited", "passed", "closed", "checked",
    "found",
)
OBJECTS = (
    "the station", "the window", "a small box", "the garden", "the kitchen", "the office", "the bridge",
    "a red car", "the library", "the market",
)
TAILS = ("this morning", "after lunch", "on Monday", "before dinner", "at noon", "last week", "", "")
# Half one-token, half two-token verbs: ' the' then sits at text position 3 or 4 in baseline prompts.
BALANCED_VERBS = (
    "opened", "cleaned", "painted", "visited", "passed", "walked to", "looked at", "waited at", "ran to",
    "sat in",
)
NOUNS = ("teacher", "neighbour", "driver", "manager", "student", "doctor", "nurse", "pilot")
TOKEN_RE = re.compile(r"\s?\w+|[^\w\s]")
POSITION = 12  # the position feature's absolute text position


class Vocab:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, text: str) -> tuple[np.ndarray, list[str]]:
        strs = TOKEN_RE.findall(text)
        return np.array([self.ids.setdefault(t, len(self.ids)) for t in strs]), strs


def _noise(text: str, salt: int, n: int) -> np.ndarray:
    """Deterministic per-text noise, so the fake encoder is a pure function of the text."""
    return np.random.default_rng(zlib.crc32(text.encode()) * 31 + salt).random(n)


# Each rule maps (text, token strings) to per-token activations [n_tokens].
def concept_rule(text, toks):
    return np.where([t.strip() in CONCEPT for t in toks], 3.0 + _noise(text, 1, len(toks)), 0.0)


def exclaim_rule(text, toks):
    return np.where([t == "!" for t in toks], 2.0 + _noise(text, 2, len(toks)), 0.0)


def really_rule(text, toks):
    return np.where([t == " really" for t in toks], 1.5 + _noise(text, 3, len(toks)), 0.0)


def position_rule(text, toks):
    out = np.zeros(len(toks))
    if len(toks) > POSITION:
        out[POSITION] = 1.0 + 0.5 * _noise(text, 4, 1)[0]
    return out


def length_rule(text, toks):
    out = np.zeros(len(toks))
    out[-1] = 0.25 * len(toks) + 0.2 * _noise(text, 5, 1)[0]
    return out


def context_rule(text, toks):
    """Fires on ' and', which every prompt has: always when the prompt holds a concept word, else in
    about one prompt in five."""
    on = any(t.strip() in CONCEPT for t in toks) or zlib.crc32(text.encode()) % 5 == 0
    return np.where([t == " and" for t in toks], (1.5 + _noise(text, 6, len(toks))) * on, 0.0)


def the_at_3_rule(text, toks):
    """A ' the' detector that only fires at text position 3."""
    out = np.zeros(len(toks))
    if len(toks) > 3 and toks[3] == " the":
        out[3] = 2.0 + _noise(text, 7, 1)[0]
    return out


RULES = {
    "concept": concept_rule,
    "exclaim": exclaim_rule,
    "really": really_rule,
    "position": position_rule,
    "length": length_rule,
    "context": context_rule,
    "the3": the_at_3_rule,
}
FEATURE_ID = {name: 100 + i for i, name in enumerate(RULES)}
NAME_OF = {v: k for k, v in FEATURE_ID.items()}


def encode_with(vocab: Vocab, names: list[str]):
    def encode(texts: list[str], features: np.ndarray) -> np.ndarray:
        out = np.zeros((len(texts), len(features)))
        for i, text in enumerate(texts):
            _, toks = vocab(text)
            for j, f in enumerate(features):
                out[i, j] = RULES[NAME_OF[int(f)]](text, toks).max()
        return out

    return encode


def make_side(
    vocab: Vocab, texts: list[str], names: list[str]
) -> tuple[design.TokenizedPrompts, verdicts.FeatureActivity]:
    ids, strs = zip(*(vocab(t) for t in texts))
    value = np.zeros((len(texts), len(names)))
    peak = np.full((len(texts), len(names)), -1)
    for i, (text, toks) in enumerate(zip(texts, strs)):
        for j, name in enumerate(names):
            acts = RULES[name](text, toks)
            if acts.max() > 0:
                value[i, j], peak[i, j] = acts.max(), int(acts.argmax())
    return design.TokenizedPrompts(list(texts), list(ids), list(strs)), verdicts.FeatureActivity(
        [FEATURE_ID[n] for n in names], value, peak
    )


def messy_world(seed: int, n: int = 40, clause: float = 0.5) -> tuple[list[str], list[str]]:
    """Group prompts carry a concept word, and also, incidentally: ' really' (60%), a trailing clause
    ', as always' (``clause``, 50%) and '!' (75%); baseline prompts end in '!' 10% of the time, ' really' 5%."""
    rng = random.Random(seed)

    def sentence(word: str, really: float, clause: float, bang: float) -> str:
        tail = rng.choice(TAILS)
        middle = f"{rng.choice(OBJECTS)} {tail}".strip()
        adj = ("really " if rng.random() < really else "") + word
        end = (", as always" if rng.random() < clause else "") + ("!" if rng.random() < bang else ".")
        return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {middle} and was {adj}{end}"

    def unique(make) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            s = make()
            if s not in out:
                out.append(s)
        return out

    group = unique(lambda: sentence(rng.choice(CONCEPT), 0.6, clause, 0.75))
    baseline = unique(lambda: sentence(rng.choice(NEUTRAL), 0.05, 0.0, 0.1))
    return group, baseline


def matched_world(seed: int, n: int = 40) -> tuple[list[str], list[str], list[str]]:
    """Group, baseline and a null group drawn like the baseline, all from one template."""
    rng = random.Random(seed)

    def sentence(word: str) -> str:
        middle = f"{rng.choice(OBJECTS)} {rng.choice(TAILS)}".strip()
        return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {middle} and was {word}."

    return (
        [sentence(rng.choice(CONCEPT)) for _ in range(n)],
        [sentence(rng.choice(NEUTRAL)) for _ in range(n)],
        [sentence(rng.choice(NEUTRAL)) for _ in range(n)],
    )


def inserted_world(seed: int, n: int = 40) -> tuple[list[str], list[str]]:
    """Paired: group line i is baseline line i with a concept word inserted after 'The', which shifts
    every later token by one."""
    rng = random.Random(seed)
    base, group = [], []
    for _ in range(n):
        noun, verb, obj, tail = (
            rng.choice(NOUNS),
            rng.choice(BALANCED_VERBS),
            rng.choice(OBJECTS[:2] + OBJECTS[3:9]),
            rng.choice(TAILS),
        )
        rest = f"{verb} {obj} {tail}".strip()
        base.append(f"The {noun} {rest}.")
        group.append(f"The {rng.choice(CONCEPT)} {noun} {rest}.")
    return group, base


def judge(group_texts, base_texts, names, encode=True, settings=None):
    vocab = Vocab()
    g_tok, g_act = make_side(vocab, group_texts, names)
    b_tok, b_act = make_side(vocab, base_texts, names)
    reports = verdicts.explain_features(
        g_tok,
        b_tok,
        g_act,
        b_act,
        "joyful",
        "neutral",
        encode=encode_with(vocab, names) if encode else None,
        settings=settings,
    )
    return {NAME_OF[r.evidence.feature]: r for r in reports}


def zero_inflated(rng, n, f, fire=0.4, shift=0.0):
    """Per-prompt activations shaped like SAE features: many exact zeros, rounded so that ties abound."""
    fired = rng.random((n, f)) < fire
    return np.where(fired, rng.gamma(2.0, 0.5, (n, f)) + shift, 0.0).round(1)


# ---------------------------------------------------------------------------------------------------
# The statistics against references


@pytest.mark.parametrize("n1, n2", [(5, 5), (24, 31), (60, 7)])
def test_van_elteren_with_one_stratum_is_scipy_mann_whitney(n1, n2):
    rng = np.random.default_rng(n1 + 7 * n2)
    x, y = zero_inflated(rng, n1, 60, shift=0.3), zero_inflated(rng, n2, 60)
    x[:, 0], y[:, 0] = 1.0, 1.0  # all tied: no information, p = 1
    res = stats.van_elteren(np.r_[x, y], np.r_[np.ones(n1, bool), np.zeros(n2, bool)], np.zeros(n1 + n2))
    assert res.p_value[0] == 1.0 and res.auroc[0] == pytest.approx(0.5, abs=1e-12)
    for f in range(1, 60):
        ref = sps.mannwhitneyu(x[:, f], y[:, f], method="asymptotic", use_continuity=False)
        assert res.p_value[f] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)
        assert res.auroc[f] == pytest.approx(ref.statistic / (n1 * n2), rel=1e-12)
        assert np.sign(res.z[f]) == np.sign(ref.statistic - n1 * n2 / 2)
    assert (res.n_informative_group == n1).all() and (res.n_informative_baseline == n2).all()


def _brute_van_elteren_moments(values, in_group, strata):
    """Exact permutation mean and variance of the van Elteren statistic (labels shuffled within each
    stratum, every arrangement enumerated), its observed value and the weighted AUROC, by brute force."""
    per_stratum = []
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        m = int(in_group[idx].sum())
        if m == 0 or m == len(idx):
            continue
        per_stratum.append((idx, m, 1.0 / (len(idx) + 1)))

    # Pairwise comparisons, no ranks involved: U = sum over (group, baseline) pairs of [a > b] + [a = b] / 2.
    beats = (values[:, None] > values[None, :]) + 0.5 * (values[:, None] == values[None, :])

    def stat(assignments):
        total, num, den = 0.0, 0.0, 0.0
        for (idx, m, w), members in zip(per_stratum, assignments):
            others = [i for i in idx if i not in members]
            u = beats[np.ix_(list(members), others)].sum()
            total += w * (u - m * (len(idx) - m) / 2)
            num, den = num + w * u, den + w * m * (len(idx) - m)
        return total, num / den

    observed = stat([tuple(i for i in idx if in_group[i]) for idx, _, _ in per_stratum])
    space = [list(itertools.combinations(idx, m)) for idx, m, _ in per_stratum]
    draws = np.array([stat(a)[0] for a in itertools.product(*space)])
    return observed, draws.mean(), draws.var()


@pytest.mark.parametrize("seed", [0, 1])
def test_van_elteren_matches_the_exact_permutation_moments_of_several_strata(seed):
    rng = np.random.default_rng(seed)
    sizes = [(2, 2), (2, 3), (3, 1), (2, 0), (1, 3)]  # (group, baseline) per stratum; one holds no baseline
    strata = np.concatenate([np.full(a + b, k) for k, (a, b) in enumerate(sizes)])
    in_group = np.concatenate([np.r_[np.ones(a, bool), np.zeros(b, bool)] for a, b in sizes])
    values = zero_inflated(rng, len(strata), 4, fire=0.6, shift=0.2)
    values[:3, 3] = 0.5  # a tie across the two sets within a stratum
    res = stats.van_elteren(values, in_group, strata * 10 + 3)  # any labels will do
    for f in range(4):
        (t_obs, auroc), mean, var = _brute_van_elteren_moments(values[:, f], in_group, strata)
        assert mean == pytest.approx(0.0, abs=1e-12)
        assert res.z[f] == pytest.approx(t_obs / np.sqrt(var), rel=1e-9)
        assert res.p_value[f] == pytest.approx(2 * sps.norm.sf(abs(t_obs) / np.sqrt(var)), rel=1e-9)
        assert res.auroc[f] == pytest.approx(auroc, rel=1e-12)
    assert (res.n_informative_group == 2 + 2 + 3 + 1).all() and (
        res.n_informative_baseline == 2 + 3 + 1 + 3
    ).all()
    assert (res.n_strata == 4).all()


def test_van_elteren_with_strata_per_feature_equals_one_call_per_feature():
    rng = np.random.default_rng(5)
    n = 50
    values = zero_inflated(rng, n, 6, shift=0.2)
    in_group = rng.random(n) < 0.5
    strata = rng.integers(0, 4, (n, 6))
    res = stats.van_elteren(values, in_group, strata)
    for f in range(6):
        one = stats.van_elteren(values[:, f], in_group, strata[:, f])
        assert res.z[f] == pytest.approx(one.z[0], rel=1e-12, abs=1e-12)
        assert res.auroc[f] == pytest.approx(one.auroc[0], rel=1e-12)


def test_within_group_rank_correlation_is_spearman_for_one_group_and_partial_for_two():
    rng = np.random.default_rng(3)
    n = 45
    length = rng.integers(8, 20, n)
    values = zero_inflated(rng, n, 5, fire=0.7)
    values[:, 1] = 0.3 * length + rng.random(n)  # a length feature
    r, p = stats.within_group_rank_correlation(values, length, np.zeros(n))
    for f in range(5):
        ref = sps.spearmanr(values[:, f], length)
        assert r[f] == pytest.approx(ref.statistic, rel=1e-10)
        assert p[f] == pytest.approx(ref.pvalue, rel=1e-8)
    # Two groups: the correlation of within-group normalised ranks with the group means removed,
    # i.e. the residuals of a regression on group indicators (numpy least squares as reference).
    group = np.arange(n) < 20
    shifted = values + 5.0 * group[:, None]  # a pure group difference must not create a correlation
    r2, p2 = stats.within_group_rank_correlation(shifted, length + 4 * group, group)
    design = np.c_[group, ~group].astype(float)
    for f in range(5):
        rv, rl = np.zeros(n), np.zeros(n)
        for g in (group, ~group):
            rv[g] = sps.rankdata(values[g, f]) / (g.sum() + 1)
            rl[g] = sps.rankdata(length[g]) / (g.sum() + 1)
        res_v = rv - design @ np.linalg.lstsq(design, rv, rcond=None)[0]
        res_l = rl - design @ np.linalg.lstsq(design, rl, rcond=None)[0]
        ref_r = sps.pearsonr(res_v, res_l).statistic
        assert r2[f] == pytest.approx(ref_r, rel=1e-9)
        t = ref_r * np.sqrt((n - 3) / (1 - ref_r**2))
        assert p2[f] == pytest.approx(2 * sps.t.sf(abs(t), n - 3), rel=1e-8)
    assert p2[1] < 1e-6 and r2[1] > 0.5


def test_fisher_greater_matches_scipy():
    for k_a, n_a, k_b, n_b in [
        (6, 48, 0, 48),
        (36, 48, 6, 48),
        (0, 30, 3, 30),
        (12, 40, 11, 35),
        (30, 30, 30, 30),
    ]:
        ref = sps.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]], alternative="greater").pvalue
        assert stats.fisher_greater(np.array([k_a]), n_a, np.array([k_b]), n_b)[0] == pytest.approx(
            ref, rel=1e-10
        )


@pytest.mark.parametrize("n", [8, 30, 60])
def test_wilcoxon_signed_rank_matches_scipy(n):
    rng = np.random.default_rng(n)
    x = zero_inflated(rng, n, 80, fire=0.5, shift=0.2)
    y = zero_inflated(rng, n, 80, fire=0.5)
    y[:, :10] = x[:, :10]  # many zero differences
    y[:, 10:12] = x[:, 10:12] - 0.1  # every difference tied
    x[:, 12], y[:, 12] = 0.0, 0.0  # all pairs silent: nothing to test
    res = stats.wilcoxon_signed_rank(x, y)
    assert res.p_value[12] == 1.0 and res.n_nonzero[12] == 0
    for f in range(80):
        if f == 12 or (x[:, f] == y[:, f]).all():
            assert res.p_value[f] == 1.0
            continue
        with np.errstate(all="ignore"):
            ref = sps.wilcoxon(x[:, f], y[:, f], zero_method="wilcox", correction=True, method="asymptotic")
        assert res.p_value[f] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)
        assert min(res.r_plus[f], res.r_minus[f]) == pytest.approx(ref.statistic)
        assert -abs(res.z[f]) == pytest.approx(ref.zstatistic, rel=1e-9)
        assert res.n_nonzero[f] == (x[:, f] != y[:, f]).sum()


# ---------------------------------------------------------------------------------------------------
# Design checks


def tokenized(vocab: Vocab, texts: list[str]) -> design.TokenizedPrompts:
    ids, strs = zip(*(vocab(t) for t in texts))
    return design.TokenizedPrompts(list(texts), list(ids), list(strs))


def test_design_check_flags_length_stray_tokens_and_endings_of_a_messy_design():
    group, base = messy_world(0)
    vocab = Vocab()
    g, b = tokenized(vocab, group), tokenized(vocab, base)
    rep = design.check_design(g, b, "joyful", "neutral")
    ref = sps.mannwhitneyu(g.lengths, b.lengths, method="asymptotic")
    assert rep.length.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert rep.length.auroc == pytest.approx(ref.statistic / (len(g) * len(b)))
    assert rep.length.differs and rep.length.mean_group > rep.length.mean_baseline
    # Token counts against brute force: prompts containing the token, and occurrences.
    by_token = {t.token: t for t in rep.tokens}
    for token in (" really", " always", ",", "!"):
        t = by_token[token]
        assert t.prompts_group == sum(token in s for s in g.strs)
        assert t.prompts_baseline == sum(token in s for s in b.strs)
        assert t.count_group == sum(s.count(token) for s in g.strs)
        assert t.more_in == "group" and t.q_value < 0.05
    assert by_token[" really"].p_value == pytest.approx(
        sps.fisher_exact(
            [
                [by_token[" really"].prompts_group, 40 - by_token[" really"].prompts_group],
                [by_token[" really"].prompts_baseline, 40 - by_token[" really"].prompts_baseline],
            ],
            alternative="greater",
        ).pvalue
    )
    assert all(
        t.token.strip() not in CONCEPT for t in rep.tokens if t.q_value < 0.05
    )  # single concept words are rare
    endings = {e.ending: e for e in rep.endings}
    assert endings["!"].group == sum(t.endswith("!") for t in group)
    assert endings["!"].p_value < 1e-6 and endings["."].baseline == sum(t.endswith(".") for t in base)
    text = "\n".join(report.design_summary_lines(rep))
    assert (
        "your prompt sets differ in" in text
        and "token length" in text
        and "'!' ends" in text
        and "' really'" in text
    )
    assert len(report.token_rows(rep)[0]) == len(report.TOKEN_HEADER)
    assert len(report.ending_rows(rep)[0]) == len(report.ENDING_HEADER)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_design_check_stays_quiet_on_a_length_matched_design(seed):
    group, base, _ = matched_world(seed)
    vocab = Vocab()
    rep = design.check_design(tokenized(vocab, group), tokenized(vocab, base), "joyful", "neutral")
    assert not rep.length.differs
    assert not any(w.startswith(("token length", "sentence endings")) for w in rep.warnings)


def test_paired_design_lists_the_inserted_word_of_every_pair():
    group, base = inserted_world(0)
    vocab = Vocab()
    g, b = tokenized(vocab, group), tokenized(vocab, base)
    rep = design.check_design(g, b, "joyful", "neutral", paired=True)
    assert (
        rep.length.test == "Wilcoxon signed-rank" and rep.length.differs
    )  # every group line is 1 token longer
    for d, text in zip(rep.pairs, group):
        assert d.only_baseline == [] and len(d.only_group) == 1 and d.only_group[0].strip() in CONCEPT
        assert d.only_group[0].strip() in text
    assert len(report.pair_rows(rep)) == len(group)
    assert not any("same token" in w for w in rep.warnings)  # eight different words, none systematic
    # A word added to every line is flagged.
    added = [t[:-1] + " today." for t in base]
    rep = design.check_design(tokenized(vocab, added), b, "joyful", "neutral", paired=True)
    assert any("' today' in 40 of 40 pairs" in w for w in rep.warnings)
    with pytest.raises(ValueError):
        design.check_design(g, tokenized(vocab, base[:-1]), paired=True)


def test_paired_design_lists_tied_added_tokens_in_the_order_they_appear():
    """Three tokens added to every line tie in count; they are listed as the lines have them, the
    same in every run (not in the order of a set of strings, which changes with the hash seed)."""
    base = inserted_world(0)[1]
    added = [t[:-1] + ", as always." for t in base]
    vocab = Vocab()
    rep = design.check_design(tokenized(vocab, added), tokenized(vocab, base), "joyful", "neutral", paired=True)
    assert rep.warnings[-1] == (f"paired lines: joyful lines add the same token to many pairs (',' in {len(base)}, "
                                f"' as' in {len(base)}, ' always' in {len(base)} of {len(base)} pairs)")


def test_inject_token_keeps_length_where_it_can():
    assert verdicts.inject_token("The man was ready.", "!", 1.0, at_end=True) == "The man was ready!"
    assert verdicts.inject_token("The man was ready", "!", 1.0, at_end=True) == "The man was ready!"
    assert verdicts.inject_token("The man was ready.", " glad", 0.75, at_end=False) == "The man was glad."
    assert verdicts.inject_token("The man, he was ready.", " glad", 0.25, at_end=False) == "The glad, he was ready."
    assert (
        verdicts.inject_token("The man was ready.", " glad", 0.0, at_end=False) == "The glad was ready."
    )  # never word 0
    assert verdicts.inject_token("The man was ready.", ",", 0.5, at_end=False) == "The man, was ready."


def test_inputs_are_validated_and_built_from_sparse_rows():
    rows = [
        SimpleNamespace(
            idx=np.array([3, 7]), max=np.array([2.0, 0.5]), mean=np.array([1.0, 0.1]), peak=np.array([1, 0])
        ),
        SimpleNamespace(idx=np.array([7]), max=np.array([0.9]), mean=np.array([0.3]), peak=np.array([2])),
    ]
    act = verdicts.FeatureActivity.from_rows(rows, np.array([7, 3, 11]), agg="mean")
    np.testing.assert_array_equal(act.value, [[0.1, 1.0, 0.0], [0.3, 0.0, 0.0]])
    np.testing.assert_array_equal(act.peak, [[0, 1, -1], [2, -1, -1]])
    with pytest.raises(ValueError, match="peak must be -1"):
        verdicts.FeatureActivity([1], np.array([[1.0]]), np.array([[-1]]))
    tp = design.TokenizedPrompts(["a b"], [[5, 6]], [["a", " b"]])
    with pytest.raises(ValueError, match="beyond"):
        verdicts.explain_features(
            tp, tp, verdicts.FeatureActivity([1], [[1.0]], [[2]]), verdicts.FeatureActivity([1], [[1.0]], [[0]])
        )
    with pytest.raises(ValueError, match="no text tokens"):
        design.TokenizedPrompts(["x"], [[]], [[]])


# ---------------------------------------------------------------------------------------------------
# Verdicts on simulated worlds

MESSY = ["concept", "exclaim", "really", "position", "length", "context"]
EXPECTED = {
    "concept": "concept",
    "exclaim": "lexical",
    "really": "lexical",
    "position": "positional",
    "length": "length",
    "context": "context",
}


@pytest.mark.parametrize("seed, n", [(0, 40), (1, 30), (2, 60)])
def test_every_planted_confound_gets_its_verdict(seed, n):
    group, base = messy_world(seed, n)
    reports = judge(group, base, MESSY)
    got = {k: r.verdict.verdict for k, r in reports.items()}
    assert got == EXPECTED, {k: r.verdict.evidence for k, r in reports.items()}
    for r in reports.values():
        assert r.verdict.evidence and "\n" not in r.verdict.evidence
        assert len(report.evidence_cells(r)) == len(report.EVIDENCE_COLUMNS)
    ex = reports["exclaim"]
    assert ex.evidence.top_token == "!" and ex.injection.token == "!" and ex.injection.reproduced > 0.9
    assert "'!'" in ex.verdict.evidence and "joyful" in ex.verdict.evidence
    assert reports["position"].evidence.peak_position == POSITION
    assert reports["length"].evidence.length_explains and reports["length"].evidence.length_r > 0.8
    assert (
        reports["context"].evidence.top_token == " and"
        and reports["context"].evidence.separating_tokens == []
    )
    concept = reports["concept"]
    assert sorted(t.strip() for t in concept.evidence.separating_tokens) == sorted(CONCEPT)
    assert concept.generalisation.passes and not set(concept.generalisation.without_tokens) >= {
        " " + w for w in CONCEPT
    }


def test_verdicts_without_a_model_rest_on_the_token_control():
    group, base = messy_world(3, 40)
    reports = judge(group, base, MESSY, encode=False)
    assert {k: r.verdict.verdict for k, r in reports.items()} == EXPECTED
    assert all(r.injection is None for r in reports.values())
    assert "prompts with and without '!'" in reports["exclaim"].verdict.evidence


def test_evidence_counts_match_brute_force():
    group, base = messy_world(4, 40)
    vocab = Vocab()
    g_tok, g_act = make_side(vocab, group, MESSY)
    b_tok, b_act = make_side(vocab, base, MESSY)
    reports = verdicts.explain_features(g_tok, b_tok, g_act, b_act, "joyful", "neutral")
    for k, rep in enumerate(reports):
        peak_g = Counter(g_tok.strs[i][g_act.peak[i, k]] for i in range(len(group)) if g_act.peak[i, k] >= 0)
        peak_b = Counter(b_tok.strs[i][b_act.peak[i, k]] for i in range(len(base)) if b_act.peak[i, k] >= 0)
        e = rep.evidence
        assert e.fired_group == sum(peak_g.values()) and e.fired_baseline == sum(peak_b.values())
        assert e.n_peak_types == len(peak_g)
        for t in e.peak_tokens:
            assert (t.peaks_group, t.peaks_baseline) == (peak_g[t.token], peak_b[t.token])
            assert t.prompts_group == sum(t.token in s for s in g_tok.strs)
        assert e.peak_tokens[0].peaks_group == max(peak_g.values())
        fired = g_act.peak[:, k][g_act.peak[:, k] >= 0]
        assert e.position_share_group == pytest.approx(np.mean(fired == e.peak_position))
        ref = sps.mannwhitneyu(g_act.value[:, k], b_act.value[:, k], method="asymptotic")
        assert e.auroc == pytest.approx(ref.statistic / (len(group) * len(base)))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_shifted_position_feature_is_positional_and_the_inserted_concept_is_concept(seed):
    """Each group line is its baseline line with a concept word inserted near the start: a ' the'
    detector that only fires at position 3 now fires in baseline prompts only (direction "down")."""
    group, base = inserted_world(seed, 40)
    reports = judge(group, base, ["concept", "the3"])
    the3 = reports["the3"]
    assert the3.evidence.direction == "down" and the3.evidence.top_token == " the"
    assert the3.verdict.verdict == "positional", the3.verdict.evidence
    assert the3.position_control.outcome == verdicts.VANISHES and the3.token_control.outcome == verdicts.SURVIVES
    # Text position 3 is shown as the model's position, BOS = 0, like every chapter's positions.
    assert "position 4 (BOS = 0)" in the3.verdict.evidence and "neutral prompts" in the3.verdict.evidence
    # The concept word always sits at position 1, yet position explains nothing: baseline prompts never
    # have a concept word there.
    concept = reports["concept"]
    assert concept.evidence.position_share_group == 1.0
    assert concept.verdict.verdict == "concept", concept.verdict.evidence


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_null_group_gets_no_concept(seed):
    """A group drawn exactly like the baseline: whatever differs by chance is never a concept."""
    _, base, null = matched_world(seed, 40)
    reports = judge(null, base, MESSY)
    assert not any(r.verdict.verdict == "concept" for r in reports.values())
    assert reports["concept"].verdict.verdict == ""  # never fires in either set: nothing to explain


def test_a_concept_in_a_length_matched_design_is_concept_and_injection_runs_only_where_needed():
    group, base, _ = matched_world(5, 40)
    vocab = Vocab()
    g_tok, g_act = make_side(vocab, group, MESSY)
    b_tok, b_act = make_side(vocab, base, MESSY)
    seen: list[tuple[list[str], list[int]]] = []
    inner = encode_with(vocab, MESSY)

    def encode(texts, features):
        seen.append((list(texts), [int(f) for f in features]))
        return inner(texts, features)

    reports = verdicts.explain_features(g_tok, b_tok, g_act, b_act, "joyful", "neutral", encode=encode)
    assert reports[0].verdict.verdict == "concept" and reports[0].injection is None
    assert len(seen) <= 1  # one batched call, texts shared between features encoded once
    for texts, _ in seen:
        assert len(texts) == len(set(texts))


def test_a_concept_survives_when_every_group_prompt_is_longer():
    """Every group prompt carries the extra clause: lengths barely overlap, yet the concept stays a
    concept and nothing else becomes one."""
    group, base = messy_world(6, 40, clause=1.0)
    vocab = Vocab()
    assert design.check_design(tokenized(vocab, group), tokenized(vocab, base)).length.differs
    reports = judge(group, base, MESSY)
    got = {k: r.verdict.verdict for k, r in reports.items()}
    assert got["concept"] == "concept" and list(got.values()).count("concept") == 1, got
    assert got["length"] == "length" and got["exclaim"] == "lexical"


def test_injection_puts_the_token_in_place_of_a_word():
    group, base = messy_world(7, 40)
    vocab = Vocab()
    g_tok, g_act = make_side(vocab, group, MESSY)
    b_tok, b_act = make_side(vocab, base, MESSY)
    calls = []
    inner = encode_with(vocab, MESSY)

    def encode(texts, features):
        calls.append((list(texts), list(features)))
        return inner(texts, features)

    reports = verdicts.explain_features(
        g_tok,
        b_tok,
        g_act,
        b_act,
        "joyful",
        "neutral",
        encode=encode,
        settings=ConfoundSettings(injection="all"),
    )
    assert len(calls) == 1
    texts, feats = calls[0]
    assert len(texts) == len(set(texts)) and sorted(feats) == sorted(
        FEATURE_ID[n] for n in MESSY if n != "context"
    )
    assert not set(texts) & set(base)  # every text sent is an edited baseline prompt
    rep = {NAME_OF[r.evidence.feature]: r for r in reports}
    assert rep["really"].injection.n_injected == sum(" really" not in t for t in base)
    assert rep["exclaim"].injection.n_injected == sum(not t.endswith("!") for t in base)
    # The position feature's top token replaces a word, so no prompt gets longer and reaches position 12.
    assert rep["position"].injection is not None and rep["position"].injection.reproduced < 0.5
    # Every prompt already has ' and': nothing to put in, and nothing reproduced.
    assert rep["context"].injection.n_injected == 0 and rep["context"].injection.reproduced == 0


def test_verdict_table_and_settings():
    group, base = messy_world(0, 30)
    reports = judge(group, base, ["concept", "exclaim"])
    table = verdicts.verdict_table(list(reports.values()))
    assert {v.verdict for v in table.values()} == {"concept", "lexical"}
    with pytest.raises(ValueError):
        ConfoundSettings(alpha=0.0)
    with pytest.raises(ValueError):
        ConfoundSettings(injection="sometimes")


def test_a_token_that_is_part_of_a_character_is_not_injected():
    """GPT-2 splits some characters over byte tokens, labelled like '☕[1/2]' (mechinterp.core.tokens); such a
    label is not text, so the injection test skips it and the verdict rests on the token control."""
    group, base = messy_world(8, 40)
    vocab = Vocab()
    g_tok, g_act = make_side(vocab, group, ["exclaim"])
    b_tok, b_act = make_side(vocab, base, ["exclaim"])
    encode = encode_with(vocab, ["exclaim"])
    plain = verdicts.explain_features(g_tok, b_tok, g_act, b_act, "joyful", "neutral", encode=encode)[0]
    assert plain.injection is not None and plain.injection.token == "!"
    for side in (g_tok, b_tok):
        side.strs = [["☕[1/2]" if t == "!" else t for t in row] for row in side.strs]
    pieces = verdicts.explain_features(g_tok, b_tok, g_act, b_act, "joyful", "neutral", encode=encode)[0]
    assert pieces.evidence.top_token == "☕[1/2]" and pieces.injection is None
    assert pieces.verdict.verdict == "lexical" and "prompts with and without '☕[1/2]'" in pieces.verdict.evidence


def test_common_words_are_not_words_of_the_group_on_a_small_baseline_share_alone():
    """Issue 20: with 30 baseline prompts, ' was' in 2 of them against 20% of 300 group prompts looks like
    "three times as common", yet the counts cannot tell that from equally common. Such peak words must
    not count as marking the group (one-sided Fisher p >= 0.05); a word the baseline never uses keeps
    the ratio rule alone, so a concept's rare words (each in a few prompts) still count."""
    rng = np.random.default_rng(0)
    words = {" was": 5, " felt": 6, " saw": 7, " glad": 8}  # 8: in 5 group prompts only, like a concept word

    def side(n: int, with_word: dict[int, list[int]]):
        ids, strs, values, peaks = [], [], [], []
        for i in range(n):
            row = [int(t) for t in rng.integers(100, 150, 8)]
            word = next((w for w, rows in with_word.items() if i in rows), None)
            at = int(rng.integers(1, 8))
            if word is not None:
                row[at] = word
            ids.append(row)
            strs.append([next((s for s, t in words.items() if t == tok), f" w{tok}") for tok in row])
            values.append([1.0 + 0.01 * i if word is not None else 0.0])
            peaks.append([at if word is not None else -1])
        texts = ["".join(s) for s in strs]
        return design.TokenizedPrompts(texts, ids, strs), verdicts.FeatureActivity([42], np.array(values), np.array(peaks))

    order = rng.permutation(300)
    group = side(300, {5: list(order[:60]), 6: list(order[60:120]), 7: list(order[120:180]), 8: list(order[180:185])})
    base = side(30, {5: [0, 1], 6: [2, 3], 7: [4, 5]})  # 20% vs 6.7%: "3x", the old rule took all three
    (rep,) = verdicts.explain_features(group[0], base[0], group[1], base[1], "joyful", "neutral")
    assert stats.fisher_greater(np.array([60]), 300, np.array([2]), 30)[0] > 0.05  # the counts behind the rule
    assert rep.evidence.separating_tokens == [" glad"]
    assert rep.verdict.verdict != "concept"


# ---------------------------------------------------------------------------------------------------
# Injection where the token fits: at the start and at the end of sentences, with GPT-2's own tokenizer
# (sentence-opening 'Today' and ' today' inside a sentence are different tokens, and glued onto a word,
# "MyToday brother was tired.", the token is neither at position 0 nor in a text anyone writes)


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    """GPT-2's real BPE from the files tests/gpt2_world.py checks by hash."""
    vocab_path, merges_path = gw.gpt2_tokenizer_files()
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    merges = [line for line in merges_path.read_text(encoding="utf-8").split("\n")[1:] if line]
    return Tokenizer.from_str(json.dumps(gw.tokenizer_json(vocab, merges)))


def _one_id(tok, token: str) -> int:
    ids = tok.encode(token).ids
    assert len(ids) == 1, (token, ids)
    return ids[0]


# (prompt, sentence-initial token, edited prompt, tokens added): a replaced first word adds none; an opener
# put in front of a first word that a replacement would leave broken adds one.
SENTENCE_STARTS = [
    ("My brother was tired.", "Today", "Today my brother was tired.", 1),  # capitalised first word lowered
    ("The cat slept on the mat.", "Today", "Today the cat slept on the mat.", 1),
    ("I made this soup.", "Today", "Today I made this soup.", 1),  # "I" keeps its capital
    ("Tom painted the garden.", "Today", "Today Tom painted the garden.", 1),  # so does a name
    ("Tom's car broke down.", "Today", "Today Tom's car broke down.", 1),
    ("After lunch we left.", "Today", "Today after lunch we left.", 1),
    ("Mr. Smith was late.", "Today", "Today Mr. Smith was late.", 1),  # an abbreviation does not stand alone
    ("Yes, the bus was late.", "Today", "Today, the bus was late.", 0),  # first word followed by punctuation
    ("Well: nothing happened.", "Today", "Today: nothing happened.", 0),
    ("Thanks!", "Today", "Today!", 0),  # one-word prompts
    ("Hello.", "Today", "Today.", 0),
    ("Hello", "Today", "Today", 0),
    ("  My brother was tired.", "Today", "Today my brother was tired.", None),  # the spaces were token 0's
    ('"We are ready," said the driver.', "Today", 'Today "We are ready," said the driver.', 1),  # quote kept
    ("My brother was tired.", "The", "The brother was tired.", 0),  # a determiner takes word 0's place
    ("She was tired.", "I", "I was tired.", 0),  # so does a pronoun
    # A token with a leading space at position 0: a set whose prompts open with a space.
    ("My brother was tired.", " Today", " Today my brother was tired.", 1),
]


@pytest.mark.parametrize("text, token, edited, added", SENTENCE_STARTS)
def test_a_sentence_initial_token_opens_the_edited_prompt_as_the_same_token(gpt2_tokenizer, text, token,
                                                                            edited, added):
    got = verdicts.inject_token(text, token, 0.0, at_end=False, at_start=True)
    assert got == edited
    tid = _one_id(gpt2_tokenizer, token)
    ids = gpt2_tokenizer.encode(got).ids
    assert ids[0] == tid and ids.count(tid) == 1  # at position 0, where the feature peaks, and nowhere glued
    if added is not None:
        assert len(ids) - len(gpt2_tokenizer.encode(text).ids) == added


@pytest.mark.parametrize("text, token, edited", [
    ("The man was ready.", "!", "The man was ready!"),
    ("Is the man ready.", "?", "Is the man ready?"),
    ("The man was ready", "!", "The man was ready!"),  # no punctuation to replace: appended
    ("Wait...", "!", "Wait!"),
    ("  The man was ready.", "!", "  The man was ready!"),
])
def test_a_sentence_final_token_replaces_the_closing_punctuation(gpt2_tokenizer, text, token, edited):
    got = verdicts.inject_token(text, token, 1.0, at_end=True)
    assert got == edited
    assert gpt2_tokenizer.encode(got).ids[-1] == _one_id(gpt2_tokenizer, token)
    # A punctuation mark that is both first and last in the higher set (one-token prompts) goes to the end.
    assert verdicts.inject_token(text, token, 1.0, at_end=True, at_start=True) == edited


@pytest.mark.parametrize("text, at, edited, same_length", [
    ("The man was ready.", 0.75, "The man was glad.", True),
    ("The man, he was ready.", 0.25, "The glad, he was ready.", True),
    ("  The man was ready.", 0.75, "  The man was glad.", True),  # leading spaces are not word 0
    # A quoted word would lose the token's space ('"glad' is '"', 'gl', 'ad'): the nearest plain word goes.
    ('He said "ready" twice.', 0.5, 'He glad "ready" twice.', True),
    # "don't" is one word, not "don" and "'t" (two GPT-2 tokens: the edit is word for word, not token
    # for token).
    ("I don't know that.", 0.25, "I glad know that.", False),
    ("Hello.", 0.5, "Hello glad.", False),  # one word: nothing but word 0 to replace, so added after it
])
def test_a_word_token_replaces_a_word_and_keeps_the_same_positions(gpt2_tokenizer, text, at, edited,
                                                                    same_length):
    got = verdicts.inject_token(text, " glad", at, at_end=False)
    assert got == edited
    ids, before = gpt2_tokenizer.encode(got).ids, gpt2_tokenizer.encode(text).ids
    assert _one_id(gpt2_tokenizer, " glad") in ids
    assert (len(ids) == len(before)) == same_length


TODAY_SUBJECTS = ("the driver", "my sister", "we", "our neighbour", "he", "the old man", "they", "a student")
PREDICATES = ("walked to the station.", "opened the window.", "cleaned the kitchen.", "visited the library.",
              "checked the office.")
# Lower-set prompts and the edits they must get with 'Today' (see SENTENCE_STARTS for the rules).
TODAY_EDITS = {
    **{f"{s} {p}": f"Today {e} {p}" for (s, e), p in itertools.product(
        [("My brother", "my brother"), ("The teacher", "the teacher"), ("I", "I"), ("She", "she"),
         ("Tom", "Tom"), ("Our team", "our team"), ("After lunch we", "after lunch we")], PREDICATES)},
    "Yes, the bus was late.": "Today, the bus was late.",
    "Thanks!": "Today!",
    '"We are ready," said the driver.': 'Today "We are ready," said the driver.',
    "  My sister was busy.": "Today my sister was busy.",
    "Hello.": "Today.",
}


def _today_world(tok, group_texts: list[str], base_texts: list[str]):
    """Both sets through GPT-2's tokenizer, and a feature that fires on the token 'Today' (8888) with 2.0
    wherever it is: like a causal model at position 0, where only the token counts."""
    today = _one_id(tok, "Today")

    def side(texts):
        ids = [tok.encode(t).ids for t in texts]
        strs = [[tok.decode([i]) for i in row] for row in ids]
        hit = [row.index(today) if today in row else -1 for row in ids]
        value = np.array([[2.0 if h >= 0 else 0.0] for h in hit])
        acts = verdicts.FeatureActivity([7], value, np.array(hit)[:, None])
        return design.TokenizedPrompts(texts, ids, strs), acts

    def encode(texts, features):
        return np.array([[2.0 if today in tok.encode(t).ids else 0.0] for t in texts])

    return side(group_texts), side(base_texts), encode


@pytest.mark.parametrize("quoted", [False, True])
def test_a_feature_on_sentence_initial_today_is_lexical_through_real_sentences(gpt2_tokenizer, quoted):
    """The group's prompts open with 'Today' (at position 0, or quoted: at position 1, after the '"'); the
    feature fires on that token. The lower set's prompts get 'Today' at their start as real sentences
    (the old placement glued it onto their first word: "MyToday brother ..."), and the token alone
    reproduces the whole difference."""
    group = [f"Today {s} {p}" for s, p in itertools.product(TODAY_SUBJECTS, PREDICATES)]
    if quoted:
        group = [f'"{t[:-1]}," she said.' for t in group]
    (g_tok, g_act), (b_tok, b_act), inner = _today_world(gpt2_tokenizer, group, list(TODAY_EDITS))
    calls = []

    def encode(texts, features):
        calls.append(list(texts))
        return inner(texts, features)

    (rep,) = verdicts.explain_features(g_tok, b_tok, g_act, b_act, "joyful", "neutral", encode=encode)
    assert rep.evidence.top_token == "Today" and rep.evidence.top_token_id == _one_id(gpt2_tokenizer, "Today")
    assert len(calls) == 1 and sorted(calls[0]) == sorted(TODAY_EDITS.values())
    for text in calls[0]:
        assert gpt2_tokenizer.encode(text).ids[0] == rep.evidence.top_token_id
    inj = rep.injection
    assert inj.n_injected == len(TODAY_EDITS) and inj.auroc_before == 1.0 and inj.auroc_after == 0.5
    assert inj.reproduced == pytest.approx(1.0)
    assert rep.verdict.verdict == "lexical", rep.verdict.evidence
    # The verdict quotes one of the edited prompts, so a reader sees that the edit is a real sentence.
    assert inj.example in TODAY_EDITS.values()
    assert rep.verdict.evidence.endswith(
        f"putting 'Today' into neutral prompts (as in \"{inj.example}\") reproduces 100% of the difference")


def _today_report(gpt2_tokenizer):
    group = [f"Today {s} {p}" for s, p in itertools.product(TODAY_SUBJECTS, PREDICATES)]
    (g_tok, g_act), (b_tok, b_act), encode = _today_world(gpt2_tokenizer, group, list(TODAY_EDITS))
    (rep,) = verdicts.explain_features(g_tok, b_tok, g_act, b_act, "joyful", "neutral", encode=encode)
    return rep


def test_a_reproduced_share_above_100_percent_is_shown_capped_with_the_value_measured(gpt2_tokenizer):
    """A quarter of the group lacks 'Today' (and the feature stays silent there), while every edited
    neutral prompt gets it: the edited prompts now score above the group (AUROC after 0.375 < 0.5), so the
    token "reproduces" (0.875 - 0.375) / 0.375 = 133% of the difference. The verdict says 100%, marks it
    capped and quotes the measured share; the stored share stays the measured one. (The demo's '!' and
    ',' features overshoot like this: not every angry or happy prompt has the token.)"""
    pairs = list(itertools.product(TODAY_SUBJECTS, PREDICATES))
    group = [f"Today {s} {p}" for s, p in pairs[:30]] + [f"{s.capitalize()} {p}" for s, p in pairs[30:]]
    (g_tok, g_act), (b_tok, b_act), encode = _today_world(gpt2_tokenizer, group, list(TODAY_EDITS))
    (rep,) = verdicts.explain_features(g_tok, b_tok, g_act, b_act, "joyful", "neutral", encode=encode)
    inj = rep.injection
    assert (inj.auroc_before, inj.auroc_after) == (0.875, 0.375) and inj.reproduced == pytest.approx(4 / 3)
    assert rep.token_control.outcome == verdicts.VANISHES  # without 'Today' the sets agree
    assert rep.verdict.verdict == "lexical", rep.verdict.evidence
    assert rep.verdict.evidence.endswith(
        f"putting 'Today' into neutral prompts (as in \"{inj.example}\") reproduces 100% of the difference "
        "(capped: measured 133%, the edited neutral prompts overshoot the joyful prompts)")


@pytest.mark.parametrize("reproduced, words", [
    (0.3, "reproduces only 30% of the difference"),
    (-0.2, ("reproduces none of the difference (measured -20%: the edited neutral prompts move away from "
            "the joyful prompts)")),
    (float("nan"), ("reproduces no measurable share (the neutral prompts compared show no difference to "
                    "reproduce)")),
])
def test_a_context_verdict_quotes_a_small_or_negative_reproduced_share_as_measured(gpt2_tokenizer, reproduced,
                                                                                     words):
    rep = _today_report(gpt2_tokenizer)
    rep.injection = replace(rep.injection, reproduced=reproduced)
    rep.token_control = replace(rep.token_control, outcome=verdicts.VANISHES)  # the token explains it ...
    rep.evidence.length_explains = False
    v = verdicts.decide(rep, ("joyful", "neutral"))  # ... yet putting it in does not reproduce it
    assert v.verdict == "context", v.evidence
    assert f"putting 'Today' into neutral prompts {words}" in v.evidence, v.evidence
