//! Local block cache (meant for a local NVMe disk).
//!
//! Blocks are immutable, so a cached block is never stale: it is keyed by block
//! id alone. Each block is one file `<dir>/<xx>/<slice id hex>-<index>` holding
//! a crc32c of the data followed by the data; every hit is verified, and a file
//! that fails (or cannot be read) is dropped and counts as a miss. The index
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
            .join(format!("{slice_id:016x}-{index}"))
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

    /// The cached block, verified; None on a miss or a bad file (then dropped).
    pub async fn get(&self, slice_id: u64, index: u32) -> Option<Bytes> {
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
        let read = tokio::task::spawn_blocking(move || std::fs::read(path)).await;
        let verified = match read {
            Ok(Ok(file)) if file.len() >= 4 => {
                let (crc, data) = file.split_at(4);
                let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
                (crc32c::crc32c(data) == crc).then(|| Bytes::copy_from_slice(data))
            }
            _ => None,
        };
        let mut idx = self.lock();
        match verified {
            Some(data) => {
                idx.touch(key, data.len() as u64 + 4);
                idx.stats.hits += 1;
                idx.metrics.hits.inc();
                idx.metrics.hit_bytes.inc_by(data.len() as u64);
                Some(data)
            }
            None => {
                tracing::warn!(slice_id, index, "cache file unreadable or corrupt; dropped");
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

fn parse_name(name: &str) -> Option<BlockKey> {
    let (slice, index) = name.split_once('-')?;
    if slice.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(slice, 16).ok()?, index.parse().ok()?))
}

/// Writes crc + data to a temporary file and renames it into place, so a crash
/// never leaves a half-written block under a block's name.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<u64> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&crc32c::crc32c(data).to_le_bytes())?;
    f.write_all(data)?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    Ok(data.len() as u64 + 4)
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
        // 3 x 104 bytes > 250: the least recently used block went.
        assert!(cache.get(7, 0).await.is_none());
        assert_eq!(cache.get(7, 2).await.unwrap(), Bytes::from(vec![2u8; 100]));
        assert_eq!(cache.stats().blocks, 2);
        let m = cache.metrics();
        assert_eq!(
            (m.hits.get(), m.misses.get(), m.hit_bytes.get()),
            (1, 1, 100)
        );
        assert_eq!((m.inserts.get(), m.evictions.get()), (3, 1));
        assert_eq!((m.blocks.get(), m.bytes.get()), (2, 208));
        // Reopened: the blocks are still there.
        let cache = BlockCache::open(dir.path(), 250).unwrap();
        assert_eq!(cache.stats().blocks, 2);
        assert!(cache.get(7, 1).await.is_some());
        // A flipped byte is detected and the file dropped.
        let path = cache.path((7, 2));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(cache.get(7, 2).await.is_none());
        assert!(!path.exists());
        assert_eq!(cache.stats().corrupt, 1);
        let m = cache.metrics();
        assert_eq!((m.corrupt.get(), m.misses.get(), m.blocks.get()), (1, 1, 1));
    }
}
