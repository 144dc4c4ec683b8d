//! The background workers of a metad node (see `worker.rs`): what each does,
//! how often, on which shards. Every one acts only on shards led here.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use cairn_proto::ids::ino_shard;
use cairn_proto::ids::ShardId;
use cairn_proto::ids::MAP_SHARD;
use cairn_proto::ids::ROOT_INO;

use crate::cluster;
use crate::cluster::MapCommand;
use crate::error::MetaError;
use crate::fs;
use crate::fs::FsCommand;
use crate::keys;
use crate::node::now_ns;
use crate::node::MetaNode;
use crate::types::Command;
use crate::types::Request;
use crate::worker;
use crate::worker::Worker;

/// Starts every worker of `node`; they stop when `shutdown` is cancelled.
pub fn start(node: &Arc<MetaNode>, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
    vec![
        worker::spawn(Setup, node.clone(), shutdown.clone()),
        worker::spawn(Liveness, node.clone(), shutdown.clone()),
        worker::spawn(TxnRecovery::default(), node.clone(), shutdown.clone()),
        worker::spawn(Sessions, node.clone(), shutdown.clone()),
        worker::spawn(Gc::default(), node.clone(), shutdown.clone()),
        worker::spawn(ReplyTrim::default(), node.clone(), shutdown.clone()),
    ]
}

fn unkeyed(cmd: Command) -> Request {
    Request { key: None, cmd }
}

/// The namespace shards (all but shard 0) this node leads now.
fn led_namespace_shards(node: &MetaNode) -> Vec<ShardId> {
    node.shards()
        .filter(|&s| s != MAP_SHARD && node.leader_of(s) == Some(node.id))
        .collect()
}

/// Creates the data layout (shard 0) and the root directory once.
struct Setup;

impl Worker for Setup {
    fn name(&self) -> &'static str {
        "setup"
    }

    fn period(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn run(&self, node: &MetaNode) -> Result<(), MetaError> {
        if node.leader_of(MAP_SHARD) == Some(node.id) {
            let has_layout = node.read(MAP_SHARD, cluster::layout).await?.is_some();
            if !has_layout {
                let config = node.config();
                let layout = cluster::Layout {
                    groups: config.placement_groups,
                    replication: config.data_replication,
                    block_size: config.block_size,
                    dead_after_ms: config.data_node_timeout_ms as i64,
                };
                let init = unkeyed(Command::Map(MapCommand::Init(layout)));
                node.propose_local(MAP_SHARD, init).await?;
            }
        }
        let root_shard = ino_shard(ROOT_INO);
        if node.leader_of(root_shard) == Some(node.id) {
            let has_root = node
                .read(root_shard, |txn| {
                    Ok(txn.get(&keys::inode(ROOT_INO))?.is_some())
                })
                .await?;
            if !has_root {
                let init = unkeyed(Command::Fs(FsCommand::InitRoot { now: now_ns() }));
                node.propose_local(root_shard, init).await?;
            }
        }
        Ok(())
    }
}

/// Marks data nodes whose heartbeats stopped as dead (shard 0).
struct Liveness;

impl Worker for Liveness {
    fn name(&self) -> &'static str {
        "liveness"
    }

    fn period(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn run(&self, node: &MetaNode) -> Result<(), MetaError> {
        if node.leader_of(MAP_SHARD) != Some(node.id) {
            return Ok(());
        }
        let check = MapCommand::Liveness {
            now_ms: now_ns() / 1_000_000,
            replace_after_ms: node.config().replace_after_ms as i64,
        };
        node.propose_local(MAP_SHARD, unkeyed(Command::Map(check)))
            .await
            .map(|_| ())
    }
}

/// Forgets the records of transactions finished here, finishes or rolls back
/// cross-shard transactions whose coordinator died, and trims old transaction
/// tombstones (once a minute).
#[derive(Default)]
struct TxnRecovery {
    last_trim: Mutex<Option<Instant>>,
}

impl Worker for TxnRecovery {
    fn name(&self) -> &'static str {
        "txn-recovery"
    }

    fn period(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn run(&self, node: &MetaNode) -> Result<(), MetaError> {
        let forgot = node.forget_finished_txns().await;
        node.recover_txns().await;
        let due = {
            let mut last = self.last_trim.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            node.trim_txn_tombstones().await?;
        }
        forgot
    }
}

/// Expires client sessions (their open files and locks) and old orphans.
struct Sessions;

impl Worker for Sessions {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn period(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn run(&self, node: &MetaNode) -> Result<(), MetaError> {
        let mut result = Ok(());
        for shard in led_namespace_shards(node) {
            if let Err(e) = node.expire_sessions(shard).await {
                result = Err(e);
            }
        }
        result
    }
}

/// Deletes the blocks of freed slices on the data servers, each once it has
/// waited `gc-delay-ms` in the queue (counted from when this leader first saw
/// it: a new leader starts counting afresh, which only waits longer).
#[derive(Default)]
struct Gc {
    seen: Mutex<HashMap<ShardId, HashMap<u64, Instant>>>,
}

impl Worker for Gc {
    fn name(&self) -> &'static str {
        "gc"
    }

    fn period(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn run(&self, node: &MetaNode) -> Result<(), MetaError> {
        let delay = Duration::from_millis(node.config().gc_delay_ms);
        let mut result = Ok(());
        for shard in led_namespace_shards(node) {
            let queue = match node
                .read(shard, |txn| fs::gc_queue(txn, crate::gc::BATCH))
                .await
            {
                Ok(queue) => queue,
                Err(e) => {
                    result = Err(e);
                    continue;
                }
            };
            let ripe: Vec<(u64, u32)> = {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                let old = seen.remove(&shard).unwrap_or_default();
                let now = Instant::now();
                let firsts: HashMap<u64, Instant> = queue
                    .iter()
                    .map(|(id, _)| (*id, old.get(id).copied().unwrap_or(now)))
                    .collect();
                let ripe = queue
                    .into_iter()
                    .filter(|(id, _)| firsts[id].elapsed() >= delay)
                    .collect();
                seen.insert(shard, firsts);
                ripe
            };
            if let Err(e) = crate::gc::collect(node, shard, &ripe).await {
                result = Err(e);
            }
        }
        result
    }
}

/// How long a remembered reply is kept for a client's retry. Clients retry
/// for seconds (30 s by default), so minutes are ample.
const REPLY_KEEP: Duration = Duration::from_secs(10 * 60);

/// Forgets remembered replies older than [`REPLY_KEEP`]. Apply has no clock,
/// so age is told by log index: every run samples each led shard's applied
/// index, and replies applied before the index sampled `REPLY_KEEP` ago go.
#[derive(Default)]
struct ReplyTrim {
    samples: Mutex<HashMap<ShardId, VecDeque<(Instant, u64)>>>,
}

impl Worker for ReplyTrim {
    fn name(&self) -> &'static str {
        "reply-trim"
    }

    fn period(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn run(&self, node: &MetaNode) -> Result<(), MetaError> {
        for shard in node.shards() {
            let Some(raft) = node
                .raft(shard)
                .filter(|_| node.leader_of(shard) == Some(node.id))
            else {
                continue;
            };
            let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
            let before = {
                let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
                let shard_samples = samples.entry(shard).or_default();
                shard_samples.push_back((Instant::now(), applied));
                let mut before = None;
                while shard_samples
                    .front()
                    .is_some_and(|(at, _)| at.elapsed() >= REPLY_KEEP)
                {
                    before = shard_samples.pop_front().map(|(_, index)| index);
                }
                before
            };
            if let Some(before_index) = before {
                let trim = unkeyed(Command::TrimReplies { before_index });
                node.propose_local(shard, trim).await?;
            }
        }
        Ok(())
    }
}
