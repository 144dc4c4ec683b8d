//! Cross-shard namespace operations under concurrency and failures: after any
//! mix of concurrent mkdir/rename/link/unlink/rmdir across shards, with or
//! without the coordinator's leader killed mid-run, the tree keeps its
//! invariants (see `check_tree`).

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;

use cairn_client::Client;
use cairn_client::ClientError;
use cairn_proto::ids::ino_shard;
use cairn_proto::ids::ROOT_INO;
use cairn_proto::pb;
use cairn_proto::pb::FileKind;
use cairn_proto::status::*;
use cairn_tests::check_tree;
use cairn_tests::Cluster;
use cairn_tests::Role;
use cairn_tests::Spec;

/// Errors a random operation may legitimately meet.
fn expected(e: &ClientError) -> bool {
    matches!(
        e.errno(),
        ENOENT | EEXIST | ENOTEMPTY | EINVAL | ENOTDIR | EISDIR | EPERM
    )
}

/// One client's random workload over directories `d0..d7` and what grows below.
async fn workload(client: Arc<Client>, top: u64, seed: u64, ops: usize) -> anyhow::Result<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let meta = &client.meta;
    let mut done = 0;
    for i in 0..ops {
        // Pick a directory: one of the tops or a random child of one.
        let tops = meta.readdir(top).await?;
        let mut dir = tops[rng.gen_range(0..tops.len())].ino;
        if rng.gen_bool(0.5) {
            if let Ok(children) = meta.readdir(dir).await {
                let subdirs: Vec<_> = children
                    .iter()
                    .filter(|e| e.kind == FileKind::Directory as i32)
                    .collect();
                if !subdirs.is_empty() {
                    dir = subdirs[rng.gen_range(0..subdirs.len())].ino;
                }
            }
        }
        let other = tops[rng.gen_range(0..tops.len())].ino;
        let name = format!("n{seed}-{i}");
        let entries = meta.readdir(dir).await.unwrap_or_default();
        let pick = (!entries.is_empty()).then(|| entries[rng.gen_range(0..entries.len())].clone());
        let result: Result<(), ClientError> = match rng.gen_range(0..7) {
            0 | 1 => meta.mkdir(dir, name.as_bytes(), 0o755).await.map(|_| ()),
            2 => meta
                .create(dir, name.as_bytes(), 0o644, true)
                .await
                .map(|_| ()),
            3 => match &pick {
                Some(e) => {
                    let mode = if rng.gen_bool(0.2) {
                        pb::RenameMode::Exchange
                    } else {
                        pb::RenameMode::Replace
                    };
                    let target = match meta
                        .readdir(other)
                        .await
                        .ok()
                        .filter(|v| !v.is_empty() && rng.gen_bool(0.3))
                    {
                        Some(v) => v[rng.gen_range(0..v.len())].name.to_vec(),
                        None => name.clone().into_bytes(),
                    };
                    meta.rename(dir, &e.name, other, &target, mode).await
                }
                None => Ok(()),
            },
            4 => match pick
                .as_ref()
                .filter(|e| e.kind != FileKind::Directory as i32)
            {
                Some(e) => meta.link(e.ino, other, name.as_bytes()).await.map(|_| ()),
                None => Ok(()),
            },
            5 => match &pick {
                Some(e) if e.kind == FileKind::Directory as i32 => meta.rmdir(dir, &e.name).await,
                Some(e) => meta.unlink(dir, &e.name).await,
                None => Ok(()),
            },
            _ => match &pick {
                Some(e) => {
                    meta.rename(
                        dir,
                        &e.name,
                        dir,
                        name.as_bytes(),
                        pb::RenameMode::Noreplace,
                    )
                    .await
                }
                None => Ok(()),
            },
        };
        match result {
            Ok(()) => done += 1,
            Err(e) if expected(&e) => {}
            Err(e) => anyhow::bail!("client {seed} op {i}: {e}"),
        }
    }
    Ok(done)
}

async fn setup(cluster: &Cluster) -> anyhow::Result<u64> {
    let client = cluster.client();
    let top = client.meta.mkdir(ROOT_INO, b"t", 0o755).await?;
    let mut shards = std::collections::BTreeSet::new();
    for d in 0..8 {
        let a = client
            .meta
            .mkdir(top.ino, format!("d{d}").as_bytes(), 0o755)
            .await?;
        shards.insert(ino_shard(a.ino));
    }
    anyhow::ensure!(
        shards.len() > 2,
        "top directories should span shards: {shards:?}"
    );
    Ok(top.ino)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cross_shard_operations_keep_the_tree_consistent() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let top = setup(&cluster).await?;
    let tasks: Vec<_> = (0..4)
        .map(|seed| tokio::spawn(workload(cluster.client(), top, seed, 60)))
        .collect();
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    assert!(done > 60, "most operations should succeed, {done} did");
    let stats = check_tree(&cluster.client().meta).await?;
    assert!(stats.dirs > 9, "{stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_leader_killed_mid_transactions() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Spec::one_data_server()).await?;
    let top = setup(&cluster).await?;
    let victim = cluster.leader_of(ino_shard(top)).await?;
    let tasks: Vec<_> = (0..4)
        .map(|seed| tokio::spawn(workload(cluster.client(), top, 100 + seed, 40)))
        .collect();
    // Kill the leader of the shard coordinating renames out of `t` while the
    // workload runs (once some directories were made below the tops).
    let watcher = cluster.client();
    cairn_tests::wait_for(
        "the workload to get going",
        Duration::from_secs(30),
        || async {
            let mut n = 0;
            for e in watcher.meta.readdir(top).await.unwrap_or_default() {
                n += watcher
                    .meta
                    .readdir(e.ino)
                    .await
                    .map(|v| v.len())
                    .unwrap_or(0);
            }
            n >= 10
        },
    )
    .await?;
    cluster.metas[victim].kill();
    for t in tasks {
        match t.await? {
            Ok(_) => {}
            // An operation whose transaction recovery rolled back fails with EIO.
            Err(e) if e.to_string().contains("rolled back") => {}
            Err(e) => return Err(e),
        }
    }
    cluster.restart(Role::Meta, victim)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let meta = cluster.client();
    // Recovery resolves whatever the dead coordinator left in flight.
    cairn_tests::wait_for(
        "the tree to be consistent",
        Duration::from_secs(30),
        || async { check_tree(&meta.meta).await.is_ok() },
    )
    .await?;
    check_tree(&meta.meta).await?;
    Ok(())
}

/// Every entry reachable from `dir`, recursively, as (ino, kind).
async fn all_entries(client: &Client, dir: u64) -> anyhow::Result<Vec<(u64, i32)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in client.meta.readdir(d).await? {
            if e.kind == FileKind::Directory as i32 {
                stack.push(e.ino);
            }
            out.push((e.ino, e.kind));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_renames_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let top = setup(&cluster).await?;
    let client = cluster.client();
    let tops: Vec<u64> = client
        .meta
        .readdir(top)
        .await?
        .iter()
        .map(|e| e.ino)
        .collect();
    // Each of 4 clients owns 10 files and 3 directories and keeps moving them
    // between the top directories (mostly across shards); nothing is deleted.
    let mut owned = Vec::new();
    for c in 0..4u64 {
        for i in 0..13u64 {
            let name = format!("c{c}-{i}");
            let parent = tops[(i as usize) % tops.len()];
            let attr = if i < 10 {
                client
                    .meta
                    .create(parent, name.as_bytes(), 0o644, true)
                    .await?
            } else {
                client.meta.mkdir(parent, name.as_bytes(), 0o755).await?
            };
            owned.push((c, name, attr.ino));
        }
    }
    let before = all_entries(&client, top).await?;
    let tasks: Vec<_> = (0..4u64)
        .map(|c| {
            let client = cluster.client();
            let tops = tops.clone();
            let mine: Vec<(String, u64)> = owned
                .iter()
                .filter(|(o, _, _)| *o == c)
                .map(|(_, n, i)| (n.clone(), *i))
                .collect();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(c);
                let mut at: Vec<u64> = (0..mine.len()).map(|i| tops[i % tops.len()]).collect();
                for _ in 0..40 {
                    let k = rng.gen_range(0..mine.len());
                    let to = tops[rng.gen_range(0..tops.len())];
                    if to == at[k] {
                        continue;
                    }
                    let name = mine[k].0.as_bytes();
                    client
                        .meta
                        .rename(at[k], name, to, name, pb::RenameMode::Noreplace)
                        .await?;
                    at[k] = to;
                }
                Ok::<_, ClientError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let mut after = all_entries(&client, top).await?;
    let mut before = before;
    after.sort_unstable();
    before.sort_unstable();
    assert_eq!(after, before, "the same entries, each exactly once");
    check_tree(&client.meta).await?;
    Ok(())
}

/// rename changes the moved inodes' ctime (as local file systems do) wherever
/// they live: a directory whose inode is on another shard renamed in place, a
/// file moved to a directory on another shard, both sides of an exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rename_changes_ctime_wherever_the_inode_lives() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let client = cluster.client();
    let meta = &client.meta;
    let top = meta.mkdir(ROOT_INO, b"t", 0o755).await?.ino;
    let mut remote = None;
    for i in 0..64 {
        let name = format!("d{i}");
        let a = meta.mkdir(top, name.as_bytes(), 0o755).await?;
        if ino_shard(a.ino) != ino_shard(top) {
            remote = Some((name, a));
            break;
        }
    }
    let (name, dir) = remote.ok_or_else(|| anyhow::anyhow!("no directory landed elsewhere"))?;
    let ctime = |ino: u64| async move { Ok::<_, ClientError>(meta.getattr(ino).await?.ctime_ns) };

    // A directory renamed within its parent, its inode on another shard.
    meta.rename(top, name.as_bytes(), top, b"moved", pb::RenameMode::Replace)
        .await?;
    assert!(
        ctime(dir.ino).await? > dir.ctime_ns,
        "directory renamed in place"
    );

    // A file moved into a directory on another shard.
    let f = meta.create(top, b"f", 0o644, true).await?;
    meta.rename(top, b"f", dir.ino, b"f", pb::RenameMode::Replace)
        .await?;
    assert!(ctime(f.ino).await? > f.ctime_ns, "file moved across shards");

    // Two files on different shards exchanged.
    let g = meta.create(dir.ino, b"g", 0o644, true).await?;
    let h = meta.create(top, b"h", 0o644, true).await?;
    meta.rename(top, b"h", dir.ino, b"g", pb::RenameMode::Exchange)
        .await?;
    assert!(ctime(g.ino).await? > g.ctime_ns, "exchanged, other shard");
    assert!(ctime(h.ino).await? > h.ctime_ns, "exchanged, home shard");
    assert_eq!(meta.lookup(top, b"h").await?.ino, g.ino);
    check_tree(meta).await?;
    Ok(())
}
