//! Lazily connected gRPC channels, cached by address and shared by every caller
//! in a process (metad peers, datad chain forwarding, clients). A channel
//! reconnects by itself after a failure. Addresses are `host:port`, with or
//! without a scheme.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::pb::data_client::DataClient;
use crate::pb::meta_client::MetaClient;
use crate::MAX_MESSAGE_BYTES;

#[derive(Clone)]
pub struct Channels {
    connect_timeout: Duration,
    /// Bounds every call made over these channels, when set.
    request_timeout: Option<Duration>,
    cache: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Default for Channels {
    fn default() -> Self {
        Channels {
            connect_timeout: Duration::from_secs(1),
            request_timeout: None,
            cache: Arc::default(),
        }
    }
}

impl Channels {
    /// Channels whose calls each time out after `request_timeout`.
    pub fn with_timeouts(connect_timeout: Duration, request_timeout: Duration) -> Self {
        Channels {
            connect_timeout,
            request_timeout: Some(request_timeout),
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
        let mut endpoint = Endpoint::from_shared(uri(addr))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_adaptive_window(true);
        if let Some(timeout) = self.request_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        let ch = endpoint.connect_lazy();
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
