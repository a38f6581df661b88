//! The legacy standalone GET stream: messages from upstreams that belong to no call
//! (list_changed, resources/updated, log messages), fanned out to the sessions that should see
//! them. A message from a per-caller upstream session goes only to that caller's session; one
//! from a shared upstream (stdio process, modern server) goes to every session on a route that
//! includes the server. Messages arriving while a session has no GET stream open are dropped,
//! as the transport allows, and so are those of a server that a kill switch stops (or that the
//! session's task token does not cover, or whose token was revoked) at the time they arrive:
//! a killed server's notifications stop at once on the aggregate stream, which goes on for the
//! other servers (streams of the killed agent, or on the killed server's own route, end:
//! `proxy::control::end_stream_on_kill`).

use std::sync::Arc;

use axum::response::Response;
use axum::response::sse::Event;
use futures::stream::select_all;
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;

use portcullis_core::envelope::Envelope;

use crate::proxy::adapt;
use crate::session::Session;
use crate::state::{Gateway, Runtime};

/// Opens the GET stream for a session; None when the session has too many streams open.
pub fn standalone_stream(
    gateway: &Gateway,
    runtime: &Arc<Runtime>,
    session: &Arc<Session>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Response> {
    let slot = session.open_stream(runtime.config.limits.max_streams_per_session)?;
    let merged = messages(gateway, runtime, session)
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
    gateway: &Gateway,
    runtime: &Runtime,
    session: &Session,
) -> impl Stream<Item = Envelope> + Send + Unpin + 'static {
    let servers: Vec<_> = crate::proxy::target::servers_for_route(runtime, &session.route);
    let kills = gateway.control.kills.subscribe();
    let streams = servers.into_iter().map(|entry| {
        let server = entry.config.name.clone();
        let route = session.route.clone();
        let key = session.id.clone();
        let principal = session.principal.clone();
        let kills = kills.clone();
        BroadcastStream::new(entry.connector.unsolicited()).filter_map(move |item| {
            let out = match item {
                Ok(_) if closed(&kills, &principal, &server) => None,
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

/// Is `server` closed to `principal` right now (kill switch, task token)?
fn closed(
    kills: &tokio::sync::watch::Receiver<Arc<portcullis_control::kill::KillSet>>,
    principal: &crate::auth::Principal,
    server: &str,
) -> bool {
    crate::proxy::control::server_closed(&kills.borrow(), principal, server)
}
