//! RTP port pool over the configured media range.
//!
//! Role: gives out even ports (RTP; the odd neighbour is its RTCP port, RFC 3550 §11) from
//! `first..=last`, never the same one twice while it is in use. Allocation rotates through the
//! range instead of reusing the lowest free port, so a port that just carried a call is not
//! handed to the next call at once (late RTP from the old call would land in the new one, the
//! same reason rtpengine and CUBE rotate).
//!
//! Inputs: [`PortPool::new`] with the range, then [`PortPool::allocate`] / [`PortPool::release`]
//! (and [`PortPool::reserve`] for ports a restarted user re-adopts).
//! Outputs: the ports. Pure data structure: no sockets are bound (the kernel data plane receives
//! the media, user space never opens these ports).

use std::collections::BTreeSet;

/// Errors building a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortPoolError {
    /// The range holds no even port with an RTCP neighbour inside the range.
    #[error("media port range {first}-{last} holds no even RTP port with its RTCP port")]
    Empty {
        /// First port of the range.
        first: u16,
        /// Last port of the range.
        last: u16,
    },
}

/// Even ports in a range, handed out round-robin.
#[derive(Debug, Clone)]
pub struct PortPool {
    first: u16,
    /// Number of even ports in the pool.
    slots: u32,
    /// Next slot to try.
    cursor: u32,
    in_use: BTreeSet<u16>,
}

impl PortPool {
    /// A pool of the even ports `p` in `first..=last` whose `p + 1` is also in the range.
    pub fn new(first: u16, last: u16) -> Result<Self, PortPoolError> {
        let start = first.saturating_add(first % 2);
        let slots = if last > start {
            (u32::from(last) - u32::from(start)).div_ceil(2)
        } else {
            0
        };
        if slots == 0 {
            return Err(PortPoolError::Empty { first, last });
        }
        Ok(Self {
            first: start,
            slots,
            cursor: 0,
            in_use: BTreeSet::new(),
        })
    }

    /// Number of ports handed out and not yet released.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// Capacity of the pool (RTP ports).
    pub fn capacity(&self) -> usize {
        self.slots as usize
    }

    fn port_at(&self, slot: u32) -> u16 {
        // slot < slots, so first + 2 * slot + 1 <= last fits in u16.
        (u32::from(self.first) + 2 * slot) as u16
    }

    /// The next free even port after the last one handed out; `None` when all are in use.
    pub fn allocate(&mut self) -> Option<u16> {
        for i in 0..self.slots {
            let slot = (self.cursor + i) % self.slots;
            let port = self.port_at(slot);
            if self.in_use.insert(port) {
                self.cursor = (slot + 1) % self.slots;
                return Some(port);
            }
        }
        None
    }

    /// Gives `port` back (a port not handed out is ignored).
    pub fn release(&mut self, port: u16) {
        self.in_use.remove(&port);
    }

    /// Marks `port` in use without allocating it; false when it is not a pool port or is taken.
    pub fn reserve(&mut self, port: u16) -> bool {
        let in_range = port >= self.first
            && (port - self.first).is_multiple_of(2)
            && u32::from(port - self.first) / 2 < self.slots;
        in_range && self.in_use.insert(port)
    }
}

/// Parses a configured range `first-last` (the config error names the field); odd or even
/// ends are fine, the pool uses the even ports.
pub fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected first-last, e.g. 30000-39999")?;
    let a: u16 = a.trim().parse().map_err(|_| "first port is not 1-65535")?;
    let b: u16 = b.trim().parse().map_err(|_| "last port is not 1-65535")?;
    if a == 0 || a >= b {
        return Err("first port must be non-zero and below the last".into());
    }
    if b - a < 3 {
        return Err("range must hold at least one call (two RTP ports plus RTCP)".into());
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(p: &mut PortPool) -> Option<u16> {
        p.allocate()
    }

    #[test]
    fn hands_out_even_ports_round_robin() {
        let mut p = PortPool::new(30000, 30007).expect("pool");
        assert_eq!(p.capacity(), 4);
        assert_eq!(take(&mut p), Some(30000));
        assert_eq!(take(&mut p), Some(30002));
        p.release(30000);
        // Rotation: the just-released port is not reused before the others.
        assert_eq!(take(&mut p), Some(30004));
        assert_eq!(take(&mut p), Some(30006));
        assert_eq!(take(&mut p), Some(30000));
        assert_eq!(take(&mut p), None, "exhausted");
        assert_eq!(p.in_use(), 4);
    }

    #[test]
    fn odd_start_and_rtcp_neighbour_stay_in_range() {
        let mut p = PortPool::new(30001, 30004).expect("pool");
        // 30002 (RTCP 30003) fits, 30004 would need 30005.
        assert_eq!(p.capacity(), 1);
        assert_eq!(take(&mut p), Some(30002));
        assert_eq!(take(&mut p), None);
    }

    #[test]
    fn reserved_ports_are_skipped_and_only_range_ports_reserve() {
        let mut p = PortPool::new(30000, 30007).expect("pool");
        assert!(p.reserve(30000));
        assert!(!p.reserve(30000), "already reserved");
        assert!(!p.reserve(30001), "odd: an RTCP port");
        assert!(!p.reserve(30008), "outside the range");
        assert!(!p.reserve(29998), "below the range");
        assert_eq!(take(&mut p), Some(30002));
        p.release(30000);
        assert_eq!(take(&mut p), Some(30004));
    }

    #[test]
    fn empty_ranges_are_refused() {
        assert!(PortPool::new(30000, 30000).is_err());
        assert!(PortPool::new(40000, 30000).is_err());
        assert!(PortPool::new(65535, 65535).is_err());
        assert!(PortPool::new(65534, 65535).is_ok());
    }
}
