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


class PassRecorder:
    """What a mining pass computed: every window's activations as the pass encoded them, and its batches.

    Statistics are exact functions of the activations the pass computed; a one-window-at-a-time brute
    force can only match them to rounding on CPUs whose kernels round by the batch's shape. Tests check
    the statistics exactly against :attr:`acts` and the brute force to rounding.

    Use as ``with PassRecorder() as seen: mine(...)``; ``seen.acts[window_id]`` is float32
    ``[len(tokens), n_columns]`` (BOS left out), ``seen.windows[window_id]`` its ``MinedWindow`` and
    ``seen.batches`` the window ids of each batch, in order.
    """

    def __init__(self):
        self.acts: dict = {}
        self.windows: dict = {}
        self.batches: list[list[int]] = []

    def __enter__(self) -> PassRecorder:
        from mechinterp.cards import mining

        self._real = real = mining._batch_activations

        def recording(loaded, windows, n_bos, bos_id, cols, *rest, **options):
            acts, valid = real(loaded, windows, n_bos, bos_id, cols, *rest, **options)
            host = acts.float().cpu().numpy()
            for r, w in enumerate(windows):
                self.acts[w.window_id] = host[r, n_bos : n_bos + len(w.tokens)].copy()
                self.windows[w.window_id] = w
            self.batches.append([w.window_id for w in windows])
            return acts, valid

        mining._batch_activations = recording
        return self

    def __exit__(self, *exc) -> None:
        from mechinterp.cards import mining

        mining._batch_activations = self._real

    def in_order(self, n_windows: int) -> list:
        """The activations of windows ``0 .. n_windows - 1`` (each encoded exactly once by the pass)."""
        assert sorted(self.acts) == list(range(n_windows)), "the pass did not encode every window once"
        assert sum(len(b) for b in self.batches) == n_windows
        return [self.acts[w] for w in range(n_windows)]
