#!/usr/bin/env bash
# Regenerates the committed Python bindings from proto/tunefleet/v1/*.proto.
# Usage: proto/gen.sh [OUT_DIR]   (default: proto/, next to the sources)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
py=${PYTHON:-python}
mkdir -p "$out/tunefleet/v1"
"$py" -m grpc_tools.protoc -I"$here" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$here"/tunefleet/v1/*.proto
