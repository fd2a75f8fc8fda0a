"""bfloat16 mining with a float32 re-score of the kept windows (issue 25), on the toy world.

A bfloat16 pass rounds the activations, so a feature's top-k windows can come in another order, or
with another window at the k-th place, than a float32 pass's. Re-scoring the pass's candidates (2k per
feature) with the model and SAE in float32 must give the float32 pass's top-k exactly: the same
windows, peak positions, order and values.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from mechinterp.cards import mining
from mechinterp.cards.corpus import TextFileCorpus
from mechinterp.cards.mining import MiningOptions, mine
from mechinterp.core.errors import UserError
from mechinterp.core.toyworld import demo_corpus

K = 5


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """~6,000 tokens of the demo corpus, one sentence group per document: many windows per feature."""
    sentences = demo_corpus(600, seed=11)
    docs = [" ".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def half(loaded_toy):
    """The toy model and SAE cast to bfloat16 (as ``--dtype bfloat16`` loads them)."""
    model = copy.deepcopy(loaded_toy.model).to(torch.bfloat16)
    sae = copy.deepcopy(loaded_toy.sae.sae).to(torch.bfloat16)
    return dataclasses.replace(loaded_toy, model=model, sae=dataclasses.replace(loaded_toy.sae, sae=sae),
                               dtype="bfloat16")


def planted(world) -> list[int]:
    p = world.planted
    return sorted({*p.concept.values(), *p.always_on, *p.position.values(), p.length, *p.punctuation.values(),
                   *p.stray.values(), p.calm_a, p.calm_b, p.topic, p.opener} - {-1})


def differs(a, b) -> np.ndarray:
    """bool ``[F]``: the two results' top-k differ in a window, a peak position, the order or a value."""
    same = ((a.top_windows == b.top_windows) & (a.top_positions == b.top_positions)
            & (a.top_values == b.top_values)).all(axis=1)
    return ~same


@pytest.fixture(scope="module")
def float32_pass(loaded_toy, corpus_file):
    return mine(loaded_toy, TextFileCorpus(corpus_file), MiningOptions(all_features=True, k=K, window=32))


def test_rescore_with_every_window_gives_the_float32_top_k_exactly(loaded_toy, half, world, corpus_file, float32_pass):
    """Candidates enough for every window: the re-score alone decides, and it is bit-exact.

    Exact equality (no tolerance): the re-score encodes each window in other batches than the pass
    did, and on this CPU a window's float32 activations do not depend on its batch; a BLAS whose
    results depend on the batch shape would break this test, not the re-score's purpose.
    """
    options = MiningOptions(all_features=True, k=K, window=32, candidates=float32_pass.n_windows)
    result = mine(half, TextFileCorpus(corpus_file), options, rescore_with=loaded_toy)
    rows = [result.row(f) for f in planted(world)]
    for name in ("top_windows", "top_positions", "top_values"):
        np.testing.assert_array_equal(getattr(result, name)[rows], getattr(float32_pass, name)[rows], err_msg=name)
    rescore = result.rescore
    assert rescore is not None and rescore.windows_encoded == float32_pass.n_windows
    # Without the re-score the bfloat16 pass differs on most planted features: their activations form
    # plateaus (the same value on hundreds of windows, to 1e-6) that bfloat16 rounds into exact ties.
    before = dataclasses.replace(result, top_windows=rescore.before_windows, top_positions=rescore.before_positions,
                                 top_values=rescore.before_values)
    assert differs(before, float32_pass)[rows].sum() >= len(rows) // 2
    # Every feature left different fired in float32 in a window where bfloat16 did not; each is flagged.
    assert set(np.flatnonzero(differs(result, float32_pass))) <= set(rescore.uncertain_features.tolist())


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_rescore_of_a_few_candidates_is_exact_or_flagged(loaded_toy, half, world, corpus_file, float32_pass, factor):
    """With ``factor * k`` candidates (bounded memory), a feature's re-scored top-k is the float32
    pass's exactly unless the re-score flags it as uncertain; more candidates leave fewer different."""
    plain = mine(half, TextFileCorpus(corpus_file), MiningOptions(all_features=True, k=K, window=32))
    options = MiningOptions(all_features=True, k=K, window=32, candidates=factor * K)
    result = mine(half, TextFileCorpus(corpus_file), options, rescore_with=loaded_toy)
    rescore = result.rescore
    assert rescore is not None and rescore.candidates == factor * K and rescore.dtype == "torch.bfloat16"
    # The pass's own top-k (before the re-score) is the plain bfloat16 pass's.
    np.testing.assert_array_equal(rescore.before_windows, plain.top_windows)
    np.testing.assert_array_equal(rescore.before_values, plain.top_values)
    wrong_before, wrong_after = differs(plain, float32_pass), differs(result, float32_pass)
    flagged = set(rescore.uncertain_features.tolist())
    assert set(result.features[wrong_after].tolist()) <= flagged
    assert wrong_after.sum() < wrong_before.sum()
    assert rescore.features_changed + rescore.order_changed > 0
    record = rescore.to_dict()
    assert record["done"] and record["uncertain"] == len(flagged) and "before_windows" not in record
    assert "re-scored in float32" in repr(result)


def test_candidates_option_and_checkpoint_key(loaded_toy, corpus_file):
    with pytest.raises(UserError, match="candidates must be at least k"):
        MiningOptions(features=(1,), k=5, candidates=4)
    corpus = TextFileCorpus(corpus_file)
    plain = MiningOptions(features=(1,), k=5)
    assert plain.slots == 5 and MiningOptions(features=(1,), k=5, candidates=5).slots == 5
    # A plain pass keeps its key (and so its saved passes); more candidates are another pass.
    assert "candidates" not in mining.checkpoint_key(loaded_toy, corpus, plain, 32)
    more = mining.checkpoint_key(loaded_toy, corpus, MiningOptions(features=(1,), k=5, candidates=10), 32)
    assert more["candidates"] == 10
