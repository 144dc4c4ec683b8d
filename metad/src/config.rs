//! Configuration of a metad process (`metad.example.toml` documents every option).

use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use crate::error::MetaError;

/// One metad of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub id: u64,
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// This node's id; unique in the cluster and never reused.
    pub id: u64,
    /// Address the gRPC server binds.
    pub listen: String,
    /// Address other processes use to reach this node (default: `listen`).
    pub advertise: Option<String>,
    /// Where the RocksDB lives.
    pub data_dir: PathBuf,
    /// Every metad of the cluster, this one included (empty: this node alone).
    pub peers: Vec<Peer>,
    /// Number of namespace shards (shard 0, the cluster map, comes on top).
    pub data_shards: u32,
    /// Replicas of every shard (capped at the number of peers).
    pub replication: u32,
    /// Placement groups of the data layout.
    pub placement_groups: u32,
    /// Replicas of every data block (capped at the number of live data nodes).
    pub data_replication: u32,
    /// Largest block of file data, in bytes.
    pub block_size: u32,
    /// A data node this long without a heartbeat leaves the placement chains.
    pub data_node_timeout_ms: u64,
    /// A chain member that left for lack of heartbeats is replaced only this
    /// long after; back sooner, it rejoins its chains and syncs. 0: at once.
    pub replace_after_ms: u64,
    /// A cross-shard transaction in flight this long is finished or rolled back
    /// by its coordinator shard's leader.
    pub txn_recover_after_ms: u64,
    /// How long a client's open files stay referenced without a renewal.
    pub session_lease_ms: u64,
    /// How long a freed slice waits before its blocks are deleted, so a
    /// reader still holding the old layout (another mount's open file)
    /// finishes reading it.
    pub gc_delay_ms: u64,
    /// Raft heartbeat interval.
    pub heartbeat_ms: u64,
    /// Raft election timeout (a random value in [min, 2 * min)).
    pub election_timeout_ms: u64,
    /// A shard builds a snapshot after this many log entries since its last.
    pub snapshot_after_logs: u64,
    /// Log entries kept behind a snapshot; a follower further behind catches
    /// up by receiving the snapshot.
    pub logs_kept_after_snapshot: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: 1,
            listen: "127.0.0.1:7000".into(),
            advertise: None,
            data_dir: PathBuf::from("./cairn-data/metad"),
            peers: Vec::new(),
            data_shards: 4,
            replication: 3,
            placement_groups: 64,
            data_replication: 3,
            block_size: 4 << 20,
            data_node_timeout_ms: 10_000,
            replace_after_ms: 600_000,
            txn_recover_after_ms: 5_000,
            session_lease_ms: 30_000,
            gc_delay_ms: 60_000,
            heartbeat_ms: 100,
            election_timeout_ms: 600,
            snapshot_after_logs: 5000,
            logs_kept_after_snapshot: 1000,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, MetaError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| MetaError::Config(format!("{}: {e}", path.display())))?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| MetaError::Config(format!("{}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), MetaError> {
        let bad = |m: &str| Err(MetaError::Config(m.to_string()));
        if self.id == 0 {
            return bad("id must be at least 1");
        }
        if self.data_shards == 0 || self.data_shards > 1 << 20 {
            return bad("data-shards must be between 1 and 2^20");
        }
        if self.replication == 0 || self.data_replication == 0 {
            return bad("replication and data-replication must be at least 1");
        }
        if self.placement_groups == 0 {
            return bad("placement-groups must be at least 1");
        }
        if self.block_size == 0 || self.block_size as usize > cairn_proto::ids::MAX_BLOCK_SIZE {
            return bad("block-size must be between 1 and 4 MiB");
        }
        if self.data_node_timeout_ms < 500 || self.data_node_timeout_ms > i64::MAX as u64 {
            return bad("data-node-timeout-ms must be at least 500");
        }
        if self.replace_after_ms > i64::MAX as u64 {
            return bad("replace-after-ms is too large");
        }
        if self.txn_recover_after_ms < 100 || self.txn_recover_after_ms > i64::MAX as u64 {
            return bad("txn-recover-after-ms must be at least 100");
        }
        if self.session_lease_ms < 1000 || self.session_lease_ms > i64::MAX as u64 {
            return bad("session-lease-ms must be at least 1000");
        }
        if self.gc_delay_ms > i64::MAX as u64 {
            return bad("gc-delay-ms is too large");
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms < 3 * self.heartbeat_ms {
            return bad("election-timeout-ms must be at least 3 heartbeats");
        }
        if self.snapshot_after_logs == 0 {
            return bad("snapshot-after-logs must be at least 1");
        }
        if !self.peers.is_empty() && !self.peers.iter().any(|p| p.id == self.id) {
            return bad("peers must include this node's id");
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.peers.len() {
            return bad("peer ids must be unique");
        }
        Ok(())
    }

    pub fn advertise(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.clone())
    }

    /// Every metad of the cluster, sorted by id.
    pub fn members(&self) -> Vec<Peer> {
        let mut peers = if self.peers.is_empty() {
            vec![Peer {
                id: self.id,
                addr: self.advertise(),
            }]
        } else {
            self.peers.clone()
        };
        peers.sort_by_key(|p| p.id);
        peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_the_default() {
        let text = include_str!("../metad.example.toml");
        let parsed: Config = toml::from_str(text).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn rejects_bad_values() {
        let c = Config {
            peers: vec![Peer {
                id: 2,
                addr: "x:1".into(),
            }],
            ..Config::default()
        };
        assert!(c.validate().is_err());
        assert!(toml::from_str::<Config>("no-such-option = 1").is_err());
    }
}
