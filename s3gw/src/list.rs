//! Listing keys in order, with prefix, delimiter and a resume point.
//!
//! Keys are paths, so a listing walks the bucket's tree depth first. Key
//! order is not directory order: the keys below directory `a` all start with
//! `a/`, which sorts after a sibling file `a-1` ('-' < '/'). Each directory's
//! entries come from metad sorted by name; files are emitted in that order and
//! subdirectories are held back, sorted by `name/`, until the next entry sorts
//! after them. Each page of entries comes with the files' attributes and
//! object records (readdir-plus with the `user.s3` xattr), so a page of 1,000
//! keys in one directory is one metadata request.
//!
//! Skipping work: a resume point or prefix gives each directory a name to
//! start its listing near and a name past which nothing can match; with the
//! `/` delimiter a directory under the prefix is one common prefix and is not
//! entered.

use std::collections::BTreeMap;

use s3s::dto::ETag;
use s3s::dto::Timestamp;
use s3s::S3Result;

use cairn_proto::pb;

use crate::error::s3_err;
use crate::names::is_internal;
use crate::objmeta::etag;
use crate::objmeta::timestamp;
use crate::objmeta::ObjectMeta;
use crate::objmeta::XATTR;
use crate::Store;

const PAGE: u32 = 1000;

/// What a listing answers, in key order.
#[derive(Debug, Clone)]
pub enum Item {
    Object {
        key: String,
        size: u64,
        etag: ETag,
        last_modified: Timestamp,
    },
    Prefix(String),
}

impl Item {
    pub fn key(&self) -> &str {
        match self {
            Item::Object { key, .. } | Item::Prefix(key) => key,
        }
    }
}

pub struct Listing {
    pub items: Vec<Item>,
    /// More items follow the last one.
    pub truncated: bool,
}

/// What is asked: keys starting with `prefix`, after `after` (exclusive),
/// grouped at `delimiter`, at most `max`.
pub struct Query<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    pub after: Option<&'a str>,
    pub max: usize,
}

impl Query<'_> {
    /// Whether `key` comes after the resume point (a resume point that is a
    /// common prefix covers every key below it).
    fn is_after(&self, key: &str) -> bool {
        match self.after {
            None => true,
            Some(a) => {
                key > a && !(self.delimiter.is_some_and(|d| a.ends_with(d)) && key.starts_with(a))
            }
        }
    }

    /// The common prefix `key` rolls up into, if any.
    fn common_prefix<'k>(&self, key: &'k str) -> Option<&'k str> {
        let d = self.delimiter.filter(|d| !d.is_empty())?;
        let rest = key.get(self.prefix.len()..)?;
        rest.find(d)
            .map(|i| &key[..self.prefix.len() + i + d.len()])
    }
}

/// One directory being listed.
struct Frame {
    ino: u64,
    /// The key prefix of this directory: "" or "a/b/".
    path: String,
    cursor: Vec<u8>,
    page: std::collections::VecDeque<pb::DirEntry>,
    more: bool,
    /// Subdirectories not yet entered, by `name/`.
    held: BTreeMap<String, pb::DirEntry>,
    /// Names past this one cannot match the prefix.
    stop_past: Option<String>,
}

enum Step {
    File(String, pb::DirEntry),
    Dir(String, pb::DirEntry),
    Done,
}

/// The first path component of `rest`, and a name a listing of its directory
/// can start after without missing anything at or after it (a held-back
/// directory `a` sorts after `a-1`: start before the first byte below '/').
fn start_hint(rest: &str) -> (&str, Vec<u8>) {
    let first = rest.split('/').next().unwrap_or("");
    let cut = first.bytes().position(|b| b < b'/').unwrap_or(first.len());
    let mut hint = first.as_bytes()[..cut].to_vec();
    hint.pop();
    (first, hint)
}

impl Frame {
    fn new(ino: u64, path: String, q: &Query<'_>) -> Frame {
        let mut cursor = Vec::new();
        let mut stop_past = None;
        if let Some(rest) = q.after.and_then(|a| a.strip_prefix(path.as_str())) {
            cursor = cursor.max(start_hint(rest).1);
        }
        if let Some(rest) = q
            .prefix
            .strip_prefix(path.as_str())
            .filter(|r| !r.is_empty())
        {
            let (first, hint) = start_hint(rest);
            cursor = cursor.max(hint);
            stop_past = Some(first.to_owned());
        }
        Frame {
            ino,
            path,
            cursor,
            page: Default::default(),
            more: true,
            held: BTreeMap::new(),
            stop_past,
        }
    }

    async fn next(&mut self, store: &Store) -> S3Result<Step> {
        loop {
            if self.page.is_empty() && self.more {
                let (page, more) = store
                    .client
                    .meta
                    .readdir_page_xattr(self.ino, &self.cursor, PAGE, true, XATTR)
                    .await
                    .map_err(s3_err)?;
                if let Some(last) = page.last() {
                    self.cursor = last.name.to_vec();
                }
                self.more = more;
                self.page.extend(page);
            }
            while self.page.front().is_some_and(|e| !usable(e)) {
                self.page.pop_front();
            }
            if self.page.is_empty() && self.more {
                continue;
            }
            let mut raw = self
                .page
                .front()
                .map(|e| String::from_utf8_lossy(&e.name).into_owned());
            if let (Some(name), Some(stop)) = (&raw, &self.stop_past) {
                if name > stop && !name.starts_with(stop.as_str()) {
                    self.page.clear();
                    self.more = false;
                    raw = None;
                }
            }
            let held = self.held.keys().next().cloned();
            let name = match (raw, held) {
                (None, None) => return Ok(Step::Done),
                (Some(name), Some(h)) if h.as_str() >= name.as_str() => name,
                (_, Some(h)) => {
                    let e = self.held.remove(&h).expect("held entry");
                    return Ok(Step::Dir(h, e));
                }
                (Some(name), None) => name,
            };
            let e = self.page.pop_front().expect("peeked entry");
            if e.kind == pb::FileKind::Directory as i32 {
                self.held.insert(format!("{name}/"), e);
            } else {
                return Ok(Step::File(name, e));
            }
        }
    }
}

/// Entries a listing considers: files and directories with UTF-8 names that
/// are not the gateway's own.
fn usable(e: &pb::DirEntry) -> bool {
    !is_internal(&e.name)
        && std::str::from_utf8(&e.name).is_ok()
        && (e.kind == pb::FileKind::Regular as i32 || e.kind == pb::FileKind::Directory as i32)
}

impl Store {
    /// Lists the bucket whose directory is `bucket`.
    pub async fn list(&self, bucket: u64, q: &Query<'_>) -> S3Result<Listing> {
        let mut items: Vec<Item> = Vec::new();
        let mut stack = vec![Frame::new(bucket, String::new(), q)];
        let full = |items: &Vec<Item>| items.len() > q.max;
        while let Some(top) = stack.last_mut() {
            if full(&items) {
                break;
            }
            match top.next(self).await? {
                Step::Done => {
                    stack.pop();
                }
                Step::File(name, e) => {
                    let key = format!("{}{name}", top.path);
                    if !key.starts_with(q.prefix) || !q.is_after(&key) {
                        continue;
                    }
                    if let Some(cp) = q.common_prefix(&key) {
                        push_prefix(&mut items, cp);
                        continue;
                    }
                    let attr = match e.attr {
                        Some(a) => a,
                        None => self.client.meta.getattr(e.ino).await.map_err(s3_err)?,
                    };
                    let meta = match &e.xattr {
                        Some(raw) => ObjectMeta::decode_valid(raw, &attr),
                        None if e.attr.is_none() => self.meta_of(&attr).await?,
                        None => None,
                    };
                    items.push(Item::Object {
                        key,
                        size: attr.size,
                        etag: etag(&attr, meta.as_ref()),
                        last_modified: timestamp(attr.mtime_ns),
                    });
                }
                Step::Dir(name_slash, e) => {
                    let dkey = format!("{}{name_slash}", top.path);
                    let under_prefix = dkey.starts_with(q.prefix);
                    if !under_prefix && !q.prefix.starts_with(&dkey) {
                        continue;
                    }
                    if let Some(a) = q.after {
                        // Everything below is at or before the resume point,
                        // or inside the common prefix it names.
                        let before = dkey.as_str() < a && !a.starts_with(&dkey);
                        let covered =
                            q.delimiter.is_some_and(|d| a.ends_with(d)) && dkey.starts_with(a);
                        if before || covered {
                            continue;
                        }
                    }
                    if under_prefix {
                        // Every key below rolls up into one common prefix.
                        if let Some(cp) = q.common_prefix(&dkey) {
                            if q.is_after(cp) {
                                push_prefix(&mut items, cp);
                            }
                            continue;
                        }
                        if q.is_after(&dkey) {
                            let attr = self.client.meta.getattr(e.ino).await.map_err(s3_err)?;
                            if let Some(meta) = self.meta_of(&attr).await? {
                                items.push(Item::Object {
                                    key: dkey.clone(),
                                    size: 0,
                                    etag: ETag::Strong(meta.etag),
                                    last_modified: timestamp(attr.mtime_ns),
                                });
                            }
                        }
                    }
                    stack.push(Frame::new(e.ino, dkey, q));
                }
            }
        }
        let truncated = full(&items);
        items.truncate(q.max);
        Ok(Listing { items, truncated })
    }
}

fn push_prefix(items: &mut Vec<Item>, cp: &str) {
    if !matches!(items.last(), Some(Item::Prefix(p)) if p == cp) {
        items.push(Item::Prefix(cp.to_owned()));
    }
}
