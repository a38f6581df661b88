//! The single writer of one chain: [`AuditWriter`], the handle the data plane appends through.
//!
//! A writer owns the chain head of one chain (one per replica), links each appended event after
//! it, adds a signed checkpoint every N records, every T seconds and at shutdown, and resolves
//! each append once the record is committed. Two engines sit behind the same handle:
//!
//! - **direct SQLite** ([`crate::sqlite_writer`], a SQLite file with [`Durability::Normal`]):
//!   an append is linked and written as one line to the chain's append log on the caller's
//!   thread (a few µs, durable against `kill -9`) and resolves at once; the writer's thread
//!   copies the log into SQLite in batches.
//! - **task** (PostgreSQL, SQLite with [`Durability::Full`], in-memory SQLite, or
//!   `WriterConfig::sqlite_direct = false`): a tokio task on a connection it holds drains
//!   whatever is queued into one statement (one `INSERT` in autocommit when the batch has no
//!   checkpoint and fits one statement, else one transaction). With `Full` every commit is an
//!   fsync, and batches are what matters: acknowledged callers re-append on the same runtime
//!   before the task drains the queue again, where the direct engine's thread woke on the first
//!   re-append and paid an fsync for it alone (2.4× fewer records/s with four appenders).
//!
//! Records keep their queueing order in the chain in both engines.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::chain::{ChainHead, Hash};
use crate::checkpoint::{Checkpoint, SigningKeyFile};
use crate::record::{AuditEvent, AuditRecord};
use crate::store::{AuditStore, Backend, Durability, StoreError, now_us};

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The chain this writer owns (one per replica).
    pub chain_id: String,
    /// Sign a checkpoint after this many records.
    pub checkpoint_every: u64,
    /// ... or after this long with unsigned records.
    pub checkpoint_interval: Duration,
    /// Most appends per transaction of the task engine; 1 disables group commit (one
    /// transaction per record). The direct engine copies each batch of its append log into
    /// SQLite in one transaction, whatever its size.
    pub max_batch: usize,
    /// Appends queued before `append` waits (bounded memory).
    pub queue: usize,
    /// On a SQLite file with `Durability::Normal`, write through the direct engine (default).
    /// `false` uses the task engine through sqlx, as on PostgreSQL and with `Durability::Full`
    /// (kept for comparison in the benchmark).
    pub sqlite_direct: bool,
}

impl WriterConfig {
    /// Defaults: checkpoint every 1,000 records or 10 s, batches of up to 1,024, queue 8,192,
    /// the direct engine on SQLite files.
    pub fn new(chain_id: impl Into<String>) -> Self {
        Self {
            chain_id: chain_id.into(),
            checkpoint_every: 1_000,
            checkpoint_interval: Duration::from_secs(10),
            max_batch: 1_024,
            queue: 8_192,
            sqlite_direct: true,
        }
    }
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its seq.
    pub seq: u64,
    /// Its hash.
    pub hash: Hash,
}

/// Errors from [`AuditWriter::append`]: the store's error, shared by every append of the failed
/// batch.
pub type AppendError = Arc<StoreError>;

/// Resolves one append once its transaction committed (or failed).
pub(crate) type AppendAck = oneshot::Sender<Result<Appended, AppendError>>;

/// A queued append; [`PendingAppend::durable`] resolves once its transaction committed.
#[derive(Debug)]
pub struct PendingAppend(Pending);

#[derive(Debug)]
enum Pending {
    /// Committed (or refused) before `enqueue` returned.
    Done(Result<Appended, AppendError>),
    /// Waiting for the writer's commit.
    Queued(oneshot::Receiver<Result<Appended, AppendError>>),
}

impl PendingAppend {
    pub(crate) fn done(result: Result<Appended, AppendError>) -> Self {
        Self(Pending::Done(result))
    }

    pub(crate) fn queued(done: oneshot::Receiver<Result<Appended, AppendError>>) -> Self {
        Self(Pending::Queued(done))
    }

    /// Waits until the record is committed (or its batch failed).
    pub async fn durable(self) -> Result<Appended, AppendError> {
        match self.0 {
            Pending::Done(result) => result,
            Pending::Queued(done) => done.await.map_err(|_| stopped())?,
        }
    }
}

/// Why [`AuditWriter::try_enqueue`] did not queue a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueFull {
    /// The queue is full (the store is slower than the producers).
    #[error("audit queue full")]
    Full,
    /// The writer has stopped.
    #[error("audit writer stopped")]
    Stopped,
}

pub(crate) fn stopped() -> AppendError {
    Arc::new(StoreError::WriterStopped)
}

/// Handle to the single writer of one chain. Cloning shares the writer; when the last clone is
/// dropped the writer signs a final checkpoint and stops.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    engine: Engine,
}

#[derive(Debug, Clone)]
enum Engine {
    Task(mpsc::Sender<Request>),
    Direct(Arc<crate::sqlite_writer::DirectWriter>),
}

impl AuditWriter {
    /// Reads the chain head and starts the writer. Without a signer no checkpoints are written
    /// (verification then cannot detect truncation).
    pub async fn start(
        store: AuditStore,
        config: WriterConfig,
        signer: Option<Arc<SigningKeyFile>>,
    ) -> Result<Self, StoreError> {
        let head = store.head(&config.chain_id).await?;
        let chain = ChainState::new(head, config, signer);
        let direct = store
            .sqlite_file()
            .filter(|file| chain.config.sqlite_direct && file.durability == Durability::Normal);
        if let Some(file) = direct {
            let writer = crate::sqlite_writer::DirectWriter::start(file, chain)?;
            return Ok(Self {
                engine: Engine::Direct(Arc::new(writer)),
            });
        }
        let (tx, rx) = mpsc::channel(chain.config.queue.max(1));
        let task = WriterTask {
            store,
            conn: None,
            chain,
        };
        tokio::spawn(task.run(rx));
        Ok(Self {
            engine: Engine::Task(tx),
        })
    }

    /// Appends `event`; resolves once the record is committed (durable).
    pub async fn append(&self, event: AuditEvent) -> Result<Appended, AppendError> {
        self.enqueue(event).await?.durable().await
    }

    /// Queues `event` (waiting for room in the bounded queue) without waiting for the commit;
    /// [`PendingAppend::durable`] waits for it. Records keep their queueing order in the chain.
    /// The direct engine settles it before returning (the record is in its append log).
    pub async fn enqueue(&self, event: AuditEvent) -> Result<PendingAppend, AppendError> {
        match &self.engine {
            Engine::Task(tx) => {
                let (ack, done) = oneshot::channel();
                tx.send(Request::Append(Box::new(event), ack))
                    .await
                    .map_err(|_| stopped())?;
                Ok(PendingAppend::queued(done))
            }
            Engine::Direct(writer) => writer.enqueue(event).await,
        }
    }

    /// Queues `event` only if the queue has room now (never waits for room, never commits a
    /// database transaction on the caller's thread; the direct engine writes its log line):
    /// for records whose producers must not be slowed down by a backlog, such as
    /// authentication failures.
    pub fn try_enqueue(&self, event: AuditEvent) -> Result<PendingAppend, QueueFull> {
        match &self.engine {
            Engine::Task(tx) => {
                let (ack, done) = oneshot::channel();
                tx.try_send(Request::Append(Box::new(event), ack))
                    .map_err(|e| match e {
                        mpsc::error::TrySendError::Full(_) => QueueFull::Full,
                        mpsc::error::TrySendError::Closed(_) => QueueFull::Stopped,
                    })?;
                Ok(PendingAppend::queued(done))
            }
            Engine::Direct(writer) => writer.try_enqueue(event),
        }
    }

    /// Appends queued and not yet committed (for the backlog metric).
    pub fn backlog(&self) -> usize {
        match &self.engine {
            Engine::Task(tx) => tx.max_capacity() - tx.capacity(),
            Engine::Direct(writer) => writer.backlog(),
        }
    }

    /// Flushes queued appends, signs a final checkpoint and stops the writer.
    pub async fn shutdown(&self) -> Result<(), AppendError> {
        let (ack, done) = oneshot::channel();
        match &self.engine {
            Engine::Task(tx) => tx
                .send(Request::Shutdown(ack))
                .await
                .map_err(|_| stopped())?,
            Engine::Direct(writer) => writer.shutdown(ack)?,
        }
        done.await.map_err(|_| stopped())?
    }
}

/// The chain a writer owns: its head, what is unsigned, and the checkpoint policy. Both
/// engines link and sign through it, so they cannot differ in what they store.
#[derive(Debug)]
pub(crate) struct ChainState {
    pub(crate) config: WriterConfig,
    signer: Option<Arc<SigningKeyFile>>,
    /// The last committed record of the chain.
    pub(crate) head: ChainHead,
    /// Records committed since the last checkpoint.
    since_checkpoint: u64,
    /// A commit failed: the head in the database is unknown, re-read it before the next batch.
    pub(crate) reload_head: bool,
}

/// Events linked after the head, not yet committed.
pub(crate) struct Linked {
    /// The head once these records are committed.
    head: ChainHead,
    pub(crate) records: Vec<AuditRecord>,
    /// A checkpoint to commit with them (every N records).
    pub(crate) checkpoint: Option<Checkpoint>,
}

impl Linked {
    /// Where each record lands, in order.
    pub(crate) fn appended(&self) -> impl Iterator<Item = Appended> + '_ {
        self.records.iter().map(|r| Appended {
            seq: r.seq,
            hash: r.hash,
        })
    }
}

impl ChainState {
    pub(crate) fn new(
        head: ChainHead,
        config: WriterConfig,
        signer: Option<Arc<SigningKeyFile>>,
    ) -> Self {
        Self {
            config,
            signer,
            head,
            since_checkpoint: 0,
            reload_head: false,
        }
    }

    /// Links `events` after the head (the head itself moves only in [`ChainState::advance`]),
    /// with a signed checkpoint when they complete `checkpoint_every` unsigned records.
    pub(crate) fn link(&self, events: impl ExactSizeIterator<Item = AuditEvent>) -> Linked {
        let mut head = self.head.clone();
        let n = events.len() as u64;
        let records: Vec<AuditRecord> = events.map(|event| head.append(event)).collect();
        let checkpoint = match &self.signer {
            Some(signer) if n > 0 && self.since_checkpoint + n >= self.config.checkpoint_every => {
                Some(signer.sign(&head.chain_id, head.seq, head.hash, now_us()))
            }
            _ => None,
        };
        Linked {
            head,
            records,
            checkpoint,
        }
    }

    /// `linked` is durable (committed, or in the append log): advance the head, and hand back
    /// its records and checkpoint.
    pub(crate) fn advance(&mut self, linked: Linked) -> (Vec<AuditRecord>, Option<Checkpoint>) {
        self.since_checkpoint = if linked.checkpoint.is_some() {
            0
        } else {
            self.since_checkpoint + linked.records.len() as u64
        };
        self.head = linked.head;
        (linked.records, linked.checkpoint)
    }

    /// A checkpoint over the head if records are unsigned (interval and shutdown).
    pub(crate) fn due_checkpoint(&self) -> Option<Checkpoint> {
        let signer = self.signer.as_ref()?;
        if self.since_checkpoint == 0 || self.head.seq == 0 {
            return None;
        }
        Some(signer.sign(&self.head.chain_id, self.head.seq, self.head.hash, now_us()))
    }

    /// The checkpoint from [`ChainState::due_checkpoint`] is committed.
    pub(crate) fn checkpointed(&mut self) {
        self.since_checkpoint = 0;
    }
}

/// Messages to the writer task; an append carries its event boxed (the enum stays small in
/// the bounded queue).
enum Request {
    Append(Box<AuditEvent>, AppendAck),
    Shutdown(oneshot::Sender<Result<(), AppendError>>),
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Append(..) => "Append",
            Self::Shutdown(_) => "Shutdown",
        })
    }
}

/// The task engine: a tokio task that drains the queue into one statement per batch on a
/// connection it holds.
struct WriterTask {
    store: AuditStore,
    /// The connection batches are written on (None until the first batch and after a
    /// failure; an in-memory SQLite store gives it back after each batch, since it is the
    /// pool's only connection).
    conn: Option<crate::store::WriterConn>,
    chain: ChainState,
}

impl WriterTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut tick = tokio::time::interval(self.chain.config.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let max_batch = self.chain.config.max_batch.max(1);
        loop {
            tokio::select! {
                request = rx.recv() => match request {
                    Some(Request::Append(event, ack)) => {
                        let mut batch = vec![(event, ack)];
                        let mut shutdown = None;
                        while batch.len() < max_batch {
                            match rx.try_recv() {
                                Ok(Request::Append(e, a)) => batch.push((e, a)),
                                Ok(Request::Shutdown(a)) => { shutdown = Some(a); break; }
                                Err(_) => break,
                            }
                        }
                        self.commit(batch).await;
                        if let Some(ack) = shutdown {
                            let _ = ack.send(self.checkpoint_now().await);
                            return;
                        }
                    }
                    Some(Request::Shutdown(ack)) => {
                        let _ = ack.send(self.checkpoint_now().await);
                        return;
                    }
                    None => {
                        let _ = self.checkpoint_now().await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    if let Err(error) = self.checkpoint_now().await {
                        tracing::warn!(%error, "audit checkpoint failed");
                    }
                }
            }
        }
    }

    async fn commit(&mut self, batch: Vec<(Box<AuditEvent>, AppendAck)>) {
        let (events, acks): (Vec<AuditEvent>, Vec<AppendAck>) =
            batch.into_iter().map(|(event, ack)| (*event, ack)).unzip();
        match self.try_commit(events).await {
            Ok(appended) => {
                for (ack, appended) in acks.into_iter().zip(appended) {
                    let _ = ack.send(Ok(appended));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit append failed");
                self.chain.reload_head = true;
                // The connection may be broken or inside an unfinished transaction.
                self.conn = None;
                let e = Arc::new(e);
                for ack in acks {
                    let _ = ack.send(Err(e.clone()));
                }
            }
        }
    }

    async fn try_commit(&mut self, events: Vec<AuditEvent>) -> Result<Vec<Appended>, StoreError> {
        if self.chain.reload_head {
            self.chain.head = self.store.head(&self.chain.config.chain_id).await?;
            self.chain.reload_head = false;
        }
        let linked = self.chain.link(events.into_iter());
        let conn = self.connection().await?;
        crate::store::write_batch(conn, &linked.records, linked.checkpoint.as_ref()).await?;
        let appended = linked.appended().collect();
        self.chain.advance(linked);
        self.release_if_memory();
        Ok(appended)
    }

    async fn connection(&mut self) -> Result<&mut crate::store::WriterConn, StoreError> {
        if self.conn.is_none() {
            self.conn = Some(crate::store::WriterConn::acquire(self.store.backend()).await?);
        }
        Ok(self.conn.as_mut().expect("just acquired"))
    }

    /// An in-memory SQLite database has one connection: hand it back to the pool for readers.
    fn release_if_memory(&mut self) {
        if matches!(self.store.backend(), Backend::Sqlite(_)) && self.store.sqlite_file().is_none()
        {
            self.conn = None;
        }
    }

    async fn checkpoint_now(&mut self) -> Result<(), AppendError> {
        let Some(cp) = self.chain.due_checkpoint() else {
            return Ok(());
        };
        let conn = self.connection().await.map_err(Arc::new)?;
        if let Err(e) = crate::store::write_batch(conn, &[], Some(&cp)).await {
            self.conn = None;
            return Err(Arc::new(e));
        }
        self.release_if_memory();
        self.chain.checkpointed();
        Ok(())
    }
}
