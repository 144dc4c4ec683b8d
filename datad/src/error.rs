//! The one error type of datad, [`DataError`], and its single conversion into a
//! gRPC status. File-system-like failures travel as errnos (`cairn-errno`, see
//! `cairn_proto::status`); fencing and replica failures use plain gRPC codes.

use cairn_proto::status::errno_status;
use cairn_proto::status::EEXIST;
use cairn_proto::status::EINVAL;
use cairn_proto::status::EIO;
use cairn_proto::status::ENOENT;
use cairn_proto::status::ENOSPC;
use tonic::Code;
use tonic::Status;

use crate::store::BlockId;

/// Everything that can go wrong in datad.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The block is not stored here.
    #[error("block {0} not found")]
    NotFound(BlockId),
    /// The block's only copy is in the cold tier (the store's answer to a read;
    /// `crate::tier` fetches it).
    #[error("block {0} is in the cold tier")]
    InColdTier(BlockId),
    /// A cold-tier operation failed.
    #[error("{0}")]
    Cold(#[from] crate::cold::ColdError),
    /// Data does not match its crc32c: on a put, the request is corrupt; on a get,
    /// the stored copy is.
    #[error("block {block}: crc32c mismatch (expected {expected:#010x}, got {actual:#010x})")]
    ChecksumMismatch {
        block: BlockId,
        expected: u32,
        actual: u32,
    },
    /// A write carried an older chain version than this node has seen for the group.
    #[error("placement group {group}: chain version {version} is stale (current {current})")]
    StaleChain {
        group: u32,
        version: u64,
        current: u64,
    },
    /// A write carried a chain version shard 0 has not issued for the group
    /// (newer than its latest: a forged or corrupt version).
    #[error(
        "placement group {group}: chain version {version} was not issued by the cluster map (latest {latest})"
    )]
    UnknownChain {
        group: u32,
        version: u64,
        latest: u64,
    },
    /// A write for a chain this node is not a member of.
    #[error("placement group {group}: node {node} is not in chain version {version}")]
    NotInChain { group: u32, version: u64, node: u64 },
    /// A block larger than the block size.
    #[error("block of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The block exists with different content; blocks are immutable.
    #[error("block {0} already exists with different content")]
    Conflict(BlockId),
    /// The configured capacity (or the disk) is full.
    #[error("no space: {0}")]
    NoSpace(String),
    /// A local file-system error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A RocksDB error, or an index entry that cannot be decoded.
    #[error("index: {0}")]
    Db(String),
    /// A malformed request.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The next replica of the chain did not take the block.
    #[error("replica {addr}: {message}")]
    Replica {
        addr: String,
        code: Code,
        message: String,
    },
    /// A bad configuration option.
    #[error("config: {0}")]
    Config(String),
    /// Serving or connecting failed at the transport level.
    #[error("transport: {0}")]
    Transport(String),
    /// A bug or a lost background task.
    #[error("internal: {0}")]
    Internal(String),
}

impl DataError {
    /// Whether retrying the same request at the same node cannot succeed.
    pub fn is_permanent(&self) -> bool {
        match self {
            DataError::NotFound(_)
            | DataError::ChecksumMismatch { .. }
            | DataError::StaleChain { .. }
            | DataError::UnknownChain { .. }
            | DataError::NotInChain { .. }
            | DataError::TooLarge { .. }
            | DataError::Conflict(_)
            | DataError::NoSpace(_)
            | DataError::Invalid(_)
            | DataError::Config(_) => true,
            DataError::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
            DataError::Cold(e) => !matches!(e, crate::cold::ColdError::Transient(_)),
            DataError::InColdTier(_) => false,
            DataError::Replica { code, .. } => {
                matches!(code, Code::FailedPrecondition | Code::InvalidArgument)
            }
            DataError::Db(_) | DataError::Transport(_) | DataError::Internal(_) => false,
        }
    }
}

impl From<tonic::transport::Error> for DataError {
    fn from(e: tonic::transport::Error) -> Self {
        DataError::Invalid(format!("bad peer address: {e}"))
    }
}

impl From<rocksdb::Error> for DataError {
    fn from(e: rocksdb::Error) -> Self {
        DataError::Db(e.into_string())
    }
}

impl From<tokio::task::JoinError> for DataError {
    fn from(e: tokio::task::JoinError) -> Self {
        DataError::Internal(format!("blocking task failed: {e}"))
    }
}

impl From<DataError> for Status {
    fn from(e: DataError) -> Self {
        let message = e.to_string();
        match e {
            DataError::NotFound(_) => errno_status(ENOENT, message),
            DataError::ChecksumMismatch { .. } => errno_status(EIO, message),
            DataError::TooLarge { .. } | DataError::Invalid(_) | DataError::Config(_) => {
                errno_status(EINVAL, message)
            }
            DataError::Conflict(_) => errno_status(EEXIST, message),
            DataError::NoSpace(_) => errno_status(ENOSPC, message),
            DataError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                errno_status(ENOSPC, message)
            }
            DataError::Io(_) => errno_status(EIO, message),
            DataError::Cold(crate::cold::ColdError::Transient(_)) | DataError::InColdTier(_) => {
                Status::unavailable(message)
            }
            DataError::Cold(_) => errno_status(EIO, message),
            DataError::StaleChain { .. }
            | DataError::UnknownChain { .. }
            | DataError::NotInChain { .. } => Status::failed_precondition(message),
            // A downstream fencing rejection is the caller's problem too; anything
            // else means the chain is broken and the write may succeed later.
            DataError::Replica { code, .. } => match code {
                Code::FailedPrecondition => Status::failed_precondition(message),
                _ => Status::unavailable(message),
            },
            DataError::Db(_) | DataError::Transport(_) | DataError::Internal(_) => {
                Status::internal(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::status::decode;
    use cairn_proto::status::WireError;

    use super::*;

    fn errno_of(e: DataError) -> Option<i32> {
        match decode(&Status::from(e)) {
            WireError::Errno { errno, .. } => Some(errno),
            _ => None,
        }
    }

    #[test]
    fn statuses_carry_the_right_errno_or_code() {
        let id = BlockId {
            slice_id: 0xab,
            index: 2,
        };
        assert_eq!(errno_of(DataError::NotFound(id)), Some(ENOENT));
        assert_eq!(
            errno_of(DataError::ChecksumMismatch {
                block: id,
                expected: 1,
                actual: 2
            }),
            Some(EIO)
        );
        assert_eq!(
            errno_of(DataError::TooLarge { len: 9, max: 8 }),
            Some(EINVAL)
        );
        assert_eq!(errno_of(DataError::Invalid("x".into())), Some(EINVAL));
        assert_eq!(errno_of(DataError::NoSpace("full".into())), Some(ENOSPC));
        assert_eq!(
            errno_of(DataError::Io(std::io::Error::from(
                std::io::ErrorKind::StorageFull
            ))),
            Some(ENOSPC)
        );
        let stale = Status::from(DataError::StaleChain {
            group: 3,
            version: 4,
            current: 5,
        });
        assert_eq!(stale.code(), Code::FailedPrecondition);
        assert!(stale.message().contains("stale"), "{}", stale.message());
        let replica = DataError::Replica {
            addr: "127.0.0.1:1".into(),
            code: Code::Unavailable,
            message: "connection refused".into(),
        };
        assert!(!replica.is_permanent());
        assert_eq!(Status::from(replica).code(), Code::Unavailable);
        assert!(DataError::NotFound(id).is_permanent());
    }
}
