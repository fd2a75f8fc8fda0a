"""Names used across the project, each defined once.

The defaults reproduce the tutorial: GPT-2 small with Joseph Bloom's residual-stream SAEs, read at the
input of block 8 (the middle-to-late layers are where abstract, nameable features tend to live).
"""

from __future__ import annotations

import os
from pathlib import Path

# The language model, as TransformerLens names it ("gpt2-small" is TransformerLens' alias for HF "gpt2").
DEFAULT_MODEL = "gpt2-small"
# SAELens release of pretrained residual-stream SAEs for GPT-2 small (one SAE per layer).
DEFAULT_SAE_RELEASE = "gpt2-small-res-jb"
# The SAE within that release; for this release the id is also the hook it reads.
DEFAULT_SAE_ID = "blocks.8.hook_resid_pre"

# Neuronpedia feature pages are <base>/<neuronpedia id of the SAE>/<feature index>.
NEURONPEDIA_BASE = "https://www.neuronpedia.org"

# The project's root: every default path is derived from here, never from the working directory.
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # mechinterp/core/constants.py -> the repository
DEFAULT_OUT_DIR = PROJECT_ROOT / "Images"
DEFAULT_PROMPTS_DIR = PROJECT_ROOT / "prompts"
# The project's cache folder (activation cache, demo world); MECHINTERP_CACHE moves it elsewhere.
CACHE_ENV_VAR = "MECHINTERP_CACHE"
DEFAULT_CACHE_ROOT = PROJECT_ROOT / ".cache"


def cache_root() -> Path:
    """The cache folder, read when called (not at import) so tests and users can redirect it."""
    return Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_ROOT)


def activation_cache_dir() -> Path:
    """Per-prompt activation summaries (see mechinterp.core.cache); safe to delete at any time."""
    return cache_root() / "activations"


def demo_dir() -> Path:
    """Where --demo keeps its synthetic model and SAE; rebuilt deterministically when missing."""
    return cache_root() / "demo"


def mining_cache_dir() -> Path:
    """Corpus-mining checkpoints (see mechinterp.cards.mining): continued or reused by a rerun; safe to delete."""
    return cache_root() / "mining"

# Output file names, one place so scripts, tests and the README agree. Names with a {field} are
# templates: fill them with .format(feature=..., group=...).
# Chapter 1
MI1_PNG = "MI1.png"  # features x tokens heatmap
MI1_CSV = "MI1.csv"  # the top features table
MI1_TOKENS_CSV = "MI1_token_activations.csv"  # every heatmap cell
# Chapter 2
FEATURE_STATS_CSV = "feature_stats.csv"
ALWAYS_ON_CSV = "always_on_features.csv"
MI2_PNG, MI2_CSV = "MI2.png", "MI2.csv"  # mean activation per group, every feature
MI3_PNG, MI3_CSV = "MI3.png", "MI3.csv"  # prompts x top features heatmaps
MI4_PNG = "MI4_{group}.png"  # volcano plot per group
DESIGN_CSV = "design_checks.csv"  # how each group's prompts differ from the baseline's: length, tokens, endings
DESIGN_PAIRS_CSV = "design_pairs.csv"  # --paired: the tokens that differ within each line pair
WORD_SETS_CSV = "concept_word_sets.csv"  # which words each concept finding rests on, and how often they occur
EVIDENCE_CSV = "feature_evidence.csv"  # where each significant feature's difference comes from, and its verdict
# Chapter 3
MI5_PNG = "MI5_{feature}.png"  # activation histogram + logit effects
MI5_CSV = "MI5_{feature}.csv"  # logit effects behind MI5
MI5_HIST_CSV = "MI5_{feature}_hist.csv"  # histogram counts behind MI5
CARD_HTML = "feature_{feature}.html"
CARD_JSON = "feature_{feature}.json"
CARDS_CSV = "feature_cards.csv"
CARDS_INDEX_HTML = "index.html"  # links every card in the folder
# A feature family's card (--family 409+501): its MI5 files take the family's name as {feature}
FAMILY_HTML = "family_{family}.html"
FAMILY_JSON = "family_{family}.json"
MI5_MEMBERS_CSV = "MI5_{feature}_members.csv"  # a family card's members, one row each
# Chapter 3 with a mined corpus (--corpus FILE / --dataset NAME)
MI5_CORPUS_PNG = "MI5_{feature}_corpus.png"  # histogram of the feature's activations over the corpus
MI5_CORPUS_CSV = "MI5_{feature}_corpus_hist.csv"  # the numbers behind it: tokens and windows per bin
CORPUS_FEATURES_CSV = "corpus_features.csv"  # --all-features: every feature's density and top example
CORPUS_HIST_CSV = "corpus_histograms.csv"  # --all-features: every feature's tokens per activation bin
# Chapter 4
MI6_PNG = "MI6_{feature}.png"
MI6_ABLATION_CSV = "MI6_{feature}_ablation.csv"
MI6_STEERING_CSV = "MI6_{feature}_steering.csv"
MI6_GENERATIONS_CSV = "MI6_{feature}_generations.csv"
MI6_JSON = "MI6_{feature}.json"
# Chapter 5
MI7_PNG, MI7_CSV = "MI7.png", "MI7.csv"  # training curves
MI8_PNG, MI8_CSV, MI8_JSON = "MI8.png", "MI8.csv", "MI8.json"  # learned vs true features
SAE_SUBDIR = "sae"  # the trained SAE, loadable with --sae-path OUT/sae
CHECKPOINT_SUBDIR = "checkpoints"
EVALUATION_JSON = "evaluation.json"  # written inside SAE_SUBDIR
SPARSITY_FILENAME = "sparsity.safetensors"  # what SAELens' pretrained loader reads (key "sparsity")
RUNNER_CFG_FILENAME = "runner_cfg.json"  # SAELens' name for the training run's full configuration
CURVE_IN_CHECKPOINT = "training_curve.json"  # MI7's points so far, in the checkpoint an interrupt saves
# Chapter 6
MI9_PNG = "MI9_{feature}.png"  # top components, heads as a layer x head heatmap, predicted vs measured drops
MI9_CSV = "MI9_{feature}.csv"  # one row per component: mean contribution, share, spread
MI9_SOURCES_CSV = "MI9_{feature}_sources.csv"  # top heads' contributions split by source token
MI9_OFFSETS_CSV = "MI9_{feature}_offsets.csv"  # top heads' contributions split by distance to the source
MI9_WEIGHTS_CSV = "MI9_{feature}_weights.csv"  # neurons, heads and tokens from the weights alone
MI9_ABLATION_CSV = "MI9_{feature}_ablation.csv"  # predicted vs measured mean-ablation drops
MI9_JSON = "MI9_{feature}.json"  # everything above, plus the checks
FEATURE_TO_WEIGHTS_CSV = "feature_to_weights.csv"  # one summary row per feature
# Every script
RUN_RECORD_JSON = "{script}_run.json"
