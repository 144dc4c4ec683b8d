//! The hot/cold tiering of one datad: moves its blocks between the local store
//! ([`BlockStore`]) and the cluster's cold backend ([`ColdStore`]), serves reads
//! of cold blocks, deletes cold copies with their blocks, and relieves capacity
//! pressure.
//!
//! A block goes cold in two steps that the caller (the tier runner) orders
//! across a block's replicas: `UPLOAD` on one replica (the block turns
//! `Staged`, its bytes are put under the block's key and read back, and the
//! copy counts only if its size and crc32c match), then `DROP_HOT` on every
//! replica (each checks the cold copy's size before its entry turns `Cold` and
//! its file goes). Back again: `FETCH` on every replica (checksum verified,
//! `Staged`), then `DROP_COLD` (the cold copy is deleted, `Hot`). Every step is
//! idempotent and leaves a block readable whatever happens in between: the
//! local copy goes only after the cold one is confirmed, and the cold one only
//! when the local one is back.
//!
//! All operations on one block (moves, restores, deletes, promotions) take the
//! block's stripe of `locks` for their whole length, so a delete never races an
//! upload into leaving an object behind.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use bytes::Bytes;
use cairn_proto::pb;
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::cold::ColdError;
use crate::cold::ColdStore;
use crate::config::ColdConfig;
use crate::error::DataError;
use crate::store::BlockId;
use crate::store::BlockInfo;
use crate::store::BlockRead;
use crate::store::BlockStore;
use crate::store::Tier;

const LOCK_STRIPES: usize = 256;
/// Blocks of one request worked on at once.
const PARALLEL: usize = 4;

/// Counters of cold-tier work since start.
#[derive(Debug, Default)]
pub struct TierCounters {
    /// Blocks whose local copy was dropped for the cold one.
    pub moved_to_cold: AtomicU64,
    /// Cold blocks read or brought back.
    pub fetched_from_cold: AtomicU64,
    /// Cold-tier operations that failed.
    pub failures: AtomicU64,
}

/// The tiering of one node; shared by the service, the heartbeat and the
/// capacity-pressure loop.
pub struct Tiering {
    store: BlockStore,
    config: ColdConfig,
    backend: RwLock<Option<ColdStore>>,
    locks: Vec<Mutex<()>>,
    pub counters: TierCounters,
    /// Cancels cold-tier requests in flight when the node stops.
    shutdown: CancellationToken,
}

impl Tiering {
    pub fn new(store: BlockStore, config: ColdConfig, shutdown: CancellationToken) -> Tiering {
        Tiering {
            store,
            config,
            backend: RwLock::new(None),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            counters: TierCounters::default(),
            shutdown,
        }
    }

    pub fn store(&self) -> &BlockStore {
        &self.store
    }

    /// Follows the cluster's cold backend (from the heartbeat's answer); a
    /// backend that cannot be opened leaves none, and is retried next time.
    pub fn set_backend(&self, spec: Option<&pb::ColdBackend>) {
        let current = self.backend.read().ok().and_then(|b| b.clone());
        if current.as_ref().map(ColdStore::spec) == spec {
            return;
        }
        let next = match spec {
            None => None,
            Some(spec) => match ColdStore::open(spec, &self.config) {
                Ok(store) => {
                    tracing::info!(url = %spec.url, "cold backend in use");
                    Some(store)
                }
                Err(e) => {
                    tracing::error!(error = %e, "cold backend unusable");
                    None
                }
            },
        };
        if let Ok(mut b) = self.backend.write() {
            *b = next;
        }
    }

    /// The backend in use, if any (its URL is reported by `Stat`).
    pub fn backend(&self) -> Option<ColdStore> {
        self.backend.read().ok().and_then(|b| b.clone())
    }

    /// The size of a block's cold object (`None`: there is none).
    pub async fn cold_size(&self, id: BlockId) -> Result<Option<u64>, DataError> {
        Ok(self.cold()?.size(id, &self.shutdown).await?)
    }

    fn cold(&self) -> Result<ColdStore, DataError> {
        self.backend().ok_or_else(|| {
            DataError::Cold(ColdError::Permanent("no cold backend configured".into()))
        })
    }

    fn stripe(&self, id: BlockId) -> &Mutex<()> {
        &self.locks[stripe_index(id)]
    }

    /// Reads a block range wherever the block is; a cold block is fetched
    /// (checksum verified) and, with `promote-on-read`, kept locally again.
    pub async fn read(&self, id: BlockId, offset: u32, len: u32) -> Result<BlockRead, DataError> {
        match self.store.get(id, offset, len).await {
            Err(DataError::InColdTier(_)) => {}
            other => return other,
        }
        let _guard = self.stripe(id).lock().await;
        let info = self.store.info(id).await?.ok_or(DataError::NotFound(id))?;
        if info.tier.is_local() {
            // Promoted meanwhile.
            return self.store.get(id, offset, len).await;
        }
        let data = self.fetch_verified(id, &info).await?;
        if self.config.promote_on_read {
            if let Err(e) = self.store.restore(id, data.clone()).await {
                tracing::warn!(block = %id, error = %e, "promoting a cold block failed");
            }
        }
        let start = offset as usize;
        let end = if len == 0 {
            data.len()
        } else {
            start.saturating_add(len as usize)
        };
        if start > data.len() || end > data.len() {
            return Err(DataError::Invalid(format!(
                "range {start}..{end} outside block {id} of {} bytes",
                data.len()
            )));
        }
        Ok(BlockRead {
            data: data.slice(start..end),
            block_crc32c: info.crc,
        })
    }

    /// The cold copy of a block, checked against its index entry.
    async fn fetch_verified(&self, id: BlockId, info: &BlockInfo) -> Result<Bytes, DataError> {
        let fetched = self.cold()?.get(id, &self.shutdown).await;
        let data = match fetched {
            Ok(d) => d,
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        verify(id, info, &data)?;
        self.counters
            .fetched_from_cold
            .fetch_add(1, Ordering::Relaxed);
        Ok(data)
    }

    /// Runs one tier operation on each block; answers every block's state, with
    /// an error for each block the operation failed on (that block is unchanged
    /// or safely in between).
    pub async fn apply(&self, op: pb::TierOp, ids: Vec<BlockId>) -> Vec<pb::BlockTierInfo> {
        futures::stream::iter(ids)
            .map(|id| async move {
                let result = self.apply_one(op, id).await;
                let (info, error) = match result {
                    Ok(info) => (info, String::new()),
                    Err(e) => {
                        if op != pb::TierOp::Info {
                            self.counters.failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(block = %id, ?op, error = %e, "tier operation failed");
                        }
                        (self.store.info(id).await.ok().flatten(), e.to_string())
                    }
                };
                block_tier_info(id, info, error)
            })
            .buffered(PARALLEL)
            .collect()
            .await
    }

    async fn apply_one(&self, op: pb::TierOp, id: BlockId) -> Result<Option<BlockInfo>, DataError> {
        let _guard = self.stripe(id).lock().await;
        let Some(info) = self.store.info(id).await? else {
            return match op {
                pb::TierOp::Info => Ok(None),
                _ => Err(DataError::NotFound(id)),
            };
        };
        let info = match op {
            pb::TierOp::Unspecified => {
                return Err(DataError::Invalid("tier operation missing".into()))
            }
            pb::TierOp::Info => info,
            pb::TierOp::Upload if info.tier == Tier::Cold => info,
            pb::TierOp::Upload => {
                let cold = self.cold()?;
                let info = self.store.set_tier(id, Tier::Staged).await?;
                let data = self.store.get(id, 0, 0).await?.data;
                cold.put(id, data, &self.shutdown).await?;
                let back = cold.get(id, &self.shutdown).await?;
                verify(id, &info, &back).map_err(|e| {
                    DataError::Cold(ColdError::Transient(format!(
                        "cold copy fails verification: {e}"
                    )))
                })?;
                info
            }
            pb::TierOp::DropHot if info.tier == Tier::Cold => info,
            pb::TierOp::DropHot => {
                let size = self.cold()?.size(id, &self.shutdown).await?;
                if size != Some(u64::from(info.len)) {
                    return Err(DataError::Cold(ColdError::Permanent(format!(
                        "block {id} has no confirmed cold copy (found {size:?}, want {} bytes)",
                        info.len
                    ))));
                }
                let info = self.store.set_tier(id, Tier::Cold).await?;
                self.counters.moved_to_cold.fetch_add(1, Ordering::Relaxed);
                info
            }
            pb::TierOp::Fetch if info.tier.is_local() => info,
            pb::TierOp::Fetch => {
                let data = self.fetch_verified(id, &info).await?;
                self.store.restore(id, data).await?
            }
            pb::TierOp::DropCold => match info.tier {
                Tier::Hot => info,
                Tier::Cold => {
                    return Err(DataError::Invalid(format!(
                        "block {id}: the cold copy is the only one"
                    )))
                }
                Tier::Staged => {
                    self.cold()?.delete(id, &self.shutdown).await?;
                    self.store.set_tier(id, Tier::Hot).await?
                }
            },
            pb::TierOp::Pin => self.store.set_pinned(id, true).await?,
            pb::TierOp::Unpin => self.store.set_pinned(id, false).await?,
        };
        Ok(Some(info))
    }

    /// Deletes blocks and their cold copies (garbage collection): the cold
    /// copies first, so that a failure leaves the blocks for the next round
    /// rather than objects nobody knows about. Answers how many were deleted.
    pub async fn delete(&self, ids: Vec<BlockId>) -> Result<u64, DataError> {
        let mut ids = ids;
        ids.sort_unstable();
        ids.dedup();
        let mut deleted = 0;
        for chunk in ids.chunks(1024) {
            // Stripes in ascending order: a delete holds many, everything else one.
            let mut stripes: Vec<usize> = chunk.iter().map(|id| stripe_index(*id)).collect();
            stripes.sort_unstable();
            stripes.dedup();
            let mut guards = Vec::with_capacity(stripes.len());
            for s in stripes {
                guards.push(self.locks[s].lock().await);
            }
            let mut with_cold = Vec::new();
            for &id in chunk {
                if let Some(info) = self.store.info(id).await? {
                    if info.tier != Tier::Hot {
                        with_cold.push(id);
                    }
                }
            }
            if !with_cold.is_empty() {
                let cold = self.cold()?;
                let results: Vec<Result<(), ColdError>> = futures::stream::iter(with_cold)
                    .map(|id| {
                        let cold = cold.clone();
                        async move { cold.delete(id, &self.shutdown).await }
                    })
                    .buffer_unordered(16)
                    .collect()
                    .await;
                if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(e.into());
                }
            }
            deleted += self.store.delete(chunk.to_vec()).await?;
        }
        Ok(deleted)
    }

    /// Moves least recently used unpinned blocks to the cold tier while this
    /// node is past its high-water mark, until the low-water mark; answers
    /// the blocks moved.
    pub async fn relieve_pressure(&self) -> Result<u64, DataError> {
        let stats = self.store.stats();
        let (high, low) = (self.config.high_water, self.config.low_water);
        if high <= 0.0 || stats.capacity_bytes == 0 || self.backend().is_none() {
            return Ok(0);
        }
        let capacity = stats.capacity_bytes as f64;
        if (stats.used_bytes as f64) < high * capacity {
            return Ok(0);
        }
        let want = stats.used_bytes.saturating_sub((low * capacity) as u64);
        tracing::info!(
            used = stats.used_bytes,
            capacity = stats.capacity_bytes,
            want,
            "capacity pressure: moving blocks to the cold tier"
        );
        let mut moved = 0;
        for (id, _) in self.store.coldest(want).await? {
            for op in [pb::TierOp::Upload, pb::TierOp::DropHot] {
                let info = self.apply(op, vec![id]).await;
                if let Some(failed) = info.iter().find(|i| !i.error.is_empty()) {
                    return Err(DataError::Cold(ColdError::Transient(failed.error.clone())));
                }
            }
            moved += 1;
        }
        Ok(moved)
    }

    /// Checks capacity pressure every `pressure-check-ms` until `stop`.
    pub async fn pressure_loop(self: Arc<Self>, stop: CancellationToken) {
        if self.config.high_water <= 0.0 {
            return;
        }
        let period = Duration::from_millis(self.config.pressure_check_ms);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            match self.relieve_pressure().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(blocks = n, "capacity pressure relieved"),
                Err(e) => tracing::warn!(error = %e, "capacity pressure: moving blocks failed"),
            }
        }
    }
}

fn stripe_index(id: BlockId) -> usize {
    let h = id.slice_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(id.index);
    (h % LOCK_STRIPES as u64) as usize
}

fn verify(id: BlockId, info: &BlockInfo, data: &[u8]) -> Result<(), DataError> {
    let actual = crc32c::crc32c(data);
    if data.len() != info.len as usize || actual != info.crc {
        return Err(DataError::ChecksumMismatch {
            block: id,
            expected: info.crc,
            actual,
        });
    }
    Ok(())
}

fn block_tier_info(id: BlockId, info: Option<BlockInfo>, error: String) -> pb::BlockTierInfo {
    let (tier, len, pinned) = match info {
        None => (pb::BlockTier::Absent, 0, false),
        Some(i) => (
            match i.tier {
                Tier::Hot => pb::BlockTier::Hot,
                Tier::Staged => pb::BlockTier::Staged,
                Tier::Cold => pb::BlockTier::Cold,
            },
            i.len,
            i.pinned,
        ),
    };
    pb::BlockTierInfo {
        block: Some(pb::BlockId {
            slice_id: id.slice_id,
            index: id.index,
        }),
        tier: tier as i32,
        len,
        pinned,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn node(dir: &std::path::Path, config: ColdConfig) -> Tiering {
        let store = BlockStore::open(&dir.join("data"), 0).await.unwrap();
        let tiering = Tiering::new(store, config, CancellationToken::new());
        tiering.set_backend(Some(&pb::ColdBackend {
            url: format!("file://{}", dir.join("cold").display()),
            ..Default::default()
        }));
        tiering
    }

    fn block(seed: u8, len: usize) -> (Bytes, u32) {
        let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
        let crc = crc32c::crc32c(&data);
        (Bytes::from(data), crc)
    }

    fn tiers(infos: &[pb::BlockTierInfo]) -> Vec<(pb::BlockTier, String)> {
        infos.iter().map(|i| (i.tier(), i.error.clone())).collect()
    }

    #[tokio::test]
    async fn block_goes_cold_reads_through_and_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let t = node(dir.path(), ColdConfig::default()).await;
        let id = BlockId {
            slice_id: 5,
            index: 1,
        };
        let (data, crc) = block(3, 100_000);
        t.store().put(id, data.clone(), crc).await.unwrap();

        // Dropping the hot copy before any upload is refused.
        let r = t.apply(pb::TierOp::DropHot, vec![id]).await;
        assert_eq!(r[0].tier(), pb::BlockTier::Hot);
        assert!(r[0].error.contains("no confirmed cold copy"), "{:?}", r);

        let r = t.apply(pb::TierOp::Upload, vec![id]).await;
        assert_eq!(tiers(&r), vec![(pb::BlockTier::Staged, String::new())]);
        let r = t.apply(pb::TierOp::DropHot, vec![id]).await;
        assert_eq!(tiers(&r), vec![(pb::BlockTier::Cold, String::new())]);
        assert_eq!(t.store().stats().used_bytes, 0);
        assert_eq!(t.store().stats().cold_bytes, 100_000);

        let read = t.read(id, 1000, 10).await.unwrap();
        assert_eq!(read.data, data.slice(1000..1010));
        assert_eq!(read.block_crc32c, crc);
        // A damaged cold copy is detected, never returned.
        let key = t.backend().unwrap().key(id);
        let path = dir.path().join("cold").join(key.as_ref());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            t.read(id, 0, 0).await,
            Err(DataError::ChecksumMismatch { .. })
        ));
        bytes[10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        // The only copy cannot be dropped.
        let r = t.apply(pb::TierOp::DropCold, vec![id]).await;
        assert_eq!(r[0].tier(), pb::BlockTier::Cold);
        assert!(!r[0].error.is_empty());

        let r = t.apply(pb::TierOp::Fetch, vec![id]).await;
        assert_eq!(tiers(&r), vec![(pb::BlockTier::Staged, String::new())]);
        let r = t.apply(pb::TierOp::DropCold, vec![id]).await;
        assert_eq!(tiers(&r), vec![(pb::BlockTier::Hot, String::new())]);
        assert!(!path.exists());
        assert_eq!(t.store().get(id, 0, 0).await.unwrap().data, data);
    }

    #[tokio::test]
    async fn delete_removes_cold_copies_and_pressure_moves_lru_unpinned() {
        let dir = tempfile::tempdir().unwrap();
        let t = node(dir.path(), ColdConfig::default()).await;
        let ids: Vec<BlockId> = (0..3).map(|index| BlockId { slice_id: 9, index }).collect();
        for (i, id) in ids.iter().enumerate() {
            let (data, crc) = block(i as u8, 1000);
            t.store().put(*id, data, crc).await.unwrap();
        }
        t.apply(pb::TierOp::Upload, ids.clone()).await;
        t.apply(pb::TierOp::DropHot, vec![ids[0]]).await;
        let cold = t.backend().unwrap();
        assert_eq!(cold.list_blocks().await.unwrap().len(), 3);
        assert_eq!(t.delete(ids.clone()).await.unwrap(), 3);
        assert!(cold.list_blocks().await.unwrap().is_empty());

        // 4 blocks of 1000 bytes in 4000 bytes: past 0.7, down to 0.4.
        let store = BlockStore::open(&dir.path().join("small"), 4000)
            .await
            .unwrap();
        let config = ColdConfig {
            high_water: 0.7,
            low_water: 0.4,
            ..ColdConfig::default()
        };
        let t = Tiering::new(store, config, CancellationToken::new());
        t.set_backend(Some(cold.spec()));
        let ids: Vec<BlockId> = (0..4)
            .map(|index| BlockId {
                slice_id: 10,
                index,
            })
            .collect();
        for (i, id) in ids.iter().enumerate() {
            let (data, crc) = block(i as u8, 1000);
            t.store().put(*id, data, crc).await.unwrap();
        }
        t.store().get(ids[0], 0, 0).await.unwrap();
        t.apply(pb::TierOp::Pin, vec![ids[1]]).await;
        assert_eq!(t.relieve_pressure().await.unwrap(), 3);
        let r = t.apply(pb::TierOp::Info, ids.clone()).await;
        let got: Vec<pb::BlockTier> = r.iter().map(|i| i.tier()).collect();
        use pb::BlockTier::*;
        assert_eq!(got, vec![Cold, Hot, Cold, Cold]);
        assert_eq!(t.relieve_pressure().await.unwrap(), 0);
        let (data, _) = block(2, 1000);
        assert_eq!(t.read(ids[2], 0, 0).await.unwrap().data, data);
    }
}
