//! Serving S3 over HTTP/1.1: s3s parses requests and checks SigV4 (header,
//! presigned query and streaming payloads) against the configured keys; an
//! access rule admits anonymous reads on public buckets only; in front, limits
//! on concurrent requests (503 SlowDown), header size (431) and body size
//! (400 EntityTooLarge, also enforced while a body streams in). Every request
//! is counted by operation and status, timed, and written to the access log.
//! Every answer carries an `x-amz-request-id`; every error answer is completed
//! to S3's shape (Code, Message, Resource, RequestId) here, whichever layer
//! produced it.
//!
//! Metrics (prefixed by the registry's `cairn_`): `s3_requests_total{op,status}`,
//! `s3_request_duration_seconds{op}`, `s3_received_bytes_total`,
//! `s3_sent_bytes_total`, `s3_requests_in_flight`.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use s3s::access::S3Access;
use s3s::access::S3AccessContext;
use s3s::auth::S3Auth;
use s3s::auth::SecretKey;
use s3s::service::S3Service;
use s3s::service::S3ServiceBuilder;
use s3s::Body;
use s3s::S3Result;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::Store;

/// Operations an anonymous request may run on a public bucket.
const ANONYMOUS_READS: &[&str] = &[
    "GetObject",
    "HeadObject",
    "ListObjects",
    "ListObjectsV2",
    "HeadBucket",
    "GetBucketLocation",
];

/// What the access check learns about a request, for metrics and the log.
#[derive(Default)]
struct Seen {
    op: Option<String>,
    access_key: Option<String>,
}

#[derive(Clone, Default)]
struct SeenSlot(Arc<Mutex<Seen>>);

/// The configured access keys. An unknown key is 403 `InvalidAccessKeyId`, as
/// in S3 (s3s's `SimpleAuth` answers `NotSignedUp`, which SDKs do not know).
struct Keys(std::collections::HashMap<String, SecretKey>);

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.0.get(access_key).cloned().ok_or_else(|| {
            s3s::s3_error!(
                InvalidAccessKeyId,
                "the access key id you provided does not exist in our records"
            )
        })
    }
}

struct Access {
    public: HashSet<String>,
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let op = cx.s3_op().name().to_owned();
        let key = cx.credentials().map(|c| c.access_key.clone());
        let allowed = key.is_some()
            || (ANONYMOUS_READS.contains(&op.as_str())
                && cx
                    .s3_path()
                    .get_bucket_name()
                    .is_some_and(|b| self.public.contains(b)));
        if let Some(slot) = cx.extensions_mut().get::<SeenSlot>() {
            let mut seen = slot.0.lock().expect("seen lock");
            seen.op = Some(op);
            seen.access_key = key;
        }
        if allowed {
            Ok(())
        } else {
            Err(s3s::s3_error!(AccessDenied, "a signed request is required"))
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpStatus {
    op: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: String,
}

#[derive(Clone)]
struct Metrics {
    requests: Family<OpStatus, Counter>,
    duration: Family<OpLabel, Histogram>,
    received: Counter,
    sent: Counter,
    in_flight: Gauge,
}

impl Metrics {
    fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(100e-6, 2.0, 18))
            }),
            received: Counter::default(),
            sent: Counter::default(),
            in_flight: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("s3");
        r.register(
            "requests",
            "S3 requests by operation and HTTP status",
            m.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "S3 request latency to the response head, by operation",
            prometheus_client::registry::Unit::Seconds,
            m.duration.clone(),
        );
        r.register_with_unit(
            "received",
            "Request body bytes announced by Content-Length",
            prometheus_client::registry::Unit::Bytes,
            m.received.clone(),
        );
        r.register_with_unit(
            "sent",
            "Response body bytes announced by Content-Length",
            prometheus_client::registry::Unit::Bytes,
            m.sent.clone(),
        );
        r.register(
            "requests_in_flight",
            "S3 requests being served",
            m.in_flight.clone(),
        );
        m
    }
}

/// A bound gateway, not yet serving.
pub struct Gateway {
    listener: TcpListener,
    shared: Arc<Shared>,
    max_header_bytes: usize,
}

struct Shared {
    service: S3Service,
    permits: Semaphore,
    max_object_bytes: u64,
    metrics: Metrics,
    access_log: Option<Mutex<std::io::LineWriter<std::fs::File>>>,
}

impl Gateway {
    /// Binds `config.listen` (port 0: any free port) and registers the
    /// gateway's metrics in `registry`.
    pub async fn bind(
        config: &Config,
        store: Store,
        registry: &mut Registry,
    ) -> anyhow::Result<Gateway> {
        config.check()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for S3 on {}: {e}", config.listen))?;
        let auth = Keys(
            config
                .keys
                .iter()
                .map(|k| (k.access_key.clone(), k.secret_key.clone().into()))
                .collect(),
        );
        let max_object_bytes = store.max_object_bytes;
        let mut builder = S3ServiceBuilder::new(store);
        builder.set_auth(auth);
        builder.set_access(Access {
            public: config.public_buckets.iter().cloned().collect(),
        });
        let access_log = match &config.access_log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        anyhow::anyhow!("opening the access log {}: {e}", path.display())
                    })?;
                Some(Mutex::new(std::io::LineWriter::new(file)))
            }
            None => None,
        };
        Ok(Gateway {
            listener,
            shared: Arc::new(Shared {
                service: builder.build(),
                permits: Semaphore::new(config.max_concurrent_requests),
                max_object_bytes,
                metrics: Metrics::register(registry),
                access_log,
            }),
            max_header_bytes: config.max_header_bytes,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then lets requests in flight
    /// finish; every connection task is joined before this returns.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("s3 accept failed: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let shared = self.shared.clone();
            let shutdown = shutdown.clone();
            let max_header_bytes = self.max_header_bytes;
            connections.spawn(async move {
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(shared.handle(req, peer).await) }
                });
                let conn = http1::Builder::new()
                    .max_buf_size(max_header_bytes)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!("s3 connection from {peer}: {e}");
                }
            });
        }
        while connections.join_next().await.is_some() {}
        Ok(())
    }
}

impl Shared {
    async fn handle(
        &self,
        req: hyper::Request<Incoming>,
        peer: SocketAddr,
    ) -> hyper::Response<Body> {
        let start = Instant::now();
        let request_id = format!("{:016X}", rand::random::<u64>());
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let received = content_length(req.headers());
        let slot = SeenSlot::default();
        let response = match self.permits.try_acquire() {
            Err(_) => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "too many requests in flight",
            ),
            Ok(_permit) if received.is_some_and(|n| n > self.max_object_bytes) => error_response(
                StatusCode::BAD_REQUEST,
                "EntityTooLarge",
                "the request body is over the limit",
            ),
            Ok(_permit) => {
                self.metrics.in_flight.inc();
                let mut req = req.map(Body::from);
                join_repeated(req.headers_mut(), header::CONTENT_ENCODING);
                req.extensions_mut().insert(slot.clone());
                let answer = self.service.call(req).await;
                self.metrics.in_flight.dec();
                match answer {
                    Ok(resp) => resp,
                    Err(e) => {
                        tracing::error!("s3 {method} {path}: {e:?}");
                        error_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "InternalError",
                            "internal error",
                        )
                    }
                }
            }
        };
        let response = with_request_id(response, &percent_decoded(&path), &request_id);
        let seen = std::mem::take(&mut *slot.0.lock().expect("seen lock"));
        let op = seen.op.unwrap_or_else(|| "unknown".into());
        let status = response.status().as_u16();
        let sent = content_length(response.headers());
        let elapsed = start.elapsed();
        let m = &self.metrics;
        m.requests
            .get_or_create(&OpStatus {
                op: op.clone(),
                status,
            })
            .inc();
        m.duration
            .get_or_create(&OpLabel { op: op.clone() })
            .observe(elapsed.as_secs_f64());
        m.received.inc_by(received.unwrap_or(0));
        m.sent.inc_by(sent.unwrap_or(0));
        if let Some(log) = &self.access_log {
            let line = serde_json::json!({
                "ts_ms": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                "remote": peer.to_string(),
                "method": method.as_str(),
                "path": path,
                "op": op,
                "status": status,
                "access_key": seen.access_key,
                "bytes_in": received.unwrap_or(0),
                "bytes_out": sent.unwrap_or(0),
                "ms": elapsed.as_secs_f64() * 1e3,
                "request_id": request_id,
            });
            let mut w = log.lock().expect("access log lock");
            if let Err(e) = writeln!(w, "{line}") {
                tracing::warn!("writing the access log: {e}");
            }
        }
        response
    }
}

fn content_length(headers: &hyper::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Joins a header sent several times into one comma-separated value (RFC
/// 9110 section 5.3). SDKs send a streaming body's `Content-Encoding: gzip`
/// and `Content-Encoding: aws-chunked` as two headers, which s3s refuses as
/// duplicates; SigV4 canonicalizes repeated headers the same way (trimmed
/// values joined by `,`), so the signature still verifies.
fn join_repeated(headers: &mut hyper::HeaderMap, name: header::HeaderName) {
    if headers.get_all(&name).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(&name)
        .iter()
        .map(|v| v.as_bytes().trim_ascii())
        .collect();
    if let Ok(value) = header::HeaderValue::from_bytes(&joined.join(&b","[..])) {
        headers.insert(name, value);
    }
}

/// A request path with its percent-escapes decoded (for `<Resource>`).
fn percent_decoded(path: &str) -> String {
    let raw = path.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let escaped = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], escaped) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Stamps an answer with its request id, and completes an error answer's
/// document (see `error::complete_error_body`).
fn with_request_id(
    mut resp: hyper::Response<Body>,
    path: &str,
    request_id: &str,
) -> hyper::Response<Body> {
    if resp.status().as_u16() >= 400 {
        let completed = resp
            .body()
            .bytes()
            .and_then(|xml| crate::error::complete_error_body(&xml, path, request_id));
        if let Some(xml) = completed {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, header::HeaderValue::from(xml.len()));
            *resp.body_mut() = Body::from(xml);
        }
    }
    if let Ok(v) = header::HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    resp
}

/// An S3 error answered before s3s sees the request.
fn error_response(status: StatusCode, code: &str, message: &str) -> hyper::Response<Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut resp = hyper::Response::new(Body::from(xml));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/xml"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_content_encodings_become_one() {
        let mut h = hyper::HeaderMap::new();
        h.append(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        h.append(header::CONTENT_ENCODING, " aws-chunked".parse().unwrap());
        join_repeated(&mut h, header::CONTENT_ENCODING);
        let all: Vec<_> = h.get_all(header::CONTENT_ENCODING).iter().collect();
        assert_eq!(all, ["gzip,aws-chunked"]);
        let mut one = hyper::HeaderMap::new();
        one.append(header::CONTENT_ENCODING, "br".parse().unwrap());
        join_repeated(&mut one, header::CONTENT_ENCODING);
        assert_eq!(one.get_all(header::CONTENT_ENCODING).iter().count(), 1);
    }

    #[test]
    fn resources_are_decoded_paths() {
        assert_eq!(percent_decoded("/b/a%26b%2Fc"), "/b/a&b/c");
        assert_eq!(percent_decoded("/b/100%"), "/b/100%");
        assert_eq!(percent_decoded("/b/%e2%82%ac"), "/b/€");
    }
}
