//! The B2BUA's [`PortAllocator`] over media-anchor's [`PortPool`] (the pool itself is shared with
//! ng-agent): every call leg gets an even RTP port from the configured range.

pub use media_anchor::port_pool::{parse_range, PortPool, PortPoolError};

use crate::core::b2bua::{CallHandle, Leg, PortAllocator};

impl PortAllocator for PortPool {
    fn allocate(&mut self, _call: CallHandle, _leg: Leg) -> Option<u16> {
        PortPool::allocate(self)
    }

    fn release(&mut self, port: u16) {
        PortPool::release(self, port);
    }

    fn reserve(&mut self, port: u16) -> bool {
        PortPool::reserve(self, port)
    }
}
