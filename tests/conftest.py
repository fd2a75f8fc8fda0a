"""Test set-up: an offline Hugging Face cache holding the toy world under the real names.

Before anything imports ``huggingface_hub`` (which reads ``HF_HOME`` once, at import), the session
points ``HF_HOME`` at a fresh temporary folder, turns on ``HF_HUB_OFFLINE=1`` and redirects the project's
own cache (``MECHINTERP_CACHE``). It then builds the toy world and installs it as ``gpt2`` and as the
``gpt2-small-res-jb`` SAE, so the scripts' default commands run end to end without network.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_SESSION_DIR: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _SESSION_DIR
    config.addinivalue_line("markers", "slow: real-size cases, excluded by -m 'not slow'")
    _SESSION_DIR = Path(tempfile.mkdtemp(prefix="mechinterp-tests-"))
    os.environ["HF_HOME"] = str(_SESSION_DIR / "hf_home")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["MECHINTERP_CACHE"] = str(_SESSION_DIR / "project_cache")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The toy model's matrices are tiny: one thread is fastest, and immune to slowdowns when the
    # machine's cores are busy with other work (multi-threaded tiny ops spin-wait on each other).
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_DIR is not None:
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The toy world, built once per session, also installed in the offline HF cache and as the demo."""
    from mechinterp.core import constants
    from tests import shared_builds
    from tests.hf_cache import install_in_hf_cache

    # One build per session, shared by the xdist workers; each worker's demo folder is its own copy.
    built = shared_builds.demo_world(tmp_path_factory, constants.demo_dir())
    install_in_hf_cache(built, Path(os.environ["HF_HOME"]))
    return built


@pytest.fixture(autouse=True)
def _seed_everything():
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def loaded_toy(world):
    """The toy model + SAE loaded through the project's loader (local folders), shared read-only."""
    from mechinterp.core.loading import Loaded, load_model, load_sae

    sae = load_sae("", "", world.sae_dir, "cpu")
    model = load_model(str(world.model_dir), sae, "cpu")
    return Loaded(model=model, sae=sae, model_label="toy-gpt2", device="cpu", is_demo=True)
