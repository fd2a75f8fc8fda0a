"""Chapter 2: contrasting prompt sets (``contrast``, ``stats``), design checks and verdicts (``confounds``), figures (``report``)."""
