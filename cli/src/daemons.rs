//! `cairn dev`, `cairn metad`, `cairn datad`: start the services, stop them
//! gracefully on Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct DevArgs {
    /// Where metad and datad keep their data.
    #[arg(long, default_value_os_t = crate::default_data_dir())]
    data_dir: PathBuf,
    /// Address of the metadata service.
    #[arg(long, default_value = "127.0.0.1:7000")]
    meta_listen: String,
    /// Address of the data service.
    #[arg(long, default_value = "127.0.0.1:7100")]
    data_listen: String,
    /// Also mount the cluster through FUSE here.
    #[arg(long)]
    mount: Option<PathBuf>,
    /// Address of the S3 gateway.
    #[arg(long, default_value = "127.0.0.1:9000")]
    s3_listen: std::net::SocketAddr,
    /// The dev cluster's S3 access key (with --s3-secret-key). Without them a
    /// key pair is generated on first start and kept in the data directory.
    #[arg(long, requires = "s3_secret_key")]
    s3_access_key: Option<String>,
    #[arg(long, requires = "s3_access_key")]
    s3_secret_key: Option<String>,
    /// Do not start the S3 gateway.
    #[arg(long)]
    no_s3: bool,
    /// The cold tier's directory, used unless a cold backend is set already
    /// (default: <data-dir>/cold).
    #[arg(long)]
    cold_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct MetadArgs {
    /// TOML configuration (see metad/metad.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    id: Option<u64>,
    #[arg(long)]
    listen: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct DatadArgs {
    /// TOML configuration (see datad/datad.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    id: Option<u64>,
    #[arg(long)]
    listen: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot watch SIGTERM: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    t.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    token
}

pub async fn metad(args: MetadArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => cairn_metad::Config::load(path)?,
        None => cairn_metad::Config::default(),
    };
    if let Some(id) = args.id {
        config.id = id;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.validate()?;
    let shutdown = shutdown_on_signal();
    let scheduler = tokio::spawn(crate::tier::scheduler(
        vec![config.listen.clone()],
        config.id,
        shutdown.clone(),
    ));
    let served = cairn_metad::run(config, shutdown.clone()).await;
    shutdown.cancel();
    scheduler.await?;
    served?;
    Ok(())
}

pub async fn datad(args: DatadArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => cairn_datad::Config::load(path)?,
        None => cairn_datad::Config::default(),
    };
    if let Some(id) = args.id {
        config.id = id;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.validate()?;
    cairn_datad::run(config, shutdown_on_signal()).await?;
    Ok(())
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let meta = cairn_metad::Config {
        listen: args.meta_listen.clone(),
        data_dir: args.data_dir.join("metad"),
        replication: 1,
        data_replication: 1,
        ..Default::default()
    };
    meta.validate()?;
    let data = cairn_datad::Config {
        listen: args.data_listen.clone(),
        data_dir: args.data_dir.join("datad"),
        meta: vec![args.meta_listen.clone()],
        ..Default::default()
    };
    data.validate()?;
    let shutdown = shutdown_on_signal();
    let meta_id = meta.id;
    let mut metad = tokio::spawn(cairn_metad::run(meta, shutdown.clone()));
    let mut datad = tokio::spawn(cairn_datad::run(data, shutdown.clone()));
    println!(
        "cairn dev is starting, data under {}",
        args.data_dir.display()
    );
    println!(
        "  metadata service: {}   (CAIRN_META={})",
        args.meta_listen, args.meta_listen
    );
    println!("  data service:     {}", args.data_listen);
    println!("  try: cairn status; cairn fs put ./file /file; cairn fs ls /");
    let cold_dir = args
        .cold_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("cold"));
    println!(
        "  cold tier:        {} (unless a backend is set)",
        cold_dir.display()
    );
    let seeds = vec![args.meta_listen.clone()];
    tokio::spawn(async move {
        if let Err(e) = crate::tier::default_backend(seeds, cold_dir).await {
            tracing::error!("setting the default cold backend: {e:#}");
        }
    });
    let scheduler = tokio::spawn(crate::tier::scheduler(
        vec![args.meta_listen.clone()],
        meta_id,
        shutdown.clone(),
    ));
    let s3 = if args.no_s3 {
        None
    } else {
        let given = args.s3_access_key.clone().zip(args.s3_secret_key.clone());
        let (key, new) = crate::s3::dev_key(&args.data_dir, given)?;
        println!(
            "  S3 {} key: AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={}",
            if new { "new" } else { "dev" },
            key.access_key,
            key.secret_key
        );
        println!(
            "  try: aws --endpoint-url http://{} s3 mb s3://bucket",
            args.s3_listen
        );
        let config = cairn_s3gw::Config {
            listen: args.s3_listen,
            keys: vec![key],
            access_log: Some(args.data_dir.join("s3-access.log")),
            ..Default::default()
        };
        let seeds = vec![args.meta_listen.clone()];
        Some(crate::s3::start(seeds, config, None, shutdown.clone()).await?)
    };
    let session = match &args.mount {
        Some(path) => {
            let seeds = vec![args.meta_listen.clone()];
            let client = cairn_client::Client::new(seeds.clone());
            // The mount needs a serving cluster: wait for the root directory.
            let ready = cairn_proto::retry::retry(
                cairn_proto::retry::Backoff::default(),
                |_| true,
                |_| client.meta.getattr(cairn_proto::ids::ROOT_INO),
            )
            .await;
            ready.context("waiting for the dev cluster to serve")?;
            let mount_args = crate::mount::MountArgs {
                path: path.clone(),
                entry_timeout_ms: 1000,
                attr_timeout_ms: 1000,
                allow_other: true,
                cache_dir: Some(args.data_dir.join("cache")),
                cache_size: 1 << 30,
                writeback: false,
                no_wait: false,
                inline_max: cairn_client::DEFAULT_INLINE_MAX as u64,
                permissions: cairn_fuse::Permissions::Kernel,
                daemon: false,
                log_file: None,
                metrics: None,
                connect_timeout_ms: 10_000,
            };
            Some(crate::mount::mount(seeds, &mount_args).await?)
        }
        None => None,
    };
    // When either service stops (signal or failure), stop the other too.
    let (m, d) = tokio::select! {
        m = &mut metad => {
            shutdown.cancel();
            (m, datad.await)
        }
        d = &mut datad => {
            shutdown.cancel();
            (metad.await, d)
        }
    };
    if let Some(mounted) = session {
        crate::mount::unmount(mounted, false).await?;
    }
    scheduler.await.context("tier scheduler task")?;
    if let Some(s3) = s3 {
        s3.await.context("S3 gateway task")??;
    }
    m.context("metad task")??;
    d.context("datad task")??;
    Ok(())
}
