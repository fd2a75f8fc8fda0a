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
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = PROJECT_ROOT / "Images"
DEFAULT_PROMPTS_DIR = PROJECT_ROOT / "prompts"
# The project's cache folder (activation cache, demo world); MECHINTERP_CACHE moves it elsewhere.
CACHE_ENV_VAR = "MECHINTERP_CACHE"
DEFAULT_CACHE_ROOT = PROJECT_ROOT / ".cache"


def cache_root() -> Path:
    """The cache folder, read when called (not at import) so tests and users can redirect it."""
    return Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_ROOT)


def activation_cache_dir() -> Path:
    """Per-prompt activation summaries (see mechinterp.cache); safe to delete at any time."""
    return cache_root() / "activations"


def demo_dir() -> Path:
    """Where --demo keeps its synthetic model and SAE; rebuilt deterministically when missing."""
    return cache_root() / "demo"

# Output file names, one place so scripts, tests and the README agree.
MI1_PNG = "MI1.png"
MI1_CSV = "MI1.csv"
FEATURE_STATS_CSV = "feature_stats.csv"
ALWAYS_ON_CSV = "always_on_features.csv"
PROMPT_ACTIVATIONS_NPZ = "prompt_activations.npz"
