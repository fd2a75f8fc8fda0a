"""mechinterp: the small shared package behind the chapter scripts.

A core that every method uses, one folder per method (one per chapter), and the command line on top:

- ``core/``: loading the model and SAE (``loading``, ``source``), text to features (``encoding``,
  ``pipeline``, ``summaries``, ``cache``), prompts, tokens, how every output numbers positions
  (``positions``: BOS = 0), what a feature writes (``logits``), choosing features and collecting their
  activations (``features``), provenance, run records, atomic writes (``io``), terminal tables, shared
  figure pieces, and the synthetic demo world (``toyworld``);
- ``investigate/``: Chapter 1, a text's top features;
- ``meaning/``: Chapter 2, contrasting prompt sets: statistics, design checks, verdicts;
- ``cards/``: Chapter 3, feature cards and corpus mining;
- ``causal/``: Chapter 4, ablation and steering;
- ``training/``: Chapter 5, training and checking an SAE;
- ``attribution/``: Chapter 6, where a feature comes from in the model's weights;
- ``cli.py``: the command line (the only module that reads argparse values).

A method folder imports the core and itself, never another method; the core imports only the core.
Analysis modules return data; each folder's ``report`` module turns it into text and figures.
Nothing heavy is imported here, so ``import mechinterp`` is instant.
"""
