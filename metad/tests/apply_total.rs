//! Apply is total: random namespace commands (hostile sizes, offsets, names and
//! inode ids included) applied on a real RocksDB state machine never panic, and
//! after every command the shard's invariants hold: every entry points at a
//! live inode of its kind, a file's nlink counts its entries, a directory's
//! nlink is 2 + its subdirectories (0, unlinked and empty, once removed), a
//! directory's parent holds its entry, and
//! no size exceeds the largest file. Commands also go through a random byte
//! mutation of their encoding first, as a hostile peer would send them.
//! Seeded and bounded; the seed is printed on failure (`APPLY_SEED=n` reruns
//! one seed, `APPLY_ROUNDS=n` runs longer).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;

use cairn_metad::fs;
use cairn_metad::fs::FsCommand;
use cairn_metad::fs::Kind;
use cairn_metad::fs::RenameMode;
use cairn_metad::fs::SetAttrs;
use cairn_metad::fs::SliceRec;
use cairn_metad::holes::Fallocate;
use cairn_metad::kv::open_db;
use cairn_metad::kv::Txn;
use cairn_metad::MetaError;
use cairn_proto::ids::make_ino;
use cairn_proto::ids::ROOT_INO;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;

const SHARD: u32 = 1;
const NAMES: [&str; 5] = ["a", "b", "c", "d", ""];

/// The shard's inodes and entries as they are now.
struct State {
    inodes: BTreeMap<u64, fs::Inode>,
    /// (parent, name) → (ino, kind)
    entries: BTreeMap<(u64, Vec<u8>), fs::Entry>,
}

fn read_state(txn: &Txn) -> State {
    let mut inodes = BTreeMap::new();
    for (k, v) in txn.scan(b"i", b"", usize::MAX).unwrap() {
        let ino = u64::from_be_bytes(k[1..9].try_into().unwrap());
        inodes.insert(ino, cairn_metad::kv::decode(&v).unwrap());
    }
    let mut entries = BTreeMap::new();
    for (k, v) in txn.scan(b"d", b"", usize::MAX).unwrap() {
        let parent = u64::from_be_bytes(k[1..9].try_into().unwrap());
        entries.insert(
            (parent, k[9..].to_vec()),
            cairn_metad::kv::decode(&v).unwrap(),
        );
    }
    State { inodes, entries }
}

fn check_invariants(state: &State) -> Result<(), String> {
    let mut links: BTreeMap<u64, u32> = BTreeMap::new();
    let mut subdirs: BTreeMap<u64, u32> = BTreeMap::new();
    for ((parent, name), entry) in &state.entries {
        let inode = state
            .inodes
            .get(&entry.ino)
            .ok_or(format!("entry {parent:#x}/{name:?} points at no inode"))?;
        if inode.kind != entry.kind {
            return Err(format!("entry {parent:#x}/{name:?} has the wrong kind"));
        }
        *links.entry(entry.ino).or_default() += 1;
        if entry.kind == Kind::Dir {
            *subdirs.entry(*parent).or_default() += 1;
            if inode.parent != *parent {
                return Err(format!(
                    "directory {:#x}: parent is not {parent:#x}",
                    entry.ino
                ));
            }
        }
    }
    for (ino, inode) in &state.inodes {
        if inode.size > fs::MAX_FILE_SIZE {
            return Err(format!("inode {ino:#x} has size {}", inode.size));
        }
        match inode.kind {
            // A removed directory stays as an orphan with no links: it has no
            // entry and holds none until the expiry pass deletes it.
            Kind::Dir if inode.nlink == 0 => {
                if links.contains_key(ino) || subdirs.contains_key(ino) {
                    return Err(format!("removed directory {ino:#x} is still linked"));
                }
                if state.entries.keys().any(|(parent, _)| parent == ino) {
                    return Err(format!("removed directory {ino:#x} has entries"));
                }
            }
            Kind::Dir => {
                let want = 2 + subdirs.get(ino).copied().unwrap_or(0);
                if inode.nlink != want {
                    return Err(format!(
                        "directory {ino:#x}: nlink {} != {want}",
                        inode.nlink
                    ));
                }
                if *ino != ROOT_INO && links.get(ino).copied().unwrap_or(0) != 1 {
                    return Err(format!("directory {ino:#x} is not linked exactly once"));
                }
            }
            _ => {
                let have = links.get(ino).copied().unwrap_or(0);
                if inode.nlink != have {
                    return Err(format!(
                        "inode {ino:#x}: nlink {} != {have} entries",
                        inode.nlink
                    ));
                }
            }
        }
    }
    Ok(())
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.gen_range(0..items.len())]
}

/// A hostile-ish number: small, at a boundary, or anything.
fn size(rng: &mut StdRng) -> u64 {
    let (any, small) = (rng.gen(), rng.gen_range(0..1 << 30));
    pick(
        rng,
        &[
            0,
            1,
            4096,
            64 << 20,
            (64 << 20) + 1,
            fs::MAX_FILE_SIZE,
            fs::MAX_FILE_SIZE + 1,
            u64::MAX,
            u64::MAX - 1,
            any,
            small,
        ],
    )
}

fn u32_any(rng: &mut StdRng) -> u32 {
    let any = rng.gen();
    pick(rng, &[0, 1, 4096, 64 << 20, u32::MAX, u32::MAX - 1, any])
}

/// A user-level command over the inodes that exist (mostly) or any id.
fn command(rng: &mut StdRng, state: &State, depth: u32) -> FsCommand {
    let inos: Vec<u64> = state.inodes.keys().copied().collect();
    let dirs: Vec<u64> = state
        .inodes
        .iter()
        .filter(|(_, i)| i.kind == Kind::Dir)
        .map(|(k, _)| *k)
        .collect();
    let ino = if rng.gen_bool(0.9) {
        pick(rng, &inos)
    } else {
        let (any, seq) = (rng.gen(), rng.gen_range(0..64));
        pick(rng, &[any, make_ino(SHARD, seq), make_ino(7, 3)])
    };
    let dir = if rng.gen_bool(0.9) {
        pick(rng, &dirs)
    } else {
        ino
    };
    let name = pick(rng, &NAMES).as_bytes().to_vec();
    let now = rng.gen_range(0..1_000_000);
    match rng.gen_range(0..20) {
        0 | 1 => FsCommand::Create {
            parent: dir,
            name,
            kind: pick(rng, &[Kind::File, Kind::Dir, Kind::Symlink, Kind::Fifo]),
            perm: 0o644,
            rdev: 0,
            uid: 0,
            gid: 0,
            exclusive: rng.gen(),
            target: rng.gen_bool(0.3).then(|| b"t".to_vec()),
            now,
        },
        2 => FsCommand::Unlink {
            parent: dir,
            name,
            now,
        },
        3 => FsCommand::Rmdir {
            parent: dir,
            name,
            now,
        },
        4 | 5 => FsCommand::Rename {
            parent: dir,
            name,
            new_parent: pick(rng, &dirs),
            new_name: pick(rng, &NAMES).as_bytes().to_vec(),
            mode: pick(
                rng,
                &[
                    RenameMode::Replace,
                    RenameMode::NoReplace,
                    RenameMode::Exchange,
                ],
            ),
            now,
        },
        6 => FsCommand::SetAttr {
            ino,
            set: SetAttrs {
                size: rng.gen_bool(0.7).then(|| size(rng)),
                perm: rng.gen_bool(0.2).then(|| rng.gen()),
                mtime: rng.gen_bool(0.2).then(|| rng.gen()),
                ..SetAttrs::default()
            },
            now,
        },
        7 | 8 => {
            let chunks = (0..rng.gen_range(0..3))
                .map(|_| {
                    let slices = (0..rng.gen_range(0..3))
                        .map(|_| SliceRec {
                            slice_id: rng.gen_range(0..4),
                            pos: u32_any(rng),
                            len: u32_any(rng),
                            off: u32_any(rng),
                            size: u32_any(rng),
                        })
                        .collect();
                    (u32_any(rng), slices)
                })
                .collect();
            FsCommand::Commit {
                ino,
                chunks,
                length: size(rng),
                mtime: now,
            }
        }
        9 => FsCommand::WriteInline {
            ino,
            pos: pick(rng, &[0, 10, 1 << 20, u32::MAX]),
            data: vec![7; rng.gen_range(0..64)],
            length: size(rng),
            mtime: now,
        },
        10 => FsCommand::Concat {
            target: ino,
            sources: (0..rng.gen_range(0..4)).map(|_| pick(rng, &inos)).collect(),
            mtime: now,
        },
        11 => FsCommand::Open {
            ino,
            client: rng.gen_range(1..3),
            now_ms: now,
            lease_ms: 10,
        },
        12 => FsCommand::Close {
            ino,
            client: rng.gen_range(1..3),
            now_ms: now,
        },
        13 => FsCommand::ExpireSessions {
            now_ms: now,
            orphans_before_ms: now,
        },
        14 => FsCommand::SetXattr {
            ino,
            name: b"user.x".to_vec(),
            value: vec![1; rng.gen_range(0..16)],
            flags: rng.gen_range(0..4),
            now,
        },
        15 => FsCommand::Append {
            ino,
            slices: (0..rng.gen_range(0..4))
                .map(|_| (rng.gen_range(0..4), u32_any(rng)))
                .collect(),
            mtime: now,
        },
        16 => FsCommand::Fallocate {
            ino,
            f: Fallocate {
                offset: size(rng),
                len: pick(rng, &[0, 1, 4096, 1 << 26, u64::MAX]),
                keep_size: rng.gen(),
                zero: rng.gen(),
            },
            mtime: now,
        },
        17 => FsCommand::Access { ino, now },
        18 => FsCommand::AccessTimes {
            files: (0..rng.gen_range(0..4))
                .map(|_| (pick(rng, &inos), rng.gen(), rng.gen()))
                .collect(),
        },
        _ if depth < 2 => FsCommand::Batch(
            (0..rng.gen_range(0..4))
                .map(|_| command(rng, state, depth + 1))
                .collect(),
        ),
        _ => FsCommand::AssertParent {
            ino: dir,
            parent: pick(rng, &dirs),
        },
    }
}

/// Flips a few bytes of the command's encoding; answers the command that
/// decodes from it, if any.
fn mutate(rng: &mut StdRng, cmd: &FsCommand) -> Option<FsCommand> {
    let mut bytes = cairn_metad::kv::encode(cmd).unwrap();
    for _ in 0..rng.gen_range(1..4) {
        let at = rng.gen_range(0..bytes.len());
        bytes[at] = rng.gen();
    }
    cairn_metad::kv::decode(&bytes).ok()
}

/// Whether `cmd` is a whole operation. The others (MakeDir, PutEntry,
/// SetParent, ...) are one shard's half of a cross-shard transaction: alone
/// they break the shard's invariants by design, so a mutated command that
/// decodes to one is applied only to check that it does not panic.
fn is_whole(cmd: &FsCommand) -> bool {
    match cmd {
        FsCommand::Batch(cmds) => cmds.iter().all(is_whole),
        FsCommand::Create { .. }
        | FsCommand::Unlink { .. }
        | FsCommand::Rmdir { .. }
        | FsCommand::Rename { .. }
        | FsCommand::SetAttr { .. }
        | FsCommand::SetXattr { .. }
        | FsCommand::RemoveXattr { .. }
        | FsCommand::Open { .. }
        | FsCommand::Close { .. }
        | FsCommand::ExpireSessions { .. }
        | FsCommand::WriteInline { .. }
        | FsCommand::Commit { .. }
        | FsCommand::Concat { .. }
        | FsCommand::Append { .. }
        | FsCommand::Fallocate { .. }
        | FsCommand::AssertParent { .. } => true,
        _ => false,
    }
}

/// Applies `cmd` as the state machine does: one batch if it succeeded.
fn apply(db: &rocksdb::DB, cmd: &FsCommand) -> Result<(), MetaError> {
    let mut txn = Txn::new(db, SHARD);
    fs::apply(&mut txn, cmd)?;
    db.write(txn.into_batch()?)?;
    Ok(())
}

fn run_seed(seed: u64, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path()).unwrap();
    apply(&db, &FsCommand::InitRoot { now: 0 }).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..rounds {
        let state = read_state(&Txn::new(&db, SHARD));
        let mut cmd = command(&mut rng, &state, 0);
        if rng.gen_bool(0.2) {
            match mutate(&mut rng, &cmd) {
                Some(m) => cmd = m,
                None => continue,
            }
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if is_whole(&cmd) {
                let _ = apply(&db, &cmd);
            } else {
                let _ = fs::apply(&mut Txn::new(&db, SHARD), &cmd);
            }
        }));
        assert!(
            outcome.is_ok(),
            "seed {seed} round {round}: applying {cmd:?} panicked"
        );
        let state = read_state(&Txn::new(&db, SHARD));
        if let Err(e) = check_invariants(&state) {
            panic!("seed {seed} round {round}: after {cmd:?}: {e}");
        }
    }
}

#[test]
fn random_commands_never_panic_and_keep_invariants() {
    let rounds = std::env::var("APPLY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let seeds: Vec<u64> = match std::env::var("APPLY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(seed) => vec![seed],
        None => (0..8).chain([rand::random()]).collect(),
    };
    for seed in seeds {
        run_seed(seed, rounds);
    }
}

/// A batch nested deeper than the limit is refused by the decoder (a hostile
/// peer cannot recurse the decoder or apply off the stack).
#[test]
fn deeply_nested_batches_are_refused_when_decoded() {
    let mut cmd = FsCommand::InitRoot { now: 0 };
    for _ in 0..=fs::MAX_BATCH_DEPTH {
        cmd = FsCommand::Batch(vec![cmd]);
    }
    let bytes = cairn_metad::kv::encode(&cmd).unwrap();
    assert!(cairn_metad::kv::decode::<FsCommand>(&bytes).is_err());
    // A hand-made encoding of 100,000 nested batches: refused, no overflow.
    let batch_tag = {
        let b = cairn_metad::kv::encode(&FsCommand::Batch(vec![])).unwrap();
        b[..4].to_vec()
    };
    let mut deep = Vec::new();
    for _ in 0..100_000 {
        deep.extend_from_slice(&batch_tag);
        deep.extend_from_slice(&1u64.to_le_bytes());
    }
    assert!(cairn_metad::kv::decode::<FsCommand>(&deep).is_err());
    // Within the limit it decodes.
    let ok = FsCommand::Batch(vec![FsCommand::Batch(vec![])]);
    let bytes = cairn_metad::kv::encode(&ok).unwrap();
    assert!(cairn_metad::kv::decode::<FsCommand>(&bytes).is_ok());
}

/// An Append that would pass the largest file (one slice, or the sum of
/// several) is EFBIG and writes nothing; one that ends exactly there applies.
#[test]
fn append_past_the_largest_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path()).unwrap();
    apply(&db, &FsCommand::InitRoot { now: 0 }).unwrap();
    apply(
        &db,
        &FsCommand::Create {
            parent: ROOT_INO,
            name: b"a".to_vec(),
            kind: Kind::File,
            perm: 0o644,
            rdev: 0,
            uid: 0,
            gid: 0,
            exclusive: true,
            target: None,
            now: 1,
        },
    )
    .unwrap();
    let ino = fs::get_entry(&Txn::new(&db, SHARD), ROOT_INO, b"a")
        .unwrap()
        .unwrap()
        .ino;
    let near = fs::MAX_FILE_SIZE - 10;
    apply(
        &db,
        &FsCommand::SetAttr {
            ino,
            set: SetAttrs {
                size: Some(near),
                ..SetAttrs::default()
            },
            now: 2,
        },
    )
    .unwrap();
    let append = |slices: Vec<(u64, u32)>| FsCommand::Append {
        ino,
        slices,
        mtime: 3,
    };
    for slices in [vec![(5, 11)], vec![(5, 6), (6, 5)], vec![(5, u32::MAX)]] {
        let r = apply(&db, &append(slices));
        assert!(
            matches!(&r, Err(MetaError::Fs(e)) if e.errno == cairn_proto::status::EFBIG),
            "{r:?}"
        );
        assert_eq!(
            fs::get_inode(&Txn::new(&db, SHARD), ino).unwrap().size,
            near
        );
    }
    apply(&db, &append(vec![(5, 4), (6, 6)])).unwrap();
    let inode = fs::get_inode(&Txn::new(&db, SHARD), ino).unwrap();
    assert_eq!(inode.size, fs::MAX_FILE_SIZE);
}

/// The Concat of a file sized to the limit with another grows past it: EFBIG,
/// not an overflow that stops the shard.
#[test]
fn concat_past_the_largest_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path()).unwrap();
    apply(&db, &FsCommand::InitRoot { now: 0 }).unwrap();
    let mut inos = Vec::new();
    for name in ["a", "b"] {
        apply(
            &db,
            &FsCommand::Create {
                parent: ROOT_INO,
                name: name.as_bytes().to_vec(),
                kind: Kind::File,
                perm: 0o644,
                rdev: 0,
                uid: 0,
                gid: 0,
                exclusive: true,
                target: None,
                now: 1,
            },
        )
        .unwrap();
        let entry = fs::get_entry(&Txn::new(&db, SHARD), ROOT_INO, name.as_bytes())
            .unwrap()
            .unwrap();
        inos.push(entry.ino);
    }
    let huge = |size| FsCommand::SetAttr {
        ino: inos[0],
        set: SetAttrs {
            size: Some(size),
            ..SetAttrs::default()
        },
        now: 2,
    };
    assert!(apply(&db, &huge(u64::MAX)).is_err());
    apply(&db, &huge(fs::MAX_FILE_SIZE)).unwrap();
    for (target, source) in [(inos[0], inos[1]), (inos[1], inos[0])] {
        apply(&db, &huge(fs::MAX_FILE_SIZE)).unwrap();
        apply(
            &db,
            &FsCommand::SetAttr {
                ino: inos[1],
                set: SetAttrs {
                    size: Some(10),
                    ..SetAttrs::default()
                },
                now: 2,
            },
        )
        .unwrap();
        let r = apply(
            &db,
            &FsCommand::Concat {
                target,
                sources: vec![source],
                mtime: 3,
            },
        );
        assert!(
            matches!(&r, Err(MetaError::Fs(e)) if e.errno == cairn_proto::status::EFBIG),
            "{r:?}"
        );
    }
}
