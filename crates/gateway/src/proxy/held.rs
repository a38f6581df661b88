//! Calls held across a modern client's MRTR rounds.
//!
//! When a legacy upstream asks a server→client question (sampling, elicitation, roots) during a
//! modern client's call, the modern client cannot receive requests. The gateway keeps the
//! upstream call open, answers the client with an `input_required` result whose `requestState`
//! is a gateway handle, and resumes the same upstream call when the client retries with
//! `inputResponses`. Handles are random, bound to the principal and to the request they answer
//! (method and name/URI), single-use per round, and expire with the call's timeout; an expired or
//! abandoned held call is dropped, which cancels it upstream.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_core::envelope::Envelope;
use rand::RngCore;
use tokio::sync::oneshot;

use crate::upstream::Events;

/// Prefix of gateway-minted `requestState` values; anything else belongs to the upstream.
pub const HANDLE_PREFIX: &str = "pcx1.";

/// One upstream call waiting for a modern client's `inputResponses`.
pub struct HeldCall {
    /// Who may resume it (credential id and agent).
    pub owner: (String, String),
    /// The request it answers: method and `params.name`/`params.uri` as the client sent them.
    pub binding: (String, Option<String>),
    pub server: String,
    /// The rest of the upstream call.
    pub events: Events,
    /// Dropped when the held call is dropped: cancels the call upstream.
    pub upstream_cancel: Option<oneshot::Sender<()>>,
    /// Upstream questions waiting for an answer, by the key used in `inputRequests`.
    pub questions: HashMap<String, oneshot::Sender<Envelope>>,
    /// The adapted method of the original call, for result adaptation on resume.
    pub method: String,
    expires: Instant,
}

impl HeldCall {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        owner: (String, String),
        binding: (String, Option<String>),
        server: String,
        method: String,
        mut events: Events,
        upstream_cancel: Option<oneshot::Sender<()>>,
        questions: HashMap<String, oneshot::Sender<Envelope>>,
        ttl: Duration,
    ) -> HeldCall {
        // Nobody awaits the events while the call is held: its upstream work must go on alone.
        events.detach();
        HeldCall {
            owner,
            binding,
            server,
            events,
            upstream_cancel,
            questions,
            method,
            expires: Instant::now() + ttl,
        }
    }
}

/// Why a `requestState` handle could not be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error(
        "requestState is unknown, expired, already used, or belongs to another caller or request"
    )]
    Unknown,
}

/// Held calls by handle.
#[derive(Default)]
pub struct HeldCalls {
    calls: Mutex<HashMap<String, HeldCall>>,
}

impl HeldCalls {
    /// Stores a held call and returns its handle. Expired calls are dropped on the way; when
    /// `max` calls are held already, the oldest-expiring one is dropped (and so cancelled).
    pub fn hold(&self, call: HeldCall, max: usize) -> String {
        let mut bytes = [0u8; 18];
        rand::rng().fill_bytes(&mut bytes);
        let handle = format!("{HANDLE_PREFIX}{}", hex::encode(bytes));
        let mut calls = self.calls.lock().expect("poisoned");
        let now = Instant::now();
        calls.retain(|_, held| held.expires > now);
        if calls.len() >= max
            && let Some(oldest) = calls
                .iter()
                .min_by_key(|(_, held)| held.expires)
                .map(|(k, _)| k.clone())
        {
            calls.remove(&oldest);
        }
        calls.insert(handle.clone(), call);
        handle
    }

    /// Takes the held call for `handle` if `owner` and `binding` match.
    pub fn take(
        &self,
        handle: &str,
        owner: &(String, String),
        binding: &(String, Option<String>),
    ) -> Result<HeldCall, ResumeError> {
        let mut calls = self.calls.lock().expect("poisoned");
        let held = calls.get(handle).ok_or(ResumeError::Unknown)?;
        if &held.owner != owner || &held.binding != binding || held.expires <= Instant::now() {
            return Err(ResumeError::Unknown);
        }
        calls.remove(handle).ok_or(ResumeError::Unknown)
    }

    pub fn len(&self) -> usize {
        self.calls.lock().expect("poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(ttl: Duration) -> HeldCall {
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        HeldCall::new(
            ("key:a".into(), "alice".into()),
            ("tools/call".into(), Some("fx__sample".into())),
            "fx".into(),
            "tools/call".into(),
            Events::new(rx),
            None,
            HashMap::new(),
            ttl,
        )
    }

    #[test]
    fn request_state_replayed_by_another_principal_bypass() {
        let table = HeldCalls::default();
        let handle = table.hold(held(Duration::from_secs(60)), 10);
        assert!(handle.starts_with(HANDLE_PREFIX));
        let mallory = ("key:m".to_owned(), "mallory".to_owned());
        let binding = ("tools/call".to_owned(), Some("fx__sample".to_owned()));
        assert_eq!(
            table.take(&handle, &mallory, &binding).err(),
            Some(ResumeError::Unknown)
        );
        let other_tool = ("tools/call".to_owned(), Some("fx__other".to_owned()));
        let alice = ("key:a".to_owned(), "alice".to_owned());
        assert_eq!(
            table.take(&handle, &alice, &other_tool).err(),
            Some(ResumeError::Unknown)
        );
        assert!(table.take(&handle, &alice, &binding).is_ok());
        // Single use.
        assert_eq!(
            table.take(&handle, &alice, &binding).err(),
            Some(ResumeError::Unknown)
        );
    }

    #[test]
    fn expired_and_excess_calls_are_dropped() {
        let table = HeldCalls::default();
        let alice = ("key:a".to_owned(), "alice".to_owned());
        let binding = ("tools/call".to_owned(), Some("fx__sample".to_owned()));
        let expired = table.hold(held(Duration::ZERO), 10);
        assert_eq!(
            table.take(&expired, &alice, &binding).err(),
            Some(ResumeError::Unknown)
        );
        table.hold(held(Duration::from_secs(60)), 2);
        table.hold(held(Duration::from_secs(60)), 2);
        table.hold(held(Duration::from_secs(60)), 2);
        assert_eq!(table.len(), 2);
    }
}
