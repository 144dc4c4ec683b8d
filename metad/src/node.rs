//! One metad process: the shard replicas it hosts (multi-Raft over one RocksDB),
//! routing of requests to shard leaders, linearizable reads, and the coordinator
//! that splits operations spanning shards into per-shard steps.
//!
//! Placement is fixed by the configuration: shard `s` is replicated on
//! `replication` consecutive members starting at member `s mod n`, so leaders of
//! different shards start on different nodes. A new directory's inode is placed on
//! a shard chosen by hash of (parent, name); its entries and its files live there.
//!
//! Cross-shard steps are ordered so that a crash between them leaves at worst an
//! unreachable inode, never an entry pointing at nothing: inodes are created
//! before the entry that names them and dropped after it is removed. Each step is
//! exactly-once on its own shard (request key with a step number), so a client
//! that retries the whole operation replays it to the same result.

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
use tokio_util::sync::CancellationToken;

use cairn_proto::ids::ino_shard;
use cairn_proto::ids::ShardId;
use cairn_proto::ids::MAP_SHARD;
use cairn_proto::ids::ROOT_INO;
use cairn_proto::pb;
use cairn_proto::retry::retry;
use cairn_proto::retry::Backoff;
use cairn_proto::status::decode;
use cairn_proto::status::WireError;
use cairn_proto::status::*;

use crate::cluster;
use crate::cluster::MapCommand;
use crate::config::Config;
use crate::config::Peer;
use crate::error::MetaError;
use crate::fs;
use crate::fs::Entry;
use crate::fs::FsCommand;
use crate::fs::Inode;
use crate::fs::Kind;
use crate::fs::PutMode;
use crate::fs::RenameMode;
use crate::fs::Reply;
use crate::fs::SetAttrs;
use crate::fs::SliceRec;
use crate::kv::Txn;
use crate::network::NetworkFactory;
use crate::store::LogStore;
use crate::store::StateMachine;
use crate::txn;
use crate::txn::TxnCommand;
use crate::types::Command;
use crate::types::Raft;
use crate::types::Request;
use crate::types::RequestKey;
use crate::types::Response;
use cairn_proto::channel::Channels;

/// The caller's identity for new inodes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// A namespace mutation, validated.
#[derive(Debug, Clone)]
pub enum Op {
    Create {
        parent: u64,
        name: Vec<u8>,
        kind: Kind,
        perm: u32,
        rdev: u32,
        exclusive: bool,
    },
    Mkdir {
        parent: u64,
        name: Vec<u8>,
        perm: u32,
    },
    Symlink {
        parent: u64,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    Unlink {
        parent: u64,
        name: Vec<u8>,
    },
    Rmdir {
        parent: u64,
        name: Vec<u8>,
    },
    Rename {
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        mode: RenameMode,
    },
    Link {
        ino: u64,
        new_parent: u64,
        new_name: Vec<u8>,
    },
    SetAttr {
        ino: u64,
        set: SetAttrs,
    },
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    },
    RemoveXattr {
        ino: u64,
        name: Vec<u8>,
    },
    Commit {
        ino: u64,
        chunks: Vec<(u32, Vec<SliceRec>)>,
        length: u64,
        mtime: i64,
    },
    Open {
        ino: u64,
    },
    Close {
        ino: u64,
    },
}

impl Op {
    /// The shard whose leader coordinates this operation.
    pub fn home_shard(&self) -> ShardId {
        match self {
            Op::Create { parent, .. }
            | Op::Mkdir { parent, .. }
            | Op::Symlink { parent, .. }
            | Op::Unlink { parent, .. }
            | Op::Rmdir { parent, .. }
            | Op::Rename { parent, .. } => ino_shard(*parent),
            Op::Link { new_parent, .. } => ino_shard(*new_parent),
            Op::SetAttr { ino, .. }
            | Op::SetXattr { ino, .. }
            | Op::RemoveXattr { ino, .. }
            | Op::Commit { ino, .. }
            | Op::Open { ino }
            | Op::Close { ino } => ino_shard(*ino),
        }
    }
}

/// Builds the requests of one client operation's steps: each step is
/// exactly-once on its shard under (client, seq, step).
pub struct Steps(pub Option<(u64, u64)>);

impl Steps {
    pub fn key(&self, step: u8) -> Option<RequestKey> {
        self.0.map(|(client, seq)| RequestKey { client, seq, step })
    }

    pub fn req(&self, step: u8, cmd: Command) -> Request {
        Request {
            key: self.key(step),
            cmd,
        }
    }
}

/// Step number under which a transaction's commit decision is remembered.
const DECIDE_STEP: u8 = 40;

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
                snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
                max_in_snapshot_log_to_keep: 1000,
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
                StateMachine::new(node.db.clone(), shard),
            )
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
            node.rafts.insert(shard, raft);
        }
        for (&shard, raft) in &node.rafts {
            let replicas = node.replicas(shard);
            let initialized = raft
                .is_initialized()
                .await
                .map_err(|e| MetaError::Raft(e.to_string()))?;
            if !initialized && replicas.first() == Some(&node.id) {
                let members: BTreeMap<u64, BasicNode> = replicas
                    .iter()
                    .filter_map(|id| node.addr_of(*id).map(|a| (*id, BasicNode::new(a))))
                    .collect();
                raft.initialize(members)
                    .await
                    .map_err(|e| MetaError::Raft(e.to_string()))?;
            }
        }
        Ok(Arc::new(node))
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

    fn addr_of(&self, id: u64) -> Option<String> {
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

    fn not_leader(&self, shard: ShardId) -> MetaError {
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
    fn leader_raft(&self, shard: ShardId) -> Result<&Raft, MetaError> {
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
        match raft.client_write(req).await {
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

    async fn propose_remote(
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
    fn wire_error(&self, shard: ShardId, status: &tonic::Status) -> MetaError {
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
    async fn with_leader<T, F, Fut>(&self, shard: ShardId, f: F) -> Result<T, MetaError>
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
        f: impl FnOnce(&Txn) -> Result<T, MetaError>,
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
            raft.ensure_linearizable().await.map_err(|e| match e {
                RaftError::APIError(_) => self.not_leader(shard),
                e => MetaError::Raft(e.to_string()),
            })?;
            let lease = Duration::from_millis(self.config.election_timeout_ms / 2);
            self.leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(shard, (term, now + lease));
        }
        let txn = Txn::new(&self.db, shard);
        f(&txn)
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

    /// The cluster map, read at shard 0 on this node (which must lead it).
    pub async fn cluster_map_local(&self) -> Result<pb::ClusterMap, MetaError> {
        let (layout, nodes, groups) = self
            .read(MAP_SHARD, |txn| {
                Ok((
                    cluster::layout(txn)?,
                    cluster::data_nodes(txn)?,
                    cluster::groups(txn)?,
                ))
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
                .map(|n| pb::DataNodeInfo {
                    id: n.id,
                    addr: n.addr.clone(),
                    capacity_bytes: n.capacity,
                    used_bytes: n.used,
                    blocks: n.blocks,
                    alive: cluster::is_alive(n, now_ms, dead_after),
                    last_heartbeat_ms: n.last_heartbeat_ms,
                })
                .collect(),
            groups: groups
                .into_iter()
                .map(|(id, g)| pb::PlacementGroup {
                    id,
                    chain: g.chain,
                    version: g.version,
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

    /// Executes a namespace mutation. Must run on the leader of
    /// `op.home_shard()`. An operation confined to the home shard is one Raft
    /// command; one that touches other shards runs as a two-phase transaction.
    pub async fn mutate(
        &self,
        key: Option<(u64, u64)>,
        caller: Caller,
        op: Op,
    ) -> Result<Reply, MetaError> {
        let home = op.home_shard();
        self.leader_raft(home)?;
        let now = now_ns();
        let step = Steps(key);
        let local = |cmd: FsCommand| self.propose_local(home, step.req(0, Command::Fs(cmd)));
        match op {
            Op::Create {
                parent,
                name,
                kind,
                perm,
                rdev,
                exclusive,
            } => {
                local(FsCommand::Create {
                    parent,
                    name,
                    kind,
                    perm,
                    rdev,
                    uid: caller.uid,
                    gid: caller.gid,
                    exclusive,
                    target: None,
                    now,
                })
                .await
            }
            Op::Symlink {
                parent,
                name,
                target,
            } => {
                local(FsCommand::Create {
                    parent,
                    name,
                    kind: Kind::Symlink,
                    perm: 0o777,
                    rdev: 0,
                    uid: caller.uid,
                    gid: caller.gid,
                    exclusive: true,
                    target: Some(target),
                    now,
                })
                .await
            }
            Op::Mkdir { parent, name, perm } => {
                let target = self.dir_shard(parent, &name);
                if target == home {
                    return local(FsCommand::Create {
                        parent,
                        name,
                        kind: Kind::Dir,
                        perm,
                        rdev: 0,
                        uid: caller.uid,
                        gid: caller.gid,
                        exclusive: true,
                        target: None,
                        now,
                    })
                    .await;
                }
                let alloc = step.req(1, Command::Fs(FsCommand::AllocIno));
                let Reply::Ino(ino) = self.propose(target, alloc).await? else {
                    return Err(MetaError::Storage("AllocIno answered no inode".into()));
                };
                let make = FsCommand::MakeDir {
                    ino,
                    parent,
                    perm,
                    uid: caller.uid,
                    gid: caller.gid,
                    now,
                };
                let put = FsCommand::PutEntry {
                    parent,
                    name,
                    entry: Entry {
                        ino,
                        kind: Kind::Dir,
                    },
                    mode: PutMode::MustNotExist,
                    now,
                };
                self.run_txn(home, &step, vec![(target, make), (home, put)])
                    .await?;
                let inode = fs::new_inode(Kind::Dir, perm, caller.uid, caller.gid, parent, now);
                Ok(Reply::Attr { ino, inode })
            }
            Op::Unlink { parent, name } => {
                let entry = self.read_entry(parent, &name).await?;
                let entry = entry.ok_or_else(|| MetaError::fs(ENOENT, "no such file"))?;
                if entry.kind == Kind::Dir {
                    return Err(MetaError::fs(EISDIR, "is a directory"));
                }
                let shard = ino_shard(entry.ino);
                if shard == home {
                    return local(FsCommand::Unlink { parent, name, now }).await;
                }
                let del = FsCommand::DelEntry {
                    parent,
                    name,
                    expect: entry.ino,
                    now,
                };
                let drop = FsCommand::AdjustNlink {
                    ino: entry.ino,
                    delta: -1,
                    now,
                };
                self.run_txn(home, &step, vec![(home, del), (shard, drop)])
                    .await?;
                Ok(Reply::None)
            }
            Op::Rmdir { parent, name } => {
                let entry = self.read_entry(parent, &name).await?;
                let entry = entry.ok_or_else(|| MetaError::fs(ENOENT, "no such directory"))?;
                if entry.kind != Kind::Dir {
                    return Err(MetaError::fs(ENOTDIR, "not a directory"));
                }
                let shard = ino_shard(entry.ino);
                if shard == home {
                    return local(FsCommand::Rmdir { parent, name, now }).await;
                }
                let del = FsCommand::DelEntry {
                    parent,
                    name,
                    expect: entry.ino,
                    now,
                };
                let drop = FsCommand::DropDir { ino: entry.ino };
                self.run_txn(home, &step, vec![(shard, drop), (home, del)])
                    .await?;
                Ok(Reply::None)
            }
            Op::Link {
                ino,
                new_parent,
                new_name,
            } => {
                let inode = self.getattr_anywhere(ino).await?;
                if inode.kind == Kind::Dir {
                    return Err(MetaError::fs(EPERM, "cannot link a directory"));
                }
                let adjust = FsCommand::AdjustNlink { ino, delta: 1, now };
                let put = FsCommand::PutEntry {
                    parent: new_parent,
                    name: new_name,
                    entry: Entry {
                        ino,
                        kind: inode.kind,
                    },
                    mode: PutMode::MustNotExist,
                    now,
                };
                self.run_txn(home, &step, vec![(ino_shard(ino), adjust), (home, put)])
                    .await?;
                let inode = self.getattr_anywhere(ino).await?;
                Ok(Reply::Attr { ino, inode })
            }
            Op::Rename {
                parent,
                name,
                new_parent,
                new_name,
                mode,
            } => {
                self.rename(home, &step, now, parent, name, new_parent, new_name, mode)
                    .await
            }
            Op::SetAttr { ino, set } => local(FsCommand::SetAttr { ino, set, now }).await,
            Op::SetXattr {
                ino,
                name,
                value,
                flags,
            } => {
                local(FsCommand::SetXattr {
                    ino,
                    name,
                    value,
                    flags,
                    now,
                })
                .await
            }
            Op::RemoveXattr { ino, name } => local(FsCommand::RemoveXattr { ino, name, now }).await,
            Op::Open { ino } => {
                let client = key
                    .map(|(client, _)| client)
                    .ok_or_else(|| MetaError::Invalid("open needs a request id".into()))?;
                local(FsCommand::Open {
                    ino,
                    client,
                    now_ms: now / 1_000_000,
                    lease_ms: self.config.session_lease_ms as i64,
                })
                .await
            }
            Op::Close { ino } => {
                let client = key
                    .map(|(client, _)| client)
                    .ok_or_else(|| MetaError::Invalid("close needs a request id".into()))?;
                local(FsCommand::Close { ino, client }).await
            }
            Op::Commit {
                ino,
                chunks,
                length,
                mtime,
            } => {
                local(FsCommand::Commit {
                    ino,
                    chunks,
                    length,
                    mtime,
                })
                .await
            }
        }
    }

    /// Runs `actions` (commands per shard) atomically: all apply or none do.
    /// Actions of one shard are prepared and applied together, in order.
    ///
    /// Each attempt is a fresh transaction; only a commit decision is recorded
    /// under the client's request key. A client retrying after a lost answer
    /// therefore finds the earlier commit (its new attempt is aborted and it
    /// answers success), while a retry after an abort simply tries again.
    pub async fn run_txn(
        &self,
        home: ShardId,
        step: &Steps,
        actions: Vec<(ShardId, FsCommand)>,
    ) -> Result<(), MetaError> {
        let mut by_shard: BTreeMap<ShardId, Vec<FsCommand>> = BTreeMap::new();
        for (shard, cmd) in actions {
            by_shard.entry(shard).or_default().push(cmd);
        }
        if by_shard.len() == 1 {
            // Everything on one shard: one Raft command is atomic already.
            if let Some((shard, cmds)) = by_shard.pop_first() {
                let batch = step.req(11, Command::Fs(FsCommand::Batch(cmds)));
                return self.propose(shard, batch).await.map(|_| ());
            }
        }
        if let Some(earlier) = self.earlier_commit(home, step).await? {
            return self.complete(home, earlier).await;
        }
        let unkeyed = |cmd: TxnCommand| Request {
            key: None,
            cmd: Command::Txn(cmd),
        };
        let participants: Vec<ShardId> = by_shard.keys().copied().collect();
        let begin = TxnCommand::Begin {
            id: rand::random::<u64>() | 1,
            participants: participants.clone(),
            now_ms: now_ns() / 1_000_000,
        };
        let Reply::Txn { id, .. } = self.propose_local(home, unkeyed(begin)).await? else {
            return Err(MetaError::Storage("Begin answered no transaction".into()));
        };
        fail::fail_point!("txn::after_begin", |_| Err(MetaError::Raft(
            "failpoint txn::after_begin".into()
        )));
        let mut failure = None;
        for (shard, cmds) in by_shard {
            let prepare = TxnCommand::Prepare {
                id,
                coordinator: home,
                cmds,
            };
            if let Err(e) = self.propose(shard, unkeyed(prepare)).await {
                failure = Some(e);
                break;
            }
            fail::fail_point!("txn::after_prepare", |_| Err(MetaError::Raft(
                "failpoint txn::after_prepare".into()
            )));
        }
        let commit = failure.is_none();
        if !commit {
            if let Some(earlier) = self.earlier_commit(home, step).await? {
                self.finish_txn(home, id, &participants, false).await?;
                return self.complete(home, earlier).await;
            }
        }
        let decide = TxnCommand::Decide { id, commit };
        let decide = if commit {
            step.req(DECIDE_STEP, Command::Txn(decide))
        } else {
            unkeyed(decide)
        };
        let (decided_id, committed) = match self.propose_local(home, decide).await? {
            Reply::Txn {
                id,
                committed: Some(c),
            } => (id, c),
            _ => return Err(MetaError::Storage("Decide answered no decision".into())),
        };
        fail::fail_point!("txn::after_decide", |_| Err(MetaError::Raft(
            "failpoint txn::after_decide".into()
        )));
        if decided_id != id {
            // An earlier attempt of this request committed: drop this one.
            self.finish_txn(home, id, &participants, false).await?;
            return self.complete(home, decided_id).await;
        }
        self.finish_txn(home, id, &participants, committed).await?;
        match (committed, failure) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(e),
            (false, None) => Err(MetaError::fs(
                EIO,
                "transaction was rolled back by recovery",
            )),
        }
    }

    /// The id of an earlier attempt of this request that committed, if any.
    async fn earlier_commit(&self, home: ShardId, step: &Steps) -> Result<Option<u64>, MetaError> {
        let Some(key) = step.key(DECIDE_STEP) else {
            return Ok(None);
        };
        let remembered = self
            .read(home, |txn| crate::store::remembered(txn, &key))
            .await?;
        Ok(match remembered {
            Some(Response(Ok(Reply::Txn {
                id,
                committed: Some(true),
            }))) => Some(id),
            _ => None,
        })
    }

    /// Finishes a decided transaction if its record is still there, so its
    /// effects are visible before the caller answers.
    async fn complete(&self, home: ShardId, id: u64) -> Result<(), MetaError> {
        let record: Option<txn::TxnRecord> =
            self.read(home, |t| t.get_as(&txn::record_key(id))).await?;
        if let Some(record) = record {
            let committed = record.state == txn::TxnState::Committed;
            self.finish_txn(home, id, &record.participants, committed)
                .await?;
        }
        Ok(())
    }

    /// Sends the decision to every participant, then forgets the record.
    async fn finish_txn(
        &self,
        home: ShardId,
        id: u64,
        participants: &[ShardId],
        commit: bool,
    ) -> Result<(), MetaError> {
        for shard in participants {
            let finish = Request {
                key: None,
                cmd: Command::Txn(TxnCommand::Finish { id, commit }),
            };
            self.propose(*shard, finish).await?;
            fail::fail_point!("txn::after_finish", |_| Err(MetaError::Raft(
                "failpoint txn::after_finish".into()
            )));
        }
        let forget = Request {
            key: None,
            cmd: Command::Txn(TxnCommand::Forget { id }),
        };
        self.propose(home, forget).await?;
        Ok(())
    }

    /// Drops the open files of clients whose session lease ran out on `shard`.
    async fn expire_sessions(&self, shard: ShardId) -> Result<(), MetaError> {
        let now_ms = now_ns() / 1_000_000;
        if self
            .read(shard, |txn| fs::has_expired_sessions(txn, now_ms))
            .await?
        {
            let expire = Request {
                key: None,
                cmd: Command::Fs(FsCommand::ExpireSessions { now_ms }),
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

    /// Finishes or rolls back transactions of the shards led here that have been
    /// in flight longer than `txn-recover-after-ms` (their coordinator died or
    /// gave up).
    async fn recover_txns(&self) {
        let now_ms = now_ns() / 1_000_000;
        for shard in self.rafts.keys().copied() {
            if self.leader_of(shard) != Some(self.id) {
                continue;
            }
            let Ok(records) = self.read(shard, txn::records).await else {
                continue;
            };
            for (id, record) in records {
                if now_ms - record.started_ms < self.config.txn_recover_after_ms as i64 {
                    continue;
                }
                let result = async {
                    let decide = TxnCommand::Decide { id, commit: false };
                    let committed = match self
                        .propose_local(
                            shard,
                            Request {
                                key: None,
                                cmd: Command::Txn(decide),
                            },
                        )
                        .await?
                    {
                        Reply::Txn {
                            committed: Some(c), ..
                        } => c,
                        _ => false,
                    };
                    tracing::info!(shard, id, committed, "recovering transaction");
                    self.finish_txn(shard, id, &record.participants, committed)
                        .await
                }
                .await;
                if let Err(e) = result {
                    tracing::warn!(shard, id, "recovering transaction: {e}");
                }
            }
        }
    }

    /// Whether `dir` is `ancestor` or lies below it.
    async fn is_below(&self, dir: u64, ancestor: u64) -> Result<bool, MetaError> {
        let mut cur = dir;
        for _ in 0..4096 {
            if cur == ancestor {
                return Ok(true);
            }
            if cur == ROOT_INO {
                return Ok(false);
            }
            cur = self.getattr_anywhere(cur).await?.parent;
        }
        Err(MetaError::fs(ELOOP, "directory tree too deep"))
    }

    /// rename(2). Both entries on the home shard: one Rename command, plus
    /// transactional fix-ups of inodes on other shards. Otherwise: a transaction
    /// that puts the new entry, removes (or swaps) the old one and fixes inodes.
    #[allow(clippy::too_many_arguments)]
    async fn rename(
        &self,
        home: ShardId,
        step: &Steps,
        now: i64,
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        mode: RenameMode,
    ) -> Result<Reply, MetaError> {
        let dst_home = ino_shard(new_parent);
        let src = self
            .read_entry(parent, &name)
            .await?
            .ok_or_else(|| MetaError::fs(ENOENT, "no such file"))?;
        if src.kind == Kind::Dir
            && parent != new_parent
            && self.is_below(new_parent, src.ino).await?
        {
            return Err(MetaError::fs(
                EINVAL,
                "cannot move a directory below itself",
            ));
        }
        let dst = self.read_entry(new_parent, &new_name).await?;
        match (mode, dst) {
            (RenameMode::NoReplace, Some(_)) => return Err(MetaError::fs(EEXIST, "file exists")),
            (RenameMode::Exchange, None) => return Err(MetaError::fs(ENOENT, "no such file")),
            (_, Some(d)) if d.ino == src.ino => {
                return Ok(Reply::Renamed {
                    moved: src,
                    replaced: None,
                })
            }
            (RenameMode::Replace, Some(d)) => match (src.kind == Kind::Dir, d.kind == Kind::Dir) {
                (true, false) => return Err(MetaError::fs(ENOTDIR, "not a directory")),
                (false, true) => return Err(MetaError::fs(EISDIR, "is a directory")),
                _ => {}
            },
            _ => {}
        }
        let mut actions: Vec<(ShardId, FsCommand)> = Vec::new();
        if home == dst_home {
            actions.push((
                home,
                FsCommand::Rename {
                    parent,
                    name,
                    new_parent,
                    new_name,
                    mode,
                    now,
                },
            ));
        } else {
            let put_mode = match dst {
                Some(d) => PutMode::Replace { expect: d.ino },
                None => PutMode::MustNotExist,
            };
            actions.push((
                dst_home,
                FsCommand::PutEntry {
                    parent: new_parent,
                    name: new_name,
                    entry: src,
                    mode: put_mode,
                    now,
                },
            ));
            let second = match (mode, dst) {
                (RenameMode::Exchange, Some(d)) => FsCommand::PutEntry {
                    parent,
                    name,
                    entry: d,
                    mode: PutMode::Replace { expect: src.ino },
                    now,
                },
                _ => FsCommand::DelEntry {
                    parent,
                    name,
                    expect: src.ino,
                    now,
                },
            };
            actions.push((home, second));
        }
        // Inodes the entry commands above do not reach: those on other shards
        // (a same-shard Rename fixes its own shard's inodes itself).
        let fixed_by_rename = |ino: u64| home == dst_home && ino_shard(ino) == home;
        if src.kind == Kind::Dir && parent != new_parent && !fixed_by_rename(src.ino) {
            let cmd = FsCommand::SetParent {
                ino: src.ino,
                parent: new_parent,
                now,
            };
            actions.push((ino_shard(src.ino), cmd));
        }
        if let Some(d) = dst.filter(|d| !fixed_by_rename(d.ino)) {
            let fix = match (mode, d.kind) {
                (RenameMode::Exchange, Kind::Dir) if parent != new_parent => {
                    Some(FsCommand::SetParent {
                        ino: d.ino,
                        parent,
                        now,
                    })
                }
                (RenameMode::Exchange, _) => None,
                (_, Kind::Dir) => Some(FsCommand::DropDir { ino: d.ino }),
                _ => Some(FsCommand::AdjustNlink {
                    ino: d.ino,
                    delta: -1,
                    now,
                }),
            };
            if let Some(fix) = fix {
                actions.push((ino_shard(d.ino), fix));
            }
        }
        self.run_txn(home, step, actions).await?;
        Ok(Reply::Renamed {
            moved: src,
            replaced: dst,
        })
    }

    /// A directory entry, read at its shard's leader wherever that is.
    async fn read_entry(&self, parent: u64, name: &[u8]) -> Result<Option<Entry>, MetaError> {
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

    /// Background duties of the leaders hosted here: create the root and the
    /// data layout once, and keep data-node liveness current. Runs until cancelled.
    pub async fn run_duties(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last_liveness = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.leader_of(MAP_SHARD) == Some(self.id) {
                let layout = cluster::Layout {
                    groups: self.config.placement_groups,
                    replication: self.config.data_replication,
                    block_size: self.config.block_size,
                    dead_after_ms: self.config.data_node_timeout_ms as i64,
                };
                let has_layout = self
                    .read(MAP_SHARD, cluster::layout)
                    .await
                    .ok()
                    .flatten()
                    .is_some();
                if !has_layout {
                    let req = Request {
                        key: None,
                        cmd: Command::Map(MapCommand::Init(layout)),
                    };
                    if let Err(e) = self.propose_local(MAP_SHARD, req).await {
                        tracing::warn!("initializing the data layout: {e}");
                    }
                }
                if last_liveness.elapsed() >= Duration::from_secs(1) {
                    last_liveness = Instant::now();
                    let req = Request {
                        key: None,
                        cmd: Command::Map(MapCommand::CheckLiveness {
                            now_ms: now_ns() / 1_000_000,
                        }),
                    };
                    if let Err(e) = self.propose_local(MAP_SHARD, req).await {
                        tracing::warn!("checking data-node liveness: {e}");
                    }
                }
            }
            self.recover_txns().await;
            for shard in self.shards() {
                if shard != MAP_SHARD && self.leader_of(shard) == Some(self.id) {
                    if let Err(e) = self.expire_sessions(shard).await {
                        tracing::warn!(shard, "expiring sessions: {e}");
                    }
                    if let Err(e) = crate::gc::collect(&self, shard).await {
                        tracing::warn!(shard, "block garbage collection: {e}");
                    }
                }
            }
            let root_shard = ino_shard(ROOT_INO);
            if self.leader_of(root_shard) == Some(self.id) {
                let has_root = self
                    .read(root_shard, |txn| {
                        Ok(txn.get(&fs::inode_key(ROOT_INO))?.is_some())
                    })
                    .await
                    .unwrap_or(true);
                if !has_root {
                    let req = Request {
                        key: None,
                        cmd: Command::Fs(FsCommand::InitRoot { now: now_ns() }),
                    };
                    if let Err(e) = self.propose_local(root_shard, req).await {
                        tracing::warn!("creating the root directory: {e}");
                    }
                }
            }
        }
    }

    /// This node's Raft replica of `shard`, for the Raft service.
    pub fn raft(&self, shard: ShardId) -> Option<&Raft> {
        self.rafts.get(&shard)
    }
}
