"""Chapter 5 - Train your own SAE, check it against ground truth, and use it in every other chapter.

Two modes, both training with SAELens:

* ``--synthetic``: activations built from a known sparse dictionary (SAELens' ``sae_lens.synthetic``:
  256 true features squeezed into 64 dimensions). Trains a ReLU + L1 ("standard") SAE and a TopK SAE
  with the same budget and scores both against the truth: per-feature recovery (a decoder row with
  cosine > 0.9), mean max cosine, MCC, L0, dead latents, explained variance. Prints a table, saves
  ``MI7.png`` (training curves) and ``MI8.png`` (sorted best cosine per true feature) with
  ``MI7.csv``, ``MI8.csv`` and ``MI8.json``.
* model mode (default): trains an SAE on a language model's activations at a hook (default GPT-2
  small, ``blocks.8.hook_resid_pre``) from ``--text-file`` (one document per line) or a Hugging Face
  ``--dataset``, through SAELens' ``LanguageModelSAETrainingRunner``. Saves the SAE into ``OUT/sae/``
  (SAELens ``save_model`` + ``sparsity.safetensors``), checkpoints into ``OUT/checkpoints/``, prints
  its evaluation (L0, explained variance, next-token loss clean / with the SAE / zero-ablated), and
  saves ``MI7.png`` + ``MI7.csv``. The saved SAE works in Chapters 1-4 through ``--sae-path OUT/sae``.

Run:
    python MechInterpTrainSAE.py --synthetic                      # about 1 minute on 2 CPU cores
    python MechInterpTrainSAE.py --demo --out runs/demo           # toy model, about 1 minute, offline
    python MechInterpInitialInvestigation.py --demo --sae-path runs/demo/sae
    python MechInterpTrainSAE.py --text-file <your_corpus.txt> --out runs/gpt2   # GPT-2 small
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechinterp.cli import (
    ArgumentParser,
    add_common_args,
    add_options,
    make_logger,
    option,
    options_from,
    output_folder,
    run_cli,
)
from mechinterp.core import constants
from mechinterp.core.errors import Interrupted, UserError
from mechinterp.core.io import OutputFolder
from mechinterp.core.loading import (
    DEFAULT_DTYPE,
    go_offline_if_hub_unreachable,
    load_hooked_model,
    load_sae,
    load_sae_from_disk,
    pick_device,
)
from mechinterp.core.progress import Log, progress_bar
from mechinterp.core.records import RunRecord, file_sha256
from mechinterp.core.source import demo_threads
from mechinterp.core.toyworld import DEMO_MODEL_NAME, DemoWorld, ensure_demo_world
from mechinterp.training.common import KnobOptions
from mechinterp.training.evaluation import ModelEvaluation, evaluate_on_model, planted_direction_match
from mechinterp.training.on_model import (
    MODEL_KWARGS,
    ModelOptions,
    ModelTrainingResult,
    ModelTrainingSpec,
    TrainingData,
    count_tokens,
    inference_sae,
    model_training_spec,
    save_trained_sae,
    text_dataset,
    train_on_model,
    training_data,
)
from mechinterp.training.report import (
    model_facts,
    model_results_text,
    model_title,
    saved_text,
    synthetic_text,
    synthetic_title,
    write_model_curves,
    write_synthetic,
)
from mechinterp.training.saelens_adapter import TrainingInterrupted
from mechinterp.training.synthetic import SyntheticComparison, SyntheticOptions, run_synthetic_comparison

Options = SyntheticOptions | ModelOptions


# --- the command line -----------------------------------------------------------------------------


@dataclass
class Mode:
    """Which activations the SAE learns from (this script's own flag)."""

    synthetic: bool = option(
        False, "train on SAELens synthetic data with known ground-truth features and score the SAEs against it")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Chapter 5: train an SAE with SAELens - on synthetic data with known features "
        "(--synthetic), or on a language model's activations - and evaluate it. "
        "(--sae-release/--sae-id are not used here: this script makes the SAE.)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults marked 'S / D / M' are for --synthetic / --demo / a real model.",
    )
    add_options(parser, Mode, "mode")
    add_options(parser, KnobOptions, "training knobs")
    add_options(parser, SyntheticOptions, "--synthetic data", only=SyntheticOptions.mode_fields())
    add_options(parser, ModelOptions, "model mode: data, hook, outputs", only=ModelOptions.mode_fields())
    add_common_args(parser, out_help="folder for figures, tables, the trained SAE and checkpoints",
                    model_default=constants.DEFAULT_MODEL, summary=False)
    args = parser.parse_args(argv)
    if args.sae_path is not None:
        parser.error("--sae-path is for the chapters that use an SAE; this script trains one (saved as OUT/sae)")
    if args.synthetic:
        given = [flag for flag, value in (("--demo", args.demo), ("--text-file", args.text_file),
                                          ("--dataset", args.dataset), ("--resume-from", args.resume_from),
                                          ("--wandb", args.wandb)) if value]
        if given:
            parser.error(f"--synthetic makes its own data; drop {', '.join(given)}")
    elif args.resume_from is not None and not Path(args.resume_from).is_dir():
        parser.error(f"--resume-from {args.resume_from} is not a checkpoint folder")
    try:
        mode_options(args)  # the options' own checks, reported as usage errors
    except UserError as err:
        parser.error(str(err))
    return args


def mode_options(args: argparse.Namespace) -> Options:
    """The flags as the chosen mode's options; knobs left out take that mode's defaults."""
    if args.synthetic:
        return options_from(args, SyntheticOptions)
    # The model and the device are the shared "model and SAE" flags.
    return options_from(args, ModelOptions, demo=args.demo, model=args.model, device=args.device)


def recorded_flags(args: argparse.Namespace, options: Options) -> dict[str, Any]:
    """The flags for the run record, with the knobs as the run used them (the mode's defaults filled in)."""
    return {**vars(args), **options.knobs_used()}


def step_bar(quiet: bool, total: int, desc: str):
    """A per-step bar on stderr; returns (bar, callback for the training functions' ``progress``)."""
    bar = progress_bar(total, desc, quiet, unit="step")

    def update(steps: int, metrics: dict[str, float]) -> None:
        bar.update(steps)
        if metrics:
            bar.set_postfix(loss=f"{metrics['loss']:.4g}", L0=f"{metrics['l0']:.1f}", EV=f"{metrics['ev']:.3f}",
                            refresh=False)

    return bar, update


# --- synthetic mode -------------------------------------------------------------------------------


def run_synthetic(options: SyntheticOptions, quiet: bool, out: OutputFolder, record: RunRecord, log: Log) -> None:
    if options.hidden_dim >= options.n_features:
        log(f"note: {options.n_features} features in {options.hidden_dim} dimensions is not superposition; "
            "recovery is easy here")
    log(f"synthetic data: {options.n_features} true features in {options.hidden_dim} dims; training "
        f"{', '.join(options.architectures)} SAE(s) with {options.d_sae} latents on {options.training_tokens:,} "
        "samples each")
    with record.timed("train_and_score"):
        comparison = train_synthetic(options, quiet)
    title = synthetic_title(options)
    print(synthetic_text(comparison, title))
    written = write_synthetic(out, comparison, title)
    record.wrote(*written)
    record.update(mode="synthetic", synthetic=comparison.summary())
    written.append(record.write(out))
    print("\nSaved " + "\n      ".join(str(path) for path in written))


def train_synthetic(options: SyntheticOptions, quiet: bool) -> SyntheticComparison:
    """Train and score every architecture, one progress bar at a time."""
    bars = []

    def progress(arch: str):
        for previous in bars:  # finish the last architecture's bar first
            previous.close()
        bar, update = step_bar(quiet, math.ceil(options.training_tokens / options.batch_size), f"training {arch}")
        bars.append(bar)
        return update

    try:
        return run_synthetic_comparison(options, progress)  # runs on one thread itself
    finally:
        for bar in bars:
            bar.close()


# --- model mode -----------------------------------------------------------------------------------


def run_model(options: ModelOptions, quiet: bool, out: OutputFolder, record: RunRecord, log: Log) -> None:
    device = pick_device(options.device)
    model_name, model_label, world = model_source(options, log)
    data = training_data(options)
    if options.text_file is not None:
        record.update(text_file_sha256=file_sha256(options.text_file))
    if not Path(model_name).is_dir() or data.dataset_name is not None:
        go_offline_if_hub_unreachable(log)
    with record.timed("load"):
        log(f"loading model {model_label} on {device} ...")
        model = load_hooked_model(model_name, device, MODEL_KWARGS)
    spec = model_training_spec(options, model, model_label, device, data, out / constants.CHECKPOINT_SUBDIR)
    if data.train_texts is not None:
        report_passes(model, data.train_texts, spec.training_tokens, record, log)
    if options.resume_from is not None:
        log(f"resuming from the checkpoint {options.resume_from}")
        record.update(resumed_from=str(options.resume_from))
    trained = train(model, spec, data, quiet, record, log)

    sae_dir = out / constants.SAE_SUBDIR
    with record.timed("save"):
        final = inference_sae(trained.sae)
        sae_files = save_trained_sae(final, trained.log_sparsity, trained.runner_cfg, sae_dir)
    evaluation = evaluate(model, sae_dir, data, options, device, record, log)
    eval_json = out.write_json(f"{constants.SAE_SUBDIR}/{constants.EVALUATION_JSON}",
                               {**evaluation.to_dict(), "evaluated_on": data.eval_note})
    planted = None
    if world is not None:
        planted = planted_direction_match(final, load_sae_from_disk(world.sae_dir, "cpu"), world.planted.concept)

    title = model_title(spec, options.demo)
    print(model_results_text(title, spec, trained, data, evaluation, planted, options.demo))
    curves = write_model_curves(out, trained.curve, spec.architecture, title)
    record.wrote(*sae_files, eval_json, *curves)
    record.update(**model_facts(spec, trained, data, evaluation, planted, sae_dir))
    record_path = record.write(out)
    print(saved_text(options, sae_dir, trained.checkpoint_dir, [*curves, eval_json, record_path]))


def model_source(options: ModelOptions, log: Log) -> tuple[str, str, DemoWorld | None]:
    """The model to load, its label, and the toy world with ``--demo`` (built if needed; else None)."""
    if options.demo:
        world = ensure_demo_world(constants.demo_dir(), log=log)
        return str(world.model_dir), DEMO_MODEL_NAME, world
    name = options.model
    return name, Path(name).name if Path(name).is_dir() else name, None


def report_passes(model: Any, texts: list[str], training_tokens: int, record: RunRecord, log: Log) -> None:
    """Tell how many times training goes over the text (many passes learn the text, not the model)."""
    n_text_tokens = count_tokens(model, texts)
    passes = training_tokens / max(1, n_text_tokens)
    log(f"training text: {len(texts)} documents, {n_text_tokens:,} tokens; "
        f"{training_tokens:,} training tokens = {passes:.1f} passes over it")
    if passes > 20:
        log("warning: the SAE sees the same text more than 20 times; it may learn this text rather than "
            "the model. Use more text or fewer --training-tokens.")
    record.update(training_text_tokens=n_text_tokens, passes_over_text=round(passes, 2))


def train(model: Any, spec: ModelTrainingSpec, data: TrainingData, quiet: bool, record: RunRecord,
          log: Log) -> ModelTrainingResult:
    knob = f"L1 {spec.l1_coefficient}" if spec.architecture == "standard" else f"k {spec.k}"
    log(f"training a {spec.architecture} SAE ({spec.d_sae} latents, {knob}, lr {spec.lr}) on {spec.model_label} "
        f"{spec.hook_name}: {spec.training_tokens:,} tokens in {spec.total_steps} steps")
    bar, update = step_bar(quiet, math.ceil(spec.training_tokens / spec.batch_size_tokens),
                           f"training {spec.architecture} SAE")
    with record.timed("train"):
        try:
            dataset = text_dataset(data.train_texts) if data.train_texts is not None else None
            return train_on_model(model, spec, dataset, update, log)
        except TrainingInterrupted as stop:
            raise Interrupted(interrupt_note(stop, spec, record.data["argv"])) from stop
        finally:
            bar.close()


def interrupt_note(stop: TrainingInterrupted, spec: ModelTrainingSpec, argv: list[str]) -> str:
    """What an interrupted training run kept, and the exact command (``argv``: this run's flags) that continues it."""
    done = f"after {stop.steps:,} of {spec.total_steps:,} steps ({stop.samples:,} tokens)"
    if stop.checkpoint is None:
        return f"{done}, before the first step finished: nothing to resume; rerun the same command to start again."
    command = shlex.join(["python", Path(__file__).name, *resume_argv(argv, stop.checkpoint)])
    return (f"{done}. Saved a complete checkpoint in {stop.checkpoint}/ (no SAE in the output folder yet). "
            f"Continue with:\n  {command}")


def resume_argv(argv: list[str], checkpoint: Path) -> list[str]:
    """``argv`` with its ``--resume-from`` (if any) replaced by ``checkpoint``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume-from":
            skip = True
        elif not arg.startswith("--resume-from="):
            kept.append(arg)
    return [*kept, "--resume-from", str(checkpoint)]


def evaluate(model: Any, sae_dir: Path, data: TrainingData, options: ModelOptions, device: str,
             record: RunRecord, log: Log) -> ModelEvaluation:
    """Evaluate the SAE exactly as the other chapters will load it: from disk, through --sae-path's loader."""
    with record.timed("evaluate"):
        loaded = load_sae("", "", sae_dir, device)
        log(f"evaluating on {data.eval_note} ...")
        texts = text_dataset(data.eval_texts) if data.eval_texts is not None else data.dataset_name
        return evaluate_on_model(loaded.sae, model, texts, options.context_size, options.eval_batches)


# --- both -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    if args.dtype != DEFAULT_DTYPE:  # refused before anything is loaded or written
        raise UserError(
            f"--dtype {args.dtype}: this chapter collects activations and trains in float32 only (an SAE "
            "trained on rounded activations learns the rounding); drop --dtype here and use it in the "
            "chapters that load the trained SAE"
        )
    log = make_logger(args)
    start = time.perf_counter()
    options = mode_options(args)
    with output_folder(args) as out:
        record = RunRecord(__file__, argv, recorded_flags(args, options))
        if isinstance(options, SyntheticOptions):
            run_synthetic(options, args.quiet, out, record, log)
        else:
            with demo_threads(options.demo):  # the toy model runs faster on one thread
                run_model(options, args.quiet, out, record, log)
    log(f"done in {time.perf_counter() - start:.0f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
