"""Real-size checks (GPT-2 small's shape, a 24,576-feature SAE, random weights), marked slow.

Run them with ``python -m pytest -m slow``. Speed does not depend on weight values, and neither does
the equality of the batched pipeline with the reference paths, so random weights are a fair test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechinterp.core.encoding import PromptAggregates, Tokenized, aggregate_prompts
from mechinterp.core.loading import Loaded, LoadedSAE

pytestmark = pytest.mark.slow

HOOK = "blocks.8.hook_resid_pre"


@pytest.fixture(scope="module")
def gpt2_shaped():
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024,
        act_fn="gelu_new", normalization_type="LN",
    )
    model = HookedTransformer(cfg)
    model.eval()
    sae = StandardSAE(StandardSAEConfig(d_in=768, d_sae=24576, metadata=SAEMetadata(hook_name=HOOK, prepend_bos=True)))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.05)
        sae.b_enc.fill_(-0.5)  # sparse, as trained SAEs are
    loaded = Loaded(model=model, sae=LoadedSAE(sae=sae, hook_name=HOOK, label="random", neuronpedia_id=None,
                                                log_sparsity=None), model_label="gpt2-shaped", device="cpu")
    return loaded


def test_real_size_batched_equals_reference(gpt2_shaped):
    from sae_lens import HookedSAETransformer

    rng = np.random.default_rng(0)
    ids = [[50256, *rng.integers(0, 50256, int(n)).tolist()] for n in rng.integers(4, 60, 12)]
    tokenized = Tokenized(ids, n_skip=1)
    batched = PromptAggregates(aggregate_prompts(gpt2_shaped, tokenized, batch_size=8), 24576)
    single = PromptAggregates(aggregate_prompts(gpt2_shaped, tokenized, batch_size=1), 24576)
    np.testing.assert_allclose(batched.dense("max"), single.dense("max"), atol=1e-4, rtol=0)
    np.testing.assert_allclose(batched.dense("mean"), single.dense("mean"), atol=1e-4, rtol=0)

    reference = HookedSAETransformer(gpt2_shaped.model.cfg)
    reference.load_state_dict(gpt2_shaped.model.state_dict())
    _, cache = reference.run_with_cache_with_saes(torch.tensor([ids[0]]), saes=[gpt2_shaped.sae.sae])
    acts = cache[f"{HOOK}.hook_sae_acts_post"][0, 1:].max(0).values.detach().numpy()
    np.testing.assert_allclose(batched.dense("max")[0], acts, atol=1e-4, rtol=0)
    assert (acts > 0).sum() > 10  # the comparison is not between two all-zero vectors
