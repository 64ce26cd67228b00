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
fn push_escaped(out: &mut impl Out, tag: &str) {
    if tag.is_empty() {
        out.put(b"%");
        return;
    }
    if !tag.bytes().any(|b| b == b'%' || b == b'}') {
        out.put(tag.as_bytes());
        return;
    }
    let mut rest = tag.as_bytes();
    while let Some(at) = rest.iter().position(|&b| b == b'%' || b == b'}') {
        out.put(&rest[..at]);
        out.put(if rest[at] == b'%' { b"%25" } else { b"%7D" });
        rest = &rest[at + 1..];
    }
    out.put(rest);
}

/// Where a key is written: a vector, or a command's next argument.
trait Out {
    fn put(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A command's next argument, written in place (no key allocated on the way).
struct Arg<W>(W);

impl<W: std::io::Write> Out for Arg<W> {
    fn put(&mut self, bytes: &[u8]) {
        // A command's buffer is a vector: writing to it cannot fail.
        let _ = self.0.write_all(bytes);
    }
}

fn write(out: &mut impl Out, prefix: &str, key: &str, kind: u8) {
    let (name, tag) = split(key);
    out.put(prefix.as_bytes());
    out.put(b"{");
    push_escaped(out, tag);
    out.put(&[b'}', kind]);
    if let Some(name) = name {
        out.put(b":");
        out.put(name.as_bytes());
    }
}

fn build(prefix: &str, key: &str, kind: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + key.len() + 8);
    write(&mut out, prefix, key, kind);
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

/// Appends [`state_key`] to `cmd` as its next argument, written in place.
pub(crate) fn arg_state_key(cmd: &mut redis::Cmd, prefix: &str, key: &str) {
    use redis::RedisWrite;
    write(&mut Arg(cmd.writer_for_next_arg()), prefix, key, b's');
}

/// Appends [`log_key`] to `cmd` as its next argument, written in place.
pub(crate) fn arg_log_key(cmd: &mut redis::Cmd, prefix: &str, key: &str) {
    use redis::RedisWrite;
    write(&mut Arg(cmd.writer_for_next_arg()), prefix, key, b'l');
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
        assert_eq!(text(&keys("p:", "n:%}")).0, "p:{%25%7D}s:n");
    }

    #[test]
    fn keys_written_in_place_are_the_same() {
        use redis::RedisWrite;
        for key in ["", "a", "api:alice", "n:a}b%c", ":x", "é:ü%"] {
            let mut cmd = redis::cmd("X");
            arg_state_key(&mut cmd, "t:", key);
            arg_log_key(&mut cmd, "t:", key);
            cmd.write_arg(b"after");
            let args: Vec<Vec<u8>> = cmd
                .args_iter()
                .map(|a| match a {
                    redis::Arg::Simple(v) => v.to_vec(),
                    _ => Vec::new(),
                })
                .collect();
            assert_eq!(
                args,
                vec![
                    b"X".to_vec(),
                    state_key("t:", key),
                    log_key("t:", key),
                    b"after".to_vec()
                ],
                "{key:?}"
            );
        }
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
