//! A file's chunk maps and the slice references that decide when a slice's
//! blocks are freed. Every change to a chunk's slice list goes through
//! [`settle`] or [`set_chunk`], nowhere else:
//!
//! - Lists are stored painted ([`paint`]): the segments a reader sees, in
//!   position order, none overlapping. A write that hides older data drops it
//!   from the list in the command that commits the write, so a file rewritten
//!   in place keeps a list as short as its visible pieces.
//! - Each slice a chunk shows is recorded under `S/<slice>/<ino>/<chunk>`
//!   (its size as the value). The moment no chunk of the shard refers to a
//!   slice any more, the same command queues it for block deletion
//!   (`q/<slice>`, [`crate::gc`]); a slice that gains a reference leaves the
//!   queue. Overwrites, truncates, punched holes, deletes and concatenations
//!   thus all free exactly the slices nothing shows.
//! - [`referenced`] answers which slices some chunk refers to: data servers
//!   ask it before they collect blocks no file refers to (slices of writers
//!   killed before their commit).

use std::collections::BTreeMap;

use crate::error::MetaError;
use crate::fs::SliceRec;
use crate::keys;
use crate::kv::Txn;

/// The stored slice list of `ino`'s chunk `chunk` (empty when none).
pub fn chunk_slices(txn: &Txn, ino: u64, chunk: u32) -> Result<Vec<SliceRec>, MetaError> {
    Ok(txn.get_as(&keys::chunk(ino, chunk))?.unwrap_or_default())
}

/// Stores `layers` (bottom first) as chunk `chunk` of `ino`, painted: hidden
/// data leaves the list, and so do holes, which hide nothing once painted,
/// except over chunk 0's inline data (the bottom layer of a small file).
pub fn settle(txn: &mut Txn, ino: u64, chunk: u32, layers: &[SliceRec]) -> Result<(), MetaError> {
    let keep_holes = chunk == 0 && txn.get(&keys::inline(ino))?.is_some();
    let painted: Vec<SliceRec> = paint(layers)
        .into_iter()
        .filter(|s| s.slice_id != 0 || keep_holes)
        .collect();
    set_chunk(txn, ino, chunk, painted)
}

/// Replaces chunk `chunk` of `ino` with `list` (an empty list deletes it),
/// keeping the slice references: a slice the chunk no longer shows loses its
/// reference, and is queued for block deletion when it was the last one.
pub fn set_chunk(
    txn: &mut Txn,
    ino: u64,
    chunk: u32,
    list: Vec<SliceRec>,
) -> Result<(), MetaError> {
    let old = ids(&chunk_slices(txn, ino, chunk)?);
    let new = ids(&list);
    let k = keys::chunk(ino, chunk);
    if list.is_empty() {
        txn.delete(k);
    } else {
        txn.put_as(k, &list)?;
    }
    for (&id, &size) in new.iter().filter(|(id, _)| !old.contains_key(id)) {
        txn.put_as(keys::slice_ref(id, ino, chunk), &size)?;
        txn.delete(keys::gc(id));
    }
    for (&id, &size) in old.iter().filter(|(id, _)| !new.contains_key(id)) {
        txn.delete(keys::slice_ref(id, ino, chunk));
        if txn.scan(&keys::slice_ref_prefix(id), b"", 1)?.is_empty() {
            txn.put_as(keys::gc(id), &size)?;
        }
    }
    Ok(())
}

/// Deletes every chunk of `ino` (its slices are freed unless shown elsewhere).
pub fn drop_chunks(txn: &mut Txn, ino: u64) -> Result<(), MetaError> {
    for (k, _) in txn.scan(&keys::chunk_prefix(ino), b"", usize::MAX)? {
        set_chunk(txn, ino, crate::fs::chunk_of_key(&k)?, Vec::new())?;
    }
    Ok(())
}

/// The slices of `ids` that some chunk of this shard shows, or that wait in
/// its deletion queue (their blocks are the queue's to free, after its delay).
pub fn referenced(txn: &Txn, ids: &[u64]) -> Result<Vec<u64>, MetaError> {
    let mut out = Vec::new();
    for &id in ids {
        if txn.get(&keys::gc(id))?.is_some()
            || !txn.scan(&keys::slice_ref_prefix(id), b"", 1)?.is_empty()
        {
            out.push(id);
        }
    }
    Ok(out)
}

/// One slice reference: a chunk of a file shows the slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceRef {
    pub slice_id: u64,
    pub ino: u64,
    pub chunk: u32,
    pub size: u32,
}

/// Up to `limit` references in key order after the cursor `after` (empty:
/// from the first), and the cursor of the next page (`None`: no more).
pub fn list_refs(
    txn: &Txn,
    after: &[u8],
    limit: usize,
) -> Result<(Vec<SliceRef>, Option<Vec<u8>>), MetaError> {
    let page = txn.scan(&[keys::SLICE_REF], after, limit)?;
    let next = (page.len() == limit).then(|| page.last().map(|(k, _)| k[1..].to_vec()));
    let mut out = Vec::with_capacity(page.len());
    for (k, v) in page {
        let bad = || MetaError::Storage("malformed slice reference key".into());
        out.push(SliceRef {
            slice_id: keys::u64_at(&k, 1).ok_or_else(bad)?,
            ino: keys::u64_at(&k, 9).ok_or_else(bad)?,
            chunk: keys::u32_at(&k, 17).ok_or_else(bad)?,
            size: crate::kv::decode(&v)?,
        });
    }
    Ok((out, next.flatten()))
}

/// The slice ids (holes excluded) of a list, with their sizes.
fn ids(list: &[SliceRec]) -> BTreeMap<u64, u32> {
    list.iter()
        .filter(|s| s.slice_id != 0)
        .map(|s| (s.slice_id, s.size))
        .collect()
}

/// The segments a reader sees of `layers` (later layers over earlier), in
/// position order, none overlapping; holes (slice 0) are kept as segments.
/// Each layer costs the logarithm of the segments so far plus the segments it
/// covers, so painting a long list stays cheap.
pub fn paint(layers: &[SliceRec]) -> Vec<SliceRec> {
    let mut segs: BTreeMap<u32, SliceRec> = BTreeMap::new();
    for s in layers.iter().filter(|s| s.len > 0) {
        let (a, b) = (s.pos, s.pos + s.len);
        let mut hit: Vec<u32> = segs.range(a..b).map(|(&p, _)| p).collect();
        if let Some((&p, g)) = segs.range(..a).next_back() {
            if g.pos + g.len > a {
                hit.push(p);
            }
        }
        for p in hit {
            let Some(g) = segs.remove(&p) else { continue };
            let (ga, gb) = (g.pos, g.pos + g.len);
            if ga < a {
                segs.insert(ga, SliceRec { len: a - ga, ..g });
            }
            if gb > b {
                let right = SliceRec {
                    pos: b,
                    off: g.off + (b - ga),
                    len: gb - b,
                    ..g
                };
                segs.insert(b, right);
            }
        }
        segs.insert(a, *s);
    }
    segs.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(slice_id: u64, pos: u32, len: u32, off: u32) -> SliceRec {
        SliceRec {
            slice_id,
            pos,
            len,
            off,
            size: 1000,
        }
    }

    #[test]
    fn paint_lays_later_over_earlier() {
        let segs = paint(&[s(1, 0, 100, 0), s(2, 20, 10, 5), s(0, 90, 50, 0)]);
        assert_eq!(
            segs,
            vec![
                s(1, 0, 20, 0),
                s(2, 20, 10, 5),
                s(1, 30, 60, 30),
                s(0, 90, 50, 0)
            ]
        );
        // A layer covering everything leaves only itself.
        assert_eq!(
            paint(&[s(1, 10, 10, 0), s(2, 5, 5, 0), s(3, 0, 40, 0)]),
            vec![s(3, 0, 40, 0)]
        );
        // Exact edges: touching segments are not cut.
        assert_eq!(
            paint(&[s(1, 0, 10, 0), s(2, 10, 10, 0), s(3, 5, 10, 0)]),
            vec![s(1, 0, 5, 0), s(3, 5, 10, 0), s(2, 15, 5, 5)]
        );
    }

    /// Painting matches the obvious byte-by-byte model on random layers.
    #[test]
    fn paint_matches_a_byte_model() {
        let mut seed = 7u64;
        let mut next = |n: u32| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as u32) % n
        };
        for _ in 0..200 {
            let layers: Vec<SliceRec> = (0..next(12) + 1)
                .map(|i| s(u64::from(i % 3), next(200), next(80), next(50)))
                .collect();
            let mut model = vec![None; 300];
            for l in &layers {
                for p in l.pos..l.pos + l.len {
                    model[p as usize] = Some((l.slice_id, l.off + (p - l.pos)));
                }
            }
            let mut got = vec![None; 300];
            let segs = paint(&layers);
            for w in segs.windows(2) {
                assert!(w[0].pos + w[0].len <= w[1].pos, "{segs:?}");
            }
            for g in &segs {
                for p in g.pos..g.pos + g.len {
                    got[p as usize] = Some((g.slice_id, g.off + (p - g.pos)));
                }
            }
            assert_eq!(got, model, "{layers:?}");
        }
    }
}
