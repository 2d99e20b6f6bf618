//! Fork requests and status INFOs: the JSON of an INFO or multipart re-INVITE from the
//! controller is parsed (core/fork_request.rs), checked against the call (route allows forking,
//! no SRTP or IPv6 media, a G.711 codec matching the request) and the call's fork sequence, and
//! surfaced as [`SessionEvent::ForkRequest`]; a refusal goes straight back as a status INFO.
//! The fork layer's statuses come back through [`B2bua::handle_fork_status`] (sent at once) and
//! [`B2bua::handle_connection_status`] (paced per fork, core/status_pacer.rs).
//!
//! Role: the controller's side of forking inside the B2BUA; the fork itself is the media
//! layer's (core/media.rs).
//! Inputs: fork JSON bodies on a call's leg, status reports. Outputs: status INFOs to the
//! controller's leg, session events; licensing counts (a call is Enhanced once STARTED).

use std::time::Instant;

use super::{
    B2bua, B2buaError, CallHandle, CallParties, EndReason, Leg, Pending, PortAllocator,
    SessionEvent,
};
use crate::core::dialog::RequestParts;
use crate::core::fork_request::{self, Carrier, ForkError, ForkRequest, ForkState, StatusReport};
use crate::core::message::uri_of;
use crate::core::sdp::AudioMedia;

impl<P: PortAllocator> B2bua<P> {
    /// A fork status from the fork layer that answers the controller's request or follows the
    /// call's media (CONNECTING, STARTED for a START, PAUSED, STOPPED, ERROR, ...): sent to the
    /// controller in an INFO at once (after a held paced status of the same fork, so the order
    /// stays). `Started` makes the call Enhanced for licensing; `Stopped`/`Error` on the active
    /// fork ends it so START is allowed again.
    pub fn handle_fork_status(
        &mut self,
        now: Instant,
        call: CallHandle,
        report: StatusReport,
    ) -> Result<(), B2buaError> {
        if let Some(done) = self.bot_fork_status(now, call, &report) {
            return done;
        }
        let leg = self.apply_fork_status(call, &report)?;
        self.send_status_now(now, call, leg, &report);
        self.pump(now);
        Ok(())
    }

    /// A fork status caused by the speech-server connection after the fork started (connection
    /// lost: RECONNECTING; carried again: STARTED; fork-agent gave up: ERROR). Its effects on
    /// the call apply at once, like [`B2bua::handle_fork_status`]'s, but the INFO is paced: at
    /// most one per fork per [`STATUS_INTERVAL`](crate::core::status_pacer::STATUS_INTERVAL),
    /// a held one replaced by a newer one and sent when the interval is over (drive
    /// [`B2bua::poll_timeout`]).
    pub fn handle_connection_status(
        &mut self,
        now: Instant,
        call: CallHandle,
        report: StatusReport,
    ) -> Result<(), B2buaError> {
        if let Some(done) = self.bot_fork_status(now, call, &report) {
            return done;
        }
        let leg = self.apply_fork_status(call, &report)?;
        let key = (call, report.call_guid.clone().unwrap_or_default());
        if let Some(report) = self.pacer.offer(now, key, report) {
            self.send_status(now, call, leg, &report);
            self.pump(now);
        }
        Ok(())
    }

    /// A status of a bot call's fork (`None` for other calls): there is no controller to tell.
    /// A fork that failed for good leaves the caller with nobody to talk to, so the call ends
    /// (BYE with [`REASON_BOT_FAILED`](super::REASON_BOT_FAILED), once the caller's ACK is
    /// in); a lost connection is not a failure: fork-agent reconnects and the call waits.
    fn bot_fork_status(
        &mut self,
        now: Instant,
        call: CallHandle,
        report: &StatusReport,
    ) -> Option<Result<(), B2buaError>> {
        let c = self.calls.get_mut(&call)?;
        let bot = c.bot.as_mut()?;
        if report.state != ForkState::Error {
            return Some(Ok(()));
        }
        tracing::warn!(?call, call_id = %c.a.call_id,
            error = report.status.map(|e| e.as_str()).unwrap_or_default(),
            "the voice bot's fork failed: ending the call");
        if !bot.acked {
            bot.failed = true;
            return Some(Ok(()));
        }
        Some(self.release(now, call, EndReason::BotFailed))
    }

    /// The caller's ACK for a bot call's 2xx: a bot that failed before it ends the call now.
    pub(super) fn bot_acked(&mut self, now: Instant, call: CallHandle) {
        let Some(bot) = self.calls.get_mut(&call).and_then(|c| c.bot.as_mut()) else {
            return;
        };
        bot.acked = true;
        if bot.failed {
            let _ = self.release(now, call, EndReason::BotFailed);
        }
    }

    /// What a status changes in the call: licensing and the fork sequence. Returns the leg the
    /// controller talks on.
    fn apply_fork_status(
        &mut self,
        call: CallHandle,
        report: &StatusReport,
    ) -> Result<Leg, B2buaError> {
        let c = self.calls.get_mut(&call).ok_or(B2buaError::UnknownCall)?;
        let leg = c.fork_leg.ok_or(B2buaError::NoForkController)?;
        self.changed.insert(call);
        match report.state {
            ForkState::Started if !c.enhanced => {
                c.enhanced = true;
                if c.counted {
                    self.counts.enhanced += 1;
                    self.counts.bump();
                }
            }
            ForkState::Stopped | ForkState::Error => {
                if let Some(guid) = &report.call_guid {
                    c.fork.end(guid);
                }
            }
            _ => {}
        }
        Ok(leg)
    }

    /// Sends the paced status INFOs that are due (from [`B2bua::handle_timeout`]).
    pub(super) fn send_paced_statuses(&mut self, now: Instant) {
        while let Some(((call, _), report)) = self.pacer.poll_due(now) {
            if let Some(leg) = self.calls.get(&call).and_then(|c| c.fork_leg) {
                self.send_status(now, call, leg, &report);
            }
        }
        self.pump(now);
    }

    /// Sends an unpaced status INFO, after the fork's held paced one if there is one.
    fn send_status_now(&mut self, now: Instant, call: CallHandle, leg: Leg, report: &StatusReport) {
        let key = (call, report.call_guid.clone().unwrap_or_default());
        if let Some(held) = self.pacer.sent_now(now, key) {
            if let Some(fork_leg) = self.calls.get(&call).and_then(|c| c.fork_leg) {
                self.send_status(now, call, fork_leg, &held);
            }
        }
        self.send_status(now, call, leg, report);
    }

    pub(super) fn on_fork_body(
        &mut self,
        now: Instant,
        call: CallHandle,
        leg: Leg,
        body: &[u8],
        carrier: Carrier,
    ) {
        let parsed = ForkRequest::parse(body);
        let max_forks = self.cfg.max_forks_per_call;
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.fork_leg.is_none() {
            c.fork_leg = Some(leg);
        }
        let result = parsed.and_then(|req| {
            if let ForkRequest::Start(s) = &req {
                if !c.route_forking {
                    return Err(ForkError::UnsupportedFlow);
                }
                let media: Vec<&AudioMedia> = c.media.iter().flatten().collect();
                if media.iter().any(|m| m.is_srtp() || m.addr.is_ipv6()) {
                    return Err(ForkError::UnsupportedFlow);
                }
                let codec = c.media[Leg::B as usize]
                    .as_ref()
                    .and_then(|m| m.primary_codec());
                match codec {
                    Some(k) if k.is_g711() => {
                        if let Some(want) = s.codec {
                            if k.name.as_deref() != Some(want_name(want)) {
                                return Err(ForkError::CodecNotSupported);
                            }
                        }
                    }
                    _ => return Err(ForkError::CodecNotSupported),
                }
            }
            let kind = req.kind();
            c.fork.apply(req, carrier, max_forks).map(|cmd| (kind, cmd))
        });
        match result {
            Ok((_, command)) => {
                let parties = CallParties {
                    call_id: c.a.call_id.clone(),
                    from: uri_of(&c.a.remote_header).to_owned(),
                    to: uri_of(&c.a.local_header).to_owned(),
                };
                self.emit(SessionEvent::ForkRequest {
                    call,
                    leg,
                    request: command,
                    parties,
                })
            }
            Err(err) => {
                let guid = fork_request::guid_hint(body);
                let kind = ForkRequest::parse(body).ok().map(|r| r.kind());
                let report = StatusReport::rejected(guid, kind, err);
                self.send_status_now(now, call, leg, &report);
            }
        }
    }

    fn send_status(&mut self, now: Instant, call: CallHandle, leg: Leg, report: &StatusReport) {
        self.touch(call);
        let via = self.leg_via(call, leg);
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let body = report.to_json();
        let d = c.dialog(leg);
        let peer = d.peer;
        if let Some(info) = d.request(RequestParts {
            method: "INFO",
            via: &via,
            contact: None,
            body: Some((fork_request::CONTENT_TYPE, &body)),
            cseq: None,
            max_forwards: 70,
        }) {
            if let Ok(t) = self.tl.send_request(now, peer, info) {
                self.pending.insert(t, Pending::Own);
            }
        }
    }
}

fn want_name(c: fork_request::ForkCodec) -> &'static str {
    match c {
        fork_request::ForkCodec::G711Ulaw => "PCMU",
        fork_request::ForkCodec::G711Alaw => "PCMA",
    }
}
