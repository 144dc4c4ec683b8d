//! The cluster map kept by shard 0: data nodes with their capacity and last
//! heartbeat, placement groups mapping to ordered datad replica chains, and the
//! slice-id allocator.
//!
//! Chains are stable: when the set of live data nodes changes, a chain keeps its
//! live members in order and is topped up with other active live nodes, and its
//! version goes up so data servers fence writers holding the old chain.
//!
//! Replica states, per group: a member that joined a chain that already had
//! members is *syncing* (at the chain's tail, written to, read from last) until
//! it reports, in a heartbeat, that it copied in the group's older blocks at the
//! current version ([`MapCommand::Synced`]); then it *serves*. An operator's
//! node states: a *draining* node takes no new memberships and leaves each
//! chain once `replication` active members serve it (so redundancy never drops
//! below target while it empties); a *removed* node (allowed only once it is in
//! no chain) is out of the map and its heartbeats are refused.
//!
//! Rebalancing ([`rebalance`], at each liveness check): while every chain is
//! whole and settled, a group of the node in the most chains moves to the node
//! in the fewest (a syncing newcomer, the old member *leaving* once it
//! serves), one group at a time, until memberships differ by at most one.

use cairn_proto::pb;
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

/// What an operator wants of a data node (stored apart from [`DataNode`], whose
/// encoding old logs hold).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum NodeState {
    #[default]
    Active,
    Draining,
    Removed,
}

/// The states of a group's members that are not plain serving.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ReplicaStates {
    /// Members still copying in the group's older blocks (at the chain's tail).
    pub syncing: Vec<u64>,
    /// Members that leave once `replication` others serve (a rebalancing move).
    pub leaving: Vec<u64>,
    /// Former members out of the write path (no heartbeat) since a time (ms),
    /// holding their place until `replace-after-ms`: back sooner, they rejoin
    /// syncing; later, another node takes the place.
    pub absent: Vec<(u64, i64)>,
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
    /// An operator sets a data node's state (see the module doc).
    SetNodeState {
        id: u64,
        state: NodeState,
        now_ms: i64,
    },
    /// Data node `node` copied in these groups at these chain versions.
    Synced {
        node: u64,
        groups: Vec<(u32, u64)>,
        now_ms: i64,
    },
    /// [`MapCommand::CheckLiveness`], with how long a member that left waits
    /// before it is replaced (kept for later rebuilds).
    Liveness { now_ms: i64, replace_after_ms: i64 },
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

pub fn node_state(txn: &Txn, id: u64) -> Result<NodeState, MetaError> {
    Ok(txn.get_as(&keys::node_state(id))?.unwrap_or_default())
}

/// The replica states of group `g`'s members.
pub fn states(txn: &Txn, g: u32) -> Result<ReplicaStates, MetaError> {
    Ok(txn.get_as(&keys::group_states(g))?.unwrap_or_default())
}

impl NodeState {
    pub fn to_pb(self) -> pb::DataNodeState {
        match self {
            NodeState::Active => pb::DataNodeState::DataNodeActive,
            NodeState::Draining => pb::DataNodeState::DataNodeDraining,
            NodeState::Removed => pb::DataNodeState::DataNodeRemoved,
        }
    }

    pub fn from_pb(state: pb::DataNodeState) -> NodeState {
        match state {
            pb::DataNodeState::DataNodeActive => NodeState::Active,
            pb::DataNodeState::DataNodeDraining => NodeState::Draining,
            pb::DataNodeState::DataNodeRemoved => NodeState::Removed,
        }
    }
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
            if node_state(txn, node.id)? == NodeState::Removed {
                return Err(MetaError::Invalid(format!(
                    "data node {} was removed from the cluster",
                    node.id
                )));
            }
            let known: Option<DataNode> = txn.get_as(&keys::data_node(node.id))?;
            let dead_after = dead_after(txn)?;
            let rebuild = match &known {
                None => true,
                Some(old) => old.addr != node.addr || !is_alive(old, *now_ms, dead_after),
            };
            let mut node = node.clone();
            node.last_heartbeat_ms = *now_ms;
            txn.put_as(keys::data_node(node.id), &node)?;
            // The first chains wait for the next liveness check, so the data
            // nodes of a starting cluster, registering one after the other,
            // all get their share at once instead of by rebalancing.
            if rebuild && !groups(txn)?.is_empty() {
                rebuild_chains(txn, *now_ms)?;
            }
            Ok(Reply::None)
        }
        MapCommand::CheckLiveness { now_ms } => {
            rebuild_chains(txn, *now_ms)?;
            rebalance(txn, *now_ms)?;
            Ok(Reply::None)
        }
        MapCommand::Liveness {
            now_ms,
            replace_after_ms,
        } => {
            txn.put_as(keys::REPLACE_AFTER.to_vec(), replace_after_ms)?;
            rebuild_chains(txn, *now_ms)?;
            rebalance(txn, *now_ms)?;
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
        MapCommand::SetNodeState { id, state, now_ms } => {
            set_node_state(txn, *id, *state)?;
            rebuild_chains(txn, *now_ms)?;
            Ok(Reply::None)
        }
        MapCommand::Synced {
            node,
            groups,
            now_ms,
        } => {
            for (g, version) in groups {
                let current: Option<Group> = txn.get_as(&keys::group(*g))?;
                let mut states = states(txn, *g)?;
                let Some(current) = current else { continue };
                if current.version == *version
                    && states.syncing.contains(node)
                    && !waiting(txn, &current, &states, *now_ms)?
                {
                    states.syncing.retain(|n| n != node);
                    put_states(txn, *g, &states)?;
                    // A changed replica state is a new chain version.
                    bump(txn, *g)?;
                }
            }
            rebuild_chains(txn, *now_ms)?;
            Ok(Reply::None)
        }
    }
}

fn set_node_state(txn: &mut Txn, id: u64, state: NodeState) -> Result<(), MetaError> {
    if txn.get_as::<DataNode>(&keys::data_node(id))?.is_none() {
        return Err(MetaError::Fs(crate::types::Errno::new(
            cairn_proto::status::ENOENT,
            format!("no data node {id}"),
        )));
    }
    if state == NodeState::Removed {
        let member_of = groups(txn)?
            .into_iter()
            .filter(|(_, g)| g.chain.contains(&id))
            .count();
        if member_of > 0 {
            return Err(MetaError::Invalid(format!(
                "data node {id} is still in {member_of} chains: drain it first"
            )));
        }
        txn.delete(keys::data_node(id));
    }
    txn.put_as(keys::node_state(id), &state)
}

fn put_states(txn: &mut Txn, g: u32, states: &ReplicaStates) -> Result<(), MetaError> {
    if *states == ReplicaStates::default() {
        txn.delete(keys::group_states(g));
        Ok(())
    } else {
        txn.put_as(keys::group_states(g), states)
    }
}

fn bump(txn: &mut Txn, g: u32) -> Result<(), MetaError> {
    if let Some(mut group) = txn.get_as::<Group>(&keys::group(g))? {
        group.version += 1;
        txn.put_as(keys::group(g), &group)?;
    }
    Ok(())
}

/// The members of `group` that serve (not syncing).
fn serving<'a>(group: &'a Group, states: &'a ReplicaStates) -> impl Iterator<Item = u64> + 'a {
    group
        .chain
        .iter()
        .copied()
        .filter(|id| !states.syncing.contains(id))
}

/// Whether `group` waits for a serving member: it has some, and none is live.
fn waiting(
    txn: &Txn,
    group: &Group,
    states: &ReplicaStates,
    now_ms: i64,
) -> Result<bool, MetaError> {
    let dead_after = dead_after(txn)?;
    let mut any = false;
    for id in serving(group, states) {
        any = true;
        let node: Option<DataNode> = txn.get_as(&keys::data_node(id))?;
        if node.is_some_and(|n| is_alive(&n, now_ms, dead_after)) {
            return Ok(false);
        }
    }
    Ok(any)
}

/// The live data nodes (removed ones aside) with their states, by id.
fn live_nodes(txn: &Txn, layout: &Layout, now_ms: i64) -> Result<Vec<(u64, NodeState)>, MetaError> {
    let mut live = Vec::new();
    for n in data_nodes(txn)? {
        let state = node_state(txn, n.id)?;
        if is_alive(&n, now_ms, layout.dead_after_ms) && state != NodeState::Removed {
            live.push((n.id, state));
        }
    }
    live.sort_unstable();
    Ok(live)
}

/// Recomputes every chain from the live data nodes and their states; a chain
/// whose members or replica states change gets a new version.
fn rebuild_chains(txn: &mut Txn, now_ms: i64) -> Result<(), MetaError> {
    let Some(layout) = layout(txn)? else {
        return Ok(());
    };
    let live = live_nodes(txn, &layout, now_ms)?;
    if live.is_empty() {
        return Ok(());
    }
    let active = |id: &u64| live.contains(&(*id, NodeState::Active));
    let is_live = |id: &u64| live.iter().any(|(l, _)| l == id);
    let replace_after: i64 = txn.get_as(keys::REPLACE_AFTER)?.unwrap_or(0);
    // Nodes that may hold an absent member's place: active, only not heard from.
    let mut resting = Vec::new();
    for n in data_nodes(txn)? {
        if node_state(txn, n.id)? == NodeState::Active && !active(&n.id) {
            resting.push(n.id);
        }
    }
    let active_count = live.iter().filter(|(id, _)| active(id)).count();
    let want = (layout.replication as usize).min(active_count + resting.len());
    for g in 0..layout.groups {
        // The group's preferred order: live nodes rotated by the group id, so
        // chain heads (and load) spread over the nodes.
        let start = g as usize % live.len();
        let preferred: Vec<u64> = (0..live.len())
            .map(|k| live[(start + k) % live.len()].0)
            .collect();
        let old: Option<Group> = txn.get_as(&keys::group(g))?;
        let old_states = states(txn, g)?;
        // Every member that served is silent: the chain waits for one of
        // them as it is (writes fail, no one is promoted), since the others
        // may lack what only they hold.
        if let Some(o) = &old {
            let mut serving = serving(o, &old_states).peekable();
            if serving.peek().is_some() && !serving.any(|id| is_live(&id)) {
                continue;
            }
        }
        // Members stay members while alive (their blocks stay reachable).
        let mut members: Vec<u64> = old
            .as_ref()
            .map(|o| o.chain.iter().copied().filter(is_live).collect())
            .unwrap_or_default();
        let mut states = old_states.clone();
        // Members gone silent keep their place for `replace_after`; an absent
        // one heard from again rejoins, syncing what it missed.
        for id in old.iter().flat_map(|o| &o.chain) {
            if !members.contains(id) && replace_after > 0 && resting.contains(id) {
                states.absent.push((*id, now_ms));
            }
        }
        states.absent.retain(|(id, since)| {
            let back = active(id) && !members.contains(id);
            if back {
                members.push(*id);
                states.syncing.push(*id);
            }
            !back && resting.contains(id) && now_ms - since < replace_after
        });
        states.syncing.retain(|id| members.contains(id));
        states.leaving.retain(|id| members.contains(id));
        // Members that stay: active and not moving away.
        let stays = |id: &u64, s: &ReplicaStates| active(id) && !s.leaving.contains(id);
        // Missing staying replicas are filled in preferred order. A chain that
        // kept no member has nothing to copy from: its new members serve at once.
        let had_members = !members.is_empty();
        for candidate in preferred.iter().filter(|id| active(id)) {
            let held = members.iter().filter(|id| stays(id, &states)).count() + states.absent.len();
            if held >= want {
                break;
            }
            if !members.contains(candidate) {
                members.push(*candidate);
                if had_members {
                    states.syncing.push(*candidate);
                }
            }
        }
        // Once `want` staying members serve, the rest go: draining and
        // leaving members, and any beyond `want` (a drain undone, a member
        // back after its replacement came), last in preferred order first.
        // With no active node to go to (every one draining), all stay.
        let mut serving: Vec<u64> = members
            .iter()
            .copied()
            .filter(|id| stays(id, &states) && !states.syncing.contains(id))
            .collect();
        if want > 0 && serving.len() >= want {
            serving.sort_by_key(|id| preferred.iter().position(|p| p == id));
            serving.truncate(want);
            members.retain(|id| serving.contains(id));
            states.syncing.clear();
            states.leaving.clear();
        }
        // Serving members in preferred order, then syncing ones in the order
        // they joined.
        let mut chain = members;
        chain.sort_by_key(|id| {
            (
                states.syncing.iter().position(|s| s == id),
                preferred.iter().position(|p| p == id),
            )
        });
        if old.as_ref().map(|o| &o.chain) != Some(&chain) || old_states != states {
            let version = old.map(|o| o.version + 1).unwrap_or(1);
            txn.put_as(keys::group(g), &Group { chain, version })?;
            put_states(txn, g, &states)?;
        }
    }
    Ok(())
}

/// One rebalancing move, only while every chain is whole and settled: when
/// the active live nodes' chain memberships differ by two or more, one group of
/// the busiest node gets the idlest as a syncing member and the busiest as
/// leaving; the move finishes when the newcomer serves (see `Synced`). One
/// group at a time bounds the data in motion.
fn rebalance(txn: &mut Txn, now_ms: i64) -> Result<(), MetaError> {
    let Some(layout) = layout(txn)? else {
        return Ok(());
    };
    let active: Vec<u64> = live_nodes(txn, &layout, now_ms)?
        .into_iter()
        .filter(|(_, s)| *s == NodeState::Active)
        .map(|(id, _)| id)
        .collect();
    let want = (layout.replication as usize).min(active.len());
    let all = groups(txn)?;
    let mut load: Vec<(usize, u64)> = active.iter().map(|id| (0, *id)).collect();
    for (g, group) in &all {
        let settled = states(txn, *g)? == ReplicaStates::default();
        if !settled
            || group.chain.len() != want
            || !group.chain.iter().all(|id| active.contains(id))
        {
            return Ok(());
        }
        for entry in load.iter_mut().filter(|(_, id)| group.chain.contains(id)) {
            entry.0 += 1;
        }
    }
    load.sort_unstable();
    let (Some(&(least, idle)), Some(&(most, busy))) = (load.first(), load.last()) else {
        return Ok(());
    };
    if most < least + 2 {
        return Ok(());
    }
    let Some((g, mut group)) = all
        .into_iter()
        .find(|(_, group)| group.chain.contains(&busy) && !group.chain.contains(&idle))
    else {
        return Ok(());
    };
    group.chain.push(idle);
    group.version += 1;
    txn.put_as(keys::group(g), &group)?;
    let states = ReplicaStates {
        syncing: vec![idle],
        leaving: vec![busy],
        ..ReplicaStates::default()
    };
    put_states(txn, g, &states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::open_db;

    /// A store with shard 0's layout set: `groups` groups, `replication` replicas.
    fn laid_out(groups: u32, replication: u32) -> (tempfile::TempDir, std::sync::Arc<rocksdb::DB>) {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let layout = Layout {
            groups,
            replication,
            block_size: 4 << 20,
            dead_after_ms: DEFAULT_DEAD_AFTER_MS,
        };
        run(&db, MapCommand::Init(layout));
        (dir, db)
    }

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
        let (_dir, db) = laid_out(6, 3);
        for id in 1..=3 {
            beat(&db, id, 1000);
        }
        run(&db, MapCommand::CheckLiveness { now_ms: 1000 });
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

    fn try_run(db: &rocksdb::DB, cmd: MapCommand) -> Result<Reply, MetaError> {
        let mut txn = Txn::new(db, 0);
        let r = apply(&mut txn, &cmd)?;
        db.write(txn.into_batch().unwrap()).unwrap();
        Ok(r)
    }

    fn chains(db: &rocksdb::DB) -> Vec<(u32, Group, Vec<u64>)> {
        let txn = Txn::new(db, 0);
        groups(&txn)
            .unwrap()
            .into_iter()
            .map(|(id, g)| (id, g, states(&txn, id).unwrap().syncing))
            .collect()
    }

    /// Every syncing member reports its group in sync.
    fn settle(db: &rocksdb::DB, now_ms: i64) {
        for (id, _, s) in chains(db) {
            for node in s {
                let version = chains(db)[id as usize].1.version;
                let groups = vec![(id, version)];
                run(
                    db,
                    MapCommand::Synced {
                        node,
                        groups,
                        now_ms,
                    },
                );
            }
        }
    }

    #[test]
    fn new_members_sync_before_serving_and_a_draining_node_leaves_only_then() {
        let (_dir, db) = laid_out(6, 3);
        for id in 1..=4 {
            beat(&db, id, 1000);
        }
        run(&db, MapCommand::CheckLiveness { now_ms: 1000 });
        settle(&db, 1000);
        let start = chains(&db);
        assert!(start
            .iter()
            .all(|(_, g, s)| g.chain.len() == 3 && s.is_empty()));
        let held_by_1: Vec<u32> = start
            .iter()
            .filter(|(_, g, _)| g.chain.contains(&1))
            .map(|(id, _, _)| *id)
            .collect();
        assert!(!held_by_1.is_empty());

        let now_ms = 1000;
        let drain = |state| MapCommand::SetNodeState {
            id: 1,
            state,
            now_ms,
        };
        run(&db, drain(NodeState::Draining));
        let draining = chains(&db);
        for (id, g, s) in &draining {
            let before = &start[*id as usize].1;
            if held_by_1.contains(id) {
                // Node 1 stays until its replacement serves: 4 members, one syncing at the tail.
                assert_eq!(g.chain.len(), 4, "group {id}: {g:?}");
                assert!(g.chain.contains(&1));
                assert_eq!(s.len(), 1);
                assert_eq!(g.chain.last(), s.first());
                assert_eq!(g.version, before.version + 1);
            } else {
                assert_eq!((g, s.is_empty()), (before, true), "group {id} untouched");
            }
        }
        let err = try_run(&db, drain(NodeState::Removed)).unwrap_err();
        assert!(err.to_string().contains("drain it first"), "{err}");

        // A report at an old version changes nothing; at the current one the
        // new member serves and node 1 leaves.
        let (g0, group0, syncing0) = draining
            .iter()
            .find(|(id, _, _)| held_by_1.contains(id))
            .cloned()
            .unwrap();
        let new = syncing0[0];
        let synced = |version| MapCommand::Synced {
            node: new,
            groups: vec![(g0, version)],
            now_ms,
        };
        run(&db, synced(group0.version - 1));
        assert_eq!(chains(&db)[g0 as usize].1, group0);
        run(&db, synced(group0.version));
        let (_, after, s) = &chains(&db)[g0 as usize];
        assert!(s.is_empty());
        assert_eq!(after.chain.len(), 3);
        assert!(!after.chain.contains(&1) && after.chain.contains(&new));
        assert!(after.version > group0.version);

        // Every other group too; then node 1 is in no chain and can go.
        settle(&db, now_ms);
        assert!(chains(&db)
            .iter()
            .all(|(_, g, s)| !g.chain.contains(&1) && s.is_empty()));
        run(&db, drain(NodeState::Removed));
        assert!(data_nodes(&Txn::new(&db, 0))
            .unwrap()
            .iter()
            .all(|n| n.id != 1));
        let node = DataNode {
            id: 1,
            addr: "127.0.0.1:1".into(),
            capacity: 100,
            used: 0,
            blocks: 0,
            last_heartbeat_ms: 0,
        };
        let err = try_run(&db, MapCommand::Heartbeat { node, now_ms }).unwrap_err();
        assert!(err.to_string().contains("removed"), "{err}");
    }

    #[test]
    fn a_dead_members_replacement_syncs_and_a_new_chain_serves_at_once() {
        let (_dir, db) = laid_out(4, 2);
        // The first chains wait for a liveness check; then they have no
        // earlier members, so nothing to sync from.
        beat(&db, 1, 1000);
        assert!(chains(&db).is_empty());
        run(&db, MapCommand::CheckLiveness { now_ms: 1000 });
        assert!(chains(&db)
            .iter()
            .all(|(_, g, s)| g.chain == [1] && s.is_empty()));
        // A node joining chains that have members syncs into them.
        beat(&db, 2, 1000);
        assert!(chains(&db).iter().all(|(_, _, s)| s == &[2]));
        settle(&db, 1000);
        assert!(chains(&db)
            .iter()
            .all(|(_, g, s)| g.chain.len() == 2 && s.is_empty()));
        beat(&db, 3, 1000);
        // Node 2 dies: node 3 replaces it, syncing from node 1.
        let later = 1000 + DEFAULT_DEAD_AFTER_MS;
        beat(&db, 1, later);
        beat(&db, 3, later);
        run(&db, MapCommand::CheckLiveness { now_ms: later });
        for (id, g, s) in chains(&db) {
            assert_eq!(g.chain, vec![1, 3], "group {id}");
            assert_eq!(s, vec![3], "group {id}");
        }
    }

    #[test]
    fn a_new_node_takes_groups_one_move_at_a_time_until_even() {
        let (_dir, db) = laid_out(8, 2);
        for id in 1..=3 {
            beat(&db, id, 1000);
        }
        run(&db, MapCommand::CheckLiveness { now_ms: 1000 });
        beat(&db, 4, 1000);
        let memberships = |db: &rocksdb::DB| -> Vec<usize> {
            (1..=4)
                .map(|id| {
                    chains(db)
                        .iter()
                        .filter(|(_, g, _)| g.chain.contains(&id))
                        .count()
                })
                .collect()
        };
        assert_eq!(memberships(&db)[3], 0, "no vacancy for node 4 yet");
        let check = MapCommand::CheckLiveness { now_ms: 1000 };
        for _ in 0..16 {
            run(&db, check.clone());
            let moving: Vec<_> = chains(&db)
                .into_iter()
                .filter(|(_, _, s)| !s.is_empty())
                .collect();
            if moving.is_empty() {
                break;
            }
            // One move at a time, and no member leaves before the newcomer serves.
            assert_eq!(moving.len(), 1, "{moving:?}");
            assert_eq!(moving[0].1.chain.len(), 3);
            run(&db, check.clone());
            assert_eq!(
                chains(&db).iter().filter(|(_, _, s)| !s.is_empty()).count(),
                1
            );
            settle(&db, 1000);
            assert!(chains(&db).iter().all(|(_, g, _)| g.chain.len() == 2));
        }
        assert_eq!(memberships(&db), vec![4, 4, 4, 4]);
    }

    #[test]
    fn a_silent_member_keeps_its_place_until_replace_after() {
        let (_dir, db) = laid_out(4, 2);
        for id in 1..=3 {
            beat(&db, id, 1000);
        }
        run(&db, MapCommand::CheckLiveness { now_ms: 1000 });
        let start = chains(&db);
        let liveness = |now_ms| MapCommand::Liveness {
            now_ms,
            replace_after_ms: 60_000,
        };
        // Node 1 goes silent: out of its chains, but no one takes its place.
        let t1 = 1000 + DEFAULT_DEAD_AFTER_MS;
        beat(&db, 2, t1 - 1);
        beat(&db, 3, t1 - 1);
        run(&db, liveness(t1));
        for ((id, g, s), (_, was, _)) in chains(&db).iter().zip(&start) {
            let mut expect: Vec<u64> = was.chain.iter().copied().filter(|n| *n != 1).collect();
            let mut got = g.chain.clone();
            expect.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, expect, "group {id}");
            assert!(s.is_empty());
        }
        // Back within the delay: it rejoins the same chains, syncing.
        beat(&db, 2, t1 + 1000);
        beat(&db, 3, t1 + 1000);
        beat(&db, 1, t1 + 1000);
        for ((id, g, s), (_, was, _)) in chains(&db).iter().zip(&start) {
            assert_eq!(g.chain.contains(&1), was.chain.contains(&1), "group {id}");
            assert_eq!(s.contains(&1), was.chain.contains(&1), "group {id}");
        }
        settle(&db, t1 + 1000);
        // Silent again, past the delay: replaced by node 3 or 2, syncing.
        let t2 = t1 + 1000 + DEFAULT_DEAD_AFTER_MS;
        beat(&db, 2, t2 - 1);
        beat(&db, 3, t2 - 1);
        run(&db, liveness(t2));
        assert!(chains(&db).iter().all(|(_, g, _)| !g.chain.contains(&1)));
        beat(&db, 2, t2 + 60_000);
        beat(&db, 3, t2 + 60_000);
        run(&db, liveness(t2 + 60_000));
        for (id, g, _) in chains(&db) {
            assert_eq!(g.chain.len(), 2, "group {id}: {g:?}");
            assert!(!g.chain.contains(&1));
        }
    }

    /// A tiny deterministic generator for the randomized test.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n.max(1)
        }
    }

    /// Random sequences of failures, returns, additions, drains, removals and
    /// sync reports over 3-replica chains (in the spirit of 3FS's chain-update
    /// tests), against a model of which writes each node holds: a write is
    /// acknowledged when every chain member is up and lands on all of them; a
    /// syncing member's report follows a copy from its live peers, as resync
    /// does. After every step: chains are well formed, versions never go
    /// back and move on every change, no removed node is in a chain, and
    /// every serving member holds every acknowledged write of its group (a
    /// stale replica is never promoted, whoever fails). At the end, with
    /// every node back, every chain serves at full strength.
    #[test]
    fn random_chain_changes_keep_every_acknowledged_write_on_every_serving_member() {
        use std::collections::BTreeMap;
        use std::collections::BTreeSet;
        for seed in 1..=32u64 {
            let groups = 4;
            let (_dir, db) = laid_out(groups, 3);
            let mut rng = Lcg(seed);
            let replace_after_ms = if seed % 2 == 0 {
                0
            } else {
                3 * DEFAULT_DEAD_AFTER_MS
            };
            // Node id -> up; removed nodes leave the map.
            let mut up: BTreeMap<u64, bool> = (1..=4).map(|id| (id, true)).collect();
            let mut has: BTreeMap<(u32, u64), BTreeSet<u64>> = BTreeMap::new();
            let mut acked: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
            let mut now = 1000;
            let mut write = 0u64;
            let mut next_id = 4;
            let mut last: BTreeMap<u32, (Group, ReplicaStates)> = BTreeMap::new();
            let liveness = |now_ms| MapCommand::Liveness {
                now_ms,
                replace_after_ms,
            };
            let beat_up = |up: &BTreeMap<u64, bool>, now: i64| {
                for (&id, _) in up.iter().filter(|(_, u)| **u) {
                    beat(&db, id, now);
                }
            };
            beat_up(&up, now);
            run(&db, liveness(now));
            for step in 0..250 {
                now += 500;
                let ids: Vec<u64> = up.keys().copied().collect();
                let pick = |rng: &mut Lcg| ids[rng.below(ids.len() as u64) as usize];
                match rng.below(10) {
                    0 | 1 => {
                        let id = pick(&mut rng);
                        up.insert(id, false);
                    }
                    2 | 3 => {
                        let id = pick(&mut rng);
                        up.insert(id, true);
                    }
                    4 if up.len() < 8 => {
                        next_id += 1;
                        up.insert(next_id, true);
                    }
                    5 => {
                        let id = pick(&mut rng);
                        let state = [NodeState::Draining, NodeState::Active, NodeState::Removed]
                            [rng.below(3) as usize];
                        let cmd = MapCommand::SetNodeState {
                            id,
                            state,
                            now_ms: now,
                        };
                        if try_run(&db, cmd).is_ok() && state == NodeState::Removed {
                            up.remove(&id);
                        }
                    }
                    6 => now += DEFAULT_DEAD_AFTER_MS,
                    _ => {
                        // Syncing members that are up copy from their peers
                        // and report; a peer down (not yet out of the chain)
                        // fails the copy, as it does in resync.
                        let txn = Txn::new(&db, 0);
                        for (g, group) in groups_of(&txn) {
                            let st = states(&txn, g).unwrap();
                            if group.chain.iter().any(|id| up.get(id) != Some(&true)) {
                                continue;
                            }
                            for &m in &st.syncing {
                                let mut got = has.get(&(g, m)).cloned().unwrap_or_default();
                                for p in group.chain.iter().filter(|p| **p != m) {
                                    got.extend(has.get(&(g, *p)).cloned().unwrap_or_default());
                                }
                                has.insert((g, m), got);
                                let cmd = MapCommand::Synced {
                                    node: m,
                                    groups: vec![(g, group.version)],
                                    now_ms: now,
                                };
                                run(&db, cmd);
                            }
                        }
                    }
                }
                beat_up(&up, now);
                run(&db, liveness(now));
                // One write per group whose whole chain is up.
                let txn = Txn::new(&db, 0);
                for (g, group) in groups_of(&txn) {
                    if !group.chain.is_empty()
                        && group.chain.iter().all(|id| up.get(id) == Some(&true))
                    {
                        write += 1;
                        acked.entry(g).or_default().insert(write);
                        for id in &group.chain {
                            has.entry((g, *id)).or_default().insert(write);
                        }
                    }
                }
                // Invariants.
                for (g, group) in groups_of(&txn) {
                    let st = states(&txn, g).unwrap();
                    let at = format!("seed {seed} step {step} group {g}: {group:?} {st:?}");
                    let unique: BTreeSet<u64> = group.chain.iter().copied().collect();
                    assert_eq!(unique.len(), group.chain.len(), "{at}");
                    assert!(
                        group.chain.iter().all(|id| up.contains_key(id)),
                        "removed member: {at}"
                    );
                    assert!(st.syncing.iter().all(|id| group.chain.contains(id)), "{at}");
                    assert!(st.leaving.iter().all(|id| group.chain.contains(id)), "{at}");
                    assert!(
                        st.absent.iter().all(|(id, _)| !group.chain.contains(id)),
                        "{at}"
                    );
                    if let Some((was, was_st)) = last.get(&g) {
                        assert!(group.version >= was.version, "{at}");
                        if (&was.chain, was_st) != (&group.chain, &st) {
                            assert!(group.version > was.version, "unversioned change: {at}");
                        }
                    }
                    let all = acked.get(&g).cloned().unwrap_or_default();
                    for id in group.chain.iter().filter(|id| !st.syncing.contains(id)) {
                        let held = has.get(&(g, *id)).cloned().unwrap_or_default();
                        let lacking: Vec<_> = all.difference(&held).collect();
                        assert!(lacking.is_empty(), "serving {id} lacks {lacking:?}: {at}");
                    }
                    last.insert(g, (group, st));
                }
            }
            // Everyone back (drains undone): the chains heal to full strength.
            for id in up.keys().copied().collect::<Vec<_>>() {
                up.insert(id, true);
                let cmd = MapCommand::SetNodeState {
                    id,
                    state: NodeState::Active,
                    now_ms: now,
                };
                run(&db, cmd);
            }
            for _ in 0..6 {
                now += 500;
                beat_up(&up, now);
                run(&db, liveness(now));
                settle(&db, now);
            }
            let txn = Txn::new(&db, 0);
            let want = up.len().min(3);
            for (g, group) in groups_of(&txn) {
                let st = states(&txn, g).unwrap();
                assert_eq!(
                    group.chain.len(),
                    want,
                    "seed {seed} group {g}: {group:?} {st:?}"
                );
                assert_eq!(
                    st,
                    ReplicaStates::default(),
                    "seed {seed} group {g}: {group:?}"
                );
            }
        }
    }

    fn groups_of(txn: &Txn) -> Vec<(u32, Group)> {
        groups(txn).unwrap()
    }
}
