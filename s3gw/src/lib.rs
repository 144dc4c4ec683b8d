//! cairn-s3gw: the S3 API over the Cairn namespace, so that objects are files
//! and files are objects (ARCHITECTURE.md section 7).
//!
//! - `names`: how bucket names and object keys map to paths, and which are refused;
//! - `objmeta`: what an object carries beyond its bytes (ETag, Content-Type,
//!   x-amz-meta-*), kept in one xattr of its file;
//! - `digest`: the digests a request announces for its body (Content-MD5,
//!   checksum headers and trailers), checked before the body is published;
//! - `namespace`: lookups, directory creation, temporary files, and writing a
//!   request body into a new file that a rename then publishes atomically;
//! - `bucket`, `object`, `list`, `multipart`: the S3 operations, and `s3` the
//!   `s3s::S3` trait that routes to them;
//! - `server`: HTTP serving with SigV4 (through s3s), access rules, request
//!   limits, metrics and access logs;
//! - `config`: the gateway's configuration file.

pub mod bucket;
pub mod config;
pub mod digest;
pub mod error;
pub mod list;
pub mod multipart;
pub mod names;
pub mod namespace;
pub mod object;
pub mod objmeta;
pub mod s3;
pub mod server;

use std::sync::Arc;

use cairn_client::Client;

pub use config::Config;
pub use server::Gateway;

/// The S3 operations over one cluster (what the `s3s::S3` trait calls).
#[derive(Clone)]
pub struct Store {
    pub client: Arc<Client>,
    /// Largest object one PUT (or one part) may carry.
    pub max_object_bytes: u64,
    /// The owner listings name (`Config::owner`).
    pub owner: s3s::dto::Owner,
}
