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
reuses it, and an interrupted pass continues where it stopped (``--fresh`` starts over). With
``--dtype bfloat16`` the pass runs in bfloat16 and keeps ``--candidates-factor`` times the top windows
per feature; a float32 copy of the model and SAE re-scores them, so the cards' top windows are float32's,
and the run says how many features' top windows may still differ from a float32 pass (flagged on their cards).

Writes to --out (default Images/): ``MI5_<id>.png`` (activation histogram + logit effects) with
``MI5_<id>.csv`` and ``MI5_<id>_hist.csv`` (the numbers behind it), ``feature_<id>.html`` (a
self-contained card to open in a browser), ``feature_<id>.json`` (everything on the card),
``feature_cards.csv`` (one summary row per feature), ``index.html`` and the run record. With a corpus,
also ``MI5_<id>_corpus.png`` with ``MI5_<id>_corpus_hist.csv``; with ``--all-features``,
``corpus_features.csv`` (every feature's density and top example) and ``corpus_histograms.csv``.

With ``--family 409+501`` (repeatable), or a family row of ``--from-results``, the features of one family
(a concept the SAE splits across features) get one card: where the family fires (each member's activation
divided by its typical max, the largest member per token), which member fired at each top text, each
member's own row, and what the family writes (``mechinterp.cards.family``); its files are
``MI5_409+501.png`` (with its CSVs and ``MI5_409+501_members.csv``), ``family_409+501.html`` and ``.json``.

With a corpus and a stated label (``--label "joy: happy, glad"``, ``--label-regex PATTERN``, ``--label-prompts
FILE``, or ``--label-from-results`` for each feature's own Chapter 2 word set; ``--label-window A:B`` for the
tokens after each occurrence), a second streaming pass scores the label on every carded feature and family
(``mechinterp.cards.label_score``): specificity (share of its activation on the label's tokens), sensitivity
(share of the label's occurrences where it fires), AUROC, 95% bootstrap intervals over documents, and the
same scores for random word lists of the label's corpus frequency (the chance level). Each card then
prints a short label block and gets ``MI5_<id>_label.png`` with ``MI5_<id>_label.csv``; the card's page,
JSON, ``index.html`` and ``feature_cards.csv`` show the scores.

With ``--baseline GROUP`` each card also sets the feature's firing rate in that prompt group beside its
rate in the group where it fires most ("fires on 7.33% of 'happy' tokens (its busiest group) vs 0% of
'baseline' tokens (0 of 543): never in the baseline"); without it the cards make no comparison.

The script reads as the method: options -> choose features -> mine the corpus (if any) -> encode the
prompts and build the cards (``mechinterp.cards.card.feature_cards``, also a notebook's entry point)
-> print them -> write them (``mechinterp.cards.report``).

Run:
    python MechInterpFeatureInspect.py --feature 501 --demo          # toy world, no network needed
    python MechInterpFeatureInspect.py --demo                        # the demo's planted features
    python MechInterpFeatureInspect.py --feature 1234 --feature 7 --prompts prompts/
    python MechInterpFeatureInspect.py --demo --baseline baseline      # each card against the baseline group
    python MechInterpFeatureInspect.py --from-results Images/feature_stats.csv --top-n 3
    python MechInterpFeatureInspect.py --demo --family 409+501            # two features carded as one family
    python MechInterpFeatureInspect.py --feature 1234 --corpus my_documents.txt   # one document per line
    python MechInterpFeatureInspect.py --feature 1234 --dataset Skylion007/openwebtext --max-tokens 1000000
    python MechInterpFeatureInspect.py --feature 1234 --corpus my_documents.txt --label "joy: happy, glad, thrilled"
    python MechInterpFeatureInspect.py --from-results Images/feature_stats.csv --corpus docs.txt --label-from-results
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from mechinterp.cards import report
from mechinterp.cards.card import CardOptions, FeatureCard, check_baseline, feature_cards, prompt_activations
from mechinterp.cards.corpus import Corpus, CorpusOptions, HFDatasetCorpus, resolve_window
from mechinterp.cards.family import FamilyCard, family_cards
from mechinterp.cards.label_cards import check_label_options, score_cards
from mechinterp.cards.label_report import SUMMARY_COLUMNS as LABEL_COLUMNS
from mechinterp.cards.label_report import label_text, summary_values
from mechinterp.cards.labels import LabelOptions
from mechinterp.cards.mining import DEFAULT_BATCH_SIZE, DEFAULT_K, MiningOptions, MiningResult, mine
from mechinterp.cards.render import (
    ansi_allowed,
    brief_card_text,
    brief_family_text,
    format_card_text,
    format_family_text,
)
from mechinterp.cards.store import finished_pass_exists
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
from mechinterp.core.errors import UserError
from mechinterp.core.features import (
    FamilySelection,
    FeatureActivations,
    FeatureChoice,
    FeatureSelection,
    choose_features,
    filter_note,
    name_of,
)
from mechinterp.core.io import OutputFolder
from mechinterp.core.loading import DEFAULT_DTYPE, Loaded
from mechinterp.core.progress import Log
from mechinterp.core.prompts import PromptOptions, collect_texts
from mechinterp.core.records import RunRecord
from mechinterp.core.source import Source, demo_threads, load, resolve_source
from mechinterp.core.tables import format_table, print_wrapped, wrapped

# Chapter 3's wording of the shared flags.
FEATURE_HELPS = {
    "feature": "a feature to inspect; repeat for several (with --demo and no ids: the planted features)",
    "from_results": "inspect the top features of each group in a Chapter 2 feature_stats.csv (a family of "
                    "features there gets one card)",
    "family": "a feature family to card as one: its member ids joined by '+', e.g. 409+501 (Chapter 2's family "
              "column); repeat for several",
}
PROMPT_HELPS = {
    "prompts": "folder of prompt files, one prompt per line (default: prompts/, or the demo's prompts with --demo)",
    "baseline": "compare each card with this prompt group (e.g. baseline): the card gives the feature's firing "
                "rate there beside its rate in the group where it fires most (default: no comparison)",
}
CORPUS_GROUP = "corpus mining (one streaming pass; memory does not grow with the corpus; resumable)"
LABEL_GROUP = "label scoring (does a stated meaning explain the feature? needs --corpus or --dataset)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Chapter 3: feature cards - where a feature fires, what it writes, how often it fires.",
    )
    add_options(parser, FeatureSelection, "which features", defaults={"top_n": 3}, helps=FEATURE_HELPS)
    add_options(parser, FamilySelection, "which features", helps=FEATURE_HELPS)
    # No --baseline in args unless given: a run without it records the same flags as before it existed.
    texts = add_options(parser, PromptOptions, "prompts to look for activations in", only=("prompts", "baseline"),
                        defaults={"baseline": argparse.SUPPRESS}, helps=PROMPT_HELPS)
    add_options(parser, CardOptions, only=("batch_size",), into=texts)
    corpus = parser.add_argument_group(CORPUS_GROUP)
    add_options(parser, CorpusOptions, only=("corpus", "dataset"), into=corpus.add_mutually_exclusive_group())
    add_options(parser, CorpusOptions, only=("dataset_split", "text_column", "dataset_config", "max_tokens",
                                             "all_features", "fresh"), into=corpus)
    # Not in args unless given, like --baseline: a float32 run records the same flags as before it existed.
    add_options(parser, CorpusOptions, only=("candidates_factor",), into=corpus,
                defaults={"candidates_factor": argparse.SUPPRESS})
    add_options(parser, LabelOptions, LABEL_GROUP)
    add_options(parser, CardOptions, "what to show", only=("top_prompts", "n_tokens", "color"))
    add_common_args(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    log = make_logger(args)
    show = options_from(args, CardOptions, baseline=getattr(args, "baseline", None))
    mining = options_from(args, CorpusOptions)
    mining.check_dtype(source_options(args).dtype)
    corpus = mining.open()
    labeling = options_from(args, LabelOptions)
    check_label_options(labeling, corpus is not None, args.from_results)
    refuse_unreachable_dataset(corpus)
    with output_folder(args) as out:
        record = RunRecord(__file__, argv, vars(args))
        texts, sources, described = gather_texts(args, corpus is not None)
        check_baseline(show.baseline, sources)
        source = resolve_source(source_options(args), log)
        with record.timed("load"):
            loaded = load(source, log=log)
        with demo_threads(loaded.is_demo):
            choice = features_for_cards(options_from(args, FeatureSelection), options_from(args, FamilySelection),
                                        mining.all_features, args.demo, loaded)
            mined, options, exact = None, None, None
            if corpus is not None and (choice.features or mining.all_features):  # a family's card has no corpus part
                options = mining_options(mining, show, choice.features, loaded.dtype)
                with record.timed("load"):
                    exact = float32_copy(source, loaded, log)
                with record.timed("mine"):
                    mined = mine_corpus(loaded, corpus, options, source.cache_identity(), args.quiet, log, exact)
            scope = report.corpus_scope(mined, options.max_tokens) if mined is not None else ""
            with record.timed("encode"):  # once, for the features and every family's members
                fa = prompt_activations(loaded, texts, sources, [*choice.features, *choice.members],
                                        show.batch_size, log)
            cards = feature_cards(loaded, choice.features, texts, sources, show, corpus=mined, corpus_scope=scope,
                                  origins={f: choice.origin(f) or choice.how for f in choice.features},
                                  log=log, record=record, activations=fa, windows_with=exact)
            families = family_cards(loaded, choice.families, texts, sources, show, activations=fa,
                                    origins={f: choice.origin(f) or choice.how for f in choice.families})
            notes = [choice.note] + (["family cards show the prompts only, not the corpus"]
                                     if corpus is not None and families and not labeling.wanted else [])
            if labeling.wanted:  # a second pass over the corpus: every token against each label
                with record.timed("labels"):
                    scored, label_note = score_cards(loaded, corpus, cards, families, labeling, args.from_results,
                                                     mining.token_limit, show.batch_size, log)
                notes += [label_note] + ([f"--label-prompts words: {', '.join(w for w, _ in scored.prompt_words)}"]
                                         if scored is not None and scored.prompt_words else [])
            head = run_lines(loaded, f"Texts: {described}. Features: {choice.how}.", mined, scope,
                             "; ".join(n for n in notes if n))
            with record.timed("cards"):
                written, summary = write_cards(out, cards, families, loaded, mined if mining.all_features else None)
            color = ansi_allowed(sys.stdout, show.color)
            written.append(print_report(
                out, __file__, args, [*head, *card_lines(cards, families, loaded.title, False), *summary],
                [*head, *card_lines(cards, families, loaded.title, color, brief=True), *summary],
                [*head, *card_lines(cards, families, loaded.title, color), *summary]))
        n_tokens, filtered = prompt_totals(fa)
        record.wrote(*written)
        record.update(
            model=loaded.model_label, sae=loaded.sae.label, hook=loaded.sae.hook_name, d_sae=loaded.sae.d_sae,
            features=choice.features, families=[name_of(f) for f in choice.families], feature_choice=choice.how,
            texts=described, n_texts=len(texts), n_tokens=n_tokens, filtered=filtered, skipped_by_gate=choice.note,
            provenance=loaded.provenance.to_dict(),
        )
        if mined is not None:
            record.update(corpus=report.mining_record(mined, options))
        record_path = record.write(out)
        print()
        print_wrapped(report.saved_line(out, written, record_path))
    return 0


def refuse_unreachable_dataset(corpus: Corpus | None) -> None:
    """Fail before loading anything: offline, a dataset that was never mined here cannot be.

    With a finished pass saved, an offline rerun reads it back; a pass that must stream fails the same way.
    """
    if isinstance(corpus, HFDatasetCorpus) and not finished_pass_exists(constants.mining_cache_dir(), corpus):
        corpus.ensure_reachable()


def gather_texts(args: argparse.Namespace, mining: bool) -> tuple[list[str], list[str], str]:
    """All prompts, labelled by group, and where they came from.

    Only a folder the user (or --demo) chose must exist: with a corpus to mine, a missing default
    prompts/ folder just means no prompts.
    """
    folder, chosen = prompt_folder(args), args.prompts is not None or args.demo
    if mining and not chosen and not folder.is_dir():
        return [], [], "no prompts"
    return collect_texts(folder, chosen, None)


def features_for_cards(selection: FeatureSelection, families: FamilySelection, all_features: bool, demo: bool,
                       loaded: Loaded) -> FeatureChoice:
    """The features (and families) to make cards for, how they were chosen, what the gate skipped, and each
    one's origin.

    With --all-features and nothing chosen there are none: the run writes the every-feature tables only.
    """
    if all_features and not (selection.feature or selection.from_results or families.family or demo):
        return FeatureChoice([], {}, {}, "none (--all-features without --feature: no cards)")
    return choose_features(selection.feature, selection.from_results, selection.top_n, demo, loaded.sae.d_sae,
                           selection.include_nonsignificant, loaded.provenance, families=families.family)


def mining_options(mining: CorpusOptions, show: CardOptions, features: list[int], dtype: str) -> MiningOptions:
    """The pass's options: the features on cards (or every feature), checkpoints in the project cache; in
    reduced precision (``dtype``), candidate windows for the float32 re-score."""
    k = max(show.top_prompts, DEFAULT_K)
    return MiningOptions(
        features=tuple(sorted(set(features))), all_features=mining.all_features,
        # At least the library's 10, so that --top-prompts 5 and the default share one saved pass.
        k=k,
        candidates=None if dtype == DEFAULT_DTYPE else k * mining.rescore_factor,
        max_tokens=mining.token_limit,
        batch_size=show.batch_size or DEFAULT_BATCH_SIZE,
        checkpoint_dir=constants.mining_cache_dir(),
        resume=not mining.fresh,
    )


def float32_copy(source: Source, loaded: Loaded, log: Log) -> Loaded | None:
    """The same model and SAE in float32, to re-score a reduced-precision pass's top windows; None when
    ``loaded`` is float32 already.

    Loaded like ``loaded`` (the SAE's model kwargs, the weights processed in float32): the bfloat16
    copy is these weights rounded, so the re-score sees the model a float32 run would.
    """
    if loaded.dtype == DEFAULT_DTYPE:
        return None
    log(f"loading a float32 copy of the model and SAE, to re-score the top corpus windows of the {loaded.dtype} "
        "pass exactly ...")
    return load(dataclasses.replace(source, dtype=DEFAULT_DTYPE), log=log)


def mine_corpus(loaded: Loaded, corpus: Corpus, options: MiningOptions, identity: dict[str, str], quiet: bool,
                log: Log, exact: Loaded | None = None) -> MiningResult:
    """Run (or reuse, or continue) the pass, with progress and a closing line; refuse a corpus without text.

    ``exact``: the float32 copy that re-scores a reduced-precision pass's candidate windows (every time:
    a saved pass holds the candidates, not the re-score).
    """
    _, why = resolve_window(loaded, options.window)
    log(report.mining_started_line(corpus.describe(), options, why))
    progress = report.MiningProgress(quiet, log)
    start = time.perf_counter()
    try:
        result = mine(loaded, corpus, options, identity, progress, progress.message, rescore_with=exact)
    finally:
        progress.close()
    if not result.reused:
        log(report.mined_line(result, time.perf_counter() - start))
    elif result.rescore is not None:
        log(report.rescored_line(result))
    if result.n_tokens == 0:
        raise UserError(f"{corpus.describe()} holds no text to mine (blank lines and lines starting "
                        "with '#' are skipped)")
    return result


def run_lines(loaded: Loaded, texts_line: str, mined: MiningResult | None, scope: str, note: str) -> list[str]:
    """What the run looked at: the model and SAE, the texts, the corpus, and any note."""
    lines = ["", loaded.title, wrapped(texts_line)]
    if mined is not None:
        lines.append(wrapped(report.corpus_line(mined, scope)))
        if mined.rescore is not None:
            lines.append(wrapped(report.rescore_line(mined)))
    if note:
        lines.append(wrapped(f"Note: {note}."))
    return lines


def card_lines(cards: list[FeatureCard], families: list[FamilyCard], title: str, color: bool,
               brief: bool = False) -> list[str]:
    """Every card as terminal text, the families' last; ``brief``: the summary's dozen lines each."""
    lines = []
    for card in cards:
        lines += ["", brief_card_text(card, color) if brief else format_card_text(card, title, color)]
        if card.label_scores:  # the label's scores are short: the summary shows them whole
            lines.append("\n".join(label_text(card.label_scores, card.feature)))
    for family in families:
        lines += ["", brief_family_text(family, color) if brief else format_family_text(family, title, color)]
        if family.label_scores:
            lines.append("\n".join(label_text(family.label_scores, family.name)))
    return lines


def write_cards(out: OutputFolder, cards: list[FeatureCard], families: list[FamilyCard], loaded: Loaded,
                every_feature: MiningResult | None) -> tuple[list[Path], list[str]]:
    """Each card's files (families' too); with ``every_feature`` (--all-features) the every-feature tables;
    then the summary table and index.html. Returns the paths written and the summary's lines."""
    written = [path for card in cards
               for path in report.write_card(out, card, loaded.title, loaded.is_demo, loaded.provenance)]
    written += [path for family in families
                for path in report.write_family_card(out, family, loaded.title, loaded.is_demo, loaded.provenance)]
    lines = []
    if every_feature is not None:
        written += report.write_all_features(out, every_feature, loaded.model.tokenizer)
        lines += ["", wrapped(report.every_feature_line(every_feature))]
    if cards or families:
        columns, headings, rows = report.summary_table(cards, families)
        if any(c.label_scores for c in [*cards, *families]):  # the label columns: in the CSV, not the terminal
            extra = [summary_values(c.label_scores) for c in [*cards, *families]]
            summary_csv = out.write_csv(constants.CARDS_CSV, columns + LABEL_COLUMNS,
                                        [r + x for r, x in zip(rows, extra)])
        else:
            summary_csv = out.write_csv(constants.CARDS_CSV, columns, rows)
        lines += ["", "Summary (firing rate and typical max over your texts; BOS and padding excluded):"]
        if families:  # its numbers are the family activation's, not a feature's
            lines.append(wrapped("A family's row: tokens where any member fires, and its family activation."))
        lines += ["", format_table(headings, [report.shown_row(row) for row in rows])]
        written += [summary_csv, report.write_index(out, cards, loaded.title, families)]
    return written, lines


def prompt_totals(fa: FeatureActivations) -> tuple[int, str]:
    """Tokens of the prompts searched, and what every number leaves out (the same on every card)."""
    return sum(len(a) for a in fa.acts), filter_note(fa)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
