"""OTLP codecs: protobuf and OTLP/JSON for traces in and metrics out."""
