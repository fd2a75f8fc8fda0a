"""An offline Hugging Face cache holding the toy world under the real GPT-2 and SAE names (tests only).

The scripts' default commands load ``gpt2`` and ``gpt2-small-res-jb`` from the Hub; the tests put the
toy world at exactly those places in a temporary cache, so the real loading code runs end to end with
``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from mechinterp.core.toyworld import D_MODEL, D_SAE, DemoWorld

REAL_MODEL_REPO = "gpt2"  # what TransformerLens fetches for "gpt2-small"
REAL_SAE_REPO = "jbloom/GPT2-Small-SAEs-Reformatted"  # repo_id of gpt2-small-res-jb in SAELens
REAL_SAE_FOLDER = "blocks.8.hook_resid_pre"


def _snapshot_dir(hf_home: Path, repo_id: str) -> Path:
    """Create the hub cache layout (refs/main -> snapshots/<commit>) and return the snapshot folder."""
    repo_dir = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def install_in_hf_cache(world: DemoWorld, hf_home: Path) -> None:
    """Put the toy world into a Hugging Face cache under the real GPT-2 and SAE names.

    The SAE config is written in the pre-6.0 format that the real ``gpt2-small-res-jb`` repo uses,
    so SAELens' own conversion path is exercised exactly as for the real download.
    """
    model_snapshot = _snapshot_dir(hf_home, REAL_MODEL_REPO)
    for file in world.model_dir.iterdir():
        shutil.copy2(file, model_snapshot / file.name)
    sae_folder = _snapshot_dir(hf_home, REAL_SAE_REPO) / REAL_SAE_FOLDER
    sae_folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(world.sae_dir / "sae_weights.safetensors", sae_folder / "sae_weights.safetensors")
    shutil.copy2(world.sae_dir / "sparsity.safetensors", sae_folder / "sparsity.safetensors")
    legacy_cfg = {
        "model_name": "gpt2-small",
        "hook_point": REAL_SAE_FOLDER,
        "hook_point_layer": 8,
        "hook_point_head_index": None,
        "dataset_path": "Skylion007/openwebtext",
        "is_dataset_tokenized": False,
        "context_size": 128,
        "d_in": D_MODEL,
        "d_sae": D_SAE,
        "expansion_factor": D_SAE // D_MODEL,
        "dtype": "torch.float32",
        "device": "cpu",
        "b_dec_init_method": "geometric_median",
        "l1_coefficient": 8e-05,
        "lr": 0.0004,
    }
    (sae_folder / "cfg.json").write_text(json.dumps(legacy_cfg), encoding="utf-8")
