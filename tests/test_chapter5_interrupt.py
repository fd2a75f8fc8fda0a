"""Chapter 5 under Ctrl-C: a real SIGINT mid-training leaves one complete checkpoint, exits 130, prints the
command that continues, and that command finishes the run from where it stopped."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import MechInterpTrainSAE as ch5
from mechinterp.core.constants import CURVE_IN_CHECKPOINT, RUNNER_CFG_FILENAME
from mechinterp.training.on_model import CHECKPOINT_FILES

ROOT = Path(__file__).resolve().parent.parent
TOKENS, BATCH = 40_000, 512  # 78 steps (SAELens takes one more when the tokens do not divide evenly)
ARGV = ["--demo", "--training-tokens", str(TOKENS), "--batch-size", str(BATCH), "--d-sae", "128",
        "--checkpoints", "0", "--eval-batches", "2"]


def sigint_at_step(monkeypatch, step: int) -> None:
    """Send this process a real SIGINT (Python's default handler: KeyboardInterrupt) after ``step`` steps."""
    real = ch5.step_bar

    def step_bar(quiet, total, desc):
        bar, update = real(quiet, total, desc)
        taken = [0]

        def update_then_interrupt(steps, metrics):
            update(steps, metrics)
            taken[0] += steps
            if taken[0] == step:
                os.kill(os.getpid(), signal.SIGINT)

        return bar, update_then_interrupt

    monkeypatch.setattr(ch5, "step_bar", step_bar)


def resume_command(err: str) -> list[str]:
    """The flags of the ``python MechInterpTrainSAE.py ...`` line the interrupt message prints."""
    lines = [line.strip() for line in err.splitlines() if line.strip().startswith("python MechInterpTrainSAE.py")]
    assert len(lines) == 1, err
    return shlex.split(lines[0])[2:]


@pytest.mark.filterwarnings("ignore::UserWarning")  # SAELens: "non-empty model_from_pretrained_kwargs"
def test_sigint_saves_a_complete_checkpoint_and_the_printed_command_resumes(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = [*ARGV, "--out", str(out)]
    sigint_at_step(monkeypatch, 5)
    assert ch5.main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "interrupted: after 5 of 78 steps (2,560 tokens). Saved a complete checkpoint in" in err, err
    assert not (out / "sae").exists() and not (out / "MI7.png").exists()  # nothing half-finished in the output

    # One complete checkpoint (even with --checkpoints 0), named by the tokens seen; no partial folder.
    resume = resume_command(err)
    assert resume[:-2] == argv and resume[-2] == "--resume-from"
    checkpoint = Path(resume[-1])
    assert checkpoint.parent.parent == out / "checkpoints" and checkpoint.name == str(5 * BATCH)
    assert [p.name for p in checkpoint.parent.iterdir()] == [checkpoint.name]
    assert set(CHECKPOINT_FILES) | {"activations_store_state.safetensors", CURVE_IN_CHECKPOINT} <= {
        p.name for p in checkpoint.iterdir()}
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    assert (state["n_training_steps"], state["n_training_samples"]) == (5, 5 * BATCH)
    assert json.loads((checkpoint / RUNNER_CFG_FILENAME).read_text())["training_tokens"] == TOKENS
    from sae_lens import TrainingSAE

    saved = TrainingSAE.load_from_disk(checkpoint)  # loadable on its own
    assert saved.W_dec.shape == (128, 64)

    # The printed command continues from step 5 and finishes the run.
    monkeypatch.undo()
    assert ch5.main(resume) == 0
    capsys.readouterr()
    record = json.loads((out / "MechInterpTrainSAE_run.json").read_text())
    assert record["resumed_from"] == str(checkpoint)
    curve = (out / "MI7.csv").read_text().splitlines()[1:]
    steps = [int(line.split(",")[0]) for line in curve]
    samples = [int(line.split(",")[1]) for line in curve]
    # MI7 shows the whole run: the 5 steps before the interrupt (kept in the checkpoint), then the rest.
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 78
    assert samples[:7] == [i * BATCH for i in range(1, 8)] and samples[-1] >= TOKENS
    assert (out / "sae" / "sae_weights.safetensors").is_file()


def test_wrong_resume_folders_are_refused_with_the_fix(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    sigint_at_step(monkeypatch, 3)
    assert ch5.main([*ARGV, "--quiet", "--out", str(out)]) == 130
    checkpoint = Path(resume_command(capsys.readouterr().err)[-1])
    monkeypatch.undo()

    # The run's checkpoint root instead of the checkpoint: the message names the checkpoint.
    assert ch5.main([*ARGV, "--quiet", "--out", str(out), "--resume-from", str(out / "checkpoints")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--resume-from {checkpoint}" in err

    # Other options than the interrupted run's: refused, naming each difference.
    other = [*ARGV, "--quiet", "--out", str(out), "--resume-from", str(checkpoint)]
    other[other.index("--training-tokens") + 1] = "30000"
    assert ch5.main(other) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--training-tokens was 40000, now 30000" in err


@pytest.mark.slow
def test_sigint_from_outside_the_process(world, tmp_path):
    """The same from a terminal's point of view: another process sends SIGINT to a running script."""
    out = tmp_path / "out"
    argv = ["--demo", "--training-tokens", "400000", "--batch-size", "512", "--d-sae", "128",
            "--checkpoints", "1", "--eval-batches", "2", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "MechInterpTrainSAE.py"), *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(out.glob("checkpoints/*/*/trainer_state.pt")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    time.sleep(1.0)  # past the periodic checkpoint at half-way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    checkpoint = Path(resume_command(err)[-1])
    assert set(CHECKPOINT_FILES) <= {p.name for p in checkpoint.iterdir()}
    assert not list(out.glob("checkpoints/*/.partial-*"))
    done = torch.load(checkpoint / "trainer_state.pt", weights_only=False)["n_training_steps"]
    assert 390 <= done < 782  # after the half-way checkpoint, before the end
