//! Signed checkpoints: Ed25519 signatures over a chain's head.
//!
//! A checkpoint says "chain `chain_id` had `seq` records ending in `head_hash` at `time_us`",
//! signed by the key `key_id`. Written every N records, every T seconds and at shutdown, it pins
//! everything up to `seq`: a rewritten prefix no longer ends in `head_hash`, and a truncated tail
//! ends before `seq`. Records after the last checkpoint are protected by the chain only.
//!
//! Signed bytes (version 1): `b"portcullis-audit-checkpoint-v1\0"`, then `chain_id` as u32
//! big-endian length + UTF-8, `seq` u64 BE, `head_hash` 32 bytes, `time_us` i64 BE, `key_id` as
//! u32 BE length + UTF-8.
//!
//! A *tombstone* is the same statement signed under another domain
//! (`b"portcullis-audit-tombstone-v1\0"`): "records 1..=`seq` of this chain were deleted by
//! retention; record `seq` hashed to `head_hash`". The separate domain means a routine
//! checkpoint can never be passed off as permission to delete a prefix.
//!
//! Keys are parsed here from text (PKCS#8 PEM, or a 32-byte seed as 64 hex digits); reading the
//! file or environment variable is the caller's IO ([`crate::store::keys`]). The key id is the
//! first 16 hex digits of SHA-256 of the public key, so it never needs configuring.

use std::collections::BTreeMap;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chain::Hash;

/// A signed statement about a chain's head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The chain.
    pub chain_id: String,
    /// Seq of the last record covered.
    pub seq: u64,
    /// Hash of the record at `seq`.
    pub head_hash: Hash,
    /// When it was signed, µs since the Unix epoch.
    pub time_us: i64,
    /// Which key signed it.
    pub key_id: String,
    /// Ed25519 signature over [`Checkpoint::signed_bytes`], 128 hex digits.
    pub signature: String,
}

/// What a signature over a chain head means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A checkpoint: the chain had these records.
    Checkpoint,
    /// A tombstone: records up to `seq` were deleted by retention.
    Tombstone,
}

impl Purpose {
    fn domain(self) -> &'static [u8] {
        match self {
            Purpose::Checkpoint => b"portcullis-audit-checkpoint-v1\0",
            Purpose::Tombstone => b"portcullis-audit-tombstone-v1\0",
        }
    }
}

impl Checkpoint {
    /// The bytes a checkpoint's signature covers.
    pub fn signed_bytes(
        chain_id: &str,
        seq: u64,
        head_hash: &Hash,
        time_us: i64,
        key_id: &str,
    ) -> Vec<u8> {
        Self::signed_bytes_for(
            Purpose::Checkpoint,
            chain_id,
            seq,
            head_hash,
            time_us,
            key_id,
        )
    }

    /// The bytes signed for `purpose`.
    pub fn signed_bytes_for(
        purpose: Purpose,
        chain_id: &str,
        seq: u64,
        head_hash: &Hash,
        time_us: i64,
        key_id: &str,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(purpose.domain());
        push_str(&mut out, chain_id);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&head_hash.0);
        out.extend_from_slice(&time_us.to_be_bytes());
        push_str(&mut out, key_id);
        out
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Neither PKCS#8 PEM nor 64 hex digits.
    #[error("audit key: expected a PKCS#8 PEM Ed25519 key or a 32-byte seed as 64 hex digits")]
    Format,
    /// PEM present but not a valid Ed25519 key.
    #[error("audit key: invalid PEM: {0}")]
    Pem(String),
    /// The file or environment variable could not be read.
    #[error("audit key: cannot read {what}: {reason}")]
    Read {
        /// The file path or variable name.
        what: String,
        /// Why.
        reason: String,
    },
}

/// The key id of a public key: first 16 hex digits of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.to_bytes());
    hex::encode(&digest[..8])
}

/// A private signing key with its id.
pub struct SigningKeyFile {
    key: SigningKey,
    id: String,
}

impl std::fmt::Debug for SigningKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyFile")
            .field("id", &self.id)
            .field("key", &"***")
            .finish()
    }
}

impl SigningKeyFile {
    /// From a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let id = key_id(&key.verifying_key());
        Self { key, id }
    }

    /// Parses PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) or a 64-hex-digit seed.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            let key = SigningKey::from_pkcs8_pem(text).map_err(|e| KeyError::Pem(e.to_string()))?;
            let id = key_id(&key.verifying_key());
            return Ok(Self { key, id });
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text, &mut seed).map_err(|_| KeyError::Format)?;
        Ok(Self::from_seed(&seed))
    }

    /// The key id checkpoints carry.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs a checkpoint over the given head.
    pub fn sign(&self, chain_id: &str, seq: u64, head_hash: Hash, time_us: i64) -> Checkpoint {
        self.sign_for(Purpose::Checkpoint, chain_id, seq, head_hash, time_us)
    }

    /// Signs a tombstone: records `1..=seq` deleted, record `seq` hashed to `head_hash`.
    pub fn sign_tombstone(
        &self,
        chain_id: &str,
        seq: u64,
        head_hash: Hash,
        time_us: i64,
    ) -> Checkpoint {
        self.sign_for(Purpose::Tombstone, chain_id, seq, head_hash, time_us)
    }

    fn sign_for(
        &self,
        purpose: Purpose,
        chain_id: &str,
        seq: u64,
        head_hash: Hash,
        time_us: i64,
    ) -> Checkpoint {
        let bytes =
            Checkpoint::signed_bytes_for(purpose, chain_id, seq, &head_hash, time_us, &self.id);
        let signature = self.key.sign(&bytes);
        Checkpoint {
            chain_id: chain_id.to_owned(),
            seq,
            head_hash,
            time_us,
            key_id: self.id.clone(),
            signature: hex::encode(signature.to_bytes()),
        }
    }
}

/// Public keys trusted for verification, by key id.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, VerifyingKey>,
}

/// Why a checkpoint signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Valid signature by a trusted key.
    Valid,
    /// The key id is not in the ring.
    UnknownKey,
    /// Malformed or wrong signature.
    Invalid,
}

impl KeyRing {
    /// An empty ring (signatures cannot be checked).
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Trusts a public key.
    pub fn add(&mut self, key: VerifyingKey) {
        self.keys.insert(key_id(&key), key);
    }

    /// Trusts the key(s) in `text`: a private key as [`SigningKeyFile::parse`] accepts, or a
    /// public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn add_text(&mut self, text: &str) -> Result<(), KeyError> {
        let trimmed = text.trim();
        if trimmed.starts_with("-----BEGIN PUBLIC KEY-----") {
            let key = VerifyingKey::from_public_key_pem(trimmed)
                .map_err(|e| KeyError::Pem(e.to_string()))?;
            self.add(key);
            return Ok(());
        }
        let signer = SigningKeyFile::parse(trimmed)?;
        self.add(signer.verifying_key());
        Ok(())
    }

    /// Checks a checkpoint's signature.
    pub fn check(&self, cp: &Checkpoint) -> SignatureCheck {
        self.check_for(Purpose::Checkpoint, cp)
    }

    /// Checks a signature made for `purpose` (a tombstone does not verify as a checkpoint, nor
    /// the other way round).
    pub fn check_for(&self, purpose: Purpose, cp: &Checkpoint) -> SignatureCheck {
        let Some(key) = self.keys.get(&cp.key_id) else {
            return SignatureCheck::UnknownKey;
        };
        let mut raw = [0u8; 64];
        if hex::decode_to_slice(&cp.signature, &mut raw).is_err() {
            return SignatureCheck::Invalid;
        }
        let signature = Signature::from_bytes(&raw);
        let bytes = Checkpoint::signed_bytes_for(
            purpose,
            &cp.chain_id,
            cp.seq,
            &cp.head_hash,
            cp.time_us,
            &cp.key_id,
        );
        match key.verify_strict(&bytes, &signature) {
            Ok(()) => SignatureCheck::Valid,
            Err(_) => SignatureCheck::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    #[test]
    fn sign_then_verify_and_forgeries_fail() {
        let signer = SigningKeyFile::parse(SEED).unwrap();
        let mut ring = KeyRing::new();
        ring.add_text(SEED).unwrap();
        let cp = signer.sign("c", 10, Hash([7; 32]), 1234);
        assert_eq!(ring.check(&cp), SignatureCheck::Valid);
        let mut forged = cp.clone();
        forged.seq = 11;
        assert_eq!(ring.check(&forged), SignatureCheck::Invalid);
        let mut other = cp.clone();
        other.key_id = "0011223344556677".into();
        assert_eq!(ring.check(&other), SignatureCheck::UnknownKey);
    }

    #[test]
    fn checkpoints_and_tombstones_do_not_verify_as_each_other() {
        let signer = SigningKeyFile::parse(SEED).unwrap();
        let mut ring = KeyRing::new();
        ring.add(signer.verifying_key());
        let cp = signer.sign("c", 10, Hash([7; 32]), 1);
        let tomb = signer.sign_tombstone("c", 10, Hash([7; 32]), 1);
        assert_eq!(ring.check(&cp), SignatureCheck::Valid);
        assert_eq!(
            ring.check_for(Purpose::Tombstone, &tomb),
            SignatureCheck::Valid
        );
        assert_eq!(
            ring.check_for(Purpose::Tombstone, &cp),
            SignatureCheck::Invalid
        );
        assert_eq!(ring.check(&tomb), SignatureCheck::Invalid);
    }

    #[test]
    fn pem_and_hex_seed_give_the_same_key() {
        // RFC 8410 section 10.3 example private key.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let from_pem = SigningKeyFile::parse(pem).unwrap();
        let from_hex = SigningKeyFile::parse(
            "d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842",
        )
        .unwrap();
        assert_eq!(from_pem.key_id(), from_hex.key_id());
        assert!(matches!(
            SigningKeyFile::parse("nope"),
            Err(KeyError::Format)
        ));
    }
}
