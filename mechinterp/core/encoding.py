"""Turning text into SAE feature activations, fast and without wasting memory.

Three decisions make this both correct and quick:

* **Only as far as the hook.** The model runs up to the SAE's layer (``stop_at_layer``); for a
  ``hook_resid_pre`` SAE the hooked block itself is not run either, and for other hooks only that one
  hook is cached (``names_filter``). The blocks after the hook would not change the features.
* **Batched, right-padded.** Prompts are sorted by length and packed into batches. Padding goes on
  the right: with causal attention a real token never sees a later pad token, and positions are not
  shifted, so every real token's activations equal the one-prompt-at-a-time result.
* **Streaming aggregation.** Per-prompt summaries (max, mean, fired) are reduced batch by batch and
  stored sparsely; the tokens x features tensor exists for one batch at a time only.

The BOS position and padding are excluded from every statistic: GPT-2's BOS token carries a huge
residual norm and lights up the same features for every prompt.

The model and SAE may compute in bfloat16 or float16 (``--dtype``); every summary is reduced in
float32 all the same (a bfloat16 sum over a prompt's tokens would lose digits).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mechinterp.core.errors import EnvironmentProblem, UserError
from mechinterp.core.loading import Loaded
from mechinterp.core.summaries import PromptAggregates, SparseRow  # noqa: F401 - re-exported: encoding produces them

DEFAULT_BATCH_SIZE_CPU = 16
DEFAULT_BATCH_SIZE_GPU = 64  # when the free GPU memory is not known (no loaded model to size it by)
MAX_BATCH_SIZE_GPU = 512  # beyond this a GPU is already saturated by GPT-2-small-sized batches
GPU_MEMORY_SHARE = 0.5  # of the free memory, for one batch; the rest absorbs allocator slack and peaks


def default_batch_size(device: str, loaded: Loaded | None = None) -> int:
    """Large enough to keep the cores busy, small enough that one batch fits in memory.

    On a CPU: 16 (more prompts per batch no longer speed up the matmuls). On a CUDA GPU, with the
    loaded model and SAE given: as many prompts as fit into half of the GPU's free memory, at the
    longest prompt the run encodes (see :func:`batch_bytes_per_prompt`), between 1 and 512; without
    them: 64.
    """
    if not device.startswith("cuda"):
        return DEFAULT_BATCH_SIZE_CPU
    if loaded is None:
        return DEFAULT_BATCH_SIZE_GPU
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    fits = int(free * GPU_MEMORY_SHARE // batch_bytes_per_prompt(loaded))
    return max(1, min(MAX_BATCH_SIZE_GPU, fits))


def batch_bytes_per_prompt(loaded: Loaded, n_tokens: int | None = None) -> int:
    """A generous estimate of the memory one prompt of ``n_tokens`` (default: the context limit) takes
    in a batch while it is encoded.

    The largest live tensors are the SAE's pre-activations and features (``d_sae`` wide, two at once,
    in the SAE's dtype) and, in a block, the MLP's hidden layer, the residual stream copies and the
    attention scores and pattern (TransformerLens' path, taken when a chapter caches patterns).
    """
    cfg = loaded.model.cfg
    t = n_tokens or context_limit(loaded)[0]
    model_bytes = torch.finfo(cfg.dtype).bits // 8
    sae_bytes = torch.finfo(loaded.sae.sae.dtype).bits // 8
    sae = 3 * t * loaded.sae.d_sae * sae_bytes  # pre-activations, features, and the summary's mask/copies
    block = t * (4 * cfg.d_mlp + 8 * cfg.d_model) * model_bytes + 3 * cfg.n_heads * t * t * 4
    return int(sae + block)


@dataclass
class Tokenized:
    """Token ids for a list of texts, BOS included when the SAE was trained with it."""

    ids: list[list[int]]
    n_skip: int  # leading positions that are not text (1 for BOS, else 0)
    truncated: list[int] = field(default_factory=list)  # indices of texts cut to ``limit``
    limit: int = 0  # the most tokens encoded per text (BOS included); 0 = no limit recorded
    limit_reason: str = ""  # why, in words: whose context ``limit`` is
    full_lengths: list[int] = field(default_factory=list)  # tokens per text before any cut (BOS included)


def context_limit(loaded: Loaded) -> tuple[int, str]:
    """How many tokens (BOS included) a text may have, and whose context that is.

    An SAE is trained on sequences of a fixed length (``gpt2-small-res-jb``: 128 tokens). Beyond it,
    its features are off-distribution (SAELens' maintainers advise against using an SAE past its
    training context), even though the model itself accepts 1,024 tokens. So texts are cut at the
    smaller of the two contexts.
    """
    n_ctx = int(loaded.model.cfg.n_ctx)
    sae_ctx = loaded.sae.context_size
    if sae_ctx and sae_ctx < n_ctx:
        return sae_ctx, f"the {sae_ctx}-token context the SAE {loaded.sae.label} was trained on"
    return n_ctx, f"the model's context of {n_ctx} tokens"


def tokenize(loaded: Loaded, texts: Sequence[str]) -> Tokenized:
    """Tokenize like the SAE's training data: BOS first (if the SAE used it), cut at its training context."""
    tok = loaded.model.tokenizer
    bos = [tok.bos_token_id] if loaded.sae.prepend_bos else []
    limit, reason = context_limit(loaded)
    out: list[list[int]] = []
    truncated: list[int] = []
    lengths: list[int] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise UserError(f"text {i + 1} is not text ({type(text).__name__}); pass a string")
        ids = bos + tok.encode(text, add_special_tokens=False)
        lengths.append(len(ids))
        if len(ids) > limit:
            ids = ids[:limit]
            truncated.append(i)
        if len(ids) <= len(bos):
            raise UserError(f"text {i + 1} ({text!r}) has no tokens; remove it or add words")
        out.append(ids)
    return Tokenized(out, len(bos), truncated, limit, reason, lengths)


def truncation_note(tokenized: Tokenized, i: int) -> str:
    """One sentence on how text ``i`` was cut, naming its length and the limit (in text tokens and with BOS)."""
    skip = tokenized.n_skip
    full, limit = tokenized.full_lengths[i], tokenized.limit
    with_bos = (lambda n: f" ({n} with BOS)") if skip else (lambda n: "")
    return (f"has {full - skip} tokens{with_bos(full)}, more than {tokenized.limit_reason}; only its first "
            f"{limit - skip} tokens{with_bos(limit)} were encoded")


def warn_truncated(texts: Sequence[str], tokenized: Tokenized, n_ctx: int, labels: Sequence[str] | None = None) -> None:
    """Say which texts were cut, to what and why, so no one is surprised by a missing ending."""
    for i in tokenized.truncated:
        where = labels[i] if labels else f"text {i + 1}"
        print(f"warning: {where} {truncation_note(tokenized, i)} (starts {texts[i][:40]!r})", file=sys.stderr)


@torch.inference_mode()
def hook_activations(loaded: Loaded, tokens: torch.Tensor) -> torch.Tensor:
    """Residual stream at the SAE's hook, shape ``[batch, pos, d_model]``; runs no further than needed."""
    hook = loaded.sae.hook_name
    layer = loaded.sae.hook_layer
    if hook == f"blocks.{layer}.hook_resid_pre":
        # The input of block L is exactly what the model returns when stopped before block L, so
        # block L itself (1/9 of the work for blocks.8 of GPT-2) need not run at all.
        return loaded.model(tokens, stop_at_layer=layer)
    _, cache = loaded.model.run_with_cache(tokens, names_filter=hook, stop_at_layer=layer + 1, return_type=None)
    return cache[hook]


@torch.inference_mode()
def sae_encode(sae: Any, x: torch.Tensor) -> torch.Tensor:
    """``sae.encode(x)``: SAE features ``[..., d_sae]`` of activations ``x [..., d_in]``, in the SAE's dtype.

    For SAELens' ``StandardSAE`` (ReLU) the same sum is computed in one pass: the encoder bias is added
    inside the matrix product (``addmm``) and the ReLU is applied in place, where SAELens makes a
    product, then a biased copy, then a rectified copy of the ``[n, d_sae]`` result. That is a fifth of
    the encoder's time on a CPU, and the same numbers to float rounding (the input still goes through
    SAELens' own ``process_sae_in``: dtype, ``hook_sae_input``, normalisation, ``b_dec``). Any other
    SAE, and any hook on ``hook_sae_acts_pre``/``hook_sae_acts_post``, takes SAELens' ``encode``.

    In bfloat16 the two extra passes weigh more (the matmul is several times faster, the passes are
    not), and the fused sum is also closer to float32: ``addmm`` adds the bias to the float32
    accumulator and rounds once, where SAELens rounds the product and then the biased sum, so a
    pre-activation near zero can land on the wrong side of it. The result differs from SAELens' own
    bfloat16 encode by at most one bfloat16 rounding, and is at least as close to float32, on average
    and in which features fire (``tests/test_fast_attention.py``).
    """
    from sae_lens import StandardSAE

    from mechinterp.core.fast_attention import has_hooks

    if (
        type(sae) is not StandardSAE
        or type(sae.activation_fn) is not torch.nn.ReLU
        or sae.W_enc.dtype not in (torch.float32, torch.bfloat16, torch.float16)
        or has_hooks(sae.hook_sae_acts_pre, sae.hook_sae_acts_post)
    ):
        return sae.encode(x)
    sae_in = sae.process_sae_in(x)  # [..., d_in]
    pre = torch.addmm(sae.b_enc, sae_in.reshape(-1, sae_in.shape[-1]), sae.W_enc)  # [n, d_sae]
    return pre.relu_().view(*sae_in.shape[:-1], pre.shape[-1])


@torch.inference_mode()
def encode_tokens(loaded: Loaded, tokens: torch.Tensor) -> torch.Tensor:
    """SAE feature activations ``[batch, pos, d_sae]`` (float32, whatever the SAE computes in) for a
    batch of token ids ``[batch, pos]``."""
    return sae_encode(loaded.sae.sae, hook_activations(loaded, tokens.to(loaded.device))).float()


def length_order(tokenized: Tokenized) -> list[int]:
    """Text indices, longest first: batches of similar length waste little on padding, and the
    largest batch comes first, so a batch size too big for memory fails at once, not at the end."""
    return sorted(range(len(tokenized.ids)), key=lambda i: -len(tokenized.ids[i]))


def pad_batch(tokenized: Tokenized, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids ``[B, T]`` of the given texts, and ``valid [B, T]``: False at BOS and padding.

    Any id will do for padding: it sits to the right, where causal attention never lets a real token
    see it, and its positions are masked out of every summary.
    """
    ids = tokenized.ids
    longest = max(len(ids[i]) for i in rows)
    tokens = torch.zeros((len(rows), longest), dtype=torch.long)
    valid = torch.zeros((len(rows), longest), dtype=torch.bool)
    for r, i in enumerate(rows):
        tokens[r, : len(ids[i])] = torch.tensor(ids[i])
        valid[r, tokenized.n_skip : len(ids[i])] = True
    return tokens, valid


@torch.inference_mode()
def encode_positions(loaded: Loaded, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """SAE features ``[n_valid, d_sae]`` of the valid positions of ``tokens [B, T]``, row by row.

    Only text positions reach the SAE: BOS and padding are dropped before the (large) encoder matmul,
    which saves its cost on them and the memory of their 24,576-wide rows. The result is in the SAE's
    dtype (bfloat16 halves its memory); reduce it with :func:`summarise_positions`, which works in float32.
    """
    resid = hook_activations(loaded, tokens.to(loaded.device))
    return sae_encode(loaded.sae.sae, resid[valid.to(resid.device)])


def summarise_positions(feats: torch.Tensor, counts: Sequence[int]) -> list[SparseRow]:
    """Reduce per-position features ``[n_valid, d_sae]`` to one sparse row per prompt.

    ``counts[i]`` consecutive rows belong to prompt ``i`` (the row-major order of a valid mask).
    ``feats`` may be bfloat16 or float16: the maximum is exact in any dtype, and the mean is summed in
    float32 (over the features that fired only, so the cast costs little).
    """
    rows = []
    for segment in torch.split(feats, list(counts)):
        # amax, then argmax over the few hundred columns that fired: max(0) with indices over all
        # d_sae columns is ~6x slower.
        peak = segment.amax(0)
        idx = torch.nonzero(peak > 0).squeeze(-1)
        # index_select, not segment[:, idx]: the same gather, ~50x faster for a few hundred columns
        fired = segment.index_select(1, idx)  # [n_tokens, n_fired]
        rows.append(
            SparseRow(
                idx=idx.cpu().numpy().astype(np.int32),
                max=peak[idx].float().cpu().numpy(),
                mean=(fired.float().sum(0) / segment.shape[0]).cpu().numpy(),
                n_tokens=int(segment.shape[0]),
                peak=fired.argmax(0).cpu().numpy().astype(np.int32),  # ties: the first position with the maximum
            )
        )
    return rows


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, (RuntimeError, MemoryError)) and "out of memory" in str(err).lower()
    ) or isinstance(err, MemoryError)


def for_each_batch(
    tokenized: Tokenized,
    batch_size: int,
    process: Callable[[list[int], torch.Tensor, torch.Tensor], None],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Call ``process(indices, tokens [B, T], valid [B, T])`` for every batch, longest texts first.

    When a batch does not fit in memory, the batch size is halved once and the run continues from the
    batch that failed (finished batches are not redone); a second failure is reported with advice.
    """
    n = len(tokenized.ids)
    order = length_order(tokenized)
    done = 0
    retried = False
    while done < n:
        try:
            for start in range(done, n, batch_size):
                batch = order[start : start + batch_size]
                tokens, valid = pad_batch(tokenized, batch)
                process(batch, tokens, valid)
                done += len(batch)
                if progress is not None:
                    progress(len(batch))
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            if retried or batch_size == 1:
                raise EnvironmentProblem(
                    f"out of memory even at --batch-size {batch_size}; lower --batch-size further "
                    "or use a machine with more memory"
                ) from err
            retried = True
            batch_size = max(1, batch_size // 2)
            print(f"warning: out of memory; retrying with --batch-size {batch_size}", file=sys.stderr)


def aggregate_prompts(
    loaded: Loaded,
    tokenized: Tokenized,
    batch_size: int,
    on_rows: Callable[[list[int], list[SparseRow]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[SparseRow]:
    """Per-prompt sparse summaries for every tokenized prompt, in input order.

    ``on_rows`` sees each finished batch (the activation cache stores it there, so an interrupted run
    keeps what it finished). Out of memory: see :func:`for_each_batch`.
    """
    truncated = set(tokenized.truncated)
    results: list[SparseRow | None] = [None] * len(tokenized.ids)

    def process(batch: list[int], tokens: torch.Tensor, valid: torch.Tensor) -> None:
        feats = encode_positions(loaded, tokens, valid)
        rows = summarise_positions(feats, valid.sum(1).tolist())
        del feats
        for i, row in zip(batch, rows):
            row.truncated = i in truncated
            text_ids = tokenized.ids[i][tokenized.n_skip:]
            row.tokens = np.asarray(text_ids, dtype=np.int32)
            results[i] = row
        if on_rows is not None:
            on_rows(batch, rows)

    for_each_batch(tokenized, batch_size, process, progress)
    return [row for row in results if row is not None]
