//! Client certificates as an identity source: the verified leaf certificate of a TLS connection
//! mapped to an agent (subject CN, first URI SAN or first DNS SAN, per `tls.identity`) and,
//! optionally, roles (subject OUs).
//!
//! Only [`crate::tls`] creates a [`ClientCert`], after rustls verified the chain against
//! `tls.client_ca_file` (signature, validity period, client-auth usage). It is made available
//! to the requests of that connection through a task-local ([`current`]), never through a
//! header, so a client cannot forge one on a plain connection.
//!
//! Precedence in [`super::Authenticator::authenticate_with`]: a bearer credential, when sent,
//! decides alone (a bad one is refused, never downgraded to the certificate); without one the
//! certificate identifies the caller; without both the anonymous identity applies, if any.

use std::sync::Arc;

use portcullis_config::tls::{AgentFrom, ClientCertConfig};
use sha2::{Digest, Sha256};

use super::{AuthError, AuthMethod, Principal};

tokio::task_local! {
    static CONNECTION_CERT: Option<Arc<ClientCert>>;
}

/// The identity a verified client certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The agent named by the configured field; `None` when the certificate lacks it (such a
    /// certificate authenticates nobody).
    pub agent: Option<Arc<str>>,
    /// Subject OUs when `roles_from_ou` is on; empty otherwise.
    pub roles: Arc<[String]>,
    /// `cert:` and the first 16 hex digits of the certificate's SHA-256.
    pub credential_id: Arc<str>,
    /// Which field `agent` comes from, for error messages.
    pub agent_from: AgentFrom,
}

impl ClientCert {
    /// The identity of a DER leaf certificate (already verified by rustls).
    pub fn from_der(der: &[u8], config: &ClientCertConfig) -> ClientCert {
        let digest = hex::encode(Sha256::digest(der));
        let credential_id: Arc<str> = format!("cert:{}", &digest[..16]).into();
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return ClientCert {
                agent: None,
                roles: Arc::from([]),
                credential_id,
                agent_from: config.agent_from,
            };
        };
        let agent = match config.agent_from {
            AgentFrom::Cn => cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            AgentFrom::SanUri | AgentFrom::SanDns => cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .and_then(|san| {
                    san.value.general_names.iter().find_map(|name| {
                        use x509_parser::extensions::GeneralName;
                        match (config.agent_from, name) {
                            (AgentFrom::SanUri, GeneralName::URI(uri)) => Some(uri.to_string()),
                            (AgentFrom::SanDns, GeneralName::DNSName(dns)) => Some(dns.to_string()),
                            _ => None,
                        }
                    })
                }),
        };
        let roles: Vec<String> = if config.roles_from_ou {
            cert.subject()
                .iter_organizational_unit()
                .filter_map(|ou| ou.as_str().ok().map(str::to_owned))
                .collect()
        } else {
            Vec::new()
        };
        ClientCert {
            agent: agent.filter(|a| !a.trim().is_empty()).map(Arc::from),
            roles: roles.into(),
            credential_id,
            agent_from: config.agent_from,
        }
    }

    /// The principal of a request that sent no bearer credential on this connection.
    pub fn principal(&self) -> Result<Principal, AuthError> {
        let Some(agent) = &self.agent else {
            let field = match self.agent_from {
                AgentFrom::Cn => "a subject common name",
                AgentFrom::SanUri => "a URI subject alternative name",
                AgentFrom::SanDns => "a DNS subject alternative name",
            };
            return Err(AuthError::invalid(format!(
                "the client certificate has no {field} to name the agent"
            )));
        };
        Ok(Principal {
            agent: agent.clone(),
            user: None,
            method: AuthMethod::ClientCert,
            credential_id: self.credential_id.clone(),
            roles: self.roles.clone(),
            token_id: None,
            task: None,
        })
    }
}

/// Runs `future` (one request on a TLS connection) with the connection's certificate identity.
pub async fn scope<F: Future>(cert: Option<Arc<ClientCert>>, future: F) -> F::Output {
    CONNECTION_CERT.scope(cert, future).await
}

/// The certificate identity of the connection serving the current request; `None` on plain
/// HTTP connections and TLS connections without a client certificate.
pub fn current() -> Option<Arc<ClientCert>> {
    CONNECTION_CERT.try_with(Clone::clone).ok().flatten()
}
