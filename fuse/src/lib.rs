//! cairn-fuse: mounts a Cairn cluster through FUSE (`fuser`), mapping POSIX
//! operations onto the client library (`fs`). Permissions are checked by the
//! kernel (`default_permissions`); ownership of new inodes is the caller's.

pub mod fs;

use std::io;
use std::path::Path;
use std::sync::Arc;

use cairn_client::Client;

pub use fs::CairnFs;
pub use fs::Timeouts;

/// How to mount.
#[derive(Debug, Clone, Copy)]
pub struct MountOptions {
    pub timeouts: Timeouts,
    /// Let other users than the mounting one use the mount.
    pub allow_other: bool,
}

/// Mounts the cluster at `mountpoint`; requests are served on `rt` until the
/// returned session is dropped (which unmounts) or the mount is unmounted.
pub fn mount(
    client: Arc<Client>,
    mountpoint: &Path,
    options: MountOptions,
    rt: tokio::runtime::Handle,
) -> io::Result<fuser::BackgroundSession> {
    let mut opts = vec![
        fuser::MountOption::FSName("cairn".into()),
        fuser::MountOption::Subtype("cairn".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::RW,
    ];
    if options.allow_other {
        opts.push(fuser::MountOption::AllowOther);
    }
    let fs = CairnFs::new(client, rt, options.timeouts);
    fuser::spawn_mount2(fs, mountpoint, &opts)
}
