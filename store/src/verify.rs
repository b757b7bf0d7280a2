//! Scrub: re-read every object a volume or snapshot references from the
//! object store (not the cache), check each frame's crc and BLAKE3 id, and
//! report what is missing or corrupt with the byte ranges it breaks.
//!
//! Objects shared by several trees are fetched once; the ranges they break
//! are reported for every volume and snapshot that references them.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use futures::stream::StreamExt;

pub use cairn_api_types::{Affected, VerifyProblem, VerifyReport};

use crate::engine::Engine;
use crate::error::{Result, StoreError};
use crate::names::{Namespace, SnapshotTag, VolumeName};
use crate::objects::ObjectKind;
use crate::tree::{capacity, levels_for, span, Node, NodeId};

/// Chunk fetches in flight per leaf.
const FETCH_CONCURRENCY: usize = 16;

/// A tree to scrub.
struct Target {
    namespace: Namespace,
    volume: VolumeName,
    tag: Option<SnapshotTag>,
    root: NodeId,
    level: u8,
    chunk_size: u64,
    size: u64,
}

enum NodeState {
    /// Node and everything below checked and good.
    Clean,
    /// Node good, something below bad: walk it again for each target.
    Tainted(Node),
    /// The node itself is bad (index into problems).
    Bad(usize),
}

struct Scrub<'a> {
    engine: &'a Engine,
    report: VerifyReport,
    nodes: HashMap<NodeId, NodeState>,
    good_chunks: HashSet<[u8; 32]>,
    bad_chunks: HashMap<[u8; 32], usize>,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

fn classify(e: &StoreError) -> Option<&'static str> {
    match e {
        StoreError::ObjectMissing { .. } => Some("missing"),
        StoreError::ChunkCorrupt { .. } | StoreError::NodeCorrupt { .. } => Some("corrupt"),
        _ => None,
    }
}

impl Scrub<'_> {
    fn problem(&mut self, kind: &str, id: &[u8; 32], e: &StoreError) -> usize {
        match classify(e) {
            Some("missing") => self.report.missing += 1,
            _ => self.report.corrupt += 1,
        }
        self.report.problems.push(VerifyProblem {
            kind: kind.into(),
            id: hex::encode(id),
            problem: classify(e).unwrap_or("corrupt").into(),
            detail: e.to_string(),
            affected: Vec::new(),
        });
        self.report.problems.len() - 1
    }

    fn affect(&mut self, problem: usize, t: &Target, first_chunk: u64, chunks: u64) {
        let offset = first_chunk.saturating_mul(t.chunk_size);
        if offset >= t.size {
            return;
        }
        let length = chunks.saturating_mul(t.chunk_size).min(t.size - offset);
        let affected = &mut self.report.problems[problem].affected;
        if let Some(last) = affected.last_mut() {
            if last.volume == t.volume.as_str()
                && last.namespace == t.namespace.as_str()
                && last.tag.as_deref() == t.tag.as_ref().map(|t| t.as_str())
                && last.offset + last.length == offset
            {
                last.length += length;
                return;
            }
        }
        affected.push(Affected {
            namespace: t.namespace.to_string(),
            volume: t.volume.to_string(),
            tag: t.tag.as_ref().map(|t| t.to_string()),
            offset,
            length,
        });
    }

    /// Checks a node's subtree for one target; returns true when all of it is good.
    fn node<'s>(&'s mut self, t: &'s Target, id: NodeId, level: u8, base: u64) -> BoxFut<'s, bool> {
        Box::pin(async move {
            if id.is_zero() {
                return Ok(true);
            }
            let node = match self.nodes.get(&id) {
                Some(NodeState::Clean) => return Ok(true),
                Some(NodeState::Bad(p)) => {
                    let p = *p;
                    self.affect(p, t, base, capacity(level));
                    return Ok(false);
                }
                Some(NodeState::Tainted(node)) => node.clone(),
                None => match self.engine.objects().node_bytes(&id.0).await {
                    Ok(bytes) => {
                        self.report.objects_checked += 1;
                        self.report.bytes_checked += bytes.len() as u64;
                        match Node::decode(id, &bytes).and_then(|n| {
                            if n.level == level {
                                Ok(n)
                            } else {
                                Err(StoreError::NodeCorrupt {
                                    id: id.to_hex(),
                                    reason: format!("level {} where {level} was expected", n.level),
                                })
                            }
                        }) {
                            Ok(node) => node,
                            Err(e) => return self.bad_node(t, id, level, base, &e),
                        }
                    }
                    Err(e) if classify(&e).is_some() => return self.bad_node(t, id, level, base, &e),
                    Err(e) => return Err(e),
                },
            };
            let mut clean = true;
            if level == 0 {
                clean = self.leaf(t, &node, base).await?;
            } else {
                for (slot, child) in &node.entries {
                    let child_base = base + *slot as u64 * span(level);
                    clean &= self.node(t, NodeId(*child), level - 1, child_base).await?;
                }
            }
            let state = if clean {
                NodeState::Clean
            } else {
                NodeState::Tainted(node)
            };
            self.nodes.insert(id, state);
            Ok(clean)
        })
    }

    fn bad_node(&mut self, t: &Target, id: NodeId, level: u8, base: u64, e: &StoreError) -> Result<bool> {
        let p = self.problem("node", &id.0, e);
        self.nodes.insert(id, NodeState::Bad(p));
        self.affect(p, t, base, capacity(level));
        Ok(false)
    }

    async fn leaf(&mut self, t: &Target, node: &Node, base: u64) -> Result<bool> {
        let objects = self.engine.objects();
        let unchecked: Vec<[u8; 32]> = node
            .entries
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| {
                *id != [0u8; 32] && !self.good_chunks.contains(id) && !self.bad_chunks.contains_key(id)
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let results: Vec<([u8; 32], Result<usize>)> = futures::stream::iter(unchecked)
            .map(|id| async move { (id, objects.fetch_checked(ObjectKind::Chunk, &id).await) })
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect()
            .await;
        for (id, result) in results {
            match result {
                Ok(len) => {
                    self.report.objects_checked += 1;
                    self.report.bytes_checked += len as u64;
                    self.good_chunks.insert(id);
                }
                Err(e) if classify(&e).is_some() => {
                    self.report.objects_checked += 1;
                    let p = self.problem("chunk", &id, &e);
                    self.bad_chunks.insert(id, p);
                }
                Err(e) => return Err(e),
            }
        }
        let mut clean = true;
        for (slot, id) in &node.entries {
            if let Some(&p) = self.bad_chunks.get(id) {
                self.affect(p, t, base + *slot as u64, 1);
                clean = false;
            }
        }
        Ok(clean)
    }
}

/// Scrubs every volume and snapshot (of namespace `ns`, or of all with
/// None), or one volume (`tag` None) or one snapshot of `ns`.
pub async fn run(
    engine: &Engine,
    ns: Option<&Namespace>,
    only: Option<(&VolumeName, Option<&SnapshotTag>)>,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let catalog = engine.catalog();
    let mut targets = Vec::new();
    let volumes = match (ns, only) {
        (Some(ns), Some((name, None))) => {
            vec![catalog
                .volume(ns, name)?
                .ok_or_else(|| StoreError::VolumeNotFound {
                    name: name.to_string(),
                })?]
        }
        (_, Some(_)) => Vec::new(),
        (ns, None) => catalog.volumes(ns)?,
    };
    for v in volumes {
        let g = Engine::geometry(v.chunk_size)?;
        targets.push(Target {
            level: levels_for(g.chunk_count(v.size)),
            namespace: v.namespace,
            volume: v.name,
            tag: None,
            root: v.root,
            chunk_size: v.chunk_size,
            size: v.size,
        });
    }
    let snapshots = match (ns, only) {
        (Some(ns), Some((name, Some(tag)))) => {
            vec![catalog
                .snapshot(ns, name, tag)?
                .ok_or_else(|| StoreError::SnapshotNotFound {
                    volume: name.to_string(),
                    tag: tag.to_string(),
                })?]
        }
        (_, Some(_)) => Vec::new(),
        (ns, None) => catalog.snapshots(ns, None)?,
    };
    for s in snapshots {
        let g = Engine::geometry(s.chunk_size)?;
        targets.push(Target {
            level: levels_for(g.chunk_count(s.size)),
            namespace: s.namespace,
            volume: s.volume,
            tag: Some(s.tag),
            root: s.root,
            chunk_size: s.chunk_size,
            size: s.size,
        });
    }
    let mut scrub = Scrub {
        engine,
        report: VerifyReport {
            targets: targets.len() as u64,
            ..VerifyReport::default()
        },
        nodes: HashMap::new(),
        good_chunks: HashSet::new(),
        bad_chunks: HashMap::new(),
    };
    for t in &targets {
        scrub.node(t, t.root, t.level, 0).await?;
    }
    let mut report = scrub.report;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}
