//! Advisory file locks: POSIX (fcntl) byte-range locks and BSD (flock)
//! whole-file locks of one inode, kept in the inode's shard's state machine so
//! they survive a leader failover.
//!
//! [`LockTable`] is a pure data structure (no storage): conflict detection,
//! the POSIX merge/split of one holder's ranges and flock's whole-file
//! replacement. A holder is (client id, lock owner): the kernel's owner for
//! POSIX locks (one per process) and for flock (one per open file
//! description), qualified by the client (mount) it came through.
//! Invariants of a table:
//! - one holder's POSIX locks are disjoint, and touching ranges of the same
//!   type are merged into one;
//! - a holder has at most one flock lock, always over the whole file;
//! - POSIX and flock locks are independent: they never conflict with each
//!   other (as on Linux);
//! - a holder never conflicts with itself; locks of different holders of one
//!   kind overlap only when all of them are read locks.
//!
//! The glue at the end stores a table under `k<ino>` and indexes the inodes a
//! client holds locks on under `K<client><ino>`, so that expiring a client's
//! session (the same lease that keeps its open files) drops its locks, and
//! deleting an inode drops its table.

use serde::Deserialize;
use serde::Serialize;

use cairn_proto::status::EAGAIN;
use cairn_proto::status::EINVAL;
use cairn_proto::status::ENOLCK;

use crate::error::MetaError;
use crate::keys;
use crate::kv::Txn;

/// The last byte of a range that runs to the end of the file (and beyond).
pub const EOF: u64 = u64::MAX;

/// Most lock records one inode holds; more answer ENOLCK.
pub const MAX_LOCKS_PER_INODE: usize = 4096;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockKind {
    /// fcntl(2) byte-range locks.
    Posix,
    /// flock(2) whole-file locks.
    Flock,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockType {
    Read,
    Write,
}

/// What a request does to the holder's locks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOp {
    Lock(LockType),
    Unlock,
}

/// Who holds a lock: a lock owner of one client.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Holder {
    pub client: u64,
    pub owner: u64,
}

/// One held lock over bytes `start..=end`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lock {
    pub kind: LockKind,
    pub holder: Holder,
    /// The holder's process, reported by GETLK only.
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub typ: LockType,
}

/// A set or test of a lock. flock requests ignore the range (whole file).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRequest {
    pub kind: LockKind,
    pub holder: Holder,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub op: LockOp,
}

/// Why a request was refused; the table is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// Another holder's lock is in the way.
    Conflict(Lock),
    /// Malformed request (start after end).
    Invalid(&'static str),
    /// The inode has too many lock records.
    TooMany,
}

impl From<Denied> for MetaError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Conflict(l) => MetaError::fs(
                EAGAIN,
                format!(
                    "{:?} {:?} lock on {}..={} held by pid {} of client {:#x}",
                    l.kind, l.typ, l.start, l.end, l.pid, l.holder.client
                ),
            ),
            Denied::Invalid(m) => MetaError::fs(EINVAL, m),
            Denied::TooMany => MetaError::fs(ENOLCK, "too many locks on this inode"),
        }
    }
}

fn overlaps(l: &Lock, start: u64, end: u64) -> bool {
    l.start <= end && start <= l.end
}

/// The locks of one inode.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct LockTable {
    /// Sorted by (kind, holder, start).
    locks: Vec<Lock>,
}

impl LockTable {
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    pub fn locks(&self) -> &[Lock] {
        &self.locks
    }

    /// The range a request covers: flock is always the whole file.
    fn range(req: &LockRequest) -> Result<(u64, u64), Denied> {
        match req.kind {
            LockKind::Flock => Ok((0, EOF)),
            LockKind::Posix if req.start > req.end => {
                Err(Denied::Invalid("lock starts after its end"))
            }
            LockKind::Posix => Ok((req.start, req.end)),
        }
    }

    /// The first lock of another holder that keeps `req` from being granted
    /// (F_GETLK); None for an unlock or when nothing is in the way.
    pub fn conflict(&self, req: &LockRequest) -> Result<Option<Lock>, Denied> {
        let (start, end) = Self::range(req)?;
        let LockOp::Lock(typ) = req.op else {
            return Ok(None);
        };
        Ok(self
            .locks
            .iter()
            .find(|l| {
                l.kind == req.kind
                    && l.holder != req.holder
                    && overlaps(l, start, end)
                    && (l.typ == LockType::Write || typ == LockType::Write)
            })
            .copied())
    }

    /// Applies a lock or unlock (F_SETLK, flock): all or nothing.
    ///
    /// POSIX: the holder's locks inside the range are replaced by the new one
    /// (upgrade, downgrade, split), and touching locks of the same type are
    /// merged. flock: the holder's lock is replaced (conversion is atomic: a
    /// refused conversion keeps the old lock).
    pub fn set(&mut self, req: &LockRequest) -> Result<(), Denied> {
        let (start, end) = Self::range(req)?;
        if let Some(c) = self.conflict(req)? {
            return Err(Denied::Conflict(c));
        }
        let mine = |l: &Lock| l.kind == req.kind && l.holder == req.holder;
        let mut out = Vec::with_capacity(self.locks.len() + 2);
        // Carve the range out of the holder's locks.
        for l in &self.locks {
            if !mine(l) || !overlaps(l, start, end) {
                out.push(*l);
                continue;
            }
            if l.start < start {
                out.push(Lock {
                    end: start - 1,
                    ..*l
                });
            }
            if l.end > end {
                out.push(Lock {
                    start: end + 1,
                    ..*l
                });
            }
        }
        if let LockOp::Lock(typ) = req.op {
            let mut new = Lock {
                kind: req.kind,
                holder: req.holder,
                pid: req.pid,
                start,
                end,
                typ,
            };
            // Merge with the holder's touching locks of the same type (they
            // are disjoint from the range now, so only neighbours remain).
            out.retain(|l| {
                let touches = (l.end < EOF && l.end + 1 == new.start)
                    || (new.end < EOF && new.end + 1 == l.start);
                if mine(l) && l.typ == typ && touches {
                    new.start = new.start.min(l.start);
                    new.end = new.end.max(l.end);
                    false
                } else {
                    true
                }
            });
            out.push(new);
            if out.len() > MAX_LOCKS_PER_INODE && out.len() > self.locks.len() {
                return Err(Denied::TooMany);
            }
        }
        out.sort_by_key(|l| (l.kind, l.holder, l.start));
        self.locks = out;
        Ok(())
    }

    /// Drops every lock of `client` (its session ended); whether any went.
    pub fn release_client(&mut self, client: u64) -> bool {
        let before = self.locks.len();
        self.locks.retain(|l| l.holder.client != client);
        self.locks.len() != before
    }

    /// The clients holding locks here.
    fn clients(&self) -> std::collections::BTreeSet<u64> {
        self.locks.iter().map(|l| l.holder.client).collect()
    }
}

// ---------------------------------------------------------------- state machine

/// The lock table of an inode (empty when it has none).
pub fn load(txn: &Txn, ino: u64) -> Result<LockTable, MetaError> {
    Ok(txn.get_as(&keys::lock_table(ino))?.unwrap_or_default())
}

/// Stores `table` for `ino`, keeping the per-client index in step.
fn store(txn: &mut Txn, ino: u64, before: &LockTable, table: &LockTable) -> Result<(), MetaError> {
    let now = table.clients();
    for gone in before.clients().difference(&now) {
        txn.delete(keys::lock_held(*gone, ino));
    }
    for client in &now {
        txn.put(keys::lock_held(*client, ino), Vec::new());
    }
    if table.is_empty() {
        txn.delete(keys::lock_table(ino));
        Ok(())
    } else {
        txn.put_as(keys::lock_table(ino), table)
    }
}

/// A replicated lock command.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum LockCommand {
    /// F_SETLK / flock on an existing inode. Taking a lock opens (or extends)
    /// the client's session on this shard: the lock lives as long as it.
    Set {
        ino: u64,
        req: LockRequest,
        now_ms: i64,
        lease_ms: i64,
    },
}

/// Applies a lock command.
pub fn apply(txn: &mut Txn, cmd: &LockCommand) -> Result<crate::fs::Reply, MetaError> {
    match cmd {
        LockCommand::Set {
            ino,
            req,
            now_ms,
            lease_ms,
        } => {
            crate::fs::get_inode(txn, *ino)?;
            let before = load(txn, *ino)?;
            let mut table = before.clone();
            table.set(req)?;
            store(txn, *ino, &before, &table)?;
            if matches!(req.op, LockOp::Lock(_)) {
                crate::fs::touch_session(txn, req.holder.client, now_ms + lease_ms)?;
            }
            Ok(crate::fs::Reply::None)
        }
    }
}

/// Drops the lock table of a deleted inode.
pub fn drop_inode(txn: &mut Txn, ino: u64) -> Result<(), MetaError> {
    let table = load(txn, ino)?;
    store(txn, ino, &table, &LockTable::default())
}

/// Drops every lock of a client whose session ended.
pub fn drop_client(txn: &mut Txn, client: u64) -> Result<(), MetaError> {
    let prefix = keys::lock_held_prefix(client);
    for (k, _) in txn.scan(&prefix, b"", usize::MAX)? {
        let ino = u64::from_be_bytes(
            k[9..17]
                .try_into()
                .map_err(|_| MetaError::Storage("malformed lock index key".into()))?,
        );
        let before = load(txn, ino)?;
        let mut table = before.clone();
        table.release_client(client);
        store(txn, ino, &before, &table)?;
        // A table without this client still leaves the index entry: drop it.
        txn.delete(k);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockKind::*;
    use LockOp::*;
    use LockType::*;

    const A: Holder = Holder {
        client: 1,
        owner: 10,
    };
    const B: Holder = Holder {
        client: 2,
        owner: 10,
    };
    /// Same client as A, another owner (another process on the same mount).
    const A2: Holder = Holder {
        client: 1,
        owner: 11,
    };

    fn req(kind: LockKind, holder: Holder, start: u64, end: u64, op: LockOp) -> LockRequest {
        LockRequest {
            kind,
            holder,
            pid: holder.owner as u32,
            start,
            end,
            op,
        }
    }

    fn posix(holder: Holder, start: u64, end: u64, op: LockOp) -> LockRequest {
        req(Posix, holder, start, end, op)
    }

    /// The table as (holder, start, end, type).
    fn ranges(t: &LockTable) -> Vec<(Holder, u64, u64, LockType)> {
        t.locks()
            .iter()
            .map(|l| (l.holder, l.start, l.end, l.typ))
            .collect()
    }

    fn conflict_of(r: Result<(), Denied>) -> super::Lock {
        match r {
            Err(Denied::Conflict(l)) => l,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn overlapping_writes_of_different_holders_conflict() {
        let mut t = LockTable::default();
        t.set(&posix(A, 10, 19, Lock(Write))).unwrap();
        let before = t.clone();
        let c = conflict_of(t.set(&posix(B, 15, 30, Lock(Write))));
        assert_eq!((c.holder, c.start, c.end, c.typ), (A, 10, 19, Write));
        assert_eq!(c.pid, 10);
        // A read over a write conflicts too; the table is unchanged.
        conflict_of(t.set(&posix(B, 19, 19, Lock(Read))));
        // Another process on the same client is another holder.
        conflict_of(t.set(&posix(A2, 0, EOF, Lock(Read))));
        assert_eq!(t, before);
        // GETLK reports the same lock, and nothing for a free range.
        let got = t.conflict(&posix(B, 0, 10, Lock(Read))).unwrap().unwrap();
        assert_eq!((got.start, got.end), (10, 19));
        assert_eq!(t.conflict(&posix(B, 20, EOF, Lock(Write))).unwrap(), None);
        assert_eq!(t.conflict(&posix(B, 0, EOF, Unlock)).unwrap(), None);
    }

    #[test]
    fn touching_but_disjoint_ranges_coexist() {
        let mut t = LockTable::default();
        t.set(&posix(A, 10, 19, Lock(Write))).unwrap();
        t.set(&posix(B, 0, 9, Lock(Write))).unwrap();
        t.set(&posix(B, 20, EOF, Lock(Write))).unwrap();
        assert_eq!(
            ranges(&t),
            [(A, 10, 19, Write), (B, 0, 9, Write), (B, 20, EOF, Write)]
        );
    }

    #[test]
    fn read_locks_share() {
        let mut t = LockTable::default();
        t.set(&posix(A, 0, 99, Lock(Read))).unwrap();
        t.set(&posix(B, 50, 150, Lock(Read))).unwrap();
        t.set(&posix(A2, 0, EOF, Lock(Read))).unwrap();
        assert_eq!(t.locks().len(), 3);
        // A write anywhere in the shared part is refused, for the readers too.
        conflict_of(t.set(&posix(A, 60, 60, Lock(Write))));
        // Upgrading where nobody else reads works.
        t.set(&posix(B, 200, 300, Lock(Read))).unwrap();
        t.set(&posix(A, 0, 0, Lock(Write))).unwrap_err();
    }

    #[test]
    fn same_holder_merges_and_never_conflicts_with_itself() {
        let mut t = LockTable::default();
        t.set(&posix(A, 0, 9, Lock(Write))).unwrap();
        t.set(&posix(A, 10, 19, Lock(Write))).unwrap();
        t.set(&posix(A, 5, 25, Lock(Write))).unwrap();
        assert_eq!(ranges(&t), [(A, 0, 25, Write)]);
        // Bridging two locks merges all three.
        t.set(&posix(A, 40, 49, Lock(Write))).unwrap();
        t.set(&posix(A, 26, 39, Lock(Write))).unwrap();
        assert_eq!(ranges(&t), [(A, 0, 49, Write)]);
        // A different type next to it stays separate.
        t.set(&posix(A, 50, 59, Lock(Read))).unwrap();
        assert_eq!(ranges(&t), [(A, 0, 49, Write), (A, 50, 59, Read)]);
    }

    #[test]
    fn unlock_in_the_middle_splits() {
        let mut t = LockTable::default();
        t.set(&posix(A, 0, EOF, Lock(Write))).unwrap();
        t.set(&posix(A, 100, 199, Unlock)).unwrap();
        assert_eq!(ranges(&t), [(A, 0, 99, Write), (A, 200, EOF, Write)]);
        // The hole is free for others, the rest is not.
        t.set(&posix(B, 100, 199, Lock(Write))).unwrap();
        conflict_of(t.set(&posix(B, 99, 99, Lock(Read))));
        // Unlocking what is not held is fine and changes nothing.
        let before = t.clone();
        t.set(&posix(A, 100, 150, Unlock)).unwrap();
        assert_eq!(t, before);
        // Unlocking everything leaves B only.
        t.set(&posix(A, 0, EOF, Unlock)).unwrap();
        assert_eq!(ranges(&t), [(B, 100, 199, Write)]);
    }

    #[test]
    fn downgrade_and_upgrade_replace_part_of_a_lock() {
        let mut t = LockTable::default();
        t.set(&posix(A, 0, 99, Lock(Write))).unwrap();
        // Downgrade the middle: three pieces.
        t.set(&posix(A, 40, 59, Lock(Read))).unwrap();
        assert_eq!(
            ranges(&t),
            [(A, 0, 39, Write), (A, 40, 59, Read), (A, 60, 99, Write)]
        );
        // Now B may read the downgraded part, but not write it.
        t.set(&posix(B, 45, 50, Lock(Read))).unwrap();
        conflict_of(t.set(&posix(B, 45, 50, Lock(Write))));
        // A cannot upgrade back while B reads there...
        let c = conflict_of(t.set(&posix(A, 40, 59, Lock(Write))));
        assert_eq!(c.holder, B);
        // ...and once B is gone the upgrade merges into one write lock.
        t.set(&posix(B, 0, EOF, Unlock)).unwrap();
        t.set(&posix(A, 40, 59, Lock(Write))).unwrap();
        assert_eq!(ranges(&t), [(A, 0, 99, Write)]);
    }

    #[test]
    fn flock_is_whole_file_and_converts() {
        let mut t = LockTable::default();
        // The range of a flock request does not matter.
        t.set(&req(Flock, A, 5, 6, Lock(Read))).unwrap();
        t.set(&req(Flock, B, 0, 0, Lock(Read))).unwrap();
        assert_eq!(ranges(&t), [(A, 0, EOF, Read), (B, 0, EOF, Read)]);
        // Conversion to exclusive is refused while B shares, and A keeps its lock.
        conflict_of(t.set(&req(Flock, A, 0, EOF, Lock(Write))));
        assert_eq!(t.locks().len(), 2);
        t.set(&req(Flock, B, 0, EOF, Unlock)).unwrap();
        t.set(&req(Flock, A, 0, EOF, Lock(Write))).unwrap();
        assert_eq!(ranges(&t), [(A, 0, EOF, Write)]);
        let c = conflict_of(t.set(&req(Flock, A2, 0, EOF, Lock(Read))));
        assert_eq!(c.kind, Flock);
        // Downgrade in place.
        t.set(&req(Flock, A, 0, EOF, Lock(Read))).unwrap();
        t.set(&req(Flock, A2, 0, EOF, Lock(Read))).unwrap();
        assert_eq!(t.locks().len(), 2);
    }

    #[test]
    fn flock_and_posix_are_independent() {
        let mut t = LockTable::default();
        t.set(&req(Flock, A, 0, EOF, Lock(Write))).unwrap();
        // B's POSIX write lock does not see A's flock, and vice versa.
        t.set(&posix(B, 0, EOF, Lock(Write))).unwrap();
        assert_eq!(
            t.conflict(&posix(A2, 0, 0, Lock(Read)))
                .unwrap()
                .unwrap()
                .holder,
            B
        );
        assert_eq!(
            t.conflict(&req(Flock, A2, 0, 0, Lock(Read)))
                .unwrap()
                .unwrap()
                .holder,
            A
        );
        // The same holder's POSIX unlock leaves its flock alone.
        t.set(&posix(A, 0, EOF, Lock(Read))).unwrap_err();
        t.set(&posix(A, 0, EOF, Unlock)).unwrap();
        assert_eq!(t.locks().len(), 2);
        t.set(&req(Flock, A, 0, EOF, Unlock)).unwrap();
        assert_eq!(ranges(&t), [(B, 0, EOF, Write)]);
    }

    #[test]
    fn bad_ranges_are_refused_and_change_nothing() {
        let mut t = LockTable::default();
        t.set(&posix(A, 0, 9, Lock(Write))).unwrap();
        let before = t.clone();
        assert!(matches!(
            t.set(&posix(A, 10, 9, Lock(Write))),
            Err(Denied::Invalid(_))
        ));
        assert!(matches!(
            t.set(&posix(A, 10, 9, Unlock)),
            Err(Denied::Invalid(_))
        ));
        assert!(matches!(
            t.conflict(&posix(B, 10, 9, Lock(Read))),
            Err(Denied::Invalid(_))
        ));
        assert_eq!(t, before);
        // The very last byte is a valid one-byte range.
        t.set(&posix(B, EOF, EOF, Lock(Write))).unwrap();
        conflict_of(t.set(&posix(A, 100, EOF, Lock(Read))));
    }

    #[test]
    fn release_client_drops_all_of_its_owners() {
        let mut t = LockTable::default();
        t.set(&posix(A, 0, 9, Lock(Write))).unwrap();
        t.set(&posix(A2, 20, 29, Lock(Write))).unwrap();
        t.set(&req(Flock, A, 0, EOF, Lock(Write))).unwrap();
        t.set(&posix(B, 40, 49, Lock(Write))).unwrap();
        assert!(t.release_client(1));
        assert_eq!(ranges(&t), [(B, 40, 49, Write)]);
        assert!(!t.release_client(1));
    }

    #[test]
    fn too_many_locks_are_refused() {
        let mut t = LockTable::default();
        for i in 0..MAX_LOCKS_PER_INODE as u64 {
            // Every other byte: nothing merges.
            t.set(&posix(A, 2 * i, 2 * i, Lock(Write))).unwrap();
        }
        let before = t.clone();
        assert_eq!(t.set(&posix(B, EOF, EOF, Lock(Read))), Err(Denied::TooMany));
        assert_eq!(t, before);
        // Unlocking (which may split) still works; so does a lock that merges.
        t.set(&posix(A, 1, 1, Lock(Write))).unwrap();
        t.set(&posix(A, 0, EOF, Unlock)).unwrap();
        assert!(t.is_empty());
    }

    // ------------------------------------------------------------ state machine

    use crate::fs::apply as fs_apply;
    use crate::fs::FsCommand;
    use crate::fs::Kind;
    use crate::fs::Reply;
    use crate::kv::open_db;
    use cairn_proto::ids::ROOT_INO;

    fn run_fs(db: &rocksdb::DB, cmd: FsCommand) -> Result<Reply, MetaError> {
        let mut txn = Txn::new(db, 1);
        let out = fs_apply(&mut txn, &cmd)?;
        db.write(txn.into_batch()?)?;
        Ok(out)
    }

    fn run_lock(db: &rocksdb::DB, ino: u64, req: LockRequest) -> Result<Reply, MetaError> {
        let mut txn = Txn::new(db, 1);
        let out = apply(
            &mut txn,
            &LockCommand::Set {
                ino,
                req,
                now_ms: 1000,
                lease_ms: 3000,
            },
        )?;
        db.write(txn.into_batch()?)?;
        Ok(out)
    }

    fn create(db: &rocksdb::DB, name: &str) -> u64 {
        match run_fs(
            db,
            FsCommand::Create {
                parent: ROOT_INO,
                name: name.as_bytes().to_vec(),
                kind: Kind::File,
                perm: 0o644,
                rdev: 0,
                uid: 0,
                gid: 0,
                exclusive: true,
                target: None,
                now: 1,
            },
        ) {
            Ok(Reply::Attr { ino, .. }) => ino,
            other => panic!("create: {other:?}"),
        }
    }

    fn index(db: &rocksdb::DB) -> Vec<Vec<u8>> {
        Txn::new(db, 1)
            .scan(&[keys::LOCK_HELD], b"", usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    #[test]
    fn stored_locks_go_with_the_session_and_the_inode() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run_fs(&db, FsCommand::InitRoot { now: 0 }).unwrap();
        let f = create(&db, "f");
        let g = create(&db, "g");
        // No such inode: ENOENT. Conflicts are EAGAIN and change nothing.
        let missing = run_lock(&db, f + 100, posix(A, 0, 9, Lock(Write)));
        assert!(matches!(missing, Err(MetaError::Fs(e)) if e.errno == cairn_proto::status::ENOENT));
        run_lock(&db, f, posix(A, 0, 9, Lock(Write))).unwrap();
        run_lock(&db, g, posix(A, 0, 9, Lock(Write))).unwrap();
        run_lock(&db, g, posix(B, 10, 19, Lock(Write))).unwrap();
        let denied = run_lock(&db, f, posix(B, 5, 5, Lock(Read)));
        assert!(matches!(denied, Err(MetaError::Fs(e)) if e.errno == EAGAIN));
        assert_eq!(index(&db).len(), 3);
        // Taking a lock opened client 1's session (expiring at 4000).
        let txn = Txn::new(&db, 1);
        assert!(!crate::fs::has_expired_sessions(&txn, 3999, 0).unwrap());
        assert!(crate::fs::has_expired_sessions(&txn, 4000, 0).unwrap());
        drop(txn);
        // B's session expires (A's was renewed): only A's locks stay.
        let mut txn = Txn::new(&db, 1);
        crate::fs::touch_session(&mut txn, A.client, 10_000).unwrap();
        db.write(txn.into_batch().unwrap()).unwrap();
        let expire = |now_ms, orphans_before_ms| FsCommand::ExpireSessions {
            now_ms,
            orphans_before_ms,
        };
        run_fs(&db, expire(5000, 0)).unwrap();
        let txn = Txn::new(&db, 1);
        assert_eq!(ranges(&load(&txn, g).unwrap()), [(A, 0, 9, Write)]);
        drop(txn);
        assert_eq!(index(&db).len(), 2);
        run_lock(&db, g, posix(B, 10, 19, Lock(Write))).unwrap();
        // Deleting f (unlinked, then reaped as an orphan) drops its table;
        // g keeps its own.
        run_fs(
            &db,
            FsCommand::Unlink {
                parent: ROOT_INO,
                name: b"f".to_vec(),
                now: 2,
            },
        )
        .unwrap();
        run_fs(&db, expire(0, i64::MAX)).unwrap();
        let txn = Txn::new(&db, 1);
        assert!(txn.get(&keys::lock_table(f)).unwrap().is_none());
        assert_eq!(load(&txn, g).unwrap().locks().len(), 2);
        drop(txn);
        assert_eq!(index(&db).len(), 2);
        // Unlocking everything leaves no record behind.
        run_lock(&db, g, posix(A, 0, EOF, Unlock)).unwrap();
        run_lock(&db, g, posix(B, 0, EOF, Unlock)).unwrap();
        let txn = Txn::new(&db, 1);
        assert!(txn.get(&keys::lock_table(g)).unwrap().is_none());
        drop(txn);
        assert!(index(&db).is_empty());
    }
}
