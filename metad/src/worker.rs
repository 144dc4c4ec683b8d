//! Background jobs of a metad node (data-layout and root setup, data-node
//! liveness, transaction recovery, session expiry, block GC). Each is a
//! [`Worker`] on its own task, at its own pace, with a jittered start and a
//! deadline on every run, so one job stuck behind a hung peer (a GC round
//! waiting on a stopped data server, a recovery waiting on a stopped metad)
//! never delays another. [`Workers`] keeps each one's state (runs, failures,
//! last error, a run in progress) for logs and status pages.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::MetaError;
use crate::node::MetaNode;

/// The longest one run of any worker may take before it is abandoned (and its
/// work picked up again by the next run). Workers run on their own tasks, so
/// a long run delays only its own next run.
pub const RUN_DEADLINE: Duration = Duration::from_secs(5 * 60);

/// One periodic background job.
pub trait Worker: Send + Sync + 'static {
    /// A short stable name (`gc`, `txn-recovery`, ...).
    fn name(&self) -> &'static str;
    /// Time between the starts of two runs.
    fn period(&self) -> Duration;
    /// One run: does what is due now, on the shards this node leads.
    fn run(&self, node: &MetaNode) -> impl Future<Output = Result<(), MetaError>> + Send;
}

/// What a worker has done so far.
#[derive(Debug, Clone, Default)]
pub struct WorkerStatus {
    pub runs: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    /// When the run now in progress started.
    pub busy_since: Option<Instant>,
}

/// The state of every worker of a node, by name.
#[derive(Debug, Clone, Default)]
pub struct Workers(Arc<Mutex<BTreeMap<&'static str, WorkerStatus>>>);

impl Workers {
    fn update(&self, name: &'static str, f: impl FnOnce(&mut WorkerStatus)) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(name).or_default());
    }

    /// A copy of every worker's state.
    pub fn snapshot(&self) -> BTreeMap<&'static str, WorkerStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs `worker` every period until `shutdown`, each run bounded by
/// [`RUN_DEADLINE`]; the first run starts after a random part of a period.
pub fn spawn<W: Worker>(
    worker: W,
    node: Arc<MetaNode>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let name = worker.name();
        let period = worker.period();
        let jitter =
            Duration::from_millis(rand::random::<u64>() % period.as_millis().max(1) as u64);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(jitter) => {}
        }
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let workers = node.workers.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            workers.update(name, |s| s.busy_since = Some(Instant::now()));
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(RUN_DEADLINE, worker.run(&node)) => r,
            };
            let result = result.unwrap_or_else(|_| {
                Err(MetaError::Raft(format!(
                    "run abandoned after {RUN_DEADLINE:?}"
                )))
            });
            if let Err(e) = &result {
                tracing::warn!(worker = name, "{e}");
            }
            workers.update(name, |s| {
                s.busy_since = None;
                s.runs += 1;
                if let Err(e) = result {
                    s.failures += 1;
                    s.last_error = Some(e.to_string());
                }
            });
        }
    })
}
