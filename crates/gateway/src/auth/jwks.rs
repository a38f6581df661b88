//! The OIDC provider's signing keys: discovered from `{issuer}/.well-known/openid-configuration`,
//! fetched from its `jwks_uri`, parsed once into `ring` verification keys and cached.
//!
//! The data plane reads the cached set without waiting. It waits on the network only when a
//! token names a key the set does not hold: then one refetch runs (single flight: concurrent
//! callers wait for the same fetch), at most once per `auth.oidc.jwks_refetch_interval`, bounded
//! by [`FETCH_TIMEOUT`]. Keys are fetched in the background when a revision starts and again
//! when the set is older than [`MAX_AGE`], so that keys the provider withdrew stop working.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

use super::AuthError;
use super::jwt::Algorithm;

/// Bound on discovery plus JWKS fetch together.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A key set older than this is refreshed in the background.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// After a failed first load, callers get 503 without a new attempt for this long.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// Discovery documents and key sets larger than this are refused.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// Keys beyond this many in one set are ignored.
const MAX_KEYS: usize = 64;

/// One public key from the provider's JWKS, ready to verify.
#[derive(Debug)]
pub struct VerifyingKey {
    kid: Option<String>,
    /// The JWK's `alg`, when it names one: the key then verifies only that algorithm.
    alg: Option<Algorithm>,
    material: Material,
}

#[derive(Debug)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point `04 || x || y`.
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl VerifyingKey {
    /// Can this key verify `alg`? The key type must be the algorithm's (no HMAC with an RSA
    /// key's bytes, no RSA algorithm with an EC key) and agree with the JWK's own `alg`.
    fn usable_for(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|own| own != alg) {
            return false;
        }
        use Algorithm::*;
        matches!(
            (&self.material, alg),
            (
                Material::Rsa { .. },
                Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512
            ) | (Material::P256(_), Es256)
                | (Material::P384(_), Es384)
                | (Material::Ed25519(_), EdDsa)
        )
    }

    fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> bool {
        use Algorithm::*;
        let rsa = |params: &'static signature::RsaParameters, n: &[u8], e: &[u8]| {
            RsaPublicKeyComponents { n, e }
                .verify(params, message, sig)
                .is_ok()
        };
        match (&self.material, alg) {
            (Material::Rsa { n, e }, Rs256) => rsa(&signature::RSA_PKCS1_2048_8192_SHA256, n, e),
            (Material::Rsa { n, e }, Rs384) => rsa(&signature::RSA_PKCS1_2048_8192_SHA384, n, e),
            (Material::Rsa { n, e }, Rs512) => rsa(&signature::RSA_PKCS1_2048_8192_SHA512, n, e),
            (Material::Rsa { n, e }, Ps256) => rsa(&signature::RSA_PSS_2048_8192_SHA256, n, e),
            (Material::Rsa { n, e }, Ps384) => rsa(&signature::RSA_PSS_2048_8192_SHA384, n, e),
            (Material::Rsa { n, e }, Ps512) => rsa(&signature::RSA_PSS_2048_8192_SHA512, n, e),
            (Material::P256(point), Es256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (Material::P384(point), Es384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (Material::Ed25519(x), EdDsa) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
            _ => false,
        }
    }
}

/// A JWK as far as this verifier reads it; other members (`x5c`, `x5t`, private parts) are
/// ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    key_ops: Option<Vec<String>>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl RawJwk {
    /// The verification key, or None for keys that are not for signatures or not supported.
    fn into_key(self) -> Option<VerifyingKey> {
        if self.usage.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        if self
            .key_ops
            .as_ref()
            .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
        {
            return None;
        }
        let alg = match &self.alg {
            None => None,
            Some(name) => Some(Algorithm::from_name(name)?),
        };
        let bytes = |v: &Option<String>| URL_SAFE_NO_PAD.decode(v.as_deref()?).ok();
        let material = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => {
                let n = bytes(&self.n)?;
                let e = bytes(&self.e)?;
                let n = strip_leading_zeros(n);
                let e = strip_leading_zeros(e);
                if n.is_empty() || e.is_empty() {
                    return None;
                }
                Material::Rsa { n, e }
            }
            ("EC", Some(curve @ ("P-256" | "P-384"))) => {
                let size = if curve == "P-256" { 32 } else { 48 };
                let (x, y) = (bytes(&self.x)?, bytes(&self.y)?);
                if x.len() != size || y.len() != size {
                    return None;
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                if curve == "P-256" {
                    Material::P256(point)
                } else {
                    Material::P384(point)
                }
            }
            ("OKP", Some("Ed25519")) => {
                let x = bytes(&self.x)?;
                if x.len() != 32 {
                    return None;
                }
                Material::Ed25519(x)
            }
            _ => return None,
        };
        Some(VerifyingKey {
            kid: self.kid,
            alg,
            material,
        })
    }
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// Parses a JWKS document into the keys this verifier can use. Keys it cannot use (encryption
/// keys, unsupported types or curves, malformed members) are skipped, not fatal.
pub fn parse_jwks(document: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(document)
        .map_err(|e| format!("the JWKS is not a JSON object with `keys`: {e}"))?;
    Ok(set
        .keys
        .into_iter()
        .take(MAX_KEYS)
        .filter_map(|key| serde_json::from_value::<RawJwk>(key).ok()?.into_key())
        .collect())
}

/// The outcome of looking for a key that verifies a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLookup {
    Verified,
    /// Keys matching `kid` and `alg` exist, and none verifies the signature.
    BadSignature,
    /// No key matches `kid` and `alg`: the provider may have rotated keys.
    NoKey,
}

/// One fetched key set.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
    /// When the set was fetched; None before the first successful fetch (or for fixed keys).
    fetched_at: Option<Instant>,
    /// Increases with every replacement of the set.
    pub generation: u64,
}

impl KeySet {
    /// Verifies a signature with the keys matching `kid` (every key of `alg`'s type when the
    /// token names none).
    pub fn verify(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        message: &[u8],
        sig: &[u8],
    ) -> KeyLookup {
        let mut candidates = self
            .keys
            .iter()
            .filter(|key| key.usable_for(alg) && (kid.is_none() || key.kid.as_deref() == kid))
            .peekable();
        if candidates.peek().is_none() {
            return KeyLookup::NoKey;
        }
        if candidates.any(|key| key.verify(alg, message, sig)) {
            KeyLookup::Verified
        } else {
            KeyLookup::BadSignature
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Where keys come from: the provider (discovery + JWKS over HTTP), or a fixed set.
struct Discovery {
    issuer: String,
    http: reqwest::Client,
}

/// What the single refresher remembers between fetches.
#[derive(Default)]
struct RefreshState {
    jwks_uri: Option<String>,
    /// The last refetch caused by an unknown key (the rate-limited kind).
    last_refetch: Option<Instant>,
    last_failure: Option<Instant>,
}

/// The cached keys of one issuer, shared by every configuration revision that names the same
/// issuer and refetch interval.
pub struct JwksCache {
    source: Option<Discovery>,
    refetch_interval: Duration,
    /// The current set; replaced whole by a fetch, read by every JWT verification.
    keys: RwLock<Arc<KeySet>>,
    /// Held while a fetch runs: the single-flight guard and the refresher's memory.
    refresh: tokio::sync::Mutex<RefreshState>,
    /// Completed fetch attempts (for logs and tests).
    fetches: AtomicU64,
}

impl JwksCache {
    /// Keys discovered from `issuer`. The first fetch starts at once in the background when a
    /// tokio runtime is running.
    pub fn discover(
        issuer: &str,
        http: reqwest::Client,
        refetch_interval: Duration,
    ) -> Arc<JwksCache> {
        let cache = Arc::new(JwksCache {
            source: Some(Discovery {
                issuer: issuer.to_owned(),
                http,
            }),
            refetch_interval,
            keys: RwLock::new(Arc::new(KeySet::default())),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            fetches: AtomicU64::new(0),
        });
        cache.spawn_background_fetch();
        cache
    }

    /// A fixed key set (a JWKS document), never fetched: for embedding, tests and benchmarks.
    pub fn fixed(jwks: &str) -> Result<Arc<JwksCache>, String> {
        let keys = parse_jwks(jwks.as_bytes())?;
        Ok(Arc::new(JwksCache {
            source: None,
            refetch_interval: Duration::MAX,
            keys: RwLock::new(Arc::new(KeySet {
                keys,
                fetched_at: None,
                generation: 1,
            })),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            fetches: AtomicU64::new(0),
        }))
    }

    /// Is this cache fed by the same issuer with the same refetch interval?
    pub fn serves(&self, issuer: &str, refetch_interval: Duration) -> bool {
        self.source.as_ref().is_some_and(|s| s.issuer == issuer)
            && self.refetch_interval == refetch_interval
    }

    /// The current key set, without waiting. A set older than [`MAX_AGE`] is refreshed in the
    /// background meanwhile.
    pub fn current(self: &Arc<Self>) -> Arc<KeySet> {
        let keys = self.snapshot();
        if self.source.is_some() && keys.fetched_at.is_some_and(|at| at.elapsed() > MAX_AGE) {
            self.spawn_background_fetch();
        }
        keys
    }

    /// Completed fetch attempts since this cache was made.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> Arc<KeySet> {
        self.keys.read().expect("poisoned").clone()
    }

    /// A token named a key `seen` does not hold. Refetches (once per refetch interval; callers
    /// arriving during a fetch wait for it) and returns the newest set. Fails with
    /// [`AuthError::KeysUnavailable`] only when no key set could ever be loaded.
    pub async fn refetch_for_unknown_key(&self, seen: &KeySet) -> Result<Arc<KeySet>, AuthError> {
        if self.source.is_none() {
            return Ok(self.snapshot());
        }
        let mut state = match tokio::time::timeout(2 * FETCH_TIMEOUT, self.refresh.lock()).await {
            Ok(state) => state,
            Err(_) => return self.loaded_or_unavailable(),
        };
        let latest = self.snapshot();
        if latest.generation != seen.generation {
            return Ok(latest); // another caller refreshed while we waited
        }
        let now = Instant::now();
        if latest.fetched_at.is_some() {
            if state
                .last_refetch
                .is_some_and(|at| now.duration_since(at) < self.refetch_interval)
            {
                return Ok(latest);
            }
            state.last_refetch = Some(now);
        } else if state
            .last_failure
            .is_some_and(|at| now.duration_since(at) < RETRY_AFTER_FAILURE)
        {
            return Err(AuthError::KeysUnavailable);
        }
        self.fetch_locked(&mut state).await;
        self.loaded_or_unavailable()
    }

    fn loaded_or_unavailable(&self) -> Result<Arc<KeySet>, AuthError> {
        let latest = self.snapshot();
        if latest.fetched_at.is_some() {
            Ok(latest)
        } else {
            Err(AuthError::KeysUnavailable)
        }
    }

    /// Fetches in a background task unless a fetch is already running (first load, stale set).
    fn spawn_background_fetch(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cache = self.clone();
        runtime.spawn(async move {
            let Ok(mut state) = cache.refresh.try_lock() else {
                return; // a fetch is running
            };
            let keys = cache.snapshot();
            let due = match keys.fetched_at {
                None => true,
                Some(at) => at.elapsed() > MAX_AGE,
            };
            if due {
                cache.fetch_locked(&mut state).await;
            }
        });
    }

    /// One bounded fetch (discovery when needed, then the JWKS). On success the set is
    /// replaced; on failure the old one stays and the failure is logged.
    async fn fetch_locked(&self, state: &mut RefreshState) {
        let Some(source) = &self.source else { return };
        let result = tokio::time::timeout(FETCH_TIMEOUT, fetch(source, state))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")));
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(keys) => {
                let mut current = self.keys.write().expect("poisoned");
                tracing::info!(issuer = %source.issuer, keys = keys.len(), "OIDC signing keys fetched");
                *current = Arc::new(KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                    generation: current.generation + 1,
                });
                state.last_failure = None;
            }
            Err(error) => {
                tracing::warn!(issuer = %source.issuer, %error, "cannot fetch the OIDC signing keys");
                state.jwks_uri = None; // discover again next time
                state.last_failure = Some(Instant::now());
            }
        }
    }
}

async fn fetch(source: &Discovery, state: &mut RefreshState) -> Result<Vec<VerifyingKey>, String> {
    let jwks_uri = match &state.jwks_uri {
        Some(uri) => uri.clone(),
        None => {
            let uri = discover(source).await?;
            state.jwks_uri = Some(uri.clone());
            uri
        }
    };
    let document = get_bounded(&source.http, &jwks_uri).await?;
    parse_jwks(&document)
}

/// The `jwks_uri` of the issuer's OpenID Connect discovery document, whose `issuer` must equal
/// the configured one exactly.
async fn discover(source: &Discovery) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Metadata {
        issuer: String,
        jwks_uri: String,
    }
    let url = format!(
        "{}/.well-known/openid-configuration",
        source.issuer.trim_end_matches('/')
    );
    let document = get_bounded(&source.http, &url).await?;
    let metadata: Metadata = serde_json::from_slice(&document)
        .map_err(|e| format!("{url}: not a discovery document with issuer and jwks_uri: {e}"))?;
    if metadata.issuer != source.issuer {
        return Err(format!(
            "{url}: the document names issuer {:?}, not the configured {:?}",
            metadata.issuer, source.issuer
        ));
    }
    let jwks_uri = reqwest::Url::parse(&metadata.jwks_uri)
        .map_err(|e| format!("{url}: jwks_uri is not a URL: {e}"))?;
    let secure_issuer = source.issuer.starts_with("https://");
    match jwks_uri.scheme() {
        "https" => {}
        "http" if !secure_issuer => {}
        _ => return Err(format!("{url}: jwks_uri must be https")),
    }
    Ok(metadata.jwks_uri)
}

/// GET a document of at most [`MAX_DOCUMENT_BYTES`], 200 only (no redirects are followed).
async fn get_bounded(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut response = http
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("{url}: larger than {MAX_DOCUMENT_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    /// An ES256 key pair and its public JWK (ring cannot generate RSA keys; RSA is covered
    /// by the integration tests against a real provider).
    pub(crate) fn es256(kid: &str) -> (EcdsaKeyPair, serde_json::Value) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let point = pair.public_key().as_ref();
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        (pair, jwk)
    }

    #[test]
    fn keys_verify_only_their_own_algorithm_family() {
        let rng = SystemRandom::new();
        let (pair, jwk) = es256("ec-1");
        let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
        let ed_jwk = serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "kid": "ed-1",
            "x": URL_SAFE_NO_PAD.encode(ed.public_key().as_ref()),
        });
        let doc = serde_json::json!({"keys": [
            jwk,
            ed_jwk,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "enc"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
        ]})
        .to_string();
        let set = KeySet {
            keys: parse_jwks(doc.as_bytes()).unwrap(),
            fetched_at: None,
            generation: 1,
        };
        assert_eq!(
            set.len(),
            2,
            "only the EC and Ed25519 signing keys are usable"
        );

        let message = b"header.payload";
        let es_sig = pair.sign(&rng, message).unwrap();
        assert_eq!(
            set.verify(Some("ec-1"), Algorithm::Es256, message, es_sig.as_ref()),
            KeyLookup::Verified
        );
        // Without a kid every key of the algorithm's type is tried.
        assert_eq!(
            set.verify(None, Algorithm::Es256, message, es_sig.as_ref()),
            KeyLookup::Verified
        );
        assert_eq!(
            set.verify(
                Some("ec-1"),
                Algorithm::Es256,
                b"header.tampered",
                es_sig.as_ref()
            ),
            KeyLookup::BadSignature
        );
        // The EC key cannot be used for RS256, and an unknown kid is no key at all.
        assert_eq!(
            set.verify(Some("ec-1"), Algorithm::Rs256, message, es_sig.as_ref()),
            KeyLookup::NoKey
        );
        assert_eq!(
            set.verify(Some("rotated"), Algorithm::Es256, message, es_sig.as_ref()),
            KeyLookup::NoKey
        );
        let ed_sig = ed.sign(message);
        assert_eq!(
            set.verify(Some("ed-1"), Algorithm::EdDsa, message, ed_sig.as_ref()),
            KeyLookup::Verified
        );
        assert_eq!(
            set.verify(Some("ed-1"), Algorithm::Es256, message, ed_sig.as_ref()),
            KeyLookup::NoKey
        );
    }

    #[test]
    fn a_jwk_alg_restricts_its_key() {
        let (_, mut jwk) = es256("ec-1");
        jwk["alg"] = "ES384".into();
        let doc = serde_json::json!({ "keys": [jwk] }).to_string();
        let keys = parse_jwks(doc.as_bytes()).unwrap();
        assert!(!keys[0].usable_for(Algorithm::Es256));
        assert!(parse_jwks(b"{\"keys\": 5}").is_err());
        assert!(parse_jwks(b"[]").is_err());
    }
}
