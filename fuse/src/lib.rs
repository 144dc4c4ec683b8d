//! cairn-fuse: mounts a Cairn cluster through FUSE (`fuser`), mapping POSIX
//! operations onto the client library (`fs`). Permissions are checked by the
//! kernel (`default_permissions`); ownership of new inodes is the caller's.
//! With write-back (`writeback`), close and fsync return once data is staged
//! on the local disk, and uploads run in the background. File locks
//! (`locks`) are held in metad, so they hold across mounts.

pub mod fs;
pub mod locks;
pub mod writeback;

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_client::Client;

pub use fs::CairnFs;
pub use fs::Timeouts;
pub use writeback::Staging;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub timeouts: Timeouts,
    /// Let other users than the mounting one use the mount.
    pub allow_other: bool,
    /// Write-back staging directory (on a local disk); None: write-through.
    pub writeback_dir: Option<PathBuf>,
}

/// A mounted cluster: dropping it unmounts.
pub struct Mounted {
    pub session: fuser::BackgroundSession,
    /// The write-back staging area, when there is one.
    pub staging: Option<Arc<Staging>>,
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
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::RW,
    ];
    if options.allow_other {
        opts.push(fuser::MountOption::AllowOther);
    }
    let fs = CairnFs::new(client, rt, options.timeouts, staging.clone());
    let session = fuser::spawn_mount2(fs, mountpoint, &opts)?;
    Ok(Mounted { session, staging })
}
