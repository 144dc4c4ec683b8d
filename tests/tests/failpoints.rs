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
    "txn::lost_begin",
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
        self.mutate_as(shard, op, rand::random(), 1).await
    }

    /// One attempt at the leader of `shard` as request `seq` of `client_id`
    /// (the same id twice is a client's retry after a lost answer).
    async fn mutate_as(
        &self,
        shard: u32,
        op: pb::mutate_request::Op,
        client_id: u64,
        seq: u64,
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
            id: Some(pb::RequestId { client_id, seq }),
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

/// A name for which `dir_shard` gives (or, with `same` false, does not give)
/// the shard of `parent`.
fn name_on(parent: u64, prefix: &str, same: bool) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|n| (dir_shard(parent, n.as_bytes(), DATA_SHARDS) == ino_shard(parent)) == same)
        .unwrap_or_default()
}

/// A retry of an unlink, rmdir or rename (same client and sequence, as after
/// a lost answer) answers what the first attempt answered, not ENOENT from the
/// state that attempt changed; single-shard and cross-shard alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_unlink_rmdir_and_rename_answer_the_first_outcome() -> anyhow::Result<()> {
    let cluster = InProcess::start().await?;
    let meta = cluster.client();
    let home = ino_shard(ROOT_INO);
    let remote = meta
        .mkdir(ROOT_INO, remote_name(ROOT_INO, "remote").as_bytes(), 0o755)
        .await?;
    let mut ops = Vec::new();
    for (i, same) in [true, false].into_iter().enumerate() {
        let dir = name_on(ROOT_INO, &format!("rm{i}-"), same);
        meta.mkdir(ROOT_INO, dir.as_bytes(), 0o755).await?;
        ops.push(pb::mutate_request::Op::Rmdir(pb::RmdirOp {
            parent: ROOT_INO,
            name: dir.into(),
        }));
    }
    meta.create(ROOT_INO, b"victim", 0o644, true).await?;
    ops.push(pb::mutate_request::Op::Unlink(pb::UnlinkOp {
        parent: ROOT_INO,
        name: "victim".into(),
    }));
    for (i, new_parent) in [ROOT_INO, remote.ino].into_iter().enumerate() {
        let name = format!("mv{i}");
        meta.create(ROOT_INO, name.as_bytes(), 0o644, true).await?;
        ops.push(pb::mutate_request::Op::Rename(pb::RenameOp {
            parent: ROOT_INO,
            name: name.into(),
            new_parent,
            new_name: format!("moved{i}").into(),
            mode: pb::RenameMode::Replace as i32,
        }));
    }
    for (seq, op) in ops.into_iter().enumerate() {
        let client = rand::random();
        let first = cluster
            .mutate_as(home, op.clone(), client, seq as u64 + 1)
            .await?;
        assert!(first.is_ok(), "{op:?}: {first:?}");
        let retry = cluster
            .mutate_as(home, op.clone(), client, seq as u64 + 1)
            .await?;
        assert!(retry.is_ok(), "retry of {op:?} answered {retry:?}");
        // A new request (another sequence) does see the new state.
        let again = cluster
            .mutate_as(home, op.clone(), client, seq as u64 + 100)
            .await?;
        assert!(again.is_err(), "{op:?} applied twice");
    }
    assert!(meta.lookup(ROOT_INO, b"moved0").await.is_ok());
    assert!(meta.lookup(remote.ino, b"moved1").await.is_ok());
    check_tree(&meta).await?;
    cluster.stop().await;
    Ok(())
}

/// A cross-shard mkdir whose coordinator stalls after preparing, long enough
/// for recovery to roll the transaction back: the client's retry (same
/// request id) must not take the remembered abort for a commit, and must not
/// be stuck with it either: it succeeds, and the directory then exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_recovery_aborted_the_first_attempt_applies_it() -> anyhow::Result<()> {
    let scenario = fail::FailScenario::setup();
    let cluster = InProcess::start().await?;
    let meta = cluster.client();
    let home = ino_shard(ROOT_INO);
    for round in 0..2 {
        let name = remote_name(ROOT_INO, &format!("stalled{round}-"));
        let op = pb::mutate_request::Op::Mkdir(pb::MkdirOp {
            parent: ROOT_INO,
            name: name.clone().into(),
            perm: 0o755,
        });
        let client = rand::random();
        // The first attempt stalls after its prepares for longer than recovery
        // waits (txn-recover-after 500 ms, checked every 500 ms), so its own
        // decision for commit comes after recovery's abort.
        fail::cfg("txn::after_prepare", "1*sleep(4000)").map_err(anyhow::Error::msg)?;
        let first = cluster.mutate_as(home, op.clone(), client, 7).await?;
        fail::remove("txn::after_prepare");
        // Rolled back, and said to be worth a retry (EAGAIN), not a failure.
        let Err(status) = first else {
            anyhow::bail!("the rolled-back attempt answered success");
        };
        assert!(
            matches!(
                cairn_proto::status::decode(&status),
                cairn_proto::status::WireError::Errno { errno, .. }
                    if errno == cairn_proto::status::EAGAIN
            ),
            "the rolled-back attempt answered {status:?}"
        );
        assert!(meta.lookup(ROOT_INO, name.as_bytes()).await.is_err());
        let retry = cluster.mutate_as(home, op, client, 7).await?;
        assert!(retry.is_ok(), "retry answered {retry:?}");
        let made = meta.lookup(ROOT_INO, name.as_bytes()).await;
        assert!(
            made.is_ok(),
            "the retry answered success but applied nothing"
        );
        check_tree(&meta).await?;
    }
    cluster.stop().await;
    scenario.teardown();
    Ok(())
}

/// Through the client library's own retries (what the FUSE mount and the S3
/// gateway use), a cross-shard mkdir and rmdir whose first attempt stalls
/// until recovery rolls it back succeed: the rollback is answered EAGAIN and
/// retried. It used to be EIO, which reached applications: the spurious EIO
/// of `rm -rf` on a loaded machine (a cross-shard rmdir that outlived
/// `txn-recover-after-ms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attempt_rolled_back_by_recovery_is_retried_not_failed() -> anyhow::Result<()> {
    let scenario = fail::FailScenario::setup();
    let cluster = InProcess::start().await?;
    let meta = cluster.client();
    for round in 0..2 {
        let name = remote_name(ROOT_INO, &format!("slow{round}-"));
        // The first attempt stalls after its second prepare for longer than
        // recovery waits; the retry finds the failpoint spent.
        fail::cfg("txn::after_prepare", "1*off->1*sleep(4000)").map_err(anyhow::Error::msg)?;
        let made = meta.mkdir(ROOT_INO, name.as_bytes(), 0o755).await;
        fail::remove("txn::after_prepare");
        made?;
        meta.lookup(ROOT_INO, name.as_bytes()).await?;
        fail::cfg("txn::after_prepare", "1*off->1*sleep(4000)").map_err(anyhow::Error::msg)?;
        let removed = meta.rmdir(ROOT_INO, name.as_bytes()).await;
        fail::remove("txn::after_prepare");
        removed?;
        let gone = meta.lookup(ROOT_INO, name.as_bytes()).await;
        assert!(
            gone.as_ref()
                .is_err_and(|e| e.errno() == cairn_proto::status::ENOENT),
            "after rmdir: {gone:?}"
        );
        check_tree(&meta).await?;
    }
    cluster.stop().await;
    scenario.teardown();
    Ok(())
}

/// Two renames that cross (A into B, B into A) run at once, with the window
/// between the ancestry check and the commit widened: exactly one may win,
/// and both directories stay reachable from the root (no cycle cut off from
/// the tree). Same-shard and cross-shard placements both occur.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossing_directory_renames_never_make_a_cycle() -> anyhow::Result<()> {
    let scenario = fail::FailScenario::setup();
    let cluster = InProcess::start().await?;
    let meta = cluster.client();
    fail::cfg("rename::after_check", "sleep(300)").map_err(anyhow::Error::msg)?;
    for round in 0..6 {
        let top = meta
            .mkdir(ROOT_INO, format!("top{round}").as_bytes(), 0o755)
            .await?;
        let a = meta.mkdir(top.ino, b"a", 0o755).await?;
        let b = meta.mkdir(top.ino, b"b", 0o755).await?;
        let (m1, m2) = (cluster.client(), cluster.client());
        let (r1, r2) = tokio::join!(
            m1.rename(top.ino, b"a", b.ino, b"a", pb::RenameMode::Replace),
            m2.rename(top.ino, b"b", a.ino, b"b", pb::RenameMode::Replace),
        );
        assert!(
            r1.is_ok() != r2.is_ok(),
            "round {round}: exactly one rename may win ({r1:?}, {r2:?})"
        );
        let listed = meta.readdir(top.ino).await?;
        assert_eq!(listed.len(), 1, "round {round}: {listed:?}");
        let winner = listed[0].ino;
        assert_eq!(meta.readdir(winner).await?.len(), 1);
        assert_eq!(
            meta.getattr(a.ino).await?.nlink,
            2 + u32::from(winner == a.ino)
        );
    }
    fail::remove("rename::after_check");
    let stats = check_tree(&meta).await?;
    assert_eq!(stats.dirs, 1 + 6 * 3, "a directory fell out of the tree");
    cluster.stop().await;
    scenario.teardown();
    Ok(())
}

/// A cross-shard rename is seen whole or not at all. Its coordinator holds the
/// other shard's finish back 2 s after the home shard's; meanwhile a reader
/// reads one name, then the other (lookups, then listings, both orders): once
/// the first read shows the rename done, the second must too. A locked entry
/// reads as before only while its transaction is undecided, and is waited for
/// once it is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_see_half_a_cross_shard_rename() -> anyhow::Result<()> {
    let scenario = fail::FailScenario::setup();
    let cluster = InProcess::start().await?;
    let meta = cluster.client();
    let src_name = remote_name(ROOT_INO, "src");
    let dst_name = (0..)
        .map(|i| format!("dst{i}"))
        .find(|n| {
            let shard = dir_shard(ROOT_INO, n.as_bytes(), DATA_SHARDS);
            shard != dir_shard(ROOT_INO, src_name.as_bytes(), DATA_SHARDS)
        })
        .unwrap_or_default();
    let src = meta.mkdir(ROOT_INO, src_name.as_bytes(), 0o755).await?.ino;
    let dst = meta.mkdir(ROOT_INO, dst_name.as_bytes(), 0o755).await?.ino;
    assert_ne!(ino_shard(src), ino_shard(dst));
    let reader = cluster.client();
    // Whether the rename shows at `old` (src/f gone) or `new` (dst/g there),
    // by lookup or by listing.
    let shows = |at_new: bool, listing: bool| {
        let reader = &reader;
        async move {
            let (dir, name) = if at_new { (dst, "g") } else { (src, "f") };
            let present = if listing {
                let names = reader.readdir(dir).await?;
                names.iter().any(|e| e.name == name.as_bytes())
            } else {
                match reader.lookup(dir, name.as_bytes()).await {
                    Ok(_) => true,
                    Err(e) if e.errno() == cairn_proto::status::ENOENT => false,
                    Err(e) => return Err(anyhow::Error::from(e)),
                }
            };
            anyhow::Ok(present == at_new)
        }
    };
    let mut seen_between = 0;
    for round in 0..4 {
        let (listing, new_first) = (round / 2 == 1, round % 2 == 0);
        meta.create(src, b"f", 0o644, true).await?;
        fail::cfg("txn::before_remote_finish", "1*return(2000)").map_err(anyhow::Error::msg)?;
        let mover = cluster.client();
        let rename = tokio::spawn(async move {
            mover
                .rename(src, b"f", dst, b"g", pb::RenameMode::Replace)
                .await
        });
        while !rename.is_finished() {
            let first = shows(new_first, listing).await?;
            let in_flight = !rename.is_finished();
            let second = shows(!new_first, listing).await?;
            anyhow::ensure!(
                !first || second,
                "round {round}: the rename shows at one name and not the other"
            );
            seen_between += usize::from(first && in_flight);
        }
        rename.await??;
        fail::remove("txn::before_remote_finish");
        assert!(shows(true, false).await? && shows(false, false).await?);
        meta.unlink(dst, b"g").await?;
    }
    // Reads did fall between the two finishes (in the rounds that read the
    // home shard, which finishes first, first).
    assert!(seen_between > 0, "no read saw the rename half-finished");
    check_tree(&meta).await?;
    cluster.stop().await;
    scenario.teardown();
    Ok(())
}

/// A new directory whose name its parent's shard already shows (the other
/// shard's finish held back 2 s) takes entries at once: a create in it waits
/// for the directory's inode (EAGAIN, retried) instead of failing with ENOENT
/// because the inode's shard has not applied the mkdir yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_directory_seen_by_name_takes_entries_at_once() -> anyhow::Result<()> {
    let scenario = fail::FailScenario::setup();
    let cluster = InProcess::start().await?;
    let meta = cluster.client();
    let mut seen_early = 0;
    for round in 0..3 {
        let name = remote_name(ROOT_INO, &format!("early{round}-"));
        fail::cfg("txn::before_remote_finish", "1*return(2000)").map_err(anyhow::Error::msg)?;
        let maker = cluster.client();
        let mkdir_name = name.clone();
        let mkdir =
            tokio::spawn(async move { maker.mkdir(ROOT_INO, mkdir_name.as_bytes(), 0o755).await });
        let ino = loop {
            let (entries, _) = meta.readdir_page(ROOT_INO, b"", 1000, false).await?;
            if let Some(e) = entries.iter().find(|e| e.name == name.as_bytes()) {
                break e.ino;
            }
        };
        seen_early += usize::from(!mkdir.is_finished());
        meta.create(ino, b"f", 0o644, true).await?;
        mkdir.await??;
        fail::remove("txn::before_remote_finish");
        meta.lookup(ino, b"f").await?;
    }
    assert!(
        seen_early > 0,
        "no listing showed a directory before its mkdir ended"
    );
    check_tree(&meta).await?;
    cluster.stop().await;
    scenario.teardown();
    Ok(())
}

/// A transaction's record and its other shards' prepares go out at once. A
/// coordinator that dies after a prepare landed and before its record did
/// leaves that prepare's locks behind: the participant's recovery resolves it
/// at the coordinator shard (no record: abort, and the record can no longer
/// land) and rolls it back, so a later rename onto the locked name succeeds
/// instead of waiting forever, and nothing of the lost attempt shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prepare_whose_record_never_landed_is_rolled_back() -> anyhow::Result<()> {
    let scenario = fail::FailScenario::setup();
    let cluster = InProcess::start().await?;
    let meta = cluster.client();
    let src = meta.mkdir(ROOT_INO, b"src", 0o755).await?.ino;
    let dst_name = (0..)
        .map(|i| format!("dst{i}"))
        .find(|n| dir_shard(ROOT_INO, n.as_bytes(), DATA_SHARDS) != ino_shard(src))
        .unwrap_or_default();
    let dst = meta.mkdir(ROOT_INO, dst_name.as_bytes(), 0o755).await?.ino;
    assert_ne!(ino_shard(src), ino_shard(dst));
    meta.create(src, b"f", 0o644, true).await?;
    fail::cfg("txn::lost_begin", "1*return").map_err(anyhow::Error::msg)?;
    fail::cfg("txn::after_prepare", "1*return").map_err(anyhow::Error::msg)?;
    let op = pb::mutate_request::Op::Rename(pb::RenameOp {
        parent: src,
        name: "f".into(),
        new_parent: dst,
        new_name: "g".into(),
        mode: pb::RenameMode::Replace as i32,
    });
    let first = cluster.mutate_once(ino_shard(src), op).await?;
    assert!(first.is_err(), "the coordinator should have given up");
    fail::remove("txn::lost_begin");
    fail::remove("txn::after_prepare");
    assert!(
        meta.lookup(src, b"f").await.is_ok(),
        "the lost attempt showed"
    );
    meta.rename(src, b"f", dst, b"g", pb::RenameMode::Replace)
        .await?;
    assert!(meta.lookup(dst, b"g").await.is_ok());
    assert!(meta.lookup(src, b"f").await.is_err());
    check_tree(&meta).await?;
    cluster.stop().await;
    scenario.teardown();
    Ok(())
}
