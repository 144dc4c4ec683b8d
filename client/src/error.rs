//! The client library's error type: what every front end (CLI, FUSE, S3) maps to
//! its own errors (an errno, an S3 code) in one place each.

use cairn_proto::status::decode;
use cairn_proto::status::WireError;
use cairn_proto::status::EAGAIN;
use cairn_proto::status::EIO;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// A POSIX error from the namespace.
    #[error("{message} (errno {errno})")]
    Fs { errno: i32, message: String },
    /// The cluster could not be reached or did not answer in time.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A block could not be read from any replica, or failed its checksum.
    #[error("data: {0}")]
    Data(String),
    /// The caller asked for something malformed.
    #[error("invalid: {0}")]
    Invalid(String),
}

impl ClientError {
    pub fn fs(errno: i32, message: impl Into<String>) -> Self {
        ClientError::Fs {
            errno,
            message: message.into(),
        }
    }

    /// The errno a POSIX front end returns.
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Fs { errno, .. } => *errno,
            ClientError::Invalid(_) => cairn_proto::status::EINVAL,
            _ => EIO,
        }
    }

    /// Whether retrying the same call can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Unavailable(_))
    }
}

/// How a client sees a status from metad or datad.
pub fn from_status(status: &tonic::Status) -> ClientError {
    match decode(status) {
        // A key locked by a cross-shard operation: retry.
        WireError::Errno { errno, message } if errno == EAGAIN => ClientError::Unavailable(message),
        WireError::Errno { errno, message } => ClientError::Fs { errno, message },
        e @ WireError::NotLeader { .. } => ClientError::Unavailable(format!("{e:?}")),
        e @ WireError::Other { .. } if e.is_transient() => {
            ClientError::Unavailable(status.message().to_string())
        }
        WireError::Other { message, .. } => ClientError::Data(message),
    }
}
