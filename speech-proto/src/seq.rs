//! Loss, reordering and duplicate detection from 16-bit RTP sequence numbers.
//!
//! Input: the `seq` of each audio frame of one stream, in arrival order ([`SeqTracker::record`]),
//! plus [`SeqTracker::restart`] at every `start`/`resume` so the next frame becomes the new
//! baseline (a pause or reconnect is not loss). Output: the [`SeqOrder`] of each frame and
//! cumulative counters.
//!
//! Sequence numbers are extended to 64 bits by counting wraps, as in RFC 3550 Appendix A.1:
//! a frame whose seq is ahead of the highest seen by less than 2^15 (modulo 2^16) is newer,
//! otherwise it is older. A newer frame skipping `n` numbers counts `n` lost; an older frame
//! that was counted lost and arrives late is "out of order" and no longer lost (lost is
//! "expected minus received", RFC 3550 §6.4.1 cumulative number of packets lost). Whether an
//! older frame is a duplicate is known exactly inside the last [`SEQ_WINDOW`] numbers; an older
//! frame beyond the window is counted out of order.

/// Number of most recent sequence numbers remembered exactly (bitmap width).
pub const SEQ_WINDOW: u64 = 128;

/// Classification of one frame's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqOrder {
    /// First frame after start/resume: the new baseline.
    First,
    /// Exactly the next number.
    InOrder,
    /// Newer than expected: `missing` numbers were skipped (counted lost until they arrive).
    Gap {
        /// How many numbers were skipped.
        missing: u16,
    },
    /// Older than the highest seen and not seen before. `recovered` is true when the frame had
    /// been counted lost (so lost was decremented); false when it predates the baseline.
    Late {
        /// Whether this frame reduced the lost count.
        recovered: bool,
    },
    /// This exact number was already received.
    Duplicate,
}

/// Per-stream sequence tracker. Counters survive [`SeqTracker::restart`].
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    /// Extended highest sequence number seen in the current segment.
    ext_max: Option<u64>,
    /// Extended sequence number of the current segment's first frame.
    ext_base: u64,
    /// Bit i set: `ext_max - i` was received (i < SEQ_WINDOW).
    window: u128,
    first_seq: Option<u16>,
    lost: u64,
    out_of_order: u64,
    duplicates: u64,
}

impl SeqTracker {
    /// A tracker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next frame starts a new baseline (after `start` with `resumed`, or `resume`).
    pub fn restart(&mut self) {
        self.ext_max = None;
        self.window = 0;
    }

    /// Classifies `seq` and updates the counters.
    pub fn record(&mut self, seq: u16) -> SeqOrder {
        let Some(ext_max) = self.ext_max else {
            // Start extended numbers high enough that "older" frames never underflow.
            let ext = (1u64 << 32) + u64::from(seq);
            self.ext_max = Some(ext);
            self.ext_base = ext;
            self.window = 1;
            self.first_seq.get_or_insert(seq);
            return SeqOrder::First;
        };
        let delta = seq.wrapping_sub(ext_max as u16) as i16;
        if delta > 0 {
            let delta = delta as u64;
            let missing = (delta - 1) as u16;
            self.lost += u64::from(missing);
            self.window = if delta >= SEQ_WINDOW {
                0
            } else {
                self.window << delta
            } | 1;
            self.ext_max = Some(ext_max + delta);
            return if missing == 0 {
                SeqOrder::InOrder
            } else {
                SeqOrder::Gap { missing }
            };
        }
        if delta == 0 {
            self.duplicates += 1;
            return SeqOrder::Duplicate;
        }
        let back = u64::from(delta.unsigned_abs());
        let ext = ext_max - back;
        if ext < self.ext_base {
            self.out_of_order += 1;
            return SeqOrder::Late { recovered: false };
        }
        if back < SEQ_WINDOW {
            let bit = 1u128 << back;
            if self.window & bit != 0 {
                self.duplicates += 1;
                return SeqOrder::Duplicate;
            }
            self.window |= bit;
        }
        self.out_of_order += 1;
        self.lost = self.lost.saturating_sub(1);
        SeqOrder::Late { recovered: true }
    }

    /// Sequence number of the very first frame ever recorded.
    pub fn first_seq(&self) -> Option<u16> {
        self.first_seq
    }

    /// Highest sequence number of the current segment.
    pub fn highest_seq(&self) -> Option<u16> {
        self.ext_max.map(|e| e as u16)
    }

    /// Numbers skipped and not (yet) received.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Frames that arrived after a higher number.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// Frames whose number was already received.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u16]) -> (SeqTracker, Vec<SeqOrder>) {
        let mut t = SeqTracker::new();
        let orders = seqs.iter().map(|&s| t.record(s)).collect();
        (t, orders)
    }

    #[test]
    fn in_order_no_loss() {
        let (t, o) = run(&[10, 11, 12, 13]);
        assert_eq!(o[0], SeqOrder::First);
        assert!(o[1..].iter().all(|&x| x == SeqOrder::InOrder));
        assert_eq!((t.lost(), t.out_of_order(), t.duplicates()), (0, 0, 0));
        assert_eq!((t.first_seq(), t.highest_seq()), (Some(10), Some(13)));
    }

    #[test]
    fn gap_counts_lost() {
        let (t, o) = run(&[1, 2, 5, 6]);
        assert_eq!(o[2], SeqOrder::Gap { missing: 2 });
        assert_eq!(t.lost(), 2);
    }

    #[test]
    fn reorder_recovers_loss() {
        let (t, o) = run(&[1, 3, 2, 4]);
        assert_eq!(o[1], SeqOrder::Gap { missing: 1 });
        assert_eq!(o[2], SeqOrder::Late { recovered: true });
        assert_eq!((t.lost(), t.out_of_order(), t.duplicates()), (0, 1, 0));
    }

    #[test]
    fn duplicates_latest_and_older() {
        let (t, o) = run(&[1, 2, 2, 3, 1]);
        assert_eq!(o[2], SeqOrder::Duplicate);
        assert_eq!(o[4], SeqOrder::Duplicate);
        assert_eq!((t.lost(), t.out_of_order(), t.duplicates()), (0, 0, 2));
    }

    #[test]
    fn wraparound_is_in_order() {
        let (t, o) = run(&[65534, 65535, 0, 1]);
        assert!(o[1..].iter().all(|&x| x == SeqOrder::InOrder), "{o:?}");
        assert_eq!(t.lost(), 0);
        assert_eq!(t.highest_seq(), Some(1));
    }

    #[test]
    fn wraparound_gap_and_late() {
        let (t, o) = run(&[65534, 1, 65535, 0]);
        assert_eq!(o[1], SeqOrder::Gap { missing: 2 });
        assert_eq!(o[2], SeqOrder::Late { recovered: true });
        assert_eq!(o[3], SeqOrder::Late { recovered: true });
        assert_eq!((t.lost(), t.out_of_order()), (0, 2));
    }

    #[test]
    fn late_before_baseline_is_not_recovered() {
        let (t, o) = run(&[100, 101, 99]);
        assert_eq!(o[2], SeqOrder::Late { recovered: false });
        assert_eq!((t.lost(), t.out_of_order()), (0, 1));
    }

    #[test]
    fn restart_does_not_count_pause_as_loss() {
        let mut t = SeqTracker::new();
        t.record(1);
        t.record(2);
        t.restart();
        assert_eq!(t.record(500), SeqOrder::First);
        assert_eq!(t.record(501), SeqOrder::InOrder);
        assert_eq!(t.lost(), 0);
        assert_eq!(t.first_seq(), Some(1));
    }

    #[test]
    fn late_beyond_window_counts_out_of_order() {
        let mut t = SeqTracker::new();
        t.record(0);
        assert_eq!(t.record(300), SeqOrder::Gap { missing: 299 });
        assert_eq!(t.record(5), SeqOrder::Late { recovered: true });
        assert_eq!((t.lost(), t.out_of_order()), (298, 1));
    }
}
