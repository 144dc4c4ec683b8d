//! Write-back mounts: close and fsync return once data is staged locally; the
//! data reaches the cluster in the background, and after the mount is killed
//! (kill -9) the next mount with the same cache directory uploads everything
//! that was fsync'd.

use std::fs;
use std::io::Write;
use std::time::Duration;

use cairn_tests::random_bytes;
use cairn_tests::read_file;
use cairn_tests::wait_for;
use cairn_tests::Cluster;
use cairn_tests::Mount;
use cairn_tests::Role;
use cairn_tests::Spec;

fn body(i: usize) -> Vec<u8> {
    random_bytes(3 << 20, 100 + i as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsynced_writes_survive_a_killed_writeback_mount() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Spec::one_data_server()).await?;
    let cache = cluster.dir.path().join("cache");
    let cache_arg = cache.to_string_lossy().into_owned();
    let args = ["--writeback", "--cache-dir", cache_arg.as_str()];
    let mut first = Mount::start_with(&cluster, "wb1", &args).await?;
    // With the data server down nothing can be uploaded: closes and fsyncs
    // still return, at local-disk speed, because the data is staged.
    cluster.datas[0].kill();
    let root = first.path.clone();
    let fsynced = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        for i in 0..6 {
            let mut f = fs::File::create(root.join(format!("ckpt{i}")))?;
            f.write_all(&body(i))?;
            f.sync_all()?;
        }
        // One more, written but neither fsync'd nor closed when the mount dies.
        let mut f = fs::File::create(root.join("torn"))?;
        f.write_all(&body(99)[..1 << 20])?;
        std::mem::forget(f);
        Ok(6)
    })
    .await??;
    let staged = fs::read_dir(cache.join("staging"))?.count();
    assert!(
        staged >= fsynced,
        "{staged} logs staged for {fsynced} fsync'd files"
    );
    first.kill();

    // Data server back, a new mount on the same cache directory: it replays
    // the staged logs, and every fsync'd file is complete in the cluster.
    cluster.restart(Role::Data, 0)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let _second = Mount::start_with(&cluster, "wb2", &args).await?;
    let client = cluster.client();
    for i in 0..fsynced {
        let path = format!("/ckpt{i}");
        let uploaded = wait_for(
            "the staged file to be uploaded",
            Duration::from_secs(60),
            || async {
                read_file(&client, &path)
                    .await
                    .is_ok_and(|d| d.len() == 3 << 20)
            },
        )
        .await;
        if let Err(e) = uploaded {
            let log = fs::read_to_string(cluster.dir.path().join("wb1.log")).unwrap_or_default()
                + &fs::read_to_string(cluster.dir.path().join("wb2.log")).unwrap_or_default();
            let staged: Vec<_> = fs::read_dir(cache.join("staging"))?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            anyhow::bail!("{e}: mount log:\n{log}\nstaged: {staged:?}");
        }
        assert!(
            read_file(&client, &path).await? == body(i),
            "{path} differs"
        );
    }
    wait_for(
        "the staging directory to drain",
        Duration::from_secs(60),
        || async {
            fs::read_dir(cache.join("staging"))
                .map(|d| d.count() == 0)
                .unwrap_or(false)
        },
    )
    .await?;
    Ok(())
}

/// Version `v` of a file rewritten in place: where the write lands and what
/// it holds. Versions overlap each other, and each is larger than the inline
/// limit, so nothing reaches the cluster without a data server.
fn overlapping_version(v: usize) -> (u64, Vec<u8>) {
    (
        (v as u64) * (16 << 10),
        random_bytes(256 << 10, 1000 + v as u64),
    )
}

/// The file after versions `0..n`, applied in order.
fn after_versions(n: usize) -> Vec<u8> {
    let mut file = Vec::new();
    for v in 0..n {
        let (offset, data) = overlapping_version(v);
        let end = offset as usize + data.len();
        if file.len() < end {
            file.resize(end, 0);
        }
        file[offset as usize..end].copy_from_slice(&data);
    }
    file
}

/// pwrite + fsync of versions `range` on one descriptor of `path`.
fn write_versions(path: &std::path::Path, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    for v in range {
        let (offset, data) = overlapping_version(v);
        f.write_all_at(&data, offset)?;
        f.sync_all()?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writeback_replay_keeps_commit_order_across_two_crashes() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Spec::one_data_server()).await?;
    let cache = cluster.dir.path().join("cache");
    let cache_arg = cache.to_string_lossy().into_owned();
    let args = ["--writeback", "--cache-dir", cache_arg.as_str()];
    // No data server: every fsync'd version stays in the staging directory.
    cluster.datas[0].kill();
    let mut first = Mount::start_with(&cluster, "wb1", &args).await?;
    let path = first.path.join("f");
    // Twelve versions (two-digit sequence numbers), then a crash.
    tokio::task::spawn_blocking(move || write_versions(&path, 0..12)).await??;
    first.kill();
    // A second run on the same cache directory, the data server still away:
    // it cannot upload what it replays, takes eight more versions, and
    // crashes too (another PID, numbers past the first run's).
    let mut second = Mount::start_with(&cluster, "wb2", &args).await?;
    let path = second.path.join("f");
    tokio::task::spawn_blocking(move || write_versions(&path, 12..20)).await??;
    second.kill();
    let staged = fs::read_dir(cache.join("staging"))?.count();
    assert_eq!(staged, 20, "one log per fsync'd version");

    // The data server back, a third run replays all twenty in the order they
    // were acknowledged: the file is the last version over the others.
    cluster.restart(Role::Data, 0)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let _third = Mount::start_with(&cluster, "wb3", &args).await?;
    wait_for(
        "the staging directory to drain",
        Duration::from_secs(60),
        || async {
            fs::read_dir(cache.join("staging"))
                .map(|d| d.count() == 0)
                .unwrap_or(false)
        },
    )
    .await?;
    let client = cluster.client();
    let got = read_file(&client, "/f").await?;
    let want = after_versions(20);
    assert_eq!(got.len(), want.len());
    let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        first_bad.is_none(),
        "the file differs at byte {first_bad:?}"
    );
    Ok(())
}
