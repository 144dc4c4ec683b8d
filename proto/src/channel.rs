//! Lazily connected gRPC channels, cached by address and shared by every caller
//! in a process (metad peers, datad chain forwarding, clients). A channel
//! reconnects by itself after a failure. Addresses are `host:port`, with or
//! without a scheme.
//!
//! A peer that hangs without closing its socket (stopped, partitioned, powered
//! off) must not hold a caller forever: every channel pings its peer over
//! HTTP/2 ([`KEEPALIVE_INTERVAL`], even while idle) and drops the connection,
//! failing its calls, when a ping goes unanswered for [`KEEPALIVE_TIMEOUT`];
//! and every call has a deadline ([`DEFAULT_REQUEST_TIMEOUT`] unless the owner
//! sets a shorter one).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::pb::data_client::DataClient;
use crate::pb::meta_client::MetaClient;
use crate::MAX_MESSAGE_BYTES;

/// How often an HTTP/2 ping checks that the peer still answers.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// How long an unanswered ping waits before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);
/// The longest any one call may take: a last resort (a peer that hangs is
/// noticed by the keepalive in seconds); a GC or tiering batch against a slow
/// object store may legitimately take minutes. Callers that need a tighter
/// bound set their own.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5 * 60);

#[derive(Clone)]
pub struct Channels {
    connect_timeout: Duration,
    /// Bounds every call made over these channels.
    request_timeout: Duration,
    cache: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Default for Channels {
    fn default() -> Self {
        Channels {
            connect_timeout: Duration::from_secs(1),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            cache: Arc::default(),
        }
    }
}

impl Channels {
    /// Channels whose calls each time out after `request_timeout`.
    pub fn with_timeouts(connect_timeout: Duration, request_timeout: Duration) -> Self {
        Channels {
            connect_timeout,
            request_timeout,
            cache: Arc::default(),
        }
    }

    /// The channel to `addr`, created (without connecting) on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        // A poisoned lock only means another thread panicked mid-insert; the map
        // itself is still valid.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = cache.get(addr) {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(uri(addr))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .connect_lazy();
        cache.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// A `Data` client for `addr` accepting full-size blocks.
    pub fn data(&self, addr: &str) -> Result<DataClient<Channel>, tonic::transport::Error> {
        Ok(DataClient::new(self.get(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// A `Meta` client for `addr`.
    pub fn meta(&self, addr: &str) -> Result<MetaClient<Channel>, tonic::transport::Error> {
        Ok(MetaClient::new(self.get(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// `host:port` → `http://host:port`; an address with a scheme is kept.
pub fn uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn channels_are_cached_per_address() {
        let channels = Channels::default();
        channels.get("127.0.0.1:1").unwrap();
        channels.get("http://127.0.0.1:1").unwrap();
        channels.get("127.0.0.1:1").unwrap();
        assert_eq!(channels.cache.lock().unwrap().len(), 2);
        assert!(channels.get("bad address with spaces").is_err());
        assert_eq!(uri("a:1"), "http://a:1");
        assert_eq!(uri("https://a:1"), "https://a:1");
    }
}
