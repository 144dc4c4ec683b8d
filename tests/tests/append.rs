//! O_APPEND from several mounts converges: writers on two real FUSE mounts
//! (and on a write-back mount, whose staged logs replay as appends) append
//! fixed-size records to one file at once; afterwards every mount reads a
//! file whose size is the sum of the records and in which every record
//! appears exactly once, whole, and in its writer's order.

use std::collections::BTreeMap;
use std::fs;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use anyhow::Context;

use cairn_tests::wait_for;
use cairn_tests::Cluster;
use cairn_tests::Mount;
use cairn_tests::Spec;

/// Bytes in one record: its id (mount, writer, sequence) then bytes derived
/// from the id, so a torn or overwritten record is seen.
const RECORD: usize = 1000;
const WRITERS: usize = 3;
const RECORDS: usize = 40;

fn record(mount: usize, writer: usize, seq: usize) -> Vec<u8> {
    let id = format!("m{mount}w{writer}r{seq:05}|");
    let mut r = id.into_bytes();
    let seed = (mount * 1_000 + writer) * 100_000 + seq;
    while r.len() < RECORD {
        let i = r.len();
        r.push(b'a' + ((seed * 31 + i * 7) % 26) as u8);
    }
    r
}

/// The id of a record if it is whole (parses and carries its own bytes).
fn parse(r: &[u8]) -> Option<(usize, usize, usize)> {
    let end = r.iter().take(32).position(|&b| b == b'|')?;
    let text = std::str::from_utf8(&r[..end]).ok()?;
    let rest = text.strip_prefix('m')?;
    let (m, rest) = rest.split_once('w')?;
    let (seq_part, w) = (rest.split_once('r')?.1, rest.split_once('r')?.0);
    let seq = seq_part;
    let id = (m.parse().ok()?, w.parse().ok()?, seq.parse().ok()?);
    (record(id.0, id.1, id.2) == r).then_some(id)
}

/// One writer: opens the file with O_APPEND and writes its records, each
/// with one write(2); writer 0 fsyncs after every record, writer 1 closes
/// and reopens every 7 records, the others close only at the end, so
/// commits of different sizes interleave across mounts.
fn append_records(path: &Path, mount: usize, writer: usize) -> anyhow::Result<()> {
    let open = || OpenOptions::new().append(true).open(path);
    let mut f = open()?;
    for seq in 0..RECORDS {
        let r = record(mount, writer, seq);
        let n = f.write(&r)?;
        if n != RECORD {
            bail!("short append: {n} of {RECORD} bytes");
        }
        match writer {
            0 => f.sync_all()?,
            1 if seq % 7 == 6 => f = open()?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks the file as `path` reads it: size, every record once, whole, and
/// each writer's records in order.
fn check(path: &Path, mounts: &[usize]) -> anyhow::Result<()> {
    check_data(path, &fs::read(path)?, mounts)
}

fn check_data(path: &Path, data: &[u8], mounts: &[usize]) -> anyhow::Result<()> {
    let want = mounts.len() * WRITERS * RECORDS * RECORD;
    if data.len() != want {
        bail!(
            "{}: {} bytes, the appends sum to {want}",
            path.display(),
            data.len()
        );
    }
    let mut last: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut seen = 0;
    for (i, r) in data.chunks(RECORD).enumerate() {
        let Some((m, w, seq)) = parse(r) else {
            bail!(
                "{}: record {i} is torn or overwritten: {:?}",
                path.display(),
                String::from_utf8_lossy(&r[..20.min(r.len())])
            );
        };
        let next = last.entry((m, w)).or_insert(0);
        if seq != *next || !mounts.contains(&m) || w >= WRITERS {
            bail!(
                "{}: record {i} is m{m}w{w}r{seq}, expected r{next} of that writer",
                path.display()
            );
        }
        *next += 1;
        seen += 1;
    }
    assert_eq!(seen, mounts.len() * WRITERS * RECORDS);
    assert!(last.values().all(|&n| n == RECORDS), "{last:?}");
    Ok(())
}

/// Every writer of every mount in `roots` appends to `name` at once.
async fn append_from(roots: &[(usize, PathBuf)], name: &str) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for (mount, root) in roots {
        for writer in 0..WRITERS {
            let (path, mount) = (root.join(name), *mount);
            tasks.push(tokio::task::spawn_blocking(move || {
                append_records(&path, mount, writer)
                    .with_context(|| format!("mount {mount} writer {writer}"))
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_from_two_mounts_converge() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    let a = Mount::start(&cluster, "a").await?;
    let b = Mount::start(&cluster, "b").await?;
    let (pa, pb) = (a.path.clone(), b.path.clone());
    fs::write(pa.join("log"), b"")?;
    append_from(&[(0, pa.clone()), (1, pb.clone())], "log").await?;
    let client = cluster.client();
    let direct = cairn_tests::read_file(&client, "/log").await?;
    check_data(Path::new("client:/log"), &direct, &[0, 1])?;
    for root in [&pa, &pb] {
        let path = root.join("log");
        tokio::task::spawn_blocking(move || check(&path, &[0, 1])).await??;
    }

    // A write-back mount stages its appends and uploads them later, still
    // as appends: they land after what the other mount appended meanwhile.
    let cache = cluster.dir.path().join("cache");
    let cache_arg = cache.to_string_lossy().into_owned();
    let c = Mount::start_with(&cluster, "c", &["--writeback", "--cache-dir", &cache_arg]).await?;
    let pc = c.path.clone();
    fs::write(pa.join("wb"), b"")?;
    append_from(&[(0, pa.clone()), (2, pc.clone())], "wb").await?;
    // The write-back mount reads its own uploads; the others see them once
    // uploaded.
    let want = (2 * WRITERS * RECORDS * RECORD) as u64;
    let pa_wb = pa.join("wb");
    wait_for("the write-back uploads", Duration::from_secs(30), || {
        let p = pa_wb.clone();
        async move { fs::metadata(&p).is_ok_and(|m| m.len() == want) }
    })
    .await?;
    for root in [&pa, &pb, &pc] {
        let path = root.join("wb");
        tokio::task::spawn_blocking(move || check(&path, &[0, 2])).await??;
    }
    Ok(())
}

#[test]
fn records_parse_only_whole() {
    let r = record(1, 2, 345);
    assert_eq!(parse(&r), Some((1, 2, 345)));
    let mut torn = r.clone();
    torn[500] ^= 1;
    assert_eq!(parse(&torn), None);
    assert_eq!(parse(&r[..RECORD - 1]), None);
}
