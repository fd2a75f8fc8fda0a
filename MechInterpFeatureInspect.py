"""Chapter 3 - Understand a feature: where it fires, what it writes, how often it fires.

For each feature, prints a feature card: its top activating prompts with every token highlighted by
activation (colour on a terminal, ``[token:act]`` marks otherwise; the peak token marked), the 15
tokens its decoder direction promotes and suppresses most (``W_dec[f] @ W_U``), its density from the
SAE's sparsity file beside its firing rate on your prompts, and its Neuronpedia URL. The BOS position
and padding are excluded from every number.

Writes to --out (default Images/): ``MI5_<id>.png`` (activation histogram + logit effects) with
``MI5_<id>.csv`` and ``MI5_<id>_hist.csv`` (the numbers behind it), ``feature_<id>.html`` (a
self-contained card to open in a browser), ``feature_<id>.json`` (everything on the card),
``feature_cards.csv`` (one summary row per feature) and the run record.

Run:
    python MechInterpFeatureInspect.py --feature 501 --demo          # toy world, no network needed
    python MechInterpFeatureInspect.py --demo                        # the demo's planted features
    python MechInterpFeatureInspect.py --feature 1234 --feature 7 --prompts prompts/
    python MechInterpFeatureInspect.py --from-results Images/feature_stats.csv --top-n 3
    python MechInterpFeatureInspect.py --feature 1234 --corpus my_documents.txt   # one document per line
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mechinterp import constants
from mechinterp.card_render import ansi_allowed, format_card_text, render_html, render_index
from mechinterp.cards import FeatureCard, build_card
from mechinterp.causal_plots import feature_figure, png_bytes
from mechinterp.cli import (
    ArgumentParser,
    add_common_args,
    make_logger,
    output_folder,
    positive_int,
    prompt_folder,
    run_cli,
    source_options,
)
from mechinterp.encoding import default_batch_size, tokenize, warn_truncated
from mechinterp.feature_data import (
    FeatureActivations,
    choose_features,
    collect_feature_activations,
    filter_note,
    histogram_counts,
)
from mechinterp.io import OutputFolder
from mechinterp.prompts import collect_texts
from mechinterp.provenance import Provenance
from mechinterp.records import RunRecord
from mechinterp.source import demo_threads, load, resolve_source
from mechinterp.tables import plural, print_table, print_wrapped

CORPUS_SOURCE = "corpus"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Chapter 3: feature cards - where a feature fires, what it writes, how often it fires.",
    )
    which = parser.add_argument_group("which features")
    which.add_argument("--feature", type=int, action="append", default=[], metavar="ID",
                       help="a feature to inspect; repeat for several (with --demo and no ids: the planted features)")
    which.add_argument("--from-results", type=Path, default=None, metavar="CSV",
                       help="inspect the top features of each group in a Chapter 2 feature_stats.csv")
    which.add_argument("--top-n", type=positive_int, default=3,
                       help="with --from-results: how many features per group (rank 1 = strongest)")
    which.add_argument("--include-nonsignificant", action="store_true",
                       help="with --from-results: also take features that are not significant, not replicated or "
                            "not judged 'concept' (by default they are skipped, and the output says which)")
    texts = parser.add_argument_group("texts to look for activations in")
    texts.add_argument("--prompts", type=Path, default=None, metavar="DIR",
                       help="folder of prompt files, one prompt per line (default: prompts/, or the demo's "
                            "prompts with --demo)")
    texts.add_argument("--corpus", type=Path, default=None, metavar="FILE",
                       help="a text file with one document per line, searched as well")
    texts.add_argument("--batch-size", type=positive_int, default=None,
                       help="texts per forward pass (default: 16 on CPU, 64 on GPU)")
    show = parser.add_argument_group("what to show")
    show.add_argument("--top-prompts", type=positive_int, default=10, help="top activating texts per card")
    show.add_argument("--n-tokens", type=positive_int, default=15,
                      help="how many promoted and suppressed tokens of W_dec[f] @ W_U to list")
    show.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                      help="colour the terminal highlights: auto = only when stdout is a terminal")
    add_common_args(parser)
    return parser.parse_args(argv)


def gather_texts(args: argparse.Namespace) -> tuple[list[str], list[str], str]:
    """All prompts (labelled by group) and corpus documents (labelled "corpus"), and where they came from."""
    # Only a folder the user (or --demo) chose must exist: without one, --corpus alone is fine.
    return collect_texts(prompt_folder(args), args.prompts is not None or args.demo, args.corpus)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    log = make_logger(args)
    with output_folder(args) as out:
        record = RunRecord(__file__, argv, vars(args))
        texts, sources, described = gather_texts(args)
        with record.timed("load"):
            loaded = load(resolve_source(source_options(args), log), log=log)
        with demo_threads(loaded.is_demo):
            choice = choose_features(args.feature, args.from_results, args.top_n, args.demo, loaded.sae.d_sae,
                                     args.include_nonsignificant, loaded.provenance)
            features, how = choice.features, choice.how
            log(f"encoding {plural(len(texts), 'text')} for {plural(len(features), 'feature')} ...")
            with record.timed("encode"):
                tokenized = tokenize(loaded, texts)
                warn_truncated(texts, tokenized, int(loaded.model.cfg.n_ctx))
                fa = collect_feature_activations(
                    loaded, texts, sources, features, args.batch_size or default_batch_size(loaded.device), tokenized
                )
            color = ansi_allowed(sys.stdout, args.color)

            print(f"\n{loaded.title}")
            print_wrapped(f"Texts: {described}. Features: {how}.")
            if choice.note:
                print_wrapped(f"Note: {choice.note}.")
            summary, written, cards = [], [], []
            for feature in features:
                with record.timed("cards"):
                    card = build_card(loaded, fa, feature, args.top_prompts, args.n_tokens,
                                      choice.origin(feature) or how)
                    print()
                    print(format_card_text(card, loaded.title, color))
                    written += write_card(out, card, fa, loaded.title, loaded.is_demo, loaded.provenance)
                summary.append(summary_row(card))
                cards.append(card)

        summary_csv = out.write_csv(
            constants.CARDS_CSV,
            ["feature", "density_sparsity_file", "firing_rate_prompts", "typical_max_activation", "top_peak_token",
             "top_promoted_token", "neuronpedia_url"],
            summary,
        )
        print("\nSummary (firing rate and typical max over your texts; BOS and padding excluded):\n")
        print_table(["feature", "density", "firing rate", "typ. max", "top peak token", "top promoted", "neuronpedia"],
                    summary)
        index = write_index(out, cards, loaded.title)
        record.wrote(*written, summary_csv, index)
        record.update(
            model=loaded.model_label, sae=loaded.sae.label, hook=loaded.sae.hook_name, d_sae=loaded.sae.d_sae,
            features=features, feature_choice=how, texts=described, n_texts=len(texts),
            n_tokens=int(sum(len(a) for a in fa.acts)), filtered=filter_note(fa), skipped_by_gate=choice.note,
            provenance=loaded.provenance.to_dict(),
        )
        record_path = record.write(out)
        pages = [p.name for p in written if p.suffix == ".html"]
        print()
        print_wrapped(f"Saved {len(written) + 3} files to {out.path}: {index.name} (open in a browser; it links "
                      f"{', '.join(pages)}), MI5_<id>.png with the numbers behind it, card JSON, {summary_csv.name}, "
                      f"{record_path.name}")
    return 0


def write_card(out: OutputFolder, card: FeatureCard, fa: FeatureActivations, title: str, is_demo: bool,
               provenance: Provenance) -> list[Path]:
    """MI5_<id>.png with the numbers behind it, and the card as JSON and as a self-contained HTML page."""
    feature = card.feature
    edges, counts = histogram_counts(fa, feature)
    fired, total = card.fired_total
    fig = feature_figure(
        feature, edges, counts, total - fired, total,
        [(x.token, x.value) for x in card.promoted], [(x.token, x.value) for x in card.suppressed],
        title,
    )
    png = out.save_figure(fig, constants.MI5_PNG.format(feature=feature))
    logits_csv = out.write_csv(
        constants.MI5_CSV.format(feature=feature),
        ["direction", "rank", "token_id", "token", "logit_effect"],
        [["promoted", r, x.token_id, x.token, x.value] for r, x in enumerate(card.promoted, 1)]
        + [["suppressed", r, x.token_id, x.token, x.value] for r, x in enumerate(card.suppressed, 1)],
    )
    hist_csv = out.write_csv(
        constants.MI5_HIST_CSV.format(feature=feature),
        ["bin_low", "bin_high", *counts.keys()],
        [[float(edges[b]), float(edges[b + 1]), *(int(c[b]) for c in counts.values())]
         for b in range(len(edges) - 1)],
    )
    data = card.to_dict() | {"title": title, "provenance": provenance.to_dict()}
    card_json = out.write_json(constants.CARD_JSON.format(feature=feature), data)
    page = out.write_text(constants.CARD_HTML.format(feature=feature),
                          render_html(card, title, is_demo, png_bytes(fig)))
    return [png, logits_csv, hist_csv, card_json, page]


def write_index(out: OutputFolder, cards: list[FeatureCard], title: str) -> Path:
    """index.html linking every card in the folder: this run's, and earlier runs' that are still there."""
    entries: dict[int, dict] = {}
    for path in sorted(out.path.glob("feature_*.json")):  # earlier runs (this run's are not renamed in yet)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries[int(data["feature"])] = data
        except (OSError, ValueError, KeyError):
            continue  # not a card of ours
    for card in cards:
        entries[card.feature] = card.to_dict() | {"title": title}
    rows = [
        {"feature": f, "file": constants.CARD_HTML.format(feature=f), "origin": d.get("origin", ""),
         "firing_rate": d.get("firing_rate_on_prompts"), "typical_max": d.get("typical_max_activation"),
         "title": d.get("title", "")}
        for f, d in entries.items()
    ]
    return out.write_text(constants.CARDS_INDEX_HTML, render_index(rows, title))


def summary_row(card: FeatureCard) -> list:
    """One row of the summary table and feature_cards.csv."""
    top = card.examples[0] if card.examples else None
    return [
        card.feature,
        f"{card.density:.3g}" if card.density is not None else "-",
        f"{card.firing_rate:.3g}",
        f"{card.typical_max:.3f}",
        repr(top.tokens[top.peak]) if top else "-",
        repr(card.promoted[0].token),
        card.url or "-",
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
