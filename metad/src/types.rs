//! The Raft type configuration and the commands a shard replicates.
//!
//! A [`Request`] is what goes into a shard's Raft log: a command plus the
//! (client, sequence, step) that makes it exactly-once. Every command carries the
//! time it was issued, so applying it is deterministic on every replica.

use serde::Deserialize;
use serde::Serialize;

use crate::cluster::MapCommand;
use crate::fs::FsCommand;
use crate::fs::Reply;
use crate::locks::LockCommand;
use crate::tier::TierCommand;
use crate::txn::TxnCommand;

openraft::declare_raft_types!(
    /// Type configuration of every Cairn metadata shard.
    pub TypeConfig:
        D = Request,
        R = Response,
        SnapshotData = tokio::fs::File,
);

/// A Raft group of one shard.
pub type Raft = openraft::Raft<TypeConfig>;

/// Identifies one step of one client request. Clients use step 0; a coordinator
/// that splits a request over shards numbers its steps, so every step is
/// exactly-once on its own shard.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestKey {
    pub client: u64,
    pub seq: u64,
    pub step: u8,
}

/// One replicated command.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Request {
    pub key: Option<RequestKey>,
    pub cmd: Command,
}

/// Everything a shard can apply.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Command {
    Fs(FsCommand),
    Map(MapCommand),
    Txn(TxnCommand),
    Lock(LockCommand),
    Tier(TierCommand),
    /// Forgets the remembered replies of requests applied before this log
    /// index: their clients stopped retrying long ago (a client retries for
    /// seconds; the trim waits minutes).
    TrimReplies {
        before_index: u64,
    },
}

/// The result of applying a request: a reply or an errno. Blank and membership
/// entries answer `Ok(Reply::None)`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Response(pub Result<Reply, Errno>);

/// A POSIX error with its message, as replicated and remembered for retries.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Errno {
    pub errno: i32,
    pub message: String,
}

impl Errno {
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Errno {
            errno,
            message: message.into(),
        }
    }
}
