//! `portcullis catalog list|diff|approve|pin`: the pinned tool definitions of the catalog.
//!
//! Works on the control-plane store directly (`--storage URL`, or the `storage:` of
//! `--config FILE`); running gateways notice a new pin within a second (they poll the store's
//! pin revision). A tool is *pinned* when the version the gateway last saw is the approved one,
//! *changed* when a different version was seen after the pin (a rug pull, quarantined), *new*
//! or *poisoned* when it has no pin and was quarantined on sight.
//!
//! - `list`: every known tool with its state (`--json` for one object per tool);
//! - `diff SERVER [TOOL]`: unified diff between the pinned and each waiting definition
//!   (canonical JSON, sorted keys); exit 1 when there is a difference, like diff(1);
//! - `approve SERVER TOOL [--hash PREFIX]`: pin the waiting version (the latest seen, or the
//!   one whose hash starts with PREFIX), which releases it;
//! - `pin SERVER [TOOL…] --config FILE`: list the server now through the gateway's connectors
//!   and pin its current definitions (refusing poisoned ones unless `--force`).
//!
//! Exit codes: 0 success, 1 `diff` found differences or `pin` refused a tool, 2 error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use portcullis_gateway::scanning::canonical;
use portcullis_gateway::scanning::catalog::{self, entries};
use portcullis_gateway::scanning::metadata::short;
use portcullis_gateway::scanning::pins::{self, DefinitionRow};
use portcullis_store::Store;
use serde_json::{Value, json};

/// `portcullis catalog ...`
#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// The store: sqlite://PATH or postgres://USER@HOST/DB (default: `storage:` of --config).
    #[arg(long, global = true, env = "PORTCULLIS_STORAGE")]
    storage: Option<String>,
    /// The gateway's config (for `storage:` and, with `pin`, the catalog).
    #[arg(long, short, global = true, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: CatalogCommand,
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Every known tool: pinned, changed (quarantined), new or poisoned.
    List {
        /// Only this server.
        #[arg(long)]
        server: Option<String>,
        /// One JSON object per tool, as an array.
        #[arg(long)]
        json: bool,
    },
    /// Unified diff of each waiting definition against the pinned one. Exit 1 when any.
    Diff {
        server: String,
        tool: Option<String>,
    },
    /// Pin the waiting version of a tool, releasing it from quarantine.
    Approve {
        server: String,
        tool: String,
        /// The version to pin: a prefix of its SHA-256 (default: the latest seen).
        #[arg(long)]
        hash: Option<String>,
        /// Who approves (recorded with the pin; default `cli:$USER`).
        #[arg(long)]
        by: Option<String>,
    },
    /// List a catalog server now and pin its current tool definitions (needs --config).
    Pin {
        server: String,
        /// Only these tools (default: all).
        tools: Vec<String>,
        /// Pin tools with poisoning findings too.
        #[arg(long)]
        force: bool,
        /// Who pins (default `cli:$USER`).
        #[arg(long)]
        by: Option<String>,
    },
}

pub fn run(args: CatalogArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("portcullis catalog: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run_async(args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("portcullis catalog: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run_async(args: CatalogArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => Some(portcullis_config::load(path).map_err(|e| anyhow!("{e}"))?),
        None => None,
    };
    let url = args
        .storage
        .clone()
        .or_else(|| config.as_ref().map(|c| c.storage.clone()))
        .ok_or_else(|| anyhow!("--storage URL or --config FILE is required"))?;
    let creating = matches!(args.command, CatalogCommand::Pin { .. });
    let store = open(&url, creating).await?;
    let code = match args.command {
        CatalogCommand::List { server, json } => list(&store, server.as_deref(), json).await?,
        CatalogCommand::Diff { server, tool } => diff(&store, &server, tool.as_deref()).await?,
        CatalogCommand::Approve {
            server,
            tool,
            hash,
            by,
        } => approve(&store, &server, &tool, hash.as_deref(), &approver(by)).await?,
        CatalogCommand::Pin {
            server,
            tools,
            force,
            by,
        } => {
            let config = config.ok_or_else(|| anyhow!("`catalog pin` needs --config FILE"))?;
            let entry = config
                .servers
                .get(&server)
                .ok_or_else(|| anyhow!("no catalog server named {server:?}"))?;
            pin(&store, entry, &tools, force, &approver(by)).await?
        }
    };
    store.close().await;
    Ok(code)
}

/// Opens the store; a SQLite file must already exist unless `creating`.
async fn open(url: &str, creating: bool) -> anyhow::Result<Store> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        if !creating && !path.contains(":memory:") && !std::path::Path::new(path).exists() {
            bail!("no store at {path} (has the gateway run with this storage?)");
        }
    }
    let store = Store::connect(url)
        .await
        .with_context(|| format!("cannot open {}", portcullis_config::mask_url_password(url)))?;
    pins::migrate(&store).await?;
    Ok(store)
}

fn approver(by: Option<String>) -> String {
    by.unwrap_or_else(|| {
        format!(
            "cli:{}",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into())
        )
    })
}

async fn list(store: &Store, server: Option<&str>, as_json: bool) -> anyhow::Result<ExitCode> {
    let entries = entries(store).await?;
    let shown = entries
        .iter()
        .filter(|((s, _), _)| server.is_none_or(|want| want == s));
    if as_json {
        let items: Vec<Value> = shown.map(|((s, t), e)| e.to_json(s, t)).collect();
        println!("{}", Value::Array(items));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<28} {:<9} {:<26} WAITING",
        "SERVER", "TOOL", "STATE", "PINNED"
    );
    for ((s, t), e) in shown {
        let pinned = e
            .pin
            .as_ref()
            .map(|p| format!("{} ({})", short(&p.hash), p.by))
            .unwrap_or_else(|| "-".into());
        let waiting: Vec<String> = e
            .waiting()
            .iter()
            .map(|v| format!("{} ({})", short(&v.hash), v.event))
            .collect();
        println!(
            "{s:<16} {t:<28} {:<9} {pinned:<26} {}",
            e.state(),
            if waiting.is_empty() {
                "-".to_owned()
            } else {
                waiting.join(", ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn diff(store: &Store, server: &str, tool: Option<&str>) -> anyhow::Result<ExitCode> {
    let entries = entries(store).await?;
    let mut differences = 0;
    let mut known = false;
    for ((s, t), e) in &entries {
        if s != server || tool.is_some_and(|want| want != t) {
            continue;
        }
        known = true;
        for version in e.waiting() {
            differences += 1;
            let (old, old_label) = match (e.pinned_definition(), &e.pin) {
                (Some(def), Some(pin)) => (
                    pretty(&def.definition),
                    format!("{s}/{t} pinned sha256:{} ({})", short(&pin.hash), pin.by),
                ),
                (None, Some(pin)) => (
                    String::new(),
                    format!(
                        "{s}/{t} pinned sha256:{} (definition not recorded)",
                        short(&pin.hash)
                    ),
                ),
                (_, None) => (String::new(), format!("{s}/{t} (no pin)")),
            };
            let new_label = format!(
                "{s}/{t} seen sha256:{} ({})",
                short(&version.hash),
                version.event
            );
            print!(
                "{}",
                unified_diff(&old, &pretty(&version.definition), &old_label, &new_label)
            );
            let findings: Value = serde_json::from_str(&version.findings).unwrap_or(Value::Null);
            if findings.as_array().is_some_and(|a| !a.is_empty()) {
                println!("# poisoning findings: {findings}");
            }
        }
    }
    if !known {
        bail!(
            "no tool {}{} in the catalog store",
            server,
            tool.map(|t| format!("/{t}")).unwrap_or_default()
        );
    }
    Ok(if differences > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn approve(
    store: &Store,
    server: &str,
    tool: &str,
    hash: Option<&str>,
    by: &str,
) -> anyhow::Result<ExitCode> {
    let approved = catalog::approve(store, server, tool, hash, by).await?;
    println!(
        "approved {server}/{tool} sha256:{} by {by}{}",
        short(&approved.hash),
        approved
            .previous
            .map(|p| format!(" (was sha256:{})", short(&p)))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

async fn pin(
    store: &Store,
    server: &portcullis_config::ServerConfig,
    only: &[String],
    force: bool,
    by: &str,
) -> anyhow::Result<ExitCode> {
    let mut server = server.clone();
    server.request_timeout = server.request_timeout.min(Duration::from_secs(60));
    let metadata = portcullis_gateway::scanning::fetch::fetch(&server)
        .await
        .with_context(|| format!("cannot list the tools of {}", server.name))?;
    let scanner = portcullis_gateway::scanning::scanner().map_err(|e| anyhow!("{e}"))?;
    let mut refused = 0;
    let mut seen = Vec::new();
    for tool in &metadata.tools {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            continue;
        };
        if !only.is_empty() && !only.iter().any(|n| n == name) {
            continue;
        }
        seen.push(name.to_owned());
        let hash = canonical::definition_hash(tool);
        let findings = portcullis_scan::json::scan_tool(scanner, tool);
        if !findings.is_empty() && !force {
            refused += 1;
            let what: Vec<&str> = findings.iter().map(|f| f.finding.category.name()).collect();
            println!(
                "refused {}/{name} sha256:{}: poisoning findings ({}); use --force to pin anyway",
                server.name,
                short(&hash),
                what.join(", ")
            );
            continue;
        }
        let now = portcullis_store::unix_now();
        let findings: Vec<Value> = findings
            .iter()
            .map(|f| json!({"category": f.finding.category.name(), "severity": f.finding.severity, "rule": f.finding.rule, "pointer": f.pointer}))
            .collect();
        pins::apply(
            store,
            pins::Write::Definition(DefinitionRow {
                server: server.name.clone(),
                tool: name.to_owned(),
                hash: hash.clone(),
                definition: canonical::canonical(tool),
                findings: Value::Array(findings).to_string(),
                event: "pinned".into(),
                first_seen: now,
                last_seen: now,
            }),
        )
        .await?;
        pins::approve(store, &server.name, name, &hash, by).await?;
        println!("pinned {}/{name} sha256:{}", server.name, short(&hash));
    }
    for want in only {
        if !seen.contains(want) {
            println!("{}/{want}: not listed by the server", server.name);
            refused += 1;
        }
    }
    Ok(if refused > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Canonical JSON text → sorted, indented text for diffs (the text itself if not JSON).
fn pretty(definition: &str) -> String {
    match serde_json::from_str::<Value>(definition) {
        Ok(value) => canonical::pretty(&value),
        Err(_) => definition.to_owned(),
    }
}

/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Beyond this many lines on a side, the diff replaces everything instead of aligning.
const MAX_DIFF_LINES: usize = 4000;

/// A unified diff of two texts (`--- old`, `+++ new`, `@@ -a,b +c,d @@` hunks).
pub fn unified_diff(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    let a: Vec<&str> = if old.is_empty() {
        Vec::new()
    } else {
        old.lines().collect()
    };
    let b: Vec<&str> = if new.is_empty() {
        Vec::new()
    } else {
        new.lines().collect()
    };
    let ops = line_ops(&a, &b);
    let mut out = format!("--- {old_label}\n+++ {new_label}\n");
    // Indexes of ops that are changes; hunks gather changes closer than 2*CONTEXT.
    let changes: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.0 != ' ')
        .map(|(i, _)| i)
        .collect();
    let mut i = 0;
    while i < changes.len() {
        let start = changes[i].saturating_sub(CONTEXT);
        let mut end = changes[i];
        while i + 1 < changes.len() && changes[i + 1] <= end + 2 * CONTEXT + 1 {
            i += 1;
            end = changes[i];
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        // Line numbers at the hunk's start.
        let (mut old_line, mut new_line) = (1, 1);
        for op in &ops[..start] {
            if op.0 != '+' {
                old_line += 1;
            }
            if op.0 != '-' {
                new_line += 1;
            }
        }
        let old_count = ops[start..end].iter().filter(|op| op.0 != '+').count();
        let new_count = ops[start..end].iter().filter(|op| op.0 != '-').count();
        let old_start = if old_count == 0 {
            old_line - 1
        } else {
            old_line
        };
        let new_start = if new_count == 0 {
            new_line - 1
        } else {
            new_line
        };
        out.push_str(&format!(
            "@@ -{old_start},{old_count} +{new_start},{new_count} @@\n"
        ));
        for (tag, line) in &ops[start..end] {
            out.push(*tag);
            out.push_str(line);
            out.push('\n');
        }
        i += 1;
    }
    out
}

/// Edit script from `a` to `b`: `' '` keep, `'-'` remove, `'+'` add (longest common
/// subsequence of lines).
fn line_ops<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(char, &'a str)> {
    if a.len() > MAX_DIFF_LINES || b.len() > MAX_DIFF_LINES {
        return a
            .iter()
            .map(|l| ('-', *l))
            .chain(b.iter().map(|l| ('+', *l)))
            .collect();
    }
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: LCS length of a[i..] and b[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if a[i] == b[j] {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) {
            // Removals before additions, as diff(1) prints them.
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_diff_shows_the_changed_line_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\ni\n";
        let diff = unified_diff(old, new, "old", "new");
        assert_eq!(
            diff,
            "--- old\n+++ new\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
    }

    #[test]
    fn diff_against_nothing_adds_every_line() {
        let diff = unified_diff("", "x\ny\n", "none", "new");
        assert_eq!(diff, "--- none\n+++ new\n@@ -0,0 +1,2 @@\n+x\n+y\n");
        assert_eq!(unified_diff("same\n", "same\n", "a", "b"), "--- a\n+++ b\n");
    }
}
