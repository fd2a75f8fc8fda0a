"""The unembedding of Chapter 4's many forward passes, without the per-call costs TransformerLens pays.

Why it exists: Chapter 4 reruns the model from the SAE's hook once per intervention (the feature and its
20 controls, every steering coefficient, on every batch), and each run ends in the unembedding,
``[positions, d_model] @ [d_model, 50,257]``. TransformerLens' ``Unembed.forward`` computes
``F.linear(x, W_U.T.contiguous(), b_U)``: every call copies ``W_U`` into a transposed layout (154 MB for
GPT-2 small) and allocates a fresh ``[positions, 50,257]`` output whose pages the operating system
faults in and zeroes (60-90 MB per batch of 16 prompts). With a narrow model these cost more than the
matrix product itself; with GPT-2 small's, the copy alone is a third of it.

:func:`reused_unembed` computes the same thing, the ``addmm(b_U, x, W_U^T)`` that ``F.linear`` runs, with
the transposed weight made once and, on request, the output written into one reused buffer. It takes
over the module's forward only after checking, on the model's own weights, that it reproduces the
module's output bit for bit; otherwise (another TransformerLens version, a device whose ``F.linear``
takes another kernel) it leaves the model alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

PROBE_SHAPE = (3, 5)  # batch and positions of the check input: a 3-D input, as the model's forward passes


@contextlib.contextmanager
def reused_unembed(model: Any, reuse_output: bool = False) -> Iterator[bool]:
    """Within the block, ``model.unembed`` computes its output with a transposed weight made once.

    Args:
        model: a TransformerLens ``HookedTransformer`` (its ``unembed`` has ``W_U``, ``b_U``, ``hook_in``,
            ``hook_out``).
        reuse_output: write every output into one buffer (grown to the largest call). The logits a
            forward pass returns are then overwritten by the next pass, so only a caller that is done
            with them before running the model again may ask for it.

    Yields:
        True when the faster forward is in place; False when the check found a difference, and the
        module's own forward runs.
    """
    unembed = model.unembed
    weight = unembed.W_U.detach().T.contiguous()  # [d_vocab, d_model], the layout F.linear is given
    bias = unembed.b_U.detach()
    buffer: list[torch.Tensor] = []

    def product(x: torch.Tensor) -> torch.Tensor:
        # F.linear runs addmm(bias, x, weight.t()) on a 2-D input and on a contiguous 3-D one (viewed
        # as 2-D); only there is its output written into the buffer, with the same addmm.
        if not (reuse_output and x.dim() in (2, 3) and x.is_contiguous()):
            return F.linear(x, weight, bias)
        rows = x.numel() // x.shape[-1]
        if not buffer or buffer[0].shape[0] < rows:
            buffer[:] = [torch.empty(rows, weight.shape[0], dtype=torch.result_type(x, weight), device=x.device)]
        out = buffer[0][:rows]
        torch.addmm(bias, x.reshape(rows, x.shape[-1]), weight.t(), out=out)
        return out.view(*x.shape[:-1], weight.shape[0])

    def forward(residual: torch.Tensor) -> torch.Tensor:
        return unembed.hook_out(product(unembed.hook_in(residual)))

    probe = torch.randn(*PROBE_SHAPE, weight.shape[1], generator=torch.Generator().manual_seed(0))
    probe = probe.to(device=weight.device, dtype=weight.dtype)
    same = torch.equal(product(probe), unembed(probe))
    had_own = "forward" in vars(unembed)
    saved = vars(unembed).get("forward")
    if same:
        unembed.forward = forward
    try:
        yield same
    finally:
        if had_own:
            unembed.forward = saved
        elif same:
            del unembed.forward
