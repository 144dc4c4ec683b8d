//! The local block store: immutable blocks of at most [`MAX_BLOCK_BYTES`] as files,
//! and a RocksDB index of what is stored.
//!
//! Layout under the data directory:
//! - `blocks/<xx>/<slice_id as 16 hex digits>-<index>`: one file per block, spread
//!   over 256 directories `<xx>` by a hash of the block id;
//! - `index/`: RocksDB; column family `blocks` maps the block id (big-endian
//!   slice_id, then big-endian index) to (len, crc32c), both big-endian u32,
//!   then a flags byte (tier, pinned) unless the block is hot and unpinned;
//!   column family `chains` maps a placement group (big-endian u32) to the highest
//!   chain version seen (big-endian u64), for fencing.
//!
//! Invariants:
//! - an index entry is written only after its file is complete, fdatasync'd and
//!   renamed into place (and the rename made durable), and a put is acknowledged
//!   only after its index entry is durable (synced WAL, group-committed by one
//!   thread for all concurrent puts);
//! - every read verifies the file's crc32c against the index, so a damaged file
//!   is reported as [`DataError::ChecksumMismatch`], never returned;
//! - on open, an index entry whose file is missing is dropped and a file without
//!   an entry (an unfinished write) is removed;
//! - a block's [`Tier`] says where its bytes are: `Hot` and `Staged` blocks have
//!   their file (a `Staged` one may also have a cold copy), a `Cold` one has
//!   none: its only copy is in the cold tier, which `crate::tier` manages. The
//!   entry turns `Cold` before the file is removed, so a crash in between
//!   leaves a file the next open removes.
//!
//! Disk and RocksDB work runs on tokio's blocking pool or on the commit thread,
//! never on the async workers.

use std::collections::HashMap;
use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::SystemTime;

use bytes::Bytes;
use rocksdb::ColumnFamily;
use rocksdb::DBWithThreadMode;
use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::SingleThreaded;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::Mutex;
use tokio::task::spawn_blocking;

use crate::error::DataError;

/// Largest block the store accepts.
pub const MAX_BLOCK_BYTES: usize = 4 << 20;

const CF_BLOCKS: &str = "blocks";
/// Chain versions that earlier releases persisted; unused (the fence follows
/// shard 0's map), opened only so their indexes still open.
const CF_CHAINS: &str = "chains";
/// Puts of the same block are serialized by a striped lock; distinct blocks rarely
/// share a stripe.
const LOCK_STRIPES: usize = 256;
/// Most commit requests one synced RocksDB write carries.
const MAX_COMMIT_BATCH: usize = 1024;
/// Deletes hold their stripes for at most this many blocks at a time.
const DELETE_CHUNK: usize = 1024;

type Db = DBWithThreadMode<SingleThreaded>;

/// A block: the `index`-th piece of slice `slice_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId {
    pub slice_id: u64,
    pub index: u32,
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.slice_id, self.index)
    }
}

impl BlockId {
    fn key(&self) -> [u8; 12] {
        let mut k = [0u8; 12];
        k[..8].copy_from_slice(&self.slice_id.to_be_bytes());
        k[8..].copy_from_slice(&self.index.to_be_bytes());
        k
    }

    fn from_key(k: &[u8]) -> Option<BlockId> {
        let slice_id = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
        let index = u32::from_be_bytes(k.get(8..)?.try_into().ok()?);
        Some(BlockId { slice_id, index })
    }

    /// Parses a block file name (`<16 hex digits>-<decimal index>`); `None` for
    /// anything else, temporary files included.
    fn from_file_name(name: &str) -> Option<BlockId> {
        let (slice, index) = name.split_once('-')?;
        if slice.len() != 16 || !slice.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let id = BlockId {
            slice_id: u64::from_str_radix(slice, 16).ok()?,
            index: index.parse().ok()?,
        };
        // Only the canonical spelling (lower-case hex, no leading zeros).
        (id.to_string() == name).then_some(id)
    }

    /// The directory (0..=255) a block's file lives in. Mixing the slice id spreads
    /// consecutive slices; adding the index spreads the blocks of one slice.
    pub fn dir(&self) -> u8 {
        let h = self.slice_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h >> 56) as u8).wrapping_add(self.index as u8)
    }

    fn stripe(&self) -> usize {
        let h = self.slice_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(self.index);
        (h % LOCK_STRIPES as u64) as usize
    }
}

/// Where a block's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Only the local file.
    Hot,
    /// The local file, and maybe a cold copy (being uploaded, or kept).
    Staged,
    /// Only the cold copy.
    Cold,
}

impl Tier {
    /// Whether the block has its local file.
    pub fn is_local(self) -> bool {
        self != Tier::Cold
    }
}

/// What the index records of a stored block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    pub len: u32,
    pub crc: u32,
    pub tier: Tier,
    /// Capacity pressure never moves a pinned block.
    pub pinned: bool,
}

impl BlockInfo {
    fn hot(len: u32, crc: u32) -> BlockInfo {
        BlockInfo {
            len,
            crc,
            tier: Tier::Hot,
            pinned: false,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(9);
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(&self.crc.to_be_bytes());
        let tier = match self.tier {
            Tier::Hot => 0,
            Tier::Staged => 1,
            Tier::Cold => 2,
        };
        let flags = tier | if self.pinned { 4 } else { 0 };
        if flags != 0 {
            v.push(flags);
        }
        v
    }

    fn decode(id: BlockId, v: &[u8]) -> Result<BlockInfo, DataError> {
        let bad = || DataError::Db(format!("corrupt index entry for block {id}"));
        if v.len() != 8 && v.len() != 9 {
            return Err(bad());
        }
        let len = u32::from_be_bytes(v[..4].try_into().map_err(|_| bad())?);
        let crc = u32::from_be_bytes(v[4..8].try_into().map_err(|_| bad())?);
        let flags = v.get(8).copied().unwrap_or(0);
        let tier = match flags & 3 {
            0 => Tier::Hot,
            1 => Tier::Staged,
            2 => Tier::Cold,
            _ => return Err(bad()),
        };
        Ok(BlockInfo {
            len,
            crc,
            tier,
            pinned: flags & 4 != 0,
        })
    }
}

/// Space and block counts of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub capacity_bytes: u64,
    /// Bytes of blocks with a local file.
    pub used_bytes: u64,
    /// Every indexed block, cold ones included.
    pub blocks: u64,
    pub cold_bytes: u64,
    pub cold_blocks: u64,
}

/// What [`BlockStore::verify`] found of a block's local copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The file holds the block's bytes (this many).
    Intact(u32),
    /// The file is damaged: wrong length or crc32c, unreadable, or missing.
    Damaged(String),
    /// The file is younger than asked for; not read.
    Young,
    /// No local copy to check: the block was deleted or is cold.
    NotLocal,
}

/// The verified bytes of a read.
#[derive(Debug, Clone)]
pub struct BlockRead {
    /// The requested range.
    pub data: Bytes,
    /// crc32c of the whole block, which the read verified.
    pub block_crc32c: u32,
}

/// Handle to the block store; clones share it. The last clone to go closes the
/// index after the commit thread has finished.
#[derive(Clone)]
pub struct BlockStore {
    inner: Arc<Inner>,
}

struct Inner {
    blocks_dir: PathBuf,
    db: Arc<Db>,
    capacity: u64,
    /// Only a configured capacity is enforced; otherwise the disk's own size is
    /// reported and a full disk answers ENOSPC.
    enforce_capacity: bool,
    used: AtomicU64,
    count: AtomicU64,
    cold_bytes: AtomicU64,
    cold_count: AtomicU64,
    /// Last read or write of each block since open (a logical clock), for
    /// least-recently-used choices; blocks not touched since open count as oldest.
    access: std::sync::Mutex<HashMap<BlockId, u64>>,
    clock: AtomicU64,
    locks: Vec<Arc<Mutex<()>>>,
    committer: Committer,
}

impl BlockStore {
    /// Opens (creating if needed) the store under `data_dir`, reconciling the index
    /// with the block files. `capacity_bytes` 0 means unconfigured.
    pub async fn open(data_dir: &Path, capacity_bytes: u64) -> Result<BlockStore, DataError> {
        let data_dir = data_dir.to_path_buf();
        spawn_blocking(move || open_blocking(&data_dir, capacity_bytes)).await?
    }

    /// Stores a block durably. `crc` must be the crc32c of `data`; on a mismatch
    /// nothing changes. Putting a block that is already stored with the same
    /// content succeeds without writing (a missing or damaged file is rewritten).
    pub async fn put(&self, id: BlockId, data: Bytes, crc: u32) -> Result<(), DataError> {
        if data.len() > MAX_BLOCK_BYTES {
            return Err(DataError::TooLarge {
                len: data.len(),
                max: MAX_BLOCK_BYTES,
            });
        }
        self.with_stripe(id, move |inner| inner.put_blocking(id, &data, crc))
            .await
    }

    /// Reads `len` bytes at `offset` of a block (`len` 0: to the end), after
    /// verifying the whole block's crc32c. A cold block answers
    /// [`DataError::InColdTier`].
    pub async fn get(&self, id: BlockId, offset: u32, len: u32) -> Result<BlockRead, DataError> {
        let inner = Arc::clone(&self.inner);
        spawn_blocking(move || inner.read(id, offset, len)).await?
    }

    /// What the index records of a block; `None` when it is not stored here.
    pub async fn info(&self, id: BlockId) -> Result<Option<BlockInfo>, DataError> {
        let inner = Arc::clone(&self.inner);
        spawn_blocking(move || inner.entry(id)).await?
    }

    /// Moves a block between tiers: `Staged` or `Hot` for a block with its file
    /// (the file stays), `Cold` drops the file once the entry says so. A cold
    /// block comes back only through [`BlockStore::restore`]. Answers the entry
    /// as it now is.
    pub async fn set_tier(&self, id: BlockId, tier: Tier) -> Result<BlockInfo, DataError> {
        self.with_stripe(id, move |inner| inner.set_tier_blocking(id, tier))
            .await
    }

    /// Writes a cold block's file back from `data` (verified against the entry's
    /// crc32c); the block is `Staged`. A block with its file is left as it is.
    pub async fn restore(&self, id: BlockId, data: Bytes) -> Result<BlockInfo, DataError> {
        self.with_stripe(id, move |inner| inner.restore_blocking(id, &data))
            .await
    }

    /// Sets or clears a block's pin.
    pub async fn set_pinned(&self, id: BlockId, pinned: bool) -> Result<BlockInfo, DataError> {
        self.with_stripe(id, move |inner| {
            let mut entry = inner.entry(id)?.ok_or(DataError::NotFound(id))?;
            if entry.pinned != pinned {
                entry.pinned = pinned;
                inner.commit_blocking(vec![IndexWrite::PutBlock(id, entry)])?;
            }
            Ok(entry)
        })
        .await
    }

    /// Up to `want` bytes of unpinned blocks with a local file, least recently
    /// used first: what capacity pressure moves to the cold tier.
    pub async fn coldest(&self, want: u64) -> Result<Vec<(BlockId, BlockInfo)>, DataError> {
        let inner = Arc::clone(&self.inner);
        spawn_blocking(move || inner.coldest_blocking(want)).await?
    }

    /// Runs `f` on the blocking pool with the block's stripe held. The guard
    /// moves into the blocking task: if the caller goes away, the work still
    /// finishes (file and index entry) before other work on the block starts.
    async fn with_stripe<T: Send + 'static>(
        &self,
        id: BlockId,
        f: impl FnOnce(&Inner) -> Result<T, DataError> + Send + 'static,
    ) -> Result<T, DataError> {
        let guard = Arc::clone(&self.inner.locks[id.stripe()])
            .lock_owned()
            .await;
        let inner = Arc::clone(&self.inner);
        spawn_blocking(move || {
            let _guard = guard;
            f(&inner)
        })
        .await?
    }

    /// Deletes blocks (their files and entries, whatever their tier; cold copies
    /// are the caller's); absent ones are skipped. Returns how many were deleted.
    pub async fn delete(&self, ids: Vec<BlockId>) -> Result<u64, DataError> {
        let mut ids = ids;
        ids.sort_unstable();
        ids.dedup();
        let mut deleted = 0;
        for chunk in ids.chunks(DELETE_CHUNK) {
            // Ascending stripe order: two deletes never wait on each other in a cycle,
            // and a put holds only one stripe.
            let mut stripes: Vec<usize> = chunk.iter().map(BlockId::stripe).collect();
            stripes.sort_unstable();
            stripes.dedup();
            let mut guards = Vec::with_capacity(stripes.len());
            for s in stripes {
                guards.push(Arc::clone(&self.inner.locks[s]).lock_owned().await);
            }
            let inner = Arc::clone(&self.inner);
            let chunk = chunk.to_vec();
            deleted += spawn_blocking(move || {
                let _guards = guards;
                inner.delete_blocking(&chunk)
            })
            .await??;
        }
        Ok(deleted)
    }

    /// Capacity, used bytes and block count.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            capacity_bytes: self.inner.capacity,
            used_bytes: self.inner.used.load(Ordering::Relaxed),
            blocks: self.inner.count.load(Ordering::Relaxed),
            cold_bytes: self.inner.cold_bytes.load(Ordering::Relaxed),
            cold_blocks: self.inner.cold_count.load(Ordering::Relaxed),
        }
    }

    /// Up to `limit` indexed blocks in id order, starting after `after` (from
    /// the first block when `None`): how the scrubber walks the store.
    pub async fn list(
        &self,
        after: Option<BlockId>,
        limit: usize,
    ) -> Result<Vec<(BlockId, BlockInfo)>, DataError> {
        let inner = Arc::clone(&self.inner);
        spawn_blocking(move || inner.list_blocking(after, limit)).await?
    }

    /// Re-reads a block's local file and checks it against the index entry;
    /// a file modified less than `skip_younger` ago is not read. Holds the
    /// block's stripe, so a concurrent put, delete or tier move is never
    /// mistaken for damage.
    pub async fn verify(
        &self,
        id: BlockId,
        skip_younger: Duration,
        deep: bool,
    ) -> Result<Verified, DataError> {
        self.with_stripe(id, move |inner| {
            inner.verify_blocking(id, skip_younger, deep)
        })
        .await
    }

    /// Replaces a block's damaged or missing local file with `data`, which must
    /// match the index entry (length and crc32c; else
    /// [`DataError::ChecksumMismatch`] and nothing changes). The file is
    /// written aside, synced and renamed over the old one, so a reader sees the
    /// old file or the new one. Answers `false`, writing nothing, when the
    /// block has no local copy to repair any more (deleted, or moved to the
    /// cold tier): a repair never brings a block back.
    pub async fn repair(&self, id: BlockId, data: Bytes) -> Result<bool, DataError> {
        self.with_stripe(id, move |inner| inner.repair_blocking(id, &data))
            .await
    }

    /// When a block's local file was last written; `None` when it has none
    /// (a cold block, or a missing file).
    pub async fn modified(&self, id: BlockId) -> Option<SystemTime> {
        let path = block_path(&self.inner.blocks_dir, id);
        tokio::fs::metadata(path).await.ok()?.modified().ok()
    }

    /// Where a block's file lives (tests damage it on purpose).
    #[cfg(test)]
    pub(crate) fn block_path(&self, id: BlockId) -> PathBuf {
        block_path(&self.inner.blocks_dir, id)
    }
}

fn block_path(blocks_dir: &Path, id: BlockId) -> PathBuf {
    blocks_dir
        .join(format!("{:02x}", id.dir()))
        .join(id.to_string())
}

fn cf<'a>(db: &'a Db, name: &str) -> Result<&'a ColumnFamily, DataError> {
    db.cf_handle(name)
        .ok_or_else(|| DataError::Db(format!("column family {name} missing")))
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

/// Size in bytes of the file system holding `path`.
pub fn disk_size(path: &Path) -> Result<u64, DataError> {
    let st = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(st.f_blocks.saturating_mul(st.f_frsize))
}

fn open_blocking(data_dir: &Path, capacity_bytes: u64) -> Result<BlockStore, DataError> {
    let blocks_dir = data_dir.join("blocks");
    for d in 0..=255u8 {
        fs::create_dir_all(blocks_dir.join(format!("{d:02x}")))?;
    }
    File::open(&blocks_dir)?.sync_all()?;

    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let db = Db::open_cf(&opts, data_dir.join("index"), [CF_BLOCKS, CF_CHAINS])?;
    let counts = reconcile(&db, &blocks_dir)?;

    let db = Arc::new(db);
    let committer = Committer::start(Arc::clone(&db))?;
    let (capacity, enforce_capacity) = match capacity_bytes {
        0 => (disk_size(data_dir)?, false),
        n => (n, true),
    };
    Ok(BlockStore {
        inner: Arc::new(Inner {
            blocks_dir,
            db,
            capacity,
            enforce_capacity,
            used: AtomicU64::new(counts.used),
            count: AtomicU64::new(counts.blocks),
            cold_bytes: AtomicU64::new(counts.cold_bytes),
            cold_count: AtomicU64::new(counts.cold_blocks),
            access: std::sync::Mutex::new(HashMap::new()),
            clock: AtomicU64::new(1),
            locks: (0..LOCK_STRIPES)
                .map(|_| Arc::new(Mutex::new(())))
                .collect(),
            committer,
        }),
    })
}

/// What an open counted.
struct Counts {
    used: u64,
    blocks: u64,
    cold_bytes: u64,
    cold_blocks: u64,
}

/// Makes the index and the files agree (a cold block has no file: one left by
/// a crash is removed); returns the counts.
fn reconcile(db: &Db, blocks_dir: &Path) -> Result<Counts, DataError> {
    let blocks = cf(db, CF_BLOCKS)?;
    let mut known = HashSet::new();
    let mut dropped = WriteBatch::default();
    let mut dropped_count = 0u64;
    let mut used = 0u64;
    let (mut cold_bytes, mut cold_blocks) = (0u64, 0u64);
    for item in db.iterator_cf(blocks, IteratorMode::Start) {
        let (key, value) = item?;
        let id = BlockId::from_key(&key)
            .ok_or_else(|| DataError::Db(format!("corrupt index key {key:02x?}")))?;
        let entry = BlockInfo::decode(id, &value)?;
        if entry.tier == Tier::Cold {
            cold_bytes += u64::from(entry.len);
            cold_blocks += 1;
            continue;
        }
        match fs::metadata(block_path(blocks_dir, id)) {
            Ok(meta) => {
                if meta.len() != u64::from(entry.len) {
                    // Kept: every read reports it, and a scrub or re-put repairs it.
                    tracing::warn!(block = %id, "block file has the wrong length");
                }
                known.insert(id);
                used += u64::from(entry.len);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(block = %id, "block file missing; dropping its index entry");
                dropped.delete_cf(blocks, key);
                dropped_count += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if dropped_count > 0 {
        db.write_opt(dropped, &synced())?;
    }

    let mut removed = 0u64;
    for dir in fs::read_dir(blocks_dir)? {
        let dir = dir?;
        let name = dir.file_name();
        let is_block_dir = dir.file_type()?.is_dir()
            && name.len() == 2
            && name
                .to_str()
                .is_some_and(|n| u8::from_str_radix(n, 16).is_ok());
        if !is_block_dir {
            tracing::warn!(path = %dir.path().display(), "unexpected entry in blocks directory");
            continue;
        }
        for file in fs::read_dir(dir.path())? {
            let file = file?;
            let path = file.path();
            let keep = file
                .file_name()
                .to_str()
                .and_then(BlockId::from_file_name)
                .is_some_and(|id| known.contains(&id) && block_path(blocks_dir, id) == path);
            if !keep {
                tracing::info!(path = %path.display(), "removing unfinished block file");
                if file.file_type()?.is_dir() {
                    fs::remove_dir_all(&path)?;
                } else {
                    fs::remove_file(&path)?;
                }
                removed += 1;
            }
        }
    }
    let count = known.len() as u64 + cold_blocks;
    tracing::info!(
        blocks = count,
        used_bytes = used,
        cold_blocks,
        dropped_entries = dropped_count,
        removed_files = removed,
        "block store opened"
    );
    Ok(Counts {
        used,
        blocks: count,
        cold_bytes,
        cold_blocks,
    })
}

/// What `write_file` did.
enum Written {
    /// The same block was already stored.
    Present,
    /// The block's file was rewritten under its existing index entry.
    Repaired,
    /// A new file; its index entry still has to be committed.
    New(BlockInfo),
}

impl Inner {
    /// Called with the block's stripe held.
    fn put_blocking(&self, id: BlockId, data: &[u8], crc: u32) -> Result<(), DataError> {
        if let Written::New(entry) = self.write_file(id, data, crc)? {
            self.commit_blocking(vec![IndexWrite::PutBlock(id, entry)])?;
            self.used.fetch_add(u64::from(entry.len), Ordering::Relaxed);
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        self.touch(id);
        Ok(())
    }

    fn touch(&self, id: BlockId) {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut access) = self.access.lock() {
            access.insert(id, now);
        }
    }

    fn entry(&self, id: BlockId) -> Result<Option<BlockInfo>, DataError> {
        let blocks = cf(&self.db, CF_BLOCKS)?;
        match self.db.get_pinned_cf(blocks, id.key())? {
            Some(v) => Ok(Some(BlockInfo::decode(id, &v)?)),
            None => Ok(None),
        }
    }

    /// Called with the block's stripe held.
    fn set_tier_blocking(&self, id: BlockId, tier: Tier) -> Result<BlockInfo, DataError> {
        let mut entry = self.entry(id)?.ok_or(DataError::NotFound(id))?;
        if entry.tier == tier {
            return Ok(entry);
        }
        if !entry.tier.is_local() {
            return Err(DataError::Invalid(format!(
                "block {id} is cold: only a restore brings it back"
            )));
        }
        entry.tier = tier;
        self.commit_blocking(vec![IndexWrite::PutBlock(id, entry)])?;
        if tier == Tier::Cold {
            match fs::remove_file(block_path(&self.blocks_dir, id)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // The next open removes it.
                Err(e) => tracing::warn!(block = %id, error = %e, "removing block file failed"),
            }
            let len = u64::from(entry.len);
            self.used.fetch_sub(len, Ordering::Relaxed);
            self.cold_bytes.fetch_add(len, Ordering::Relaxed);
            self.cold_count.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut access) = self.access.lock() {
                access.remove(&id);
            }
        }
        Ok(entry)
    }

    /// Called with the block's stripe held.
    fn restore_blocking(&self, id: BlockId, data: &[u8]) -> Result<BlockInfo, DataError> {
        let mut entry = self.entry(id)?.ok_or(DataError::NotFound(id))?;
        if entry.tier.is_local() {
            return Ok(entry);
        }
        matches_entry(id, &entry, data)?;
        let len = u64::from(entry.len);
        let used = self.used.load(Ordering::Relaxed);
        if self.enforce_capacity && used.saturating_add(len) > self.capacity {
            return Err(DataError::NoSpace(format!(
                "{used} of {} bytes used, block needs {len}",
                self.capacity
            )));
        }
        let path = block_path(&self.blocks_dir, id);
        write_durably(id, &path, data)?;
        entry.tier = Tier::Staged;
        self.commit_blocking(vec![IndexWrite::PutBlock(id, entry)])?;
        self.used.fetch_add(len, Ordering::Relaxed);
        self.cold_bytes.fetch_sub(len, Ordering::Relaxed);
        self.cold_count.fetch_sub(1, Ordering::Relaxed);
        self.touch(id);
        Ok(entry)
    }

    fn list_blocking(
        &self,
        after: Option<BlockId>,
        limit: usize,
    ) -> Result<Vec<(BlockId, BlockInfo)>, DataError> {
        let blocks = cf(&self.db, CF_BLOCKS)?;
        let start = after.map(|id| id.key());
        let mode = match &start {
            Some(key) => IteratorMode::From(key, rocksdb::Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(blocks, mode) {
            let (key, value) = item?;
            let id = BlockId::from_key(&key)
                .ok_or_else(|| DataError::Db(format!("corrupt index key {key:02x?}")))?;
            if Some(id) == after {
                continue;
            }
            out.push((id, BlockInfo::decode(id, &value)?));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Called with the block's stripe held.
    fn verify_blocking(
        &self,
        id: BlockId,
        skip_younger: Duration,
        deep: bool,
    ) -> Result<Verified, DataError> {
        let Some(entry) = self.entry(id)? else {
            return Ok(Verified::NotLocal);
        };
        if !entry.tier.is_local() {
            return Ok(Verified::NotLocal);
        }
        let path = block_path(&self.blocks_dir, id);
        let (modified, size) = match fs::metadata(&path) {
            Ok(meta) => (meta.modified().ok(), meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Verified::Damaged("file missing".into()))
            }
            Err(e) => return Ok(Verified::Damaged(format!("unreadable: {e}"))),
        };
        // A clock step back makes a file look young: it waits for a later pass.
        let young = modified.is_some_and(|at| {
            SystemTime::now()
                .duration_since(at)
                .map_or(true, |age| age < skip_younger)
        });
        if young {
            return Ok(Verified::Young);
        }
        if !deep {
            if size != u64::from(entry.len) {
                return Ok(Verified::Damaged(format!(
                    "{size} bytes, expected {}",
                    entry.len
                )));
            }
            return Ok(Verified::Intact(entry.len));
        }
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Verified::Damaged("file missing".into()))
            }
            Err(e) => return Ok(Verified::Damaged(format!("unreadable: {e}"))),
        };
        if data.len() != entry.len as usize {
            return Ok(Verified::Damaged(format!(
                "{} bytes, expected {}",
                data.len(),
                entry.len
            )));
        }
        let actual = crc32c::crc32c(&data);
        if actual != entry.crc {
            return Ok(Verified::Damaged(format!(
                "crc32c {actual:#010x}, expected {:#010x}",
                entry.crc
            )));
        }
        Ok(Verified::Intact(entry.len))
    }

    /// Called with the block's stripe held.
    fn repair_blocking(&self, id: BlockId, data: &[u8]) -> Result<bool, DataError> {
        let Some(entry) = self.entry(id)? else {
            return Ok(false);
        };
        if !entry.tier.is_local() {
            return Ok(false);
        }
        matches_entry(id, &entry, data)?;
        let path = block_path(&self.blocks_dir, id);
        write_durably(id, &path, data)?;
        Ok(true)
    }

    fn coldest_blocking(&self, want: u64) -> Result<Vec<(BlockId, BlockInfo)>, DataError> {
        let blocks = cf(&self.db, CF_BLOCKS)?;
        let access = self
            .access
            .lock()
            .map_err(|_| DataError::Internal("access map poisoned".into()))?
            .clone();
        let mut candidates = Vec::new();
        for item in self.db.iterator_cf(blocks, IteratorMode::Start) {
            let (key, value) = item?;
            let id = BlockId::from_key(&key)
                .ok_or_else(|| DataError::Db(format!("corrupt index key {key:02x?}")))?;
            let entry = BlockInfo::decode(id, &value)?;
            if entry.tier.is_local() && !entry.pinned {
                candidates.push((access.get(&id).copied().unwrap_or(0), id, entry));
            }
        }
        candidates.sort_unstable_by_key(|(at, id, _)| (*at, *id));
        let mut picked = Vec::new();
        let mut bytes = 0u64;
        for (_, id, entry) in candidates {
            if bytes >= want {
                break;
            }
            bytes += u64::from(entry.len);
            picked.push((id, entry));
        }
        Ok(picked)
    }

    /// Verifies and writes a block file durably.
    fn write_file(&self, id: BlockId, data: &[u8], crc: u32) -> Result<Written, DataError> {
        let actual = crc32c::crc32c(data);
        if actual != crc {
            return Err(DataError::ChecksumMismatch {
                block: id,
                expected: crc,
                actual,
            });
        }
        let len = u32::try_from(data.len()).map_err(|_| DataError::TooLarge {
            len: data.len(),
            max: MAX_BLOCK_BYTES,
        })?;
        let entry = BlockInfo::hot(len, crc);
        let path = block_path(&self.blocks_dir, id);
        let outcome = match self.entry(id)? {
            Some(existing) if (existing.len, existing.crc) != (len, crc) => {
                return Err(DataError::Conflict(id))
            }
            // Stored, in the cold tier.
            Some(existing) if !existing.tier.is_local() => return Ok(Written::Present),
            // A retried put (rare) checks the stored copy, so re-putting a block
            // also repairs a damaged or lost file.
            Some(_) => match fs::read(&path) {
                Ok(stored) if stored == data => return Ok(Written::Present),
                Ok(_) => Written::Repaired,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Written::Repaired,
                Err(e) => return Err(e.into()),
            },
            None => {
                let used = self.used.load(Ordering::Relaxed);
                if self.enforce_capacity && used.saturating_add(u64::from(len)) > self.capacity {
                    return Err(DataError::NoSpace(format!(
                        "{used} of {} bytes used, block needs {len}",
                        self.capacity
                    )));
                }
                Written::New(entry)
            }
        };
        write_durably(id, &path, data)?;
        Ok(outcome)
    }

    fn read(&self, id: BlockId, offset: u32, len: u32) -> Result<BlockRead, DataError> {
        let entry = self.entry(id)?.ok_or(DataError::NotFound(id))?;
        if !entry.tier.is_local() {
            return Err(DataError::InColdTier(id));
        }
        let start = offset as usize;
        let block_len = entry.len as usize;
        let end = if len == 0 {
            block_len
        } else {
            start.saturating_add(len as usize)
        };
        if start > block_len || end > block_len {
            return Err(DataError::Invalid(format!(
                "range {start}..{end} outside block {id} of {block_len} bytes"
            )));
        }
        let data = match fs::read(block_path(&self.blocks_dir, id)) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(block = %id, "indexed block file is missing");
                return Err(DataError::NotFound(id));
            }
            Err(e) => return Err(e.into()),
        };
        let actual = crc32c::crc32c(&data);
        if actual != entry.crc || data.len() != block_len {
            tracing::warn!(block = %id, "block file fails its checksum");
            return Err(DataError::ChecksumMismatch {
                block: id,
                expected: entry.crc,
                actual,
            });
        }
        self.touch(id);
        Ok(BlockRead {
            data: Bytes::from(data).slice(start..end),
            block_crc32c: entry.crc,
        })
    }

    /// Removes index entries, then files: a crash in between leaves files without
    /// entries, which the next open removes. Called with the blocks' stripes held.
    fn delete_blocking(&self, ids: &[BlockId]) -> Result<u64, DataError> {
        let blocks = cf(&self.db, CF_BLOCKS)?;
        let mut batch = WriteBatch::default();
        let mut gone = Vec::new();
        for &id in ids {
            if let Some(entry) = self.entry(id)? {
                batch.delete_cf(blocks, id.key());
                gone.push((id, entry));
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        self.db.write(batch)?;
        for (id, entry) in &gone {
            self.count.fetch_sub(1, Ordering::Relaxed);
            if !entry.tier.is_local() {
                self.cold_bytes
                    .fetch_sub(u64::from(entry.len), Ordering::Relaxed);
                self.cold_count.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            match fs::remove_file(block_path(&self.blocks_dir, *id)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(block = %id, error = %e, "removing block file failed"),
            }
            self.used.fetch_sub(u64::from(entry.len), Ordering::Relaxed);
            if let Ok(mut access) = self.access.lock() {
                access.remove(id);
            }
        }
        Ok(gone.len() as u64)
    }

    fn send_commit(
        &self,
        writes: Vec<IndexWrite>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, DataError> {
        let (done, wait) = oneshot::channel();
        self.committer
            .tx
            .as_ref()
            .ok_or_else(committer_stopped)?
            .send(CommitRequest { writes, done })
            .map_err(|_| committer_stopped())?;
        Ok(wait)
    }

    /// Waits for a group commit from a blocking thread.
    fn commit_blocking(&self, writes: Vec<IndexWrite>) -> Result<(), DataError> {
        let wait = self.send_commit(writes)?;
        wait.blocking_recv()
            .map_err(|_| committer_stopped())?
            .map_err(DataError::Db)
    }
}

fn committer_stopped() -> DataError {
    DataError::Internal("index commit thread stopped".into())
}

/// Checks that `data` is the block `entry` indexes (length and crc32c).
fn matches_entry(id: BlockId, entry: &BlockInfo, data: &[u8]) -> Result<(), DataError> {
    let actual = crc32c::crc32c(data);
    if actual != entry.crc || data.len() != entry.len as usize {
        return Err(DataError::ChecksumMismatch {
            block: id,
            expected: entry.crc,
            actual,
        });
    }
    Ok(())
}

/// Writes block `id`'s `data` aside, fdatasyncs it, renames it to `path` and
/// syncs the directory so that the rename survives a crash; a failed write
/// leaves no temporary file.
fn write_durably(id: BlockId, path: &Path, data: &[u8]) -> Result<(), DataError> {
    let tmp = path.with_file_name(format!("{id}.tmp"));
    let result = write_aside(&tmp, path, data);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_aside(tmp: &Path, path: &Path, data: &[u8]) -> Result<(), DataError> {
    let mut file = File::create(tmp)?;
    file.write_all(data)?;
    file.sync_data()?;
    drop(file);
    fs::rename(tmp, path)?;
    let dir = path
        .parent()
        .ok_or_else(|| DataError::Internal(format!("{} has no parent", path.display())))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

enum IndexWrite {
    PutBlock(BlockId, BlockInfo),
}

struct CommitRequest {
    writes: Vec<IndexWrite>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The group-commit thread: takes every commit request waiting when it wakes,
/// writes them in one batch with one WAL sync, and answers them all.
struct Committer {
    tx: Option<mpsc::UnboundedSender<CommitRequest>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    fn start(db: Arc<Db>) -> Result<Committer, DataError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("datad-index-commit".into())
            .spawn(move || commit_loop(&db, rx))?;
        Ok(Committer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the channel ends the loop once the queued requests are written.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("index commit thread panicked");
            }
        }
    }
}

fn commit_loop(db: &Db, mut rx: mpsc::UnboundedReceiver<CommitRequest>) {
    while let Some(first) = rx.blocking_recv() {
        let mut requests = vec![first];
        while requests.len() < MAX_COMMIT_BATCH {
            match rx.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        let result = write_commits(db, &requests).map_err(|e| e.to_string());
        for r in requests {
            // The requester may have gone away; the write stands either way.
            let _ = r.done.send(result.clone());
        }
    }
}

fn write_commits(db: &Db, requests: &[CommitRequest]) -> Result<(), DataError> {
    let blocks = cf(db, CF_BLOCKS)?;
    let mut batch = WriteBatch::default();
    for write in requests.iter().flat_map(|r| &r.writes) {
        match write {
            IndexWrite::PutBlock(id, entry) => batch.put_cf(blocks, id.key(), entry.encode()),
        }
    }
    db.write_opt(batch, &synced())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seed: u8, len: usize) -> (Bytes, u32) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let crc = crc32c::crc32c(&data);
        (Bytes::from(data), crc)
    }

    fn id(slice_id: u64, index: u32) -> BlockId {
        BlockId { slice_id, index }
    }

    #[test]
    fn file_names_round_trip_and_reject_strays() {
        let b = id(0xdead_beef, 17);
        assert_eq!(b.to_string(), "00000000deadbeef-17");
        assert_eq!(BlockId::from_file_name(&b.to_string()), Some(b));
        assert_eq!(BlockId::from_key(&b.key()), Some(b));
        for stray in [
            "00000000deadbeef-17.tmp",
            "00000000DEADBEEF-17",
            "00000000deadbeef-017",
            "deadbeef-17",
            "00000000deadbeef-",
            "junk",
        ] {
            assert_eq!(BlockId::from_file_name(stray), None, "{stray}");
        }
    }

    #[tokio::test]
    async fn put_get_round_trip_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), 0).await.unwrap();
        let (data, crc) = block(1, MAX_BLOCK_BYTES);
        store.put(id(7, 0), data.clone(), crc).await.unwrap();

        let read = store.get(id(7, 0), 0, 0).await.unwrap();
        assert_eq!(read.data, data);
        assert_eq!(read.block_crc32c, crc);
        let read = store.get(id(7, 0), 1000, 24).await.unwrap();
        assert_eq!(&read.data[..], &data[1000..1024]);
        let read = store.get(id(7, 0), 4096, 0).await.unwrap();
        assert_eq!(&read.data[..], &data[4096..]);
        let end = MAX_BLOCK_BYTES as u32;
        assert!(store.get(id(7, 0), end, 0).await.unwrap().data.is_empty());
        assert!(matches!(
            store.get(id(7, 0), end - 10, 11).await,
            Err(DataError::Invalid(_))
        ));
        assert!(matches!(
            store.get(id(7, 1), 0, 0).await,
            Err(DataError::NotFound(b)) if b == id(7, 1)
        ));
        assert_eq!(
            store.stats(),
            StoreStats {
                capacity_bytes: disk_size(dir.path()).unwrap(),
                used_bytes: MAX_BLOCK_BYTES as u64,
                blocks: 1,
                cold_bytes: 0,
                cold_blocks: 0,
            }
        );
    }

    #[tokio::test]
    async fn put_is_idempotent_and_blocks_are_immutable() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), 0).await.unwrap();
        let (data, crc) = block(2, 1000);
        store.put(id(1, 0), data.clone(), crc).await.unwrap();
        store.put(id(1, 0), data.clone(), crc).await.unwrap();
        assert_eq!(store.stats().blocks, 1);
        assert_eq!(store.stats().used_bytes, 1000);

        let (other, other_crc) = block(3, 1000);
        assert!(matches!(
            store.put(id(1, 0), other, other_crc).await,
            Err(DataError::Conflict(_))
        ));
        assert_eq!(store.get(id(1, 0), 0, 0).await.unwrap().data, data);

        let (big, _) = block(4, MAX_BLOCK_BYTES + 1);
        assert!(matches!(
            store.put(id(1, 1), big, 0).await,
            Err(DataError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn crc_mismatch_on_put_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), 0).await.unwrap();
        let (data, crc) = block(5, 4096);
        let err = store.put(id(9, 3), data, crc ^ 1).await.unwrap_err();
        assert!(
            matches!(err, DataError::ChecksumMismatch { expected, actual, .. }
                if expected == crc ^ 1 && actual == crc),
            "{err}"
        );
        assert!(matches!(
            store.get(id(9, 3), 0, 0).await,
            Err(DataError::NotFound(_))
        ));
        assert!(!store.block_path(id(9, 3)).exists());
        let dir_entries = fs::read_dir(store.block_path(id(9, 3)).parent().unwrap())
            .unwrap()
            .count();
        assert_eq!(dir_entries, 0);
        assert_eq!(store.stats().blocks, 0);
    }

    #[tokio::test]
    async fn corrupted_file_is_detected_on_every_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), 0).await.unwrap();
        let (data, crc) = block(6, 8192);
        store.put(id(3, 1), data.clone(), crc).await.unwrap();

        let path = store.block_path(id(3, 1));
        let mut bytes = fs::read(&path).unwrap();
        bytes[5000] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        for (offset, len) in [(0, 0), (0, 16), (6000, 100)] {
            let err = store.get(id(3, 1), offset, len).await.unwrap_err();
            assert!(
                matches!(err, DataError::ChecksumMismatch { expected, .. } if expected == crc),
                "{err}"
            );
        }
        // Putting the right bytes again repairs the copy.
        store.put(id(3, 1), data.clone(), crc).await.unwrap();
        assert_eq!(store.get(id(3, 1), 0, 0).await.unwrap().data, data);
        // A truncated file fails the same way, and is repaired the same way.
        fs::write(&path, &data[..100]).unwrap();
        assert!(matches!(
            store.get(id(3, 1), 0, 10).await,
            Err(DataError::ChecksumMismatch { .. })
        ));
        store.put(id(3, 1), data.clone(), crc).await.unwrap();
        assert_eq!(store.get(id(3, 1), 0, 0).await.unwrap().data, data);
        assert_eq!(store.stats().blocks, 1);
    }

    #[tokio::test]
    async fn delete_removes_blocks_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), 0).await.unwrap();
        for i in 0..4 {
            let (data, crc) = block(i as u8, 100 + i as usize);
            store.put(id(11, i), data, crc).await.unwrap();
        }
        let deleted = store
            .delete(vec![id(11, 0), id(11, 2), id(11, 2), id(99, 0)])
            .await
            .unwrap();
        assert_eq!(deleted, 2);
        assert!(matches!(
            store.get(id(11, 0), 0, 0).await,
            Err(DataError::NotFound(_))
        ));
        assert!(!store.block_path(id(11, 2)).exists());
        assert_eq!(store.get(id(11, 1), 0, 0).await.unwrap().data.len(), 101);
        assert_eq!(
            store.stats(),
            StoreStats {
                capacity_bytes: disk_size(dir.path()).unwrap(),
                used_bytes: 101 + 103,
                blocks: 2,
                cold_bytes: 0,
                cold_blocks: 0,
            }
        );
        assert_eq!(store.delete(vec![id(11, 0)]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn reopen_keeps_blocks_and_drops_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_crc) = block(7, 3000);
        let (b, b_crc) = block(8, 4000);
        let (stray_path, tmp_path, lost_path);
        {
            let store = BlockStore::open(dir.path(), 0).await.unwrap();
            store.put(id(21, 0), a.clone(), a_crc).await.unwrap();
            store.put(id(21, 1), b.clone(), b_crc).await.unwrap();
            // A file that never got its index entry, and a half-written temp file.
            stray_path = store.block_path(id(22, 0));
            fs::write(&stray_path, b"unfinished").unwrap();
            tmp_path = store
                .block_path(id(22, 1))
                .with_file_name("0000000000000016-1.tmp");
            fs::write(&tmp_path, b"partial").unwrap();
            // An indexed block whose file was lost.
            lost_path = store.block_path(id(21, 1));
            fs::remove_file(&lost_path).unwrap();
        }
        let store = BlockStore::open(dir.path(), 0).await.unwrap();
        assert_eq!(store.get(id(21, 0), 0, 0).await.unwrap().data, a);
        assert!(matches!(
            store.get(id(21, 1), 0, 0).await,
            Err(DataError::NotFound(_))
        ));
        assert!(matches!(
            store.get(id(22, 0), 0, 0).await,
            Err(DataError::NotFound(_))
        ));
        assert!(!stray_path.exists());
        assert!(!tmp_path.exists());
        assert_eq!(store.stats().blocks, 1);
        assert_eq!(store.stats().used_bytes, 3000);
        // The dropped block can be written again.
        store.put(id(21, 1), b.clone(), b_crc).await.unwrap();
        assert_eq!(store.get(id(21, 1), 0, 0).await.unwrap().data, b);
    }

    #[tokio::test]
    async fn concurrent_puts_are_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), 0).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64u32 {
            let store = store.clone();
            tasks.spawn(async move {
                let (data, crc) = block(i as u8, 1024 + i as usize);
                store.put(id(u64::from(i % 8), i), data, crc).await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        drop(store);
        let store = BlockStore::open(dir.path(), 0).await.unwrap();
        assert_eq!(store.stats().blocks, 64);
        for i in 0..64u32 {
            let (data, _) = block(i as u8, 1024 + i as usize);
            let read = store.get(id(u64::from(i % 8), i), 0, 0).await.unwrap();
            assert_eq!(read.data, data);
        }
    }

    #[tokio::test]
    async fn configured_capacity_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), 1500).await.unwrap();
        let (a, a_crc) = block(1, 1000);
        store.put(id(1, 0), a.clone(), a_crc).await.unwrap();
        let (b, b_crc) = block(2, 1000);
        assert!(matches!(
            store.put(id(1, 1), b, b_crc).await,
            Err(DataError::NoSpace(_))
        ));
        // Re-putting a stored block needs no space.
        store.put(id(1, 0), a, a_crc).await.unwrap();
        assert_eq!(store.stats().capacity_bytes, 1500);
    }

    #[tokio::test]
    async fn tiers_move_files_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_crc) = block(9, 5000);
        let (b, b_crc) = block(10, 6000);
        {
            let store = BlockStore::open(dir.path(), 0).await.unwrap();
            store.put(id(30, 0), a.clone(), a_crc).await.unwrap();
            store.put(id(30, 1), b.clone(), b_crc).await.unwrap();
            assert_eq!(
                store.info(id(30, 0)).await.unwrap().unwrap().tier,
                Tier::Hot
            );
            store.set_tier(id(30, 0), Tier::Staged).await.unwrap();
            let info = store.set_tier(id(30, 0), Tier::Cold).await.unwrap();
            assert_eq!((info.tier, info.len, info.crc), (Tier::Cold, 5000, a_crc));
            assert!(!store.block_path(id(30, 0)).exists());
            assert!(matches!(
                store.get(id(30, 0), 0, 0).await,
                Err(DataError::InColdTier(_))
            ));
            // Only a restore brings a cold block back.
            assert!(matches!(
                store.set_tier(id(30, 0), Tier::Hot).await,
                Err(DataError::Invalid(_))
            ));
            // Re-putting a cold block needs nothing.
            store.put(id(30, 0), a.clone(), a_crc).await.unwrap();
            assert!(!store.block_path(id(30, 0)).exists());
            let stats = store.stats();
            assert_eq!((stats.used_bytes, stats.blocks), (6000, 2));
            assert_eq!((stats.cold_bytes, stats.cold_blocks), (5000, 1));
            // A crash between the entry turning cold and the unlink leaves a file.
            fs::write(store.block_path(id(30, 0)), &a).unwrap();
        }
        let store = BlockStore::open(dir.path(), 0).await.unwrap();
        assert!(!store.block_path(id(30, 0)).exists());
        assert_eq!(store.stats().cold_blocks, 1);
        assert_eq!(store.stats().blocks, 2);
        assert!(matches!(
            store.restore(id(30, 0), b.clone()).await,
            Err(DataError::ChecksumMismatch { .. })
        ));
        let info = store.restore(id(30, 0), a.clone()).await.unwrap();
        assert_eq!(info.tier, Tier::Staged);
        assert_eq!(store.get(id(30, 0), 0, 0).await.unwrap().data, a);
        assert_eq!(store.stats().used_bytes, 11000);
        assert_eq!(store.stats().cold_blocks, 0);
        // Deleting a cold block drops its entry.
        store.set_tier(id(30, 1), Tier::Cold).await.unwrap();
        assert_eq!(store.delete(vec![id(30, 1)]).await.unwrap(), 1);
        assert_eq!(store.stats().cold_bytes, 0);
        assert_eq!(store.info(id(30, 1)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn coldest_is_least_recently_used_and_skips_pins() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), 0).await.unwrap();
        for i in 0..4 {
            let (data, crc) = block(i as u8, 1000);
            store.put(id(40, i), data, crc).await.unwrap();
        }
        store.get(id(40, 0), 0, 0).await.unwrap();
        store.set_pinned(id(40, 1), true).await.unwrap();
        let order: Vec<BlockId> = store
            .coldest(u64::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|(b, _)| b)
            .collect();
        assert_eq!(order, vec![id(40, 2), id(40, 3), id(40, 0)]);
        assert_eq!(store.coldest(1500).await.unwrap().len(), 2);
        assert!(store.info(id(40, 1)).await.unwrap().unwrap().pinned);
    }
}
