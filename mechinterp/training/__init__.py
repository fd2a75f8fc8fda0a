"""Chapter 5: training and checking an SAE: what both modes share (``common``), synthetic data with known
features (``synthetic``), a language model's activations (``on_model``) and their evaluation
(``evaluation``), SAELens internals kept apart (``saelens_adapter``), and text, tables and figures (``report``)."""
