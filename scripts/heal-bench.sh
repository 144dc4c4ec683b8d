#!/usr/bin/env bash
# Re-replication after a data server is lost, on the release build: 3 metad and
# 5 datad (replication 3) on loopback. Stores SIZE_MB through the client
# library, reads it back healthy, SIGKILLs datad 1, and reports
#   - the time until the chains drop it (data-node-timeout) and until every
#     group serves 3 replicas again (`cairn status`: 0 degraded, 0 syncing),
#     with replace-after-ms 0 (by default metad waits 10 min for a reboot);
#   - the MB/s copied once resync began, beside this disk's own copy rate
#     (dd with fsync of the same file, measured in the same run);
#   - a full read of the file during recovery as a share of the healthy one.
#   heal-bench.sh [SIZE_MB]   (default 2048)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
size=${1:-2048}
CAIRN=${CAIRN:-${CARGO_TARGET_DIR:-/var/cache/cairn-target}/release/cairn}
work=$(mktemp -d /var/tmp/cairn-heal.XXXXXX)
trap '"$here/cluster.sh" down "$work/cl" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
eval "$(DATAS=5 REPLACE_AFTER_MS=0 "$here/cluster.sh" up "$work/cl")"

now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1 / ($3 - $2):.0f}')"; }
# `cairn status` exits 1 while the cluster is not whole; only its text counts here.
status_has() { "$CAIRN" status > "$work/status.txt" 2>&1 || true; grep -q "$1" "$work/status.txt"; }

head -c $((size << 20)) /dev/urandom > "$work/src"
t=$(now); dd if="$work/src" of="$work/copy" bs=4M conv=fsync status=none; disk=$(rate "$size" "$t" "$(now)")
rm -f "$work/copy"
t=$(now); "$CAIRN" fs put "$work/src" /data; write=$(rate "$size" "$t" "$(now)")
sync; echo 3 > /proc/sys/vm/drop_caches
t=$(now); "$CAIRN" fs get /data "$work/back"; healthy=$(rate "$size" "$t" "$(now)")
cmp -s "$work/src" "$work/back" || { echo "healthy read differs" >&2; exit 1; }
rm -f "$work/back"

kill -9 "$(cat "$work/cl/datad1.pid")"
killed=$(now)
wait_status() { # PATTERN: polls `cairn status` for it, 300 s at most
  for _ in $(seq 1 3000); do status_has "$1" && return 0; sleep 0.1; done
  echo "status never showed '$1'" >&2; "$CAIRN" status >&2 || true; exit 1
}
wait_status ' [1-9][0-9]* syncing'
began=$(now)
t=$(now); "$CAIRN" fs get /data "$work/back"; during=$(rate "$size" "$t" "$(now)")
cmp -s "$work/src" "$work/back" || { echo "read during recovery differs" >&2; exit 1; }
wait_status '(0 degraded, 0 syncing,'
done_at=$(now)
copied_mb=$("$CAIRN" status | awk '/blocks copied in/ { for (i = 1; i < NF; i++) if ($(i + 1) == "blocks" && $(i + 2) == "copied") n += $i } END { print n * 4 }')

python3 - "$size" "$disk" "$write" "$healthy" "$during" "$killed" "$began" "$done_at" "$copied_mb" <<'EOF'
import sys
size, disk, write, healthy, during = (float(x) for x in sys.argv[1:6])
killed, began, done, copied = (float(x) for x in sys.argv[6:10])
print(f"data: {size:.0f} MB, 5 datad, replication 3 (release build)")
print(f"write {write:.0f} MB/s; healthy cold read {healthy:.0f} MB/s")
print(f"datad 1 killed: chains changed after {began - killed:.1f} s (data-node-timeout),")
print(f"  every group serving 3 replicas after {done - killed:.1f} s "
      f"({done - began:.1f} s of resync)")
print(f"re-replicated {copied:.0f} MB at {copied / (done - began):.0f} MB/s; "
      f"this disk copies at {disk:.0f} MB/s (dd, fsync): {copied / (done - began) / disk:.2f}x")
print(f"read during recovery {during:.0f} MB/s = {during / healthy:.2f} of healthy")
EOF
