//! Voice bots (endpoint mode): a call to a bot number ends here. sip-agent answers the INVITE
//! itself with an SDP answer anchored on this host (one G.711 law out of the offer, plus
//! telephone-event when offered), and the bot, a speech server that talks back
//! (docs/speech-protocol.md §16), is the other party: [`SessionEvent::BotUp`] tells the media
//! layer to install the caller's flow as a sink and fork it with return audio.
//!
//! Role: the bot call's one dialog (leg A). The call is a [`Call`](super::Call) like any other
//! (BYE, timers, counts, teardown) whose leg B is the bot: no SIP peer, no port, no dialog
//! anyone can reach. In-dialog: BYE ends the call; a re-INVITE is answered 488 (a bot call keeps
//! its first media); INFO 200 without effect (there is no controller to talk to).
//! Inputs: an INVITE whose Request-URI user matches a [`BotRoute`]. Outputs: the 200 with SDP,
//! [`SessionEvent::BotUp`].

use std::net::IpAddr;
use std::time::Instant;

use rand::RngCore;
use rsip::{Header, Request};
use tracing::debug;

use super::{
    body_parts, B2bua, BotCall, BotLeg, BotRoute, Call, CallHandle, CallParties, CallState, Leg,
    PortAllocator, SessionEvent, SDP,
};
use crate::core::dialog::Dialog;
use crate::core::fork_request::ForkSequence;
use crate::core::message::{header_values, uri_of};
use crate::core::sdp::{AudioMedia, Codec, Sdp};
use crate::core::session_timer::{CallTimer, CallTimers};
use crate::core::transaction::{Peer, TxHandle};

/// The answer to `offer`: its first G.711 format (RFC 3264 §6.1: a subset of the offer, in
/// its order) and its telephone-event, on `addr`:`port`; `None` when it offers no G.711.
fn answer(offer: &AudioMedia, addr: IpAddr, port: u16, session_id: u64) -> Option<Vec<u8>> {
    let g711 = offer.codecs.iter().find(|c| c.is_g711())?;
    let dtmf = offer.codecs.iter().find(|c| c.is_telephone_event());
    let name = |c: &Codec, default: &str| c.name.clone().unwrap_or_else(|| default.into());
    let ip = if addr.is_ipv4() { "IP4" } else { "IP6" };
    let mut fmts = g711.pt.to_string();
    let mut attrs = format!(
        "a=rtpmap:{} {}/8000\r\n",
        g711.pt,
        name(g711, if g711.pt == 8 { "PCMA" } else { "PCMU" })
    );
    if let Some(d) = dtmf {
        fmts.push_str(&format!(" {}", d.pt));
        attrs.push_str(&format!("a=rtpmap:{} telephone-event/8000\r\n", d.pt));
        attrs.push_str(&format!("a=fmtp:{} 0-15\r\n", d.pt));
    }
    let ptime = offer.ptime.unwrap_or(20);
    Some(
        format!(
            "v=0\r\no=xdpfork {session_id} 1 IN {ip} {addr}\r\ns=xdpfork\r\nc=IN {ip} {addr}\r\n\
             t=0 0\r\nm=audio {port} RTP/AVP {fmts}\r\n{attrs}a=ptime:{ptime}\r\na=sendrecv\r\n"
        )
        .into_bytes(),
    )
}

impl<P: PortAllocator> B2bua<P> {
    pub(super) fn bot_for(&self, user: &str) -> Option<BotRoute> {
        super::config::most_specific(&self.cfg.bots, user, |b| &b.pattern).cloned()
    }

    /// Answers a call to a bot number (see the module docs).
    pub(super) fn new_bot_call(
        &mut self,
        now: Instant,
        tx: TxHandle,
        from: Peer,
        req: Request,
        bot: BotRoute,
    ) {
        let reject = |me: &mut Self, code: u16, reason: Option<&str>| {
            me.respond(now, tx, &req, code, reason, None, vec![], None)
        };
        let Some(contact) = header_values(&req.headers, "Contact").into_iter().next() else {
            return reject(self, 400, Some("Missing Contact"));
        };
        let sdp = match body_parts(&req.headers, &req.body) {
            Ok((Some(b), _)) => b,
            Ok((None, _)) => return reject(self, 488, None),
            Err(reason) => return reject(self, 400, Some(reason)),
        };
        let Some(offer) = Sdp::parse(&sdp).ok().and_then(|s| s.audio()) else {
            return reject(self, 488, None);
        };
        if offer.is_srtp() || offer.addr.is_unspecified() || offer.port == 0 {
            return reject(self, 488, None);
        }
        let bind = self.default_bind();
        self.next_call = self.next_call.wrapping_add(1);
        let call = CallHandle(self.next_call);
        let session_id = self.rng.next_u64() >> 2;
        let Some(port) = self.ports.allocate(call, Leg::A) else {
            return reject(self, 503, None);
        };
        let Some(body) = answer(&offer, bind.media_ip, port, session_id) else {
            self.ports.release(port);
            return reject(self, 488, Some("No G.711"));
        };
        let answer_media = Sdp::parse(&body).ok().and_then(|s| s.audio());
        let Some((a, from_hdr)) = self.caller_dialog(&req, &contact, from) else {
            self.ports.release(port);
            return;
        };
        let a_tag = a.local_tag.clone();
        let to = header_values(&req.headers, "To")
            .into_iter()
            .next()
            .unwrap_or_default();
        // The bot's side: never sent to, never found by a request (its Call-ID and tag are
        // ours and random, and not in `by_dialog`).
        let b = Dialog {
            call_id: format!("bot-{}", self.token()),
            local_tag: self.token(),
            remote_tag: None,
            local_header: String::new(),
            remote_header: String::new(),
            remote_target: String::new(),
            route_set: Vec::new(),
            local_cseq: 0,
            remote_cseq: None,
            peer: from,
        };
        let parties = CallParties {
            call_id: a.call_id.clone(),
            from: uri_of(&from_hdr).to_string(),
            to: uri_of(&to).to_string(),
        };
        let guid = format!("bot-{}", self.token());
        debug!(?call, %guid, "call answered by a voice bot");
        self.by_dialog
            .insert((a.call_id.clone(), a.local_tag.clone()), (call, Leg::A));
        self.calls.insert(
            call,
            Call {
                state: CallState::Established,
                a,
                b,
                route_forking: false,
                a_invite: None,
                b_invite_tx: None,
                b_invite_via: String::new(),
                b_invite_to: String::new(),
                b_invite_cseq: 0,
                b_provisional: false,
                cancel_pending: false,
                ports: [port, 0],
                binds: [bind, bind],
                media: [Some(offer), answer_media],
                sdp_version: 1,
                session_id,
                fork: ForkSequence::new(),
                fork_leg: None,
                enhanced: false,
                counted: true,
                timers: CallTimers::default(),
                session_interval: None,
                bot: Some(BotLeg::default()),
            },
        );
        self.changed.insert(call);
        let contact = Header::Other("Contact".into(), self.contact(from.transport, bind));
        self.respond(
            now,
            tx,
            &req,
            200,
            None,
            Some(&a_tag),
            vec![contact],
            Some((SDP, body)),
        );
        self.counts.aggregate += 1;
        self.counts.bump();
        if let Some(max) = self.cfg.max_call_duration {
            self.set_timer(call, CallTimer::MaxDuration, Some(now + max));
        }
        if let Some(media) = self.negotiated(call, Leg::A) {
            self.emit(SessionEvent::BotUp {
                call,
                bot: Box::new(BotCall {
                    media,
                    route: bot,
                    guid,
                    parties,
                }),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_takes_the_first_g711_and_telephone_event_of_the_offer() {
        let offer = Sdp::parse(
            b"v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
              m=audio 4000 RTP/AVP 18 8 0 101\r\na=rtpmap:18 G729/8000\r\n\
              a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:30\r\n",
        )
        .expect("offer")
        .audio()
        .expect("audio");
        let body = answer(&offer, "10.77.1.1".parse().expect("ip"), 30000, 7).expect("g711");
        let a = Sdp::parse(&body).expect("answer").audio().expect("audio");
        assert_eq!((a.addr.to_string(), a.port), ("10.77.1.1".into(), 30000));
        let pts: Vec<u8> = a.codecs.iter().map(|c| c.pt).collect();
        assert_eq!(pts, [8, 101]);
        assert_eq!(a.ptime, Some(30));
        let g729_only = Sdp::parse(
            b"v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
              m=audio 4000 RTP/AVP 18\r\n",
        )
        .expect("offer")
        .audio()
        .expect("audio");
        assert_eq!(
            answer(&g729_only, "10.77.1.1".parse().expect("ip"), 30000, 7),
            None
        );
    }
}
