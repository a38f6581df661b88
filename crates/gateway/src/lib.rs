//! The edges of the Portcullis gateway: everything that does IO, around the pure core.
//!
//! - [`edge`]: the HTTP listener: checks, authentication challenge, Streamable HTTP transport.
//! - [`audit_trail`]: this replica's audit chain writer, trace context, the spool.
//! - [`metrics`]: Prometheus metrics (`/metrics`) and their registration point.
//! - [`admin`]: the authenticated admin API at `/admin/api/v1` (kill switches, task tokens).
//! - [`auth`]: credentials → [`auth::Principal`].
//! - [`session`]: gateway-minted legacy sessions bound to their principal.
//! - [`route`]: aggregate `/mcp` vs `/mcp/{server}`.
//! - [`proxy`]: the phases after authentication: route, forward, adapt.
//! - [`upstream`]: connectors to catalog servers (stdio supervisor, Streamable HTTP, HTTP+SSE).
//! - [`stream_log`]: replayable POST streams for resumption with `Last-Event-ID`.
//! - [`state`]: the running config, catalog and sessions; hot reload.
//! - [`serve`]: listener lifecycle; [`event_loops`]: the thread-per-core loops that serve it.
//! - [`tool_schemas`]: tool schemas with header-mirrored parameters, learned from lists.
//! - [`scanning`]: content scanners on the data plane, tool metadata poisoning, tool pins.
//! - [`approval`]: approval gates: held calls, reviewers' routes, the chat webhook.
//! - [`telemetry`]: OpenTelemetry spans of governed requests, exported over OTLP/HTTP.

pub mod admin;
pub mod approval;
pub mod audit_trail;
pub mod auth;
pub mod edge;
pub mod event_loops;
pub mod export;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod scanning;
pub mod serve;
pub mod session;
pub mod state;
pub mod stream_log;
pub mod telemetry;
pub mod tls;
pub mod tool_schemas;
pub mod upstream;
