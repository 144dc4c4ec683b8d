//! Permission checks made by Cairn itself, for mounts with
//! `--permissions cairn`: the mount is made without `default_permissions`, so
//! the kernel leaves the POSIX checks to us (it still checks the exec bit of
//! regular files, `trusted.*` xattrs, and the sticky bit on its cached
//! attributes; we check them again).
//!
//! The first half is pure: POSIX rules over an inode's attributes ([`Attrs`])
//! and a caller with its supplementary groups ([`Identity`]), answering
//! `Err(errno)`: EACCES where permission bits deny, EPERM where only the owner
//! (or root) may. The second half, [`Guard`] and [`Gate`], fetches from metad
//! the attributes a check needs, per request; in kernel mode it checks nothing
//! and costs nothing.
//!
//! What the kernel caches is not asked again: a name it looked up stays valid
//! for the entry timeout, so search permission on a directory is checked when
//! the kernel looks a name up (`--entry-timeout-ms 0` checks every path walk).

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;

use fuser::TimeOrNow;

use cairn_client::Client;
use cairn_client::ClientError;
use cairn_proto::pb;
use cairn_proto::pb::FileKind;

/// Read, write and execute/search, as in a mode's `rwx` triplet and in
/// access(2)'s `R_OK | W_OK | X_OK`.
pub const R: u32 = 4;
pub const W: u32 = 2;
pub const X: u32 = 1;

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;
/// `__FMODE_EXEC` in the open flags: the kernel opens a file to execute it.
const FMODE_EXEC: i32 = 0o40;

/// Who checks permissions on a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Permissions {
    /// The kernel, on its cached attributes (`default_permissions`).
    #[default]
    Kernel,
    /// Cairn's FUSE layer, on the attributes metad holds.
    Cairn,
}

impl FromStr for Permissions {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kernel" => Ok(Permissions::Kernel),
            "cairn" => Ok(Permissions::Cairn),
            other => Err(format!("expected `kernel` or `cairn`, got `{other}`")),
        }
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Permissions::Kernel => "kernel",
            Permissions::Cairn => "cairn",
        })
    }
}

/// A caller: the request's file-system uid and gid, and the supplementary
/// groups of its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Identity {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    fn owns(&self, a: &Attrs) -> bool {
        self.uid == a.uid
    }
}

/// What the checks look at of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    pub ino: u64,
    /// Permission bits with set-id and sticky bits (`0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub is_dir: bool,
    pub is_regular: bool,
}

impl From<&pb::Attr> for Attrs {
    fn from(a: &pb::Attr) -> Self {
        let kind = FileKind::try_from(a.kind).ok();
        Attrs {
            ino: a.ino,
            perm: a.perm & 0o7777,
            uid: a.uid,
            gid: a.gid,
            is_dir: kind == Some(FileKind::Directory),
            is_regular: kind == Some(FileKind::Regular),
        }
    }
}

/// An errno.
pub type Errno = i32;

/// Whether `who` may do `mask` (`R | W | X`) to `a`: the owner class if it
/// owns the file, else the group class if it is in the file's group, else
/// the others. Root may do anything, except execute a file without any x bit.
pub fn permits(who: &Identity, a: &Attrs, mask: u32) -> Result<(), Errno> {
    let mask = mask & 7;
    if who.is_root() {
        if mask & X != 0 && !a.is_dir && a.perm & 0o111 == 0 {
            return Err(libc::EACCES);
        }
        return Ok(());
    }
    let bits = if who.owns(a) {
        a.perm >> 6
    } else if who.in_group(a.gid) {
        a.perm >> 3
    } else {
        a.perm
    } & 7;
    if bits & mask == mask {
        Ok(())
    } else {
        Err(libc::EACCES)
    }
}

/// Looking a name up in `dir` needs search permission.
pub fn may_lookup(who: &Identity, dir: &Attrs) -> Result<(), Errno> {
    permits(who, dir, X)
}

/// Adding a name to `dir` (create, mknod, mkdir, symlink, link, and the target
/// of a rename) needs write and search permission.
pub fn may_add(who: &Identity, dir: &Attrs) -> Result<(), Errno> {
    permits(who, dir, W | X)
}

/// In a sticky directory only root, the directory's owner and the entry's
/// owner may remove or rename the entry.
pub fn sticky(who: &Identity, dir: &Attrs, entry: &Attrs) -> Result<(), Errno> {
    if dir.perm & S_ISVTX != 0 && !who.is_root() && !who.owns(dir) && !who.owns(entry) {
        return Err(libc::EPERM);
    }
    Ok(())
}

/// Removing `entry` from `dir` (unlink, rmdir, the source of a rename).
pub fn may_remove(who: &Identity, dir: &Attrs, entry: &Attrs) -> Result<(), Errno> {
    permits(who, dir, W | X)?;
    sticky(who, dir, entry)
}

/// Renaming `entry` from `from` to `to`, where `target` is what the new name
/// holds now (it is replaced, or swapped with `exchange`). A directory moved
/// to another parent needs write permission on itself (its `..` changes).
pub fn may_rename(
    who: &Identity,
    from: &Attrs,
    entry: &Attrs,
    to: &Attrs,
    target: Option<&Attrs>,
    exchange: bool,
) -> Result<(), Errno> {
    may_remove(who, from, entry)?;
    match target {
        Some(t) => may_remove(who, to, t)?,
        None => may_add(who, to)?,
    }
    if from.ino != to.ino {
        if entry.is_dir {
            permits(who, entry, W)?;
        }
        if let Some(t) = target.filter(|t| exchange && t.is_dir) {
            permits(who, t, W)?;
        }
    }
    Ok(())
}

/// What opening a file with `flags` needs: read and/or write as
/// `O_ACCMODE` says, write for `O_TRUNC`, execute for an exec.
pub fn open_mask(flags: i32) -> u32 {
    if flags & FMODE_EXEC != 0 {
        return X;
    }
    let mut mask = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => R,
        libc::O_WRONLY => W,
        // O_RDWR, and 3 (Linux: ioctl-only access, checked as both).
        _ => R | W,
    };
    if flags & libc::O_TRUNC != 0 {
        mask |= W;
    }
    mask
}

pub fn may_open(who: &Identity, a: &Attrs, flags: i32) -> Result<(), Errno> {
    permits(who, a, open_mask(flags))
}

/// Whether a handle opened with `flags` may write (and so ftruncate).
pub fn opens_for_writing(flags: i32) -> bool {
    open_mask(flags) & W != 0
}

/// create(2) / open(O_CREAT) of `name` in `dir`, where `existing` is what the
/// name holds: a new name needs write and search on `dir`; an existing one
/// (without `O_EXCL`, which fails with EEXIST anyway) is opened, so it needs
/// search on `dir` and open permission on itself.
pub fn may_create(
    who: &Identity,
    dir: &Attrs,
    existing: Option<&Attrs>,
    flags: i32,
) -> Result<(), Errno> {
    match existing {
        Some(e) if flags & libc::O_EXCL == 0 => {
            may_lookup(who, dir)?;
            may_open(who, e, flags)
        }
        Some(_) => may_lookup(who, dir),
        None => may_add(who, dir),
    }
}

/// Listing a directory needs read permission.
pub fn may_opendir(who: &Identity, dir: &Attrs) -> Result<(), Errno> {
    permits(who, dir, R)
}

/// access(2): `mask` of `R_OK | W_OK | X_OK`; `F_OK` (0) only asks whether
/// the file exists.
pub fn may_access(who: &Identity, a: &Attrs, mask: i32) -> Result<(), Errno> {
    permits(who, a, u32::try_from(mask & 7).unwrap_or(0))
}

/// A time in a setattr: "now" (utimensat with `UTIME_NOW`, utime(NULL)) or
/// an explicit one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Time {
    Now,
    Explicit,
}

impl From<TimeOrNow> for Time {
    fn from(t: TimeOrNow) -> Self {
        match t {
            TimeOrNow::Now => Time::Now,
            TimeOrNow::SpecificTime(_) => Time::Explicit,
        }
    }
}

/// What a setattr asks to change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    /// New mode (the kernel may include the file type bits).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    /// The file handle the kernel names (ftruncate, and O_TRUNC after open).
    pub fh: Option<u64>,
}

impl Change {
    /// A setattr as fuser hands it over.
    pub fn new(
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
    ) -> Self {
        Change {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(Time::from),
            mtime: mtime.map(Time::from),
            fh,
        }
    }
}

/// Whether `who` may change `a` as `change` says; answers the mode to set
/// (`change.mode`, less S_ISGID when a non-root caller outside the file's new
/// group sets it). `writable_handle`: the change names a handle open for
/// writing, which may truncate without write permission on the file now.
///
/// - chown: only root; the owner may "change" the owner to itself.
/// - chgrp: root, or the owner to a group it belongs to.
/// - chmod: root or the owner. A writer who only clears S_ISUID/S_ISGID is
///   let through: that is the kernel killing privileges after a write or a
///   truncate by a non-owner (it sends that setattr as the writer).
/// - truncate: write permission (or a handle open for writing).
/// - times: explicit ones only by root or the owner (EPERM); "now" also by
///   anyone who may write (EACCES otherwise).
pub fn may_setattr(
    who: &Identity,
    a: &Attrs,
    change: &Change,
    writable_handle: bool,
) -> Result<Option<u32>, Errno> {
    let root = who.is_root();
    let owner = who.owns(a);
    let may_chown = |uid: u32| root || (owner && uid == a.uid);
    let may_chgrp = |gid: u32| root || (owner && (gid == a.gid || who.in_group(gid)));
    if !change.uid.is_none_or(may_chown) || !change.gid.is_none_or(may_chgrp) {
        return Err(libc::EPERM);
    }
    let mut mode = change.mode;
    if let Some(m) = change.mode {
        let new = m & 0o7777;
        let kill_privs = new != a.perm
            && new & !(S_ISUID | S_ISGID) == a.perm & !(S_ISUID | S_ISGID)
            && new & !a.perm == 0;
        if root || owner {
            let group = change.gid.unwrap_or(a.gid);
            if !root && !who.in_group(group) && new & S_ISGID != 0 {
                mode = Some(m & !S_ISGID);
            }
        } else if kill_privs {
            permits(who, a, W)?;
        } else {
            return Err(libc::EPERM);
        }
    }
    let times = [change.atime, change.mtime];
    if times.contains(&Some(Time::Explicit)) {
        if !root && !owner {
            return Err(libc::EPERM);
        }
    } else if times.contains(&Some(Time::Now)) && !owner {
        permits(who, a, W)?;
    }
    if change.size.is_some() && !writable_handle {
        permits(who, a, W)?;
    }
    Ok(mode)
}

/// Reading (getxattr) or writing (setxattr, removexattr) an xattr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrAccess {
    Read,
    Write,
}

/// xattrs by namespace: `user.*` as the file's data (read / write
/// permission; only regular files and directories have them; in a sticky
/// directory only its owner writes them); `trusted.*` only root; `security.*`
/// written only by root; `system.*` (POSIX ACLs) written by the owner or root;
/// other names as `user.*`. Listing names needs no permission (Linux).
pub fn may_xattr(who: &Identity, a: &Attrs, name: &[u8], op: XattrAccess) -> Result<(), Errno> {
    let write = op == XattrAccess::Write;
    let denied = if write { libc::EPERM } else { libc::ENODATA };
    if name.starts_with(b"trusted.") {
        return if who.is_root() { Ok(()) } else { Err(denied) };
    }
    if name.starts_with(b"security.") {
        return if !write || who.is_root() {
            Ok(())
        } else {
            Err(libc::EPERM)
        };
    }
    if name.starts_with(b"system.") {
        return if !write || who.is_root() || who.owns(a) {
            Ok(())
        } else {
            Err(libc::EPERM)
        };
    }
    if name.starts_with(b"user.") {
        if !a.is_regular && !a.is_dir {
            return Err(denied);
        }
        if write && a.is_dir && a.perm & S_ISVTX != 0 && !who.is_root() && !who.owns(a) {
            return Err(libc::EPERM);
        }
    }
    permits(who, a, if write { W } else { R })
}

/// The supplementary groups in a `/proc/<pid>/status` text (`Groups:` line).
pub fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The supplementary groups of process `pid`; none when it is unknown (pid 0:
/// a request from the kernel itself) or gone.
///
/// Not cached: a process may change its groups between two requests (as
/// pjdfstest does, switching users in one process), and reading procfs costs
/// microseconds against the metad round trip of every check.
pub fn groups_of(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| parse_groups(&s))
        .unwrap_or_default()
}

/// A mount's permission checking: its mode, and which file handles are open
/// for writing (they may truncate whatever the mode says now).
#[derive(Debug, Default)]
pub struct Guard {
    mode: Permissions,
    writable: Mutex<HashSet<u64>>,
}

impl Guard {
    pub fn new(mode: Permissions) -> Arc<Self> {
        Arc::new(Guard {
            mode,
            writable: Mutex::default(),
        })
    }

    pub fn mode(&self) -> Permissions {
        self.mode
    }

    /// The checks for one request from `uid`/`gid` in process `pid`.
    pub fn gate(self: &Arc<Self>, uid: u32, gid: u32, pid: u32) -> Gate {
        let who = (self.mode == Permissions::Cairn).then(|| Identity {
            uid,
            gid,
            groups: groups_of(pid),
        });
        Gate {
            who,
            guard: self.clone(),
        }
    }

    /// A file handle was released.
    pub fn released(&self, fh: u64) {
        self.writable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    fn opened(&self, fh: u64, flags: i32) {
        // A handle whose open fails after its check stays in the set: handle
        // numbers are never reused, so it grants nothing to anyone.
        if opens_for_writing(flags) {
            self.writable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(fh);
        }
    }

    fn is_writable(&self, fh: u64) -> bool {
        self.writable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&fh)
    }
}

/// The checks for one request: each method fetches the attributes it needs
/// and answers the errno of a denial as a [`ClientError`]. In kernel mode
/// every method answers Ok at once. Inode numbers are Cairn's.
pub struct Gate {
    /// The caller, when Cairn checks.
    who: Option<Identity>,
    guard: Arc<Guard>,
}

fn denied(errno: Errno) -> ClientError {
    let what = match errno {
        libc::EPERM => "operation not permitted",
        libc::EACCES => "permission denied",
        _ => "xattr access denied",
    };
    ClientError::fs(errno, what)
}

async fn attrs(c: &Client, ino: u64) -> Result<Attrs, ClientError> {
    Ok(Attrs::from(&c.meta.getattr(ino).await?))
}

/// The attributes of `name` in `dir`, or None when there is no such name.
async fn entry(c: &Client, dir: u64, name: &[u8]) -> Result<Option<Attrs>, ClientError> {
    match c.meta.lookup(dir, name).await {
        Ok(a) => Ok(Some(Attrs::from(&a))),
        Err(e) if e.errno() == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

impl Gate {
    /// Whether this request is checked by Cairn (false: by the kernel).
    pub fn checks(&self) -> bool {
        self.who.is_some()
    }

    pub async fn lookup(&self, c: &Client, dir: u64) -> Result<(), ClientError> {
        let Some(who) = &self.who else { return Ok(()) };
        may_lookup(who, &attrs(c, dir).await?).map_err(denied)
    }

    /// mknod, mkdir, symlink, link: a new name in `dir`.
    pub async fn add(&self, c: &Client, dir: u64) -> Result<(), ClientError> {
        let Some(who) = &self.who else { return Ok(()) };
        may_add(who, &attrs(c, dir).await?).map_err(denied)
    }

    /// create(2): a new name in `dir`, or an open of what it holds.
    pub async fn create(
        &self,
        c: &Client,
        dir: u64,
        name: &[u8],
        flags: i32,
        fh: u64,
    ) -> Result<(), ClientError> {
        let Some(who) = &self.who else { return Ok(()) };
        let d = attrs(c, dir).await?;
        let existing = entry(c, dir, name).await?;
        may_create(who, &d, existing.as_ref(), flags).map_err(denied)?;
        self.guard.opened(fh, flags);
        Ok(())
    }

    /// unlink, rmdir.
    pub async fn remove(&self, c: &Client, dir: u64, name: &[u8]) -> Result<(), ClientError> {
        let Some(who) = &self.who else { return Ok(()) };
        let d = attrs(c, dir).await?;
        permits(who, &d, W | X).map_err(denied)?;
        match entry(c, dir, name).await? {
            Some(e) => sticky(who, &d, &e).map_err(denied),
            None => Err(ClientError::fs(libc::ENOENT, "no such entry")),
        }
    }

    /// rename: with `Noreplace`, an existing target is not removed (metad
    /// answers EEXIST), so only adding the name is checked.
    pub async fn rename(
        &self,
        c: &Client,
        (from, name): (u64, &[u8]),
        (to, new_name): (u64, &[u8]),
        mode: pb::RenameMode,
    ) -> Result<(), ClientError> {
        let Some(who) = &self.who else { return Ok(()) };
        let from_dir = attrs(c, from).await?;
        let to_dir = if to == from {
            from_dir
        } else {
            attrs(c, to).await?
        };
        let Some(moved) = entry(c, from, name).await? else {
            return Err(ClientError::fs(libc::ENOENT, "no such entry"));
        };
        let target = match mode {
            pb::RenameMode::Noreplace => None,
            _ => entry(c, to, new_name).await?,
        };
        let exchange = mode == pb::RenameMode::Exchange;
        may_rename(who, &from_dir, &moved, &to_dir, target.as_ref(), exchange).map_err(denied)
    }

    pub async fn open(&self, c: &Client, ino: u64, flags: i32, fh: u64) -> Result<(), ClientError> {
        let Some(who) = &self.who else { return Ok(()) };
        may_open(who, &attrs(c, ino).await?, flags).map_err(denied)?;
        self.guard.opened(fh, flags);
        Ok(())
    }

    pub async fn opendir(&self, c: &Client, ino: u64) -> Result<(), ClientError> {
        let Some(who) = &self.who else { return Ok(()) };
        may_opendir(who, &attrs(c, ino).await?).map_err(denied)
    }

    /// Answers the mode to set (see [`may_setattr`]).
    pub async fn setattr(
        &self,
        c: &Client,
        ino: u64,
        change: Change,
    ) -> Result<Option<u32>, ClientError> {
        let Some(who) = &self.who else {
            return Ok(change.mode);
        };
        let writable = change.fh.is_some_and(|fh| self.guard.is_writable(fh));
        may_setattr(who, &attrs(c, ino).await?, &change, writable).map_err(denied)
    }

    pub async fn xattr(
        &self,
        c: &Client,
        ino: u64,
        name: &[u8],
        op: XattrAccess,
    ) -> Result<(), ClientError> {
        let Some(who) = &self.who else { return Ok(()) };
        may_xattr(who, &attrs(c, ino).await?, name, op).map_err(denied)
    }

    pub async fn access(&self, c: &Client, ino: u64, mask: i32) -> Result<(), ClientError> {
        let Some(who) = &self.who else { return Ok(()) };
        may_access(who, &attrs(c, ino).await?, mask).map_err(denied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: u32 = 1000;
    const BOB: u32 = 1001;
    const STAFF: u32 = 50;
    const USERS: u32 = 100;

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Identity {
        Identity {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    fn root() -> Identity {
        user(0, 0, &[])
    }

    fn alice() -> Identity {
        user(ALICE, USERS, &[])
    }

    fn bob() -> Identity {
        user(BOB, USERS, &[])
    }

    fn file(perm: u32, uid: u32, gid: u32) -> Attrs {
        Attrs {
            ino: 10,
            perm,
            uid,
            gid,
            is_dir: false,
            is_regular: true,
        }
    }

    fn dir(ino: u64, perm: u32, uid: u32, gid: u32) -> Attrs {
        Attrs {
            ino,
            perm,
            uid,
            gid,
            is_dir: true,
            is_regular: false,
        }
    }

    #[test]
    fn classes_owner_then_group_then_others() {
        let f = file(0o640, ALICE, STAFF);
        assert_eq!(permits(&alice(), &f, R | W), Ok(()));
        assert_eq!(permits(&alice(), &f, X), Err(libc::EACCES));
        // Bob is not in staff: the others' bits (none).
        assert_eq!(permits(&bob(), &f, R), Err(libc::EACCES));
        // Primary group and supplementary group both count.
        assert_eq!(permits(&user(BOB, STAFF, &[]), &f, R), Ok(()));
        assert_eq!(permits(&user(BOB, USERS, &[7, STAFF]), &f, R), Ok(()));
        assert_eq!(
            permits(&user(BOB, USERS, &[STAFF]), &f, W),
            Err(libc::EACCES)
        );
        // The owner class applies even when the others may do more.
        let f = file(0o077, ALICE, STAFF);
        assert_eq!(permits(&alice(), &f, R), Err(libc::EACCES));
        assert_eq!(permits(&bob(), &f, R | W | X), Ok(()));
        // The group class applies even when the others may do more.
        let f = file(0o607, ALICE, STAFF);
        assert_eq!(permits(&user(BOB, STAFF, &[]), &f, R), Err(libc::EACCES));
        // Asking for nothing (F_OK) is always allowed.
        assert_eq!(permits(&bob(), &file(0, ALICE, STAFF), 0), Ok(()));
    }

    #[test]
    fn root_bypasses_bits_but_exec_needs_an_x_bit() {
        let f = file(0o000, ALICE, STAFF);
        assert_eq!(permits(&root(), &f, R | W), Ok(()));
        assert_eq!(permits(&root(), &f, X), Err(libc::EACCES));
        assert_eq!(permits(&root(), &file(0o001, ALICE, STAFF), X), Ok(()));
        assert_eq!(permits(&root(), &file(0o100, ALICE, STAFF), R | X), Ok(()));
        // Directories: root searches any.
        assert_eq!(permits(&root(), &dir(2, 0o000, ALICE, STAFF), X), Ok(()));
        assert_eq!(may_access(&root(), &f, libc::X_OK), Err(libc::EACCES));
        assert_eq!(may_access(&root(), &f, libc::R_OK | libc::W_OK), Ok(()));
    }

    #[test]
    fn lookup_and_create_need_search_and_write_on_the_parent() {
        let d = dir(2, 0o755, 0, 0);
        assert_eq!(may_lookup(&alice(), &d), Ok(()));
        assert_eq!(may_add(&alice(), &d), Err(libc::EACCES));
        assert_eq!(may_add(&root(), &d), Ok(()));
        let d = dir(2, 0o644, ALICE, USERS);
        assert_eq!(may_lookup(&bob(), &d), Err(libc::EACCES));
        // Write without search is not enough.
        let d = dir(2, 0o722, 0, 0);
        assert_eq!(may_add(&alice(), &d), Err(libc::EACCES));
        let d = dir(2, 0o733, 0, 0);
        assert_eq!(may_add(&alice(), &d), Ok(()));
    }

    #[test]
    fn create_of_an_existing_name_is_an_open() {
        let d = dir(2, 0o755, 0, 0);
        let f = file(0o644, 0, 0);
        // New name in a directory Alice cannot write.
        assert_eq!(
            may_create(&alice(), &d, None, libc::O_WRONLY | libc::O_CREAT),
            Err(libc::EACCES)
        );
        // An existing name: open permission on the file decides.
        assert_eq!(
            may_create(&alice(), &d, Some(&f), libc::O_RDONLY | libc::O_CREAT),
            Ok(())
        );
        assert_eq!(
            may_create(&alice(), &d, Some(&f), libc::O_WRONLY | libc::O_CREAT),
            Err(libc::EACCES)
        );
        let mine = file(0o644, ALICE, USERS);
        assert_eq!(
            may_create(&alice(), &d, Some(&mine), libc::O_RDWR | libc::O_TRUNC),
            Ok(())
        );
        // O_EXCL: EEXIST comes from the namespace; only search is checked.
        assert_eq!(
            may_create(&alice(), &d, Some(&f), libc::O_WRONLY | libc::O_EXCL),
            Ok(())
        );
        let closed = dir(2, 0o700, 0, 0);
        assert_eq!(
            may_create(&alice(), &closed, Some(&f), libc::O_RDONLY),
            Err(libc::EACCES)
        );
    }

    #[test]
    fn open_modes() {
        let f = file(0o604, ALICE, STAFF);
        assert_eq!(may_open(&bob(), &f, libc::O_RDONLY), Ok(()));
        assert_eq!(may_open(&bob(), &f, libc::O_WRONLY), Err(libc::EACCES));
        assert_eq!(may_open(&bob(), &f, libc::O_RDWR), Err(libc::EACCES));
        assert_eq!(
            may_open(&bob(), &f, libc::O_RDONLY | libc::O_TRUNC),
            Err(libc::EACCES)
        );
        assert_eq!(may_open(&alice(), &f, libc::O_RDWR | libc::O_TRUNC), Ok(()));
        let wo = file(0o200, ALICE, STAFF);
        assert_eq!(may_open(&alice(), &wo, libc::O_WRONLY), Ok(()));
        assert_eq!(may_open(&alice(), &wo, libc::O_RDONLY), Err(libc::EACCES));
        // An exec open needs x, not r.
        let exec_only = file(0o711, 0, 0);
        assert_eq!(may_open(&alice(), &exec_only, FMODE_EXEC), Ok(()));
        assert_eq!(
            may_open(&alice(), &exec_only, libc::O_RDONLY),
            Err(libc::EACCES)
        );
        assert!(opens_for_writing(libc::O_WRONLY));
        assert!(opens_for_writing(libc::O_RDONLY | libc::O_TRUNC));
        assert!(!opens_for_writing(libc::O_RDONLY | libc::O_APPEND));
        assert_eq!(
            may_opendir(&bob(), &dir(2, 0o711, ALICE, STAFF)),
            Err(libc::EACCES)
        );
        assert_eq!(may_opendir(&bob(), &dir(2, 0o754, ALICE, USERS)), Ok(()));
    }

    #[test]
    fn sticky_directories_protect_other_users_entries() {
        let tmp = dir(2, 0o1777, 0, 0);
        let alices = file(0o644, ALICE, USERS);
        assert_eq!(may_remove(&alice(), &tmp, &alices), Ok(()));
        assert_eq!(may_remove(&bob(), &tmp, &alices), Err(libc::EPERM));
        assert_eq!(may_remove(&root(), &tmp, &alices), Ok(()));
        // The directory's owner may remove anything in it.
        let bobs_tmp = dir(2, 0o1777, BOB, USERS);
        assert_eq!(may_remove(&bob(), &bobs_tmp, &alices), Ok(()));
        // Without the sticky bit, write on the directory is enough.
        assert_eq!(may_remove(&bob(), &dir(2, 0o777, 0, 0), &alices), Ok(()));
        // Missing write permission is EACCES, checked first.
        assert_eq!(
            may_remove(&bob(), &dir(2, 0o1755, 0, 0), &alices),
            Err(libc::EACCES)
        );
    }

    #[test]
    fn rename_checks_both_parents_sticky_bits_and_moved_directories() {
        let a = dir(2, 0o777, 0, 0);
        let b = dir(3, 0o777, 0, 0);
        let f = file(0o644, ALICE, USERS);
        assert_eq!(may_rename(&bob(), &a, &f, &b, None, false), Ok(()));
        // Target parent not writable.
        let ro = dir(3, 0o755, 0, 0);
        assert_eq!(
            may_rename(&alice(), &a, &f, &ro, None, false),
            Err(libc::EACCES)
        );
        // Source parent not writable.
        assert_eq!(
            may_rename(&alice(), &ro, &f, &a, None, false),
            Err(libc::EACCES)
        );
        // Sticky source: only the owner moves it.
        let tmp = dir(2, 0o1777, 0, 0);
        assert_eq!(
            may_rename(&bob(), &tmp, &f, &b, None, false),
            Err(libc::EPERM)
        );
        assert_eq!(may_rename(&alice(), &tmp, &f, &b, None, false), Ok(()));
        // Sticky target: replacing someone else's file is refused.
        let tmp3 = dir(3, 0o1777, 0, 0);
        let bobs = file(0o644, BOB, USERS);
        assert_eq!(
            may_rename(&alice(), &a, &f, &tmp3, Some(&bobs), false),
            Err(libc::EPERM)
        );
        assert_eq!(
            may_rename(&bob(), &a, &bobs, &tmp3, Some(&bobs), false),
            Ok(())
        );
        // A directory moved to another parent needs write on itself...
        let sub = dir(9, 0o555, ALICE, USERS);
        assert_eq!(
            may_rename(&alice(), &a, &sub, &b, None, false),
            Err(libc::EACCES)
        );
        // ...but not when it stays in its parent.
        assert_eq!(may_rename(&alice(), &a, &sub, &a, None, false), Ok(()));
        assert_eq!(may_rename(&root(), &a, &sub, &b, None, false), Ok(()));
        // Exchange moves the target directory too.
        let sub2 = dir(10, 0o555, BOB, USERS);
        let mine = dir(11, 0o755, ALICE, USERS);
        assert_eq!(
            may_rename(&alice(), &a, &mine, &b, Some(&sub2), true),
            Err(libc::EACCES)
        );
        assert_eq!(
            may_rename(&alice(), &a, &mine, &b, Some(&sub2), false),
            Ok(())
        );
    }

    #[test]
    fn chown_only_by_root_chgrp_by_the_owner_to_its_groups() {
        let f = file(0o644, ALICE, USERS);
        let chown = |uid, gid| Change {
            uid,
            gid,
            ..Default::default()
        };
        assert_eq!(
            may_setattr(&root(), &f, &chown(Some(BOB), None), false),
            Ok(None)
        );
        assert_eq!(
            may_setattr(&alice(), &f, &chown(Some(BOB), None), false),
            Err(libc::EPERM)
        );
        // The owner "changing" the owner to itself is fine, anyone else not.
        assert_eq!(
            may_setattr(&alice(), &f, &chown(Some(ALICE), None), false),
            Ok(None)
        );
        assert_eq!(
            may_setattr(&bob(), &f, &chown(Some(ALICE), None), false),
            Err(libc::EPERM)
        );
        // chgrp to a group the owner is in (supplementary), not to another.
        let alice_staff = user(ALICE, USERS, &[STAFF]);
        assert_eq!(
            may_setattr(&alice_staff, &f, &chown(None, Some(STAFF)), false),
            Ok(None)
        );
        assert_eq!(
            may_setattr(&alice(), &f, &chown(None, Some(STAFF)), false),
            Err(libc::EPERM)
        );
        assert_eq!(
            may_setattr(&alice(), &f, &chown(Some(ALICE), Some(USERS)), false),
            Ok(None)
        );
        // A non-owner cannot chgrp, even to its own group.
        assert_eq!(
            may_setattr(&user(BOB, STAFF, &[]), &f, &chown(None, Some(STAFF)), false),
            Err(libc::EPERM)
        );
        assert_eq!(
            may_setattr(&root(), &f, &chown(Some(BOB), Some(STAFF)), false),
            Ok(None)
        );
    }

    #[test]
    fn chmod_by_owner_or_root_and_setgid_cleared_outside_the_group() {
        let f = file(0o644, ALICE, STAFF);
        let chmod = |m| Change {
            mode: Some(m),
            ..Default::default()
        };
        assert_eq!(
            may_setattr(&alice(), &f, &chmod(0o100600), false),
            Ok(Some(0o100600))
        );
        assert_eq!(
            may_setattr(&bob(), &f, &chmod(0o600), false),
            Err(libc::EPERM)
        );
        assert_eq!(
            may_setattr(&root(), &f, &chmod(0o2755), false),
            Ok(Some(0o2755))
        );
        // Alice is not in staff: S_ISGID is dropped, S_ISUID kept.
        assert_eq!(
            may_setattr(&alice(), &f, &chmod(0o6755), false),
            Ok(Some(0o4755))
        );
        let alice_staff = user(ALICE, USERS, &[STAFF]);
        assert_eq!(
            may_setattr(&alice_staff, &f, &chmod(0o2755), false),
            Ok(Some(0o2755))
        );
        // With a chgrp in the same request, the new group decides.
        let both = Change {
            mode: Some(0o2755),
            gid: Some(USERS),
            ..Default::default()
        };
        assert_eq!(may_setattr(&alice(), &f, &both, false), Ok(Some(0o2755)));
        // The kernel killing set-id bits after a non-owner's write: allowed
        // for a writer, not for others, and nothing else may change.
        let suid = file(0o6777, ALICE, STAFF);
        assert_eq!(
            may_setattr(&bob(), &suid, &chmod(0o100777), false),
            Ok(Some(0o100777))
        );
        assert_eq!(
            may_setattr(&bob(), &suid, &chmod(0o2777), false),
            Ok(Some(0o2777))
        );
        assert_eq!(
            may_setattr(&bob(), &file(0o6755, ALICE, STAFF), &chmod(0o755), false),
            Err(libc::EACCES)
        );
        assert_eq!(
            may_setattr(&bob(), &suid, &chmod(0o0775), false),
            Err(libc::EPERM)
        );
        assert_eq!(
            may_setattr(&bob(), &suid, &chmod(0o6777), false),
            Err(libc::EPERM)
        );
    }

    #[test]
    fn truncate_needs_write_or_a_writable_handle() {
        let f = file(0o644, ALICE, USERS);
        let truncate = Change {
            size: Some(0),
            ..Default::default()
        };
        assert_eq!(may_setattr(&alice(), &f, &truncate, false), Ok(None));
        assert_eq!(may_setattr(&bob(), &f, &truncate, false), Err(libc::EACCES));
        assert_eq!(may_setattr(&bob(), &f, &truncate, true), Ok(None));
        assert_eq!(
            may_setattr(&alice(), &file(0o444, ALICE, USERS), &truncate, false),
            Err(libc::EACCES)
        );
        assert_eq!(
            may_setattr(&root(), &file(0, ALICE, USERS), &truncate, false),
            Ok(None)
        );
    }

    #[test]
    fn times_now_needs_write_explicit_needs_ownership() {
        let times = |t| Change {
            atime: Some(t),
            mtime: Some(t),
            ..Default::default()
        };
        let shared = file(0o666, ALICE, USERS);
        let closed = file(0o644, ALICE, USERS);
        assert_eq!(
            may_setattr(&bob(), &shared, &times(Time::Now), false),
            Ok(None)
        );
        assert_eq!(
            may_setattr(&bob(), &closed, &times(Time::Now), false),
            Err(libc::EACCES)
        );
        assert_eq!(
            may_setattr(&bob(), &shared, &times(Time::Explicit), false),
            Err(libc::EPERM)
        );
        let readonly_own = file(0o444, ALICE, USERS);
        assert_eq!(
            may_setattr(&alice(), &readonly_own, &times(Time::Explicit), false),
            Ok(None)
        );
        assert_eq!(
            may_setattr(&alice(), &readonly_own, &times(Time::Now), false),
            Ok(None)
        );
        assert_eq!(
            may_setattr(&root(), &closed, &times(Time::Explicit), false),
            Ok(None)
        );
        // One explicit time is enough to need ownership.
        let mixed = Change {
            atime: Some(Time::Now),
            mtime: Some(Time::Explicit),
            ..Default::default()
        };
        assert_eq!(
            may_setattr(&bob(), &shared, &mixed, false),
            Err(libc::EPERM)
        );
    }

    #[test]
    fn xattrs_by_namespace() {
        let f = file(0o640, ALICE, STAFF);
        let get = XattrAccess::Read;
        let set = XattrAccess::Write;
        assert_eq!(may_xattr(&alice(), &f, b"user.a", set), Ok(()));
        assert_eq!(may_xattr(&bob(), &f, b"user.a", get), Err(libc::EACCES));
        let staff = user(BOB, USERS, &[STAFF]);
        assert_eq!(may_xattr(&staff, &f, b"user.a", get), Ok(()));
        assert_eq!(may_xattr(&staff, &f, b"user.a", set), Err(libc::EACCES));
        // trusted.*: root only; security.*: written by root only.
        assert_eq!(may_xattr(&alice(), &f, b"trusted.a", set), Err(libc::EPERM));
        assert_eq!(
            may_xattr(&alice(), &f, b"trusted.a", get),
            Err(libc::ENODATA)
        );
        assert_eq!(may_xattr(&root(), &f, b"trusted.a", set), Ok(()));
        assert_eq!(
            may_xattr(&alice(), &f, b"security.a", set),
            Err(libc::EPERM)
        );
        assert_eq!(may_xattr(&bob(), &f, b"security.a", get), Ok(()));
        assert_eq!(may_xattr(&root(), &f, b"security.a", set), Ok(()));
        // system.* (ACLs): the owner writes.
        assert_eq!(
            may_xattr(&alice(), &f, b"system.posix_acl_access", set),
            Ok(())
        );
        assert_eq!(
            may_xattr(&bob(), &f, b"system.posix_acl_access", set),
            Err(libc::EPERM)
        );
        // user.* on a sticky directory: only its owner writes.
        let tmp = dir(2, 0o1777, ALICE, USERS);
        assert_eq!(may_xattr(&bob(), &tmp, b"user.a", set), Err(libc::EPERM));
        assert_eq!(may_xattr(&bob(), &tmp, b"user.a", get), Ok(()));
        assert_eq!(may_xattr(&alice(), &tmp, b"user.a", set), Ok(()));
        // user.* on a symlink or device: none.
        let mut link = file(0o777, ALICE, USERS);
        link.is_regular = false;
        assert_eq!(may_xattr(&alice(), &link, b"user.a", set), Err(libc::EPERM));
        assert_eq!(
            may_xattr(&alice(), &link, b"user.a", get),
            Err(libc::ENODATA)
        );
        // root reads and writes user.* regardless of bits.
        assert_eq!(
            may_xattr(&root(), &file(0, ALICE, USERS), b"user.a", set),
            Ok(())
        );
    }

    #[test]
    fn groups_from_proc_status() {
        let status = "Name:\tsh\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t4 24 27 \nNStgid:\t1\n";
        assert_eq!(parse_groups(status), [4, 24, 27]);
        assert_eq!(parse_groups("Name:\tsh\nGroups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("garbage"), Vec::<u32>::new());
        // This process: its groups are the ones procfs shows for it.
        let me = groups_of(std::process::id());
        let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        assert_eq!(me, parse_groups(&text));
        assert_eq!(groups_of(0), Vec::<u32>::new());
    }

    #[test]
    fn mode_names() {
        assert_eq!("kernel".parse(), Ok(Permissions::Kernel));
        assert_eq!("cairn".parse(), Ok(Permissions::Cairn));
        assert!("posix".parse::<Permissions>().is_err());
        assert_eq!(Permissions::Cairn.to_string(), "cairn");
        assert_eq!(Permissions::default(), Permissions::Kernel);
    }

    #[test]
    fn kernel_mode_gate_checks_nothing() {
        let guard = Guard::new(Permissions::Kernel);
        assert!(!guard.gate(ALICE, USERS, 0).checks());
        let guard = Guard::new(Permissions::Cairn);
        let gate = guard.gate(ALICE, USERS, 0);
        assert_eq!(
            gate.who,
            Some(Identity {
                uid: ALICE,
                gid: USERS,
                groups: vec![]
            })
        );
        guard.opened(7, libc::O_WRONLY);
        guard.opened(8, libc::O_RDONLY);
        assert!(guard.is_writable(7));
        assert!(!guard.is_writable(8));
        guard.released(7);
        assert!(!guard.is_writable(7));
    }
}
