//! `portcullis scan`: static analysis of a server's tool metadata for supply-chain review.
//!
//! The server comes from a config's catalog (`--config FILE --server NAME`), a URL
//! (`--url http://…/mcp`) or a command (`-- cmd args`); the gateway's own connectors list its
//! tools, prompts, resources and templates, and read its `instructions`. Every definition is
//! scanned whole (names, descriptions, parameter schemas, annotations) by the poisoning
//! detectors. Findings are printed with their severity, or as one JSON object with `--json`.
//!
//! Exit codes: 0 no finding at or above `--fail-on` (default `medium`), 1 findings at or above
//! it, 2 the server could not be reached or the arguments are wrong.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use portcullis_gateway::scanning::{canonical, fetch};
use portcullis_scan::Severity;
use serde_json::{Value, json};

/// `portcullis scan ...`
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Take the server from this config's catalog (with --server).
    #[arg(long, short, env = "PORTCULLIS_CONFIG", requires = "server")]
    config: Option<PathBuf>,
    /// The catalog server to scan (with --config).
    #[arg(long)]
    server: Option<String>,
    /// Scan the MCP server at this URL (Streamable HTTP).
    #[arg(long, conflicts_with_all = ["config", "command"])]
    url: Option<String>,
    /// Exit 1 when a finding is at least this severe.
    #[arg(long, value_enum, default_value_t = Level::Medium)]
    fail_on: Level,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Scan the stdio server started by this command (after `--`).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Level {
    Low,
    Medium,
    High,
    Critical,
}

impl Level {
    fn of(severity: Severity) -> Level {
        match severity {
            Severity::Low => Level::Low,
            Severity::Medium => Level::Medium,
            Severity::High => Level::High,
            Severity::Critical => Level::Critical,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }
}

/// One finding in one item.
struct Row {
    kind: &'static str,
    name: String,
    hash: String,
    level: Level,
    category: &'static str,
    rule: &'static str,
    pointer: String,
}

pub fn run(args: ScanArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("portcullis scan: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(scan(args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("portcullis scan: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The server a scan or catalog command talks to.
pub fn target_server(
    config: Option<&PathBuf>,
    server: Option<&str>,
    url: Option<&str>,
    command: &[String],
    timeout: Duration,
) -> anyhow::Result<portcullis_config::ServerConfig> {
    match (config, url, command.is_empty()) {
        (Some(path), None, true) => {
            let config = portcullis_config::load(path).map_err(|e| anyhow!("{e}"))?;
            let name = server.ok_or_else(|| anyhow!("--server NAME is required with --config"))?;
            config
                .servers
                .get(name)
                .cloned()
                .ok_or_else(|| anyhow!("no catalog server named {name:?} in {}", path.display()))
        }
        (None, Some(url), true) => Ok(fetch::url_server(server.unwrap_or("scanned"), url, timeout)),
        (None, None, false) => Ok(fetch::command_server(
            server.unwrap_or("scanned"),
            command.to_vec(),
            timeout,
        )),
        _ => bail!("give exactly one of --config FILE --server NAME, --url URL, or -- CMD ARGS"),
    }
}

async fn scan(args: ScanArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    let server = target_server(
        args.config.as_ref(),
        args.server.as_deref(),
        args.url.as_deref(),
        &args.command,
        timeout,
    )?;
    let metadata = fetch::fetch(&server)
        .await
        .with_context(|| format!("cannot list the metadata of {}", server.name))?;
    let scanner = portcullis_gateway::scanning::scanner().map_err(|e| anyhow!("{e}"))?;

    let mut rows = Vec::new();
    let mut items = 0usize;
    for (kind, list, key) in [
        ("tool", &metadata.tools, "name"),
        ("prompt", &metadata.prompts, "name"),
        ("resource", &metadata.resources, "uri"),
        ("resource_template", &metadata.templates, "uriTemplate"),
    ] {
        for item in list {
            items += 1;
            let name = item
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            let hash = canonical::definition_hash(item);
            for f in portcullis_scan::json::scan_tool(scanner, item) {
                rows.push(Row {
                    kind,
                    name: name.clone(),
                    hash: hash.clone(),
                    level: Level::of(f.finding.severity),
                    category: f.finding.category.name(),
                    rule: f.finding.rule,
                    pointer: f.pointer,
                });
            }
        }
    }
    if let Some(text) = &metadata.instructions {
        items += 1;
        for f in scanner.poisoning(text) {
            rows.push(Row {
                kind: "instructions",
                name: server.name.clone(),
                hash: String::new(),
                level: Level::of(f.severity),
                category: f.category.name(),
                rule: f.rule,
                pointer: String::new(),
            });
        }
    }
    rows.sort_by(|a, b| b.level.cmp(&a.level).then(a.name.cmp(&b.name)));
    let worst = rows.iter().map(|r| r.level).max();
    let failed = worst.is_some_and(|w| w >= args.fail_on);

    if args.json {
        let findings: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "kind": r.kind, "name": r.name, "sha256": r.hash, "severity": r.level.name(),
                    "category": r.category, "rule": r.rule, "pointer": r.pointer,
                })
            })
            .collect();
        let out = json!({
            "server": server.name,
            "tools": metadata.tools.len(),
            "items": items,
            "findings": findings,
            "max_severity": worst.map(Level::name),
            "fail_on": args.fail_on.name(),
            "failed": failed,
        });
        println!("{out}");
    } else {
        println!(
            "{}: {} tools, {items} items scanned, {} findings",
            server.name,
            metadata.tools.len(),
            rows.len()
        );
        for r in &rows {
            let at = if r.pointer.is_empty() {
                ""
            } else {
                r.pointer.as_str()
            };
            println!(
                "  {:<8} {} {}  {}  {}{}",
                r.level.name().to_uppercase(),
                r.kind,
                r.name,
                r.category,
                r.rule,
                if at.is_empty() {
                    String::new()
                } else {
                    format!("  at {at}")
                }
            );
        }
        if failed {
            println!(
                "findings at or above {}: review before adding this server",
                args.fail_on.name()
            );
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
