//! `cairn bench-tier`: the rate at which a tier run moves data to the cold
//! tier and the rate of reads served from it (MB/s), beside the cold
//! backend's own raw PUT and GET rate for the same blocks measured in the same
//! run (the reference: what Cairn adds on top of the object store).

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use futures::stream::StreamExt;
use futures::stream::TryStreamExt;
use tokio_util::sync::CancellationToken;

use cairn_client::tier::RunOptions;
use cairn_client::Client;
use cairn_datad::cold::ColdStore;
use cairn_datad::BlockId;
use cairn_proto::pb;
use cairn_proto::pb::update_tier_request::Update;

#[derive(Args)]
pub struct TierBenchArgs {
    /// Files written and moved.
    #[arg(long, default_value_t = 16)]
    files: usize,
    /// Size of each file.
    #[arg(long, default_value = "16M", value_parser = crate::parse_size)]
    file_size: u64,
    /// Files a run moves at once (the policy's concurrency); the raw
    /// reference uses as many blocks in flight as the run can.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
}

const DIR: &str = "/cairn-bench-tier";
const POLICY: &str = "cairn-bench-tier";

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
}

pub async fn run(seeds: Vec<String>, args: TierBenchArgs) -> anyhow::Result<()> {
    let client = Client::new(seeds);
    let config = client.meta.get_tier().await?;
    let backend = config
        .backend
        .clone()
        .context("no cold backend: set one with `cairn tier backend set`")?;
    let bs = u64::from(client.meta.map().await?.block_size);
    let total = args.files as u64 * args.file_size;

    // The cluster: write, move with a run, read back through datad.
    if client.meta.resolve(DIR).await.is_err() {
        let root = client.meta.resolve("/").await?;
        client
            .meta
            .mkdir(root.ino, &DIR.as_bytes()[1..], 0o755)
            .await?;
    }
    let data = Bytes::from(
        (0..args.file_size)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    for i in 0..args.files {
        let mut w = client.create_file(&format!("{DIR}/f{i}"), 0o644).await?;
        w.write_at(0, &data).await?;
        w.close().await?;
    }
    client
        .meta
        .update_tier(Update::PutPolicy(pb::TierPolicy {
            name: POLICY.into(),
            path: format!("{DIR}/**"),
            action: pb::TierAction::ToCold as i32,
            concurrency: args.concurrency.max(1),
            ..Default::default()
        }))
        .await?;
    let start = Instant::now();
    let moved = client
        .run_policy(
            POLICY,
            RunOptions {
                dry_run: false,
                on_progress: None,
            },
        )
        .await?;
    let move_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let read: u64 = futures::stream::iter(0..args.files)
        .map(|i| {
            let client = client.clone();
            async move {
                let mut r = client.open_file(&format!("{DIR}/f{i}")).await?;
                let mut n = 0u64;
                loop {
                    let got = r.read_at(n, 8 << 20).await?;
                    if got.is_empty() {
                        break;
                    }
                    n += got.len() as u64;
                }
                r.close().await?;
                Ok::<u64, anyhow::Error>(n)
            }
        })
        .buffer_unordered(args.concurrency.max(1) as usize)
        .try_fold(0, |a, n| async move { Ok(a + n) })
        .await?;
    let read_secs = start.elapsed().as_secs_f64();

    // The reference: the same number of blocks of the same size, put and got
    // straight through the backend, as many in flight as the run has.
    let cold = ColdStore::open(&backend, &cairn_datad::config::ColdConfig::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cancel = CancellationToken::new();
    let blocks = total.div_ceil(bs);
    let block = data.slice(..bs.min(args.file_size) as usize);
    let in_flight = (args.concurrency.max(1) * 4) as usize;
    let id = |i: u64| BlockId {
        slice_id: u64::MAX - 1,
        index: i as u32,
    };
    let start = Instant::now();
    futures::stream::iter(0..blocks)
        .map(|i| cold.put(id(i), block.clone(), &cancel))
        .buffer_unordered(in_flight)
        .try_collect::<Vec<()>>()
        .await?;
    let put_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    futures::stream::iter(0..blocks)
        .map(|i| cold.get(id(i), &cancel))
        .buffer_unordered(in_flight)
        .try_collect::<Vec<Bytes>>()
        .await?;
    let get_secs = start.elapsed().as_secs_f64();
    let raw_bytes = blocks * block.len() as u64;
    for i in 0..blocks {
        cold.delete(id(i), &cancel).await?;
    }

    // Clean up: the files (GC removes their cold objects) and the policy.
    let dir = client.meta.resolve(DIR).await?;
    for i in 0..args.files {
        client
            .meta
            .unlink(dir.ino, format!("f{i}").as_bytes())
            .await?;
    }
    client
        .meta
        .update_tier(Update::DeletePolicy(POLICY.into()))
        .await?;

    println!(
        "backend {}: {} files of {} bytes, block size {bs}, concurrency {}",
        backend.url, args.files, args.file_size, args.concurrency
    );
    println!(
        "{:<28} {:>10} {:>14} {:>8}",
        "", "Cairn", "raw backend", "ratio"
    );
    let (tier_move, raw_put) = (mb_s(moved.bytes, move_secs), mb_s(raw_bytes, put_secs));
    let (tier_read, raw_get) = (mb_s(read, read_secs), mb_s(raw_bytes, get_secs));
    println!(
        "{:<28} {:>10.1} {:>14.1} {:>7.2}x",
        "move to cold (MB/s) vs PUT",
        tier_move,
        raw_put,
        tier_move / raw_put
    );
    println!(
        "{:<28} {:>10.1} {:>14.1} {:>7.2}x",
        "read from cold (MB/s) vs GET",
        tier_read,
        raw_get,
        tier_read / raw_get
    );
    Ok(())
}
