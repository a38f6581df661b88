//! Holding one call until its approval request is decided.
//!
//! Era behaviour (the same in both eras: the request stays open, the simplest correct choice):
//! - a client that accepts SSE (every Streamable HTTP client must) gets an SSE answer at once;
//!   while the call is held it carries `notifications/progress` every
//!   `approvals.progress_interval` when the request had a `progressToken`, and SSE keep-alive
//!   comments otherwise, so the client's own timeout does not fire first. The result (or the
//!   refusal) follows on the same stream;
//! - a JSON-only client waits for a plain JSON answer.
//!
//! Modern clients are not sent an `input_required` result: MRTR input requests can only ask
//! for elicitation, sampling or roots, a pending approval is none of these, and the retry would
//! need a gateway handle for the client to replay; holding keeps the call's exact bytes in this
//! process and makes "closing the stream" the cancellation, as the 2026-07-28 transport says.
//!
//! The hold ends with the first of: the store says approved (→ the call proceeds through the
//! rest of the pipeline), denied / expired (→ a JSON-RPC error naming the rule and the reason),
//! the deadline (→ expired, which is a denial), or the caller leaving — stream closed, request
//! future dropped, `notifications/cancelled`, session ended, gateway stopping (→ abandoned, never
//! executed).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use portcullis_approvals::{Caller, NewApproval, Role, Status, now_ms};
use portcullis_audit::store::now_us;
use portcullis_audit::{AuditEvent, RecordKind};
use portcullis_core::envelope::{Envelope, to_raw};
use portcullis_core::rawobj::RawObject;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{Approvals, POLL_INTERVAL, present, webhook};
use crate::proxy::audit::CallRecord;
use crate::proxy::errors::{
    APPROVAL_ABANDONED, APPROVAL_DENIED, APPROVAL_EXPIRED, APPROVAL_UNAVAILABLE, ProxyError,
};
use crate::proxy::policy::ApprovalNeed;
use crate::proxy::{Call, Reply};
use crate::state::{CatalogEntry, Gateway};

/// Messages buffered toward a held client's stream.
const STREAM_BUFFER: usize = 16;

/// The proxy's hook: holds `message` (a `tools/call` for `entry`, as the upstream will see it)
/// until its approval request is decided, then proceeds or refuses. Refusals are recorded as
/// denials in `audit`; an approved call's decision record references the request.
pub async fn hold(
    call: &Call,
    entry: Arc<CatalogEntry>,
    message: Envelope,
    method: String,
    mut audit: CallRecord,
    need: ApprovalNeed,
) -> Result<Reply, ProxyError> {
    let gateway = &call.gateway;
    let settings = &call.runtime.config.approvals;
    if gateway.approvals.held() >= super::MAX_HELD {
        tracing::warn!(tool = %need.tool, "too many calls held for approval; call refused");
        let refusal = ProxyError::client(
            APPROVAL_UNAVAILABLE,
            format!(
                "{} requires approval (rule {}), but too many calls are waiting for approval; retry later",
                need.tool, need.rule_id
            ),
        )
        .with_data(json!({ "rule": need.rule_id }));
        return audit.check(Err(refusal)).await;
    }
    let timeout = need.options.timeout.unwrap_or(settings.timeout);
    let server = entry.config.name.clone();
    let new = NewApproval {
        caller: Caller {
            agent: call.principal.agent.to_string(),
            user: call.principal.user.as_deref().map(str::to_owned),
            credential_id: call.principal.credential_id.to_string(),
        },
        server: server.clone(),
        tool: need.tool.clone(),
        rule_id: need.rule_id.clone(),
        required_role: match need.options.role {
            portcullis_policy::ReviewerRole::Approver => Role::Approver,
            portcullis_policy::ReviewerRole::Admin => Role::Admin,
        },
        approvals_needed: need.options.approvers,
        presentation: present::presentation(
            gateway,
            &server,
            &message,
            &need,
            &audit.related(RecordKind::Approval).findings,
        ),
        timeout_ms: i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
        replica: gateway.approvals.replica.clone(),
        holder: gateway.approvals.holder.clone(),
    };
    let approval = match gateway.approvals.store.create(&new, now_ms()).await {
        Ok(approval) => approval,
        Err(error) => {
            tracing::error!(%error, tool = %need.tool, "approval request not recorded; call refused");
            let refusal = ProxyError::client(
                APPROVAL_UNAVAILABLE,
                format!(
                    "{} requires approval (rule {}), but the approvals store is unavailable; retry later",
                    need.tool, need.rule_id
                ),
            )
            .with_data(json!({ "rule": need.rule_id }));
            return audit.check(Err(refusal)).await;
        }
    };
    tracing::info!(approval = %approval.id, tool = %need.tool, rule = %need.rule_id, agent = %call.principal.agent, "call held for approval");
    // From here on, a caller that goes away abandons the request (the guard in `Held`).
    let held = Held::new(call, &approval.id, approval.deadline_ms, &message, need);
    audit.set_approval(&approval.id);
    chain(gateway, approval_event(&audit, "approval_requested")).await;
    if let Some(url) = &settings.webhook {
        let gateway = gateway.clone();
        let url = url.expose().to_owned();
        let public_url = call.runtime.config.public_url.clone();
        let announced = approval.clone();
        tokio::spawn(async move {
            webhook::announce(&gateway.approvals, &announced, &url, &public_url).await;
        });
    }

    if !call.face.accepts_sse {
        let ending = held.wait(None).await;
        return conclude(call, entry, message, method, audit, ending).await;
    }
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let call = call.clone();
    tokio::spawn(async move {
        let client_id = message.id().map(|raw| raw.to_owned());
        let ending = held.wait(Some(&tx)).await;
        let reply = conclude(&call, entry, message, method, audit, ending).await;
        relay(reply, &tx, client_id.as_deref()).await;
    });
    Ok(Reply::Stream(rx))
}

/// Appends an approval event to the audit chain and waits until it is durable. A failure is
/// logged and does not change the call's fate: the approvals store holds the same facts, and the
/// call's own decision record (which references the approval) is written fail-closed.
pub(super) async fn chain(gateway: &Gateway, event: AuditEvent) {
    let what = event.decision.clone().unwrap_or_default();
    if let Err(error) = gateway.audit.record(event).await {
        tracing::error!(%error, what, "approval event not recorded in the audit trail");
    }
}

/// An audit event of kind `approval` for this call (trace, principal, tool, approval id).
fn approval_event(audit: &CallRecord, what: &str) -> AuditEvent {
    let mut event = audit.related(RecordKind::Approval);
    event.time_us = now_us();
    event.decision = Some(what.to_owned());
    event
}

/// How a hold ended.
enum Ending {
    Approved,
    Refused(ProxyError),
}

/// Runs the rest of the pipeline for an approved call, or records and returns the refusal.
async fn conclude(
    call: &Call,
    entry: Arc<CatalogEntry>,
    message: Envelope,
    method: String,
    audit: CallRecord,
    ending: Ending,
) -> Result<Reply, ProxyError> {
    let mut audit = audit;
    match ending {
        Ending::Approved => {
            chain(&call.gateway, approval_event(&audit, "approval_approved")).await;
            crate::proxy::proceed(call, &entry, message, &method, audit).await
        }
        Ending::Refused(error) => {
            let what = match error.code {
                APPROVAL_DENIED => "approval_denied",
                APPROVAL_EXPIRED => "approval_expired",
                APPROVAL_ABANDONED => "approval_abandoned",
                _ => "approval_unavailable",
            };
            chain(&call.gateway, approval_event(&audit, what)).await;
            audit.check(Err(error)).await
        }
    }
}

/// Sends an approved call's answer (or a refusal) down the held client's stream.
async fn relay(
    reply: Result<Reply, ProxyError>,
    tx: &mpsc::Sender<Envelope>,
    client_id: Option<&RawValue>,
) {
    match reply {
        Ok(Reply::Message { message, .. }) => {
            let _ = tx.send(message).await;
        }
        Ok(Reply::Stream(mut messages)) => {
            while let Some(message) = messages.recv().await {
                if tx.send(message).await.is_err() {
                    break; // the client left: dropping `messages` cancels the upstream call
                }
            }
        }
        Ok(Reply::Resumable {
            session,
            stream,
            log,
        }) => {
            let mut messages = Box::pin(log.read_from(0));
            while let Some((_, message)) = messages.next().await {
                if tx.send((*message).clone()).await.is_err() {
                    break;
                }
            }
            session.streams.remove(stream);
        }
        Ok(Reply::Accepted) => {}
        Err(error) => {
            let _ = tx.send(error.to_envelope(client_id)).await;
        }
    }
}

/// One held call: what it waits on, and what it owes the store if it goes away.
struct Held {
    gateway: Arc<Gateway>,
    id: String,
    deadline_ms: i64,
    rule_id: String,
    tool: String,
    progress_token: Option<Box<RawValue>>,
    interval: Duration,
    notify: Arc<Notify>,
    /// Fires when a legacy client sends `notifications/cancelled` for this request (the session
    /// drops the sender).
    cancelled: Option<oneshot::Receiver<()>>,
    /// (session, request id key) while the call is registered in the session's in-flight table.
    tracked: Option<(Arc<crate::session::Session>, String)>,
    /// Until the hold ends, dropping it (a client that went away) abandons the request.
    armed: bool,
}

impl Held {
    fn new(
        call: &Call,
        id: &str,
        deadline_ms: i64,
        message: &Envelope,
        need: ApprovalNeed,
    ) -> Held {
        let gateway = call.gateway.clone();
        let notify = gateway.approvals.register(id);
        let (cancelled, tracked) = match (&call.session, message.id()) {
            (Some(session), Some(request_id)) => {
                let (tx, rx) = oneshot::channel();
                let key = request_id.get().to_owned();
                session.track_call(key.clone(), tx);
                (Some(rx), Some((session.clone(), key)))
            }
            _ => (None, None),
        };
        Held {
            id: id.to_owned(),
            deadline_ms,
            rule_id: need.rule_id,
            tool: need.tool,
            progress_token: progress_token(message),
            interval: call.runtime.config.approvals.progress_interval,
            notify,
            cancelled,
            tracked,
            armed: true,
            gateway,
        }
    }

    fn approvals(&self) -> &Approvals {
        &self.gateway.approvals
    }

    /// Waits for the end of the hold; `stream` is the client's SSE stream, when it has one.
    async fn wait(mut self, stream: Option<&mpsc::Sender<Envelope>>) -> Ending {
        let remaining =
            Duration::from_millis(u64::try_from(self.deadline_ms - now_ms()).unwrap_or(0));
        let deadline = tokio::time::Instant::now() + remaining;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = tokio::time::Instant::now() + self.interval;
        let mut progress = tokio::time::interval_at(start, self.interval);
        let mut ticks = 0u64;
        let sends_progress = stream.is_some() && self.progress_token.is_some();
        let shutting_down = self.gateway.shutting_down.clone();
        let mut cancelled = self.cancelled.take();
        loop {
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = poll.tick() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let status = self.approvals().store.expire(&self.id, now_ms()).await;
                    return self.settle(status.map(|s| (s, None))).await;
                }
                _ = progress.tick(), if sends_progress => {
                    ticks += 1;
                    let note = self.progress(ticks);
                    if let Some(stream) = stream
                        && stream.send(note).await.is_err()
                    {
                        return self.abandon("the client disconnected").await;
                    }
                    continue;
                }
                _ = async { stream.expect("guarded").closed().await }, if stream.is_some() => {
                    return self.abandon("the client disconnected").await;
                }
                _ = async { cancelled.as_mut().expect("guarded").await }, if cancelled.is_some() => {
                    return self.abandon("the client cancelled the call").await;
                }
                _ = shutting_down.cancelled() => {
                    return self.abandon("the gateway is stopping").await;
                }
            }
            if let Some((session, _)) = &self.tracked
                && !self.gateway.sessions.contains(&session.id)
            {
                return self.abandon("the client's session ended").await;
            }
            match self.approvals().store.status(&self.id).await {
                Ok(Some((Status::Pending, _))) => {}
                Ok(Some((status, reason))) => return self.settle(Ok((status, reason))).await,
                Ok(None) => {
                    let vanished = portcullis_approvals::ApprovalStoreError::Corrupt {
                        id: self.id.clone(),
                        what: "vanished".into(),
                    };
                    return self.settle(Err(vanished)).await;
                }
                // Keep holding: the deadline still ends the hold, and nothing runs unless the
                // store says approved.
                Err(error) => {
                    tracing::warn!(approval = %self.id, %error, "approval status not readable; still holding")
                }
            }
        }
    }

    /// The caller went away: the request is abandoned (unless a final status won the race,
    /// which changes nothing: nobody is there to receive a result, so nothing runs).
    async fn abandon(mut self, why: &str) -> Ending {
        self.armed = false;
        match self
            .approvals()
            .store
            .abandon(&self.id, why, now_ms())
            .await
        {
            Ok(status) => tracing::info!(approval = %self.id, %status, why, "held call abandoned"),
            Err(error) => {
                tracing::warn!(approval = %self.id, %error, why, "held call abandoned; the store could not record it (its holder heartbeat will lapse)")
            }
        }
        Ending::Refused(self.refusal(Status::Abandoned, Some(why.to_owned())))
    }

    /// The request reached a final status (or the store failed): the hold's ending.
    async fn settle(
        mut self,
        status: Result<(Status, Option<String>), portcullis_approvals::ApprovalStoreError>,
    ) -> Ending {
        self.armed = false;
        match status {
            Ok((Status::Approved, _)) => {
                tracing::info!(approval = %self.id, tool = %self.tool, "approved: the call proceeds");
                Ending::Approved
            }
            Ok((Status::Pending, _)) => {
                // The deadline passed but the row is not overdue by the store's clock yet.
                Ending::Refused(self.refusal(Status::Expired, None))
            }
            Ok((status, reason)) => {
                let reason = reason.or_else(|| self.final_reason(status));
                tracing::info!(approval = %self.id, %status, "held call refused");
                Ending::Refused(self.refusal(status, reason))
            }
            Err(error) => {
                tracing::error!(approval = %self.id, %error, "approval status unknown; call refused");
                Ending::Refused(
                    ProxyError::client(
                        APPROVAL_UNAVAILABLE,
                        format!(
                            "{} requires approval (rule {}), but the approvals store is unavailable; retry later",
                            self.tool, self.rule_id
                        ),
                    )
                    .with_data(json!({ "rule": self.rule_id, "approval": self.id })),
                )
            }
        }
    }

    fn final_reason(&self, status: Status) -> Option<String> {
        match status {
            Status::Expired => Some("no decision before the deadline".to_owned()),
            _ => None,
        }
    }

    /// The JSON-RPC error for a call that will not run.
    fn refusal(&self, status: Status, reason: Option<String>) -> ProxyError {
        let (code, message) = match status {
            Status::Denied => (
                APPROVAL_DENIED,
                format!(
                    "{} was denied by a reviewer (rule {}, approval {}): {}",
                    self.tool,
                    self.rule_id,
                    self.id,
                    reason.as_deref().unwrap_or("no reason given")
                ),
            ),
            Status::Expired => (
                APPROVAL_EXPIRED,
                format!(
                    "{} was denied: no reviewer decided before the approval timed out (rule {}, approval {})",
                    self.tool, self.rule_id, self.id
                ),
            ),
            _ => (
                APPROVAL_ABANDONED,
                format!(
                    "{} was not executed: the approval request was abandoned ({}) (rule {}, approval {})",
                    self.tool,
                    reason.as_deref().unwrap_or("its holder is gone"),
                    self.rule_id,
                    self.id
                ),
            ),
        };
        ProxyError::client(code, message).with_data(json!({
            "rule": self.rule_id,
            "approval": self.id,
            "status": status.as_str(),
            "reason": reason,
        }))
    }

    /// A `notifications/progress` for the client's token while the call is held.
    fn progress(&self, tick: u64) -> Envelope {
        #[derive(serde::Serialize)]
        struct Params<'a> {
            #[serde(rename = "progressToken")]
            token: &'a RawValue,
            progress: u64,
            message: String,
        }
        let token = self
            .progress_token
            .as_deref()
            .expect("checked by the caller");
        let params = Params {
            token,
            progress: tick,
            message: format!(
                "waiting for approval {} (rule {}); {}s left",
                self.id,
                self.rule_id,
                (self.deadline_ms - now_ms()).max(0) / 1000
            ),
        };
        Envelope::notification("notifications/progress", Some(to_raw(&params)))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.approvals().unregister(&self.id);
        if let Some((session, key)) = self.tracked.take() {
            session.untrack_call(&key);
        }
        if self.armed {
            // The request future was dropped (a JSON-only client went away, or the task was
            // cancelled): the request is abandoned and the call never runs.
            let gateway = self.gateway.clone();
            let id = self.id.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = gateway
                        .approvals
                        .store
                        .abandon(&id, "the client went away", now_ms())
                        .await;
                });
            }
        }
    }
}

/// `params._meta.progressToken`, as sent.
fn progress_token(message: &Envelope) -> Option<Box<RawValue>> {
    let params = RawObject::parse(message.params()?)?;
    let meta = params.get_object("_meta")?;
    meta.get("progressToken").map(|raw| raw.to_owned())
}
