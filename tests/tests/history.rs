//! A randomized fault test with a history checker. Several clients put, move,
//! delete and read files of a small tree through the client library while a
//! nemesis kills (SIGKILL, then restart) and hangs (SIGSTOP, then SIGCONT)
//! metad and datad processes at random, one at a time.
//!
//! Every key has one writer (its client), so each key is a single-writer
//! register and the checks are exact:
//! - a put is a new file renamed over the key; its content names the value, so
//!   a torn or mixed read is caught;
//! - every read, by any client, must return a value that was current at some
//!   instant of the read: the last write completed before the read began, or
//!   a write that overlapped the read (linearizable per key);
//! - an operation answered with an error is indeterminate: its client reads
//!   the keys back and the state must be exactly before or exactly after it;
//! - at the end every key holds exactly what its client's model says, and the
//!   tree's invariants hold.
//!
//! Seeded and bounded: `HISTORY_SEED=n` replays a schedule's choices (timing
//! still varies), `HISTORY_SECS=n` runs longer (CI runs a short one); the seed
//! is printed first.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;

use cairn_client::Client;
use cairn_client::ClientError;
use cairn_proto::ids::ROOT_INO;
use cairn_proto::pb;
use cairn_proto::status::ENOENT;
use cairn_tests::check_tree;
use cairn_tests::random_bytes;
use cairn_tests::read_file;
use cairn_tests::wait_for;
use cairn_tests::write_file;
use cairn_tests::Cluster;
use cairn_tests::Role;
use cairn_tests::Spec;

const CLIENTS: u64 = 3;
const KEYS: usize = 4;

/// A key's value: a file id, or absent.
type Value = Option<u64>;

/// The content of value `id`: 8 bytes of id, then bytes derived from it.
/// Every third value spans blocks on the data servers; the rest are inline.
fn content(id: u64) -> Vec<u8> {
    let len = if id.is_multiple_of(3) { 5 << 20 } else { 2048 };
    let mut data = random_bytes(len, id);
    data[..8].copy_from_slice(&id.to_le_bytes());
    data
}

/// The value a read returned; a torn or foreign content is an error.
fn value_of(data: &[u8]) -> anyhow::Result<u64> {
    let id = u64::from_le_bytes(
        data.get(..8)
            .ok_or_else(|| anyhow::anyhow!("a {}-byte file", data.len()))?
            .try_into()?,
    );
    anyhow::ensure!(data == content(id), "content of value {id} is torn");
    Ok(id)
}

/// One write of a key as the history records it.
#[derive(Debug, Clone)]
struct Write {
    value: Value,
    invoked: Instant,
    /// None while the outcome is unknown.
    completed: Option<Instant>,
}

/// Every key's writes, in its writer's order.
#[derive(Default)]
struct History {
    keys: Mutex<BTreeMap<String, Vec<Write>>>,
}

impl History {
    fn begin(&self, key: &str, value: Value) -> usize {
        let mut keys = self.keys.lock().unwrap();
        let log = keys.entry(key.to_string()).or_default();
        log.push(Write {
            value,
            invoked: Instant::now(),
            completed: None,
        });
        log.len() - 1
    }

    /// The write `at` of `key` took effect (now) or never did.
    fn end(&self, key: &str, at: usize, applied: bool) {
        let mut keys = self.keys.lock().unwrap();
        let log = keys.get_mut(key).unwrap();
        if applied {
            log[at].completed = Some(Instant::now());
        } else {
            log.remove(at);
        }
    }

    /// Whether a read of `key` over [invoked, completed] may return `got`.
    fn check_read(
        &self,
        key: &str,
        got: Value,
        invoked: Instant,
        completed: Instant,
    ) -> anyhow::Result<()> {
        let keys = self.keys.lock().unwrap();
        let log = keys.get(key).cloned().unwrap_or_default();
        // The value current when the read began (absent before any write),
        // then every write that began before the read ended.
        let last_done = log
            .iter()
            .rposition(|w| w.completed.is_some_and(|c| c < invoked));
        let mut allowed = vec![last_done.and_then(|i| log[i].value)];
        let later = last_done.map_or(0, |i| i + 1);
        allowed.extend(
            log[later..]
                .iter()
                .filter(|w| w.invoked < completed)
                .map(|w| w.value),
        );
        anyhow::ensure!(
            allowed.contains(&got),
            "read of {key} returned {got:?}; allowed {allowed:?}"
        );
        Ok(())
    }
}

/// Reads `path`: Some(value), None when absent.
async fn read_value(client: &Arc<Client>, path: &str) -> anyhow::Result<Value> {
    match read_file(client, path).await {
        Ok(data) => Ok(Some(value_of(&data)?)),
        Err(e)
            if e.downcast_ref::<ClientError>()
                .is_some_and(|c| c.errno() == ENOENT) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Reads `path` until the cluster answers (after faults heal).
async fn settle_read(client: &Arc<Client>, path: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match read_value(client, path).await {
            Ok(v) => return Ok(v),
            Err(e) if e.to_string().contains("torn") => return Err(e),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => {}
        }
    }
}

/// One client: owns keys `/h/c<n>/k0..`, writes them, reads anyone's.
async fn client_loop(
    n: u64,
    client: Arc<Client>,
    history: Arc<History>,
    started: Arc<AtomicUsize>,
    seed: u64,
    until: Instant,
) -> anyhow::Result<usize> {
    let mut rng = StdRng::seed_from_u64(seed ^ (n << 32));
    let dir = format!("/h/c{n}");
    let dir_ino = client.meta.resolve(&dir).await?.ino;
    let key = |k: usize| format!("k{k}");
    let mut model: Vec<Value> = vec![None; KEYS];
    let mut next = 1u64;
    let mut ops = 0;
    while Instant::now() < until {
        ops += 1;
        started.fetch_add(1, Ordering::Relaxed);
        match rng.gen_range(0..10) {
            // put: a new file, renamed over the key
            0..=3 => {
                let k = rng.gen_range(0..KEYS);
                let id = n * 1_000_000 + next;
                next += 1;
                let tmp = format!("{dir}/t{id}");
                if write_file(&client, &tmp, &content(id)).await.is_err() {
                    continue; // nothing visible under a key yet
                }
                let path = format!("{dir}/{}", key(k));
                let at = history.begin(&path, Some(id));
                let r = client
                    .meta
                    .rename(
                        dir_ino,
                        format!("t{id}").as_bytes(),
                        dir_ino,
                        key(k).as_bytes(),
                        pb::RenameMode::Replace,
                    )
                    .await;
                let applied = match r {
                    Ok(_) => true,
                    Err(_) => {
                        let now = settle_read(&client, &path).await?;
                        anyhow::ensure!(
                            now == Some(id) || now == model[k],
                            "after a failed put of {id}, {path} holds {now:?} (before: {:?})",
                            model[k]
                        );
                        now == Some(id)
                    }
                };
                history.end(&path, at, applied);
                if applied {
                    model[k] = Some(id);
                }
            }
            // delete
            4 => {
                let k = rng.gen_range(0..KEYS);
                let path = format!("{dir}/{}", key(k));
                let at = history.begin(&path, None);
                let r = client.meta.unlink(dir_ino, key(k).as_bytes()).await;
                let applied = match r {
                    Ok(_) => {
                        anyhow::ensure!(model[k].is_some(), "unlink of absent {path} succeeded");
                        true
                    }
                    Err(e) if e.errno() == ENOENT => {
                        anyhow::ensure!(
                            model[k].is_none(),
                            "unlink of {path} ({:?}): ENOENT",
                            model[k]
                        );
                        false
                    }
                    Err(_) => {
                        let now = settle_read(&client, &path).await?;
                        anyhow::ensure!(
                            now.is_none() || now == model[k],
                            "after a failed unlink, {path} holds {now:?} (before: {:?})",
                            model[k]
                        );
                        now.is_none() && model[k].is_some()
                    }
                };
                history.end(&path, at, applied);
                if applied {
                    model[k] = None;
                }
            }
            // move one key over another
            5 => {
                let (a, b) = (rng.gen_range(0..KEYS), rng.gen_range(0..KEYS));
                if a == b {
                    continue;
                }
                let (pa, pb_) = (format!("{dir}/{}", key(a)), format!("{dir}/{}", key(b)));
                let moved = model[a];
                let at_a = history.begin(&pa, None);
                let at_b = history.begin(&pb_, moved);
                let r = client
                    .meta
                    .rename(
                        dir_ino,
                        key(a).as_bytes(),
                        dir_ino,
                        key(b).as_bytes(),
                        pb::RenameMode::Replace,
                    )
                    .await;
                let applied = match r {
                    Ok(_) => {
                        anyhow::ensure!(moved.is_some(), "rename of absent {pa} succeeded");
                        true
                    }
                    Err(e) if e.errno() == ENOENT => {
                        anyhow::ensure!(moved.is_none(), "rename of {pa} ({moved:?}): ENOENT");
                        false
                    }
                    Err(_) => {
                        let now = (
                            settle_read(&client, &pa).await?,
                            settle_read(&client, &pb_).await?,
                        );
                        let after = (None, moved);
                        let before = (model[a], model[b]);
                        anyhow::ensure!(
                            now == after || now == before,
                            "after a failed rename {pa} -> {pb_}: {now:?}, before {before:?}"
                        );
                        now == after && moved.is_some()
                    }
                };
                // Index of b's entry is unaffected by removing a's (other key).
                history.end(&pa, at_a, applied);
                history.end(&pb_, at_b, applied);
                if applied {
                    model[b] = moved;
                    model[a] = None;
                }
            }
            // read any client's key
            _ => {
                let owner = rng.gen_range(0..CLIENTS);
                let path = format!("/h/c{owner}/{}", key(rng.gen_range(0..KEYS)));
                let invoked = Instant::now();
                match read_value(&client, &path).await {
                    Ok(got) => history.check_read(&path, got, invoked, Instant::now())?,
                    Err(e) if e.to_string().contains("torn") => return Err(e),
                    Err(_) => {} // unavailable during a fault: no information
                }
            }
        }
    }
    // The final state is exactly the model.
    for (k, want) in model.iter().enumerate() {
        let path = format!("{dir}/{}", key(k));
        let got = settle_read(&client, &path).await?;
        anyhow::ensure!(got == *want, "{path} holds {got:?}, {want:?} expected");
    }
    Ok(ops)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_faults_keep_every_history_linearizable() -> anyhow::Result<()> {
    let seed: u64 = std::env::var("HISTORY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let secs: u64 = std::env::var("HISTORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    eprintln!("history test: HISTORY_SEED={seed} HISTORY_SECS={secs}");
    let mut cluster = Cluster::start(Spec::default()).await?;
    let setup = cluster.client();
    let h = setup.meta.mkdir(ROOT_INO, b"h", 0o755).await?;
    for n in 0..CLIENTS {
        setup
            .meta
            .mkdir(h.ino, format!("c{n}").as_bytes(), 0o755)
            .await?;
    }
    let history = Arc::new(History::default());
    let started = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (client, history, started) = (cluster.client(), history.clone(), started.clone());
            tokio::spawn(client_loop(n, client, history, started, seed, until))
        })
        .collect();
    // Until `more` operations started after now, or `most` passed (a fault
    // can stall every client): the nemesis paces itself on the clients.
    let ops_run = |more: usize, most: Duration| {
        let from = started.load(Ordering::Relaxed);
        let started = started.clone();
        async move {
            let _ = wait_for("client operations", most, || {
                let n = started.load(Ordering::Relaxed);
                async move { n >= from + more }
            })
            .await;
        }
    };

    // The nemesis: one fault at a time, each healed before the next.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    while Instant::now() + Duration::from_secs(4) < until {
        ops_run(rng.gen_range(5..20), Duration::from_secs(5)).await;
        let meta = rng.gen_bool(0.5);
        let (role, index) = if meta {
            (Role::Meta, rng.gen_range(0..cluster.metas.len()))
        } else {
            (Role::Data, rng.gen_range(0..cluster.datas.len()))
        };
        let hang = rng.gen_bool(0.5);
        let held = rng.gen_range(2..10);
        faults.push(format!(
            "{role:?} {index} {} for {held} operations",
            if hang { "hung" } else { "killed" }
        ));
        let victim = match role {
            Role::Meta => &mut cluster.metas[index],
            Role::Data => &mut cluster.datas[index],
        };
        if hang {
            victim.pause();
            ops_run(held, Duration::from_secs(4)).await;
            victim.resume();
        } else {
            victim.kill();
            ops_run(held, Duration::from_secs(4)).await;
            cluster.restart(role, index)?;
        }
    }
    let mut ops = 0;
    for (n, c) in clients.into_iter().enumerate() {
        match c.await? {
            Ok(count) => ops += count,
            Err(e) => anyhow::bail!("seed {seed}: client {n}: {e:#}\nfaults: {faults:?}"),
        }
    }
    eprintln!(
        "{ops} operations checked under {} faults: {faults:?}",
        faults.len()
    );
    anyhow::ensure!(faults.len() >= 3, "too few faults to test anything");
    cluster.wait_ready(Duration::from_secs(60)).await?;
    check_tree(&cluster.client().meta).await?;
    Ok(())
}
