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

import numpy as np
import torch

from mechinterp import constants
from mechinterp.cli import ArgumentParser, add_common_args, load, make_logger, out_dir, positive_int
from mechinterp.encoding import encode_tokens, tokenize, warn_truncated
from mechinterp.errors import run_cli
from mechinterp.io import write_csv
from mechinterp.loading import neuronpedia_url
from mechinterp.plotting import token_heatmap
from mechinterp.records import RunRecord
from mechinterp.tables import print_table, print_wrapped

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
    return args


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    log = make_logger(args)
    out = out_dir(args)
    record = RunRecord(__file__, argv, args)
    with record.timed("load"):
        loaded = load(args, log=log)
    with record.timed("encode"):
        tokenized = tokenize(loaded, [args.text])
        warn_truncated([args.text], tokenized, int(loaded.model.cfg.n_ctx))
        ids = tokenized.ids[0]
        acts = encode_tokens(loaded, torch.tensor([ids]))[0]
        # The BOS position is dropped here, once: every number below is over the text's own tokens.
        skip = tokenized.n_skip
        text_acts = acts[skip:].float().cpu().numpy()  # [n_tokens, d_sae]
    str_tokens = [loaded.model.tokenizer.decode([t]) for t in ids[skip:]]

    max_acts = text_acts.max(axis=0)
    n_fired = int((max_acts > 0).sum())
    k = min(args.top_k, n_fired)
    # Stable sort on -max gives a deterministic order for ties (lower feature id first).
    top = np.argsort(-max_acts, kind="stable")[:k]

    rows = []
    for rank, feature in enumerate(top, start=1):
        peak = int(text_acts[:, feature].argmax())
        rows.append(
            [
                rank,
                int(feature),
                float(max_acts[feature]),
                str_tokens[peak],
                peak + skip,  # position in the model's token sequence (BOS is position 0)
                neuronpedia_url(loaded.sae.neuronpedia_id, int(feature)),
            ]
        )

    print(f"\n{loaded.title}")
    print_wrapped(f"Text ({len(str_tokens)} tokens, BOS excluded from every number): {args.text!r}")
    print_wrapped(f"{n_fired} of {loaded.sae.d_sae} features fire on at least one token; top {k} by max activation:")
    print()
    print_table(
        ["rank", "feature", "max act", "peak token", "pos", "neuronpedia"],
        [[r[0], r[1], f"{r[2]:.3f}", repr(r[3]), r[4], r[5] or "-"] for r in rows],
    )
    if k < args.top_k:
        print(f"\n(only {k} features fire on this text, fewer than --top-k {args.top_k})")

    heat = text_acts[:, top].T  # [k, n_tokens]
    png = token_heatmap(
        heat,
        str_tokens,
        [int(f) for f in top],
        f"Top {k} SAE features by max activation\n{loaded.title}",
        out / constants.MI1_PNG,
    )
    csv_path = write_csv(
        out / constants.MI1_CSV,
        ["rank", "feature", "max_activation", "peak_token", "peak_position", "neuronpedia_url"],
        rows,
    )
    tokens_csv = write_csv(
        out / "MI1_token_activations.csv",
        ["feature", "position", "token", "activation"],
        [
            [int(f), pos + skip, str_tokens[pos], float(heat[row, pos])]
            for row, f in enumerate(top)
            for pos in range(len(str_tokens))
        ],
    )
    record.wrote(png, csv_path, tokens_csv)
    record.update(
        model=loaded.model_label,
        sae=loaded.sae.label,
        hook=loaded.sae.hook_name,
        d_sae=loaded.sae.d_sae,
        n_tokens=len(str_tokens),
        filtered="BOS position excluded from all statistics",
    )
    record_path = record.write(out)
    print(f"\nSaved {png}\n      {csv_path}\n      {tokens_csv}\n      {record_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
