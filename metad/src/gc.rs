//! Block garbage collection. Deleting a file's last link (or truncating whole
//! chunks away) queues its slices in the shard's deletion queue in the same Raft
//! command, so nothing references them any more. The shard's leader takes a batch
//! of queued slices, deletes their blocks on every live data server, and only
//! then dequeues them; a failed round is retried on the next tick, and deleting a
//! block twice is harmless. A data server that is down during the round keeps
//! its copies (an orphan scrubber is future work).

use cairn_proto::ids::ShardId;
use cairn_proto::pb;

use crate::error::MetaError;
use crate::fs;
use crate::fs::FsCommand;
use crate::node::MetaNode;
use crate::types::Command;
use crate::types::Request;

/// Slices handled per round.
const BATCH: usize = 256;

/// Runs one round on `shard` (led by this node); answers how many slices it freed.
pub async fn collect(node: &MetaNode, shard: ShardId) -> Result<usize, MetaError> {
    let queue = node.read(shard, |txn| fs::gc_queue(txn, BATCH)).await?;
    if queue.is_empty() {
        return Ok(0);
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
    Ok(queue.len())
}
