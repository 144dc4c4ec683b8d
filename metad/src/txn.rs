//! Two-phase commit for operations that span shards, with coordinator and
//! participants that are Raft groups, so every record and decision is durable.
//!
//! - The coordinator shard (the home shard of the operation) records the
//!   transaction (`t<id>`: participants, state `Preparing`) and prepares its
//!   own part in the same command.
//! - At the same time each other participant shard *prepares*: it runs the
//!   transaction's commands for that shard on a scratch transaction to check
//!   they succeed, then stores them as an intent (`p<id>`) and locks every key
//!   they would write (`L<key>`). Nothing else may write a locked key (it gets
//!   EAGAIN and retries), so the commands still succeed when the decision comes.
//! - The coordinator *decides* commit (every participant prepared) or abort; the
//!   first decision recorded wins.
//! - Every participant *finishes* at once: on commit it applies its commands,
//!   on abort it drops them; either way it unlocks and leaves a tombstone
//!   (`a<id>`, the finish time), so a prepare that arrives late (after
//!   recovery aborted the transaction, or after it finished) is refused
//!   instead of locking keys that nobody would ever unlock. Shards finish in
//!   any order: until a shard has, its locked keys answer EAGAIN to readers
//!   (once decided) and to every command's reads (see [`readable`]), so
//!   nothing acts on one shard's part without the other's (a create in a new
//!   directory whose name shows before its inode).
//! - The coordinator forgets records once every participant finished, many in
//!   one command, off the operation's path.
//!
//! So a cross-shard operation costs three consensus rounds one after another
//! (record and prepares, decision, finishes) whatever the number of shards.
//!
//! Recovery: a coordinator leader finds records older than a few seconds,
//! decides abort for those still preparing, and (re)sends finish to every
//! participant. A participant leader finds prepares older than that and asks
//! the coordinator shard to *resolve* them: the decision if there is one;
//! abort if no record exists (the coordinator died before its record
//! landed), with a tombstone there that refuses the record if it lands
//! later. Finish and decide are idempotent, so recovery may race a live
//! coordinator safely. A decide for commit that finds the record aborted (or
//! already gone, which only recovery's abort does to an undecided record)
//! answers abort, and that answer is never remembered for the client's retry
//! (see `store.rs`): the retry runs the operation again.
//!
//! Tombstones are trimmed by [`TxnCommand::Trim`] once older than the trim
//! horizon; the horizon is kept, and a prepare of a transaction that began
//! before it is refused too, so trimming never reopens the late-prepare hole.

use cairn_proto::ids::ShardId;
use cairn_proto::status::EAGAIN;
use serde::Deserialize;
use serde::Serialize;

use crate::error::MetaError;
use crate::fs;
use crate::fs::FsCommand;
use crate::fs::Reply;
use crate::keys;
use crate::kv::Guard;
use crate::kv::Txn;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Preparing,
    Committed,
    Aborted,
}

/// The coordinator's record of a transaction.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TxnRecord {
    pub participants: Vec<ShardId>,
    pub state: TxnState,
    pub started_ms: i64,
}

/// A participant's prepared commands.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Intent {
    pub coordinator: ShardId,
    /// When the transaction began (its coordinator's clock).
    pub started_ms: i64,
    cmds: Vec<FsCommand>,
    locked: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum TxnCommand {
    /// Coordinator: record a new transaction and prepare `cmds`, the
    /// coordinator shard's own part (none when it has no part).
    Begin {
        id: u64,
        participants: Vec<ShardId>,
        cmds: Vec<FsCommand>,
        now_ms: i64,
    },
    /// Participant: validate, store and lock. `started_ms` is the Begin's time.
    Prepare {
        id: u64,
        coordinator: ShardId,
        cmds: Vec<FsCommand>,
        started_ms: i64,
    },
    /// Coordinator: record the decision (the first one wins).
    Decide { id: u64, commit: bool },
    /// Coordinator, for a participant whose prepare outlived
    /// `txn-recover-after-ms`: the decision if there is one; none while the
    /// record is preparing (the coordinator's own recovery decides it); abort
    /// when no record exists, leaving a tombstone so that the transaction's
    /// Begin, if it is still on its way, is refused.
    Resolve { id: u64, now_ms: i64 },
    /// Participant: apply or drop the intent, unlock, leave a tombstone.
    Finish { id: u64, commit: bool, now_ms: i64 },
    /// Coordinator: drop the records of finished transactions.
    Forget { ids: Vec<u64> },
    /// Participant: drop tombstones older than `before_ms` and refuse, from
    /// now on, prepares of transactions that began before it.
    Trim { before_ms: i64 },
}

/// Fails with EAGAIN when the staged writes touch a key locked by another
/// transaction than `owner`.
pub fn check_locks(txn: &Txn, owner: Option<u64>) -> Result<(), MetaError> {
    for k in txn.staged_keys().filter(|k| keys::is_namespace(k)) {
        if let Some(holder) = txn.get_as::<u64>(&keys::txn_lock(k))? {
            if Some(holder) != owner {
                return Err(MetaError::fs(EAGAIN, "locked by a cross-shard operation"));
            }
        }
    }
    Ok(())
}

/// Whether namespace key `key` may be read now (with `after`: every key of
/// prefix `key` past `after`, as a scan reads them), as `guard` says.
///
/// A client's read ([`Guard::Reader`]) of a key locked by a transaction reads
/// it as it stands, the state before the transaction, only while that
/// transaction is undecided, which only its coordinator knows: so only when
/// this shard coordinates it and its record still says `Preparing` (no shard
/// can show its effects yet). Otherwise the reader waits (EAGAIN) for this
/// shard's finish, a few consensus rounds away, or recovery's if the
/// coordinator died. A command's read ([`Guard::Writer`]) of a locked key is
/// always EAGAIN: the participants finish in any order, so another shard may
/// already show what this key is about to become.
pub fn readable(
    txn: &Txn,
    key: &[u8],
    after: Option<&[u8]>,
    guard: Guard,
) -> Result<(), MetaError> {
    let holders: Vec<u64> = match after {
        None => txn.get_as(&keys::txn_lock(key))?.into_iter().collect(),
        Some(after) => txn
            .scan(&keys::txn_lock(key), after, usize::MAX)?
            .iter()
            .map(|(_, v)| crate::kv::decode(v))
            .collect::<Result<_, _>>()?,
    };
    for id in holders {
        let undecided = || -> Result<bool, MetaError> {
            let record: Option<TxnRecord> = txn.get_as(&keys::txn_record(id))?;
            Ok(record.is_some_and(|r| r.state == TxnState::Preparing))
        };
        if guard == Guard::Writer || !undecided()? {
            return Err(MetaError::fs(
                EAGAIN,
                "being changed by a cross-shard operation",
            ));
        }
    }
    Ok(())
}

/// Every value under `tag` (records, intents) with its transaction id.
fn by_id<T: serde::de::DeserializeOwned>(txn: &Txn, tag: u8) -> Result<Vec<(u64, T)>, MetaError> {
    let mut out = Vec::new();
    for (k, v) in txn.scan(&[tag], b"", usize::MAX)? {
        let id = k
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| MetaError::Storage("malformed transaction key".into()))?;
        out.push((id, crate::kv::decode(&v)?));
    }
    Ok(out)
}

/// Every coordinator record of this shard.
pub fn records(txn: &Txn) -> Result<Vec<(u64, TxnRecord)>, MetaError> {
    by_id(txn, keys::TXN_RECORD)
}

/// Every intent prepared on this shard for a transaction another shard
/// coordinates.
pub fn foreign_intents(txn: &Txn) -> Result<Vec<(u64, Intent)>, MetaError> {
    let mut intents: Vec<(u64, Intent)> = by_id(txn, keys::TXN_INTENT)?;
    intents.retain(|(_, intent)| intent.coordinator != txn.shard());
    Ok(intents)
}

/// How long a finished transaction's tombstone is kept.
pub const TOMBSTONE_KEEP_MS: i64 = 10 * 60 * 1000;

/// Whether any tombstone was left before `before_ms`.
pub fn has_tombstones_before(txn: &Txn, before_ms: i64) -> Result<bool, MetaError> {
    for (_, v) in txn.scan(&[keys::TXN_TOMBSTONE], b"", usize::MAX)? {
        if crate::kv::decode::<i64>(&v).map_or(true, |at| at < before_ms) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn txn_reply(id: u64, committed: Option<bool>) -> Reply {
    Reply::Txn { id, committed }
}

/// Applies one transaction command.
pub fn apply(txn: &mut Txn, cmd: &TxnCommand) -> Result<Reply, MetaError> {
    match cmd {
        TxnCommand::Begin {
            id,
            participants,
            cmds,
            now_ms,
        } => {
            refuse_finished(txn, *id, *now_ms)?;
            if txn.get(&keys::txn_record(*id))?.is_none() {
                let record = TxnRecord {
                    participants: participants.clone(),
                    state: TxnState::Preparing,
                    started_ms: *now_ms,
                };
                txn.put_as(keys::txn_record(*id), &record)?;
                if !cmds.is_empty() {
                    prepare(txn, *id, txn.shard(), cmds, *now_ms)?;
                }
            }
            Ok(txn_reply(*id, None))
        }
        TxnCommand::Prepare {
            id,
            coordinator,
            cmds,
            started_ms,
        } => {
            prepare(txn, *id, *coordinator, cmds, *started_ms)?;
            Ok(txn_reply(*id, None))
        }
        TxnCommand::Decide { id, commit } => {
            // Only recovery resolves a record its coordinator has not decided,
            // and recovery aborts: a record gone stands for an abort.
            let mut committed = false;
            if let Some(mut record) = txn.get_as::<TxnRecord>(&keys::txn_record(*id))? {
                if record.state == TxnState::Preparing {
                    record.state = if *commit {
                        TxnState::Committed
                    } else {
                        TxnState::Aborted
                    };
                    txn.put_as(keys::txn_record(*id), &record)?;
                }
                committed = record.state == TxnState::Committed;
            }
            Ok(txn_reply(*id, Some(committed)))
        }
        TxnCommand::Resolve { id, now_ms } => {
            let committed = match txn.get_as::<TxnRecord>(&keys::txn_record(*id))? {
                Some(record) => match record.state {
                    TxnState::Preparing => None,
                    state => Some(state == TxnState::Committed),
                },
                None => {
                    if txn.get(&keys::txn_tombstone(*id))?.is_none() {
                        txn.put_as(keys::txn_tombstone(*id), now_ms)?;
                    }
                    Some(false)
                }
            };
            Ok(txn_reply(*id, committed))
        }
        TxnCommand::Finish { id, commit, now_ms } => {
            finish(txn, *id, *commit, *now_ms)?;
            Ok(txn_reply(*id, Some(*commit)))
        }
        TxnCommand::Forget { ids } => {
            for id in ids {
                txn.delete(keys::txn_record(*id));
            }
            Ok(Reply::None)
        }
        TxnCommand::Trim { before_ms } => {
            let horizon: i64 = txn.get_as(keys::TXN_HORIZON)?.unwrap_or(i64::MIN);
            if *before_ms <= horizon {
                return Ok(Reply::None);
            }
            for (k, v) in txn.scan(&[keys::TXN_TOMBSTONE], b"", usize::MAX)? {
                if crate::kv::decode::<i64>(&v).map_or(true, |at| at < *before_ms) {
                    txn.delete(k);
                }
            }
            txn.put_as(keys::TXN_HORIZON.to_vec(), before_ms)?;
            Ok(Reply::None)
        }
    }
}

/// Validates `cmds` on the current state, stores them as the intent of `id`
/// and locks the keys they write; a finished transaction is refused.
fn prepare(
    txn: &mut Txn,
    id: u64,
    coordinator: ShardId,
    cmds: &[FsCommand],
    started_ms: i64,
) -> Result<(), MetaError> {
    refuse_finished(txn, id, started_ms)?;
    if txn.get(&keys::txn_intent(id))?.is_some() {
        return Ok(());
    }
    // Dry run: the commands must succeed on the current state, without
    // deciding on a key another transaction is about to change.
    let mut scratch = Txn::new(txn.db(), txn.shard());
    scratch.guarded(Guard::Writer, |scratch| {
        cmds.iter()
            .try_for_each(|c| fs::apply(scratch, c).map(drop))
    })?;
    check_locks(&scratch, None)?;
    let locked: Vec<Vec<u8>> = scratch
        .staged_keys()
        .filter(|k| keys::is_namespace(k))
        .cloned()
        .collect();
    for k in &locked {
        txn.put_as(keys::txn_lock(k), &id)?;
    }
    let intent = Intent {
        coordinator,
        started_ms,
        cmds: cmds.to_vec(),
        locked,
    };
    txn.put_as(keys::txn_intent(id), &intent)
}

/// Refuses a transaction that finished here (or was resolved as abandoned),
/// or began before the trim horizon (its tombstone may be gone).
fn refuse_finished(txn: &Txn, id: u64, started_ms: i64) -> Result<(), MetaError> {
    let horizon: i64 = txn.get_as(keys::TXN_HORIZON)?.unwrap_or(i64::MIN);
    if txn.get(&keys::txn_tombstone(id))?.is_some() || started_ms < horizon {
        return Err(MetaError::fs(EAGAIN, "transaction already finished"));
    }
    Ok(())
}

/// Applies (`commit`) or drops the intent of `id` if this shard holds one,
/// unlocks its keys and leaves the tombstone that refuses a late prepare.
fn finish(txn: &mut Txn, id: u64, commit: bool, now_ms: i64) -> Result<(), MetaError> {
    if txn.get(&keys::txn_tombstone(id))?.is_none() {
        txn.put_as(keys::txn_tombstone(id), &now_ms)?;
    }
    let Some(intent) = txn.get_as::<Intent>(&keys::txn_intent(id))? else {
        return Ok(());
    };
    if commit {
        for c in &intent.cmds {
            // Locked since prepare, so this succeeds as the dry run did.
            fs::apply(txn, c)?;
        }
        check_locks(txn, Some(id))?;
    }
    for k in &intent.locked {
        txn.delete(keys::txn_lock(k));
    }
    txn.delete(keys::txn_intent(id));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Entry;
    use crate::fs::Kind;
    use crate::fs::PutMode;
    use crate::kv::open_db;
    use cairn_proto::ids::ROOT_INO;

    fn run(
        db: &rocksdb::DB,
        shard: u32,
        f: impl FnOnce(&mut Txn) -> Result<Reply, MetaError>,
    ) -> Result<Reply, MetaError> {
        let mut txn = Txn::new(db, shard);
        let r = f(&mut txn);
        if r.is_ok() {
            db.write(txn.into_batch()?)?;
        }
        r
    }

    fn put_entry(name: &str) -> FsCommand {
        FsCommand::PutEntry {
            parent: ROOT_INO,
            name: name.as_bytes().to_vec(),
            entry: Entry {
                ino: cairn_proto::ids::make_ino(2, 5),
                kind: Kind::Dir,
            },
            mode: PutMode::MustNotExist,
            now: 1,
        }
    }

    #[test]
    fn prepare_locks_until_finish() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(&db, 1, |t| fs::apply(t, &FsCommand::InitRoot { now: 0 })).unwrap();
        let prepare = TxnCommand::Prepare {
            id: 7,
            coordinator: 1,
            cmds: vec![put_entry("d")],
            started_ms: 0,
        };
        run(&db, 1, |t| apply(t, &prepare)).unwrap();
        // Nothing visible yet, and the parent is locked against other writers.
        assert!(fs::get_entry(&Txn::new(&db, 1), ROOT_INO, b"d")
            .unwrap()
            .is_none());
        let other = run(&db, 1, |t| {
            let r = fs::apply(t, &put_entry("e"))?;
            check_locks(t, None)?;
            Ok(r)
        });
        assert!(matches!(other, Err(MetaError::Fs(e)) if e.errno == EAGAIN));
        run(&db, 1, |t| {
            apply(
                t,
                &TxnCommand::Finish {
                    id: 7,
                    commit: true,
                    now_ms: 1,
                },
            )
        })
        .unwrap();
        assert!(fs::get_entry(&Txn::new(&db, 1), ROOT_INO, b"d")
            .unwrap()
            .is_some());
        run(&db, 1, |t| {
            let r = fs::apply(t, &put_entry("e"))?;
            check_locks(t, None)?;
            Ok(r)
        })
        .unwrap();
    }

    #[test]
    fn late_prepare_after_abort_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(&db, 1, |t| fs::apply(t, &FsCommand::InitRoot { now: 0 })).unwrap();
        run(&db, 1, |t| {
            apply(
                t,
                &TxnCommand::Finish {
                    id: 9,
                    commit: false,
                    now_ms: 1,
                },
            )
        })
        .unwrap();
        let prepare = TxnCommand::Prepare {
            id: 9,
            coordinator: 1,
            cmds: vec![put_entry("d")],
            started_ms: 0,
        };
        assert!(run(&db, 1, |t| apply(t, &prepare)).is_err());
    }

    #[test]
    fn first_decision_wins() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let begin = TxnCommand::Begin {
            id: 3,
            participants: vec![1, 2],
            cmds: vec![],
            now_ms: 0,
        };
        run(&db, 1, |t| apply(t, &begin)).unwrap();
        let abort = run(&db, 1, |t| {
            apply(
                t,
                &TxnCommand::Decide {
                    id: 3,
                    commit: false,
                },
            )
        })
        .unwrap();
        assert_eq!(
            abort,
            Reply::Txn {
                id: 3,
                committed: Some(false)
            }
        );
        let late = run(&db, 1, |t| {
            apply(
                t,
                &TxnCommand::Decide {
                    id: 3,
                    commit: true,
                },
            )
        })
        .unwrap();
        assert_eq!(
            late,
            Reply::Txn {
                id: 3,
                committed: Some(false)
            }
        );
    }

    /// The coordinator's own part is prepared by the command that records
    /// the transaction (a Begin whose part does not prepare records nothing)
    /// and applied by its finish after the decision.
    #[test]
    fn begin_prepares_the_home_part() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(&db, 1, |t| fs::apply(t, &FsCommand::InitRoot { now: 0 })).unwrap();
        let begin = |id| TxnCommand::Begin {
            id,
            participants: vec![1, 2],
            cmds: vec![put_entry("d")],
            now_ms: 0,
        };
        run(&db, 1, |t| apply(t, &begin(31))).unwrap();
        assert!(locked(&db));
        assert!(fs::get_entry(&Txn::new(&db, 1), ROOT_INO, b"d")
            .unwrap()
            .is_none());
        // A second transaction on the same name cannot prepare: no record.
        let busy = run(&db, 1, |t| apply(t, &begin(32)));
        assert!(matches!(busy, Err(MetaError::Fs(e)) if e.errno == EAGAIN));
        assert!(records(&Txn::new(&db, 1))
            .unwrap()
            .iter()
            .all(|(id, _)| *id == 31));
        let decide = TxnCommand::Decide {
            id: 31,
            commit: true,
        };
        run(&db, 1, |t| apply(t, &decide)).unwrap();
        assert!(locked(&db), "the decision alone applies nothing");
        run(&db, 1, |t| apply(t, &finish(31, true))).unwrap();
        assert!(!locked(&db));
        assert!(fs::get_entry(&Txn::new(&db, 1), ROOT_INO, b"d")
            .unwrap()
            .is_some());
        run(&db, 1, |t| apply(t, &TxnCommand::Forget { ids: vec![31] })).unwrap();
        assert!(records(&Txn::new(&db, 1)).unwrap().is_empty());
    }

    /// A reader sees a locked key as it was while the transaction that locked
    /// it is undecided here, its coordinator's shard; it waits (EAGAIN) once
    /// the transaction is decided and until it is finished, and for the whole
    /// of a transaction coordinated elsewhere (its decision unknown here).
    #[test]
    fn readers_see_before_an_undecided_transaction_and_wait_for_a_decided_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(&db, 1, |t| fs::apply(t, &FsCommand::InitRoot { now: 0 })).unwrap();
        let read = |name: &str| fs::get_entry(&Txn::reader(&db, 1), ROOT_INO, name.as_bytes());
        let list = || Txn::reader(&db, 1).scan(&keys::dentry_prefix(ROOT_INO), b"", 10);
        fn waits<T>(r: Result<T, MetaError>) -> bool {
            matches!(r, Err(MetaError::Fs(e)) if e.errno == EAGAIN)
        }
        let begin = TxnCommand::Begin {
            id: 31,
            participants: vec![1, 2],
            cmds: vec![put_entry("d")],
            now_ms: 0,
        };
        run(&db, 1, |t| apply(t, &begin)).unwrap();
        assert!(read("d").unwrap().is_none());
        assert!(list().unwrap().is_empty());
        let decide = TxnCommand::Decide {
            id: 31,
            commit: true,
        };
        run(&db, 1, |t| apply(t, &decide)).unwrap();
        assert!(waits(read("d")));
        assert!(waits(list()));
        assert!(waits(fs::get_inode(&Txn::reader(&db, 1), ROOT_INO)));
        assert!(
            fs::get_inode(&Txn::new(&db, 1), ROOT_INO).is_ok(),
            "apply reads freely"
        );
        run(&db, 1, |t| apply(t, &finish(31, true))).unwrap();
        assert!(read("d").unwrap().is_some());
        assert_eq!(list().unwrap().len(), 1);
        // Prepared here for a coordinator elsewhere: waited for throughout.
        run(&db, 1, |t| apply(t, &prepare(32, "e", 0))).unwrap();
        assert!(waits(read("e")));
        assert!(
            read("d").unwrap().is_some(),
            "a key not locked reads freely"
        );
        run(&db, 1, |t| apply(t, &finish(32, false))).unwrap();
        assert!(read("e").unwrap().is_none());
    }

    fn finish(id: u64, commit: bool) -> TxnCommand {
        TxnCommand::Finish {
            id,
            commit,
            now_ms: 100,
        }
    }

    fn prepare(id: u64, name: &str, started_ms: i64) -> TxnCommand {
        TxnCommand::Prepare {
            id,
            coordinator: 1,
            cmds: vec![put_entry(name)],
            started_ms,
        }
    }

    fn locked(db: &rocksdb::DB) -> bool {
        !Txn::new(db, 1)
            .scan(&[keys::TXN_LOCK], b"", 1)
            .unwrap()
            .is_empty()
    }

    /// Recovery aborted the transaction after every participant prepared: the
    /// coordinator's own decide for commit must learn the abort, and must not
    /// answer success (or a retry would take the abort for a commit).
    #[test]
    fn commit_decision_after_recovery_abort_answers_abort() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let begin = TxnCommand::Begin {
            id: 5,
            participants: vec![1, 2],
            cmds: vec![],
            now_ms: 0,
        };
        run(&db, 1, |t| apply(t, &begin)).unwrap();
        let decide = |commit| TxnCommand::Decide { id: 5, commit };
        run(&db, 1, |t| apply(t, &decide(false))).unwrap();
        let late = run(&db, 1, |t| apply(t, &decide(true))).unwrap();
        assert_eq!(
            late,
            Reply::Txn {
                id: 5,
                committed: Some(false)
            }
        );
        // Recovery finished and forgot it: still an abort, not an error.
        run(&db, 1, |t| apply(t, &TxnCommand::Forget { ids: vec![5] })).unwrap();
        let gone = run(&db, 1, |t| apply(t, &decide(true))).unwrap();
        assert_eq!(
            gone,
            Reply::Txn {
                id: 5,
                committed: Some(false)
            }
        );
    }

    /// Prepared, then aborted (its intent dropped): a duplicate prepare that
    /// arrives afterwards must not lock the keys again, for good.
    #[test]
    fn late_prepare_after_a_finished_transaction_locks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(&db, 1, |t| fs::apply(t, &FsCommand::InitRoot { now: 0 })).unwrap();
        for (id, commit) in [(11, false), (12, true)] {
            let name = format!("d{id}");
            run(&db, 1, |t| apply(t, &prepare(id, &name, 0))).unwrap();
            assert!(locked(&db));
            run(&db, 1, |t| apply(t, &finish(id, commit))).unwrap();
            assert!(!locked(&db));
            let again = run(&db, 1, |t| apply(t, &prepare(id, &name, 0)));
            assert!(matches!(again, Err(MetaError::Fs(e)) if e.errno == EAGAIN));
            assert!(!locked(&db), "a late prepare of {id} locked keys");
        }
    }

    /// A participant's recovery resolves a prepare at its coordinator shard:
    /// abort when no record exists, after which the record cannot land (its
    /// Begin was still on its way); nothing while the record is preparing;
    /// the decision once there is one. Only prepares of transactions another
    /// shard coordinates are the participant's to recover.
    #[test]
    fn a_prepare_without_its_record_resolves_to_abort_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(&db, 1, |t| fs::apply(t, &FsCommand::InitRoot { now: 0 })).unwrap();
        let resolve = |id| TxnCommand::Resolve { id, now_ms: 100 };
        let begin = |id, name: &str| TxnCommand::Begin {
            id,
            participants: vec![1, 2],
            cmds: vec![put_entry(name)],
            now_ms: 0,
        };
        let committed = |r: Result<Reply, MetaError>| match r {
            Ok(Reply::Txn { committed, .. }) => committed,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            committed(run(&db, 1, |t| apply(t, &resolve(41)))),
            Some(false)
        );
        let late = run(&db, 1, |t| apply(t, &begin(41, "a")));
        assert!(matches!(late, Err(MetaError::Fs(e)) if e.errno == EAGAIN));
        assert!(records(&Txn::new(&db, 1)).unwrap().is_empty());
        assert!(!locked(&db));

        run(&db, 1, |t| apply(t, &begin(42, "b"))).unwrap();
        assert_eq!(committed(run(&db, 1, |t| apply(t, &resolve(42)))), None);
        let decide = TxnCommand::Decide {
            id: 42,
            commit: true,
        };
        run(&db, 1, |t| apply(t, &decide)).unwrap();
        assert_eq!(
            committed(run(&db, 1, |t| apply(t, &resolve(42)))),
            Some(true)
        );
        run(&db, 1, |t| apply(t, &finish(42, true))).unwrap();

        let foreign = TxnCommand::Prepare {
            id: 43,
            coordinator: 2,
            cmds: vec![put_entry("c")],
            started_ms: 7,
        };
        run(&db, 1, |t| apply(t, &foreign)).unwrap();
        let intents = foreign_intents(&Txn::new(&db, 1)).unwrap();
        assert_eq!(intents.len(), 1, "only the prepare coordinated elsewhere");
        assert_eq!((intents[0].0, intents[0].1.started_ms), (43, 7));
    }

    /// Trimming tombstones raises a horizon: a prepare of a transaction that
    /// began before it is refused even though its tombstone is gone.
    #[test]
    fn trimmed_tombstones_still_refuse_late_prepares() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        run(&db, 1, |t| fs::apply(t, &FsCommand::InitRoot { now: 0 })).unwrap();
        run(&db, 1, |t| apply(t, &finish(21, false))).unwrap();
        run(&db, 1, |t| apply(t, &TxnCommand::Trim { before_ms: 1_000 })).unwrap();
        assert!(Txn::new(&db, 1)
            .scan(&[keys::TXN_TOMBSTONE], b"", 1)
            .unwrap()
            .is_empty());
        let late = run(&db, 1, |t| apply(t, &prepare(21, "x", 50)));
        assert!(matches!(late, Err(MetaError::Fs(e)) if e.errno == EAGAIN));
        assert!(!locked(&db));
        // A transaction begun after the horizon prepares as usual.
        run(&db, 1, |t| apply(t, &prepare(22, "y", 2_000))).unwrap();
        assert!(locked(&db));
    }
}
