//! Two-phase commit for operations that span shards, with coordinator and
//! participants that are Raft groups, so every record and decision is durable.
//!
//! - The coordinator shard (the home shard of the operation) records the
//!   transaction (`t<id>`: participants, state `Preparing`).
//! - Each participant shard *prepares*: it runs the transaction's commands for
//!   that shard on a scratch transaction to check they succeed, then stores them
//!   as an intent (`p<id>`) and locks every key they would write (`L<key>`).
//!   Nothing else may write a locked key (it gets EAGAIN and retries), so the
//!   commands still succeed when the decision comes.
//! - The coordinator *decides* commit (every participant prepared) or abort; the
//!   first decision recorded wins.
//! - Each participant *finishes*: on commit it applies its commands, on abort it
//!   drops them; either way it unlocks. A finish-abort for a transaction never
//!   prepared leaves a tombstone (`a<id>`) so a late prepare is refused.
//! - The coordinator forgets the record once every participant finished.
//!
//! Recovery: a coordinator leader finds records older than a few seconds,
//! decides abort for those still preparing, and (re)sends finish to every
//! participant. Finish and decide are idempotent, so recovery may race a live
//! coordinator safely.

use cairn_proto::ids::ShardId;
use cairn_proto::status::EAGAIN;
use cairn_proto::status::EIO;
use serde::Deserialize;
use serde::Serialize;

use crate::error::MetaError;
use crate::fs;
use crate::fs::FsCommand;
use crate::fs::Reply;
use crate::kv::key;
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
struct Intent {
    coordinator: ShardId,
    cmds: Vec<FsCommand>,
    locked: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum TxnCommand {
    /// Coordinator: record a new transaction.
    Begin {
        id: u64,
        participants: Vec<ShardId>,
        now_ms: i64,
    },
    /// Participant: validate, store and lock.
    Prepare {
        id: u64,
        coordinator: ShardId,
        cmds: Vec<FsCommand>,
    },
    /// Coordinator: record the decision (the first one wins).
    Decide { id: u64, commit: bool },
    /// Participant: apply or drop the intent, unlock.
    Finish { id: u64, commit: bool },
    /// Coordinator: drop the record.
    Forget { id: u64 },
}

pub fn record_key(id: u64) -> Vec<u8> {
    key(b't', &[&id.to_be_bytes()])
}
fn intent_key(id: u64) -> Vec<u8> {
    key(b'p', &[&id.to_be_bytes()])
}
fn tombstone_key(id: u64) -> Vec<u8> {
    key(b'a', &[&id.to_be_bytes()])
}
fn lock_key(k: &[u8]) -> Vec<u8> {
    key(b'L', &[k])
}

/// Whether a state-machine key belongs to the namespace (and so can be locked).
fn lockable(k: &[u8]) -> bool {
    matches!(k.first(), Some(b'i' | b'd' | b'c' | b'x' | b'l'))
}

/// Fails with EAGAIN when the staged writes touch a key locked by another
/// transaction than `owner`.
pub fn check_locks(txn: &Txn, owner: Option<u64>) -> Result<(), MetaError> {
    for k in txn.staged_keys().filter(|k| lockable(k)) {
        if let Some(holder) = txn.get_as::<u64>(&lock_key(k))? {
            if Some(holder) != owner {
                return Err(MetaError::fs(EAGAIN, "locked by a cross-shard operation"));
            }
        }
    }
    Ok(())
}

/// Every coordinator record of this shard.
pub fn records(txn: &Txn) -> Result<Vec<(u64, TxnRecord)>, MetaError> {
    let mut out = Vec::new();
    for (k, v) in txn.scan(b"t", b"", usize::MAX)? {
        let id = u64::from_be_bytes(
            k[1..9]
                .try_into()
                .map_err(|_| MetaError::Storage("malformed txn key".into()))?,
        );
        out.push((id, crate::kv::decode(&v)?));
    }
    Ok(out)
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
            now_ms,
        } => {
            if txn.get(&record_key(*id))?.is_none() {
                let record = TxnRecord {
                    participants: participants.clone(),
                    state: TxnState::Preparing,
                    started_ms: *now_ms,
                };
                txn.put_as(record_key(*id), &record)?;
            }
            Ok(txn_reply(*id, None))
        }
        TxnCommand::Prepare {
            id,
            coordinator,
            cmds,
        } => {
            if txn.get(&tombstone_key(*id))?.is_some() {
                return Err(MetaError::fs(EAGAIN, "transaction already aborted"));
            }
            if txn.get(&intent_key(*id))?.is_some() {
                return Ok(txn_reply(*id, None));
            }
            // Dry run: the commands must succeed on the current state.
            let mut scratch = Txn::new(txn.db(), txn.shard());
            for c in cmds {
                fs::apply(&mut scratch, c)?;
            }
            check_locks(&scratch, None)?;
            let locked: Vec<Vec<u8>> = scratch
                .staged_keys()
                .filter(|k| lockable(k))
                .cloned()
                .collect();
            for k in &locked {
                txn.put_as(lock_key(k), id)?;
            }
            let intent = Intent {
                coordinator: *coordinator,
                cmds: cmds.clone(),
                locked,
            };
            txn.put_as(intent_key(*id), &intent)?;
            Ok(txn_reply(*id, None))
        }
        TxnCommand::Decide { id, commit } => {
            let Some(mut record) = txn.get_as::<TxnRecord>(&record_key(*id))? else {
                // Only recovery resolves a record its coordinator has not decided,
                // and recovery aborts.
                return Err(MetaError::fs(
                    EIO,
                    "transaction was rolled back by recovery",
                ));
            };
            if record.state == TxnState::Preparing {
                record.state = if *commit {
                    TxnState::Committed
                } else {
                    TxnState::Aborted
                };
                txn.put_as(record_key(*id), &record)?;
            }
            Ok(txn_reply(*id, Some(record.state == TxnState::Committed)))
        }
        TxnCommand::Finish { id, commit } => {
            let Some(intent) = txn.get_as::<Intent>(&intent_key(*id))? else {
                if !commit {
                    txn.put_as(tombstone_key(*id), &true)?;
                }
                return Ok(txn_reply(*id, Some(*commit)));
            };
            if *commit {
                for c in &intent.cmds {
                    // Locked since prepare, so this succeeds as the dry run did.
                    fs::apply(txn, c)?;
                }
                check_locks(txn, Some(*id))?;
            }
            for k in &intent.locked {
                txn.delete(lock_key(k));
            }
            txn.delete(intent_key(*id));
            Ok(txn_reply(*id, Some(*commit)))
        }
        TxnCommand::Forget { id } => {
            txn.delete(record_key(*id));
            Ok(Reply::None)
        }
    }
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
                },
            )
        })
        .unwrap();
        let prepare = TxnCommand::Prepare {
            id: 9,
            coordinator: 1,
            cmds: vec![put_entry("d")],
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
}
