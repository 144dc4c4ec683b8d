//! Configuration of a datad process: one TOML file whose every option has a
//! documented default (see `datad/datad.example.toml`, which a test keeps equal to
//! [`Config::default`]). [`Config::validate`] rejects a config the daemon could not
//! run with before anything is opened or bound.

use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

use crate::error::DataError;

/// Settings of one datad.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Node id of this datad in the cluster map; never 0.
    pub id: u64,
    /// Address the gRPC `Data` service listens on (`ip:port`).
    pub listen: String,
    /// Address other nodes and clients use to reach this one (`host:port`);
    /// `None` means `listen`.
    pub advertise: Option<String>,
    /// Directory holding the block files (`blocks/`) and the RocksDB index (`index/`).
    pub data_dir: PathBuf,
    /// metad addresses to register with and heartbeat to; empty runs the node
    /// standalone (no registration), which only tests and tools should do.
    pub meta: Vec<String>,
    /// Bytes this node may store; 0 means the size of the file system holding
    /// `data_dir` (reported, and enforced by the disk itself: a full disk is ENOSPC).
    pub capacity_bytes: u64,
    /// Period of the heartbeat to metad, in milliseconds.
    pub heartbeat_ms: u64,
    /// Seconds between the starts of two deep scrub passes (every stored
    /// block re-read and its crc32c checked, damaged copies repaired from
    /// another replica); 0: none.
    pub scrub_interval_s: u64,
    /// Seconds between light scrub passes (each local file's presence and
    /// length checked against the index, no data read), in between deep
    /// ones; 0: none. Both 0 turns the scrubber off.
    pub scrub_light_interval_s: u64,
    /// Most bytes per second the scrubber reads, in MB (10^6 bytes).
    pub scrub_rate_mb_s: u64,
    /// Blocks whose file was written less than this many seconds ago wait for
    /// the next pass.
    pub scrub_skip_younger_s: u64,
    /// Seconds between the starts of two orphan passes (blocks no file
    /// refers to are deleted, see `orphans.rs`); 0 turns them off.
    pub orphan_check_interval_s: u64,
    /// Blocks written less than this many seconds ago are never judged
    /// orphans: an upload waits that long for its commit.
    pub orphan_grace_s: u64,
    /// How often, in milliseconds, the chains this node is in are compared
    /// with the versions it synced (see `resync.rs`); a changed chain is
    /// synced then.
    pub resync_check_ms: u64,
    /// Most bytes per second resync copies in from other replicas, in MB.
    pub resync_rate_mb_s: u64,
    /// The cold tier (the backend itself is set cluster-wide in metad).
    pub cold: ColdConfig,
}

/// How this node uses the cluster's cold backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ColdConfig {
    /// S3 credentials; unset: the AWS environment (`AWS_ACCESS_KEY_ID`, …).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Longest one request to the backend may take, in milliseconds.
    pub op_timeout_ms: u64,
    /// How long a failing operation is retried before it fails, in milliseconds.
    pub retry_deadline_ms: u64,
    /// A read of a cold block also brings it back to local disk.
    pub promote_on_read: bool,
    /// Capacity pressure: past this fraction of capacity used, least recently
    /// used unpinned blocks move to the cold tier until `low-water` (0: off).
    pub high_water: f64,
    pub low_water: f64,
    /// How often capacity pressure is checked, in milliseconds.
    pub pressure_check_ms: u64,
}

impl Default for ColdConfig {
    fn default() -> Self {
        ColdConfig {
            access_key_id: None,
            secret_access_key: None,
            op_timeout_ms: 30_000,
            retry_deadline_ms: 60_000,
            promote_on_read: false,
            high_water: 0.0,
            low_water: 0.0,
            pressure_check_ms: 10_000,
        }
    }
}

impl ColdConfig {
    pub fn op_timeout(&self) -> Duration {
        Duration::from_millis(self.op_timeout_ms)
    }

    pub fn retry_deadline(&self) -> Duration {
        Duration::from_millis(self.retry_deadline_ms)
    }

    fn validate(&self) -> Result<(), DataError> {
        let bad = |msg: &str| Err(DataError::Config(format!("cold.{msg}")));
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return bad("access-key-id and secret-access-key go together");
        }
        if self.op_timeout_ms == 0 || self.pressure_check_ms == 0 {
            return bad("op-timeout-ms and pressure-check-ms must be at least 1");
        }
        let fraction = |f: f64| (0.0..=1.0).contains(&f);
        if !fraction(self.high_water) || !fraction(self.low_water) {
            return bad("high-water and low-water are fractions of capacity (0 to 1)");
        }
        if self.high_water > 0.0 && self.low_water >= self.high_water {
            return bad("low-water must be below high-water");
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: 1,
            listen: "127.0.0.1:7100".to_string(),
            advertise: None,
            data_dir: PathBuf::from("./cairn-data/datad"),
            meta: vec!["127.0.0.1:7000".to_string()],
            capacity_bytes: 0,
            heartbeat_ms: 1000,
            scrub_interval_s: 604_800,
            scrub_light_interval_s: 86_400,
            scrub_rate_mb_s: 64,
            scrub_skip_younger_s: 3600,
            orphan_check_interval_s: 21_600,
            orphan_grace_s: 86_400,
            resync_check_ms: 2000,
            resync_rate_mb_s: 200,
            cold: ColdConfig::default(),
        }
    }
}

impl Config {
    /// Reads a config from a TOML file and validates it.
    pub fn load(path: &Path) -> Result<Config, DataError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DataError::Config(format!("reading {}: {e}", path.display())))?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| DataError::Config(format!("parsing {}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every option; the error names the option and what is wrong with it.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |msg: String| Err(DataError::Config(msg));
        if self.id == 0 {
            return bad("id must not be 0".into());
        }
        let listen: SocketAddr = match self.listen.parse() {
            Ok(a) => a,
            Err(_) => {
                return bad(format!(
                    "listen {:?} is not an ip:port address",
                    self.listen
                ))
            }
        };
        match &self.advertise {
            Some(addr) => check_host_port("advertise", addr)?,
            None if listen.ip().is_unspecified() => {
                return bad(format!(
                    "listen {} is a wildcard address: set advertise to an address others can reach",
                    self.listen
                ))
            }
            None => {}
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data-dir must not be empty".into());
        }
        for addr in &self.meta {
            check_host_port("meta", addr)?;
        }
        if self.heartbeat_ms == 0 {
            return bad("heartbeat-ms must be at least 1".into());
        }
        if self.scrub_rate_mb_s == 0 {
            return bad("scrub-rate-mb-s must be at least 1".into());
        }
        if self.resync_check_ms == 0 || self.resync_rate_mb_s == 0 {
            return bad("resync-check-ms and resync-rate-mb-s must be at least 1".into());
        }
        self.cold.validate()
    }

    /// The address given to others: `advertise`, or `listen` when unset.
    pub fn advertise_addr(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// The heartbeat period.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// When orphan passes run, or `None` when they are off.
    pub fn orphans(&self) -> Option<crate::orphans::Pacing> {
        (self.orphan_check_interval_s > 0).then(|| crate::orphans::Pacing {
            interval: Duration::from_secs(self.orphan_check_interval_s),
            grace: Duration::from_secs(self.orphan_grace_s),
        })
    }

    /// The scrubber's pacing, or `None` when it is off.
    pub fn scrub(&self) -> Option<crate::scrub::Pacing> {
        (self.scrub_interval_s > 0 || self.scrub_light_interval_s > 0).then(|| {
            crate::scrub::Pacing {
                interval: Duration::from_secs(self.scrub_interval_s),
                light_interval: Duration::from_secs(self.scrub_light_interval_s),
                bytes_per_s: self.scrub_rate_mb_s.saturating_mul(1_000_000),
                skip_younger: Duration::from_secs(self.scrub_skip_younger_s),
            }
        })
    }
}

/// Accepts `host:port` with an optional `http://` or `https://` scheme.
fn check_host_port(option: &str, addr: &str) -> Result<(), DataError> {
    let rest = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    let ok = match rest.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(DataError::Config(format!(
            "{option} {addr:?} is not a host:port address"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_equals_defaults() {
        let text = include_str!("../datad.example.toml");
        let config: Config = toml::from_str(text).unwrap();
        assert_eq!(config, Config::default());
        config.validate().unwrap();
    }

    #[test]
    fn load_reads_a_file_and_rejects_unknown_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("datad.toml");
        std::fs::write(
            &path,
            "id = 7\nlisten = \"0.0.0.0:7200\"\nadvertise = \"datad7:7200\"\nmeta = []\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.id, 7);
        assert_eq!(config.advertise_addr(), "datad7:7200");
        assert!(config.meta.is_empty());
        assert_eq!(config.heartbeat_ms, 1000);

        std::fs::write(&path, "id = 7\nlisen = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn validate_names_the_bad_option() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    id: 0,
                    ..Config::default()
                },
                "id",
            ),
            (
                Config {
                    listen: "localhost".into(),
                    ..Config::default()
                },
                "listen",
            ),
            (
                Config {
                    listen: "0.0.0.0:7100".into(),
                    ..Config::default()
                },
                "advertise",
            ),
            (
                Config {
                    advertise: Some("nohost".into()),
                    ..Config::default()
                },
                "advertise",
            ),
            (
                Config {
                    meta: vec!["127.0.0.1:0".into()],
                    ..Config::default()
                },
                "meta",
            ),
            (
                Config {
                    heartbeat_ms: 0,
                    ..Config::default()
                },
                "heartbeat-ms",
            ),
            (
                Config {
                    scrub_rate_mb_s: 0,
                    ..Config::default()
                },
                "scrub-rate-mb-s",
            ),
            (
                Config {
                    data_dir: PathBuf::new(),
                    ..Config::default()
                },
                "data-dir",
            ),
            (
                Config {
                    cold: ColdConfig {
                        high_water: 0.5,
                        low_water: 0.6,
                        ..ColdConfig::default()
                    },
                    ..Config::default()
                },
                "low-water",
            ),
        ];
        for (config, option) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(option), "{option}: {err}");
        }
        assert_eq!(Config::default().advertise_addr(), "127.0.0.1:7100");
    }
}
