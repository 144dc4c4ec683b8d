//! Model-based test of the mount: thousands of random operations (create,
//! write at offsets, truncate, rename, link, unlink, mkdir, rmdir, chmod) are
//! applied to a Cairn mount and to a local directory; every result (success or
//! the errno) must match, and so must the final trees (names, kinds, sizes,
//! contents, permission bits, link counts).

use std::collections::BTreeMap;
use std::fs;
use std::fs::OpenOptions;
use std::io::Seek;
use std::io::SeekFrom;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;

use cairn_tests::Cluster;
use cairn_tests::Mount;
use cairn_tests::Spec;

const OPS: usize = 2000;

#[derive(Clone)]
enum Op {
    Create(String),
    Write(String, u64, Vec<u8>),
    Truncate(String, u64),
    Rename(String, String),
    Link(String, String),
    Unlink(String),
    Mkdir(String),
    Rmdir(String),
    Chmod(String, u32),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Write(a, off, data) => write!(f, "Write({a:?}, {off}, {} bytes)", data.len()),
            Op::Create(a) => write!(f, "Create({a:?})"),
            Op::Truncate(a, n) => write!(f, "Truncate({a:?}, {n})"),
            Op::Rename(a, b) => write!(f, "Rename({a:?}, {b:?})"),
            Op::Link(a, b) => write!(f, "Link({a:?}, {b:?})"),
            Op::Unlink(a) => write!(f, "Unlink({a:?})"),
            Op::Mkdir(a) => write!(f, "Mkdir({a:?})"),
            Op::Rmdir(a) => write!(f, "Rmdir({a:?})"),
            Op::Chmod(a, m) => write!(f, "Chmod({a:?}, {m:o})"),
        }
    }
}

/// A random path among a small set of names two levels deep, so operations
/// often meet each other (existing targets, non-empty directories...).
fn path(rng: &mut StdRng) -> String {
    let dirs = ["", "d0/", "d1/", "d0/e/"];
    let names = ["a", "b", "c", "d0", "d1", "e"];
    format!(
        "{}{}",
        dirs[rng.gen_range(0..dirs.len())],
        names[rng.gen_range(0..names.len())]
    )
}

fn random_op(rng: &mut StdRng) -> Op {
    match rng.gen_range(0..10) {
        0 | 1 => Op::Create(path(rng)),
        2 | 3 => {
            let len = rng.gen_range(1..5000);
            let data = (0..len).map(|_| rng.gen()).collect();
            Op::Write(path(rng), rng.gen_range(0..20_000), data)
        }
        4 => Op::Truncate(path(rng), rng.gen_range(0..30_000)),
        5 => Op::Rename(path(rng), path(rng)),
        6 => Op::Link(path(rng), path(rng)),
        7 => Op::Unlink(path(rng)),
        8 => {
            if rng.gen_bool(0.5) {
                Op::Mkdir(path(rng))
            } else {
                Op::Rmdir(path(rng))
            }
        }
        _ => Op::Chmod(path(rng), [0o600, 0o644, 0o755, 0o700][rng.gen_range(0..4)]),
    }
}

/// Applies `op` under `root`: Ok or the errno.
fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |s: &str| root.join(s);
    let r = match op {
        Op::Create(a) => OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p(a))
            .map(|_| ()),
        Op::Write(a, off, data) => OpenOptions::new().write(true).open(p(a)).and_then(|mut f| {
            f.seek(SeekFrom::Start(*off))?;
            f.write_all(data)
        }),
        Op::Truncate(a, len) => OpenOptions::new()
            .write(true)
            .open(p(a))
            .and_then(|f| f.set_len(*len)),
        Op::Rename(a, b) => fs::rename(p(a), p(b)),
        Op::Link(a, b) => fs::hard_link(p(a), p(b)),
        Op::Unlink(a) => fs::remove_file(p(a)),
        Op::Mkdir(a) => fs::create_dir(p(a)),
        Op::Rmdir(a) => fs::remove_dir(p(a)),
        Op::Chmod(a, mode) => fs::set_permissions(p(a), fs::Permissions::from_mode(*mode)),
    };
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Everything below `root`: path → (kind, mode, nlink, size, content).
fn tree(root: &Path) -> BTreeMap<String, (char, u32, u64, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in entries.flatten() {
            let rel = rel.join(e.file_name());
            let Ok(m) = fs::symlink_metadata(root.join(&rel)) else {
                continue;
            };
            let key = rel.to_string_lossy().into_owned();
            if m.is_dir() {
                out.insert(key, ('d', m.mode() & 0o7777, m.nlink(), 0, Vec::new()));
                stack.push(rel);
            } else {
                let data = fs::read(root.join(&rel)).unwrap_or_default();
                out.insert(key, ('f', m.mode() & 0o7777, m.nlink(), m.len(), data));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_operations_match_a_local_file_system() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let mount = Mount::start(&cluster, "mnt").await?;
    let local = cluster.dir.path().join("local");
    fs::create_dir_all(&local)?;
    let cairn = mount.path.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(0xca1);
        for i in 0..OPS {
            let op = random_op(&mut rng);
            let want = apply(&local, &op);
            let got = apply(&cairn, &op);
            anyhow::ensure!(got == want, "op {i} {op:?}: cairn {got:?}, local {want:?}");
            // A file just written or truncated must read back the same at once.
            if let (Op::Write(a, ..) | Op::Truncate(a, _), Ok(())) = (&op, &want) {
                let (w, g) = (fs::read(local.join(a))?, fs::read(cairn.join(a))?);
                let first_diff = w.iter().zip(&g).position(|(x, y)| x != y);
                anyhow::ensure!(
                    w == g,
                    "op {i} {op:?}: contents differ (sizes {} vs {}, first difference at {first_diff:?})",
                    w.len(),
                    g.len()
                );
            }
        }
        let (want, got) = (tree(&local), tree(&cairn));
        anyhow::ensure!(
            want.keys().eq(got.keys()),
            "trees differ: local {:?}, cairn {:?}",
            want.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>()
        );
        for (path, w) in &want {
            let g = &got[path];
            anyhow::ensure!(
                w == g,
                "{path}: local (kind, mode, nlink, size) {:?}, cairn {:?}, contents equal: {}",
                (w.0, w.1, w.2, w.3),
                (g.0, g.1, g.2, g.3),
                w.4 == g.4
            );
        }
        Ok(())
    })
    .await??;
    Ok(())
}
