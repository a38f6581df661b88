//! The state machine of one approval request, pure: given the request as stored, a reviewer, a
//! verdict and the time, what happens?
//!
//! ```text
//!            approve (distinct reviewers reach `approvals_needed`)
//!   pending ─────────────────────────────────────────────────────▶ approved
//!      │ ├─ deny (any eligible reviewer, with a reason) ─────────▶ denied
//!      │ ├─ deadline passes ─────────────────────────────────────▶ expired   (= deny)
//!      │ └─ caller gone / holder gone ───────────────────────────▶ abandoned (never executed)
//!      └─ approve below the threshold: recorded, stays pending
//! ```
//!
//! Separation of duties: the principal that made the call can never decide it (same credential,
//! agent or user name), a reviewer needs the role the rule requires, and a reviewer counts once.
//! The store applies the outcome atomically (`UPDATE … WHERE status = 'pending'`), so whatever
//! replica a decision arrives on, exactly one final transition wins.

use crate::model::{Approval, Caller};
use crate::model::{DecisionRecord, Reviewer, Role, Status, Verdict};

/// Longest reason accepted, in characters.
pub const MAX_REASON_CHARS: usize = 2000;

/// Why a decision was refused. Nothing is recorded when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("no approval request with this id")]
    NotFound,
    #[error("the request is already {0}; decisions no longer change it")]
    NotPending(Status),
    #[error("the request expired before this decision; the call was denied")]
    Expired,
    #[error("the caller of a held call cannot decide it (separation of duties)")]
    SelfApproval,
    #[error("this rule needs a reviewer with role {required} (yours: {have})")]
    Role { required: Role, have: Role },
    #[error("{0} has already decided this request; a second approval must come from someone else")]
    AlreadyDecided(String),
    #[error("a denial needs a reason")]
    ReasonRequired,
    #[error("the reason is longer than {MAX_REASON_CHARS} characters")]
    ReasonTooLong,
}

/// What a permitted decision does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An approval below the threshold: recorded, the request stays pending.
    Recorded { approvals: u8, needed: u8 },
    /// The final transition to this status.
    Final(Status),
}

/// The facts the machine needs about a stored request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub status: Status,
    pub deadline_ms: i64,
    pub caller: &'a Caller,
    pub required_role: Role,
    pub approvals_needed: u8,
    pub decisions: &'a [DecisionRecord],
}

impl<'a> From<&'a Approval> for Facts<'a> {
    fn from(a: &'a Approval) -> Self {
        Facts {
            status: a.status,
            deadline_ms: a.deadline_ms,
            caller: &a.caller,
            required_role: a.required_role,
            approvals_needed: a.approvals_needed,
            decisions: &a.decisions,
        }
    }
}

/// Decides whether `reviewer` may say `verdict` now, and what it leads to.
pub fn decide(
    facts: Facts<'_>,
    reviewer: &Reviewer,
    verdict: Verdict,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<Outcome, DecideError> {
    if facts.status != Status::Pending {
        return Err(DecideError::NotPending(facts.status));
    }
    if now_ms >= facts.deadline_ms {
        return Err(DecideError::Expired);
    }
    if reviewer.is_caller(facts.caller) {
        return Err(DecideError::SelfApproval);
    }
    if reviewer.role < facts.required_role.max(Role::Approver) {
        return Err(DecideError::Role {
            required: facts.required_role.max(Role::Approver),
            have: reviewer.role,
        });
    }
    if let Some(earlier) = facts
        .decisions
        .iter()
        .find(|d| d.reviewer == reviewer.name || d.credential_id == reviewer.credential_id)
    {
        return Err(DecideError::AlreadyDecided(earlier.reviewer.clone()));
    }
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) {
        return Err(DecideError::ReasonTooLong);
    }
    match verdict {
        Verdict::Deny if reason.is_none() => Err(DecideError::ReasonRequired),
        Verdict::Deny => Ok(Outcome::Final(Status::Denied)),
        Verdict::Approve => {
            let approvals = facts
                .decisions
                .iter()
                .filter(|d| d.verdict == Verdict::Approve)
                .count()
                + 1;
            let needed = facts.approvals_needed.max(1);
            if approvals >= usize::from(needed) {
                Ok(Outcome::Final(Status::Approved))
            } else {
                Ok(Outcome::Recorded {
                    approvals: approvals as u8,
                    needed,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Channel;

    fn caller() -> Caller {
        Caller {
            agent: "support-bot".into(),
            user: Some("carol".into()),
            credential_id: "key:0a0b0c".into(),
        }
    }

    fn reviewer(name: &str, role: Role) -> Reviewer {
        Reviewer {
            name: name.into(),
            credential_id: format!("admin:{name}"),
            role,
            agent: None,
        }
    }

    fn approved_by(name: &str) -> DecisionRecord {
        DecisionRecord {
            reviewer: name.into(),
            credential_id: format!("admin:{name}"),
            role: Role::Approver,
            verdict: Verdict::Approve,
            reason: None,
            at_ms: 1,
            channel: Channel::Api,
        }
    }

    fn facts<'a>(caller: &'a Caller, decisions: &'a [DecisionRecord], needed: u8) -> Facts<'a> {
        Facts {
            status: Status::Pending,
            deadline_ms: 1_000,
            caller,
            required_role: Role::Approver,
            approvals_needed: needed,
            decisions,
        }
    }

    #[test]
    fn one_approval_is_final_when_one_is_needed() {
        let c = caller();
        let out = decide(
            facts(&c, &[], 1),
            &reviewer("dana", Role::Approver),
            Verdict::Approve,
            None,
            10,
        );
        assert_eq!(out, Ok(Outcome::Final(Status::Approved)));
    }

    #[test]
    fn two_person_rule_needs_two_distinct_reviewers() {
        let c = caller();
        let first = decide(
            facts(&c, &[], 2),
            &reviewer("dana", Role::Approver),
            Verdict::Approve,
            None,
            10,
        );
        assert_eq!(
            first,
            Ok(Outcome::Recorded {
                approvals: 1,
                needed: 2
            })
        );
        let decided = [approved_by("dana")];
        // Same reviewer twice: refused, nothing recorded.
        let again = decide(
            facts(&c, &decided, 2),
            &reviewer("dana", Role::Admin),
            Verdict::Approve,
            None,
            10,
        );
        assert_eq!(again, Err(DecideError::AlreadyDecided("dana".into())));
        // Same credential under another name: still the same reviewer.
        let renamed = Reviewer {
            name: "dana2".into(),
            credential_id: "admin:dana".into(),
            role: Role::Approver,
            agent: None,
        };
        assert!(matches!(
            decide(facts(&c, &decided, 2), &renamed, Verdict::Approve, None, 10),
            Err(DecideError::AlreadyDecided(_))
        ));
        let second = decide(
            facts(&c, &decided, 2),
            &reviewer("erin", Role::Approver),
            Verdict::Approve,
            None,
            10,
        );
        assert_eq!(second, Ok(Outcome::Final(Status::Approved)));
    }

    #[test]
    fn caller_cannot_approve_own_call_by_credential_agent_or_user_bypass() {
        let c = caller();
        for r in [
            Reviewer {
                name: "x".into(),
                credential_id: "key:0a0b0c".into(),
                role: Role::Admin,
                agent: None,
            },
            Reviewer {
                name: "support-bot".into(),
                credential_id: "admin:y".into(),
                role: Role::Admin,
                agent: None,
            },
            Reviewer {
                name: "carol".into(),
                credential_id: "admin:z".into(),
                role: Role::Admin,
                agent: None,
            },
            Reviewer {
                name: "ops".into(),
                credential_id: "jwt:ops".into(),
                role: Role::Admin,
                agent: Some("support-bot".into()),
            },
        ] {
            assert_eq!(
                decide(facts(&c, &[], 1), &r, Verdict::Approve, None, 10),
                Err(DecideError::SelfApproval),
                "{r:?}"
            );
        }
    }

    #[test]
    fn roles_are_enforced() {
        let c = caller();
        let viewer = decide(
            facts(&c, &[], 1),
            &reviewer("v", Role::Viewer),
            Verdict::Approve,
            None,
            10,
        );
        assert_eq!(
            viewer,
            Err(DecideError::Role {
                required: Role::Approver,
                have: Role::Viewer
            })
        );
        let mut f = facts(&c, &[], 1);
        f.required_role = Role::Admin;
        let approver = decide(
            f,
            &reviewer("a", Role::Approver),
            Verdict::Deny,
            Some("no"),
            10,
        );
        assert_eq!(
            approver,
            Err(DecideError::Role {
                required: Role::Admin,
                have: Role::Approver
            })
        );
        assert_eq!(
            decide(f, &reviewer("b", Role::Admin), Verdict::Approve, None, 10),
            Ok(Outcome::Final(Status::Approved))
        );
    }

    #[test]
    fn late_and_final_decisions_change_nothing() {
        let c = caller();
        let r = reviewer("dana", Role::Approver);
        assert_eq!(
            decide(facts(&c, &[], 1), &r, Verdict::Approve, None, 1_000),
            Err(DecideError::Expired)
        );
        for status in [
            Status::Approved,
            Status::Denied,
            Status::Expired,
            Status::Abandoned,
        ] {
            let mut f = facts(&c, &[], 1);
            f.status = status;
            assert_eq!(
                decide(f, &r, Verdict::Approve, None, 10),
                Err(DecideError::NotPending(status))
            );
        }
    }

    #[test]
    fn a_denial_needs_a_bounded_reason_and_is_final() {
        let c = caller();
        let r = reviewer("dana", Role::Approver);
        assert_eq!(
            decide(facts(&c, &[], 2), &r, Verdict::Deny, Some("  "), 10),
            Err(DecideError::ReasonRequired)
        );
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        assert_eq!(
            decide(facts(&c, &[], 2), &r, Verdict::Deny, Some(&long), 10),
            Err(DecideError::ReasonTooLong)
        );
        // One denial ends a two-person request.
        let decided = [approved_by("erin")];
        assert_eq!(
            decide(
                facts(&c, &decided, 2),
                &r,
                Verdict::Deny,
                Some("amount too high"),
                10
            ),
            Ok(Outcome::Final(Status::Denied))
        );
    }
}
