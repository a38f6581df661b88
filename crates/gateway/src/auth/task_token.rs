//! Task tokens on the data plane: a `pct_…` bearer token minted by this gateway (see
//! [`portcullis_control::task`]) becomes a [`Principal`] acting as the token's agent, carrying
//! the token's scope in [`Principal::task`]. The proxy checks that scope before policy
//! (`proxy::control`); expired and revoked tokens are refused here with 401.

use std::sync::Arc;

use portcullis_control::Control;
use portcullis_control::task::{PREFIX, TaskScope, TokenRefusal};

use super::{AuthError, AuthMethod, Authenticator, Principal};

/// A task token's scope as a principal carries it; two are equal when they are the same token.
#[derive(Debug, Clone)]
pub struct Task(pub Arc<TaskScope>);

impl PartialEq for Task {
    fn eq(&self, other: &Task) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Task {}

impl std::hash::Hash for Task {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl std::ops::Deref for Task {
    type Target = TaskScope;

    fn deref(&self) -> &TaskScope {
        &self.0
    }
}

/// Is this bearer token shaped like a task token?
pub fn looks_like_task_token(token: &[u8]) -> bool {
    token.starts_with(PREFIX.as_bytes())
}

/// The principal of a task token, or why it is refused.
pub async fn authenticate(control: &Control, token: &[u8]) -> Result<Principal, AuthError> {
    let scope = control
        .tokens
        .authenticate(token)
        .await
        .map_err(|refusal| match refusal {
            TokenRefusal::Unknown => AuthError::invalid("unknown task token"),
            TokenRefusal::Expired => AuthError::Expired,
            TokenRefusal::Revoked => AuthError::Revoked,
            TokenRefusal::Unavailable => AuthError::KeysUnavailable,
        })?;
    Ok(Principal {
        agent: scope.agent.as_str().into(),
        user: scope.user.as_deref().map(Arc::from),
        method: AuthMethod::TaskToken,
        credential_id: format!("task:{}", scope.id).into(),
        roles: scope.roles.iter().cloned().collect(),
        token_id: Some(scope.id.as_str().into()),
        task: Some(Task(scope)),
    })
}

impl Authenticator {
    /// Accepts the task tokens `control` issued (`pct_…`), besides the configured credentials.
    pub fn with_task_tokens(mut self, control: Arc<Control>) -> Authenticator {
        self.task_tokens = Some(control);
        self
    }
}
