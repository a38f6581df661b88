//! Route phase: which catalog server a request goes to, and the request as that server must see
//! it. On the aggregate the namespaced name or wrapped URI is turned back into the server's own
//! by editing exactly that one raw member.

use std::sync::Arc;

use portcullis_core::envelope::{Envelope, to_raw};
use portcullis_core::names;
use portcullis_core::rawobj::RawObject;

use super::errors::{INVALID_PARAMS, ProxyError, UNKNOWN_SERVER};
use super::{Call, not_routable};
use crate::route::Route;
use crate::state::CatalogEntry;

/// The server a request is for and the (possibly rewritten) request to send it.
pub fn resolve(
    call: &Call,
    message: Envelope,
) -> Result<(Arc<CatalogEntry>, Envelope), ProxyError> {
    match &call.route {
        Route::Server(name) => {
            let entry = call
                .runtime
                .server(name)
                .cloned()
                .ok_or_else(|| unknown_server(name))?;
            Ok((entry, message))
        }
        Route::Aggregate => resolve_aggregate(call, message),
    }
}

/// Every server reachable on the call's route, in catalog order.
pub fn servers_of(call: &Call) -> Vec<Arc<CatalogEntry>> {
    servers_for_route(&call.runtime, &call.route)
}

fn resolve_aggregate(
    call: &Call,
    mut message: Envelope,
) -> Result<(Arc<CatalogEntry>, Envelope), ProxyError> {
    let method = message.method().unwrap_or_default().to_owned();
    let mut params = message.params().and_then(RawObject::parse).ok_or_else(|| {
        ProxyError::client(
            INVALID_PARAMS,
            format!("{method}: params must be an object"),
        )
    })?;
    let server = match method.as_str() {
        "tools/call" | "prompts/get" => rename_member(&mut params, "name", split_name)?,
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            rename_member(&mut params, "uri", names::unwrap_uri)?
        }
        "completion/complete" => {
            let mut reference = params.get_object("ref").ok_or_else(|| {
                ProxyError::client(
                    INVALID_PARAMS,
                    "completion/complete: params.ref must be an object",
                )
            })?;
            let server = match reference.get_str("type").as_deref() {
                Some("ref/prompt") => rename_member(&mut reference, "name", split_name)?,
                Some("ref/resource") => rename_member(&mut reference, "uri", names::unwrap_uri)?,
                _ => {
                    return Err(ProxyError::client(
                        INVALID_PARAMS,
                        "completion/complete: unknown params.ref.type",
                    ));
                }
            };
            params.set("ref", reference.to_raw());
            server
        }
        _ => return Err(not_routable(&method)),
    };
    let entry = call
        .runtime
        .server(&server)
        .cloned()
        .ok_or_else(|| unknown_server(&server))?;
    message.set_member("params", params.to_raw());
    Ok((entry, message))
}

fn split_name(name: &str) -> Option<(&str, &str)> {
    names::split(name)
}

/// Replaces `object[key]` (a string) by its un-namespaced form; returns the server name.
fn rename_member(
    object: &mut RawObject,
    key: &str,
    split: fn(&str) -> Option<(&str, &str)>,
) -> Result<String, ProxyError> {
    let value = object.get_str(key).ok_or_else(|| {
        ProxyError::client(INVALID_PARAMS, format!("params.{key} must be a string"))
    })?;
    let (server, original) = split(&value).ok_or_else(|| {
        ProxyError::client(
            UNKNOWN_SERVER,
            format!("{value:?} does not name a catalog server; on /mcp names look like server__name and URIs like portcullis://server/uri"),
        )
    })?;
    let server = server.to_owned();
    object.set(key, to_raw(original));
    Ok(server)
}

fn unknown_server(name: &str) -> ProxyError {
    ProxyError::client(
        UNKNOWN_SERVER,
        format!("no catalog server named {name:?} is reachable here"),
    )
}

/// Every server reachable on a route, in catalog order.
pub fn servers_for_route(runtime: &crate::state::Runtime, route: &Route) -> Vec<Arc<CatalogEntry>> {
    match route {
        Route::Server(name) => runtime.server(name).cloned().into_iter().collect(),
        Route::Aggregate => runtime.catalog.values().cloned().collect(),
    }
}
