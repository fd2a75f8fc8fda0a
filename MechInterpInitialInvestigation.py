"""Chapter 1 - Initial investigation: which SAE features light up on a piece of text?

Loads GPT-2 small (TransformerLens) and the pretrained SAE ``gpt2-small-res-jb`` /
``blocks.8.hook_resid_pre`` (SAELens), encodes a text into sparse features, prints the top-k features
by their maximum activation over the text's tokens (the BOS position excluded), marks those that are
not word features (◆ positional, decided on the baseline prompts; ● fires on BOS; ▲ dense), and saves
``Images/MI1.png`` (heatmap) with ``Images/MI1.csv`` (the numbers behind it).

Run:
    python MechInterpInitialInvestigation.py
    python MechInterpInitialInvestigation.py --text "Your own sentence." --top-k 10
    python MechInterpInitialInvestigation.py --demo      # synthetic toy world, no network needed
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
    run_cli,
    source_options,
)
from mechinterp.core.errors import UserError
from mechinterp.core.loading import Loaded
from mechinterp.core.records import RunRecord
from mechinterp.core.source import load, resolve_source
from mechinterp.investigate.flags import ReferenceFlags, apply_flags, reference_flags
from mechinterp.investigate.report import results_text, write_outputs
from mechinterp.investigate.text_features import (  # noqa: F401  (DEFAULT_TEXT: the tutorial's sentence, as ch1.DEFAULT_TEXT)
    DEFAULT_TEXT,
    TextFeatures,
    TextOptions,
    top_features,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Chapter 1: encode a text with GPT-2 small + its SAE and show the top features.",
    )
    add_options(parser, TextOptions, "text")
    add_common_args(parser, summary=False)
    args = parser.parse_args(argv)
    try:
        options_from(args, TextOptions)  # the options' own checks (an empty text ...), as usage errors
    except UserError as err:
        parser.error(str(err))
    return args


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    options = options_from(args, TextOptions)
    log = make_logger(args)
    with output_folder(args) as out:
        record = RunRecord(__file__, argv, vars(args))
        with record.timed("load"):
            source = resolve_source(source_options(args), log)
            loaded = load(source, log=log)
        with record.timed("encode"):
            result = top_features(loaded, options.text, options.top_k)
        with record.timed("reference"):  # which top features are positional (cached after the first run)
            reference = reference_flags(source, loaded, result, source.is_demo, log)
            apply_flags(result, reference)
        print(results_text(result, loaded.title, options.text, options.top_k, reference))
        written = write_outputs(out, result, loaded.title)
        record.wrote(*written)
        record.update(**run_facts(loaded, result, reference))
        written.append(record.write(out))
        print("\nSaved " + "\n      ".join(str(path) for path in written))
    return 0


def run_facts(loaded: Loaded, result: TextFeatures, reference: ReferenceFlags) -> dict:
    """What the run record says about the model, the SAE, the text, the filtering and the flags."""
    return {
        "model": loaded.model_label,
        "sae": loaded.sae.label,
        "hook": loaded.sae.hook_name,
        "d_sae": loaded.sae.d_sae,
        "n_tokens": len(result.tokens),
        "filtered": "BOS position excluded from all statistics",
        **({"truncated": result.truncation} if result.truncation else {}),
        "flags": {**reference.to_dict(), "by_feature": {str(r.feature): r.flags for r in result.rows if r.flags}},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
