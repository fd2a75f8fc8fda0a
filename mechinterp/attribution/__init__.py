"""Chapter 6: which heads, MLPs and tokens build a feature (``attribute``), and its figure (``report``)."""
