"""Self-metrics, logs and the HTTP probes; depends on nothing above it."""
