//! The legacy standalone GET stream: messages from upstreams that belong to no call
//! (list_changed, resources/updated, log messages), fanned out to the sessions that should see
//! them. A message from a per-caller upstream session goes only to that caller's session; one
//! from a shared upstream (stdio process, modern server) goes to every session on a route that
//! includes the server. Messages arriving while a session has no GET stream open are dropped,
//! as the transport allows.

use std::sync::Arc;

use axum::response::Response;
use axum::response::sse::Event;
use futures::stream::select_all;
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;

use portcullis_core::envelope::Envelope;

use crate::proxy::adapt;
use crate::session::Session;
use crate::state::Runtime;

/// Opens the GET stream for a session; None when the session has too many streams open.
pub fn standalone_stream(
    runtime: &Arc<Runtime>,
    session: &Arc<Session>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Response> {
    let slot = session.open_stream(runtime.config.limits.max_streams_per_session)?;
    let merged = messages(runtime, session)
        .take_until(shutdown.clone().cancelled_owned())
        .map(move |message| {
            let _slot = &slot; // the stream slot is held as long as the stream lives
            Ok::<_, std::convert::Infallible>(
                Event::default().data(String::from_utf8_lossy(&message.to_bytes())),
            )
        });
    Some(super::render::sse(merged))
}

/// The unsolicited messages meant for one session, adapted for its route: what the Streamable
/// HTTP GET stream and the legacy HTTP+SSE stream both carry.
pub fn messages(
    runtime: &Runtime,
    session: &Session,
) -> impl Stream<Item = Envelope> + Send + Unpin + 'static {
    let servers: Vec<_> = crate::proxy::target::servers_for_route(runtime, &session.route);
    let streams = servers.into_iter().map(|entry| {
        let server = entry.config.name.clone();
        let route = session.route.clone();
        let key = session.id.clone();
        BroadcastStream::new(entry.connector.unsolicited()).filter_map(move |item| {
            let out = match item {
                Ok(message) if message.caller_key.as_deref().is_none_or(|k| *k == *key) => {
                    adapt::notification(&route, &server, message.message)
                }
                Ok(_) => None,
                Err(lagged) => {
                    tracing::warn!(server, %lagged, "standalone stream fell behind; messages dropped");
                    None
                }
            };
            futures::future::ready(out)
        })
    });
    select_all(streams)
}
