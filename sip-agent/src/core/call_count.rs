//! Call counting for license usage (reference "Licensing for WebSockets in CUBE", "License
//! Usage"): a call is a Standard trunk call until a WebSocket fork of it has started; from then
//! on it is an Enhanced trunk call until it disconnects, counted once, whatever STOP, UPDATE or
//! further START follow. Aggregate = Standard + Enhanced. Peaks are kept since start; the
//! Standard peak is reported as the difference of the Aggregate and Enhanced peaks, as the
//! reference's standalone mode defines it.
//!
//! Inputs, in the order the shell sees them: [`CallCounter::handle_session`] with every B2BUA
//! session event, [`CallCounter::handle_fork_status`] with every fork status report the media
//! layer emits. Output: [`CallCounter::snapshot`]. No I/O, no clock.

use std::collections::HashMap;

use serde::Serialize;

use crate::core::b2bua::{CallHandle, SessionEvent};
use crate::core::fork_request::{ForkState, StatusReport};

/// The counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CallCounts {
    /// Calls up now without a started fork.
    pub standard: u64,
    /// Calls up now whose fork started at least once.
    pub enhanced: u64,
    /// `standard + enhanced`.
    pub aggregate: u64,
    /// Highest `aggregate` seen.
    pub peak_aggregate: u64,
    /// Highest `enhanced` seen.
    pub peak_enhanced: u64,
    /// `peak_aggregate - peak_enhanced` (reference: Standard tag in standalone mode).
    pub peak_standard: u64,
    /// Calls whose media came up since start (restored calls not counted again).
    pub started_total: u64,
    /// Calls that became Enhanced since start.
    pub enhanced_total: u64,
}

/// Tracks which calls are up and which are enhanced.
#[derive(Debug, Default)]
pub struct CallCounter {
    /// Live calls; `true` once enhanced.
    calls: HashMap<CallHandle, bool>,
    peak_aggregate: u64,
    peak_enhanced: u64,
    started_total: u64,
    enhanced_total: u64,
}

impl CallCounter {
    /// An empty counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// A call counts from its first negotiated media until it ends.
    pub fn handle_session(&mut self, ev: &SessionEvent) {
        match ev {
            SessionEvent::MediaUp { call, .. } | SessionEvent::BotUp { call, .. } => {
                self.call_up(*call)
            }
            SessionEvent::MediaDown { call } | SessionEvent::CallEnded { call, .. } => {
                self.calls.remove(call);
            }
            SessionEvent::MediaChanged { .. } | SessionEvent::ForkRequest { .. } => {}
        }
        self.update_peaks();
    }

    /// A call restored from the journal after a restart (docs/sip-state.md) counts again, as
    /// Enhanced when it had forked.
    pub fn restore(&mut self, call: CallHandle, enhanced: bool) {
        self.calls.insert(call, enhanced);
        self.update_peaks();
    }

    /// A STARTED report makes the call Enhanced (reference: successful = START sent to the
    /// speech server and a session created).
    pub fn handle_fork_status(&mut self, call: CallHandle, report: &StatusReport) {
        if report.state == ForkState::Started {
            if let Some(e) = self.calls.get_mut(&call) {
                if !*e {
                    self.enhanced_total += 1;
                }
                *e = true;
            }
        }
        self.update_peaks();
    }

    fn call_up(&mut self, call: CallHandle) {
        if let std::collections::hash_map::Entry::Vacant(v) = self.calls.entry(call) {
            v.insert(false);
            self.started_total += 1;
        }
    }

    fn update_peaks(&mut self) {
        let s = self.current();
        self.peak_aggregate = self.peak_aggregate.max(s.0 + s.1);
        self.peak_enhanced = self.peak_enhanced.max(s.1);
    }

    fn current(&self) -> (u64, u64) {
        let enhanced = self.calls.values().filter(|e| **e).count() as u64;
        (self.calls.len() as u64 - enhanced, enhanced)
    }

    /// The counts now.
    pub fn snapshot(&self) -> CallCounts {
        let (standard, enhanced) = self.current();
        CallCounts {
            standard,
            enhanced,
            aggregate: standard + enhanced,
            peak_aggregate: self.peak_aggregate,
            peak_enhanced: self.peak_enhanced,
            peak_standard: self.peak_aggregate.saturating_sub(self.peak_enhanced),
            started_total: self.started_total,
            enhanced_total: self.enhanced_total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::b2bua::{EndReason, Leg};

    fn up(c: &mut CallCounter, n: u32) {
        c.handle_session(&SessionEvent::MediaDown {
            call: CallHandle(u32::MAX),
        });
        c.call_up(CallHandle(n));
        c.update_peaks();
    }

    fn report(state: ForkState) -> StatusReport {
        StatusReport {
            call_guid: Some("ab".into()),
            request: None,
            state,
            status: None,
            streams: vec![],
        }
    }

    fn end(c: &mut CallCounter, n: u32) {
        c.handle_session(&SessionEvent::CallEnded {
            call: CallHandle(n),
            reason: EndReason::Bye(Leg::A),
        });
    }

    #[test]
    fn forked_call_is_enhanced_once_until_it_ends_and_peaks_stay() {
        let mut c = CallCounter::new();
        up(&mut c, 1);
        up(&mut c, 2);
        assert_eq!((c.snapshot().standard, c.snapshot().enhanced), (2, 0));
        // CONNECTING is not yet a successful fork.
        c.handle_fork_status(CallHandle(1), &report(ForkState::Connecting));
        assert_eq!(c.snapshot().enhanced, 0);
        c.handle_fork_status(CallHandle(1), &report(ForkState::Started));
        c.handle_fork_status(CallHandle(1), &report(ForkState::Stopped));
        c.handle_fork_status(CallHandle(1), &report(ForkState::Started));
        let s = c.snapshot();
        assert_eq!((s.standard, s.enhanced, s.aggregate), (1, 1, 2));
        end(&mut c, 1);
        end(&mut c, 2);
        assert_eq!(
            c.snapshot(),
            CallCounts {
                standard: 0,
                enhanced: 0,
                aggregate: 0,
                peak_aggregate: 2,
                peak_enhanced: 1,
                peak_standard: 1,
                started_total: 2,
                enhanced_total: 1,
            }
        );
    }

    #[test]
    fn status_for_an_unknown_call_counts_nothing() {
        let mut c = CallCounter::new();
        c.handle_fork_status(CallHandle(9), &report(ForkState::Started));
        assert_eq!(c.snapshot(), CallCounts::default());
    }
}
