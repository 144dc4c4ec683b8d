//! `cairn mount -d`: returns once the mount is up with the daemon's PID, logs
//! to its file, serves `/metrics` and `/health`, and exits when unmounted; a
//! mount that cannot start fails the command promptly and leaves no process.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;

use cairn_tests::cairn_bin;
use cairn_tests::free_port;
use cairn_tests::http_get;
use cairn_tests::is_mounted;
use cairn_tests::kill_pid;
use cairn_tests::parse_metrics;
use cairn_tests::pid_alive;
use cairn_tests::processes_mentioning;
use cairn_tests::random_bytes;
use cairn_tests::wait_for;
use cairn_tests::Cluster;
use cairn_tests::Spec;

/// Runs `cairn mount -d ... PATH` to its end (the daemon outlives it).
async fn mount_daemon(meta: &str, args: Vec<String>) -> anyhow::Result<Output> {
    let bin = cairn_bin()?;
    let meta = meta.to_string();
    tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["mount", "-d"])
            .args(args)
            .env("CAIRN_META", meta)
            .stdin(Stdio::null())
            .output()
            .context("running cairn mount -d")
    })
    .await?
}

/// The daemon of a test: unmounted and SIGKILLed by PID at the end, whatever
/// happened.
struct Daemon {
    pid: u32,
    path: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.path)
                .status();
        }
        kill_pid(self.pid);
    }
}

fn pid_from(stdout: &str) -> anyhow::Result<u32> {
    let (_, rest) = stdout
        .split_once("daemon pid ")
        .with_context(|| format!("no pid in {stdout:?}"))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Ok(digits.parse()?)
}

async fn scrape(addr: &str) -> anyhow::Result<HashMap<String, f64>> {
    let (status, body) = http_get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
    parse_metrics(&body)
}

/// How much `series` grew between two scrapes (absent counts as 0).
fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

/// Reads a file with O_DIRECT (past the kernel's page cache, so every read
/// is a FUSE read) in sequential 64 KiB requests.
fn read_direct(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_mount_logs_serves_metrics_and_exits_at_umount() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let dir = cluster.dir.path().to_path_buf();
    let mnt = dir.join("mnt");
    let log = dir.join("logs/mount.log");
    let addr = format!("127.0.0.1:{}", free_port()?);
    let args: Vec<String> = vec![
        "--entry-timeout-ms".into(),
        "0".into(),
        "--attr-timeout-ms".into(),
        "0".into(),
        "--log-file".into(),
        log.display().to_string(),
        "--metrics".into(),
        addr.clone(),
        "--cache-dir".into(),
        dir.join("cache").display().to_string(),
        mnt.display().to_string(),
    ];
    let out = mount_daemon(&cluster.meta_addrs().join(","), args).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let daemon = Daemon {
        pid: pid_from(&stdout)?,
        path: mnt.clone(),
    };
    // The command returned with the mount up and served by the daemon.
    assert!(is_mounted(&mnt), "{stdout}");
    assert!(pid_alive(daemon.pid));
    assert!(stdout.contains(&log.display().to_string()), "{stdout}");

    assert_eq!(http_get(&addr, "/health").await?, (200, "ok".to_string()));
    let before = scrape(&addr).await?;

    // Three blocks (4 MiB each in the test cluster), the last one partial.
    let n = (9 << 20) + 5;
    let data = random_bytes(n, 77);
    let (root, expected) = (mnt.clone(), data.clone());
    let missing_errno = tokio::task::spawn_blocking(move || -> anyhow::Result<i32> {
        std::fs::write(root.join("f"), &expected)?;
        // Read twice past the page cache: the first fills the local cache
        // from the data server, the second is served from it.
        assert!(read_direct(&root.join("f"))? == expected);
        assert!(read_direct(&root.join("f"))? == expected);
        let err = std::fs::metadata(root.join("missing")).unwrap_err();
        Ok(err.raw_os_error().unwrap_or(0))
    })
    .await??;
    assert_eq!(missing_errno, libc::ENOENT);
    let after = scrape(&addr).await?;
    let d = |series: &str| delta(&before, &after, series);
    let n = n as f64;
    assert_eq!(d("cairn_fuse_ops_total{op=\"create\",result=\"ok\"}"), 1.0);
    assert_eq!(
        d("cairn_fuse_op_duration_seconds_count{op=\"create\"}"),
        1.0
    );
    // The kernel splits the write into requests of at most 1 MiB.
    assert!(d("cairn_fuse_ops_total{op=\"write\",result=\"ok\"}") >= 10.0);
    assert!(d("cairn_fuse_ops_total{op=\"lookup\",result=\"ENOENT\"}") >= 1.0);
    assert_eq!(d("cairn_fuse_written_bytes_total"), n);
    assert_eq!(d("cairn_fuse_read_bytes_total"), 2.0 * n);
    // One miss per block, then one hit per block, serving the whole file.
    assert_eq!(d("cairn_cache_misses_total"), 3.0);
    assert_eq!(d("cairn_cache_inserts_total"), 3.0);
    assert_eq!(d("cairn_cache_hits_total"), 3.0);
    assert_eq!(d("cairn_cache_served_bytes_total"), n);
    assert_eq!(after.get("cairn_cache_blocks"), Some(&3.0));
    // The kernel sends release after close returns: in flight for a moment.
    let a = addr.clone();
    wait_for("no request in flight", Duration::from_secs(10), || {
        let a = a.clone();
        async move {
            let m = scrape(&a).await.unwrap_or_default();
            m.get("cairn_fuse_ops_in_flight") == Some(&0.0)
        }
    })
    .await?;

    // The log file has the daemon's structured logs.
    let text = std::fs::read_to_string(&log)?;
    assert!(text.contains("mounted"), "{text}");
    assert!(text.contains(&format!("pid={}", daemon.pid)), "{text}");

    // `cairn umount` unmounts; the daemon then exits by itself.
    let umount = Command::new(cairn_bin()?)
        .arg("umount")
        .arg(&mnt)
        .output()?;
    assert!(
        umount.status.success(),
        "{}",
        String::from_utf8_lossy(&umount.stderr)
    );
    let pid = daemon.pid;
    wait_for(
        "the daemon to exit",
        Duration::from_secs(30),
        || async move { !pid_alive(pid) },
    )
    .await?;
    assert!(!is_mounted(&mnt));
    assert!(
        http_get(&addr, "/health").await.is_err(),
        "metrics outlived the daemon"
    );
    let text = std::fs::read_to_string(&log)?;
    assert!(text.contains("mount process exits"), "{text}");
    drop(daemon);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_that_cannot_start_fails_promptly_and_leaves_no_process() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("cairn-test-daemon-")
        .tempdir()?;
    let log = dir.path().join("mount.log");

    // No metadata server listens there.
    let nobody = format!("127.0.0.1:{}", free_port()?);
    let mnt = dir.path().join("unreachable");
    let started = Instant::now();
    let out = mount_daemon(
        &nobody,
        vec![
            "--connect-timeout-ms".into(),
            "1000".into(),
            "--log-file".into(),
            log.display().to_string(),
            mnt.display().to_string(),
        ],
    )
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(stderr.contains("exited"), "{stderr}");
    assert!(
        stderr.contains(&nobody),
        "the log tail names the cause: {stderr}"
    );
    assert!(!is_mounted(&mnt));
    let pid = pid_from(&stderr.replace("daemon (pid ", "daemon pid "))?;
    assert!(!pid_alive(pid));
    assert_eq!(
        processes_mentioning(&mnt.display().to_string()),
        Vec::<u32>::new()
    );

    // The mount point cannot be created (below a regular file).
    std::fs::write(dir.path().join("file"), b"x")?;
    let mnt = dir.path().join("file/mnt");
    let started = Instant::now();
    let out = mount_daemon(
        &nobody,
        vec![
            "--log-file".into(),
            log.display().to_string(),
            mnt.display().to_string(),
        ],
    )
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(stderr.contains("creating"), "{stderr}");
    assert!(stderr.contains("Not a directory"), "{stderr}");
    assert_eq!(
        processes_mentioning(&mnt.display().to_string()),
        Vec::<u32>::new()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writeback_metrics_follow_staging_and_upload() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let dir = cluster.dir.path().to_path_buf();
    let mnt = dir.join("wb");
    let addr = format!("127.0.0.1:{}", free_port()?);
    let args: Vec<String> = vec![
        "--log-file".into(),
        dir.join("wb.log").display().to_string(),
        "--metrics".into(),
        addr.clone(),
        "--cache-dir".into(),
        dir.join("cache").display().to_string(),
        "--writeback".into(),
        mnt.display().to_string(),
    ];
    let out = mount_daemon(&cluster.meta_addrs().join(","), args).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = Daemon {
        pid: pid_from(&stdout)?,
        path: mnt.clone(),
    };
    let before = scrape(&addr).await?;
    let n = (5 << 20) + 3;
    let data = random_bytes(n, 78);
    let root = mnt.clone();
    tokio::task::spawn_blocking(move || std::fs::write(root.join("ckpt"), &data)).await??;
    let n = n as f64;
    let after = scrape(&addr).await?;
    assert_eq!(
        delta(&before, &after, "cairn_writeback_staged_bytes_total"),
        n
    );
    // The uploader drains the backlog in the background.
    let a = addr.clone();
    wait_for(
        "the write-back backlog to drain",
        Duration::from_secs(30),
        || {
            let a = a.clone();
            async move {
                let m = scrape(&a).await.unwrap_or_default();
                m.get("cairn_writeback_backlog_logs") == Some(&0.0)
                    && m.get("cairn_writeback_uploaded_bytes_total") == Some(&n)
            }
        },
    )
    .await?;
    let m = scrape(&addr).await?;
    assert_eq!(m.get("cairn_writeback_backlog_bytes"), Some(&0.0));
    assert_eq!(m.get("cairn_writeback_dropped_logs_total"), Some(&0.0));
    // What was uploaded is in the cluster.
    let back = cairn_tests::read_file(&cluster.client(), "/ckpt").await?;
    assert!(back == random_bytes(n as usize, 78));
    drop(daemon);
    Ok(())
}
