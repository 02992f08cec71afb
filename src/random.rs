//! Random values: identifiers (boot ids, command ids) and secrets (join
//! token secrets, certificate serial numbers).
//!
//! Secrets and ids come from the operating system's randomness through ring
//! (linked for TLS anyway). Boot ids only need to differ between runs:
//! std seeds `RandomState` from the same source once per process, and
//! hashing a counter and the clock through fresh states is cheap.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A random, non-zero 64-bit value.
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_i64(crate::time::now_unix_ms());
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// `N` bytes from the operating system's randomness (getrandom). Should
/// the kernel refuse (it does not, once booted), the bytes come from the
/// hashed source of [`random_u64`] instead of failing the caller.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut out).is_err() {
        for chunk in out.chunks_mut(8) {
            let v = random_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    out
}

/// A random 128-bit id as 32 lowercase hex digits.
pub fn random_id() -> String {
    crate::digest::hex(&random_bytes::<16>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_and_are_hex() {
        let a = random_id();
        let b = random_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
