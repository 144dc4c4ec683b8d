//! `cairn mount` and `cairn umount`.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use cairn_client::cache::BlockCache;
use cairn_client::Client;
use cairn_client::MetaClient;

#[derive(Args, Clone)]
pub struct MountArgs {
    /// Where to mount.
    pub path: PathBuf,
    /// How long the kernel caches names (milliseconds).
    #[arg(long, default_value_t = 1000)]
    pub entry_timeout_ms: u64,
    /// How long the kernel caches attributes (milliseconds).
    #[arg(long, default_value_t = 1000)]
    pub attr_timeout_ms: u64,
    /// Let other users use the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// Local directory (ideally on NVMe) caching blocks read; none: no cache.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Bound on the cache's size.
    #[arg(long, default_value = "10G", value_parser = crate::parse_size)]
    pub cache_size: u64,
    /// Write-back: close and fsync return once data is staged (fsync'd) in
    /// the cache directory; uploads run in the background and are replayed
    /// after a crash. Losing the cache disk before upload loses that data.
    #[arg(long, requires = "cache_dir")]
    pub writeback: bool,
    /// At unmount, do not wait for staged data to be uploaded (it is uploaded
    /// by the next mount with the same cache directory).
    #[arg(long)]
    pub no_wait: bool,
}

impl MountArgs {
    pub fn options(&self) -> cairn_fuse::MountOptions {
        cairn_fuse::MountOptions {
            timeouts: cairn_fuse::Timeouts {
                entry: Duration::from_millis(self.entry_timeout_ms),
                attr: Duration::from_millis(self.attr_timeout_ms),
            },
            allow_other: self.allow_other,
            writeback_dir: match (&self.cache_dir, self.writeback) {
                (Some(dir), true) => Some(staging_dir(dir)),
                _ => None,
            },
        }
    }
}

/// Where cached blocks live in a cache directory.
fn blocks_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("blocks")
}

/// Where write-back logs live in a cache directory.
fn staging_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("staging")
}

/// Mounts the cluster; dropping the result unmounts it.
pub fn mount(seeds: Vec<String>, args: &MountArgs) -> anyhow::Result<cairn_fuse::Mounted> {
    std::fs::create_dir_all(&args.path)
        .with_context(|| format!("creating {}", args.path.display()))?;
    let cache = match &args.cache_dir {
        Some(dir) => Some(
            BlockCache::open(&blocks_dir(dir), args.cache_size)
                .with_context(|| format!("opening the cache in {}", dir.display()))?,
        ),
        None => None,
    };
    let client = Client::with_options(MetaClient::new(seeds, Default::default()), cache);
    let mounted = cairn_fuse::mount(client, &args.path, args.options())
        .with_context(|| format!("mounting {}", args.path.display()))?;
    println!("cairn mounted at {}", args.path.display());
    if let Some(staging) = &mounted.staging {
        let (logs, bytes) = staging.backlog();
        println!("write-back: {logs} staged logs ({bytes} bytes) to upload");
    }
    Ok(mounted)
}

/// Unmounts, first waiting for staged data to be uploaded unless told not to.
pub async fn unmount(mounted: cairn_fuse::Mounted, wait: bool) -> anyhow::Result<()> {
    if let (Some(staging), true) = (&mounted.staging, wait) {
        let (logs, bytes) = staging.backlog();
        if logs > 0 {
            println!("waiting for {logs} staged logs ({bytes} bytes) to upload");
        }
        staging.wait_all().await;
    }
    // Dropping the session unmounts and joins its thread.
    tokio::task::spawn_blocking(move || drop(mounted)).await?;
    Ok(())
}

pub async fn run(seeds: Vec<String>, args: MountArgs) -> anyhow::Result<()> {
    let mounted = mount(seeds, &args)?;
    crate::daemons::shutdown_on_signal().cancelled().await;
    unmount(mounted, !args.no_wait).await
}

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Blocks and bytes in a local cache.
    Stat {
        #[arg(long)]
        cache_dir: PathBuf,
    },
    /// Empties a local cache.
    Evict {
        #[arg(long)]
        cache_dir: PathBuf,
    },
}

pub fn cache(command: CacheCommand) -> anyhow::Result<()> {
    match command {
        CacheCommand::Stat { cache_dir } => {
            let stats = BlockCache::open(&blocks_dir(&cache_dir), u64::MAX)?.stats();
            println!(
                "{}: {} blocks, {} bytes",
                cache_dir.display(),
                stats.blocks,
                stats.bytes
            );
        }
        CacheCommand::Evict { cache_dir } => {
            let cache = BlockCache::open(&blocks_dir(&cache_dir), u64::MAX)?;
            let stats = cache.stats();
            cache.clear();
            println!("evicted {} blocks, {} bytes", stats.blocks, stats.bytes);
        }
    }
    Ok(())
}

pub fn umount(path: &Path) -> anyhow::Result<()> {
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(path)
        .status()
        .context("running fusermount3 (package fuse3)")?;
    anyhow::ensure!(status.success(), "fusermount3 -u {} failed", path.display());
    Ok(())
}
