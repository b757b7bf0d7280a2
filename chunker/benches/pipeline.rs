//! Chunk pipeline throughput on typical disk data: zero chunks, duplicates,
//! compressible binaries and incompressible (already compressed) data.

use cairn_chunker::pipeline::{classify, encode_all, Classified};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const CHUNK: usize = 64 * 1024;
const BATCH: usize = 256; // 16 MiB per iteration

fn random_chunk(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..CHUNK / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// Text-like data: words from a small vocabulary, compresses ~3-4x.
fn compressible_chunk(seed: u64) -> Vec<u8> {
    let words = [
        &b"mov "[..],
        b"rax, ",
        b"call ",
        b"0x4010 ",
        b"ret\n",
        b"push ",
        b"rbp\n",
        b"lea ",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(CHUNK);
    while out.len() < CHUNK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % 8) as usize]);
    }
    out.truncate(CHUNK);
    out
}

/// Ingest as the store does it: classify all, encode only new data chunks.
fn ingest(chunks: &[Vec<u8>], known: &std::collections::HashSet<cairn_chunker::ChunkId>) -> usize {
    let classes = classify(chunks);
    let fresh: Vec<&Vec<u8>> = chunks
        .iter()
        .zip(&classes)
        .filter(|(_, c)| matches!(c, Classified::Data(id) if !known.contains(id)))
        .map(|(chunk, _)| chunk)
        .collect();
    encode_all(&fresh).iter().map(Vec::len).sum()
}

fn bench(c: &mut Criterion) {
    let zero: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; CHUNK]).collect();
    let random: Vec<Vec<u8>> = (0..BATCH as u64).map(random_chunk).collect();
    let text: Vec<Vec<u8>> = (0..BATCH as u64).map(compressible_chunk).collect();
    // A typical VM image: ~60% zeros, ~20% chunks already in the store,
    // ~15% new compressible, ~5% new incompressible.
    let mut typical = Vec::new();
    for i in 0..BATCH {
        typical.push(match i % 20 {
            0..=11 => zero[i].clone(),
            12..=15 => text[i % 4].clone(),
            16..=18 => compressible_chunk(1000 + i as u64),
            _ => random_chunk(2000 + i as u64),
        });
    }
    let known: std::collections::HashSet<_> = (0..4).map(|i| cairn_chunker::ChunkId::of(&text[i])).collect();
    let none = std::collections::HashSet::new();

    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Bytes((BATCH * CHUNK) as u64));
    group.sample_size(20);
    for (name, data, known) in [
        ("zero", &zero, &none),
        ("duplicate", &text, &known_all(&text)),
        ("compressible", &text, &none),
        ("incompressible", &random, &none),
        ("typical_vm_image", &typical, &known),
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(name), data, |b, data| {
            b.iter(|| ingest(data, known))
        });
    }
    group.finish();
}

fn known_all(chunks: &[Vec<u8>]) -> std::collections::HashSet<cairn_chunker::ChunkId> {
    chunks.iter().map(|c| cairn_chunker::ChunkId::of(c)).collect()
}

criterion_group!(benches, bench);
criterion_main!(benches);
