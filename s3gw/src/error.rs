//! The one place errors become S3 errors: client-library errors and failures
//! of a streaming request body.

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

/// A request body that failed while streaming in. A chunk (or trailer) of an
/// `aws-chunked` body whose signature does not verify is a forged request:
/// 403 `SignatureDoesNotMatch`; anything else (a cut connection, a malformed
/// chunk) is 400 `IncompleteBody`.
///
/// s3s does not export its chunk-stream error type, so the mismatch is known
/// by its name in the error's text (`AwsChunkedStreamError: SignatureMismatch`
/// in s3s 0.14.1; the integration test `s3_forged_chunk_signature_*` pins it).
pub fn body_error(e: &dyn std::fmt::Display) -> S3Error {
    let text = e.to_string();
    if text.contains("SignatureMismatch") {
        s3_error!(
            SignatureDoesNotMatch,
            "a chunk signature of the body does not match"
        )
    } else {
        s3_error!(IncompleteBody, "reading the request body: {text}")
    }
}
