//! Downstream legacy sessions: minted by the gateway at `initialize`, bound to the principal that
//! created them, bounded in number, reaped when idle.
//!
//! Architecture Invariant: a session id never authenticates anyone. Every request is
//! authenticated first; a session presented by another principal is answered 404 exactly like an
//! unknown one, so ids cannot be probed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_core::envelope::{Envelope, to_raw};
use rand::RngCore;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::auth::Principal;
use crate::route::Route;
use crate::upstream::Caller;

/// One downstream legacy session.
#[derive(Debug)]
pub struct Session {
    pub id: Arc<str>,
    pub principal: Principal,
    /// The endpoint it was opened on; requests on another endpoint are refused.
    pub route: Route,
    /// What upstream connectors see: the client's negotiated version and capabilities.
    pub caller: Caller,
    /// Answers the client owes to server→client requests, keyed by the id the gateway gave them.
    pending_client_requests: Mutex<HashMap<String, oneshot::Sender<Envelope>>>,
    next_client_request: AtomicU64,
    /// Calls in flight, keyed by the client's raw id; dropping the sender cancels the call.
    in_flight: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// Open SSE streams (GET and POST); bounded by `limits.max_streams_per_session`.
    open_streams: AtomicU64,
    /// Replayable logs of this session's POST streams (2025-11-25 resumability).
    pub streams: crate::stream_log::StreamLogs,
    /// Sender into the legacy HTTP+SSE transport's single stream, when the session uses it.
    pub sse_outbox: Mutex<Option<mpsc::Sender<Envelope>>>,
    last_seen: Mutex<Instant>,
}

impl Session {
    /// Registers a server→client request forwarded to this client; returns the raw JSON id to
    /// send it with (a string no client-chosen id can collide with, since only we choose these).
    pub fn register_client_request(&self, reply: oneshot::Sender<Envelope>) -> Box<RawValue> {
        let n = self.next_client_request.fetch_add(1, Ordering::Relaxed);
        let id = to_raw(&format!("pc-{n}"));
        self.pending_client_requests
            .lock()
            .expect("poisoned")
            .insert(id.get().to_owned(), reply);
        id
    }

    /// Forgets a server→client request that will not be answered (its call ended).
    pub fn forget_client_request(&self, id_key: &str) {
        self.pending_client_requests
            .lock()
            .expect("poisoned")
            .remove(id_key);
    }

    /// Delivers the client's answer to a server→client request, keyed by the raw JSON text of
    /// its id. False when nothing waits for it.
    pub fn answer_client_request(&self, id_key: &str, answer: Envelope) -> bool {
        let waiting = self
            .pending_client_requests
            .lock()
            .expect("poisoned")
            .remove(id_key);
        match waiting {
            Some(sender) => sender.send(answer).is_ok(),
            None => false,
        }
    }

    /// Remembers a call in flight so `notifications/cancelled` can end it.
    pub fn track_call(&self, id_key: String, cancel: oneshot::Sender<()>) {
        self.in_flight
            .lock()
            .expect("poisoned")
            .insert(id_key, cancel);
    }

    pub fn untrack_call(&self, id_key: &str) {
        self.in_flight.lock().expect("poisoned").remove(id_key);
    }

    /// Cancels a call in flight (drops its cancel handle). False when unknown.
    pub fn cancel_call(&self, id_key: &str) -> bool {
        self.in_flight
            .lock()
            .expect("poisoned")
            .remove(id_key)
            .is_some()
    }

    /// Reserves a stream slot; None when the session already has `max` open.
    pub fn open_stream(self: &Arc<Self>, max: usize) -> Option<StreamSlot> {
        let previous = self.open_streams.fetch_add(1, Ordering::AcqRel);
        if previous as usize >= max {
            self.open_streams.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(StreamSlot {
            session: self.clone(),
        })
    }

    fn touch(&self) {
        *self.last_seen.lock().expect("poisoned") = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_seen.lock().expect("poisoned").elapsed()
    }
}

/// Holds one of a session's stream slots; released on drop.
#[derive(Debug)]
pub struct StreamSlot {
    session: Arc<Session>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.session.open_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a session could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("too many open sessions; try again later")]
    TooMany,
    #[error("unknown or expired session; initialize a new one")]
    NotFound,
}

/// All live sessions.
#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
}

/// What a new session is made of.
#[derive(Debug)]
pub struct NewSession {
    pub principal: Principal,
    pub route: Route,
    pub protocol_version: Arc<str>,
    pub capabilities: Value,
    pub client_info: Option<Value>,
}

impl SessionTable {
    /// Mints a session with a random 128-bit id.
    pub fn create(
        &self,
        new: NewSession,
        max_sessions: usize,
    ) -> Result<Arc<Session>, SessionError> {
        let mut sessions = self.sessions.lock().expect("poisoned");
        if sessions.len() >= max_sessions {
            return Err(SessionError::TooMany);
        }
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let id: Arc<str> = hex::encode(bytes).into();
        let session = Arc::new(Session {
            id: id.clone(),
            principal: new.principal,
            route: new.route,
            caller: Caller {
                key: id.clone(),
                protocol_version: new.protocol_version,
                capabilities: Arc::new(new.capabilities),
                client_info: new.client_info.map(Arc::new),
            },
            pending_client_requests: Mutex::default(),
            next_client_request: AtomicU64::new(1),
            in_flight: Mutex::default(),
            open_streams: AtomicU64::new(0),
            streams: Default::default(),
            sse_outbox: Mutex::new(None),
            last_seen: Mutex::new(Instant::now()),
        });
        sessions.insert(id, session.clone());
        Ok(session)
    }

    /// Finds a session for this principal on this route. Another principal's session, or one
    /// opened on another route, is reported as not found.
    pub fn get(
        &self,
        id: &str,
        principal: &Principal,
        route: &Route,
    ) -> Result<Arc<Session>, SessionError> {
        let sessions = self.sessions.lock().expect("poisoned");
        let session = sessions.get(id).ok_or(SessionError::NotFound)?;
        if session.principal.agent != principal.agent
            || session.principal.credential_id != principal.credential_id
            || &session.route != route
        {
            return Err(SessionError::NotFound);
        }
        session.touch();
        Ok(session.clone())
    }

    /// Ends a session; returns it so upstream state can be released.
    pub fn remove(
        &self,
        id: &str,
        principal: &Principal,
        route: &Route,
    ) -> Result<Arc<Session>, SessionError> {
        self.get(id, principal, route)?;
        self.sessions
            .lock()
            .expect("poisoned")
            .remove(id)
            .ok_or(SessionError::NotFound)
    }

    /// Removes sessions idle for longer than `idle`, returning them.
    pub fn reap_idle(&self, idle: Duration) -> Vec<Arc<Session>> {
        let mut sessions = self.sessions.lock().expect("poisoned");
        let expired: Vec<Arc<str>> = sessions
            .iter()
            .filter(|(_, s)| s.idle_for() > idle)
            .map(|(k, _)| k.clone())
            .collect();
        expired.iter().filter_map(|k| sessions.remove(k)).collect()
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().expect("poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Is the session with this id still live (not ended, not reaped)?
    pub fn contains(&self, id: &str) -> bool {
        self.sessions.lock().expect("poisoned").contains_key(id)
    }

    /// Every live session (for fan-out of unsolicited notifications).
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.sessions
            .lock()
            .expect("poisoned")
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMethod;

    fn principal(agent: &str) -> Principal {
        Principal {
            agent: agent.into(),
            user: None,
            method: AuthMethod::ApiKey,
            credential_id: format!("key:{agent}").into(),
            roles: std::sync::Arc::from([]),
            token_id: None,
            task: None,
        }
    }

    fn new_session(agent: &str) -> NewSession {
        NewSession {
            principal: principal(agent),
            route: Route::Aggregate,
            protocol_version: "2025-11-25".into(),
            capabilities: serde_json::json!({}),
            client_info: None,
        }
    }

    #[test]
    fn session_reused_by_another_principal_is_not_found() {
        let table = SessionTable::default();
        let session = table.create(new_session("alice"), 10).unwrap();
        assert!(
            table
                .get(&session.id, &principal("alice"), &Route::Aggregate)
                .is_ok()
        );
        assert_eq!(
            table
                .get(&session.id, &principal("mallory"), &Route::Aggregate)
                .unwrap_err(),
            SessionError::NotFound
        );
        assert_eq!(
            table
                .get(
                    &session.id,
                    &principal("alice"),
                    &Route::Server("time".into())
                )
                .unwrap_err(),
            SessionError::NotFound
        );
        assert_eq!(
            table
                .remove(&session.id, &principal("mallory"), &Route::Aggregate)
                .unwrap_err(),
            SessionError::NotFound
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn session_count_is_bounded_and_ids_are_random() {
        let table = SessionTable::default();
        let a = table.create(new_session("a"), 2).unwrap();
        let b = table.create(new_session("a"), 2).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
        assert_eq!(
            table.create(new_session("a"), 2).unwrap_err(),
            SessionError::TooMany
        );
    }

    #[test]
    fn stream_slots_are_bounded_and_released() {
        let table = SessionTable::default();
        let s = table.create(new_session("a"), 2).unwrap();
        let first = s.open_stream(1).unwrap();
        assert!(s.open_stream(1).is_none());
        drop(first);
        assert!(s.open_stream(1).is_some());
    }
}
