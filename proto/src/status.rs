//! The one encoding of Cairn errors in a gRPC status.
//!
//! A file-system error carries its errno in the `cairn-errno` metadata key; a
//! request sent to a replica that is not the shard's leader is `Unavailable` with
//! `cairn-leader-id` / `cairn-leader-addr` naming the leader when it is known.
//! Servers build statuses with [`errno_status`] and [`not_leader_status`]; clients
//! read them back with [`decode`].

use tonic::metadata::MetadataValue;
use tonic::Code;
use tonic::Status;

use crate::ids::NodeId;

pub const EPERM: i32 = 1;
pub const ENOENT: i32 = 2;
pub const EIO: i32 = 5;
pub const EBADF: i32 = 9;
pub const EAGAIN: i32 = 11;
pub const EACCES: i32 = 13;
pub const EEXIST: i32 = 17;
pub const EXDEV: i32 = 18;
pub const ENOTDIR: i32 = 20;
pub const EISDIR: i32 = 21;
pub const EINVAL: i32 = 22;
pub const EFBIG: i32 = 27;
pub const ENOSPC: i32 = 28;
pub const EMLINK: i32 = 31;
pub const ERANGE: i32 = 34;
pub const ENAMETOOLONG: i32 = 36;
pub const ENOLCK: i32 = 37;
pub const ENOTEMPTY: i32 = 39;
pub const ELOOP: i32 = 40;
pub const ENODATA: i32 = 61;
pub const ENOTSUP: i32 = 95;
pub const ESTALE: i32 = 116;

const ERRNO_KEY: &str = "cairn-errno";
const LEADER_ID_KEY: &str = "cairn-leader-id";
const LEADER_ADDR_KEY: &str = "cairn-leader-addr";

/// A status for a file-system error.
pub fn errno_status(errno: i32, message: impl Into<String>) -> Status {
    let code = match errno {
        ENOENT => Code::NotFound,
        EEXIST => Code::AlreadyExists,
        EINVAL | ENAMETOOLONG | ERANGE | EFBIG => Code::InvalidArgument,
        EPERM | EACCES => Code::PermissionDenied,
        ENOSPC => Code::ResourceExhausted,
        EIO => Code::Internal,
        EAGAIN => Code::Unavailable,
        _ => Code::FailedPrecondition,
    };
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(ERRNO_KEY, MetadataValue::from(errno));
    status
}

/// A status telling the caller to retry at the shard's leader.
pub fn not_leader_status(leader: Option<(NodeId, &str)>) -> Status {
    let mut status = Status::unavailable("not the leader of this shard");
    if let Some((id, addr)) = leader {
        let md = status.metadata_mut();
        md.insert(LEADER_ID_KEY, MetadataValue::from(id));
        if let Ok(v) = addr.parse() {
            md.insert(LEADER_ADDR_KEY, v);
        }
    }
    status
}

/// What a client makes of a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A file-system error; permanent.
    Errno { errno: i32, message: String },
    /// Retry at the leader (if known).
    NotLeader { leader: Option<(NodeId, String)> },
    /// Anything else: transient when the code says the server may recover.
    Other { code: Code, message: String },
}

impl WireError {
    /// Whether retrying the same request can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            WireError::Errno { errno, .. } => *errno == EAGAIN,
            WireError::NotLeader { .. } => true,
            WireError::Other { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::Unknown
                    | Code::Cancelled
                    | Code::ResourceExhausted
            ),
        }
    }
}

/// Reads a status back into a [`WireError`].
pub fn decode(status: &Status) -> WireError {
    let md = status.metadata();
    if let Some(errno) = md
        .get(ERRNO_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
    {
        return WireError::Errno {
            errno,
            message: status.message().to_string(),
        };
    }
    if status.code() == Code::Unavailable && status.message() == "not the leader of this shard" {
        let id = md
            .get(LEADER_ID_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok());
        let addr = md
            .get(LEADER_ADDR_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        return WireError::NotLeader {
            leader: id.zip(addr),
        };
    }
    WireError::Other {
        code: status.code(),
        message: status.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = errno_status(ENOTEMPTY, "directory not empty");
        assert_eq!(
            decode(&s),
            WireError::Errno {
                errno: ENOTEMPTY,
                message: "directory not empty".into()
            }
        );
        let s = not_leader_status(Some((3, "127.0.0.1:7000")));
        assert_eq!(
            decode(&s),
            WireError::NotLeader {
                leader: Some((3, "127.0.0.1:7000".into()))
            }
        );
        assert!(decode(&not_leader_status(None)).is_transient());
    }
}
