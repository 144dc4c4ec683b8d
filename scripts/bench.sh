#!/usr/bin/env bash
# Benchmarks a local cluster: starts 3 metad (4 namespace shards, 3 replicas
# each) and 3 datad (replication 3) on loopback from the `cairn` binary, runs
# `cairn bench` with the arguments given (juicefs-bench style, e.g.
# `--big-file-size 1G --threads 4`), prints its table, and stops the cluster.
# The local-disk reference runs in the same directory the cluster stores to.
#   CAIRN=path/to/cairn  the binary (default: build it)
#   BENCH_DIR=dir        where data goes (default: /tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CAIRN:-}" ]; then
  source scripts/setup.sh
  cargo build --bin cairn
  CAIRN="$CARGO_TARGET_DIR/debug/cairn"
fi
dir=$(mktemp -d "${BENCH_DIR:-/tmp}/cairn-bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

base=$((20000 + RANDOM % 20000))
peers=""
for i in 1 2 3; do peers+="{ id = $i, addr = \"127.0.0.1:$((base + i))\" },"; done
for i in 1 2 3; do
  cat > "$dir/metad$i.toml" <<TOML
id = $i
listen = "127.0.0.1:$((base + i))"
data-dir = "$dir/metad$i"
peers = [${peers%,}]
TOML
  cat > "$dir/datad$i.toml" <<TOML
id = $i
listen = "127.0.0.1:$((base + 100 + i))"
data-dir = "$dir/datad$i"
meta = ["127.0.0.1:$((base + 1))", "127.0.0.1:$((base + 2))", "127.0.0.1:$((base + 3))"]
TOML
done
for i in 1 2 3; do
  "$CAIRN" metad --config "$dir/metad$i.toml" > "$dir/metad$i.log" 2>&1 & pids+=($!)
  "$CAIRN" datad --config "$dir/datad$i.toml" > "$dir/datad$i.log" 2>&1 & pids+=($!)
done
export CAIRN_META="127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
for _ in $(seq 1 150); do
  if "$CAIRN" status > "$dir/status.txt" 2>&1 \
     && [ "$(grep -c ' up ' "$dir/status.txt")" = 3 ] && grep -q '(0 degraded)' "$dir/status.txt"; then
    break
  fi
  sleep 0.2
done
"$CAIRN" status
"$CAIRN" bench --local-dir "$dir" "$@"
