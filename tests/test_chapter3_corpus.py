"""Chapter 3 with a mined corpus (``--corpus FILE`` / ``--dataset NAME``), against a brute-force encode.

The corpus is generated from the demo world's sentence frames so that the planted features fire in
known windows: the happy feature in a handful (fewer than a card's top 10, so its top corpus windows
must be exactly the windows holding a happy word), the angry feature in more windows than that (so
the card also shows windows at lower activation levels), and a tail of happy documents beyond
``--max-tokens`` that must never be seen. The reference encodes every window alone with a full
``run_with_cache`` pass (``tests/test_mining.reference``).

The model load is replaced by the session's already loaded toy world (the same weights the demo
loads; the real load is tested by tests/test_chapter3.py), and the figures are drawn for real only in
the first run of the first test (a render costs ~0.4 s; the prompt figure is tested in test_chapter3).
"""

from __future__ import annotations

import csv
import json
import random
import time

import numpy as np
import pytest
from matplotlib.figure import Figure

import MechInterpFeatureInspect as ch3
from mechinterp.cards import corpus as corpora
from mechinterp.cards import mining, report
from mechinterp.cards.card import feature_cards
from mechinterp.cards.figures import corpus_figure
from mechinterp.core import constants
from mechinterp.core.errors import UserError
from mechinterp.core.prompts import collect_texts
from mechinterp.core.toyworld import CONCEPT_WORDS, NEUTRAL_WORDS, make_sentence
from tests.test_mining import reference

WINDOW_TEXT = 127  # the toy SAE's training context (128) minus BOS
START = corpora.CorpusPosition()


@pytest.fixture(scope="module")
def corpus(loaded_toy, tmp_path_factory):
    """The corpus file, the --max-tokens that cuts off its happy tail, and the brute-force reference."""
    rng = random.Random(5)

    def sentence(words=NEUTRAL_WORDS) -> str:
        return make_sentence(rng, rng.choice(words))

    docs = []
    for i in range(18):
        parts = [sentence() for _ in range(7)]
        if i % 4 != 3:  # most of these carry one angry word, at a random place
            parts[rng.randrange(7)] = sentence(CONCEPT_WORDS["angry"])
        if i % 5 == 1:  # a long document, cut into two windows: its happy word in the second
            parts += [sentence() for _ in range(4)] + [sentence(CONCEPT_WORDS["happy"])]
        docs.append(" ".join(parts))
    docs.append("The teacher was glad <|endoftext|> and the driver was furious")  # special-token text
    lines = ["# a comment, not a document", ""] + docs
    tok = loaded_toy.model.tokenizer
    cut = sum(len(tok.encode(d, add_special_tokens=False, split_special_tokens=True)) for d in docs) + 5
    # Beyond --max-tokens: documents full of happy words (the first 5 tokens of the first are inside).
    lines += [" ".join([sentence()] + [sentence(CONCEPT_WORDS["happy"]) for _ in range(5)]) for _ in range(6)]
    path = tmp_path_factory.mktemp("ch3corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    windows, acts = reference(loaded_toy, path, WINDOW_TEXT, max_tokens=cut)
    return path, cut, windows, acts


def blank_figure(*_args, **_kwargs) -> Figure:
    return Figure(figsize=(1, 1))


@pytest.fixture
def run(loaded_toy, tmp_path, monkeypatch, capsys):
    """Run Chapter 3's main() with the toy world already loaded; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(ch3, "load", lambda source, log=None: loaded_toy)
    monkeypatch.setattr(report, "card_figure", blank_figure)
    monkeypatch.setattr(report, "corpus_figure", blank_figure)
    monkeypatch.setattr(constants, "mining_cache_dir", lambda: tmp_path / "mining")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "happy.txt").write_text("The teacher was glad.\nMy sister was thrilled!\n", encoding="utf-8")
    (prompts / "baseline.txt").write_text("The teacher was ready.\n", encoding="utf-8")

    def call(*argv: str) -> tuple[int, str, str]:
        code = ch3.main(["--demo", "--prompts", str(prompts), "--color", "never", "--verbose", *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def card(out, feature: int) -> dict:
    return json.loads((out / constants.CARD_JSON.format(feature=feature)).read_text(encoding="utf-8"))


def holds(window_tokens, words, tok) -> bool:
    ids = {tok.encode(" " + w, add_special_tokens=False)[0] for w in words}
    return bool(ids & set(window_tokens))


def test_cards_show_the_corpus_as_a_brute_force_encode_does(run, corpus, world, loaded_toy, tmp_path, monkeypatch):
    path, cut, windows, acts = corpus
    happy, angry, bos = world.planted.concept["happy"], world.planted.concept["angry"], world.planted.bos
    tok = loaded_toy.model.tokenizer
    dense = np.concatenate(acts)  # [tokens, d_sae], BOS never in it
    peaks = np.stack([a.max(axis=0) for a in acts])  # [windows, d_sae]
    happy_windows = {(d, s) for d, s, chunk in windows if holds(chunk, CONCEPT_WORDS["happy"], tok)}
    angry_windows = {(d, s) for d, s, chunk in windows if holds(chunk, CONCEPT_WORDS["angry"], tok)}
    # The corpus is what the docstring says: few happy windows, more angry ones than a card's top 10.
    assert 3 <= len(happy_windows) <= 10 < len(angry_windows) <= mining.DEFAULT_SAMPLES
    assert dense.shape[0] == cut

    out = tmp_path / "out"
    argv = ["--feature", str(happy), "--feature", str(angry), "--corpus", str(path), "--max-tokens", str(cut),
            "--all-features", "--out", str(out)]
    with monkeypatch.context() as patch:
        patch.setattr(report, "corpus_figure", corpus_figure)  # drawn for real here
        code, printed, err = run(*argv)
    assert code == 0, err
    assert f"mined {cut:,} tokens" in err and "reading the saved pass" not in err

    for feature, words, fired_windows in ((happy, "happy", happy_windows), (angry, "angry", angry_windows)):
        c = card(out, feature)["corpus"]
        # Density: every corpus token up to --max-tokens, BOS never counted.
        assert c["tokens"] == cut and c["fired_tokens"] == int((dense[:, feature] > 0).sum())
        assert c["density"] == pytest.approx((dense[:, feature] > 0).mean(), abs=1e-12)
        assert c["windows_fired"] == len(fired_windows) == int((peaks[:, feature] > 0).sum())
        # Top windows: the windows that hold the planted word, with the brute force's peak values.
        top = c["top_examples"]
        assert len(top) == min(10, len(fired_windows))
        assert all(ex["peak_token"].strip() in CONCEPT_WORDS[words] for ex in top)
        expected = np.sort(peaks[:, feature][peaks[:, feature] > 0])[::-1][: len(top)]
        np.testing.assert_allclose([ex["max_activation"] for ex in top], expected, atol=1e-5)
        shown = {(ex["text_index"], int(ex["where"].split("tokens ")[1].split("-")[0])) for ex in top}
        assert shown <= fired_windows
    assert shown_happy(out, happy) == happy_windows  # every happy window is a top one, and nothing else

    # Below the top 10 (angry fires in more windows): one window per level, nearest to the exact quantile
    # of the per-window maxima, none of them a top window.
    c = card(out, angry)["corpus"]
    maxima = peaks[:, angry][peaks[:, angry] > 0]
    for (name, value), q in zip(c["levels_of_window_maxima"].items(), (0.75, 0.5, 0.25)):
        assert value == pytest.approx(float(np.quantile(maxima, q)), abs=1e-5), name
    levels = c["level_examples"]
    assert 1 <= len(levels) <= 3 and all(ex["peak_token"].strip() in CONCEPT_WORDS["angry"] for ex in levels)
    top_windows = {(ex["text_index"], ex["where"]) for ex in c["top_examples"]}
    assert not {(ex["text_index"], ex["where"]) for ex in levels} & top_windows
    assert levels[0]["why"].startswith("upper quartile of the per-window maxima")


    # The histogram beside the figure: every firing token and window, on the pass's bins.
    with open(out / constants.MI5_CORPUS_CSV.format(feature=angry), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["tokens"]) for r in rows) == card(out, angry)["corpus"]["fired_tokens"]
    assert sum(int(r["windows_by_peak"]) for r in rows) == len(angry_windows)
    from PIL import Image

    with Image.open(out / constants.MI5_CORPUS_PNG.format(feature=angry)) as img:
        assert img.size[0] > 1000 and np.asarray(img.convert("L"), dtype=float).std() > 20

    # --all-features: every feature's density and histogram, as the brute force counts them.
    with open(out / constants.CORPUS_FEATURES_CSV, encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [int(r["feature"]) for r in table] == list(range(loaded_toy.sae.d_sae))
    np.testing.assert_array_equal([int(r["fired_tokens"]) for r in table], (dense > 0).sum(0))
    np.testing.assert_allclose([float(r["density"]) for r in table], (dense > 0).mean(0), rtol=0, atol=1e-15)
    assert table[happy]["top_token"].strip() in CONCEPT_WORDS["happy"]
    # The BOS feature fires hugely at BOS only: never in the corpus once BOS is excluded.
    assert table[bos]["fired_tokens"] == "0" and table[bos]["top_doc"] == "" and int(table[bos]["windows"]) > 20
    with open(out / constants.CORPUS_HIST_CSV, encoding="utf-8") as f:
        reader = csv.reader(f)
        header, hist = next(reader), [list(map(int, row[3:])) for row in reader]
    inner = mining.MiningOptions(all_features=True).hist_edges()[1:-1]
    for feature in (happy, angry, 7, 300, world.planted.always_on[0]):
        values = dense[:, feature][dense[:, feature] > 0]
        assert hist[feature] == np.bincount(np.searchsorted(inner, values, side="right"),
                                            minlength=len(inner) + 1).tolist()
    assert header[3] == "0.0-0.01"

    # The page, the index and the run record.
    page = (out / constants.CARD_HTML.format(feature=angry)).read_text(encoding="utf-8")
    assert "In the corpus" in page and page.count('src="data:image/png;base64,') == 2
    assert "corpus density" in (out / constants.CARDS_INDEX_HTML).read_text(encoding="utf-8")
    record = json.loads((out / "MechInterpFeatureInspect_run.json").read_text(encoding="utf-8"))
    assert record["corpus"]["tokens"] == cut and record["corpus"]["max_tokens"] == cut
    assert "Density in the corpus" in printed and "Lower activation levels" in printed

    # Again: already mined, nothing encoded; a run for fewer features reuses the every-feature pass;
    # --fresh mines again, to the same numbers.
    passes = []
    real_run = mining._run
    monkeypatch.setattr(mining, "_run", lambda *a, **k: passes.append(1) or real_run(*a, **k))
    first = card(out, angry)["corpus"]
    code, _, err = run(*argv)
    assert code == 0 and "reading the saved pass: " in err and passes == []
    assert card(out, angry)["corpus"] == first
    code, printed, err = run("--feature", str(angry), "--corpus", str(path), "--max-tokens", str(cut),
                             "--out", str(tmp_path / "fewer"))
    assert code == 0 and "reading the saved pass over every feature" in err and passes == []
    assert card(tmp_path / "fewer", angry)["corpus"] == first
    code, _, err = run(*argv, "--fresh")
    assert code == 0 and "reading the saved pass" not in err and passes == [1]
    assert card(out, angry)["corpus"] == first


def shown_happy(out, happy) -> set[tuple[int, int]]:
    top = card(out, happy)["corpus"]["top_examples"]
    return {(ex["text_index"], int(ex["where"].split("tokens ")[1].split("-")[0])) for ex in top}


def test_interrupted_pass_continues(run, corpus, world, tmp_path, monkeypatch):
    """Ctrl-C during the pass saves it; the same command continues from there to the same numbers."""
    path, cut, _, _ = corpus
    angry = world.planted.concept["angry"]
    argv = ["--feature", str(angry), "--corpus", str(path), "--max-tokens", str(cut), "--batch-size", "2"]
    code, _, _ = run(*argv, "--out", str(tmp_path / "whole"), "--fresh")
    assert code == 0
    calls = []

    def interrupt(self, done, total):
        calls.append(done)
        if len(calls) == 4:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(report.MiningProgress, "__call__", interrupt)
        code, _, err = run(*argv, "--out", str(tmp_path / "cut"), "--fresh")
    assert code == 130 and "saved the progress so far" in err
    code, _, err = run(*argv, "--out", str(tmp_path / "cut"))
    assert code == 0 and "resuming from" in err and f"{calls[-1]:,} tokens" in err
    assert card(tmp_path / "cut", angry)["corpus"] == card(tmp_path / "whole", angry)["corpus"]


def test_offline_dataset_fails_at_once_in_one_line(run, monkeypatch, capsys):
    """The Hub is unreachable here: --dataset must say so in one line, exit 1 (no network), and load nothing."""
    import datasets
    from huggingface_hub import constants as hub
    from huggingface_hub.utils import close_session

    monkeypatch.setattr(ch3, "load", lambda *a, **k: pytest.fail("loaded the model before failing"))
    argv = ["--feature", "3", "--dataset", "Skylion007/openwebtext", "--max-tokens", "1M", "--out", "unused"]
    start = time.perf_counter()
    code, _, err = run(*argv)  # the test session runs with HF_HUB_OFFLINE=1
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ")
    assert "HF_HUB_OFFLINE is set" in err and "--corpus FILE" in err
    # Without HF_HUB_OFFLINE, the Hub cannot be reached either (the discard port: nothing listens).
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")
    close_session()
    try:
        code, _, err = run(*argv)
    finally:
        close_session()
    assert code == 1 and err.count("\n") == 1 and "cannot be reached from here" in err and "--corpus FILE" in err
    assert time.perf_counter() - start < 10


def test_a_streamed_dataset_needs_the_network_only_to_mine_it(run, corpus, world, tmp_path, monkeypatch):
    """Online (the Hub played by the local file), the dataset is mined; offline, the finished pass is
    read back; offline with --fresh, mining it again fails in one line, exit 1."""
    path = corpus[0]
    argv = ["--feature", str(world.planted.concept["angry"]), "--dataset", "Skylion007/openwebtext",
            "--max-tokens", "600", "--out", str(tmp_path / "out")]
    with monkeypatch.context() as online:
        online.setattr(corpora.HFDatasetCorpus, "ensure_reachable", lambda self: None)
        online.setattr(corpora.HFDatasetCorpus, "documents",
                       lambda self, start=START: corpora.TextFileCorpus(path).documents(start))
        code, _, err = run(*argv)
    assert code == 0 and "mined 600 tokens" in err, err
    described = card(tmp_path / "out", world.planted.concept["angry"])["corpus"]["corpus"]
    assert described == "Hugging Face dataset Skylion007/openwebtext (train split, streamed)"
    code, _, err = run(*argv)  # the session is offline (HF_HUB_OFFLINE=1)
    assert code == 0 and "reading the saved pass: 600 tokens" in err
    code, _, err = run(*argv, "--fresh")
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: the dataset Skylion007/openwebtext")
    assert "HF_HUB_OFFLINE is set" in err and "Traceback" not in err


def test_corpus_flags_need_a_corpus(run):
    for flags in (["--all-features"], ["--fresh"], ["--max-tokens", "5000"], ["--dataset-split", "test"]):
        code, _, err = run("--feature", "3", *flags, "--out", "unused")
        assert code == 2 and "is about corpus mining: add --corpus FILE" in err, flags
    assert [corpora.token_count(t) for t in ("100000", "100_000", "100k", "1M", "2.5k", "all")] == [
        100_000, 100_000, 100_000, 1_000_000, 2_500, corpora.ALL_TOKENS]
    with pytest.raises(SystemExit):
        ch3.parse_args(["--max-tokens", "0"])


def test_feature_cards_with_a_corpus_are_the_scripts(run, corpus, world, loaded_toy, tmp_path):
    """A notebook's pass and cards (no checkpoints, no flags) equal the script's files; the reprs say what they hold."""
    path, cut, windows, acts = corpus
    angry = world.planted.concept["angry"]
    out = tmp_path / "out"
    code, _, err = run("--feature", str(angry), "--corpus", str(path), "--max-tokens", str(cut), "--out", str(out))
    assert code == 0, err
    written = card(out, angry)

    mined = mining.mine(loaded_toy, corpora.TextFileCorpus(path), mining.MiningOptions(features=(angry,), max_tokens=cut))
    texts, groups, _ = collect_texts(tmp_path / "prompts", True, None)
    cards = feature_cards(loaded_toy, [angry], texts, groups, corpus=mined, corpus_scope=report.corpus_scope(mined, cut),
                          origins={angry: "given with --feature"})
    data = cards[0].to_dict() | {"title": loaded_toy.title, "provenance": loaded_toy.provenance.to_dict()}
    assert json.loads(json.dumps(data)) == written

    peaks = np.stack([a.max(axis=0) for a in acts])[:, angry]
    assert repr(mined) == (f"MiningResult(1 feature over {cut:,} tokens of {path} ({len(windows)} windows of 128 tokens, "
                           f"{mined.n_documents} documents); top 10 windows each; complete; density #{angry} "
                           f"{100 * written['corpus']['density']:.3g}%)")
    c = written["corpus"]
    assert repr(cards[0].corpus) == (
        f"CorpusEvidence(fires on {100 * c['density']:.3g}% of {cut:,} tokens of {path} (in {int((peaks > 0).sum())} of "
        f"{len(windows)} windows of 128); max {peaks.max():.3f}, typical max ~{c['typical_max_activation_approx']:.3g}; "
        f"10 top windows, top {c['top_examples'][0]['peak_token']!r} {peaks.max():.3f}; "
        f"{len(c['level_examples'])} at lower levels)")
    top = cards[0].corpus.examples[0]
    assert repr(top).startswith(f"Example(#1 [corpus, {c['top_examples'][0]['where']}] max {peaks.max():.3f} at "
                                f"{c['top_examples'][0]['peak_token']!r}: ")
    assert f"corpus density {100 * c['density']:.3g}% of {cut:,} tokens)" in repr(cards[0])
    assert all(len(repr(x)) < 600 for x in (mined, cards[0], cards[0].corpus, top))


def test_corpus_options_are_checked_where_they_are_made(tmp_path):
    """The "corpus mining" options refuse what the command line refuses, for a notebook too."""
    assert corpora.CorpusOptions().open() is None and corpora.CorpusOptions().token_limit == corpora.DEFAULT_MAX_TOKENS
    text = tmp_path / "docs.txt"
    text.write_text("one document\n", encoding="utf-8")
    assert corpora.CorpusOptions(corpus=text, max_tokens=corpora.ALL_TOKENS).token_limit is None
    assert corpora.CorpusOptions(corpus=text, max_tokens=5_000).token_limit == 5_000
    assert corpora.CorpusOptions(corpus=text).open() == corpora.TextFileCorpus(text)
    dataset = corpora.CorpusOptions(dataset="Skylion007/openwebtext", dataset_split="validation").open()
    assert dataset == corpora.HFDatasetCorpus("Skylion007/openwebtext", split="validation", column="text")
    with pytest.raises(UserError, match="--max-tokens is about corpus mining: add --corpus FILE"):
        corpora.CorpusOptions(max_tokens=5_000)
    with pytest.raises(UserError, match="--text-column applies to --dataset, not to --corpus FILE"):
        corpora.CorpusOptions(corpus=text, text_column="body")
    with pytest.raises(UserError, match="not both"):
        corpora.CorpusOptions(corpus=text, dataset="Skylion007/openwebtext")
    with pytest.raises(UserError, match="corpus file .* does not exist"):
        corpora.CorpusOptions(corpus=tmp_path / "missing.txt").open()
