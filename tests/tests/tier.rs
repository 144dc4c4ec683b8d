//! Hot/cold tiering against a real S3-protocol server (s3s-fs in its own
//! process, behind a fault-injecting proxy): a tree goes cold and reads back
//! byte for byte, is restored and expired; 503s, hangs and a dead server stop
//! a run without losing data and the run resumes; a datad killed mid-move
//! comes back with every block hot or cold; GC leaves no object behind and
//! never deletes a referenced one (the bucket listed against metadata).

use std::collections::BTreeSet;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::Client;
use cairn_proto::pb;
use cairn_tests::cold::ColdS3;
use cairn_tests::cold::Fault;
use cairn_tests::cold::BUCKET;
use cairn_tests::random_bytes;
use cairn_tests::read_file;
use cairn_tests::wait_for;
use cairn_tests::write_file;
use cairn_tests::Cluster;
use cairn_tests::Role;
use cairn_tests::Spec;

const PREFIX: &str = "prod";
const MIB: usize = 1 << 20;

fn spec() -> Spec {
    Spec {
        metas: 1,
        datas: 3,
        replication: 1,
        data_replication: 2,
        placement_groups: 8,
        block_size: 1 << 20,
        datad_toml: ColdS3::datad_toml(),
        ..Spec::default()
    }
}

/// Runs the `cairn` CLI against the cluster.
fn cairn(cluster: &Cluster, args: &[&str]) -> Output {
    std::process::Command::new(cairn_tests::cairn_bin().unwrap())
        .args(args)
        .env("CAIRN_META", cluster.meta_addrs().join(","))
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

/// Starts `cairn tier run POLICY` in the background and waits until it has
/// uploaded `objects` objects.
async fn run_until_uploaded(
    cluster: &Cluster,
    cold: &ColdS3,
    policy: &str,
    objects: usize,
) -> std::process::Child {
    let run = std::process::Command::new(cairn_tests::cairn_bin().unwrap())
        .args(["tier", "run", policy])
        .env("CAIRN_META", cluster.meta_addrs().join(","))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the run to upload", Duration::from_secs(60), || async {
        cold.keys().await.is_ok_and(|k| k.len() >= objects)
    })
    .await
    .unwrap();
    run
}

fn ok(out: Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "cairn failed: {text}");
    text
}

async fn mkdirs(client: &Arc<Client>, path: &str) {
    let mut at = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let parent = client
            .meta
            .resolve(if at.is_empty() { "/" } else { &at })
            .await
            .unwrap();
        at = format!("{at}/{part}");
        if client.meta.resolve(&at).await.is_err() {
            client
                .meta
                .mkdir(parent.ino, part.as_bytes(), 0o755)
                .await
                .unwrap();
        }
    }
}

/// Writes `count` files `dir/f<i>` of `size` bytes (plus `i` KB, so they
/// differ) under a new `dir`; answers their paths and contents.
async fn write_files(
    client: &Arc<Client>,
    dir: &str,
    count: usize,
    size: usize,
    seed: u64,
) -> Vec<(String, Vec<u8>)> {
    mkdirs(client, dir).await;
    let mut files = Vec::new();
    for i in 0..count {
        let path = format!("{dir}/f{i}");
        let data = random_bytes(size + i * 1000, seed + i as u64);
        write_file(client, &path, &data).await.unwrap();
        files.push((path, data));
    }
    files
}

/// Sets the backend to the test server and waits until every datad uses it.
async fn use_backend(cluster: &Cluster, cold: &ColdS3) {
    ok(cairn(
        cluster,
        &[
            "tier",
            "backend",
            "set",
            &format!("s3://{BUCKET}/{PREFIX}"),
            "--endpoint",
            &cold.endpoint(),
            "--region",
            "us-east-1",
        ],
    ));
    let client = cluster.client();
    wait_for("datads to use the backend", Duration::from_secs(30), || {
        let client = client.clone();
        let addrs: Vec<String> = cluster.datas.iter().map(|d| d.addr.clone()).collect();
        async move {
            for a in addrs {
                match client.data.stat(&a).await {
                    Ok(s) if s.cold_backend.starts_with("s3://") => {}
                    _ => return false,
                }
            }
            true
        }
    })
    .await
    .unwrap();
}

/// Each block of a file with its tier on every replica.
async fn tiers(client: &Arc<Client>, path: &str) -> Vec<((u64, u32), Vec<pb::BlockTier>)> {
    let attr = client.meta.resolve(path).await.unwrap();
    let mut out = Vec::new();
    for (slice, index) in client.blocks_of(attr.ino).await.unwrap() {
        let mut per_replica = Vec::new();
        for addr in client.data.replicas(slice, index).await.unwrap() {
            let info = client
                .data
                .tier_blocks(&addr, pb::TierOp::Info, &[(slice, index)])
                .await
                .unwrap();
            per_replica.push(info[0].tier());
        }
        out.push(((slice, index), per_replica));
    }
    out
}

fn key_of((slice_id, index): (u64, u32)) -> String {
    let id = cairn_datad::BlockId { slice_id, index };
    format!("{PREFIX}/blocks/{:02x}/{id}", id.dir())
}

/// The invariants every fault must keep: each file reads back byte for byte,
/// every block that is cold on some replica has its object, and every object
/// in the bucket belongs to a block of a live file.
async fn check(cluster: &Cluster, cold: &ColdS3, files: &[(String, Vec<u8>)]) {
    let client = cluster.client();
    let mut referenced = BTreeSet::new();
    let objects: BTreeSet<String> = cold.keys().await.unwrap().into_iter().collect();
    for (path, data) in files {
        assert!(
            read_file(&client, path).await.unwrap() == *data,
            "{path} differs"
        );
        for (block, replicas) in tiers(&client, path).await {
            referenced.insert(key_of(block));
            if replicas.contains(&pb::BlockTier::Cold) {
                assert!(
                    objects.contains(&key_of(block)),
                    "{path}: block {block:?} is cold without its object"
                );
            }
        }
    }
    for key in &objects {
        assert!(referenced.contains(key), "object {key} belongs to no file");
    }
}

fn all(t: &[((u64, u32), Vec<pb::BlockTier>)], tier: pb::BlockTier) -> bool {
    !t.is_empty() && t.iter().all(|(_, r)| r.iter().all(|x| *x == tier))
}

#[tokio::test]
async fn tree_goes_cold_reads_back_restores_expires_and_is_collected() {
    let cold = ColdS3::start().await.unwrap();
    let cluster = Cluster::start(spec()).await.unwrap();
    let client = cluster.client();
    use_backend(&cluster, &cold).await;

    mkdirs(&client, "/ckpt/run-1").await;
    mkdirs(&client, "/ckpt/run-2").await;
    mkdirs(&client, "/data/keep").await;
    let files: Vec<(String, Vec<u8>)> = vec![
        ("/ckpt/run-1/a".into(), random_bytes(3 * MIB + 17, 1)),
        ("/ckpt/run-1/b".into(), random_bytes(MIB, 2)),
        ("/ckpt/run-2/c".into(), random_bytes(2 * MIB + 5, 3)),
        ("/ckpt/small".into(), random_bytes(1000, 4)),
        ("/data/keep/x".into(), random_bytes(2 * MIB, 5)),
    ];
    for (path, data) in &files {
        write_file(&client, path, data).await.unwrap();
    }
    ok(cairn(
        &cluster,
        &[
            "tier", "policy", "add", "all", "--path", "/**", "--action", "to-cold", "--every", "0",
        ],
    ));
    ok(cairn(
        &cluster,
        &[
            "tier",
            "policy",
            "add",
            "keep",
            "--path",
            "/data/keep/**",
            "--action",
            "pin-hot",
            "--every",
            "0",
        ],
    ));

    let dry = ok(cairn(&cluster, &["tier", "run", "all", "--dry-run"]));
    assert!(dry.contains("would act on 4 files"), "{dry}");
    assert!(cold.keys().await.unwrap().is_empty());

    let out = ok(cairn(&cluster, &["tier", "run", "all"]));
    assert!(out.contains("done, 4 files"), "{out}");
    for (path, _) in &files[..3] {
        assert!(
            all(&tiers(&client, path).await, pb::BlockTier::Cold),
            "{path}"
        );
    }
    assert!(all(
        &tiers(&client, "/data/keep/x").await,
        pb::BlockTier::Hot
    ));
    // No hot copy is left of the cold blocks: the datads hold only /data/keep.
    let mut used = 0;
    for d in &cluster.datas {
        used += client.data.stat(&d.addr).await.unwrap().used_bytes;
    }
    assert_eq!(
        used,
        2 * 2 * MIB as u64,
        "only /data/keep's 2 replicas stay local"
    );
    assert_eq!(cold.keys().await.unwrap().len(), 4 + 1 + 3);
    check(&cluster, &cold, &files).await;
    // fsck counts a cold copy good once its object is found in the cold tier.
    let out = ok(cairn(&cluster, &["fsck"]));
    assert!(out.contains("fsck: clean"), "{out}");

    let status = ok(cairn(&cluster, &["status"]));
    assert!(
        status.contains(&format!("cold tier: s3://{BUCKET}/{PREFIX}")),
        "{status}"
    );
    assert!(status.contains("16 blocks moved to cold"), "{status}");
    let status = ok(cairn(&cluster, &["tier", "status", "/ckpt"]));
    let cold_bytes = (3 * MIB + 17 + MIB + 2 * MIB + 5).to_string();
    assert!(
        status.contains(&format!("cold bytes:    {cold_bytes}")),
        "{status}"
    );
    assert!(status.contains("hot bytes:     0"), "{status}");

    // Restore one run: hot on every replica again, its objects gone.
    let out = ok(cairn(&cluster, &["tier", "restore", "/ckpt/run-1"]));
    assert!(out.contains("2 files"), "{out}");
    for path in ["/ckpt/run-1/a", "/ckpt/run-1/b"] {
        assert!(
            all(&tiers(&client, path).await, pb::BlockTier::Hot),
            "{path}"
        );
    }
    assert_eq!(cold.keys().await.unwrap().len(), 3);
    check(&cluster, &cold, &files).await;

    // Expire: files older than a day under run-2 are deleted, and GC removes
    // their cold objects.
    age(&client, "/ckpt/run-2/c", 2).await;
    ok(cairn(
        &cluster,
        &[
            "tier",
            "policy",
            "add",
            "old",
            "--path",
            "/ckpt/**",
            "--min-age",
            "1d",
            "--action",
            "expire",
            "--every",
            "0",
        ],
    ));
    let out = ok(cairn(&cluster, &["tier", "run", "old"]));
    assert!(out.contains("done, 1 files"), "{out}");
    assert!(client.meta.resolve("/ckpt/run-2/c").await.is_err());
    wait_for(
        "GC to delete the expired file's objects",
        Duration::from_secs(60),
        || async { cold.keys().await.map(|k| k.is_empty()).unwrap_or(false) },
    )
    .await
    .unwrap();
    let live: Vec<(String, Vec<u8>)> = files
        .iter()
        .filter(|(p, _)| p != "/ckpt/run-2/c")
        .cloned()
        .collect();
    check(&cluster, &cold, &live).await;

    // Cold again, then deleted: GC leaves nothing in the bucket.
    ok(cairn(&cluster, &["tier", "run", "all"]));
    assert_eq!(cold.keys().await.unwrap().len(), 4 + 1);
    check(&cluster, &cold, &live).await;
    let dir = client.meta.resolve("/ckpt/run-1").await.unwrap();
    client.meta.unlink(dir.ino, b"a").await.unwrap();
    wait_for(
        "GC to delete a's objects",
        Duration::from_secs(60),
        || async { cold.keys().await.map(|k| k.len() == 1).unwrap_or(false) },
    )
    .await
    .unwrap();
    let live: Vec<(String, Vec<u8>)> = live
        .into_iter()
        .filter(|(p, _)| p != "/ckpt/run-1/a")
        .collect();
    check(&cluster, &cold, &live).await;
}

#[tokio::test]
async fn faults_stop_a_run_without_loss_and_it_resumes() {
    let mut cold = ColdS3::start().await.unwrap();
    let cluster = Cluster::start(spec()).await.unwrap();
    let client = cluster.client();
    use_backend(&cluster, &cold).await;
    let files = write_files(&client, "/ckpt", 8, 2 * MIB, 10).await;
    // 2 MB/s: the 16 MiB take ~8 s, long enough to kill the server mid-run.
    ok(cairn(
        &cluster,
        &[
            "tier",
            "policy",
            "add",
            "ckpt",
            "--path",
            "/ckpt/**",
            "--action",
            "to-cold",
            "--every",
            "0",
            "--bandwidth",
            "2M",
            "--concurrency",
            "1",
        ],
    ));

    for fault in [Fault::Unavailable, Fault::Hang] {
        cold.proxy.set(fault);
        let out = cairn(&cluster, &["tier", "run", "ckpt"]);
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{fault:?}: the run should stop");
        assert!(text.contains("run it again to resume"), "{fault:?}: {text}");
        cold.proxy.set(Fault::Pass);
        check(&cluster, &cold, &files).await;
    }

    // The server dies mid-run.
    let mut run = run_until_uploaded(&cluster, &cold, "ckpt", 3).await;
    cold.kill();
    let status = run.wait().unwrap();
    assert!(
        !status.success(),
        "the run should stop when the server dies"
    );
    cold.restart().await.unwrap();
    check(&cluster, &cold, &files).await;
    let config = client.meta.get_tier().await.unwrap();
    let record = &config.runs[0];
    assert_eq!(record.finished_ms, 0);
    assert!(record.failures >= 3, "{record:?}");
    let done_before = record.files;

    // Resumed: the files done before are not walked again.
    let out = ok(cairn(&cluster, &["tier", "run", "ckpt"]));
    assert!(out.contains("done, 8 files"), "{out}");
    let record = &client.meta.get_tier().await.unwrap().runs[0];
    assert!(
        record.finished_ms > 0 && record.cursor == "/ckpt/f7",
        "{record:?}"
    );
    assert!(done_before < 8);
    for (path, _) in &files {
        assert!(
            all(&tiers(&client, path).await, pb::BlockTier::Cold),
            "{path}"
        );
    }
    check(&cluster, &cold, &files).await;
}

#[tokio::test]
async fn datad_killed_mid_move_keeps_every_block_readable() {
    let cold = ColdS3::start().await.unwrap();
    let mut cluster = Cluster::start(spec()).await.unwrap();
    let client = cluster.client();
    use_backend(&cluster, &cold).await;
    let files = write_files(&client, "/m", 6, 2 * MIB, 30).await;
    ok(cairn(
        &cluster,
        &[
            "tier",
            "policy",
            "add",
            "m",
            "--path",
            "/m/**",
            "--action",
            "to-cold",
            "--every",
            "0",
            "--bandwidth",
            "2M",
            "--concurrency",
            "1",
        ],
    ));
    let mut run = run_until_uploaded(&cluster, &cold, "m", 2).await;
    cluster.datas[0].kill();
    let _ = run.wait();
    cluster.restart(Role::Data, 0).unwrap();
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    // A restart quicker than the liveness timeout leaves the node "alive"
    // throughout: wait until it serves again.
    let restarted = cluster.datas[0].addr.clone();
    wait_for(
        "the restarted datad to serve",
        Duration::from_secs(60),
        || async { client.data.stat(&restarted).await.is_ok() },
    )
    .await
    .unwrap();
    // Every block the restarted datad holds is hot, or cold with its object;
    // every block has a copy somewhere; everything reads back.
    let objects = cold.keys().await.unwrap();
    for (path, _) in &files {
        for (block, replicas) in tiers(&client, path).await {
            assert!(
                replicas.iter().any(|t| *t != pb::BlockTier::Absent),
                "{path}: {block:?} {replicas:?}"
            );
            let info = client
                .data
                .tier_blocks(&restarted, pb::TierOp::Info, &[block])
                .await
                .unwrap();
            if info[0].tier() == pb::BlockTier::Cold {
                assert!(objects.contains(&key_of(block)), "{path}: {block:?}");
            }
        }
    }
    check(&cluster, &cold, &files).await;
    // And the run completes.
    let out = ok(cairn(&cluster, &["tier", "run", "m"]));
    assert!(out.contains("done, 6 files"), "{out}");
    check(&cluster, &cold, &files).await;
}

#[tokio::test]
async fn scheduler_runs_due_policies_and_pressure_moves_lru_blocks() {
    let cold = ColdS3::start().await.unwrap();
    let spec = Spec {
        datas: 1,
        data_replication: 1,
        capacity_bytes: 8 << 20,
        datad_toml: concat!(
            "[cold]\naccess-key-id = \"COLDTESTKEY\"\nsecret-access-key = \"cold-test-secret\"\n",
            "op-timeout-ms = 5000\nretry-deadline-ms = 3000\n",
            "high-water = 0.5\nlow-water = 0.25\npressure-check-ms = 100\n"
        ),
        ..spec()
    };
    let cluster = Cluster::start(spec).await.unwrap();
    let client = cluster.client();
    // The files are written before the backend is set: pressure, checked
    // every 100 ms, could otherwise fire between two writes and leave the
    // node between the marks once the last one lands.
    let mut files = write_files(&client, "/p", 5, MIB, 50).await;
    use_backend(&cluster, &cold).await;
    // 5 MiB of 8 passes the high-water mark (4 MiB): LRU blocks go cold
    // until at most 2 MiB stay local.
    let addr = cluster.datas[0].addr.clone();
    wait_for(
        "capacity pressure to relieve the node",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            let addr = addr.clone();
            async move {
                client
                    .data
                    .stat(&addr)
                    .await
                    .is_ok_and(|s| s.used_bytes <= 2 * MIB as u64)
            }
        },
    )
    .await
    .unwrap();
    check(&cluster, &cold, &files).await;

    // A policy with --every is run by the scheduler.
    mkdirs(&client, "/s").await;
    write_file(&client, "/s/x", &random_bytes(MIB, 60))
        .await
        .unwrap();
    ok(cairn(
        &cluster,
        &[
            "tier", "policy", "add", "sched", "--path", "/s/**", "--action", "to-cold", "--every",
            "1s",
        ],
    ));
    wait_for(
        "the scheduler to run the policy",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move { all(&tiers(&client, "/s/x").await, pb::BlockTier::Cold) }
        },
    )
    .await
    .unwrap();
    let record = &client.meta.get_tier().await.unwrap().runs[0];
    assert!(record.finished_ms > 0, "{record:?}");
    files.push(("/s/x".into(), random_bytes(MIB, 60)));
    check(&cluster, &cold, &files).await;
}

/// Sets a file's mtime `days` days back.
async fn age(client: &Arc<Client>, path: &str, days: i64) {
    let attr = client.meta.resolve(path).await.unwrap();
    let mtime = attr.mtime_ns - days * 86_400 * 1_000_000_000;
    client
        .meta
        .setattr(
            attr.ino,
            pb::SetAttr {
                mtime_ns: Some(mtime),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn storage_classes_reach_new_children_and_nearer_ones_win() {
    let cold = ColdS3::start().await.unwrap();
    let cluster = Cluster::start(spec()).await.unwrap();
    let client = cluster.client();
    use_backend(&cluster, &cold).await;
    mkdirs(&client, "/c").await;
    mkdirs(&client, "/other").await;
    ok(cairn(
        &cluster,
        &["tier", "class", "set", "/c", "cold-after=7d"],
    ));
    let bad = cairn(&cluster, &["tier", "class", "set", "/c", "cold"]);
    assert!(!bad.status.success());
    // Children made after the class was set have it; a nearer class wins.
    mkdirs(&client, "/c/new").await;
    mkdirs(&client, "/c/slow").await;
    ok(cairn(
        &cluster,
        &["tier", "class", "set", "/c/slow", "cold-after=30d"],
    ));
    let mut files = Vec::new();
    for (path, days) in [
        ("/c/new/old", 8),
        ("/c/new/young", 1),
        ("/c/slow/old", 8),
        ("/other/old", 8),
    ] {
        let data = random_bytes(MIB + 3, days as u64 + path.len() as u64);
        write_file(&client, path, &data).await.unwrap();
        age(&client, path, days).await;
        files.push((path.to_string(), data));
    }
    let dry = ok(cairn(&cluster, &["tier", "run", "--classes", "--dry-run"]));
    assert!(dry.contains("would act on 1 files"), "{dry}");
    let out = ok(cairn(&cluster, &["tier", "run", "--classes"]));
    assert!(out.contains("done, 1 files"), "{out}");
    assert!(all(
        &tiers(&client, "/c/new/old").await,
        pb::BlockTier::Cold
    ));
    for path in ["/c/new/young", "/c/slow/old", "/other/old"] {
        assert!(
            all(&tiers(&client, path).await, pb::BlockTier::Hot),
            "{path}"
        );
    }
    check(&cluster, &cold, &files).await;
}
