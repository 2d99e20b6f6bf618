//! Who may send what to the B2BUA: the dialog-source rule for in-dialog requests and the
//! controller rule for fork requests (docs/security.md, "Dialog and fork-request
//! authorization").
//!
//! Role: pure policy. Inputs are the transport peer a request came from (the shell's [`Peer`]),
//! the names the shell read from that connection's verified TLS certificate (kept in
//! [`PeerIdentities`] between [`PeerIdentities::connected`] and [`PeerIdentities::closed`]), and
//! the dialog's peer and remote target. Outputs are yes/no answers; the B2BUA turns a "no" into
//! 403 and counts it in [`SecurityCounters`]. No I/O, no clock.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::core::transaction::{Peer, Transport};

pub use conn_limits::core::cidr::{canonical, Cidr, CidrError};

/// True for transports that authenticate the peer's connection (TLS, secure WebSocket).
pub fn is_secure(t: Transport) -> bool {
    matches!(t, Transport::Tls | Transport::Wss)
}

/// The `[security]` policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Proxies that front dialog peers: an in-dialog request from one of these is accepted for
    /// any dialog whose Call-ID and both tags it matches (the proxy vouches for its side).
    pub trusted_proxies: Vec<Cidr>,
    /// Transport sources whose fork requests are acted on (any transport).
    pub controllers: Vec<Cidr>,
    /// Certificate names (subject CN or DNS SAN, compared ASCII case-insensitively) whose fork
    /// requests are acted on when they arrive over TLS.
    pub controller_tls_names: Vec<String>,
}

impl Policy {
    /// True when `ip` is a configured trusted proxy.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// True when a fork request from `peer`, whose connection presented a certificate naming
    /// `tls_names` (empty when none), may be acted on.
    pub fn is_controller(&self, peer: Peer, tls_names: &[String]) -> bool {
        if self.controllers.iter().any(|c| c.contains(peer.addr.ip())) {
            return true;
        }
        is_secure(peer.transport)
            && tls_names.iter().any(|n| {
                self.controller_tls_names
                    .iter()
                    .any(|w| w.eq_ignore_ascii_case(n))
            })
    }

    /// The dialog-source rule: a request that matched a dialog's Call-ID and both tags is
    /// accepted only from that leg's transport peer (its IP; ports are not compared because
    /// endpoints send from ephemeral ports over TCP and TLS), from the IP literal of the leg's
    /// remote target (a callee that sends its BYE straight from its Contact address), or from a
    /// trusted proxy. A leg set up over TLS accepts requests only over a secure transport.
    pub fn dialog_source_allowed(&self, leg_peer: Peer, remote_target: &str, from: Peer) -> bool {
        if is_secure(leg_peer.transport) && !is_secure(from.transport) {
            return false;
        }
        let ip = canonical(from.addr.ip());
        ip == canonical(leg_peer.addr.ip())
            || uri_ip(remote_target).is_some_and(|t| canonical(t) == ip)
            || self.is_trusted_proxy(ip)
    }
}

/// The host of a SIP URI when it is an IP literal (`sip:alice@10.0.0.5:5060;transport=tcp`,
/// `sip:[fd00::5]:5070`); `None` for a domain name or an unreadable URI.
pub fn uri_ip(uri: &str) -> Option<IpAddr> {
    let uri = uri.trim();
    let (scheme, rest) = uri.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return None;
    }
    let hostport = rest.split_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split([';', '?', '>']).next().unwrap_or(hostport);
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split_once(']')?.0.parse().ok();
    }
    hostport
        .split(':')
        .next()
        .and_then(|h| h.parse::<std::net::Ipv4Addr>().ok())
        .map(IpAddr::from)
}

/// Requests refused by the policy since start (monotonic; shown by `sip-agent ctl show
/// security` and as Prometheus counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SecurityCounters {
    /// In-dialog requests and CANCELs that matched a dialog (or INVITE transaction) but came
    /// from neither the leg's peer nor a trusted proxy: answered 403.
    pub forbidden_dialog_source: u64,
    /// Fork requests (INFO or re-INVITE with fork JSON) from a dialog party that is not a
    /// configured controller: answered 403, not acted on.
    pub forbidden_fork_request: u64,
}

/// Names from the verified certificate of each live TLS connection, keyed by its transport
/// peer, with the shell's connection id so a late close of an old connection does not forget a
/// newer one from the same address.
#[derive(Debug, Default)]
pub struct PeerIdentities {
    by_peer: HashMap<Peer, (u64, Vec<String>)>,
}

impl PeerIdentities {
    /// Connection `conn` from `peer` presented a certificate naming `names`.
    pub fn connected(&mut self, peer: Peer, conn: u64, names: Vec<String>) {
        self.by_peer.insert(peer, (conn, names));
    }

    /// Connection `conn` from `peer` closed.
    pub fn closed(&mut self, peer: Peer, conn: u64) {
        if self.by_peer.get(&peer).is_some_and(|(c, _)| *c == conn) {
            self.by_peer.remove(&peer);
        }
    }

    /// Names of `peer`'s connection (empty for UDP, plain TCP or no certificate).
    pub fn names(&self, peer: Peer) -> &[String] {
        self.by_peer.get(&peer).map_or(&[], |(_, n)| n.as_slice())
    }

    /// Connections with names (tests).
    pub fn len(&self) -> usize {
        self.by_peer.len()
    }

    /// True when no connection has names.
    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(addr: &str, transport: Transport) -> Peer {
        Peer {
            addr: addr.parse().expect("test address"),
            transport,
        }
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("test cidr")
    }

    #[test]
    fn uri_ip_reads_ip_literals_only() {
        assert_eq!(
            uri_ip("sip:alice@10.0.0.5:5060;transport=tcp"),
            Some("10.0.0.5".parse().expect("ip"))
        );
        assert_eq!(
            uri_ip("sips:[fd00::5]:5061"),
            Some("fd00::5".parse().expect("ip"))
        );
        assert_eq!(
            uri_ip("sip:10.0.0.6"),
            Some("10.0.0.6".parse().expect("ip"))
        );
        assert_eq!(uri_ip("sip:alice@example.com"), None);
        assert_eq!(uri_ip("tel:+15551234"), None);
    }

    #[test]
    fn dialog_source_rule() {
        let p = Policy {
            trusted_proxies: vec![cidr("192.0.2.0/28")],
            ..Policy::default()
        };
        let leg = peer("198.51.100.7:5060", Transport::Udp);
        let target = "sip:alice@198.51.100.8:5070";
        // The leg's peer from another port, the remote target, a trusted proxy: yes.
        for from in ["198.51.100.7:40000", "198.51.100.8:5070", "192.0.2.3:5060"] {
            assert!(
                p.dialog_source_allowed(leg, target, peer(from, Transport::Udp)),
                "{from}"
            );
        }
        // Anyone else: no.
        for from in ["198.51.100.9:5060", "192.0.2.17:5060"] {
            assert!(
                !p.dialog_source_allowed(leg, target, peer(from, Transport::Udp)),
                "{from}"
            );
        }
        // A TLS leg does not take a request over UDP, even from its own peer's address.
        let tls = peer("198.51.100.7:5061", Transport::Tls);
        assert!(!p.dialog_source_allowed(tls, target, peer("198.51.100.7:5060", Transport::Udp)));
        assert!(p.dialog_source_allowed(tls, target, peer("198.51.100.7:41000", Transport::Tls)));
    }

    #[test]
    fn controllers_by_address_or_certificate_name() {
        let p = Policy {
            controllers: vec![cidr("10.77.1.2")],
            controller_tls_names: vec!["cvp.example.com".into()],
            ..Policy::default()
        };
        assert!(p.is_controller(peer("10.77.1.2:5060", Transport::Udp), &[]));
        assert!(!p.is_controller(peer("10.77.1.3:5060", Transport::Udp), &[]));
        let names = vec!["other".to_string(), "CVP.example.com".to_string()];
        assert!(p.is_controller(peer("10.9.9.9:40000", Transport::Tls), &names));
        // Names count only on a TLS connection (a UDP peer has none; defence in depth).
        assert!(!p.is_controller(peer("10.9.9.9:40000", Transport::Udp), &names));
        assert!(!p.is_controller(
            peer("10.9.9.9:40000", Transport::Tls),
            &["cvp.example.org".to_string()]
        ));
    }

    #[test]
    fn identities_follow_connections() {
        let mut ids = PeerIdentities::default();
        let a = peer("10.9.9.9:40000", Transport::Tls);
        ids.connected(a, 1, vec!["cvp".into()]);
        ids.connected(a, 2, vec!["cvp2".into()]);
        ids.closed(a, 1); // the old connection's late close keeps the new one
        assert_eq!(ids.names(a), ["cvp2".to_string()]);
        ids.closed(a, 2);
        assert!(ids.names(a).is_empty() && ids.is_empty());
    }
}
