//! The cold tier's object store: where a datad puts the only copy of a cold
//! block. Every backend is an `object_store` [`ObjectStore`] (S3-compatible
//! endpoints, or a local/shared directory), reached only through [`ColdStore`],
//! which adds what a background mover needs on top: a deterministic key per
//! block, a timeout on every attempt, retries with backoff for transient
//! failures (5xx, timeouts, refused connections), an error split into
//! transient / permanent / not-found, and cancellation.
//!
//! Keys: `<prefix>/blocks/<xx>/<slice_id as 16 hex digits>-<index>`, `<xx>` the
//! same 256-way spread as the local block files, so listings and request rates
//! spread over key prefixes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_proto::pb;
use cairn_proto::retry::retry;
use cairn_proto::retry::Backoff;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::ClientOptions;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::PutPayload;
use object_store::RetryConfig;
use tokio_util::sync::CancellationToken;

use crate::config::ColdConfig;
use crate::store::BlockId;

/// A failed cold-tier operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ColdError {
    /// The object does not exist.
    #[error("cold object {0} not found")]
    NotFound(String),
    /// Retrying cannot help (bad credentials, bad bucket, refused request).
    #[error("cold tier refused: {0}")]
    Permanent(String),
    /// The backend failed or did not answer in time, every retry included.
    #[error("cold tier unavailable: {0}")]
    Transient(String),
    /// The caller gave up.
    #[error("cold tier operation cancelled")]
    Cancelled,
}

impl ColdError {
    fn from_store(e: object_store::Error) -> ColdError {
        use object_store::Error as E;
        match e {
            E::NotFound { path, .. } => ColdError::NotFound(path),
            E::Generic { .. } | E::JoinError { .. } => ColdError::Transient(e.to_string()),
            other => ColdError::Permanent(other.to_string()),
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, ColdError::Transient(_))
    }
}

/// One cold backend with its retry and timeout policy; clones share it.
#[derive(Clone)]
pub struct ColdStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// Set for a local directory: puts are fsync'd there (object_store's local
    /// backend renames into place but does not sync).
    local_root: Option<PathBuf>,
    spec: pb::ColdBackend,
    op_timeout: Duration,
    backoff: Backoff,
}

impl std::fmt::Debug for ColdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ColdStore({})", self.spec.url)
    }
}

impl ColdStore {
    /// Opens the backend `spec` names. Credentials come from `config`, else from
    /// the AWS environment variables (`AWS_ACCESS_KEY_ID`, …).
    pub fn open(spec: &pb::ColdBackend, config: &ColdConfig) -> Result<ColdStore, ColdError> {
        let bad = |m: String| ColdError::Permanent(format!("cold backend {:?}: {m}", spec.url));
        let (store, prefix, local_root): (Arc<dyn ObjectStore>, String, Option<PathBuf>) =
            if let Some(rest) = spec.url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("no bucket".into()));
                }
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_virtual_hosted_style_request(!spec.path_style)
                    // One retry policy for every backend: ours, below.
                    .with_retry(RetryConfig {
                        max_retries: 0,
                        ..RetryConfig::default()
                    })
                    .with_client_options(
                        ClientOptions::new()
                            .with_timeout(config.op_timeout())
                            .with_connect_timeout(config.op_timeout())
                            .with_allow_http(spec.endpoint.starts_with("http://")),
                    );
                if !spec.region.is_empty() {
                    builder = builder.with_region(&spec.region);
                }
                if !spec.endpoint.is_empty() {
                    builder = builder.with_endpoint(&spec.endpoint);
                }
                if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key)
                {
                    builder = builder
                        .with_access_key_id(id)
                        .with_secret_access_key(secret);
                }
                let store = builder.build().map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), prefix.to_string(), None)
            } else if let Some(dir) = spec.url.strip_prefix("file://") {
                if !dir.starts_with('/') {
                    return Err(bad("a file:// backend needs an absolute path".into()));
                }
                std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
                let store =
                    LocalFileSystem::new_with_prefix(dir).map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), String::new(), Some(PathBuf::from(dir)))
            } else {
                return Err(bad("expected s3://bucket/prefix or file:///dir".into()));
            };
        Ok(ColdStore {
            store,
            prefix: ObjectPath::from(prefix.trim_matches('/')),
            local_root,
            spec: spec.clone(),
            op_timeout: config.op_timeout(),
            backoff: Backoff {
                first: Duration::from_millis(100),
                max: Duration::from_secs(5),
                deadline: config.retry_deadline(),
            },
        })
    }

    /// The backend this store was opened from.
    pub fn spec(&self) -> &pb::ColdBackend {
        &self.spec
    }

    /// The object key of a block.
    pub fn key(&self, id: BlockId) -> ObjectPath {
        let key = ObjectPath::from_iter([
            "blocks".to_string(),
            format!("{:02x}", id.dir()),
            id.to_string(),
        ]);
        ObjectPath::from_iter(self.prefix.parts().chain(key.parts()))
    }

    /// Runs `op` with a timeout per attempt and retries of transient failures,
    /// until it succeeds, fails for good, or `cancel` fires.
    async fn attempt<T, F, Fut>(&self, cancel: &CancellationToken, op: F) -> Result<T, ColdError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ColdError>>,
    {
        let timeout = self.op_timeout;
        let attempts = retry(self.backoff, ColdError::is_transient, |n| {
            if n > 0 {
                tracing::debug!(attempt = n, "retrying a cold-tier operation");
            }
            let fut = op();
            async move {
                match tokio::time::timeout(timeout, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(ColdError::Transient(format!(
                        "no answer within {} ms",
                        timeout.as_millis()
                    ))),
                }
            }
        });
        tokio::select! {
            _ = cancel.cancelled() => Err(ColdError::Cancelled),
            r = attempts => r,
        }
    }

    /// Stores a block's bytes under its key (durably, for a local directory).
    pub async fn put(
        &self,
        id: BlockId,
        data: Bytes,
        cancel: &CancellationToken,
    ) -> Result<(), ColdError> {
        let key = self.key(id);
        self.attempt(cancel, || async {
            self.store
                .put(&key, PutPayload::from(data.clone()))
                .await
                .map_err(ColdError::from_store)?;
            if let Some(root) = &self.local_root {
                let path = root.join(key.as_ref());
                tokio::task::spawn_blocking(move || sync_file_and_dir(&path))
                    .await
                    .map_err(|e| ColdError::Transient(e.to_string()))?
                    .map_err(|e| ColdError::Transient(format!("syncing: {e}")))?;
            }
            Ok(())
        })
        .await
    }

    /// Reads a block's whole object.
    pub async fn get(&self, id: BlockId, cancel: &CancellationToken) -> Result<Bytes, ColdError> {
        let key = self.key(id);
        self.attempt(cancel, || async {
            let got = self.store.get(&key).await.map_err(ColdError::from_store)?;
            got.bytes().await.map_err(ColdError::from_store)
        })
        .await
    }

    /// The size of a block's object; `None` when there is none.
    pub async fn size(
        &self,
        id: BlockId,
        cancel: &CancellationToken,
    ) -> Result<Option<u64>, ColdError> {
        let key = self.key(id);
        let head = self
            .attempt(cancel, || async {
                self.store.head(&key).await.map_err(ColdError::from_store)
            })
            .await;
        match head {
            Ok(meta) => Ok(Some(meta.size)),
            Err(ColdError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a block's object; deleting a missing one succeeds.
    pub async fn delete(&self, id: BlockId, cancel: &CancellationToken) -> Result<(), ColdError> {
        let key = self.key(id);
        let deleted = self
            .attempt(cancel, || async {
                self.store.delete(&key).await.map_err(ColdError::from_store)
            })
            .await;
        match deleted {
            Ok(()) | Err(ColdError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every block key under this backend's prefix.
    #[cfg(test)]
    pub(crate) async fn list_blocks(&self) -> Result<Vec<String>, ColdError> {
        use futures::StreamExt;
        let prefix = ObjectPath::from_iter(
            self.prefix
                .parts()
                .chain(ObjectPath::from("blocks").parts()),
        );
        let mut keys = Vec::new();
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            keys.push(meta.map_err(ColdError::from_store)?.location.to_string());
        }
        keys.sort();
        Ok(keys)
    }
}

fn sync_file_and_dir(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(dir: &std::path::Path) -> ColdStore {
        let spec = pb::ColdBackend {
            url: format!("file://{}", dir.display()),
            ..Default::default()
        };
        ColdStore::open(&spec, &ColdConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn local_backend_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cold = local(dir.path());
        let cancel = CancellationToken::new();
        let id = BlockId {
            slice_id: 0xabc,
            index: 3,
        };
        assert_eq!(cold.size(id, &cancel).await.unwrap(), None);
        assert!(matches!(
            cold.get(id, &cancel).await,
            Err(ColdError::NotFound(_))
        ));
        cold.put(id, Bytes::from_static(b"cold bytes"), &cancel)
            .await
            .unwrap();
        assert_eq!(cold.size(id, &cancel).await.unwrap(), Some(10));
        assert_eq!(&cold.get(id, &cancel).await.unwrap()[..], b"cold bytes");
        let key = format!("blocks/{:02x}/0000000000000abc-3", id.dir());
        assert!(dir.path().join(&key).is_file());
        assert_eq!(cold.list_blocks().await.unwrap(), vec![key]);
        cold.delete(id, &cancel).await.unwrap();
        cold.delete(id, &cancel).await.unwrap();
        assert!(cold.list_blocks().await.unwrap().is_empty());

        cancel.cancel();
        assert!(matches!(
            cold.put(id, Bytes::new(), &cancel).await,
            Err(ColdError::Cancelled)
        ));
    }

    #[test]
    fn keys_are_deterministic_under_the_prefix() {
        let spec = pb::ColdBackend {
            url: "s3://bucket/some/prefix/".into(),
            endpoint: "http://127.0.0.1:1".into(),
            region: "us-east-1".into(),
            path_style: true,
        };
        let config = ColdConfig {
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..ColdConfig::default()
        };
        let cold = ColdStore::open(&spec, &config).unwrap();
        let id = BlockId {
            slice_id: 1,
            index: 0,
        };
        assert_eq!(
            cold.key(id).to_string(),
            format!("some/prefix/blocks/{:02x}/0000000000000001-0", id.dir())
        );
        for bad in ["s3:///x", "file://relative", "gs://b/p", ""] {
            let spec = pb::ColdBackend {
                url: bad.into(),
                ..Default::default()
            };
            assert!(
                matches!(
                    ColdStore::open(&spec, &config),
                    Err(ColdError::Permanent(_))
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_transient_after_retries() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let spec = pb::ColdBackend {
            url: "s3://bucket".into(),
            endpoint: format!("http://{addr}"),
            region: "us-east-1".into(),
            path_style: true,
        };
        let config = ColdConfig {
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            op_timeout_ms: 500,
            retry_deadline_ms: 300,
            ..ColdConfig::default()
        };
        let cold = ColdStore::open(&spec, &config).unwrap();
        let id = BlockId {
            slice_id: 1,
            index: 0,
        };
        let err = cold
            .put(id, Bytes::from_static(b"x"), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ColdError::Transient(_)), "{err}");
    }
}
