"""state-builder: market data from the bus → per-symbol L2 books and hot state (SPEC FM-D1)."""
