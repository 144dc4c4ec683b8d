//! The gRPC `Data` service: validates requests, fences stale chains, and runs chain
//! replication.
//!
//! A PutBlock is verified (size, crc32c) and fenced before anything is stored or
//! forwarded. The node then writes the block locally and, at the same time,
//! forwards it to the next replica (`rest[0]`, passing `rest[1..]` along); it
//! answers success only when its own copy is durable and the downstream replica
//! has answered success, which by induction means the whole chain has the block.
//! A failed put may leave copies on some replicas; they are unreferenced and are
//! collected by GC like any other orphan.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::ids::placement_group;
use cairn_proto::pb;
use cairn_proto::pb::data_server::Data;
use cairn_proto::pb::data_server::DataServer;
use cairn_proto::MAX_MESSAGE_BYTES;
use tokio::task::spawn_blocking;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::error::DataError;
use crate::fence::ChainFence;
use crate::orphans::OrphanCounters;
use crate::resync::ResyncCounters;
use crate::scrub::ScrubCounters;
use crate::store::BlockId;
use crate::store::BlockStore;
use crate::store::MAX_BLOCK_BYTES;
use crate::tier::Tiering;
use cairn_proto::channel::Channels;

/// Longest chain after this node that a request may name.
pub const MAX_CHAIN_REST: usize = 15;
/// How long connecting to the next replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the rest of the chain may take to store a forwarded block.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// The `Data` service of one node.
pub struct DataService {
    node_id: u64,
    store: BlockStore,
    tiering: Arc<Tiering>,
    fence: Arc<ChainFence>,
    peers: Arc<Channels>,
    /// The scrubber's counters; `None` when it is off.
    scrub: Option<Arc<ScrubCounters>>,
    /// The resync job's counters; `None` on a standalone node.
    resync: Option<Arc<ResyncCounters>>,
    /// The orphan collector's counters; `None` when it does not run.
    orphans: Option<Arc<OrphanCounters>>,
}

/// Most blocks one `TierBlocks` or `DeleteBlocks` request may name (and one
/// `ListBlocks` answer hold, about).
const MAX_BLOCKS_PER_REQUEST: usize = 4096;
/// Most data servers one `RepairBlocks` may name as sources.
const MAX_SOURCES: usize = 64;
/// Index pages of `MAX_BLOCKS_PER_REQUEST` one `ListBlocks` call scans at most.
const LIST_SCAN_PAGES: usize = 16;

impl DataService {
    /// A service over the store of `tiering`, fencing writes with `fence`.
    pub fn new(node_id: u64, tiering: Arc<Tiering>, fence: Arc<ChainFence>) -> DataService {
        let store = tiering.store().clone();
        DataService {
            node_id,
            store,
            tiering,
            fence,
            peers: Arc::new(Channels::with_timeouts(CONNECT_TIMEOUT, FORWARD_TIMEOUT)),
            scrub: None,
            resync: None,
            orphans: None,
        }
    }

    /// Reports the resync job's counters in `Stat`.
    pub fn with_resync(mut self, counters: Arc<ResyncCounters>) -> DataService {
        self.resync = Some(counters);
        self
    }

    /// Reports the orphan collector's counters in `Stat`.
    pub fn with_orphans(mut self, counters: Arc<OrphanCounters>) -> DataService {
        self.orphans = Some(counters);
        self
    }

    /// Reports the scrubber's counters in `Stat`.
    pub fn with_scrub(mut self, counters: Arc<ScrubCounters>) -> DataService {
        self.scrub = Some(counters);
        self
    }

    /// The tonic server for this service, accepting full-size blocks.
    pub fn into_server(self) -> DataServer<DataService> {
        DataServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    async fn put_chain(&self, req: pb::PutBlockRequest) -> Result<(), DataError> {
        let id = block_id(req.block)?;
        if req.data.len() > MAX_BLOCK_BYTES {
            return Err(DataError::TooLarge {
                len: req.data.len(),
                max: MAX_BLOCK_BYTES,
            });
        }
        if req.rest.len() > MAX_CHAIN_REST {
            return Err(DataError::Invalid(format!(
                "chain of {} more replicas exceeds {MAX_CHAIN_REST}",
                req.rest.len()
            )));
        }
        if req.rest.iter().any(|a| a.trim().is_empty()) {
            return Err(DataError::Invalid("empty replica address in chain".into()));
        }
        // Verified before forwarding, so that corrupt bytes never travel down the chain.
        let data = req.data.clone();
        let actual = spawn_blocking(move || crc32c::crc32c(&data)).await?;
        if actual != req.crc32c {
            return Err(DataError::ChecksumMismatch {
                block: id,
                expected: req.crc32c,
                actual,
            });
        }
        // Held until the block is stored here and down the chain.
        let _admitted = self.fence.admit(req.group, req.chain_version).await?;

        let local = self.store.put(id, req.data.clone(), req.crc32c);
        let downstream = self.forward(id, &req);
        let (local, downstream) = tokio::join!(local, downstream);
        if let Err(e) = &downstream {
            tracing::warn!(block = %id, error = %e, "chain replication failed");
        }
        local?;
        downstream
    }

    /// Sends the block to the next replica, if any, and waits for the rest of the chain.
    async fn forward(&self, id: BlockId, req: &pb::PutBlockRequest) -> Result<(), DataError> {
        let Some((next, rest)) = req.rest.split_first() else {
            return Ok(());
        };
        let mut client = self.peers.data(next)?;
        let forwarded = pb::PutBlockRequest {
            block: Some(pb_block_id(id)),
            crc32c: req.crc32c,
            data: req.data.clone(),
            group: req.group,
            chain_version: req.chain_version,
            rest: rest.to_vec(),
        };
        client
            .put_block(forwarded)
            .await
            .map_err(|s| DataError::Replica {
                addr: next.clone(),
                code: s.code(),
                message: s.message().to_string(),
            })?;
        Ok(())
    }
}

fn block_ids(blocks: Vec<pb::BlockId>) -> Result<Vec<BlockId>, DataError> {
    if blocks.len() > MAX_BLOCKS_PER_REQUEST {
        return Err(DataError::Invalid(format!(
            "{} blocks in one request exceed {MAX_BLOCKS_PER_REQUEST}",
            blocks.len()
        )));
    }
    blocks.into_iter().map(|b| block_id(Some(b))).collect()
}

fn block_id(block: Option<pb::BlockId>) -> Result<BlockId, DataError> {
    let b = block.ok_or_else(|| DataError::Invalid("missing block id".into()))?;
    Ok(BlockId {
        slice_id: b.slice_id,
        index: b.index,
    })
}

fn pb_block_id(id: BlockId) -> pb::BlockId {
    pb::BlockId {
        slice_id: id.slice_id,
        index: id.index,
    }
}

#[tonic::async_trait]
impl Data for DataService {
    async fn put_block(
        &self,
        request: Request<pb::PutBlockRequest>,
    ) -> Result<Response<pb::PutBlockReply>, Status> {
        self.put_chain(request.into_inner()).await?;
        Ok(Response::new(pb::PutBlockReply {}))
    }

    async fn get_block(
        &self,
        request: Request<pb::GetBlockRequest>,
    ) -> Result<Response<pb::GetBlockReply>, Status> {
        let req = request.into_inner();
        let id = block_id(req.block)?;
        let read = self.tiering.read(id, req.offset, req.len).await?;
        Ok(Response::new(pb::GetBlockReply {
            data: read.data,
            block_crc32c: read.block_crc32c,
        }))
    }

    async fn delete_blocks(
        &self,
        request: Request<pb::DeleteBlocksRequest>,
    ) -> Result<Response<pb::DeleteBlocksReply>, Status> {
        let ids = block_ids(request.into_inner().blocks)?;
        let deleted = self.tiering.delete(ids).await?;
        Ok(Response::new(pb::DeleteBlocksReply {
            deleted: u32::try_from(deleted).unwrap_or(u32::MAX),
        }))
    }

    async fn stat(
        &self,
        _request: Request<pb::DataStatRequest>,
    ) -> Result<Response<pb::DataStatReply>, Status> {
        let stats = self.store.stats();
        let counters = &self.tiering.counters;
        let scrub = |f: fn(&ScrubCounters) -> &AtomicU64| {
            self.scrub.as_ref().map(|c| f(c).load(Ordering::Relaxed))
        };
        let orphans = |f: fn(&OrphanCounters) -> &AtomicU64| {
            self.orphans
                .as_ref()
                .map_or(0, |c| f(c).load(Ordering::Relaxed))
        };
        let resync = |f: fn(&ResyncCounters) -> &AtomicU64| {
            self.resync
                .as_ref()
                .map_or(0, |c| f(c).load(Ordering::Relaxed))
        };
        Ok(Response::new(pb::DataStatReply {
            id: self.node_id,
            capacity_bytes: stats.capacity_bytes,
            used_bytes: stats.used_bytes,
            blocks: stats.blocks,
            cold_bytes: stats.cold_bytes,
            cold_blocks: stats.cold_blocks,
            cold_backend: self
                .tiering
                .backend()
                .map(|b| b.spec().url.clone())
                .unwrap_or_default(),
            moved_to_cold: counters.moved_to_cold.load(Ordering::Relaxed),
            fetched_from_cold: counters.fetched_from_cold.load(Ordering::Relaxed),
            cold_failures: counters.failures.load(Ordering::Relaxed),
            scrub_passes: scrub(|c| &c.passes),
            scrub_light_passes: scrub(|c| &c.light_passes),
            scrub_blocks_checked: scrub(|c| &c.blocks_checked),
            scrub_bytes_checked: scrub(|c| &c.bytes_checked),
            scrub_bad_found: scrub(|c| &c.bad_found),
            scrub_repaired: scrub(|c| &c.repaired),
            scrub_unrepairable: scrub(|c| &c.unrepairable),
            scrub_last_pass_end_ms: scrub(|c| &c.last_pass_end_ms),
            resync_groups_synced: resync(|c| &c.groups_synced),
            resync_groups_member: resync(|c| &c.groups_member),
            resync_blocks_copied: resync(|c| &c.blocks_copied),
            resync_bytes_copied: resync(|c| &c.bytes_copied),
            resync_blocks_dropped: resync(|c| &c.blocks_dropped),
            orphan_passes: orphans(|c| &c.passes),
            orphan_blocks_deleted: orphans(|c| &c.blocks_deleted),
        }))
    }

    async fn list_blocks(
        &self,
        request: Request<pb::ListBlocksRequest>,
    ) -> Result<Response<pb::ListBlocksReply>, Status> {
        let req = request.into_inner();
        if req.groups_total == 0 || req.groups.iter().any(|g| *g >= req.groups_total) {
            return Err(DataError::Invalid(format!(
                "groups {:?} outside 0..{}",
                req.groups, req.groups_total
            ))
            .into());
        }
        if !req.at.is_empty() {
            self.fence.barrier(&req.at).await?;
        }
        let limit = (req.limit as usize).clamp(1, MAX_BLOCKS_PER_REQUEST);
        let mut after = req.after.map(|b| block_id(Some(b))).transpose()?;
        let mut blocks = Vec::new();
        // Scans a bounded stretch of the index per call, matches or not.
        for _ in 0..LIST_SCAN_PAGES {
            let page = self.store.list(after, MAX_BLOCKS_PER_REQUEST).await?;
            let Some((last, _)) = page.last() else {
                return Ok(Response::new(pb::ListBlocksReply { blocks, next: None }));
            };
            after = Some(*last);
            for (id, info) in page {
                let group = placement_group(id.slice_id, id.index, req.groups_total);
                if info.tier.is_local() && req.groups.contains(&group) {
                    blocks.push(pb::ListedBlock {
                        block: Some(pb_block_id(id)),
                        len: info.len,
                        crc32c: info.crc,
                    });
                }
            }
            if blocks.len() >= limit {
                break;
            }
        }
        Ok(Response::new(pb::ListBlocksReply {
            blocks,
            next: after.map(pb_block_id),
        }))
    }

    async fn scan_blocks(
        &self,
        request: Request<pb::ScanBlocksRequest>,
    ) -> Result<Response<pb::ScanBlocksReply>, Status> {
        let req = request.into_inner();
        let after = req.after.map(|b| block_id(Some(b))).transpose()?;
        let limit = (req.limit as usize).clamp(1, MAX_BLOCKS_PER_REQUEST);
        let (blocks, next) = crate::fsck::scan(&self.tiering, after, limit, req.verify).await?;
        Ok(Response::new(pb::ScanBlocksReply {
            blocks,
            next: next.map(pb_block_id),
        }))
    }

    async fn repair_blocks(
        &self,
        request: Request<pb::RepairBlocksRequest>,
    ) -> Result<Response<pb::RepairBlocksReply>, Status> {
        let req = request.into_inner();
        let ids = block_ids(req.blocks)?;
        if req.sources.len() > MAX_SOURCES {
            return Err(DataError::Invalid(format!("more than {MAX_SOURCES} sources")).into());
        }
        let (repaired, failures) =
            crate::fsck::repair(&self.tiering, &self.peers, ids, &req.sources).await;
        Ok(Response::new(pb::RepairBlocksReply { repaired, failures }))
    }

    async fn tier_blocks(
        &self,
        request: Request<pb::TierBlocksRequest>,
    ) -> Result<Response<pb::TierBlocksReply>, Status> {
        let req = request.into_inner();
        let op = pb::TierOp::try_from(req.op)
            .ok()
            .filter(|op| *op != pb::TierOp::Unspecified)
            .ok_or_else(|| DataError::Invalid(format!("unknown tier operation {}", req.op)))?;
        let ids = block_ids(req.blocks)?;
        let blocks = self.tiering.apply(op, ids).await;
        Ok(Response::new(pb::TierBlocksReply { blocks }))
    }
}
