//! Permission checks through real mounts, as an unprivileged user: the same
//! scenario on a mount where the kernel checks (`--permissions kernel`, with
//! `default_permissions`) and on one where Cairn does (`--permissions cairn`,
//! without it, so every denial there comes from `fuse/src/access.rs`). Both
//! must answer what POSIX (and Linux) answer.
//!
//! Commands run as nobody (uid and gid 65534) through `setpriv`, with the
//! supplementary groups each step names; errors are read from the tools'
//! messages (`LC_ALL=C`).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::bail;
use anyhow::Context;

use cairn_tests::Cluster;
use cairn_tests::Mount;
use cairn_tests::Spec;

const NOBODY: u32 = 65534;
/// daemon, another user than nobody.
const DAEMON: u32 = 1;
/// A group nobody is in only when a step gives it with `--groups`.
const STAFF: u32 = 4242;

/// What a command run as nobody did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Exit 0, with this stdout.
    Ok(String),
    /// The tool reported this errno (EACCES or EPERM).
    Denied(i32),
}

fn ok(out: &str) -> Outcome {
    Outcome::Ok(out.to_string())
}

const EACCES: Outcome = Outcome::Denied(libc::EACCES);
const EPERM: Outcome = Outcome::Denied(libc::EPERM);

/// Runs `script` with `sh` in `dir` as nobody, in the supplementary `groups`.
fn nobody(dir: &Path, groups: &[u32], script: &str) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    let out = cmd
        .args(["--", "sh", "-c", script])
        .current_dir(dir)
        .env("LC_ALL", "C")
        .output()
        .context("running setpriv (util-linux)")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return Ok(Outcome::Ok(stdout));
    }
    if stderr.contains("Permission denied") {
        return Ok(EACCES);
    }
    if stderr.contains("Operation not permitted") {
        return Ok(EPERM);
    }
    bail!(
        "`{script}` as nobody failed otherwise ({}): {stderr}",
        out.status
    )
}

fn write(path: &Path, data: &str, mode: u32, uid: u32, gid: u32) -> anyhow::Result<()> {
    fs::write(path, data)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    // After chown, which may clear set-id bits.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn mkdir(path: &Path, mode: u32, uid: u32, gid: u32) -> anyhow::Result<()> {
    fs::create_dir(path)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(fs::metadata(path)?.mode() & 0o7777)
}

/// The scenario, set up by root in `base` (a fresh directory) and checked as
/// nobody. `what` names the mount in failure messages.
fn scenario(base: &Path, what: &str) -> anyhow::Result<()> {
    mkdir(base, 0o755, 0, 0)?;
    let run = |groups: &[u32], script: &str| -> anyhow::Result<Outcome> {
        nobody(base, groups, script).with_context(|| format!("{what}: `{script}`"))
    };
    let check = |groups: &[u32], script: &str, want: Outcome| -> anyhow::Result<()> {
        let got = run(groups, script)?;
        anyhow::ensure!(
            got == want,
            "{what}: `{script}` as nobody (groups {groups:?}): got {got:?}, want {want:?}"
        );
        Ok(())
    };

    // Read permission: a 0600 root file is EACCES, a 0644 one is readable.
    write(&base.join("secret"), "s", 0o600, 0, 0)?;
    write(&base.join("open"), "o", 0o644, 0, 0)?;
    check(&[], "cat secret", EACCES)?;
    check(&[], "cat open", ok("o"))?;
    check(&[], "echo x > open", EACCES)?;
    check(&[], "truncate -s 0 open", EACCES)?;
    check(
        &[],
        "env test -r open && env test ! -w open && echo r",
        ok("r\n"),
    )?;
    check(&[], "env test -r secret || echo no", ok("no\n"))?;
    assert_eq!(fs::read(base.join("open"))?, b"o", "{what}");

    // Write and search permission on directories.
    check(&[], "touch new", EACCES)?;
    check(&[], "mkdir newdir", EACCES)?;
    check(&[], "ln -s open link", EACCES)?;
    check(&[], "rm -f open", EACCES)?;
    check(&[], "mv open moved", EACCES)?;
    mkdir(&base.join("closed"), 0o700, 0, 0)?;
    write(&base.join("closed/f"), "c", 0o644, 0, 0)?;
    check(&[], "cat closed/f", EACCES)?;
    check(&[], "ls closed", EACCES)?;
    mkdir(&base.join("search-only"), 0o711, 0, 0)?;
    write(&base.join("search-only/f"), "x", 0o644, 0, 0)?;
    check(&[], "ls search-only", EACCES)?;
    check(&[], "cat search-only/f", ok("x"))?;

    // A sticky, world-writable directory: nobody's files are its own to
    // remove, daemon's are not.
    mkdir(&base.join("tmp"), 0o1777, 0, 0)?;
    write(&base.join("tmp/daemons"), "d", 0o666, DAEMON, DAEMON)?;
    check(&[], "rm -f tmp/daemons", EPERM)?;
    check(&[], "mv tmp/daemons tmp/taken", EPERM)?;
    check(
        &[],
        "echo mine > tmp/daemons && cat tmp/daemons",
        ok("mine\n"),
    )?;
    check(
        &[],
        "touch tmp/mine && mv tmp/mine tmp/mine2 && rm tmp/mine2",
        ok(""),
    )?;
    assert!(base.join("tmp/daemons").exists(), "{what}");

    // Supplementary groups grant the group's bits.
    write(&base.join("staff"), "g", 0o640, 0, STAFF)?;
    mkdir(&base.join("staff-dir"), 0o770, 0, STAFF)?;
    check(&[], "cat staff", EACCES)?;
    check(&[STAFF], "cat staff", ok("g"))?;
    check(&[7, STAFF], "cat staff", ok("g"))?;
    check(&[STAFF], "env test -r staff && echo r", ok("r\n"))?;
    check(&[], "touch staff-dir/f", EACCES)?;
    check(&[STAFF], "touch staff-dir/f && ls staff-dir", ok("f\n"))?;

    // Ownership: chmod by the owner only; chown by root only; chgrp by the
    // owner to its groups; S_ISGID dropped for a chmod outside the group.
    write(&base.join("mine"), "m", 0o644, NOBODY, NOBODY)?;
    check(&[], "chmod 600 mine", ok(""))?;
    assert_eq!(mode(&base.join("mine"))?, 0o600, "{what}");
    check(&[], "chmod 666 open", EPERM)?;
    check(&[], "chown 1 mine", EPERM)?;
    check(&[], "chgrp 4242 mine", EPERM)?;
    check(&[STAFF], "chgrp 4242 mine", ok(""))?;
    assert_eq!(fs::metadata(base.join("mine"))?.gid(), STAFF, "{what}");
    check(&[], "chmod 2755 mine", ok(""))?;
    assert_eq!(mode(&base.join("mine"))?, 0o755, "{what}: S_ISGID kept");
    check(&[STAFF], "chmod 2755 mine", ok(""))?;
    assert_eq!(mode(&base.join("mine"))?, 0o2755, "{what}: S_ISGID cleared");

    // Times: "now" needs write permission, explicit times ownership.
    write(&base.join("shared"), "", 0o666, 0, 0)?;
    check(&[], "touch shared", ok(""))?;
    check(&[], "touch -d @0 shared", EPERM)?;
    check(&[], "touch open", EACCES)?;
    check(&[], "touch -d @0 mine", ok(""))?;
    assert_eq!(fs::metadata(base.join("mine"))?.mtime(), 0, "{what}");

    // A write by another user clears S_ISUID and S_ISGID (the latter with
    // group exec), as the kernel does with default_permissions.
    write(&base.join("setid"), "", 0o6777, 0, 0)?;
    check(&[], "echo x >> setid", ok(""))?;
    assert_eq!(
        mode(&base.join("setid"))?,
        0o777,
        "{what}: set-id bits kept"
    );

    // Exec needs x, not r: an execute-only program runs.
    let exe = base.join("exe");
    fs::copy("/bin/true", &exe)?;
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o711))?;
    check(&[], "./exe && echo ran", ok("ran\n"))?;
    check(&[], "cat exe > /dev/null", EACCES)?;

    // A directory moved to another parent needs write permission on itself.
    mkdir(&base.join("a"), 0o777, 0, 0)?;
    mkdir(&base.join("b"), 0o777, 0, 0)?;
    mkdir(&base.join("a/sub"), 0o555, NOBODY, NOBODY)?;
    check(&[], "mv a/sub b/sub", EACCES)?;
    check(&[], "mv a/sub a/renamed && ls a", ok("renamed\n"))?;
    Ok(())
}

/// `default_permissions` in the mount's options in /proc/mounts.
fn has_default_permissions(path: &Path) -> anyhow::Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    let path = path.to_string_lossy();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(path.as_ref()))
        .with_context(|| format!("{path} is not mounted"))?;
    let options = line.split(' ').nth(3).unwrap_or_default();
    Ok(options.split(',').any(|o| o == "default_permissions"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unprivileged_users_get_posix_permissions_in_both_modes() -> anyhow::Result<()> {
    let me = fs::metadata("/proc/self")?;
    if me.uid() != 0 {
        bail!("this test must run as root (it switches to nobody with setpriv)");
    }
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    // nobody must reach the mount points through the cluster's folder.
    fs::set_permissions(cluster.dir.path(), fs::Permissions::from_mode(0o755))?;
    let kernel = Mount::start_with(
        &cluster,
        "kernel",
        &["--allow-other", "--permissions", "kernel"],
    )
    .await?;
    let cairn = Mount::start_with(
        &cluster,
        "cairn",
        &["--allow-other", "--permissions", "cairn"],
    )
    .await?;
    assert!(has_default_permissions(&kernel.path)?);
    assert!(!has_default_permissions(&cairn.path)?);
    let (k, c) = (kernel.path.clone(), cairn.path.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        // Both mounts show one namespace: each gets its own directory.
        scenario(&k.join("kernel-checks"), "--permissions kernel")?;
        scenario(&c.join("cairn-checks"), "--permissions cairn")
    })
    .await??;
    drop(cairn);
    drop(kernel);
    Ok(())
}
