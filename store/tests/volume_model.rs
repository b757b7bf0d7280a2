//! The volume engine against an in-memory byte-array model: random reads,
//! writes (aligned and not), zeroes, snapshots, forks, clones, rollbacks,
//! seals and restarts; after every step every volume and snapshot must read
//! back exactly as the model says.

mod common;

use std::collections::BTreeMap;

use cairn_store::{Labels, Readable};
use common::*;
use proptest::prelude::*;

const SIZE: u64 = 192 * 1024;

#[derive(Clone, Debug)]
enum Op {
    Write {
        vol: usize,
        offset: u64,
        len: usize,
        seed: u64,
    },
    Zero {
        vol: usize,
        offset: u64,
        len: u64,
    },
    Snapshot {
        vol: usize,
    },
    Fork {
        snap: usize,
    },
    Clone {
        vol: usize,
    },
    Rollback {
        snap: usize,
    },
    Seal {
        vol: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<usize>(), 0..SIZE, 1usize..40_000, any::<u64>()).prop_map(|(vol, offset, len, seed)| Op::Write { vol, offset, len, seed }),
        3 => (any::<usize>(), 0..SIZE / 4096, 1u64..24).prop_map(|(vol, b, n)| Op::Write { vol, offset: b * 4096, len: (n * 4096) as usize, seed: b ^ n }),
        2 => (any::<usize>(), 0..SIZE, 1u64..70_000).prop_map(|(vol, offset, len)| Op::Zero { vol, offset, len }),
        2 => any::<usize>().prop_map(|vol| Op::Snapshot { vol }),
        1 => any::<usize>().prop_map(|snap| Op::Fork { snap }),
        1 => any::<usize>().prop_map(|vol| Op::Clone { vol }),
        1 => any::<usize>().prop_map(|snap| Op::Rollback { snap }),
        2 => any::<usize>().prop_map(|vol| Op::Seal { vol }),
        1 => Just(Op::Restart),
    ]
}

async fn read_all(engine: &cairn_store::Engine, src: &Readable, size: u64) -> Vec<u8> {
    // Poisoned buffer: every byte must be written by the read.
    let mut buf = vec![0xa5u8; size as usize];
    engine.read(src, 0, &mut buf).await.unwrap();
    buf
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(chunk_shift in 12u32..=15, ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut engine = engine(dir.path()).await;
            let chunk = 1u64 << chunk_shift;
            // Model: volumes and snapshots by name.
            let mut vols: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            let mut snaps: BTreeMap<(String, String), Vec<u8>> = BTreeMap::new();
            engine.create_volume(&ns(), &actor(), &vol("v0"), SIZE, Some(chunk), Labels::new()).await.unwrap();
            vols.insert("v0".into(), vec![0u8; SIZE as usize]);
            let mut counter = 0;
            for op in ops {
                counter += 1;
                let names: Vec<String> = vols.keys().cloned().collect();
                let snap_keys: Vec<(String, String)> = snaps.keys().cloned().collect();
                match op {
                    Op::Write { vol: v, offset, len, seed } => {
                        let name = &names[v % names.len()];
                        let len = len.min((SIZE - offset) as usize);
                        let data = noise(seed, len);
                        let v = engine.volume(&ns(), &vol(name)).unwrap();
                        // Half the writes try the no-wait path first (the NBD
                        // I/O thread's), which takes small aligned ones.
                        let taken = seed % 2 == 1 && v.try_write(offset, &data).map(|r| r.unwrap()).is_some();
                        if !taken {
                            v.write(offset, &data).await.unwrap();
                        }
                        vols.get_mut(name).unwrap()[offset as usize..offset as usize + len].copy_from_slice(&data);
                    }
                    Op::Zero { vol: v, offset, len } => {
                        let name = &names[v % names.len()];
                        let len = len.min(SIZE - offset);
                        engine.volume(&ns(), &vol(name)).unwrap().write_zeroes(offset, len).await.unwrap();
                        vols.get_mut(name).unwrap()[offset as usize..(offset + len) as usize].fill(0);
                    }
                    Op::Snapshot { vol: v } => {
                        let name = &names[v % names.len()];
                        let t = format!("s{counter}");
                        engine.snapshot(&ns(), &actor(), &vol(name), Some(tag(&t)), Labels::new()).await.unwrap();
                        snaps.insert((name.clone(), t), vols[name].clone());
                    }
                    Op::Fork { snap } if !snap_keys.is_empty() => {
                        let (v, t) = &snap_keys[snap % snap_keys.len()];
                        let new = format!("f{counter}");
                        engine.fork(&ns(), &actor(), &vol(v), &tag(t), &vol(&new), None, &Labels::new()).await.unwrap();
                        vols.insert(new, snaps[&(v.clone(), t.clone())].clone());
                    }
                    Op::Clone { vol: v } => {
                        let name = &names[v % names.len()];
                        let rec = engine.clone_volume(&ns(), &actor(), &vol(name), None, None).await.unwrap();
                        let origin = rec.from_snapshot.clone().unwrap();
                        assert_eq!(rec.cloned_from.as_ref().map(|n| n.as_str()), Some(name.as_str()));
                        snaps.insert((name.clone(), origin.tag.to_string()), vols[name].clone());
                        vols.insert(rec.name.to_string(), vols[name].clone());
                    }
                    Op::Rollback { snap } if !snap_keys.is_empty() => {
                        let (v, t) = &snap_keys[snap % snap_keys.len()];
                        if vols.contains_key(v) {
                            engine.rollback(&ns(), &actor(), &vol(v), &tag(t)).await.unwrap();
                            vols.insert(v.clone(), snaps[&(v.clone(), t.clone())].clone());
                        }
                    }
                    Op::Seal { vol: v } => {
                        let name = &names[v % names.len()];
                        engine.volume(&ns(), &vol(name)).unwrap().seal().await.unwrap();
                    }
                    Op::Restart => {
                        // Unflushed-but-acknowledged writes survive a clean close
                        // through the journal; reopen replays it.
                        engine.catalog().sync().unwrap();
                        drop(engine);
                        engine = common::engine(dir.path()).await;
                    }
                    _ => {}
                }
                for (name, want) in &vols {
                    let src = engine.readable(&ns(), &vol(name), None).unwrap();
                    assert!(read_all(&engine, &src, SIZE).await == *want, "volume {name} differs after step {counter}");
                }
                for ((v, t), want) in &snaps {
                    let src = engine.readable(&ns(), &vol(v), Some(&tag(t))).unwrap();
                    assert!(read_all(&engine, &src, SIZE).await == *want, "snapshot {v}@{t} differs after step {counter}");
                }
            }
        });
    }
}

#[test]
fn unaligned_reads_cross_dirty_frozen_and_sealed_layers() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = engine(dir.path()).await;
        engine
            .create_volume(&ns(), &actor(), &vol("a"), 1 << 20, Some(16384), Labels::new())
            .await
            .unwrap();
        let v = engine.volume(&ns(), &vol("a")).unwrap();
        let mut model = vec![0u8; 1 << 20];
        for (i, (off, len)) in [(100u64, 5000usize), (16000, 1000), (20000, 70000), (4095, 2)]
            .into_iter()
            .enumerate()
        {
            let data = noise(i as u64, len);
            v.write(off, &data).await.unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&data);
            if i % 2 == 0 {
                v.seal().await.unwrap();
            }
        }
        for (off, len) in [(0u64, 1usize << 20), (99, 3), (16383, 2), (4094, 5000)] {
            let mut buf = vec![0xa5u8; len];
            v.read(off, &mut buf).await.unwrap();
            assert_eq!(buf, model[off as usize..off as usize + len]);
        }
        let err = v.read((1 << 20) - 10, &mut [0u8; 11]).await.unwrap_err();
        assert!(matches!(err, cairn_store::StoreError::OutOfRange { .. }), "{err}");
        assert!(v.write(1 << 20, &[1]).await.is_err());
    });
}

#[test]
fn the_no_wait_path_takes_small_aligned_writes_only_while_the_backlog_has_room() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut config = cairn_store::EngineConfig::new(dir.path());
        config.dirty_hard_limit = 64 << 10;
        let engine = cairn_store::Engine::open(config).await.unwrap();
        engine
            .create_volume(&ns(), &actor(), &vol("a"), 1 << 20, Some(65536), Labels::new())
            .await
            .unwrap();
        let v = engine.volume(&ns(), &vol("a")).unwrap();
        let block = noise(1, 4096);
        assert!(v.try_write(1, &block).is_none(), "unaligned");
        assert!(v.try_write(0, &noise(2, 65536)).is_none(), "a whole chunk");
        assert!(v.try_write(0, &[]).is_none(), "empty");
        let err = v.try_write(1 << 20, &block).expect("answered").unwrap_err();
        assert!(matches!(err, cairn_store::StoreError::OutOfRange { .. }), "{err}");
        // Blocks go in until the next one would pass the backlog limit.
        let mut taken = 0u64;
        while let Some(result) = v.try_write(taken * 4096, &block) {
            result.unwrap();
            taken += 1;
            assert!(taken < 64, "the backlog limit was never reached");
        }
        assert!(
            v.log_bytes() + 4096 > 64 << 10,
            "refused with room left: {}",
            v.log_bytes()
        );
        // The waiting path takes it (it seals to make room).
        v.write(taken * 4096, &block).await.unwrap();
        for i in 0..=taken {
            let mut buf = vec![0u8; 4096];
            v.read(i * 4096, &mut buf).await.unwrap();
            assert_eq!(buf, block, "block {i}");
        }
    });
}
