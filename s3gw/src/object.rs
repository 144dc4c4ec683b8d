//! Object operations: PUT (plain and conditional), GET and HEAD (ranges,
//! conditional requests), DELETE (one or many) and COPY.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use futures::stream::StreamExt;
use s3s::dto::*;
use s3s::s3_error;
use s3s::S3ErrorCode;
use s3s::S3Result;
use tokio_stream::wrappers::ReceiverStream;

use cairn_proto::status::EISDIR;
use cairn_proto::status::ENOENT;
use cairn_proto::status::ENOTDIR;
use cairn_proto::status::EPERM;

use crate::digest::Announced;
use crate::error::body_error;
use crate::error::is_errno;
use crate::error::s3_err;
use crate::names::parse_key;
use crate::names::KeyPath;
use crate::namespace::Found;
use crate::objmeta::etag;
use crate::objmeta::headers_from;
use crate::objmeta::hex;
use crate::objmeta::timestamp;
use crate::objmeta::Headers;
use crate::objmeta::ObjectMeta;
use crate::Store;

/// Bytes a GET reads from the cluster at once (and buffers per request, twice).
const READ_PIECE: usize = 4 << 20;
const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
/// DeleteObjects runs this many lookups or deletes at once.
const DELETE_PARALLEL: usize = 16;

/// The representation headers of a found object.
pub struct Described {
    pub size: u64,
    pub etag: ETag,
    pub last_modified: Timestamp,
    pub headers: Headers,
}

impl Described {
    pub fn of(found: &Found) -> Described {
        Described {
            size: found.attr.size,
            etag: etag(&found.attr, found.meta.as_ref()),
            last_modified: timestamp(found.attr.mtime_ns),
            headers: found
                .meta
                .as_ref()
                .map(|m| m.headers.clone())
                .unwrap_or_default(),
        }
    }

    fn content_type(&self) -> ContentType {
        self.headers
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into())
    }
}

/// The conditions of a GetObject or HeadObject input.
macro_rules! conditions_of {
    ($input:expr) => {
        Conditions {
            if_match: $input.if_match.as_ref(),
            if_none_match: $input.if_none_match.as_ref(),
            if_modified_since: $input.if_modified_since.as_ref(),
            if_unmodified_since: $input.if_unmodified_since.as_ref(),
        }
    };
}

/// The copy-source conditions of a CopyObject or UploadPartCopy input.
macro_rules! copy_conditions_of {
    ($input:expr) => {
        $crate::object::Conditions {
            if_match: $input.copy_source_if_match.as_ref(),
            if_none_match: $input.copy_source_if_none_match.as_ref(),
            if_modified_since: $input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: $input.copy_source_if_unmodified_since.as_ref(),
        }
    };
}
pub(crate) use copy_conditions_of;

/// The conditions of a GET or HEAD (RFC 9110 section 13.2.2 order): a failed
/// If-Match / If-Unmodified-Since is 412, a matching If-None-Match /
/// unchanged If-Modified-Since is 304.
pub struct Conditions<'a> {
    pub if_match: Option<&'a ETagCondition>,
    pub if_none_match: Option<&'a ETagCondition>,
    pub if_modified_since: Option<&'a Timestamp>,
    pub if_unmodified_since: Option<&'a Timestamp>,
}

impl Conditions<'_> {
    pub fn check(&self, d: &Described) -> S3Result<()> {
        let seconds = |t: &Timestamp| time::OffsetDateTime::from(t.clone()).unix_timestamp();
        let modified = seconds(&d.last_modified);
        match self.if_match {
            Some(c) if !matches_etag(c, &d.etag) => return Err(s3_error!(PreconditionFailed)),
            None if self
                .if_unmodified_since
                .is_some_and(|t| modified > seconds(t)) =>
            {
                return Err(s3_error!(PreconditionFailed))
            }
            _ => {}
        }
        match self.if_none_match {
            Some(c) if matches_etag(c, &d.etag) => Err(s3_error!(NotModified)),
            None if self
                .if_modified_since
                .is_some_and(|t| modified <= seconds(t)) =>
            {
                Err(s3_error!(NotModified))
            }
            _ => Ok(()),
        }
    }
}

fn matches_etag(c: &ETagCondition, e: &ETag) -> bool {
    match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(want) => want.value() == e.value(),
    }
}

impl Store {
    /// Stores an object; `announced` holds the digests the request gave for
    /// its body, checked before the object is published.
    pub async fn put_object(
        &self,
        input: PutObjectInput,
        announced: Announced,
    ) -> S3Result<PutObjectOutput> {
        let dir = self.bucket(&input.bucket).await?;
        let key = parse_key(&input.key)?;
        let exclusive = match &input.if_none_match {
            None => false,
            Some(c) if c.is_any() => true,
            Some(_) => {
                return Err(s3_error!(
                    NotImplemented,
                    "If-None-Match on PUT takes only '*'"
                ))
            }
        };
        let headers = headers_from!(input);
        let body = body_or_empty(input.body);
        let Some(name) = key.name else {
            // A folder object: the directory, marked.
            let mut body = body;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| body_error(&e))?;
                if !chunk.is_empty() {
                    return Err(s3_error!(
                        InvalidArgument,
                        "a key ending in '/' is a folder and holds no data"
                    ));
                }
            }
            announced.verify(&announced.digester().finalize())?;
            let ino = self.make_dirs(dir.ino, &key.dirs).await?;
            let attr = self.client.meta.getattr(ino).await.map_err(s3_err)?;
            let meta = ObjectMeta::new(EMPTY_MD5.into(), &attr, headers);
            self.set_meta(ino, &meta).await?;
            return Ok(PutObjectOutput {
                e_tag: Some(ETag::Strong(meta.etag)),
                ..Default::default()
            });
        };
        if let Some(cond) = &input.if_match {
            let current = self.find(dir.ino, &key).await.map_err(|e| {
                if *e.code() == S3ErrorCode::NoSuchKey {
                    s3_error!(PreconditionFailed, "no object to match")
                } else {
                    e
                }
            })?;
            if !matches_etag(cond, &Described::of(&current).etag) {
                return Err(s3_error!(PreconditionFailed));
            }
        }
        let w = self
            .write_temp(dir.ino, &key.dirs, body, false, &announced)
            .await?;
        let meta = ObjectMeta::new(hex(&w.digests.md5), &w.attr, headers);
        self.publish(&w, &meta, w.parent, name, exclusive).await?;
        let sums = announced.answered(&w.digests);
        Ok(PutObjectOutput {
            e_tag: Some(ETag::Strong(meta.etag)),
            checksum_crc32: sums.checksum_crc32,
            checksum_crc32c: sums.checksum_crc32c,
            checksum_crc64nvme: sums.checksum_crc64nvme,
            checksum_sha1: sums.checksum_sha1,
            checksum_sha256: sums.checksum_sha256,
            ..Default::default()
        })
    }

    pub async fn get_object(&self, input: GetObjectInput) -> S3Result<GetObjectOutput> {
        let dir = self.bucket(&input.bucket).await?;
        let found = self.find(dir.ino, &parse_key(&input.key)?).await?;
        let d = Described::of(&found);
        conditions_of!(input).check(&d)?;
        let range = match &input.range {
            Some(r) => r.check(d.size).map_err(|_| s3_error!(InvalidRange))?,
            None => 0..d.size,
        };
        let content_range = input.range.is_some().then(|| {
            format!(
                "bytes {}-{}/{}",
                range.start,
                range.end.saturating_sub(1),
                d.size
            )
        });
        let body = if found.attr.kind == cairn_proto::pb::FileKind::Regular as i32 {
            self.read_stream(found.attr, range.clone()).await?
        } else {
            ReceiverStream::new(tokio::sync::mpsc::channel(1).1)
        };
        Ok(GetObjectOutput {
            body: Some(StreamingBlob::wrap(body)),
            accept_ranges: Some("bytes".into()),
            content_length: Some((range.end - range.start) as i64),
            content_range,
            content_type: Some(
                input
                    .response_content_type
                    .unwrap_or_else(|| d.content_type()),
            ),
            content_encoding: input
                .response_content_encoding
                .or(d.headers.content_encoding.clone()),
            content_disposition: input
                .response_content_disposition
                .or(d.headers.content_disposition.clone()),
            content_language: input
                .response_content_language
                .or(d.headers.content_language.clone()),
            cache_control: input
                .response_cache_control
                .or(d.headers.cache_control.clone()),
            expires: d.headers.expires.clone(),
            metadata: d.headers.user_metadata(),
            e_tag: Some(d.etag),
            last_modified: Some(d.last_modified),
            ..Default::default()
        })
    }

    pub async fn head_object(&self, input: HeadObjectInput) -> S3Result<HeadObjectOutput> {
        let dir = self.bucket(&input.bucket).await?;
        let found = self.find(dir.ino, &parse_key(&input.key)?).await?;
        let d = Described::of(&found);
        conditions_of!(input).check(&d)?;
        Ok(HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: Some(d.size as i64),
            content_type: Some(d.content_type()),
            content_encoding: d.headers.content_encoding.clone(),
            content_disposition: d.headers.content_disposition.clone(),
            content_language: d.headers.content_language.clone(),
            cache_control: d.headers.cache_control.clone(),
            expires: d.headers.expires.clone(),
            metadata: d.headers.user_metadata(),
            e_tag: Some(d.etag),
            last_modified: Some(d.last_modified),
            ..Default::default()
        })
    }

    /// Streams bytes `range` of the file `attr`, read ahead by one piece.
    pub async fn read_stream(
        &self,
        attr: cairn_proto::pb::Attr,
        range: Range<u64>,
    ) -> S3Result<ReceiverStream<Result<Bytes, std::io::Error>>> {
        let mut reader = self.client.reader(&attr).await.map_err(s3_err)?;
        // The object's data stays while it streams, even if it is overwritten
        // or deleted meanwhile.
        reader.hold().await.map_err(s3_err)?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let mut at = range.start;
            while at < range.end {
                let n = READ_PIECE.min((range.end - at) as usize);
                let piece = reader
                    .read_at(at, n)
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|b| {
                        if b.is_empty() {
                            Err(std::io::Error::other("the object shrank while being read"))
                        } else {
                            Ok(b)
                        }
                    });
                let stop = piece.is_err();
                if let Ok(b) = &piece {
                    at += b.len() as u64;
                }
                if tx.send(piece).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    /// Deletes one key; a key that is not there is not an error.
    pub async fn delete_key(&self, bucket: &str, key: &str) -> S3Result<()> {
        let dir = self.bucket(bucket).await?;
        let key = parse_key(key)?;
        let Some(parent) = self.find_dir(dir.ino, &key.dirs).await? else {
            return Ok(());
        };
        self.delete_in(parent.ino, &key).await?;
        self.prune_dirs(dir.ino, &key.dirs).await;
        Ok(())
    }

    /// Deletes `key` from its directory `parent` (already looked up), leaving
    /// the directories above it.
    async fn delete_in(&self, parent: u64, key: &KeyPath<'_>) -> S3Result<()> {
        match key.name {
            Some(name) => match self.client.meta.unlink(parent, name.as_bytes()).await {
                Ok(()) => Ok(()),
                Err(e)
                    if is_errno(&e, ENOENT)
                        || is_errno(&e, EISDIR)
                        || is_errno(&e, EPERM)
                        || is_errno(&e, ENOTDIR) =>
                {
                    Ok(())
                }
                Err(e) => Err(s3_err(e)),
            },
            None if key.dirs.is_empty() => Ok(()),
            None => match self
                .client
                .meta
                .removexattr(parent, crate::objmeta::XATTR)
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if is_errno(&e, cairn_proto::status::ENODATA) => Ok(()),
                Err(e) => Err(s3_err(e)),
            },
        }
    }

    /// DeleteObjects as one batch: the bucket and each distinct directory of
    /// the keys are looked up once, the deletes run `DELETE_PARALLEL` at a
    /// time (one metadata mutation each), and each directory that may have
    /// emptied is pruned once at the end. Errors are per key.
    pub async fn delete_objects(&self, input: DeleteObjectsInput) -> S3Result<DeleteObjectsOutput> {
        let bucket = self.bucket(&input.bucket).await?.ino;
        let quiet = input.delete.quiet.unwrap_or(false);
        let objects = input.delete.objects;
        let keys: Vec<S3Result<KeyPath<'_>>> = objects.iter().map(|o| parse_key(&o.key)).collect();
        // Streams below map indices, not references: a closure taking a
        // reference trips the Send check of the async trait.
        let dirs: Vec<&[&str]> = keys
            .iter()
            .filter_map(|k| k.as_ref().ok())
            .map(|k| k.dirs.as_slice())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let found: Vec<S3Result<Option<u64>>> = futures::stream::iter(0..dirs.len())
            .map(|i| {
                let d = dirs[i];
                async move { self.find_dir(bucket, d).await.map(|a| a.map(|a| a.ino)) }
            })
            .buffered(DELETE_PARALLEL)
            .collect()
            .await;
        let dir_of: HashMap<&[&str], usize> =
            dirs.iter().enumerate().map(|(i, d)| (*d, i)).collect();
        let results: Vec<S3Result<()>> = futures::stream::iter(0..keys.len())
            .map(|i| {
                let (key, found, dir_of) = (&keys[i], &found, &dir_of);
                async move {
                    let k = key.as_ref().map_err(copy_error)?;
                    match &found[dir_of[k.dirs.as_slice()]] {
                        Err(e) => Err(copy_error(e)),
                        // No such directory: no such key, which is no error.
                        Ok(None) => Ok(()),
                        Ok(Some(parent)) => self.delete_in(*parent, k).await,
                    }
                }
            })
            .buffered(DELETE_PARALLEL)
            .collect()
            .await;
        futures::stream::iter(0..dirs.len())
            .for_each_concurrent(DELETE_PARALLEL, |i| {
                let d = dirs[i];
                async move {
                    if !d.is_empty() {
                        self.prune_dirs(bucket, d).await;
                    }
                }
            })
            .await;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (o, r) in objects.iter().zip(results) {
            match r {
                Ok(()) if !quiet => deleted.push(DeletedObject {
                    key: Some(o.key.clone()),
                    ..Default::default()
                }),
                Ok(()) => {}
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_owned()),
                    key: Some(o.key.clone()),
                    message: e.message().map(str::to_owned),
                    version_id: None,
                }),
            }
        }
        Ok(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        })
    }

    /// The object a CopySource names, checked against the copy conditions.
    pub async fn copy_source(
        &self,
        source: &CopySource,
        conditions: Conditions<'_>,
    ) -> S3Result<(Found, Described)> {
        let CopySource::Bucket { bucket, key, .. } = source else {
            return Err(s3_error!(NotImplemented, "copy sources must be bucket/key"));
        };
        let dir = self.bucket(bucket).await?;
        let found = self.find(dir.ino, &parse_key(key)?).await?;
        if found.attr.kind != cairn_proto::pb::FileKind::Regular as i32 {
            return Err(s3_error!(InvalidRequest, "folders cannot be copied"));
        }
        let d = Described::of(&found);
        conditions.check(&d).map_err(|e| {
            // For copies every failed condition is 412.
            if *e.code() == S3ErrorCode::NotModified {
                s3_error!(PreconditionFailed)
            } else {
                e
            }
        })?;
        Ok((found, d))
    }

    pub async fn copy_object(&self, input: CopyObjectInput) -> S3Result<CopyObjectOutput> {
        let (src, d) = self
            .copy_source(&input.copy_source, copy_conditions_of!(input))
            .await?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|m| m.as_str() == MetadataDirective::REPLACE);
        let headers = if replace {
            headers_from!(input)
        } else {
            d.headers.clone()
        };
        let dir = self.bucket(&input.bucket).await?;
        let key = parse_key(&input.key)?;
        let Some(name) = key.name else {
            return Err(s3_error!(InvalidArgument, "cannot copy onto a folder key"));
        };
        let etag = d.etag.value().to_owned();
        let same = match self.find(dir.ino, &key).await {
            Ok(dst) => dst.attr.ino == src.attr.ino,
            Err(_) => false,
        };
        let attr = if same {
            if !replace {
                return Err(s3_error!(
                    InvalidRequest,
                    "copying an object onto itself needs the REPLACE metadata directive"
                ));
            }
            let meta = ObjectMeta::new(etag.clone(), &src.attr, headers);
            self.set_meta(src.attr.ino, &meta).await?;
            src.attr
        } else {
            let body = self.read_stream(src.attr, 0..d.size).await?;
            let w = self
                .write_temp(dir.ino, &key.dirs, body, false, &Announced::default())
                .await?;
            let meta = ObjectMeta::new(etag.clone(), &w.attr, headers);
            self.publish(&w, &meta, w.parent, name, false).await?;
            w.attr
        };
        Ok(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(timestamp(attr.mtime_ns)),
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}

/// The same error again, for each key that shares it (S3Error is not Clone).
fn copy_error(e: &s3s::S3Error) -> s3s::S3Error {
    match e.message() {
        Some(m) => s3s::S3Error::with_message(e.code().clone(), m.to_owned()),
        None => s3s::S3Error::new(e.code().clone()),
    }
}

/// A request body as a stream (none: empty).
pub fn body_or_empty(body: Option<StreamingBlob>) -> StreamingBlob {
    body.unwrap_or_else(|| {
        StreamingBlob::wrap(futures::stream::empty::<Result<Bytes, std::io::Error>>())
    })
}
