"""Chapter 2 - Attach meanings to features by contrasting prompt sets.

Which SAE features fire for happy statements and not for neutral ones? Every group of prompts in
``prompts/`` (one ``<group>.txt`` per group) is compared with the baseline group, feature by feature:
Mann-Whitney U test (Wilcoxon signed-rank with ``--paired``), AUROC, effect size, Benjamini-Hochberg
q-values over all features, and a check that each finding replicates on held-out prompts. Features
that fire in nearly every prompt of every group ("always on") are listed separately and not ranked.

A difference is not yet a meaning: prompt sets also differ in length, stray words and punctuation.
So the script first checks how each group's prompts differ from the baseline's, then asks where each
significant, replicated feature's difference comes from (its peak tokens and positions, re-tests
within equal lengths, tokens and positions, the token put into baseline prompts) and gives it one
verdict: concept, lexical, positional, length or context.

Run:
    python MechInterpFeatureMeaning.py                      # prompts/happy.txt, angry.txt vs baseline.txt
    python MechInterpFeatureMeaning.py --paired             # line i of each file pairs with line i of baseline
    python MechInterpFeatureMeaning.py --groups happy --agg mean
    python MechInterpFeatureMeaning.py --demo               # synthetic toy world with planted features

Prints the design checks, then per group the top features with q, AUROC, firing rates and verdict,
and writes to Images/: feature_stats.csv, feature_evidence.csv, design_checks.csv (+design_pairs.csv
with --paired), always_on_features.csv, MI2.png (+MI2.csv), MI3.png (+MI3.csv), MI4_<group>.png, and
MechInterpFeatureMeaning_run.json.
"""

from __future__ import annotations

import argparse
import sys

from mechinterp.cli import (
    ArgumentParser,
    add_common_args,
    add_options,
    make_logger,
    options_from,
    output_folder,
    print_report,
    run_cli,
    source_options,
)
from mechinterp.core.errors import UserError
from mechinterp.core.pipeline import EncodeOptions
from mechinterp.core.prompts import PromptOptions
from mechinterp.core.records import RunRecord
from mechinterp.core.source import resolve_source
from mechinterp.core.tables import print_wrapped
from mechinterp.meaning import figures, report
from mechinterp.meaning.options import MeaningOptions
from mechinterp.meaning.run import contrast_prompts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Chapter 2: find the SAE features that distinguish each prompt group from the baseline.",
    )
    add_options(parser, PromptOptions, "prompts")
    add_options(parser, MeaningOptions, "statistics")
    add_options(parser, EncodeOptions, "speed")
    add_common_args(parser)
    args = parser.parse_args(argv)
    try:  # the options check themselves; a contradiction is a usage error, shown with the usage
        options_from(args, MeaningOptions)
    except UserError as err:
        parser.error(str(err))
    return args


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    log = make_logger(args)
    with output_folder(args) as out:
        record = RunRecord(__file__, argv, vars(args))
        # The method: options -> prompts -> encode -> contrast -> verdicts (contrast_prompts does it all) ...
        source = resolve_source(source_options(args), log)
        options = options_from(args, MeaningOptions)
        result = contrast_prompts(source, options_from(args, PromptOptions), options, log,
                                  options_from(args, EncodeOptions, quiet=args.quiet))
        record.add_seconds(result.seconds)
        # ... then the report: tables, the terminal summary, figures, and the run record.
        written = report.write_tables(out, result, options)
        written.append(print_report(out, __file__, args, report.summary_lines(result, options),
                                    report.brief_lines(result, options)))
        with record.timed("figures"):
            written += figures.write_figures(out, result, options)
        record.wrote(*written)
        record.update(**report.record_facts(result, options))
        path = record.write(out)
        print(f"\nWrote {len(written) + 1} files to {out.path}/")
        print_wrapped(", ".join(p.name for p in [*written, path]))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
