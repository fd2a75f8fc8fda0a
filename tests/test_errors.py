"""Every user mistake gets a one-line message naming the problem and the fix, the right exit status,
and no traceback; interrupted runs lose nothing and leave nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import MechInterpFeatureMeaning as ch2
import MechInterpInitialInvestigation as ch1
from mechinterp.core.cache import SHARD_PROMPTS, shards, stored_prompts
from tests.helpers import ROOT


def run_main(module, argv: list[str], capsys) -> tuple[int, str, str]:
    """Call a script's main() as the shell would: argparse errors become exit codes too."""
    try:
        code = module.main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write(folder: Path, name: str, content: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def prompt_lines(word: str, n: int) -> str:
    return "".join(f"My friend number {i} was {word} about the weather today.\n" for i in range(n))


@pytest.fixture
def prompts(tmp_path) -> Path:
    """A small valid prompt folder; each test breaks it in one way."""
    folder = tmp_path / "prompts"
    write(folder, "baseline.txt", prompt_lines("calm", 8))
    write(folder, "happy.txt", prompt_lines("delighted", 8))
    return folder


def ch2_args(prompts: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--prompts", str(prompts), "--out", str(tmp_path / "out"), "--quiet", *extra]


PROMPT_CASES = {
    "folder missing": (lambda p: p / "nope", "does not exist"),
    "folder empty": (lambda p: [f.unlink() for f in p.iterdir()] and p or p, "has no .txt files"),
    "file empty": (lambda p: write(p, "happy.txt", "") and p, "happy.txt is empty"),
    "only comments": (lambda p: write(p, "happy.txt", "# nothing yet\n\n   \n# still nothing\n") and p, "has only comments"),
    "not utf-8": (lambda p: write(p, "happy.txt", b"fine line\nanother\ncaf\xe9 au lait\n") and p, "is not UTF-8 text (bad byte on line 3)"),
    "NUL byte": (lambda p: write(p, "happy.txt", b"one\ntwo\x00three\n") and p, "contains a NUL byte on line 2"),
    "too few prompts": (lambda p: write(p, "happy.txt", prompt_lines("glad", 3)) and p, "need at least 5 per group"),
}


@pytest.mark.parametrize("case", list(PROMPT_CASES))
def test_bad_prompt_folders(case, prompts, tmp_path, capsys):
    breaker, message = PROMPT_CASES[case]
    folder = breaker(prompts)
    code, _, err = run_main(ch2, ch2_args(folder, tmp_path), capsys)
    assert code == 2, err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--groups", "hapy"], "unknown group(s) hapy in"),
        (["--baseline", "neutral"], "baseline group 'neutral' not found"),
        (["--holdout", "1.5"], "must be strictly between 0 and 1"),
        (["--holdout", "0"], "must be strictly between 0 and 1"),
        (["--top-k", "0"], "must be at least 1"),
        (["--alpha", "abc"], "expected a number between 0 and 1"),
        (["--sae-release", "gpt2-small-res-jbb"], "Did you mean: gpt2-small-res-jb"),
        (["--sae-id", "blocks.8.hook_resid_post"], "Close matches: blocks.11.hook_resid_post, blocks.8.hook_resid_pre"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--tag", "../elsewhere"], "must be a plain name"),
    ],
)
def test_bad_options(extra, message, prompts, tmp_path, capsys):
    if extra[0] == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_main(ch2, ch2_args(prompts, tmp_path, *extra), capsys)
    assert code == 2, err
    assert message in err and "Traceback" not in err
    if "available" in message or "group" in message:
        assert "available: baseline, happy" in err


def test_mistyped_option_gets_a_suggestion(capsys):
    code, _, err = run_main(ch1, ["--tpo-k", "3"], capsys)
    assert code == 2 and "unrecognized arguments: --tpo-k 3 (did you mean --top-k?)" in err


def test_duplicates_warn_and_dedupe_or_refuse(world, prompts, tmp_path, capsys):
    write(prompts, "happy.txt", prompt_lines("delighted", 8) + "My friend number 1 was delighted about the weather today.\n")
    write(prompts, "baseline.txt", prompt_lines("calm", 8) + "My friend number 2 was delighted about the weather today.\n")
    code, _, err = run_main(ch2, ch2_args(prompts, tmp_path), capsys)
    assert code == 0, err
    assert "warning: happy.txt: 1 duplicate line of 1 distinct prompt dropped (first occurrence kept" in err
    assert "warning: happy.txt: 1 line (1 distinct prompt) also in baseline.txt dropped" in err
    record = json.loads((tmp_path / "out" / "MechInterpFeatureMeaning_run.json").read_text())
    assert record["n_prompts"] == {"baseline": 9, "happy": 7}
    assert any("happy.txt: 1 duplicate line" in note for note in record["filtered"])
    code, _, err = run_main(ch2, ch2_args(prompts, tmp_path, "--duplicates", "error"), capsys)
    assert code == 2 and ("error: happy.txt line 3: prompt 'My friend number 2 was delighted about t...' is "
                          "already in baseline.txt (line 9); remove the duplicate") in err


def test_long_prompt_is_truncated_with_a_warning_naming_it(world, prompts, tmp_path, capsys):
    long_prompt = "The weather was calm " + "and the sky was grey " * 60 + "all day."
    write(prompts, "baseline.txt", prompt_lines("calm", 8) + long_prompt + "\n")
    code, _, err = run_main(ch2, ch2_args(prompts, tmp_path, "--no-cache"), capsys)
    assert code == 0
    assert ("a baseline prompt is longer than the model's context of 128 tokens; only its first 128 tokens "
            "(BOS included) were encoded") in err
    assert "'The weather was calm and the sky" in err


def test_sae_path_problems(world, tmp_path, capsys):
    code, _, err = run_main(ch1, ["--sae-path", str(tmp_path / "missing"), "--out", str(tmp_path)], capsys)
    assert code == 2 and "does not exist or is not a folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_main(ch1, ["--sae-path", str(tmp_path / "empty"), "--out", str(tmp_path)], capsys)
    assert code == 2 and "is not an SAE folder: it needs cfg.json and sae_weights.safetensors" in err


@pytest.mark.parametrize(
    "d_in, hook, model, message",
    [
        (32, "blocks.8.hook_resid_pre", "gpt2-small", "expects width 32 but this model's blocks.8.hook_resid_pre has width 64"),
        (64, "blocks.30.hook_resid_pre", "gpt2-small", "reads blocks.30.hook_resid_pre, which this model does not have"),
        (64, "blocks.8.hook_resid_pre", None, "does not say which model it was trained on; pass --model"),
    ],
)
def test_sae_that_does_not_fit_the_model(world, tmp_path, capsys, d_in, hook, model, message):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    metadata = SAEMetadata(hook_name=hook, prepend_bos=True, model_name=model)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=16, metadata=metadata))
    sae.save_model(tmp_path / "sae")
    code, _, err = run_main(ch1, ["--sae-path", str(tmp_path / "sae"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("below", ["", "sub"])
def test_out_pointing_at_a_file_is_a_usage_error(below, tmp_path, capsys):
    blocker = write(tmp_path, "a_file.txt", "not a folder")
    code, _, err = run_main(ch1, ["--out", str(blocker / below if below else blocker)], capsys)
    assert code == 2 and f"{blocker} is a file, not a folder; pick a folder" in err
    assert len(err.strip().splitlines()) == 1 and blocker.read_text() == "not a folder"


def test_text_that_is_not_utf8_is_a_usage_error(capsys):
    code, _, err = run_main(ch1, ["--demo", "--text", b"caf\xe9".decode("utf-8", "surrogateescape")], capsys)
    assert code == 2 and "--text is not valid UTF-8" in err and "Traceback" not in err


def test_out_of_memory_retries_once_with_smaller_batch(world, prompts, tmp_path, capsys, monkeypatch):
    from mechinterp.core import encoding

    real = encoding.encode_positions
    calls = []

    def flaky(loaded, tokens, valid):
        calls.append(tokens.shape[0])
        if tokens.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(loaded, tokens, valid)

    monkeypatch.setattr(encoding, "encode_positions", flaky)
    code, _, err = run_main(ch2, ch2_args(prompts, tmp_path, "--no-cache", "--batch-size", "8"), capsys)
    assert code == 0 and "out of memory; retrying with --batch-size 4" in err
    # Each encoding pass (the prompts, then the token-injection test's edited prompts) halves once.
    assert calls[0] == 8 and calls[1] == 4 and all(b == 4 for a, b in zip(calls, calls[1:]) if a == 8)

    monkeypatch.setattr(encoding, "encode_positions", lambda *_: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")))
    code, _, err = run_main(ch2, ch2_args(prompts, tmp_path, "--no-cache", "--batch-size", "8"), capsys)
    assert code == 1 and "out of memory even at --batch-size 4; lower --batch-size further" in err


def test_unexpected_errors_are_one_line_unless_debug(prompts, tmp_path, capsys, monkeypatch):
    from mechinterp.meaning import run as meaning_run  # Chapter 2 reads its prompt files there

    monkeypatch.setattr(meaning_run, "load_prompt_sets", lambda *a, **k: 1 / 0)
    code, _, err = run_main(ch2, ch2_args(prompts, tmp_path), capsys)
    assert code == 1 and "unexpected ZeroDivisionError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        ch2.main(ch2_args(prompts, tmp_path, "--debug"))


def test_interrupt_mid_encode_keeps_old_results_and_cache(world, tmp_path, monkeypatch):
    from mechinterp.core.toyworld import demo_corpus

    cache = tmp_path / "cache"
    cache.mkdir()
    os.symlink(world.root, cache / "demo")  # reuse the session's demo world instead of rebuilding it
    prompts = tmp_path / "prompts"
    corpus = list(dict.fromkeys(demo_corpus(1200, seed=11)))  # unique prompts only
    half = len(corpus) // 2
    write(prompts, "baseline.txt", "\n".join(corpus[:half]))
    write(prompts, "happy.txt", "\n".join(corpus[half:]))
    out = tmp_path / "out"
    write(out, "feature_stats.csv", "previous complete result\n")

    env = {**os.environ, "MECHINTERP_CACHE": str(cache)}
    argv = ["--demo", "--prompts", str(prompts), "--out", str(out), "--batch-size", "1"]
    # The run gets Ctrl-C as a terminal delivers it. Started from a background job (`pytest ... &` in a
    # script, as CI may be), this process inherited SIGINT ignored, as a child would, and a Python started
    # with it ignored keeps it so: the run would never see the signal. A handler of our own is reset to
    # the default in the child.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "MechInterpFeatureMeaning.py"), *argv],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if list(cache.glob("activations/*/shard-*.npz")):  # the first shard of SHARD_PROMPTS prompts
            break
        time.sleep(0.05)
    time.sleep(0.5)  # let a few prompts of the next shard finish, so the flush on the way out has work
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, f"exit {proc.returncode} after Ctrl-C; its stderr ended:\n{err[-3000:]}"
    assert err.strip().splitlines()[-1].startswith("interrupted: stopped cleanly")
    assert "Traceback" not in err
    # The earlier result is untouched and no temporary file is left behind.
    assert (out / "feature_stats.csv").read_text() == "previous complete result\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # Every prompt finished before Ctrl-C is kept: the full shards, and the rest written on the way out.
    (folder,) = (cache / "activations").iterdir()
    done = stored_prompts(folder)
    assert SHARD_PROMPTS <= done < len(corpus)  # on a loaded machine the next prompt may not be done yet
    assert len(shards(folder)) <= done // SHARD_PROMPTS + 1

    # A rerun continues from the cache instead of starting over.
    monkeypatch.setenv("MECHINTERP_CACHE", str(cache))
    assert ch2.main([*argv[:-2], "--quiet"]) == 0
    record = json.loads((out / "MechInterpFeatureMeaning_run.json").read_text())
    assert record["cache_hits"] >= done and record["cache_misses"] == len(corpus) - record["cache_hits"]
    assert (out / "feature_stats.csv").read_text().startswith("group,feature,rank")


def test_outputs_get_ordinary_file_permissions(tmp_path):
    from mechinterp.core.io import write_text

    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "result.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's owner-only 0600
