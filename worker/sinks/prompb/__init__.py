"""Prometheus Remote Write 1.0 protobuf messages, generated from remote_write.proto (tools/gen_prompb.sh)."""
