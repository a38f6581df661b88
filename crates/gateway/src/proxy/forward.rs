//! Forward phase: one call to one upstream, and everything that comes back during it.
//!
//! The final response is returned as a plain JSON reply when nothing else arrives first;
//! otherwise the reply becomes an SSE stream carrying progress and log notifications and
//! server→client requests before the final response. Questions from the upstream (sampling,
//! elicitation, roots) reach the client in its own era:
//! - legacy client: relayed as a server→client request on its stream; its answer, POSTed back
//!   on the session, goes to the connector, which restores the upstream's id;
//! - modern client: the call is held ([`super::held`]) and the client gets an `input_required`
//!   result; its retry with `inputResponses` resumes the same upstream call;
//! - a modern upstream's `input_required` result for a legacy client is turned into
//!   server→client requests, and the call is retried upstream with the answers.
//!
//! A question is passed on only if the policy allows its method for the caller, the client
//! declared the matching capability (the gateway never widens what a client offers) and can be
//! asked on this answer, and the scanners do not block it (spans they redact are masked in
//! place first); a refused question is answered to the upstream with the error
//! ([`screen_question`]). Each question leaves one audit record, relayed or refused, with the
//! scanners' findings. List answers on the transparent route are filtered by the policy like the
//! aggregate's. The scanners' findings on the final response go to the call's outcome record
//! ([`LateFindings`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::envelope::{Envelope, Kind, to_raw};
use portcullis_core::era::Era;
use portcullis_core::rawobj::RawObject;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::audit::LateFindings;
use super::errors::{INVALID_PARAMS, METHOD_NOT_FOUND, ProxyError, UPSTREAM_UNAVAILABLE};
use super::held::{HANDLE_PREFIX, HeldCall};
use super::{Call, Face, Reply, adapt};
use crate::auth::Principal;
use crate::route::Route;
use crate::session::Session;
use crate::state::{CatalogEntry, Gateway};
use crate::upstream::{Caller, Connector, Events, UpstreamEvent};

/// Messages buffered toward one client stream before the upstream reader waits.
const STREAM_BUFFER: usize = 64;
/// Rounds of `input_required` a legacy client is walked through for one call.
const MAX_INPUT_ROUNDS: usize = 8;

/// Sends `message` to the entry's connector and turns what comes back into a reply. A message
/// carrying a gateway `requestState` resumes a held call instead. (Scanner findings on the
/// answer are only logged: for answers without a call record, such as lists.)
pub async fn forward(
    call: &Call,
    entry: &Arc<CatalogEntry>,
    message: Envelope,
    method: &str,
) -> Result<Reply, ProxyError> {
    forward_recorded(call, entry, message, method, LateFindings::default()).await
}

/// [`forward`], putting the scanners' findings on the final response into `findings` (the
/// call's [`super::audit::CallRecord::late_findings`], for its outcome record).
pub async fn forward_recorded(
    call: &Call,
    entry: &Arc<CatalogEntry>,
    message: Envelope,
    method: &str,
    findings: LateFindings,
) -> Result<Reply, ProxyError> {
    if let Some(handle) = held_handle(&message) {
        return resume(call, entry, message, method, &handle, findings).await;
    }
    let ctx = Ctx::new(call, entry, method, &message, findings);
    let exchange = entry.connector.request(&call.caller, message).await?;
    run(ctx, exchange.events, exchange.cancel).await
}

/// The gateway handle in `params.requestState`, if the message carries one.
fn held_handle(message: &Envelope) -> Option<String> {
    // Almost no call carries a gateway handle: skip parsing params unless the prefix occurs.
    let params = message.params()?;
    if !params.get().contains(HANDLE_PREFIX) {
        return None;
    }
    let state = RawObject::parse(params)?.get_str("requestState")?;
    state.starts_with(HANDLE_PREFIX).then_some(state)
}

/// Everything one call needs after the request left, owned so a stream task can take it.
struct Ctx {
    gateway: Arc<Gateway>,
    connector: Arc<dyn Connector>,
    caller: Caller,
    principal: Principal,
    server: String,
    method: String,
    face: Face,
    route: Route,
    session: Option<Arc<Session>>,
    timeout: Duration,
    /// The client's raw request id, for errors the gateway has to make up.
    client_id: Option<Box<RawValue>>,
    /// The request as first sent upstream (retried with `inputResponses` for legacy clients).
    original: Envelope,
    /// The scanners' findings on the final response, for the call's outcome record.
    findings: LateFindings,
    /// The request's trace span, when recorded (`crate::telemetry`): `scan.response` is marked.
    span: crate::telemetry::SpanRef,
}

impl Ctx {
    fn new(
        call: &Call,
        entry: &CatalogEntry,
        method: &str,
        message: &Envelope,
        findings: LateFindings,
    ) -> Ctx {
        Ctx {
            gateway: call.gateway.clone(),
            connector: entry.connector.clone(),
            caller: call.caller.clone(),
            principal: call.principal.clone(),
            server: entry.config.name.clone(),
            method: method.to_owned(),
            face: call.face.clone(),
            route: call.route.clone(),
            session: call.session.clone(),
            timeout: entry.config.request_timeout,
            client_id: message.id().map(|raw| raw.to_owned()),
            original: message.clone(),
            findings,
            span: crate::telemetry::SpanRef::current(),
        }
    }

    fn owner(&self) -> (String, String) {
        (
            self.principal.credential_id.to_string(),
            self.principal.agent.to_string(),
        )
    }

    fn error(&self, error: &ProxyError) -> Envelope {
        error.to_envelope(self.client_id.as_deref())
    }

    /// Resolves with the error to end this call with when a kill switch stops it or its task
    /// token is revoked (`super::control`).
    fn killed(&self) -> impl Future<Output = ProxyError> + '_ {
        super::control::killed(
            &self.gateway,
            &self.principal,
            &self.server,
            &self.method,
            &self.original,
        )
    }

    fn ended(&self) -> ProxyError {
        ProxyError::upstream(
            UPSTREAM_UNAVAILABLE,
            format!("upstream {} ended the call without a response", self.server),
        )
    }
}

/// The upstream side of a call in progress.
struct Flow {
    events: Events,
    /// Dropped when the call is abandoned: the connector then cancels it upstream.
    upstream_cancel: Option<oneshot::Sender<()>>,
}

/// Keeps a call cancellable while it runs: registered in the legacy session's in-flight table
/// (removed on drop), or, without a session, holding the cancel sender so it never fires.
struct CallTracker {
    session: Option<(Arc<Session>, String)>,
    _unused_cancel: Option<oneshot::Sender<()>>,
}

impl Drop for CallTracker {
    fn drop(&mut self) {
        if let Some((session, id)) = &self.session {
            session.untrack_call(id);
        }
    }
}

/// Drives a call from its first upstream event to a reply.
async fn run(
    ctx: Ctx,
    events: Events,
    upstream_cancel: Option<oneshot::Sender<()>>,
) -> Result<Reply, ProxyError> {
    let mut flow = Flow {
        events,
        upstream_cancel,
    };
    // A legacy client may cancel with notifications/cancelled: the session drops the sender.
    let (client_cancel_tx, mut client_cancelled) = oneshot::channel::<()>();
    let tracker = match ctx.session.clone() {
        Some(session) => {
            let id = ctx
                .client_id
                .as_ref()
                .map(|raw| raw.get().to_owned())
                .unwrap_or_default();
            session.track_call(id.clone(), client_cancel_tx);
            CallTracker {
                session: Some((session, id)),
                _unused_cancel: None,
            }
        }
        None => CallTracker {
            session: None,
            _unused_cancel: Some(client_cancel_tx),
        },
    };

    if can_stream(&ctx) && resumable(&ctx) {
        // Answer at once with the resumable stream (its priming event gives the client an id
        // to resume from), and follow the call into the session's log.
        let session = ctx
            .session
            .clone()
            .expect("resumable streams need a session");
        let (stream, log) = session.streams.open();
        let writer = log.clone();
        tokio::spawn(async move {
            let _tracker = tracker;
            let first = tokio::select! {
                event = flow.events.recv() => event,
                _ = &mut client_cancelled => None,
                error = ctx.killed() => {
                    writer.finish(ctx.error(&error));
                    return;
                }
            };
            match first {
                Some(first) => {
                    drive(
                        ctx,
                        first,
                        false,
                        flow,
                        Sink::Log(writer.clone()),
                        client_cancelled,
                    )
                    .await;
                }
                None => writer.finish(ctx.error(&ctx.ended())),
            }
            // A cancelled or overflowing call ends its log too, so readers stop waiting.
            writer.abandon();
        });
        return Ok(Reply::Resumable {
            session,
            stream,
            log,
        });
    }
    // Questions that come before anything else are decided here: refused ones are answered
    // upstream at once, so that a call whose only question was refused still answers as JSON.
    let can_ask = ctx.face.era == Era::Modern || (ctx.session.is_some() && can_stream(&ctx));
    let first = loop {
        let event = tokio::select! {
            event = flow.events.recv() => event.ok_or_else(|| ctx.ended())?,
            _ = &mut client_cancelled => return Err(cancelled()),
            error = ctx.killed() => return Err(error), // dropping the flow cancels upstream
        };
        match event {
            UpstreamEvent::Request { request, reply } => {
                match screen_question(&ctx, request, can_ask) {
                    Ok(request) => break UpstreamEvent::Request { request, reply },
                    Err(refusal) => {
                        let _ = reply.send(refusal);
                    }
                }
            }
            event => break event,
        }
    };
    match first {
        UpstreamEvent::Response(response)
            if !(needs_input_rounds(&ctx, &response) && can_stream(&ctx)) =>
        {
            learn_tool_schemas(&ctx, &response);
            Ok(Reply::ok(final_response(&ctx, response)))
        }
        UpstreamEvent::Request { request, reply } if ctx.face.era == Era::Modern => {
            Ok(Reply::ok(hold(&ctx, flow, request, reply)))
        }
        first if can_stream(&ctx) => {
            let (tx, rx) = mpsc::channel(STREAM_BUFFER);
            tokio::spawn(async move {
                let _tracker = tracker;
                drive(ctx, first, true, flow, Sink::Stream(tx), client_cancelled).await;
            });
            Ok(Reply::Stream(rx))
        }
        first => {
            let last = drive(ctx, first, true, flow, Sink::Collect, client_cancelled).await;
            drop(tracker);
            last.map(Reply::ok).ok_or_else(cancelled)
        }
    }
}

/// Remembers header-mirrored tool schemas from a `tools/list` answer.
fn learn_tool_schemas(ctx: &Ctx, response: &Envelope) {
    if ctx.method == "tools/list" {
        ctx.gateway.tool_schemas.observe_list(&ctx.server, response);
    }
}

/// The upstream's final response adapted for the client, under the id of the request being
/// answered: a resumed held call's upstream exchange still carries the id of the round that
/// started it, but the client's retry has a new id.
fn final_response(ctx: &Ctx, response: Envelope) -> Envelope {
    ctx.span.phase("scan.response"); // the upstream's part ends with its answer
    let response = filter_list(ctx, response);
    // Scan phase on the way back: results, resource contents, prompts (block, redact, flag);
    // the findings go to the call's outcome record.
    let (response, report) = super::scanning::screen_response(
        &ctx.gateway,
        &ctx.server,
        &ctx.method,
        &ctx.original,
        response,
    );
    ctx.findings.add(report.to_audit());
    ctx.span.end_phase();
    let mut response = adapt::response(&ctx.face, &ctx.method, response);
    if let Some(id) = &ctx.client_id {
        response.set_id(id.clone());
    }
    response
}

/// A list answer on the transparent route shows only what the caller may use (policy).
fn filter_list(ctx: &Ctx, mut response: Envelope) -> Envelope {
    if !matches!(
        ctx.method.as_str(),
        "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list"
    ) {
        return response;
    }
    let Some(mut result) = response.member("result").and_then(RawObject::parse) else {
        return response;
    };
    let policy = ctx.gateway.runtime().config.policy.clone();
    super::policy::filter_list_result(
        &policy,
        &ctx.principal,
        &ctx.method,
        &ctx.server,
        &mut result,
    );
    // Tool metadata: poisoned, changed (rug pull) and unapproved new tools are left out.
    super::scanning::screen_list_result(&ctx.gateway, &ctx.server, &ctx.method, &mut result);
    // Kill switches and the caller's task token scope.
    super::control::screen_list_result(
        &ctx.gateway,
        &ctx.principal,
        &ctx.server,
        &ctx.method,
        &mut result,
    );
    response.set_member("result", result.to_raw());
    response
}

/// Decides a server→client request (`sampling/createMessage`, `elicitation/create`,
/// `roots/list`, …) of this call: Ok with the request to relay (spans the scanners redact
/// masked in place), or Err with the error answer for the upstream. In order: the policy's
/// method-level rules, the client's declared capability, whether the client can be asked on
/// this answer at all (`can_ask`), then the scanners (injection, PII, secrets). Either way the
/// request leaves one audit record ([`super::audit`]) with the scanners' findings.
fn screen_question(ctx: &Ctx, request: Envelope, can_ask: bool) -> Result<Envelope, Envelope> {
    let method = request.method().unwrap_or_default().to_owned();
    let policy = ctx.gateway.runtime().config.policy.clone();
    let allowed =
        super::policy::authorize_server_request(&policy, &ctx.principal, &ctx.server, &method)
            .and_then(|rule| {
                if !declared(&ctx.caller, &request) {
                    return Err(refusal(
                        &method,
                        "the client did not declare the capability it needs",
                    ));
                }
                if !can_ask {
                    return Err(refusal(
                        &method,
                        "the client accepts only JSON responses, so it cannot be asked",
                    ));
                }
                Ok(rule)
            });
    let rule = match allowed {
        Ok(rule) => rule,
        Err(error) => {
            let answer = error.to_envelope(request.id());
            audit_question(ctx, &request, Err(&answer), Vec::new());
            return Err(answer);
        }
    };
    let (screened, report) =
        super::scanning::screen_server_request(&ctx.gateway, &ctx.server, &request);
    match screened {
        Ok(redacted) => {
            let request = redacted.unwrap_or(request);
            audit_question(ctx, &request, Ok(rule), report.to_audit());
            Ok(request)
        }
        Err(error) => {
            let answer = error.to_envelope(request.id());
            audit_question(ctx, &request, Err(&answer), report.to_audit());
            Err(answer)
        }
    }
}

/// The audit record of a server→client request: relayed under a policy rule, or refused with
/// this answer to the upstream.
fn audit_question(
    ctx: &Ctx,
    request: &Envelope,
    fate: Result<Option<String>, &Envelope>,
    findings: Vec<portcullis_audit::Finding>,
) {
    let session = ctx.session.as_ref().map(|s| &*s.id);
    let (trail, principal, server) = (&ctx.gateway.audit, &ctx.principal, ctx.server.as_str());
    match fate {
        Ok(rule) => super::audit::server_request_relayed(
            trail, principal, session, server, request, rule, findings,
        ),
        Err(answer) => super::audit::server_request_refused(
            trail, principal, session, server, request, answer, findings,
        ),
    }
}

/// Legacy sessions at 2025-11-25 get resumable streams (priming event, event ids, replay).
fn resumable(ctx: &Ctx) -> bool {
    ctx.session.is_some() && ctx.face.era == Era::Legacy && &*ctx.face.version >= "2025-11-25"
}

fn can_stream(ctx: &Ctx) -> bool {
    ctx.face.accepts_sse
}

fn cancelled() -> ProxyError {
    ProxyError::client(super::errors::INVALID_REQUEST, "call cancelled")
}

/// Where the messages of a call go.
enum Sink {
    /// An SSE stream to the client.
    Stream(mpsc::Sender<Envelope>),
    /// A session's replayable log; the client may come and go (legacy: no cancellation).
    Log(Arc<crate::stream_log::StreamLog>),
    /// A JSON-only client: interim messages are dropped, the final one returned.
    Collect,
}

impl Sink {
    /// Sends an interim message; false when the client has gone.
    async fn interim(&self, message: Envelope) -> bool {
        match self {
            Sink::Stream(tx) => tx.send(message).await.is_ok(),
            Sink::Log(log) => log.push(message),
            Sink::Collect => true,
        }
    }

    /// Can the client be asked questions (server→client requests) on this sink?
    fn can_ask(&self) -> bool {
        !matches!(self, Sink::Collect)
    }

    /// Delivers the final message.
    async fn finish(self, message: Envelope) -> Option<Envelope> {
        match self {
            Sink::Stream(tx) => {
                let _ = tx.send(message).await;
                None
            }
            Sink::Log(log) => {
                log.finish(message);
                None
            }
            Sink::Collect => Some(message),
        }
    }

    async fn closed(&self) {
        match self {
            Sink::Stream(tx) => tx.closed().await,
            Sink::Log(_) | Sink::Collect => std::future::pending().await,
        }
    }
}

/// The event loop of one call. Returns the final message for [`Sink::Collect`].
/// `first_screened`: `first` is a question [`screen_question`] already let through.
async fn drive(
    ctx: Ctx,
    first: UpstreamEvent,
    first_screened: bool,
    mut flow: Flow,
    sink: Sink,
    mut client_cancelled: oneshot::Receiver<()>,
) -> Option<Envelope> {
    let mut next = Some(first);
    let mut prescreened = first_screened;
    let mut rounds = 0;
    let can_ask = ctx.face.era == Era::Modern || (ctx.session.is_some() && sink.can_ask());
    loop {
        let screened = std::mem::take(&mut prescreened);
        let event = match next.take() {
            Some(event) => event,
            None => tokio::select! {
                event = flow.events.recv() => match event {
                    Some(event) => event,
                    None => return sink.finish(ctx.error(&ctx.ended())).await,
                },
                _ = &mut client_cancelled => return None,
                _ = sink.closed() => return None, // client went away: dropping the flow cancels upstream
                error = ctx.killed() => return sink.finish(ctx.error(&error)).await,
            },
        };
        match event {
            UpstreamEvent::Response(response)
                if needs_input_rounds(&ctx, &response) && sink.can_ask() =>
            {
                rounds += 1;
                match input_round(&ctx, &response, &sink, rounds).await {
                    Ok(retried) => flow = retried,
                    Err(error) => return sink.finish(ctx.error(&error)).await,
                }
            }
            UpstreamEvent::Response(response) => {
                learn_tool_schemas(&ctx, &response);
                return sink.finish(final_response(&ctx, response)).await;
            }
            UpstreamEvent::Notification(notification) => {
                if let Some(message) = adapt::notification(&ctx.route, &ctx.server, notification)
                    && !sink.interim(message).await
                {
                    return None;
                }
            }
            UpstreamEvent::Request { request, reply } => {
                let request = if screened {
                    request
                } else {
                    match screen_question(&ctx, request, can_ask) {
                        Ok(request) => request,
                        Err(refusal) => {
                            let _ = reply.send(refusal);
                            continue;
                        }
                    }
                };
                match (&sink, ctx.face.era, &ctx.session) {
                    (_, Era::Modern, _) => {
                        let message = hold(&ctx, flow, request, reply);
                        return sink.finish(message).await;
                    }
                    (sink, Era::Legacy, Some(session)) if sink.can_ask() => {
                        let (question, answer) = ask_client(&ctx, session, request);
                        let timeout = ctx.timeout;
                        tokio::spawn(async move {
                            if let Ok(Ok(answer)) = tokio::time::timeout(timeout, answer).await {
                                let _ = reply.send(answer);
                            } // otherwise dropping `reply` makes the connector answer with an error
                        });
                        if !sink.interim(question).await {
                            return None;
                        }
                    }
                    _ => {
                        // Not reached: `screen_question` refuses what cannot be asked.
                        let method = request.method().unwrap_or_default();
                        let error = refusal(method, "the client cannot be asked on this answer");
                        let _ = reply.send(error.to_envelope(request.id()));
                    }
                }
            }
        }
    }
}

/// The client capability a server→client request needs; None for requests any client answers.
fn required_capability(method: &str) -> Option<&'static str> {
    match method {
        "sampling/createMessage" => Some("sampling"),
        "elicitation/create" => Some("elicitation"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}

fn declared(caller: &Caller, request: &Envelope) -> bool {
    required_capability(request.method().unwrap_or_default())
        .is_none_or(|cap| caller.capabilities.get(cap).is_some())
}

/// Registers a question with the legacy session; returns it with the gateway's id, and the
/// receiver of the client's answer (recorded in the audit trail on its way).
fn ask_client(
    ctx: &Ctx,
    session: &Arc<Session>,
    mut request: Envelope,
) -> (Envelope, oneshot::Receiver<Envelope>) {
    let (answer_tx, answer_rx) = oneshot::channel();
    let id = session.register_client_request(answer_tx);
    let (trail, principal) = (&ctx.gateway.audit, &ctx.principal);
    let record = super::audit::QuestionRecord::new(
        trail,
        principal,
        Some(&*session.id),
        &ctx.server,
        &request,
    );
    request.set_id(id);
    (request, record.follow(answer_rx))
}

/// The error answering a server→client request (`method`) the gateway will not forward.
fn refusal(method: &str, why: &str) -> ProxyError {
    ProxyError::client(
        METHOD_NOT_FOUND,
        format!("{method} refused by the gateway: {why}"),
    )
}

/// Holds the call for a modern client and returns the `input_required` result to send it.
fn hold(ctx: &Ctx, flow: Flow, request: Envelope, reply: oneshot::Sender<Envelope>) -> Envelope {
    let record = super::audit::QuestionRecord::new(
        &ctx.gateway.audit,
        &ctx.principal,
        ctx.session.as_ref().map(|s| &*s.id),
        &ctx.server,
        &request,
    );
    let reply = record.relay_to(reply);
    let key = "q1".to_owned();
    let question = serde_json::json!({
        "method": request.method().unwrap_or_default(),
        "params": request.params().map(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).unwrap_or_default()).unwrap_or_else(|| serde_json::json!({})),
    });
    let questions = HashMap::from([(key.clone(), reply)]);
    let binding = (ctx.method.clone(), name_or_uri(&ctx.original));
    let held = HeldCall::new(
        ctx.owner(),
        binding,
        ctx.server.clone(),
        ctx.method.clone(),
        flow.events,
        flow.upstream_cancel,
        questions,
        ctx.timeout,
    );
    let max = ctx.gateway.runtime().config.limits.max_sessions;
    let handle = ctx.gateway.held.hold(held, max);
    let result = serde_json::json!({
        "resultType": "input_required",
        "inputRequests": { key: question },
        "requestState": handle,
    });
    Envelope::result(
        ctx.client_id.clone().unwrap_or_else(|| to_raw(&0)),
        to_raw(&result),
    )
}

/// `params.name` or `params.uri` of a request.
fn name_or_uri(message: &Envelope) -> Option<String> {
    let params = message.params().and_then(RawObject::parse)?;
    params.get_str("name").or_else(|| params.get_str("uri"))
}

/// Resumes a held call with the client's `inputResponses`.
async fn resume(
    call: &Call,
    entry: &Arc<CatalogEntry>,
    message: Envelope,
    method: &str,
    handle: &str,
    findings: LateFindings,
) -> Result<Reply, ProxyError> {
    let ctx = Ctx::new(call, entry, method, &message, findings);
    let binding = (method.to_owned(), name_or_uri(&message));
    let held = call
        .gateway
        .held
        .take(handle, &ctx.owner(), &binding)
        .map_err(|error| ProxyError::client(INVALID_PARAMS, error.to_string()))?;
    if held.server != entry.config.name {
        return Err(ProxyError::client(
            INVALID_PARAMS,
            "requestState belongs to another server",
        ));
    }
    let responses = message
        .params()
        .and_then(RawObject::parse)
        .and_then(|params| params.get_object("inputResponses"))
        .unwrap_or_default();
    for (key, reply) in held.questions {
        match responses.get(&key) {
            Some(answer) => {
                let _ = reply.send(Envelope::result(to_raw(&0), answer.to_owned()));
            }
            None => tracing::debug!(
                key,
                "held question left unanswered; the upstream gets an error"
            ),
        }
    }
    run(ctx, held.events, held.upstream_cancel).await
}

/// Does this response ask a legacy client for input the way only modern clients understand?
fn needs_input_rounds(ctx: &Ctx, response: &Envelope) -> bool {
    ctx.face.era == Era::Legacy
        && ctx.session.is_some()
        && response.kind() == Kind::Result
        && response
            .member("result")
            .and_then(RawObject::parse)
            .and_then(|r| r.get_str("resultType"))
            .as_deref()
            == Some("input_required")
}

/// Walks a legacy client through one `input_required` round of a modern upstream: asks each
/// input request as a server→client request, then retries the call upstream with the answers.
async fn input_round(
    ctx: &Ctx,
    response: &Envelope,
    sink: &Sink,
    round: usize,
) -> Result<Flow, ProxyError> {
    if round > MAX_INPUT_ROUNDS {
        return Err(ProxyError::upstream(
            UPSTREAM_UNAVAILABLE,
            format!(
                "upstream {} asked for input more than {MAX_INPUT_ROUNDS} times",
                ctx.server
            ),
        ));
    }
    let session = ctx.session.as_ref().expect("checked by needs_input_rounds");
    let result = response
        .member("result")
        .and_then(RawObject::parse)
        .unwrap_or_default();
    let requests = result.get_object("inputRequests").unwrap_or_default();
    let mut answers = RawObject::default();
    for key in requests.keys().map(str::to_owned).collect::<Vec<_>>() {
        let question = requests
            .get_object(&key)
            .ok_or_else(|| bad_input_request(&key))?;
        let method = question
            .get_str("method")
            .ok_or_else(|| bad_input_request(&key))?;
        let request = Envelope::request(
            to_raw(&0),
            &method,
            question.get("params").map(|raw| raw.to_owned()),
        );
        let request = match screen_question(ctx, request, true) {
            Ok(request) => request,
            Err(refusal) => {
                let error_value = refusal.member_value("error").unwrap_or_default();
                let code = error_value.get("code").and_then(serde_json::Value::as_i64);
                if code == Some(METHOD_NOT_FOUND) {
                    return Err(ProxyError::upstream(
                        super::errors::MISSING_CLIENT_CAPABILITY,
                        format!(
                            "upstream {} asked for {method}, which the client did not declare",
                            ctx.server
                        ),
                    ));
                }
                let message = error_value
                    .get("message")
                    .and_then(|m| m.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{method} refused by policy"));
                let error =
                    ProxyError::upstream(code.unwrap_or(super::errors::POLICY_DENIED), message);
                return Err(match error_value.get("data") {
                    Some(data) => error.with_data(data.clone()),
                    None => error,
                });
            }
        };
        let (question, answer) = ask_client(ctx, session, request);
        if !sink.interim(question).await {
            return Err(cancelled());
        }
        let answer = tokio::time::timeout(ctx.timeout, answer)
            .await
            .map_err(|_| {
                ProxyError::client(
                    super::errors::INVALID_REQUEST,
                    format!("the client did not answer {method} in time"),
                )
            })?
            .map_err(|_| cancelled())?;
        let value = answer.member("result").ok_or_else(|| {
            ProxyError::client(
                super::errors::INVALID_REQUEST,
                format!("the client declined {method}"),
            )
        })?;
        answers.set(&key, value.to_owned());
    }
    let mut params = ctx
        .original
        .params()
        .and_then(RawObject::parse)
        .unwrap_or_default();
    params.set("inputResponses", answers.to_raw());
    match result.get("requestState") {
        Some(state) => params.set("requestState", state.to_owned()),
        None => {
            params.remove("requestState");
        }
    }
    let mut retry = ctx.original.clone();
    retry.set_member("params", params.to_raw());
    let exchange = ctx.connector.request(&ctx.caller, retry).await?;
    Ok(Flow {
        events: exchange.events,
        upstream_cancel: exchange.cancel,
    })
}

fn bad_input_request(key: &str) -> ProxyError {
    ProxyError::upstream(
        UPSTREAM_UNAVAILABLE,
        format!("upstream sent a malformed input request {key:?}"),
    )
}
