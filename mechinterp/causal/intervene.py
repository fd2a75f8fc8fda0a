"""Causal tests of a feature (Chapter 4): ablation against matched controls, and steering.

**Ablation with the error term kept.** At the SAE's hook the residual stream ``x`` is split into the
SAE's reconstruction and what the SAE misses: ``x = decode(encode(x)) + error``. Ablating feature ``f``
replaces ``x`` by ``decode(a') + error`` where ``a'`` is ``encode(x)`` with ``a'[f] = 0``, i.e.
``x + decode(a') - decode(a)``. Keeping the error term means that nothing but the feature changes: where
the feature did not fire the model's input is bit-for-bit unchanged. Swapping in the bare
reconstruction instead would change every position by the SAE's reconstruction error, an effect that
has nothing to do with the feature. This is exactly what SAELens' ``HookedSAETransformer.run_with_saes(...,
use_error_term=True)`` computes with a hook zeroing the feature; the tests check the two agree.

**Controls.** Removing *any* active direction changes the output somewhat, more so for features that
fire often. So the feature's effect is compared with ablating random features that fire about as often
on the same prompts; only an effect outside that distribution says "this feature, specifically".

**Steering** adds ``coeff * typical_max * W_dec[f]`` to the residual stream at the hook, at every text
position (not BOS). ``typical_max`` is the feature's typical maximum activation on the prompts, so a
coefficient of 2 means "twice as strongly as it naturally fires", comparable across features.

**Families.** When the SAE splits a concept across several features (a family, e.g. ``(409, 501)``), ablating
one member removes only its part of the concept's words. Everything here also takes a family, the tuple
of its member ids: ablation zeroes every member at once; the controls are random sets of as many
features, each member's stand-in matched to that member's firing rate; steering adds
``coeff * sum(typical_max[m] * W_dec[m])``, every member at its own typical strength.

The BOS position and padding are excluded everywhere: interventions leave BOS untouched, and all
metrics average over the text positions of the prompts only.

:func:`test_feature` runs all of it for one feature the way Chapter 4 does, in one call, and returns one
typed :class:`FeatureTest` that the script prints and writes, and that a notebook can read directly::

    result = test_feature(loaded, 501, {"happy": [...], "baseline": [...]}, FeatureTestOptions(coeff=4.0))
    result                                   # one line: ablation against the controls, steering
    result.ablation.empirical_p("kl"), result.steering.delta_logp(4.0)

This module computes; :mod:`mechinterp.causal.report` turns a :class:`FeatureTest` into text, tables and
the figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mechinterp.causal.unembed import reused_unembed
from mechinterp.core.encoding import (
    Tokenized,
    default_batch_size,
    hook_activations,
    length_order,
    pad_batch,
    tokenize,
)
from mechinterp.core.errors import UserError
from mechinterp.core.features import (
    FAMILY_COLUMN,
    FeatureActivations,
    collect_feature_activations,
    family_activations,
    filter_note,
    label_of,
    name_of,
    typical_max_activation,
)
from mechinterp.core.loading import Loaded
from mechinterp.core.logits import family_logit_effects, logit_effects
from mechinterp.core.options import finite_float, option, positive_int
from mechinterp.core.progress import Log, silent
from mechinterp.core.prompts import PromptSets
from mechinterp.core.tokens import _show_bytes as show_bytes
from mechinterp.core.tokens import _token_bytes as token_bytes
from mechinterp.core.tokens import decode_token

HookFn = Callable[[torch.Tensor, object], torch.Tensor]
# What an intervention acts on: one feature, or a family (its member ids, ascending) all at once.
Target = int | tuple[int, ...]

MIN_CONTROLS = 20  # fewer random draws make "outside the control distribution" meaningless
DEFAULT_SWEEP = (-2.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0)  # steering coefficients, in typical max activations
# The Effect fields an ablation reports, in the order tables, figures and files list them.
ABLATION_MEASURES = ("delta_logp_targets", "delta_logodds_targets", "kl")


# --- target tokens ------------------------------------------------------------------------------------


def resolve_target_tokens(loaded: Loaded, words: Sequence[str]) -> list[int]:
    """Token ids for user-given target tokens; each must be one token.

    The leading-space form is tried first: mid-sentence, GPT-2 predicts ``' happy'`` (3772), not the
    word-start form ``'happy'`` (34191), so ``--target happy`` means ``' happy'``. A target that starts
    with a space, or that has no single-token leading-space form, is taken as written. The output names
    the token used.

    Raises:
        UserError: when a word is several tokens, naming the split.
    """
    tok = loaded.model.tokenizer
    ids = []
    for word in words:
        candidates = (word,) if word.startswith(" ") else (" " + word, word)
        for candidate in candidates:
            encoded = tok.encode(candidate, add_special_tokens=False)
            if len(encoded) == 1:
                ids.append(int(encoded[0]))
                break
        else:
            pieces = [tok.decode([t]) for t in tok.encode(word, add_special_tokens=False)]
            raise UserError(
                f"--target {word!r} is not a single token (the tokenizer splits it into {pieces}); "
                "pick a single-token word"
            )
    return list(dict.fromkeys(ids))


# --- running the model from the hook onwards ---------------------------------------------------------


@dataclass
class Batch:
    """Right-padded tokens of some prompts and which positions count (not BOS, not padding)."""

    tokens: torch.Tensor  # long [B, T]
    valid: torch.Tensor  # bool [B, T]


def make_batches(loaded: Loaded, tokenized: Tokenized, batch_size: int) -> list[Batch]:
    """Right-padded batches, longest first; with causal attention a pad never affects a real token."""
    order = length_order(tokenized)
    batches = []
    for start in range(0, len(order), batch_size):
        tokens, valid = pad_batch(tokenized, order[start : start + batch_size])
        batches.append(Batch(tokens.to(loaded.device), valid.to(loaded.device)))
    return batches


@torch.inference_mode()
def block_input(loaded: Loaded, tokens: torch.Tensor) -> torch.Tensor:
    """The residual stream entering the block that holds the SAE's hook, ``[B, T, d_model]``."""
    with torch.inference_mode():
        return loaded.model(tokens.to(loaded.device), stop_at_layer=loaded.sae.hook_layer)


def logits_from_hook(loaded: Loaded, resid: torch.Tensor, hook_fn: HookFn | None = None) -> torch.Tensor:
    """Logits ``[B, T, d_vocab]`` from the input of the SAE's block, optionally edited by ``hook_fn``.

    The layers before that block do not change under an intervention at the hook, so they run once per
    batch (:func:`block_input`) and each intervention reruns only the blocks from there on. ``hook_fn``
    is applied through TransformerLens' own hook point, the SAE's hook (``blocks.L.hook_resid_pre``,
    ``blocks.L.attn.hook_z``, ``blocks.L.hook_mlp_out`` ...), so it sees that hook's activation.
    """
    hooks = [(loaded.sae.hook_name, hook_fn)] if hook_fn is not None else []
    return loaded.model.run_with_hooks(resid, start_at_layer=loaded.sae.hook_layer, fwd_hooks=hooks)


def _check_hook(loaded: Loaded) -> None:
    if loaded.sae.hook_name not in loaded.model.hook_dict:
        raise UserError(f"{loaded.sae.label} reads {loaded.sae.hook_name}, which this model does not have")


# --- ablation ------------------------------------------------------------------------------------------


def ablation_hook(loaded: Loaded, feature: int | Sequence[int], n_skip: int) -> HookFn:
    """A hook that removes ``feature`` (or several features at once, e.g. a family's members) from the SAE
    reconstruction and keeps the SAE's error term.

    Returns ``x + decode(a') - decode(a)`` with ``a = encode(x)`` and ``a'`` = ``a`` with the feature(s)
    zeroed at the text positions (BOS, the first ``n_skip`` positions, is left alone).
    """
    sae = loaded.sae.sae
    columns = feature if isinstance(feature, int) else list(feature)

    def hook(resid: torch.Tensor, hook: object = None) -> torch.Tensor:
        acts = sae.encode(resid)  # [B, T, d_sae]
        ablated = acts.clone()
        ablated[:, n_skip:, columns] = 0.0
        return resid + (sae.decode(ablated) - sae.decode(acts)).to(resid.dtype)

    return hook


def steering_hook(direction: torch.Tensor, n_skip: int) -> HookFn:
    """A hook that adds ``direction`` (``[d_model]``) at every position except the first ``n_skip``.

    During cached generation the hook sees the prompt once (all positions, BOS first) and then one new
    token at a time (never BOS), so only calls that include position 0 skip the BOS positions.
    """

    def hook(resid: torch.Tensor, hook: object = None) -> torch.Tensor:
        resid = resid.clone()
        skip = n_skip if resid.shape[1] > 1 else 0
        resid[:, skip:] += direction.to(resid.dtype)
        return resid

    return hook


def target_scores(log_probs: torch.Tensor,
                  targets: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log P(T), log-odds of T)``, each ``[B, T]``, for the target set T (ids, or a long tensor of them on
    ``log_probs``' device) at each position.

    ``log P(T)`` is the log of the targets' total probability. It saturates at 0 once the targets
    hold nearly all the mass, and then hides any further change; the log-odds
    ``log P(T) - log(1 - P(T))`` equal ``log P(T)`` while P(T) is small but keep moving near 1.
    Both are computed from log-probabilities with ``logsumexp``, so neither underflows.
    """
    index = targets if isinstance(targets, torch.Tensor) else torch.tensor(list(targets), device=log_probs.device)
    log_p = log_probs.index_select(-1, index).logsumexp(-1)
    others = log_probs.index_fill(-1, index, float("-inf")).logsumexp(-1)  # log(1 - P(T))
    return log_p, log_p - others


@dataclass
class Effect:
    """Mean change of the next-token distribution over the text positions of some prompts."""

    delta_logp_targets: float  # mean over positions of log P(targets | edited) - log P(targets | clean)
    delta_logodds_targets: float  # the same for the log-odds of the targets
    kl: float  # mean over positions of KL(clean || edited), nats
    n_positions: int

    def __repr__(self) -> str:
        return (f"Effect(Δlog P(tgt) {self.delta_logp_targets:+.3g}, "
                f"Δlog-odds(tgt) {self.delta_logodds_targets:+.3g}, KL {self.kl:.3g} over {self.n_positions} positions)")


@dataclass
class CleanScores:
    """The clean run's mean target scores over the same positions."""

    logp_targets: float
    logodds_targets: float


@dataclass
class LocatedEffects:
    """An intervention's effect where the ablated feature fires, and one position later.

    Averaged over every text position, the effect of removing a feature that fires on 48 of 774 tokens
    is diluted sixteen-fold: it can look like nothing although it is large where the feature is active.

    Attributes:
        firing: the mean effect over the positions where the feature fires (``n_positions`` of them).
        next: the mean effect over the positions right after those (the next prediction, one token on).
        clean_firing: the clean run's mean target scores at the firing positions.
    """

    firing: Effect
    next: Effect
    clean_firing: CleanScores


# How many log-probabilities the per-intervention scores handle at once (2 MB of float32). With a
# 50,257-token vocabulary that is 10 rows of 200 kB: every temporary of the scores then stays in the CPU's
# cache and in reused allocations, where whole-batch temporaries (60+ MB each) stream through memory and
# fault in fresh pages at every step. A small vocabulary takes a whole batch at once (many tiny chunks
# would cost more in per-call overhead than they save). Each row's numbers are computed exactly as on the
# whole batch (see :func:`_per_row`), so the chunk size changes the speed only.
CHUNK_ELEMENTS = 2**19


@dataclass
class CleanBatch:
    """One batch's clean run at its text positions, computed once and shared by every intervention on it.

    Attributes:
        resid: ``[B, T, d_model]``, the input of the SAE's block (:func:`block_input`).
        rows: long ``[N]``, the flat index ``b * T + t`` of each valid position, in row-major order (the
            order of ``x[batch.valid]``).
        log_probs: ``[N, d_vocab]`` float32, the clean next-token log-probabilities there.
        probs: ``[N, d_vocab]``, ``log_probs.exp()``: the weights of KL(clean || edited), the same for
            every intervention, so computed once rather than once per intervention.
        logp, logodds: ``[N]``, the clean target scores (:func:`target_scores`).
    """

    resid: torch.Tensor
    rows: torch.Tensor
    log_probs: torch.Tensor
    probs: torch.Tensor
    logp: torch.Tensor
    logodds: torch.Tensor


def _per_row(fn: Callable[..., tuple[torch.Tensor, ...]], *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``fn(*rows)`` for row-wise ``fn`` (each output row depends on its input row only), bit for bit as
    if the rows were part of a bigger batch.

    PyTorch reduces each row of a batch serially, so a row's sum is the same in any batch of two or more
    rows; a lone row is the exception (with several threads, its sum is split between them and added
    in another order). A lone row is therefore computed as two copies of itself.
    """
    if rows[0].shape[0] != 1:
        return fn(*rows)
    return tuple(out[:1] for out in fn(*(r.expand(2, *r.shape[1:]) for r in rows)))


def _row_chunks(n: int, width: int) -> list[slice]:
    """Slices of ``range(n)`` of :data:`CHUNK_ELEMENTS` ``// width`` rows (at least 2); a last chunk of one row
    joins the one before it."""
    size = max(2, CHUNK_ELEMENTS // width)
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], n])]


def clean_batch(loaded: Loaded, batch: Batch, index: torch.Tensor) -> CleanBatch:
    """The clean run of ``batch`` at its valid positions (:class:`CleanBatch`); ``index``: the target ids."""
    resid = block_input(loaded, batch.tokens)  # [B, T, d_model]
    logits = logits_from_hook(loaded, resid)
    rows = batch.valid.flatten().nonzero().squeeze(1)
    log_probs = logits.reshape(-1, logits.shape[-1]).index_select(0, rows).float().log_softmax(-1)
    logp, logodds = _per_row(lambda lp: target_scores(lp, index), log_probs)
    return CleanBatch(resid, rows, log_probs, log_probs.exp(), logp, logodds)


def edited_scores(logits: torch.Tensor, clean: CleanBatch,
                  index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log P(targets), log-odds(targets), KL(clean || edited))``, each ``[N]``, of an edited run's
    ``logits [B, T, d_vocab]`` at the clean batch's valid positions.

    The numbers are those of ``logits.float().log_softmax(-1)`` over the whole batch, then
    :func:`target_scores` and ``(clean.exp() * (clean - edited)).sum(-1)``, taken at the valid positions:
    the same operations, row by row, a few rows at a time (:data:`CHUNK_ELEMENTS`), with the clean run's
    probabilities computed once per batch.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    n = clean.rows.shape[0]
    lp, lo, kl = (torch.empty(n, device=logits.device) for _ in range(3))

    def scores(edited: torch.Tensor, clean_lp: torch.Tensor, clean_p: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (*target_scores(edited, index), (clean_p * (clean_lp - edited)).sum(-1))

    for part in _row_chunks(n, flat.shape[-1]):
        edited = flat.index_select(0, clean.rows[part]).float().log_softmax(-1)
        lp[part], lo[part], kl[part] = _per_row(scores, edited, clean.log_probs[part], clean.probs[part])
    return lp, lo, kl


@torch.inference_mode()
def intervention_effects(
    loaded: Loaded,
    batches: Sequence[Batch],
    hooks: dict[str, HookFn],
    targets: Sequence[int],
    located: dict[str, Target] | None = None,
) -> tuple[dict[str, Effect], CleanScores, dict[str, LocatedEffects]]:
    """The effect of each intervention in ``hooks`` on the prompts, against the clean run.

    Args:
        located: for some of ``hooks``, the feature (or family) each one removes: their effects are also
            measured at the positions where that feature (any member of the family) fires, and at the
            next positions.

    Returns:
        ``({name: Effect}, clean scores, {name: LocatedEffects})``; the first two are means over the valid
        (non-BOS, non-pad) positions of all prompts.
    """
    _check_hook(loaded)
    located = located or {}
    sums = {name: np.zeros(3) for name in hooks}
    where_sums = {name: {w: np.zeros(4) for w in ("firing", "next")} for name in located}
    clean_where = {name: np.zeros(2) for name in located}
    clean_sums = np.zeros(2)
    n = 0
    # Every forward pass's logits are scored before the next pass runs, so one output buffer serves them all.
    with reused_unembed(loaded.model, reuse_output=True):
        for batch in batches:
            index = torch.tensor(list(targets), device=batch.tokens.device)
            clean = clean_batch(loaded, batch, index)
            # Every per-position tensor below holds the valid positions only, in the order of x[batch.valid].
            clean_sums += [float(clean.logp.sum()), float(clean.logodds.sum())]
            n += int(clean.rows.shape[0])
            masks = _located_masks(loaded, batch, located)
            for name, where in masks.items():
                fires = where["firing"]
                clean_where[name] += [float(clean.logp[fires].sum()), float(clean.logodds[fires].sum())]
            for name, fn in hooks.items():
                lp, lo, kl = edited_scores(logits_from_hook(loaded, clean.resid, fn), clean, index)
                d_lp, d_lo = lp - clean.logp, lo - clean.logodds
                sums[name] += [float(d_lp.sum()), float(d_lo.sum()), float(kl.sum())]
                for where, mask in masks.get(name, {}).items():
                    where_sums[name][where] += [float(d_lp[mask].sum()), float(d_lo[mask].sum()), float(kl[mask].sum()),
                                                float(mask.sum())]
    if n == 0:
        raise UserError("the prompts have no text tokens to measure on")
    effects = {k: Effect(v[0] / n, v[1] / n, v[2] / n, n) for k, v in sums.items()}

    def mean(v: np.ndarray) -> Effect:
        m = max(v[3], 1.0)
        return Effect(v[0] / m, v[1] / m, v[2] / m, int(v[3]))

    at = {
        name: LocatedEffects(mean(w["firing"]), mean(w["next"]),
                             CleanScores(*(clean_where[name] / max(w["firing"][3], 1.0))))
        for name, w in where_sums.items()
    }
    return effects, CleanScores(clean_sums[0] / n, clean_sums[1] / n), at


def _located_masks(loaded: Loaded, batch: Batch, located: dict[str, Target]) -> dict[str, dict[str, torch.Tensor]]:
    """For each located intervention, bool ``[N]`` masks over the batch's valid positions: where its
    feature (any member of its family) fires, and the positions right after those."""
    if not located:
        return {}
    acts = loaded.sae.sae.encode(hook_activations(loaded, batch.tokens))  # [B, T, d_sae]
    valid = batch.valid
    masks = {}
    for name, f in located.items():
        columns = [f] if isinstance(f, int) else list(f)
        fires = (acts[..., columns] > 0).any(-1) & valid
        after = torch.zeros_like(fires)
        after[:, 1:] = fires[:, :-1]
        masks[name] = {"firing": fires[valid], "next": (after & valid)[valid]}
    return masks


@torch.inference_mode()
def firing_rates(loaded: Loaded, batches: Sequence[Batch]) -> np.ndarray:
    """``[d_sae]`` fraction of the prompts' text tokens (BOS and padding excluded) where each feature fires."""
    fired = torch.zeros(loaded.sae.d_sae, dtype=torch.float64)
    n = 0
    for batch in batches:
        acts = loaded.sae.sae.encode(hook_activations(loaded, batch.tokens))
        fired += ((acts > 0) & batch.valid.unsqueeze(-1)).sum((0, 1)).double().cpu()
        n += int(batch.valid.sum())
    return (fired / max(n, 1)).numpy()


@dataclass
class Controls:
    """The random stand-ins a feature's (or a family's) ablation is compared with.

    Attributes:
        features: the control features; for a family, random sets of as many features (ascending ids).
        pool_size: features the controls were drawn from (for a family, the members' pools together).
        rate_low, rate_high: the firing-rate range of the pool(s).
        pools: for a family, per member: (its pool's size, lowest rate, highest rate); empty for a feature.
    """

    features: list[Target]
    pool_size: int  # features the controls were drawn from
    rate_low: float  # firing-rate range of the pool
    rate_high: float
    pools: dict[int, tuple[int, float, float]] = field(default_factory=dict)


def rate_pool(rates: np.ndarray, feature: int, n: int, exclude: Sequence[int] = (), factor: float = 2.0) -> np.ndarray:
    """The features a control for ``feature`` is drawn from: those whose firing rate is within ``factor``
    of its own, or, when fewer than ``2 n`` are that close, the ``2 n`` nearest in log firing rate (so the
    draw of ``n`` stays random rather than exhaustive). Never ``feature`` itself, nor ``exclude``.

    Raises:
        UserError: when it never fires, or fewer than ``n`` other features fire at all on these prompts.
    """
    rate = float(rates[feature])
    skip = {feature, *exclude}
    candidates = np.array([i for i in np.nonzero(rates > 0)[0] if i not in skip])
    if rate <= 0:
        raise UserError(f"feature {feature} never fires on these prompts, so there is nothing to match controls to")
    if len(candidates) < n:
        raise UserError(
            f"only {len(candidates)} other features fire on these prompts, fewer than the {n} controls asked "
            "for; use more prompts or fewer --n-controls"
        )
    distance = np.abs(np.log(rates[candidates]) - np.log(rate))
    pool = candidates[distance <= np.log(factor)]
    if len(pool) < 2 * n:
        pool = candidates[np.argsort(distance, kind="stable")[: 2 * n]]
    return pool


def matched_controls(rates: np.ndarray, feature: int, n: int, seed: int, factor: float = 2.0) -> Controls:
    """``n`` random features whose firing rate is within ``factor`` of the feature's (on the same prompts),
    drawn from :func:`rate_pool`.

    Raises:
        UserError: when fewer than ``n`` other features fire at all on these prompts.
    """
    pool = rate_pool(rates, feature, n, factor=factor)
    chosen = np.random.default_rng(seed).choice(pool, size=n, replace=False)
    pool_rates = rates[pool]
    return Controls(sorted(int(c) for c in chosen), len(pool), float(pool_rates.min()), float(pool_rates.max()))


def matched_control_sets(rates: np.ndarray, members: Sequence[int], n: int, seed: int,
                         factor: float = 2.0) -> Controls:
    """``n`` random sets of ``len(members)`` features: a family's controls.

    Each member's stand-in in a set is drawn from that member's :func:`rate_pool` (never a member), as a
    single feature's controls are; a member's ``n`` stand-ins differ from one another, and a set never
    holds one feature twice. So a set removes about as much firing, member by member, as the family.
    A member that never fires on these prompts (a split concept's members can fire in different
    groups) is matched by features that never fire on them either: removing either changes nothing.

    Raises:
        UserError: when no member fires, or too few features fire (or stay silent) to fill the sets.
    """
    rng = np.random.default_rng(seed)
    if not any(rates[m] > 0 for m in members):
        raise UserError(f"no member of {label_of(members)} fires on these prompts, so there is nothing to match "
                        "controls to")
    silent = np.array([i for i in np.nonzero(rates <= 0)[0] if i not in set(members)], dtype=np.int64)
    pools = {m: rate_pool(rates, m, n, exclude=members, factor=factor) if rates[m] > 0 else silent for m in members}
    sets: list[list[int]] = [[] for _ in range(n)]
    for pool in pools.values():
        order = [int(c) for c in rng.permutation(pool)]
        for chosen in sets:
            pick = next((c for c in order if c not in chosen), None)
            if pick is None:
                raise UserError(f"too few features fire on these prompts to draw {n} random sets of {len(members)} "
                                "distinct features; use more prompts or fewer --n-controls")
            order.remove(pick)
            chosen.append(pick)
    every = np.unique(np.concatenate(list(pools.values())))
    return Controls([tuple(sorted(c)) for c in sets], len(every), float(rates[every].min()), float(rates[every].max()),
                    {m: (len(p), float(rates[p].min()), float(rates[p].max())) for m, p in pools.items()})


@dataclass
class AblationResult:
    """A feature's (or a family's) ablation on one group's prompts, beside its controls'.

    ``rate`` and ``control_rates``: the fraction of text tokens where the feature fires (for a family or a
    control set: where any member fires).
    """

    feature: Target
    rate: float
    effect: Effect
    controls: Controls
    control_rates: list[float]
    control_effects: list[Effect]
    clean: CleanScores
    located: LocatedEffects | None = None  # the feature's effect where it fires, and one position later
    control_located: list[LocatedEffects] = field(default_factory=list)  # each control at its own firing positions

    def __repr__(self) -> str:
        return f"AblationResult({label_of(self.feature)}: {self.brief()})"

    def brief(self) -> str:
        """The ablation in one line: the log-odds effect (per text token, and where the feature fires) and
        how it ranks among the controls."""
        n, which = len(self.control_effects), "delta_logodds_targets"
        located = self.located.firing if self.located is not None else None
        where = (f", {located.delta_logodds_targets:+.3g} where it fires ({located.n_positions} positions)"
                 if located is not None and located.n_positions else "")
        return (f"Δlog-odds(tgt) {self.effect.delta_logodds_targets:+.3g} per text token{where}, "
                f"KL {self.effect.kl:.3g}; |Δlog-odds| beats {n - self.n_controls_at_least(which)}/{n} controls, "
                f"p={self.empirical_p(which):.2g}")

    def _values(self, which: str) -> tuple[float, np.ndarray]:
        return getattr(self.effect, which), np.array([getattr(e, which) for e in self.control_effects])

    def n_controls_at_least(self, which: str) -> int:
        """Controls whose |effect| is at least the feature's (``which``: an :class:`Effect` field name)."""
        value, ctrl = self._values(which)
        return int((np.abs(ctrl) >= abs(value)).sum())

    def empirical_p(self, which: str) -> float:
        """(1 + controls at least as large) / (1 + controls): the permutation-style p-value."""
        return (1 + self.n_controls_at_least(which)) / (1 + len(self.control_effects))

    def located_controls(self, which: str) -> np.ndarray:
        """Each control's effect where it fires (controls that never fire on these prompts left out)."""
        return np.array([getattr(c.firing, which) for c in self.control_located if c.firing.n_positions])

    def located_empirical_p(self, which: str) -> float | None:
        """The empirical p of the effect where the feature fires, against each control's effect where that
        control fires; None when the feature, or every control, never fires here."""
        ctrl = self.located_controls(which)
        if self.located is None or not self.located.firing.n_positions or not len(ctrl):
            return None
        value = getattr(self.located.firing, which)
        return (1 + int((np.abs(ctrl) >= abs(value)).sum())) / (1 + len(ctrl))

    def z_score(self, which: str) -> float:
        value, ctrl = self._values(which)
        sd = float(ctrl.std(ddof=1)) if len(ctrl) > 1 else 0.0
        return (value - float(ctrl.mean())) / sd if sd > 0 else float("nan")

    def to_dict(self) -> dict:
        """The numbers as ``MI6_<id>.json`` stores them under "ablation" (every measure of ABLATION_MEASURES)."""
        keys = ABLATION_MEASURES
        return {
            "n_positions": self.effect.n_positions,
            "clean_mean_logp_targets": self.clean.logp_targets,
            "clean_mean_logodds_targets": self.clean.logodds_targets,
            "feature": {"firing_rate": self.rate, **{k: getattr(self.effect, k) for k in keys}},
            "control_effects": [{k: getattr(e, k) for k in keys} for e in self.control_effects],
            "controls": {"features": [c if isinstance(c, int) else list(c) for c in self.controls.features],
                         "pool_size": self.controls.pool_size,
                         "pool_rate_range": [self.controls.rate_low, self.controls.rate_high]}
            | ({"pool_by_member": {str(m): {"pool_size": size, "pool_rate_range": [low, high]}
                                   for m, (size, low, high) in self.controls.pools.items()}}
               if self.controls.pools else {}),
            "controls_at_least_as_large": {k: self.n_controls_at_least(k) for k in keys},
            "empirical_p": {k: self.empirical_p(k) for k in keys},
            **({} if self.located is None else {"at_firing_positions": {
                "n_positions": self.located.firing.n_positions,
                "clean_mean_logp_targets": self.located.clean_firing.logp_targets,
                "feature": {k: getattr(self.located.firing, k) for k in keys},
                "controls_median": {k: float(np.median([getattr(c.firing, k) for c in self.control_located]))
                                    for k in keys} if self.control_located else None,
                "empirical_p": {k: self.located_empirical_p(k) for k in keys},
            }, "at_next_positions": {
                "n_positions": self.located.next.n_positions,
                "feature": {k: getattr(self.located.next, k) for k in keys},
            }}),
        }


def run_ablation(
    loaded: Loaded,
    batches: Sequence[Batch],
    n_skip: int,
    feature: Target,
    targets: Sequence[int],
    n_controls: int,
    seed: int,
    rates: np.ndarray | None = None,
) -> AblationResult:
    """Ablate ``feature`` and ``n_controls`` firing-rate-matched random features on the prompts.

    A family (a tuple of member ids) is ablated all at once, against random sets of as many features
    (:func:`matched_control_sets`).
    """
    rates = firing_rates(loaded, batches) if rates is None else rates
    if isinstance(feature, int):
        controls = matched_controls(rates, feature, n_controls, seed)
    else:
        controls = matched_control_sets(rates, feature, n_controls, seed)
    names = [f"control {name_of(c)}" for c in controls.features]
    hooks = {"feature": ablation_hook(loaded, feature, n_skip)}
    hooks |= {name: ablation_hook(loaded, c, n_skip) for name, c in zip(names, controls.features)}
    located = {"feature": feature} | dict(zip(names, controls.features))
    effects, clean, at = intervention_effects(loaded, batches, hooks, targets, located)

    def rate(what: Target, name: str) -> float:
        # A set fires where any of its features fires: counted during the run, at the located positions.
        if isinstance(what, int):
            return float(rates[what])
        return at[name].firing.n_positions / max(effects[name].n_positions, 1)

    return AblationResult(
        feature=feature,
        rate=rate(feature, "feature"),
        effect=effects["feature"],
        controls=controls,
        control_rates=[rate(c, name) for name, c in zip(names, controls.features)],
        control_effects=[effects[name] for name in names],
        clean=clean,
        located=at["feature"],
        control_located=[at[name] for name in names],
    )


# --- steering ---------------------------------------------------------------------------------------------


def steering_direction(loaded: Loaded, feature: Target, coeff: float,
                       typical_max: float | Sequence[float]) -> torch.Tensor:
    """``coeff * typical_max * W_dec[feature]`` in the shape of the SAE's hook activation.

    ``[d_model]`` for the residual stream; ``[n_heads, d_head]`` for ``hook_z``, whose SAE rows are all
    heads' outputs side by side (SAELens flattens them the same way). For a family (a tuple of member
    ids, ``typical_max`` one value per member): ``coeff * sum(typical_max[m] * W_dec[m])``.
    """
    members = [feature] if isinstance(feature, int) else list(feature)
    scales = [typical_max] if isinstance(feature, int) else list(typical_max)
    w_dec = loaded.sae.sae.W_dec
    row = (coeff * scales[0]) * w_dec[members[0]].detach().clone()
    for member, scale in zip(members[1:], scales[1:]):
        row = row + (coeff * scale) * w_dec[member].detach()
    if loaded.sae.hook_name.endswith("hook_z"):
        return row.reshape(loaded.model.cfg.n_heads, loaded.model.cfg.d_head)
    return row


def steering_curve(
    loaded: Loaded,
    batches: Sequence[Batch],
    n_skip: int,
    feature: Target,
    coeffs: Sequence[float],
    typical_max: float | Sequence[float],
    targets: Sequence[int],
) -> dict[str, list[float]]:
    """For each coefficient: mean log P(targets), mean log-odds(targets) and mean KL(clean || steered).

    A family is steered with every member at once (:func:`steering_direction`)."""
    hooks = {
        f"{c!r}": steering_hook(steering_direction(loaded, feature, c, typical_max), n_skip) for c in coeffs
    }
    effects, clean, _ = intervention_effects(loaded, batches, hooks, targets)
    picked = [effects[f"{c!r}"] for c in coeffs]
    return {
        "logp_targets": [clean.logp_targets + e.delta_logp_targets for e in picked],
        "logodds_targets": [clean.logodds_targets + e.delta_logodds_targets for e in picked],
        "kl": [e.kl for e in picked],
    }


@dataclass
class Generation:
    prompt: str
    mode: str  # "greedy" or "sampled (seed N)"
    clean: str
    steered: str


def continuation_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Generated tokens as one text: their bytes joined and decoded together, so a character split across
    byte tokens comes out whole, and a stray byte that is no character is shown as ``<0xE2>`` (never as
    the replacement character, which would hide which byte it was)."""
    pieces = [token_bytes(tokenizer, int(t)) for t in ids]
    if any(p is None for p in pieces):  # not a byte-level vocabulary: its own decoder knows best
        return tokenizer.decode(list(ids))
    return show_bytes(b"".join(pieces))


@torch.inference_mode()
def generate_side_by_side(
    loaded: Loaded,
    prompt_ids: Sequence[Sequence[int]],
    prompts: Sequence[str],
    n_skip: int,
    direction: torch.Tensor,
    max_new_tokens: int,
    seed: int,
    temperature: float = 1.0,
) -> list[Generation]:
    """Clean and steered continuations of each prompt, greedy and sampled with the same seed.

    Uses TransformerLens' ``generate`` with the steering hook attached through ``model.hooks``. Before
    each sampled run the global torch generator is reset to ``seed``, so the clean and the steered run
    draw the same random numbers and differ only by the steering.
    """
    _check_hook(loaded)
    model = loaded.model
    tok = model.tokenizer
    hook = steering_hook(direction, n_skip)
    out = []

    def run(ids: torch.Tensor, sample: bool, steer: bool) -> str:
        if sample:
            torch.manual_seed(seed)
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=sample, verbose=False, stop_at_eos=True)
        if sample:
            kwargs["temperature"] = temperature
        if steer:
            with model.hooks(fwd_hooks=[(loaded.sae.hook_name, hook)]):
                result = model.generate(ids, **kwargs)
        else:
            result = model.generate(ids, **kwargs)
        return continuation_text(tok, result[0, ids.shape[1] :].tolist())

    with reused_unembed(model):  # the transposed unembedding made once, not once per generated token
        for text, ids_list in zip(prompts, prompt_ids):
            ids = torch.tensor([list(ids_list)], device=loaded.device)
            for sample in (False, True):
                mode = f"sampled (seed {seed}, T={temperature:g})" if sample else "greedy"
                out.append(Generation(text, mode, run(ids, sample, False), run(ids, sample, True)))
    return out


# --- one feature's causal test, as Chapter 4 runs it ------------------------------------------------------


@dataclass
class FeatureTestOptions:
    """How Chapter 4 tests a feature. Each field is also the script's flag of the same name (``--n-controls``),
    in the ``--help`` section its ``group`` names; ``target`` and ``steer_prompt`` are singular like their
    repeatable flags (``--target hooray --target sunshine``).

    Targets are single tokens (a leading space is tried first); without them the feature's ``n_targets``
    top promoted tokens (``W_dec[f] @ W_U``) are tracked. Steering coefficients are in units of the
    feature's typical max activation; the curve's coefficients are ``sweep`` plus 0 and ``coeff``.
    """

    group: str | None = option(
        None, "the group whose prompts the ablation runs on (default: the feature's group in --from-results, "
        "else the group where it fires most often)", group="prompts")
    max_prompts: int = option(64, "use at most this many prompts per group (the first ones in the file)",
                              type=positive_int, group="prompts")
    batch_size: int | None = option(None, "prompts per forward pass (default: 16 on CPU, 64 on GPU)",
                                    type=positive_int, group="prompts")
    target: tuple[str, ...] = option(
        (), "a target token whose log-probability is tracked; repeat for several (default: the feature's top "
        "promoted tokens)", action="append", metavar="TOKEN", cli_default=[], group="ablation")
    n_targets: int = option(3, "without --target: how many of the feature's top promoted tokens to track",
                            type=positive_int, group="ablation")
    n_controls: int = option(
        MIN_CONTROLS, f"random firing-rate-matched features to ablate as controls (at least {MIN_CONTROLS})",
        type=positive_int, group="ablation")
    coeff: float = option(
        2.0, "steering strength for the generations, in units of the feature's typical max activation",
        type=finite_float, group="steering")
    sweep: tuple[float, ...] = option(
        DEFAULT_SWEEP, "coefficients for the steering curve (same units as --coeff)", type=finite_float,
        nargs="+", metavar="C", cli_default=list(DEFAULT_SWEEP), group="steering")
    max_act: float | None = option(
        None, "use this as the typical max activation instead of measuring it on the prompts", type=finite_float,
        group="steering")
    steer_group: str | None = option(None, "group whose prompts are steered (default: --baseline)", group="steering")
    steer_prompt: tuple[str, ...] = option(
        (), "a prompt to continue clean and steered; repeat for several (default: the first --n-generate "
        "prompts of the steering group)", action="append", metavar="TEXT", cli_default=[], group="steering")
    n_generate: int = option(3, "how many prompts to continue", type=positive_int, group="steering")
    max_new_tokens: int = option(12, "tokens generated per continuation", type=positive_int, group="steering")
    temperature: float = option(1.0, "sampling temperature of the sampled runs", type=finite_float,
                                group="steering")
    # argparse's own section ("options"): the seed serves the ablation and the steering alike.
    seed: int = option(0, "seed for the control draw and the sampled generations", type=int, group="options")

    def __post_init__(self) -> None:
        # Flags arrive as lists; tuples keep the options hashable and equal however they were built.
        self.target, self.steer_prompt, self.sweep = tuple(self.target), tuple(self.steer_prompt), tuple(self.sweep)
        if self.n_controls < MIN_CONTROLS:
            raise UserError(f"n_controls must be at least {MIN_CONTROLS}: with fewer draws the control "
                            "distribution says little")
        if self.temperature <= 0:
            raise UserError("temperature must be above 0 (the greedy runs already show temperature 0)")
        if self.max_act is not None and self.max_act <= 0:
            raise UserError("max_act must be above 0")
        if min(self.n_targets, self.n_generate, self.max_new_tokens, self.max_prompts, self.batch_size or 1) < 1:
            raise UserError("n_targets, n_generate, max_new_tokens, max_prompts and batch_size must be at least 1")

    @property
    def coeffs(self) -> list[float]:
        """The steering curve's coefficients: the sweep plus 0 (the clean run) and ``coeff``, sorted."""
        return sorted(set(self.sweep) | {0.0, self.coeff})


class GroupBatches:
    """The prompt groups a feature is tested on, prepared once for every feature tested on them.

    Batching a group, measuring every feature's firing rate on it (one encoder pass over its prompts) and
    collecting the tested features' activations over all prompts happen on first use, once, not once per
    feature.

    Args:
        groups: prompts per group name, in the order tables list the groups.
        batch_size: prompts per forward pass.
        baseline: the neutral group: the default steering group, never the ablation group unless alone.
    """

    def __init__(self, loaded: Loaded, groups: Mapping[str, Sequence[str]], batch_size: int,
                 baseline: str = "baseline"):
        self.loaded = loaded
        self.groups = {g: list(p) for g, p in groups.items()}
        self.batch_size = batch_size
        self.baseline = baseline
        self._batches: dict[str, list[Batch]] = {}
        self._rates: dict[str, np.ndarray] = {}
        self._tokenized: Tokenized | None = None
        self._activations: FeatureActivations | None = None

    @classmethod
    def of(cls, loaded: Loaded, prompts: PromptSets | Mapping[str, Sequence[str]],
           options: FeatureTestOptions) -> GroupBatches:
        """The first ``options.max_prompts`` prompts of each group, ``options.batch_size`` per forward pass
        (default: by device). A plain mapping's baseline is the group called "baseline"."""
        groups = prompts.groups if isinstance(prompts, PromptSets) else prompts
        baseline = prompts.baseline if isinstance(prompts, PromptSets) else "baseline"
        return cls(loaded, {g: list(p)[: options.max_prompts] for g, p in groups.items()},
                   options.batch_size or default_batch_size(loaded.device), baseline)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{g} {len(p)}" for g, p in self.groups.items())
        return f"GroupBatches({sizes}; baseline {self.baseline!r}, batch size {self.batch_size})"

    @property
    def texts(self) -> list[str]:
        """Every prompt, group after group."""
        return [t for p in self.groups.values() for t in p]

    @property
    def labels(self) -> list[str]:
        """The group of each prompt of :attr:`texts`."""
        return [g for g, p in self.groups.items() for _ in p]

    def check(self, group: str, what: str) -> None:
        """Raises UserError naming the groups when ``group`` (described as ``what``) is not one of them."""
        if group not in self.groups:
            raise UserError(f"{what} {group!r} is not one of the prompt groups: {', '.join(self.groups)}")

    def tokenized(self) -> Tokenized:
        """Every prompt of :attr:`texts`, tokenized (once)."""
        if self._tokenized is None:
            self._tokenized = tokenize(self.loaded, self.texts)
        return self._tokenized

    def activations(self, features: Sequence[int]) -> FeatureActivations:
        """The activations of ``features`` over every prompt, labelled by group: encoded once for all of
        them, and reused by a later call for features among them."""
        if self._activations is None or not set(features) <= set(self._activations.features):
            self._activations = collect_feature_activations(self.loaded, self.texts, self.labels, list(features),
                                                            self.batch_size, self.tokenized())
        return self._activations

    def batches(self, group: str) -> list[Batch]:
        if group not in self._batches:
            self._batches[group] = make_batches(self.loaded, tokenize(self.loaded, self.groups[group]), self.batch_size)
        return self._batches[group]

    def firing_rates(self, group: str) -> np.ndarray:
        """``[d_sae]`` fraction of the group's text tokens where each feature fires (see :func:`firing_rates`)."""
        if group not in self._rates:
            self._rates[group] = firing_rates(self.loaded, self.batches(group))
        return self._rates[group]


@dataclass
class SteeringCurve:
    """Teacher-forced steering on the steering group's prompts, one value per coefficient.

    Every value is a mean over the prompts' text positions (BOS and padding excluded).
    """

    coeffs: list[float]  # in units of the feature's typical max activation; includes 0 (the clean run)
    logp_targets: list[float]  # mean log P(targets)
    logodds_targets: list[float]  # mean log-odds of the targets
    kl: list[float]  # mean KL(clean || steered), nats

    def __repr__(self) -> str:
        points = ", ".join(f"{c:g}: {lp:.3g}" for c, lp in zip(self.coeffs, self.logp_targets))
        return f"SteeringCurve(mean log P(tgt) by coefficient {{{points}}}; KL up to {max(self.kl):.3g})"

    def columns(self) -> dict[str, list[float]]:
        """``{"logp_targets", "logodds_targets", "kl"}``, as :func:`steering_curve` returns them."""
        return {"logp_targets": self.logp_targets, "logodds_targets": self.logodds_targets, "kl": self.kl}

    def delta_logp(self, coeff: float) -> float:
        """Mean log P(targets) at ``coeff`` minus the clean run's (``coeff`` must be on the curve)."""
        return self.logp_targets[self.coeffs.index(coeff)] - self.logp_targets[self.coeffs.index(0.0)]


@dataclass
class FeatureTest:
    """Does one feature matter? Its ablation against matched controls, its steering curve and generations.

    A family's test (``feature`` a tuple of member ids) has the same parts: the family ablated all at once
    against random sets of as many features, and steered with every member at once.

    Attributes:
        feature: the feature's id, or a family's member ids (ascending); :attr:`label` names either.
        title: the model, SAE and hook, as figure titles name them.
        target_ids, target_tokens: the tracked target tokens; ``target_how`` says how they were chosen.
        typical_max: the feature's typical max activation (the unit of every steering coefficient);
            ``typical_max_how`` says where it came from. For a family, one per member.
        firing_rate_by_group: fraction of each group's text tokens where the feature (any member) fires.
        ablation_group: the group whose prompts it is ablated on (``ablation_group_how``: why that one),
            ``n_ablation_prompts`` of them.
        ablation: None when the feature never fires on those prompts (removing it would change nothing).
        steer_group: the group whose prompts are steered.
        steering: the steering curve; ``decoder_norm`` = ``|W_dec[f]|`` (for a family, one per member), and
            coefficient c adds a vector of norm ``|c| * unit_norm``.
        generation_coeff: the coefficient of the steered generations, ``max_new_tokens`` tokens each.
        generations: clean and steered continuations, greedy and sampled, for each prompt.
        filtered: what every number leaves out, in words.
        seconds: wall-clock seconds of the "ablation" and "steering" stages (not part of :meth:`to_dict`).
        unit_norm: the norm of what coefficient 1 adds: ``typical_max * |W_dec[f]|``, for a family
            ``|sum(typical_max[m] * W_dec[m])|``.
    """

    feature: Target
    title: str
    target_ids: list[int]
    target_tokens: list[str]
    target_how: str
    typical_max: float | list[float]
    typical_max_how: str
    firing_rate_by_group: dict[str, float]
    ablation_group: str
    ablation_group_how: str
    n_ablation_prompts: int
    ablation: AblationResult | None
    steer_group: str
    steering: SteeringCurve
    decoder_norm: float | list[float]
    generation_coeff: float
    max_new_tokens: int
    generations: list[Generation]
    filtered: str
    seconds: dict[str, float] = field(default_factory=dict)
    unit_norm: float = 0.0

    @property
    def label(self) -> str:
        """``"#501"``, or for a family ``"#409+#501"``."""
        return label_of(self.feature)

    @property
    def name(self) -> str:
        """``"501"``, or for a family ``"409+501"``: how its files are named."""
        return name_of(self.feature)

    @property
    def members(self) -> list[int]:
        """The features it ablates and steers: the feature itself, or the family's members."""
        return [self.feature] if isinstance(self.feature, int) else list(self.feature)

    def __repr__(self) -> str:
        ablation = self.ablation.brief() if self.ablation is not None else "skipped, it never fires there"
        coeff = self.generation_coeff
        kl = self.steering.kl[self.steering.coeffs.index(coeff)]
        targets = ", ".join(repr(t) for t in self.target_tokens[:4]) + (", ..." if len(self.target_tokens) > 4 else "")
        typical = (f"{self.typical_max:.3g}" if isinstance(self.typical_max, float)
                   else ", ".join(f"{t:.3g}" for t in self.typical_max))
        return (f"FeatureTest({self.label} ablated on {self.ablation_group!r}: {ablation}; steered ×{coeff:g} on "
                f"{self.steer_group!r}: Δlog P(tgt) {self.steering.delta_logp(coeff):+.3g}, KL {kl:.3g}; "
                f"targets {targets}; typical max {typical})")

    def to_dict(self) -> dict:
        """Everything the test measured, as ``MI6_<id>.json`` stores it (JSON-ready: no tensors, no numpy).

        A family's: ``feature`` is its name (``"409+501"``), ``typical_max_activation`` one value per member,
        and ``members`` lists the member ids."""
        return {
            "feature": self.feature if isinstance(self.feature, int) else self.name,
            "title": self.title,
            "targets": self.target_tokens,
            "target_ids": self.target_ids,
            "typical_max_activation": self.typical_max,
            "typical_max_how": self.typical_max_how,
            "firing_rate_by_group": self.firing_rate_by_group,
            "ablation_group": self.ablation_group,
            "steer_group": self.steer_group,
            "filtered": self.filtered,
            "ablation": None if self.ablation is None else self.ablation.to_dict(),
            "steering": {"coeffs": self.steering.coeffs, "mean_logp_targets": self.steering.logp_targets,
                         "mean_logodds_targets": self.steering.logodds_targets, "mean_kl": self.steering.kl,
                         "generation_coeff": self.generation_coeff},
        } | ({} if isinstance(self.feature, int) else {"members": self.members})


def intervention_note(fa: FeatureActivations) -> str:
    """What the statistics leave out (:func:`filter_note`), plus how interventions treat BOS."""
    return filter_note(fa) + "; interventions leave the BOS position untouched"


def _choose_targets(loaded: Loaded, feature: Target, typical: float | list[float],
                    options: FeatureTestOptions) -> tuple[list[int], str]:
    if options.target:
        return resolve_target_tokens(loaded, options.target), "given with --target"
    if isinstance(feature, int):
        promoted, _ = logit_effects(loaded, feature, options.n_targets)
        return [x.token_id for x in promoted], f"its top {len(promoted)} promoted tokens (W_dec[f] @ W_U)"
    # A family writes through every member: the tokens its steering direction promotes most.
    promoted, _ = family_logit_effects(loaded, dict(zip(feature, typical)), options.n_targets)
    return [x.token_id for x in promoted], (f"its top {len(promoted)} promoted tokens "
                                            "(Σ typical max × W_dec[m] @ W_U over its members)")


def _typical_max(fa: FeatureActivations, feature: Target, options: FeatureTestOptions) -> tuple[float | list[float], str]:
    """The unit of the steering coefficients and where it came from; for a family, one per member."""
    members = [feature] if isinstance(feature, int) else list(feature)
    if options.max_act is not None:
        return (options.max_act if isinstance(feature, int) else [options.max_act] * len(members),
                "given with --max-act" + ("" if isinstance(feature, int) else ", for every member"))
    measured = [typical_max_activation(fa, m) for m in members]
    for member, (_, n_fired) in zip(members, measured):
        if n_fired == 0:
            of = "" if isinstance(feature, int) else f" (of the family {label_of(feature)})"
            raise UserError(
                f"feature {member}{of} never fires on these prompts, so it has no typical max activation to "
                "scale the steering by; add prompts where it fires or pass --max-act VALUE"
            )
    if isinstance(feature, int):
        typical, n_fired = measured[0]
        return typical, f"median of the per-prompt max over the {n_fired} of {len(fa.texts)} prompts where it fires"
    counts = ", ".join(f"#{m} {n}" for m, (_, n) in zip(members, measured))
    return [t for t, _ in measured], (f"each member's median of the per-prompt max over the prompts where it fires "
                                      f"({counts} of {len(fa.texts)})")


def _ablation_group(prompts: GroupBatches, rate_by_group: dict[str, float], options: FeatureTestOptions,
                    group: str | None, group_how: str) -> tuple[str, str]:
    """The group to ablate on and why: ``options.group``, else ``group``, else the group (other than the
    baseline) where the feature fires most often."""
    if options.group is not None:
        group, group_how = options.group, "from --group"
    elif group is None:
        contrasts = [g for g in prompts.groups if g != prompts.baseline] or list(prompts.groups)
        group, group_how = max(contrasts, key=lambda g: rate_by_group[g]), "the group where it fires most often"
    prompts.check(group, "the ablation group")
    return group, group_how


def test_feature(
    loaded: Loaded,
    feature: int | Sequence[int],
    prompts: GroupBatches | PromptSets | Mapping[str, Sequence[str]],
    options: FeatureTestOptions | None = None,
    log: Log = silent,
    *,
    group: str | None = None,
    group_how: str = "given",
) -> FeatureTest:
    """Test whether ``feature`` matters, as Chapter 4 does: ablate it against matched controls, then steer.

    One call does all of it: batches the prompts, measures firing rates (by group, and of every feature
    for the controls), picks the targets and the typical max activation, ablates, steers and generates::

        prompts = {"happy": ["I was glad ...", ...], "baseline": ["The driver closed ...", ...]}
        result = test_feature(loaded, 501, prompts, FeatureTestOptions(coeff=4.0))
        result                                   # one line: the ablation vs controls, the steering
        result.ablation.empirical_p("kl"), result.steering.delta_logp(4.0)

    Args:
        feature: a feature id, or a family's member ids (e.g. ``(409, 501)``): the family is ablated all at
            once against random sets of as many features, and steered with every member at once.
        prompts: the prompt groups (a :class:`~mechinterp.core.prompts.PromptSets`, whose baseline is
            used, or group -> prompts with the baseline called "baseline"); a :class:`GroupBatches`
            shares batches, firing rates and activations between the features tested on the same groups.
        group: the group to ablate on when ``options.group`` is None (Chapter 4: the feature's group in a
            results table), ``group_how`` saying why; None = where it fires most often (not the baseline).
        log: progress messages.

    Raises:
        UserError: when a group is unknown, a target is not one token, or the feature never fires on the
            prompts and ``options.max_act`` is not given.
    """
    options = options or FeatureTestOptions()
    if not isinstance(prompts, GroupBatches):
        prompts = GroupBatches.of(loaded, prompts, options)
    steer_group = options.steer_group or prompts.baseline
    prompts.check(steer_group, "the steering group")
    feature = feature if isinstance(feature, int) else tuple(sorted(set(feature)))
    fa = prompts.activations([feature] if isinstance(feature, int) else list(feature))
    rate_by_group = _firing_by_group(fa, feature, prompts)
    group, group_how = _ablation_group(prompts, rate_by_group, options, group, group_how)
    typical, max_how = _typical_max(fa, feature, options)
    targets, target_how = _choose_targets(loaded, feature, typical, options)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    ablation = None
    if rate_by_group[group] > 0:  # else removing it changes nothing: the error term keeps the rest exactly
        log(f"ablating {label_of(feature)} and {options.n_controls} controls on '{group}' ...")
        ablation = run_ablation(loaded, prompts.batches(group), fa.n_skip, feature, targets, options.n_controls,
                                options.seed, prompts.firing_rates(group))
    seconds["ablation"] = time.perf_counter() - start

    start = time.perf_counter()
    curve, generations = _steer(loaded, prompts, steer_group, fa.n_skip, feature, typical, targets, options, log)
    seconds["steering"] = time.perf_counter() - start

    norms = [float(loaded.sae.sae.W_dec[m].detach().norm()) for m in ([feature] if isinstance(feature, int)
                                                                       else feature)]
    return FeatureTest(
        feature=feature, title=loaded.title, target_ids=targets,
        target_tokens=[decode_token(loaded.model.tokenizer, t) for t in targets], target_how=target_how,
        typical_max=typical, typical_max_how=max_how, firing_rate_by_group=rate_by_group, ablation_group=group,
        ablation_group_how=group_how, n_ablation_prompts=len(prompts.groups[group]), ablation=ablation,
        steer_group=steer_group, steering=curve, decoder_norm=norms[0] if isinstance(feature, int) else norms,
        generation_coeff=options.coeff, max_new_tokens=options.max_new_tokens, generations=generations,
        filtered=intervention_note(fa), seconds=seconds,
        unit_norm=(typical * norms[0] if isinstance(feature, int)
                   else float(steering_direction(loaded, feature, 1.0, typical).float().norm())),
    )


test_feature.__test__ = False  # a function of the package, not a test: pytest must not collect it where imported


def _firing_by_group(fa: FeatureActivations, feature: Target, prompts: GroupBatches) -> dict[str, float]:
    """Fraction of each group's text tokens where the feature fires; for a family, where any member fires."""
    acts, column = (fa, feature) if isinstance(feature, int) else (family_activations(fa, feature).acts, FAMILY_COLUMN)
    return {g: (a / b if b else 0.0) for g in prompts.groups for a, b in [acts.firing(column, g)]}


def _steer(loaded: Loaded, prompts: GroupBatches, steer_group: str, n_skip: int, feature: Target,
           typical: float | list[float], targets: list[int], options: FeatureTestOptions,
           log: Log) -> tuple[SteeringCurve, list[Generation]]:
    """The steering curve on the steering group's prompts, and the clean and steered continuations."""
    coeffs = options.coeffs
    log(f"steering curve over {len(coeffs)} coefficients on '{steer_group}' ...")
    curve = steering_curve(loaded, prompts.batches(steer_group), n_skip, feature, coeffs, typical, targets)
    texts = list(options.steer_prompt) or prompts.groups[steer_group][: options.n_generate]
    log(f"generating {options.max_new_tokens} tokens for {len(texts)} prompts, clean and steered ...")
    direction = steering_direction(loaded, feature, options.coeff, typical)
    generations = generate_side_by_side(loaded, tokenize(loaded, texts).ids, texts, n_skip, direction,
                                        options.max_new_tokens, options.seed, options.temperature)
    return SteeringCurve(coeffs, **curve), generations
