//! The audit events: read back with bounded scans.

use super::*;

impl Engine {
    /// Audit events of `ns` (of one volume with `volume`), oldest first,
    /// from event number `since_seq` and time `since_time` on: at most
    /// `limit`, or with `tail` the last `tail` matches. The catalog is read
    /// page by page and filtered as it goes, so memory is bounded by the
    /// answer, and without `tail` the scan stops at `limit` matches.
    pub fn events_matching(
        &self,
        ns: &Namespace,
        volume: Option<&str>,
        since_seq: u64,
        since_time: Option<time::OffsetDateTime>,
        limit: usize,
        tail: Option<usize>,
    ) -> Result<Vec<Event>> {
        let keep = tail.unwrap_or(limit).min(limit);
        let mut out = std::collections::VecDeque::new();
        let mut from = since_seq;
        loop {
            let page = self.backend.catalog.events(from, 1024)?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            let full = page.len() == 1024;
            for e in page {
                if &e.namespace != ns
                    || volume.is_some_and(|v| e.volume.as_deref() != Some(v))
                    || since_time.is_some_and(|t| e.time < t)
                {
                    continue;
                }
                out.push_back(e);
                if out.len() > keep {
                    // Only with a tail: keep the newest.
                    out.pop_front();
                }
                if tail.is_none() && out.len() == keep {
                    return Ok(out.into());
                }
            }
            if !full {
                break;
            }
        }
        Ok(out.into())
    }

    /// Events of `ns` (or of one volume) from `since_seq` on, at most `limit`.
    pub fn events(
        &self,
        ns: &Namespace,
        volume: Option<&str>,
        since_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.events_matching(ns, volume, since_seq, None, limit, None)
    }
}
