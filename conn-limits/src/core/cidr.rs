//! IP networks in CIDR notation, for address policies: sip-agent's controllers and trusted
//! proxies, fork-agent's speech destinations. Pure.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Why a string is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    #[error("not an IP address or CIDR (e.g. 10.0.0.5 or 10.0.0.0/8)")]
    NotAnAddress,
    /// The prefix length is not a number within the family's width.
    #[error("prefix length must be 0-{max}")]
    BadPrefix {
        /// 32 or 128.
        max: u8,
    },
    /// Bits set past the prefix (`10.1.0.0/8`): almost always a typo for another network.
    #[error("host bits set past the prefix (did you mean {0}?)")]
    HostBits(String),
}

/// The address an IPv4-mapped IPv6 source really is (a dual-stack socket reports IPv4 peers as
/// `::ffff:a.b.c.d`), so IPv4 rules match them.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        let ones = (!0u128) << (128 - u32::from(prefix));
        ones >> (128 - u32::from(width))
    }
}

impl Cidr {
    /// True when `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if ip.is_ipv4() != self.net.is_ipv4() {
            return false;
        }
        let (a, width) = bits(ip);
        let (n, _) = bits(self.net);
        let m = mask(self.prefix, width);
        a & m == n & m
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net = canonical(
            addr.parse::<IpAddr>()
                .map_err(|_| CidrError::NotAnAddress)?,
        );
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(CidrError::BadPrefix { max }),
            },
        };
        let (n, width) = bits(net);
        if n & !mask(prefix, width) & mask(width, width) != 0 {
            let base = n & mask(prefix, width);
            let base = match net {
                IpAddr::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(base as u32)),
                IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(base)),
            };
            return Err(CidrError::HostBits(format!("{base}/{prefix}")));
        }
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("test cidr")
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c = cidr("10.0.0.0/8");
        assert!(c.contains("10.200.1.2".parse().expect("ip")));
        assert!(!c.contains("11.0.0.1".parse().expect("ip")));
        assert!(
            c.contains("::ffff:10.1.2.3".parse().expect("ip")),
            "v4-mapped"
        );
        assert!(!c.contains("fd00::1".parse().expect("ip")));
        let one = cidr("10.77.1.2");
        assert_eq!(one.to_string(), "10.77.1.2/32");
        assert!(one.contains("10.77.1.2".parse().expect("ip")));
        assert!(!one.contains("10.77.1.3".parse().expect("ip")));
        assert!(cidr("0.0.0.0/0").contains("192.0.2.1".parse().expect("ip")));
        let v6 = cidr("fd77:1::/64");
        assert!(v6.contains("fd77:1::9".parse().expect("ip")));
        assert!(!v6.contains("fd77:2::9".parse().expect("ip")));
        assert_eq!("x".parse::<Cidr>(), Err(CidrError::NotAnAddress));
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::BadPrefix { max: 32 })
        );
        assert_eq!(
            "10.1.0.0/8".parse::<Cidr>(),
            Err(CidrError::HostBits("10.0.0.0/8".into()))
        );
    }
}
