//! Namespace commands and how a shard applies them.
//!
//! Every command here touches one shard only and is applied atomically (one
//! RocksDB batch per Raft entry). Operations that span shards are split into
//! these steps by the coordinator in `node.rs`. Invariants kept per shard:
//! a directory's entries and its files' inodes live on the directory's shard;
//! a directory's nlink is 2 + its subdirectories; an inode whose nlink drops to 0
//! is deleted and its slices are queued for block deletion.

use std::collections::BTreeMap;

use cairn_proto::ids::ino_shard;
use cairn_proto::ids::make_ino;
use cairn_proto::ids::CHUNK_SIZE;
use cairn_proto::ids::INO_SEQ_LIMIT;
use cairn_proto::ids::ROOT_INO;
use cairn_proto::name::validate_name;
use cairn_proto::name::PATH_MAX;
use cairn_proto::status::*;
use serde::Deserialize;
use serde::Serialize;

use crate::error::MetaError;
use crate::keys;
use crate::kv::Txn;
use crate::slices::paint;
use crate::types::Errno;

/// Longest xattr value.
pub const XATTR_VALUE_MAX: usize = 64 << 10;
/// Most bytes of a file kept inline in its inode record (data-on-metadata).
/// Clients choose their own, smaller threshold (64 KiB by default).
pub const INLINE_MAX: usize = 1 << 20;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// An inode record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Inode {
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub rdev: u32,
    /// Directories: the parent directory.
    pub parent: u64,
}

/// What a directory entry points at.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ino: u64,
    pub kind: Kind,
}

/// A slice of a chunk; see `Slice` in the proto.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceRec {
    pub slice_id: u64,
    pub pos: u32,
    pub len: u32,
    pub off: u32,
    pub size: u32,
}

/// Attribute changes; `None` leaves a field alone.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SetAttrs {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<i64>,
    pub mtime: Option<i64>,
}

/// How `PutEntry` treats an existing name.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Fail with EEXIST.
    MustNotExist,
    /// The name must point at `expect`, which is replaced (rename over it).
    Replace { expect: u64 },
}

/// rename(2) flags.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum FsCommand {
    /// Creates the root directory on shard 1 if missing.
    InitRoot {
        now: i64,
    },
    /// Creates a file, node, symlink or (same-shard) directory and its entry.
    Create {
        parent: u64,
        name: Vec<u8>,
        kind: Kind,
        perm: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
        target: Option<Vec<u8>>,
        now: i64,
    },
    /// Reserves `count` consecutive inode numbers on this shard (for new
    /// directories made here by other shards' coordinators); answers the first.
    AllocInos {
        count: u32,
    },
    /// Creates a directory inode with a reserved number and no entry yet.
    MakeDir {
        ino: u64,
        parent: u64,
        perm: u32,
        uid: u32,
        gid: u32,
        now: i64,
    },
    /// Adds or replaces an entry; answers the entry it replaced.
    PutEntry {
        parent: u64,
        name: Vec<u8>,
        entry: Entry,
        mode: PutMode,
        now: i64,
    },
    /// Removes an entry that must point at `expect`.
    DelEntry {
        parent: u64,
        name: Vec<u8>,
        expect: u64,
        now: i64,
    },
    /// Removes a non-directory entry; a local inode loses a link.
    Unlink {
        parent: u64,
        name: Vec<u8>,
        now: i64,
    },
    /// Removes an empty directory whose inode is local.
    Rmdir {
        parent: u64,
        name: Vec<u8>,
        now: i64,
    },
    /// Changes a local inode's link count; it is deleted at 0.
    AdjustNlink {
        ino: u64,
        delta: i32,
        now: i64,
    },
    /// Deletes an empty directory inode whose entry is removed elsewhere.
    DropDir {
        ino: u64,
    },
    /// Points a directory's `..` at a new parent.
    SetParent {
        ino: u64,
        parent: u64,
        now: i64,
    },
    /// rename(2) where both parents are on this shard.
    Rename {
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        mode: RenameMode,
        now: i64,
    },
    SetAttr {
        ino: u64,
        set: SetAttrs,
        now: i64,
    },
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
        now: i64,
    },
    RemoveXattr {
        ino: u64,
        name: Vec<u8>,
        now: i64,
    },
    /// A client opens a file: the inode is kept (even unlinked) while open.
    Open {
        ino: u64,
        client: u64,
        now_ms: i64,
        lease_ms: i64,
    },
    /// A client closes a file it opened.
    Close {
        ino: u64,
        client: u64,
        now_ms: i64,
    },
    /// Extends a client's session on this shard.
    RenewSession {
        client: u64,
        now_ms: i64,
        lease_ms: i64,
    },
    /// Drops the open files of sessions whose lease ran out, and deletes
    /// orphans older than `orphans_before_ms`.
    ExpireSessions {
        now_ms: i64,
        orphans_before_ms: i64,
    },
    /// Removes slices whose blocks were deleted from the deletion queue.
    DequeueSlices {
        ids: Vec<u64>,
    },
    /// Several commands applied in order as one (nested at most
    /// [`MAX_BATCH_DEPTH`] deep: decoding refuses deeper ones).
    Batch(#[serde(deserialize_with = "bounded_batch")] Vec<FsCommand>),
    /// Writes into a file's inline data; refused (ENOTSUP) once it has slices.
    WriteInline {
        ino: u64,
        pos: u32,
        data: Vec<u8>,
        length: u64,
        mtime: i64,
    },
    /// Appends written slices to a file's chunks and extends its length.
    Commit {
        ino: u64,
        chunks: Vec<(u32, Vec<SliceRec>)>,
        length: u64,
        mtime: i64,
    },
    /// Moves the sources' slices, in order, to the end of `target`; the
    /// sources are left empty. See `ConcatOp` in the proto.
    Concat {
        target: u64,
        sources: Vec<u64>,
        mtime: i64,
    },
    /// Fails (EAGAIN) unless directory `ino`'s parent is still `parent`, and
    /// writes its inode back unchanged so a prepared transaction locks it: a
    /// rename that moves a directory asserts the path from its new parent up
    /// to the root, so no concurrent rename can make it its own ancestor.
    AssertParent {
        ino: u64,
        parent: u64,
    },
    /// [`FsCommand::DropDir`] that keeps the removed directory's inode as an
    /// orphan (see [`bury_dir`]). A new variant, so logged `DropDir`s still
    /// decode and apply as they did.
    BuryDir {
        ino: u64,
        now: i64,
    },
    /// A read's access-time update: atime moves forward to `now`, ctime
    /// stays (unlike utimensat), so relatime's next check sees it current.
    Access {
        ino: u64,
        now: i64,
    },
    /// O_APPEND: whole slice objects `(slice id, length)` placed one after
    /// the other at the file's size *as this command applies*, so appends
    /// from different clients never overlap and the size grows by their sum.
    Append {
        ino: u64,
        slices: Vec<(u64, u32)>,
        mtime: i64,
    },
    /// fallocate(2): the length grows, or a range is zeroed as holes (see
    /// `holes.rs`).
    Fallocate {
        ino: u64,
        f: crate::holes::Fallocate,
        mtime: i64,
    },
    /// Reads' access-time updates, `(ino, read time, atime the reader saw)`:
    /// see [`access_times`].
    AccessTimes {
        files: Vec<(u64, i64, i64)>,
    },
}

/// Most files one [`FsCommand::AccessTimes`] updates.
pub const ACCESS_TIMES_MAX: usize = 4096;

/// Moves each file's atime forward to the read's time, unless the file is
/// gone or its atime was set back since the reader saw it (below the atime it
/// saw: a utimensat into the past, which wins).
fn access_times(txn: &mut Txn, files: &[(u64, i64, i64)]) -> Result<Reply, MetaError> {
    for &(ino, atime, seen_atime) in files {
        let Some(mut inode) = txn.get_as::<Inode>(&keys::inode(ino))? else {
            continue;
        };
        if inode.atime >= seen_atime && atime > inode.atime {
            inode.atime = atime;
            put_inode(txn, ino, &inode)?;
        }
    }
    Ok(Reply::None)
}

/// How deep batches may nest (the coordinator nests none; one level spare).
pub const MAX_BATCH_DEPTH: u32 = 2;

thread_local! {
    static BATCH_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Decodes a batch's commands, refusing batches nested deeper than
/// [`MAX_BATCH_DEPTH`], so a hostile message cannot recurse the decoder (or
/// apply) off the stack.
fn bounded_batch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<FsCommand>, D::Error> {
    struct Level;
    impl Drop for Level {
        fn drop(&mut self) {
            BATCH_DEPTH.with(|c| c.set(c.get().saturating_sub(1)));
        }
    }
    let depth = BATCH_DEPTH.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    let _level = Level;
    if depth > MAX_BATCH_DEPTH {
        return Err(serde::de::Error::custom("batches nested too deep"));
    }
    Vec::<FsCommand>::deserialize(d)
}

/// Most slice objects one append carries (the client cuts its objects at
/// 64 MiB, so 64 GiB per append).
pub const APPEND_MAX_SLICES: usize = 1024;

/// The largest file size: chunk numbers are u32.
pub const MAX_FILE_SIZE: u64 = (u32::MAX as u64 + 1) * CHUNK_SIZE;

fn check_size(size: u64) -> Result<(), MetaError> {
    if size > MAX_FILE_SIZE {
        return Err(err(EFBIG, "file too large"));
    }
    Ok(())
}

/// What a command answers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Reply {
    None,
    Attr {
        ino: u64,
        inode: Inode,
    },
    /// The entry replaced or removed, if any.
    Entry(Option<Entry>),
    /// rename: the entry moved and the one it replaced or exchanged with.
    Renamed {
        moved: Entry,
        replaced: Option<Entry>,
    },
    /// Slice ids [first, first + count).
    SliceIds {
        first: u64,
        count: u32,
    },
    /// A reserved inode number.
    Ino(u64),
    /// A transaction id, and its decision once made.
    Txn {
        id: u64,
        committed: Option<bool>,
    },
}

pub(crate) type FsResult = Result<Reply, MetaError>;

fn err(errno: i32, message: &str) -> MetaError {
    MetaError::Fs(Errno::new(errno, message))
}

/// Opens or extends a client's session on this shard until `expiry_ms`.
pub fn touch_session(txn: &mut Txn, client: u64, expiry_ms: i64) -> Result<(), MetaError> {
    txn.put_as(keys::session(client), &expiry_ms)
}

/// Inodes on this shard (for statfs).
pub fn inode_count(txn: &Txn) -> Result<u64, MetaError> {
    Ok(txn.get_as(keys::INODES)?.unwrap_or(0))
}

fn count_inodes(txn: &mut Txn, delta: i64) -> Result<(), MetaError> {
    let n = inode_count(txn)?.saturating_add_signed(delta);
    txn.put_as(keys::INODES.to_vec(), &n)
}

/// Whether some client session on this shard has run out of lease, or an
/// orphan has waited out its grace (orphaned before `orphans_before_ms`).
pub fn has_expired_sessions(
    txn: &Txn,
    now_ms: i64,
    orphans_before_ms: i64,
) -> Result<bool, MetaError> {
    for (_, v) in txn.scan(&[keys::SESSION], b"", usize::MAX)? {
        if crate::kv::decode::<i64>(&v)? <= now_ms {
            return Ok(true);
        }
    }
    for (_, v) in txn.scan(&[keys::ORPHAN], b"", usize::MAX)? {
        if crate::kv::decode::<i64>(&v)? < orphans_before_ms {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Up to `limit` slices waiting for their blocks to be deleted: (id, size).
pub fn gc_queue(txn: &Txn, limit: usize) -> Result<Vec<(u64, u32)>, MetaError> {
    let mut out = Vec::new();
    for (k, v) in txn.scan(&[keys::GC], b"", limit)? {
        let id = key_u64(&k, 1, "queue")?;
        out.push((id, crate::kv::decode(&v)?));
    }
    Ok(out)
}

pub fn get_inode(txn: &Txn, ino: u64) -> Result<Inode, MetaError> {
    txn.get_as(&keys::inode(ino))?
        .ok_or_else(|| err(ENOENT, "no such inode"))
}

pub fn get_entry(txn: &Txn, parent: u64, name: &[u8]) -> Result<Option<Entry>, MetaError> {
    txn.get_as(&keys::dentry(parent, name))
}

pub(crate) fn put_inode(txn: &mut Txn, ino: u64, inode: &Inode) -> Result<(), MetaError> {
    txn.put_as(keys::inode(ino), inode)
}

fn is_local(txn: &Txn, ino: u64) -> bool {
    ino_shard(ino) == txn.shard()
}

/// A directory on this shard that accepts changes to its entries.
fn parent_dir(txn: &Txn, parent: u64) -> Result<Inode, MetaError> {
    if !is_local(txn, parent) {
        return Err(MetaError::Invalid(format!(
            "directory {parent:#x} is not on shard {}",
            txn.shard()
        )));
    }
    let dir = get_inode(txn, parent)?;
    if dir.kind != Kind::Dir {
        return Err(err(ENOTDIR, "not a directory"));
    }
    if dir.nlink == 0 {
        return Err(err(ENOENT, "directory was removed"));
    }
    Ok(dir)
}

/// Removes an empty directory's inode the way a file's last link goes: it
/// stays, with no links, as an orphan until the next expiry pass after a
/// session lease, so a process whose cwd it is (or that has it open) can
/// still stat it and list it empty, as on Linux, while nothing can be made in
/// it (`parent_dir`).
fn bury_dir(txn: &mut Txn, ino: u64, now: i64) -> Result<(), MetaError> {
    let mut dir = get_inode(txn, ino)?;
    dir.nlink = 0;
    dir.ctime = now;
    put_inode(txn, ino, &dir)?;
    txn.put_as(keys::orphan(ino), &(now / 1_000_000))
}

fn alloc_ino(txn: &mut Txn) -> Result<u64, MetaError> {
    alloc_inos(txn, 1)
}

/// Reserves `count` (1 to 4096) consecutive inode numbers; answers the first.
fn alloc_inos(txn: &mut Txn, count: u32) -> Result<u64, MetaError> {
    if !(1..=4096).contains(&count) {
        return Err(MetaError::Invalid(format!("cannot reserve {count} inodes")));
    }
    let first = if txn.shard() == ino_shard(ROOT_INO) {
        2
    } else {
        1
    };
    let next: u64 = txn.get_as(keys::NEXT_INO)?.unwrap_or(first);
    let end = next + u64::from(count);
    if end > INO_SEQ_LIMIT {
        return Err(MetaError::fs(ENOSPC, "no inode numbers left on this shard"));
    }
    txn.put_as(keys::NEXT_INO.to_vec(), &end)?;
    Ok(make_ino(txn.shard(), next))
}

/// The (perm, gid) of a new `kind` inode made in directory `dir`: in a setgid
/// directory it takes the directory's group instead of the caller's, and a new
/// subdirectory keeps the setgid bit (as Linux does), so every front end and
/// both mkdir paths (same-shard and cross-shard) agree.
pub fn inherit(dir: &Inode, kind: Kind, perm: u32, gid: u32) -> (u32, u32) {
    if dir.perm & 0o2000 == 0 {
        return (perm, gid);
    }
    let perm = if kind == Kind::Dir {
        perm | 0o2000
    } else {
        perm
    };
    (perm, dir.gid)
}

pub fn new_inode(kind: Kind, perm: u32, uid: u32, gid: u32, parent: u64, now: i64) -> Inode {
    Inode {
        kind,
        perm: perm & 0o7777,
        uid,
        gid,
        size: 0,
        nlink: if kind == Kind::Dir { 2 } else { 1 },
        atime: now,
        mtime: now,
        ctime: now,
        rdev: 0,
        parent: if kind == Kind::Dir { parent } else { 0 },
    }
}

/// Adds `entry` under `parent` (which must be local and open for changes) and
/// keeps the parent's nlink and times right.
fn link_into(txn: &mut Txn, parent: u64, name: &[u8], entry: Entry, now: i64) -> FsResult {
    let mut dir = parent_dir(txn, parent)?;
    txn.put_as(keys::dentry(parent, name), &entry)?;
    if entry.kind == Kind::Dir {
        dir.nlink += 1;
    }
    dir.mtime = now;
    dir.ctime = now;
    put_inode(txn, parent, &dir)?;
    Ok(Reply::None)
}

fn unlink_from(txn: &mut Txn, parent: u64, name: &[u8], entry: Entry, now: i64) -> FsResult {
    let mut dir = parent_dir(txn, parent)?;
    txn.delete(keys::dentry(parent, name));
    if entry.kind == Kind::Dir {
        dir.nlink = dir.nlink.saturating_sub(1);
    }
    dir.mtime = now;
    dir.ctime = now;
    put_inode(txn, parent, &dir)?;
    Ok(Reply::None)
}

fn dir_is_empty(txn: &Txn, ino: u64) -> Result<bool, MetaError> {
    Ok(txn.scan(&keys::dentry_prefix(ino), b"", 1)?.is_empty())
}

/// Drops one link of a local inode. At zero it is deleted, unless a client
/// still has it open: then it stays, unnamed, until the last close.
fn drop_link(txn: &mut Txn, ino: u64, now: i64) -> Result<(), MetaError> {
    let mut inode = get_inode(txn, ino)?;
    inode.nlink = inode.nlink.saturating_sub(1);
    inode.ctime = now;
    if inode.kind == Kind::Dir {
        return delete_inode(txn, ino);
    }
    put_inode(txn, ino, &inode)?;
    reap(txn, ino, now / 1_000_000)
}

/// Marks an inode that has no links left and no registered opener as an
/// orphan. Clients register an open only once it has lasted a third of the
/// session lease (most opens are short and cost no metadata write), so an
/// orphan is deleted only after a whole lease without a registered opener.
fn reap(txn: &mut Txn, ino: u64, now_ms: i64) -> Result<(), MetaError> {
    let Some(inode) = txn.get_as::<Inode>(&keys::inode(ino))? else {
        return Ok(());
    };
    if inode.nlink == 0 && !is_open(txn, ino)? {
        txn.put_as(keys::orphan(ino), &now_ms)?;
    }
    Ok(())
}

/// The big-endian u64 at byte `at` of a `what` key.
fn key_u64(k: &[u8], at: usize, what: &str) -> Result<u64, MetaError> {
    keys::u64_at(k, at).ok_or_else(|| MetaError::Storage(format!("malformed {what} key")))
}

fn is_open(txn: &Txn, ino: u64) -> Result<bool, MetaError> {
    Ok(!txn.scan(&keys::open_prefix(ino), b"", 1)?.is_empty())
}

/// Removes an inode with its xattrs, symlink target and chunks; its slices go to
/// the block-deletion queue.
fn delete_inode(txn: &mut Txn, ino: u64) -> Result<(), MetaError> {
    txn.delete(keys::inode(ino));
    count_inodes(txn, -1)?;
    txn.delete(keys::symlink(ino));
    txn.delete(keys::inline(ino));
    crate::locks::drop_inode(txn, ino)?;
    for (k, _) in txn.scan(&keys::xattr_prefix(ino), b"", usize::MAX)? {
        txn.delete(k);
    }
    crate::slices::drop_chunks(txn, ino)
}

/// Applies one namespace command.
pub fn apply(txn: &mut Txn, cmd: &FsCommand) -> FsResult {
    match cmd {
        FsCommand::InitRoot { now } => {
            if txn.get(&keys::inode(ROOT_INO))?.is_none() && txn.shard() == ino_shard(ROOT_INO) {
                let root = new_inode(Kind::Dir, 0o755, 0, 0, ROOT_INO, *now);
                put_inode(txn, ROOT_INO, &root)?;
                count_inodes(txn, 1)?;
            }
            Ok(Reply::None)
        }
        FsCommand::Create {
            parent,
            name,
            kind,
            perm,
            rdev,
            uid,
            gid,
            exclusive,
            target,
            now,
        } => {
            validate_name(name)?;
            let dir = parent_dir(txn, *parent)?;
            if let Some(existing) = get_entry(txn, *parent, name)? {
                if *exclusive || *kind != Kind::File || existing.kind != Kind::File {
                    return Err(err(EEXIST, "file exists"));
                }
                let inode = get_inode(txn, existing.ino)?;
                return Ok(Reply::Attr {
                    ino: existing.ino,
                    inode,
                });
            }
            let ino = alloc_ino(txn)?;
            let (perm, gid) = inherit(&dir, *kind, *perm, *gid);
            let mut inode = new_inode(*kind, perm, *uid, gid, *parent, *now);
            inode.rdev = *rdev;
            if let Some(target) = target {
                if target.is_empty() || target.len() > PATH_MAX || target.contains(&0) {
                    return Err(err(EINVAL, "invalid symlink target"));
                }
                inode.size = target.len() as u64;
                txn.put(keys::symlink(ino), target.clone());
            }
            put_inode(txn, ino, &inode)?;
            count_inodes(txn, 1)?;
            link_into(txn, *parent, name, Entry { ino, kind: *kind }, *now)?;
            Ok(Reply::Attr { ino, inode })
        }
        FsCommand::AllocInos { count } => Ok(Reply::Ino(alloc_inos(txn, *count)?)),
        FsCommand::MakeDir {
            ino,
            parent,
            perm,
            uid,
            gid,
            now,
        } => {
            if ino_shard(*ino) != txn.shard() || txn.get(&keys::inode(*ino))?.is_some() {
                return Err(MetaError::Invalid(format!(
                    "inode {ino:#x} cannot be made here"
                )));
            }
            let inode = new_inode(Kind::Dir, *perm, *uid, *gid, *parent, *now);
            put_inode(txn, *ino, &inode)?;
            count_inodes(txn, 1)?;
            Ok(Reply::Attr { ino: *ino, inode })
        }
        FsCommand::PutEntry {
            parent,
            name,
            entry,
            mode,
            now,
        } => {
            validate_name(name)?;
            let old = get_entry(txn, *parent, name)?;
            match (mode, old) {
                (PutMode::MustNotExist, Some(_)) => return Err(err(EEXIST, "file exists")),
                (PutMode::Replace { .. }, None) => {
                    return Err(err(EAGAIN, "entry changed during the operation"))
                }
                (PutMode::Replace { expect }, Some(old)) if old.ino != *expect => {
                    return Err(err(EAGAIN, "entry changed during the operation"))
                }
                _ => {}
            }
            if let Some(old) = old {
                unlink_from(txn, *parent, name, old, *now)?;
            }
            link_into(txn, *parent, name, *entry, *now)?;
            Ok(Reply::Entry(old))
        }
        FsCommand::DelEntry {
            parent,
            name,
            expect,
            now,
        } => match get_entry(txn, *parent, name)? {
            Some(entry) if entry.ino == *expect => {
                unlink_from(txn, *parent, name, entry, *now)?;
                Ok(Reply::Entry(Some(entry)))
            }
            Some(_) => Err(err(EAGAIN, "entry changed during the operation")),
            None => Err(err(ENOENT, "no such entry")),
        },
        FsCommand::Unlink { parent, name, now } => {
            let entry =
                get_entry(txn, *parent, name)?.ok_or_else(|| err(ENOENT, "no such file"))?;
            if entry.kind == Kind::Dir {
                return Err(err(EISDIR, "is a directory"));
            }
            unlink_from(txn, *parent, name, entry, *now)?;
            if is_local(txn, entry.ino) {
                drop_link(txn, entry.ino, *now)?;
            }
            Ok(Reply::Entry(Some(entry)))
        }
        FsCommand::Rmdir { parent, name, now } => {
            let entry =
                get_entry(txn, *parent, name)?.ok_or_else(|| err(ENOENT, "no such directory"))?;
            if entry.kind != Kind::Dir {
                return Err(err(ENOTDIR, "not a directory"));
            }
            if !is_local(txn, entry.ino) {
                return Err(MetaError::Invalid(
                    "directory inode is on another shard".into(),
                ));
            }
            if !dir_is_empty(txn, entry.ino)? {
                return Err(err(ENOTEMPTY, "directory not empty"));
            }
            unlink_from(txn, *parent, name, entry, *now)?;
            bury_dir(txn, entry.ino, *now)?;
            Ok(Reply::Entry(Some(entry)))
        }
        FsCommand::AdjustNlink { ino, delta, now } => {
            let mut inode = get_inode(txn, *ino)?;
            if *delta < 0 {
                for _ in 0..delta.unsigned_abs().min(inode.nlink) {
                    drop_link(txn, *ino, *now)?;
                }
                return Ok(Reply::None);
            }
            if inode.kind == Kind::Dir {
                return Err(err(EPERM, "cannot link a directory"));
            }
            if inode.nlink == 0 {
                return Err(err(ENOENT, "file was unlinked"));
            }
            inode.nlink = inode.nlink.saturating_add(delta.unsigned_abs());
            inode.ctime = *now;
            put_inode(txn, *ino, &inode)?;
            Ok(Reply::Attr { ino: *ino, inode })
        }
        FsCommand::DropDir { ino } | FsCommand::BuryDir { ino, .. } => {
            let inode = get_inode(txn, *ino)?;
            if inode.kind != Kind::Dir {
                return Err(err(ENOTDIR, "not a directory"));
            }
            if !dir_is_empty(txn, *ino)? {
                return Err(err(ENOTEMPTY, "directory not empty"));
            }
            match cmd {
                FsCommand::BuryDir { now, .. } => bury_dir(txn, *ino, *now)?,
                _ => delete_inode(txn, *ino)?,
            }
            Ok(Reply::None)
        }
        FsCommand::SetParent { ino, parent, now } => {
            let mut inode = get_inode(txn, *ino)?;
            inode.parent = *parent;
            inode.ctime = *now;
            put_inode(txn, *ino, &inode)?;
            Ok(Reply::None)
        }
        FsCommand::Rename {
            parent,
            name,
            new_parent,
            new_name,
            mode,
            now,
        } => rename(txn, *parent, name, *new_parent, new_name, *mode, *now),
        FsCommand::SetAttr { ino, set, now } => set_attr(txn, *ino, set, *now),
        FsCommand::Open {
            ino,
            client,
            now_ms,
            lease_ms,
        } => {
            let inode = get_inode(txn, *ino)?;
            let count: u32 = txn.get_as(&keys::open(*ino, *client))?.unwrap_or(0);
            txn.put_as(keys::open(*ino, *client), &count.saturating_add(1))?;
            txn.put(keys::opener(*client, *ino), Vec::new());
            txn.put_as(keys::session(*client), &(now_ms + lease_ms))?;
            Ok(Reply::Attr { ino: *ino, inode })
        }
        FsCommand::Close {
            ino,
            client,
            now_ms,
        } => {
            let count: u32 = txn.get_as(&keys::open(*ino, *client))?.unwrap_or(0);
            if count > 1 {
                txn.put_as(keys::open(*ino, *client), &(count - 1))?;
            } else {
                txn.delete(keys::open(*ino, *client));
                txn.delete(keys::opener(*client, *ino));
                reap(txn, *ino, *now_ms)?;
            }
            Ok(Reply::None)
        }
        FsCommand::RenewSession {
            client,
            now_ms,
            lease_ms,
        } => {
            if txn.get(&keys::session(*client))?.is_none() {
                return Err(err(ENOENT, "session expired"));
            }
            txn.put_as(keys::session(*client), &(now_ms + lease_ms))?;
            Ok(Reply::None)
        }
        FsCommand::ExpireSessions {
            now_ms,
            orphans_before_ms,
        } => {
            for (k, v) in txn.scan(&[keys::ORPHAN], b"", usize::MAX)? {
                if crate::kv::decode::<i64>(&v)? >= *orphans_before_ms {
                    continue;
                }
                txn.delete(k.clone());
                let ino = key_u64(&k, 1, "orphan")?;
                // An opener that registered late keeps it; its close
                // orphans it again.
                let orphan = get_inode(txn, ino).is_ok_and(|i| i.nlink == 0);
                if orphan && !is_open(txn, ino)? {
                    delete_inode(txn, ino)?;
                }
            }
            for (k, v) in txn.scan(&[keys::SESSION], b"", usize::MAX)? {
                let expiry: i64 = crate::kv::decode(&v)?;
                if expiry > *now_ms {
                    continue;
                }
                txn.delete(k.clone());
                let client = key_u64(&k, 1, "session")?;
                crate::locks::drop_client(txn, client)?;
                let prefix = keys::key(keys::OPENER, &[&k[1..]]);
                for (ok, _) in txn.scan(&prefix, b"", usize::MAX)? {
                    let ino = key_u64(&ok, 9, "opener")?;
                    txn.delete(ok);
                    txn.delete(keys::key(keys::OPEN, &[&ino.to_be_bytes(), &k[1..]]));
                    reap(txn, ino, *now_ms)?;
                }
            }
            Ok(Reply::None)
        }
        FsCommand::DequeueSlices { ids } => {
            for id in ids {
                txn.delete(keys::gc(*id));
            }
            Ok(Reply::None)
        }
        FsCommand::Batch(cmds) => {
            let mut last = Reply::None;
            for cmd in cmds {
                last = apply(txn, cmd)?;
            }
            Ok(last)
        }
        FsCommand::SetXattr {
            ino,
            name,
            value,
            flags,
            now,
        } => {
            if name.is_empty() || name.len() > 255 || name.contains(&0) {
                return Err(err(ERANGE, "invalid xattr name"));
            }
            if value.len() > XATTR_VALUE_MAX {
                return Err(err(ERANGE, "xattr value too large"));
            }
            let mut inode = get_inode(txn, *ino)?;
            let exists = txn.get(&keys::xattr(*ino, name))?.is_some();
            match flags {
                1 if exists => return Err(err(EEXIST, "xattr exists")),
                2 if !exists => return Err(err(ENODATA, "no such xattr")),
                0..=2 => {}
                _ => return Err(err(EINVAL, "invalid xattr flags")),
            }
            txn.put(keys::xattr(*ino, name), value.clone());
            inode.ctime = *now;
            put_inode(txn, *ino, &inode)?;
            Ok(Reply::None)
        }
        FsCommand::RemoveXattr { ino, name, now } => {
            let mut inode = get_inode(txn, *ino)?;
            if txn.get(&keys::xattr(*ino, name))?.is_none() {
                return Err(err(ENODATA, "no such xattr"));
            }
            txn.delete(keys::xattr(*ino, name));
            inode.ctime = *now;
            put_inode(txn, *ino, &inode)?;
            Ok(Reply::None)
        }
        FsCommand::WriteInline {
            ino,
            pos,
            data,
            length,
            mtime,
        } => {
            let inode = regular_file(txn, *ino)?;
            check_size(*length)?;
            let end = *pos as usize + data.len();
            // Inline data is the bottom layer: once a slice lies above it, a
            // newer write must be a slice too.
            let has_slices = !txn.scan(&keys::chunk_prefix(*ino), b"", 1)?.is_empty();
            if has_slices || end > INLINE_MAX {
                return Err(err(ENOTSUP, "file is not inline"));
            }
            let mut buf = txn.get(&keys::inline(*ino))?.unwrap_or_default();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*pos as usize..end].copy_from_slice(data);
            txn.put(keys::inline(*ino), buf);
            written(txn, *ino, inode, (*length).max(end as u64), *mtime)
        }
        FsCommand::Commit {
            ino,
            chunks,
            length,
            mtime,
        } => {
            let inode = regular_file(txn, *ino)?;
            check_size(*length)?;
            for (chunk, slices) in chunks {
                for s in slices {
                    if u64::from(s.pos) + u64::from(s.len) > CHUNK_SIZE
                        || u64::from(s.off) + u64::from(s.len) > u64::from(s.size)
                    {
                        return Err(err(EINVAL, "slice out of bounds"));
                    }
                }
                let mut list = crate::slices::chunk_slices(txn, *ino, *chunk)?;
                list.extend_from_slice(slices);
                crate::slices::settle(txn, *ino, *chunk, &list)?;
            }
            written(txn, *ino, inode, *length, *mtime)
        }
        FsCommand::Concat {
            target,
            sources,
            mtime,
        } => concat(txn, *target, sources, *mtime),
        FsCommand::Append { ino, slices, mtime } => append(txn, *ino, slices, *mtime),
        FsCommand::Access { ino, now } => {
            let mut inode = get_inode(txn, *ino)?;
            inode.atime = inode.atime.max(*now);
            put_inode(txn, *ino, &inode)?;
            Ok(Reply::Attr { ino: *ino, inode })
        }
        FsCommand::Fallocate { ino, f, mtime } => crate::holes::fallocate(txn, *ino, f, *mtime),
        FsCommand::AccessTimes { files } => access_times(txn, files),
        FsCommand::AssertParent { ino, parent } => {
            let inode = get_inode(txn, *ino)?;
            if inode.kind != Kind::Dir || inode.parent != *parent {
                return Err(err(EAGAIN, "directory moved during the operation"));
            }
            put_inode(txn, *ino, &inode)?;
            Ok(Reply::None)
        }
    }
}

/// Appends the visible bytes of `sources` to `target` by moving slices: each
/// source's chunk maps are flattened to the segments a reader sees, shifted to
/// the target's end (split where they cross a target chunk boundary), and
/// deleted from the source without queuing their blocks for deletion, since
/// the target owns them now.
fn concat(txn: &mut Txn, target: u64, sources: &[u64], mtime: i64) -> FsResult {
    let inode = regular_file(txn, target)?;
    if txn.get(&keys::inline(target))?.is_some() {
        return Err(err(ENOTSUP, "concat target has inline data"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut end = inode.size;
    let mut added: BTreeMap<u32, Vec<SliceRec>> = BTreeMap::new();
    for &src in sources {
        if src == target || !seen.insert(src) || !is_local(txn, src) {
            return Err(err(
                EINVAL,
                "concat sources must be distinct files of the target's shard",
            ));
        }
        let mut source = regular_file(txn, src)?;
        if txn.get(&keys::inline(src))?.is_some() {
            return Err(err(ENOTSUP, "concat source has inline data"));
        }
        let new_end = end
            .checked_add(source.size)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or_else(|| err(EFBIG, "concatenated file too large"))?;
        for (k, v) in txn.scan(&keys::chunk_prefix(src), b"", usize::MAX)? {
            let chunk = chunk_of_key(&k)?;
            let start = u64::from(chunk) * CHUNK_SIZE;
            let slices: Vec<SliceRec> = crate::kv::decode(&v)?;
            for seg in paint(&slices) {
                let seg_start = start + u64::from(seg.pos);
                if seg.slice_id == 0 || seg_start >= source.size {
                    continue;
                }
                let len = u64::from(seg.len).min(source.size - seg_start);
                place(&mut added, end + seg_start, len, seg);
            }
        }
        crate::slices::drop_chunks(txn, src)?;
        end = new_end;
        source.size = 0;
        source.mtime = mtime;
        source.ctime = mtime;
        put_inode(txn, src, &source)?;
    }
    for (chunk, slices) in added {
        let mut list = crate::slices::chunk_slices(txn, target, chunk)?;
        list.extend(slices);
        crate::slices::settle(txn, target, chunk, &list)?;
    }
    written(txn, target, inode, end, mtime)
}

/// Places whole slice objects, in order, at the file's current size (split
/// where they cross chunk boundaries) and grows the size by their total. The
/// offset is read here, inside the apply, so concurrent appends serialize in
/// log order. Refused whole (nothing written) when the file is not a regular
/// file, a slice id is 0 (a hole) or the end would pass [`MAX_FILE_SIZE`].
fn append(txn: &mut Txn, ino: u64, slices: &[(u64, u32)], mtime: i64) -> FsResult {
    let inode = regular_file(txn, ino)?;
    let mut end = inode.size;
    let mut added: BTreeMap<u32, Vec<SliceRec>> = BTreeMap::new();
    for &(slice_id, len) in slices {
        if slice_id == 0 {
            return Err(err(EINVAL, "an appended slice needs an id"));
        }
        let new_end = end
            .checked_add(u64::from(len))
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or_else(|| err(EFBIG, "append past the largest file"))?;
        let object = SliceRec {
            slice_id,
            pos: 0,
            len,
            off: 0,
            size: len,
        };
        place(&mut added, end, u64::from(len), object);
        end = new_end;
    }
    for (chunk, slices) in added {
        let mut list = crate::slices::chunk_slices(txn, ino, chunk)?;
        list.extend(slices);
        crate::slices::settle(txn, ino, chunk, &list)?;
    }
    written(txn, ino, inode, end, mtime)
}

/// Most chunk records [`stored_bytes`] reads; a file with more counts as dense.
const STORED_SCAN_MAX: usize = 1024;

/// The bytes of a file that hold data, for st_blocks: the visible segments of
/// its chunks that are not holes (inline data is the bottom layer of chunk
/// 0), within its size. Holes (never written, or cut by a truncate) do not
/// count. None: not a file, or too many chunks to count on a getattr.
pub fn stored_bytes(txn: &Txn, ino: u64, inode: &Inode) -> Result<Option<u64>, MetaError> {
    if inode.kind != Kind::File {
        return Ok(None);
    }
    let chunks = txn.scan(&keys::chunk_prefix(ino), b"", STORED_SCAN_MAX + 1)?;
    if chunks.len() > STORED_SCAN_MAX {
        return Ok(None);
    }
    let mut layers: BTreeMap<u32, Vec<SliceRec>> = BTreeMap::new();
    if let Some(buf) = txn.get(&keys::inline(ino))? {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        // Any id but 0 (a hole) stands for the inline layer here.
        let inline = SliceRec {
            slice_id: u64::MAX,
            pos: 0,
            len,
            off: 0,
            size: len,
        };
        layers.insert(0, vec![inline]);
    }
    for (k, v) in chunks {
        let slices: Vec<SliceRec> = crate::kv::decode(&v)?;
        layers.entry(chunk_of_key(&k)?).or_default().extend(slices);
    }
    let mut total = 0;
    for (chunk, slices) in layers {
        let start = u64::from(chunk) * CHUNK_SIZE;
        for s in paint(&slices).iter().filter(|s| s.slice_id != 0) {
            let a = (start + u64::from(s.pos)).min(inode.size);
            let b = (start + u64::from(s.pos) + u64::from(s.len)).min(inode.size);
            total += b - a;
        }
    }
    Ok(Some(total))
}

/// The chunk number in a chunk key.
pub(crate) fn chunk_of_key(k: &[u8]) -> Result<u32, MetaError> {
    keys::u32_at(k, 9).ok_or_else(|| MetaError::Storage("malformed chunk key".into()))
}

/// Adds `len` bytes of `seg`'s slice object (from `seg.off`) at file offset
/// `at` to `chunks`, split at chunk boundaries.
fn place(chunks: &mut BTreeMap<u32, Vec<SliceRec>>, mut at: u64, mut len: u64, seg: SliceRec) {
    let mut off = seg.off;
    while len > 0 {
        let pos = (at % CHUNK_SIZE) as u32;
        let n = len.min(CHUNK_SIZE - u64::from(pos)) as u32;
        chunks
            .entry((at / CHUNK_SIZE) as u32)
            .or_default()
            .push(SliceRec {
                slice_id: seg.slice_id,
                pos,
                len: n,
                off,
                size: seg.size,
            });
        at += u64::from(n);
        off += n;
        len -= u64::from(n);
    }
}

fn set_attr(txn: &mut Txn, ino: u64, set: &SetAttrs, now: i64) -> FsResult {
    let mut inode = get_inode(txn, ino)?;
    if let Some(perm) = set.perm {
        inode.perm = perm & 0o7777;
    }
    if let Some(uid) = set.uid {
        inode.uid = uid;
    }
    if let Some(gid) = set.gid {
        inode.gid = gid;
    }
    if let Some(atime) = set.atime {
        inode.atime = atime;
    }
    if let Some(mtime) = set.mtime {
        inode.mtime = mtime;
    }
    if let Some(size) = set.size {
        check_size(size)?;
        match inode.kind {
            Kind::File => {}
            Kind::Dir => return Err(err(EISDIR, "is a directory")),
            _ => return Err(err(EINVAL, "not a regular file")),
        }
        if size < inode.size {
            truncate_chunks(txn, ino, size)?;
            truncate_inline(txn, ino, size)?;
        }
        inode.size = size;
        if set.mtime.is_none() {
            inode.mtime = now;
        }
    }
    inode.ctime = now;
    put_inode(txn, ino, &inode)?;
    Ok(Reply::Attr { ino, inode })
}

/// Shrinks a file's chunks to `size`: whole chunks past it are dropped (their
/// slices queued for deletion once no chunk refers to them), and the chunk it
/// falls in gets a hole over the cut-off tail, so extending the file later reads
/// zeros.
fn truncate_chunks(txn: &mut Txn, ino: u64, size: u64) -> Result<(), MetaError> {
    let first_dropped = size.div_ceil(CHUNK_SIZE);
    for (k, v) in txn.scan(&keys::chunk_prefix(ino), b"", usize::MAX)? {
        let chunk = chunk_of_key(&k)?;
        if u64::from(chunk) >= first_dropped {
            crate::slices::set_chunk(txn, ino, chunk, Vec::new())?;
        } else if u64::from(chunk) == size / CHUNK_SIZE {
            let pos = (size % CHUNK_SIZE) as u32;
            let hole_len = (CHUNK_SIZE as u32) - pos;
            let mut slices: Vec<SliceRec> = crate::kv::decode(&v)?;
            slices.push(SliceRec {
                slice_id: 0,
                pos,
                len: hole_len,
                off: 0,
                size: hole_len,
            });
            crate::slices::settle(txn, ino, chunk, &slices)?;
        }
    }
    Ok(())
}

/// The inode of a regular file (data is written only to those).
pub(crate) fn regular_file(txn: &Txn, ino: u64) -> Result<Inode, MetaError> {
    let inode = get_inode(txn, ino)?;
    if inode.kind != Kind::File {
        return Err(err(EISDIR, "not a regular file"));
    }
    Ok(inode)
}

/// Records a data write: the length grows to `length`, times move to `mtime`.
fn written(txn: &mut Txn, ino: u64, mut inode: Inode, length: u64, mtime: i64) -> FsResult {
    inode.size = inode.size.max(length);
    inode.mtime = mtime;
    inode.ctime = mtime;
    put_inode(txn, ino, &inode)?;
    Ok(Reply::Attr { ino, inode })
}

/// Cuts a file's inline data at `size`.
fn truncate_inline(txn: &mut Txn, ino: u64, size: u64) -> Result<(), MetaError> {
    let Some(mut buf) = txn.get(&keys::inline(ino))? else {
        return Ok(());
    };
    if (buf.len() as u64) > size {
        buf.truncate(size as usize);
        if buf.is_empty() {
            txn.delete(keys::inline(ino));
        } else {
            txn.put(keys::inline(ino), buf);
        }
    }
    Ok(())
}

fn rename(
    txn: &mut Txn,
    parent: u64,
    name: &[u8],
    new_parent: u64,
    new_name: &[u8],
    mode: RenameMode,
    now: i64,
) -> FsResult {
    validate_name(name)?;
    validate_name(new_name)?;
    parent_dir(txn, parent)?;
    parent_dir(txn, new_parent)?;
    let src = get_entry(txn, parent, name)?.ok_or_else(|| err(ENOENT, "no such file"))?;
    let dst = get_entry(txn, new_parent, new_name)?;
    match (mode, dst) {
        (RenameMode::NoReplace, Some(_)) => return Err(err(EEXIST, "file exists")),
        (RenameMode::Exchange, None) => return Err(err(ENOENT, "no such file")),
        _ => {}
    }
    if let Some(dst) = dst {
        if dst.ino == src.ino {
            // Same inode (or the same entry): POSIX says do nothing.
            return Ok(Reply::Renamed {
                moved: src,
                replaced: None,
            });
        }
        if mode == RenameMode::Replace {
            match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
                (true, false) => return Err(err(ENOTDIR, "not a directory")),
                (false, true) => return Err(err(EISDIR, "is a directory")),
                // A target directory on another shard was checked empty and marked
                // by the coordinator before this command.
                (true, true) if is_local(txn, dst.ino) && !dir_is_empty(txn, dst.ino)? => {
                    return Err(err(ENOTEMPTY, "directory not empty"))
                }
                _ => {}
            }
        }
    }
    unlink_from(txn, parent, name, src, now)?;
    if let Some(dst) = dst {
        unlink_from(txn, new_parent, new_name, dst, now)?;
    }
    link_into(txn, new_parent, new_name, src, now)?;
    let replaced = dst;
    match (mode, dst) {
        (RenameMode::Exchange, Some(dst)) => {
            link_into(txn, parent, name, dst, now)?;
            if is_local(txn, dst.ino) {
                let mut inode = get_inode(txn, dst.ino)?;
                inode.ctime = now;
                if dst.kind == Kind::Dir {
                    inode.parent = parent;
                }
                put_inode(txn, dst.ino, &inode)?;
            }
        }
        (_, Some(dst)) if is_local(txn, dst.ino) => {
            if dst.kind == Kind::Dir {
                delete_inode(txn, dst.ino)?;
            } else {
                drop_link(txn, dst.ino, now)?;
            }
        }
        _ => {}
    }
    if is_local(txn, src.ino) {
        let mut inode = get_inode(txn, src.ino)?;
        inode.ctime = now;
        if src.kind == Kind::Dir {
            inode.parent = new_parent;
        }
        put_inode(txn, src.ino, &inode)?;
    }
    Ok(Reply::Renamed {
        moved: src,
        replaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::open_db;

    fn run(db: &rocksdb::DB, shard: u32, cmd: FsCommand) -> FsResult {
        let mut txn = Txn::new(db, shard);
        let out = apply(&mut txn, &cmd)?;
        db.write(txn.into_batch()?)?;
        Ok(out)
    }

    fn create(db: &rocksdb::DB, parent: u64, name: &str, kind: Kind) -> FsResult {
        run(
            db,
            1,
            FsCommand::Create {
                parent,
                name: name.as_bytes().to_vec(),
                kind,
                perm: 0o644,
                rdev: 0,
                uid: 0,
                gid: 0,
                exclusive: true,
                target: None,
                now: 1,
            },
        )
    }

    fn attr(reply: Reply) -> (u64, Inode) {
        match reply {
            Reply::Attr { ino, inode } => (ino, inode),
            other => panic!("expected attr, got {other:?}"),
        }
    }

    fn errno(r: FsResult) -> i32 {
        match r {
            Err(MetaError::Fs(e)) => e.errno,
            other => panic!("expected errno, got {other:?}"),
        }
    }

    /// Batched access times move atime forward to the read's time, never
    /// back, not over an atime set back since the read, and skip files gone.
    #[test]
    fn access_times_yield_to_an_atime_set_back_since_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(&db, 1, FsCommand::InitRoot { now: 0 }).unwrap();
        let (a, ia) = attr(create(&db, ROOT_INO, "a", Kind::File).unwrap());
        let (b, ib) = attr(create(&db, ROOT_INO, "b", Kind::File).unwrap());
        // b's atime is set back after its read (utimensat to time 0).
        let set = SetAttrs {
            atime: Some(0),
            ..Default::default()
        };
        run(
            &db,
            1,
            FsCommand::SetAttr {
                ino: b,
                set,
                now: 7,
            },
        )
        .unwrap();
        let files = vec![
            (a, 50, ia.atime),
            (b, 50, ib.atime),
            (make_ino(1, 999), 50, 0),
        ];
        run(&db, 1, FsCommand::AccessTimes { files }).unwrap();
        let get = |ino| get_inode(&Txn::new(&db, 1), ino).unwrap();
        assert_eq!((get(a).atime, get(a).ctime), (50, ia.ctime));
        assert_eq!(get(b).atime, 0, "the explicit atime stays");
        // A later read's update after this one landed moves it on; an
        // earlier read's never moves it back.
        for (read_at, expect) in [(60, 60), (55, 60)] {
            let files = vec![(a, read_at, ia.atime)];
            run(&db, 1, FsCommand::AccessTimes { files }).unwrap();
            assert_eq!(get(a).atime, expect);
        }
    }

    #[test]
    fn namespace_basics() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(&db, 1, FsCommand::InitRoot { now: 0 }).unwrap();
        let (d, _) = attr(create(&db, ROOT_INO, "d", Kind::Dir).unwrap());
        let (f, _) = attr(create(&db, d, "f", Kind::File).unwrap());
        assert_eq!(errno(create(&db, d, "f", Kind::File)), EEXIST);
        assert_eq!(errno(create(&db, d, "..", Kind::File)), EINVAL);
        let txn = Txn::new(&db, 1);
        assert_eq!(get_inode(&txn, ROOT_INO).unwrap().nlink, 3);
        assert_eq!(get_entry(&txn, d, b"f").unwrap().unwrap().ino, f);
        drop(txn);
        let rmdir = FsCommand::Rmdir {
            parent: ROOT_INO,
            name: b"d".to_vec(),
            now: 2,
        };
        assert_eq!(errno(run(&db, 1, rmdir.clone())), ENOTEMPTY);
        // Hard link, then rename over it within the directory.
        run(
            &db,
            1,
            FsCommand::AdjustNlink {
                ino: f,
                delta: 1,
                now: 2,
            },
        )
        .unwrap();
        run(
            &db,
            1,
            FsCommand::PutEntry {
                parent: d,
                name: b"g".to_vec(),
                entry: Entry {
                    ino: f,
                    kind: Kind::File,
                },
                mode: PutMode::MustNotExist,
                now: 2,
            },
        )
        .unwrap();
        assert_eq!(get_inode(&Txn::new(&db, 1), f).unwrap().nlink, 2);
        let (h, _) = attr(create(&db, d, "h", Kind::File).unwrap());
        run(
            &db,
            1,
            FsCommand::Rename {
                parent: d,
                name: b"h".to_vec(),
                new_parent: d,
                new_name: b"g".to_vec(),
                mode: RenameMode::Replace,
                now: 3,
            },
        )
        .unwrap();
        let txn = Txn::new(&db, 1);
        assert_eq!(get_entry(&txn, d, b"g").unwrap().unwrap().ino, h);
        assert_eq!(get_inode(&txn, f).unwrap().nlink, 1);
        drop(txn);
        for name in ["f", "g"] {
            run(
                &db,
                1,
                FsCommand::Unlink {
                    parent: d,
                    name: name.as_bytes().to_vec(),
                    now: 4,
                },
            )
            .unwrap();
        }
        // Unlinked and not open: an orphan, deleted once it has waited out
        // the grace (here: anything orphaned before time 10 ms).
        assert_eq!(get_inode(&Txn::new(&db, 1), f).unwrap().nlink, 0);
        assert!(has_expired_sessions(&Txn::new(&db, 1), 0, 10).unwrap());
        let expire = FsCommand::ExpireSessions {
            now_ms: 0,
            orphans_before_ms: 10,
        };
        run(&db, 1, expire).unwrap();
        assert!(get_inode(&Txn::new(&db, 1), f).is_err());
        assert!(!has_expired_sessions(&Txn::new(&db, 1), 0, 10).unwrap());
        run(&db, 1, rmdir).unwrap();
        assert_eq!(get_inode(&Txn::new(&db, 1), ROOT_INO).unwrap().nlink, 2);
    }

    #[test]
    fn truncate_leaves_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(&db, 1, FsCommand::InitRoot { now: 0 }).unwrap();
        let (f, _) = attr(create(&db, ROOT_INO, "f", Kind::File).unwrap());
        let slice = SliceRec {
            slice_id: 9,
            pos: 0,
            len: 1000,
            off: 0,
            size: 1000,
        };
        run(
            &db,
            1,
            FsCommand::Commit {
                ino: f,
                chunks: vec![(0, vec![slice])],
                length: 1000,
                mtime: 5,
            },
        )
        .unwrap();
        let set = SetAttrs {
            size: Some(10),
            ..Default::default()
        };
        let (_, inode) = attr(
            run(
                &db,
                1,
                FsCommand::SetAttr {
                    ino: f,
                    set,
                    now: 6,
                },
            )
            .unwrap(),
        );
        assert_eq!(inode.size, 10);
        let slices: Vec<SliceRec> = Txn::new(&db, 1)
            .get_as(&keys::chunk(f, 0))
            .unwrap()
            .unwrap();
        // Painted: the cut data leaves the list, and the hole with it.
        assert_eq!(slices, vec![SliceRec { len: 10, ..slice }]);
        let queued = |db: &rocksdb::DB| gc_queue(&Txn::new(db, 1), 10).unwrap();
        assert!(queued(&db).is_empty());
        let set = SetAttrs {
            size: Some(0),
            ..Default::default()
        };
        run(
            &db,
            1,
            FsCommand::SetAttr {
                ino: f,
                set,
                now: 7,
            },
        )
        .unwrap();
        assert!(Txn::new(&db, 1).get(&keys::chunk(f, 0)).unwrap().is_none());
        assert_eq!(queued(&db), vec![(9, 1000)]);
    }

    /// The slice references free exactly what no chunk shows: a covering
    /// overwrite frees the slice it hides, a partial one frees nothing, a
    /// concatenation frees the source's hidden slices and keeps the rest.
    #[test]
    fn slices_are_freed_when_no_chunk_shows_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(&db, 1, FsCommand::InitRoot { now: 0 }).unwrap();
        let (f, _) = attr(create(&db, ROOT_INO, "f", Kind::File).unwrap());
        let (g, _) = attr(create(&db, ROOT_INO, "g", Kind::File).unwrap());
        let slice = |slice_id, pos, len| SliceRec {
            slice_id,
            pos,
            len,
            off: 0,
            size: len,
        };
        let commit = |ino, s: SliceRec| {
            let cmd = FsCommand::Commit {
                ino,
                chunks: vec![(0, vec![s])],
                length: 1000,
                mtime: 5,
            };
            run(&db, 1, cmd).unwrap();
        };
        let queued = || -> Vec<u64> {
            let q = gc_queue(&Txn::new(&db, 1), 100).unwrap();
            q.into_iter().map(|(id, _)| id).collect()
        };
        // Shown by a chunk (queued slices count as referenced: the queue frees them).
        let shown = || {
            let all = crate::slices::referenced(&Txn::new(&db, 1), &[1, 2, 3, 4, 5]).unwrap();
            let queued = queued();
            all.into_iter()
                .filter(|id| !queued.contains(id))
                .collect::<Vec<u64>>()
        };
        commit(f, slice(1, 0, 1000));
        commit(f, slice(2, 0, 1000));
        assert_eq!((queued(), shown()), (vec![1], vec![2]));
        commit(f, slice(3, 100, 10));
        let list = crate::slices::chunk_slices(&Txn::new(&db, 1), f, 0).unwrap();
        assert_eq!(list.len(), 3, "{list:?}");
        assert_eq!((queued(), shown()), (vec![1], vec![2, 3]));
        commit(g, slice(4, 0, 1000));
        commit(g, slice(5, 0, 1000));
        assert_eq!(queued(), vec![1, 4]);
        let cmd = FsCommand::Concat {
            target: f,
            sources: vec![g],
            mtime: 6,
        };
        run(&db, 1, cmd).unwrap();
        assert_eq!((queued(), shown()), (vec![1, 4], vec![2, 3, 5]));
        let set = SetAttrs {
            size: Some(0),
            ..Default::default()
        };
        run(
            &db,
            1,
            FsCommand::SetAttr {
                ino: f,
                set,
                now: 7,
            },
        )
        .unwrap();
        assert_eq!((queued(), shown()), (vec![1, 2, 3, 4, 5], vec![]));
    }

    #[test]
    fn concat_moves_slices_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(&db, 1, FsCommand::InitRoot { now: 0 }).unwrap();
        let commit = |ino, slice_id, len: u64| FsCommand::Commit {
            ino,
            chunks: vec![(
                0,
                vec![SliceRec {
                    slice_id,
                    pos: 0,
                    len: len as u32,
                    off: 0,
                    size: len as u32,
                }],
            )],
            length: len,
            mtime: 1,
        };
        let (t, _) = attr(create(&db, ROOT_INO, "t", Kind::File).unwrap());
        let (a, _) = attr(create(&db, ROOT_INO, "a", Kind::File).unwrap());
        let (b, _) = attr(create(&db, ROOT_INO, "b", Kind::File).unwrap());
        let big = CHUNK_SIZE - 10;
        run(&db, 1, commit(a, 7, big)).unwrap();
        run(&db, 1, commit(b, 8, 30)).unwrap();
        let concat = |sources: Vec<u64>| FsCommand::Concat {
            target: t,
            sources,
            mtime: 2,
        };
        assert_eq!(errno(run(&db, 1, concat(vec![a, a]))), EINVAL);
        let (_, inode) = attr(run(&db, 1, concat(vec![a, b])).unwrap());
        assert_eq!(inode.size, big + 30);
        let txn = Txn::new(&db, 1);
        let c0: Vec<SliceRec> = txn.get_as(&keys::chunk(t, 0)).unwrap().unwrap();
        let c1: Vec<SliceRec> = txn.get_as(&keys::chunk(t, 1)).unwrap().unwrap();
        let place = |s: &SliceRec| (s.slice_id, s.pos, s.len, s.off);
        assert_eq!(
            c0.iter().map(place).collect::<Vec<_>>(),
            vec![(7, 0, big as u32, 0), (8, big as u32, 10, 0)]
        );
        assert_eq!(
            c1.iter().map(place).collect::<Vec<_>>(),
            vec![(8, 0, 20, 10)]
        );
        // The sources are empty and own nothing: deleting them frees no block.
        assert_eq!(get_inode(&txn, a).unwrap().size, 0);
        assert!(txn.get(&keys::chunk(b, 0)).unwrap().is_none());
        drop(txn);
        run(
            &db,
            1,
            FsCommand::Unlink {
                parent: ROOT_INO,
                name: b"a".to_vec(),
                now: 3,
            },
        )
        .unwrap();
        assert!(gc_queue(&Txn::new(&db, 1), 10).unwrap().is_empty());
    }

    #[test]
    fn appends_land_at_the_size_when_they_apply() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(&db, 1, FsCommand::InitRoot { now: 0 }).unwrap();
        let (f, _) = attr(create(&db, ROOT_INO, "f", Kind::File).unwrap());
        let append = |slices: Vec<(u64, u32)>, mtime| FsCommand::Append {
            ino: f,
            slices,
            mtime,
        };
        // Two writers that both believed the file empty: the second lands
        // after the first, never over it.
        let (_, inode) = attr(run(&db, 1, append(vec![(7, 100)], 1)).unwrap());
        assert_eq!((inode.size, inode.mtime), (100, 1));
        let (_, inode) = attr(run(&db, 1, append(vec![(8, 50)], 2)).unwrap());
        assert_eq!(inode.size, 150);
        // Several objects in one append stay contiguous, split at the chunk
        // boundary they cross.
        let big = (CHUNK_SIZE - 150 - 10) as u32;
        let (_, inode) = attr(run(&db, 1, append(vec![(9, big), (10, 30)], 3)).unwrap());
        assert_eq!(inode.size, CHUNK_SIZE + 20);
        let txn = Txn::new(&db, 1);
        let c0: Vec<SliceRec> = txn.get_as(&keys::chunk(f, 0)).unwrap().unwrap();
        let c1: Vec<SliceRec> = txn.get_as(&keys::chunk(f, 1)).unwrap().unwrap();
        let place = |s: &SliceRec| (s.slice_id, s.pos, s.len, s.off, s.size);
        assert_eq!(
            c0.iter().map(place).collect::<Vec<_>>(),
            vec![
                (7, 0, 100, 0, 100),
                (8, 100, 50, 0, 50),
                (9, 150, big, 0, big),
                (10, 150 + big, 10, 0, 30)
            ]
        );
        assert_eq!(
            c1.iter().map(place).collect::<Vec<_>>(),
            vec![(10, 0, 20, 10, 30)]
        );
        drop(txn);
        // A hole id or a directory is refused whole: nothing is written.
        assert_eq!(errno(run(&db, 1, append(vec![(11, 5), (0, 5)], 4))), EINVAL);
        assert_eq!(
            errno(run(
                &db,
                1,
                FsCommand::Append {
                    ino: ROOT_INO,
                    slices: vec![(12, 5)],
                    mtime: 4,
                }
            )),
            EISDIR
        );
        let txn = Txn::new(&db, 1);
        assert_eq!(get_inode(&txn, f).unwrap().size, CHUNK_SIZE + 20);
        let c1: Vec<SliceRec> = txn.get_as(&keys::chunk(f, 1)).unwrap().unwrap();
        assert_eq!(c1.len(), 1);
    }
}
