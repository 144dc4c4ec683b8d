//! cairn-client: the library every front end (CLI, FUSE, S3 gateway, bench) uses.
//!
//! - `meta`: metadata RPCs routed to shard leaders, exactly-once mutations, path
//!   resolution, batched slice-id allocation;
//! - `data`: block I/O over placement-group replica chains;
//! - `cache`: the local block cache (for a local NVMe disk);
//! - `file`: chunk/slice/block layout, buffered parallel writes committed on
//!   close, parallel reads with read-ahead;
//! - `tier`: tier policy runs, restores and hot/cold usage;
//! - `error`: the one error type front ends map from.

pub mod cache;
pub mod data;
pub mod entries;
pub mod error;
pub mod file;
pub mod meta;
pub mod tier;

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::channel::Channels;
use cairn_proto::pb;

pub use error::ClientError;
pub use file::FileReader;
pub use file::FileWriter;
pub use meta::Caller;
pub use meta::MetaClient;
pub use meta::Result;

/// A connection to one Cairn cluster.
pub struct Client {
    pub meta: Arc<MetaClient>,
    pub data: data::DataClient,
    /// Bound on block bytes a writer uploads at once.
    pub max_inflight_bytes: usize,
    /// Files written only below this offset keep their data inline in the
    /// inode record (data-on-metadata); 0 turns that off.
    inline_max: AtomicUsize,
}

/// Default inline-data threshold: files up to 64 KiB live in metadata.
pub const DEFAULT_INLINE_MAX: usize = 64 << 10;
/// Chunks whose layout an open reads: files up to 256 MiB need no other
/// metadata request to be read.
const OPEN_LAYOUT_CHUNKS: u32 = 4;

impl Client {
    /// A client of the cluster whose metad addresses are `seeds`.
    pub fn new(seeds: Vec<String>) -> Arc<Self> {
        Self::with_meta(MetaClient::new(seeds, Channels::default()))
    }

    /// A client over an already configured metadata client.
    pub fn with_meta(meta: MetaClient) -> Arc<Self> {
        Self::with_options(meta, None)
    }

    /// A client with a local block cache.
    pub fn with_options(meta: MetaClient, cache: Option<cache::BlockCache>) -> Arc<Self> {
        // A block transfer that takes longer than this is given up and tried
        // on another replica (a data server hung without closing its socket).
        let channels = Channels::with_timeouts(Duration::from_secs(1), Duration::from_secs(30));
        let meta = Arc::new(meta);
        Arc::new(Client {
            data: data::DataClient::new(meta.clone(), channels, cache),
            meta,
            max_inflight_bytes: 64 << 20,
            inline_max: AtomicUsize::new(DEFAULT_INLINE_MAX),
        })
    }

    /// Sets the inline-data threshold (bytes; 0: never inline). metad bounds
    /// it at 1 MiB.
    pub fn set_inline_max(&self, bytes: usize) {
        self.inline_max.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn inline_max(&self) -> usize {
        self.inline_max.load(Ordering::Relaxed)
    }

    async fn block_size(&self) -> Result<u32> {
        let mut map = self.meta.map().await?;
        if map.block_size == 0 {
            map = self.meta.refresh_map().await?;
        }
        if map.block_size == 0 {
            return Err(ClientError::Unavailable(
                "cluster layout not initialized yet".into(),
            ));
        }
        Ok(map.block_size)
    }

    /// A writer appending to / overwriting the file `ino`.
    pub async fn writer(self: &Arc<Self>, ino: u64) -> Result<FileWriter> {
        let bs = self.block_size().await?;
        Ok(FileWriter::new(self.clone(), ino, bs as usize))
    }

    /// A reader of the file with attributes `attr`.
    pub async fn reader(self: &Arc<Self>, attr: &pb::Attr) -> Result<FileReader> {
        let bs = self.block_size().await?;
        Ok(FileReader::new(self.clone(), attr, bs))
    }

    /// The attributes of the file `ino` and a reader of it, in one metadata
    /// request that also answers the layout of the first chunks (and a small
    /// file's inline data): reading them needs no further metadata request.
    /// ESTALE if the file no longer exists.
    pub async fn open_reader(self: &Arc<Self>, ino: u64) -> Result<(pb::Attr, FileReader)> {
        let layout = self
            .meta
            .read_chunks(ino, 0, OPEN_LAYOUT_CHUNKS)
            .await
            .map_err(file::gone_is_stale)?;
        let attr = layout
            .attr
            .ok_or_else(|| ClientError::Data("read_chunks answered no attributes".into()))?;
        let mut reader = self.reader(&attr).await?;
        reader.preload(0, OPEN_LAYOUT_CHUNKS, &layout);
        Ok((attr, reader))
    }

    /// Creates (or truncates) the file at `path` and returns a writer for it.
    pub async fn create_file(self: &Arc<Self>, path: &str, perm: u32) -> Result<FileWriter> {
        let (parent, name) = self.meta.resolve_parent(path).await?;
        let attr = self
            .meta
            .create(parent.ino, name.as_bytes(), perm, false)
            .await?;
        if attr.size > 0 {
            self.meta
                .setattr(
                    attr.ino,
                    pb::SetAttr {
                        size: Some(0),
                        ..Default::default()
                    },
                )
                .await?;
        }
        self.writer(attr.ino).await
    }

    /// Every block of the file `ino` (slice id, index), in file order, with its
    /// size: what a reader of the whole file would fetch.
    pub async fn blocks_of(&self, ino: u64) -> Result<Vec<(u64, u32)>> {
        let bs = u64::from(self.block_size().await?);
        let size = self.meta.getattr(ino).await?.size;
        let chunks = size.div_ceil(cairn_proto::ids::CHUNK_SIZE) as u32;
        let mut blocks = Vec::new();
        let mut first = 0;
        while first < chunks {
            let reply = self.meta.read_chunks(ino, first, 64).await?;
            for chunk in &reply.chunks {
                for s in chunk.slices.iter().filter(|s| s.slice_id != 0) {
                    let from = u64::from(s.off) / bs;
                    let to = (u64::from(s.off) + u64::from(s.len)).div_ceil(bs);
                    blocks.extend((from..to).map(|i| (s.slice_id, i as u32)));
                }
            }
            first += 64;
        }
        blocks.dedup();
        Ok(blocks)
    }

    /// Fetches every block of the file `ino` into the local cache, `parallel`
    /// at a time, skipping those already there (so an interrupted warm-up
    /// resumes); answers the bytes fetched.
    pub async fn warm(&self, ino: u64, parallel: usize) -> Result<u64> {
        use futures::stream::StreamExt;
        use futures::stream::TryStreamExt;
        let Some(cache) = self.data.cache() else {
            return Err(ClientError::Invalid("warm-up needs a local cache".into()));
        };
        let missing: Vec<(u64, u32)> = self
            .blocks_of(ino)
            .await?
            .into_iter()
            .filter(|(s, i)| !cache.contains(*s, *i))
            .collect();
        let fetched: Vec<u64> = futures::stream::iter(missing)
            .map(|(s, i)| async move {
                Ok::<_, ClientError>(self.data.get_block(s, i, 0, 0).await?.len() as u64)
            })
            .buffer_unordered(parallel.max(1))
            .try_collect()
            .await?;
        Ok(fetched.iter().sum())
    }

    /// Opens the file at `path` for reading, as `open(2)` does: the reader
    /// reads the file the path named at some instant of this call, and keeps
    /// reading it (it is held) if the path is then renamed over or unlinked.
    pub async fn open_file(self: &Arc<Self>, path: &str) -> Result<FileReader> {
        let mut tries = 0;
        loop {
            let attr = self.meta.resolve(path).await?;
            if attr.kind != pb::FileKind::Regular as i32 {
                return Err(ClientError::fs(
                    cairn_proto::status::EISDIR,
                    format!("{path}: not a regular file"),
                ));
            }
            match self.open_reader(attr.ino).await {
                Ok((_, mut reader)) => {
                    reader.hold().await?;
                    return Ok(reader);
                }
                // The resolved file was replaced and deleted before its
                // layout was read (a slow read under a fault can outlast the
                // grace of an unheld file): the path names another now.
                Err(e) if e.errno() == cairn_proto::status::ESTALE && tries < 3 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
}
