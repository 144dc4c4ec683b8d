//! cairn-client: the library every front end (CLI, FUSE, S3 gateway, bench) uses.
//!
//! - `meta`: metadata RPCs routed to shard leaders, exactly-once mutations, path
//!   resolution, batched slice-id allocation;
//! - `data`: block I/O over placement-group replica chains;
//! - `cache`: the local block cache (for a local NVMe disk);
//! - `file`: chunk/slice/block layout, buffered parallel writes committed on
//!   close, parallel reads with read-ahead;
//! - `error`: the one error type front ends map from.

pub mod cache;
pub mod data;
pub mod error;
pub mod file;
pub mod meta;

use std::sync::Arc;

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
}

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
        let channels = Channels::default();
        let meta = Arc::new(meta);
        Arc::new(Client {
            data: data::DataClient::new(meta.clone(), channels, cache),
            meta,
            max_inflight_bytes: 64 << 20,
        })
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

    /// Opens the file at `path` for reading.
    pub async fn open_file(self: &Arc<Self>, path: &str) -> Result<FileReader> {
        let attr = self.meta.resolve(path).await?;
        if attr.kind != pb::FileKind::Regular as i32 {
            return Err(ClientError::fs(
                cairn_proto::status::EISDIR,
                format!("{path}: not a regular file"),
            ));
        }
        self.reader(&attr).await
    }
}
