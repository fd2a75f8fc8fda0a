"""Corpus mining (mechinterp.cards.mining, .corpus, .store) against a brute-force reference on the toy world.

The reference reads the corpus with Chapter 3's own reader, encodes every window alone with a full
``run_with_cache`` forward pass, keeps every dense activation, and sorts. The streaming pass must give
the same top-k (values and locations, ties included), firing counts and histograms, whatever its batch
size, window size, token limit or interruptions.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mechinterp.cards import mining, report, store
from mechinterp.cards.corpus import CorpusPosition, HFDatasetCorpus, TextFileCorpus, iter_windows
from mechinterp.cards.mining import MiningOptions, merge_topk, mine, window_activations
from mechinterp.core.encoding import sae_encode
from mechinterp.core.errors import EnvironmentProblem, UserError
from mechinterp.core.prompts import read_prompt_file
from mechinterp.core.toyworld import demo_corpus
from tests.helpers import PassRecorder, batch_dependent_rounding

K = 5
# Every per-feature array of a MiningResult.
ARRAYS = ("top_values", "top_windows", "top_positions", "hist_counts", "window_hist_counts", "sample_windows",
          "sample_positions", "sample_values")


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """~2,000 tokens: short and long documents (up to ~300 tokens), exact duplicates (for ties), a
    literal <|endoftext|>, and everything Chapter 3's reader skips or strips."""
    sentences = demo_corpus(160, seed=7)
    docs = sentences[:30]
    for i, n in enumerate((14, 30, 9, 22, 33)):
        docs.append(" ".join(sentences[30 + 20 * i : 30 + 20 * i + n]))
    docs += [docs[3], docs[31], docs[3]]  # duplicates: same tokens, same activations
    docs.append("The teacher was glad <|endoftext|> and the driver was furious")
    lines = ["# a comment line, not a document", ""] + [f"  {d}  " if i % 7 == 0 else d for i, d in enumerate(docs)]
    text = "\n".join(lines[:20]) + "\r\n" + "\n".join(lines[20:]) + "\n\n"
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    return path


def reference(loaded, path, text_len, max_tokens=None, bos=True):
    """Every window of the corpus, and its dense activations ``[n_tokens, d_sae]`` (BOS dropped)."""
    tok, hook = loaded.model.tokenizer, loaded.sae.hook_name
    windows, left = [], max_tokens
    for d, text in enumerate(read_prompt_file(path)):
        ids = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
        for s in range(0, len(ids), text_len):
            chunk = ids[s : s + text_len]
            if left is not None:
                chunk = chunk[:left]
                left -= len(chunk)
            if chunk:
                windows.append((d, s, chunk))
    acts = []
    with torch.inference_mode():
        for _, _, chunk in windows:
            first = [tok.bos_token_id] if bos else []
            _, cache = loaded.model.run_with_cache(torch.tensor([[*first, *chunk]]), names_filter=hook)
            # The project's encode (tests/test_fast_attention.py: SAELens' to float rounding in float32, and
            # one rounding apart in bfloat16, where it adds the bias inside the matmul): the activations as
            # the pass computes them, one window at a time and without its batching.
            acts.append(sae_encode(loaded.sae.sae, cache[hook])[0, len(first):].float().numpy())
    return windows, acts


def reference_topk(acts, feature, k):
    entries = [(float(a[:, feature].max()), w, int(a[:, feature].argmax())) for w, a in enumerate(acts)]
    return sorted((e for e in entries if e[0] > 0), key=lambda e: (-e[0], e[1]))[:k]


@pytest.fixture
def rounding(request, monkeypatch):
    """``"cpu"``: this CPU's own float32 kernels; ``"by-batch"``: the pass's encoder rounding by the batch's
    shape, as some CPUs' kernels do (tests/helpers.py), so that what is checked holds on every CPU."""
    if request.param == "by-batch":
        monkeypatch.setattr(mining, "sae_encode", batch_dependent_rounding(mining.sae_encode))
    return request.param


@pytest.mark.parametrize(
    "window, max_tokens, batch_size, bos, rounding",
    [(None, None, 3, True, "cpu"), (16, 700, 4, True, "by-batch"), (48, None, 5, False, "cpu")],
    ids=["sae-context-128", "window-16-max-700-tokens-rounding-by-batch", "window-48-no-bos"],
    indirect=["rounding"],
)
def test_mining_equals_brute_force(loaded_toy, world, corpus_file, window, max_tokens, batch_size, bos,
                                   rounding):
    if not bos:  # an SAE trained without BOS: windows of text only
        loaded_toy = dataclasses.replace(loaded_toy, sae=dataclasses.replace(loaded_toy.sae, prepend_bos=False))
    size = window or 128  # the toy SAE's recorded training context
    windows, acts = reference(loaded_toy, corpus_file, size - bos, max_tokens, bos)
    options = MiningOptions(all_features=True, k=K, window=window, max_tokens=max_tokens,
                            batch_size=batch_size)
    with PassRecorder() as first:
        mine(loaded_toy, TextFileCorpus(corpus_file), options)
    computed = first.in_order(len(windows))
    # The pass encodes each window as the brute force does (the same tokens, BOS, positions), to rounding:
    # batched matmuls may round differently from one window at a time, on some CPUs.
    for a, b in zip(computed, acts):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if rounding == "by-batch":  # the simulated rounding is really there
        assert not all(np.array_equal(a, b) for a, b in zip(computed, acts))
    # Every statistic is an exact function of the activations the pass computed, which are the same in
    # every pass with the same batches. The lowest histogram edge is one of them, so that the bins'
    # [low, high) side is tested.
    dense = np.concatenate(computed)  # [n_tokens, d_sae]
    happy = np.sort(dense[:, world.planted.concept["happy"]])
    edge = float(happy[happy > 0][(happy > 0).sum() // 2])  # a median that occurs
    options = dataclasses.replace(options, hist_low=edge, hist_high=edge * 400, hist_bins=12)
    assert (dense == options.hist_edges()[1]).any()
    with PassRecorder() as again:
        result = mine(loaded_toy, TextFileCorpus(corpus_file), options)
    assert again.batches == first.batches
    assert all(np.array_equal(a, b) for a, b in zip(again.in_order(len(windows)), computed))

    assert result.window == size and result.n_bos == int(bos) and result.complete
    assert result.n_windows == len(windows) and len(windows) > 30
    assert result.n_tokens == sum(len(c) for _, _, c in windows) == (max_tokens or result.n_tokens)
    assert max(len(c) for _, _, c in windows) == size - bos  # some window is full: documents were split
    assert any(len(b) > 1 for b in first.batches)  # windows really were encoded in batches

    # Top-k: values, windows and peak positions, exactly; ties go to the earlier window. The brute force
    # has exact ties (duplicated documents); the pass keeps them where its batches round alike.
    ties = 0
    for f in range(loaded_toy.sae.d_sae):
        ref = reference_topk(computed, f, K)
        got = result.examples(f)
        assert len(got) == len(ref), f
        assert [(e.value, e.window.window_id) for e in got] == [(v, w) for v, w, _ in ref], f
        for e in got:
            doc, start, chunk = windows[e.window.window_id]
            assert (e.window.doc, e.window.start, e.window.tokens.tolist()) == (doc, start, chunk)
            assert computed[e.window.window_id][e.position, f] == e.value  # the peak is where it says
        ties += sum(a[0] == b[0] for a, b in itertools.pairwise(ref))
    assert ties > 0 or rounding == "by-batch"  # ties really were ordered on this CPU
    assert sum(a[0] == b[0] for f in range(loaded_toy.sae.d_sae)
               for a, b in itertools.pairwise(reference_topk(acts, f, K))) > 0

    # Firing counts and histograms over every token.
    np.testing.assert_array_equal(result.fired_counts, (dense > 0).sum(0))
    inner = options.hist_edges()[1:-1]
    for f in range(loaded_toy.sae.d_sae):
        values = dense[:, f][dense[:, f] > 0]
        expected = np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(inner) + 1)
        np.testing.assert_array_equal(result.hist_counts[result.row(f)], expected)
    assert result.hist_counts[:, 0].sum() > 0 and result.hist_counts[:, 1:-1].sum() > 0  # both sides of low are used

    # Per-window maxima: their histogram on the same bins, and the random draw of windows where each
    # feature fires (the highest fixed priorities, ties to the earlier window), with each one's peak.
    peaks = np.stack([a.max(axis=0) for a in computed])  # [n_windows, d_sae]
    priority = mining.window_priority(np.arange(len(windows)))
    assert len(set(priority.tolist())) > 0.99 * len(windows) and priority.min() > 0 and priority.max() <= 1
    for f in range(loaded_toy.sae.d_sae):
        fired_in = np.flatnonzero(peaks[:, f] > 0)
        expected = np.bincount(np.searchsorted(inner, peaks[fired_in, f], side="right"), minlength=len(inner) + 1)
        np.testing.assert_array_equal(result.window_hist_counts[result.row(f)], expected)
        assert result.windows_fired(f) == len(fired_in)
        drawn = sorted(fired_in.tolist(), key=lambda w: (-priority[w], w))[:mining.DEFAULT_SAMPLES]
        got = result.samples(f)
        assert [e.window.window_id for e in got] == drawn, f
        for e in got:
            assert e.value == peaks[e.window.window_id, f] == computed[e.window.window_id][e.position, f]
        # The card's activation levels: exact when every window where it fires is drawn, else in the
        # right bin of the maxima's histogram.
        for q in (0.25, 0.5, 0.75):
            level = result.window_max_quantile(f, q)
            maxima = np.sort(peaks[fired_in, f])
            if len(maxima) == 0:
                assert level == 0.0
            elif len(maxima) <= mining.DEFAULT_SAMPLES:
                assert level == pytest.approx(float(np.quantile(maxima, q)), abs=1e-5), (f, q)
            else:
                order_statistic = maxima[int(np.ceil(q * len(maxima))) - 1]
                assert np.searchsorted(inner, level, side="right") == np.searchsorted(inner, order_statistic,
                                                                                     side="right"), (f, q)
    many = [f for f in range(loaded_toy.sae.d_sae) if result.windows_fired(f) > mining.DEFAULT_SAMPLES]
    assert len(many) > 3  # draws that are a sample, not every window

    # BOS: never a window token, never counted (the planted BOS feature fires only at BOS).
    bos = loaded_toy.model.tokenizer.bos_token_id
    assert all(bos not in w.tokens for w in result.windows.values())
    assert result.fired(world.planted.bos) == 0 and result.examples(world.planted.bos) == []
    assert result.windows_fired(world.planted.bos) == 0 and result.samples(world.planted.bos) == []


def test_bfloat16_model_and_sae_give_float32_statistics_of_their_own_activations(loaded_toy, world, corpus_file):
    """With the model and SAE computing in bfloat16, every statistic is taken in float32 on the
    activations as computed (values bfloat16-exact), and those are a bfloat16 brute force's to rounding."""
    model = copy.deepcopy(loaded_toy.model).to(torch.bfloat16)
    sae = copy.deepcopy(loaded_toy.sae.sae).to(torch.bfloat16)
    half = dataclasses.replace(loaded_toy, model=model, sae=dataclasses.replace(loaded_toy.sae, sae=sae))
    windows, acts = reference(half, corpus_file, 31, max_tokens=300)
    options = MiningOptions(all_features=True, k=K, window=32, batch_size=4, max_tokens=300)
    with PassRecorder() as seen:
        result = mine(half, TextFileCorpus(corpus_file), options)
    computed = seen.in_order(len(windows))
    dense = np.concatenate(computed)
    assert result.top_values.dtype == np.float32 and result.sample_values.dtype == np.float32
    assert result.n_tokens == len(dense) == 300
    assert torch.equal(torch.from_numpy(dense).to(torch.bfloat16).float(), torch.from_numpy(dense))
    np.testing.assert_array_equal(result.fired_counts, (dense > 0).sum(0))
    inner = options.hist_edges()[1:-1]
    for f in (world.planted.concept["happy"], world.planted.always_on[0], 7, 300):
        values = dense[:, f][dense[:, f] > 0]
        expected = np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(inner) + 1)
        np.testing.assert_array_equal(result.hist_counts[result.row(f)], expected)
        ref = reference_topk(computed, f, K)
        np.testing.assert_array_equal(result.top_values[result.row(f), : len(ref)], [r[0] for r in ref])
    top = torch.from_numpy(result.top_values)
    assert torch.equal(top.to(torch.bfloat16).float(), top)  # bfloat16 numbers, not rounded again
    # One window at a time gives the same activations: exactly on this CPU, and to bfloat16's rounding
    # where a CPU's bfloat16 kernels round by the batch's shape (a few units of 2^-8 after the layers).
    scale = float(np.abs(dense).max())
    for a, b in zip(computed, acts):
        np.testing.assert_allclose(a, b, rtol=2**-5, atol=2**-5 * scale)
    # The card's per-token activations of a window: float32, the pass's numbers when encoded in the
    # pass's batch, and bfloat16 numbers in any batch.
    batch = next(b for b in seen.batches if len(b) > 1)
    cards = window_activations(half, [seen.windows[w] for w in batch], [7, 300],
                               batch_size=len(batch))
    for w, a in zip(batch, cards):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, computed[w][:, [7, 300]])
    tops = [w for w in result.top_windows[:, 0] if w >= 0][:3]
    for a in window_activations(half, [result.windows[w] for w in tops], [7, 300]):
        exact = torch.from_numpy(a)
        assert a.dtype == np.float32 and torch.equal(exact.to(torch.bfloat16).float(), exact)
    # Not the float32 numbers: bfloat16 changed the activations, and its checkpoints are another pass's.
    full = mine(loaded_toy, TextFileCorpus(corpus_file), options)
    assert not np.array_equal(full.top_values, result.top_values)
    corpus = TextFileCorpus(corpus_file)
    keys = [mining.checkpoint_key(x, corpus, options, 32) for x in (half, loaded_toy)]
    assert keys[0]["dtype"] != keys[1]["dtype"] and store.checkpoint_path(Path("."), keys[0]) != store.checkpoint_path(
        Path("."), keys[1])


def test_requested_features_equal_their_rows_of_all_features(loaded_toy, world, corpus_file):
    features = (world.planted.concept["happy"], 7, world.planted.concept["angry"], world.planted.bos)
    some = mine(loaded_toy, TextFileCorpus(corpus_file), MiningOptions(features=features, k=K, window=32))
    every = mine(loaded_toy, TextFileCorpus(corpus_file), MiningOptions(all_features=True, k=K, window=32))
    rows = [every.row(f) for f in features]
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(some, name), getattr(every, name)[rows], err_msg=name)
    assert some.fired(world.planted.concept["happy"]) > 0
    with pytest.raises(UserError, match="was not mined"):
        some.row(8)
    with pytest.raises(UserError, match="ids run from 0 to 511"):
        mine(loaded_toy, TextFileCorpus(corpus_file), MiningOptions(features=(512,)))


def test_merge_topk_orders_by_value_then_window():
    rng = np.random.default_rng(0)
    n, k = 40, 6
    values = torch.full((n, k), -float("inf"))
    windows = torch.full((n, k), -1, dtype=torch.long)
    positions = torch.zeros((n, k), dtype=torch.long)
    seen: list[list[tuple[float, int, int]]] = [[] for _ in range(n)]
    next_window = 0
    for _ in range(7):
        m = int(rng.integers(1, 9))
        # Few distinct values (0 included) so that ties are everywhere; window ids arrive out of order.
        new_v = torch.tensor(rng.integers(0, 4, size=(n, m)), dtype=torch.float32)
        ids = torch.tensor(rng.permutation(m) + next_window, dtype=torch.long)
        next_window += m
        new_p = torch.tensor(rng.integers(0, 50, size=(n, m)), dtype=torch.long)
        values, windows, positions = merge_topk(values, windows, positions, new_v, ids.expand(n, -1), new_p, k)
        for r in range(n):
            seen[r] += [(float(v), int(w), int(p)) for v, w, p in zip(new_v[r], ids, new_p[r]) if v > 0]
            expected = sorted(seen[r], key=lambda e: (-e[0], e[1]))[:k]
            got = [(float(v), int(w), int(p)) for v, w, p in zip(values[r], windows[r], positions[r]) if w >= 0]
            assert got == expected
            assert all(w == -1 for w in windows[r, len(expected):].tolist())


def test_windows_respect_the_context(loaded_toy, corpus_file):
    tok = loaded_toy.model.tokenizer
    docs = read_prompt_file(corpus_file)
    for text_len in (127, 15, 1):
        by_doc: dict[int, list] = {}
        for window, _, _ in iter_windows(TextFileCorpus(corpus_file), tok, text_len):
            assert 1 <= len(window.tokens) <= text_len
            by_doc.setdefault(window.doc, []).append(window)
        for d, text in enumerate(docs):
            ids = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
            parts = by_doc[d]
            assert [w.start for w in parts] == list(range(0, len(ids), text_len))
            assert np.concatenate([w.tokens for w in parts]).tolist() == ids
    assert any(len(ids) > 127 for ids in (tok.encode(t) for t in docs))  # a document longer than a window
    with pytest.raises(UserError, match="longer than the model's context"):
        mine(loaded_toy, TextFileCorpus(corpus_file), MiningOptions(features=(1,), window=129))


def test_resuming_gives_the_uninterrupted_result(loaded_toy, corpus_file, tmp_path, monkeypatch):
    def run(progress=None, **changes):
        options = MiningOptions(all_features=True, k=K, window=32, batch_size=2, checkpoint_every=16, **changes)
        messages = []
        result = mine(loaded_toy, TextFileCorpus(corpus_file), options, {"model": "toy"}, progress, messages.append)
        return result, messages

    def interrupt_after(calls, exc, seen):
        def progress(done, total):
            seen.append(done)
            if len(seen) > calls:
                raise exc

        return progress

    whole, _ = run()
    # Stopped after 5 batches: Ctrl-C saves there; a crash resumes from the last periodic save (every
    # 16 windows), before that, and encodes the batches since then again.
    resumed_at = {}
    for exc, folder in ((RuntimeError("crash"), "crash"), (KeyboardInterrupt(), "ctrl-c")):
        seen = []
        with pytest.raises(type(exc)):
            run(interrupt_after(6, exc, seen), checkpoint_dir=tmp_path / folder)
        resumed, messages = run(checkpoint_dir=tmp_path / folder)
        assert any(m.startswith("resuming from") for m in messages), messages
        resumed_at[folder] = resumed.resumed_at
        assert 0 < resumed.resumed_at <= seen[-1] < whole.n_tokens
        for name in ARRAYS:
            np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name), err_msg=name)
        for name in ("n_tokens", "n_windows", "n_documents"):
            assert getattr(resumed, name) == getattr(whole, name), name
        kept = {i: (w.doc, w.start, w.tokens.tolist()) for i, w in whole.windows.items()}
        assert {i: (w.doc, w.start, w.tokens.tolist()) for i, w in resumed.windows.items()} == kept

    assert resumed_at["crash"] < resumed_at["ctrl-c"] == seen[-1]

    # A finished pass is read back without encoding anything.
    with monkeypatch.context() as patch:
        patch.setattr(mining, "_batch_activations", None)  # fails if called
        again, messages = run(checkpoint_dir=tmp_path / "crash")
    assert any(m.startswith("reading the saved pass") for m in messages)
    np.testing.assert_array_equal(again.top_values, whole.top_values)
    # Other options are another pass: with a token limit, this checkpoint is not used.
    _, messages = run(checkpoint_dir=tmp_path / "crash", max_tokens=500)
    assert not any("resuming" in m or "already" in m for m in messages)


def test_example_activations_reproduce_the_mined_peaks(loaded_toy, world, corpus_file):
    happy = world.planted.concept["happy"]
    result = mine(loaded_toy, TextFileCorpus(corpus_file), MiningOptions(features=(happy, 3), k=K, window=32))
    examples = result.examples(happy)
    assert len(examples) == K
    acts = window_activations(loaded_toy, [e.window for e in examples], [happy, 3], batch_size=2)
    for e, a in zip(examples, acts):
        assert a.shape == (len(e.window.tokens), 2)
        # Encoded again in other batches: the same numbers to rounding (some CPUs round by the batch).
        assert float(a[:, 0].max()) == pytest.approx(e.value, rel=1e-5)
        assert int(a[:, 0].argmax()) == e.position
    edges, counts = result.histogram(happy)
    assert np.isfinite(edges).all() and counts.sum() == result.fired(happy) and counts[0] > 0 and counts[-1] > 0
    assert edges[0] <= examples[-1].value and edges[-1] > result.max_activation(happy)
    # Other sources (e.g. prompt groups) binned beside the corpus: same edges, trimmed together.
    prompts = np.array([0.0, 0.003, 1e-4, 2.0 * result.max_activation(happy), edges[1]], dtype=np.float32)
    joint, by_source = result.histogram_with(happy, {"prompts": prompts})
    assert list(by_source) == ["corpus", "prompts"] and np.isfinite(joint).all()
    np.testing.assert_array_equal(by_source["prompts"], np.histogram(prompts[prompts > 0], bins=joint)[0])
    assert by_source["prompts"].sum() == 4 and by_source["corpus"].sum() == result.fired(happy)
    assert joint[0] < 1e-4 and joint[-1] > 2.0 * result.max_activation(happy)


def test_text_file_rules_match_chapter3_reader_and_seek(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_bytes(b"\xef\xbb\xbf# header\n first doc \r\n\nsecond\rthird\n#skip\n\xe2\x98\x95 coffee\n  \nlast")
    corpus = TextFileCorpus(path)
    docs = list(corpus.documents())
    assert [d.text for d in docs] == read_prompt_file(path) == ["first doc", "second", "third", "☕ coffee", "last"]
    assert [d.index for d in docs] == list(range(5)) and [d.line for d in docs] == [2, 4, 4, 6, 8]
    # Restarting at any document, from the seek point recorded with the one before it, gives the rest.
    for before, nxt in itertools.pairwise(docs):
        start = CorpusPosition(before.index + 1, 0, before.seek, before.seek_line, before.seek_first)
        assert [d.text for d in corpus.documents(start)] == [d.text for d in docs[nxt.index:]]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\nbro\x00ken\n")
    with pytest.raises(UserError, match="NUL byte on line 3"):
        list(TextFileCorpus(bad).documents())
    bad.write_bytes(b"fine\n\xff\xfe\n")
    with pytest.raises(UserError, match="not UTF-8 text .bad byte on line 2"):
        list(TextFileCorpus(bad).documents())
    with pytest.raises(UserError, match="does not exist"):
        TextFileCorpus(tmp_path / "missing.txt")


def test_hub_dataset_offline_fails_at_once_in_one_line():
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        next(HFDatasetCorpus("Skylion007/openwebtext").documents())
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert "\n" not in message and "offline" in message and "--corpus FILE" in message
    # The machine lacks the network (exit status 1, as for a model download); the message names what works.
    assert err.value.exit_code == 1 and isinstance(err.value, EnvironmentProblem)


def test_streamed_dataset_equals_the_file(loaded_toy, corpus_file, tmp_path):
    """A local file streamed through ``datasets`` (the ``text`` builder) mines like the file itself."""
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(read_prompt_file(corpus_file)) + "\n", encoding="utf-8")
    options = MiningOptions(all_features=True, k=K, window=32)
    from_file = mine(loaded_toy, TextFileCorpus(plain), options)
    streamed = mine(loaded_toy, HFDatasetCorpus("text", data_files=str(plain)), options)
    assert streamed.n_tokens == from_file.n_tokens and streamed.n_documents == from_file.n_documents
    np.testing.assert_array_equal(streamed.top_values, from_file.top_values)
    np.testing.assert_array_equal(streamed.top_windows, from_file.top_windows)
    np.testing.assert_array_equal(streamed.hist_counts, from_file.hist_counts)
    with pytest.raises(UserError, match="no column 'body'"):
        next(HFDatasetCorpus("text", column="body", data_files=str(plain)).documents())


def test_progress_reports_tokens(loaded_toy, corpus_file):
    calls = []
    result = mine(loaded_toy, TextFileCorpus(corpus_file), MiningOptions(features=(1,), window=64, batch_size=2),
                  progress=lambda done, total: calls.append((done, total)))
    done = [d for d, _ in calls]
    assert done[0] == 0 and done == sorted(done) and done[-1] == result.n_tokens and len(calls) > 5
    # Without --max-tokens the total is estimated from the file's size, then from its tokens per byte.
    assert calls[0][1] == round(corpus_file.stat().st_size / mining.BYTES_PER_TOKEN)
    assert abs(calls[-1][1] - result.n_tokens) <= 0.02 * result.n_tokens
    calls.clear()
    mine(loaded_toy, TextFileCorpus(corpus_file), MiningOptions(features=(1,), window=64, max_tokens=300),
         progress=lambda done, total: calls.append((done, total)))
    assert {t for _, t in calls} == {300} and calls[-1][0] == 300


def test_progress_bar_starts_where_a_resumed_pass_starts():
    import io

    from tqdm import tqdm

    bar = tqdm(total=0, unit="tok", file=io.StringIO(), mininterval=0)
    update = report.progress_updater(bar)
    update(5_000, 20_000)  # 5,000 tokens were mined before a resume
    update(7_000, 20_000)
    update(9_000, 19_000)
    assert (bar.n, bar.initial, bar.total) == (9_000, 5_000, 19_000)
    assert bar.format_dict["n"] - bar.format_dict["initial"] == 4_000  # what the speed is computed from
    bar.close()
