//! `cairn tier`: the cold backend, tier policies, runs, per-path status and
//! restores, through the client library; and the scheduler `cairn metad` and
//! `cairn dev` run, which runs due policies on the node leading shard 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use clap::Subcommand;
use clap::ValueEnum;
use indicatif::ProgressBar;
use indicatif::ProgressStyle;
use tokio_util::sync::CancellationToken;

use cairn_client::tier::OnProgress;
use cairn_client::tier::Progress;
use cairn_client::tier::RunOptions;
use cairn_client::Client;
use cairn_proto::pb;
use cairn_proto::pb::update_tier_request::Update;

#[derive(Subcommand)]
pub enum TierCommand {
    /// The cold backend.
    Backend {
        #[command(subcommand)]
        command: BackendCommand,
    },
    /// Tier policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Run a policy now (resuming its unfinished run), or with --classes the
    /// directories' storage classes.
    Run {
        #[arg(required_unless_present = "classes")]
        name: Option<String>,
        /// Only count the files and bytes that would move.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, conflicts_with = "name")]
        classes: bool,
    },
    /// A directory's storage class (`cold-after=7d`), which every file below
    /// it has, new ones included.
    Class {
        #[command(subcommand)]
        command: ClassCommand,
    },
    /// Hot bytes, cold bytes and pending moves below a path; the latest runs.
    Status {
        #[arg(default_value = "/")]
        path: String,
    },
    /// Bring everything below a path back to the hot tier.
    Restore { path: String },
}

#[derive(Subcommand)]
pub enum ClassCommand {
    Set { path: String, class: String },
    Clear { path: String },
}

#[derive(Subcommand)]
pub enum BackendCommand {
    /// Set the cold backend: s3://bucket/prefix, or file:///dir.
    Set {
        url: String,
        /// S3 endpoint URL (default: AWS).
        #[arg(long, default_value = "")]
        endpoint: String,
        #[arg(long, default_value = "")]
        region: String,
        /// Virtual-hosted-style requests (bucket in the host name) instead of
        /// path-style ones.
        #[arg(long)]
        virtual_hosted: bool,
    },
    /// Show the cold backend.
    Show,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Action {
    ToCold,
    PinHot,
    Expire,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AgeBy {
    Mtime,
    Atime,
}

#[derive(Args)]
pub struct PolicyArgs {
    name: String,
    /// Glob over absolute paths (`*`, `?`, `**`).
    #[arg(long)]
    path: String,
    /// Only files at least this old (e.g. 7d, 12h, 30m, 0).
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    min_age: u64,
    #[arg(long, value_enum, default_value = "mtime")]
    by: AgeBy,
    #[arg(long, value_parser = crate::parse_size, default_value = "0")]
    min_size: u64,
    /// 0: no upper bound.
    #[arg(long, value_parser = crate::parse_size, default_value = "0")]
    max_size: u64,
    #[arg(long, value_enum)]
    action: Action,
    /// The scheduler runs the policy this often (e.g. 1h); 0: only on demand.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    every: u64,
    /// Bytes per second one run may move (e.g. 100M); 0: unbounded.
    #[arg(long, value_parser = crate::parse_size, default_value = "0")]
    bandwidth: u64,
    /// Files one run works on at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Add a policy (or replace the one of that name).
    Add(PolicyArgs),
    /// List the policies.
    List,
    /// Remove a policy.
    Remove { name: String },
}

use cairn_proto::tier::parse_duration;

fn duration(secs: u64) -> String {
    match secs {
        0 => "0".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn action_name(a: pb::TierAction) -> &'static str {
    match a {
        pb::TierAction::ToCold => "to-cold",
        pb::TierAction::PinHot => "pin-hot",
        pb::TierAction::Expire => "expire",
        pb::TierAction::Unspecified => "?",
    }
}

fn bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn show(bar: &ProgressBar, verb: &str) -> OnProgress {
    let bar = bar.clone();
    let verb = verb.to_string();
    Arc::new(move |p: &Progress| {
        bar.set_message(format!(
            "{verb} {} files, {} bytes; at {}",
            p.files, p.bytes, p.cursor
        ))
    })
}

pub async fn run(seeds: Vec<String>, command: TierCommand) -> anyhow::Result<()> {
    let client = Client::new(seeds);
    match command {
        TierCommand::Backend { command } => match command {
            BackendCommand::Set {
                url,
                endpoint,
                region,
                virtual_hosted,
            } => {
                let backend = pb::ColdBackend {
                    url,
                    endpoint,
                    region,
                    path_style: !virtual_hosted,
                };
                client
                    .meta
                    .update_tier(Update::SetBackend(backend.clone()))
                    .await?;
                println!("cold backend: {}", backend.url);
            }
            BackendCommand::Show => match client.meta.get_tier().await?.backend {
                Some(b) => println!(
                    "{} endpoint {:?} region {:?} {}",
                    b.url,
                    b.endpoint,
                    b.region,
                    if b.path_style {
                        "path-style"
                    } else {
                        "virtual-hosted"
                    }
                ),
                None => println!("no cold backend"),
            },
        },
        TierCommand::Policy { command } => match command {
            PolicyCommand::Add(a) => {
                let policy = pb::TierPolicy {
                    name: a.name,
                    path: a.path,
                    min_age_secs: a.min_age,
                    by: match a.by {
                        AgeBy::Mtime => pb::TierAgeBy::Mtime,
                        AgeBy::Atime => pb::TierAgeBy::Atime,
                    } as i32,
                    min_size: a.min_size,
                    max_size: a.max_size,
                    action: match a.action {
                        Action::ToCold => pb::TierAction::ToCold,
                        Action::PinHot => pb::TierAction::PinHot,
                        Action::Expire => pb::TierAction::Expire,
                    } as i32,
                    every_secs: a.every,
                    bandwidth: a.bandwidth,
                    concurrency: a.concurrency.max(1),
                };
                client.meta.update_tier(Update::PutPolicy(policy)).await?;
            }
            PolicyCommand::List => {
                for p in client.meta.get_tier().await?.policies {
                    println!(
                        "{:<16} {:<8} {:<32} min-age {} by {} size {}..{} every {}",
                        p.name,
                        action_name(p.action()),
                        p.path,
                        duration(p.min_age_secs),
                        if p.by() == pb::TierAgeBy::Atime {
                            "atime"
                        } else {
                            "mtime"
                        },
                        p.min_size,
                        if p.max_size == 0 {
                            "".to_string()
                        } else {
                            p.max_size.to_string()
                        },
                        duration(p.every_secs),
                    );
                }
            }
            PolicyCommand::Remove { name } => {
                client.meta.update_tier(Update::DeletePolicy(name)).await?;
            }
        },
        TierCommand::Class { command } => match command {
            ClassCommand::Set { path, class } => {
                cairn_proto::tier::parse_class(&class).map_err(anyhow::Error::msg)?;
                let dir = client.meta.resolve(&path).await?;
                let name = cairn_proto::tier::CLASS_XATTR.as_bytes();
                client
                    .meta
                    .setxattr(dir.ino, name, class.as_bytes(), 0)
                    .await?;
            }
            ClassCommand::Clear { path } => {
                let dir = client.meta.resolve(&path).await?;
                let name = cairn_proto::tier::CLASS_XATTR.as_bytes();
                client.meta.removexattr(dir.ino, name).await?;
            }
        },
        TierCommand::Run {
            name,
            dry_run,
            classes,
        } => {
            let bar = bar(if dry_run { "counting" } else { "running" });
            let options = RunOptions {
                dry_run,
                on_progress: Some(show(&bar, if dry_run { "would act on" } else { "done" })),
            };
            let (result, name) = match name {
                Some(name) if !classes => (client.run_policy(&name, options).await, name),
                _ => (client.run_classes(options).await, "classes".to_string()),
            };
            bar.finish_and_clear();
            let p = result?;
            if dry_run {
                println!("{name}: would act on {} files, {} bytes", p.files, p.bytes);
            } else {
                println!("{name}: done, {} files, {} bytes", p.files, p.bytes);
            }
        }
        TierCommand::Status { path } => {
            let usage = client.tier_usage(&path).await?;
            println!("{path}: {} files", usage.files);
            println!("  hot bytes:     {}", usage.hot_bytes);
            println!("  cold bytes:    {}", usage.cold_bytes);
            println!("  inline bytes:  {}", usage.inline_bytes);
            println!(
                "  pending moves: {} files, {} bytes",
                usage.pending_files, usage.pending_bytes
            );
            for r in client.meta.get_tier().await?.runs {
                println!(
                    "  run {}: {}, {} files, {} bytes, {} failures{}",
                    r.policy,
                    if r.finished_ms > 0 {
                        "finished"
                    } else {
                        "unfinished"
                    },
                    r.files,
                    r.bytes,
                    r.failures,
                    if r.last_error.is_empty() {
                        String::new()
                    } else {
                        format!(", last error: {}", r.last_error)
                    }
                );
            }
        }
        TierCommand::Restore { path } => {
            let bar = bar("restoring");
            let on_progress = show(&bar, "restored");
            let result = client.restore(&path, on_progress.as_ref()).await;
            bar.finish_and_clear();
            let p = result?;
            println!(
                "{path}: {} files, {} bytes back in the hot tier",
                p.files, p.bytes
            );
        }
    }
    Ok(())
}

/// How often the scheduler looks for due policies.
const SCHEDULER_TICK: Duration = Duration::from_secs(1);
/// How often it applies the directories' storage classes (a walk of the
/// whole namespace).
const CLASSES_EVERY: Duration = Duration::from_secs(3600);

/// Runs due policies, and hourly the storage classes, while this metad
/// (`node_id`) leads shard 0, until `stop`.
/// A policy is due `every` after its last run finished; an unfinished run is
/// resumed after `every` or a minute, whichever is shorter.
pub async fn scheduler(seeds: Vec<String>, node_id: u64, stop: CancellationToken) {
    let client = Client::new(seeds);
    let mut classes_run: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SCHEDULER_TICK) => {}
        }
        let leads = match client.meta.refresh_map().await {
            Ok(map) => map
                .shards
                .iter()
                .any(|s| s.id == cairn_proto::ids::MAP_SHARD && s.leader == node_id),
            Err(_) => false,
        };
        if !leads {
            continue;
        }
        let Ok(config) = client.meta.get_tier().await else {
            continue;
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        if classes_run.is_none_or(|at| at.elapsed() >= CLASSES_EVERY) {
            let options = RunOptions {
                dry_run: false,
                on_progress: None,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                r = client.run_classes(options) => match r {
                    Ok(p) => tracing::info!(files = p.files, bytes = p.bytes, "storage classes applied"),
                    Err(e) => tracing::warn!(error = %e, "applying storage classes stopped"),
                },
            }
            classes_run = Some(std::time::Instant::now());
        }
        for policy in config.policies.iter().filter(|p| p.every_secs > 0) {
            let every_ms = (policy.every_secs * 1000) as i64;
            let due = match config.runs.iter().find(|r| r.policy == policy.name) {
                None => true,
                Some(r) if r.finished_ms > 0 => now_ms >= r.finished_ms + every_ms,
                Some(r) => now_ms >= r.updated_ms + every_ms.min(60_000),
            };
            if !due {
                continue;
            }
            let options = RunOptions {
                dry_run: false,
                on_progress: None,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                r = client.run_policy(&policy.name, options) => match r {
                    Ok(p) => tracing::info!(policy = %policy.name, files = p.files, bytes = p.bytes, "tier run finished"),
                    Err(e) => tracing::warn!(policy = %policy.name, error = %e, "tier run stopped"),
                },
            }
        }
    }
}

/// `cairn dev`'s default: a local cold directory, set once the cluster serves
/// unless a backend is set already.
pub async fn default_backend(seeds: Vec<String>, dir: std::path::PathBuf) -> anyhow::Result<()> {
    let dir = std::path::absolute(&dir)?;
    std::fs::create_dir_all(&dir)?;
    let client = Client::new(seeds);
    let config = cairn_proto::retry::retry(
        cairn_proto::retry::Backoff::default(),
        |_| true,
        |_| client.meta.get_tier(),
    )
    .await?;
    if config.backend.is_some() {
        return Ok(());
    }
    let Some(url) = dir.to_str().map(|d| format!("file://{d}")) else {
        bail!("{} is not a UTF-8 path", dir.display());
    };
    client
        .meta
        .update_tier(Update::SetBackend(pb::ColdBackend {
            url,
            ..Default::default()
        }))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(7 * 86_400), "7d");
        assert_eq!(duration(90), "90s");
    }
}
