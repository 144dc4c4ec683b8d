//! Garbage on a real cluster (1 metad, 3 datad, every block on all three):
//! blocks of a writer SIGKILLed between upload and commit are deleted by the
//! data servers' orphan passes once their grace is over, and nothing a file
//! shows goes with them; a file overwritten many times keeps a short slice
//! list, the blocks of the slices it hides are freed, and a reader holding
//! the old layout reloads it.

use std::io::Write;
use std::time::Duration;

use anyhow::ensure;
use cairn_client::Client;
use cairn_proto::pb;
use cairn_tests::random_bytes;
use cairn_tests::read_file;
use cairn_tests::wait_for;
use cairn_tests::write_file;
use cairn_tests::Cluster;
use cairn_tests::Spec;

const BLOCK: usize = 64 << 10;

fn spec(datad_toml: &'static str) -> Spec {
    Spec {
        metas: 1,
        replication: 1,
        datas: 3,
        data_replication: 3,
        placement_groups: 8,
        block_size: BLOCK as u32,
        datad_toml,
        metad_toml: "gc-delay-ms = 300",
        ..Spec::default()
    }
}

/// Blocks stored on every data server of `cluster`, summed.
async fn stored_blocks(client: &Client, cluster: &Cluster) -> anyhow::Result<u64> {
    let mut total = 0;
    for d in &cluster.datas {
        total += client.data.stat(&d.addr).await?.blocks;
    }
    Ok(total)
}

async fn orphans_deleted(client: &Client, cluster: &Cluster) -> anyhow::Result<u64> {
    let mut total = 0;
    for d in &cluster.datas {
        total += client.data.stat(&d.addr).await?.orphan_blocks_deleted;
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_writers_blocks_are_collected_after_the_grace() -> anyhow::Result<()> {
    let cluster = Cluster::start(spec("orphan-check-interval-s = 1\norphan-grace-s = 3\n")).await?;
    let client = cluster.client();
    let kept = random_bytes(10 * BLOCK + 123, 1);
    write_file(&client, "/kept", &kept).await?;
    let kept_blocks = 3 * 11;
    wait_for(
        "the kept file's blocks",
        Duration::from_secs(20),
        || async {
            stored_blocks(&client, &cluster)
                .await
                .is_ok_and(|n| n == kept_blocks)
        },
    )
    .await?;

    // A writer uploads blocks through `cairn fs put` from a pipe and is
    // SIGKILLed before it could commit them (it commits at close).
    let fifo = cluster.dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
    ensure!(made.success(), "mkfifo failed");
    let mut writer = std::process::Command::new(cairn_tests::cairn_bin()?)
        .arg("--meta")
        .arg(cluster.meta_addrs().join(","))
        .args(["fs", "put"])
        .arg(&fifo)
        .arg("/doomed")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo)?;
    pipe.write_all(&random_bytes(20 * BLOCK, 2))?;
    let result = wait_for("the writer's uploads", Duration::from_secs(30), || async {
        stored_blocks(&client, &cluster)
            .await
            .is_ok_and(|n| n >= kept_blocks + 3 * 8)
    })
    .await;
    writer.kill()?;
    writer.wait()?;
    drop(pipe);
    result?;
    let attr = client
        .meta
        .lookup(cairn_proto::ids::ROOT_INO, b"doomed")
        .await?;
    ensure!(
        attr.size == 0,
        "the killed writer committed {} bytes",
        attr.size
    );

    wait_for("orphans collected", Duration::from_secs(60), || async {
        stored_blocks(&client, &cluster)
            .await
            .is_ok_and(|n| n == kept_blocks)
    })
    .await?;
    ensure!(orphans_deleted(&client, &cluster).await? >= 3 * 8);
    ensure!(
        read_file(&client, "/kept").await? == kept,
        "the kept file changed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwrites_keep_a_short_slice_list_and_free_what_they_hide() -> anyhow::Result<()> {
    let cluster = Cluster::start(spec("")).await?;
    let client = cluster.client();
    let len = 4 * BLOCK;
    let mut model = random_bytes(len, 1);
    write_file(&client, "/f", &model).await?;
    let ino = client
        .meta
        .lookup(cairn_proto::ids::ROOT_INO, b"f")
        .await?
        .ino;
    // A reader that loaded the first layout (on open) and reads after its
    // slices were freed: it reloads the layout instead of failing.
    let mut stale = client.open_file("/f").await?;
    ensure!(stale.read_at(len as u64 - 1, 1).await?[..] == model[len - 1..]);

    // Rewritten in place, whole, many times: one slice stays.
    for round in 0..40u64 {
        model = random_bytes(len, 100 + round);
        let mut w = client.writer(ino).await?;
        w.write_at(0, &model).await?;
        w.close().await?;
    }
    ensure!(slice_list(&client, ino).await?.len() == 1);
    // Small overwrites inside it: the list holds the visible pieces only.
    for round in 0..40u64 {
        let piece = random_bytes(4096, 500 + round);
        let at = (round % 4) as usize * 8192 + 4096;
        model[at..at + piece.len()].copy_from_slice(&piece);
        let mut w = client.writer(ino).await?;
        w.write_at(at as u64, &piece).await?;
        w.close().await?;
    }
    let list = slice_list(&client, ino).await?;
    ensure!(
        list.len() <= 9,
        "{} slices after 80 overwrites: {list:?}",
        list.len()
    );
    ensure!(read_file(&client, "/f").await? == model, "content differs");

    // Only the blocks of the slices the file shows stay on the data servers.
    let sizes: std::collections::BTreeMap<u64, u32> =
        list.iter().map(|s| (s.slice_id, s.size)).collect();
    let wanted_blocks: u64 = sizes
        .values()
        .map(|size| 3 * u64::from(*size).div_ceil(BLOCK as u64))
        .sum();
    wait_for("hidden slices freed", Duration::from_secs(30), || async {
        stored_blocks(&client, &cluster)
            .await
            .is_ok_and(|n| n == wanted_blocks)
    })
    .await?;
    ensure!(
        read_file(&client, "/f").await? == model,
        "content differs after GC"
    );
    ensure!(
        stale.read_at(0, len).await? == model,
        "the stale reader read old data"
    );
    stale.close().await?;
    Ok(())
}

/// The stored slice list of the file's first chunk.
async fn slice_list(client: &Client, ino: u64) -> anyhow::Result<Vec<pb::Slice>> {
    let reply = client.meta.read_chunks(ino, 0, 1).await?;
    Ok(reply
        .chunks
        .into_iter()
        .find(|c| c.chunk == 0)
        .map(|c| c.slices)
        .unwrap_or_default())
}
