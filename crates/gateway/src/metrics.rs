//! Prometheus metrics, served on `GET /metrics` of the main listener (OpenMetrics text format,
//! which Prometheus scrapes natively).
//!
//! One [`Metrics`] per gateway: the data plane's own series are fields (updated in place on the
//! call path: one read-locked map lookup and an atomic add per series), gauges that are cheaper
//! to read than to maintain are filled at scrape time by hooks ([`Metrics::on_scrape`]).
//!
//! Registration point for other parts of the gateway (rate limits, export sinks, scanners):
//! build a metric, then `gateway.metrics.register("name", "help", metric.clone())`; keep the
//! clone and update it where the event happens. Names are prefixed with `portcullis_`.
//!
//! Label values that come from the network are bounded: methods outside the MCP method list
//! are counted as `other`, and at most [`MAX_TOOL_SERIES`] distinct tool names get their own
//! series (the rest share `tool="_other"`), so a caller inventing names cannot grow memory.

use std::collections::HashSet;
use std::sync::{Mutex, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// Distinct tool label values before further tools share `_other`.
pub const MAX_TOOL_SERIES: usize = 2_000;

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `portcullis_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Catalog server (`-` for aggregate lists).
    pub server: String,
    /// `{server}__{tool}` for `tools/call`, `-` otherwise.
    pub tool: String,
    /// MCP method (`other` outside the known list).
    pub method: String,
    /// `allow`, `deny`, `approve`, ...
    pub decision: String,
    /// `ok`, `error`, or `refused` (denied before the upstream).
    pub outcome: String,
}

/// Labels of `portcullis_request_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub server: String,
    pub method: String,
}

/// One catalog server.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

/// A record kind (`auth_failure`, `denial`, ...).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

type ScrapeHook = Box<dyn Fn() + Send + Sync>;

/// The gateway's metrics.
pub struct Metrics {
    /// Everything registered (the series below and whatever other modules add).
    registry: Mutex<Registry>,
    /// Run before each scrape to refresh gauges read from elsewhere (sessions, backlogs).
    hooks: Mutex<Vec<ScrapeHook>>,
    /// Tool names that have their own series.
    tools: RwLock<HashSet<String>>,
    /// Governed requests by server, tool, method, decision and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from the gateway receiving a governed request to its answer.
    pub request_duration: Family<LatencyLabels, Histogram>,
    /// 1 when the last call to the server reached it, 0 when it could not be reached.
    pub upstream_up: Family<ServerLabel, Gauge>,
    /// Time until an awaited record was durable (append + group commit).
    pub audit_append: Histogram,
    /// Records appended and not yet in the store's database.
    pub audit_backlog: Gauge,
    /// Appends the store refused (each one failed a call closed or went to the spool).
    pub audit_failures: Counter,
    /// Records written to the local spool instead of the store.
    pub audit_spooled: Counter,
    /// Records waiting in the spool to be replayed into the store.
    pub audit_spool_backlog: Gauge,
    /// Best-effort records (authentication failures, refused server requests) dropped because
    /// the audit queue was full.
    pub audit_dropped: Family<KindLabel, Counter>,
    /// Open legacy sessions.
    pub sessions_active: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Latency buckets, seconds: 50 µs to ~26 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 20)
}

impl Metrics {
    /// The gateway's series, registered.
    pub fn new() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let upstream_up = Family::<ServerLabel, Gauge>::default();
        let audit_append = Histogram::new(latency_buckets());
        let audit_backlog = Gauge::default();
        let audit_failures = Counter::default();
        let audit_spooled = Counter::default();
        let audit_spool_backlog = Gauge::default();
        let audit_dropped = Family::<KindLabel, Counter>::default();
        let sessions_active = Gauge::default();

        let mut registry = Registry::with_prefix("portcullis");
        registry.register(
            "requests",
            "Governed MCP requests by server, tool, method, decision and outcome",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from receiving a governed request to its answer",
            request_duration.clone(),
        );
        registry.register(
            "upstream_up",
            "1 if the last call reached the upstream server, 0 if it could not be reached",
            upstream_up.clone(),
        );
        registry.register(
            "audit_append_seconds",
            "Time until an awaited audit record (decision, denial, outcome) was durable",
            audit_append.clone(),
        );
        registry.register(
            "audit_backlog",
            "Audit records appended and not yet in the store's database (queued, or durable in the SQLite append log)",
            audit_backlog.clone(),
        );
        registry.register(
            "audit_failures",
            "Audit appends the store refused",
            audit_failures.clone(),
        );
        registry.register(
            "audit_spooled",
            "Audit records written to the local spool instead of the store",
            audit_spooled.clone(),
        );
        registry.register(
            "audit_spool_backlog",
            "Audit records in the spool waiting to be replayed into the store",
            audit_spool_backlog.clone(),
        );
        registry.register(
            "audit_dropped",
            "Best-effort audit records dropped because the audit queue was full",
            audit_dropped.clone(),
        );
        registry.register(
            "sessions_active",
            "Open legacy MCP sessions",
            sessions_active.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            hooks: Mutex::new(Vec::new()),
            tools: RwLock::new(HashSet::new()),
            requests,
            request_duration,
            upstream_up,
            audit_append,
            audit_backlog,
            audit_failures,
            audit_spooled,
            audit_spool_backlog,
            audit_dropped,
            sessions_active,
        }
    }

    /// Registers another metric (`portcullis_` is prefixed to `name`). Keep a clone of `metric`
    /// and update it where its events happen.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .expect("poisoned")
            .register(name, help, metric);
    }

    /// Runs `hook` before every scrape (to set gauges from state kept elsewhere).
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks.lock().expect("poisoned").push(Box::new(hook));
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        for hook in self.hooks.lock().expect("poisoned").iter() {
            hook();
        }
        let mut out = String::with_capacity(8 * 1024);
        if encode(&mut out, &self.registry.lock().expect("poisoned")).is_err() {
            out.clear();
        }
        out
    }
}

/// `GET /metrics`: the exposition text (sessions counted at scrape time).
pub async fn scrape(
    axum::extract::State(gateway): axum::extract::State<std::sync::Arc<crate::state::Gateway>>,
    headers: http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // `admin.metrics` names the least admin role a scraper needs (labels name agents, servers
    // and tools); without it the endpoint is open, as Prometheus scrapers usually expect.
    let needed = gateway.runtime().config.admin.metrics_role;
    if let Some(role) = needed
        && let Err(error) = crate::admin::require(&gateway, &headers, role).await
    {
        return error.into_response();
    }
    gateway
        .metrics
        .sessions_active
        .set(i64::try_from(gateway.sessions.len()).unwrap_or(i64::MAX));
    (
        [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
        gateway.metrics.render(),
    )
        .into_response()
}

impl Metrics {
    /// The label for `tool`: itself while fewer than [`MAX_TOOL_SERIES`] tools have series.
    pub fn tool_label(&self, tool: Option<&str>) -> String {
        let Some(tool) = tool else {
            return "-".to_owned();
        };
        if self.tools.read().expect("poisoned").contains(tool) {
            return tool.to_owned();
        }
        let mut tools = self.tools.write().expect("poisoned");
        if tools.len() < MAX_TOOL_SERIES {
            tools.insert(tool.to_owned());
            tool.to_owned()
        } else {
            "_other".to_owned()
        }
    }
}

/// The method label: MCP's request methods as themselves, anything else `other`.
pub fn method_label(method: &str) -> &str {
    const KNOWN: &[&str] = &[
        "tools/call",
        "tools/list",
        "resources/read",
        "resources/list",
        "resources/templates/list",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/get",
        "prompts/list",
        "completion/complete",
        "sampling/createMessage",
        "elicitation/create",
        "roots/list",
    ];
    if KNOWN.contains(&method) {
        method
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_series_and_bounds_labels() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                server: "fx".into(),
                tool: m.tool_label(Some("fx__echo")),
                method: method_label("tools/call").into(),
                decision: "allow".into(),
                outcome: "ok".into(),
            })
            .inc();
        let extra = Counter::<u64>::default();
        m.register(
            "rate_limited",
            "calls refused by rate limits",
            extra.clone(),
        );
        extra.inc_by(3);
        m.on_scrape({
            let g = m.sessions_active.clone();
            move || {
                g.set(7);
            }
        });
        let text = m.render();
        assert!(
            text.contains(r#"portcullis_requests_total{server="fx",tool="fx__echo",method="tools/call",decision="allow",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(text.contains("portcullis_rate_limited_total 3"), "{text}");
        assert!(text.contains("portcullis_sessions_active 7"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(method_label("x/evil"), "other");
        for i in 0..MAX_TOOL_SERIES {
            m.tool_label(Some(&format!("s__t{i}")));
        }
        assert_eq!(m.tool_label(Some("s__new")), "_other");
        assert_eq!(m.tool_label(Some("fx__echo")), "fx__echo");
    }
}
