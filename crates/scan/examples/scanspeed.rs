//! Development aid: throughput of each detector alone on the bench corpus (the same generator
//! as `crates/bench/benches/scan.rs`), for profiling with `perf record`.
//!
//! `cargo run --release -p portcullis-scan --example scanspeed [-- ROUNDS [DETECTOR]]`, where
//! DETECTOR is `all`, `injection`, `pii`, `secrets`, `joined` (all, on the corpus as one
//! document) or `rules` (print the most frequent findings instead of timing).

use std::time::Instant;

use portcullis_scan::{Scanner, Surface};

/// One detector run over a document, returning its number of findings.
type Detector<'a> = Box<dyn Fn(&str) -> usize + 'a>;

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(20);
    let only = args.get(2).cloned();
    let mut docs = corpus();
    if only.as_deref() == Some("joined") {
        docs = vec![docs.concat()];
    }
    let bytes: usize = docs.iter().map(String::len).sum();
    let scanner = Scanner::new().expect("scanner compiles");
    if only.as_deref() == Some("rules") {
        let mut counts = std::collections::BTreeMap::new();
        for d in &docs {
            for f in scanner.scan(d, Surface::ToolResult) {
                *counts
                    .entry((f.rule, d[f.start..f.end].to_string()))
                    .or_insert(0) += 1;
            }
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        for ((rule, s), n) in v.iter().take(15) {
            println!("{n:6} {rule} {s:?}");
        }
        return;
    }
    let runs: Vec<(&str, Detector)> = vec![
        (
            "all",
            Box::new(|d: &str| scanner.scan(d, Surface::ToolResult).len()),
        ),
        ("injection", Box::new(|d: &str| scanner.injection(d).len())),
        ("pii", Box::new(|d: &str| scanner.pii(d).len())),
        ("secrets", Box::new(|d: &str| scanner.secrets(d).len())),
    ];
    for (name, f) in &runs {
        if only
            .as_deref()
            .is_some_and(|o| o != *name && !(o == "joined" && *name == "all"))
        {
            continue;
        }
        let mut best = f64::MAX;
        let mut n = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            for d in &docs {
                n += f(d);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{name:>10}: {:7.1} MiB/s (best of {rounds}, {n} findings)",
            bytes as f64 / best / (1 << 20) as f64
        );
    }
}
