//! How S3 names map to the namespace, and which are refused.
//!
//! A bucket is a directory directly under the root; its name must be a valid
//! S3 bucket name (3-63 of `a-z0-9.-`), so the gateway's own `/.cairn`
//! directory is never a bucket. An object key is the path below its bucket,
//! split at `/`:
//! - `a/b/c` is the file `c` in directory `a/b` (directories are created as
//!   needed and removed again when a delete leaves them empty);
//! - a key ending in `/` (`a/b/`) is the directory itself, a "folder" object
//!   of size 0; it can only be created empty;
//! - refused with 400 `InvalidArgument`, never touching the namespace: empty
//!   keys, empty components (`/a`, `a//b`), `.` and `..` components (also when
//!   sent percent-encoded: the key is compared after decoding), NUL, components
//!   over 255 bytes, and components starting with `.cairn-` (the gateway's
//!   temporary files); keys over 1024 bytes are 400 `KeyTooLongError`. Keys
//!   are UTF-8 (the protocol layer refuses anything else).

use s3s::s3_error;
use s3s::S3Error;
use s3s::S3Result;

/// Where multipart uploads are staged: `/.cairn/uploads/<bucket>/<upload-id>`.
pub const SYSTEM_DIR: &str = ".cairn";
pub const UPLOADS_DIR: &str = "uploads";
/// Name prefix of the gateway's temporary files (hidden from listings).
pub const TEMP_PREFIX: &str = ".cairn-";
/// S3's limit on key length.
const KEY_MAX: usize = 1024;
const NAME_MAX: usize = 255;

/// A key split into the directories above the object and its own name; a
/// folder key (`a/b/`) has no name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath<'a> {
    pub dirs: Vec<&'a str>,
    pub name: Option<&'a str>,
}

pub fn check_bucket(bucket: &str) -> S3Result<()> {
    if s3s::path::check_bucket_name(bucket) {
        Ok(())
    } else {
        Err(s3_error!(
            InvalidBucketName,
            "invalid bucket name: {bucket:?}"
        ))
    }
}

/// Splits a key by the rules above.
pub fn parse_key(key: &str) -> S3Result<KeyPath<'_>> {
    if key.len() > KEY_MAX {
        return Err(s3_error!(KeyTooLongError));
    }
    if key.is_empty() {
        return Err(invalid("the key is empty"));
    }
    let (body, folder) = match key.strip_suffix('/') {
        Some(body) => (body, true),
        None => (key, false),
    };
    let mut parts: Vec<&str> = body.split('/').collect();
    for part in &parts {
        check_component(part)?;
    }
    let name = if folder { None } else { parts.pop() };
    Ok(KeyPath { dirs: parts, name })
}

fn check_component(part: &str) -> S3Result<()> {
    if part.is_empty() {
        return Err(invalid(
            "the key has an empty path component (leading '/' or '//')",
        ));
    }
    if part == "." || part == ".." {
        return Err(invalid("the key has a '.' or '..' component"));
    }
    if part.contains('\0') {
        return Err(invalid("the key contains NUL"));
    }
    if part.len() > NAME_MAX {
        return Err(invalid("a path component of the key is over 255 bytes"));
    }
    if part.starts_with(TEMP_PREFIX) {
        return Err(invalid(
            "key components starting with '.cairn-' are reserved",
        ));
    }
    Ok(())
}

fn invalid(why: &str) -> S3Error {
    s3_error!(InvalidArgument, "invalid object key: {why}")
}

/// Whether a directory entry is the gateway's own (never listed as an object).
pub fn is_internal(name: &[u8]) -> bool {
    name.starts_with(TEMP_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_paths() {
        let k = parse_key("a/b/c.txt").unwrap();
        assert_eq!((k.dirs, k.name), (vec!["a", "b"], Some("c.txt")));
        let k = parse_key("a/b/").unwrap();
        assert_eq!((k.dirs, k.name), (vec!["a", "b"], None));
        assert_eq!(parse_key("x").unwrap().name, Some("x"));
    }

    #[test]
    fn unsafe_keys_are_refused() {
        for bad in [
            "",
            "/a",
            "a//b",
            "a/../b",
            "..",
            "a/.",
            "./a",
            "a\0b",
            "/",
            "a/.cairn-put-1",
        ] {
            assert!(parse_key(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_key(&"n".repeat(256)).is_err());
        assert!(parse_key(&format!("{}/x", "d/".repeat(600))).is_err());
        assert!(parse_key("..a/b..").is_ok());
    }
}
