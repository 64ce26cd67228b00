//! `server.max_connections_per_client`: how many connections each client has open,
//! so that one client cannot take every `max_connections` place.
//!
//! A client is its address: an IPv4 address, or an IPv6 /64 (one host's or one
//! subscriber's usual allocation, so that a client cannot step around the cap by
//! picking addresses in its own prefix). An IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`, from a dual-stack listener) counts as its IPv4 address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::metrics::counter::Counter;

/// Open connections per client, under a cap.
#[derive(Debug)]
pub struct PerClient {
    cap: usize,
    open: Mutex<HashMap<IpAddr, Open>>,
    refused: Counter,
}

/// One client's connections.
#[derive(Debug, Default)]
struct Open {
    count: usize,
    /// Whether its refusals were logged since it last was under the cap (one log
    /// line per episode, not one per refused connection).
    told: bool,
}

impl PerClient {
    /// A cap of `cap` connections per client (at least 1); `refused` counts the
    /// connections closed because of it.
    pub fn new(cap: usize, refused: Counter) -> PerClient {
        PerClient {
            cap: cap.max(1),
            open: Mutex::new(HashMap::new()),
            refused,
        }
    }

    /// A place for one more connection of the client at `ip`, held until it is
    /// dropped; `None` when the client has `cap` open already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientPlace> {
        let client = client_of(ip);
        let mut open = self.lock();
        let entry = open.entry(client).or_default();
        if entry.count >= self.cap {
            self.refused.inc();
            if !entry.told {
                entry.told = true;
                tracing::warn!(
                    %client,
                    open = entry.count,
                    "a client has server.max_connections_per_client connections open: its new ones are closed until one of them closes"
                );
            }
            return None;
        }
        entry.count += 1;
        Some(ClientPlace {
            clients: Arc::clone(self),
            client,
        })
    }

    /// How many connections the client at `ip` has open.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        self.lock().get(&client_of(ip)).map_or(0, |o| o.count)
    }

    /// Clients with a connection open.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Open>> {
        // The map holds plain counts, whole after any panic.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's place under its client's cap, given back when dropped.
#[derive(Debug)]
pub struct ClientPlace {
    clients: Arc<PerClient>,
    client: IpAddr,
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut open = self.clients.lock();
        if let Some(entry) = open.get_mut(&self.client) {
            entry.count = entry.count.saturating_sub(1);
            if entry.count == 0 {
                // No memory kept for clients gone.
                open.remove(&self.client);
            } else if entry.count < self.clients.cap {
                entry.told = false;
            }
        }
    }
}

/// The client an address belongs to (see the module's documentation).
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            // The /64 the address is in (a prefix length of 64 is always valid).
            None => ipnet::Ipv6Net::new(v6, 64).map_or(ip, |net| IpAddr::V6(net.network())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn a_client_gets_its_cap_and_a_place_back_when_one_closes() {
        let refused = Counter::default();
        let clients = Arc::new(PerClient::new(2, refused.clone()));
        let a = ip("192.0.2.1");
        let first = clients.admit(a).expect("first");
        let _second = clients.admit(a).expect("second");
        assert!(clients.admit(a).is_none(), "a third is over the cap");
        assert!(clients.admit(a).is_none());
        assert_eq!(refused.get(), 2);
        // Another client is not affected.
        let _other = clients.admit(ip("192.0.2.2")).expect("another client");
        drop(first);
        assert_eq!(clients.open(a), 1);
        let _again = clients.admit(a).expect("a place came back");
        assert!(clients.admit(a).is_none());
        assert_eq!(refused.get(), 3);
    }

    #[test]
    fn clients_gone_leave_nothing() {
        let clients = Arc::new(PerClient::new(3, Counter::default()));
        let places: Vec<ClientPlace> = (0..50)
            .map(|i| {
                clients
                    .admit(ip(&format!("10.0.0.{i}")))
                    .expect("under the cap")
            })
            .collect();
        assert_eq!(clients.clients(), 50);
        drop(places);
        assert_eq!(clients.clients(), 0);
    }

    #[test]
    fn ipv6_clients_are_their_64_and_mapped_ipv4_is_ipv4() {
        let clients = Arc::new(PerClient::new(1, Counter::default()));
        let _one = clients.admit(ip("2001:db8:1:2::1")).expect("first");
        assert!(
            clients.admit(ip("2001:db8:1:2:ffff::9")).is_none(),
            "the same /64"
        );
        let _other = clients
            .admit(ip("2001:db8:1:3::1"))
            .expect("another /64 is another client");
        let _v4 = clients.admit(ip("192.0.2.7")).expect("IPv4");
        assert!(
            clients.admit(ip("::ffff:192.0.2.7")).is_none(),
            "the mapped address is the same client"
        );
        assert_eq!(client_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_of(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }
}
