#!/usr/bin/env bash
# Regenerates the Python code for protos/ into gen/python: deletes what was
# there, then runs protoc (from grpcio-tools) with the mypy-protobuf plugins so
# the generated modules come with .pyi stubs. The import path equals the proto
# package path (offpath.v1), so nothing is rewritten after generation.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
out=gen/python
rm -rf "$out"
mkdir -p "$out"
protos=$(find protos -name '*.proto' | sort)
# shellcheck disable=SC2086
"$PYTHON" -m grpc_tools.protoc \
  -I protos \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --mypy_out="$out" \
  --mypy_grpc_out="$out" \
  --plugin=protoc-gen-mypy="$(dirname "$PYTHON")/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$PYTHON")/protoc-gen-mypy_grpc" \
  $protos
# Regular packages (not namespace ones) below offpath/, so that type checkers
# and the generated stubs agree on module names.
touch "$out/offpath/v1/__init__.py" "$out/offpath/v1/py.typed"
echo "generated $(find "$out" -name '*.py' | wc -l) modules into $out"
