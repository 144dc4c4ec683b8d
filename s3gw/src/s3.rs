//! The `s3s::S3` trait: routes each S3 operation to the store and shapes the
//! listing answers (v1 markers, v2 continuation tokens, URL encoding).

use s3s::dto::*;
use s3s::s3_error;
use s3s::S3Request;
use s3s::S3Response;
use s3s::S3Result;
use s3s::S3;

use crate::digest::checksums_of;
use crate::digest::Announced;
use crate::list::Item;
use crate::list::Listing;
use crate::list::Query;
use crate::Store;

fn ok<T>(output: T) -> S3Result<S3Response<T>> {
    Ok(S3Response::new(output))
}

/// S3's per-request listing bound.
const MAX_KEYS: i32 = 1000;

#[async_trait::async_trait]
impl S3 for Store {
    async fn list_buckets(
        &self,
        _: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        ok(ListBucketsOutput {
            buckets: Some(Store::list_buckets(self).await?),
            owner: Some(self.owner.clone()),
            ..Default::default()
        })
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        Store::create_bucket(self, &req.input.bucket).await?;
        ok(CreateBucketOutput {
            location: Some(format!("/{}", req.input.bucket)),
        })
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        Store::delete_bucket(self, &req.input.bucket).await?;
        ok(DeleteBucketOutput {})
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket(&req.input.bucket).await?;
        ok(HeadBucketOutput::default())
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.bucket(&req.input.bucket).await?;
        ok(GetBucketLocationOutput::default())
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let announced = Announced::new(
            req.input.content_md5.as_deref(),
            checksums_of!(req.input),
            &req.headers,
            req.trailing_headers.clone(),
        )?;
        ok(Store::put_object(self, req.input, announced).await?)
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        ok(Store::get_object(self, req.input).await?)
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        ok(Store::head_object(self, req.input).await?)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.delete_key(&req.input.bucket, &req.input.key).await?;
        ok(DeleteObjectOutput::default())
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        ok(Store::delete_objects(self, req.input).await?)
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        ok(Store::copy_object(self, req.input).await?)
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let i = req.input;
        let dir = self.bucket(&i.bucket).await?;
        let max = max_keys(i.max_keys)?;
        let listing = self
            .list(
                dir.ino,
                &Query {
                    prefix: i.prefix.as_deref().unwrap_or(""),
                    delimiter: i.delimiter.as_deref(),
                    after: i.marker.as_deref().filter(|m| !m.is_empty()),
                    max,
                },
            )
            .await?;
        let url = is_url(&i.encoding_type);
        let next_marker = listing
            .truncated
            .then(|| listing.items.last().map(|it| enc(url, it.key())))
            .flatten();
        // ListObjects (v1) names every object's owner.
        let (contents, common_prefixes) = split(&listing, url, Some(&self.owner));
        ok(ListObjectsOutput {
            name: Some(i.bucket),
            prefix: Some(enc(url, i.prefix.as_deref().unwrap_or(""))),
            marker: i.marker.map(|m| enc(url, &m)),
            delimiter: i.delimiter.map(|d| enc(url, &d)),
            max_keys: Some(max as i32),
            is_truncated: Some(listing.truncated),
            next_marker,
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
            encoding_type: i.encoding_type,
            ..Default::default()
        })
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let i = req.input;
        let dir = self.bucket(&i.bucket).await?;
        let max = max_keys(i.max_keys)?;
        let token = match &i.continuation_token {
            Some(t) => Some(decode_token(t)?),
            None => None,
        };
        let after = token
            .as_deref()
            .or(i.start_after.as_deref())
            .filter(|a| !a.is_empty());
        let listing = self
            .list(
                dir.ino,
                &Query {
                    prefix: i.prefix.as_deref().unwrap_or(""),
                    delimiter: i.delimiter.as_deref(),
                    after,
                    max,
                },
            )
            .await?;
        let url = is_url(&i.encoding_type);
        let next = listing
            .truncated
            .then(|| listing.items.last().map(|it| encode_token(it.key())))
            .flatten();
        let owner = i.fetch_owner.unwrap_or(false).then_some(&self.owner);
        let (contents, common_prefixes) = split(&listing, url, owner);
        ok(ListObjectsV2Output {
            name: Some(i.bucket),
            prefix: Some(enc(url, i.prefix.as_deref().unwrap_or(""))),
            delimiter: i.delimiter.map(|d| enc(url, &d)),
            max_keys: Some(max as i32),
            key_count: Some(listing.items.len() as i32),
            continuation_token: i.continuation_token,
            next_continuation_token: next,
            start_after: i.start_after.map(|s| enc(url, &s)),
            is_truncated: Some(listing.truncated),
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
            encoding_type: i.encoding_type,
            ..Default::default()
        })
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        ok(Store::create_multipart_upload(self, req.input).await?)
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let announced = Announced::new(
            req.input.content_md5.as_deref(),
            checksums_of!(req.input),
            &req.headers,
            req.trailing_headers.clone(),
        )?;
        ok(Store::upload_part(self, req.input, announced).await?)
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        ok(Store::upload_part_copy(self, req.input).await?)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        ok(Store::complete_multipart_upload(self, req.input).await?)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        Store::abort_multipart_upload(self, req.input).await?;
        ok(AbortMultipartUploadOutput::default())
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        ok(Store::list_parts(self, req.input).await?)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        ok(Store::list_multipart_uploads(self, req.input).await?)
    }
}

fn max_keys(asked: Option<i32>) -> S3Result<usize> {
    match asked {
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys must not be negative")),
        Some(n) => Ok(n.min(MAX_KEYS) as usize),
        None => Ok(MAX_KEYS as usize),
    }
}

fn split(listing: &Listing, url: bool, owner: Option<&Owner>) -> (Vec<Object>, Vec<CommonPrefix>) {
    let mut contents = Vec::new();
    let mut prefixes = Vec::new();
    for item in &listing.items {
        match item {
            Item::Object {
                key,
                size,
                etag,
                last_modified,
            } => contents.push(Object {
                key: Some(enc(url, key)),
                size: Some(*size as i64),
                e_tag: Some(etag.clone()),
                last_modified: Some(last_modified.clone()),
                storage_class: Some(ObjectStorageClass::from_static(
                    ObjectStorageClass::STANDARD,
                )),
                owner: owner.cloned(),
                ..Default::default()
            }),
            Item::Prefix(p) => prefixes.push(CommonPrefix {
                prefix: Some(enc(url, p)),
            }),
        }
    }
    (contents, prefixes)
}

fn is_url(e: &Option<EncodingType>) -> bool {
    e.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL)
}

/// A key as the answer carries it: percent-encoded when the client asked for
/// `encoding-type=url` (everything but unreserved characters and `/`).
fn enc(url: bool, s: &str) -> String {
    if !url {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Continuation tokens are the last key answered, base64url-encoded.
fn encode_token(key: &str) -> String {
    base64_simd::URL_SAFE_NO_PAD.encode_to_string(key)
}

fn decode_token(token: &str) -> S3Result<String> {
    base64_simd::URL_SAFE_NO_PAD
        .decode_to_vec(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| s3_error!(InvalidArgument, "invalid continuation token"))
}
