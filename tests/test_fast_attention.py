"""The fast attention path equals TransformerLens' own attention, keeps the hooks, and steps aside when needed.

Reference: the same model, deep-copied before :func:`use_fast_attention`, i.e. TransformerLens'
unmodified ``Attention``, ``TransformerBlock`` and LayerNorms. Inputs are right-padded batches with BOS
first, as the project encodes them.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from mechinterp.core import fast_attention
from mechinterp.core.fast_attention import FastAttention, use_fast_attention, use_original_attention

D_VOCAB, BOS = 97, 96
TOL = dict(atol=1e-5, rtol=0)


def tiny_model(**overrides):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    settings = dict(
        n_layers=3, d_model=48, n_heads=4, d_head=12, d_mlp=96, d_vocab=D_VOCAB, n_ctx=32, act_fn="gelu_new",
        normalization_type="LN", positional_embedding_type="standard", device="cpu", seed=0,
    )
    settings.update(overrides)
    with warnings.catch_warnings():  # TransformerLens' deprecation notice for HookedTransformer
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**settings))
    model.eval()
    return model


def pair(**overrides):
    """(TransformerLens' own model, the same weights on the fast path)."""
    reference = tiny_model(**overrides)
    fast = copy.deepcopy(reference)
    assert use_fast_attention(fast) is None
    return reference, fast


def padded_batch() -> torch.Tensor:
    """BOS first, then text; rows of 17, 9 and 2 real tokens, right-padded with BOS."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.full((3, 17), BOS)
    for row, n in enumerate((17, 9, 2)):
        tokens[row, 1:n] = torch.randint(0, BOS, (n - 1,), generator=g)
    return tokens


@pytest.fixture
def fused_calls(monkeypatch):
    """How many attention calls took the fused path."""
    calls = [0]
    original = FastAttention.fused_forward

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FastAttention, "fused_forward", counting)
    return calls


def caching(names):
    return lambda name: name.endswith(names)


@pytest.mark.parametrize("overrides", [{}, {"normalization_type": "LNPre"}, {"use_attn_result": True}], ids=["LN", "LNPre", "attn_result"])
@torch.inference_mode()
def test_fast_path_equals_transformer_lens(overrides, fused_calls):
    reference, fast = pair(**overrides)
    tokens = padded_batch()
    names = ("hook_z", "hook_q", "hook_v", "hook_attn_out", "hook_resid_post")
    if overrides.get("use_attn_result"):
        names += ("hook_result",)
    ref_logits, ref_cache = reference.run_with_cache(tokens, names_filter=caching(names))
    logits, cache = fast.run_with_cache(tokens, names_filter=caching(names))
    assert fused_calls[0] == reference.cfg.n_layers  # the comparison is with the fused path, not a fallback
    torch.testing.assert_close(logits, ref_logits, **TOL)
    assert set(cache.keys()) == set(ref_cache.keys())
    for name in ref_cache.keys():
        torch.testing.assert_close(cache[name], ref_cache[name], **TOL, msg=name)
    # Padding on the right changes no real token: each row alone gives the same hook_z.
    for row, n in enumerate((17, 9, 2)):
        _, alone = fast.run_with_cache(tokens[row : row + 1, :n], names_filter=caching(("hook_z",)))
        torch.testing.assert_close(alone["blocks.2.attn.hook_z"][0], cache["blocks.2.attn.hook_z"][row, :n], **TOL)


@torch.inference_mode()
def test_bf16_fast_path_is_as_close_to_float32_as_transformer_lens_bf16(fused_calls):
    """In bfloat16 the two paths round differently (TransformerLens rounds the pattern to bfloat16, the
    fused kernel keeps it in float32), so they are compared by their distance from float32's logits."""
    exact = tiny_model()
    reference, fast = copy.deepcopy(exact), copy.deepcopy(exact)
    for model in (reference, fast):
        model.to(torch.bfloat16, print_details=False)
    assert use_fast_attention(fast) is None
    tokens = padded_batch()
    want = exact(tokens)
    err_reference = (reference(tokens).float() - want).abs()
    err_fast = (fast(tokens).float() - want).abs()
    assert fused_calls[0] == exact.cfg.n_layers
    assert 1e-3 < float(err_reference.mean())  # bfloat16 really is coarser than float32
    assert float(err_fast.mean()) <= 1.25 * float(err_reference.mean())
    assert float(err_fast.max()) <= 1.5 * float(err_reference.max())


@pytest.mark.parametrize("normalization", ["LN", "LNPre"])
@torch.inference_mode()
def test_bf16_layer_norm_normalises_in_float32_without_a_round_trip(normalization, monkeypatch):
    """In bfloat16 the fused LayerNorm takes the bfloat16 input as it is (no float32 copy and back) and
    still equals TransformerLens' float32 normalisation rounded once: at most one unit in the last place,
    on a handful of elements. Rows include GPT-2's BOS-like residual (norm ~3,000)."""
    from transformer_lens.components import LayerNorm, LayerNormPre

    reference, fast = pair(normalization_type=normalization)
    for model in (reference, fast):
        model.to(torch.bfloat16, print_details=False)
    norm_ref, norm_fast = reference.blocks[1].ln2, fast.blocks[1].ln2
    assert isinstance(norm_ref, (LayerNorm, LayerNormPre)) and type(norm_fast) is not type(norm_ref)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 33, 48, generator=g) + torch.randn(48, generator=g)
    x[:, 0] *= 3000.0 / x[:, 0].norm(dim=-1, keepdim=True)
    x = x.to(torch.bfloat16)
    casts = []
    original_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: (casts.append(a), original_to(self, *a, **k))[1])
    got = norm_fast(x)
    monkeypatch.setattr(torch.Tensor, "to", original_to)
    assert casts == [] and got.dtype == torch.bfloat16
    want = norm_ref(x)
    differ = got != want
    assert int(differ.sum()) <= x.numel() // 1000
    ulp = torch.finfo(torch.bfloat16).eps * want.float().abs().clamp_min(2**-14)
    assert bool(((got.float() - want.float()).abs() <= ulp)[differ].all())


@torch.inference_mode()
def test_stop_at_layer_and_project_loader(loaded_toy, fused_calls):
    """The project's loader installs the fast path, and the encoding path (stop_at_layer) agrees."""
    assert isinstance(loaded_toy.model.blocks[0].attn, FastAttention)
    reference = copy.deepcopy(loaded_toy.model)
    use_original_attention(reference)
    assert not isinstance(reference.blocks[0].attn, FastAttention)
    bos = loaded_toy.model.tokenizer.bos_token_id
    tokens = torch.tensor([[bos, 5, 17, 40, 41, 42, 9], [bos, 7, 8, bos, bos, bos, bos]])
    layer = loaded_toy.sae.hook_layer
    torch.testing.assert_close(loaded_toy.model(tokens, stop_at_layer=layer), reference(tokens, stop_at_layer=layer), **TOL)
    assert fused_calls[0] == layer


@torch.inference_mode()
def test_pattern_and_score_hooks_get_the_original_path(fused_calls):
    reference, fast = pair()
    tokens = padded_batch()
    # Caching the pattern (Chapter 6 reads it) takes TransformerLens' path in every layer.
    _, ref_cache = reference.run_with_cache(tokens, names_filter=caching(("hook_pattern", "hook_attn_scores")))
    _, cache = fast.run_with_cache(tokens, names_filter=caching(("hook_pattern", "hook_attn_scores")))
    assert fused_calls[0] == 0
    for name in ref_cache.keys():
        torch.testing.assert_close(cache[name], ref_cache[name], **TOL, msg=name)
    # A hook that edits the pattern in one layer changes the output exactly as in TransformerLens.

    def uniform_over_past(pattern, hook):
        causal = torch.tril(torch.ones_like(pattern))
        return causal / causal.sum(-1, keepdim=True)

    hooks = [("blocks.1.attn.hook_pattern", uniform_over_past)]
    expected = reference.run_with_hooks(tokens, fwd_hooks=hooks)
    got = fast.run_with_hooks(tokens, fwd_hooks=hooks)
    assert fused_calls[0] == reference.cfg.n_layers - 1  # only layer 1 fell back
    torch.testing.assert_close(got, expected, **TOL)
    unhooked = fast(tokens)  # once the hooks are gone, the fused path is back
    assert fused_calls[0] == 2 * reference.cfg.n_layers - 1
    assert (got - unhooked).abs().max() > 1e-2  # the hook did change something


@torch.inference_mode()
def test_q_and_z_hooks_edit_the_fused_path(fused_calls):
    reference, fast = pair()
    tokens = padded_batch()

    def zero_head_0(x, hook):
        x = x.clone()
        x[:, :, 0] = 0.0
        return x

    for hook_name in ("blocks.0.attn.hook_q", "blocks.1.attn.hook_z", "blocks.2.attn.hook_v"):
        expected = reference.run_with_hooks(tokens, fwd_hooks=[(hook_name, zero_head_0)])
        got = fast.run_with_hooks(tokens, fwd_hooks=[(hook_name, zero_head_0)])
        torch.testing.assert_close(got, expected, **TOL, msg=hook_name)
        assert (got - reference(tokens)).abs().max() > 1e-3, hook_name
    assert fused_calls[0] == 3 * reference.cfg.n_layers


@torch.inference_mode()
def test_layer_norm_hooks_fire_as_before(fused_calls):
    """ln1's hooks see the same tensors, as often as in TransformerLens (3 calls per block there)."""
    reference, fast = pair()
    tokens = padded_batch()
    seen = {"reference": [], "fast": []}
    for key, model in (("reference", reference), ("fast", fast)):
        hooks = [("blocks.0.ln1.hook_normalized", lambda x, hook, key=key: seen[key].append(x.clone())),
                 ("blocks.0.ln2.hook_scale", lambda x, hook, key=key: seen[key].append(x.clone()))]
        model.run_with_hooks(tokens, fwd_hooks=hooks)
    assert len(seen["fast"]) == len(seen["reference"]) == 4
    for a, b in zip(seen["fast"], seen["reference"]):
        torch.testing.assert_close(a, b, **TOL)


@torch.inference_mode()
def test_masks_and_kv_cache_fall_back(fused_calls):
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    reference, fast = pair()
    tokens = padded_batch()
    # Left padding: TransformerLens needs the attention mask, so the fast path must step aside.
    mask = (torch.arange(17)[None, :] >= torch.tensor([[0], [8], [15]])).long()
    torch.testing.assert_close(fast(tokens, attention_mask=mask), reference(tokens, attention_mask=mask), **TOL)
    assert fused_calls[0] == 0
    # Generation with a KV cache: prompt, then one token at a time.
    results = []
    for model in (reference, fast):
        kv = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", batch_size=1)
        first = model(tokens[:1, :5], past_kv_cache=kv, attention_mask=torch.ones(1, 5, dtype=torch.long))
        second = model(tokens[:1, 5:6], past_kv_cache=kv, attention_mask=torch.ones(1, 1, dtype=torch.long))
        results.append((first, second))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, **TOL)
    assert fused_calls[0] == 0
    # The attention module itself, given a cache entry directly (no mask), also steps aside.
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    x = torch.randn(1, 4, fast.cfg.d_model)
    outs = []
    for model in (reference, fast):
        entry = TransformerLensKeyValueCacheEntry.init_cache_entry(model.cfg, "cpu", 1)
        model.blocks[0].attn(x, x, x, past_kv_cache_entry=entry)
        outs.append(model.blocks[0].attn(x[:, :1], x[:, :1], x[:, :1], past_kv_cache_entry=entry))
    torch.testing.assert_close(outs[1], outs[0], **TOL)
    assert fused_calls[0] == 0


def test_other_architectures_are_left_alone():
    for overrides, reason in (
        ({"positional_embedding_type": "rotary", "rotary_dim": 12}, "positional_embedding_type"),
        ({"attn_only": True}, "attn_only"),
        ({"normalization_type": "RMS"}, "normalization_type"),
        ({"n_key_value_heads": 2}, "n_key_value_heads"),
    ):
        model = tiny_model(n_layers=1, **overrides)
        assert reason in (use_fast_attention(model) or ""), overrides
        assert not any(type(m).__module__ == fast_attention.__name__ for m in model.modules())
    local = tiny_model(n_layers=2, attn_types=["global", "local"], window_size=3)
    assert use_fast_attention(local) is None  # GPT-Neo-style local layers take TransformerLens' path at call time
    reference = copy.deepcopy(local)
    use_original_attention(reference)
    tokens = padded_batch()
    with torch.inference_mode():
        torch.testing.assert_close(local(tokens), reference(tokens), **TOL)


def test_gradients_flow_through_the_fused_path():
    reference, fast = pair()
    tokens = padded_batch()
    for model in (reference, fast):
        model.zero_grad()
        model(tokens, return_type="loss").backward()
    for (name, p_ref), (_, p_fast) in zip(reference.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, atol=1e-5, rtol=1e-4, msg=name)


@torch.inference_mode()
def test_linked_weights_follow_every_edit(fused_calls):
    """Q/K/V live in one fused buffer; edits through the parameters (even .data) or replacing them are seen."""
    reference, fast = pair()
    tokens = padded_batch()
    attn, ref_attn = fast.blocks[1].attn, reference.blocks[1].attn
    assert attn._linked_qkv() is not None
    for name, value in reference.state_dict().items():
        assert torch.equal(fast.state_dict()[name], value), name  # same parameters, only laid out differently
    for model in (reference, fast):  # an in-place edit no version counter sees
        model.blocks[1].attn.W_K.data[2] *= -3.0
        model.blocks[1].attn.b_V.data[0] += 1.0
    torch.testing.assert_close(fast(tokens), reference(tokens), **TOL)
    assert attn._linked_qkv() is not None
    attn.W_V.data = attn.W_V.data * 2.0  # replaced: the buffer no longer holds the weights
    ref_attn.W_V.data *= 2.0
    assert attn._linked_qkv() is None
    torch.testing.assert_close(fast(tokens), reference(tokens), **TOL)
    assert fused_calls[0] == 2 * reference.cfg.n_layers  # still the fused path, copying the weights per call
    assert use_fast_attention(fast) is None and attn._linked_qkv() is not None  # linked anew
    torch.testing.assert_close(fast(tokens), reference(tokens), **TOL)


def fused_reference(sae, x: torch.Tensor) -> torch.Tensor:
    """The SAE's encode in float64 from its (rounded) weights and its own rounded input: what a
    bfloat16 encode would give without rounding the product or the biased sum."""
    with torch.inference_mode():
        sae_in = sae.process_sae_in(x).double()
        return (sae_in @ sae.W_enc.double() + sae.b_enc.double()).relu()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("normalize", ["none", "constant_norm_rescale"])
def test_fused_sae_encode_equals_saelens(dtype, normalize):
    """The encoding path's one-pass StandardSAE encode (bias inside addmm, ReLU in place) is SAELens' encode."""
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    from mechinterp.core.encoding import sae_encode

    g = torch.Generator().manual_seed(2)
    sae = StandardSAE(StandardSAEConfig(d_in=48, d_sae=300, normalize_activations=normalize))
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(300, generator=g) * 0.5)
        sae.b_dec.copy_(torch.randn(48, generator=g) * 0.1)
    sae = sae.to(dtype=dtype)
    x = torch.randn(3, 9, 48, generator=g)
    with torch.inference_mode():
        expected, got = sae.encode(x), sae_encode(sae, x)
    assert got.dtype == dtype and got.shape == (3, 9, 300)
    assert 0.05 < float((expected > 0).double().mean()) < 0.95  # a real mix of fired and not fired
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    else:  # SAELens rounds the product and then the biased sum to bfloat16, the fused path once
        assert not torch.equal(got, expected)  # the fused path is taken in bfloat16 too
        torch.testing.assert_close(got.float(), expected.float(), atol=2**-7, rtol=2**-7)
        # ... and is at least as close to the exact encode of the same bfloat16 numbers, on average and
        # in which features fire.
        exact = fused_reference(sae, x)
        err_fused, err_saelens = (got.double() - exact).abs(), (expected.double() - exact).abs()
        assert float(err_fused.mean()) <= float(err_saelens.mean())
        assert int(((got > 0) != (exact > 0)).sum()) <= int(((expected > 0) != (exact > 0)).sum())
    # A hook on the pre-activations takes SAELens' own encode, and sees them.
    seen = []
    with torch.inference_mode(), sae.hooks(fwd_hooks=[("hook_sae_acts_pre", lambda t, hook: seen.append(t.shape))]):
        torch.testing.assert_close(sae_encode(sae, x), expected, atol=0, rtol=0)
    assert seen == [torch.Size([3, 9, 300])]
    # Other architectures are SAELens' encode exactly.
    topk = TopKSAE(TopKSAEConfig(d_in=48, d_sae=300, k=5)).to(dtype=dtype)
    with torch.inference_mode():
        assert torch.equal(sae_encode(topk, x), topk.encode(x))
