//! POSIX through a real FUSE mount (`cairn mount`, a separate process) of a real
//! multi-process cluster, and close-to-open consistency between two mounts.

use std::fs;
use std::fs::OpenOptions;
use std::io::Read;
use std::io::Seek;
use std::io::SeekFrom;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sha2::Digest;
use sha2::Sha256;

use cairn_tests::random_bytes;
use cairn_tests::wait_for;
use cairn_tests::Cluster;
use cairn_tests::Mount;
use cairn_tests::Spec;

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posix_operations_through_a_mount() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::default()).await?;
    let mount = Mount::start(&cluster, "mnt").await?;
    let root = mount.path.clone();
    // Blocking file-system calls run off the test's runtime threads.
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let dir = root.join("a/b");
        fs::create_dir_all(&dir)?;
        // Write, read back, append, overwrite in the middle.
        let f = dir.join("f");
        fs::write(&f, b"hello world")?;
        assert_eq!(fs::read(&f)?, b"hello world");
        OpenOptions::new().append(true).open(&f)?.write_all(b"!")?;
        let mut h = OpenOptions::new().write(true).open(&f)?;
        h.seek(SeekFrom::Start(6))?;
        h.write_all(b"WORLD")?;
        drop(h);
        assert_eq!(fs::read(&f)?, b"hello WORLD!");
        // O_EXCL, truncate, chmod.
        let again = OpenOptions::new().write(true).create_new(true).open(&f);
        assert_eq!(errno_of(&again.unwrap_err()), libc::EEXIST);
        OpenOptions::new().write(true).open(&f)?.set_len(5)?;
        assert_eq!(fs::read(&f)?, b"hello");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640))?;
        assert_eq!(fs::metadata(&f)?.mode() & 0o7777, 0o640);
        // Links, renames, listing.
        fs::hard_link(&f, root.join("a/hard"))?;
        assert_eq!(fs::metadata(&f)?.nlink(), 2);
        std::os::unix::fs::symlink("b/f", root.join("a/sym"))?;
        assert_eq!(fs::read_link(root.join("a/sym"))?, Path::new("b/f"));
        assert_eq!(fs::read(root.join("a/sym"))?, b"hello");
        fs::rename(&dir, root.join("a/c"))?;
        let mut names: Vec<String> = fs::read_dir(root.join("a"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        assert_eq!(names, ["c", "hard", "sym"]);
        let err = fs::remove_dir(root.join("a/c")).unwrap_err();
        assert_eq!(errno_of(&err), libc::ENOTEMPTY);
        // A sparse file: the hole reads as zeros.
        let sparse = root.join("sparse");
        let mut h = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&sparse)?;
        h.seek(SeekFrom::Start(10 << 20))?;
        h.write_all(b"end")?;
        drop(h);
        let data = fs::read(&sparse)?;
        assert_eq!(data.len(), (10 << 20) + 3);
        assert!(data[..10 << 20].iter().all(|b| *b == 0));
        // A 24 MiB file over several blocks, byte for byte.
        let big = random_bytes(24 << 20, 5);
        fs::write(root.join("big"), &big)?;
        assert_eq!(
            Sha256::digest(fs::read(root.join("big"))?),
            Sha256::digest(&big)
        );
        // Unlink while open: the open descriptor still reads the data.
        let mut open = fs::File::open(root.join("big"))?;
        fs::remove_file(root.join("big"))?;
        assert!(!root.join("big").exists());
        let mut back = Vec::new();
        open.read_to_end(&mut back)?;
        assert_eq!(back.len(), big.len());
        drop(open);
        // Cleanup through the mount.
        fs::remove_dir_all(root.join("a"))?;
        fs::remove_file(&sparse)?;
        assert_eq!(fs::read_dir(&root)?.count(), 0);
        Ok(())
    })
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_to_open_between_two_mounts() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let a = Mount::start(&cluster, "a").await?;
    let b = Mount::start(&cluster, "b").await?;
    let (pa, pb) = (a.path.clone(), b.path.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        fs::write(pa.join("f"), b"first version")?;
        assert_eq!(fs::read(pb.join("f"))?, b"first version");
        fs::write(pa.join("f"), b"second, longer version")?;
        assert_eq!(fs::read(pb.join("f"))?, b"second, longer version");
        fs::rename(pa.join("f"), pa.join("g"))?;
        assert!(!pb.join("f").exists());
        assert_eq!(fs::read(pb.join("g"))?, b"second, longer version");
        fs::remove_file(pb.join("g"))?;
        assert!(!pa.join("g").exists());
        Ok(())
    })
    .await??;
    drop(b);
    drop(a);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_carry_attributes() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    // Kernel caches on, as in production: readdirplus answers fill them.
    let metrics = format!("127.0.0.1:{}", cairn_tests::free_port()?);
    let mount = Mount::start_with(
        &cluster,
        "mnt",
        &[
            "--entry-timeout-ms",
            "10000",
            "--attr-timeout-ms",
            "10000",
            "--metrics",
            &metrics,
        ],
    )
    .await?;
    let root = mount.path.clone();
    let before = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (addr, snapshot) = (metrics.clone(), before.clone());
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let dir = root.join("data");
        fs::create_dir(&dir)?;
        let mut expected = Vec::new();
        for i in 0..300usize {
            let name = format!("f{i:03}");
            let data = random_bytes(i * 37, i as u64);
            fs::write(dir.join(&name), &data)?;
            expected.push((name, data.len() as u64, false));
        }
        // Subdirectories live on other shards: their attributes come apart.
        for i in 0..5 {
            let name = format!("sub{i}");
            fs::create_dir(dir.join(&name))?;
            fs::set_permissions(dir.join(&name), fs::Permissions::from_mode(0o750))?;
            expected.push((name, 0, true));
        }
        // A file this mount is writing: the listing shows what was written.
        let mut open = fs::File::create(dir.join("open"))?;
        open.write_all(&[7u8; 1234])?;
        expected.push(("open".into(), 1234, false));
        expected.sort();
        // A fresh view for the kernel: what it knows of the names now comes
        // from the listing.
        fs::write("/proc/sys/vm/drop_caches", "2")?;
        *snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle.block_on(scrape(&addr))?);
        let mut listed = Vec::new();
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let meta = e.metadata()?;
            let name = e.file_name().to_string_lossy().into_owned();
            let len = if meta.is_dir() { 0 } else { meta.len() };
            if meta.is_dir() {
                assert_eq!(meta.mode() & 0o7777, 0o750, "{name}");
                assert_eq!(meta.nlink(), 2, "{name}");
            }
            listed.push((name, len, meta.is_dir()));
        }
        listed.sort();
        assert_eq!(listed, expected);
        drop(open);
        Ok(())
    })
    .await??;
    // `ls -l` of 306 entries: one readdirplus per few dozen entries, not a
    // lookup and a getattr per entry.
    let after = scrape(&metrics).await?;
    let before = before.lock().unwrap_or_else(|p| p.into_inner()).take();
    let before = before.unwrap_or_default();
    let ops = |op: &str| {
        let series = format!("cairn_fuse_op_duration_seconds_count{{op=\"{op}\"}}");
        after.get(&series).copied().unwrap_or(0.0) - before.get(&series).copied().unwrap_or(0.0)
    };
    assert!(ops("readdirplus") >= 1.0, "no readdirplus");
    assert!(
        ops("lookup") + ops("getattr") < 30.0,
        "{} lookups and {} getattrs for one listing",
        ops("lookup"),
        ops("getattr")
    );
    Ok(())
}

async fn scrape(addr: &str) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let (status, body) = cairn_tests::http_get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    cairn_tests::parse_metrics(&body)
}

/// Kernel caches on, as `cairn mount` has them by default (the harness turns
/// them off): what the kernel cached must not hide a change.
const KERNEL_CACHES: [&str; 4] = ["--entry-timeout-ms", "2000", "--attr-timeout-ms", "2000"];

/// Reads `f` to its end with plain read(2) calls (`read_to_end` would fstat
/// first, which refreshes the kernel's size).
fn read_raw(f: &mut fs::File) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Writes through one descriptor, not flushed, then reads through another
/// descriptor of the same mount, and stats.
async fn own_unflushed_writes_are_read_through_another_fd(extra: &[&str]) -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let cache = cluster.dir.path().join("cache");
    let cache_arg = cache.to_string_lossy().into_owned();
    let mut args: Vec<&str> = KERNEL_CACHES.to_vec();
    args.extend_from_slice(extra);
    if extra.contains(&"--writeback") {
        args.extend_from_slice(&["--cache-dir", cache_arg.as_str()]);
    }
    let mount = Mount::start_with(&cluster, "mnt", &args).await?;
    let root = mount.path.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let path = root.join("f");
        let mut w = fs::File::create(&path)?;
        let mut r = fs::File::open(&path)?;
        w.write_all(b"hello")?;
        assert_eq!(read_raw(&mut r)?, b"hello", "fd2 reads fd1's write");
        assert_eq!(fs::metadata(&path)?.len(), 5, "stat sees fd1's write");
        assert_eq!(r.metadata()?.len(), 5, "fstat of fd2 sees fd1's write");
        // More, past a block and into the middle: fd2 reads it all from
        // the start, and so does a descriptor opened after the writes.
        let big = random_bytes(5 << 20, 11);
        w.write_all(&big)?;
        w.seek(SeekFrom::Start(3))?;
        w.write_all(b"LLO")?;
        let mut want = b"helLLO".to_vec();
        want.extend_from_slice(&big[1..]);
        r.seek(SeekFrom::Start(0))?;
        assert!(read_raw(&mut r)? == want, "fd2 reads the later writes");
        assert_eq!(fs::metadata(&path)?.len(), want.len() as u64);
        assert!(fs::read(&path)? == want, "a new descriptor reads them");
        // A write after fd2 has read is read too (fd2's reader was built).
        w.write_all(b"!")?;
        want[6] = b'!';
        let mut at = [0u8; 7];
        std::os::unix::fs::FileExt::read_exact_at(&r, &mut at, 0)?;
        assert_eq!(&at, &want[..7]);
        drop(w);
        drop(r);
        assert!(fs::read(&path)? == want);
        Ok(())
    })
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn own_unflushed_writes_are_read_through_another_fd_write_through() -> anyhow::Result<()> {
    own_unflushed_writes_are_read_through_another_fd(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn own_unflushed_writes_are_read_through_another_fd_writeback() -> anyhow::Result<()> {
    own_unflushed_writes_are_read_through_another_fd(&["--writeback"]).await
}

/// One direction of close-to-open between mounts `x` (writer) and `y`.
fn close_to_open_one_way(
    rt: &tokio::runtime::Handle,
    x: &Path,
    y: &Path,
    name: &str,
) -> anyhow::Result<()> {
    let (px, py) = (x.join(name), y.join(name));
    // y knows the file small: its page cache and attributes hold 4 KiB.
    let small = random_bytes(4 << 10, 1);
    fs::write(&px, &small)?;
    assert!(fs::read(&py)? == small);
    assert_eq!(fs::metadata(&py)?.len(), 4 << 10);
    // Rewritten larger and closed on x: an open on y reads all of it
    // (plain reads, no fstat to refresh the size first).
    let large = random_bytes(1 << 20, 2);
    fs::write(&px, &large)?;
    let got = read_raw(&mut fs::File::open(&py)?)?;
    assert_eq!(got.len(), large.len(), "open+read on the other mount");
    assert!(got == large);
    // Again, larger still: fstat right after the open shows the new size.
    let larger = random_bytes(2 << 20, 3);
    fs::write(&px, &larger)?;
    let mut f = fs::File::open(&py)?;
    assert_eq!(f.metadata()?.len(), larger.len() as u64, "open+fstat");
    assert!(read_raw(&mut f)? == larger);
    // f stays open at the end of the file; x appends and closes: f reads
    // the new bytes (as `tail -f` would) once the kernel's attributes expire.
    let appended = random_bytes(64 << 10, 4);
    fs::OpenOptions::new()
        .append(true)
        .open(&px)?
        .write_all(&appended)?;
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut failed = None;
    let waited = rt.block_on(wait_for(
        "an fd kept open to read what the other mount appended",
        Duration::from_secs(15),
        || {
            // A blocking read, on this blocking thread.
            match f.read(&mut buf) {
                Ok(n) => tail.extend_from_slice(&buf[..n]),
                Err(e) => failed = Some(e),
            }
            let done = failed.is_some() || tail.len() >= appended.len();
            async move { done }
        },
    ));
    if let Some(e) = failed {
        return Err(e.into());
    }
    waited.with_context(|| format!("read {} of {} bytes", tail.len(), appended.len()))?;
    assert!(tail == appended, "the appended bytes, exactly");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_to_open_sees_new_size_and_data_with_kernel_caches() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let a = Mount::start_with(&cluster, "a", &KERNEL_CACHES).await?;
    let b = Mount::start_with(&cluster, "b", &KERNEL_CACHES).await?;
    let (pa, pb) = (a.path.clone(), b.path.clone());
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        close_to_open_one_way(&rt, &pa, &pb, "a-to-b")?;
        close_to_open_one_way(&rt, &pb, &pa, "b-to-a")?;
        Ok(())
    })
    .await??;
    Ok(())
}
