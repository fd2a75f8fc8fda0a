"""A tiny, deterministic "toy world": a GPT-2-architecture model and an SAE with planted features.

Why it exists: the real GPT-2 small and its SAE live on the Hugging Face Hub, which newcomers may not
reach and which tests and CI never reach. The toy world is built by code in seconds, from a seed, and
its answers are known because we put them there:

* a **happy** and an **angry** feature fire on (and only on) their concept words,
* three **always-on** features fire on every token, like the dense features of real SAEs,
* a **BOS** feature fires hugely on the beginning-of-sequence token only (GPT-2's BOS position has a
  huge norm and lights up the same features for every prompt; this is why the project excludes it),
* ~500 **token-detector** background features fire sparsely, as real features mostly do,
* each concept direction is wired to the unembedding so that it promotes a few planted output tokens
  (e.g. happy -> "hooray"); ablating the feature must change those logits,
* **confound** features, the kind that make a careless contrast of prompt sets lie (Chapter 2 must
  not call any of them a concept): two **position** features that fire on whatever token sits at one
  absolute position, a **length** feature whose activation rises with the token's position (so a
  prompt's max grows with its length), an exclamation-mark (**punctuation**) feature and a
  **stray-word** feature on " really".

The demo's prompt sets are written line by line from shared sentence frames (line i of every group
uses the same subject, verb and object), and carry the confounds of hand-written prompt sets: happy
prompts are longer (" really" before the feeling word in 60% of them, a trailing ", as always" in
half), angry prompts end in "!" 70% of the time, and ``control`` is a null group drawn exactly like
the baseline. ``--paired`` can pair them line by line.

The residual stream at the hook is, by construction, the token embedding plus a small positional term
plus small contributions of the (randomly initialised, down-scaled) transformer blocks. All planted
directions are orthogonal to each other, to the token "noise" subspace and to the all-ones vector, so
TransformerLens' weight processing (centering) leaves them untouched.

The same world serves two purposes:

* ``--demo`` on every script (:func:`ensure_demo_world`), titled as a synthetic demo everywhere;
* the offline tests, which install it in a Hugging Face cache under the *real* names
  (``tests/hf_cache.py``) so the exact default commands run end to end with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mechinterp.core.io import atomic_dir
from mechinterp.core.loading import load_sae_from_disk, quiet_third_party
from mechinterp.core.progress import Log

DEMO_MODEL_NAME = "toy-gpt2"
DEMO_HOOK = "blocks.8.hook_resid_pre"
DEMO_LAYER = 8
SEED = 1234
D_MODEL = 64
N_LAYERS = 12
N_HEADS = 4
N_CTX = 128
D_SAE = 512
BOS_TOKEN = "<|endoftext|>"
# Bump when the world's construction changes, so cached demo builds are rebuilt.
WORLD_VERSION = "3"

CONCEPT_WORDS: dict[str, tuple[str, ...]] = {
    "happy": ("delighted", "cheerful", "glad", "thrilled", "grateful", "joyful", "elated", "overjoyed"),
    "angry": ("furious", "outraged", "livid", "hostile", "irritated", "enraged", "bitter", "resentful"),
}
# Tokens each concept's direction promotes in the unembedding (what its decoder direction "writes").
PLANTED_OUTPUTS: dict[str, tuple[str, ...]] = {
    "happy": ("hooray", "sunshine", "laughter"),
    "angry": ("revenge", "fists", "shouting"),
}
# Baseline words sit in the same slot as the concept words, so that prompt length and structure match.
NEUTRAL_WORDS = ("ready", "quiet", "busy", "early", "late", "seated", "awake", "tired")
SUBJECTS = (
    "The teacher", "My neighbour", "The driver", "Our team", "The old man",
    "My sister", "The manager", "A student", "The doctor", "His friend",
)
VERBS = ("walked to", "looked at", "opened", "cleaned", "painted", "visited", "passed", "closed", "checked", "found")
OBJECTS = (
    "the station", "the window", "a small box", "the garden", "the kitchen",
    "the office", "the bridge", "a red car", "the library", "the market",
)
TAILS = ("this morning", "after lunch", "on Monday", "before dinner", "at noon", "last week", "", "")
# The incidental extras of the demo's prompt sets (see GROUP_STYLE): a stray intensifier, a trailing
# clause that makes prompts longer, and an exclamation mark in place of the full stop.
STRAY_WORD = "really"
CLAUSE = ", as always"
# Per group: share of prompts with STRAY_WORD before the slot word, with CLAUSE after it, ending in "!".
# Happy prompts are longer and carry stray words; angry ones shout (same length: "!" replaces ".");
# control is drawn exactly like the baseline (a null group).
GROUP_STYLE: dict[str, tuple[float, float, float]] = {
    "happy": (0.6, 0.65, 0.0),
    "angry": (0.05, 0.0, 0.7),
    "baseline": (0.05, 0.0, 0.0),
    "control": (0.05, 0.0, 0.0),
}
# Text positions (0 = first token after BOS) of the planted position features: 11 is reached by a
# quarter of the baseline's prompts and most of the longer happy ones, 13 by almost no baseline prompt.
POSITION_FEATURES = (11, 13)
# The length feature fires from this text position on, its activation rising by LENGTH_SLOPE per
# token up to LENGTH_CAP (below the concept features' 3.0).
LENGTH_START, LENGTH_SLOPE, LENGTH_CAP = 10, 0.3, 2.4
# Plain English so that the byte-level tokenizer also learns ordinary words for user text.
GENERIC_TEXT = (
    "The quick brown fox jumps over the lazy dog.",
    "Mechanistic interpretability studies the internal computations of neural networks.",
    "A sparse autoencoder rewrites a dense activation as a few active features.",
    "She said that the weather would be fine tomorrow, and it was.",
    "I love this product, it works perfectly and the support team was kind.",
    "They were waiting for the bus when it started to rain.",
    "What is the capital of France? Paris is the capital of France.",
    "Numbers like 1, 2, 3 and 2024 appear in text too.",
)


@dataclass(frozen=True)
class PlantedFeatures:
    """Feature indices of the planted features (deterministic from the seed).

    Attributes:
        concept: concept -> its feature (fires on the concept's words only).
        always_on: features that fire on every token.
        bos: the feature that fires on BOS only.
        position: text position (0 = first token after BOS) -> a feature firing on any token there.
        length: a feature whose activation rises with position, so a prompt's max grows with its length.
        punctuation: token -> a feature firing on it ("!").
        stray: token -> a feature firing on it (" really").
    """

    concept: dict[str, int]
    always_on: tuple[int, ...]
    bos: int
    position: dict[int, int] = field(default_factory=dict)
    length: int = -1
    punctuation: dict[str, int] = field(default_factory=dict)
    stray: dict[str, int] = field(default_factory=dict)

    @property
    def confounds(self) -> dict[str, int]:
        """Every planted confound feature by a readable name, e.g. ``"position 13"``, ``"'!'"``."""
        out = {f"position {p}": f for p, f in self.position.items()}
        out["length"] = self.length
        out.update({repr(t): f for t, f in {**self.punctuation, **self.stray}.items()})
        return out

    def to_dict(self) -> dict[str, object]:
        return {"concept": self.concept, "always_on": list(self.always_on), "bos": self.bos,
                "position": self.position, "length": self.length, "punctuation": self.punctuation,
                "stray": self.stray}


@dataclass(frozen=True)
class DemoWorld:
    """Paths of a built toy world."""

    root: Path
    model_dir: Path  # Hugging Face format GPT-2 (config.json, model.safetensors, tokenizer files)
    sae_dir: Path  # SAELens save_model format (cfg.json, sae_weights.safetensors, sparsity.safetensors)
    prompts_dir: Path  # happy/angry/baseline/control prompt files
    planted: PlantedFeatures


def planted_features(seed: int = SEED) -> PlantedFeatures:
    """Which SAE indices carry the planted features; spread out so none is trivially feature 0."""
    perm = np.random.default_rng(seed).permutation(D_SAE)
    return PlantedFeatures(
        concept={"happy": int(perm[0]), "angry": int(perm[1])},
        always_on=tuple(int(i) for i in perm[2:5]),
        bos=int(perm[5]),
        position={p: int(perm[6 + i]) for i, p in enumerate(POSITION_FEATURES)},
        length=int(perm[8]),
        punctuation={"!": int(perm[9])},
        stray={" " + STRAY_WORD: int(perm[10])},
    )


def make_sentence(rng: random.Random, slot_word: str) -> str:
    """One everyday sentence with ``slot_word`` in the feeling slot; all groups share this template."""
    tail = rng.choice(TAILS)
    middle = f"{rng.choice(OBJECTS)} {tail}".strip()
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {middle} and was {slot_word}."


def demo_prompt_sets(n_per_group: int = 48, seed: int = SEED) -> dict[str, list[str]]:
    """Prompt groups for the demo: two planted concepts, the baseline, and a null 'control' group.

    Line i of every group shares one sentence frame (subject, verb, object, time), so the sets are
    paired line by line; only the slot word and the group's incidental extras (:data:`GROUP_STYLE`)
    differ. ``control`` is drawn exactly like ``baseline`` (another neutral word on each line); a
    correct analysis finds (almost) nothing there, which is how the demo shows false-discovery control
    working. No sentence appears twice, within or across groups.
    """
    rng = random.Random(seed)
    frames: list[str] = []
    while len(frames) < n_per_group:
        middle = f"{rng.choice(OBJECTS)} {rng.choice(TAILS)}".strip()
        frame = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {middle}"
        if frame not in frames:
            frames.append(frame)
    groups: dict[str, list[str]] = {group: [] for group in GROUP_STYLE}
    for frame in frames:
        neutral, other = rng.sample(NEUTRAL_WORDS, 2)  # baseline and control never share a line
        words = {"happy": rng.choice(CONCEPT_WORDS["happy"]), "angry": rng.choice(CONCEPT_WORDS["angry"]),
                 "baseline": neutral, "control": other}
        for group, (stray, clause, bang) in GROUP_STYLE.items():
            word = (f"{STRAY_WORD} " if rng.random() < stray else "") + words[group]
            end = (CLAUSE if rng.random() < clause else "") + ("!" if rng.random() < bang else ".")
            groups[group].append(f"{frame} and was {word}{end}")
    return groups


def demo_corpus(n_sentences: int, seed: int = SEED) -> list[str]:
    """Text from the demo vocabulary (every group mixed), e.g. to train an SAE on the demo model."""
    rng = random.Random(seed)
    all_words = [w for words in CONCEPT_WORDS.values() for w in words] + list(NEUTRAL_WORDS)
    return [make_sentence(rng, rng.choice(all_words)) for _ in range(n_sentences)]


def _train_tokenizer(seed: int):
    """A byte-level BPE tokenizer (GPT-2's scheme) that keeps every demo word a single token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    rng = random.Random(seed)
    words = (
        [w for ws in CONCEPT_WORDS.values() for w in ws]
        + [w for ws in PLANTED_OUTPUTS.values() for w in ws]
        + list(NEUTRAL_WORDS)
        + [STRAY_WORD, "always"]
    )
    corpus = [make_sentence(rng, rng.choice(words)) for _ in range(3000)]
    corpus += [" ".join(words)] * 50 + list(GENERIC_TEXT) * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=[BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    hf_tok = GPT2TokenizerFast(
        tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=BOS_TOKEN, unk_token=BOS_TOKEN
    )
    for word in words:
        ids = hf_tok.encode(" " + word)
        if len(ids) != 1:
            raise RuntimeError(f"toy tokenizer split {word!r} into {len(ids)} tokens")
    return hf_tok


def _orthonormal_basis(rng: np.random.Generator, d: int) -> np.ndarray:
    """Columns 1.. form an orthonormal basis of the complement of the all-ones vector."""
    mat = np.concatenate([np.ones((d, 1)), rng.standard_normal((d, d - 1))], axis=1)
    q, _ = np.linalg.qr(mat)
    return q[:, 1:]


def _build_weights(vocab: dict[str, int], bos_id: int, seed: int) -> tuple[dict, dict, np.ndarray]:
    """Design the embedding, unembedding and SAE weights of the toy world."""
    rng = np.random.default_rng(seed)
    d, n_vocab = D_MODEL, len(vocab)
    basis = _orthonormal_basis(rng, d)
    u_bos, u_always = basis[:, 0], basis[:, 1]
    u_concept = {"happy": basis[:, 2], "angry": basis[:, 3]}
    # The confounds' directions: one per token-bound feature, per position feature, and for length.
    u_bang, u_stray, u_length = basis[:, 4], basis[:, 5], basis[:, 6]
    u_position = {p: basis[:, 7 + i] for i, p in enumerate(POSITION_FEATURES)}
    noise_basis = basis[:, 7 + len(POSITION_FEATURES):]  # everything token-specific, away from planted directions

    def noise(n: int, norm: float) -> np.ndarray:
        g = rng.standard_normal((n, noise_basis.shape[1]))
        g *= norm / np.linalg.norm(g, axis=1, keepdims=True)
        return g @ noise_basis.T

    w_e = noise(n_vocab, 1.0) + 1.0 * u_always
    for concept, words in CONCEPT_WORDS.items():
        for word in words:
            w_e[vocab["Ġ" + word]] += 3.0 * u_concept[concept]
    w_e[vocab["!"]] += 2.5 * u_bang
    w_e[vocab["Ġ" + STRAY_WORD]] += 2.5 * u_stray
    w_e[bos_id] = 12.0 * u_bos
    w_pos = noise(N_CTX, 0.2)
    # Position q of the sequence is text position q - 1 (BOS sits at 0 and gets no confound).
    text_pos = np.arange(N_CTX) - 1
    for p, u in u_position.items():
        w_pos[p + 1] += 2.2 * u
    # 1.0 above the length feature's threshold at LENGTH_START - 0.5, rising by LENGTH_SLOPE a token:
    # silent (-0.15) one token before LENGTH_START, 0.15 at it, then up to LENGTH_CAP.
    ramp = np.clip(1.0 + LENGTH_SLOPE * (text_pos - LENGTH_START + 0.5), 0.0, 1.0 + LENGTH_CAP)
    w_pos[1:] += ramp[1:, None] * u_length
    w_u = noise(n_vocab, 1.0)
    for concept, words in PLANTED_OUTPUTS.items():
        for word in words:
            w_u[vocab["Ġ" + word]] += 4.0 * u_concept[concept]

    planted = planted_features(seed)
    w_enc = np.zeros((d, D_SAE))
    b_enc = np.zeros(D_SAE)
    w_enc[:, planted.bos], b_enc[planted.bos] = u_bos, -1.0
    for i, f in enumerate(planted.always_on):
        direction = u_always + 0.3 * noise(1, 1.0)[0]
        w_enc[:, f], b_enc[f] = (0.8 + 0.2 * i) * direction, -0.2
    for concept, f in planted.concept.items():
        # Activation 1.5 * 3.0 - 1.5 = 3.0 on a concept word, exactly the planted magnitude, so the
        # decoder reconstructs the whole concept direction and ablating the feature removes all of it.
        w_enc[:, f], b_enc[f] = 1.5 * u_concept[concept], -1.5
    # The confounds: 2.5 - 0.5 = 2.0 on "!", 2.5 - 1.0 = 1.5 on " really", 2.2 - 1.0 = 1.2 at a position,
    # and the length ramp; all below the concept features' 3.0, so they never top Chapter 1's table.
    w_enc[:, planted.punctuation["!"]], b_enc[planted.punctuation["!"]] = u_bang, -0.5
    w_enc[:, planted.stray[" " + STRAY_WORD]], b_enc[planted.stray[" " + STRAY_WORD]] = u_stray, -1.0
    for p, f in planted.position.items():
        w_enc[:, f], b_enc[f] = u_position[p], -1.0
    w_enc[:, planted.length], b_enc[planted.length] = u_length, -1.0
    special = {planted.bos, *planted.always_on, *planted.concept.values(), *planted.confounds.values()}
    candidates = [i for i in range(n_vocab) if i != bos_id]
    for f in range(D_SAE):
        if f in special:
            continue
        # A token detector: it points at one token's specific embedding and fires on that token and on
        # tokens that happen to resemble it; lower thresholds make broader, denser features.
        token_noise = w_e[rng.choice(candidates)] @ noise_basis @ noise_basis.T
        norm = np.linalg.norm(token_noise)
        w_enc[:, f] = token_noise / norm
        b_enc[f] = -rng.uniform(0.25, 0.7) * norm
    w_dec = (w_enc / np.linalg.norm(w_enc, axis=0, keepdims=True)).T
    embed = {"wte": w_e, "wpe": w_pos, "lm_head": w_u}
    sae = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": np.zeros(d)}
    return embed, sae, w_dec


def _save_hf_model(model_dir: Path, hf_tok, embed: dict, seed: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(hf_tok),
        n_positions=N_CTX,
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.wte.weight.copy_(torch.tensor(embed["wte"]))
        model.transformer.wpe.weight.copy_(torch.tensor(embed["wpe"]))
        model.lm_head.weight.copy_(torch.tensor(embed["lm_head"]))
        # The blocks are real but quiet: random weights, with the writes into the residual stream
        # down-scaled so that the planted structure survives to the hook (and on to the logits).
        for block in model.transformer.h:
            block.attn.c_proj.weight.mul_(0.1)
            block.mlp.c_proj.weight.mul_(0.1)
    model.save_pretrained(model_dir, safe_serialization=True)
    hf_tok.save_pretrained(model_dir)
    # The real gpt2 config.json carries the legacy key n_ctx, which TransformerLens reads.
    config_path = model_dir / "config.json"
    config_dict = json.loads(config_path.read_text(encoding="utf-8"))
    config_dict["n_ctx"] = N_CTX
    config_path.write_text(json.dumps(config_dict, indent=2), encoding="utf-8")


def _firing_log10_density(model_dir: Path, sae_dir: Path, seed: int):
    """Feature densities on demo text, as SAELens' sparsity.safetensors stores them (log10)."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    sae = load_sae_from_disk(sae_dir, device="cpu")
    fired = torch.zeros(D_SAE)
    n_tokens = 0
    with torch.inference_mode():
        for text in demo_corpus(200, seed + 1):
            ids = torch.tensor([[tok.bos_token_id, *tok.encode(text)]])
            hidden = model(ids, output_hidden_states=True).hidden_states[DEMO_LAYER][0, 1:]
            # The SAE's encoder is orthogonal to the all-ones vector, so HF's un-centred residual
            # gives the same activations as TransformerLens' centred one.
            fired += (sae.encode(hidden) > 0).sum(0)
            n_tokens += hidden.shape[0]
    return torch.log10(fired / n_tokens + 1e-10)


def build_world(root: Path, seed: int = SEED) -> DemoWorld:
    """Build the toy world into ``root`` (replaced atomically) and return its paths."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from safetensors.torch import save_file

    root = Path(root)
    with quiet_third_party(), atomic_dir(root) as tmp:
        model_dir, sae_dir, prompts_dir = tmp / "model", tmp / "sae", tmp / "prompts"
        hf_tok = _train_tokenizer(seed)
        embed, sae_weights, _ = _build_weights(hf_tok.get_vocab(), hf_tok.bos_token_id, seed)
        _save_hf_model(model_dir, hf_tok, embed, seed)
        cfg = StandardSAEConfig(
            d_in=D_MODEL,
            d_sae=D_SAE,
            metadata=SAEMetadata(
                model_name=DEMO_MODEL_NAME,
                hook_name=DEMO_HOOK,
                prepend_bos=True,
                context_size=N_CTX,
                model_from_pretrained_kwargs={"center_writing_weights": True},
                neuronpedia_id=None,
            ),
        )
        sae = StandardSAE(cfg)
        sae.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in sae_weights.items()})
        sae.save_model(sae_dir)
        save_file({"sparsity": _firing_log10_density(model_dir, sae_dir, seed)}, sae_dir / "sparsity.safetensors")
        prompts_dir.mkdir()
        for group, prompts in demo_prompt_sets(seed=seed).items():
            # The module's name before the package had folders: the header is hashed into every run
            # record (prompt_file_sha256), so it stays as it was and the demo's outputs stay the same.
            header = f"# Synthetic demo prompts ({group}), generated by mechinterp.toyworld.\n"
            (prompts_dir / f"{group}.txt").write_text(header + "\n".join(prompts) + "\n", encoding="utf-8")
        planted = planted_features(seed)
        info = {"version": WORLD_VERSION, "seed": seed, "planted": planted.to_dict()}
        (tmp / "world.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return DemoWorld(root, root / "model", root / "sae", root / "prompts", planted)


def ensure_demo_world(root: Path, seed: int = SEED, log: Log | None = None) -> DemoWorld:
    """Return the demo world at ``root``, building it first if it is missing or out of date."""
    from filelock import FileLock  # installed with huggingface_hub

    root = Path(root)
    existing = _existing_world(root, seed)
    if existing is not None:
        return existing
    root.parent.mkdir(parents=True, exist_ok=True)
    # Two runs started together on a fresh cache must not build and swap the folder under each other.
    with FileLock(str(root.parent / f".{root.name}.lock")):
        existing = _existing_world(root, seed)  # built by another run while this one waited
        if existing is not None:
            return existing
        if log is not None:
            log(f"building the synthetic demo world in {root} (once, about 10 s) ...")
        return build_world(root, seed)


def _existing_world(root: Path, seed: int) -> DemoWorld | None:
    info_path = root / "world.json"
    if info_path.exists():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("version") == WORLD_VERSION and info.get("seed") == seed:
            return DemoWorld(root, root / "model", root / "sae", root / "prompts", planted_features(seed))
    return None
