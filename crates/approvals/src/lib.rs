//! Portcullis approval gates: calls that a rule marks `approve` are held until people decide.
//!
//! - [`model`]: the request, the caller, reviewers, verdicts, statuses;
//! - [`machine`]: the pure state machine (separation of duties, roles, two-person rule,
//!   deadlines), tested without IO;
//! - [`store`]: persistence in the control-plane store, SQLite or PostgreSQL, with atomic
//!   transitions (`UPDATE … WHERE status = 'pending'`) so that a decision taken on any replica
//!   wins exactly once;
//! - [`link`]: single-use, expiring review links bound to one request and verdict (stored as an
//!   HMAC of a random nonce);
//! - [`present`]: the Slack-compatible chat payload a reviewer sees.
//!
//! Holding the call, waking it, and the HTTP surfaces live in the gateway
//! (`portcullis_gateway::approval`); this crate knows nothing of HTTP or MCP.

pub mod link;
pub mod machine;
pub mod model;
pub mod present;
pub mod store;

pub use machine::{DecideError, Outcome};
pub use model::{
    Approval, Caller, Channel, DecisionRecord, NewApproval, Presentation, Reviewer, Role, Status,
    Verdict,
};
pub use store::{ApprovalStore, ApprovalStoreError, DecideFailure, LinkError};

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
