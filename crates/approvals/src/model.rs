//! The nouns of an approval: who asked ([`Caller`]), who decides ([`Reviewer`]), what was asked
//! ([`NewApproval`], [`Approval`]), and how it ended ([`Status`], [`DecisionRecord`]).
//!
//! Times are Unix milliseconds (`i64`), as stored.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where an approval request stands. Only `Pending` ever changes, and only once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Held, waiting for reviewers.
    Pending,
    /// Enough distinct reviewers approved: the call runs (once, on the replica holding it).
    Approved,
    /// A reviewer denied it: the caller gets the reason.
    Denied,
    /// Nobody decided before the deadline: treated as a denial.
    Expired,
    /// The caller went away (disconnect, cancellation, session end) or the gateway holding the
    /// call stopped: never executed.
    Abandoned,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Abandoned => "abandoned",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Some(match text {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "expired" => Status::Expired,
            "abandoned" => Status::Abandoned,
            _ => return None,
        })
    }

    /// Every status has been reached for good except `Pending`.
    pub fn is_final(self) -> bool {
        self != Status::Pending
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Admin roles, in increasing power (mirrors the admin API's viewer < approver < admin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Approver,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "viewer" => Role::Viewer,
            "approver" => Role::Approver,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The principal that made the held call, as authentication established it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub agent: String,
    pub user: Option<String>,
    /// The stable, non-secret id of the credential the call came with.
    pub credential_id: String,
}

/// Someone deciding: the identity comes from the admin credential, never from the request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reviewer {
    /// The admin token's name, or the user of an OIDC admin principal.
    pub name: String,
    /// The stable, non-secret id of the reviewer's credential.
    pub credential_id: String,
    /// The highest admin role the credential grants.
    pub role: Role,
    /// The data-plane agent, when the reviewer authenticated as an agent with an admin role.
    pub agent: Option<String>,
}

impl Reviewer {
    /// Is this reviewer, by any of its names, the principal that made the call? The caller can
    /// never approve its own call: same credential, the same agent, a reviewer named like the
    /// calling agent, or like the end user the call was made for.
    pub fn is_caller(&self, caller: &Caller) -> bool {
        self.credential_id == caller.credential_id
            || self.name == caller.agent
            || self.agent.as_deref() == Some(caller.agent.as_str())
            || caller.user.as_deref() == Some(self.name.as_str())
    }
}

/// What a reviewer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }

    pub fn parse(text: &str) -> Option<Verdict> {
        match text {
            "approve" => Some(Verdict::Approve),
            "deny" => Some(Verdict::Deny),
            _ => None,
        }
    }
}

/// Which door a decision came through (recorded with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// `POST /admin/api/v1/approvals/{id}/approve|deny` (also what the CLI calls).
    Api,
    /// A single-use link from the chat webhook, redeemed with an admin credential.
    Link,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Api => "api",
            Channel::Link => "link",
        }
    }

    pub fn parse(text: &str) -> Option<Channel> {
        match text {
            "api" => Some(Channel::Api),
            "link" => Some(Channel::Link),
            _ => None,
        }
    }
}

/// One reviewer's decision, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub reviewer: String,
    pub credential_id: String,
    pub role: Role,
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub at_ms: i64,
    pub channel: Channel,
}

/// What the reviewer is shown. Arguments are already redacted (PII and secrets masked); the
/// tool's description and annotations are the ones its server last listed (untrusted hints).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Presentation {
    /// `tools/call` arguments with PII and secrets masked.
    pub arguments: Value,
    /// The tool's description as last listed by its server, when known.
    pub description: Option<String>,
    /// The tool's annotations as last listed by its server, when known.
    pub annotations: Option<Value>,
    /// Scanner findings on the arguments: `{pointer, category, severity, rule}` (never the text).
    pub findings: Vec<Value>,
}

/// What the gateway records when it holds a call.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApproval {
    pub caller: Caller,
    /// The catalog server.
    pub server: String,
    /// The aggregated tool name `{server}__{tool}`.
    pub tool: String,
    /// The rule whose `approve` effect held the call.
    pub rule_id: String,
    /// The least admin role a reviewer needs (approver or admin).
    pub required_role: Role,
    /// Distinct reviewers whose approval is needed (1 or 2).
    pub approvals_needed: u8,
    pub presentation: Presentation,
    /// How long the call may be held.
    pub timeout_ms: i64,
    /// The replica (stable name) and process (random per start) holding the call.
    pub replica: String,
    pub holder: String,
}

/// An approval request as stored, with its decisions so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Approval {
    pub id: String,
    pub created_ms: i64,
    pub deadline_ms: i64,
    pub caller: Caller,
    pub server: String,
    pub tool: String,
    pub rule_id: String,
    pub required_role: Role,
    pub approvals_needed: u8,
    pub presentation: Presentation,
    pub status: Status,
    /// When the status became final.
    pub decided_ms: Option<i64>,
    /// The final reason (the denying reviewer's, or why it expired / was abandoned).
    pub reason: Option<String>,
    pub decisions: Vec<DecisionRecord>,
    pub replica: String,
    /// The audit record that references this approval, once the call's record is written.
    pub audit_ref: Option<String>,
}

impl Approval {
    /// Approvals recorded so far (distinct reviewers, by construction).
    pub fn approvals(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.verdict == Verdict::Approve)
            .count()
    }
}
