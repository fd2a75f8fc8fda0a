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
  **stray-word** feature on " really",
* four structures that real SAEs and real prompt sets have:

  - a **split concept**: calm is carried by two features, ``calm_a`` on calm/relaxed/peaceful/serene
    and ``calm_b`` on content/mellow/tranquil/soothed, each silent on the other half's words, their
    directions at cosine :data:`SPLIT_COSINE` (as split or absorbed features of real SAEs are);
  - a **topic** feature on holiday nouns (beach, hotel, sea, ...), which the happy prompts mention
    far more often than the others;
  - a **template word**: a feature on the sentence-initial token 'Today' (not on ' today'), which
    opens most angry prompts;
  - **carry-over**: the happy feature also fires on the 1-3 tokens after a happy word, weaker at each
    step (about 2.0, 1.2, 0.5 after the 3.0 on the word), as real features keep firing after their
    word. Three heads of block 0 move the happy direction forward (see :func:`carry_heads`).

The demo's prompt sets are written line by line from shared sentence frames (line i of every group
uses the same subject, verb, object and time), and carry the confounds of hand-written prompt sets:
happy prompts are longer (" really" before the feeling word in 60% of them, a trailing ", as always"
in 65%) and name a holiday place in 70% (5% elsewhere), angry prompts end in "!" 70% of the time and
open with "Today," in 60%, in place of the time of day ("Today, the teacher walked to the station and
was livid!"; as long as the line it replaces), calm prompts use a word of either half of
the split in exactly half of the lines, and ``control`` is a null group drawn exactly like the
baseline. ``--paired`` can pair them line by line.

The residual stream at the hook is, by construction, the token embedding plus a small positional term
(with the carry heads' positional code) plus small contributions of the (randomly initialised,
down-scaled) transformer blocks, which write nothing along the directions the planted features read,
plus the carried happy direction. All planted directions are orthogonal to each other (but the two
calm halves), to the token "noise" subspace and to the all-ones vector, so TransformerLens' weight
processing (centering) leaves them untouched.

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
WORLD_VERSION = "4"

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
    "calm": (0.05, 0.0, 0.0),
    "baseline": (0.05, 0.0, 0.0),
    "control": (0.05, 0.0, 0.0),
}
# The demo's "calm" group says one concept in words that two features share out between them, as real
# SAEs split (or absorb) a concept: calm_a fires on the first four words only, calm_b on the others.
CALM_WORDS_A = ("calm", "relaxed", "peaceful", "serene")
CALM_WORDS_B = ("content", "mellow", "tranquil", "soothed")
# Cosine between the two calm directions (and the two features' decoder rows): split features of real
# SAEs point in similar directions, yet each fires on its own words only.
SPLIT_COSINE = 0.5
# A topic: holiday nouns, as the object of the sentence. Happy prompts mention one in TOPIC_SHARE of
# their lines, every other group in BASE_TOPIC_SHARE, so a topic feature differs with the happy group
# without meaning happy.
TOPIC_WORDS = ("beach", "hotel", "sea", "island", "resort", "holiday")
TOPIC_OBJECTS = ("the beach", "the hotel", "the sea", "the island", "the resort", "the holiday camp")
TOPIC_SHARE = {"happy": 0.7}
BASE_TOPIC_SHARE = 0.05
# A template word: OPENER_SHARE of the angry prompts open with "Today," in place of their time of day
# ("Today, the teacher walked to the station and was ..."; two tokens for two, so no prompt gets longer);
# its feature fires on the sentence-initial token 'Today' only (not on ' today').
OPENER = "Today"
OPENER_SHARE = {"angry": 0.6}
# Carry-over: the happy feature also fires on the 1st, 2nd and 3rd token after a happy word, at about
# these activations (3.0 on the word itself), as real features keep firing, weaker, after their word.
CARRY_CONCEPT = "happy"
CARRY_ACTIVATIONS = (2.0, 1.2, 0.5)
# Text positions (0 = first token after BOS) of the planted position features: 11 is reached by a
# quarter of the baseline's prompts and most of the longer happy ones, 13 by almost no baseline prompt.
POSITION_FEATURES = (11, 13)
# The length feature fires from this text position on, its activation rising by LENGTH_SLOPE per
# token up to LENGTH_CAP (below the concept features' 3.0), then by LENGTH_TAIL_SLOPE: a longer prompt's
# peak is still its last token, never a tie (the blocks add no noise along the planted directions).
LENGTH_START, LENGTH_SLOPE, LENGTH_CAP = 10, 0.3, 2.4
LENGTH_TAIL_SLOPE = 0.003
# Every token and position carries a fixed random component of this size along each token-bound planted
# direction: below every threshold, but two planted words (or one at two places) never tie exactly, so
# every way of computing the features agrees on which is the larger.
TIE_NOISE = 0.002
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
        calm_a, calm_b: the split calm concept, each on its half of the words (CALM_WORDS_A, CALM_WORDS_B).
        topic: fires on the holiday nouns (TOPIC_WORDS).
        opener: fires on the sentence-initial token 'Today' only.
        carry: the concept whose feature also fires on the next few tokens after its word.
    """

    concept: dict[str, int]
    always_on: tuple[int, ...]
    bos: int
    position: dict[int, int] = field(default_factory=dict)
    length: int = -1
    punctuation: dict[str, int] = field(default_factory=dict)
    stray: dict[str, int] = field(default_factory=dict)
    calm_a: int = -1
    calm_b: int = -1
    topic: int = -1
    opener: int = -1
    carry: str = CARRY_CONCEPT

    @property
    def split(self) -> dict[str, tuple[int, int]]:
        """Each split concept and the features that share it out: ``{"calm": (calm_a, calm_b)}``."""
        return {"calm": (self.calm_a, self.calm_b)}

    @property
    def confounds(self) -> dict[str, int]:
        """Every planted confound feature by a readable name, e.g. ``"position 13"``, ``"'!'"``, ``"topic"``.

        The topic feature and the opener are confounds of the contrasts they sit in: holiday nouns come
        with the happy prompts, 'Today' with the angry ones, and neither means the group's concept.
        """
        out = {f"position {p}": f for p, f in self.position.items()}
        out["length"] = self.length
        out.update({repr(t): f for t, f in {**self.punctuation, **self.stray}.items()})
        out["topic"] = self.topic
        out[repr(OPENER)] = self.opener
        return out

    def to_dict(self) -> dict[str, object]:
        return {"concept": self.concept, "always_on": list(self.always_on), "bos": self.bos,
                "position": self.position, "length": self.length, "punctuation": self.punctuation,
                "stray": self.stray, "calm_a": self.calm_a, "calm_b": self.calm_b, "topic": self.topic,
                "opener": self.opener, "carry": self.carry}


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
        # Drawn after the first eleven, so that every feature planted before them keeps its id.
        calm_a=int(perm[11]),
        calm_b=int(perm[12]),
        topic=int(perm[13]),
        opener=int(perm[14]),
    )


def make_sentence(rng: random.Random, slot_word: str) -> str:
    """One everyday sentence with ``slot_word`` in the feeling slot; all groups share this template."""
    tail = rng.choice(TAILS)
    middle = f"{rng.choice(OBJECTS)} {tail}".strip()
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {middle} and was {slot_word}."


def demo_prompt_sets(n_per_group: int = 48, seed: int = SEED) -> dict[str, list[str]]:
    """Prompt groups for the demo: three concepts (calm split over two features), the baseline, and a
    null 'control' group.

    Line i of every group shares one sentence frame (subject, verb, object, time), so the sets are
    paired line by line; only the slot word and the group's incidental extras differ: a stray word, a
    trailing clause and "!" (:data:`GROUP_STYLE`), a holiday noun as the object (:data:`TOPIC_SHARE`)
    and the opener "Today," in place of the time of day (exactly :data:`OPENER_SHARE` of the lines).
    Half the calm lines use a word of :data:`CALM_WORDS_A`, half one of :data:`CALM_WORDS_B`.
    ``control`` is drawn exactly like ``baseline`` (another neutral word on each line); a correct
    analysis finds (almost) nothing there, which is how the demo shows false-discovery control working.
    No sentence appears twice, within or across groups.
    """
    rng = random.Random(seed)
    frames: list[tuple[str, str, str, str]] = []
    while len(frames) < n_per_group:
        frame = (rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(TAILS))
        if frame not in frames:
            frames.append(frame)
    calm_sides = [i % 2 for i in range(n_per_group)]  # exactly half from each side of the split
    rng.shuffle(calm_sides)
    # The opener takes the place of a time of day, so it goes on lines whose frame has one.
    timed = [i for i, frame in enumerate(frames) if frame[3]]
    openers = {group: set(rng.sample(timed, min(len(timed), round(share * n_per_group))))
               for group, share in OPENER_SHARE.items()}
    groups: dict[str, list[str]] = {group: [] for group in GROUP_STYLE}
    seen: set[str] = set()
    for i, (frame, side) in enumerate(zip(frames, calm_sides)):
        neutral, other = rng.sample(NEUTRAL_WORDS, 2)  # baseline and control never share a line
        words = {"happy": rng.choice(CONCEPT_WORDS["happy"]), "angry": rng.choice(CONCEPT_WORDS["angry"]),
                 "calm": rng.choice((CALM_WORDS_A, CALM_WORDS_B)[side]), "baseline": neutral, "control": other}
        for group in GROUP_STYLE:
            opener = i in openers.get(group, ())
            line = _demo_line(rng, frame, group, words[group], opener)
            while line in seen:  # a holiday object can make two frames alike: draw the extras again
                line = _demo_line(rng, frame, group, words[group], opener)
            seen.add(line)
            groups[group].append(line)
    return groups


def _demo_line(rng: random.Random, frame: tuple[str, str, str, str], group: str, word: str, opener: bool) -> str:
    """One prompt of ``group``: the frame with ``word`` in the feeling slot and the group's extras
    (``opener``: "Today," opens the line in place of the frame's time of day)."""
    subject, verb, obj, tail = frame
    stray, clause, bang = GROUP_STYLE[group]
    if rng.random() < TOPIC_SHARE.get(group, BASE_TOPIC_SHARE):
        obj = rng.choice(TOPIC_OBJECTS)
    if opener:
        subject, tail = f"{OPENER}, {subject[0].lower()}{subject[1:]}", ""
    word = (f"{STRAY_WORD} " if rng.random() < stray else "") + word
    end = (CLAUSE if rng.random() < clause else "") + ("!" if rng.random() < bang else ".")
    middle = f"{obj} {tail}".strip()
    return f"{subject} {verb} {middle} and was {word}{end}"


def demo_corpus(n_sentences: int, seed: int = SEED) -> list[str]:
    """Text from the demo vocabulary (happy, angry and neutral words mixed), e.g. to train an SAE on the
    demo model."""
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
        + list(CALM_WORDS_A + CALM_WORDS_B + TOPIC_WORDS + NEUTRAL_WORDS)
        + [STRAY_WORD, "always", "today"]
    )
    corpus = [make_sentence(rng, rng.choice(words)) for _ in range(3000)]
    # The demo's own prompts teach it the holiday objects and the sentence-initial 'Today'.
    corpus += [line for lines in demo_prompt_sets(seed=seed).values() for line in lines] * 5
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
    for text in [" " + word for word in words] + [OPENER]:
        ids = hf_tok.encode(text)
        if len(ids) != 1:
            raise RuntimeError(f"toy tokenizer split {text!r} into {len(ids)} tokens")
    return hf_tok


def _orthonormal_basis(rng: np.random.Generator, d: int) -> np.ndarray:
    """Columns 1.. form an orthonormal basis of the complement of the all-ones vector."""
    mat = np.concatenate([np.ones((d, 1)), rng.standard_normal((d, d - 1))], axis=1)
    q, _ = np.linalg.qr(mat)
    return q[:, 1:]


# --- carry-over: attention heads that copy a concept onto the next few tokens ------------------------
#
# A feature can only fire after its word if the model moves the word's direction forward, and a model
# does that with attention. Head j (j = 1, 2, 3) of block CARRY_LAYER attends from every token to the
# token j places back and copies the concept direction it finds there, scaled so that the feature fires
# less at each step and not at all from the 4th token on. Which token is j back is read from a positional
# code, r (cos w p, sin w p) for a few frequencies w, that every position past BOS carries in its
# embedding: the query turns its own code back by w j, so q.k = r^2 K(q - j - k) with
# K(D) = sum_w cos(w D), which is len(w) at D = 0 and at most K_max at every other offset the context
# allows (the frequencies were searched for a small K_max). LayerNorm divides each token's code by the
# token's norm, and a concept word's norm is twice an ordinary token's, so a raw peak would lose to an
# ordinary neighbour. The score therefore also subtracts c0 > K_max, read from the always-on direction
# (norm 1 in every token, divided by LayerNorm exactly as the code is): every wrong key scores below 0
# whatever its norm, the right one above 0, and BOS, a sink with a small positive score, takes the
# attention where no token sits j places back.

CARRY_LAYER = 0
# The demo's context is 128 tokens: four frequencies keep K <= 2.41 of 4 at offsets 1..131.
DEMO_CARRY_FREQS = (2.3718, 1.495, 1.0093, 1.3192)
CARRY_CODE_NORM = 0.5  # norm of the positional code in each embedding row (an ordinary token's is ~1.4)
# Every token's LayerNorm scale sqrt(d_model) / norm is above this (a concept word late in a long prompt).
CARRY_MIN_SCALE = 1.5
CARRY_MARGIN = 20.0  # the smallest gap, in attention logits, between the right key and any other


def position_code(n_ctx: int, freqs: tuple[float, ...]) -> np.ndarray:
    """The carry heads' positional code ``[n_ctx, 2 * len(freqs)]`` (cosines, then sines); none at BOS."""
    w = np.asarray(freqs)
    pos = np.arange(n_ctx)[:, None]
    code = CARRY_CODE_NORM / np.sqrt(len(w)) * np.concatenate([np.cos(pos * w), np.sin(pos * w)], axis=1)
    code[0] = 0.0
    return code


def carry_heads(
    code_basis: np.ndarray, u: dict[str, np.ndarray], carried: tuple[float, ...], value_scale: float,
    freqs: tuple[float, ...], n_ctx: int, d_head: int,
) -> list[dict[str, np.ndarray]]:
    """Query, key, value and output maps of the carry heads, one per offset 1..len(carried).

    Args:
        code_basis: ``[d, 2F]`` the residual directions that hold :func:`position_code`.
        u: unit directions ``always`` (norm 1 in every text token), ``bos`` and ``concept`` (the one carried).
        carried: amount of the concept direction to write 1, 2, ... tokens after the word.
        value_scale: the concept coordinate of a concept word after LayerNorm (its gain x its scale).

    Returns:
        Per head ``q``, ``k``, ``v`` ``[d, d_head]`` acting on the normalised residual ``(x - mean) / std``
        (before LayerNorm's weight and bias: see :func:`install_heads`) and ``o`` ``[d_head, d]``.
    """
    d, n_freq = code_basis.shape[0], len(freqs)
    w = np.asarray(freqs)
    r2 = CARRY_CODE_NORM**2 / n_freq
    k_max = np.cos(np.outer(np.arange(1, n_ctx + len(carried)), w)).sum(1).max()
    c0 = k_max + 0.3 * (n_freq - k_max)
    sink = 0.25 * (n_freq - c0)
    # Gaps (in units of the key's scale x K) between the right key, the sink and every other key.
    gap = min(sink + CARRY_MIN_SCALE * (c0 - k_max), (CARRY_MIN_SCALE - 0.25) * (n_freq - c0))
    sharp = CARRY_MARGIN * np.sqrt(d_head) / (r2 * CARRY_MIN_SCALE * gap)
    heads = []
    for j, amount in enumerate(carried, start=1):
        turn = np.zeros((2 * n_freq, 2 * n_freq))
        for f, (c, s) in enumerate(zip(np.cos(w * j), np.sin(w * j))):
            turn[[f, f, n_freq + f, n_freq + f], [f, n_freq + f, f, n_freq + f]] = c, -s, s, c
        q, k, v, o = np.zeros((d, d_head)), np.zeros((d, d_head)), np.zeros((d, d_head)), np.zeros((d_head, d))
        q[:, : 2 * n_freq] = sharp * code_basis @ turn
        k[:, : 2 * n_freq] = code_basis
        q[:, 2 * n_freq] = -sharp * c0 * r2 * u["always"]
        k[:, 2 * n_freq] = u["always"]
        # BOS's normalised residual is ~sqrt(d) along u_bos: its key scores `sink` (in the same units).
        q[:, 2 * n_freq + 1] = sharp * r2 * u["always"]
        k[:, 2 * n_freq + 1] = sink / np.sqrt(d) * u["bos"]
        v[:, 0] = u["concept"]
        o[0] = amount / value_scale * u["concept"]
        heads.append({"q": q, "k": k, "v": v, "o": o})
    return heads


def install_heads(block: dict[str, np.ndarray], prefix: str, heads: list[dict[str, np.ndarray]], d_head: int) -> None:
    """Write ``heads`` into heads 0, 1, ... of a GPT-2 block's checkpoint arrays (Hugging Face keys, Conv1D
    layout), through the block's own ``ln_1``: the maps act on ``(x - mean) / std`` whatever its weight and
    bias, which TransformerLens' ``fold_ln`` then folds back exactly."""
    c_attn, bias = block[prefix + "attn.c_attn.weight"], block[prefix + "attn.c_attn.bias"]
    ln_w, ln_b = block[prefix + "ln_1.weight"], block[prefix + "ln_1.bias"]
    d = c_attn.shape[0]
    for h, head in enumerate(heads):
        for part, name in enumerate("qkv"):
            cols = slice(part * d + h * d_head, part * d + (h + 1) * d_head)
            c_attn[:, cols] = head[name] / ln_w[:, None]
            bias[cols] = -ln_b @ c_attn[:, cols]
        block[prefix + "attn.c_proj.weight"][h * d_head:(h + 1) * d_head] = head["o"]


def _directions(rng: np.random.Generator, d: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The planted unit directions by name, the token-noise basis, and the carry heads' code basis.

    The structures added later (split calm, topic, opener, positional code) take the basis' last
    columns, so the first planted directions sit where they always did.
    """
    basis = _orthonormal_basis(rng, d)
    names = ("bos", "always", "happy", "angry", "bang", "stray", "length", *(f"position {p}" for p in POSITION_FEATURES))
    u = {name: basis[:, i] for i, name in enumerate(names)}
    n_late = 5 + 2 * len(DEMO_CARRY_FREQS)
    late = basis[:, basis.shape[1] - n_late:]
    # calm_a and calm_b share a component: cos(calm_a, calm_b) = SPLIT_COSINE.
    shared, own = np.sqrt(SPLIT_COSINE), np.sqrt(1 - SPLIT_COSINE)
    u["calm_a"], u["calm_b"] = shared * late[:, 0] + own * late[:, 1], shared * late[:, 0] + own * late[:, 2]
    u["topic"], u["opener"] = late[:, 3], late[:, 4]
    noise_basis = basis[:, len(names): basis.shape[1] - n_late]  # everything token-specific, away from planted directions
    return u, noise_basis, late[:, 5:]


def _embeddings(
    vocab: dict[str, int], bos_id: int, u: dict[str, np.ndarray], noise, code_basis: np.ndarray,
    rng: np.random.Generator,
):
    """Token and position embeddings (``[vocab, d]``, ``[n_ctx, d]``) with the planted directions."""
    w_e = noise(len(vocab), 1.0) + 1.0 * u["always"]
    word_sets = {**CONCEPT_WORDS, "calm_a": CALM_WORDS_A, "calm_b": CALM_WORDS_B}
    for name, words in word_sets.items():
        for word in words:
            w_e[vocab["Ġ" + word]] += 3.0 * u[name]
    for word in TOPIC_WORDS:
        w_e[vocab["Ġ" + word]] += 2.5 * u["topic"]
    w_e[vocab[OPENER]] += 2.5 * u["opener"]  # the sentence-initial token, without a leading space
    w_e[vocab["!"]] += 2.5 * u["bang"]
    w_e[vocab["Ġ" + STRAY_WORD]] += 2.5 * u["stray"]
    w_e[bos_id] = 12.0 * u["bos"]
    w_pos = noise(N_CTX, 0.2) + position_code(N_CTX, DEMO_CARRY_FREQS) @ code_basis.T
    # Position q of the sequence is text position q - 1 (BOS sits at 0 and gets no confound).
    text_pos = np.arange(N_CTX) - 1
    for p in POSITION_FEATURES:
        w_pos[p + 1] += 2.2 * u[f"position {p}"]
    # 1.0 above the length feature's threshold at LENGTH_START - 0.5, rising by LENGTH_SLOPE a token:
    # silent (-0.15) one token before LENGTH_START, 0.15 at it, then up to LENGTH_CAP and on, slowly.
    ramp = np.clip(1.0 + LENGTH_SLOPE * (text_pos - LENGTH_START + 0.5), 0.0, 1.0 + LENGTH_CAP)
    ramp += LENGTH_TAIL_SLOPE * np.maximum(text_pos - LENGTH_START + 0.5 - LENGTH_CAP / LENGTH_SLOPE, 0.0)
    w_pos[1:] += ramp[1:, None] * u["length"]
    # Not along length or position: a token-specific part there would tie them to the last token's identity.
    bound = np.stack([u[n] for n in u if n not in ("bos", "always", "length") and not n.startswith("position")])
    w_e += TIE_NOISE * rng.standard_normal((len(vocab), len(bound))) @ bound
    w_pos += TIE_NOISE * rng.standard_normal((N_CTX, len(bound))) @ bound
    return w_e, w_pos


def _demo_carry_heads(vocab: dict[str, int], u: dict[str, np.ndarray], w_e, w_pos, code_basis) -> list[dict]:
    """The carry heads for the happy concept, scaled on a happy word at LENGTH_START (a typical place)."""
    x = w_e[[vocab["Ġ" + w] for w in CONCEPT_WORDS[CARRY_CONCEPT]]] + w_pos[LENGTH_START + 1]
    x = x - x.mean(-1, keepdims=True)
    value_scale = 3.0 * float(np.mean(np.sqrt(D_MODEL) / np.linalg.norm(x, axis=-1)))
    # The feature reads 1.5 x the concept coordinate - 1.5: this much of the direction gives each activation.
    carried = tuple((a + 1.5) / 1.5 for a in CARRY_ACTIVATIONS)
    dirs = {"always": u["always"], "bos": u["bos"], "concept": u[CARRY_CONCEPT]}
    return carry_heads(code_basis, dirs, carried, value_scale, DEMO_CARRY_FREQS, N_CTX, D_MODEL // N_HEADS)


def _build_weights(vocab: dict[str, int], bos_id: int, seed: int) -> tuple[dict, dict, np.ndarray]:
    """Design the embedding, unembedding, carry heads and SAE weights of the toy world."""
    rng = np.random.default_rng(seed)
    d, n_vocab = D_MODEL, len(vocab)
    u, noise_basis, code_basis = _directions(rng, d)

    def noise(n: int, norm: float) -> np.ndarray:
        g = rng.standard_normal((n, noise_basis.shape[1]))
        g *= norm / np.linalg.norm(g, axis=1, keepdims=True)
        return g @ noise_basis.T

    w_e, w_pos = _embeddings(vocab, bos_id, u, noise, code_basis, rng)
    w_u = noise(n_vocab, 1.0)
    for concept, words in PLANTED_OUTPUTS.items():
        for word in words:
            w_u[vocab["Ġ" + word]] += 4.0 * u[concept]

    planted = planted_features(seed)
    w_enc = np.zeros((d, D_SAE))
    b_enc = np.zeros(D_SAE)
    w_enc[:, planted.bos], b_enc[planted.bos] = u["bos"], -1.0
    for i, f in enumerate(planted.always_on):
        direction = u["always"] + 0.3 * noise(1, 1.0)[0]
        w_enc[:, f], b_enc[f] = (0.8 + 0.2 * i) * direction, -0.2
    _plant_encoders(planted, u, w_enc, b_enc)
    special = {planted.bos, *planted.always_on, *planted.concept.values(), *planted.confounds.values(),
               planted.calm_a, planted.calm_b}
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
    # A split feature's encoder ignores the other half's direction, its decoder writes its own.
    w_dec[planted.calm_a], w_dec[planted.calm_b] = u["calm_a"], u["calm_b"]
    # The directions the planted features read: the blocks must not write into them (see _save_hf_model).
    read = np.stack([u[name] for name in u if name not in ("bos", "always")])
    embed = {"wte": w_e, "wpe": w_pos, "lm_head": w_u, "read": np.linalg.qr(read.T)[0].T,
             "carry_heads": _demo_carry_heads(vocab, u, w_e, w_pos, code_basis)}
    sae = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": np.zeros(d)}
    return embed, sae, w_dec


def _plant_encoders(planted: PlantedFeatures, u: dict[str, np.ndarray], w_enc: np.ndarray, b_enc: np.ndarray) -> None:
    """Encoder columns and biases of the concept, split, topic, opener and confound features."""
    for concept, f in planted.concept.items():
        # Activation 1.5 * 3.0 - 1.5 = 3.0 on a concept word, exactly the planted magnitude, so the
        # decoder reconstructs the whole concept direction and ablating the feature removes all of it.
        w_enc[:, f], b_enc[f] = 1.5 * u[concept], -1.5
    for f, mine, other in ((planted.calm_a, "calm_a", "calm_b"), (planted.calm_b, "calm_b", "calm_a")):
        # Read only what is not shared with the other half: 3.0 on its own words, silent on the other's.
        own = u[mine] - (u[mine] @ u[other]) * u[other]
        w_enc[:, f], b_enc[f] = 1.5 * own / (own @ u[mine]), -1.5
    # The topic and opener: 2.5 - 0.3 = 2.2 on a holiday noun and 2.5 - 0.5 = 2.0 on 'Today'. The
    # confounds: 2.5 - 0.5 = 2.0 on "!", 2.5 - 1.0 = 1.5 on " really", 2.2 - 1.0 = 1.2 at a position,
    # and the length ramp; all below the concept features' 3.0, so they never top Chapter 1's table.
    w_enc[:, planted.topic], b_enc[planted.topic] = u["topic"], -0.3
    w_enc[:, planted.opener], b_enc[planted.opener] = u["opener"], -0.5
    w_enc[:, planted.punctuation["!"]], b_enc[planted.punctuation["!"]] = u["bang"], -0.5
    w_enc[:, planted.stray[" " + STRAY_WORD]], b_enc[planted.stray[" " + STRAY_WORD]] = u["stray"], -1.0
    for p, f in planted.position.items():
        w_enc[:, f], b_enc[f] = u[f"position {p}"], -1.0
    w_enc[:, planted.length], b_enc[planted.length] = u["length"], -1.0


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
        # down-scaled so that the planted structure survives to the hook (and on to the logits). They
        # write nothing along the directions the planted features read: a block reading the carried
        # happy direction on the '.' after a happy word would otherwise nudge the length feature there
        # (by 0.002), and within prompts of equal length it would no longer depend on length alone.
        keep = torch.eye(D_MODEL) - torch.tensor(embed["read"].T @ embed["read"], dtype=torch.float32)
        for block in model.transformer.h:
            for layer in (block.attn.c_proj, block.mlp.c_proj):
                layer.weight.copy_(0.1 * layer.weight @ keep)
                layer.bias.copy_(layer.bias @ keep)
        # Except the carry heads, which copy the happy direction onto the next few tokens.
        block = model.transformer.h[CARRY_LAYER]
        params = {k: v.detach().double().numpy().copy() for k, v in block.state_dict().items()}
        install_heads(params, "", embed["carry_heads"], D_MODEL // N_HEADS)
        for key in ("attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight"):
            block.get_parameter(key).copy_(torch.tensor(params[key]))
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
        # The demo's own kind of prompts too: demo_corpus has no calm, holiday or 'Today' sentences.
        extra = [line for lines in demo_prompt_sets(seed=seed + 1).values() for line in lines]
        for text in demo_corpus(200, seed + 1) + extra:
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
