"""Chapter 1 - Initial investigation: which SAE features light up on a piece of text?

Loads GPT-2 small (TransformerLens) and the pretrained SAE ``gpt2-small-res-jb`` /
``blocks.8.hook_resid_pre`` (SAELens), encodes a text into sparse features, prints the top-k features
by their maximum activation over the text's tokens (the BOS position excluded), and saves
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
    make_logger,
    output_folder,
    positive_int,
    run_cli,
    source_options,
)
from mechinterp.core import constants
from mechinterp.core.records import RunRecord
from mechinterp.core.source import load, resolve_source
from mechinterp.core.tables import plural, print_table, print_wrapped
from mechinterp.investigate.report import token_heatmap
from mechinterp.investigate.text_features import DENSE_THRESHOLD, top_features

DEFAULT_TEXT = "I was thrilled when the package finally arrived, but furious that the box was crushed."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Chapter 1: encode a text with GPT-2 small + its SAE and show the top features.",
    )
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the text to encode (default: a sentence with a happy and an angry word)")
    parser.add_argument("--top-k", type=positive_int, default=20, help="how many features to show (default: %(default)s)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if not args.text.strip():
        parser.error("--text is empty; give some words to encode")
    try:
        args.text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 reach Python as lone surrogates
        parser.error("--text is not valid UTF-8; save or type the text as UTF-8")
    return args


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    log = make_logger(args)
    with output_folder(args) as out:
        record = RunRecord(__file__, argv, vars(args))
        with record.timed("load"):
            loaded = load(resolve_source(source_options(args), log), log=log)
        with record.timed("encode"):
            result = top_features(loaded, args.text, args.top_k)
        rows, k = [r.row() for r in result.rows], len(result.rows)
        n_dense = sum(r.dense for r in result.rows)

        print(f"\n{loaded.title}")
        print_wrapped(f"Text ({len(result.tokens)} tokens, BOS excluded from every number): {args.text!r}")
        if result.truncation:
            print_wrapped(f"Note: {result.truncation}.")
        print_wrapped(f"{result.n_fired} of {result.d_sae} features fire on at least one token; top {k} by max activation:")
        print()
        print_table(
            ["rank", "feature", "max act", "peak token", "pos", "density", "neuronpedia"],
            [[r.rank, f"{r.feature}{' ▲' if r.dense else ''}", f"{r.max_activation:.3f}", repr(r.peak_token),
              r.peak_position, density_text(r.density), r.neuronpedia_url or "-"]
             for r in result.rows],
        )
        if result.has_density:
            print_wrapped(f"density = share of the SAE's training tokens on which the feature fires (its sparsity "
                          f"file). ▲ = dense (over {100 * DENSE_THRESHOLD:.0f}%): it fires on almost any text, so "
                          f"its rank and peak token say little about this one ({n_dense} of {k} here).")
        else:
            print_wrapped("density: this SAE ships no sparsity file, so dense features cannot be marked.")
        if k < args.top_k:
            print(f"\n(only {plural(k, 'feature')} {'fires' if k == 1 else 'fire'} on this text, fewer than --top-k {args.top_k})")

        fig = token_heatmap(result.heat, result.tokens, result.features,
                            f"Top {k} SAE features by max activation\n{loaded.title}")
        png = out.save_figure(fig, constants.MI1_PNG)
        csv_path = out.write_csv(
            constants.MI1_CSV,
            ["rank", "feature", "max_activation", "peak_token", "peak_position", "neuronpedia_url", "density", "dense"],
            rows,
        )
        tokens_csv = out.write_csv(
            constants.MI1_TOKENS_CSV,
            ["feature", "position", "token", "activation"],
            [
                [f, pos + result.n_skip, result.tokens[pos], float(result.heat[row, pos])]
                for row, f in enumerate(result.features)
                for pos in range(len(result.tokens))
            ],
        )
        record.wrote(png, csv_path, tokens_csv)
        record.update(
            model=loaded.model_label,
            sae=loaded.sae.label,
            hook=loaded.sae.hook_name,
            d_sae=loaded.sae.d_sae,
            n_tokens=len(result.tokens),
            filtered="BOS position excluded from all statistics",
            **({"truncated": result.truncation} if result.truncation else {}),
        )
        record_path = record.write(out)
        print(f"\nSaved {png}\n      {csv_path}\n      {tokens_csv}\n      {record_path}")
    return 0


def density_text(density: float | None) -> str:
    """A density as a percentage; sparsity files floor never-seen features at about 1e-10, shown as "<0.0001%"."""
    if density is None:
        return "-"
    return "<0.0001%" if density < 1e-6 else f"{100 * density:.3g}%"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
