//! `cairn s3`: the S3 gateway as a process (also started by `cairn dev`).

use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use cairn_proto::metrics::MetricsServer;
use cairn_s3gw::config::AccessKey;
use cairn_s3gw::Config;
use cairn_s3gw::Gateway;
use cairn_s3gw::Store;

#[derive(Args)]
pub struct S3Args {
    /// TOML configuration (keys, public buckets, limits; see s3gw/src/config.rs).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve S3 on (overrides the configuration's `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// An access key (with --secret-key) added to the configured ones.
    #[arg(long, env = "CAIRN_S3_ACCESS_KEY", requires = "secret_key")]
    access_key: Option<String>,
    #[arg(
        long,
        env = "CAIRN_S3_SECRET_KEY",
        requires = "access_key",
        hide_env_values = true
    )]
    secret_key: Option<String>,
    /// Append one JSON line per request to this file.
    #[arg(long)]
    access_log: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics (and /health).
    #[arg(long)]
    metrics: Option<SocketAddr>,
}

pub async fn run(seeds: Vec<String>, args: S3Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let (Some(access_key), Some(secret_key)) = (args.access_key, args.secret_key) {
        config.keys.push(AccessKey {
            access_key,
            secret_key,
        });
    }
    if args.access_log.is_some() {
        config.access_log = args.access_log;
    }
    let shutdown = crate::daemons::shutdown_on_signal();
    start(seeds, config, args.metrics, shutdown).await?.await?
}

/// Binds the gateway (and its metrics endpoint), so that a taken port fails
/// here, and serves it in a task until `shutdown`.
pub async fn start(
    seeds: Vec<String>,
    config: Config,
    metrics: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let store = Store {
        client: cairn_client::Client::new(seeds),
        max_object_bytes: config.max_object_bytes,
        owner: config.owner.to_dto(),
    };
    let mut registry = Registry::with_prefix("cairn");
    let gateway = Gateway::bind(&config, store, &mut registry).await?;
    let addr = gateway.local_addr()?;
    println!("S3 gateway on http://{addr}");
    tracing::info!(%addr, "serving S3");
    let metrics = match metrics {
        Some(addr) => {
            let server = MetricsServer::bind(addr).await?;
            println!("S3 metrics on http://{}/metrics", server.local_addr()?);
            Some(server)
        }
        None => None,
    };
    Ok(tokio::spawn(async move {
        let metrics_task =
            metrics.map(|server| tokio::spawn(server.serve(Arc::new(registry), shutdown.clone())));
        let served = gateway.serve(shutdown.clone()).await;
        shutdown.cancel();
        if let Some(task) = metrics_task {
            task.await.context("metrics task")??;
        }
        served
    }))
}

/// The dev cluster's S3 key: the one given, else the one kept in the data
/// directory, else a new one (kept there, readable by the owner only).
pub fn dev_key(
    data_dir: &Path,
    given: Option<(String, String)>,
) -> anyhow::Result<(AccessKey, bool)> {
    if let Some((access_key, secret_key)) = given {
        return Ok((
            AccessKey {
                access_key,
                secret_key,
            },
            false,
        ));
    }
    let path = data_dir.join("s3-key.toml");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let key: AccessKey =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        return Ok((key, false));
    }
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let pick = |n: usize, alphabet: &[u8]| -> String {
        (0..n)
            .map(|_| alphabet[rand::random::<usize>() % alphabet.len()] as char)
            .collect()
    };
    let key = AccessKey {
        access_key: format!("CAIRN{}", pick(15, ALPHABET)),
        secret_key: pick(
            40,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        ),
    };
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(toml::to_string(&key)?.as_bytes())?;
    Ok((key, true))
}
