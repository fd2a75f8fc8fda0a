"""Batched, padded, truncated encoding equals the one-prompt-at-a-time reference; the cache is exact."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import MechInterpFeatureMeaning as ch2
from mechinterp import pipeline
from mechinterp.encoding import PromptAggregates, aggregate_prompts, summarise_positions, tokenize
from mechinterp.toyworld import demo_corpus


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
    monkeypatch.setattr("mechinterp.constants.demo_dir", lambda: world.root)
    prompts = tmp_path / "prompts"
    shutil.copytree(world.prompts_dir, prompts)
    argv = ["--demo", "--prompts", str(prompts), "--quiet", "--no-holdout"]

    def record(out):
        return json.loads((out / "MechInterpFeatureMeaning_run.json").read_text())

    assert ch2.main([*argv, "--out", str(tmp_path / "a")]) == 0
    first = record(tmp_path / "a")
    assert first["cache_misses"] == 192 and first["cache_hits"] == 0 and first["model_loaded"]

    # Nothing changed: everything comes from the cache and the model is never loaded.
    def refuse_to_load(*_args, **_kwargs):
        raise AssertionError("the model was loaded although every prompt was cached")

    monkeypatch.setattr(pipeline, "load", refuse_to_load)
    assert ch2.main([*argv, "--out", str(tmp_path / "b")]) == 0
    second = record(tmp_path / "b")
    assert second["cache_hits"] == 192 and not second["model_loaded"]
    assert (tmp_path / "a" / "feature_stats.csv").read_text() == (tmp_path / "b" / "feature_stats.csv").read_text()

    # Edit one line of one file: exactly one prompt is recomputed.
    monkeypatch.undo()
    monkeypatch.setenv("MECHINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("mechinterp.constants.demo_dir", lambda: world.root)
    happy = prompts / "happy.txt"
    lines = happy.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].replace("and was", "and felt")
    happy.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert ch2.main([*argv, "--out", str(tmp_path / "c")]) == 0
    third = record(tmp_path / "c")
    assert third["cache_misses"] == 1 and third["cache_hits"] == 191
    assert third["tokens_encoded"] == len(world_tokens(lines[1]))


def world_tokens(text: str) -> list[int]:
    from transformers import AutoTokenizer

    from mechinterp import constants

    tok = AutoTokenizer.from_pretrained(constants.demo_dir() / "model")
    return tok.encode(text, add_special_tokens=False)
