//! Chain-version fencing: per placement group, the highest chain version this node
//! has seen. A write carrying an older version comes from a writer with a stale
//! view of the chain and is rejected, so an old head cannot keep writing after
//! metad has rebuilt the chain. Versions only grow; a new highest version is made
//! durable (in the store's index) before the write that carried it proceeds, so
//! the fence survives a restart.

use std::collections::HashMap;

use tokio::sync::Mutex;

use crate::error::DataError;
use crate::store::BlockStore;

/// The fencing table of one node.
pub struct ChainFence {
    store: BlockStore,
    /// Held across the persisting write so that versions reach the disk in order.
    versions: Mutex<HashMap<u32, u64>>,
}

impl ChainFence {
    /// Loads the recorded versions from the store.
    pub async fn load(store: BlockStore) -> Result<ChainFence, DataError> {
        let versions = store.chain_versions().await?;
        Ok(ChainFence {
            store,
            versions: Mutex::new(versions),
        })
    }

    /// Admits a write for `group` at `version`, or rejects it as stale.
    pub async fn admit(&self, group: u32, version: u64) -> Result<(), DataError> {
        let mut versions = self.versions.lock().await;
        let current = versions.get(&group).copied().unwrap_or(0);
        if version < current {
            return Err(DataError::StaleChain {
                group,
                version,
                current,
            });
        }
        if version > current {
            self.store.record_chain_version(group, version).await?;
            versions.insert(group, version);
        }
        Ok(())
    }

    /// The highest version seen for `group` (0 if none).
    pub async fn current(&self, group: u32) -> u64 {
        self.versions.lock().await.get(&group).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_versions_are_rejected_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = BlockStore::open(dir.path(), 0).await.unwrap();
            let fence = ChainFence::load(store).await.unwrap();
            fence.admit(1, 0).await.unwrap();
            fence.admit(1, 5).await.unwrap();
            fence.admit(1, 5).await.unwrap();
            fence.admit(2, 3).await.unwrap();
            let err = fence.admit(1, 4).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    DataError::StaleChain {
                        group: 1,
                        version: 4,
                        current: 5
                    }
                ),
                "{err}"
            );
        }
        let store = BlockStore::open(dir.path(), 0).await.unwrap();
        let fence = ChainFence::load(store).await.unwrap();
        assert_eq!(fence.current(1).await, 5);
        assert_eq!(fence.current(2).await, 3);
        assert!(fence.admit(2, 2).await.is_err());
        fence.admit(1, 6).await.unwrap();
        assert_eq!(fence.current(1).await, 6);
    }
}
