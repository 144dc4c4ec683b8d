//! Multipart uploads, staged in `/.cairn/uploads/<bucket>/<upload-id>/`: the
//! upload's directory carries its record (key, start time, the headers the
//! object will have) in the xattr `user.s3.upload`; each part is a file named
//! by its number (`00001`), written as blocks only and carrying its own MD5
//! record. A part uploaded again replaces the old one by rename.
//!
//! Completion copies no data: a new file in the upload directory receives the
//! listed parts' slices in order (metad's `Concat`, one Raft command, since
//! the parts and it share the directory's shard), gets the object record
//! (ETag = MD5 of the parts' MD5s, `-N`) and is renamed to the key; then the
//! emptied parts and the directory go.
//!
//! Completion is exclusive and idempotent without a lock: `Concat` is atomic
//! and leaves its sources empty, so of overlapping completions only the first
//! to concatenate receives the parts' bytes. Each completion checks that its
//! new file has exactly the size of the parts it listed and publishes nothing
//! otherwise; an emptied part (size 0, its record stale) also says another
//! completion took it. Such a loser, and a Complete retried after success,
//! answers from the published object's record, which names the upload it
//! came from: the same ETag, or `NoSuchUpload` when the key now holds
//! something else (or the other completion failed).

use futures::stream::StreamExt;
use futures::stream::TryStreamExt;
use s3s::crypto::Checksum;
use s3s::crypto::Md5;
use s3s::dto::*;
use s3s::s3_error;
use s3s::S3ErrorCode;
use s3s::S3Result;
use serde::Deserialize;
use serde::Serialize;

use cairn_proto::ids::ROOT_INO;
use cairn_proto::pb;
use cairn_proto::retry::retry;
use cairn_proto::retry::Backoff;
use cairn_proto::status::ENOENT;
use cairn_proto::status::ENOTEMPTY;

use crate::digest::Announced;
use crate::digest::Computed;
use crate::error::is_errno;
use crate::error::s3_err;
use crate::names::parse_key;
use crate::names::KeyPath;
use crate::names::SYSTEM_DIR;
use crate::names::UPLOADS_DIR;
use crate::object::body_or_empty;
use crate::object::copy_conditions_of;
use crate::objmeta::headers_from;
use crate::objmeta::hex;
use crate::objmeta::timestamp;
use crate::objmeta::Headers;
use crate::objmeta::ObjectMeta;
use crate::objmeta::XATTR;
use crate::Store;

const UPLOAD_XATTR: &[u8] = b"user.s3.upload";
/// S3's bounds: parts 1..=10000, each but the last at least 5 MiB.
const MAX_PART: i32 = 10_000;
const MIN_PART_BYTES: u64 = 5 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UploadRecord {
    key: String,
    initiated_ns: i64,
    headers: Headers,
}

/// An open upload.
struct Upload {
    dir: u64,
    record: UploadRecord,
}

/// A stored part.
struct StoredPart {
    number: i32,
    ino: u64,
    size: u64,
    etag: String,
    mtime_ns: i64,
}

/// How long a completion that lost the race to another waits for the
/// winner to publish before answering `NoSuchUpload`.
const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a completion did not publish: it did not get the parts' bytes.
enum Lost {
    /// The upload was completed by another request (or is being).
    ToAnother,
    Failed(s3s::S3Error),
}

fn check_upload_id(id: &str) -> S3Result<()> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(s3_error!(NoSuchUpload))
    }
}

fn check_part_number(n: i32) -> S3Result<()> {
    if (1..=MAX_PART).contains(&n) {
        Ok(())
    } else {
        Err(s3_error!(InvalidArgument, "part numbers are 1 to 10000"))
    }
}

fn part_name(n: i32) -> String {
    format!("{n:05}")
}

impl Store {
    /// `/.cairn/uploads/<bucket>`, made when `create`.
    async fn uploads_of(&self, bucket: &str, create: bool) -> S3Result<Option<u64>> {
        let path = [SYSTEM_DIR, UPLOADS_DIR, bucket];
        if create {
            return self.make_dirs(ROOT_INO, &path).await.map(Some);
        }
        Ok(self.find_dir(ROOT_INO, &path).await?.map(|a| a.ino))
    }

    async fn upload(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<Upload> {
        check_upload_id(upload_id)?;
        let Some(uploads) = self.uploads_of(bucket, false).await? else {
            return Err(s3_error!(NoSuchUpload));
        };
        let dir = match self.client.meta.lookup(uploads, upload_id.as_bytes()).await {
            Ok(a) => a.ino,
            Err(e) if is_errno(&e, ENOENT) => return Err(s3_error!(NoSuchUpload)),
            Err(e) => return Err(s3_err(e)),
        };
        let raw = self
            .client
            .meta
            .getxattr(dir, UPLOAD_XATTR)
            .await
            .map_err(|_| s3_error!(NoSuchUpload))?;
        let record: UploadRecord =
            serde_json::from_slice(&raw).map_err(|_| s3_error!(NoSuchUpload))?;
        if record.key != key {
            return Err(s3_error!(NoSuchUpload, "the upload is for another key"));
        }
        Ok(Upload { dir, record })
    }

    /// The parts stored in an upload's directory, by number, and whether a
    /// part was emptied by a completion (size 0, its record stale).
    async fn parts(&self, dir: u64) -> S3Result<(Vec<StoredPart>, bool)> {
        let mut parts = Vec::new();
        let mut emptied = false;
        let mut after = Vec::new();
        loop {
            let (page, more) = self
                .client
                .meta
                .readdir_page_xattr(dir, &after, 1000, true, XATTR)
                .await
                .map_err(s3_err)?;
            if let Some(last) = page.last() {
                after = last.name.to_vec();
            }
            for e in page {
                let Some(number) = std::str::from_utf8(&e.name)
                    .ok()
                    .and_then(|n| n.parse::<i32>().ok())
                else {
                    continue;
                };
                let (Some(attr), Some(raw)) = (e.attr, e.xattr) else {
                    continue;
                };
                match ObjectMeta::decode_valid(&raw, &attr) {
                    Some(meta) => parts.push(StoredPart {
                        number,
                        ino: attr.ino,
                        size: attr.size,
                        etag: meta.etag,
                        mtime_ns: attr.mtime_ns,
                    }),
                    None => emptied |= attr.size == 0,
                }
            }
            if !more {
                return Ok((parts, emptied));
            }
        }
    }

    pub async fn create_multipart_upload(
        &self,
        input: CreateMultipartUploadInput,
    ) -> S3Result<CreateMultipartUploadOutput> {
        self.bucket(&input.bucket).await?;
        if parse_key(&input.key)?.name.is_none() {
            return Err(s3_error!(
                InvalidArgument,
                "a folder key cannot be uploaded in parts"
            ));
        }
        let upload_id = format!("{:032x}", rand::random::<u128>());
        let uploads = self
            .uploads_of(&input.bucket, true)
            .await?
            .expect("created");
        let dir = self
            .client
            .meta
            .mkdir(uploads, upload_id.as_bytes(), 0o700)
            .await
            .map_err(s3_err)?;
        let record = UploadRecord {
            key: input.key.clone(),
            initiated_ns: dir.mtime_ns,
            headers: headers_from!(input),
        };
        let raw = serde_json::to_vec(&record).expect("upload record serializes");
        self.client
            .meta
            .setxattr(dir.ino, UPLOAD_XATTR, &raw, 0)
            .await
            .map_err(s3_err)?;
        Ok(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        })
    }

    /// Stores a part's bytes, checks the digests the request `announced`,
    /// and publishes it under its number.
    async fn store_part<S, E>(
        &self,
        upload: &Upload,
        number: i32,
        body: S,
        announced: &Announced,
    ) -> S3Result<(String, pb::Attr, Computed)>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let w = self
            .write_temp(upload.dir, &[], body, true, announced)
            .await?;
        let meta = ObjectMeta::new(hex(&w.digests.md5), &w.attr, Headers::default());
        self.publish(&w, &meta, upload.dir, &part_name(number), false)
            .await?;
        Ok((meta.etag, w.attr, w.digests))
    }

    pub async fn upload_part(
        &self,
        input: UploadPartInput,
        announced: Announced,
    ) -> S3Result<UploadPartOutput> {
        check_part_number(input.part_number)?;
        let upload = self
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let body = body_or_empty(input.body);
        let (etag, _, digests) = self
            .store_part(&upload, input.part_number, body, &announced)
            .await?;
        let sums = announced.answered(&digests);
        Ok(UploadPartOutput {
            e_tag: Some(ETag::Strong(etag)),
            checksum_crc32: sums.checksum_crc32,
            checksum_crc32c: sums.checksum_crc32c,
            checksum_crc64nvme: sums.checksum_crc64nvme,
            checksum_sha1: sums.checksum_sha1,
            checksum_sha256: sums.checksum_sha256,
            ..Default::default()
        })
    }

    pub async fn upload_part_copy(
        &self,
        input: UploadPartCopyInput,
    ) -> S3Result<UploadPartCopyOutput> {
        check_part_number(input.part_number)?;
        let upload = self
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let (src, d) = self
            .copy_source(&input.copy_source, copy_conditions_of!(input))
            .await?;
        let range = match &input.copy_source_range {
            None => 0..d.size,
            Some(r) => parse_copy_range(r, d.size)?,
        };
        let body = self.read_stream(src.attr, range).await?;
        let (etag, attr, _) = self
            .store_part(&upload, input.part_number, body, &Announced::default())
            .await?;
        Ok(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(timestamp(attr.mtime_ns)),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    pub async fn list_parts(&self, input: ListPartsInput) -> S3Result<ListPartsOutput> {
        let upload = self
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let marker = input.part_number_marker.unwrap_or(0);
        let max = input.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
        let mut parts: Vec<StoredPart> = self
            .parts(upload.dir)
            .await?
            .0
            .into_iter()
            .filter(|p| p.number > marker)
            .collect();
        let truncated = parts.len() > max;
        parts.truncate(max);
        Ok(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            part_number_marker: Some(marker),
            next_part_number_marker: parts.last().map(|p| p.number),
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            parts: Some(
                parts
                    .into_iter()
                    .map(|p| Part {
                        e_tag: Some(ETag::Strong(p.etag)),
                        last_modified: Some(timestamp(p.mtime_ns)),
                        part_number: Some(p.number),
                        size: Some(p.size as i64),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        })
    }

    pub async fn complete_multipart_upload(
        &self,
        input: CompleteMultipartUploadInput,
    ) -> S3Result<CompleteMultipartUploadOutput> {
        let dir = self.bucket(&input.bucket).await?;
        let key = parse_key(&input.key)?;
        let Some(name) = key.name else {
            return Err(s3_error!(
                InvalidArgument,
                "a folder key cannot be uploaded in parts"
            ));
        };
        let exclusive = input.if_none_match.as_ref().is_some_and(|c| c.is_any());
        let asked = input
            .multipart_upload
            .and_then(|m| m.parts)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| s3_error!(MalformedXML, "the upload lists no parts"))?;
        let answer = |etag: String| CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        };
        let upload = match self
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await
        {
            Ok(u) => u,
            // Perhaps completed already: a retry answers as the first did.
            Err(e) if *e.code() == S3ErrorCode::NoSuchUpload => {
                return self
                    .completed_as(&input.bucket, dir.ino, &key, &input.upload_id)
                    .await
                    .map(answer)
            }
            Err(e) => return Err(e),
        };
        let (stored, emptied) = self.parts(upload.dir).await?;
        let chosen = match choose_parts(&asked, &stored) {
            Ok(c) => c,
            // A part was taken by another completion of this upload.
            Err(_) if emptied => {
                return self
                    .completed_as(&input.bucket, dir.ino, &key, &input.upload_id)
                    .await
                    .map(answer)
            }
            Err(e) => {
                // Completed already, but its directory not yet removed.
                return match self.published_etag(dir.ino, &key, &input.upload_id).await {
                    Some(etag) => Ok(answer(etag)),
                    None => Err(e),
                };
            }
        };
        let (w, mut meta) = match self.concat_parts(&upload, &chosen).await {
            Ok(done) => done,
            Err(Lost::ToAnother) => {
                return self
                    .completed_as(&input.bucket, dir.ino, &key, &input.upload_id)
                    .await
                    .map(answer)
            }
            Err(Lost::Failed(e)) => return Err(e),
        };
        meta.upload_id = Some(input.upload_id.clone());
        let parent = match self.make_dirs(dir.ino, &key.dirs).await {
            Ok(p) => p,
            Err(e) => {
                self.discard(w.parent, &w.temp).await;
                return Err(e);
            }
        };
        self.publish(&w, &meta, parent, name, exclusive).await?;
        // The object is published: what is left of the upload is litter, and a
        // retry of this request answers from the object's record.
        if let Err(e) = self
            .remove_upload(&input.bucket, &input.upload_id, upload.dir)
            .await
        {
            tracing::warn!(upload = %input.upload_id, "removing a completed upload: {e}");
        }
        Ok(answer(meta.etag))
    }

    /// Moves the chosen parts' bytes into a new temporary file of the upload
    /// and stamps its record; `Lost::ToAnother` when the file did not get
    /// exactly the parts' bytes (a concurrent completion took them first), and
    /// then nothing is left behind.
    async fn concat_parts(
        &self,
        upload: &Upload,
        chosen: &Chosen,
    ) -> Result<(crate::namespace::Written, ObjectMeta), Lost> {
        let w = self
            .write_temp(
                upload.dir,
                &[],
                futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>(),
                true,
                &Announced::default(),
            )
            .await
            .map_err(|e| {
                // The upload's directory went: completed meanwhile.
                if *e.code() == S3ErrorCode::NoSuchKey {
                    Lost::ToAnother
                } else {
                    Lost::Failed(e)
                }
            })?;
        let attr = match self
            .client
            .meta
            .concat(w.attr.ino, chosen.inos.clone())
            .await
        {
            Ok(a) => a,
            Err(e) => {
                self.discard(w.parent, &w.temp).await;
                // A part gone: the upload was completed (and removed) meanwhile.
                return Err(if is_errno(&e, ENOENT) {
                    Lost::ToAnother
                } else {
                    Lost::Failed(s3_err(e))
                });
            }
        };
        if attr.size != chosen.size {
            self.discard(w.parent, &w.temp).await;
            return Err(Lost::ToAnother);
        }
        let meta = ObjectMeta::new(chosen.etag.clone(), &attr, upload.record.headers.clone());
        Ok((w, meta))
    }

    /// The ETag of the object a completion of `upload_id` published at `key`,
    /// waiting (up to `JOIN_WAIT`) while the upload is still being completed;
    /// `NoSuchUpload` if the key holds no object of that upload.
    async fn completed_as(
        &self,
        bucket_name: &str,
        bucket: u64,
        key: &KeyPath<'_>,
        upload_id: &str,
    ) -> S3Result<String> {
        let backoff = Backoff {
            first: std::time::Duration::from_millis(10),
            max: std::time::Duration::from_millis(200),
            deadline: JOIN_WAIT,
        };
        // Err(true): not published yet, the upload still there; Err(false): settled.
        let settled = retry(
            backoff,
            |in_progress: &bool| *in_progress,
            |_| async move {
                match self.published_etag(bucket, key, upload_id).await {
                    Some(etag) => Ok(etag),
                    None => Err(self.upload_dir_exists(bucket_name, upload_id).await),
                }
            },
        )
        .await;
        settled.map_err(|_| s3_error!(NoSuchUpload))
    }

    /// The ETag of the object at `key`, if a completion of `upload_id` made it.
    async fn published_etag(
        &self,
        bucket: u64,
        key: &KeyPath<'_>,
        upload_id: &str,
    ) -> Option<String> {
        let meta = self.find(bucket, key).await.ok()?.meta?;
        (meta.upload_id.as_deref() == Some(upload_id)).then_some(meta.etag)
    }

    /// Whether the upload's directory is still there (on doubt: yes).
    async fn upload_dir_exists(&self, bucket: &str, upload_id: &str) -> bool {
        match self.uploads_of(bucket, false).await {
            Ok(Some(uploads)) => !matches!(
                self.client.meta.lookup(uploads, upload_id.as_bytes()).await,
                Err(e) if is_errno(&e, ENOENT)
            ),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    pub async fn abort_multipart_upload(&self, input: AbortMultipartUploadInput) -> S3Result<()> {
        let upload = self
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
        self.remove_upload(&input.bucket, &input.upload_id, upload.dir)
            .await
    }

    /// Removes an upload's directory with what is left in it. A concurrent
    /// completion that lost may add a temporary file meanwhile (and remove
    /// it again): then the directory is emptied again.
    async fn remove_upload(&self, bucket: &str, upload_id: &str, dir: u64) -> S3Result<()> {
        let Some(uploads) = self.uploads_of(bucket, false).await? else {
            return Ok(());
        };
        let backoff = Backoff {
            first: std::time::Duration::from_millis(5),
            max: std::time::Duration::from_millis(100),
            deadline: std::time::Duration::from_secs(5),
        };
        let not_empty = |e: &cairn_client::ClientError| is_errno(e, ENOTEMPTY);
        let removed = retry(backoff, not_empty, |_| async move {
            let entries = self.client.meta.readdir(dir).await?;
            futures::stream::iter(entries)
                .map(|e| async move {
                    match self.client.meta.unlink(dir, &e.name).await {
                        Err(err) if !is_errno(&err, ENOENT) => Err(err),
                        _ => Ok(()),
                    }
                })
                .buffer_unordered(16)
                .try_collect::<Vec<()>>()
                .await?;
            self.client.meta.rmdir(uploads, upload_id.as_bytes()).await
        })
        .await;
        match removed {
            Err(e) if !is_errno(&e, ENOENT) => Err(s3_err(e)),
            _ => Ok(()),
        }
    }

    /// Aborts every upload of a bucket (when it is deleted).
    pub async fn abort_all_uploads(&self, bucket: &str) -> S3Result<()> {
        let Some(uploads) = self.uploads_of(bucket, false).await? else {
            return Ok(());
        };
        for e in self.client.meta.readdir(uploads).await.map_err(s3_err)? {
            let id = String::from_utf8_lossy(&e.name).into_owned();
            self.remove_upload(bucket, &id, e.ino).await?;
        }
        let Some(system) = self.find_dir(ROOT_INO, &[SYSTEM_DIR, UPLOADS_DIR]).await? else {
            return Ok(());
        };
        match self.client.meta.rmdir(system.ino, bucket.as_bytes()).await {
            Err(e) if !is_errno(&e, ENOENT) => Err(s3_err(e)),
            _ => Ok(()),
        }
    }

    pub async fn list_multipart_uploads(
        &self,
        input: ListMultipartUploadsInput,
    ) -> S3Result<ListMultipartUploadsOutput> {
        self.bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = input.max_uploads.unwrap_or(1000).clamp(1, 1000) as usize;
        let mut uploads = Vec::new();
        if let Some(dir) = self.uploads_of(&input.bucket, false).await? {
            for e in self.client.meta.readdir(dir).await.map_err(s3_err)? {
                let Ok(raw) = self.client.meta.getxattr(e.ino, UPLOAD_XATTR).await else {
                    continue;
                };
                let Ok(record) = serde_json::from_slice::<UploadRecord>(&raw) else {
                    continue;
                };
                if record.key.starts_with(&prefix) {
                    uploads.push((record, String::from_utf8_lossy(&e.name).into_owned()));
                }
            }
        }
        uploads.sort_by(|a, b| {
            (&a.0.key, a.0.initiated_ns, &a.1).cmp(&(&b.0.key, b.0.initiated_ns, &b.1))
        });
        if let Some(km) = &input.key_marker {
            let id_marker = input.upload_id_marker.clone().unwrap_or_default();
            uploads.retain(|(r, id)| {
                r.key > *km || (r.key == *km && !id_marker.is_empty() && *id > id_marker)
            });
        }
        let truncated = uploads.len() > max;
        uploads.truncate(max);
        let (next_key, next_id) = match uploads.last() {
            Some((r, id)) if truncated => (Some(r.key.clone()), Some(id.clone())),
            _ => (None, None),
        };
        Ok(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            next_key_marker: next_key,
            next_upload_id_marker: next_id,
            uploads: Some(
                uploads
                    .into_iter()
                    .map(|(r, id)| MultipartUpload {
                        key: Some(r.key),
                        upload_id: Some(id),
                        initiated: Some(timestamp(r.initiated_ns)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        })
    }
}

/// The stored parts a completion lists, checked, with what it will publish.
struct Chosen {
    /// The parts' inodes, in order.
    inos: Vec<u64>,
    /// Their total size: what the completed object must hold.
    size: u64,
    /// MD5 of the parts' MD5s, `-N`.
    etag: String,
}

/// Checks the parts a completion asks for against the stored ones: numbers
/// ascending, each uploaded with the ETag given, all but the last at least
/// 5 MiB.
fn choose_parts(asked: &[CompletedPart], stored: &[StoredPart]) -> S3Result<Chosen> {
    let mut inos = Vec::with_capacity(asked.len());
    let mut size = 0;
    let mut md5s = Md5::new();
    let mut last = 0;
    for (i, p) in asked.iter().enumerate() {
        let number = p
            .part_number
            .ok_or_else(|| s3_error!(InvalidPart, "a part has no number"))?;
        if number <= last {
            return Err(s3_error!(InvalidPartOrder));
        }
        last = number;
        let part = stored
            .iter()
            .find(|s| s.number == number)
            .ok_or_else(|| s3_error!(InvalidPart, "part {number} was not uploaded"))?;
        if p.e_tag.as_ref().is_some_and(|e| e.value() != part.etag) {
            return Err(s3_error!(InvalidPart, "part {number} has another ETag"));
        }
        if i + 1 < asked.len() && part.size < MIN_PART_BYTES {
            return Err(s3_error!(EntityTooSmall, "part {number} is under 5 MiB"));
        }
        md5s.update(&unhex(&part.etag).ok_or_else(|| s3_error!(InternalError, "bad part record"))?);
        inos.push(part.ino);
        size += part.size;
    }
    Ok(Chosen {
        etag: format!("{}-{}", hex(&md5s.finalize()), inos.len()),
        inos,
        size,
    })
}

/// `bytes=first-last` of a copy source of `size` bytes.
fn parse_copy_range(r: &str, size: u64) -> S3Result<std::ops::Range<u64>> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "x-amz-copy-source-range must be bytes=first-last within the source"
        )
    };
    let (a, b) = r
        .strip_prefix("bytes=")
        .and_then(|s| s.split_once('-'))
        .ok_or_else(bad)?;
    let (first, last): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if first > last || last >= size {
        return Err(bad());
    }
    Ok(first..last + 1)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
