//! `cairn mount` and `cairn umount`.
//!
//! A mount runs in the foreground (logs on stderr unless `--log-file`), or with
//! `-d` as a daemon: the command re-executes itself without `-d` as a child in
//! its own process group, stdin from /dev/null and stdout/stderr (and the
//! logs) into the log file, waits until the kernel lists the mount in
//! /proc/mounts (or the child exits, or a timeout passes), prints the child's
//! PID and returns. No fork inside a running tokio runtime: the daemon is a
//! fresh process. Either way the mount process ends when it is unmounted
//! (`cairn umount`, `fusermount3 -u`) or gets SIGINT/SIGTERM, after its
//! write-back backlog is uploaded (unless `--no-wait`).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use cairn_client::cache::BlockCache;
use cairn_client::Client;
use cairn_client::MetaClient;
use cairn_proto::ids::ROOT_INO;
use cairn_proto::metrics::MetricsServer;

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
    /// Run in the background: return once the mount is up, printing the
    /// daemon's PID and its log file.
    #[arg(short = 'd', long)]
    pub daemon: bool,
    /// Write logs here (appending). Default: stderr in the foreground; with
    /// `-d`, /var/log/cairn/mount-<escaped path>.log, or the same name under
    /// the cache directory, then $HOME/.cache/cairn, when that is not writable.
    #[arg(long, env = "CAIRN_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics (and /health). Off
    /// unless given; 127.0.0.1:9567 is the conventional address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// At start, how long to wait for the cluster to answer before failing
    /// (milliseconds).
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
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

/// Mounts the cluster once it answers; dropping the result unmounts it.
pub async fn mount(seeds: Vec<String>, args: &MountArgs) -> anyhow::Result<cairn_fuse::Mounted> {
    std::fs::create_dir_all(&args.path)
        .with_context(|| format!("creating {}", args.path.display()))?;
    anyhow::ensure!(
        !is_cairn_mount(&absolute(&args.path)?),
        "{} is already a Cairn mount",
        args.path.display()
    );
    let cache = match &args.cache_dir {
        Some(dir) => Some(
            BlockCache::open(&blocks_dir(dir), args.cache_size)
                .with_context(|| format!("opening the cache in {}", dir.display()))?,
        ),
        None => None,
    };
    let mut meta = MetaClient::new(seeds.clone(), Default::default());
    if args.entry_timeout_ms > 0 {
        meta = meta.with_entry_cache(Duration::from_millis(args.entry_timeout_ms));
    }
    let client = Client::with_options(meta, cache);
    // A mount of a cluster that cannot be reached would only answer EIO:
    // fail now, clearly, instead.
    let timeout = Duration::from_millis(args.connect_timeout_ms);
    match tokio::time::timeout(timeout, client.meta.getattr(ROOT_INO)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => anyhow::bail!("the cluster at {} does not serve: {e}", seeds.join(",")),
        Err(_) => anyhow::bail!(
            "the cluster at {} did not answer within {timeout:?}",
            seeds.join(",")
        ),
    }
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

/// A mount in this process, until it is unmounted or signalled.
pub async fn run(seeds: Vec<String>, args: MountArgs) -> anyhow::Result<()> {
    // Bound before mounting, so a taken port fails the mount rather than
    // leaving it unmonitored.
    let metrics = match args.metrics {
        Some(addr) => Some(MetricsServer::bind(addr).await?),
        None => None,
    };
    let signal = crate::daemons::shutdown_on_signal();
    let mounted = mount(seeds, &args).await?;
    let stop_metrics = CancellationToken::new();
    let server = match metrics {
        Some(server) => {
            let addr = server.local_addr()?;
            println!("metrics on http://{addr}/metrics");
            tracing::info!(%addr, "serving metrics");
            let registry = mounted.registry.clone();
            Some(tokio::spawn(server.serve(registry, stop_metrics.clone())))
        }
        None => None,
    };
    tracing::info!(path = %args.path.display(), pid = std::process::id(), "mounted");
    tokio::select! {
        _ = signal.cancelled() => tracing::info!("signalled: unmounting"),
        _ = mounted.unmounted() => tracing::info!(path = %args.path.display(), "unmounted"),
    }
    // Metrics stay up while the write-back backlog drains.
    let result = unmount(mounted, !args.no_wait).await;
    stop_metrics.cancel();
    if let Some(server) = server {
        server.await.context("metrics task")??;
    }
    tracing::info!("mount process exits");
    result
}

/// `path` made absolute against the current directory (not resolving links:
/// the mount point may not exist yet).
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// /proc/mounts escapes space, tab, newline and backslash as `\ooo` (octal).
fn unescape_mount_field(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Whether a /proc/mounts line's fields are a Cairn FUSE mount: source
/// `cairn`, type `fuse.cairn` (mounted through fusermount3) or plain `fuse`
/// (mounted directly by root, where the kernel drops the subtype).
fn is_cairn_entry(fields: &[&str]) -> bool {
    fields.first() == Some(&"cairn") && matches!(fields.get(2), Some(&"fuse") | Some(&"fuse.cairn"))
}

/// Whether the kernel lists a Cairn FUSE mount at `path` (absolute).
fn is_cairn_mount(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        is_cairn_entry(&fields)
            && fields
                .get(1)
                .is_some_and(|m| unescape_mount_field(m) == path)
    })
}

/// A mount point as a file name: `/` becomes `-`, letters, digits, `.` and `_`
/// stay, anything else is `%XX` (so distinct paths never share a log).
fn escape_path(path: &Path) -> String {
    let s = path.to_string_lossy();
    let trimmed = s.trim_matches('/');
    if trimmed.is_empty() {
        return "root".into();
    }
    let mut out = String::with_capacity(trimmed.len());
    for b in trimmed.bytes() {
        match b {
            b'/' => out.push('-'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Opens a log file for appending, creating its directory.
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The daemon's log file: the first of /var/log/cairn, the cache directory
/// and $HOME/.cache/cairn where `mount-<escaped path>.log` can be written.
fn default_log_file(mount_point: &Path, cache_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let name = format!("mount-{}.log", escape_path(mount_point));
    let mut dirs = vec![PathBuf::from("/var/log/cairn")];
    dirs.extend(cache_dir.map(Path::to_path_buf));
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/cairn"));
    }
    for dir in &dirs {
        let path = dir.join(&name);
        if open_log(&path).is_ok() {
            return Ok(path);
        }
    }
    anyhow::bail!(
        "no writable place for the log (tried {}); give --log-file",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The last lines of a log from byte `from` on, for an error message.
fn log_since(path: &Path, from: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let new = bytes.get(from as usize..).unwrap_or_default();
    let text = String::from_utf8_lossy(new);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The command line less `-d`/`--daemon` (a `-d` after `--` is a path).
fn without_daemon_flag(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut in_positionals = false;
    args.filter(|a| {
        if a == "--" {
            in_positionals = true;
        }
        in_positionals || (a != "-d" && a != "--daemon")
    })
    .collect()
}

/// `cairn mount -d`: starts the mount as a daemon and returns once it is up.
/// Runs before any tokio runtime exists in this process.
pub fn daemonize(args: &MountArgs) -> anyhow::Result<()> {
    let mount_point = absolute(&args.path)?;
    anyhow::ensure!(
        !is_cairn_mount(&mount_point),
        "{} is already a Cairn mount",
        mount_point.display()
    );
    let log_path = match &args.log_file {
        Some(path) => absolute(path)?,
        None => default_log_file(&mount_point, args.cache_dir.as_deref())?,
    };
    let log = open_log(&log_path).with_context(|| format!("opening {}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let child_args = without_daemon_flag(std::env::args_os().skip(1));
    let exe = std::env::current_exe().context("finding the cairn binary")?;
    let mut child = std::process::Command::new(&exe)
        .args(&child_args)
        .env("CAIRN_LOG_FILE", &log_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: the terminal's Ctrl-C no longer reaches it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = child.id();
    // Beyond the cluster check, mounting takes moments; leave room for a
    // write-back replay scan of the staging directory.
    let deadline =
        Instant::now() + Duration::from_millis(args.connect_timeout_ms) + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the mount daemon (pid {pid}) exited ({status}) before {} was mounted; \
                 its log ({}):\n{}",
                mount_point.display(),
                log_path.display(),
                log_since(&log_path, log_start)
            );
        }
        if is_cairn_mount(&mount_point) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            // It may have mounted just now: leave no dead mount behind.
            let _ = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&mount_point)
                .stderr(Stdio::null())
                .status();
            anyhow::bail!(
                "{} was not mounted in time; the daemon (pid {pid}) was killed; its log ({}):\n{}",
                mount_point.display(),
                log_path.display(),
                log_since(&log_path, log_start)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "cairn mounted at {} (daemon pid {pid}, log {})",
        mount_point.display(),
        log_path.display()
    );
    if let Some(addr) = args.metrics {
        println!("metrics on http://{addr}/metrics");
    }
    Ok(())
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
        if !is_cairn_entry(&fields) {
            continue;
        }
        let mount_point = fields.get(1).map(|m| unescape_mount_field(m));
        if let Some(rest) = mount_point.as_ref().and_then(|m| full.strip_prefix(m).ok()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names_and_mount_table_fields() {
        assert_eq!(escape_path(Path::new("/mnt/ckpt")), "mnt-ckpt");
        assert_eq!(escape_path(Path::new("/mnt/a-b c")), "mnt-a%2Db%20c");
        assert_eq!(escape_path(Path::new("/")), "root");
        assert_eq!(
            unescape_mount_field("/tmp/a\\040b\\134c"),
            PathBuf::from("/tmp/a b\\c")
        );
        assert!(is_cairn_entry(&["cairn", "/m", "fuse", "rw"]));
        assert!(is_cairn_entry(&["cairn", "/m", "fuse.cairn", "rw"]));
        assert!(!is_cairn_entry(&["sshfs", "/m", "fuse", "rw"]));
    }

    #[test]
    fn daemon_flag_is_dropped_but_not_a_path_after_double_dash() {
        let args = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            without_daemon_flag(args(&["mount", "-d", "--metrics", "x", "/m"]).into_iter()),
            args(&["mount", "--metrics", "x", "/m"])
        );
        assert_eq!(
            without_daemon_flag(args(&["mount", "--daemon", "--", "-d"]).into_iter()),
            args(&["mount", "--", "-d"])
        );
    }
}
