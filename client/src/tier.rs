//! Tier runs: what `cairn tier run`, `status` and `restore` do, and what
//! metad's scheduler runs on an interval.
//!
//! A run walks the namespace below its policy's glob in a fixed order (names
//! sorted, depth first), skips what the policy does not select or a pin-hot
//! policy protects, and acts on each file: `to-cold` moves its blocks (upload
//! on one replica, then every replica drops its local copy), `pin-hot` brings
//! them back and pins them, `expire` unlinks the file. Files are worked on
//! `concurrency` at a time within `bandwidth` bytes per second, and finish in
//! walk order, so the run's record in shard 0 always names the last file
//! behind which everything is done: a run that fails (the cold tier is down,
//! say) or is killed stops there, and the next run of the policy resumes
//! after it. A finished run's next run starts from the beginning.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use cairn_proto::pb;
use cairn_proto::tier::FileFacts;
use futures::StreamExt;

use crate::error::ClientError;
use crate::meta::Result;
use crate::Client;

/// How often a run's record is saved while it runs.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Most blocks in one `TierBlocks` request.
const BLOCKS_PER_REQUEST: usize = 1024;

/// What a run did so far (also a dry run's answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Files acted on (or, dry, that would be).
    pub files: u64,
    /// Bytes moved (or, dry, that would move; expire: bytes deleted).
    pub bytes: u64,
    /// The last path behind which every file is done.
    pub cursor: String,
}

/// A progress callback.
pub type OnProgress = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Options of one run.
#[derive(Clone)]
pub struct RunOptions {
    /// Only count what would happen.
    pub dry_run: bool,
    /// Called after every file finishes.
    pub on_progress: Option<OnProgress>,
}

/// Hot and cold bytes below a path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierUsage {
    pub files: u64,
    /// Bytes in blocks with a local copy on some replica.
    pub hot_bytes: u64,
    /// Bytes in blocks whose every copy is cold.
    pub cold_bytes: u64,
    /// Bytes kept in metadata (small files), always hot.
    pub inline_bytes: u64,
    /// Hot bytes a to-cold policy selects now: the backlog.
    pub pending_bytes: u64,
    pub pending_files: u64,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn now_ms() -> i64 {
    now_ns() / 1_000_000
}

/// Walk order: component by component.
fn walk_key(path: &str) -> Vec<&[u8]> {
    path.split('/')
        .filter(|c| !c.is_empty())
        .map(str::as_bytes)
        .collect()
}

/// A regular file found by a walk.
#[derive(Debug, Clone)]
struct Found {
    path: String,
    attr: pb::Attr,
    /// Its storage class (cold after this many seconds), when the walk
    /// looked at classes and one applies.
    cold_after: Option<u64>,
}

impl Client {
    /// A directory's own storage class, if it has a valid one.
    async fn class_of(&self, ino: u64) -> Result<Option<u64>> {
        match self
            .meta
            .getxattr(ino, cairn_proto::tier::CLASS_XATTR.as_bytes())
            .await
        {
            Ok(v) => Ok(cairn_proto::tier::parse_class(&String::from_utf8_lossy(&v)).ok()),
            Err(ClientError::Fs { errno, .. }) if errno == cairn_proto::status::ENODATA => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every regular file below `root` after `after` (walk order), as the
    /// walk finds them; with `classes`, each with the storage class of its
    /// nearest directory that has one (from `root` down). Cairn's internal
    /// `/.cairn` tree is skipped.
    async fn walk_classes(&self, root: &str, after: &str, classes: bool) -> Result<Vec<Found>> {
        let root_attr = match self.meta.resolve(root).await {
            Ok(a) => a,
            Err(ClientError::Fs { errno, .. }) if errno == cairn_proto::status::ENOENT => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        let after_key = walk_key(after);
        let mut found = Vec::new();
        if root_attr.kind == pb::FileKind::Regular as i32 {
            if walk_key(root) > after_key {
                found.push(Found {
                    path: root.to_string(),
                    attr: root_attr,
                    cold_after: None,
                });
            }
            return Ok(found);
        }
        // Depth first, names sorted: a stack of directories still to list,
        // each with the class it inherits.
        let mut stack = vec![(root.trim_end_matches('/').to_string(), root_attr.ino, None)];
        while let Some((dir, ino, inherited)) = stack.pop() {
            let class = if classes {
                self.class_of(ino).await?.or(inherited)
            } else {
                None
            };
            let mut entries = self.meta.readdir_with_attrs(ino).await?;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let mut subdirs = Vec::new();
            for e in entries {
                let Ok(name) = std::str::from_utf8(&e.name) else {
                    continue;
                };
                let path = format!("{dir}/{name}");
                if path == "/.cairn" {
                    continue;
                }
                let key = walk_key(&path);
                if e.kind == pb::FileKind::Directory as i32 {
                    // Skip directories wholly before the cursor.
                    if key > after_key || after_key.starts_with(&key) {
                        subdirs.push((path, e.ino, class));
                    }
                    continue;
                }
                if e.kind != pb::FileKind::Regular as i32 || key <= after_key {
                    continue;
                }
                let attr = match e.attr {
                    Some(a) => a,
                    None => self.meta.getattr(e.ino).await?,
                };
                found.push(Found {
                    path,
                    attr,
                    cold_after: class,
                });
            }
            // Visited in name order once popped.
            stack.extend(subdirs.into_iter().rev());
        }
        // Files of a directory come before its subdirectories' here; walk
        // order interleaves them by name.
        found.sort_by(|a, b| walk_key(&a.path).cmp(&walk_key(&b.path)));
        Ok(found)
    }

    async fn walk(&self, root: &str, after: &str) -> Result<Vec<Found>> {
        self.walk_classes(root, after, false).await
    }

    /// Applies the directories' storage classes: every file old enough (by
    /// mtime) for its class goes to the cold tier, unless a pin-hot policy
    /// keeps it. Whole namespace, from the start; files already cold cost a
    /// status check each.
    pub async fn run_classes(&self, options: RunOptions) -> Result<Progress> {
        let config = self.meta.get_tier().await?;
        if config.backend.is_none() && !options.dry_run {
            return Err(ClientError::Invalid(
                "no cold backend: set one with `cairn tier backend set`".into(),
            ));
        }
        let now = now_ns();
        let mut progress = Progress::default();
        for file in self.walk_classes("/", "", true).await? {
            let Some(cold_after) = file.cold_after else {
                continue;
            };
            let facts = facts(&file);
            let class = pb::TierPolicy {
                name: "class".into(),
                path: "/**".into(),
                min_age_secs: cold_after,
                action: pb::TierAction::ToCold as i32,
                ..Default::default()
            };
            if !cairn_proto::tier::selects(&class, &facts, now)
                || cairn_proto::tier::pinned_by(&config.policies, &class, &facts, now).is_some()
            {
                continue;
            }
            progress.bytes += if options.dry_run {
                file.attr.size
            } else {
                self.file_to_cold(file.attr.ino).await?
            };
            progress.files += 1;
            progress.cursor = file.path;
            if let Some(f) = &options.on_progress {
                f(&progress);
            }
        }
        Ok(progress)
    }

    /// The blocks of a file grouped by replica chain.
    async fn blocks_by_chain(&self, ino: u64) -> Result<BTreeMap<Vec<String>, Vec<(u64, u32)>>> {
        let mut chains: BTreeMap<Vec<String>, Vec<(u64, u32)>> = BTreeMap::new();
        for (slice, index) in self.blocks_of(ino).await? {
            let replicas = self.data.replicas(slice, index).await?;
            chains.entry(replicas).or_default().push((slice, index));
        }
        Ok(chains)
    }

    /// Runs `op` on `blocks` at `addr`; an error for the first block it failed
    /// on. With `absent_ok`, a replica without the block is not a failure.
    async fn tier_op(
        &self,
        addr: &str,
        op: pb::TierOp,
        blocks: &[(u64, u32)],
        absent_ok: bool,
    ) -> Result<Vec<pb::BlockTierInfo>> {
        let mut all = Vec::with_capacity(blocks.len());
        for chunk in blocks.chunks(BLOCKS_PER_REQUEST) {
            let infos = self.data.tier_blocks(addr, op, chunk).await?;
            if let Some(bad) = infos
                .iter()
                .find(|i| !(i.error.is_empty() || (absent_ok && i.tier() == pb::BlockTier::Absent)))
            {
                return Err(ClientError::Unavailable(format!(
                    "{op:?} on {addr}: block {:?}: {}",
                    bad.block, bad.error
                )));
            }
            all.extend(infos);
        }
        Ok(all)
    }

    /// Moves a file's blocks to the cold tier; answers the bytes that moved
    /// (blocks already cold count nothing).
    pub async fn file_to_cold(&self, ino: u64) -> Result<u64> {
        let mut moved = 0;
        for (replicas, blocks) in self.blocks_by_chain(ino).await? {
            // One replica uploads: the first that holds the blocks.
            let mut uploaded = Err(ClientError::Unavailable("no replica".into()));
            for addr in &replicas {
                uploaded = self.tier_op(addr, pb::TierOp::Upload, &blocks, false).await;
                if uploaded.is_ok() {
                    break;
                }
            }
            let before = uploaded?;
            for addr in &replicas {
                self.tier_op(addr, pb::TierOp::DropHot, &blocks, true)
                    .await?;
            }
            moved += before
                .iter()
                .filter(|i| i.tier() != pb::BlockTier::Cold)
                .map(|i| u64::from(i.len))
                .sum::<u64>();
        }
        Ok(moved)
    }

    /// Brings a file's blocks back to the hot tier (every replica fetches,
    /// then the cold copies are deleted) and pins or unpins them; answers the
    /// bytes that came back.
    pub async fn file_to_hot(&self, ino: u64, pin: bool) -> Result<u64> {
        let mut restored = 0;
        for (replicas, blocks) in self.blocks_by_chain(ino).await? {
            let mut was_cold = 0;
            for addr in &replicas {
                let before = self.tier_op(addr, pb::TierOp::Info, &blocks, true).await?;
                was_cold = was_cold.max(
                    before
                        .iter()
                        .filter(|i| i.tier() == pb::BlockTier::Cold)
                        .map(|i| u64::from(i.len))
                        .sum::<u64>(),
                );
                self.tier_op(addr, pb::TierOp::Fetch, &blocks, true).await?;
            }
            // Only once every replica has its copy back.
            for addr in &replicas {
                self.tier_op(addr, pb::TierOp::DropCold, &blocks, true)
                    .await?;
                let op = if pin {
                    pb::TierOp::Pin
                } else {
                    pb::TierOp::Unpin
                };
                self.tier_op(addr, op, &blocks, true).await?;
            }
            restored += was_cold;
        }
        Ok(restored)
    }

    /// Hot and cold bytes of every file below `path`, and the backlog of the
    /// to-cold policies there.
    pub async fn tier_usage(&self, path: &str) -> Result<TierUsage> {
        let config = self.meta.get_tier().await?;
        let now = now_ns();
        let mut usage = TierUsage::default();
        for file in self.walk(path, "").await? {
            usage.files += 1;
            let mut hot = 0;
            let mut blocks_len = 0;
            for (replicas, blocks) in self.blocks_by_chain(file.attr.ino).await? {
                let mut any_local: BTreeMap<(u64, u32), (bool, u32)> = BTreeMap::new();
                for addr in &replicas {
                    for info in self.tier_op(addr, pb::TierOp::Info, &blocks, true).await? {
                        let Some(b) = info.block else { continue };
                        let local =
                            matches!(info.tier(), pb::BlockTier::Hot | pb::BlockTier::Staged);
                        let e = any_local.entry((b.slice_id, b.index)).or_insert((false, 0));
                        e.0 |= local;
                        e.1 = e.1.max(info.len);
                    }
                }
                for (local, len) in any_local.values() {
                    blocks_len += u64::from(*len);
                    if *local {
                        hot += u64::from(*len);
                    } else {
                        usage.cold_bytes += u64::from(*len);
                    }
                }
            }
            usage.hot_bytes += hot;
            if blocks_len == 0 {
                usage.inline_bytes += file.attr.size;
            }
            let facts = facts(&file);
            let pending = hot > 0
                && config.policies.iter().any(|p| {
                    p.action() == pb::TierAction::ToCold
                        && cairn_proto::tier::selects(p, &facts, now)
                        && cairn_proto::tier::pinned_by(&config.policies, p, &facts, now).is_none()
                });
            if pending {
                usage.pending_files += 1;
                usage.pending_bytes += hot;
            }
        }
        Ok(usage)
    }

    /// Brings every file below `path` back to the hot tier (unpinned).
    pub async fn restore(
        &self,
        path: &str,
        on_progress: &(dyn Fn(&Progress) + Sync),
    ) -> Result<Progress> {
        let mut progress = Progress::default();
        for file in self.walk(path, "").await? {
            progress.bytes += self.file_to_hot(file.attr.ino, false).await?;
            progress.files += 1;
            progress.cursor = file.path;
            on_progress(&progress);
        }
        Ok(progress)
    }

    /// Runs the policy `name` (resuming its unfinished run), saving its record
    /// in shard 0 as it goes; a dry run only counts and saves nothing.
    pub async fn run_policy(&self, name: &str, options: RunOptions) -> Result<Progress> {
        let config = self.meta.get_tier().await?;
        let policy = config
            .policies
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| {
                ClientError::fs(
                    cairn_proto::status::ENOENT,
                    format!("no tier policy {name:?}"),
                )
            })?;
        if policy.action() == pb::TierAction::ToCold && config.backend.is_none() && !options.dry_run
        {
            return Err(ClientError::Invalid(
                "no cold backend: set one with `cairn tier backend set`".into(),
            ));
        }
        let previous = config.runs.iter().find(|r| r.policy == name);
        let mut run = match previous {
            Some(r) if r.finished_ms == 0 && !options.dry_run => r.clone(),
            _ => pb::TierRun {
                policy: name.to_string(),
                started_ms: now_ms(),
                ..Default::default()
            },
        };
        let mut progress = Progress {
            files: run.files,
            bytes: run.bytes,
            cursor: run.cursor.clone(),
        };
        let now = now_ns();
        let files: Vec<Found> = self
            .walk(&cairn_proto::tier::walk_root(&policy.path), &run.cursor)
            .await?
            .into_iter()
            .filter(|f| {
                let facts = facts(f);
                cairn_proto::tier::selects(&policy, &facts, now)
                    && cairn_proto::tier::pinned_by(&config.policies, &policy, &facts, now)
                        .is_none()
            })
            .collect();

        let started = Instant::now();
        let moved_at_start = progress.bytes;
        let mut saved = Instant::now();
        let mut results = futures::stream::iter(files)
            .map(|file| {
                let policy = &policy;
                let dry = options.dry_run;
                async move {
                    let bytes = if dry {
                        Ok(file.attr.size)
                    } else {
                        self.act(policy, &file).await
                    };
                    (file, bytes)
                }
            })
            .buffered(policy.concurrency.max(1) as usize);
        let mut failure = None;
        while let Some((file, result)) = results.next().await {
            match result {
                Ok(bytes) => {
                    progress.files += 1;
                    progress.bytes += bytes;
                    progress.cursor = file.path;
                }
                Err(e) => {
                    failure = Some(format!("{}: {e}", file.path));
                    break;
                }
            }
            if let Some(f) = &options.on_progress {
                f(&progress);
            }
            if policy.bandwidth > 0 && !options.dry_run {
                let due = Duration::from_secs_f64(
                    (progress.bytes - moved_at_start) as f64 / policy.bandwidth as f64,
                );
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            if !options.dry_run && saved.elapsed() >= SAVE_EVERY {
                self.save_run(&mut run, &progress, None, false).await?;
                saved = Instant::now();
            }
        }
        drop(results);
        if options.dry_run {
            return Ok(progress);
        }
        let finished = failure.is_none();
        self.save_run(&mut run, &progress, failure.clone(), finished)
            .await?;
        match failure {
            None => Ok(progress),
            Some(e) => Err(ClientError::Unavailable(format!(
                "run of {name} stopped after {} files ({}); run it again to resume: {e}",
                progress.files,
                if progress.cursor.is_empty() {
                    "none done"
                } else {
                    progress.cursor.as_str()
                }
            ))),
        }
    }

    async fn act(&self, policy: &pb::TierPolicy, file: &Found) -> Result<u64> {
        match policy.action() {
            pb::TierAction::ToCold => self.file_to_cold(file.attr.ino).await,
            pb::TierAction::PinHot => self.file_to_hot(file.attr.ino, true).await,
            pb::TierAction::Expire => {
                let (parent, name) = self.meta.resolve_parent(&file.path).await?;
                match self.meta.unlink(parent.ino, name.as_bytes()).await {
                    Ok(()) => Ok(file.attr.size),
                    // Gone meanwhile: nothing to do.
                    Err(ClientError::Fs { errno, .. }) if errno == cairn_proto::status::ENOENT => {
                        Ok(0)
                    }
                    Err(e) => Err(e),
                }
            }
            pb::TierAction::Unspecified => Err(ClientError::Invalid("policy has no action".into())),
        }
    }

    async fn save_run(
        &self,
        run: &mut pb::TierRun,
        progress: &Progress,
        error: Option<String>,
        finished: bool,
    ) -> Result<()> {
        run.files = progress.files;
        run.bytes = progress.bytes;
        run.cursor = progress.cursor.clone();
        run.updated_ms = now_ms();
        if let Some(e) = error {
            run.failures += 1;
            run.last_error = e.chars().take(1024).collect();
        }
        if finished {
            run.finished_ms = run.updated_ms;
        }
        self.meta
            .update_tier(pb::update_tier_request::Update::PutRun(run.clone()))
            .await
    }
}

fn facts(file: &Found) -> FileFacts<'_> {
    FileFacts {
        path: &file.path,
        size: file.attr.size,
        mtime_ns: file.attr.mtime_ns,
        atime_ns: file.attr.atime_ns,
    }
}
