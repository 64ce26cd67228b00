//! The one place that builds Redis keys.
//!
//! A check's key names one counter; front ends build it as `<policy>:<client>`. The
//! part after the first `:` (the whole key when there is none) is the *tag*: it goes
//! between braces, so Redis Cluster hashes only it, and every policy stacked on one
//! client lands in one slot and is decided by one script.
//!
//! ```text
//! check key "per-client:1.2.3.4"  ->  tollgate:{1.2.3.4}s:per-client   (state)
//!                                     tollgate:{1.2.3.4}l:per-client   (log entries)
//! check key "alice"               ->  tollgate:{alice}s                (state)
//! ```
//!
//! The mapping is one to one: the tag is escaped (`%` as `%25`, `}` as `%7D`, and an
//! empty tag as `%`) so it never closes its braces early and never comes out empty
//! (Redis would then hash the whole key); the prefix may hold no brace, so the first
//! `{` is always the tag's; the letter after the tag tells the state key from the log
//! key; and a policy part is written after a `:` that a key with no policy part lacks.

use std::fmt::Write as _;

/// The two Redis keys of one check: its state and, for `sliding_window_log`, its
/// entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyPair {
    pub state: Vec<u8>,
    pub log: Vec<u8>,
    /// The cluster slot both keys hash to.
    pub slot: u16,
}

/// Splits a check key into (policy part, tag).
fn split(key: &str) -> (Option<&str>, &str) {
    match key.split_once(':') {
        Some((name, client)) => (Some(name), client),
        None => (None, key),
    }
}

fn escaped_tag(tag: &str) -> String {
    if tag.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(tag.len());
    for ch in tag.chars() {
        match ch {
            '%' => out.push_str("%25"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// Builds the keys of `key` under `prefix` (already checked to hold no brace).
pub(crate) fn keys(prefix: &str, key: &str) -> KeyPair {
    let (name, tag) = split(key);
    let tag = escaped_tag(tag);
    let mut state = String::with_capacity(prefix.len() + tag.len() + key.len() + 4);
    let _ = write!(state, "{prefix}{{{tag}}}");
    let mut log = state.clone();
    state.push('s');
    log.push('l');
    if let Some(name) = name {
        state.push(':');
        state.push_str(name);
        log.push(':');
        log.push_str(name);
    }
    KeyPair {
        slot: slot(tag.as_bytes()),
        state: state.into_bytes(),
        log: log.into_bytes(),
    }
}

/// The Redis Cluster hash slot of a hash tag: CRC16 (XMODEM) modulo 16384.
pub(crate) fn slot(tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in tag {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(k: &KeyPair) -> (String, String) {
        (
            String::from_utf8_lossy(&k.state).into_owned(),
            String::from_utf8_lossy(&k.log).into_owned(),
        )
    }

    // Golden bytes: changing them orphans every key in every deployed Redis.
    #[test]
    fn golden_keys() {
        let k = keys("tollgate:", "per-client:1.2.3.4_curl/8.0");
        assert_eq!(
            text(&k),
            (
                "tollgate:{1.2.3.4_curl/8.0}s:per-client".to_owned(),
                "tollgate:{1.2.3.4_curl/8.0}l:per-client".to_owned()
            )
        );
        assert_eq!(
            text(&keys("tollgate:", "alice")),
            (
                "tollgate:{alice}s".to_owned(),
                "tollgate:{alice}l".to_owned()
            )
        );
        assert_eq!(
            text(&keys("p:", "api:a:b")).0,
            "p:{a:b}s:api".to_owned(),
            "only the first colon splits"
        );
        assert_eq!(text(&keys("p:", ":x")).0, "p:{x}s:");
        assert_eq!(text(&keys("p:", "n:")).0, "p:{%}s:n");
        assert_eq!(text(&keys("p:", "")).0, "p:{%}s");
        assert_eq!(text(&keys("p:", "n:a}b%c")).0, "p:{a%7Db%25c}s:n");
    }

    #[test]
    fn one_to_one_on_awkward_keys() {
        let samples = [
            "", ":", "::", "a", ":a", "a:", "a:b", "a::b", "%", "%25", "}", "%7D", "{", "{}",
            "a:{b}", "a:}", "a:%7D", "s", "l", "s:x", "x:s", "é:ü",
        ];
        let mut seen = std::collections::HashSet::new();
        for s in samples {
            let k = keys("t:", s);
            assert_ne!(k.state, k.log);
            assert!(seen.insert(k.state.clone()), "state key of {s:?} collides");
            assert!(seen.insert(k.log.clone()), "log key of {s:?} collides");
        }
    }

    #[test]
    fn policies_of_one_client_share_a_slot() {
        let a = keys("tollgate:", "per-client:10.0.0.1");
        let b = keys("tollgate:", "per-hour:10.0.0.1");
        assert_eq!(a.slot, b.slot);
    }

    #[test]
    fn slot_matches_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"123456789"), 12739);
    }
}
