"""From a list of prompts to per-prompt feature summaries, using the cache and loading only if needed.

This is the path every multi-prompt chapter takes: look every prompt up in the activation cache,
load the model and SAE only when something is missing (or the cache has no metadata yet), encode the
missing prompts in batches, and store the finished prompts in the cache as shards of
:data:`~mechinterp.core.cache.SHARD_PROMPTS` prompts (and the rest when encoding stops, for whatever
reason), so that Ctrl-C loses at most the batch in flight, and a killed process at most the prompts of
one unwritten shard.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from mechinterp.core import constants
from mechinterp.core.cache import ActivationCache
from mechinterp.core.loading import Loaded
from mechinterp.core.options import option, positive_int
from mechinterp.core.progress import Log, progress_bar
from mechinterp.core.provenance import Provenance
from mechinterp.core.source import Source, demo_threads, load
from mechinterp.core.summaries import PromptAggregates, SparseRow


@dataclass
class EncodeOptions:
    """How prompts are encoded (the "speed" flags; ``quiet`` comes from the output flags)."""

    # None: see mechinterp.core.encoding.default_batch_size.
    batch_size: int | None = option(
        None, "prompts per forward pass (default: 16 on CPU; on a GPU as many as fit in half its free memory, "
        "at most 512)", type=positive_int)
    use_cache: bool = option(
        True, "do not read or write the activation cache (.cache/activations, or $MECHINTERP_CACHE/activations)",
        flag="--no-cache", invert=True)
    quiet: bool = False  # no progress bar


@dataclass
class ModelInfo:
    """What outputs need to know about the model + SAE, available with or without loading them."""

    title: str
    model_label: str
    sae_label: str
    hook_name: str
    d_sae: int
    neuronpedia_id: str | None
    n_ctx: int  # the most tokens encoded per prompt (BOS included): the SAE's training context if smaller
    is_demo: bool
    context_note: str = ""  # whose context n_ctx is, in words
    sae_identity: str = ""  # see mechinterp.core.provenance

    @property
    def provenance(self) -> Provenance:
        return Provenance(self.model_label, self.sae_identity, self.hook_name)

    @classmethod
    def from_loaded(cls, loaded: Loaded) -> ModelInfo:
        from mechinterp.core.encoding import context_limit  # torch: only when the model is loaded anyway

        return cls(
            title=loaded.title,
            model_label=loaded.model_label,
            sae_label=loaded.sae.label,
            hook_name=loaded.sae.hook_name,
            d_sae=loaded.sae.d_sae,
            neuronpedia_id=loaded.sae.neuronpedia_id,
            n_ctx=context_limit(loaded)[0],
            context_note=context_limit(loaded)[1],
            sae_identity=loaded.sae.identity,
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
    source: Source,
    texts: Sequence[str],
    labels: Sequence[str],
    options: EncodeOptions | None = None,
    log: Log = lambda _msg: None,
    loaded: Loaded | None = None,
) -> Summaries:
    """Per-prompt summaries for ``texts``; ``labels`` name each prompt in warnings (e.g. its group).

    ``loaded``: the model and SAE of ``source`` if a previous call already loaded them (they are then
    reused instead of loaded again).

    Looks every prompt up in the activation cache first and loads the model and SAE only when a prompt
    is missing (or the cache has no metadata yet).
    """
    options = options or EncodeOptions()
    start_all = time.perf_counter()
    cache = ActivationCache(constants.activation_cache_dir(), source.cache_identity()) if options.use_cache else None
    found: dict[int, SparseRow] = cache.lookup(list(texts)) if cache else {}
    meta = cache.meta if cache else None
    missing = [i for i in range(len(texts)) if i not in found]
    already = loaded
    loaded = None
    tokens_encoded = 0
    seconds = {"load": 0.0, "encode": 0.0}
    if missing or meta is None:
        start = time.perf_counter()
        loaded = already or load(source, log=log)
        seconds["load"] = round(time.perf_counter() - start, 4)
        info = ModelInfo.from_loaded(loaded)
        if cache:
            cache.save_meta(asdict(info))
        if missing:
            log(f"encoding {len(missing)} prompt(s) ({len(found)} from the cache) ...")
            rows, seconds["encode"] = _encode(loaded, [texts[i] for i in missing], cache, options)
            for j, row in zip(missing, rows):
                found[j] = row
            tokens_encoded = sum(row.n_tokens for row in rows)
    else:
        info = ModelInfo(**{k: v for k, v in meta.items() if k in ModelInfo.__dataclass_fields__})
        log(f"all {len(texts)} prompts found in the activation cache; the model was not loaded")
    ordered = [found[i] for i in range(len(texts))]
    seconds["cache"] = round(time.perf_counter() - start_all - seconds["load"] - seconds["encode"], 4)
    _warn_truncated(ordered, texts, labels, info)
    return Summaries(
        aggregates=PromptAggregates(ordered, info.d_sae),
        info=info,
        loaded=loaded,
        cache_hits=cache.hits if cache else 0,
        cache_misses=cache.misses if cache else len(texts),
        tokens_encoded=tokens_encoded,
        seconds=seconds,
    )


def _encode(loaded: Loaded, texts: list[str], cache: ActivationCache | None,
            options: EncodeOptions) -> tuple[list[SparseRow], float]:
    """Encode ``texts`` in batches, storing the finished prompts in the cache a shard at a time and the
    rest when encoding stops (so Ctrl-C loses at most the batch in flight); returns their summaries and
    the seconds spent encoding."""
    from mechinterp.core.encoding import aggregate_prompts, default_batch_size, tokenize
    from mechinterp.core.tokens import decode_tokens

    tokenized = tokenize(loaded, texts)
    batch_size = options.batch_size or default_batch_size(loaded.device, loaded)
    bar = progress_bar(len(texts), "encoding prompts", options.quiet, unit="prompt")
    start = time.perf_counter()

    def store(batch: list[int], rows: list[SparseRow]) -> None:
        for row in rows:  # token labels, so Chapter 2 can name where a feature fires from the cache
            row.token_strs = decode_tokens(loaded.model.tokenizer, row.tokens)
        if cache:
            for j, row in zip(batch, rows):
                cache.put(texts[j], row)

    try:
        with demo_threads(loaded.is_demo):
            rows = aggregate_prompts(loaded, tokenized, batch_size, on_rows=store, progress=bar.update)
    finally:
        bar.close()
        if cache:  # also on Ctrl-C or an error: every finished prompt is kept
            cache.flush()
        seconds = round(time.perf_counter() - start, 4)
    return rows, seconds


def _warn_truncated(rows: list[SparseRow], texts: Sequence[str], labels: Sequence[str], info: ModelInfo) -> None:
    for i, row in enumerate(rows):
        if row.truncated:
            print(
                f"warning: a {labels[i]} prompt is longer than {info.context_note or f'{info.n_ctx} tokens'}; "
                f"only its first {info.n_ctx} tokens (BOS included) were encoded: {texts[i][:50]!r}...",
                file=sys.stderr,
            )
