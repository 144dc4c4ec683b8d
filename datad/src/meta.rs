//! How a datad calls metad (its heartbeat, the scrubber's cluster-map reads):
//! [`MetaLink`] tries the metad that answered last (usually the cluster-map
//! leader) first, then the configured addresses in turn, and follows a "not
//! the leader" answer naming the leader once. It never retries on its own; a
//! caller that failed tries again at its next tick.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use cairn_proto::channel::Channels;
use cairn_proto::pb;
use cairn_proto::pb::meta_client::MetaClient;
use cairn_proto::status::decode;
use cairn_proto::status::WireError;
use tonic::transport::Channel;
use tonic::Response;
use tonic::Status;

/// Calls to the metads of one cluster.
pub struct MetaLink {
    meta: Vec<String>,
    channels: Channels,
    /// The metad that took the last call.
    last_good: Mutex<Option<String>>,
}

impl MetaLink {
    /// A link to the metads at `meta`, each call bounded by `timeout`.
    pub fn new(meta: Vec<String>, timeout: Duration) -> MetaLink {
        MetaLink {
            meta,
            channels: Channels::with_timeouts(timeout, timeout),
            last_good: Mutex::new(None),
        }
    }

    fn last_good(&self) -> Option<String> {
        self.last_good
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_last_good(&self, addr: Option<String>) {
        *self.last_good.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// Runs `op` against the metads until one answers; returns the answer and
    /// the metad that gave it, or every failure (`addr: message`, joined).
    pub async fn call<T, F, Fut>(&self, op: F) -> Result<(T, String), String>
    where
        F: Fn(MetaClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut candidates: Vec<String> = Vec::with_capacity(self.meta.len() + 1);
        for addr in self.last_good().iter().chain(&self.meta) {
            if !candidates.contains(addr) {
                candidates.push(addr.clone());
            }
        }
        let mut errors = Vec::new();
        for addr in candidates {
            let status = match self.call_one(&addr, &op).await {
                Ok(reply) => {
                    self.set_last_good(Some(addr.clone()));
                    return Ok((reply, addr));
                }
                Err(status) => status,
            };
            errors.push(format!("{addr}: {}", status.message()));
            if let WireError::NotLeader {
                leader: Some((_, leader)),
            } = decode(&status)
            {
                if leader != addr {
                    match self.call_one(&leader, &op).await {
                        Ok(reply) => {
                            self.set_last_good(Some(leader.clone()));
                            return Ok((reply, leader));
                        }
                        Err(s) => errors.push(format!("{leader}: {}", s.message())),
                    }
                }
            }
        }
        self.set_last_good(None);
        Err(errors.join("; "))
    }

    async fn call_one<T, F, Fut>(&self, addr: &str, op: &F) -> Result<T, Status>
    where
        F: Fn(MetaClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let client = self
            .channels
            .meta(addr)
            .map_err(|e| Status::invalid_argument(format!("bad metad address {addr}: {e}")))?;
        Ok(op(client).await?.into_inner())
    }

    /// The cluster map (placement groups and their chains, data nodes).
    pub async fn cluster_map(&self) -> Result<pb::ClusterMap, String> {
        let (map, _) = self
            .call(|mut c| async move { c.get_cluster_map(pb::ClusterMapRequest {}).await })
            .await?;
        Ok(map)
    }
}
