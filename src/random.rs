//! Random identifiers (boot ids, command ids) without a dependency.
//!
//! std seeds `RandomState` from the operating system's randomness once per
//! process; hashing a counter and the clock through fresh states gives
//! unpredictable 64-bit values, which is all an id needs. Not for keys.

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

/// A random 128-bit id as 32 lowercase hex digits.
pub fn random_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
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
