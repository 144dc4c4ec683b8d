//! The mount's entry cache (client/src/entries.rs) through a real mount with
//! long kernel and entry timeouts: a walk's lookups are answered from one
//! listing (they succeed with every metad stopped), yet the mount sees its own
//! changes at once and a name created on another mount is found at once.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use cairn_tests::Cluster;
use cairn_tests::Mount;
use cairn_tests::Spec;

/// Drops the kernel's dentries and inodes, so every path walk asks the mount.
fn drop_dentries() -> anyhow::Result<()> {
    fs::write("/proc/sys/vm/drop_caches", "2")?;
    Ok(())
}

fn sizes(dir: &Path, names: impl Iterator<Item = usize>) -> anyhow::Result<Vec<(usize, u64)>> {
    names
        .map(|i| Ok((i, fs::metadata(dir.join(format!("f{i:02}")))?.len())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entry_cache_serves_walks_and_hides_no_change() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let long = [
        "--entry-timeout-ms",
        "600000",
        "--attr-timeout-ms",
        "600000",
    ];
    let a = Mount::start_with(&cluster, "a", &long).await?;
    let b = Mount::start(&cluster, "b").await?;
    // Files in the mount's root (its inode never leaves the kernel), so
    // every lookup of the walk is one of the directory's files: listings
    // carry attributes for the inodes on the directory's shard, its files.
    let dir = a.path.clone();
    let other = b.path.clone();
    let setup = dir.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for i in 0..40 {
            fs::write(setup.join(format!("f{i:02}")), vec![7u8; i])?;
        }
        drop_dentries()?;
        // The walk: two misses, then a listing of the names after the second.
        let walked = sizes(&setup, 0..40)?;
        anyhow::ensure!(walked.iter().all(|&(i, len)| len == i as u64), "{walked:?}");
        drop_dentries()
    })
    .await??;

    // Every metad stopped: the rest of the walk is answered by the listing.
    for m in &cluster.metas {
        m.pause();
    }
    let cached = dir.clone();
    let walk = tokio::task::spawn_blocking(move || sizes(&cached, 2..40));
    let walked = tokio::time::timeout(Duration::from_secs(20), walk).await;
    for m in &cluster.metas {
        m.resume();
    }
    let walked = walked.map_err(|_| anyhow::anyhow!("cached lookups went to metad"))???;
    assert!(walked.iter().all(|&(i, len)| len == i as u64), "{walked:?}");

    let (mine, theirs) = (dir.clone(), other.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        // The mount's own changes are seen at once, through fresh lookups.
        fs::set_permissions(mine.join("f05"), fs::Permissions::from_mode(0o600))?;
        fs::OpenOptions::new()
            .write(true)
            .open(mine.join("f06"))?
            .set_len(0)?;
        fs::rename(mine.join("f07"), mine.join("g07"))?;
        fs::remove_file(mine.join("f08"))?;
        drop_dentries()?;
        assert_eq!(fs::metadata(mine.join("f05"))?.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(mine.join("f06"))?.len(), 0);
        assert!(!mine.join("f07").exists(), "renamed away, still found");
        assert_eq!(fs::metadata(mine.join("g07"))?.len(), 7);
        assert!(!mine.join("f08").exists(), "removed, still found");
        // A name made on another mount is found at once: the cache never
        // answers that a name does not exist.
        fs::write(theirs.join("new"), b"fresh")?;
        assert_eq!(fs::read(mine.join("new"))?, b"fresh");
        Ok(())
    })
    .await??;
    drop((a, b));
    drop(cluster);
    Ok(())
}
