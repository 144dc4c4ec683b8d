//! The key layout of a shard's state machine (the `sm` column family, each key
//! behind the 4-byte shard prefix `kv::shard_key` adds): every tag byte, every
//! key builder and decoder, in one place. Integers are big-endian so scans
//! run in numeric order. A new key family takes a new tag here; the test below
//! refuses two families on one tag (a collision already shipped once: orphans
//! were scanned as remembered replies).
//!
//! | tag | key | value |
//! |-----|-----|-------|
//! | `i` | ino | inode |
//! | `d` | parent, name | entry |
//! | `c` | ino, chunk (u32) | slices of the chunk |
//! | `x` | ino, name | xattr value |
//! | `l` | ino | symlink target |
//! | `D` | ino | a small file's inline data |
//! | `u` | ino | orphan (unlinked while open): since when |
//! | `o` / `O` | ino, client / client, ino | open count / its index by client |
//! | `s` | client | session lease expiry |
//! | `r` | client, seq, step (u8) | remembered reply |
//! | `q` | slice | slice waiting for block deletion: its size |
//! | `S` | slice, ino, chunk (u32) | a chunk shows the slice: its size (`crate::slices`) |
//! | `k` / `K` | ino / client, ino | file locks of an inode / their index |
//! | `t` / `p` / `a` / `L` | txn id / txn id / txn id / locked key | 2PC record / intent / tombstone / key lock |
//! | `N` / `G` | node id / group id | data node / placement group (shard 0) |
//! | `T` | `b` / `p`name / `r`name | tiering backend, policies, runs (shard 0) |
//! | `m` | name | singletons of applied state ([`APPLIED`], [`MEMBERSHIP`], [`LAYOUT`], [`TXN_HORIZON`]) |
//! | `n` | name | counters ([`NEXT_INO`], [`INODES`], [`NEXT_SLICE`]) |

pub const INODE: u8 = b'i';
pub const DENTRY: u8 = b'd';
pub const CHUNK: u8 = b'c';
pub const XATTR: u8 = b'x';
pub const SYMLINK: u8 = b'l';
pub const INLINE: u8 = b'D';
pub const ORPHAN: u8 = b'u';
pub const OPEN: u8 = b'o';
pub const OPENER: u8 = b'O';
pub const SESSION: u8 = b's';
pub const REPLY: u8 = b'r';
pub const GC: u8 = b'q';
pub const SLICE_REF: u8 = b'S';
pub const LOCK_TABLE: u8 = b'k';
pub const LOCK_HELD: u8 = b'K';
pub const TXN_RECORD: u8 = b't';
pub const TXN_INTENT: u8 = b'p';
pub const TXN_TOMBSTONE: u8 = b'a';
pub const TXN_LOCK: u8 = b'L';
pub const DATA_NODE: u8 = b'N';
pub const GROUP: u8 = b'G';
pub const TIER: u8 = b'T';
pub const META: u8 = b'm';
pub const COUNTER: u8 = b'n';
pub const NODE_STATE: u8 = b'W';
pub const GROUP_STATES: u8 = b'Y';

/// Every tag, for the distinctness test and for readers of raw dumps.
pub const TAGS: [u8; 26] = [
    INODE,
    DENTRY,
    CHUNK,
    XATTR,
    SYMLINK,
    INLINE,
    ORPHAN,
    OPEN,
    OPENER,
    SESSION,
    REPLY,
    GC,
    SLICE_REF,
    LOCK_TABLE,
    LOCK_HELD,
    TXN_RECORD,
    TXN_INTENT,
    TXN_TOMBSTONE,
    TXN_LOCK,
    DATA_NODE,
    GROUP,
    TIER,
    META,
    COUNTER,
    NODE_STATE,
    GROUP_STATES,
];

/// The last applied log id.
pub const APPLIED: &[u8] = b"mapplied";
/// The last applied membership.
pub const MEMBERSHIP: &[u8] = b"mmembership";
/// The data layout (shard 0).
pub const LAYOUT: &[u8] = b"mlayout";
/// Transactions begun before this time (ms) may no longer prepare here.
pub const TXN_HORIZON: &[u8] = b"mtxn-horizon";
/// How long shard 0 waits before replacing a chain member that left (ms).
pub const REPLACE_AFTER: &[u8] = b"mreplace-after";
/// The next inode sequence of the shard.
pub const NEXT_INO: &[u8] = b"nino";
/// How many inodes the shard holds.
pub const INODES: &[u8] = b"ninodes";
/// The next slice id (shard 0).
pub const NEXT_SLICE: &[u8] = b"nslice";

/// A key of tag `tag` followed by `parts`.
pub fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![tag];
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub fn inode(ino: u64) -> Vec<u8> {
    key(INODE, &[&ino.to_be_bytes()])
}
pub fn dentry_prefix(parent: u64) -> Vec<u8> {
    key(DENTRY, &[&parent.to_be_bytes()])
}
pub fn dentry(parent: u64, name: &[u8]) -> Vec<u8> {
    key(DENTRY, &[&parent.to_be_bytes(), name])
}
pub fn chunk_prefix(ino: u64) -> Vec<u8> {
    key(CHUNK, &[&ino.to_be_bytes()])
}
pub fn chunk(ino: u64, chunk: u32) -> Vec<u8> {
    key(CHUNK, &[&ino.to_be_bytes(), &chunk.to_be_bytes()])
}
pub fn xattr_prefix(ino: u64) -> Vec<u8> {
    key(XATTR, &[&ino.to_be_bytes()])
}
pub fn xattr(ino: u64, name: &[u8]) -> Vec<u8> {
    key(XATTR, &[&ino.to_be_bytes(), name])
}
pub fn symlink(ino: u64) -> Vec<u8> {
    key(SYMLINK, &[&ino.to_be_bytes()])
}
pub fn inline(ino: u64) -> Vec<u8> {
    key(INLINE, &[&ino.to_be_bytes()])
}
pub fn orphan(ino: u64) -> Vec<u8> {
    key(ORPHAN, &[&ino.to_be_bytes()])
}
pub fn open_prefix(ino: u64) -> Vec<u8> {
    key(OPEN, &[&ino.to_be_bytes()])
}
pub fn open(ino: u64, client: u64) -> Vec<u8> {
    key(OPEN, &[&ino.to_be_bytes(), &client.to_be_bytes()])
}
pub fn opener_prefix(client: u64) -> Vec<u8> {
    key(OPENER, &[&client.to_be_bytes()])
}
pub fn opener(client: u64, ino: u64) -> Vec<u8> {
    key(OPENER, &[&client.to_be_bytes(), &ino.to_be_bytes()])
}
pub fn session(client: u64) -> Vec<u8> {
    key(SESSION, &[&client.to_be_bytes()])
}
pub fn reply_prefix(client: u64) -> Vec<u8> {
    key(REPLY, &[&client.to_be_bytes()])
}
pub fn reply(client: u64, seq: u64, step: u8) -> Vec<u8> {
    key(REPLY, &[&client.to_be_bytes(), &seq.to_be_bytes(), &[step]])
}
pub fn gc(slice_id: u64) -> Vec<u8> {
    key(GC, &[&slice_id.to_be_bytes()])
}
pub fn slice_ref_prefix(slice_id: u64) -> Vec<u8> {
    key(SLICE_REF, &[&slice_id.to_be_bytes()])
}
pub fn slice_ref(slice_id: u64, ino: u64, chunk: u32) -> Vec<u8> {
    key(
        SLICE_REF,
        &[
            &slice_id.to_be_bytes(),
            &ino.to_be_bytes(),
            &chunk.to_be_bytes(),
        ],
    )
}
pub fn lock_table(ino: u64) -> Vec<u8> {
    key(LOCK_TABLE, &[&ino.to_be_bytes()])
}
pub fn lock_held_prefix(client: u64) -> Vec<u8> {
    key(LOCK_HELD, &[&client.to_be_bytes()])
}
pub fn lock_held(client: u64, ino: u64) -> Vec<u8> {
    key(LOCK_HELD, &[&client.to_be_bytes(), &ino.to_be_bytes()])
}
pub fn txn_record(id: u64) -> Vec<u8> {
    key(TXN_RECORD, &[&id.to_be_bytes()])
}
pub fn txn_intent(id: u64) -> Vec<u8> {
    key(TXN_INTENT, &[&id.to_be_bytes()])
}
pub fn txn_tombstone(id: u64) -> Vec<u8> {
    key(TXN_TOMBSTONE, &[&id.to_be_bytes()])
}
/// The lock a prepared transaction holds on state-machine key `k`.
pub fn txn_lock(k: &[u8]) -> Vec<u8> {
    key(TXN_LOCK, &[k])
}
pub fn data_node(id: u64) -> Vec<u8> {
    key(DATA_NODE, &[&id.to_be_bytes()])
}
pub fn group(id: u32) -> Vec<u8> {
    key(GROUP, &[&id.to_be_bytes()])
}
/// What an operator wants of data node `id` (absent: active).
pub fn node_state(id: u64) -> Vec<u8> {
    key(NODE_STATE, &[&id.to_be_bytes()])
}
/// The replica states of group `id`'s members (absent: all serving).
pub fn group_states(id: u32) -> Vec<u8> {
    key(GROUP_STATES, &[&id.to_be_bytes()])
}
pub fn tier_backend() -> Vec<u8> {
    key(TIER, &[b"b"])
}
pub fn tier_policy_prefix() -> Vec<u8> {
    key(TIER, &[b"p"])
}
pub fn tier_policy(name: &str) -> Vec<u8> {
    key(TIER, &[b"p", name.as_bytes()])
}
pub fn tier_run_prefix() -> Vec<u8> {
    key(TIER, &[b"r"])
}
pub fn tier_run(name: &str) -> Vec<u8> {
    key(TIER, &[b"r", name.as_bytes()])
}

/// Whether a key belongs to the namespace, so a transaction may lock it.
pub fn is_namespace(k: &[u8]) -> bool {
    matches!(
        k.first().copied(),
        Some(INODE | DENTRY | CHUNK | XATTR | SYMLINK)
    )
}

/// The big-endian u64 at byte `at` of a key.
pub fn u64_at(k: &[u8], at: usize) -> Option<u64> {
    k.get(at..at + 8)?.try_into().ok().map(u64::from_be_bytes)
}

/// The big-endian u32 at byte `at` of a key.
pub fn u32_at(k: &[u8], at: usize) -> Option<u32> {
    k.get(at..at + 4)?.try_into().ok().map(u32::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn tags_are_distinct() {
        let set: BTreeSet<u8> = TAGS.iter().copied().collect();
        assert_eq!(set.len(), TAGS.len(), "two key families share a tag");
    }

    #[test]
    fn singletons_are_distinct_and_tagged() {
        let singletons = [
            APPLIED,
            MEMBERSHIP,
            LAYOUT,
            TXN_HORIZON,
            NEXT_INO,
            INODES,
            NEXT_SLICE,
        ];
        let set: BTreeSet<&[u8]> = singletons.iter().copied().collect();
        assert_eq!(set.len(), singletons.len());
        for k in singletons {
            assert!(matches!(k[0], META | COUNTER), "{k:?}");
        }
    }

    #[test]
    fn decoders_round_trip() {
        let ino = 0x0102_0304_0506_0708;
        assert_eq!(u64_at(&inode(ino), 1), Some(ino));
        assert_eq!(u64_at(&dentry(ino, b"name"), 1), Some(ino));
        assert_eq!(&dentry(ino, b"name")[9..], b"name");
        assert_eq!(u32_at(&chunk(ino, 77), 9), Some(77));
        assert_eq!(u64_at(&open(ino, 9), 9), Some(9));
        assert_eq!(u64_at(&opener(9, ino), 9), Some(ino));
        assert_eq!(u64_at(&lock_held(9, ino), 9), Some(ino));
        assert_eq!(u64_at(&reply(5, 6, 7), 9), Some(6));
        assert_eq!(u64_at(&inode(ino), 2), None);
        assert!(dentry(ino, b"n").starts_with(&dentry_prefix(ino)));
        assert!(is_namespace(&inode(1)) && !is_namespace(&txn_lock(&inode(1))));
    }
}
