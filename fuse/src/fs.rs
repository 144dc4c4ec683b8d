//! The fuser `Filesystem`: each kernel request is answered by a task on the
//! tokio runtime that calls the client library, so slow requests never block
//! the others.
//!
//! Inode numbers are Cairn's, except that the kernel's root (1) is Cairn's root.
//! Open files hold a writer (buffered, parallel block uploads, committed on
//! flush/fsync/close) and a reader. Opening reads the file's attributes and
//! layout in one request and tracks the open in the client (registered with
//! metad only if it lasts; see `MetaClient::track_open`), so an unlinked open
//! file stays readable until release.
//!
//! Consistency, and what keeps it:
//! - Within the mount, writes are visible at once to every reader and to
//!   `stat`: a read or an attribute request first commits what any handle of
//!   the same inode has buffered (handles flag buffered writes in `dirty`, so
//!   clean ones are not locked), with write-back waits for the inode's logs
//!   to be uploaded before reading, and every commit through the mount marks
//!   the inode's other handles `stale`, so their readers are rebuilt.
//!   Attributes count what is staged and not yet uploaded
//!   (`Staging::staged_end`), so `stat` does not wait for the upload.
//! - Between mounts, close-to-open: every open reads the attributes and
//!   layout from metad. The kernel keeps its page cache across the open
//!   (`FOPEN_KEEP_CACHE`) only if the file's (mtime, size) is what this mount
//!   saw when it last opened it (`seen`); otherwise the page cache is dropped,
//!   the mount's other handles of the file are marked stale (their older view
//!   must not refill the cache), and, unless the kernel was last answered these
//!   very attributes (`told`), its cached attributes are invalidated before the
//!   open is answered, so `fstat` and the read's end-of-file check after the
//!   open see the new size.
//! - An fd kept open sees appends made elsewhere: the kernel asks for bytes
//!   past the reader's end of file only once it has learnt a larger size (its
//!   attributes expire), and such a read rebuilds the reader if metad's size
//!   differs from the reader's.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use fuser::FileAttr;
use fuser::FileType;
use fuser::Filesystem;
use fuser::KernelConfig;
use fuser::ReplyAttr;
use fuser::ReplyCreate;
use fuser::ReplyData;
use fuser::ReplyDirectory;
use fuser::ReplyDirectoryPlus;
use fuser::ReplyEmpty;
use fuser::ReplyEntry;
use fuser::ReplyLock;
use fuser::ReplyOpen;
use fuser::ReplyStatfs;
use fuser::ReplyWrite;
use fuser::ReplyXattr;
use fuser::Request;
use fuser::TimeOrNow;

use cairn_client::file::gone_is_stale;
use cairn_client::Caller;
use cairn_client::Client;
use cairn_client::ClientError;
use cairn_client::FileReader;
use cairn_client::FileWriter;
use cairn_proto::ids::ROOT_INO;
use cairn_proto::pb;
use cairn_proto::pb::FileKind;

use crate::access;
use crate::locks::HeldLocks;
use crate::metrics::FuseMetrics;
use crate::metrics::Io;
use crate::writeback::StageLog;
use crate::writeback::Staging;

/// Kernel cache lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub entry: Duration,
    pub attr: Duration,
}

/// Bytes the kernel reads at a time from the page cache: it never asks for a
/// page past the last one of the size it knows.
const PAGE: u64 = 4096;

/// An open file.
struct OpenFile {
    ino: u64,
    /// The client's tracking of this open (unlinked files stay readable).
    token: u64,
    writer: Option<FileWriter>,
    reader: Option<FileReader>,
    /// Write-back: the mount's staging area, and this handle's log.
    staging: Option<Arc<Staging>>,
    stage: Option<StageLog>,
    /// What other requests see of this handle without its lock.
    shared: Arc<Shared>,
    /// The mount's open files, to mark the inode's other handles stale after
    /// a commit (weak: the table holds this handle).
    files: std::sync::Weak<Mutex<HashMap<u64, Entry>>>,
    /// The set-id bits were cleared (or absent) for an unprivileged writer.
    privs_killed: bool,
}

/// The part of a handle other requests read and set without taking its lock
/// (which a long read or write holds).
#[derive(Debug, Default)]
struct Shared {
    /// Writes are buffered (or staged, not yet committed) in the handle.
    dirty: AtomicBool,
    /// The file changed through this mount, or at an open, since the
    /// handle's reader was built: rebuild it before the next read.
    stale: AtomicBool,
}

impl OpenFile {
    /// Commits buffered writes; answers whether there were any. After a commit
    /// every handle of the inode rebuilds its reader on its next read.
    /// With write-back, a staged log is made durable and handed to the uploader
    /// instead (see [`settle`] to wait for it).
    async fn flush(&mut self) -> Result<bool, ClientError> {
        let committed = self.commit().await?;
        self.shared.dirty.store(false, Ordering::Release);
        if committed {
            self.reader = None;
            if let Some(files) = self.files.upgrade() {
                mark_stale(&files, self.ino, None);
            }
        }
        Ok(committed)
    }

    async fn commit(&mut self) -> Result<bool, ClientError> {
        if let (Some(staging), Some(log)) = (&self.staging, self.stage.take()) {
            if log.is_empty() {
                return Ok(false);
            }
            tokio::task::block_in_place(|| staging.commit(log))
                .map_err(|e| ClientError::Data(format!("staging: {e}")))?;
            return Ok(true);
        }
        let Some(w) = self.writer.as_mut() else {
            return Ok(false);
        };
        Ok(w.flush().await?.is_some())
    }
}

type Handle = Arc<tokio::sync::Mutex<OpenFile>>;

/// An open file in the mount's table.
#[derive(Clone)]
struct Entry {
    /// The (Cairn) inode it is open on.
    ino: u64,
    handle: Handle,
    shared: Arc<Shared>,
}

/// Waits for write-back uploads of `ino`, so what this mount wrote is what the
/// cluster answers next.
async fn settle(staging: &Option<Arc<Staging>>, ino: u64) {
    if let Some(staging) = staging {
        staging.wait_uploaded(ino).await;
    }
}

/// What a write by an unprivileged process does to a file's mode, as the
/// kernel does it on its own write path: S_ISUID goes, and S_ISGID with it
/// when the group may execute.
async fn kill_set_id_bits(c: &Client, ino: u64) -> Result<(), ClientError> {
    let a = c.meta.getattr(ino).await?;
    let mut kill = libc::S_ISUID;
    if a.perm & libc::S_IXGRP != 0 {
        kill |= libc::S_ISGID;
    }
    if a.perm & kill != 0 {
        let set = pb::SetAttr {
            perm: Some(a.perm & 0o7777 & !kill),
            ..Default::default()
        };
        c.meta.setattr(ino, set).await?;
    }
    Ok(())
}

/// Open files by file handle.
type Files = Arc<Mutex<HashMap<u64, Entry>>>;

/// Puts a new handle in the table.
fn insert_file(files: &Files, fh: u64, file: OpenFile) {
    let entry = Entry {
        ino: file.ino,
        shared: file.shared.clone(),
        handle: Arc::new(tokio::sync::Mutex::new(file)),
    };
    files
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(fh, entry);
}

/// Whether this mount has `ino` open.
fn is_open(files: &Files, ino: u64) -> bool {
    files
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .any(|e| e.ino == ino)
}

/// Marks the handles open on `ino` (but `except`) to rebuild their readers.
fn mark_stale(files: &Mutex<HashMap<u64, Entry>>, ino: u64, except: Option<u64>) {
    for (fh, e) in files.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        if e.ino == ino && Some(*fh) != except {
            e.shared.stale.store(true, Ordering::Release);
        }
    }
}

/// Commits what the handles open on `ino` have buffered, so that what is
/// read next shows every write made through this mount (POSIX: a read or a
/// `stat` after `write` sees it, whichever descriptor it goes through).
/// Handles with nothing buffered are not waited for. Answers whether anything
/// was committed.
async fn flush_open(files: &Files, ino: u64) -> Result<bool, ClientError> {
    let dirty: Vec<Handle> = files
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter(|e| e.ino == ino && e.shared.dirty.load(Ordering::Acquire))
        .map(|e| e.handle.clone())
        .collect();
    let mut committed = false;
    for h in dirty {
        committed |= h.lock().await.flush().await?;
    }
    Ok(committed)
}

/// The attributes of `ino` as this mount sees them: what its handles have
/// buffered is committed first, and with write-back what is staged and not
/// yet uploaded counts in the size (not waited for: the data servers may be
/// away, and the upload changes nothing this mount reads).
async fn current_attr(
    c: &Client,
    files: &Files,
    staging: &Option<Arc<Staging>>,
    ino: u64,
) -> Result<pb::Attr, ClientError> {
    flush_open(files, ino).await?;
    let mut a = c.meta.getattr(ino).await?;
    if let Some(staging) = staging {
        a.size = a.size.max(staging.staged_end(ino));
    }
    Ok(a)
}

/// A file's version, as far as caches go: (mtime, size).
type Version = (i64, u64);

fn version(a: &pb::Attr) -> Version {
    (a.mtime_ns, a.size)
}

/// O_APPEND handles do direct I/O: the kernel then sends a write(2) of up to
/// `max_write` (1 MiB) as one request (through the page cache it splits a
/// write at a partial page, and a commit between the pieces would let
/// another mount's append land inside it), and keeps no page of it at the
/// offset it guessed (metad decides where appends land).
fn append_io(flags: i32) -> u32 {
    if flags & libc::O_APPEND != 0 {
        fuser::consts::FOPEN_DIRECT_IO
    } else {
        0
    }
}

/// Versions by (Cairn) inode: see [`CairnFs`]'s `seen` and `told`.
type Versions = Arc<Mutex<HashMap<u64, Version>>>;

fn remember(map: &Versions, a: &pb::Attr) -> Option<Version> {
    map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(a.ino, version(a))
}

/// One entry of a directory listing.
struct Listed {
    /// The kernel's inode number.
    ino: u64,
    kind: FileType,
    name: Vec<u8>,
    /// Attributes metad answered with the listing (entries on the directory's
    /// shard); readdirplus fetches the others.
    attr: Option<pb::Attr>,
}

/// A directory listing taken at opendir, read by offset.
type Listing = Arc<Vec<Listed>>;

pub struct CairnFs {
    client: Arc<Client>,
    rt: tokio::runtime::Handle,
    timeouts: Timeouts,
    files: Files,
    staging: Option<Arc<Staging>>,
    /// The version of each file the kernel's page cache holds, as of this
    /// mount's last open of it (dropped when a reader finds another, or the
    /// kernel forgets the inode).
    seen: Versions,
    /// The version of each file in the attributes last answered to the kernel.
    told: Versions,
    /// Sends the kernel invalidations; set once the session exists.
    notifier: Arc<OnceLock<fuser::Notifier>>,
    /// Directory listings taken at opendir, read by offset.
    dirs: Arc<Mutex<HashMap<u64, Listing>>>,
    next_fh: AtomicU64,
    /// Cairn's own permission checks (in kernel mode they check nothing).
    guard: Arc<access::Guard>,
    /// Requests counted and timed by `spawn`.
    metrics: Arc<FuseMetrics>,
    /// Lock owners that took file locks through this mount.
    locks: Arc<HeldLocks>,
}

impl CairnFs {
    pub fn new(
        client: Arc<Client>,
        rt: tokio::runtime::Handle,
        timeouts: Timeouts,
        staging: Option<Arc<Staging>>,
        permissions: access::Permissions,
        metrics: Arc<FuseMetrics>,
    ) -> Self {
        CairnFs {
            client,
            rt,
            timeouts,
            files: Arc::default(),
            staging,
            seen: Arc::default(),
            told: Arc::default(),
            notifier: Arc::default(),
            dirs: Arc::default(),
            next_fh: AtomicU64::new(1),
            guard: access::Guard::new(permissions),
            metrics,
            locks: Arc::default(),
        }
    }

    /// Where the mount puts the session's notifier (see `crate::mount`).
    pub fn notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// The listing an opendir took for `fh`.
    fn listing(&self, fh: u64) -> Option<Listing> {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
    }

    fn handle(&self, fh: u64) -> Option<Handle> {
        self.entry(fh).map(|e| e.handle)
    }

    fn entry(&self, fh: u64) -> Option<Entry> {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
    }

    /// The permission checks for one request.
    fn gate(&self, req: &Request<'_>) -> access::Gate {
        self.guard.gate(req.uid(), req.gid(), req.pid())
    }
}

/// Kernel inode number → Cairn's.
fn cairn_ino(ino: u64) -> u64 {
    if ino == fuser::FUSE_ROOT_ID {
        ROOT_INO
    } else {
        ino
    }
}

/// Cairn inode number → the kernel's.
fn kernel_ino(ino: u64) -> u64 {
    if ino == ROOT_INO {
        fuser::FUSE_ROOT_ID
    } else {
        ino
    }
}

fn file_type(kind: i32) -> FileType {
    match FileKind::try_from(kind) {
        Ok(FileKind::Directory) => FileType::Directory,
        Ok(FileKind::Symlink) => FileType::Symlink,
        Ok(FileKind::Fifo) => FileType::NamedPipe,
        Ok(FileKind::Socket) => FileType::Socket,
        Ok(FileKind::CharDevice) => FileType::CharDevice,
        Ok(FileKind::BlockDevice) => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// Nanoseconds since the epoch (negative before 1970) as a SystemTime.
fn time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns < 0 {
        UNIX_EPOCH - d
    } else {
        UNIX_EPOCH + d
    }
}

/// A SystemTime as nanoseconds since the epoch, negative before 1970 (and
/// clamped to what an i64 holds: years 1678 to 2262).
fn ns(t: TimeOrNow) -> i64 {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// Linux's relatime: a read updates atime when it is not after mtime or ctime,
/// or is a day old. Cairn checks at open for reading, with the attributes the
/// open fetched anyway, so a read costs a metadata write only then.
fn relatime_due(a: &pb::Attr, now: SystemTime) -> bool {
    const DAY_NS: i64 = 24 * 3600 * 1_000_000_000;
    let now = ns(TimeOrNow::SpecificTime(now));
    a.atime_ns <= a.mtime_ns || a.atime_ns <= a.ctime_ns || now - a.atime_ns >= DAY_NS
}

fn file_attr(a: &pb::Attr) -> FileAttr {
    FileAttr {
        ino: kernel_ino(a.ino),
        size: a.size,
        // 512-byte units of stored data: the holes of a sparse file do not
        // count (du, cp --sparse=auto and backup tools read this).
        blocks: a.stored_bytes.unwrap_or(a.size).min(a.size).div_ceil(512),
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.ctime_ns),
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 1 << 20,
        flags: 0,
    }
}

fn caller(req: &Request<'_>) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// Something that can answer a FUSE request with an errno.
trait ReplyErr {
    fn error(self, errno: i32);
}

macro_rules! reply_err {
    ($($t:ty),*) => {$(
        impl ReplyErr for $t {
            fn error(self, errno: i32) {
                <$t>::error(self, errno)
            }
        }
    )*};
}
reply_err!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

impl CairnFs {
    /// Runs `f` on the runtime; its error answers the request with an errno.
    /// Every request is counted here by `op` and result, timed, and what it
    /// read or wrote (`Io`, or `()` for nothing) added up.
    fn spawn<R, T, F>(&self, op: &'static str, reply: R, f: impl FnOnce(Arc<Client>, R) -> F)
    where
        R: ReplyErr + Send + 'static,
        T: Into<Io>,
        F: std::future::Future<Output = Result<T, (R, ClientError)>> + Send + 'static,
    {
        let timer = self.metrics.start(op);
        let fut = f(self.client.clone(), reply);
        self.rt.spawn(async move {
            let outcome = match fut.await {
                Ok(io) => Ok(io.into()),
                Err((reply, e)) => {
                    tracing::debug!(op, "fuse request failed: {e}");
                    let errno = e.errno();
                    reply.error(errno);
                    Err(errno)
                }
            };
            timer.finish(outcome);
        });
    }
}

/// `?` for request tasks: keeps the reply to answer with the error.
macro_rules! tri {
    ($reply:ident, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Err(($reply, ClientError::from(e))),
        }
    };
}

fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

impl CairnFs {
    /// flush(2) and fsync(2): commit (or, with write-back, stage durably)
    /// what the handle wrote.
    fn flush_handle(&self, op: &'static str, fh: u64, reply: ReplyEmpty) {
        let Some(handle) = self.handle(fh) else {
            return reply.error(libc::EBADF);
        };
        self.spawn(op, reply, move |_c, reply| async move {
            tri!(reply, handle.lock().await.flush().await);
            reply.ok();
            Ok(())
        });
    }
}

reply_err!(ReplyLock);

impl CairnFs {
    /// flush(2) of a handle whose process took file locks: commit what it
    /// wrote and release its locks on the file, both even if one fails.
    fn flush_and_unlock(&self, fh: u64, unlock: pb::SetLockOp, reply: ReplyEmpty) {
        let handle = self.handle(fh);
        self.spawn("flush", reply, move |c, reply| async move {
            let flushed = match handle {
                Some(h) => h.lock().await.flush().await.map(|_| ()),
                None => Ok(()),
            };
            let unlocked = c.meta.setlk(unlock).await;
            tri!(reply, flushed);
            tri!(reply, unlocked);
            reply.ok();
            Ok(())
        });
    }
}

impl Filesystem for CairnFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        // Large writes: up to 1 MiB per request.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // readdirplus: directory listings carry attributes, so `ls -l` and
        // dataset scans need no lookup per entry; the kernel picks plain or
        // plus per directory (AUTO).
        let _ = config.add_capabilities(
            fuser::consts::FUSE_DO_READDIRPLUS | fuser::consts::FUSE_READDIRPLUS_AUTO,
        );
        // fcntl and flock locks go to metad (held across mounts), not the
        // kernel's local lock table.
        let locks = fuser::consts::FUSE_POSIX_LOCKS | fuser::consts::FUSE_FLOCK_LOCKS;
        if let Err(missing) = config.add_capabilities(locks) {
            tracing::warn!("kernel lacks lock capabilities {missing:#x}: locks stay local");
        }
        Ok(())
    }

    fn lookup(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let gate = self.gate(req);
        let name = name_bytes(name);
        let ttl = self.timeouts.entry;
        let files = self.files.clone();
        let staging = self.staging.clone();
        let told = self.told.clone();
        self.spawn("lookup", reply, move |c, reply| async move {
            tri!(reply, gate.lookup(&c, cairn_ino(parent)).await);
            let mut a = tri!(reply, c.meta.lookup(cairn_ino(parent), &name).await);
            let busy =
                is_open(&files, a.ino) || staging.as_ref().is_some_and(|s| s.is_pending(a.ino));
            if busy {
                a = tri!(reply, current_attr(&c, &files, &staging, a.ino).await);
            }
            remember(&told, &a);
            reply.entry(&ttl, &file_attr(&a), 0);
            Ok(())
        });
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, _nlookup: u64) {
        // The kernel dropped the inode, its attributes and its page cache.
        let ino = cairn_ino(ino);
        for map in [&self.seen, &self.told] {
            map.lock().unwrap_or_else(|p| p.into_inner()).remove(&ino);
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let ttl = self.timeouts.attr;
        let files = self.files.clone();
        let staging = self.staging.clone();
        let told = self.told.clone();
        self.spawn("getattr", reply, move |c, reply| async move {
            let a = tri!(
                reply,
                current_attr(&c, &files, &staging, cairn_ino(ino)).await
            );
            remember(&told, &a);
            reply.attr(&ttl, &file_attr(&a));
            Ok(())
        });
    }

    fn setattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let gate = self.gate(req);
        let change = access::Change::new(mode, uid, gid, size, atime, mtime, fh);
        let ttl = self.timeouts.attr;
        let files = self.files.clone();
        let staging = self.staging.clone();
        let told = self.told.clone();
        self.spawn("setattr", reply, move |c, reply| async move {
            let mode = tri!(reply, gate.setattr(&c, cairn_ino(ino), change).await);
            if size.is_some() {
                // Writes buffered or staged by this mount land before the
                // truncate, as the caller ordered them.
                tri!(reply, flush_open(&files, cairn_ino(ino)).await);
                settle(&staging, cairn_ino(ino)).await;
            }
            let set = pb::SetAttr {
                perm: mode.map(|m| m & 0o7777),
                uid,
                gid,
                size,
                atime_ns: atime.map(ns),
                mtime_ns: mtime.map(ns),
            };
            let a = tri!(reply, c.meta.setattr(cairn_ino(ino), set).await);
            if size.is_some() {
                mark_stale(&files, a.ino, None);
            }
            remember(&told, &a);
            reply.attr(&ttl, &file_attr(&a));
            Ok(())
        });
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        self.spawn("readlink", reply, move |c, reply| async move {
            let target = tri!(reply, c.meta.readlink(cairn_ino(ino)).await);
            reply.data(&target);
            Ok(())
        });
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => FileKind::Regular,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return reply.error(libc::EINVAL),
        };
        let gate = self.gate(req);
        let (name, who, ttl) = (name_bytes(name), caller(req), self.timeouts.entry);
        self.spawn("mknod", reply, move |c, reply| async move {
            tri!(reply, gate.add(&c, cairn_ino(parent)).await);
            let a = tri!(
                reply,
                c.meta
                    .mknod(who, cairn_ino(parent), &name, kind, mode & 0o7777, rdev)
                    .await
            );
            reply.entry(&ttl, &file_attr(&a), 0);
            Ok(())
        });
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let gate = self.gate(req);
        let (name, who, ttl) = (name_bytes(name), caller(req), self.timeouts.entry);
        self.spawn("mkdir", reply, move |c, reply| async move {
            tri!(reply, gate.add(&c, cairn_ino(parent)).await);
            let a = tri!(
                reply,
                c.meta
                    .mkdir_as(who, cairn_ino(parent), &name, mode & 0o7777)
                    .await
            );
            reply.entry(&ttl, &file_attr(&a), 0);
            Ok(())
        });
    }

    fn unlink(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let gate = self.gate(req);
        let name = name_bytes(name);
        self.spawn("unlink", reply, move |c, reply| async move {
            tri!(reply, gate.remove(&c, cairn_ino(parent), &name).await);
            tri!(reply, c.meta.unlink(cairn_ino(parent), &name).await);
            reply.ok();
            Ok(())
        });
    }

    fn rmdir(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let gate = self.gate(req);
        let name = name_bytes(name);
        self.spawn("rmdir", reply, move |c, reply| async move {
            tri!(reply, gate.remove(&c, cairn_ino(parent), &name).await);
            tri!(reply, c.meta.rmdir(cairn_ino(parent), &name).await);
            reply.ok();
            Ok(())
        });
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let gate = self.gate(req);
        let (name, who, ttl) = (name_bytes(link_name), caller(req), self.timeouts.entry);
        let target = target.as_os_str().as_bytes().to_vec();
        self.spawn("symlink", reply, move |c, reply| async move {
            tri!(reply, gate.add(&c, cairn_ino(parent)).await);
            let a = tri!(
                reply,
                c.meta
                    .symlink_as(who, cairn_ino(parent), &name, &target)
                    .await
            );
            reply.entry(&ttl, &file_attr(&a), 0);
            Ok(())
        });
    }

    fn rename(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let gate = self.gate(req);
        let mode = match flags {
            0 => pb::RenameMode::Replace,
            libc::RENAME_NOREPLACE => pb::RenameMode::Noreplace,
            libc::RENAME_EXCHANGE => pb::RenameMode::Exchange,
            _ => return reply.error(libc::EINVAL),
        };
        let (name, newname) = (name_bytes(name), name_bytes(newname));
        self.spawn("rename", reply, move |c, reply| async move {
            let (from, to) = (
                (cairn_ino(parent), &name[..]),
                (cairn_ino(newparent), &newname[..]),
            );
            tri!(reply, gate.rename(&c, from, to, mode).await);
            tri!(
                reply,
                c.meta
                    .rename(
                        cairn_ino(parent),
                        &name,
                        cairn_ino(newparent),
                        &newname,
                        mode
                    )
                    .await
            );
            reply.ok();
            Ok(())
        });
    }

    fn link(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let gate = self.gate(req);
        let (name, ttl) = (name_bytes(newname), self.timeouts.entry);
        let told = self.told.clone();
        self.spawn("link", reply, move |c, reply| async move {
            tri!(reply, gate.add(&c, cairn_ino(newparent)).await);
            let a = tri!(
                reply,
                c.meta
                    .link(cairn_ino(ino), cairn_ino(newparent), &name)
                    .await
            );
            remember(&told, &a);
            reply.entry(&ttl, &file_attr(&a), 0);
            Ok(())
        });
    }

    fn open(&mut self, req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let open_flags = flags;
        let gate = self.gate(req);
        let fh = self.fh();
        let files = self.files.clone();
        let staging = self.staging.clone();
        let (seen, told) = (self.seen.clone(), self.told.clone());
        let notifier = self.notifier.clone();
        self.spawn("open", reply, move |c, reply| async move {
            let ino = cairn_ino(ino);
            // A file deleted since the kernel looked its name up answers
            // ESTALE: the kernel then looks the path up again.
            tri!(
                reply,
                gate.open(&c, ino, flags, fh).await.map_err(gone_is_stale)
            );
            // Logs of this mount still uploading: the layout read now may
            // predate them, so the first read rebuilds the reader once they
            // are in (not waited for here: opening to write needs no upload).
            let pending = staging.as_ref().is_some_and(|s| s.is_pending(ino));
            // One metadata round trip: the file's attributes and layout (and a
            // small file's inline data); tracking the open costs no write.
            let (attr, reader) = tri!(reply, c.open_reader(ino).await);
            if flags & libc::O_ACCMODE != libc::O_WRONLY && relatime_due(&attr, SystemTime::now()) {
                // An open for reading stands for the read (see relatime_due);
                // the update is not waited for (this mount's stat waits).
                c.meta.access_later(&attr);
            }
            let token = tri!(reply, c.meta.track_open(attr.ino).await);
            let shared = Arc::new(Shared {
                dirty: AtomicBool::new(false),
                stale: AtomicBool::new(pending),
            });
            let file = OpenFile {
                ino: attr.ino,
                token,
                writer: None,
                reader: Some(reader),
                staging,
                stage: None,
                shared,
                files: Arc::downgrade(&files),
                privs_killed: false,
            };
            insert_file(&files, fh, file);
            // The kernel keeps its page cache for a file unchanged (same mtime
            // and size) since this mount last opened it, and drops it otherwise.
            let now = version(&attr);
            let keep = if pending {
                seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&ino);
                false
            } else {
                remember(&seen, &attr) == Some(now)
            };
            if !keep {
                // The mount's other handles of the file must not refill the
                // page cache with what they saw before.
                mark_stale(&files, ino, Some(fh));
            }
            let told_now = told
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&ino)
                .is_some_and(|v| *v == now);
            if !told_now {
                // The kernel's attributes may be older than this open (they
                // live for the attribute timeout): invalidate them before
                // answering, so fstat and the end-of-file check of the first
                // read ask again.
                if let Some(n) = notifier.get() {
                    if let Err(e) = n.inval_inode(kernel_ino(ino), -1, 0) {
                        tracing::debug!(ino, "invalidating the kernel's attributes: {e}");
                    }
                }
            }
            let flags = if keep {
                fuser::consts::FOPEN_KEEP_CACHE
            } else {
                0
            };
            reply.opened(fh, flags | append_io(open_flags));
            Ok(())
        });
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(entry) = self.entry(fh) else {
            return reply.error(libc::EBADF);
        };
        let files = self.files.clone();
        let staging = self.staging.clone();
        let seen = self.seen.clone();
        self.spawn("read", reply, move |c, reply| async move {
            let ino = entry.ino;
            // What any handle of this mount wrote to the file is read back:
            // committed (marking every handle stale) and uploaded first.
            tri!(reply, flush_open(&files, ino).await);
            settle(&staging, ino).await;
            let mut h = entry.handle.lock().await;
            let offset = u64::try_from(offset).unwrap_or(0);
            let mut rebuild = entry.shared.stale.swap(false, Ordering::AcqRel);
            // Through the page cache, the kernel asks past the last page of
            // the size this reader knows only when it has learnt a larger one
            // (appended on another mount, say); direct I/O asks past the end
            // anyway. Either way, look again, and keep the reader (and what
            // it read ahead) if the size is the same.
            let beyond = h.reader.as_ref().map(|r| {
                let past = offset.saturating_add(u64::from(size)) > r.size().next_multiple_of(PAGE);
                (past, r.size())
            });
            if let Some((true, known)) = beyond {
                rebuild |= tri!(reply, c.meta.getattr(ino).await).size != known;
            }
            if rebuild || h.reader.is_none() {
                let (attr, reader) = tri!(reply, c.open_reader(ino).await);
                h.reader = Some(reader);
                // The page cache may hold bytes of the version the last open
                // saw: the next open must not keep it unless it is that one.
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.get(&ino).is_some_and(|v| *v != version(&attr)) {
                    seen.remove(&ino);
                }
            }
            let Some(reader) = h.reader.as_mut() else {
                return Err((reply, ClientError::Invalid("no reader".into())));
            };
            let data = tri!(reply, reader.read_at(offset, size as usize).await);
            reply.data(&data);
            Ok(Io::Read(data.len() as u64))
        });
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        write_flags: u32,
        flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some(handle) = self.handle(fh) else {
            return reply.error(libc::EBADF);
        };
        let data = data.to_vec();
        // Direct I/O writes (O_APPEND handles) bypass the kernel's own
        // clearing of set-id bits: it asks the file system to do it.
        let kill_privs = write_flags & fuser::consts::FUSE_WRITE_KILL_PRIV != 0;
        // O_APPEND (the file's flags now, fcntl included): metad places the
        // data at the end when it commits, not at the kernel's offset.
        let append = flags & libc::O_APPEND != 0;
        self.spawn("write", reply, move |c, reply| async move {
            let mut h = handle.lock().await;
            h.reader = None;
            if kill_privs && !h.privs_killed {
                tri!(reply, kill_set_id_bits(&c, h.ino).await);
                h.privs_killed = true;
            }
            let offset = match u64::try_from(offset) {
                Ok(_) if append => crate::writeback::AT_END,
                Ok(o) => o,
                Err(_) => 0,
            };
            if let Some(staging) = h.staging.clone() {
                // Write-back: append to this handle's log on the local disk.
                if h.stage.is_none() {
                    h.stage = Some(tri!(
                        reply,
                        staging
                            .begin(h.ino)
                            .map_err(|e| ClientError::Data(format!("staging: {e}")))
                    ));
                }
                if let Some(log) = h.stage.as_mut() {
                    tri!(
                        reply,
                        tokio::task::block_in_place(|| log.append(offset, &data))
                            .map_err(|e| ClientError::Data(format!("staging: {e}")))
                    );
                }
                h.shared.dirty.store(true, Ordering::Release);
                reply.written(data.len() as u32);
                return Ok(Io::Written(data.len() as u64));
            }
            if h.writer.as_ref().is_some_and(|w| w.is_append() != append) {
                tri!(reply, h.flush().await);
                h.writer = None;
            }
            if h.writer.is_none() {
                let w = tri!(reply, c.writer(h.ino).await);
                h.writer = Some(if append { w.appending() } else { w });
            }
            // Dirty even if the write fails half-way: what it buffered is
            // committed by the next flush.
            h.shared.dirty.store(true, Ordering::Release);
            let Some(writer) = h.writer.as_mut() else {
                return Err((reply, ClientError::Invalid("no writer".into())));
            };
            tri!(reply, writer.write_at(offset, &data).await);
            reply.written(data.len() as u32);
            Ok(Io::Written(data.len() as u64))
        });
    }

    fn flush(&mut self, _req: &Request<'_>, ino: u64, fh: u64, lock: u64, reply: ReplyEmpty) {
        // Any close by a process releases its POSIX locks on the file.
        match self.locks.take(cairn_ino(ino), lock) {
            None => self.flush_handle("flush", fh, reply),
            Some(unlock) => self.flush_and_unlock(fh, unlock, reply),
        }
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _data: bool, reply: ReplyEmpty) {
        self.flush_handle("fsync", fh, reply);
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _flags: i32,
        lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.guard.released(fh);
        // The last close of an open file description releases its own locks
        // (flock, OFD locks).
        let unlock = self.locks.take_fh(cairn_ino(ino), fh, lock_owner);
        let releasing = (!unlock.is_empty()).then(|| self.locks.releasing(cairn_ino(ino)));
        let handle = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        let Some(Entry { handle, .. }) = handle else {
            return reply.error(libc::EBADF);
        };
        self.spawn("release", reply, move |c, reply| async move {
            let mut h = handle.lock().await;
            let flushed = h.flush().await;
            let mut unlocked = Ok(());
            for op in unlock {
                unlocked = unlocked.and(c.meta.setlk(op).await);
            }
            drop(releasing);
            let closed = c.meta.untrack_open(h.token).await;
            tri!(reply, flushed);
            tri!(reply, unlocked);
            tri!(reply, closed);
            reply.ok();
            Ok(())
        });
    }

    fn opendir(&mut self, req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let gate = self.gate(req);
        let fh = self.fh();
        let dirs = self.dirs.clone();
        self.spawn("opendir", reply, move |c, reply| async move {
            let listing = match list_dir(&c, &gate, cairn_ino(ino)).await {
                Ok(listing) => listing,
                // Removed since the kernel resolved it (open, or a process's
                // cwd): a dead directory lists empty, as on Linux.
                Err(e) if e.errno() == libc::ENOENT => Vec::new(),
                Err(e) => return Err((reply, e)),
            };
            dirs.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(fh, Arc::new(listing));
            reply.opened(fh, 0);
            Ok(())
        });
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(listing) = self.listing(fh) else {
            return reply.error(libc::EBADF);
        };
        let start = usize::try_from(offset).unwrap_or(0);
        for (i, e) in listing.iter().enumerate().skip(start) {
            if reply.add(e.ino, (i + 1) as i64, e.kind, OsStr::from_bytes(&e.name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        reply: ReplyDirectoryPlus,
    ) {
        let Some(listing) = self.listing(fh) else {
            return reply.error(libc::EBADF);
        };
        // One lifetime for the entry and its attributes (fuser's reply): the
        // shorter of the two.
        let ttl = self.timeouts.entry.min(self.timeouts.attr);
        let files = self.files.clone();
        let staging = self.staging.clone();
        let told = self.told.clone();
        let start = usize::try_from(offset).unwrap_or(0);
        self.spawn("readdirplus", reply, move |c, mut reply| async move {
            // A kernel buffer holds a few dozen entries: fetch the attributes
            // missing from the listing for the next batch, in parallel.
            let batch: Vec<(usize, &Listed)> =
                listing.iter().enumerate().skip(start).take(128).collect();
            let attrs = futures::future::join_all(batch.iter().map(|(_, e)| {
                let (c, files, staging) = (c.clone(), files.clone(), staging.clone());
                async move {
                    let ino = cairn_ino(e.ino);
                    // What this mount has buffered or staged for the file
                    // lands first, as for lookup.
                    let busy =
                        is_open(&files, ino) || staging.as_ref().is_some_and(|s| s.is_pending(ino));
                    if e.attr.is_some() && !busy {
                        return Ok(e.attr);
                    }
                    match current_attr(&c, &files, &staging, ino).await {
                        Ok(a) => Ok(Some(a)),
                        Err(err) if err.errno() == libc::ENOENT => Ok(None),
                        Err(err) => Err(err),
                    }
                }
            }))
            .await;
            for ((i, e), attr) in batch.iter().zip(attrs) {
                // Removed since opendir: left out.
                let Some(attr) = tri!(reply, attr) else {
                    continue;
                };
                remember(&told, &attr);
                let full = reply.add(
                    e.ino,
                    (i + 1) as i64,
                    OsStr::from_bytes(&e.name),
                    if e.name == b"." || e.name == b".." {
                        &Duration::ZERO
                    } else {
                        &ttl
                    },
                    &FileAttr {
                        ino: e.ino,
                        ..file_attr(&attr)
                    },
                    0,
                );
                if full {
                    break;
                }
            }
            reply.ok();
            Ok(())
        });
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        self.spawn("statfs", reply, move |c, reply| async move {
            let s = tri!(reply, c.meta.statfs().await);
            let bsize: u64 = 4096;
            let blocks = s.total_bytes / bsize;
            let free = s.total_bytes.saturating_sub(s.used_bytes) / bsize;
            let files = s.inodes + (1 << 32);
            reply.statfs(
                blocks,
                free,
                free,
                files,
                files - s.inodes,
                bsize as u32,
                255,
                bsize as u32,
            );
            Ok(())
        });
    }

    fn setxattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let flags = match flags {
            0 => 0,
            libc::XATTR_CREATE => 1,
            libc::XATTR_REPLACE => 2,
            _ => return reply.error(libc::EINVAL),
        };
        let gate = self.gate(req);
        let (name, value) = (name_bytes(name), value.to_vec());
        self.spawn("setxattr", reply, move |c, reply| async move {
            tri!(
                reply,
                gate.xattr(&c, cairn_ino(ino), &name, access::XattrAccess::Write)
                    .await
            );
            tri!(
                reply,
                c.meta.setxattr(cairn_ino(ino), &name, &value, flags).await
            );
            reply.ok();
            Ok(())
        });
    }

    fn getxattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let gate = self.gate(req);
        let name = name_bytes(name);
        self.spawn("getxattr", reply, move |c, reply| async move {
            tri!(
                reply,
                gate.xattr(&c, cairn_ino(ino), &name, access::XattrAccess::Read)
                    .await
            );
            let value = tri!(reply, c.meta.getxattr(cairn_ino(ino), &name).await);
            answer_xattr(reply, &value, size);
            Ok(())
        });
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        self.spawn("listxattr", reply, move |c, reply| async move {
            let names = tri!(reply, c.meta.listxattr(cairn_ino(ino)).await);
            let mut list = Vec::new();
            for n in names {
                list.extend_from_slice(&n);
                list.push(0);
            }
            answer_xattr(reply, &list, size);
            Ok(())
        });
    }

    fn removexattr(&mut self, req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        let gate = self.gate(req);
        let name = name_bytes(name);
        self.spawn("removexattr", reply, move |c, reply| async move {
            tri!(
                reply,
                gate.xattr(&c, cairn_ino(ino), &name, access::XattrAccess::Write)
                    .await
            );
            tri!(reply, c.meta.removexattr(cairn_ino(ino), &name).await);
            reply.ok();
            Ok(())
        });
    }

    fn access(&mut self, req: &Request<'_>, ino: u64, mask: i32, reply: ReplyEmpty) {
        let gate = self.gate(req);
        if !gate.checks() {
            // The kernel checks permissions itself (`default_permissions`).
            return reply.ok();
        }
        self.spawn("access", reply, move |c, reply| async move {
            tri!(reply, gate.access(&c, cairn_ino(ino), mask).await);
            reply.ok();
            Ok(())
        });
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let gate = self.gate(req);
        let (name, who, ttl) = (name_bytes(name), caller(req), self.timeouts.entry);
        let exclusive = flags & libc::O_EXCL != 0;
        let fh = self.fh();
        let files = self.files.clone();
        let staging = self.staging.clone();
        let told = self.told.clone();
        self.spawn("create", reply, move |c, reply| async move {
            tri!(
                reply,
                gate.create(&c, cairn_ino(parent), &name, flags, fh).await
            );
            let attr = tri!(
                reply,
                c.meta
                    .create_as(who, cairn_ino(parent), &name, mode & 0o7777, exclusive)
                    .await
            );
            let token = tri!(reply, c.meta.track_open(attr.ino).await);
            let file = OpenFile {
                ino: attr.ino,
                token,
                writer: None,
                reader: None,
                staging,
                stage: None,
                shared: Arc::default(),
                files: Arc::downgrade(&files),
                privs_killed: false,
            };
            insert_file(&files, fh, file);
            remember(&told, &attr);
            reply.created(&ttl, &file_attr(&attr), 0, fh, append_io(flags));
            Ok(())
        });
    }

    fn getlk(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let Some(op) = crate::locks::lock_op(cairn_ino(ino), lock_owner, start, end, typ, pid)
        else {
            return reply.error(libc::EINVAL);
        };
        let locks = self.locks.clone();
        self.spawn("getlk", reply, move |c, reply| async move {
            locks.settled(op.ino).await;
            match tri!(reply, c.meta.getlk(op).await) {
                Some(held) => {
                    let (start, end, typ, pid) = crate::locks::kernel_lock(&held);
                    reply.locked(start, end, typ, pid);
                }
                None => reply.locked(0, 0, libc::F_UNLCK, 0),
            }
            Ok(())
        });
    }

    fn setlk(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let ino = cairn_ino(ino);
        let Some(op) = crate::locks::lock_op(ino, lock_owner, start, end, typ, pid) else {
            return reply.error(libc::EINVAL);
        };
        let locks = self.locks.clone();
        self.spawn("setlk", reply, move |c, reply| async move {
            // A closed description's locks go first (see locks.rs).
            locks.settled(ino).await;
            let locking = typ != libc::F_UNLCK;
            if sleep {
                tri!(reply, c.meta.setlkw(op).await);
            } else {
                tri!(reply, c.meta.setlk(op).await);
            }
            if locking {
                locks.note(ino, lock_owner, fh);
            }
            reply.ok();
            Ok(())
        });
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(alloc) = fallocate_mode(mode) else {
            // COLLAPSE_RANGE, INSERT_RANGE, UNSHARE_RANGE, ... (the kernel
            // refuses most of them itself): nothing changes.
            return reply.error(libc::EOPNOTSUPP);
        };
        let (Ok(offset), Ok(length)) = (u64::try_from(offset), u64::try_from(length)) else {
            return reply.error(libc::EINVAL);
        };
        if length == 0 {
            return reply.error(libc::EINVAL);
        }
        let files = self.files.clone();
        let staging = self.staging.clone();
        self.spawn("fallocate", reply, move |c, reply| async move {
            let ino = cairn_ino(ino);
            // Writes buffered or staged by this mount land first, so a hole
            // punched after them wins, as the caller ordered it.
            tri!(reply, flush_open(&files, ino).await);
            settle(&staging, ino).await;
            tri!(
                reply,
                c.meta
                    .fallocate(ino, offset, length, alloc.keep_size, alloc.zero)
                    .await
            );
            // Every reader of this mount rebuilds with the new layout (the
            // kernel drops the range from its page cache and its attributes
            // itself).
            mark_stale(&files, ino, None);
            reply.ok();
            Ok(())
        });
    }
}

/// What a fallocate(2) mode asks of metad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Alloc {
    keep_size: bool,
    zero: bool,
}

/// The modes Cairn supports: allocation (0, KEEP_SIZE), PUNCH_HOLE with
/// KEEP_SIZE, ZERO_RANGE with or without it. Others (COLLAPSE_RANGE,
/// INSERT_RANGE, UNSHARE_RANGE, a punch that would change the size) are None:
/// EOPNOTSUPP, as Linux answers for modes a file system lacks.
fn fallocate_mode(mode: i32) -> Option<Alloc> {
    const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
    const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
    const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
    let keep_size = mode & KEEP != 0;
    match mode & !KEEP {
        0 => Some(Alloc {
            keep_size,
            zero: false,
        }),
        PUNCH if keep_size => Some(Alloc {
            keep_size,
            zero: true,
        }),
        ZERO => Some(Alloc {
            keep_size,
            zero: true,
        }),
        _ => None,
    }
}

/// A directory's listing at opendir: ".", ".." and its entries.
async fn list_dir(c: &Client, gate: &access::Gate, ino: u64) -> Result<Vec<Listed>, ClientError> {
    gate.opendir(c, ino).await?;
    let dir = c.meta.getattr(ino).await?;
    let dot = |name: &[u8], ino: u64| Listed {
        ino: kernel_ino(ino),
        kind: FileType::Directory,
        name: name.to_vec(),
        // The kernel makes no entries for "." and "..".
        attr: Some(dir),
    };
    let mut listing = vec![dot(b".", ino), dot(b"..", dir.parent.max(1))];
    // With the attributes of the entries on the directory's shard, for
    // readdirplus (`ls -l` and dataset scans without a getattr each).
    let entries = c.meta.readdir_with_attrs(ino).await?;
    listing.extend(entries.into_iter().map(|e| Listed {
        ino: kernel_ino(e.ino),
        kind: file_type(e.kind),
        name: e.name.to_vec(),
        attr: e.attr,
    }));
    Ok(listing)
}

/// getxattr/listxattr protocol: size 0 asks for the length; too small is ERANGE.
fn answer_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(libc::ERANGE);
    } else {
        reply.data(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallocate_modes_map_to_metad_or_eopnotsupp() {
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let alloc = |keep_size, zero| Some(Alloc { keep_size, zero });
        assert_eq!(fallocate_mode(0), alloc(false, false));
        assert_eq!(fallocate_mode(keep), alloc(true, false));
        assert_eq!(
            fallocate_mode(libc::FALLOC_FL_PUNCH_HOLE | keep),
            alloc(true, true)
        );
        assert_eq!(
            fallocate_mode(libc::FALLOC_FL_ZERO_RANGE),
            alloc(false, true)
        );
        assert_eq!(
            fallocate_mode(libc::FALLOC_FL_ZERO_RANGE | keep),
            alloc(true, true)
        );
        for refused in [
            libc::FALLOC_FL_PUNCH_HOLE,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE | keep,
            libc::FALLOC_FL_COLLAPSE_RANGE,
            libc::FALLOC_FL_INSERT_RANGE,
            libc::FALLOC_FL_UNSHARE_RANGE,
            0x100,
        ] {
            assert_eq!(fallocate_mode(refused), None, "mode {refused:#x}");
        }
    }
}
