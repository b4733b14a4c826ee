#!/bin/sh
# Regenerates worker/sinks/prompb/remote_write_pb2.py(.pyi) from remote_write.proto.
# protoc 25 (grpcio-tools 1.62) on purpose: its output carries no runtime version check, so it
# loads with every protobuf runtime the project accepts (>=5.26).
set -eu
cd "$(dirname "$0")/.."
venv=$(mktemp -d)
python3 -m venv "$venv"
"$venv/bin/pip" install -q 'grpcio-tools==1.62.3'
"$venv/bin/python" -m grpc_tools.protoc -Iworker/sinks/prompb \
  --python_out=worker/sinks/prompb worker/sinks/prompb/remote_write.proto
rm -rf "$venv"
