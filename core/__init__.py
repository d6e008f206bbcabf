"""Neutral code that every app may import and that imports none of them: the contract's
names (``contract``), the words for upstream failures (``upstream``), and daphne's fast
path (``fastpath``)."""
