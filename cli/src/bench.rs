//! `cairn bench`: the workloads of `juicefs bench` through the client library,
//! each beside the same workload on a local directory measured in the same run
//! (both durable: Cairn acknowledges replicated, fsync'd data; local files are
//! fsync'd before close).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use futures::future::try_join_all;

use cairn_client::Client;

#[derive(Args)]
pub struct BenchArgs {
    /// Size of each write/read call.
    #[arg(long, default_value = "1M", value_parser = crate::parse_size)]
    block_size: u64,
    /// Size of each big file.
    #[arg(long, default_value = "1G", value_parser = crate::parse_size)]
    big_file_size: u64,
    /// Size of each small file.
    #[arg(long, default_value = "128K", value_parser = crate::parse_size)]
    small_file_size: u64,
    /// Small files per thread.
    #[arg(long, default_value_t = 100)]
    small_file_count: u64,
    /// Concurrent workers (one big file and its small files each).
    #[arg(long, default_value_t = 1)]
    threads: u64,
    /// Directory in Cairn to run in (created, then removed).
    #[arg(long, default_value = "/.cairn-bench")]
    dir: String,
    /// Local directory for the reference figures (default: a temporary
    /// directory under the current one, i.e. the same disk as ./cairn-data).
    #[arg(long)]
    local_dir: Option<PathBuf>,
}

struct Row {
    name: &'static str,
    unit: &'static str,
    cairn: f64,
    local: f64,
}

pub async fn run(seeds: Vec<String>, args: BenchArgs) -> anyhow::Result<()> {
    let client = Client::new(seeds);
    let local_root = match &args.local_dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir_in(".")?,
    };
    let args = Arc::new(args);
    let dir = bench_dir(&client, &args.dir).await?;
    let mut rows = Vec::new();
    let t = args.threads;
    let big_total = (args.big_file_size * t) as f64 / (1 << 20) as f64;
    let small_total = (args.small_file_count * t) as f64;

    // Big files.
    let cairn_w = timed(try_join_all(
        (0..t).map(|i| big_write(&client, dir, i, &args)),
    ))
    .await?;
    let local_w =
        timed(try_join_all((0..t).map(|i| {
            local_big_write(local_root.path().into(), i, args.clone())
        })))
        .await?;
    rows.push(Row {
        name: "write big file",
        unit: "MiB/s",
        cairn: big_total / cairn_w,
        local: big_total / local_w,
    });
    drop_page_cache();
    let cairn_r = timed(try_join_all(
        (0..t).map(|i| big_read(&client, dir, i, &args)),
    ))
    .await?;
    let local_r =
        timed(try_join_all((0..t).map(|i| {
            local_big_read(local_root.path().into(), i, args.clone())
        })))
        .await?;
    rows.push(Row {
        name: "read big file",
        unit: "MiB/s",
        cairn: big_total / cairn_r,
        local: big_total / local_r,
    });

    // Small files.
    let cairn_sw = timed(try_join_all(
        (0..t).map(|i| small_write(&client, dir, i, &args)),
    ))
    .await?;
    let local_sw =
        timed(try_join_all((0..t).map(|i| {
            local_small_write(local_root.path().into(), i, args.clone())
        })))
        .await?;
    rows.push(Row {
        name: "write small file",
        unit: "files/s",
        cairn: small_total / cairn_sw,
        local: small_total / local_sw,
    });
    drop_page_cache();
    let cairn_sr = timed(try_join_all(
        (0..t).map(|i| small_read(&client, dir, i, &args)),
    ))
    .await?;
    let local_sr =
        timed(try_join_all((0..t).map(|i| {
            local_small_read(local_root.path().into(), i, args.clone())
        })))
        .await?;
    rows.push(Row {
        name: "read small file",
        unit: "files/s",
        cairn: small_total / cairn_sr,
        local: small_total / local_sr,
    });
    let cairn_st = timed(try_join_all(
        (0..t).map(|i| small_stat(&client, dir, i, &args)),
    ))
    .await?;
    let local_st =
        timed(try_join_all((0..t).map(|i| {
            local_small_stat(local_root.path().into(), i, args.clone())
        })))
        .await?;
    rows.push(Row {
        name: "stat file",
        unit: "files/s",
        cairn: small_total / cairn_st,
        local: small_total / local_st,
    });

    cleanup(&client, dir, &args).await?;
    println!(
        "threads {}, block size {}, big file {}, small file {} x {} per thread",
        args.threads,
        args.block_size,
        args.big_file_size,
        args.small_file_size,
        args.small_file_count
    );
    println!(
        "| {:<17} | {:>12} | {:>12} | {:>7} |",
        "item", "cairn", "local disk", "ratio"
    );
    println!("|{:-<19}|{:->14}|{:->14}|{:->9}|", "", "", "", "");
    for r in rows {
        println!(
            "| {:<17} | {:>12} | {:>12} | {:>6.2}x |",
            r.name,
            format!("{:.1} {}", r.cairn, r.unit),
            format!("{:.1} {}", r.local, r.unit),
            r.cairn / r.local
        );
    }
    Ok(())
}

/// The benchmark's directory (top level), made if missing.
async fn bench_dir(client: &Arc<Client>, path: &str) -> anyhow::Result<u64> {
    let name = path.trim_start_matches('/');
    let root = cairn_proto::ids::ROOT_INO;
    match client.meta.mkdir(root, name.as_bytes(), 0o755).await {
        Ok(a) => Ok(a.ino),
        Err(e) if e.errno() == cairn_proto::status::EEXIST => {
            Ok(client.meta.lookup(root, name.as_bytes()).await?.ino)
        }
        Err(e) => Err(e.into()),
    }
}

/// Seconds a future takes.
async fn timed<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<f64> {
    let start = Instant::now();
    f.await?;
    Ok(start.elapsed().as_secs_f64().max(1e-9))
}

/// Asks the kernel to drop clean page-cache pages so local reads hit the disk
/// (needs root; skipped silently otherwise).
fn drop_page_cache() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(seed) as u8)
        .collect()
}

async fn big_write(client: &Arc<Client>, dir: u64, i: u64, args: &BenchArgs) -> anyhow::Result<()> {
    let attr = client
        .meta
        .create(dir, format!("big.{i}").as_bytes(), 0o644, false)
        .await?;
    let mut w = client.writer(attr.ino).await?;
    let buf = pattern(args.block_size as usize, i);
    let mut off = 0;
    while off < args.big_file_size {
        let n = (args.big_file_size - off).min(args.block_size) as usize;
        w.write_at(off, &buf[..n]).await?;
        off += n as u64;
    }
    w.close().await?;
    Ok(())
}

async fn big_read(client: &Arc<Client>, dir: u64, i: u64, args: &BenchArgs) -> anyhow::Result<()> {
    let attr = client
        .meta
        .lookup(dir, format!("big.{i}").as_bytes())
        .await?;
    let mut r = client.reader(&attr).await?;
    let mut off = 0;
    while off < args.big_file_size {
        let data = r.read_at(off, args.block_size as usize).await?;
        anyhow::ensure!(!data.is_empty(), "big file shorter than written");
        off += data.len() as u64;
    }
    Ok(())
}

async fn small_write(
    client: &Arc<Client>,
    dir: u64,
    i: u64,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let buf = pattern(args.small_file_size as usize, i);
    for j in 0..args.small_file_count {
        let attr = client
            .meta
            .create(dir, format!("small.{i}.{j}").as_bytes(), 0o644, false)
            .await?;
        let mut w = client.writer(attr.ino).await?;
        for (k, piece) in buf.chunks(args.block_size as usize).enumerate() {
            w.write_at(k as u64 * args.block_size, piece).await?;
        }
        w.close().await?;
    }
    Ok(())
}

async fn small_read(
    client: &Arc<Client>,
    dir: u64,
    i: u64,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    for j in 0..args.small_file_count {
        let attr = client
            .meta
            .lookup(dir, format!("small.{i}.{j}").as_bytes())
            .await?;
        let mut r = client.reader(&attr).await?;
        let data = r.read_at(0, args.small_file_size as usize).await?;
        anyhow::ensure!(
            data.len() as u64 == args.small_file_size,
            "small file size mismatch"
        );
    }
    Ok(())
}

async fn small_stat(
    client: &Arc<Client>,
    dir: u64,
    i: u64,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    for j in 0..args.small_file_count {
        client
            .meta
            .lookup(dir, format!("small.{i}.{j}").as_bytes())
            .await?;
    }
    Ok(())
}

async fn cleanup(client: &Arc<Client>, dir: u64, args: &BenchArgs) -> anyhow::Result<()> {
    for e in client.meta.readdir(dir).await? {
        client.meta.unlink(dir, &e.name).await?;
    }
    let root = client.meta.resolve("/").await?;
    client
        .meta
        .rmdir(root.ino, args.dir.trim_start_matches('/').as_bytes())
        .await?;
    Ok(())
}

/// Runs blocking local file I/O off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .context("local I/O task")??)
}

async fn local_big_write(root: PathBuf, i: u64, args: Arc<BenchArgs>) -> anyhow::Result<()> {
    blocking(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(root.join(format!("big.{i}")))?;
        let buf = pattern(args.block_size as usize, i);
        let mut off = 0;
        while off < args.big_file_size {
            let n = (args.big_file_size - off).min(args.block_size) as usize;
            f.write_all(&buf[..n])?;
            off += n as u64;
        }
        f.sync_all()
    })
    .await
}

async fn local_big_read(root: PathBuf, i: u64, args: Arc<BenchArgs>) -> anyhow::Result<()> {
    blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(root.join(format!("big.{i}")))?;
        let mut buf = vec![0u8; args.block_size as usize];
        while f.read(&mut buf)? > 0 {}
        Ok(())
    })
    .await
}

async fn local_small_write(root: PathBuf, i: u64, args: Arc<BenchArgs>) -> anyhow::Result<()> {
    blocking(move || {
        let buf = pattern(args.small_file_size as usize, i);
        for j in 0..args.small_file_count {
            use std::io::Write;
            let mut f = std::fs::File::create(root.join(format!("small.{i}.{j}")))?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        Ok(())
    })
    .await
}

async fn local_small_read(root: PathBuf, i: u64, args: Arc<BenchArgs>) -> anyhow::Result<()> {
    blocking(move || {
        for j in 0..args.small_file_count {
            std::fs::read(root.join(format!("small.{i}.{j}")))?;
        }
        Ok(())
    })
    .await
}

async fn local_small_stat(root: PathBuf, i: u64, args: Arc<BenchArgs>) -> anyhow::Result<()> {
    blocking(move || {
        for j in 0..args.small_file_count {
            std::fs::metadata(root.join(format!("small.{i}.{j}")))?;
        }
        Ok(())
    })
    .await
}
