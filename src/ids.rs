//! Opaque ids and bearer tokens. Pure apart from the random source.

use rand::RngExt;
use sha2::{Digest, Sha256};

/// An opaque id: a short kind prefix and 100 random bits, e.g. `trp_4k2…`.
pub fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut rng = rand::rng();
    let suffix: String = (0..20)
        .map(|_| ALPHABET[rng.random_range(0..32)] as char)
        .collect();
    format!("{prefix}_{suffix}")
}

/// A bearer token: 256 random bits, hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a token, hex. Tokens are 256-bit random, so a plain hash is enough to store
/// and look them up by; the token itself is never stored or logged.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares two secrets (or their hashes) in time that depends only on their length, so
/// a caller cannot learn a prefix by timing the answer.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |difference, (x, y)| difference | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_kind_and_differ() {
        let (a, b) = (new_id("trp"), new_id("trp"));
        assert!(a.starts_with("trp_") && a.len() == 24);
        assert_ne!(a, b);
        assert_eq!(new_token().len(), 64);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
        assert_eq!(token_hash("x"), token_hash("x"));
    }
}
