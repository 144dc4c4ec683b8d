#!/usr/bin/env bash
# fio on a Cairn FUSE mount beside the same job on the local disk, same run:
# sequential write (bs=1M, fsync at the end) write-through and write-back,
# sequential read cold and from the local cache, 4 KiB random read IOPS, and
# small files (scripts/smallfiles.py: COUNT x 4 KiB over 100 directories:
# create, stat, read cold, read warm, delete).
# Starts `cairn dev` under a temporary directory; SIZE (default 4G) per file.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
command -v fio >/dev/null || { as_root apt-get install -y -qq fio >/dev/null; }
cargo build --release --bin cairn
CAIRN="$CARGO_TARGET_DIR/release/cairn"
SIZE=${SIZE:-4G}
COUNT=${COUNT:-10000}
dir=$(mktemp -d "${BENCH_DIR:-/tmp}/cairn-fio.XXXXXX")
pids=()
cleanup() {
  fusermount3 -uz "$dir/mnt" 2>/dev/null || true
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
mkdir -p "$dir/mnt" "$dir/local"
port=$((20000 + RANDOM % 20000))
"$CAIRN" dev --data-dir "$dir/data" --meta-listen 127.0.0.1:$port --data-listen 127.0.0.1:$((port + 1)) \
  > "$dir/dev.log" 2>&1 & pids+=($!)
export CAIRN_META=127.0.0.1:$port
for _ in $(seq 1 150); do "$CAIRN" status >/dev/null 2>&1 && break; sleep 0.2; done

mount_cairn() {
  "$CAIRN" mount --cache-dir "$dir/cache" "$@" "$dir/mnt" > "$dir/mount.log" 2>&1 & pids+=($!)
  for _ in $(seq 1 100); do grep -q " $dir/mnt " /proc/mounts && return; sleep 0.1; done
  echo "mount failed"; cat "$dir/mount.log"; exit 1
}
umount_cairn() { fusermount3 -u "$dir/mnt"; sleep 1; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
job() { # name dir rw bs extra...
  local name=$1 where=$2 rw=$3 bs=$4; shift 4
  fio --name="$name" --directory="$where" --filename="${FILE:-f}" --rw="$rw" --bs="$bs" --size="$SIZE" \
      --ioengine=psync --output-format=terse --terse-version=3 "$@" 2>/dev/null \
    | awk -F';' -v n="$name" '{ if ($7 > 0) printf "%-28s %10.1f MiB/s %10.0f IOPS\n", n, $7/1024, $8;
                                else printf "%-28s %10.1f MiB/s %10.0f IOPS\n", n, $48/1024, $49 }'
}

echo "SIZE=$SIZE COUNT=$COUNT"
small() { python3 scripts/smallfiles.py "$1" "$2" --count "$COUNT" --dirs 100 --size 4096; }
mkdir -p "$dir/local/small"
small "$dir/local/small" local
job "local seq write+fsync"  "$dir/local" write 1M --end_fsync=1
drop; job "local seq read"   "$dir/local" read 1M
drop; job "local 4k randread" "$dir/local" randread 4k --runtime=20 --time_based
mount_cairn
job "cairn seq write+fsync"  "$dir/mnt" write 1M --end_fsync=1
drop; job "cairn seq read cold" "$dir/mnt" read 1M
job "cairn seq read cached"  "$dir/mnt" read 1M
job "cairn 4k randread cached" "$dir/mnt" randread 4k --runtime=20 --time_based
rm -f "$dir/mnt/f"
mkdir -p "$dir/mnt/small"
small "$dir/mnt/small" cairn
umount_cairn
mount_cairn --writeback
FILE=g job "cairn writeback write+fsync" "$dir/mnt" write 1M --end_fsync=1
umount_cairn
