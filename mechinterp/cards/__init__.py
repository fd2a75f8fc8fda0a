"""Chapter 3: feature cards (``card``: the data, and ``feature_cards`` to make them; ``family``: one card for
a feature family, a concept the SAE splits across features), corpus mining
(``corpus``: documents into windows; ``mining``: the pass; ``store``: its saved state), and
presentation (``render``: terminal and HTML; ``figures``; ``report``: the files and text of a run)."""
