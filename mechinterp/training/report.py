"""Chapter 5's report: the terminal text and tables of both modes, their figures, and the files behind them.

Figures: training curves (MI7) and learned-vs-true feature matching (MI8), built with
``matplotlib.figure.Figure`` (no pyplot, no GUI); each function returns the figure, and the writers save
it with the numbers behind it beside it. The text functions return what the script prints, so a notebook
can show the same table without running the script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from mechinterp.core import constants
from mechinterp.core.figures import NotebookFigure
from mechinterp.core.io import OutputFolder
from mechinterp.core.tables import format_table
from mechinterp.training.common import ARCHITECTURE_LABELS, TrainingCurve
from mechinterp.training.evaluation import ModelEvaluation
from mechinterp.training.on_model import ModelOptions, ModelTrainingResult, ModelTrainingSpec, TrainingData
from mechinterp.training.synthetic import MatchScores, SyntheticComparison, SyntheticOptions

COLORS = {"standard": "tab:blue", "topk": "tab:orange"}


def training_curves(
    curves: dict[str, TrainingCurve],
    title: str,
    samples_label: str = "tokens",
    true_l0: float | None = None,
) -> Figure:
    """MI7: loss, L0 and explained variance against the training step, one line per SAE.

    Every line differs from the others in its panel by line style or marker (not colour alone), so two
    lines that coincide (TopK's MSE part is its whole loss) still both show.

    Args:
        curves: architecture name ("standard"/"topk") -> its recorded curve.
        samples_label: what one training sample is ("tokens", or "samples" of synthetic data).
        true_l0: synthetic data only: the average number of true features active per sample.
    """
    fig = NotebookFigure(figsize=(13, 4.2))
    ax_loss, ax_l0, ax_ev = fig.subplots(1, 3)
    for k, (arch, curve) in enumerate(curves.items()):
        color, label = COLORS.get(arch, "tab:green"), ARCHITECTURE_LABELS.get(arch, arch)
        marker = MARKERS[k % len(MARKERS)]
        solid = {"color": color, "lw": 1.5, "marker": marker, "markersize": 5,
                 "markevery": _markevery(len(curve.step), k, 0.0)}
        ax_loss.plot(curve.step, curve.loss, **solid, label=f"{label}: total loss")
        same = np.allclose(curve.loss, curve.mse, rtol=1e-3) if curve.loss else False
        # The SAE's marker, hollow, half-way between the solid line's, drawn on top: visible even where the two coincide.
        ax_loss.plot(curve.step, curve.mse, color=color, lw=1.2, ls="--", marker=marker, markersize=5,
                     markerfacecolor="white", markevery=_markevery(len(curve.step), k, 0.5), zorder=3,
                     label=f"{label}: MSE part" + (" (= total: no penalty term)" if same else ""))
        ax_l0.plot(curve.step, curve.l0, **solid, label=label)
        ax_ev.plot(curve.step, curve.explained_variance, **solid, label=label)
    ax_loss.set_yscale("log")
    ax_l0.set_yscale("log")
    if true_l0 is not None:
        ax_l0.axhline(true_l0, color="black", lw=0.8, ls=":", label=f"true features per sample ({true_l0:.2f})")
        # Room below the line: at the axis' lower edge it read as the frame.
        ax_l0.autoscale_view()
        low, high = ax_l0.get_ylim()
        ax_l0.set_ylim(min(low, true_l0 / 2), high)
    ax_loss.set_title("training loss (log scale)", fontsize=10)
    ax_l0.set_title("L0: active latents per input (log scale)", fontsize=10)
    ax_ev.set_title("explained variance of the input", fontsize=10)
    # The first steps can be far below 0 (worse than predicting the mean); the axis starts at -0.2.
    ax_ev.set_ylim(max(-0.2, min(0.0, min((min(c.explained_variance) for c in curves.values()), default=0.0))), 1.02)
    first = next(iter(curves.values()))
    per_step = first.samples[-1] / first.step[-1] if first.step else 0
    for ax in (ax_loss, ax_l0, ax_ev):
        ax.set_xlabel(f"training step ({per_step:,.0f} {samples_label} per step)")
        ax.grid(alpha=0.3)
        ax.tick_params(which="both", labelsize=8)  # one label size everywhere: decades, in-betweens, linear axes
    for ax in (ax_loss, ax_l0):
        _readable_log_ticks(ax)
    ax_loss.legend(fontsize=8)
    if len(curves) > 1 or true_l0 is not None:
        ax_l0.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


MARKERS = ("o", "s", "D", "^")  # one per SAE, in the order of the curves (hollow on the MSE part)
MIN_TICKS = 3  # labelled ticks on every axis at least


def _markevery(n_points: int, k: int, shift: float) -> tuple[int, int]:
    """About ten markers along a line, each SAE's (``k``) and each line's (``shift``) at other steps."""
    every = max(1, n_points // 10)
    return (int((shift + 0.25 * k) * every) % every, every)


def _readable_log_ticks(ax) -> None:
    """Plain-number labels on a log y axis, at 1, 2, 5 (or every digit) per decade when few decades show,
    so the axis always has at least :data:`MIN_TICKS` labels."""
    ax.autoscale_view()
    low, high = ax.get_ylim()
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    for subs in ((1.0,), (1.0, 2.0, 5.0), tuple(float(d) for d in range(1, 10))):
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
        shown = [t for t in ax.get_yticks() if low <= t <= high]
        if len(shown) >= MIN_TICKS:
            break
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(NullFormatter())


def feature_matching(
    matches: dict[str, MatchScores],
    baseline: MatchScores,
    firing_probabilities: np.ndarray,
    threshold: float,
    title: str,
) -> Figure:
    """MI8: for every true feature, its best |cosine| with any learned decoder row.

    Left: sorted, one curve per SAE; a curve that stays above the threshold line across the whole x
    range means every true feature has a latent pointing along it; grey is what random directions get.
    Right: the same numbers against how often each feature fires, which shows *which* features are
    missed (with a fixed training budget, the rarest ones).
    """
    fig = NotebookFigure(figsize=(13, 5.0))
    ax, ax_freq = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    n = len(baseline.max_cos)
    ranks = np.arange(1, n + 1)
    for arch, match in matches.items():
        color = COLORS.get(arch, "tab:green")
        label = ARCHITECTURE_LABELS.get(arch, arch)
        ax.plot(
            ranks,
            np.sort(match.max_cos)[::-1],
            color=color,
            lw=2,
            label=f"{label}: {match.recovery:.1%} recovered, mean {match.mean_max_cos:.3f}",
        )
        ax_freq.scatter(firing_probabilities, match.max_cos, s=10, color=color, alpha=0.6, label=label)
    ax.plot(
        ranks,
        np.sort(baseline.max_cos)[::-1],
        color="grey",
        lw=1.5,
        ls=":",
        label=f"random directions: {baseline.recovery:.1%} recovered, mean {baseline.mean_max_cos:.3f}",
    )
    ax_freq.scatter(firing_probabilities, baseline.max_cos, s=6, color="grey", alpha=0.4, label="random directions")
    for axis in (ax, ax_freq):
        axis.axhline(threshold, color="black", lw=0.8, ls="--")
        axis.set_ylim(0, 1.03)
        axis.grid(alpha=0.3)
    ax.text(2, threshold - 0.015, f"recovered above this line (|cos| > {threshold})", ha="left", va="top", fontsize=8)
    ax.set_xlim(1, n)
    ax.set_xlabel("true features, sorted by how well they are matched (best first)")
    ax.set_ylabel("max |cos| between the true feature and any decoder row")
    ax.legend(loc="lower left", fontsize=8)
    ax_freq.set_xscale("log")
    _plain_log_x(ax_freq, firing_probabilities)
    ax_freq.set_xlabel("firing probability of the true feature (log scale)")
    ax_freq.set_title("which features are missed? (one dot per true feature)", fontsize=10)
    ax_freq.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# --- synthetic mode -------------------------------------------------------------------------------


def synthetic_title(cfg: SyntheticOptions) -> str:
    """Two lines naming the data and the SAEs' budget (figure titles; the terminal joins them)."""
    return (
        f"SAELens synthetic data (no language model) · {cfg.n_features} true features in {cfg.hidden_dim} dims "
        f"({cfg.n_features / cfg.hidden_dim:.0f}x superposition)\nSAEs with {cfg.d_sae} latents, "
        f"{cfg.training_tokens:,} samples each, seed {cfg.seed}"
    )


def synthetic_text(comparison: SyntheticComparison, title: str) -> str:
    """The comparison as the script prints it: the budget, one row per SAE and random directions, the best."""
    cfg, baseline, best = comparison.options, comparison.baseline, comparison.best
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
        for r in comparison.results
    ]
    rows.append(["random dirs", f"{baseline.recovery:.1%}", f"{baseline.mean_max_cos:.3f}", "-", "-", "-", "-", "-"])
    budget = (f"Each SAE: {cfg.d_sae} latents, lr {cfg.lr}, batch {cfg.batch_size}; standard L1 coefficient "
              f"{cfg.l1_coefficient}, TopK k {cfg.k}. Scores on {cfg.eval_samples:,} held-out samples.")
    verdict = (f"Best: {ARCHITECTURE_LABELS[best.architecture]} recovers {best.match.recovery:.1%} of the "
               f"{cfg.n_features} true features (a decoder row with |cos| > {threshold}); random directions "
               f"recover {baseline.recovery:.1%}.")
    return "\n".join(["", title.replace("\n", " · "), budget, "", format_table(header, rows), "", verdict])


def write_synthetic(out: OutputFolder, comparison: SyntheticComparison, title: str) -> list[Path]:
    """MI7 (training curves) and MI8 (learned vs true features), each with its numbers, and MI8.json."""
    cfg, results, baseline = comparison.options, comparison.results, comparison.baseline
    curves = training_curves({r.architecture: r.curve for r in results}, f"Training curves · {title}",
                             samples_label="samples", true_l0=comparison.world.expected_l0)
    probs = comparison.world.firing_probabilities.numpy()
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
        out.write_json(constants.MI8_JSON, comparison.summary()),
    ]


# --- model mode -----------------------------------------------------------------------------------


def model_title(spec: ModelTrainingSpec, demo: bool) -> str:
    """Names the model, the hook and the trained SAE (the terminal and MI7's title)."""
    knob = f"L1 {spec.l1_coefficient}" if spec.architecture == "standard" else f"k {spec.k}"
    return (f"{'SYNTHETIC DEMO · ' if demo else ''}{spec.model_label} · hook {spec.hook_name} · "
            f"trained SAE: {spec.architecture}, {spec.d_sae} latents, {knob}, {spec.training_tokens:,} tokens")


def model_results_text(title: str, spec: ModelTrainingSpec, trained: ModelTrainingResult, data: TrainingData,
                       evaluation: ModelEvaluation, planted: dict | None, demo: bool) -> str:
    """The evaluation table (and the toy world's planted directions), as the script prints them."""
    recovered = evaluation.loss_recovered
    how = (f"Trained in {trained.train_seconds:.0f}s on {data.label}. Evaluated on {data.eval_note}, "
           f"{evaluation.n_tokens:,} tokens, special tokens (BOS) excluded:")
    lines = [
        "",
        title,
        how,
        "",
        format_table(
            ["metric", "value", "meaning"],
            [
                ["L0", f"{evaluation.l0:.2f}", "latents active per token"],
                ["explained var.", f"{evaluation.explained_variance:.3f}", "1 = perfect reconstruction"],
                ["dead latents", f"{evaluation.dead_latents}/{spec.d_sae}", "never fired on the evaluation tokens"],
                ["loss: clean", f"{evaluation.ce_loss_clean:.4f}", "next-token loss of the model as it is"],
                ["loss: with SAE", f"{evaluation.ce_loss_with_sae:.4f}",
                 "next-token loss, hook replaced by the SAE's output"],
                ["loss: zeroed", f"{evaluation.ce_loss_zero_ablated:.4f}", "next-token loss, hook replaced by zeros"],
                ["loss recovered", f"{recovered:.3f}" if recovered is not None else "n/a",
                 "1 = SAE as good as the model, 0 = as bad as zeros"],
            ],
        ),
    ]
    if recovered is None:
        lines += ["", "(loss recovered is undefined here: zeroing the hook does not raise this model's loss"
                  + (" - the toy model was never trained to predict text, so its next-token loss means nothing"
                     if demo else "") + ")"]
    if planted:
        lines += [
            "",
            "Ground truth of the toy world: the planted concept directions and the closest trained latent:",
            format_table(
                ["concept", "toy SAE feature", "trained latent", "cos"],
                [[name, m["reference_feature"], m["latent"], f"{m['cos']:.3f}"] for name, m in planted.items()],
            ),
        ]
    return "\n".join(lines)


def write_model_curves(out: OutputFolder, curve: TrainingCurve, architecture: str, title: str) -> list[Path]:
    """MI7 (the training curve) and MI7.csv (its numbers)."""
    fig = training_curves({architecture: curve}, f"Training curves · {title}")
    return [out.save_figure(fig, constants.MI7_PNG), out.write_csv(constants.MI7_CSV, list(curve.HEADER), curve.rows())]


def saved_text(options: ModelOptions, sae_dir: Path, checkpoint_dir: str | None, written: list[Path]) -> str:
    """Where the SAE and the other outputs are, and the command that uses the SAE in Chapter 1."""
    model_flag = f" --model {options.model}" if options.model != constants.DEFAULT_MODEL else ""
    lines = [
        "",
        f"Saved the SAE in {sae_dir}/ (cfg.json, sae_weights.safetensors, sparsity.safetensors)",
        *([f"      checkpoints in {checkpoint_dir}/"] if checkpoint_dir else []),
        "      " + "\n      ".join(str(path) for path in written),
        "",
        "Use it in the other chapters, e.g.:",
        f"  python MechInterpInitialInvestigation.py{' --demo' if options.demo else model_flag} --sae-path {sae_dir}",
    ]
    return "\n".join(lines)


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


def _plain_log_x(ax, values: np.ndarray) -> None:
    """Plain numbers on a log x axis (0.01, 0.02, not 2 x 10^-2); within two decades also 2, 3 and 5 of
    each decade, so a narrow range still has labels."""
    positive = np.asarray(values)[np.asarray(values) > 0]
    decades = float(np.log10(positive.max() / positive.min())) if positive.size else 0.0
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))

    def minor(v: float, _pos: int) -> str:
        leading = round(v / 10 ** np.floor(np.log10(v)), 6) if v > 0 else 0
        return f"{v:g}" if decades < 2 and leading in (2, 3, 5) else ""

    ax.xaxis.set_minor_formatter(FuncFormatter(minor))
