"""README.md and docs/*.md: short, linked, runnable, and showing what the code prints today.

What is checked where.

In the default suite (``python -m pytest``):

* **Length**: README.md has fewer than 7,000 words and each chapter fewer than 1,600 (words counted
  like ``wc -w``); each "idea in code" block has at most 25 lines.
* **Commands**: every "Run it" block shows a ``--demo`` form of every script it runs; every command
  line in README.md parses with its script's own argument parser; the commands whose output the
  examples show are the ones the README shows.
* **Links**: every relative link in README.md and docs/*.md points to an existing file, and every
  ``#anchor`` to a heading of its page.
* **Examples**: every marked example region of README.md and docs/*.md equals a fresh run of its
  command (``tools/update_readme_examples.py``: chapters 1, 2, 2 with ``--paired``, 3, 4 and 6, and
  every script's ``--help``), with the tool's own excerpts and masking. The runs are in-process, in a
  temporary folder laid out like a checkout: the session's demo world linked in as ``.cache/demo``,
  ``MECHINTERP_CACHE=.cache``, ``--out Images``, so paths print exactly as in the tool's runs.
* **The idea in code**: the loading block and the blocks of chapters 1, 2, 3, 4 and 6 run exactly as
  written, in that folder, and agree with the scripts: Chapter 1's top 20 features and activations
  equal ``MI1.csv`` (1e-4), also through the ``DEMO = None`` branch (which in the test session loads
  the toy world installed under GPT-2's real names); Chapter 2's top feature, its p and q and the
  number of features tested equal ``feature_stats.csv`` of a ``--no-holdout --groups happy`` run;
  Chapter 3's promoted tokens and values equal ``MI5_501.csv``, its strongest activation and firing
  count the card's; Chapter 4's KL and Δ log P equal ``MI6_501.json`` (1e-4); Chapter 6's rows plus
  ``sae_bias`` equal the pre-activation on every firing token (1e-4), and every component's mean, so
  the top component, equals ``MI9_501.csv``.

Marked slow (``python -m pytest -m slow tests/test_readme.py``, about three minutes): Chapter 5's two
trainings (``--demo`` and ``--synthetic``) regenerate their example regions, and Chapter 5's block
finds the script's ground-truth latents and cosines (``MechInterpTrainSAE_run.json``).

When an example is stale: ``python tools/update_readme_examples.py`` rewrites it.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import importlib
import io
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import update_readme_examples as tool  # noqa: E402

README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_WORDS, MAX_CHAPTER_WORDS, MAX_SNIPPET_LINES = 7_000, 1_600, 25
FAST_RUNS = [key for key in tool.ORDER if key not in tool.SLOW_RUNS]
SNIPPET = re.compile(r"<!-- idea-in-code: (?P<name>[\w ]+) -->\n```python\n(?P<code>.*?)```", re.S)
DEMO_LINE = 'DEMO = ".cache/demo"'


def readme() -> str:
    return README.read_text(encoding="utf-8")


def chapters(text: str) -> dict[str, str]:
    """Each ``## Chapter N`` section, up to the next ``## `` heading."""
    sections = re.split(r"(?m)^(?=## )", text)
    return {re.match(r"## Chapter (\d)", s).group(1): s for s in sections if s.startswith("## Chapter ")}


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"(?ms)^```{lang}\n(.*?)^```", text)


def commands(block: str) -> list[list[str]]:
    """The ``python MechInterp*.py ...`` commands of a bash block, as argument lists (script first)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if len(words) >= 2 and words[0] == "python" and words[1].startswith("MechInterp"):
                out.append(words[1:])
    return out


def snippets() -> dict[str, str]:
    found = {m.group("name"): m.group("code") for m in SNIPPET.finditer(readme())}
    assert set(found) == {"load", *(f"chapter {n}" for n in range(1, 7))}, sorted(found)
    return found


# --- length, commands, links ----------------------------------------------------------------------------


def test_readme_is_short():
    text = readme()
    assert len(text.split()) < MAX_WORDS, f"README.md has {len(text.split())} words"
    parts = chapters(text)
    assert sorted(parts) == ["1", "2", "3", "4", "5", "6"]
    for n, part in parts.items():
        assert len(part.split()) < MAX_CHAPTER_WORDS, f"chapter {n} has {len(part.split())} words"
    for name, code in snippets().items():
        assert len(code.rstrip("\n").split("\n")) <= MAX_SNIPPET_LINES, name


def test_every_run_it_block_has_a_demo_form():
    for n, part in chapters(readme()).items():
        run_it = re.search(r"(?ms)^### Run it\n(.*?)(?=^### )", part)
        assert run_it, f"chapter {n} has no 'Run it' section"
        blocks = fenced(run_it.group(1), "bash")
        assert blocks, f"chapter {n}'s 'Run it' has no command block"
        for block in blocks:
            cmds = commands(block)
            with_demo = {c[0] for c in cmds if "--demo" in c}
            missing = {c[0] for c in cmds} - with_demo
            assert with_demo and not missing, f"chapter {n}: no --demo form for {sorted(missing) or 'any script'}"


def test_every_readme_command_parses():
    cmds = [c for block in fenced(readme(), "bash") for c in commands(block)]
    assert len(cmds) > 20
    for script, *args in cmds:
        module = importlib.import_module(Path(script).stem)
        try:
            module.parse_args(args)
        except SystemExit as stop:
            pytest.fail(f"python {script} {' '.join(args)}: exit {stop.code}")


def test_examples_come_from_commands_the_readme_shows():
    text = readme()
    shown = {" ".join(c) for block in fenced(text, "bash") for c in commands(block)}
    for key in tool.runs_needed([text]):
        assert " ".join(tool.RUNS[key]) in shown, f"README examples come from {tool.RUNS[key]}, not shown"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a page (code blocks skipped; repeats get -1, -2 ...)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"(?m)^#{1,6} (.+)$", re.sub(r"(?ms)^```.*?^```", "", markdown)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def links(path: Path) -> list[tuple[Path, str]]:
    """Relative links and images of a markdown file: (target file, anchor); code blocks skipped."""
    text = re.sub(r"(?ms)^ *```.*?^ *```", "", path.read_text(encoding="utf-8"))
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        out.append(((path.parent / file).resolve() if file else path, anchor))
    return out


def test_relative_links_point_to_existing_files_and_headings():
    checked = 0
    for doc in DOC_FILES:
        for target, anchor in links(doc):
            rel = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target
            assert target.exists(), f"{doc.relative_to(ROOT)} links to {rel}, which does not exist"
            if anchor and target.suffix == ".md":
                assert anchor in github_anchors(target.read_text(encoding="utf-8")), \
                    f"{doc.relative_to(ROOT)} links to {rel}#{anchor}: no such heading"
            checked += 1
    assert checked > 50


# --- fresh runs, in a folder laid out like a checkout ------------------------------------------------------


@contextlib.contextmanager
def in_checkout(work: Path):
    """Run in ``work`` as the tool does: project cache ``.cache`` there, 100 columns."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MECHINTERP_CACHE", ".cache")
        mp.setenv("COLUMNS", tool.COLUMNS)
        yield


def run_in_process(argv: list[str]) -> str:
    """A chapter script's ``main`` in this process; its stdout (``--help`` exits through SystemExit)."""
    script, *flags = argv
    module = importlib.import_module(Path(script).stem)
    buffer = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", [script, *flags])  # argparse names the program after argv[0]
        with contextlib.redirect_stdout(buffer):
            try:
                code = module.main(flags)
            except SystemExit as stop:
                code = stop.code
    assert code in (0, None), f"python {' '.join(argv)} exited {code}"
    return buffer.getvalue()


class Checkout:
    """The work folder, and the masked output of every run in it so far."""

    def __init__(self, work: Path):
        self.work = work
        self.outputs: dict[str, str] = {}

    def run(self, keys: list[str]) -> None:
        with in_checkout(self.work):
            self.outputs.update(tool.collect(run_in_process, keys))

    def images(self) -> Path:
        return self.work / tool.OUT


@pytest.fixture(scope="module")
def checkout(world, tmp_path_factory) -> Checkout:
    work = tmp_path_factory.mktemp("checkout")
    (work / ".cache").mkdir()
    (work / ".cache" / "demo").symlink_to(world.root, target_is_directory=True)
    done = Checkout(work)
    done.run(FAST_RUNS)
    return done


def stale_regions(outputs: dict[str, str]) -> str:
    """A diff of every doc file whose regions differ from ``outputs`` ("" when none does)."""
    diffs = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        fresh = tool.render(text, outputs)
        if fresh != text:
            rel = str(path.relative_to(ROOT))
            diffs.extend(difflib.unified_diff(text.splitlines(True), fresh.splitlines(True), rel, rel + " (fresh)"))
    return "".join(diffs)


def test_examples_match_a_fresh_run(checkout):
    needed = tool.runs_needed(p.read_text(encoding="utf-8") for p in DOC_FILES)
    assert set(needed) == set(tool.RUNS), f"runs no region uses: {set(tool.RUNS) - set(needed)}"
    diff = stale_regions(checkout.outputs)
    assert not diff, "stale examples; run python tools/update_readme_examples.py\n" + diff


# --- the idea in code ----------------------------------------------------------------------------------


@contextlib.contextmanager
def as_after_the_load_block():
    """Gradients off, as the load block leaves a reader's session; this process's own settings restored after."""
    import torch

    threads = torch.get_num_threads()  # the demo branch sets one thread
    try:
        with torch.no_grad():  # restores the grad mode on exit, whatever the block set
            yield
    finally:
        torch.set_num_threads(threads)


def run_snippet(checkout: Checkout, namespace: dict, name: str) -> dict:
    """Run a README block as written, in the checkout folder, in (a copy of) ``namespace``."""
    ns = dict(namespace)
    with in_checkout(checkout.work), as_after_the_load_block(), contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(snippets()[name], f"README.md ({name})", "exec"), ns)
    ns["_printed"] = printed.getvalue()
    return ns


def load_block(demo: bool) -> str:
    code = snippets()["load"]
    assert DEMO_LINE in code
    return code if demo else code.replace(DEMO_LINE, "DEMO = None")


@pytest.fixture(scope="module")
def demo_ns(checkout) -> dict:
    ns: dict = {}
    with in_checkout(checkout.work), as_after_the_load_block():
        exec(compile(load_block(demo=True), "README.md (load)", "exec"), ns)
    return ns


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def check_chapter1(ns: dict, images: Path) -> None:
    max_act = ns["max_act"].numpy()
    rows = read_csv(images / "MI1.csv")
    top = np.argsort(-max_act, kind="stable")[: len(rows)]
    assert [int(r["feature"]) for r in rows] == top.tolist()
    np.testing.assert_allclose([float(r["max_activation"]) for r in rows], max_act[top], atol=1e-4, rtol=0)
    assert "feature   501  max 2.988  at ' thrilled'" in ns["_printed"]


def test_chapter1_snippet_matches_mi1(checkout, demo_ns):
    check_chapter1(run_snippet(checkout, demo_ns, "chapter 1"), checkout.images())


def test_chapter1_snippet_through_the_gpt2_branch(checkout, world):
    """``DEMO = None`` loads by GPT-2's real names; the test session's offline cache holds the toy world there."""
    ns: dict = {}
    with in_checkout(checkout.work), as_after_the_load_block():
        exec(compile(load_block(demo=False), "README.md (load, DEMO = None)", "exec"), ns)
    check_chapter1(run_snippet(checkout, ns, "chapter 1"), checkout.images())


def test_chapter2_snippet_matches_feature_stats(checkout, demo_ns):
    with in_checkout(checkout.work):
        run_in_process(["MechInterpFeatureMeaning.py", "--demo", "--no-holdout", "--groups", "happy", "--out", "nohold"])
    rows = [r for r in read_csv(checkout.work / "nohold" / "feature_stats.csv") if r["group"] == "happy"]
    first = next(r for r in rows if r["rank"] == "1")
    ns = run_snippet(checkout, demo_ns, "chapter 2")
    best = ns["best"]
    assert int(ns["tested"][best]) == int(first["feature"])
    np.testing.assert_allclose(ns["p"][best], float(first["p_value"]), rtol=1e-4)
    np.testing.assert_allclose(ns["q"][best], float(first["q_value"]), rtol=1e-4)
    np.testing.assert_allclose(ns["auroc"][best], float(first["auroc"]), atol=1e-4)
    assert len(ns["tested"]) == len(rows)  # one row per feature tested


def test_chapter3_snippet_matches_the_card(checkout, demo_ns):
    ns = run_snippet(checkout, demo_ns, "chapter 3")
    tok = ns["model"].to_single_str_token
    ours = {tok(int(t)): float(v) for v, t in zip(ns["promoted"].values, ns["promoted"].indices)}
    rows = [r for r in read_csv(checkout.images() / "MI5_501.csv") if r["direction"] == "promoted"]
    assert ours.keys() == {r["token"] for r in rows}
    for r in rows:
        assert ours[r["token"]] == pytest.approx(float(r["logit_effect"]), abs=1e-4)
    card = json.loads((checkout.images() / "feature_501.json").read_text(encoding="utf-8"))
    peaks = ns["peaks"]
    # The block reads the happy and baseline prompts, the card every group's: #501 fires in happy ones only.
    assert sum(a > 0 for a, _, _ in peaks) == card["texts_where_it_fires"]
    assert max(a for a, _, _ in peaks) == pytest.approx(card["top_examples"][0]["max_activation"], abs=1e-4)


def test_chapter4_snippet_matches_the_ablation(checkout, demo_ns):
    ns = run_snippet(checkout, demo_ns, "chapter 4")
    ablation = json.loads((checkout.images() / "MI6_501.json").read_text(encoding="utf-8"))["ablation"]
    assert ns["n"] == ablation["n_positions"]
    assert ns["kl"] / ns["n"] == pytest.approx(ablation["feature"]["kl"], abs=1e-4)
    assert ns["d_logp"] / ns["n"] == pytest.approx(ablation["feature"]["delta_logp_targets"], abs=1e-4)


def test_chapter6_snippet_matches_the_attribution(checkout, demo_ns):
    ns = run_snippet(checkout, demo_ns, "chapter 6")
    rows, pre, sae_bias = ns["rows"], ns["pre"], float(ns["sae_bias"])
    np.testing.assert_allclose((rows.sum(0) + sae_bias).numpy(), pre.numpy(), atol=1e-4)
    table = read_csv(checkout.images() / "MI9_501.csv")
    means = dict(zip(ns["labels"], ns["mean"].tolist()), sae_bias=sae_bias)
    assert {r["component"] for r in table} == set(means)
    for r in table:
        assert means[r["component"]] == pytest.approx(float(r["mean_contribution"]), abs=1e-4), r["component"]
    top = max(means, key=lambda c: abs(means[c]))
    assert top == table[0]["component"]
    # Over the tokens #501 fires on: its word (the embedding) and the 1-3 tokens after it, which heads 0-2
    # of block 0 bring it to from 1, 2 and 3 tokens back.
    assert [r["component"] for r in table[:5]] == ["sae_bias", "embed", "L0H0", "L0H1", "L0H2"]


# --- Chapter 5: trainings, about a minute each ----------------------------------------------------------


@pytest.mark.slow
def test_chapter5_examples_and_snippet(checkout, demo_ns):
    checkout.run(["5"])  # --demo: trains Images/sae
    record = json.loads((checkout.images() / "MechInterpTrainSAE_run.json").read_text(encoding="utf-8"))
    ns = run_snippet(checkout, demo_ns, "chapter 5")
    for name, planted in record["planted_directions"].items():
        column = ns["cos"][:, planted["reference_feature"]]
        assert int(column.argmax()) == planted["latent"], name
        assert float(column.max()) == pytest.approx(planted["cos"], abs=1e-4), name
    assert 0 < float(ns["explained"]) < 1 and float(ns["l0"]) > 0
    checkout.run(["5s"])  # --synthetic (its run record replaces the one above)
    assert set(tool.SLOW_RUNS) <= set(checkout.outputs)
    diff = stale_regions(checkout.outputs)
    assert not diff, "stale examples; run python tools/update_readme_examples.py\n" + diff
