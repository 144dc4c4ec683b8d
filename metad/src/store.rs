//! openraft storage for one shard on the process's shared RocksDB: the log store
//! (`log` and `raft` column families) and the state machine (`sm`).
//!
//! Log appends are written with `sync` on a blocking thread and acknowledged to
//! openraft only once durable. The state machine writes each entry's effects, its
//! remembered reply and the applied log id in one batch, so a crash never
//! separates them; replay after a crash re-applies from the durable log.
//! Exactly-once: a request whose (client, seq, step) was applied before answers
//! the remembered reply without running again.
//!
//! Snapshots are files, never one value in memory: a snapshot is built by
//! streaming a consistent RocksDB view of the shard into
//! `<snapshots dir>/<shard>.snap` (length-prefixed keys and values, in key
//! order), openraft sends it in chunks read from that file and the receiver
//! writes the chunks to `<shard>.recv` (synced before installing), then makes
//! it the shard's current snapshot. The snapshot's meta lives in the `raft`
//! column family.
//!
//! Installing streams the file in bounded batches (a few MiB each, so memory
//! does not grow with the shard), which alone would let a crash leave a mix
//! of old and new keys. The protocol that prevents it:
//! 1. the file is read through once and refused if it is not whole, before
//!    anything changes;
//! 2. one synced batch sets the shard's `installing` mark (in `raft`, with
//!    the snapshot's meta) and deletes every state-machine key of the shard;
//! 3. the file's pairs go in, batch after batch (not synced);
//! 4. one synced batch writes the applied id and membership and clears the
//!    mark (its sync makes the earlier batches durable too: one WAL);
//! 5. the file is renamed to `<shard>.snap` and the meta recorded.
//!
//! While the mark is set the shard's state is not valid. `applied_state`,
//! which openraft calls first when it starts, finishes an interrupted install
//! by running it again from step 2 on the received file, so after a crash the
//! shard is either as before the install (crash before step 2: openraft
//! fetches the snapshot again) or wholly the snapshot, as if the install had
//! been one atomic write.

use std::fmt::Debug;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::LogFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::Entry;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use openraft::SnapshotMeta;
use openraft::StorageError;
use openraft::StorageIOError;
use openraft::StoredMembership;
use openraft::Vote;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::error::MetaError;
use crate::keys;
use crate::kv;
use crate::kv::shard_key;
use crate::kv::Guard;
use crate::kv::Txn;
use crate::types::Command;
use crate::types::Errno;
use crate::types::Request;
use crate::types::RequestKey;
use crate::types::Response;
use crate::types::TypeConfig;
use cairn_proto::ids::ShardId;

type StorageResult<T> = Result<T, StorageError<u64>>;

/// How many of a client's most recent replies a shard remembers for retries.
const REPLY_WINDOW: u64 = 4096;

fn io_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write(&std::io::Error::other(e.to_string())).into()
}

fn read_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::read(&std::io::Error::other(e.to_string())).into()
}

fn log_key(shard: ShardId, index: u64) -> Vec<u8> {
    shard_key(shard, &index.to_be_bytes())
}

fn reply_key(k: &RequestKey) -> Vec<u8> {
    keys::reply(k.client, k.seq, k.step)
}

/// Whether a keyed request's reply is remembered for its retries. Not:
/// - EAGAIN (a key locked by a cross-shard operation, or a file lock held by
///   another owner): the retry must run again;
/// - a transaction's decision that came out abort (recovery rolled the attempt
///   back): nothing was applied, so the retry must run the operation again
///   rather than find this answer and take it for the outcome.
fn remembers(resp: &Response) -> bool {
    match &resp.0 {
        Err(e) => e.errno != cairn_proto::status::EAGAIN,
        Ok(crate::fs::Reply::Txn { committed, .. }) => *committed != Some(false),
        Ok(_) => true,
    }
}

/// A remembered reply and the log index that applied its request (replies
/// are trimmed by age, see [`Command::TrimReplies`]).
#[derive(Serialize, Deserialize)]
struct Remembered {
    index: u64,
    resp: Response,
}

/// The reply remembered for a request key, if any.
pub fn remembered(txn: &Txn, key: &RequestKey) -> Result<Option<Response>, MetaError> {
    Ok(txn.get_as::<Remembered>(&reply_key(key))?.map(|r| r.resp))
}

/// Forgets replies to requests applied before log index `before`.
fn trim_replies(txn: &mut Txn, before: u64) -> Result<(), MetaError> {
    for (k, v) in txn.scan(&[keys::REPLY], b"", usize::MAX)? {
        if kv::decode::<Remembered>(&v).map_or(true, |r| r.index < before) {
            txn.delete(k);
        }
    }
    Ok(())
}

/// The Raft log of one shard.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    shard: ShardId,
}

impl LogStore {
    pub fn new(db: Arc<DB>, shard: ShardId) -> Self {
        LogStore { db, shard }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, name: &[u8]) -> StorageResult<Option<T>> {
        let cf = kv::cf(&self.db, kv::CF_RAFT).map_err(read_err)?;
        match self
            .db
            .get_cf(cf, shard_key(self.shard, name))
            .map_err(read_err)?
        {
            Some(v) => Ok(Some(kv::decode(&v).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    /// Writes a log meta value; `sync` makes it durable before answering.
    fn put_meta<T: Serialize>(&self, name: &[u8], value: &T, sync: bool) -> StorageResult<()> {
        let cf = kv::cf(&self.db, kv::CF_RAFT).map_err(io_err)?;
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        let bytes = kv::encode(value).map_err(io_err)?;
        self.db
            .put_cf_opt(cf, shard_key(self.shard, name), bytes, &opts)
            .map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let cf = kv::cf(&self.db, kv::CF_LOG).map_err(read_err)?;
        let prefix = self.shard.to_be_bytes();
        let mut out = Vec::new();
        let from = log_key(self.shard, start);
        let end = match range.end_bound() {
            Bound::Included(&i) if i < u64::MAX => Some(log_key(self.shard, i + 1)),
            Bound::Excluded(&i) => Some(log_key(self.shard, i)),
            _ => kv::prefix_end(&prefix),
        };
        for item in self.db.iterator_cf_opt(
            cf,
            kv::bounded(end),
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (k, v) = item.map_err(read_err)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let index = u64::from_be_bytes(k[4..12].try_into().map_err(read_err)?);
            if !range.contains(&index) {
                break;
            }
            out.push(kv::decode(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<u64>> = self.get_meta(b"purged")?;
        let cf = kv::cf(&self.db, kv::CF_LOG).map_err(read_err)?;
        let upper = log_key(self.shard, u64::MAX);
        let mut last = last_purged;
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_lower_bound(log_key(self.shard, 0));
        if let Some(item) = self
            .db
            .iterator_cf_opt(cf, opts, IteratorMode::From(&upper, Direction::Reverse))
            .next()
        {
            let (k, v) = item.map_err(read_err)?;
            if k.starts_with(&self.shard.to_be_bytes()) {
                let entry: Entry<TypeConfig> = kv::decode(&v).map_err(read_err)?;
                last = Some(entry.log_id);
            }
        }
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.put_meta(b"vote", vote, true)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        self.get_meta(b"vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        // Only a hint for replay at start (openraft recovers the committed
        // index from its peers without it), so it rides on the next synced
        // write instead of costing every commit an fsync of its own.
        self.put_meta(b"committed", &committed, false)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(self.get_meta::<Option<LogId<u64>>>(b"committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = kv::cf(&self.db, kv::CF_LOG).map_err(io_err)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = kv::encode(&entry).map_err(io_err)?;
            batch.put_cf(cf, log_key(self.shard, entry.log_id.index), bytes);
        }
        let db = self.db.clone();
        // The synced write is the slow part of a commit; keep it off the runtime.
        let result = tokio::task::spawn_blocking(move || {
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.write_opt(batch, &opts)
        })
        .await
        .map_err(io_err)?;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let cf = kv::cf(&self.db, kv::CF_LOG).map_err(io_err)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf,
            log_key(self.shard, log_id.index),
            log_key(self.shard, u64::MAX),
        );
        batch.delete_cf(cf, log_key(self.shard, u64::MAX));
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.put_meta(b"purged", &log_id, true)?;
        let cf = kv::cf(&self.db, kv::CF_LOG).map_err(io_err)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf,
            log_key(self.shard, 0),
            log_key(self.shard, log_id.index + 1),
        );
        self.db.write(batch).map_err(io_err)
    }
}

type Meta = SnapshotMeta<u64, openraft::BasicNode>;

/// The longest key or value a snapshot file may hold (a damaged or hostile
/// file cannot make the reader allocate more).
const MAX_SNAPSHOT_ITEM: usize = 64 << 20;

fn write_item(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

fn read_item(input: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        r => r?,
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_SNAPSHOT_ITEM {
        return Err(std::io::Error::other(format!(
            "snapshot item of {len} bytes"
        )));
    }
    let mut item = vec![0; len];
    input.read_exact(&mut item)?;
    Ok(Some(item))
}

/// Where a shard keeps its snapshot files.
struct SnapshotFiles {
    dir: PathBuf,
    shard: ShardId,
}

impl SnapshotFiles {
    fn current(&self) -> PathBuf {
        self.dir.join(format!("{}.snap", self.shard))
    }
    fn building(&self) -> PathBuf {
        self.dir.join(format!("{}.snap.tmp", self.shard))
    }
    fn receiving(&self) -> PathBuf {
        self.dir.join(format!("{}.recv", self.shard))
    }

    /// Renames `from` to the current snapshot, durably.
    fn publish(&self, from: &Path) -> std::io::Result<()> {
        std::fs::rename(from, self.current())?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

fn meta_key(shard: ShardId) -> Vec<u8> {
    shard_key(shard, b"snapshot-meta")
}

fn write_meta(db: &DB, shard: ShardId, meta: &Meta) -> StorageResult<()> {
    let cf = kv::cf(db, kv::CF_RAFT).map_err(io_err)?;
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(
        cf,
        meta_key(shard),
        kv::encode(meta).map_err(io_err)?,
        &opts,
    )
    .map_err(io_err)
}

/// The state machine of one shard.
pub struct StateMachine {
    db: Arc<DB>,
    shard: ShardId,
    snapshots: Arc<SnapshotFiles>,
}

impl StateMachine {
    /// The state machine of `shard`, keeping its snapshot files in `snapshot_dir`.
    pub fn new(db: Arc<DB>, shard: ShardId, snapshot_dir: PathBuf) -> Self {
        StateMachine {
            db,
            shard,
            snapshots: Arc::new(SnapshotFiles {
                dir: snapshot_dir,
                shard,
            }),
        }
    }

    /// Applies one request (at log `index`) inside `txn`, honouring
    /// exactly-once.
    fn apply_request(txn: &mut Txn, req: &Request, index: u64) -> Result<Response, MetaError> {
        if let Some(key) = &req.key {
            if let Some(resp) = remembered(txn, key)? {
                return Ok(resp);
            }
        }
        let result = match &req.cmd {
            Command::TrimReplies { before_index } => {
                trim_replies(txn, *before_index).map(|()| crate::fs::Reply::None)
            }
            Command::Fs(cmd) => txn
                .guarded(Guard::Writer, |txn| crate::fs::apply(txn, cmd))
                .and_then(|reply| {
                    crate::txn::check_locks(txn, None)?;
                    Ok(reply)
                }),
            Command::Map(cmd) => crate::cluster::apply(txn, cmd),
            Command::Txn(cmd) => crate::txn::apply(txn, cmd),
            Command::Lock(cmd) => crate::locks::apply(txn, cmd),
            Command::Tier(cmd) => crate::tier::apply(txn, cmd),
        };
        let resp = match result {
            Ok(reply) => Response(Ok(reply)),
            Err(MetaError::Fs(errno)) => Response(Err(errno)),
            Err(MetaError::Invalid(m)) => Response(Err(Errno::new(cairn_proto::status::EINVAL, m))),
            Err(e) => return Err(e),
        };
        // A failed command changes nothing but its remembered reply.
        if resp.0.is_err() {
            txn.discard();
        }
        if let Some(key) = req.key.as_ref().filter(|_| remembers(&resp)) {
            let remembered = Remembered {
                index,
                resp: resp.clone(),
            };
            txn.put_as(reply_key(key), &remembered)?;
            if key.seq >= REPLY_WINDOW {
                txn.delete(reply_key(&RequestKey {
                    seq: key.seq - REPLY_WINDOW,
                    ..*key
                }));
            }
        }
        Ok(resp)
    }

    fn read_meta(&self) -> StorageResult<Option<Meta>> {
        let cf = kv::cf(&self.db, kv::CF_RAFT).map_err(read_err)?;
        match self.db.get_cf(cf, meta_key(self.shard)).map_err(read_err)? {
            Some(v) => Ok(Some(kv::decode(&v).map_err(read_err)?)),
            None => Ok(None),
        }
    }
}

/// Builds snapshots from a consistent RocksDB view of the shard.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    shard: ShardId,
    files: Arc<SnapshotFiles>,
}

impl SnapshotBuilder {
    /// Streams the shard's keys into the building file, then publishes it.
    fn build(&self) -> StorageResult<Meta> {
        let files = &self.files;
        std::fs::create_dir_all(&files.dir).map_err(io_err)?;
        let mut out = BufWriter::new(std::fs::File::create(files.building()).map_err(io_err)?);
        let view = self.db.snapshot();
        let cf = kv::cf(&self.db, kv::CF_SM).map_err(read_err)?;
        let prefix = self.shard.to_be_bytes();
        let mut last_applied: Option<LogId<u64>> = None;
        let mut membership = StoredMembership::default();
        let mut count = 0u64;
        for item in view.iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, v) = item.map_err(read_err)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let k = &k[4..];
            if k == keys::APPLIED {
                last_applied = Some(kv::decode(&v).map_err(read_err)?);
            } else if k == keys::MEMBERSHIP {
                membership = kv::decode(&v).map_err(read_err)?;
            }
            write_item(&mut out, k).map_err(io_err)?;
            write_item(&mut out, &v).map_err(io_err)?;
            count += 1;
        }
        let file = out.into_inner().map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        files.publish(&files.building()).map_err(io_err)?;
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{count}", id.leader_id, id.index),
            None => format!("empty-{count}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        write_meta(&self.db, self.shard, &meta)?;
        Ok(meta)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let builder = SnapshotBuilder {
            db: self.db.clone(),
            shard: self.shard,
            files: self.files.clone(),
        };
        let meta = tokio::task::spawn_blocking(move || builder.build())
            .await
            .map_err(read_err)??;
        let file = tokio::fs::File::open(self.files.current())
            .await
            .map_err(read_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

/// Bytes of keys and values an install writes per RocksDB batch: its memory
/// is this, whatever the shard's size.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// The `raft` key that marks `shard`'s state as an install in progress; its
/// value is the snapshot's meta.
fn installing_key(shard: ShardId) -> Vec<u8> {
    shard_key(shard, b"installing")
}

/// Reads a snapshot file to its end, checking that it is whole (complete
/// key/value pairs, no item over the limit), so a damaged file is refused
/// before the shard's state is touched. Answers the number of pairs.
fn check_snapshot_file(path: &Path) -> StorageResult<u64> {
    let mut input = BufReader::new(std::fs::File::open(path).map_err(io_err)?);
    let mut pairs = 0;
    while read_item(&mut input).map_err(io_err)?.is_some() {
        read_item(&mut input)
            .map_err(io_err)?
            .ok_or_else(|| io_err("snapshot file ends after a key"))?;
        pairs += 1;
    }
    Ok(pairs)
}

/// Installs the snapshot file at `path` as the whole state of `shard` in
/// bounded batches (see the module doc for the crash protocol): a synced
/// batch marks the install and drops every key of the shard, batches of at
/// most `batch_bytes` put the file's pairs, and a last synced batch sets the
/// applied id and membership from `meta` and clears the mark. `stop_after`
/// (tests) fails the install after that many data batches, as a crash would.
fn install_file(
    db: &DB,
    shard: ShardId,
    path: &Path,
    meta: &Meta,
    batch_bytes: usize,
    stop_after: Option<usize>,
) -> StorageResult<()> {
    let pairs = check_snapshot_file(path)?;
    let sm = kv::cf(db, kv::CF_SM).map_err(io_err)?;
    let raft = kv::cf(db, kv::CF_RAFT).map_err(io_err)?;
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    let mut batch = WriteBatch::default();
    batch.put_cf(
        raft,
        installing_key(shard),
        kv::encode(meta).map_err(io_err)?,
    );
    batch.delete_range_cf(sm, shard.to_be_bytes(), (shard + 1).to_be_bytes());
    db.write_opt(batch, &synced).map_err(io_err)?;
    let mut input = BufReader::new(std::fs::File::open(path).map_err(io_err)?);
    let mut batch = WriteBatch::default();
    let mut written = 0;
    while let Some(k) = read_item(&mut input).map_err(io_err)? {
        let v = read_item(&mut input)
            .map_err(io_err)?
            .ok_or_else(|| io_err("snapshot file ends after a key"))?;
        batch.put_cf(sm, shard_key(shard, &k), v);
        if batch.size_in_bytes() >= batch_bytes {
            if stop_after == Some(written) {
                return Err(io_err("install stopped (test)"));
            }
            // Not synced: the last batch's sync makes every earlier write
            // of the WAL durable with it.
            db.write(std::mem::take(&mut batch)).map_err(io_err)?;
            written += 1;
        }
    }
    if let Some(applied) = &meta.last_log_id {
        batch.put_cf(
            sm,
            shard_key(shard, keys::APPLIED),
            kv::encode(applied).map_err(io_err)?,
        );
    }
    batch.put_cf(
        sm,
        shard_key(shard, keys::MEMBERSHIP),
        kv::encode(&meta.last_membership).map_err(io_err)?,
    );
    batch.delete_cf(raft, installing_key(shard));
    db.write_opt(batch, &synced).map_err(io_err)?;
    tracing::info!(
        shard,
        snapshot = %meta.snapshot_id,
        pairs,
        batches = written + 2,
        "snapshot installed"
    );
    Ok(())
}

/// Installs the received file and makes it the shard's current snapshot.
fn install_received(
    db: &DB,
    shard: ShardId,
    files: &SnapshotFiles,
    meta: &Meta,
) -> StorageResult<()> {
    let received = files.receiving();
    install_file(db, shard, &received, meta, INSTALL_BATCH_BYTES, None)?;
    files.publish(&received).map_err(io_err)?;
    write_meta(db, shard, meta)
}

impl StateMachine {
    /// Finishes an install a crash interrupted (its mark is still set): the
    /// shard's state is partial, so the install runs again, from the start,
    /// on the received file (synced before the mark was set).
    fn finish_interrupted_install(&self) -> StorageResult<()> {
        let cf = kv::cf(&self.db, kv::CF_RAFT).map_err(read_err)?;
        let Some(v) = self
            .db
            .get_cf(cf, installing_key(self.shard))
            .map_err(read_err)?
        else {
            return Ok(());
        };
        let meta: Meta = kv::decode(&v).map_err(read_err)?;
        tracing::warn!(
            shard = self.shard,
            snapshot = %meta.snapshot_id,
            "finishing a snapshot install interrupted by a crash"
        );
        install_received(&self.db, self.shard, &self.snapshots, &meta)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<u64>>,
        StoredMembership<u64, openraft::BasicNode>,
    )> {
        // openraft asks this first when it starts: never answer a half
        // installed snapshot's state.
        let this = StateMachine {
            db: self.db.clone(),
            shard: self.shard,
            snapshots: self.snapshots.clone(),
        };
        tokio::task::spawn_blocking(move || this.finish_interrupted_install())
            .await
            .map_err(read_err)??;
        let txn = Txn::new(&self.db, self.shard);
        let applied: Option<LogId<u64>> = txn.get_as(keys::APPLIED).map_err(read_err)?;
        let membership = txn
            .get_as(keys::MEMBERSHIP)
            .map_err(read_err)?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            let mut txn = Txn::new(&self.db, self.shard);
            let resp = match &entry.payload {
                EntryPayload::Blank => Response(Ok(crate::fs::Reply::None)),
                EntryPayload::Normal(req) => {
                    fail::fail_point!("metad::apply", |_| Err(io_err("failpoint metad::apply")));
                    StateMachine::apply_request(&mut txn, req, entry.log_id.index)
                        .map_err(io_err)?
                }
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                    txn.put_as(keys::MEMBERSHIP.to_vec(), &stored)
                        .map_err(io_err)?;
                    Response(Ok(crate::fs::Reply::None))
                }
            };
            txn.put_as(keys::APPLIED.to_vec(), &entry.log_id)
                .map_err(io_err)?;
            let batch = txn.into_batch().map_err(io_err)?;
            self.db.write(batch).map_err(io_err)?;
            replies.push(resp);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            shard: self.shard,
            files: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        tokio::fs::create_dir_all(&self.snapshots.dir)
            .await
            .map_err(io_err)?;
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.snapshots.receiving())
            .await
            .map_err(io_err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> StorageResult<()> {
        // Everything openraft wrote into the receiving file is on disk before
        // it is read back and installed.
        let mut file = *snapshot;
        file.flush().await.map_err(io_err)?;
        file.sync_all().await.map_err(io_err)?;
        drop(file);
        let (db, shard, files, meta) = (
            self.db.clone(),
            self.shard,
            self.snapshots.clone(),
            meta.clone(),
        );
        tokio::task::spawn_blocking(move || install_received(&db, shard, &files, &meta))
            .await
            .map_err(io_err)?
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(meta) = self.read_meta()? else {
            return Ok(None);
        };
        match tokio::fs::File::open(self.snapshots.current()).await {
            Ok(file) => Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(file),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(read_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Builder {
        dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
    }

    impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachine> for Builder {
        async fn build(&self) -> StorageResult<((), LogStore, StateMachine)> {
            let dir = tempfile::tempdir().map_err(io_err)?;
            let db = kv::open_db(&dir.path().join("db")).map_err(io_err)?;
            // Use a shard other than 0 so key prefixes are exercised.
            let snapshots = dir.path().join("snapshots");
            if let Ok(mut dirs) = self.dirs.lock() {
                dirs.push(dir);
            }
            Ok((
                (),
                LogStore::new(db.clone(), 3),
                StateMachine::new(db, 3, snapshots),
            ))
        }
    }

    /// openraft's own conformance suite against the RocksDB log store and state machine.
    #[test]
    fn openraft_storage_suite() {
        let builder = Builder {
            dirs: std::sync::Mutex::new(Vec::new()),
        };
        openraft::testing::Suite::test_all(builder).unwrap();
    }

    #[test]
    fn shards_do_not_see_each_other() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let db = kv::open_db(dir.path()).unwrap();
            let mut a = LogStore::new(db.clone(), 1);
            let mut b = LogStore::new(db.clone(), 2);
            a.save_vote(&Vote::new(5, 1)).await.unwrap();
            assert_eq!(b.read_vote().await.unwrap(), None);
            assert_eq!(a.read_vote().await.unwrap(), Some(Vote::new(5, 1)));
        });
    }

    /// A keyed request's reply is remembered (a retry gets it, not a second
    /// run) until trimmed by log index; a decision that came out abort is
    /// never remembered.
    #[test]
    fn replies_are_remembered_until_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let db = kv::open_db(dir.path()).unwrap();
        let apply = |req: &Request, index: u64| {
            let mut txn = Txn::new(&db, 1);
            let resp = StateMachine::apply_request(&mut txn, req, index).unwrap();
            db.write(txn.into_batch().unwrap()).unwrap();
            resp
        };
        let keyed = |seq, cmd| Request {
            key: Some(RequestKey {
                client: 9,
                seq,
                step: 0,
            }),
            cmd,
        };
        apply(
            &keyed(1, Command::Fs(crate::fs::FsCommand::InitRoot { now: 0 })),
            1,
        );
        let mkdir = |now| {
            keyed(
                2,
                Command::Fs(crate::fs::FsCommand::Create {
                    parent: cairn_proto::ids::ROOT_INO,
                    name: b"d".to_vec(),
                    kind: crate::fs::Kind::Dir,
                    perm: 0o755,
                    rdev: 0,
                    uid: 0,
                    gid: 0,
                    exclusive: true,
                    target: None,
                    now,
                }),
            )
        };
        let first = apply(&mkdir(1), 5);
        assert!(first.0.is_ok());
        // The retry answers the same, though the name exists now.
        assert_eq!(apply(&mkdir(2), 6), first);
        let trim = |before_index| Request {
            key: None,
            cmd: Command::TrimReplies { before_index },
        };
        apply(&trim(5), 7);
        assert_eq!(apply(&mkdir(3), 8), first, "trimmed too early");
        apply(&trim(6), 9);
        let txn = Txn::new(&db, 1);
        let key = RequestKey {
            client: 9,
            seq: 2,
            step: 0,
        };
        assert!(remembered(&txn, &key).unwrap().is_none());
        // An abort decision is not remembered: the retry must run again.
        let decide = Request {
            key: Some(RequestKey {
                client: 9,
                seq: 3,
                step: 40,
            }),
            cmd: Command::Txn(crate::txn::TxnCommand::Decide {
                id: 77,
                commit: true,
            }),
        };
        let resp = apply(&decide, 10);
        assert_eq!(
            resp,
            Response(Ok(crate::fs::Reply::Txn {
                id: 77,
                committed: Some(false)
            }))
        );
        let txn = Txn::new(&db, 1);
        assert!(remembered(&txn, &decide.key.unwrap()).unwrap().is_none());
    }

    /// Two stores of shard 2 under `dir`: the first holds 20,000 inodes
    /// applied up to index 20,001, the second is empty.
    fn two_shards_one_filled(dir: &Path) -> (Arc<DB>, StateMachine, Arc<DB>, StateMachine) {
        let open = |name: &str| {
            let db = kv::open_db(&dir.join(name)).unwrap();
            let sm = StateMachine::new(db.clone(), 2, dir.join(format!("{name}-snap")));
            (db, sm)
        };
        let (db1, sm1) = open("a");
        let (db2, sm2) = open("b");
        let mut txn = Txn::new(&db1, 2);
        for i in 0..20_000u32 {
            txn.put(keys::inode(u64::from(i)), vec![7; 100]);
        }
        let applied = LogId::<u64>::new(openraft::CommittedLeaderId::new(1, 1), 20_001);
        txn.put(keys::APPLIED.to_vec(), kv::encode(&applied).unwrap());
        db1.write(txn.into_batch().unwrap()).unwrap();
        (db1, sm1, db2, sm2)
    }

    /// A shard of 20,000 keys goes through the snapshot files (built from one
    /// store, received and installed into another) and arrives whole; keys of
    /// the receiver that the snapshot lacks are gone.
    #[test]
    fn snapshots_stream_through_files() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (db1, mut sm1, db2, mut sm2) = two_shards_one_filled(dir.path());
            let mut stale = Txn::new(&db2, 2);
            stale.put(keys::dentry(1, b"stale"), vec![1]);
            db2.write(stale.into_batch().unwrap()).unwrap();

            let mut built = sm1
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(20_001));
            let mut recv = sm2.begin_receiving_snapshot().await.unwrap();
            tokio::io::copy(&mut built.snapshot, &mut *recv)
                .await
                .unwrap();
            sm2.install_snapshot(&built.meta, recv).await.unwrap();

            // Everything but the membership (which the install records).
            let all = |db: &DB| {
                let mut pairs = Txn::new(db, 2).scan(b"", b"", usize::MAX).unwrap();
                pairs.retain(|(k, _)| k != keys::MEMBERSHIP);
                pairs
            };
            let (sent, got) = (all(&db1), all(&db2));
            assert_eq!(sent.len(), 20_001);
            assert!(
                sent == got,
                "{} keys sent, {} installed",
                sent.len(),
                got.len()
            );
            let current = sm2.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(current.meta, built.meta);
            let (applied, _) = sm2.applied_state().await.unwrap();
            assert_eq!(applied.map(|l| l.index), Some(20_001));
        });
    }

    /// An install that stops after a few of its bounded batches (a crash)
    /// leaves the shard marked, never taken as valid: the next start
    /// (`applied_state`) runs the install again and the shard is wholly the
    /// snapshot. A damaged file is refused before anything changes.
    #[test]
    fn interrupted_install_is_finished_on_restart() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (db1, mut sm1, db2, mut sm2) = two_shards_one_filled(dir.path());
            let applied = LogId::<u64>::new(openraft::CommittedLeaderId::new(1, 1), 20_001);
            let mut old = Txn::new(&db2, 2);
            old.put(keys::dentry(1, b"old"), vec![1]);
            db2.write(old.into_batch().unwrap()).unwrap();
            let all = |db: &DB| {
                let mut pairs = Txn::new(db, 2).scan(b"", b"", usize::MAX).unwrap();
                pairs.retain(|(k, _)| k != keys::MEMBERSHIP);
                pairs
            };

            let mut built = sm1
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            let mut recv = sm2.begin_receiving_snapshot().await.unwrap();
            tokio::io::copy(&mut built.snapshot, &mut *recv)
                .await
                .unwrap();
            recv.sync_all().await.unwrap();
            drop(recv);
            let received = sm2.snapshots.receiving();

            // A damaged (cut) file is refused whole: the old state stays.
            let cut = dir.path().join("cut");
            let bytes = std::fs::read(&received).unwrap();
            std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
            assert!(install_file(&db2, 2, &cut, &built.meta, 64 << 10, None).is_err());
            assert_eq!(all(&db2).len(), 1);

            // Stopped after 3 batches of 64 KiB (of some 40): the mark is set
            // and the state is partial.
            let stopped = install_file(&db2, 2, &received, &built.meta, 64 << 10, Some(3));
            assert!(stopped.is_err());
            let partial = all(&db2).len();
            assert!(partial > 0 && partial < 20_001, "{partial} keys");
            let raft = kv::cf(&db2, kv::CF_RAFT).unwrap();
            assert!(db2.get_cf(raft, installing_key(2)).unwrap().is_some());

            // A restart: openraft's first question finishes the install.
            drop(sm2);
            let mut sm2 = StateMachine::new(db2.clone(), 2, dir.path().join("b-snap"));
            let (got, _) = sm2.applied_state().await.unwrap();
            assert_eq!(got, Some(applied));
            assert!(db2.get_cf(raft, installing_key(2)).unwrap().is_none());
            let (sent, got) = (all(&db1), all(&db2));
            assert!(
                sent == got,
                "{} keys sent, {} installed",
                sent.len(),
                got.len()
            );
            let current = sm2.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(current.meta, built.meta);
        });
    }
}
