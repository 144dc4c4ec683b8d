//! `cairn status`: what the cluster looks like and whether it serves requests.

use anyhow::bail;

use cairn_client::Client;
use cairn_proto::ids::ROOT_INO;

pub async fn run(seeds: Vec<String>) -> anyhow::Result<()> {
    let client = Client::with_meta(
        cairn_client::MetaClient::new(seeds, Default::default())
            .with_deadline(std::time::Duration::from_secs(5)),
    );
    let map = client.meta.refresh_map().await?;
    let name_of = |id: u64| {
        map.meta_nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| format!("{id}@{}", n.addr))
            .unwrap_or_else(|| "none".into())
    };
    println!("metadata nodes:");
    for n in &map.meta_nodes {
        println!("  {:>4}  {}", n.id, n.addr);
    }
    println!("shards:");
    let mut problems = Vec::new();
    for s in &map.shards {
        let what = if s.id == 0 {
            "cluster map"
        } else {
            "namespace"
        };
        println!(
            "  {:>4}  {:<12} leader {:<24} replicas {:?}",
            s.id,
            what,
            name_of(s.leader),
            s.replicas
        );
        if s.leader == 0 {
            problems.push(format!("shard {} has no known leader", s.id));
        }
    }
    println!("data nodes:");
    let (mut cap, mut used) = (0u64, 0u64);
    for n in &map.data_nodes {
        println!(
            "  {:>4}  {:<22} {:<5} used {:>12} of {:>14} bytes, {} blocks",
            n.id,
            n.addr,
            if n.alive { "up" } else { "DOWN" },
            n.used_bytes,
            n.capacity_bytes,
            n.blocks
        );
        if n.alive {
            cap += n.capacity_bytes;
            used += n.used_bytes;
        }
    }
    let alive = map.data_nodes.iter().filter(|n| n.alive).count();
    if alive == 0 {
        problems.push("no live data node".into());
    }
    let want = (map.replication as usize).min(alive.max(1));
    // Degraded: fewer live members serving (in sync) than the replication.
    let serving = |g: &cairn_proto::pb::PlacementGroup| {
        g.chain
            .iter()
            .filter(|id| !g.syncing.contains(id))
            .filter(|id| map.data_nodes.iter().any(|n| n.id == **id && n.alive))
            .count()
    };
    let degraded = map.groups.iter().filter(|g| serving(g) < want).count();
    let syncing = map.groups.iter().filter(|g| !g.syncing.is_empty()).count();
    // Waiting: every serving member is down; writes to the group fail until
    // one is back (no syncing member may take its place).
    let waiting = map
        .groups
        .iter()
        .filter(|g| serving(g) == 0 && g.chain.iter().any(|id| !g.syncing.contains(id)))
        .count();
    println!(
        "placement groups: {} ({} degraded, {} syncing, {} waiting for a serving member), replication {}, block size {}",
        map.groups.len(),
        degraded,
        syncing,
        waiting,
        map.replication,
        map.block_size
    );
    if waiting > 0 {
        problems.push(format!(
            "{waiting} placement groups wait for a down data server: writes to them fail"
        ));
    }
    if map.groups.is_empty() {
        problems.push("no placement groups yet".into());
    }
    println!("capacity: {used} of {cap} bytes used");
    worker_status(&map).await;
    healing_status(&client, &map).await;
    tier_status(&client, &map).await;
    if let Err(e) = client.meta.getattr(ROOT_INO).await {
        problems.push(format!("root directory unavailable: {e}"));
    }
    if problems.is_empty() {
        println!("status: serving");
        Ok(())
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
        bail!("cluster is not serving requests")
    }
}

/// Each metad's background workers: runs, failures, the last error, and a
/// run in progress for long (a job stuck behind a hung peer shows here).
async fn worker_status(map: &cairn_proto::pb::ClusterMap) {
    println!("workers:");
    let channels = cairn_proto::channel::Channels::default();
    for m in &map.meta_nodes {
        let reply = match channels.meta(&m.addr) {
            Ok(mut c) => c.get_workers(cairn_proto::pb::GetWorkersRequest {}).await,
            Err(e) => {
                println!("  metad {}: {e}", m.id);
                continue;
            }
        };
        match reply {
            Ok(r) => {
                let line: Vec<String> = r
                    .into_inner()
                    .workers
                    .iter()
                    .map(|w| {
                        let mut s = format!("{} {} runs", w.name, w.runs);
                        if w.failures > 0 {
                            s += &format!(", {} failed (last: {})", w.failures, w.last_error);
                        }
                        if w.busy_ms >= 10_000 {
                            s += &format!(", running for {} s", w.busy_ms / 1000);
                        }
                        s
                    })
                    .collect();
                println!("  metad {}: {}", m.id, line.join("; "));
            }
            Err(e) => println!("  metad {}: {}", m.id, e.message()),
        }
    }
}

/// Per live data node: its chains in sync (resync), what its scrubber found
/// and the orphan blocks it deleted.
async fn healing_status(client: &Client, map: &cairn_proto::pb::ClusterMap) {
    println!("healing:");
    for n in map.data_nodes.iter().filter(|n| n.alive) {
        match client.data.stat(&n.addr).await {
            Ok(s) => {
                let scrub = match s.scrub_passes {
                    None => "scrub off".to_string(),
                    Some(passes) => format!(
                        "scrub: {passes} deep and {} light passes, {} blocks checked, {} bad, {} repaired, {} unrepairable",
                        s.scrub_light_passes.unwrap_or(0),
                        s.scrub_blocks_checked.unwrap_or(0),
                        s.scrub_bad_found.unwrap_or(0),
                        s.scrub_repaired.unwrap_or(0),
                        s.scrub_unrepairable.unwrap_or(0),
                    ),
                };
                println!(
                    "  data node {}: groups in sync {}/{}, {} blocks copied in, {} left-behind copies dropped; {scrub}; orphans: {} passes, {} blocks deleted",
                    n.id,
                    s.resync_groups_synced,
                    s.resync_groups_member,
                    s.resync_blocks_copied,
                    s.resync_blocks_dropped,
                    s.orphan_passes,
                    s.orphan_blocks_deleted,
                );
            }
            Err(e) => println!("  data node {}: {e}", n.id),
        }
    }
}

/// The cold tier: backend, hot/cold bytes and cold-tier counters of every live
/// data node, and the policy runs still to finish (the backlog).
async fn tier_status(client: &Client, map: &cairn_proto::pb::ClusterMap) {
    let config = match client.meta.get_tier().await {
        Ok(c) => c,
        Err(e) => {
            println!("cold tier: unknown ({e})");
            return;
        }
    };
    match &config.backend {
        Some(b) => println!("cold tier: {}", b.url),
        None => println!("cold tier: none"),
    }
    let (mut hot, mut cold, mut moved, mut fetched, mut failures) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for n in map.data_nodes.iter().filter(|n| n.alive) {
        match client.data.stat(&n.addr).await {
            Ok(s) => {
                hot += s.used_bytes;
                cold += s.cold_bytes;
                moved += s.moved_to_cold;
                fetched += s.fetched_from_cold;
                failures += s.cold_failures;
            }
            Err(e) => println!("  data node {}: {e}", n.id),
        }
    }
    println!(
        "  hot {hot} bytes, cold {cold} bytes; since start: {moved} blocks moved to cold, \
         {fetched} fetched back, {failures} failures"
    );
    let backlog: Vec<&str> = config
        .runs
        .iter()
        .filter(|r| r.finished_ms == 0)
        .map(|r| r.policy.as_str())
        .collect();
    println!(
        "  policies: {}; unfinished runs: {}",
        config.policies.len(),
        if backlog.is_empty() {
            "none".to_string()
        } else {
            backlog.join(", ")
        }
    );
}
