"""The statistics against scipy, and false-discovery control under a true null."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps
from scipy.special import comb

from mechinterp.meaning import stats


def zero_inflated(rng, n, f, fire=0.3, shift=0.0):
    """Per-prompt activations shaped like SAE features: mostly exact zeros, a skewed tail."""
    fired = rng.random((n, f)) < fire
    return np.where(fired, rng.gamma(2.0, 0.5, (n, f)) + shift, 0.0).astype(np.float32)


@pytest.mark.parametrize("n1, n2", [(5, 5), (24, 31), (60, 7)])
def test_mann_whitney_matches_scipy_feature_by_feature(n1, n2):
    rng = np.random.default_rng(n1 * 100 + n2)
    x = zero_inflated(rng, n1, 300, shift=0.2).round(1)  # rounding makes many ties among non-zeros too
    y = zero_inflated(rng, n2, 300).round(1)
    x[:, :5] = 0  # columns where one group never fires
    x[:, 5], y[:, 5] = 1.0, 1.0  # a column where every value is tied
    u, p = stats.mann_whitney(x, y)
    for f in range(300):
        if f == 5:
            assert p[f] == 1.0
            continue
        # float64 for scipy too: on float32 input it computes the variance in single precision.
        ref = sps.mannwhitneyu(x[:, f].astype(float), y[:, f].astype(float), method="asymptotic")
        assert u[f] == pytest.approx(ref.statistic, abs=1e-9)
        assert p[f] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)


def test_auroc_is_probability_group_outranks_baseline():
    rng = np.random.default_rng(1)
    x, y = zero_inflated(rng, 12, 40, shift=0.3), zero_inflated(rng, 9, 40)
    c = stats.contrast(x, y)
    for pos, f in enumerate(c.tested):
        wins = (x[:, f][:, None] > y[:, f][None, :]).mean() + 0.5 * (x[:, f][:, None] == y[:, f][None, :]).mean()
        assert c.auroc[pos] == pytest.approx(wins)
        assert c.effect_size[pos] == pytest.approx(2 * wins - 1)


def test_features_that_never_fire_are_skipped_and_counted():
    x = np.zeros((6, 10), dtype=np.float32)
    y = np.zeros((6, 10), dtype=np.float32)
    x[:, 3], y[0, 7] = 1.0, 0.5
    c = stats.contrast(x, y)
    assert c.tested.tolist() == [3, 7] and c.n_never_fired == 8


def test_benjamini_hochberg_matches_definition():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    m = len(p)
    order = np.argsort(p)
    expected = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    q = stats.benjamini_hochberg(p)
    np.testing.assert_allclose(q[order], np.minimum(expected, 1.0))


def test_fdr_is_controlled_when_nothing_differs():
    """200 simulated contrasts of 300 features with no true difference: BH at 0.05 bounds the chance of
    *any* false discovery by about 0.05 (under the global null, FDR = family-wise error rate)."""
    rng = np.random.default_rng(7)
    any_discovery = 0
    pvalues = []
    for _ in range(200):
        x, y = zero_inflated(rng, 30, 300), zero_inflated(rng, 30, 300)
        c = stats.contrast(x, y)
        any_discovery += bool((c.q_value < 0.05).any())
        pvalues.append(c.p_value[:50])
    assert any_discovery <= 20  # expected about 10 (5%); 20 is > 3 sd above
    # And the p-values themselves are not anti-conservative: at most ~5% fall below 0.05.
    assert (np.concatenate(pvalues) < 0.05).mean() < 0.06


def test_true_differences_are_found():
    rng = np.random.default_rng(3)
    x, y = zero_inflated(rng, 30, 500), zero_inflated(rng, 30, 500)
    x[:, :10] = zero_inflated(rng, 30, 10, fire=0.95, shift=2.0)  # ten planted differences
    c = stats.contrast(x, y)
    order = stats.rank_order(c)
    assert set(c.tested[order[:10]].tolist()) == set(range(10))
    assert (c.q_value[order[:10]] < 1e-3).all()


def test_always_on_requires_every_group():
    frac = {"a": np.array([0.95, 0.95, 0.2]), "b": np.array([0.91, 0.5, 0.2])}
    assert stats.always_on(frac, 0.9).tolist() == [0]


def test_split_is_seeded_and_disjoint():
    a = stats.split_indices(11, 0.5, np.random.default_rng(4))
    b = stats.split_indices(11, 0.5, np.random.default_rng(4))
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert sorted(a[0].tolist() + a[1].tolist()) == list(range(11)) and len(a[1]) == 6


# --- exact p-values, firing rates and float-noise ties (issue 20) -------------------------------------


def _enumerated_mann_whitney(x, y):
    """Two-sided p over every split of the pooled values (scipy enumerates them all)."""
    res = sps.permutation_test((x, y), lambda a, b: sps.mannwhitneyu(a, b, method="asymptotic").statistic,
                               permutation_type="independent", n_resamples=np.inf, alternative="two-sided")
    return res.pvalue


@pytest.mark.parametrize("seed", range(6))
def test_exact_mann_whitney_equals_enumeration_with_ties_at_zero_and_above(seed):
    rng = np.random.default_rng(seed)
    n1, n2 = rng.integers(2, 7), rng.integers(3, 9)
    x = (rng.integers(1, 5, n1) / 4) * (rng.random(n1) < 0.6)  # few distinct values: ties among non-zeros
    y = (rng.integers(1, 5, n2) / 4) * (rng.random(n2) < 0.4)
    assert stats.exact_mann_whitney(x, y) == pytest.approx(_enumerated_mann_whitney(x, y), rel=1e-9)
    assert stats.exact_mann_whitney(y, x) == pytest.approx(_enumerated_mann_whitney(x, y), rel=1e-9)


def test_three_of_fifteen_against_none_of_1211_gets_the_p_its_counts_support():
    """The case of issue 20: the normal approximation said 1e-54; the exact p is twice the chance that
    all three firing prompts land among the 15 (they also rank in the observed order: the most extreme)."""
    x, y = np.zeros(1211), np.zeros(15)
    y[:3] = [1.0, 2.0, 3.0]
    expected = 2 * comb(15, 3) / comb(1226, 3)  # 2.97e-6
    assert stats.exact_mann_whitney(x, y) == pytest.approx(expected, rel=1e-9)
    assert stats.mann_whitney(x[:, None], y[:, None])[1][0] < 1e-50  # what the approximation said
    u, p, exact = stats.rank_test(x[:, None], y[:, None])
    assert exact[0] and p[0] == pytest.approx(expected, rel=1e-9)


def test_subset_sum_counts_equal_the_direct_recursion():
    rng = np.random.default_rng(5)
    scores = np.rint(2 * sps.rankdata(rng.integers(0, 30, 80))).astype(np.int64)  # doubled midranks, tied
    most = 12
    counts = stats.subset_sum_counts(scores, most)
    direct = np.zeros((most + 1, counts.shape[1]))
    direct[0, 0] = 1.0
    for s in scores:  # add one item at a time: a subset either skips it or takes it
        direct[1:, s:] = direct[1:, s:] + direct[:-1, :-s]
    scale = comb(80, np.arange(most + 1))[:, None]
    assert np.abs(counts - direct).max(initial=0) / 1 <= 1e-12 * scale.max()
    assert (np.abs(counts - direct) / scale).max() < 1e-14


@pytest.mark.parametrize("seed", range(4))
def test_exact_signed_rank_equals_enumeration_of_signs(seed):
    rng = np.random.default_rng(seed)
    d = np.round(rng.normal(0.4, 1.0, rng.integers(4, 11)), 1)  # rounding: tied |d| and zeros
    nz = d[d != 0]
    r = sps.rankdata(np.abs(nz))
    sums = np.array([r[list(s)].sum() for s in itertools.product([False, True], repeat=len(nz)) for s in [np.array(s)]])
    observed = r[nz > 0].sum()
    expected = min(1.0, 2 * min((sums >= observed - 1e-9).mean(), (sums <= observed + 1e-9).mean()))
    assert stats.exact_signed_rank(d) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n_a, n_b", [(12, 40), (40, 12), (15, 1211), (3, 3)])
def test_fisher_two_sided_matches_scipy(n_a, n_b):
    rng = np.random.default_rng(n_a + n_b)
    k_a, k_b = rng.integers(0, n_a + 1, 40), rng.integers(0, n_b + 1, 40)
    k_a[:3], k_b[:3] = [0, n_a, 0], [min(3, n_b), 0, 0]
    p = stats.fisher_two_sided(k_a, n_a, k_b, n_b)
    ref = [sps.fisher_exact([[a, n_a - a], [b, n_b - b]]).pvalue for a, b in zip(k_a, k_b)]
    np.testing.assert_allclose(p, ref, rtol=1e-9, atol=1e-15)


def test_a_small_baseline_against_a_big_group_gives_no_false_discoveries():
    """The null of issue 20: 15 prompts against 600 from the same source, rare zero-inflated features.
    The normal approximation gave "significant" features at q = 1e-17 here; exact p-values keep
    the family-wise error near 5% and the p-values themselves uniform or conservative."""
    rng = np.random.default_rng(11)
    any_discovery, below = 0, []
    for _ in range(20):
        fire = 10 ** rng.uniform(-2.5, -0.5, 100)  # 0.3% to 30% of prompts
        x = np.where(rng.random((600, 100)) < fire, rng.gamma(2.0, 0.5, (600, 100)), 0.0)
        y = np.where(rng.random((15, 100)) < fire, rng.gamma(2.0, 0.5, (15, 100)), 0.0)
        c = stats.contrast(x, y)
        any_discovery += bool((c.q_value < 0.05).any())
        below.append((c.p_value < 0.05).mean())
    assert any_discovery <= 4  # expected <= 1 (5% of 20); 4 is > 3 sd above; the normal approximation gives 9
    assert np.mean(below) < 0.06


def test_statistics_do_not_change_with_float_noise():
    """Batch size or CPU kernel changes activations in the 7th digit; no rank, AUROC or p may move."""
    rng = np.random.default_rng(2)
    x, y = zero_inflated(rng, 40, 200, shift=0.1), zero_inflated(rng, 40, 200)
    x[:, :20] = y[:, :20] = np.where(rng.random((40, 1)) < 0.5, 1.2345, 0.0)  # exact ties across the sets
    noisy_x = x * (1 + 3e-7 * rng.standard_normal(x.shape))
    noisy_y = y * (1 + 3e-7 * rng.standard_normal(y.shape))
    a, b = stats.contrast(x, y), stats.contrast(noisy_x, noisy_y)
    np.testing.assert_array_equal(a.auroc, b.auroc)
    np.testing.assert_array_equal(a.p_value, b.p_value)
    assert (a.auroc[:20] == 0.5).all()
    p, _ = stats.paired_rank_test(x, x * (1 + 3e-7 * rng.standard_normal(x.shape)))
    assert (p == 1.0).all()  # the same prompt twice, up to float noise: no difference at all


def test_significant_features_rank_by_effect_size_not_q():
    """With big sets nearly everything is significant and q tracks sample size: a feature at AUROC 0.94 in
    a few prompts must outrank one at 0.38 that fires in many."""
    rng = np.random.default_rng(4)
    x, y = np.zeros((400, 3)), np.zeros((400, 3))
    x[:, 0] = rng.gamma(2, 0.5, 400) + 1.5 * (rng.random(400) < 0.9)  # strong difference
    y[:, 0] = rng.gamma(2, 0.5, 400)
    x[:, 1] = rng.gamma(2, 0.5, 400)  # weak difference, baseline side
    y[:, 1] = rng.gamma(2, 0.5, 400) + 0.3
    x[:, 2], y[:, 2] = rng.gamma(2, 0.5, 400), rng.gamma(2, 0.5, 400)  # none
    c = stats.contrast(x, y)
    order = stats.rank_order(c)
    assert c.auroc[0] > 0.85 and c.auroc[1] < 0.45 and (c.q_value[:2] < 0.05).all()
    assert order.tolist()[:2] == [0, 1]
