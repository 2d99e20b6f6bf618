//! Call setup: the caller's INVITE is routed to leg B with the SDP anchored on this host, B's
//! provisional and final answers go back to the caller, and a CANCEL from the caller is
//! carried to B (RFC 3261 §9, §13, §16-style relaying of the final code).
//!
//! Role: creates the [`Call`](super::Call) with both dialogs, its ports and the pending
//! INVITE; establishes it on B's 2xx (ACK to B, 200 to A, session timer and maximum duration
//! armed, [`SessionEvent::MediaUp`] for each leg), or ends it on a failure or CANCEL.
//! Inputs: the caller's INVITE and CANCEL, responses to our INVITE on leg B.
//! Outputs: requests and responses through the transaction layer, session events.

use std::time::Instant;

use rsip::{Header, Request, Response, SipMessage};
use tracing::debug;

use super::{
    body_parts, B2bua, Call, CallHandle, CallState, EndReason, Leg, Pending, PortAllocator, Route,
    SessionEvent, SDP,
};
use crate::core::dialog::{Dialog, RequestParts};
use crate::core::fork_request::ForkSequence;
use crate::core::message::{self, header_values, uri_of};
use crate::core::sdp::Sdp;
use crate::core::session_timer::{self, CallTimer, CallTimers, RequestCheck};
use crate::core::transaction::{Peer, Transport, TxHandle};

impl<P: PortAllocator> B2bua<P> {
    fn route(&self, user: &str) -> Option<Route> {
        super::config::most_specific(&self.cfg.routes, user, |r| &r.pattern).cloned()
    }

    /// Leg A's dialog as the caller's INVITE sets it up (our tag new), and its From header.
    pub(super) fn caller_dialog(
        &mut self,
        req: &Request,
        contact: &str,
        from: Peer,
    ) -> Option<(Dialog, String)> {
        let k = message::keys(&SipMessage::Request(req.clone()))?;
        let first = |name: &str| {
            header_values(&req.headers, name)
                .into_iter()
                .next()
                .unwrap_or_default()
        };
        let (to, from_hdr) = (first("To"), first("From"));
        let a_tag = self.token();
        let a = Dialog {
            call_id: k.call_id,
            local_tag: a_tag.clone(),
            remote_tag: k.from_tag,
            local_header: format!("{to};tag={a_tag}"),
            remote_header: from_hdr.clone(),
            remote_target: uri_of(contact).to_string(),
            route_set: header_values(&req.headers, "Record-Route"),
            local_cseq: 0,
            remote_cseq: Some(k.cseq),
            peer: from,
        };
        Some((a, from_hdr))
    }

    pub(super) fn new_call(&mut self, now: Instant, tx: TxHandle, from: Peer, req: Request) {
        let reject = |me: &mut Self, code: u16, reason: Option<&str>| {
            me.respond(now, tx, &req, code, reason, None, vec![], None)
        };
        let user = req.uri.user().unwrap_or_default().to_string();
        if let Some(bot) = self.bot_for(&user) {
            return self.new_bot_call(now, tx, from, req, bot);
        }
        let Some(route) = self.route(&user) else {
            return reject(self, 404, None);
        };
        let Some(contact) = header_values(&req.headers, "Contact").into_iter().next() else {
            return reject(self, 400, Some("Missing Contact"));
        };
        if session_timer::check_request(&req.headers, self.cfg.min_se) == RequestCheck::TooSmall {
            let min_se = session_timer::min_se_header(self.cfg.min_se);
            return self.respond(now, tx, &req, 422, None, None, vec![min_se], None);
        }
        let (sdp_bytes, _) = match body_parts(&req.headers, &req.body) {
            Ok(p) => p,
            Err(reason) => return reject(self, 400, Some(reason)),
        };
        // Delayed offer (INVITE without SDP) is not supported: see module doc.
        let Some(sdp_bytes) = sdp_bytes else {
            return reject(self, 488, None);
        };
        let Ok(mut sdp) = Sdp::parse(&sdp_bytes) else {
            return reject(self, 400, Some("Malformed SDP"));
        };
        let Some(offer) = sdp.audio() else {
            return reject(self, 488, None);
        };
        self.next_call = self.next_call.wrapping_add(1);
        let call = CallHandle(self.next_call);
        let Some(pa) = self.ports.allocate(call, Leg::A) else {
            return reject(self, 503, None);
        };
        let Some(pb) = self.ports.allocate(call, Leg::B) else {
            self.ports.release(pa);
            return reject(self, 503, None);
        };
        let Some((a, from_hdr)) = self.caller_dialog(&req, &contact, from) else {
            return;
        };
        let bind_a = self.default_bind();
        let bind_b = route.bind.unwrap_or(bind_a);
        let b_tag = self.token();
        let b_call_id = format!("{}@{}", self.token(), bind_b.sip_ip);
        let caller = uri_of(&from_hdr).to_string();
        let caller_user = caller.split_once(':').map(|(_, r)| r).unwrap_or(&caller);
        let caller_user = caller_user
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string();
        let target = format!("sip:{user}@{}", route.next_hop.addr);
        let mut b = Dialog {
            call_id: b_call_id,
            local_tag: b_tag.clone(),
            remote_tag: None,
            local_header: format!("<sip:{caller_user}@{}>;tag={b_tag}", bind_b.sip_ip),
            remote_header: format!("<{target}>"),
            remote_target: target,
            route_set: Vec::new(),
            local_cseq: 0,
            remote_cseq: None,
            peer: route.next_hop,
        };
        // SDP o= sess-id (RFC 4566 §5.2): any numeric value; kept below 2^62 for parsers that
        // read it as a signed 64-bit number.
        let session_id = self.rng.next_u64() >> 2;
        sdp.anchor_audio(bind_b.media_ip, pb);
        sdp.set_origin("xdpfork", session_id, 1, bind_b.media_ip);
        let body = sdp.to_bytes();
        let via = self.via(route.next_hop.transport, bind_b);
        let contact_b = self.contact(route.next_hop.transport, bind_b);
        let mf = header_values(&req.headers, "Max-Forwards")
            .first()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(70)
            .saturating_sub(1);
        let Some(mut b_req) = b.request(RequestParts {
            method: "INVITE",
            via: &via,
            contact: Some(&contact_b),
            body: Some((SDP, &body)),
            cseq: None,
            max_forwards: mf,
        }) else {
            self.ports.release(pa);
            self.ports.release(pb);
            return reject(self, 500, None);
        };
        b_req.headers.extend(session_timer::forward_request(
            &req.headers,
            self.cfg.min_se,
        ));
        let b_invite_to = b.remote_header.clone();
        let b_cseq = b.local_cseq;
        let b_tx = match self.tl.send_request(now, route.next_hop, b_req) {
            Ok(t) => t,
            Err(_) => {
                self.ports.release(pa);
                self.ports.release(pb);
                return reject(self, 500, None);
            }
        };
        debug!(?call, "new call routed");
        self.by_dialog
            .insert((a.call_id.clone(), a.local_tag.clone()), (call, Leg::A));
        self.by_dialog
            .insert((b.call_id.clone(), b.local_tag.clone()), (call, Leg::B));
        self.server_invites.insert(tx, call);
        self.pending.insert(b_tx, Pending::InitialInvite(call));
        self.calls.insert(
            call,
            Call {
                state: CallState::Proceeding,
                a,
                b,
                route_forking: route.forking,
                a_invite: Some((tx, req)),
                b_invite_tx: Some(b_tx),
                b_invite_via: via,
                b_invite_to,
                b_invite_cseq: b_cseq,
                b_provisional: false,
                cancel_pending: false,
                ports: [pa, pb],
                binds: [bind_a, bind_b],
                media: [Some(offer), None],
                sdp_version: 1,
                session_id,
                fork: ForkSequence::new(),
                fork_leg: None,
                enhanced: false,
                counted: false,
                timers: CallTimers::default(),
                session_interval: None,
                bot: None,
            },
        );
    }

    pub(super) fn on_cancel(&mut self, now: Instant, tx: TxHandle, from: Peer, req: Request) {
        // Only a CANCEL from the IP the INVITE came from finds it: the caller's branch may be
        // predictable, so a third party's copy must not cancel the call (docs/security.md).
        let target = self.tl.invite_for_cancel(&req, from);
        let call = target.and_then(|t| self.server_invites.get(&t).copied());
        let (Some(inv_tx), Some(call)) = (target, call) else {
            return self.respond(now, tx, &req, 481, None, None, vec![], None);
        };
        self.respond(now, tx, &req, 200, None, None, vec![], None);
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.state != CallState::Proceeding || !self.tl.can_respond(inv_tx) {
            return; // already answered: the CANCEL has no effect (§9.2)
        }
        let Some((_, inv, tag)) = c.a_setup() else {
            return;
        };
        c.state = CallState::Cancelling;
        // §9.1: CANCEL only after a provisional response; otherwise wait for one.
        if c.b_provisional {
            self.send_cancel_b(now, call);
        } else if let Some(c) = self.calls.get_mut(&call) {
            c.cancel_pending = true;
        }
        self.respond(now, inv_tx, &inv, 487, None, Some(&tag), vec![], None);
    }

    fn send_cancel_b(&mut self, now: Instant, call: CallHandle) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.cancel_pending = false;
        // §9.1: same Request-URI, Call-ID, From, To, CSeq number and single Via as the INVITE.
        let text = format!(
            "CANCEL {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} CANCEL\r\nContent-Length: 0\r\n\r\n",
            c.b.remote_target, c.b_invite_via, c.b.local_header, c.b_invite_to, c.b.call_id, c.b_invite_cseq
        );
        let peer = c.b.peer;
        if let Ok(SipMessage::Request(r)) = message::parse(text.as_bytes()) {
            if let Ok(t) = self.tl.send_request(now, peer, r) {
                self.pending.insert(t, Pending::Own);
            }
        }
    }

    pub(super) fn on_invite_response(&mut self, now: Instant, call: CallHandle, resp: Response) {
        let code = resp.status_code.code();
        let Some(k) = message::keys(&SipMessage::Response(resp.clone())) else {
            return;
        };
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if code < 200 {
            if code == 100 {
                return;
            }
            c.b_provisional = true;
            if c.cancel_pending {
                self.send_cancel_b(now, call);
                return;
            }
            if c.state != CallState::Proceeding {
                return;
            }
            let body = self.answer_for_a(call, &resp);
            let Some(c) = self.calls.get(&call) else {
                return;
            };
            let Some((atx, inv, tag)) = c.a_setup() else {
                return;
            };
            let contact = Header::Other(
                "Contact".into(),
                self.contact(c.a.peer.transport, c.binds[Leg::A as usize]),
            );
            self.respond(
                now,
                atx,
                &inv,
                code,
                None,
                Some(&tag),
                vec![contact],
                body.map(|b| (SDP, b)),
            );
            return;
        }
        if code >= 300 {
            let state = c.state;
            if let Some((atx, inv, tag)) = c
                .a_setup()
                .filter(|(atx, _, _)| state == CallState::Proceeding && self.tl.can_respond(*atx))
            {
                // Relay the failure code; 6xx and 4xx keep their class (§16.7 style). A 422
                // keeps its Min-SE so the caller can retry with a longer interval (RFC 4028 §6).
                let extra = session_timer::forward_response(code, &resp.headers);
                self.respond(now, atx, &inv, code, None, Some(&tag), extra, None);
            }
            let reason = if state == CallState::Cancelling {
                EndReason::Cancelled
            } else {
                EndReason::Rejected(code)
            };
            self.end_call(call, reason);
            return;
        }
        // 2xx: confirm the B dialog and ACK it (§13.2.2.4), also for retransmissions.
        let first = c.b.remote_tag.is_none()
            || c.state == CallState::Proceeding
            || c.state == CallState::Cancelling;
        if c.b.remote_tag.is_none() || c.b.remote_tag != k.to_tag {
            c.b.remote_tag = k.to_tag.clone();
            if let Some(to) = header_values(&resp.headers, "To").into_iter().next() {
                c.b.remote_header = to;
            }
            if let Some(ct) = header_values(&resp.headers, "Contact").into_iter().next() {
                c.b.remote_target = uri_of(&ct).to_string();
            }
            let mut rr = header_values(&resp.headers, "Record-Route");
            rr.reverse();
            c.b.route_set = rr;
        }
        self.ack_b(call);
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        match c.state {
            CallState::Cancelling => {
                // CANCEL race (§9.1): B answered anyway; ACK done above, now BYE it.
                self.send_bye(now, call, Leg::B, None);
                self.end_call(call, EndReason::Cancelled);
            }
            CallState::Proceeding if first => {
                c.state = CallState::Established;
                self.changed.insert(call);
                let body = self.answer_for_a(call, &resp);
                let Some(c) = self.calls.get_mut(&call) else {
                    return;
                };
                c.counted = true;
                let Some((atx, inv, tag)) = c.a_setup() else {
                    return;
                };
                let transport = c.a.peer.transport;
                let bind = c.binds[Leg::A as usize];
                let contact = Header::Other("Contact".into(), self.contact(transport, bind));
                let mut extra = vec![contact];
                extra.extend(session_timer::forward_response(code, &resp.headers));
                self.respond(
                    now,
                    atx,
                    &inv,
                    200,
                    None,
                    Some(&tag),
                    extra,
                    body.map(|b| (SDP, b)),
                );
                self.counts.aggregate += 1;
                self.counts.bump();
                self.arm_session_timer(now, call, &resp);
                if let Some(max) = self.cfg.max_call_duration {
                    self.set_timer(call, CallTimer::MaxDuration, Some(now + max));
                }
                for leg in [Leg::A, Leg::B] {
                    if let Some(media) = self.negotiated(call, leg) {
                        self.emit(SessionEvent::MediaUp { call, leg, media });
                    }
                }
            }
            _ => {}
        }
    }

    /// Records B's SDP answer (if any) and returns it rewritten for leg A.
    fn answer_for_a(&mut self, call: CallHandle, resp: &Response) -> Option<Vec<u8>> {
        let (sdp, _) = body_parts(&resp.headers, &resp.body).ok()?;
        let mut sdp = Sdp::parse(&sdp?).ok()?;
        let c = self.calls.get_mut(&call)?;
        let media_ip = c.binds[Leg::A as usize].media_ip;
        c.media[Leg::B as usize] = sdp.audio();
        sdp.anchor_audio(media_ip, c.port(Leg::A));
        sdp.set_origin("xdpfork", c.session_id, c.sdp_version, media_ip);
        Some(sdp.to_bytes())
    }

    fn ack_b(&mut self, call: CallHandle) {
        let via = self.via(
            self.calls
                .get(&call)
                .map(|c| c.b.peer.transport)
                .unwrap_or(Transport::Udp),
            self.bind_of(call, Leg::B),
        );
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let cseq = c.b_invite_cseq;
        let peer = c.b.peer;
        if let Some(ack) = c.b.request(RequestParts {
            method: "ACK",
            via: &via,
            contact: None,
            body: None,
            cseq: Some(cseq),
            max_forwards: 70,
        }) {
            self.tl.send_stateless(peer, &SipMessage::Request(ack));
            self.pump_quiet();
        }
    }
}
