//! A metad follower that missed more than the leader keeps in its log
//! catches up by a real snapshot transfer: built from the leader's state,
//! sent in chunks over gRPC, installed in bounded batches, and then holds
//! every entry, and the group keeps serving with it as one of its quorum;
//! a metad whose disk died is rebuilt the same way from its peers, and votes
//! no acknowledged entry away while it is empty.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use anyhow::Context;

use cairn_proto::ids::ino_shard;
use cairn_proto::ids::ROOT_INO;
use cairn_tests::wait_for;
use cairn_tests::Cluster;
use cairn_tests::Role;
use cairn_tests::Spec;

/// Snapshots every 100 entries, 10 entries kept behind one: a follower that
/// misses a few hundred entries can only catch up by a snapshot.
const SMALL_SNAPSHOTS: &str = "snapshot-after-logs = 100\nlogs-kept-after-snapshot = 10\n";
const BEFORE: usize = 20;
const WHILE_DOWN: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_follower_catches_up_by_snapshot() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Spec {
        data_shards: 1,
        metad_toml: SMALL_SNAPSHOTS,
        ..Spec::one_data_server()
    })
    .await?;
    let client = cluster.client();
    let dir = client.meta.mkdir(ROOT_INO, b"snap", 0o755).await?.ino;
    let shard = ino_shard(dir);
    let create = {
        let client = client.clone();
        move |i: usize| {
            let client = client.clone();
            async move {
                let name = format!("f{i:05}");
                client.meta.create(dir, name.as_bytes(), 0o644, true).await
            }
        }
    };
    for i in 0..BEFORE {
        create(i).await?;
    }
    let leader = cluster.leader_of(shard).await?;
    let follower = (leader + 1) % cluster.metas.len();
    cluster.metas[follower].kill();

    // The two others commit hundreds of entries, snapshot and purge their
    // logs past what the follower has.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let create = create.clone();
        tasks.push(tokio::spawn(async move {
            for i in (BEFORE + t..BEFORE + WHILE_DOWN).step_by(8) {
                create(i).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }

    cluster.restart(Role::Meta, follower)?;
    let shard_field = format!("shard={shard}");
    let m = &cluster.metas[follower];
    wait_for(
        "the follower to install a snapshot",
        Duration::from_secs(30),
        || {
            let installed = m.log_has_line(&["snapshot installed", &shard_field]);
            async move { installed }
        },
    )
    .await
    .with_context(|| m.log_tail())?;

    // Its own state machine (read from its RocksDB while it runs) holds
    // every file, those that came in the snapshot included.
    let db_path = cluster.meta_dir(follower).join("db");
    let all = BEFORE + WHILE_DOWN;
    wait_for(
        "the follower to hold every file",
        Duration::from_secs(30),
        || {
            let db_path = db_path.clone();
            async move {
                let Ok(db) = cairn_metad::kv::open_db_read_only(&db_path) else {
                    return false;
                };
                let txn = cairn_metad::kv::Txn::new(&db, shard);
                (0..all).all(|i| {
                    let name = format!("f{i:05}");
                    matches!(
                        cairn_metad::fs::get_entry(&txn, dir, name.as_bytes()),
                        Ok(Some(_))
                    )
                })
            }
        },
    )
    .await?;

    // The old leader goes: the group now needs the follower's vote and
    // log, and serves every file and new writes.
    cluster.metas[leader].kill();
    create(all).await?;
    let names = client.meta.readdir(dir).await?;
    let files = names.iter().filter(|e| e.name.starts_with(b"f")).count();
    assert_eq!(files, all + 1);
    Ok(())
}

/// A metad whose disk died comes back empty (same id and address) while
/// clients create files on every shard: it rejoins every group it is in,
/// the one it first initialized included, catches up from its peers (by
/// snapshot, their logs being short), holds every acknowledged file, and
/// then carries the quorum when another metad dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_metad_with_an_empty_disk_is_rebuilt_from_its_peers_under_creates() -> anyhow::Result<()>
{
    // Node 2 (index 1) first initialized shard 1.
    rebuilt_from_peers(2, 1).await
}

/// The same with one data shard and a victim that initialized no group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_metad_that_bootstrapped_nothing_is_rebuilt_from_its_peers() -> anyhow::Result<()> {
    rebuilt_from_peers(1, 2).await
}

async fn rebuilt_from_peers(data_shards: u32, victim: usize) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Spec {
        data_shards,
        metad_toml: SMALL_SNAPSHOTS,
        ..Spec::one_data_server()
    })
    .await?;
    let client = cluster.client();
    // A directory on each data shard (placed by name hash).
    let mut dirs = Vec::new();
    for i in 0.. {
        let dir = client
            .meta
            .mkdir(ROOT_INO, format!("d{i}").as_bytes(), 0o755)
            .await?;
        if !dirs
            .iter()
            .any(|d: &u64| ino_shard(*d) == ino_shard(dir.ino))
        {
            dirs.push(dir.ino);
        }
        if dirs.len() == data_shards as usize {
            break;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for (t, &dir) in dirs.iter().enumerate() {
        let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{t}-{:05}", acked.len());
                client
                    .meta
                    .create(dir, name.as_bytes(), 0o644, true)
                    .await?;
                acked.push(name);
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((dir, acked))
        }));
    }
    // Waits for `more` creates after the call.
    let creates = |what: &'static str, more: usize| {
        let (done, target) = (done.clone(), done.load(Ordering::Relaxed) + more);
        wait_for(what, Duration::from_secs(20), move || {
            let reached = done.load(Ordering::Relaxed) >= target;
            async move { reached }
        })
    };
    // The victim loses its disk, under creates before, while it is down and
    // after it is back.
    creates("creates", 40).await?;
    cluster.metas[victim].kill();
    std::fs::remove_dir_all(cluster.meta_dir(victim))?;
    creates("creates while down", 200).await?;
    cluster.restart(Role::Meta, victim)?;
    creates("creates after", 200).await?;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.push(w.await??);
    }
    ensure!(
        acked.iter().all(|(_, names)| names.len() > 10),
        "too few creates"
    );

    let db_path = cluster.meta_dir(victim).join("db");
    wait_for(
        "the rebuilt metad to hold every acknowledged file",
        Duration::from_secs(30),
        || {
            let (db_path, acked) = (db_path.clone(), acked.clone());
            async move {
                let Ok(db) = cairn_metad::kv::open_db_read_only(&db_path) else {
                    return false;
                };
                acked.iter().all(|(dir, names)| {
                    let txn = cairn_metad::kv::Txn::new(&db, ino_shard(*dir));
                    names.iter().all(|n| {
                        matches!(
                            cairn_metad::fs::get_entry(&txn, *dir, n.as_bytes()),
                            Ok(Some(_))
                        )
                    })
                })
            }
        },
    )
    .await
    .with_context(|| cluster.metas[victim].log_tail())?;

    // Another metad dies: every group now needs the rebuilt one, and serves
    // every acknowledged file and new creates.
    cluster.metas[(victim + 1) % 3].kill();
    for (dir, names) in &acked {
        client
            .meta
            .create(*dir, b"after", 0o644, true)
            .await
            .with_context(|| {
                let tails: Vec<String> = cluster.metas.iter().map(|m| m.log_tail()).collect();
                tails.join("\n=====\n")
            })?;
        let listed = client.meta.readdir(*dir).await?;
        for n in names {
            ensure!(
                listed.iter().any(|e| e.name == n.as_bytes()),
                "{n} lost in {dir}"
            );
        }
    }
    Ok(())
}

/// A metad back with an empty disk must not help elect a leader that lacks
/// what the group committed with its lost copies. Files are created while
/// one follower is stopped (so they are committed on the leader and the
/// victim only); then the victim loses its disk and the leader dies, and the
/// stopped follower comes back beside the empty victim. The victim's empty
/// log loses no comparison, so its vote would elect the follower and the
/// files would be gone; it refuses, the group waits for the old leader, and
/// every acknowledged file is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_metad_never_votes_acknowledged_files_away() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Spec {
        data_shards: 1,
        ..Spec::one_data_server()
    })
    .await?;
    let client = cluster.client().meta.clone();
    let dir = client.mkdir(ROOT_INO, b"d", 0o755).await?.ino;
    let shard = ino_shard(dir);
    let leader = cluster.leader_of(shard).await?;
    let (lagging, victim) = ((leader + 1) % 3, (leader + 2) % 3);
    cluster.metas[lagging].pause();
    let mut acked = Vec::new();
    for i in 0..30 {
        let name = format!("f{i}");
        client.create(dir, name.as_bytes(), 0o644, true).await?;
        acked.push(name);
    }
    cluster.metas[victim].kill();
    std::fs::remove_dir_all(cluster.meta_dir(victim))?;
    cluster.metas[leader].kill();
    cluster.restart(Role::Meta, victim)?;
    cluster.metas[lagging].resume();
    // Either the lagging follower gets elected with the victim's vote (the
    // files are lost) or it is refused for that reason.
    let lagging_elected = || async {
        let asked = tokio::time::timeout(Duration::from_secs(1), cluster.leader_of(shard));
        matches!(asked.await, Ok(Ok(i)) if i == lagging)
    };
    wait_for(
        "an election between the two",
        Duration::from_secs(30),
        || async {
            cluster.metas[lagging].log_has_line(&["not voting until caught up"])
                || lagging_elected().await
        },
    )
    .await?;
    ensure!(
        !lagging_elected().await,
        "a follower missing files was elected"
    );
    cluster.restart(Role::Meta, leader)?;
    let listed = client.readdir(dir).await?;
    for name in &acked {
        ensure!(
            listed.iter().any(|e| e.name == name.as_bytes()),
            "{name} was acknowledged and is gone"
        );
    }
    Ok(())
}
