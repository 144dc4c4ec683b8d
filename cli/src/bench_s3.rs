//! `cairn bench-s3`: the S3 gateway's PUT/GET throughput for large objects
//! and ops/s for small ones, at each concurrency asked for, beside the same
//! workload through the client library in the same run (the gateway's
//! reference: what it adds on top of the cluster).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use aws_sdk_s3::config::BehaviorVersion;
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use clap::Args;
use futures::stream::StreamExt;
use futures::stream::TryStreamExt;

use cairn_client::Client;

#[derive(Args)]
pub struct S3BenchArgs {
    /// The gateway, e.g. http://127.0.0.1:9000.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    endpoint: String,
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key: String,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_key: String,
    /// Size of each large object.
    #[arg(long, default_value = "64M", value_parser = crate::parse_size)]
    large_size: u64,
    /// Size of each small object.
    #[arg(long, default_value = "4K", value_parser = crate::parse_size)]
    small_size: u64,
    /// Large objects per run (at least one per worker).
    #[arg(long, default_value_t = 8)]
    large_count: usize,
    /// Small objects per run.
    #[arg(long, default_value_t = 1000)]
    small_count: usize,
    /// Concurrencies to measure, comma separated.
    #[arg(long, default_value = "1,16", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Bucket to run in (created, emptied and removed).
    #[arg(long, default_value = "cairn-bench-s3")]
    bucket: String,
}

pub async fn run(seeds: Vec<String>, args: S3BenchArgs) -> anyhow::Result<()> {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&args.endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            &args.access_key,
            &args.secret_key,
            None,
            None,
            "bench",
        ))
        .force_path_style(true)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    let s3 = aws_sdk_s3::Client::from_conf(conf);
    let client = Client::new(seeds);
    s3.create_bucket()
        .bucket(&args.bucket)
        .send()
        .await
        .with_context(|| format!("creating bucket {} at {}", args.bucket, args.endpoint))?;
    let large = Bytes::from(vec![0x5au8; args.large_size as usize]);
    let small = Bytes::from(vec![0xa5u8; args.small_size as usize]);
    println!(
        "{:<34} {:>12} {:>14} {:>8}",
        "workload", "S3 gateway", "client library", "ratio"
    );
    for &c in &args.concurrency {
        let c = c.max(1);
        let n_large = args.large_count.max(c);
        let mb = (n_large as u64 * args.large_size) as f64 / (1 << 20) as f64;
        let (large_keys, small_keys) = (keys("large", n_large), keys("small", args.small_count));

        let s3_put = timed(s3_puts(&s3, &args.bucket, &large_keys, &large, c)).await?;
        let lib_put = timed(lib_puts(&client, &args.bucket, &large_keys, &large, c)).await?;
        row(
            &format!("PUT {} objects, c={c}", human(args.large_size)),
            mb / s3_put,
            mb / lib_put,
            "MiB/s",
        );
        let s3_get = timed(s3_gets(&s3, &args.bucket, &large_keys, c)).await?;
        let lib_get = timed(lib_gets(&client, &args.bucket, &large_keys, c)).await?;
        row(
            &format!("GET {} objects, c={c}", human(args.large_size)),
            mb / s3_get,
            mb / lib_get,
            "MiB/s",
        );

        let ops = args.small_count as f64;
        let s3_put = timed(s3_puts(&s3, &args.bucket, &small_keys, &small, c)).await?;
        let lib_put = timed(lib_puts(&client, &args.bucket, &small_keys, &small, c)).await?;
        row(
            &format!("PUT {} objects, c={c}", human(args.small_size)),
            ops / s3_put,
            ops / lib_put,
            "ops/s",
        );
        let s3_get = timed(s3_gets(&s3, &args.bucket, &small_keys, c)).await?;
        let lib_get = timed(lib_gets(&client, &args.bucket, &small_keys, c)).await?;
        row(
            &format!("GET {} objects, c={c}", human(args.small_size)),
            ops / s3_get,
            ops / lib_get,
            "ops/s",
        );
        cleanup(&s3, &client, &args.bucket).await?;
    }
    s3.delete_bucket().bucket(&args.bucket).send().await?;
    Ok(())
}

fn keys(kind: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{kind}/obj-{i:06}")).collect()
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn row(name: &str, s3: f64, lib: f64, unit: &str) {
    println!(
        "{name:<34} {s3:>12.1} {lib:>14.1} {:>7.2}x   {unit}",
        s3 / lib
    );
}

async fn timed<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<f64> {
    let start = Instant::now();
    f.await?;
    Ok(start.elapsed().as_secs_f64())
}

async fn s3_puts(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    keys: &[String],
    body: &Bytes,
    c: usize,
) -> anyhow::Result<()> {
    futures::stream::iter(keys)
        .map(|k| async move {
            s3.put_object()
                .bucket(bucket)
                .key(k)
                .body(ByteStream::from(body.clone()))
                .send()
                .await
                .with_context(|| format!("PUT {k}"))
                .map(|_| ())
        })
        .buffer_unordered(c)
        .try_collect()
        .await
}

async fn s3_gets(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    keys: &[String],
    c: usize,
) -> anyhow::Result<()> {
    futures::stream::iter(keys)
        .map(|k| async move {
            let out = s3
                .get_object()
                .bucket(bucket)
                .key(k)
                .send()
                .await
                .with_context(|| format!("GET {k}"))?;
            out.body.collect().await?;
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(c)
        .try_collect()
        .await
}

/// The client library's reference writes go to `/<bucket>-ref/...`.
fn ref_path(bucket: &str, key: &str) -> String {
    format!("/{bucket}-ref/{}", key.replace('/', "-"))
}

async fn lib_puts(
    client: &Arc<Client>,
    bucket: &str,
    keys: &[String],
    body: &Bytes,
    c: usize,
) -> anyhow::Result<()> {
    let root = client.meta.resolve("/").await?;
    match client
        .meta
        .mkdir(root.ino, format!("{bucket}-ref").as_bytes(), 0o755)
        .await
    {
        Ok(_) => {}
        Err(e) if e.errno() == cairn_proto::status::EEXIST => {}
        Err(e) => return Err(e.into()),
    }
    futures::stream::iter(keys)
        .map(|k| async move {
            let mut w = client.create_file(&ref_path(bucket, k), 0o644).await?;
            for (i, piece) in body.chunks(8 << 20).enumerate() {
                w.write_at((i * (8 << 20)) as u64, piece).await?;
            }
            w.close().await?;
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(c)
        .try_collect()
        .await
}

async fn lib_gets(
    client: &Arc<Client>,
    bucket: &str,
    keys: &[String],
    c: usize,
) -> anyhow::Result<()> {
    futures::stream::iter(keys)
        .map(|k| async move {
            let attr = client.meta.resolve(&ref_path(bucket, k)).await?;
            let (attr, mut r) = client.open_reader(attr.ino).await?;
            let mut at = 0;
            while at < attr.size {
                at += r.read_at(at, 4 << 20).await?.len() as u64;
            }
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(c)
        .try_collect()
        .await
}

async fn cleanup(
    s3: &aws_sdk_s3::Client,
    client: &Arc<Client>,
    bucket: &str,
) -> anyhow::Result<()> {
    loop {
        let out = s3.list_objects_v2().bucket(bucket).send().await?;
        let keys: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        if keys.is_empty() {
            break;
        }
        futures::stream::iter(keys)
            .map(|k| async move {
                s3.delete_object()
                    .bucket(bucket)
                    .key(k)
                    .send()
                    .await
                    .map(|_| ())
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
    }
    let dir = format!("{bucket}-ref");
    let root = client.meta.resolve("/").await?;
    if let Ok(d) = client.meta.lookup(root.ino, dir.as_bytes()).await {
        for e in client.meta.readdir(d.ino).await? {
            client.meta.unlink(d.ino, &e.name).await?;
        }
        client.meta.rmdir(root.ino, dir.as_bytes()).await?;
    }
    Ok(())
}
