"""Feature families in Chapters 3 and 4: a family card, a family ablation, and families read from Chapter 2.

The demo world has no split concept, so its two planted concept features (happy and angry) stand in for
a family of two. Each number is checked against an independent computation: one prompt at a time,
unpadded, through SAELens' ``HookedSAETransformer`` with the toy weights (the SAE spliced in at its hook,
the error term kept), every statistic recomputed from its definition in float64.
"""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch

import MechInterpFeatureInspect as ch3
import MechInterpSteering as ch4
from mechinterp.core.errors import UserError
from mechinterp.core.features import choose_features, parse_family
from mechinterp.core.prompts import collect_texts, read_prompt_file
from mechinterp.core.source import demo_prompts_dir
from mechinterp.core.toyworld import planted_features

# Chapter 2's feature_stats.csv header as `MechInterpFeatureMeaning.py --demo` writes it, plus the two
# columns of families (a family's member ids joined by '+', and the feature's distinctive words).
STATS_HEADER = ["group", "feature", "rank", "direction", "mean_group", "mean_baseline", "frac_active_group",
                "frac_active_baseline", "auroc", "effect_size", "cohens_d", "p_value", "q_value", "test", "p_method",
                "p_firing_fisher", "holdout_auroc", "holdout_q_value", "replicated", "verdict", "evidence",
                "always_on", "neuronpedia_url", "alpha", "model", "sae", "hook", "family", "words"]


def family_of_two() -> tuple[int, int]:
    """The planted happy and angry features, ascending: a stand-in family of two."""
    concept = planted_features().concept
    return tuple(sorted((concept["happy"], concept["angry"])))


@pytest.fixture(scope="module")
def reference(loaded_toy):
    """SAELens' HookedSAETransformer with the toy weights, a private copy of the SAE, and the name of the
    SAE's feature activations in that model (``<hook>.hook_sae_acts_post`` once the SAE is spliced in)."""
    from sae_lens import HookedSAETransformer

    model = HookedSAETransformer(loaded_toy.model.cfg, tokenizer=loaded_toy.model.tokenizer)
    model.load_state_dict(loaded_toy.model.state_dict(), strict=False)
    model.eval()
    return model, copy.deepcopy(loaded_toy.sae.sae), f"{loaded_toy.sae.hook_name}.hook_sae_acts_post"


def sae_acts(reference, text: str) -> np.ndarray:
    """``[text tokens, d_sae]`` the SAE's activations on one prompt (BOS dropped), float64, via SAELens."""
    model, sae, name = reference
    with torch.inference_mode():
        _, cache = model.run_with_cache_with_saes(model.to_tokens(text), saes=[sae], names_filter=name)
    return cache[name][0, 1:].double().numpy()


# --- Chapter 3: a family card ----------------------------------------------------------------------------


def test_family_card_is_the_max_of_members_normalised_activations(world, reference, tmp_path, capsys):
    # With the planted stray-word feature as a third member: it fires at about half the concepts'
    # strength, inside happy prompts, so the normalisation and the per-token max both matter.
    members = tuple(sorted(family_of_two() + tuple(planted_features().stray.values())[:1]))
    name = "+".join(map(str, members))
    out = tmp_path / "out"
    assert ch3.main(["--demo", "--quiet", "--verbose", "--family", "+".join(map(str, members[::-1])), "--top-prompts", "4",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    card = json.loads((out / f"family_{name}.json").read_text())
    assert card["family"] == name and card["members"] == list(members)

    # Brute force: every prompt alone; each member's typical max = median over the prompts where it fires
    # of its per-prompt max; the family activation = max over members of activation / typical max.
    texts, _, _ = collect_texts(demo_prompts_dir(), True, None)
    acts = [sae_acts(reference, t)[:, list(members)] for t in texts]
    scales = [float(np.median([a[:, j].max() for a in acts if a[:, j].max() > 0])) for j in range(len(members))]
    family = [(a / scales).max(axis=1) for a in acts]
    # Two paths (batched project encoder, one-prompt SAELens run) agree to float32 rounding: 1e-4 is ~30x it.
    for row, scale in zip(card["member_rows"], scales):
        assert row["typical_max_activation"] == pytest.approx(scale, abs=1e-4)
    for ex in card["top_examples"] + card["more_examples"]:
        expected = family[ex["text_index"]]
        np.testing.assert_allclose(ex["activations"], expected, rtol=0, atol=1e-4)  # written to 5 decimals
        member = int(np.argmax(acts[ex["text_index"]][ex["peak_index"]] / scales))
        assert ex["member"] == members[member] and expected[ex["peak_index"]] == pytest.approx(expected.max(), abs=1e-4)
    fired = sum(int((f > 0).sum()) for f in family)
    assert sum(v["fired"] for v in card["fired_tokens_by_source"].values()) == fired
    maxima = [f.max() for f in family if f.max() > 0]
    assert card["typical_max_activation"] == pytest.approx(float(np.median(maxima)), abs=1e-4)
    # Each member carries the family where it is the larger normalised activation.
    carries = [sum(int(((a / scales).argmax(1) == j)[f > 0].sum()) for a, f in zip(acts, family))
               for j in range(len(members))]
    assert [r["tokens_it_carries"] for r in card["member_rows"]] == carries
    assert set(family_of_two()) <= {ex["member"] for ex in card["top_examples"] + card["more_examples"]}

    # Saved like a feature's card, linked from the index, named in the summary; no member card beside it.
    for file in (f"MI5_{name}.png", f"MI5_{name}.csv", f"MI5_{name}_hist.csv", f"MI5_{name}_members.csv",
                 f"family_{name}.html"):
        assert (out / file).is_file(), file
    assert not list(out.glob("feature_*.json"))
    label = "+".join(f"#{m}" for m in members)
    assert f'href="family_{name}.html">{label}</a>' in (out / "index.html").read_text()
    with open(out / "feature_cards.csv", encoding="utf-8") as f:
        summary = list(csv.DictReader(f))
    assert [r["feature"] for r in summary] == [name]
    assert f"=== Family {label}" in printed and "divided by that member's typical max" in printed.replace("\n    ", " ")


# --- Chapter 4: a family ablation -----------------------------------------------------------------------


def _reference_effect(reference, texts, members, targets):
    """Mean per text token of Δ log P(targets), Δ log-odds(targets) and KL(clean ‖ ablated), zeroing every
    member after BOS in SAELens' spliced-in SAE with the error term kept; float64 from the definitions."""
    model, sae, name = reference

    def zero(acts, hook):
        acts = acts.clone()
        acts[:, 1:, list(members)] = 0.0
        return acts

    def scores(logits):
        log_probs = logits[0, 1:].double().log_softmax(-1)
        p = log_probs[:, targets].exp().sum(-1)
        return log_probs, torch.log(p), torch.log(p) - torch.log1p(-p)

    sums, n = np.zeros(3), 0
    for text in texts:
        tokens = model.to_tokens(text)
        with torch.inference_mode(), model.saes(saes=[sae], use_error_term=True):
            clean = scores(model(tokens))
            with model.hooks(fwd_hooks=[(name, zero)]):
                ablated = scores(model(tokens))
        kl = (clean[0].exp() * (clean[0] - ablated[0])).sum(-1)
        sums += [float((ablated[1] - clean[1]).sum()), float((ablated[2] - clean[2]).sum()), float(kl.sum())]
        n += tokens.shape[1] - 1
    return sums / n, n


def test_family_ablation_equals_ablating_every_member_by_hand(world, reference, tmp_path):
    members = family_of_two()
    name = "+".join(map(str, members))
    # One group where both members fire (happy and angry prompts together), and the baseline to steer.
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    both = read_prompt_file(world.prompts_dir / "happy.txt")[:6] + read_prompt_file(world.prompts_dir / "angry.txt")[:6]
    (prompts / "both.txt").write_text("\n".join(both) + "\n", encoding="utf-8")
    baseline = read_prompt_file(world.prompts_dir / "baseline.txt")[:6]
    (prompts / "baseline.txt").write_text("\n".join(baseline) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert ch4.main(["--prompts", str(prompts), "--verbose", "--family", name, "--sweep", "0", "1", "--n-generate", "1",
                     "--max-new-tokens", "2", "--quiet", "--out", str(out)]) == 0
    result = json.loads((out / f"MI6_{name}.json").read_text())
    assert result["feature"] == name and result["members"] == list(members) and result["ablation_group"] == "both"
    ablation = result["ablation"]

    expected, n = _reference_effect(reference, both, members, result["target_ids"])
    assert ablation["n_positions"] == n
    got = [ablation["feature"][k] for k in ("delta_logp_targets", "delta_logodds_targets", "kl")]
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)  # float32 model vs float64 reference
    assert ablation["feature"]["kl"] > 0.1  # removing both concepts matters

    # Controls: 20 random sets of two distinct non-members; each member's stand-ins all differ.
    sets = ablation["controls"]["features"]
    assert len(sets) == len(ablation["control_effects"]) == 20
    assert all(len(s) == 2 == len(set(s)) and not set(s) & set(members) for s in sets)
    assert set(ablation["controls"]["pool_by_member"]) == {str(m) for m in members}
    with open(out / f"MI6_{name}_ablation.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["feature"] == name and [r["feature"] for r in rows[1:]] == ["+".join(map(str, s)) for s in sets]


# --- --from-results: a family read from Chapter 2's table -------------------------------------------------


def _stats_csv(path, loaded, members, other):
    """A feature_stats.csv as Chapter 2 writes it, with one family split across ``members`` (one member in
    each group) and ``other``, a lexical feature, ranked second in the first group."""
    name = "+".join(map(str, members))
    base = dict.fromkeys(STATS_HEADER, "")
    base |= {"direction": "up", "q_value": "1e-08", "p_value": "1e-09", "replicated": "yes", "alpha": "0.05",
             "always_on": "no", **dict(zip(("model", "sae", "hook"), loaded.provenance.row()))}
    rows = [base | {"group": "happy", "feature": members[1], "rank": 1, "verdict": "concept (split)",
                    "family": name, "words": "' glad' ' thrilled'"},
            base | {"group": "happy", "feature": other, "rank": 2, "verdict": "lexical"},
            base | {"group": "angry", "feature": members[0], "rank": 1, "verdict": "concept (split)",
                    "family": name, "words": "' furious'"}]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, STATS_HEADER)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_from_results_picks_a_split_concept_as_one_family(world, loaded_toy, tmp_path, capsys):
    members = family_of_two()
    name = "+".join(map(str, members))
    path = _stats_csv(tmp_path / "feature_stats.csv", loaded_toy, members, other=7)
    # Chapters 3 and 4 look at the family as one; a member is not looked at alone as well.
    choice = choose_features([], path, 1, True, 512, provenance=loaded_toy.provenance, families=[])
    assert choice.families == [members] and choice.features == []
    assert "verdict concept (split)" in choice.origin(members)
    # A chapter without families (Chapter 6) takes each member that passes the gate, as any concept.
    assert choose_features([], path, 1, True, 512).features == [members[1], members[0]]
    # --family and --feature beside it: the family once, and the member given alone too.
    again = choose_features([members[0]], path, 1, True, 512, families=[members[::-1]])
    assert again.families == [members] and again.features == [members[0]]

    out = tmp_path / "out"
    assert ch3.main(["--demo", "--quiet", "--verbose", "--from-results", str(path), "--top-n", "2", "--top-prompts", "2",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / f"family_{name}.json").is_file() and not list(out.glob("feature_*.json"))
    assert "verdict lexical" in printed  # the lexical feature is skipped by the gate, and the note says so
    record = json.loads((out / "MechInterpFeatureInspect_run.json").read_text())
    assert record["families"] == [name] and record["features"] == []


def test_family_ids_are_checked():
    assert parse_family("501+409") == (409, 501) == parse_family("#409+#501")
    for bad in ("409", "409+409", "409+x", ""):
        with pytest.raises(ValueError):
            parse_family(bad)
    with pytest.raises(UserError, match="ids run from 0 to 511"):
        choose_features([], None, 1, True, 512, families=[(3, 600)])
    with pytest.raises(UserError, match="at least two different features"):
        choose_features([], None, 1, True, 512, families=[(3, 3)])
    with pytest.raises(SystemExit):
        ch4.parse_args(["--family", "409"])
