//! Which peers a client may reach through its relay (RFC 8656 §9.1 leaves the policy to the
//! server; this follows coturn's denied-peer-ip / allowed-peer-ip).
//!
//! Role: parse and match IP ranges, and decide for CreatePermission and ChannelBind whether a
//! peer address is allowed.
//! Inputs: [`ServerConfig`]'s `allowed_peers`, `denied_peers`, `allow_private_peers` and
//! `server_addresses`, plus the relay addresses in use (`Server::own_ips`).
//! Outputs: [`Server::peer_allowed`] (public, for a shell's own checks) and the 403 / 443 error
//! code the request handlers send.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use super::Server;
#[cfg(doc)]
use super::ServerConfig;
use crate::stun::Family;
use crate::TurnError;

/// An inclusive range of IP addresses of one family, written `a`, `a/prefix` or `a-b`
/// (the last as coturn's `denied-peer-ip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    start: IpAddr,
    end: IpAddr,
}

impl IpRange {
    /// A CIDR block. Fails if the prefix is longer than the address.
    pub fn cidr(addr: IpAddr, prefix: u8) -> Result<Self, TurnError> {
        let bits: u32 = if addr.is_ipv4() { 32 } else { 128 };
        if u32::from(prefix) > bits {
            return Err(TurnError::BadIpRange {
                input: format!("{addr}/{prefix}"),
                reason: "prefix longer than the address",
            });
        }
        let host_bits = bits - u32::from(prefix);
        let mask: u128 = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let n = ip_to_u128(addr);
        Ok(IpRange {
            start: u128_to_ip(n & !mask, addr.is_ipv4()),
            end: u128_to_ip(n | mask, addr.is_ipv4()),
        })
    }

    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.start.is_ipv4()
            && (ip_to_u128(self.start)..=ip_to_u128(self.end)).contains(&ip_to_u128(ip))
    }
}

impl FromStr for IpRange {
    type Err = TurnError;

    fn from_str(s: &str) -> Result<Self, TurnError> {
        let bad = |reason| TurnError::BadIpRange {
            input: s.to_owned(),
            reason,
        };
        let ip = |t: &str| {
            t.trim()
                .parse::<IpAddr>()
                .map_err(|_| bad("not an IP address"))
        };
        if let Some((a, b)) = s.split_once('-') {
            let (start, end) = (ip(a)?, ip(b)?);
            if start.is_ipv4() != end.is_ipv4() {
                return Err(bad("range mixes IPv4 and IPv6"));
            }
            if ip_to_u128(start) > ip_to_u128(end) {
                return Err(bad("range start after end"));
            }
            return Ok(IpRange { start, end });
        }
        if let Some((a, p)) = s.split_once('/') {
            let prefix = p
                .trim()
                .parse::<u8>()
                .map_err(|_| bad("bad prefix length"))?;
            return IpRange::cidr(ip(a)?, prefix);
        }
        let a = ip(s)?;
        Ok(IpRange { start: a, end: a })
    }
}

pub(super) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn u128_to_ip(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// Peers never allowed unless listed in `allowed_peers`: "this host", loopback, link-local,
/// multicast, reserved and broadcast (RFC 6890 special-purpose blocks).
pub(super) const DEFAULT_DENIED: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fe80::/10",
    "ff00::/8",
];

/// Private ranges, denied unless `allow_private_peers` or listed in `allowed_peers`
/// (RFC 1918, RFC 6598 shared address space, RFC 4193 unique local).
pub(super) const PRIVATE_RANGES: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

pub(super) fn ranges(list: &[&str]) -> Vec<IpRange> {
    list.iter()
        .map(|s| s.parse().expect("invariant: built-in ranges parse"))
        .collect()
}

impl Server {
    /// Checks a peer address for CreatePermission / ChannelBind: 443 on family mismatch,
    /// 403 when denied. Returns the error code to send.
    pub(super) fn check_peer(&self, relay: SocketAddr, peer: SocketAddr) -> Option<u16> {
        if Family::of(canonical(peer.ip())) != Family::of(relay.ip()) {
            return Some(443);
        }
        if !self.peer_allowed(peer.ip()) {
            return Some(403);
        }
        None
    }

    /// Denied-peer policy, in the spirit of coturn's denied-peer-ip / allowed-peer-ip.
    pub fn peer_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.own_ips.contains(&ip) {
            return false;
        }
        if self.config.allowed_peers.iter().any(|r| r.contains(ip)) {
            return true;
        }
        if self.config.denied_peers.iter().any(|r| r.contains(ip))
            || self.default_denied.iter().any(|r| r.contains(ip))
        {
            return false;
        }
        self.config.allow_private_peers || !self.private.iter().any(|r| r.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn permissions_deny_special_and_private_peers() {
        let mut f = fx();
        f.allocate("turnuser", "cisco");
        for denied in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.1.1",
            "0.1.2.3",
            "198.51.100.1",
            "224.0.0.5",
        ] {
            let r = f.authed(Method::CREATE_PERMISSION, &[peer_perm(denied)]);
            assert_eq!(r.code, Some(403), "{denied}");
        }
        let r = f.authed(Method::CREATE_PERMISSION, &[peer_perm("::1")]);
        assert_eq!(r.code, Some(443), "IPv6 peer on an IPv4 relay");
        let r = f.authed(Method::CREATE_PERMISSION, &[]);
        assert_eq!(r.code, Some(400));
        // One denied peer among allowed ones installs nothing.
        let r = f.authed(
            Method::CREATE_PERMISSION,
            &[peer_perm("192.0.2.7"), peer_perm("10.0.0.1")],
        );
        assert_eq!(r.code, Some(403));
        assert_eq!(f.server.status().permissions, 0);
        let r = f.authed(Method::CREATE_PERMISSION, &[peer_perm("192.0.2.7")]);
        assert_eq!(r.class, Class::Success);
        assert_eq!(f.server.status().permissions, 1);
    }

    #[test]
    fn allowed_peers_override_defaults_but_not_own_addresses() {
        let mut cfg = config();
        cfg.allowed_peers = vec!["172.16.85.0/24".parse().expect("range")];
        cfg.denied_peers = vec!["192.0.2.10-192.0.2.20".parse().expect("range")];
        cfg.server_addresses
            .push("172.16.85.168".parse().expect("ip"));
        let f = fx_with(cfg, PortRangeAllocator::DEFAULT_PORTS);
        let ok = |s: &str| f.server.peer_allowed(s.parse().expect("ip"));
        assert!(ok("172.16.85.180"), "CMS behind the Expressway-E");
        assert!(!ok("172.16.85.168"), "the server itself");
        assert!(!ok("172.16.86.1"));
        assert!(!ok("192.0.2.15"));
        assert!(ok("192.0.2.21"));
        assert!(!ok("::ffff:127.0.0.1"), "IPv4-mapped loopback");
        let mut cfg = config();
        cfg.allow_private_peers = true;
        let f = fx_with(cfg, PortRangeAllocator::DEFAULT_PORTS);
        assert!(f.server.peer_allowed("10.0.0.1".parse().expect("ip")));
        assert!(!f.server.peer_allowed("127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn ip_range_parsing() {
        let r: IpRange = "10.0.0.0/8".parse().expect("cidr");
        assert!(r.contains("10.255.255.255".parse().expect("ip")));
        assert!(!r.contains("11.0.0.0".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("1.2.3.4-::1".parse::<IpRange>().is_err());
        assert!("1.2.3.5-1.2.3.4".parse::<IpRange>().is_err());
        assert!("nonsense".parse::<IpRange>().is_err());
        let all: IpRange = "::/0".parse().expect("cidr");
        assert!(all.contains("2001:db8::1".parse().expect("ip")));
        assert!(!all.contains("1.2.3.4".parse().expect("ip")));
    }
}
