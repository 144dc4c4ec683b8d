//! The metadata service's error type and its one conversion to a gRPC status.

use cairn_proto::ids::NodeId;
use cairn_proto::ids::ShardId;
use cairn_proto::status;

use crate::types::Errno;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// A POSIX error the caller should see as is.
    #[error("{}", .0.message)]
    Fs(Errno),
    /// This node is not the shard's leader; retry there.
    #[error("not the leader of shard {shard}")]
    NotLeader {
        shard: ShardId,
        leader: Option<(NodeId, String)>,
    },
    /// This process hosts no replica of the shard.
    #[error("shard {0} is not hosted here")]
    WrongShard(ShardId),
    /// The request itself is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Raft could not commit or read (shutting down, no quorum, ...).
    #[error("raft: {0}")]
    Raft(String),
    /// A peer could not be reached.
    #[error("peer: {0}")]
    Peer(String),
    /// RocksDB or encoding failure.
    #[error("storage: {0}")]
    Storage(String),
    #[error("config: {0}")]
    Config(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl MetaError {
    pub fn fs(errno: i32, message: impl Into<String>) -> Self {
        MetaError::Fs(Errno::new(errno, message))
    }

    /// Whether retrying can never succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            MetaError::Fs(_) | MetaError::Invalid(_) | MetaError::Config(_)
        )
    }
}

impl From<rocksdb::Error> for MetaError {
    fn from(e: rocksdb::Error) -> Self {
        MetaError::Storage(e.to_string())
    }
}

impl From<cairn_proto::name::NameError> for MetaError {
    fn from(e: cairn_proto::name::NameError) -> Self {
        MetaError::fs(e.errno(), e.to_string())
    }
}

impl From<MetaError> for tonic::Status {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Fs(errno) => status::errno_status(errno.errno, errno.message),
            MetaError::NotLeader { leader, .. } => {
                status::not_leader_status(leader.as_ref().map(|(id, addr)| (*id, addr.as_str())))
            }
            MetaError::WrongShard(_) => status::not_leader_status(None),
            MetaError::Invalid(m) => status::errno_status(status::EINVAL, m),
            MetaError::Raft(m) | MetaError::Peer(m) => tonic::Status::unavailable(m),
            e @ (MetaError::Storage(_) | MetaError::Config(_) | MetaError::Io(_)) => {
                tonic::Status::internal(e.to_string())
            }
        }
    }
}
