//! Self-healing of data on a real cluster (1 metad, 5 datad, replication 3):
//! a data server killed for good under writes leaves its chains, the nodes that
//! take its place copy in the blocks written before they joined, and every
//! block is back on 3 live replicas with every file's bytes intact; a rolling
//! restart of every data server loses no read and no write.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::ensure;
use cairn_client::Client;
use cairn_proto::channel::Channels;
use cairn_proto::pb;
use cairn_tests::random_bytes;
use cairn_tests::read_file;
use cairn_tests::wait_for;
use cairn_tests::write_file;
use cairn_tests::Cluster;
use cairn_tests::Role;
use cairn_tests::Spec;

/// How long re-replication of this test's few MiB may take once the dead node
/// is out of the chains (data-node-timeout 2 s, resync checks every 100 ms).
const HEAL_BOUND: Duration = Duration::from_secs(30);

fn spec() -> Spec {
    Spec {
        metas: 1,
        replication: 1,
        datas: 5,
        data_replication: 3,
        placement_groups: 16,
        block_size: 1 << 20,
        ..Spec::default()
    }
}

/// How many live data nodes hold each block (from their `ListBlocks`).
async fn replica_counts(client: &Client) -> anyhow::Result<HashMap<(u64, u32), usize>> {
    let map = client.meta.refresh_map().await?;
    let total = map.groups.len() as u32;
    let channels = Channels::default();
    let mut counts = HashMap::new();
    for node in map.data_nodes.iter().filter(|n| n.alive) {
        let mut after = None;
        loop {
            let page = channels
                .data(&node.addr)?
                .list_blocks(pb::ListBlocksRequest {
                    groups_total: total,
                    groups: (0..total).collect(),
                    after,
                    limit: 4096,
                    at: Vec::new(),
                })
                .await?
                .into_inner();
            for b in page.blocks.iter().filter_map(|b| b.block.as_ref()) {
                *counts.entry((b.slice_id, b.index)).or_insert(0) += 1;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(counts)
}

/// Writes `/f{first}..` files of 3.5 MiB (4 blocks each); answers them.
async fn write_files(
    client: &std::sync::Arc<Client>,
    first: u64,
    n: u64,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for i in first..first + n {
        let path = format!("/f{i}");
        let data = random_bytes((7 << 20) / 2, i);
        write_file(client, &path, &data).await?;
        files.push((path, data));
    }
    Ok(files)
}

async fn check_files(
    client: &std::sync::Arc<Client>,
    files: &[(String, Vec<u8>)],
) -> anyhow::Result<()> {
    for (path, data) in files {
        ensure!(&read_file(client, path).await? == data, "{path} differs");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_server_lost_for_good_is_replaced_and_every_block_has_3_replicas_again(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(spec()).await?;
    let client = cluster.client();
    let mut files = write_files(&client, 0, 8).await?;
    let before = replica_counts(&client).await?;
    ensure!(before.len() == 32, "{} blocks", before.len());
    ensure!(before.values().all(|&c| c == 3), "{before:?}");

    // Node 1 dies for good while a writer goes on.
    cluster.datas[0].kill();
    let writer = {
        let client = cluster.client();
        tokio::spawn(async move { write_files(&client, 100, 4).await })
    };
    files.extend(writer.await??);

    let healed = wait_for("every block on 3 live replicas", HEAL_BOUND, || async {
        replica_counts(&client).await.is_ok_and(|counts| {
            before.keys().all(|b| counts.contains_key(b))
                && counts.len() == 48
                && counts.values().all(|&c| c == 3)
        })
    })
    .await;
    if let Err(e) = healed {
        let counts = replica_counts(&client).await?;
        let short: Vec<_> = counts.iter().filter(|(_, &c)| c != 3).collect();
        anyhow::bail!("{e}; {} blocks, not on 3 replicas: {short:?}", counts.len());
    }
    check_files(&cluster.client(), &files).await?;

    // Every live node reports all its chains in sync (once any rebalancing
    // move that followed is done), and something was copied in.
    wait_for("every node's groups in sync", HEAL_BOUND, || async {
        let Ok(map) = client.meta.refresh_map().await else {
            return false;
        };
        let mut in_sync = true;
        for node in map.data_nodes.iter().filter(|n| n.alive) {
            in_sync &= client.data.stat(&node.addr).await.is_ok_and(|s| {
                s.resync_groups_member > 0 && s.resync_groups_synced == s.resync_groups_member
            });
        }
        in_sync
    })
    .await?;
    let mut copied = 0;
    for d in cluster.datas.iter().filter(|d| d.is_running()) {
        copied += client.data.stat(&d.addr).await?.resync_blocks_copied;
    }
    ensure!(copied > 0, "nothing was copied");
    // fsck agrees: every block has its good copies on live nodes.
    let (clean, out) = cluster.cli(&["fsck"])?;
    ensure!(clean && out.contains("fsck: clean"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_data_server_loses_no_read_and_no_write() -> anyhow::Result<()> {
    // As an operator runs it: a restart is shorter than replace-after-ms.
    let spec = Spec {
        metad_toml: "replace-after-ms = 600000\n",
        ..spec()
    };
    let mut cluster = Cluster::start(spec).await?;
    let client = cluster.client();
    let mut files = write_files(&client, 0, 4).await?;
    for i in 0..cluster.datas.len() {
        // Down long enough to leave the write path (2 s without a
        // heartbeat); it keeps its place and comes back syncing.
        cluster.datas[i].kill();
        files.extend(write_files(&client, 10 * (i as u64 + 1), 1).await?);
        let id = cluster.datas[i].id;
        wait_for(
            "the node to leave the map's live set",
            HEAL_BOUND,
            || async {
                client
                    .meta
                    .refresh_map()
                    .await
                    .is_ok_and(|m| m.data_nodes.iter().any(|n| n.id == id && !n.alive))
            },
        )
        .await?;
        check_files(&client, &files).await?;
        cluster.restart(Role::Data, i)?;
        cluster.wait_ready(HEAL_BOUND).await?;
        check_files(&cluster.client(), &files).await?;
    }
    // Redundancy is whole again.
    let counts = replica_counts(&client).await?;
    ensure!(
        counts.len() == 36 && counts.values().all(|&n| n == 3),
        "{counts:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_node_empties_with_redundancy_never_below_target_and_is_removed(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(spec()).await?;
    let client = cluster.client();
    let mut files = write_files(&client, 0, 6).await?;
    let before = replica_counts(&client).await?;
    ensure!(before.len() == 24 && before.values().all(|&c| c == 3));

    let (ok, out) = cluster.cli(&["node", "remove", "1"])?;
    ensure!(!ok && out.contains("drain it first"), "{out}");
    let (ok, out) = cluster.cli(&["node", "drain", "1"])?;
    ensure!(ok, "{out}");
    let writer = {
        let client = cluster.client();
        tokio::spawn(async move { write_files(&client, 100, 3).await })
    };
    // Every poll checks that no block known before has fewer than 3 copies.
    let below = std::sync::Mutex::new(Vec::new());
    let drained = wait_for("node 1 to leave every chain", HEAL_BOUND, || async {
        if let Ok(counts) = replica_counts(&client).await {
            for (b, _) in before
                .iter()
                .filter(|(b, _)| counts.get(b).is_none_or(|&c| c < 3))
            {
                below.lock().unwrap().push(*b);
            }
        }
        client.meta.refresh_map().await.is_ok_and(|m| {
            m.groups
                .iter()
                .all(|g| !g.chain.contains(&1) && g.syncing.is_empty())
        })
    })
    .await;
    if let Err(e) = drained {
        let map = client.meta.refresh_map().await?;
        let moving: Vec<_> = map
            .groups
            .iter()
            .filter(|g| g.chain.contains(&1) || !g.syncing.is_empty())
            .collect();
        let logs: Vec<String> = cluster
            .metas
            .iter()
            .chain(&cluster.datas)
            .map(|d| d.log_tail())
            .collect();
        anyhow::bail!("{e}; still moving: {moving:?}\n{}", logs.join("\n"));
    }
    files.extend(writer.await??);
    let below = below.into_inner().unwrap();
    ensure!(
        below.is_empty(),
        "blocks under 3 copies while draining: {below:?}"
    );

    let (ok, out) = cluster.cli(&["node", "remove", "1"])?;
    ensure!(ok, "{out}");
    let (ok, out) = cluster.cli(&["node", "list"])?;
    ensure!(
        ok && !out
            .lines()
            .skip(1)
            .any(|l| l.trim_start().starts_with("1 ")),
        "{out}"
    );
    // Its disk can go: every block still has 3 copies without it.
    cluster.datas[0].kill();
    let counts = replica_counts(&client).await?;
    ensure!(counts.len() == 36, "{} blocks", counts.len());
    ensure!(counts.values().all(|&c| c >= 3), "{counts:?}");
    check_files(&cluster.client(), &files).await?;
    // `cairn status` shows the cluster whole (a rebalancing move may be
    // syncing), each node's resync and scrub, and every metad worker.
    let (ok, out) = cluster.cli(&["status"])?;
    ensure!(ok, "{out}");
    for want in [
        "(0 degraded,",
        "groups in sync",
        "left-behind copies dropped",
        "metad 1: ",
        "liveness ",
        "txn-recovery ",
        "gc ",
    ] {
        ensure!(out.contains(want), "no {want:?} in:\n{out}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_data_server_takes_groups_until_even_and_nothing_is_unreadable_meanwhile(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Spec { datas: 4, ..spec() }).await?;
    let client = cluster.client();
    let files = write_files(&client, 0, 6).await?;
    let memberships = |map: &pb::ClusterMap| -> Vec<usize> {
        map.data_nodes
            .iter()
            .map(|n| {
                map.groups
                    .iter()
                    .filter(|g| g.chain.contains(&n.id))
                    .count()
            })
            .collect()
    };
    let index = cluster.add_data_node()?;
    let new_id = cluster.datas[index].id;
    // Reads go on throughout; the loop ends once memberships are even, nothing
    // moves, and the copies left behind are dropped (each block on exactly 3).
    let reader = cluster.client();
    let even = wait_for("groups to spread evenly", HEAL_BOUND * 2, || async {
        check_files(&reader, &files)
            .await
            .expect("a file unreadable during rebalancing");
        let Ok(map) = client.meta.refresh_map().await else {
            return false;
        };
        let m = memberships(&map);
        let settled = map
            .groups
            .iter()
            .all(|g| g.syncing.is_empty() && g.chain.len() == 3);
        let spread = m.iter().max().unwrap_or(&0) - m.iter().min().unwrap_or(&0);
        settled
            && m.len() == 5
            && spread <= 1
            && replica_counts(&client)
                .await
                .is_ok_and(|c| c.len() == 24 && c.values().all(|&n| n == 3))
    })
    .await;
    if let Err(e) = even {
        let map = client.meta.refresh_map().await?;
        anyhow::bail!("{e}; memberships {:?}", memberships(&map));
    }
    let stat = client.data.stat(&cluster.datas[index].addr).await?;
    ensure!(stat.blocks > 0, "node {new_id} holds no block");
    check_files(&cluster.client(), &files).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_down_briefly_keeps_its_place_rejoins_and_serves_what_it_missed(
) -> anyhow::Result<()> {
    let spec = Spec {
        datas: 4,
        metad_toml: "replace-after-ms = 600000\n",
        ..spec()
    };
    let mut cluster = Cluster::start(spec).await?;
    let client = cluster.client();
    let mut files = write_files(&client, 0, 4).await?;
    let before = client.meta.refresh_map().await?;
    let id = cluster.datas[0].id;

    // Down past the dead-node timeout: out of the write path, not replaced.
    cluster.datas[0].kill();
    wait_for("node 1 out of every chain", HEAL_BOUND, || async {
        client.meta.refresh_map().await.is_ok_and(|m| {
            m.data_nodes.iter().any(|n| n.id == id && !n.alive)
                && m.groups.iter().all(|g| !g.chain.contains(&id))
        })
    })
    .await?;
    let absent = client.meta.refresh_map().await?;
    for (g, was) in absent.groups.iter().zip(&before.groups) {
        let mut expect: Vec<u64> = was.chain.iter().copied().filter(|n| *n != id).collect();
        let mut got = g.chain.clone();
        expect.sort_unstable();
        got.sort_unstable();
        ensure!(
            got == expect,
            "group {}: {:?} replaced node 1 ({:?} before)",
            g.id,
            g.chain,
            was.chain
        );
    }
    // Writes go on meanwhile (two replicas in its groups).
    files.extend(write_files(&client, 50, 4).await?);

    // Back: it rejoins every chain it was in, syncs, and serves.
    cluster.restart(Role::Data, 0)?;
    cluster.wait_ready(HEAL_BOUND).await?;
    let after = client.meta.refresh_map().await?;
    for (g, was) in after.groups.iter().zip(&before.groups) {
        ensure!(
            g.chain.contains(&id) == was.chain.contains(&id),
            "group {}: {:?} (before {:?})",
            g.id,
            g.chain,
            was.chain
        );
    }
    let counts = replica_counts(&client).await?;
    ensure!(
        counts.len() == 32 && counts.values().all(|&c| c == 3),
        "{counts:?}"
    );
    // Node 1 holds, and serves intact, every block of its groups, the ones
    // written while it was away included; nobody else copied anything.
    let mine = client.data.stat(&cluster.datas[0].addr).await?;
    ensure!(mine.resync_blocks_copied > 0, "node 1 copied nothing in");
    for d in &cluster.datas[1..] {
        ensure!(client.data.stat(&d.addr).await?.resync_blocks_copied == 0);
    }
    let channels = Channels::default();
    let total = after.groups.len() as u32;
    let its_groups: Vec<u32> = after
        .groups
        .iter()
        .filter(|g| g.chain.contains(&id))
        .map(|g| g.id)
        .collect();
    let listed = channels
        .data(&cluster.datas[0].addr)?
        .list_blocks(pb::ListBlocksRequest {
            groups_total: total,
            groups: its_groups.clone(),
            after: None,
            limit: 4096,
            at: Vec::new(),
        })
        .await?
        .into_inner();
    let expected = counts
        .keys()
        .filter(|(s, i)| its_groups.contains(&cairn_proto::ids::placement_group(*s, *i, total)))
        .count();
    ensure!(
        listed.blocks.len() == expected,
        "{} of {expected}",
        listed.blocks.len()
    );
    for b in listed.blocks.iter().filter_map(|b| b.block) {
        channels
            .data(&cluster.datas[0].addr)?
            .get_block(pb::GetBlockRequest {
                block: Some(b),
                offset: 0,
                len: 0,
            })
            .await?;
    }
    check_files(&cluster.client(), &files).await?;
    Ok(())
}
