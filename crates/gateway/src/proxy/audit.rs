//! Audit phase of a governed request (DESIGN step 10): one [`CallRecord`] per request, opened
//! after routing and closed with the answer.
//!
//! ```text
//! let mut audit = CallRecord::begin(call, Some(server), method, &mut message); // trace, fingerprint
//! audit.check(kill_switch / rate_limit / policy / scan / approval …).await?;  // denial records
//! audit.decision().await?;                    // durable BEFORE the upstream is called
//! audit.outcome(forward(…).await).await       // outcome record, then the answer
//! ```
//!
//! Architecture Invariant: no call reaches an upstream unless its decision record is durable
//! (or, with `audit.on_failure: spool`, fsynced to the local spool). If neither can be written
//! the call fails closed with [`AUDIT_UNAVAILABLE`] and the upstream is never called.
//!
//! The outcome record follows the answer's final message: with `audit.await_outcome` (the
//! default) a JSON answer, and the final message of an SSE answer, are released only once their
//! outcome record is durable, so every answered call has both records even across `kill -9`.
//! Resumable legacy streams (2025-11-25 sessions) are written to their replay log by the forward
//! phase; their outcome record follows the final message rather than preceding it.
//!
//! Denials from any phase go through [`CallRecord::check`] (the rule id comes from the error's
//! `data.rule`); scanners attach findings with [`CallRecord::add_findings`], approvals their
//! reference with [`CallRecord::set_approval`], both before [`CallRecord::decision`]. Findings on
//! the way back (results, resource contents) are collected in the record's [`LateFindings`],
//! which the forward phase fills, and carried by the outcome record. Requests the gateway
//! answers itself leave one record ([`CallRecord::answered`]).
//!
//! Server→client requests (sampling, elicitation, roots) leave one record each, relayed
//! ([`server_request_relayed`]) or refused ([`server_request_refused`]), with the scanners'
//! findings on them; a relayed one asked of a legacy client is followed by the record of the
//! client's answer ([`QuestionRecord`]).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use portcullis_audit::store::now_us;
use portcullis_audit::{AuditEvent, Finding, Outcome, RecordKind};
use portcullis_core::envelope::{Envelope, Kind};
use portcullis_core::names;
use portcullis_core::rawobj::RawObject;
use tokio::sync::{mpsc, oneshot};

use super::errors::{
    APPROVAL_REQUIRED, AUDIT_UNAVAILABLE, Fault, ProxyError, UPSTREAM_UNAVAILABLE,
};
use super::{Call, Reply};
use crate::audit_trail::{AuditTrail, trace};
use crate::metrics::{LatencyLabels, RequestLabels, ServerLabel, method_label};
use crate::route::Route;

/// Findings made after the decision record (the scanners on a call's result), for its outcome
/// record. Cheap to clone; every clone adds to the same list.
#[derive(Debug, Clone, Default)]
pub struct LateFindings(Arc<Mutex<Vec<Finding>>>);

/// Most late findings kept per call (a hostile result cannot grow a record without bound).
const MAX_LATE_FINDINGS: usize = 256;

impl LateFindings {
    /// Adds findings (beyond [`MAX_LATE_FINDINGS`] they are dropped).
    pub fn add(&self, findings: impl IntoIterator<Item = Finding>) {
        let mut list = self.0.lock().expect("poisoned");
        let room = MAX_LATE_FINDINGS.saturating_sub(list.len());
        list.extend(findings.into_iter().take(room));
    }

    fn take(&self) -> Vec<Finding> {
        std::mem::take(&mut *self.0.lock().expect("poisoned"))
    }
}

/// The audit record of one governed request, from routing to its answer.
pub struct CallRecord {
    trail: AuditTrail,
    event: AuditEvent,
    started: Instant,
    /// Findings on the answer, filled by the forward phase.
    late: LateFindings,
    /// The server's connector, asked for the protocol version it speaks (upstream era) once
    /// the call is done (by then it is known without waiting).
    connector: Option<std::sync::Arc<dyn crate::upstream::Connector>>,
    /// The request's OpenTelemetry span (`crate::telemetry`); inert when tracing is off.
    span: crate::telemetry::RequestSpan,
}

impl CallRecord {
    /// Opens the record of `message` (the request as the upstream will see it) for `server`
    /// (None: an aggregate operation). Continues or starts the trace and writes the gateway's
    /// hop into `params._meta.traceparent` (the only edit), fingerprints the arguments.
    pub fn begin(
        call: &Call,
        server: Option<&str>,
        method: &str,
        message: &mut Envelope,
    ) -> CallRecord {
        let started = Instant::now();
        let trail = call.gateway.audit.clone();
        let server = server.map(str::to_owned).or_else(|| match &call.route {
            Route::Server(name) => Some(name.to_string()),
            Route::Aggregate => None,
        });
        let mut event = AuditEvent::new(RecordKind::Call, now_us());
        event.bytes_in = Some(message_bytes(message));
        let (incoming, hop) = trace::continue_trace(message);
        let span = crate::telemetry::RequestSpan::start(
            &call.gateway.telemetry,
            incoming.as_ref(),
            &hop,
            message.id().map(|id| id.get()),
        );
        event.trace_id = Some(hop.trace_id);
        event.principal.agent = Some(call.principal.agent.to_string());
        event.principal.user = call.principal.user.as_deref().map(str::to_owned);
        event.principal.token_id = Some(
            call.principal
                .token_id
                .as_deref()
                .unwrap_or(&call.principal.credential_id)
                .to_owned(),
        );
        event.session = call.session.as_ref().map(|s| s.id.to_string());
        event.client_era = Some(call.face.version.to_string());
        event.method = Some(method.to_owned());
        if (trail.is_enabled() || span.is_recording())
            && let Some(params) = message.params().and_then(RawObject::parse)
        {
            if method == "tools/call"
                && let (Some(server), Some(name)) = (&server, params.get_str("name"))
            {
                event.tool = Some(names::join(server, &name));
            }
            event.args_fingerprint = ["arguments", "argument", "uri"]
                .iter()
                .find_map(|key| params.get(key))
                .and_then(|raw| trail.fingerprint(raw));
        }
        let connector = server
            .as_deref()
            .and_then(|name| call.runtime.server(name))
            .map(|entry| entry.connector.clone());
        event.server = server;
        CallRecord {
            trail,
            event,
            started,
            late: LateFindings::default(),
            span,
            connector,
        }
    }

    /// Where the forward phase puts the scanners' findings on the answer (for the outcome
    /// record).
    pub fn late_findings(&self) -> LateFindings {
        self.late.clone()
    }

    /// Passes a phase's verdict through: Ok as it is; a refusal is recorded as a denial record
    /// naming its rule (durable before the client sees the refusal, spooled or only logged if
    /// the store is down: the call is refused either way) and returned.
    pub async fn check<T>(&mut self, verdict: Result<T, ProxyError>) -> Result<T, ProxyError> {
        match verdict {
            Ok(value) => Ok(value),
            Err(error) => {
                self.deny(&error).await;
                Err(error)
            }
        }
    }

    /// Records `error` as this request's denial (for phases that refuse outside
    /// [`CallRecord::check`]).
    pub async fn deny(&mut self, error: &ProxyError) {
        let mut event = self.event.clone();
        event.kind = RecordKind::Denial;
        event.decision = Some(
            if error.code == APPROVAL_REQUIRED {
                "approve"
            } else {
                "deny"
            }
            .to_owned(),
        );
        event.rule_id = error
            .data
            .as_ref()
            .and_then(|d| d.get("rule"))
            .and_then(|r| r.as_str())
            .map(str::to_owned)
            .or(event.rule_id);
        event.outcome = Some(Outcome::Error { code: error.code });
        event.latency_us = Some(elapsed_us(self.started));
        self.count(&event, "refused");
        self.span
            .annotate(&event, Some((error.code, &error.message)));
        if let Err(unavailable) = self.trail.record(event).await {
            tracing::error!(error = %unavailable, code = error.code, "denial not recorded");
        }
    }

    /// Marks the start of the phase `name` of this request (the previous one ends) in its
    /// trace (`crate::telemetry`); nothing when tracing is off.
    pub fn phase(&self, name: &'static str) {
        self.span.phase(name);
    }

    /// The request's trace span, e.g. to run the forward phase under it
    /// (`span().scoped(…)`).
    pub fn span(&self) -> &crate::telemetry::RequestSpan {
        &self.span
    }

    /// The rule that allowed the call (policy), for the decision record.
    pub fn set_rule(&mut self, rule: Option<String>) {
        self.event.rule_id = rule;
    }

    /// Scanner findings on the request, carried by the decision and outcome records.
    pub fn add_findings(&mut self, findings: impl IntoIterator<Item = Finding>) {
        self.event.findings.extend(findings);
    }

    /// The approval this call waited for.
    pub fn set_approval(&mut self, reference: impl Into<String>) {
        self.event.approval_ref = Some(reference.into());
    }

    /// A record of another `kind` about this request (same trace, principal, server, tool,
    /// rule and approval reference), for events such as an approval being requested.
    pub fn related(&self, kind: RecordKind) -> AuditEvent {
        let mut event = self.event.clone();
        event.kind = kind;
        event
    }

    /// Writes the decision record (`allow`, the rule that allowed) and waits until it is
    /// durable. Err: the trail cannot record the call, which then must not go upstream.
    pub async fn decision(&mut self) -> Result<(), ProxyError> {
        self.event.decision = Some("allow".to_owned());
        if !self.trail.is_enabled() {
            return Ok(());
        }
        self.span.phase("audit.decision");
        match self.trail.record(self.event.clone()).await {
            Ok(()) => {
                self.span.end_phase();
                Ok(())
            }
            Err(unavailable) => {
                let error = audit_unavailable(&unavailable.to_string());
                self.span
                    .annotate(&self.event, Some((error.code, &error.message)));
                self.count_outcome(Some(error.code));
                Err(error)
            }
        }
    }

    /// For a request the gateway answers itself (no upstream call, e.g. `server/discover`):
    /// one record, with the decision (`allow`) and the outcome, written like an outcome record.
    pub async fn answered(
        mut self,
        answer: Result<Reply, ProxyError>,
    ) -> Result<Reply, ProxyError> {
        self.event.decision = Some("allow".to_owned());
        self.outcome(answer).await
    }

    /// Writes the outcome record of the answer and hands the answer on: a JSON answer once its
    /// record is durable (`await_outcome`), an SSE answer with its final message held until
    /// then.
    pub async fn outcome(self, answer: Result<Reply, ProxyError>) -> Result<Reply, ProxyError> {
        match answer {
            Ok(Reply::Message { message, status }) => {
                let code = error_code(&message);
                self.finish(code, message_bytes(&message)).await;
                Ok(Reply::Message { message, status })
            }
            Ok(Reply::Stream(upstream)) => Ok(Reply::Stream(self.follow_stream(upstream))),
            Ok(Reply::Resumable {
                session,
                stream,
                log,
            }) => {
                self.follow_log(log.clone());
                Ok(Reply::Resumable {
                    session,
                    stream,
                    log,
                })
            }
            Ok(Reply::Accepted) => {
                self.finish(None, 0).await;
                Ok(Reply::Accepted)
            }
            Err(error) => {
                self.finish(Some(error.code), 0).await;
                Err(error)
            }
        }
    }

    /// Relays an SSE answer; the final response waits for its outcome record.
    fn follow_stream(self, mut upstream: mpsc::Receiver<Envelope>) -> mpsc::Receiver<Envelope> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut record = Some(self);
            loop {
                let message = tokio::select! {
                    message = upstream.recv() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    // The client left while nothing was being sent (a quiet listen, a call
                    // waiting upstream): dropping `upstream` ends the call (cancelled upstream).
                    () = tx.closed() => break,
                };
                if is_final(&message)
                    && let Some(record) = record.take()
                {
                    record
                        .finish(error_code(&message), message_bytes(&message))
                        .await;
                }
                if tx.send(message).await.is_err() {
                    break; // the client left; dropping `upstream` cancels the call
                }
            }
            if let Some(record) = record {
                // Ended without a final response: cancelled or the client went away.
                record.finish(Some(super::errors::INVALID_REQUEST), 0).await;
            }
        });
        rx
    }

    /// Follows a resumable stream's log to its final message and records the outcome.
    fn follow_log(self, log: std::sync::Arc<crate::stream_log::StreamLog>) {
        use futures::StreamExt;
        tokio::spawn(async move {
            let mut last = None;
            let mut messages = Box::pin(log.read_from(0));
            while let Some((_, message)) = messages.next().await {
                last = Some(message);
            }
            match last.filter(|m| is_final(m)) {
                Some(message) => {
                    self.finish(error_code(&message), message_bytes(&message))
                        .await
                }
                None => self.finish(Some(super::errors::INVALID_REQUEST), 0).await,
            }
        });
    }

    /// Writes the outcome record (error `code`, or ok) and counts the request.
    async fn finish(mut self, code: Option<i64>, bytes_out: i64) {
        self.count_outcome(code);
        self.span.annotate(&self.event, code.map(|code| (code, "")));
        if !self.trail.is_enabled() {
            return;
        }
        self.span.phase("audit.outcome");
        let mut event = std::mem::replace(&mut self.event, AuditEvent::new(RecordKind::Call, 0));
        event.findings.extend(self.late.take());
        event.outcome = Some(match code {
            None => Outcome::Ok,
            Some(code) => Outcome::Error { code },
        });
        event.latency_us = Some(elapsed_us(self.started));
        event.bytes_out = Some(bytes_out);
        event.time_us = now_us();
        // Known once the connector has connected; never waited for here.
        if let Some(Ok(facts)) = self
            .connector
            .as_ref()
            .and_then(|c| futures::FutureExt::now_or_never(c.facts()))
        {
            event.upstream_era = Some(facts.protocol_version);
        }
        if self.trail.awaits_outcome() {
            if let Err(error) = self.trail.record(event).await {
                tracing::error!(%error, "outcome record not written");
            }
        } else {
            self.trail.record_later(event).await;
        }
    }

    fn count_outcome(&self, code: Option<i64>) {
        let outcome = if code.is_some() { "error" } else { "ok" };
        self.count(&self.event, outcome);
        if let Some(server) = &self.event.server {
            let up = !matches!(code, Some(UPSTREAM_UNAVAILABLE));
            self.trail
                .metrics()
                .upstream_up
                .get_or_create(&ServerLabel {
                    server: server.clone(),
                })
                .set(i64::from(up));
        }
    }

    /// Counts the request (with its decision and `outcome`) and observes its duration.
    fn count(&self, event: &AuditEvent, outcome: &str) {
        let metrics = self.trail.metrics();
        let server = event.server.clone().unwrap_or_else(|| "-".to_owned());
        let method = method_label(event.method.as_deref().unwrap_or("")).to_owned();
        metrics
            .request_duration
            .get_or_create(&LatencyLabels {
                server: server.clone(),
                method: method.clone(),
            })
            .observe(self.started.elapsed().as_secs_f64());
        metrics
            .requests
            .get_or_create(&RequestLabels {
                server,
                tool: metrics.tool_label(event.tool.as_deref()),
                method,
                decision: event.decision.clone().unwrap_or_else(|| "-".to_owned()),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// The gateway's refusal when the trail cannot record a call.
pub fn audit_unavailable(detail: &str) -> ProxyError {
    ProxyError {
        code: AUDIT_UNAVAILABLE,
        message: "audit trail unavailable: the call was not forwarded because it could not be \
                  recorded; retry later"
            .to_owned(),
        data: Some(serde_json::json!({ "reason": detail })),
        fault: Fault::Gateway,
        status: http::StatusCode::OK,
    }
}

/// Is this the final response of a request (not a notification or a server→client request)?
fn is_final(message: &Envelope) -> bool {
    matches!(message.kind(), Kind::Result | Kind::Error)
}

/// The error code of an error response.
fn error_code(message: &Envelope) -> Option<i64> {
    if message.kind() != Kind::Error {
        return None;
    }
    let error = RawObject::parse(message.member("error")?)?;
    serde_json::from_str(error.get("code")?.get()).ok()
}

/// Bytes of a message as it travels (members as received, `{}` and separators).
fn message_bytes(message: &Envelope) -> i64 {
    let n: usize = 2 + message
        .members()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum::<usize>();
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn elapsed_us(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX)
}

/// The record of a server→client request (`sampling/createMessage`, `elicitation/create`,
/// `roots/list`) from `server` during a call of `principal`.
fn server_request_event(
    kind: RecordKind,
    principal: &crate::auth::Principal,
    session: Option<&str>,
    server: &str,
    request: &Envelope,
    findings: Vec<Finding>,
) -> AuditEvent {
    let mut event = AuditEvent::new(kind, now_us());
    event.principal.agent = Some(principal.agent.to_string());
    event.principal.user = principal.user.as_deref().map(str::to_owned);
    event.principal.token_id = Some(
        principal
            .token_id
            .as_deref()
            .unwrap_or(&principal.credential_id)
            .to_owned(),
    );
    event.session = session.map(str::to_owned);
    event.server = Some(server.to_owned());
    event.method = request.method().map(str::to_owned);
    event.findings = findings;
    event
}

/// Records a server→client request that the gateway refused to relay to `principal`'s client
/// (policy, scanners, a capability the client did not declare), with the rule named in
/// `refusal` (the error answer sent back upstream) and the scanners' findings.
///
/// Best effort (never waits): the network decides how many of these come, and the call they
/// belong to has its own durable records; a flood must not stall it. A dropped record is
/// counted in `portcullis_audit_dropped_total`.
pub fn server_request_refused(
    trail: &AuditTrail,
    principal: &crate::auth::Principal,
    session: Option<&str>,
    server: &str,
    request: &Envelope,
    refusal: &Envelope,
    findings: Vec<Finding>,
) {
    if !trail.is_enabled() {
        return;
    }
    let mut event = server_request_event(
        RecordKind::Denial,
        principal,
        session,
        server,
        request,
        findings,
    );
    event.decision = Some("deny".to_owned());
    let error = refusal
        .member("error")
        .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok());
    event.rule_id = error
        .as_ref()
        .and_then(|e| e.pointer("/data/rule"))
        .and_then(|r| r.as_str())
        .map(str::to_owned);
    event.outcome = error_code(refusal).map(|code| Outcome::Error { code });
    trail.record_best_effort(event);
}

/// Records a server→client request relayed to `principal`'s client (allowed by the policy rule
/// `rule`, passed or redacted by the scanners, whose `findings` it carries). Its outcome is the
/// client's answer, which goes back to the upstream; the call's own outcome record follows.
///
/// Best effort, like [`server_request_refused`] and for the same reason: these arrive at the
/// upstream's pace in the middle of a call whose decision record is already durable.
pub fn server_request_relayed(
    trail: &AuditTrail,
    principal: &crate::auth::Principal,
    session: Option<&str>,
    server: &str,
    request: &Envelope,
    rule: Option<String>,
    findings: Vec<Finding>,
) {
    if !trail.is_enabled() {
        return;
    }
    let mut event = server_request_event(
        RecordKind::Call,
        principal,
        session,
        server,
        request,
        findings,
    );
    event.decision = Some("allow".to_owned());
    event.rule_id = rule;
    event.bytes_in = Some(message_bytes(request));
    trail.record_best_effort(event);
}

/// The client's answer to a relayed server→client request: the outcome record that follows
/// [`server_request_relayed`]'s (same principal, session, server and method; `outcome` the
/// client's result or error code, or [`NO_ANSWER`] when none came; latency; bytes out).
pub struct QuestionRecord {
    trail: AuditTrail,
    event: AuditEvent,
    started: Instant,
}

/// The outcome code of a relayed question the client never answered (it went away, or the
/// call stopped waiting for it).
pub const NO_ANSWER: i64 = super::errors::INVALID_REQUEST;

impl QuestionRecord {
    /// Starts the record of `request`, about to be asked of `principal`'s client.
    pub fn new(
        trail: &AuditTrail,
        principal: &crate::auth::Principal,
        session: Option<&str>,
        server: &str,
        request: &Envelope,
    ) -> QuestionRecord {
        let mut event = server_request_event(
            RecordKind::Call,
            principal,
            session,
            server,
            request,
            Vec::new(),
        );
        event.decision = Some("allow".to_owned());
        QuestionRecord {
            trail: trail.clone(),
            event,
            started: Instant::now(),
        }
    }

    /// Passes the client's answer from `answer` on to the receiver returned, recording it on
    /// the way. No answer (the session dropped the question, or the receiver returned is
    /// dropped before one came) is recorded as [`NO_ANSWER`]. Best effort, like the record of
    /// the question itself.
    pub fn follow(self, answer: oneshot::Receiver<Envelope>) -> oneshot::Receiver<Envelope> {
        if !self.trail.is_enabled() {
            return answer;
        }
        let (relay, relayed) = oneshot::channel();
        self.relay(answer, relay);
        relayed
    }

    /// The same for a modern client, whose answer arrives later in `inputResponses`: returns
    /// the sender to put it in; it reaches `reply` (the upstream's side) recorded. Dropping the
    /// sender unused (the question left unanswered, the held call expired) records
    /// [`NO_ANSWER`].
    pub fn relay_to(self, reply: oneshot::Sender<Envelope>) -> oneshot::Sender<Envelope> {
        if !self.trail.is_enabled() {
            return reply;
        }
        let (answer_tx, answer_rx) = oneshot::channel();
        self.relay(answer_rx, reply);
        answer_tx
    }

    fn relay(self, answer: oneshot::Receiver<Envelope>, mut relay: oneshot::Sender<Envelope>) {
        tokio::spawn(async move {
            tokio::select! {
                answer = answer => match answer {
                    Ok(answer) => {
                        self.record(Some(&answer));
                        let _ = relay.send(answer);
                    }
                    Err(_) => self.record(None),
                },
                () = relay.closed() => self.record(None),
            }
        });
    }

    fn record(mut self, answer: Option<&Envelope>) {
        let code = match answer {
            Some(answer) => error_code(answer),
            None => Some(NO_ANSWER),
        };
        self.event.outcome = Some(match code {
            None => Outcome::Ok,
            Some(code) => Outcome::Error { code },
        });
        self.event.latency_us = Some(elapsed_us(self.started));
        self.event.bytes_out = answer.map(message_bytes);
        self.event.time_us = now_us();
        self.trail.record_best_effort(self.event);
    }
}
