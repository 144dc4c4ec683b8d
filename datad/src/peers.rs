//! Cached gRPC channels to other nodes (downstream datads, metads): one lazily
//! connected [`Channel`] per address, reused by every request, reconnecting on
//! its own after a failure. Addresses are `host:port`, with or without a scheme.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cairn_proto::pb::data_client::DataClient;
use cairn_proto::pb::meta_client::MetaClient;
use cairn_proto::MAX_MESSAGE_BYTES;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::error::DataError;

/// A cache of channels, all created with the same timeouts.
pub struct Channels {
    connect_timeout: Duration,
    request_timeout: Duration,
    cache: Mutex<HashMap<String, Channel>>,
}

impl Channels {
    /// `request_timeout` bounds every call made over these channels.
    pub fn new(connect_timeout: Duration, request_timeout: Duration) -> Channels {
        Channels {
            connect_timeout,
            request_timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The channel to `addr`, created (without connecting) on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, DataError> {
        // A poisoned lock only means another thread panicked mid-insert; the map
        // itself is still valid.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = cache.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(uri(addr))
            .map_err(|e| DataError::Invalid(format!("bad address {addr:?}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        cache.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// A `Data` client for `addr` accepting full-size blocks.
    pub fn data(&self, addr: &str) -> Result<DataClient<Channel>, DataError> {
        Ok(DataClient::new(self.get(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// A `Meta` client for `addr`.
    pub fn meta(&self, addr: &str) -> Result<MetaClient<Channel>, DataError> {
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
        let channels = Channels::new(Duration::from_secs(1), Duration::from_secs(1));
        channels.get("127.0.0.1:1").unwrap();
        channels.get("http://127.0.0.1:1").unwrap();
        channels.get("127.0.0.1:1").unwrap();
        assert_eq!(channels.cache.lock().unwrap().len(), 2);
        assert!(matches!(
            channels.get("bad address with spaces"),
            Err(DataError::Invalid(_))
        ));
        assert_eq!(uri("a:1"), "http://a:1");
        assert_eq!(uri("https://a:1"), "https://a:1");
    }
}
