//! POSIX conformance: the `pjdfstest` suite (the Rust port, crates.io
//! `pjdfstest`) run as root on a real FUSE mount of a real cluster, once on a
//! mount where the kernel checks permissions (`--permissions kernel`) and once
//! on one where Cairn does (`--permissions cairn`).
//!
//! Tests that Cairn does not pass yet are listed, each with its reason, in
//! `tests/pjdfstest-exclusions.txt` (both mounts) and
//! `tests/pjdfstest-exclusions-cairn.txt` (the `cairn` mount only); they run
//! as pjdfstest's "expected failures". Any other failure fails the test, and
//! so does an excluded test that now passes (remove it from the list) or a
//! name the suite does not run.
//! The binary is `PJDFSTEST` or /var/cache/cairn-tools/bin/pjdfstest
//! (`scripts/setup.sh` installs it); without it this test fails, it never skips.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;

use cairn_tests::Cluster;
use cairn_tests::Mount;
use cairn_tests::Spec;

/// Where `scripts/setup.sh` installs pjdfstest.
const DEFAULT_PJDFSTEST: &str = "/var/cache/cairn-tools/bin/pjdfstest";
/// The whole suite takes one to three minutes on two cores.
const SUITE_TIMEOUT: Duration = Duration::from_secs(8 * 60);
/// Users (with their primary group) pjdfstest switches to; both exist on every
/// Debian system (base-passwd).
const DUMMY_USERS: [&str; 2] = ["nobody", "daemon"];

/// Excluded test names from exclusion lists in `tests/`: one `name # reason`
/// per line; blank lines and lines starting with `#` are comments. A name
/// without a reason is an error.
fn exclusions(lists: &[&str]) -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for list in lists {
        read_exclusions(list, &mut names)?;
    }
    Ok(names)
}

fn read_exclusions(list: &str, names: &mut BTreeSet<String>) -> anyhow::Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(list);
    let text = fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(" # ") {
            Some((name, reason)) if !name.trim().contains(' ') && !reason.trim().is_empty() => {
                names.insert(name.trim().to_string());
            }
            _ => bail!(
                "{}:{}: expected `<test name> # <reason>`, got {line:?}",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(())
}

/// The primary group of `user`, from /etc/passwd and /etc/group.
fn primary_group(user: &str) -> anyhow::Result<String> {
    let passwd = fs::read_to_string("/etc/passwd")?;
    let gid = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&user))
        .and_then(|f| f.get(3).map(|g| g.to_string()))
        .with_context(|| format!("pjdfstest needs the user {user}"))?;
    let group = fs::read_to_string("/etc/group")?;
    group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&gid.as_str()))
        .and_then(|f| f.first().map(|n| n.to_string()))
        .with_context(|| format!("no group with gid {gid} (primary group of {user})"))
}

/// pjdfstest's configuration: the Linux features a FUSE mount has, the dummy
/// users, and the exclusions as expected failures.
fn config(excluded: &BTreeSet<String>) -> anyhow::Result<String> {
    let mut entries = Vec::new();
    for user in DUMMY_USERS {
        entries.push(format!("[{user:?}, {:?}]", primary_group(user)?));
    }
    let expected: Vec<String> = excluded.iter().map(|n| format!("{n:?}")).collect();
    Ok(format!(
        "[features]\n\
         posix_fallocate = {{}}\n\
         rename_ctime = {{}}\n\
         utime_now = {{}}\n\
         utimensat = {{}}\n\
         \n\
         [settings]\n\
         # Cairn keeps nanosecond timestamps.\n\
         naptime = 0.001\n\
         expected_failures = [{}]\n\
         \n\
         [dummy_auth]\n\
         entries = [{}]\n",
        expected.join(", "),
        entries.join(", ")
    ))
}

/// Every test's outcome from pjdfstest's output (`<name> <outcome>` lines),
/// with the message lines printed under a failure.
fn outcomes(output: &str) -> BTreeMap<String, (String, String)> {
    const OUTCOMES: [&str; 5] = [
        "ok",
        "skipped",
        "FAILED",
        "failed as expected",
        "PASSED UNEXPECTEDLY",
    ];
    let mut out: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in output.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, detail)) = last.as_ref().and_then(|n| out.get_mut(n)) {
                if detail.lines().count() < 4 && !line.trim().is_empty() {
                    detail.push_str(line.trim());
                    detail.push('\n');
                }
            }
            continue;
        }
        last = None;
        let line = line.trim_end();
        for outcome in OUTCOMES {
            if let Some(name) = line.strip_suffix(outcome) {
                let name = name.trim_end();
                if !name.is_empty() && !name.contains(' ') && name.contains("::") {
                    out.insert(name.to_string(), (outcome.to_string(), String::new()));
                    last = Some(name.to_string());
                }
                break;
            }
        }
    }
    out
}

/// One run of the suite: how the mount is made and what is excluded.
struct Run {
    /// `cairn mount` arguments besides --allow-other.
    mount_args: &'static [&'static str],
    /// Exclusion lists (in `tests/`) that apply.
    exclusions: &'static [&'static str],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pjdfstest_passes_on_a_mount() -> anyhow::Result<()> {
    run_suite(Run {
        mount_args: &["--permissions", "kernel"],
        exclusions: &["pjdfstest-exclusions.txt"],
    })
    .await
}

/// The whole suite again where Cairn checks permissions itself: every
/// EACCES/EPERM case of pjdfstest then exercises `fuse/src/access.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pjdfstest_passes_with_cairn_permission_checks() -> anyhow::Result<()> {
    run_suite(Run {
        mount_args: &["--permissions", "cairn"],
        exclusions: &["pjdfstest-exclusions.txt", "pjdfstest-exclusions-cairn.txt"],
    })
    .await
}

async fn run_suite(suite: Run) -> anyhow::Result<()> {
    let bin = std::env::var_os("PJDFSTEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PJDFSTEST));
    if !bin.exists() {
        bail!(
            "pjdfstest not found at {}: run scripts/setup.sh (it installs it), \
             or set PJDFSTEST to its path",
            bin.display()
        );
    }
    // pjdfstest covers ownership, permissions and user switching only as root.
    // (/proc/self belongs to the process's effective user.)
    let me = fs::metadata("/proc/self")?;
    if std::os::unix::fs::MetadataExt::uid(&me) != 0 {
        bail!("pjdfstest must run as root (it changes owners and switches users)");
    }
    let excluded = exclusions(suite.exclusions)?;

    let cluster = Cluster::start(Spec::one_data_server()).await?;
    // The dummy users must reach the mount point through the cluster's folder.
    fs::set_permissions(cluster.dir.path(), fs::Permissions::from_mode(0o755))?;
    // Other users may use the mount: pjdfstest switches to them.
    let mut args = vec!["--allow-other"];
    args.extend(suite.mount_args);
    let mount = Mount::start_with(&cluster, "mnt", &args).await?;
    let work = mount.path.join("pjdfstest");
    fs::create_dir(&work)?;
    fs::set_permissions(&work, fs::Permissions::from_mode(0o755))?;
    // A distinct file system for the EXDEV tests: the cluster's own folder.
    let other_fs = cluster.dir.path().join("other-fs");
    fs::create_dir(&other_fs)?;
    fs::set_permissions(&other_fs, fs::Permissions::from_mode(0o755))?;
    let config_path = cluster.dir.path().join("pjdfstest.toml");
    fs::write(&config_path, config(&excluded)?)?;

    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("-c")
        .arg(&config_path)
        .arg("-p")
        .arg(&work)
        .arg("-s")
        .arg(&other_fs)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let run = tokio::time::timeout(SUITE_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("pjdfstest ran past {SUITE_TIMEOUT:?}"))??;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    // The whole report, shown by the test runner when this test fails.
    println!("{stdout}");

    let results = outcomes(&stdout);
    let count = |o: &str| results.values().filter(|(x, _)| x == o).count();
    let summary = format!(
        "pjdfstest ({}): {} tests in {:.0?}: {} ok, {} skipped, {} failed, {} excluded (failed as expected)",
        suite.mount_args.join(" "),
        results.len(),
        elapsed,
        count("ok"),
        count("skipped"),
        count("FAILED"),
        count("failed as expected"),
    );
    println!("{summary}");
    if results.is_empty() || !stdout.contains("Summary:") {
        bail!(
            "pjdfstest ran no test ({}):\n{stdout}\n{stderr}",
            run.status
        );
    }

    let mut problems = Vec::new();
    for (name, (outcome, detail)) in &results {
        match outcome.as_str() {
            "FAILED" => problems.push(format!("FAILED {name}\n    {}", detail.trim())),
            "PASSED UNEXPECTEDLY" => problems.push(format!(
                "{name} passes now: remove it from its list in tests/ ({})",
                suite.exclusions.join(", ")
            )),
            _ => {}
        }
    }
    for name in excluded.iter().filter(|n| !results.contains_key(*n)) {
        problems.push(format!(
            "{name} (excluded in tests/: {}) is not a test pjdfstest ran",
            suite.exclusions.join(", ")
        ));
    }
    if !problems.is_empty() {
        bail!(
            "{summary}\n{} problem(s) (pjdfstest's report is in the output above):\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
    if !run.status.success() {
        bail!(
            "pjdfstest exited with {} but no test failed:\n{stderr}",
            run.status
        );
    }
    drop(mount);
    Ok(())
}
