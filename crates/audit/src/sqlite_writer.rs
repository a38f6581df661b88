//! The direct SQLite engine of [`crate::writer::AuditWriter`] (SQLite files with
//! `sync: normal`): the writer's own SQLite connection (rusqlite, the same linked SQLite library
//! as sqlx), with no worker thread, task or channel between the caller and the database when
//! the writer is idle.
//!
//! Why not sqlx here: sqlx runs every SQLite statement on a per-connection worker thread, so a
//! commit costs a wake-up of that thread and a wake-up back per statement, plus the hop into
//! and out of a writer task. On the data plane each call waits for two commits (decision and
//! outcome), and those wake-ups on a busy machine were most of the audit step's latency.
//! Reads, migrations, retention and verification stay on the sqlx pool ([`crate::store`]).
//!
//! How an append is written:
//!
//! - **On the caller's thread** (`sync: normal`, nobody else writing, nothing queued, appends
//!   not arriving as a dense stream, see [`INLINE_MIN_GAP`]): the record is linked and written
//!   by one `INSERT` in autocommit (a transaction with a checkpoint when one is due), without
//!   waiting for SQLite's write lock: if another connection holds it (the control plane
//!   shares the file), the record is queued instead. No fsync happens here, so the caller is
//!   held for tens of µs.
//! - **On the writer's thread** otherwise: appends that arrive while a commit is running (or
//!   with `sync: full`, whose fsync must not block an async worker, if this engine is used for
//!   it; the writer picks the task engine for `full`) are queued in order and
//!   group-committed, up to `max_batch` per transaction. The thread also signs interval and
//!   shutdown checkpoints, holding the same gate, so records keep their queueing order in the
//!   chain.
//!
//! WAL checkpoints (copying the WAL into the database file, two fsyncs) never run inside an
//! append on a caller's thread. With `sync: normal` they are off on the writer's connection
//! and a third thread, `audit-wal`, runs them on its own connection every
//! [`WAL_CHECKPOINT_PAGES`] pages while appends go on; every [`WAL_RESTART_EVERY`]th time it
//! then closes the gate and checkpoints the few pages written meanwhile, so that the WAL is
//! complete in the database file and the next write starts it over (it would otherwise grow
//! without bound under steady load). With `sync: full` every commit is on the writer's thread
//! anyway, and SQLite's own automatic checkpoint runs there after a commit, as it would in any
//! connection: a checkpoint's fsyncs running beside the commits' fsyncs would slow both.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior, params};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot};

use crate::chain::{ChainHead, Hash};
use crate::checkpoint::Checkpoint;
use crate::record::{AuditEvent, AuditRecord};
use crate::store::{Durability, SqliteFile, StoreError, findings_column, outcome_columns};
use crate::writer::{AppendError, Appended, ChainState, PendingAppend, QueueFull, stopped};

/// How long the writer's thread waits for SQLite's write lock held by another connection.
/// A commit on a caller's thread never waits: it queues the record instead.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Run a WAL checkpoint after about this many pages were appended to the WAL (32 MiB of 4 KiB
/// pages: about a second of writes at 1,000 calls/s, each commit writing three or four pages).
const WAL_CHECKPOINT_PAGES: u64 = 8_192;

/// Restart the WAL (a checkpoint with the gate closed) every this many WAL checkpoints: the
/// WAL file stays under about 128 MiB, and appends wait for a gated checkpoint's fsyncs only
/// every few seconds at 1,000 calls/s.
const WAL_RESTART_EVERY: u64 = 4;

/// How often the WAL thread looks for the gate when it wants to close it.
const GATE_POLL: Duration = Duration::from_micros(200);

/// When appends arrive on average closer together than this (more than 10,000 a second, each
/// commit costing tens of µs), they go to the group commit even when the writer is idle:
/// committing each of a dense stream on its caller's thread would serialize them one commit
/// each. The average gap, not the last one, decides: a call's outcome record follows its
/// decision record after one upstream round trip, and sending every such second record through
/// the writer's thread costs two thread wake-ups where it saves nothing.
const INLINE_MIN_GAP: Duration = Duration::from_micros(100);

/// A pause longer than this counts as this long in the average gap, so that an idle minute
/// does not keep the first seconds of a burst committing one by one.
const GAP_CAP: Duration = Duration::from_millis(5);

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
    /// Room in the queue (appends being written count too): bounded memory.
    permits: Arc<Semaphore>,
    capacity: usize,
    /// Commit on the caller's thread when the writer is idle (`sync: normal` only).
    inline: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer's thread.
    wake: Condvar,
    /// The connection and the chain; locked only by whoever set `State::committing`.
    db: Mutex<Db>,
    /// Asks the WAL thread for a checkpoint (None once the writer stopped).
    wal: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

#[derive(Debug)]
struct State {
    /// Appends waiting for the writer's thread, in chain order.
    queue: VecDeque<Queued>,
    /// A caller or the thread is writing: everyone else queues behind it.
    committing: bool,
    /// New appends are taken (false once shutdown was asked or the handle dropped).
    accepting: bool,
    /// Shutdown asked: flush, sign, answer here.
    shutdown: Option<oneshot::Sender<Result<(), AppendError>>>,
    /// Every handle is gone: flush, sign and stop.
    closed: bool,
    /// Estimated pages appended to the WAL since its last checkpoint was asked for.
    wal_pages: u64,
    /// The WAL thread is checkpointing.
    wal_running: bool,
    /// WAL checkpoints are the WAL thread's (`sync: normal`), not SQLite's automatic ones.
    wal_thread: bool,
    /// When the last append was submitted.
    last_submit: Instant,
    /// Moving average of the gap between appends (each gap capped at [`GAP_CAP`]).
    mean_gap: Duration,
}

impl State {
    fn thread_has_work(&self) -> bool {
        !self.queue.is_empty() || self.shutdown.is_some() || self.closed
    }

    /// Counts `pages` written to the WAL; true when the WAL thread should checkpoint now.
    fn wrote(&mut self, pages: u64) -> bool {
        self.wal_pages += pages;
        if !self.wal_thread || self.wal_pages < WAL_CHECKPOINT_PAGES || self.wal_running {
            return false;
        }
        self.wal_pages = 0;
        self.wal_running = true;
        true
    }
}

#[derive(Debug)]
struct Queued {
    event: AuditEvent,
    ack: oneshot::Sender<Result<Appended, AppendError>>,
    _permit: OwnedSemaphorePermit,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        // A panic during a commit leaves the head as it was (it moves only after the write)
        // and rolls back an open transaction: the next commit can go on.
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the WAL thread (after [`State::wrote`] said so).
    fn request_wal_checkpoint(&self) {
        if let Some(wal) = &*self.wal.lock().unwrap_or_else(PoisonError::into_inner) {
            let _ = wal.send(());
        }
    }
}

impl DirectWriter {
    /// Opens the writer's connection on `file` and starts its thread.
    pub(crate) fn start(file: &SqliteFile, chain: ChainState) -> Result<Self, StoreError> {
        let capacity = chain.config.queue.max(1);
        let max_batch = chain.config.max_batch.max(1);
        let interval = chain.config.checkpoint_interval;
        let db = Db::open(file, chain)?;
        let wal_conn = open_connection(file)?;
        let (wal_tx, wal_rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                committing: false,
                accepting: true,
                shutdown: None,
                closed: false,
                wal_pages: 0,
                wal_running: false,
                wal_thread: file.durability == Durability::Normal,
                last_submit: Instant::now(),
                mean_gap: GAP_CAP,
            }),
            wake: Condvar::new(),
            db: Mutex::new(db),
            wal: Mutex::new(Some(wal_tx)),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(&thread_shared, max_batch, interval))
            .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        let wal_shared = shared.clone();
        std::thread::Builder::new()
            .name("audit-wal".into())
            .spawn(move || run_wal(&wal_shared, &wal_conn, &wal_rx))
            .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        Ok(Self {
            shared,
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            inline: file.durability == Durability::Normal,
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
        self.submit(event, permit, self.inline)
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
        self.submit(event, permit, false)
            .map_err(|_| QueueFull::Stopped)
    }

    pub(crate) fn backlog(&self) -> usize {
        self.capacity
            .saturating_sub(self.permits.available_permits())
    }

    /// Asks the thread to flush, sign a final checkpoint and stop; it answers on `ack`.
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

    /// Writes `event` now on this thread if the writer is idle and `inline` is allowed,
    /// otherwise queues it for the writer's thread.
    fn submit(
        &self,
        event: AuditEvent,
        permit: OwnedSemaphorePermit,
        inline: bool,
    ) -> Result<PendingAppend, AppendError> {
        let mut state = self.shared.state();
        if !state.accepting {
            return Err(stopped());
        }
        let now = Instant::now();
        let gap = now.duration_since(state.last_submit).min(GAP_CAP);
        state.mean_gap = (state.mean_gap * 7 + gap) / 8;
        state.last_submit = now;
        let sparse = state.mean_gap >= INLINE_MIN_GAP;
        if !inline || !sparse || state.committing || !state.queue.is_empty() {
            let (ack, done) = oneshot::channel();
            state.queue.push_back(Queued {
                event,
                ack,
                _permit: permit,
            });
            // Whoever is committing looks at the queue when done (the thread before it
            // waits, a caller when it reopens the gate): wake the thread only if nobody is.
            let wake = !state.committing;
            drop(state);
            if wake {
                self.shared.wake.notify_one();
            }
            return Ok(PendingAppend::queued(done));
        }
        state.committing = true;
        drop(state);
        let mut gate = Gate {
            shared: &self.shared,
            pages: 0,
            requeue: None,
        };
        let result = self.shared.db().commit(vec![event], Wait::No);
        match result {
            Ok(appended) => {
                gate.pages = pages_written(1);
                Ok(PendingAppend::done(
                    appended.into_iter().next().ok_or_else(stopped),
                ))
            }
            Err(Refused::Busy(mut events, _)) => {
                // Another connection holds the write lock: the thread waits for it instead,
                // and this record stays first in line.
                let (ack, done) = oneshot::channel();
                gate.requeue = events.pop().map(|event| Queued {
                    event,
                    ack,
                    _permit: permit,
                });
                Ok(PendingAppend::queued(done))
            }
            Err(Refused::Failed(error)) => {
                tracing::error!(%error, "audit append failed");
                Ok(PendingAppend::done(Err(Arc::new(error))))
            }
        }
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

/// Reopens the gate a caller's commit closed (also if the commit panicked), requeueing its
/// record first in line when it could not be written, and wakes the thread if it has work.
struct Gate<'a> {
    shared: &'a Shared,
    pages: u64,
    requeue: Option<Queued>,
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.committing = false;
        let checkpoint_wal = state.wrote(self.pages);
        if let Some(queued) = self.requeue.take() {
            state.queue.push_front(queued);
        }
        if state.thread_has_work() {
            self.shared.wake.notify_one();
        }
        drop(state);
        if checkpoint_wal {
            self.shared.request_wal_checkpoint();
        }
    }
}

/// Pages a commit of `records` appends to the WAL, roughly: the table and its two indexes,
/// plus the rows themselves (several hundred bytes each, about eight to a 4 KiB page).
fn pages_written(records: usize) -> u64 {
    3 + records as u64 / 8
}

/// What the writer's thread does next.
enum Job {
    /// Commit up to `max_batch` queued appends.
    Batch,
    /// Sign a checkpoint if records are unsigned (every `checkpoint_interval`).
    Tick,
    /// Flush everything, sign, stop.
    Stop,
}

fn run(shared: &Shared, max_batch: usize, interval: Duration) {
    let mut next_tick = Instant::now() + interval;
    loop {
        let mut state = shared.state();
        let job = loop {
            let now = Instant::now();
            if !state.committing {
                if state.shutdown.is_some() || state.closed {
                    break Job::Stop;
                }
                if !state.queue.is_empty() {
                    break Job::Batch;
                }
                if now >= next_tick {
                    break Job::Tick;
                }
            }
            let timeout = next_tick
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            state = shared
                .wake
                .wait_timeout(state, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        match job {
            Job::Batch => {
                let n = state.queue.len().min(max_batch);
                let batch: Vec<Queued> = state.queue.drain(..n).collect();
                state.committing = true;
                drop(state);
                commit_queued(shared, batch, n);
                if Instant::now() >= next_tick {
                    next_tick = Instant::now() + interval;
                    checkpoint(shared);
                }
                shared.state().committing = false;
            }
            Job::Tick => {
                next_tick = Instant::now() + interval;
                state.committing = true;
                drop(state);
                checkpoint(shared);
                shared.state().committing = false;
            }
            Job::Stop => {
                let queued: Vec<Queued> = state.queue.drain(..).collect();
                let answer = state.shutdown.take();
                state.committing = true;
                drop(state);
                let mut queued = queued.into_iter();
                loop {
                    let batch: Vec<Queued> = queued.by_ref().take(max_batch).collect();
                    if batch.is_empty() {
                        break;
                    }
                    let n = batch.len();
                    commit_queued(shared, batch, n);
                }
                // The WAL thread stops; the last WAL checkpoint runs here, with the gate closed.
                shared
                    .wal
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                let mut db = shared.db();
                let result = db.checkpoint().map_err(Arc::new);
                wal_checkpoint(&db.conn);
                drop(db);
                if let Some(answer) = answer {
                    let _ = answer.send(result);
                } else if let Err(error) = result {
                    tracing::warn!(%error, "audit checkpoint at shutdown failed");
                }
                // Nothing is accepted any more; the gate stays closed.
                return;
            }
        }
    }
}

/// Commits `batch` (already taken from the queue, the gate closed) and answers each append.
fn commit_queued(shared: &Shared, batch: Vec<Queued>, n: usize) {
    let mut events = Vec::with_capacity(n);
    let mut acks = Vec::with_capacity(n);
    for queued in batch {
        events.push(queued.event);
        acks.push((queued.ack, queued._permit));
    }
    let result = shared.db().commit(events, Wait::Yes);
    if shared.state().wrote(pages_written(n)) {
        shared.request_wal_checkpoint();
    }
    match result {
        Ok(appended) => {
            for ((ack, _permit), appended) in acks.into_iter().zip(appended) {
                let _ = ack.send(Ok(appended));
            }
        }
        Err(refused) => {
            let error = Arc::new(match refused {
                Refused::Busy(_, error) => StoreError::Sqlite(error),
                Refused::Failed(error) => error,
            });
            tracing::error!(%error, "audit append failed");
            for (ack, _permit) in acks {
                let _ = ack.send(Err(error.clone()));
            }
        }
    }
}

/// The WAL thread: on each request, checkpoint the WAL while appends go on; every
/// [`WAL_RESTART_EVERY`]th time also close the gate and checkpoint the pages written meanwhile,
/// so that the next write restarts the WAL.
fn run_wal(shared: &Shared, conn: &Connection, requests: &std::sync::mpsc::Receiver<()>) {
    let mut rounds: u64 = 0;
    while requests.recv().is_ok() {
        wal_checkpoint(conn);
        rounds += 1;
        if !rounds.is_multiple_of(WAL_RESTART_EVERY) {
            shared.state().wal_running = false;
            continue;
        }
        let closed = loop {
            let mut state = shared.state();
            if !state.accepting {
                break false;
            }
            if !state.committing {
                state.committing = true;
                break true;
            }
            drop(state);
            std::thread::sleep(GATE_POLL);
        };
        if closed {
            wal_checkpoint(conn);
            let mut state = shared.state();
            state.committing = false;
            if state.thread_has_work() {
                shared.wake.notify_one();
            }
        }
        shared.state().wal_running = false;
    }
}

/// Copies what it can of the WAL into the database file without waiting for readers.
fn wal_checkpoint(conn: &Connection) {
    if let Err(error) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
        tracing::warn!(%error, "audit WAL checkpoint failed");
    }
}

/// Signs and writes a checkpoint if records are unsigned, logging a failure.
fn checkpoint(shared: &Shared) {
    if let Err(error) = shared.db().checkpoint() {
        tracing::warn!(%error, "audit checkpoint failed");
    }
}

/// Whether a write may wait for SQLite's write lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The writer's thread: wait up to [`BUSY_TIMEOUT`].
    Yes,
    /// A caller's thread: never wait.
    No,
}

/// Why events were not committed.
enum Refused {
    /// The write lock was held by another connection; nothing was written, here are the events.
    Busy(Vec<AuditEvent>, rusqlite::Error),
    /// The write failed (the chain head is re-read before the next one).
    Failed(StoreError),
}

/// The writer's connection and the chain it owns.
#[derive(Debug)]
struct Db {
    conn: Connection,
    chain: ChainState,
    /// The wait currently set on the connection.
    wait: Wait,
}

impl Db {
    fn open(file: &SqliteFile, chain: ChainState) -> Result<Self, StoreError> {
        Ok(Self {
            conn: open_connection(file)?,
            chain,
            wait: Wait::Yes,
        })
    }

    fn set_wait(&mut self, wait: Wait) -> rusqlite::Result<()> {
        if self.wait != wait {
            self.conn.busy_timeout(match wait {
                Wait::Yes => BUSY_TIMEOUT,
                Wait::No => Duration::ZERO,
            })?;
            self.wait = wait;
        }
        Ok(())
    }

    /// Links `events` after the head and writes them; on success the head moves.
    fn commit(&mut self, events: Vec<AuditEvent>, wait: Wait) -> Result<Vec<Appended>, Refused> {
        if self.chain.reload_head {
            self.chain.head = read_head(&self.conn, &self.chain.config.chain_id)
                .map_err(|e| Refused::Failed(e.into()))?;
            self.chain.reload_head = false;
        }
        let linked = self.chain.link(events.into_iter());
        match self.write(&linked.records, linked.checkpoint.as_ref(), wait) {
            Ok(()) => {
                let appended = linked.appended().collect();
                self.chain.committed(linked);
                Ok(appended)
            }
            Err(WriteError::Busy(error)) => Err(Refused::Busy(
                linked.records.into_iter().map(|r| r.event).collect(),
                error,
            )),
            Err(WriteError::Failed(error)) => {
                self.chain.reload_head = true;
                Err(Refused::Failed(error))
            }
        }
    }

    /// Writes records and a checkpoint atomically: one `INSERT` in autocommit for a lone
    /// record, else one `BEGIN IMMEDIATE` transaction. `Busy` only when nothing was written.
    fn write(
        &mut self,
        records: &[AuditRecord],
        checkpoint: Option<&Checkpoint>,
        wait: Wait,
    ) -> Result<(), WriteError> {
        self.set_wait(wait).map_err(WriteError::failed)?;
        if let ([record], None) = (records, checkpoint) {
            let mut insert = self
                .conn
                .prepare_cached(INSERT_RECORD)
                .map_err(WriteError::failed)?;
            return insert_record(&mut insert, record, WriteError::first_statement);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(WriteError::first_statement)?;
        {
            let mut insert = tx
                .prepare_cached(INSERT_RECORD)
                .map_err(WriteError::failed)?;
            for record in records {
                insert_record(&mut insert, record, WriteError::failed)?;
            }
        }
        if let Some(cp) = checkpoint {
            insert_checkpoint(&tx, cp)?;
        }
        tx.commit().map_err(WriteError::failed)
    }

    /// Signs and writes a checkpoint over the head if records are unsigned.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        let Some(cp) = self.chain.due_checkpoint() else {
            return Ok(());
        };
        self.set_wait(Wait::Yes)?;
        insert_checkpoint(&self.conn, &cp).map_err(|e| match e {
            WriteError::Busy(e) => StoreError::Sqlite(e),
            WriteError::Failed(e) => e,
        })?;
        self.chain.checkpointed();
        Ok(())
    }
}

/// A connection of the writer to `file`: WAL, its durability, and with `sync: normal` no
/// automatic WAL checkpoints (the WAL thread runs them).
fn open_connection(file: &SqliteFile) -> Result<Connection, StoreError> {
    // The pool created the file and ran the migrations; a missing file is an error.
    let conn = Connection::open_with_flags(
        &file.path,
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
    conn.pragma_update(
        None,
        "synchronous",
        match file.durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        },
    )?;
    if file.durability == Durability::Normal {
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    }
    Ok(conn)
}

enum WriteError {
    Busy(rusqlite::Error),
    Failed(StoreError),
}

impl WriteError {
    fn failed(error: impl Into<StoreError>) -> Self {
        Self::Failed(error.into())
    }

    /// An error of the statement that takes the write lock: busy means nothing was written.
    fn first_statement(error: rusqlite::Error) -> Self {
        if error.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) {
            Self::Busy(error)
        } else {
            Self::Failed(error.into())
        }
    }
}

impl From<StoreError> for WriteError {
    fn from(error: StoreError) -> Self {
        Self::Failed(error)
    }
}

/// Lowercase hex of `hash` in `buf`, without allocating.
fn hex<'a>(hash: &Hash, buf: &'a mut [u8; 64]) -> &'a str {
    // Cannot fail: the buffer is exactly twice the hash's length, and hex digits are ASCII.
    let _ = hex::encode_to_slice(hash.0, buf);
    std::str::from_utf8(buf).unwrap_or_default()
}

/// Inserts one record; `classify` tells what a refusal of the statement means.
fn insert_record(
    insert: &mut rusqlite::Statement<'_>,
    r: &AuditRecord,
    classify: fn(rusqlite::Error) -> WriteError,
) -> Result<(), WriteError> {
    let e = &r.event;
    let seq = i64::try_from(r.seq).map_err(|_| StoreError::Range("seq"))?;
    let (mut prev, mut hash) = ([0u8; 64], [0u8; 64]);
    let (outcome, error_code) = outcome_columns(e.outcome);
    insert
        .execute(params![
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
        ])
        .map(drop)
        .map_err(classify)
}

fn insert_checkpoint(conn: &Connection, cp: &Checkpoint) -> Result<(), WriteError> {
    let seq = i64::try_from(cp.seq).map_err(|_| StoreError::Range("checkpoint seq"))?;
    let mut head = [0u8; 64];
    conn.prepare_cached(INSERT_CHECKPOINT)
        .and_then(|mut insert| {
            insert.execute(params![
                cp.chain_id,
                seq,
                hex(&cp.head_hash, &mut head),
                cp.time_us,
                cp.key_id,
                cp.signature,
            ])
        })
        .map(drop)
        .map_err(WriteError::failed)
}

/// The head of `chain_id` as stored: its last record, else its last retention tombstone
/// (the same reading as [`crate::store::AuditStore::head`], after a failed write).
fn read_head(conn: &Connection, chain_id: &str) -> rusqlite::Result<ChainHead> {
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
