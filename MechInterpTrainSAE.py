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
import sys
import time
from pathlib import Path

from mechinterp import constants
from mechinterp.cli import ArgumentParser, add_common_args, fraction, make_logger, out_dir, positive_float, positive_int
from mechinterp.cli import progress_bar as cli_progress_bar
from mechinterp.errors import UserError, run_cli
from mechinterp.io import write_csv, write_json
from mechinterp.loading import go_offline_if_hub_unreachable, load_hooked_model, pick_device
from mechinterp.records import RunRecord, file_sha256
from mechinterp.tables import print_table
from mechinterp.training import (
    ARCHITECTURE_LABELS,
    ARCHITECTURES,
    DEFAULT_RECOVERY_THRESHOLD,
    ModelTrainingSpec,
    SyntheticConfig,
    count_tokens,
    evaluate_on_model,
    inference_sae,
    planted_direction_match,
    read_text_file,
    run_synthetic_comparison,
    save_trained_sae,
    text_dataset,
    torch_threads,
    train_on_model,
)
from mechinterp.training_plots import feature_matching, training_curves

MI7_PNG, MI7_CSV = "MI7.png", "MI7.csv"
MI8_PNG, MI8_CSV, MI8_JSON = "MI8.png", "MI8.csv", "MI8.json"
SAE_SUBDIR = "sae"
CHECKPOINT_SUBDIR = "checkpoints"
# The dataset gpt2-small-res-jb was trained on (streamed from the Hugging Face Hub).
DEFAULT_DATASET = "Skylion007/openwebtext"
# The residual stream must be loaded the way the pretrained SAEs expect it (see mechinterp.loading).
MODEL_KWARGS = {"center_writing_weights": True}
DEMO_EVAL_SEED = 2024  # demo evaluation sentences come from a different seed than the training ones

# Knob defaults per mode: (synthetic, --demo, a real model). The toy model is tiny, so it trains with
# smaller batches and a larger learning rate; GPT-2's are SAELens' defaults.
DEFAULTS = {
    "training_tokens": (1_500_000, 300_000, 2_000_000),
    "batch_size": (1024, 1024, 4096),
    "lr": (3e-3, 3e-3, 3e-4),
    "l1_coefficient": (0.2, 2.0, 5.0),
    "k": (5, 8, 32),
}
D_SAE_PER_WIDTH = 8  # model mode: default dictionary size = 8 x the model's width


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Chapter 5: train an SAE with SAELens - on synthetic data with known features "
        "(--synthetic), or on a language model's activations - and evaluate it. "
        "(--sae-release/--sae-id are not used here: this script makes the SAE.)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults marked 'S / D / M' are for --synthetic / --demo / a real model.",
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="train on SAELens synthetic data with known ground-truth features and score the SAEs against it",
    )
    knobs = parser.add_argument_group("training knobs")
    knobs.add_argument(
        "--architecture",
        choices=[*ARCHITECTURES, "both"],
        default=None,
        help="standard = ReLU + L1 penalty; topk = keep the k largest latents (default: both with "
        "--synthetic, standard otherwise; 'both' is for --synthetic only)",
    )
    knobs.add_argument(
        "--d-sae",
        type=positive_int,
        default=None,
        help="dictionary size: latents in the SAE (default: --n-features with --synthetic, 8 x the model's width)",
    )
    knobs.add_argument(
        "--l1-coefficient",
        type=positive_float,
        default=None,
        help="standard SAE: L1 penalty strength; higher = sparser but worse reconstruction (default S / D / M: "
        + " / ".join(str(v) for v in DEFAULTS["l1_coefficient"])
        + ")",
    )
    knobs.add_argument(
        "--k",
        type=positive_int,
        default=None,
        help="TopK SAE: active latents per token (default S / D / M: " + " / ".join(map(str, DEFAULTS["k"])) + ")",
    )
    knobs.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="Adam learning rate, decayed to 0 over the last fifth of training (default S / D / M: "
        + " / ".join(str(v) for v in DEFAULTS["lr"])
        + ")",
    )
    knobs.add_argument(
        "--training-tokens",
        type=positive_int,
        default=None,
        help="activations to train on: tokens, or samples with --synthetic (default S / D / M: "
        + " / ".join(f"{v:,}" for v in DEFAULTS["training_tokens"])
        + ")",
    )
    knobs.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="activations per optimisation step (default S / D / M: "
        + " / ".join(map(str, DEFAULTS["batch_size"]))
        + ")",
    )
    knobs.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same SAE (default: %(default)s)")

    synth = parser.add_argument_group("--synthetic data")
    synth.add_argument("--n-features", type=positive_int, default=256, help="ground-truth features (default: %(default)s)")
    synth.add_argument(
        "--hidden-dim",
        type=positive_int,
        default=64,
        help="dimensions they are packed into; fewer than --n-features = superposition (default: %(default)s)",
    )
    synth.add_argument(
        "--firing-prob",
        type=fraction,
        nargs=2,
        default=(0.08, 0.01),
        metavar=("MAX", "MIN"),
        help="Zipfian firing probabilities, from the most to the least frequent feature (default: 0.08 0.01)",
    )
    synth.add_argument(
        "--recovery-threshold",
        type=fraction,
        default=DEFAULT_RECOVERY_THRESHOLD,
        help="a true feature is recovered when a decoder row has |cos| above this (default: %(default)s)",
    )
    synth.add_argument(
        "--eval-samples", type=positive_int, default=50_000, help="held-out synthetic samples for L0/EV/F1 (default: %(default)s)"
    )

    data = parser.add_argument_group("model mode: data, hook, outputs")
    data.add_argument(
        "--text-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="train on this UTF-8 text file, one document per line (10%% of lines are held out for the evaluation)",
    )
    data.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help=f"train on a Hugging Face dataset with a 'text' column, streamed (default without --text-file "
        f"or --demo: {DEFAULT_DATASET})",
    )
    data.add_argument(
        "--hook",
        default=constants.DEFAULT_SAE_ID,
        help="TransformerLens hook whose activations the SAE learns (default: %(default)s)",
    )
    data.add_argument(
        "--context-size", type=positive_int, default=128, help="tokens per training sequence (default: %(default)s)"
    )
    data.add_argument(
        "--checkpoints",
        type=int,
        default=2,
        metavar="N",
        help="intermediate checkpoints saved under OUT/checkpoints/ (0 = none; default: %(default)s)",
    )
    data.add_argument(
        "--resume-from",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue an interrupted run from one of its checkpoint folders (same options as that run)",
    )
    data.add_argument(
        "--eval-batches",
        type=positive_int,
        default=10,
        help="batches of 8 sequences for the evaluation after training (default: %(default)s)",
    )
    data.add_argument("--wandb", action="store_true", help="also log the run to Weights & Biases (needs an account)")
    data.add_argument("--wandb-project", default="mechinterp_chapter5", help="W&B project name for --wandb")
    add_common_args(parser, out_help="folder for figures, tables, the trained SAE and checkpoints")
    args = parser.parse_args(argv)

    if args.sae_path is not None:
        parser.error("--sae-path is for the chapters that use an SAE; this script trains one (saved as OUT/sae)")
    if args.synthetic:
        given = [f for f, v in (("--demo", args.demo), ("--text-file", args.text_file), ("--dataset", args.dataset),
                                ("--resume-from", args.resume_from), ("--wandb", args.wandb)) if v]
        if given:
            parser.error(f"--synthetic makes its own data; drop {', '.join(given)}")
        if args.hidden_dim < 2:
            parser.error("--hidden-dim must be at least 2")
        if args.firing_prob[1] > args.firing_prob[0]:
            parser.error("--firing-prob takes MAX then MIN, and MIN must not exceed MAX")
    else:
        if args.architecture == "both":
            parser.error("--architecture both is for --synthetic; pick standard or topk to train on a model")
        if args.text_file is not None and args.dataset is not None:
            parser.error("give either --text-file or --dataset, not both")
        if args.checkpoints < 0:
            parser.error("--checkpoints must be 0 or more")
        if args.resume_from is not None and not Path(args.resume_from).is_dir():
            parser.error(f"--resume-from {args.resume_from} is not a checkpoint folder")
    resolve_defaults(args)
    if args.batch_size > args.training_tokens:
        parser.error(f"--batch-size {args.batch_size} is larger than --training-tokens {args.training_tokens}")
    if args.architecture == "topk" and args.d_sae is not None and args.k > args.d_sae:
        parser.error(f"--k {args.k} cannot exceed the dictionary size --d-sae {args.d_sae}")
    return args


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill the knobs the user left out with the defaults of the chosen mode."""
    column = 0 if args.synthetic else (1 if args.demo else 2)
    for name, values in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, values[column])
    if args.architecture is None:
        args.architecture = "both" if args.synthetic else "standard"
    if args.synthetic and args.d_sae is None:
        args.d_sae = args.n_features


def progress_bar(args: argparse.Namespace, total: int, desc: str):
    """A per-step bar on stderr; returns (bar, callback for mechinterp.training)."""
    bar = cli_progress_bar(total, desc, args.quiet, unit="step")

    def update(steps: int, metrics: dict[str, float]) -> None:
        bar.update(steps)
        if metrics:
            bar.set_postfix(loss=f"{metrics['loss']:.4g}", L0=f"{metrics['l0']:.1f}", EV=f"{metrics['ev']:.3f}",
                            refresh=False)

    return bar, update


# --- synthetic mode -------------------------------------------------------------------------------


def run_synthetic(args: argparse.Namespace, argv: list[str] | None, out: Path, log) -> int:
    record = RunRecord(__file__, argv, args)
    cfg = SyntheticConfig(
        n_features=args.n_features,
        hidden_dim=args.hidden_dim,
        d_sae=args.d_sae,
        firing_prob_max=args.firing_prob[0],
        firing_prob_min=args.firing_prob[1],
        training_samples=args.training_tokens,
        batch_size=args.batch_size,
        lr=args.lr,
        l1_coefficient=args.l1_coefficient,
        k=args.k,
        eval_samples=args.eval_samples,
        recovery_threshold=args.recovery_threshold,
        seed=args.seed,
    )
    architectures = list(ARCHITECTURES) if args.architecture == "both" else [args.architecture]
    if args.hidden_dim >= args.n_features:
        log(f"note: {args.n_features} features in {args.hidden_dim} dimensions is not superposition; "
            "recovery is easy here")
    bars = []

    def progress(arch: str):
        for previous in bars:  # one bar at a time: finish the last architecture's bar first
            previous.close()
        bar, update = progress_bar(args, math.ceil(cfg.training_samples / cfg.batch_size), f"training {arch}")
        bars.append(bar)
        return update

    log(f"synthetic data: {cfg.n_features} true features in {cfg.hidden_dim} dims; training "
        f"{', '.join(architectures)} SAE(s) with {cfg.d_sae} latents on {cfg.training_samples:,} samples each")
    with record.timed("train_and_score"):
        try:
            world, results, baseline = run_synthetic_comparison(cfg, architectures, progress)
        finally:
            for bar in bars:
                bar.close()

    title = (
        f"SAELens synthetic data (no language model) · {cfg.n_features} true features in {cfg.hidden_dim} dims "
        f"({cfg.n_features / cfg.hidden_dim:.0f}x superposition)\nSAEs with {cfg.d_sae} latents, "
        f"{cfg.training_samples:,} samples each, seed {cfg.seed}"
    )
    threshold = cfg.recovery_threshold
    header = ["architecture", f"recovered (cos>{threshold})", "mean max cos", "MCC", "L0 (true)", "dead",
              "expl. var", "train s"]
    rows = [
        [
            r.architecture,  # short: the table shortens cells beyond 16 characters
            f"{r.match.recovery:.1%} ({int(round(r.match.recovery * cfg.n_features))}/{cfg.n_features})",
            f"{r.match.mean_max_cos:.3f}",
            f"{r.mcc:.3f}",
            f"{r.l0:.2f} ({r.true_l0:.2f})",
            r.dead_latents,
            f"{r.explained_variance:.3f}",
            f"{r.train_seconds:.1f}",
        ]
        for r in results
    ]
    rows.append(["random dirs", f"{baseline.recovery:.1%}", f"{baseline.mean_max_cos:.3f}", "-", "-", "-",
                 "-", "-"])
    best = max(results, key=lambda r: (r.match.recovery, r.match.mean_max_cos))

    print(f"\n{title.replace(chr(10), ' · ')}")
    print(f"Each SAE: {cfg.d_sae} latents, lr {cfg.lr}, batch {cfg.batch_size}; standard L1 coefficient "
          f"{cfg.l1_coefficient}, TopK k {cfg.k}. Scores on {cfg.eval_samples:,} held-out samples.\n")
    print_table(header, rows)
    print(f"\nBest: {ARCHITECTURE_LABELS[best.architecture]} recovers {best.match.recovery:.1%} of the "
          f"{cfg.n_features} true features (a decoder row with |cos| > {threshold}); random directions "
          f"recover {baseline.recovery:.1%}.")

    curves_png = training_curves(
        {r.architecture: r.curve for r in results}, f"Training curves · {title}", out / MI7_PNG,
        samples_label="samples", true_l0=world.expected_l0,
    )
    curves_csv = write_csv(
        out / MI7_CSV,
        ["architecture", *results[0].curve.HEADER],
        [[r.architecture, *row] for r in results for row in r.curve.rows()],
    )
    match_png = feature_matching(
        {r.architecture: r.match for r in results}, baseline, world.firing_probabilities.numpy(), threshold,
        f"Learned vs true features · {title}", out / MI8_PNG,
    )
    probs = world.firing_probabilities.numpy()
    match_csv = write_csv(
        out / MI8_CSV,
        ["true_feature", "firing_probability"]
        + [f"{r.architecture}_{c}" for r in results for c in ("max_cos", "best_latent")]
        + ["random_max_cos"],
        [
            [i, float(probs[i])]
            + [v for r in results for v in (float(r.match.max_cos[i]), int(r.match.best_latent[i]))]
            + [float(baseline.max_cos[i])]
            for i in range(cfg.n_features)
        ],
    )
    summary = {
        "config": vars(cfg),
        "expected_true_l0": world.expected_l0,
        "results": [r.summary() for r in results],
        "random_baseline": {"recovery": baseline.recovery, "mean_max_cos": baseline.mean_max_cos},
        "best_architecture": best.architecture,
        "best_recovery": best.match.recovery,
    }
    match_json = write_json(out / MI8_JSON, summary)
    record.wrote(curves_png, curves_csv, match_png, match_csv, match_json)
    record.update(mode="synthetic", synthetic=summary)
    record_path = record.write(out)
    print(f"\nSaved {curves_png}\n      {curves_csv}\n      {match_png}\n      {match_csv}\n      {match_json}"
          f"\n      {record_path}")
    return 0


# --- model mode -----------------------------------------------------------------------------------


def split_text(texts: list[str]) -> tuple[list[str], list[str], str]:
    """Hold out the last 10% of documents for the evaluation when there are enough of them."""
    if len(texts) >= 20:
        n_eval = max(2, len(texts) // 10)
        return texts[:-n_eval], texts[-n_eval:], f"the last {n_eval} lines (held out from training)"
    return texts, texts, "the training text itself (fewer than 20 lines, so none held out)"


def run_model(args: argparse.Namespace, argv: list[str] | None, out: Path, log) -> int:
    record = RunRecord(__file__, argv, args)
    device = pick_device(args.device)
    world = None
    if args.demo:
        from mechinterp.toyworld import DEMO_MODEL_NAME, demo_corpus, ensure_demo_world

        world = ensure_demo_world(constants.demo_dir(), log=log)
        model_name, model_label = str(world.model_dir), DEMO_MODEL_NAME
    else:
        model_name = args.model
        model_label = Path(model_name).name if Path(model_name).is_dir() else model_name

    # The data: local text (a file, or the demo vocabulary) or a streamed Hugging Face dataset.
    dataset_name = None
    if args.text_file is not None:
        train_texts, eval_texts, eval_note = split_text(read_text_file(args.text_file))
        data_label = f"{args.text_file} ({len(train_texts)} training lines)"
        record.update(text_file_sha256=file_sha256(args.text_file))
    elif args.demo and args.dataset is None:
        # Enough sentences that the run sees each about once (a demo sentence is about 12 tokens).
        train_texts = demo_corpus(max(200, args.training_tokens // 10), seed=args.seed)
        eval_texts = demo_corpus(400, seed=DEMO_EVAL_SEED + args.seed)
        eval_note = f"400 fresh demo sentences (seed {DEMO_EVAL_SEED + args.seed}, not the training ones)"
        data_label = f"toyworld.demo_corpus({len(train_texts)}, seed={args.seed})"
    else:
        dataset_name = args.dataset or DEFAULT_DATASET
        train_texts = eval_texts = None
        eval_note = f"the first documents of {dataset_name} (streamed; also seen in training)"
        data_label = dataset_name

    if not Path(model_name).is_dir() or dataset_name is not None:
        go_offline_if_hub_unreachable(log)
    with record.timed("load"):
        log(f"loading model {model_label} on {device} ...")
        model = load_hooked_model(model_name, device, MODEL_KWARGS)
    d_model = int(model.cfg.d_model)
    d_sae = args.d_sae or D_SAE_PER_WIDTH * d_model
    if args.architecture == "topk" and args.k > d_sae:
        raise UserError(f"--k {args.k} cannot exceed the dictionary size ({d_sae} latents); lower --k")
    if args.context_size > model.cfg.n_ctx:
        raise UserError(f"--context-size {args.context_size} exceeds the model's context of {model.cfg.n_ctx} tokens")

    if train_texts is not None:
        n_text_tokens = count_tokens(model, train_texts)
        passes = args.training_tokens / max(1, n_text_tokens)
        log(f"training text: {len(train_texts)} documents, {n_text_tokens:,} tokens; "
            f"{args.training_tokens:,} training tokens = {passes:.1f} passes over it")
        if passes > 20:
            log("warning: the SAE sees the same text more than 20 times; it may learn this text rather than "
                "the model. Use more text or fewer --training-tokens.")
        record.update(training_text_tokens=n_text_tokens, passes_over_text=round(passes, 2))

    spec = ModelTrainingSpec(
        model_label=model_label,
        hook_name=args.hook,
        architecture=args.architecture,
        d_sae=d_sae,
        l1_coefficient=args.l1_coefficient,
        k=args.k,
        lr=args.lr,
        training_tokens=args.training_tokens,
        batch_size_tokens=args.batch_size,
        context_size=args.context_size,
        seed=args.seed,
        device=device,
        dataset_path=data_label,
        model_kwargs=MODEL_KWARGS,
        n_checkpoints=args.checkpoints,
        checkpoint_dir=out / CHECKPOINT_SUBDIR if args.checkpoints or args.resume_from else None,
        resume_from=args.resume_from,
        wandb=args.wandb,
        wandb_project=args.wandb_project,
    )
    knob = f"L1 {spec.l1_coefficient}" if spec.architecture == "standard" else f"k {spec.k}"
    log(f"training a {spec.architecture} SAE ({d_sae} latents, {knob}, lr {spec.lr}) on {model_label} "
        f"{spec.hook_name}: {spec.training_tokens:,} tokens in {spec.total_steps} steps")
    bar, update = progress_bar(
        args, math.ceil(spec.training_tokens / spec.batch_size_tokens), f"training {spec.architecture} SAE"
    )
    with record.timed("train"):
        try:
            trained = train_on_model(
                model, spec, text_dataset(train_texts) if train_texts is not None else None, update
            )
        finally:
            bar.close()

    sae_dir = out / SAE_SUBDIR
    with record.timed("save"):
        final = inference_sae(trained.sae)
        sae_files = save_trained_sae(final, trained.log_sparsity, trained.runner_cfg, sae_dir)

    # Evaluate the SAE exactly as the other chapters will load it: from disk, through --sae-path's loader.
    from mechinterp.loading import load_sae

    with record.timed("evaluate"):
        loaded = load_sae("", "", sae_dir, device)
        log(f"evaluating on {eval_note} ...")
        evaluation = evaluate_on_model(
            loaded.sae,
            model,
            text_dataset(eval_texts) if eval_texts is not None else dataset_name,
            args.context_size,
            args.eval_batches,
        )
    eval_json = write_json(sae_dir / "evaluation.json", {**evaluation.to_dict(), "evaluated_on": eval_note})

    planted = None
    if world is not None:
        from mechinterp.loading import load_sae_from_disk

        planted = planted_direction_match(final, load_sae_from_disk(world.sae_dir, "cpu"), world.planted.concept)

    title_prefix = "SYNTHETIC DEMO · " if args.demo else ""
    title = (f"{title_prefix}{model_label} · hook {spec.hook_name} · trained SAE: {spec.architecture}, "
             f"{d_sae} latents, {knob}, {spec.training_tokens:,} tokens")
    print(f"\n{title}")
    print(f"Trained in {trained.train_seconds:.0f}s on {data_label}. Evaluated on {eval_note}, "
          f"{evaluation.n_tokens:,} tokens, special tokens (BOS) excluded:\n")
    recovered = evaluation.loss_recovered
    print_table(
        ["metric", "value", "meaning"],
        [
            ["L0", f"{evaluation.l0:.2f}", "latents active per token"],
            ["explained var.", f"{evaluation.explained_variance:.3f}", "1 = perfect reconstruction"],
            ["dead latents", f"{evaluation.dead_latents}/{d_sae}", "never fired on the evaluation tokens"],
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
                 if args.demo else "") + ")")
    if planted:
        print("\nGround truth of the toy world: the planted concept directions and the closest trained latent:")
        print_table(
            ["concept", "toy SAE feature", "trained latent", "cos"],
            [[name, m["reference_feature"], m["latent"], f"{m['cos']:.3f}"] for name, m in planted.items()],
        )

    curves_png = training_curves({spec.architecture: trained.curve}, f"Training curves · {title}", out / MI7_PNG)
    curves_csv = write_csv(out / MI7_CSV, list(trained.curve.HEADER), trained.curve.rows())
    record.wrote(*sae_files, eval_json, curves_png, curves_csv)
    record.update(
        mode="model",
        model=model_label,
        hook=spec.hook_name,
        architecture=spec.architecture,
        d_sae=d_sae,
        data=data_label,
        evaluated_on=eval_note,
        sae_path=str(sae_dir),
        checkpoints=trained.checkpoint_dir,
        evaluation=evaluation.to_dict(),
        planted_directions=planted,
        final_training_metrics={
            "loss": trained.curve.loss[-1], "l0": trained.curve.l0[-1],
            "explained_variance": trained.curve.explained_variance[-1],
        },
        filtered="special tokens (BOS/end-of-text) excluded from training and evaluation",
    )
    record_path = record.write(out)
    demo_flag = " --demo" if args.demo else (f" --model {args.model}" if args.model != constants.DEFAULT_MODEL else "")
    print(f"\nSaved the SAE in {sae_dir}/ (cfg.json, sae_weights.safetensors, sparsity.safetensors)")
    if trained.checkpoint_dir:
        print(f"      checkpoints in {trained.checkpoint_dir}/")
    print(f"      {curves_png}\n      {curves_csv}\n      {eval_json}\n      {record_path}")
    print(f"\nUse it in the other chapters, e.g.:\n  python MechInterpInitialInvestigation.py{demo_flag} "
          f"--sae-path {sae_dir}")
    return 0


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    log = make_logger(args)
    out = out_dir(args)
    start = time.perf_counter()
    if args.synthetic:
        status = run_synthetic(args, argv, out, log)  # runs on one thread itself (see run_synthetic_comparison)
    else:
        # The toy model is 64 wide: thread hand-offs cost more than they save (several times slower on a
        # busy 2-core machine), as in mechinterp.cli.load. Real models keep torch's default.
        with torch_threads(1 if args.demo else None):
            status = run_model(args, argv, out, log)
    log(f"done in {time.perf_counter() - start:.0f}s")
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
