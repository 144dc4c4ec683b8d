//! cairn-datad: the data service of Cairn.
//!
//! A datad stores immutable blocks (≤ 4 MiB, each with a crc32c verified on every
//! read) as files on local disk with a RocksDB index ([`store`]), serves them over
//! the gRPC `Data` service ([`service`]), replicates writes down a chain of datads
//! with chain-version fencing ([`fence`]), and reports its capacity and usage to
//! metad with a periodic heartbeat ([`heartbeat`] over [`meta`]), moves blocks to
//! and from the cluster's cold tier ([`tier`] over [`cold`]), and re-reads every
//! block in the background, repairing damaged copies from other replicas
//! ([`scrub`]), copies in the blocks of chains it newly joined ([`resync`]),
//! deletes blocks no file refers to ([`orphans`]), and answers `cairn fsck`
//! ([`fsck`]).
//!
//! [`run`] is the whole daemon; [`serve`] is the same on a listener the caller
//! bound (tests use ephemeral ports).

pub mod cold;
pub mod config;
pub mod error;
pub mod fence;
pub mod fsck;
pub mod heartbeat;
pub mod meta;
pub mod orphans;
pub mod periodic;
pub mod resync;
pub mod scrub;
pub mod service;
pub mod store;
pub mod tier;

pub use config::Config;
pub use error::DataError;
pub use service::DataService;
use std::sync::Arc;
use std::time::Duration;
pub use store::BlockId;
pub use store::BlockStore;
pub use store::StoreStats;
pub use store::MAX_BLOCK_BYTES;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::fence::ChainFence;
use crate::heartbeat::Heartbeat;
use crate::orphans::Orphans;
use crate::resync::Resync;
use crate::scrub::Scrubber;
use crate::tier::Tiering;

/// Runs a datad: validates `config`, binds `listen`, and serves until `shutdown`
/// is cancelled (see [`serve`]).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DataError> {
    config.validate()?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| DataError::Transport(format!("binding {}: {e}", config.listen)))?;
    serve(config, listener, shutdown).await
}

/// Serves a datad on `listener` until `shutdown` is cancelled: opens the block
/// store, serves the `Data` service, heartbeats to metad and scrubs. On shutdown
/// it stops accepting, lets in-flight requests finish, stops the heartbeat and
/// the scrubber and closes the store before returning. When `advertise` is unset, the listener's actual
/// address is advertised (so port 0 works).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DataError> {
    config.validate()?;
    let local = listener.local_addr()?;
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| local.to_string());

    let store = BlockStore::open(&config.data_dir, config.capacity_bytes).await?;
    let cold_stop = CancellationToken::new();
    let tiering = Arc::new(Tiering::new(
        store.clone(),
        config.cold.clone(),
        cold_stop.clone(),
    ));
    let pressure = tokio::spawn(Arc::clone(&tiering).pressure_loop(cold_stop.clone()));
    let fence = Arc::new(if config.meta.is_empty() {
        ChainFence::standalone(config.id)
    } else {
        ChainFence::new(config.id)
    });
    let mut service = DataService::new(config.id, Arc::clone(&tiering), Arc::clone(&fence));
    let jobs_stop = shutdown.child_token();
    let scrub = match config.scrub() {
        Some(pacing) => {
            let scrubber = Scrubber::new(config.id, store.clone(), pacing, config.meta.clone());
            service = service.with_scrub(scrubber.counters());
            Some(tokio::spawn(scrubber.run(jobs_stop.clone())))
        }
        None => {
            tracing::info!("scrubbing is off (scrub-interval-s and scrub-light-interval-s 0)");
            None
        }
    };
    // A node with metads heartbeats to them and resyncs the chains it joins.
    let heartbeat_stop = shutdown.child_token();
    let (heartbeat, resync, orphans) = if config.meta.is_empty() {
        tracing::warn!("no metad addresses configured: this node will not register");
        (None, None, None)
    } else {
        let orphans = match config.orphans() {
            Some(pacing) => {
                let job =
                    Orphans::new(config.id, Arc::clone(&tiering), pacing, config.meta.clone());
                service = service.with_orphans(job.counters());
                Some(tokio::spawn(job.run(jobs_stop.clone())))
            }
            None => None,
        };
        let resync = Resync::new(
            config.id,
            store.clone(),
            Arc::clone(&fence),
            config.meta.clone(),
            Duration::from_millis(config.resync_check_ms),
            config.resync_rate_mb_s.saturating_mul(1_000_000),
        );
        service = service.with_resync(resync.counters());
        let beat = Heartbeat::new(
            config.id,
            advertise.clone(),
            config.meta.clone(),
            config.heartbeat(),
            Arc::clone(&tiering),
            fence,
            resync.state(),
        );
        (
            Some(tokio::spawn(beat.run(heartbeat_stop.clone()))),
            Some(tokio::spawn(resync.run(jobs_stop.clone()))),
            orphans,
        )
    };
    let incoming = TcpIncoming::from_listener(listener, true, None)
        .map_err(|e| DataError::Transport(e.to_string()))?;
    drop(store);

    tracing::info!(id = config.id, listen = %local, %advertise, "datad serving");
    let served = Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await;

    heartbeat_stop.cancel();
    jobs_stop.cancel();
    cold_stop.cancel();
    for (job, task) in [("scrub", scrub), ("resync", resync), ("orphans", orphans)] {
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "{job} task failed");
            }
        }
    }
    if let Err(e) = pressure.await {
        tracing::error!(error = %e, "capacity-pressure task failed");
    }
    drop(tiering);
    if let Some(task) = heartbeat {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "heartbeat task failed");
        }
    }
    served.map_err(|e| DataError::Transport(e.to_string()))?;
    tracing::info!(id = config.id, "datad stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use cairn_proto::pb;
    use cairn_proto::pb::data_client::DataClient;
    use cairn_proto::pb::meta_server::Meta;
    use cairn_proto::pb::meta_server::MetaServer;
    use cairn_proto::status::decode;
    use cairn_proto::status::not_leader_status;
    use cairn_proto::status::WireError;
    use cairn_proto::status::EIO;
    use cairn_proto::status::ENOENT;
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tonic::transport::Channel;
    use tonic::Code;
    use tonic::Request;
    use tonic::Response;
    use tonic::Status;

    use super::*;
    use cairn_proto::channel::Channels;

    /// Generous bound for conditions that normally hold within milliseconds.
    const WAIT: Duration = Duration::from_secs(20);

    struct Node {
        addr: String,
        stop: CancellationToken,
        task: JoinHandle<Result<(), DataError>>,
        _dir: tempfile::TempDir,
    }

    impl Node {
        async fn start(id: u64, meta: Vec<String>) -> Node {
            let dir = tempfile::tempdir().unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let config = Config {
                id,
                listen: "127.0.0.1:0".into(),
                data_dir: dir.path().to_path_buf(),
                meta,
                heartbeat_ms: 20,
                ..Config::default()
            };
            let stop = CancellationToken::new();
            let task = tokio::spawn(serve(config, listener, stop.clone()));
            Node {
                addr,
                stop,
                task,
                _dir: dir,
            }
        }

        fn client(&self) -> DataClient<Channel> {
            Channels::with_timeouts(WAIT, WAIT)
                .data(&self.addr)
                .unwrap()
        }

        async fn stop(self) {
            self.stop.cancel();
            tokio::time::timeout(WAIT, self.task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    /// An address nothing listens on.
    async fn dead_addr() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn put_request(
        slice_id: u64,
        data: &[u8],
        version: u64,
        rest: Vec<String>,
    ) -> pb::PutBlockRequest {
        pb::PutBlockRequest {
            block: Some(pb::BlockId { slice_id, index: 0 }),
            crc32c: crc32c::crc32c(data),
            data: Bytes::copy_from_slice(data),
            group: 3,
            chain_version: version,
            rest,
        }
    }

    async fn get(node: &Node, slice_id: u64) -> Result<pb::GetBlockReply, Status> {
        node.client()
            .get_block(pb::GetBlockRequest {
                block: Some(pb::BlockId { slice_id, index: 0 }),
                offset: 0,
                len: 0,
            })
            .await
            .map(Response::into_inner)
    }

    fn errno(status: &Status) -> Option<i32> {
        match decode(status) {
            WireError::Errno { errno, .. } => Some(errno),
            _ => None,
        }
    }

    async fn three_nodes() -> (Node, Node, Node) {
        (
            Node::start(1, vec![]).await,
            Node::start(2, vec![]).await,
            Node::start(3, vec![]).await,
        )
    }

    #[tokio::test]
    async fn chain_put_reaches_every_replica() {
        let (a, b, c) = three_nodes().await;
        let data: Vec<u8> = (0..MAX_BLOCK_BYTES).map(|i| (i % 251) as u8).collect();
        let rest = vec![b.addr.clone(), c.addr.clone()];
        a.client()
            .put_block(put_request(42, &data, 1, rest.clone()))
            .await
            .unwrap();
        for node in [&a, &b, &c] {
            let reply = get(node, 42).await.unwrap();
            assert_eq!(&reply.data[..], &data[..], "node {}", node.addr);
            assert_eq!(reply.block_crc32c, crc32c::crc32c(&data));
            let stat = node
                .client()
                .stat(pb::DataStatRequest {})
                .await
                .unwrap()
                .into_inner();
            assert_eq!((stat.blocks, stat.used_bytes), (1, data.len() as u64));
        }
        // A retried put is acknowledged again and stores nothing new.
        a.client()
            .put_block(put_request(42, &data, 1, rest))
            .await
            .unwrap();
        let stat = c.client().stat(pb::DataStatRequest {}).await.unwrap();
        assert_eq!(stat.into_inner().blocks, 1);

        // Range read and delete over the wire.
        let range = a
            .client()
            .get_block(pb::GetBlockRequest {
                block: Some(pb::BlockId {
                    slice_id: 42,
                    index: 0,
                }),
                offset: 10,
                len: 5,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&range.data[..], &data[10..15]);
        let deleted = b
            .client()
            .delete_blocks(pb::DeleteBlocksRequest {
                blocks: vec![pb::BlockId {
                    slice_id: 42,
                    index: 0,
                }],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(deleted.deleted, 1);
        let missing = get(&b, 42).await.unwrap_err();
        assert_eq!(errno(&missing), Some(ENOENT));

        for node in [a, b, c] {
            node.stop().await;
        }
    }

    #[tokio::test]
    async fn writes_are_fenced_by_the_chain_table_of_shard_0() {
        let meta = fake_meta(None).await;
        meta.set_groups(vec![pb::PlacementGroup {
            id: 3,
            chain: vec![1, 2, 3],
            version: 5,
            syncing: Vec::new(),
        }]);
        let start = |id| Node::start(id, vec![meta.addr.clone()]);
        let (a, b, c) = (start(1).await, start(2).await, start(3).await);
        let rest = vec![b.addr.clone(), c.addr.clone()];
        a.client()
            .put_block(put_request(1, b"current", 5, rest.clone()))
            .await
            .unwrap();

        // Older than the table, and newer than shard 0 ever issued (forged):
        // refused on the head, nothing stored anywhere.
        for (slice, version) in [(2, 4), (3, 6), (4, u64::MAX)] {
            let err = a
                .client()
                .put_block(put_request(slice, b"fenced", version, rest.clone()))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
            for node in [&a, &b, &c] {
                let missing = get(node, slice).await.unwrap_err();
                assert_eq!(errno(&missing), Some(ENOENT), "node {}", node.addr);
            }
        }
        // A forged version sent to a replica directly poisons nothing either.
        let err = c
            .client()
            .put_block(put_request(5, b"forged", u64::MAX, vec![]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        a.client()
            .put_block(put_request(6, b"still current", 5, rest.clone()))
            .await
            .unwrap();

        // Shard 0 moves the chain on: the new version is confirmed at once
        // (no waiting for the next beat) and the old one is fenced everywhere.
        meta.set_groups(vec![pb::PlacementGroup {
            id: 3,
            chain: vec![1, 2, 3],
            version: 6,
            syncing: Vec::new(),
        }]);
        a.client()
            .put_block(put_request(7, b"new chain", 6, rest.clone()))
            .await
            .unwrap();
        let err = b
            .client()
            .put_block(put_request(8, b"old chain", 5, vec![]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

        // A node outside the chain takes no writes for it.
        meta.set_groups(vec![pb::PlacementGroup {
            id: 3,
            chain: vec![1, 2],
            version: 7,
            syncing: Vec::new(),
        }]);
        let err = c
            .client()
            .put_block(put_request(9, b"not a member", 7, vec![]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("not in chain"), "{err:?}");

        for node in [a, b, c] {
            node.stop().await;
        }
        meta.stop().await;
    }

    #[tokio::test]
    async fn dead_tail_fails_the_put() {
        let (a, b) = (Node::start(1, vec![]).await, Node::start(2, vec![]).await);
        let rest = vec![b.addr.clone(), dead_addr().await];
        let err = a
            .client()
            .put_block(put_request(7, b"never acknowledged", 1, rest))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("replica"), "{err:?}");
        for node in [a, b] {
            node.stop().await;
        }
    }

    #[tokio::test]
    async fn corrupt_or_malformed_puts_store_nothing() {
        let (a, b, c) = three_nodes().await;
        let rest = vec![b.addr.clone(), c.addr.clone()];
        let mut bad_crc = put_request(8, b"payload", 1, rest.clone());
        bad_crc.crc32c ^= 1;
        let err = a.client().put_block(bad_crc).await.unwrap_err();
        assert_eq!(errno(&err), Some(EIO), "{err:?}");

        let mut too_big = put_request(9, &vec![0u8; MAX_BLOCK_BYTES + 1], 1, rest.clone());
        too_big.crc32c = crc32c::crc32c(&too_big.data);
        let err = a.client().put_block(too_big).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

        let mut no_id = put_request(10, b"x", 1, rest);
        no_id.block = None;
        let err = a.client().put_block(no_id).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

        for node in [&a, &b, &c] {
            let stat = node.client().stat(pb::DataStatRequest {}).await.unwrap();
            assert_eq!(stat.into_inner().blocks, 0, "node {}", node.addr);
        }
        for node in [a, b, c] {
            node.stop().await;
        }
    }

    #[tokio::test]
    async fn restart_keeps_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().to_path_buf(),
            meta: vec![],
            ..Config::default()
        };
        for round in 0..2 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let stop = CancellationToken::new();
            let task = tokio::spawn(serve(config.clone(), listener, stop.clone()));
            let mut client = Channels::with_timeouts(WAIT, WAIT).data(&addr).unwrap();
            if round == 0 {
                client
                    .put_block(put_request(77, b"kept", 9, vec![]))
                    .await
                    .unwrap();
            } else {
                let reply = client
                    .get_block(pb::GetBlockRequest {
                        block: Some(pb::BlockId {
                            slice_id: 77,
                            index: 0,
                        }),
                        offset: 0,
                        len: 0,
                    })
                    .await
                    .unwrap();
                assert_eq!(&reply.into_inner().data[..], b"kept");
            }
            drop(client);
            stop.cancel();
            tokio::time::timeout(WAIT, task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    /// A metad stand-in that answers only RegisterDataNode: either with
    /// "not the leader" naming `leader`, or by recording the request and
    /// answering with the chain table `groups`.
    struct FakeMeta {
        leader: Option<String>,
        seen: mpsc::UnboundedSender<pb::RegisterDataNodeRequest>,
        groups: Arc<std::sync::Mutex<Vec<pb::PlacementGroup>>>,
    }

    #[tonic::async_trait]
    impl Meta for FakeMeta {
        async fn register_data_node(
            &self,
            request: Request<pb::RegisterDataNodeRequest>,
        ) -> Result<Response<pb::RegisterDataNodeReply>, Status> {
            let _ = self.seen.send(request.get_ref().clone());
            match &self.leader {
                Some(leader) => Err(not_leader_status(Some((2, leader)))),
                None => Ok(Response::new(pb::RegisterDataNodeReply {
                    cold: None,
                    groups: self.groups.lock().unwrap().clone(),
                })),
            }
        }
        async fn lookup(
            &self,
            _: Request<pb::LookupRequest>,
        ) -> Result<Response<pb::AttrReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_attr(
            &self,
            _: Request<pb::GetAttrRequest>,
        ) -> Result<Response<pb::AttrReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn read_dir(
            &self,
            _: Request<pb::ReadDirRequest>,
        ) -> Result<Response<pb::ReadDirReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn read_link(
            &self,
            _: Request<pb::ReadLinkRequest>,
        ) -> Result<Response<pb::ReadLinkReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_xattr(
            &self,
            _: Request<pb::GetXattrRequest>,
        ) -> Result<Response<pb::GetXattrReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn list_xattr(
            &self,
            _: Request<pb::ListXattrRequest>,
        ) -> Result<Response<pb::ListXattrReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn read_chunks(
            &self,
            _: Request<pb::ReadChunksRequest>,
        ) -> Result<Response<pb::ReadChunksReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn stat_fs(
            &self,
            _: Request<pb::StatFsRequest>,
        ) -> Result<Response<pb::StatFsReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn mutate(
            &self,
            _: Request<pb::MutateRequest>,
        ) -> Result<Response<pb::MutateReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_cluster_map(
            &self,
            _: Request<pb::ClusterMapRequest>,
        ) -> Result<Response<pb::ClusterMap>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn alloc_slice_ids(
            &self,
            _: Request<pb::AllocSliceIdsRequest>,
        ) -> Result<Response<pb::AllocSliceIdsReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn slice_refs(
            &self,
            _: Request<pb::SliceRefsRequest>,
        ) -> Result<Response<pb::SliceRefsReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn list_slice_refs(
            &self,
            _: Request<pb::ListSliceRefsRequest>,
        ) -> Result<Response<pb::ListSliceRefsReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn renew_session(
            &self,
            _: Request<pb::RenewSessionRequest>,
        ) -> Result<Response<pb::RenewSessionReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_lock(
            &self,
            _: Request<pb::GetLockRequest>,
        ) -> Result<Response<pb::GetLockReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn set_data_node_state(
            &self,
            _: Request<pb::SetDataNodeStateRequest>,
        ) -> Result<Response<pb::SetDataNodeStateReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_workers(
            &self,
            _: Request<pb::GetWorkersRequest>,
        ) -> Result<Response<pb::GetWorkersReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_tier(
            &self,
            _: Request<pb::GetTierRequest>,
        ) -> Result<Response<pb::TierConfig>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn update_tier(
            &self,
            _: Request<pb::UpdateTierRequest>,
        ) -> Result<Response<pb::UpdateTierReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    struct FakeMetaServer {
        addr: String,
        seen: mpsc::UnboundedReceiver<pb::RegisterDataNodeRequest>,
        groups: Arc<std::sync::Mutex<Vec<pb::PlacementGroup>>>,
        stop: CancellationToken,
        task: JoinHandle<Result<(), tonic::transport::Error>>,
    }

    impl FakeMetaServer {
        /// The chain table the next heartbeat answers carry.
        fn set_groups(&self, groups: Vec<pb::PlacementGroup>) {
            *self.groups.lock().unwrap() = groups;
        }

        async fn stop(self) {
            self.stop.cancel();
            tokio::time::timeout(WAIT, self.task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    async fn fake_meta(leader: Option<String>) -> FakeMetaServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, seen) = mpsc::unbounded_channel();
        let groups = Arc::default();
        let stop = CancellationToken::new();
        let incoming = TcpIncoming::from_listener(listener, true, None).unwrap();
        let fake = FakeMeta {
            leader,
            seen: tx,
            groups: Arc::clone(&groups),
        };
        let server = Server::builder()
            .add_service(MetaServer::new(fake))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        FakeMetaServer {
            addr,
            seen,
            groups,
            stop,
            task: tokio::spawn(server),
        }
    }

    #[tokio::test]
    async fn heartbeat_follows_the_leader_and_reports_usage() {
        let mut leader = fake_meta(None).await;
        let mut follower = fake_meta(Some(leader.addr.clone())).await;
        leader.set_groups(vec![pb::PlacementGroup {
            id: 3,
            chain: vec![5],
            version: 1,
            syncing: Vec::new(),
        }]);
        let meta = vec![dead_addr().await, follower.addr.clone()];
        let node = Node::start(5, meta).await;

        let first = tokio::time::timeout(WAIT, leader.seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.id, 5);
        assert_eq!(first.addr, node.addr);
        assert!(first.capacity_bytes > 0, "the disk's size is reported");

        node.client()
            .put_block(put_request(1, b"counted", 1, vec![]))
            .await
            .unwrap();
        let mut beats = 1;
        loop {
            let beat = tokio::time::timeout(WAIT, leader.seen.recv())
                .await
                .unwrap()
                .unwrap();
            beats += 1;
            if beat.blocks == 1 {
                assert_eq!(beat.used_bytes, 7);
                break;
            }
        }
        assert!(beats >= 2);
        node.stop().await;

        // Once the leader was found, later beats went straight to it.
        let mut follower_calls = 0;
        while follower.seen.try_recv().is_ok() {
            follower_calls += 1;
        }
        assert_eq!(follower_calls, 1);

        for server in [leader, follower] {
            server.stop().await;
        }
    }
}
