//! POSIX details through a real mount that the broad scenario in `fuse.rs`
//! does not pin down: setgid directories, times before 1970, st_blocks of
//! sparse files, listing a removed directory, flock per open file
//! description, fallocate's modes, O_TMPFILE's clean refusal, and `rm -rf`
//! under concurrent load. Each test is named after the behaviour it defends
//! and compares with what Linux's local file systems answer.

use std::fs;
use std::fs::File;
use std::fs::FileTimes;
use std::fs::OpenOptions;
use std::io::Seek;
use std::io::SeekFrom;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use std::time::UNIX_EPOCH;

use anyhow::ensure;
use anyhow::Context;

use cairn_proto::ids::ino_shard;
use cairn_tests::Cluster;
use cairn_tests::Mount;
use cairn_tests::Spec;

/// A group root is not in by default, so inheriting it cannot be a fluke.
const STAFF: u32 = 4242;

/// Starts a cluster and a mount, then runs the blocking `body` on the mount's
/// root off the runtime's threads.
async fn on_mount(
    body: impl FnOnce(PathBuf) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let mount = Mount::start(&cluster, "mnt").await?;
    let root = mount.path.clone();
    tokio::task::spawn_blocking(move || body(root)).await??;
    drop(mount);
    Ok(())
}

/// Runs `program` with `args` (C locale) and answers its stdout, failing on
/// a non-zero exit.
fn run(program: &str, args: &[&str], dir: &Path) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn setgid_directory_passes_its_group_and_bit_to_new_entries() -> anyhow::Result<()> {
    on_mount(|root| {
        let shared = root.join("shared");
        fs::create_dir(&shared)?;
        std::os::unix::fs::chown(&shared, Some(0), Some(STAFF))?;
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o2775))?;
        assert_eq!(fs::metadata(&shared)?.mode() & 0o7777, 0o2775);

        fs::write(shared.join("file"), b"x")?;
        run("mkfifo", &["fifo"], &shared)?;
        std::os::unix::fs::symlink("file", shared.join("link"))?;
        for name in ["file", "fifo", "link"] {
            let m = fs::symlink_metadata(shared.join(name))?;
            assert_eq!(m.gid(), STAFF, "{name} took the caller's group");
            assert_eq!(m.mode() & 0o2000, 0, "{name} must not gain setgid");
        }
        // Subdirectories land on several shards (same-shard create and
        // cross-shard mkdir): both inherit the group and the setgid bit, and
        // so do their own children.
        let parent_shard = ino_shard(fs::metadata(&shared)?.ino());
        let mut shards = std::collections::BTreeSet::new();
        for i in 0..12 {
            let d = shared.join(format!("d{i}"));
            fs::create_dir(&d)?;
            let m = fs::metadata(&d)?;
            shards.insert(ino_shard(m.ino()) == parent_shard);
            assert_eq!(m.gid(), STAFF, "d{i} took the caller's group");
            assert_eq!(m.mode() & 0o7777, 0o2755, "d{i} mode (umask 022)");
            fs::write(d.join("nested"), b"y")?;
            assert_eq!(fs::metadata(d.join("nested"))?.gid(), STAFF);
        }
        assert_eq!(shards.len(), 2, "no subdirectory on the other side");

        // Without setgid the caller's group applies again.
        let plain = root.join("plain");
        fs::create_dir(&plain)?;
        std::os::unix::fs::chown(&plain, Some(0), Some(STAFF))?;
        fs::write(plain.join("file"), b"z")?;
        assert_eq!(fs::metadata(plain.join("file"))?.gid(), 0);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn times_before_1970_read_back_unchanged() -> anyhow::Result<()> {
    on_mount(|root| {
        // 1960-01-01T00:00:00Z and 1955-06-15T12:00:00Z.
        const Y1960: i64 = -315_619_200;
        const Y1955: i64 = -459_086_400;
        let f = root.join("old");
        fs::write(&f, b"history")?;
        // futimens through an open file.
        let times = FileTimes::new()
            .set_modified(UNIX_EPOCH - Duration::from_secs(Y1960.unsigned_abs()))
            .set_accessed(UNIX_EPOCH - Duration::from_secs(Y1955.unsigned_abs()));
        OpenOptions::new().write(true).open(&f)?.set_times(times)?;
        let m = fs::metadata(&f)?;
        assert_eq!((m.mtime(), m.mtime_nsec()), (Y1960, 0));
        assert_eq!((m.atime(), m.atime_nsec()), (Y1955, 0));
        // utimensat by path, as touch -d does.
        run(
            "touch",
            &["-m", "-d", "1955-06-15 12:00:00 UTC", "old"],
            &root,
        )?;
        let m = fs::metadata(&f)?;
        assert_eq!(m.mtime(), Y1955);
        assert_eq!(m.atime(), Y1955);
        // Still readable after a remount-free second look (listing path).
        let listed = fs::read_dir(&root)?
            .filter_map(Result::ok)
            .find(|e| e.file_name() == "old")
            .context("old not listed")?;
        assert_eq!(listed.metadata()?.mtime(), Y1955);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sparse_file_blocks_count_only_stored_data() -> anyhow::Result<()> {
    on_mount(|root| {
        const GIB: u64 = 1 << 30;
        let f = root.join("sparse");
        let mut h = File::create(&f)?;
        h.write_all(&[7u8; 4096])?;
        h.set_len(GIB)?;
        drop(h);
        let m = fs::metadata(&f)?;
        assert_eq!(m.len(), GIB);
        assert_eq!(m.blocks(), 8, "4 KiB of data in 1 GiB of holes");

        // Data far into the file, in another chunk.
        let mut h = OpenOptions::new().write(true).open(&f)?;
        h.seek(SeekFrom::Start(GIB / 2))?;
        h.write_all(&[9u8; 4096])?;
        drop(h);
        let m = fs::metadata(&f)?;
        assert_eq!(m.len(), GIB);
        assert_eq!(m.blocks(), 16, "two 4 KiB extents");

        // A truncate below the data takes it out of the count.
        OpenOptions::new().write(true).open(&f)?.set_len(2048)?;
        assert_eq!(fs::metadata(&f)?.blocks(), 4);

        // A dense file counts all of its bytes.
        let dense = root.join("dense");
        fs::write(&dense, vec![1u8; 3 << 20])?;
        assert_eq!(fs::metadata(&dense)?.blocks(), (3 << 20) / 512);
        // An empty file and a 1 MiB hole store nothing.
        let hole = root.join("hole");
        File::create(&hole)?.set_len(1 << 20)?;
        assert_eq!(fs::metadata(&hole)?.blocks(), 0);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_directory_lists_empty_for_its_cwd() -> anyhow::Result<()> {
    on_mount(|root| {
        // A process whose cwd is the directory, and which has it open too,
        // removes it and lists it both ways: Linux lists nothing, no error.
        // Directories on the root's shard and on others (rmdir is one command
        // or a cross-shard transaction).
        let script = r#"
import os
fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
os.rmdir(os.getcwd())
print(repr((os.listdir("."), os.listdir(fd), os.stat(".").st_nlink)))
"#;
        // The mount shows the root as inode 1: its shard is ROOT_INO's.
        let root_shard = ino_shard(cairn_proto::ids::ROOT_INO);
        let mut shards = std::collections::BTreeSet::new();
        for i in 0..8 {
            let d = root.join(format!("doomed{i}"));
            fs::create_dir(&d)?;
            shards.insert(ino_shard(fs::metadata(&d)?.ino()) == root_shard);
            let out = run("python3", &["-c", script], &d)?;
            assert_eq!(out.trim(), "([], [], 0)", "doomed{i}");
            assert!(!d.exists());
        }
        assert_eq!(shards.len(), 2, "no directory on the other side");
        // ls in a shell whose cwd was removed.
        let gone = root.join("gone");
        fs::create_dir(&gone)?;
        let names = run("sh", &["-c", "rmdir \"$PWD\" && ls -a"], &gone)?;
        assert!(
            names.split_whitespace().all(|n| n == "." || n == ".."),
            "a removed directory listed {names:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flock_belongs_to_the_open_file_description_until_its_last_close() -> anyhow::Result<()> {
    on_mount(|root| {
        let f = root.join("locked");
        fs::write(&f, b"l")?;
        // Python's fcntl.flock is flock(2); each open() is its own open file
        // description, a dup shares one.
        let script = r#"
import errno, fcntl, os
def nb(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
a = os.open("locked", os.O_RDONLY)
b = os.open("locked", os.O_RDONLY)
out = [nb(a), nb(b)]
d = os.dup(a)
out.append(nb(d))
os.close(a)
os.close(d)
out.append(nb(b))
print(" ".join(out))
"#;
        let out = run("python3", &["-c", script], &root)?;
        // The second description conflicts; the dup holds the lock already;
        // closing the first description's fds frees it for the second.
        assert_eq!(out.trim(), "ok EAGAIN ok ok");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_update_atime_under_relatime_rules() -> anyhow::Result<()> {
    on_mount(|root| {
        let atime_ns = |p: &Path| -> anyhow::Result<i128> {
            let m = fs::metadata(p)?;
            Ok(i128::from(m.atime()) * 1_000_000_000 + i128::from(m.atime_nsec()))
        };
        let f = root.join("read-me");
        fs::write(&f, b"some bytes")?;
        let written = atime_ns(&f)?;
        // atime is not after mtime: the first read moves it.
        assert_eq!(fs::read(&f)?, b"some bytes");
        let first = atime_ns(&f)?;
        assert!(
            first > written,
            "read left atime at {first} (was {written})"
        );
        // Now after mtime and ctime, and not a day old: reads leave it.
        assert_eq!(fs::read(&f)?, b"some bytes");
        assert_eq!(atime_ns(&f)?, first, "a second read moved atime");
        // Opening for writing only is no read.
        OpenOptions::new().write(true).open(&f)?;
        assert_eq!(atime_ns(&f)?, first);
        // A write moves mtime past atime: the next read moves atime again.
        OpenOptions::new().append(true).open(&f)?.write_all(b"!")?;
        assert_eq!(atime_ns(&f)?, first, "a write moved atime");
        assert_eq!(fs::read(&f)?, b"some bytes!");
        let after_write = atime_ns(&f)?;
        assert!(after_write > first, "read after a write left atime");
        assert!(i128::from(fs::metadata(&f)?.mtime()) * 1_000_000_000 <= after_write);
        // An explicit old atime (utimensat) is a change: the next read fixes it.
        run(
            "touch",
            &["-a", "-d", "2000-01-01 00:00:00 UTC", "read-me"],
            &root,
        )?;
        assert_eq!(fs::metadata(&f)?.atime(), 946_684_800);
        fs::read(&f)?;
        assert!(atime_ns(&f)? > after_write);
        Ok(())
    })
    .await
}

/// One worker's loop: build a directory holding a fifo, a symlink, a regular
/// file and a subdirectory (with entries of its own) under `parent`, then
/// `rm -rf` it; `rounds` times. Answers the stderr of every failed round.
const MIXED_TREE_LOOP: &str = r#"
parent="$1"; me="$2"; rounds="$3"
i=0
while [ "$i" -lt "$rounds" ]; do
  d="$parent/$me-$i"
  mkdir "$d" && mkfifo "$d/fifo" && ln -s fifo "$d/link" && echo data > "$d/file" \
    && mkdir "$d/sub" && echo x > "$d/sub/f" && mkfifo "$d/sub/ff" && ln -s f "$d/sub/l" \
    || { echo "round $i: building failed" >&2; exit 1; }
  if ! err=$(rm -rf "$d" 2>&1); then echo "round $i: rm -rf: $err" >&2; exit 1; fi
  if [ -e "$d" ] || [ -L "$d" ]; then echo "round $i: $d still there" >&2; exit 1; fi
  i=$((i + 1))
done
"#;

/// Lists `dir` recursively with attributes until `stop`, failing on any error
/// but a vanished entry (the listing races the removals, which is expected).
fn list_until(dir: &Path, stop: &std::sync::atomic::AtomicBool) -> anyhow::Result<u64> {
    let mut lists = 0;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let out = Command::new("ls")
            .args(["-lRa"])
            .arg(dir)
            .env("LC_ALL", "C")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in stderr.lines() {
            ensure!(
                line.contains("No such file or directory"),
                "ls -lRa while removing: {line}"
            );
        }
        lists += 1;
    }
    Ok(lists)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rm_rf_of_mixed_directories_under_concurrent_load_never_fails() -> anyhow::Result<()> {
    // `MIXED_RM_ROUNDS` makes it a longer hunt; the default keeps CI short.
    let rounds: u32 = std::env::var("MIXED_RM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let a = Mount::start(&cluster, "a").await?;
    let b = Mount::start(&cluster, "b").await?;
    let (root_a, root_b) = (a.path.clone(), b.path.clone());
    let outcome = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        // Siblings in one parent (its entries on one shard, the removed
        // subdirectories on every shard), from both mounts at once.
        fs::create_dir(root_a.join("par"))?;
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| -> anyhow::Result<()> {
            let listers: Vec<_> = [&root_a, &root_b]
                .into_iter()
                .map(|root| {
                    let (dir, stop) = (root.join("par"), &stop);
                    s.spawn(move || list_until(&dir, stop))
                })
                .collect();
            let workers: Vec<_> = (0..6)
                .map(|w| {
                    let root = if w % 3 == 2 { &root_b } else { &root_a };
                    let parent = root.join("par");
                    let rounds = rounds.to_string();
                    s.spawn(move || {
                        let me = format!("w{w}");
                        let p = parent.to_string_lossy();
                        let args = ["-c", MIXED_TREE_LOOP, "sh", &p, &me, &rounds];
                        run("sh", &args, &parent)
                    })
                })
                .collect();
            let mut failures = Vec::new();
            for w in workers {
                if let Err(e) = w.join().map_err(|_| anyhow::anyhow!("worker panicked"))? {
                    failures.push(e.to_string());
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Release);
            for l in listers {
                if let Err(e) = l.join().map_err(|_| anyhow::anyhow!("lister panicked"))? {
                    failures.push(e.to_string());
                }
            }
            ensure!(failures.is_empty(), "{}", failures.join("\n"));
            Ok(())
        })?;
        // Both mounts see the parent empty afterwards.
        for root in [&root_a, &root_b] {
            let left: Vec<_> = fs::read_dir(root.join("par"))?.collect();
            ensure!(left.is_empty(), "left behind: {left:?}");
        }
        Ok(())
    })
    .await?;
    drop((a, b));
    // On failure, say which requests the mounts failed (logged at debug).
    outcome.map_err(|e| {
        let failed: Vec<String> = ["a.log", "b.log"]
            .iter()
            .filter_map(|l| fs::read_to_string(cluster.dir.path().join(l)).ok())
            .flat_map(|t| {
                t.lines()
                    .filter(|l| l.contains("failed") && !l.contains("(errno 2)"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        e.context(failed.join("\n"))
    })
}

/// `fallocate` (util-linux) with `args` on `file` in `dir`: Ok, or the
/// error it printed.
fn fallocate(dir: &Path, args: &[&str], file: &str) -> anyhow::Result<Result<(), String>> {
    let out = Command::new("fallocate")
        .args(args)
        .arg(file)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .output()
        .context("running fallocate")?;
    Ok(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

/// Every mode of fallocate(2) on one file, against a model of its bytes,
/// through a mount started with `mount_args` (plain, or write-back).
async fn fallocate_scenario(mount_args: &[&str]) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    const MIB: usize = 1 << 20;
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let cache = cluster.dir.path().join("cache");
    let cache_arg = cache.to_string_lossy().into_owned();
    let mut args = mount_args.to_vec();
    if args.contains(&"--writeback") {
        args.extend(["--cache-dir", cache_arg.as_str()]);
    }
    let mount = Mount::start_with(&cluster, "mnt", &args).await?;
    let root = mount.path.clone();
    let client = cluster.client();
    let rt = tokio::runtime::Handle::current();
    // Blocks held by the data server, as it reports them in the cluster map.
    let blocks_reach = move |want: u64, what: &'static str| -> anyhow::Result<()> {
        let client = client.clone();
        rt.block_on(cairn_tests::wait_for(what, Duration::from_secs(30), || {
            let client = client.clone();
            async move {
                let map = client.meta.refresh_map().await;
                map.is_ok_and(|m| m.data_nodes.iter().map(|n| n.blocks).sum::<u64>() == want)
            }
        }))
    };
    let model = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let f = root.join("f");
        let check = |model: &[u8], what: &str| -> anyhow::Result<()> {
            let got = fs::read(&f)?;
            ensure!(got.len() == model.len(), "{what}: size {}", got.len());
            let first = got.iter().zip(model).position(|(a, b)| a != b);
            ensure!(first.is_none(), "{what}: first wrong byte at {first:?}");
            Ok(())
        };
        // Two slices: 6 MiB (two 4 MiB blocks), then 1 MiB over [1, 2) MiB.
        let mut model = cairn_tests::random_bytes(6 * MIB, 11);
        fs::write(&f, &model)?;
        let h = OpenOptions::new().write(true).open(&f)?;
        h.write_all_at(&[0xab; MIB], MIB as u64)?;
        drop(h);
        model[MIB..2 * MIB].fill(0xab);
        check(&model, "written")?;
        blocks_reach(3, "the written blocks to be reported")?;
        assert_eq!(fs::metadata(&f)?.blocks(), (6 * MIB / 512) as u64);

        // A write not yet flushed (buffered in its handle, or staged), then
        // a punch of the same range through another process: the punch wins
        // for every descriptor, and the close commits nothing over it.
        let h = OpenOptions::new().read(true).write(true).open(&f)?;
        h.write_all_at(&[0xcd; 64 << 10], 4 * MIB as u64)?;
        let range = ["-p", "-o", "4194304", "-l", "65536"];
        fallocate(&root, &range, "f")?.map_err(anyhow::Error::msg)?;
        model[4 * MIB..4 * MIB + (64 << 10)].fill(0);
        let mut back = vec![1u8; 64 << 10];
        h.read_exact_at(&mut back, 4 * MIB as u64)?;
        ensure!(
            back.iter().all(|&b| b == 0),
            "the writer's fd reads the punched data"
        );
        check(&model, "punched after an unflushed write")?;
        drop(h);
        check(&model, "after the writer's close")?;

        // PUNCH_HOLE|KEEP_SIZE over the second slice: it is hidden
        // everywhere, so its block goes; the size stays; st_blocks drops.
        fallocate(&root, &["-p", "-o", "1048576", "-l", "1048576"], "f")?
            .map_err(anyhow::Error::msg)?;
        model[MIB..2 * MIB].fill(0);
        check(&model, "punched")?;
        let stored = 6 * MIB - MIB - (64 << 10);
        assert_eq!(fs::metadata(&f)?.blocks(), (stored / 512) as u64);
        // The 1 MiB slice and the punched 64 KiB write are released.
        blocks_reach(2, "the punched slices' blocks to go")?;

        // ZERO_RANGE|KEEP_SIZE across the end: zeros up to it, same size.
        fallocate(&root, &["-z", "-n", "-o", "5242880", "-l", "4194304"], "f")?
            .map_err(anyhow::Error::msg)?;
        model[5 * MIB..].fill(0);
        check(&model, "zeroed, size kept")?;
        // ZERO_RANGE past the end grows the file.
        fallocate(&root, &["-z", "-o", "5767168", "-l", "2097152"], "f")?
            .map_err(anyhow::Error::msg)?;
        model.resize(5 * MIB + MIB / 2 + 2 * MIB, 0);
        check(&model, "zeroed past the end")?;
        // Mode 0 allocates (a longer file, the data intact); KEEP_SIZE
        // allocates without changing the size.
        fallocate(&root, &["-o", "0", "-l", "9437184"], "f")?.map_err(anyhow::Error::msg)?;
        model.resize(9 * MIB, 0);
        check(&model, "allocated")?;
        fallocate(&root, &["-n", "-o", "0", "-l", "33554432"], "f")?.map_err(anyhow::Error::msg)?;
        check(&model, "allocated, size kept")?;

        // Modes Cairn lacks are EOPNOTSUPP and change nothing.
        let before = fs::metadata(&f)?;
        for refused in [
            ["-c", "-o", "0", "-l", "1048576"],
            ["-i", "-o", "0", "-l", "1048576"],
        ] {
            let e = fallocate(&root, &refused, "f")?
                .err()
                .context("refused mode accepted")?;
            ensure!(e.contains("Operation not supported"), "{refused:?}: {e}");
        }
        check(&model, "after refused modes")?;
        let after = fs::metadata(&f)?;
        assert_eq!(
            (after.len(), after.mtime(), after.mtime_nsec()),
            (before.len(), before.mtime(), before.mtime_nsec())
        );

        // A small file (inline data): zeroed in place and cut at its end.
        let small = root.join("small");
        let mut tiny = cairn_tests::random_bytes(1000, 12);
        fs::write(&small, &tiny)?;
        fallocate(&root, &["-p", "-o", "100", "-l", "100"], "small")?
            .map_err(anyhow::Error::msg)?;
        fallocate(&root, &["-p", "-o", "900", "-l", "5000"], "small")?
            .map_err(anyhow::Error::msg)?;
        tiny[100..200].fill(0);
        tiny[900..].fill(0);
        assert_eq!(fs::read(&small)?, tiny);
        Ok(model)
    })
    .await??;
    // Another client reads what the mount left.
    let got = cairn_tests::read_file(&cluster.client(), "/f").await?;
    assert!(got == model, "another client reads other bytes");
    drop(mount);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fallocate_allocates_punches_and_zeroes_ranges() -> anyhow::Result<()> {
    fallocate_scenario(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fallocate_punch_wins_over_staged_writeback_writes() -> anyhow::Result<()> {
    fallocate_scenario(&["--writeback"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn o_tmpfile_fails_cleanly_and_programs_fall_back() -> anyhow::Result<()> {
    on_mount(|root| {
        // Linux's FUSE sends O_TMPFILE as FUSE_TMPFILE (opcode 51, protocol
        // 7.37), which fuser does not decode: it answers ENOSYS, and the
        // kernel turns that into EOPNOTSUPP (remembered for the mount).
        // Asked twice: the second answer comes from the kernel's memory.
        let script = r#"
import errno, os, tempfile
out = []
for _ in range(2):
    try:
        os.close(os.open(".", os.O_TMPFILE | os.O_RDWR, 0o600))
        out.append("opened")
    except OSError as e:
        # ENOTSUP and EOPNOTSUPP are one number on Linux.
        out.append("EOPNOTSUPP" if e.errno == errno.EOPNOTSUPP else errno.errorcode[e.errno])
# tempfile tries O_TMPFILE first, then falls back to a named file it unlinks.
with tempfile.TemporaryFile(dir=".") as f:
    f.write(b"scratch")
    f.seek(0)
    out.append(f.read().decode())
print(" ".join(out))
"#;
        let out = run("python3", &["-c", script], &root)?;
        assert_eq!(out.trim(), "EOPNOTSUPP EOPNOTSUPP scratch");
        // Nothing was left behind by the refused opens or the fallback.
        let left: Vec<_> = fs::read_dir(&root)?.collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        Ok(())
    })
    .await
}
