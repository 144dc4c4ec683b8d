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
    /// Files written only within their first this-many bytes keep their data
    /// in metadata (one round trip to open and read; at most 1M, 0: off).
    #[arg(long, default_value = "64K", value_parser = crate::parse_size)]
    pub inline_max: u64,
    /// Who checks permissions: `kernel` (mounted with default_permissions, on
    /// the kernel's cached attributes) or `cairn` (the mount checks them on
    /// metad's attributes, with the caller's supplementary groups). With
    /// `cairn`, names the kernel cached (--entry-timeout-ms) are reused
    /// without checking search permission again; 0 checks every lookup.
    #[arg(long, default_value_t = cairn_fuse::Permissions::Kernel, value_parser = parse_permissions)]
    pub permissions: cairn_fuse::Permissions,
}

fn parse_permissions(s: &str) -> Result<cairn_fuse::Permissions, String> {
    s.parse()
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
            permissions: self.permissions,
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
    anyhow::ensure!(args.inline_max <= 1 << 20, "--inline-max is at most 1M");
    client.set_inline_max(args.inline_max as usize);
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

#[derive(Args)]
pub struct WarmupArgs {
    /// Files or directories: paths in Cairn, or paths under a Cairn mount.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The local cache to fill (the mount's --cache-dir).
    #[arg(long)]
    pub cache_dir: PathBuf,
    #[arg(long, default_value = "10G", value_parser = crate::parse_size)]
    pub cache_size: u64,
    /// Blocks fetched at once.
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
}

/// A path under a Cairn FUSE mount (from /proc/mounts) as a path in Cairn.
fn cairn_path(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(2) != Some(&"fuse.cairn") {
            continue;
        }
        if let Some(rest) = fields.get(1).and_then(|m| full.strip_prefix(m).ok()) {
            return format!("/{}", rest.display());
        }
    }
    path.display().to_string()
}

/// `cairn warmup`: fetches files into a local cache, in parallel, with a
/// progress bar; blocks already cached are skipped, so it resumes.
pub async fn warmup(seeds: Vec<String>, args: WarmupArgs) -> anyhow::Result<()> {
    let cache = BlockCache::open(&blocks_dir(&args.cache_dir), args.cache_size)?;
    let client = Client::with_options(MetaClient::new(seeds, Default::default()), Some(cache));
    // Every file below the paths, with its size.
    let mut files = Vec::new();
    let mut stack = Vec::new();
    for path in &args.paths {
        stack.push(client.meta.resolve(&cairn_path(path)).await?);
    }
    while let Some(attr) = stack.pop() {
        if attr.kind == cairn_proto::pb::FileKind::Directory as i32 {
            for e in client.meta.readdir(attr.ino).await? {
                stack.push(client.meta.getattr(e.ino).await?);
            }
        } else if attr.kind == cairn_proto::pb::FileKind::Regular as i32 {
            files.push((attr.ino, attr.size));
        }
    }
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    let mut fetched = 0;
    for (ino, size) in &files {
        fetched += client.warm(*ino, args.parallel).await?;
        bar.inc(*size);
    }
    bar.finish_and_clear();
    println!(
        "{} files, {total} bytes warm ({fetched} bytes fetched)",
        files.len()
    );
    Ok(())
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
