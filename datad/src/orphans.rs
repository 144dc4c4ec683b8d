//! Orphan collection on one datad: blocks stored here that no file refers
//! to. They are what metad's deletion queue cannot reach: blocks of slices a
//! writer uploaded but never committed (killed between upload and commit, a
//! commit that failed for good), and copies of deleted slices this node held
//! while it was down during the deletion round.
//!
//! - A pass runs every `orphan-check-interval-s` (the first after a random
//!   part of it, so the nodes of a cluster do not all ask at once) and walks
//!   the index in batches. Blocks whose file was written less than
//!   `orphan-grace-s` ago are skipped: an upload waits that long for its
//!   commit. Cold blocks (no local file) count as old.
//! - The distinct slices of the old blocks of a batch are asked of metad
//!   (`SliceRefs`, every data shard at its leader, a linearizable read): a
//!   slice some chunk shows, or that waits in a deletion queue (metad's
//!   collector frees it after its delay), is kept. The blocks of the others
//!   are deleted, with their cold copies.
//! - Nothing is deleted without an answer: a failed question ends the pass,
//!   and the next starts on time. A standalone datad (no metad) runs none.
//! - The promise it rests on: a slice is committed within `orphan-grace-s` of
//!   its upload, or never. Clients commit as soon as their uploads finish and
//!   give up within minutes; the default grace is a day.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use cairn_proto::pb;
use tokio_util::sync::CancellationToken;

use crate::meta::MetaLink;
use crate::store::BlockId;
use crate::store::BlockStore;
use crate::tier::Tiering;

/// Index entries read at a time, and so the most slices asked about at once.
const BATCH: usize = 1024;
/// How long one question to metad may take (it asks every shard).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// When passes run and which blocks they may judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Time between the starts of two passes.
    pub interval: Duration,
    /// Blocks written less than this ago are left alone.
    pub grace: Duration,
}

/// What orphan collection has done since the node started.
#[derive(Debug, Default)]
pub struct OrphanCounters {
    /// Passes finished.
    pub passes: AtomicU64,
    /// Blocks deleted because no file referred to them.
    pub blocks_deleted: AtomicU64,
}

/// The orphan collector of one node.
pub struct Orphans {
    node_id: u64,
    store: BlockStore,
    tiering: Arc<Tiering>,
    meta: MetaLink,
    pacing: Pacing,
    counters: Arc<OrphanCounters>,
}

impl Orphans {
    /// A collector of `tiering`'s store, asking the metads at `meta`.
    pub fn new(node_id: u64, tiering: Arc<Tiering>, pacing: Pacing, meta: Vec<String>) -> Orphans {
        Orphans {
            node_id,
            store: tiering.store().clone(),
            tiering,
            meta: MetaLink::new(meta, CALL_TIMEOUT),
            pacing,
            counters: Arc::new(OrphanCounters::default()),
        }
    }

    /// The counters, shared with whoever reports them.
    pub fn counters(&self) -> Arc<OrphanCounters> {
        Arc::clone(&self.counters)
    }

    /// Runs a pass every interval until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        crate::periodic::every(self.pacing.interval, self.node_id, &stop, || async {
            match self.pass().await {
                Ok(deleted) => {
                    self.counters.passes.fetch_add(1, Ordering::Relaxed);
                    if deleted > 0 {
                        tracing::info!(deleted, "orphan pass deleted blocks no file refers to");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "orphan pass stopped; next pass starts on time")
                }
            }
        })
        .await
    }

    /// One pass over the store; answers how many blocks it deleted.
    pub async fn pass(&self) -> Result<u64, String> {
        let mut deleted = 0;
        let mut after = None;
        loop {
            let batch = self
                .store
                .list(after, BATCH)
                .await
                .map_err(|e| e.to_string())?;
            let Some((last, _)) = batch.last() else {
                return Ok(deleted);
            };
            after = Some(*last);
            let young_after = SystemTime::now()
                .checked_sub(self.pacing.grace)
                .unwrap_or(UNIX_EPOCH);
            let mut old: BTreeMap<u64, Vec<BlockId>> = BTreeMap::new();
            for (id, info) in batch {
                let written = if info.tier.is_local() {
                    self.store.modified(id).await
                } else {
                    None
                };
                if written.is_none_or(|at| at <= young_after) {
                    old.entry(id.slice_id).or_default().push(id);
                }
            }
            if old.is_empty() {
                continue;
            }
            let asked: Vec<u64> = old.keys().copied().collect();
            let (reply, _) = self
                .meta
                .call(|mut c| {
                    let slice_ids = asked.clone();
                    async move {
                        c.slice_refs(pb::SliceRefsRequest {
                            slice_ids,
                            shard: 0,
                        })
                        .await
                    }
                })
                .await?;
            for id in reply.referenced {
                old.remove(&id);
            }
            let doomed: Vec<BlockId> = old.into_values().flatten().collect();
            if doomed.is_empty() {
                continue;
            }
            let n = self
                .tiering
                .delete(doomed)
                .await
                .map_err(|e| e.to_string())?;
            self.counters.blocks_deleted.fetch_add(n, Ordering::Relaxed);
            deleted += n;
        }
    }
}
