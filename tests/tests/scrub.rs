//! The scrubber on a real cluster (1 metad, 3 datad, every block on all three):
//! a byte flipped in one datad's block file and another block file deleted are
//! found by that datad's scrub, never served meanwhile, and repaired from the
//! other replicas; the files on disk get their exact bytes back and every file
//! reads back exactly. `cairn fsck` reports the same damage (and orphans)
//! with the scrubber off, repairs it, and is clean after.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::ensure;
use anyhow::Context;
use bytes::Bytes;
use cairn_proto::channel::Channels;
use cairn_proto::pb;
use cairn_proto::status::decode;
use cairn_proto::status::WireError;
use cairn_proto::status::EIO;
use cairn_proto::status::ENOENT;
use cairn_tests::random_bytes;
use cairn_tests::read_file;
use cairn_tests::wait_for;
use cairn_tests::write_file;
use cairn_tests::Cluster;
use cairn_tests::Spec;

fn spec() -> Spec {
    Spec {
        metas: 1,
        replication: 1,
        datas: 3,
        data_replication: 3,
        placement_groups: 8,
        block_size: 1 << 20,
        datad_toml: "scrub-interval-s = 1\nscrub-rate-mb-s = 1000\nscrub-skip-younger-s = 0\n",
        ..Spec::default()
    }
}

/// A block file of a datad: its path and block id (slice, index), read from
/// the store's layout `blocks/<xx>/<slice as 16 hex digits>-<index>`.
#[derive(Debug, Clone)]
struct BlockFile {
    path: PathBuf,
    slice_id: u64,
    index: u32,
}

fn block_files(data_dir: &Path) -> anyhow::Result<Vec<BlockFile>> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(data_dir.join("blocks"))? {
        for file in std::fs::read_dir(dir?.path())? {
            let path = file?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some((slice, index)) = name.split_once('-') else {
                continue;
            };
            let (Ok(slice_id), Ok(index)) = (u64::from_str_radix(slice, 16), index.parse()) else {
                continue;
            };
            out.push(BlockFile {
                path,
                slice_id,
                index,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A whole block as one datad serves it.
async fn get_block(addr: &str, b: &BlockFile) -> Result<Bytes, tonic::Status> {
    let mut client = Channels::default()
        .data(addr)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let reply = client
        .get_block(pb::GetBlockRequest {
            block: Some(pb::BlockId {
                slice_id: b.slice_id,
                index: b.index,
            }),
            offset: 0,
            len: 0,
        })
        .await?;
    Ok(reply.into_inner().data)
}

/// A damaged copy is either still refused with `errno` or already repaired:
/// never served with other bytes.
async fn refused_or_good(addr: &str, b: &BlockFile, good: &[u8], errno: i32) {
    match get_block(addr, b).await {
        Ok(data) => assert_eq!(&data[..], good, "{b:?} served with wrong bytes"),
        Err(s) => match decode(&s) {
            WireError::Errno { errno: e, .. } => assert_eq!(e, errno, "{b:?}: {s:?}"),
            other => panic!("{b:?}: unexpected answer {other:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_repairs_a_flipped_byte_and_a_lost_file_from_replicas() -> anyhow::Result<()> {
    let cluster = Cluster::start(spec()).await?;
    let client = cluster.client();
    let mut files = Vec::new();
    for i in 0..3usize {
        let path = format!("/f{i}");
        let data = random_bytes((2 << 20) + 300_000 * (i + 1), 100 + i as u64);
        write_file(&client, &path, &data).await?;
        files.push((path, data));
    }

    let victim = cluster.datas[0].addr.clone();
    let blocks = block_files(&cluster.data_dir(0))?;
    // Three files of three 1 MiB blocks, each block on every datad.
    ensure!(blocks.len() == 9, "block files on datad 1: {blocks:?}");
    let before = client.data.stat(&victim).await?;
    assert_eq!(before.scrub_bad_found, Some(0), "{before:?}");

    let (flipped, lost) = (blocks[0].clone(), blocks[1].clone());
    let flipped_good = std::fs::read(&flipped.path)?;
    let lost_good = std::fs::read(&lost.path)?;
    let mut bytes = flipped_good.clone();
    bytes[12_345] ^= 0x20;
    std::fs::write(&flipped.path, &bytes)?;
    std::fs::remove_file(&lost.path)?;
    refused_or_good(&victim, &flipped, &flipped_good, EIO).await;
    refused_or_good(&victim, &lost, &lost_good, ENOENT).await;

    let stat = || async { client.data.stat(&victim).await };
    wait_for(
        "the scrub to repair both blocks",
        Duration::from_secs(60),
        || async { stat().await.is_ok_and(|s| s.scrub_repaired >= Some(2)) },
    )
    .await
    .with_context(|| cluster.datas[0].log_tail())?;
    // A whole pass after the repairs finds nothing more.
    let passes = stat().await?.scrub_passes.context("scrub is on")?;
    wait_for("one more scrub pass", Duration::from_secs(30), || async {
        stat()
            .await
            .is_ok_and(|s| s.scrub_passes > Some(passes + 1))
    })
    .await?;
    let s = stat().await?;
    assert_eq!(s.scrub_bad_found, Some(2), "{s:?}");
    assert_eq!(s.scrub_repaired, Some(2), "{s:?}");
    assert_eq!(s.scrub_unrepairable, Some(0), "{s:?}");
    assert!(s.scrub_blocks_checked >= Some(9), "{s:?}");
    assert!(s.scrub_bytes_checked >= Some(9 << 20), "{s:?}");
    assert!(s.scrub_last_pass_end_ms > Some(0), "{s:?}");

    // The files on disk hold the right bytes again, and the datad serves them.
    assert!(
        std::fs::read(&flipped.path)? == flipped_good,
        "flipped file not repaired"
    );
    assert!(
        std::fs::read(&lost.path)? == lost_good,
        "lost file not restored"
    );
    for (b, good) in [(&flipped, &flipped_good), (&lost, &lost_good)] {
        assert!(get_block(&victim, b).await? == good[..], "{b:?}");
    }
    for (path, data) in &files {
        assert!(&read_file(&cluster.client(), path).await? == data, "{path}");
    }
    assert!(cluster.datas[0].log_has_line(&["scrub repaired a block"]));
    assert!(cluster.datas[0].log_has_line(&["scrub pass finished"]));

    // The healthy replicas scrubbed too, and found nothing.
    for d in &cluster.datas[1..] {
        let s = client.data.stat(&d.addr).await?;
        assert_eq!(s.scrub_bad_found, Some(0), "datad {}: {s:?}", d.id);
        assert!(s.scrub_blocks_checked >= Some(9), "datad {}: {s:?}", d.id);
    }
    let (clean, out) = fsck(&cluster, &[])?;
    ensure!(
        clean && out.contains("fsck: clean"),
        "fsck after the scrub: {out}"
    );
    Ok(())
}

/// Runs `cairn fsck` with `args`: whether it exited 0, and its output.
fn fsck(cluster: &Cluster, args: &[&str]) -> anyhow::Result<(bool, String)> {
    cluster.cli(&[&["fsck"], args].concat())
}

/// `cairn fsck` with the scrubber off: a flipped byte on one datad, a block
/// file deleted on another, and a block no file refers to are reported;
/// `--repair` rewrites both copies from good replicas and deletes the
/// orphan; a second fsck is clean and every file reads back exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsck_reports_damage_and_orphans_and_repairs_them() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec {
        datad_toml: "scrub-interval-s = 0\nscrub-light-interval-s = 0\n",
        ..spec()
    })
    .await?;
    let client = cluster.client();
    let data = random_bytes((3 << 20) + 5, 7);
    write_file(&client, "/f", &data).await?;
    let (clean, out) = fsck(&cluster, &[])?;
    ensure!(clean, "fsck of a healthy cluster: {out}");
    ensure!(out.contains("4 blocks) referenced"), "{out}");

    let flipped = block_files(&cluster.data_dir(0))?[0].clone();
    let mut bytes = std::fs::read(&flipped.path)?;
    bytes[100] ^= 1;
    std::fs::write(&flipped.path, &bytes)?;
    let lost = block_files(&cluster.data_dir(1))?[1].clone();
    std::fs::remove_file(&lost.path)?;
    // A block of a slice no file shows (as a writer killed before its commit leaves).
    client
        .data
        .put_block(1 << 50, 0, Bytes::from_static(b"nobody's"))
        .await?;

    // Young orphans are reported, not counted (an upload may wait for its commit).
    let (clean, out) = fsck(&cluster, &["--no-verify"])?;
    ensure!(clean && out.contains("orphans: 3 copies"), "{out}");
    let (clean, out) = fsck(&cluster, &["--no-verify", "--orphan-grace-s", "0"])?;
    ensure!(!clean && out.contains("(3 older than 0 s)"), "{out}");
    ensure!(
        !out.contains("damaged"),
        "damage seen without verifying: {out}"
    );
    let (clean, out) = fsck(&cluster, &[])?;
    ensure!(!clean, "fsck missed the damage: {out}");
    let name = |b: &BlockFile| format!("block {:016x}-{}", b.slice_id, b.index);
    let on = |b: &BlockFile, node: u64| format!("damaged: {} on data node {node}", name(b));
    ensure!(out.contains(&on(&flipped, 1)), "{out}");
    ensure!(out.contains(&on(&lost, 2)), "{out}");
    ensure!(out.contains("orphans: 3 copies"), "{out}");

    let (clean, out) = fsck(&cluster, &["--repair", "--orphan-grace-s", "0"])?;
    ensure!(clean, "repair: {out}");
    ensure!(
        out.contains("2 copies rewritten, 3 orphan blocks deleted"),
        "{out}"
    );
    let (clean, out) = fsck(&cluster, &[])?;
    ensure!(
        clean && out.contains("fsck: clean"),
        "after the repair: {out}"
    );
    ensure!(
        std::fs::read(&flipped.path)? != bytes,
        "flipped copy not rewritten"
    );
    ensure!(lost.path.exists(), "lost copy not rewritten");
    ensure!(read_file(&client, "/f").await? == data, "file differs");
    Ok(())
}

/// Light passes only (deep ones off): a lost block file is found from its
/// metadata and restored from a replica, while a flipped byte, which only
/// reading finds, is left to the deep pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_light_pass_restores_a_lost_file_without_reading_data() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec {
        datad_toml: "scrub-interval-s = 0\nscrub-light-interval-s = 1\nscrub-skip-younger-s = 0\n",
        ..spec()
    })
    .await?;
    let client = cluster.client();
    let data = random_bytes((2 << 20) + 9, 11);
    write_file(&client, "/f", &data).await?;
    let blocks = block_files(&cluster.data_dir(0))?;
    let (lost, flipped) = (blocks[0].clone(), blocks[1].clone());
    let lost_good = std::fs::read(&lost.path)?;
    let mut bytes = std::fs::read(&flipped.path)?;
    bytes[7] ^= 4;
    std::fs::write(&flipped.path, &bytes)?;
    std::fs::remove_file(&lost.path)?;

    let victim = cluster.datas[0].addr.clone();
    wait_for(
        "a light pass to restore the lost file",
        Duration::from_secs(30),
        || async {
            client
                .data
                .stat(&victim)
                .await
                .is_ok_and(|s| s.scrub_repaired == Some(1) && s.scrub_light_passes >= Some(2))
        },
    )
    .await
    .with_context(|| cluster.datas[0].log_tail())?;
    let s = client.data.stat(&victim).await?;
    ensure!(
        s.scrub_passes == Some(0) && s.scrub_bytes_checked == Some(0),
        "{s:?}"
    );
    ensure!(
        std::fs::read(&lost.path)? == lost_good,
        "lost file not restored"
    );
    ensure!(
        std::fs::read(&flipped.path)? == bytes,
        "a light pass read data"
    );
    ensure!(read_file(&client, "/f").await? == data, "file differs");
    Ok(())
}
