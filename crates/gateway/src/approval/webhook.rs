//! The chat webhook: every new approval request is posted to `approvals.webhook` as a
//! Slack-compatible message (`text` + `blocks`, see [`portcullis_approvals::present`]) with an
//! Approve and a Deny link.
//!
//! Each link is single-use, expires with the request, is bound to that request and verdict (the
//! store keeps only an HMAC of its random nonce), and opens a review page that still asks for an
//! approver's admin credential: the link alone decides nothing, and the caller's own credential
//! is refused like on every other route. Delivery is best effort (logged): the request stays
//! reviewable through the API and CLI whatever the webhook does.

use std::time::Duration;

use portcullis_approvals::present::{Links, slack_payload};
use portcullis_approvals::{Approval, Verdict};

use super::Approvals;

/// Time allowed for one webhook delivery.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The review page of a link: `{public_url}/admin/api/v1/approvals/{id}/review?verdict=…&t=…`.
pub fn review_url(public_url: &str, id: &str, verdict: Verdict, nonce: &str) -> String {
    format!(
        "{public_url}{}/approvals/{id}/review?verdict={}&t={nonce}",
        crate::admin::BASE_PATH,
        verdict.as_str()
    )
}

/// Issues the two links of `approval` and posts the announcement to `url`; logs the result.
pub async fn announce(approvals: &Approvals, approval: &Approval, url: &str, public_url: &str) {
    let mut links = Vec::with_capacity(2);
    for verdict in [Verdict::Approve, Verdict::Deny] {
        match approvals
            .store
            .issue_link(&approval.id, verdict, approval.deadline_ms)
            .await
        {
            Ok(nonce) => links.push(review_url(public_url, &approval.id, verdict, &nonce)),
            Err(error) => {
                tracing::warn!(approval = %approval.id, %error, "approval webhook: cannot issue review links; not announced");
                return;
            }
        }
    }
    let deny = links.pop().unwrap_or_default();
    let approve = links.pop().unwrap_or_default();
    let payload = slack_payload(approval, &Links { approve, deny });
    let sent = approvals
        .http
        .post(url)
        .timeout(DELIVERY_TIMEOUT)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(payload.to_string())
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => {
            tracing::info!(approval = %approval.id, "approval announced to the chat webhook")
        }
        // Never log the URL: it usually embeds the webhook's secret.
        Ok(response) => {
            tracing::warn!(approval = %approval.id, status = %response.status(), "approval webhook refused the announcement")
        }
        Err(error) => {
            tracing::warn!(approval = %approval.id, error = %error.without_url(), "approval webhook unreachable")
        }
    }
}
