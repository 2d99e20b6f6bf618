//! The end of a call: BYE on one or both legs (with an RFC 3326 Reason for releases of our
//! own), ports and dialogs freed, timers stopped, [`SessionEvent::MediaDown`] and
//! [`SessionEvent::CallEnded`] emitted.
//!
//! Role: the one way a call leaves the B2BUA, whoever ends it (a BYE, a failed setup, a timer,
//! fork-agent's dead-media release through [`B2bua::release`]).
//! Inputs: the call and why it ends. Outputs: BYEs, session events.

use std::time::Instant;

use rsip::Header;
use tracing::info;

use super::{
    B2bua, B2buaError, CallHandle, CallState, EndReason, Leg, Pending, PortAllocator, SessionEvent,
};
use crate::core::dialog::RequestParts;
use crate::core::session_timer::CallTimer;

impl<P: PortAllocator> B2bua<P> {
    /// Ends an established call from outside SIP (fork-agent removed its media as dead): BYE
    /// on both legs with `reason`'s Reason header, then the usual teardown events.
    pub fn release(
        &mut self,
        now: Instant,
        call: CallHandle,
        reason: EndReason,
    ) -> Result<(), B2buaError> {
        let c = self.calls.get(&call).ok_or(B2buaError::UnknownCall)?;
        if c.state != CallState::Established {
            return Err(B2buaError::NotEstablished);
        }
        info!(?call, call_id = %c.a.call_id, ?reason, "releasing call: BYE on both legs");
        self.hangup(now, call, None, reason);
        self.pump(now);
        Ok(())
    }

    /// Sends BYE on `leg`; `reason` is an RFC 3326 Reason header value for BYEs we originate
    /// for a reason of our own (session expiry, maximum duration).
    pub(super) fn send_bye(
        &mut self,
        now: Instant,
        call: CallHandle,
        leg: Leg,
        reason: Option<&str>,
    ) {
        let via = self.leg_via(call, leg);
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let d = c.dialog(leg);
        let peer = d.peer;
        if let Some(mut bye) = d.request(RequestParts {
            method: "BYE",
            via: &via,
            contact: None,
            body: None,
            cseq: None,
            max_forwards: 70,
        }) {
            if let Some(r) = reason {
                bye.headers.push(Header::Other("Reason".into(), r.into()));
            }
            if let Ok(t) = self.tl.send_request(now, peer, bye) {
                self.pending.insert(t, Pending::Own);
            }
        }
    }

    pub(super) fn hangup(
        &mut self,
        now: Instant,
        call: CallHandle,
        except: Option<Leg>,
        reason: EndReason,
    ) {
        // A bot's call has no SIP peer on leg B.
        let bot = self.calls.get(&call).is_some_and(|c| c.bot.is_some());
        for leg in [Leg::A, Leg::B] {
            if Some(leg) != except && !(bot && leg == Leg::B) {
                self.send_bye(now, call, leg, reason.reason_header());
            }
        }
        self.end_call(call, reason);
    }

    pub(super) fn end_call(&mut self, call: CallHandle, reason: EndReason) {
        self.touch(call);
        self.pacer.forget(|(c, _)| *c == call);
        for t in CallTimer::ALL {
            self.set_timer(call, t, None);
        }
        let Some(c) = self.calls.remove(&call) else {
            return;
        };
        // A bot's call holds one port (leg B's is 0).
        for p in c.ports.into_iter().filter(|p| *p != 0) {
            self.ports.release(p);
        }
        self.by_dialog
            .remove(&(c.a.call_id.clone(), c.a.local_tag.clone()));
        self.by_dialog
            .remove(&(c.b.call_id.clone(), c.b.local_tag.clone()));
        if c.counted {
            self.counts.aggregate -= 1;
            if c.enhanced {
                self.counts.enhanced -= 1;
            }
            self.emit(SessionEvent::MediaDown { call });
        }
        if let Some(t) = c.b_invite_tx {
            // Keep the INVITE client transaction's outcome mapping only while it can still
            // deliver a 2xx we must ACK; after end_call nothing refers to the call.
            if matches!(self.pending.get(&t), Some(Pending::InitialInvite(_))) {
                self.pending.insert(t, Pending::Own);
            }
        }
        self.emit(SessionEvent::CallEnded { call, reason });
    }
}
