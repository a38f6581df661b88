//! Helpers shared by the audit store's integration tests: the signing key of their chains and
//! the key ring that verifies them.

use std::sync::Arc;

use portcullis_audit::checkpoint::{KeyRing, SigningKeyFile};

/// The key every test chain's checkpoints are signed with.
pub fn signer() -> Arc<SigningKeyFile> {
    Arc::new(SigningKeyFile::from_seed(&[42; 32]))
}

/// A ring holding [`signer`]'s verifying key.
pub fn ring() -> KeyRing {
    let mut ring = KeyRing::new();
    ring.add(signer().verifying_key());
    ring
}
