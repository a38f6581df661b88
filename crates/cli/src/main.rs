//! The `portcullis` command line: a thin layer of verbs over the gateway library.
//!
//! Exit codes scripts can rely on: 0 success, 1 the verb's check failed (invalid config, …),
//! 2 usage error (clap) or the command could not run.

mod audit;
mod check;
mod connect;
mod demo;
mod eval;
mod policy;
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
        /// Threads serving requests (default: one per CPU). On small, shared machines one
        /// thread can cost less CPU per call; see BENCHMARKS.md.
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
        } => runtime_with(worker_threads.map(usize::from)).block_on(serve::run(config, listen)),
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
