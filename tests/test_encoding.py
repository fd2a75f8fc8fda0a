"""Batched, padded, truncated encoding equals the one-prompt-at-a-time reference; the cache is exact."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import traceback

import numpy as np
import pytest
import torch

import MechInterpFeatureMeaning as ch2
from mechinterp.core import pipeline
from mechinterp.core.encoding import PromptAggregates, aggregate_prompts, summarise_positions, tokenize
from mechinterp.core.toyworld import demo_corpus


@pytest.fixture(scope="module")
def mixed_prompts():
    texts = demo_corpus(23, seed=5)
    texts[3] = "Short."
    texts[7] = " ".join(demo_corpus(40, seed=6))  # far beyond the toy model's 128-token context
    return texts


def test_batched_equals_one_at_a_time(loaded_toy, mixed_prompts):
    tokenized = tokenize(loaded_toy, mixed_prompts)
    assert tokenized.truncated == [7] and len(tokenized.ids[7]) == loaded_toy.model.cfg.n_ctx
    one = PromptAggregates(aggregate_prompts(loaded_toy, tokenized, batch_size=1), loaded_toy.sae.d_sae)
    for batch_size in (4, 16):
        many = PromptAggregates(aggregate_prompts(loaded_toy, tokenized, batch_size=batch_size), loaded_toy.sae.d_sae)
        for agg in ("max", "mean"):
            np.testing.assert_allclose(many.dense(agg), one.dense(agg), atol=1e-4, rtol=0)
        assert [r.n_tokens for r in many.rows] == [r.n_tokens for r in one.rows]
        assert [r.truncated for r in many.rows] == [i == 7 for i in range(len(mixed_prompts))]


def test_summary_matches_full_forward_pass_reference(loaded_toy, mixed_prompts):
    """Against a plain full-model run_with_cache (no stop_at_layer) and the SAE's own encode."""
    text = mixed_prompts[0]
    tokens = loaded_toy.model.to_tokens(text)  # TransformerLens' own tokenisation, BOS prepended
    _, cache = loaded_toy.model.run_with_cache(tokens)
    acts = loaded_toy.sae.sae.encode(cache["blocks.8.hook_resid_pre"])[0, 1:]  # BOS dropped
    row = aggregate_prompts(loaded_toy, tokenize(loaded_toy, [text]), batch_size=1)[0]
    dense_max = np.zeros(loaded_toy.sae.d_sae, dtype=np.float32)
    dense_max[row.idx] = row.max
    np.testing.assert_allclose(dense_max, acts.max(0).values.detach().numpy(), atol=1e-5)
    assert row.n_tokens == tokens.shape[1] - 1


def test_summarise_positions_splits_prompts_by_count():
    # Two prompts: 2 positions, then 1; features are [3 positions, 3 features].
    feats = torch.tensor([[0.0, 1.0, 0.0], [4.0, 3.0, 0.0], [0.0, 0.0, 2.0]])
    first, second = summarise_positions(feats, [2, 1])
    assert first.idx.tolist() == [0, 1] and first.max.tolist() == [4.0, 3.0] and first.mean.tolist() == [2.0, 2.0]
    assert second.idx.tolist() == [2] and second.max.tolist() == [2.0] and second.n_tokens == 1


def test_cache_skips_model_and_recomputes_only_edited_prompt(world, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("mechinterp.core.constants.demo_dir", lambda: world.root)
    prompts = tmp_path / "prompts"
    shutil.copytree(world.prompts_dir, prompts)
    # One group and the baseline: the cache is what this tests, and each run then draws 2 groups, not 5.
    argv = ["--demo", "--prompts", str(prompts), "--quiet", "--no-holdout", "--groups", "happy"]

    def record(out):
        return json.loads((out / "MechInterpFeatureMeaning_run.json").read_text())

    used = [prompts / "happy.txt", prompts / "baseline.txt"]
    n_prompts = sum(len(f.read_text(encoding="utf-8").splitlines()) - 1 for f in used)  # less headers
    assert n_prompts == 2 * 48
    assert ch2.main([*argv, "--out", str(tmp_path / "a")]) == 0
    first = record(tmp_path / "a")
    assert first["cache_misses"] == n_prompts and first["cache_hits"] == 0 and first["model_loaded"]

    # Nothing changed: everything comes from the cache and the model is never loaded.
    def refuse_to_load(*_args, **_kwargs):
        raise AssertionError("the model was loaded although every prompt was cached")

    monkeypatch.setattr(pipeline, "load", refuse_to_load)
    assert ch2.main([*argv, "--out", str(tmp_path / "b")]) == 0
    second = record(tmp_path / "b")
    assert second["cache_hits"] == n_prompts and not second["model_loaded"]
    assert (tmp_path / "a" / "feature_stats.csv").read_text() == (tmp_path / "b" / "feature_stats.csv").read_text()

    # Edit one line of one file: exactly one prompt is recomputed.
    monkeypatch.undo()
    monkeypatch.setenv("MECHINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("mechinterp.core.constants.demo_dir", lambda: world.root)
    happy = prompts / "happy.txt"
    lines = happy.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].replace("and was", "and felt")
    happy.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert ch2.main([*argv, "--out", str(tmp_path / "c")]) == 0
    third = record(tmp_path / "c")
    assert third["cache_misses"] == 1 and third["cache_hits"] == n_prompts - 1
    assert third["tokens_encoded"] == len(world_tokens(lines[1]))


def world_tokens(text: str) -> list[int]:
    from transformers import AutoTokenizer

    from mechinterp.core import constants

    tok = AutoTokenizer.from_pretrained(constants.demo_dir() / "model")
    return tok.encode(text, add_special_tokens=False)


def _exit_with_main(argv: list[str]) -> None:
    """A forked child: Chapter 2's ``main``, then exit at once with its status (no pytest teardown)."""
    code = 1
    try:
        code = ch2.main(argv)
    except BaseException:  # noqa: BLE001 - show it, then exit: the parent reads only the status
        traceback.print_exc()
    finally:
        os._exit(code)


def test_two_runs_at_once_share_the_cache_safely(world, tmp_path, monkeypatch, capsys):
    """Two Chapter 2 runs started together on one empty activation cache: both succeed, same numbers."""
    from tests.helpers import ROOT

    env = {"MECHINTERP_CACHE": str(tmp_path / "cache")}
    # The demo world is built once per test session; share it so both runs race on the activation cache.
    shutil.copytree(world.root, tmp_path / "cache" / "demo")
    # Two processes forked from this one start encoding at once (two fresh interpreters would spend
    # their first 10 s importing, one of them perhaps while the other already runs).
    monkeypatch.setenv("MECHINTERP_CACHE", env["MECHINTERP_CACHE"])
    monkeypatch.chdir(ROOT)
    fork = multiprocessing.get_context("fork")
    runs = [fork.Process(target=_exit_with_main, args=(["--demo", "--out", str(tmp_path / f"out{i}"), "--groups",
                                                          "happy", "--batch-size", "4", "--quiet"],))
            for i in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=300)
        if run.is_alive():
            run.kill()
        assert run.exitcode == 0, f"a racing run exited {run.exitcode} (its output is in the captured stderr)"
    stats = [(tmp_path / f"out{i}" / "feature_stats.csv").read_text() for i in range(2)]
    assert stats[0] == stats[1]
    # Every entry is complete and readable, and a third run is served entirely from the cache.
    entries = list((tmp_path / "cache" / "activations").rglob("shard-*.npz"))
    assert entries and not list((tmp_path / "cache").rglob("*.tmp"))
    for entry in entries:
        with np.load(entry, allow_pickle=False) as data:
            assert data["ints"].shape == data["floats"].shape
    # The third run in this process.
    capsys.readouterr()
    code = ch2.main(["--demo", "--out", str(tmp_path / "out3"), "--groups", "happy"])
    assert code == 0 and "the model was not loaded" in capsys.readouterr().err
    assert (tmp_path / "out3" / "feature_stats.csv").read_text() == stats[0]
