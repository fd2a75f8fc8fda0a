"""Helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_script(script: str, *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120):
    """Run a chapter script as a user would, in a subprocess with the offline test environment."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def batch_dependent_rounding(encode):
    """``encode(sae, x)`` (the project's ``sae_encode``) with its float32 results moved by up to 2 ulp
    according to the batch's size and each row's place in it.

    Some CPUs' matmul kernels (AVX-512 ones among them) round a row's last bits differently by the
    shape of the batch it is in; this one's may not. A test that compares float32 activations encoded
    in different batches runs under this, so that it holds on every CPU.
    """
    import torch

    def rounded_by_batch(sae, x):
        out = encode(sae, x)
        if out.dtype != torch.float32:
            return out
        rows = torch.arange(x.shape[0], dtype=torch.float32, device=out.device).view(-1, *[1] * (out.dim() - 1))
        return out * (1.0 + 2.0**-23 * ((rows + x.shape[0]) % 5 - 2))

    return rounded_by_batch
