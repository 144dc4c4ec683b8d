//! Bucket operations: a bucket is a directory directly under the root.

use s3s::dto::*;
use s3s::s3_error;
use s3s::S3Result;

use cairn_proto::ids::ROOT_INO;
use cairn_proto::pb;
use cairn_proto::status::EEXIST;
use cairn_proto::status::ENOENT;
use cairn_proto::status::ENOTEMPTY;

use crate::error::is_errno;
use crate::error::s3_err;
use crate::names::check_bucket;
use crate::objmeta::timestamp;
use crate::Store;

impl Store {
    pub async fn list_buckets(&self) -> S3Result<Vec<Bucket>> {
        let entries = self
            .client
            .meta
            .readdir_with_attrs(ROOT_INO)
            .await
            .map_err(s3_err)?;
        let mut buckets = Vec::new();
        for e in entries {
            let Ok(name) = std::str::from_utf8(&e.name) else {
                continue;
            };
            if e.kind != pb::FileKind::Directory as i32 || check_bucket(name).is_err() {
                continue;
            }
            let attr = match e.attr {
                Some(a) => a,
                None => match self.client.meta.getattr(e.ino).await {
                    Ok(a) => a,
                    Err(_) => continue,
                },
            };
            buckets.push(Bucket {
                name: Some(name.to_owned()),
                // The directory's change time is the closest to a creation
                // date the namespace keeps.
                creation_date: Some(timestamp(attr.ctime_ns)),
                bucket_region: None,
            });
        }
        Ok(buckets)
    }

    pub async fn create_bucket(&self, bucket: &str) -> S3Result<()> {
        check_bucket(bucket)?;
        match self
            .client
            .meta
            .mkdir(ROOT_INO, bucket.as_bytes(), 0o755)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_errno(&e, EEXIST) => Err(s3_error!(BucketAlreadyOwnedByYou)),
            Err(e) => Err(s3_err(e)),
        }
    }

    /// Deletes an empty bucket (its unfinished multipart uploads go with it).
    pub async fn delete_bucket(&self, bucket: &str) -> S3Result<()> {
        let dir = self.bucket(bucket).await?;
        let (first, _) = self
            .client
            .meta
            .readdir_page(dir.ino, b"", 1, false)
            .await
            .map_err(s3_err)?;
        if !first.is_empty() {
            return Err(s3_error!(BucketNotEmpty));
        }
        self.abort_all_uploads(bucket).await?;
        match self.client.meta.rmdir(ROOT_INO, bucket.as_bytes()).await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, ENOTEMPTY) => Err(s3_error!(BucketNotEmpty)),
            Err(e) if is_errno(&e, ENOENT) => Err(s3_error!(NoSuchBucket)),
            Err(e) => Err(s3_err(e)),
        }
    }
}
