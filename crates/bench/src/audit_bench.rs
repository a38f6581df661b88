//! `portcullis-audit-bench`: durable audit appends on SQLite through the real `AuditWriter`
//! (BENCHMARKS.md, "Audit append"), for each commit durability asked for (`--sync`):
//!
//! - **group commit**: `--producers` tasks append concurrently, each awaiting its append's
//!   durability before the next, like calls on the data plane; records/s.
//! - **one transaction per record**: the same with `max_batch = 1` (the baseline group commit
//!   is measured against); records/s. The `direct` engine ignores `max_batch` (its appends
//!   are durable in the append log, and its thread copies each batch of the log into SQLite
//!   in one transaction), so for it this is a second group-commit figure.
//! - **append latency**: one task appends, awaits durability, then sleeps `--latency-gap-us`
//!   (threads go idle between appends, as at 1,000 calls/s); p50/p90/p99 of one append, which is
//!   what the data plane's audit step waits for per record.
//!
//! Each mode writes to a fresh SQLite file (WAL) through each writer engine asked for
//! (`--engine`): `direct` (the append log and the writer's own SQLite connection, the default
//! with `sync: normal`)
//! and `sqlx` (the task engine PostgreSQL and `sync: full` use, through sqlx's SQLite driver),
//! so the two compare in one run.
//! `--layout` compares table layouts in the same run: `without-rowid` (the schema migrations
//! create since 0003), `rowid` (the table as before 0003, rebuilt on the fresh file from the
//! migrated definition minus `WITHOUT ROWID`) and `no-time-index` (`without-rowid` without the
//! `audit_records_time` index).
//! Checkpoints are signed every 1,000 records. Afterwards the chain is verified, so the figures
//! count only records that verify.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use portcullis_audit::checkpoint::SigningKeyFile;
use portcullis_audit::store::{AuditStore, AuditWriter, Backend, Durability, WriterConfig, now_us};
use portcullis_audit::{AuditEvent, Finding, Outcome, RecordKind};
use serde::Serialize;

/// The allocator the gateway binary runs with (`crates/cli/src/main.rs`), so the writer task
/// allocates here as it does in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Sync {
    /// `synchronous = NORMAL` (the default): survives `kill -9`, not a power cut.
    Normal,
    /// `synchronous = FULL`: every commit fsynced.
    Full,
}

/// One measured combination.
type Mode = (Sync, Engine, Layout);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Engine {
    /// The writer's own SQLite connection (`WriterConfig::sqlite_direct`, the default).
    Direct,
    /// The task engine through sqlx's SQLite driver.
    Sqlx,
}

/// How `audit_records` is stored (a comparison only: the gateway always has the migrated one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Layout {
    /// The primary key is the table (migration 0003), plus the time index.
    WithoutRowid,
    /// A rowid table with its primary key in a second B-tree (migrations 0001–0002).
    Rowid,
    /// `without-rowid` minus the `audit_records_time` index.
    NoTimeIndex,
}

#[derive(Debug, Parser)]
#[command(
    about = "Durable audit appends on SQLite: group commit, one transaction per record, \
                   and the latency of one append"
)]
struct Args {
    /// Records appended with group commit.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Records appended in the baseline (one transaction per record).
    #[arg(long, default_value_t = 2_000)]
    baseline_records: u64,
    /// Concurrent appenders.
    #[arg(long, default_value_t = 64)]
    producers: u64,
    /// Appends timed one at a time for the latency figure (0: skip).
    #[arg(long, default_value_t = 2_000)]
    latency_appends: u64,
    /// Idle time between two timed appends, µs.
    #[arg(long, default_value_t = 1_000)]
    latency_gap_us: u64,
    /// Commit durabilities to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Sync::Normal, Sync::Full])]
    sync: Vec<Sync>,
    /// Writer engines to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Engine::Direct, Engine::Sqlx])]
    engine: Vec<Engine>,
    /// Table layouts to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Layout::WithoutRowid])]
    layout: Vec<Layout>,
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

/// Rebuilds the (empty) `audit_records` of a fresh, migrated store in `layout`.
async fn apply_layout(store: &AuditStore, layout: Layout) -> anyhow::Result<()> {
    let Backend::Sqlite(pool) = store.backend() else {
        anyhow::bail!("the audit bench runs on SQLite");
    };
    match layout {
        Layout::WithoutRowid => {}
        Layout::NoTimeIndex => {
            sqlx::query("DROP INDEX audit_records_time")
                .execute(pool)
                .await?;
        }
        Layout::Rowid => {
            let table: String = sqlx::query_scalar(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'audit_records'",
            )
            .fetch_one(pool)
            .await?;
            let rowid = table.replace("WITHOUT ROWID", "");
            anyhow::ensure!(
                rowid != table,
                "audit_records is not WITHOUT ROWID: {table}"
            );
            // One transaction on one connection: the pool's other connections see the new
            // schema whole.
            let rebuild = format!(
                "BEGIN IMMEDIATE; DROP TABLE audit_records; {rowid}; \
                 CREATE INDEX audit_records_time ON audit_records (time_us); COMMIT;"
            );
            let mut conn = pool.acquire().await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(rebuild))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// A writer on a fresh store; returns the store, the writer and the key that verifies it.
async fn open(
    url: &str,
    (sync, engine, layout): Mode,
    max_batch: usize,
) -> anyhow::Result<(AuditStore, AuditWriter, Arc<SigningKeyFile>)> {
    let durability = match sync {
        Sync::Normal => Durability::Normal,
        Sync::Full => Durability::Full,
    };
    let store = AuditStore::connect_with(url, None, durability).await?;
    apply_layout(&store, layout).await?;
    let mut config = WriterConfig::new("bench");
    config.max_batch = max_batch;
    config.sqlite_direct = engine == Engine::Direct;
    let signer = Arc::new(SigningKeyFile::from_seed(&[1; 32]));
    let writer = AuditWriter::start(store.clone(), config, Some(signer.clone())).await?;
    Ok((store, writer, signer))
}

/// Shuts the writer down and checks that the chain holds `records` records and verifies.
async fn close(
    store: AuditStore,
    writer: AuditWriter,
    signer: &SigningKeyFile,
    records: u64,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// Appends `records` with `producers` concurrent appenders; returns (records/s, seconds).
async fn throughput(
    url: &str,
    sync: Mode,
    records: u64,
    producers: u64,
    max_batch: usize,
) -> anyhow::Result<(f64, f64)> {
    let (store, writer, signer) = open(url, sync, max_batch).await?;
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
    close(store, writer, &signer, records).await?;
    Ok((records as f64 / secs, secs))
}

/// One append at a time with idle gaps between; (p50, p90, p99) of one append, µs.
async fn latency(url: &str, sync: Mode, appends: u64, gap: Duration) -> anyhow::Result<Latency> {
    let (store, writer, signer) = open(url, sync, 1_024).await?;
    let mut micros = Vec::with_capacity(usize::try_from(appends).unwrap_or(0));
    for i in 0..appends {
        let e = event(i);
        let start = Instant::now();
        writer.append(e).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        micros.push(start.elapsed().as_secs_f64() * 1e6);
        tokio::time::sleep(gap).await;
    }
    close(store, writer, &signer, appends).await?;
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() as f64 - 1.0) * q).round() as usize];
    Ok(Latency {
        appends,
        p50_us: at(0.5),
        p90_us: at(0.9),
        p99_us: at(0.99),
    })
}

#[derive(Debug, Serialize)]
struct Latency {
    appends: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
}

#[derive(Debug, Serialize)]
struct Rate {
    records: u64,
    secs: f64,
    records_per_s: f64,
}

#[derive(Debug, Serialize)]
struct SyncReport {
    sync: Sync,
    engine: Engine,
    layout: Layout,
    group_commit: Rate,
    per_record_tx: Rate,
    speedup: f64,
    latency: Option<Latency>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    // With `sync: full` the writer always uses the task engine: measure it once.
    let mut combos: Vec<Mode> = Vec::new();
    for &sync in &args.sync {
        for &engine in &args.engine {
            for &layout in &args.layout {
                let engine = if sync == Sync::Full {
                    Engine::Sqlx
                } else {
                    engine
                };
                if !combos.contains(&(sync, engine, layout)) {
                    combos.push((sync, engine, layout));
                }
            }
        }
    }
    for (sync, engine, layout) in combos {
        let name = format!("{sync:?}-{engine:?}-{layout:?}").to_lowercase();
        let url = |mode: &str| {
            format!(
                "sqlite://{}",
                dir.join(format!("{mode}-{name}.db")).display()
            )
        };
        let (group, group_secs) = rt.block_on(throughput(
            &url("group"),
            (sync, engine, layout),
            args.records,
            args.producers,
            1_024,
        ))?;
        let (single, single_secs) = rt.block_on(throughput(
            &url("single"),
            (sync, engine, layout),
            args.baseline_records,
            args.producers,
            1,
        ))?;
        let latency = match args.latency_appends {
            0 => None,
            n => Some(rt.block_on(latency(
                &url("latency"),
                (sync, engine, layout),
                n,
                Duration::from_micros(args.latency_gap_us),
            ))?),
        };
        reports.push(SyncReport {
            sync,
            engine,
            layout,
            group_commit: Rate {
                records: args.records,
                secs: group_secs,
                records_per_s: group,
            },
            per_record_tx: Rate {
                records: args.baseline_records,
                secs: single_secs,
                records_per_s: single,
            },
            speedup: group / single,
            latency,
        });
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "producers": args.producers, "runs": reports })
        );
        return Ok(());
    }
    println!("producers: {}", args.producers);
    for r in &reports {
        println!(
            "sync {:?}, engine {:?}, layout {:?}:",
            r.sync, r.engine, r.layout
        );
        println!(
            "  group commit:        {:>10.0} records/s ({} records in {:.2} s)",
            r.group_commit.records_per_s, r.group_commit.records, r.group_commit.secs
        );
        println!(
            "  one tx per record:   {:>10.0} records/s ({} records in {:.2} s)",
            r.per_record_tx.records_per_s, r.per_record_tx.records, r.per_record_tx.secs
        );
        println!("  speedup:             {:>10.1}x", r.speedup);
        if let Some(l) = &r.latency {
            println!(
                "  one append (idle {} µs between): p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs ({} appends)",
                args.latency_gap_us, l.p50_us, l.p90_us, l.p99_us, l.appends
            );
        }
    }
    Ok(())
}
