//! The coordinator of namespace mutations, run by the leader of the operation's
//! home shard (the shard of the parent directory, or of the inode).
//!
//! An operation confined to the home shard is one Raft command. One that touches
//! other shards (a directory placed elsewhere, a hard link or unlink of an inode
//! elsewhere, a rename between directories on different shards, a rename that
//! moves or replaces a directory whose inode is elsewhere) runs as a two-phase
//! transaction (`txn.rs`): all of its per-shard commands apply or none do, and
//! leaders recover transactions whose coordinator died.
//!
//! Exactly-once: single-shard commands are remembered under the client's
//! (client, seq) key; a transaction remembers only its commit decision under
//! that key, so a client retry after a lost answer finds and completes the
//! earlier commit rather than applying the operation twice.

use std::collections::BTreeMap;

use cairn_proto::ids::ino_shard;
use cairn_proto::ids::ShardId;
use cairn_proto::ids::ROOT_INO;
use cairn_proto::status::*;

use crate::error::MetaError;
use crate::fs;
use crate::fs::Entry;
use crate::fs::FsCommand;
use crate::fs::Kind;
use crate::fs::PutMode;
use crate::fs::RenameMode;
use crate::fs::Reply;
use crate::fs::SetAttrs;
use crate::fs::SliceRec;
use crate::node::now_ns;
use crate::node::MetaNode;
use crate::txn;
use crate::txn::TxnCommand;
use crate::types::Command;
use crate::types::Request;
use crate::types::RequestKey;
use crate::types::Response;

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
    /// A read's access-time update, at the read's time (`at`) if given.
    Access {
        ino: u64,
        at: Option<i64>,
    },
    /// Reads' access-time updates of files of one shard (at least one).
    AccessTimes {
        files: Vec<(u64, i64, i64)>,
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
    WriteInline {
        ino: u64,
        pos: u32,
        data: Vec<u8>,
        length: u64,
        mtime: i64,
    },
    Concat {
        target: u64,
        sources: Vec<u64>,
        mtime: i64,
    },
    Append {
        ino: u64,
        slices: Vec<(u64, u32)>,
        mtime: i64,
    },
    Fallocate {
        ino: u64,
        f: crate::holes::Fallocate,
        mtime: i64,
    },
    Open {
        ino: u64,
    },
    Close {
        ino: u64,
    },
    /// A file lock; the holder's client is the request's.
    SetLock {
        ino: u64,
        lock: crate::locks::LockRequest,
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
            Op::AccessTimes { files } => files.first().map_or(0, |f| ino_shard(f.0)),
            Op::SetAttr { ino, .. }
            | Op::Access { ino, .. }
            | Op::SetXattr { ino, .. }
            | Op::RemoveXattr { ino, .. }
            | Op::Commit { ino, .. }
            | Op::Append { ino, .. }
            | Op::WriteInline { ino, .. }
            | Op::Concat { target: ino, .. }
            | Op::Fallocate { ino, .. }
            | Op::Open { ino }
            | Op::Close { ino }
            | Op::SetLock { ino, .. } => ino_shard(*ino),
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

/// Marks an inode changed (its ctime) and nothing else.
/// How long to hold back a finish on another shard than home: tests set
/// `return(ms)` to look at a transaction finished on its home shard only.
fn remote_finish_stall() -> Option<u64> {
    fail::fail_point!("txn::before_remote_finish", |ms| ms
        .and_then(|m| m.parse().ok()));
    None
}

fn touch(ino: u64, now: i64) -> FsCommand {
    FsCommand::SetAttr {
        ino,
        set: SetAttrs::default(),
        now,
    }
}

/// A request without exactly-once key (idempotent by itself).
fn unkeyed(cmd: Command) -> Request {
    Request { key: None, cmd }
}

/// Whether a transaction's effects come from this attempt or from an earlier
/// attempt of the same client request (completed instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Now,
    Earlier,
}

/// Step number of the one command that applies a transaction whose actions
/// all landed on one shard.
const BATCH_STEP: u8 = 11;
/// How many inode numbers a coordinator reserves on another shard at once.
const INO_BLOCK: u32 = 256;
/// Step number under which a transaction's commit decision is remembered.
const DECIDE_STEP: u8 = 40;

impl MetaNode {
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
                // The directory inode is made on another shard, away from its
                // parent: it inherits a setgid parent's group here.
                let dir = self.getattr_anywhere(parent).await?;
                let (perm, gid) = fs::inherit(&dir, Kind::Dir, perm, caller.gid);
                let ino = self.reserved_ino(target).await?;
                let make = FsCommand::MakeDir {
                    ino,
                    parent,
                    perm,
                    uid: caller.uid,
                    gid,
                    now,
                };
                let put = FsCommand::PutEntry {
                    parent,
                    name: name.clone(),
                    entry: Entry {
                        ino,
                        kind: Kind::Dir,
                    },
                    mode: PutMode::MustNotExist,
                    now,
                };
                let applied = self
                    .run_txn(home, &step, vec![(target, make), (home, put)])
                    .await?;
                if applied == Applied::Earlier {
                    // An earlier attempt made the directory, with its own inode.
                    let entry = self.read_entry(parent, &name).await?;
                    let entry = entry.ok_or_else(|| MetaError::fs(ENOENT, "no such directory"))?;
                    let inode = self.getattr_anywhere(entry.ino).await?;
                    return Ok(Reply::Attr {
                        ino: entry.ino,
                        inode,
                    });
                }
                let inode = fs::new_inode(Kind::Dir, perm, caller.uid, gid, parent, now);
                Ok(Reply::Attr { ino, inode })
            }
            Op::Unlink { parent, name } => {
                if let Some(reply) = self.replay(home, &step).await? {
                    return Ok(reply);
                }
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
                if let Some(reply) = self.replay(home, &step).await? {
                    return Ok(reply);
                }
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
                let drop = FsCommand::BuryDir {
                    ino: entry.ino,
                    now,
                };
                self.run_txn(home, &step, vec![(shard, drop), (home, del)])
                    .await?;
                Ok(Reply::None)
            }
            Op::Link {
                ino,
                new_parent,
                new_name,
            } => {
                if self.replay(home, &step).await?.is_some() {
                    let inode = self.getattr_anywhere(ino).await?;
                    return Ok(Reply::Attr { ino, inode });
                }
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
            Op::Access { ino, at } => {
                let now = at.unwrap_or(now);
                local(FsCommand::Access { ino, now }).await
            }
            Op::AccessTimes { files } => local(FsCommand::AccessTimes { files }).await,
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
                    lease_ms: self.config().session_lease_ms as i64,
                })
                .await
            }
            Op::Close { ino } => {
                let client = key
                    .map(|(client, _)| client)
                    .ok_or_else(|| MetaError::Invalid("close needs a request id".into()))?;
                local(FsCommand::Close {
                    ino,
                    client,
                    now_ms: now / 1_000_000,
                })
                .await
            }
            Op::WriteInline {
                ino,
                pos,
                data,
                length,
                mtime,
            } => {
                local(FsCommand::WriteInline {
                    ino,
                    pos,
                    data,
                    length,
                    mtime,
                })
                .await
            }
            Op::SetLock { ino, mut lock } => {
                lock.holder.client = key
                    .map(|(client, _)| client)
                    .ok_or_else(|| MetaError::Invalid("a lock needs a request id".into()))?;
                let cmd = crate::locks::LockCommand::Set {
                    ino,
                    req: lock,
                    now_ms: now / 1_000_000,
                    lease_ms: self.config().session_lease_ms as i64,
                };
                self.propose_local(home, step.req(0, Command::Lock(cmd)))
                    .await
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
            Op::Concat {
                target,
                sources,
                mtime,
            } => {
                local(FsCommand::Concat {
                    target,
                    sources,
                    mtime,
                })
                .await
            }
            Op::Append { ino, slices, mtime } => {
                local(FsCommand::Append { ino, slices, mtime }).await
            }
            Op::Fallocate { ino, f, mtime } => local(FsCommand::Fallocate { ino, f, mtime }).await,
        }
    }

    /// Runs `actions` (commands per shard) atomically: all apply or none do.
    /// Actions of one shard are prepared and applied together, in order.
    /// Answers `Earlier` when an earlier attempt of this request committed
    /// and was completed instead.
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
    ) -> Result<Applied, MetaError> {
        let mut by_shard: BTreeMap<ShardId, Vec<FsCommand>> = BTreeMap::new();
        for (shard, cmd) in actions {
            by_shard.entry(shard).or_default().push(cmd);
        }
        if by_shard.len() == 1 {
            // Everything on one shard: one Raft command is atomic already.
            if let Some((shard, cmds)) = by_shard.pop_first() {
                let batch = step.req(BATCH_STEP, Command::Fs(FsCommand::Batch(cmds)));
                return self.propose(shard, batch).await.map(|_| Applied::Now);
            }
        }
        if let Some(earlier) = self.earlier_commit(home, step).await? {
            self.complete(home, earlier).await?;
            return Ok(Applied::Earlier);
        }
        let participants: Vec<ShardId> = by_shard.keys().copied().collect();
        let started_ms = now_ns() / 1_000_000;
        let id = rand::random::<u64>() | 1;
        // Round 1, all at once: the record with the home shard's own part
        // prepared, and every other participant's prepare. A prepare that
        // lands without its record (the coordinator died first) is rolled
        // back by its shard's recovery (`Resolve`), which leaves a tombstone
        // that refuses a record landing after it.
        let begin = TxnCommand::Begin {
            id,
            participants: participants.clone(),
            cmds: by_shard.remove(&home).unwrap_or_default(),
            now_ms: started_ms,
        };
        let begin = async {
            fail::fail_point!("txn::lost_begin", |_| Ok(Reply::None));
            self.propose_local(home, unkeyed(Command::Txn(begin))).await
        };
        let prepares = by_shard.into_iter().map(|(shard, cmds)| {
            let prepare = TxnCommand::Prepare {
                id,
                coordinator: home,
                cmds,
                started_ms,
            };
            self.propose(shard, unkeyed(Command::Txn(prepare)))
        });
        let (begun, prepared) = futures::join!(begin, futures::future::join_all(prepares));
        // The home part's failure first: it is the one a retry meets when its
        // earlier attempt applied (a name that exists now).
        let failure = std::iter::once(begun).chain(prepared).find_map(Result::err);
        fail::fail_point!("txn::after_prepare", |_| Err(MetaError::Raft(
            "failpoint txn::after_prepare".into()
        )));
        let commit = failure.is_none();
        if !commit {
            if let Some(earlier) = self.earlier_commit(home, step).await? {
                self.finish_txn(home, id, &participants, false).await?;
                self.complete(home, earlier).await?;
                return Ok(Applied::Earlier);
            }
        }
        // Round 2: the decision.
        let decide = TxnCommand::Decide { id, commit };
        let decide = if commit {
            step.req(DECIDE_STEP, Command::Txn(decide))
        } else {
            unkeyed(Command::Txn(decide))
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
        if decided_id != id && committed {
            // An earlier attempt of this request committed: drop this one.
            self.finish_txn(home, id, &participants, false).await?;
            self.complete(home, decided_id).await?;
            return Ok(Applied::Earlier);
        }
        // Round 3: every participant finishes at once.
        self.finish_txn(home, id, &participants, committed).await?;
        match (committed, failure) {
            (true, _) => Ok(Applied::Now),
            (false, Some(e)) => Err(e),
            // Recovery took this attempt for abandoned (it outlived
            // `txn-recover-after-ms`: a slow quorum, a stalled leader) and
            // rolled it back. Nothing was applied and the abort is not
            // remembered, so the client's retry runs the operation again:
            // EAGAIN says so (an errno like EIO would reach the application
            // as a failure of an operation that can still succeed).
            (false, None) => Err(MetaError::fs(
                EAGAIN,
                "transaction was rolled back by recovery; retry",
            )),
        }
    }

    /// An inode number of `shard` for a new directory, from a block reserved
    /// there ahead ([`INO_BLOCK`] at a time, one consensus round per block).
    /// Numbers of a block left unused when this node stops are never used.
    async fn reserved_ino(&self, shard: ShardId) -> Result<u64, MetaError> {
        let take = |inos: &mut BTreeMap<ShardId, std::ops::Range<u64>>| {
            inos.get_mut(&shard).and_then(|r| r.next())
        };
        if let Some(ino) = take(&mut self.inos.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(ino);
        }
        let alloc = FsCommand::AllocInos { count: INO_BLOCK };
        let Reply::Ino(first) = self.propose(shard, unkeyed(Command::Fs(alloc))).await? else {
            return Err(MetaError::Storage("AllocInos answered no inode".into()));
        };
        let mut inos = self.inos.lock().unwrap_or_else(|p| p.into_inner());
        // Racing callers may both reserve a block: the later one wins, the
        // other block's numbers stay unused.
        inos.insert(shard, first..first + u64::from(INO_BLOCK));
        take(&mut inos).ok_or_else(|| MetaError::Storage("empty inode block".into()))
    }

    /// The outcome of an earlier attempt of this client request, if one was
    /// applied: its remembered single-shard reply, or success once an earlier
    /// transaction that committed is finished. Operations that read before
    /// they propose (unlink, rmdir, rename, link) ask this first, so a retry
    /// after a lost answer is answered as the first attempt was instead of
    /// failing on the state that attempt changed (ENOENT for a retried unlink).
    async fn replay(&self, home: ShardId, step: &Steps) -> Result<Option<Reply>, MetaError> {
        for single in [0, BATCH_STEP] {
            let Some(key) = step.key(single) else {
                return Ok(None);
            };
            let remembered = self
                .read(home, |txn| crate::store::remembered(txn, &key))
                .await?;
            if let Some(Response(reply)) = remembered {
                return reply.map(Some).map_err(MetaError::Fs);
            }
        }
        match self.earlier_commit(home, step).await? {
            Some(id) => {
                self.complete(home, id).await?;
                Ok(Some(Reply::None))
            }
            None => Ok(None),
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
        let record: Option<txn::TxnRecord> = self
            .read(home, |t| t.get_as(&crate::keys::txn_record(id)))
            .await?;
        if let Some(record) = record {
            let committed = record.state == txn::TxnState::Committed;
            self.finish_txn(home, id, &record.participants, committed)
                .await?;
        }
        Ok(())
    }

    /// Sends the decision to every participant at once; the record is then
    /// forgotten in the background (recovery finishes and forgets it if this
    /// node dies first). Until a shard finishes, its locked keys answer
    /// EAGAIN, so no reader or command sees one shard's part without the
    /// others' (a new directory's name before its inode).
    async fn finish_txn(
        &self,
        home: ShardId,
        id: u64,
        participants: &[ShardId],
        commit: bool,
    ) -> Result<(), MetaError> {
        let now_ms = now_ns() / 1_000_000;
        let finishes = participants.iter().map(|&shard| async move {
            let stall = if shard == home {
                None
            } else {
                remote_finish_stall()
            };
            if let Some(ms) = stall {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let finish = TxnCommand::Finish { id, commit, now_ms };
            self.propose(shard, unkeyed(Command::Txn(finish))).await?;
            fail::fail_point!("txn::after_finish", |_| Err(MetaError::Raft(
                "failpoint txn::after_finish".into()
            )));
            Ok::<(), MetaError>(())
        });
        for result in futures::future::join_all(finishes).await {
            result?;
        }
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(home)
            .or_default()
            .push(id);
        Ok(())
    }

    /// Forgets, on each shard led here, the records of transactions finished
    /// since the last call: one command per shard.
    pub(crate) async fn forget_finished_txns(&self) -> Result<(), MetaError> {
        let finished =
            std::mem::take(&mut *self.finished.lock().unwrap_or_else(|p| p.into_inner()));
        for (shard, ids) in finished {
            let forget = TxnCommand::Forget { ids };
            self.propose_local(shard, unkeyed(Command::Txn(forget)))
                .await?;
        }
        Ok(())
    }

    /// Finishes or rolls back transactions of the shards led here that have been
    /// in flight longer than `txn-recover-after-ms` (their coordinator died or
    /// gave up).
    pub(crate) async fn recover_txns(&self) {
        let now_ms = now_ns() / 1_000_000;
        for shard in self.shards() {
            if self.leader_of(shard) != Some(self.id) {
                continue;
            }
            let Ok(records) = self.read(shard, txn::records).await else {
                continue;
            };
            for (id, record) in records {
                if !self.outlived_recovery(record.started_ms, now_ms) {
                    continue;
                }
                let result = async {
                    let decide = TxnCommand::Decide { id, commit: false };
                    let committed = match self
                        .propose_local(shard, unkeyed(Command::Txn(decide)))
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
            self.recover_prepares(shard, now_ms).await;
        }
    }

    /// Whether a transaction begun at `started_ms` is old enough for
    /// recovery (`txn-recover-after-ms`): its coordinator died or gave up.
    fn outlived_recovery(&self, started_ms: i64, now_ms: i64) -> bool {
        now_ms - started_ms >= self.config().txn_recover_after_ms as i64
    }

    /// Rolls back or completes, on `shard` (led here), the prepares of other
    /// shards' transactions that outlived `txn-recover-after-ms`, as their
    /// coordinator shard resolves them: a prepare whose record never landed
    /// (its coordinator died between the two) is rolled back, and the record
    /// can no longer land.
    async fn recover_prepares(&self, shard: ShardId, now_ms: i64) {
        let Ok(intents) = self.read(shard, txn::foreign_intents).await else {
            return;
        };
        for (id, intent) in intents {
            if !self.outlived_recovery(intent.started_ms, now_ms) {
                continue;
            }
            let result = async {
                let resolve = TxnCommand::Resolve { id, now_ms };
                let reply = self
                    .propose(intent.coordinator, unkeyed(Command::Txn(resolve)))
                    .await?;
                let Reply::Txn {
                    committed: Some(commit),
                    ..
                } = reply
                else {
                    // Undecided: the coordinator shard's recovery decides it.
                    return Ok(());
                };
                tracing::info!(shard, id, commit, "recovering a prepare");
                let finish = TxnCommand::Finish { id, commit, now_ms };
                self.propose_local(shard, unkeyed(Command::Txn(finish)))
                    .await
                    .map(drop)
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(shard, id, "recovering a prepare: {e}");
            }
        }
    }

    /// Drops, on every shard led here, transaction tombstones older than
    /// [`txn::TOMBSTONE_KEEP_MS`] (a prepare cannot arrive that late: it is
    /// refused by the horizon the trim leaves behind anyway).
    pub(crate) async fn trim_txn_tombstones(&self) -> Result<(), MetaError> {
        let before_ms = now_ns() / 1_000_000 - txn::TOMBSTONE_KEEP_MS;
        for shard in self.shards() {
            if self.leader_of(shard) != Some(self.id) {
                continue;
            }
            if !self
                .read(shard, |t| txn::has_tombstones_before(t, before_ms))
                .await?
            {
                continue;
            }
            let trim = TxnCommand::Trim { before_ms };
            self.propose_local(shard, unkeyed(Command::Txn(trim)))
                .await?;
        }
        Ok(())
    }

    /// The path from directory `dir` up to the root as (directory, its
    /// parent) pairs, root excluded; EINVAL if `moved` lies on it (a directory
    /// cannot move below itself).
    async fn ancestry(&self, dir: u64, moved: u64) -> Result<Vec<(u64, u64)>, MetaError> {
        let mut path = Vec::new();
        let mut cur = dir;
        for _ in 0..4096 {
            if cur == moved {
                return Err(MetaError::fs(
                    EINVAL,
                    "cannot move a directory below itself",
                ));
            }
            if cur == ROOT_INO {
                return Ok(path);
            }
            let parent = self.getattr_anywhere(cur).await?.parent;
            path.push((cur, parent));
            cur = parent;
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
        if let Some(reply) = self.replay(home, step).await? {
            return Ok(reply);
        }
        let dst_home = ino_shard(new_parent);
        let src = self
            .read_entry(parent, &name)
            .await?
            .ok_or_else(|| MetaError::fs(ENOENT, "no such file"))?;
        let dst = self.read_entry(new_parent, &new_name).await?;
        // A directory moving to another parent: the path above its new parent
        // is asserted in the same atomic step (and locked while a transaction
        // prepares), so two crossing renames cannot both pass this check and
        // make a cycle. An exchange moves the other directory the other way.
        let mut asserts = Vec::new();
        if parent != new_parent {
            if src.kind == Kind::Dir {
                asserts.extend(self.ancestry(new_parent, src.ino).await?);
            }
            if let Some(d) = dst.filter(|d| mode == RenameMode::Exchange && d.kind == Kind::Dir) {
                asserts.extend(self.ancestry(parent, d.ino).await?);
            }
        }
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
        fail::fail_point!("rename::after_check");
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
        // (a same-shard Rename fixes its own shard's inodes itself). A moved
        // inode's ctime changes wherever it lives, as on local file systems, so
        // `rename` behaves the same whichever shard placement drew. A ctime
        // alone is not worth a transaction (POSIX leaves it to the file
        // system): `touches` are applied after the rename commits.
        let fixed_by_rename = |ino: u64| home == dst_home && ino_shard(ino) == home;
        let mut touches = Vec::new();
        if !fixed_by_rename(src.ino) {
            if src.kind == Kind::Dir && parent != new_parent {
                let cmd = FsCommand::SetParent {
                    ino: src.ino,
                    parent: new_parent,
                    now,
                };
                actions.push((ino_shard(src.ino), cmd));
            } else {
                touches.push((ino_shard(src.ino), touch(src.ino, now)));
            }
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
                (RenameMode::Exchange, _) => {
                    touches.push((ino_shard(d.ino), touch(d.ino, now)));
                    None
                }
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
        self.finish_rename(home, step, actions, touches, asserts, src, dst)
            .await
    }

    /// Commits a rename's `actions` with its ancestry `asserts`, then the
    /// ctime `touches` of renamed inodes on other shards: inside the
    /// transaction when there is one anyway (no extra round), else after the
    /// single-shard command, best effort.
    #[allow(clippy::too_many_arguments)]
    async fn finish_rename(
        &self,
        home: ShardId,
        step: &Steps,
        mut actions: Vec<(ShardId, FsCommand)>,
        touches: Vec<(ShardId, FsCommand)>,
        asserts: Vec<(u64, u64)>,
        src: Entry,
        dst: Option<Entry>,
    ) -> Result<Reply, MetaError> {
        for (ino, parent) in asserts {
            actions.push((ino_shard(ino), FsCommand::AssertParent { ino, parent }));
        }
        let one_shard = actions.iter().all(|(shard, _)| *shard == home);
        if one_shard {
            self.run_txn(home, step, actions).await?;
            let touched = touches.into_iter().map(|(shard, cmd)| async move {
                if let Err(e) = self.propose(shard, unkeyed(Command::Fs(cmd))).await {
                    tracing::debug!(shard, "ctime of a renamed inode: {e}");
                }
            });
            futures::future::join_all(touched).await;
        } else {
            actions.extend(touches);
            self.run_txn(home, step, actions).await?;
        }
        Ok(Reply::Renamed {
            moved: src,
            replaced: dst,
        })
    }
}
