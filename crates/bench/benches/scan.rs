//! Scanner throughput on mixed tool results: all scanners together (`Surface::ToolResult`:
//! injection, invisible unicode, encoded payloads, PII, secrets) against a baseline pass over
//! the same bytes (one memchr search plus one simple regex), in the same run.
//!
//! `cargo bench -p portcullis-bench --bench scan`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis_scan::{Scanner, Surface};

/// About 1 MiB of tool-result text: JSON records, log lines, prose, a little PII and code.
fn corpus() -> Vec<String> {
    let mut out = Vec::new();
    let mut total = 0;
    let mut i = 0u64;
    while total < 1 << 20 {
        let s = match i % 6 {
            0 => format!(
                "{{\"id\":{i},\"name\":\"order-{i}\",\"status\":\"shipped\",\"total\":{}.{:02},\"items\":[{{\"sku\":\"SKU-{}\",\"qty\":{}}}],\"updated\":\"2024-05-{:02}T10:{:02}:00Z\"}}",
                i * 7 % 1000,
                i % 100,
                i * 13,
                i % 5 + 1,
                i % 28 + 1,
                i % 60
            ),
            1 => format!(
                "2024-05-14 11:{:02}:{:02} INFO request id={i} path=/api/v1/items/{} status=200 latency_ms={} user_agent=\"Mozilla/5.0\"\n",
                i % 60,
                (i * 7) % 60,
                i * 3,
                i % 250
            ),
            2 => "The quarterly report shows revenue growth of 12% compared with last year. Our team \
                  shipped three major features and reduced support tickets by a fifth. Next quarter \
                  we will focus on reliability, documentation and onboarding for new customers.\n"
                .to_string(),
            3 => format!(
                "From: jane.doe{i}@example.com\nTo: support@example.org\nSubject: Re: ticket {i}\n\nHi team, \
                 please call me back at +44 20 7946 {:04} when you can. Thanks!\n",
                i % 10000
            ),
            4 => "fn main() {\n    let config = load(\"config.yaml\")?;\n    for item in config.items {\n        println!(\"{}\", item.name);\n    }\n}\n"
                .to_string(),
            _ => format!(
                "| {i} | Widget {i} | in stock | {} units | warehouse B{} |\n",
                i % 400,
                i % 9
            ),
        };
        total += s.len();
        out.push(s);
        i += 1;
    }
    out
}

fn bench(c: &mut Criterion) {
    let docs = corpus();
    let bytes: u64 = docs.iter().map(|d| d.len() as u64).sum();
    let scanner = Scanner::new().expect("scanner compiles");
    let baseline = regex::bytes::Regex::new(r"\d{3}-\d{2}-\d{4}").expect("baseline regex");
    let mut group = c.benchmark_group("scan_mixed_tool_results");
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("baseline_memchr_plus_regex", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for d in &docs {
                n += memchr::memmem::find_iter(d.as_bytes(), b"ignore").count();
                n += baseline.find_iter(d.as_bytes()).count();
            }
            n
        })
    });
    group.bench_function("all_scanners_tool_result", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for d in &docs {
                n += scanner.scan(d, Surface::ToolResult).len();
            }
            n
        })
    });
    group.bench_function("all_scanners_one_document", |b| {
        let joined = docs.concat();
        b.iter(|| scanner.scan(&joined, Surface::ToolResult).len())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
