"""Chapter 6 - Feature to weights: where in the model does an SAE feature come from?

For each feature, answers four questions and prints the answers:

1. Direct attribution, on data: the feature's mean pre-activation over the text tokens where it fires,
   split into TransformerLens' components of the residual stream at the SAE's hook (``embed``,
   ``pos_embed``, every head ``L{layer}H{head}``, every ``{layer}_mlp_out``, ``bias``) plus ``sae_bias``.
   The rows add up to the SAE's own pre-activation; the script checks it and prints the residual.
2. From which tokens: the top heads' contributions split by source position.
3. Weights alone: MLP neurons, heads (OV circuits) and vocabulary tokens whose weights write most onto
   the feature's encoder direction (the direct path only).
4. Causal check: each top component mean-ablated; measured drop vs the drop the attribution predicts.

The BOS position and padding are excluded from every number.

Writes to --out (default Images/): ``MI9_<id>.png`` (top components, heads as a layer x head heatmap,
predicted vs measured drops) with ``MI9_<id>.csv`` (one row per component), ``MI9_<id>_sources.csv``,
``MI9_<id>_offsets.csv``, ``MI9_<id>_weights.csv``, ``MI9_<id>_ablation.csv``, ``MI9_<id>.json``,
``feature_to_weights.csv`` (one summary row per feature) and the run record.

Run:
    python MechInterpFeatureToWeights.py --demo                      # toy world, no network needed
    python MechInterpFeatureToWeights.py --feature 1234 --feature 7
    python MechInterpFeatureToWeights.py --from-results Images/feature_stats.csv --top-n 1
    python MechInterpFeatureToWeights.py --feature 1234 --corpus my_documents.txt   # one document per line
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mechinterp.attribution.attribute import AttributionOptions, FeatureAttribution, attribute_feature
from mechinterp.attribution.report import (
    SUMMARY_HEADER,
    attribution_figure,
    attribution_tables,
    brief_attribution_lines,
    format_attribution_text,
    output_name,
    summary_row,
    summary_text,
)
from mechinterp.cli import (
    ArgumentParser,
    add_common_args,
    add_options,
    make_logger,
    options_from,
    output_folder,
    positive_int,
    print_report,
    prompt_folder,
    run_cli,
    source_options,
)
from mechinterp.core import constants
from mechinterp.core.encoding import default_batch_size, tokenize, warn_truncated
from mechinterp.core.features import FeatureSelection, choose_features
from mechinterp.core.io import OutputFolder
from mechinterp.core.progress import Log
from mechinterp.core.prompts import PromptOptions, collect_texts
from mechinterp.core.records import RunRecord
from mechinterp.core.source import demo_threads, load, resolve_source
from mechinterp.core.tables import print_wrapped, wrapped

# This chapter's wording of the shared flags (each flag itself is defined once, in its dataclass).
WHICH_HELPS = {
    "feature": "a feature to trace; repeat for several (with --demo and no ids: the planted features)",
    "from_results": "trace the top features of each group in a Chapter 2 feature_stats.csv",
}
PROMPTS_HELP = "folder of prompt files, one prompt per line (default: prompts/, or the demo's prompts with --demo)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Chapter 6: feature to weights - which heads, MLPs and tokens build a feature.",
    )
    add_options(parser, FeatureSelection, "which features", defaults={"top_n": 1}, helps=WHICH_HELPS)
    texts = add_options(parser, PromptOptions, "texts to attribute on", only=["prompts"],
                        helps={"prompts": PROMPTS_HELP})
    texts.add_argument("--corpus", type=Path, default=None, metavar="FILE",
                       help="a text file with one document per line, used as well")
    show = parser.add_argument_group("how much to show")
    show.add_argument("--top-components", type=positive_int, default=12,
                      help="components listed in the terminal and drawn as bars")
    # --batch-size joins the texts' section (its field says so); the rest of the options join this one.
    add_options(parser, AttributionOptions, "how much to show")
    add_common_args(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    log = make_logger(args)
    with output_folder(args) as out, demo_threads(args.demo):
        return attribute_and_write(args, argv, out, log)


def attribute_and_write(args: argparse.Namespace, argv: list[str] | None, out: OutputFolder, log: Log) -> int:
    """Load, attribute each feature, print its answers and write its files (inside the run's output folder)."""
    record = RunRecord(__file__, argv, vars(args))
    texts, _sources, described = collect_texts(prompt_folder(args), args.prompts is not None or args.demo,
                                               args.corpus)
    with record.timed("load"):
        loaded = load(resolve_source(source_options(args), log), log=log)
    which = options_from(args, FeatureSelection)
    choice = choose_features(which.feature, which.from_results, which.top_n, args.demo, loaded.sae.d_sae,
                             which.include_nonsignificant, loaded.provenance)
    # --batch-size's default depends on the device, known once the model is loaded.
    options = options_from(args, AttributionOptions, batch_size=args.batch_size or default_batch_size(loaded.device))
    with record.timed("tokenize"):
        tokenized = tokenize(loaded, texts)
        warn_truncated(texts, tokenized, int(loaded.model.cfg.n_ctx))

    head = ["", loaded.title, wrapped(f"Texts: {described}. Features: {choice.how}.")]
    if choice.note:
        head.append(wrapped(f"Note: {choice.note}."))
    written, results, full, brief = [], {}, list(head), list(head)
    for feature in choice.features:
        log(f"feature {feature}: attributing over {len(texts)} texts ...")
        with record.timed("attribution"):
            result = attribute_feature(loaded, tokenized, feature, options)
        results[feature] = result
        full += ["", *([f"(feature #{feature}: {choice.origin(feature)})"] if choice.origin(feature) else []),
                 format_attribution_text(result, loaded.title, args.top_components)]
        brief += brief_attribution_lines(result, choice.origin(feature))
        with record.timed("outputs"):
            written += write_outputs(result, out, loaded.title, int(loaded.model.cfg.n_heads), args.top_components)

    summary = [summary_row(r) for r in results.values()]
    summary_csv = out.write_csv(constants.FEATURE_TO_WEIGHTS_CSV, SUMMARY_HEADER, summary)
    written.append(print_report(out, __file__, args, [*full, summary_text(summary)], [*brief, summary_text(summary)]))
    record.wrote(*written, summary_csv)
    record.update(
        model=loaded.model_label, sae=loaded.sae.label, hook=loaded.sae.hook_name, features=choice.features,
        feature_choice=choice.how, texts=described, n_texts=len(texts), options=vars(options),
        checks={f: r.sum_check() for f, r in results.items() if r.direct is not None},
        filtered=next(iter(results.values())).filtered if results else "",
        provenance=loaded.provenance.to_dict(),
    )
    record_path = record.write(out)
    print()
    print_wrapped(
        f"Saved {len(written) + 2} files to {out.path}: MI9_<id>.png, MI9_<id>.csv and the other MI9_<id> "
        f"tables, {summary_csv.name}, {record_path.name}"
    )
    return 0


def write_outputs(result: FeatureAttribution, out: OutputFolder, title: str, n_heads: int, n_top: int) -> list[Path]:
    """Every file of one feature (figure, tables, JSON); returns the paths written."""
    f = result.feature
    written = []
    for template, header, rows in attribution_tables(result):
        written.append(out.write_csv(output_name(template, f), header, rows))
        if template == constants.MI9_CSV:
            fig = attribution_figure(result, n_heads, title, n_top)
            written.append(out.save_figure(fig, output_name(constants.MI9_PNG, f)))
    written.append(out.write_json(output_name(constants.MI9_JSON, f), result.to_dict() | {"title": title}))
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
