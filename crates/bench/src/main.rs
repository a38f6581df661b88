//! `portcullis-loadgen`: measures a fast MCP upstream directly and the same upstream through the
//! real gateway binary, in one run, on 127.0.0.1 only.
//!
//! One run starts two upstream processes (this binary's hidden `upstream` subcommand: `fast`,
//! both eras, the gateway picks the modern one; `legacy`, legacy era only), starts
//! `portcullis serve` on a generated config with a generated API key, and measures:
//!
//! 1. gateway RSS idle, with 1,000 open legacy sessions, with each of them having made one call
//!    through the legacy upstream (so the gateway also holds 1,000 upstream sessions), and after
//!    deleting them;
//! 2. open-loop latency at a fixed rate, direct vs via the gateway, from the scheduled send time;
//! 3. closed-loop throughput at each concurrency, direct vs via the gateway;
//! 4. gateway RSS after the throughput runs.
//!
//! Every measurement is repeated `--runs` times (direct and via interleaved) and the median of
//! the runs is reported, with the budgets of DESIGN.md and pass/fail. Child processes are killed
//! when the run ends, also on error. See BENCHMARKS.md for the figures and the commands.

mod bare_proxy;
mod client;
mod upstream;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use client::{ClosedLoopRun, OpenLoopRun, Percentiles, Target};

const LEGACY: &str = upstream::LEGACY;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Parser)]
#[command(
    name = "portcullis-loadgen",
    about = "Direct vs through-the-gateway load benchmark (127.0.0.1 only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: serve the benchmark upstream and print `LISTENING <addr>`.
    #[command(hide = true)]
    Upstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Refuse `server/discover` so the gateway uses legacy sessions.
        #[arg(long)]
        legacy_only: bool,
        /// Tokio worker threads (default: one per CPU).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Internal: a bare pass-through proxy in the gateway's place (`--gateway-bin` pointing at
    /// this binary), the floor of any HTTP proxy on this machine (`bare_proxy.rs`).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum RouteKind {
    /// `/mcp`, tool `fast__echo` (namespace rewriting included).
    Aggregate,
    /// `/mcp/fast`, tool `echo`.
    Transparent,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The gateway binary (default: $CARGO_TARGET_DIR/release/portcullis, else target/release/portcullis).
    #[arg(long, env = "PORTCULLIS_BIN")]
    gateway_bin: Option<PathBuf>,
    /// Gateway route the via-gateway client uses.
    #[arg(long, value_enum, default_value = "aggregate")]
    route: RouteKind,
    /// Open-loop request rate (requests per second).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Open-loop measured seconds (after the warm-up).
    #[arg(long, default_value_t = 20)]
    latency_secs: u64,
    /// Warm-up seconds before each measured run (not recorded).
    #[arg(long, default_value_t = 3)]
    warmup_secs: u64,
    /// Closed-loop concurrencies (connections).
    #[arg(long, value_delimiter = ',', default_values_t = [32usize, 64])]
    concurrency: Vec<usize>,
    /// Closed-loop measured seconds per concurrency.
    #[arg(long, default_value_t = 10)]
    throughput_secs: u64,
    /// Legacy sessions opened for the memory figure.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Repetitions of every load measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Client tokio worker threads.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// CPU list for the gateway process (`taskset -c`), e.g. `1`.
    #[arg(long)]
    gateway_cpus: Option<String>,
    /// CPU list for the upstream processes (`taskset -c`), e.g. `0`.
    #[arg(long)]
    upstream_cpus: Option<String>,
    /// Skip parts: any of latency, throughput, sessions.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Print the machine-readable report (JSON) on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// YAML appended to the generated gateway config, e.g. `audit: { enabled: false }` for a
    /// baseline without the audit trail, or `audit: { sync: normal }`.
    #[arg(long)]
    gateway_yaml: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Upstream {
            listen,
            legacy_only,
            threads,
        }) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(threads) = threads {
                builder.worker_threads(threads);
            }
            builder.enable_all().build()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                println!("LISTENING {}", listener.local_addr()?);
                upstream::serve(listener, legacy_only).await
            })
        }
        Some(Cmd::Serve { config }) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(bare_proxy::serve(&config)),
        None => {
            let args = cli.run;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.client_threads.max(1))
                .enable_all()
                .build()?;
            let report = runtime.block_on(run(&args))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_table(&report);
            }
            Ok(())
        }
    }
}

/// A child process killed (and reaped) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped {} (pid {})", self.name, self.child.id());
    }
}

fn command(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpus).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn spawn_upstream(legacy_only: bool, cpus: Option<&str>) -> anyhow::Result<(Proc, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let mut cmd = command(&exe, cpus);
    cmd.args(["upstream", "--listen", "127.0.0.1:0"]);
    if legacy_only {
        cmd.arg("--legacy-only");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn upstream")?;
    let stdout = child.stdout.take().context("upstream stdout")?;
    let proc = Proc {
        name: if legacy_only {
            "upstream (legacy)"
        } else {
            "upstream (fast)"
        },
        child,
    };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("LISTENING ")
        .with_context(|| format!("upstream said {line:?}"))?
        .parse()?;
    Ok((proc, addr))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn gateway_bin(args: &RunArgs) -> anyhow::Result<PathBuf> {
    let path = match &args.gateway_bin {
        Some(path) => path.clone(),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"));
            target.join("release").join("portcullis")
        }
    };
    anyhow::ensure!(
        path.is_file(),
        "gateway binary {} not found (build it with cargo build --release -p portcullis, or pass --gateway-bin)",
        path.display()
    );
    Ok(path)
}

/// VmRSS and VmHWM of a process, in bytes.
fn rss(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        let kib: u64 = line.split_whitespace().nth(1).context("value")?.parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux x86-64).
const CLK_TCK: f64 = 100.0;

/// utime + stime of a process, in clock ticks (0 if unreadable).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name: field 3 (state) is index 0, so utime (14) and stime (15) are 11, 12.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[derive(Serialize)]
struct Machine {
    date_utc: String,
    nproc: usize,
    cpu_model: String,
    mem_total: String,
    kernel: String,
    loadavg_start: String,
    loadavg_end: String,
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Machine {
        date_utc: date,
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model: field(&cpuinfo, "model name"),
        mem_total: field(&read("/proc/meminfo"), "MemTotal"),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
    }
}

#[derive(Serialize)]
struct LatencySummary {
    /// Medians over the runs of each percentile.
    direct: Percentiles,
    via: Percentiles,
    added_p50_ms: f64,
    added_p99_ms: f64,
    added_p999_ms: f64,
    runs: Vec<OpenLoopRun>,
}

#[derive(Serialize)]
struct ThroughputSummary {
    concurrency: usize,
    direct_rps: f64,
    via_rps: f64,
    ratio: f64,
    direct_p50_ms: f64,
    via_p50_ms: f64,
    /// Median over the via runs of the gateway's CPU time per request.
    gateway_cpu_us_per_request: f64,
    runs: Vec<ClosedLoopRun>,
}

#[derive(Serialize, Default)]
struct Memory {
    idle_mib: f64,
    sessions: usize,
    /// After `sessions` legacy sessions were opened (initialize + notifications/initialized).
    with_sessions_mib: f64,
    /// After each of those sessions made one call through the legacy-only upstream, so the gateway
    /// also holds one upstream session per gateway session.
    with_sessions_and_upstream_sessions_mib: f64,
    after_delete_mib: f64,
    after_load_mib: Option<f64>,
    peak_hwm_mib: f64,
    session_errors: usize,
}

#[derive(Serialize)]
struct Budget {
    what: String,
    budget: String,
    measured: String,
    pass: bool,
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    gateway_bin: String,
    gateway_cpus: Option<String>,
    upstream_cpus: Option<String>,
    client_threads: usize,
    route: RouteKind,
    via_path: String,
    via_tool: String,
    rate: u32,
    latency_secs: u64,
    warmup_secs: u64,
    throughput_secs: u64,
    runs: usize,
    latency: Option<LatencySummary>,
    throughput: Vec<ThroughputSummary>,
    memory: Memory,
    budgets: Vec<Budget>,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn median_percentiles(runs: &[&OpenLoopRun]) -> Percentiles {
    let m = |f: fn(&Percentiles) -> f64| median(runs.iter().map(|r| f(&r.latency)).collect());
    Percentiles {
        p50_ms: m(|p| p.p50_ms),
        p90_ms: m(|p| p.p90_ms),
        p99_ms: m(|p| p.p99_ms),
        p999_ms: m(|p| p.p999_ms),
        max_ms: m(|p| p.max_ms),
    }
}

async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    let bin = gateway_bin(args)?;
    let mut machine = machine();
    let (fast, fast_addr) = spawn_upstream(false, args.upstream_cpus.as_deref())?;
    let (legacy, legacy_addr) = spawn_upstream(true, args.upstream_cpus.as_deref())?;
    eprintln!(
        "upstreams: fast {fast_addr} (pid {}), legacy {legacy_addr} (pid {})",
        fast.pid(),
        legacy.pid()
    );

    let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let token = format!("pc_bench_{:032x}", rand::random::<u128>());
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    let port = free_port()?;
    let gateway_addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let yaml = format!(
        "listen: {gateway_addr}\nstorage: sqlite://{db}\nservers:\n  fast:\n    url: http://{fast_addr}/mcp\n  legacy:\n    url: http://{legacy_addr}/mcp\nauth:\n  api_keys:\n    - {{ agent: loadgen, sha256: \"{digest}\" }}\nlimits: {{ max_sessions: {max} }}\nrules:\n  - {{ id: loadgen, allow: {{ agents: [loadgen] }} }}\n{extra}\n",
        db = dir.join("portcullis.db").display(),
        max = (args.sessions + 100).max(10_000),
        extra = args.gateway_yaml.as_deref().unwrap_or(""),
    );
    let config = dir.join("portcullis.yaml");
    std::fs::write(&config, yaml)?;
    let log = std::fs::File::create(dir.join("gateway.log"))?;
    let child = command(&bin, args.gateway_cpus.as_deref())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("PORTCULLIS_LOG", "warn")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let gateway = Proc {
        name: "gateway",
        child,
    };
    eprintln!(
        "gateway: {} serve on {gateway_addr} (pid {}), files in {}",
        bin.display(),
        gateway.pid(),
        dir.display()
    );

    let result = measure(
        args,
        &bin,
        &mut machine,
        &gateway,
        gateway_addr,
        fast_addr,
        fast.pid(),
        &token,
    )
    .await;
    drop(gateway);
    drop(fast);
    drop(legacy);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("gateway log kept in {}", dir.display());
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &RunArgs,
    bin: &Path,
    machine: &mut Machine,
    gateway: &Proc,
    gateway_addr: SocketAddr,
    fast_addr: SocketAddr,
    fast_pid: u32,
    token: &str,
) -> anyhow::Result<Report> {
    wait_ready(gateway_addr).await?;
    let (via_path, via_tool) = match args.route {
        RouteKind::Aggregate => ("/mcp".to_owned(), "fast__echo".to_owned()),
        RouteKind::Transparent => ("/mcp/fast".to_owned(), "echo".to_owned()),
    };
    let direct = Target {
        addr: fast_addr,
        path: "/mcp".into(),
        tool: "echo".into(),
        token: token.into(),
    };
    let via = Target {
        addr: gateway_addr,
        path: via_path.clone(),
        tool: via_tool.clone(),
        token: token.into(),
    };
    // One call each way: the gateway detects the upstream's era, both paths are known to work.
    for target in [&direct, &via] {
        let mut sender = client::connect(target.addr).await?;
        client::send(&mut sender, client::tools_call(target, 1))
            .await
            .with_context(|| format!("first call to {}{}", target.addr, target.path))?;
    }
    let mib = |bytes: u64| bytes as f64 / MIB;
    let mut memory = Memory {
        idle_mib: mib(rss(gateway.pid())?.0),
        sessions: args.sessions,
        ..Default::default()
    };
    eprintln!("gateway idle RSS {:.1} MiB", memory.idle_mib);

    if !args.skip.iter().any(|s| s == "sessions") {
        sessions(
            gateway_addr,
            token,
            args.sessions,
            gateway.pid(),
            &mut memory,
        )
        .await?;
    }

    let warmup = Duration::from_secs(args.warmup_secs);
    let mut latency = None;
    if !args.skip.iter().any(|s| s == "latency") {
        let mut runs = Vec::new();
        for i in 0..args.runs {
            for (label, target) in [("direct", &direct), ("via", &via)] {
                eprintln!(
                    "open loop {label} run {}/{}: {} req/s, {}+{} s",
                    i + 1,
                    args.runs,
                    args.rate,
                    args.warmup_secs,
                    args.latency_secs
                );
                let run = client::open_loop(
                    target.clone(),
                    label,
                    args.rate,
                    warmup,
                    Duration::from_secs(args.latency_secs),
                )
                .await?;
                eprintln!(
                    "  p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms errors {} conns {} load {}",
                    run.latency.p50_ms,
                    run.latency.p99_ms,
                    run.latency.p999_ms,
                    run.errors,
                    run.connections,
                    run.loadavg
                );
                runs.push(run);
            }
        }
        let of = |label: &str| {
            runs.iter()
                .filter(|r| r.target == label)
                .collect::<Vec<_>>()
        };
        let (d, v) = (
            median_percentiles(&of("direct")),
            median_percentiles(&of("via")),
        );
        latency = Some(LatencySummary {
            direct: d,
            via: v,
            added_p50_ms: v.p50_ms - d.p50_ms,
            added_p99_ms: v.p99_ms - d.p99_ms,
            added_p999_ms: v.p999_ms - d.p999_ms,
            runs,
        });
    }

    let mut throughput = Vec::new();
    if !args.skip.iter().any(|s| s == "throughput") {
        for &concurrency in &args.concurrency {
            let mut runs = Vec::new();
            for i in 0..args.runs {
                for (label, target) in [("direct", &direct), ("via", &via)] {
                    eprintln!(
                        "closed loop {label} c={concurrency} run {}/{}: {} s",
                        i + 1,
                        args.runs,
                        args.throughput_secs
                    );
                    let mut pids = vec![("upstream", fast_pid), ("client", std::process::id())];
                    if label == "via" {
                        pids.push(("gateway", gateway.pid()));
                    }
                    let before: Vec<u64> = pids.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
                    let started = Instant::now();
                    let mut run = client::closed_loop(
                        target.clone(),
                        label,
                        concurrency,
                        Duration::from_secs(2),
                        Duration::from_secs(args.throughput_secs),
                    )
                    .await?;
                    // Requests completed over the whole run, warm-up included, estimated from the
                    // measured rate.
                    let all_requests = run.rps * started.elapsed().as_secs_f64();
                    for ((name, pid), before) in pids.iter().zip(before) {
                        let us = (cpu_ticks(*pid) - before) as f64 * 1e6 / CLK_TCK;
                        run.cpu_us_per_request
                            .insert((*name).to_owned(), us / all_requests);
                    }
                    eprintln!(
                        "  {:.0} req/s p50 {:.3} ms errors {} cpu µs/req {:?} load {}",
                        run.rps,
                        run.latency.p50_ms,
                        run.errors,
                        run.cpu_us_per_request,
                        run.loadavg
                    );
                    runs.push(run);
                }
            }
            let pick = |label: &str, f: fn(&ClosedLoopRun) -> f64| {
                median(runs.iter().filter(|r| r.target == label).map(f).collect())
            };
            let (direct_rps, via_rps) = (pick("direct", |r| r.rps), pick("via", |r| r.rps));
            throughput.push(ThroughputSummary {
                concurrency,
                direct_rps,
                via_rps,
                ratio: via_rps / direct_rps,
                direct_p50_ms: pick("direct", |r| r.latency.p50_ms),
                via_p50_ms: pick("via", |r| r.latency.p50_ms),
                gateway_cpu_us_per_request: median(
                    runs.iter()
                        .filter_map(|r| r.cpu_us_per_request.get("gateway").copied())
                        .collect(),
                ),
                runs,
            });
        }
        memory.after_load_mib = Some(mib(rss(gateway.pid())?.0));
    }
    memory.peak_hwm_mib = mib(rss(gateway.pid())?.1);
    machine.loadavg_end = loadavg();

    let mut budgets = Vec::new();
    if let Some(l) = &latency {
        budgets.push(Budget {
            what: format!("added latency p50 at {} req/s", args.rate),
            budget: "≤ 0.25 ms".into(),
            measured: format!("{:+.3} ms", l.added_p50_ms),
            pass: l.added_p50_ms <= 0.25,
        });
        budgets.push(Budget {
            what: format!("added latency p99 at {} req/s", args.rate),
            budget: "≤ 1 ms".into(),
            measured: format!("{:+.3} ms", l.added_p99_ms),
            pass: l.added_p99_ms <= 1.0,
        });
    }
    for t in &throughput {
        budgets.push(Budget {
            what: "throughput via / direct".into(),
            budget: "≥ 0.8×".into(),
            measured: format!("{:.2}× (c={})", t.ratio, t.concurrency),
            pass: t.ratio >= 0.8,
        });
    }
    if memory.with_sessions_mib > 0.0 {
        let worst = memory
            .with_sessions_mib
            .max(memory.with_sessions_and_upstream_sessions_mib);
        budgets.push(Budget {
            what: format!("gateway RSS with {} open sessions", args.sessions),
            budget: "≤ 100 MiB".into(),
            measured: format!("{worst:.1} MiB"),
            pass: worst <= 100.0,
        });
    }

    Ok(Report {
        machine: std::mem::replace(machine, self::machine()),
        gateway_bin: bin.display().to_string(),
        gateway_cpus: args.gateway_cpus.clone(),
        upstream_cpus: args.upstream_cpus.clone(),
        client_threads: args.client_threads,
        route: args.route,
        via_path,
        via_tool,
        rate: args.rate,
        latency_secs: args.latency_secs,
        warmup_secs: args.warmup_secs,
        throughput_secs: args.throughput_secs,
        runs: args.runs,
        latency,
        throughput,
        memory,
        budgets,
    })
}

async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = async {
            let mut sender = client::connect(addr).await?;
            let request = Request::get("/readyz")
                .header("host", addr.to_string())
                .body(Full::new(Bytes::new()))?;
            let response = sender.send_request(request).await?;
            anyhow::Ok(response.status() == 200)
        }
        .await
        .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the gateway on {addr} was not ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A legacy-era POST (or DELETE when `body` is None) on `/mcp`; returns status, session header, body.
async fn legacy(
    sender: &mut client::Sender,
    addr: SocketAddr,
    token: &str,
    session: Option<&str>,
    body: Option<String>,
) -> anyhow::Result<(u16, Option<String>, Bytes)> {
    let mut request = match &body {
        Some(_) => Request::post("/mcp"),
        None => Request::delete("/mcp"),
    }
    .header("host", addr.to_string())
    .header("content-type", "application/json")
    .header("accept", "application/json, text/event-stream")
    .header("authorization", format!("Bearer {token}"));
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", LEGACY);
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let exchange = async {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let session = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, session, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .context("legacy request timed out")?
}

/// Opens `count` legacy sessions (16 at a time), measures RSS, makes one call on each through the
/// legacy upstream, measures again, deletes them all, measures again.
async fn sessions(
    addr: SocketAddr,
    token: &str,
    count: usize,
    pid: u32,
    memory: &mut Memory,
) -> anyhow::Result<()> {
    const WORKERS: usize = 16;
    let mib = |bytes: u64| bytes as f64 / MIB;
    let token: Arc<str> = token.into();
    let ids: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let errors = Arc::new(AtomicUsize::new(0));

    // Phase 1: initialize + notifications/initialized.
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let (token, ids, errors, next) = (
            Arc::clone(&token),
            Arc::clone(&ids),
            Arc::clone(&errors),
            Arc::clone(&next),
        );
        tasks.spawn(async move {
            let mut sender = client::connect(addr).await?;
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let init = format!(
                    r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{LEGACY}","capabilities":{{}},"clientInfo":{{"name":"portcullis-loadgen","version":"0"}}}}}}"#
                );
                let (status, session, body) = legacy(&mut sender, addr, &token, None, Some(init)).await?;
                let Some(session) = session.filter(|_| status == 200) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("  initialize: HTTP {status} {}", String::from_utf8_lossy(&body));
                    continue;
                };
                let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned();
                let (status, _, _) = legacy(&mut sender, addr, &token, Some(&session), Some(note)).await?;
                if status != 202 {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                ids.lock().expect("lock").push(session);
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    memory.with_sessions_mib = mib(rss(pid)?.0);
    eprintln!(
        "gateway RSS with {count} sessions: {:.1} MiB",
        memory.with_sessions_mib
    );

    // Phase 2: one call per session through the legacy upstream, then DELETE (phase 3).
    let all: Arc<Vec<String>> = Arc::new(std::mem::take(&mut *ids.lock().expect("lock")));
    for phase in ["call", "delete"] {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..WORKERS {
            let (token, all, errors, next) = (
                Arc::clone(&token),
                Arc::clone(&all),
                Arc::clone(&errors),
                Arc::clone(&next),
            );
            tasks.spawn(async move {
                let mut sender = client::connect(addr).await?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(session) = all.get(i) else { break };
                    let body = (phase == "call").then(|| {
                        format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"legacy__echo","arguments":{{"text":"hello"}}}}}}"#)
                    });
                    let (status, _, body) = legacy(&mut sender, addr, &token, Some(session), body).await?;
                    let ok = match phase {
                        "call" => status == 200 && body.windows(8).any(|w| w == b"\"result\""),
                        _ => (200..300).contains(&status),
                    };
                    if !ok && errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("  {phase}: HTTP {status} {}", String::from_utf8_lossy(&body));
                    }
                }
                anyhow::Ok(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined??;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = mib(rss(pid)?.0);
        if phase == "call" {
            memory.with_sessions_and_upstream_sessions_mib = now;
            eprintln!(
                "gateway RSS with {count} sessions, each with an upstream session: {now:.1} MiB"
            );
        } else {
            memory.after_delete_mib = now;
            eprintln!("gateway RSS after deleting them: {now:.1} MiB");
        }
    }
    memory.session_errors = errors.load(Ordering::Relaxed);
    Ok(())
}

fn print_table(r: &Report) {
    let m = &r.machine;
    println!("Portcullis load benchmark — {}", m.date_utc);
    println!(
        "machine: {} CPUs ({}), {}, kernel {}",
        m.nproc, m.cpu_model, m.mem_total, m.kernel
    );
    println!("loadavg: start {} | end {}", m.loadavg_start, m.loadavg_end);
    println!(
        "gateway: {} (cpus {}), upstream cpus {}, client threads {}; via = {} tool {}; {} runs each, median reported",
        r.gateway_bin,
        r.gateway_cpus.as_deref().unwrap_or("any"),
        r.upstream_cpus.as_deref().unwrap_or("any"),
        r.client_threads,
        r.via_path,
        r.via_tool,
        r.runs
    );
    if let Some(l) = &r.latency {
        println!();
        println!(
            "open loop {} req/s, {} s (+{} s warm-up), latency from scheduled send (ms):",
            r.rate, r.latency_secs, r.warmup_secs
        );
        println!(
            "{:<8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, p) in [("direct", &l.direct), ("via", &l.via)] {
            println!(
                "{name:<8} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
            );
        }
        println!(
            "{:<8} {:>+8.3} {:>8} {:>+8.3} {:>+8.3}",
            "added", l.added_p50_ms, "", l.added_p99_ms, l.added_p999_ms
        );
    }
    if !r.throughput.is_empty() {
        println!();
        println!("closed loop, {} s per run:", r.throughput_secs);
        println!(
            "{:>5} {:>12} {:>12} {:>7} {:>12} {:>12} {:>11}",
            "conns", "direct req/s", "via req/s", "ratio", "direct p50", "via p50", "gw CPU/req"
        );
        for t in &r.throughput {
            println!(
                "{:>5} {:>12.0} {:>12.0} {:>6.2}× {:>9.3} ms {:>9.3} ms {:>8.1} µs",
                t.concurrency,
                t.direct_rps,
                t.via_rps,
                t.ratio,
                t.direct_p50_ms,
                t.via_p50_ms,
                t.gateway_cpu_us_per_request
            );
        }
    }
    let mem = &r.memory;
    println!();
    println!("gateway RSS (MiB): idle {:.1}", mem.idle_mib);
    if mem.with_sessions_mib > 0.0 {
        println!(
            "  {} legacy sessions {:.1} | + one upstream session each {:.1} | after DELETE {:.1} | errors {}",
            mem.sessions,
            mem.with_sessions_mib,
            mem.with_sessions_and_upstream_sessions_mib,
            mem.after_delete_mib,
            mem.session_errors
        );
    }
    if let Some(after) = mem.after_load_mib {
        println!("  after the throughput runs {after:.1}");
    }
    println!("  peak (VmHWM) {:.1}", mem.peak_hwm_mib);
    println!();
    println!("budgets (DESIGN.md):");
    for b in &r.budgets {
        println!(
            "  {:<4} {:<40} {:>10}  measured {}",
            if b.pass { "PASS" } else { "FAIL" },
            b.what,
            b.budget,
            b.measured
        );
    }
}
