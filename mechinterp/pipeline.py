"""From a list of prompts to per-prompt feature summaries, using the cache and loading only if needed.

This is the path every multi-prompt chapter takes: look every prompt up in the activation cache,
load the model and SAE only when something is missing (or the cache has no metadata yet), encode the
missing prompts in batches, and store each finished batch at once, so that Ctrl-C loses at most the
batch in flight.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from mechinterp import constants
from mechinterp.cache import ActivationCache
from mechinterp.cli import Source, load, progress_bar
from mechinterp.loading import Loaded, pick_device
from mechinterp.summaries import PromptAggregates, SparseRow


@dataclass
class ModelInfo:
    """What outputs need to know about the model + SAE, available with or without loading them."""

    title: str
    model_label: str
    sae_label: str
    hook_name: str
    d_sae: int
    neuronpedia_id: str | None
    n_ctx: int
    is_demo: bool

    @classmethod
    def from_loaded(cls, loaded: Loaded) -> ModelInfo:
        return cls(
            title=loaded.title,
            model_label=loaded.model_label,
            sae_label=loaded.sae.label,
            hook_name=loaded.sae.hook_name,
            d_sae=loaded.sae.d_sae,
            neuronpedia_id=loaded.sae.neuronpedia_id,
            n_ctx=int(loaded.model.cfg.n_ctx),
            is_demo=loaded.is_demo,
        )


@dataclass
class Summaries:
    """The per-prompt summaries plus how they were obtained."""

    aggregates: PromptAggregates
    info: ModelInfo
    loaded: Loaded | None  # None when everything came from the cache
    cache_hits: int
    cache_misses: int
    tokens_encoded: int
    seconds: dict[str, float]  # wall-clock "load" (model + SAE), "encode", "cache" (entry reads/writes)


def summarise_prompts(
    args: argparse.Namespace,
    source: Source,
    texts: Sequence[str],
    labels: Sequence[str],
    log: Callable[[str], None],
    use_cache: bool = True,
) -> Summaries:
    """Per-prompt summaries for ``texts``; ``labels`` name each prompt in warnings (e.g. its group)."""
    start_all = time.perf_counter()
    cache = ActivationCache(constants.activation_cache_dir(), source.cache_identity()) if use_cache else None
    found: dict[int, SparseRow] = cache.lookup(list(texts)) if cache else {}
    meta = cache.meta if cache else None
    missing = [i for i in range(len(texts)) if i not in found]
    loaded = None
    tokens_encoded = 0
    seconds = {"load": 0.0, "encode": 0.0}
    if missing or meta is None:
        start = time.perf_counter()
        loaded = load(args, source, log=log)
        seconds["load"] = round(time.perf_counter() - start, 4)
        info = ModelInfo.from_loaded(loaded)
        if cache:
            cache.save_meta(asdict(info))
        if missing:
            from mechinterp.encoding import aggregate_prompts, default_batch_size, tokenize

            log(f"encoding {len(missing)} prompt(s) ({len(found)} from the cache) ...")
            tokenized = tokenize(loaded, [texts[i] for i in missing])
            batch_size = args.batch_size or default_batch_size(pick_device(args.device))
            bar = progress_bar(len(missing), "encoding prompts", args.quiet, unit="prompt")
            start = time.perf_counter()

            def store(batch: list[int], rows: list[SparseRow]) -> None:
                if cache:
                    for j, row in zip(batch, rows):
                        cache.put(texts[missing[j]], row)

            try:
                rows = aggregate_prompts(loaded, tokenized, batch_size, on_rows=store, progress=bar.update)
            finally:
                bar.close()
                seconds["encode"] = round(time.perf_counter() - start, 4)
            for j, row in zip(missing, rows):
                found[j] = row
            tokens_encoded = sum(row.n_tokens for row in rows)
    else:
        info = ModelInfo(**{k: v for k, v in meta.items() if k in ModelInfo.__dataclass_fields__})
        log(f"all {len(texts)} prompts found in the activation cache; the model was not loaded")
    ordered = [found[i] for i in range(len(texts))]
    seconds["cache"] = round(time.perf_counter() - start_all - seconds["load"] - seconds["encode"], 4)
    for i, row in enumerate(ordered):
        if row.truncated:
            print(
                f"warning: a {labels[i]} prompt is longer than the model's context of {info.n_ctx} tokens and "
                f"was truncated: {texts[i][:50]!r}...",
                file=sys.stderr,
            )
    return Summaries(
        aggregates=PromptAggregates(ordered, info.d_sae),
        info=info,
        loaded=loaded,
        cache_hits=cache.hits if cache else 0,
        cache_misses=cache.misses if cache else len(texts),
        tokens_encoded=tokens_encoded,
        seconds=seconds,
    )
