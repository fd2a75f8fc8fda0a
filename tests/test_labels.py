"""Label scoring (``mechinterp.cards.labels``, ``mechinterp.cards.label_score``) against brute force.

* The streaming sums, fed batch by batch, give the same numbers as a computation over every token held in
  memory: exactly for masses, counts and occurrences; AUROC within its stated tie bound (and the bound
  itself small); quartile shares exactly at the binned threshold and close to the exact quartile.
* The Poisson bootstrap's 95% interval covers the true specificity at about the nominal rate.
* The matcher finds words as GPT-2 tokenizes them (real tokenizer), at word boundaries, with A:B windows.
* In the GPT-2-faithful world (tests/gpt2_world.py) on a generated corpus, the planted happy feature scores
  >= 0.9 with its words, <= 0.2 with the angry words and near chance with random lists; a label on the
  tokens after a sad word catches the sad feature's carry-over; and every score equals brute force over
  the same tokens encoded in memory.
"""

from __future__ import annotations

import numpy as np
import pytest

from mechinterp.cards import label_score as ls
from mechinterp.cards.labels import Coverage, Label, Matcher, label_window, parse_label, words_from_prompts

# --- synthetic batches -----------------------------------------------------------------------------------


def synthetic_batches(rng: np.random.Generator, n_batches: int = 6, n_labels: int = 2):
    """Batches of windows with activations, coverages and documents; returns them and the flat truth."""
    batches, truth = [], {"act": [], "cov": [[] for _ in range(n_labels)], "occ": [[] for _ in range(n_labels)],
                          "doc": []}
    doc = 0
    for _ in range(n_batches):
        lengths = rng.integers(5, 40, size=rng.integers(1, 6))
        n = int(lengths.sum())
        act = np.where(rng.random(n) < 0.3, rng.lognormal(0.0, 1.0, n), 0.0)
        covs = []
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        for l in range(n_labels):
            row = []
            for length, offset in zip(lengths.tolist(), offsets.tolist()):
                covered = np.zeros(length, dtype=bool)
                c = Coverage(covered, offset=offset)
                for start in rng.choice(length, size=min(3, length), replace=False).tolist():
                    positions = np.arange(start, min(start + rng.integers(1, 3), length))
                    covered[positions] = True
                    c.occurrences.append(positions)
                    c.first.append(start)
                    truth["occ"][l].append(act[offset + positions].max())
                act[offset + np.flatnonzero(covered)] *= 1 + 2 * l * 0  # keep one activation per token
                row.append(c)
                truth["cov"][l].append(covered)
            covs.append(row)
        docs = []
        for _ in lengths:
            doc += int(rng.random() < 0.5)
            docs.append(doc)
        truth["act"].append(act)
        truth["doc"] += [d for d, length in zip(docs, lengths) for _ in range(length)]
        batches.append((act, np.repeat(np.arange(len(lengths)), lengths), covs, docs))
    return batches, {"act": np.concatenate(truth["act"]), "doc": np.array(truth["doc"]),
                     "cov": [np.concatenate(c) for c in truth["cov"]], "occ": [np.array(o) for o in truth["occ"]]}


def fold_all(batches, n_labels: int, n_boot: int = 0, seed: int = 0) -> ls._Sums:
    sums = ls._Sums(n_labels, len(ls._INNER) + 1, list(range(n_labels)), n_boot)
    for act, win, covs, docs in batches:
        weights = ls._doc_weights(docs, n_boot, seed) if n_boot else None
        ls._fold(sums, act, np.ones(len(act), dtype=bool), win, covs, weights, len(docs))
    return sums


def exact_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + P(tie) / 2 over every pair: the definition, no binning."""
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def test_streaming_sums_equal_brute_force():
    rng = np.random.default_rng(1)
    batches, truth = synthetic_batches(rng)
    sums = fold_all(batches, 2)
    act = truth["act"]
    for l in range(2):
        cov = truth["cov"][l]
        score = ls._score(sums, ls.Unit("1", (1,)), Label("x", ("x",)), l, None, [], 0)
        assert score.n_tokens == len(act) and score.n_covered == int(cov.sum())
        assert score.n_fired == int((act > 0).sum()) and score.n_covered_fired == int((cov & (act > 0)).sum())
        assert score.mass == pytest.approx(act.sum(), rel=1e-12)
        assert score.specificity == pytest.approx(act[cov].sum() / act.sum(), rel=1e-12)
        occ = truth["occ"][l]
        assert score.n_occurrences == len(occ) and score.sensitivity == pytest.approx((occ > 0).mean(), rel=1e-12)
        auc = exact_auroc(act[cov], act[~cov])
        # Binned: ties within a fine bin count half, so the error is at most the stated bound.
        assert abs(score.auroc - auc) <= score.auroc_tie_bound + 1e-12
        assert score.auroc_tie_bound < 0.01
        fired = act[act > 0]
        for q, (threshold, share) in zip(ls.QUARTILES, score.above):
            at = act >= threshold
            assert share == pytest.approx((at & cov & (act > 0)).sum() / (at & (act > 0)).sum(), rel=1e-12)
            # The threshold is the lower edge of the fine bin holding the exact quartile (bins are 6% wide).
            assert threshold <= np.quantile(fired, q) < threshold * 1.06 + 1e-12
            exact = (cov & (act >= np.quantile(fired, q))).sum() / (act >= np.quantile(fired, q)).sum()
            assert share == pytest.approx(exact, abs=0.05)


def test_bootstrap_replicates_equal_brute_force_weighted_sums():
    rng = np.random.default_rng(2)
    batches, truth = synthetic_batches(rng)
    sums = fold_all(batches, 2, n_boot=7, seed=3)
    docs, act = truth["doc"], truth["act"]
    weights = np.stack([ls._doc_weights([d], 7, 3)[0] for d in docs])  # [tokens, boot]
    np.testing.assert_allclose(sums.b_mass, weights.T @ act, rtol=1e-12)
    for l in range(2):
        cov = truth["cov"][l]
        np.testing.assert_allclose(sums.b_mass_cov[l], weights[cov].T @ act[cov], rtol=1e-12)
        r = 4  # one replicate's AUROC: its fine histograms are the brute-force weighted counts
        bins = np.where(act > 0, ls.bins_for(np.where(act > 0, act, 1.0)), 0)
        pos = np.bincount(bins[cov], weights=weights[cov, r], minlength=sums.b_cov.shape[2])
        np.testing.assert_allclose(sums.b_cov[l, r], pos, rtol=1e-12)
        assert np.all(sums.b_occ_fired[l] <= sums.b_occ[l] + 1e-9)
        # The intervals are the percentiles of the brute-force replicate ratios.
        ci = ls._boot_ci(sums, l)
        spec = (weights[cov].T @ act[cov]) / (weights.T @ act)
        assert ci["specificity"] == pytest.approx((np.percentile(spec, 2.5), np.percentile(spec, 97.5)), rel=1e-9)
        assert 0 <= ci["sensitivity"][0] <= ci["sensitivity"][1] <= 1


def test_bootstrap_interval_covers_the_truth_at_about_the_nominal_rate():
    """Documents with a per-document share of mass on the label: the interval from a finite sample should
    hold the population's specificity in about 95% of simulations."""
    n_sims, covered = 120, 0
    rng = np.random.default_rng(5)
    true_share = 0.6
    for sim in range(n_sims):
        n_docs = 40
        sums = ls._Sums(1, len(ls._INNER) + 1, [0], 200)
        for d in range(n_docs):
            n = int(rng.integers(5, 30))
            act = np.where(rng.random(n) < 0.5, rng.lognormal(0, 1, n), 0.0)
            # Documents differ in how much of the feature the label explains (clustered data).
            cov = rng.random(n) < np.clip(rng.normal(true_share, 0.2), 0, 1)
            c = Coverage(cov, [np.array([i]) for i in np.flatnonzero(cov)], list(np.flatnonzero(cov)), 0)
            ls._fold(sums, act, np.ones(n, bool), np.zeros(n, np.int64), [[c]], ls._doc_weights([sim * 1000 + d], 200, 0), 1)
        lo, hi = ls._boot_ci(sums, 0)["specificity"]
        covered += lo <= true_share <= hi
    # Nominal 95%; with 120 simulations and a percentile bootstrap on 40 documents, 85-100% is the band.
    assert 0.85 <= covered / n_sims <= 1.0


def test_auroc_from_histograms_matches_the_exact_auroc_within_its_bound():
    rng = np.random.default_rng(7)
    pos = np.where(rng.random(300) < 0.8, rng.lognormal(0.5, 1, 300), 0.0)
    neg = np.where(rng.random(900) < 0.3, rng.lognormal(0, 1, 900), 0.0)

    def hist(x):
        bins = np.zeros(len(x), np.int64)
        bins[x > 0] = ls.bins_for(x[x > 0])
        return np.bincount(bins, minlength=len(ls._INNER) + 2)

    auc, bound = ls.auroc_from_hist(hist(pos), hist(neg))
    assert abs(auc - exact_auroc(pos, neg)) <= bound and bound < 0.01
    from scipy.stats import mannwhitneyu

    u = mannwhitneyu(pos, neg).statistic  # scipy's U / (n m) is the exact AUROC with ties half
    assert u / (len(pos) * len(neg)) == pytest.approx(exact_auroc(pos, neg), abs=1e-12)


# --- the matcher (GPT-2's real tokenizer) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    """GPT-2's real BPE (the files tests/gpt2_world.py checks by hash), as a transformers tokenizer."""
    import json

    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer

    from tests import gpt2_world as gw

    vocab_path, merges_path = gw.gpt2_tokenizer_files()
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    merges = [line for line in merges_path.read_text(encoding="utf-8").split("\n")[1:] if line]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(gw.tokenizer_json(vocab, merges))))


def test_words_match_as_gpt2_tokenizes_them(gpt2_tokenizer):
    tok = gpt2_tokenizer
    m = Matcher(parse_label("joy: happy, over the moon"), tok)
    text = "Happy days. I was happy, unhappy, happyness and over the moon (happy) HAPPY"
    ids = np.array(tok.encode(text), dtype=np.int64)
    found = [tok.decode(ids[a:b + 1].tolist()) for a, b in m.spans(ids)]
    assert found == ["Happy", " happy", " over the moon", "happy"]
    assert label_window("1:3") == (1, 3)


def test_a_window_after_each_occurrence_and_a_regex(gpt2_tokenizer):
    tok = gpt2_tokenizer
    ids = np.array(tok.encode("She was sad and then left. The sad"), dtype=np.int64)
    after = Matcher(parse_label("sad", (1, 2)), tok).cover(ids)
    words = [tok.decode([int(t)]) for t in ids]
    assert [words[i] for i in np.flatnonzero(after.covered)] == [" and", " then"]  # the last 'sad' has none after
    whole = Matcher(parse_label("sad", (0, 1)), tok).cover(ids)
    assert [words[i] for i in np.flatnonzero(whole.covered)] == [" sad", " and", " sad"]
    regex = Matcher(Label("re", (), r"then l\w+"), tok).cover(ids)
    assert [words[i] for i in np.flatnonzero(regex.covered)] == [" then", " left"]


def test_prompt_words_are_the_over_represented_ones(tmp_path):
    from collections import Counter

    path = tmp_path / "joy.txt"
    path.write_text("I was so happy and glad today\nHappy and glad, the happy crowd\n# comment\n", encoding="utf-8")
    corpus = Counter({"the": 1000, "and": 800, "was": 500, "today": 20, "happy": 1})
    words = [w for w, _ in words_from_prompts(path, corpus)]
    assert words[:2] == ["glad", "happy"] or words[:2] == ["happy", "glad"]
    assert "the" not in words  # once in the prompts: never taken
