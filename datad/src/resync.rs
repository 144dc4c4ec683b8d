//! Group resync: how a replica new to a chain gets the blocks written before it
//! joined. When shard 0 adds a member to a chain that had members (one died,
//! one drains), the newcomer is *syncing* there (`PlacementGroup.syncing`):
//! new writes reach it through the chain at once, but the group's older
//! blocks sit only on the members that were there before. The resync job of
//! every datad looks, in the fence's table (refreshed by every heartbeat), for
//! the groups it syncs into and has not synced at their current version; for
//! those it lists the blocks the other members hold (`ListBlocks`, which each
//! answers only once it knows that version and no write it admitted under an
//! older one is in flight, so nothing acknowledged is missed) and copies in
//! each one it lacks (`GetBlock`, crc32c checked against the listing and
//! again by the store). Once every other live member was listed to the end,
//! the group is synced at that version and the heartbeat reports it
//! ([`SyncState`]); shard 0 then counts the node as serving. A member that
//! could not be reached leaves the group for the next round.
//!
//! Until it has a block, the new member answers ENOENT for it and readers go
//! on to the next replica; copying is paced (`resync-rate-mb-s`).
//!
//! The other way round, the same job sweeps the copies this node keeps of
//! groups whose chain it is no longer in (it drained, a rebalancing move took
//! the group away, or it was replaced while down): once every serving member
//! of the group (as many as the replication, all live) lists a block, the
//! local copy is dropped; a copy some member lacks stays, as it may be the
//! last one. A sweep runs at start, whenever this node leaves a chain, and
//! again later while copies were kept.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use cairn_proto::channel::Channels;
use cairn_proto::pb;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::fence::ChainFence;
use crate::meta::MetaLink;
use crate::scrub::pace_delay;
use crate::store::BlockId;
use crate::store::BlockStore;
use crate::store::Tier;
use cairn_proto::ids::placement_group;

/// Blocks one `ListBlocks` page asks for.
const PAGE: u32 = 1024;
/// How long connecting to metad or a replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one listing page or one block fetch may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// When a sweep kept copies (a member lacked them, or was down), the next one.
const SWEEP_RETRY: Duration = Duration::from_secs(30);
/// Most left-behind copies one sweep looks at.
const SWEEP_MAX: usize = 100_000;

/// What the resync job has done since the node started.
#[derive(Debug, Default)]
pub struct ResyncCounters {
    /// Groups of this node not waiting on a resync (serving there, or synced
    /// at the current chain version).
    pub groups_synced: AtomicU64,
    /// Groups this node is a member of.
    pub groups_member: AtomicU64,
    pub blocks_copied: AtomicU64,
    pub bytes_copied: AtomicU64,
    /// Copies of groups this node left, dropped once their members held them.
    pub blocks_dropped: AtomicU64,
}

/// The groups this node has synced into, by the chain version it synced at;
/// shared by the resync job (which fills it) and the heartbeat (which reports
/// the ones shard 0 still counts as syncing).
#[derive(Default)]
pub struct SyncState {
    synced: std::sync::Mutex<HashMap<u32, u64>>,
}

impl SyncState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, u64>> {
        self.synced.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Of `groups`, those node `me` syncs into and has not synced at their version.
    fn stale(&self, me: u64, groups: &[pb::PlacementGroup]) -> Vec<pb::PlacementGroup> {
        let synced = self.lock();
        groups
            .iter()
            .filter(|g| g.syncing.contains(&me) && synced.get(&g.id) != Some(&g.version))
            .cloned()
            .collect()
    }

    /// What the heartbeat reports: groups `me` still syncs into (in the
    /// fence's table) that it synced at their current version.
    pub fn report(&self, me: u64, fence: &ChainFence) -> Vec<pb::GroupVersion> {
        let synced = self.lock();
        fence
            .member_groups()
            .into_iter()
            .filter(|g| g.syncing.contains(&me) && synced.get(&g.id) == Some(&g.version))
            .map(|g| pb::GroupVersion {
                group: g.id,
                version: g.version,
            })
            .collect()
    }
}

/// The resync job of one node.
pub struct Resync {
    node_id: u64,
    store: BlockStore,
    fence: Arc<ChainFence>,
    meta: MetaLink,
    peers: Channels,
    /// How often the fence's table is compared with what was synced.
    interval: Duration,
    bytes_per_s: u64,
    counters: Arc<ResyncCounters>,
    state: Arc<SyncState>,
    /// The groups this node was a member of at the last round.
    last_member: Vec<u32>,
    /// When the next sweep of left-behind copies is due; `None`: once a chain is left.
    sweep_due: Option<Instant>,
}

impl Resync {
    pub fn new(
        node_id: u64,
        store: BlockStore,
        fence: Arc<ChainFence>,
        meta: Vec<String>,
        interval: Duration,
        bytes_per_s: u64,
    ) -> Resync {
        Resync {
            node_id,
            store,
            fence,
            meta: MetaLink::new(meta, CALL_TIMEOUT),
            peers: Channels::with_timeouts(CONNECT_TIMEOUT, CALL_TIMEOUT),
            interval,
            bytes_per_s,
            counters: Arc::new(ResyncCounters::default()),
            state: Arc::default(),
            last_member: Vec::new(),
            sweep_due: Some(Instant::now()),
        }
    }

    /// What this job has synced, for the heartbeat to report.
    pub fn state(&self) -> Arc<SyncState> {
        Arc::clone(&self.state)
    }

    /// The counters, shared with whoever reports them.
    pub fn counters(&self) -> Arc<ResyncCounters> {
        Arc::clone(&self.counters)
    }

    /// Compares and syncs every interval until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                () = self.round() => {}
            }
        }
    }

    /// Syncs the groups this node syncs into and has not synced at their
    /// version, then sweeps left-behind copies when due.
    async fn round(&mut self) {
        let member = self.fence.member_groups();
        let ids: Vec<u32> = member.iter().map(|g| g.id).collect();
        if self.last_member.iter().any(|g| !ids.contains(g)) {
            self.sweep_due = Some(Instant::now());
        }
        self.last_member = ids;
        let stale = self.state.stale(self.node_id, &member);
        self.report(member.len(), member.len() - stale.len());
        if !stale.is_empty() {
            self.resync(&stale).await;
        }
        // Not before shard 0 has heard this node: a node back from an absence
        // rejoins its chains through its first heartbeat.
        if self.fence.learned() && self.sweep_due.is_some_and(|due| due <= Instant::now()) {
            let kept = self.sweep().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "resync: sweep failed; retrying later");
                1
            });
            self.sweep_due = (kept > 0).then(|| Instant::now() + SWEEP_RETRY);
        }
    }

    /// Copies in the blocks of `stale` groups from their other members.
    async fn resync(&self, stale: &[pb::PlacementGroup]) {
        let map = match self.meta.cluster_map().await {
            Ok(map) => map,
            Err(e) => {
                tracing::warn!(error = %e, "resync: cluster map unavailable; retrying");
                return;
            }
        };
        let started = Instant::now();
        let mut round = 0;
        let mut failed: Vec<u32> = Vec::new();
        // The groups with the fewest copies left first: a group down to its
        // last serving replica is copied before one that lost one of three.
        for level in riskiest_first(&map, self.node_id, stale) {
            for (addr, groups) in peers_of(&map, self.node_id, &level) {
                let at: Vec<pb::GroupVersion> = level
                    .iter()
                    .filter(|g| groups.contains(&g.id))
                    .map(|g| pb::GroupVersion {
                        group: g.id,
                        version: g.version,
                    })
                    .collect();
                if let Err(e) = self.copy_from(&addr, &map, at, started, &mut round).await {
                    tracing::warn!(peer = %addr, ?groups, error = %e, "resync: peer not synced; retrying");
                    failed.extend(groups);
                }
            }
        }
        for g in stale {
            // Synced only from a live serving member: syncing peers alone may
            // all lack what the chain's last serving member holds.
            if serving(&map, self.node_id, g) > 0 && !failed.contains(&g.id) {
                self.state.lock().insert(g.id, g.version);
                tracing::info!(group = g.id, version = g.version, "resync: group in sync");
            }
        }
        let member = self.fence.member_groups();
        let stale = self.state.stale(self.node_id, &member).len();
        self.report(member.len(), member.len() - stale);
    }

    /// Drops the copies of groups this node is not in that every serving
    /// member holds; answers how many left-behind copies it kept.
    async fn sweep(&self) -> Result<usize, String> {
        let map = self.meta.cluster_map().await?;
        let total = map.groups.len() as u32;
        if total == 0 {
            return Ok(0);
        }
        let mine = |g: u32| {
            map.groups
                .iter()
                .any(|p| p.id == g && p.chain.contains(&self.node_id))
        };
        let mut left: BTreeMap<u32, Vec<BlockId>> = BTreeMap::new();
        let (mut found, mut after) = (0, None);
        while found < SWEEP_MAX {
            let page = self
                .store
                .list(after, 1024)
                .await
                .map_err(|e| e.to_string())?;
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            for (id, info) in page {
                let g = placement_group(id.slice_id, id.index, total);
                // Only plain local copies: a cold one's object is shared.
                if info.tier == Tier::Hot && !mine(g) {
                    left.entry(g).or_default().push(id);
                    found += 1;
                }
            }
        }
        if left.is_empty() {
            return Ok(0);
        }
        // Every serving member of each group, as many as the replication, all live.
        let mut holders: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for g in map.groups.iter().filter(|g| left.contains_key(&g.id)) {
            let serving: Vec<&pb::DataNodeInfo> = g
                .chain
                .iter()
                .filter(|id| !g.syncing.contains(id))
                .filter_map(|id| map.data_nodes.iter().find(|n| n.id == *id && n.alive))
                .collect();
            if serving.len() >= map.replication as usize
                && serving.len() == g.chain.len() - g.syncing.len()
            {
                holders.insert(g.id, serving.iter().map(|n| n.addr.clone()).collect());
            }
        }
        let mut listed: HashMap<String, std::collections::HashSet<BlockId>> = HashMap::new();
        let mut peers: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (g, addrs) in &holders {
            for addr in addrs {
                peers.entry(addr.clone()).or_default().push(*g);
            }
        }
        for (addr, groups) in peers {
            match self.list(&addr, total, groups, Vec::new()).await {
                Ok(blocks) => {
                    let ids = blocks.iter().filter_map(|b| b.block.as_ref());
                    let ids = ids.map(|b| BlockId {
                        slice_id: b.slice_id,
                        index: b.index,
                    });
                    listed.insert(addr, ids.collect());
                }
                Err(e) => tracing::debug!(peer = %addr, error = %e, "sweep: listing failed"),
            }
        }
        let member_now: Vec<u32> = self.fence.member_groups().iter().map(|g| g.id).collect();
        let mut drop = Vec::new();
        let mut kept = 0;
        for (g, ids) in left {
            let everywhere = |id: &BlockId| {
                holders.get(&g).is_some_and(|addrs| {
                    addrs
                        .iter()
                        .all(|a| listed.get(a).is_some_and(|l| l.contains(id)))
                })
            };
            for id in ids {
                if !member_now.contains(&g) && everywhere(&id) {
                    drop.push(id);
                } else {
                    kept += 1;
                }
            }
        }
        if !drop.is_empty() {
            let n = self.store.delete(drop).await.map_err(|e| e.to_string())?;
            self.counters.blocks_dropped.fetch_add(n, Ordering::Relaxed);
            tracing::info!(
                dropped = n,
                kept,
                "resync: dropped copies of groups this node left"
            );
        }
        Ok(kept)
    }

    /// Every block the peer at `addr` holds of `groups`, listed once it
    /// knows the chain versions `at` (none: at once).
    async fn list(
        &self,
        addr: &str,
        total: u32,
        groups: Vec<u32>,
        at: Vec<pb::GroupVersion>,
    ) -> Result<Vec<pb::ListedBlock>, String> {
        let mut client = self.peers.data(addr).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = client
                .list_blocks(pb::ListBlocksRequest {
                    groups_total: total,
                    groups: groups.clone(),
                    after,
                    limit: PAGE,
                    at: at.clone(),
                })
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            out.extend(page.blocks);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    fn report(&self, member: usize, synced: usize) {
        let c = &self.counters;
        c.groups_member.store(member as u64, Ordering::Relaxed);
        c.groups_synced.store(synced as u64, Ordering::Relaxed);
    }

    /// Copies in every block of the groups `at` the peer at `addr` holds and
    /// this node lacks; `round` counts the bytes this round copied, for pacing.
    async fn copy_from(
        &self,
        addr: &str,
        map: &pb::ClusterMap,
        at: Vec<pb::GroupVersion>,
        started: Instant,
        round: &mut u64,
    ) -> Result<(), String> {
        let groups: Vec<u32> = at.iter().map(|g| g.group).collect();
        let listed = self.list(addr, map.groups.len() as u32, groups, at).await?;
        let mut client = self.peers.data(addr).map_err(|e| e.to_string())?;
        for listed in listed {
            let Some(b) = listed.block else { continue };
            let id = BlockId {
                slice_id: b.slice_id,
                index: b.index,
            };
            if self
                .store
                .info(id)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                continue;
            }
            let request = pb::GetBlockRequest {
                block: Some(b),
                offset: 0,
                len: 0,
            };
            let data = match client.get_block(request).await {
                Ok(r) => r.into_inner().data,
                // Deleted since the listing: nothing to copy.
                Err(s) if s.code() == tonic::Code::NotFound => continue,
                Err(s) => return Err(format!("block {id}: {}", s.message())),
            };
            if crc32c::crc32c(&data) != listed.crc32c || data.len() != listed.len as usize {
                return Err(format!("block {id}: copy does not match its listing"));
            }
            let len = data.len() as u64;
            self.store
                .put(id, data, listed.crc32c)
                .await
                .map_err(|e| format!("storing block {id}: {e}"))?;
            let c = &self.counters;
            c.blocks_copied.fetch_add(1, Ordering::Relaxed);
            c.bytes_copied.fetch_add(len, Ordering::Relaxed);
            *round += len;
            tokio::time::sleep(pace_delay(*round, self.bytes_per_s, started.elapsed())).await;
        }
        Ok(())
    }
}

/// How many live members of `g`'s chain other than `me` serve it (hold all
/// of its blocks: they are not syncing).
fn serving(map: &pb::ClusterMap, me: u64, g: &pb::PlacementGroup) -> usize {
    g.chain
        .iter()
        .filter(|id| {
            **id != me
                && !g.syncing.contains(id)
                && map.data_nodes.iter().any(|n| n.id == **id && n.alive)
        })
        .count()
}

/// `stale` in the order to copy: by how many replicas serve each group,
/// fewest first, in id order within a level.
fn riskiest_first(
    map: &pb::ClusterMap,
    me: u64,
    stale: &[pb::PlacementGroup],
) -> Vec<Vec<pb::PlacementGroup>> {
    let mut levels: BTreeMap<usize, Vec<pb::PlacementGroup>> = BTreeMap::new();
    for g in stale {
        levels
            .entry(serving(map, me, g))
            .or_default()
            .push(g.clone());
    }
    levels
        .into_values()
        .map(|mut level| {
            level.sort_by_key(|g| g.id);
            level
        })
        .collect()
}

/// For each other live member of the `stale` groups' chains, its address and
/// the stale groups it serves, in address order.
fn peers_of(
    map: &pb::ClusterMap,
    me: u64,
    stale: &[pb::PlacementGroup],
) -> BTreeMap<String, Vec<u32>> {
    let mut peers: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for g in stale {
        for id in g.chain.iter().filter(|id| **id != me) {
            if let Some(n) = map.data_nodes.iter().find(|n| n.id == *id && n.alive) {
                peers.entry(n.addr.clone()).or_default().push(g.id);
            }
        }
    }
    peers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, alive: bool) -> pb::DataNodeInfo {
        pb::DataNodeInfo {
            id,
            addr: format!("127.0.0.1:{id}"),
            alive,
            ..Default::default()
        }
    }

    fn group(id: u32, chain: &[u64]) -> pb::PlacementGroup {
        pb::PlacementGroup {
            id,
            chain: chain.to_vec(),
            version: 1,
            syncing: Vec::new(),
        }
    }

    #[test]
    fn peers_are_the_other_live_members_of_stale_groups() {
        let map = pb::ClusterMap {
            data_nodes: vec![node(1, true), node(2, true), node(3, false), node(4, true)],
            ..Default::default()
        };
        let stale = vec![group(0, &[1, 2, 3]), group(5, &[4, 1])];
        let peers = peers_of(&map, 1, &stale);
        let expect: BTreeMap<String, Vec<u32>> = [
            ("127.0.0.1:2".to_string(), vec![0]),
            ("127.0.0.1:4".to_string(), vec![5]),
        ]
        .into();
        assert_eq!(peers, expect);
    }

    /// Node 9 syncs into every group; a group with one serving replica left
    /// is copied before groups with two, and a group only syncing members
    /// hold (none serving) comes first: it can be listed, not synced.
    #[test]
    fn groups_with_the_fewest_serving_replicas_are_copied_first() {
        let map = pb::ClusterMap {
            data_nodes: vec![node(1, true), node(2, true), node(3, false), node(9, true)],
            ..Default::default()
        };
        let mut syncing = group(4, &[2, 9]);
        syncing.syncing = vec![2, 9];
        let stale = vec![
            group(7, &[1, 2, 9]),
            group(1, &[1, 3, 9]),
            group(3, &[2, 1, 9]),
            syncing,
            group(2, &[3, 2, 9]),
        ];
        let order: Vec<Vec<u32>> = riskiest_first(&map, 9, &stale)
            .iter()
            .map(|level| level.iter().map(|g| g.id).collect())
            .collect();
        assert_eq!(order, vec![vec![4], vec![1, 2], vec![3, 7]]);
    }
}
