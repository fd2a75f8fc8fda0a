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

* **Families.** ``--family 409+501`` (repeatable), or a family row of ``--from-results`` (a concept the SAE
  splits across features, Chapter 2's verdict ``concept (split)``), is tested as one: all its members are
  ablated at once, against random sets of as many features (each member's stand-in matched to that
  member's firing rate), and steered with ``coeff * sum(typical_max[m] * W_dec[m])``. Ablating one member
  removes only its part of the concept's words; the family's ablation tests the concept as the SAE
  represents it. Its results are labelled ``#409+#501`` and its files named ``MI6_409+501...``.

The BOS position and padding are excluded from every statistic; interventions leave BOS untouched.
Writes to --out (default Images/): ``MI6_<id>.png`` with ``MI6_<id>_ablation.csv``,
``MI6_<id>_steering.csv``, ``MI6_<id>_generations.csv`` and ``MI6_<id>.json`` (the numbers behind it),
and the run record.

Run:
    python MechInterpSteering.py --demo                           # the demo's planted features, no network
    python MechInterpSteering.py --feature 501 --demo --coeff 4 --sweep -2 0 1 2 4 8
    python MechInterpSteering.py --feature 1234 --group happy --prompts prompts/
    python MechInterpSteering.py --from-results Images/feature_stats.csv --top-n 1
    python MechInterpSteering.py --demo --family 409+501              # two features ablated and steered as one
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mechinterp.causal.intervene import (
    FeatureTest,
    FeatureTestOptions,
    GroupBatches,
    intervention_note,
    test_feature,
)
from mechinterp.causal.report import (
    brief_test_lines,
    feature_test_figure,
    feature_test_tables,
    feature_test_text,
    summary_text,
)
from mechinterp.cli import (
    ArgumentParser,
    add_common_args,
    add_options,
    make_logger,
    options_from,
    output_folder,
    print_report,
    prompt_folder,
    run_cli,
    source_options,
)
from mechinterp.core import constants
from mechinterp.core.encoding import warn_truncated
from mechinterp.core.errors import UserError
from mechinterp.core.features import (
    FamilySelection,
    FeatureChoice,
    FeatureSelection,
    choose_features,
    name_of,
)
from mechinterp.core.io import OutputFolder
from mechinterp.core.prompts import PromptOptions, PromptSets, load_prompt_sets
from mechinterp.core.records import RunRecord
from mechinterp.core.source import demo_threads, load, resolve_source
from mechinterp.core.tables import print_wrapped, wrapped

# This chapter's wording of the shared flags (each flag itself is defined once, in its dataclass).
WHICH_HELPS = {
    "feature": "a feature to test; repeat for several (with --demo and no ids: the planted features)",
    "from_results": "test the top features of each group of a Chapter 2 feature_stats.csv "
                    "(each ablated on its own group's prompts; a family of features there is tested as one)",
    "family": "a feature family to test as one (all members ablated at once, steered together): its member ids "
              "joined by '+', e.g. 409+501 (Chapter 2's family column); repeat for several",
    "include_nonsignificant": "with --from-results: also test features that are not significant, not replicated or "
                              "not judged 'concept' (by default they are skipped, and the output says which)",
}
PROMPT_HELPS = {
    "prompts": "folder of prompt files, one prompt per line (default: prompts/, or the demo's prompts with --demo)",
    "baseline": "the neutral group (also the default steering group)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Chapter 4: ablate a feature against firing-rate-matched controls, then steer with it.",
    )
    add_options(parser, FeatureSelection, "which features", defaults={"top_n": 1}, helps=WHICH_HELPS)
    add_options(parser, FamilySelection, "which features", helps=WHICH_HELPS)
    add_options(parser, PromptOptions, "prompts", only=["prompts", "baseline"], helps=PROMPT_HELPS)
    # Each field names its section (prompts, ablation, steering); "ablation" is the one this call opens.
    add_options(parser, FeatureTestOptions, "ablation")
    add_common_args(parser)
    args = parser.parse_args(argv)
    try:  # the options check their values; a bad one gets argparse's usage message, like a bad flag
        options_from(args, FeatureTestOptions)
    except UserError as err:
        parser.error(str(err))
    return args


def check_groups(options: FeatureTestOptions, sets: PromptSets, folder: Path) -> None:
    """--group and --steer-group name groups of the folder (checked before the model is loaded)."""
    for name, flag in ((options.group, "--group"), (options.steer_group, "--steer-group")):
        if name is not None and name not in sets.groups:
            raise UserError(f"{flag} {name!r} is not a group in {folder}; groups: {', '.join(sets.groups)}")


def results_group(choice: FeatureChoice, feature: int | tuple[int, ...], options: FeatureTestOptions,
                  prompts: GroupBatches, folder: Path) -> str | None:
    """The feature's (or family's) group in --from-results (or the demo concept it was planted for), where it
    is ablated unless --group says otherwise."""
    group = choice.groups.get(feature)
    if options.group is None and group is not None and group not in prompts.groups:
        raise UserError(f"feature {name_of(feature)}'s group {group!r} (from --from-results) is not in {folder}")
    return group


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    log = make_logger(args)
    options, which = options_from(args, FeatureTestOptions), options_from(args, FeatureSelection)
    with output_folder(args) as out:
        record = RunRecord(__file__, argv, vars(args))
        folder = prompt_folder(args)
        sets = load_prompt_sets(folder, baseline=args.baseline)
        check_groups(options, sets, folder)
        with record.timed("load"):
            loaded = load(resolve_source(source_options(args), log), log=log)
        with demo_threads(loaded.is_demo):
            choice = choose_features(which.feature, which.from_results, which.top_n, args.demo, loaded.sae.d_sae,
                                     which.include_nonsignificant, loaded.provenance,
                                     families=options_from(args, FamilySelection).family)
            prompts = GroupBatches.of(loaded, sets, options)
            with record.timed("encode"):  # once, for the features and every family's members
                warn_truncated(prompts.texts, prompts.tokenized(), int(loaded.model.cfg.n_ctx))
                fa = prompts.activations([*choice.features, *choice.members])

            head = ["", loaded.title,
                    wrapped(f"Prompts: {len(prompts.texts)} in groups {', '.join(prompts.groups)} from {folder} "
                            f"(at most {options.max_prompts} per group). Features: {choice.how}."),
                    wrapped(f"Filtered: {intervention_note(fa)}.")]
            if choice.note:
                head.append(wrapped(f"Note: {choice.note}."))
            tests, written, full, brief = [], [], list(head), list(head)
            for feature in [*choice.features, *choice.families]:
                group = results_group(choice, feature, options, prompts, folder)
                test = test_feature(loaded, feature, prompts, options, log, group=group,
                                    group_how="its group in the results table")
                record.add_seconds(test.seconds)
                full.append(feature_test_text(test, choice.origin(feature)))
                brief += brief_test_lines(test, choice.origin(feature))
                written += write_test(out, test)
                tests.append(test)

        summary = summary_text(tests, options.coeff)
        written.append(print_report(out, __file__, args, [*full, summary], [*brief, summary]))
        record.wrote(*written)
        record.update(
            model=loaded.model_label, sae=loaded.sae.label, hook=loaded.sae.hook_name, d_sae=loaded.sae.d_sae,
            features=choice.features, families=[name_of(f) for f in choice.families], feature_choice=choice.how,
            prompts_folder=str(folder),
            filtered=intervention_note(fa),
        )
        record_path = record.write(out)
        print()
        print_wrapped(f"Saved {len(written) + 1} files to {out.path}: MI6_<id>.png and the numbers behind it, "
                      f"{record_path.name}")
    return 0


def write_test(out: OutputFolder, test: FeatureTest) -> list[Path]:
    """MI6_<id>.png with the numbers behind it: ablation, steering and generations CSVs, and the JSON."""
    written = [out.save_figure(feature_test_figure(test), constants.MI6_PNG.format(feature=test.name))]
    written += [out.write_csv(name, header, rows) for name, header, rows in feature_test_tables(test)]
    written.append(out.write_json(constants.MI6_JSON.format(feature=test.name), test.to_dict()))
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
