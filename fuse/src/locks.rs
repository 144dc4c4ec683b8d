//! File locks through a mount: the kernel's fcntl (F_GETLK, F_SETLK,
//! F_SETLKW) and flock requests (`FUSE_POSIX_LOCKS`, `FUSE_FLOCK_LOCKS`)
//! become lock requests to the inode's shard, so they hold across mounts.
//!
//! fuser 0.15 does not hand `lk_flags` (FUSE_LK_FLOCK) to the file system,
//! so a flock cannot be told from a whole-file fcntl lock here. Both are kept
//! as POSIX locks under the kernel's lock owner, as Linux's NFS client does:
//! the kernel makes a flock's owner the open file description and an fcntl
//! lock's owner the process, so each keeps its own semantics (two fds of one
//! process conflict with flock and not with fcntl), but a flock and an fcntl
//! lock of different owners on one file conflict, which on a local Linux file
//! system they would not. Closing any fd (flush) releases that process's
//! locks; the last close of an open file description (release) releases the
//! locks of the owners that locked through it, which by then are the open
//! file's own: its flock (FUSE_RELEASE_FLOCK_UNLOCK names that owner) and its
//! OFD locks (F_OFD_SETLK, whose owner the kernel does not name at release).
//!
//! The kernel sends RELEASE in the background: close(2) returns before the
//! open file's flock is dropped, and the process's next lock request may run
//! beside it. A release that drops locks is therefore registered when its
//! request arrives (requests arrive in order) and the inode's later lock
//! requests wait for it, so a closed description's flock is gone for the
//! caller's next flock, as on a local file system.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;

use cairn_proto::pb;

/// The kernel's "to the end of the file" (OFFSET_MAX).
const KERNEL_EOF: u64 = i64::MAX as u64;

/// Which lock owners took locks through this mount, so that only their
/// flush and release cost a round trip to release locks.
#[derive(Default)]
pub struct HeldLocks {
    inner: Mutex<Held>,
    /// Releases per inode still dropping locks, and their completion signal.
    releasing: Mutex<HashMap<u64, usize>>,
    released: tokio::sync::Notify,
}

/// A release that is dropping locks; lock requests on its inode wait until it
/// is dropped.
pub struct Releasing {
    locks: Arc<HeldLocks>,
    ino: u64,
}

impl Drop for Releasing {
    fn drop(&mut self) {
        let mut releasing = self.locks.pending();
        if let Some(n) = releasing.get_mut(&self.ino) {
            *n -= 1;
            if *n == 0 {
                releasing.remove(&self.ino);
            }
        }
        drop(releasing);
        self.locks.released.notify_waiters();
    }
}

#[derive(Default)]
struct Held {
    /// (inode, owner) that may hold locks.
    owners: HashSet<(u64, u64)>,
    /// The inode and the owners that locked through each open file handle.
    by_fh: HashMap<u64, (u64, HashSet<u64>)>,
}

fn unlock_all(ino: u64, owner: u64) -> pb::SetLockOp {
    pb::SetLockOp {
        ino,
        owner,
        pid: 0,
        kind: pb::LockKind::Posix as i32,
        start: 0,
        end: u64::MAX,
        r#type: pb::LockType::Unlock as i32,
    }
}

impl HeldLocks {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, usize>> {
        self.releasing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a release of `ino` that drops locks (call it in the request's
    /// order, before spawning); drop the guard once the unlocks are answered.
    pub fn releasing(self: &Arc<Self>, ino: u64) -> Releasing {
        *self.pending().entry(ino).or_default() += 1;
        Releasing {
            locks: self.clone(),
            ino,
        }
    }

    /// Waits until the releases of `ino` registered so far have dropped their
    /// locks.
    pub async fn settled(&self, ino: u64) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.pending().contains_key(&ino) {
                return;
            }
            released.await;
        }
    }

    /// Notes that `owner` took a lock on `ino` through handle `fh`.
    pub fn note(&self, ino: u64, owner: u64, fh: u64) {
        let mut held = self.held();
        held.owners.insert((ino, owner));
        held.by_fh
            .entry(fh)
            .or_insert_with(|| (ino, HashSet::new()))
            .1
            .insert(owner);
    }

    /// flush: the request releasing every lock of `owner` on `ino`, if it
    /// took any here.
    pub fn take(&self, ino: u64, owner: u64) -> Option<pb::SetLockOp> {
        let mut held = self.held();
        // Forget the owner on every handle of the inode too, so a later
        // release of one of them cannot take locks it takes after this.
        for (fh_ino, owners) in held.by_fh.values_mut() {
            if *fh_ino == ino {
                owners.remove(&owner);
            }
        }
        let had = held.owners.remove(&(ino, owner));
        had.then_some(unlock_all(ino, owner))
    }

    /// release: the requests releasing the locks still held by the owners
    /// that locked through `fh` (with `owner`, the open file's flock owner,
    /// too). Every process owner's close flushed before, so what is left
    /// are the open file's own locks (flock, and OFD locks, for which the
    /// kernel names no owner).
    pub fn take_fh(&self, ino: u64, fh: u64, owner: Option<u64>) -> Vec<pb::SetLockOp> {
        let mut held = self.held();
        let mut owners = held.by_fh.remove(&fh).map(|(_, o)| o).unwrap_or_default();
        owners.extend(owner);
        owners
            .into_iter()
            .filter(|o| held.owners.remove(&(ino, *o)))
            .map(|o| unlock_all(ino, o))
            .collect()
    }
}

/// The kernel's lock type (F_RDLCK, F_WRLCK, F_UNLCK) as Cairn's.
pub fn lock_type(typ: i32) -> Option<pb::LockType> {
    match typ {
        libc::F_RDLCK => Some(pb::LockType::Read),
        libc::F_WRLCK => Some(pb::LockType::Write),
        libc::F_UNLCK => Some(pb::LockType::Unlock),
        _ => None,
    }
}

/// A kernel lock request as Cairn's (None: an unknown type).
pub fn lock_op(
    ino: u64,
    owner: u64,
    start: u64,
    end: u64,
    typ: i32,
    pid: u32,
) -> Option<pb::SetLockOp> {
    Some(pb::SetLockOp {
        ino,
        owner,
        pid,
        kind: pb::LockKind::Posix as i32,
        start,
        end: if end >= KERNEL_EOF { u64::MAX } else { end },
        r#type: lock_type(typ)? as i32,
    })
}

/// A conflicting lock as the kernel wants it: (start, end, type, pid).
pub fn kernel_lock(l: &pb::LockInfo) -> (u64, u64, i32, u32) {
    let typ = if l.r#type == pb::LockType::Read as i32 {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    };
    (l.start.min(KERNEL_EOF), l.end.min(KERNEL_EOF), typ, l.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_ranges_and_types_convert() {
        let op = lock_op(5, 7, 10, KERNEL_EOF, libc::F_WRLCK, 42).unwrap();
        assert_eq!((op.start, op.end, op.pid), (10, u64::MAX, 42));
        assert_eq!(op.r#type, pb::LockType::Write as i32);
        assert!(lock_op(5, 7, 0, 0, 99, 1).is_none());
        let info = pb::LockInfo {
            r#type: pb::LockType::Read as i32,
            start: 3,
            end: u64::MAX,
            pid: 9,
            ..Default::default()
        };
        assert_eq!(kernel_lock(&info), (3, KERNEL_EOF, libc::F_RDLCK, 9));
        let held = HeldLocks::default();
        assert!(held.take(5, 7).is_none());
        held.note(5, 7, 1);
        assert_eq!(held.take(5, 7).unwrap().end, u64::MAX);
        assert!(held.take(5, 7).is_none());
        // Release: what the handle's owners still hold, once each.
        held.note(5, 7, 1);
        held.note(5, 8, 1);
        held.note(5, 9, 2);
        assert!(held.take(5, 8).is_some());
        // 8 locks again through another handle: releasing handle 1 leaves it.
        held.note(5, 8, 3);
        let mut released: Vec<u64> = held
            .take_fh(5, 1, Some(9))
            .iter()
            .map(|o| o.owner)
            .collect();
        released.sort();
        assert_eq!(released, [7, 9]);
        assert!(held.take_fh(5, 2, None).is_empty());
        assert_eq!(held.take_fh(5, 3, None).len(), 1);
    }
}
