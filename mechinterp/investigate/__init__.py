"""Chapter 1: the top SAE features of one text (``text_features``), which of them are not word features (``flags``), and its table, text and heatmap (``report``)."""
