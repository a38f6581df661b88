//! Supervised stdio upstreams: one child process per catalog server, shared by every caller.
//!
//! Spawning a configured command is code execution, so it happens only for catalog entries, with
//! a cleared environment (only `PATH`, `HOME`, `LANG`, `TZ` are inherited, plus the configured
//! `env`), in its own process group (grandchildren are killed with it), and every spawn is logged
//! with the exact command line. The child's stderr becomes log lines (target
//! `portcullis::upstream::stderr`); stdout carries one JSON-RPC message per line, bounded by
//! [`DEFAULT_MAX_LINE`]: a longer line kills the connection rather than growing memory.
//!
//! Lifecycle (a supervisor task per connector, started on first use):
//! 1. spawn, then detect the era (NOTES §2): `server/discover` with modern `_meta`; a
//!    `DiscoverResult` listing 2026-07-28 → modern; a `-32022` error whose `data.supported` lists
//!    a modern version → modern, retried with that version; anything else or no answer within
//!    [`DISCOVER_TIMEOUT`] → legacy `initialize` + `notifications/initialized`.
//! 2. serve: requests are rewritten by the [`CallTable`] (upstream ids and progress tokens) and
//!    written to stdin by one writer task; one reader task dispatches stdout lines.
//! 3. on exit: every call in flight gets a final error naming the server and the exit status, the
//!    process group is killed, and the child is restarted with exponential backoff
//!    ([`INITIAL_BACKOFF`] doubling to [`MAX_BACKOFF`], reset after [`STABLE_AFTER`] of uptime).
//! 4. [`Connector::shutdown`] (or dropping the connector): close stdin, wait up to 2 s, SIGTERM the
//!    group, wait up to 2 s, SIGKILL, reap. No zombie, no orphan.
//!
//! Legacy upstreams get ONE session for all callers, so the `initialize` declares `sampling`,
//! `elicitation` and `roots` (the server may offer the tools needing them); the [`CallTable`]
//! relays a server→client request only to a caller that declared the capability itself and
//! refuses it upstream otherwise. Modern upstreams get each caller's own capabilities per request.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use portcullis_config::{Secret, ServerConfig, Transport};
use portcullis_core::envelope::{self, Envelope, Kind, Limits, Parsed, to_raw};
use portcullis_core::era::{self, Era, LATEST_LEGACY, LATEST_MODERN};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::exchange::{self, CallOptions, CallTable, Origin, Outbound};
use super::{Caller, Connector, Exchange, ServerFacts, Unsolicited, UpstreamError};

/// Longest stdout line (one JSON-RPC message) accepted from a child.
pub const DEFAULT_MAX_LINE: usize = 16 * 1024 * 1024;
/// Longest stderr line logged as is; longer lines are truncated.
const MAX_STDERR_LINE: usize = 16 * 1024;
/// How long `server/discover` may stay unanswered before the server is taken for legacy.
pub const DISCOVER_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound on waiting for the legacy `initialize` answer.
const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound on how long a call waits for the process to be (re)started.
const START_WAIT: Duration = Duration::from_secs(30);
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Uptime after which a crash counts as isolated and the backoff starts over.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Grace periods of the shutdown sequence.
const STDIN_CLOSE_GRACE: Duration = Duration::from_secs(2);
const SIGTERM_GRACE: Duration = Duration::from_secs(2);
/// Lines queued toward the child's stdin.
const WRITE_QUEUE: usize = 256;

/// Environment variables a child inherits from the gateway (everything else is cleared).
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "TZ"];

/// A supervised stdio upstream. Cheap to share behind an `Arc`; dropping it stops the child.
pub struct StdioConnector {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    /// Program and arguments; empty when the config is not a stdio transport.
    command: Vec<String>,
    env: BTreeMap<String, Secret>,
    cwd: Option<PathBuf>,
    request_timeout: Duration,
    max_line: usize,
    table: Arc<CallTable>,
    /// Bounds the calls in flight toward the child; a call finding no slot is `Overloaded`.
    in_flight: Arc<Semaphore>,
    /// The supervisor publishes the link state here; calls wait on it for a ready process.
    link: watch::Sender<Link>,
    /// Tells the supervisor to stop; it then runs the shutdown sequence and reaps the child.
    stop: CancellationToken,
    /// The supervisor task, started on first use and awaited by `shutdown`.
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Clone)]
enum Link {
    /// Not started yet (lazy start).
    Idle,
    Starting,
    Ready(Arc<Process>),
    /// Between a failure and the next restart.
    Down(String),
    Stopped,
}

/// One running, handshaken child.
struct Process {
    pid: u32,
    generation: u64,
    era: Era,
    version: String,
    facts: ServerFacts,
    /// Lines toward the child's stdin, written in order by the writer task.
    writer: mpsc::Sender<Vec<u8>>,
    outbound: Arc<dyn Outbound>,
}

/// Writes whole messages to the child's stdin through the writer task.
struct StdinOutbound {
    server: Arc<str>,
    /// Same queue as [`Process::writer`].
    writer: mpsc::Sender<Vec<u8>>,
}

impl Outbound for StdinOutbound {
    fn send(&self, message: Envelope) {
        let line = line_of(&message);
        match self.writer.try_send(line) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(line)) => {
                let writer = self.writer.clone();
                tokio::spawn(async move {
                    let _ = writer.send(line).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(server = %self.server, "stdin closed; message to upstream dropped");
            }
        }
    }
}

fn line_of(message: &Envelope) -> Vec<u8> {
    let mut line = message.to_bytes();
    line.push(b'\n');
    line
}

impl StdioConnector {
    /// Prepares the connector for `config`; the child is spawned on first use.
    pub fn spawn(config: &ServerConfig) -> StdioConnector {
        let (command, env, cwd) = match &config.transport {
            Transport::Stdio { command, env, cwd } => (command.clone(), env.clone(), cwd.clone()),
            Transport::Http { .. } => (Vec::new(), BTreeMap::new(), None),
        };
        let (link, _) = watch::channel(Link::Idle);
        StdioConnector {
            inner: Arc::new(Inner {
                name: config.name.as_str().into(),
                command,
                env,
                cwd,
                request_timeout: config.request_timeout,
                max_line: DEFAULT_MAX_LINE,
                table: CallTable::new(&config.name, config.request_timeout),
                in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
                link,
                stop: CancellationToken::new(),
                supervisor: Mutex::new(None),
            }),
        }
    }

    /// Changes the longest accepted stdout line (before first use).
    pub fn with_max_line(mut self, max_line: usize) -> StdioConnector {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.max_line = max_line.max(1);
        }
        self
    }

    /// The pid of the running child (also its process group id), if one is ready.
    pub fn pid(&self) -> Option<u32> {
        match &*self.inner.link.borrow() {
            Link::Ready(process) => Some(process.pid),
            _ => None,
        }
    }

    /// Calls in flight (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.inner.table.len()
    }

    /// Waits until a child is running and handshaken (starting it if needed).
    pub async fn ready(&self) -> Result<(), UpstreamError> {
        self.inner.ready().await.map(|_| ())
    }
}

impl Drop for StdioConnector {
    fn drop(&mut self) {
        // The supervisor notices and runs the shutdown sequence (kill_on_drop is the backstop).
        self.inner.stop.cancel();
    }
}

impl Inner {
    fn unavailable(&self, reason: impl Into<String>) -> UpstreamError {
        UpstreamError::Unavailable {
            server: self.name.to_string(),
            reason: reason.into(),
        }
    }

    fn ensure_started(self: &Arc<Self>) {
        let mut supervisor = self.supervisor.lock().unwrap_or_else(|p| p.into_inner());
        if supervisor.is_none() && !self.stop.is_cancelled() {
            self.link.send_replace(Link::Starting);
            *supervisor = Some(tokio::spawn(supervise(Arc::clone(self))));
        }
    }

    async fn ready(self: &Arc<Self>) -> Result<Arc<Process>, UpstreamError> {
        if self.command.is_empty() {
            return Err(self.unavailable("is not configured as a stdio server"));
        }
        self.ensure_started();
        let mut link = self.link.subscribe();
        let wait = self.request_timeout.min(START_WAIT);
        let waited = tokio::time::timeout(wait, async {
            loop {
                match &*link.borrow_and_update() {
                    Link::Ready(process) => return Ok(Arc::clone(process)),
                    Link::Stopped => return Err(self.unavailable("has been shut down")),
                    _ => {}
                }
                if link.changed().await.is_err() {
                    return Err(self.unavailable("has been shut down"));
                }
            }
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) => {
                let reason = match &*link.borrow() {
                    Link::Down(reason) => format!("is not running ({reason})"),
                    _ => format!("did not start within {} s", wait.as_secs()),
                };
                Err(self.unavailable(reason))
            }
        }
    }

    /// Registers a call on `process` and writes it.
    async fn start_call(
        self: &Arc<Self>,
        process: &Arc<Process>,
        caller: &Caller,
        request: Envelope,
        options: CallOptions,
    ) -> Exchange {
        let outbound = Arc::clone(&process.outbound);
        let registered = self.table.register(caller, request, options, move |id| {
            outbound.send(exchange::cancelled(id, "cancelled by the gateway"));
        });
        if process
            .writer
            .send(line_of(&registered.request))
            .await
            .is_err()
        {
            self.table.fail(registered.id, "is not running");
        }
        registered.exchange
    }
}

/// The caller used for the connector's own handshake requests.
fn internal_caller() -> Caller {
    Caller {
        key: "".into(),
        protocol_version: LATEST_MODERN.into(),
        capabilities: Arc::new(serde_json::json!({})),
        client_info: None,
    }
}

/// Waits for the final response of an exchange.
async fn final_response(mut exchange: Exchange) -> Option<Envelope> {
    while let Some(event) = exchange.events.recv().await {
        if let super::UpstreamEvent::Response(response) = event {
            return Some(response);
        }
    }
    None
}

fn status_text(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "exited".to_owned(),
    }
}

enum RunEnd {
    /// The child is gone (or never came up); the supervisor restarts it after a backoff.
    Failed(String),
    /// Shutdown was requested and done.
    Stopped,
}

async fn supervise(inner: Arc<Inner>) {
    let mut backoff = INITIAL_BACKOFF;
    let mut generation = 0u64;
    loop {
        if inner.stop.is_cancelled() {
            break;
        }
        generation += 1;
        inner.link.send_replace(Link::Starting);
        let started = Instant::now();
        match run_once(&inner, generation).await {
            RunEnd::Stopped => break,
            RunEnd::Failed(reason) => {
                inner.link.send_replace(Link::Down(reason.clone()));
                inner.table.fail_session(generation, &reason);
                if started.elapsed() >= STABLE_AFTER {
                    backoff = INITIAL_BACKOFF;
                }
                tracing::warn!(server = %inner.name, %reason, backoff_ms = backoff.as_millis() as u64, "stdio upstream down; restarting after backoff");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = inner.stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    inner.link.send_replace(Link::Stopped);
    inner.table.fail_all("was shut down");
}

/// Spawns one child, handshakes, serves it until it dies or shutdown is requested.
async fn run_once(inner: &Arc<Inner>, generation: u64) -> RunEnd {
    let mut command = tokio::process::Command::new(&inner.command[0]);
    command.args(&inner.command[1..]).env_clear();
    for key in INHERITED_ENV {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    for (key, value) in &inner.env {
        command.env(key, value.expose());
    }
    if let Some(cwd) = &inner.cwd {
        command.current_dir(cwd);
    }
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    tracing::info!(
        target: "portcullis::upstream::spawn",
        server = %inner.name,
        command = ?inner.command,
        cwd = ?inner.cwd,
        env_keys = ?inner.env.keys().collect::<Vec<_>>(),
        "spawning stdio upstream"
    );
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return RunEnd::Failed(format!(
                "could not be started ({}: {error})",
                inner.command[0]
            ));
        }
    };
    let pid = child.id().unwrap_or_default();
    // If this future is dropped mid-way (runtime shutdown), `kill_on_drop` kills the child and
    // this guard kills the rest of its group.
    let mut group = GroupGuard { pid, armed: true };
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        terminate(&mut child, pid, &inner.name).await;
        group.armed = false;
        return RunEnd::Failed("has no stdio pipes".into());
    };
    tracing::info!(server = %inner.name, pid, "stdio upstream started");

    let stderr_task = AbortOnDrop(tokio::spawn(log_stderr(inner.name.clone(), stderr)));
    let (writer, lines) = mpsc::channel(WRITE_QUEUE);
    // Cancelled to close stdin (shutdown) or once the child is gone.
    let close_stdin = CancellationToken::new();
    let writer_task = tokio::spawn(write_loop(
        inner.name.clone(),
        stdin,
        lines,
        close_stdin.clone(),
    ));
    let outbound: Arc<dyn Outbound> = Arc::new(StdinOutbound {
        server: inner.name.clone(),
        writer: writer.clone(),
    });
    let mut reader_task = AbortOnDrop(tokio::spawn(read_loop(
        Arc::clone(&inner.table),
        stdout,
        inner.max_line,
        generation,
        Arc::clone(&outbound),
    )));

    let handshake = handshake(inner, &writer, &outbound, generation);
    let outcome = tokio::select! {
        result = handshake => match result {
            Ok((era, version, facts)) => Ok((era, version, facts)),
            Err(reason) => Err(RunEnd::Failed(reason)),
        },
        status = child.wait() => Err(RunEnd::Failed(match status {
            Ok(status) => status_text(status),
            Err(error) => format!("could not be waited for ({error})"),
        })),
        _ = inner.stop.cancelled() => Err(RunEnd::Stopped),
    };
    let end = match outcome {
        Err(end) => end,
        Ok((era, version, facts)) => {
            tracing::info!(server = %inner.name, pid, ?era, %version, "stdio upstream ready");
            let process = Arc::new(Process {
                pid,
                generation,
                era,
                version,
                facts,
                writer: writer.clone(),
                outbound,
            });
            inner.link.send_replace(Link::Ready(process));
            tokio::select! {
                status = child.wait() => RunEnd::Failed(match status {
                    Ok(status) => status_text(status),
                    Err(error) => format!("could not be waited for ({error})"),
                }),
                read_end = &mut reader_task.0 => {
                    let reason = match read_end {
                        Ok(Ok(())) => None,
                        Ok(Err(reason)) => Some(reason),
                        Err(_) => Some("reader failed".to_owned()),
                    };
                    match reason {
                        // stdout closed: the exit status names the failure better.
                        None => match tokio::time::timeout(STDIN_CLOSE_GRACE, child.wait()).await {
                            Ok(Ok(status)) => RunEnd::Failed(status_text(status)),
                            _ => RunEnd::Failed("closed its stdout".to_owned()),
                        },
                        Some(reason) => RunEnd::Failed(reason),
                    }
                }
                _ = inner.stop.cancelled() => RunEnd::Stopped,
            }
        }
    };
    // From here on nothing reaches the child any more: calls registered from now fail at once.
    drop(writer);
    let was_ready = matches!(&*inner.link.borrow(), Link::Ready(_));
    if was_ready {
        inner.link.send_replace(Link::Down("restarting".into()));
    }
    match &end {
        RunEnd::Stopped => {
            tracing::info!(server = %inner.name, pid, "stopping stdio upstream");
            close_stdin.cancel();
            let _ = writer_task.await;
            if tokio::time::timeout(STDIN_CLOSE_GRACE, child.wait())
                .await
                .is_err()
            {
                signal_group(pid, nix::sys::signal::Signal::SIGTERM);
                if tokio::time::timeout(SIGTERM_GRACE, child.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(server = %inner.name, pid, "stdio upstream ignored SIGTERM; killing it");
                }
            }
            terminate(&mut child, pid, &inner.name).await;
        }
        RunEnd::Failed(reason) => {
            tracing::warn!(server = %inner.name, pid, %reason, "stdio upstream failed");
            close_stdin.cancel();
            terminate(&mut child, pid, &inner.name).await;
            let _ = writer_task.await;
        }
    }
    group.armed = false;
    drop(stderr_task);
    inner.table.fail_session(
        generation,
        match &end {
            RunEnd::Failed(reason) => reason,
            RunEnd::Stopped => "was shut down",
        },
    );
    end
}

/// SIGKILLs the whole process group and reaps the child.
async fn terminate(child: &mut Child, pid: u32, server: &str) {
    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.start_kill();
    match child.wait().await {
        Ok(status) => {
            tracing::info!(server = %server, pid, status = %status_text(status), "stdio upstream reaped")
        }
        Err(error) => {
            tracing::warn!(server = %server, pid, %error, "could not reap stdio upstream")
        }
    }
    // Grandchildren that outlived the leader are still in the group.
    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
}

/// Sends a signal to the process group led by `pid` (the child was spawned with
/// `process_group(0)`, so its pgid is its pid). `ESRCH` (group gone) is expected and ignored.
fn signal_group(pid: u32, signal: nix::sys::signal::Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 1 {
        return;
    }
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(pid, ?signal, %error, "could not signal the upstream's process group")
        }
    }
}

/// SIGKILLs the child's process group when dropped while armed (disarmed once reaped).
struct GroupGuard {
    pid: u32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn write_loop(
    server: Arc<str>,
    mut stdin: ChildStdin,
    mut lines: mpsc::Receiver<Vec<u8>>,
    close: CancellationToken,
) {
    loop {
        let line = tokio::select! {
            biased;
            _ = close.cancelled() => break,
            line = lines.recv() => match line {
                Some(line) => line,
                None => break,
            },
        };
        let written = tokio::select! {
            _ = close.cancelled() => break,
            written = async {
                stdin.write_all(&line).await?;
                stdin.flush().await
            } => written,
        };
        if let Err(error) = written {
            tracing::debug!(server = %server, %error, "writing to stdio upstream failed");
            break;
        }
    }
    // Dropping stdin closes the pipe: the child sees EOF.
}

/// Outcome of reading one bounded line.
enum LineRead {
    Line,
    Eof,
    TooLong,
}

/// Reads one `\n`-terminated line into `buf` (without the newline), refusing to hold more than
/// `max` bytes. A final line without newline counts as a line.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (take, done) = match available.iter().position(|b| *b == b'\n') {
            Some(pos) => (pos, true),
            None => (available.len(), false),
        };
        if buf.len() + take > max {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(if done { take + 1 } else { take });
        if done {
            return Ok(LineRead::Line);
        }
    }
}

/// Reads stdout until EOF; returns Err with a reason when the connection must be killed.
async fn read_loop(
    table: Arc<CallTable>,
    stdout: tokio::process::ChildStdout,
    max_line: usize,
    generation: u64,
    outbound: Arc<dyn Outbound>,
) -> Result<(), String> {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut buf = Vec::new();
    let limits = Limits::default();
    let origin = Origin {
        call: None,
        session: generation,
        caller_key: None,
        outbound: &outbound,
    };
    loop {
        match read_line_bounded(&mut reader, &mut buf, max_line).await {
            Ok(LineRead::Eof) => return Ok(()),
            Ok(LineRead::TooLong) => {
                return Err(format!("sent a message longer than {max_line} bytes"));
            }
            Ok(LineRead::Line) => {}
            Err(error) => return Err(format!("stdout failed ({error})")),
        }
        let line = buf.strip_suffix(b"\r").unwrap_or(&buf);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        match envelope::parse(line, &limits) {
            Ok(Parsed::Single(message)) => table.dispatch(message, &origin),
            Ok(Parsed::Batch(messages)) => {
                for message in messages {
                    table.dispatch(message, &origin);
                }
            }
            Err(error) => {
                let preview = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
                tracing::warn!(server = %table.server(), %error, %preview, "stdio upstream wrote a line that is not JSON-RPC; ignored");
            }
        }
    }
}

async fn log_stderr(server: Arc<str>, stderr: tokio::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        match read_line_bounded(&mut reader, &mut buf, MAX_STDERR_LINE).await {
            Ok(LineRead::Line) => {
                let line = String::from_utf8_lossy(&buf);
                tracing::info!(target: "portcullis::upstream::stderr", server = %server, "{}", line.trim_end());
            }
            Ok(LineRead::TooLong) => {
                // Log what fits, then skip to the end of the line.
                let line = String::from_utf8_lossy(&buf).into_owned();
                tracing::info!(target: "portcullis::upstream::stderr", server = %server, truncated = true, "{}", line);
                loop {
                    let available = match reader.fill_buf().await {
                        Ok(available) if !available.is_empty() => available,
                        _ => return,
                    };
                    match available.iter().position(|b| *b == b'\n') {
                        Some(pos) => {
                            reader.consume(pos + 1);
                            break;
                        }
                        None => {
                            let len = available.len();
                            reader.consume(len);
                        }
                    }
                }
            }
            Ok(LineRead::Eof) | Err(_) => return,
        }
    }
}

/// Era detection and (legacy) initialization. Returns the era, version and facts.
async fn handshake(
    inner: &Arc<Inner>,
    writer: &mpsc::Sender<Vec<u8>>,
    outbound: &Arc<dyn Outbound>,
    generation: u64,
) -> Result<(Era, String, ServerFacts), String> {
    let caller = internal_caller();
    let mut version = LATEST_MODERN.to_owned();
    for _attempt in 0..2 {
        let mut discover = Envelope::request(to_raw(&0), "server/discover", None);
        exchange::adapt_for_modern(&mut discover, &caller, &version);
        let response = internal_call(
            inner,
            writer,
            outbound,
            generation,
            discover,
            DISCOVER_TIMEOUT,
        )
        .await?;
        match classify_discover(&response) {
            Discover::Modern(facts) => {
                let version = facts.protocol_version.clone();
                return Ok((Era::Modern, version, facts));
            }
            Discover::Retry(other) if other != version => version = other,
            _ => break,
        }
    }

    let params = serde_json::json!({
        "protocolVersion": LATEST_LEGACY,
        "capabilities": { "sampling": {}, "elicitation": {}, "roots": { "listChanged": true } },
        "clientInfo": exchange::gateway_client_info(),
    });
    let initialize = Envelope::request(to_raw(&0), "initialize", Some(to_raw(&params)));
    let timeout = inner.request_timeout.min(INITIALIZE_TIMEOUT);
    let response = internal_call(inner, writer, outbound, generation, initialize, timeout).await?;
    let facts =
        legacy_facts(&response).map_err(|reason| format!("refused initialize ({reason})"))?;
    let version = facts.protocol_version.clone();
    writer
        .send(line_of(&Envelope::notification(
            "notifications/initialized",
            None,
        )))
        .await
        .map_err(|_| "closed its stdin during initialization".to_owned())?;
    Ok((Era::Legacy, version, facts))
}

async fn internal_call(
    inner: &Arc<Inner>,
    writer: &mpsc::Sender<Vec<u8>>,
    outbound: &Arc<dyn Outbound>,
    generation: u64,
    request: Envelope,
    timeout: Duration,
) -> Result<Envelope, String> {
    let process_outbound = Arc::clone(outbound);
    let options = CallOptions {
        session: generation,
        timeout,
        permit: None,
        internal: true,
    };
    let registered = inner
        .table
        .register(&internal_caller(), request, options, move |id| {
            process_outbound.send(exchange::cancelled(id, "handshake timed out"));
        });
    writer
        .send(line_of(&registered.request))
        .await
        .map_err(|_| "closed its stdin during the handshake".to_owned())?;
    final_response(registered.exchange)
        .await
        .ok_or_else(|| "went away during the handshake".to_owned())
}

/// What a `server/discover` answer says about the server.
pub(crate) enum Discover {
    Modern(ServerFacts),
    /// A recognised modern error naming a modern version we speak: retry with it.
    Retry(String),
    Legacy,
}

pub(crate) fn classify_discover(response: &Envelope) -> Discover {
    if response.kind() == Kind::Result {
        let Some(result) = response
            .member("result")
            .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
        else {
            return Discover::Legacy;
        };
        let supported: Vec<&str> = result
            .get("supportedVersions")
            .and_then(Value::as_array)
            .map(|versions| versions.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(version) = era::MODERN_VERSIONS.iter().find(|v| supported.contains(v)) else {
            return Discover::Legacy;
        };
        let server_info = result.get("serverInfo").cloned().or_else(|| {
            result
                .get("_meta")
                .and_then(|m| m.get("io.modelcontextprotocol/serverInfo"))
                .cloned()
        });
        return Discover::Modern(ServerFacts {
            era: Era::Modern,
            protocol_version: (*version).to_owned(),
            capabilities: result
                .get("capabilities")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({})),
            server_info,
            instructions: result
                .get("instructions")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
    }
    let error = response
        .member("error")
        .and_then(|e| serde_json::from_str::<Value>(e.get()).ok());
    if let Some(error) = error
        && error.get("code").and_then(Value::as_i64) == Some(-32022)
        && let Some(supported) = error
            .get("data")
            .and_then(|d| d.get("supported"))
            .and_then(Value::as_array)
        && let Some(version) = era::MODERN_VERSIONS
            .iter()
            .find(|v| supported.iter().any(|s| s.as_str() == Some(**v)))
    {
        return Discover::Retry((*version).to_owned());
    }
    Discover::Legacy
}

/// Reads an `initialize` result into facts; Err when it is an error or names no legacy version
/// we speak.
pub(crate) fn legacy_facts(response: &Envelope) -> Result<ServerFacts, String> {
    if response.kind() != Kind::Result {
        let error = response
            .member("error")
            .map(|e| e.get().to_owned())
            .unwrap_or_default();
        return Err(error.chars().take(300).collect());
    }
    let result = response
        .member("result")
        .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
        .ok_or_else(|| "result is not an object".to_owned())?;
    let version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if era::era_of(version) != Some(Era::Legacy) {
        return Err(format!("unsupported protocol version {version:?}"));
    }
    Ok(ServerFacts {
        era: Era::Legacy,
        protocol_version: version.to_owned(),
        capabilities: result
            .get("capabilities")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({})),
        server_info: result.get("serverInfo").cloned(),
        instructions: result
            .get("instructions")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

impl Connector for StdioConnector {
    fn request(
        &self,
        caller: &Caller,
        mut request: Envelope,
    ) -> BoxFuture<'_, Result<Exchange, UpstreamError>> {
        let caller = caller.clone();
        async move {
            let inner = &self.inner;
            let permit = Arc::clone(&inner.in_flight)
                .try_acquire_owned()
                .map_err(|_| UpstreamError::Overloaded {
                    server: inner.name.to_string(),
                })?;
            let process = inner.ready().await?;
            match process.era {
                Era::Modern => exchange::adapt_for_modern(&mut request, &caller, &process.version),
                Era::Legacy => exchange::adapt_for_legacy(&mut request),
            }
            let options = CallOptions {
                session: process.generation,
                timeout: inner.request_timeout,
                permit: Some(permit),
                internal: false,
            };
            Ok(inner.start_call(&process, &caller, request, options).await)
        }
        .boxed()
    }

    fn notify(
        &self,
        _caller: &Caller,
        notification: Envelope,
    ) -> BoxFuture<'_, Result<(), UpstreamError>> {
        async move {
            let method = notification.method().unwrap_or_default();
            // The connector owns the upstream handshake and cancels by upstream id itself.
            if matches!(
                method,
                "notifications/initialized" | "notifications/cancelled"
            ) {
                return Ok(());
            }
            let process = self.inner.ready().await?;
            process
                .writer
                .send(line_of(&notification))
                .await
                .map_err(|_| self.inner.unavailable("is not running"))
        }
        .boxed()
    }

    fn facts(&self) -> BoxFuture<'_, Result<ServerFacts, UpstreamError>> {
        async move { Ok(self.inner.ready().await?.facts.clone()) }.boxed()
    }

    fn unsolicited(&self) -> broadcast::Receiver<Unsolicited> {
        self.inner.table.subscribe()
    }

    fn release(&self, _caller_key: &str) -> BoxFuture<'_, ()> {
        // One process is shared by all callers: nothing is kept per caller.
        async {}.boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async move {
            self.inner.stop.cancel();
            let handle = self
                .inner
                .supervisor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(handle) = handle {
                let _ = handle.await;
            }
            self.inner.link.send_replace(Link::Stopped);
        }
        .boxed()
    }
}
