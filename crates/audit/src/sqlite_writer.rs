//! The direct engine of [`crate::writer::AuditWriter`] (SQLite files with `sync: normal`):
//! appends are durable in the chain's append log ([`crate::append_log`]) and reach SQLite in
//! batches on the writer's own thread, through its own SQLite connection (rusqlite, the same
//! linked SQLite library as sqlx).
//!
//! Why a log in front of SQLite: on the data plane each call waits for two durable appends
//! (decision and outcome). A SQLite commit, even without an fsync, costs tens of µs (a WAL
//! frame and its header per page touched, the WAL index, six file locks) and, every few
//! thousand commits, waits behind a WAL checkpoint's fsyncs. Writing one line to a file costs
//! a few µs and nothing else writes that file.
//!
//! How an append is written, on the caller's thread under one mutex: the event is linked after
//! the chain head (with a signed checkpoint every N records), its line is written to the log,
//! the head moves, and the append resolves at once: the record survives `kill -9` from here
//! on, as a SQLite commit with `synchronous = NORMAL` does. If the write fails the chain does
//! not move and the append fails.
//!
//! The writer's thread, `audit-writer`, wakes on the first append after a quiet spell, lets
//! [`INGEST_DELAY`] of appends gather, and copies them into SQLite in one transaction; then it
//! marks them ingested in the log's header, and cuts the log back when nothing newer was
//! logged meanwhile. It also signs interval and shutdown checkpoints (through the log, so they
//! keep their place in the chain), and SQLite's automatic WAL checkpoints run after its
//! commits: nothing a caller waits for.
//!
//! When SQLite refuses a batch (disk full, a damaged table), its entries stay in the log and
//! in memory and are retried with backoff, and new appends are refused with SQLite's error
//! until a retry succeeds: calls fail closed one batch after the store broke, and what was
//! acknowledged before is never lost. Memory is bounded: an append holds a permit of the queue
//! until its record is in SQLite.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot};

use crate::append_log::{self, AppendLog, Entry};
use crate::chain::{ChainHead, Hash};
use crate::checkpoint::Checkpoint;
use crate::record::{AuditEvent, AuditRecord};
use crate::store::{SqliteFile, StoreError, findings_column, outcome_columns};
use crate::writer::{AppendError, Appended, ChainState, PendingAppend, QueueFull, stopped};

/// How long the writer's thread waits for SQLite's write lock held by another connection (the
/// control plane shares the file).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// After the first append of a quiet spell, how long the writer's thread lets appends gather
/// before it copies them into SQLite (at 1,000 calls/s, about ten records per transaction).
const INGEST_DELAY: Duration = Duration::from_millis(5);

/// After SQLite refused a batch, the first wait before trying again (doubling up to
/// [`RETRY_MAX`]).
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// When the log has grown past this without a quiet moment to cut it back (appends arriving
/// during every batch), the writer's thread ingests the rest with appends held, and cuts it.
const LOG_CAP: u64 = 64 << 20;

/// One record, `?` placeholders in [`crate::store`]'s column order.
const INSERT_RECORD: &str = "INSERT INTO audit_records (chain_id, seq, prev_hash, hash, time_us, \
     kind, trace_id, agent, user_id, token_id, session, client_era, upstream_era, server, \
     method, tool, args_fingerprint, decision, rule_id, approval_ref, findings, outcome, \
     error_code, latency_us, bytes_in, bytes_out) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, \
     ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

const INSERT_CHECKPOINT: &str = "INSERT INTO audit_checkpoints \
     (chain_id, seq, head_hash, time_us, key_id, signature) VALUES (?, ?, ?, ?, ?, ?)";

/// The handle side of the engine (one per [`crate::writer::AuditWriter`] and its clones).
#[derive(Debug)]
pub(crate) struct DirectWriter {
    shared: Arc<Shared>,
    /// Room for records not yet in SQLite: bounded memory.
    permits: Arc<Semaphore>,
    capacity: usize,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer's thread.
    wake: Condvar,
}

#[derive(Debug)]
struct State {
    /// The chain: linked and logged records move its head.
    chain: ChainState,
    /// The chain's append log, locked for this writer (None once it stopped: the lock is
    /// released for a writer started later).
    log: Option<AppendLog>,
    /// The line being written (reused).
    line: Vec<u8>,
    /// Logged, not yet in SQLite, in chain order.
    pending: Vec<Logged>,
    /// SQLite refused the last batch: appends are refused with this until a retry succeeds.
    failing: Option<AppendError>,
    /// New appends are taken (false once shutdown was asked or every handle dropped).
    accepting: bool,
    /// Shutdown asked: ingest, sign, answer here.
    shutdown: Option<oneshot::Sender<Result<(), AppendError>>>,
    /// Every handle is gone: ingest, sign and stop.
    closed: bool,
    /// The thread waits with nothing pending: the next append wakes it.
    asleep: bool,
}

/// An entry in the log and not yet in SQLite.
#[derive(Debug)]
struct Logged {
    entry: Entry,
    /// Released once the entry is in SQLite.
    _permit: Option<OwnedSemaphorePermit>,
}

impl State {
    fn stopping(&self) -> bool {
        self.shutdown.is_some() || self.closed
    }

    /// Links `event`, logs it (with the checkpoint it completes) and moves the head.
    fn log_event(
        &mut self,
        event: AuditEvent,
        permit: OwnedSemaphorePermit,
    ) -> Result<Appended, AppendError> {
        let linked = self.chain.link(std::iter::once(event));
        self.line.clear();
        for record in &linked.records {
            append_log::encode_record(record, &mut self.line);
        }
        if let Some(cp) = &linked.checkpoint {
            append_log::encode_checkpoint(cp, &mut self.line);
        }
        let log = self.log.as_mut().ok_or_else(stopped)?;
        log.append(&self.line).map_err(Arc::new)?;
        let appended = linked.appended().next().ok_or_else(stopped)?;
        let (records, checkpoint) = self.chain.advance(linked);
        let mut permit = Some(permit);
        for record in records {
            self.pending.push(Logged {
                entry: Entry::Record(record),
                _permit: permit.take(),
            });
        }
        if let Some(cp) = checkpoint {
            self.pending.push(Logged {
                entry: Entry::Checkpoint(cp),
                _permit: None,
            });
        }
        Ok(appended)
    }

    /// Logs a signed checkpoint over the head if records are unsigned (interval, shutdown).
    fn log_due_checkpoint(&mut self) -> Result<(), AppendError> {
        let Some(cp) = self.chain.due_checkpoint() else {
            return Ok(());
        };
        self.line.clear();
        append_log::encode_checkpoint(&cp, &mut self.line);
        let log = self.log.as_mut().ok_or_else(stopped)?;
        log.append(&self.line).map_err(Arc::new)?;
        self.chain.checkpointed();
        self.pending.push(Logged {
            entry: Entry::Checkpoint(cp),
            _permit: None,
        });
        Ok(())
    }

    /// The log's length (where the entries pending now end).
    fn logged_through(&self) -> u64 {
        self.log.as_ref().map_or(0, AppendLog::len)
    }

    /// The entries up to `end` are in SQLite: mark them, and cut the log back if nothing
    /// newer was logged.
    fn ingested(&mut self, end: u64) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let result = if self.pending.is_empty() && log.len() == end {
            log.reset()
        } else {
            log.mark_ingested(end)
        };
        if let Err(error) = result {
            // The records are in SQLite; a stale header only makes a later replay skip them.
            tracing::warn!(%error, "audit append log header not updated");
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the state was held leaves it consistent: the head moves only after the
        // log write, and pending entries are taken or put back whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl DirectWriter {
    /// Locks the chain's append log, replays what a previous writer left in it, and starts the
    /// writer's thread.
    pub(crate) fn start(file: &SqliteFile, mut chain: ChainState) -> Result<Self, StoreError> {
        let capacity = chain.config.queue.max(1);
        let interval = chain.config.checkpoint_interval;
        let mut log =
            AppendLog::open_for_writer(&append_log::log_path(&file.path, &chain.config.chain_id))?;
        let mut conn = open_connection(&file.path)?;
        let leftover = log.pending()?;
        if !leftover.is_empty() {
            append_log::replay(&mut conn, &leftover)?;
        }
        log.reset()?;
        // The head the store read may predate that replay.
        chain.head = read_head(&conn, &chain.config.chain_id)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                chain,
                log: Some(log),
                line: Vec::with_capacity(1024),
                pending: Vec::new(),
                failing: None,
                accepting: true,
                shutdown: None,
                closed: false,
                asleep: false,
            }),
            wake: Condvar::new(),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(&thread_shared, &mut conn, interval))
            .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        Ok(Self {
            shared,
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
        })
    }

    pub(crate) async fn enqueue(&self, event: AuditEvent) -> Result<PendingAppend, AppendError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| stopped())?,
            Err(TryAcquireError::Closed) => return Err(stopped()),
        };
        self.submit(event, permit)
    }

    pub(crate) fn try_enqueue(&self, event: AuditEvent) -> Result<PendingAppend, QueueFull> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|e| match e {
                TryAcquireError::NoPermits => QueueFull::Full,
                TryAcquireError::Closed => QueueFull::Stopped,
            })?;
        self.submit(event, permit).map_err(|_| QueueFull::Stopped)
    }

    /// Records appended and not yet in SQLite.
    pub(crate) fn backlog(&self) -> usize {
        self.capacity
            .saturating_sub(self.permits.available_permits())
    }

    /// Asks the thread to ingest, sign a final checkpoint and stop; it answers on `ack`.
    pub(crate) fn shutdown(
        &self,
        ack: oneshot::Sender<Result<(), AppendError>>,
    ) -> Result<(), AppendError> {
        let mut state = self.shared.state();
        if !state.accepting {
            return Err(stopped());
        }
        state.accepting = false;
        state.shutdown = Some(ack);
        drop(state);
        self.permits.close();
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Logs `event` on this thread; the append is settled when this returns.
    fn submit(
        &self,
        event: AuditEvent,
        permit: OwnedSemaphorePermit,
    ) -> Result<PendingAppend, AppendError> {
        let mut state = self.shared.state();
        if !state.accepting {
            return Err(stopped());
        }
        if let Some(error) = &state.failing {
            return Ok(PendingAppend::done(Err(error.clone())));
        }
        let result = state.log_event(event, permit);
        let wake = state.asleep && result.is_ok();
        if wake {
            state.asleep = false;
        }
        drop(state);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(PendingAppend::done(result))
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.accepting = false;
        state.closed = true;
        drop(state);
        self.permits.close();
        self.shared.wake.notify_one();
    }
}

/// The writer's thread: ingest what is logged, sign interval checkpoints, and at the end
/// ingest everything, sign and release the log.
fn run(shared: &Shared, conn: &mut Connection, interval: Duration) {
    let mut next_tick = Instant::now() + interval;
    let mut backoff: Option<Duration> = None;
    loop {
        let mut state = shared.state();
        loop {
            if state.stopping() {
                break;
            }
            let now = Instant::now();
            if now >= next_tick {
                break;
            }
            if state.pending.is_empty() {
                state.asleep = true;
                state = wait(shared, state, next_tick - now);
                state.asleep = false;
                continue;
            }
            // Let a batch gather (or wait out the backoff after a refused one).
            state = wait(shared, state, backoff.unwrap_or(INGEST_DELAY));
            break;
        }
        if state.stopping() {
            drop(state);
            stop(shared, conn);
            return;
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + interval;
            if let Err(error) = state.log_due_checkpoint() {
                tracing::warn!(%error, "audit checkpoint not logged");
            }
        }
        drop(state);
        backoff = match ingest(shared, conn) {
            Ok(()) => None,
            Err(()) => Some(backoff.map_or(RETRY_FIRST, |b| (b * 2).min(RETRY_MAX))),
        };
    }
}

fn wait<'a>(
    shared: &'a Shared,
    state: MutexGuard<'a, State>,
    timeout: Duration,
) -> MutexGuard<'a, State> {
    shared
        .wake
        .wait_timeout(state, timeout)
        .unwrap_or_else(PoisonError::into_inner)
        .0
}

/// Copies what is logged into SQLite. On failure the entries stay pending (and in the log),
/// and appends are refused until a later call succeeds.
fn ingest(shared: &Shared, conn: &mut Connection) -> Result<(), ()> {
    let (batch, end) = {
        let mut state = shared.state();
        if state.pending.is_empty() {
            return Ok(());
        }
        (std::mem::take(&mut state.pending), state.logged_through())
    };
    let result = write_entries(conn, &batch);
    let mut state = shared.state();
    if let Err(error) = result {
        refused(&mut state, batch, error);
        return Err(());
    }
    state.failing = None;
    state.ingested(end);
    if state.logged_through() > LOG_CAP {
        // Never quiet long enough to cut the log back: ingest the rest with appends held.
        let rest = std::mem::take(&mut state.pending);
        let end = state.logged_through();
        if let Err(error) = write_entries(conn, &rest) {
            refused(&mut state, rest, error);
            return Err(());
        }
        state.ingested(end);
    }
    Ok(())
}

/// SQLite refused `batch`: put it back first in line and refuse appends until it is in.
fn refused(state: &mut State, mut batch: Vec<Logged>, error: StoreError) {
    tracing::error!(
        %error,
        records = batch.len(),
        "audit records could not be written to SQLite: they stay in the append log, and \
         appends are refused until a retry succeeds"
    );
    batch.append(&mut state.pending);
    state.pending = batch;
    state.failing = Some(Arc::new(error));
}

/// Stops the writer: no more appends, a final checkpoint, everything into SQLite (a few tries),
/// a WAL checkpoint, and the log's lock released. Answers a shutdown request.
fn stop(shared: &Shared, conn: &mut Connection) {
    let mut state = shared.state();
    let answer = state.shutdown.take();
    let signed = state.log_due_checkpoint();
    drop(state);
    let mut delay = RETRY_FIRST;
    let mut ingested = ingest(shared, conn);
    for _ in 0..3 {
        if ingested.is_ok() {
            break;
        }
        std::thread::sleep(delay);
        delay *= 2;
        ingested = ingest(shared, conn);
    }
    if let Err(error) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
        tracing::warn!(%error, "audit WAL checkpoint at shutdown failed");
    }
    let mut state = shared.state();
    let result = match (signed, ingested) {
        (Err(error), _) => Err(error),
        (Ok(()), Err(())) => Err(state.failing.clone().unwrap_or_else(stopped)),
        (Ok(()), Ok(())) => Ok(()),
    };
    // What could not be ingested stays in the log for the next writer or reader to replay.
    state.log = None;
    state.pending.clear();
    drop(state);
    match answer {
        Some(answer) => {
            let _ = answer.send(result);
        }
        None => {
            if let Err(error) = result {
                tracing::warn!(%error, "audit writer stopped with records only in its append log");
            }
        }
    }
}

/// Writes `batch` into SQLite in one transaction.
fn write_entries(conn: &mut Connection, batch: &[Logged]) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for logged in batch {
        insert_entry(&tx, &logged.entry)?;
    }
    tx.commit()?;
    Ok(())
}

/// A connection to the SQLite file at `path` for writing records: WAL, `synchronous = NORMAL`
/// (the writer's durability is the append log's), SQLite's automatic WAL checkpoints.
pub(crate) fn open_connection(path: &std::path::Path) -> Result<Connection, StoreError> {
    // The pool created the file and ran the migrations; a missing file is an error.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Sqlite(rusqlite::Error::InvalidParameterName(
            format!("journal_mode is {mode}, not wal"),
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Lowercase hex of `hash` in `buf`, without allocating.
fn hex<'a>(hash: &Hash, buf: &'a mut [u8; 64]) -> &'a str {
    // Cannot fail: the buffer is exactly twice the hash's length, and hex digits are ASCII.
    let _ = hex::encode_to_slice(hash.0, buf);
    std::str::from_utf8(buf).unwrap_or_default()
}

/// Inserts one logged entry.
pub(crate) fn insert_entry(conn: &Connection, entry: &Entry) -> Result<(), StoreError> {
    match entry {
        Entry::Record(record) => insert_record(conn, record),
        Entry::Checkpoint(cp) => insert_checkpoint(conn, cp),
    }
}

fn insert_record(conn: &Connection, r: &AuditRecord) -> Result<(), StoreError> {
    let e = &r.event;
    let seq = i64::try_from(r.seq).map_err(|_| StoreError::Range("seq"))?;
    let (mut prev, mut hash) = ([0u8; 64], [0u8; 64]);
    let (outcome, error_code) = outcome_columns(e.outcome);
    conn.prepare_cached(INSERT_RECORD)?.execute(params![
        r.chain_id,
        seq,
        hex(&r.prev_hash, &mut prev),
        hex(&r.hash, &mut hash),
        e.time_us,
        e.kind.as_str(),
        e.trace_id,
        e.principal.agent,
        e.principal.user,
        e.principal.token_id,
        e.session,
        e.client_era,
        e.upstream_era,
        e.server,
        e.method,
        e.tool,
        e.args_fingerprint,
        e.decision,
        e.rule_id,
        e.approval_ref,
        findings_column(&e.findings),
        outcome,
        error_code,
        e.latency_us,
        e.bytes_in,
        e.bytes_out,
    ])?;
    Ok(())
}

fn insert_checkpoint(conn: &Connection, cp: &Checkpoint) -> Result<(), StoreError> {
    let seq = i64::try_from(cp.seq).map_err(|_| StoreError::Range("checkpoint seq"))?;
    let mut head = [0u8; 64];
    conn.prepare_cached(INSERT_CHECKPOINT)?.execute(params![
        cp.chain_id,
        seq,
        hex(&cp.head_hash, &mut head),
        cp.time_us,
        cp.key_id,
        cp.signature,
    ])?;
    Ok(())
}

/// The head of `chain_id` as stored: its last record, else its last retention tombstone
/// (the same reading as [`crate::store::AuditStore::head`]).
pub(crate) fn read_head(conn: &Connection, chain_id: &str) -> rusqlite::Result<ChainHead> {
    use rusqlite::OptionalExtension;
    let mut head = ChainHead::new(chain_id);
    let row: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_records WHERE chain_id = ? ORDER BY seq DESC LIMIT 1",
            [chain_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let row = match row {
        Some(row) => Some(row),
        None => conn
            .query_row(
                "SELECT seq, head_hash FROM audit_tombstones WHERE chain_id = ? \
                 ORDER BY seq DESC, key_id DESC LIMIT 1",
                [chain_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?,
    };
    if let Some((seq, hash)) = row {
        head.seq = u64::try_from(seq).unwrap_or(0);
        head.hash = Hash::from_hex(&hash).unwrap_or(Hash::ZERO);
    }
    Ok(head)
}
