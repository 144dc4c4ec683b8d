//! The gRPC edge of metad: the `Meta` service for clients and data servers and
//! the `Raft` service for peers. Every request is validated and converted into
//! domain types here; every error leaves through `From<MetaError> for Status`.

use std::sync::Arc;

use tonic::Request as GrpcRequest;
use tonic::Response as GrpcResponse;
use tonic::Status;

use cairn_proto::ids::ino_shard;
use cairn_proto::ids::MAP_SHARD;
use cairn_proto::name::validate_name;
use cairn_proto::name::PATH_MAX;
use cairn_proto::pb;
use cairn_proto::pb::mutate_request::Op as PbOp;

use crate::cluster;
use crate::cluster::MapCommand;
use crate::coordinator::Caller;
use crate::coordinator::Op;
use crate::error::MetaError;
use crate::fs;
use crate::fs::Inode;
use crate::fs::Kind;
use crate::fs::RenameMode;
use crate::fs::Reply;
use crate::fs::SetAttrs;
use crate::fs::SliceRec;
use crate::keys;
use crate::locks;
use crate::locks::Holder;
use crate::locks::Lock;
use crate::locks::LockKind;
use crate::locks::LockOp;
use crate::locks::LockRequest;
use crate::locks::LockType;
use crate::node::now_ns;
use crate::node::MetaNode;
use crate::tier;
use crate::tier::TierCommand;
use crate::types::Command;
use crate::types::Request;
use prost::Message;

/// Most entries one ReadDir answers.
const READDIR_MAX: u32 = 10_000;
/// Most slice ids one SliceRefs asks about (and one ListSliceRefs page holds).
pub const SLICE_REFS_MAX: usize = 4096;
/// Most slice ids one AllocSliceIds hands out.
const ALLOC_MAX: u32 = 100_000;

pub fn kind_to_pb(kind: Kind) -> pb::FileKind {
    match kind {
        Kind::File => pb::FileKind::Regular,
        Kind::Dir => pb::FileKind::Directory,
        Kind::Symlink => pb::FileKind::Symlink,
        Kind::Fifo => pb::FileKind::Fifo,
        Kind::Socket => pb::FileKind::Socket,
        Kind::CharDev => pb::FileKind::CharDevice,
        Kind::BlockDev => pb::FileKind::BlockDevice,
    }
}

pub fn kind_from_pb(kind: i32) -> Result<Kind, MetaError> {
    match pb::FileKind::try_from(kind) {
        Ok(pb::FileKind::Regular) => Ok(Kind::File),
        Ok(pb::FileKind::Directory) => Ok(Kind::Dir),
        Ok(pb::FileKind::Symlink) => Ok(Kind::Symlink),
        Ok(pb::FileKind::Fifo) => Ok(Kind::Fifo),
        Ok(pb::FileKind::Socket) => Ok(Kind::Socket),
        Ok(pb::FileKind::CharDevice) => Ok(Kind::CharDev),
        Ok(pb::FileKind::BlockDevice) => Ok(Kind::BlockDev),
        _ => Err(MetaError::Invalid(format!("unknown file kind {kind}"))),
    }
}

pub fn inode_to_pb(ino: u64, inode: &Inode) -> pb::Attr {
    pb::Attr {
        ino,
        kind: kind_to_pb(inode.kind) as i32,
        perm: inode.perm,
        uid: inode.uid,
        gid: inode.gid,
        size: inode.size,
        nlink: inode.nlink,
        atime_ns: inode.atime,
        mtime_ns: inode.mtime,
        ctime_ns: inode.ctime,
        rdev: inode.rdev,
        parent: inode.parent,
        stored_bytes: None,
    }
}

pub fn inode_from_pb(a: &pb::Attr) -> Result<Inode, MetaError> {
    Ok(Inode {
        kind: kind_from_pb(a.kind)?,
        perm: a.perm,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        nlink: a.nlink,
        atime: a.atime_ns,
        mtime: a.mtime_ns,
        ctime: a.ctime_ns,
        rdev: a.rdev,
        parent: a.parent,
    })
}

fn slice_from_pb(s: &pb::Slice) -> SliceRec {
    SliceRec {
        slice_id: s.slice_id,
        pos: s.pos,
        len: s.len,
        off: s.off,
        size: s.size,
    }
}

fn slice_to_pb(s: &SliceRec) -> pb::Slice {
    pb::Slice {
        slice_id: s.slice_id,
        pos: s.pos,
        len: s.len,
        off: s.off,
        size: s.size,
    }
}

fn name(bytes: &[u8]) -> Result<Vec<u8>, MetaError> {
    validate_name(bytes)?;
    Ok(bytes.to_vec())
}

fn xattr_name(bytes: &[u8]) -> Result<Vec<u8>, MetaError> {
    if bytes.is_empty() || bytes.len() > 255 || bytes.contains(&0) {
        return Err(MetaError::fs(
            cairn_proto::status::ERANGE,
            "xattr names are 1 to 255 bytes without NUL",
        ));
    }
    Ok(bytes.to_vec())
}

/// Validates a mutation and turns it into an [`Op`].
pub fn op_from_pb(op: PbOp) -> Result<Op, MetaError> {
    Ok(match op {
        PbOp::Create(c) => {
            let kind = kind_from_pb(c.kind)?;
            if matches!(kind, Kind::Dir | Kind::Symlink) {
                return Err(MetaError::Invalid(
                    "create makes files and nodes; use mkdir or symlink".into(),
                ));
            }
            Op::Create {
                parent: c.parent,
                name: name(&c.name)?,
                kind,
                perm: c.perm & 0o7777,
                rdev: c.rdev,
                exclusive: c.exclusive,
            }
        }
        PbOp::Mkdir(m) => Op::Mkdir {
            parent: m.parent,
            name: name(&m.name)?,
            perm: m.perm & 0o7777,
        },
        PbOp::Unlink(u) => Op::Unlink {
            parent: u.parent,
            name: name(&u.name)?,
        },
        PbOp::Rmdir(r) => Op::Rmdir {
            parent: r.parent,
            name: name(&r.name)?,
        },
        PbOp::Rename(r) => Op::Rename {
            parent: r.parent,
            name: name(&r.name)?,
            new_parent: r.new_parent,
            new_name: name(&r.new_name)?,
            mode: match pb::RenameMode::try_from(r.mode) {
                Ok(pb::RenameMode::Replace) => RenameMode::Replace,
                Ok(pb::RenameMode::Noreplace) => RenameMode::NoReplace,
                Ok(pb::RenameMode::Exchange) => RenameMode::Exchange,
                Err(_) => return Err(MetaError::Invalid("unknown rename mode".into())),
            },
        },
        PbOp::Link(l) => Op::Link {
            ino: l.ino,
            new_parent: l.new_parent,
            new_name: name(&l.new_name)?,
        },
        PbOp::Symlink(s) => {
            if s.target.is_empty() || s.target.len() > PATH_MAX || s.target.contains(&0) {
                return Err(MetaError::Invalid("invalid symlink target".into()));
            }
            Op::Symlink {
                parent: s.parent,
                name: name(&s.name)?,
                target: s.target.to_vec(),
            }
        }
        PbOp::AccessTimes(a) => {
            let files: Vec<(u64, i64, i64)> = a
                .files
                .iter()
                .map(|f| (f.ino, f.atime_ns, f.seen_atime_ns))
                .collect();
            let Some(first) = files.first() else {
                return Err(MetaError::Invalid("access times of no file".into()));
            };
            if files.len() > crate::fs::ACCESS_TIMES_MAX {
                return Err(MetaError::Invalid(
                    "too many access times in one request".into(),
                ));
            }
            if files.iter().any(|f| ino_shard(f.0) != ino_shard(first.0)) {
                return Err(MetaError::Invalid(
                    "access times of files of several shards".into(),
                ));
            }
            Op::AccessTimes { files }
        }
        PbOp::SetAttr(s) if s.access => Op::Access {
            ino: s.ino,
            at: s.attr.and_then(|a| a.atime_ns),
        },
        PbOp::SetAttr(s) => {
            let a = s.attr.unwrap_or_default();
            Op::SetAttr {
                ino: s.ino,
                set: SetAttrs {
                    perm: a.perm.map(|p| p & 0o7777),
                    uid: a.uid,
                    gid: a.gid,
                    size: a.size,
                    atime: a.atime_ns,
                    mtime: a.mtime_ns,
                },
            }
        }
        PbOp::SetXattr(x) => {
            if x.value.len() > fs::XATTR_VALUE_MAX {
                return Err(MetaError::fs(
                    cairn_proto::status::ERANGE,
                    "xattr value too large",
                ));
            }
            Op::SetXattr {
                ino: x.ino,
                name: xattr_name(&x.name)?,
                value: x.value.to_vec(),
                flags: x.flags,
            }
        }
        PbOp::RemoveXattr(x) => Op::RemoveXattr {
            ino: x.ino,
            name: xattr_name(&x.name)?,
        },
        PbOp::Open(o) => Op::Open { ino: o.ino },
        PbOp::Close(c) => Op::Close { ino: c.ino },
        PbOp::WriteInline(w) => {
            if w.pos as usize + w.data.len() > fs::INLINE_MAX {
                return Err(MetaError::fs(
                    cairn_proto::status::ENOTSUP,
                    "inline data too large",
                ));
            }
            Op::WriteInline {
                ino: w.ino,
                pos: w.pos,
                data: w.data.to_vec(),
                length: w.length,
                mtime: if w.mtime_ns == 0 {
                    now_ns()
                } else {
                    w.mtime_ns
                },
            }
        }
        PbOp::SetLock(l) => Op::SetLock {
            ino: l.ino,
            lock: lock_from_pb(0, &l)?,
        },
        PbOp::Concat(c) => Op::Concat {
            target: c.target,
            sources: c.sources.clone(),
            mtime: if c.mtime_ns == 0 {
                now_ns()
            } else {
                c.mtime_ns
            },
        },
        PbOp::Append(a) => {
            if a.slices.is_empty()
                || a.slices.len() > fs::APPEND_MAX_SLICES
                || a.slices.iter().any(|s| s.slice_id == 0 || s.len == 0)
            {
                return Err(MetaError::Invalid(
                    "an append needs 1 to 1024 non-empty slices with ids".into(),
                ));
            }
            let total: u64 = a.slices.iter().map(|s| u64::from(s.len)).sum();
            if total > fs::MAX_FILE_SIZE {
                return Err(MetaError::fs(
                    cairn_proto::status::EFBIG,
                    "append too large",
                ));
            }
            Op::Append {
                ino: a.ino,
                slices: a.slices.iter().map(|s| (s.slice_id, s.len)).collect(),
                mtime: if a.mtime_ns == 0 {
                    now_ns()
                } else {
                    a.mtime_ns
                },
            }
        }
        PbOp::Fallocate(f) => Op::Fallocate {
            ino: f.ino,
            f: crate::holes::Fallocate {
                offset: f.offset,
                len: f.length,
                keep_size: f.keep_size,
                zero: f.zero,
            },
            mtime: if f.mtime_ns == 0 {
                now_ns()
            } else {
                f.mtime_ns
            },
        },
        PbOp::Commit(c) => Op::Commit {
            ino: c.ino,
            chunks: c
                .chunks
                .iter()
                .map(|ch| (ch.chunk, ch.slices.iter().map(slice_from_pb).collect()))
                .collect(),
            length: c.length,
            mtime: if c.mtime_ns == 0 {
                now_ns()
            } else {
                c.mtime_ns
            },
        },
    })
}

/// A file's slices for chunks [first, first + count) (at most 1024), with its
/// attributes and, when chunk 0 is asked for, its inline data.
fn layout(
    txn: &crate::kv::Txn,
    ino: u64,
    first: u32,
    count: u32,
) -> Result<pb::ReadChunksReply, MetaError> {
    let inode = fs::get_inode(txn, ino)?;
    let mut chunks = Vec::new();
    let last = first.saturating_add(count.min(1024));
    for chunk in first..last {
        if let Some(slices) = txn.get_as::<Vec<SliceRec>>(&keys::chunk(ino, chunk))? {
            chunks.push(pb::ChunkSlices {
                chunk,
                slices: slices.iter().map(slice_to_pb).collect(),
            });
        }
    }
    let inline = if first == 0 {
        txn.get(&keys::inline(ino))?.unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(pb::ReadChunksReply {
        attr: Some(inode_to_pb(ino, &inode)),
        chunks,
        inline: inline.into(),
    })
}

/// Validates a lock request of `client`: a known kind and type, start <= end.
pub fn lock_from_pb(client: u64, l: &pb::SetLockOp) -> Result<LockRequest, MetaError> {
    let kind = match pb::LockKind::try_from(l.kind) {
        Ok(pb::LockKind::Posix) => LockKind::Posix,
        Ok(pb::LockKind::Flock) => LockKind::Flock,
        _ => return Err(MetaError::Invalid(format!("unknown lock kind {}", l.kind))),
    };
    let op = match pb::LockType::try_from(l.r#type) {
        Ok(pb::LockType::Read) => LockOp::Lock(LockType::Read),
        Ok(pb::LockType::Write) => LockOp::Lock(LockType::Write),
        Ok(pb::LockType::Unlock) => LockOp::Unlock,
        _ => {
            return Err(MetaError::Invalid(format!(
                "unknown lock type {}",
                l.r#type
            )))
        }
    };
    if l.start > l.end {
        return Err(MetaError::Invalid("lock starts after its end".into()));
    }
    Ok(LockRequest {
        kind,
        holder: Holder {
            client,
            owner: l.owner,
        },
        pid: l.pid,
        start: l.start,
        end: l.end,
        op,
    })
}

pub fn lock_to_pb(l: &Lock) -> pb::LockInfo {
    pb::LockInfo {
        kind: match l.kind {
            LockKind::Posix => pb::LockKind::Posix,
            LockKind::Flock => pb::LockKind::Flock,
        } as i32,
        r#type: match l.typ {
            LockType::Read => pb::LockType::Read,
            LockType::Write => pb::LockType::Write,
        } as i32,
        start: l.start,
        end: l.end,
        pid: l.pid,
        client_id: l.holder.client,
        owner: l.holder.owner,
    }
}

fn reply_attr(reply: Reply) -> Option<pb::Attr> {
    match reply {
        Reply::Attr { ino, inode } => Some(inode_to_pb(ino, &inode)),
        _ => None,
    }
}

/// The `Meta` gRPC service.
pub struct MetaService {
    pub node: Arc<MetaNode>,
}

type GrpcResult<T> = Result<GrpcResponse<T>, Status>;

impl MetaService {
    /// Refuses to switch to another cold backend while data nodes hold cold
    /// blocks: their only copies are in the current one.
    async fn check_backend_change(&self, next: &pb::ColdBackend) -> Result<(), MetaError> {
        let current = self
            .node
            .read(MAP_SHARD, |txn| Ok(tier::config(txn)?.backend))
            .await?;
        if current.as_ref().is_none_or(|c| c.url == next.url) {
            return Ok(());
        }
        let map = self.node.cluster_map_local().await?;
        for data_node in map.data_nodes.iter().filter(|n| n.alive) {
            let stat = self
                .node
                .channels
                .data(&data_node.addr)
                .map_err(|e| MetaError::Peer(e.to_string()))?
                .stat(pb::DataStatRequest {})
                .await
                .map_err(|s| MetaError::Peer(format!("{}: {}", data_node.addr, s.message())))?
                .into_inner();
            if stat.cold_blocks > 0 {
                return Err(MetaError::Invalid(format!(
                    "data node {} holds {} cold blocks in the current backend; restore them first",
                    data_node.id, stat.cold_blocks
                )));
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::meta_server::Meta for MetaService {
    async fn lookup(&self, req: GrpcRequest<pb::LookupRequest>) -> GrpcResult<pb::AttrReply> {
        let req = req.into_inner();
        let name = name(&req.name)?;
        let shard = ino_shard(req.parent);
        let (entry, local) = self
            .node
            .read(shard, |txn| {
                let dir = fs::get_inode(txn, req.parent)?;
                if dir.kind != Kind::Dir {
                    return Err(MetaError::fs(
                        cairn_proto::status::ENOTDIR,
                        "not a directory",
                    ));
                }
                let entry = fs::get_entry(txn, req.parent, &name)?
                    .ok_or_else(|| MetaError::fs(cairn_proto::status::ENOENT, "no such file"))?;
                let local = if ino_shard(entry.ino) == shard {
                    let inode = fs::get_inode(txn, entry.ino)?;
                    let stored = fs::stored_bytes(txn, entry.ino, &inode)?;
                    Some((inode, stored))
                } else {
                    None
                };
                Ok((entry, local))
            })
            .await?;
        let (inode, stored) = match local {
            Some(local) => local,
            None => (self.node.getattr_anywhere(entry.ino).await?, None),
        };
        Ok(GrpcResponse::new(pb::AttrReply {
            attr: Some(pb::Attr {
                stored_bytes: stored,
                ..inode_to_pb(entry.ino, &inode)
            }),
        }))
    }

    async fn get_attr(&self, req: GrpcRequest<pb::GetAttrRequest>) -> GrpcResult<pb::AttrReply> {
        let ino = req.into_inner().ino;
        let inode = self
            .node
            .read(ino_shard(ino), |txn| {
                let inode = fs::get_inode(txn, ino)?;
                let stored = fs::stored_bytes(txn, ino, &inode)?;
                Ok((inode, stored))
            })
            .await?;
        let (inode, stored) = inode;
        Ok(GrpcResponse::new(pb::AttrReply {
            attr: Some(pb::Attr {
                stored_bytes: stored,
                ..inode_to_pb(ino, &inode)
            }),
        }))
    }

    async fn read_dir(&self, req: GrpcRequest<pb::ReadDirRequest>) -> GrpcResult<pb::ReadDirReply> {
        let req = req.into_inner();
        let limit = req.limit.clamp(1, READDIR_MAX) as usize;
        let (entries, more) = self
            .node
            .read(ino_shard(req.ino), |txn| {
                let dir = fs::get_inode(txn, req.ino)?;
                if dir.kind != Kind::Dir {
                    return Err(MetaError::fs(
                        cairn_proto::status::ENOTDIR,
                        "not a directory",
                    ));
                }
                let prefix = keys::dentry_prefix(req.ino);
                let mut rows = txn.scan(&prefix, &req.after, limit + 1)?;
                let more = rows.len() > limit;
                rows.truncate(limit);
                let shard = ino_shard(req.ino);
                let entries = rows
                    .into_iter()
                    .map(|(k, v)| {
                        let e: fs::Entry = crate::kv::decode(&v)?;
                        // readdirplus: attributes of the inodes kept here
                        // (the directory's files) come in the same answer.
                        let local = req.plus && ino_shard(e.ino) == shard;
                        let attr = if local {
                            Some(inode_to_pb(e.ino, &fs::get_inode(txn, e.ino)?))
                        } else {
                            None
                        };
                        let xattr = if local && !req.xattr.is_empty() {
                            txn.get(&keys::xattr(e.ino, &req.xattr))?.map(Into::into)
                        } else {
                            None
                        };
                        Ok(pb::DirEntry {
                            name: k[prefix.len()..].to_vec().into(),
                            ino: e.ino,
                            kind: kind_to_pb(e.kind) as i32,
                            attr,
                            xattr,
                        })
                    })
                    .collect::<Result<Vec<_>, MetaError>>()?;
                Ok((entries, more))
            })
            .await?;
        Ok(GrpcResponse::new(pb::ReadDirReply { entries, more }))
    }

    async fn read_link(
        &self,
        req: GrpcRequest<pb::ReadLinkRequest>,
    ) -> GrpcResult<pb::ReadLinkReply> {
        let ino = req.into_inner().ino;
        let target = self
            .node
            .read(ino_shard(ino), |txn| {
                let inode = fs::get_inode(txn, ino)?;
                if inode.kind != Kind::Symlink {
                    return Err(MetaError::fs(cairn_proto::status::EINVAL, "not a symlink"));
                }
                txn.get(&keys::symlink(ino))?
                    .ok_or_else(|| MetaError::Storage("symlink without target".into()))
            })
            .await?;
        Ok(GrpcResponse::new(pb::ReadLinkReply {
            target: target.into(),
        }))
    }

    async fn get_xattr(
        &self,
        req: GrpcRequest<pb::GetXattrRequest>,
    ) -> GrpcResult<pb::GetXattrReply> {
        let req = req.into_inner();
        let name = xattr_name(&req.name)?;
        let value = self
            .node
            .read(ino_shard(req.ino), |txn| {
                fs::get_inode(txn, req.ino)?;
                txn.get(&keys::xattr(req.ino, &name))?
                    .ok_or_else(|| MetaError::fs(cairn_proto::status::ENODATA, "no such xattr"))
            })
            .await?;
        Ok(GrpcResponse::new(pb::GetXattrReply {
            value: value.into(),
        }))
    }

    async fn list_xattr(
        &self,
        req: GrpcRequest<pb::ListXattrRequest>,
    ) -> GrpcResult<pb::ListXattrReply> {
        let ino = req.into_inner().ino;
        let names = self
            .node
            .read(ino_shard(ino), |txn| {
                fs::get_inode(txn, ino)?;
                let prefix = keys::xattr_prefix(ino);
                Ok(txn
                    .scan(&prefix, b"", usize::MAX)?
                    .into_iter()
                    .map(|(k, _)| k[prefix.len()..].to_vec().into())
                    .collect())
            })
            .await?;
        Ok(GrpcResponse::new(pb::ListXattrReply { names }))
    }

    async fn read_chunks(
        &self,
        req: GrpcRequest<pb::ReadChunksRequest>,
    ) -> GrpcResult<pb::ReadChunksReply> {
        let req = req.into_inner();
        let reply = self
            .node
            .read(ino_shard(req.ino), |txn| {
                layout(txn, req.ino, req.first_chunk, req.chunk_count)
            })
            .await?;
        Ok(GrpcResponse::new(reply))
    }

    async fn stat_fs(&self, req: GrpcRequest<pb::StatFsRequest>) -> GrpcResult<pb::StatFsReply> {
        let reply = match req.into_inner().shard {
            Some(shard) => pb::StatFsReply {
                inodes: self.node.read(shard, fs::inode_count).await?,
                ..Default::default()
            },
            None => self.node.statfs().await?,
        };
        Ok(GrpcResponse::new(reply))
    }

    async fn mutate(&self, req: GrpcRequest<pb::MutateRequest>) -> GrpcResult<pb::MutateReply> {
        let req = req.into_inner();
        let op = req
            .op
            .ok_or_else(|| MetaError::Invalid("mutation without an operation".into()))?;
        let op = op_from_pb(op)?;
        let key = req.id.map(|id| (id.client_id, id.seq));
        let caller = Caller {
            uid: req.uid,
            gid: req.gid,
        };
        let reply = self.node.mutate(key, caller, op).await?;
        Ok(GrpcResponse::new(pb::MutateReply {
            attr: reply_attr(reply),
        }))
    }

    async fn get_cluster_map(
        &self,
        _req: GrpcRequest<pb::ClusterMapRequest>,
    ) -> GrpcResult<pb::ClusterMap> {
        Ok(GrpcResponse::new(self.node.cluster_map_local().await?))
    }

    async fn register_data_node(
        &self,
        req: GrpcRequest<pb::RegisterDataNodeRequest>,
    ) -> GrpcResult<pb::RegisterDataNodeReply> {
        let req = req.into_inner();
        if req.id == 0 || req.addr.is_empty() || req.addr.len() > 256 {
            return Err(MetaError::Invalid("data node needs an id and an address".into()).into());
        }
        let node = cluster::DataNode {
            id: req.id,
            addr: req.addr,
            capacity: req.capacity_bytes,
            used: req.used_bytes,
            blocks: req.blocks,
            last_heartbeat_ms: 0,
        };
        let id = node.id;
        let now_ms = now_ns() / 1_000_000;
        let map = |cmd| Request {
            key: None,
            cmd: Command::Map(cmd),
        };
        self.node
            .propose_local(MAP_SHARD, map(MapCommand::Heartbeat { node, now_ms }))
            .await?;
        let cold = self
            .node
            .read(MAP_SHARD, |txn| Ok(tier::config(txn)?.backend))
            .await?;
        // Read on this leader after the beat applied: at least as new as any
        // chain version a client was handed before it.
        let mut groups = self.node.cluster_map_local().await?.groups;
        // Groups the node reports in sync at their current version: it serves them.
        let synced: Vec<(u32, u64)> = req
            .synced
            .iter()
            .filter(|s| {
                groups
                    .iter()
                    .any(|g| g.id == s.group && g.version == s.version && g.syncing.contains(&id))
            })
            .map(|s| (s.group, s.version))
            .collect();
        if !synced.is_empty() {
            let cmd = MapCommand::Synced {
                node: id,
                groups: synced,
                now_ms,
            };
            self.node.propose_local(MAP_SHARD, map(cmd)).await?;
            groups = self.node.cluster_map_local().await?.groups;
        }
        Ok(GrpcResponse::new(pb::RegisterDataNodeReply {
            cold,
            groups,
        }))
    }

    async fn set_data_node_state(
        &self,
        req: GrpcRequest<pb::SetDataNodeStateRequest>,
    ) -> GrpcResult<pb::SetDataNodeStateReply> {
        let req = req.into_inner();
        let state = pb::DataNodeState::try_from(req.state)
            .map_err(|_| MetaError::Invalid(format!("unknown data node state {}", req.state)))?;
        let cmd = MapCommand::SetNodeState {
            id: req.id,
            state: cluster::NodeState::from_pb(state),
            now_ms: now_ns() / 1_000_000,
        };
        self.node
            .propose_local(
                MAP_SHARD,
                Request {
                    key: None,
                    cmd: Command::Map(cmd),
                },
            )
            .await?;
        Ok(GrpcResponse::new(pb::SetDataNodeStateReply {}))
    }

    async fn get_workers(
        &self,
        _req: GrpcRequest<pb::GetWorkersRequest>,
    ) -> GrpcResult<pb::GetWorkersReply> {
        let workers = self
            .node
            .workers
            .snapshot()
            .into_iter()
            .map(|(name, s)| pb::WorkerInfo {
                name: name.to_string(),
                runs: s.runs,
                failures: s.failures,
                last_error: s.last_error.unwrap_or_default(),
                busy_ms: s.busy_since.map_or(0, |t| t.elapsed().as_millis() as u64),
            })
            .collect();
        Ok(GrpcResponse::new(pb::GetWorkersReply {
            node: self.node.id,
            workers,
        }))
    }

    async fn get_tier(&self, _req: GrpcRequest<pb::GetTierRequest>) -> GrpcResult<pb::TierConfig> {
        let config = self.node.read(MAP_SHARD, tier::config).await?;
        Ok(GrpcResponse::new(config))
    }

    async fn update_tier(
        &self,
        req: GrpcRequest<pb::UpdateTierRequest>,
    ) -> GrpcResult<pb::UpdateTierReply> {
        use pb::update_tier_request::Update;
        let update = req
            .into_inner()
            .update
            .ok_or_else(|| MetaError::Invalid("UpdateTier without an update".into()))?;
        let cmd = match update {
            Update::SetBackend(backend) => {
                cairn_proto::tier::validate_backend(&backend).map_err(MetaError::Invalid)?;
                self.check_backend_change(&backend).await?;
                TierCommand::SetBackend(backend.encode_to_vec())
            }
            Update::PutPolicy(policy) => {
                cairn_proto::tier::validate(&policy).map_err(MetaError::Invalid)?;
                TierCommand::PutPolicy {
                    name: policy.name.clone(),
                    policy: policy.encode_to_vec(),
                }
            }
            Update::DeletePolicy(name) => TierCommand::DeletePolicy(name),
            Update::PutRun(run) => {
                if run.cursor.len() > PATH_MAX || run.last_error.len() > 4096 {
                    return Err(MetaError::Invalid("tier run record too large".into()).into());
                }
                TierCommand::PutRun {
                    name: run.policy.clone(),
                    run: run.encode_to_vec(),
                }
            }
        };
        self.node
            .propose_local(
                MAP_SHARD,
                Request {
                    key: None,
                    cmd: Command::Tier(cmd),
                },
            )
            .await?;
        Ok(GrpcResponse::new(pb::UpdateTierReply {}))
    }

    async fn renew_session(
        &self,
        req: GrpcRequest<pb::RenewSessionRequest>,
    ) -> GrpcResult<pb::RenewSessionReply> {
        let req = req.into_inner();
        self.node.renew_session(req.shard, req.client_id).await?;
        Ok(GrpcResponse::new(pb::RenewSessionReply {}))
    }

    async fn get_lock(&self, req: GrpcRequest<pb::GetLockRequest>) -> GrpcResult<pb::GetLockReply> {
        let req = req.into_inner();
        let lock = req
            .lock
            .ok_or_else(|| MetaError::Invalid("GetLock without a lock".into()))?;
        let ino = lock.ino;
        let want = lock_from_pb(req.client_id, &lock)?;
        let conflict = self
            .node
            .read(ino_shard(ino), |txn| {
                fs::get_inode(txn, ino)?;
                Ok(locks::load(txn, ino)?.conflict(&want)?)
            })
            .await?;
        Ok(GrpcResponse::new(pb::GetLockReply {
            conflict: conflict.as_ref().map(lock_to_pb),
        }))
    }

    async fn alloc_slice_ids(
        &self,
        req: GrpcRequest<pb::AllocSliceIdsRequest>,
    ) -> GrpcResult<pb::AllocSliceIdsReply> {
        let count = req.into_inner().count;
        if count == 0 || count > ALLOC_MAX {
            return Err(MetaError::Invalid(format!("count must be 1 to {ALLOC_MAX}")).into());
        }
        let reply = self
            .node
            .propose_local(
                MAP_SHARD,
                Request {
                    key: None,
                    cmd: Command::Map(MapCommand::AllocSliceIds { count }),
                },
            )
            .await?;
        match reply {
            Reply::SliceIds { first, count } => {
                Ok(GrpcResponse::new(pb::AllocSliceIdsReply { first, count }))
            }
            _ => Err(Status::internal("slice allocation answered nothing")),
        }
    }

    async fn slice_refs(
        &self,
        req: GrpcRequest<pb::SliceRefsRequest>,
    ) -> GrpcResult<pb::SliceRefsReply> {
        let req = req.into_inner();
        if req.slice_ids.len() > SLICE_REFS_MAX {
            return Err(MetaError::Invalid(format!("at most {SLICE_REFS_MAX} slice ids")).into());
        }
        if req.shard > self.node.config().data_shards {
            return Err(MetaError::Invalid(format!("no shard {}", req.shard)).into());
        }
        let referenced = self.node.slice_refs(req.shard, req.slice_ids).await?;
        Ok(GrpcResponse::new(pb::SliceRefsReply { referenced }))
    }

    async fn list_slice_refs(
        &self,
        req: GrpcRequest<pb::ListSliceRefsRequest>,
    ) -> GrpcResult<pb::ListSliceRefsReply> {
        let req = req.into_inner();
        if req.shard == MAP_SHARD || req.shard > self.node.config().data_shards {
            return Err(MetaError::Invalid(format!("no data shard {}", req.shard)).into());
        }
        let limit = (req.limit as usize).clamp(1, SLICE_REFS_MAX);
        let (refs, next) = self
            .node
            .read(req.shard, |txn| {
                crate::slices::list_refs(txn, &req.after, limit)
            })
            .await?;
        Ok(GrpcResponse::new(pb::ListSliceRefsReply {
            refs: refs
                .into_iter()
                .map(|r| pb::SliceRef {
                    slice_id: r.slice_id,
                    ino: r.ino,
                    chunk: r.chunk,
                    size: r.size,
                })
                .collect(),
            next: next.unwrap_or_default().into(),
        }))
    }
}

/// The `Raft` gRPC service: openraft messages for every shard hosted here.
pub struct RaftService {
    pub node: Arc<MetaNode>,
}

fn decode_payload<T: serde::de::DeserializeOwned>(msg: &pb::RaftMessage) -> Result<T, Status> {
    bincode::deserialize(&msg.payload)
        .map_err(|e| Status::invalid_argument(format!("malformed raft payload: {e}")))
}

fn encode_payload<T: serde::Serialize>(shard: u32, value: &T) -> GrpcResult<pb::RaftMessage> {
    let payload = bincode::serialize(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(GrpcResponse::new(pb::RaftMessage {
        shard,
        payload: payload.into(),
    }))
}

impl RaftService {
    fn raft(&self, shard: u32) -> Result<&crate::types::Raft, Status> {
        self.node
            .raft(shard)
            .ok_or_else(|| Status::not_found(format!("shard {shard} is not hosted here")))
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: GrpcRequest<pb::RaftMessage>,
    ) -> GrpcResult<pb::RaftMessage> {
        let msg = req.into_inner();
        let rpc: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> =
            decode_payload(&msg)?;
        // A leader's commit index covers every entry committed before its
        // term only once it has committed one of its own term.
        let leader_commit = rpc
            .leader_commit
            .filter(|c| c.leader_id.term == rpc.vote.leader_id.term)
            .map(|c| c.index);
        let result = self.raft(msg.shard)?.append_entries(rpc).await;
        self.node.heard_from_leader(msg.shard, leader_commit);
        encode_payload(msg.shard, &result)
    }

    async fn vote(&self, req: GrpcRequest<pb::RaftMessage>) -> GrpcResult<pb::RaftMessage> {
        let msg = req.into_inner();
        let rpc: openraft::raft::VoteRequest<u64> = decode_payload(&msg)?;
        if !self
            .node
            .may_vote(msg.shard, rpc.last_log_id.map(|l| l.index))
        {
            return Err(Status::unavailable(
                "started with an empty store: not voting until caught up",
            ));
        }
        let result = self.raft(msg.shard)?.vote(rpc).await;
        encode_payload(msg.shard, &result)
    }

    async fn install_snapshot(
        &self,
        req: GrpcRequest<pb::RaftMessage>,
    ) -> GrpcResult<pb::RaftMessage> {
        let msg = req.into_inner();
        let rpc = decode_payload(&msg)?;
        let result = self.raft(msg.shard)?.install_snapshot(rpc).await;
        self.node.heard_from_leader(msg.shard, None);
        encode_payload(msg.shard, &result)
    }

    async fn propose(&self, req: GrpcRequest<pb::RaftMessage>) -> GrpcResult<pb::RaftMessage> {
        let msg = req.into_inner();
        let request: Request = decode_payload(&msg)?;
        let response = match self.node.propose_local(msg.shard, request).await {
            Ok(reply) => crate::types::Response(Ok(reply)),
            Err(MetaError::Fs(errno)) => crate::types::Response(Err(errno)),
            Err(e) => return Err(e.into()),
        };
        encode_payload(msg.shard, &response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::ids::make_ino;

    fn access_times(inos: &[u64]) -> PbOp {
        PbOp::AccessTimes(pb::AccessTimesOp {
            files: inos
                .iter()
                .map(|&ino| pb::AccessTime {
                    ino,
                    atime_ns: 2,
                    seen_atime_ns: 1,
                })
                .collect(),
        })
    }

    /// A batch of access times is refused before it is proposed when it names
    /// no file, more than `ACCESS_TIMES_MAX`, or files of several shards (it
    /// is one command on one shard).
    #[test]
    fn malformed_access_time_batches_are_refused() {
        let invalid = |op| matches!(op_from_pb(op), Err(MetaError::Invalid(_)));
        assert!(invalid(access_times(&[])));
        let many: Vec<u64> = (1..=crate::fs::ACCESS_TIMES_MAX as u64 + 1)
            .map(|seq| make_ino(1, seq))
            .collect();
        assert!(invalid(access_times(&many)));
        assert!(invalid(access_times(&[make_ino(1, 5), make_ino(2, 5)])));
        let most = &many[..crate::fs::ACCESS_TIMES_MAX];
        match op_from_pb(access_times(most)) {
            Ok(Op::AccessTimes { files }) => assert_eq!(files.len(), most.len()),
            other => panic!("{other:?}"),
        }
    }
}
