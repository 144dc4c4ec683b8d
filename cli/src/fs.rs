//! `cairn fs …`: file-system commands through the client library.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use anyhow::Context;
use clap::Subcommand;
use indicatif::ProgressBar;
use indicatif::ProgressStyle;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use cairn_client::Client;
use cairn_proto::pb;
use cairn_proto::pb::FileKind;

/// Bytes moved per read or write call of put/get.
const IO_SIZE: usize = 16 << 20;
/// Files at least this large show a progress bar.
const PROGRESS_MIN: u64 = 64 << 20;

#[derive(Subcommand)]
pub enum FsCommand {
    /// List a directory.
    Ls {
        /// Long format: kind, mode, links, size, inode.
        #[arg(short = 'l')]
        long: bool,
        #[arg(default_value = "/")]
        path: String,
    },
    /// Show a file's attributes.
    Stat { path: String },
    /// Make a directory.
    Mkdir {
        /// Make parents as needed; no error if it exists.
        #[arg(short = 'p')]
        parents: bool,
        path: String,
    },
    /// Copy a local file into Cairn.
    Put { local: PathBuf, path: String },
    /// Copy a file out of Cairn.
    Get { path: String, local: PathBuf },
    /// Print a file.
    Cat { path: String },
    /// Remove files (and directories with -r).
    Rm {
        #[arg(short = 'r')]
        recursive: bool,
        paths: Vec<String>,
    },
    /// Rename or move.
    Mv { from: String, to: String },
    /// Make a hard link (or a symlink with -s).
    Ln {
        #[arg(short = 's')]
        symbolic: bool,
        target: String,
        link: String,
    },
}

pub async fn run(seeds: Vec<String>, command: FsCommand) -> anyhow::Result<()> {
    let client = Client::new(seeds);
    match command {
        FsCommand::Ls { long, path } => ls(&client, &path, long).await,
        FsCommand::Stat { path } => {
            let attr = client.meta.resolve(&path).await?;
            print_stat(&path, &attr);
            Ok(())
        }
        FsCommand::Mkdir { parents, path } => mkdir(&client, &path, parents).await,
        FsCommand::Put { local, path } => put(&client, &local, &path).await,
        FsCommand::Get { path, local } => get(&client, &path, &local).await,
        FsCommand::Cat { path } => cat(&client, &path).await,
        FsCommand::Rm { recursive, paths } => {
            for path in paths {
                rm(&client, &path, recursive).await?;
            }
            Ok(())
        }
        FsCommand::Mv { from, to } => {
            let (src_parent, src_name) = client.meta.resolve_parent(&from).await?;
            let (mut dst_parent, mut dst_name) = client.meta.resolve_parent(&to).await?;
            // Moving into an existing directory keeps the name, like mv(1).
            if let Ok(dir) = client
                .meta
                .lookup(dst_parent.ino, dst_name.as_bytes())
                .await
            {
                if dir.kind == FileKind::Directory as i32 {
                    dst_parent = dir;
                    dst_name = src_name.clone();
                }
            }
            client
                .meta
                .rename(
                    src_parent.ino,
                    src_name.as_bytes(),
                    dst_parent.ino,
                    dst_name.as_bytes(),
                    pb::RenameMode::Replace,
                )
                .await?;
            Ok(())
        }
        FsCommand::Ln {
            symbolic,
            target,
            link,
        } => {
            let (parent, name) = client.meta.resolve_parent(&link).await?;
            if symbolic {
                client
                    .meta
                    .symlink(parent.ino, name.as_bytes(), target.as_bytes())
                    .await?;
            } else {
                let attr = client.meta.resolve(&target).await?;
                client
                    .meta
                    .link(attr.ino, parent.ino, name.as_bytes())
                    .await?;
            }
            Ok(())
        }
    }
}

fn kind_char(kind: i32) -> char {
    match FileKind::try_from(kind) {
        Ok(FileKind::Directory) => 'd',
        Ok(FileKind::Symlink) => 'l',
        Ok(FileKind::Fifo) => 'p',
        Ok(FileKind::Socket) => 's',
        Ok(FileKind::CharDevice) => 'c',
        Ok(FileKind::BlockDevice) => 'b',
        _ => '-',
    }
}

fn mode_string(attr: &pb::Attr) -> String {
    let mut s = String::new();
    s.push(kind_char(attr.kind));
    for shift in [6, 3, 0] {
        let bits = (attr.perm >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn print_stat(path: &str, a: &pb::Attr) {
    println!("  File: {path}");
    println!(
        "  Size: {:<12} Links: {:<6} Inode: {:#x} (shard {})",
        a.size,
        a.nlink,
        a.ino,
        cairn_proto::ids::ino_shard(a.ino)
    );
    println!(
        "  Mode: {} ({:04o})  Uid: {}  Gid: {}",
        mode_string(a),
        a.perm,
        a.uid,
        a.gid
    );
    println!("  Modify: {} ns   Change: {} ns", a.mtime_ns, a.ctime_ns);
}

async fn ls(client: &Arc<Client>, path: &str, long: bool) -> anyhow::Result<()> {
    let dir = client.meta.resolve(path).await?;
    if dir.kind != FileKind::Directory as i32 {
        println!("{path}");
        return Ok(());
    }
    let entries = client.meta.readdir(dir.ino).await?;
    let mut out = std::io::stdout().lock();
    for e in entries {
        let name = String::from_utf8_lossy(&e.name);
        if long {
            let a = client.meta.getattr(e.ino).await?;
            writeln!(
                out,
                "{} {:>3} {:>5} {:>5} {:>12} {}",
                mode_string(&a),
                a.nlink,
                a.uid,
                a.gid,
                a.size,
                name
            )?;
        } else {
            writeln!(out, "{name}")?;
        }
    }
    Ok(())
}

async fn mkdir(client: &Arc<Client>, path: &str, parents: bool) -> anyhow::Result<()> {
    if !parents {
        let (parent, name) = client.meta.resolve_parent(path).await?;
        client
            .meta
            .mkdir(parent.ino, name.as_bytes(), 0o755)
            .await?;
        return Ok(());
    }
    let parts = cairn_proto::name::split_path(path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    let mut cur = client.meta.getattr(cairn_proto::ids::ROOT_INO).await?;
    for part in parts {
        cur = match client.meta.lookup(cur.ino, part.as_bytes()).await {
            Ok(a) if a.kind == FileKind::Directory as i32 => a,
            Ok(_) => bail!("{part}: exists and is not a directory"),
            Err(e) if e.errno() == cairn_proto::status::ENOENT => {
                match client.meta.mkdir(cur.ino, part.as_bytes(), 0o755).await {
                    Ok(a) => a,
                    // Someone else made it meanwhile.
                    Err(e) if e.errno() == cairn_proto::status::EEXIST => {
                        client.meta.lookup(cur.ino, part.as_bytes()).await?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(())
}

fn progress(len: u64) -> ProgressBar {
    if len < PROGRESS_MIN {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

async fn put(client: &Arc<Client>, local: &PathBuf, path: &str) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("opening {}", local.display()))?;
    let len = file.metadata().await?.len();
    let bar = progress(len);
    let mut writer = client.create_file(path, 0o644).await?;
    let mut buf = vec![0u8; IO_SIZE];
    let mut offset = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        writer.write_at(offset, &buf[..n]).await?;
        offset += n as u64;
        bar.set_position(offset);
    }
    writer.close().await?;
    bar.finish_and_clear();
    Ok(())
}

async fn get(client: &Arc<Client>, path: &str, local: &PathBuf) -> anyhow::Result<()> {
    let mut reader = client.open_file(path).await?;
    let bar = progress(reader.size());
    let mut out = tokio::fs::File::create(local)
        .await
        .with_context(|| format!("creating {}", local.display()))?;
    let mut offset = 0u64;
    loop {
        let data = reader.read_at(offset, IO_SIZE).await?;
        if data.is_empty() {
            break;
        }
        out.write_all(&data).await?;
        offset += data.len() as u64;
        bar.set_position(offset);
    }
    out.sync_all().await?;
    reader.close().await?;
    bar.finish_and_clear();
    Ok(())
}

async fn cat(client: &Arc<Client>, path: &str) -> anyhow::Result<()> {
    let mut reader = client.open_file(path).await?;
    let mut out = tokio::io::stdout();
    let mut offset = 0u64;
    loop {
        let data = reader.read_at(offset, IO_SIZE).await?;
        if data.is_empty() {
            break;
        }
        out.write_all(&data).await?;
        offset += data.len() as u64;
    }
    out.flush().await?;
    reader.close().await?;
    Ok(())
}

async fn rm(client: &Arc<Client>, path: &str, recursive: bool) -> anyhow::Result<()> {
    let (parent, name) = client.meta.resolve_parent(path).await?;
    let attr = client.meta.lookup(parent.ino, name.as_bytes()).await?;
    if attr.kind != FileKind::Directory as i32 {
        client.meta.unlink(parent.ino, name.as_bytes()).await?;
        return Ok(());
    }
    if !recursive {
        bail!("{path}: is a directory (use -r)");
    }
    // Depth first, with an explicit stack: (directory, its parent, its name).
    let mut stack = vec![(attr.ino, parent.ino, name.into_bytes(), false)];
    while let Some((dir, parent, name, visited)) = stack.pop() {
        if visited {
            client.meta.rmdir(parent, &name).await?;
            continue;
        }
        stack.push((dir, parent, name, true));
        for e in client.meta.readdir(dir).await? {
            if e.kind == FileKind::Directory as i32 {
                stack.push((e.ino, dir, e.name.to_vec(), false));
            } else {
                client.meta.unlink(dir, &e.name).await?;
            }
        }
    }
    Ok(())
}
