"""Chapter 6: feature-to-weights attribution, checked against TransformerLens, SAELens and planted answers."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

import MechInterpFeatureToWeights as ch6
from mechinterp.attribution.attribute import (
    AttributionOptions,
    attribute_feature,
    component_labels,
    encoder_readout,
    hook_site,
    project_components,
    run_components,
)
from mechinterp.attribution.report import attribution_tables, format_attribution_text, num, percent
from mechinterp.core.encoding import Tokenized, pad_batch
from mechinterp.core.errors import UserError
from mechinterp.core.io import OutputFolder
from mechinterp.core.prompts import collect_texts
from mechinterp.core.source import SourceOptions, demo_prompts_dir, demo_threads, load, resolve_source
from mechinterp.core.toyworld import CARRY_CONCEPT, CONCEPT_WORDS
from tests.attribution_worlds import (
    COPIED_WORD,
    COPY_TEXTS,
    FEATURE,
    PLANTED_WORDS,
    SILENT_TEXTS,
    copy_head_world,
    random_gpt2_world,
    silent_world,
    tokenized_ids,
)

SUM_TOL = 1e-4  # the rows must add up to the SAE's mean pre-activation this closely


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _sae_pre_by_hand(loaded, tokenized: Tokenized, feature: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force, one text at a time: the SAE's pre-activation and activation at every text token,
    computed from the weights by hand (not through the SAE's encode path)."""
    sae = loaded.sae.sae
    pres, acts = [], []
    with torch.inference_mode():
        for ids in tokenized.ids:
            _, cache = loaded.model.run_with_cache(torch.tensor([ids]))
            x = cache[loaded.sae.hook_name][0, tokenized.n_skip :].double()
            pre = (x - sae.b_dec.double()) @ sae.W_enc[:, feature].double() + float(sae.b_enc[feature])
            pres.append(pre.numpy())
            acts.append(sae.encode(x.float())[:, feature].double().numpy())
    return np.concatenate(pres), np.concatenate(acts)


def _assert_rows_add_up(result, loaded, tokenized) -> None:
    """The rows add up to the SAE's mean pre-activation on the firing tokens, computed independently."""
    pre, act = _sae_pre_by_hand(loaded, tokenized, result.feature)
    d = result.direct
    assert d.n_tokens == int((act > 0).sum()) > 0
    assert d.mean_pre_activation == pytest.approx(pre[act > 0].mean(), abs=1e-5)
    assert sum(r.mean_contribution for r in d.rows) == pytest.approx(pre[act > 0].mean(), abs=SUM_TOL)
    assert abs(d.residual) < SUM_TOL and d.max_token_residual < SUM_TOL


# --- the decomposition itself, against TransformerLens ------------------------------------------------


@pytest.fixture(scope="module")
def small_random():
    """A 4-layer random model, processed like GPT-2 (fold_ln, centred writes, folded value biases)."""
    return random_gpt2_world(n_layers=4, d_model=64, n_heads=4, hook="blocks.2.hook_resid_pre")


@pytest.mark.parametrize(
    "hook",
    [
        "blocks.2.hook_resid_pre",
        "blocks.2.hook_resid_mid",
        "blocks.2.hook_resid_post",
        "blocks.0.hook_resid_pre",
    ],
)
def test_components_equal_transformerlens_decomposition(small_random, hook):
    model = small_random.model
    tokenized = Tokenized([[0, 5, 9, 200, 17, 3], [0, 44, 8, 8]], 1)
    tokens, _ = pad_batch(tokenized, [0, 1])
    site = hook_site(model, hook)
    w = torch.randn(model.cfg.d_model, dtype=torch.float64)
    labels = component_labels(model, site)
    resid, cache = run_components(model, tokens, site)
    ours = project_components(model, cache, site, labels, w)  # [n_comp, B, T]

    with torch.inference_mode():
        _, full = model.run_with_cache(tokens)
        stack, tl_labels = full.get_full_resid_decomposition(
            layer=site.layer, mlp_input=site.mlp_input, expand_neurons=False, return_labels=True
        )
    assert labels == tl_labels
    # The premise: TransformerLens' components add up to the residual stream the SAE reads.
    torch.testing.assert_close(stack.sum(0), full[hook], atol=1e-4, rtol=0)
    torch.testing.assert_close(resid, full[hook], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, stack.double() @ w, atol=1e-5, rtol=1e-5)


def test_value_biases_are_really_folded(small_random):
    """The random world's value biases went into b_O (as for GPT-2), so the bias row is not trivial."""
    model = small_random.model
    assert all(float(b.attn.b_V.abs().max()) == 0 for b in model.blocks)
    assert float(model.accumulated_bias(2, include_mlp_biases=False).abs().max()) > 0.01


# --- the Done-when worlds ------------------------------------------------------------------------------


def test_silent_world_puts_everything_on_embed():
    loaded, _ = silent_world()
    tokenized = tokenized_ids(loaded, SILENT_TEXTS)
    result = attribute_feature(loaded, tokenized, FEATURE, AttributionOptions(n_ablate=4))
    d = result.direct
    blocks = [r for r in d.rows if r.kind in ("head", "mlp")]
    assert len(blocks) == 2 * 4 + 2  # every head of layers 0-1 and both MLPs are listed
    assert all(abs(r.mean_contribution) < 1e-4 and r.std_contribution < 1e-4 for r in blocks)
    # The planted words carry 3 units of u, read with weight 1.5.
    assert d.top(1)[0].component == "embed"
    assert d.row("embed").mean_contribution == pytest.approx(4.5, abs=1e-4)
    assert d.n_tokens == sum(w in PLANTED_WORDS for t in SILENT_TEXTS for w in t.split())
    sae = loaded.sae.sae
    expected_bias = float(sae.b_enc[FEATURE]) - float(sae.b_dec @ sae.W_enc[:, FEATURE])
    assert d.row("sae_bias").mean_contribution == pytest.approx(expected_bias, abs=1e-6)
    assert abs(expected_bias) > 0.1  # b_dec and b_enc were both non-zero
    _assert_rows_add_up(result, loaded, tokenized)
    # Weights alone: the planted words first, every block writes exactly nothing.
    assert {r.component for r in result.weights.tokens_up[:2]} == set(PLANTED_WORDS)
    assert result.weights.tokens_up[0].score == pytest.approx(4.5, abs=1e-5)
    assert all(r.score == 0 for r in result.weights.neurons_up + result.weights.heads)
    assert result.head_sources == []  # no head contributes, so none is traced
    # Ablating the embedding removes the feature; the prediction is exact (there are no other paths).
    embed = next(r for r in result.causal.rows if r.component == "embed")
    assert embed.removed_fraction == pytest.approx(1.0)
    assert embed.measured_drop_pre == pytest.approx(embed.predicted_drop, abs=1e-5)


def _copied_positions(texts: list[str]) -> tuple[int, set[int]]:
    """Brute force from the words: firing tokens (at or after the first copied word) and their offsets
    back to the most recent copied word."""
    n, offsets = 0, set()
    for text in texts:
        last = None
        for i, word in enumerate(text.split()):
            if word == COPIED_WORD:
                last = i
            if last is not None:
                n += 1
                offsets.add(i - last)
    return n, offsets


def test_copy_head_ranks_first_names_its_source_and_ablation_removes_it():
    loaded, _ = copy_head_world()
    tokenized = tokenized_ids(loaded, COPY_TEXTS)
    result = attribute_feature(loaded, tokenized, FEATURE, AttributionOptions(n_ablate=6))
    d = result.direct
    n_expected, offsets = _copied_positions(COPY_TEXTS)
    assert d.n_tokens == n_expected
    _assert_rows_add_up(result, loaded, tokenized)
    assert d.top(1, exclude=("sae_bias",))[0].component == "L1H2"
    assert d.row("L1H2").share > 1.5  # it supplies more than the whole pre-activation (sae_bias is negative)

    # 2. Its source: the copied word, and only at the distances where that word really is.
    head = result.head_sources[0]
    assert head.component == "L1H2"
    assert head.sources[0].token == COPIED_WORD and head.sources[0].share > 0.99
    assert COPIED_WORD in head.sentence
    assert head.max_split_error < 1e-5
    assert {o for o, v in head.by_offset if abs(v) > 1e-3} <= offsets
    # 3. From the weights alone, the same head and token.
    assert result.weights.heads[0].component == "L1H2" and repr(COPIED_WORD) in result.weights.heads[0].detail
    # 4. Mean-ablating the head removes the feature, and the prediction gets the size right.
    row = next(r for r in result.causal.rows if r.component == "L1H2")
    assert row.removed_fraction > 0.95
    assert row.measured_drop_pre == pytest.approx(row.predicted_drop, rel=0.2)
    assert result.causal.correlation > 0.9


def test_random_gpt2_shaped_rows_add_up():
    """GPT-2's depth and head count (narrower, for speed); the full size runs with -m slow."""
    loaded = random_gpt2_world(n_layers=12, d_model=192, n_heads=12)
    _check_random_world(loaded)


@pytest.mark.parametrize("hook", ["blocks.2.hook_resid_mid", "blocks.2.hook_resid_post"])
def test_rows_add_up_at_other_residual_hooks(hook):
    loaded = random_gpt2_world(n_layers=4, d_model=64, n_heads=4, hook=hook)
    rng = np.random.default_rng(2)
    tokenized = Tokenized([[0, *rng.integers(1, 256, size=n).tolist()] for n in (11, 7, 13)], 1)
    feature = _half_firing_feature(loaded, tokenized)
    result = attribute_feature(loaded, tokenized, feature, AttributionOptions(n_ablate=2, top_heads=1))
    _assert_rows_add_up(result, loaded, tokenized)
    n_heads = 3 * 4  # blocks 0-2 write heads into resid_mid / resid_post of block 2
    n_mlps = 2 if hook.endswith("mid") else 3
    assert sum(r.kind == "head" for r in result.direct.rows) == n_heads
    assert sum(r.kind == "mlp" for r in result.direct.rows) == n_mlps


@pytest.mark.slow
def test_random_gpt2_full_size_rows_add_up():
    _check_random_world(random_gpt2_world())


def _check_random_world(loaded) -> None:
    rng = np.random.default_rng(1)
    tokenized = Tokenized([[0, *rng.integers(1, 256, size=n).tolist()] for n in (14, 9, 17, 6)], 1)
    # Use the feature firing closest to half the tokens, so both firing and silent tokens exist.
    feature = _half_firing_feature(loaded, tokenized)
    options = AttributionOptions(n_ablate=3, top_heads=2, n_sources=1000)
    result = attribute_feature(loaded, tokenized, feature, options)
    _assert_rows_add_up(result, loaded, tokenized)
    assert len(result.direct.rows) == 8 * 12 + 8 + 4  # heads, MLPs, embed, pos_embed, bias, sae_bias
    # Gathered by source token, or by distance back, each head's pieces add up to its row.
    for head in result.head_sources:
        assert head.max_split_error < 1e-4
        assert sum(s.mean_contribution for s in head.sources) == pytest.approx(
            head.mean_contribution, abs=1e-6
        )
        assert sum(v for _, v in head.by_offset) == pytest.approx(head.mean_contribution, abs=1e-6)
        assert sum(s.n_pairs for s in head.sources) == sum(
            pos + 1 for t, pos in _firing_positions(loaded, tokenized, feature)
        )


def _firing_positions(loaded, tokenized, feature: int) -> list[tuple[int, int]]:
    """(text, position) of every firing token, BOS counted in the position."""
    out = []
    with torch.inference_mode():
        for i, ids in enumerate(tokenized.ids):
            _, cache = loaded.model.run_with_cache(torch.tensor([ids]))
            acts = loaded.sae.sae.encode(cache[loaded.sae.hook_name][0])[:, feature]
            out += [(i, p) for p in range(tokenized.n_skip, len(ids)) if acts[p] > 0]
    return out


def _half_firing_feature(loaded, tokenized) -> int:
    tokens, valid = pad_batch(tokenized, range(len(tokenized.ids)))
    with torch.inference_mode():
        _, cache = loaded.model.run_with_cache(tokens)
        acts = loaded.sae.sae.encode(cache[loaded.sae.hook_name][valid])
    counts = (acts > 0).sum(0).float()
    return int((counts - valid.sum() / 2).abs().argmin())


# --- the SAE's input processing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sae_kw",
    [
        {"normalize_activations": "layer_norm"},
        {"normalize_activations": "constant_norm_rescale"},
        {"apply_b_dec_to_input": False},
    ],
)
def test_sae_input_processing_is_respected(sae_kw):
    loaded, _ = copy_head_world(**sae_kw)
    tokenized = tokenized_ids(loaded, COPY_TEXTS)
    sae = loaded.sae.sae
    # Reference: the SAE's own encode path, with its hook_sae_acts_pre, one text at a time.
    pres, acts = [], []
    with torch.inference_mode():
        for ids in tokenized.ids:
            _, cache = loaded.model.run_with_cache(torch.tensor([ids]))
            _, sae_cache = sae.run_with_cache(cache[loaded.sae.hook_name][0, 1:])
            pres.append(sae_cache["hook_sae_acts_pre"][:, FEATURE].double())
            acts.append(sae_cache["hook_sae_acts_post"][:, FEATURE].double())
    pre, act = torch.cat(pres), torch.cat(acts)
    result = attribute_feature(loaded, tokenized, FEATURE, AttributionOptions(n_ablate=0))
    d = result.direct
    assert d.n_tokens == int((act > 0).sum()) > 0
    assert d.mean_pre_activation == pytest.approx(float(pre[act > 0].mean()), abs=1e-5)
    assert d.sum_of_rows == pytest.approx(float(pre[act > 0].mean()), abs=SUM_TOL)
    expected_bias = float(sae.b_enc[FEATURE]) - float(sae.cfg.apply_b_dec_to_input) * float(
        sae.b_dec @ sae.W_enc[:, FEATURE]
    )
    assert result.sae_bias == pytest.approx(expected_bias, abs=1e-6)
    assert (result.normalisation != "none") == ("normalize_activations" in sae_kw)


def test_refuses_what_is_not_linear():
    loaded, _ = copy_head_world()
    sae = loaded.sae.sae
    sae.run_time_activation_norm_fn_in = lambda x: torch.tanh(x)  # a non-linear input map
    with pytest.raises(UserError, match="not linear"):
        encoder_readout(sae, FEATURE)
    with pytest.raises(UserError, match="residual stream"):
        hook_site(loaded.model, "blocks.1.attn.hook_z")
    with pytest.raises(UserError, match="residual stream"):
        hook_site(loaded.model, "blocks.1.hook_mlp_out")


# --- the script --------------------------------------------------------------------------------------------


def test_demo_script_writes_the_planted_answer(world, tmp_path, capsys):
    out = tmp_path / "out"
    happy, angry = world.planted.concept["happy"], world.planted.concept["angry"]
    assert ch6.main(["--demo", "--out", str(out), "--n-ablate", "4"]) == 0
    brief = capsys.readouterr().out
    # The terminal gets each feature's four answers in a few lines; the full report is saved.
    assert len(brief.splitlines()) <= 60 and "   1. Direct: mean pre-activation" in brief
    assert "   4. Causal check:" in brief and "MechInterpFeatureToWeights_report.txt" in brief
    printed = (out / "MechInterpFeatureToWeights_report.txt").read_text(encoding="utf-8")
    for concept, feature in world.planted.concept.items():
        rows = {r["component"]: r for r in _read_csv(out / f"MI9_{feature}.csv")}
        data = json.loads((out / f"MI9_{feature}.json").read_text())
        direct = data["direct_attribution"]
        # The planted concept lives in the embeddings: 3 units read with weight 1.5, threshold 1.5, on the
        # one concept word of each of the 48 prompts.
        embed = float(rows["embed"]["mean_contribution"])
        assert embed * direct["n_tokens"] == pytest.approx(4.5 * 48, rel=1e-3)
        assert float(rows["sae_bias"]["mean_contribution"]) == pytest.approx(-1.5, abs=1e-6)
        # The carry-over concept also fires on the 1-3 tokens after its word: heads 0, 1 and 2 of block 0
        # bring the word's direction there from 1, 2 and 3 tokens back, less from further back.
        carry = ("L0H0", "L0H1", "L0H2") if concept == CARRY_CONCEPT else ()
        assert all(abs(float(r["mean_contribution"])) < 0.01
                   for r in rows.values() if r["kind"] in ("head", "mlp") and r["component"] not in carry)
        total = sum(float(r["mean_contribution"]) for r in rows.values())
        assert total == pytest.approx(direct["mean_pre_activation"], abs=SUM_TOL)
        if carry:
            means = [float(rows[c]["mean_contribution"]) for c in carry]
            assert means == sorted(means, reverse=True) and means[-1] > 0.1 and direct["n_tokens"] > 2 * 48
            assert {c for c, r in rows.items() if int(r["rank"]) <= 5} == {"sae_bias", "embed", *carry}
        else:
            assert rows["embed"]["rank"] == "1" and embed == pytest.approx(4.5, abs=1e-2)
            assert direct["mean_pre_activation"] == pytest.approx(3.0, abs=0.01) and direct["n_tokens"] == 48
        weights = list(_read_csv(out / f"MI9_{feature}_weights.csv"))
        top_tokens = [r["component"] for r in weights if r["list"] == "tokens_up"][:8]
        assert set(top_tokens) == {" " + w for w in CONCEPT_WORDS[concept]}
        ablation = {r["component"]: r for r in _read_csv(out / f"MI9_{feature}_ablation.csv")}
        assert float(ablation["embed"]["removed_fraction"]) == pytest.approx(1.0)
        assert (out / f"MI9_{feature}.png").stat().st_size > 20_000
    assert f"(feature #{happy}: planted 'happy' feature)" in printed and f"(feature #{angry}: planted 'angry' feature)" in printed
    assert re.search(r"residual\s+[+-]\d\.\d\de-0[5-9]", printed)  # the check is printed, and tiny
    summary = list(_read_csv(out / "feature_to_weights.csv"))
    assert [int(r["feature"]) for r in summary] == [happy, angry]
    record = json.loads((out / "MechInterpFeatureToWeights_run.json").read_text())
    assert "BOS" in record["filtered"] and set(record["checks"]) == {str(happy), str(angry)}
    _assert_zeros_are_counted_not_listed(printed, out, [happy, angry])


def _assert_zeros_are_counted_not_listed(printed: str, out, features: list[int]) -> None:
    """No printed number rounds to zero, each feature's counted line matches the zero rows of its CSV, and
    the agreement's denominator is the non-zero ablations."""
    assert not ROUNDS_TO_ZERO.search(printed), ROUNDS_TO_ZERO.search(printed)
    summary = {r["feature"]: r for r in _read_csv(out / "feature_to_weights.csv")}
    for feature, block in zip(features, printed.split("=== Feature #")[1:]):
        data = json.loads((out / f"MI9_{feature}.json").read_text())
        threshold = data["causal_check"]["zero_threshold"]
        rows = _read_csv(out / f"MI9_{feature}.csv")
        zero = sum(abs(float(r["mean_contribution"])) <= threshold for r in rows)
        assert 0 < zero < len(rows) and len(rows) == len(data["direct_attribution"]["rows"])  # the CSV keeps all
        assert f"\n   {zero} other components contribute nothing" in block
        ablation = _read_csv(out / f"MI9_{feature}_ablation.csv")
        live = [r for r in ablation if max(abs(float(r[k])) for k in (
            "predicted_drop", "measured_drop_pre", "measured_drop_act")) > threshold]
        assert 0 < len(live) <= len(ablation)
        assert f"of {len(live)} non-zero components" in block
        assert summary[str(feature)]["ablation agrees"].split(",")[0].endswith(f"/{len(live)}")


# A printed number that rounds to zero: "-0.0000", "+0.000", "0.0%" (an exact "0", e.g. a constant's spread,
# is fine).
ROUNDS_TO_ZERO = re.compile(r"(?<![\d.e])[-+]?0\.0+(?![\d.]*[1-9])%?|\(\s*-?0\.0+%\)")


def test_silent_world_counts_what_writes_nothing():
    """Every block writes exactly zero: the text lists none of them, counts them once, and the causal check
    measures agreement over the components that change anything."""
    loaded, _ = silent_world()
    result = attribute_feature(loaded, tokenized_ids(loaded, SILENT_TEXTS), FEATURE, AttributionOptions(n_ablate=6))
    text = format_attribution_text(result, "silent")
    d, c, w = result.direct, result.causal, result.weights
    assert not ROUNDS_TO_ZERO.search(text)
    assert "copies nothing" not in text and not re.search(r"\bL\dH\d\b|\bL\dN\d+\b|\d_mlp_out", text)
    csv_rows = attribution_tables(result)[0][2]  # MI9_<id>.csv: every row, zeros included
    zero = sum(abs(row[5]) <= d.zero_threshold for row in csv_rows)
    assert len(csv_rows) == len(d.rows) and zero == len(d.zero_rows()) >= 10
    assert f"   {zero} other components contribute nothing" in text
    assert f"{len(w.heads)} listed heads write nothing" in text
    assert f"{len(w.neurons_up)} listed neurons write nothing" in text
    live = [r for r in c.rows if abs(r.predicted_drop) > c.zero_threshold or abs(r.measured_drop_pre) > c.zero_threshold]
    assert len(live) == c.n_nonzero < len(c.rows) and c.n_agree <= c.n_nonzero
    assert c.correlation is None  # fewer than 3 components change anything: no r from a cluster of zeros
    assert f"for {c.n_agree} of {c.n_nonzero} non-zero components" in c.summary and "r =" not in c.summary
    assert f"{len(c.rows) - len(live)} other ablated components change nothing" in text


@pytest.mark.parametrize(("value", "sign", "expected"), [
    (0.0, True, "0"), (-0.0, False, "0"), (-3e-11, True, "-3.000e-11"), (1.780142, False, "1.780"),
    (0.0009313, True, "+0.0009313"), (1234.5, False, "1234"), (-84.31, True, "-84.31"),
])
def test_numbers_keep_significant_digits(value, sign, expected):
    assert num(value, sign=sign) == expected
    assert percent(0.000523) == "0.0523%" and percent(1.499) == "150%" and percent(float("nan")) == "-"


def test_flags_keep_their_names_and_defaults(capsys):
    """Each flag is defined once (AttributionOptions, FeatureSelection, PromptOptions); the command line stays."""
    args = vars(ch6.parse_args([]))
    assert {k: args[k] for k in list(args)[:12]} == {
        "feature": [], "from_results": None, "top_n": 1, "include_nonsignificant": False, "prompts": None,
        "corpus": None, "top_components": 12, "top_heads": 3, "n_sources": 5, "n_weights": 10, "n_ablate": 8,
        "batch_size": None}
    parsed = ch6.parse_args(["--top-heads", "2", "--n-ablate", "0", "--batch-size", "4"])
    assert ch6.options_from(parsed, AttributionOptions) == AttributionOptions(top_heads=2, n_ablate=0, batch_size=4)
    with pytest.raises(SystemExit):
        ch6.parse_args(["--help"])
    text = capsys.readouterr().out
    where = {name: text.index(f"\n{name}\n" if name.endswith(":") else f"\n  {name} ") for name in (
        "texts to attribute on:", "--prompts", "--corpus", "--batch-size", "how much to show:", "--top-components",
        "--top-heads", "--n-sources", "--n-weights", "--n-ablate", "model and SAE:")}
    assert list(where.values()) == sorted(where.values())  # each flag in its section, in this order


def test_a_feature_that_never_fires_gets_the_weights_view_only(tmp_path):
    loaded, _ = silent_world()
    with torch.no_grad():
        loaded.sae.sae.b_enc[3] = -100.0
    result = attribute_feature(loaded, tokenized_ids(loaded, SILENT_TEXTS), 3)
    assert result.direct is None and result.causal is None and result.head_sources == []
    assert repr(result) == f"FeatureAttribution(#3 at {loaded.sae.hook_name}: never fires on these texts; {result.weights!r})"
    assert result.sum_check() is None
    assert len(result.weights.tokens_up) == 10 and "never fires" in result.notes[-1]
    with OutputFolder(tmp_path) as out:
        written = ch6.write_outputs(result, out, "title", 4, 12)
    assert {p.name for p in written} == {
        "MI9_3_sources.csv",
        "MI9_3_offsets.csv",
        "MI9_3_weights.csv",
        "MI9_3.json",
    }
    assert ch6.summary_row(result)[:3] == [3, 0, "-"]


# --- what a notebook sees: one call, and short reprs ----------------------------------------------------------


def test_one_call_on_texts_and_reprs_that_name_the_answer():
    loaded, _ = copy_head_world()
    result = attribute_feature(loaded, COPY_TEXTS, FEATURE, AttributionOptions(n_ablate=6))  # texts, not token ids
    same = attribute_feature(loaded, tokenized_ids(loaded, COPY_TEXTS), FEATURE, AttributionOptions(n_ablate=6))
    assert result.to_dict() == same.to_dict()
    d, head, causal = result.direct, result.head_sources[0], result.causal
    top = d.top(3, exclude=("sae_bias",))
    assert top[0].component == "L1H2"
    briefs = ", ".join(f"{r.component} {r.mean_contribution:+.3g} ({r.share:.0%})" for r in top)
    text = repr(result)
    assert len(text) < 600
    assert text == (
        f"FeatureAttribution(#{FEATURE} at blocks.2.hook_resid_pre: mean pre-activation {d.mean_pre_activation:.4g} "
        f"over {d.n_tokens} firing tokens, rows add up (residual {d.residual:+.1e}); top {briefs}; {head.sentence}; "
        f"mean-ablation agrees for {causal.n_agree}/{causal.n_nonzero} non-zero, r={causal.correlation:.2f})"
    )
    assert repr(top[0]) == f"ComponentRow({top[0].component} {top[0].mean_contribution:+.3g} ({top[0].share:.0%}), " \
                           f"spread {top[0].std_contribution:.3g})"
    assert repr(d) == (f"DirectAttribution(mean pre-activation {d.mean_pre_activation:.4g} over {d.n_tokens} firing tokens "
                       f"in {d.n_texts} texts; the {len(d.rows)} rows add up to {d.sum_of_rows:.4g} (residual "
                       f"{d.residual:+.1e}); top {briefs})")
    assert repr(head) == f"HeadSources({head.sentence})" and repr(causal) == f"CausalCheck({causal.summary})"
    w = result.weights
    assert repr(w) == (f"WeightsView(direct path only: tokens up {', '.join(repr(r.component) for r in w.tokens_up[:3])}; "
                       f"neurons up {', '.join(r.component for r in w.neurons_up[:3])}; "
                       f"heads {', '.join(r.component for r in w.heads[:3])})")
    assert w.heads[0].component == "L1H2"  # from the weights alone, the planted head comes first
    assert result.sum_check() == {"mean_pre_activation": d.mean_pre_activation, "sum_of_rows": d.sum_of_rows,
                                  "residual": d.residual, "max_token_residual": d.max_token_residual}


def test_one_call_gives_what_the_script_writes_on_the_demo(world, tmp_path, capsys):
    """attribute_feature(loaded, texts, feature, options) alone reproduces the script's files and text."""
    happy = world.planted.concept["happy"]
    assert ch6.main(["--demo", "--feature", str(happy), "--n-ablate", "4", "--out", str(tmp_path), "--verbose"]) == 0
    printed = capsys.readouterr().out
    written = json.loads((tmp_path / f"MI9_{happy}.json").read_text())
    record = json.loads((tmp_path / "MechInterpFeatureToWeights_run.json").read_text())

    loaded = load(resolve_source(SourceOptions(demo=True)))
    texts, _, _ = collect_texts(demo_prompts_dir(), True, None)
    with demo_threads(True):
        result = attribute_feature(loaded, texts, happy, AttributionOptions(n_ablate=4))
    assert json.loads(json.dumps(result.to_dict() | {"title": loaded.title})) == written  # every number
    assert format_attribution_text(result, loaded.title) in printed
    assert record["checks"] == {str(happy): result.sum_check()}
    assert record["options"] == {"top_heads": 3, "n_sources": 5, "n_weights": 10, "n_ablate": 4, "batch_size": 16,
                                 "atol": 1e-4, "rtol": 1e-4, "agree_tolerance": 0.1}
