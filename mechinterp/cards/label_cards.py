"""Chapter 3's label scoring: which label each carded feature and family is scored against, the pass, and
the scores put on the cards.

Why it exists: the script states labels once (``--label``, ``--label-regex``, ``--label-prompts``,
``--label-from-results``) and cards several features and families; this module turns those options into
units and labels for :func:`mechinterp.cards.label_score.score_labels` (a family is scored on its family
activation, each member divided by its typical max on the prompts, as its card does) and attaches each
unit's scores to its card (``label_scores``), where the report, the page and the JSON read them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mechinterp.cards.card import FeatureCard
from mechinterp.cards.corpus import Corpus
from mechinterp.cards.family import FamilyCard
from mechinterp.cards.label_score import (
    LabelPassOptions,
    LabelPassResult,
    Unit,
    count_pass,
    score_labels,
    text_length,
)
from mechinterp.cards.labels import (
    Label,
    LabelOptions,
    results_word_sets,
    stated_labels,
    whole_word_tokens,
    words_from_prompts,
)
from mechinterp.cards.mining import DEFAULT_BATCH_SIZE
from mechinterp.core.errors import UserError
from mechinterp.core.loading import Loaded
from mechinterp.core.progress import Log, silent
from mechinterp.core.tables import plural


def check_label_options(options: LabelOptions, has_corpus: bool, from_results: Path | None) -> None:
    """Refuse label flags that cannot work, before anything is loaded."""
    if options.wanted and not has_corpus:
        raise UserError("a label is scored over a corpus: add --corpus FILE (one document per line) or --dataset NAME")
    if options.label_from_results and from_results is None:
        raise UserError("--label-from-results takes each feature's word set from --from-results feature_stats.csv; "
                        "add --from-results")


def prompt_label_words(loaded: Loaded, corpus: Corpus, options: LabelOptions, text_len: int,
                       max_tokens: int | None) -> list[tuple[str, float]]:
    """--label-prompts' words: over-represented in the file against the corpus's single-token words."""
    tok = loaded.model.tokenizer
    counts, _ = count_pass(corpus, tok, text_len, max_tokens, [], len(tok))
    ok = whole_word_tokens(tok, len(counts))
    ids = [i for i in range(len(counts)) if ok[i] and counts[i]]
    words = Counter({p[1:].lower(): int(counts[i]) for i, p in zip(ids, tok.convert_ids_to_tokens(ids))})
    return words_from_prompts(Path(options.label_prompts), words)


def units_and_labels(cards: Sequence[FeatureCard], families: Sequence[FamilyCard], stated: list[Label],
                     options: LabelOptions, from_results: Path | None) -> tuple[list[Unit], dict[str, list[Label]], str]:
    """Each card's unit and its labels: the stated ones, plus its own Chapter 2 word set with
    --label-from-results; a note naming the cards that have no word set there."""
    sets = results_word_sets(from_results) if options.label_from_results and from_results is not None else {}
    units = [Unit(str(c.feature), (c.feature,)) for c in cards]
    units += [Unit(f.name, tuple(f.members), tuple(r.typical_max for r in f.rows)) for f in families]
    labels, missing = {}, []
    for u in units:
        own = [Label(f"Chapter 2 words of #{u.name}", sets[u.name], None, options.label_window,
                     f"--label-from-results {from_results}")] if u.name in sets else []
        if options.label_from_results and not own:
            missing.append(u.name)
        labels[u.name] = own + list(stated)
    units = [u for u in units if labels[u.name]]
    note = (f"no Chapter 2 word set for {', '.join('#' + m for m in missing)} in {from_results}: not scored"
            if missing else "")
    return units, labels, note


def score_cards(loaded: Loaded, corpus: Corpus, cards: Sequence[FeatureCard], families: Sequence[FamilyCard],
                options: LabelOptions, from_results: Path | None, max_tokens: int | None, batch_size: int | None,
                log: Log = silent) -> tuple[LabelPassResult | None, str]:
    """Score every card's labels in one pass and put the scores on the cards (``card.label_scores``).

    Returns:
        The pass's result (None when nothing is scored) and a note for the output.
    """
    pass_options = LabelPassOptions(max_tokens=max_tokens, batch_size=batch_size or DEFAULT_BATCH_SIZE,
                                    n_random=options.label_random, n_boot=options.label_bootstrap,
                                    seed=options.label_seed, k=options.label_examples)
    text_len = text_length(loaded, pass_options)[0]
    chosen = []
    if options.label_prompts is not None:
        log(f"choosing the words of {options.label_prompts} (a tokenizer-only pass over the corpus) ...")
        chosen = prompt_label_words(loaded, corpus, options, text_len, max_tokens)
    stated = stated_labels(options, [w for w, _ in chosen])
    units, labels, note = units_and_labels(cards, families, stated, options, from_results)
    if not units:
        return None, note
    what = plural(len(stated), "stated label") if stated else "each card's Chapter 2 word set"
    log(f"scoring {what} on {plural(len(units), 'feature or family', 'features and families')} over "
        f"{corpus.describe()} (a second pass over the corpus) ...")
    result = score_labels(loaded, corpus, units, labels, pass_options)
    result.prompt_words = chosen
    for card in cards:
        card.label_scores = result.for_unit(str(card.feature))
    for family in families:
        family.label_scores = result.for_unit(family.name)
    return result, note
