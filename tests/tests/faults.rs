//! Fault tests on a real multi-process cluster (3 metad hosting shard 0 and 4
//! namespace shards, each 3-replicated; 3 datad with replication 3): a shard
//! leader SIGKILLed or hung (SIGSTOP: it keeps its sockets open and stops
//! answering) under a burst of creates, a data server SIGKILLed or hung under
//! concurrent reads and writes, and a damaged block replica on disk. Each test
//! checks the data that comes back, not only that calls returned, and that the
//! cluster served again within [`RECOVERY_BOUND`] of the fault.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use futures::stream::StreamExt;
use futures::stream::TryStreamExt;

use cairn_proto::ids::ino_shard;
use cairn_proto::ids::ROOT_INO;
use cairn_proto::pb;
use cairn_proto::status::EIO;
use cairn_tests::random_bytes;
use cairn_tests::read_file;
use cairn_tests::wait_for;
use cairn_tests::write_file;
use cairn_tests::Cluster;
use cairn_tests::Role;
use cairn_tests::Spec;

/// Fails with the first differing offset instead of printing megabytes.
fn same_bytes(what: &str, got: &[u8], want: &[u8]) -> anyhow::Result<()> {
    if got.len() != want.len() {
        anyhow::bail!(
            "{what}: {} bytes came back, {} expected",
            got.len(),
            want.len()
        );
    }
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        anyhow::bail!(
            "{what}: byte {at} is {:#04x}, {:#04x} expected",
            got[at],
            want[at]
        );
    }
    Ok(())
}

/// Every daemon's log tail, for failure messages.
fn logs(cluster: &Cluster) -> String {
    cluster
        .metas
        .iter()
        .chain(&cluster.datas)
        .map(|d| format!("--- {:?} {} ---\n{}", d.role, d.id, d.log_tail()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How long after a node died or hung every pending operation is answered:
/// an election (≤ 2 election timeouts), a hung connection noticed (HTTP/2
/// keepalive 2 s + 4 s, or the client's 10 s attempt deadline), a data node
/// declared dead (10 s without heartbeats), and the client's backoff.
const RECOVERY_BOUND: Duration = Duration::from_secs(45);

/// What happens to the victim.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL: connections are refused from then on.
    Kill,
    /// SIGSTOP: connections stay open and nothing answers.
    Hang,
}

impl Fault {
    fn strike(self, victim: &mut cairn_tests::Daemon) {
        match self {
            Fault::Kill => victim.kill(),
            Fault::Hang => victim.pause(),
        }
    }

    /// Brings the victim back: a restart on its data, or SIGCONT.
    fn heal(self, cluster: &mut Cluster, role: Role, index: usize) -> anyhow::Result<()> {
        match self {
            Fault::Kill => cluster.restart(role, index),
            Fault::Hang => {
                let victim = match role {
                    Role::Meta => &cluster.metas[index],
                    Role::Data => &cluster.datas[index],
                };
                victim.resume();
                Ok(())
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_during_concurrent_creates() -> anyhow::Result<()> {
    creates_survive(Fault::Kill).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_hung_during_concurrent_creates() -> anyhow::Result<()> {
    creates_survive(Fault::Hang).await
}

async fn creates_survive(fault: Fault) -> anyhow::Result<()> {
    const FILES: usize = 1000;
    let mut cluster = Cluster::start(Spec::default()).await?;
    let client = cluster.client();
    let dir = client.meta.mkdir(ROOT_INO, b"burst", 0o755).await?;
    let shard = ino_shard(dir.ino);
    let killed = cluster.leader_of(shard).await?;
    let name = |i: usize| format!("f{i:04}");

    let creator = client.clone();
    let creates = tokio::spawn(async move {
        futures::stream::iter(0..FILES)
            .map(|i| {
                let client = creator.clone();
                async move {
                    let r = client
                        .meta
                        .create(dir.ino, name(i).as_bytes(), 0o644, true)
                        .await;
                    (i, r)
                }
            })
            .buffer_unordered(50)
            .collect::<Vec<_>>()
            .await
    });

    let watcher = cluster.client();
    wait_for("150 creates to land", Duration::from_secs(30), || async {
        creates.is_finished()
            || watcher
                .meta
                .readdir(dir.ino)
                .await
                .is_ok_and(|e| e.len() >= 150)
    })
    .await?;
    anyhow::ensure!(
        !creates.is_finished(),
        "the creates finished (or failed) before the leader could be killed"
    );
    let killed_at = Instant::now();
    fault.strike(&mut cluster.metas[killed]);
    anyhow::ensure!(
        !creates.is_finished(),
        "every create was answered before the leader died: the {fault:?} tested nothing"
    );

    let results = creates.await?;
    let took = killed_at.elapsed();
    eprintln!(
        "creates finished {took:?} after {fault:?} of metad {}",
        cluster.metas[killed].id
    );
    anyhow::ensure!(
        took < RECOVERY_BOUND,
        "creates took {took:?} after the {fault:?}, over {RECOVERY_BOUND:?}"
    );
    let mut inos = BTreeMap::new();
    let mut failures = Vec::new();
    for (i, r) in results {
        match r {
            Ok(attr) => {
                inos.insert(name(i), attr.ino);
            }
            Err(e) => failures.push(format!("{}: errno {}: {e}", name(i), e.errno())),
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {FILES} creates failed across the leader change, e.g. {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        logs(&cluster)
    );
    let distinct: BTreeSet<u64> = inos.values().copied().collect();
    assert_eq!(distinct.len(), FILES, "every create got its own inode");

    // The directory lists each name exactly once, and each name leads to the
    // inode its create answered.
    let entries = client.meta.readdir(dir.ino).await?;
    let listed: Vec<String> = entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(listed.len(), FILES, "readdir lists each name once");
    assert_eq!(
        unique.into_iter().cloned().collect::<Vec<_>>(),
        inos.keys().cloned().collect::<Vec<_>>()
    );
    let fresh = cluster.client();
    let wrong: Vec<String> = futures::stream::iter(inos.iter())
        .map(|(n, ino)| {
            let fresh = fresh.clone();
            async move {
                match fresh.meta.lookup(dir.ino, n.as_bytes()).await {
                    Ok(attr) if attr.ino == *ino => None,
                    Ok(attr) => Some(format!("{n}: ino {} != created {ino}", attr.ino)),
                    Err(e) => Some(format!("{n}: {e}")),
                }
            }
        })
        .buffer_unordered(32)
        .filter_map(|w| async move { w })
        .collect()
        .await;
    assert!(wrong.is_empty(), "lookups disagree with creates: {wrong:?}");

    // Another node leads the shard now, and the client keeps working.
    wait_for(
        "a new leader of the directory's shard",
        Duration::from_secs(15),
        || async { cluster.leader_of(shard).await.is_ok_and(|i| i != killed) },
    )
    .await?;
    let leader = cluster.leader_of(shard).await?;
    assert_ne!(leader, killed);
    assert!(cluster.metas[leader].is_running());
    assert!(
        killed_at.elapsed() < RECOVERY_BOUND * 2,
        "no new leader within the bound"
    );
    let after = client.meta.create(dir.ino, b"after", 0o644, true).await?;
    let body = random_bytes(100_000, 11);
    let mut w = client.writer(after.ino).await?;
    w.write_at(0, &body).await?;
    w.close().await?;
    same_bytes(
        "/burst/after",
        &read_file(&cluster.client(), "/burst/after").await?,
        &body,
    )?;

    // The node comes back (on its data, or woken) and the cluster serves again.
    fault.heal(&mut cluster, Role::Meta, killed)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    assert_eq!(
        cluster.client().meta.readdir(dir.ino).await?.len(),
        FILES + 1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn datad_killed_during_reads_and_writes() -> anyhow::Result<()> {
    reads_and_writes_survive(Fault::Kill).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn datad_hung_during_reads_and_writes() -> anyhow::Result<()> {
    reads_and_writes_survive(Fault::Hang).await
}

async fn reads_and_writes_survive(fault: Fault) -> anyhow::Result<()> {
    const OLD: usize = 12;
    const NEW: usize = 8;
    const SIZE: usize = 6 << 20;
    const VICTIM: usize = 1;
    let mut cluster = Cluster::start(Spec::default()).await?;
    let client = cluster.client();
    client.meta.mkdir(ROOT_INO, b"d", 0o755).await?;
    let old: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..OLD)
            .map(|i| random_bytes(SIZE, 100 + i as u64))
            .collect(),
    );
    futures::stream::iter(0..OLD)
        .map(|i| {
            let (client, old) = (client.clone(), old.clone());
            async move { write_file(&client, &format!("/d/old{i}"), &old[i]).await }
        })
        .buffer_unordered(4)
        .try_collect::<()>()
        .await?;
    let new: Vec<Vec<u8>> = (0..NEW)
        .map(|i| random_bytes(SIZE, 200 + i as u64))
        .collect();

    // Reader, writer and the hand that kills datad run side by side in this task
    // (`FileReader::read_at`'s future is not `Send`, so it cannot be spawned).
    let stop = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    let writes = AtomicUsize::new(0);
    let (reader_done, writer_done) = (AtomicBool::new(false), AtomicBool::new(false));
    // Reads every committed file again and again until told to stop.
    let reader_client = cluster.client();
    let reader = async {
        let client = reader_client;
        let result = async {
            while !stop.load(Ordering::Relaxed) {
                for (i, want) in old.iter().enumerate() {
                    let path = format!("/d/old{i}");
                    let got = read_file(&client, &path).await?;
                    same_bytes(&path, &got, want)?;
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }
        .await;
        reader_done.store(true, Ordering::Relaxed);
        result
    };
    // Writes new files one after another; each result is kept.
    let writer_client = cluster.client();
    let writer = async {
        let client = writer_client;
        let mut results = Vec::new();
        for (i, data) in new.iter().enumerate() {
            let started = Instant::now();
            let r = write_file(&client, &format!("/d/new{i}"), data).await;
            results.push((i, started.elapsed(), r));
            writes.fetch_add(1, Ordering::Relaxed);
        }
        writer_done.store(true, Ordering::Relaxed);
        results
    };
    let victim_id = cluster.datas[VICTIM].id;
    let victim = &mut cluster.datas[VICTIM];
    let kill = async {
        let killed = async {
            wait_for(
                "the reader and the writer to get going",
                Duration::from_secs(30),
                || async {
                    reader_done.load(Ordering::Relaxed)
                        || writer_done.load(Ordering::Relaxed)
                        || (reads.load(Ordering::Relaxed) >= 1
                            && writes.load(Ordering::Relaxed) >= 1)
                },
            )
            .await?;
            anyhow::ensure!(
                !reader_done.load(Ordering::Relaxed) && !writer_done.load(Ordering::Relaxed),
                "reader or writer ended before the kill"
            );
            fault.strike(victim);
            let at_kill = (
                reads.load(Ordering::Relaxed),
                writes.load(Ordering::Relaxed),
                Instant::now(),
            );
            // The writer finishes and the reader reads every file at least once
            // after the kill (or stops early on an error).
            let waited = wait_for(
                "writes to finish and a full read pass after the fault",
                RECOVERY_BOUND * 2,
                || async {
                    reader_done.load(Ordering::Relaxed)
                        || (writer_done.load(Ordering::Relaxed)
                            && reads.load(Ordering::Relaxed) > at_kill.0 + OLD)
                },
            )
            .await;
            waited.map(|()| at_kill)
        }
        .await;
        // However the kill went, the reader must stop so that the join ends.
        stop.store(true, Ordering::Relaxed);
        killed
    };
    let (read_result, write_results, killed) = tokio::join!(reader, writer, kill);
    let (reads_at_kill, writes_at_kill, killed_at) = killed?;
    eprintln!(
        "{} reads ({reads_at_kill} before the kill of datad {victim_id}), \
         {writes_at_kill} writes before the kill, {:?} after the kill",
        reads.load(Ordering::Relaxed),
        killed_at.elapsed()
    );
    if let Err(e) = read_result {
        anyhow::bail!(
            "a read failed after datad {VICTIM} died: {e:#}\n{}",
            logs(&cluster)
        );
    }
    let fresh = cluster.client();
    let mut committed = Vec::new();
    for (i, took, r) in write_results {
        match r {
            Ok(()) => {
                eprintln!("write /d/new{i}: ok in {took:?}");
                let path = format!("/d/new{i}");
                same_bytes(&path, &read_file(&fresh, &path).await?, &new[i])?;
                committed.push(i);
            }
            Err(e) => eprintln!("write /d/new{i}: failed after {took:?}: {e}"),
        }
    }
    anyhow::ensure!(
        committed.len() > writes_at_kill,
        "no write succeeded after datad {VICTIM} was killed\n{}",
        logs(&cluster)
    );

    // The node comes back, rejoins the chains, and everything still reads right
    // (including blocks written while it was down, which it does not hold).
    fault.heal(&mut cluster, Role::Data, VICTIM)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let map = client.meta.refresh_map().await?;
    let node = map
        .data_nodes
        .iter()
        .find(|n| n.addr == cluster.datas[VICTIM].addr)
        .ok_or_else(|| anyhow::anyhow!("restarted datad missing from the map"))?;
    assert!(node.alive, "restarted datad is alive in the map: {node:?}");
    let fresh = cluster.client();
    for (i, want) in old.iter().enumerate() {
        let path = format!("/d/old{i}");
        same_bytes(&path, &read_file(&fresh, &path).await?, want)?;
    }
    for i in committed {
        let path = format!("/d/new{i}");
        same_bytes(&path, &read_file(&fresh, &path).await?, &new[i])?;
    }
    let last = random_bytes(SIZE, 300);
    write_file(&fresh, "/d/after-restart", &last).await?;
    same_bytes(
        "/d/after-restart",
        &read_file(&cluster.client(), "/d/after-restart").await?,
        &last,
    )?;
    Ok(())
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            out.extend(files_under(&entry.path())?);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_block_is_detected_and_served_from_another_replica() -> anyhow::Result<()> {
    // One placement group: every block has the same chain, so datad 0's replica is
    // the one a reader tries first and the fallback path runs for every block.
    let cluster = Cluster::start(Spec {
        placement_groups: 1,
        ..Spec::default()
    })
    .await?;
    let client = cluster.client();
    client.meta.mkdir(ROOT_INO, b"c", 0o755).await?;
    let data = random_bytes(10 << 20, 5);
    write_file(&client, "/c/f", &data).await?;

    let map = client.meta.refresh_map().await?;
    assert_eq!(map.groups.len(), 1);
    assert_eq!(
        map.groups[0].chain.first(),
        Some(&cluster.datas[0].id),
        "datad 0 heads the only chain: {:?}",
        map.groups[0]
    );
    let attr = client.meta.resolve("/c/f").await?;
    let chunks = client.meta.read_chunks(attr.ino, 0, 1).await?;
    let slices: Vec<&pb::Slice> = chunks.chunks.iter().flat_map(|c| &c.slices).collect();
    assert_eq!(slices.len(), 1, "one slice: {slices:?}");
    let slice_id = slices[0].slice_id;
    let blocks: BTreeSet<String> = (0..3).map(|i| format!("{slice_id:016x}-{i}")).collect();

    // Flip one byte in the middle of every block file on datad 0.
    let mut damaged = BTreeSet::new();
    for path in files_under(&cluster.data_dir(0).join("blocks"))? {
        let mut bytes = std::fs::read(&path)?;
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        std::fs::write(&path, &bytes)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        damaged.insert(name.unwrap_or_default());
    }
    assert_eq!(damaged, blocks, "datad 0 holds exactly the file's blocks");

    // Datad 0 itself refuses to serve the damaged bytes, whole or in part.
    let ch = cairn_proto::channel::Channels::default().get(&cluster.datas[0].addr)?;
    let mut raw = pb::data_client::DataClient::new(ch)
        .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES);
    for index in 0..3 {
        for (offset, len) in [(0, 0), (100, 1000)] {
            let r = raw
                .get_block(pb::GetBlockRequest {
                    block: Some(pb::BlockId { slice_id, index }),
                    offset,
                    len,
                })
                .await;
            match r {
                Ok(reply) => panic!(
                    "datad 0 served damaged block {index} [{offset}, +{len}): {} bytes",
                    reply.into_inner().data.len()
                ),
                Err(status) => {
                    let e = cairn_client::error::from_status(&status);
                    assert_eq!(e.errno(), EIO, "block {index}: {status:?}");
                }
            }
        }
    }

    // A fresh client (empty caches) gets the original bytes from the other replicas.
    let reader = cluster.client();
    same_bytes("/c/f", &read_file(&reader, "/c/f").await?, &data)?;
    // A ranged read inside the second block takes the range path.
    let mut r = reader.open_file("/c/f").await?;
    let off = (4 << 20) + 12_345;
    let got = r.read_at(off, 100_000).await?;
    same_bytes(
        "/c/f range",
        &got,
        &data[off as usize..off as usize + 100_000],
    )?;
    // And one crossing from the second block into the third.
    let off = (8 << 20) - 777;
    let got = r.read_at(off, 5000).await?;
    same_bytes(
        "/c/f range across blocks",
        &got,
        &data[off as usize..off as usize + 5000],
    )?;
    Ok(())
}
