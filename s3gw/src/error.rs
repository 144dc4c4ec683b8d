//! The one place client-library errors become S3 errors.

use cairn_client::ClientError;
use cairn_proto::status::*;
use s3s::s3_error;
use s3s::S3Error;
use s3s::S3ErrorCode;

/// An error of the namespace for an object operation (ENOENT: no such key).
pub fn s3_err(e: ClientError) -> S3Error {
    match &e {
        ClientError::Fs { errno, message } => match *errno {
            ENOENT => s3_error!(NoSuchKey),
            ENOSPC => s3_error!(e, ServiceUnavailable, "the cluster is out of space"),
            EACCES | EPERM => s3_error!(e, AccessDenied),
            ENOTDIR | EISDIR | EEXIST | ENOTEMPTY => conflict(message),
            ENAMETOOLONG | EINVAL => s3_error!(e, InvalidArgument, "{message}"),
            _ => s3_error!(e, InternalError),
        },
        ClientError::Unavailable(_) => s3_error!(e, ServiceUnavailable, "please retry"),
        ClientError::Invalid(m) => s3_error!(InvalidArgument, "{m}"),
        ClientError::Data(_) => s3_error!(e, InternalError),
    }
}

/// A key that cannot coexist with what is there (a file where a directory is
/// needed or the other way round): 409.
pub fn conflict(why: &str) -> S3Error {
    let mut err = S3Error::with_message(
        S3ErrorCode::Custom("ObjectConflict".into()),
        format!("the key conflicts with an existing object or prefix: {why}"),
    );
    err.set_status_code(hyper::StatusCode::CONFLICT);
    err
}

/// Whether a client error is the given errno.
pub fn is_errno(e: &ClientError, errno: i32) -> bool {
    matches!(e, ClientError::Fs { errno: x, .. } if *x == errno)
}
