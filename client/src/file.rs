//! Reading and writing file content: 64 MiB chunks holding ordered slices, each
//! slice stored as immutable blocks.
//!
//! Writer: bytes written contiguously within a chunk extend that chunk's open
//! slice; every full block is uploaded in the background while the caller keeps
//! writing, with a bound on bytes in flight. `close` uploads the tails, waits for
//! every upload, and then commits all new slices and the length in one metadata
//! write: until then no metadata points at the new blocks.
//!
//! Appender (O_APPEND): the writer fills slice objects of its own, numbered
//! from 0 as if they were a file of their own (so a write never waits for the
//! file's size), and a flush commits them as one `Append`, which metad places
//! at the file's size when it applies: what one flush holds lands contiguous,
//! after everything appended before it, by any client.
//!
//! Reader: a chunk's slices are painted in order (later overlays earlier, slice 0
//! is a hole) into the visible segments; the blocks a read needs are fetched in
//! parallel. Sequential reads fetch whole blocks and read ahead.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use bytes::BytesMut;
use futures::stream::StreamExt;
use futures::stream::TryStreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use cairn_proto::ids::CHUNK_SIZE;
use cairn_proto::pb;
use cairn_proto::status::ENOENT;
use cairn_proto::status::ESTALE;

use crate::error::ClientError;
use crate::meta::Result;
use crate::Client;

/// Blocks fetched or uploaded at once per file.
const PARALLEL_BLOCKS: usize = 16;
/// Whole blocks kept by a reader for sequential access.
const READ_CACHE_BLOCKS: usize = 32;
/// How far ahead of a sequential reader blocks are fetched in the background.
const READ_AHEAD_BLOCKS: u64 = 8;
/// Stands for a file's inline data in chunk 0's slice list (never a real id:
/// metad hands out ids from 1 upwards).
const INLINE_SLICE: u64 = u64::MAX;
/// Most bytes an appender buffers before it commits: metad takes at most
/// 1024 slice objects in one append, and an appender cuts one per chunk.
const APPEND_MAX_BYTES: u64 = 1000 * CHUNK_SIZE;

struct OpenSlice {
    slice_id: u64,
    pos: u32,
    len: u32,
    /// Bytes not yet uploaded (less than a block).
    pending: BytesMut,
    next_block: u32,
}

pub struct FileWriter {
    client: Arc<Client>,
    ino: u64,
    block_size: usize,
    open: BTreeMap<u32, OpenSlice>,
    done: Vec<(u32, pb::Slice)>,
    uploads: JoinSet<Result<()>>,
    budget: Arc<Semaphore>,
    length: u64,
    /// Keeps data out of the inode record even when small.
    no_inline: bool,
    /// O_APPEND: offsets are ignored; `length` counts the bytes buffered
    /// since the last flush (see the module doc).
    append: bool,
}

impl FileWriter {
    pub(crate) fn new(client: Arc<Client>, ino: u64, block_size: usize) -> Self {
        let blocks_in_flight = (client.max_inflight_bytes / block_size).max(1);
        FileWriter {
            client,
            ino,
            block_size,
            open: BTreeMap::new(),
            done: Vec::new(),
            uploads: JoinSet::new(),
            budget: Arc::new(Semaphore::new(blocks_in_flight)),
            length: 0,
            no_inline: false,
            append: false,
        }
    }

    /// Makes this an appender: every write goes after the previous one, and
    /// a flush commits them at the file's end as metad sees it then.
    pub fn appending(mut self) -> Self {
        self.append = true;
        self
    }

    /// Whether this writer appends (see [`FileWriter::appending`]).
    pub fn is_append(&self) -> bool {
        self.append
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Stores even a small file's data as blocks, never inline: for files
    /// whose slices are later moved into another (S3 multipart parts).
    pub fn without_inline(mut self) -> Self {
        self.no_inline = true;
        self
    }

    /// Writes `data` at `offset` (an appender ignores it and appends);
    /// blocks upload in the background.
    pub async fn write_at(&mut self, mut offset: u64, data: &[u8]) -> Result<()> {
        if self.append {
            // One append carries at most 1024 slice objects (metad's bound).
            if self.length + data.len() as u64 > APPEND_MAX_BYTES {
                self.flush().await?;
            }
            offset = self.length;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let chunk = u32::try_from(offset / CHUNK_SIZE)
                .map_err(|_| ClientError::fs(cairn_proto::status::EFBIG, "file too large"))?;
            let pos = (offset % CHUNK_SIZE) as u32;
            let n = rest.len().min((CHUNK_SIZE - u64::from(pos)) as usize);
            let contiguous = self.open.get(&chunk).is_some_and(|s| s.pos + s.len == pos);
            if !contiguous {
                if let Some(old) = self.open.remove(&chunk) {
                    self.finish(chunk, old).await?;
                }
                let slice_id = self.client.meta.next_slice_id().await?;
                self.open.insert(
                    chunk,
                    OpenSlice {
                        slice_id,
                        pos,
                        len: 0,
                        pending: BytesMut::with_capacity(self.block_size),
                        next_block: 0,
                    },
                );
            }
            self.append(chunk, &rest[..n]).await?;
            offset += n as u64;
            self.length = self.length.max(offset);
            rest = &rest[n..];
        }
        Ok(())
    }

    async fn append(&mut self, chunk: u32, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let full = {
                let Some(slice) = self.open.get_mut(&chunk) else {
                    return Err(ClientError::Invalid("no open slice".into()));
                };
                let take = data.len().min(self.block_size - slice.pending.len());
                slice.pending.extend_from_slice(&data[..take]);
                slice.len += take as u32;
                data = &data[take..];
                if slice.pending.len() == self.block_size {
                    let block = slice.pending.split().freeze();
                    let index = slice.next_block;
                    slice.next_block += 1;
                    Some((slice.slice_id, index, block))
                } else {
                    None
                }
            };
            if let Some((slice_id, index, block)) = full {
                self.upload(slice_id, index, block).await?;
            }
        }
        Ok(())
    }

    async fn upload(&mut self, slice_id: u64, index: u32, block: Bytes) -> Result<()> {
        // Surface an earlier failure as soon as possible.
        while let Some(done) = self.uploads.try_join_next() {
            done.map_err(|e| ClientError::Data(e.to_string()))??;
        }
        let permit = self
            .budget
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ClientError::Data(e.to_string()))?;
        let client = self.client.clone();
        self.uploads.spawn(async move {
            let r = client.data.put_block(slice_id, index, block).await;
            drop(permit);
            r
        });
        Ok(())
    }

    async fn finish(&mut self, chunk: u32, mut slice: OpenSlice) -> Result<()> {
        if !slice.pending.is_empty() {
            let block = slice.pending.split().freeze();
            self.upload(slice.slice_id, slice.next_block, block).await?;
        }
        if slice.len > 0 {
            self.done.push((
                chunk,
                pb::Slice {
                    slice_id: slice.slice_id,
                    pos: slice.pos,
                    len: slice.len,
                    off: 0,
                    size: slice.len,
                },
            ));
        }
        Ok(())
    }

    /// Small writes into the start of a file go to its inline data when the
    /// file is inline (or empty): one metadata write and no block. Answers
    /// None when this flush is not such a write or metad refuses it.
    async fn flush_inline(&mut self) -> Result<Option<pb::Attr>> {
        let limit = if self.no_inline || self.append {
            0
        } else {
            self.client.inline_max()
        };
        let candidate = match self.open.iter().next() {
            Some((&0, s)) if self.open.len() == 1 && self.done.is_empty() => {
                s.next_block == 0 && (s.pos + s.len) as usize <= limit && s.len > 0
            }
            _ => false,
        };
        if !candidate || !self.uploads.is_empty() {
            return Ok(None);
        }
        let Some(slice) = self.open.get(&0) else {
            return Ok(None);
        };
        let data = Bytes::copy_from_slice(&slice.pending);
        match self
            .client
            .meta
            .write_inline(self.ino, slice.pos, data, self.length)
            .await
        {
            Ok(attr) => {
                self.open.clear();
                Ok(Some(attr))
            }
            Err(e) if e.errno() == cairn_proto::status::ENOTSUP => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Uploads everything written so far and commits it; the file is durable and
    /// visible to every client when this returns.
    pub async fn flush(&mut self) -> Result<Option<pb::Attr>> {
        if let Some(attr) = self.flush_inline().await? {
            return Ok(Some(attr));
        }
        let open = std::mem::take(&mut self.open);
        for (chunk, slice) in open {
            self.finish(chunk, slice).await?;
        }
        while let Some(done) = self.uploads.join_next().await {
            done.map_err(|e| ClientError::Data(e.to_string()))??;
        }
        if self.done.is_empty() {
            return Ok(None);
        }
        if self.append {
            return self.commit_append().await.map(Some);
        }
        let mut chunks: BTreeMap<u32, Vec<pb::Slice>> = BTreeMap::new();
        for (chunk, slice) in self.done.drain(..) {
            chunks.entry(chunk).or_default().push(slice);
        }
        let commit = pb::CommitSlices {
            ino: self.ino,
            chunks: chunks
                .into_iter()
                .map(|(chunk, slices)| pb::ChunkSlices { chunk, slices })
                .collect(),
            length: self.length,
            mtime_ns: 0,
        };
        Ok(Some(self.client.meta.commit(commit).await?))
    }

    /// Commits an appender's slice objects (whole, in the order written: one
    /// per 64 MiB of its own numbering) as one `Append`.
    async fn commit_append(&mut self) -> Result<pb::Attr> {
        let mut done = std::mem::take(&mut self.done);
        done.sort_by_key(|(chunk, s)| (*chunk, s.pos));
        let slices = done
            .into_iter()
            .map(|(_, s)| pb::AppendSlice {
                slice_id: s.slice_id,
                len: s.len,
            })
            .collect();
        self.length = 0;
        self.client.meta.append(self.ino, slices).await
    }

    /// Flushes and ends the writer.
    pub async fn close(mut self) -> Result<Option<pb::Attr>> {
        self.flush().await
    }
}

/// An inode that no longer exists, named by number (an open file deleted
/// while not held, a stale handle): ESTALE, as NFS says, not ENOENT, which
/// would claim that the path it was opened by names nothing.
pub fn gone_is_stale(e: ClientError) -> ClientError {
    if e.errno() == ENOENT {
        ClientError::fs(ESTALE, format!("file deleted: {e}"))
    } else {
        e
    }
}

/// A visible run of a chunk: chunk bytes [start, end) come from `slice` (id 0: zeros).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment {
    start: u32,
    end: u32,
    slice: pb::Slice,
}

/// Paints slices in order into non-overlapping segments.
fn visible_segments(slices: &[pb::Slice]) -> Vec<Segment> {
    let mut segs: Vec<Segment> = Vec::new();
    for s in slices {
        let (start, end) = (s.pos, s.pos + s.len);
        let mut next = Vec::with_capacity(segs.len() + 2);
        for seg in segs {
            if seg.end <= start || seg.start >= end {
                next.push(seg);
                continue;
            }
            if seg.start < start {
                next.push(Segment { end: start, ..seg });
            }
            if seg.end > end {
                next.push(Segment { start: end, ..seg });
            }
        }
        next.push(Segment {
            start,
            end,
            slice: *s,
        });
        next.sort_by_key(|s| s.start);
        segs = next;
    }
    segs
}

/// One piece of a read: `len` bytes at `dst` in the output, from a block range.
#[derive(Clone, Copy)]
struct Piece {
    dst: usize,
    slice_id: u64,
    index: u32,
    offset: u32,
    len: u32,
}

pub struct FileReader {
    client: Arc<Client>,
    ino: u64,
    size: u64,
    block_size: u32,
    chunks: HashMap<u32, Arc<Vec<Segment>>>,
    /// The file's inline data (the bottom layer of chunk 0).
    inline: Bytes,
    cache: BTreeMap<(u64, u32), Bytes>,
    /// Blocks being fetched ahead of a sequential reader.
    ahead: HashMap<(u64, u32), tokio::task::JoinHandle<Result<Bytes>>>,
    next_sequential: u64,
    /// The open this reader holds (see [`hold`](Self::hold)).
    held: Option<u64>,
}

impl FileReader {
    pub(crate) fn new(client: Arc<Client>, attr: &pb::Attr, block_size: u32) -> Self {
        FileReader {
            client,
            ino: attr.ino,
            size: attr.size,
            block_size,
            chunks: HashMap::new(),
            inline: Bytes::new(),
            cache: BTreeMap::new(),
            ahead: HashMap::new(),
            next_sequential: 0,
            held: None,
        }
    }

    /// Keeps the file's data while this reader lives, even if the file is
    /// unlinked or renamed over meanwhile, as an open file descriptor does
    /// (see `MetaClient::track_open`: a long open is registered at metad).
    pub async fn hold(&mut self) -> Result<()> {
        if self.held.is_none() {
            self.held = Some(self.client.meta.track_open(self.ino).await?);
        }
        Ok(())
    }

    /// Ends the reader, releasing what [`hold`](Self::hold) holds; dropping
    /// it does the same in the background.
    pub async fn close(mut self) -> Result<()> {
        match self.held.take() {
            Some(token) => self.client.meta.untrack_open(token).await,
            None => Ok(()),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }

    async fn segments(&mut self, chunk: u32) -> Result<Arc<Vec<Segment>>> {
        if let Some(s) = self.chunks.get(&chunk) {
            return Ok(s.clone());
        }
        // Fetch a run of chunks at once: large files are read chunk after chunk.
        let reply = self
            .client
            .meta
            .read_chunks(self.ino, chunk, 4)
            .await
            .map_err(gone_is_stale)?;
        self.preload(chunk, 4, &reply);
        Ok(self.chunks.get(&chunk).cloned().unwrap_or_default())
    }

    /// Takes the layout of chunks [first, first + count) from a metadata answer.
    pub(crate) fn preload(&mut self, first: u32, count: u32, reply: &pb::ReadChunksReply) {
        if let Some(attr) = &reply.attr {
            self.size = attr.size;
        }
        for c in first..first.saturating_add(count) {
            let mut slices = Vec::new();
            if c == 0 && !reply.inline.is_empty() {
                self.inline = reply.inline.clone();
                let len = reply.inline.len() as u32;
                slices.push(pb::Slice {
                    slice_id: INLINE_SLICE,
                    pos: 0,
                    len,
                    off: 0,
                    size: len,
                });
            }
            if let Some(cs) = reply.chunks.iter().find(|cs| cs.chunk == c) {
                slices.extend_from_slice(&cs.slices);
            }
            self.chunks.insert(c, Arc::new(visible_segments(&slices)));
        }
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    /// A block no replica serves may belong to a layout that changed since
    /// this reader loaded it (the slice was overwritten and freed): the
    /// layout is read again and the read tried once more.
    pub async fn read_at(&mut self, offset: u64, len: usize) -> Result<Bytes> {
        match self.read_once(offset, len).await {
            Err(ClientError::Data(why)) => {
                tracing::debug!(ino = self.ino, %why, "block unreadable: reloading the layout");
                self.chunks.clear();
                self.cache.clear();
                for (_, fetch) in self.ahead.drain() {
                    fetch.abort();
                }
                self.read_once(offset, len).await
            }
            other => other,
        }
    }

    async fn read_once(&mut self, offset: u64, len: usize) -> Result<Bytes> {
        if offset >= self.size {
            return Ok(Bytes::new());
        }
        let len = len.min((self.size - offset) as usize);
        let sequential = offset == self.next_sequential;
        let window = READ_AHEAD_BLOCKS * u64::from(self.block_size);
        if !sequential && offset.abs_diff(self.next_sequential) > window {
            // A jump away: what was fetched ahead will not be read.
            for (_, fetch) in self.ahead.drain() {
                fetch.abort();
            }
        }
        self.next_sequential = offset + len as u64;
        let mut out = vec![0u8; len];
        let (inline, pieces): (Vec<Piece>, Vec<Piece>) = self
            .plan(offset, len as u64)
            .await?
            .into_iter()
            .partition(|p| p.slice_id == INLINE_SLICE);
        for p in &inline {
            let a = p.index as usize * self.block_size as usize + p.offset as usize;
            let b = a + p.len as usize;
            let src = self
                .inline
                .get(a..b)
                .ok_or_else(|| ClientError::Data("inline data shorter than its layer".into()))?;
            out[p.dst..p.dst + p.len as usize].copy_from_slice(src);
        }
        let end = offset + len as u64;
        if sequential {
            // Read ahead: the blocks of the next range of the same size (at
            // least a few blocks) are fetched in the background while this
            // read waits only for the blocks it needs.
            let ahead = (len as u64).max(window);
            let mut wanted = self
                .plan(end, ahead.min(self.size.saturating_sub(end)))
                .await?;
            wanted.retain(|p| p.slice_id != INLINE_SLICE);
            self.read_ahead(&wanted);
            self.fetch_whole_blocks(&pieces).await?;
            for p in &pieces {
                let block = self
                    .cache
                    .get(&(p.slice_id, p.index))
                    .ok_or_else(|| ClientError::Data("block missing after fetch".into()))?;
                let (a, b) = (p.offset as usize, (p.offset + p.len) as usize);
                let src = block.get(a..b).ok_or_else(|| {
                    ClientError::Data(format!(
                        "block {}/{} shorter than its slice",
                        p.slice_id, p.index
                    ))
                })?;
                out[p.dst..p.dst + p.len as usize].copy_from_slice(src);
            }
        } else {
            let data = &self.client.data;
            // Pieces by value: a stream of borrowed pieces makes this future
            // impossible to spawn (higher-ranked closure lifetimes).
            let parts: Vec<(usize, Bytes)> = futures::stream::iter(pieces)
                .map(|p: Piece| async move {
                    let bytes = data.get_block(p.slice_id, p.index, p.offset, p.len).await?;
                    if bytes.len() != p.len as usize {
                        return Err(ClientError::Data("short block read".into()));
                    }
                    Ok::<_, ClientError>((p.dst, bytes))
                })
                .buffer_unordered(PARALLEL_BLOCKS)
                .try_collect()
                .await?;
            for (dst, bytes) in parts {
                out[dst..dst + bytes.len()].copy_from_slice(&bytes);
            }
        }
        Ok(Bytes::from(out))
    }

    /// The block ranges that make up file bytes [offset, offset + len), with where
    /// each lands relative to `offset`. Holes produce no piece (they read as zeros).
    async fn plan(&mut self, offset: u64, len: u64) -> Result<Vec<Piece>> {
        let mut pieces = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let chunk = (pos / CHUNK_SIZE) as u32;
            let chunk_start = u64::from(chunk) * CHUNK_SIZE;
            let chunk_end = (chunk_start + CHUNK_SIZE).min(end);
            let segs = self.segments(chunk).await?;
            for seg in segs.iter() {
                let s = chunk_start + u64::from(seg.start);
                let e = chunk_start + u64::from(seg.end);
                let (from, to) = (s.max(pos), e.min(chunk_end));
                if from >= to || seg.slice.slice_id == 0 {
                    continue;
                }
                // Map onto the slice object (relative to where the slice, not
                // this segment of it, starts) and split at block boundaries.
                let slice_start = chunk_start + u64::from(seg.slice.pos);
                let mut obj = u64::from(seg.slice.off) + (from - slice_start);
                let mut dst = (from - offset) as usize;
                let mut left = to - from;
                let bs = u64::from(self.block_size);
                while left > 0 {
                    let in_block = obj % bs;
                    let n = left.min(bs - in_block);
                    pieces.push(Piece {
                        dst,
                        slice_id: seg.slice.slice_id,
                        index: (obj / bs) as u32,
                        offset: in_block as u32,
                        len: n as u32,
                    });
                    obj += n;
                    dst += n as usize;
                    left -= n;
                }
            }
            pos = chunk_end;
        }
        Ok(pieces)
    }

    /// Starts fetching, in the background, the whole blocks `pieces` touch
    /// that are neither held nor already on their way.
    fn read_ahead(&mut self, pieces: &[Piece]) {
        for p in pieces {
            let k = (p.slice_id, p.index);
            if self.cache.contains_key(&k) || self.ahead.contains_key(&k) {
                continue;
            }
            let client = self.client.clone();
            let fetch = tokio::spawn(async move { client.data.get_block(k.0, k.1, 0, 0).await });
            self.ahead.insert(k, fetch);
        }
    }

    /// Fetches the whole blocks `pieces` touch that are not held (taking those
    /// read ahead), in parallel, and drops held blocks beyond the reader's
    /// bound.
    async fn fetch_whole_blocks(&mut self, pieces: &[Piece]) -> Result<()> {
        let mut want: Vec<(u64, u32)> = pieces
            .iter()
            .map(|p| (p.slice_id, p.index))
            .filter(|k| !self.cache.contains_key(k))
            .collect();
        want.sort_unstable();
        want.dedup();
        let ahead = &mut self.ahead;
        let fetches: Vec<_> = want.into_iter().map(|k| (k, ahead.remove(&k))).collect();
        let data = &self.client.data;
        let fetched: Vec<((u64, u32), Bytes)> = futures::stream::iter(fetches)
            .map(|(k, started)| async move {
                let block = match started {
                    Some(task) => task
                        .await
                        .map_err(|e| ClientError::Data(format!("read-ahead task: {e}")))?,
                    None => data.get_block(k.0, k.1, 0, 0).await,
                };
                Ok::<_, ClientError>((k, block?))
            })
            .buffer_unordered(PARALLEL_BLOCKS)
            .try_collect()
            .await?;
        for (k, v) in fetched {
            self.cache.insert(k, v);
        }
        let needed: std::collections::HashSet<(u64, u32)> =
            pieces.iter().map(|p| (p.slice_id, p.index)).collect();
        let stale: Vec<(u64, u32)> = self
            .cache
            .keys()
            .filter(|k| !needed.contains(k))
            .copied()
            .collect();
        let excess = self
            .cache
            .len()
            .saturating_sub(READ_CACHE_BLOCKS.max(needed.len()));
        for k in stale.into_iter().take(excess) {
            self.cache.remove(&k);
        }
        Ok(())
    }
}

impl Drop for FileReader {
    fn drop(&mut self) {
        for (_, fetch) in self.ahead.drain() {
            fetch.abort();
        }
        if let (Some(token), Ok(rt)) = (self.held.take(), tokio::runtime::Handle::try_current()) {
            let meta = self.client.meta.clone();
            rt.spawn(async move {
                if let Err(e) = meta.untrack_open(token).await {
                    tracing::warn!("closing a dropped reader's file: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(id: u64, pos: u32, len: u32) -> pb::Slice {
        pb::Slice {
            slice_id: id,
            pos,
            len,
            off: 0,
            size: len,
        }
    }

    /// Reads must be usable from spawned tasks (FUSE and S3 front ends spawn
    /// them); this only has to compile.
    #[allow(dead_code)]
    fn read_at_is_spawnable(mut reader: FileReader) {
        tokio::spawn(async move { reader.read_at(0, 1).await });
    }

    #[test]
    fn later_slices_overlay_earlier() {
        let segs = visible_segments(&[slice(1, 0, 100), slice(2, 10, 20), slice(0, 90, 30)]);
        let runs: Vec<(u32, u32, u64)> = segs
            .iter()
            .map(|s| (s.start, s.end, s.slice.slice_id))
            .collect();
        assert_eq!(
            runs,
            vec![(0, 10, 1), (10, 30, 2), (30, 90, 1), (90, 120, 0)]
        );
    }
}
