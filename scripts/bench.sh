#!/usr/bin/env bash
# Benchmarks a local cluster (scripts/cluster.sh: 3 metad with namespace
# shards replicated 3 ways, 3 datad with replication 3, release build): runs
# `cairn bench` with the arguments given (juicefs-bench style, e.g.
# `--big-file-size 1G --threads 4`), prints its table, and stops the cluster.
# The local-disk reference runs in the same directory the cluster stores to.
#   CAIRN=path/to/cairn  the binary (default: build it, release)
#   BENCH_DIR=dir        where data goes (default: /tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CAIRN:-}" ]; then
  source scripts/setup.sh
  cargo build --release --bin cairn
  export CAIRN="$CARGO_TARGET_DIR/release/cairn"
fi
dir=$(mktemp -d "${BENCH_DIR:-/tmp}/cairn-bench.XXXXXX")
trap 'scripts/cluster.sh down "$dir/cluster"; rm -rf "$dir"' EXIT
eval "$(scripts/cluster.sh up "$dir/cluster")"
"$CAIRN" status
"$CAIRN" bench --local-dir "$dir" "$@"
