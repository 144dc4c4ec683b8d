//! Chain-version fencing against shard 0's chain table. Metad's shard 0 is the
//! only authority on placement-group chains: every heartbeat answer carries its
//! table, and this node admits a write only when the request's chain version is
//! the one shard 0 issued last for that group and names this node as a member.
//! An older version comes from a writer with a stale view of the chain (refused,
//! as before); a newer one may be a change this node has not heard of yet, so it
//! asks for a heartbeat at once and decides on the answer: a version shard 0
//! never issued (a forged `u64::MAX`, say) is refused and remembered nowhere, so
//! no writer can raise the fence for the others.
//!
//! An admitted write holds an [`Admission`] until it is stored here and down
//! the chain; [`ChainFence::barrier`] waits for every one admitted before it,
//! so a replica listing this node's blocks to sync (see `resync.rs`) misses no
//! write acknowledged under an older chain.
//!
//! A node without metad addresses (standalone: tests and tools) has no authority
//! and admits every version.

use std::collections::HashMap;
use std::time::Duration;

use cairn_proto::pb;
use tokio::sync::watch;
use tokio::sync::Notify;
use tokio::sync::OwnedRwLockReadGuard;
use tokio::sync::RwLock;

use crate::error::DataError;

/// How long a write with a version newer than this node knows waits for the
/// heartbeat answer that may confirm it.
const CONFIRM_WAIT: Duration = Duration::from_secs(5);

/// Chains as shard 0 last answered them, and how many answers came so far.
#[derive(Default)]
struct Table {
    groups: HashMap<u32, pb::PlacementGroup>,
    answers: u64,
}

/// The fencing table of one node.
pub struct ChainFence {
    node_id: u64,
    /// `None`: standalone, no authority to check against.
    table: Option<watch::Sender<Table>>,
    /// A write is waiting on a fresher table: the heartbeat should beat now.
    wanted: Notify,
    /// Held shared by admitted writes in flight, exclusively by a barrier.
    in_flight: std::sync::Arc<RwLock<()>>,
}

/// A write admitted and not yet finished (stored here and down the chain).
#[derive(Debug)]
pub struct Admission {
    _held: OwnedRwLockReadGuard<()>,
}

enum Check {
    Admit,
    Refuse(DataError),
    /// Newer than the table, or a group the table lacks: ask shard 0 again.
    Unknown {
        latest: u64,
    },
}

impl ChainFence {
    /// The fence of node `node_id`, learning chains from shard 0's heartbeat answers.
    pub fn new(node_id: u64) -> ChainFence {
        ChainFence {
            node_id,
            table: Some(watch::Sender::new(Table::default())),
            wanted: Notify::new(),
            in_flight: Default::default(),
        }
    }

    /// The fence of a node with no metad: every version is admitted.
    pub fn standalone(node_id: u64) -> ChainFence {
        ChainFence {
            node_id,
            table: None,
            wanted: Notify::new(),
            in_flight: Default::default(),
        }
    }

    /// Takes shard 0's chain table from a heartbeat answer.
    pub fn learn(&self, groups: Vec<pb::PlacementGroup>) {
        if let Some(table) = &self.table {
            table.send_modify(|t| {
                t.groups = groups.into_iter().map(|g| (g.id, g)).collect();
                t.answers += 1;
            });
        }
    }

    /// Whether shard 0 has answered this node at least once.
    pub fn learned(&self) -> bool {
        self.table.as_ref().is_some_and(|t| t.borrow().answers > 0)
    }

    /// The chains this node is a member of, as shard 0 last answered them.
    pub fn member_groups(&self) -> Vec<pb::PlacementGroup> {
        let Some(table) = &self.table else {
            return Vec::new();
        };
        let table = table.borrow();
        let mut groups: Vec<pb::PlacementGroup> = table
            .groups
            .values()
            .filter(|g| g.chain.contains(&self.node_id))
            .cloned()
            .collect();
        groups.sort_by_key(|g| g.id);
        groups
    }

    /// Resolves when a write waits for a fresher table than the last answer.
    pub async fn refresh_wanted(&self) {
        self.wanted.notified().await
    }

    /// Admits a write for `group` at `version`, or refuses it; the write
    /// holds the answer until it is finished.
    pub async fn admit(&self, group: u32, version: u64) -> Result<Admission, DataError> {
        let admission = Admission {
            _held: self.in_flight.clone().read_owned().await,
        };
        let Some(table) = &self.table else {
            return Ok(admission);
        };
        let mut answers = table.subscribe();
        let seen = answers.borrow().answers;
        match self.check(&answers.borrow(), group, version) {
            Check::Admit => return Ok(admission),
            Check::Refuse(e) => return Err(e),
            Check::Unknown { .. } => {}
        }
        // Not held while waiting for shard 0: a barrier does not wait on it.
        drop(admission);
        self.wanted.notify_one();
        let fresher = answers.wait_for(|t| t.answers > seen);
        // A lost wait (no answer in time) leaves the version unknown below.
        let _ = tokio::time::timeout(CONFIRM_WAIT, fresher).await;
        let admission = Admission {
            _held: self.in_flight.clone().read_owned().await,
        };
        let table = table.borrow();
        match self.check(&table, group, version) {
            Check::Admit => Ok(admission),
            Check::Refuse(e) => Err(e),
            Check::Unknown { latest } => Err(DataError::UnknownChain {
                group,
                version,
                latest,
            }),
        }
    }

    /// Waits until this node knows every group of `at` at its version or a
    /// newer one (asking shard 0 when not) and no write admitted before is in
    /// flight; refuses a version shard 0 has not issued.
    pub async fn barrier(&self, at: &[pb::GroupVersion]) -> Result<(), DataError> {
        if let Some(table) = &self.table {
            let behind = |t: &Table| {
                at.iter()
                    .find(|a| t.groups.get(&a.group).is_none_or(|g| g.version < a.version))
                    .map(|a| (a.group, a.version))
            };
            let mut answers = table.subscribe();
            let seen = answers.borrow().answers;
            if behind(&answers.borrow()).is_some() {
                self.wanted.notify_one();
                let fresher = answers.wait_for(|t| t.answers > seen);
                let _ = tokio::time::timeout(CONFIRM_WAIT, fresher).await;
            }
            let behind = behind(&table.borrow());
            if let Some((group, version)) = behind {
                let latest = table.borrow().groups.get(&group).map_or(0, |g| g.version);
                return Err(DataError::UnknownChain {
                    group,
                    version,
                    latest,
                });
            }
        }
        drop(self.in_flight.write().await);
        Ok(())
    }

    fn check(&self, table: &Table, group: u32, version: u64) -> Check {
        let Some(g) = table.groups.get(&group) else {
            return Check::Unknown { latest: 0 };
        };
        if version < g.version {
            Check::Refuse(DataError::StaleChain {
                group,
                version,
                current: g.version,
            })
        } else if version > g.version {
            Check::Unknown { latest: g.version }
        } else if !g.chain.contains(&self.node_id) {
            Check::Refuse(DataError::NotInChain {
                group,
                version,
                node: self.node_id,
            })
        } else {
            Check::Admit
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn group(id: u32, version: u64, chain: &[u64]) -> pb::PlacementGroup {
        pb::PlacementGroup {
            id,
            chain: chain.to_vec(),
            version,
            syncing: Vec::new(),
        }
    }

    /// Answers every refresh the fence asks for with `groups` (a heartbeat).
    fn answer_refreshes(fence: &Arc<ChainFence>, groups: Vec<pb::PlacementGroup>) {
        let fence = Arc::clone(fence);
        tokio::spawn(async move {
            loop {
                fence.refresh_wanted().await;
                fence.learn(groups.clone());
            }
        });
    }

    #[tokio::test]
    async fn only_the_version_shard_0_issued_is_admitted() {
        let fence = Arc::new(ChainFence::new(2));
        fence.learn(vec![group(1, 5, &[1, 2, 3]), group(2, 3, &[1, 3])]);
        answer_refreshes(&fence, vec![group(1, 5, &[1, 2, 3]), group(2, 3, &[1, 3])]);
        fence.admit(1, 5).await.unwrap();
        let stale = fence.admit(1, 4).await.unwrap_err();
        assert!(
            matches!(stale, DataError::StaleChain { current: 5, .. }),
            "{stale}"
        );
        // Forged: never issued. Refused, and the fence did not move.
        for forged in [6, u64::MAX] {
            let err = fence.admit(1, forged).await.unwrap_err();
            assert!(
                matches!(err, DataError::UnknownChain { latest: 5, .. }),
                "{err}"
            );
        }
        fence.admit(1, 5).await.unwrap();
        // A group this node is not a member of, and one shard 0 does not have.
        let err = fence.admit(2, 3).await.unwrap_err();
        assert!(matches!(err, DataError::NotInChain { .. }), "{err}");
        let err = fence.admit(9, 1).await.unwrap_err();
        assert!(matches!(err, DataError::UnknownChain { latest: 0, .. }));
    }

    #[tokio::test]
    async fn a_newer_version_waits_for_shard_0_to_confirm_it() {
        let fence = Arc::new(ChainFence::new(2));
        fence.learn(vec![group(1, 5, &[1, 2, 3])]);
        // The chain changed; this node hears of it only when it asks.
        answer_refreshes(&fence, vec![group(1, 6, &[2, 3])]);
        fence.admit(1, 6).await.unwrap();
        assert!(fence.admit(1, 5).await.is_err(), "the old chain is fenced");
    }

    #[tokio::test]
    async fn a_barrier_waits_for_the_version_and_for_writes_in_flight() {
        let fence = Arc::new(ChainFence::new(2));
        fence.learn(vec![group(1, 5, &[1, 2, 3])]);
        answer_refreshes(&fence, vec![group(1, 5, &[1, 2, 3])]);
        let at = |version| vec![pb::GroupVersion { group: 1, version }];
        // A version shard 0 has not issued is refused.
        assert!(matches!(
            fence.barrier(&at(6)).await,
            Err(DataError::UnknownChain { latest: 5, .. })
        ));
        // A write in flight holds the barrier back until it is finished.
        let write = fence.admit(1, 5).await.unwrap();
        let barrier = tokio::spawn({
            let fence = Arc::clone(&fence);
            async move { fence.barrier(&at(5)).await }
        });
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(
            !barrier.is_finished(),
            "the barrier passed a write in flight"
        );
        drop(write);
        barrier.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn standalone_nodes_admit_every_version() {
        let fence = ChainFence::standalone(1);
        fence.admit(1, 0).await.unwrap();
        fence.admit(1, u64::MAX).await.unwrap();
    }
}
