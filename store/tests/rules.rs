//! The engine's state rules: transitional volumes cannot be cloned, forked
//! from, rolled back or deleted; attached volumes cannot be rolled back;
//! volumes only grow; labels required by a fork must match; a clone's
//! default name is valid however long its source's name.

mod common;

use cairn_store::{Labels, StoreError, VolumeState};
use common::*;

#[test]
fn transitional_and_attached_states_refuse_what_they_must() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = engine(dir.path()).await;
        let (ns, a) = (ns(), actor());
        engine
            .create_volume(&ns, &a, &vol("src"), 1 << 20, None, Labels::new())
            .await
            .unwrap();
        engine
            .snapshot(&ns, &a, &vol("src"), Some(tag("t")), Labels::new())
            .await
            .unwrap();
        for state in [
            VolumeState::Creating,
            VolumeState::Deleting,
            VolumeState::RollingBack,
        ] {
            engine.set_state(&ns, &a, &vol("src"), state).await.unwrap();
            let results = [
                engine
                    .clone_volume(&ns, &a, &vol("src"), Some(vol("c")), None)
                    .await
                    .map(|_| ()),
                engine
                    .fork(&ns, &a, &vol("src"), &tag("t"), &vol("f"), None, &Labels::new())
                    .await
                    .map(|_| ()),
                engine.rollback(&ns, &a, &vol("src"), &tag("t")).await.map(|_| ()),
                engine.delete_volume(&ns, &a, &vol("src"), false).await,
            ];
            for r in results {
                assert!(
                    matches!(r, Err(StoreError::WrongState { .. })),
                    "{state:?}: {r:?}"
                );
            }
        }
        engine
            .set_state(&ns, &a, &vol("src"), VolumeState::Attached)
            .await
            .unwrap();
        let r = engine.rollback(&ns, &a, &vol("src"), &tag("t")).await;
        assert!(matches!(r, Err(StoreError::WrongState { .. })), "{r:?}");
        // Attached volumes can still be snapshotted and cloned.
        engine
            .snapshot(&ns, &a, &vol("src"), Some(tag("live")), Labels::new())
            .await
            .unwrap();
        engine
            .clone_volume(&ns, &a, &vol("src"), None, None)
            .await
            .unwrap();
        engine
            .set_state(&ns, &a, &vol("src"), VolumeState::Ready)
            .await
            .unwrap();
        engine.rollback(&ns, &a, &vol("src"), &tag("t")).await.unwrap();
        let kinds: Vec<_> = engine
            .events(&ns, Some("src"), 0, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(
            kinds.contains(&cairn_store::EventKind::Attach)
                && kinds.contains(&cairn_store::EventKind::Detach)
        );
    });
}

#[test]
fn sizes_only_grow_and_labels_must_match() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = engine(dir.path()).await;
        let (ns, a) = (ns(), actor());
        engine
            .create_volume(&ns, &a, &vol("v"), 8 << 20, Some(4096), Labels::new())
            .await
            .unwrap();
        let v = engine.volume(&ns, &vol("v")).unwrap();
        v.write((8 << 20) - 4096, &[9u8; 4096]).await.unwrap();
        let labels: Labels = [("kernel".to_string(), "abc".to_string())].into();
        engine
            .snapshot(&ns, &a, &vol("v"), Some(tag("k")), labels)
            .await
            .unwrap();
        assert!(matches!(
            engine.resize(&ns, &a, &vol("v"), 4 << 20).await,
            Err(StoreError::TooSmall { .. })
        ));
        assert!(matches!(
            engine
                .fork(
                    &ns,
                    &a,
                    &vol("v"),
                    &tag("k"),
                    &vol("f"),
                    Some(4 << 20),
                    &Labels::new()
                )
                .await,
            Err(StoreError::TooSmall { .. })
        ));
        let wrong: Labels = [("kernel".to_string(), "xyz".to_string())].into();
        assert!(matches!(
            engine
                .fork(&ns, &a, &vol("v"), &tag("k"), &vol("f"), None, &wrong)
                .await,
            Err(StoreError::LabelMismatch { .. })
        ));
        // Growing far past the tree's capacity keeps every byte (root re-levelled).
        engine.resize(&ns, &a, &vol("v"), 1 << 40).await.unwrap();
        let right: Labels = [("kernel".to_string(), "abc".to_string())].into();
        engine
            .fork(&ns, &a, &vol("v"), &tag("k"), &vol("big"), Some(1 << 41), &right)
            .await
            .unwrap();
        for name in ["v", "big"] {
            let src = engine.readable(&ns, &vol(name), None).unwrap();
            let mut buf = vec![0u8; 8192];
            engine.read(&src, (8 << 20) - 8192, &mut buf).await.unwrap();
            assert_eq!(&buf[4096..], &[9u8; 4096][..], "{name}");
            assert!(buf[..4096].iter().all(|&b| b == 0));
        }
        let big = engine.volume(&ns, &vol("big")).unwrap();
        big.write((1 << 41) - 4096, &[5u8; 4096]).await.unwrap();
        big.seal().await.unwrap();
        let mut buf = vec![0u8; 4096];
        big.read((1 << 41) - 4096, &mut buf).await.unwrap();
        assert_eq!(buf, vec![5u8; 4096]);
    });
}

#[test]
fn event_queries_filter_while_scanning() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = engine(dir.path()).await;
        let (ns, a) = (ns(), actor());
        let other = cairn_store::Namespace::new("other").unwrap();
        engine
            .create_volume(&ns, &a, &vol("v"), 1 << 20, None, Labels::new())
            .await
            .unwrap();
        engine
            .create_volume(&other, &a, &vol("v"), 1 << 20, None, Labels::new())
            .await
            .unwrap();
        for i in 0..5 {
            engine
                .snapshot(&ns, &a, &vol("v"), Some(tag(&format!("t{i}"))), Labels::new())
                .await
                .unwrap();
        }
        let all = engine.events_matching(&ns, None, 0, None, 100, None).unwrap();
        assert_eq!(all.len(), 6, "the other namespace's event is not here");
        let seqs = |v: Vec<cairn_store::Event>| v.into_iter().map(|e| e.seq).collect::<Vec<_>>();
        let all_seqs = seqs(all.clone());
        assert_eq!(
            seqs(engine.events_matching(&ns, None, 0, None, 2, None).unwrap()),
            all_seqs[..2]
        );
        assert_eq!(
            seqs(engine.events_matching(&ns, None, 0, None, 100, Some(2)).unwrap()),
            all_seqs[4..]
        );
        assert_eq!(
            seqs(
                engine
                    .events_matching(&ns, Some("v"), all_seqs[3], None, 100, None)
                    .unwrap()
            ),
            all_seqs[3..]
        );
        let later = engine
            .events_matching(&ns, None, 0, Some(all[3].time), 100, None)
            .unwrap();
        assert!(later.iter().all(|e| e.time >= all[3].time) && later.len() >= 3);
        let none = engine
            .events_matching(
                &ns,
                None,
                0,
                Some(all[5].time + time::Duration::hours(1)),
                100,
                None,
            )
            .unwrap();
        assert!(none.is_empty());
    });
}

/// A clone of a clone of a clone of a long name: the default names the
/// server picks stay valid (63 characters at most), keep the start of the
/// source's name, and do not collide.
#[test]
fn default_clone_names_stay_valid_down_a_chain_of_clones() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = engine(dir.path()).await;
        let (ns, a) = (ns(), actor());
        let long = "a".repeat(60);
        engine
            .create_volume(&ns, &a, &vol(&long), 1 << 20, None, Labels::new())
            .await
            .unwrap();
        let mut source = long.clone();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let clone = engine
                .clone_volume(&ns, &a, &vol(&source), None, None)
                .await
                .unwrap();
            let name = clone.name.to_string();
            assert!(name.len() <= 63, "{name}");
            assert!(name.starts_with("aaaa") && name.contains("-clone-"), "{name}");
            assert!(seen.insert(name.clone()), "{name} picked twice");
            source = name;
        }
        // Another clone of the first source: a name not picked before
        // (with a -2 suffix when it comes within the same second).
        let first = engine
            .clone_volume(&ns, &a, &vol(&long), None, None)
            .await
            .unwrap();
        assert!(!seen.contains(first.name.as_str()), "{}", first.name);
    });
}
