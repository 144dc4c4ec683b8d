//! What a mount counts, and the registry it is served from
//! (`cairn_proto::metrics` serves it on `/metrics`).
//!
//! Every kernel request that runs as a task goes through `CairnFs::spawn`,
//! which counts it by operation and result (`ok` or the errno's name), times
//! it (from the kernel handing it over to the answer) and adds the bytes a read
//! or write moved, so no operation carries metrics code of its own. Requests
//! answered without a task (readdir from the listing taken at opendir,
//! releasedir, access, a bad file handle) are not counted.
//!
//! Families, all prefixed `cairn_`:
//! - `fuse_ops_total{op,result}`, `fuse_op_duration_seconds{op}` (histogram),
//!   `fuse_read_bytes_total`, `fuse_written_bytes_total`, `fuse_ops_in_flight`;
//! - with a local cache: `cache_hits_total`, `cache_misses_total`,
//!   `cache_served_bytes_total`, `cache_inserts_total`, `cache_evictions_total`,
//!   `cache_corrupt_total`, `cache_size_bytes`, `cache_blocks`;
//! - with write-back: `writeback_staged_bytes_total`,
//!   `writeback_uploaded_bytes_total`, `writeback_dropped_logs_total`,
//!   `writeback_backlog_logs`, `writeback_backlog_bytes`.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prometheus_client::registry::Unit;

use cairn_client::cache::CacheMetrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpResult {
    op: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// 50 µs to about 3.3 s, doubling: a cached getattr to a slow flush.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 17))
}

/// What a request moved, for the byte counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    Nothing,
    Read(u64),
    Written(u64),
}

impl From<()> for Io {
    fn from(_: ()) -> Io {
        Io::Nothing
    }
}

/// The FUSE request counters of one mount.
#[derive(Debug)]
pub struct FuseMetrics {
    ops: Family<OpResult, Counter>,
    latency: Family<OpLabel, Histogram, fn() -> Histogram>,
    read_bytes: Counter,
    written_bytes: Counter,
    in_flight: Gauge,
}

impl Default for FuseMetrics {
    fn default() -> Self {
        FuseMetrics {
            ops: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            read_bytes: Counter::default(),
            written_bytes: Counter::default(),
            in_flight: Gauge::default(),
        }
    }
}

impl FuseMetrics {
    /// A request of kind `op` starts; see [`OpTimer::finish`].
    pub fn start(self: &Arc<Self>, op: &'static str) -> OpTimer {
        self.in_flight.inc();
        OpTimer {
            metrics: self.clone(),
            op,
            started: Instant::now(),
        }
    }

    /// How many `op` requests ended with `result` (`ok` or an errno's name).
    pub fn count(&self, op: &'static str, result: &'static str) -> u64 {
        self.ops
            .get(&OpResult { op, result })
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// (bytes read, bytes written) through the mount.
    pub fn bytes(&self) -> (u64, u64) {
        (self.read_bytes.get(), self.written_bytes.get())
    }

    /// Registers the families under `cairn_fuse_`.
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("fuse");
        r.register(
            "ops",
            "FUSE requests answered, by operation and result (ok or errno name)",
            self.ops.clone(),
        );
        r.register_with_unit(
            "op_duration",
            "Time from receiving a FUSE request to answering it, by operation",
            Unit::Seconds,
            self.latency.clone(),
        );
        r.register_with_unit(
            "read",
            "Bytes returned by FUSE reads",
            Unit::Bytes,
            self.read_bytes.clone(),
        );
        r.register_with_unit(
            "written",
            "Bytes accepted by FUSE writes",
            Unit::Bytes,
            self.written_bytes.clone(),
        );
        r.register(
            "ops_in_flight",
            "FUSE requests being served now",
            self.in_flight.clone(),
        );
    }
}

/// One request being served; dropping it without [`OpTimer::finish`] (the
/// runtime shut down under it) only takes it out of the in-flight gauge.
pub struct OpTimer {
    metrics: Arc<FuseMetrics>,
    op: &'static str,
    started: Instant,
}

impl OpTimer {
    /// The request was answered: with `Ok` and what it moved, or an errno.
    pub fn finish(self, outcome: Result<Io, i32>) {
        let m = &self.metrics;
        let result = match outcome {
            Ok(Io::Nothing) => "ok",
            Ok(Io::Read(n)) => {
                m.read_bytes.inc_by(n);
                "ok"
            }
            Ok(Io::Written(n)) => {
                m.written_bytes.inc_by(n);
                "ok"
            }
            Err(errno) => errno_name(errno),
        };
        m.ops
            .get_or_create(&OpResult {
                op: self.op,
                result,
            })
            .inc();
        m.latency
            .get_or_create(&OpLabel { op: self.op })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// The write-back counters of one mount's staging area.
#[derive(Debug, Clone, Default)]
pub struct WritebackMetrics {
    /// Bytes made durable in the staging directory (acknowledged writes).
    pub staged_bytes: Counter,
    /// Bytes uploaded and committed from staged logs.
    pub uploaded_bytes: Counter,
    /// Logs given up (their file was deleted meanwhile, or unreadable).
    pub dropped_logs: Counter,
    /// Logs waiting for upload now.
    pub backlog_logs: Gauge,
    /// Bytes waiting for upload now.
    pub backlog_bytes: Gauge,
}

impl WritebackMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("writeback");
        r.register_with_unit(
            "staged",
            "Bytes staged durably on the local disk",
            Unit::Bytes,
            self.staged_bytes.clone(),
        );
        r.register_with_unit(
            "uploaded",
            "Staged bytes uploaded and committed to the cluster",
            Unit::Bytes,
            self.uploaded_bytes.clone(),
        );
        r.register(
            "dropped_logs",
            "Staged logs given up (file deleted meanwhile, or unreadable)",
            self.dropped_logs.clone(),
        );
        r.register(
            "backlog_logs",
            "Staged logs waiting for upload",
            self.backlog_logs.clone(),
        );
        r.register_with_unit(
            "backlog",
            "Staged bytes waiting for upload",
            Unit::Bytes,
            self.backlog_bytes.clone(),
        );
    }
}

fn register_cache(cache: &CacheMetrics, registry: &mut Registry) {
    let r = registry.sub_registry_with_prefix("cache");
    r.register(
        "hits",
        "Block reads served from the local cache",
        cache.hits.clone(),
    );
    r.register(
        "misses",
        "Block reads the local cache could not serve",
        cache.misses.clone(),
    );
    r.register_with_unit(
        "served",
        "Bytes served from the local cache",
        Unit::Bytes,
        cache.hit_bytes.clone(),
    );
    r.register(
        "inserts",
        "Blocks stored in the local cache",
        cache.inserts.clone(),
    );
    r.register(
        "evictions",
        "Blocks evicted to stay within the cache's capacity",
        cache.evictions.clone(),
    );
    r.register(
        "corrupt",
        "Cache files that failed their checksum (dropped and refetched)",
        cache.corrupt.clone(),
    );
    r.register_with_unit(
        "size",
        "Bytes the local cache holds",
        Unit::Bytes,
        cache.bytes.clone(),
    );
    r.register(
        "blocks",
        "Blocks the local cache holds",
        cache.blocks.clone(),
    );
}

/// The registry of a mount: its FUSE counters, and its cache's and staging
/// area's when it has them.
pub fn registry(
    fuse: &FuseMetrics,
    cache: Option<&CacheMetrics>,
    writeback: Option<&WritebackMetrics>,
) -> Registry {
    let mut registry = Registry::with_prefix("cairn");
    fuse.register(&mut registry);
    if let Some(cache) = cache {
        register_cache(cache, &mut registry);
    }
    if let Some(writeback) = writeback {
        writeback.register(&mut registry);
    }
    registry
}

/// The symbolic name of an errno, for a bounded label set.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOLCK => "ENOLCK",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        libc::ECANCELED => "ECANCELED",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::prometheus_text;

    use super::*;

    #[test]
    fn requests_are_counted_timed_and_encoded_by_op_and_result() {
        let fuse = Arc::new(FuseMetrics::default());
        fuse.start("write").finish(Ok(Io::Written(10)));
        fuse.start("write").finish(Ok(Io::Written(5)));
        fuse.start("read").finish(Ok(Io::Read(7)));
        fuse.start("lookup").finish(Err(libc::ENOENT));
        drop(fuse.start("getattr"));
        assert_eq!(fuse.count("write", "ok"), 2);
        assert_eq!(fuse.count("lookup", "ENOENT"), 1);
        assert_eq!(fuse.count("getattr", "ok"), 0);
        assert_eq!(fuse.bytes(), (7, 15));

        let cache = CacheMetrics::default();
        cache.hits.inc_by(3);
        let wb = WritebackMetrics::default();
        wb.backlog_logs.set(2);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry(&fuse, Some(&cache), Some(&wb))).unwrap();
        for line in [
            "cairn_fuse_ops_total{op=\"write\",result=\"ok\"} 2",
            "cairn_fuse_ops_total{op=\"lookup\",result=\"ENOENT\"} 1",
            "cairn_fuse_op_duration_seconds_count{op=\"write\"} 2",
            "cairn_fuse_read_bytes_total 7",
            "cairn_fuse_written_bytes_total 15",
            "cairn_fuse_ops_in_flight 0",
            "cairn_cache_hits_total 3",
            "cairn_writeback_backlog_logs 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(libc::EOPNOTSUPP), "EOPNOTSUPP");
        assert_eq!(errno_name(100_000), "other");
    }
}
