//! The hops a request passed through, read from `X-Forwarded-For` or RFC 7239
//! `Forwarded`, and the walk that finds the client behind trusted proxies.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;

/// Which header trusted proxies record the client's address in.
///
/// Only one is read: a proxy that appends to `X-Forwarded-For` usually passes a
/// client's own `Forwarded` header through untouched, so believing both would let a
/// client pick its address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyHeader {
    /// `X-Forwarded-For: <client>, <proxy1>, <proxy2>` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=<client>, for=<proxy1>`; only the `for` parameters
    /// are read.
    Forwarded,
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Canonical form for matching and keys: an IPv4-mapped IPv6 address is the IPv4
/// address it maps.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The client address: `peer` itself unless `peer` is trusted; then the chain
/// recorded in `header` is walked from the right (the hop nearest to us), skipping
/// trusted hops, and the first untrusted hop is the client.
///
/// When every hop is trusted the leftmost one is the client. When a hop cannot be
/// read (`unknown`, an obfuscated name, garbage), the walk stops there and the last
/// trusted hop read is the client: a trusted proxy wrote that entry, and nothing to
/// its left can be believed.
pub(crate) fn resolve(
    peer: IpAddr,
    headers: &HeaderMap,
    header: ProxyHeader,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = match header {
        ProxyHeader::XForwardedFor => xff_hops(headers),
        ProxyHeader::Forwarded => forwarded_hops(headers),
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) => {
                client = canonical(ip);
                if !is_trusted(&client) {
                    return client;
                }
            }
            None => return client,
        }
    }
    client
}

/// Every `X-Forwarded-For` entry, left to right over all the header's lines; `None`
/// for an entry that is not an address.
fn xff_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        let Ok(text) = value.to_str() else {
            hops.push(None);
            continue;
        };
        hops.extend(text.split(',').map(|entry| parse_node(entry.trim())));
    }
    hops
}

/// Every `Forwarded` element's `for` parameter, left to right; `None` for an
/// element without a readable address.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(FORWARDED) {
        let Ok(text) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for element in split_outside_quotes(text, ',') {
            let node = split_outside_quotes(element, ';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| value.trim())
            });
            hops.push(node.and_then(|v| parse_node(unquote(v))));
        }
    }
    hops
}

/// Splits on `sep` where it is not inside a quoted string.
fn split_outside_quotes(text: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            if escaped {
                escaped = false;
            } else if quoted && c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = !quoted;
            } else if c == sep && !quoted {
                rest = Some(&s[i + c.len_utf8()..]);
                return Some(&s[..i]);
            }
        }
        rest = None;
        Some(s)
    })
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:8080`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = node.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    node.strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .and_then(|n| n.parse::<IpAddr>().ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_sends() {
        let h = headers("x-forwarded-for", &["1.2.3.4"]);
        let got = resolve(ip("10.0.0.1"), &h, ProxyHeader::XForwardedFor, &[]);
        assert_eq!(got, ip("10.0.0.1"));
    }

    #[test]
    fn walks_from_the_right_skipping_trusted_hops() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client forged the leftmost entry; the first untrusted hop from the right
        // is what our proxies saw.
        let h = headers("x-forwarded-for", &["6.6.6.6, 1.2.3.4", "10.0.0.7"]);
        let got = resolve(ip("10.0.0.1"), &h, ProxyHeader::XForwardedFor, &trusted);
        assert_eq!(got, ip("1.2.3.4"));
    }

    #[test]
    fn all_trusted_gives_the_leftmost() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers("x-forwarded-for", &["10.0.0.9, 10.0.0.8"]);
        let got = resolve(ip("10.0.0.1"), &h, ProxyHeader::XForwardedFor, &trusted);
        assert_eq!(got, ip("10.0.0.9"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers("x-forwarded-for", &["1.2.3.4, unknown, 10.0.0.8"]);
        let got = resolve(ip("10.0.0.1"), &h, ProxyHeader::XForwardedFor, &trusted);
        assert_eq!(got, ip("10.0.0.8"));
    }

    #[test]
    fn no_header_from_a_trusted_peer_is_the_peer() {
        let trusted = nets(&["10.0.0.0/8"]);
        let got = resolve(
            ip("10.0.0.1"),
            &HeaderMap::new(),
            ProxyHeader::XForwardedFor,
            &trusted,
        );
        assert_eq!(got, ip("10.0.0.1"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        assert_eq!(parse_node("1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(parse_node("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("_hidden"), None);
        assert_eq!(canonical(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        // A mapped trusted peer matches an IPv4 range.
        let trusted = nets(&["127.0.0.0/8"]);
        let h = headers("x-forwarded-for", &["5.6.7.8"]);
        let got = resolve(
            ip("::ffff:127.0.0.1"),
            &h,
            ProxyHeader::XForwardedFor,
            &trusted,
        );
        assert_eq!(got, ip("5.6.7.8"));
    }

    #[test]
    fn forwarded_for_parameters() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(
            "forwarded",
            &[
                r#"for="[2001:db8:cafe::17]:4711";proto=https, For=10.0.0.3;by="x,y""#,
                "for=10.0.0.2",
            ],
        );
        let got = resolve(ip("10.0.0.1"), &h, ProxyHeader::Forwarded, &trusted);
        assert_eq!(got, ip("2001:db8:cafe::17"));
        // X-Forwarded-For is not read in Forwarded mode, and the reverse.
        let got = resolve(ip("10.0.0.1"), &h, ProxyHeader::XForwardedFor, &trusted);
        assert_eq!(got, ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_obfuscated_or_missing_for() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers("forwarded", &["for=1.2.3.4, for=_gateway, proto=http"]);
        // "proto=http" has no for: unreadable, so the walk stops at the peer.
        let got = resolve(ip("10.0.0.1"), &h, ProxyHeader::Forwarded, &trusted);
        assert_eq!(got, ip("10.0.0.1"));
    }
}
