//! The heartbeat to metad: every period, `Meta.RegisterDataNode` with this node's
//! id, address, capacity, used bytes and block count. That call both registers
//! the node in the cluster map and keeps it alive there; the answer names the
//! cluster's cold backend, which the node then uses, and carries shard 0's chain
//! table, which the fence checks writes against. A write the fence cannot
//! decide with the table it has asks for a beat at once. The beat also reports
//! the groups this node finished syncing into (see `resync.rs`).
//!
//! The metad that answered last (usually the cluster-map leader) is tried first,
//! then the configured addresses in turn; a "not the leader" answer naming the
//! leader is followed once ([`MetaLink`]). A failed heartbeat is logged and
//! retried at the next tick; it never stops the node.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::pb;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::fence::ChainFence;
use crate::meta::MetaLink;
use crate::resync::SyncState;
use crate::tier::Tiering;

/// The heartbeat loop of one node.
pub struct Heartbeat {
    id: u64,
    advertise: String,
    period: Duration,
    tiering: Arc<Tiering>,
    fence: Arc<ChainFence>,
    synced: Arc<SyncState>,
    link: MetaLink,
}

impl Heartbeat {
    /// A heartbeat for node `id`, reachable at `advertise`, to the metads at `meta`.
    pub fn new(
        id: u64,
        advertise: String,
        meta: Vec<String>,
        period: Duration,
        tiering: Arc<Tiering>,
        fence: Arc<ChainFence>,
        synced: Arc<SyncState>,
    ) -> Heartbeat {
        // An RPC slower than a couple of periods is as good as lost.
        let timeout = (period * 2).clamp(Duration::from_secs(1), Duration::from_secs(10));
        Heartbeat {
            id,
            advertise,
            period,
            tiering,
            fence,
            synced,
            link: MetaLink::new(meta, timeout),
        }
    }

    /// Beats until `shutdown` is cancelled; the first beat is immediate, and
    /// the fence's asking for a fresher table brings the next one forward.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let fence = Arc::clone(&self.fence);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
                _ = fence.refresh_wanted() => ticks.reset(),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.beat() => match result {
                    Ok(addr) => tracing::debug!(metad = %addr, "heartbeat sent"),
                    Err(errors) => tracing::warn!(%errors, "heartbeat failed; retrying next tick"),
                },
            }
        }
    }

    /// Sends one heartbeat; returns the metad that took it, or every failure.
    pub async fn beat(&mut self) -> Result<String, String> {
        let stats = self.tiering.store().stats();
        let request = pb::RegisterDataNodeRequest {
            id: self.id,
            addr: self.advertise.clone(),
            capacity_bytes: stats.capacity_bytes,
            used_bytes: stats.used_bytes,
            blocks: stats.blocks,
            synced: self.synced.report(self.id, &self.fence),
        };
        let (reply, addr) = self
            .link
            .call(|mut c| {
                let request = request.clone();
                async move { c.register_data_node(request).await }
            })
            .await?;
        self.tiering.set_backend(reply.cold.as_ref());
        self.fence.learn(reply.groups);
        Ok(addr)
    }
}
