//! Raft transport between metad processes: openraft's `RaftNetwork` over the
//! `Raft` gRPC service, one service multiplexing every shard (the shard id rides
//! in each message, the openraft payload is bincode). Channels to peers are
//! cached and shared with the coordinator's own peer calls.

use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use cairn_proto::channel::Channels;
use cairn_proto::ids::ShardId;
use cairn_proto::pb;
use cairn_proto::pb::raft_client::RaftClient;
use cairn_proto::MAX_MESSAGE_BYTES;

use crate::types::TypeConfig;

/// A Raft client to `addr` over the shared channel cache.
pub fn raft_client(
    channels: &Channels,
    addr: &str,
) -> Result<RaftClient<Channel>, tonic::transport::Error> {
    Ok(RaftClient::new(channels.get(addr)?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES * 8)
        .max_encoding_message_size(MAX_MESSAGE_BYTES * 8))
}

/// Builds per-target clients for one shard's Raft group.
pub struct NetworkFactory {
    pub shard: ShardId,
    pub channels: Channels,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = NetClient;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> NetClient {
        NetClient {
            shard: self.shard,
            addr: node.addr.clone(),
            channels: self.channels.clone(),
        }
    }
}

pub struct NetClient {
    shard: ShardId,
    addr: String,
    channels: Channels,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

/// Which RPC of the `Raft` service to call.
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl NetClient {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = bincode::serialize(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError(e.to_string()))))?;
        let mut client = raft_client(&self.channels, &self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(pb::RaftMessage {
            shard: self.shard,
            payload: payload.into(),
        });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        }
        .map_err(|s| {
            let e = TransportError(format!("{}: {}", s.code(), s.message()));
            // Only a peer that cannot be reached makes openraft back off (it
            // stops replicating to it for a while). An answer that missed its
            // deadline (a slow fsync on a busy disk: appends get a heartbeat
            // interval) is retried at once; backing off for it stalled every
            // commit that needed that follower.
            if s.code() == tonic::Code::Unavailable {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let result: Result<Resp, RaftError<u64, E>> =
            bincode::deserialize(&reply.into_inner().payload).map_err(|e| {
                RPCError::Network(NetworkError::new(&TransportError(e.to_string())))
            })?;
        result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(0, e)))
    }
}

impl RaftNetwork<TypeConfig> for NetClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
