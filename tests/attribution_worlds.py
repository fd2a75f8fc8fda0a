"""Small hand-built worlds with known answers for Chapter 6's attribution (built in well under a second).

* :func:`silent_world` - every transformer block writes nothing (``W_O``, ``b_O``, ``W_out``, ``b_out`` all
  zero), and the feature's direction is planted in the embeddings of two words: the attribution must put
  everything on ``embed`` (and a little on ``pos_embed``), and exactly 0 on every head and MLP.
* :func:`copy_head_world` - one planted head, ``L1H2``, attends from every position to the most recent
  ``thrilled`` and writes the feature's direction there; nothing else carries the direction. The
  attribution must rank ``L1H2`` first, name ``thrilled`` as its source, and mean-ablating it must remove
  the feature.
* :func:`random_gpt2_world` - random GPT-2-shaped weights (LayerNorms and biases random too), processed
  the way the project loads GPT-2 (``fold_ln``, ``center_writing_weights``, ``fold_value_biases``), with a
  random SAE: no planted answer, but the rows must still add up exactly.

The models are TransformerLens ``HookedTransformer`` objects built from a ``HookedTransformerConfig`` with
weights set by hand; the SAEs are SAELens ``StandardSAE`` objects. A word-level tokenizer (one token per
word) makes the tokens readable.
"""

from __future__ import annotations

import numpy as np
import torch

from mechinterp.core.loading import Loaded, LoadedSAE

BOS = "<bos>"
WORDS = (
    "the",
    "a",
    "my",
    "teacher",
    "sister",
    "driver",
    "was",
    "is",
    "and",
    "then",
    "walked",
    "to",
    "opened",
    "saw",
    "window",
    "garden",
    "box",
    "station",
    "today",
    "quiet",
    "busy",
    "late",
    "happy",
    "glad",
    "thrilled",
    ".",
)
PLANTED_WORDS = ("happy", "glad")  # silent world: these embeddings carry the feature's direction
COPIED_WORD = "thrilled"  # copy-head world: the head brings the feature from this token
HOOK = "blocks.2.hook_resid_pre"
FEATURE = 5


def word_tokenizer():
    """A Hugging Face fast tokenizer with one token per word of :data:`WORDS` (id 0 is BOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {BOS: 0} | {w: i + 1 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=BOS))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, unk_token=BOS, pad_token=BOS
    )


def _basis(rng: np.random.Generator, d: int) -> np.ndarray:
    """Orthonormal columns spanning the complement of the all-ones vector (centring leaves them alone)."""
    mat = np.concatenate([np.ones((d, 1)), rng.standard_normal((d, d - 1))], axis=1)
    q, _ = np.linalg.qr(mat)
    return q[:, 1:]


def _config(n_layers: int = 3, d_model: int = 32, n_heads: int = 4, d_vocab: int = len(WORDS) + 1, **kw):
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=4 * d_model,
        n_ctx=32,
        d_vocab=d_vocab,
        act_fn="gelu_new",
        normalization_type="LNPre",
        seed=0,
        device="cpu",
        **kw,
    )


def _sae(
    d_in: int,
    d_sae: int,
    w_f: np.ndarray,
    threshold: float,
    rng: np.random.Generator,
    hook: str = HOOK,
    **cfg_kw,
):
    """A StandardSAE whose feature ``FEATURE`` reads ``w_f`` and fires above ``threshold``; a non-zero
    ``b_dec`` (subtracted from the input) and random other features make the bookkeeping non-trivial."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    cfg = StandardSAEConfig(
        d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook, prepend_bos=True), **cfg_kw
    )
    sae = StandardSAE(cfg)
    w_enc = rng.standard_normal((d_in, d_sae)) / np.sqrt(d_in)
    b_dec = 0.1 * rng.standard_normal(d_in)
    b_enc = -0.5 + 0.1 * rng.standard_normal(d_sae)
    w_enc[:, FEATURE] = w_f
    # With b_dec subtracted first, this b_enc puts the threshold exactly at x @ w_f = threshold.
    b_enc[FEATURE] = -threshold + b_dec @ w_f
    w_dec = (w_enc / np.linalg.norm(w_enc, axis=0, keepdims=True)).T
    state = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
    sae.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()})
    sae.eval()
    return sae


def _loaded(model, sae, label: str, hook: str = HOOK) -> Loaded:
    return Loaded(
        model=model,
        sae=LoadedSAE(sae=sae, hook_name=hook, label=label, neuronpedia_id=None, log_sparsity=None),
        model_label=label,
        device="cpu",
    )


def _set(param: torch.nn.Parameter, value) -> None:
    with torch.no_grad():
        param.copy_(torch.as_tensor(value, dtype=param.dtype))


def _embeddings(rng: np.random.Generator, noise_basis: np.ndarray, n_vocab: int, d: int) -> np.ndarray:
    g = rng.standard_normal((n_vocab, noise_basis.shape[1]))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return g @ noise_basis.T


def silent_world(seed: int = 0) -> tuple[Loaded, np.ndarray]:
    """Blocks that write nothing; the feature's direction ``u`` is planted in the embeddings of
    :data:`PLANTED_WORDS` (3 units) and faintly in the positional embeddings. Returns ``(loaded, u)``."""
    from transformer_lens import HookedTransformer

    rng = np.random.default_rng(seed)
    cfg = _config()
    model = HookedTransformer(cfg)
    model.tokenizer = word_tokenizer()
    d = cfg.d_model
    basis = _basis(rng, d)
    u, noise_basis = basis[:, 0], basis[:, 1:]
    w_e = _embeddings(rng, noise_basis, cfg.d_vocab, d)
    vocab = model.tokenizer.get_vocab()
    for word in PLANTED_WORDS:
        w_e[vocab[word]] += 3.0 * u
    w_pos = 0.2 * _embeddings(rng, noise_basis, cfg.n_ctx, d) + 0.05 * rng.standard_normal((cfg.n_ctx, 1)) * u
    _set(model.embed.W_E, w_e)
    _set(model.pos_embed.W_pos, w_pos)
    for block in model.blocks:  # attention and MLPs compute, but write nothing into the residual stream
        _set(block.attn.W_O, torch.zeros_like(block.attn.W_O))
        _set(block.attn.b_O, torch.zeros_like(block.attn.b_O))
        _set(block.mlp.W_out, torch.zeros_like(block.mlp.W_out))
        _set(block.mlp.b_out, torch.zeros_like(block.mlp.b_out))
    model.eval()
    return _loaded(model, _sae(d, 16, 1.5 * u, 1.5 * 1.5, rng), "silent world"), u


def copy_head_world(seed: int = 0, **sae_kw) -> tuple[Loaded, np.ndarray]:
    """Head ``L1H2`` attends to the most recent :data:`COPIED_WORD` and writes the feature's direction ``u``
    there. The token itself carries a marker ``m`` (orthogonal to ``u``); every token carries ``c``, which
    the head's query reads. Other heads and MLPs are random and small. Returns ``(loaded, u)``."""
    from transformer_lens import HookedTransformer

    rng = np.random.default_rng(seed)
    cfg = _config()
    model = HookedTransformer(cfg)
    model.tokenizer = word_tokenizer()
    d, d_head = cfg.d_model, cfg.d_head
    basis = _basis(rng, d)
    u, marker, const, noise_basis = basis[:, 0], basis[:, 1], basis[:, 2], basis[:, 3:]
    vocab = model.tokenizer.get_vocab()
    w_e = _embeddings(rng, noise_basis, cfg.d_vocab, d) + const
    w_e[vocab[COPIED_WORD]] += 3.0 * marker
    w_e[vocab[BOS]] = 4.0 * noise_basis[:, 0]
    _set(model.embed.W_E, w_e)
    _set(model.pos_embed.W_pos, 0.2 * _embeddings(rng, noise_basis, cfg.n_ctx, d))
    with torch.no_grad():  # everything else: small random writes (their projections on u are small but not 0)
        for block in model.blocks:
            for p in (block.attn.W_Q, block.attn.W_K, block.attn.W_V):
                p.normal_(0, 0.3)
            block.attn.W_O.normal_(0, 0.05)
            block.attn.b_O.normal_(0, 0.02)
            block.mlp.W_in.normal_(0, 0.2)
            block.mlp.W_out.normal_(0, 0.02)
            block.mlp.b_out.normal_(0, 0.02)
    direction = np.zeros(d_head)
    direction[0] = 1.0
    attn = model.blocks[1].attn
    # The query reads c (every token), the key reads the marker: only `thrilled` scores, and strongly.
    _set(attn.W_Q[2], 4.0 * np.outer(const, direction))
    _set(attn.W_K[2], 4.0 * np.outer(marker, direction))
    _set(attn.b_Q[2], np.zeros(d_head))
    _set(attn.b_K[2], np.zeros(d_head))
    # The value reads the marker, the output writes u: attending to `thrilled` writes ~3 units of u.
    _set(attn.W_V[2], 0.6 * np.outer(marker, direction))
    _set(attn.b_V[2], np.zeros(d_head))
    _set(attn.W_O[2], np.outer(direction, u))
    model.eval()
    sae = _sae(d, 16, u, 1.5, rng, **sae_kw)
    return _loaded(model, sae, "copy-head world"), u


def random_gpt2_world(
    n_layers: int = 12,
    d_model: int = 768,
    n_heads: int = 12,
    d_vocab: int = 256,
    d_sae: int = 64,
    seed: int = 0,
    hook: str = "blocks.8.hook_resid_pre",
    **sae_kw,
) -> Loaded:
    """Random weights of GPT-2's shape, processed as the project loads GPT-2, and a random SAE.

    LayerNorm gains and biases, attention and MLP biases are all random (non-zero), so folding them into the
    weights and the value biases into ``b_O`` is really exercised.
    """
    from transformer_lens import HookedTransformer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = _config(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_vocab=d_vocab)
    cfg_ln = _config(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_vocab=d_vocab)
    cfg_ln.normalization_type = "LN"
    raw = HookedTransformer(cfg_ln)
    with torch.no_grad():
        for name, p in raw.named_parameters():
            if name.endswith(".w"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.split(".")[-1].startswith("b"):
                p.normal_(0, 0.05)
            else:
                p.normal_(0, 0.5 / np.sqrt(p.shape[-2] if p.ndim >= 2 else 1.0))
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(
        raw.state_dict(),
        fold_ln=True,
        center_writing_weights=True,
        center_unembed=True,
        fold_value_biases=True,
    )
    model.eval()
    del raw
    sae = _sae(d_model, d_sae, rng.standard_normal(d_model) / np.sqrt(d_model), 0.0, rng, hook=hook, **sae_kw)
    return _loaded(model, sae, "random GPT-2-shaped", hook=hook)


def tokenized_ids(loaded: Loaded, texts: list[str]):
    """Token ids of ``texts`` with BOS first, as the project tokenizes (mechinterp.core.encoding.tokenize)."""
    from mechinterp.core.encoding import tokenize

    return tokenize(loaded, texts)


COPY_TEXTS = [
    "my sister was thrilled and then walked to the station today .",
    "the teacher opened the window and was quiet .",
    "a driver saw the box and was busy .",
    "the teacher was thrilled .",
    "my sister walked to the garden and was late .",
    "then the driver saw a box and was thrilled and quiet today .",
    "the driver opened the window today .",
    "a teacher walked and was busy and late .",
]
SILENT_TEXTS = [
    "my sister was happy today .",
    "the teacher opened the window and was glad .",
    "a driver saw the box and was busy .",
    "the station was quiet and the driver was late .",
    "my teacher is glad and happy .",
]
