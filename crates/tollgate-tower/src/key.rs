//! [`Key`]: which client a request counts against.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use http::HeaderName;
use http::header::USER_AGENT;
use http::request::Parts;
use ipnet::{IpNet, Ipv6Net};

use crate::error::BuildError;
use crate::forwarded::{self, ProxyHeader};

/// The IPv6 prefix clients are grouped by unless told otherwise: one /64 is what a
/// single subscriber usually gets, and hopping between its addresses is free.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The longest user agent [`Key::client`] keeps as it is; longer ones are hashed.
pub const MAX_AGENT_LEN: usize = 128;

type KeyFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

/// Where a request's rate-limit key comes from.
///
/// The key names the client a policy counts for; the layer sends
/// `"<policy name>:<key>"` to the store. A request whose key cannot be found is
/// answered `400` with a problem+json body naming what was missing, unless a
/// [`fallback`](Key::fallback) is set.
///
/// ```
/// use tollgate_tower::{ClientIp, Key};
///
/// let by_peer = Key::peer_ip();
/// let behind_proxies = Key::client_ip(
///     ClientIp::new().trust(["10.0.0.0/8".parse()?]).ipv6_prefix(56),
/// );
/// let by_api_key = Key::header("x-api-key");
/// let by_user = Key::from_fn(|parts| {
///     parts.uri.path().strip_prefix("/users/").map(|rest| rest.to_owned())
/// });
/// # Ok::<(), ipnet::AddrParseError>(())
/// ```
#[derive(Clone)]
pub struct Key {
    source: Source,
    fallback: Option<String>,
}

#[derive(Clone)]
enum Source {
    Ip(ClientIp),
    Client(ClientIp),
    Header(Result<HeaderName, String>),
    Global,
    Fn(Arc<KeyFn>),
}

impl Key {
    /// The peer's IP address: axum's `ConnectInfo<SocketAddr>` (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`), or a plain
    /// `SocketAddr` or `IpAddr` request extension (insert one per connection when
    /// serving with hyper directly). IPv6 peers are grouped by /64. No header is
    /// believed.
    pub fn peer_ip() -> Self {
        Key::client_ip(ClientIp::new())
    }

    /// The client's IP address as [`ClientIp`] finds it: behind trusted proxies,
    /// IPv6 grouped by a prefix.
    pub fn client_ip(ip: ClientIp) -> Self {
        Key::from_source(Source::Ip(ip))
    }

    /// The seed service's `client` key: `"<ip>_<user agent>"`, with the peer's
    /// address (an absent `User-Agent` counts as empty). A user agent longer than
    /// [`MAX_AGENT_LEN`] bytes is replaced by `#` and 16 hex digits of its 64-bit
    /// FNV-1a hash, so a long but legitimate one does not exceed the key cap.
    pub fn client() -> Self {
        Key::client_with(ClientIp::new())
    }

    /// `"<ip>_<user agent>"` with the address found by `ip`.
    pub fn client_with(ip: ClientIp) -> Self {
        Key::from_source(Source::Client(ip))
    }

    /// The value of the header `name` (an API key, a user id). A request without the
    /// header, or with it twice, has no key. The name is checked when the layer is
    /// built.
    pub fn header(name: &str) -> Self {
        let parsed = HeaderName::try_from(name).map_err(|_| name.to_owned());
        Key::from_source(Source::Header(parsed))
    }

    /// One key for every request: the policy counts all traffic together.
    pub fn global() -> Self {
        Key::from_source(Source::Global)
    }

    /// Any function of the request's head; `None` when the request has no key.
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        Key::from_source(Source::Fn(Arc::new(f)))
    }

    /// Counts requests whose key cannot be found under `key` instead of refusing
    /// them with `400`.
    pub fn fallback(mut self, key: impl Into<String>) -> Self {
        self.fallback = Some(key.into());
        self
    }

    fn from_source(source: Source) -> Self {
        Key {
            source,
            fallback: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        match &self.source {
            Source::Ip(ip) | Source::Client(ip) if ip.ipv6_prefix > 128 => {
                Err(BuildError::Ipv6Prefix(ip.ipv6_prefix))
            }
            Source::Header(Err(name)) => Err(BuildError::HeaderName(name.clone())),
            _ => Ok(()),
        }
    }

    /// The key of this request, or what is missing.
    #[cfg(test)]
    pub(crate) fn extract(&self, parts: &Parts) -> Result<String, Missing> {
        let mut out = String::new();
        self.extract_into(parts, &mut out).map(|()| out)
    }

    /// Appends the key of this request to `out`, or says what is missing (and
    /// leaves `out` as it was).
    pub(crate) fn extract_into(&self, parts: &Parts, out: &mut String) -> Result<(), Missing> {
        let start = out.len();
        let found = match &self.source {
            Source::Ip(ip) => ip.find_into(parts, out),
            Source::Client(ip) => ip.find_into(parts, out).map(|()| {
                out.push('_');
                if let Some(agent) = parts.headers.get(USER_AGENT) {
                    push_agent(out, agent.as_bytes());
                }
            }),
            Source::Header(Ok(name)) => {
                let mut values = parts.headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    // Not lossy: two different byte strings must not share a key.
                    (Some(v), None) if !v.is_empty() => match std::str::from_utf8(v.as_bytes()) {
                        Ok(text) => {
                            out.push_str(text);
                            Ok(())
                        }
                        Err(_) => Err(Missing::Header(name.clone())),
                    },
                    _ => Err(Missing::Header(name.clone())),
                }
            }
            // Refused by `validate` when the layer is built.
            Source::Header(Err(_)) => Err(Missing::Custom),
            Source::Global => {
                out.push_str("global");
                Ok(())
            }
            Source::Fn(f) => f(parts)
                .map(|key| out.push_str(&key))
                .ok_or(Missing::Custom),
        };
        match (found, &self.fallback) {
            (Err(_), Some(fallback)) => {
                out.truncate(start);
                out.push_str(fallback);
                Ok(())
            }
            (Err(missing), None) => {
                out.truncate(start);
                Err(missing)
            }
            (Ok(()), _) => Ok(()),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Key");
        match &self.source {
            Source::Ip(ip) => d.field("ip", ip),
            Source::Client(ip) => d.field("client", ip),
            Source::Header(name) => d.field("header", name),
            Source::Global => d.field("global", &true),
            Source::Fn(_) => d.field("fn", &"<closure>"),
        };
        d.field("fallback", &self.fallback).finish()
    }
}

/// Appends a user agent, or for a long one `#` and its FNV-1a hash: the same in
/// every process and release, since a fleet shares keys through its store.
fn push_agent(out: &mut String, agent: &[u8]) {
    if agent.len() <= MAX_AGENT_LEN {
        out.push_str(&String::from_utf8_lossy(agent));
        return;
    }
    let hash = agent.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    // Writing to a String cannot fail.
    let _ = write!(out, "#{hash:016x}");
}

/// What a request lacked to make a key.
#[derive(Clone, Debug)]
pub(crate) enum Missing {
    PeerAddress,
    Header(HeaderName),
    Custom,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::PeerAddress => f.write_str(
                "the peer address is unknown: serve with axum's `into_make_service_with_connect_info::<SocketAddr>()` or insert a `SocketAddr` request extension",
            ),
            Missing::Header(name) => write!(
                f,
                "the request has no usable {:?} header (it must appear once, non-empty, in UTF-8)",
                name.as_str()
            ),
            Missing::Custom => f.write_str("the request carries no rate-limit key"),
        }
    }
}

/// How the client's IP address is found and grouped.
///
/// By default no proxy is trusted, so the peer address is the client and no header
/// is read: a client cannot pick its own key by sending `X-Forwarded-For`. With
/// [`trust`](ClientIp::trust), a peer inside a trusted range is a proxy; the chain
/// in [`ProxyHeader`] is then walked from the right, skipping trusted hops, and the
/// first untrusted hop is the client.
///
/// IPv4 addresses are keys whole; IPv6 addresses are grouped by a prefix (default
/// /64, [`DEFAULT_IPV6_PREFIX`]) and IPv4-mapped IPv6 addresses count as the IPv4
/// address they map.
#[derive(Clone, Debug)]
pub struct ClientIp {
    trusted: Arc<[IpNet]>,
    header: ProxyHeader,
    ipv6_prefix: u8,
}

impl Default for ClientIp {
    fn default() -> Self {
        ClientIp::new()
    }
}

impl ClientIp {
    /// The peer address; no proxy trusted; IPv6 by /64.
    pub fn new() -> Self {
        ClientIp {
            trusted: Arc::from(Vec::new()),
            header: ProxyHeader::default(),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    /// Believes the forwarding header of peers (and hops) inside these ranges. A
    /// single address is a `/32` or `/128` range.
    pub fn trust(mut self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        let mut list: Vec<IpNet> = self.trusted.iter().copied().collect();
        list.extend(proxies);
        self.trusted = Arc::from(list);
        self
    }

    /// Reads the trusted proxies' chain from this header (default
    /// [`ProxyHeader::XForwardedFor`]).
    pub fn header(mut self, header: ProxyHeader) -> Self {
        self.header = header;
        self
    }

    /// Groups IPv6 clients by their first `bits` bits (0 to 128; 128 keys each
    /// address alone). Checked when the layer is built.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits;
        self
    }

    /// Appends the key for this request: the client's address, grouped.
    fn find_into(&self, parts: &Parts, out: &mut String) -> Result<(), Missing> {
        let peer = peer_addr(parts).ok_or(Missing::PeerAddress)?;
        let ip = forwarded::resolve(peer, &parts.headers, self.header, &self.trusted);
        self.group_into(ip, out);
        Ok(())
    }

    /// `1.2.3.4` for IPv4, `2001:db8:1:2::/64` for IPv6 at /64, the bare address at
    /// /128.
    fn group_into(&self, ip: IpAddr, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = match forwarded::canonical(ip) {
            IpAddr::V4(v4) => {
                push_ipv4(out, v4);
                Ok(())
            }
            IpAddr::V6(v6) if self.ipv6_prefix >= 128 => write!(out, "{v6}"),
            IpAddr::V6(v6) => match Ipv6Net::new(v6, self.ipv6_prefix) {
                Ok(net) => write!(out, "{}", net.trunc()),
                Err(_) => write!(out, "{v6}"),
            },
        };
    }
}

/// Appends `a.b.c.d`, as `Ipv4Addr`'s `Display` writes it, without `core::fmt`
/// (which cost more than the rest of a request's key).
fn push_ipv4(out: &mut String, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// The peer's address from the request's extensions.
fn peer_addr(parts: &Parts) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip());
    }
    if let Some(addr) = parts.extensions.get::<SocketAddr>() {
        return Some(addr.ip());
    }
    parts.extensions.get::<IpAddr>().copied()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::Request;

    fn parts_from(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().uri("/x");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(()).unwrap();
        req.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        req.into_parts().0
    }

    #[test]
    fn ipv6_grouped_by_64_by_default() {
        let p = parts_from("[2001:db8:1:2:aaaa::1]:5000", &[]);
        assert_eq!(Key::peer_ip().extract(&p).unwrap(), "2001:db8:1:2::/64");
        let p = parts_from("[2001:db8:1:2:bbbb::9]:5000", &[]);
        assert_eq!(Key::peer_ip().extract(&p).unwrap(), "2001:db8:1:2::/64");
    }

    #[test]
    fn ipv6_prefix_is_configurable() {
        let p = parts_from("[2001:db8:1:2:aaaa::1]:5000", &[]);
        let k = Key::client_ip(ClientIp::new().ipv6_prefix(48));
        assert_eq!(k.extract(&p).unwrap(), "2001:db8:1::/48");
        let k = Key::client_ip(ClientIp::new().ipv6_prefix(128));
        assert_eq!(k.extract(&p).unwrap(), "2001:db8:1:2:aaaa::1");
        assert!(
            Key::client_ip(ClientIp::new().ipv6_prefix(129))
                .validate()
                .is_err()
        );
    }

    #[test]
    fn ipv4_whole_and_mapped_as_ipv4() {
        let p = parts_from("203.0.113.7:1", &[]);
        assert_eq!(Key::peer_ip().extract(&p).unwrap(), "203.0.113.7");
        let p = parts_from("[::ffff:203.0.113.7]:1", &[]);
        assert_eq!(Key::peer_ip().extract(&p).unwrap(), "203.0.113.7");
    }

    #[test]
    fn ipv4_written_as_display_writes_it() {
        let mut octets = vec![0u8, 1, 9, 10, 11, 99, 100, 101, 199, 200, 249, 250, 255];
        octets.extend((0..=255).step_by(7));
        for &a in &octets {
            for &b in &octets {
                let ip = Ipv4Addr::new(a, b, b.wrapping_add(a), 255 - a);
                let mut out = String::from("k:");
                push_ipv4(&mut out, ip);
                assert_eq!(out, format!("k:{ip}"));
            }
        }
    }

    #[test]
    fn client_key_is_ip_underscore_agent() {
        let p = parts_from("203.0.113.7:1", &[("user-agent", "curl/8.0")]);
        assert_eq!(Key::client().extract(&p).unwrap(), "203.0.113.7_curl/8.0");
        let p = parts_from("203.0.113.7:1", &[]);
        assert_eq!(Key::client().extract(&p).unwrap(), "203.0.113.7_");
    }

    #[test]
    fn long_user_agents_are_hashed_apart() {
        let long_a = "a".repeat(300);
        let long_b = "b".repeat(300);
        let a = Key::client()
            .extract(&parts_from("203.0.113.7:1", &[("user-agent", &long_a)]))
            .unwrap();
        let b = Key::client()
            .extract(&parts_from("203.0.113.7:1", &[("user-agent", &long_b)]))
            .unwrap();
        assert!(a.starts_with("203.0.113.7_#") && a.len() == "203.0.113.7_#".len() + 16);
        assert_ne!(a, b);
        // Golden value: a fleet's nodes must agree, so the hash must never change.
        let mut out = String::new();
        push_agent(&mut out, &[b'x'; MAX_AGENT_LEN + 1]);
        assert_eq!(out, "#78d48e38324d7507");
        let at_limit = "c".repeat(MAX_AGENT_LEN);
        let c = Key::client()
            .extract(&parts_from("203.0.113.7:1", &[("user-agent", &at_limit)]))
            .unwrap();
        assert_eq!(c, format!("203.0.113.7_{at_limit}"));
    }

    #[test]
    fn header_key_once_and_non_empty() {
        let k = Key::header("x-api-key");
        let p = parts_from("1.1.1.1:1", &[("x-api-key", "alice")]);
        assert_eq!(k.extract(&p).unwrap(), "alice");
        let p = parts_from("1.1.1.1:1", &[]);
        assert!(k.extract(&p).is_err());
        let p = parts_from("1.1.1.1:1", &[("x-api-key", "a"), ("x-api-key", "b")]);
        assert!(k.extract(&p).is_err());
        let p = parts_from("1.1.1.1:1", &[]);
        assert_eq!(k.fallback("anon").extract(&p).unwrap(), "anon");
        assert!(Key::header("bad header").validate().is_err());
    }

    #[test]
    fn header_key_keeps_utf8_and_refuses_other_bytes() {
        let k = Key::header("x-api-key");
        let with = |bytes: &[u8]| {
            let mut req = Request::new(());
            req.headers_mut()
                .insert("x-api-key", http::HeaderValue::from_bytes(bytes).unwrap());
            k.extract(&req.into_parts().0)
        };
        assert_eq!(with("café".as_bytes()).unwrap(), "café");
        assert_eq!(with(b"a\tb c").unwrap(), "a\tb c");
        assert!(with(b"caf\xe9").is_err());
    }

    #[test]
    fn no_peer_is_missing_not_a_panic() {
        let (parts, ()) = Request::new(()).into_parts();
        assert!(matches!(
            Key::peer_ip().extract(&parts),
            Err(Missing::PeerAddress)
        ));
        assert_eq!(Key::global().extract(&parts).unwrap(), "global");
    }
}
