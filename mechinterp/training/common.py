"""What Chapter 5's two modes share: the SAE architectures, the training knobs and their defaults per
mode, and the training curve recorded with SAELens' own metrics after every step.

The modes themselves live beside this module: :mod:`mechinterp.training.synthetic` (activations with
known features, so a trained SAE can be scored against the truth) and
:mod:`mechinterp.training.on_model` (a language model's activations at a hook, through SAELens' runner).

The knobs are defined once, here, as :class:`KnobOptions` fields; each mode's options extend it, and
``mechinterp.cli`` makes the "training knobs" flags from it. A knob left None takes its mode's default
(:data:`MODE_DEFAULTS`), filled in when the mode's options are created.

Nothing here prints: progress is reported through optional callbacks and the scripts print.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mechinterp.core.errors import UserError
from mechinterp.core.options import option, positive_float, positive_int
from mechinterp.training.saelens_adapter import after_each_step, step_metrics

ARCHITECTURES = ("standard", "topk")
ARCHITECTURE_LABELS = {"standard": "standard (ReLU+L1)", "topk": "TopK"}


@dataclass(frozen=True)
class Knobs:
    """The training knobs every mode has (MODE_DEFAULTS holds each mode's defaults).

    Attributes:
        training_tokens: activations to train on (tokens; samples of synthetic data).
        batch_size: activations per optimisation step.
        lr: Adam learning rate.
        l1_coefficient: standard (ReLU + L1) SAE: strength of the L1 penalty.
        k: TopK SAE: active latents per input.
    """

    training_tokens: int
    batch_size: int
    lr: float
    l1_coefficient: float
    k: int


MODES = ("synthetic", "demo", "model")
# The toy model is tiny, so it trains with smaller batches and a larger learning rate than GPT-2, whose
# values are SAELens' defaults.
MODE_DEFAULTS = {
    "synthetic": Knobs(training_tokens=1_500_000, batch_size=1024, lr=3e-3, l1_coefficient=0.2, k=5),
    "demo": Knobs(training_tokens=300_000, batch_size=1024, lr=3e-3, l1_coefficient=2.0, k=8),
    "model": Knobs(training_tokens=2_000_000, batch_size=4096, lr=3e-4, l1_coefficient=5.0, k=32),
}


def mode_defaults(knob: str, fmt: Callable[[Any], str] = str) -> str:
    """A knob's defaults as "synthetic / demo / model", for its help."""
    return " / ".join(fmt(getattr(MODE_DEFAULTS[mode], knob)) for mode in MODES)


@dataclass(kw_only=True)
class KnobOptions:
    """The training knobs of both modes (the "training knobs" flags); each mode's options extend it.

    A knob left None takes the mode's default (:data:`MODE_DEFAULTS`) when the mode's options are
    created; ``d_sae`` and ``architecture`` are resolved by each mode.
    """

    architecture: str | None = option(
        None, "standard = ReLU + L1 penalty; topk = keep the k largest latents (default: both with --synthetic, "
        "standard otherwise; 'both' is for --synthetic only)", choices=(*ARCHITECTURES, "both"))
    d_sae: int | None = option(
        None, "dictionary size: latents in the SAE (default: --n-features with --synthetic, 8 x the model's width)",
        type=positive_int)
    l1_coefficient: float | None = option(
        None, "standard SAE: L1 penalty strength; higher = sparser but worse reconstruction (default S / D / M: "
        f"{mode_defaults('l1_coefficient')})", type=positive_float)
    k: int | None = option(None, f"TopK SAE: active latents per token (default S / D / M: {mode_defaults('k')})",
                           type=positive_int)
    lr: float | None = option(
        None, f"Adam learning rate, decayed to 0 over the last fifth of training (default S / D / M: "
        f"{mode_defaults('lr')})", type=positive_float)
    training_tokens: int | None = option(
        None, "activations to train on: tokens, or samples with --synthetic (default S / D / M: "
        f"{mode_defaults('training_tokens', '{:,}'.format)})", type=positive_int)
    batch_size: int | None = option(
        None, f"activations per optimisation step (default S / D / M: {mode_defaults('batch_size')})",
        type=positive_int)
    seed: int = option(0, "random seed; the same seed gives the same SAE (default: %(default)s)", type=int)

    def take_mode_defaults(self, mode: str) -> None:
        """Fill the knobs left None with ``mode``'s defaults (one of :data:`MODES`)."""
        for name, value in asdict(MODE_DEFAULTS[mode]).items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    @property
    def knobs(self) -> Knobs:
        """The knobs as resolved (the mode's defaults where none was given)."""
        return Knobs(self.training_tokens, self.batch_size, self.lr, self.l1_coefficient, self.k)

    def knobs_used(self) -> dict[str, Any]:
        """The knobs as this run uses them, by flag name (for the run record, over the flags as given)."""
        return {"architecture": self.architecture, "d_sae": self.d_sae, **asdict(self.knobs)}

    @classmethod
    def mode_fields(cls) -> list[str]:
        """The fields a mode's options add to the shared knobs (its own group of flags)."""
        shared = {f.name for f in fields(KnobOptions)}
        return [f.name for f in fields(cls) if f.name not in shared]


def check_architectures(architectures: Sequence[str], k: int, d_sae: int | None) -> None:
    """Raise :class:`UserError` for an unknown architecture, or a TopK ``k`` above the dictionary size."""
    unknown = [a for a in architectures if a not in ARCHITECTURES]
    if unknown or not architectures:
        raise UserError(f"unknown architecture {', '.join(unknown) or '(none)'}; choose from {', '.join(ARCHITECTURES)}")
    if "topk" in architectures and d_sae is not None and k > d_sae:
        raise UserError(f"--k {k} cannot exceed the dictionary size --d-sae {d_sae}")


ProgressFn = Callable[[int, dict[str, float]], None]  # (steps just completed, latest metrics)


@dataclass
class TrainingCurve:
    """Per-step training metrics, sampled every ``every`` steps (and at the last step)."""

    every: int
    step: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)  # tokens (or synthetic samples) seen so far
    loss: list[float] = field(default_factory=list)  # total training loss (MSE + sparsity/aux terms)
    mse: list[float] = field(default_factory=list)
    l0: list[float] = field(default_factory=list)
    explained_variance: list[float] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)  # latents silent for the trainer's dead-feature window
    lr: list[float] = field(default_factory=list)

    HEADER = ("step", "samples", "loss", "mse_loss", "l0", "explained_variance", "dead_latents", "lr")

    def rows(self) -> list[list[Any]]:
        return [
            list(r)
            for r in zip(
                self.step, self.samples, self.loss, self.mse, self.l0, self.explained_variance, self.dead, self.lr
            )
        ]

    def save(self, path: Path) -> None:
        """Write the points so far as JSON (into a checkpoint, so a resumed run's MI7 shows the whole run)."""
        Path(path).write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> TrainingCurve:
        """The curve :meth:`save` wrote."""
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))

    def __repr__(self) -> str:
        if not self.step:
            return f"TrainingCurve(no points yet; one every {self.every} steps)"
        return (f"TrainingCurve({len(self.step)} points to step {self.step[-1]:,} ({self.samples[-1]:,} samples); "
                f"last: loss {self.loss[-1]:.4g}, L0 {self.l0[-1]:.2f}, explained variance "
                f"{self.explained_variance[-1]:.3f}, {self.dead[-1]} dead)")


def attach_curve(trainer: Any, curve: TrainingCurve, progress: ProgressFn | None = None) -> None:
    """Record ``curve`` (and report progress) after every step of a SAELens ``SAETrainer``.

    Args:
        trainer: a ``sae_lens.SAETrainer`` that has not started training.
        curve: filled in place, every ``curve.every`` steps and at the last step.
        progress: called after each step with 1 and the latest recorded metrics (empty between records),
            and at once with the steps already taken when the trainer resumes from a checkpoint.
    """
    total_steps = max(1, trainer.cfg.total_training_samples // trainer.cfg.train_batch_size_samples)

    def record(index: int, output: Any) -> None:
        finished = trainer.n_training_samples >= trainer.cfg.total_training_samples
        latest: dict[str, float] = {}
        if index % curve.every == 0 or finished or index + 1 >= total_steps:
            metrics = step_metrics(trainer, output)
            curve.step.append(index + 1)
            curve.samples.append(int(trainer.n_training_samples))
            curve.loss.append(metrics["loss"])
            curve.mse.append(metrics["mse"])
            curve.l0.append(metrics["l0"])
            curve.explained_variance.append(metrics["explained_variance"])
            curve.dead.append(int(metrics["dead"]))
            curve.lr.append(metrics["lr"])
            latest = {"loss": curve.loss[-1], "l0": curve.l0[-1], "ev": curve.explained_variance[-1]}
        if progress is not None:
            progress(1, latest)

    after_each_step(trainer, record)
    if progress is not None and trainer.n_training_steps > 0:  # resumed: the bar starts where the checkpoint was
        progress(int(trainer.n_training_steps), {})


@contextlib.contextmanager
def quiet_saelens() -> Iterator[None]:
    """Silence SAELens' advisory log lines and warnings (override notices, 'not tokenized', epochs).

    The script reports what matters itself (e.g. how many passes over the text the run makes).
    """
    logger = logging.getLogger("sae_lens")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(previous)


def build_training_sae(
    architecture: str,
    d_in: int,
    d_sae: int,
    l1_coefficient: float,
    k: int,
    l1_warm_up_steps: int = 0,
    normalize_activations: str = "none",
) -> Any:
    """A fresh SAELens training SAE config: ReLU + L1 ("standard") or TopK.

    Args:
        architecture: "standard" (ReLU, L1 penalty weighted by decoder norms) or "topk" (keep the k
            largest pre-activations; no sparsity penalty, an auxiliary loss revives dead latents).
        l1_coefficient: strength of the L1 penalty (standard only): higher = sparser, worse reconstruction.
        k: active latents per input (topk only).
        normalize_activations: "expected_average_only_in" rescales inputs to norm sqrt(d_in) during
            training (folded back into the weights at the end), so one L1 coefficient suits any model.
    """
    from sae_lens import StandardTrainingSAEConfig, TopKTrainingSAEConfig

    if architecture == "standard":
        return StandardTrainingSAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            l1_coefficient=l1_coefficient,
            l1_warm_up_steps=l1_warm_up_steps,
            normalize_activations=normalize_activations,
        )
    if architecture == "topk":
        if not 1 <= k <= d_sae:
            raise UserError(f"--k {k} must be between 1 and the dictionary size --d-sae {d_sae}")
        return TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, normalize_activations=normalize_activations)
    raise UserError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
