"""Chapter 1: the default command, checked against SAELens' own reference path."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import MechInterpInitialInvestigation as ch1
from tests.helpers import ROOT, run_script


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reference(world):
    """Top features of the default text from SAELens' HookedSAETransformer.run_with_cache_with_saes."""
    from sae_lens import SAE, HookedSAETransformer

    sae = SAE.from_pretrained("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    model = HookedSAETransformer.from_pretrained("gpt2-small", **sae.cfg.metadata.model_from_pretrained_kwargs)
    _, cache = model.run_with_cache_with_saes(ch1.DEFAULT_TEXT, saes=[sae])
    acts = cache["blocks.8.hook_resid_pre.hook_sae_acts_post"][0]  # [pos, d_sae], BOS at 0
    str_tokens = model.to_str_tokens(ch1.DEFAULT_TEXT)
    return acts.detach(), str_tokens


def test_default_command_matches_saelens_reference(world, reference, tmp_path, capsys):
    assert ch1.main(["--out", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "MI1.csv")
    acts, str_tokens = reference
    text_acts = acts[1:]  # BOS excluded, as the script promises
    ref_max, ref_peak = text_acts.max(dim=0)
    ref_top = torch.argsort(-ref_max, stable=True)[:20]

    assert [int(r["feature"]) for r in rows] == ref_top.tolist()
    np.testing.assert_allclose(
        [float(r["max_activation"]) for r in rows], ref_max[ref_top].numpy(), atol=1e-4, rtol=0
    )
    assert [int(r["peak_position"]) for r in rows] == (ref_peak[ref_top] + 1).tolist()
    assert [r["peak_token"] for r in rows] == [str_tokens[p] for p in (ref_peak[ref_top] + 1).tolist()]
    assert rows[0]["neuronpedia_url"] == f"https://www.neuronpedia.org/gpt2-small/8-res-jb/{rows[0]['feature']}"

    # The planted concept features are found at the right words, and BOS's feature is not listed
    # even though it is by far the largest activation at position 0.
    planted = world.planted
    by_feature = {int(r["feature"]): r for r in rows}
    assert by_feature[planted.concept["happy"]]["peak_token"] == " thrilled"
    assert by_feature[planted.concept["angry"]]["peak_token"] == " furious"
    assert acts[0, planted.bos] > 5 and planted.bos not in by_feature

    printed = capsys.readouterr().out
    assert f"{planted.concept['angry']}" in printed and "neuronpedia.org/gpt2-small/8-res-jb/" in printed


def test_outputs_are_real_files_with_provenance(world, tmp_path):
    assert ch1.main(["--out", str(tmp_path), "--top-k", "5", "--text", "The cheerful teacher."]) == 0
    from PIL import Image

    with Image.open(tmp_path / "MI1.png") as img:
        width, height = img.size
        pixels = np.asarray(img.convert("L"), dtype=float)
    # A 4-token x 5-feature heatmap at 150 dpi: figure is at least 6 x 3 inches before tight cropping.
    assert 700 < width < 1300 and 350 < height < 800
    assert pixels.std() > 20  # not a blank canvas
    tokens = read_csv(tmp_path / "MI1_token_activations.csv")
    assert len(tokens) == 5 * 4  # "The", " cheerful", " teacher", "."
    record = json.loads((tmp_path / "MechInterpInitialInvestigation_run.json").read_text())
    assert record["hook"] == "blocks.8.hook_resid_pre" and record["n_tokens"] == 4
    assert record["versions"]["sae-lens"] and str(tmp_path / "MI1.png") in record["files_written"]


def test_exact_default_command_in_fresh_copy(world, tmp_path):
    """`python MechInterpInitialInvestigation.py` with no options, from another folder, offline."""
    shutil.copy(ROOT / "MechInterpInitialInvestigation.py", tmp_path)
    shutil.copytree(ROOT / "mechinterp", tmp_path / "mechinterp", ignore=shutil.ignore_patterns("__pycache__"))
    result = run_script(tmp_path / "MechInterpInitialInvestigation.py", cwd=ROOT / "tests")
    assert result.returncode == 0, result.stderr
    assert "rank  feature" in result.stdout
    assert "Traceback" not in result.stderr
    # Outputs land beside the script (derived from its location), not in the working directory.
    assert (tmp_path / "Images" / "MI1.png").stat().st_size > 10_000
    assert len(read_csv(tmp_path / "Images" / "MI1.csv")) == 20


def test_no_network_and_no_cache_fails_fast_and_clearly(tmp_path):
    # An empty cache, and a Hub endpoint on a closed loopback port: what a machine without network sees.
    env = {"HF_HOME": str(tmp_path / "empty"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    env_offline = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    start = time.perf_counter()
    result = run_script(
        "MechInterpInitialInvestigation.py", "--out", str(tmp_path / "out"), env={**env_offline, **env}
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 1
    assert elapsed < 30
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: could not fetch the SAE gpt2-small-res-jb/blocks.8.hook_resid_pre")
    assert "HF_HOME" in message and "--sae-path" in message


def test_demo_is_titled_synthetic(world, tmp_path, capsys):
    assert ch1.main(["--demo", "--out", str(tmp_path), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC DEMO" in out
    rows = read_csv(tmp_path / "MI1.csv")
    assert {int(r["feature"]) for r in rows[:2]} == set(world.planted.concept.values())
    assert rows[0]["neuronpedia_url"] == ""  # the toy SAE is not on Neuronpedia, so no fake link


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--top-k", "0"], "must be at least 1"),
        (["--top-k", "-3"], "must be at least 1"),
        (["--text", "   "], "--text is empty"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        ch1.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_result_reads_in_a_notebook(world, loaded_toy):
    """The typed result shows its gist as a short repr; ``top(k)`` gives the strongest rows."""
    from mechinterp.investigate.text_features import top_features

    result = top_features(loaded_toy, ch1.DEFAULT_TEXT, 5)
    planted_word = {world.planted.concept["happy"]: " thrilled", world.planted.concept["angry"]: " furious"}
    # Both planted features peak at 3.0; which comes first is decided in the third decimal.
    assert {r.feature for r in result.top(2)} == set(planted_word) and result.top(2) == result.rows[:2]
    assert len(result.top(50)) == 5
    first, second, third = result.rows[:3]
    assert first.max_activation >= second.max_activation
    assert repr(result) == (
        f"TextFeatures({len(result.tokens)} tokens, {result.n_fired} of {loaded_toy.sae.d_sae} features fire; top: "
        f"#{first.feature} {first.max_activation:.2f} on {planted_word[first.feature]!r}, "
        f"#{second.feature} {second.max_activation:.2f} on {planted_word[second.feature]!r}, "
        f"#{third.feature} {third.max_activation:.2f} on {third.peak_token!r} (+2 more))"
    )
    assert len(repr(result)) < 600 and result.n_fired > 5 and first.max_activation > 2.5
    density = f", density {100 * first.density:.3g}%" if first.density is not None else ""
    assert repr(first) == (f"TopFeature(rank 1: #{first.feature} {first.max_activation:.2f} on "
                           f"{planted_word[first.feature]!r} at position {first.peak_position}{density})")
    assert result.tokens[first.peak_position - result.n_skip] == planted_word[first.feature]
