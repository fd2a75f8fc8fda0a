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

from mechinterp.causal_plots import causal_figure
from mechinterp.cli import ArgumentParser, add_common_args, prompt_folder, load, make_logger, out_dir, positive_int
from mechinterp.encoding import default_batch_size, tokenize, warn_truncated
from mechinterp.errors import UserError, run_cli
from mechinterp.inspect_feature import (
    collect_feature_activations,
    filter_note,
    logit_effects,
    choose_features,
    safe_text,
    typical_max_activation,
)
from mechinterp.intervene import (
    firing_rates,
    generate_side_by_side,
    make_batches,
    resolve_target_tokens,
    run_ablation,
    steering_curve,
    steering_direction,
)
from mechinterp.io import write_csv, write_json
from mechinterp.prompts import load_prompt_sets
from mechinterp.records import RunRecord
from mechinterp.tables import WIDTH, print_table, print_wrapped

MIN_CONTROLS = 20  # fewer random draws make "outside the control distribution" meaningless
DEFAULT_SWEEP = (-2.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


def MEASURES(target_label: str) -> list[tuple[str, str]]:  # noqa: N802 - a table of names, read like a constant
    """The ablation measures (an Effect field each) and how tables name them."""
    return [
        ("delta_logp_targets", "Δ log P(tgt)"),
        ("delta_logodds_targets", "Δ log-odds(tgt)"),
        ("kl", "KL(clean‖abl)"),
    ]


def effect_values(effect) -> list[float]:
    return [effect.delta_logp_targets, effect.delta_logodds_targets, effect.kl]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Chapter 4: ablate a feature against firing-rate-matched controls, then steer with it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    which = parser.add_argument_group("which features")
    which.add_argument("--feature", type=int, action="append", default=[], metavar="ID",
                       help="a feature to test; repeat for several (with --demo and no ids: the planted features)")
    which.add_argument("--from-results", type=Path, default=None, metavar="CSV",
                       help="test the top features of each group of a Chapter 2 feature_stats.csv "
                            "(each ablated on its own group's prompts)")
    which.add_argument("--top-n", type=positive_int, default=1,
                       help="with --from-results: how many features per group (rank 1 = strongest)")
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
    steer.add_argument("--coeff", type=float, default=2.0,
                       help="steering strength for the generations, in units of the feature's typical max activation")
    steer.add_argument("--sweep", type=float, nargs="+", default=list(DEFAULT_SWEEP), metavar="C",
                       help="coefficients for the steering curve (same units as --coeff)")
    steer.add_argument("--max-act", type=float, default=None,
                       help="use this as the typical max activation instead of measuring it on the prompts")
    steer.add_argument("--steer-group", default=None, help="group whose prompts are steered (default: --baseline)")
    steer.add_argument("--steer-prompt", action="append", default=[], metavar="TEXT",
                       help="a prompt to continue clean and steered; repeat for several "
                            "(default: the first --n-generate prompts of the steering group)")
    steer.add_argument("--n-generate", type=positive_int, default=3, help="how many prompts to continue")
    steer.add_argument("--max-new-tokens", type=positive_int, default=12, help="tokens generated per continuation")
    steer.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the sampled runs")
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


def side_by_side(left: str, right: str, width: int) -> list[str]:
    """Two texts wrapped into two columns of ``width`` characters."""
    a = textwrap.wrap(left, width) or [""]
    b = textwrap.wrap(right, width) or [""]
    a += [""] * (len(b) - len(a))
    b += [""] * (len(a) - len(b))
    return [f"{x:<{width}} │ {y}" for x, y in zip(a, b)]


def fmt_tokens(tokens: list[str]) -> str:
    return ", ".join(safe_text(repr(t)) for t in tokens)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    log = make_logger(args)
    out = out_dir(args)
    record = RunRecord(__file__, argv, args)
    folder = prompt_folder(args)
    sets = load_prompt_sets(folder, baseline=args.baseline)
    groups = {g: p[: args.max_prompts] for g, p in sets.groups.items()}
    for name, flag in ((args.group, "--group"), (args.steer_group, "--steer-group")):
        if name is not None and name not in groups:
            raise UserError(f"{flag} {name!r} is not a group in {folder}; groups: {', '.join(groups)}")
    with record.timed("load"):
        loaded = load(args, log=log)
    choice = choose_features(args.feature, args.from_results, args.top_n, args.demo, loaded.sae.d_sae)
    features, csv_groups, how = choice.features, choice.groups, choice.how
    batch_size = args.batch_size or default_batch_size(loaded.device)
    tok = loaded.model.tokenizer

    texts, labels = [], []
    for g, prompts in groups.items():
        texts += prompts
        labels += [g] * len(prompts)
    with record.timed("encode"):
        tokenized = tokenize(loaded, texts)
        warn_truncated(texts, tokenized, int(loaded.model.cfg.n_ctx))
        fa = collect_feature_activations(loaded, texts, labels, features, batch_size, tokenized)
    n_skip = tokenized.n_skip

    def group_tokenized(group: str):
        return tokenize(loaded, groups[group])

    steer_group = args.steer_group or args.baseline
    steer_batches = make_batches(loaded, group_tokenized(steer_group), batch_size)
    rate_cache: dict[str, tuple[list, np.ndarray]] = {}

    print(f"\n{loaded.title}")
    print_wrapped(f"Prompts: {sum(len(p) for p in groups.values())} in groups {', '.join(groups)} from {folder} "
          f"(at most {args.max_prompts} per group). Features: {how}.")
    print_wrapped(f"Filtered: {filter_note(fa)}; interventions leave the BOS position untouched.")

    written, summaries = [], []
    for feature in features:
        fired_by_group = {g: fa.firing(feature, g) for g in groups}
        rate_by_group = {g: (a / b if b else 0.0) for g, (a, b) in fired_by_group.items()}
        group = args.group or csv_groups.get(feature)
        if group is not None and group not in groups:
            raise UserError(f"feature {feature}'s group {group!r} (from --from-results) is not in {folder}")
        if group is None:
            contrasts = [g for g in groups if g != args.baseline] or list(groups)
            group = max(contrasts, key=lambda g: rate_by_group[g])
            group_how = "the group where it fires most often"
        else:
            group_how = "from --group" if args.group else "its group in the results table"

        if args.target:
            targets = resolve_target_tokens(loaded, args.target)
            target_how = "given with --target"
        else:
            promoted, _ = logit_effects(loaded, feature, args.n_targets)
            targets = [x.token_id for x in promoted]
            target_how = f"its top {len(targets)} promoted tokens (W_dec[f] @ W_U)"
        target_tokens = [tok.decode([t]) for t in targets]
        target_label = "targets" if len(targets) > 1 else safe_text(repr(target_tokens[0]))

        if args.max_act is not None:
            typical, max_how = args.max_act, "given with --max-act"
        else:
            typical, n_fired = typical_max_activation(fa, feature)
            if n_fired == 0:
                raise UserError(
                    f"feature {feature} never fires on these prompts, so it has no typical max activation to "
                    "scale the steering by; add prompts where it fires or pass --max-act VALUE"
                )
            max_how = f"median of the per-prompt max over the {n_fired} of {len(texts)} prompts where it fires"

        print(f"\n=== Feature #{feature}")
        print_wrapped(f"Targets (tgt): {fmt_tokens(target_tokens)} ({target_how})")
        print_wrapped(f"Typical max activation: {typical:.4g} ({max_how})")
        print_wrapped("Firing rate by group: " + ", ".join(f"{g} {100 * r:.3g}%" for g, r in rate_by_group.items()))

        # --- ablation ---
        ablation = None
        ablation_rows = []
        with record.timed("ablation"):
            if rate_by_group[group] == 0:
                print()
                print_wrapped(f"Ablation on '{group}' ({group_how}): skipped - the feature never fires on these prompts, "
                      "so removing it changes nothing (the error term keeps everything else exactly as it was).")
            else:
                if group not in rate_cache:
                    batches = make_batches(loaded, group_tokenized(group), batch_size)
                    rate_cache[group] = (batches, firing_rates(loaded, batches))
                batches, rates = rate_cache[group]
                log(f"ablating feature {feature} and {args.n_controls} controls on '{group}' ...")
                ablation = run_ablation(loaded, batches, n_skip, feature, targets, args.n_controls, args.seed, rates)
                c = ablation.controls
                print()
                print_wrapped(f"Ablation on '{group}' ({group_how}), {len(groups[group])} prompts, "
                      f"{ablation.effect.n_positions} text positions; error term kept.")
                print_wrapped(f"Controls: {len(c.features)} random features drawn from the {c.pool_size} whose firing rate on "
                      f"these prompts is {100 * c.rate_low:.3g}%-{100 * c.rate_high:.3g}% "
                      f"(feature: {100 * ablation.rate:.3g}%).")
                rows = []
                for which, name in MEASURES(target_label):
                    value = getattr(ablation.effect, which)
                    ctrl = np.array([getattr(e, which) for e in ablation.control_effects])
                    rows.append([
                        name, f"{value:+.4g}", f"{np.median(ctrl):+.3g}", f"{ctrl.min():+.3g}", f"{ctrl.max():+.3g}",
                        f"{len(ctrl) - ablation.n_controls_at_least(which)} of {len(ctrl)}",
                        f"{ablation.empirical_p(which):.3g}",
                    ])
                print_table(["mean per token", "feature", "ctrl median", "ctrl min", "ctrl max", "|feature| beats",
                             "empirical p"], rows)
                print_wrapped(f"(tgt = {fmt_tokens(target_tokens)}. Clean means on these prompts: log P(tgt) "
                      f"{ablation.clean.logp_targets:.4g}, "
                      f"log-odds {ablation.clean.logodds_targets:.4g}; empirical p = (1 + controls at least as "
                      "large) / (1 + controls); log P saturates when the targets already hold most of the "
                      "probability, log-odds do not)")
                ablation_rows = [["feature", feature, ablation.rate, *effect_values(ablation.effect)]]
                ablation_rows += [["control", cf, r, *effect_values(e)]
                                  for cf, r, e in zip(c.features, ablation.control_rates, ablation.control_effects)]

        # --- steering ---
        with record.timed("steering"):
            coeffs = sorted(set(args.sweep) | {0.0, args.coeff})
            log(f"steering curve over {len(coeffs)} coefficients on '{steer_group}' ...")
            curve = steering_curve(loaded, steer_batches, n_skip, feature, coeffs, typical, targets)
            logp, logodds, kl = curve["logp_targets"], curve["logodds_targets"], curve["kl"]
            norm = float(loaded.sae.sae.W_dec[feature].detach().norm())
            print()
            print_wrapped(f"Steering '{steer_group}' prompts: add coeff × {typical:.4g} × W_dec[{feature}] at every text "
                  "position (teacher-forced, means over text positions):")
            print_table(["coeff", "added norm", "log P(tgt)", "Δ vs clean", "log-odds(tgt)", "KL(clean‖steered)"],
                        [[f"{c:g}", f"{abs(c) * typical * norm:.3g}", f"{lp:.4g}",
                          f"{lp - logp[coeffs.index(0.0)]:+.4g}", f"{lo:.4g}", f"{k:.4g}"]
                         for c, lp, lo, k in zip(coeffs, logp, logodds, kl)])

            prompts = args.steer_prompt or groups[steer_group][: args.n_generate]
            prompt_tok = tokenize(loaded, prompts)
            log(f"generating {args.max_new_tokens} tokens for {len(prompts)} prompts, clean and steered ...")
            gens = generate_side_by_side(
                loaded, prompt_tok.ids, prompts, n_skip, steering_direction(loaded, feature, args.coeff, typical),
                args.max_new_tokens, args.seed, args.temperature,
            )
            width = max(30, (min(shutil.get_terminal_size((WIDTH, 24)).columns, WIDTH) - 5) // 2)
            print()
            print_wrapped(f"Continuations ({args.max_new_tokens} new tokens), clean vs steered at coeff {args.coeff:g} "
                  f"(+{args.coeff * typical:.3g} × W_dec[{feature}]):")
            for g in gens:
                if g.mode == "greedy":
                    print(f"\n  prompt: {safe_text(g.prompt)}")
                    print("  " + "\n  ".join(side_by_side("clean", f"steered ×{args.coeff:g}", width)))
                print(f"  -- {g.mode}")
                print("  " + "\n  ".join(side_by_side(safe_text(g.clean), safe_text(g.steered), width)))

        # --- files ---
        stem = f"MI6_{feature}"
        keys = [key for key, _ in MEASURES(target_label)]
        png = causal_figure(
            feature, group, target_label,
            {k: getattr(ablation.effect, k) for k in keys} if ablation else None,
            {k: np.array([getattr(e, k) for e in ablation.control_effects]) for k in keys} if ablation else None,
            coeffs, curve, steer_group, typical, loaded.title, out / f"{stem}.png",
        )
        abl_csv = write_csv(out / f"{stem}_ablation.csv",
                            ["role", "feature", "firing_rate", "delta_mean_logp_targets",
                             "delta_mean_logodds_targets", "mean_kl"], ablation_rows)
        steer_csv = write_csv(out / f"{stem}_steering.csv",
                              ["coeff", "added_activation", "mean_logp_targets", "mean_logodds_targets", "mean_kl"],
                              [[c, c * typical, lp, lo, k] for c, lp, lo, k in zip(coeffs, logp, logodds, kl)])
        gen_csv = write_csv(out / f"{stem}_generations.csv", ["prompt", "mode", "coeff", "clean", "steered"],
                            [[g.prompt, g.mode, args.coeff, g.clean, g.steered] for g in gens])
        summary = {
            "feature": feature,
            "title": loaded.title,
            "targets": target_tokens,
            "target_ids": targets,
            "typical_max_activation": typical,
            "typical_max_how": max_how,
            "firing_rate_by_group": rate_by_group,
            "ablation_group": group,
            "steer_group": steer_group,
            "filtered": filter_note(fa) + "; interventions leave the BOS position untouched",
            "ablation": None if ablation is None else {
                "n_positions": ablation.effect.n_positions,
                "clean_mean_logp_targets": ablation.clean.logp_targets,
                "clean_mean_logodds_targets": ablation.clean.logodds_targets,
                "feature": {"firing_rate": ablation.rate, **{k: getattr(ablation.effect, k) for k in keys}},
                "control_effects": [{k: getattr(e, k) for k in keys} for e in ablation.control_effects],
                "controls": {"features": ablation.controls.features, "pool_size": ablation.controls.pool_size,
                             "pool_rate_range": [ablation.controls.rate_low, ablation.controls.rate_high]},
                "controls_at_least_as_large": {k: ablation.n_controls_at_least(k) for k in keys},
                "empirical_p": {k: ablation.empirical_p(k) for k in keys},
            },
            "steering": {"coeffs": coeffs, "mean_logp_targets": logp, "mean_logodds_targets": logodds,
                         "mean_kl": kl, "generation_coeff": args.coeff},
        }
        summary_json = write_json(out / f"{stem}.json", summary)
        written += [png, abl_csv, steer_csv, gen_csv, summary_json]
        summaries.append([
            feature, group,
            f"{ablation.effect.delta_logodds_targets:+.3g}" if ablation else "-",
            f"{ablation.empirical_p('delta_logodds_targets'):.3g}" if ablation else "-",
            f"{ablation.effect.kl:.3g}" if ablation else "-",
            f"{ablation.empirical_p('kl'):.3g}" if ablation else "-",
            f"{logp[coeffs.index(args.coeff)] - logp[coeffs.index(0.0)]:+.3g}",
        ])

    print("\nSummary (ablation: mean change per text token, empirical p against the controls):\n")
    print_table(["feature", "ablated on", "Δ log-odds(tgt)", "p", "KL", "p", f"steer ×{args.coeff:g}: Δ log P"],
                summaries)
    record.wrote(*written)
    record.update(
        model=loaded.model_label, sae=loaded.sae.label, hook=loaded.sae.hook_name, d_sae=loaded.sae.d_sae,
        features=features, feature_choice=how, prompts_folder=str(folder),
        filtered=filter_note(fa) + "; interventions leave the BOS position untouched",
    )
    record_path = record.write(out)
    print()
    print_wrapped(f"Saved {len(written) + 1} files to {out}: MI6_<id>.png and the numbers behind it, {record_path.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
