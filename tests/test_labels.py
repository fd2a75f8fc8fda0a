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
    n_sims, n_docs, covered = 150, 40, 0
    rng = np.random.default_rng(5)
    true_share = 0.6
    for sim in range(n_sims):
        sums = ls._Sums(1, len(ls._INNER) + 1, [0], 200)
        lengths = rng.integers(5, 30, size=n_docs)
        n = int(lengths.sum())
        act = np.where(rng.random(n) < 0.5, rng.lognormal(0, 1, n), 0.0)
        # Documents differ in how much of the feature the label explains (clustered data), around true_share.
        cov = rng.random(n) < np.repeat(np.clip(rng.normal(true_share, 0.2, n_docs), 0, 1), lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        coverages = [Coverage(cov[o:o + k], [], [], int(o)) for o, k in zip(offsets, lengths)]
        docs = [sim * 1000 + d for d in range(n_docs)]
        ls._fold(sums, act, np.ones(n, bool), np.repeat(np.arange(n_docs), lengths), [coverages],
                 ls._doc_weights(docs, 200, 0), n_docs)
        lo, hi = ls._boot_ci(sums, 0)["specificity"]
        covered += lo <= true_share <= hi
    # Nominal 95%; a percentile bootstrap on 40 documents runs a little under it: 87-100% over 150 simulations.
    assert 0.87 <= covered / n_sims <= 1.0


def test_auroc_from_histograms_matches_the_exact_auroc_within_its_bound():
    rng = np.random.default_rng(7)
    pos = np.where(rng.random(300) < 0.8, rng.lognormal(0.5, 1, 300), 0.0)
    neg = np.where(rng.random(900) < 0.3, rng.lognormal(0, 1, 900), 0.0)

    def hist(x):
        bins = np.zeros(len(x), np.int64)
        bins[x > 0] = ls.bins_for(x[x > 0])
        return np.bincount(bins, minlength=len(ls._INNER) + 2)

    auc, bound = ls.auroc_from_hist(hist(pos), hist(neg))
    assert abs(auc - exact_auroc(pos, neg)) <= bound < 0.01
    from scipy.stats import mannwhitneyu

    u = mannwhitneyu(pos, neg).statistic  # scipy's U / (n m) is the exact AUROC with ties half
    assert u / (len(pos) * len(neg)) == pytest.approx(exact_auroc(pos, neg), abs=1e-12)


# --- the matcher (GPT-2's real tokenizer) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    """GPT-2's real BPE (the files tests/gpt2_world.py checks by hash), as a transformers tokenizer."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

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


# --- the GPT-2-faithful world ----------------------------------------------------------------------------

NEUTRAL_LABEL = "neutral: station, garden, kitchen, river, market, bridge, window, library"


@pytest.fixture(scope="module")
def g2w_scores(tmp_path_factory):
    """The world loaded by its real names, a ~20k-token generated corpus, and one pass scoring the planted
    happy feature (joy, anger and neutral words) and sad feature (its words, and the 1..3 tokens after them)."""
    from mechinterp.cards.corpus import TextFileCorpus
    from mechinterp.core.source import SourceOptions, load, resolve_source
    from tests import gpt2_world as gw
    from tests import shared_builds
    from tests.label_corpus import write_corpus

    root = tmp_path_factory.mktemp("labels_g2w")
    world, _ = shared_builds.gpt2_world(tmp_path_factory, root / "hf")  # a copy of the session's one build
    with gw.hub_cache(world.hf_home):
        loaded = load(resolve_source(SourceOptions(device="cpu")))
    path = root / "corpus.txt"
    write_corpus(path, 12_000, loaded.model.tokenizer, seed=3)
    happy, sad = world.planted.happy, world.planted.sad
    labels = {"joy": parse_label("joy: " + ", ".join(gw.HAPPY_WORDS)),
              "anger": parse_label("anger: " + ", ".join(gw.ANGRY_WORDS)),
              "neutral": parse_label(NEUTRAL_LABEL),
              "sad": parse_label("sad: " + ", ".join(gw.SAD_WORDS)),
              "after_sad": parse_label("sad: " + ", ".join(gw.SAD_WORDS), (1, 3))}
    units = [ls.Unit(str(happy), (happy,)), ls.Unit(str(sad), (sad,))]
    per_unit = {str(happy): [labels["joy"], labels["anger"], labels["neutral"]],
                str(sad): [labels["sad"], labels["after_sad"]]}
    result = ls.score_labels(loaded, TextFileCorpus(path), units, per_unit,
                             ls.LabelPassOptions(n_random=10, n_boot=50, seed=1))
    scores = {s.label.name + ("+" if s.label.window != (0, 0) else ""): s for ss in result.scores.values() for s in ss}
    return {"loaded": loaded, "path": path, "world": world, "labels": labels, "scores": scores, "result": result}


@pytest.fixture(scope="module")
def encoded(g2w_scores):
    """Every window encoded alone by TransformerLens' run_with_cache and SAELens' encode, held in memory:
    its tokens and the activations ``[n, d_sae]`` without BOS."""
    import torch

    from mechinterp.cards.corpus import TextFileCorpus, iter_windows

    loaded = g2w_scores["loaded"]
    tok, hook = loaded.model.tokenizer, loaded.sae.hook_name
    windows = []
    for window, _, _ in iter_windows(TextFileCorpus(g2w_scores["path"]), tok, 127):
        tokens = torch.tensor([[tok.bos_token_id, *window.tokens.tolist()]])
        with torch.inference_mode():
            _, cache = loaded.model.run_with_cache(tokens, names_filter=hook, stop_at_layer=loaded.sae.hook_layer + 1)
            windows.append((window.tokens, loaded.sae.sae.encode(cache[hook])[0, 1:].float().numpy()))  # BOS dropped
    return windows


def brute_force(encoded, tokenizer, feature: int, label: Label) -> dict:
    matcher = Matcher(label, tokenizer)
    acts, covered, occurrences = [], [], []
    for tokens, all_acts in encoded:
        a = all_acts[:, feature].astype(np.float64)
        c = matcher.cover(tokens)
        acts.append(a)
        covered.append(c.covered)
        occurrences += [a[p].max() for p in c.occurrences]
    return {"act": np.concatenate(acts), "cov": np.concatenate(covered), "occ": np.array(occurrences)}


def test_the_planted_happy_feature_is_explained_by_joy_words_only(g2w_scores):
    s = g2w_scores["scores"]
    joy, anger, neutral = s["joy"], s["anger"], s["neutral"]
    assert joy.specificity >= 0.9 and joy.sensitivity >= 0.9 and joy.auroc >= 0.9
    assert joy.n_occurrences > 80 and joy.ci["specificity"][0] >= 0.9
    assert anger.specificity <= 0.2 and anger.sensitivity <= 0.2
    # A list of ordinary words scores about what random lists of its frequency score.
    for name in ("specificity", "sensitivity"):
        _, lo, hi = neutral.baseline[name]
        assert lo - 0.05 <= getattr(neutral, name) <= hi + 0.05 and getattr(neutral, name) <= 0.2
    assert joy.baseline["auroc"][2] < 0.8  # chance is far below the joy label
    assert all(abs(n - joy.n_occurrences) <= 0.5 * joy.n_occurrences for n in joy.random_occurrences)
    assert joy.silent == [] or all(x.activation == 0 or x.activation > 0 for x in joy.silent)
    assert all("[[" in x.text for x in anger.silent)


def test_a_label_on_the_tokens_after_a_sad_word_catches_the_carry_over(g2w_scores):
    from tests import gpt2_world as gw

    s = g2w_scores["scores"]
    word, after = s["sad"], s["sad+"]
    assert word.sensitivity >= 0.9 and after.sensitivity >= 0.9  # it fires on the word and on the tokens after
    carried = sum(gw.SAD_CARRY)
    # On the word: 3 of 3 + 3.7 of its mass; after it: the rest (within the model's rounding of the planted values).
    assert word.specificity == pytest.approx(3.0 / (3.0 + carried), abs=0.08)
    assert after.specificity == pytest.approx(carried / (3.0 + carried), abs=0.08)
    assert after.specificity > after.baseline["specificity"][2] + 0.3


@pytest.mark.parametrize("name", ["joy", "anger", "neutral", "after_sad"])
def test_every_streaming_score_equals_brute_force(g2w_scores, encoded, name):
    from scipy.stats import mannwhitneyu

    s = g2w_scores["scores"][{"after_sad": "sad+"}.get(name, name)]
    bf = brute_force(encoded, g2w_scores["loaded"].model.tokenizer, int(s.unit), g2w_scores["labels"][name])
    act, cov, occ = bf["act"], bf["cov"], bf["occ"]
    assert s.n_tokens == len(act) and s.n_covered == int(cov.sum()) and s.n_occurrences == len(occ)
    # Two encodes (batched and padded vs one window alone) agree to float32 rounding; a count could flip
    # only for an activation within 1e-5 of 0, which the planted features do not have.
    assert s.n_fired == int((act > 1e-5).sum()) and s.n_occurrences_fired == int((occ > 1e-5).sum())
    assert s.mass == pytest.approx(act.sum(), rel=1e-4)
    assert s.specificity == pytest.approx(act[cov].sum() / act.sum(), rel=1e-4, abs=1e-6)
    assert s.sensitivity == pytest.approx((occ > 1e-5).mean(), abs=1e-9)
    exact = mannwhitneyu(act[cov], act[~cov]).statistic / (cov.sum() * (~cov).sum())
    assert abs(s.auroc - exact) <= s.auroc_tie_bound + 1e-3
    for threshold, share in s.above:
        at = act >= threshold
        if at.sum():
            assert share == pytest.approx((at & cov).sum() / at.sum(), abs=0.01)
