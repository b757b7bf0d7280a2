//! Dedup and structural sharing: 100 forks of a volume, each writing 1%
//! new data, add only the new chunks and a few tree nodes each; on a local
//! store all of their mapped data counts as hydrated.

mod common;

use cairn_store::Labels;
use common::*;

#[test]
fn hundred_forks_writing_one_percent_store_only_new_chunks() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = engine(dir.path()).await;
        const CHUNK: usize = 64 * 1024;
        const CHUNKS: usize = 1024; // 64 MiB
        let base = vol("base");
        engine.create_volume(&ns(), &actor(), &base, (CHUNK * CHUNKS) as u64, None, Labels::new()).await.unwrap();
        let image: Vec<u8> = (0..CHUNKS).flat_map(|i| noise(i as u64, CHUNK)).collect();
        let (_, n, _) = engine
            .import(&ns(), &actor(), &base, futures::stream::iter([Ok(bytes::Bytes::from(image.clone()))]), None, 0, &|_| {})
            .await
            .unwrap();
        assert_eq!(n, image.len() as u64);
        engine.snapshot(&ns(), &actor(), &base, Some(tag("gold")), Labels::new()).await.unwrap();
        let (chunks_before, chunk_bytes_before) = count_objects(&engine, "chunks").await;
        let (nodes_before, _) = count_objects(&engine, "nodes").await;
        assert_eq!(chunks_before, CHUNKS as u64);

        let per_fork = CHUNKS / 100; // 1% of the chunks
        for f in 0..100u64 {
            let name = vol(&format!("fork-{f}"));
            engine.fork(&ns(), &actor(), &base, &tag("gold"), &name, None, &Labels::new()).await.unwrap();
            let v = engine.volume(&ns(), &name).unwrap();
            for k in 0..per_fork as u64 {
                let chunk = (f * 37 + k * 101) % CHUNKS as u64;
                v.write(chunk * CHUNK as u64, &noise(1_000_000 + f * 1000 + k, CHUNK)).await.unwrap();
            }
            v.seal().await.unwrap();
        }
        let (chunks_after, chunk_bytes_after) = count_objects(&engine, "chunks").await;
        let (nodes_after, node_bytes_after) = count_objects(&engine, "nodes").await;
        let new_chunks = chunks_after - chunks_before;
        assert_eq!(new_chunks, 100 * per_fork as u64, "exactly the new chunks are stored");
        let frame = (CHUNK + cairn_chunker::FRAME_HEADER_LEN) as u64;
        assert_eq!(chunk_bytes_after - chunk_bytes_before, new_chunks * frame);
        // Each fork rewrites at most its touched leaves (2 here) and the root.
        let new_nodes = nodes_after - nodes_before;
        assert!(new_nodes <= 100 * 3, "{new_nodes} new tree nodes");
        println!(
            "base {chunks_before} chunks / {chunk_bytes_before} B; 100 forks added {new_chunks} chunks / {} B and {new_nodes} nodes ({node_bytes_after} B of nodes in all)",
            chunk_bytes_after - chunk_bytes_before
        );
        // The base is untouched by all of it.
        let src = engine.readable(&ns(), &base, Some(&tag("gold"))).unwrap();
        let mut buf = vec![0u8; image.len()];
        engine.read(&src, 0, &mut buf).await.unwrap();
        assert!(buf == image);

        // On a local store every mapped chunk is local: hydration counts the
        // forks' mapped chunks, and a volume with holes counts only its data.
        let h = engine.hydration(&ns(), &vol("fork-7")).await.unwrap();
        assert_eq!(h.total_bytes, image.len() as u64, "{h:?}");
        assert_eq!((h.local_bytes, h.fraction), (h.total_bytes, 1.0), "{h:?}");
        let sparse = vol("sparse");
        engine.create_volume(&ns(), &actor(), &sparse, 1 << 30, None, Labels::new()).await.unwrap();
        let v = engine.volume(&ns(), &sparse).unwrap();
        for at in [0u64, 3 << 20, 1 << 29] {
            v.write(at, &noise(at, CHUNK)).await.unwrap();
        }
        v.seal().await.unwrap();
        let h = engine.hydration(&ns(), &sparse).await.unwrap();
        assert_eq!((h.total_bytes, h.local_bytes), (3 * CHUNK as u64, 3 * CHUNK as u64), "{h:?}");
    });
}

/// One write's whole chunks are stored as one batch: a chunk repeated in
/// the batch and one stored before are stored once, the pack index counts
/// each object once, and with a fault switched on the same write takes
/// the one-request-per-object path to the same result.
#[test]
fn a_batch_of_chunks_stores_each_distinct_chunk_once() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = engine(dir.path()).await;
        const CHUNK: usize = 64 * 1024;
        let v = vol("v");
        engine
            .create_volume(&ns(), &actor(), &v, 64 * CHUNK as u64, None, Labels::new())
            .await
            .unwrap();
        let v = engine.volume(&ns(), &v).unwrap();
        let (a, b, c) = (noise(1, CHUNK), noise(2, CHUNK), noise(3, CHUNK));
        v.write(0, &a).await.unwrap();
        assert_eq!(count_objects(&engine, "chunks").await.0, 1);
        // a (stored before), b twice, c: two new chunks.
        let write: Vec<u8> = [&a, &b, &b, &c].into_iter().flatten().copied().collect();
        v.write(CHUNK as u64, &write).await.unwrap();
        assert_eq!(count_objects(&engine, "chunks").await.0, 3);
        let objects =
            |e: &cairn_store::Engine| e.objects().packs().expect("a packed local store").usage().objects;
        let nodes = count_objects(&engine, "nodes").await.0;
        assert_eq!(objects(&engine), 3 + nodes, "the index counts each object once");

        // The same shape with a fault on: one put per object.
        engine
            .objects()
            .faults
            .latency_ms
            .store(1, std::sync::atomic::Ordering::Relaxed);
        let (d, e) = (noise(4, CHUNK), noise(5, CHUNK));
        let write: Vec<u8> = [&d, &e, &e, &a].into_iter().flatten().copied().collect();
        v.write(10 * CHUNK as u64, &write).await.unwrap();
        engine
            .objects()
            .faults
            .latency_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(count_objects(&engine, "chunks").await.0, 5);
        v.seal().await.unwrap();
        let mut buf = vec![0u8; 14 * CHUNK];
        v.read(0, &mut buf).await.unwrap();
        let want: Vec<u8> = [&a, &a, &b, &b, &c, &vec![0; 5 * CHUNK], &d, &e, &e, &a]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        assert!(buf == want, "every chunk reads back");
    });
}

/// Stored lengths are looked up in batches; answers keep their places
/// across batch boundaries, and unknown objects answer 0.
#[test]
fn stored_lengths_of_many_objects_keep_their_places() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = engine(dir.path()).await;
        const CHUNK: usize = 64 * 1024;
        let data: Vec<Vec<u8>> = (0..4).map(|i| noise(100 + i, CHUNK)).collect();
        engine
            .create_volume(
                &ns(),
                &actor(),
                &vol("v"),
                (4 * CHUNK) as u64,
                None,
                Labels::new(),
            )
            .await
            .unwrap();
        let v = engine.volume(&ns(), &vol("v")).unwrap();
        v.write(0, &data.concat()).await.unwrap();
        v.seal().await.unwrap();
        let objects = engine.objects();
        let known: Vec<[u8; 32]> = data.iter().map(|c| cairn_chunker::ChunkId::of(c).0).collect();
        let lens: Vec<u64> = known
            .iter()
            .map(|id| {
                objects
                    .stored_lens(cairn_store::objects::ObjectKind::Chunk, &[*id])
                    .unwrap()[0]
            })
            .collect();
        assert!(
            lens.iter().all(|&l| l > 0),
            "stored chunks have lengths: {lens:?}"
        );
        let mut ids: Vec<[u8; 32]> = (0..9000u32)
            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .collect();
        let places = [0, 4095, 4096, 8999];
        for (k, &at) in places.iter().enumerate() {
            ids[at] = known[k];
        }
        let got = objects
            .stored_lens(cairn_store::objects::ObjectKind::Chunk, &ids)
            .unwrap();
        assert_eq!(got.len(), ids.len());
        for (i, len) in got.iter().enumerate() {
            let expected = places.iter().position(|&at| at == i).map_or(0, |k| lens[k]);
            assert_eq!(*len, expected, "object {i}");
        }
    });
}
