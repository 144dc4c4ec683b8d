//! `cairn fsck`: every block the namespace needs against the copies the data
//! servers hold.
//!
//! 1. The namespace: every data shard's slice references (`ListSliceRefs`,
//!    at its leader) give each needed block, `(slice, 0..ceil(size / block
//!    size))`, and the inodes that show it.
//! 2. The copies: every live data server's index (`ScanBlocks`), each local
//!    copy re-read and its crc32c checked and each cold copy's object looked
//!    up (unless `--no-verify`).
//! 3. The verdicts: a block with no good copy is *missing* (its files have
//!    lost data; confirmed still referenced before it is reported); a damaged
//!    copy is reported where it lies; a block with fewer good copies than the
//!    replication is *under-replicated*; a stored block whose slice no file
//!    refers to (asked again with `SliceRefs`, which also counts slices
//!    waiting in a deletion queue) is an *orphan*.
//! 4. `--repair`: each damaged copy, and each chain member lacking a good
//!    copy of an under-replicated block, is rewritten from a good copy
//!    (`RepairBlocks`); orphans older than `--orphan-grace-s` are deleted.
//!    Missing blocks cannot be repaired: their inodes are listed.
//!
//! fsck reads a live cluster: a file written or deleted during the run may be
//! reported (young orphans are never deleted); run it again to confirm.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;

use anyhow::bail;
use cairn_client::Client;
use cairn_proto::ids::placement_group;
use cairn_proto::pb;

/// Slice references read per page.
const REF_PAGE: u32 = 4096;
/// Blocks per scan page: verified pages re-read every block they list.
const SCAN_PAGE: u32 = 4096;
const VERIFY_PAGE: u32 = 64;
/// Blocks per repair, delete or reference question.
const BATCH: usize = 1024;

#[derive(clap::Args)]
pub struct FsckArgs {
    /// Rewrite damaged and missing copies from good ones, and delete orphan
    /// blocks older than the grace.
    #[arg(long)]
    repair: bool,
    /// Orphan blocks written less than this many seconds ago are left alone
    /// (an upload may still be waiting for its commit).
    #[arg(long, default_value_t = 86_400)]
    orphan_grace_s: u64,
    /// List copies without re-reading them (fast; damage goes unseen).
    #[arg(long)]
    no_verify: bool,
}

type Block = (u64, u32);

/// One data server's copy of a block.
struct Copy {
    node: u64,
    good: bool,
    problem: String,
    age_s: u64,
}

pub async fn run(seeds: Vec<String>, args: FsckArgs) -> anyhow::Result<()> {
    let client = Client::with_meta(cairn_client::MetaClient::new(seeds, Default::default()));
    let map = client.meta.refresh_map().await?;
    if map.block_size == 0 || map.groups.is_empty() {
        bail!("the cluster has no data layout yet");
    }
    let verify = !args.no_verify;

    // 1. What the namespace needs: slice -> (size, inodes).
    let mut needed: BTreeMap<u64, (u32, BTreeSet<u64>)> = BTreeMap::new();
    for shard in map.shards.iter().map(|s| s.id).filter(|id| *id != 0) {
        let mut after = bytes::Bytes::new();
        loop {
            let page = client.meta.list_slice_refs(shard, after, REF_PAGE).await?;
            for r in page.refs {
                let entry = needed
                    .entry(r.slice_id)
                    .or_insert((r.size, BTreeSet::new()));
                entry.1.insert(r.ino);
            }
            if page.next.is_empty() {
                break;
            }
            after = page.next;
        }
    }

    // 2. What the data servers hold.
    let mut copies: HashMap<Block, Vec<Copy>> = HashMap::new();
    let mut scanned = 0u64;
    for n in &map.data_nodes {
        if !n.alive {
            println!("data node {} is down: its copies are not counted", n.id);
            continue;
        }
        let mut after = None;
        loop {
            let limit = if verify { VERIFY_PAGE } else { SCAN_PAGE };
            let page = client
                .data
                .scan_blocks(&n.addr, after, limit, verify)
                .await?;
            for b in page.blocks {
                let Some(id) = b.block else { continue };
                scanned += 1;
                let state = b.state();
                copies
                    .entry((id.slice_id, id.index))
                    .or_default()
                    .push(Copy {
                        node: n.id,
                        good: state == pb::CopyState::Intact
                            || (!verify && state == pb::CopyState::Unchecked),
                        problem: if state == pb::CopyState::Damaged {
                            b.problem
                        } else {
                            String::new()
                        },
                        age_s: b.age_s,
                    });
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }

    // 3. Verdicts.
    let bs = u64::from(map.block_size);
    let groups = map.groups.len() as u32;
    let want = map.replication as usize;
    let alive: BTreeSet<u64> = map
        .data_nodes
        .iter()
        .filter(|n| n.alive)
        .map(|n| n.id)
        .collect();
    let mut missing: Vec<(Block, u64)> = Vec::new();
    let mut damaged: Vec<(Block, u64, String)> = Vec::new();
    let mut under: Vec<(Block, usize)> = Vec::new();
    // Per data node: the blocks it should rewrite from a good copy.
    let mut to_repair: BTreeMap<u64, Vec<Block>> = BTreeMap::new();
    let mut blocks_needed = 0u64;
    for (&slice, (size, _)) in &needed {
        for index in 0..u64::from(*size).div_ceil(bs) as u32 {
            blocks_needed += 1;
            let key = (slice, index);
            let held = copies.get(&key).map(Vec::as_slice).unwrap_or_default();
            for c in held.iter().filter(|c| !c.problem.is_empty()) {
                damaged.push((key, c.node, c.problem.clone()));
                to_repair.entry(c.node).or_default().push(key);
            }
            let good: BTreeSet<u64> = held.iter().filter(|c| c.good).map(|c| c.node).collect();
            if good.is_empty() {
                missing.push((key, slice));
            } else if good.len() < want {
                under.push((key, good.len()));
                let group = placement_group(slice, index, groups);
                let chain = map.groups.iter().find(|g| g.id == group);
                let lacking = chain
                    .map(|g| g.chain.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| alive.contains(n) && !good.contains(n));
                for n in lacking.take(want - good.len()) {
                    let list = to_repair.entry(n).or_default();
                    if !list.contains(&key) {
                        list.push(key);
                    }
                }
            }
        }
    }
    // A block missing because its file went away during the run is no loss.
    let missing_slices: Vec<u64> = missing.iter().map(|(_, s)| *s).collect();
    let still = referenced(&client, missing_slices).await?;
    missing.retain(|(_, s)| still.contains(s));
    // Orphans: stored blocks of slices nothing refers to.
    let unknown: Vec<u64> = copies
        .keys()
        .map(|(s, _)| *s)
        .filter(|s| !needed.contains_key(s))
        .collect::<BTreeSet<u64>>()
        .into_iter()
        .collect();
    let known = referenced(&client, unknown.clone()).await?;
    let mut orphans: Vec<(Block, u64, u64)> = Vec::new();
    for (key, held) in &copies {
        if unknown.binary_search(&key.0).is_ok() && !known.contains(&key.0) {
            orphans.extend(held.iter().map(|c| (*key, c.node, c.age_s)));
        }
    }
    orphans.sort_unstable();

    println!(
        "fsck: {} slices ({blocks_needed} blocks) referenced, {scanned} copies on {} live data nodes{}",
        needed.len(),
        alive.len(),
        if verify { ", every copy verified" } else { ", not verified" }
    );
    for ((slice, index), s) in &missing {
        let inos = needed.get(s).map(|(_, i)| i.clone()).unwrap_or_default();
        println!("missing: block {slice:016x}-{index} has no good copy (inodes {inos:?})");
    }
    for ((slice, index), node, why) in &damaged {
        println!("damaged: block {slice:016x}-{index} on data node {node}: {why}");
    }
    for ((slice, index), good) in &under {
        println!("under-replicated: block {slice:016x}-{index}: {good} of {want} good copies");
    }
    let grace = args.orphan_grace_s;
    let old_orphans = orphans.iter().filter(|o| o.2 >= grace).count();
    if !orphans.is_empty() {
        println!(
            "orphans: {} copies of blocks no file refers to ({old_orphans} older than {grace} s)",
            orphans.len()
        );
    }
    let problems = missing.len() + damaged.len() + under.len() + old_orphans;
    if !args.repair {
        if problems > 0 {
            bail!("fsck found {problems} problems (run with --repair to fix what can be fixed)");
        }
        println!("fsck: clean");
        return Ok(());
    }

    // 4. Repair.
    let addr_of = |id: u64| {
        map.data_nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.addr.clone())
    };
    let mut repaired = 0u64;
    let mut failures = Vec::new();
    for (node, blocks) in &to_repair {
        let Some(addr) = addr_of(*node) else { continue };
        let sources: Vec<String> = alive
            .iter()
            .filter(|n| *n != node)
            .filter_map(|n| addr_of(*n))
            .collect();
        for batch in blocks.chunks(BATCH) {
            let ids = batch.iter().map(|&(s, i)| pb_block(s, i)).collect();
            let reply = client
                .data
                .repair_blocks(&addr, ids, sources.clone())
                .await?;
            repaired += u64::from(reply.repaired);
            failures.extend(
                reply
                    .failures
                    .into_iter()
                    .map(|f| format!("node {node}: {f}")),
            );
        }
    }
    let mut deleted = 0u64;
    let mut doomed: BTreeMap<u64, Vec<pb::BlockId>> = BTreeMap::new();
    for ((slice, index), node, age) in &orphans {
        if *age >= grace {
            doomed
                .entry(*node)
                .or_default()
                .push(pb_block(*slice, *index));
        }
    }
    for (node, blocks) in doomed {
        let Some(addr) = addr_of(node) else { continue };
        for batch in blocks.chunks(BATCH) {
            deleted += u64::from(client.data.delete_blocks(&addr, batch.to_vec()).await?);
        }
    }
    for f in &failures {
        println!("repair failed: {f}");
    }
    println!(
        "repair: {repaired} copies rewritten, {deleted} orphan blocks deleted, {} failures, {} blocks missing",
        failures.len(),
        missing.len()
    );
    if !failures.is_empty() || !missing.is_empty() {
        bail!("fsck could not repair everything");
    }
    Ok(())
}

/// The slices of `ids` some file shows or a deletion queue holds.
async fn referenced(client: &Client, ids: Vec<u64>) -> anyhow::Result<BTreeSet<u64>> {
    let mut out = BTreeSet::new();
    for batch in ids.chunks(BATCH) {
        out.extend(client.meta.slice_refs(batch.to_vec()).await?);
    }
    Ok(out)
}

fn pb_block(slice_id: u64, index: u32) -> pb::BlockId {
    pb::BlockId { slice_id, index }
}
