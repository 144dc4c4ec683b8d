//! What `cairn fsck` asks of a data server: a scan of every block it indexes
//! with the state of each copy ([`scan`]), and the repair of the copies fsck
//! found damaged or missing from good ones on other nodes ([`repair`]).
//! fsck itself (metadata against copies) is in the CLI; the scrubber
//! (`scrub.rs`) does the same checks paced, in the background.

use std::time::Duration;
use std::time::SystemTime;

use cairn_proto::channel::Channels;
use cairn_proto::pb;

use crate::error::DataError;
use crate::store::BlockId;
use crate::store::Tier;
use crate::store::Verified;
use crate::tier::Tiering;

/// Up to `limit` indexed blocks after `after`, each with its copy's state
/// (checked with `verify`: local files re-read, cold objects looked up), and
/// where the next page starts.
pub async fn scan(
    tiering: &Tiering,
    after: Option<BlockId>,
    limit: usize,
    verify: bool,
) -> Result<(Vec<pb::ScannedBlock>, Option<BlockId>), DataError> {
    let store = tiering.store();
    let page = store.list(after, limit).await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|(id, _)| *id))
        .flatten();
    let mut out = Vec::with_capacity(page.len());
    for (id, info) in page {
        let age_s = match store.modified(id).await {
            Some(at) => SystemTime::now()
                .duration_since(at)
                .map_or(0, |d| d.as_secs()),
            None => 0,
        };
        let (state, problem) = if !verify {
            (pb::CopyState::Unchecked, String::new())
        } else if info.tier == Tier::Cold {
            match tiering.cold_size(id).await {
                Ok(Some(size)) if size == u64::from(info.len) => {
                    (pb::CopyState::Intact, String::new())
                }
                Ok(Some(size)) => (
                    pb::CopyState::Damaged,
                    format!("cold object of {size} bytes, {} indexed", info.len),
                ),
                Ok(None) => (pb::CopyState::Damaged, "cold object missing".to_string()),
                // The cold tier could not tell: not a verdict on the copy.
                Err(e) => (pb::CopyState::Unchecked, e.to_string()),
            }
        } else {
            match store.verify(id, Duration::ZERO, true).await? {
                Verified::Intact(_) => (pb::CopyState::Intact, String::new()),
                Verified::Damaged(why) => (pb::CopyState::Damaged, why),
                // Deleted or moved to the cold tier since it was listed.
                Verified::NotLocal | Verified::Young => (pb::CopyState::Unchecked, String::new()),
            }
        };
        out.push(pb::ScannedBlock {
            block: Some(pb::BlockId {
                slice_id: id.slice_id,
                index: id.index,
            }),
            len: info.len,
            tier: match info.tier {
                Tier::Hot => pb::BlockTier::Hot,
                Tier::Staged => pb::BlockTier::Staged,
                Tier::Cold => pb::BlockTier::Cold,
            } as i32,
            state: state as i32,
            problem,
            age_s,
        });
    }
    Ok((out, next))
}

/// Replaces each damaged or missing local copy of `ids` with a good one
/// from the first of `sources` that has it (the source verifies its copy's
/// crc32c before answering, and the store checks it again; a copy indexed
/// here must match the index). Intact and cold copies are left alone.
/// Answers how many were repaired and a line per failure.
pub async fn repair(
    tiering: &Tiering,
    peers: &Channels,
    ids: Vec<BlockId>,
    sources: &[String],
) -> (u32, Vec<String>) {
    let store = tiering.store();
    let mut repaired = 0;
    let mut failures = Vec::new();
    for id in ids {
        let indexed = match store.info(id).await {
            Ok(info) => info,
            Err(e) => {
                failures.push(format!("block {id}: {e}"));
                continue;
            }
        };
        if indexed.is_some_and(|i| !i.tier.is_local()) {
            continue;
        }
        if indexed.is_some() {
            match store.verify(id, Duration::ZERO, true).await {
                Ok(Verified::Damaged(_)) => {}
                Ok(_) => continue,
                Err(e) => {
                    failures.push(format!("block {id}: {e}"));
                    continue;
                }
            }
        }
        let mut tried = Vec::new();
        let mut done = false;
        for addr in sources {
            match fetch(peers, addr, id).await {
                Ok((data, crc)) if indexed.is_none_or(|i| i.crc == crc) => {
                    match store.put(id, data, crc).await {
                        Ok(()) => {
                            done = true;
                            break;
                        }
                        Err(e) => tried.push(format!("{addr}: {e}")),
                    }
                }
                Ok(_) => tried.push(format!("{addr}: a copy unlike the one indexed here")),
                Err(e) => tried.push(format!("{addr}: {e}")),
            }
        }
        if done {
            repaired += 1;
        } else {
            failures.push(format!("block {id}: no good copy ({})", tried.join("; ")));
        }
    }
    (repaired, failures)
}

/// The whole block from the data server at `addr` (which verified it before
/// answering), and its crc32c.
pub(crate) async fn fetch(
    peers: &Channels,
    addr: &str,
    id: BlockId,
) -> Result<(bytes::Bytes, u32), String> {
    let mut client = peers.data(addr).map_err(|e| e.to_string())?;
    let reply = client
        .get_block(pb::GetBlockRequest {
            block: Some(pb::BlockId {
                slice_id: id.slice_id,
                index: id.index,
            }),
            offset: 0,
            len: 0,
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    Ok((reply.data, reply.block_crc32c))
}
