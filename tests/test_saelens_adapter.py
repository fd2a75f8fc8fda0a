"""The SAELens behaviour that mechinterp.training.saelens_adapter relies on, checked against the installed SAELens.

If one of these fails after a SAELens upgrade, Chapter 5's training would otherwise break or, worse,
train without its curves: fix ``mechinterp/saelens_adapter.py`` (each function says what it relies on).
"""

from __future__ import annotations

import inspect
import os
import signal
import time

import pytest
import torch

from mechinterp.training import saelens_adapter as adapter

D_IN, D_SAE, BATCH, STEPS = 8, 16, 32, 6


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def tiny_trainer(checkpoint_path=None, steps: int = STEPS):
    """A real SAELens SAETrainer on random activations: a standard SAE, ``steps`` steps of ``BATCH``."""
    from sae_lens import LoggingConfig, SAETrainer, StandardTrainingSAEConfig, TrainingSAE
    from sae_lens.config import SAETrainerConfig

    sae = TrainingSAE.from_dict(StandardTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, l1_coefficient=0.1).to_dict())
    cfg = SAETrainerConfig(
        n_checkpoints=0, checkpoint_path=str(checkpoint_path) if checkpoint_path else None,
        save_final_checkpoint=False, total_training_samples=steps * BATCH, device="cpu", autocast=False,
        lr=1e-3, lr_end=1e-3, lr_scheduler_name="constant", lr_warm_up_steps=0, adam_beta1=0.9,
        adam_beta2=0.999, lr_decay_steps=0, n_restart_cycles=1, train_batch_size_samples=BATCH,
        dead_feature_window=1000, feature_sampling_window=2000, logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=2,
    )
    generator = torch.Generator().manual_seed(0)
    data = iter(lambda: torch.randn(BATCH, D_IN, generator=generator), None)
    return SAETrainer(cfg=cfg, sae=sae, data_provider=data)


def test_signatures_the_adapter_calls():
    from sae_lens import LanguageModelSAETrainingRunner, SAETrainer

    assert _params(SAETrainer.step) == ["self", "batch"], "SAETrainer.step(batch) changed: fix after_each_step"
    assert _params(SAETrainer.build_train_step_log_dict)[:3] == ["self", "output", "n_training_samples"], (
        "SAETrainer.build_train_step_log_dict(output, n_training_samples) changed: fix step_metrics"
    )
    assert "checkpoint_name" in _params(SAETrainer.save_checkpoint), (
        "SAETrainer.save_checkpoint(checkpoint_name=...) changed: fix fit_saving_on_interrupt"
    )
    assert isinstance(inspect.getattr_static(SAETrainer, "log_feature_sparsity"), property)
    assert _params(LanguageModelSAETrainingRunner.run_trainer_with_interruption_handling) == ["self", "trainer"], (
        "LanguageModelSAETrainingRunner.run_trainer_with_interruption_handling(trainer) changed: fix watched_runner"
    )
    init = _params(LanguageModelSAETrainingRunner.__init__)
    assert {"cfg", "override_dataset", "override_model"} <= set(init)


def test_after_each_step_sees_every_step_in_order_before_the_count_advances():
    trainer = tiny_trainer()
    seen = []
    adapter.after_each_step(trainer, lambda index, output: seen.append((index, trainer.n_training_steps,
                                                                       trainer.n_training_samples, output)))
    with adapter.saelens_bars_hidden():
        trainer.fit()
    assert [s[0] for s in seen] == list(range(STEPS)), "fit() no longer calls self.step once per step"
    assert all(index == count for index, count, _, _ in seen)
    assert [s[2] for s in seen] == [BATCH * (i + 1) for i in range(STEPS)]
    assert trainer.n_training_steps == STEPS
    assert all(tuple(s[3].sae_in.shape) == (BATCH, D_IN) for s in seen)


def test_step_metrics_match_a_direct_computation():
    trainer = tiny_trainer()
    metrics = []
    adapter.after_each_step(trainer, lambda index, output: metrics.append((adapter.step_metrics(trainer, output), output)))
    with adapter.saelens_bars_hidden():
        trainer.fit()
    assert set(metrics[0][0]) == set(adapter.STEP_LOG_KEYS)
    for m, output in metrics:
        x, y = output.sae_in.detach().double(), output.sae_out.detach().double()
        ev = 1 - (y - x).pow(2).sum(-1).mean() / (x - x.mean(0)).pow(2).sum(-1).mean()
        assert m["explained_variance"] == pytest.approx(float(ev), abs=1e-5)
        assert m["l0"] == pytest.approx(float((output.feature_acts != 0).sum(-1).double().mean()))
        assert m["loss"] == pytest.approx(float(output.loss.detach()))
        assert m["mse"] == pytest.approx(float(output.losses["mse_loss"].detach()))
        assert m["lr"] == pytest.approx(1e-3)
        assert m["dead"] == 0  # a 1000-step dead window cannot be reached in 6 steps


def test_saelens_bars_are_hidden_and_the_test_can_tell(capsys):
    with adapter.saelens_bars_hidden():
        tiny_trainer().fit()
    assert capsys.readouterr().err == ""
    tiny_trainer().fit()
    assert "Training SAE" in capsys.readouterr().err, "SAELens' bar no longer goes to stderr: recheck saelens_bars_hidden"


def test_interrupt_saves_a_resumable_checkpoint(tmp_path):
    trainer = tiny_trainer(checkpoint_path=tmp_path)

    def stop(index, _output):
        if index == 2:
            raise KeyboardInterrupt

    adapter.after_each_step(trainer, stop)
    with pytest.raises(adapter.TrainingInterrupted) as stopped:
        adapter.fit_saving_on_interrupt(trainer, checkpoint_on_interrupt=True)
    saved = tmp_path / str(3 * BATCH)
    assert stopped.value.checkpoint == saved and stopped.value.samples == 3 * BATCH
    assert [p.name for p in tmp_path.iterdir()] == [saved.name]  # no partial folder left
    assert {"cfg.json", "sae_weights.safetensors", "trainer_state.pt"} <= {p.name for p in saved.iterdir()}
    resumed = tiny_trainer()
    resumed.load_trainer_state(saved)
    resumed.sae.load_weights_from_checkpoint(saved)
    assert resumed.n_training_samples == 3 * BATCH
    torch.testing.assert_close(resumed.sae.W_dec, trainer.sae.W_dec)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_step_stops_after_it_with_consistent_counts(tmp_path, sig):
    """A real signal inside step 3 lets the step finish: the checkpoint's weights, sample count and step
    count all describe 3 finished steps. A second signal while the checkpoint is written is ignored."""
    trainer = tiny_trainer(checkpoint_path=tmp_path)
    original_step, original_save = trainer.step, trainer.save_checkpoint
    weights_after = []

    def step(batch):
        if trainer.n_training_steps == 2:
            os.kill(os.getpid(), sig)  # arrives mid-step: held until the step returns
        output = original_step(batch)
        weights_after.append(trainer.sae.W_dec.detach().clone())
        return output

    def save(**kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # impatient second Ctrl-C: must not cut the checkpoint short
        original_save(**kwargs)

    trainer.step, trainer.save_checkpoint = step, save
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(adapter.TrainingInterrupted) as stopped:
        adapter.fit_saving_on_interrupt(trainer, checkpoint_on_interrupt=True)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert (stopped.value.steps, stopped.value.samples) == (3, 3 * BATCH)
    assert len(weights_after) == 3
    state = torch.load(tmp_path / str(3 * BATCH) / "trainer_state.pt", weights_only=False)
    assert (state["n_training_steps"], state["n_training_samples"]) == (3, 3 * BATCH)
    resumed = tiny_trainer()
    resumed.sae.load_weights_from_checkpoint(tmp_path / str(3 * BATCH))
    torch.testing.assert_close(resumed.sae.W_dec, weights_after[-1])


def test_a_signal_between_steps_stops_at_once():
    trainer = tiny_trainer()
    original = trainer.data_provider

    def batches():
        for i, batch in enumerate(original):
            if i == 3:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # e.g. a long buffer refill: the handler interrupts it at once
            yield batch

    trainer.data_provider = batches()
    start = time.perf_counter()
    with pytest.raises(adapter.TrainingInterrupted) as stopped:
        adapter.fit_saving_on_interrupt(trainer, checkpoint_on_interrupt=False)
    assert time.perf_counter() - start < 4
    assert stopped.value.checkpoint is None


@pytest.mark.filterwarnings("ignore::UserWarning")  # SAELens' advice on tokenising and epochs
def test_watched_runner_hands_over_the_trainer_it_trains(loaded_toy):
    from sae_lens import SAETrainer

    from mechinterp.core.toyworld import demo_corpus
    from mechinterp.training.on_model import ModelTrainingSpec, runner_config, text_dataset

    spec = ModelTrainingSpec(
        model_label="toy", hook_name="blocks.8.hook_resid_pre", architecture="standard", d_sae=32,
        l1_coefficient=1.0, k=4, lr=1e-3, training_tokens=4 * 64, batch_size_tokens=64, context_size=16, seed=0,
        device="cpu", dataset_path="demo", model_kwargs={},
    )
    cfg = runner_config(spec, int(loaded_toy.model.cfg.d_model))
    handed, steps = [], []

    def on_trainer(trainer):
        handed.append(trainer)
        adapter.after_each_step(trainer, lambda index, _output: steps.append(index))

    runner = adapter.watched_runner(cfg, on_trainer, override_dataset=text_dataset(demo_corpus(50, seed=1)),
                                    override_model=loaded_toy.model)
    sae = runner.run()
    assert len(handed) == 1 and isinstance(handed[0], SAETrainer) and runner.trainer is handed[0]
    assert sae is handed[0].sae, "run() no longer returns what run_trainer_with_interruption_handling returns"
    assert steps == [0, 1, 2, 3]
    assert runner.trainer.log_feature_sparsity.shape == (32,)
