"""Chapter 3 - Understand a feature: where it fires, what it writes, how often it fires.

For each feature, prints a feature card: its top activating prompts with every token highlighted by
activation (colour on a terminal, ``[token:act]`` marks otherwise; the peak token marked), the 15
tokens its decoder direction promotes and suppresses most (``W_dec[f] @ W_U``), its density from the
SAE's sparsity file beside its firing rate on your prompts, and its Neuronpedia URL. The BOS position
and padding are excluded from every number.

With a corpus (``--corpus FILE``, one document per line, or ``--dataset NAME``, a Hugging Face dataset
streamed from the Hub), the corpus is mined in one streaming pass (``mechinterp.cards.mining``: windows of
the SAE's training context, memory flat in the corpus size, resumable): each card then also shows the
feature's density over the corpus, its top corpus windows, windows at lower activation levels and the
histogram of its activations there. ``--max-tokens`` (default 100,000) bounds the pass; its state is
kept in the project cache (``.cache/mining/``), so the same command again says "already mined" and
reuses it, and an interrupted pass continues where it stopped (``--fresh`` starts over).

Writes to --out (default Images/): ``MI5_<id>.png`` (activation histogram + logit effects) with
``MI5_<id>.csv`` and ``MI5_<id>_hist.csv`` (the numbers behind it), ``feature_<id>.html`` (a
self-contained card to open in a browser), ``feature_<id>.json`` (everything on the card),
``feature_cards.csv`` (one summary row per feature), ``index.html`` and the run record. With a corpus,
also ``MI5_<id>_corpus.png`` with ``MI5_<id>_corpus_hist.csv``; with ``--all-features``,
``corpus_features.csv`` (every feature's density and top example) and ``corpus_histograms.csv``.

Run:
    python MechInterpFeatureInspect.py --feature 501 --demo          # toy world, no network needed
    python MechInterpFeatureInspect.py --demo                        # the demo's planted features
    python MechInterpFeatureInspect.py --feature 1234 --feature 7 --prompts prompts/
    python MechInterpFeatureInspect.py --from-results Images/feature_stats.csv --top-n 3
    python MechInterpFeatureInspect.py --feature 1234 --corpus my_documents.txt   # one document per line
    python MechInterpFeatureInspect.py --feature 1234 --dataset Skylion007/openwebtext --max-tokens 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mechinterp.cards.card import FeatureCard, build_card, corpus_evidence
from mechinterp.cards.figures import feature_figure
from mechinterp.cards.mining import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_K,
    Corpus,
    HFDatasetCorpus,
    MiningOptions,
    MiningResult,
    TextFileCorpus,
    finished_pass_exists,
    mine,
    progress_updater,
    resolve_window,
)
from mechinterp.cards.render import ansi_allowed, corpus_figure, format_card_text, render_html, render_index
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
from mechinterp.core import constants
from mechinterp.core.encoding import default_batch_size, tokenize, warn_truncated
from mechinterp.core.errors import UserError
from mechinterp.core.features import (
    FeatureActivations,
    choose_features,
    collect_feature_activations,
    filter_note,
    histogram_counts,
)
from mechinterp.core.figures import png_bytes
from mechinterp.core.io import OutputFolder
from mechinterp.core.loading import Loaded
from mechinterp.core.progress import progress_bar
from mechinterp.core.prompts import collect_texts
from mechinterp.core.provenance import Provenance
from mechinterp.core.records import RunRecord
from mechinterp.core.source import demo_threads, load, resolve_source
from mechinterp.core.tables import plural, print_table, print_wrapped

CORPUS_SOURCE = "corpus"
# Corpus tokens mined unless --max-tokens says otherwise: GPT-2 small encodes ~1,000 tokens/s on a
# 2-core CPU, so about two minutes there (seconds on a GPU), and enough for a feature that fires on
# 0.1% of tokens to show ~100 firing tokens.
DEFAULT_MAX_TOKENS = 100_000
# --max-tokens all: the whole corpus (argparse's own None means "not given": the default applies).
ALL_TOKENS = 0
DEFAULT_SPLIT, DEFAULT_TEXT_COLUMN = "train", "text"


def token_count(text: str) -> int:
    """argparse type for --max-tokens: a whole number (100000, 100_000, 100k, 1M), or "all" (ALL_TOKENS)."""
    word = text.strip().lower().replace(",", "").replace("_", "")
    if word == "all":
        return ALL_TOKENS
    scale = {"k": 1_000, "m": 1_000_000}.get(word[-1:], 1)
    try:
        value = int(float(word[:-1]) * scale) if scale > 1 else int(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens (e.g. 100000, 100k, 1M) or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 token, got {text}")
    return value


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
    texts = parser.add_argument_group("prompts to look for activations in")
    texts.add_argument("--prompts", type=Path, default=None, metavar="DIR",
                       help="folder of prompt files, one prompt per line (default: prompts/, or the demo's "
                            "prompts with --demo)")
    texts.add_argument("--batch-size", type=positive_int, default=None,
                       help="texts per forward pass (default: 16 on CPU, 64 on GPU; for corpus mining, windows "
                            f"per pass, default {DEFAULT_BATCH_SIZE})")
    corpus = parser.add_argument_group(
        "corpus mining (one streaming pass; memory does not grow with the corpus; resumable)")
    where = corpus.add_mutually_exclusive_group()
    where.add_argument("--corpus", type=Path, default=None, metavar="FILE",
                       help="a UTF-8 text file, one document per line ('#' lines skipped): each card adds the "
                            "feature's density, top windows, lower-level windows and histogram over it")
    where.add_argument("--dataset", default=None, metavar="NAME",
                       help="a Hugging Face dataset streamed from the Hub instead (e.g. Skylion007/openwebtext; "
                            "needs the network), mined like --corpus")
    corpus.add_argument("--dataset-split", default=None, metavar="SPLIT",
                        help=f"with --dataset: the split to stream (default: {DEFAULT_SPLIT})")
    corpus.add_argument("--text-column", default=None, metavar="NAME",
                        help=f"with --dataset: the column holding each record's text (default: {DEFAULT_TEXT_COLUMN})")
    corpus.add_argument("--dataset-config", default=None, metavar="NAME",
                        help="with --dataset: its configuration, for datasets that have several "
                             "(e.g. wikitext-103-raw-v1 for Salesforce/wikitext)")
    corpus.add_argument("--max-tokens", type=token_count, default=None, metavar="N",
                        help=f"corpus tokens to mine, BOS not counted: a number (100000, 100k, 1M) or 'all' "
                             f"(default: {DEFAULT_MAX_TOKENS:,}, about two minutes of GPT-2 small on a CPU)")
    corpus.add_argument("--all-features", action="store_true",
                        help="track every feature of the SAE in the pass and write corpus_features.csv (each "
                             "feature's density and top example) and corpus_histograms.csv; cards are still made "
                             "for the features chosen above, if any")
    corpus.add_argument("--fresh", action="store_true",
                        help="ignore the saved pass (in the project cache, .cache/mining/) and mine again")
    show = parser.add_argument_group("what to show")
    show.add_argument("--top-prompts", type=positive_int, default=10,
                      help="top activating texts (and corpus windows) per card")
    show.add_argument("--n-tokens", type=positive_int, default=15,
                      help="how many promoted and suppressed tokens of W_dec[f] @ W_U to list")
    show.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                      help="colour the terminal highlights: auto = only when stdout is a terminal")
    add_common_args(parser)
    return parser.parse_args(argv)


def corpus_of(args: argparse.Namespace) -> Corpus | None:
    """The corpus to mine (--corpus or --dataset), or None; refuses corpus options without a corpus."""
    if args.corpus is None and args.dataset is None:
        given = [flag for flag, value in (("--all-features", args.all_features), ("--fresh", args.fresh),
                                          ("--max-tokens", args.max_tokens is not None),
                                          ("--dataset-split", args.dataset_split), ("--text-column", args.text_column),
                                          ("--dataset-config", args.dataset_config)) if value]
        if given:
            raise UserError(f"{given[0]} is about corpus mining: add --corpus FILE (one document per line) "
                            "or --dataset NAME")
        return None
    if args.corpus is not None:
        dataset_only = [f for f, v in (("--dataset-split", args.dataset_split), ("--text-column", args.text_column),
                                       ("--dataset-config", args.dataset_config)) if v]
        if dataset_only:
            raise UserError(f"{dataset_only[0]} applies to --dataset, not to --corpus FILE")
        return TextFileCorpus(args.corpus)
    return HFDatasetCorpus(args.dataset, split=args.dataset_split or DEFAULT_SPLIT,
                           column=args.text_column or DEFAULT_TEXT_COLUMN, config=args.dataset_config)


def gather_texts(args: argparse.Namespace, mining: bool) -> tuple[list[str], list[str], str]:
    """All prompts, labelled by group, and where they came from.

    Only a folder the user (or --demo) chose must exist: with a corpus to mine, a missing default
    prompts/ folder just means no prompts.
    """
    folder, chosen = prompt_folder(args), args.prompts is not None or args.demo
    if mining and not chosen and not folder.is_dir():
        return [], [], "no prompts"
    return collect_texts(folder, chosen, None)


def mining_options(args: argparse.Namespace, features: list[int]) -> MiningOptions:
    """The pass's options: the features on cards (or every feature), checkpoints in the project cache."""
    return MiningOptions(
        features=tuple(sorted(set(features))), all_features=args.all_features,
        # At least the library's 10, so that --top-prompts 5 and the default share one saved pass.
        k=max(args.top_prompts, DEFAULT_K),
        max_tokens={None: DEFAULT_MAX_TOKENS, ALL_TOKENS: None}.get(args.max_tokens, args.max_tokens),
        batch_size=args.batch_size or DEFAULT_BATCH_SIZE,
        checkpoint_dir=constants.mining_cache_dir(),
        resume=not args.fresh,
    )


class MiningProgress:
    """Progress of the pass in tokens: a tqdm bar (rate, time left) on a terminal; elsewhere (a log file,
    a pipe) one line per tenth; nothing with --quiet."""

    def __init__(self, quiet: bool, log):
        self.log, self.quiet = log, quiet
        self.bar = progress_bar(None, "mining", quiet, unit="tok", unit_scale=True)
        self.update = progress_updater(self.bar)
        if self.bar.disable:  # not a terminal (or --quiet): the lines below instead
            self.bar = None
        self.start = time.perf_counter()
        self.first: int | None = None
        self.next_tenth = 1

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is not None:
            self.update(done, total)
            return
        if self.first is None:
            self.first, self.start = done, time.perf_counter()
        if self.quiet or not total or done < self.next_tenth * total / 10:
            return
        while self.next_tenth <= 10 and done >= self.next_tenth * total / 10:
            self.next_tenth += 1
        rate = (done - self.first) / max(time.perf_counter() - self.start, 1e-9)
        left = f", about {duration((total - done) / rate)} left" if rate > 0 and done < total else ""
        self.log(f"mining: {done:,} of {total:,} tokens ({100 * done / total:.0f}%), {rate:,.0f} tokens/s{left}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def duration(seconds: float) -> str:
    """E.g. "40 s", "3.5 min", "1.2 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def mine_corpus(loaded: Loaded, corpus: Corpus, options: MiningOptions, identity: dict[str, str], quiet: bool,
                log) -> MiningResult:
    """Run (or reuse, or continue) the pass, with progress and a closing line."""
    _, why = resolve_window(loaded, options.window)
    what = "every feature" if options.all_features else plural(len(options.features), "feature")
    limit = f"up to {options.max_tokens:,} tokens" if options.max_tokens else "all of it"
    log(f"mining {corpus.describe()} ({limit}) for {what}, in windows of {why}; saved passes: {options.checkpoint_dir}")
    progress = MiningProgress(quiet, log)
    start = time.perf_counter()
    try:
        result = mine(loaded, corpus, options, identity, progress, log)
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    if not result.reused:
        new = result.n_tokens - result.resumed_at
        log(f"mined {result.n_tokens:,} tokens ({result.n_windows:,} windows, {result.n_documents:,} documents) "
            f"in {seconds:.1f}s, {new / max(seconds, 1e-9):,.0f} tokens/s; saved to {result.checkpoint}")
    return result


def corpus_scope(result: MiningResult, max_tokens: int | None) -> str:
    """How much of the corpus the pass covers, in words."""
    if max_tokens is not None and result.n_tokens >= max_tokens:
        return f"its first {result.n_tokens:,} tokens (--max-tokens)"
    return f"all of it, {result.n_tokens:,} tokens"


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    log = make_logger(args)
    corpus = corpus_of(args)
    if isinstance(corpus, HFDatasetCorpus) and not finished_pass_exists(constants.mining_cache_dir(), corpus):
        # Fail before loading anything: offline, a dataset that was never mined here cannot be. (With a
        # finished pass saved, an offline rerun reads it back; a pass that must stream fails the same way.)
        corpus.ensure_reachable()
    with output_folder(args) as out:
        record = RunRecord(__file__, argv, vars(args))
        texts, sources, described = gather_texts(args, corpus is not None)
        source = resolve_source(source_options(args), log)
        with record.timed("load"):
            loaded = load(source, log=log)
        with demo_threads(loaded.is_demo):
            features, how, note, origin = features_for_cards(args, loaded)
            fa = encode_prompts(loaded, texts, sources, features, args, record, log)
            mined, options = None, None
            if corpus is not None:
                options = mining_options(args, features)
                with record.timed("mine"):
                    mined = mine_corpus(loaded, corpus, options, source.cache_identity(), args.quiet, log)
                if mined.n_tokens == 0:
                    raise UserError(f"{corpus.describe()} holds no text to mine (blank lines and lines starting "
                                    "with '#' are skipped)")
            color = ansi_allowed(sys.stdout, args.color)

            print(f"\n{loaded.title}")
            print_wrapped(f"Texts: {described}. Features: {how}.")
            if mined is not None:
                print_wrapped(f"Corpus: {mined.corpus}, {corpus_scope(mined, options.max_tokens)}, in "
                              f"{mined.n_windows:,} windows of {mined.window} tokens"
                              + (" (already mined: read back from the saved pass)." if mined.reused else "."))
            if note:
                print_wrapped(f"Note: {note}.")
            summary, written, cards = [], [], []
            for feature in features:
                with record.timed("cards"):
                    card = build_card(loaded, fa, feature, args.top_prompts, args.n_tokens, origin[feature])
                    if mined is not None:
                        card.corpus = corpus_evidence(loaded, mined, feature, args.top_prompts,
                                                      corpus_scope(mined, options.max_tokens), options.batch_size)
                    print()
                    print(format_card_text(card, loaded.title, color))
                    written += write_card(out, card, fa, loaded.title, loaded.is_demo, loaded.provenance)
                summary.append(summary_row(card))
                cards.append(card)
            if mined is not None and args.all_features:
                with record.timed("cards"):
                    written += write_all_features(out, mined, loaded)
                print()
                print_wrapped(every_feature_line(mined))

        if cards:
            with_corpus = mined is not None
            header = ["feature", "density_sparsity_file", "firing_rate_prompts", "typical_max_activation",
                      "top_peak_token", "top_promoted_token", "neuronpedia_url"]
            summary_csv = out.write_csv(constants.CARDS_CSV, header + (["density_corpus"] if with_corpus else []),
                                        summary)
            print("\nSummary (firing rate and typical max over your texts; BOS and padding excluded):\n")
            print_table(["feature", "density", "firing rate", "typ. max", "top peak token", "top promoted",
                         "neuronpedia"] + (["corpus density"] if with_corpus else []), summary)
            index = write_index(out, cards, loaded.title)
            written += [summary_csv, index]
        record.wrote(*written)
        record.update(
            model=loaded.model_label, sae=loaded.sae.label, hook=loaded.sae.hook_name, d_sae=loaded.sae.d_sae,
            features=features, feature_choice=how, texts=described, n_texts=len(texts),
            n_tokens=int(sum(len(a) for a in fa.acts)), filtered=filter_note(fa), skipped_by_gate=note,
            provenance=loaded.provenance.to_dict(),
        )
        if mined is not None:
            record.update(corpus=mining_record(mined, options))
        record_path = record.write(out)
        print()
        print_wrapped(saved_line(out, written, record_path))
    return 0


def features_for_cards(args: argparse.Namespace, loaded: Loaded) -> tuple[list[int], str, str, dict[int, str]]:
    """The features to make cards for, how they were chosen, what the gate skipped, and each one's origin.

    With --all-features and nothing chosen there are none: the run writes the every-feature tables only.
    """
    if args.all_features and not (args.feature or args.from_results or args.demo):
        return [], "none (--all-features without --feature: no cards)", "", {}
    choice = choose_features(args.feature, args.from_results, args.top_n, args.demo, loaded.sae.d_sae,
                             args.include_nonsignificant, loaded.provenance)
    return choice.features, choice.how, choice.note, {f: choice.origin(f) or choice.how for f in choice.features}


def encode_prompts(loaded: Loaded, texts: list[str], sources: list[str], features: list[int],
                   args: argparse.Namespace, record: RunRecord, log) -> FeatureActivations:
    """The features' per-token activations over the prompts (none when there are no prompts or features)."""
    if not texts or not features:
        return FeatureActivations(features=list(features), texts=[], sources=[], token_ids=[], acts=[],
                                  n_skip=1 if loaded.sae.prepend_bos else 0)
    log(f"encoding {plural(len(texts), 'text')} for {plural(len(features), 'feature')} ...")
    with record.timed("encode"):
        tokenized = tokenize(loaded, texts)
        warn_truncated(texts, tokenized, int(loaded.model.cfg.n_ctx))
        return collect_feature_activations(
            loaded, texts, sources, features, args.batch_size or default_batch_size(loaded.device, loaded), tokenized
        )


def write_card(out: OutputFolder, card: FeatureCard, fa: FeatureActivations, title: str, is_demo: bool,
               provenance: Provenance) -> list[Path]:
    """MI5_<id>.png with the numbers behind it, and the card as JSON and as a self-contained HTML page;
    with a mined corpus also MI5_<id>_corpus.png and its numbers."""
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
    written = [png, logits_csv, hist_csv]
    corpus_png = None
    if card.corpus is not None:
        c = card.corpus
        # Rendered once, for the file and the page alike (a render is most of a card's time).
        corpus_png = png_bytes(corpus_figure(feature, c, title), dpi=120)
        name = constants.MI5_CORPUS_PNG.format(feature=feature)
        with out.staged(name) as tmp:
            tmp.write_bytes(corpus_png)
        written.append(out / name)
        written.append(out.write_csv(
            constants.MI5_CORPUS_CSV.format(feature=feature),
            ["bin_low", "bin_high", "tokens", "windows_by_peak"],
            [[edge(c.hist_edges[b]), edge(c.hist_edges[b + 1]), int(c.hist_counts[b]), int(c.window_hist_counts[b])]
             for b in range(len(c.hist_counts))],
        ))
    data = card.to_dict() | {"title": title, "provenance": provenance.to_dict()}
    card_json = out.write_json(constants.CARD_JSON.format(feature=feature), data)
    page = out.write_text(constants.CARD_HTML.format(feature=feature),
                          render_html(card, title, is_demo, png_bytes(fig), corpus_png))
    return written + [card_json, page]


def write_all_features(out: OutputFolder, mined: MiningResult, loaded: Loaded) -> list[Path]:
    """--all-features: corpus_features.csv (every feature's density and top example) and
    corpus_histograms.csv (every feature's corpus tokens per fixed activation bin)."""
    header, rows = mined.summary_table(loaded.model.tokenizer)
    features_csv = out.write_csv(constants.CORPUS_FEATURES_CSV, header, rows)
    edges = mined.hist_edges
    bins = [f"{edge(edges[b])}-{edge(edges[b + 1])}" for b in range(len(edges) - 1)]
    hist_csv = out.write_csv(
        constants.CORPUS_HIST_CSV, ["feature", "fired_tokens", "tokens", *bins],
        [[int(f), int(c.sum()), mined.n_tokens, *c.tolist()] for f, c in zip(mined.features, mined.hist_counts)],
    )
    return [features_csv, hist_csv]


def edge(x: float) -> float:
    """A histogram edge as written: the pass bins with float32 edges, so their shortest float32 form
    (0.01, not 0.009999999776482582); the top edge of the last bin is the maximum activation."""
    return float(str(np.float32(x)))


def every_feature_line(mined: MiningResult) -> str:
    """One sentence about every feature's density in the corpus (--all-features)."""
    densities = mined.densities
    fired = densities > 0
    dense = int((densities > 0.1).sum())
    median = float(np.median(densities[fired])) if fired.any() else 0.0
    return (f"Every feature over the corpus: {int(fired.sum()):,} of {len(densities):,} fire at least once "
            f"({len(densities) - int(fired.sum()):,} never do here); median density of those that fire "
            f"{100 * median:.3g}%; {dense:,} fire on more than 10% of tokens. Each feature's density and top "
            f"example: {constants.CORPUS_FEATURES_CSV}; its histogram: {constants.CORPUS_HIST_CSV}.")


def mining_record(mined: MiningResult, options: MiningOptions) -> dict:
    """The corpus pass, for the run record."""
    return {
        "corpus": mined.corpus, "tokens": mined.n_tokens, "windows": mined.n_windows,
        "documents": mined.n_documents, "window_tokens": mined.window, "bos_first": bool(mined.n_bos),
        "max_tokens": options.max_tokens, "features": "all" if options.all_features else list(options.features),
        "k": options.k, "samples": options.samples,
        "hist_edges": [float(x) for x in mined.hist_edges], "checkpoint": str(mined.checkpoint),
        "already_mined": mined.reused, "resumed_at_tokens": mined.resumed_at, "complete": mined.complete,
    }


def saved_line(out: OutputFolder, written: list[Path], record_path: Path) -> str:
    pages = [p.name for p in written if p.suffix == ".html" and p.name != constants.CARDS_INDEX_HTML]
    names = {p.name for p in written}
    parts = []
    if pages:
        parts.append(f"{constants.CARDS_INDEX_HTML} (open in a browser; it links {', '.join(pages)}), MI5_<id>.png "
                     f"with the numbers behind it, card JSON, {constants.CARDS_CSV}")
    if any(n.endswith("_corpus.png") for n in names):
        parts.append("MI5_<id>_corpus.png (the corpus histogram) with MI5_<id>_corpus_hist.csv")
    if constants.CORPUS_FEATURES_CSV in names:
        parts.append(f"{constants.CORPUS_FEATURES_CSV}, {constants.CORPUS_HIST_CSV}")
    parts.append(record_path.name)
    return f"Saved {len(written) + 1} files to {out.path}: " + ", ".join(parts)


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
        | ({"corpus_density": d["corpus"].get("density"), "corpus": d["corpus"].get("corpus")}
           if isinstance(d.get("corpus"), dict) else {})
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
    ] + ([f"{card.corpus.density:.3g}"] if card.corpus is not None else [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
