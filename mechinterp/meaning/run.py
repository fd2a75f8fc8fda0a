"""Chapter 2 from the prompt files to the verdicts, in one call: what the script computes, for a notebook too.

:func:`contrast_prompts` reads the prompt sets (checked for the statistics and, with ``paired``, for
pairing), summarises every prompt through the activation cache (the model is loaded only for prompts
never seen), contrasts every group with the baseline, and judges each significant, replicated feature,
encoding the token-injection test's edited prompts through the same cache. The script calls it and
then only writes and prints::

    from mechinterp.core.prompts import PromptOptions
    from mechinterp.core.source import SourceOptions, resolve_source
    from mechinterp.meaning.options import MeaningOptions
    from mechinterp.meaning.run import contrast_prompts

    result = contrast_prompts(resolve_source(SourceOptions(demo=True)), PromptOptions(), MeaningOptions(holdout=0.5))
    result.group("happy").top(5)
"""

from __future__ import annotations

import time
from pathlib import Path

from mechinterp.core.errors import UserError
from mechinterp.core.pipeline import EncodeOptions, Summaries, summarise_prompts
from mechinterp.core.progress import Log, silent
from mechinterp.core.prompts import PromptOptions, PromptSets, load_prompt_sets
from mechinterp.core.source import Source, resolve_prompt_folder
from mechinterp.meaning.contrast import MeaningResult, PromptEncoder, contrast_groups
from mechinterp.meaning.options import MeaningOptions

MIN_PROMPTS = 5  # per group (per split with a held-out share): fewer cannot reach significance after FDR


def contrast_prompts(
    source: Source,
    prompts: PromptOptions,
    options: MeaningOptions,
    log: Log = silent,
    encode: EncodeOptions | None = None,
) -> MeaningResult:
    """Chapter 2's whole analysis: load the prompt sets, summarise them, contrast, judge.

    Args:
        source: the model and SAE (:func:`mechinterp.core.source.resolve_source`).
        prompts: which prompt files; without a folder, the demo world's prompts for a demo source, else
            prompts/ beside the scripts.
        options: the contrast's options; a ``holdout`` of None means "on when every group is big enough".
        log: progress messages (encoding, loading).
        encode: batch size, activation cache and progress bar (default: cached, with the default batch size).

    Returns:
        The result, carrying the prompt sets and summaries it was computed from (``prompts``,
        ``summaries``), the injection test's encoding costs (``injection_runs``) and the seconds per
        stage (``seconds``).

    Raises:
        UserError: a problem with the prompt files (missing, empty, too few prompts, uneven pairs).
    """
    encode = encode or EncodeOptions()
    sets = load_sets(resolve_prompt_folder(prompts.prompts, source.is_demo), prompts, options)
    texts, labels = sets.flat()
    summaries = summarise_prompts(source, texts, labels, encode, log)
    injected: list[dict] = []
    start = time.perf_counter()  # statistics include encoding the token-injection test's edited prompts
    result = contrast_groups(summaries.aggregates, labels, list(sets.groups), sets.baseline, options, texts=texts,
                             encode=injection_encoder(source, encode, log, injected, summaries),
                             concept_words=sets.concept_words)
    seconds = round(time.perf_counter() - start, 4)
    result.prompts, result.summaries, result.injection_runs = sets, summaries, injected
    result.seconds = {**summaries.seconds, "statistics": seconds}
    return result


def load_sets(folder: Path, prompts: PromptOptions, options: MeaningOptions) -> PromptSets:
    """The prompt sets (duplicates dropped, large groups sampled with ``--max-prompts``), checked for the
    statistics (and, with ``--paired``, for pairing) and for the held-out share they get."""
    min_needed = MIN_PROMPTS * (2 if options.holdout_given else 1)
    sets = load_prompt_sets(folder, prompts.groups, prompts.baseline, min_needed, prompts.duplicates,
                            max_prompts=prompts.max_prompts, sample_seed=prompts.sample_seed, paired=options.paired)
    sizes = {g: len(p) for g, p in sets.groups.items()}
    holdout = options.holdout_for(sizes)
    if holdout and min(round(n * holdout) for n in sizes.values()) < MIN_PROMPTS:
        smallest = min(sizes, key=sizes.get)
        raise UserError(
            f"with --holdout {holdout:g}, group {smallest!r} keeps only {round(sizes[smallest] * holdout)} "
            f"prompts for re-testing; the statistics need at least {MIN_PROMPTS} per split (add prompts or "
            "use --no-holdout)"
        )
    return sets


def injection_encoder(source: Source, options: EncodeOptions, log: Log, runs: list[dict],
                      first: Summaries) -> PromptEncoder:
    """The token-injection test's model access: edited prompts go through the same cached pipeline, so a
    rerun loads the model only for edited prompts it has never seen. Each call's cache use goes to ``runs``
    (the summaries themselves are not kept: they hold the model when it was loaded)."""

    def encode(texts: list[str]):
        done = summarise_prompts(source, texts, ["edited"] * len(texts), options,
                                 lambda msg: log(f"token injection: {msg}"), loaded=first.loaded)
        runs.append(dict(hits=done.cache_hits, misses=done.cache_misses, model_loaded=done.loaded is not None,
                         seconds=done.seconds))
        return done.aggregates

    return encode
