//! fallocate(2) as a shard applies it: allocating (the length grows, no data
//! is stored: Cairn files are sparse), and zeroing a range (PUNCH_HOLE,
//! ZERO_RANGE) without writing a byte.
//!
//! A zeroed range becomes holes in the file's layout: every chunk it touches
//! is rewritten as the segments a reader sees (later slices painted over
//! earlier ones, then the range cut out), so a slice that is no longer
//! visible anywhere in the file leaves the layout and goes to the
//! block-deletion queue; its storage is released. A slice still visible
//! around the range keeps all of its blocks (blocks are whole objects; the
//! queue frees whole slices), but the range no longer counts in
//! `stored_bytes` (st_blocks). Inline data in the range is zeroed in place,
//! and cut when the range reaches its end.
//!
//! Invariants: the bytes outside the range and the length (with `keep_size`)
//! do not change; a slice id is queued only when no chunk of the file still
//! refers to it (concatenated files share one slice between chunks); holes
//! are kept only in chunk 0 over inline data, the one layer they can hide
//! (elsewhere a missing segment reads as zeros already).

use cairn_proto::ids::CHUNK_SIZE;
use cairn_proto::status::EFBIG;
use cairn_proto::status::EINVAL;

use crate::error::MetaError;
use crate::fs::FsResult;
use crate::fs::Reply;
use crate::fs::SliceRec;
use crate::keys;
use crate::kv::Txn;

/// What a fallocate asks for.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallocate {
    pub offset: u64,
    pub len: u64,
    /// The length stays (FALLOC_FL_KEEP_SIZE); otherwise it grows to the
    /// range's end.
    pub keep_size: bool,
    /// The range reads as zeros afterwards (PUNCH_HOLE, ZERO_RANGE).
    pub zero: bool,
}

/// Applies `f` to regular file `ino`. Times move to `mtime` when the file
/// changes (a zeroed range, or a new length).
pub fn fallocate(txn: &mut Txn, ino: u64, f: &Fallocate, mtime: i64) -> FsResult {
    let mut inode = crate::fs::regular_file(txn, ino)?;
    if f.len == 0 {
        return Err(MetaError::fs(EINVAL, "fallocate of an empty range"));
    }
    let end = f
        .offset
        .checked_add(f.len)
        .filter(|&e| e <= crate::fs::MAX_FILE_SIZE)
        .ok_or_else(|| MetaError::fs(EFBIG, "fallocate past the largest file"))?;
    let mut changed = false;
    // Past the length everything reads as zeros already.
    let stop = end.min(inode.size);
    if f.zero && f.offset < stop {
        zero_inline(txn, ino, f.offset, stop)?;
        zero_chunks(txn, ino, f.offset, stop)?;
    }
    if f.zero {
        changed = true;
    }
    if !f.keep_size && end > inode.size {
        inode.size = end;
        changed = true;
    }
    if changed {
        inode.mtime = mtime;
        inode.ctime = mtime;
        crate::fs::put_inode(txn, ino, &inode)?;
    }
    Ok(Reply::Attr { ino, inode })
}

/// Zeroes inline bytes [from, to): in place, or cut off when the range
/// reaches the end of the inline data.
fn zero_inline(txn: &mut Txn, ino: u64, from: u64, to: u64) -> Result<(), MetaError> {
    let Some(mut buf) = txn.get(&keys::inline(ino))? else {
        return Ok(());
    };
    let len = buf.len() as u64;
    if from >= len {
        return Ok(());
    }
    if to >= len {
        buf.truncate(from as usize);
    } else {
        buf[from as usize..to as usize].fill(0);
    }
    if buf.is_empty() {
        txn.delete(keys::inline(ino));
    } else {
        txn.put(keys::inline(ino), buf);
    }
    Ok(())
}

/// Cuts file bytes [from, to) out of every chunk they touch; the slices no
/// chunk shows any more are freed (`crate::slices`).
fn zero_chunks(txn: &mut Txn, ino: u64, from: u64, to: u64) -> Result<(), MetaError> {
    let (first, last) = ((from / CHUNK_SIZE) as u32, ((to - 1) / CHUNK_SIZE) as u32);
    for (k, v) in txn.scan(&keys::chunk_prefix(ino), b"", usize::MAX)? {
        let chunk = crate::fs::chunk_of_key(&k)?;
        if chunk < first || chunk > last {
            continue;
        }
        let start = u64::from(chunk) * CHUNK_SIZE;
        let a = (from.max(start) - start) as u32;
        let b = (to.min(start + CHUNK_SIZE) - start) as u32;
        let mut layers: Vec<SliceRec> = crate::kv::decode(&v)?;
        layers.push(SliceRec {
            slice_id: 0,
            pos: a,
            len: b - a,
            off: 0,
            size: b - a,
        });
        crate::slices::settle(txn, ino, chunk, &layers)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cairn_proto::ids::ROOT_INO;

    use super::*;
    use crate::fs::FsCommand;
    use crate::fs::Inode;
    use crate::fs::Kind;

    /// The root's shard (the root exists there).
    const SHARD: u32 = 1;

    /// A fresh store with the root, and a `kind` named `name` in it.
    fn with(kind: Kind, name: &str) -> (tempfile::TempDir, std::sync::Arc<rocksdb::DB>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::kv::open_db(dir.path()).unwrap();
        run(&db, FsCommand::InitRoot { now: 0 }).unwrap();
        let ino = make(&db, kind, name);
        (dir, db, ino)
    }

    fn make(db: &rocksdb::DB, kind: Kind, name: &str) -> u64 {
        let create = FsCommand::Create {
            parent: ROOT_INO,
            name: name.as_bytes().to_vec(),
            kind,
            perm: 0o644,
            rdev: 0,
            uid: 0,
            gid: 0,
            exclusive: true,
            target: None,
            now: 1,
        };
        match run(db, create).unwrap() {
            Reply::Attr { ino, .. } => ino,
            other => panic!("{other:?}"),
        }
    }

    fn run(db: &rocksdb::DB, cmd: FsCommand) -> FsResult {
        let mut txn = Txn::new(db, SHARD);
        let r = crate::fs::apply(&mut txn, &cmd)?;
        db.write(txn.into_batch()?)?;
        Ok(r)
    }

    fn slices(db: &rocksdb::DB, ino: u64, chunk: u32) -> Option<Vec<SliceRec>> {
        Txn::new(db, SHARD)
            .get_as(&keys::chunk(ino, chunk))
            .unwrap()
    }

    fn queued(db: &rocksdb::DB) -> Vec<u64> {
        let txn = Txn::new(db, SHARD);
        crate::fs::gc_queue(&txn, 100)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    fn stored(db: &rocksdb::DB, ino: u64) -> (Inode, Option<u64>) {
        let txn = Txn::new(db, SHARD);
        let inode = crate::fs::get_inode(&txn, ino).unwrap();
        let stored = crate::fs::stored_bytes(&txn, ino, &inode).unwrap();
        (inode, stored)
    }

    fn slice(slice_id: u64, pos: u32, len: u32) -> SliceRec {
        SliceRec {
            slice_id,
            pos,
            len,
            off: 0,
            size: len,
        }
    }

    fn falloc(ino: u64, offset: u64, len: u64, keep_size: bool, zero: bool) -> FsCommand {
        FsCommand::Fallocate {
            ino,
            f: Fallocate {
                offset,
                len,
                keep_size,
                zero,
            },
            mtime: 99,
        }
    }

    #[test]
    fn zeroed_ranges_become_holes_and_hidden_slices_are_queued() {
        let (_dir, db, ino) = with(Kind::File, "f");
        let mib = 1u32 << 20;
        // Chunk 0: slice 1 over [0, 4 MiB), slice 2 over [1, 2) MiB on top;
        // chunk 1: slice 3 whole.
        let commit = FsCommand::Commit {
            ino,
            chunks: vec![
                (0, vec![slice(1, 0, 4 * mib), slice(2, mib, mib)]),
                (1, vec![slice(3, 0, CHUNK_SIZE as u32)]),
            ],
            length: 2 * CHUNK_SIZE,
            mtime: 1,
        };
        run(&db, commit).unwrap();
        assert_eq!(stored(&db, ino).1, Some(4 * u64::from(mib) + CHUNK_SIZE));

        // Punch [1, 2) MiB: slice 2 is hidden everywhere and goes; slice 1
        // stays (visible around the hole).
        run(&db, falloc(ino, u64::from(mib), u64::from(mib), true, true)).unwrap();
        assert_eq!(queued(&db), vec![2]);
        let c0 = slices(&db, ino, 0).unwrap();
        assert_eq!(c0.iter().map(|s| s.slice_id).collect::<Vec<_>>(), [1, 1]);
        assert_eq!((c0[1].pos, c0[1].off), (2 * mib, 2 * mib));
        let (inode, bytes) = stored(&db, ino);
        assert_eq!(inode.size, 2 * CHUNK_SIZE, "keep_size");
        assert_eq!(inode.mtime, 99);
        assert_eq!(bytes, Some(3 * u64::from(mib) + CHUNK_SIZE));

        // Zero the whole of chunk 1 and past the end, growing the file: its
        // record goes, slice 3 is queued.
        run(&db, falloc(ino, CHUNK_SIZE, 2 * CHUNK_SIZE, false, true)).unwrap();
        assert_eq!(slices(&db, ino, 1), None);
        assert_eq!(queued(&db), vec![2, 3]);
        let (inode, bytes) = stored(&db, ino);
        assert_eq!(inode.size, 3 * CHUNK_SIZE);
        assert_eq!(bytes, Some(3 * u64::from(mib)));

        // Allocation: the length grows, nothing is stored; keep_size changes
        // nothing at all.
        run(&db, falloc(ino, 0, 4 * CHUNK_SIZE, true, false)).unwrap();
        assert_eq!(stored(&db, ino).0.size, 3 * CHUNK_SIZE);
        run(&db, falloc(ino, 0, 4 * CHUNK_SIZE, false, false)).unwrap();
        let (inode, bytes) = stored(&db, ino);
        assert_eq!(inode.size, 4 * CHUNK_SIZE);
        assert_eq!(bytes, Some(3 * u64::from(mib)));

        // Empty and oversized ranges are refused; directories too.
        let e = |r: FsResult| match r {
            Err(MetaError::Fs(e)) => e.errno,
            other => panic!("{other:?}"),
        };
        assert_eq!(e(run(&db, falloc(ino, 0, 0, false, true))), EINVAL);
        assert_eq!(
            e(run(&db, falloc(ino, u64::MAX - 1, 2, false, false))),
            EFBIG
        );
        let dir_ino = make(&db, Kind::Dir, "d");
        assert!(run(&db, falloc(dir_ino, 0, 1, false, false)).is_err());
    }

    #[test]
    fn a_shared_slice_is_queued_only_once_no_chunk_shows_it() {
        let (_dir, db, ino) = with(Kind::File, "f");
        // One slice object across the chunk boundary (as Concat leaves it).
        let tail = SliceRec {
            slice_id: 5,
            pos: (CHUNK_SIZE - 4096) as u32,
            len: 4096,
            off: 0,
            size: 8192,
        };
        let head = SliceRec {
            slice_id: 5,
            pos: 0,
            len: 4096,
            off: 4096,
            size: 8192,
        };
        let commit = FsCommand::Commit {
            ino,
            chunks: vec![(0, vec![tail]), (1, vec![head])],
            length: CHUNK_SIZE + 4096,
            mtime: 1,
        };
        run(&db, commit).unwrap();
        run(&db, falloc(ino, 0, CHUNK_SIZE, true, true)).unwrap();
        assert!(queued(&db).is_empty(), "chunk 1 still shows slice 5");
        run(&db, falloc(ino, CHUNK_SIZE, 4096, true, true)).unwrap();
        assert_eq!(queued(&db), vec![5]);
        assert_eq!(stored(&db, ino).1, Some(0));
    }

    #[test]
    fn inline_data_is_zeroed_in_place_or_cut() {
        let (_dir, db, ino) = with(Kind::File, "f");
        let write = FsCommand::WriteInline {
            ino,
            pos: 0,
            data: vec![7; 100],
            length: 100,
            mtime: 1,
        };
        run(&db, write).unwrap();
        run(&db, falloc(ino, 10, 20, true, true)).unwrap();
        let inline = |db: &rocksdb::DB| Txn::new(db, SHARD).get(&keys::inline(ino)).unwrap();
        let buf = inline(&db).unwrap();
        assert_eq!(buf.len(), 100);
        assert!(buf[10..30].iter().all(|&b| b == 0));
        assert!(buf[..10].iter().chain(&buf[30..]).all(|&b| b == 7));
        // Still inline: no chunk record was made.
        assert_eq!(slices(&db, ino, 0), None);
        run(&db, falloc(ino, 50, 1000, true, true)).unwrap();
        assert_eq!(inline(&db).unwrap().len(), 50);
        assert_eq!(stored(&db, ino), (stored(&db, ino).0, Some(50)));
        assert_eq!(stored(&db, ino).0.size, 100, "keep_size");
        // Under a slice, the inline layer stays hidden by the hole.
        let commit = FsCommand::Commit {
            ino,
            chunks: vec![(0, vec![slice(9, 0, 40)])],
            length: 100,
            mtime: 2,
        };
        run(&db, commit).unwrap();
        run(&db, falloc(ino, 0, 45, true, true)).unwrap();
        let c0 = slices(&db, ino, 0).unwrap();
        assert_eq!(c0, vec![slice(0, 0, 45)]);
        assert_eq!(queued(&db), vec![9]);
        assert_eq!(stored(&db, ino).1, Some(5));
    }
}
