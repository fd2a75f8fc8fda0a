"""Chapter 5: training and checking an SAE (``train``), SAELens internals kept apart (``saelens_adapter``), figures."""
