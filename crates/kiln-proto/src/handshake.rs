//! Mutual authentication with a per-VM secret.
//!
//! The host generates a random secret per VM and hands it to the guest out of band (QEMU
//! `fw_cfg`, never the kernel command line, which every local user can read). Each side sends a
//! fresh nonce and proves knowledge of the secret with `HMAC-SHA256(secret, role || nonce)` over
//! the *other* side's nonce, so a recorded session cannot be replayed and neither end can be
//! impersonated by someone who lacks the secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of a per-VM secret.
pub const SECRET_LEN: usize = 32;

/// Which end computes a proof: the two ends' proofs differ even for the same nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Host,
    Agent,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Host => b"kiln-host-v1",
            Self::Agent => b"kiln-agent-v1",
        }
    }
}

/// The proof that `role` holds `secret`, bound to the peer's `nonce`.
pub fn proof(secret: &[u8], role: Role, nonce: &[u8; 32]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(role.label());
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

/// Checks a proof in constant time.
pub fn verify(secret: &[u8], role: Role, nonce: &[u8; 32], proof: &[u8; 32]) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(role.label());
    mac.update(nonce);
    mac.verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_verifies_only_with_same_secret_role_and_nonce() {
        let nonce = [9u8; 32];
        let p = proof(b"secret", Role::Host, &nonce);
        assert!(verify(b"secret", Role::Host, &nonce, &p));
        assert!(!verify(b"other", Role::Host, &nonce, &p));
        assert!(!verify(b"secret", Role::Agent, &nonce, &p));
        assert!(!verify(b"secret", Role::Host, &[8u8; 32], &p));
    }
}
