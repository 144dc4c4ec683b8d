//! Key layout of one process's RocksDB and a small transaction over it.
//!
//! One DB per metad process with three column families:
//! - `log`: Raft log entries, key = shard (4 bytes BE) + index (8 bytes BE);
//! - `raft`: per-shard vote, committed id, last purged id and current snapshot;
//! - `sm`: state-machine data, key = shard (4 bytes BE) + logical key.
//!
//! The logical state-machine keys are laid out in `keys.rs`.
//!
//! A [`Txn`] stages writes over the DB so one command sees its own writes, and
//! turns into one atomic `WriteBatch`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::WriteBatch;
use rocksdb::DB;

use crate::error::MetaError;
use cairn_proto::ids::ShardId;

pub const CF_LOG: &str = "log";
pub const CF_RAFT: &str = "raft";
pub const CF_SM: &str = "sm";

/// Opens (or creates) the process's RocksDB.
pub fn open_db(path: &Path) -> Result<Arc<DB>, MetaError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_LOG, CF_RAFT, CF_SM]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, path, cfs)?;
    Ok(Arc::new(db))
}

/// Opens a process's RocksDB read-only, as it is on disk now (the process
/// may be running): for tools and tests that inspect a node's state.
pub fn open_db_read_only(path: &Path) -> Result<Arc<DB>, MetaError> {
    let db = DB::open_cf_for_read_only(&Options::default(), path, [CF_LOG, CF_RAFT, CF_SM], false)?;
    Ok(Arc::new(db))
}

/// `shard` prefix followed by `key`.
pub fn shard_key(shard: ShardId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(key);
    k
}

pub fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, MetaError> {
    db.cf_handle(name)
        .ok_or_else(|| MetaError::Storage(format!("missing column family {name}")))
}

/// The first key past every key that starts with `prefix` (None: no such
/// key, the prefix is all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Options for an iterator that stops before `end`: without a bound, the
/// step past a range's last key walks every deleted key after it (closed
/// opens, purged logs) to find the next live one.
pub fn bounded(end: Option<Vec<u8>>) -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    if let Some(end) = end {
        opts.set_iterate_upper_bound(end);
    }
    opts
}

/// Key-value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Staged reads and writes of one shard's state machine.
pub struct Txn<'a> {
    db: &'a DB,
    shard: ShardId,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// How reads of namespace keys honour cross-shard transactions' locks.
    guard: Guard,
}

/// How a [`Txn`]'s reads of namespace keys treat keys that a cross-shard
/// transaction has locked (see `crate::txn::readable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// Read what is stored: a transaction's own finish, internal reads.
    Off,
    /// A client's read: the state before an undecided transaction, EAGAIN
    /// from its decision until this shard's finish.
    Reader,
    /// A command's read: EAGAIN while the key is locked, so a command never
    /// decides on a value that a decided transaction is about to change (a
    /// create in a new directory whose name another shard already shows).
    Writer,
}

impl<'a> Txn<'a> {
    pub fn new(db: &'a DB, shard: ShardId) -> Self {
        Txn {
            db,
            shard,
            writes: BTreeMap::new(),
            guard: Guard::Off,
        }
    }

    /// A `Txn` for answering clients: a namespace key that a cross-shard
    /// transaction has locked reads as it was before the transaction while
    /// the transaction is undecided, and fails with EAGAIN (the client
    /// retries) from its decision until this shard applies it. So a reader
    /// never sees one shard's half of an operation without the other's.
    pub fn reader(db: &'a DB, shard: ShardId) -> Self {
        Txn {
            guard: Guard::Reader,
            ..Txn::new(db, shard)
        }
    }

    /// Runs `f` with this transaction's reads guarded as `guard`.
    pub fn guarded<T>(&mut self, guard: Guard, f: impl FnOnce(&mut Self) -> T) -> T {
        let before = std::mem::replace(&mut self.guard, guard);
        let out = f(self);
        self.guard = before;
        out
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    pub fn db(&self) -> &'a DB {
        self.db
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        if self.guard != Guard::Off && crate::keys::is_namespace(key) {
            crate::txn::readable(self, key, None, self.guard)?;
        }
        if let Some(staged) = self.writes.get(key) {
            return Ok(staged.clone());
        }
        let cf = cf(self.db, CF_SM)?;
        Ok(self.db.get_cf(cf, shard_key(self.shard, key))?)
    }

    pub fn get_as<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, MetaError> {
        match self.get(key)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub fn put_as<T: serde::Serialize>(
        &mut self,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), MetaError> {
        self.put(key, encode(value)?);
        Ok(())
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// Keys this transaction writes or deletes.
    pub fn staged_keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.writes.keys()
    }

    /// Drops every staged write (a failed command changes nothing).
    pub fn discard(&mut self) {
        self.writes.clear();
    }

    /// Up to `limit` entries whose key starts with `prefix` and is greater than
    /// `prefix + after`, in key order, including this transaction's writes.
    pub fn scan(&self, prefix: &[u8], after: &[u8], limit: usize) -> Result<Pairs, MetaError> {
        if self.guard != Guard::Off && crate::keys::is_namespace(prefix) {
            crate::txn::readable(self, prefix, Some(after), self.guard)?;
        }
        let mut start = prefix.to_vec();
        start.extend_from_slice(after);
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let cf = cf(self.db, CF_SM)?;
        let full_start = shard_key(self.shard, &start);
        let full_prefix = shard_key(self.shard, prefix);
        // Read past `limit` by the number of staged deletions so they cannot starve the result.
        let budget = limit.saturating_add(self.writes.len());
        let opts = bounded(prefix_end(&full_prefix));
        for item in self.db.iterator_cf_opt(
            cf,
            opts,
            IteratorMode::From(&full_start, Direction::Forward),
        ) {
            let (k, v) = item?;
            if !k.starts_with(&full_prefix) || merged.len() >= budget {
                break;
            }
            if k.as_ref() == full_start.as_slice() && !after.is_empty() {
                continue;
            }
            merged.insert(k[4..].to_vec(), Some(v.to_vec()));
        }
        for (k, v) in self.writes.range(start.clone()..) {
            if !k.starts_with(prefix) {
                break;
            }
            if k.as_slice() == start.as_slice() && !after.is_empty() {
                continue;
            }
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit)
            .collect())
    }

    /// The staged writes as one batch for the `sm` column family.
    pub fn into_batch(self) -> Result<WriteBatch, MetaError> {
        let cf = cf(self.db, CF_SM)?;
        let mut batch = WriteBatch::default();
        for (k, v) in self.writes {
            let k = shard_key(self.shard, &k);
            match v {
                Some(v) => batch.put_cf(cf, k, v),
                None => batch.delete_cf(cf, k),
            }
        }
        Ok(batch)
    }
}

pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, MetaError> {
    bincode::serialize(value).map_err(|e| MetaError::Storage(format!("encode: {e}")))
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, MetaError> {
    bincode::deserialize(bytes).map_err(|e| MetaError::Storage(format!("decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    /// A scan is bounded by its prefix: keys deleted past it are not walked,
    /// and a key of the next prefix never shows.
    #[test]
    fn scans_stay_inside_their_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let mut txn = Txn::new(&db, 1);
        txn.put(b"a1".to_vec(), b"x".to_vec());
        txn.put(b"b1".to_vec(), b"y".to_vec());
        db.write(txn.into_batch().unwrap()).unwrap();
        let mut other = Txn::new(&db, 2);
        other.put(b"a2".to_vec(), b"z".to_vec());
        db.write(other.into_batch().unwrap()).unwrap();
        let txn = Txn::new(&db, 1);
        let keys: Vec<_> = txn
            .scan(b"a", b"", 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"a1".to_vec()]);
        assert_eq!(txn.scan(b"b", b"1", 10).unwrap().len(), 0);
    }
}
