//! The span queue and the task that POSTs it to the OTLP receiver.
//!
//! The data plane only ever calls [`Queue::push`]: a short lock, and the spans are either queued
//! or, when `max_queued_spans` are already waiting, dropped and counted. It never waits on the
//! network and the queue never grows past its bound. One task takes up to `batch_size` spans
//! every `interval` (sooner when a full batch is waiting) and sends them; a batch the receiver
//! does not acknowledge (2xx) is dropped and counted — traces are best-effort, unlike the audit
//! trail. At shutdown the task sends what is queued, within a deadline.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use portcullis_config::telemetry::TracesConfig;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::otlp;

/// Longest time shutdown spends sending what is queued.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);
/// Most bytes of a refusal's body kept for the log.
const ERROR_BODY_BYTES: usize = 512;

/// Why spans were dropped (label of `portcullis_trace_spans_dropped_total`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `queue_full` or `export_failed`.
    pub reason: &'static str,
}

/// The exporter's series in `/metrics`.
#[derive(Clone, Default)]
pub struct TraceMetrics {
    pub exported: Counter,
    pub dropped: Family<ReasonLabel, Counter>,
    pub queued: Gauge,
}

impl TraceMetrics {
    /// Registers the series with the gateway's metrics.
    pub fn register(&self, metrics: &crate::metrics::Metrics) {
        metrics.register(
            "trace_spans_exported",
            "Spans the OTLP traces receiver acknowledged",
            self.exported.clone(),
        );
        metrics.register(
            "trace_spans_dropped",
            "Spans dropped: the queue was full (receiver slow or down) or the receiver refused them",
            self.dropped.clone(),
        );
        metrics.register(
            "trace_spans_queued",
            "Spans waiting to be sent to the OTLP traces receiver",
            self.queued.clone(),
        );
    }

    fn drop_spans(&self, reason: &'static str, n: usize) {
        self.dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n as u64);
    }
}

/// Finished spans waiting to be sent. Bounded by `max_spans`.
pub struct Queue {
    spans: Mutex<VecDeque<otlp::Span>>,
    max_spans: usize,
    batch_size: usize,
    /// Woken when a full batch is waiting.
    wake: Notify,
    metrics: TraceMetrics,
}

impl Queue {
    pub fn new(max_spans: usize, batch_size: usize, metrics: TraceMetrics) -> Queue {
        Queue {
            spans: Mutex::new(VecDeque::new()),
            max_spans,
            batch_size,
            wake: Notify::new(),
            metrics,
        }
    }

    /// Queues the spans of one request, all or none: never blocks, never exceeds the bound.
    pub fn push(&self, spans: Vec<otlp::Span>) {
        let n = spans.len();
        let mut queue = self.spans.lock().expect("poisoned");
        if queue.len() + n > self.max_spans {
            drop(queue);
            self.metrics.drop_spans("queue_full", n);
            return;
        }
        queue.extend(spans);
        let len = queue.len();
        drop(queue);
        self.metrics.queued.set(len as i64);
        if len >= self.batch_size {
            self.wake.notify_one();
        }
    }

    /// Up to one batch from the front of the queue.
    pub(crate) fn take(&self) -> Vec<otlp::Span> {
        let mut queue = self.spans.lock().expect("poisoned");
        let n = queue.len().min(self.batch_size);
        let batch: Vec<otlp::Span> = queue.drain(..n).collect();
        self.metrics.queued.set(queue.len() as i64);
        batch
    }
}

/// Sends batches to the receiver.
pub struct Sender {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    service_name: String,
    timeout: Duration,
    interval: Duration,
    /// The last POST failed (log the first failure at warn, the following ones at debug).
    failing: AtomicBool,
}

impl Sender {
    pub fn new(config: &TracesConfig) -> Sender {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &config.headers {
            // Names and values were checked by the config; a value that still does not fit
            // is left out with a warning rather than sent half-formed.
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value.expose()),
            ) {
                (Ok(name), Ok(mut value)) => {
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
                _ => {
                    tracing::warn!(header = %name, "telemetry header left out: not a valid header")
                }
            }
        }
        Sender {
            client: crate::upstream::http::http_client(),
            url: config.url.clone(),
            headers,
            service_name: config.service_name.clone(),
            timeout: config.timeout,
            interval: config.interval,
            failing: AtomicBool::new(false),
        }
    }

    /// Sends one batch; counts it as exported or dropped.
    async fn send(&self, batch: &[otlp::Span], metrics: &TraceMetrics) {
        let body = otlp::encode(&self.service_name, batch);
        let result = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .timeout(self.timeout)
            .body(body)
            .send()
            .await;
        let problem = match result {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let text: String = text.chars().take(ERROR_BODY_BYTES).collect();
                Some(format!("receiver answered {status}: {text}"))
            }
            Err(error) => Some(error.to_string()),
        };
        match problem {
            None => {
                metrics.exported.inc_by(batch.len() as u64);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %self.url, "OTLP traces receiver reachable again");
                }
            }
            Some(problem) => {
                metrics.drop_spans("export_failed", batch.len());
                if self.failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!(url = %self.url, %problem, spans = batch.len(), "spans not exported");
                } else {
                    tracing::warn!(url = %self.url, %problem, spans = batch.len(), "spans not exported; dropping them until the receiver answers");
                }
            }
        }
    }
}

/// The export loop: a batch every `interval` or as soon as one is full; on `stop` (which also
/// interrupts a POST in progress: a hanging receiver must not hold the shutdown), what is
/// queued within [`SHUTDOWN_FLUSH`], then return.
pub async fn run(queue: std::sync::Arc<Queue>, sender: Sender, stop: CancellationToken) {
    let mut tick = tokio::time::interval(sender.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'running: loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = queue.wake.notified() => {}
            _ = stop.cancelled() => break 'running,
        }
        // What is waiting now, one batch at a time (later spans wait for the next round).
        for _ in 0..queue.max_spans.div_ceil(queue.batch_size) {
            let batch = queue.take();
            if batch.is_empty() {
                break;
            }
            tokio::select! {
                _ = sender.send(&batch, &queue.metrics) => {}
                _ = stop.cancelled() => {
                    queue.metrics.drop_spans("export_failed", batch.len());
                    break 'running;
                }
            }
            if batch.len() < queue.batch_size {
                break;
            }
        }
    }
    let flush = async {
        loop {
            let batch = queue.take();
            if batch.is_empty() {
                break;
            }
            sender.send(&batch, &queue.metrics).await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_FLUSH, flush).await.is_err() {
        tracing::warn!("spans still queued at shutdown were not exported in time");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(n: u64) -> otlp::Span {
        otlp::Span {
            trace_id: [7; 16],
            span_id: n.to_be_bytes(),
            parent_span_id: None,
            name: "x",
            kind: otlp::KIND_INTERNAL,
            start_time_unix_nano: n,
            end_time_unix_nano: n,
            attributes: vec![],
            status: None,
        }
    }

    #[test]
    fn a_full_queue_drops_whole_requests_and_counts_them() {
        let metrics = TraceMetrics::default();
        let queue = Queue::new(5, 2, metrics.clone());
        queue.push(vec![span(1), span(2), span(3)]);
        queue.push(vec![span(4), span(5), span(6)]); // would make 6 > 5
        queue.push(vec![span(7), span(8)]);
        assert_eq!(queue.spans.lock().unwrap().len(), 5);
        assert_eq!(
            metrics
                .dropped
                .get_or_create(&ReasonLabel {
                    reason: "queue_full"
                })
                .get(),
            3
        );
        assert_eq!(metrics.queued.get(), 5);
        let first = queue.take();
        assert_eq!(first.len(), 2, "one batch at a time");
        assert_eq!(first[0].span_id, 1u64.to_be_bytes());
        assert_eq!(queue.take().len(), 2);
        assert_eq!(queue.take().len(), 1);
        assert!(queue.take().is_empty());
        assert_eq!(metrics.queued.get(), 0);
    }
}
