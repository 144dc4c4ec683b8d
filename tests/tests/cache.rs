//! The client's local block cache against a real cluster: warm files are served
//! with every data server down, and a corrupted cache file is detected and
//! fetched again.

use std::time::Duration;

use sha2::Digest;
use sha2::Sha256;

use cairn_client::cache::BlockCache;
use cairn_client::Client;
use cairn_client::MetaClient;
use cairn_tests::random_bytes;
use cairn_tests::read_file;
use cairn_tests::write_file;
use cairn_tests::Cluster;
use cairn_tests::Role;
use cairn_tests::Spec;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_blocks_survive_dead_data_servers_and_corruption_is_refetched() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Spec::default()).await?;
    let cache_dir = cluster.dir.path().join("cache");
    let metas = cluster.meta_addrs();
    let cached = |capacity| -> anyhow::Result<_> {
        let cache = BlockCache::open(&cache_dir, capacity)?;
        Ok(Client::with_options(
            MetaClient::new(metas.clone(), Default::default()),
            Some(cache),
        ))
    };
    let client = cached(1 << 30)?;
    let data = random_bytes(10 << 20, 21);
    write_file(&client, "/warm", &data).await?;
    assert_eq!(read_file(&client, "/warm").await?, data);
    let stats = client.data.cache().map(|c| c.stats()).unwrap_or_default();
    assert_eq!(stats.blocks, 3, "{stats:?}");

    // Every data server down: the warm file still reads, from the cache.
    for d in &mut cluster.datas {
        d.kill();
    }
    let back = read_file(&client, "/warm").await?;
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
    // A new client on the same cache directory reindexes it (a remount).
    let remounted = cached(1 << 30)?;
    assert_eq!(read_file(&remounted, "/warm").await?, data);

    // Flip a byte in every cached block; with the data servers back, the bad
    // files are detected, dropped and fetched again.
    for i in 0..cluster.datas.len() {
        cluster.restart(Role::Data, i)?;
    }
    cluster.wait_ready(Duration::from_secs(60)).await?;
    for sub in std::fs::read_dir(&cache_dir)? {
        for f in std::fs::read_dir(sub?.path())? {
            let path = f?.path();
            let mut bytes = std::fs::read(&path)?;
            bytes[100] ^= 0x5a;
            std::fs::write(&path, bytes)?;
        }
    }
    let fresh = cached(1 << 30)?;
    assert_eq!(read_file(&fresh, "/warm").await?, data);
    let stats = fresh.data.cache().map(|c| c.stats()).unwrap_or_default();
    assert_eq!(stats.corrupt, 3, "{stats:?}");
    assert_eq!(read_file(&fresh, "/warm").await?, data);
    assert_eq!(fresh.data.cache().map(|c| c.stats().hits).unwrap_or(0), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warmup_fills_the_cache_and_resumes() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Spec::default()).await?;
    let client = cluster.client();
    client
        .meta
        .mkdir(cairn_proto::ids::ROOT_INO, b"data", 0o755)
        .await?;
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("/data/f{i}"),
                random_bytes((5 << 20) + i * 1000, 50 + i as u64),
            )
        })
        .collect();
    for (path, data) in &files {
        write_file(&client, path, data).await?;
    }
    let cache_dir = cluster.dir.path().join("warm-cache");
    let warmup = || {
        std::process::Command::new(cairn_tests::cairn_bin()?)
            .args(["warmup", "/data", "--cache-dir"])
            .arg(&cache_dir)
            .env("CAIRN_META", cluster.meta_addrs().join(","))
            .output()
            .map_err(anyhow::Error::from)
    };
    let first = warmup()?;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = String::from_utf8_lossy(&warmup()?.stdout).into_owned();
    assert!(
        second.contains("(0 bytes fetched)"),
        "a second run fetches nothing: {second}"
    );
    // With every data server down, the warm files read from the cache alone.
    for d in &mut cluster.datas {
        d.kill();
    }
    let cached = Client::with_options(
        MetaClient::new(cluster.meta_addrs(), Default::default()),
        Some(BlockCache::open(&cache_dir.join("blocks"), 1 << 30)?),
    );
    for (path, data) in &files {
        assert!(read_file(&cached, path).await? == *data, "{path}");
    }
    Ok(())
}
