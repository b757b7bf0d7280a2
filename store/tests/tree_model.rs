//! The manifest tree against a plain `BTreeMap` model over random update
//! sequences: lookups, structural sharing and diffs must all agree.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cairn_chunker::ChunkId;
use cairn_store::catalog::Catalog;
use cairn_store::objects::ObjectLayer;
use cairn_store::tree::{levels_for, NodeId, TreeStore};
use object_store::memory::InMemory;
use proptest::prelude::*;

/// A node cache of a few full nodes: reads past it go to the store.
const CACHE: usize = 64 << 10;

fn trees(dir: &std::path::Path) -> TreeStore {
    let catalog = Arc::new(Catalog::open(dir).unwrap());
    let objects = Arc::new(ObjectLayer::new(
        Arc::new(InMemory::new()),
        Default::default(),
        catalog,
        1 << 20,
    ));
    TreeStore::new(objects, CACHE)
}

fn id(v: u8) -> ChunkId {
    if v == 0 {
        ChunkId::ZERO
    } else {
        ChunkId::of(&[v])
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tree_matches_btreemap(
        chunks in prop_oneof![Just(1u64), Just(511), Just(512), Just(513), Just(300_000)],
        rounds in proptest::collection::vec(proptest::collection::vec((any::<u64>(), 0u8..6), 1..40), 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = trees(dir.path());
            let level = levels_for(chunks);
            let mut model: BTreeMap<u64, ChunkId> = BTreeMap::new();
            let mut root = NodeId::ZERO;
            let mut history: Vec<(NodeId, BTreeMap<u64, ChunkId>)> = vec![(root, model.clone())];
            for round in rounds {
                let updates: BTreeMap<u64, ChunkId> = round.into_iter().map(|(i, v)| (i % chunks, id(v))).collect();
                for (i, c) in &updates {
                    if c.is_zero() { model.remove(i); } else { model.insert(*i, *c); }
                }
                let updates: Vec<_> = updates.into_iter().collect();
                root = store.update(root, level, &updates).await.unwrap();
                // Every touched index and a sample of others read back as the model says.
                for (i, _) in &updates {
                    assert_eq!(store.lookup(root, level, *i).await.unwrap(), model.get(i).copied().unwrap_or(ChunkId::ZERO));
                }
                for i in [0, chunks / 2, chunks - 1] {
                    assert_eq!(store.lookup(root, level, i).await.unwrap(), model.get(&i).copied().unwrap_or(ChunkId::ZERO));
                }
                // Content addressing: an empty model is the zero root.
                assert_eq!(root.is_zero(), model.is_empty());
                assert!(store.cached_bytes() <= CACHE, "node cache past its budget");
                history.push((root, model.clone()));
            }
            // Diff between any two versions equals the model's differing keys.
            for (ra, ma) in &history {
                for (rb, mb) in history.iter().rev().take(3) {
                    let runs = store.diff(*ra, *rb, level).await.unwrap();
                    let got: BTreeSet<u64> = runs.iter().flat_map(|r| r.start..r.start + r.count).collect();
                    let keys: BTreeSet<u64> = ma.keys().chain(mb.keys()).copied().collect();
                    let want: BTreeSet<u64> = keys.into_iter().filter(|k| ma.get(k) != mb.get(k)).collect();
                    assert_eq!(got, want);
                }
            }
            // A walk reaches exactly the model's chunks.
            let mut seen = BTreeMap::new();
            store.walk(root, level, &mut |r| {
                if let cairn_store::tree::Reachable::Chunk { id, index } = r { seen.insert(index, id); }
                true
            }).await.unwrap();
            assert_eq!(seen, model);
        });
    }
}

#[test]
fn same_contents_same_root_and_growth_keeps_contents() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = trees(dir.path());
        let ups: Vec<_> = (0..100u64).map(|i| (i * 5, id((i % 5 + 1) as u8))).collect();
        let a = store.update(NodeId::ZERO, 1, &ups).await.unwrap();
        let b = store.update(NodeId::ZERO, 1, &ups[..50]).await.unwrap();
        let b = store.update(b, 1, &ups[50..]).await.unwrap();
        assert_eq!(a, b, "content addressing: same map, same root");
        let grown = store.grow(a, 1, 3).await.unwrap();
        for (i, c) in &ups {
            assert_eq!(store.lookup(grown, 3, *i).await.unwrap(), *c);
        }
        assert_eq!(store.lookup(grown, 3, 1 << 30).await.unwrap(), ChunkId::ZERO);
        assert!(store
            .diff(grown, store.grow(b, 1, 3).await.unwrap(), 3)
            .await
            .unwrap()
            .is_empty());
    });
}
