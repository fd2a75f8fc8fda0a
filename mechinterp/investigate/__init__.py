"""Chapter 1: the top SAE features of one text (``text_features``), and its table, text and heatmap (``report``)."""
