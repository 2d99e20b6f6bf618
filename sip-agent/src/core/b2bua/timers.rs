//! Per-call deadlines of the B2BUA: the RFC 4028 session expiry and the maximum call
//! duration (core/session_timer.rs has the rules), next to the transaction layer's timers.
//!
//! Role: keeps the `deadlines` index in step with each call's [`CallTimers`](crate::core::session_timer::CallTimers)
//! table, answers [`B2bua::poll_timeout`] and fires what is due in [`B2bua::handle_timeout`]
//! (a call released with BYE on both legs carrying the timer's Reason header).
//! Inputs: `now`; the 2xx that (re)arms the session timer. Outputs: BYEs and teardown events
//! through the usual output queue.

use std::time::Instant;

use rsip::Response;
use tracing::{debug, info};

use super::{B2bua, CallHandle, EndReason, PortAllocator};
use crate::core::session_timer::{self, CallTimer, SessionExpires};

impl<P: PortAllocator> B2bua<P> {
    /// Next deadline (transaction timers, session expiry, maximum duration, a held status
    /// INFO); re-read after every input and after [`B2bua::handle_timeout`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let call = self.deadlines.first().map(|(at, _, _)| *at);
        [self.tl.poll_timeout(), call, self.pacer.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The soonest per-call timer, for debugging (transaction timers have
    /// `TransactionLayer::timeout_reason`).
    pub fn timeout_reason(&self) -> Option<(CallHandle, CallTimer, Instant)> {
        self.deadlines.first().map(|(at, c, t)| (*c, *t, *at))
    }

    /// Arms (`Some`) or stops (`None`) a call's timer, keeping the deadline index in step.
    pub(super) fn set_timer(&mut self, call: CallHandle, timer: CallTimer, at: Option<Instant>) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if let Some(old) = c.timers.set(timer, at) {
            self.deadlines.remove(&(old, call, timer));
        }
        if let Some(at) = at {
            self.deadlines.insert((at, call, timer));
        }
    }

    /// Fires due timers: transaction timers first, then status INFOs the pacer held, then
    /// calls whose session expired or that reached the maximum duration. A call not due is left
    /// alone, so a spurious call is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tl.handle_timeout(now);
        self.pump(now);
        self.send_paced_statuses(now);
        while let Some(&(at, call, timer)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.set_timer(call, timer, None);
            self.deadlines.remove(&(at, call, timer));
            let reason = match timer {
                CallTimer::SessionExpires => EndReason::SessionExpired,
                CallTimer::MaxDuration => EndReason::MaxDuration,
            };
            if let Some(c) = self.calls.get(&call) {
                info!(
                    ?call,
                    call_id = %c.a.call_id,
                    ?reason,
                    "releasing call: BYE on both legs"
                );
            }
            self.hangup(now, call, None, reason);
            self.pump(now);
        }
    }

    /// (Re)arms the session expiry from a 2xx to an INVITE: the interval is the 2xx's
    /// `Session-Expires`, and a 2xx without one means the session has no expiry any more
    /// (RFC 4028 §7.2 for the client's view; the proxy learns the same from the 2xx, §8.2).
    pub(super) fn arm_session_timer(&mut self, now: Instant, call: CallHandle, resp: &Response) {
        let se = SessionExpires::from_headers(&resp.headers);
        let at = se.map(|se| session_timer::bye_deadline(now, se.interval));
        if let Some(c) = self.calls.get_mut(&call) {
            c.session_interval = se.map(|se| se.interval);
        }
        if let Some(se) = se {
            debug!(?call, interval = se.interval.as_secs(), refresher = ?se.refresher, "session timer armed");
        }
        self.set_timer(call, CallTimer::SessionExpires, at);
    }
}
