//! A loopback HTTP receiver for the HTTP sinks. It checks what a real receiver would check —
//! the HEC token and event shape, the webhook's HMAC signature (with the crate's documented
//! `verify`), the OTLP/JSON request shape — records the seqs of every accepted batch, and can
//! be switched down (503) or made to refuse large batches (413).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

pub const HEC_TOKEN: &str = "hec-test-token";
pub const HOOK_SECRET: &str = "webhook-test-secret-0123456789";

/// What the receiver saw.
#[derive(Debug, Default)]
pub struct HttpSeen {
    /// Seqs of each accepted batch, in arrival order.
    pub batches: Vec<Vec<u64>>,
    /// Arrival time of every request, accepted or not.
    pub attempts: Vec<Instant>,
    /// Requests refused for a bad token or signature, or malformed.
    pub errors: Vec<String>,
    /// Webhook delivery ids of accepted batches.
    pub deliveries: Vec<String>,
}

impl HttpSeen {
    pub fn seqs(&self) -> Vec<u64> {
        self.batches.iter().flatten().copied().collect()
    }
}

#[derive(Default)]
pub struct Control {
    pub seen: Mutex<HttpSeen>,
    /// Answer 503 to everything.
    pub down: AtomicBool,
    /// Answer 413 to batches with more records than this (0: no limit).
    pub max_records: AtomicUsize,
}

pub struct HttpReceiver {
    pub base: String,
    pub control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpReceiver {
    pub async fn start() -> Self {
        let control = Arc::new(Control::default());
        let app = Router::new()
            .route("/services/collector/event", post(hec))
            .route("/hook", post(hook))
            .route("/v1/logs", post(otlp))
            .with_state(control.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HttpReceiver {
            base,
            control,
            task,
        }
    }

    pub fn seen(&self) -> std::sync::MutexGuard<'_, HttpSeen> {
        self.control.seen.lock().unwrap()
    }
}

/// Common gate: records the attempt; 503 when down, 413 when too many records.
fn gate(control: &Control, records: usize) -> Option<StatusCode> {
    control.seen.lock().unwrap().attempts.push(Instant::now());
    if control.down.load(Ordering::SeqCst) {
        return Some(StatusCode::SERVICE_UNAVAILABLE);
    }
    let max = control.max_records.load(Ordering::SeqCst);
    if max > 0 && records > max {
        return Some(StatusCode::PAYLOAD_TOO_LARGE);
    }
    None
}

fn refuse(control: &Control, status: StatusCode, why: String) -> StatusCode {
    control.seen.lock().unwrap().errors.push(why);
    status
}

async fn hec(State(c): State<Arc<Control>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let events: Result<Vec<Value>, _> = serde_json::Deserializer::from_slice(&body)
        .into_iter()
        .collect();
    let events = match events {
        Ok(e) => e,
        Err(e) => return refuse(&c, StatusCode::BAD_REQUEST, format!("HEC body: {e}")),
    };
    if let Some(status) = gate(&c, events.len()) {
        return status;
    }
    if auth != format!("Splunk {HEC_TOKEN}") {
        return refuse(&c, StatusCode::FORBIDDEN, format!("HEC token {auth:?}"));
    }
    let mut seqs = Vec::new();
    for e in &events {
        let ok = e["time"].is_number()
            && e["host"].is_string()
            && e["source"] == "portcullis"
            && e["sourcetype"] == "portcullis:audit"
            && e["event"]["kind"].is_string();
        if !ok {
            return refuse(&c, StatusCode::BAD_REQUEST, format!("HEC event shape: {e}"));
        }
        seqs.push(e["event"]["seq"].as_u64().unwrap_or(0));
    }
    c.seen.lock().unwrap().batches.push(seqs);
    StatusCode::OK
}

async fn hook(State(c): State<Arc<Control>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let doc: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return refuse(&c, StatusCode::BAD_REQUEST, format!("webhook body: {e}")),
    };
    let records = doc["records"].as_array().cloned().unwrap_or_default();
    if let Some(status) = gate(&c, records.len()) {
        return status;
    }
    let now = portcullis_audit::store::now_us() / 1_000_000;
    if let Err(e) = portcullis_export::format::webhook::verify(
        HOOK_SECRET.as_bytes(),
        header("x-portcullis-timestamp"),
        header("x-portcullis-signature"),
        &body,
        now,
        300,
    ) {
        return refuse(
            &c,
            StatusCode::UNAUTHORIZED,
            format!("webhook signature: {e}"),
        );
    }
    let Some(delivery) = header("x-portcullis-delivery") else {
        return refuse(&c, StatusCode::BAD_REQUEST, "no delivery id".into());
    };
    let seqs = records
        .iter()
        .map(|r| r["seq"].as_u64().unwrap_or(0))
        .collect();
    let mut seen = c.seen.lock().unwrap();
    seen.deliveries.push(delivery.to_owned());
    seen.batches.push(seqs);
    StatusCode::NO_CONTENT
}

async fn otlp(State(c): State<Arc<Control>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let doc: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return refuse(&c, StatusCode::BAD_REQUEST, format!("OTLP body: {e}")),
    };
    let records = doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(status) = gate(&c, records.len()) {
        return status;
    }
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some("otlp-key") {
        return refuse(&c, StatusCode::UNAUTHORIZED, "OTLP api key".into());
    }
    let service = &doc["resourceLogs"][0]["resource"]["attributes"][0];
    if service["key"] != "service.name" || !service["value"]["stringValue"].is_string() {
        return refuse(
            &c,
            StatusCode::BAD_REQUEST,
            format!("OTLP resource: {service}"),
        );
    }
    let mut seqs = Vec::new();
    for r in &records {
        let time_ok = r["timeUnixNano"]
            .as_str()
            .is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit()));
        let body: Option<Value> = r["body"]["stringValue"]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok());
        let seq_attr = r["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|kv| kv["key"] == "portcullis.seq"))
            .and_then(|kv| kv["value"]["intValue"].as_str())
            .and_then(|s| s.parse::<u64>().ok());
        match (time_ok, body, seq_attr, r["severityNumber"].as_u64()) {
            (true, Some(b), Some(seq), Some(1..=24)) if b["seq"].as_u64() == Some(seq) => {
                seqs.push(seq)
            }
            _ => return refuse(&c, StatusCode::BAD_REQUEST, format!("OTLP log record: {r}")),
        }
    }
    c.seen.lock().unwrap().batches.push(seqs);
    StatusCode::OK
}
