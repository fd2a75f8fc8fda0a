"""Chapter 2 on what real SAEs and real prompt files bring: a split concept, a topic that co-occurs with
the concept, a sentence-opening template word and a concept that carries over to the next tokens.

The GPT-2-faithful world (tests/gpt2_world.py) plants each of them; tests/concept_designs.py writes
prompt files that put them together (``mixed_design``). The real default command runs on them offline,
as a user would run it, and the tests read what it wrote:

* fear's two half-features are one ``concept (split)`` family (neither is a concept alone);
* joy's weather topic, in most joy prompts, is never an unflagged concept; with the concept's words
  stated in joy.txt it is not a concept at all; joy's planted feature stays rank 1 ``concept``;
* sad's carry-over feature is rank 1 ``concept``; the null group has nothing;
* the opener 'Today' is injected as real sentences that start with it.
"""

from __future__ import annotations

import csv
import re
import shutil

import pytest

from tests import concept_designs as cd
from tests import gpt2_world as gw
from tests import shared_builds
from tests.helpers import ROOT

SCRIPT = ROOT / "MechInterpFeatureMeaning.py"
STATED = "# concept: " + ", ".join(cd.JOY_WORDS)


def _run_all(world: gw.Gpt2World, root, runs: dict[str, list[str]], cache) -> dict[str, str]:
    """Each run as ``python MechInterpFeatureMeaning.py ARGS --verbose`` would run it, one after another in
    this process (``gpt2_world.run_scripts_here``: no second interpreter to import into); the stdout of
    each by name."""
    spec = [{"name": n, "script": str(SCRIPT), "argv": [*a, "--verbose"]} for n, a in runs.items()]
    results = gw.run_scripts_here(world, spec, root / "results.json", cache)
    for name in runs:
        result = results[name]
        assert result["returncode"] == 0, result["stdout"][-3000:] + result["stderr"][-3000:]
    return {name: results[name]["stdout"] for name in runs}


def _rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The mixed design, run as written; then joy alone with its concept words stated in joy.txt."""
    root = tmp_path_factory.mktemp("structures")
    world, _ = shared_builds.gpt2_world(tmp_path_factory, root / "hf")  # a copy of the session's one build
    prompts = root / "prompts"
    prompts.mkdir()
    design = cd.mixed_design()
    for group, lines in design.items():
        (prompts / f"{group}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # The same folder with the concept's words stated in joy.txt (the second run reads this copy).
    stated_prompts = root / "prompts_stated"
    shutil.copytree(prompts, stated_prompts)
    (stated_prompts / "joy.txt").write_text(STATED + "\n" + "\n".join(design["joy"]) + "\n", encoding="utf-8")
    done = _run_all(world, root, {
        "first": ["--prompts", str(prompts), "--out", str(root / "out")],
        "stated": ["--prompts", str(stated_prompts), "--out", str(root / "out_stated"), "--groups", "joy"],
    }, root / "cache")
    first, stated = done["first"], done["stated"]
    return dict(world=world, design=design, root=root, stdout=first, stdout_stated=stated,
                stats=_rows(root / "out" / "feature_stats.csv"), sets=_rows(root / "out" / "concept_word_sets.csv"),
                evidence=_rows(root / "out" / "feature_evidence.csv"),
                stats_stated=_rows(root / "out_stated" / "feature_stats.csv"))


def _group(rows: list[dict], group: str) -> dict[int, dict]:
    return {int(r["feature"]): r for r in rows if r["group"] == group}


def _rank1(rows: dict[int, dict]) -> dict:
    return next(r for r in rows.values() if r["rank"] == "1")


def test_a_split_concept_is_one_concept_split_family(runs):
    planted, fear = runs["world"].planted, _group(runs["stats"], "fear")
    members = sorted((planted.fear_a, planted.fear_b))
    label = "+".join(map(str, members))
    for f in members:
        assert fear[f]["verdict"] == "concept (split)", fear[f]["evidence"]
        assert fear[f]["family"] == label
        assert "alone:" in fear[f]["evidence"]
    assert not [f for f, r in fear.items() if r["verdict"] == "concept"]  # neither half passes alone
    # Groups whose concept is not split get no family.
    assert not [r for r in runs["stats"] if r["group"] != "fear" and r["family"]]
    family = [r for r in runs["evidence"] if r["group"] == "fear" and r["feature"] == label]
    assert len(family) == 1 and family[0]["verdict"] == "concept (split)"
    assert float(family[0]["generalisation_auroc"]) >= 0.7
    assert f"#{members[0]} + #{members[1]} concept (split): #{members[0]} + #{members[1]} together separate fear" \
        in runs["stdout"].replace("\n    ", " ")


def test_a_topic_in_most_joy_prompts_is_flagged_and_the_planted_concept_stays_first(runs):
    planted, joy = runs["world"].planted, _group(runs["stats"], "joy")
    top = _rank1(joy)
    assert int(top["feature"]) == planted.happy and top["verdict"] == "concept" and top["word_set_flag"] == ""
    topic = joy[planted.topic]
    # Concept or not, never an unflagged concept: its word set is named as a second theme.
    assert topic["verdict"] != "concept" or topic["word_set_flag"].startswith("a second theme"), topic
    concepts = [r for r in joy.values() if r["verdict"] == "concept" and not r["word_set_flag"]]
    assert [int(r["feature"]) for r in concepts] == [planted.happy]
    if topic["verdict"] == "concept":
        assert "rest on disjoint word sets" in runs["stdout"]
        assert re.search(rf"^\s+\d+\s+{planted.topic}\s.*concept \(topic\?\)$", runs["stdout"], re.M)


def test_word_set_counts_match_the_prompt_files(runs):
    """concept_word_sets.csv's prompt counts against a count over the prompt texts themselves."""
    design = runs["design"]
    checked = 0
    for row in runs["sets"]:
        words = [w.strip() for w in re.findall(r"'([^']*)'", row["words"])]
        for side, count in ((row["group"], row["prompts_group"]), ("baseline", row["prompts_baseline"])):
            holding = sum(any(re.search(rf"(?<![\w]){re.escape(w)}(?![\w])", line) for w in words)
                          for line in design[side])
            assert int(count) == holding, (row["finding"], side)
        checked += 1
    assert checked >= 4  # fear's family, joy's two, sad's


def test_stated_concept_words_make_the_topic_not_a_concept(runs):
    planted, joy = runs["world"].planted, _group(runs["stats_stated"], "joy")
    assert int(_rank1(joy)["feature"]) == planted.happy and _rank1(joy)["verdict"] == "concept"
    topic = joy[planted.topic]
    assert topic["verdict"] != "concept"
    if topic["verdict"] == "context":
        assert topic["evidence"].startswith("not a concept of joy: it rests on")


def test_the_carry_over_concept_is_rank_1_and_the_null_group_has_nothing(runs):
    planted = runs["world"].planted
    sad = _group(runs["stats"], "sad")
    assert int(_rank1(sad)["feature"]) == planted.sad and _rank1(sad)["verdict"] == "concept"
    control = _group(runs["stats"], "control")
    assert not [r for r in control.values() if float(r["q_value"]) < 0.05]
    assert not [r for r in control.values() if r["verdict"] or r["family"]]


def test_a_sentence_opener_is_injected_as_real_sentences(runs):
    """The opener 'Today' goes where it fits, at the start, and the verdict quotes such a sentence."""
    edits = [r for r in runs["evidence"] if r["injection_token"] == "Today"]
    assert edits
    for row in edits:
        text = row["injection_example"]
        assert text.startswith("Today ") and not re.search(r"\wToday|Today\w", text), text
        assert text[len("Today "):] in [line[0].lower() + line[1:] for line in runs["design"]["baseline"]] \
            or text[len("Today "):] in runs["design"]["baseline"], text
    opener = _group(runs["stats"], "joy")[runs["world"].planted.opener]
    assert opener["verdict"] == "lexical", opener["evidence"]
    assert '(as in "Today ' in opener["evidence"]
