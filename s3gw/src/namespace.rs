//! The gateway's moves in the namespace: finding buckets, directories and
//! objects, creating and pruning directories, and writing a request body into
//! a hidden temporary file of the target directory that a rename then
//! publishes: readers see the old object or the new one, never a part, and an
//! interrupted or refused upload leaves nothing behind.

use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;
use s3s::s3_error;
use s3s::S3Result;

use cairn_proto::ids::ROOT_INO;
use cairn_proto::pb;
use cairn_proto::status::EEXIST;
use cairn_proto::status::ENODATA;
use cairn_proto::status::ENOENT;
use cairn_proto::status::ENOTEMPTY;

use crate::digest::Announced;
use crate::digest::Computed;
use crate::error::body_error;
use crate::error::conflict;
use crate::error::is_errno;
use crate::error::s3_err;
use crate::names::KeyPath;
use crate::names::TEMP_PREFIX;
use crate::objmeta::ObjectMeta;
use crate::objmeta::XATTR;
use crate::Store;

/// An object found in the namespace.
pub struct Found {
    /// The directory holding it (for a folder object: the folder itself).
    pub parent: u64,
    pub attr: pb::Attr,
    /// Its valid record, if it has one.
    pub meta: Option<ObjectMeta>,
}

/// A request body stored in a temporary file.
pub struct Written {
    pub parent: u64,
    pub temp: String,
    pub attr: pb::Attr,
    /// Its MD5 (the ETag) and the checksums the request announced.
    pub digests: Computed,
}

impl Store {
    /// The directory of `bucket`.
    pub async fn bucket(&self, bucket: &str) -> S3Result<pb::Attr> {
        crate::names::check_bucket(bucket)?;
        match self.client.meta.lookup(ROOT_INO, bucket.as_bytes()).await {
            Ok(attr) if attr.kind == pb::FileKind::Directory as i32 => Ok(attr),
            Ok(_) => Err(s3_error!(NoSuchBucket)),
            Err(e) if is_errno(&e, ENOENT) => Err(s3_error!(NoSuchBucket)),
            Err(e) => Err(s3_err(e)),
        }
    }

    /// The directory `dirs` below `from`, if it exists (and is a directory all
    /// the way down).
    pub async fn find_dir(&self, from: u64, dirs: &[&str]) -> S3Result<Option<pb::Attr>> {
        let mut at = self.client.meta.getattr(from).await.map_err(s3_err)?;
        for d in dirs {
            match self.client.meta.lookup(at.ino, d.as_bytes()).await {
                Ok(attr) if attr.kind == pb::FileKind::Directory as i32 => at = attr,
                Ok(_) => return Ok(None),
                Err(e) if is_errno(&e, ENOENT) => return Ok(None),
                Err(e) => return Err(s3_err(e)),
            }
        }
        Ok(Some(at))
    }

    /// Creates the directories `dirs` below `from` as needed; answers the last.
    pub async fn make_dirs(&self, from: u64, dirs: &[&str]) -> S3Result<u64> {
        let mut at = from;
        for d in dirs {
            let name = d.as_bytes();
            let attr = match self.client.meta.lookup(at, name).await {
                Ok(attr) => attr,
                Err(e) if is_errno(&e, ENOENT) => {
                    match self.client.meta.mkdir(at, name, 0o755).await {
                        Ok(attr) => attr,
                        Err(e) if is_errno(&e, EEXIST) => {
                            self.client.meta.lookup(at, name).await.map_err(s3_err)?
                        }
                        Err(e) => return Err(s3_err(e)),
                    }
                }
                Err(e) => return Err(s3_err(e)),
            };
            if attr.kind != pb::FileKind::Directory as i32 {
                return Err(conflict(&format!("{d:?} is an object, not a prefix")));
            }
            at = attr.ino;
        }
        Ok(at)
    }

    /// The object at `key` of the bucket whose directory is `bucket`; a
    /// folder key names a directory that was created as a folder object.
    pub async fn find(&self, bucket: u64, key: &KeyPath<'_>) -> S3Result<Found> {
        let Some(dir) = self.find_dir(bucket, &key.dirs).await? else {
            return Err(s3_error!(NoSuchKey));
        };
        let (parent, attr) = match key.name {
            None if key.dirs.is_empty() => return Err(s3_error!(NoSuchKey)),
            None => (dir.ino, dir),
            Some(name) => match self.client.meta.lookup(dir.ino, name.as_bytes()).await {
                Ok(attr) => (dir.ino, attr),
                Err(e) if is_errno(&e, ENOENT) => return Err(s3_error!(NoSuchKey)),
                Err(e) => return Err(s3_err(e)),
            },
        };
        let wanted = if key.name.is_some() {
            pb::FileKind::Regular
        } else {
            pb::FileKind::Directory
        };
        if attr.kind != wanted as i32 {
            return Err(s3_error!(NoSuchKey));
        }
        let meta = self.meta_of(&attr).await?;
        if key.name.is_none() && meta.is_none() {
            // A directory that was never made a folder object is only a prefix.
            return Err(s3_error!(NoSuchKey));
        }
        Ok(Found { parent, attr, meta })
    }

    /// The valid record of the file `attr`, if any.
    pub async fn meta_of(&self, attr: &pb::Attr) -> S3Result<Option<ObjectMeta>> {
        match self.client.meta.getxattr(attr.ino, XATTR).await {
            Ok(raw) => Ok(ObjectMeta::decode_valid(&raw, attr)),
            Err(e) if is_errno(&e, ENODATA) || is_errno(&e, ENOENT) => Ok(None),
            Err(e) => Err(s3_err(e)),
        }
    }

    pub async fn set_meta(&self, ino: u64, meta: &ObjectMeta) -> S3Result<()> {
        self.client
            .meta
            .setxattr(ino, XATTR, &meta.encode(), 0)
            .await
            .map_err(s3_err)
    }

    /// Stores `body` in a new temporary file of the directory `dirs` below
    /// `from` (created as needed), computing its MD5 and checking the digests
    /// the request `announced` once the body has ended; `blocks_only` keeps
    /// even a small body out of the inode (for parts, whose slices a multipart
    /// completion moves). Nothing is left behind on failure, a digest
    /// mismatch included.
    pub async fn write_temp<S, E>(
        &self,
        from: u64,
        dirs: &[&str],
        body: S,
        blocks_only: bool,
        announced: &Announced,
    ) -> S3Result<Written>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let temp = format!("{TEMP_PREFIX}put-{:016x}", rand::random::<u64>());
        // A concurrent delete may prune the directory between its creation
        // and ours: then create it again.
        let mut attempts = 0;
        let (parent, attr) = loop {
            let parent = self.make_dirs(from, dirs).await?;
            match self
                .client
                .meta
                .create(parent, temp.as_bytes(), 0o644, true)
                .await
            {
                Ok(attr) => break (parent, attr),
                Err(e) if is_errno(&e, ENOENT) && attempts < 3 => attempts += 1,
                Err(e) => return Err(s3_err(e)),
            }
        };
        match self.fill(attr, body, blocks_only, announced).await {
            Ok((attr, digests)) => Ok(Written {
                parent,
                temp,
                attr,
                digests,
            }),
            Err(e) => {
                self.discard(parent, &temp).await;
                Err(e)
            }
        }
    }

    async fn fill<S, E>(
        &self,
        attr: pb::Attr,
        mut body: S,
        blocks_only: bool,
        announced: &Announced,
    ) -> S3Result<(pb::Attr, Computed)>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut writer = self.client.writer(attr.ino).await.map_err(s3_err)?;
        if blocks_only {
            writer = writer.without_inline();
        }
        let mut digester = announced.digester();
        let mut offset = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| body_error(&e))?;
            offset += chunk.len() as u64;
            if offset > self.max_object_bytes {
                return Err(s3_error!(EntityTooLarge));
            }
            digester.update(&chunk);
            writer
                .write_at(offset - chunk.len() as u64, &chunk)
                .await
                .map_err(s3_err)?;
        }
        let attr = writer.close().await.map_err(s3_err)?.unwrap_or(attr);
        let digests = digester.finalize();
        announced.verify(&digests)?;
        Ok((attr, digests))
    }

    /// Stores `meta` on a temporary file and moves it to `name` in `parent`,
    /// replacing what is there unless `exclusive` (then an existing object is
    /// 412). On failure the temporary file is removed.
    pub async fn publish(
        &self,
        w: &Written,
        meta: &ObjectMeta,
        parent: u64,
        name: &str,
        exclusive: bool,
    ) -> S3Result<()> {
        if let Err(e) = self.set_meta(w.attr.ino, meta).await {
            self.discard(w.parent, &w.temp).await;
            return Err(e);
        }
        let mode = if exclusive {
            pb::RenameMode::Noreplace
        } else {
            pb::RenameMode::Replace
        };
        let moved = self
            .client
            .meta
            .rename(w.parent, w.temp.as_bytes(), parent, name.as_bytes(), mode)
            .await;
        match moved {
            Ok(()) => Ok(()),
            Err(e) => {
                self.discard(w.parent, &w.temp).await;
                if exclusive && is_errno(&e, EEXIST) {
                    Err(s3_error!(PreconditionFailed, "the object already exists"))
                } else {
                    Err(s3_err(e))
                }
            }
        }
    }

    /// Removes a temporary file, best effort (a leftover is hidden and
    /// harmless).
    pub async fn discard(&self, parent: u64, temp: &str) {
        if let Err(e) = self.client.meta.unlink(parent, temp.as_bytes()).await {
            tracing::warn!("removing temporary file {temp}: {e}");
        }
    }

    /// Removes the directories `dirs` below `bucket` from the deepest up while
    /// they are empty and not folder objects (S3 has no empty prefixes).
    pub async fn prune_dirs(&self, bucket: u64, dirs: &[&str]) {
        for depth in (1..=dirs.len()).rev() {
            let Ok(Some(parent)) = self.find_dir(bucket, &dirs[..depth - 1]).await else {
                return;
            };
            let name = dirs[depth - 1].as_bytes();
            if let Ok(dir) = self.client.meta.lookup(parent.ino, name).await {
                if matches!(self.meta_of(&dir).await, Ok(Some(_)) | Err(_)) {
                    return;
                }
            }
            match self.client.meta.rmdir(parent.ino, name).await {
                Ok(()) => {}
                Err(e) if is_errno(&e, ENOTEMPTY) || is_errno(&e, ENOENT) => return,
                Err(e) => {
                    tracing::debug!("pruning {:?}: {e}", dirs[..depth].join("/"));
                    return;
                }
            }
        }
    }
}
