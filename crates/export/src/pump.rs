//! One pump per sink: a task that moves records from the outbox to the sink's receiver.
//!
//! For each chain, in a loop: read the head and the cursor; if behind, take the lease, read
//! one page after the cursor, deliver it, and only then advance the cursor. A failed delivery
//! is retried (same records, exponential backoff with jitter) until it succeeds, the lease is
//! lost, or the gateway shuts down — the cursor does not move, so nothing is skipped, and the
//! page is the only memory held. A receiver that answers 413 gets the page in halves.

use std::sync::Arc;
use std::time::Duration;

use portcullis_audit::store::now_us;
use portcullis_config::sinks::{SinkConfig, StartAt};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::cursor::Cursors;
use crate::format::ExportItem;
use crate::lag::LagBoard;
use crate::outbox::Outbox;
use crate::sink::{DeliveryError, Sink};

/// Settings shared by every pump of a process.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub outbox: Outbox,
    pub cursors: Cursors,
    pub board: Arc<LagBoard>,
    /// This process's id in cursor leases.
    pub owner: Arc<str>,
    /// Wait between polls of an idle outbox.
    pub poll_interval: Duration,
    /// First retry delay after a failure.
    pub initial_backoff: Duration,
    /// Cancelled at shutdown: pumps stop at their next await (an interrupted delivery is sent
    /// again after restart; the cursor never moved).
    pub stop: CancellationToken,
}

/// What one step on one chain achieved.
enum Step {
    /// Records were delivered.
    Progressed,
    /// Nothing to do (caught up, another replica's lease, or a store error already reported).
    Idle,
    /// Shutdown.
    Stopped,
}

pub(crate) struct Pump {
    config: SinkConfig,
    sink: Sink,
    shared: Shared,
    backoff: Backoff,
    rng: StdRng,
    /// How long a lease lasts: longer than a delivery plus the longest backoff.
    lease_us: i64,
}

impl Pump {
    pub(crate) fn new(config: SinkConfig, sink: Sink, shared: Shared) -> Self {
        let lease = config.timeout * 2 + config.max_backoff + Duration::from_secs(30);
        Pump {
            backoff: Backoff::new(shared.initial_backoff, config.max_backoff),
            rng: StdRng::from_os_rng(),
            lease_us: i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 4),
            config,
            sink,
            shared,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut chains: Vec<String> = Vec::new();
        loop {
            if self.shared.stop.is_cancelled() {
                break;
            }
            match self.shared.outbox.chains().await {
                Ok(found) => chains = found,
                Err(error) => {
                    tracing::warn!(sink = %self.config.name, %error, "export: cannot list audit chains");
                }
            }
            let mut progressed = false;
            for chain in &chains {
                match self.step(chain).await {
                    Step::Progressed => progressed = true,
                    Step::Idle => {}
                    Step::Stopped => {
                        self.release(&chains).await;
                        return;
                    }
                }
            }
            if !progressed && !self.pause(self.shared.poll_interval).await {
                break;
            }
        }
        self.release(&chains).await;
    }

    /// Sleeps `d`; false when shutdown came first.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = self.shared.stop.cancelled() => false,
        }
    }

    async fn release(&self, chains: &[String]) {
        for chain in chains {
            let _ = self
                .shared
                .cursors
                .release(&self.config.name, chain, &self.shared.owner)
                .await;
        }
    }

    async fn step(&mut self, chain: &str) -> Step {
        let name = self.config.name.clone();
        let board = self.shared.board.clone();
        let store_error = |what: &str, error: &dyn std::fmt::Display| {
            tracing::warn!(sink = %name, chain, %error, "export: {what}");
            board.failed(&name, chain, &format!("{what}: {error}"));
        };
        let head = match self.shared.outbox.head(chain).await {
            Ok(Some(head)) => head,
            Ok(None) => return Step::Idle,
            Err(e) => {
                store_error("reading the audit head", &e);
                return Step::Idle;
            }
        };
        let row = match self.shared.cursors.get(&name, chain).await {
            Ok(row) => row,
            Err(e) => {
                store_error("reading the cursor", &e);
                return Step::Idle;
            }
        };
        let now = now_us();
        let owner: &str = &self.shared.owner;
        if let Some(r) = &row
            && r.seq >= head.seq
        {
            let active = r.owner.as_deref() == Some(owner) && r.lease_until_us > now;
            board.position(&name, chain, head.seq, r.seq, None, active);
            return Step::Idle;
        }
        let fresh_lease = row.as_ref().is_some_and(|r| {
            r.owner.as_deref() == Some(owner) && r.lease_until_us > now + self.lease_us / 2
        });
        let cursor = match (&row, fresh_lease) {
            (Some(r), true) => r.seq,
            _ => {
                let initial = match self.config.start {
                    StartAt::Oldest => 0,
                    StartAt::Latest => head.seq,
                };
                match self
                    .shared
                    .cursors
                    .claim(&name, chain, owner, initial, now, now + self.lease_us)
                    .await
                {
                    Ok(Some(seq)) => seq,
                    Ok(None) => {
                        // Another replica drives this chain; report what the database says.
                        let seq = row.as_ref().map_or(0, |r| r.seq);
                        let oldest = self
                            .shared
                            .outbox
                            .time_after(chain, seq)
                            .await
                            .ok()
                            .flatten();
                        board.position(&name, chain, head.seq, seq, oldest, false);
                        return Step::Idle;
                    }
                    Err(e) => {
                        store_error("claiming the cursor", &e);
                        return Step::Idle;
                    }
                }
            }
        };
        if cursor >= head.seq {
            board.position(&name, chain, head.seq, cursor, None, true);
            return Step::Idle;
        }
        let page = match self
            .shared
            .outbox
            .page(chain, cursor, self.config.batch_size)
            .await
        {
            Ok(page) if !page.is_empty() => page,
            Ok(_) => return Step::Idle,
            Err(e) => {
                store_error("reading records", &e);
                return Step::Idle;
            }
        };
        board.position(
            &name,
            chain,
            head.seq,
            cursor,
            page.first().and_then(ExportItem::time_us),
            true,
        );
        self.deliver_page(chain, cursor, head.seq, page).await
    }

    /// Delivers `page` (records after `cursor`) in order, retrying each batch until it is
    /// acknowledged; advances the cursor after each acknowledged batch.
    async fn deliver_page(
        &mut self,
        chain: &str,
        mut cursor: i64,
        mut head_seq: i64,
        page: Vec<ExportItem>,
    ) -> Step {
        let name = self.config.name.clone();
        let board = self.shared.board.clone();
        let owner = self.shared.owner.clone();
        let mut start = 0;
        let mut limit = page.len();
        while start < page.len() {
            let end = (start + limit).min(page.len());
            let batch = &page[start..end];
            let result = tokio::select! {
                r = tokio::time::timeout(self.config.timeout, self.sink.deliver(batch)) => match r {
                    Ok(r) => r,
                    Err(_) => {
                        self.sink.reset();
                        Err(DeliveryError::new(format!("no acknowledgement within {:?}", self.config.timeout)))
                    }
                },
                () = self.shared.stop.cancelled() => {
                    self.sink.reset();
                    return Step::Stopped;
                }
            };
            match result {
                Ok(()) => {
                    let last = batch.last().map_or(cursor, ExportItem::seq);
                    let now = now_us();
                    match self
                        .shared
                        .cursors
                        .advance(&name, chain, &owner, last, now, now + self.lease_us)
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::info!(sink = %name, chain, "export: lease taken over by another replica");
                            return Step::Idle;
                        }
                        Err(error) => {
                            // Delivered but not recorded: the batch will be sent again.
                            tracing::warn!(sink = %name, chain, %error, "export: cannot advance the cursor");
                            board.failed(&name, chain, &format!("advancing the cursor: {error}"));
                            return Step::Idle;
                        }
                    }
                    cursor = last;
                    self.backoff.reset();
                    let oldest = match page.get(end) {
                        Some(next) => next.time_us(),
                        None if cursor < head_seq => self
                            .shared
                            .outbox
                            .time_after(chain, cursor)
                            .await
                            .ok()
                            .flatten(),
                        None => None,
                    };
                    board.delivered(&name, chain, batch.len() as u64, cursor, oldest);
                    start = end;
                }
                Err(error) if error.too_large && limit > 1 => {
                    limit = (limit / 2).max(1);
                    tracing::info!(sink = %name, chain, limit, "export: receiver refused the batch size; halving");
                }
                Err(error) => {
                    let delay = self.backoff.next_delay(&mut self.rng);
                    tracing::warn!(
                        sink = %name, chain, attempt = self.backoff.attempt(), retry_in = ?delay,
                        error = %error.message, "export: delivery failed"
                    );
                    board.failed(&name, chain, &error.message);
                    if !self.pause(delay).await {
                        return Step::Stopped;
                    }
                    // Still ours at the same position? (Another replica may have taken over.)
                    let now = now_us();
                    match self
                        .shared
                        .cursors
                        .claim(&name, chain, &owner, 0, now, now + self.lease_us)
                        .await
                    {
                        Ok(Some(seq)) if seq == cursor => {}
                        Ok(_) => return Step::Idle,
                        Err(_) => {}
                    }
                    // Keep the lag report moving while the receiver is down.
                    if let Ok(Some(head)) = self.shared.outbox.head(chain).await {
                        head_seq = head.seq;
                        board.head(&name, chain, head.seq);
                    }
                }
            }
        }
        Step::Progressed
    }
}
