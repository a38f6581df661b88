//! `portcullis-audit-bench`: durable audit appends per second on SQLite, group commit vs one
//! transaction per record, measured in the same run (BENCHMARKS.md, "Audit append").
//!
//! Each mode writes to a fresh SQLite file (WAL, `synchronous = FULL`, as the gateway runs it)
//! through the real `AuditWriter`: `--producers` tasks append concurrently, each awaiting its
//! append's durability before the next, like calls on the data plane. Checkpoints are signed
//! every 1,000 records. Afterwards the chain is verified, so the figure counts only records that
//! verify.

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use portcullis_audit::checkpoint::SigningKeyFile;
use portcullis_audit::store::{AuditStore, AuditWriter, WriterConfig, now_us};
use portcullis_audit::{AuditEvent, Finding, Outcome, RecordKind};

/// The allocator the gateway binary runs with (`crates/cli/src/main.rs`), so the writer task
/// allocates here as it does in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "Durable audit appends/s on SQLite: group commit vs one transaction per record")]
struct Args {
    /// Records appended with group commit.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Records appended in the baseline (one transaction, one fsync, per record).
    #[arg(long, default_value_t = 2_000)]
    baseline_records: u64,
    /// Concurrent appenders.
    #[arg(long, default_value_t = 64)]
    producers: u64,
    /// Directory for the database files (default: a temp dir, removed at the end).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn event(i: u64) -> AuditEvent {
    let mut e = AuditEvent::new(RecordKind::Call, now_us());
    e.trace_id = Some(format!("{i:032x}"));
    e.principal.agent = Some("bench-agent".into());
    e.principal.token_id = Some("tok-bench".into());
    e.session = Some("sess-bench".into());
    e.client_era = Some("2026-07-28".into());
    e.upstream_era = Some("2026-07-28".into());
    e.server = Some("fast".into());
    e.method = Some("tools/call".into());
    e.tool = Some("fast__echo".into());
    e.args_fingerprint = Some(format!("{:064x}", i));
    e.decision = Some("allow".into());
    e.rule_id = Some("default".into());
    e.findings = vec![Finding {
        rule: "none".into(),
        severity: "low".into(),
        location: None,
    }];
    e.outcome = Some(Outcome::Ok);
    e.latency_us = Some(250);
    e.bytes_in = Some(180);
    e.bytes_out = Some(220);
    e
}

/// Appends `records` with `producers` concurrent appenders; returns (records/s, seconds).
async fn run(
    url: &str,
    records: u64,
    producers: u64,
    max_batch: usize,
) -> anyhow::Result<(f64, f64)> {
    let store = AuditStore::connect(url).await?;
    let mut config = WriterConfig::new("bench");
    config.max_batch = max_batch;
    let signer = Arc::new(SigningKeyFile::from_seed(&[1; 32]));
    let writer = AuditWriter::start(store.clone(), config, Some(signer.clone())).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let w = writer.clone();
        let n = records / producers + u64::from(p < records % producers);
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                w.append(event(p * 1_000_000 + i)).await?;
            }
            Ok::<_, portcullis_audit::store::AppendError>(())
        }));
    }
    for t in tasks {
        t.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let secs = start.elapsed().as_secs_f64();
    writer
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut ring = portcullis_audit::KeyRing::new();
    ring.add(signer.verifying_key());
    let report = store.verify_chain("bench", &ring).await?;
    anyhow::ensure!(
        report.is_ok() && report.records == records,
        "chain does not verify: {:?}",
        report.problems
    );
    store.close().await;
    Ok((records as f64 / secs, secs))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (group, group_secs) = rt.block_on(run(
        &format!("sqlite://{}", dir.join("group.db").display()),
        args.records,
        args.producers,
        1_024,
    ))?;
    let (single, single_secs) = rt.block_on(run(
        &format!("sqlite://{}", dir.join("single.db").display()),
        args.baseline_records,
        args.producers,
        1,
    ))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "group_commit": { "records": args.records, "secs": group_secs, "records_per_s": group },
                "per_record_tx": { "records": args.baseline_records, "secs": single_secs, "records_per_s": single },
                "producers": args.producers,
                "speedup": group / single,
            })
        );
    } else {
        println!("producers: {}", args.producers);
        println!(
            "group commit:        {:>10.0} records/s ({} records in {group_secs:.2} s)",
            group, args.records
        );
        println!(
            "one tx per record:   {:>10.0} records/s ({} records in {single_secs:.2} s)",
            single, args.baseline_records
        );
        println!("speedup:             {:>10.1}x", group / single);
    }
    Ok(())
}
