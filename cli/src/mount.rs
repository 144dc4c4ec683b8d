//! `cairn mount` and `cairn umount`.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use cairn_client::Client;

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
}

impl MountArgs {
    pub fn options(&self) -> cairn_fuse::MountOptions {
        cairn_fuse::MountOptions {
            timeouts: cairn_fuse::Timeouts {
                entry: Duration::from_millis(self.entry_timeout_ms),
                attr: Duration::from_millis(self.attr_timeout_ms),
            },
            allow_other: self.allow_other,
        }
    }
}

/// Mounts the cluster; a token cancelled by the caller unmounts it.
pub fn mount(seeds: Vec<String>, args: &MountArgs) -> anyhow::Result<fuser::BackgroundSession> {
    std::fs::create_dir_all(&args.path)
        .with_context(|| format!("creating {}", args.path.display()))?;
    let session = cairn_fuse::mount(
        Client::new(seeds),
        &args.path,
        args.options(),
        tokio::runtime::Handle::current(),
    )
    .with_context(|| format!("mounting {}", args.path.display()))?;
    println!("cairn mounted at {}", args.path.display());
    Ok(session)
}

pub async fn run(seeds: Vec<String>, args: MountArgs) -> anyhow::Result<()> {
    let session = mount(seeds, &args)?;
    crate::daemons::shutdown_on_signal().cancelled().await;
    // Dropping the session unmounts and joins its thread.
    tokio::task::spawn_blocking(move || drop(session)).await?;
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
