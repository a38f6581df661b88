//! Review links for chat: single-use, expiring, bound to one approval and one verdict.
//!
//! A link carries a random 256-bit nonce. The store keeps only `HMAC-SHA256(key, id ‖ verdict ‖
//! nonce)` (the key is shared by the replicas through the store), so a database reader learns no
//! usable link, and a nonce presented for another approval or the other verdict matches nothing.
//! Redeeming a link consumes it atomically and still needs an admin credential with the right
//! role: the link alone decides nothing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::model::Verdict;

/// A fresh nonce: 32 random bytes, base64url without padding (43 characters).
pub fn new_nonce() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh HMAC key (hex), for stores that have none yet.
pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Is `nonce` shaped like one of ours? (Anything else is refused before any lookup.)
pub fn well_formed(nonce: &str) -> bool {
    nonce.len() == 43
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The stored form of a link: hex HMAC over the approval id, the verdict and the nonce, with
/// length prefixes so no two triples share an encoding.
pub fn digest(key: &[u8], approval_id: &str, verdict: Verdict, nonce: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in [approval_id, verdict.as_str(), nonce] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_bind_approval_verdict_and_nonce() {
        let key = b"k";
        let nonce = new_nonce();
        assert!(well_formed(&nonce));
        let d = digest(key, "apr_1", Verdict::Approve, &nonce);
        assert_eq!(d, digest(key, "apr_1", Verdict::Approve, &nonce));
        assert_ne!(d, digest(key, "apr_2", Verdict::Approve, &nonce));
        assert_ne!(d, digest(key, "apr_1", Verdict::Deny, &nonce));
        assert_ne!(d, digest(b"other", "apr_1", Verdict::Approve, &nonce));
        assert_ne!(nonce, new_nonce());
    }

    #[test]
    fn malformed_nonces_are_refused() {
        assert!(!well_formed(""));
        assert!(!well_formed(&"a".repeat(42)));
        assert!(!well_formed(&format!("{}%", "a".repeat(42))));
    }
}
