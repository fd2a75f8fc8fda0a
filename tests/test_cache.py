"""The activation cache: shards of many prompts, read back exactly, few files, safe when runs share it.

A user's 10,000-prompt run used to leave one file per prompt (161,664 in one folder). These tests pin
what replaced it: rows come back bit for bit (token labels with any character included), 10,000 prompts
make at most a few dozen files, two processes writing the same prompts at once (with small shards being
merged meanwhile) leave every prompt readable and correct while a reader keeps looking, a damaged shard
is ignored, and an interrupted encoding keeps every finished prompt.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import threading
from pathlib import Path

import numpy as np
import pytest

from mechinterp.core import cache as cache_module
from mechinterp.core.cache import SHARD_PROMPTS, ActivationCache, compact, shards, stored_prompts, write_shard
from mechinterp.core.summaries import SparseRow

IDENTITY = {"model": "toy", "sae": "toy-sae"}
LABELS = [" the", "é", "\x00", "\n", " 🙂", "", "a,b", "\\", " 262"]  # any character may be in a label


def row_for(prompt: str) -> SparseRow:
    """A row determined by the prompt's text alone, so any process can check what another one wrote."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little"))
    n_fired, n_text = int(rng.integers(0, 40)), int(rng.integers(0, 12))
    return SparseRow(
        idx=np.sort(rng.choice(24576, n_fired, replace=False)).astype(np.int32),
        max=rng.random(n_fired, dtype=np.float32), mean=rng.random(n_fired, dtype=np.float32),
        n_tokens=n_text + 1, truncated=bool(rng.integers(0, 2)),
        peak=rng.integers(0, max(n_text, 1), n_fired).astype(np.int32),
        tokens=rng.integers(0, 50257, n_text).astype(np.int32),
        token_strs=[LABELS[int(i)] for i in rng.integers(0, len(LABELS), n_text)],
    )


def assert_same(got: SparseRow, want: SparseRow) -> None:
    for name in ("idx", "max", "mean", "peak", "tokens"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        assert getattr(got, name).dtype == getattr(want, name).dtype, name
    assert (got.n_tokens, got.truncated, got.token_strs) == (want.n_tokens, want.truncated, want.token_strs)


def prompts_named(n: int, start: int = 0) -> list[str]:
    return [f"Prompt number {i} about the weather." for i in range(start, start + n)]


@pytest.fixture(autouse=True)
def _forget_key_lists(monkeypatch):
    """Each test starts as a new process would: no shard's key list read yet."""
    monkeypatch.setattr(cache_module, "_KEYS", {})


def test_round_trip_exact_with_hits_and_misses(tmp_path):
    texts = prompts_named(600)
    cache = ActivationCache(tmp_path, IDENTITY)
    for text in texts[:500]:
        cache.put(text, row_for(text))
    cache.flush()
    assert cache.flush() is None  # nothing pending: no empty shard

    again = ActivationCache(tmp_path, IDENTITY)
    asked = [*texts, texts[3]]  # a prompt asked twice is found twice
    found = again.lookup(asked)
    assert sorted(found) == [*range(500), 600] and (again.hits, again.misses) == (501, 100)
    for i, row in found.items():
        assert_same(row, row_for(asked[i]))
    assert again.get(texts[7]) is not None and again.get("never stored") is None
    assert ActivationCache(tmp_path, {**IDENTITY, "sae": "other"}).lookup(texts[:5]) == {}  # its own folder


def test_ten_thousand_prompts_make_few_files_and_are_looked_up_from_key_lists(tmp_path, monkeypatch):
    texts = prompts_named(10_000)
    cache = ActivationCache(tmp_path, IDENTITY)
    for text in texts:
        cache.put(text, row_for(text))
    cache.flush()
    cache.save_meta({"d_sae": 24576})
    files = list(cache.folder.iterdir())
    assert len(files) == math.ceil(10_000 / SHARD_PROMPTS) + 1 <= 41  # the shards and meta.json
    assert stored_prompts(cache.folder) == 10_000

    # A lookup reads each shard's key list once, and a shard's rows only where a prompt is in it.
    opened: list[str] = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda path, *a, **k: (opened.append(Path(path).name), real_load(path, *a, **k))[1])
    monkeypatch.setattr(cache_module, "_KEYS", {})
    first = ActivationCache(tmp_path, IDENTITY).lookup(texts[:300])
    n_shards = len(shards(cache.folder))
    assert len(first) == 300 and len(opened) == n_shards + 2  # every key list, then the 2 shards holding them
    opened.clear()
    second = ActivationCache(tmp_path, IDENTITY).lookup(texts[-10:] + ["unknown"])
    assert len(second) == 10 and len(opened) == 1  # the key lists are known: only the rows are read


def test_small_shards_are_merged_and_nothing_is_lost(tmp_path):
    cache = ActivationCache(tmp_path, IDENTITY)
    texts = prompts_named(40)
    for i in range(0, 40, 2):  # 20 reruns that each encoded two edited prompts
        for text in texts[i:i + 2]:
            cache.put(text, row_for(text))
        cache.flush()
    assert len(shards(cache.folder)) <= cache_module.COMPACT_AFTER + 1
    found = ActivationCache(tmp_path, IDENTITY).lookup(texts)
    assert len(found) == 40
    for i, row in found.items():
        assert_same(row, row_for(texts[i]))


def test_damaged_shards_are_ignored_and_recomputed(tmp_path):
    cache = ActivationCache(tmp_path, IDENTITY, shard_prompts=10)
    texts = prompts_named(30)
    for text in texts:
        cache.put(text, row_for(text))
    first, second, third = sorted(shards(cache.folder), key=lambda p: p.stat().st_mtime_ns)
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])  # a crash mid-copy: truncated
    second.write_bytes(b"PK\x03\x04 not a zip at all")
    # A complete file whose arrays do not add up (more rows claimed than stored).
    with np.load(third) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["counts"][0, 0] += 5
    (cache.folder / "shard-1-1-bad.npz").write_bytes(b"")
    np.savez(cache.folder / "shard-10-1-broken.npz", **arrays)
    (cache.folder / ".shard-10-1-abcd.npz.x.tmp").write_bytes(b"half")  # a writer's temporary file: hidden

    again = ActivationCache(tmp_path, IDENTITY)
    found = again.lookup(texts)
    assert sorted(found) == list(range(20, 30)) and again.misses == 20  # only the intact third shard
    for text in texts[:20]:  # encoded again, they are found again
        again.put(text, row_for(text))
    again.flush()
    assert len(ActivationCache(tmp_path, IDENTITY).lookup(texts)) == 30


def _writer(root: str, start: int, rounds: int) -> None:
    """One run: stores overlapping prompts in small shards, so merging happens while others read."""
    cache = ActivationCache(Path(root), IDENTITY)
    for r in range(rounds):
        for text in prompts_named(3, start + 3 * r):
            cache.put(text, row_for(text))
        cache.flush()


def test_two_processes_writing_the_same_prompts_while_a_reader_looks(tmp_path):
    texts = prompts_named(3 * 60 + 90)
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), start, 60)) for start in (0, 90)]  # 90..180 shared
    seen: list[int] = []
    failures: list[str] = []
    done = threading.Event()

    def reader() -> None:  # the set of prompts found never shrinks, and every row found is right
        while not done.is_set():
            found = ActivationCache(tmp_path, IDENTITY).lookup(texts)
            if seen and len(found) < seen[-1]:
                failures.append(f"{len(found)} found after {seen[-1]}")
            seen.append(len(found))
            failures.extend(texts[i] for i, row in found.items() if row.n_tokens != row_for(texts[i]).n_tokens)

    thread = threading.Thread(target=reader)
    thread.start()
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
    done.set()
    thread.join(timeout=60)
    assert [p.exitcode for p in writers] == [0, 0] and not failures
    folder = ActivationCache(tmp_path, IDENTITY).folder
    assert not list(folder.glob(".*"))  # no temporary file left behind
    assert len(shards(folder)) <= 2 * (cache_module.COMPACT_AFTER + 1)
    found = ActivationCache(tmp_path, IDENTITY).lookup(texts)
    assert len(found) == len(texts)
    for i, row in found.items():
        assert_same(row, row_for(texts[i]))


@pytest.mark.parametrize("keys_known", [False, True], ids=["gone-before-its-keys", "gone-before-its-rows"])
def test_a_merge_racing_a_reader_loses_nothing(tmp_path, monkeypatch, keys_known):
    """A reader that listed the folder just before another run merged its small shards still finds
    every prompt (in the merged shard), whether a shard vanished before the reader read its key list or
    after (between reading the keys and the rows)."""
    texts = prompts_named(40)
    folder = ActivationCache(tmp_path, IDENTITY).folder
    for i in range(0, 40, 2):
        write_shard(folder, [hashlib.sha256(t.encode()).hexdigest() for t in texts[i:i + 2]],
                    [row_for(t) for t in texts[i:i + 2]])
    listed = shards(folder)
    if keys_known:
        assert len(ActivationCache(tmp_path, IDENTITY).lookup(["not stored"])) == 0  # reads every key list
    merged = compact(folder, threshold=4)
    assert merged is not None and shards(folder) == [merged]
    calls = iter([listed])  # the first listing is the stale one, taken before the merge
    monkeypatch.setattr(cache_module, "shards", lambda f: next(calls, None) or [merged])
    found = ActivationCache(tmp_path, IDENTITY).lookup(texts)
    assert len(found) == 40


def test_an_interrupted_encoding_keeps_every_finished_prompt(loaded_toy, tmp_path, monkeypatch):
    """Ctrl-C during the third batch: the two finished batches are in the cache (written on the way out,
    though no shard was full), the rest is not."""
    from mechinterp.core import encoding
    from mechinterp.core.pipeline import EncodeOptions, _encode

    real = encoding.aggregate_prompts

    def interrupted(loaded, tokenized, batch_size, on_rows=None, progress=None):
        batches = []

        def stop_at_third(batch, rows):
            batches.append(batch)
            if len(batches) == 3:
                raise KeyboardInterrupt
            on_rows(batch, rows)

        return real(loaded, tokenized, batch_size, on_rows=stop_at_third, progress=progress)

    monkeypatch.setattr(encoding, "aggregate_prompts", interrupted)
    texts = [f"My friend number {i} was glad about the weather." for i in range(10)]
    cache = ActivationCache(tmp_path, IDENTITY)
    with pytest.raises(KeyboardInterrupt):
        _encode(loaded_toy, texts, cache, EncodeOptions(batch_size=2, quiet=True))
    assert stored_prompts(cache.folder) == 4 and len(shards(cache.folder)) == 1
    monkeypatch.setattr(encoding, "aggregate_prompts", real)
    rows, _ = _encode(loaded_toy, texts, None, EncodeOptions(batch_size=2, quiet=True))
    found = ActivationCache(tmp_path, IDENTITY).lookup(texts)
    assert len(found) == 4
    for i, row in found.items():
        assert_same(row, rows[i])
