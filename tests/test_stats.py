"""The statistics against scipy, and false-discovery control under a true null."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

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
    """200 simulated contrasts of 2,000 features with no true difference: BH at 0.05 bounds the chance of
    *any* false discovery by about 0.05 (under the global null, FDR = family-wise error rate)."""
    rng = np.random.default_rng(7)
    any_discovery = 0
    pvalues = []
    for _ in range(200):
        x, y = zero_inflated(rng, 30, 2000), zero_inflated(rng, 30, 2000)
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
