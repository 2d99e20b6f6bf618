//! The engine's browser legs: the WebRTC flags checked against the call, the legs' extra
//! kernel anchors, the SDP toward each side, and the [`BridgeOp`]s for the shell.
//!
//! Kept apart from engine.rs so the plain-call state machine reads as before; everything here
//! is called from `offer`, `answer`, `teardown`, `query` and `statistics`.

use super::*;
use crate::core::webrtc::{BrowserSdp, DtlsFlag, LegReport};

/// What an offer or answer means for browser legs.
#[derive(Debug)]
pub(super) struct Plan {
    /// The sender of this SDP is a browser: what its SDP said.
    pub sender: Option<BrowserSdp>,
    /// The receiver of the rewritten SDP is a browser.
    pub receiver_browser: bool,
    /// `DTLS=`.
    pub dtls: DtlsFlag,
}

/// Records the browser's parameters; the bridge's `Remote` when they changed.
fn set_remote(w: &mut WebrtcLeg, remote: RemoteParams) -> Option<BridgeOp> {
    if w.remote.as_ref() == Some(&remote) {
        return None;
    }
    w.remote = Some(remote.clone());
    Some(BridgeOp::Remote {
        browser: w.browser,
        remote,
    })
}

/// The counters as a bencode dictionary (`query` per leg, `statistics` in total).
pub(super) fn counters_value(c: &Counters) -> Value {
    let n = |v: u64| Value::Int(v as i64);
    Value::dict([
        ("stun-answered", n(c.stun_answered)),
        ("stun-rejected", n(c.stun_rejected)),
        ("unverified-source", n(c.unverified_source)),
        ("fingerprint-mismatch", n(c.fingerprint_mismatch)),
        ("dtls-failed", n(c.dtls_failed)),
        ("srtp-auth-failed", n(c.srtp_auth_failed)),
        ("srtp-replayed", n(c.srtp_replayed)),
        ("malformed", n(c.malformed)),
        ("not-ready", n(c.not_ready)),
        ("to-plain", n(c.to_plain)),
        ("to-browser", n(c.to_browser)),
        ("early-sent", n(c.early_sent)),
        ("early-dropped", n(c.early_dropped)),
    ])
}

impl Engine {
    /// Reads the WebRTC side of an offer or answer. `receiver_browser` is known for answers
    /// (the offerer's kind); for offers it comes from `transport-protocol`, defaulting to the
    /// sender's protocol as rtpengine does.
    pub(super) fn webrtc_plan(
        &self,
        req: &Request,
        sdp: &Sdp,
        audio: &AudioMedia,
        receiver_browser: Option<bool>,
    ) -> Result<Plan, String> {
        let sender_browser = audio.proto == SAVPF;
        let receiver_browser = receiver_browser.unwrap_or_else(|| {
            req.transport_protocol
                .as_deref()
                .map_or(sender_browser, |p| p == SAVPF)
        });
        let off = |flag: &str| {
            format!(
                "unsupported: {flag} (WebRTC bridging is off: ng-agent's config has no [webrtc] \
                 section)"
            )
        };
        if self.cfg.webrtc.is_none() {
            if req.ice_force {
                return Err(off("ICE=force"));
            }
            match req.dtls {
                DtlsFlag::Passive => return Err(off("DTLS=passive")),
                DtlsFlag::Active => return Err(off("DTLS=active")),
                DtlsFlag::Default => {}
            }
            if receiver_browser {
                return Err(off("transport-protocol=UDP/TLS/RTP/SAVPF"));
            }
        }
        if req.ice_force && !receiver_browser {
            return Err(
                "unsupported: ICE=force toward a plain RTP/AVP side (ICE-lite runs \
                        only on browser legs)"
                    .into(),
            );
        }
        if req.dtls_off && receiver_browser {
            return Err("unsupported: DTLS=off toward a browser (WebRTC needs DTLS-SRTP)".into());
        }
        if sender_browser && receiver_browser {
            return Err(
                "unsupported: browser to browser (UDP/TLS/RTP/SAVPF on both sides); \
                        only browser to plain RTP/AVP is bridged"
                    .into(),
            );
        }
        let sender = if sender_browser {
            Some(wr::browser_sdp(sdp)?)
        } else {
            None
        };
        Ok(Plan {
            sender,
            receiver_browser,
            dtls: req.dtls,
        })
    }

    /// Makes `leg` a browser leg: its advertised address stays the browser-facing one, `local`
    /// moves to a new kernel anchor and `remote` to the gateway peer. Emits the bridge's `Open`
    /// and holds the reply to `key` until the shell reports that its sockets are bound
    /// ([`Engine::handle_bridge_opened`]).
    fn make_browser_leg(
        &mut self,
        leg: &mut Leg,
        setup: wr::Setup,
        sender: Option<&BrowserSdp>,
        (call_id, key): (&str, &ReplyKey),
    ) -> Result<(), String> {
        let cfg = self.cfg.webrtc.clone().ok_or("WebRTC bridging is off")?;
        let kernel_port = self.ports.allocate().ok_or("no free media port")?;
        let browser = leg.local;
        let ice = IceCredentials::random(&mut self.rng);
        let remote = sender.map(|s| RemoteParams {
            fingerprint: s.fingerprint.clone(),
            role: setup.role(),
        });
        let w = WebrtcLeg {
            browser,
            ice: ice.clone(),
            setup,
            mid: sender
                .and_then(|s| s.mid.clone())
                .unwrap_or_else(|| "0".into()),
            bundle: sender.is_none_or(|s| s.bundle),
            remote: remote.clone(),
            counters: Counters::default(),
            selected: None,
        };
        leg.local = SocketAddr::new(cfg.kernel_address, kernel_port);
        // The gateway uses the browser port's number: its namespace has a port space of its own.
        leg.remote = Some(SocketAddr::new(cfg.gateway, browser.port()));
        leg.webrtc = Some(w);
        let id = self.pend(call_id, OpKind::BridgeOpen(browser), Some(key));
        self.out.push_back(Output::Bridge(BridgeOp::Open {
            id,
            browser,
            gateway: SocketAddr::new(cfg.gateway, browser.port()),
            kernel: leg.local,
            ice,
            remote,
        }));
        Ok(())
    }

    /// For a new call `call_id`, offered by the request `key`: makes the browser legs the plan
    /// asks for (`legs[0]` sent the offer). On error the caller frees both legs
    /// ([`Engine::free_leg`]).
    pub(super) fn make_browser_legs(
        &mut self,
        legs: &mut [Leg; 2],
        plan: &Plan,
        call_id: &str,
        key: &ReplyKey,
    ) -> Result<(), String> {
        let [a, b] = legs;
        if let Some(s) = &plan.sender {
            let setup = wr::answer_setup(s.setup, plan.dtls)?;
            self.make_browser_leg(a, setup, Some(s), (call_id, key))?;
        }
        if plan.receiver_browser {
            self.make_browser_leg(b, wr::offer_setup(plan.dtls), None, (call_id, key))?;
        }
        Ok(())
    }

    /// The shell's answer to [`BridgeOp::Open`] `id`: `Err` names what could not be bound. The
    /// held offer reply goes out with it: `ok` once every leg is bound, else an `error` whose
    /// `error-reason` says which address failed, and the call is gone (ports, bridges, journal).
    pub fn handle_bridge_opened(
        &mut self,
        now: Instant,
        id: ControlId,
        result: Result<(), String>,
    ) {
        self.handle_control_result(now, id, result);
    }

    /// A re-offer must keep each side's kind; a browser's new fingerprint is passed on.
    pub(super) fn reoffer_browser(
        &mut self,
        call_id: &str,
        side: Side,
        plan: &Plan,
    ) -> Result<(), String> {
        let call = self.calls.get_mut(call_id).ok_or("call vanished")?;
        let sender_kind = call.legs[side.idx()].webrtc.is_some();
        let receiver_kind = call.legs[side.other().idx()].webrtc.is_some();
        if sender_kind != plan.sender.is_some() || receiver_kind != plan.receiver_browser {
            return Err(
                "unsupported: a re-offer that switches a side between WebRTC and \
                        plain RTP"
                    .into(),
            );
        }
        let (Some(w), Some(s)) = (call.legs[side.idx()].webrtc.as_mut(), &plan.sender) else {
            return Ok(());
        };
        let remote = RemoteParams {
            fingerprint: s.fingerprint.clone(),
            role: w.setup.role(),
        };
        if let Some(op) = set_remote(w, remote) {
            self.out.push_back(Output::Bridge(op));
        }
        Ok(())
    }

    /// The browser answered our offer: its fingerprint and the DTLS role it left us.
    pub(super) fn browser_answered(
        &mut self,
        call_id: &str,
        answerer: Side,
        sdp: &Sdp,
        audio: &AudioMedia,
    ) -> Result<(), String> {
        let call = self.calls.get_mut(call_id).ok_or("call vanished")?;
        let Some(w) = call.legs[answerer.idx()].webrtc.as_mut() else {
            if audio.proto == SAVPF {
                return Err(
                    "bad SDP: the answer is UDP/TLS/RTP/SAVPF, the offer was RTP/AVP".into(),
                );
            }
            return Ok(());
        };
        if audio.proto != SAVPF {
            return Err(format!(
                "bad SDP: a browser was offered UDP/TLS/RTP/SAVPF and answered {}",
                audio.proto
            ));
        }
        let theirs = wr::browser_sdp(sdp)?;
        let role = wr::role_after_answer(w.setup, theirs.setup)?;
        let remote = RemoteParams {
            fingerprint: theirs.fingerprint,
            role: Some(role),
        };
        if let Some(op) = set_remote(w, remote) {
            self.out.push_back(Output::Bridge(op));
        }
        Ok(())
    }

    /// The SDP `receiver` gets: browser SDP for a browser, plain SDP from a browser, or the
    /// plain rewrite.
    pub(super) fn sdp_toward(
        &self,
        call_id: &str,
        receiver: Side,
        sdp: Sdp,
        origin: bool,
    ) -> Result<Vec<u8>, String> {
        let call = self.calls.get(call_id).ok_or("call vanished")?;
        let to = &call.legs[receiver.idx()];
        let from = &call.legs[receiver.other().idx()];
        Ok(match (&to.webrtc, &self.cfg.webrtc) {
            (Some(w), Some(cfg)) => wr::toward_browser(sdp, w, cfg, origin),
            _ if from.webrtc.is_some() => wr::toward_phone(sdp, to.local, origin),
            _ => Self::rewrite(sdp, to.local, origin),
        })
    }

    /// Frees a leg's ports and closes its bridge if it has one.
    pub(super) fn free_leg(&mut self, leg: &Leg) {
        self.ports.release(leg.local.port());
        if let Some(w) = &leg.webrtc {
            self.ports.release(w.browser.port());
            self.out
                .push_back(Output::Bridge(BridgeOp::Close { browser: w.browser }));
        }
    }

    /// What a bridge reported (the shell sends it as it changes).
    pub fn handle_bridge_report(&mut self, report: LegReport) {
        for call in self.calls.values_mut() {
            for leg in &mut call.legs {
                if let Some(w) = leg.webrtc.as_mut().filter(|w| w.browser == report.browser) {
                    self.stats.webrtc -= w.counters;
                    self.stats.webrtc += report.counters;
                    w.counters = report.counters;
                    w.selected = report.selected;
                    return;
                }
            }
        }
    }
}
