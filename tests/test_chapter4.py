"""Chapter 4: ablation checked against SAELens' reference path, controls, and steering on the toy world."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch

import MechInterpSteering as ch4
from mechinterp.encoding import hook_activations, tokenize
from mechinterp.errors import UserError
from mechinterp.intervene import (
    ablation_hook,
    intervention_effects,
    logits_from_hook,
    make_batches,
    matched_controls,
    steering_hook,
)
from mechinterp.toyworld import PLANTED_OUTPUTS

HOOK = "blocks.8.hook_resid_pre"


@pytest.fixture(scope="module")
def reference(loaded_toy):
    """SAELens' HookedSAETransformer with the toy weights, and a private copy of the SAE."""
    from sae_lens import HookedSAETransformer

    model = HookedSAETransformer(loaded_toy.model.cfg, tokenizer=loaded_toy.model.tokenizer)
    model.load_state_dict(loaded_toy.model.state_dict(), strict=False)
    model.eval()
    return model, copy.deepcopy(loaded_toy.sae.sae)


def _reference_logits(reference, tokens, feature=None, use_error_term=True):
    """Logits with the SAE spliced in (error term kept or not), optionally zeroing a feature after BOS."""
    model, sae = reference

    def zero(acts, hook):
        acts = acts.clone()
        acts[:, 1:, feature] = 0.0
        return acts

    hooks = [(f"{HOOK}.hook_sae_acts_post", zero)] if feature is not None else []
    with torch.inference_mode(), model.saes(saes=[sae], use_error_term=use_error_term):
        with model.hooks(fwd_hooks=hooks):
            return model(tokens)


def _tokens(loaded, texts):
    tok = tokenize(loaded, texts)
    return make_batches(loaded, tok, len(texts))[0]


def test_ablation_matches_saelens_run_with_saes(loaded_toy, reference, world):
    happy = world.planted.concept["happy"]
    batch = _tokens(loaded_toy, ["The teacher opened the window and was delighted.", "My sister was glad."])
    resid = hook_activations(loaded_toy, batch.tokens)
    for feature in (happy, 7):
        ours = logits_from_hook(loaded_toy, resid, ablation_hook(loaded_toy, feature, 1))
        ref = _reference_logits(reference, batch.tokens, feature)
        torch.testing.assert_close(ours[batch.valid], ref[batch.valid], atol=2e-4, rtol=1e-4)
        # The shortcut (rerun only the blocks from the hook on) equals a full TransformerLens run with the hook.
        with torch.inference_mode():
            full = loaded_toy.model.run_with_hooks(batch.tokens, fwd_hooks=[(HOOK, ablation_hook(loaded_toy, feature, 1))])
        torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)
    # Ablating the planted feature really changes the prediction where it fired.
    clean = logits_from_hook(loaded_toy, resid)
    ablated = logits_from_hook(loaded_toy, resid, ablation_hook(loaded_toy, happy, 1))
    assert (clean - ablated).abs().max() > 1.0


def test_ablating_a_silent_feature_changes_nothing(loaded_toy, reference, world):
    happy = world.planted.concept["happy"]
    batch = _tokens(loaded_toy, ["The driver closed the office at noon and was quiet.", "A student found a red car."])
    resid = hook_activations(loaded_toy, batch.tokens)
    assert (loaded_toy.sae.sae.encode(resid)[:, 1:, happy] == 0).all()  # it does not fire here
    clean = logits_from_hook(loaded_toy, resid)
    ours = logits_from_hook(loaded_toy, resid, ablation_hook(loaded_toy, happy, 1))
    assert torch.equal(ours, clean)  # bit for bit: the error term puts back exactly what the SAE misses
    ref = _reference_logits(reference, batch.tokens, happy)
    torch.testing.assert_close(ref, clean, atol=2e-4, rtol=1e-4)
    # Without the error term, merely splicing in the SAE changes the output: the reason to keep it.
    no_error = _reference_logits(reference, batch.tokens, happy, use_error_term=False)
    assert (no_error - clean)[batch.valid].abs().max() > 0.1
    effects, _ = intervention_effects(loaded_toy, [batch], {"happy": ablation_hook(loaded_toy, happy, 1)}, [5, 6])
    assert effects["happy"].kl == 0.0 and effects["happy"].delta_logodds_targets == 0.0


def test_matched_controls():
    rates = np.zeros(500)
    rates[:400] = np.geomspace(1e-4, 0.5, 400)  # ~64 features within a factor 2 of each
    feature = 200
    a = matched_controls(rates, feature, 20, seed=3)
    assert a == matched_controls(rates, feature, 20, seed=3)  # deterministic
    assert feature not in a.features and len(set(a.features)) == 20
    assert all(rates[feature] / 2 <= rates[c] <= rates[feature] * 2 for c in a.features)
    assert a.pool_size >= 40
    # Too few within a factor 2: the pool widens to the 2n nearest rates, still excluding the feature.
    sparse = np.where(np.arange(200) < 150, np.geomspace(1e-4, 0.5, 200), 0.0)
    b = matched_controls(sparse, 100, 20, seed=0)
    assert b.pool_size == 40 and 100 not in b.features
    with pytest.raises(UserError, match="never fires"):
        matched_controls(rates, 450, 20, seed=0)
    with pytest.raises(UserError, match="fewer than the 20 controls"):
        matched_controls(np.where(np.arange(200) < 10, 0.1, 0.0), 0, 20, seed=0)


def test_steering_skips_bos_and_agrees_with_and_without_kv_cache(loaded_toy, world):
    happy = world.planted.concept["happy"]
    direction = 4.0 * loaded_toy.sae.sae.W_dec[happy].detach()
    resid = torch.zeros(1, 3, direction.numel())
    steered = steering_hook(direction, 1)(resid)
    assert torch.equal(steered[0, 0], resid[0, 0]) and torch.allclose(steered[0, 1:], direction.expand(2, -1))
    model = loaded_toy.model
    ids = torch.tensor([tokenize(loaded_toy, ["The manager was busy."]).ids[0]])
    outs = []
    with torch.inference_mode(), model.hooks(fwd_hooks=[(HOOK, steering_hook(direction, 1))]):
        for cache in (True, False):
            outs.append(model.generate(ids, max_new_tokens=6, do_sample=False, verbose=False, use_past_kv_cache=cache))
    assert torch.equal(outs[0], outs[1])
    words = {model.tokenizer.decode([t]) for t in outs[0][0, ids.shape[1]:].tolist()}
    assert words <= {" " + w for w in PLANTED_OUTPUTS["happy"]}


def test_planted_feature_beats_controls_default_model_flags(world, tmp_path, capsys):
    """Default model flags = the offline test cache (toy world under the real names)."""
    happy = world.planted.concept["happy"]
    out = tmp_path / "out"
    argv = ["--feature", str(happy), "--prompts", str(world.prompts_dir), "--n-controls", "24",
            "--sweep", "-2", "0", "1", "2", "4", "--n-generate", "2", "--max-new-tokens", "6", "--out", str(out)]
    assert ch4.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / f"MI6_{happy}.json").read_text())
    assert summary["ablation_group"] == "happy"  # where it fires most often
    assert summary["targets"] == sorted(summary["targets"], key=[" " + w for w in PLANTED_OUTPUTS["happy"]].index)
    assert set(summary["targets"]) == {" " + w for w in PLANTED_OUTPUTS["happy"]}
    assert summary["typical_max_activation"] == pytest.approx(3.0, abs=0.01)

    ablation = summary["ablation"]
    controls = ablation["control_effects"]
    assert len(controls) == 24 and happy not in ablation["controls"]["features"]
    feature = ablation["feature"]
    # Ablating the feature wired to hooray/sunshine/laughter moves those tokens more than every control.
    assert feature["delta_logodds_targets"] < 0
    assert feature["delta_logp_targets"] < 0
    assert abs(feature["delta_logp_targets"]) > max(abs(c["delta_logp_targets"]) for c in controls)
    assert abs(feature["delta_logodds_targets"]) > max(abs(c["delta_logodds_targets"]) for c in controls)
    assert feature["kl"] > max(c["kl"] for c in controls)
    assert ablation["controls_at_least_as_large"]["delta_logodds_targets"] == 0
    assert ablation["empirical_p"]["kl"] == pytest.approx(1 / 25)
    # The controls are matched in firing rate on the same prompts.
    rows = list(csv.DictReader(open(out / f"MI6_{happy}_ablation.csv", encoding="utf-8")))
    rate = float(rows[0]["firing_rate"])
    low, high = ablation["controls"]["pool_rate_range"]
    assert all(low <= float(r["firing_rate"]) <= high for r in rows[1:]) and low <= rate * 2 and high >= rate / 2

    # Steering: the targets' log-probability rises with the coefficient; the generations show the outputs.
    steering = summary["steering"]
    assert steering["coeffs"] == [-2.0, 0.0, 1.0, 2.0, 4.0]
    logodds = steering["mean_logodds_targets"]
    assert all(a < b for a, b in zip(logodds, logodds[1:]))
    logp = steering["mean_logp_targets"]
    assert logp[0] < logp[1] - 5 and logp[3] > -0.01  # 2x its natural strength: the targets take the mass
    assert steering["mean_kl"][1] == 0.0
    gens = list(csv.DictReader(open(out / f"MI6_{happy}_generations.csv", encoding="utf-8")))
    assert len(gens) == 4 and {g["mode"].split()[0] for g in gens} == {"greedy", "sampled"}
    planted = {w for w in PLANTED_OUTPUTS["happy"]}
    assert all(set(g["steered"].split()) <= planted for g in gens)
    assert not any(set(g["clean"].split()) & planted for g in gens)
    assert "│" in printed and "\x1b" not in printed  # side by side, and control characters escaped
    from PIL import Image

    with Image.open(out / f"MI6_{happy}.png") as img:
        assert img.size[0] > 1500 and np.asarray(img.convert("L"), dtype=float).std() > 20


def test_usage_errors(world, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        ch4.main(["--n-controls", "5"])
    assert exc.value.code == 2 and "at least 20" in capsys.readouterr().err
    assert ch4.main(["--demo", "--feature", "512", "--out", str(tmp_path)]) == 2
    assert "ids run from 0 to 511" in capsys.readouterr().err
