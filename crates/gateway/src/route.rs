//! Route: which catalog servers an endpoint exposes, and how names map onto them.
//!
//! `/mcp` is the aggregate: every catalog server, names namespaced as `{server}__{name}` and
//! resource URIs as `portcullis://{server}/{uri}`. `/mcp/{server}` is one server with its names
//! unchanged (a transparent governed route). Rules and records always name tools as
//! `{server}__{tool}` whichever route the call came in on.

use std::sync::Arc;

/// The endpoint a request arrived on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    Aggregate,
    Server(Arc<str>),
}

impl Route {
    /// The URL path of this endpoint.
    pub fn path(&self) -> String {
        match self {
            Route::Aggregate => "/mcp".to_owned(),
            Route::Server(name) => format!("/mcp/{name}"),
        }
    }
}
