//! The load-generating client: raw hyper HTTP/1.1 connections (keep-alive, `TCP_NODELAY`), one
//! request in flight per connection, and the two load shapes.
//!
//! - [`open_loop`]: a fixed request rate. A dedicated OS thread paces the sends (a tokio timer
//!   has 1 ms resolution, too coarse at 1,000 req/s) and latency is measured from each request's
//!   *scheduled* send time, so a slow answer delays nothing and is not hidden (no coordinated
//!   omission). Requests take an idle connection or open a new one.
//! - [`closed_loop`]: N connections, each sending its next request as soon as the previous one
//!   is answered; the figure is completed requests per second.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Per-request deadline; a request over it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and what to call.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    /// The tool name in `params.name` and `Mcp-Name`.
    pub tool: String,
    pub token: String,
}

pub type Sender = SendRequest<Full<Bytes>>;

pub async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A modern (2026-07-28) `tools/call` with its `_meta` and the mirrored headers.
pub fn tools_call(target: &Target, id: u64) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"text":"hello"}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}},"io.modelcontextprotocol/clientInfo":{{"name":"portcullis-loadgen","version":"0"}}}}}}}}"#,
        tool = target.tool
    );
    Request::post(target.path.as_str())
        .header("host", target.addr.to_string())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {}", target.token))
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", target.tool.as_str())
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request")
}

/// Sends one request and reads the whole answer; Ok only for HTTP 200 whose body holds a result.
pub async fn send(sender: &mut Sender, request: Request<Full<Bytes>>) -> anyhow::Result<()> {
    let exchange = async {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status == 200,
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        anyhow::ensure!(
            contains(&body, b"\"result\""),
            "no result: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .context("request timed out")?
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One open-loop run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpenLoopRun {
    pub target: String,
    pub rate: u32,
    pub measured_requests: u64,
    pub errors: u64,
    /// Latency from the scheduled send time (the figure that counts).
    pub latency: Percentiles,
    /// Latency from the moment the request task actually started (for diagnosis).
    pub service: Percentiles,
    /// Connections the run had to open (≈ the highest concurrency reached).
    pub connections: u64,
    pub loadavg: String,
}

struct OpenShared {
    target: Target,
    idle: Mutex<Vec<Sender>>,
    latency: Mutex<Histogram<u64>>,
    service: Mutex<Histogram<u64>>,
    done: AtomicU64,
    errors: AtomicU64,
    connections: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// Fixed-rate load for `warmup + duration`; only requests scheduled after the warm-up count.
pub async fn open_loop(
    target: Target,
    label: &str,
    rate: u32,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<OpenLoopRun> {
    let shared = Arc::new(OpenShared {
        target,
        idle: Mutex::new(Vec::new()),
        latency: Mutex::new(histogram()),
        service: Mutex::new(histogram()),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let warm_count = (warmup.as_secs_f64() * f64::from(rate)) as u64;
    let total = warm_count + (duration.as_secs_f64() * f64::from(rate)) as u64;
    let handle = tokio::runtime::Handle::current();
    let pacer_shared = Arc::clone(&shared);
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            let start = Instant::now() + Duration::from_millis(10);
            for i in 0..total {
                let scheduled = start + period.mul_f64(i as f64);
                let now = Instant::now();
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                }
                let shared = Arc::clone(&pacer_shared);
                handle.spawn(one_open(shared, i, scheduled, i >= warm_count));
            }
        })?;
    let deadline = Instant::now() + warmup + duration + REQUEST_TIMEOUT + Duration::from_secs(5);
    while shared.done.load(Ordering::Relaxed) < total {
        anyhow::ensure!(
            Instant::now() < deadline,
            "open-loop run did not finish in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("pacer thread panicked"))?;
    let latency = shared.latency.lock().expect("lock");
    let service = shared.service.lock().expect("lock");
    let errors = shared.errors.load(Ordering::Relaxed);
    if let Some(e) = shared.first_error.lock().expect("lock").as_ref() {
        eprintln!("  [{label}] first error: {e}");
    }
    Ok(OpenLoopRun {
        target: label.to_owned(),
        rate,
        measured_requests: latency.len(),
        errors,
        latency: Percentiles::of(&latency),
        service: Percentiles::of(&service),
        connections: shared.connections.load(Ordering::Relaxed),
        loadavg: crate::loadavg(),
    })
}

async fn one_open(shared: Arc<OpenShared>, id: u64, scheduled: Instant, record: bool) {
    let started = Instant::now();
    let pooled = shared.idle.lock().expect("lock").pop();
    let sender = match pooled {
        Some(sender) => Ok(sender),
        None => {
            shared.connections.fetch_add(1, Ordering::Relaxed);
            connect(shared.target.addr).await
        }
    };
    let outcome = match sender {
        Ok(mut sender) => {
            let request = tools_call(&shared.target, id);
            let result = send(&mut sender, request).await;
            if result.is_ok() {
                shared.idle.lock().expect("lock").push(sender);
            }
            result
        }
        Err(e) => Err(e),
    };
    let end = Instant::now();
    match outcome {
        Ok(()) if record => {
            let us = |d: Duration| (d.as_micros() as u64).max(1);
            let _ = shared
                .latency
                .lock()
                .expect("lock")
                .record(us(end - scheduled));
            let _ = shared
                .service
                .lock()
                .expect("lock")
                .record(us(end - started));
        }
        Ok(()) => {}
        Err(e) => {
            if record {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            shared
                .first_error
                .lock()
                .expect("lock")
                .get_or_insert_with(|| format!("{e:#}"));
        }
    }
    shared.done.fetch_add(1, Ordering::Relaxed);
}

/// One closed-loop run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClosedLoopRun {
    pub target: String,
    pub concurrency: usize,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub latency: Percentiles,
    pub loadavg: String,
    /// CPU time (user + system) each process spent per completed request during the whole run
    /// (warm-up included, so slightly over-counted), in microseconds; filled in by the caller.
    pub cpu_us_per_request: std::collections::BTreeMap<String, f64>,
}

/// `concurrency` connections sending back to back; counts requests completed after `warmup`.
pub async fn closed_loop(
    target: Target,
    label: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<ClosedLoopRun> {
    let target = Arc::new(target);
    let mut senders = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        senders.push(connect(target.addr).await?);
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (worker, mut sender) in senders.into_iter().enumerate() {
        let target = Arc::clone(&target);
        tasks.spawn(async move {
            let mut h = histogram();
            let (mut count, mut errors) = (0u64, 0u64);
            let mut first_error = None;
            let mut id = (worker as u64) << 32;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                id += 1;
                let result = send(&mut sender, tools_call(&target, id)).await;
                let done = Instant::now();
                if sent >= measure_from && done <= end {
                    match &result {
                        Ok(()) => {
                            count += 1;
                            let _ = h.record((done - sent).as_micros() as u64);
                        }
                        Err(_) => errors += 1,
                    }
                }
                if let Err(e) = result {
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                    // The connection may be unusable; open a new one.
                    match connect(target.addr).await {
                        Ok(s) => sender = s,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
            (h, count, errors, first_error)
        });
    }
    let mut total = histogram();
    let (mut count, mut errors) = (0u64, 0u64);
    while let Some(joined) = tasks.join_next().await {
        let (h, c, e, first_error) = joined?;
        total.add(&h).ok();
        count += c;
        errors += e;
        if let Some(first) = first_error {
            eprintln!("  [{label}] error: {first}");
        }
    }
    let seconds = duration.as_secs_f64();
    Ok(ClosedLoopRun {
        target: label.to_owned(),
        concurrency,
        requests: count,
        errors,
        seconds,
        rps: count as f64 / seconds,
        latency: Percentiles::of(&total),
        loadavg: crate::loadavg(),
        cpu_us_per_request: Default::default(),
    })
}
