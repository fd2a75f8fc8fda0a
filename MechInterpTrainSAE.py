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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mechinterp.cli import (
    ArgumentParser,
    add_common_args,
    fraction,
    make_logger,
    output_folder,
    positive_float,
    positive_int,
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
from mechinterp.core.progress import progress_bar
from mechinterp.core.records import RunRecord, file_sha256
from mechinterp.core.source import demo_threads
from mechinterp.core.tables import print_table
from mechinterp.training.report import feature_matching, training_curves
from mechinterp.training.saelens_adapter import TrainingInterrupted
from mechinterp.training.train import (
    ARCHITECTURE_LABELS,
    ARCHITECTURES,
    DEFAULT_DATASET,
    DEFAULT_RECOVERY_THRESHOLD,
    MODE_DEFAULTS,
    MODEL_KWARGS,
    MODES,
    MatchScores,
    ModelEvaluation,
    ModelOptions,
    ModelTrainingResult,
    ModelTrainingSpec,
    SyntheticConfig,
    SyntheticOptions,
    SyntheticResult,
    SyntheticWorld,
    TrainingData,
    count_tokens,
    evaluate_on_model,
    inference_sae,
    model_training_spec,
    planted_direction_match,
    run_synthetic_comparison,
    save_trained_sae,
    text_dataset,
    train_on_model,
    training_data,
)

Options = SyntheticOptions | ModelOptions


# --- the command line -----------------------------------------------------------------------------


def mode_defaults(knob: str, fmt=str) -> str:
    """A knob's defaults as "synthetic / demo / model" for --help."""
    return " / ".join(fmt(getattr(MODE_DEFAULTS[mode], knob)) for mode in MODES)


def add_knob_args(parser: argparse.ArgumentParser) -> None:
    knobs = parser.add_argument_group("training knobs")
    knobs.add_argument(
        "--architecture", choices=[*ARCHITECTURES, "both"], default=None,
        help="standard = ReLU + L1 penalty; topk = keep the k largest latents (default: both with "
        "--synthetic, standard otherwise; 'both' is for --synthetic only)",
    )
    knobs.add_argument(
        "--d-sae", type=positive_int, default=None,
        help="dictionary size: latents in the SAE (default: --n-features with --synthetic, 8 x the model's width)",
    )
    knobs.add_argument(
        "--l1-coefficient", type=positive_float, default=None,
        help="standard SAE: L1 penalty strength; higher = sparser but worse reconstruction (default S / D / M: "
        f"{mode_defaults('l1_coefficient')})",
    )
    knobs.add_argument(
        "--k", type=positive_int, default=None,
        help=f"TopK SAE: active latents per token (default S / D / M: {mode_defaults('k')})",
    )
    knobs.add_argument(
        "--lr", type=positive_float, default=None,
        help=f"Adam learning rate, decayed to 0 over the last fifth of training (default S / D / M: {mode_defaults('lr')})",
    )
    knobs.add_argument(
        "--training-tokens", type=positive_int, default=None,
        help="activations to train on: tokens, or samples with --synthetic (default S / D / M: "
        f"{mode_defaults('training_tokens', '{:,}'.format)})",
    )
    knobs.add_argument(
        "--batch-size", type=positive_int, default=None,
        help=f"activations per optimisation step (default S / D / M: {mode_defaults('batch_size')})",
    )
    knobs.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same SAE (default: %(default)s)")


def add_synthetic_args(parser: argparse.ArgumentParser) -> None:
    synth = parser.add_argument_group("--synthetic data")
    synth.add_argument("--n-features", type=positive_int, default=256, help="ground-truth features (default: %(default)s)")
    synth.add_argument(
        "--hidden-dim", type=positive_int, default=64,
        help="dimensions they are packed into; fewer than --n-features = superposition (default: %(default)s)",
    )
    synth.add_argument(
        "--firing-prob", type=fraction, nargs=2, default=(0.08, 0.01), metavar=("MAX", "MIN"),
        help="Zipfian firing probabilities, from the most to the least frequent feature (default: 0.08 0.01)",
    )
    synth.add_argument(
        "--recovery-threshold", type=fraction, default=DEFAULT_RECOVERY_THRESHOLD,
        help="a true feature is recovered when a decoder row has |cos| above this (default: %(default)s)",
    )
    synth.add_argument(
        "--eval-samples", type=positive_int, default=50_000, help="held-out synthetic samples for L0/EV/F1 (default: %(default)s)"
    )


def add_model_args(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("model mode: data, hook, outputs")
    data.add_argument(
        "--text-file", type=Path, default=None, metavar="FILE",
        help="train on this UTF-8 text file, one document per line (10%% of lines are held out for the evaluation)",
    )
    data.add_argument(
        "--dataset", default=None, metavar="NAME",
        help=f"train on a Hugging Face dataset with a 'text' column, streamed (default without --text-file "
        f"or --demo: {DEFAULT_DATASET})",
    )
    data.add_argument(
        "--hook", default=constants.DEFAULT_SAE_ID,
        help="TransformerLens hook whose activations the SAE learns (default: %(default)s)",
    )
    data.add_argument("--context-size", type=positive_int, default=128, help="tokens per training sequence (default: %(default)s)")
    data.add_argument(
        "--checkpoints", type=int, default=2, metavar="N",
        help="intermediate checkpoints saved under OUT/checkpoints/ (0 = none; Ctrl-C saves one to resume from "
        "either way; default: %(default)s)",
    )
    data.add_argument(
        "--resume-from", type=Path, default=None, metavar="DIR",
        help="continue an interrupted run from one of its checkpoint folders (same options as that run)",
    )
    data.add_argument(
        "--eval-batches", type=positive_int, default=10,
        help="batches of 8 sequences for the evaluation after training (default: %(default)s)",
    )
    data.add_argument("--wandb", action="store_true", help="also log the run to Weights & Biases (needs an account)")
    data.add_argument("--wandb-project", default="mechinterp_chapter5", help="W&B project name for --wandb")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Chapter 5: train an SAE with SAELens - on synthetic data with known features "
        "(--synthetic), or on a language model's activations - and evaluate it. "
        "(--sae-release/--sae-id are not used here: this script makes the SAE.)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults marked 'S / D / M' are for --synthetic / --demo / a real model.",
    )
    parser.add_argument(
        "--synthetic", action="store_true",
        help="train on SAELens synthetic data with known ground-truth features and score the SAEs against it",
    )
    add_knob_args(parser)
    add_synthetic_args(parser)
    add_model_args(parser)
    add_common_args(parser, out_help="folder for figures, tables, the trained SAE and checkpoints",
                    model_default=constants.DEFAULT_MODEL)
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
    knobs = {"lr": args.lr, "l1_coefficient": args.l1_coefficient, "k": args.k, "batch_size": args.batch_size}
    if args.synthetic:
        knobs.update(training_samples=args.training_tokens, d_sae=args.d_sae)
        config = SyntheticConfig(
            n_features=args.n_features, hidden_dim=args.hidden_dim, firing_prob_max=args.firing_prob[0],
            firing_prob_min=args.firing_prob[1], eval_samples=args.eval_samples,
            recovery_threshold=args.recovery_threshold, seed=args.seed,
            **{name: value for name, value in knobs.items() if value is not None},
        )
        both = args.architecture in (None, "both")
        return SyntheticOptions(config, ARCHITECTURES if both else (args.architecture,))
    return ModelOptions(
        demo=args.demo, model=args.model, device=args.device, hook=args.hook,
        architecture=args.architecture or "standard", d_sae=args.d_sae, training_tokens=args.training_tokens,
        context_size=args.context_size, seed=args.seed, text_file=args.text_file, dataset=args.dataset,
        checkpoints=args.checkpoints, resume_from=args.resume_from, eval_batches=args.eval_batches,
        wandb=args.wandb, wandb_project=args.wandb_project, **knobs,
    )


def recorded_flags(args: argparse.Namespace, options: Options) -> dict[str, Any]:
    """The flags for the run record, with the knobs as the run used them (the mode's defaults filled in)."""
    if isinstance(options, SyntheticOptions):
        cfg = options.config
        used = {
            "architecture": "both" if len(options.architectures) > 1 else options.architectures[0],
            "d_sae": cfg.d_sae, "training_tokens": cfg.training_samples, "batch_size": cfg.batch_size,
            "lr": cfg.lr, "l1_coefficient": cfg.l1_coefficient, "k": cfg.k,
        }
    else:
        used = {"architecture": options.architecture, **asdict(options.knobs)}
    return {**vars(args), **used}


def step_bar(quiet: bool, total: int, desc: str):
    """A per-step bar on stderr; returns (bar, callback for mechinterp.training.train)."""
    bar = progress_bar(total, desc, quiet, unit="step")

    def update(steps: int, metrics: dict[str, float]) -> None:
        bar.update(steps)
        if metrics:
            bar.set_postfix(loss=f"{metrics['loss']:.4g}", L0=f"{metrics['l0']:.1f}", EV=f"{metrics['ev']:.3f}",
                            refresh=False)

    return bar, update


# --- synthetic mode -------------------------------------------------------------------------------


def run_synthetic(options: SyntheticOptions, quiet: bool, out: OutputFolder, record: RunRecord, log) -> None:
    cfg = options.config
    if cfg.hidden_dim >= cfg.n_features:
        log(f"note: {cfg.n_features} features in {cfg.hidden_dim} dimensions is not superposition; "
            "recovery is easy here")
    log(f"synthetic data: {cfg.n_features} true features in {cfg.hidden_dim} dims; training "
        f"{', '.join(options.architectures)} SAE(s) with {cfg.d_sae} latents on {cfg.training_samples:,} samples each")
    with record.timed("train_and_score"):
        world, results, baseline = train_synthetic(options, quiet)
    title = (
        f"SAELens synthetic data (no language model) · {cfg.n_features} true features in {cfg.hidden_dim} dims "
        f"({cfg.n_features / cfg.hidden_dim:.0f}x superposition)\nSAEs with {cfg.d_sae} latents, "
        f"{cfg.training_samples:,} samples each, seed {cfg.seed}"
    )
    best = max(results, key=lambda r: (r.match.recovery, r.match.mean_max_cos))
    print_synthetic(cfg, title, results, baseline, best)
    summary = {
        "config": vars(cfg),
        "expected_true_l0": world.expected_l0,
        "results": [r.summary() for r in results],
        "random_baseline": {"recovery": baseline.recovery, "mean_max_cos": baseline.mean_max_cos},
        "best_architecture": best.architecture,
        "best_recovery": best.match.recovery,
    }
    written = write_synthetic(out, cfg, title, world, results, baseline, summary)
    record.wrote(*written)
    record.update(mode="synthetic", synthetic=summary)
    written.append(record.write(out))
    print("\nSaved " + "\n      ".join(str(path) for path in written))


def train_synthetic(options: SyntheticOptions, quiet: bool) -> tuple[SyntheticWorld, list[SyntheticResult], MatchScores]:
    """Train and score every architecture, one progress bar at a time."""
    cfg = options.config
    bars = []

    def progress(arch: str):
        for previous in bars:  # finish the last architecture's bar first
            previous.close()
        bar, update = step_bar(quiet, math.ceil(cfg.training_samples / cfg.batch_size), f"training {arch}")
        bars.append(bar)
        return update

    try:
        return run_synthetic_comparison(options, progress)  # runs on one thread itself
    finally:
        for bar in bars:
            bar.close()


def print_synthetic(cfg: SyntheticConfig, title: str, results: list[SyntheticResult], baseline: MatchScores,
                    best: SyntheticResult) -> None:
    threshold = cfg.recovery_threshold
    header = ["architecture", f"recovered (cos>{threshold})", "mean max cos", "MCC", "L0 (true)", "dead",
              "expl. var", "train s"]
    rows = [
        [
            r.architecture,  # short: the table shortens cells beyond 16 characters
            f"{r.match.recovery:.1%} ({round(r.match.recovery * cfg.n_features)}/{cfg.n_features})",
            f"{r.match.mean_max_cos:.3f}",
            f"{r.mcc:.3f}",
            f"{r.l0:.2f} ({r.true_l0:.2f})",
            r.dead_latents,
            f"{r.explained_variance:.3f}",
            f"{r.train_seconds:.1f}",
        ]
        for r in results
    ]
    rows.append(["random dirs", f"{baseline.recovery:.1%}", f"{baseline.mean_max_cos:.3f}", "-", "-", "-", "-", "-"])
    print(f"\n{title.replace(chr(10), ' · ')}")
    print(f"Each SAE: {cfg.d_sae} latents, lr {cfg.lr}, batch {cfg.batch_size}; standard L1 coefficient "
          f"{cfg.l1_coefficient}, TopK k {cfg.k}. Scores on {cfg.eval_samples:,} held-out samples.\n")
    print_table(header, rows)
    print(f"\nBest: {ARCHITECTURE_LABELS[best.architecture]} recovers {best.match.recovery:.1%} of the "
          f"{cfg.n_features} true features (a decoder row with |cos| > {threshold}); random directions "
          f"recover {baseline.recovery:.1%}.")


def write_synthetic(out: OutputFolder, cfg: SyntheticConfig, title: str, world: SyntheticWorld,
                    results: list[SyntheticResult], baseline: MatchScores, summary: dict[str, Any]) -> list[Path]:
    """MI7 (training curves) and MI8 (learned vs true features), each with its numbers, and MI8.json."""
    curves = training_curves({r.architecture: r.curve for r in results}, f"Training curves · {title}",
                             samples_label="samples", true_l0=world.expected_l0)
    probs = world.firing_probabilities.numpy()
    matching = feature_matching({r.architecture: r.match for r in results}, baseline, probs,
                                cfg.recovery_threshold, f"Learned vs true features · {title}")
    return [
        out.save_figure(curves, constants.MI7_PNG),
        out.write_csv(
            constants.MI7_CSV,
            ["architecture", *results[0].curve.HEADER],
            [[r.architecture, *row] for r in results for row in r.curve.rows()],
        ),
        out.save_figure(matching, constants.MI8_PNG),
        out.write_csv(
            constants.MI8_CSV,
            ["true_feature", "firing_probability"]
            + [f"{r.architecture}_{c}" for r in results for c in ("max_cos", "best_latent")]
            + ["random_max_cos"],
            [
                [i, float(probs[i])]
                + [v for r in results for v in (float(r.match.max_cos[i]), int(r.match.best_latent[i]))]
                + [float(baseline.max_cos[i])]
                for i in range(cfg.n_features)
            ],
        ),
        out.write_json(constants.MI8_JSON, summary),
    ]


# --- model mode -----------------------------------------------------------------------------------


def run_model(options: ModelOptions, quiet: bool, out: OutputFolder, record: RunRecord, log) -> None:
    device = pick_device(options.device)
    world = None
    if options.demo:
        from mechinterp.core.toyworld import DEMO_MODEL_NAME, ensure_demo_world

        world = ensure_demo_world(constants.demo_dir(), log=log)
        model_name, model_label = str(world.model_dir), DEMO_MODEL_NAME
    else:
        model_name = options.model
        model_label = Path(model_name).name if Path(model_name).is_dir() else model_name
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

    title = print_model_results(options, spec, trained, data, evaluation, planted)
    curves_png = out.save_figure(training_curves({spec.architecture: trained.curve}, f"Training curves · {title}"),
                                 constants.MI7_PNG)
    curves_csv = out.write_csv(constants.MI7_CSV, list(trained.curve.HEADER), trained.curve.rows())
    record.wrote(*sae_files, eval_json, curves_png, curves_csv)
    record.update(**model_facts(spec, trained, data, evaluation, planted, sae_dir))
    record_path = record.write(out)
    print_saved(options, sae_dir, trained, [curves_png, curves_csv, eval_json, record_path])


def report_passes(model: Any, texts: list[str], training_tokens: int, record: RunRecord, log) -> None:
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
          log) -> ModelTrainingResult:
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
             record: RunRecord, log) -> ModelEvaluation:
    """Evaluate the SAE exactly as the other chapters will load it: from disk, through --sae-path's loader."""
    with record.timed("evaluate"):
        loaded = load_sae("", "", sae_dir, device)
        log(f"evaluating on {data.eval_note} ...")
        texts = text_dataset(data.eval_texts) if data.eval_texts is not None else data.dataset_name
        return evaluate_on_model(loaded.sae, model, texts, options.context_size, options.eval_batches)


def print_model_results(options: ModelOptions, spec: ModelTrainingSpec, trained: ModelTrainingResult,
                        data: TrainingData, evaluation: ModelEvaluation, planted: dict | None) -> str:
    """Print the evaluation table (and the toy world's planted directions); return the run's title."""
    knob = f"L1 {spec.l1_coefficient}" if spec.architecture == "standard" else f"k {spec.k}"
    title = (f"{'SYNTHETIC DEMO · ' if options.demo else ''}{spec.model_label} · hook {spec.hook_name} · "
             f"trained SAE: {spec.architecture}, {spec.d_sae} latents, {knob}, {spec.training_tokens:,} tokens")
    print(f"\n{title}")
    print(f"Trained in {trained.train_seconds:.0f}s on {data.label}. Evaluated on {data.eval_note}, "
          f"{evaluation.n_tokens:,} tokens, special tokens (BOS) excluded:\n")
    recovered = evaluation.loss_recovered
    print_table(
        ["metric", "value", "meaning"],
        [
            ["L0", f"{evaluation.l0:.2f}", "latents active per token"],
            ["explained var.", f"{evaluation.explained_variance:.3f}", "1 = perfect reconstruction"],
            ["dead latents", f"{evaluation.dead_latents}/{spec.d_sae}", "never fired on the evaluation tokens"],
            ["loss: clean", f"{evaluation.ce_loss_clean:.4f}", "next-token loss of the model as it is"],
            ["loss: with SAE", f"{evaluation.ce_loss_with_sae:.4f}", "next-token loss, hook replaced by the SAE's output"],
            ["loss: zeroed", f"{evaluation.ce_loss_zero_ablated:.4f}", "next-token loss, hook replaced by zeros"],
            ["loss recovered", f"{recovered:.3f}" if recovered is not None else "n/a",
             "1 = SAE as good as the model, 0 = as bad as zeros"],
        ],
    )
    if recovered is None:
        print("\n(loss recovered is undefined here: zeroing the hook does not raise this model's loss"
              + (" - the toy model was never trained to predict text, so its next-token loss means nothing"
                 if options.demo else "") + ")")
    if planted:
        print("\nGround truth of the toy world: the planted concept directions and the closest trained latent:")
        print_table(
            ["concept", "toy SAE feature", "trained latent", "cos"],
            [[name, m["reference_feature"], m["latent"], f"{m['cos']:.3f}"] for name, m in planted.items()],
        )
    return title


def model_facts(spec: ModelTrainingSpec, trained: ModelTrainingResult, data: TrainingData,
                evaluation: ModelEvaluation, planted: dict | None, sae_dir: Path) -> dict[str, Any]:
    """What the run record says about the model, the data, the result and the filtering."""
    return {
        "mode": "model",
        "model": spec.model_label,
        "hook": spec.hook_name,
        "architecture": spec.architecture,
        "d_sae": spec.d_sae,
        "data": data.label,
        "evaluated_on": data.eval_note,
        "sae_path": str(sae_dir),
        "checkpoints": trained.checkpoint_dir,
        "evaluation": evaluation.to_dict(),
        "planted_directions": planted,
        "final_training_metrics": {
            "loss": trained.curve.loss[-1], "l0": trained.curve.l0[-1],
            "explained_variance": trained.curve.explained_variance[-1],
        },
        "filtered": "special tokens (BOS/end-of-text) excluded from training and evaluation",
    }


def print_saved(options: ModelOptions, sae_dir: Path, trained: ModelTrainingResult, written: list[Path]) -> None:
    model_flag = f" --model {options.model}" if options.model != constants.DEFAULT_MODEL else ""
    print(f"\nSaved the SAE in {sae_dir}/ (cfg.json, sae_weights.safetensors, sparsity.safetensors)")
    if trained.checkpoint_dir:
        print(f"      checkpoints in {trained.checkpoint_dir}/")
    print("      " + "\n      ".join(str(path) for path in written))
    print(f"\nUse it in the other chapters, e.g.:\n  python MechInterpInitialInvestigation.py"
          f"{' --demo' if options.demo else model_flag} --sae-path {sae_dir}")


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
