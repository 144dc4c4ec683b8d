//! The tiering state shard 0 keeps for the whole cluster: the cold backend,
//! the tier policies, and each policy's latest run (its cursor makes an
//! interrupted run resumable). Values are the protobuf messages themselves;
//! the service checks them before they are proposed.
//!
//! Keys: `Tb` the backend, `Tp<name>` a policy, `Tr<name>` its latest run.

use prost::Message;
use serde::Deserialize;
use serde::Serialize;

use crate::error::MetaError;
use crate::fs::Reply;
use crate::keys;
use crate::kv::Txn;
use cairn_proto::pb;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum TierCommand {
    /// An encoded `pb::ColdBackend`.
    SetBackend(Vec<u8>),
    /// An encoded `pb::TierPolicy` under its name (replacing one of that name).
    PutPolicy { name: String, policy: Vec<u8> },
    /// Removes a policy and its run.
    DeletePolicy(String),
    /// An encoded `pb::TierRun` of an existing policy.
    PutRun { name: String, run: Vec<u8> },
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, MetaError> {
    M::decode(bytes).map_err(|e| MetaError::Storage(format!("corrupt tier record: {e}")))
}

pub fn apply(txn: &mut Txn, cmd: &TierCommand) -> Result<Reply, MetaError> {
    match cmd {
        TierCommand::SetBackend(backend) => txn.put(keys::tier_backend(), backend.clone()),
        TierCommand::PutPolicy { name, policy } => txn.put(keys::tier_policy(name), policy.clone()),
        TierCommand::DeletePolicy(name) => {
            if txn.get(&keys::tier_policy(name))?.is_none() {
                return Err(MetaError::fs(
                    cairn_proto::status::ENOENT,
                    format!("no tier policy {name:?}"),
                ));
            }
            txn.delete(keys::tier_policy(name));
            txn.delete(keys::tier_run(name));
        }
        TierCommand::PutRun { name, run } => {
            if txn.get(&keys::tier_policy(name))?.is_none() {
                return Err(MetaError::fs(
                    cairn_proto::status::ENOENT,
                    format!("no tier policy {name:?}"),
                ));
            }
            txn.put(keys::tier_run(name), run.clone());
        }
    }
    Ok(Reply::None)
}

/// Everything tiering keeps, policies and runs in name order.
pub fn config(txn: &Txn) -> Result<pb::TierConfig, MetaError> {
    let backend = txn
        .get(&keys::tier_backend())?
        .map(|b| decode(&b))
        .transpose()?;
    let policies = txn
        .scan(&keys::tier_policy_prefix(), b"", usize::MAX)?
        .iter()
        .map(|(_, v)| decode(v))
        .collect::<Result<_, _>>()?;
    let runs = txn
        .scan(&keys::tier_run_prefix(), b"", usize::MAX)?
        .iter()
        .map(|(_, v)| decode(v))
        .collect::<Result<_, _>>()?;
    Ok(pb::TierConfig {
        backend,
        policies,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_and_runs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::kv::open_db(dir.path()).unwrap();
        let run = |cmd: TierCommand| {
            let mut txn = Txn::new(&db, 0);
            let r = apply(&mut txn, &cmd);
            if r.is_ok() {
                db.write(txn.into_batch().unwrap()).unwrap();
            }
            r
        };
        let policy = pb::TierPolicy {
            name: "old".into(),
            path: "/ckpt/**".into(),
            action: pb::TierAction::ToCold as i32,
            ..Default::default()
        };
        let tier_run = pb::TierRun {
            policy: "old".into(),
            cursor: "/ckpt/a".into(),
            ..Default::default()
        };
        // A run needs its policy.
        assert!(run(TierCommand::PutRun {
            name: "old".into(),
            run: tier_run.encode_to_vec()
        })
        .is_err());
        run(TierCommand::PutPolicy {
            name: "old".into(),
            policy: policy.encode_to_vec(),
        })
        .unwrap();
        run(TierCommand::PutRun {
            name: "old".into(),
            run: tier_run.encode_to_vec(),
        })
        .unwrap();
        let backend = pb::ColdBackend {
            url: "file:///cold".into(),
            ..Default::default()
        };
        run(TierCommand::SetBackend(backend.encode_to_vec())).unwrap();
        let got = config(&Txn::new(&db, 0)).unwrap();
        assert_eq!(got.backend, Some(backend));
        assert_eq!(got.policies, vec![policy]);
        assert_eq!(got.runs, vec![tier_run]);

        run(TierCommand::DeletePolicy("old".into())).unwrap();
        let got = config(&Txn::new(&db, 0)).unwrap();
        assert!(got.policies.is_empty() && got.runs.is_empty());
        assert!(run(TierCommand::DeletePolicy("old".into())).is_err());
    }
}
