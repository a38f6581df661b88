//! The edges of the Portcullis gateway: everything that does IO, around the pure core.
//!
//! - [`edge`]: the HTTP listener: checks, authentication challenge, Streamable HTTP transport.
//! - [`auth`]: credentials → [`auth::Principal`].
//! - [`session`]: gateway-minted legacy sessions bound to their principal.
//! - [`route`]: aggregate `/mcp` vs `/mcp/{server}`.
//! - [`proxy`]: the phases after authentication: route, forward, adapt.
//! - [`upstream`]: connectors to catalog servers (stdio supervisor, Streamable HTTP, HTTP+SSE).
//! - [`stream_log`]: replayable POST streams for resumption with `Last-Event-ID`.
//! - [`state`]: the running config, catalog and sessions; hot reload.
//! - [`serve`]: listener lifecycle.
//! - [`tool_schemas`]: tool schemas with header-mirrored parameters, learned from lists.

pub mod auth;
pub mod edge;
pub mod proxy;
pub mod route;
pub mod serve;
pub mod session;
pub mod state;
pub mod stream_log;
pub mod tool_schemas;
pub mod upstream;
