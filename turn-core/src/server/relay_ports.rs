//! Relay transport addresses: the injected [`RelayAllocator`] and its port-range
//! implementation.
//!
//! Role: hand out and take back relay addresses (RFC 8656 §7.2: unpredictable ports, even port
//! on request). The core never binds sockets; the shell binds one per
//! [`Event::AllocationCreated`](super::Event::AllocationCreated).
//! Inputs: `allocate(family, even_port, rng)` from the Allocate handler, `release(relay)` when an
//! allocation ends.
//! Outputs: a free relay address, or `None` (the handler answers 508 Insufficient Capacity).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;

use rand::RngCore;

#[cfg(doc)]
use super::Event;
use crate::stun::Family;
use crate::TurnError;

/// Hands out relay transport addresses. The shell owns the sockets: it binds one when it sees
/// [`Event::AllocationCreated`] and closes it on [`Event::AllocationDeleted`] (or binds inside
/// `allocate`, if it prefers to fail early).
pub trait RelayAllocator {
    /// Whether relay addresses of `family` exist at all (else 440, RFC 8656 §7.2).
    fn supports(&self, family: Family) -> bool;
    /// A free relay address of `family`, with an even port if asked; `None` means 508.
    fn allocate(
        &mut self,
        family: Family,
        even_port: bool,
        rng: &mut dyn RngCore,
    ) -> Option<SocketAddr>;
    /// Returns an address from `allocate`.
    fn release(&mut self, relay: SocketAddr);
}

/// [`RelayAllocator`] over a port range on one IPv4 and/or one IPv6 relay address. Ports are
/// picked from a random starting point (RFC 8656 §7.2 asks for unpredictable ports).
#[derive(Debug, Clone)]
pub struct PortRangeAllocator {
    ipv4: Option<IpAddr>,
    ipv6: Option<IpAddr>,
    ports: RangeInclusive<u16>,
    in_use: HashSet<SocketAddr>,
}

impl PortRangeAllocator {
    /// The relay port range of the Expressway-style deployment (UDP 24000-29999).
    pub const DEFAULT_PORTS: RangeInclusive<u16> = 24000..=29999;

    /// Relay addresses on `ipv4` / `ipv6` with ports from `ports`.
    pub fn new(
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
        ports: RangeInclusive<u16>,
    ) -> Result<Self, TurnError> {
        if ipv4.is_none() && ipv6.is_none() {
            return Err(TurnError::Config {
                reason: "relay allocator needs an IPv4 or IPv6 relay address",
            });
        }
        if ports.is_empty() || *ports.start() == 0 {
            return Err(TurnError::Config {
                reason: "relay port range is empty or starts at 0",
            });
        }
        Ok(PortRangeAllocator {
            ipv4: ipv4.map(IpAddr::V4),
            ipv6: ipv6.map(IpAddr::V6),
            ports,
            in_use: HashSet::new(),
        })
    }

    /// Relay addresses handed out and not yet released.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }
}

impl RelayAllocator for PortRangeAllocator {
    fn supports(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.ipv4.is_some(),
            Family::V6 => self.ipv6.is_some(),
        }
    }

    fn allocate(
        &mut self,
        family: Family,
        even_port: bool,
        rng: &mut dyn RngCore,
    ) -> Option<SocketAddr> {
        let ip = match family {
            Family::V4 => self.ipv4?,
            Family::V6 => self.ipv6?,
        };
        let first = u32::from(*self.ports.start());
        let count = u32::from(*self.ports.end()) - first + 1;
        let offset = rng.next_u32() % count;
        for i in 0..count {
            let port = (first + (offset + i) % count) as u16;
            if even_port && !port.is_multiple_of(2) {
                continue;
            }
            let addr = SocketAddr::new(ip, port);
            if self.in_use.insert(addr) {
                return Some(addr);
            }
        }
        None
    }

    fn release(&mut self, relay: SocketAddr) {
        self.in_use.remove(&relay);
    }
}
