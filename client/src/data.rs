//! Block I/O against the data servers.
//!
//! A block's placement group is a hash of its id; the cluster map gives the
//! group's ordered replica chain. Writes go to the chain head, which forwards
//! down the chain and answers once every replica has the block durably. Reads
//! try the chain's replicas in order, so a dead or corrupt replica costs one
//! extra round trip, not an error.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use tonic::transport::Channel;

use cairn_proto::channel::Channels;
use cairn_proto::ids::placement_group;
use cairn_proto::pb;
use cairn_proto::pb::data_client::DataClient as Grpc;
use cairn_proto::retry::retry;
use cairn_proto::retry::Backoff;

use crate::cache::BlockCache;
use crate::error::from_status;
use crate::error::ClientError;
use crate::meta::MetaClient;
use crate::meta::Result;

pub struct DataClient {
    /// Block transfers: each call bounded by the channels' timeout.
    channels: Channels,
    /// Tiering batches (up to 1,024 blocks moved to or from the
    /// cold store in one call): minutes, not seconds. A hung data server is
    /// still noticed in seconds by the HTTP/2 keepalive.
    bulk: Channels,
    meta: Arc<MetaClient>,
    cache: Option<BlockCache>,
    /// Replicas that failed a read without answering (down, hung, cut off),
    /// and until when reads try them last.
    suspects: Mutex<HashMap<String, Instant>>,
}

/// The longest one tiering batch may take.
const BULK_CALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long a replica that failed to answer is tried last.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// A placement group's replicas as addresses, head first.
struct Chain {
    group: u32,
    version: u64,
    addrs: Vec<String>,
}

impl DataClient {
    pub fn new(meta: Arc<MetaClient>, channels: Channels, cache: Option<BlockCache>) -> Self {
        DataClient {
            channels,
            bulk: Channels::with_timeouts(Duration::from_secs(1), BULK_CALL_TIMEOUT),
            meta,
            cache,
            suspects: Mutex::new(HashMap::new()),
        }
    }

    pub fn cache(&self) -> Option<&BlockCache> {
        self.cache.as_ref()
    }

    fn grpc(&self, addr: &str) -> Result<Grpc<Channel>> {
        self.channels
            .data(addr)
            .map_err(|e| ClientError::Invalid(format!("address {addr}: {e}")))
    }

    async fn chain(&self, slice_id: u64, index: u32, refresh: bool) -> Result<Chain> {
        let map = if refresh {
            self.meta.refresh_map().await?
        } else {
            self.meta.map().await?
        };
        if map.groups.is_empty() {
            return Err(ClientError::Unavailable("no placement groups yet".into()));
        }
        let group = placement_group(slice_id, index, map.groups.len() as u32);
        let g =
            map.groups.iter().find(|g| g.id == group).ok_or_else(|| {
                ClientError::Unavailable(format!("placement group {group} unknown"))
            })?;
        let addrs: Vec<String> = g
            .chain
            .iter()
            .filter_map(|id| map.data_nodes.iter().find(|n| n.id == *id))
            .map(|n| n.addr.clone())
            .collect();
        if addrs.is_empty() {
            return Err(ClientError::Unavailable(format!(
                "placement group {group} has no replicas"
            )));
        }
        Ok(Chain {
            group,
            version: g.version,
            addrs,
        })
    }

    /// The replicas of a block's placement group, head first.
    pub async fn replicas(&self, slice_id: u64, index: u32) -> Result<Vec<String>> {
        Ok(self.chain(slice_id, index, false).await?.addrs)
    }

    /// Runs a tier operation on blocks of the datad at `addr`; answers each
    /// block's state (with an error for those it failed on).
    pub async fn tier_blocks(
        &self,
        addr: &str,
        op: pb::TierOp,
        blocks: &[(u64, u32)],
    ) -> Result<Vec<pb::BlockTierInfo>> {
        let request = pb::TierBlocksRequest {
            op: op as i32,
            blocks: blocks
                .iter()
                .map(|&(slice_id, index)| pb::BlockId { slice_id, index })
                .collect(),
        };
        let reply = self
            .bulk
            .data(addr)
            .map_err(|e| ClientError::Invalid(format!("address {addr}: {e}")))?
            .tier_blocks(request)
            .await
            .map_err(|s| from_status(&s))?;
        Ok(reply.into_inner().blocks)
    }

    /// A page of the blocks a datad indexes, each copy's state checked with
    /// `verify` (`cairn fsck`).
    pub async fn scan_blocks(
        &self,
        addr: &str,
        after: Option<pb::BlockId>,
        limit: u32,
        verify: bool,
    ) -> Result<pb::ScanBlocksReply> {
        let request = pb::ScanBlocksRequest {
            after,
            limit,
            verify,
        };
        let reply = self
            .bulk
            .data(addr)
            .map_err(|e| ClientError::Invalid(format!("address {addr}: {e}")))?
            .scan_blocks(request)
            .await
            .map_err(|s| from_status(&s))?;
        Ok(reply.into_inner())
    }

    /// Has the datad at `addr` replace its damaged or missing copies of
    /// `blocks` with good ones from `sources`.
    pub async fn repair_blocks(
        &self,
        addr: &str,
        blocks: Vec<pb::BlockId>,
        sources: Vec<String>,
    ) -> Result<pb::RepairBlocksReply> {
        let reply = self
            .bulk
            .data(addr)
            .map_err(|e| ClientError::Invalid(format!("address {addr}: {e}")))?
            .repair_blocks(pb::RepairBlocksRequest { blocks, sources })
            .await
            .map_err(|s| from_status(&s))?;
        Ok(reply.into_inner())
    }

    /// Deletes `blocks` (and their cold copies) on the datad at `addr`.
    pub async fn delete_blocks(&self, addr: &str, blocks: Vec<pb::BlockId>) -> Result<u32> {
        let reply = self
            .grpc(addr)?
            .delete_blocks(pb::DeleteBlocksRequest { blocks })
            .await
            .map_err(|s| from_status(&s))?;
        Ok(reply.into_inner().deleted)
    }

    /// A datad's counters (space, blocks, cold tier).
    pub async fn stat(&self, addr: &str) -> Result<pb::DataStatReply> {
        let reply = self
            .grpc(addr)?
            .stat(pb::DataStatRequest {})
            .await
            .map_err(|s| from_status(&s))?;
        Ok(reply.into_inner())
    }

    /// Stores one block on every replica of its chain.
    pub async fn put_block(&self, slice_id: u64, index: u32, data: Bytes) -> Result<()> {
        let crc = crc32c::crc32c(&data);
        let backoff = Backoff {
            first: Duration::from_millis(50),
            max: Duration::from_secs(1),
            deadline: Duration::from_secs(30),
        };
        // Any failure but a malformed request may be a chain change: refresh and retry.
        retry(
            backoff,
            |e: &ClientError| !matches!(e, ClientError::Invalid(_)),
            |attempt| {
                let data = data.clone();
                async move {
                    let chain = self.chain(slice_id, index, attempt > 0).await?;
                    let mut client = self.grpc(&chain.addrs[0])?;
                    client
                        .put_block(pb::PutBlockRequest {
                            block: Some(pb::BlockId { slice_id, index }),
                            crc32c: crc,
                            data,
                            group: chain.group,
                            chain_version: chain.version,
                            rest: chain.addrs[1..].to_vec(),
                        })
                        .await
                        .map_err(|s| match from_status(&s) {
                            ClientError::Fs { errno, message }
                                if errno == cairn_proto::status::EINVAL =>
                            {
                                ClientError::Invalid(message)
                            }
                            e => e,
                        })?;
                    Ok(())
                }
            },
        )
        .await
    }

    /// Reads bytes [offset, offset + len) of a block (len 0: to its end): from the
    /// local cache when there is one (whole blocks are fetched into it), else
    /// from the first replica that has it intact.
    pub async fn get_block(
        &self,
        slice_id: u64,
        index: u32,
        offset: u32,
        len: u32,
    ) -> Result<Bytes> {
        let Some(cache) = &self.cache else {
            return self.fetch(slice_id, index, offset, len).await;
        };
        if let Some(range) = cache.get(slice_id, index, offset, len).await {
            return Ok(range);
        }
        // A miss fetches (and caches) the whole block: the rest of it is
        // likely read soon, and the cache holds whole blocks only.
        let block = self.fetch(slice_id, index, 0, 0).await?;
        cache.put(slice_id, index, block.clone()).await;
        let start = offset as usize;
        let end = if len == 0 {
            block.len()
        } else {
            start + len as usize
        };
        if end > block.len() || start > end {
            return Err(ClientError::Data(format!(
                "range {start}..{end} outside block {slice_id}/{index} of {} bytes",
                block.len()
            )));
        }
        Ok(block.slice(start..end))
    }

    /// `addrs` with the replicas that recently failed to answer moved last
    /// (in their order), so one hung replica costs one timeout, not one per read.
    fn healthy_first(&self, mut addrs: Vec<String>) -> Vec<String> {
        let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        suspects.retain(|_, until| *until > now);
        addrs.sort_by_key(|a| suspects.contains_key(a));
        addrs
    }

    fn suspect(&self, addr: &str) {
        self.suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string(), Instant::now() + SUSPECT_FOR);
    }

    /// Reads a block range from the first replica that has it intact: the
    /// chain's members (again with a fresh map when none had it), then every
    /// other live data node, since a copy may sit outside the current chain (a
    /// member that left it, a new one still syncing elsewhere).
    async fn fetch(&self, slice_id: u64, index: u32, offset: u32, len: u32) -> Result<Bytes> {
        let mut last_err = ClientError::Unavailable("no replica tried".into());
        let mut tried: Vec<String> = Vec::new();
        for refresh in [false, true] {
            let chain = self.chain(slice_id, index, refresh).await?;
            for addr in self.healthy_first(chain.addrs) {
                match self.fetch_from(&addr, slice_id, index, offset, len).await {
                    Ok(data) => return Ok(data),
                    Err(e) => last_err = e,
                }
                if !tried.contains(&addr) {
                    tried.push(addr);
                }
            }
        }
        let map = self.meta.map().await?;
        let others: Vec<String> = map
            .data_nodes
            .iter()
            .filter(|n| n.alive && !tried.contains(&n.addr))
            .map(|n| n.addr.clone())
            .collect();
        for addr in others {
            match self.fetch_from(&addr, slice_id, index, offset, len).await {
                Ok(data) => return Ok(data),
                Err(e) => last_err = e,
            }
        }
        Err(ClientError::Data(format!(
            "block {slice_id}/{index} unreadable on every replica: {last_err}"
        )))
    }

    /// One replica's copy of a block range (a whole block checked here too;
    /// ranges are checked by the server).
    async fn fetch_from(
        &self,
        addr: &str,
        slice_id: u64,
        index: u32,
        offset: u32,
        len: u32,
    ) -> Result<Bytes> {
        let reply = self
            .grpc(addr)?
            .get_block(pb::GetBlockRequest {
                block: Some(pb::BlockId { slice_id, index }),
                offset,
                len,
            })
            .await;
        match reply {
            Ok(r) => {
                let r = r.into_inner();
                if offset == 0 && len == 0 && crc32c::crc32c(&r.data) != r.block_crc32c {
                    return Err(ClientError::Data(format!(
                        "block {slice_id}/{index} from {addr}: checksum mismatch"
                    )));
                }
                Ok(r.data)
            }
            Err(s) => {
                tracing::debug!(addr, "block {slice_id}/{index}: {}", s.message());
                let e = from_status(&s);
                if e.is_transient() {
                    self.suspect(addr);
                }
                Err(e)
            }
        }
    }
}
