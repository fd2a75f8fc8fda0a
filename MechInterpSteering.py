"""Chapter 4 - Does the feature matter? Ablate it (against random controls), then steer with it.

For each feature:

* **Ablation.** On one group's prompts, removes the feature from the SAE reconstruction at the hook while
  keeping the SAE's error term (so nothing else changes), and measures the change in next-token
  predictions: mean KL divergence to the clean run, and the mean change in log-probability of target
  tokens (default: the feature's top promoted tokens, from ``W_dec[f] @ W_U``). The same is done for
  random features matched in firing rate on those prompts (at least 20), and the script reports where
  the feature's effect falls among them.
* **Steering.** Adds ``coeff * typical_max * W_dec[f]`` at the hook (coefficients are relative to the
  feature's typical maximum activation, so "2" means twice its natural strength for every feature),
  prints clean vs steered continuations side by side (greedy, and sampled with a fixed seed), and
  measures log P(targets) on the steering prompts for each coefficient of a sweep (the steering curve).

The BOS position and padding are excluded from every statistic; interventions leave BOS untouched.
Writes to --out (default Images/): ``MI6_<id>.png`` with ``MI6_<id>_ablation.csv``,
``MI6_<id>_steering.csv``, ``MI6_<id>_generations.csv`` and ``MI6_<id>.json`` (the numbers behind it),
and the run record.

Run:
    python MechInterpSteering.py --demo                           # the demo's planted features, no network
    python MechInterpSteering.py --feature 501 --demo --coeff 4 --sweep -2 0 1 2 4 8
    python MechInterpSteering.py --feature 1234 --group happy --prompts prompts/
    python MechInterpSteering.py --from-results Images/feature_stats.csv --top-n 1
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np

from mechinterp.causal.intervene import (
    ABLATION_MEASURES,
    DEFAULT_SWEEP,
    MIN_CONTROLS,
    FeatureTest,
    FeatureTestOptions,
    GroupBatches,
    intervention_note,
    test_feature,
)
from mechinterp.causal.report import causal_figure
from mechinterp.cli import (
    ArgumentParser,
    add_common_args,
    finite_float,
    make_logger,
    output_folder,
    positive_int,
    prompt_folder,
    run_cli,
    source_options,
)
from mechinterp.core import constants
from mechinterp.core.encoding import default_batch_size, tokenize, warn_truncated
from mechinterp.core.errors import UserError
from mechinterp.core.features import FeatureChoice, choose_features, collect_feature_activations
from mechinterp.core.io import OutputFolder
from mechinterp.core.prompts import load_prompt_sets
from mechinterp.core.records import RunRecord
from mechinterp.core.source import demo_threads, load, resolve_source
from mechinterp.core.tables import WIDTH, print_table, print_wrapped, safe_text

# How the tables name each ablation measure (an Effect field each, in ABLATION_MEASURES order).
MEASURE_NAMES = {"delta_logp_targets": "Δ log P(tgt)", "delta_logodds_targets": "Δ log-odds(tgt)",
                 "kl": "KL(clean‖abl)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Chapter 4: ablate a feature against firing-rate-matched controls, then steer with it.",
    )
    which = parser.add_argument_group("which features")
    which.add_argument("--feature", type=int, action="append", default=[], metavar="ID",
                       help="a feature to test; repeat for several (with --demo and no ids: the planted features)")
    which.add_argument("--from-results", type=Path, default=None, metavar="CSV",
                       help="test the top features of each group of a Chapter 2 feature_stats.csv "
                            "(each ablated on its own group's prompts)")
    which.add_argument("--top-n", type=positive_int, default=1,
                       help="with --from-results: how many features per group (rank 1 = strongest)")
    which.add_argument("--include-nonsignificant", action="store_true",
                       help="with --from-results: also test features that are not significant, not replicated or "
                            "not judged 'concept' (by default they are skipped, and the output says which)")
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--prompts", type=Path, default=None, metavar="DIR",
                         help="folder of prompt files, one prompt per line (default: prompts/, or the demo's "
                              "prompts with --demo)")
    prompts.add_argument("--group", default=None,
                         help="the group whose prompts the ablation runs on (default: the feature's group in "
                              "--from-results, else the group where it fires most often)")
    prompts.add_argument("--baseline", default="baseline", help="the neutral group (also the default steering group)")
    prompts.add_argument("--max-prompts", type=positive_int, default=64,
                         help="use at most this many prompts per group (the first ones in the file)")
    prompts.add_argument("--batch-size", type=positive_int, default=None,
                         help="prompts per forward pass (default: 16 on CPU, 64 on GPU)")
    ablate = parser.add_argument_group("ablation")
    ablate.add_argument("--target", action="append", default=[], metavar="TOKEN",
                        help="a target token whose log-probability is tracked; repeat for several "
                             "(default: the feature's top promoted tokens)")
    ablate.add_argument("--n-targets", type=positive_int, default=3,
                        help="without --target: how many of the feature's top promoted tokens to track")
    ablate.add_argument("--n-controls", type=positive_int, default=MIN_CONTROLS,
                        help=f"random firing-rate-matched features to ablate as controls (at least {MIN_CONTROLS})")
    steer = parser.add_argument_group("steering")
    steer.add_argument("--coeff", type=finite_float, default=2.0,
                       help="steering strength for the generations, in units of the feature's typical max activation")
    steer.add_argument("--sweep", type=finite_float, nargs="+", default=list(DEFAULT_SWEEP), metavar="C",
                       help="coefficients for the steering curve (same units as --coeff)")
    steer.add_argument("--max-act", type=finite_float, default=None,
                       help="use this as the typical max activation instead of measuring it on the prompts")
    steer.add_argument("--steer-group", default=None, help="group whose prompts are steered (default: --baseline)")
    steer.add_argument("--steer-prompt", action="append", default=[], metavar="TEXT",
                       help="a prompt to continue clean and steered; repeat for several "
                            "(default: the first --n-generate prompts of the steering group)")
    steer.add_argument("--n-generate", type=positive_int, default=3, help="how many prompts to continue")
    steer.add_argument("--max-new-tokens", type=positive_int, default=12, help="tokens generated per continuation")
    steer.add_argument("--temperature", type=finite_float, default=1.0, help="sampling temperature of the sampled runs")
    parser.add_argument("--seed", type=int, default=0, help="seed for the control draw and the sampled generations")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.n_controls < MIN_CONTROLS:
        parser.error(f"--n-controls must be at least {MIN_CONTROLS}: with fewer draws the control distribution "
                     "says little")
    if args.temperature <= 0:
        parser.error("--temperature must be above 0 (the greedy runs already show temperature 0)")
    if args.max_act is not None and args.max_act <= 0:
        parser.error("--max-act must be above 0")
    return args


def feature_test_options(args: argparse.Namespace) -> FeatureTestOptions:
    """The flags of the test itself as typed options."""
    return FeatureTestOptions(
        targets=tuple(args.target), n_targets=args.n_targets, n_controls=args.n_controls, coeff=args.coeff,
        sweep=tuple(args.sweep), max_act=args.max_act, baseline=args.baseline, steer_group=args.steer_group,
        steer_prompts=tuple(args.steer_prompt), n_generate=args.n_generate, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, seed=args.seed,
    )


def ablation_group(args: argparse.Namespace, choice: FeatureChoice, feature: int, folder: Path,
                   groups: dict[str, list[str]]) -> tuple[str | None, str]:
    """The group to ablate ``feature`` on (None: where it fires most often) and why that one."""
    group = args.group or choice.groups.get(feature)
    if group is not None and group not in groups:
        raise UserError(f"feature {feature}'s group {group!r} (from --from-results) is not in {folder}")
    return group, "from --group" if args.group else "its group in the results table"


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    log = make_logger(args)
    with output_folder(args) as out:
        record = RunRecord(__file__, argv, vars(args))
        folder = prompt_folder(args)
        sets = load_prompt_sets(folder, baseline=args.baseline)
        groups = {g: p[: args.max_prompts] for g, p in sets.groups.items()}
        for name, flag in ((args.group, "--group"), (args.steer_group, "--steer-group")):
            if name is not None and name not in groups:
                raise UserError(f"{flag} {name!r} is not a group in {folder}; groups: {', '.join(groups)}")
        options = feature_test_options(args)
        with record.timed("load"):
            loaded = load(resolve_source(source_options(args), log), log=log)
        with demo_threads(loaded.is_demo):
            choice = choose_features(args.feature, args.from_results, args.top_n, args.demo, loaded.sae.d_sae,
                                     args.include_nonsignificant, loaded.provenance)
            batch_size = args.batch_size or default_batch_size(loaded.device)
            texts = [t for p in groups.values() for t in p]
            with record.timed("encode"):
                tokenized = tokenize(loaded, texts)
                warn_truncated(texts, tokenized, int(loaded.model.cfg.n_ctx))
                labels = [g for g, p in groups.items() for _ in p]
                fa = collect_feature_activations(loaded, texts, labels, choice.features, batch_size, tokenized)
            prompts = GroupBatches(loaded, groups, batch_size)

            print(f"\n{loaded.title}")
            print_wrapped(f"Prompts: {len(texts)} in groups {', '.join(groups)} from {folder} "
                          f"(at most {args.max_prompts} per group). Features: {choice.how}.")
            print_wrapped(f"Filtered: {intervention_note(fa)}.")
            if choice.note:
                print_wrapped(f"Note: {choice.note}.")
            written, summaries = [], []
            for feature in choice.features:
                group, group_how = ablation_group(args, choice, feature, folder, groups)
                test = test_feature(loaded, prompts, fa, feature, options, group, group_how, log)
                record.add_seconds(test.seconds)
                print_test(test, choice.origin(feature))
                written += write_test(out, test)
                summaries.append(summary_row(test))

        print("\nSummary (ablation: mean change per text token, empirical p against the controls):\n")
        print_table(["feature", "ablated on", "Δ log-odds(tgt)", "p", "KL", "p",
                     f"steer ×{args.coeff:g}: Δ log P"], summaries)
        record.wrote(*written)
        record.update(
            model=loaded.model_label, sae=loaded.sae.label, hook=loaded.sae.hook_name, d_sae=loaded.sae.d_sae,
            features=choice.features, feature_choice=choice.how, prompts_folder=str(folder),
            filtered=intervention_note(fa),
        )
        record_path = record.write(out)
        print()
        print_wrapped(f"Saved {len(written) + 1} files to {out.path}: MI6_<id>.png and the numbers behind it, "
                      f"{record_path.name}")
    return 0


def side_by_side(left: str, right: str, width: int) -> list[str]:
    """Two texts wrapped into two columns of ``width`` characters."""
    a = textwrap.wrap(left, width) or [""]
    b = textwrap.wrap(right, width) or [""]
    a += [""] * (len(b) - len(a))
    b += [""] * (len(a) - len(b))
    return [f"{x:<{width}} │ {y}" for x, y in zip(a, b)]


def fmt_tokens(tokens: list[str]) -> str:
    return ", ".join(safe_text(repr(t)) for t in tokens)


def target_label(test: FeatureTest) -> str:
    """How figures name the target set: "targets", or the one target token."""
    return "targets" if len(test.target_ids) > 1 else safe_text(repr(test.target_tokens[0]))


def print_test(test: FeatureTest, origin: str | None) -> None:
    """The feature's targets and typical max, then its ablation, steering curve and generations."""
    print(f"\n=== Feature #{test.feature}" + (f" ({origin})" if origin else ""))
    print_wrapped(f"Targets (tgt): {fmt_tokens(test.target_tokens)} ({test.target_how})")
    print_wrapped(f"Typical max activation: {test.typical_max:.4g} ({test.typical_max_how})")
    print_wrapped("Firing rate by group: "
                  + ", ".join(f"{g} {100 * r:.3g}%" for g, r in test.firing_rate_by_group.items()))
    print_ablation(test)
    print_steering(test)
    print_generations(test)


def print_ablation(test: FeatureTest) -> None:
    ablation, group = test.ablation, test.ablation_group
    print()
    if ablation is None:
        print_wrapped(f"Ablation on '{group}' ({test.ablation_group_how}): skipped - the feature never fires on "
                      "these prompts, so removing it changes nothing (the error term keeps everything else "
                      "exactly as it was).")
        return
    c = ablation.controls
    print_wrapped(f"Ablation on '{group}' ({test.ablation_group_how}), {test.n_ablation_prompts} prompts, "
                  f"{ablation.effect.n_positions} text positions; error term kept.")
    print_wrapped(f"Controls: {len(c.features)} random features drawn from the {c.pool_size} whose firing rate on "
                  f"these prompts is {100 * c.rate_low:.3g}%-{100 * c.rate_high:.3g}% "
                  f"(feature: {100 * ablation.rate:.3g}%).")
    rows = []
    for which in ABLATION_MEASURES:
        value = getattr(ablation.effect, which)
        ctrl = np.array([getattr(e, which) for e in ablation.control_effects])
        rows.append([
            MEASURE_NAMES[which], f"{value:+.4g}", f"{np.median(ctrl):+.3g}", f"{ctrl.min():+.3g}",
            f"{ctrl.max():+.3g}", f"{len(ctrl) - ablation.n_controls_at_least(which)} of {len(ctrl)}",
            f"{ablation.empirical_p(which):.3g}",
        ])
    print_table(["mean per token", "feature", "ctrl median", "ctrl min", "ctrl max", "|feature| beats",
                 "empirical p"], rows)
    print_located(test)
    print_wrapped(f"(tgt = {fmt_tokens(test.target_tokens)}. Clean means on these prompts: log P(tgt) "
                  f"{ablation.clean.logp_targets:.4g}, "
                  f"log-odds {ablation.clean.logodds_targets:.4g}; empirical p = (1 + controls at least as "
                  "large) / (1 + controls); log P saturates when the targets already hold most of the "
                  "probability, log-odds do not)")


# Clean P(targets) above this where the feature fires: the model predicts the targets without it.
ALREADY_PREDICTED = 0.5
# KL(clean || steered) above this many nats: the steered model no longer resembles the clean one.
OVERWRITTEN_KL = 1.0


def print_located(test: FeatureTest) -> None:
    """The ablation where the feature fires, and one position later: averages over all tokens dilute it."""
    a = test.ablation
    if a is None or a.located is None:
        return
    at, nxt = a.located.firing, a.located.next
    ctrl = [c.firing for c in a.control_located if c.firing.n_positions]
    rows = [["where it fires", at.n_positions] + [f"{getattr(at, k):+.4g}" for k in ABLATION_MEASURES],
            ["one token later", nxt.n_positions] + [f"{getattr(nxt, k):+.4g}" for k in ABLATION_MEASURES]]
    if ctrl:
        rows.append(["controls where they fire (median)", int(np.median([c.n_positions for c in ctrl]))]
                    + [f"{np.median([getattr(c, k) for c in ctrl]):+.3g}" for k in ABLATION_MEASURES])
    print()
    print_wrapped(f"Where it matters: the same ablation, averaged only over the {at.n_positions} positions where the "
                  f"feature fires (of {a.effect.n_positions}), and over the positions right after them:")
    print_table(["positions", "n"] + [MEASURE_NAMES[k] for k in ABLATION_MEASURES], rows)
    clean_p = float(np.exp(a.located.clean_firing.logp_targets))
    if at.n_positions and clean_p > ALREADY_PREDICTED:
        print_wrapped(f"Note: where the feature fires, the clean model already gives the targets P = {clean_p:.0%}; "
                      "removing one feature cannot lower a prediction that other features carry too, so a small "
                      "effect here does not mean the feature does nothing.")


def print_steering(test: FeatureTest) -> None:
    s, typical = test.steering, test.typical_max
    clean = s.logp_targets[s.coeffs.index(0.0)]
    print()
    print_wrapped(f"Steering '{test.steer_group}' prompts: add coeff × {typical:.4g} × W_dec[{test.feature}] at "
                  "every text position (teacher-forced, means over text positions):")
    print_table(["coeff", "added norm", "log P(tgt)", "Δ vs clean", "log-odds(tgt)", "KL(clean‖steered)"],
                [[f"{c:g}", f"{abs(c) * typical * test.decoder_norm:.3g}", f"{lp:.4g}", f"{lp - clean:+.4g}",
                  f"{lo:.4g}", f"{k:.4g}" + (" !" if k > OVERWRITTEN_KL else "")]
                 for c, lp, lo, k in zip(s.coeffs, s.logp_targets, s.logodds_targets, s.kl)])
    overwritten = [c for c, k in zip(s.coeffs, s.kl) if k > OVERWRITTEN_KL]
    if overwritten:
        print_wrapped(f"! KL above {OVERWRITTEN_KL:g} nat from coeff {min(overwritten, key=abs):g} on: there the steering "
                      "overwrites the model's distribution rather than nudging it; target gains in that range show "
                      "what the direction can force, not what the feature does at its natural strength.")


def print_generations(test: FeatureTest) -> None:
    coeff, typical = test.generation_coeff, test.typical_max
    width = max(30, (min(shutil.get_terminal_size((WIDTH, 24)).columns, WIDTH) - 5) // 2)
    print()
    print_wrapped(f"Continuations ({test.max_new_tokens} new tokens), clean vs steered at coeff {coeff:g} "
                  f"(+{coeff * typical:.3g} × W_dec[{test.feature}]):")
    for g in test.generations:
        if g.mode == "greedy":
            print(f"\n  prompt: {safe_text(g.prompt)}")
            print("  " + "\n  ".join(side_by_side("clean", f"steered ×{coeff:g}", width)))
        print(f"  -- {g.mode}")
        print("  " + "\n  ".join(side_by_side(safe_text(g.clean), safe_text(g.steered), width)))


def write_test(out: OutputFolder, test: FeatureTest) -> list[Path]:
    """MI6_<id>.png with the numbers behind it: ablation, steering and generations CSVs, and the JSON."""
    f, a, s = test.feature, test.ablation, test.steering
    keys = ABLATION_MEASURES
    fig = causal_figure(
        f, test.ablation_group, target_label(test),
        {k: getattr(a.effect, k) for k in keys} if a else None,
        {k: np.array([getattr(e, k) for e in a.control_effects]) for k in keys} if a else None,
        s.coeffs, s.columns(), test.steer_group, test.typical_max, test.title,
    )
    ablation_rows = []
    if a is not None:
        ablation_rows = [["feature", f, a.rate, *(getattr(a.effect, k) for k in keys)]]
        ablation_rows += [["control", cf, r, *(getattr(e, k) for k in keys)]
                          for cf, r, e in zip(a.controls.features, a.control_rates, a.control_effects)]
    return [
        out.save_figure(fig, constants.MI6_PNG.format(feature=f)),
        out.write_csv(constants.MI6_ABLATION_CSV.format(feature=f),
                      ["role", "feature", "firing_rate", "delta_mean_logp_targets", "delta_mean_logodds_targets",
                       "mean_kl"], ablation_rows),
        out.write_csv(constants.MI6_STEERING_CSV.format(feature=f),
                      ["coeff", "added_activation", "mean_logp_targets", "mean_logodds_targets", "mean_kl"],
                      [[c, c * test.typical_max, lp, lo, k]
                       for c, lp, lo, k in zip(s.coeffs, s.logp_targets, s.logodds_targets, s.kl)]),
        out.write_csv(constants.MI6_GENERATIONS_CSV.format(feature=f),
                      ["prompt", "mode", "coeff", "clean", "steered"],
                      [[g.prompt, g.mode, test.generation_coeff, g.clean, g.steered] for g in test.generations]),
        out.write_json(constants.MI6_JSON.format(feature=f), test.to_dict()),
    ]


def summary_row(test: FeatureTest) -> list:
    """One row of the closing summary table."""
    a = test.ablation
    return [
        test.feature, test.ablation_group,
        f"{a.effect.delta_logodds_targets:+.3g}" if a else "-",
        f"{a.empirical_p('delta_logodds_targets'):.3g}" if a else "-",
        f"{a.effect.kl:.3g}" if a else "-",
        f"{a.empirical_p('kl'):.3g}" if a else "-",
        f"{test.steering.delta_logp(test.generation_coeff):+.3g}",
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
