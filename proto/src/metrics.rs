//! The one HTTP endpoint every Cairn process exposes for operations: a
//! Prometheus registry served as text format on `GET /metrics`, and
//! `GET /health` answering 200 `ok` while the process serves. Anything else is
//! 404 (405 for another method on a known path).
//!
//! Built on the hyper 1 stack that tonic already brings (HTTP/1.1 only: that is
//! what Prometheus scrapes with). The registry is complete before serving
//! starts; metric values change through the handles the owners keep (counters
//! and gauges are shared atomics), so a scrape takes no lock of theirs.
//! Shutdown is graceful: cancelling the token stops accepting, lets requests in
//! flight finish and closes idle keep-alive connections; every connection task
//! is owned by the server and joined before [`MetricsServer::serve`] returns.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Method;
use hyper::Request;
use hyper::Response;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why the metrics endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address is taken, not local, or not allowed.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics listener: {0}")]
    Io(#[from] std::io::Error),
}

impl MetricsError {
    /// Whether trying again unchanged cannot help (a bad or taken address).
    pub fn is_permanent(&self) -> bool {
        matches!(self, MetricsError::Bind { .. })
    }
}

/// A bound metrics endpoint, not yet serving.
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port; see [`MetricsServer::local_addr`]).
    /// Binding before the process starts its real work makes a taken port a
    /// start-up error rather than a silent gap in monitoring.
    pub async fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(MetricsServer { listener })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr, MetricsError> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves `registry` until `shutdown` is cancelled, then drains the open
    /// connections.
    pub async fn serve(
        self,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> Result<(), MetricsError> {
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
                // Reap finished connections as we go so the set stays small.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                // Per-connection failures (the peer reset, too many open files
                // for a moment) must not stop the endpoint.
                Err(e) => {
                    tracing::debug!("metrics accept failed: {e}");
                    continue;
                }
            };
            let registry = registry.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let service = service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &registry)) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!("metrics connection: {e}");
                }
            });
        }
        drop(self.listener);
        while connections.join_next().await.is_some() {}
        Ok(())
    }
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let known = matches!(req.uri().path(), "/metrics" | "/health");
    if known && req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/health" => plain(StatusCode::OK, "ok"),
        "/metrics" => {
            let mut text = String::new();
            match prometheus_text::encode(&mut text, registry) {
                Ok(()) => response(StatusCode::OK, prometheus_text::CONTENT_TYPE, text),
                Err(e) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("encoding metrics: {e}\n"),
                ),
            }
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /health\n",
        ),
    }
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body.to_string())
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    resp
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// One HTTP/1.1 request on a fresh connection: (status code, body).
    async fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    }

    /// `name value` lines of the text format, comments left out.
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').unwrap();
                (name.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    #[tokio::test]
    async fn serves_metrics_and_health_then_shuts_down() {
        let mut registry = Registry::default();
        let requests = Counter::<u64>::default();
        let backlog = Gauge::<i64>::default();
        registry.register("test_requests", "Requests seen", requests.clone());
        registry.register("test_backlog", "Items waiting", backlog.clone());
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(Arc::new(registry), shutdown.clone()));

        assert_eq!(get(addr, "GET", "/health").await, (200, "ok".to_string()));
        requests.inc_by(41);
        requests.inc();
        backlog.set(-3);
        let (status, body) = get(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        let samples = samples(&body);
        assert!(
            samples.contains(&("test_requests_total".to_string(), 42.0)),
            "{body}"
        );
        assert!(
            samples.contains(&("test_backlog".to_string(), -3.0)),
            "{body}"
        );
        assert!(
            body.contains("# TYPE test_requests_total counter"),
            "{body}"
        );
        assert_eq!(get(addr, "GET", "/nope").await.0, 404);
        assert_eq!(get(addr, "POST", "/metrics").await.0, 405);

        // An idle keep-alive connection does not hold shutdown up.
        let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        shutdown.cancel();
        task.await.unwrap().unwrap();
        drop(idle);
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_taken_port_is_a_bind_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = MetricsServer::bind(addr).await.err().unwrap();
        assert!(err.is_permanent(), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
