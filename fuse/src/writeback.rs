//! Write-back staging: with `--writeback`, what a handle writes is appended to a
//! log in the local cache directory; flush/fsync/close return once the log is
//! fsync'd there (local-disk speed), and a background uploader sends the data
//! to the cluster and commits it, then deletes the log. After a crash, the next
//! mount replays every log it finds, so nothing acknowledged is lost unless the
//! cache disk itself is lost before the upload (documented).
//!
//! A log is `<dir>/<ino hex>-<n>.log`: a header (magic, inode) then records of
//! (offset u64, length u32, crc32c u32, data), all little-endian. A torn last
//! record (a crash mid-append, never acknowledged) fails its checksum and ends
//! the replay of that log.
//!
//! Within the mount, an inode with logs still uploading is waited for before it
//! is opened or stat'ed again, so the mount keeps reading its own writes.
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

/// The staging area of one mount and its uploader.
pub struct Staging {
    dir: PathBuf,
    next: AtomicU64,
    /// Logs not yet uploaded, per inode, and their bytes.
    pending: Mutex<HashMap<u64, (usize, u64)>>,
    uploaded: Notify,
    queue: mpsc::UnboundedSender<PathBuf>,
    metrics: WritebackMetrics,
}

/// One handle's log being written.
pub struct StageLog {
    file: File,
    path: PathBuf,
    ino: u64,
    bytes: u64,
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
        let (tx, rx) = mpsc::unbounded_channel();
        let staging = Arc::new(Staging {
            dir: dir.to_path_buf(),
            next: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            uploaded: Notify::new(),
            queue: tx,
            metrics: WritebackMetrics::default(),
        });
        let mut leftovers: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        leftovers.sort();
        for path in leftovers {
            let (ino, bytes) = read_header(&path).map(|(ino, _)| (ino, file_len(&path)))?;
            staging.mark(ino, bytes);
            tracing::info!(path = %path.display(), "replaying a write-back log");
            let _ = staging.queue.send(path);
        }
        // The uploader ends when the staging area (and so its sender) is dropped.
        tokio::spawn(upload_loop(Arc::downgrade(&staging), client, rx));
        Ok(staging)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (usize, u64)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The staging area's counters (clones share the values).
    pub fn metrics(&self) -> &WritebackMetrics {
        &self.metrics
    }

    fn mark(&self, ino: u64, bytes: u64) {
        let mut p = self.lock();
        let e = p.entry(ino).or_default();
        e.0 += 1;
        e.1 += bytes;
        self.publish(&p);
    }

    /// Sets the backlog gauges from the pending map (held locked, so gauges
    /// and map agree).
    fn publish(&self, pending: &HashMap<u64, (usize, u64)>) {
        let (logs, bytes) = pending
            .values()
            .fold((0usize, 0u64), |(n, b), (ln, lb)| (n + ln, b + lb));
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.metrics.backlog_logs.set(gauge(logs as u64));
        self.metrics.backlog_bytes.set(gauge(bytes));
    }

    /// Starts a log for writes to `ino`.
    pub fn begin(&self, ino: u64) -> std::io::Result<StageLog> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{ino:016x}-{}-{n}.log", std::process::id()));
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
        })
    }

    /// Makes a log durable and hands it to the uploader; when this returns the
    /// writes are acknowledged.
    pub fn commit(&self, log: StageLog) -> std::io::Result<()> {
        log.file.sync_all()?;
        // The new name must be durable too before the caller is answered.
        File::open(&self.dir)?.sync_all()?;
        self.mark(log.ino, log.bytes);
        self.metrics.staged_bytes.inc_by(log.bytes);
        self.queue
            .send(log.path)
            .map_err(|_| std::io::Error::other("write-back uploader stopped"))
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
            .fold((0, 0), |(n, b), (ln, lb)| (n + ln, b + lb))
    }

    fn done(&self, ino: u64, bytes: u64) {
        let mut p = self.lock();
        if let Some(e) = p.get_mut(&ino) {
            e.0 = e.0.saturating_sub(1);
            e.1 = e.1.saturating_sub(bytes);
            if e.0 == 0 {
                p.remove(&ino);
            }
        }
        self.publish(&p);
        drop(p);
        self.uploaded.notify_waiters();
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
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

/// Uploads one log: every record through a writer, then one commit.
async fn upload(client: &Arc<Client>, path: &Path) -> Result<(u64, u64), ClientError> {
    let path_owned = path.to_path_buf();
    let (ino, records) = tokio::task::spawn_blocking(move || read_records(&path_owned))
        .await
        .map_err(|e| ClientError::Data(e.to_string()))?
        .map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))?;
    let bytes = records.iter().map(|(_, d)| d.len() as u64).sum();
    let mut writer = client.writer(ino).await?;
    for (offset, data) in &records {
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
                read_header(&path)
                    .ok()
                    .map(|(ino, _)| (ino, file_len(&path)))
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

    #[test]
    fn torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut log = StageLog {
            file: File::create(&path).unwrap(),
            path: path.clone(),
            ino: 9,
            bytes: 0,
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
