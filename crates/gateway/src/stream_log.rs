//! Resumable SSE streams for legacy (2025-11-25) clients.
//!
//! A POST answered with SSE is written into a [`StreamLog`] kept in the client's session rather
//! than straight into the HTTP response. The response reads the log: first a priming event (an
//! event id with empty data, plus `retry`), then every message with the id `{stream}-{n}`. If the
//! connection drops, the call goes on (in the legacy era a disconnect is not a cancellation) and
//! the client resumes with `GET` + `Last-Event-ID`, which replays what it missed and follows the
//! rest. Logs are bounded in messages and bytes; a call that overflows its log is cancelled.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::Stream;
use portcullis_core::envelope::Envelope;
use tokio::sync::Notify;

/// Most messages one stream may hold.
pub const MAX_MESSAGES: usize = 4096;
/// Most bytes one stream may hold.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;
/// Most logs a session keeps; the oldest finished one goes first.
pub const MAX_LOGS_PER_SESSION: usize = 32;

/// The messages of one POST stream, replayable by index.
#[derive(Debug, Default)]
pub struct StreamLog {
    state: Mutex<LogState>,
    /// Woken on every append and on finish.
    changed: Notify,
}

#[derive(Debug, Default)]
struct LogState {
    messages: Vec<Arc<Envelope>>,
    bytes: usize,
    finished: bool,
}

impl StreamLog {
    /// Appends a message; false when the log is full or finished (the writer should stop).
    pub fn push(&self, message: Envelope) -> bool {
        let size = message.to_bytes().len();
        let mut state = self.state.lock().expect("poisoned");
        if state.finished || state.messages.len() >= MAX_MESSAGES || state.bytes + size > MAX_BYTES
        {
            return false;
        }
        state.bytes += size;
        state.messages.push(Arc::new(message));
        drop(state);
        self.changed.notify_waiters();
        true
    }

    /// Appends the final message and closes the log.
    pub fn finish(&self, message: Envelope) {
        let mut state = self.state.lock().expect("poisoned");
        if !state.finished {
            state.messages.push(Arc::new(message));
            state.finished = true;
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Closes the log without a final message (the call was abandoned).
    pub fn abandon(&self) {
        self.state.lock().expect("poisoned").finished = true;
        self.changed.notify_waiters();
    }

    pub fn is_finished(&self) -> bool {
        self.state.lock().expect("poisoned").finished
    }

    /// Messages from index `from` on, as (index, message), ending when the log is finished and
    /// everything has been read.
    pub fn read_from(
        self: Arc<Self>,
        from: usize,
    ) -> impl Stream<Item = (usize, Arc<Envelope>)> + Send + 'static {
        futures::stream::unfold((self, from), |(log, next)| async move {
            let step = loop {
                let notified = log.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                match log.step(next) {
                    Step::Wait => notified.await,
                    other => break other,
                }
            };
            match step {
                Step::Item(message) => Some(((next, message), (log, next + 1))),
                Step::End | Step::Wait => None,
            }
        })
    }

    fn step(&self, next: usize) -> Step {
        let state = self.state.lock().expect("poisoned");
        match state.messages.get(next) {
            Some(message) => Step::Item(message.clone()),
            None if state.finished => Step::End,
            None => Step::Wait,
        }
    }
}

/// What a reader finds at its position.
enum Step {
    Item(Arc<Envelope>),
    End,
    Wait,
}

/// A session's logs, by stream number.
#[derive(Debug, Default)]
pub struct StreamLogs {
    logs: Mutex<VecDeque<(u64, Arc<StreamLog>)>>,
    next: std::sync::atomic::AtomicU64,
}

impl StreamLogs {
    /// Opens a new log; evicts the oldest finished one (or the oldest) beyond the bound.
    pub fn open(&self) -> (u64, Arc<StreamLog>) {
        let number = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let log = Arc::new(StreamLog::default());
        let mut logs = self.logs.lock().expect("poisoned");
        if logs.len() >= MAX_LOGS_PER_SESSION {
            let victim = logs.iter().position(|(_, l)| l.is_finished()).unwrap_or(0);
            if let Some((_, evicted)) = logs.remove(victim) {
                evicted.abandon();
            }
        }
        logs.push_back((number, log.clone()));
        (number, log)
    }

    pub fn get(&self, number: u64) -> Option<Arc<StreamLog>> {
        self.logs
            .lock()
            .expect("poisoned")
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, l)| l.clone())
    }

    /// Forgets a log that has been read to its end.
    pub fn remove(&self, number: u64) {
        self.logs
            .lock()
            .expect("poisoned")
            .retain(|(n, _)| *n != number);
    }
}

/// `{stream}-{index}` event ids; index 0 is the priming event, message `i` has index `i + 1`.
pub fn event_id(stream: u64, index: usize) -> String {
    format!("{stream}-{index}")
}

/// Parses a `Last-Event-ID` into (stream, index).
pub fn parse_event_id(id: &str) -> Option<(u64, usize)> {
    let (stream, index) = id.split_once('-')?;
    Some((stream.parse().ok()?, index.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use portcullis_core::envelope::to_raw;

    fn message(n: u64) -> Envelope {
        Envelope::notification(
            "notifications/progress",
            Some(to_raw(&serde_json::json!({ "progress": n }))),
        )
    }

    #[tokio::test]
    async fn a_reader_that_joins_late_gets_everything_after_its_position() {
        let log = Arc::new(StreamLog::default());
        assert!(log.push(message(1)));
        assert!(log.push(message(2)));
        let reader = log.clone().read_from(1);
        let writer = log.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            writer.finish(message(3));
        });
        let got: Vec<usize> = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            reader.map(|(i, _)| i).collect(),
        )
        .await
        .expect("reader ends when the log finishes");
        assert_eq!(got, vec![1, 2]);
        assert!(!log.push(message(4)), "a finished log takes nothing more");
    }

    #[test]
    fn logs_are_bounded_in_messages() {
        let log = StreamLog::default();
        for n in 0..MAX_MESSAGES as u64 {
            assert!(log.push(message(n)));
        }
        assert!(!log.push(message(0)));
    }

    #[test]
    fn sessions_keep_a_bounded_number_of_logs() {
        let logs = StreamLogs::default();
        let (first, first_log) = logs.open();
        for _ in 0..MAX_LOGS_PER_SESSION {
            logs.open();
        }
        assert!(logs.get(first).is_none());
        assert!(
            first_log.is_finished(),
            "an evicted log is abandoned so its readers end"
        );
    }

    #[test]
    fn event_ids_round_trip() {
        assert_eq!(parse_event_id(&event_id(7, 3)), Some((7, 3)));
        assert_eq!(parse_event_id("x-1"), None);
        assert_eq!(parse_event_id("7"), None);
    }
}
