"""Processors: pure, spans in, deltas out (span metrics, service graphs)."""
