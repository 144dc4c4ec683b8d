//! cairn-fuse: mounts a Cairn cluster through FUSE (`fuser`), mapping POSIX
//! operations onto the client library (`fs`). Permissions are checked by the
//! kernel (`default_permissions`) or, with [`Permissions::Cairn`], by Cairn
//! itself (`access`); ownership of new inodes is the caller's.
//! With write-back (`writeback`), close and fsync return once data is staged
//! on the local disk, and uploads run in the background. File locks
//! (`locks`) are held in metad, so they hold across mounts. What the mount
//! does is counted (`metrics`) in a registry the CLI serves on `/metrics`.

pub mod access;
pub mod fs;
pub mod locks;
pub mod metrics;
pub mod writeback;

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;

use cairn_client::Client;

pub use access::Permissions;
pub use fs::CairnFs;
pub use fs::Timeouts;
pub use metrics::FuseMetrics;
pub use writeback::Staging;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub timeouts: Timeouts,
    /// Let other users than the mounting one use the mount.
    pub allow_other: bool,
    /// Write-back staging directory (on a local disk); None: write-through.
    pub writeback_dir: Option<PathBuf>,
    /// Who checks permissions: the kernel (`default_permissions`) or Cairn.
    pub permissions: Permissions,
}

/// A mounted cluster: dropping it unmounts.
pub struct Mounted {
    pub session: fuser::BackgroundSession,
    /// The write-back staging area, when there is one.
    pub staging: Option<Arc<Staging>>,
    /// The mount's FUSE request counters.
    pub metrics: Arc<FuseMetrics>,
    /// Every counter of the mount (FUSE, local cache, write-back), to serve.
    pub registry: Arc<Registry>,
}

impl Mounted {
    /// Whether the kernel session ended (someone ran `umount`/`fusermount -u`).
    pub fn is_unmounted(&self) -> bool {
        self.session.guard.is_finished()
    }

    /// Waits until the mount is unmounted from outside. fuser gives no future
    /// for the end of its session thread, so this checks it every 100 ms.
    pub async fn unmounted(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !self.is_unmounted() {
            tick.tick().await;
        }
    }
}

/// Mounts the cluster at `mountpoint`; requests are served on the current
/// runtime until the returned session is dropped (which unmounts) or the mount
/// is unmounted. With write-back, logs left by an earlier run are replayed first.
pub fn mount(client: Arc<Client>, mountpoint: &Path, options: MountOptions) -> io::Result<Mounted> {
    let rt = tokio::runtime::Handle::current();
    let staging = match &options.writeback_dir {
        Some(dir) => Some(Staging::start(dir, client.clone())?),
        None => None,
    };
    let mut opts = vec![
        fuser::MountOption::FSName("cairn".into()),
        fuser::MountOption::Subtype("cairn".into()),
        fuser::MountOption::RW,
    ];
    if options.permissions == Permissions::Kernel {
        opts.push(fuser::MountOption::DefaultPermissions);
    }
    if options.allow_other {
        opts.push(fuser::MountOption::AllowOther);
    }
    let metrics = Arc::new(FuseMetrics::default());
    let registry = metrics::registry(
        &metrics,
        client.data.cache().map(|c| c.metrics()).as_ref(),
        staging.as_ref().map(|s| s.metrics()),
    );
    let fs = CairnFs::new(
        client,
        rt,
        options.timeouts,
        staging.clone(),
        options.permissions,
        metrics.clone(),
    );
    // The file system invalidates the kernel's attributes at open (see
    // `fs`), through the session's notifier: it exists once the session does.
    let notifier = fs.notifier_slot();
    let session = fuser::Session::new(fs, mountpoint, &opts)?;
    let _ = notifier.set(session.notifier());
    let session = session.spawn()?;
    Ok(Mounted {
        session,
        staging,
        metrics,
        registry: Arc::new(registry),
    })
}
