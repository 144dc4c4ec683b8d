//! Block garbage collection. A slice that no chunk shows any more (the file
//! deleted, truncated, overwritten, punched: `crate::slices`) is queued in the
//! shard's deletion queue by the same Raft command. The shard's leader takes a
//! batch of queued slices that have waited `gc-delay-ms` (so readers holding
//! the old layout finish), deletes their blocks on every live data server, and
//! only then dequeues them; a failed round is retried on the next tick, and
//! deleting a block twice is harmless. Copies on a data server that was down
//! during the round, and blocks of slices never committed, are collected by
//! the data servers themselves (`cairn_datad::orphans`), which ask
//! `SliceRefs` before deleting what no file refers to.

use cairn_proto::ids::ShardId;
use cairn_proto::pb;

use crate::error::MetaError;
use crate::fs::FsCommand;
use crate::node::MetaNode;
use crate::types::Command;
use crate::types::Request;

/// Slices handled per round.
pub const BATCH: usize = 256;

/// Deletes the blocks of `queue` (slices of `shard`'s deletion queue, which
/// this node leads: id and size) on every live data server, then dequeues them.
pub async fn collect(
    node: &MetaNode,
    shard: ShardId,
    queue: &[(u64, u32)],
) -> Result<(), MetaError> {
    if queue.is_empty() {
        return Ok(());
    }
    let map = node.cluster_map().await?;
    if map.block_size == 0 {
        return Err(MetaError::Raft("data layout not initialized".into()));
    }
    let bs = u64::from(map.block_size);
    let blocks: Vec<pb::BlockId> = queue
        .iter()
        .flat_map(|(slice_id, size)| {
            (0..u64::from(*size).div_ceil(bs)).map(move |index| pb::BlockId {
                slice_id: *slice_id,
                index: index as u32,
            })
        })
        .collect();
    for data_node in map.data_nodes.iter().filter(|n| n.alive) {
        node.channels
            .data(&data_node.addr)
            .map_err(|e| MetaError::Peer(e.to_string()))?
            .delete_blocks(pb::DeleteBlocksRequest {
                blocks: blocks.clone(),
            })
            .await
            .map_err(|s| {
                MetaError::Peer(format!(
                    "deleting blocks on {}: {}",
                    data_node.addr,
                    s.message()
                ))
            })?;
    }
    let ids = queue.iter().map(|(id, _)| *id).collect();
    let dequeue = Request {
        key: None,
        cmd: Command::Fs(FsCommand::DequeueSlices { ids }),
    };
    node.propose_local(shard, dequeue).await?;
    Ok(())
}
