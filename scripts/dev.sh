#!/usr/bin/env bash
# Builds Cairn and starts `cairn dev`: metad and datad in one process, data under
# ./cairn-data (pass --data-dir DIR to change), serving on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --bin cairn
echo "cairn binary: $CARGO_TARGET_DIR/debug/cairn (add it to PATH to use 'cairn fs', 'cairn status')"
exec "$CARGO_TARGET_DIR/debug/cairn" dev "$@"
