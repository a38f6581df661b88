//! `portcullis audit verify|tail|export`: the auditor's view of the trail.
//!
//! Thin verbs over `portcullis-audit`: open the store read-only (never creating a SQLite file or
//! migrating), then verify every chain, print the latest records, or export them as JSON lines
//! or CSV. Exit codes: 0 success (verify: every chain intact), 1 verify found tampering (each
//! problem printed with its chain and seq), 2 usage error or the store could not be read.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use portcullis_audit::store::{AuditStore, Query, keys};
use portcullis_audit::verify::Undecodable;
use portcullis_audit::{AuditRecord, Outcome};

/// `portcullis audit ...`
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The audit store: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, global = true, env = "PORTCULLIS_STORAGE")]
    storage: Option<String>,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify every chain: hashes, links, seq continuity and signed checkpoints. Exit 0 intact,
    /// 1 tampering found (printed with its position), 2 unreadable store or bad key.
    Verify {
        /// Trusted checkpoint key: PKCS#8 PEM (private or public) or a 64-hex-digit seed.
        /// Default: $PORTCULLIS_AUDIT_KEY; without either, signatures are not checked.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// One JSON report per chain, as an array.
        #[arg(long)]
        json: bool,
    },
    /// Print the latest records (JSON lines).
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: i64,
        /// Keep printing new records as they are committed.
        #[arg(long, short)]
        follow: bool,
    },
    /// Export records as JSON lines or CSV, oldest first.
    Export {
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// From this time on: RFC 3339 (2026-11-21T00:00:00Z) or Unix seconds.
        #[arg(long)]
        since: Option<String>,
        /// Before this time (same formats).
        #[arg(long)]
        until: Option<String>,
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only this tool ({server}__{tool}).
        #[arg(long)]
        tool: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Jsonl,
    Csv,
}

/// Runs an audit verb and returns its exit code.
pub fn run(args: AuditArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis audit: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run_async(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis audit: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run_async(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let Some(url) = args.storage else {
        bail!("--storage URL (or PORTCULLIS_STORAGE) is required");
    };
    let store = AuditStore::open_existing(&url)
        .await
        .with_context(|| format!("cannot open the audit store {url}"))?;
    let code = match args.command {
        AuditCommand::Verify { key_file, json } => verify(&store, key_file, json).await?,
        AuditCommand::Tail { lines, follow } => tail(&store, lines, follow).await?,
        AuditCommand::Export {
            format,
            since,
            until,
            agent,
            tool,
        } => {
            let query = Query {
                since_us: since.as_deref().map(parse_time).transpose()?,
                until_us: until.as_deref().map(parse_time).transpose()?,
                agent,
                tool,
                ..Query::default()
            };
            export(&store, &query, format).await?
        }
    };
    store.close().await;
    Ok(code)
}

async fn verify(
    store: &AuditStore,
    key_file: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let ring = keys::load_ring(key_file.as_deref())?;
    let reports = store.verify(&ring).await?;
    let ok = reports.iter().all(|r| r.is_ok());
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &reports)?;
        writeln!(out)?;
    } else {
        if reports.is_empty() {
            writeln!(out, "no audit records")?;
        }
        if ring.is_empty() {
            writeln!(
                out,
                "note: no --key-file or PORTCULLIS_AUDIT_KEY: checkpoint signatures not checked"
            )?;
        }
        for r in &reports {
            let status = if r.is_ok() { "OK" } else { "TAMPERED" };
            writeln!(
                out,
                "chain {}: {} records, last seq {}, {} checkpoints, signed through seq {}: {status}",
                r.chain_id, r.records, r.last_seq, r.checkpoints, r.signed_through
            )?;
            if r.deleted_through > 0 {
                writeln!(
                    out,
                    "  chain {}: records 1..={} deleted by retention (signed tombstone verified)",
                    r.chain_id, r.deleted_through
                )?;
            }
            for p in &r.problems {
                writeln!(out, "  chain {} seq {}: {p}", r.chain_id, p.position())?;
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn tail(store: &AuditStore, lines: i64, follow: bool) -> anyhow::Result<ExitCode> {
    let query = Query {
        limit: Some(lines.max(0)),
        latest: true,
        ..Query::default()
    };
    let rows = store.query(&query).await?;
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for row in &rows {
        if let Ok(r) = row {
            let seq = i64::try_from(r.seq).unwrap_or(i64::MAX);
            let e = last.entry(r.chain_id.clone()).or_insert(seq);
            *e = (*e).max(seq);
        }
        print_jsonl(row)?;
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Chains that had no row in the initial window start from their current head.
    for chain in store.chains().await? {
        if let std::collections::btree_map::Entry::Vacant(slot) = last.entry(chain) {
            let head = store.head(slot.key()).await?;
            slot.insert(i64::try_from(head.seq).unwrap_or(i64::MAX));
        }
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for chain in store.chains().await? {
            let after = last.get(&chain).copied().unwrap_or(0);
            for row in store.read_page(&chain, after, 1_000).await? {
                let seq = match &row {
                    Ok(r) => i64::try_from(r.seq).unwrap_or(i64::MAX),
                    Err(u) => u.seq,
                };
                last.insert(chain.clone(), seq.max(after));
                print_jsonl(&row)?;
            }
        }
    }
}

/// Rows per export page (bounded memory for any size of trail).
const EXPORT_PAGE: i64 = 5_000;

async fn export(store: &AuditStore, query: &Query, format: Format) -> anyhow::Result<ExitCode> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let Format::Csv = format {
        writeln!(out, "{}", CSV_HEADER.join(","))?;
    }
    let mut page = Query {
        limit: Some(EXPORT_PAGE),
        latest: false,
        ..query.clone()
    };
    loop {
        let rows = store.query(&page).await?;
        let full = rows.len() as i64 == EXPORT_PAGE;
        let mut cursor = None;
        for row in rows {
            match row {
                Ok(r) => {
                    cursor = Some((
                        r.event.time_us,
                        r.chain_id.clone(),
                        i64::try_from(r.seq).unwrap_or(i64::MAX),
                    ));
                    match format {
                        Format::Jsonl => writeln!(out, "{}", json_line(&Ok(r)))?,
                        Format::Csv => {
                            let fields: Vec<String> =
                                csv_fields(&r).iter().map(|f| csv_quote(f)).collect();
                            writeln!(out, "{}", fields.join(","))?;
                        }
                    }
                }
                Err(u) => match format {
                    Format::Jsonl => writeln!(out, "{}", json_line(&Err(u)))?,
                    Format::Csv => {
                        eprintln!(
                            "portcullis audit: skipping unreadable row seq {}: {}",
                            u.seq, u.reason
                        )
                    }
                },
            }
        }
        match cursor {
            // A page of only unreadable rows has no cursor; stop rather than loop on it
            // (`audit verify` reports them).
            Some(c) if full => page.after = Some(c),
            _ => break,
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn print_jsonl(row: &Result<AuditRecord, Undecodable>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", json_line(row))?;
    out.flush()?;
    Ok(())
}

/// One record as a JSON line, with a readable `time` next to `time_us`; an unreadable row as
/// `{"unreadable": ...}`.
fn json_line(row: &Result<AuditRecord, Undecodable>) -> String {
    match row {
        Ok(r) => {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            if let serde_json::Value::Object(map) = &mut v {
                map.insert("time".into(), format_time(r.event.time_us).into());
            }
            v.to_string()
        }
        Err(u) => {
            serde_json::json!({ "unreadable": { "seq": u.seq, "reason": u.reason } }).to_string()
        }
    }
}

const CSV_HEADER: [&str; 27] = [
    "time",
    "chain_id",
    "seq",
    "kind",
    "trace_id",
    "agent",
    "user",
    "token_id",
    "session",
    "client_era",
    "upstream_era",
    "server",
    "method",
    "tool",
    "args_fingerprint",
    "decision",
    "rule_id",
    "approval_ref",
    "findings",
    "outcome",
    "error_code",
    "latency_us",
    "bytes_in",
    "bytes_out",
    "time_us",
    "prev_hash",
    "hash",
];

fn csv_fields(r: &AuditRecord) -> Vec<String> {
    let e = &r.event;
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let n = |v: Option<i64>| v.map(|x| x.to_string()).unwrap_or_default();
    let (outcome, code) = match e.outcome {
        None => (String::new(), None),
        Some(Outcome::Ok) => ("ok".to_owned(), None),
        Some(Outcome::Error { code }) => ("error".to_owned(), Some(code)),
    };
    vec![
        format_time(e.time_us),
        r.chain_id.clone(),
        r.seq.to_string(),
        e.kind.as_str().to_owned(),
        s(&e.trace_id),
        s(&e.principal.agent),
        s(&e.principal.user),
        s(&e.principal.token_id),
        s(&e.session),
        s(&e.client_era),
        s(&e.upstream_era),
        s(&e.server),
        s(&e.method),
        s(&e.tool),
        s(&e.args_fingerprint),
        s(&e.decision),
        s(&e.rule_id),
        s(&e.approval_ref),
        serde_json::to_string(&e.findings).unwrap_or_default(),
        outcome,
        n(code),
        n(e.latency_us),
        n(e.bytes_in),
        n(e.bytes_out),
        e.time_us.to_string(),
        r.prev_hash.to_hex(),
        r.hash.to_hex(),
    ]
}

/// RFC 4180 quoting; fields starting with a formula character are prefixed with `'` so a
/// spreadsheet does not execute attacker-controlled text (tool names and ids come from clients).
fn csv_quote(field: &str) -> String {
    let field = if field.starts_with(['=', '+', '-', '@']) && field.parse::<i64>().is_err() {
        format!("'{field}")
    } else {
        field.to_owned()
    };
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field
    }
}

/// Parses RFC 3339 UTC (`2026-11-21T00:00:00Z`, optional fraction, or a date alone) or Unix
/// seconds into µs since the epoch.
fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1_000_000).context("time out of range");
    }
    let bad = || {
        anyhow::anyhow!("bad time {s:?}: use RFC 3339 UTC (2026-11-21T08:00:00Z) or Unix seconds")
    };
    let (date, rest) = s.split_at(s.find('T').unwrap_or(s.len()));
    let mut d = date.split('-');
    let (y, m, day) = (
        d.next()
            .and_then(|x| x.parse::<i64>().ok())
            .ok_or_else(bad)?,
        d.next()
            .and_then(|x| x.parse::<i64>().ok())
            .ok_or_else(bad)?,
        d.next()
            .and_then(|x| x.parse::<i64>().ok())
            .ok_or_else(bad)?,
    );
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    let mut micros = days_from_civil(y, m, day) * 86_400 * 1_000_000;
    if let Some(time) = rest.strip_prefix('T') {
        let time = time.strip_suffix('Z').ok_or_else(bad)?;
        let (hms, frac) = time.split_at(time.find('.').unwrap_or(time.len()));
        let parts: Vec<i64> = hms
            .split(':')
            .map(|x| x.parse::<i64>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        let [h, mi, sec] = parts[..] else {
            return Err(bad());
        };
        if h > 23 || mi > 59 || sec > 60 {
            return Err(bad());
        }
        micros += (h * 3600 + mi * 60 + sec) * 1_000_000;
        if let Some(f) = frac.strip_prefix('.') {
            let digits: String = f.chars().chain(std::iter::repeat('0')).take(6).collect();
            micros += digits.parse::<i64>().map_err(|_| bad())?;
        }
    } else if !rest.is_empty() {
        return Err(bad());
    }
    Ok(micros)
}

/// µs since the epoch as RFC 3339 UTC with microseconds.
fn format_time(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_format() {
        assert_eq!(parse_time("0").unwrap(), 0);
        assert_eq!(
            parse_time("2026-11-21T08:00:00Z").unwrap(),
            1_795_248_000_000_000
        );
        assert_eq!(parse_time("2026-11-21").unwrap(), 1_795_219_200_000_000);
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z").unwrap(), 1_500_000);
        assert_eq!(
            format_time(1_795_248_000_000_001),
            "2026-11-21T08:00:00.000001Z"
        );
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_quote("a,b"), "\"a,b\"");
        assert_eq!(csv_quote("=cmd()"), "'=cmd()");
        assert_eq!(csv_quote("-32001"), "-32001");
    }
}
