//! The lag board: per sink and chain, how far delivery trails the head of the trail, shared by
//! the pumps (writers) and [`crate::ExportHandle::lag`] (readers, e.g. `/metrics`).
//!
//! Records behind are exact (`head seq - cursor seq`: seqs have no gaps). Seconds behind is
//! the age of the oldest record not yet delivered, computed when read, so it keeps growing
//! while a receiver is down even between two polls.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Export progress of one sink on one chain.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkLag {
    /// The sink's name (config `name`, or `{kind}:{target}`).
    pub sink: String,
    /// `file`, `syslog`, `splunk_hec`, `webhook` or `otlp_logs`.
    pub kind: &'static str,
    /// The audit chain (one per replica). Empty for a sink that has seen no chain yet.
    pub chain_id: String,
    /// Records appended to the chain and not yet acknowledged by the receiver.
    pub records_behind: u64,
    /// Age of the oldest record not yet acknowledged (0 when caught up).
    pub seconds_behind: f64,
    /// Records acknowledged by the receiver since start.
    pub delivered_total: u64,
    /// Failed delivery attempts since start.
    pub failures_total: u64,
    /// Failed attempts since the last success (0 when healthy).
    pub consecutive_failures: u32,
    /// The latest failure, until the next success.
    pub last_error: Option<String>,
    /// Whether this process currently drives the chain for the sink (with several replicas on
    /// PostgreSQL, one holds the lease; the others report the same lag from the database).
    pub active: bool,
}

#[derive(Debug, Clone, Default)]
struct Entry {
    kind: &'static str,
    head_seq: i64,
    cursor_seq: i64,
    oldest_pending_us: Option<i64>,
    delivered: u64,
    failures: u64,
    consecutive: u32,
    last_error: Option<String>,
    active: bool,
}

/// Shared state; every method takes the lock briefly and never across an await.
#[derive(Debug, Default)]
pub(crate) struct LagBoard {
    entries: Mutex<BTreeMap<(String, String), Entry>>,
    /// Sinks by name with their kind, so a sink without chains still shows up.
    sinks: Mutex<BTreeMap<String, &'static str>>,
}

impl LagBoard {
    pub(crate) fn register(&self, sink: &str, kind: &'static str) {
        if let Ok(mut s) = self.sinks.lock() {
            s.insert(sink.to_owned(), kind);
        }
    }

    fn with(&self, sink: &str, chain: &str, f: impl FnOnce(&mut Entry)) {
        let kind = self
            .sinks
            .lock()
            .ok()
            .and_then(|s| s.get(sink).copied())
            .unwrap_or("");
        if let Ok(mut entries) = self.entries.lock() {
            let entry = entries
                .entry((sink.to_owned(), chain.to_owned()))
                .or_insert_with(|| Entry {
                    kind,
                    ..Entry::default()
                });
            f(entry);
        }
    }

    /// Where delivery stands: the chain's head, the cursor, the oldest undelivered record's time.
    pub(crate) fn position(
        &self,
        sink: &str,
        chain: &str,
        head_seq: i64,
        cursor_seq: i64,
        oldest_pending_us: Option<i64>,
        active: bool,
    ) {
        self.with(sink, chain, |e| {
            e.head_seq = head_seq.max(e.head_seq);
            e.cursor_seq = cursor_seq;
            e.oldest_pending_us = if cursor_seq >= e.head_seq {
                None
            } else {
                oldest_pending_us
            };
            e.active = active;
        });
    }

    /// A newer head seen while delivery is stuck.
    pub(crate) fn head(&self, sink: &str, chain: &str, head_seq: i64) {
        self.with(sink, chain, |e| e.head_seq = head_seq.max(e.head_seq));
    }

    /// `n` records acknowledged, the cursor now at `cursor_seq`.
    pub(crate) fn delivered(
        &self,
        sink: &str,
        chain: &str,
        n: u64,
        cursor_seq: i64,
        oldest_pending_us: Option<i64>,
    ) {
        self.with(sink, chain, |e| {
            e.delivered += n;
            e.cursor_seq = cursor_seq;
            e.head_seq = e.head_seq.max(cursor_seq);
            e.oldest_pending_us = if cursor_seq >= e.head_seq {
                None
            } else {
                oldest_pending_us
            };
            e.consecutive = 0;
            e.last_error = None;
            e.active = true;
        });
    }

    /// A failed attempt.
    pub(crate) fn failed(&self, sink: &str, chain: &str, error: &str) {
        self.with(sink, chain, |e| {
            e.failures += 1;
            e.consecutive = e.consecutive.saturating_add(1);
            e.last_error = Some(error.to_owned());
        });
    }

    /// A snapshot, with seconds behind computed against `now_us`.
    pub(crate) fn snapshot(&self, now_us: i64) -> Vec<SinkLag> {
        let entries = match self.entries.lock() {
            Ok(e) => e.clone(),
            Err(_) => return Vec::new(),
        };
        let sinks = self.sinks.lock().map(|s| s.clone()).unwrap_or_default();
        let mut out = Vec::with_capacity(entries.len());
        for (name, kind) in &sinks {
            let mut any = false;
            for ((sink, chain), e) in entries.range((name.clone(), String::new())..) {
                if sink != name {
                    break;
                }
                any = true;
                out.push(SinkLag {
                    sink: sink.clone(),
                    kind: e.kind,
                    chain_id: chain.clone(),
                    records_behind: u64::try_from(e.head_seq - e.cursor_seq).unwrap_or(0),
                    seconds_behind: e
                        .oldest_pending_us
                        .map(|t| (now_us - t).max(0) as f64 / 1e6)
                        .unwrap_or(0.0),
                    delivered_total: e.delivered,
                    failures_total: e.failures,
                    consecutive_failures: e.consecutive,
                    last_error: e.last_error.clone(),
                    active: e.active,
                });
            }
            if !any {
                out.push(SinkLag {
                    sink: name.clone(),
                    kind,
                    chain_id: String::new(),
                    records_behind: 0,
                    seconds_behind: 0.0,
                    delivered_total: 0,
                    failures_total: 0,
                    consecutive_failures: 0,
                    last_error: None,
                    active: false,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_records_and_ages_the_oldest_pending() {
        let board = LagBoard::default();
        board.register("s", "file");
        board.register("idle", "webhook");
        board.position("s", "c", 10, 4, Some(1_000_000), true);
        board.failed("s", "c", "connection refused");
        let snap = board.snapshot(3_500_000);
        assert_eq!(snap.len(), 2);
        let idle = &snap[0];
        assert_eq!((idle.sink.as_str(), idle.chain_id.as_str()), ("idle", ""));
        let s = &snap[1];
        assert_eq!(s.records_behind, 6);
        assert_eq!(s.seconds_behind, 2.5);
        assert_eq!(s.consecutive_failures, 1);
        assert_eq!(s.last_error.as_deref(), Some("connection refused"));
        // Still behind later: the age grows without another poll.
        assert_eq!(board.snapshot(5_000_000)[1].seconds_behind, 4.0);
        board.delivered("s", "c", 6, 10, None);
        let s = &board.snapshot(6_000_000)[1];
        assert_eq!((s.records_behind, s.seconds_behind), (0, 0.0));
        assert_eq!(
            (s.delivered_total, s.failures_total, s.consecutive_failures),
            (6, 1, 0)
        );
        assert_eq!(s.last_error, None);
        assert_eq!(s.kind, "file");
    }
}
