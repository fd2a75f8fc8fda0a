"""Chapter 5's ``--synthetic`` mode: SAEs trained on activations whose true features are known, and scored.

SAELens' ``sae_lens.synthetic`` builds the data: a ``FeatureDictionary`` of ``n_features`` unit
directions in a space of ``hidden_dim < n_features`` dimensions (superposition), and an
``ActivationGenerator`` that fires each feature sparsely with its own probability and magnitude.
SAELens' ``SAETrainer`` trains each architecture on that stream with the same budget. Because the true
features are known, a trained SAE can be *scored*: does some decoder row point along each true feature
(cosine similarity), and how many true features are recovered? Random directions give the baseline.

A notebook runs the whole comparison in one call::

    comparison = run_synthetic_comparison(SyntheticOptions(n_features=64, hidden_dim=16))
    comparison          # SyntheticComparison(64 true features in 16 dims ...; best: topk)
    comparison.best.match.max_cos

Nothing here prints: progress is reported through an optional callback and the script prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mechinterp.core.errors import UserError
from mechinterp.core.options import fraction, option, positive_int
from mechinterp.core.source import torch_threads
from mechinterp.training.common import (
    ARCHITECTURES,
    KnobOptions,
    ProgressFn,
    TrainingCurve,
    attach_curve,
    build_training_sae,
    check_architectures,
    quiet_saelens,
)
from mechinterp.training.saelens_adapter import fit_saving_on_interrupt

# A true feature counts as "recovered" when some decoder row has at least this cosine similarity with it.
DEFAULT_RECOVERY_THRESHOLD = 0.9


@dataclass(kw_only=True)
class SyntheticOptions(KnobOptions):
    """One synthetic experiment: the data, the SAEs' budget, how they are scored, and which SAEs.

    The defaults are ``--synthetic``'s (the knobs of :class:`~mechinterp.training.common.KnobOptions`
    left None take ``MODE_DEFAULTS["synthetic"]``); validated on creation (raises :class:`UserError`).
    ``training_tokens`` counts synthetic samples here, one activation vector each.

    Attributes:
        n_features: ground-truth features.
        hidden_dim: dimensions they live in (``n_features > hidden_dim`` is superposition).
        firing_prob: (max, min): Zipfian firing probabilities from max (feature 0) down to min (last
            feature): a few common, many rare features.
        recovery_threshold: a true feature is recovered when a decoder row has |cos| above this.
        eval_samples: held-out samples for L0, explained variance and F1.
        magnitude_mean: mean firing magnitude of a true feature.
        magnitude_std: its standard deviation.
        l1_warm_up_steps: standard SAE: steps over which the penalty ramps up from 0.
        curve_points: about how many steps the training curve records.

    The knobs: ``architecture`` ("both", the default, or one of them), ``d_sae`` (latents per SAE, the
    same for every architecture; None: ``n_features``), ``training_tokens``, ``batch_size``, ``lr``
    (decayed to 0 over the last fifth of training), ``l1_coefficient``, ``k``, and ``seed`` (the data,
    the SAEs' initialisation and the evaluation samples).
    """

    n_features: int = option(256, "ground-truth features (default: %(default)s)", type=positive_int)
    hidden_dim: int = option(
        64, "dimensions they are packed into; fewer than --n-features = superposition (default: %(default)s)",
        type=positive_int)
    firing_prob: tuple[float, float] = option(
        (0.08, 0.01), "Zipfian firing probabilities, from the most to the least frequent feature (default: 0.08 0.01)",
        type=fraction, nargs=2, metavar=("MAX", "MIN"))
    recovery_threshold: float = option(
        DEFAULT_RECOVERY_THRESHOLD, "a true feature is recovered when a decoder row has |cos| above this "
        "(default: %(default)s)", type=fraction)
    eval_samples: int = option(50_000, "held-out synthetic samples for L0/EV/F1 (default: %(default)s)",
                               type=positive_int)
    magnitude_mean: float = 1.0
    magnitude_std: float = 0.1
    l1_warm_up_steps: int = 100
    curve_points: int = 150

    def __post_init__(self) -> None:
        self.take_mode_defaults("synthetic")
        if self.architecture is None:
            self.architecture = "both"
        if self.d_sae is None:
            self.d_sae = self.n_features
        self.firing_prob = tuple(self.firing_prob)
        self.validate()

    @property
    def architectures(self) -> tuple[str, ...]:
        """The SAEs trained with the same budget and compared, in this order."""
        return ARCHITECTURES if self.architecture == "both" else (self.architecture,)

    def validate(self) -> None:
        """Raise :class:`UserError` on options that cannot make a valid experiment."""
        if min(self.n_features, self.d_sae, self.batch_size, self.eval_samples, self.k) < 1:
            raise UserError("--n-features, --d-sae, --batch-size, --eval-samples and --k must be at least 1")
        if self.hidden_dim < 2:
            raise UserError("--hidden-dim must be at least 2")
        if len(self.firing_prob) != 2:
            raise UserError("--firing-prob takes two numbers: MAX then MIN")
        max_prob, min_prob = self.firing_prob
        if min_prob > max_prob:
            raise UserError("--firing-prob takes MAX then MIN, and MIN must not exceed MAX")
        if not 0 < min_prob <= max_prob <= 1:
            raise UserError("firing probabilities must satisfy 0 < min <= max <= 1")
        if self.training_tokens < self.batch_size:
            raise UserError(f"--batch-size {self.batch_size} is larger than --training-tokens {self.training_tokens}")
        check_architectures(self.architectures, self.k, self.d_sae)

    def config_record(self) -> dict[str, Any]:
        """The experiment as MI8.json records it (its field names predate the flags': kept for comparisons)."""
        max_prob, min_prob = self.firing_prob
        return {
            "n_features": self.n_features, "hidden_dim": self.hidden_dim, "d_sae": self.d_sae,
            "firing_prob_max": max_prob, "firing_prob_min": min_prob, "magnitude_mean": self.magnitude_mean,
            "magnitude_std": self.magnitude_std, "training_samples": self.training_tokens,
            "batch_size": self.batch_size, "lr": self.lr, "l1_coefficient": self.l1_coefficient,
            "l1_warm_up_steps": self.l1_warm_up_steps, "k": self.k, "eval_samples": self.eval_samples,
            "recovery_threshold": self.recovery_threshold, "seed": self.seed, "curve_points": self.curve_points,
        }


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

    def __repr__(self) -> str:
        n_features, hidden_dim = self.features.shape
        return (f"SyntheticWorld({n_features} true features in {hidden_dim} dims, {self.expected_l0:.2f} firing "
                "per sample on average)")


def make_synthetic_world(cfg: SyntheticOptions) -> SyntheticWorld:
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
    max_prob, min_prob = cfg.firing_prob
    if min_prob < max_prob:
        probs = ZipfianFiringProbabilityConfig(
            exponent=0.5, max_prob=max_prob, min_prob=min_prob
        ).generate(cfg.n_features, seed=cfg.seed)
    else:
        probs = ConstantFiringProbabilityConfig(max_prob).generate(cfg.n_features, seed=cfg.seed)
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

    def __repr__(self) -> str:
        return (f"MatchScores({len(self.max_cos)} true features: {self.recovery:.1%} recovered "
                f"(|cos| > {self.threshold}), mean max |cos| {self.mean_max_cos:.3f})")


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

    def __repr__(self) -> str:
        return (f"SyntheticResult({self.architecture}: {self.match.recovery:.1%} of {len(self.match.max_cos)} true "
                f"features recovered (|cos| > {self.match.threshold}), mean max |cos| {self.match.mean_max_cos:.3f}, "
                f"MCC {self.mcc:.3f}, L0 {self.l0:.2f} (true {self.true_l0:.2f}), {self.dead_latents} dead, "
                f"explained variance {self.explained_variance:.3f}, trained in {self.train_seconds:.1f}s)")


@dataclass
class SyntheticComparison:
    """Each architecture trained with the same budget on the same data, scored against the truth.

    Attributes:
        options: the experiment.
        world: the ground truth.
        results: one scored SAE per architecture, in the order of ``options.architectures``.
        baseline: the same scores for random directions: what no learning at all gets.
    """

    options: SyntheticOptions
    world: SyntheticWorld
    results: list[SyntheticResult]
    baseline: MatchScores

    @property
    def best(self) -> SyntheticResult:
        """The architecture that recovers the most true features (then: the higher mean max |cos|)."""
        return max(self.results, key=lambda r: (r.match.recovery, r.match.mean_max_cos))

    def summary(self) -> dict[str, Any]:
        """The experiment and every score (MI8.json and the run record)."""
        return {
            "config": self.options.config_record(),
            "expected_true_l0": self.world.expected_l0,
            "results": [r.summary() for r in self.results],
            "random_baseline": {"recovery": self.baseline.recovery, "mean_max_cos": self.baseline.mean_max_cos},
            "best_architecture": self.best.architecture,
            "best_recovery": self.best.match.recovery,
        }

    def __repr__(self) -> str:
        cfg = self.options
        scores = ", ".join(f"{r.architecture} {r.match.recovery:.1%}" for r in self.results)
        return (f"SyntheticComparison({cfg.n_features} true features in {cfg.hidden_dim} dims, {cfg.d_sae} latents "
                f"per SAE; recovered (|cos| > {cfg.recovery_threshold}): {scores}, random directions "
                f"{self.baseline.recovery:.1%}; best: {self.best.architecture})")


def _trainer_config(cfg: SyntheticOptions, total_steps: int) -> Any:
    """SAELens' ``SAETrainerConfig`` for one SAE of the experiment (on the CPU, no checkpoints, no W&B)."""
    from sae_lens import LoggingConfig
    from sae_lens.config import SAETrainerConfig

    return SAETrainerConfig(
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        total_training_samples=cfg.training_tokens,
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


def train_synthetic_sae(
    architecture: str,
    world: SyntheticWorld,
    cfg: SyntheticOptions,
    progress: ProgressFn | None = None,
) -> SyntheticResult:
    """Train one SAE on the synthetic stream with SAELens' trainer, then score it against the truth."""
    from sae_lens import SAETrainer, TrainingSAE
    from sae_lens.synthetic import SyntheticActivationIterator, eval_sae_on_synthetic_data

    sae_cfg = build_training_sae(
        architecture, cfg.hidden_dim, cfg.d_sae, cfg.l1_coefficient, cfg.k, cfg.l1_warm_up_steps
    )
    total_steps = cfg.training_tokens // cfg.batch_size
    # Same seed for both architectures: the same initial randomness and the same stream of samples.
    torch.manual_seed(cfg.seed + 1)
    sae = TrainingSAE.from_dict(sae_cfg.to_dict())
    trainer_cfg = _trainer_config(cfg, total_steps)
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
) -> SyntheticComparison:
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
    options.validate()
    with torch_threads(threads), quiet_saelens():
        world = make_synthetic_world(options)
        results = [
            train_synthetic_sae(arch, world, options, progress(arch) if progress else None)
            for arch in options.architectures
        ]
    baseline = random_direction_baseline(options.d_sae, world.features, options.recovery_threshold, options.seed + 3)
    return SyntheticComparison(options, world, results, baseline)
