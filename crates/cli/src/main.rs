//! The `portcullis` command line: a thin layer of verbs over the gateway library.
//!
//! Exit codes scripts can rely on: 0 success, 1 the verb's check failed (invalid config, …),
//! 2 usage error (clap) or the command could not run.

mod approvals;
mod audit;
mod catalog;
mod check;
mod connect;
mod control;
mod demo;
mod eval;
mod policy;
mod scan;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the gateway allocates many short-lived buffers per message; the system allocator
/// cost about a fifth of the CPU per call in profiles (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A security and governance gateway for the Model Context Protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway. Without --config it runs an embedded demo: SQLite, a demo upstream
    /// and a fresh API key, all printed at start.
    Serve {
        /// The portcullis.yaml to run (hot-reloaded on change).
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address of the embedded demo (ignored with --config; use `listen:` there).
        #[arg(long, default_value = "127.0.0.1:8686")]
        listen: std::net::SocketAddr,
        /// Event loops serving requests (default: one per CPU): each is a thread that serves
        /// the connections it accepts from start to end; see BENCHMARKS.md.
        #[arg(long, env = "PORTCULLIS_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        worker_threads: Option<u16>,
    },
    /// The audit trail: `audit verify` (exit 0 intact, 1 tampered, 2 unreadable), `audit tail`,
    /// `audit export --format jsonl|csv`.
    Audit(audit::AuditArgs),
    /// Validate a config file and print every error with its path.
    Check {
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Bridge stdio to a remote gateway: configure this command as a stdio MCP server in a
    /// client that speaks only stdio (Claude Desktop, Cursor). stdout carries only MCP messages.
    Connect {
        /// The gateway's MCP endpoint, e.g. https://gateway.example/mcp or …/mcp/{server}.
        url: String,
        /// Bearer token for the gateway (prefer the environment variable: argv is visible to
        /// other local users).
        #[arg(long, env = "PORTCULLIS_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Extra HTTP header for every request, as 'Name: value' (repeatable).
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
    },
    /// Policy tools: `policy explain` decides one call against a config's rules (exit 0 allow,
    /// 1 deny or approve).
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Score the content scanners on labelled JSONL files (default: ../shared/eval), per file
    /// and per kind. Exit 0 after measuring, 2 on unreadable input.
    Eval {
        /// JSONL files in the schema of ../shared/eval/README.md.
        files: Vec<PathBuf>,
        /// One JSON object per file and kind instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Pinned tool definitions: `catalog list`, `catalog diff SERVER [TOOL]` (exit 1 when a
    /// definition changed), `catalog approve SERVER TOOL`, `catalog pin SERVER [TOOL…]`.
    Catalog(catalog::CatalogArgs),
    /// Kill switches on a running gateway (admin API): `kill agent NAME | server NAME |
    /// tool GLOB | all [--reason TEXT]`, `kill --list`. Immediate, also for calls in flight;
    /// kept across restarts. Exit 0 done, 1 refused by the gateway, 2 usage or unreachable.
    Kill(control::KillArgs),
    /// Remove a kill switch: `revive agent NAME | server NAME | tool GLOB | all`.
    Revive(control::ReviveArgs),
    /// Task tokens: `token issue --agent-key KEY --servers a,b --tools 'a__*' --ttl 15m
    /// --max-calls 20` (prints the token), `token revoke ID`, `token list`.
    Token(control::TokenArgs),
    /// Static analysis of a server's tool metadata (from --config/--server, --url, or
    /// `-- CMD ARGS`): findings with severity; exit 0 clean, 1 findings at or above
    /// --fail-on, 2 error.
    Scan(scan::ScanArgs),
    /// Held calls (admin API): `approvals list [--status S]`, `approvals show ID`,
    /// `approvals approve ID [--reason TEXT]`, `approvals deny ID --reason TEXT`. Exit 0 done,
    /// 1 refused by the gateway, 2 usage or unreachable.
    Approvals(approvals::ApprovalsArgs),
    /// Run the demo MCP server on stdio (what the embedded demo's catalog launches).
    #[command(hide = true)]
    DemoServer,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            worker_threads,
        } => {
            runtime_with(None).block_on(serve::run(config, listen, worker_threads.map(usize::from)))
        }
        Command::Check { config } => return check::run(&config),
        Command::Audit(args) => return audit::run(args),
        Command::Connect {
            url,
            token,
            headers,
        } => runtime().block_on(connect::run(connect::Options {
            url,
            token,
            headers,
        })),
        Command::Policy { command } => return policy::run(command),
        Command::Eval { files, json } => return eval::run(&files, json),
        Command::Catalog(args) => return catalog::run(args),
        Command::Kill(args) => return control::kill(args),
        Command::Revive(args) => return control::revive(args),
        Command::Token(args) => return control::token(args),
        Command::Scan(args) => return scan::run(args),
        Command::Approvals(args) => return approvals::run_approvals(args),
        Command::DemoServer => runtime().block_on(demo::run()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("portcullis: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    runtime_with(None)
}

/// The multi-threaded runtime, with `worker_threads` workers (tokio's default: one per CPU).
fn runtime_with(worker_threads: Option<usize>) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    builder
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// Logs go to stderr (stdout belongs to protocol traffic in stdio modes), filtered by
/// `PORTCULLIS_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
