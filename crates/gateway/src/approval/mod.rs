//! Approval gates (DESIGN step 9): a `tools/call` that a rule marks `approve` is held until
//! reviewers decide, then runs through the rest of the pipeline, or is refused.
//!
//! - [`hold()`]: the proxy's one hook. Records the request (store), announces it (chat
//!   webhook), holds the caller, and on approval continues with the decision record and the
//!   upstream call ([`crate::proxy::proceed`]);
//! - [`api`]: the reviewers' routes under `/admin/api/v1/approvals` (list, show, approve, deny,
//!   and the review page behind the chat links);
//! - [`present`]: what reviewers see (arguments redacted by the scanners, tool description and
//!   annotations from the last `tools/list`, findings);
//! - [`webhook`]: the Slack-compatible announcement with single-use review links.
//!
//! State lives in the store (`portcullis_approvals`), so any replica can decide: the replica
//! holding the call wakes at once when the decision lands on it ([`Approvals::wake`]) and polls
//! the store every [`POLL_INTERVAL`] otherwise. Each process renews a heartbeat on what it
//! holds; at start-up a replica abandons what its previous process held, and every replica
//! abandons requests whose holder stopped renewing (a crashed replica). A held call runs only
//! in the process that holds it, and only after it reads `approved` from the store: an
//! abandoned or expired request is never executed later.

pub mod api;
mod hold;
pub mod present;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_approvals::{ApprovalStore, now_ms};
use rand::RngCore;
use tokio::sync::Notify;

use crate::state::Gateway;

pub use hold::hold;

/// How often a held call re-reads its request from the store (decisions taken on another
/// replica arrive this way).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often a process renews the heartbeat of the requests it holds.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// A pending request whose holder has not renewed its heartbeat for this long lost its holder.
const STALE_AFTER: Duration = Duration::from_secs(60);
/// Grace after a deadline before the sweep expires a request its holder did not.
const EXPIRY_GRACE: Duration = Duration::from_secs(5);
/// Most calls one process holds at once; more are refused (`-31033`), so held requests cannot
/// grow memory without bound.
pub const MAX_HELD: usize = 4096;

/// The approvals of one gateway process.
pub struct Approvals {
    pub store: ApprovalStore,
    /// Held calls of this process by approval id; notified when a decision lands here.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// The stable name of this replica (`PORTCULLIS_REPLICA_ID`, else the host name).
    pub replica: String,
    /// This process, among the replica's successive processes (random per start).
    pub holder: String,
    /// Outbound client for the chat webhook (the gateway's hardened client).
    http: reqwest::Client,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("replica", &self.replica)
            .field("holder", &self.holder)
            .finish()
    }
}

impl Approvals {
    /// No IO: the tables are created by [`start`].
    pub fn new(store: portcullis_store::Store, http: reqwest::Client) -> Approvals {
        let mut bytes = [0u8; 8];
        rand::rng().fill_bytes(&mut bytes);
        Approvals {
            store: ApprovalStore::new(store),
            waiters: Mutex::default(),
            replica: replica_id(),
            holder: hex::encode(bytes),
            http,
        }
    }

    fn register(&self, id: &str) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.waiters
            .lock()
            .expect("poisoned")
            .insert(id.to_owned(), notify.clone());
        notify
    }

    fn unregister(&self, id: &str) {
        self.waiters.lock().expect("poisoned").remove(id);
    }

    /// A decision for `id` was stored by this process: wake its holder, if it is here.
    pub fn wake(&self, id: &str) {
        if let Some(notify) = self.waiters.lock().expect("poisoned").get(id) {
            notify.notify_one();
        }
    }

    /// Calls held by this process right now.
    pub fn held(&self) -> usize {
        self.waiters.lock().expect("poisoned").len()
    }
}

/// The replica's stable name: `PORTCULLIS_REPLICA_ID`, else `HOSTNAME`, else `/etc/hostname`,
/// else `local`.
fn replica_id() -> String {
    std::env::var("PORTCULLIS_REPLICA_ID")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "local".to_owned())
}

/// Before the gateway serves: creates the tables, abandons what this replica's previous
/// process held (its callers are gone), and starts the heartbeat and the sweeps (they stop at
/// shutdown). A store that cannot be prepared stops the start.
pub async fn start(gateway: &Arc<Gateway>) -> anyhow::Result<()> {
    let approvals = &gateway.approvals;
    approvals
        .store
        .migrate()
        .await
        .map_err(|error| anyhow::anyhow!("cannot prepare the approvals store: {error}"))?;
    let abandoned = approvals
        .store
        .abandon_replica(&approvals.replica, &approvals.holder, now_ms())
        .await
        .map_err(|error| anyhow::anyhow!("cannot prepare the approvals store: {error}"))?;
    if abandoned > 0 {
        tracing::warn!(
            abandoned,
            replica = %approvals.replica,
            "approval requests held before the restart were abandoned; their calls will not run"
        );
    }
    tokio::spawn(maintain(gateway.clone()));
    Ok(())
}

/// Heartbeat and sweeps, until shutdown.
async fn maintain(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = gateway.shutting_down.cancelled() => return,
        }
        let store = &gateway.approvals.store;
        let now = now_ms();
        if let Err(error) = store.heartbeat(&gateway.approvals.holder, now).await {
            tracing::warn!(%error, "approvals: heartbeat not renewed");
        }
        let stale_before = now - STALE_AFTER.as_millis() as i64;
        match store.abandon_stale(stale_before, now).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                abandoned = n,
                "approval requests of a stopped replica were abandoned"
            ),
            Err(error) => tracing::warn!(%error, "approvals: stale sweep failed"),
        }
        let overdue_before = now - EXPIRY_GRACE.as_millis() as i64;
        if let Err(error) = store.expire_overdue(overdue_before, now).await {
            tracing::warn!(%error, "approvals: expiry sweep failed");
        }
    }
}
