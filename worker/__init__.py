"""spanmetrics-worker: OpenTelemetry spans on Kafka in, RED and service-graph metrics out."""

__version__ = "0.1.0"
