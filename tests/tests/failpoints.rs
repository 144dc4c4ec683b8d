//! Failures injected at every step of the two-phase commit (the `fail` crate,
//! so this binary is built with `--features failpoints` and runs three metad
//! nodes in this process: the failpoint registry is process-global).
//!
//! For each step, a cross-shard mkdir and a cross-shard rename fail right after
//! it, once retried by the client (the retry must complete the operation exactly
//! once) and once abandoned (recovery must finish or roll back the transaction,
//! leaving the operation applied entirely or not at all).

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use cairn_client::MetaClient;
use cairn_metad::config::Peer;
use cairn_metad::node::dir_shard;
use cairn_proto::ids::ino_shard;
use cairn_proto::ids::ROOT_INO;
use cairn_proto::pb;
use cairn_tests::check_tree;
use cairn_tests::wait_for;

const DATA_SHARDS: u32 = 4;
const STEPS: [&str; 4] = [
    "txn::after_begin",
    "txn::after_prepare",
    "txn::after_decide",
    "txn::after_finish",
];

struct InProcess {
    addrs: Vec<String>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Result<(), cairn_metad::MetaError>>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.to_string()))
            .collect::<Result<_, _>>()?;
        let peers: Vec<Peer> = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| Peer {
                id: i as u64 + 1,
                addr: addr.clone(),
            })
            .collect();
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let config = cairn_metad::Config {
                id: i as u64 + 1,
                listen: addrs[i].clone(),
                data_dir: dir.path().join(format!("m{i}")),
                peers: peers.clone(),
                data_shards: DATA_SHARDS,
                heartbeat_ms: 50,
                election_timeout_ms: 300,
                txn_recover_after_ms: 500,
                ..Default::default()
            };
            tasks.push(tokio::spawn(cairn_metad::serve(
                config,
                listener,
                shutdown.clone(),
            )));
        }
        let cluster = InProcess {
            addrs,
            shutdown,
            tasks,
            _dir: dir,
        };
        let meta = cluster.client();
        wait_for("the root directory", Duration::from_secs(30), || async {
            meta.getattr(ROOT_INO).await.is_ok()
        })
        .await?;
        Ok(cluster)
    }

    fn client(&self) -> MetaClient {
        MetaClient::new(self.addrs.clone(), Default::default())
            .with_deadline(Duration::from_secs(10))
    }

    /// One attempt, no retry, at the leader of `shard`.
    async fn mutate_once(
        &self,
        shard: u32,
        op: pb::mutate_request::Op,
    ) -> anyhow::Result<Result<(), tonic::Status>> {
        let map = self.client().refresh_map().await?;
        let leader = map
            .shards
            .iter()
            .find(|s| s.id == shard)
            .and_then(|s| map.meta_nodes.iter().find(|n| n.id == s.leader))
            .ok_or_else(|| anyhow::anyhow!("shard {shard} has no leader"))?;
        let ch = cairn_proto::channel::Channels::default().get(&leader.addr)?;
        let mut raw = pb::meta_client::MetaClient::new(ch);
        let req = pb::MutateRequest {
            id: Some(pb::RequestId {
                client_id: rand::random(),
                seq: 1,
            }),
            op: Some(op),
            ..Default::default()
        };
        Ok(raw.mutate(req).await.map(|_| ()))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// A name whose directory lands on another shard than `parent`'s.
fn remote_name(parent: u64, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|n| dir_shard(parent, n.as_bytes(), DATA_SHARDS) != ino_shard(parent))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_two_phase_commit_step_survives_a_failure() -> anyhow::Result<()> {
    let scenario = fail::FailScenario::setup();
    let cluster = InProcess::start().await?;
    let meta = cluster.client();
    for (n, fp) in STEPS.iter().enumerate() {
        // Retried by the client: completes exactly once.
        fail::cfg(*fp, "1*return").map_err(anyhow::Error::msg)?;
        let name = remote_name(ROOT_INO, &format!("retried{n}-"));
        let made = meta.mkdir(ROOT_INO, name.as_bytes(), 0o755).await?;
        assert_ne!(ino_shard(made.ino), ino_shard(ROOT_INO));
        assert_eq!(meta.lookup(ROOT_INO, name.as_bytes()).await?.ino, made.ino);
        fail::cfg(*fp, "1*return").map_err(anyhow::Error::msg)?;
        meta.create(made.ino, b"f", 0o644, true).await?;
        let target = remote_name(ROOT_INO, &format!("target{n}-"));
        let dst = meta.mkdir(ROOT_INO, target.as_bytes(), 0o755).await?;
        fail::cfg(*fp, "1*return").map_err(anyhow::Error::msg)?;
        meta.rename(made.ino, b"f", dst.ino, b"g", pb::RenameMode::Replace)
            .await?;
        assert!(meta.lookup(dst.ino, b"g").await.is_ok());
        assert!(meta.lookup(made.ino, b"f").await.is_err());
        fail::remove(*fp);
        check_tree(&meta).await?;

        // Abandoned after the failure: recovery resolves it one way or the other.
        fail::cfg(*fp, "1*return").map_err(anyhow::Error::msg)?;
        let name = remote_name(ROOT_INO, &format!("abandoned{n}-"));
        let op = pb::mutate_request::Op::Mkdir(pb::MkdirOp {
            parent: ROOT_INO,
            name: name.clone().into(),
            perm: 0o755,
        });
        let first = cluster.mutate_once(ino_shard(ROOT_INO), op).await?;
        assert!(first.is_err(), "{fp} should have failed the coordinator");
        fail::remove(*fp);
        wait_for(
            "recovery to resolve the mkdir",
            Duration::from_secs(20),
            || async { check_tree(&meta).await.is_ok() },
        )
        .await?;
        // Applied entirely or not at all; either way the name can be used.
        match meta.lookup(ROOT_INO, name.as_bytes()).await {
            Ok(attr) => assert_eq!(meta.getattr(attr.ino).await?.nlink, 2),
            Err(_) => {
                meta.mkdir(ROOT_INO, name.as_bytes(), 0o755).await?;
            }
        }
        fail::cfg(*fp, "1*return").map_err(anyhow::Error::msg)?;
        let op = pb::mutate_request::Op::Rename(pb::RenameOp {
            parent: dst.ino,
            name: "g".into(),
            new_parent: ROOT_INO,
            new_name: format!("moved{n}").into(),
            mode: pb::RenameMode::Replace as i32,
        });
        let first = cluster.mutate_once(ino_shard(dst.ino), op).await?;
        assert!(first.is_err(), "{fp} should have failed the coordinator");
        fail::remove(*fp);
        wait_for(
            "recovery to resolve the rename",
            Duration::from_secs(20),
            || async { check_tree(&meta).await.is_ok() },
        )
        .await?;
        let at_old = meta.lookup(dst.ino, b"g").await.is_ok();
        let at_new = meta
            .lookup(ROOT_INO, format!("moved{n}").as_bytes())
            .await
            .is_ok();
        assert!(
            at_old != at_new,
            "{fp}: the file must be under exactly one name (old {at_old}, new {at_new})"
        );
    }
    cluster.stop().await;
    scenario.teardown();
    Ok(())
}
