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

/// Splits a check key into (policy part, tag).
fn split(key: &str) -> (Option<&str>, &str) {
    match key.split_once(':') {
        Some((name, client)) => (Some(name), client),
        None => (None, key),
    }
}

/// Appends the escaped tag. `%` and `}` are ASCII, so escaping bytes is escaping
/// characters: no byte of a multi-byte UTF-8 character equals either.
fn push_escaped(out: &mut Vec<u8>, tag: &str) {
    if tag.is_empty() {
        out.push(b'%');
        return;
    }
    if !tag.bytes().any(|b| b == b'%' || b == b'}') {
        out.extend_from_slice(tag.as_bytes());
        return;
    }
    for b in tag.bytes() {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b'}' => out.extend_from_slice(b"%7D"),
            other => out.push(other),
        }
    }
}

fn build(prefix: &str, key: &str, kind: u8) -> Vec<u8> {
    let (name, tag) = split(key);
    let mut out = Vec::with_capacity(prefix.len() + key.len() + 8);
    out.extend_from_slice(prefix.as_bytes());
    out.push(b'{');
    push_escaped(&mut out, tag);
    out.push(b'}');
    out.push(kind);
    if let Some(name) = name {
        out.push(b':');
        out.extend_from_slice(name.as_bytes());
    }
    out
}

/// The Redis key holding `key`'s state, under `prefix` (checked to hold no brace).
pub(crate) fn state_key(prefix: &str, key: &str) -> Vec<u8> {
    build(prefix, key, b's')
}

/// The Redis key holding `key`'s sliding-window log entries.
pub(crate) fn log_key(prefix: &str, key: &str) -> Vec<u8> {
    build(prefix, key, b'l')
}

/// The cluster slot of both of `key`'s Redis keys.
pub(crate) fn slot_of(key: &str) -> u16 {
    let (_, tag) = split(key);
    let mut escaped = Vec::with_capacity(tag.len() + 2);
    push_escaped(&mut escaped, tag);
    slot(&escaped)
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

    struct KeyPair {
        state: Vec<u8>,
        log: Vec<u8>,
        slot: u16,
    }

    fn keys(prefix: &str, key: &str) -> KeyPair {
        KeyPair {
            state: state_key(prefix, key),
            log: log_key(prefix, key),
            slot: slot_of(key),
        }
    }

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
