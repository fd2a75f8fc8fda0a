"""A faster attention sublayer for GPT-2-like TransformerLens models, with every hook the project uses.

TransformerLens computes attention the readable way: it rearranges the Q/K/V weights on every call,
runs three projections, materialises the ``[batch, head, query, key]`` scores, masks them, takes a
separate softmax, multiplies by V, and rearranges again. Its block also applies ``ln1`` three times
(once each for the query, key and value inputs, which are the same tensor). On a CPU that was 29% of
the encoding time for a few percent of the FLOPs. This module swaps in, for the models where it is
exact:

* one projection for Q, K and V together, and PyTorch's fused
  ``F.scaled_dot_product_attention(is_causal=True)`` for scores, softmax and ``pattern @ V``;
* ``ln1`` once per block, and LayerNorms on PyTorch's fused ``F.layer_norm``.

Hooks still work: ``hook_q``, ``hook_k``, ``hook_v``, ``hook_z`` (SAEs on attention heads read it),
``hook_result`` (with ``use_attn_result``), ``hook_attn_out``, the residual hooks and the MLP hooks
are called as before. Scores and pattern never exist on the fast path, so whenever something wants
them (a hook on ``hook_attn_scores`` or ``hook_pattern``, which ``run_with_cache`` adds for the names
it caches) the call takes TransformerLens' own path; likewise for a hook on a LayerNorm's
``hook_scale``/``hook_normalized``, a KV cache (generation), an attention mask (left padding), and
any configuration other than GPT-2's (learned positions, causal, no GQA, no rotary or ALiBi, no
soft-cap, ...). The decision is made at every call, so attaching a hook later is always honoured.

The numbers equal TransformerLens' to float rounding (``tests/test_fast_attention.py`` checks
outputs and ``hook_z`` to 1e-5 with padding and BOS, and every fallback).

Usage: :func:`use_fast_attention` after loading (``mechinterp.core.loading`` does it for every model).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules import module as _torch_module
from transformer_lens.components import Attention, LayerNorm, LayerNormPre, TransformerBlock

# Configuration fields that change attention or the block away from GPT-2's, with GPT-2's value.
# getattr with these defaults keeps older/newer TransformerLens configs (missing fields) working.
_GPT2_LIKE = {
    "positional_embedding_type": "standard",
    "attention_dir": "causal",
    "load_in_4bit": False,
    "use_split_qkv_input": False,
    "use_attn_in": False,
    "use_qk_norm": False,
    "clip_qkv": None,
    "use_logn_attn": False,
    "use_attention_sinks": False,
    "n_key_value_heads": None,
    "use_hook_mlp_in": False,
    "use_normalization_before_and_after": False,
    "parallel_attn_mlp": False,
    "attn_only": False,
    "n_devices": 1,
}
_POST_NORM_OR_QK_NORM = {"Olmo2ForCausalLM", "Olmo3ForCausalLM", "OlmoeForCausalLM"}


def unsupported_reason(cfg: Any) -> str | None:
    """Why a model's configuration cannot use the fast path, or None when it can.

    Args:
        cfg: a ``HookedTransformerConfig``.
    """
    for name, gpt2_value in _GPT2_LIKE.items():
        value = getattr(cfg, name, gpt2_value)
        if value != gpt2_value:
            return f"{name}={value!r}"
    cap = getattr(cfg, "attn_scores_soft_cap", -1.0)
    if cap is not None and cap > 0:
        return f"attn_scores_soft_cap={cap}"
    if getattr(cfg, "original_architecture", None) in _POST_NORM_OR_QK_NORM:
        return f"original_architecture={cfg.original_architecture}"
    if getattr(cfg, "normalization_type", None) not in ("LN", "LNPre"):
        return f"normalization_type={getattr(cfg, 'normalization_type', None)!r}"
    return None


def has_hooks(*modules: torch.nn.Module) -> bool:
    """Whether anything would observe these hook points: TransformerLens hooks (``add_hook``,
    ``run_with_hooks``, ``run_with_cache``), hooks registered with PyTorch directly, or global
    module hooks."""
    if (
        getattr(_torch_module, "_global_forward_hooks", None)
        or getattr(_torch_module, "_global_forward_pre_hooks", None)
        or getattr(_torch_module, "_global_backward_hooks", None)
        or getattr(_torch_module, "_global_backward_pre_hooks", None)
    ):
        return True
    for m in modules:
        if (
            getattr(m, "fwd_hooks", None) or getattr(m, "bwd_hooks", None) or m._forward_hooks
            or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        ):
            return True
    return False


class FastAttention(Attention):
    """TransformerLens' ``Attention`` with a fused path; see the module docstring for when it is taken."""

    def forward(  # type: ignore[override]
        self,
        query_input: torch.Tensor,
        key_input: torch.Tensor,
        value_input: torch.Tensor,
        past_kv_cache_entry: Any = None,
        additive_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if (
            past_kv_cache_entry is not None
            or additive_attention_mask is not None
            or attention_mask is not None
            or position_bias is not None
            or self.attn_type != "global"
            or getattr(self, "_attention_dir_override", None) not in (None, "causal")
            or getattr(self, "q_norm", None) is not None
            or query_input.dim() != 3
            or query_input.shape != key_input.shape
            or key_input.shape != value_input.shape
            or has_hooks(self.hook_attn_scores, self.hook_pattern)
        ):
            return super().forward(
                query_input, key_input, value_input, past_kv_cache_entry=past_kv_cache_entry,
                additive_attention_mask=additive_attention_mask, attention_mask=attention_mask,
                position_bias=position_bias,
            )
        return self.fused_forward(query_input, key_input, value_input)

    def link_qkv(self) -> bool:
        """Keep ``W_Q``, ``W_K``, ``W_V`` (and ``b_Q``, ``b_K``, ``b_V``) in one buffer laid out for a single
        projection, ``[3 * n_heads * d_head, d_model]``, the parameters being views into it.

        TransformerLens stores each as ``[n_heads, d_model, d_head]``, so every call would otherwise
        rearrange (copy) them first, which cost 10-20% of the encoding time on a CPU. The parameters keep
        their shapes and values; only their memory layout changes (they become non-contiguous views). The
        fused path reads the buffer only while the parameters still live in it (checked at every call,
        :meth:`_linked_qkv`), so editing the weights in place, even through ``.data``, changes what it
        computes, and replacing them (``model.to(dtype)``, assigning ``.data``) makes it copy per call
        again until :func:`use_fast_attention` links them anew.

        Returns:
            whether the weights are now linked (not for unusual parameter dtypes or devices).
        """
        weights, biases = (self.W_Q, self.W_K, self.W_V), (self.b_Q, self.b_K, self.b_V)
        if len({(t.dtype, t.device) for t in (*weights, *biases)}) != 1:
            return False
        n_heads, d_head, d_model = self.cfg.n_heads, self.cfg.d_head, self.cfg.d_model
        width = n_heads * d_head
        # The buffer must be the same kind of tensor as the parameters: normal ones (usable with autograd)
        # for a model made outside inference mode, even when this runs inside it.
        with torch.inference_mode(self.W_Q.is_inference()), torch.no_grad():
            w = torch.empty(3 * width, d_model, dtype=self.W_Q.dtype, device=self.W_Q.device)
            b = torch.empty(3 * width, dtype=self.W_Q.dtype, device=self.W_Q.device)
            for i, (W, bias) in enumerate(zip(weights, biases)):
                w[i * width : (i + 1) * width].copy_(W.transpose(1, 2).reshape(width, d_model))
                b[i * width : (i + 1) * width].copy_(bias.reshape(width))
            for i, (W, bias) in enumerate(zip(weights, biases)):
                W.data = w[i * width : (i + 1) * width].view(n_heads, d_head, d_model).transpose(1, 2)
                bias.data = b[i * width : (i + 1) * width].view(n_heads, d_head)
        self.__dict__["_fused_qkv"] = (w, b)  # a plain attribute: not a parameter, not in the state dict
        return True

    def _linked_qkv(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The fused ``(weight [3 * width, d_model], bias [3 * width])`` if the parameters still live in it."""
        fused = self.__dict__.get("_fused_qkv")
        if fused is None:
            return None
        w, b = fused
        n_heads, d_head, d_model = self.cfg.n_heads, self.cfg.d_head, self.cfg.d_model
        width, size = n_heads * d_head, w.element_size()
        for i, (W, bias) in enumerate(zip((self.W_Q, self.W_K, self.W_V), (self.b_Q, self.b_K, self.b_V))):
            if (
                W.dtype != w.dtype or bias.dtype != b.dtype or W.device != w.device or bias.device != b.device
                or W.data_ptr() != w.data_ptr() + i * width * d_model * size or W.stride() != (d_head * d_model, 1, d_model)
                or bias.data_ptr() != b.data_ptr() + i * width * size or bias.stride() != (d_head, 1)
            ):
                del self.__dict__["_fused_qkv"]  # replaced parameters: the buffer is stale for good
                return None
        return w, b

    def fused_forward(self, query_input: torch.Tensor, key_input: torch.Tensor, value_input: torch.Tensor) -> torch.Tensor:
        """Causal self-attention through ``F.scaled_dot_product_attention``.

        Args:
            query_input, key_input, value_input: ``[batch, pos, d_model]`` (the block passes one
                tensor three times; then Q, K and V come from one matrix product).

        Returns:
            ``[batch, pos, d_model]``, the attention sublayer's output (``hook_attn_out`` is the block's).
        """
        n_heads, d_head = self.cfg.n_heads, self.cfg.d_head
        batch, pos, d_model = query_input.shape
        width = n_heads * d_head
        weights = (self.W_Q, self.W_K, self.W_V)
        biases = (self.b_Q, self.b_K, self.b_V)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (*weights, *biases))
        linked = None if needs_grad else self._linked_qkv()
        if query_input is key_input and key_input is value_input:
            if linked is not None:
                w, b = linked  # the parameters' own memory (see link_qkv)
            else:  # [head, d_model, d_head] -> [(head d_head), d_model], as TransformerLens' simple_attn_linear does
                w = torch.cat([W.transpose(1, 2).reshape(width, d_model) for W in weights])  # [3 * width, d_model]
                b = torch.cat([bias.reshape(width) for bias in biases])
            qkv = F.linear(query_input, w, b).view(batch, pos, 3, n_heads, d_head)
            q, k, v = qkv.unbind(2)  # each [batch, pos, head, d_head]
        else:
            q, k, v = (
                F.linear(x, W.transpose(1, 2).reshape(width, d_model), bias.reshape(width)).view(batch, pos, n_heads, d_head)
                for x, W, bias in zip((query_input, key_input, value_input), weights, biases)
            )
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        # TransformerLens divides the scores by attn_scale (sqrt(d_head), times layer + 1 for models
        # that scale by the inverse layer index); SDPA multiplies by ``scale``.
        z = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=1.0 / float(self.attn_scale)
        ).transpose(1, 2)  # [batch, pos, head, d_head]
        z = self.hook_z(z)
        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphd,hdm->bphm", z, self.W_O))  # [batch, pos, head, d_model]
            return result.sum(-2) + self.b_O
        # W_O [head, d_head, d_model] is already [(head d_head), d_model] in memory: no copy.
        return F.linear(z.reshape(batch, pos, width), self.W_O.reshape(width, d_model).t(), self.b_O)


class FastTransformerBlock(TransformerBlock):
    """TransformerLens' block with ``ln1`` computed once (TransformerLens computes it three times,
    for query, key and value, which are the same tensor for GPT-2). Falls back to its own forward
    for other configurations, shortformer embeddings, and when ``ln1``'s hooks are observed (they
    then fire three times, as they always did)."""

    def forward(  # type: ignore[override]
        self,
        resid_pre: torch.Tensor,
        shortformer_pos_embed: torch.Tensor | None = None,
        past_kv_cache_entry: Any = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if shortformer_pos_embed is not None or has_hooks(*_norm_hooks(self.ln1)):
            return super().forward(resid_pre, shortformer_pos_embed, past_kv_cache_entry, attention_mask)
        resid_pre = self.hook_resid_pre(resid_pre)  # [batch, pos, d_model]
        normalized = self.ln1(resid_pre)
        attn_out = self.hook_attn_out(
            self.attn(
                query_input=normalized, key_input=normalized, value_input=normalized,
                past_kv_cache_entry=past_kv_cache_entry, attention_mask=attention_mask,
            )
        )
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.apply_mlp(self.ln2(resid_mid))
        return self.hook_resid_post(resid_mid + mlp_out)


def _norm_hooks(norm: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in (getattr(norm, "hook_scale", None), getattr(norm, "hook_normalized", None)) if m is not None]


def _fused_layer_norm(norm: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """LayerNorm as TransformerLens defines it (centre, divide by sqrt(biased variance + eps), in float32
    for reduced-precision models, then cast and apply weight and bias), in one fused op.

    For a reduced-precision input, ``F.layer_norm`` itself accumulates the mean and variance in float32
    and rounds only its output (PyTorch's CPU and CUDA kernels compute in ``opmath``, float32), so the
    input is not cast to float32 and back: those two copies of ``[batch, pos, d_model]`` cost more than
    the norm (the round trip takes 2.5x as long on an AVX2 CPU). The result equals TransformerLens' to one bfloat16 rounding
    (about 1 element in 10^5 differs, by one unit in the last place; ``tests/test_fast_attention.py``)."""
    dtype = norm.cfg.dtype
    if dtype in (torch.float32, torch.float64):
        return F.layer_norm(x, (x.shape[-1],), weight, bias, norm.eps)
    if x.dtype == dtype:
        normalized = F.layer_norm(x, (x.shape[-1],), None, None, norm.eps)
    else:  # an input in another dtype than the model's: normalise in float32 as TransformerLens does
        normalized = F.layer_norm(x.to(torch.float32), (x.shape[-1],), None, None, norm.eps).to(dtype)
    return normalized if weight is None else normalized * weight + bias


class FastLayerNorm(LayerNorm):
    """TransformerLens' ``LayerNorm`` on ``F.layer_norm`` unless its hooks are observed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if has_hooks(*_norm_hooks(self)):
            return super().forward(x)
        return _fused_layer_norm(self, x, self.w, self.b)


class FastLayerNormPre(LayerNormPre):
    """TransformerLens' ``LayerNormPre`` (weights folded into the next layer) on ``F.layer_norm``
    unless its hooks are observed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if has_hooks(*_norm_hooks(self)):
            return super().forward(x)
        return _fused_layer_norm(self, x, None, None)


_SWAPS = ((Attention, FastAttention), (TransformerBlock, FastTransformerBlock), (LayerNorm, FastLayerNorm), (LayerNormPre, FastLayerNormPre))


def use_fast_attention(model: Any) -> str | None:
    """Switch a ``HookedTransformer``'s blocks to the fast path, in place, when its configuration allows.

    Only the modules' classes change (to subclasses of TransformerLens' own), and the Q/K/V weights'
    memory layout (:meth:`FastAttention.link_qkv`); parameter shapes and values, buffers, hook names
    and the state dict's contents stay the same, and every call whose inputs or hooks need the
    original computation still gets it. ``ln_final`` is left alone (encoding stops before it). Call
    it again after casting or moving the model (the loader casts first).

    Returns:
        None when the fast path was installed, else why not (the model is then untouched).
    """
    reason = unsupported_reason(model.cfg)
    if reason is not None:
        return reason
    for block in model.blocks:
        for module in (block, block.attn, getattr(block, "ln1", None), getattr(block, "ln2", None)):
            for original, fast in _SWAPS:
                if module is not None and type(module) is original:
                    module.__class__ = fast
        if isinstance(block.attn, FastAttention):
            block.attn.link_qkv()
    return None


def use_original_attention(model: Any) -> None:
    """Undo :func:`use_fast_attention` (e.g. to compare against TransformerLens' own computation)."""
    originals = {fast: original for original, fast in _SWAPS}
    for module in model.modules():
        if type(module) in originals:
            module.__class__ = originals[type(module)]
