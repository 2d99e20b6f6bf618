//! Incremental Internet checksum update (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! All values are 16-bit words in memory order (read with native loads from network-order
//! bytes): the one's complement sum is byte-order independent as long as every word is read the
//! same way, so no byte swapping is needed on the hot path.

/// Accumulates replaced words for one checksum field.
pub struct CsumDelta(u32);

impl CsumDelta {
    #[inline(always)]
    pub fn new(old_csum: u16) -> Self {
        CsumDelta(!old_csum as u32 & 0xffff)
    }

    #[inline(always)]
    pub fn replace16(&mut self, old: u16, new: u16) {
        self.0 += (!old as u32 & 0xffff) + new as u32;
    }

    #[inline(always)]
    pub fn replace32(&mut self, old: u32, new: u32) {
        self.replace16(old as u16, new as u16);
        self.replace16((old >> 16) as u16, (new >> 16) as u16);
    }

    #[inline(always)]
    pub fn finish(self) -> u16 {
        let mut s = self.0;
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        !(s as u16)
    }
}
