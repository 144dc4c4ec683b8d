//! Identifiers shared by every process.
//!
//! An inode id carries its owning shard in the top 24 bits (`shard << 40 | seq`), so
//! any node routes an inode operation without a lookup.

/// A metad or datad node.
pub type NodeId = u64;
/// A metadata shard; shard 0 holds the cluster map.
pub type ShardId = u32;
/// Shard of the cluster map.
pub const MAP_SHARD: ShardId = 0;
/// The root directory: shard 1, sequence 1.
pub const ROOT_INO: u64 = (1 << INO_SHARD_SHIFT) | 1;

/// Bytes of file content per chunk.
pub const CHUNK_SIZE: u64 = 64 << 20;
/// Largest block.
pub const MAX_BLOCK_SIZE: usize = 4 << 20;

const INO_SHARD_SHIFT: u32 = 40;
const INO_SEQ_MASK: u64 = (1 << INO_SHARD_SHIFT) - 1;
/// Per-shard inode sequence numbers are below this.
pub const INO_SEQ_LIMIT: u64 = 1 << INO_SHARD_SHIFT;

/// Composes an inode id from its shard and the shard-local sequence.
pub fn make_ino(shard: ShardId, seq: u64) -> u64 {
    (u64::from(shard) << INO_SHARD_SHIFT) | (seq & INO_SEQ_MASK)
}

/// The shard that owns an inode.
pub fn ino_shard(ino: u64) -> ShardId {
    // Inode ids are at most 64 bits, so the shard part fits in 24 bits.
    (ino >> INO_SHARD_SHIFT) as ShardId
}

/// The shard-local sequence of an inode.
pub fn ino_seq(ino: u64) -> u64 {
    ino & INO_SEQ_MASK
}

/// Placement group of a block: consecutive blocks of one slice land on different
/// groups, so a large file stripes over every data server.
pub fn placement_group(slice_id: u64, index: u32, groups: u32) -> u32 {
    if groups == 0 {
        return 0;
    }
    let mut h = slice_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 29;
    ((h.wrapping_add(u64::from(index))) % u64::from(groups)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_ids_round_trip() {
        let ino = make_ino(7, 12345);
        assert_eq!(ino_shard(ino), 7);
        assert_eq!(ino_seq(ino), 12345);
        assert_eq!(ino_shard(ROOT_INO), 1);
    }

    #[test]
    fn consecutive_blocks_use_different_groups() {
        let groups: Vec<u32> = (0..8).map(|i| placement_group(42, i, 8)).collect();
        let mut sorted = groups.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 8, "{groups:?}");
    }
}
