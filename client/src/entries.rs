//! A mount's short-lived cache of directory entries and their attributes,
//! filled from directory listings, so a walk that stats the files of a
//! directory one by one (`ls -l` without readdirplus, `find`, a dataset
//! loader) costs one listing instead of one metadata request per name.
//!
//! What it may answer is what the kernel's own entry cache may: a positive
//! lookup at most `ttl` old (the mount's entry timeout). It never answers
//! "no such name" (a name created on another mount is found at once), it is
//! emptied by every mutation this client sends (so a mount reads its own
//! changes), and open, getattr and reads do not consult it, so close-to-open
//! holds as without it.
//!
//! A directory is listed once two lookups that missed here found their name
//! at metad within `ttl`, from the second name on, one page: lookups in name
//! order (the common walk) then hit. Lookups of names that do not exist (the
//! kernel's before a create, mkdir or rename) never cause a listing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use cairn_proto::pb;

/// Entries fetched by one listing.
pub const LISTING_PAGE: u32 = 512;
/// Above this many cached entries the cache starts over.
const MAX_ENTRIES: usize = 200_000;

pub struct EntryCache {
    ttl: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Bumped by every mutation: a listing that began before one is not kept.
    generation: u64,
    dirs: HashMap<u64, Dir>,
    entries: usize,
}

struct Dir {
    /// When the first miss or the listing happened.
    since: Instant,
    misses: u32,
    names: HashMap<Vec<u8>, pb::Attr>,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            since: Instant::now(),
            misses: 0,
            names: HashMap::new(),
        }
    }
}

impl EntryCache {
    pub fn new(ttl: Duration) -> Self {
        EntryCache {
            ttl,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached attributes of `name` in `parent`, if fresh.
    pub fn get(&self, parent: u64, name: &[u8]) -> Option<pb::Attr> {
        let mut state = self.lock();
        let dir = state.dirs.get(&parent)?;
        if dir.since.elapsed() >= self.ttl {
            let dropped = dir.names.len();
            state.dirs.remove(&parent);
            state.entries -= dropped;
            return None;
        }
        dir.names.get(name).copied()
    }

    /// Records that a lookup in `parent` missed here and found its name at
    /// metad; answers, at the second such lookup, the generation to hand to
    /// [`fill`](Self::fill) with a listing of the directory.
    pub fn found(&self, parent: u64) -> Option<u64> {
        let mut state = self.lock();
        let generation = state.generation;
        let ttl = self.ttl;
        let dir = state.dirs.entry(parent).or_insert_with(Dir::new);
        if dir.since.elapsed() >= ttl {
            *dir = Dir::new();
        }
        dir.misses += 1;
        (dir.misses == 2).then_some(generation)
    }

    /// Keeps the entries of a listing of `parent` that came with attributes,
    /// unless a mutation happened since `generation`.
    pub fn fill(&self, parent: u64, generation: u64, listing: Vec<pb::DirEntry>) {
        let mut state = self.lock();
        if state.generation != generation {
            return;
        }
        if state.entries + listing.len() > MAX_ENTRIES {
            state.dirs.clear();
            state.entries = 0;
        }
        let mut added = 0;
        let dir = state.dirs.entry(parent).or_insert_with(Dir::new);
        dir.since = Instant::now();
        for entry in listing {
            if let Some(attr) = entry.attr {
                if dir.names.insert(entry.name.to_vec(), attr).is_none() {
                    added += 1;
                }
            }
        }
        state.entries += added;
    }

    /// Forgets everything: called around every mutation.
    pub fn invalidate(&self) {
        let mut state = self.lock();
        state.generation += 1;
        if state.entries > 0 || !state.dirs.is_empty() {
            state.dirs.clear();
            state.entries = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, ino: u64) -> pb::DirEntry {
        pb::DirEntry {
            name: name.as_bytes().to_vec().into(),
            attr: Some(pb::Attr {
                ino,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn lists_on_the_second_found_miss_and_forgets_on_mutation() {
        let cache = EntryCache::new(Duration::from_secs(60));
        assert!(cache.get(1, b"a").is_none());
        assert_eq!(cache.found(1), None);
        let Some(generation) = cache.found(1) else {
            panic!("the second found miss asks for a listing");
        };
        cache.fill(1, generation, vec![entry("c", 3), entry("d", 4)]);
        assert_eq!(cache.get(1, b"c").map(|a| a.ino), Some(3));
        // Never a negative answer: a name missing from the listing is a miss.
        assert!(cache.get(1, b"zz").is_none());
        cache.invalidate();
        assert!(cache.get(1, b"c").is_none());
        // A listing that began before a mutation is not kept.
        cache.found(2);
        let Some(generation) = cache.found(2) else {
            panic!("the second found miss asks for a listing");
        };
        cache.invalidate();
        cache.fill(2, generation, vec![entry("c", 3)]);
        assert!(cache.get(2, b"c").is_none());
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = EntryCache::new(Duration::ZERO);
        cache.fill(1, 0, vec![entry("c", 3)]);
        assert!(cache.get(1, b"c").is_none());
    }
}
