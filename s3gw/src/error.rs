//! The one place errors become S3 errors: client-library errors, failures of
//! a streaming request body, and (`complete_error_body`) the shape of every
//! error answer.

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

/// Completes an S3 error document (`<Error><Code>…`) to the shape S3 answers
/// and SDKs show: a `<Message>` (S3's text for the code when the error had
/// none), the `<Resource>` it concerns (the request path) and the
/// `<RequestId>` that the `x-amz-request-id` header also carries. Answers
/// `None` for a body that is not an error document.
pub fn complete_error_body(xml: &[u8], resource: &str, request_id: &str) -> Option<Vec<u8>> {
    let xml = std::str::from_utf8(xml).ok()?;
    let end = xml.rfind("</Error>")?;
    let code_end = xml.find("</Code>")?;
    let code = &xml[xml.find("<Code>")? + "<Code>".len()..code_end];
    let mut out = String::with_capacity(xml.len() + 160);
    out.push_str(&xml[..code_end + "</Code>".len()]);
    if !xml.contains("<Message>") {
        out.push_str("<Message>");
        out.push_str(&escape(default_message(code)));
        out.push_str("</Message>");
    }
    out.push_str(&xml[code_end + "</Code>".len()..end]);
    if !xml.contains("<Resource>") {
        out.push_str("<Resource>");
        out.push_str(&escape(resource));
        out.push_str("</Resource>");
    }
    if !xml.contains("<RequestId>") {
        out.push_str("<RequestId>");
        out.push_str(&escape(request_id));
        out.push_str("</RequestId>");
    }
    out.push_str(&xml[end..]);
    Some(out.into_bytes())
}

/// S3's own message for an error code.
fn default_message(code: &str) -> &'static str {
    match code {
        "AccessDenied" => "Access Denied",
        "BadDigest" => "The Content-MD5 or checksum you specified did not match what we received.",
        "BucketAlreadyOwnedByYou" => {
            "Your previous request to create the named bucket succeeded and you already own it."
        }
        "BucketNotEmpty" => "The bucket you tried to delete is not empty",
        "EntityTooLarge" => "Your proposed upload exceeds the maximum allowed size",
        "EntityTooSmall" => "Your proposed upload is smaller than the minimum allowed size",
        "IncompleteBody" => {
            "You did not provide the number of bytes specified by the Content-Length HTTP header"
        }
        "InternalError" => "We encountered an internal error. Please try again.",
        "InvalidAccessKeyId" => {
            "The AWS Access Key Id you provided does not exist in our records."
        }
        "InvalidArgument" => "Invalid Argument",
        "InvalidBucketName" => "The specified bucket is not valid.",
        "InvalidDigest" => "The Content-MD5 you specified is not valid.",
        "InvalidPart" => {
            "One or more of the specified parts could not be found. The part may not have been \
             uploaded, or the specified entity tag may not match the part's entity tag."
        }
        "InvalidPartOrder" => "The list of parts was not in ascending order.",
        "InvalidRange" => "The requested range is not satisfiable",
        "InvalidRequest" => "Invalid Request",
        "KeyTooLongError" => "Your key is too long",
        "MalformedXML" => {
            "The XML you provided was not well-formed or did not validate against our published schema."
        }
        "MethodNotAllowed" => "The specified method is not allowed against this resource.",
        "MissingContentLength" => "You must provide the Content-Length HTTP header.",
        "NoSuchBucket" => "The specified bucket does not exist",
        "NoSuchKey" => "The specified key does not exist.",
        "NoSuchUpload" => {
            "The specified multipart upload does not exist. The upload ID might not be valid, \
             or the multipart upload might have been aborted or completed."
        }
        "NotImplemented" => {
            "A header you provided implies functionality that is not implemented."
        }
        "NotModified" => "Not Modified",
        "PreconditionFailed" => "At least one of the preconditions you specified did not hold.",
        "RequestTimeTooSkewed" => {
            "The difference between the request time and the server's time is too large."
        }
        "ServiceUnavailable" => "Please reduce your request rate.",
        "SignatureDoesNotMatch" => {
            "The request signature we calculated does not match the signature you provided. \
             Check your key and signing method."
        }
        "SlowDown" => "Please reduce your request rate.",
        _ => "The request could not be served.",
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_get_message_resource_and_request_id() {
        let bare =
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code></Error>";
        let done = complete_error_body(bare, "/b/a&b", "0123ABCD").unwrap();
        assert_eq!(
            String::from_utf8(done).unwrap(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code>\
             <Message>The specified key does not exist.</Message>\
             <Resource>/b/a&amp;b</Resource><RequestId>0123ABCD</RequestId></Error>"
        );
        // A message of the error's own is kept.
        let given =
            b"<Error><Code>InvalidArgument</Code><Message>max-keys &lt; 0</Message></Error>";
        let done = String::from_utf8(complete_error_body(given, "/b", "1").unwrap()).unwrap();
        assert_eq!(
            done,
            "<Error><Code>InvalidArgument</Code><Message>max-keys &lt; 0</Message>\
             <Resource>/b</Resource><RequestId>1</RequestId></Error>"
        );
        assert!(complete_error_body(b"<ListAllMyBucketsResult/>", "/", "1").is_none());
    }
}
