//! End-to-end behaviour of a real multi-process cluster: 3 metad hosting shard 0
//! and 4 namespace shards, each 3-replicated, and 3 datad with replication 3.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::stream::StreamExt;
use futures::stream::TryStreamExt;
use sha2::Digest;
use sha2::Sha256;

use cairn_proto::ids::ino_shard;
use cairn_proto::ids::ROOT_INO;
use cairn_proto::pb;
use cairn_proto::status::*;
use cairn_tests::random_bytes;
use cairn_tests::read_file;
use cairn_tests::write_file;
use cairn_tests::Cluster;
use cairn_tests::Spec;

fn errno<T: std::fmt::Debug>(r: Result<T, cairn_client::ClientError>) -> i32 {
    match r {
        Err(e) => e.errno(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn big_file_round_trip_and_small_files_across_shards() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::default()).await?;
    let client = cluster.client();

    // 256 MiB of random data: striped over every data server, replicated 3 times.
    let data = random_bytes(256 << 20, 42);
    client.meta.mkdir(ROOT_INO, b"ckpt", 0o755).await?;
    write_file(&client, "/ckpt/model.bin", &data).await?;
    let back = read_file(&cluster.client(), "/ckpt/model.bin").await?;
    assert_eq!(back.len(), data.len());
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
    // A ranged read across a block boundary.
    let mut r = client.open_file("/ckpt/model.bin").await?;
    let off = (4 << 20) - 1000;
    assert_eq!(
        &r.read_at(off, 5000).await?[..],
        &data[off as usize..off as usize + 5000]
    );
    cairn_tests::wait_for(
        "every datad to report blocks",
        Duration::from_secs(10),
        || async {
            let map = client.meta.refresh_map().await;
            map.is_ok_and(|m| m.data_nodes.len() == 3 && m.data_nodes.iter().all(|n| n.blocks > 0))
        },
    )
    .await?;

    // 10,000 small files over 100 directories spread across the shards.
    let top = client.meta.mkdir(ROOT_INO, b"small", 0o755).await?;
    let mut dirs = Vec::new();
    for d in 0..100 {
        dirs.push(
            client
                .meta
                .mkdir(top.ino, format!("d{d}").as_bytes(), 0o755)
                .await?
                .ino,
        );
    }
    let shards: BTreeSet<u32> = dirs.iter().map(|d| ino_shard(*d)).collect();
    assert_eq!(
        shards.len(),
        4,
        "directories spread over every namespace shard"
    );
    let body = |d: usize, f: usize| format!("file {f} of directory {d}").into_bytes();
    let jobs = (0..100).flat_map(|d| (0..100).map(move |f| (d, f)));
    futures::stream::iter(jobs.clone())
        .map(|(d, f)| {
            let client = client.clone();
            let dir = dirs[d];
            async move {
                let attr = client
                    .meta
                    .create(dir, format!("f{f}").as_bytes(), 0o644, true)
                    .await?;
                let mut w = client.writer(attr.ino).await?;
                w.write_at(0, &body(d, f)).await?;
                w.close().await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await?;
    for (d, dir) in dirs.iter().enumerate() {
        let names: BTreeSet<String> = client
            .meta
            .readdir(*dir)
            .await?
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        let want: BTreeSet<String> = (0..100).map(|f| format!("f{f}")).collect();
        assert_eq!(names, want, "directory d{d}");
    }
    let reader = cluster.client();
    futures::stream::iter(jobs.clone())
        .map(|(d, f)| {
            let client = reader.clone();
            let dir = dirs[d];
            async move {
                let attr = client.meta.lookup(dir, format!("f{f}").as_bytes()).await?;
                let mut r = client.reader(&attr).await?;
                let got = r.read_at(0, 1 << 20).await?;
                anyhow::ensure!(got[..] == body(d, f)[..], "content of d{d}/f{f}");
                Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await?;
    futures::stream::iter(jobs)
        .map(|(d, f)| {
            let client = client.clone();
            let dir = dirs[d];
            async move {
                client.meta.unlink(dir, format!("f{f}").as_bytes()).await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await?;
    for (d, dir) in dirs.iter().enumerate() {
        assert!(client.meta.readdir(*dir).await?.is_empty());
        client
            .meta
            .rmdir(top.ino, format!("d{d}").as_bytes())
            .await?;
    }
    assert!(client.meta.readdir(top.ino).await?.is_empty());
    assert_eq!(client.meta.getattr(top.ino).await?.nlink, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posix_semantics_and_bad_input() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let c = cluster.client();
    let meta = &c.meta;
    let before = meta.statfs().await?;
    let dir = meta.mkdir(ROOT_INO, b"p", 0o755).await?;
    meta.create(dir.ino, b"counted", 0o644, true).await?;
    let after = meta.statfs().await?;
    assert_eq!(
        after.inodes,
        before.inodes + 2,
        "statfs counts inodes on every shard"
    );
    assert!(after.total_bytes > 0);
    meta.unlink(dir.ino, b"counted").await?;

    // Invalid names are refused and change nothing.
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
        assert_eq!(
            errno(meta.create(dir.ino, bad, 0o644, true).await),
            EINVAL,
            "{bad:?}"
        );
    }
    assert_eq!(
        errno(meta.create(dir.ino, &[b'x'; 256], 0o644, true).await),
        ENAMETOOLONG
    );
    assert!(meta
        .create(dir.ino, &[b'x'; 255], 0o644, true)
        .await
        .is_ok());
    assert_eq!(errno(meta.mkdir(dir.ino, b"..", 0o755).await), EINVAL);
    assert_eq!(errno(meta.lookup(dir.ino, b"missing").await), ENOENT);

    // Create, exclusive create, hard links, unlink.
    let f = meta.create(dir.ino, b"f", 0o640, true).await?;
    assert_eq!(errno(meta.create(dir.ino, b"f", 0o644, true).await), EEXIST);
    assert_eq!(meta.create(dir.ino, b"f", 0o644, false).await?.ino, f.ino);
    let sub = meta.mkdir(dir.ino, b"sub", 0o700).await?;
    let linked = meta.link(f.ino, sub.ino, b"g").await?;
    assert_eq!(linked.nlink, 2);
    assert_eq!(errno(meta.link(sub.ino, dir.ino, b"dirlink").await), EPERM);
    meta.unlink(dir.ino, b"f").await?;
    assert_eq!(meta.lookup(sub.ino, b"g").await?.nlink, 1);
    assert_eq!(errno(meta.unlink(dir.ino, b"sub").await), EISDIR);
    assert_eq!(errno(meta.rmdir(dir.ino, b"sub").await), ENOTEMPTY);

    // Symlinks, mknod, xattrs, setattr.
    let l = meta.symlink(dir.ino, b"l", b"sub/g").await?;
    assert_eq!(meta.readlink(l.ino).await?, b"sub/g");
    let fifo = meta
        .mknod(
            cairn_client::Caller::ROOT,
            dir.ino,
            b"fifo",
            pb::FileKind::Fifo,
            0o600,
            0,
        )
        .await?;
    assert_eq!(fifo.kind, pb::FileKind::Fifo as i32);
    meta.setxattr(sub.ino, b"user.a", b"1", 0).await?;
    assert_eq!(
        errno(meta.setxattr(sub.ino, b"user.a", b"2", 1).await),
        EEXIST
    );
    assert_eq!(
        errno(meta.setxattr(sub.ino, b"user.b", b"2", 2).await),
        ENODATA
    );
    assert_eq!(meta.getxattr(sub.ino, b"user.a").await?, b"1");
    assert_eq!(meta.listxattr(sub.ino).await?, vec![b"user.a".to_vec()]);
    meta.removexattr(sub.ino, b"user.a").await?;
    assert_eq!(errno(meta.getxattr(sub.ino, b"user.a").await), ENODATA);
    let g = meta.lookup(sub.ino, b"g").await?;
    let changed = meta
        .setattr(
            g.ino,
            pb::SetAttr {
                perm: Some(0o600),
                uid: Some(7),
                mtime_ns: Some(1234),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(
        (changed.perm, changed.uid, changed.mtime_ns),
        (0o600, 7, 1234)
    );
    assert_eq!(
        errno(
            meta.setattr(
                sub.ino,
                pb::SetAttr {
                    size: Some(0),
                    ..Default::default()
                }
            )
            .await
        ),
        EISDIR
    );

    // Truncate down then extend: the tail reads as zeros.
    let data = random_bytes(3 << 20, 7);
    write_file(&c, "/p/t", &data).await?;
    let t = meta.resolve("/p/t").await?;
    meta.setattr(
        t.ino,
        pb::SetAttr {
            size: Some(1000),
            ..Default::default()
        },
    )
    .await?;
    meta.setattr(
        t.ino,
        pb::SetAttr {
            size: Some(5000),
            ..Default::default()
        },
    )
    .await?;
    let back = read_file(&c, "/p/t").await?;
    assert_eq!(&back[..1000], &data[..1000]);
    assert!(back[1000..].iter().all(|b| *b == 0));
    assert_eq!(back.len(), 5000);

    // Overwrite in the middle: a later slice overlays the earlier one.
    let mut w = c.writer(t.ino).await?;
    w.write_at(10, b"overlay").await?;
    w.close().await?;
    let back = read_file(&c, "/p/t").await?;
    assert_eq!(&back[10..17], b"overlay");
    assert_eq!(&back[..10], &data[..10]);
    // Bytes after the overlay still come from the first slice, at their offsets.
    assert_eq!(&back[17..1000], &data[17..1000]);

    // Rename: replace, noreplace, exchange, into its own subtree.
    meta.create(dir.ino, b"a", 0o644, true).await?;
    let b = meta.create(dir.ino, b"b", 0o644, true).await?;
    assert_eq!(
        errno(
            meta.rename(dir.ino, b"a", dir.ino, b"b", pb::RenameMode::Noreplace)
                .await
        ),
        EEXIST
    );
    meta.rename(dir.ino, b"b", sub.ino, b"g", pb::RenameMode::Exchange)
        .await?;
    assert_eq!(meta.lookup(sub.ino, b"g").await?.ino, b.ino);
    assert_eq!(meta.lookup(dir.ino, b"b").await?.ino, g.ino);
    meta.rename(dir.ino, b"a", dir.ino, b"b", pb::RenameMode::Replace)
        .await?;
    assert_eq!(errno(meta.lookup(dir.ino, b"a").await), ENOENT);
    assert_eq!(
        errno(
            meta.rename(dir.ino, b"sub", sub.ino, b"x", pb::RenameMode::Replace)
                .await
        ),
        EINVAL
    );
    let deep = meta.mkdir(sub.ino, b"deep", 0o755).await?;
    assert_eq!(
        errno(
            meta.rename(dir.ino, b"sub", deep.ino, b"x", pb::RenameMode::Replace)
                .await
        ),
        EINVAL
    );
    assert_eq!(
        errno(
            meta.rename(dir.ino, b"fifo", dir.ino, b"sub", pb::RenameMode::Replace)
                .await
        ),
        EISDIR
    );
    // Moving a directory across shards keeps its `..` and the link counts right.
    let other = meta.mkdir(ROOT_INO, b"q", 0o755).await?;
    meta.rename(
        sub.ino,
        b"deep",
        other.ino,
        b"moved",
        pb::RenameMode::Replace,
    )
    .await?;
    assert_eq!(meta.getattr(deep.ino).await?.parent, other.ino);
    assert_eq!(meta.getattr(other.ino).await?.nlink, 3);
    assert_eq!(meta.getattr(sub.ino).await?.nlink, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rpcs_are_rejected() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let client = cluster.client();
    let leader = cluster.leader_of(ino_shard(ROOT_INO)).await?;
    let ch = cairn_proto::channel::Channels::default().get(&cluster.metas[leader].addr)?;
    let mut raw = pb::meta_client::MetaClient::new(ch);
    // No operation, unknown enum values, an oversized symlink target.
    let empty = raw.mutate(pb::MutateRequest::default()).await.unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    let bad_kind = raw
        .mutate(pb::MutateRequest {
            op: Some(pb::mutate_request::Op::Create(pb::CreateOp {
                parent: ROOT_INO,
                name: "x".into(),
                kind: 99,
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_kind.code(), tonic::Code::InvalidArgument);
    let long_target = raw
        .mutate(pb::MutateRequest {
            op: Some(pb::mutate_request::Op::Symlink(pb::SymlinkOp {
                parent: ROOT_INO,
                name: "y".into(),
                target: vec![b'a'; 5000].into(),
            })),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(long_target.code(), tonic::Code::InvalidArgument);
    let bogus_slices = raw
        .alloc_slice_ids(pb::AllocSliceIdsRequest { count: 0 })
        .await;
    assert!(bogus_slices.is_err());
    // Nothing was created.
    assert!(client.meta.readdir(ROOT_INO).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_of_deleted_and_truncated_files_are_collected() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::default()).await?;
    let client = cluster.client();
    let blocks = |client: std::sync::Arc<cairn_client::Client>| async move {
        let map = client.meta.refresh_map().await.ok()?;
        Some(map.data_nodes.iter().map(|n| n.blocks).collect::<Vec<_>>())
    };
    // 5 blocks per copy, on 3 replicas each.
    write_file(&client, "/doomed", &random_bytes(18 << 20, 3)).await?;
    write_file(&client, "/kept", &random_bytes(6 << 20, 4)).await?;
    cairn_tests::wait_for("blocks to be reported", Duration::from_secs(10), || async {
        blocks(client.clone())
            .await
            .is_some_and(|b| b.iter().sum::<u64>() == 3 * 7)
    })
    .await?;
    client.meta.unlink(ROOT_INO, b"doomed").await?;
    cairn_tests::wait_for(
        "the deleted file's blocks to go",
        Duration::from_secs(20),
        || async {
            blocks(client.clone())
                .await
                .is_some_and(|b| b.iter().sum::<u64>() == 3 * 2)
        },
    )
    .await?;
    // Truncating to zero frees the remaining file's slices too; its data is gone, its inode stays.
    let kept = client.meta.resolve("/kept").await?;
    client
        .meta
        .setattr(
            kept.ino,
            pb::SetAttr {
                size: Some(0),
                ..Default::default()
            },
        )
        .await?;
    cairn_tests::wait_for(
        "the truncated file's blocks to go",
        Duration::from_secs(20),
        || async {
            blocks(client.clone())
                .await
                .is_some_and(|b| b.iter().sum::<u64>() == 0)
        },
    )
    .await?;
    assert!(read_file(&client, "/kept").await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unlinked_open_files_live_until_closed_or_lease_expiry() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::default()).await?;
    let total_blocks = |client: std::sync::Arc<cairn_client::Client>| async move {
        let map = client.meta.refresh_map().await.ok()?;
        Some(map.data_nodes.iter().map(|n| n.blocks).sum::<u64>())
    };
    let reader = cluster.client();
    let other = cluster.client();
    let dying = cluster.client();
    let data = random_bytes(6 << 20, 9);
    write_file(&other, "/open", &data).await?;
    write_file(&other, "/abandoned", &data).await?;
    // Both files' blocks are counted (data servers report them in their
    // heartbeats) before anything is deleted, so a count of 6 below means
    // the abandoned file's blocks went, not that the reports lagged.
    cairn_tests::wait_for(
        "both files' blocks to be reported",
        Duration::from_secs(20),
        || async { total_blocks(other.clone()).await == Some(3 * 2 * 2) },
    )
    .await?;
    let kept = reader.meta.resolve("/open").await?.ino;
    let abandoned = dying.meta.resolve("/abandoned").await?.ino;
    reader.meta.open(kept).await?;
    dying.meta.open(abandoned).await?;
    // One opener keeps renewing its session; the other dies without closing.
    drop(dying);
    other.meta.unlink(ROOT_INO, b"open").await?;
    other.meta.unlink(ROOT_INO, b"abandoned").await?;
    assert_eq!(errno(other.meta.lookup(ROOT_INO, b"open").await), ENOENT);
    assert!(
        other.meta.getattr(abandoned).await.is_ok(),
        "kept while the lease lasts"
    );
    // The dead client's lease runs out: its file and blocks go...
    cairn_tests::wait_for(
        "the abandoned file's blocks to go",
        Duration::from_secs(20),
        || async { total_blocks(other.clone()).await == Some(3 * 2) },
    )
    .await?;
    assert_eq!(errno(other.meta.getattr(abandoned).await), ENOENT);
    // ...while, a lease period later, the renewed one is still readable.
    let mut r = reader.reader(&reader.meta.getattr(kept).await?).await?;
    assert_eq!(&r.read_at(0, data.len()).await?[..], &data[..]);
    assert_eq!(reader.meta.getattr(kept).await?.nlink, 0);
    reader.meta.close(kept).await?;
    cairn_tests::wait_for(
        "the closed file's blocks to go",
        Duration::from_secs(20),
        || async { total_blocks(other.clone()).await == Some(0) },
    )
    .await?;
    assert_eq!(errno(other.meta.getattr(kept).await), ENOENT);
    Ok(())
}

/// A file opened by path is held like an open descriptor: renamed over (its
/// inode unlinked) and left past the grace that deletes an unheld file, it
/// still reads whole, while the file it was replaced by is what a new open
/// of the path reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_opened_by_path_reads_whole_after_it_is_replaced() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::default()).await?;
    let client = cluster.client();
    let total_blocks = || async {
        let map = client.meta.refresh_map().await.ok()?;
        Some(map.data_nodes.iter().map(|n| n.blocks).sum::<u64>())
    };
    // Four files of two blocks, three replicas each.
    let (old, new) = (random_bytes(6 << 20, 1), random_bytes(6 << 20, 2));
    for path in ["/f", "/unheld", "/f.new", "/unheld.new"] {
        write_file(
            &client,
            path,
            if path.ends_with("new") { &new } else { &old },
        )
        .await?;
    }
    cairn_tests::wait_for(
        "every block to be reported",
        Duration::from_secs(20),
        || async { total_blocks().await == Some(4 * 2 * 3) },
    )
    .await?;
    let mut held = client.open_file("/f").await?;
    let replaced = held.ino();
    // An unheld file replaced at the same time shows when the grace is over.
    let unheld = client.meta.resolve("/unheld").await?.ino;
    for name in ["f", "unheld"] {
        let from = format!("{name}.new");
        client
            .meta
            .rename(
                ROOT_INO,
                from.as_bytes(),
                ROOT_INO,
                name.as_bytes(),
                pb::RenameMode::Replace,
            )
            .await?;
    }
    let c = &client;
    let gone = move |ino: u64| async move {
        let e = c.meta.getattr(ino).await.err();
        e.is_some_and(|e| e.errno() == ENOENT)
    };
    cairn_tests::wait_for(
        "the unheld replaced file and its blocks to be deleted",
        Duration::from_secs(30),
        || async { gone(unheld).await && total_blocks().await == Some(3 * 2 * 3) },
    )
    .await?;
    assert!(!gone(replaced).await, "a held file outlives the grace");
    assert_eq!(&held.read_at(0, old.len()).await?[..], &old[..]);
    held.close().await?;
    assert_eq!(read_file(&client, "/f").await?, new);
    cairn_tests::wait_for("the closed file to go", Duration::from_secs(30), || async {
        gone(replaced).await && total_blocks().await == Some(2 * 2 * 3)
    })
    .await?;
    Ok(())
}

/// Reads' access-time updates go in batches, one command per shard per
/// gathering window, not one consensus round per read, and land for every
/// client: 200 reads of files spread over every shard cost a few requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_time_updates_of_many_reads_land_in_a_few_batches() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let writer = cluster.client();
    let mut files = Vec::new();
    for d in 0..8 {
        let dir = writer
            .meta
            .mkdir(ROOT_INO, format!("d{d}").as_bytes(), 0o755)
            .await?;
        for f in 0..25 {
            let name = format!("f{f}");
            files.push(
                writer
                    .meta
                    .create(dir.ino, name.as_bytes(), 0o644, true)
                    .await?,
            );
        }
    }
    let shards: BTreeSet<u32> = files.iter().map(|a| ino_shard(a.ino)).collect();
    assert!(shards.len() > 1, "the files span shards");
    let reader = cluster.client();
    let before = reader.meta.requests();
    let read_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as i64;
    for attr in &files {
        reader.meta.access_later(attr);
    }
    cairn_tests::wait_for(
        "every access time to land",
        Duration::from_secs(20),
        || async {
            let mut landed = true;
            for attr in &files {
                landed &= writer
                    .meta
                    .getattr(attr.ino)
                    .await
                    .is_ok_and(|a| a.atime_ns >= read_at);
            }
            landed
        },
    )
    .await?;
    let sent = reader.meta.requests() - before;
    assert!(
        sent <= 2 * shards.len() as u64 + 2,
        "{sent} requests for {} reads on {} shards",
        files.len(),
        shards.len()
    );
    Ok(())
}

/// A client whose cluster map names an old leader is redirected once and then
/// stays with the new leader: an ordinary error answer (ENOENT of a lookup
/// before a create) comes from the leader and must not send the next request
/// back to the map's old leader (that cost a redirect and a back-off on every
/// mkdir after its negative lookup).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_stays_with_a_moved_leader_after_error_answers() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let client = cluster.client();
    let shard = ino_shard(ROOT_INO);
    client.meta.map().await?;
    let old = cluster.leader_of(shard).await?;
    let old_id = cluster.metas[old].id;
    cluster.metas[old].pause();
    let moved = cairn_tests::wait_for("another leader", Duration::from_secs(30), || async {
        cluster
            .leader_of(shard)
            .await
            .is_ok_and(|i| cluster.metas[i].id != old_id)
    })
    .await;
    cluster.metas[old].resume();
    moved?;
    // The client's map still names the old leader: its first request is
    // redirected (more than once if the old leader's guess is stale too).
    assert_eq!(errno(client.meta.lookup(ROOT_INO, b"absent").await), ENOENT);
    for i in 0..5 {
        let name = format!("d{i}");
        let before = client.meta.requests();
        assert_eq!(
            errno(client.meta.lookup(ROOT_INO, name.as_bytes()).await),
            ENOENT
        );
        client.meta.mkdir(ROOT_INO, name.as_bytes(), 0o755).await?;
        assert_eq!(
            client.meta.requests() - before,
            2,
            "mkdir {i} was redirected"
        );
    }
    Ok(())
}

/// Chain versions come from shard 0 only: a PutBlock naming a version the
/// cluster map never issued (u64::MAX, the old poison pill) is refused by every
/// replica, stores nothing, and leaves the fence where shard 0 put it, so
/// writers holding the real chain go on writing, restarts included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_chain_versions_are_refused_and_poison_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Spec::default()).await?;
    let client = cluster.client();
    let map = client.meta.refresh_map().await?;
    let group = map.groups[0].clone();
    let addr_of = |id: u64| {
        map.data_nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.addr.clone())
            .expect("chain member in the map")
    };
    let chain: Vec<String> = group.chain.iter().map(|&id| addr_of(id)).collect();
    let data = bytes::Bytes::from_static(b"forged");
    let put = |slice_id: u64, version: u64, rest: &[String]| pb::PutBlockRequest {
        block: Some(pb::BlockId { slice_id, index: 0 }),
        crc32c: crc32c::crc32c(&data),
        data: data.clone(),
        group: group.id,
        chain_version: version,
        rest: rest.to_vec(),
    };
    let channels = cairn_proto::channel::Channels::default();
    // Through the head, and straight to each replica.
    let mut attempts = vec![(chain[0].clone(), chain[1..].to_vec())];
    attempts.extend(chain.iter().map(|a| (a.clone(), Vec::new())));
    for (i, (addr, rest)) in attempts.iter().enumerate() {
        for version in [group.version + 1, u64::MAX] {
            let err = channels
                .data(addr)?
                .put_block(put(1_000_000 + i as u64, version, rest))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
            assert!(err.message().contains("not issued"), "{err:?}");
        }
    }
    for addr in &chain {
        for i in 0..attempts.len() as u64 {
            let got = channels
                .data(addr)?
                .get_block(pb::GetBlockRequest {
                    block: Some(pb::BlockId {
                        slice_id: 1_000_000 + i,
                        index: 0,
                    }),
                    offset: 0,
                    len: 0,
                })
                .await;
            assert!(got.is_err(), "a forged block was stored on {addr}");
        }
    }
    // The real chain version still writes, before and after every datad restarts.
    let payload = random_bytes(3 << 20, 7);
    write_file(&client, "/before", &payload).await?;
    for i in 0..cluster.datas.len() {
        cluster.restart(cairn_tests::Role::Data, i)?;
    }
    cluster.wait_ready(Duration::from_secs(60)).await?;
    write_file(&client, "/after", &payload).await?;
    for path in ["/before", "/after"] {
        assert_eq!(read_file(&cluster.client(), path).await?, payload, "{path}");
    }
    Ok(())
}
