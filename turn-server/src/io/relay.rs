//! Relay port allocation that binds the socket up front.
//!
//! Role: a [`RelayAllocator`] for turn-core that picks a port with turn-core's
//! [`PortRangeAllocator`] and binds a UDP socket on it before handing the address to the core,
//! so an Allocate only succeeds with a relay socket that really exists (a port held by another
//! program is skipped instead of producing a success for an unusable relay).
//! Inputs: `allocate`/`release` calls from the core (inside `handle_stun` / `handle_timeout`).
//! Outputs: bound, non-blocking `std::net::UdpSocket`s left in a [`BoundRelays`] stash, which the
//! shell takes when it sees `Event::AllocationCreated` for that address.
//! Call order: the core calls `allocate` then emits `AllocationCreated`; the shell calls
//! [`BoundRelays::take`] while draining that event. `release` drops a socket not yet taken.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
};

use rand::RngCore;
use tracing::warn;
use turn_core::{stun::Family, PortRangeAllocator, RelayAllocator};

/// Ports tried per Allocate before answering 508 when binds keep failing (ports used by other
/// programs). Bounded so a range full of foreign sockets cannot stall the core.
const BIND_ATTEMPTS: usize = 32;

/// Sockets bound by the allocator and not yet taken by the shell.
///
/// Shared between the allocator (owned by the core) and the shell. Both live in the one task
/// that owns the core, so the mutex is never contended; it only satisfies `Send` for the
/// core's `Box<dyn RelayAllocator + Send>`.
#[derive(Debug, Clone, Default)]
pub struct BoundRelays(Arc<Mutex<HashMap<SocketAddr, UdpSocket>>>);

impl BoundRelays {
    /// Takes the socket bound for `relay`, if any.
    pub fn take(&self, relay: SocketAddr) -> Option<UdpSocket> {
        self.lock().remove(&relay)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, UdpSocket>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map stays usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// [`RelayAllocator`] that binds while allocating.
#[derive(Debug)]
pub struct BindingAllocator {
    ports: PortRangeAllocator,
    bound: BoundRelays,
}

impl BindingAllocator {
    /// Wraps `ports`; bound sockets go to `bound`.
    pub fn new(ports: PortRangeAllocator, bound: BoundRelays) -> Self {
        BindingAllocator { ports, bound }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

impl RelayAllocator for BindingAllocator {
    fn supports(&self, family: Family) -> bool {
        self.ports.supports(family)
    }

    fn allocate(
        &mut self,
        family: Family,
        even_port: bool,
        rng: &mut dyn RngCore,
    ) -> Option<SocketAddr> {
        let mut failed = Vec::new();
        let mut got = None;
        for _ in 0..BIND_ATTEMPTS {
            let Some(addr) = self.ports.allocate(family, even_port, rng) else {
                break;
            };
            match bind(addr) {
                Ok(sock) => {
                    self.bound.lock().insert(addr, sock);
                    got = Some(addr);
                    break;
                }
                Err(e) => {
                    warn!(%addr, error = %e, "relay port unusable, trying another");
                    failed.push(addr);
                }
            }
        }
        // Give failed ports back only now, so one Allocate does not pick them again.
        for addr in failed {
            self.ports.release(addr);
        }
        got
    }

    fn release(&mut self, relay: SocketAddr) {
        self.bound.lock().remove(&relay);
        self.ports.release(relay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_binds_refuses_busy_ports_and_release_frees() {
        let busy = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = busy.local_addr().expect("addr");
        let ports = PortRangeAllocator::new(
            Some("127.0.0.1".parse().expect("ip")),
            None,
            addr.port()..=addr.port(),
        )
        .expect("range");
        let bound = BoundRelays::default();
        let mut a = BindingAllocator::new(ports, bound.clone());
        let mut rng = rand::rngs::mock::StepRng::new(0, 0);
        // The only port is held by another socket: no relay rather than a dead one.
        assert_eq!(a.allocate(Family::V4, false, &mut rng), None);
        drop(busy);
        // The failed port went back to the pool and binds now.
        assert_eq!(a.allocate(Family::V4, false, &mut rng), Some(addr));
        let sock = bound.take(addr).expect("socket stashed");
        assert_eq!(sock.local_addr().expect("addr"), addr);
        drop(sock);
        a.release(addr);
        assert!(bound.take(addr).is_none());
        // Released, so it can be handed out again.
        assert_eq!(a.allocate(Family::V4, false, &mut rng), Some(addr));
        assert!(!a.supports(Family::V6));
    }
}
