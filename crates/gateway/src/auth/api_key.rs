//! Static API keys (`auth.api_keys`): an index by SHA-256 digest, built once per configuration
//! revision, so a lookup costs one hash of the presented key and one map probe however many keys
//! are configured. The map is keyed by the digest, never the key: a timing difference in the
//! probe reveals nothing about a key. Expired and revoked keys stay in the index so that their
//! callers are told why they are refused.

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_config::ApiKey;
use sha2::{Digest, Sha256};

use super::{AuthError, AuthMethod, Principal};

/// What a key grants, ready to hand out.
struct Entry {
    agent: Arc<str>,
    credential_id: Arc<str>,
    expires_at: Option<u64>,
    revoked: bool,
}

/// The API keys of one revision.
#[derive(Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Entry>,
}

impl ApiKeys {
    pub fn new(keys: &[ApiKey]) -> ApiKeys {
        ApiKeys {
            by_digest: keys
                .iter()
                .map(|key| {
                    let entry = Entry {
                        agent: key.agent.as_str().into(),
                        credential_id: format!("key:{}", hex::encode(&key.sha256[..6])).into(),
                        expires_at: key.expires_at,
                        revoked: key.revoked,
                    };
                    (key.sha256, entry)
                })
                .collect(),
        }
    }

    /// The principal of a presented key at Unix time `now`.
    pub fn authenticate(&self, token: &[u8], now: u64) -> Result<Principal, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let entry = self
            .by_digest
            .get(&digest)
            .ok_or_else(|| AuthError::invalid("unknown API key"))?;
        if entry.revoked {
            return Err(AuthError::Revoked);
        }
        if entry.expires_at.is_some_and(|at| now >= at) {
            return Err(AuthError::Expired);
        }
        Ok(Principal {
            agent: entry.agent.clone(),
            user: None,
            method: AuthMethod::ApiKey,
            credential_id: entry.credential_id.clone(),
            roles: Arc::from([]),
            token_id: None,
            task: None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}
