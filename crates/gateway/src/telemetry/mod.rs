//! OpenTelemetry traces of governed requests, exported over OTLP/HTTP JSON (`telemetry:`).
//!
//! One server span `mcp.request` per governed request, with a child span per phase:
//! `authenticate`, `admit` (kill switches, task tokens, rate limits), `policy`, `scan.request`,
//! `approval.hold`, `audit.decision`, `upstream` (a client span), `scan.response`,
//! `audit.outcome`. Ids are the W3C ones `audit_trail::trace` already chose: the trace id is the
//! client's (or a minted one), the server span's parent is the client's span id, and the
//! `upstream` span's id is the parent id the upstream receives in `params._meta.traceparent`, so
//! the upstream's own spans nest under it: client → gateway phases → upstream is one trace.
//!
//! Sampling is parent-based: a request with a valid `traceparent` is recorded when its sampled
//! flag is set; a trace the gateway starts is recorded with probability `sample_ratio` (decided
//! from the trace id's random low 64 bits).
//!
//! Cost: with tracing off (or a request not sampled) a [`RequestSpan`] is `None` and every hook
//! is a branch on it — no allocation, no lock, no clock read. A recorded request takes one
//! `Arc`, a short mutex per phase mark, and one push onto the bounded [`exporter::Queue`] when
//! its last holder drops it.
//!
//! Where the hooks sit: `proxy/audit.rs::CallRecord` owns the request's span (started in
//! `begin`, phases marked with `CallRecord::phase` from `proxy/mod.rs`, closed with the
//! denial or outcome record); `proxy/forward.rs` marks `scan.response` on the span it reads with
//! [`SpanRef::current`] (set around the forward phase by [`RequestSpan::scoped`]);
//! `edge/mcp.rs` times authentication with [`edge_scope`].

pub mod exporter;
pub mod otlp;

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use portcullis_audit::{AuditEvent, Outcome};
use portcullis_config::telemetry::TelemetryConfig;
use rand::RngCore;
use tokio_util::sync::CancellationToken;

use crate::audit_trail::trace::TraceParent;
use otlp::KeyValue;

/// The gateway's tracer: off (`None`) unless `telemetry.otlp_traces` is set. Cheap to clone.
#[derive(Clone, Default)]
pub struct Telemetry(Option<Arc<Tracer>>);

struct Tracer {
    queue: Arc<exporter::Queue>,
    /// Gateway-started traces whose low 64 bits are below this are recorded (`u64::MAX` and
    /// `always` for a ratio of 1).
    threshold: u64,
    always: bool,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Telemetry {
    /// Starts the exporter task when `config` turns tracing on (needs a Tokio runtime) and
    /// registers its metrics.
    pub fn start(config: &TelemetryConfig, metrics: &crate::metrics::Metrics) -> Telemetry {
        let Some(traces) = &config.traces else {
            return Telemetry(None);
        };
        let trace_metrics = exporter::TraceMetrics::default();
        trace_metrics.register(metrics);
        let queue = Arc::new(exporter::Queue::new(
            traces.max_queued_spans,
            traces.batch_size,
            trace_metrics,
        ));
        let stop = CancellationToken::new();
        let task = tokio::spawn(exporter::run(
            queue.clone(),
            exporter::Sender::new(traces),
            stop.clone(),
        ));
        tracing::info!(url = %traces.url, sample_ratio = traces.sample_ratio, "OpenTelemetry traces on");
        Telemetry(Some(Arc::new(Tracer {
            queue,
            threshold: (traces.sample_ratio * u64::MAX as f64) as u64,
            always: traces.sample_ratio >= 1.0,
            stop,
            task: Mutex::new(Some(task)),
        })))
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Now, when tracing is on (the edge's arrival time of a request, for [`edge_scope`]).
    pub fn received(&self) -> Option<Instant> {
        self.0.as_ref().map(|_| Instant::now())
    }

    /// Sends what is queued (within a few seconds) and stops the exporter. Spans finished
    /// afterwards are dropped.
    pub async fn shutdown(&self) {
        let Some(tracer) = &self.0 else { return };
        tracer.stop.cancel();
        let task = tracer.task.lock().expect("poisoned").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

tokio::task_local! {
    /// When the edge received the request and when authentication was done.
    static EDGE: EdgeTiming;
    /// The span of the request being forwarded (for `proxy/forward.rs`).
    static CURRENT: SpanRef;
}

/// The edge's part of a request: received at `received`, authenticated at `authenticated`.
#[derive(Clone, Copy)]
struct EdgeTiming {
    received: Instant,
    authenticated: Instant,
}

/// Runs `handler` (the rest of a request the edge has just authenticated) with the edge's
/// timing, so the request's span starts when the request arrived (`received`, from
/// [`Telemetry::received`]) and has an `authenticate` child. A plain await when tracing is off.
pub async fn edge_scope<F: Future>(received: Option<Instant>, handler: F) -> F::Output {
    let Some(received) = received else {
        return handler.await;
    };
    let timing = EdgeTiming {
        received,
        authenticated: Instant::now(),
    };
    EDGE.scope(timing, handler).await
}

/// The trace of one governed request, owned by its `proxy::audit::CallRecord`; `None` when
/// tracing is off or the trace is not sampled. It ends when dropped; the spans are queued when
/// the last [`SpanRef`] to it is gone too.
#[derive(Default)]
pub struct RequestSpan(SpanRef);

/// Another holder of a request's span, for phases marked outside the `CallRecord` (the forward
/// phase, possibly in a task of its own). Cheap to clone.
#[derive(Clone, Default)]
pub struct SpanRef(Option<Arc<Active>>);

struct Active {
    queue: Arc<exporter::Queue>,
    trace_id: otlp::TraceId,
    span_id: otlp::SpanId,
    /// The client's span id, when it sent a `traceparent`.
    parent_id: Option<otlp::SpanId>,
    /// The `upstream` span's id: the parent id in the upstream's `traceparent`.
    upstream_id: otlp::SpanId,
    /// Wall-clock nanoseconds at `origin`; other times are `origin` + monotonic offsets.
    origin_unix_nanos: u64,
    origin: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    phases: Vec<Phase>,
    current: Option<Phase>,
    end: Option<Instant>,
    attributes: Vec<KeyValue>,
    annotated: bool,
    /// Error status message of the request span.
    error: Option<String>,
}

struct Phase {
    name: &'static str,
    start: Instant,
    end: Instant,
    error: Option<String>,
}

impl RequestSpan {
    /// Starts the span of a request whose incoming trace context was `incoming` (None: the
    /// gateway started the trace) and whose upstream hop is `hop` (what
    /// `params._meta.traceparent` now says). `request_id` is the JSON-RPC id as written.
    pub fn start(
        telemetry: &Telemetry,
        incoming: Option<&TraceParent>,
        hop: &TraceParent,
        request_id: Option<&str>,
    ) -> RequestSpan {
        let Some(tracer) = &telemetry.0 else {
            return RequestSpan::default();
        };
        let sampled = match incoming {
            Some(parent) => u8::from_str_radix(&parent.flags, 16).is_ok_and(|f| f & 1 == 1),
            None => {
                tracer.always
                    || u64::from_str_radix(&hop.trace_id[16..], 16)
                        .is_ok_and(|low| low < tracer.threshold)
            }
        };
        if !sampled {
            return RequestSpan::default();
        }
        let now = Instant::now();
        let edge = EDGE.try_with(|timing| *timing).ok();
        let origin = edge.map_or(now, |e| e.received);
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(now.saturating_duration_since(origin));
        let mut state = State::default();
        if let Some(edge) = edge {
            state.phases.push(Phase {
                name: "authenticate",
                start: edge.received,
                end: edge.authenticated,
                error: None,
            });
        }
        if let Some(id) = request_id {
            state.attributes.push(KeyValue::string(
                "rpc.jsonrpc.request_id",
                id.trim_matches('"'),
            ));
        }
        // The ids were validated by `TraceParent::parse` / made by `mint`; a value that still
        // does not decode leaves the request unrecorded rather than with a wrong id.
        let (Some(trace_id), Some(upstream_id)) = (id(&hop.trace_id), id(&hop.parent_id)) else {
            return RequestSpan::default();
        };
        RequestSpan(SpanRef(Some(Arc::new(Active {
            queue: tracer.queue.clone(),
            trace_id,
            span_id: random_span_id(),
            parent_id: incoming.and_then(|p| id(&p.parent_id)),
            upstream_id,
            origin_unix_nanos: u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX),
            origin,
            state: Mutex::new(state),
        }))))
    }

    /// Is this request recorded?
    pub fn is_recording(&self) -> bool {
        self.0.0.is_some()
    }

    /// Ends the current phase (if any) and starts `name`.
    pub fn phase(&self, name: &'static str) {
        self.0.phase(name);
    }

    /// Ends the current phase, if any.
    pub fn end_phase(&self) {
        self.0.end_phase();
    }

    /// Another handle on this span (see [`SpanRef`]).
    pub fn handle(&self) -> SpanRef {
        self.0.clone()
    }

    /// Sets the request's attributes from `event` (its denial or outcome record) and, with
    /// `error` (code, message; an empty message says only the code), an error status on the
    /// request and on the phase in progress. The first call counts.
    pub fn annotate(&self, event: &AuditEvent, error: Option<(i64, &str)>) {
        let Some(active) = &self.0.0 else { return };
        let mut state = active.state.lock().expect("poisoned");
        if state.annotated {
            return;
        }
        state.annotated = true;
        if let Some((code, message)) = error {
            let message = if message.is_empty() {
                format!("JSON-RPC error {code}")
            } else {
                format!("{code}: {message}")
            };
            if let Some(phase) = &mut state.current {
                phase.error = Some(message.clone());
            }
            state.error = Some(message);
            state
                .attributes
                .push(KeyValue::int("rpc.jsonrpc.error_code", code));
        }
        let attributes = &mut state.attributes;
        let mut put = |key: &'static str, value: &Option<String>| {
            if let Some(value) = value {
                attributes.push(KeyValue::string(key, value.as_str()));
            }
        };
        put("mcp.method", &event.method);
        put("mcp.server", &event.server);
        put("mcp.tool", &event.tool);
        put("mcp.session.id", &event.session);
        put("mcp.protocol.version", &event.client_era);
        put("portcullis.agent", &event.principal.agent);
        put("enduser.id", &event.principal.user);
        put("portcullis.decision", &event.decision);
        put("portcullis.rule", &event.rule_id);
        put("portcullis.approval_ref", &event.approval_ref);
        let outcome = if error.is_some() || matches!(event.outcome, Some(Outcome::Error { .. })) {
            "error"
        } else {
            "ok"
        };
        attributes.push(KeyValue::string("portcullis.outcome", outcome));
        if !event.findings.is_empty() {
            attributes.push(KeyValue::int(
                "portcullis.findings",
                i64::try_from(event.findings.len()).unwrap_or(i64::MAX),
            ));
        }
    }

    /// Runs `future` with this span as [`SpanRef::current`]. A plain await when not recording.
    pub async fn scoped<F: Future>(&self, future: F) -> F::Output {
        if !self.is_recording() {
            return future.await;
        }
        CURRENT.scope(self.handle(), future).await
    }
}

impl Drop for RequestSpan {
    /// The request's span ends with its owner; later phase marks are ignored.
    fn drop(&mut self) {
        if let Some(active) = &self.0.0 {
            let now = Instant::now();
            let mut state = active.state.lock().unwrap_or_else(|e| e.into_inner());
            state.end_phase(now);
            state.end.get_or_insert(now);
        }
    }
}

impl SpanRef {
    /// The span of the request being forwarded (set by [`RequestSpan::scoped`]); a handle on
    /// nothing outside one.
    pub fn current() -> SpanRef {
        CURRENT.try_with(Clone::clone).unwrap_or_default()
    }

    /// Ends the current phase (if any) and starts `name`.
    pub fn phase(&self, name: &'static str) {
        if let Some(active) = &self.0 {
            let now = Instant::now();
            let mut state = active.state.lock().expect("poisoned");
            if state.end.is_some() {
                return; // the request's span has ended
            }
            state.end_phase(now);
            state.current = Some(Phase {
                name,
                start: now,
                end: now,
                error: None,
            });
        }
    }

    /// Ends the current phase, if any.
    pub fn end_phase(&self) {
        if let Some(active) = &self.0 {
            let now = Instant::now();
            active.state.lock().expect("poisoned").end_phase(now);
        }
    }
}

impl State {
    fn end_phase(&mut self, now: Instant) {
        if let Some(mut phase) = self.current.take() {
            phase.end = now;
            self.phases.push(phase);
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let mut state = std::mem::take(self.state.get_mut().unwrap_or_else(|e| e.into_inner()));
        // Not closed (the request was abandoned): it ends now, with its phase in progress.
        let end = state.end.unwrap_or_else(Instant::now);
        state.end_phase(end);
        let nanos = |at: Instant| {
            self.origin_unix_nanos.saturating_add(
                u64::try_from(at.saturating_duration_since(self.origin).as_nanos())
                    .unwrap_or(u64::MAX),
            )
        };
        let mut spans = Vec::with_capacity(state.phases.len() + 2);
        for phase in state.phases {
            let upstream = phase.name == "upstream";
            spans.push(otlp::Span {
                trace_id: self.trace_id,
                span_id: if upstream {
                    self.upstream_id
                } else {
                    random_span_id()
                },
                parent_span_id: Some(self.span_id),
                name: phase.name,
                kind: if upstream {
                    otlp::KIND_CLIENT
                } else {
                    otlp::KIND_INTERNAL
                },
                start_time_unix_nano: nanos(phase.start),
                end_time_unix_nano: nanos(phase.end.max(phase.start)),
                attributes: Vec::new(),
                status: phase.error.map(|message| otlp::Status {
                    code: otlp::STATUS_ERROR,
                    message,
                }),
            });
        }
        spans.push(otlp::Span {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_id,
            name: "mcp.request",
            kind: otlp::KIND_SERVER,
            start_time_unix_nano: self.origin_unix_nanos,
            end_time_unix_nano: nanos(end),
            attributes: state.attributes,
            status: state.error.map(|message| otlp::Status {
                code: otlp::STATUS_ERROR,
                message,
            }),
        });
        self.queue.push(spans);
    }
}

/// A random span id, not all zero.
fn random_span_id() -> otlp::SpanId {
    let mut bytes = [0u8; 8];
    loop {
        rand::rng().fill_bytes(&mut bytes);
        if bytes.iter().any(|b| *b != 0) {
            return bytes;
        }
    }
}

/// The bytes of a hex id.
fn id<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracer with sampling `ratio` whose spans stay in the returned queue (no exporter).
    fn tracer(ratio: f64) -> (Telemetry, Arc<exporter::Queue>) {
        let queue = Arc::new(exporter::Queue::new(
            1000,
            100,
            exporter::TraceMetrics::default(),
        ));
        let telemetry = Telemetry(Some(Arc::new(Tracer {
            queue: queue.clone(),
            threshold: (ratio * u64::MAX as f64) as u64,
            always: ratio >= 1.0,
            stop: CancellationToken::new(),
            task: Mutex::new(None),
        })));
        (telemetry, queue)
    }

    fn tp(trace_id: &str, parent_id: &str, flags: &str) -> TraceParent {
        TraceParent {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: flags.to_owned(),
        }
    }

    #[test]
    fn tracing_off_records_nothing() {
        let hop = TraceParent::mint();
        let span = RequestSpan::start(&Telemetry::default(), None, &hop, Some("1"));
        assert!(!span.is_recording());
        span.phase("policy");
        span.annotate(
            &AuditEvent::new(portcullis_audit::RecordKind::Call, 0),
            None,
        );
        assert!(span.handle().0.is_none());
    }

    #[test]
    fn sampling_follows_the_parent_flag_then_the_ratio() {
        let (telemetry, _) = tracer(0.5);
        let low = tp("0123456789abcdef0000000000000001", "1111111111111111", "01");
        let high = tp("0123456789abcdefffffffffffffff01", "1111111111111111", "01");
        // Gateway-started traces: by the trace id's low 64 bits against the ratio.
        assert!(RequestSpan::start(&telemetry, None, &low, None).is_recording());
        assert!(!RequestSpan::start(&telemetry, None, &high, None).is_recording());
        // A client's trace: its sampled flag decides, whatever the ratio.
        let (never, _) = tracer(0.0);
        let sampled = tp("0123456789abcdefffffffffffffff01", "2222222222222222", "01");
        let unsampled = tp("0123456789abcdef0000000000000001", "2222222222222222", "00");
        assert!(RequestSpan::start(&never, Some(&sampled), &high, None).is_recording());
        assert!(!RequestSpan::start(&telemetry, Some(&unsampled), &low, None).is_recording());
    }

    #[test]
    fn phases_become_children_and_the_span_is_queued_when_the_last_holder_goes() {
        let (telemetry, queue) = tracer(1.0);
        let incoming = tp("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01");
        let hop = incoming.child();
        let span = RequestSpan::start(&telemetry, Some(&incoming), &hop, Some("\"abc\""));
        span.phase("admit");
        span.phase("upstream");
        let forward = span.handle();
        forward.phase("scan.response");
        forward.end_phase();
        let mut event = AuditEvent::new(portcullis_audit::RecordKind::Call, 0);
        event.method = Some("tools/call".into());
        event.rule_id = Some("r1".into());
        span.phase("audit.outcome");
        span.annotate(&event, Some((-32000, "")));
        span.annotate(&event, None); // the first annotation counts
        drop(span);
        forward.phase("late"); // after the request ended: ignored
        assert!(
            queue.take().is_empty(),
            "queued only when the last holder goes"
        );
        drop(forward);
        let spans = queue.take();
        let names: Vec<&str> = spans.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "admit",
                "upstream",
                "scan.response",
                "audit.outcome",
                "mcp.request"
            ]
        );
        let request = spans.last().unwrap();
        assert_eq!(hex::encode(request.trace_id), incoming.trace_id);
        assert_eq!(
            request.parent_span_id.map(hex::encode).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(request.kind, otlp::KIND_SERVER);
        assert_eq!(
            request.status.as_ref().map(|s| s.message.as_str()),
            Some("JSON-RPC error -32000")
        );
        let json = serde_json::to_value(&request.attributes).unwrap();
        assert!(
            json.to_string().contains(r#""stringValue":"abc""#),
            "{json}"
        );
        assert!(
            json.to_string().contains(r#""key":"portcullis.rule""#),
            "{json}"
        );
        let upstream = &spans[1];
        assert_eq!(hex::encode(upstream.span_id), hop.parent_id);
        assert_eq!(upstream.kind, otlp::KIND_CLIENT);
        // The phase in progress at the error carries it; the others do not.
        assert!(spans[3].status.is_some());
        assert!(spans[..3].iter().all(|s| s.status.is_none()));
        for child in &spans[..4] {
            assert_eq!(child.parent_span_id, Some(request.span_id));
            assert!(child.start_time_unix_nano >= request.start_time_unix_nano);
            assert!(child.end_time_unix_nano <= request.end_time_unix_nano);
        }
    }
}
