"""Feature to weights (Chapter 6): where in the model does an SAE feature come from?

Chapters 3 and 4 looked at what a feature *does*. This module looks upstream, at what *builds* it. An
SAE feature's pre-activation is a linear read-out of the residual stream at the SAE's hook,

    pre_f(x) = (N(x) - a * b_dec) @ W_enc[:, f] + b_enc[f]      (a = apply_b_dec_to_input, N = input norm)

and the residual stream at a ``hook_resid_*`` hook is exactly a sum of the model's components: the
token embedding, the positional embedding, every attention head's output, every MLP's output, and the
accumulated output biases (the split TransformerLens' ``ActivationCache.get_full_resid_decomposition``
makes, with its labels ``embed``, ``pos_embed``, ``L{layer}H{head}``, ``{layer}_mlp_out``, ``bias``).
Pushing each component through the read-out splits the pre-activation into one number per component,
plus the constant ``sae_bias = b_enc[f] - a * b_dec @ W_enc[:, f]``. The rows add up to the SAE's own
pre-activation exactly; :func:`attribute_feature` checks that on every token and refuses to report
numbers that do not add up.

Four questions, one result (:class:`FeatureAttribution`):

1. **Direct attribution, on data** (:class:`DirectAttribution`): the mean of each component's share of
   the pre-activation over the text tokens where the feature fires (BOS and padding excluded).
2. **From which tokens** (:class:`HeadSources`): a head's output at a position is an attention-weighted
   sum over source positions, so its share splits exactly by source token.
3. **Weights alone** (:class:`WeightsView`): the encoder direction pulled back through the weights (MLP
   output rows, heads' OV circuits, the token embedding) with no data: the *direct* path only.
4. **Causal check** (:class:`CausalCheck`): mean-ablate each top component and compare the measured drop
   of the feature with the drop the attribution predicts. Attribution counts only the direct path; the
   difference is what flows through the layers between the component and the hook.

Input normalisations of the SAE that scale each token (``constant_norm_rescale``, ``layer_norm``) are
handled as TransformerLens handles LayerNorm in its attributions: the per-token scale is frozen at its
value on that token (still exact, sum for sum). Anything else that is not linear is refused.

The library takes a loaded model and SAE (:class:`mechinterp.core.loading.Loaded`) and token ids, and
returns dataclasses; it never prints and never sees command-line options.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from mechinterp.core.encoding import Tokenized, length_order, pad_batch, tokenize
from mechinterp.core.errors import EXIT_FAILURE, UserError
from mechinterp.core.loading import Loaded
from mechinterp.core.options import non_negative_int, option, positive_int
from mechinterp.core.tokens import decode_token

# Component kinds, in the order TransformerLens stacks them (sae_bias is ours, last).
KINDS = ("head", "mlp", "embed", "pos_embed", "bias", "sae_bias")
# Input normalisations that multiply each token by its own scale (frozen per token, as TL's apply_ln).
PER_TOKEN_SCALE = ("constant_norm_rescale", "layer_norm")
LAYER_NORM_EPS = 1e-5  # SAELens' run_time_activation_ln_in default
# The sum checks' relative tolerance (of the sum of |rows|) when the model or SAE computes in reduced
# precision (``--dtype``): four units of the dtype's rounding (bfloat16 keeps 8 significant bits, float16
# 11). The rows stay exact float64 projections of the components the model computed, but the model adds
# them up in its own dtype, rounding the residual stream after every sublayer, and the SAE rounds its
# pre-activation: on the demo world the worst firing token misses by 0.1% of the sum of |rows| in
# bfloat16, against 2e-7 in float32.
REDUCED_PRECISION_RTOL = {torch.bfloat16: 2.0**-6, torch.float16: 2.0**-9}
BOS_SOURCE = "<BOS>"  # how a source position that is the BOS token is named
# A contribution counts as zero when its size is at most this fraction of the signal it is part of (the
# mean pre-activation on data; the largest |score| of the weights-only view). Components built to write
# nothing still leave round-off: on the demo world the blocks write about 1e-10 against a pre-activation
# near 2. A real contribution of a millionth of the feature changes no printed digit (4 significant
# digits) and no ablation beyond float32's own rounding (6e-8 per operation, accumulated over a residual
# stream of hundreds of dimensions). 1e-6 sits between the two with orders of magnitude to spare each side.
ZERO_TOLERANCE = 1e-6


def zero_threshold(scale: float) -> float:
    """Sizes at or below this are "contributes nothing" next to a signal of size ``scale``."""
    return ZERO_TOLERANCE * abs(scale)


def is_zero(value: float, threshold: float) -> bool:
    """Exactly zero, or at most ``threshold`` (see :func:`zero_threshold`)."""
    return value == 0 or abs(value) <= threshold


class AttributionCheckFailed(UserError):
    """The components did not add up to the SAE's own pre-activation: no numbers are reported."""

    exit_code = EXIT_FAILURE


# --- options ------------------------------------------------------------------------------------------


@dataclass
class AttributionOptions:
    """How much of each answer to compute and show. The first five fields are also Chapter 6's flags of the
    same names (``--top-heads``, ...); the tolerances are not on the command line. Heads and components
    are ranked by |mean contribution| (the constant rows are never ablated); the weights-only view lists
    ``n_weights`` in each direction.

    Attributes:
        atol, rtol: the sum check. On every firing token, |sum of rows - SAE pre-activation| must be at most
            ``atol + rtol * sum of |rows|``; float32 rounding of a 768-wide sum is ~1e-6 relative.
        agree_tolerance: a component's measured and predicted drops "agree" when they differ by at most
            this fraction of the larger of the two.
    """

    top_heads: int = option(3, "heads whose contribution is split by source token", type=positive_int)
    n_sources: int = option(5, "source tokens listed per head", type=positive_int)
    n_weights: int = option(10, "neurons, heads and tokens listed by the weights-only view", type=positive_int)
    n_ablate: int = option(8, "top components to mean-ablate for the causal check (0: skip it)",
                           type=non_negative_int)
    # On the command line the default depends on the device (the script resolves None to it).
    batch_size: int = option(16, "texts per forward pass (default: 16 on CPU, 64 on GPU)", type=positive_int,
                             cli_default=None, group="texts to attribute on")
    atol: float = 1e-4
    rtol: float = 1e-4
    agree_tolerance: float = 0.1

    def __post_init__(self) -> None:
        for name in ("top_heads", "n_sources", "n_weights", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_ablate < 0:
            raise UserError(f"n_ablate must be 0 or more, got {self.n_ablate}")
        if not (self.atol >= 0 and self.rtol >= 0 and 0 < self.agree_tolerance < 1):
            raise UserError("atol and rtol must be >= 0 and agree_tolerance strictly between 0 and 1")


# --- where the SAE reads, and how --------------------------------------------------------------------


@dataclass(frozen=True)
class HookSite:
    """Which components make up the residual stream at a ``blocks.L.hook_resid_*`` hook.

    ``layer`` and ``mlp_input`` are TransformerLens' arguments of ``get_full_resid_decomposition`` for
    this hook; heads of blocks ``0 .. head_layers - 1`` and MLPs of ``0 .. mlp_layers - 1`` write into it.
    """

    hook_name: str
    layer: int
    mlp_input: bool
    head_layers: int
    mlp_layers: int
    stop_at_layer: int  # run the model this far (blocks 0 .. stop_at_layer - 1)


def hook_site(model: Any, hook_name: str) -> HookSite:
    """The decomposition of the residual stream that an SAE at ``hook_name`` reads.

    Raises:
        UserError: for hooks that are not the residual stream (e.g. ``hook_z`` or ``hook_mlp_out`` SAEs:
            their input is not a sum of the model's components) and for models whose residual stream
            is not a plain sum of the components (shortformer positions, normalised block outputs).
    """
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|mid|post)", hook_name)
    if not match:
        raise UserError(
            f"the SAE reads {hook_name}; feature-to-weights attribution needs an SAE on the residual stream "
            "(blocks.L.hook_resid_pre, hook_resid_mid or hook_resid_post)"
        )
    cfg = model.cfg
    if cfg.positional_embedding_type == "shortformer":
        raise UserError(
            "shortformer models keep positions out of the residual stream; this decomposition does not apply"
        )
    if getattr(cfg, "use_normalization_before_and_after", False):
        raise UserError(
            "this model normalises each block's output before adding it to the residual stream, so the "
            "stream "
            "is not a linear sum of head and MLP outputs; attribution by component would be wrong"
        )
    layer, where = int(match.group(1)), match.group(2)
    if where == "pre":
        return HookSite(hook_name, layer, False, layer, layer, layer)
    if where == "mid":
        return HookSite(hook_name, layer, True, layer + 1, layer, layer + 1)
    return HookSite(hook_name, layer + 1, False, layer + 1, layer + 1, layer + 1)


def component_labels(model: Any, site: HookSite) -> list[str]:
    """TransformerLens' labels for the components, in its order (``get_full_resid_decomposition`` with
    ``expand_neurons=False``): heads, MLPs, ``embed``, ``pos_embed`` (absolute positions only), ``bias``."""
    cfg = model.cfg
    labels = [f"L{layer}H{h}" for layer in range(site.head_layers) for h in range(cfg.n_heads)]
    if not cfg.attn_only and site.layer > 0:
        labels += [f"{layer}_mlp_out" for layer in range(site.mlp_layers)]
    labels.append("embed")
    if cfg.positional_embedding_type == "standard":
        labels.append("pos_embed")
    labels.append("bias")
    return labels


def parse_label(label: str) -> tuple[str, int | None, int | None]:
    """A component label as ``(kind, layer, head)``: ``"L5H3"`` -> ``("head", 5, 3)``,
    ``"4_mlp_out"`` -> ``("mlp", 4, None)``, ``"bias"`` -> ``("bias", None, None)``."""
    head = re.fullmatch(r"L(\d+)H(\d+)", label)
    if head:
        return "head", int(head.group(1)), int(head.group(2))
    mlp = re.fullmatch(r"(\d+)_mlp_out", label)
    if mlp:
        return "mlp", int(mlp.group(1)), None
    if label in KINDS:
        return label, None, None
    raise ValueError(f"unknown component label {label!r}")


@dataclass
class ReadOut:
    """How the SAE reads one feature from the residual stream: ``pre = scale(x) * (x @ w) + sae_bias``.

    Attributes:
        w: ``[d_model]`` float64, the encoder column ``W_enc[:, f]`` (centred when the SAE centres its input).
        sae_bias: ``b_enc[f] - a * b_dec @ W_enc[:, f]``, the part that no component of the model supplies.
        normalisation: the SAE's ``normalize_activations``; ``"none"`` means scale 1 everywhere.
    """

    feature: int
    w: torch.Tensor
    sae_bias: float
    normalisation: str
    d_in: int

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token factor ``[...]`` that the SAE's input normalisation applies to ``x [..., d_model]``."""
        x = x.double()
        if self.normalisation == "constant_norm_rescale":
            return math.sqrt(self.d_in) / x.norm(dim=-1)
        if self.normalisation == "layer_norm":
            centred = x - x.mean(-1, keepdim=True)
            return 1.0 / (centred.std(-1) + LAYER_NORM_EPS)
        return torch.ones(x.shape[:-1], dtype=torch.float64, device=x.device)


def encoder_readout(sae: Any, feature: int) -> ReadOut:
    """The feature's linear read-out from the SAE's weights, or a clear refusal.

    Raises:
        UserError: for SAEs whose pre-activation is not ``process_sae_in(x) @ W_enc + b_enc`` (gated SAEs),
            that reshape their input (``hook_z`` SAEs), or whose input normalisation is not linear.
    """
    if not (hasattr(sae, "W_enc") and hasattr(sae, "b_enc") and hasattr(sae, "hook_sae_acts_pre")):
        raise UserError(
            f"this SAE ({type(sae).__name__}) has no single linear pre-activation (W_enc, b_enc); gated SAEs "
            "and other architectures are not supported by the attribution"
        )
    cfg = sae.cfg
    if getattr(cfg, "reshape_activations", "none") != "none":
        raise UserError("this SAE reshapes its input (hook_z SAE); attribution needs a residual-stream SAE")
    mode = getattr(cfg, "normalize_activations", "none") or "none"
    if mode not in PER_TOKEN_SCALE:
        # Everything else must leave the input as it is at run time (SAELens folds "expected_average_only_in"
        # into the weights when it loads a release); check rather than trust the name.
        probe = torch.randn(3, int(cfg.d_in), dtype=sae.W_enc.dtype, device=sae.W_enc.device)
        with torch.inference_mode():
            if not torch.equal(sae.run_time_activation_norm_fn_in(probe), probe):
                raise UserError(
                    f"this SAE normalises its input ({mode}) in a way that is not linear; fold the "
                    "normalisation "
                    "into the weights first"
                )
        mode = "none"
    with torch.inference_mode():
        w = sae.W_enc[:, feature].detach().double().cpu()
        b_dec = sae.b_dec.detach().double().cpu()
        sae_bias = float(sae.b_enc[feature]) - float(cfg.apply_b_dec_to_input) * float(b_dec @ w)
    if mode == "layer_norm":
        w = w - w.mean()  # (x - mean(x)) @ w == x @ (w - mean(w))
    return ReadOut(feature, w, sae_bias, mode, int(cfg.d_in))


# --- one forward pass, split into components --------------------------------------------------------


def _cache_names(site: HookSite) -> Callable[[str], bool]:
    wanted = {"hook_embed", "hook_pos_embed", site.hook_name}
    wanted |= {f"blocks.{layer}.attn.hook_z" for layer in range(site.head_layers)}
    wanted |= {f"blocks.{layer}.hook_mlp_out" for layer in range(site.mlp_layers)}
    return lambda name: name in wanted


@torch.inference_mode()
def run_components(
    model: Any, tokens: torch.Tensor, site: HookSite, fwd_hooks: Sequence[tuple[str, Callable]] = ()
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the model up to the hook; return the residual stream ``[B, T, d_model]`` and the cached parts."""
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        out, cache = model.run_with_cache(
            tokens, names_filter=_cache_names(site), stop_at_layer=site.stop_at_layer
        )
    resid = out if site.hook_name.endswith("hook_resid_pre") else cache[site.hook_name]
    return resid, dict(cache.cache_dict) if hasattr(cache, "cache_dict") else dict(cache)


def project_components(
    model: Any, cache: dict[str, torch.Tensor], site: HookSite, labels: Sequence[str], w: torch.Tensor
) -> torch.Tensor:
    """Each component's output projected on ``w``: ``[n_components, B, T]`` float64, in ``labels`` order.

    Heads are computed from ``hook_z`` and ``W_O`` as TransformerLens does (``z @ W_O``, without ``b_O``,
    which is in ``bias``); projecting ``W_O @ w`` first keeps the ``[B, T, heads, d_model]`` results
    from ever existing. MLP rows include ``b_out`` (TransformerLens' ``{layer}_mlp_out``).
    """
    device = cache["hook_embed"].device
    w = w.to(device)
    rows: dict[str, torch.Tensor] = {}
    for layer in range(site.head_layers):
        ov_w = model.blocks[layer].attn.W_O.detach().double() @ w  # [n_heads, d_head]
        per_head = torch.einsum("bthd,hd->hbt", cache[f"blocks.{layer}.attn.hook_z"].double(), ov_w)
        for h in range(model.cfg.n_heads):
            rows[f"L{layer}H{h}"] = per_head[h]
    for layer in range(site.mlp_layers):
        rows[f"{layer}_mlp_out"] = cache[f"blocks.{layer}.hook_mlp_out"].double() @ w
    rows["embed"] = cache["hook_embed"].double() @ w
    if "hook_pos_embed" in cache:
        rows["pos_embed"] = cache["hook_pos_embed"].double() @ w
    bias = model.accumulated_bias(site.layer, site.mlp_input, include_mlp_biases=False).detach().double()
    rows["bias"] = torch.full_like(rows["embed"], float(bias.to(device) @ w))
    return torch.stack([rows[label] for label in labels])


def sae_pre_and_acts(sae: Any, x: torch.Tensor, feature: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The SAE's own pre-activation (``hook_sae_acts_pre``) and activation of ``feature`` for ``x [n, d]``."""
    grabbed: dict[str, torch.Tensor] = {}

    def grab(pre: torch.Tensor, hook: Any) -> None:
        grabbed["pre"] = pre[..., feature].detach().clone()

    with torch.inference_mode(), sae.hooks(fwd_hooks=[("hook_sae_acts_pre", grab)]):
        acts = sae.encode(x.to(sae.W_enc.dtype))
    return grabbed["pre"].double(), acts[..., feature].double()


# --- results ------------------------------------------------------------------------------------------


@dataclass
class ComponentRow:
    """One row of the direct attribution (question 1)."""

    component: str  # TransformerLens' label, or "sae_bias"
    kind: str  # one of KINDS
    layer: int | None
    head: int | None
    mean_contribution: float  # mean over the firing tokens of the component's share of the pre-activation
    share: float  # mean_contribution / mean pre-activation (rows' shares add up to 1)
    std_contribution: float  # spread over the firing tokens
    frac_positive: float  # fraction of firing tokens where the component pushes the feature up
    predicted_ablation_drop: float  # mean drop if the component were replaced by its mean (direct path only)

    def __repr__(self) -> str:
        return f"ComponentRow({self.brief()}, spread {self.std_contribution:.3g})"

    def brief(self) -> str:
        """``"L1H2 +1.23 (41%)"``: the component, its mean contribution and its share of the pre-activation."""
        return f"{self.component} {self.mean_contribution:+.3g} ({self.share:.0%})"


@dataclass
class DirectAttribution:
    """Question 1: the feature's mean pre-activation on the tokens where it fires, split by component."""

    rows: list[ComponentRow]  # TransformerLens' order, then sae_bias
    n_tokens: int  # firing tokens (BOS and padding excluded)
    n_texts: int  # texts with at least one firing token
    n_text_tokens: int  # all text tokens seen (BOS and padding excluded)
    mean_pre_activation: float  # the SAE's own (hook_sae_acts_pre), mean over firing tokens
    mean_activation: float  # the SAE's activation, mean over firing tokens
    sum_of_rows: float
    residual: float  # sum_of_rows - mean_pre_activation
    max_token_residual: float  # largest |sum of rows - SAE pre-activation| on a single firing token

    def __repr__(self) -> str:
        top = ", ".join(r.brief() for r in self.top(3, exclude=("sae_bias",)))
        return (f"DirectAttribution(mean pre-activation {self.mean_pre_activation:.4g} over {self.n_tokens} firing "
                f"tokens in {self.n_texts} texts; the {len(self.rows)} rows add up to {self.sum_of_rows:.4g} "
                f"(residual {self.residual:+.1e}); top {top})")

    def top(self, n: int, exclude: Sequence[str] = ()) -> list[ComponentRow]:
        """The ``n`` rows with the largest |mean contribution|."""
        rows = [r for r in self.rows if r.kind not in exclude]
        return sorted(rows, key=lambda r: -abs(r.mean_contribution))[:n]

    def row(self, component: str) -> ComponentRow:
        return next(r for r in self.rows if r.component == component)

    @property
    def zero_threshold(self) -> float:
        """A row whose |mean contribution| is at most this contributes nothing (:data:`ZERO_TOLERANCE` of the
        mean pre-activation)."""
        return zero_threshold(self.mean_pre_activation)

    def zero_rows(self) -> list[ComponentRow]:
        """The rows that contribute nothing (exactly zero, or round-off below :attr:`zero_threshold`)."""
        return [r for r in self.rows if is_zero(r.mean_contribution, self.zero_threshold)]


@dataclass
class SourceRow:
    """One source token of a head's contribution (question 2)."""

    token: str  # the token's text, or "<BOS>" for the BOS position
    token_id: int | None
    mean_contribution: float  # summed over the firing tokens, divided by their number
    share: float  # of the head's mean contribution
    n_pairs: int  # (firing token, source position) pairs with this source token
    typical_offset: int  # the distance back (0 = the token itself) that carries most of it


@dataclass
class HeadSources:
    """Question 2: one head's contribution split by source position."""

    component: str
    layer: int
    head: int
    mean_contribution: float
    sources: list[SourceRow]  # largest |mean contribution| first
    by_offset: list[tuple[int, float]]  # (distance back, mean contribution per firing token), largest first
    max_split_error: float  # largest |sum over sources - head's contribution| on one token (exactness check)

    def __repr__(self) -> str:
        return f"HeadSources({self.sentence})"

    @property
    def sentence(self) -> str:
        """``"L5H3 brings +1.2 (40%) mostly from ' thrilled', 3 tokens back"``."""
        if not self.sources:
            return f"{self.component}: no sources"
        top = self.sources[0]
        where = (
            "at the token itself"
            if top.typical_offset == 0
            else (f"{top.typical_offset} token{'s' if top.typical_offset != 1 else ''} back")
        )
        return (
            f"{self.component} brings {self.mean_contribution:+.3g} per firing token; "
            f"{top.share:.0%} of it from {top.token!r}, mostly {where}"
        )


@dataclass
class WeightRow:
    """One line of the weights-only view (question 3)."""

    kind: str  # "neuron", "head" or "token"
    component: str  # "L3N17", "L5H3", or the token's text
    layer: int | None
    index: int | None  # neuron, head or token id
    score: float
    detail: str = ""


@dataclass
class WeightsView:
    """Question 3: the encoder direction pulled back through the weights, no data. Direct path only.

    Attributes:
        neurons_up / neurons_down: MLP neurons (before the hook) whose output row ``W_out[l, n]`` has the
            largest positive / negative dot product with the encoder direction: one unit of the neuron's
            activation moves the pre-activation by that much, directly.
        heads: heads by the gain of their OV circuit onto the direction, ``sqrt(d_model) * |W_V W_O w|``: the
            most one fully attended, normalised source position can move the pre-activation; ``detail``
            names the token whose (normalised) embedding, copied by the head, pushes it up most.
        tokens_up / tokens_down: ``W_E[t] @ w``: what each token's embedding adds on the residual path that
            skips every block (the direct path from the embedding to the hook).
    """

    neurons_up: list[WeightRow]
    neurons_down: list[WeightRow]
    heads: list[WeightRow]
    tokens_up: list[WeightRow]
    tokens_down: list[WeightRow]

    def __repr__(self) -> str:
        def names(rows: list[WeightRow]) -> str:
            return ", ".join(repr(r.component) if r.kind == "token" else r.component for r in rows[:3]) or "none"

        return (f"WeightsView(direct path only: tokens up {names(self.tokens_up)}; neurons up "
                f"{names(self.neurons_up)}; heads {names(self.heads)})")

    def all_rows(self) -> list[tuple[str, WeightRow]]:
        return [
            (name, r)
            for name in ("neurons_up", "neurons_down", "heads", "tokens_up", "tokens_down")
            for r in getattr(self, name)
        ]

    @property
    def zero_threshold(self) -> float:
        """A score whose size is at most this writes nothing: :data:`ZERO_TOLERANCE` of the largest |score| in
        the view (there is no data, so no pre-activation to compare with)."""
        return zero_threshold(max((abs(r.score) for _, r in self.all_rows()), default=0.0))


@dataclass
class AblationRow:
    """One component's mean-ablation (question 4), means over the firing tokens."""

    component: str
    predicted_drop: float  # of the pre-activation, from the attribution (direct path)
    measured_drop_pre: float  # of the SAE's pre-activation, after the real ablation (all paths)
    measured_drop_act: float  # of the feature's activation
    clean_activation: float  # mean activation before ablating

    @property
    def removed_fraction(self) -> float:
        """Fraction of the feature's activation the ablation removes."""
        return self.measured_drop_act / self.clean_activation if self.clean_activation else 0.0


@dataclass
class CausalCheck:
    """Question 4: predicted (direct) vs measured (total) drops of the feature under mean-ablation."""

    rows: list[AblationRow]
    correlation: float | None  # Pearson r of predicted vs measured pre-activation drops (>= 3 rows)
    n_agree: int  # non-zero rows whose drops agree within agree_tolerance
    agree_tolerance: float
    ablated_on: str
    n_nonzero: int = 0  # rows where the predicted or the measured drop is above zero_threshold
    zero_threshold: float = 0.0  # drops at most this size are zero (ZERO_TOLERANCE of the mean pre-activation)

    def is_zero_row(self, row: AblationRow) -> bool:
        """Neither the predicted nor the measured drop (of the pre-activation or the activation) is above zero."""
        return all(is_zero(v, self.zero_threshold)
                   for v in (row.predicted_drop, row.measured_drop_pre, row.measured_drop_act))

    def __repr__(self) -> str:
        return f"CausalCheck({self.summary})"

    @property
    def summary(self) -> str:
        if not self.rows:
            return "no component ablated"
        if not self.n_nonzero:
            return f"no ablated component changes the feature (every drop at most {self.zero_threshold:.2g})"
        r = (f"; correlation r = {self.correlation:.3f} over those {self.n_nonzero}"
             if self.correlation is not None else "")
        zero = len(self.rows) - self.n_nonzero
        left_out = f"; {zero} whose drops are zero left out" if zero else ""
        return (
            f"measured drop within {self.agree_tolerance:.0%} of the predicted direct drop for "
            f"{self.n_agree} of {self.n_nonzero} non-zero components{r}{left_out}"
        )


@dataclass
class FeatureAttribution:
    """Everything Chapter 6 says about one feature."""

    feature: int
    hook_name: str
    normalisation: str
    sae_bias: float
    direct: DirectAttribution | None  # None when the feature never fires on the texts
    head_sources: list[HeadSources]
    weights: WeightsView
    causal: CausalCheck | None
    filtered: str
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        head = f"FeatureAttribution(#{self.feature} at {self.hook_name}: "
        d = self.direct
        if d is None:
            return head + f"never fires on these texts; {self.weights!r})"
        top = ", ".join(r.brief() for r in d.top(3, exclude=("sae_bias",)))
        parts = [f"mean pre-activation {d.mean_pre_activation:.4g} over {d.n_tokens} firing tokens, rows add up "
                 f"(residual {d.residual:+.1e}); top {top}"]
        if self.head_sources:
            parts.append(self.head_sources[0].sentence)
        if self.causal is not None and self.causal.rows:
            r = f", r={self.causal.correlation:.2f}" if self.causal.correlation is not None else ""
            parts.append(f"mean-ablation agrees for {self.causal.n_agree}/{self.causal.n_nonzero} non-zero{r}")
        return head + "; ".join(parts) + ")"

    def sum_check(self) -> dict[str, float] | None:
        """Whether the rows add up to the SAE's own pre-activation, as the run record keeps it (None when the
        feature never fires)."""
        d = self.direct
        if d is None:
            return None
        return {"mean_pre_activation": d.mean_pre_activation, "sum_of_rows": d.sum_of_rows, "residual": d.residual,
                "max_token_residual": d.max_token_residual}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able numbers."""
        data: dict[str, Any] = {
            "feature": self.feature,
            "hook": self.hook_name,
            "sae_input_normalisation": self.normalisation,
            "sae_bias": self.sae_bias,
            "filtered": self.filtered,
            "notes": list(self.notes),
            "direct_attribution": None,
            "head_sources": [],
            "weights_only_direct_path": {
                name: [asdict(r) for r in getattr(self.weights, name)]
                for name in ("neurons_up", "neurons_down", "heads", "tokens_up", "tokens_down")
            },
            "causal_check": None,
        }
        if self.direct is not None:
            d = asdict(self.direct)
            data["direct_attribution"] = d
        data["head_sources"] = [asdict(h) | {"sentence": h.sentence} for h in self.head_sources]
        if self.causal is not None:
            data["causal_check"] = {
                "rows": [asdict(r) | {"removed_fraction": r.removed_fraction} for r in self.causal.rows],
                "correlation": self.causal.correlation,
                "n_agree": self.causal.n_agree,
                "n_nonzero": self.causal.n_nonzero,
                "zero_threshold": self.causal.zero_threshold,
                "agree_tolerance": self.causal.agree_tolerance,
                "ablated_on": self.causal.ablated_on,
                "summary": self.causal.summary,
            }
        return data


# --- question 1: direct attribution on data ---------------------------------------------------------


@dataclass
class _FiringTokens:
    """What pass 1 keeps of the tokens where the feature fires."""

    text: list[int]  # text index of each firing token
    pos: list[int]  # its position (BOS included in the count)
    contributions: torch.Tensor  # [n_fire, n_components] float64, scaled
    scale: torch.Tensor  # [n_fire] the SAE's per-token input scale
    pre: torch.Tensor  # [n_fire] the SAE's own pre-activation
    act: torch.Tensor  # [n_fire]


@dataclass
class _Means:
    """Means over every text token (BOS and padding excluded), for mean-ablation."""

    raw_projection: torch.Tensor  # [n_components] unscaled projections on w
    vectors: dict[
        str, torch.Tensor
    ]  # hook name -> mean output ([n_heads, d_head] for hook_z, else [d_model])
    n_tokens: int


def _collect(
    loaded: Loaded,
    tokenized: Tokenized,
    site: HookSite,
    labels: list[str],
    readout: ReadOut,
    batch_size: int,
) -> tuple[_FiringTokens, _Means]:
    """One pass over every text: per-component contributions at the firing tokens, and the means of every
    component's output over all text tokens (for mean-ablation)."""
    model, sae = loaded.model, loaded.sae.sae
    order = length_order(tokenized)
    fire_text: list[int] = []
    fire_pos: list[int] = []
    contribs, scales, pres, acts = [], [], [], []
    sums: dict[str, torch.Tensor] = {}
    raw_sum = torch.zeros(len(labels), dtype=torch.float64)
    n_valid = 0
    for start in range(0, len(order), batch_size):
        batch = list(order[start : start + batch_size])
        tokens, valid = pad_batch(tokenized, batch)
        tokens, valid = tokens.to(loaded.device), valid.to(loaded.device)
        resid, cache = run_components(model, tokens, site)
        raw = project_components(model, cache, site, labels, readout.w)  # [n_comp, B, T]
        x = resid[valid]  # [n_valid, d_model]
        pre, act = sae_pre_and_acts(sae, x, readout.feature)
        scale = readout.scale(x)
        raw_valid = raw[:, valid]  # [n_comp, n_valid]
        raw_sum += raw_valid.sum(1).cpu()
        n_valid += int(valid.sum())
        for name, value in cache.items():
            if name == site.hook_name:
                continue
            total = value[valid].double().sum(0).cpu()  # [n_heads, d_head] for hook_z, else [d_model]
            sums[name] = sums[name] + total if name in sums else total
        firing = act > 0
        rows, cols = torch.nonzero(valid, as_tuple=True)
        fire_text += [batch[int(r)] for r in rows[firing]]
        fire_pos += [int(c) for c in cols[firing]]
        contribs.append((raw_valid[:, firing] * scale[firing]).T.cpu())
        scales.append(scale[firing].cpu())
        pres.append(pre[firing].cpu())
        acts.append(act[firing].cpu())
    n_comp = len(labels)
    firing = _FiringTokens(
        fire_text,
        fire_pos,
        torch.cat(contribs) if contribs else torch.zeros(0, n_comp, dtype=torch.float64),
        torch.cat(scales) if scales else torch.zeros(0, dtype=torch.float64),
        torch.cat(pres) if pres else torch.zeros(0, dtype=torch.float64),
        torch.cat(acts) if acts else torch.zeros(0, dtype=torch.float64),
    )
    means = _Means(raw_sum / max(n_valid, 1), {k: v / max(n_valid, 1) for k, v in sums.items()}, n_valid)
    return firing, means


def _check_sum(fire: _FiringTokens, readout: ReadOut, options: AttributionOptions) -> float:
    """Largest per-token |sum of rows - SAE pre-activation|; raises when it exceeds the tolerance."""
    if fire.pre.numel() == 0:
        return 0.0
    total = fire.contributions.sum(1) + readout.sae_bias
    error = (total - fire.pre).abs()
    allowed = options.atol + options.rtol * (fire.contributions.abs().sum(1) + abs(readout.sae_bias))
    worst = int(torch.argmax(error - allowed))
    if error[worst] > allowed[worst]:
        raise AttributionCheckFailed(
            f"feature {readout.feature}: the components add up to {float(total[worst]):.6g} on one token "
            f"but the SAE's own pre-activation is {float(fire.pre[worst]):.6g} "
            f"(difference {float(error[worst]):.3g}); "
            "this model or SAE does something the decomposition does not cover, so no attribution is reported"
        )
    return float(error.max())


def _direct(
    fire: _FiringTokens, means: _Means, labels: list[str], readout: ReadOut, max_residual: float
) -> DirectAttribution:
    n = fire.pre.numel()
    c = fire.contributions  # [n, n_comp]
    mean_pre = float(fire.pre.mean())
    # A mean-ablated component is replaced by its mean output, which the SAE then scales per token.
    predicted = (c - fire.scale[:, None] * means.raw_projection[None, :]).mean(0)
    rows = []
    for j, label in enumerate(labels):
        kind, layer, head = parse_label(label)
        mean = float(c[:, j].mean())
        rows.append(
            ComponentRow(
                component=label,
                kind=kind,
                layer=layer,
                head=head,
                mean_contribution=mean,
                share=mean / mean_pre if mean_pre else float("nan"),
                std_contribution=float(c[:, j].std(unbiased=False)),
                frac_positive=float((c[:, j] > 0).double().mean()),
                predicted_ablation_drop=float(predicted[j]),
            )
        )
    rows.append(
        ComponentRow(
            "sae_bias",
            "sae_bias",
            None,
            None,
            readout.sae_bias,
            readout.sae_bias / mean_pre if mean_pre else float("nan"),
            0.0,
            float(readout.sae_bias > 0),
            0.0,
        )
    )
    sum_rows = sum(r.mean_contribution for r in rows)
    return DirectAttribution(
        rows=rows,
        n_tokens=n,
        n_texts=len(set(fire.text)),
        n_text_tokens=means.n_tokens,
        mean_pre_activation=mean_pre,
        mean_activation=float(fire.act.mean()),
        sum_of_rows=sum_rows,
        residual=sum_rows - mean_pre,
        max_token_residual=max_residual,
    )


# --- question 2: from which tokens ------------------------------------------------------------------


def _token_text(model: Any, token_id: int) -> str:
    tok = getattr(model, "tokenizer", None)
    return decode_token(tok, token_id) if tok is not None else f"<token {token_id}>"


class _PairSums:
    """Sums of values per integer key, accumulated in chunks and merged with torch (no Python loop per
    pair, so long documents with many firing tokens stay fast)."""

    def __init__(self) -> None:
        self.keys = torch.zeros(0, dtype=torch.long)
        self.values = torch.zeros(0, dtype=torch.float64)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._n_pending = 0

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._pending.append((keys.cpu(), values.cpu()))
        self._n_pending += keys.numel()
        if self._n_pending > 1_000_000:
            self.merge()

    def merge(self) -> None:
        keys = torch.cat([self.keys, *(k for k, _ in self._pending)])
        values = torch.cat([self.values, *(v for _, v in self._pending)])
        self.keys, inverse = torch.unique(keys, return_inverse=True)
        self.values = torch.zeros(len(self.keys), dtype=torch.float64).index_add_(0, inverse, values)
        self._pending, self._n_pending = [], 0


@dataclass
class _TextPositions:
    """One text's firing positions, and each (firing position, source position) pair of it."""

    slots: torch.Tensor  # [n] the token slot of each source position (the BOS positions: their own slot)
    positions: torch.Tensor  # [k] the firing positions (BOS counted)
    rows: torch.Tensor  # [k] their rows among the firing tokens
    offsets: torch.Tensor  # [k, n] distance back from each firing position to each source
    causal: torch.Tensor  # [k, n] the source is not after the firing position


def _text_positions(ids: Sequence[int], n_skip: int, firing: list[tuple[int, int]], bos_key: int) -> _TextPositions:
    slots = torch.tensor(ids, dtype=torch.long)
    slots[:n_skip] = bos_key
    positions = torch.tensor([p for p, _ in firing], dtype=torch.long)
    rows = torch.tensor([r for _, r in firing], dtype=torch.long)
    offsets = positions[:, None] - torch.arange(len(ids))[None, :]
    return _TextPositions(slots, positions, rows, offsets, offsets >= 0)


@dataclass
class _HeadTally:
    """One traced head's contribution at the firing tokens, summed by source token and by distance back."""

    head: ComponentRow
    ov_w: torch.Tensor  # [d_head] W_O[h] @ w: what one unit of the head's z writes onto the feature
    col: int  # the head's column among the firing tokens' contributions
    by_token: torch.Tensor  # [d_vocab + 1] float64; the last slot is the BOS position, whatever its token
    pairs: torch.Tensor  # [d_vocab + 1] (firing token, source position) pairs per slot
    by_offset: torch.Tensor  # [n_ctx] float64
    token_offset: _PairSums = field(default_factory=_PairSums)  # key: token slot * n_ctx + offset
    max_error: float = 0.0  # largest |sum over sources - the head's contribution| on one token

    def add(self, cache: dict, b: int, text: _TextPositions, value_head: int, fire: _FiringTokens,
            feature: int, options: AttributionOptions) -> None:
        """Split the head's contribution at one text's firing tokens exactly by source position (``z[t] =
        sum_s pattern[t, s] * v[s]``), check the split adds up, and add it to the sums."""
        h, n = self.head, text.slots.numel()
        pattern = cache[f"blocks.{h.layer}.attn.hook_pattern"][b, h.head][text.positions, :n]  # [k, n]
        v = cache[f"blocks.{h.layer}.attn.hook_v"][b, :n, value_head]  # [n, d_head]
        scale = fire.scale[text.rows][:, None]
        per_source = (pattern.double() * (v.double() @ self.ov_w)[None, :]).cpu() * scale  # [k, n]
        per_source = torch.where(text.causal, per_source, 0.0)
        error = (per_source.sum(1) - fire.contributions[text.rows, self.col]).abs()
        allowed = options.atol + options.rtol * per_source.abs().sum(1)
        if bool((error > allowed).any()):
            raise AttributionCheckFailed(
                f"feature {feature}: {h.component}'s split by source position misses its "
                f"contribution by {float(error.max()):.3g} on one token; no attribution is reported"
            )
        self.max_error = max(self.max_error, float(error.max()))
        src = text.slots[None, :].expand_as(text.offsets)[text.causal]
        value = per_source[text.causal]
        self.by_token.index_add_(0, src, value)
        self.pairs.index_add_(0, src, torch.ones_like(src))
        self.by_offset.index_add_(0, text.offsets[text.causal], value)
        self.token_offset.add(src * self.by_offset.numel() + text.offsets[text.causal], value)

    def result(self, model: Any, n_fire: int, n_sources: int) -> HeadSources:
        """The head's ``n_sources`` largest source tokens and its contribution by distance, per firing token."""
        h, n_ctx, bos_key = self.head, self.by_offset.numel(), self.by_token.numel() - 1
        self.token_offset.merge()
        pair_keys, pair_values = self.token_offset.keys, self.token_offset.values
        order = torch.argsort(-self.by_token.abs(), stable=True)
        order = order[self.pairs[order] > 0][:n_sources]  # tokens that occurred as sources
        sources = []
        for slot in order.tolist():
            total = float(self.by_token[slot])
            mine = (pair_keys // n_ctx) == slot
            # The distance that carries most of this token's contribution, in the direction of its sign.
            typical = int(pair_keys[mine][torch.argmax(pair_values[mine] * math.copysign(1.0, total))] % n_ctx)
            mean = total / n_fire
            sources.append(
                SourceRow(
                    token=BOS_SOURCE if slot == bos_key else _token_text(model, slot),
                    token_id=None if slot == bos_key else slot,
                    mean_contribution=mean,
                    share=mean / h.mean_contribution if h.mean_contribution else float("nan"),
                    n_pairs=int(self.pairs[slot]),
                    typical_offset=typical,
                )
            )
        nonzero = torch.nonzero(self.by_offset).squeeze(-1).tolist()
        by_offset = sorted(((o, float(self.by_offset[o]) / n_fire) for o in nonzero), key=lambda ov: -abs(ov[1]))
        return HeadSources(h.component, h.layer, h.head, h.mean_contribution, sources, by_offset, self.max_error)


@torch.inference_mode()
def _head_sources(
    loaded: Loaded,
    tokenized: Tokenized,
    readout: ReadOut,
    fire: _FiringTokens,
    labels: list[str],
    heads: list[ComponentRow],
    options: AttributionOptions,
) -> list[HeadSources]:
    """Split each head's contribution at the firing tokens by source position: exact, since
    ``z[t] = sum_s pattern[t, s] * v[s]``. Sources are gathered by token (the BOS position apart) and by
    distance back."""
    if not heads or not fire.text:
        return []
    model = loaded.model
    d_vocab, n_ctx = int(model.cfg.d_vocab), int(model.cfg.n_ctx)
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    group = model.cfg.n_heads // n_kv  # grouped-query attention: query head h reads value head h // group
    w = readout.w.to(model.W_O.device)
    tallies = [
        _HeadTally(h, model.blocks[h.layer].attn.W_O[h.head].detach().double() @ w, labels.index(h.component),
                   torch.zeros(d_vocab + 1, dtype=torch.float64), torch.zeros(d_vocab + 1, dtype=torch.long),
                   torch.zeros(n_ctx, dtype=torch.float64))
        for h in heads
    ]
    by_text: dict[int, list[tuple[int, int]]] = defaultdict(list)  # text -> [(position, firing row)]
    for row, (text, pos) in enumerate(zip(fire.text, fire.pos)):
        by_text[text].append((pos, row))
    layers = sorted({h.layer for h in heads})
    names = {f"blocks.{layer}.attn.hook_{what}" for layer in layers for what in ("pattern", "v")}
    texts = sorted(by_text, key=lambda i: -len(tokenized.ids[i]))
    for start in range(0, len(texts), options.batch_size):
        batch = texts[start : start + options.batch_size]
        tokens, _ = pad_batch(tokenized, batch)
        _, cache = model.run_with_cache(
            tokens.to(loaded.device), names_filter=lambda n: n in names, stop_at_layer=max(layers) + 1
        )
        for b, text in enumerate(batch):
            positions = _text_positions(tokenized.ids[text], tokenized.n_skip, by_text[text], d_vocab)
            for tally in tallies:
                tally.add(cache, b, positions, tally.head.head // group, fire, readout.feature, options)
    return [tally.result(model, len(fire.text), options.n_sources) for tally in tallies]


# --- question 3: weights alone ------------------------------------------------------------------------


def _normalise_like_ln(x: torch.Tensor, cfg: Any) -> torch.Tensor:
    """What a block's input normalisation makes of ``x [..., d_model]`` (weights folded: no gain or bias)."""
    norm = getattr(cfg, "normalization_type", None)
    if norm in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
    if norm in ("LN", "LNPre", "RMS", "RMSPre"):
        x = x * math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return x


@torch.inference_mode()
def weights_view(loaded: Loaded, site: HookSite, readout: ReadOut, n: int) -> WeightsView:
    """Question 3: neurons, heads and tokens that write most onto the encoder direction, from the weights."""
    model = loaded.model
    cfg = model.cfg
    w = readout.w.to(model.W_E.device)
    neuron_scores: list[tuple[float, int, int]] = []
    if not cfg.attn_only:
        for layer in range(site.mlp_layers):
            scores = model.blocks[layer].mlp.W_out.detach().double() @ w  # [d_mlp]
            neuron_scores += [(float(s), layer, i) for i, s in enumerate(scores.cpu().tolist())]
    neuron_scores.sort(key=lambda t: -t[0])

    def neuron(t: tuple[float, int, int]) -> WeightRow:
        return WeightRow("neuron", f"L{t[1]}N{t[2]}", t[1], t[2], t[0])

    heads = []
    if site.head_layers:
        # Each head's OV circuit read backwards: the input direction W_V[h] @ W_O[h] @ w  [d_model].
        ov_w = torch.cat(
            [
                (
                    model.blocks[layer].attn.W_V.detach().double()
                    @ (model.blocks[layer].attn.W_O.detach().double() @ w)[..., None]
                )[..., 0]
                for layer in range(site.head_layers)
            ]
        )  # [head_layers * n_heads, d_model]
        # Which token, normalised as the block's LayerNorm would and copied by the head, writes the most.
        embed = _normalise_like_ln(model.W_E.detach().float(), cfg)  # [d_vocab, d_model]
        through = embed @ ov_w.T.float()  # [d_vocab, heads]
        best = through.argmax(0)
        for i, vec in enumerate(ov_w):
            layer, h = divmod(i, cfg.n_heads)
            t = int(best[i])
            value = float(through[t, i])
            detail = (
                f"copies {_token_text(model, t)!r} most ({value:+.3g})"
                if value > 0
                else "copies nothing onto it"
            )
            gain = math.sqrt(cfg.d_model) * float(vec.norm())
            heads.append(WeightRow("head", f"L{layer}H{h}", layer, h, gain, detail))
    heads.sort(key=lambda r: -r.score)

    token_scores = (model.W_E.detach().double() @ w).cpu()  # [d_vocab]
    k = min(n, token_scores.numel())
    up, down = torch.topk(token_scores, k), torch.topk(-token_scores, k)

    def token(i: int) -> WeightRow:
        return WeightRow("token", _token_text(model, i), None, i, float(token_scores[i]))

    return WeightsView(
        neurons_up=[neuron(t) for t in neuron_scores[:n]],
        neurons_down=[neuron(t) for t in neuron_scores[::-1][:n]],
        heads=heads[:n],
        tokens_up=[token(int(i)) for i in up.indices],
        tokens_down=[token(int(i)) for i in down.indices],
    )


# --- question 4: causal check -------------------------------------------------------------------------


def _ablation_hook(component: str, means: _Means) -> tuple[str, Callable]:
    """A hook that replaces the component's output by its mean at the text positions (BOS left alone)."""
    kind, layer, head = parse_label(component)
    if kind == "head":
        name = f"blocks.{layer}.attn.hook_z"
    elif kind == "mlp":
        name = f"blocks.{layer}.hook_mlp_out"
    elif kind in ("embed", "pos_embed"):
        name = f"hook_{kind}"
    else:
        raise ValueError(f"{component} is a constant and cannot be mean-ablated")
    mean = means.vectors[name]

    def make(valid: torch.Tensor) -> Callable:
        def hook(value: torch.Tensor, hook: Any) -> torch.Tensor:
            value = value.clone()
            m = mean.to(value.device, value.dtype)
            if kind == "head":
                value[:, :, head][valid] = m[head]
            else:
                value[valid] = m
            return value

        return hook

    return name, make


def _causal_check(
    loaded: Loaded,
    tokenized: Tokenized,
    site: HookSite,
    labels: list[str],
    readout: ReadOut,
    fire: _FiringTokens,
    means: _Means,
    direct: DirectAttribution,
    options: AttributionOptions,
) -> CausalCheck:
    chosen = direct.top(options.n_ablate, exclude=("bias", "sae_bias"))
    texts = sorted(set(fire.text))
    key = {(t, p): i for i, (t, p) in enumerate(zip(fire.text, fire.pos))}
    rows = []
    for comp in chosen:
        name, make = _ablation_hook(comp.component, means)
        # The SAE is read at the clean run's firing tokens, whether or not the feature still fires there.
        pre, act = _values_at(
            loaded, tokenized, site, readout, options.batch_size, texts, key, [(name, make)]
        )
        rows.append(
            AblationRow(
                component=comp.component,
                predicted_drop=comp.predicted_ablation_drop,
                measured_drop_pre=float((fire.pre - pre).mean()),
                measured_drop_act=float((fire.act - act).mean()),
                clean_activation=float(fire.act.mean()),
            )
        )
    return _agreement(
        rows,
        options.agree_tolerance,
        f"{len(fire.text)} firing tokens in {len(texts)} texts, mean over all {means.n_tokens} text tokens",
        direct.zero_threshold,
    )


@torch.inference_mode()
def _values_at(
    loaded: Loaded,
    tokenized: Tokenized,
    site: HookSite,
    readout: ReadOut,
    batch_size: int,
    texts: list[int],
    key: dict[tuple[int, int], int],
    hook_makers: list[tuple[str, Callable]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SAE's pre-activation and activation of the feature at the given (text, position) pairs."""
    pre_out = torch.zeros(len(key), dtype=torch.float64)
    act_out = torch.zeros(len(key), dtype=torch.float64)
    order = sorted(texts, key=lambda i: -len(tokenized.ids[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        tokens, valid = pad_batch(tokenized, batch)
        tokens, valid = tokens.to(loaded.device), valid.to(loaded.device)
        hooks = [(name, make(valid)) for name, make in hook_makers]
        resid, _ = run_components(loaded.model, tokens, site, hooks)
        want = torch.zeros_like(valid)
        for b, text in enumerate(batch):
            for pos in range(valid.shape[1]):
                if (text, pos) in key:
                    want[b, pos] = True
        rows, cols = torch.nonzero(want, as_tuple=True)
        index = [key[(batch[int(r)], int(c))] for r, c in zip(rows, cols)]
        pre, act = sae_pre_and_acts(loaded.sae.sae, resid[want], readout.feature)
        pre_out[index] = pre.cpu()
        act_out[index] = act.cpu()
    return pre_out, act_out


def _agreement(rows: list[AblationRow], tolerance: float, ablated_on: str, threshold: float) -> CausalCheck:
    """Agreement and correlation over the non-zero rows only: two zeros "agree" trivially, and a cluster of
    them at the origin inflates r."""
    check = CausalCheck(rows, None, 0, tolerance, ablated_on, zero_threshold=threshold)
    live = [r for r in rows if not check.is_zero_row(r)]
    check.n_nonzero = len(live)
    check.n_agree = int(sum(
        abs(r.measured_drop_pre - r.predicted_drop)
        <= tolerance * max(abs(r.measured_drop_pre), abs(r.predicted_drop)) + max(threshold, 1e-9)
        for r in live
    ))
    if len(live) >= 3:
        p = np.array([r.predicted_drop for r in live])
        m = np.array([r.measured_drop_pre for r in live])
        if p.std() > 0 and m.std() > 0:
            check.correlation = float(np.corrcoef(p, m)[0, 1])
    return check


# --- all four -----------------------------------------------------------------------------------------


def _precision(options: AttributionOptions, model: Any, sae: Any) -> tuple[AttributionOptions, str | None]:
    """The options with the sum checks' tolerance widened to the model's and SAE's compute dtype, and a
    note saying so (None in float32, where the checks stay at ``options.rtol``)."""
    dtypes = {model.cfg.dtype, sae.W_enc.dtype}
    reduced = [d for d in dtypes if d in REDUCED_PRECISION_RTOL]
    if not reduced:
        return options, None
    worst = max(reduced, key=REDUCED_PRECISION_RTOL.__getitem__)
    rtol = max(options.rtol, REDUCED_PRECISION_RTOL[worst])
    name = str(worst).removeprefix("torch.")
    note = (
        f"the model and SAE compute in {name}: each row is an exact (float64) projection of what a component "
        f"computed, but the model adds the components up in {name}, so the rows match the SAE's own "
        f"pre-activation only to {name} precision (checked to {rtol:.1%} of the sum of |rows|, instead of "
        f"{options.rtol:.0e} in float32, where the split is exact to rounding)"
    )
    return replace(options, rtol=rtol), note


def attribute_feature(
    loaded: Loaded, texts: Sequence[str] | Tokenized, feature: int, options: AttributionOptions | None = None
) -> FeatureAttribution:
    """Answer the chapter's four questions for one feature over the texts, in one call::

        result = attribute_feature(loaded, ["I was glad to see her.", ...], 501)
        result                                    # one line: the top components, the check, the ablation
        result.direct.top(5), result.head_sources[0].sentence, result.causal.summary

    Args:
        loaded: the model (as the SAE expects it: for GPT-2 with ``center_writing_weights`` and folded
            LayerNorms, so the decomposition is of the residual stream the SAE actually reads) and the SAE.
        texts: the texts, or their token ids from :func:`~mechinterp.core.encoding.tokenize` (a script that
            traces several features tokenizes once), ``n_skip`` leading BOS positions each; padding and BOS
            are excluded from every statistic.
        feature: the SAE feature id.

    Raises:
        UserError: when the hook or SAE cannot be decomposed linearly (see :func:`hook_site`,
            :func:`encoder_readout`); :class:`AttributionCheckFailed` when the rows do not add up.
    """
    options = options or AttributionOptions()
    model, sae = loaded.model, loaded.sae.sae
    options, precision_note = _precision(options, model, sae)
    if not 0 <= feature < int(sae.cfg.d_sae):
        raise UserError(
            f"feature {feature} does not exist: this SAE has features 0 to {int(sae.cfg.d_sae) - 1}"
        )
    tokenized = texts if isinstance(texts, Tokenized) else tokenize(loaded, texts)
    site = hook_site(model, loaded.sae.hook_name)
    readout = encoder_readout(sae, feature)
    labels = component_labels(model, site)
    weights = weights_view(loaded, site, readout, options.n_weights)
    fire, means = _collect(loaded, tokenized, site, labels, readout, options.batch_size)
    result = FeatureAttribution(
        feature, site.hook_name, readout.normalisation, readout.sae_bias, None, [], weights, None,
        _filtered_note(tokenized.n_skip), _notes(precision_note, readout),
    )
    if not fire.text:
        result.notes.append("the feature never fires on these texts: only the weights-only view is available")
        return result
    direct = _direct(fire, means, labels, readout, _check_sum(fire, readout, options))
    sources = _head_sources(loaded, tokenized, readout, fire, labels, _heads_to_trace(direct, options), options)
    causal = (
        _causal_check(loaded, tokenized, site, labels, readout, fire, means, direct, options)
        if options.n_ablate
        else None
    )
    return replace(result, direct=direct, head_sources=sources, causal=causal)


def _filtered_note(n_skip: int) -> str:
    """What every number leaves out, in words."""
    if n_skip:
        return (f"the first {n_skip} position(s) of each text (BOS) and all padding are excluded from every "
                "number; BOS can still be a source of attention")
    return "padding is excluded from every number (this SAE uses no BOS)"


def _notes(precision_note: str | None, readout: ReadOut) -> list[str]:
    """What a reader of the numbers should know about the precision and the SAE's input normalisation."""
    notes = [precision_note] if precision_note else []
    if readout.normalisation != "none":
        notes.append(
            f"the SAE normalises its input per token ({readout.normalisation}); each token's scale is frozen at "
            "its value, as TransformerLens does for LayerNorm, so the rows still add up but depend on that scale"
        )
    return notes


def _heads_to_trace(direct: DirectAttribution, options: AttributionOptions) -> list[ComponentRow]:
    """The ``top_heads`` heads with the largest |mean contribution|; heads that contribute nothing (e.g. a
    zero W_O) have no sources worth naming."""
    heads = [r for r in direct.top(len(direct.rows)) if r.kind == "head" and abs(r.mean_contribution) > options.atol]
    return heads[: options.top_heads]
