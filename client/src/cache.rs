//! Local block cache (meant for a local NVMe disk).
//!
//! Blocks are immutable, so a cached block is never stale: it is keyed by block
//! id alone. Each block is one file `<dir>/<xx>/<slice id hex>-<index>.blk`
//! holding the data's length, a crc32c per 64 KiB segment, then the data. A hit
//! reads and verifies only the segments the requested range touches (a 4 KiB
//! read costs one 64 KiB read and checksum, not the whole block); a file that
//! fails (or cannot be read) is dropped and counts as a miss. The index
//! lives in memory and is rebuilt from the directory at start, so the cache
//! survives remounts. Capacity is bounded; least recently used blocks go first.
//! A cache disk that is full or broken never fails a read: the block is served
//! from the data servers and simply not cached.
//!
//! The cache counts what it does in [`CacheMetrics`] (shared atomics): a front
//! end registers clones of them in its metrics registry, and a scrape reads
//! them without taking the index lock.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

type BlockKey = (u64, u32);

/// Hits, misses and usage, for `cairn cache stat` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub blocks: u64,
    pub bytes: u64,
    pub capacity: u64,
    pub hits: u64,
    pub misses: u64,
    pub corrupt: u64,
}

/// What the cache did since it was opened, for metrics. Clones share the
/// values: the cache updates them, a metrics registry reads them.
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    /// Reads served from the cache (verified).
    pub hits: Counter,
    /// Reads the cache could not serve (absent, or dropped as corrupt).
    pub misses: Counter,
    /// Bytes of block data served from the cache.
    pub hit_bytes: Counter,
    /// Blocks stored in the cache.
    pub inserts: Counter,
    /// Blocks dropped to stay within capacity.
    pub evictions: Counter,
    /// Cache files that failed their checksum or could not be read.
    pub corrupt: Counter,
    /// Bytes on disk now (data and checksums).
    pub bytes: Gauge,
    /// Blocks held now.
    pub blocks: Gauge,
}

struct Index {
    /// Block → (size on disk, last use).
    entries: HashMap<BlockKey, (u64, u64)>,
    /// Last use → block, oldest first.
    lru: BTreeMap<u64, BlockKey>,
    clock: u64,
    stats: CacheStats,
    metrics: CacheMetrics,
}

impl Index {
    fn touch(&mut self, key: BlockKey, size: u64) {
        self.clock += 1;
        if let Some((old_size, used)) = self.entries.insert(key, (size, self.clock)) {
            self.lru.remove(&used);
            self.stats.bytes -= old_size;
            self.stats.blocks -= 1;
        }
        self.lru.insert(self.clock, key);
        self.stats.bytes += size;
        self.stats.blocks += 1;
        self.publish();
    }

    fn forget(&mut self, key: &BlockKey) {
        if let Some((size, used)) = self.entries.remove(key) {
            self.lru.remove(&used);
            self.stats.bytes -= size;
            self.stats.blocks -= 1;
        }
        self.publish();
    }

    fn publish(&self) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.metrics.bytes.set(gauge(self.stats.bytes));
        self.metrics.blocks.set(gauge(self.stats.blocks));
    }
}

#[derive(Clone)]
pub struct BlockCache {
    dir: PathBuf,
    index: Arc<Mutex<Index>>,
}

impl BlockCache {
    /// Opens (creating if needed) the cache in `dir`, bounded to `capacity` bytes,
    /// and indexes what an earlier run left there.
    pub fn open(dir: &Path, capacity: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut index = Index {
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            stats: CacheStats {
                capacity,
                ..Default::default()
            },
            metrics: CacheMetrics::default(),
        };
        for sub in std::fs::read_dir(dir)? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(sub.path())? {
                let f = f?;
                let name = f.file_name();
                match parse_name(&name.to_string_lossy()) {
                    Some(key) => index.touch(key, f.metadata()?.len()),
                    // Unfinished writes of a crashed run.
                    None => {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
        }
        let cache = BlockCache {
            dir: dir.to_path_buf(),
            index: Arc::new(Mutex::new(index)),
        };
        cache.evict();
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, (slice_id, index): BlockKey) -> PathBuf {
        self.dir
            .join(format!("{:02x}", slice_id & 0xff))
            .join(format!("{slice_id:016x}-{index}.blk"))
    }

    /// Whether a block is cached (not verified; for skipping work).
    pub fn contains(&self, slice_id: u64, index: u32) -> bool {
        self.lock().entries.contains_key(&(slice_id, index))
    }

    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    /// The cache's counters (clones share the values).
    pub fn metrics(&self) -> CacheMetrics {
        self.lock().metrics.clone()
    }

    /// Bytes [offset, offset + len) of a cached block (to its end when `len`
    /// is 0), verified; None on a miss, or on a bad file (then dropped).
    pub async fn get(&self, slice_id: u64, index: u32, offset: u32, len: u32) -> Option<Bytes> {
        let key = (slice_id, index);
        {
            let mut idx = self.lock();
            if !idx.entries.contains_key(&key) {
                idx.stats.misses += 1;
                idx.metrics.misses.inc();
                return None;
            }
        }
        let path = self.path(key);
        let read = tokio::task::spawn_blocking(move || read_range(&path, offset, len)).await;
        let mut idx = self.lock();
        match read {
            Ok(Ok((data, size))) => {
                idx.touch(key, size);
                idx.stats.hits += 1;
                idx.metrics.hits.inc();
                idx.metrics.hit_bytes.inc_by(data.len() as u64);
                Some(data)
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => unreachable!("matched above"),
                };
                tracing::warn!(slice_id, index, "cache file unusable ({why}); dropped");
                idx.forget(&key);
                idx.stats.corrupt += 1;
                idx.stats.misses += 1;
                idx.metrics.corrupt.inc();
                idx.metrics.misses.inc();
                drop(idx);
                let _ = std::fs::remove_file(self.path(key));
                None
            }
        }
    }

    /// Stores a block (best effort: failures only log).
    pub async fn put(&self, slice_id: u64, index: u32, data: Bytes) {
        let key = (slice_id, index);
        let path = self.path(key);
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, &data)).await;
        match written {
            Ok(Ok(size)) => {
                {
                    let mut idx = self.lock();
                    idx.touch(key, size);
                    idx.metrics.inserts.inc();
                }
                self.evict();
            }
            Ok(Err(e)) => tracing::warn!(slice_id, index, "not caching block: {e}"),
            Err(e) => tracing::warn!(slice_id, index, "not caching block: {e}"),
        }
    }

    /// Drops least recently used blocks until under capacity.
    fn evict(&self) {
        let mut victims = Vec::new();
        {
            let mut idx = self.lock();
            while idx.stats.bytes > idx.stats.capacity {
                let Some((_, key)) = idx.lru.pop_first() else {
                    break;
                };
                idx.forget(&key);
                idx.metrics.evictions.inc();
                victims.push(key);
            }
        }
        for key in victims {
            let _ = std::fs::remove_file(self.path(key));
        }
    }

    /// Empties the cache.
    pub fn clear(&self) {
        let keys: Vec<BlockKey> = self.lock().entries.keys().copied().collect();
        for key in keys {
            self.lock().forget(&key);
            let _ = std::fs::remove_file(self.path(key));
        }
    }
}

/// The block a cache file name stands for; None for anything else (an
/// unfinished write, or a file of an older cache format).
fn parse_name(name: &str) -> Option<BlockKey> {
    let (slice, index) = name.strip_suffix(".blk")?.split_once('-')?;
    if slice.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(slice, 16).ok()?, index.parse().ok()?))
}

/// Data bytes covered by one checksum.
const SEGMENT: usize = 64 << 10;

fn header_len(data_len: usize) -> usize {
    4 + 4 * data_len.div_ceil(SEGMENT)
}

/// Writes the header (length, segment checksums) and the data to a temporary
/// file and renames it into place, so a crash never leaves a half-written
/// block under a block's name. Answers the file's size.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<u64> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let len = u32::try_from(data.len()).map_err(std::io::Error::other)?;
    let mut header = Vec::with_capacity(header_len(data.len()));
    header.extend_from_slice(&len.to_le_bytes());
    for segment in data.chunks(SEGMENT) {
        header.extend_from_slice(&crc32c::crc32c(segment).to_le_bytes());
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&header)?;
    f.write_all(data)?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    Ok((header.len() + data.len()) as u64)
}

/// Reads and verifies the segments that hold data bytes [offset, offset +
/// len) (to the end when `len` is 0); answers those bytes and the file's size.
fn read_range(path: &Path, offset: u32, len: u32) -> std::io::Result<(Bytes, u64)> {
    use std::os::unix::fs::FileExt;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let f = std::fs::File::open(path)?;
    let mut word = [0u8; 4];
    f.read_exact_at(&mut word, 0)?;
    let data_len = u32::from_le_bytes(word) as usize;
    let size = (header_len(data_len) + data_len) as u64;
    if f.metadata()?.len() != size {
        return Err(bad("file size does not match its header"));
    }
    let start = offset as usize;
    let end = if len == 0 {
        data_len
    } else {
        start + len as usize
    };
    if start > end || end > data_len {
        return Err(bad("range outside the block"));
    }
    if start == end {
        return Ok((Bytes::new(), size));
    }
    let (first, last) = (start / SEGMENT, (end - 1) / SEGMENT);
    let mut crcs = vec![0u8; 4 * (last - first + 1)];
    f.read_exact_at(&mut crcs, 4 + 4 * first as u64)?;
    let from = first * SEGMENT;
    let to = ((last + 1) * SEGMENT).min(data_len);
    let mut data = vec![0u8; to - from];
    f.read_exact_at(&mut data, (header_len(data_len) + from) as u64)?;
    for (segment, crc) in data.chunks(SEGMENT).zip(crcs.chunks(4)) {
        if crc32c::crc32c(segment).to_le_bytes() != crc {
            return Err(bad("checksum mismatch"));
        }
    }
    Ok((Bytes::from(data).slice(start - from..end - from), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hits_evicts_reindexes_and_drops_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(dir.path(), 250).unwrap();
        for i in 0..3u32 {
            cache.put(7, i, Bytes::from(vec![i as u8; 100])).await;
        }
        // 3 x 108 bytes > 250: the least recently used block went.
        assert!(cache.get(7, 0, 0, 0).await.is_none());
        assert_eq!(
            cache.get(7, 2, 0, 0).await.unwrap(),
            Bytes::from(vec![2u8; 100])
        );
        assert_eq!(cache.stats().blocks, 2);
        let m = cache.metrics();
        assert_eq!(
            (m.hits.get(), m.misses.get(), m.hit_bytes.get()),
            (1, 1, 100)
        );
        assert_eq!((m.inserts.get(), m.evictions.get()), (3, 1));
        assert_eq!((m.blocks.get(), m.bytes.get()), (2, 216));
        // Reopened: the blocks are still there.
        let cache = BlockCache::open(dir.path(), 250).unwrap();
        assert_eq!(cache.stats().blocks, 2);
        assert!(cache.get(7, 1, 0, 0).await.is_some());
        // A flipped byte is detected and the file dropped.
        let path = cache.path((7, 2));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(cache.get(7, 2, 0, 0).await.is_none());
        assert!(!path.exists());
        assert_eq!(cache.stats().corrupt, 1);
        let m = cache.metrics();
        assert_eq!((m.corrupt.get(), m.misses.get(), m.blocks.get()), (1, 1, 1));
    }

    /// A range read verifies only its segments: damage elsewhere in the block
    /// does not fail it, damage inside does (and drops the file); ranges that
    /// cross segment boundaries come back whole.
    #[tokio::test]
    async fn range_reads_verify_only_their_segments() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 30).unwrap();
        let data: Vec<u8> = (0..3 * SEGMENT + 100).map(|i| (i % 251) as u8).collect();
        cache.put(1, 0, Bytes::from(data.clone())).await;
        for (off, len) in [
            (0, 4096),
            (SEGMENT - 10, 20),
            (2 * SEGMENT + 50, 150),
            (5, 0),
        ] {
            let got = cache.get(1, 0, off as u32, len as u32).await.unwrap();
            let end = if len == 0 { data.len() } else { off + len };
            assert_eq!(&got[..], &data[off..end], "range {off}+{len}");
        }
        assert!(cache.get(1, 0, 0, (data.len() + 1) as u32).await.is_none());
        cache.put(1, 0, Bytes::from(data.clone())).await;
        // Damage the last segment: a read of the first still succeeds.
        let path = cache.path((1, 0));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(cache.get(1, 0, 0, 4096).await.is_some());
        assert!(cache.get(1, 0, (3 * SEGMENT) as u32, 10).await.is_none());
        assert!(!path.exists());
    }

    /// Files of the older format (no `.blk` suffix) are removed at open.
    #[test]
    fn files_of_an_older_format_are_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("07");
        std::fs::create_dir_all(&sub).unwrap();
        let old = sub.join(format!("{:016x}-0", 7));
        std::fs::write(&old, b"xxxxdata").unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(cache.stats().blocks, 0);
        assert!(!old.exists());
    }
}
