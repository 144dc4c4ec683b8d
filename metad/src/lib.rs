//! cairn-metad: the metadata service.
//!
//! A metad process hosts replicas of many metadata shards (multi-Raft with
//! openraft, every shard's log and state machine in one RocksDB), serves the
//! namespace and the cluster map over gRPC, and coordinates operations that span
//! shards.
//!
//! - `types`: Raft type config and replicated commands;
//! - `kv`: the RocksDB column families and per-command transactions;
//! - `keys`: every state-machine key: tags, builders, decoders;
//! - `store`: openraft log store and state machine;
//! - `fs`: namespace commands as a shard applies them;
//! - `cluster`: shard 0's cluster map (data nodes, placement groups, slice ids);
//! - `txn`: two-phase commit records, intents and locks for cross-shard operations;
//! - `slices`: chunk slice lists (painted) and the slice references that
//!   free a slice's blocks when no chunk shows it;
//! - `holes`: fallocate: allocation, and ranges zeroed as holes whose
//!   hidden slices are freed;
//! - `locks`: advisory file locks (fcntl and flock) of an inode;
//! - `gc`: deletes the blocks of freed slices on the data servers;
//! - `network`: Raft transport over gRPC;
//! - `node`: shard hosting, routing, linearizable reads;
//! - `worker`, `duties`: background workers (setup, liveness, transaction
//!   recovery, session expiry, GC), each on its own task with a deadline;
//! - `coordinator`: namespace mutations, single-shard or as transactions;
//! - `service`: the gRPC edge (validation and conversion);
//! - `config`, `error`.

pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod duties;
pub mod error;
pub mod fs;
pub mod gc;
pub mod holes;
pub mod keys;
pub mod kv;
pub mod locks;
pub mod network;
pub mod node;
pub mod service;
pub mod slices;
pub mod store;
pub mod tier;
pub mod txn;
pub mod types;
pub mod worker;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::MetaError;
pub use node::MetaNode;

/// Starts a metad on `config.listen` and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), MetaError> {
    let listener = TcpListener::bind(&config.listen).await?;
    serve(config, listener, shutdown).await
}

/// Serves a metad on an already bound listener (tests bind port 0).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), MetaError> {
    let node = MetaNode::start(config).await?;
    let workers = duties::start(&node, &shutdown);
    let meta =
        cairn_proto::pb::meta_server::MetaServer::new(service::MetaService { node: node.clone() })
            .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES);
    let raft =
        cairn_proto::pb::raft_server::RaftServer::new(service::RaftService { node: node.clone() })
            .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES * 8)
            .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES * 8);
    tracing::info!(id = node.id, addr = %listener.local_addr()?, "metad serving");
    // TCP_NODELAY: without it a reply written in several pieces (headers,
    // a few KiB of data, trailers) waits out the client's delayed ACK (40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
        .map_err(|e| MetaError::Io(std::io::Error::other(e)))?;
    let result = tonic::transport::Server::builder()
        .add_service(meta)
        .add_service(raft)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await
        .map_err(|e| MetaError::Io(std::io::Error::other(e)));
    shutdown.cancel();
    for w in workers {
        let _ = w.await;
    }
    node.shutdown().await;
    result
}
