//! Upstream connectors: how the gateway talks to each catalog server.
//!
//! A [`Connector`] owns the transport to one catalog server (a supervised stdio child, or a
//! Streamable HTTP / legacy HTTP+SSE endpoint), detects that server's era once, keeps whatever
//! upstream sessions the era needs, and multiplexes many downstream callers onto it.
//!
//! Contract between the proxy (downstream side) and a connector:
//! - The proxy hands over a request [`Envelope`] exactly as authorized (aggregated names already
//!   un-namespaced) together with the [`Caller`] it is made for. The connector assigns its own
//!   upstream id (and remaps `params._meta.progressToken`), and restores the caller's id and token
//!   on everything it yields back, so the proxy never sees upstream ids.
//! - Era adaptation of the *request envelope* toward the upstream is the connector's job: a modern
//!   upstream gets `params._meta` with protocol version, the caller's own `clientCapabilities`
//!   (never widened) and client info; a legacy upstream gets an upstream session initialized with
//!   the caller's capabilities (HTTP: one upstream session per `Caller::key`; stdio: one shared
//!   session per process). Adaptation of *results toward the client* (resultType, caching hints,
//!   MRTR ⇄ server requests) is the proxy's job, because only it knows the client's era.
//! - [`Exchange::events`] yields notifications and server→client requests related to the call,
//!   then exactly one final [`UpstreamEvent::Response`], then ends. If the connector fails, the
//!   final event is a `Response` holding a JSON-RPC error naming the upstream (never a hang).
//!   Dropping the `Exchange` before the response cancels the call upstream
//!   (`notifications/cancelled` with the upstream id, or closing the modern HTTP stream).
//! - Messages not tied to a call (list_changed, resources/updated, requests on a legacy GET
//!   stream) arrive on [`Connector::unsolicited`].

pub mod events;
pub mod exchange;
pub mod http;
pub mod oauth;
pub mod stdio;

pub use events::Events;

use std::sync::Arc;

use portcullis_core::envelope::Envelope;
use portcullis_core::era::Era;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

/// The downstream party a call is made for, as the upstream must see it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Stable key of per-caller upstream state (a legacy upstream session is opened per key):
    /// the downstream session id for legacy clients, a digest of principal + capabilities for
    /// modern clients.
    pub key: Arc<str>,
    /// The protocol version the client speaks.
    pub protocol_version: Arc<str>,
    /// The client's declared capabilities (`{}` when none). Never widened by the gateway.
    pub capabilities: Arc<Value>,
    /// The client's `clientInfo`, if it sent one.
    pub client_info: Option<Arc<Value>>,
}

/// One message from the upstream during a call.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// A notification related to the call (progress with the caller's token restored, logging).
    Notification(Envelope),
    /// A server→client request (sampling, elicitation, roots, ping). The proxy answers with a
    /// result or error envelope on `reply` (any id: the connector puts the upstream's id back).
    /// Dropping `reply` makes the connector answer the upstream with an error.
    Request {
        request: Envelope,
        reply: oneshot::Sender<Envelope>,
    },
    /// The final response (result or error), with the caller's original id.
    Response(Envelope),
}

/// An in-flight call. Dropping it before the final response cancels the call upstream.
#[derive(Debug)]
pub struct Exchange {
    /// Events of this call, ending after the `Response`. Fed by the connector's reader task, or
    /// by the call's own work running inline while they are awaited ([`events::Events`]).
    pub events: events::Events,
    /// Dropped (or sent to) when the exchange is abandoned; the connector then cancels upstream.
    pub cancel: Option<oneshot::Sender<()>>,
}

/// A message from the upstream that belongs to no call.
#[derive(Debug, Clone)]
pub struct Unsolicited {
    /// The caller whose upstream session it came on; None for a shared session (stdio, modern).
    pub caller_key: Option<Arc<str>>,
    /// The notification (server→client requests outside a call are answered by the connector
    /// with an error and reported here only as a log line).
    pub message: Envelope,
}

/// Why a connector could not take a call at all. Failures after the call started are delivered
/// as the exchange's final error `Response` instead.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {server} is unavailable: {reason}")]
    Unavailable { server: String, reason: String },
    #[error("upstream {server} is overloaded: too many calls in flight")]
    Overloaded { server: String },
    #[error("upstream {server} does not speak a protocol version the gateway supports")]
    NoCommonVersion { server: String },
}

/// What a connector learned about its server when it connected.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub era: Era,
    /// Negotiated (legacy) or chosen (modern) version.
    pub protocol_version: String,
    /// The server's capabilities object as it declared them.
    pub capabilities: Value,
    pub server_info: Option<Value>,
    pub instructions: Option<String>,
}

/// One catalog server's connection. Implemented by [`stdio::StdioConnector`] and
/// [`http::HttpConnector`].
pub trait Connector: Send + Sync + 'static {
    /// Starts a call. Errors only when the call cannot be started.
    fn request(
        &self,
        caller: &Caller,
        request: Envelope,
    ) -> futures::future::BoxFuture<'_, Result<Exchange, UpstreamError>>;
    /// Forwards a client notification (e.g. `notifications/roots/list_changed`; cancellations
    /// are expressed by dropping the exchange instead).
    fn notify(
        &self,
        caller: &Caller,
        notification: Envelope,
    ) -> futures::future::BoxFuture<'_, Result<(), UpstreamError>>;
    /// Facts about the server (connects and detects the era on first use).
    fn facts(&self) -> futures::future::BoxFuture<'_, Result<ServerFacts, UpstreamError>>;
    /// Messages that belong to no call.
    fn unsolicited(&self) -> broadcast::Receiver<Unsolicited>;
    /// Ends upstream state kept for a caller (legacy HTTP session DELETE) when its downstream
    /// session ends.
    fn release(&self, caller_key: &str) -> futures::future::BoxFuture<'_, ()>;
    /// Stops the connector: children are terminated and reaped, sessions deleted.
    fn shutdown(&self) -> futures::future::BoxFuture<'_, ()>;
}
