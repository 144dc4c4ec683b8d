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
