//! How the CLI prints: tables, JSON, sizes, progress on stderr.

use std::time::Instant;

use cairn_api_types::{GcProgress, GcReport, Hydration, Snapshot, Volume};

use crate::size::format_size;

pub(super) fn print_json(raw: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(raw).expect("JSON values serialise")
    );
}

pub(super) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

pub(super) fn time_text(t: &time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(super) fn volume_table(volumes: &[Volume]) {
    table(
        &["NAME", "SIZE", "STATE", "STORED", "UNIQUE", "CREATED", "FROM"],
        volumes
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    format_size(v.size),
                    v.state.clone(),
                    format_size(v.stored_bytes),
                    format_size(v.unique_bytes),
                    time_text(&v.created_at),
                    v.from_snapshot.clone().unwrap_or_default(),
                ]
            })
            .collect(),
    );
}

pub(super) fn snapshot_table(snapshots: &[Snapshot]) {
    table(
        &["VOLUME", "TAG", "SIZE", "CREATED", "SEALED"],
        snapshots
            .iter()
            .map(|s| {
                vec![
                    s.volume.clone(),
                    s.tag.clone(),
                    format_size(s.size),
                    time_text(&s.created_at),
                    if s.sealed { "yes" } else { "pending" }.to_string(),
                ]
            })
            .collect(),
    );
}

pub(super) fn hydration_line(h: &Hydration) -> String {
    format!(
        "local: {} of {} ({:.1}%){}{}",
        format_size(h.local_bytes),
        format_size(h.total_bytes),
        h.fraction * 100.0,
        if h.warming { ", warming" } else { "" },
        h.warm_error
            .as_deref()
            .map(|e| format!(" (last warm: {e})"))
            .unwrap_or_default()
    )
}

pub(super) fn gc_summary(r: &GcReport) -> String {
    format!(
        "{verb} {ro} objects ({rb}) of {so} scanned ({sb}); {mo} reachable ({mb}) from {roots} roots; \
         kept {yo} unreachable objects ({yb}) newer than the cutoff; dropped {stale} stale index entries; \
         took {ms} ms (mark {mark} ms, mark set {set})",
        verb = if r.dry_run { "would reclaim" } else { "reclaimed" },
        ro = r.reclaimed_objects,
        rb = format_size(r.reclaimed_bytes),
        so = r.scanned_objects,
        sb = format_size(r.scanned_bytes),
        mo = r.marked_objects,
        mb = format_size(r.marked_bytes),
        roots = r.roots,
        yo = r.skipped_young_objects,
        yb = format_size(r.skipped_young_bytes),
        stale = r.stale_index_entries,
        ms = r.duration_ms,
        mark = r.mark_ms,
        set = format_size(r.mark_set_bytes),
    )
}

/// One line of a running GC's progress.
pub(super) fn gc_progress_line(p: &GcProgress) -> String {
    format!(
        "gc: {phase} after {secs:.1} s: {marked} objects marked from {roots} roots, {scanned} listed, \
         {planned} planned ({pb}), {verb} {reclaimed} ({rb})",
        phase = p.phase,
        secs = p.elapsed_ms as f64 / 1000.0,
        marked = p.marked_objects,
        roots = p.roots,
        scanned = p.scanned_objects,
        planned = p.planned_objects,
        pb = format_size(p.planned_bytes),
        verb = if p.dry_run { "dry run, deleted" } else { "deleted" },
        reclaimed = p.reclaimed_objects,
        rb = format_size(p.reclaimed_bytes),
    )
}

/// Prints progress to stderr at most once a second.
pub(super) struct Progress {
    pub(super) started: Instant,
    last: Instant,
    total: Option<u64>,
    label: &'static str,
}

impl Progress {
    pub(super) fn new(label: &'static str, total: Option<u64>) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            total,
            label,
        }
    }

    pub(super) fn update(&mut self, done: u64, force: bool) {
        if !force && self.last.elapsed().as_millis() < 1000 {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs / (1 << 20) as f64;
        match self.total {
            Some(total) if total > 0 => eprintln!(
                "{}: {} of {} ({:.0}%), {:.1} MiB/s",
                self.label,
                format_size(done),
                format_size(total),
                done as f64 * 100.0 / total as f64,
                rate
            ),
            _ => eprintln!("{}: {}, {:.1} MiB/s", self.label, format_size(done), rate),
        }
    }
}
