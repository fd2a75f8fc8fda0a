"""The package without the command line: typed options in, typed results out (what a notebook uses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mechinterp.core.encoding import aggregate_prompts, tokenize
from mechinterp.core.io import OutputFolder
from mechinterp.core.pipeline import EncodeOptions, summarise_prompts
from mechinterp.core.prompts import load_prompt_sets
from mechinterp.core.source import SourceOptions, demo_threads, load, resolve_source
from mechinterp.core.toyworld import D_SAE, DEMO_HOOK, DEMO_MODEL_NAME
from mechinterp.meaning import stats
from mechinterp.meaning.contrast import MeaningOptions, contrast_groups
from tests.helpers import ROOT


def test_load_with_typed_options(world):
    source = resolve_source(SourceOptions(demo=True, device="cpu"))
    assert source.is_demo and source.sae_path == world.sae_dir and source.model_label == DEMO_MODEL_NAME
    loaded = load(source)
    assert loaded.sae.hook_name == DEMO_HOOK and loaded.sae.d_sae == D_SAE and loaded.device == "cpu"
    assert loaded.title.startswith("SYNTHETIC DEMO")
    # A local SAE folder given as sae_path resolves to the same SAE, labelled by its folder.
    by_path = resolve_source(SourceOptions(model=str(world.model_dir), sae_path=world.sae_dir))
    assert not by_path.is_demo and by_path.sae_path == world.sae_dir
    assert by_path.cache_identity()["sae"].startswith("path:")


def test_missing_sae_path_is_a_user_error(tmp_path):
    from mechinterp.core.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        resolve_source(SourceOptions(sae_path=tmp_path / "nope"))


def test_demo_threads_restores_the_thread_count():
    before = torch.get_num_threads()
    with demo_threads(True):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), demo_threads(True):
        raise RuntimeError("restored even on errors")
    assert torch.get_num_threads() == before


def test_summarise_prompts_with_a_temporary_cache(world, loaded_toy, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHINTERP_CACHE", str(tmp_path))
    source = resolve_source(SourceOptions(demo=True))
    texts = ["I was glad to see the station.", "The driver closed the window.", "My sister was furious."]
    first = summarise_prompts(source, texts, ["a"] * 3, EncodeOptions(batch_size=2, quiet=True))
    assert first.loaded is not None and first.cache_misses == 3 and first.cache_hits == 0
    assert first.tokens_encoded == sum(len(ids) - 1 for ids in tokenize(loaded_toy, texts).ids)  # BOS excluded
    # The same numbers as encoding directly.
    direct = aggregate_prompts(loaded_toy, tokenize(loaded_toy, texts), batch_size=3)
    for got, want in zip(first.aggregates.rows, direct):
        np.testing.assert_array_equal(got.idx, want.idx)
        np.testing.assert_allclose(got.max, want.max, atol=1e-5)
    # The second time everything comes from the cache in tmp_path, and nothing is loaded.
    again = summarise_prompts(source, texts, ["a"] * 3, EncodeOptions(quiet=True))
    assert again.loaded is None and again.cache_hits == 3 and again.cache_misses == 0
    assert any(tmp_path.rglob("shard-*.npz"))
    np.testing.assert_allclose(again.aggregates.dense("max"), first.aggregates.dense("max"))
    # use_cache=False reads and writes nothing.
    fresh = summarise_prompts(source, texts, ["a"] * 3, EncodeOptions(use_cache=False, quiet=True))
    assert fresh.cache_hits == 0 and fresh.loaded is not None


def test_contrast_groups_returns_typed_findings(world, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHINTERP_CACHE", str(tmp_path))
    sets = load_prompt_sets(world.prompts_dir, groups=["happy", "control"], baseline="baseline")
    texts, labels = sets.flat()
    summaries = summarise_prompts(resolve_source(SourceOptions(demo=True)), texts, labels, EncodeOptions(quiet=True))
    result = contrast_groups(summaries.aggregates, labels, list(sets.groups), sets.baseline, MeaningOptions(holdout=0.5))
    happy = result.findings["happy"]
    best = happy.top(1)[0]
    assert best.rank == 1 and best.feature == world.planted.concept["happy"]
    assert happy.contrast.q_value[best.position] < 1e-6
    assert best.replication is not None and best.replication.replicated and best.replication.auroc > 0.95
    assert set(result.always_on.tolist()) >= set(world.planted.always_on)
    # The null group: nothing significant, so nothing re-tested.
    assert result.findings["control"].n_significant(0.05) == 0 and not result.findings["control"].replication
    # Without a held-out split, the finding's numbers equal stats.contrast on the raw per-prompt maxima.
    full = contrast_groups(summaries.aggregates, labels, list(sets.groups), sets.baseline, MeaningOptions(no_holdout=True))
    agg = summaries.aggregates
    idx = full.index
    features = full.findings["happy"].contrast.tested
    direct = stats.contrast(agg.dense("max", idx["happy"], features), agg.dense("max", idx["baseline"], features), features)
    np.testing.assert_allclose(full.findings["happy"].contrast.p_value, direct.p_value)


def test_output_folder_commits_only_on_success(tmp_path):
    (tmp_path / "a.csv").write_text("old\n")
    with pytest.raises(KeyboardInterrupt), OutputFolder(tmp_path) as out:
        out.write_csv("a.csv", ["x"], [[1]])
        out.write_text("sub/b.txt", "new")
        assert (tmp_path / "a.csv").read_text() == "old\n"  # nothing visible before the commit
        raise KeyboardInterrupt
    assert (tmp_path / "a.csv").read_text() == "old\n" and not (tmp_path / "sub" / "b.txt").exists()
    with OutputFolder(tmp_path) as out:
        path = out.write_csv("a.csv", ["x"], [[1]])
        out.write_json("sub/b.json", {"k": 1})
    assert path == tmp_path / "a.csv" and path.read_text() == "x\n1\n"
    assert (tmp_path / "sub" / "b.json").read_text() == '{\n  "k": 1\n}\n'
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary files left behind


def test_model_defaults_to_the_one_the_sae_was_trained_on(world):
    # The offline cache holds the toy world under the real names; the SAE's metadata says gpt2-small.
    loaded = load(resolve_source(SourceOptions()))
    assert loaded.model_label == "gpt2-small" and loaded.sae.model_name == "gpt2-small"
    # An alias of the same model is accepted...
    assert load(resolve_source(SourceOptions(model="gpt2"))).model_label == "gpt2"


def test_a_model_the_sae_was_not_trained_on_is_refused_before_loading_it(world):
    from mechinterp.core.errors import UserError

    with pytest.raises(UserError, match="was trained on gpt2-small, not on gpt2-medium; drop --model"):
        load(resolve_source(SourceOptions(model="gpt2-medium")))


def test_the_package_imports_from_any_folder(tmp_path):
    """`pip install -e .` (requirements-dev.txt does it) makes `import mechinterp` work outside the clone."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", "import mechinterp.core.source as s; print(s.__file__)"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == ROOT / "mechinterp" / "core" / "source.py"
