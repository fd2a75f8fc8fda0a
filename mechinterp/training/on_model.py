"""Chapter 5's model mode: an SAE trained on a language model's activations at one hook, through SAELens.

SAELens' ``LanguageModelSAETrainingRunner`` trains it, with the locally loaded model and (for local
text) an in-memory dataset passed as overrides; what that needs from SAELens beyond its documented API
is isolated in :mod:`mechinterp.training.saelens_adapter`. This module holds the mode's options, its
training text, the specification and runner configuration, the checks that a ``--resume-from``
checkpoint continues the same run, and saving the result in the form the other chapters load
(``--sae-path``). Judging the trained SAE is :mod:`mechinterp.training.evaluation`'s job.

Nothing here prints: progress is reported through optional callbacks and the script prints.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mechinterp.core import constants
from mechinterp.core.constants import RUNNER_CFG_FILENAME, SPARSITY_FILENAME
from mechinterp.core.errors import EnvironmentProblem, UserError
from mechinterp.core.io import atomic_dir
from mechinterp.core.options import option, positive_int
from mechinterp.core.progress import Log
from mechinterp.core.toyworld import demo_corpus
from mechinterp.training.common import (
    KnobOptions,
    ProgressFn,
    TrainingCurve,
    attach_curve,
    build_training_sae,
    check_architectures,
    quiet_saelens,
)
from mechinterp.training.saelens_adapter import watched_runner

# The dataset gpt2-small-res-jb was trained on (streamed from the Hugging Face Hub).
DEFAULT_DATASET = "Skylion007/openwebtext"
# The residual stream must be loaded the way the pretrained SAEs expect it (see mechinterp.core.loading).
MODEL_KWARGS = {"center_writing_weights": True}
D_SAE_PER_WIDTH = 8  # default dictionary size = 8 x the model's width
DEMO_EVAL_SEED = 2024  # demo evaluation sentences come from a different seed than the training ones
DEMO_EVAL_SENTENCES = 400


@dataclass(kw_only=True)
class ModelOptions(KnobOptions):
    """Chapter 5's model mode: an SAE trained on a language model's activations at one hook.

    Knobs left None take the defaults of the mode (``MODE_DEFAULTS["demo"]`` with ``demo``, else
    ``MODE_DEFAULTS["model"]``), filled in on creation; the options are then validated (raises
    :class:`UserError`). ``demo``, ``model`` and ``device`` come from the "model and SAE" flags
    (:class:`~mechinterp.core.source.SourceOptions`); the others are this mode's own flags.

    Attributes:
        demo: train on the toy world's model (built locally) instead of ``model``.
        model: TransformerLens model name, or a local Hugging Face model folder.
        device: "cpu", "cuda", "mps", or None for CUDA when available.
        text_file: train on this UTF-8 file, one document per line (10% held out for the evaluation).
        dataset: train on this Hugging Face dataset, streamed (None with no ``text_file``: the demo's
            sentences with ``demo``, else ``DEFAULT_DATASET``).
        hook: TransformerLens hook whose activations the SAE learns.
        context_size: tokens per training sequence.
        checkpoints: intermediate checkpoints to save (0 = none).
        resume_from: a checkpoint folder of an interrupted run to continue.
        eval_batches: batches of 8 sequences for the evaluation after training.
        wandb: also log to Weights & Biases.
        wandb_project: its project name.

    The knobs: ``architecture`` ("standard", the default, or "topk"), ``d_sae`` (None:
    ``D_SAE_PER_WIDTH`` x the model's width, known once loaded), ``l1_coefficient``, ``k``, ``lr``,
    ``training_tokens``, ``batch_size`` (tokens per optimisation step), and ``seed`` (the SAE's
    initialisation, the shuffling and the demo sentences).
    """

    demo: bool = False
    model: str = constants.DEFAULT_MODEL
    device: str | None = None
    text_file: Path | None = option(
        None, "train on this UTF-8 text file, one document per line (10%% of lines are held out for the evaluation)",
        type=Path, metavar="FILE")
    dataset: str | None = option(
        None, "train on a Hugging Face dataset with a 'text' column, streamed (default without --text-file or "
        f"--demo: {DEFAULT_DATASET})", metavar="NAME")
    hook: str = option(constants.DEFAULT_SAE_ID,
                       "TransformerLens hook whose activations the SAE learns (default: %(default)s)")
    context_size: int = option(128, "tokens per training sequence (default: %(default)s)", type=positive_int)
    checkpoints: int = option(
        2, "intermediate checkpoints saved under OUT/checkpoints/ (0 = none; Ctrl-C saves one to resume from "
        "either way; default: %(default)s)", type=int, metavar="N")
    resume_from: Path | None = option(
        None, "continue an interrupted run from one of its checkpoint folders (same options as that run)",
        type=Path, metavar="DIR")
    eval_batches: int = option(10, "batches of 8 sequences for the evaluation after training (default: %(default)s)",
                               type=positive_int)
    wandb: bool = option(False, "also log the run to Weights & Biases (needs an account)")
    wandb_project: str = option("mechinterp_chapter5", "W&B project name for --wandb")

    def __post_init__(self) -> None:
        self.take_mode_defaults("demo" if self.demo else "model")
        if self.architecture is None:
            self.architecture = "standard"
        if self.architecture == "both":
            raise UserError("--architecture both is for --synthetic; pick standard or topk to train on a model")
        check_architectures([self.architecture], self.k, self.d_sae)
        if self.text_file is not None and self.dataset is not None:
            raise UserError("give either --text-file or --dataset, not both")
        if self.checkpoints < 0:
            raise UserError("--checkpoints must be 0 or more")
        if self.batch_size > self.training_tokens:
            raise UserError(f"--batch-size {self.batch_size} is larger than --training-tokens {self.training_tokens}")


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

    def __repr__(self) -> str:
        if self.train_texts is None:
            return f"TrainingData({self.label}; evaluated on {self.eval_note})"
        n_eval = len(self.eval_texts or [])
        return (f"TrainingData({self.label}: {len(self.train_texts):,} training documents, {n_eval:,} for the "
                f"evaluation: {self.eval_note})")


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


def count_tokens(model: Any, texts: Sequence[str]) -> int:
    """Tokens in ``texts`` (without BOS), to tell the user how many passes over the text training makes."""
    tok = model.tokenizer
    return int(sum(len(tok.encode(t, add_special_tokens=False)) for t in texts))


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
    """An SAE trained on a language model, with what the run recorded about it."""

    sae: Any  # the trained sae_lens TrainingSAE (normalisation folded back into the weights)
    log_sparsity: torch.Tensor  # [d_sae] log10 firing density over the last sparsity window
    curve: TrainingCurve
    runner_cfg: dict[str, Any]  # SAELens' LanguageModelSAERunnerConfig as a dict
    checkpoint_dir: str | None  # the run's checkpoint folder, None if it saved none
    train_seconds: float

    def __repr__(self) -> str:
        sae_cfg = self.runner_cfg.get("sae") or {}
        last = (f"; last: loss {self.curve.loss[-1]:.4g}, L0 {self.curve.l0[-1]:.2f}, explained variance "
                f"{self.curve.explained_variance[-1]:.3f}" if self.curve.step else "")
        return (f"ModelTrainingResult({sae_cfg.get('architecture', '?')} SAE, {sae_cfg.get('d_sae', '?')} latents, "
                f"{self.runner_cfg.get('hook_name', '?')}: {self.curve.step[-1] if self.curve.step else 0:,} steps "
                f"in {self.train_seconds:.0f}s{last}; checkpoints: {self.checkpoint_dir or 'none'})")


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
    cfg = runner_config(spec, int(model.cfg.d_model))
    curve = _starting_curve(spec, cfg, log)
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


def _starting_curve(spec: ModelTrainingSpec, cfg: Any, log: Log | None) -> TrainingCurve:
    """An empty training curve; with ``--resume-from`` (checked against ``cfg`` first), the curve so far."""
    curve = TrainingCurve(every=max(1, spec.total_steps // spec.curve_points))
    if spec.resume_from is None:
        return curve
    check_resumable(spec.resume_from, cfg)
    saved_curve = Path(spec.resume_from) / constants.CURVE_IN_CHECKPOINT
    if saved_curve.is_file():  # an interrupt's checkpoint: MI7 continues the curve
        return TrainingCurve.load(saved_curve)
    if log is not None:
        log("note: this checkpoint has no training curve (SAELens' periodic checkpoints do not keep one), "
            "so MI7 starts where it resumes")
    return curve


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
