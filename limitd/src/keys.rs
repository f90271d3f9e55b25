//! Builds every Redis key limitd touches, so their shape is decided in one place.
//!
//! A counter's key is `rl:v2:{<key>}:<kind><window_ms>`: `rl` namespaces the rate limiter, `v2` is
//! the storage version (bump it when the stored layout changes, so old and new limitd never share
//! a key), and the braces form a Redis Cluster hash tag, so a move to Cluster keeps each counter's
//! slot computable from the client key alone. The suffix binds the counter to its parameters:
//! `w` for the window algorithms (fixed and sliding share one layout, so a rule switching between
//! them keeps its counts) or `g` for gcra, and the window. A hit with another window or algorithm
//! for the same client key is another counter: it can neither reset nor poison this one. Keys longer than [`MAX_PLAIN_KEY_BYTES`], containing a
//! brace (which would break the hash tag), or starting with `h:` (the hashed keys' mark, so that no
//! plain key can name a hashed one), are replaced by `h:` and the hex SHA-256 of the key, so what a
//! client can make limitd store stays bounded.

use protocol::{Algorithm, Hit};
use sha2::{Digest, Sha256};

/// The longest client key stored as is; longer ones are hashed.
pub const MAX_PLAIN_KEY_BYTES: usize = 128;

/// The prefix of every counter key: namespace and storage version.
const PREFIX: &str = "rl:v2:";

/// The Redis key of the counter of `hit`: its client key and its parameters.
pub fn counter_key(hit: &Hit) -> String {
    let mut out = tagged_key(&hit.key);
    let kind = match hit.algorithm {
        Algorithm::FixedWindow | Algorithm::SlidingWindow => 'w',
        Algorithm::Gcra => 'g',
    };
    let _ = std::fmt::Write::write_fmt(&mut out, format_args!(":{kind}{}", hit.window_ms));
    out
}

/// `rl:v2:{<key>}`, or `rl:v2:{h:<sha256 hex>}` for a key that cannot stay plain.
fn tagged_key(key: &str) -> String {
    if key.len() <= MAX_PLAIN_KEY_BYTES && !key.contains(['{', '}']) && !key.starts_with("h:") {
        let mut out = String::with_capacity(PREFIX.len() + key.len() + 2);
        out.push_str(PREFIX);
        out.push('{');
        out.push_str(key);
        out.push('}');
        return out;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(PREFIX.len() + 4 + 2 * digest.len());
    out.push_str(PREFIX);
    out.push_str("{h:");
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out.push('}');
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The prefix of every receipt key (see `check.lua`): apart from the counters' prefix, so no
/// client key can name a receipt.
const RECEIPT_PREFIX: &str = "rl:r1:";

/// The Redis key of a check's receipt: `rl:r1:{<hash tag of its first counter>}:<id>`, so it
/// shares a Redis Cluster slot with that counter.
pub fn receipt_key(first_counter: &str, id: u64) -> String {
    let tag = first_counter
        .find('{')
        .map_or(first_counter, |start| &first_counter[start..]);
    let mut out = String::with_capacity(RECEIPT_PREFIX.len() + tag.len() + 17);
    out.push_str(RECEIPT_PREFIX);
    out.push_str(tag);
    out.push(':');
    let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{id:x}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key part of a counter's Redis key, as `tagged_key` makes it.
    fn counter_key(key: &str) -> String {
        tagged_key(key)
    }

    fn hit(key: &str, algorithm: Algorithm, window_ms: u64) -> Hit {
        Hit {
            key: key.into(),
            limit: 10,
            window_ms,
            cost: 1,
            algorithm,
            burst: None,
            shadow: false,
            lease: 0,
        }
    }

    #[test]
    fn a_counter_is_bound_to_its_window_and_algorithm() {
        let fixed = super::counter_key(&hit("login:10.0.0.1", Algorithm::FixedWindow, 60_000));
        assert_eq!(fixed, "rl:v2:{login:10.0.0.1}:w60000");
        // Sliding window shares the layout, and so the counter.
        assert_eq!(
            super::counter_key(&hit("login:10.0.0.1", Algorithm::SlidingWindow, 60_000)),
            fixed
        );
        // Another window or gcra: another counter, in the same hash slot.
        let other_window = super::counter_key(&hit("login:10.0.0.1", Algorithm::FixedWindow, 7));
        let gcra = super::counter_key(&hit("login:10.0.0.1", Algorithm::Gcra, 60_000));
        assert_eq!(other_window, "rl:v2:{login:10.0.0.1}:w7");
        assert_eq!(gcra, "rl:v2:{login:10.0.0.1}:g60000");
    }

    #[test]
    fn receipts_share_their_first_counters_hash_tag() {
        let counter = counter_key("login:10.0.0.1");
        assert_eq!(receipt_key(&counter, 255), "rl:r1:{login:10.0.0.1}:ff");
        assert!(!receipt_key(&counter, 1).starts_with(PREFIX));
    }

    #[test]
    fn short_keys_are_kept_inside_a_hash_tag() {
        assert_eq!(counter_key("login:10.0.0.1"), "rl:v2:{login:10.0.0.1}");
    }

    #[test]
    fn a_key_of_exactly_the_limit_is_kept() {
        let key = "k".repeat(MAX_PLAIN_KEY_BYTES);
        assert_eq!(counter_key(&key), format!("rl:v2:{{{key}}}"));
    }

    #[test]
    fn a_key_over_the_limit_is_hashed() {
        let key = "k".repeat(MAX_PLAIN_KEY_BYTES + 1);
        let stored = counter_key(&key);
        assert!(stored.starts_with("rl:v2:{h:"), "{stored}");
        assert!(stored.ends_with('}'), "{stored}");
        assert_eq!(stored.len(), "rl:v2:{h:}".len() + 64);
    }

    #[test]
    fn the_hash_is_sha256_in_lower_hex() {
        // `printf '%s' '{abc}' | sha256sum`
        assert_eq!(
            counter_key("{abc}"),
            "rl:v2:{h:bcdfc8bcdcd251838393eca16cc5812ee2869fca30d88dd14e25fd50af83f644}"
        );
    }

    #[test]
    fn keys_with_braces_are_hashed_so_the_hash_tag_stays_intact() {
        for key in ["a{b", "a}b", "{x}"] {
            let stored = counter_key(key);
            assert!(stored.starts_with("rl:v2:{h:"), "{key} -> {stored}");
            assert_eq!(stored.matches('{').count(), 1);
            assert_eq!(stored.matches('}').count(), 1);
        }
    }

    #[test]
    fn a_plain_key_cannot_name_a_hashed_one() {
        let long = "k".repeat(MAX_PLAIN_KEY_BYTES + 1);
        let hashed = counter_key(&long);
        // The client key that would be stored as exactly that key, were it kept plain.
        let lookalike = &hashed["rl:v2:{".len()..hashed.len() - 1];
        assert!(lookalike.starts_with("h:"), "{lookalike}");
        assert_ne!(counter_key(lookalike), hashed);
        assert!(counter_key(lookalike).starts_with("rl:v2:{h:"));
        // Keys that merely contain "h:" stay plain.
        assert_eq!(counter_key("auth:h:1"), "rl:v2:{auth:h:1}");
    }

    #[test]
    fn hashing_is_stable_and_distinguishes_keys() {
        let a = "a".repeat(300);
        let b = "b".repeat(300);
        assert_eq!(counter_key(&a), counter_key(&a));
        assert_ne!(counter_key(&a), counter_key(&b));
    }

    #[test]
    fn multibyte_keys_are_measured_in_bytes() {
        // 43 three-byte characters: 129 bytes, over the limit though only 43 chars.
        let key = "€".repeat(43);
        assert!(counter_key(&key).starts_with("rl:v2:{h:"));
        let key = "€".repeat(42);
        assert_eq!(counter_key(&key), format!("rl:v2:{{{key}}}"));
    }
}
