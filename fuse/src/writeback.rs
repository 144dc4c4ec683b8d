//! Write-back staging: with `--writeback`, what a handle writes is appended to a
//! log in the local cache directory; flush/fsync/close return once the log is
//! fsync'd there (local-disk speed), and a background uploader sends the data
//! to the cluster and commits it, then deletes the log. After a crash, the next
//! mount replays every log it finds, so nothing acknowledged is lost unless the
//! cache disk itself is lost before the upload (documented).
//!
//! A log holds a header (magic, inode) then records of (offset u64, length
//! u32, crc32c u32, data), all little-endian. A torn last record (a crash
//! mid-append, never acknowledged) fails its checksum and ends the replay of
//! that log. Offset [`AT_END`] marks an O_APPEND write: the upload replays a
//! run of them through an appender, so the run commits as one `Append` at
//! the file's end as metad sees it then (contiguous, never over another
//! client's appends); the mount's `stat` does not count staged appends
//! before their upload (their place is not known until then). An upload
//! retried after its append was applied but its answer lost past the
//! client's own retries appends the run again (the request id is new).
//!
//! Names, and the order they keep:
//! - while a handle writes, its log is `<pid>-<n>-<ino:016x>.part` (never
//!   replayed: nothing in it was acknowledged);
//! - at commit (the acknowledgment point) it is fsync'd, hard-linked to
//!   `<seq:020>-<ino:016x>.log`, its temporary name removed, and the directory
//!   fsync'd; only then is the caller answered. `seq` is one more than the
//!   highest sequence in the directory when the mount started, then counts up;
//!   the link is create-exclusive, so a mount sharing the directory that took a
//!   number for the same inode first makes this one move past it, never
//!   overwrite it. Logs of different inodes may share a number: they write
//!   different files, so their relative order does not matter.
//! - Logs upload in commit order, and replay (at the next start) sorts by
//!   `seq`: an older write never lands over a newer one, across restarts, PIDs
//!   and mounts of one cache directory. Zero-padding keeps the names in the
//!   same order as the numbers for anyone listing the directory.
//! - At start, `.part` files whose process is gone are removed (a live
//!   process's are left to it), and logs named as before this scheme
//!   (`<ino:016x>-<pid>-<n>.log`, no durable order) are replayed first, by
//!   modification time then counter.
//! - Not coordinated: two mounts live on one directory at once. A mount
//!   starting replays every committed log there, the other mount's queue
//!   included, so one directory should serve one mount at a time.
//!
//! Within the mount, a file's size shows what is staged for it before the
//! upload (`Staging::staged_end`), and a read of a file waits for its logs to
//! be uploaded first, so the mount keeps reading its own writes.
//!
//! The staging area counts bytes staged, uploaded and logs dropped, and keeps
//! its backlog in gauges ([`WritebackMetrics`]) for the mount's `/metrics`.

use std::collections::HashMap;
use std::fs::File;
use std::fs::OpenOptions;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::Notify;

use cairn_client::Client;
use cairn_client::ClientError;
use cairn_proto::retry::retry;
use cairn_proto::retry::Backoff;

use crate::metrics::WritebackMetrics;

const MAGIC: &[u8; 8] = b"CAIRNWB1";

/// The offset of a logged O_APPEND write (see the module doc).
pub const AT_END: u64 = u64::MAX;

/// The staging area of one mount and its uploader.
pub struct Staging {
    dir: PathBuf,
    /// Counter in the temporary names of logs being written.
    next: AtomicU64,
    /// The sequence number the next committed log takes (see the module doc).
    /// Taken under the lock, with the link and the hand-over to the uploader,
    /// so the upload order is the sequence order.
    seq: Mutex<u64>,
    /// Logs not yet uploaded, per inode.
    pending: Mutex<HashMap<u64, Pending>>,
    uploaded: Notify,
    queue: mpsc::UnboundedSender<PathBuf>,
    metrics: WritebackMetrics,
}

/// What waits for upload for one inode.
#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    logs: usize,
    bytes: u64,
    /// The end of the furthest write staged (the file is at least this long
    /// once the logs are uploaded).
    end: u64,
}

/// One handle's log being written.
pub struct StageLog {
    file: File,
    path: PathBuf,
    ino: u64,
    bytes: u64,
    end: u64,
}

impl StageLog {
    /// Appends one write (not yet durable: see [`Staging::commit`]).
    pub fn append(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut record = Vec::with_capacity(16 + data.len());
        record.extend_from_slice(&offset.to_le_bytes());
        record.extend_from_slice(&(data.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
        record.extend_from_slice(data);
        self.file.write_all(&record)?;
        self.bytes += data.len() as u64;
        if offset != AT_END {
            self.end = self.end.max(offset.saturating_add(data.len() as u64));
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

impl Staging {
    /// Opens the staging directory, starts the uploader on the current runtime
    /// and queues every log an earlier run left behind.
    pub fn start(dir: &Path, client: Arc<Client>) -> std::io::Result<Arc<Staging>> {
        std::fs::create_dir_all(dir)?;
        let found = scan(dir)?;
        for part in &found.abandoned {
            tracing::info!(path = %part.display(), "removing a log never acknowledged");
            std::fs::remove_file(part)?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let staging = Arc::new(Staging {
            dir: dir.to_path_buf(),
            next: AtomicU64::new(0),
            seq: Mutex::new(found.highest + 1),
            pending: Mutex::new(HashMap::new()),
            uploaded: Notify::new(),
            queue: tx,
            metrics: WritebackMetrics::default(),
        });
        for path in found.replay {
            let (ino, bytes, end) = log_extent(&path)?;
            staging.mark(ino, bytes, end);
            tracing::info!(path = %path.display(), "replaying a write-back log");
            let _ = staging.queue.send(path);
        }
        // The uploader ends when the staging area (and so its sender) is dropped.
        tokio::spawn(upload_loop(Arc::downgrade(&staging), client, rx));
        Ok(staging)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The staging area's counters (clones share the values).
    pub fn metrics(&self) -> &WritebackMetrics {
        &self.metrics
    }

    fn mark(&self, ino: u64, bytes: u64, end: u64) {
        let mut p = self.lock();
        let e = p.entry(ino).or_default();
        e.logs += 1;
        e.bytes += bytes;
        e.end = e.end.max(end);
        self.publish(&p);
    }

    /// Sets the backlog gauges from the pending map (held locked, so gauges
    /// and map agree).
    fn publish(&self, pending: &HashMap<u64, Pending>) {
        let (logs, bytes) = pending
            .values()
            .fold((0usize, 0u64), |(n, b), p| (n + p.logs, b + p.bytes));
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.metrics.backlog_logs.set(gauge(logs as u64));
        self.metrics.backlog_bytes.set(gauge(bytes));
    }

    /// Starts a log for writes to `ino`.
    pub fn begin(&self, ino: u64) -> std::io::Result<StageLog> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{}-{n}-{ino:016x}.part", std::process::id()));
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.write_all(&ino.to_le_bytes())?;
        Ok(StageLog {
            file,
            path,
            ino,
            bytes: 0,
            end: 0,
        })
    }

    /// Makes a log durable under its sequence name and hands it to the
    /// uploader; when this returns the writes are acknowledged.
    pub fn commit(&self, log: StageLog) -> std::io::Result<()> {
        log.file.sync_all()?;
        {
            let mut seq = self.seq.lock().unwrap_or_else(|p| p.into_inner());
            let named = loop {
                let path = self.dir.join(log_name(*seq, log.ino));
                match std::fs::hard_link(&log.path, &path) {
                    Ok(()) => break path,
                    // A mount sharing the directory took this number for
                    // this inode: move past everything it has named.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        *seq = (*seq + 1).max(scan(&self.dir)?.highest + 1);
                    }
                    Err(e) => return Err(e),
                }
            };
            *seq += 1;
            self.mark(log.ino, log.bytes, log.end);
            self.queue
                .send(named)
                .map_err(|_| std::io::Error::other("write-back uploader stopped"))?;
        }
        std::fs::remove_file(&log.path)?;
        // The new name must be durable before the caller is answered.
        File::open(&self.dir)?.sync_all()?;
        self.metrics.staged_bytes.inc_by(log.bytes);
        Ok(())
    }

    /// The end of the furthest write staged for `ino` and not yet uploaded
    /// (0: none): the file's size in the cluster may not show it yet.
    pub fn staged_end(&self, ino: u64) -> u64 {
        self.lock().get(&ino).map_or(0, |p| p.end)
    }

    /// Whether logs of `ino` wait for upload.
    pub fn is_pending(&self, ino: u64) -> bool {
        self.lock().contains_key(&ino)
    }

    /// Waits until no log of `ino` is waiting for upload.
    pub async fn wait_uploaded(&self, ino: u64) {
        loop {
            let notified = self.uploaded.notified();
            if !self.lock().contains_key(&ino) {
                return;
            }
            notified.await;
        }
    }

    /// Waits until every log is uploaded.
    pub async fn wait_all(&self) {
        loop {
            let notified = self.uploaded.notified();
            if self.lock().is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Logs and bytes waiting for upload.
    pub fn backlog(&self) -> (usize, u64) {
        self.lock()
            .values()
            .fold((0, 0), |(n, b), p| (n + p.logs, b + p.bytes))
    }

    fn done(&self, ino: u64, bytes: u64) {
        let mut p = self.lock();
        if let Some(e) = p.get_mut(&ino) {
            e.logs = e.logs.saturating_sub(1);
            e.bytes = e.bytes.saturating_sub(bytes);
            if e.logs == 0 {
                p.remove(&ino);
            }
        }
        self.publish(&p);
        drop(p);
        self.uploaded.notify_waiters();
    }
}

/// The name a committed log takes.
fn log_name(seq: u64, ino: u64) -> String {
    format!("{seq:020}-{ino:016x}.log")
}

/// What a name in the staging directory says.
#[derive(Debug, PartialEq, Eq)]
enum Name {
    /// `<seq:020>-<ino:016x>.log`: committed, replayed in `seq` order.
    Committed { seq: u64 },
    /// `<ino:016x>-<pid>-<n>.log`: committed by a version before sequence
    /// numbers (no durable order across processes).
    Legacy { n: u64 },
    /// `<pid>-<n>-<ino:016x>.part`: being written, never acknowledged.
    Part { pid: u32 },
}

fn parse_name(name: &str) -> Option<Name> {
    let is_hex = |s: &str| s.len() == 16 && u64::from_str_radix(s, 16).is_ok();
    if let Some(stem) = name.strip_suffix(".part") {
        return match stem.split('-').collect::<Vec<_>>().as_slice() {
            [pid, n, ino] if n.parse::<u64>().is_ok() && is_hex(ino) => Some(Name::Part {
                pid: pid.parse().ok()?,
            }),
            _ => None,
        };
    }
    let stem = name.strip_suffix(".log")?;
    match stem.split('-').collect::<Vec<_>>().as_slice() {
        [seq, ino] if seq.len() == 20 && is_hex(ino) => Some(Name::Committed {
            seq: seq.parse().ok()?,
        }),
        [ino, pid, n] if is_hex(ino) && pid.parse::<u32>().is_ok() => {
            Some(Name::Legacy { n: n.parse().ok()? })
        }
        _ => None,
    }
}

/// Whether the process that wrote a `.part` log is gone: not running, or its
/// PID now belongs to a program of another name. Our own PID at start is an
/// earlier process's (this one has written nothing yet).
fn writer_gone(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let comm = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm"));
    match (comm(&pid.to_string()), comm("self")) {
        (Ok(theirs), Ok(ours)) => theirs != ours,
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => true,
        // Unknown: leave it (a leftover costs only disk space).
        _ => false,
    }
}

/// What a start finds in the staging directory.
#[derive(Debug, Default)]
struct Found {
    /// Committed logs, in replay order.
    replay: Vec<PathBuf>,
    /// Temporary logs whose writer is gone.
    abandoned: Vec<PathBuf>,
    /// The highest sequence number named (0: none).
    highest: u64,
}

fn scan(dir: &Path) -> std::io::Result<Found> {
    let mut committed = Vec::new();
    let mut legacy = Vec::new();
    let mut found = Found::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().and_then(parse_name) else {
            continue;
        };
        let path = entry.path();
        match name {
            Name::Committed { seq } => {
                found.highest = found.highest.max(seq);
                committed.push((seq, path));
            }
            Name::Legacy { n } => {
                let modified = entry.metadata()?.modified()?;
                legacy.push((modified, n, path));
            }
            Name::Part { pid } => {
                if writer_gone(pid) {
                    found.abandoned.push(path);
                }
            }
        }
    }
    legacy.sort();
    committed.sort();
    found.replay = legacy.into_iter().map(|(_, _, p)| p).collect();
    found.replay.extend(committed.into_iter().map(|(_, p)| p));
    Ok(found)
}

/// The inode of a log, the bytes its complete records hold and the end of its
/// furthest write, from the record headers alone (a torn tail is left out;
/// checksums are checked at upload).
fn log_extent(path: &Path) -> std::io::Result<(u64, u64, u64)> {
    let (ino, file) = read_header(path)?;
    let len = file.metadata()?.len();
    let mut file = std::io::BufReader::new(file);
    let (mut at, mut bytes, mut end) = (16u64, 0u64, 0u64);
    let mut head = [0u8; 16];
    while len - at >= 16 {
        file.read_exact(&mut head)?;
        let offset = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        let n = u64::from(u32::from_le_bytes(
            head[8..12].try_into().unwrap_or_default(),
        ));
        if len - at - 16 < n {
            break;
        }
        file.seek_relative(n as i64)?;
        at += 16 + n;
        bytes += n;
        if offset != AT_END {
            end = end.max(offset.saturating_add(n));
        }
    }
    Ok((ino, bytes, end))
}

fn read_header(path: &Path) -> std::io::Result<(u64, File)> {
    let mut file = File::open(path)?;
    let mut header = [0u8; 16];
    file.read_exact(&mut header)?;
    if &header[..8] != MAGIC {
        return Err(std::io::Error::other(format!(
            "{}: not a write-back log",
            path.display()
        )));
    }
    let ino = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    Ok((ino, file))
}

/// The writes a log holds: (file offset, bytes), in order.
type Records = Vec<(u64, Vec<u8>)>;

/// The inode and complete records of a log; a torn tail is left out.
fn read_records(path: &Path) -> std::io::Result<(u64, Records)> {
    let (ino, mut file) = read_header(path)?;
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)?;
    let mut records = Vec::new();
    let mut at = 0;
    while rest.len() - at >= 16 {
        let offset = u64::from_le_bytes(rest[at..at + 8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(rest[at + 8..at + 12].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(rest[at + 12..at + 16].try_into().unwrap_or_default());
        let Some(data) = rest.get(at + 16..at + 16 + len) else {
            break;
        };
        if crc32c::crc32c(data) != crc {
            break;
        }
        records.push((offset, data.to_vec()));
        at += 16 + len;
    }
    Ok((ino, records))
}

/// Uploads one log: every record through a writer, then one commit (one
/// per run of positional or of O_APPEND writes, in log order).
async fn upload(client: &Arc<Client>, path: &Path) -> Result<(u64, u64), ClientError> {
    let path_owned = path.to_path_buf();
    let (ino, records) = tokio::task::spawn_blocking(move || read_records(&path_owned))
        .await
        .map_err(|e| ClientError::Data(e.to_string()))?
        .map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))?;
    let bytes = records.iter().map(|(_, d)| d.len() as u64).sum();
    let mut writer = client.writer(ino).await?;
    for (offset, data) in &records {
        let append = *offset == AT_END;
        if writer.is_append() != append {
            writer.close().await?;
            writer = client.writer(ino).await?;
            if append {
                writer = writer.appending();
            }
        }
        writer.write_at(*offset, data).await?;
    }
    writer.close().await?;
    Ok((ino, bytes))
}

async fn upload_loop(
    staging: std::sync::Weak<Staging>,
    client: Arc<Client>,
    mut queue: mpsc::UnboundedReceiver<PathBuf>,
) {
    while let Some(path) = queue.recv().await {
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
            deadline: Duration::from_secs(u32::MAX.into()),
        };
        // Only a log that can never apply is given up: its file is gone
        // (unlinked meanwhile) or the log is unreadable. Anything else (the
        // cluster unreachable, data servers down) is retried.
        let permanent = |e: &ClientError| {
            matches!(e, ClientError::Invalid(_)) || e.errno() == cairn_proto::status::ENOENT
        };
        let result = retry(backoff, |e| !permanent(e), |_| upload(&client, &path)).await;
        let uploaded = result.is_ok();
        let ino_bytes = match result {
            Ok(done) => Some(done),
            Err(e) => {
                tracing::warn!(path = %path.display(), "dropping a write-back log: {e}");
                log_extent(&path).ok().map(|(ino, bytes, _)| (ino, bytes))
            }
        };
        let _ = std::fs::remove_file(&path);
        let Some(staging) = staging.upgrade() else {
            return;
        };
        match (uploaded, ino_bytes) {
            (true, Some((_, bytes))) => {
                staging.metrics.uploaded_bytes.inc_by(bytes);
            }
            _ => {
                staging.metrics.dropped_logs.inc();
            }
        }
        if let Some((ino, bytes)) = ino_bytes {
            staging.done(ino, bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A staging area on `dir` without an uploader: what it hands over stays
    /// in the returned queue.
    fn staging_at(dir: &Path) -> (Staging, mpsc::UnboundedReceiver<PathBuf>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let staging = Staging {
            dir: dir.to_path_buf(),
            next: AtomicU64::new(0),
            seq: Mutex::new(scan(dir).unwrap().highest + 1),
            pending: Mutex::new(HashMap::new()),
            uploaded: Notify::new(),
            queue: tx,
            metrics: WritebackMetrics::default(),
        };
        (staging, rx)
    }

    fn commit_one(staging: &Staging, ino: u64, offset: u64, data: &[u8]) {
        let mut log = staging.begin(ino).unwrap();
        log.append(offset, data).unwrap();
        staging.commit(log).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replay_follows_commit_order_past_ten_and_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (first, mut queue) = staging_at(dir.path());
        for i in 0..12u64 {
            commit_one(&first, 7, i, &[i as u8]);
        }
        drop(first);
        // A restart: numbering goes on after the highest name left.
        let (second, _queue) = staging_at(dir.path());
        commit_one(&second, 7, 0, b"last");
        let found = scan(dir.path()).unwrap();
        assert_eq!(found.highest, 13);
        let order: Vec<u64> = found
            .replay
            .iter()
            .map(|p| read_records(p).unwrap().1[0].0)
            .collect();
        assert_eq!(order, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0]);
        // The live uploader got them in the same order, and no temporary
        // name is left.
        let mut handed = Vec::new();
        while let Ok(p) = queue.try_recv() {
            handed.push(p);
        }
        assert_eq!(handed, found.replay[..12]);
        assert!(names(dir.path()).iter().all(|n| n.ends_with(".log")));
        assert_eq!(second.staged_end(7), 4);
    }

    #[test]
    fn mounts_sharing_a_directory_never_take_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _qa) = staging_at(dir.path());
        let (b, _qb) = staging_at(dir.path());
        // Both start at 1; each collision on an inode's name moves past it.
        commit_one(&a, 1, 0, b"a1");
        commit_one(&b, 1, 0, b"b1");
        commit_one(&a, 1, 0, b"a2");
        // Another inode may share a number (its order does not matter).
        commit_one(&b, 2, 0, b"b2");
        assert_eq!(
            names(dir.path()),
            [
                log_name(1, 1),
                log_name(2, 1),
                log_name(3, 1),
                log_name(3, 2)
            ]
        );
        let data: Vec<Vec<u8>> = scan(dir.path())
            .unwrap()
            .replay
            .iter()
            .map(|p| read_records(p).unwrap().1[0].1.clone())
            .collect();
        assert_eq!(
            data,
            [
                b"a1".to_vec(),
                b"b1".to_vec(),
                b"a2".to_vec(),
                b"b2".to_vec()
            ]
        );
    }

    #[test]
    fn start_drops_unacknowledged_logs_and_orders_old_names_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Logs being written by processes that are gone (our own PID at
        // start stands for an earlier process's; PID 1 runs another program
        // now), and logs named before sequence numbers.
        std::fs::write(
            d.join(format!("{}-0-{:016x}.part", std::process::id(), 5)),
            b"x",
        )
        .unwrap();
        std::fs::write(d.join(format!("1-0-{:016x}.part", 5)), b"x").unwrap();
        for (name, mtime) in [("2", 20), ("10", 30)] {
            let path = d.join(format!("{:016x}-123-{name}.log", 5));
            let f = File::create(&path).unwrap();
            let t = std::time::UNIX_EPOCH + Duration::from_secs(mtime);
            f.set_modified(t).unwrap();
        }
        std::fs::write(d.join(log_name(4, 5)), b"").unwrap();
        std::fs::write(d.join("unrelated.txt"), b"").unwrap();
        let found = scan(d).unwrap();
        assert_eq!(found.highest, 4);
        let replay: Vec<String> = found
            .replay
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            replay,
            [
                format!("{:016x}-123-2.log", 5),
                format!("{:016x}-123-10.log", 5),
                log_name(4, 5)
            ]
        );
        assert_eq!(found.abandoned.len(), 2, "{:?}", found.abandoned);
    }

    #[test]
    fn torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut log = StageLog {
            file: File::create(&path).unwrap(),
            path: path.clone(),
            ino: 9,
            bytes: 0,
            end: 0,
        };
        log.file.write_all(MAGIC).unwrap();
        log.file.write_all(&9u64.to_le_bytes()).unwrap();
        log.append(5, b"hello").unwrap();
        log.append(100, b"world").unwrap();
        drop(log);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 2]).unwrap();
        let (ino, records) = read_records(&path).unwrap();
        assert_eq!(ino, 9);
        assert_eq!(records, vec![(5, b"hello".to_vec())]);
    }
}
