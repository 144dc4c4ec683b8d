//! Metadata RPCs with routing and retries.
//!
//! The client caches the cluster map and the leader of every shard; a request
//! goes to the leader of the shard that owns its inode (read from the inode id),
//! and a `NotLeader` answer updates the cache and retries through the one retry
//! helper. Every mutation carries (client id, sequence) once, and retries reuse
//! it, so a retried mutation is applied exactly once.

use std::collections::HashMap;
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::time::Duration;

use tonic::transport::Channel;

use cairn_proto::channel::Channels;
use cairn_proto::ids::ino_shard;
use cairn_proto::ids::ShardId;
use cairn_proto::ids::MAP_SHARD;
use cairn_proto::ids::ROOT_INO;
use cairn_proto::name::split_path;
use cairn_proto::name::validate_name;
use cairn_proto::pb;
use cairn_proto::pb::meta_client::MetaClient as Grpc;
use cairn_proto::pb::mutate_request::Op;
use cairn_proto::retry::retry;
use cairn_proto::retry::Backoff;
use cairn_proto::status::decode;
use cairn_proto::status::WireError;
use cairn_proto::status::EAGAIN;
use cairn_proto::status::ENOTDIR;

use crate::entries::EntryCache;
use crate::entries::LISTING_PAGE;
use crate::error::from_status;
use crate::error::ClientError;

pub type Result<T> = std::result::Result<T, ClientError>;

/// Who creates an inode (its owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };
}

/// Slice ids fetched from shard 0 at a time.
const SLICE_ID_BATCH: u32 = 256;

pub struct MetaClient {
    channels: Channels,
    seeds: Vec<String>,
    map: RwLock<Option<Arc<pb::ClusterMap>>>,
    leaders: Mutex<HashMap<ShardId, String>>,
    client_id: u64,
    seq: AtomicU64,
    slice_ids: tokio::sync::Mutex<(u64, u64)>,
    backoff: Backoff,
    /// Open files per shard; the session is renewed on these shards.
    open_shards: Mutex<HashMap<ShardId, usize>>,
    /// Shards where this client took file locks; the session is renewed there too.
    lock_shards: Mutex<HashSet<ShardId>>,
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Metadata requests sent (every attempt counts).
    requests: AtomicU64,
    /// Opens tracked lazily, by token (see [`MetaClient::track_open`]).
    lazy_opens: Mutex<HashMap<u64, LazyOpen>>,
    next_token: AtomicU64,
    /// Recently listed entries, for lookups (mounts only; see `entries.rs`).
    entries: Option<EntryCache>,
    /// Access-time updates not landed yet (see [`MetaClient::access_later`]).
    atimes: Mutex<Atimes>,
}

/// Reads' access-time updates waiting to land, and whether a task sends them.
#[derive(Default)]
struct Atimes {
    pending: HashMap<u64, PendingAtime>,
    sending: bool,
}

/// A read's access-time update: the read's time (this client's clock) and
/// the atime the reader saw; `sent` once in a batch on its way.
#[derive(Clone, Copy, PartialEq)]
struct PendingAtime {
    atime: i64,
    seen: i64,
    sent: bool,
}

/// How long reads' access-time updates gather before one command per shard
/// sends them: relatime's updates are lazy, and one consensus round per read
/// cost small-file reads three quarters of their speed.
const ATIME_GATHER: Duration = Duration::from_millis(50);
/// Most access-time updates in one command (metad takes up to 4096).
const ACCESS_TIMES_MAX: usize = 1024;

struct LazyOpen {
    ino: u64,
    since: std::time::Instant,
    registered: bool,
}

impl Drop for MetaClient {
    fn drop(&mut self) {
        if let Some(task) = self
            .renewer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// The longest one metadata request attempt waits for its answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

impl MetaClient {
    /// A client of the cluster reachable through any of `seeds` (metad addresses).
    pub fn new(seeds: Vec<String>, channels: Channels) -> Self {
        MetaClient {
            channels,
            seeds,
            map: RwLock::new(None),
            leaders: Mutex::new(HashMap::new()),
            client_id: rand::random(),
            seq: AtomicU64::new(1),
            slice_ids: tokio::sync::Mutex::new((0, 0)),
            backoff: Backoff {
                deadline: Duration::from_secs(30),
                ..Backoff::default()
            },
            open_shards: Mutex::new(HashMap::new()),
            lock_shards: Mutex::new(HashSet::new()),
            renewer: Mutex::new(None),
            requests: AtomicU64::new(0),
            lazy_opens: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            entries: None,
            atimes: Mutex::new(Atimes::default()),
        }
    }

    /// Answers lookups from recent directory listings up to `ttl` old (the
    /// staleness a kernel's entry cache has anyway; see `entries.rs`).
    pub fn with_entry_cache(mut self, ttl: Duration) -> Self {
        self.entries = Some(EntryCache::new(ttl));
        self
    }

    /// Gives up on unavailable shards after `deadline` instead of the default 30 s.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.backoff.deadline = deadline;
        self
    }

    fn grpc(&self, addr: &str) -> Result<Grpc<Channel>> {
        self.channels
            .meta(addr)
            .map_err(|e| ClientError::Invalid(format!("address {addr}: {e}")))
    }

    /// Where to send a request for `shard` on the given attempt.
    fn target(&self, shard: ShardId, attempt: u32) -> String {
        if let Some(addr) = self
            .leaders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard)
        {
            return addr.clone();
        }
        let map = self.cached_map();
        let mut candidates: Vec<String> = Vec::new();
        if let Some(map) = map {
            if let Some(info) = map.shards.iter().find(|s| s.id == shard) {
                let addr_of = |id: u64| {
                    map.meta_nodes
                        .iter()
                        .find(|n| n.id == id)
                        .map(|n| n.addr.clone())
                };
                if let Some(leader) = addr_of(info.leader) {
                    candidates.push(leader);
                }
                candidates.extend(info.replicas.iter().filter_map(|id| addr_of(*id)));
            }
        }
        candidates.extend(self.seeds.iter().cloned());
        candidates[attempt as usize % candidates.len()].clone()
    }

    fn forget_leader(&self, shard: ShardId) {
        self.leaders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&shard);
    }

    /// Remembers where `shard`'s leader is after an answer from `addr`: a
    /// file-system answer (ENOENT included) comes from the leader, a redirect
    /// names the leader, anything else leaves the leader unknown.
    fn note_answer(&self, shard: ShardId, addr: &str, answer: Option<&tonic::Status>) {
        let mut leaders = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        match answer.map(decode) {
            None | Some(WireError::Errno { .. }) => {
                if leaders.get(&shard).map(String::as_str) != Some(addr) {
                    leaders.insert(shard, addr.to_string());
                }
            }
            Some(WireError::NotLeader {
                leader: Some((_, leader)),
            }) => {
                leaders.insert(shard, leader);
            }
            Some(_) => {
                leaders.remove(&shard);
            }
        }
    }

    /// Calls `f` on the leader of `shard`, retrying while leaders move.
    async fn call<T, F, Fut>(&self, shard: ShardId, f: F) -> Result<T>
    where
        F: Fn(Grpc<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_as(shard, false, f).await
    }

    /// [`call`](Self::call); with `lock`, EAGAIN means a file lock held by
    /// another owner and is answered, not retried.
    async fn call_as<T, F, Fut>(&self, shard: ShardId, lock: bool, f: F) -> Result<T>
    where
        F: Fn(Grpc<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        retry(self.backoff, ClientError::is_transient, |attempt| {
            let f = &f;
            async move {
                let mut addr = self.target(shard, attempt);
                let mut redirected = false;
                loop {
                    self.requests.fetch_add(1, Ordering::Relaxed);
                    // A leader that hangs without closing its socket must not
                    // hold the call: the attempt gives up and the next one asks
                    // another node (mutations are exactly-once, so a retry is
                    // safe).
                    let answered = tokio::time::timeout(ATTEMPT_TIMEOUT, f(self.grpc(&addr)?))
                        .await
                        .map_err(|_| {
                            self.forget_leader(shard);
                            ClientError::Unavailable(format!(
                                "{addr}: no answer within {ATTEMPT_TIMEOUT:?}"
                            ))
                        })?;
                    let s = match answered {
                        Ok(r) => {
                            self.note_answer(shard, &addr, None);
                            return Ok(r.into_inner());
                        }
                        Err(s) => s,
                    };
                    self.note_answer(shard, &addr, Some(&s));
                    // A redirect to a named leader is followed at once, not
                    // after the back-off: the leader moved, nothing is wrong.
                    match decode(&s) {
                        WireError::NotLeader {
                            leader: Some((_, leader)),
                        } if !redirected && leader != addr => {
                            addr = leader;
                            redirected = true;
                        }
                        WireError::Errno { errno, message } if lock && errno == EAGAIN => {
                            return Err(ClientError::Fs { errno, message });
                        }
                        _ => return Err(from_status(&s)),
                    }
                }
            }
        })
        .await
    }

    /// Metadata requests sent so far (each retry counts).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn cached_map(&self) -> Option<Arc<pb::ClusterMap>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The cluster map, fetched on first use.
    pub async fn map(&self) -> Result<Arc<pb::ClusterMap>> {
        match self.cached_map() {
            Some(m) => Ok(m),
            None => self.refresh_map().await,
        }
    }

    /// Fetches the cluster map from shard 0's leader.
    pub async fn refresh_map(&self) -> Result<Arc<pb::ClusterMap>> {
        let map = self
            .call(MAP_SHARD, |mut c| async move {
                c.get_cluster_map(pb::ClusterMapRequest {}).await
            })
            .await?;
        let map = Arc::new(map);
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = Some(map.clone());
        Ok(map)
    }

    /// The cluster's tiering state: cold backend, policies, latest runs.
    pub async fn get_tier(&self) -> Result<pb::TierConfig> {
        self.call(MAP_SHARD, |mut c| async move {
            c.get_tier(pb::GetTierRequest {}).await
        })
        .await
    }

    /// Sets what the operator wants of a data node (drain, remove, activate).
    pub async fn set_data_node_state(&self, id: u64, state: pb::DataNodeState) -> Result<()> {
        self.call(MAP_SHARD, |mut c| async move {
            c.set_data_node_state(pb::SetDataNodeStateRequest {
                id,
                state: state as i32,
            })
            .await
        })
        .await?;
        Ok(())
    }

    /// Changes the tiering state (checked by metad).
    pub async fn update_tier(&self, update: pb::update_tier_request::Update) -> Result<()> {
        self.call(MAP_SHARD, |mut c| {
            let update = update.clone();
            async move {
                c.update_tier(pb::UpdateTierRequest {
                    update: Some(update),
                })
                .await
            }
        })
        .await?;
        Ok(())
    }

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<pb::Attr> {
        validate_name(name).map_err(|e| ClientError::fs(e.errno(), e.to_string()))?;
        let attr = match &self.entries {
            None => self.lookup_uncached(parent, name).await?,
            Some(cache) => match cache.get(parent, name) {
                Some(attr) => attr,
                None => {
                    let attr = self.lookup_uncached(parent, name).await?;
                    if let Some(generation) = cache.found(parent) {
                        // The second name found here: list the names after it.
                        let page = self.readdir_page(parent, name, LISTING_PAGE, true);
                        if let Ok((page, _)) = page.await {
                            cache.fill(parent, generation, page);
                        }
                    }
                    attr
                }
            },
        };
        Ok(self.with_pending_atime(attr))
    }

    async fn lookup_uncached(&self, parent: u64, name: &[u8]) -> Result<pb::Attr> {
        let reply = self
            .call(ino_shard(parent), |mut c| async move {
                c.lookup(pb::LookupRequest {
                    parent,
                    name: name.to_vec().into(),
                })
                .await
            })
            .await?;
        reply
            .attr
            .ok_or_else(|| ClientError::Data("lookup answered no attributes".into()))
    }

    pub async fn getattr(&self, ino: u64) -> Result<pb::Attr> {
        // Read before asking: an update that lands meanwhile leaves the map
        // and is in the answer.
        let pending = self.pending_atime(ino);
        let reply = self
            .call(ino_shard(ino), |mut c| async move {
                c.get_attr(pb::GetAttrRequest { ino }).await
            })
            .await?;
        let attr = reply
            .attr
            .ok_or_else(|| ClientError::Data("getattr answered no attributes".into()))?;
        Ok(Self::with_pending(attr, pending))
    }

    /// One page of a directory: entries after `after`, and whether more follow.
    /// With `plus`, entries whose inodes live on the directory's shard come
    /// with their attributes.
    pub async fn readdir_page(
        &self,
        ino: u64,
        after: &[u8],
        limit: u32,
        plus: bool,
    ) -> Result<(Vec<pb::DirEntry>, bool)> {
        self.readdir_page_xattr(ino, after, limit, plus, b"").await
    }

    /// [`readdir_page`](Self::readdir_page) that also answers the xattr
    /// `xattr` of each entry that comes with attributes.
    pub async fn readdir_page_xattr(
        &self,
        ino: u64,
        after: &[u8],
        limit: u32,
        plus: bool,
        xattr: &[u8],
    ) -> Result<(Vec<pb::DirEntry>, bool)> {
        let reply = self
            .call(ino_shard(ino), |mut c| async move {
                c.read_dir(pb::ReadDirRequest {
                    ino,
                    after: after.to_vec().into(),
                    limit,
                    plus,
                    xattr: xattr.to_vec().into(),
                })
                .await
            })
            .await?;
        Ok((reply.entries, reply.more))
    }

    async fn readdir_all(&self, ino: u64, plus: bool) -> Result<Vec<pb::DirEntry>> {
        let mut all = Vec::new();
        let mut after = Vec::new();
        loop {
            let (page, more) = self.readdir_page(ino, &after, 1000, plus).await?;
            if let Some(last) = page.last() {
                after = last.name.to_vec();
            }
            all.extend(page);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Every entry of a directory, page by page.
    pub async fn readdir(&self, ino: u64) -> Result<Vec<pb::DirEntry>> {
        self.readdir_all(ino, false).await
    }

    /// Every entry of a directory; those whose inodes live on the
    /// directory's shard (its files) come with their attributes (readdirplus).
    pub async fn readdir_with_attrs(&self, ino: u64) -> Result<Vec<pb::DirEntry>> {
        self.readdir_all(ino, true).await
    }

    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let reply = self
            .call(ino_shard(ino), |mut c| async move {
                c.read_link(pb::ReadLinkRequest { ino }).await
            })
            .await?;
        Ok(reply.target.to_vec())
    }

    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let reply = self
            .call(ino_shard(ino), |mut c| async move {
                c.get_xattr(pb::GetXattrRequest {
                    ino,
                    name: name.to_vec().into(),
                })
                .await
            })
            .await?;
        Ok(reply.value.to_vec())
    }

    pub async fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let reply = self
            .call(ino_shard(ino), |mut c| async move {
                c.list_xattr(pb::ListXattrRequest { ino }).await
            })
            .await?;
        Ok(reply.names.into_iter().map(|n| n.to_vec()).collect())
    }

    /// The slices of chunks [first, first + count) and the file's attributes.
    pub async fn read_chunks(
        &self,
        ino: u64,
        first: u32,
        count: u32,
    ) -> Result<pb::ReadChunksReply> {
        self.call(ino_shard(ino), |mut c| async move {
            c.read_chunks(pb::ReadChunksRequest {
                ino,
                first_chunk: first,
                chunk_count: count,
            })
            .await
        })
        .await
    }

    pub async fn statfs(&self) -> Result<pb::StatFsReply> {
        self.call(MAP_SHARD, |mut c| async move {
            c.stat_fs(pb::StatFsRequest { shard: None }).await
        })
        .await
    }

    /// Applies a mutation exactly once at the leader of `shard`, as root.
    pub async fn mutate(&self, shard: ShardId, op: Op) -> Result<Option<pb::Attr>> {
        self.mutate_as(Caller::ROOT, shard, op).await
    }

    /// Applies a mutation exactly once at the leader of `shard`; new inodes
    /// belong to `caller`.
    pub async fn mutate_as(
        &self,
        caller: Caller,
        shard: ShardId,
        op: Op,
    ) -> Result<Option<pb::Attr>> {
        self.mutate_inner(caller, shard, op, false).await
    }

    async fn mutate_inner(
        &self,
        caller: Caller,
        shard: ShardId,
        op: Op,
        lock: bool,
    ) -> Result<Option<pb::Attr>> {
        let id = pb::RequestId {
            client_id: self.client_id,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        };
        // Cached entries may be changed by this: forget them before (a listing
        // in flight is not kept) and after (one that read the old state).
        let invalidate = || self.entries.as_ref().map(EntryCache::invalidate);
        invalidate();
        let reply = self
            .call_as(shard, lock, |mut c| {
                let req = pb::MutateRequest {
                    id: Some(id),
                    uid: caller.uid,
                    gid: caller.gid,
                    op: Some(op.clone()),
                };
                async move { c.mutate(req).await }
            })
            .await;
        invalidate();
        Ok(reply?.attr)
    }

    fn expect_attr(attr: Option<pb::Attr>) -> Result<pb::Attr> {
        attr.ok_or_else(|| ClientError::Data("mutation answered no attributes".into()))
    }

    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        perm: u32,
        exclusive: bool,
    ) -> Result<pb::Attr> {
        self.create_as(Caller::ROOT, parent, name, perm, exclusive)
            .await
    }

    pub async fn create_as(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        perm: u32,
        exclusive: bool,
    ) -> Result<pb::Attr> {
        let op = Op::Create(pb::CreateOp {
            parent,
            name: name.to_vec().into(),
            kind: pb::FileKind::Regular as i32,
            perm,
            rdev: 0,
            exclusive,
        });
        Self::expect_attr(self.mutate_as(caller, ino_shard(parent), op).await?)
    }

    pub async fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        kind: pb::FileKind,
        perm: u32,
        rdev: u32,
    ) -> Result<pb::Attr> {
        let op = Op::Create(pb::CreateOp {
            parent,
            name: name.to_vec().into(),
            kind: kind as i32,
            perm,
            rdev,
            exclusive: true,
        });
        Self::expect_attr(self.mutate_as(caller, ino_shard(parent), op).await?)
    }

    pub async fn mkdir(&self, parent: u64, name: &[u8], perm: u32) -> Result<pb::Attr> {
        self.mkdir_as(Caller::ROOT, parent, name, perm).await
    }

    pub async fn mkdir_as(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        perm: u32,
    ) -> Result<pb::Attr> {
        let op = Op::Mkdir(pb::MkdirOp {
            parent,
            name: name.to_vec().into(),
            perm,
        });
        Self::expect_attr(self.mutate_as(caller, ino_shard(parent), op).await?)
    }

    pub async fn symlink(&self, parent: u64, name: &[u8], target: &[u8]) -> Result<pb::Attr> {
        self.symlink_as(Caller::ROOT, parent, name, target).await
    }

    pub async fn symlink_as(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<pb::Attr> {
        let op = Op::Symlink(pb::SymlinkOp {
            parent,
            name: name.to_vec().into(),
            target: target.to_vec().into(),
        });
        Self::expect_attr(self.mutate_as(caller, ino_shard(parent), op).await?)
    }

    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<pb::Attr> {
        let op = Op::Link(pb::LinkOp {
            ino,
            new_parent,
            new_name: new_name.to_vec().into(),
        });
        Self::expect_attr(self.mutate(ino_shard(new_parent), op).await?)
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        let op = Op::Unlink(pb::UnlinkOp {
            parent,
            name: name.to_vec().into(),
        });
        self.mutate(ino_shard(parent), op).await.map(|_| ())
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        let op = Op::Rmdir(pb::RmdirOp {
            parent,
            name: name.to_vec().into(),
        });
        self.mutate(ino_shard(parent), op).await.map(|_| ())
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        mode: pb::RenameMode,
    ) -> Result<()> {
        let op = Op::Rename(pb::RenameOp {
            parent,
            name: name.to_vec().into(),
            new_parent,
            new_name: new_name.to_vec().into(),
            mode: mode as i32,
        });
        self.mutate(ino_shard(parent), op).await.map(|_| ())
    }

    pub async fn setattr(&self, ino: u64, attr: pb::SetAttr) -> Result<pb::Attr> {
        let op = Op::SetAttr(pb::SetAttrOp {
            ino,
            attr: Some(attr),
            access: false,
        });
        Self::expect_attr(self.mutate(ino_shard(ino), op).await?)
    }

    /// An access-time update (relatime's, for an open to read of the file
    /// whose attributes are `attr`) off the caller's path, the way lazytime
    /// defers it on a local file system: updates gather for
    /// [`ATIME_GATHER`] and go as one command per shard. Until one lands, this
    /// client's getattr and lookup show the read's time (its own clock)
    /// unless the atime was set back meanwhile (which wins, here and at
    /// metad), so the mount reads its own atime without waiting; other
    /// clients see it once it lands. A failed update is only logged (as a
    /// lost atime write is on a local file system).
    pub fn access_later(self: &Arc<Self>, attr: &pb::Attr) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let mut atimes = self.atimes.lock().unwrap_or_else(|p| p.into_inner());
        let seen = match atimes.pending.get(&attr.ino) {
            // One on its way already leaves atime after this file's last
            // change: relatime asks no more of this read.
            Some(p) if p.atime > attr.mtime_ns && p.atime > attr.ctime_ns => return,
            // Not sent yet: this later read's time replaces it.
            Some(p) if !p.sent => p.seen.min(attr.atime_ns),
            _ => attr.atime_ns,
        };
        let update = PendingAtime {
            atime: now,
            seen,
            sent: false,
        };
        atimes.pending.insert(attr.ino, update);
        if !atimes.sending {
            atimes.sending = true;
            tokio::spawn(self.clone().send_atimes());
        }
    }

    /// Sends the gathered access-time updates, one command per shard, until
    /// none is left.
    async fn send_atimes(self: Arc<Self>) {
        loop {
            tokio::time::sleep(ATIME_GATHER).await;
            let mut batches: HashMap<ShardId, Vec<(u64, PendingAtime)>> = HashMap::new();
            {
                let mut atimes = self.atimes.lock().unwrap_or_else(|p| p.into_inner());
                for (ino, p) in atimes.pending.iter_mut().filter(|(_, p)| !p.sent) {
                    p.sent = true;
                    batches.entry(ino_shard(*ino)).or_default().push((*ino, *p));
                }
                if batches.is_empty() {
                    atimes.sending = false;
                    return;
                }
            }
            let me = &self;
            let sends = batches.into_values().map(|files| async move {
                for part in files.chunks(ACCESS_TIMES_MAX) {
                    let op = Op::AccessTimes(pb::AccessTimesOp {
                        files: part
                            .iter()
                            .map(|(ino, p)| pb::AccessTime {
                                ino: *ino,
                                atime_ns: p.atime,
                                seen_atime_ns: p.seen,
                            })
                            .collect(),
                    });
                    if let Err(e) = me.mutate(ino_shard(part[0].0), op).await {
                        tracing::debug!("access time updates: {e}");
                    }
                }
                let mut atimes = me.atimes.lock().unwrap_or_else(|p| p.into_inner());
                for (ino, sent) in &files {
                    // A later read's update, not sent yet, stays.
                    if atimes.pending.get(ino) == Some(sent) {
                        atimes.pending.remove(ino);
                    }
                }
            });
            futures::future::join_all(sends).await;
        }
    }

    /// This client's access-time update of `ino` not landed yet.
    fn pending_atime(&self, ino: u64) -> Option<PendingAtime> {
        let atimes = self.atimes.lock().unwrap_or_else(|p| p.into_inner());
        atimes.pending.get(&ino).copied()
    }

    /// `attr` with the read's time of a pending update, unless its atime was
    /// set back since that read.
    fn with_pending(mut attr: pb::Attr, pending: Option<PendingAtime>) -> pb::Attr {
        if let Some(p) = pending.filter(|p| attr.atime_ns >= p.seen) {
            attr.atime_ns = attr.atime_ns.max(p.atime);
        }
        attr
    }

    fn with_pending_atime(&self, attr: pb::Attr) -> pb::Attr {
        let pending = self.pending_atime(attr.ino);
        Self::with_pending(attr, pending)
    }

    pub async fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        let op = Op::SetXattr(pb::SetXattrOp {
            ino,
            name: name.to_vec().into(),
            value: value.to_vec().into(),
            flags,
        });
        self.mutate(ino_shard(ino), op).await.map(|_| ())
    }

    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        let op = Op::RemoveXattr(pb::RemoveXattrOp {
            ino,
            name: name.to_vec().into(),
        });
        self.mutate(ino_shard(ino), op).await.map(|_| ())
    }

    /// Commits written slices and the new length in one metadata write.
    pub async fn commit(&self, commit: pb::CommitSlices) -> Result<pb::Attr> {
        let shard = ino_shard(commit.ino);
        Self::expect_attr(self.mutate(shard, Op::Commit(commit)).await?)
    }

    /// Appends whole slice objects, in order, at the file's size as metad
    /// applies it (O_APPEND); answers the attributes after it.
    pub async fn append(&self, ino: u64, slices: Vec<pb::AppendSlice>) -> Result<pb::Attr> {
        let op = Op::Append(pb::AppendOp {
            ino,
            slices,
            mtime_ns: 0,
        });
        Self::expect_attr(self.mutate(ino_shard(ino), op).await?)
    }

    /// Moves the content of `sources` (files on `target`'s shard, in order) to
    /// the end of `target` without copying data; the sources are left empty.
    pub async fn concat(&self, target: u64, sources: Vec<u64>) -> Result<pb::Attr> {
        let op = Op::Concat(pb::ConcatOp {
            target,
            sources,
            mtime_ns: 0,
        });
        Self::expect_attr(self.mutate(ino_shard(target), op).await?)
    }

    /// fallocate(2) in one metadata write: the length grows to `offset +
    /// length` unless `keep_size`; with `zero`, the range reads as zeros
    /// afterwards, made holes without writing data (see `FallocateOp`).
    pub async fn fallocate(
        &self,
        ino: u64,
        offset: u64,
        length: u64,
        keep_size: bool,
        zero: bool,
    ) -> Result<pb::Attr> {
        let op = Op::Fallocate(pb::FallocateOp {
            ino,
            offset,
            length,
            keep_size,
            zero,
            mtime_ns: 0,
        });
        Self::expect_attr(self.mutate(ino_shard(ino), op).await?)
    }

    /// Writes into a small file's inline data (kept in its inode record); an
    /// ENOTSUP answer means the file has outgrown it (see `WriteInlineOp`).
    pub async fn write_inline(
        &self,
        ino: u64,
        pos: u32,
        data: bytes::Bytes,
        length: u64,
    ) -> Result<pb::Attr> {
        let op = Op::WriteInline(pb::WriteInlineOp {
            ino,
            pos,
            data,
            length,
            mtime_ns: 0,
        });
        Self::expect_attr(self.mutate(ino_shard(ino), op).await?)
    }

    /// Opens a file: until [`close`](Self::close) (or until this client stops
    /// renewing its session) the file's data stays even if it is unlinked.
    pub async fn open(self: &Arc<Self>, ino: u64) -> Result<pb::Attr> {
        let attr = self.register_open(ino).await?;
        self.start_renewer().await?;
        Ok(attr)
    }

    /// `open` without starting the session task (which calls this itself).
    async fn register_open(&self, ino: u64) -> Result<pb::Attr> {
        let shard = ino_shard(ino);
        let attr = Self::expect_attr(self.mutate(shard, Op::Open(pb::OpenOp { ino })).await?)?;
        *self
            .open_shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(shard)
            .or_default() += 1;
        Ok(attr)
    }

    /// Closes a file opened with [`open`](Self::open).
    pub async fn close(&self, ino: u64) -> Result<()> {
        let shard = ino_shard(ino);
        self.mutate(shard, Op::Close(pb::CloseOp { ino })).await?;
        let mut open = self.open_shards.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&shard) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&shard);
            }
        }
        Ok(())
    }

    /// Tracks an open of `ino` without a metadata write: an open that lasts a
    /// third of the session lease is registered (as [`open`](Self::open)) by
    /// the session task, in time to keep the file if it is unlinked, since
    /// metad deletes an unlinked file only after a whole lease without a
    /// registered opener. Most opens are short and cost nothing here.
    /// Answers a token for [`untrack_open`](Self::untrack_open).
    pub async fn track_open(self: &Arc<Self>, ino: u64) -> Result<u64> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.lazy_opens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                token,
                LazyOpen {
                    ino,
                    since: std::time::Instant::now(),
                    registered: false,
                },
            );
        self.start_renewer().await?;
        Ok(token)
    }

    /// Ends a tracked open; closes it at metad if it was registered.
    pub async fn untrack_open(&self, token: u64) -> Result<()> {
        let open = self
            .lazy_opens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
        match open {
            Some(LazyOpen {
                ino,
                registered: true,
                ..
            }) => self.close(ino).await,
            _ => Ok(()),
        }
    }

    /// Registers the tracked opens older than `age` (see `track_open`).
    async fn register_lazy_opens(&self, age: Duration) {
        let due: Vec<(u64, u64)> = self
            .lazy_opens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, o)| !o.registered && o.since.elapsed() >= age)
            .map(|(t, o)| (*t, o.ino))
            .collect();
        for (token, ino) in due {
            if let Err(e) = self.register_open(ino).await {
                tracing::warn!(ino, "registering an open file: {e}");
                continue;
            }
            let still_open = match self
                .lazy_opens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&token)
            {
                Some(o) => {
                    o.registered = true;
                    true
                }
                None => false,
            };
            // Closed while being registered: undo the registration.
            if !still_open {
                if let Err(e) = self.close(ino).await {
                    tracing::warn!(ino, "closing an open file: {e}");
                }
            }
        }
    }

    /// Starts the task renewing this client's session where it has open files.
    async fn start_renewer(self: &Arc<Self>) -> Result<()> {
        let lease_ms = self.map().await?.session_lease_ms.max(1000);
        let mut renewer = self.renewer.lock().unwrap_or_else(|p| p.into_inner());
        if renewer.is_some() {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        *renewer = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(lease_ms / 3));
            loop {
                tick.tick().await;
                let Some(client) = weak.upgrade() else {
                    return;
                };
                client
                    .register_lazy_opens(Duration::from_millis(lease_ms / 3))
                    .await;
                let mut shards: Vec<ShardId> = client
                    .open_shards
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .copied()
                    .collect();
                shards.extend(
                    client
                        .lock_shards
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .filter(|s| !shards.contains(s))
                        .copied()
                        .collect::<Vec<_>>(),
                );
                for shard in shards {
                    let client_id = client.client_id;
                    let renewed = client
                        .call(shard, |mut c| async move {
                            c.renew_session(pb::RenewSessionRequest { client_id, shard })
                                .await
                        })
                        .await;
                    if let Err(e) = renewed {
                        tracing::warn!(shard, "renewing the session: {e}");
                    }
                }
            }
        }));
        Ok(())
    }

    /// A page of data shard `shard`'s slice references after the cursor
    /// `after` (empty: from the start).
    pub async fn list_slice_refs(
        &self,
        shard: ShardId,
        after: bytes::Bytes,
        limit: u32,
    ) -> Result<pb::ListSliceRefsReply> {
        self.call(shard, |mut c| {
            let after = after.clone();
            async move {
                c.list_slice_refs(pb::ListSliceRefsRequest {
                    shard,
                    after,
                    limit,
                })
                .await
            }
        })
        .await
    }

    /// Which of `ids` some file shows or a deletion queue holds (every data
    /// shard asked at its leader).
    pub async fn slice_refs(&self, ids: Vec<u64>) -> Result<Vec<u64>> {
        let reply = self
            .call(MAP_SHARD, |mut c| {
                let slice_ids = ids.clone();
                async move {
                    c.slice_refs(pb::SliceRefsRequest {
                        slice_ids,
                        shard: MAP_SHARD,
                    })
                    .await
                }
            })
            .await?;
        Ok(reply.referenced)
    }

    /// A fresh slice id (fetched from shard 0 in batches).
    pub async fn next_slice_id(&self) -> Result<u64> {
        let mut ids = self.slice_ids.lock().await;
        if ids.0 >= ids.1 {
            let reply = self
                .call(MAP_SHARD, |mut c| async move {
                    c.alloc_slice_ids(pb::AllocSliceIdsRequest {
                        count: SLICE_ID_BATCH,
                    })
                    .await
                })
                .await?;
            *ids = (reply.first, reply.first + u64::from(reply.count));
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// Resolves an absolute path (no symlinks followed) to its attributes.
    pub async fn resolve(&self, path: &str) -> Result<pb::Attr> {
        let parts = split_path(path).map_err(|e| ClientError::fs(e.errno(), e.to_string()))?;
        let mut attr = self.getattr(ROOT_INO).await?;
        for part in parts {
            if attr.kind != pb::FileKind::Directory as i32 {
                return Err(ClientError::fs(ENOTDIR, format!("{path}: not a directory")));
            }
            attr = self.lookup(attr.ino, part.as_bytes()).await?;
        }
        Ok(attr)
    }

    /// Resolves the parent directory of `path` and returns it with the last name.
    pub async fn resolve_parent(&self, path: &str) -> Result<(pb::Attr, String)> {
        let parts = split_path(path).map_err(|e| ClientError::fs(e.errno(), e.to_string()))?;
        let Some((last, dirs)) = parts.split_last() else {
            return Err(ClientError::Invalid(format!("{path}: no file name")));
        };
        let parent = self.resolve(&format!("/{}", dirs.join("/"))).await?;
        if parent.kind != pb::FileKind::Directory as i32 {
            return Err(ClientError::fs(ENOTDIR, format!("{path}: not a directory")));
        }
        Ok((parent, last.to_string()))
    }
}

/// Advisory file locks (fcntl and flock), held by (this client, owner) in the
/// inode's shard for as long as this client's session there lives.
impl MetaClient {
    /// This client's id: with a lock owner, the identity of a lock holder.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// F_SETLK / flock(LOCK_NB): takes, changes or releases a lock now, or
    /// fails with EAGAIN when another holder's lock is in the way.
    pub async fn setlk(self: &Arc<Self>, lock: pb::SetLockOp) -> Result<()> {
        let shard = ino_shard(lock.ino);
        let unlock = lock.r#type == pb::LockType::Unlock as i32;
        self.mutate_inner(Caller::ROOT, shard, Op::SetLock(lock), true)
            .await?;
        if !unlock
            && self
                .lock_shards
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(shard)
        {
            self.start_renewer().await?;
        }
        Ok(())
    }

    /// F_SETLKW / blocking flock: [`setlk`](Self::setlk), retried with backoff
    /// for as long as another holder's lock is in the way.
    pub async fn setlkw(self: &Arc<Self>, lock: pb::SetLockOp) -> Result<()> {
        let wait = Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(200),
            deadline: Duration::MAX,
        };
        retry(
            wait,
            |e: &ClientError| e.errno() == EAGAIN,
            |_| self.setlk(lock),
        )
        .await
    }

    /// F_GETLK: the lock of another holder that would keep `lock` from being
    /// granted, if any.
    pub async fn getlk(&self, lock: pb::SetLockOp) -> Result<Option<pb::LockInfo>> {
        let client_id = self.client_id;
        let reply = self
            .call(ino_shard(lock.ino), |mut c| {
                let req = pb::GetLockRequest {
                    client_id,
                    lock: Some(lock),
                };
                async move { c.get_lock(req).await }
            })
            .await?;
        Ok(reply.conflict)
    }
}
