//! Criterion micro-benchmarks of the per-request hot path, each with its baseline in the same run:
//!
//! - `envelope/parse`: `portcullis_core::envelope::parse` of a ~1 KB `tools/call`, against
//!   `serde_json::from_slice::<Value>` of the same bytes (the baseline: what a plain proxy pays);
//! - `rawobj/edit_name`: un-namespacing `params.name` with `RawObject` and writing the envelope
//!   back, the edit the aggregate route makes on every call;
//! - `auth/api_key`: `portcullis_gateway::auth::Authenticator::authenticate` with 1,000 keys
//!   configured (an index by digest), the matching key first, in the middle, last, and no
//!   match; SHA-256 of the token alone is the baseline.
//!
//! Run: `cargo bench -p portcullis-bench --bench micro`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis_config::{ApiKey, AuthConfig};
use portcullis_core::envelope::{self, Limits, Parsed, to_raw};
use portcullis_core::rawobj::RawObject;
use sha2::{Digest as _, Sha256};

/// A realistic ~1 KB modern `tools/call`: nested arguments, `_meta`, a few numbers and escapes.
fn tools_call_1k() -> Vec<u8> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": 4711,
        "method": "tools/call",
        "params": {
            "name": "github__create_issue",
            "arguments": {
                "owner": "portcullis-dev",
                "repo": "portcullis",
                "title": "Gateway returns 404 for a session after hot reload",
                "body": "Steps:\n1. open a legacy session\n2. edit portcullis.yaml\n3. call tools/list\n\nExpected: 200 with the tools.\nActual: 404 \"unknown session\". Logs attached below; the \"reload\" line appears twice.",
                "labels": ["bug", "sessions", "hot-reload"],
                "assignees": ["alice", "bob"],
                "milestone": 3,
                "metadata": { "priority": 2, "estimate_hours": 1.5, "links": [{ "rel": "log", "href": "https://example.com/logs/123" }] }
            },
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": { "sampling": {}, "elicitation": { "form": {} }, "roots": { "listChanged": true } },
                "io.modelcontextprotocol/clientInfo": { "name": "bench-agent", "title": "Benchmark agent", "version": "1.4.2" },
                "progressToken": "tok-93f1c2"
            }
        }
    });
    let mut bytes = serde_json::to_vec(&body).expect("serializes");
    // Pad the `body` argument so the message is close to 1,024 bytes.
    if bytes.len() < 1000 {
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).expect("valid");
        let pad = "x".repeat(1024 - bytes.len());
        value["params"]["arguments"]["notes"] = serde_json::Value::String(pad);
        bytes = serde_json::to_vec(&value).expect("serializes");
    }
    bytes
}

fn envelope_parse(c: &mut Criterion) {
    let body = tools_call_1k();
    let limits = Limits::default();
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function(format!("parse_tools_call_{}B", body.len()), |b| {
        b.iter(|| envelope::parse(black_box(&body), &limits).expect("valid"))
    });
    group.bench_function(format!("baseline_serde_value_{}B", body.len()), |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).expect("valid"))
    });
    group.finish();
}

fn rawobj_edit(c: &mut Criterion) {
    let body = tools_call_1k();
    let Ok(Parsed::Single(envelope)) = envelope::parse(&body, &Limits::default()) else {
        panic!("single")
    };
    let mut group = c.benchmark_group("rawobj");
    // What the aggregate route does: read params.name, strip the `{server}__` prefix, write back.
    group.bench_function("edit_params_name_and_serialize", |b| {
        b.iter(|| {
            let mut envelope = envelope.clone();
            let mut params = RawObject::parse(envelope.params().expect("params")).expect("object");
            let name = params.get_str("name").expect("name");
            let (_, tool) = name.split_once("__").expect("namespaced");
            params.set("name", to_raw(tool));
            envelope.set_member("params", params.to_raw());
            black_box(envelope.to_bytes())
        })
    });
    group.bench_function("baseline_clone_and_serialize", |b| {
        b.iter(|| black_box(envelope.clone().to_bytes()))
    });
    group.bench_function("baseline_serde_value_edit", |b| {
        b.iter(|| {
            let mut value: serde_json::Value =
                serde_json::from_slice(black_box(&body)).expect("valid");
            let name = value["params"]["name"]
                .as_str()
                .expect("name")
                .split_once("__")
                .expect("ns")
                .1
                .to_owned();
            value["params"]["name"] = serde_json::Value::String(name);
            black_box(serde_json::to_vec(&value).expect("serializes"))
        })
    });
    group.finish();
}

fn auth_api_keys(c: &mut Criterion) {
    const KEYS: usize = 1000;
    let tokens: Vec<String> = (0..KEYS)
        .map(|i| format!("pc_bench_key_{i:04}_0123456789abcdef0123456789"))
        .collect();
    let config = AuthConfig {
        api_keys: tokens
            .iter()
            .enumerate()
            .map(|(i, t)| ApiKey {
                agent: format!("agent-{i}"),
                sha256: Sha256::digest(t.as_bytes()).into(),
                expires_at: None,
                revoked: false,
            })
            .collect(),
        anonymous: None,
        oidc: None,
    };
    let authenticator =
        portcullis_gateway::auth::Authenticator::new(&config, "http://127.0.0.1:8686", None);
    let route = portcullis_gateway::route::Route::Aggregate;
    let header = |t: &str| format!("Bearer {t}").into_bytes();
    let first = header(&tokens[0]);
    let middle = header(&tokens[KEYS / 2]);
    let last = header(&tokens[KEYS - 1]);
    let unknown = header("pc_bench_key_none_0123456789abcdef0123456789");
    let mut group = c.benchmark_group("auth_1000_keys");
    for (name, h) in [
        ("first_key", &first),
        ("middle_key", &middle),
        ("last_key", &last),
        ("unknown_key", &unknown),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                // API keys never wait: the future is ready on its first poll.
                let future = authenticator.authenticate(&route, Some(black_box(h.as_slice())));
                let _ = black_box(
                    std::pin::pin!(future)
                        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop())),
                );
            })
        });
    }
    group.bench_function("baseline_sha256_of_token", |b| {
        b.iter(|| {
            black_box(<[u8; 32]>::from(Sha256::digest(
                black_box(&tokens[KEYS / 2]).as_bytes(),
            )))
        })
    });
    group.finish();
}

criterion_group!(benches, envelope_parse, rawobj_edit, auth_api_keys);
criterion_main!(benches);
