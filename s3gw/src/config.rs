//! The gateway's configuration (`cairn s3 --config s3.toml`):
//!
//! ```toml
//! listen = "127.0.0.1:9000"
//! region = "us-east-1"
//! public_buckets = ["datasets"]      # anonymous reads allowed here only
//! max_object_bytes = 5497558138880   # one PUT or part (5 TiB)
//! max_header_bytes = 65536
//! max_concurrent_requests = 512      # more are answered 503 SlowDown
//! access_log = "/var/log/cairn/s3-access.log"
//!
//! [owner]                            # who listings name as owner
//! display_name = "cairn"
//! id = "…"                           # default: hex SHA-256 of display_name
//!
//! [[keys]]
//! access_key = "AKIA..."
//! secret_key = "..."
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use anyhow::Context;
use serde::Deserialize;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessKey {
    pub access_key: String,
    pub secret_key: String,
}

/// The account the gateway serves: every configured key acts for it, so it
/// owns every bucket and object (the namespace records no other owner).
/// ListBuckets and the object listings (v1 always, v2 with `fetch-owner`)
/// name it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Owner {
    /// S3's canonical user id (64 hex digits there; any string here).
    pub id: String,
    pub display_name: String,
}

impl Owner {
    /// The owner called `display_name`, with the id derived from the name.
    pub fn named(display_name: &str) -> Owner {
        use s3s::crypto::Checksum as _;
        let digest = s3s::crypto::Sha256::checksum(display_name.as_bytes());
        Owner {
            id: crate::objmeta::hex(digest.as_ref()),
            display_name: display_name.to_owned(),
        }
    }

    pub fn to_dto(&self) -> s3s::dto::Owner {
        s3s::dto::Owner {
            id: Some(self.id.clone()),
            display_name: Some(self.display_name.clone()),
        }
    }
}

impl Default for Owner {
    fn default() -> Self {
        Owner::named("cairn")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub region: String,
    pub keys: Vec<AccessKey>,
    pub public_buckets: Vec<String>,
    pub max_object_bytes: u64,
    pub max_header_bytes: usize,
    pub max_concurrent_requests: usize,
    pub access_log: Option<PathBuf>,
    pub owner: Owner,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            region: "us-east-1".into(),
            keys: Vec::new(),
            public_buckets: Vec::new(),
            max_object_bytes: 5 << 40,
            max_header_bytes: 64 << 10,
            max_concurrent_requests: 512,
            access_log: None,
            owner: Owner::default(),
        }
    }
}

impl Config {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Refuses a configuration the gateway cannot serve safely.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.keys.is_empty() {
            bail!("no access keys configured: every request would be refused");
        }
        for k in &self.keys {
            if k.access_key.is_empty() || k.secret_key.len() < 8 {
                bail!(
                    "access key {:?}: keys must be non-empty and secrets at least 8 characters",
                    k.access_key
                );
            }
        }
        if self.max_header_bytes < 8192 {
            bail!("max_header_bytes must be at least 8192");
        }
        if self.owner.id.is_empty() || self.owner.display_name.is_empty() {
            bail!("owner.id and owner.display_name must not be empty");
        }
        if self.max_concurrent_requests == 0 {
            bail!("max_concurrent_requests must be at least 1");
        }
        Ok(())
    }
}
