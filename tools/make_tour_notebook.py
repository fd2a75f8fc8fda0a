"""Write ``notebooks/tour.ipynb``: Chapters 1-4 and 6 from Python, on the demo world, with inline figures.

The notebook is kept as this script so that a change to it is a readable diff; the ``.ipynb`` is
committed without outputs (Jupyter fills them in) and ``tests/test_notebook.py`` executes it.

Run:
    python tools/make_tour_notebook.py          # rewrites notebooks/tour.ipynb
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "tour.ipynb"

CELLS: list[tuple[str, str]] = [
    ("md", """# A tour of the chapters from Python

Each chapter script is a thin layer over the `mechinterp` package: typed options in, typed results out.
This notebook runs Chapters 1-4 and 6 on the **demo world** (a tiny GPT-2-shaped model and SAE with
planted features, built locally in seconds, no network). For the real GPT-2 small and
`gpt2-small-res-jb`, write `SourceOptions()` instead of `SourceOptions(demo=True)`.

Install once with `pip install -e .` in the clone, so `import mechinterp` works from this folder."""),
    ("code", """from mechinterp.core.source import SourceOptions, load, resolve_source

source = resolve_source(SourceOptions(demo=True))  # which model and SAE (nothing loaded yet)
loaded = load(source)                              # the model (TransformerLens) and the SAE (SAELens)
loaded.title"""),
    ("md", """## Chapter 1: which features light up on a text?

`top_features` encodes the text up to the SAE's hook, runs the SAE's encoder, and ranks features by
their maximum activation over the text's tokens (the BOS position excluded)."""),
    ("code", """from mechinterp.investigate.report import token_heatmap
from mechinterp.investigate.text_features import top_features

text = "I was thrilled when the package finally arrived, but furious that the box was crushed."
found = top_features(loaded, text, top_k=8)
found"""),
    ("code", """token_heatmap(found.heat, found.tokens, found.features, loaded.title)"""),
    ("md", """## Chapter 2: what does a feature mean?

`contrast_prompts` does what the script does: it reads the prompt files, encodes every prompt (through
the activation cache), tests every feature for a difference between each group and the baseline
(Mann-Whitney U, Benjamini-Hochberg q-values, a held-out replication), and gives each significant
feature a verdict (concept, lexical, positional, length or context)."""),
    ("code", """from mechinterp.core.prompts import PromptOptions
from mechinterp.meaning.options import MeaningOptions
from mechinterp.meaning.run import contrast_prompts

meaning = contrast_prompts(source, PromptOptions(), MeaningOptions())
meaning"""),
    ("code", """happy = meaning.group("happy")
for row in happy.top(3):
    print(f"#{row.feature}: q = {row.q:.2g}, AUROC = {row.auroc:.2f}, "
          f"fires in {row.frac_group:.0%} of happy vs {row.frac_baseline:.0%} of baseline prompts, verdict {row.verdict}")
best = happy.top(1)[0]
print(f"chapter 2: happy rank 1 = #{best.feature} ({best.verdict})")"""),
    ("code", """from mechinterp.meaning.figures import volcano

c = happy.contrast
volcano(c.effect_size, c.q_value, c.tested, [r.feature for r in happy.top(3)], 0.05, "happy", "baseline",
        loaded.title)"""),
    ("md", """## Chapter 3: what is this feature, really?

A card shows where the feature fires (its top prompts, token by token), what it writes
(`W_dec[f] @ W_U`, the tokens it promotes and suppresses) and how often it fires."""),
    ("code", """from mechinterp.cards.card import CardOptions, feature_cards
from mechinterp.cards.figures import card_figure

texts, groups = meaning.prompts.flat()
card = feature_cards(loaded, [best.feature], texts, groups, CardOptions(baseline="baseline"))[0]
card"""),
    ("code", """card_figure(card, loaded.title)"""),
    ("md", """## Chapter 4: does it matter? Ablation and steering

`test_feature` ablates the feature where it fires (keeping the SAE's error term, so nothing else
changes), compares the effect with firing-rate-matched control features, and steers with it."""),
    ("code", """from mechinterp.causal.intervene import FeatureTestOptions, test_feature

causal = test_feature(loaded, best.feature, meaning.prompts, FeatureTestOptions(max_prompts=24, n_generate=1))
causal"""),
    ("md", """## Chapter 6: where does the feature come from?

The feature's pre-activation is a linear read-out of the residual stream, which is exactly a sum of
the model's components (embeddings, every head, every MLP). `attribute_feature` splits it, checks the
sum, and tests the top components by ablation."""),
    ("code", """from mechinterp.attribution.attribute import attribute_feature
from mechinterp.attribution.report import attribution_figure

attribution = attribute_feature(loaded, meaning.prompts.groups["happy"][:8], best.feature)
attribution"""),
    ("code", """attribution_figure(attribution, loaded.model.cfg.n_heads, loaded.title)"""),
]


def build() -> nbformat.NotebookNode:
    cells = [new_markdown_cell(text) if kind == "md" else new_code_cell(text) for kind, text in CELLS]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main() -> int:
    NOTEBOOK.parent.mkdir(exist_ok=True)
    nbformat.write(build(), NOTEBOOK)
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
