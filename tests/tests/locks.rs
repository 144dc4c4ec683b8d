//! fcntl and flock locks across two FUSE mounts of one cluster, taken through
//! real syscalls by Python processes (one per lock owner) driven over stdin.
//! A blocked F_SETLKW or flock is observed in `/proc/<pid>/syscall`, so no
//! test waits on a timer.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::bail;
use anyhow::Context;
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::io::Lines;
use tokio::process::Child;
use tokio::process::ChildStdin;
use tokio::process::ChildStdout;

use cairn_proto::pb;
use cairn_tests::wait_for;
use cairn_tests::Cluster;
use cairn_tests::Mount;
use cairn_tests::Spec;

/// Opens argv[1] and runs one command per stdin line:
/// `set|wait r|w|u START LEN` (F_SETLK / F_SETLKW), `get r|w START LEN`
/// (F_GETLK: prints `r|w|u START LEN PID`), `ofd r|w|u START LEN`
/// (F_OFD_SETLK), `flock ex|sh|un [nb]`,
/// `dupclose` (open and close a second fd of the file), `close`.
/// Answers `ok` or `err ERRNO`.
const DRIVER: &str = r#"
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
T = {'r': fcntl.F_RDLCK, 'w': fcntl.F_WRLCK, 'u': fcntl.F_UNLCK}
N = {v: k for k, v in T.items()}
F = {'ex': fcntl.LOCK_EX, 'sh': fcntl.LOCK_SH, 'un': fcntl.LOCK_UN}
def flock_arg(c):
    return struct.pack('hhqqi4x', T[c[1]], os.SEEK_SET, int(c[2]), int(c[3]), 0)
print('ready', os.getpid(), flush=True)
for line in sys.stdin:
    c = line.split()
    try:
        if c[0] in ('set', 'wait'):
            fcntl.fcntl(fd, fcntl.F_SETLKW if c[0] == 'wait' else fcntl.F_SETLK, flock_arg(c))
            print('ok', flush=True)
        elif c[0] == 'ofd':
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, flock_arg(c))
            print('ok', flush=True)
        elif c[0] == 'get':
            t, _, s, l, pid = struct.unpack('hhqqi4x', fcntl.fcntl(fd, fcntl.F_GETLK, flock_arg(c)))
            print(N[t], s, l, pid, flush=True)
        elif c[0] == 'flock':
            fcntl.flock(fd, F[c[1]] | (fcntl.LOCK_NB if 'nb' in c else 0))
            print('ok', flush=True)
        elif c[0] == 'dupclose':
            os.close(os.open(sys.argv[1], os.O_RDWR))
            print('ok', flush=True)
        elif c[0] == 'close':
            os.close(fd)
            print('ok', flush=True)
    except OSError as e:
        print('err', e.errno, flush=True)
"#;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const SYS_FCNTL: &str = "72";
const SYS_FLOCK: &str = "73";

/// One lock owner: a Python process with the file open.
struct Owner {
    pid: u32,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl Owner {
    async fn open(path: &Path) -> anyhow::Result<Owner> {
        let mut child = tokio::process::Command::new("python3")
            .args(["-c", DRIVER])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("driver stdin")?;
        let mut lines = BufReader::new(child.stdout.take().context("driver stdout")?).lines();
        let ready = tokio::time::timeout(ANSWER_TIMEOUT, lines.next_line())
            .await
            .context("driver start")??
            .context("driver exited")?;
        let pid = match ready.split_once(' ') {
            Some(("ready", pid)) => pid.parse()?,
            _ => bail!("driver said {ready:?}"),
        };
        Ok(Owner {
            pid,
            stdin,
            lines,
            _child: child,
        })
    }

    async fn send(&mut self, cmd: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn answer(&mut self) -> anyhow::Result<String> {
        tokio::time::timeout(ANSWER_TIMEOUT, self.lines.next_line())
            .await
            .context("no answer from the lock driver")??
            .context("lock driver exited")
    }

    /// Runs a command and returns its answer.
    async fn run(&mut self, cmd: &str) -> anyhow::Result<String> {
        self.send(cmd).await?;
        self.answer().await
    }

    /// Waits until the process is blocked in the given system call.
    async fn blocked_in(&self, syscall: &str) -> anyhow::Result<()> {
        let file = format!("/proc/{}/syscall", self.pid);
        wait_for("a blocked lock call", ANSWER_TIMEOUT, || {
            let file = file.clone();
            async move {
                std::fs::read_to_string(&file).is_ok_and(|s| s.split(' ').next() == Some(syscall))
            }
        })
        .await
    }
}

impl Drop for Owner {
    /// Kills the driver and waits (briefly) until it is gone, so that its
    /// open files do not keep the mounts busy at unmount.
    fn drop(&mut self) {
        let _ = self._child.start_kill();
        let stat = format!("/proc/{}/stat", self.pid);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            match std::fs::read_to_string(&stat) {
                Ok(s) if !s.contains(") Z ") => std::thread::yield_now(),
                _ => return,
            }
        }
    }
}

const EAGAIN: &str = "err 11";

async fn two_mounts() -> anyhow::Result<(Cluster, Mount, Mount)> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let a = Mount::start(&cluster, "a").await?;
    let b = Mount::start(&cluster, "b").await?;
    Ok((cluster, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fcntl_locks_across_mounts() -> anyhow::Result<()> {
    let (cluster, a, b) = two_mounts().await?;
    tokio::fs::write(a.path.join("f"), b"locked file").await?;
    let mut pa = Owner::open(&a.path.join("f")).await?;
    let mut pb = Owner::open(&b.path.join("f")).await?;
    // A third owner on mount B, mostly for F_GETLK.
    let mut pc = Owner::open(&b.path.join("f")).await?;
    let a_pid = pa.pid;
    let held_by_a = move |start: u64, len: u64| format!("w {start} {len} {a_pid}");

    // A write lock on A keeps B out of the range, not out of the rest.
    assert_eq!(pa.run("set w 0 100").await?, "ok");
    assert_eq!(pb.run("set w 50 10").await?, EAGAIN);
    assert_eq!(pb.run("set r 99 1").await?, EAGAIN);
    assert_eq!(pb.run("get w 50 10").await?, held_by_a(0, 100));
    assert_eq!(pb.run("set w 100 50").await?, "ok");
    // Read locks share (B reads to EOF from 200, A reads 300..309), a write
    // into B's read range is refused.
    assert_eq!(pb.run("set r 200 0").await?, "ok");
    assert_eq!(pa.run("set r 300 10").await?, "ok");
    assert_eq!(pa.run("set w 300 10").await?, EAGAIN);
    assert_eq!(pc.run("get w 500 1").await?, format!("r 200 0 {}", pb.pid));

    // Same owner: touching ranges merge, and never conflict with themselves.
    assert_eq!(pa.run("set w 150 25").await?, "ok");
    assert_eq!(pa.run("set w 175 25").await?, "ok");
    assert_eq!(pa.run("set w 160 30").await?, "ok");
    assert_eq!(pc.run("get r 190 1").await?, held_by_a(150, 50));
    // An unlock in the middle splits; the hole is free for others.
    assert_eq!(pa.run("set u 20 10").await?, "ok");
    assert_eq!(pc.run("get w 0 100").await?, held_by_a(0, 20));
    assert_eq!(pc.run("get w 25 1").await?, "u 25 1 0");
    assert_eq!(pc.run("set w 20 10").await?, "ok");
    assert_eq!(pc.run("set u 20 10").await?, "ok");
    // Downgrade lets others read; upgrading back shuts them out again.
    assert_eq!(pa.run("set r 0 20").await?, "ok");
    assert_eq!(pc.run("set r 5 1").await?, "ok");
    assert_eq!(pa.run("set w 0 20").await?, EAGAIN);
    assert_eq!(pc.run("set u 5 1").await?, "ok");
    assert_eq!(pa.run("set w 0 20").await?, "ok");
    assert_eq!(pc.run("set r 5 1").await?, EAGAIN);
    // Bad input, from the kernel and straight to metad: EINVAL, nothing changes.
    assert_eq!(pa.run("set w 10 -20").await?, "err 22");
    let client = cluster.client();
    let ino = client.meta.resolve("/f").await?.ino;
    let lock = |start: u64, end: u64, typ: pb::LockType| pb::SetLockOp {
        ino,
        owner: 1,
        pid: 1,
        kind: pb::LockKind::Posix as i32,
        start,
        end,
        r#type: typ as i32,
    };
    let errno = |r: Result<(), cairn_client::ClientError>| r.map_err(|e| e.errno());
    assert_eq!(
        errno(client.meta.setlk(lock(9, 8, pb::LockType::Write)).await),
        Err(22)
    );
    assert_eq!(
        errno(
            client
                .meta
                .setlk(lock(0, 8, pb::LockType::Unspecified))
                .await
        ),
        Err(22)
    );
    assert_eq!(
        errno(client.meta.setlk(lock(0, 0, pb::LockType::Read)).await),
        Err(11)
    );
    let held = client.meta.getlk(lock(0, 25, pb::LockType::Write)).await?;
    let held = held.map(|l| (l.start, l.end, l.pid));
    assert_eq!(held, Some((0, 19, a_pid)));
    assert!(client
        .meta
        .getlk(lock(20, 29, pb::LockType::Write))
        .await?
        .is_none());

    // F_SETLKW on B waits for A's unlock, then holds the range.
    pb.send("wait w 0 10").await?;
    pb.blocked_in(SYS_FCNTL).await?;
    assert_eq!(pc.run("get w 0 10").await?, held_by_a(0, 20));
    assert_eq!(pa.run("set u 0 100").await?, "ok");
    assert_eq!(pb.answer().await?, "ok");
    assert_eq!(pc.run("get w 0 10").await?, format!("w 0 10 {}", pb.pid));

    // Closing any fd of the file releases all of that process's locks.
    pa.send("wait w 0 10").await?;
    pa.blocked_in(SYS_FCNTL).await?;
    assert_eq!(pb.run("dupclose").await?, "ok");
    assert_eq!(pa.answer().await?, "ok");
    assert_eq!(pc.run("get w 100 1").await?, "u 100 1 0");
    assert_eq!(pc.run("get w 1000 1").await?, "u 1000 1 0");
    assert_eq!(pa.run("close").await?, "ok");
    assert_eq!(pc.run("get w 0 0").await?, "u 0 0 0");
    assert_eq!(pc.run("set w 0 0").await?, "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flock_across_mounts() -> anyhow::Result<()> {
    let (_cluster, a, b) = two_mounts().await?;
    tokio::fs::write(a.path.join("f"), b"flocked file").await?;
    let mut fa = Owner::open(&a.path.join("f")).await?;
    let mut fb = Owner::open(&b.path.join("f")).await?;

    assert_eq!(fa.run("flock ex nb").await?, "ok");
    assert_eq!(fb.run("flock ex nb").await?, EAGAIN);
    assert_eq!(fb.run("flock sh nb").await?, EAGAIN);
    // Downgrade: both share; then A cannot convert back while B shares.
    assert_eq!(fa.run("flock sh nb").await?, "ok");
    assert_eq!(fb.run("flock sh nb").await?, "ok");
    assert_eq!(fa.run("flock ex nb").await?, EAGAIN);
    assert_eq!(fb.run("flock un").await?, "ok");
    assert_eq!(fa.run("flock ex nb").await?, "ok");

    // A blocking flock on B waits for A's unlock.
    fb.send("flock ex").await?;
    fb.blocked_in(SYS_FLOCK).await?;
    assert_eq!(fa.run("flock un").await?, "ok");
    assert_eq!(fb.answer().await?, "ok");
    // ... and for the release of the open file that holds it.
    fa.send("flock sh").await?;
    fa.blocked_in(SYS_FLOCK).await?;
    assert_eq!(fb.run("close").await?, "ok");
    assert_eq!(fa.answer().await?, "ok");

    // Open-file-description (OFD) locks, owned like flock by the open file,
    // go with its release too.
    tokio::fs::write(a.path.join("o"), b"ofd").await?;
    let mut oa = Owner::open(&a.path.join("o")).await?;
    let mut ob = Owner::open(&b.path.join("o")).await?;
    assert_eq!(oa.run("ofd w 0 10").await?, "ok");
    assert_eq!(ob.run("set r 5 1").await?, EAGAIN);
    ob.send("wait r 5 1").await?;
    ob.blocked_in(SYS_FCNTL).await?;
    assert_eq!(oa.run("close").await?, "ok");
    assert_eq!(ob.answer().await?, "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_of_a_killed_mount_expire_with_its_session() -> anyhow::Result<()> {
    locks_of_a_lost_mount_expire(false).await
}

/// A client that hangs (SIGSTOP) while holding locks: its session stops being
/// renewed, and its locks go with the lease as a killed client's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_of_a_hung_mount_expire_with_its_session() -> anyhow::Result<()> {
    locks_of_a_lost_mount_expire(true).await
}

/// Mount A holds locks and is SIGKILLed, or hung with SIGSTOP: nobody releases
/// its locks but the session lease (3 s in the harness), after which B's waits
/// are granted.
async fn locks_of_a_lost_mount_expire(hang: bool) -> anyhow::Result<()> {
    let (_cluster, mut a, b) = two_mounts().await?;
    // fcntl locks on f, flock on g: through FUSE a flock is a whole-file
    // POSIX lock (see fuse/src/locks.rs), so the two would conflict on one file.
    tokio::fs::write(a.path.join("f"), b"crash").await?;
    tokio::fs::write(a.path.join("g"), b"crash").await?;
    let mut pa = Owner::open(&a.path.join("f")).await?;
    let mut fa = Owner::open(&a.path.join("g")).await?;
    let mut pb = Owner::open(&b.path.join("f")).await?;
    let mut fb = Owner::open(&b.path.join("g")).await?;
    assert_eq!(pa.run("set w 0 0").await?, "ok");
    assert_eq!(fa.run("flock ex nb").await?, "ok");
    assert_eq!(pb.run("set r 0 1").await?, EAGAIN);
    assert_eq!(fb.run("flock sh nb").await?, EAGAIN);
    pb.send("wait r 0 1").await?;
    fb.send("flock sh").await?;
    pb.blocked_in(SYS_FCNTL).await?;
    fb.blocked_in(SYS_FLOCK).await?;
    if hang {
        a.pause();
    } else {
        a.kill();
    }
    assert_eq!(pb.answer().await?, "ok");
    assert_eq!(fb.answer().await?, "ok");
    // A hung mount ends here, so its owners' closes fail fast.
    a.kill();
    drop((pa, fa));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_survive_a_metad_leader_failover() -> anyhow::Result<()> {
    let (mut cluster, a, b) = two_mounts().await?;
    tokio::fs::write(a.path.join("f"), b"failover").await?;
    let ino = cluster.client().meta.resolve("/f").await?.ino;
    let shard = cairn_proto::ids::ino_shard(ino);
    let mut pa = Owner::open(&a.path.join("f")).await?;
    let mut pb = Owner::open(&b.path.join("f")).await?;
    assert_eq!(pa.run("set w 0 99").await?, "ok");
    // The lock is in the shard's Raft state: a new leader still has it.
    let killed = cluster.leader_of(shard).await?;
    cluster.metas[killed].kill();
    wait_for(
        "a new leader of the file's shard",
        ANSWER_TIMEOUT,
        || async { cluster.leader_of(shard).await.is_ok_and(|i| i != killed) },
    )
    .await?;
    assert_eq!(pb.run("set r 50 1").await?, EAGAIN);
    assert_eq!(pb.run("get w 0 0").await?, format!("w 0 99 {}", pa.pid));
    assert_eq!(pb.run("set w 98 1").await?, EAGAIN);
    assert_eq!(pb.run("set w 99 0").await?, "ok");
    pb.send("wait w 0 1").await?;
    pb.blocked_in(SYS_FCNTL).await?;
    assert_eq!(pa.run("set u 0 0").await?, "ok");
    assert_eq!(pb.answer().await?, "ok");
    Ok(())
}
