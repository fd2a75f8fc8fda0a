"""Chapter 4: ablation checked against SAELens' reference path, controls, and steering on the toy world.

``test_feature`` (the package's per-feature Chapter 4 test) is checked against brute-force references:
one prompt at a time, unpadded, through a full TransformerLens run, with KL and log-odds computed from
their definitions in float64.
"""

from __future__ import annotations

import copy
import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import MechInterpSteering as ch4
from mechinterp.causal import intervene
from mechinterp.causal.intervene import (
    FeatureTestOptions,
    GroupBatches,
    ablation_hook,
    intervention_effects,
    logits_from_hook,
    make_batches,
    matched_controls,
    steering_hook,
)
from mechinterp.causal import report
from mechinterp.causal.report import feature_test_text, steering_lines
from mechinterp.core.encoding import hook_activations, tokenize
from mechinterp.core.errors import UserError
from mechinterp.core.prompts import load_prompt_sets, read_prompt_file
from mechinterp.core.tables import WIDTH
from mechinterp.core.tokens import _byte_decoder
from mechinterp.core.source import SourceOptions, demo_prompts_dir, demo_threads, load, resolve_source
from mechinterp.core.toyworld import CONCEPT_WORDS, PLANTED_OUTPUTS

HOOK = "blocks.8.hook_resid_pre"
# The keys of MI6_<id>.json, the published format that FeatureTest.to_dict() must keep.
MI6_KEYS = ["feature", "title", "targets", "target_ids", "typical_max_activation", "typical_max_how",
            "firing_rate_by_group", "ablation_group", "steer_group", "filtered", "ablation", "steering"]
ABLATION_KEYS = ["n_positions", "clean_mean_logp_targets", "clean_mean_logodds_targets", "feature",
                 "control_effects", "controls", "controls_at_least_as_large", "empirical_p", "at_firing_positions",
                 "at_next_positions"]
STEERING_KEYS = ["coeffs", "mean_logp_targets", "mean_logodds_targets", "mean_kl", "generation_coeff"]


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
    effects, _, _ = intervention_effects(loaded_toy, [batch], {"happy": ablation_hook(loaded_toy, happy, 1)}, [5, 6])
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
    from transformers import AutoTokenizer

    happy = world.planted.concept["happy"]
    out = tmp_path / "out"
    argv = ["--feature", str(happy), "--prompts", str(world.prompts_dir), "--n-controls", "24",
            "--sweep", "-2", "0", "1", "2", "4", "--n-generate", "2", "--max-new-tokens", "6", "--out", str(out), "--verbose"]
    assert ch4.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / f"MI6_{happy}.json").read_text())
    assert list(summary) == MI6_KEYS and list(summary["ablation"]) == ABLATION_KEYS
    assert list(summary["steering"]) == STEERING_KEYS
    assert summary["ablation_group"] == "happy"  # where it fires most often
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
    # Where it fires (one concept word per happy prompt) the effect is undiluted: far larger per position than
    # the mean over every text position, by about the ratio of positions.
    at = ablation["at_firing_positions"]
    happy_prompts = read_prompt_file(world.prompts_dir / "happy.txt")
    # The toy's happy prompts carry one concept word each, and the feature carries over to 1-3 tokens after it.
    tokenizer = AutoTokenizer.from_pretrained(world.model_dir)
    after = [len(ids) - 1 - next(i for i, t in enumerate(ids) if tokenizer.decode([t]).strip() in CONCEPT_WORDS["happy"])
             for ids in (tokenizer.encode(x) for x in happy_prompts)]
    assert sum(1 + min(a, 2) for a in after) <= at["n_positions"] <= sum(1 + min(a, 3) for a in after)
    ratio = ablation["n_positions"] / at["n_positions"]
    assert at["feature"]["delta_logodds_targets"] == pytest.approx(feature["delta_logodds_targets"] * ratio, rel=0.05)
    assert abs(at["feature"]["delta_logodds_targets"]) > 20 * abs(at["controls_median"]["delta_logodds_targets"])
    # One token later the feature still fires, weaker (it carries over to the next 1-3 tokens), and one
    # token after the carry-over not at all: the effect at the next positions is smaller, but not gone.
    at_next = abs(ablation["at_next_positions"]["feature"]["delta_logodds_targets"])
    assert 0.1 * abs(at["feature"]["delta_logodds_targets"]) < at_next < abs(at["feature"]["delta_logodds_targets"])
    assert "Where it matters" in printed and "where it fires" in printed
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
    # Unsteered, the outputs come only after a happy word the sampler happened to draw (the feature carries
    # over to the next tokens), never from the prompt alone.
    for g in gens:
        words = g["clean"].split()
        first = next((i for i, w in enumerate(words) if w in planted), None)
        assert first is None or set(words[:first]) & set(CONCEPT_WORDS["happy"]), g["clean"]
    assert not [g for g in gens if g["mode"].startswith("greedy") and set(g["clean"].split()) & planted]
    assert "│" in printed and "\x1b" not in printed  # side by side, and control characters escaped
    from PIL import Image

    with Image.open(out / f"MI6_{happy}.png") as img:
        assert img.size[0] > 1500 and np.asarray(img.convert("L"), dtype=float).std() > 20


def test_flags_keep_their_names_defaults_and_sections(capsys):
    """Each flag is defined once, in its dataclass; the command line stays what it was (the run record stores it)."""
    args = vars(ch4.parse_args([]))
    assert {k: v for k, v in args.items() if k not in ("out", "model", "sae_release", "sae_id", "sae_path", "device",
                                                       "dtype", "demo", "tag", "quiet", "verbose", "debug")} == {
        "feature": [], "from_results": None, "top_n": 1, "include_nonsignificant": False, "family": [], "prompts": None,
        "baseline": "baseline", "group": None, "max_prompts": 64, "batch_size": None, "target": [], "n_targets": 3,
        "n_controls": 20, "coeff": 2.0, "sweep": [-2.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0], "max_act": None,
        "steer_group": None, "steer_prompt": [], "n_generate": 3, "max_new_tokens": 12, "temperature": 1.0, "seed": 0}
    given = vars(ch4.parse_args(["--target", "a", "--target", "b", "--sweep", "1", "3", "--steer-prompt", "x"]))
    assert given["target"] == ["a", "b"] and given["sweep"] == [1.0, 3.0] and given["steer_prompt"] == ["x"]
    options = ch4.options_from(ch4.parse_args(["--target", "a", "--sweep", "1", "3", "--group", "happy"]),
                               FeatureTestOptions)
    assert options == FeatureTestOptions(target=("a",), sweep=(1.0, 3.0), group="happy")
    with pytest.raises(SystemExit):
        ch4.parse_args(["--help"])
    text = capsys.readouterr().out
    # Every flag sits in its section: the field names it (cli.add_options), and sections are shared by title.
    order = ["options:", "--seed", "which features:", "--feature", "--top-n", "--family", "prompts:", "--prompts",
             "--baseline",
             "--group", "--max-prompts", "--batch-size", "ablation:", "--target", "--n-targets", "--n-controls",
             "steering:", "--coeff", "--sweep", "--max-act", "--steer-group", "--steer-prompt", "--n-generate",
             "--max-new-tokens", "--temperature", "model and SAE:", "output:"]
    body = text[text.index("options:"):]
    positions = [body.index(f"\n  {name} " if name.startswith("--") else f"\n{name}\n") if i else 0
                 for i, name in enumerate(order)]
    assert positions == sorted(positions)
    assert text.count("prompts:\n") == 1 and "(default: 64)" in text


def test_usage_errors(world, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        ch4.main(["--n-controls", "5"])
    assert exc.value.code == 2 and "at least 20" in capsys.readouterr().err
    assert ch4.main(["--demo", "--feature", "512", "--out", str(tmp_path)]) == 2
    assert "ids run from 0 to 511" in capsys.readouterr().err


# --- test_feature: the per-feature work as a typed result --------------------------------------------------

N_PROMPTS = 12  # per group: enough for 20 firing-rate-matched controls, small enough to stay fast


@pytest.fixture(scope="module")
def happy_test(loaded_toy, world):
    """test_feature on the planted happy feature, ablated where it fires most, steered on the baseline."""
    groups = {g: read_prompt_file(world.prompts_dir / f"{g}.txt")[:N_PROMPTS] for g in ("baseline", "happy", "angry")}
    happy = world.planted.concept["happy"]
    options = FeatureTestOptions(sweep=(-1.0, 1.0), coeff=2.0, n_generate=1, max_new_tokens=4, seed=1, batch_size=8)
    torch.manual_seed(0)
    return groups, intervene.test_feature(loaded_toy, happy, groups, options)


def _one_prompt(loaded, text):
    """One prompt, unpadded: ``[1, T]`` tokens with BOS first."""
    return torch.tensor([tokenize(loaded, [text]).ids[0]])


def _reference_scores(logits, targets):
    """Per text position (BOS excluded): log P(targets), their log-odds, from probabilities in float64."""
    probs = logits[0, 1:].double().softmax(-1)
    p = probs[:, targets].sum(-1)
    return torch.log(p), torch.log(p) - torch.log1p(-p)


def test_feature_test_targets_rates_and_typical_max(loaded_toy, world, happy_test):
    groups, result = happy_test
    happy = world.planted.concept["happy"]
    # The targets are the tokens the planted feature was wired to write, strongest first.
    assert set(result.target_tokens) == {" " + w for w in PLANTED_OUTPUTS["happy"]}
    assert [loaded_toy.model.tokenizer.decode([t]) for t in result.target_ids] == result.target_tokens
    assert result.ablation_group == "happy" and result.ablation_group_how == "the group where it fires most often"
    assert result.n_ablation_prompts == N_PROMPTS and result.steer_group == "baseline"
    # Brute force, one prompt at a time: firing rate over text tokens, median of per-prompt maxima.
    fired, total, maxima = {}, {}, []
    with torch.inference_mode():
        for g, prompts in groups.items():
            for text in prompts:
                acts = loaded_toy.sae.sae.encode(hook_activations(loaded_toy, _one_prompt(loaded_toy, text)))
                column = acts[0, 1:, happy]
                fired[g] = fired.get(g, 0) + int((column > 0).sum())
                total[g] = total.get(g, 0) + column.numel()
                if column.max() > 0:
                    maxima.append(float(column.max()))
    assert result.firing_rate_by_group == pytest.approx({g: fired[g] / total[g] for g in groups}, abs=1e-12)
    assert result.firing_rate_by_group["happy"] > 0.05 and result.firing_rate_by_group["baseline"] == 0.0
    assert result.typical_max == pytest.approx(float(np.median(maxima)), rel=1e-5)
    assert result.typical_max == pytest.approx(3.0, abs=0.05)  # the planted strength
    assert f"over the {len(maxima)} of {3 * N_PROMPTS} prompts" in result.typical_max_how
    assert result.decoder_norm == pytest.approx(float(loaded_toy.sae.sae.W_dec[happy].detach().norm()))


def test_feature_test_ablation_matches_brute_force_and_beats_controls(loaded_toy, world, happy_test):
    groups, result = happy_test
    happy = world.planted.concept["happy"]
    a = result.ablation
    assert a is not None and a.feature == happy
    for which in intervene.ABLATION_MEASURES:
        value = getattr(a.effect, which)
        ctrl = np.array([getattr(e, which) for e in a.control_effects])
        assert np.isfinite(value) and np.isfinite(ctrl).all()
        assert abs(value) > np.abs(ctrl).max()  # outside the whole control distribution
        assert a.n_controls_at_least(which) == 0 and a.empirical_p(which) == pytest.approx(1 / 21)
    assert a.effect.delta_logodds_targets < -1 and a.effect.kl > 0.1
    assert len(a.controls.features) == 20 and happy not in a.controls.features
    assert all(a.controls.rate_low <= r <= a.controls.rate_high for r in a.control_rates)
    # Reference: each prompt alone, unpadded, through a full TransformerLens run with the ablation hook.
    targets = result.target_ids
    sums, n = np.zeros(5), 0
    with torch.inference_mode():
        for text in groups["happy"]:
            tokens = _one_prompt(loaded_toy, text)
            clean = loaded_toy.model(tokens)
            ablated = loaded_toy.model.run_with_hooks(tokens, fwd_hooks=[(HOOK, ablation_hook(loaded_toy, happy, 1))])
            clean_lp, clean_lo = _reference_scores(clean, targets)
            lp, lo = _reference_scores(ablated, targets)
            kl = torch.nn.functional.kl_div(ablated[0, 1:].double().log_softmax(-1),
                                            clean[0, 1:].double().log_softmax(-1), log_target=True,
                                            reduction="none").sum(-1)
            sums += [float((lp - clean_lp).sum()), float((lo - clean_lo).sum()), float(kl.sum()),
                     float(clean_lp.sum()), float(clean_lo.sum())]
            n += tokens.shape[1] - 1
    assert a.effect.n_positions == n
    expected = sums / n
    got = [a.effect.delta_logp_targets, a.effect.delta_logodds_targets, a.effect.kl,
           a.clean.logp_targets, a.clean.logodds_targets]
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)


def test_feature_test_steering_and_generations(loaded_toy, world, happy_test):
    groups, result = happy_test
    happy = world.planted.concept["happy"]
    s = result.steering
    assert s.coeffs == [-1.0, 0.0, 1.0, 2.0]  # the sweep plus the clean run and the generation coefficient
    assert s.kl[1] == 0.0 and all(k > 0 for i, k in enumerate(s.kl) if i != 1)
    assert all(a < b for a, b in zip(s.logodds_targets, s.logodds_targets[1:]))
    assert s.delta_logp(2.0) == pytest.approx(s.logp_targets[3] - s.logp_targets[1]) and s.delta_logp(2.0) > 5
    # Reference: every baseline prompt alone, c * typical max * W_dec[f] added after BOS, log P from its definition.
    for i, coeff in ((0, -1.0), (2, 1.0)):
        direction = coeff * result.typical_max * loaded_toy.sae.sae.W_dec[happy].detach()

        def add(resid, hook, direction=direction):
            resid = resid.clone()
            resid[:, 1:] += direction
            return resid

        total, n = 0.0, 0
        with torch.inference_mode():
            for text in groups["baseline"]:
                tokens = _one_prompt(loaded_toy, text)
                lp, _ = _reference_scores(loaded_toy.model.run_with_hooks(tokens, fwd_hooks=[(HOOK, add)]),
                                          result.target_ids)
                total, n = total + float(lp.sum()), n + tokens.shape[1] - 1
        # At +1 the targets hold nearly all the mass (log P ~ -1e-10): float32 cannot resolve a relative error.
        assert s.logp_targets[i] == pytest.approx(total / n, rel=1e-4, abs=1e-6)
    assert s.logp_targets[0] < s.logp_targets[1] - 1 and s.logp_targets[2] > -1e-4
    # Generations: the first baseline prompt, greedy and sampled; steering writes only the planted outputs.
    gens = result.generations
    assert [g.prompt for g in gens] == [groups["baseline"][0]] * 2
    assert [g.mode for g in gens] == ["greedy", "sampled (seed 1, T=1)"]
    planted = set(PLANTED_OUTPUTS["happy"])
    assert all(set(g.steered.split()) <= planted and not set(g.clean.split()) & planted for g in gens)
    assert result.generation_coeff == 2.0 and result.max_new_tokens == 4
    assert set(result.seconds) == {"ablation", "steering"}


def test_feature_test_to_dict_round_trips_to_json(happy_test):
    _, result = happy_test
    data = result.to_dict()
    assert list(data) == MI6_KEYS and list(data["ablation"]) == ABLATION_KEYS
    assert list(data["steering"]) == STEERING_KEYS
    assert json.loads(json.dumps(data)) == data  # plain JSON types only: nothing lost or stringified
    assert data["ablation"]["feature"]["kl"] == result.ablation.effect.kl
    assert data["steering"]["mean_logp_targets"] == result.steering.logp_targets
    assert data["filtered"].endswith("; interventions leave the BOS position untouched")


def test_feature_test_skips_ablation_where_it_never_fires(loaded_toy, world, happy_test):
    groups, _ = happy_test
    happy = world.planted.concept["happy"]
    small = {g: p[:4] for g, p in groups.items()}
    options = FeatureTestOptions(sweep=(1.0,), coeff=1.0, max_act=2.5, n_generate=1, max_new_tokens=2, batch_size=8,
                                 group="baseline")
    result = intervene.test_feature(loaded_toy, happy, small, options)
    assert result.ablation is None and result.to_dict()["ablation"] is None
    assert result.ablation_group_how == "from --group"
    assert result.typical_max == 2.5 and result.typical_max_how == "given with --max-act"
    assert result.steering.coeffs == [0.0, 1.0] and result.steering.kl[1] > 0
    with pytest.raises(UserError, match="is not one of the prompt groups"):
        intervene.test_feature(loaded_toy, happy, small, replace(options, group="sad"))


def test_feature_test_options_are_validated():
    with pytest.raises(UserError, match="at least 20"):
        FeatureTestOptions(n_controls=5)
    with pytest.raises(UserError, match="temperature"):
        FeatureTestOptions(temperature=0.0)
    with pytest.raises(UserError, match="max_act"):
        FeatureTestOptions(max_act=-1.0)
    assert FeatureTestOptions(sweep=(3.0, -1.0, 3.0), coeff=0.5).coeffs == [-1.0, 0.0, 0.5, 3.0]


# --- what a notebook sees: one call, and short reprs ----------------------------------------------------------


def test_reprs_say_the_result_in_one_line(world, happy_test):
    _, result = happy_test
    happy = world.planted.concept["happy"]
    a, s = result.ablation, result.steering
    at = a.located.firing
    text = repr(result)
    assert len(text) < 600
    assert text.startswith(
        f"FeatureTest(#{happy} ablated on 'happy': Δlog-odds(tgt) {a.effect.delta_logodds_targets:+.3g} per text "
        f"token, {at.delta_logodds_targets:+.3g} where it fires ({at.n_positions} positions), KL {a.effect.kl:.3g}; "
        "|Δlog-odds| beats 20/20 controls, p=0.048; ")  # (1 + 0) / (1 + 20)
    assert (f"steered ×2 on 'baseline': Δlog P(tgt) {s.delta_logp(2.0):+.3g}, KL {s.kl[3]:.3g}; "
            f"targets {', '.join(repr(t) for t in result.target_tokens)}; typical max {result.typical_max:.3g})") in text
    assert repr(a) == f"AblationResult(#{happy}: {a.brief()})" and a.brief() in text
    assert repr(s) == (f"SteeringCurve(mean log P(tgt) by coefficient {{-1: {s.logp_targets[0]:.3g}, 0: "
                       f"{s.logp_targets[1]:.3g}, 1: {s.logp_targets[2]:.3g}, 2: {s.logp_targets[3]:.3g}}}; "
                       f"KL up to {max(s.kl):.3g})")
    e = a.effect
    assert repr(e) == (f"Effect(Δlog P(tgt) {e.delta_logp_targets:+.3g}, Δlog-odds(tgt) {e.delta_logodds_targets:+.3g}, "
                       f"KL {e.kl:.3g} over {e.n_positions} positions)")
    skipped = replace(result, ablation=None)
    assert "ablated on 'happy': skipped, it never fires there; steered" in repr(skipped)


def test_one_call_gives_what_the_script_writes_on_the_demo(world, tmp_path, capsys):
    """test_feature(loaded, feature, prompt sets, options) alone reproduces the script's numbers exactly."""
    happy = world.planted.concept["happy"]
    flags = ["--max-prompts", "12", "--sweep", "0", "1", "--n-generate", "1", "--max-new-tokens", "3"]
    assert ch4.main(["--demo", "--feature", str(happy), *flags, "--out", str(tmp_path)]) == 0
    brief = capsys.readouterr().out
    # The terminal gets the summary (the effect where it fires leads); the full report is saved.
    assert len(brief.splitlines()) <= 60 and "Δ log-odds(tgt)" in brief and "where it fires (controls' median" in brief
    printed = (tmp_path / "MechInterpSteering_report.txt").read_text(encoding="utf-8")
    written = json.loads((tmp_path / f"MI6_{happy}.json").read_text())
    generations = list(csv.DictReader(open(tmp_path / f"MI6_{happy}_generations.csv", encoding="utf-8")))

    loaded = load(resolve_source(SourceOptions(demo=True)))
    options = FeatureTestOptions(max_prompts=12, sweep=(0.0, 1.0), n_generate=1, max_new_tokens=3)
    with demo_threads(True):
        result = intervene.test_feature(loaded, happy, load_prompt_sets(demo_prompts_dir()), options)
    assert json.loads(json.dumps(result.to_dict())) == written  # every number, bit for bit
    assert [[g.prompt, g.mode, g.clean, g.steered] for g in result.generations] == [
        [g["prompt"], g["mode"], g["clean"], g["steered"]] for g in generations]
    assert result.ablation_group == "happy" and result.ablation_group_how == "the group where it fires most often"
    assert "\n".join(steering_lines(result)) in printed
    # The report of the one call is exactly what the script printed for the feature.
    assert feature_test_text(result) in printed


def test_group_batches_prepare_once_for_every_feature(loaded_toy, world):
    happy, angry = world.planted.concept["happy"], world.planted.concept["angry"]
    groups = {g: read_prompt_file(world.prompts_dir / f"{g}.txt")[:5] for g in ("baseline", "happy")}
    prompts = GroupBatches(loaded_toy, groups, 4)
    assert repr(prompts) == "GroupBatches(baseline 5, happy 5; baseline 'baseline', batch size 4)"
    assert prompts.texts == groups["baseline"] + groups["happy"] and prompts.labels == ["baseline"] * 5 + ["happy"] * 5
    both = prompts.activations([happy, angry])
    assert prompts.activations([angry]) is both  # collected once, for both
    assert both.firing(happy, "baseline")[0] == 0 and both.firing(happy, "happy")[0] > 0
    assert prompts.batches("happy") is prompts.batches("happy")
    sets = load_prompt_sets(world.prompts_dir, baseline="happy")
    prepared = GroupBatches.of(loaded_toy, sets, FeatureTestOptions(max_prompts=3))
    assert prepared.baseline == "happy" and prepared.batch_size == 16  # the CPU default
    assert all(p == sets.groups[g][:3] for g, p in prepared.groups.items())


# --- what a learner sees: the summary, the caveats, the continuations ----------------------------------


def _table_row(text, starts):
    """The cells of the first table row of ``text`` that starts with ``starts`` (columns split on 2+ spaces)."""
    import re

    line = next(line for line in text.splitlines() if line.startswith(starts))
    return re.split(r" {2,}", line.strip())


def test_summary_row_leads_with_the_effect_where_it_fires(happy_test):
    _, result = happy_test
    a, which = result.ablation, "delta_logodds_targets"
    at = a.located.firing
    firing_controls = [getattr(c.firing, which) for c in a.control_located if c.firing.n_positions]
    # the same numbers as the 'Where it matters' table's rows for the feature and its controls
    where = "\n".join(report.located_lines(result))
    log_odds_column = 3  # positions, n, Δ log P, Δ log-odds, KL
    assert float(_table_row(where, "where it fires")[log_odds_column]) == pytest.approx(at.delta_logodds_targets,
                                                                                      rel=1e-3)
    table_ctrl = float(_table_row(where, "controls where")[log_odds_column])
    assert table_ctrl == pytest.approx(float(np.median(firing_controls)), rel=1e-2, abs=1e-3)
    row = report.summary_row(result)
    assert row[2] == f"{at.delta_logodds_targets:+.3g}"
    assert float(row[3]) == pytest.approx(table_ctrl, rel=1e-2, abs=1e-3)
    # its empirical p, by its definition, against the controls where they fire
    n_ge = sum(abs(c) >= abs(at.delta_logodds_targets) for c in firing_controls)
    assert row[4] == f"{(1 + n_ge) / (1 + len(firing_controls)):.3g}"
    assert a.to_dict()["at_firing_positions"]["empirical_p"][which] == a.located_empirical_p(which)
    # then the per-token effect over all tokens, as before
    assert row[5] == f"{a.effect.delta_logodds_targets:+.3g}" and row[6] == f"{a.empirical_p(which):.3g}"
    text = report.summary_text([result], 2.0)
    assert any(line.startswith("feature  ablated on  where it fires  ctrl median") for line in text.splitlines())
    assert all(len(line) <= WIDTH for line in text.splitlines())


def test_summary_explains_when_the_two_effects_disagree(happy_test):
    _, result = happy_test
    a = result.ablation
    assert report.disagreement(result) is None  # on the toy world both stand out
    # Controls as large as the feature over all tokens, but not where they fire: diluted.
    big = [replace(e, delta_logodds_targets=2 * abs(a.effect.delta_logodds_targets)) for e in a.control_effects]
    diluted = replace(result, ablation=replace(a, control_effects=big))
    line = report.disagreement(diluted)
    assert "significant where it fires" in line and "diluted over all tokens" in line
    assert f"fires on {a.located.firing.n_positions} of {a.effect.n_positions} positions" in line
    assert line in report.summary_text([diluted], 2.0).replace("\n  ", " ")
    # The reverse: the controls where they fire beat the feature there, but not over all tokens.
    at = a.located.firing
    strong = [replace(c, firing=replace(c.firing, delta_logodds_targets=2 * abs(at.delta_logodds_targets),
                                        n_positions=max(c.firing.n_positions, 1))) for c in a.control_located]
    elsewhere = replace(result, ablation=replace(a, control_located=strong))
    assert "significant over all tokens" in report.disagreement(elsewhere)


def test_small_effect_caveat_only_after_a_small_effect(happy_test):
    _, result = happy_test
    a = result.ablation
    assert "does not mean the feature does nothing" not in feature_test_text(result).replace("\n  ", " ")
    assert a.located.firing.delta_logp_targets < -report.SMALL_EFFECT  # a large effect where it fires
    assert np.exp(a.located.clean_firing.logp_targets) > report.ALREADY_PREDICTED  # though already predicted
    small = replace(a.located, firing=replace(a.located.firing, delta_logp_targets=-0.01))
    text = "\n".join(report.located_lines(replace(result, ablation=replace(a, located=small)))).replace("\n  ", " ")
    assert "does not mean the feature does nothing" in text and f"< {report.SMALL_EFFECT:g} nat" in text


def _byte_token_ids(tokenizer, raw):
    """One byte-level token per byte of ``raw`` (GPT-2's byte alphabet): a multi-byte character split up."""
    to_char = {b: ch for ch, b in _byte_decoder().items()}
    ids = tokenizer.convert_tokens_to_ids([to_char[b] for b in raw])
    assert tokenizer.unk_token_id not in ids or tokenizer.unk_token_id is None
    return ids


def test_continuations_decode_multibyte_characters_whole(loaded_toy, monkeypatch):
    tok = loaded_toy.model.tokenizer
    new = _byte_token_ids(tok, "é→x".encode() + b"\xe2")  # ends with a stray first byte of a character
    # the model's continuation comes back as these tokens
    prompt = tokenize(loaded_toy, ["A day."]).ids[0]

    def fake_generate(ids, **kwargs):
        return torch.cat([ids, torch.tensor([new], device=ids.device)], dim=1)

    monkeypatch.setattr(loaded_toy.model, "generate", fake_generate)
    direction = torch.zeros(loaded_toy.model.cfg.d_model, device=loaded_toy.device)
    gens = intervene.generate_side_by_side(loaded_toy, [prompt], ["A day."], 1, direction, len(new), seed=0)
    assert [(g.clean, g.steered) for g in gens] == [("é→x<0xE2>", "é→x<0xE2>")] * 2
    assert "\ufffd" in tok.decode([new[0]])  # one byte token alone is no character
    assert intervene.continuation_text(tok, new) == "é→x<0xE2>"
    assert all("\ufffd" not in line for line in report.generation_lines(_with_generations(gens)))


def _with_generations(gens):
    """A minimal stand-in for a FeatureTest with these generations, for report.generation_lines."""
    from types import SimpleNamespace

    return SimpleNamespace(generation_coeff=2.0, typical_max=1.0, feature=1, generations=gens, max_new_tokens=4)
