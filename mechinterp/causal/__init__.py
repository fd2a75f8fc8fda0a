"""Chapter 4: ablation with the error term, matched controls and steering (``intervene``), figures (``report``)."""
