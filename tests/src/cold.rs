//! The cold tier of the tests: a real S3-protocol server (`cairn-test-s3`,
//! s3s-fs over a directory) in its own process, behind a [`FaultProxy`] that
//! passes bytes through, answers 503, or hangs, on demand. The server can be
//! killed and restarted on the same port and data; its process is killed by
//! PID when dropped.

use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;

use crate::free_port;
use crate::wait_for;

pub const BUCKET: &str = "cold";
pub const ACCESS_KEY: &str = "COLDTESTKEY";
pub const SECRET_KEY: &str = "cold-test-secret";

/// What the proxy does with the next bytes a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass = 0,
    /// Answers `503 Slow Down` and closes the connection.
    Unavailable = 1,
    /// Takes the request and never answers.
    Hang = 2,
}

/// A TCP proxy to one address with a switchable fault. It runs on a thread
/// of its own, so it keeps serving while a test blocks (waiting for a CLI
/// process, say).
pub struct FaultProxy {
    pub addr: String,
    fault: Arc<AtomicU8>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(target: String) -> anyhow::Result<FaultProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let fault = Arc::new(AtomicU8::new(Fault::Pass as u8));
        let f = fault.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                let accept = async {
                    while let Ok((client, _)) = listener.accept().await {
                        tokio::spawn(relay(client, target.clone(), f.clone()));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime ends every relay.
        });
        Ok(FaultProxy {
            addr,
            fault,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn relay(mut client: TcpStream, target: String, fault: Arc<AtomicU8>) {
    let Ok(mut server) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut cr, cw) = client.split();
    let (mut sr, mut sw) = server.split();
    // Both directions may write to the client: the server's bytes, or a 503.
    let cw = tokio::sync::Mutex::new(cw);
    let upstream = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            match fault.load(Ordering::SeqCst) {
                1 => {
                    let body = "<Error><Code>SlowDown</Code><Message>injected</Message></Error>";
                    let reply = format!(
                        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = cw.lock().await.write_all(reply.as_bytes()).await;
                    return;
                }
                2 => std::future::pending::<()>().await,
                _ => {
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if cw.lock().await.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}

/// The S3 server process and its proxy.
pub struct ColdS3 {
    pub root: tempfile::TempDir,
    /// Where the server itself listens.
    pub server_addr: String,
    pub proxy: FaultProxy,
    log: PathBuf,
    child: Option<Child>,
}

impl ColdS3 {
    /// Starts the server with the bucket [`BUCKET`] and its proxy.
    pub async fn start() -> anyhow::Result<ColdS3> {
        let root = tempfile::Builder::new().prefix("cairn-cold-").tempdir()?;
        std::fs::create_dir(root.path().join(BUCKET))?;
        let server_addr = format!("127.0.0.1:{}", free_port()?);
        let proxy = FaultProxy::start(server_addr.clone())?;
        let log = root.path().join("server.log");
        let mut cold = ColdS3 {
            root,
            server_addr,
            proxy,
            log,
            child: None,
        };
        cold.restart().await?;
        Ok(cold)
    }

    fn binary() -> anyhow::Result<PathBuf> {
        Ok(crate::cairn_bin()?.with_file_name("cairn-test-s3"))
    }

    /// (Re)starts the server on its port and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(Self::binary()?)
            .arg(self.root.path())
            .arg(&self.server_addr)
            .arg(ACCESS_KEY)
            .arg(SECRET_KEY)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting cairn-test-s3 (cargo build -p cairn-tests --bins)")?;
        self.child = Some(child);
        let addr = self.server_addr.clone();
        wait_for("the S3 server to listen", Duration::from_secs(20), || {
            let addr = addr.clone();
            async move { TcpStream::connect(&addr).await.is_ok() }
        })
        .await
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The endpoint Cairn uses: the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    /// Every object key in the bucket, listed by a real S3 client straight
    /// from the server.
    pub async fn keys(&self) -> anyhow::Result<Vec<String>> {
        let sdk = crate::sdk_client(
            &format!("http://{}", self.server_addr),
            ACCESS_KEY,
            SECRET_KEY,
        );
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = sdk
                .list_objects_v2()
                .bucket(BUCKET)
                .set_continuation_token(token)
                .send()
                .await?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// The `[cold]` section datads of these tests use: this server's key and
    /// short timeouts, so faults surface in seconds.
    pub fn datad_toml() -> &'static str {
        "[cold]\naccess-key-id = \"COLDTESTKEY\"\nsecret-access-key = \"cold-test-secret\"\n\
         op-timeout-ms = 5000\nretry-deadline-ms = 3000\n"
    }
}

impl Drop for ColdS3 {
    fn drop(&mut self) {
        self.kill();
    }
}
