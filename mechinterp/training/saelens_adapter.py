"""Where Chapter 5 relies on SAELens' trainer beyond what its API promises, in one place.

SAELens' trainers are built to be run, not watched: ``SAETrainer.fit()`` and
``LanguageModelSAETrainingRunner.run()`` offer no per-step callback, no switch for their progress bars,
and no way to hand back the trainer they built. The project needs all three: a training curve per step
(Chapter 5's MI7), one per-step progress bar of its own, and the trainer's feature sparsity after a run.

Each function below names the SAELens behaviour it depends on. ``tests/test_saelens_adapter.py`` checks
every one of them against the installed SAELens, so an upgrade that changes them fails that test with
a message saying what changed, instead of training silently without curves or with two bars.

What is no longer needed: earlier versions replaced SAELens' module-level ``tqdm`` and imported
``sae_lens.training._interruption``; hiding the bars now redirects ``sys.stderr`` (a standard-library
switch), and the runner's SIGINT/SIGTERM handling is done here with public trainer methods.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mechinterp.core.progress import Log

# SAETrainer.build_train_step_log_dict's keys for the numbers a training curve records, by our name.
STEP_LOG_KEYS = {
    "loss": "losses/overall_loss",
    "mse": "losses/mse_loss",
    "l0": "metrics/l0",
    "explained_variance": "metrics/explained_variance",
    "dead": "sparsity/dead_features",
    "lr": "details/current_learning_rate",
}

StepCallback = Callable[[int, Any], None]  # (index of the step just taken, counted from 0; its TrainStepOutput)


def after_each_step(trainer: Any, callback: StepCallback) -> None:
    """Call ``callback(step_index, output)`` after every optimisation step of ``trainer.fit()``.

    Relies on: ``SAETrainer.fit()`` calling ``self.step(batch)`` exactly once per optimisation step, and
    incrementing ``trainer.n_training_steps`` only after ``step`` returns (SAELens 6 documents ``step`` as
    the "public seam used by fit() and external coordinators"). The bound method is wrapped on this
    instance only; how the trainer trains is unchanged.

    Args:
        trainer: a ``sae_lens.SAETrainer`` (not yet fitted).
        callback: receives the 0-based index of the step just taken and its ``TrainStepOutput``
            (``sae_in``/``sae_out``/``feature_acts`` of the batch, before the optimiser's update).
    """
    original_step = trainer.step

    def step(batch: Any) -> Any:
        output = original_step(batch)
        callback(trainer.n_training_steps, output)
        return output

    trainer.step = step


def step_metrics(trainer: Any, output: Any) -> dict[str, float]:
    """The curve's numbers for one step, computed by SAELens' own ``build_train_step_log_dict``.

    Relies on: ``SAETrainer.build_train_step_log_dict(output, n_training_samples)`` returning the keys in
    :data:`STEP_LOG_KEYS` (the names SAELens logs to Weights & Biases).

    Returns:
        ``{"loss", "mse", "l0", "explained_variance", "dead", "lr"}`` as floats: total and MSE loss, mean
        active latents per input, explained variance of the batch, latents silent for the trainer's
        dead-feature window, and the current learning rate.
    """
    log = trainer.build_train_step_log_dict(output, trainer.n_training_samples)
    return {name: float(log[key]) for name, key in STEP_LOG_KEYS.items()}


@contextlib.contextmanager
def saelens_bars_hidden() -> Iterator[None]:
    """Hide SAELens' own progress bars inside the block (its training bar moves only every 100 steps).

    Relies on: SAELens drawing its bars with tqdm's default output, ``sys.stderr`` as it is when the bar
    is created. SAELens has no switch for them, so ``sys.stderr`` points at the null device inside the
    block. A bar the script created earlier keeps writing to the real stderr (tqdm binds its stream on
    creation). Nothing else is lost: SAELens' warnings are silenced during training anyway
    (``mechinterp.training.common.quiet_saelens``) and errors leave the block as exceptions, printed after it.
    """
    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stderr(sink):
        yield


class _StepBoundaryInterrupts:
    """Ctrl-C and SIGTERM stop training at once, except inside an optimisation step, which they let finish.

    A signal that arrives between steps (while the activation buffer fills, say, which can take
    minutes) raises KeyboardInterrupt straight away. One that arrives during ``trainer.step`` is held
    until the step has returned, so the weights, optimiser, sample count and step count that a
    checkpoint saves all describe the same finished step.

    Relies on: ``SAETrainer.fit()`` calling ``self.step(batch)`` once per optimisation step and only
    then incrementing ``n_training_steps`` (see :func:`after_each_step`).
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.in_step = False
        self.pending = False
        self.steps_before = int(trainer.n_training_steps)  # > 0 when resumed from a checkpoint
        self.completed = 0
        original_step = trainer.step

        def step(batch: Any) -> Any:
            self.in_step = True
            try:
                output = original_step(batch)
            finally:
                self.in_step = False
            self.completed += 1
            if self.pending:
                raise KeyboardInterrupt
            return output

        trainer.step = step

    def handle(self, _signum: int, _frame: Any) -> None:
        if self.in_step:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def installed(self) -> contextlib.AbstractContextManager[None]:
        """The handler for SIGINT and SIGTERM inside the block (main thread only; restored afterwards)."""
        return _on_interrupt_signals(self.handle)

    def settle_step_count(self) -> None:
        """Count a step that finished but whose ``n_training_steps`` increment the interrupt cut off."""
        self.trainer.n_training_steps = max(int(self.trainer.n_training_steps), self.steps_before + self.completed)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped ``trainer.fit()``.

    Attributes:
        checkpoint: the complete checkpoint folder saved for ``--resume-from``, or None (nothing to keep
            before the first step, or no checkpoint folder configured).
        samples: training samples (tokens) seen when it stopped.
        steps: optimisation steps taken.
    """

    def __init__(self, checkpoint: Path | None, samples: int, steps: int):
        super().__init__(f"training interrupted after {steps} steps")
        self.checkpoint, self.samples, self.steps = checkpoint, samples, steps


@contextlib.contextmanager
def _on_interrupt_signals(handler: Any) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM inside the block; the previous handlers are restored afterwards.

    Only in the main thread (the only one Python lets set signal handlers); elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def signals_held() -> contextlib.AbstractContextManager[None]:
    """Inside the block, Ctrl-C and SIGTERM are ignored (a second Ctrl-C must not cut a checkpoint in half)."""
    return _on_interrupt_signals(signal.SIG_IGN)


def save_checkpoint_atomically(trainer: Any, name: str, add: Callable[[Path], None] | None = None) -> Path:
    """``trainer.save_checkpoint`` into a hidden folder, then renamed to ``name``: the folder ``name`` is
    either absent or complete, whatever stops the process while it is written.

    A periodic checkpoint of the same step (possibly cut short by the interrupt) is replaced. ``add``
    may write more files into the folder before it gets its name.

    Relies on: ``SAETrainer.save_checkpoint(checkpoint_name=...)`` writing everything (weights, sparsity,
    trainer state, and through ``save_checkpoint_fn`` the runner's activation-store state and config)
    into ``cfg.checkpoint_path / checkpoint_name`` and nowhere else.

    Returns:
        The checkpoint folder, ``cfg.checkpoint_path / name``.
    """
    base = Path(trainer.cfg.checkpoint_path)
    partial, target, replaced = base / f".partial-{name}", base / name, base / f".replaced-{name}"
    for leftover in (partial, replaced):
        if leftover.exists():
            shutil.rmtree(leftover)
    trainer.save_checkpoint(checkpoint_name=partial.name)
    if add is not None:
        add(partial)
    if target.exists():
        target.rename(replaced)
    partial.rename(target)  # atomic on one file system: the folder appears complete or not at all
    if replaced.exists():
        shutil.rmtree(replaced)
    return target


def fit_saving_on_interrupt(
    trainer: Any,
    checkpoint_on_interrupt: bool,
    log: Log | None = None,
    add_to_checkpoint: Callable[[Path], None] | None = None,
) -> Any:
    """``trainer.fit()`` with SAELens' bars hidden; on Ctrl-C or SIGTERM, save a checkpoint and stop.

    The signal stops training at the next step boundary (at once between steps; see
    :class:`_StepBoundaryInterrupts`).

    The checkpoint is the trainer's own (``SAETrainer.save_checkpoint``: weights, sparsity, optimiser
    and scheduler state, plus whatever its ``save_checkpoint_fn`` adds; the language-model runner adds
    the activation store's position), named by the samples seen, written atomically
    (:func:`save_checkpoint_atomically`) with further signals held off, so ``--resume-from`` can
    continue it.

    Relies on: ``SAETrainer.n_training_samples`` / ``n_training_steps`` counting the samples and steps
    taken, and on :func:`save_checkpoint_atomically`'s assumptions.

    Args:
        trainer: a ``sae_lens.SAETrainer``.
        checkpoint_on_interrupt: save the checkpoint when interrupted (needs ``cfg.checkpoint_path``).
        log: told when the checkpoint is being written (it can take seconds for a large SAE).
        add_to_checkpoint: writes the caller's own files into the checkpoint folder (e.g. the curve so far).

    Returns:
        The trained SAE that ``fit()`` returns.

    Raises:
        TrainingInterrupted: on Ctrl-C or SIGTERM, after the checkpoint (if any) is complete.
    """
    interrupts = _StepBoundaryInterrupts(trainer)
    try:
        with interrupts.installed(), saelens_bars_hidden():
            return trainer.fit()
    except KeyboardInterrupt as err:
        interrupts.settle_step_count()
        saved = None
        if checkpoint_on_interrupt and trainer.n_training_samples > 0:  # before the first step: nothing to keep
            with signals_held():
                if log is not None:
                    log(f"interrupted after step {trainer.n_training_steps}: saving a checkpoint "
                        "(further Ctrl-C is ignored until it is written) ...")
                saved = save_checkpoint_atomically(trainer, str(trainer.n_training_samples), add_to_checkpoint)
        raise TrainingInterrupted(saved, trainer.n_training_samples, trainer.n_training_steps) from err


@functools.cache
def _watched_runner_class() -> type:
    from sae_lens import LanguageModelSAETrainingRunner

    class WatchedRunner(LanguageModelSAETrainingRunner):
        """SAELens' language-model runner that shows its trainer to ``on_trainer`` before training."""

        def __init__(self, cfg: Any, on_trainer: Callable[[Any], None], log: Log | None = None,
                     add_to_checkpoint: Callable[[Path], None] | None = None, **overrides: Any):
            super().__init__(cfg, **overrides)
            self.on_trainer = on_trainer
            self.log = log
            self.add_to_checkpoint = add_to_checkpoint
            self.trainer: Any = None

        def run_trainer_with_interruption_handling(self, trainer: Any) -> Any:
            # Replaces SAELens' version (which installs its own SIGINT/SIGTERM handlers and, on an
            # interrupt, writes the activation store's state without the SAE's weights).
            self.trainer = trainer
            self.on_trainer(trainer)
            return fit_saving_on_interrupt(trainer, self.cfg.checkpoint_path is not None, self.log, self.add_to_checkpoint)

    return WatchedRunner


def watched_runner(cfg: Any, on_trainer: Callable[[Any], None], log: Log | None = None,
                   add_to_checkpoint: Callable[[Path], None] | None = None, **overrides: Any) -> Any:
    """A ``LanguageModelSAETrainingRunner`` for ``cfg`` that hands its trainer to ``on_trainer``.

    After ``runner.run()``, ``runner.trainer`` is the trainer it used (for its feature sparsity).

    Relies on: ``LanguageModelSAETrainingRunner.run()`` building its ``SAETrainer`` (and restoring a
    ``resume_from_checkpoint`` into it) and then calling
    ``self.run_trainer_with_interruption_handling(trainer)``, whose return value is the trained SAE.

    Args:
        cfg: a ``sae_lens.LanguageModelSAERunnerConfig``.
        on_trainer: called with the trainer just before training starts (e.g. :func:`after_each_step`).
        log: told when an interrupt's checkpoint is being written.
        add_to_checkpoint: writes the caller's own files into that checkpoint before it gets its name.
        overrides: the runner's own keyword arguments (``override_model``, ``override_dataset``, ...).
    """
    return _watched_runner_class()(cfg, on_trainer, log, add_to_checkpoint, **overrides)

