//! What an object carries beyond its bytes, kept as JSON in the xattr
//! `user.s3` of its file: the ETag, the standard headers it was stored with
//! and its user metadata (`x-amz-meta-*`). The record is stamped with the
//! file's size and mtime when it was written; a file changed since (through
//! FUSE, say) or written without the gateway has no valid record, and gets a
//! derived ETag (not an MD5, so no client mistakes it for one) and defaults.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::SystemTime;

use cairn_proto::pb;
use s3s::dto::ETag;
use s3s::dto::Metadata;
use s3s::dto::Timestamp;
use serde::Deserialize;
use serde::Serialize;

/// The xattr holding an object's record.
pub const XATTR: &[u8] = b"user.s3";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, String>,
}

impl Headers {
    pub fn user_metadata(&self) -> Option<Metadata> {
        if self.user.is_empty() {
            return None;
        }
        Some(
            self.user
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    pub fn user_from(metadata: Option<Metadata>) -> BTreeMap<String, String> {
        metadata
            .map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The headers to store from a request that sets them (PutObject,
/// CopyObject with REPLACE, CreateMultipartUpload: their inputs share the
/// field names).
macro_rules! headers_from {
    ($input:expr) => {
        $crate::objmeta::Headers {
            content_type: $input.content_type,
            content_encoding: $crate::objmeta::stored_encoding($input.content_encoding),
            content_disposition: $input.content_disposition,
            content_language: $input.content_language,
            cache_control: $input.cache_control,
            expires: $input.expires,
            user: $crate::objmeta::Headers::user_from($input.metadata),
        }
    };
}
pub(crate) use headers_from;

/// The Content-Encoding an object keeps: the request's without `aws-chunked`,
/// which says how that request's body was framed, not what the object is (S3
/// drops it the same way); `gzip` and the like stay, in order.
pub fn stored_encoding(encoding: Option<String>) -> Option<String> {
    let encoding = encoding?;
    let kept: Vec<&str> = encoding
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectMeta {
    /// Without quotes: hex MD5, or hex MD5-of-MD5s `-N` for multipart.
    pub etag: String,
    pub size: u64,
    pub mtime_ns: i64,
    #[serde(flatten)]
    pub headers: Headers,
    /// The multipart upload that made the object: a CompleteMultipartUpload
    /// retried after it succeeded answers from this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
}

impl ObjectMeta {
    /// The record of the file `attr`, stamped with its size and mtime.
    pub fn new(etag: String, attr: &pb::Attr, headers: Headers) -> ObjectMeta {
        ObjectMeta {
            etag,
            size: attr.size,
            mtime_ns: attr.mtime_ns,
            headers,
            upload_id: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("object metadata serializes")
    }

    /// The record of a file with attributes `attr`, if `raw` is one and still
    /// describes the file. A folder's record holds whatever its children do.
    pub fn decode_valid(raw: &[u8], attr: &pb::Attr) -> Option<ObjectMeta> {
        let meta: ObjectMeta = serde_json::from_slice(raw).ok()?;
        let folder = attr.kind == pb::FileKind::Directory as i32;
        (folder || (meta.size == attr.size && meta.mtime_ns == attr.mtime_ns)).then_some(meta)
    }
}

/// The ETag of a file: its record's, or one derived from its identity and
/// version.
pub fn etag(attr: &pb::Attr, meta: Option<&ObjectMeta>) -> ETag {
    match meta {
        Some(m) => ETag::Strong(m.etag.clone()),
        None => {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for v in [attr.ino, attr.size, attr.mtime_ns as u64] {
                for b in v.to_le_bytes() {
                    h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
                }
            }
            ETag::Strong(format!("{h:016x}"))
        }
    }
}

pub fn timestamp(ns: i64) -> Timestamp {
    Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_chunked_is_not_stored_as_an_encoding() {
        let enc = |s: &str| stored_encoding(Some(s.to_owned()));
        assert_eq!(enc("aws-chunked"), None);
        assert_eq!(enc("aws-chunked,gzip"), Some("gzip".into()));
        assert_eq!(enc("gzip, aws-chunked"), Some("gzip".into()));
        assert_eq!(enc("gzip,br"), Some("gzip,br".into()));
        assert_eq!(enc("AWS-Chunked"), None);
        assert_eq!(stored_encoding(None), None);
    }
}
