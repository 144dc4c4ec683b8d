//! Data-on-metadata: files written only within their first 64 KiB keep their
//! bytes in the inode record. Opening and reading one is one metadata request
//! and no data server; growing, overwriting and truncating such a file moves
//! it to blocks with every byte where a local file would have it.

use std::sync::Arc;

use cairn_client::Client;
use cairn_proto::pb;
use cairn_tests::random_bytes;
use cairn_tests::read_file;
use cairn_tests::write_file;
use cairn_tests::Cluster;
use cairn_tests::Spec;

/// Writes `data` at `offset` of `ino` through a writer and commits it,
/// mirroring the write in `model`.
async fn write(
    client: &Arc<Client>,
    ino: u64,
    model: &mut Vec<u8>,
    offset: usize,
    data: &[u8],
) -> anyhow::Result<()> {
    let mut w = client.writer(ino).await?;
    w.write_at(offset as u64, data).await?;
    w.close().await?;
    if model.len() < offset + data.len() {
        model.resize(offset + data.len(), 0);
    }
    model[offset..offset + data.len()].copy_from_slice(data);
    Ok(())
}

async fn truncate(
    client: &Arc<Client>,
    ino: u64,
    model: &mut Vec<u8>,
    size: usize,
) -> anyhow::Result<()> {
    let set = pb::SetAttr {
        size: Some(size as u64),
        ..Default::default()
    };
    client.meta.setattr(ino, set).await?;
    model.resize(size, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_files_live_in_metadata_and_grow_into_blocks() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Spec::one_data_server()).await?;
    let client = cluster.client();

    let mut model = random_bytes(10_000, 1);
    write_file(&client, "/small", &model).await?;
    let ino = client.meta.resolve("/small").await?.ino;
    assert!(
        client.blocks_of(ino).await?.is_empty(),
        "inline file has blocks"
    );
    // Appending within the limit keeps it inline.
    write(&client, ino, &mut model, 10_000, &random_bytes(20_000, 2)).await?;
    assert!(client.blocks_of(ino).await?.is_empty());

    // With the data server down, open and read take one metadata request.
    cluster.datas[0].kill();
    let before = client.meta.requests();
    let (attr, mut reader) = client.open_reader(ino).await?;
    let back = reader.read_at(0, 1 << 20).await?;
    assert_eq!(
        client.meta.requests() - before,
        1,
        "open + read of a small file"
    );
    assert_eq!(attr.size, 30_000);
    assert_eq!(&back[..], &model[..]);
    reader.close().await?;
    assert_eq!(read_file(&client, "/small").await?, model);
    cluster.restart(cairn_tests::Role::Data, 0)?;
    cluster
        .wait_ready(std::time::Duration::from_secs(60))
        .await?;

    // Past the limit the file takes slices over its inline bytes; a hole
    // between them reads as zeros.
    write(&client, ino, &mut model, 50_000, &random_bytes(100_000, 3)).await?;
    assert!(!client.blocks_of(ino).await?.is_empty());
    assert_eq!(read_file(&client, "/small").await?, model);
    // A small write once slices exist is a slice too (metad refuses inline).
    write(&client, ino, &mut model, 100, &random_bytes(300, 4)).await?;
    assert_eq!(read_file(&client, "/small").await?, model);
    // Truncating cuts inline data and slices alike; extending reads zeros.
    truncate(&client, ino, &mut model, 5_000).await?;
    truncate(&client, ino, &mut model, 20_000).await?;
    assert_eq!(read_file(&client, "/small").await?, model);
    // Reads at every offset and length agree (inline, hole, slice borders).
    let mut reader = client.reader(&client.meta.getattr(ino).await?).await?;
    for (off, len) in [(0, 1), (99, 2), (399, 4700), (4_999, 2), (5_000, 15_000)] {
        let got = reader.read_at(off as u64, len).await?;
        assert_eq!(&got[..], &model[off..off + len], "read at {off}+{len}");
    }

    // Emptied, the file is inline again.
    truncate(&client, ino, &mut model, 0).await?;
    write(&client, ino, &mut model, 0, b"again").await?;
    assert!(client.blocks_of(ino).await?.is_empty());
    assert_eq!(read_file(&client, "/small").await?, b"again");

    // With the threshold at 0, small files go to blocks.
    let blocks_only = cluster.client();
    blocks_only.set_inline_max(0);
    write_file(&blocks_only, "/blocks", b"tiny").await?;
    let ino = blocks_only.meta.resolve("/blocks").await?.ino;
    assert_eq!(client.blocks_of(ino).await?.len(), 1);
    assert_eq!(read_file(&client, "/blocks").await?, b"tiny");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_inline_writes_are_refused() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let client = cluster.client();
    write_file(&client, "/f", b"x").await?;
    let ino = client.meta.resolve("/f").await?.ino;
    let too_big = bytes::Bytes::from(vec![1u8; (1 << 20) + 1]);
    let err = client
        .meta
        .write_inline(ino, 0, too_big, 0)
        .await
        .expect_err("over the metad bound");
    assert_eq!(err.errno(), cairn_proto::status::ENOTSUP);
    let dir = client.meta.resolve("/").await?.ino;
    let err = client
        .meta
        .write_inline(dir, 0, bytes::Bytes::from_static(b"x"), 1)
        .await
        .expect_err("a directory");
    assert_eq!(err.errno(), cairn_proto::status::EISDIR);
    assert_eq!(read_file(&client, "/f").await?, b"x");
    Ok(())
}
