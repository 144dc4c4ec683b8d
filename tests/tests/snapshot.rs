//! A metad follower that missed more than the leader keeps in its log
//! catches up by a real snapshot transfer: built from the leader's state,
//! sent in chunks over gRPC, installed in bounded batches, and then holds
//! every entry, and the group keeps serving with it as one of its quorum.

use std::time::Duration;

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
