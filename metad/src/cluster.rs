//! The cluster map kept by shard 0: data nodes with their capacity and last
//! heartbeat, placement groups mapping to ordered datad replica chains, and the
//! slice-id allocator.
//!
//! Chains are stable: when the set of live data nodes changes, a chain keeps its
//! live members in order and is topped up with other live nodes, and its version
//! goes up so data servers fence writers holding the old chain.

use serde::Deserialize;
use serde::Serialize;

use crate::error::MetaError;
use crate::fs::Reply;
use crate::keys;
use crate::kv::Txn;

/// Default time without a heartbeat after which a data node leaves the chains.
pub const DEFAULT_DEAD_AFTER_MS: i64 = 10_000;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DataNode {
    pub id: u64,
    pub addr: String,
    pub capacity: u64,
    pub used: u64,
    pub blocks: u64,
    pub last_heartbeat_ms: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Group {
    pub chain: Vec<u64>,
    pub version: u64,
}

/// Cluster-wide data layout, fixed when the cluster is first initialized.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Layout {
    pub groups: u32,
    pub replication: u32,
    pub block_size: u32,
    /// A data node this long without a heartbeat is out of the chains.
    pub dead_after_ms: i64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum MapCommand {
    /// Sets the layout once; later calls keep the first one.
    Init(Layout),
    /// A data node's heartbeat (registers it on first contact).
    Heartbeat { node: DataNode, now_ms: i64 },
    /// Re-evaluates which data nodes are alive and rebuilds chains that changed.
    CheckLiveness { now_ms: i64 },
    /// Hands out `count` slice ids.
    AllocSliceIds { count: u32 },
}

pub fn layout(txn: &Txn) -> Result<Option<Layout>, MetaError> {
    txn.get_as(keys::LAYOUT)
}

pub fn data_nodes(txn: &Txn) -> Result<Vec<DataNode>, MetaError> {
    txn.scan(&[keys::DATA_NODE], b"", usize::MAX)?
        .into_iter()
        .map(|(_, v)| crate::kv::decode(&v))
        .collect()
}

pub fn groups(txn: &Txn) -> Result<Vec<(u32, Group)>, MetaError> {
    let mut out = Vec::new();
    for (k, v) in txn.scan(&[keys::GROUP], b"", usize::MAX)? {
        let id = u32::from_be_bytes(
            k[1..5]
                .try_into()
                .map_err(|_| MetaError::Storage("malformed group key".into()))?,
        );
        out.push((id, crate::kv::decode(&v)?));
    }
    Ok(out)
}

pub fn is_alive(node: &DataNode, now_ms: i64, dead_after_ms: i64) -> bool {
    now_ms - node.last_heartbeat_ms < dead_after_ms
}

fn dead_after(txn: &Txn) -> Result<i64, MetaError> {
    Ok(layout(txn)?.map_or(DEFAULT_DEAD_AFTER_MS, |l| l.dead_after_ms))
}

pub fn apply(txn: &mut Txn, cmd: &MapCommand) -> Result<Reply, MetaError> {
    match cmd {
        MapCommand::Init(layout) => {
            if self::layout(txn)?.is_none() {
                txn.put_as(keys::LAYOUT.to_vec(), layout)?;
            }
            Ok(Reply::None)
        }
        MapCommand::Heartbeat { node, now_ms } => {
            let known: Option<DataNode> = txn.get_as(&keys::data_node(node.id))?;
            let dead_after = dead_after(txn)?;
            let rebuild = match &known {
                None => true,
                Some(old) => old.addr != node.addr || !is_alive(old, *now_ms, dead_after),
            };
            let mut node = node.clone();
            node.last_heartbeat_ms = *now_ms;
            txn.put_as(keys::data_node(node.id), &node)?;
            if rebuild {
                rebuild_chains(txn, *now_ms)?;
            }
            Ok(Reply::None)
        }
        MapCommand::CheckLiveness { now_ms } => {
            rebuild_chains(txn, *now_ms)?;
            Ok(Reply::None)
        }
        MapCommand::AllocSliceIds { count } => {
            let first: u64 = txn.get_as(keys::NEXT_SLICE)?.unwrap_or(1);
            txn.put_as(keys::NEXT_SLICE.to_vec(), &(first + u64::from(*count)))?;
            Ok(Reply::SliceIds {
                first,
                count: *count,
            })
        }
    }
}

/// Recomputes every chain from the live data nodes; a chain whose members change
/// gets a new version.
fn rebuild_chains(txn: &mut Txn, now_ms: i64) -> Result<(), MetaError> {
    let Some(layout) = layout(txn)? else {
        return Ok(());
    };
    let mut live: Vec<u64> = data_nodes(txn)?
        .iter()
        .filter(|n| is_alive(n, now_ms, layout.dead_after_ms))
        .map(|n| n.id)
        .collect();
    live.sort_unstable();
    if live.is_empty() {
        return Ok(());
    }
    let want = (layout.replication as usize).min(live.len());
    for g in 0..layout.groups {
        // The group's preferred order: live nodes rotated by the group id, so
        // chain heads (and load) spread over the nodes.
        let start = g as usize % live.len();
        let preferred: Vec<u64> = (0..live.len())
            .map(|k| live[(start + k) % live.len()])
            .collect();
        let old: Option<Group> = txn.get_as(&keys::group(g))?;
        // Members stay members while alive (their blocks stay reachable); only
        // missing replicas are filled, in preferred order.
        let mut members: Vec<u64> = old
            .as_ref()
            .map(|o| {
                o.chain
                    .iter()
                    .copied()
                    .filter(|id| live.contains(id))
                    .collect()
            })
            .unwrap_or_default();
        for candidate in &preferred {
            if members.len() >= want {
                break;
            }
            if !members.contains(candidate) {
                members.push(*candidate);
            }
        }
        let mut chain = members;
        chain.sort_by_key(|id| preferred.iter().position(|p| p == id));
        if old.as_ref().map(|o| &o.chain) != Some(&chain) {
            let version = old.map(|o| o.version + 1).unwrap_or(1);
            txn.put_as(keys::group(g), &Group { chain, version })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::open_db;

    fn run(db: &rocksdb::DB, cmd: MapCommand) -> Reply {
        let mut txn = Txn::new(db, 0);
        let r = apply(&mut txn, &cmd).unwrap();
        db.write(txn.into_batch().unwrap()).unwrap();
        r
    }

    fn beat(db: &rocksdb::DB, id: u64, now_ms: i64) {
        let node = DataNode {
            id,
            addr: format!("127.0.0.1:{id}"),
            capacity: 100,
            used: 0,
            blocks: 0,
            last_heartbeat_ms: 0,
        };
        run(db, MapCommand::Heartbeat { node, now_ms });
    }

    #[test]
    fn chains_follow_live_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(
            &db,
            MapCommand::Init(Layout {
                groups: 6,
                replication: 3,
                block_size: 4 << 20,
                dead_after_ms: DEFAULT_DEAD_AFTER_MS,
            }),
        );
        for id in 1..=3 {
            beat(&db, id, 1000);
        }
        let gs = groups(&Txn::new(&db, 0)).unwrap();
        assert_eq!(gs.len(), 6);
        assert!(gs.iter().all(|(_, g)| g.chain.len() == 3));
        let heads: std::collections::HashSet<u64> = gs.iter().map(|(_, g)| g.chain[0]).collect();
        assert_eq!(heads.len(), 3, "heads spread over nodes");
        // Node 2 stops beating: chains drop it, keep order, bump versions.
        beat(&db, 1, 1000 + DEFAULT_DEAD_AFTER_MS - 1);
        beat(&db, 3, 1000 + DEFAULT_DEAD_AFTER_MS - 1);
        run(
            &db,
            MapCommand::CheckLiveness {
                now_ms: 1000 + DEFAULT_DEAD_AFTER_MS,
            },
        );
        let after = groups(&Txn::new(&db, 0)).unwrap();
        for ((_, before), (_, now)) in gs.iter().zip(&after) {
            let mut expect: Vec<u64> = before.chain.iter().copied().filter(|&n| n != 2).collect();
            let mut got = now.chain.clone();
            expect.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, expect, "survivors stay members");
            assert_eq!(now.version, before.version + 1);
        }
        assert_eq!(
            run(&db, MapCommand::AllocSliceIds { count: 10 }),
            Reply::SliceIds {
                first: 1,
                count: 10
            }
        );
        assert_eq!(
            run(&db, MapCommand::AllocSliceIds { count: 5 }),
            Reply::SliceIds {
                first: 11,
                count: 5
            }
        );
    }
}
