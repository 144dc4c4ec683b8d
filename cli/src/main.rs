//! The `cairn` binary: argument parsing only; every command calls into the crates.

mod bench;
mod bench_s3;
mod bench_tier;
mod daemons;
mod fs;
mod fsck;
mod mount;
mod node;
mod s3;
mod status;
mod tier;

use std::path::PathBuf;

use clap::Parser;
use clap::Subcommand;

/// Cairn: a distributed parallel file and object store.
#[derive(Parser)]
#[command(name = "cairn", version)]
struct Cli {
    /// Metadata servers to contact (comma-separated host:port).
    #[arg(
        long,
        env = "CAIRN_META",
        default_value = "127.0.0.1:7000",
        global = true
    )]
    meta: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One process running metad and datad with embedded defaults.
    Dev(daemons::DevArgs),
    /// Run a metadata server.
    Metad(daemons::MetadArgs),
    /// Run a data server.
    Datad(daemons::DatadArgs),
    /// File-system commands through the client library.
    Fs {
        #[command(subcommand)]
        command: fs::FsCommand,
    },
    /// Mount the cluster through FUSE (in the foreground, Ctrl-C unmounts; or
    /// with -d in the background).
    /// A flag given twice takes its last value.
    #[command(args_override_self = true)]
    Mount(mount::MountArgs),
    /// Serve the S3 API over the cluster's namespace.
    S3(s3::S3Args),
    /// Unmount a FUSE mount.
    Umount { path: std::path::PathBuf },
    /// Prefetch files or directories into a local block cache.
    Warmup(mount::WarmupArgs),
    /// Inspect or empty a local block cache.
    Cache {
        #[command(subcommand)]
        command: mount::CacheCommand,
    },
    /// Nodes, shards and leaders, placement groups, capacity; exits 0 only when
    /// the cluster serves requests.
    Status,
    /// Data servers: list them, drain one (its chains move elsewhere with no
    /// loss of redundancy), remove a drained one, or make one active again.
    Node {
        #[command(subcommand)]
        command: node::NodeCommand,
    },
    /// Check every block the namespace needs against the data servers' copies
    /// (missing, damaged, under-replicated, orphaned); --repair fixes what can be.
    Fsck(fsck::FsckArgs),
    /// Hot/cold tiering: the cold backend, policies, runs, status, restores.
    Tier {
        #[command(subcommand)]
        command: tier::TierCommand,
    },
    /// Big-file and small-file throughput through the client library.
    Bench(bench::BenchArgs),
    /// S3 gateway throughput and ops/s beside the client library's.
    BenchS3(bench_s3::S3BenchArgs),
    /// Move-to-cold and read-from-cold MB/s beside the cold backend's raw rates.
    BenchTier(bench_tier::TierBenchArgs),
}

fn main() -> std::process::ExitCode {
    // The error and its causes on one line each, never a backtrace: the
    // message is for the user (and, for a daemon, the last lines of its log).
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Mount(args) = &cli.command {
        if args.daemon {
            // Before any runtime exists: the daemon is a fresh process.
            return mount::daemonize(args);
        }
    }
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            "warn,cairn=info,cairn_metad=info,cairn_datad=info,cairn_fuse=info,cairn_s3gw=info"
                .into()
        })
    };
    let log_file = match &cli.command {
        Command::Mount(mount::MountArgs {
            log_file: Some(path),
            ..
        }) => Some(path),
        _ => None,
    };
    match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("opening the log file {}: {e}", path.display()))?;
            tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let seeds: Vec<String> = cli
        .meta
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => daemons::dev(args).await,
            Command::Metad(args) => daemons::metad(args).await,
            Command::Datad(args) => daemons::datad(args).await,
            Command::Fs { command } => fs::run(seeds, command).await,
            Command::Mount(args) => mount::run(seeds, args).await,
            Command::S3(args) => s3::run(seeds, args).await,
            Command::Umount { path } => mount::umount(&path),
            Command::Cache { command } => mount::cache(command),
            Command::Warmup(args) => mount::warmup(seeds, args).await,
            Command::Status => status::run(seeds).await,
            Command::Node { command } => node::run(seeds, command).await,
            Command::Fsck(args) => fsck::run(seeds, args).await,
            Command::Tier { command } => tier::run(seeds, command).await,
            Command::Bench(args) => bench::run(seeds, args).await,
            Command::BenchS3(args) => bench_s3::run(seeds, args).await,
            Command::BenchTier(args) => bench_tier::run(seeds, args).await,
        }
    })
}

/// Parses sizes like `4K`, `1M`, `1G`, `128k` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let mult = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("unknown size unit in {s}")),
            };
            (&s[..i], mult)
        }
        None => (s, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("not a size: {s}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s}"))
}

/// The data directory of `cairn dev` unless told otherwise.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("./cairn-data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("128k"), Ok(128 << 10));
        assert_eq!(parse_size("17"), Ok(17));
        assert!(parse_size("3Q").is_err());
    }
}
