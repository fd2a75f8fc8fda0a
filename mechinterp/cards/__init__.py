"""Chapter 3: feature cards (``card``), corpus mining (``mining``), terminal and HTML rendering (``render``), figures."""
