//! Bearer JWTs from the configured OpenID Connect provider: JWS compact tokens checked against
//! the provider's cached keys ([`super::jwks`]), then their claims (`iss`, `aud`, `exp`, `nbf`,
//! `iat`, scopes) and the mapping of claims to agent, user and roles.
//!
//! What a token may not choose: the algorithm family (only the configured asymmetric
//! algorithms, never `none` or HMAC, and the key must be of the algorithm's type), the key
//! (only the issuer's JWKS; `jku`, `x5u`, `jwk` and `x5c` header fields are ignored), or
//! critical extensions (`crit` is refused). Signatures are verified by `ring` before any claim
//! is read.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_config::OidcConfig;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::jwks::{JwksCache, KeyLookup};
use super::{AuthError, AuthMethod, Principal};
use crate::route::Route;

/// Tokens longer than this are refused before any decoding (headers are capped at 16 KiB).
const MAX_TOKEN_BYTES: usize = 12 * 1024;

/// The JWS algorithms this gateway can verify: asymmetric signatures only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Algorithm {
    /// The algorithm of a JWS `alg` value (case-sensitive, as RFC 7515 says).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Some(match name {
            "RS256" => Algorithm::Rs256,
            "RS384" => Algorithm::Rs384,
            "RS512" => Algorithm::Rs512,
            "PS256" => Algorithm::Ps256,
            "PS384" => Algorithm::Ps384,
            "PS512" => Algorithm::Ps512,
            "ES256" => Algorithm::Es256,
            "ES384" => Algorithm::Es384,
            "EdDSA" => Algorithm::EdDsa,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::EdDsa => "EdDSA",
        }
    }
}

/// The JOSE header fields this verifier reads. Everything else (`jku`, `x5u`, `jwk`, `x5c`, …)
/// is ignored: keys come only from the issuer's JWKS. Duplicate fields fail to parse.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<serde::de::IgnoredAny>,
}

/// Claim names and expectations of one `auth.oidc` section.
pub struct JwtVerifier {
    issuer: String,
    /// `auth.oidc.audience`: accepted on every route.
    audience: String,
    /// `{public_url}/mcp/`: `{this}{server}` is accepted on `/mcp/{server}` only (RFC 8707).
    server_audience_prefix: String,
    algorithms: Vec<Algorithm>,
    agent_claim: String,
    user_claim: String,
    roles_claim: String,
    required_scopes: Vec<String>,
    clock_skew: u64,
    jwks: Arc<JwksCache>,
    verified: VerifiedTokens,
}

impl JwtVerifier {
    pub fn new(config: &OidcConfig, public_url: &str, jwks: Arc<JwksCache>) -> JwtVerifier {
        JwtVerifier {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            server_audience_prefix: format!("{public_url}/mcp/"),
            algorithms: config
                .algorithms
                .iter()
                .filter_map(|name| Algorithm::from_name(name))
                .collect(),
            agent_claim: config.agent_claim.clone(),
            user_claim: config.user_claim.clone(),
            roles_claim: config.roles_claim.clone(),
            required_scopes: config.required_scopes.clone(),
            clock_skew: config.clock_skew.as_secs(),
            jwks,
            verified: VerifiedTokens::default(),
        }
    }

    pub fn jwks(&self) -> &Arc<JwksCache> {
        &self.jwks
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn required_scopes(&self) -> &[String] {
        &self.required_scopes
    }

    /// Verifies a token presented on `route` at Unix time `now`. A token that verified before
    /// (same bytes, same route, same key set) costs a hash and a lookup; `exp` is checked again
    /// on every use. Waits on the network only when the token names a key the cache does not
    /// hold (one bounded, rate-limited refetch).
    pub async fn verify(
        &self,
        token: &[u8],
        route: &Route,
        now: u64,
    ) -> Result<Principal, AuthError> {
        let generation = self.jwks.current().generation;
        let key = VerifiedTokens::key(token, route);
        if let Some(hit) = self.verified.get(&key, generation) {
            if now as f64 >= hit.expires {
                return Err(AuthError::Expired);
            }
            return Ok(hit.principal);
        }
        let checked = self.check(token, route, now).await?;
        self.verified.insert(
            key,
            Verified {
                principal: checked.principal.clone(),
                expires: checked.exp + self.clock_skew as f64,
                generation: checked.generation,
            },
        );
        Ok(checked.principal)
    }

    /// [`JwtVerifier::verify`] without the cache of verified tokens: header, key lookup and
    /// signature, claims.
    pub async fn verify_uncached(
        &self,
        token: &[u8],
        route: &Route,
        now: u64,
    ) -> Result<Principal, AuthError> {
        self.check(token, route, now).await.map(|c| c.principal)
    }

    async fn check(&self, token: &[u8], route: &Route, now: u64) -> Result<Checked, AuthError> {
        let parts = split(token)?;
        let header = self.header(parts.header)?;
        let signature = decode(parts.signature, "signature")?;
        let signing_input = &token[..parts.signing_input_len];

        let mut keys = self.jwks.current();
        let mut refetched = false;
        loop {
            match keys.verify(header.kid.as_deref(), header.alg, signing_input, &signature) {
                KeyLookup::Verified => break,
                KeyLookup::BadSignature => {
                    return Err(AuthError::invalid("the signature does not verify"));
                }
                KeyLookup::NoKey if !refetched => {
                    refetched = true;
                    keys = self.jwks.refetch_for_unknown_key(&keys).await?;
                }
                KeyLookup::NoKey => {
                    return Err(AuthError::invalid(
                        "no signing key of the issuer matches the token's kid and alg",
                    ));
                }
            }
        }

        let payload = decode(parts.payload, "payload")?;
        let claims: Map<String, Value> = serde_json::from_slice(&payload)
            .map_err(|_| AuthError::invalid("the payload is not a JSON object"))?;
        let (principal, exp) = self.check_claims(&claims, route, now)?;
        Ok(Checked {
            principal,
            exp,
            generation: keys.generation,
        })
    }

    fn header(&self, encoded: &[u8]) -> Result<VerifiedHeader, AuthError> {
        let bytes = decode(encoded, "header")?;
        let header: Header = serde_json::from_slice(&bytes)
            .map_err(|_| AuthError::invalid("the JOSE header is not valid JSON with an alg"))?;
        if header.crit.is_some() {
            return Err(AuthError::invalid(
                "critical header extensions are not supported",
            ));
        }
        let alg = match Algorithm::from_name(&header.alg) {
            Some(alg) if self.algorithms.contains(&alg) => alg,
            Some(_) => return Err(AuthError::invalid("the token's alg is not accepted")),
            None if header.alg.eq_ignore_ascii_case("none") => {
                return Err(AuthError::invalid(
                    "unsigned tokens (alg none) are never accepted",
                ));
            }
            None if header.alg.starts_with("HS") => {
                return Err(AuthError::invalid("HMAC-signed tokens are never accepted"));
            }
            None => return Err(AuthError::invalid("the token's alg is not supported")),
        };
        if let Some(typ) = &header.typ {
            let typ = typ.to_ascii_lowercase();
            let typ = typ.strip_prefix("application/").unwrap_or(&typ);
            if typ != "jwt" && typ != "at+jwt" {
                return Err(AuthError::invalid(
                    "the token's typ is not a JWT access token",
                ));
            }
        }
        Ok(VerifiedHeader {
            alg,
            kid: header.kid,
        })
    }

    /// The claim checks and the claim → principal mapping, after the signature verified.
    pub fn principal(
        &self,
        claims: &Map<String, Value>,
        route: &Route,
        now: u64,
    ) -> Result<Principal, AuthError> {
        self.check_claims(claims, route, now)
            .map(|(principal, _)| principal)
    }

    /// [`JwtVerifier::principal`] and the token's `exp`.
    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        route: &Route,
        now: u64,
    ) -> Result<(Principal, f64), AuthError> {
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(AuthError::invalid(
                "the token was issued by another issuer (iss)",
            ));
        }
        if !self.audience_accepted(claims.get("aud"), route) {
            return Err(AuthError::invalid(
                "the token is not meant for this resource (aud)",
            ));
        }
        let now = now as f64;
        let skew = self.clock_skew as f64;
        let exp = claims
            .get("exp")
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| AuthError::invalid("exp is not a number"))
            })
            .transpose()?
            .ok_or_else(|| AuthError::invalid("the token has no exp"))?;
        if now >= exp + skew {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf
                .as_f64()
                .ok_or_else(|| AuthError::invalid("nbf is not a number"))?;
            if now + skew < nbf {
                return Err(AuthError::invalid("the token is not valid yet (nbf)"));
            }
        }
        if let Some(iat) = claims.get("iat") {
            let iat = iat
                .as_f64()
                .ok_or_else(|| AuthError::invalid("iat is not a number"))?;
            if now + skew < iat {
                return Err(AuthError::invalid(
                    "the token was issued in the future (iat)",
                ));
            }
        }
        if !self.required_scopes.is_empty() {
            let granted = scopes(claims)?;
            if self
                .required_scopes
                .iter()
                .any(|needed| !granted.iter().any(|g| g == needed))
            {
                return Err(AuthError::InsufficientScope);
            }
        }

        let agent = match claim(claims, &self.agent_claim) {
            Some(Value::String(agent)) if valid_name(agent) => agent.as_str(),
            _ => {
                return Err(AuthError::invalid(format!(
                    "the token has no usable `{}` claim naming the agent",
                    self.agent_claim
                )));
            }
        };
        let user = match claim(claims, &self.user_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(user)) if valid_name(user) => Some(user.as_str()),
            Some(_) => {
                return Err(AuthError::invalid(format!(
                    "the `{}` claim naming the user is not a string",
                    self.user_claim
                )));
            }
        };
        let roles = roles(claim(claims, &self.roles_claim)).ok_or_else(|| {
            AuthError::invalid(format!(
                "the `{}` claim must be a string or a list of strings",
                self.roles_claim
            ))
        })?;
        let token_id = match claims.get("jti") {
            Some(Value::String(jti)) => Some(Arc::from(jti.as_str())),
            _ => None,
        };
        let principal = Principal {
            agent: agent.into(),
            user: user.map(Arc::from),
            method: AuthMethod::Jwt,
            credential_id: credential_id(&self.issuer, agent, user).into(),
            roles: roles.into(),
            token_id,
            task: None,
        };
        Ok((principal, exp))
    }

    fn audience_accepted(&self, aud: Option<&Value>, route: &Route) -> bool {
        let accepts = |candidate: &str| {
            candidate == self.audience
                || matches!(route, Route::Server(server)
                    if candidate.strip_prefix(self.server_audience_prefix.as_str()) == Some(server))
        };
        match aud {
            Some(Value::String(aud)) => accepts(aud),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(accepts),
            _ => false,
        }
    }
}

/// A token that passed every check.
struct Checked {
    principal: Principal,
    exp: f64,
    /// The key set that verified it.
    generation: u64,
}

/// Tokens that verified recently, keyed by SHA-256 of the route and the token, so that a token
/// used for many calls is verified once: RSA and ECDSA verification cost tens of µs, the lookup
/// about one. Entries are valid only with the key set that verified them and until their
/// `exp` (plus skew); the map is bounded by [`MAX_VERIFIED`].
#[derive(Default)]
struct VerifiedTokens {
    map: RwLock<HashMap<[u8; 32], Verified>>,
}

#[derive(Clone)]
struct Verified {
    principal: Principal,
    /// `exp` plus the clock skew.
    expires: f64,
    generation: u64,
}

/// Most verified tokens remembered at once.
const MAX_VERIFIED: usize = 10_000;

impl VerifiedTokens {
    fn key(token: &[u8], route: &Route) -> [u8; 32] {
        let mut hash = Sha256::new();
        match route {
            Route::Aggregate => hash.update([0u8]),
            Route::Server(name) => {
                hash.update([1u8]);
                hash.update((name.len() as u64).to_be_bytes());
                hash.update(name.as_bytes());
            }
        }
        hash.update(token);
        hash.finalize().into()
    }

    fn get(&self, key: &[u8; 32], generation: u64) -> Option<Verified> {
        let map = self.map.read().expect("poisoned");
        map.get(key)
            .filter(|hit| hit.generation == generation)
            .cloned()
    }

    fn insert(&self, key: [u8; 32], verified: Verified) {
        let mut map = self.map.write().expect("poisoned");
        if map.len() >= MAX_VERIFIED {
            let now = super::unix_now() as f64;
            let generation = verified.generation;
            map.retain(|_, v| v.expires > now && v.generation == generation);
            if map.len() >= MAX_VERIFIED {
                map.clear();
            }
        }
        map.insert(key, verified);
    }
}

struct VerifiedHeader {
    alg: Algorithm,
    kid: Option<String>,
}

struct Parts<'a> {
    header: &'a [u8],
    payload: &'a [u8],
    signature: &'a [u8],
    /// `header.payload`, the bytes the signature covers.
    signing_input_len: usize,
}

/// Is this token shaped like a JWS in compact serialization (three base64url parts)?
pub fn looks_like_jws(token: &[u8]) -> bool {
    token.iter().filter(|b| **b == b'.').count() == 2
        && token
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn split(token: &[u8]) -> Result<Parts<'_>, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::invalid("the token is too long"));
    }
    let mut pieces = token.splitn(3, |b| *b == b'.');
    let (Some(header), Some(payload), Some(signature)) =
        (pieces.next(), pieces.next(), pieces.next())
    else {
        return Err(AuthError::invalid("not a JWS in compact form"));
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() || signature.contains(&b'.')
    {
        return Err(AuthError::invalid("not a JWS in compact form"));
    }
    Ok(Parts {
        header,
        payload,
        signature,
        signing_input_len: header.len() + 1 + payload.len(),
    })
}

fn decode(part: &[u8], what: &'static str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::invalid(format!("the {what} is not base64url")))
}

/// A claim by name; a name with dots that is not itself a claim is read as a path into nested
/// objects (`realm_access.roles`).
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Roles: absent is none, a string is one role, a list must hold only strings. Anything else
/// is refused rather than partly read, so that a `deny` rule on a role cannot be dodged.
fn roles(value: Option<&Value>) -> Option<Vec<String>> {
    match value {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::String(role)) => Some(vec![role.clone()]),
        Some(Value::Array(list)) => list.iter().map(|v| v.as_str().map(str::to_owned)).collect(),
        Some(_) => None,
    }
}

/// Granted scopes: `scope` (space-separated, RFC 9068) or `scp` (string or list).
fn scopes(claims: &Map<String, Value>) -> Result<Vec<&str>, AuthError> {
    let bad = || AuthError::invalid("the scope claim is malformed");
    let mut out = Vec::new();
    match claims.get("scope") {
        None => {}
        Some(Value::String(text)) => out.extend(text.split(' ').filter(|s| !s.is_empty())),
        Some(_) => return Err(bad()),
    }
    match claims.get("scp") {
        None => {}
        Some(Value::String(text)) => out.extend(text.split(' ').filter(|s| !s.is_empty())),
        Some(Value::Array(list)) => {
            for item in list {
                out.push(item.as_str().ok_or_else(bad)?);
            }
        }
        Some(_) => return Err(bad()),
    }
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.chars().any(char::is_control)
}

/// A stable, non-secret id of the identity a JWT carries: the same for every token the issuer
/// mints for this agent and user, so that legacy sessions survive token refresh, and different
/// for any other identity.
fn credential_id(issuer: &str, agent: &str, user: Option<&str>) -> String {
    let mut hash = Sha256::new();
    for part in [issuer, agent, user.unwrap_or("")] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    format!("jwt:{}", hex::encode(&hash.finalize()[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: "https://idp.example".into(),
            audience: "https://gw.example/mcp".into(),
            agent_claim: "azp".into(),
            user_claim: "sub".into(),
            roles_claim: "roles".into(),
            required_scopes: Vec::new(),
            clock_skew: Duration::from_secs(30),
            algorithms: portcullis_config::OIDC_ALGORITHMS
                .map(str::to_owned)
                .to_vec(),
            jwks_refetch_interval: Duration::from_secs(30),
        }
    }

    fn verifier(config: &OidcConfig) -> JwtVerifier {
        JwtVerifier::new(
            config,
            "https://gw.example",
            JwksCache::fixed(r#"{"keys":[]}"#).unwrap(),
        )
    }

    const NOW: u64 = 1_800_000_000;

    /// A compact JWS over `header` and `payload`, ES256-signed with `key`.
    fn es256_token(key: &ring::signature::EcdsaKeyPair, header: Value, payload: Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let sig = key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    #[test]
    fn signed_tokens_verify_end_to_end_and_forgeries_do_not() {
        let (key, jwk) = super::super::jwks::tests::es256("k1");
        let (other, _) = super::super::jwks::tests::es256("k1");
        let jwks = JwksCache::fixed(&json!({ "keys": [jwk] }).to_string()).unwrap();
        let v = JwtVerifier::new(&config(), "https://gw.example", jwks);
        let payload = Value::Object(claims(json!({})));
        let run = |token: &str| {
            futures::executor::block_on(v.verify(token.as_bytes(), &Route::Aggregate, NOW))
        };
        let good = es256_token(&key, json!({"alg": "ES256", "kid": "k1"}), payload.clone());
        assert_eq!(&*run(&good).unwrap().agent, "support-bot");
        // Twice: the second use is answered from the verified-token cache, same principal.
        assert_eq!(run(&good).unwrap(), run(&good).unwrap());
        // Signed by another key under the same kid.
        let forged = es256_token(
            &other,
            json!({"alg": "ES256", "kid": "k1"}),
            payload.clone(),
        );
        assert!(run(&forged).unwrap_err().to_string().contains("signature"));
        // Payload swapped after signing.
        let (head, rest) = good.split_once('.').unwrap();
        let sig = rest.split_once('.').unwrap().1;
        let mut evil = claims(json!({}));
        evil.insert("azp".into(), json!("admin-bot"));
        let swapped = format!(
            "{head}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(Value::Object(evil).to_string())
        );
        assert!(run(&swapped).unwrap_err().to_string().contains("signature"));
        // A kid the (fixed) set does not hold.
        let unknown = es256_token(&key, json!({"alg": "ES256", "kid": "k9"}), payload.clone());
        assert!(run(&unknown).unwrap_err().to_string().contains("kid"));
        // No kid: the key of the right type is found.
        let no_kid = es256_token(&key, json!({"alg": "ES256"}), payload);
        assert!(run(&no_kid).is_ok());
        // Malformed shapes.
        for bad in ["", "a.b", "a.b.c.d", "e30.e30.", "!!.e30.AA"] {
            assert!(run(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cached_token_still_expires() {
        let (key, jwk) = super::super::jwks::tests::es256("k1");
        let jwks = JwksCache::fixed(&json!({ "keys": [jwk] }).to_string()).unwrap();
        let v = JwtVerifier::new(&config(), "https://gw.example", jwks);
        let token = es256_token(
            &key,
            json!({"alg": "ES256", "kid": "k1"}),
            Value::Object(claims(json!({"exp": NOW + 10}))),
        );
        let at =
            |now| futures::executor::block_on(v.verify(token.as_bytes(), &Route::Aggregate, now));
        assert!(at(NOW).is_ok());
        assert_eq!(at(NOW + 40).unwrap_err(), AuthError::Expired); // 10 s + 30 s skew
        // The cache is per route: the same token on another route is checked again (and
        // accepted, since its audience is the aggregate's).
        let other = futures::executor::block_on(v.verify(
            token.as_bytes(),
            &Route::Server("time".into()),
            NOW,
        ));
        assert!(other.is_ok());
    }

    fn claims(extra: Value) -> Map<String, Value> {
        let mut base = json!({
            "iss": "https://idp.example",
            "aud": "https://gw.example/mcp",
            "exp": NOW + 300,
            "iat": NOW - 10,
            "azp": "support-bot",
            "sub": "alice@example.com",
            "jti": "t-1",
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        base.as_object().unwrap().clone()
    }

    #[test]
    fn claims_map_to_agent_user_roles_and_token_id() {
        let v = verifier(&config());
        let p = v
            .principal(
                &claims(json!({"roles": ["support", "billing"]})),
                &Route::Aggregate,
                NOW,
            )
            .unwrap();
        assert_eq!(&*p.agent, "support-bot");
        assert_eq!(p.user.as_deref(), Some("alice@example.com"));
        assert_eq!(&*p.roles, ["support".to_owned(), "billing".to_owned()]);
        assert_eq!(p.token_id.as_deref(), Some("t-1"));
        assert_eq!(p.method, AuthMethod::Jwt);
        // One role as a string; no roles claim at all.
        let one = v
            .principal(&claims(json!({"roles": "support"})), &Route::Aggregate, NOW)
            .unwrap();
        assert_eq!(&*one.roles, ["support".to_owned()]);
        assert!(
            v.principal(&claims(json!({})), &Route::Aggregate, NOW)
                .unwrap()
                .roles
                .is_empty()
        );
        // The credential id is stable across tokens and differs per identity.
        let again = v
            .principal(&claims(json!({"jti": "t-2"})), &Route::Aggregate, NOW)
            .unwrap();
        assert_eq!(again.credential_id, p.credential_id);
        let other = v
            .principal(&claims(json!({"sub": "bob"})), &Route::Aggregate, NOW)
            .unwrap();
        assert_ne!(other.credential_id, p.credential_id);
    }

    #[test]
    fn claim_names_are_configurable_including_nested_paths() {
        let mut cfg = config();
        cfg.agent_claim = "client_id".into();
        cfg.user_claim = "email".into();
        cfg.roles_claim = "realm_access.roles".into();
        let v = verifier(&cfg);
        let p = v
            .principal(
                &claims(json!({
                    "client_id": "crm-agent",
                    "email": "carol@example.com",
                    "realm_access": {"roles": ["admin"]}
                })),
                &Route::Aggregate,
                NOW,
            )
            .unwrap();
        assert_eq!(&*p.agent, "crm-agent");
        assert_eq!(p.user.as_deref(), Some("carol@example.com"));
        assert_eq!(&*p.roles, ["admin".to_owned()]);
        // The configured agent claim is required; `azp` is not a fallback.
        let err = v
            .principal(&claims(json!({"client_id": null})), &Route::Aggregate, NOW)
            .unwrap_err();
        assert!(err.to_string().contains("client_id"), "{err}");
    }

    #[test]
    fn malformed_roles_are_refused_not_partly_read() {
        let v = verifier(&config());
        for roles in [json!(["support", 7]), json!({"a": 1}), json!(true)] {
            let err = v
                .principal(&claims(json!({ "roles": roles })), &Route::Aggregate, NOW)
                .unwrap_err();
            assert!(err.to_string().contains("roles"), "{err}");
        }
    }

    #[test]
    fn clock_skew_applies_to_exp_nbf_and_iat() {
        let v = verifier(&config()); // 30 s skew
        let at = |extra: Value, now: u64| v.principal(&claims(extra), &Route::Aggregate, now);
        // exp: still fine 29 s after, refused at 30 s.
        assert!(at(json!({"exp": NOW}), NOW + 29).is_ok());
        assert_eq!(
            at(json!({"exp": NOW}), NOW + 30).unwrap_err(),
            AuthError::Expired
        );
        // nbf: 30 s early is tolerated, 31 s is not.
        assert!(at(json!({"nbf": NOW + 30}), NOW).is_ok());
        assert!(
            at(json!({"nbf": NOW + 31}), NOW)
                .unwrap_err()
                .to_string()
                .contains("nbf")
        );
        // iat in the future beyond the skew.
        assert!(
            at(json!({"iat": NOW + 31}), NOW)
                .unwrap_err()
                .to_string()
                .contains("iat")
        );
        // Without skew the boundary is exact.
        let mut strict = config();
        strict.clock_skew = Duration::ZERO;
        let v = verifier(&strict);
        assert_eq!(
            v.principal(&claims(json!({"exp": NOW})), &Route::Aggregate, NOW)
                .unwrap_err(),
            AuthError::Expired
        );
        assert!(
            v.principal(&claims(json!({"exp": NOW + 1})), &Route::Aggregate, NOW)
                .is_ok()
        );
        // A token without exp is refused.
        assert!(
            v.principal(&claims(json!({"exp": null})), &Route::Aggregate, NOW)
                .is_err()
        );
    }

    #[test]
    fn issuer_and_audience_are_exact_and_per_server_audience_binds_to_its_route() {
        let v = verifier(&config());
        let time = Route::Server("time".into());
        let other = Route::Server("other".into());
        let check =
            |aud: Value, route: &Route| v.principal(&claims(json!({ "aud": aud })), route, NOW);
        assert!(check(json!("https://gw.example/mcp"), &time).is_ok());
        assert!(check(json!(["x", "https://gw.example/mcp"]), &Route::Aggregate).is_ok());
        assert!(check(json!("https://gw.example/mcp/time"), &time).is_ok());
        assert!(check(json!("https://gw.example/mcp/time"), &other).is_err());
        assert!(check(json!("https://gw.example/mcp/time"), &Route::Aggregate).is_err());
        assert!(check(json!("https://gw.example/mcp/"), &Route::Aggregate).is_err());
        assert!(check(json!("https://gw.example"), &Route::Aggregate).is_err());
        assert!(check(json!(null), &Route::Aggregate).is_err());
        assert!(
            v.principal(
                &claims(json!({"iss": "https://idp.example/"})),
                &Route::Aggregate,
                NOW
            )
            .is_err()
        );
    }

    #[test]
    fn required_scopes_give_insufficient_scope() {
        let mut cfg = config();
        cfg.required_scopes = vec!["mcp:tools".into()];
        let v = verifier(&cfg);
        let at = |extra: Value| v.principal(&claims(extra), &Route::Aggregate, NOW);
        assert_eq!(at(json!({})).unwrap_err(), AuthError::InsufficientScope);
        assert_eq!(
            at(json!({"scope": "openid mcp:toolsx"})).unwrap_err(),
            AuthError::InsufficientScope
        );
        assert!(at(json!({"scope": "openid mcp:tools"})).is_ok());
        assert!(at(json!({"scp": ["mcp:tools"]})).is_ok());
        // An expired token is 401, not a step-up.
        assert_eq!(
            at(json!({"exp": NOW - 100, "scope": ""})).unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn header_refuses_none_hmac_crit_and_foreign_typ() {
        let v = verifier(&config());
        let enc = |h: Value| URL_SAFE_NO_PAD.encode(h.to_string());
        let header = |h: Value| v.header(enc(h).as_bytes()).map(|h| h.alg);
        assert_eq!(header(json!({"alg": "RS256"})).unwrap(), Algorithm::Rs256);
        assert!(
            header(json!({"alg": "none"}))
                .unwrap_err()
                .to_string()
                .contains("none")
        );
        assert!(
            header(json!({"alg": "HS256"}))
                .unwrap_err()
                .to_string()
                .contains("HMAC")
        );
        assert!(header(json!({"alg": "ES256", "crit": ["b64"]})).is_err());
        assert!(header(json!({"alg": "ES256", "typ": "dpop+jwt"})).is_err());
        assert!(header(json!({"alg": "ES256", "typ": "at+jwt"})).is_ok());
        assert!(header(json!({"alg": "ES256", "jku": "https://evil.example/jwks"})).is_ok());
        // Duplicate alg fields do not parse.
        let dup = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","alg":"none"}"#);
        assert!(v.header(dup.as_bytes()).is_err());
        // Not in the configured allow-list.
        let mut cfg = config();
        cfg.algorithms = vec!["ES256".into()];
        let v = verifier(&cfg);
        assert!(v.header(enc(json!({"alg": "RS256"})).as_bytes()).is_err());
    }
}
