//! A multi-process Cairn cluster on loopback for integration and fault tests.
//!
//! `Cluster::start` writes a TOML config per daemon, starts real `cairn metad` and
//! `cairn datad` processes on ports picked from the kernel's ephemeral range, and
//! waits until the cluster serves requests (every shard has a leader, every data
//! node is live and in the placement chains, the root exists). Processes can be
//! killed with SIGKILL and restarted on the same data; every process is killed by
//! PID when the cluster is dropped. Waits poll conditions; none sleeps blindly.

pub mod cold;
pub mod sigv4;

use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;

use cairn_client::Client;
use cairn_client::MetaClient;
use cairn_proto::ids::ROOT_INO;

/// The `cairn` binary: `CAIRN_BIN`, or the one built next to the test executable.
pub fn cairn_bin() -> anyhow::Result<PathBuf> {
    if let Ok(bin) = std::env::var("CAIRN_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/cairn
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target directory")?;
    let bin = dir.join("cairn");
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --bin cairn` first or set CAIRN_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// A port of 127.0.0.1 for a test's daemon, free to bind now and kept for
/// this process's life: it lies below the kernel's ephemeral range, so no
/// outgoing connection takes it while a killed daemon is restarted on it,
/// and it is claimed by a lock on a file that other test processes honour
/// (released when this process ends, however it ends).
pub fn free_port() -> anyhow::Result<u16> {
    static CLAIMED: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("cairn-test-ports");
    std::fs::create_dir_all(&dir)?;
    for _ in 0..1000 {
        let port = rand::Rng::gen_range(&mut rand::thread_rng(), 20_000..32_000u16);
        let claim = std::fs::File::create(dir.join(port.to_string()))?;
        if claim.try_lock().is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            CLAIMED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(claim);
            return Ok(port);
        }
    }
    bail!("no free port in 20000..32000")
}

/// Polls `cond` until it returns true or `timeout` passes.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(10);
    loop {
        if cond().await {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Meta,
    Data,
}

/// One daemon process.
pub struct Daemon {
    pub role: Role,
    pub id: u64,
    pub addr: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let sub = match self.role {
            Role::Meta => "metad",
            Role::Data => "datad",
        };
        let child = Command::new(cairn_bin()?)
            .arg(sub)
            .arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                "warn,cairn_metad=info,cairn_datad=info,openraft=error",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {sub} {}", self.id))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGSTOP: the process stops answering but keeps its sockets open, as a
    /// hung or partitioned peer does (no connection is refused or reset).
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "STOP");
        }
    }

    /// SIGCONT after [`Daemon::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "CONT");
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether one line of the daemon's log holds every one of `words`
    /// (colour codes left out).
    pub fn log_has_line(&self, words: &[&str]) -> bool {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let mut plain = String::with_capacity(bytes.len());
        let mut escape = false;
        for c in String::from_utf8_lossy(&bytes).chars() {
            match c {
                '\x1b' => escape = true,
                'm' if escape => escape = false,
                _ if escape => {}
                _ => plain.push(c),
            }
        }
        plain.lines().any(|l| words.iter().all(|w| l.contains(w)))
    }

    /// The daemon's log so far (for failure messages).
    pub fn log_tail(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let start = bytes.len().saturating_sub(4000);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Shape of a test cluster.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub metas: usize,
    pub datas: usize,
    pub data_shards: u32,
    pub replication: u32,
    pub data_replication: u32,
    pub placement_groups: u32,
    pub block_size: u32,
    /// Each datad's capacity.
    pub capacity_bytes: u64,
    /// Appended to each datad's TOML config (its `[cold]` section, say).
    pub datad_toml: &'static str,
    /// Appended to each metad's TOML config.
    pub metad_toml: &'static str,
}

impl Spec {
    /// The default metadata layout with one data server (replication 1): for
    /// tests about the namespace, where data replication only costs time.
    pub fn one_data_server() -> Self {
        Spec {
            datas: 1,
            data_replication: 1,
            ..Spec::default()
        }
    }
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            metas: 3,
            datas: 3,
            data_shards: 4,
            replication: 3,
            data_replication: 3,
            placement_groups: 32,
            block_size: 4 << 20,
            capacity_bytes: 64 << 30,
            datad_toml: "",
            metad_toml: "",
        }
    }
}

pub struct Cluster {
    pub spec: Spec,
    pub dir: tempfile::TempDir,
    pub metas: Vec<Daemon>,
    pub datas: Vec<Daemon>,
}

impl Cluster {
    /// Starts a cluster and waits until it serves requests.
    pub async fn start(spec: Spec) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("cairn-test-").tempdir()?;
        let mut metas = Vec::new();
        for i in 0..spec.metas {
            let addr = format!("127.0.0.1:{}", free_port()?);
            metas.push((i as u64 + 1, addr));
        }
        let peers: Vec<String> = metas
            .iter()
            .map(|(id, addr)| format!("{{ id = {id}, addr = \"{addr}\" }}"))
            .collect();
        let mut cluster = Cluster {
            spec,
            dir,
            metas: Vec::new(),
            datas: Vec::new(),
        };
        for (id, addr) in &metas {
            let data_dir = cluster.dir.path().join(format!("metad{id}"));
            let config = cluster.dir.path().join(format!("metad{id}.toml"));
            std::fs::write(
                &config,
                format!(
                    "id = {id}\nlisten = \"{addr}\"\ndata-dir = \"{}\"\npeers = [{}]\n\
                     data-shards = {}\nreplication = {}\nplacement-groups = {}\n\
                     data-replication = {}\nblock-size = {}\nheartbeat-ms = 50\n\
                     data-node-timeout-ms = 2000\ntxn-recover-after-ms = 2000\nsession-lease-ms = 3000\n\
                     election-timeout-ms = 300\n{}\n{}\n{}\n",
                    data_dir.display(),
                    peers.join(", "),
                    spec.data_shards,
                    spec.replication,
                    spec.placement_groups,
                    spec.data_replication,
                    spec.block_size,
                    // Tests replace a silent data node at once unless they say.
                    if spec.metad_toml.contains("replace-after-ms") {
                        ""
                    } else {
                        "replace-after-ms = 0"
                    },
                    // ... and free deleted data at once unless they say.
                    if spec.metad_toml.contains("gc-delay-ms") {
                        ""
                    } else {
                        "gc-delay-ms = 0"
                    },
                    spec.metad_toml,
                ),
            )?;
            cluster.metas.push(Daemon {
                role: Role::Meta,
                id: *id,
                addr: addr.clone(),
                config,
                log: cluster.dir.path().join(format!("metad{id}.log")),
                child: None,
            });
        }
        for _ in 0..spec.datas {
            cluster.new_data_node()?;
        }
        for d in cluster.metas.iter_mut().chain(cluster.datas.iter_mut()) {
            d.spawn()?;
        }
        cluster.wait_ready(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Configures the next data node (id one past the last), not started.
    fn new_data_node(&mut self) -> anyhow::Result<()> {
        let id = self.datas.len() as u64 + 1;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let meta_list: Vec<String> = self
            .metas
            .iter()
            .map(|m| format!("\"{}\"", m.addr))
            .collect();
        let config = self.dir.path().join(format!("datad{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "id = {id}\nlisten = \"{addr}\"\ndata-dir = \"{}\"\nmeta = [{}]\n\
                 heartbeat-ms = 200\nresync-check-ms = 100\ncapacity-bytes = {}\n{}\n",
                self.dir.path().join(format!("datad{id}")).display(),
                meta_list.join(", "),
                self.spec.capacity_bytes,
                self.spec.datad_toml,
            ),
        )?;
        self.datas.push(Daemon {
            role: Role::Data,
            id,
            addr,
            config,
            log: self.dir.path().join(format!("datad{id}.log")),
            child: None,
        });
        Ok(())
    }

    /// Starts one more data node; answers its index in `datas`.
    pub fn add_data_node(&mut self) -> anyhow::Result<usize> {
        self.new_data_node()?;
        let index = self.datas.len() - 1;
        self.datas[index].spawn()?;
        Ok(index)
    }

    pub fn meta_addrs(&self) -> Vec<String> {
        self.metas.iter().map(|m| m.addr.clone()).collect()
    }

    /// A new client (own id, own caches).
    pub fn client(&self) -> Arc<Client> {
        Client::new(self.meta_addrs())
    }

    /// Waits until every shard has a leader, every running data node is live,
    /// every placement chain is complete and settled (no member syncing), the
    /// running nodes are in chains evenly (rebalancing done), and the root
    /// directory answers.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let meta = MetaClient::new(self.meta_addrs(), Default::default())
            .with_deadline(Duration::from_secs(2));
        let running_datas: Vec<String> = self
            .datas
            .iter()
            .filter(|d| d.is_running())
            .map(|d| d.addr.clone())
            .collect();
        let want_chain = (self.spec.data_replication as usize).min(running_datas.len());
        let result = wait_for("the cluster to serve", timeout, || async {
            let Ok(map) = meta.refresh_map().await else {
                return false;
            };
            let leaders = map.shards.iter().all(|s| s.leader != 0);
            let live = running_datas
                .iter()
                .all(|addr| map.data_nodes.iter().any(|n| &n.addr == addr && n.alive));
            let chains = !map.groups.is_empty()
                && map.groups.iter().all(|g| {
                    g.chain.len() == want_chain
                        && g.syncing.is_empty()
                        && g.chain.iter().all(|id| {
                            map.data_nodes
                                .iter()
                                .any(|n| n.id == *id && running_datas.contains(&n.addr))
                        })
                });
            // Rebalancing done: chain memberships of the running nodes even.
            let memberships: Vec<usize> = map
                .data_nodes
                .iter()
                .filter(|n| running_datas.contains(&n.addr))
                .map(|n| {
                    map.groups
                        .iter()
                        .filter(|g| g.chain.contains(&n.id))
                        .count()
                })
                .collect();
            let even = memberships.iter().max().unwrap_or(&0)
                - memberships.iter().min().unwrap_or(&0)
                <= 1;
            leaders && live && chains && even && meta.getattr(ROOT_INO).await.is_ok()
        })
        .await;
        if let Err(e) = result {
            let logs: Vec<String> = self
                .metas
                .iter()
                .chain(&self.datas)
                .map(|d| format!("--- {:?} {} ---\n{}", d.role, d.id, d.log_tail()))
                .collect();
            bail!("{e}\n{}", logs.join("\n"));
        }
        Ok(())
    }

    /// The index in `metas` of the leader of `shard`, as the cluster map says.
    pub async fn leader_of(&self, shard: u32) -> anyhow::Result<usize> {
        let meta = MetaClient::new(self.meta_addrs(), Default::default());
        let map = meta.refresh_map().await?;
        let info = map
            .shards
            .iter()
            .find(|s| s.id == shard)
            .context("no such shard")?;
        self.metas
            .iter()
            .position(|m| m.id == info.leader)
            .context("shard has no leader")
    }

    pub fn restart(&mut self, role: Role, index: usize) -> anyhow::Result<()> {
        let d = match role {
            Role::Meta => &mut self.metas[index],
            Role::Data => &mut self.datas[index],
        };
        d.kill();
        d.spawn()
    }

    /// Runs the `cairn` CLI against this cluster: whether it exited 0, and
    /// its stdout and stderr.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<(bool, String)> {
        let out = std::process::Command::new(cairn_bin()?)
            .args(args)
            .env("CAIRN_META", self.meta_addrs().join(","))
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// The data directory of a metadata node.
    pub fn meta_dir(&self, index: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("metad{}", self.metas[index].id))
    }

    /// The data directory of a data node.
    pub fn data_dir(&self, index: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("datad{}", self.datas[index].id))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for d in self.metas.iter_mut().chain(self.datas.iter_mut()) {
            d.kill();
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift) so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` to a new file at `path` through the client library.
pub async fn write_file(client: &Arc<Client>, path: &str, data: &[u8]) -> anyhow::Result<()> {
    let mut w = client.create_file(path, 0o644).await?;
    for (i, piece) in data.chunks(8 << 20).enumerate() {
        w.write_at((i * (8 << 20)) as u64, piece).await?;
    }
    w.close().await?;
    Ok(())
}

/// Reads the whole file at `path`.
pub async fn read_file(client: &Arc<Client>, path: &str) -> anyhow::Result<Vec<u8>> {
    let mut r = client.open_file(path).await?;
    let mut out = Vec::with_capacity(r.size() as usize);
    loop {
        let data = r.read_at(out.len() as u64, 8 << 20).await?;
        if data.is_empty() {
            r.close().await?;
            return Ok(out);
        }
        out.extend_from_slice(&data);
    }
}

/// What [`check_tree`] saw.
#[derive(Debug, Default)]
pub struct TreeStats {
    pub dirs: usize,
    pub files: usize,
}

/// Walks the whole namespace and checks its invariants: every entry points at an
/// existing inode of the kind it says; every directory is reachable once, its
/// `..` is the directory holding it and its nlink is 2 + its subdirectories;
/// every file's nlink equals the entries naming it; and every directory accepts
/// a new entry (no lock left behind by a transaction).
pub async fn check_tree(meta: &MetaClient) -> anyhow::Result<TreeStats> {
    use std::collections::HashMap;
    use std::collections::HashSet;

    use cairn_proto::pb::FileKind;

    let mut stats = TreeStats::default();
    let mut seen_dirs = HashSet::new();
    let mut file_links: HashMap<u64, u32> = HashMap::new();
    let mut stack = vec![ROOT_INO];
    seen_dirs.insert(ROOT_INO);
    while let Some(dir) = stack.pop() {
        stats.dirs += 1;
        let attr = meta.getattr(dir).await?;
        let mut subdirs = 0;
        for e in meta.readdir(dir).await? {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            let child = meta
                .getattr(e.ino)
                .await
                .with_context(|| format!("entry {name} in {dir:#x} points at a missing inode"))?;
            anyhow::ensure!(
                child.kind == e.kind,
                "entry {name} in {dir:#x}: kind differs from inode"
            );
            if e.kind == FileKind::Directory as i32 {
                subdirs += 1;
                anyhow::ensure!(
                    seen_dirs.insert(e.ino),
                    "directory {:#x} reachable twice ({name})",
                    e.ino
                );
                anyhow::ensure!(
                    child.parent == dir,
                    "directory {name} ({:#x}) has parent {:#x}, listed in {dir:#x}",
                    e.ino,
                    child.parent
                );
                stack.push(e.ino);
            } else {
                *file_links.entry(e.ino).or_default() += 1;
            }
        }
        anyhow::ensure!(
            attr.nlink == 2 + subdirs,
            "directory {dir:#x} has nlink {} but {subdirs} subdirectories",
            attr.nlink
        );
        let probe = format!(".probe-{dir:x}");
        meta.create(dir, probe.as_bytes(), 0o600, true)
            .await
            .with_context(|| format!("directory {dir:#x} refuses new entries"))?;
        meta.unlink(dir, probe.as_bytes()).await?;
    }
    for (ino, links) in &file_links {
        stats.files += 1;
        let attr = meta.getattr(*ino).await?;
        anyhow::ensure!(
            attr.nlink == *links,
            "file {ino:#x} has nlink {} but {links} entries",
            attr.nlink
        );
    }
    Ok(stats)
}

/// A `cairn mount` process; unmounted and killed (by PID) when dropped.
pub struct Mount {
    pub path: PathBuf,
    child: Child,
}

impl Mount {
    /// Mounts `cluster` at `<cluster dir>/<name>` (kernel caches off, so every
    /// open sees the latest committed state) and waits for the mount.
    pub async fn start(cluster: &Cluster, name: &str) -> anyhow::Result<Mount> {
        Self::start_with(cluster, name, &[]).await
    }

    /// Like [`Mount::start`], with more `cairn mount` arguments.
    pub async fn start_with(cluster: &Cluster, name: &str, args: &[&str]) -> anyhow::Result<Mount> {
        let path = cluster.dir.path().join(name);
        std::fs::create_dir_all(&path)?;
        let log = std::fs::File::create(cluster.dir.path().join(format!("{name}.log")))?;
        let child = Command::new(cairn_bin()?)
            .args(["mount", "--entry-timeout-ms", "0", "--attr-timeout-ms", "0"])
            .args(args)
            .arg(&path)
            .env("CAIRN_META", cluster.meta_addrs().join(","))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mount = Mount { path, child };
        let p = mount.path.clone();
        wait_for("the mount to appear", Duration::from_secs(30), || {
            let p = p.clone();
            async move { is_mounted(&p) }
        })
        .await?;
        Ok(mount)
    }
}

/// Whether `path` is a mount point.
pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(path.as_ref()))
}

impl Mount {
    /// SIGSTOP: the mount stops answering (its kernel requests and its session
    /// renewals wait); [`Mount::kill`] ends it.
    pub fn pause(&self) {
        signal(self.child.id(), "STOP");
    }

    /// SIGKILL, as a crash: the mount point is left behind (lazily unmounted).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.path)
            .status();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.path)
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET on a fresh connection: (status code, body). Enough for the
/// `/metrics` and `/health` endpoints (they answer with a content length).
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;

    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP header end in {raw:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Samples of a Prometheus text exposition, by `name{labels}` as written; a
/// malformed line is an error (so a test also checks the format).
pub fn parse_metrics(text: &str) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("malformed sample line {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .with_context(|| format!("bad value in sample line {line:?}"))?,
        };
        anyhow::ensure!(
            samples.insert(series.to_string(), value).is_none(),
            "series {series} appears twice"
        );
    }
    Ok(samples)
}

/// Whether process `pid` is alive (a zombie, exited but not yet reaped by
/// whoever adopted it, counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

/// Live processes whose command line mentions `needle` (a test's unique path).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .filter(|pid| pid_alive(*pid))
        .collect()
}

/// SIGKILLs process `pid` (not our child, so `Child::kill` is not at hand).
pub fn kill_pid(pid: u32) {
    signal(pid, "KILL");
}

/// Sends signal `name` (`KILL`, `STOP`, `CONT`) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// A `cairn s3` gateway process in front of a cluster.
pub struct S3Gateway {
    /// host:port it serves on.
    pub addr: String,
    pub metrics_addr: String,
    pub access_key: String,
    pub secret_key: String,
    pub access_log: PathBuf,
    log: PathBuf,
    child: Child,
}

impl S3Gateway {
    /// Starts a gateway with one access key; `extra_config` is appended to
    /// its TOML configuration (`public_buckets = [...]`, limits).
    pub async fn start(
        cluster: &Cluster,
        name: &str,
        extra_config: &str,
    ) -> anyhow::Result<S3Gateway> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let (access_key, secret_key) = ("CAIRNTESTKEY", "cairn-test-secret-key");
        let access_log = cluster.dir.path().join(format!("{name}-access.log"));
        let config = cluster.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\naccess_log = \"{}\"\n{extra_config}\n\n\
                 [[keys]]\naccess_key = \"{access_key}\"\nsecret_key = \"{secret_key}\"\n",
                access_log.display()
            ),
        )?;
        let log = cluster.dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(cairn_bin()?)
            .arg("s3")
            .arg("--config")
            .arg(&config)
            .args(["--metrics", &metrics_addr])
            .env("CAIRN_META", cluster.meta_addrs().join(","))
            .env("RUST_LOG", "warn,cairn_s3gw=info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let gw = S3Gateway {
            addr,
            metrics_addr,
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            access_log,
            log,
            child,
        };
        let a = gw.addr.clone();
        wait_for("the S3 gateway to listen", Duration::from_secs(30), || {
            let a = a.clone();
            async move { tokio::net::TcpStream::connect(&a).await.is_ok() }
        })
        .await
        .with_context(|| gw.log_tail())?;
        Ok(gw)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An aws-sdk-s3 client of this gateway with its key (path-style, plain
    /// HTTP).
    pub fn sdk(&self) -> aws_sdk_s3::Client {
        sdk_client(&self.endpoint(), &self.access_key, &self.secret_key)
    }

    pub fn log_tail(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let start = bytes.len().saturating_sub(4000);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

/// An aws-sdk-s3 client of `endpoint` with a key pair (path-style, plain HTTP).
pub fn sdk_client(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::BehaviorVersion;
    use aws_sdk_s3::config::Credentials;
    use aws_sdk_s3::config::Region;
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "test"))
        .force_path_style(true)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

impl Drop for S3Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
