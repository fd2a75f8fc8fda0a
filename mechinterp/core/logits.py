"""What a feature writes: its decoder direction read through the unembedding (the "direct path").

``W_dec[f] @ W_U`` on the model as loaded says which next tokens one unit of the feature pushes up or
down, ignoring the layers between the hook and the output. Chapter 3's cards show it; Chapter 4 takes
its targets from it by default, and then tests whether the model really behaves so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from mechinterp.core.loading import Loaded, hook_layer
from mechinterp.core.tokens import decode_token


@dataclass
class LogitEffect:
    token_id: int
    token: str
    value: float


def residual_direction(loaded: Loaded, feature: int) -> torch.Tensor:
    """What one unit of ``feature`` adds to the residual stream, ``[d_model]``.

    For an SAE on the residual stream or on an attention/MLP output that is its decoder row. For an SAE
    on the attention heads' ``hook_z`` it is the row mapped through each head's ``W_O`` (the decoder row
    is ``[n_heads * d_head]``, flattened as SAELens does); for ``mlp.hook_post`` through ``W_out``.
    """
    hook = loaded.sae.hook_name
    row = loaded.sae.sae.W_dec[feature]
    model = loaded.model
    if hook.endswith(".hook_z"):
        layer = hook_layer(hook)
        per_head = row.reshape(model.cfg.n_heads, model.cfg.d_head).to(model.W_O.dtype)
        return torch.einsum("hd,hdm->m", per_head, model.W_O[layer])
    if hook.endswith("mlp.hook_post"):
        return row.to(model.W_out.dtype) @ model.W_out[hook_layer(hook)]
    return row


def logit_effects(loaded: Loaded, feature: int, k: int = 15) -> tuple[list[LogitEffect], list[LogitEffect]]:
    """The ``k`` most promoted and ``k`` most suppressed tokens of ``W_dec[feature] @ W_U``.

    Uses the model's ``W_U`` as loaded (TransformerLens has folded the final LayerNorm's weights into
    it and centred it), so the values are the direct logit contribution of one unit of the feature.
    For SAEs on attention heads (``hook_z``) the decoder row is first mapped into the residual stream
    (:func:`residual_direction`).

    Returns:
        ``(promoted, suppressed)``, each strongest first; promoted values are > 0 and suppressed < 0, so
        either list can be shorter than ``k``.
    """
    with torch.inference_mode():
        return direction_logit_effects(loaded, residual_direction(loaded, feature), k)


def family_logit_effects(loaded: Loaded, weights: Mapping[int, float],
                         k: int = 15) -> tuple[list[LogitEffect], list[LogitEffect]]:
    """:func:`logit_effects` of ``sum(weight * residual_direction(f))`` over the ``weights`` {feature: weight}.

    A feature family writes through all its members: weighted by each member's typical max activation,
    this is what the family writes when every member fires at its typical strength, and the direction
    Chapter 4 steers a family with.
    """
    with torch.inference_mode():
        direction = sum(w * residual_direction(loaded, f) for f, w in weights.items())
        return direction_logit_effects(loaded, direction, k)


def direction_logit_effects(loaded: Loaded, direction: torch.Tensor,
                            k: int = 15) -> tuple[list[LogitEffect], list[LogitEffect]]:
    """The ``k`` most promoted and ``k`` most suppressed tokens of ``direction @ W_U`` (``direction``:
    ``[d_model]`` in the residual stream), each strongest first, as :func:`logit_effects` returns them."""
    direction = direction.to(loaded.model.W_U.dtype)  # [d_model]
    effect = (direction @ loaded.model.W_U).float().cpu()  # [d_vocab]
    k = min(k, effect.numel())
    top = torch.topk(effect, k)
    bottom = torch.topk(-effect, k)
    tok = loaded.model.tokenizer

    def rows(values: torch.Tensor, ids: torch.Tensor, sign: float) -> list[LogitEffect]:
        # Only tokens actually pushed in the column's direction: a feature that promotes 3 tokens has 3
        # promoted tokens, not 3 and a dozen slightly suppressed ones listed as "promoted".
        return [LogitEffect(int(i), decode_token(tok, int(i)), sign * float(v)) for v, i in zip(values, ids) if v > 0]

    return rows(top.values, top.indices, 1.0), rows(bottom.values, bottom.indices, -1.0)
