#!/usr/bin/env bash
# A local benchmark cluster: 3 metad (namespace shards replicated 3 ways) and
# $DATAS datad (default 3; replication 3) on loopback, optionally mounted
# through FUSE.
#   cluster.sh up DIR [MOUNTPOINT [mount options...]]   start (and mount)
#   cluster.sh down DIR                                 unmount, kill, remove DIR
# `up` prints `export CAIRN_META=...` for the CLI. State (configs, logs, PIDs,
# data) lives under DIR; the mount's cache directory is DIR/cache.
#   CAIRN=path/to/cairn   the binary (default: the release build in the cache)
#   REPLACE_AFTER_MS=N    metad's replace-after-ms (default: metad's, 10 min)
set -euo pipefail
cmd=${1:?up|down}
dir=${2:?state directory}
CAIRN=${CAIRN:-${CARGO_TARGET_DIR:-/var/cache/cairn-target}/release/cairn}
DATAS=${DATAS:-3}

if [ "$cmd" = down ]; then
  if [ -f "$dir/mountpoint" ]; then fusermount3 -uz "$(cat "$dir/mountpoint")" 2>/dev/null || true; fi
  if [ -f "$dir/pids" ]; then
    while read -r p; do kill -9 "$p" 2>/dev/null || true; done < "$dir/pids"
  fi
  rm -rf "$dir"
  exit 0
fi

mkdir -p "$dir"
base=$((20000 + RANDOM % 20000))
peers=""
for i in 1 2 3; do peers+="{ id = $i, addr = \"127.0.0.1:$((base + i))\" },"; done
meta="127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
meta_list="\"127.0.0.1:$((base + 1))\", \"127.0.0.1:$((base + 2))\", \"127.0.0.1:$((base + 3))\""
for i in 1 2 3; do
  cat > "$dir/metad$i.toml" <<TOML
id = $i
listen = "127.0.0.1:$((base + i))"
data-dir = "$dir/metad$i"
peers = [${peers%,}]
${REPLACE_AFTER_MS:+replace-after-ms = $REPLACE_AFTER_MS}
TOML
  "$CAIRN" metad --config "$dir/metad$i.toml" > "$dir/metad$i.log" 2>&1 &
  echo $! >> "$dir/pids"
done
for i in $(seq 1 "$DATAS"); do
  cat > "$dir/datad$i.toml" <<TOML
id = $i
listen = "127.0.0.1:$((base + 100 + i))"
data-dir = "$dir/datad$i"
meta = [$meta_list]
TOML
  "$CAIRN" datad --config "$dir/datad$i.toml" > "$dir/datad$i.log" 2>&1 &
  echo $! | tee -a "$dir/pids" > "$dir/datad$i.pid"
done
export CAIRN_META=$meta
ready=""
for _ in $(seq 1 300); do
  if "$CAIRN" status > "$dir/status.txt" 2>&1 \
     && [ "$(grep -c ' up ' "$dir/status.txt")" = "$DATAS" ] && grep -q '(0 degraded, 0 syncing,' "$dir/status.txt"; then
    ready=1
    break
  fi
  sleep 0.2
done
[ -n "$ready" ] || { echo "cluster did not come up; logs in $dir" >&2; exit 1; }

if [ $# -ge 3 ]; then
  mnt=$3
  shift 3
  mkdir -p "$mnt"
  echo "$mnt" > "$dir/mountpoint"
  "$CAIRN" mount --cache-dir "$dir/cache" "$@" "$mnt" > "$dir/mount.log" 2>&1 &
  echo $! >> "$dir/pids"
  for _ in $(seq 1 100); do grep -q " $mnt " /proc/mounts && break; sleep 0.1; done
  grep -q " $mnt " /proc/mounts || { echo "mount failed; see $dir/mount.log" >&2; exit 1; }
fi
echo "export CAIRN_META=$meta"
