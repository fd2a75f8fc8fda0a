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

The BOS position and padding are excluded everywhere: interventions leave BOS untouched, and all
metrics average over the text positions of the prompts only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mechinterp.encoding import Tokenized, hook_activations, length_order, pad_batch
from mechinterp.errors import UserError
from mechinterp.loading import Loaded

HookFn = Callable[[torch.Tensor, object], torch.Tensor]


# --- target tokens ------------------------------------------------------------------------------------


def resolve_target_tokens(loaded: Loaded, words: Sequence[str]) -> list[int]:
    """Token ids for user-given target tokens; each must be one token (a leading space is tried too).

    Raises:
        UserError: when a word is several tokens, naming the split.
    """
    tok = loaded.model.tokenizer
    ids = []
    for word in words:
        for candidate in (word, " " + word.lstrip(" ")):
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
def logits_from_hook(loaded: Loaded, resid: torch.Tensor, hook_fn: HookFn | None = None) -> torch.Tensor:
    """Logits ``[B, T, d_vocab]`` from the residual at the SAE's hook, optionally edited by ``hook_fn``.

    The layers before the hook do not change under an intervention at the hook, so they run once per
    batch (in :func:`hook_activations`) and each intervention reruns only the blocks from the hook on.
    The hook is still applied through TransformerLens' own hook point (``blocks.L.hook_resid_pre``).
    """
    hooks = [(loaded.sae.hook_name, hook_fn)] if hook_fn is not None else []
    return loaded.model.run_with_hooks(resid, start_at_layer=loaded.sae.hook_layer, fwd_hooks=hooks)


def _check_resid_pre(loaded: Loaded) -> None:
    if not loaded.sae.hook_name.endswith("hook_resid_pre"):
        raise UserError(
            f"interventions here need an SAE on a block's hook_resid_pre; {loaded.sae.label} reads "
            f"{loaded.sae.hook_name}"
        )


# --- ablation ------------------------------------------------------------------------------------------


def ablation_hook(loaded: Loaded, feature: int, n_skip: int) -> HookFn:
    """A hook that removes ``feature`` from the SAE reconstruction and keeps the SAE's error term.

    Returns ``x + decode(a') - decode(a)`` with ``a = encode(x)`` and ``a'`` = ``a`` with the feature
    zeroed at the text positions (BOS, the first ``n_skip`` positions, is left alone).
    """
    sae = loaded.sae.sae

    def hook(resid: torch.Tensor, hook: object = None) -> torch.Tensor:
        acts = sae.encode(resid)  # [B, T, d_sae]
        ablated = acts.clone()
        ablated[:, n_skip:, feature] = 0.0
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


def target_scores(log_probs: torch.Tensor, targets: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log P(T), log-odds of T)``, each ``[B, T]``, for the target set T at each position.

    ``log P(T)`` is the log of the targets' total probability. It saturates at 0 once the targets
    hold nearly all the mass, and then hides any further change; the log-odds
    ``log P(T) - log(1 - P(T))`` equal ``log P(T)`` while P(T) is small but keep moving near 1.
    Both are computed from log-probabilities with ``logsumexp``, so neither underflows.
    """
    index = torch.tensor(list(targets), device=log_probs.device)
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


@dataclass
class CleanScores:
    """The clean run's mean target scores over the same positions."""

    logp_targets: float
    logodds_targets: float


@torch.inference_mode()
def intervention_effects(
    loaded: Loaded,
    batches: Sequence[Batch],
    hooks: dict[str, HookFn],
    targets: Sequence[int],
) -> tuple[dict[str, Effect], CleanScores]:
    """The effect of each intervention in ``hooks`` on the prompts, against the clean run.

    Returns:
        ``({name: Effect}, clean scores)``, every mean over the valid (non-BOS, non-pad) positions of
        all prompts.
    """
    _check_resid_pre(loaded)
    sums = {name: np.zeros(3) for name in hooks}
    clean_sums = np.zeros(2)
    n = 0
    for batch in batches:
        resid = hook_activations(loaded, batch.tokens)  # [B, T, d_model]
        clean = logits_from_hook(loaded, resid).float().log_softmax(-1)  # [B, T, d_vocab]
        valid = batch.valid
        clean_lp, clean_lo = target_scores(clean, targets)
        clean_sums += [float(clean_lp[valid].sum()), float(clean_lo[valid].sum())]
        n += int(valid.sum())
        for name, fn in hooks.items():
            edited = logits_from_hook(loaded, resid, fn).float().log_softmax(-1)
            lp, lo = target_scores(edited, targets)
            kl = (clean.exp() * (clean - edited)).sum(-1)  # [B, T]
            sums[name] += [float((lp - clean_lp)[valid].sum()), float((lo - clean_lo)[valid].sum()),
                           float(kl[valid].sum())]
    if n == 0:
        raise UserError("the prompts have no text tokens to measure on")
    effects = {k: Effect(v[0] / n, v[1] / n, v[2] / n, n) for k, v in sums.items()}
    return effects, CleanScores(clean_sums[0] / n, clean_sums[1] / n)


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
    features: list[int]
    pool_size: int  # features the controls were drawn from
    rate_low: float  # firing-rate range of the pool
    rate_high: float


def matched_controls(rates: np.ndarray, feature: int, n: int, seed: int, factor: float = 2.0) -> Controls:
    """``n`` random features whose firing rate is within ``factor`` of the feature's (on the same prompts).

    When fewer than ``2 n`` features are that close, the pool widens to the ``2 n`` nearest in log firing
    rate, so the draw stays random rather than exhaustive.

    Raises:
        UserError: when fewer than ``n`` other features fire at all on these prompts.
    """
    rate = float(rates[feature])
    candidates = np.array([i for i in np.nonzero(rates > 0)[0] if i != feature])
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
    chosen = np.random.default_rng(seed).choice(pool, size=n, replace=False)
    pool_rates = rates[pool]
    return Controls(sorted(int(c) for c in chosen), len(pool), float(pool_rates.min()), float(pool_rates.max()))


@dataclass
class AblationResult:
    feature: int
    rate: float
    effect: Effect
    controls: Controls
    control_rates: list[float]
    control_effects: list[Effect]
    clean: CleanScores

    def _values(self, which: str) -> tuple[float, np.ndarray]:
        return getattr(self.effect, which), np.array([getattr(e, which) for e in self.control_effects])

    def n_controls_at_least(self, which: str) -> int:
        """Controls whose |effect| is at least the feature's (``which``: an :class:`Effect` field name)."""
        value, ctrl = self._values(which)
        return int((np.abs(ctrl) >= abs(value)).sum())

    def empirical_p(self, which: str) -> float:
        """(1 + controls at least as large) / (1 + controls): the permutation-style p-value."""
        return (1 + self.n_controls_at_least(which)) / (1 + len(self.control_effects))

    def z_score(self, which: str) -> float:
        value, ctrl = self._values(which)
        sd = float(ctrl.std(ddof=1)) if len(ctrl) > 1 else 0.0
        return (value - float(ctrl.mean())) / sd if sd > 0 else float("nan")


def run_ablation(
    loaded: Loaded,
    batches: Sequence[Batch],
    n_skip: int,
    feature: int,
    targets: Sequence[int],
    n_controls: int,
    seed: int,
    rates: np.ndarray | None = None,
) -> AblationResult:
    """Ablate ``feature`` and ``n_controls`` firing-rate-matched random features on the prompts."""
    rates = firing_rates(loaded, batches) if rates is None else rates
    controls = matched_controls(rates, feature, n_controls, seed)
    hooks = {"feature": ablation_hook(loaded, feature, n_skip)}
    hooks |= {f"control {c}": ablation_hook(loaded, c, n_skip) for c in controls.features}
    effects, clean = intervention_effects(loaded, batches, hooks, targets)
    return AblationResult(
        feature=feature,
        rate=float(rates[feature]),
        effect=effects["feature"],
        controls=controls,
        control_rates=[float(rates[c]) for c in controls.features],
        control_effects=[effects[f"control {c}"] for c in controls.features],
        clean=clean,
    )


# --- steering ---------------------------------------------------------------------------------------------


def steering_direction(loaded: Loaded, feature: int, coeff: float, typical_max: float) -> torch.Tensor:
    """``coeff * typical_max * W_dec[feature]``, shape ``[d_model]``."""
    return (coeff * typical_max) * loaded.sae.sae.W_dec[feature].detach().clone()


def steering_curve(
    loaded: Loaded,
    batches: Sequence[Batch],
    n_skip: int,
    feature: int,
    coeffs: Sequence[float],
    typical_max: float,
    targets: Sequence[int],
) -> dict[str, list[float]]:
    """For each coefficient: mean log P(targets), mean log-odds(targets) and mean KL(clean || steered)."""
    hooks = {
        f"{c!r}": steering_hook(steering_direction(loaded, feature, c, typical_max), n_skip) for c in coeffs
    }
    effects, clean = intervention_effects(loaded, batches, hooks, targets)
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
    _check_resid_pre(loaded)
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
        return tok.decode(result[0, ids.shape[1] :].tolist())

    for text, ids_list in zip(prompts, prompt_ids):
        ids = torch.tensor([list(ids_list)], device=loaded.device)
        for sample in (False, True):
            mode = f"sampled (seed {seed}, T={temperature:g})" if sample else "greedy"
            out.append(Generation(text, mode, run(ids, sample, False), run(ids, sample, True)))
    return out
