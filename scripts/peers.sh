#!/usr/bin/env bash
# Cairn beside its peers, same workloads, one run: local disk, tmpfs,
# GlusterFS replica 3, MooseFS goal 3 (../shared/peers brings them up on
# loopback) and a Cairn cluster like theirs (scripts/cluster.sh: 3 metad, 3
# datad, replication 3, release build) mounted with a local cache. Prints
# the medians table, then each row of Cairn as a ratio to the best peer.
#   RUNS=n          runs per target (default 1; runs interleave targets)
#   TARGETS="..."   what to run beside Cairn (default: local tmpfs gluster moosefs)
#   PEERS=dir       the peers harness (default ../shared/peers)
#   OUT=dir         where results go (default /var/tmp/cairn-peers-<date>)
#   MOUNT_OPTS=".." more `cairn mount` options (e.g. --writeback)
# Needs root (FUSE mounts, drop_caches, Debian packages of the peers).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
PEERS=$(cd "${PEERS:-../shared/peers}" && pwd)
OUT=${OUT:-/var/tmp/cairn-peers-$(date +%Y%m%d-%H%M%S)}
RUNS=${RUNS:-1}
command -v fio >/dev/null || as_root apt-get install -y -qq fio >/dev/null
cargo build --release --bin cairn
export CAIRN="$CARGO_TARGET_DIR/release/cairn"

# The harness is read-only: run a copy (it writes results next to itself).
work=$(mktemp -d /var/tmp/cairn-peers-harness.XXXXXX)
cp -r "$PEERS"/. "$work/"
state=/var/tmp/cairn-peers-cluster
mnt=/mnt/cairn-peers
cleanup() {
  scripts/cluster.sh down "$state" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
scripts/cluster.sh down "$state" >/dev/null 2>&1 || true
# shellcheck disable=SC2086
scripts/cluster.sh up "$state" "$mnt" ${MOUNT_OPTS:-}

mkdir -p "$OUT"
# shellcheck disable=SC2086
OUT="$OUT" "$work/run-suite.sh" "$RUNS" ${TARGETS:-local tmpfs gluster moosefs} "dir:cairn-r3:$mnt"
"$work/summarize.py" "$OUT/raw" | tee "$OUT/table.txt"
python3 - "$OUT/raw" <<'PY' | tee -a "$OUT/table.txt"
import glob, os, statistics, sys
from collections import defaultdict
vals = defaultdict(list)
for path in glob.glob(os.path.join(sys.argv[1], "*.run*.txt")):
    for line in open(path):
        p = line.split()
        if len(p) == 4 and not line.startswith("#") and p[2] != "NA":
            vals[(p[0], p[1])].append(float(p[2]))
med = {k: statistics.median(v) for k, v in vals.items()}
peers = sorted({l for l, _ in med if l.startswith(("gluster", "moosefs"))})
refs = sorted({l for l, _ in med if l in ("local", "tmpfs")})
print("\nCAIRN / BEST PEER (>1 is ahead), and / local disk")
for m in sorted({m for _, m in med}):
    c = med.get(("cairn-r3", m))
    best = max((med[(p, m)] for p in peers if (p, m) in med), default=None)
    local = med.get(("local", m))
    if c is None:
        continue
    r = f"{c / best:6.2f}x" if best else "    NA"
    l = f"{c / local:6.2f}x" if local else "    NA"
    print(f"{m:<25} {c:>12.0f}  vs best peer {r}  vs local {l}")
PY
echo "results: $OUT (command: RUNS=$RUNS scripts/peers.sh, $(date -u +%Y-%m-%d))"
