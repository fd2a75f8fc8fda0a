"""bfloat16 mining with a float32 re-score of the kept windows (issue 25), on the toy world.

A bfloat16 pass rounds the activations, so a feature's top-k windows can come in another order, or
with another window at the k-th place, than a float32 pass's. Re-scoring the pass's candidates (2k per
feature) with the model and SAE in float32 must give the float32 pass's top-k: the same windows,
peak positions, order and values, to float32 rounding.

"To float32 rounding", because the re-score encodes each window in another batch than the pass did,
and on some CPUs (AVX-512 ones among them) a matmul's last bits depend on the batch's shape and a
row's place in it. The toy world's planted features have plateaus (one activation, to 1e-6, in
hundreds of windows), whose order is then batch noise. So values are compared at a relative 1e-5
(float32's rounding is 6e-8), windows tied within that are interchangeable, and every test here runs
under a simulated batch-dependent rounding (``batch_rounding``), so that it holds on every CPU.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mechinterp.cards import mining
from mechinterp.cards.corpus import TextFileCorpus
from mechinterp.cards.mining import MiningOptions, mine
from mechinterp.core.errors import UserError
from mechinterp.core.toyworld import demo_corpus
from tests.helpers import batch_dependent_rounding

K = 5


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """~3,000 tokens of the demo corpus, one sentence group per document: many windows per feature."""
    sentences = demo_corpus(300, seed=11)
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
    """bool ``[F]``: the two results' top-k differ beyond float32 rounding (k-th value's ties swap freely)."""
    return mining.differs_beyond_rounding((a.top_windows, a.top_positions, a.top_values),
                                          (b.top_windows, b.top_positions, b.top_values))


@pytest.fixture(scope="module")
def batch_rounding():
    """The pass's float32 encoder rounding by batch, as some CPUs' kernels do (tests/helpers.py)."""
    real = mining.sae_encode
    mining.sae_encode = batch_dependent_rounding(real)
    yield
    mining.sae_encode = real


def test_differs_ignores_rounding_and_ties_but_not_a_window():
    def result(windows, values):
        n = np.asarray(windows)
        return dataclasses.make_dataclass("R", ["top_windows", "top_positions", "top_values"])(
            n, np.zeros_like(n), np.asarray(values, dtype=np.float32))

    base = result([[1, 2, 3]], [[3.0, 2.0, 1.0]])
    assert not differs(base, result([[1, 2, 3]], [[3.0000002, 2.0, 1.0]]))[0]  # rounding
    assert not differs(base, result([[1, 2, 4]], [[3.0, 2.0, 1.0000001]]))[0]  # another window tied with the k-th
    assert differs(base, result([[1, 4, 3]], [[3.0, 2.0, 1.0]]))[0]  # another window above the k-th
    assert differs(base, result([[1, 2, 3]], [[3.0, 2.0, 0.99]]))[0]  # a value


@pytest.fixture(scope="module")
def float32_pass(loaded_toy, corpus_file, batch_rounding):
    return mine(loaded_toy, TextFileCorpus(corpus_file), MiningOptions(all_features=True, k=K, window=32))


def test_rescore_with_every_window_gives_the_float32_top_k(loaded_toy, half, world, corpus_file, float32_pass,
                                                           batch_rounding):
    """Candidates enough for every window: the re-score alone decides, and gives the float32 pass's
    top-k of every planted feature, to float32 rounding (see the module's docstring)."""
    options = MiningOptions(all_features=True, k=K, window=32, candidates=float32_pass.n_windows)
    result = mine(half, TextFileCorpus(corpus_file), options, rescore_with=loaded_toy)
    rows = [result.row(f) for f in planted(world)]
    assert not differs(result, float32_pass)[rows].any()
    rescore = result.rescore
    assert rescore is not None and rescore.windows_encoded == float32_pass.n_windows
    # Without the re-score the bfloat16 pass differs on most planted features: their activations form
    # plateaus (the same value on hundreds of windows, to 1e-6) that bfloat16 rounds into exact ties.
    before = dataclasses.replace(result, top_windows=rescore.before_windows, top_positions=rescore.before_positions,
                                 top_values=rescore.before_values)
    assert differs(before, float32_pass)[rows].sum() >= len(rows) // 2
    # Every feature left different fired in float32 in a window where bfloat16 did not; each is flagged.
    assert set(np.flatnonzero(differs(result, float32_pass))) <= set(rescore.uncertain_features.tolist())


# 2k runs by default; 1k and 4k (the same check at other sizes) with the real-size cases (-m slow).
@pytest.mark.parametrize("factor", [pytest.param(1, marks=pytest.mark.slow), 2, pytest.param(4, marks=pytest.mark.slow)])
def test_rescore_of_a_few_candidates_is_exact_or_flagged(loaded_toy, half, world, corpus_file, float32_pass, factor,
                                                         batch_rounding):
    """With ``factor * k`` candidates (bounded memory), a feature's re-scored top-k is the float32
    pass's (to float32 rounding) unless the re-score flags it as uncertain; more candidates leave fewer
    different."""
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


@pytest.mark.slow  # ~30 s: it builds GPT-2 small's full-size random model twice
def test_mining_benchmark_compares_dtypes(tmp_path):
    """bench_mining.py with --dtype float32 bfloat16 at toy sizes: a row per dtype, the CPU's bf16
    instructions in the header, and the top-k comparison before and after the re-score."""
    import json
    import subprocess
    import sys

    bench = Path(__file__).resolve().parent.parent / "bench" / "bench_mining.py"
    cmd = [sys.executable, str(bench), "--sizes", "400", "--d-sae", "256", "--hook-layer", "0", "--checkpoint-every",
           "0", "--dtype", "bfloat16", "float32", "--out", str(tmp_path), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "bench_mining_float32_bfloat16.json").read_text())
    assert [r["dtype"] for r in results["runs"]] == ["float32", "bfloat16"]
    assert results["runs"][0]["rescore"] is None and results["runs"][1]["rescore"]["done"]
    (comparison,) = results["comparisons"]
    assert comparison["candidates"] == 20 and comparison["without_rescore"]["features"] == 256
    after = comparison["with_rescore"]
    assert after["set_differs"] + after["order_differs"] <= sum(comparison["without_rescore"].values()) - 256
    assert "CPU bfloat16 instructions" in done.stdout and "| bfloat16 | 400 |" in done.stdout


def test_topk_differences_counts_sets_and_orders():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from bench_mining import topk_differences

    a = {"windows": np.array([[1, 2], [1, 2], [1, 2], [1, 2]]), "positions": np.array([[0, 0], [0, 0], [0, 0], [0, 5]])}
    b = {"windows": np.array([[1, 2], [2, 1], [1, 3], [1, 2]]), "positions": np.array([[0, 0], [0, 0], [0, 0], [0, 0]])}
    a["values"] = b["values"] = np.array([[2.0, 1.0]] * 4, dtype=np.float32)
    # Row 1's top window changed; rows 2 and 3 differ only at the k-th value, where ties are interchangeable.
    expected = {"features": 4, "set_differs": 2, "order_differs": 1, "beyond_rounding": 1}
    assert topk_differences(a, b) == expected
    b["values"] = np.array([[2.0, 1.0], [2.0, 1.0], [2.0, 1.0], [2.0, 1.0001]], dtype=np.float32)
    assert topk_differences(a, b)["beyond_rounding"] == 2  # row 1, and row 3's value off by 1e-4
