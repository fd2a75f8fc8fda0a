"""Chapter 3: feature cards, checked against a direct computation and the toy world's planted features."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import MechInterpFeatureInspect as ch3
from mechinterp.cards.card import CardOptions, Example, build_card, feature_cards
from mechinterp.cards.render import format_card_text, highlight_terminal, render_html
from mechinterp.core.encoding import encode_tokens
from mechinterp.core.errors import UserError
from mechinterp.core.features import (
    choose_features,
    collect_feature_activations,
    read_results_csv,
    validate_features,
)
from mechinterp.core.logits import logit_effects
from mechinterp.core.prompts import collect_texts, read_prompt_file
from mechinterp.core.source import SourceOptions, demo_prompts_dir, demo_threads, load, resolve_source
from mechinterp.core.tables import safe_text
from mechinterp.core.toyworld import CARRY_CONCEPT, CONCEPT_WORDS, PLANTED_OUTPUTS


def test_logit_effects_equal_direct_computation(loaded_toy, world):
    model, sae = loaded_toy.model, loaded_toy.sae.sae
    for feature in (*world.planted.concept.values(), 7, 300):
        promoted, suppressed = logit_effects(loaded_toy, feature, 15)
        direct = (sae.W_dec[feature] @ model.W_U).detach()  # [d_vocab]
        top, bottom = torch.topk(direct, 15), torch.topk(-direct, 15)
        # Only tokens pushed in the column's direction are listed: promoted > 0, suppressed < 0.
        up, down = top.values > 0, bottom.values > 0
        assert [x.token_id for x in promoted] == top.indices[up].tolist()
        assert [x.token_id for x in suppressed] == bottom.indices[down].tolist()
        np.testing.assert_allclose([x.value for x in promoted], top.values[up].numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose([x.value for x in suppressed], -bottom.values[down].numpy(), rtol=0, atol=1e-5)
        assert all(x.value > 0 for x in promoted) and all(x.value < 0 for x in suppressed)
    # A planted concept writes three tokens and nothing else up: exactly three are "promoted".
    assert len(logit_effects(loaded_toy, world.planted.concept["angry"], 15)[0]) == 3
    # The planted wiring: each concept's decoder direction promotes exactly its planted outputs first.
    for concept, feature in world.planted.concept.items():
        promoted, _ = logit_effects(loaded_toy, feature, 3)
        assert {x.token for x in promoted} == {" " + w for w in PLANTED_OUTPUTS[concept]}


def fired_tokens(loaded, texts: list[str], feature: int) -> int:
    """How many text tokens (BOS excluded) of ``texts`` the feature fires on, encoded one text at a time."""
    return sum(int((encode_tokens(loaded, loaded.model.to_tokens(t))[0, 1:, feature] > 0).sum()) for t in texts)


def test_card_from_default_model_flags(world, loaded_toy, tmp_path, capsys):
    """The offline test cache (real names) with the demo prompts and a hostile corpus document."""
    happy, angry, bos = world.planted.concept["happy"], world.planted.concept["angry"], world.planted.bos
    corpus = tmp_path / "corpus.txt"
    corpus.write_text('<script>alert("x")</script> & the <b>teacher</b> was glad\n', encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--feature", str(happy), "--feature", str(angry), "--feature", str(bos),
            "--prompts", str(world.prompts_dir), "--corpus", str(corpus), "--top-prompts", "8", "--out", str(out), "--verbose"]
    assert ch3.main(argv) == 0
    printed = capsys.readouterr().out

    for concept, feature in world.planted.concept.items():
        card = json.loads((out / f"feature_{feature}.json").read_text())
        words = {" " + w for w in CONCEPT_WORDS[concept]}
        # Where it fires: every top example peaks on one of the planted concept words.
        assert len(card["top_examples"]) == 8
        assert all(ex["peak_token"] in words for ex in card["top_examples"])
        # What it writes: the planted outputs, as in a direct W_dec @ W_U.
        assert {x["token"] for x in card["promoted"][:3]} == {" " + w for w in PLANTED_OUTPUTS[concept]}
        # How often: only in its own group, never in baseline: on the concept word (one token per prompt)
        # and, for the carry-over concept, on the 1-3 tokens after it as well.
        by_source = card["fired_tokens_by_source"]
        assert by_source["baseline"]["fired"] == 0 and by_source["control"]["fired"] == 0
        fired = fired_tokens(loaded_toy, read_prompt_file(world.prompts_dir / f"{concept}.txt"), feature)
        assert by_source[concept]["fired"] == fired and (fired == 48) == (concept != CARRY_CONCEPT)
        assert card["texts_where_it_fires"] == 48
        assert card["typical_max_activation"] == pytest.approx(3.0, abs=0.01)
        assert card["neuronpedia_url"] == f"https://www.neuronpedia.org/gpt2-small/8-res-jb/{feature}"
        assert 0 < card["density_from_sparsity_file"] < 0.1

    # The BOS feature fires hugely at BOS only: with BOS excluded it never fires on the texts.
    bos_card = json.loads((out / f"feature_{bos}.json").read_text())
    assert bos_card["firing_rate_on_prompts"] == 0 and bos_card["top_examples"] == []

    # The corpus document was mined too (its one concept word fires), and the page stays self-contained.
    card = json.loads((out / f"feature_{happy}.json").read_text())
    assert card["corpus"]["fired_tokens"] == 1 and card["corpus"]["top_examples"][0]["peak_token"] == " glad"
    page = (out / f"feature_{happy}.html").read_text()
    assert "<script" not in page.lower() and 'src="http' not in page and "@import" not in page
    assert 'src="data:image/png;base64,' in page  # the figure is inlined

    # stdout is not a terminal here: plain marks, no ANSI escapes.
    assert "\x1b[" not in printed and "[[glad:3.00]]" in printed

    rows = list(csv.DictReader(open(out / f"MI5_{happy}.csv", encoding="utf-8")))
    promoted = [r for r in rows if r["direction"] == "promoted"]
    # A planted concept promotes exactly its three outputs (no negative value padded into "promoted").
    assert {r["token"] for r in promoted} == {" hooray", " sunshine", " laughter"}
    assert all(float(r["logit_effect"]) > 0 for r in promoted)
    assert all(float(r["logit_effect"]) < 0 for r in rows if r["direction"] == "suppressed")
    assert len(rows) == 3 + 15
    hist = list(csv.DictReader(open(out / f"MI5_{happy}_hist.csv", encoding="utf-8")))
    by_source = json.loads((out / f"feature_{happy}.json").read_text())["fired_tokens_by_source"]
    assert sum(int(r["happy"]) for r in hist) == by_source["happy"]["fired"] and sum(int(r["baseline"]) for r in hist) == 0
    from PIL import Image

    with Image.open(out / f"MI5_{happy}.png") as img:
        assert img.size[0] > 1200 and np.asarray(img.convert("L"), dtype=float).std() > 20
    record = json.loads((out / "MechInterpFeatureInspect_run.json").read_text())
    assert "BOS" in record["filtered"] and record["features"] == [happy, angry, bos]
    # Beyond the top 8: one text at each lower activation level, and the top text of each other source
    # where it fires, each saying why it is there (the mined corpus has its own section).
    card = json.loads((out / f"feature_{happy}.json").read_text())
    whys = [ex["why"] for ex in card["more_examples"]]
    assert [w.split(" of ")[0] for w in whys[:3]] == ["upper quartile", "median", "lower quartile"]
    shown = card["top_examples"] + card["more_examples"]
    fires_in = {s for s, v in card["fired_tokens_by_source"].items() if v["fired"]}
    assert fires_in == {"happy"} and {ex["source"] for ex in shown} == fires_in
    assert len({ex["text_index"] for ex in shown}) == len(shown)  # no text shown twice
    # index.html links every card written.
    index = (out / "index.html").read_text()
    for feature in (happy, angry, bos):
        assert f'href="feature_{feature}.html"' in index


def test_statistics_exclude_bos_and_padding(loaded_toy, world):
    """Batching (padding) and BOS must not leak into the per-token activations."""
    texts = ["The teacher was glad.", "A much longer sentence, so the first one is padded, and was thrilled."]
    happy, bos = world.planted.concept["happy"], world.planted.bos
    fa = collect_feature_activations(loaded_toy, texts, ["a", "b"], [happy, bos], batch_size=2)
    single = collect_feature_activations(loaded_toy, texts[:1], ["a"], [happy, bos], batch_size=1)
    ids = loaded_toy.model.tokenizer.encode(texts[0], add_special_tokens=False)
    assert fa.acts[0].shape == (len(ids), 2)  # text tokens only: no BOS row, no padding rows
    np.testing.assert_allclose(fa.acts[0], single.acts[0], atol=1e-5)
    assert fa.firing(bos) == (0, sum(len(a) for a in fa.acts))
    card = build_card(loaded_toy, fa, happy, n_examples=5)
    assert sorted(e.tokens[e.peak] for e in card.examples) == [" glad", " thrilled"]


def test_from_results_picks_top_n_per_group(tmp_path):
    path = tmp_path / "feature_stats.csv"
    header = ["group", "feature", "rank", "mean_group", "mean_baseline", "frac_active_group", "frac_active_baseline",
              "auroc", "effect_size", "p_value", "q_value", "replicated", "neuronpedia_url"]
    rows = [["happy", 501, 1], ["happy", 17, 2], ["happy", 33, 3], ["happy", 286, ""], ["angry", 409, 1], ["angry", 501, 2],
            ["angry", 8, 3]]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([r + [1.0, 0.1, 0.5, 0.0, 0.9, 1.2, 1e-4, 1e-3, True, ""] for r in rows])
    picks = read_results_csv(path, top_n=2).picks
    assert [(p.group, p.feature, p.rank) for p in picks] == [("happy", 501, 1), ("happy", 17, 2), ("angry", 409, 1)]
    bad = tmp_path / "bad.csv"
    bad.write_text("feature,score\n1,2\n", encoding="utf-8")
    with pytest.raises(UserError, match="lacks the column"):
        read_results_csv(bad, 3)


def _results(path, rows, **extra):
    """A minimal feature_stats.csv: rows of (group, feature, rank, q_value, replicated)."""
    header = ["group", "feature", "rank", "q_value", "replicated", *extra]
    constant = [v for v in extra.values() if v is not None]  # None: the rows carry that column themselves
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([list(r) + constant for r in rows])
    return path


def test_from_results_gate_skips_what_is_not_significant_or_not_replicated(tmp_path):
    path = _results(tmp_path / "stats.csv", [
        ("happy", 501, 1, 1e-8, "yes"), ("happy", 17, 2, 0.01, "no"), ("happy", 33, 3, 0.02, "yes"),
        ("control", 90, 1, 1.0, "not tested"), ("control", 91, 2, 0.6, "not tested"),
    ], alpha="0.05")
    selection = read_results_csv(path, top_n=3)
    assert [p.feature for p in selection.picks] == [501, 33]  # 17 did not replicate; control has nothing
    assert [p.feature for p in selection.skipped] == [17, 90, 91]
    assert "skipped 3 features" in selection.note() and "--include-nonsignificant" in selection.note()
    assert selection.picks[0].describe() == "happy rank 1, q = 1e-08, replicated"
    # The null group's rank-1 feature is taken only on request.
    assert [p.feature for p in read_results_csv(path, 1, include_nonsignificant=True).picks] == [501, 90]
    with pytest.raises(UserError, match="none of the top 1 features of any group passes"):
        read_results_csv(_results(tmp_path / "null.csv", [("control", 90, 1, 1.0, "no")]), 1)


def test_from_results_gate_requires_concept_verdicts_when_the_table_has_them(tmp_path):
    # The verdict column comes from Chapter 2's confound checks.
    path = _results(tmp_path / "stats.csv", [("happy", 7, 1, 1e-9, "yes", "positional"),
                                             ("happy", 501, 2, 1e-8, "yes", "concept")], verdict=None)
    selection = read_results_csv(path, top_n=2)
    assert [p.feature for p in selection.picks] == [501] and selection.skipped[0].verdict == "positional"


def test_results_from_another_sae_are_refused(tmp_path):
    from mechinterp.core.provenance import Provenance

    path = _results(tmp_path / "stats.csv", [("angry", 413, 1, 1e-8, "yes")],
                    model="toy-gpt2", sae="sha256:0123456789abcdef", hook="blocks.8.hook_resid_pre")
    loaded_here = Provenance("gpt2-small", "gpt2-small-res-jb/blocks.8.hook_resid_pre", "blocks.8.hook_resid_pre")
    with pytest.raises(UserError, match="was made with SAE sha256:0123456789abcdef .*loaded: gpt2-small-res-jb"):
        read_results_csv(path, 1, provenance=loaded_here)
    same = Provenance("toy-gpt2", "sha256:0123456789abcdef", "blocks.8.hook_resid_pre")
    assert [p.feature for p in read_results_csv(path, 1, provenance=same).picks] == [413]


def test_feature_ids_are_validated(world, capsys):
    with pytest.raises(UserError, match="ids run from 0 to 511"):
        validate_features([3, 512], 512)
    with pytest.raises(UserError, match="ids run from 0 to 511"):
        validate_features([-1], 512)
    assert ch3.main(["--demo", "--feature", "600", "--out", str(Path(world.root) / "unused")]) == 2
    assert "feature 600 does not exist" in capsys.readouterr().err


def test_terminal_highlighting_and_untrusted_tokens():
    ex = Example(rank=1, text_index=0, source="g", tokens=["A", " \x1b[31mred", " was", " glad"],
                 acts=np.array([0.0, 0.5, 0.0, 2.0], dtype=np.float32), peak=3)
    plain = highlight_terminal(ex, 2.0, color=False)
    assert plain == "A [\\x1b[31mred:0.50] was [[glad:2.00]]"
    coloured = highlight_terminal(ex, 2.0, color=True)
    assert "\x1b[30;48;5;" in coloured and ";1;4m" in coloured  # background levels, peak bold + underlined
    assert "\x1b[31m" not in coloured  # the token's own escape sequence is neutralised
    assert safe_text("a\nb\tc\x07") == "a↵b→c\\x07"


def test_html_card_escapes_untrusted_text(loaded_toy, world):
    happy = world.planted.concept["happy"]
    texts = ['<script>alert("x")</script> & the <b>teacher</b> was glad', "The driver was late."]
    fa = collect_feature_activations(loaded_toy, texts, ["corpus", "baseline"], [happy], batch_size=2)
    card = build_card(loaded_toy, fa, happy, n_examples=5)
    assert len(card.examples) == 1 and card.examples[0].tokens[card.examples[0].peak] == " glad"
    page = render_html(card, "title <i>", is_demo=True)
    tags, text = _parse(page)
    assert "script" not in tags and "i" not in tags and "img" not in tags
    # The hostile text is shown literally, as text (each token in its own span).
    assert '<script>alert("x")</script> & the <b>teacher</b> was glad' in text
    assert "title <i>" in text
    assert "http" not in page  # no Neuronpedia link for the toy SAE, and nothing loaded from the network


def _parse(page: str) -> tuple[set[str], str]:
    """The tag names in an HTML page, and its visible text with the spans' text joined."""
    from html.parser import HTMLParser

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags: set[str] = set()
            self.text: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.tags.add(tag)

        def handle_data(self, data):
            self.text.append(data)

    parser = Collect()
    parser.feed(page)
    return parser.tags, "".join(parser.text)


def _as_written(card, loaded) -> dict:
    """A card as the script writes feature_<id>.json (JSON's own types)."""
    return json.loads(json.dumps(card.to_dict() | {"title": loaded.title, "provenance": loaded.provenance.to_dict()}))


def test_feature_cards_is_what_the_script_computes(world, tmp_path, capsys):
    """The notebook entry point gives the demo run's cards, number for number, and their reprs say so."""
    out = tmp_path / "out"
    assert ch3.main(["--demo", "--quiet", "--out", str(out)]) == 0
    brief = capsys.readouterr().out
    # The terminal gets a short summary; the full report, every card in full, is saved beside the cards.
    assert len(brief.splitlines()) <= 60 and "Top 3 of your texts:" in brief and "MechInterpFeatureInspect_report.txt" in brief
    printed = (out / "MechInterpFeatureInspect_report.txt").read_text(encoding="utf-8")
    record = json.loads((out / "MechInterpFeatureInspect_run.json").read_text())
    assert "baseline" not in record["args"]  # not given: the run records the flags it always had

    loaded = load(resolve_source(SourceOptions(demo=True)))
    texts, groups, _ = collect_texts(demo_prompts_dir(), True, None)
    with demo_threads(True):
        choice = choose_features([], None, 3, True, loaded.sae.d_sae)
        cards = feature_cards(loaded, choice.features, texts, groups, origins={f: choice.origin(f) for f in choice.features})
    assert [c.feature for c in cards] == record["features"] == list(world.planted.concept.values())
    for card in cards:
        assert _as_written(card, loaded) == json.loads((out / f"feature_{card.feature}.json").read_text())
        assert format_card_text(card, loaded.title, color=False) in printed
    assert record["n_tokens"] == cards[0].fired_total[1] and record["filtered"] == cards[0].filtered

    # The reprs: short, and the numbers the files hold.
    assert repr(choice) == "FeatureChoice([501, 409]: the demo's planted concept features (no --feature given))"
    happy = json.loads((out / f"feature_{world.planted.concept['happy']}.json").read_text())
    fired, total = happy["fired_tokens_by_source"]["happy"]["fired"], happy["fired_tokens_by_source"]["happy"]["tokens"]
    top, promoted = happy["top_examples"][0], happy["promoted"][:3]
    text = repr(cards[0])
    assert text == (
        f"FeatureCard(#{happy['feature']} (planted 'happy' feature); fires on {fired} of "
        f"{sum(v['tokens'] for v in happy['fired_tokens_by_source'].values()):,} tokens "
        f"({100 * happy['firing_rate_on_prompts']:.3g}%), in {happy['texts_where_it_fires']} of {happy['texts']} texts, "
        f"most in 'happy' ({100 * fired / total:.3g}%); top {top['peak_token']!r} {top['max_activation']:.3f}; promotes "
        + ", ".join(f"{x['token']!r} {x['value']:+.3g}" for x in promoted) + ")"
    )
    # Pinned: the word and its carry-over in the 48 happy prompts (regenerate: python -m pytest this test).
    assert "fires on 166 of 2,791 tokens" in text and "top ' cheerful' 3.006" in text and len(text) < 600
    example = cards[0].examples[0]
    assert repr(example) == (f"Example(#1 [happy] max {top['max_activation']:.3f} at ' cheerful': "
                             f"{''.join(top['tokens'])!r})")
    level = cards[0].more_examples[0]
    assert repr(level).startswith(f"Example(#{level.rank} [happy] max {level.max_act:.3f} at {level.tokens[level.peak]!r} "
                                  "(upper quartile of the per-text maxima where it fires")
    assert all(len(repr(x)) < 600 for x in (*cards, *cards[0].examples, *cards[0].more_examples))


def test_example_repr_clips_long_texts():
    tokens = [" a"] * 100 + [" peak"] + [" b"] * 100
    ex = Example(rank=0, text_index=3, source="corpus", tokens=tokens, acts=np.zeros(201, np.float32), peak=100,
                 label="median of the per-window maxima where it fires (~2.5); drawn at random among them",
                 where="document 4")
    assert ex.context(10) == "…" + " a" * 5 + " peak" + " b" * 5 + "…"
    assert ex.context() == "…" + " a" * 30 + " peak" + " b" * 30 + "…"  # 60 characters each side
    assert repr(ex) == (f"Example([corpus, document 4] max 0.000 at ' peak' (median of the per-window maxima where it "
                        f"fires (~2.5); drawn at rando…): {ex.context()!r})")  # 70 characters of the label


def test_baseline_compares_each_card_with_its_group(world, tmp_path, capsys):
    """--baseline GROUP: each card sets its firing rate there beside the busiest other group's."""
    happy, always = world.planted.concept["happy"], world.planted.always_on[0]
    out = tmp_path / "out"
    argv = ["--demo", "--quiet", "--feature", str(happy), "--feature", str(always), "--out", str(out), "--verbose"]
    assert ch3.main([*argv, "--baseline", "baseline"]) == 0
    printed = capsys.readouterr().out
    card = json.loads((out / f"feature_{happy}.json").read_text())
    by_source = card["fired_tokens_by_source"]
    fired = by_source["happy"]["fired"]  # the happy words and the tokens their feature carries over to
    assert card["against_baseline"] == {
        "baseline": "baseline", "fired_tokens": 0, "tokens": by_source["baseline"]["tokens"], "firing_rate": 0.0,
        "top_group": "happy", "top_group_fired_tokens": fired, "top_group_tokens": by_source["happy"]["tokens"],
        "top_group_firing_rate": fired / by_source["happy"]["tokens"],
    }
    rate = f"{100 * fired / by_source['happy']['tokens']:.3g}%"
    line = (f"  against the baseline: fires on {rate} of 'happy' tokens (its busiest group) vs 0% of 'baseline' tokens "
            f"(0 of {by_source['baseline']['tokens']}): never in the baseline")
    assert line in printed.replace("\n    ", " ")  # the terminal wraps the line at 100 columns
    assert "<td>Against the baseline</td><td>fires on " in (out / f"feature_{happy}.html").read_text()
    assert json.loads((out / "MechInterpFeatureInspect_run.json").read_text())["args"]["baseline"] == "baseline"

    # A feature that fires everywhere: its busiest group beside the baseline, as a ratio of the two rates.
    on = json.loads((out / f"feature_{always}.json").read_text())
    rates = {s: v["fired"] / v["tokens"] for s, v in on["fired_tokens_by_source"].items()}
    busiest = max((s for s in rates if s != "baseline"), key=rates.get)
    assert on["against_baseline"]["top_group"] == busiest and rates["baseline"] > 0
    assert on["against_baseline"]["top_group_firing_rate"] == rates[busiest]
    assert f"{rates[busiest] / rates['baseline']:.3g} times the baseline's rate" in printed.replace("\n    ", " ")

    # Another group can be the reference; one that is not among the prompts is refused before loading.
    cards = feature_cards(load(resolve_source(SourceOptions(demo=True))), [happy], ["The teacher was glad."],
                          ["happy"], CardOptions(baseline="happy"))
    # It fires on ' glad' and on the '.' it carries over to.
    assert cards[0].against_baseline().group is None and cards[0].against_baseline().fired == 2
    assert ch3.main([*argv, "--baseline", "sad"]) == 2
    assert ("baseline group 'sad' is not among the prompt groups; available: angry, baseline, calm, control, "
            "happy") in capsys.readouterr().err
    with pytest.raises(UserError, match="top_prompts must be at least 1"):
        CardOptions(top_prompts=0)
