"""The stream loop in parts: ingest, checkpoint, emission, rebalance."""
