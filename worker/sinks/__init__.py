"""Outputs for folded series: the Sink protocol and its implementations (Kafka OTLP)."""
