"""Training sparse autoencoders with SAELens, and telling a good one from a bad one (Chapter 5).

Two sources of activations, one trainer:

* **Synthetic data with known answers** (``sae_lens.synthetic``): a :class:`FeatureDictionary` of
  ``n_features`` unit directions in a space of ``hidden_dim < n_features`` dimensions (superposition),
  an :class:`ActivationGenerator` that fires each feature sparsely with its own probability and
  magnitude, and SAELens' ``SAETrainer`` fed by ``SyntheticActivationIterator``. Because the true
  features are known, a trained SAE can be *scored*: does some decoder row point along each true
  feature (cosine similarity), and how many true features are recovered?
* **A language model's activations** at a hook, through SAELens' ``LanguageModelSAETrainingRunner``
  with a locally loaded model and dataset passed as overrides. The result is scored the way SAELens'
  evals do: L0, explained variance, and next-token loss with the hook's activations replaced by the
  reconstruction, compared with the clean model and with the hook zero-ablated.

Both paths record training curves (loss, L0, explained variance per step) after each of the trainer's
steps and compute the numbers with ``SAETrainer.build_train_step_log_dict``, so the curves use SAELens'
own metric definitions. What that needs from SAELens beyond its documented API is isolated in
:mod:`mechinterp.training.saelens_adapter` (and checked by its test).

Each mode's options are one typed object, with the mode's defaults filled in on creation:
:class:`SyntheticOptions` (``--synthetic``) and :class:`ModelOptions` (a language model: the toy model
with ``demo=True``, else a real one). The chapter script turns its flags into one of them.

Nothing here prints: progress is reported through optional callbacks and the scripts print.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechinterp.core import constants
from mechinterp.core.constants import RUNNER_CFG_FILENAME, SPARSITY_FILENAME
from mechinterp.core.errors import EnvironmentProblem, UserError
from mechinterp.core.io import atomic_dir
from mechinterp.core.progress import Log
from mechinterp.core.source import torch_threads
from mechinterp.core.toyworld import demo_corpus
from mechinterp.training.saelens_adapter import (
    after_each_step,
    fit_saving_on_interrupt,
    step_metrics,
    watched_runner,
)

ARCHITECTURES = ("standard", "topk")
ARCHITECTURE_LABELS = {"standard": "standard (ReLU+L1)", "topk": "TopK"}
# A true feature counts as "recovered" when some decoder row has at least this cosine similarity with it.
DEFAULT_RECOVERY_THRESHOLD = 0.9


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
_SYNTHETIC = MODE_DEFAULTS["synthetic"]

ProgressFn = Callable[[int, dict[str, float]], None]  # (steps just completed, latest metrics)


# --- training curves ------------------------------------------------------------------------------


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


# --- synthetic data with ground truth --------------------------------------------------------------


@dataclass
class SyntheticConfig:
    """One synthetic experiment: the data, the SAEs' budget, and how they are scored.

    The defaults are ``--synthetic``'s; validated on creation (raises :class:`UserError`).

    Attributes:
        n_features: ground-truth features.
        hidden_dim: dimensions they live in (``n_features > hidden_dim`` is superposition).
        d_sae: latents per SAE, the same for every architecture (None: ``n_features``).
        firing_prob_max: Zipfian firing probabilities from max (feature 0) ...
        firing_prob_min: ... down to min (last feature): a few common, many rare features.
        magnitude_mean: mean firing magnitude of a true feature.
        magnitude_std: its standard deviation.
        training_samples: synthetic activations each SAE trains on.
        batch_size: activations per optimisation step.
        lr: Adam learning rate (decayed to 0 over the last fifth of training).
        l1_coefficient: standard SAE: L1 penalty strength.
        l1_warm_up_steps: standard SAE: steps over which the penalty ramps up from 0.
        k: TopK SAE: active latents per input.
        eval_samples: held-out samples for L0, explained variance and F1.
        recovery_threshold: a true feature is recovered when a decoder row has |cos| above this.
        seed: seeds the data, the SAEs' initialisation and the evaluation samples.
        curve_points: about how many steps the training curve records.
    """

    n_features: int = 256
    hidden_dim: int = 64
    d_sae: int | None = None
    firing_prob_max: float = 0.08
    firing_prob_min: float = 0.01
    magnitude_mean: float = 1.0
    magnitude_std: float = 0.1
    training_samples: int = _SYNTHETIC.training_tokens
    batch_size: int = _SYNTHETIC.batch_size
    lr: float = _SYNTHETIC.lr
    l1_coefficient: float = _SYNTHETIC.l1_coefficient
    l1_warm_up_steps: int = 100
    k: int = _SYNTHETIC.k
    eval_samples: int = 50_000
    recovery_threshold: float = DEFAULT_RECOVERY_THRESHOLD
    seed: int = 0
    curve_points: int = 150

    def __post_init__(self) -> None:
        if self.d_sae is None:
            self.d_sae = self.n_features
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UserError` on options that cannot make a valid experiment."""
        if min(self.n_features, self.d_sae, self.batch_size, self.eval_samples, self.k) < 1:
            raise UserError("--n-features, --d-sae, --batch-size, --eval-samples and --k must be at least 1")
        if self.hidden_dim < 2:
            raise UserError("--hidden-dim must be at least 2")
        if self.firing_prob_min > self.firing_prob_max:
            raise UserError("--firing-prob takes MAX then MIN, and MIN must not exceed MAX")
        if not 0 < self.firing_prob_min <= self.firing_prob_max <= 1:
            raise UserError("firing probabilities must satisfy 0 < min <= max <= 1")
        if self.training_samples < self.batch_size:
            raise UserError(
                f"--batch-size {self.batch_size} is larger than --training-tokens {self.training_samples}"
            )


@dataclass
class SyntheticOptions:
    """Chapter 5's ``--synthetic`` mode: which SAE architectures to train, and the experiment.

    Attributes:
        config: the data, the SAEs' budget and the scoring.
        architectures: the SAEs trained with the same budget and compared ("standard", "topk").
    """

    config: SyntheticConfig = field(default_factory=SyntheticConfig)
    architectures: tuple[str, ...] = ARCHITECTURES

    def __post_init__(self) -> None:
        self.architectures = tuple(self.architectures)
        _check_architectures(self.architectures, self.config.k, self.config.d_sae)


def _check_architectures(architectures: Sequence[str], k: int, d_sae: int | None) -> None:
    unknown = [a for a in architectures if a not in ARCHITECTURES]
    if unknown or not architectures:
        raise UserError(f"unknown architecture {', '.join(unknown) or '(none)'}; choose from {', '.join(ARCHITECTURES)}")
    if "topk" in architectures and d_sae is not None and k > d_sae:
        raise UserError(f"--k {k} cannot exceed the dictionary size --d-sae {d_sae}")


@dataclass
class SyntheticWorld:
    """The ground truth: feature directions and how often / how strongly each fires."""

    feature_dict: Any  # sae_lens.synthetic.FeatureDictionary; .feature_vectors is [n_features, hidden_dim]
    generator: Any  # sae_lens.synthetic.ActivationGenerator
    firing_probabilities: torch.Tensor  # [n_features]

    @property
    def features(self) -> torch.Tensor:
        """Unit-norm true feature directions, ``[n_features, hidden_dim]``."""
        return self.feature_dict.feature_vectors.detach()

    @property
    def expected_l0(self) -> float:
        return float(self.firing_probabilities.sum())


def make_synthetic_world(cfg: SyntheticConfig) -> SyntheticWorld:
    """Build the feature dictionary and activation generator (deterministic from ``cfg.seed``)."""
    from sae_lens.synthetic import (
        ActivationGenerator,
        ConstantFiringProbabilityConfig,
        FeatureDictionary,
        ZipfianFiringProbabilityConfig,
    )

    # SAELens' default initializer pushes the directions apart (as orthogonal as superposition allows),
    # which is what a model under superposition does too.
    feature_dict = FeatureDictionary(cfg.n_features, cfg.hidden_dim, seed=cfg.seed)
    feature_dict.eval()
    if cfg.firing_prob_min < cfg.firing_prob_max:
        probs = ZipfianFiringProbabilityConfig(
            exponent=0.5, max_prob=cfg.firing_prob_max, min_prob=cfg.firing_prob_min
        ).generate(cfg.n_features, seed=cfg.seed)
    else:
        probs = ConstantFiringProbabilityConfig(cfg.firing_prob_max).generate(cfg.n_features, seed=cfg.seed)
    generator = ActivationGenerator(
        cfg.n_features,
        probs,
        std_firing_magnitudes=cfg.magnitude_std,
        mean_firing_magnitudes=cfg.magnitude_mean,
    )
    return SyntheticWorld(feature_dict, generator, probs)


@dataclass
class MatchScores:
    """How well a set of directions covers the true features (cosine similarity, sign-insensitive)."""

    max_cos: np.ndarray  # [n_features] best |cos| of each true feature with any learned direction
    best_latent: np.ndarray  # [n_features] which learned direction that was
    threshold: float

    @property
    def mean_max_cos(self) -> float:
        return float(self.max_cos.mean())

    @property
    def recovery(self) -> float:
        """Fraction of true features with a learned direction above the threshold."""
        return float((self.max_cos > self.threshold).mean())


def match_features(directions: torch.Tensor, true_features: torch.Tensor, threshold: float) -> MatchScores:
    """For each true feature, the learned direction closest to it.

    Args:
        directions: ``[n_latents, d]`` learned decoder rows (any norm).
        true_features: ``[n_features, d]``.
    """
    from sae_lens.util import cosine_similarities

    cos = cosine_similarities(directions.detach().float(), true_features.detach().float()).abs()  # [n_latents, n]
    best = cos.max(dim=0)
    return MatchScores(best.values.cpu().numpy(), best.indices.cpu().numpy(), threshold)


def random_direction_baseline(n_latents: int, true_features: torch.Tensor, threshold: float, seed: int) -> MatchScores:
    """The same score for ``n_latents`` random unit directions: what "no learning at all" gets."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_latents, true_features.shape[1], generator=generator)
    return match_features(directions, true_features, threshold)


@dataclass
class SyntheticResult:
    """One trained SAE scored against the ground truth."""

    architecture: str
    match: MatchScores
    mcc: float  # SAELens' mean correlation coefficient (Hungarian one-to-one matching)
    l0: float
    true_l0: float
    dead_latents: int
    explained_variance: float
    shrinkage: float
    uniqueness: float
    f1: float
    train_seconds: float
    curve: TrainingCurve
    sae: Any = None  # the trained sae_lens TrainingSAE

    def summary(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "recovery": self.match.recovery,
            "mean_max_cos": self.match.mean_max_cos,
            "mcc": self.mcc,
            "l0": self.l0,
            "true_l0": self.true_l0,
            "dead_latents": self.dead_latents,
            "explained_variance": self.explained_variance,
            "shrinkage": self.shrinkage,
            "uniqueness": self.uniqueness,
            "f1": self.f1,
            "train_seconds": self.train_seconds,
        }


def train_synthetic_sae(
    architecture: str,
    world: SyntheticWorld,
    cfg: SyntheticConfig,
    progress: ProgressFn | None = None,
) -> SyntheticResult:
    """Train one SAE on the synthetic stream with SAELens' trainer, then score it against the truth."""
    from sae_lens import LoggingConfig, SAETrainer, TrainingSAE
    from sae_lens.config import SAETrainerConfig
    from sae_lens.synthetic import SyntheticActivationIterator, eval_sae_on_synthetic_data

    sae_cfg = build_training_sae(
        architecture, cfg.hidden_dim, cfg.d_sae, cfg.l1_coefficient, cfg.k, cfg.l1_warm_up_steps
    )
    total_steps = cfg.training_samples // cfg.batch_size
    # Same seed for both architectures: the same initial randomness and the same stream of samples.
    torch.manual_seed(cfg.seed + 1)
    sae = TrainingSAE.from_dict(sae_cfg.to_dict())
    trainer_cfg = SAETrainerConfig(
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        total_training_samples=cfg.training_samples,
        device="cpu",
        autocast=False,
        lr=cfg.lr,
        lr_end=cfg.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        # Decaying the learning rate to 0 over the last fifth of training settles the directions.
        lr_decay_steps=total_steps // 5,
        n_restart_cycles=1,
        train_batch_size_samples=cfg.batch_size,
        dead_feature_window=1000,
        feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=10,
    )
    data = SyntheticActivationIterator(world.feature_dict, world.generator, cfg.batch_size)
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data)
    curve = TrainingCurve(every=max(1, total_steps // cfg.curve_points))
    attach_curve(trainer, curve, progress)
    start = time.perf_counter()
    fit_saving_on_interrupt(trainer, checkpoint_on_interrupt=False)
    seconds = time.perf_counter() - start

    torch.manual_seed(cfg.seed + 2)  # the same held-out samples for every architecture
    result = eval_sae_on_synthetic_data(sae, world.feature_dict, world.generator, num_samples=cfg.eval_samples,
                                        batch_size=10_000)
    return SyntheticResult(
        architecture=architecture,
        match=match_features(sae.W_dec, world.features, cfg.recovery_threshold),
        mcc=result.mcc,
        l0=result.sae_l0,
        true_l0=result.true_l0,
        dead_latents=result.dead_latents,
        explained_variance=result.explained_variance,
        shrinkage=result.shrinkage,
        uniqueness=result.uniqueness,
        f1=result.classification.f1_score,
        train_seconds=seconds,
        curve=curve,
        sae=sae,
    )


def run_synthetic_comparison(
    options: SyntheticOptions,
    progress: Callable[[str], ProgressFn | None] | None = None,
    threads: int | None = 1,
) -> tuple[SyntheticWorld, list[SyntheticResult], MatchScores]:
    """Train and score each architecture with the same budget, plus a random-direction baseline.

    Args:
        options: the experiment and the architectures to train, in that order.
        progress: called with an architecture's name just before it trains; returns its step callback.
        threads: torch threads while training. 1 by default: these matrices are tiny, so extra threads
            mostly wait on each other (on a busy 2-core machine one thread was several times faster),
            and one thread is also bit-reproducible.

    Returns:
        The ground truth, one scored result per architecture, and the random-direction baseline.
    """
    cfg = options.config
    cfg.validate()
    with torch_threads(threads), quiet_saelens():
        world = make_synthetic_world(cfg)
        results = [
            train_synthetic_sae(arch, world, cfg, progress(arch) if progress else None)
            for arch in options.architectures
        ]
    baseline = random_direction_baseline(cfg.d_sae, world.features, cfg.recovery_threshold, cfg.seed + 3)
    return world, results, baseline


# --- a language model's activations -------------------------------------------------------------

# The dataset gpt2-small-res-jb was trained on (streamed from the Hugging Face Hub).
DEFAULT_DATASET = "Skylion007/openwebtext"
# The residual stream must be loaded the way the pretrained SAEs expect it (see mechinterp.core.loading).
MODEL_KWARGS = {"center_writing_weights": True}
D_SAE_PER_WIDTH = 8  # default dictionary size = 8 x the model's width
DEMO_EVAL_SEED = 2024  # demo evaluation sentences come from a different seed than the training ones
DEMO_EVAL_SENTENCES = 400


@dataclass
class ModelOptions:
    """Chapter 5's model mode: an SAE trained on a language model's activations at one hook.

    Knobs left None take the defaults of the mode (``MODE_DEFAULTS["demo"]`` with ``demo``, else
    ``MODE_DEFAULTS["model"]``), filled in on creation; the options are then validated (raises
    :class:`UserError`).

    Attributes:
        demo: train on the toy world's model (built locally) instead of ``model``.
        model: TransformerLens model name, or a local Hugging Face model folder.
        device: "cpu", "cuda", "mps", or None for CUDA when available.
        hook: TransformerLens hook whose activations the SAE learns.
        architecture: "standard" (ReLU + L1) or "topk".
        d_sae: latents in the SAE (None: ``D_SAE_PER_WIDTH`` x the model's width, known once loaded).
        l1_coefficient: standard SAE: L1 penalty strength.
        k: TopK SAE: active latents per token.
        lr: Adam learning rate.
        training_tokens: tokens to train on.
        batch_size: tokens per optimisation step.
        context_size: tokens per training sequence.
        seed: seeds the SAE's initialisation, the shuffling and the demo sentences.
        text_file: train on this UTF-8 file, one document per line (10% held out for the evaluation).
        dataset: train on this Hugging Face dataset, streamed (None with no ``text_file``: the demo's
            sentences with ``demo``, else ``DEFAULT_DATASET``).
        checkpoints: intermediate checkpoints to save (0 = none).
        resume_from: a checkpoint folder of an interrupted run to continue.
        eval_batches: batches of 8 sequences for the evaluation after training.
        wandb: also log to Weights & Biases.
        wandb_project: its project name.
    """

    demo: bool = False
    model: str = constants.DEFAULT_MODEL
    device: str | None = None
    hook: str = constants.DEFAULT_SAE_ID
    architecture: str = "standard"
    d_sae: int | None = None
    l1_coefficient: float | None = None
    k: int | None = None
    lr: float | None = None
    training_tokens: int | None = None
    batch_size: int | None = None
    context_size: int = 128
    seed: int = 0
    text_file: Path | None = None
    dataset: str | None = None
    checkpoints: int = 2
    resume_from: Path | None = None
    eval_batches: int = 10
    wandb: bool = False
    wandb_project: str = "mechinterp_chapter5"

    def __post_init__(self) -> None:
        defaults = MODE_DEFAULTS["demo" if self.demo else "model"]
        for name, value in asdict(defaults).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.architecture == "both":
            raise UserError("--architecture both is for --synthetic; pick standard or topk to train on a model")
        _check_architectures([self.architecture], self.k, self.d_sae)
        if self.text_file is not None and self.dataset is not None:
            raise UserError("give either --text-file or --dataset, not both")
        if self.checkpoints < 0:
            raise UserError("--checkpoints must be 0 or more")
        if self.batch_size > self.training_tokens:
            raise UserError(f"--batch-size {self.batch_size} is larger than --training-tokens {self.training_tokens}")

    @property
    def knobs(self) -> Knobs:
        """The knobs as resolved (the mode's defaults where none was given)."""
        return Knobs(self.training_tokens, self.batch_size, self.lr, self.l1_coefficient, self.k)


@dataclass
class TrainingData:
    """The text an SAE is trained and evaluated on in model mode.

    Attributes:
        label: names the training data in titles and in the SAE's metadata (``dataset_path``).
        eval_note: what the evaluation ran on, in words.
        train_texts: local documents to train on, or None to stream ``dataset_name``.
        eval_texts: local documents to evaluate on, or None to stream ``dataset_name``.
        dataset_name: a Hugging Face dataset streamed from the Hub (None for local text).
    """

    label: str
    eval_note: str
    train_texts: list[str] | None = None
    eval_texts: list[str] | None = None
    dataset_name: str | None = None


def split_text(texts: list[str]) -> tuple[list[str], list[str], str]:
    """Hold out the last 10% of documents for the evaluation when there are enough of them.

    Returns:
        (training documents, evaluation documents, what the evaluation runs on in words).
    """
    if len(texts) >= 20:
        n_eval = max(2, len(texts) // 10)
        return texts[:-n_eval], texts[-n_eval:], f"the last {n_eval} lines (held out from training)"
    return texts, texts, "the training text itself (fewer than 20 lines, so none held out)"


def training_data(options: ModelOptions) -> TrainingData:
    """The options' text: ``text_file``, else the demo's sentences with ``demo``, else a streamed dataset."""
    if options.text_file is not None:
        train, held_out, note = split_text(read_text_file(options.text_file))
        return TrainingData(f"{options.text_file} ({len(train)} training lines)", note, train, held_out)
    if options.demo and options.dataset is None:
        # Enough sentences that the run sees each about once (a demo sentence is about 12 tokens).
        train = demo_corpus(max(200, options.training_tokens // 10), seed=options.seed)
        eval_seed = DEMO_EVAL_SEED + options.seed
        return TrainingData(
            f"toyworld.demo_corpus({len(train)}, seed={options.seed})",
            f"{DEMO_EVAL_SENTENCES} fresh demo sentences (seed {eval_seed}, not the training ones)",
            train,
            demo_corpus(DEMO_EVAL_SENTENCES, seed=eval_seed),
        )
    name = options.dataset or DEFAULT_DATASET
    return TrainingData(name, f"the first documents of {name} (streamed; also seen in training)", dataset_name=name)


def read_text_file(path: Path) -> list[str]:
    """Documents for training: one per non-empty line of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--text-file {path} does not exist or is not a file")
    data = path.read_bytes()
    try:
        lines = data.decode("utf-8-sig").splitlines()  # tolerate the BOM some editors add
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"--text-file {path} is not UTF-8 text (bad byte on line {line}); save it as UTF-8") from None
    docs = [line.strip() for line in lines if line.strip()]
    if not docs:
        raise UserError(f"--text-file {path} has no text; put one document per line")
    return docs


def text_dataset(texts: Sequence[str]) -> Any:
    """An in-memory Hugging Face dataset with a "text" column, as SAELens' activation store expects."""
    from datasets import Dataset

    return Dataset.from_dict({"text": list(texts)})


@dataclass
class ModelTrainingSpec:
    """Everything that decides an SAE trained on a language model."""

    model_label: str
    hook_name: str
    architecture: str
    d_sae: int
    l1_coefficient: float
    k: int
    lr: float
    training_tokens: int
    batch_size_tokens: int
    context_size: int
    seed: int
    device: str
    dataset_path: str  # a Hugging Face dataset name, or a description of the local text
    model_kwargs: dict[str, Any]
    n_checkpoints: int = 0
    checkpoint_dir: Path | None = None
    resume_from: Path | None = None
    wandb: bool = False
    wandb_project: str = "mechinterp_chapter5"
    curve_points: int = 150

    @property
    def total_steps(self) -> int:
        return self.training_tokens // self.batch_size_tokens


def model_training_spec(
    options: ModelOptions, model: Any, model_label: str, device: str, data: TrainingData, checkpoint_root: Path
) -> ModelTrainingSpec:
    """The full specification once the model is loaded (its width sets the default dictionary size).

    Args:
        model: the loaded HookedTransformer.
        model_label: names the model in titles and in the SAE's metadata.
        device: where to train.
        data: the training text (its label goes into the SAE's metadata).
        checkpoint_root: where checkpoints go (the periodic ones, and the one an interrupt saves).
    """
    d_sae = options.d_sae or D_SAE_PER_WIDTH * int(model.cfg.d_model)
    if options.architecture == "topk" and options.k > d_sae:
        raise UserError(f"--k {options.k} cannot exceed the dictionary size ({d_sae} latents); lower --k")
    if options.context_size > model.cfg.n_ctx:
        raise UserError(f"--context-size {options.context_size} exceeds the model's context of {model.cfg.n_ctx} tokens")
    return ModelTrainingSpec(
        model_label=model_label,
        hook_name=options.hook,
        architecture=options.architecture,
        d_sae=d_sae,
        l1_coefficient=options.l1_coefficient,
        k=options.k,
        lr=options.lr,
        training_tokens=options.training_tokens,
        batch_size_tokens=options.batch_size,
        context_size=options.context_size,
        seed=options.seed,
        device=device,
        dataset_path=data.label,
        model_kwargs=MODEL_KWARGS,
        n_checkpoints=options.checkpoints,
        # Always a folder, even with no periodic checkpoints: Ctrl-C saves one there to resume from.
        checkpoint_dir=checkpoint_root,
        resume_from=options.resume_from,
        wandb=options.wandb,
        wandb_project=options.wandb_project,
    )


def runner_config(spec: ModelTrainingSpec, d_in: int) -> Any:
    """SAELens' ``LanguageModelSAERunnerConfig`` for the spec."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    if spec.training_tokens < spec.batch_size_tokens:
        raise UserError(
            f"--training-tokens {spec.training_tokens} is smaller than one batch (--batch-size {spec.batch_size_tokens})"
        )
    sae_cfg = build_training_sae(
        spec.architecture,
        d_in,
        spec.d_sae,
        spec.l1_coefficient,
        spec.k,
        # Ramp the L1 penalty in over the first 5% of steps so latents are not killed before they learn.
        l1_warm_up_steps=spec.total_steps // 20,
        normalize_activations="expected_average_only_in",
    )
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name=spec.model_label,
        hook_name=spec.hook_name,
        dataset_path=spec.dataset_path,
        is_dataset_tokenized=False,
        streaming=True,
        context_size=spec.context_size,
        training_tokens=spec.training_tokens,
        train_batch_size_tokens=spec.batch_size_tokens,
        store_batch_size_prompts=8,
        # SAELens' shuffling buffer holds n_batches_in_buffer x context_size tokens; it must hold
        # several training batches, or it cannot mix activations from different documents.
        n_batches_in_buffer=max(16, math.ceil(4 * spec.batch_size_tokens / spec.context_size)),
        lr=spec.lr,
        lr_scheduler_name="constant",
        lr_decay_steps=spec.total_steps // 5,
        dead_feature_window=max(10, min(1000, spec.total_steps // 4)),
        feature_sampling_window=max(10, min(2000, spec.total_steps // 2)),
        # BOS (= end-of-text) positions carry a huge norm in GPT-2 and say nothing about the text; the
        # whole project leaves them out of every statistic, so the SAE does not train on them either.
        exclude_special_tokens=True,
        model_from_pretrained_kwargs=dict(spec.model_kwargs),
        prepend_bos=True,
        n_batches_for_norm_estimate=min(100, max(5, spec.total_steps // 10)),
        n_checkpoints=spec.n_checkpoints,
        checkpoint_path=str(spec.checkpoint_dir) if spec.checkpoint_dir is not None else None,
        resume_from_checkpoint=str(spec.resume_from) if spec.resume_from is not None else None,
        output_path=None,  # the final SAE is saved by save_trained_sae (atomically, in inference form)
        logger=LoggingConfig(log_to_wandb=spec.wandb, wandb_project=spec.wandb_project),
        device=spec.device,
        seed=spec.seed,
        verbose=False,
    )


@dataclass
class ModelTrainingResult:
    sae: Any  # the trained sae_lens TrainingSAE (normalisation folded back into the weights)
    log_sparsity: torch.Tensor  # [d_sae] log10 firing density over the last sparsity window
    curve: TrainingCurve
    runner_cfg: dict[str, Any]
    checkpoint_dir: str | None  # the run's checkpoint folder, None if it saved none
    train_seconds: float


def train_on_model(
    model: Any,
    spec: ModelTrainingSpec,
    dataset: Any | None,
    progress: ProgressFn | None = None,
    log: Log | None = None,
) -> ModelTrainingResult:
    """Train an SAE on ``model``'s activations at ``spec.hook_name`` with SAELens' LM runner.

    Args:
        model: a loaded HookedTransformer (passed to the runner as ``override_model``).
        dataset: an in-memory dataset with a "text" column (``override_dataset``), or None to stream
            ``spec.dataset_path`` from the Hugging Face Hub.
        log: told when an interrupt's checkpoint is being written.

    Raises:
        TrainingInterrupted: on Ctrl-C or SIGTERM, once the checkpoint to resume from is complete.
    """
    if spec.hook_name not in model.hook_dict:
        raise UserError(
            f"--hook {spec.hook_name} is not a hook of this model (it has {model.cfg.n_layers} layers); "
            "e.g. blocks.8.hook_resid_pre"
        )
    if spec.context_size > model.cfg.n_ctx:
        raise UserError(f"--context-size {spec.context_size} exceeds the model's context of {model.cfg.n_ctx} tokens")
    d_in = int(model.cfg.d_model)
    cfg = runner_config(spec, d_in)
    curve = TrainingCurve(every=max(1, spec.total_steps // spec.curve_points))
    if spec.resume_from is not None:
        check_resumable(spec.resume_from, cfg)
        saved_curve = Path(spec.resume_from) / constants.CURVE_IN_CHECKPOINT
        if saved_curve.is_file():  # an interrupt's checkpoint: MI7 continues the curve
            curve = TrainingCurve.load(saved_curve)
        elif log is not None:
            log("note: this checkpoint has no training curve (SAELens' periodic checkpoints do not keep one), "
                "so MI7 starts where it resumes")
    torch.manual_seed(spec.seed)  # SAE initialisation and the shuffling buffer draw from torch's RNG
    with quiet_saelens():
        try:
            runner = watched_runner(
                cfg, lambda trainer: attach_curve(trainer, curve, progress), log,
                lambda folder: curve.save(folder / constants.CURVE_IN_CHECKPOINT),
                override_dataset=dataset, override_model=model,
            )
        except Exception as err:
            if dataset is None:
                raise EnvironmentProblem(
                    f"could not open the dataset {spec.dataset_path!r} ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:160] if str(err) else ''}). Check the name, connect to the "
                    "internet, or train on local text with --text-file FILE"
                ) from err
            raise
        start = time.perf_counter()
        sae = runner.run()
        seconds = time.perf_counter() - start
    return ModelTrainingResult(
        sae=sae,
        log_sparsity=runner.trainer.log_feature_sparsity,
        curve=curve,
        runner_cfg=cfg.to_dict(),
        # None when nothing was saved (no periodic checkpoints asked for): there is no folder to point at.
        checkpoint_dir=cfg.checkpoint_path if cfg.checkpoint_path and Path(cfg.checkpoint_path).is_dir() else None,
        train_seconds=seconds,
    )


# What must be the same for --resume-from to continue a run rather than start a different one, as
# (label for the user, path into SAELens' runner config dict).
RESUME_MUST_MATCH = (
    ("--model", ("model_name",)),
    ("--hook", ("hook_name",)),
    ("--architecture", ("sae", "architecture")),
    ("--d-sae", ("sae", "d_sae")),
    ("--training-tokens", ("training_tokens",)),
    ("--batch-size", ("train_batch_size_tokens",)),
    ("--context-size", ("context_size",)),
    ("--dataset / --text-file", ("dataset_path",)),
    ("--seed", ("seed",)),
)
CHECKPOINT_FILES = ("cfg.json", "sae_weights.safetensors", "trainer_state.pt", RUNNER_CFG_FILENAME)


def check_resumable(folder: Path, cfg: Any) -> None:
    """Refuse a ``--resume-from`` folder that is not a complete checkpoint of a run with these options.

    Args:
        folder: the folder given to ``--resume-from``.
        cfg: the ``LanguageModelSAERunnerConfig`` of the run about to start.

    Raises:
        UserError: naming the checkpoint folders inside ``folder`` (a run's checkpoint root was given),
            the missing files, or each option that differs from the interrupted run's.
    """
    folder = Path(folder)
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        # Given a run's checkpoint root (OUT/checkpoints or OUT/checkpoints/<run>)? Point at its latest one.
        inside = [p for p in (*folder.glob("*/"), *folder.glob("*/*/")) if (p / "trainer_state.pt").is_file()]
        latest = max(inside, key=lambda p: (int(p.name) if p.name.isdigit() else -1, p.stat().st_mtime), default=None)
        hint = f"; it holds checkpoints, the latest: --resume-from {latest}" if latest else ""
        raise UserError(f"--resume-from {folder} is not a complete checkpoint (no {', '.join(missing)}){hint}")
    saved = json.loads((folder / RUNNER_CFG_FILENAME).read_text())
    now = cfg.to_dict()
    differ = []
    for label, path in RESUME_MUST_MATCH:
        old, new = saved, now
        for key in path:
            old = old.get(key) if isinstance(old, dict) else None
            new = new.get(key) if isinstance(new, dict) else None
        if old != new:
            differ.append(f"{label} was {old!r}, now {new!r}")
    if differ:
        raise UserError(
            f"--resume-from {folder} was made with other options ({'; '.join(differ)}); rerun with the "
            "interrupted run's options (its command is in the interrupt message and its run record)"
        )


def inference_sae(training_sae: Any) -> Any:
    """The inference form of a trained SAE (what ``SAE.load_from_disk`` returns), decoder rows unit-norm.

    SAELens' ``process_state_dict_for_saving_inference`` folds TopK's decoder norms; for the ReLU
    architecture the decoder norms are folded into the encoder here (exact: the ReLU commutes with a
    positive scale), so every saved SAE reports activations along unit directions, like pretrained ones.
    """
    from sae_lens import SAE

    state = {k: v.detach().clone() for k, v in training_sae.state_dict().items()}
    training_sae.process_state_dict_for_saving_inference(state)
    with warnings.catch_warnings():
        # SAELens advises HookedSAETransformer.from_pretrained_no_processing whenever an SAE carries
        # model kwargs; the project loads models through mechinterp.core.loading, which applies them.
        warnings.simplefilter("ignore", UserWarning)
        sae = SAE.from_dict(training_sae.cfg.get_inference_sae_cfg_dict())
    sae.load_state_dict(state)
    if sae.cfg.architecture() == "standard":
        sae.fold_W_dec_norm()
    sae.eval()
    return sae


def save_trained_sae(
    sae: Any, log_sparsity: torch.Tensor, runner_cfg: dict[str, Any], path: Path
) -> list[Path]:
    """Save with SAELens' ``save_model`` plus ``sparsity.safetensors``, replacing ``path`` atomically.

    Returns the files written (cfg.json, sae_weights.safetensors, sparsity.safetensors, runner_cfg.json).
    """
    from safetensors.torch import save_file

    path = Path(path)
    # The folder as a whole is the atomic unit, so the files inside are written plainly. It is renamed
    # into place at once (not held back to the end of the run like the figures): a trained SAE is
    # finished work, worth keeping even if a later step of the run fails.
    with atomic_dir(path) as tmp:
        sae.save_model(tmp)
        save_file({"sparsity": log_sparsity.detach().float().cpu().contiguous()}, tmp / SPARSITY_FILENAME)
        (tmp / RUNNER_CFG_FILENAME).write_text(json.dumps(runner_cfg, indent=2, default=str), encoding="utf-8")
    return [path / "cfg.json", path / "sae_weights.safetensors", path / SPARSITY_FILENAME, path / RUNNER_CFG_FILENAME]


@dataclass
class ModelEvaluation:
    """An SAE judged on a language model, as SAELens' evals compute it (special tokens excluded)."""

    l0: float
    explained_variance: float
    mse: float
    cossim: float
    ce_loss_clean: float
    ce_loss_with_sae: float
    ce_loss_zero_ablated: float
    dead_latents: int  # latents that never fired on the evaluation tokens
    n_tokens: int

    @property
    def loss_recovered(self) -> float | None:
        """(zero-ablated - with SAE) / (zero-ablated - clean): 1 = as good as the model, 0 = as bad as
        deleting the activations. None when zero-ablation does not hurt (the score means nothing then)."""
        gap = self.ce_loss_zero_ablated - self.ce_loss_clean
        if gap <= 1e-6:
            return None
        return (self.ce_loss_zero_ablated - self.ce_loss_with_sae) / gap

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "loss_recovered": self.loss_recovered}


def evaluate_on_model(
    sae: Any,
    model: Any,
    dataset: Any,
    context_size: int,
    n_batches: int,
    batch_prompts: int = 8,
) -> ModelEvaluation:
    """L0, explained variance and next-token loss (clean / SAE-spliced / zero-ablated) via ``sae_lens.evals``.

    Args:
        sae: an inference SAE whose metadata names its hook (``cfg.metadata.hook_name``).
        dataset: texts to evaluate on (a "text"-column dataset or a Hugging Face dataset name),
            ideally not the training text.
    """
    from sae_lens import ActivationsStore, run_evals
    from sae_lens.evals import EvalConfig
    from sae_lens.training.activation_scaler import ActivationScaler

    with quiet_saelens(), torch.no_grad():
        store = ActivationsStore.from_sae(
            model,
            sae,
            dataset=dataset,
            context_size=context_size,
            streaming=True,
            store_batch_size_prompts=batch_prompts,
            n_batches_in_buffer=4,
            train_batch_size_tokens=context_size,
            device=str(sae.device),
        )
        eval_cfg = EvalConfig(
            batch_size_prompts=batch_prompts,
            n_eval_reconstruction_batches=n_batches,
            n_eval_sparsity_variance_batches=n_batches,
            compute_ce_loss=True,
            compute_sparsity_metrics=True,
            compute_variance_metrics=True,
            compute_featurewise_density_statistics=True,
        )
        metrics, feature_metrics = run_evals(
            sae, store, model, ActivationScaler(), eval_cfg, exclude_special_tokens=True
        )
    density = np.asarray(feature_metrics["feature_density"], dtype=float)
    ce = metrics["model_performance_preservation"]
    quality = metrics["reconstruction_quality"]
    return ModelEvaluation(
        l0=float(metrics["sparsity"]["l0"]),
        explained_variance=float(quality["explained_variance"]),
        mse=float(quality["mse"]),
        cossim=float(quality["cossim"]),
        ce_loss_clean=float(ce["ce_loss_without_sae"]),
        ce_loss_with_sae=float(ce["ce_loss_with_sae"]),
        ce_loss_zero_ablated=float(ce["ce_loss_with_ablation"]),
        dead_latents=int((density == 0).sum()),
        n_tokens=int(metrics["token_stats"]["total_tokens_eval_sparsity_variance"]),
    )


def count_tokens(model: Any, texts: Sequence[str]) -> int:
    """Tokens in ``texts`` (without BOS), to tell the user how many passes over the text training makes."""
    tok = model.tokenizer
    return int(sum(len(tok.encode(t, add_special_tokens=False)) for t in texts))


def planted_direction_match(sae: Any, reference_sae: Any, features: dict[str, int]) -> dict[str, dict[str, float]]:
    """For each named feature of ``reference_sae``: the trained latent whose decoder row is closest to it.

    Used with the toy world, whose planted concept directions are known.
    """
    from sae_lens.util import cosine_similarities

    cos = cosine_similarities(sae.W_dec.detach().float(), reference_sae.W_dec.detach().float())  # [d_sae, d_ref]
    out: dict[str, dict[str, float]] = {}
    for name, feature in features.items():
        column = cos[:, feature]
        best = int(column.argmax())
        out[name] = {"reference_feature": feature, "latent": best, "cos": float(column[best])}
    return out
