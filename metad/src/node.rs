//! One metad process: the shard replicas it hosts (multi-Raft over one RocksDB),
//! routing of requests to shard leaders (forwarding, leader hints), linearizable
//! reads, the cluster map and the background duties of the leaders hosted here.
//! Namespace mutations are coordinated in `coordinator.rs`.
//!
//! Placement is fixed by the configuration: shard `s` is replicated on
//! `replication` consecutive members starting at member `s mod n`, so leaders of
//! different shards start on different nodes. A new directory's inode is placed on
//! a shard chosen by hash of (parent, name); its entries and its files live there.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use openraft::BasicNode;
use rocksdb::DB;

use cairn_proto::ids::ino_shard;
use cairn_proto::ids::ShardId;
use cairn_proto::ids::MAP_SHARD;
use cairn_proto::pb;
use cairn_proto::retry::retry;
use cairn_proto::retry::Backoff;
use cairn_proto::status::decode;
use cairn_proto::status::WireError;
use cairn_proto::status::*;

use crate::cluster;
use crate::config::Config;
use crate::config::Peer;
use crate::error::MetaError;
use crate::fs;
use crate::fs::Entry;
use crate::fs::FsCommand;
use crate::fs::Inode;
use crate::fs::Reply;
use crate::kv::Txn;
use crate::network::NetworkFactory;
use crate::store::LogStore;
use crate::store::StateMachine;
use crate::types::Command;
use crate::types::Raft;
use crate::types::Request;
use crate::types::Response;
use cairn_proto::channel::Channels;

/// The shard of a new directory: a hash of (parent, name) over the data shards.
pub fn dir_shard(parent: u64, name: &[u8], data_shards: u32) -> ShardId {
    // FNV-1a: stable across processes and releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parent.to_be_bytes().iter().chain(name) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    1 + (h % u64::from(data_shards.max(1))) as ShardId
}

/// The longest a leader waits for its quorum to commit a command or confirm a
/// read before answering a transient error.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read waits here for a locked key's transaction to finish before
/// answering EAGAIN (recovery of a dead coordinator takes seconds).
const LOCKED_READ_WAIT: Duration = Duration::from_millis(200);

/// Nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub struct MetaNode {
    pub id: u64,
    config: Config,
    members: Vec<Peer>,
    db: Arc<DB>,
    rafts: BTreeMap<ShardId, Raft>,
    pub channels: Channels,
    /// Last known leader of shards this node does not host.
    hints: Mutex<HashMap<ShardId, u64>>,
    /// Read leases of shards led here: (term, valid until).
    leases: Mutex<HashMap<ShardId, (u64, Instant)>>,
    /// The state of this node's background workers.
    pub workers: crate::worker::Workers,
    /// Inode numbers reserved on other shards for directories made there.
    pub(crate) inos: Mutex<BTreeMap<ShardId, std::ops::Range<u64>>>,
    /// Transactions finished by coordinators led here, by coordinator shard,
    /// whose records are still to be forgotten.
    pub(crate) finished: Mutex<BTreeMap<ShardId, Vec<u64>>>,
    /// Shards whose store was empty when this node started (a group being
    /// born, or a disk replaced while the group lived on), with the commit
    /// index of the first leader append received since whose leader had
    /// committed an entry of its own term, so that the index covers every
    /// entry committed before (None: none yet).
    /// Until it has applied that index, or leads the group, it votes only
    /// for a newborn group's candidate: its empty log loses no log
    /// comparison, so its vote could elect a leader that lacks entries the
    /// group committed with this node's lost copies.
    catching_up: Mutex<HashMap<ShardId, Option<u64>>>,
}

impl MetaNode {
    /// Opens the DB, starts a Raft replica for every shard placed here and
    /// initializes the groups this node bootstraps.
    pub async fn start(config: Config) -> Result<Arc<Self>, MetaError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)?;
        let db = crate::kv::open_db(&config.data_dir.join("db"))?;
        let members = config.members();
        let channels = Channels::default();
        let raft_config = Arc::new(
            openraft::Config {
                cluster_name: "cairn".into(),
                heartbeat_interval: config.heartbeat_ms,
                election_timeout_min: config.election_timeout_ms,
                election_timeout_max: config.election_timeout_ms * 2,
                snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                    config.snapshot_after_logs,
                ),
                max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
                ..Default::default()
            }
            .validate()
            .map_err(|e| MetaError::Config(e.to_string()))?,
        );
        let mut node = MetaNode {
            id: config.id,
            config,
            members,
            db,
            rafts: BTreeMap::new(),
            channels,
            hints: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            workers: Default::default(),
            inos: Default::default(),
            finished: Default::default(),
            catching_up: Default::default(),
        };
        for shard in 0..=node.config.data_shards {
            if !node.replicas(shard).contains(&node.id) {
                continue;
            }
            let raft = Raft::new(
                node.id,
                raft_config.clone(),
                NetworkFactory {
                    shard,
                    channels: node.channels.clone(),
                },
                LogStore::new(node.db.clone(), shard),
                StateMachine::new(
                    node.db.clone(),
                    shard,
                    node.config.data_dir.join("snapshots"),
                ),
            )
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
            node.rafts.insert(shard, raft);
        }
        let mut empty = Vec::new();
        for (&shard, raft) in &node.rafts {
            let initialized = raft
                .is_initialized()
                .await
                .map_err(|e| MetaError::Raft(e.to_string()))?;
            if !initialized {
                empty.push(shard);
            }
        }
        for &shard in &empty {
            // A store empty here is a group being born or a replaced disk:
            // either way this node votes only for a newborn group until it
            // has caught up (see `catching_up`).
            node.catching_up
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(shard, None);
            let (raft, replicas) = (&node.rafts[&shard], node.replicas(shard));
            if replicas.first() == Some(&node.id) {
                let members: BTreeMap<u64, BasicNode> = replicas
                    .iter()
                    .filter_map(|id| node.addr_of(*id).map(|a| (*id, BasicNode::new(a))))
                    .collect();
                raft.initialize(members)
                    .await
                    .map_err(|e| MetaError::Raft(e.to_string()))?;
            }
        }
        let node = Arc::new(node);
        for shard in empty {
            tokio::spawn(node.clone().vote_once_leading(shard));
        }
        Ok(node)
    }

    /// Whether this node may vote in `shard`'s election for a candidate whose
    /// log ends at `candidate_last` (see `catching_up`): while it catches up
    /// only for a group being born (a log of nothing but its first
    /// membership), which loses nothing.
    pub(crate) fn may_vote(&self, shard: ShardId, candidate_last: Option<u64>) -> bool {
        candidate_last.unwrap_or(0) == 0
            || !self
                .catching_up
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&shard)
    }

    /// Ends catching up on `shard` once this node leads it (an elected
    /// leader holds every committed entry).
    async fn vote_once_leading(self: Arc<Self>, shard: ShardId) {
        let Some(mut metrics) = self.rafts.get(&shard).map(|r| r.metrics()) else {
            return;
        };
        loop {
            let leading = metrics.borrow().current_leader == Some(self.id);
            {
                let mut catching_up = self.catching_up.lock().unwrap_or_else(|p| p.into_inner());
                if !catching_up.contains_key(&shard) {
                    return;
                }
                if leading {
                    catching_up.remove(&shard);
                    return;
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// After a leader's append (`leader_commit`) or snapshot reached `shard`:
    /// a shard this node is catching up on votes again once it has applied
    /// what the leader had committed when first heard.
    pub(crate) fn heard_from_leader(&self, shard: ShardId, leader_commit: Option<u64>) {
        let mut catching_up = self.catching_up.lock().unwrap_or_else(|p| p.into_inner());
        let Some(target) = catching_up.get_mut(&shard) else {
            return;
        };
        if target.is_none() {
            *target = leader_commit;
        }
        let applied = self
            .rafts
            .get(&shard)
            .and_then(|r| r.metrics().borrow().last_applied.map(|l| l.index));
        if target.is_some_and(|t| applied.is_some_and(|a| a >= t)) {
            catching_up.remove(&shard);
            tracing::info!(shard, "caught up after rejoining: voting again");
        }
    }

    /// Stops every Raft replica.
    pub async fn shutdown(&self) {
        for raft in self.rafts.values() {
            let _ = raft.shutdown().await;
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Shard ids of the cluster: 0 (map) and 1..=data_shards.
    pub fn shards(&self) -> std::ops::RangeInclusive<ShardId> {
        0..=self.config.data_shards
    }

    /// The members replicating `shard`, in placement order.
    pub fn replicas(&self, shard: ShardId) -> Vec<u64> {
        let n = self.members.len();
        let r = (self.config.replication as usize).min(n);
        (0..r)
            .map(|k| self.members[(shard as usize + k) % n].id)
            .collect()
    }

    pub(crate) fn addr_of(&self, id: u64) -> Option<String> {
        self.members
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.addr.clone())
    }

    pub fn members(&self) -> &[Peer] {
        &self.members
    }

    /// The best known leader of a shard.
    pub fn leader_of(&self, shard: ShardId) -> Option<u64> {
        match self.rafts.get(&shard) {
            Some(raft) => raft.metrics().borrow().current_leader,
            None => self
                .hints
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&shard)
                .copied(),
        }
    }

    pub(crate) fn not_leader(&self, shard: ShardId) -> MetaError {
        let leader = self
            .leader_of(shard)
            .filter(|l| *l != self.id)
            .or_else(|| self.replicas(shard).into_iter().find(|r| *r != self.id));
        MetaError::NotLeader {
            shard,
            leader: leader.and_then(|id| self.addr_of(id).map(|a| (id, a))),
        }
    }

    /// This node's replica of `shard` if it is the leader.
    pub(crate) fn leader_raft(&self, shard: ShardId) -> Result<&Raft, MetaError> {
        let raft = self
            .rafts
            .get(&shard)
            .ok_or_else(|| self.not_leader(shard))?;
        if raft.metrics().borrow().current_leader != Some(self.id) {
            return Err(self.not_leader(shard));
        }
        Ok(raft)
    }

    /// Commits `req` on `shard`, which must be led by this node.
    pub async fn propose_local(&self, shard: ShardId, req: Request) -> Result<Reply, MetaError> {
        let raft = self.leader_raft(shard)?;
        // A leader cut off from its quorum would wait for a commit forever; the
        // caller gets a transient error instead and retries (exactly-once keys
        // make a retry of a command that did commit meanwhile harmless).
        let write = tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(req))
            .await
            .map_err(|_| {
                MetaError::Raft(format!(
                    "shard {shard}: no commit within {COMMIT_TIMEOUT:?}"
                ))
            })?;
        match write {
            Ok(resp) => resp.data.0.map_err(MetaError::Fs),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(self.not_leader(shard))
            }
            Err(e) => Err(MetaError::Raft(e.to_string())),
        }
    }

    /// Commits `req` on `shard`, forwarding to its leader when that is another node.
    pub async fn propose(&self, shard: ShardId, req: Request) -> Result<Reply, MetaError> {
        self.with_leader(shard, |target| {
            let req = req.clone();
            async move {
                match target {
                    None => self.propose_local(shard, req).await,
                    Some(addr) => self.propose_remote(&addr, shard, &req).await,
                }
            }
        })
        .await
    }

    pub(crate) async fn propose_remote(
        &self,
        addr: &str,
        shard: ShardId,
        req: &Request,
    ) -> Result<Reply, MetaError> {
        let payload = crate::kv::encode(req)?;
        let mut client = crate::network::raft_client(&self.channels, addr)
            .map_err(|e| MetaError::Peer(e.to_string()))?;
        let reply = client
            .propose(pb::RaftMessage {
                shard,
                payload: payload.into(),
            })
            .await
            .map_err(|s| self.wire_error(shard, &s))?;
        let resp: Response = crate::kv::decode(&reply.into_inner().payload)?;
        resp.0.map_err(MetaError::Fs)
    }

    /// Turns a peer's status into an error, remembering leader hints.
    pub(crate) fn wire_error(&self, shard: ShardId, status: &tonic::Status) -> MetaError {
        match decode(status) {
            WireError::Errno { errno, message } => MetaError::fs(errno, message),
            WireError::NotLeader { leader } => {
                if let Some((id, _)) = &leader {
                    self.hints
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(shard, *id);
                }
                MetaError::NotLeader { shard, leader }
            }
            WireError::Other { message, .. } => MetaError::Peer(message),
        }
    }

    /// Runs `f` against the leader of `shard` (None: this node), retrying while
    /// the leader moves.
    pub(crate) async fn with_leader<T, F, Fut>(&self, shard: ShardId, f: F) -> Result<T, MetaError>
    where
        F: Fn(Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<T, MetaError>>,
    {
        let backoff = Backoff {
            deadline: Duration::from_secs(20),
            ..Backoff::default()
        };
        retry(
            backoff,
            |e: &MetaError| {
                matches!(
                    e,
                    MetaError::NotLeader { .. } | MetaError::Peer(_) | MetaError::Raft(_)
                )
            },
            |attempt| {
                let leader = self.leader_of(shard);
                let target = match leader {
                    Some(id) if id == self.id => None,
                    Some(id) => self.addr_of(id),
                    None if self.rafts.contains_key(&shard) => None,
                    None => {
                        // Unknown leader of a shard not hosted here: try replicas in turn.
                        let replicas = self.replicas(shard);
                        replicas
                            .get(attempt as usize % replicas.len().max(1))
                            .and_then(|id| self.addr_of(*id))
                    }
                };
                f(target)
            },
        )
        .await
    }

    /// Runs a linearizable read of `shard`, which must be led by this node.
    ///
    /// Leadership is confirmed by a quorum round trip (ReadIndex), which also
    /// waits until everything committed before it is applied. That confirmation
    /// then serves as a lease: followers that acknowledged it refuse to elect
    /// another leader for `election_timeout_min` after receiving it, so for half
    /// of that time after sending it, in the same term, reads are served from
    /// the local state machine (every write acknowledged since was applied here
    /// before its acknowledgement).
    pub async fn read<T>(
        &self,
        shard: ShardId,
        f: impl Fn(&Txn) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        let raft = self.leader_raft(shard)?;
        let term = raft.metrics().borrow().current_term;
        let now = Instant::now();
        let leased = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard)
            .is_some_and(|&(t, until)| t == term && now < until);
        if !leased {
            tokio::time::timeout(COMMIT_TIMEOUT, raft.ensure_linearizable())
                .await
                .map_err(|_| {
                    MetaError::Raft(format!(
                        "shard {shard}: no quorum within {COMMIT_TIMEOUT:?}"
                    ))
                })?
                .map_err(|e| match e {
                    RaftError::APIError(_) => self.not_leader(shard),
                    e => MetaError::Raft(e.to_string()),
                })?;
            let lease = Duration::from_millis(self.config.election_timeout_ms / 2);
            self.leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(shard, (term, now + lease));
        }
        // A key locked by a decided cross-shard transaction reads once this
        // shard applies the transaction's finish, a consensus round away:
        // wait for the shard's next applies here (a while) rather than send
        // the client into its back-off.
        let deadline = now + LOCKED_READ_WAIT;
        loop {
            let applied = raft.metrics().borrow().last_applied.map(|id| id.index);
            match f(&Txn::reader(&self.db, shard)) {
                Err(MetaError::Fs(e)) if e.errno == EAGAIN && Instant::now() < deadline => {
                    let next = applied.map_or(0, |i| i + 1);
                    let wait = raft.wait(Some(deadline.saturating_duration_since(Instant::now())));
                    if wait
                        .applied_index_at_least(Some(next), "a locked key's finish")
                        .await
                        .is_err()
                    {
                        return Err(MetaError::Fs(e));
                    }
                }
                answer => return answer,
            }
        }
    }

    /// An inode's attributes, read at its shard's leader wherever that is.
    pub async fn getattr_anywhere(&self, ino: u64) -> Result<Inode, MetaError> {
        let shard = ino_shard(ino);
        self.with_leader(shard, |target| async move {
            match target {
                None => self.read(shard, |txn| fs::get_inode(txn, ino)).await,
                Some(addr) => {
                    let mut client = self
                        .channels
                        .meta(&addr)
                        .map_err(|e| MetaError::Peer(e.to_string()))?;
                    let reply = client
                        .get_attr(pb::GetAttrRequest { ino })
                        .await
                        .map_err(|s| self.wire_error(shard, &s))?;
                    let attr = reply
                        .into_inner()
                        .attr
                        .ok_or_else(|| MetaError::Peer("reply without attributes".into()))?;
                    crate::service::inode_from_pb(&attr)
                }
            }
        })
        .await
    }

    /// Which of `ids` some file shows: on `shard` (read here, its leader), or
    /// on every data shard at its leader when `shard` is 0.
    pub async fn slice_refs(&self, shard: ShardId, ids: Vec<u64>) -> Result<Vec<u64>, MetaError> {
        if shard != MAP_SHARD {
            return self
                .read(shard, |txn| crate::slices::referenced(txn, &ids))
                .await;
        }
        let mut out = Vec::new();
        for s in 1..=self.config.data_shards {
            let ids = &ids;
            let found = self
                .with_leader(s, |target| async move {
                    match target {
                        None => {
                            self.read(s, |txn| crate::slices::referenced(txn, ids))
                                .await
                        }
                        Some(addr) => {
                            let mut client = self
                                .channels
                                .meta(&addr)
                                .map_err(|e| MetaError::Peer(e.to_string()))?;
                            let req = pb::SliceRefsRequest {
                                slice_ids: ids.clone(),
                                shard: s,
                            };
                            let reply = client
                                .slice_refs(req)
                                .await
                                .map_err(|st| self.wire_error(s, &st))?;
                            Ok(reply.into_inner().referenced)
                        }
                    }
                })
                .await?;
            out.extend(found);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The cluster map, read at shard 0 on this node (which must lead it).
    pub async fn cluster_map_local(&self) -> Result<pb::ClusterMap, MetaError> {
        let (layout, nodes, groups) = self
            .read(MAP_SHARD, |txn| {
                let mut nodes = Vec::new();
                for n in cluster::data_nodes(txn)? {
                    let state = cluster::node_state(txn, n.id)?;
                    nodes.push((n, state));
                }
                let mut groups = Vec::new();
                for (id, g) in cluster::groups(txn)? {
                    let syncing = cluster::states(txn, id)?.syncing;
                    groups.push((id, g, syncing));
                }
                Ok((cluster::layout(txn)?, nodes, groups))
            })
            .await?;
        let now_ms = now_ns() / 1_000_000;
        let dead_after = layout.map_or(cluster::DEFAULT_DEAD_AFTER_MS, |l| l.dead_after_ms);
        let map = pb::ClusterMap {
            meta_nodes: self
                .members()
                .iter()
                .map(|p| pb::MetaNodeInfo {
                    id: p.id,
                    addr: p.addr.clone(),
                })
                .collect(),
            shards: self
                .shards()
                .map(|s| pb::ShardInfo {
                    id: s,
                    replicas: self.replicas(s),
                    leader: self.leader_of(s).unwrap_or(0),
                })
                .collect(),
            data_nodes: nodes
                .iter()
                .map(|(n, state)| pb::DataNodeInfo {
                    id: n.id,
                    addr: n.addr.clone(),
                    capacity_bytes: n.capacity,
                    used_bytes: n.used,
                    blocks: n.blocks,
                    alive: cluster::is_alive(n, now_ms, dead_after),
                    last_heartbeat_ms: n.last_heartbeat_ms,
                    state: state.to_pb() as i32,
                })
                .collect(),
            groups: groups
                .into_iter()
                .map(|(id, g, syncing)| pb::PlacementGroup {
                    id,
                    chain: g.chain,
                    version: g.version,
                    syncing,
                })
                .collect(),
            replication: layout.map(|l| l.replication).unwrap_or(0),
            block_size: layout.map(|l| l.block_size).unwrap_or(0),
            chunk_size: cairn_proto::ids::CHUNK_SIZE as u32,
            session_lease_ms: self.config.session_lease_ms,
        };
        Ok(map)
    }

    /// The cluster map, from shard 0's leader wherever that is.
    pub async fn cluster_map(&self) -> Result<pb::ClusterMap, MetaError> {
        self.with_leader(MAP_SHARD, |target| async move {
            match target {
                None => self.cluster_map_local().await,
                Some(addr) => {
                    let mut client = self
                        .channels
                        .meta(&addr)
                        .map_err(|e| MetaError::Peer(e.to_string()))?;
                    client
                        .get_cluster_map(pb::ClusterMapRequest {})
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| self.wire_error(MAP_SHARD, &s))
                }
            }
        })
        .await
    }

    /// Capacity of the data servers and inodes of every namespace shard.
    pub async fn statfs(&self) -> Result<pb::StatFsReply, MetaError> {
        let map = self.cluster_map().await?;
        let mut reply = pb::StatFsReply {
            total_bytes: map.data_nodes.iter().map(|n| n.capacity_bytes).sum(),
            used_bytes: map.data_nodes.iter().map(|n| n.used_bytes).sum(),
            inodes: 0,
        };
        for shard in self.shards().filter(|s| *s != MAP_SHARD) {
            reply.inodes += self
                .with_leader(shard, |target| async move {
                    match target {
                        None => self.read(shard, fs::inode_count).await,
                        Some(addr) => self
                            .channels
                            .meta(&addr)
                            .map_err(|e| MetaError::Peer(e.to_string()))?
                            .stat_fs(pb::StatFsRequest { shard: Some(shard) })
                            .await
                            .map(|r| r.into_inner().inodes)
                            .map_err(|s| self.wire_error(shard, &s)),
                    }
                })
                .await?;
        }
        Ok(reply)
    }

    /// The shard of a new directory named `name` in `parent`.
    pub fn dir_shard(&self, parent: u64, name: &[u8]) -> ShardId {
        dir_shard(parent, name, self.config.data_shards)
    }

    /// Drops the open files of clients whose session lease ran out on `shard`
    /// and deletes orphans that waited out a lease.
    pub(crate) async fn expire_sessions(&self, shard: ShardId) -> Result<(), MetaError> {
        let now_ms = now_ns() / 1_000_000;
        let orphans_before_ms = now_ms - self.config.session_lease_ms as i64;
        if self
            .read(shard, |txn| {
                fs::has_expired_sessions(txn, now_ms, orphans_before_ms)
            })
            .await?
        {
            let expire = Request {
                key: None,
                cmd: Command::Fs(FsCommand::ExpireSessions {
                    now_ms,
                    orphans_before_ms,
                }),
            };
            self.propose_local(shard, expire).await?;
        }
        Ok(())
    }

    /// Extends a client's session on `shard` (led here).
    pub async fn renew_session(&self, shard: ShardId, client: u64) -> Result<(), MetaError> {
        let renew = Request {
            key: None,
            cmd: Command::Fs(FsCommand::RenewSession {
                client,
                now_ms: now_ns() / 1_000_000,
                lease_ms: self.config.session_lease_ms as i64,
            }),
        };
        self.propose_local(shard, renew).await.map(|_| ())
    }

    /// A directory entry, read at its shard's leader wherever that is.
    pub(crate) async fn read_entry(
        &self,
        parent: u64,
        name: &[u8],
    ) -> Result<Option<Entry>, MetaError> {
        let shard = ino_shard(parent);
        if self.leader_of(shard) == Some(self.id) {
            return self
                .read(shard, |txn| fs::get_entry(txn, parent, name))
                .await;
        }
        self.with_leader(shard, |target| async move {
            match target {
                None => {
                    self.read(shard, |txn| fs::get_entry(txn, parent, name))
                        .await
                }
                Some(addr) => {
                    let mut client = self
                        .channels
                        .meta(&addr)
                        .map_err(|e| MetaError::Peer(e.to_string()))?;
                    match client
                        .lookup(pb::LookupRequest {
                            parent,
                            name: name.to_vec().into(),
                        })
                        .await
                    {
                        Ok(reply) => {
                            let attr = reply.into_inner().attr.ok_or_else(|| {
                                MetaError::Peer("reply without attributes".into())
                            })?;
                            let inode = crate::service::inode_from_pb(&attr)?;
                            Ok(Some(Entry {
                                ino: attr.ino,
                                kind: inode.kind,
                            }))
                        }
                        Err(s) => match self.wire_error(shard, &s) {
                            MetaError::Fs(e) if e.errno == ENOENT => Ok(None),
                            e => Err(e),
                        },
                    }
                }
            }
        })
        .await
    }

    /// This node's Raft replica of `shard`, for the Raft service.
    pub fn raft(&self, shard: ShardId) -> Option<&Raft> {
        self.rafts.get(&shard)
    }
}
