//! Reference counts of every referenced chunk, kept between requests and
//! brought up to date from the owners' roots, so that space accounting
//! costs what changed, not what exists.
//!
//! Owners (volumes and snapshots) hold roots; a root is a list of leaves
//! by position. When an owner's root changes, only the leaves at positions
//! that differ are taken out (−1) and put in (+1); the changes of all
//! owners are summed per leaf first, so a thousand forks of one snapshot
//! add its leaves once. Each referenced chunk keeps:
//!
//! - `refs`: its occurrences under all owners (a chunk twice in one tree
//!   counts twice);
//! - `s1` and `s2`: the sums, over those occurrences, of the owner's id and
//!   of its square. All occurrences belong to one owner exactly when
//!   `refs · s2 = s1²` (Cauchy–Schwarz holds with equality only for equal
//!   terms), and that owner is `s1 / refs`. This is exact integer
//!   arithmetic, not a sketch: the chunk is unique to that owner.
//! - its occurrences per namespace (almost always one namespace).
//!
//! Every change to a chunk's counts updates, on the transitions it causes,
//! the total stored bytes, the stored bytes per namespace and the unique
//! bytes of the owner that alone holds it, so those stay exact at every
//! step. Per-owner stored bytes (its distinct chunks) are kept per held
//! root, computed once when a root first appears, from the ledger's
//! lengths without index lookups.
//!
//! A reconcile reads and looks up everything first and changes the ledger
//! only after its last `.await`, in one synchronous step: a dropped or
//! failed reconcile leaves the ledger as it was. Memory: an entry of 80
//! bytes (32-byte id, counts, one namespace) per distinct referenced
//! chunk, 90-160 with the hash table's slack (0.1-0.25% of 64 KiB chunks),
//! plus a side entry for a chunk held in several namespaces and a position
//! map per owner (one entry per leaf: 32 per GiB).

use std::collections::{HashMap, HashSet};

use cairn_chunker::ChunkId;
use smallvec::SmallVec;

use super::{level_of, Owner, Usage, VolumeUsage};
use crate::error::Result;
use crate::names::{Namespace, SnapshotTag, VolumeName};
use crate::objects::ObjectKind;
use crate::sealed::Backend;
use crate::tree::{NodeId, Occurrences};

/// Who holds a root: a volume, or a volume's snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct OwnerKey {
    ns: Namespace,
    volume: VolumeName,
    tag: Option<SnapshotTag>,
}

impl OwnerKey {
    fn of(o: &Owner) -> Self {
        Self {
            ns: o.ns.clone(),
            volume: o.volume.clone(),
            tag: o.tag.clone(),
        }
    }
}

/// What the ledger knows of one owner.
#[derive(Debug)]
struct Held {
    id: u32,
    ns: u32,
    root: NodeId,
    level: u8,
    /// Its root's leaves by position.
    leaves: HashMap<u64, NodeId>,
}

/// A root held by at least one owner.
#[derive(Debug)]
struct HeldRoot {
    holders: u32,
    /// Stored bytes of its distinct chunks.
    stored: u64,
    /// Its distinct chunks.
    chunks: u64,
}

/// One referenced chunk's counts (see the module doc): 48 bytes, 80 with
/// its id in the table. The sums keep 8-byte alignment (a `u128` field
/// would pad the entry to 96 bytes).
#[derive(Debug)]
#[repr(C, packed(8))]
struct Refs {
    s1: u128,
    s2: u128,
    refs: u64,
    len: u32,
    /// The namespace of every occurrence, [`SPREAD`] when they are in
    /// several (their counts are then in [`Ledger::spread`]), [`NONE`]
    /// while it has none.
    ns: u32,
}

/// [`Refs::ns`] of a chunk held in several namespaces.
const SPREAD: u32 = u32::MAX;
/// [`Refs::ns`] of a chunk without occurrences.
const NONE: u32 = u32::MAX - 1;

/// Occurrences of one chunk per namespace.
type NsCounts = SmallVec<[(u32, u64); 2]>;

impl Refs {
    /// The owner that alone holds this chunk, if one does.
    fn sole(&self) -> Option<u32> {
        let (refs, s1, s2) = (self.refs, self.s1, self.s2);
        if refs == 0 {
            return None;
        }
        let refs = u128::from(refs);
        let lhs = refs.checked_mul(s2).expect("owner ids and counts stay small");
        let rhs = s1.checked_mul(s1).expect("owner ids and counts stay small");
        (lhs == rhs).then(|| (s1 / refs) as u32)
    }
}

/// The summed change of one leaf's holders.
#[derive(Debug, Default)]
struct LeafDelta {
    refs: i64,
    s1: i128,
    s2: i128,
    ns: SmallVec<[(u32, i64); 1]>,
}

impl LeafDelta {
    fn add(&mut self, owner: u32, ns: u32, delta: i64) {
        let o = i128::from(owner);
        self.refs += delta;
        self.s1 += i128::from(delta) * o;
        self.s2 += i128::from(delta) * o * o;
        match self.ns.iter_mut().find(|(n, _)| *n == ns) {
            Some((_, d)) => *d += delta,
            None => self.ns.push((ns, delta)),
        }
    }
}

/// Reference counts of every chunk under the owners' roots (module doc).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    owners: HashMap<OwnerKey, Held>,
    free_ids: Vec<u32>,
    next_id: u32,
    namespaces: HashMap<Namespace, u32>,
    chunks: HashMap<ChunkId, Refs>,
    /// Occurrences per namespace of the chunks held in several.
    spread: HashMap<ChunkId, NsCounts>,
    roots: HashMap<NodeId, HeldRoot>,
    /// Unique bytes per owner id.
    unique: HashMap<u32, u64>,
    /// Stored bytes of all referenced chunks.
    stored: u64,
    /// Stored bytes of the chunks each namespace references.
    ns_stored: HashMap<u32, u64>,
}

/// An owner that is new or whose root changed.
struct Changed {
    key: OwnerKey,
    ns: Namespace,
    root: NodeId,
    level: u8,
    /// The new root's leaves by position.
    leaves: HashMap<u64, NodeId>,
}

/// What a reconcile read before it changes anything.
struct Plan {
    changed: Vec<Changed>,
    /// Owners that are gone.
    gone: Vec<OwnerKey>,
    /// Chunk lists of every leaf that changes hands or belongs to a new
    /// root.
    leaves: HashMap<NodeId, Occurrences>,
    /// Stored lengths of chunks the ledger does not hold yet.
    /// Chunks the ledger does not hold yet, and their stored lengths.
    absent: Vec<[u8; 32]>,
    lens: Vec<u64>,
}

impl Ledger {
    /// Brings the ledger up to `owners`. On an error nothing has changed.
    pub(super) async fn reconcile(&mut self, backend: &Backend, owners: &[Owner]) -> Result<()> {
        let plan = self.plan(backend, owners).await?;
        self.apply(plan, backend);
        Ok(())
    }

    async fn plan(&self, backend: &Backend, owners: &[Owner]) -> Result<Plan> {
        let mut changed = Vec::new();
        let mut present = HashSet::with_capacity(owners.len());
        let mut needed: HashSet<NodeId> = HashSet::new();
        for o in owners {
            let key = OwnerKey::of(o);
            let level = level_of(o.size, o.chunk_size)?;
            let held = self.owners.get(&key);
            present.insert(key.clone());
            if held.is_some_and(|h| h.root == o.root && h.level == level) {
                continue;
            }
            let leaves: HashMap<u64, NodeId> =
                backend.trees.leaves(o.root, level).await?.into_iter().collect();
            let fresh_root = !self.roots.contains_key(&o.root);
            for (position, leaf) in &leaves {
                if fresh_root || held.is_none_or(|h| h.leaves.get(position) != Some(leaf)) {
                    needed.insert(*leaf);
                }
            }
            if let Some(h) = held {
                for (position, leaf) in &h.leaves {
                    if leaves.get(position) != Some(leaf) {
                        needed.insert(*leaf);
                    }
                }
            }
            changed.push(Changed {
                key,
                ns: o.ns.clone(),
                root: o.root,
                level,
                leaves,
            });
        }
        let gone: Vec<OwnerKey> = self
            .owners
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for key in &gone {
            needed.extend(self.owners[key].leaves.values().copied());
        }
        let mut leaves = HashMap::with_capacity(needed.len());
        let mut absent = HashSet::new();
        for leaf in needed {
            let chunks = backend.trees.occurrences(leaf).await?;
            absent.extend(
                chunks
                    .iter()
                    .map(|(id, _)| *id)
                    .filter(|id| !self.chunks.contains_key(id)),
            );
            leaves.insert(leaf, chunks);
        }
        let mut absent: Vec<[u8; 32]> = absent.into_iter().map(|id| id.0).collect();
        // In key order the index reads its blocks once each: a restart's
        // first reconcile looks up every referenced chunk (5.1 s instead of
        // 8.2 s for 524k chunks).
        absent.sort_unstable();
        let lens = if absent.is_empty() {
            Vec::new()
        } else {
            backend.objects.stored_lens(ObjectKind::Chunk, &absent)?
        };
        Ok(Plan {
            changed,
            gone,
            leaves,
            absent,
            lens,
        })
    }

    /// Applies a plan: no `.await`, no failure.
    fn apply(&mut self, plan: Plan, backend: &Backend) {
        let Plan {
            changed,
            gone,
            leaves,
            absent,
            lens,
        } = plan;
        // Chunks new to the ledger enter with their lengths and no
        // reference; the counting below gives them theirs.
        self.chunks.reserve(absent.len());
        for (id, len) in absent.into_iter().zip(lens) {
            let refs = Refs {
                s1: 0,
                s2: 0,
                refs: 0,
                len: u32::try_from(len).unwrap_or(u32::MAX),
                ns: NONE,
            };
            self.chunks.insert(ChunkId(id), refs);
        }
        let mut deltas: HashMap<NodeId, LeafDelta> = HashMap::new();
        let mut released_roots = Vec::new();
        for key in gone {
            let held = self
                .owners
                .remove(&key)
                .expect("planned from the ledger's owners");
            for leaf in held.leaves.values() {
                deltas.entry(*leaf).or_default().add(held.id, held.ns, -1);
            }
            released_roots.push(held.root);
            self.free_ids.push(held.id);
        }
        // New roots: their holders and leaves (several owners may bring one).
        let mut new_roots: HashMap<NodeId, (u32, Vec<NodeId>)> = HashMap::new();
        for Changed {
            key,
            ns,
            root,
            level,
            leaves: new_leaves,
        } in changed
        {
            let ns = self.namespace_id(ns);
            let (id, old_leaves) = match self.owners.remove(&key) {
                Some(held) => {
                    released_roots.push(held.root);
                    (held.id, held.leaves)
                }
                None => (self.allocate_id(), HashMap::new()),
            };
            for (position, leaf) in &old_leaves {
                if new_leaves.get(position) != Some(leaf) {
                    deltas.entry(*leaf).or_default().add(id, ns, -1);
                }
            }
            for (position, leaf) in &new_leaves {
                if old_leaves.get(position) != Some(leaf) {
                    deltas.entry(*leaf).or_default().add(id, ns, 1);
                }
            }
            match self.roots.get_mut(&root) {
                Some(r) => r.holders += 1,
                None => {
                    new_roots
                        .entry(root)
                        .or_insert_with(|| (0, new_leaves.values().copied().collect()))
                        .0 += 1;
                }
            }
            self.owners.insert(
                key,
                Held {
                    id,
                    ns,
                    root,
                    level,
                    leaves: new_leaves,
                },
            );
        }
        let mut emptied = Vec::new();
        for (leaf, delta) in &deltas {
            for (id, occurrences) in leaves[leaf].iter() {
                if self.count(*id, i64::from(*occurrences), delta) {
                    emptied.push(*id);
                }
            }
        }
        // Roots first: a new root's chunks are all held now.
        for (root, (holders, root_leaves)) in new_roots {
            let mut distinct: HashSet<ChunkId> = HashSet::new();
            for leaf in &root_leaves {
                distinct.extend(leaves[leaf].iter().map(|(id, _)| *id));
            }
            let stored = distinct.iter().map(|id| u64::from(self.chunks[id].len)).sum();
            backend.accounting.remember_stored(root, stored);
            self.roots.insert(
                root,
                HeldRoot {
                    holders,
                    stored,
                    chunks: distinct.len() as u64,
                },
            );
        }

        for root in released_roots {
            let r = self.roots.get_mut(&root).expect("a held root");
            r.holders -= 1;
            if r.holders == 0 {
                self.roots.remove(&root);
            }
        }
        for id in emptied {
            if self.chunks.get(&id).is_some_and(|r| r.refs == 0) {
                self.chunks.remove(&id);
            }
        }
        self.unique.retain(|_, bytes| *bytes > 0);
    }

    /// Adds `occurrences` × `delta` to one chunk and follows the
    /// transitions; true when no reference is left.
    fn count(&mut self, id: ChunkId, occurrences: i64, delta: &LeafDelta) -> bool {
        let refs = self.chunks.get_mut(&id).expect("held, or added from the plan");
        let len = u64::from(refs.len);
        let (had, sole_before) = (refs.refs > 0, refs.sole());
        let was_spread = refs.ns == SPREAD;
        let mut counts: NsCounts = match refs.ns {
            NONE => SmallVec::new(),
            SPREAD => self.spread.get(&id).cloned().unwrap_or_default(),
            ns => SmallVec::from_slice(&[(ns, refs.refs)]),
        };
        let of = |counts: &NsCounts, ns: u32| counts.iter().find(|(n, _)| *n == ns).map_or(0, |(_, c)| *c);
        let ns_before: SmallVec<[u64; 1]> = delta.ns.iter().map(|(n, _)| of(&counts, *n)).collect();
        refs.refs = { refs.refs }
            .checked_add_signed(occurrences * delta.refs)
            .expect("references never go below zero");
        refs.s1 = { refs.s1 }.wrapping_add_signed(i128::from(occurrences) * delta.s1);
        refs.s2 = { refs.s2 }.wrapping_add_signed(i128::from(occurrences) * delta.s2);
        for (n, d) in &delta.ns {
            match counts.iter_mut().find(|(m, _)| m == n) {
                Some((_, c)) => *c = c.checked_add_signed(occurrences * d).expect("never below zero"),
                None => counts.push((*n, u64::try_from(occurrences * d).expect("never below zero"))),
            }
        }
        counts.retain(|(_, c)| *c > 0);
        let ns_after: SmallVec<[u64; 1]> = delta.ns.iter().map(|(n, _)| of(&counts, *n)).collect();
        refs.ns = match counts.as_slice() {
            [] => NONE,
            [(ns, _)] => *ns,
            _ => SPREAD,
        };
        if counts.len() > 1 {
            self.spread.insert(id, counts);
        } else if was_spread {
            // In one namespace again (or none).
            self.spread.remove(&id);
        }
        let (has, sole_after) = (refs.refs > 0, refs.sole());
        if sole_before != sole_after {
            if let Some(o) = sole_before {
                *self.unique.entry(o).or_default() -= len;
            }
            if let Some(o) = sole_after {
                *self.unique.entry(o).or_default() += len;
            }
        }
        match (had, has) {
            (false, true) => self.stored += len,
            (true, false) => self.stored -= len,
            _ => {}
        }
        for (((n, _), before), after) in delta.ns.iter().zip(ns_before).zip(ns_after) {
            match (before > 0, after > 0) {
                (false, true) => *self.ns_stored.entry(*n).or_default() += len,
                (true, false) => *self.ns_stored.entry(*n).or_default() -= len,
                _ => {}
            }
        }
        !has
    }

    fn namespace_id(&mut self, ns: Namespace) -> u32 {
        let next = self.namespaces.len() as u32;
        *self.namespaces.entry(ns).or_insert(next)
    }

    fn allocate_id(&mut self) -> u32 {
        self.free_ids.pop().unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id - 1
        })
    }

    /// The figures of `owners` (those the ledger was last reconciled to).
    pub(super) fn usage(&self, owners: &[Owner]) -> Usage {
        let mut usage = Usage {
            stored_bytes: self.stored,
            ..Usage::default()
        };
        for o in owners {
            let held = &self.owners[&OwnerKey::of(o)];
            let root = &self.roots[&o.root];
            let ns = usage.namespaces.entry(o.ns.clone()).or_default();
            let logical = root.chunks * o.chunk_size;
            usage.logical_bytes += logical;
            ns.logical_bytes += logical;
            ns.stored_bytes = self.ns_stored.get(&held.ns).copied().unwrap_or(0);
            match o.tag {
                Some(_) => {
                    usage.snapshot_count += 1;
                    ns.snapshot_count += 1;
                }
                None => {
                    usage.volume_count += 1;
                    ns.volume_count += 1;
                    usage.volumes.insert(
                        (o.ns.clone(), o.volume.clone()),
                        VolumeUsage {
                            stored_bytes: root.stored,
                            unique_bytes: self.unique.get(&held.id).copied().unwrap_or(0),
                        },
                    );
                }
            }
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ledger holds one `Refs` per referenced chunk: its size is the
    /// accounting's memory per chunk (module doc).
    #[test]
    fn a_chunk_entry_stays_small() {
        assert_eq!(std::mem::size_of::<Refs>(), 48);
        assert_eq!(std::mem::size_of::<(ChunkId, Refs)>(), 80);
    }
}
