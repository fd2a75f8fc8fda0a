"""Judging an SAE trained on a language model: SAELens' evals, and the toy world's known directions.

The numbers are SAELens' own (``sae_lens.evals.run_evals``, special tokens excluded): L0, explained
variance, and next-token loss with the hook's activations replaced by the reconstruction, compared with
the clean model and with the hook zero-ablated. On the toy world, whose concept directions were planted,
:func:`planted_direction_match` also says whether the trained SAE found them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from mechinterp.training.common import quiet_saelens


@dataclass
class ModelEvaluation:
    """An SAE judged on a language model, as SAELens' evals compute it (special tokens excluded)."""

    l0: float
    explained_variance: float
    mse: float
    cossim: float
    ce_loss_clean: float
    ce_loss_with_sae: float
    ce_loss_zero_ablated: float
    dead_latents: int  # latents that never fired on the evaluation tokens
    n_tokens: int

    @property
    def loss_recovered(self) -> float | None:
        """(zero-ablated - with SAE) / (zero-ablated - clean): 1 = as good as the model, 0 = as bad as
        deleting the activations. None when zero-ablation does not hurt (the score means nothing then)."""
        gap = self.ce_loss_zero_ablated - self.ce_loss_clean
        if gap <= 1e-6:
            return None
        return (self.ce_loss_zero_ablated - self.ce_loss_with_sae) / gap

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "loss_recovered": self.loss_recovered}

    def __repr__(self) -> str:
        recovered = "n/a" if self.loss_recovered is None else f"{self.loss_recovered:.3f}"
        return (f"ModelEvaluation(L0 {self.l0:.2f}, explained variance {self.explained_variance:.3f}, next-token "
                f"loss clean {self.ce_loss_clean:.4f} / with SAE {self.ce_loss_with_sae:.4f} / zeroed "
                f"{self.ce_loss_zero_ablated:.4f} (recovered {recovered}), {self.dead_latents} dead latents, "
                f"{self.n_tokens:,} tokens)")


def evaluate_on_model(
    sae: Any,
    model: Any,
    dataset: Any,
    context_size: int,
    n_batches: int,
    batch_prompts: int = 8,
) -> ModelEvaluation:
    """L0, explained variance and next-token loss (clean / SAE-spliced / zero-ablated) via ``sae_lens.evals``.

    Args:
        sae: an inference SAE whose metadata names its hook (``cfg.metadata.hook_name``).
        dataset: texts to evaluate on (a "text"-column dataset or a Hugging Face dataset name),
            ideally not the training text.
    """
    from sae_lens import ActivationsStore, run_evals
    from sae_lens.evals import EvalConfig
    from sae_lens.training.activation_scaler import ActivationScaler

    with quiet_saelens(), torch.no_grad():
        store = ActivationsStore.from_sae(
            model,
            sae,
            dataset=dataset,
            context_size=context_size,
            streaming=True,
            store_batch_size_prompts=batch_prompts,
            n_batches_in_buffer=4,
            train_batch_size_tokens=context_size,
            device=str(sae.device),
        )
        eval_cfg = EvalConfig(
            batch_size_prompts=batch_prompts,
            n_eval_reconstruction_batches=n_batches,
            n_eval_sparsity_variance_batches=n_batches,
            compute_ce_loss=True,
            compute_sparsity_metrics=True,
            compute_variance_metrics=True,
            compute_featurewise_density_statistics=True,
        )
        metrics, feature_metrics = run_evals(
            sae, store, model, ActivationScaler(), eval_cfg, exclude_special_tokens=True
        )
    density = np.asarray(feature_metrics["feature_density"], dtype=float)
    ce = metrics["model_performance_preservation"]
    quality = metrics["reconstruction_quality"]
    return ModelEvaluation(
        l0=float(metrics["sparsity"]["l0"]),
        explained_variance=float(quality["explained_variance"]),
        mse=float(quality["mse"]),
        cossim=float(quality["cossim"]),
        ce_loss_clean=float(ce["ce_loss_without_sae"]),
        ce_loss_with_sae=float(ce["ce_loss_with_sae"]),
        ce_loss_zero_ablated=float(ce["ce_loss_with_ablation"]),
        dead_latents=int((density == 0).sum()),
        n_tokens=int(metrics["token_stats"]["total_tokens_eval_sparsity_variance"]),
    )


def planted_direction_match(sae: Any, reference_sae: Any, features: dict[str, int]) -> dict[str, dict[str, float]]:
    """For each named feature of ``reference_sae``: the trained latent whose decoder row is closest to it.

    Used with the toy world, whose planted concept directions are known.
    """
    from sae_lens.util import cosine_similarities

    cos = cosine_similarities(sae.W_dec.detach().float(), reference_sae.W_dec.detach().float())  # [d_sae, d_ref]
    out: dict[str, dict[str, float]] = {}
    for name, feature in features.items():
        column = cos[:, feature]
        best = int(column.argmax())
        out[name] = {"reference_feature": feature, "latent": best, "cos": float(column[best])}
    return out
