"""The span metrics processor: spans in, per-series deltas out (pure, no I/O)."""
