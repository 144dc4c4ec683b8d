//! The scrubber of one datad: a paced background job that checks every
//! block stored locally against its index entry and replaces a damaged copy
//! with a good one from another replica.
//!
//! - Passes: a *deep* pass (every file re-read, length and crc32c checked)
//!   starts every `scrub-interval-s` (default weekly), a *light* pass (each
//!   file's presence and length, from its metadata, no data read) every
//!   `scrub-light-interval-s` (default daily) in between; the first pass
//!   comes after a random part of the shorter interval, so the nodes of a
//!   cluster do not all scrub at once. A pass walks the index in block-id
//!   order, in batches; a deep one reads at most `scrub-rate-mb-s`. Files
//!   written less than `scrub-skip-younger-s` ago and cold blocks (no local
//!   file) are skipped.
//! - Damage is a file that is missing, unreadable, of the wrong length, or
//!   fails its crc32c. A damaged copy is never served meanwhile: every read
//!   verifies the whole block (`crate::store`), so a `GetBlock` of it answers
//!   EIO (ENOENT for a missing file) and readers go to another replica.
//! - Repair: the block's placement group is derived from its id as clients do
//!   (`cairn_proto::ids::placement_group` over the cluster map's groups), the
//!   map is read from metad once per pass that needs it, and the group's other
//!   chain members are asked in turn (live ones first) with `GetBlock`. The
//!   first copy that matches the index entry replaces the local file, written
//!   aside and renamed into place ([`BlockStore::repair`]). A block no replica
//!   has intact stays damaged, is counted unrepairable and is tried again next
//!   pass. A repair never recreates a block deleted meanwhile.
//! - Status: [`ScrubCounters`] (since the node started) are shared with the
//!   `Data` service's `Stat`; each pass ends with one info log line.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use cairn_proto::channel::Channels;
use cairn_proto::ids::placement_group;
use cairn_proto::pb;
use tokio_util::sync::CancellationToken;

use crate::error::DataError;
use crate::meta::MetaLink;
use crate::store::BlockId;
use crate::store::BlockInfo;
use crate::store::BlockStore;
use crate::store::Verified;

/// Index entries read at a time while walking the store.
const BATCH: usize = 256;
/// How long connecting to metad or a replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one cluster-map read or one block fetch may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How the scrubber paces itself (from [`crate::Config::scrub`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Time between the starts of two deep passes (zero: none).
    pub interval: Duration,
    /// Time between the starts of two passes, light ones in between deep
    /// ones (zero: no light passes).
    pub light_interval: Duration,
    /// Most bytes read per second.
    pub bytes_per_s: u64,
    /// Files modified less than this ago wait for a later pass.
    pub skip_younger: Duration,
}

/// What the scrubber has done since the node started.
#[derive(Debug, Default)]
pub struct ScrubCounters {
    /// Deep passes finished.
    pub passes: AtomicU64,
    /// Light passes finished.
    pub light_passes: AtomicU64,
    /// Blocks whose file was read and checked.
    pub blocks_checked: AtomicU64,
    /// Bytes those blocks hold.
    pub bytes_checked: AtomicU64,
    /// Damaged copies found (a copy left damaged is found again next pass).
    pub bad_found: AtomicU64,
    /// Damaged copies replaced with a good one from another replica.
    pub repaired: AtomicU64,
    /// Damaged copies no replica had a good copy of (this pass).
    pub unrepairable: AtomicU64,
    /// When the last pass ended, in Unix milliseconds; 0: none yet.
    pub last_pass_end_ms: AtomicU64,
}

/// What one pass did, for its log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub blocks_checked: u64,
    pub bytes_checked: u64,
    /// Files too young to check this time.
    pub skipped_young: u64,
    pub bad_found: u64,
    pub repaired: u64,
    pub unrepairable: u64,
}

/// How long to wait, `elapsed` after a pass started and with `bytes` read so
/// far, so that the pass reads at most `bytes_per_s` on average.
pub fn pace_delay(bytes: u64, bytes_per_s: u64, elapsed: Duration) -> Duration {
    if bytes_per_s == 0 {
        return Duration::ZERO;
    }
    let due = Duration::from_secs_f64(bytes as f64 / bytes_per_s as f64);
    due.saturating_sub(elapsed)
}

/// The addresses of the other replicas of `id`'s placement group in `map`,
/// live ones first, each group's chain order kept otherwise.
pub fn other_replicas(map: &pb::ClusterMap, me: u64, id: BlockId) -> Result<Vec<String>, String> {
    if map.groups.is_empty() {
        return Err("the cluster map has no placement groups".into());
    }
    let group = placement_group(id.slice_id, id.index, map.groups.len() as u32);
    let g = map
        .groups
        .iter()
        .find(|g| g.id == group)
        .ok_or_else(|| format!("placement group {group} is not in the cluster map"))?;
    let mut nodes: Vec<&pb::DataNodeInfo> = g
        .chain
        .iter()
        .filter(|n| **n != me)
        .filter_map(|n| map.data_nodes.iter().find(|d| d.id == *n))
        .collect();
    nodes.sort_by_key(|d| !d.alive);
    if nodes.is_empty() {
        return Err(format!("placement group {group} has no other replica"));
    }
    Ok(nodes.into_iter().map(|d| d.addr.clone()).collect())
}

/// The scrub job of one node.
pub struct Scrubber {
    node_id: u64,
    store: BlockStore,
    pacing: Pacing,
    /// Where the cluster map comes from; `None` for a standalone node, whose
    /// damaged blocks cannot be repaired.
    meta: Option<MetaLink>,
    peers: Channels,
    counters: Arc<ScrubCounters>,
}

impl Scrubber {
    /// A scrubber of `store` on node `node_id`, reading the cluster map from
    /// the metads at `meta`.
    pub fn new(node_id: u64, store: BlockStore, pacing: Pacing, meta: Vec<String>) -> Scrubber {
        Scrubber {
            node_id,
            store,
            pacing,
            meta: (!meta.is_empty()).then(|| MetaLink::new(meta, CALL_TIMEOUT)),
            peers: Channels::with_timeouts(CONNECT_TIMEOUT, CALL_TIMEOUT),
            counters: Arc::new(ScrubCounters::default()),
        }
    }

    /// The counters, shared with whoever reports them.
    pub fn counters(&self) -> Arc<ScrubCounters> {
        Arc::clone(&self.counters)
    }

    /// Runs a pass every interval until `stop` is cancelled. A pass cut short
    /// leaves nothing half done: a repair in progress finishes on the blocking
    /// pool before the store closes.
    pub async fn run(self, stop: CancellationToken) {
        let (deep_every, light_every) = (self.pacing.interval, self.pacing.light_interval);
        let period = [deep_every, light_every]
            .into_iter()
            .filter(|d| !d.is_zero())
            .min()
            .unwrap_or(Duration::from_secs(86_400));
        let last_deep: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
        crate::periodic::every(period, self.node_id, &stop, || async {
            let started = Instant::now();
            let deep = {
                let mut last = last_deep.lock().unwrap_or_else(|p| p.into_inner());
                let due = !deep_every.is_zero()
                    && last.is_none_or(|at| at.elapsed() + period / 2 >= deep_every);
                if due {
                    *last = Some(started);
                }
                due
            };
            if !deep && light_every.is_zero() {
                return;
            }
            match self.pass(deep).await {
                Ok(r) => {
                    let now_ms = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let passes = if deep {
                        &self.counters.passes
                    } else {
                        &self.counters.light_passes
                    };
                    passes.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .last_pass_end_ms
                        .store(now_ms, Ordering::Relaxed);
                    tracing::info!(
                        deep,
                        blocks = r.blocks_checked,
                        bytes = r.bytes_checked,
                        skipped_young = r.skipped_young,
                        bad = r.bad_found,
                        repaired = r.repaired,
                        unrepairable = r.unrepairable,
                        secs = started.elapsed().as_secs_f64(),
                        "scrub pass finished"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "scrub pass failed; next pass starts on time"),
            }
        })
        .await
    }

    /// One pass over the store (deep: data re-read, paced; light: presence
    /// and length only); fails only when the index cannot be read.
    pub async fn pass(&self, deep: bool) -> Result<PassReport, DataError> {
        let mut report = PassReport::default();
        let started = Instant::now();
        let mut map: Option<pb::ClusterMap> = None;
        let mut after = None;
        loop {
            let batch = self.store.list(after, BATCH).await?;
            let Some((last, _)) = batch.last() else {
                return Ok(report);
            };
            after = Some(*last);
            for (id, info) in batch {
                if !info.tier.is_local() {
                    continue;
                }
                match self
                    .store
                    .verify(id, self.pacing.skip_younger, deep)
                    .await?
                {
                    Verified::NotLocal => continue,
                    Verified::Young => {
                        report.skipped_young += 1;
                        continue;
                    }
                    Verified::Intact(_) => {}
                    Verified::Damaged(why) => {
                        report.bad_found += 1;
                        self.counters.bad_found.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(block = %id, %why, "scrub found a damaged block");
                        match self.repair(id, &info, &mut map).await {
                            Ok(Some(from)) => {
                                report.repaired += 1;
                                self.counters.repaired.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(block = %id, %from, "scrub repaired a block");
                            }
                            // Deleted or moved to the cold tier meanwhile.
                            Ok(None) => {}
                            Err(why) => {
                                report.unrepairable += 1;
                                self.counters.unrepairable.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(block = %id, %why, "scrub could not repair a block");
                            }
                        }
                    }
                }
                let len = if deep { u64::from(info.len) } else { 0 };
                report.blocks_checked += 1;
                report.bytes_checked += len;
                self.counters.blocks_checked.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_checked
                    .fetch_add(len, Ordering::Relaxed);
                let wait = pace_delay(
                    report.bytes_checked,
                    self.pacing.bytes_per_s,
                    started.elapsed(),
                );
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Fetches a good copy of `id` from another replica and stores it in place
    /// of the damaged one; answers the replica it came from, `None` when the
    /// block has no local copy any more, or why no replica could help. The
    /// cluster map is read into `map` on first need.
    async fn repair(
        &self,
        id: BlockId,
        info: &BlockInfo,
        map: &mut Option<pb::ClusterMap>,
    ) -> Result<Option<String>, String> {
        let map = match map {
            Some(m) => m,
            None => {
                let link = self
                    .meta
                    .as_ref()
                    .ok_or("no metad configured: replicas unknown")?;
                let fetched = link
                    .cluster_map()
                    .await
                    .map_err(|e| format!("reading the cluster map: {e}"))?;
                map.insert(fetched)
            }
        };
        let mut failures = Vec::new();
        for addr in other_replicas(map, self.node_id, id)? {
            match self.fetch_from(&addr, id, info).await {
                Ok(data) => match self.store.repair(id, data).await {
                    Ok(true) => return Ok(Some(addr)),
                    Ok(false) => return Ok(None),
                    Err(e) => failures.push(format!("{addr}: {e}")),
                },
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        Err(format!(
            "no replica has a good copy ({})",
            failures.join("; ")
        ))
    }

    /// The whole block from the replica at `addr`, if its length and crc32c
    /// are the ones this node's index records.
    async fn fetch_from(
        &self,
        addr: &str,
        id: BlockId,
        info: &BlockInfo,
    ) -> Result<bytes::Bytes, String> {
        let (data, crc) = crate::fsck::fetch(&self.peers, addr, id).await?;
        // The store checks the bytes' crc32c again before writing them.
        if crc != info.crc || data.len() != info.len as usize {
            return Err(format!(
                "its copy ({} bytes, crc32c {crc:#010x}) is not the one indexed here ({} bytes, {:#010x})",
                data.len(),
                info.len,
                info.crc
            ));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use bytes::Bytes;

    use super::*;

    const MB: u64 = 1_000_000;

    fn id(slice_id: u64, index: u32) -> BlockId {
        BlockId { slice_id, index }
    }

    fn pacing(skip_younger: Duration) -> Pacing {
        Pacing {
            interval: Duration::from_secs(1),
            light_interval: Duration::ZERO,
            bytes_per_s: 1 << 40,
            skip_younger,
        }
    }

    fn block(seed: u8, len: usize) -> (Bytes, u32) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
            .collect();
        let crc = crc32c::crc32c(&data);
        (Bytes::from(data), crc)
    }

    #[test]
    fn pacing_holds_reads_to_the_rate() {
        // 64 MB at 64 MB/s is due at 1 s: early, wait the rest; late, no wait.
        let rate = 64 * MB;
        assert_eq!(
            pace_delay(64 * MB, rate, Duration::from_millis(250)),
            Duration::from_millis(750)
        );
        assert_eq!(
            pace_delay(64 * MB, rate, Duration::from_secs(2)),
            Duration::ZERO
        );
        assert_eq!(pace_delay(0, rate, Duration::ZERO), Duration::ZERO);
        // A 4 MiB block at 64 MB/s: about 65.5 ms each.
        let one = pace_delay(4 << 20, rate, Duration::ZERO);
        assert!(
            one > Duration::from_millis(65) && one < Duration::from_millis(66),
            "{one:?}"
        );
        // Ten of them, read instantly: ten times that.
        let ten = pace_delay(40 << 20, rate, Duration::ZERO);
        assert!(ten > Duration::from_millis(655) && ten < Duration::from_millis(656));
        // No rate: never waits.
        assert_eq!(pace_delay(u64::MAX, 0, Duration::ZERO), Duration::ZERO);
    }

    fn map(groups: u32, chain: &[u64], alive: &[bool]) -> pb::ClusterMap {
        pb::ClusterMap {
            data_nodes: chain
                .iter()
                .zip(alive)
                .map(|(&id, &alive)| pb::DataNodeInfo {
                    id,
                    addr: format!("datad{id}:7100"),
                    alive,
                    ..Default::default()
                })
                .collect(),
            groups: (0..groups)
                .map(|g| pb::PlacementGroup {
                    id: g,
                    chain: chain.to_vec(),
                    version: 1,
                    syncing: Vec::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn other_replicas_are_the_group_chain_without_this_node_live_first() {
        let m = map(8, &[1, 2, 3], &[true, false, true]);
        let got = other_replicas(&m, 1, id(42, 3)).unwrap();
        assert_eq!(got, vec!["datad3:7100", "datad2:7100"]);
        let got = other_replicas(&m, 3, id(42, 3)).unwrap();
        assert_eq!(got, vec!["datad1:7100", "datad2:7100"]);

        // The group is the client's: one whose chain is this node alone has no
        // other replica, while every other group does.
        let b = id(7, 0);
        let mut m = map(4, &[1, 2], &[true, true]);
        let group = placement_group(b.slice_id, b.index, 4);
        m.groups[group as usize].chain = vec![2];
        let err = other_replicas(&m, 2, b).unwrap_err();
        assert!(err.contains(&format!("group {group}")), "{err}");
        assert_eq!(other_replicas(&m, 1, b).unwrap(), vec!["datad2:7100"]);

        let err = other_replicas(&pb::ClusterMap::default(), 1, b).unwrap_err();
        assert!(err.contains("no placement groups"), "{err}");
    }

    #[tokio::test]
    async fn pass_finds_flipped_truncated_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), 0).await.unwrap();
        let mut blocks = Vec::new();
        for i in 0..5u32 {
            let (data, crc) = block(i as u8, 10_000 + i as usize);
            store.put(id(9, i), data.clone(), crc).await.unwrap();
            blocks.push((id(9, i), data, crc));
        }
        let total: u64 = blocks.iter().map(|(_, d, _)| d.len() as u64).sum();

        // Young files are left for a later pass.
        let young = Scrubber::new(1, store.clone(), pacing(Duration::from_secs(3600)), vec![]);
        let report = young.pass(true).await.unwrap();
        assert_eq!(report.skipped_young, 5);
        assert_eq!(report.blocks_checked, 0);

        let scrubber = Scrubber::new(1, store.clone(), pacing(Duration::ZERO), vec![]);
        let clean = scrubber.pass(true).await.unwrap();
        assert_eq!(
            clean,
            PassReport {
                blocks_checked: 5,
                bytes_checked: total,
                ..PassReport::default()
            }
        );

        // One byte flipped, one file cut short, one file gone.
        let flipped = store.block_path(id(9, 1));
        let mut bytes = fs::read(&flipped).unwrap();
        bytes[4321] ^= 0x08;
        fs::write(&flipped, &bytes).unwrap();
        fs::write(store.block_path(id(9, 2)), &blocks[2].1[..100]).unwrap();
        fs::remove_file(store.block_path(id(9, 4))).unwrap();

        // A light pass sees the short and the missing file, not the flip.
        let light = scrubber.pass(false).await.unwrap();
        assert_eq!((light.blocks_checked, light.bytes_checked), (5, 0));
        assert_eq!((light.bad_found, light.unrepairable), (2, 2));

        // A standalone node knows no replica: found, counted, left damaged.
        let report = scrubber.pass(true).await.unwrap();
        assert_eq!(report.blocks_checked, 5);
        assert_eq!(report.bad_found, 3);
        assert_eq!(report.unrepairable, 3);
        assert_eq!(report.repaired, 0);
        let c = scrubber.counters();
        assert_eq!(c.blocks_checked.load(Ordering::Relaxed), 15);
        assert_eq!(c.bytes_checked.load(Ordering::Relaxed), 2 * total);
        assert_eq!(c.bad_found.load(Ordering::Relaxed), 5);
        assert_eq!(c.unrepairable.load(Ordering::Relaxed), 5);

        // Meanwhile the damaged copies are never served.
        assert!(matches!(
            store.get(id(9, 1), 0, 0).await,
            Err(DataError::ChecksumMismatch { .. })
        ));
        assert!(matches!(
            store.get(id(9, 2), 0, 10).await,
            Err(DataError::ChecksumMismatch { .. })
        ));
        assert!(matches!(
            store.get(id(9, 4), 0, 0).await,
            Err(DataError::NotFound(_))
        ));

        // A repair takes only the indexed bytes, and then the block reads back.
        let (wrong, _) = block(99, blocks[1].1.len());
        assert!(matches!(
            store.repair(id(9, 1), wrong).await,
            Err(DataError::ChecksumMismatch { .. })
        ));
        for i in [1, 2, 4] {
            let (b, data, _) = &blocks[i];
            assert!(store.repair(*b, data.clone()).await.unwrap());
            assert_eq!(&fs::read(store.block_path(*b)).unwrap()[..], &data[..]);
            assert_eq!(store.get(*b, 0, 0).await.unwrap().data, *data);
        }
        let report = scrubber.pass(true).await.unwrap();
        assert_eq!((report.blocks_checked, report.bad_found), (5, 0));

        // A block deleted meanwhile is never brought back by a repair.
        store.delete(vec![id(9, 0)]).await.unwrap();
        assert!(!store.repair(id(9, 0), blocks[0].1.clone()).await.unwrap());
        assert!(!store.block_path(id(9, 0)).exists());
        assert_eq!(store.info(id(9, 0)).await.unwrap(), None);
        assert_eq!(store.stats().blocks, 4);
    }
}
