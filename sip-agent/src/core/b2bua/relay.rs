//! In-dialog requests: BYE, OPTIONS, INFO and re-INVITE on an established call, checked
//! (CSeq order, fork requests only from a controller, session-timer minimum) and relayed to the
//! other leg, with a re-INVITE's SDP re-anchored; their answers are relayed back and our own ACK
//! sent for a relayed re-INVITE's 2xx.
//!
//! Role: everything a dialog carries after setup except the fork requests' content (fork.rs).
//! Inputs: a request matched to a dialog ([`B2bua::in_dialog`](super::B2bua)), the other leg's
//! answer to a relayed request. Outputs: requests and responses through the transaction layer,
//! [`SessionEvent::MediaChanged`] when a re-INVITE changed a leg's media.

use std::time::Instant;

use rsip::{Header, Method, Request, Response, SipMessage};
use tracing::debug;

use super::{
    body_parts, B2bua, CallHandle, CallState, EndReason, Leg, Pending, PortAllocator, SessionEvent,
    ALLOW, SDP,
};
use crate::core::dialog::RequestParts;
use crate::core::fork_request::Carrier;
use crate::core::message::{self, content_type};
use crate::core::sdp::{AudioMedia, Sdp};
use crate::core::session_timer::{self, RequestCheck};
use crate::core::transaction::{Peer, TxHandle};

impl<P: PortAllocator> B2bua<P> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn in_dialog(
        &mut self,
        now: Instant,
        tx: TxHandle,
        from: Peer,
        call: CallHandle,
        leg: Leg,
        req: Request,
        cseq: u32,
    ) {
        self.touch(call);
        let Some(c) = self.calls.get_mut(&call) else {
            return self.respond(now, tx, &req, 481, None, None, vec![], None);
        };
        if !c.dialog(leg).accept_remote_cseq(cseq) {
            // §12.2.2: lower CSeq than already seen.
            return self.respond(
                now,
                tx,
                &req,
                500,
                Some("Out Of Order CSeq"),
                None,
                vec![],
                None,
            );
        }
        let established = c.state == CallState::Established;
        if c.bot.is_some() {
            return self.bot_in_dialog(now, tx, call, from, req);
        }
        match req.method {
            Method::Bye => {
                self.respond(now, tx, &req, 200, None, None, vec![], None);
                if established {
                    self.send_bye(now, call, leg.other(), None);
                    self.end_call(call, EndReason::Bye(leg));
                }
            }
            Method::Options => self.respond(
                now,
                tx,
                &req,
                200,
                None,
                None,
                vec![Header::Other("Allow".into(), ALLOW.into())],
                None,
            ),
            Method::Info | Method::Invite => {
                let (sdp, json) = match body_parts(&req.headers, &req.body) {
                    Ok(p) => p,
                    Err(reason) => {
                        return self.respond(now, tx, &req, 400, Some(reason), None, vec![], None)
                    }
                };
                if json.is_some() && self.refuse_foreign_fork_request(now, tx, call, from, &req) {
                    return;
                }
                if !established {
                    // Mid-setup re-INVITE/INFO: §14.1 says 491 when an INVITE is in progress.
                    let code = if req.method == Method::Invite {
                        491
                    } else {
                        481
                    };
                    return self.respond(now, tx, &req, code, None, None, vec![], None);
                }
                if req.method == Method::Invite
                    && session_timer::check_request(&req.headers, self.cfg.min_se)
                        == RequestCheck::TooSmall
                {
                    // RFC 4028 §8.1 applies to session refreshes too; the fork JSON of a
                    // refused re-INVITE is not acted on.
                    let min_se = session_timer::min_se_header(self.cfg.min_se);
                    return self.respond(now, tx, &req, 422, None, None, vec![min_se], None);
                }
                if req.method == Method::Info && json.is_some() {
                    // Reference: the INFO fork request is answered 200 at once; the outcome
                    // goes back in a status INFO.
                    self.respond(now, tx, &req, 200, None, None, vec![], None);
                    if let Some(j) = json {
                        self.on_fork_body(now, call, leg, &j, Carrier::Info);
                    }
                    return;
                }
                if let Some(j) = &json {
                    self.on_fork_body(now, call, leg, j, Carrier::ReInvite);
                }
                self.relay(now, tx, call, leg, req, sdp);
            }
            Method::Ack | Method::Cancel => {}
            _ => {
                let allow = Header::Other("Allow".into(), ALLOW.into());
                self.respond(now, tx, &req, 405, None, None, vec![allow], None);
            }
        }
    }

    /// A fork request from a dialog party that is not a controller: the whole request is
    /// refused with 403 and counted (a re-INVITE is not relayed either), so it changes nothing.
    /// Returns whether it was.
    fn refuse_foreign_fork_request(
        &mut self,
        now: Instant,
        tx: TxHandle,
        call: CallHandle,
        from: Peer,
        req: &Request,
    ) -> bool {
        if self.is_controller(from) {
            return false;
        }
        self.security.forbidden_fork_request += 1;
        debug!(?call, from = %from.addr, method = %req.method,
            "fork request from a peer that is not a controller: 403");
        self.respond(now, tx, req, 403, None, None, vec![], None);
        true
    }

    /// A request in a voice bot's call (bot.rs): there is no other leg to relay to.
    fn bot_in_dialog(
        &mut self,
        now: Instant,
        tx: TxHandle,
        call: CallHandle,
        from: Peer,
        req: Request,
    ) {
        match req.method {
            Method::Bye => {
                self.respond(now, tx, &req, 200, None, None, vec![], None);
                self.end_call(call, EndReason::Bye(Leg::A));
            }
            Method::Info if matches!(body_parts(&req.headers, &req.body), Ok((_, Some(_)))) => {
                if !self.refuse_foreign_fork_request(now, tx, call, from, &req) {
                    // A controller's fork request on a bot's call: nothing can act on it, and
                    // a 200 would have it wait for a status INFO that never comes.
                    let why = Some("Voice bot call: no forking");
                    self.respond(now, tx, &req, 488, why, None, vec![], None);
                }
            }
            Method::Options | Method::Info => {
                let allow = Header::Other("Allow".into(), ALLOW.into());
                self.respond(now, tx, &req, 200, None, None, vec![allow], None)
            }
            // A bot call keeps the media it was answered with.
            Method::Invite => self.respond(now, tx, &req, 488, None, None, vec![], None),
            Method::Ack | Method::Cancel => {}
            _ => {
                let allow = Header::Other("Allow".into(), ALLOW.into());
                self.respond(now, tx, &req, 405, None, None, vec![allow], None);
            }
        }
    }

    /// Relays an in-dialog request to the other leg (a re-INVITE's SDP re-anchored).
    fn relay(
        &mut self,
        now: Instant,
        tx: TxHandle,
        call: CallHandle,
        from: Leg,
        req: Request,
        sdp: Option<Vec<u8>>,
    ) {
        let to = from.other();
        self.touch(call);
        let via = self.leg_via(call, to);
        let contact = self.contact(self.leg_transport(call, to), self.bind_of(call, to));
        let media_ip = self.bind_of(call, to).media_ip;
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let mut offer = None;
        let body: Option<(String, Vec<u8>)> = match (&req.method, sdp) {
            (Method::Invite, Some(s)) => match Sdp::parse(&s) {
                Ok(mut sdp) => {
                    offer = sdp.audio();
                    sdp.anchor_audio(media_ip, c.port(to));
                    c.sdp_version += 1;
                    sdp.set_origin("xdpfork", c.session_id, c.sdp_version, media_ip);
                    Some((SDP.to_string(), sdp.to_bytes()))
                }
                Err(_) => {
                    return self.respond(
                        now,
                        tx,
                        &req,
                        400,
                        Some("Malformed SDP"),
                        None,
                        vec![],
                        None,
                    );
                }
            },
            (Method::Invite, None) => None,
            _ => (!req.body.is_empty()).then(|| {
                (
                    content_type(&req.headers).unwrap_or_default(),
                    req.body.clone(),
                )
            }),
        };
        let method = req.method.to_string();
        let d = c.dialog(to);
        let peer = d.peer;
        let Some(mut out) = d.request(RequestParts {
            method: &method,
            via: &via,
            contact: (req.method == Method::Invite).then_some(contact.as_str()),
            body: body.as_ref().map(|(ct, b)| (ct.as_str(), b.as_slice())),
            cseq: None,
            max_forwards: 70,
        }) else {
            return self.respond(now, tx, &req, 500, None, None, vec![], None);
        };
        if req.method == Method::Invite {
            // A re-INVITE is a session refresh (RFC 4028 §7.4); its negotiation passes through.
            out.headers.extend(session_timer::forward_request(
                &req.headers,
                self.cfg.min_se,
            ));
        }
        match self.tl.send_request(now, peer, out) {
            Ok(t) => {
                self.pending.insert(
                    t,
                    Pending::Relay {
                        call,
                        from,
                        server_tx: tx,
                        orig: Box::new(req),
                        offer: offer.map(Box::new),
                    },
                );
            }
            Err(_) => self.respond(now, tx, &req, 500, None, None, vec![], None),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_relay_response(
        &mut self,
        now: Instant,
        call: CallHandle,
        from: Leg,
        server_tx: TxHandle,
        orig: Request,
        offer: Option<AudioMedia>,
        resp: Response,
    ) {
        let code = resp.status_code.code();
        let to = from.other();
        self.touch(call);
        let media_ip = self.bind_of(call, from).media_ip;
        let mut body: Option<(String, Vec<u8>)> = None;
        let mut changed = Vec::new();
        if orig.method == Method::Invite && (200..300).contains(&code) {
            // ACK the relayed re-INVITE on the other leg ourselves (§13.2.2.4).
            let cseq = message::keys(&SipMessage::Response(resp.clone())).map(|k| k.cseq);
            let via = self.leg_via(call, to);
            let Some(c) = self.calls.get_mut(&call) else {
                return;
            };
            let peer = c.dialog_peer(to);
            if let Some(ack) = c.dialog(to).request(RequestParts {
                method: "ACK",
                via: &via,
                contact: None,
                body: None,
                cseq,
                max_forwards: 70,
            }) {
                self.tl.send_stateless(peer, &SipMessage::Request(ack));
                self.pump_quiet();
            }
            let Some(c) = self.calls.get_mut(&call) else {
                return;
            };
            if let Some(o) = offer {
                if c.media[from as usize].as_ref() != Some(&o) {
                    c.media[from as usize] = Some(o);
                    changed.push(from);
                }
            }
            if let Ok((Some(s), _)) = body_parts(&resp.headers, &resp.body) {
                if let Ok(mut sdp) = Sdp::parse(&s) {
                    let answer = sdp.audio();
                    if answer.is_some() && c.media[to as usize] != answer {
                        c.media[to as usize] = answer;
                        changed.push(to);
                    }
                    sdp.anchor_audio(media_ip, c.port(from));
                    c.sdp_version += 1;
                    sdp.set_origin("xdpfork", c.session_id, c.sdp_version, media_ip);
                    body = Some((SDP.to_string(), sdp.to_bytes()));
                }
            }
        } else if !resp.body.is_empty() {
            body = Some((
                content_type(&resp.headers).unwrap_or_default(),
                resp.body.clone(),
            ));
        }
        let reason = match &resp.status_code {
            rsip::StatusCode::Other(_, r) => Some(r.clone()),
            _ => None,
        };
        let extra = if orig.method == Method::Invite {
            let transport = self.leg_transport(call, from);
            let mut extra = vec![Header::Other(
                "Contact".into(),
                self.contact(transport, self.bind_of(call, from)),
            )];
            extra.extend(session_timer::forward_response(code, &resp.headers));
            if (200..300).contains(&code) {
                // A successful refresh: the session interval restarts (RFC 4028 §10).
                self.arm_session_timer(now, call, &resp);
            }
            extra
        } else {
            vec![]
        };
        let tag = self
            .calls
            .get(&call)
            .and_then(|c| c.dialog_tag_for_response(&orig));
        let body_ref = body.as_ref().map(|(ct, b)| (ct.as_str(), b.clone()));
        self.respond(
            now,
            server_tx,
            &orig,
            code,
            reason.as_deref(),
            tag.as_deref(),
            extra,
            body_ref,
        );
        // Report every leg whose media changed (codec, address, hold) so the fork layer can
        // PAUSE/RESUME; both legs carry the codec from the latest answer.
        if !changed.is_empty() {
            for leg in [Leg::A, Leg::B] {
                if let Some(media) = self.negotiated(call, leg) {
                    self.emit(SessionEvent::MediaChanged { call, leg, media });
                }
            }
        }
    }
}
