//! WebRTC legs of an ng call: which side is a browser, what the SDP toward each side says, and
//! what the shell must open for a bridged leg (docs/webrtc.md).
//!
//! Role: pure helpers the engine calls from `offer` and `answer`. A browser leg
//! (`UDP/TLS/RTP/SAVPF`) is bridged: the browser talks ICE-lite + DTLS-SRTP to a user-space
//! port ([`WebrtcLeg::browser`]); the decrypted audio enters fork-agent's kernel relay from the
//! gateway peer ([`WebrtcConfig::gateway`]) at the leg's kernel anchor, so for the kernel the
//! call is an ordinary plain call between the gateway and the phone.
//!
//! Inputs: the SDP a side sent and the request's flags. Outputs: rewritten SDP bodies, the
//! browser's [`RemoteParams`], and [`BridgeOp`]s for the shell.

use std::net::{IpAddr, SocketAddr};

use media_anchor::sdp::Sdp;
use webrtc_bridge::{Counters, Fingerprint, IceCredentials, RemoteParams, Role};

use crate::core::engine::ControlId;

/// The WebRTC transport protocol (RFC 8827 §6.5, JSEP).
pub const SAVPF: &str = "UDP/TLS/RTP/SAVPF";
/// Plain RTP.
pub const AVP: &str = "RTP/AVP";

/// Attributes that describe a browser's transport and mean nothing (or harm) to a plain phone.
const BROWSER_ONLY: &[&str] = &[
    "fingerprint",
    "setup",
    "tls-id",
    "rtcp-mux",
    "rtcp-mux-only",
    "rtcp-rsize",
    "mid",
    "group",
    "msid",
    "msid-semantic",
    "ssrc",
    "ssrc-group",
    "extmap",
    "extmap-allow-mixed",
    "rtcp-fb",
    "ice-options",
    "ice-lite",
    "ice-ufrag",
    "ice-pwd",
    "candidate",
    "end-of-candidates",
    "crypto",
];

/// Settings for bridged legs (ng-agent's `[webrtc]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebrtcConfig {
    /// This host's certificate fingerprint (the shell generated the certificate).
    pub fingerprint: Fingerprint,
    /// Host end of the gateway veth: the kernel anchors of bridged legs live here.
    pub kernel_address: IpAddr,
    /// The gateway peer's address inside its namespace: decrypted audio comes from here.
    pub gateway: IpAddr,
}

/// The `DTLS=` flag (rtpengine: which role we take toward the browser).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtlsFlag {
    /// No flag: `actpass` in our offers, the role the browser leaves us in answers.
    #[default]
    Default,
    /// `DTLS=passive`: we never send a ClientHello.
    Passive,
    /// `DTLS=active`: we send the ClientHello (once the browser's address is checked).
    Active,
}

/// `a=setup` values (RFC 4145 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// `active`: sends the ClientHello.
    Active,
    /// `passive`: waits for it.
    Passive,
    /// `actpass`: the answer decides.
    ActPass,
}

impl Setup {
    fn parse(v: &str) -> Option<Setup> {
        Some(match v.trim() {
            "active" => Setup::Active,
            "passive" => Setup::Passive,
            "actpass" => Setup::ActPass,
            _ => return None,
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::ActPass => "actpass",
        }
    }
    /// Our DTLS role for our own setup value, `None` while it is `actpass`.
    pub fn role(self) -> Option<Role> {
        match self {
            Setup::Active => Some(Role::Client),
            Setup::Passive => Some(Role::Server),
            Setup::ActPass => None,
        }
    }
}

/// A bridged leg's WebRTC state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebrtcLeg {
    /// Browser-facing address (an interface address, a port from the pool): user space.
    pub browser: SocketAddr,
    /// Our ICE credentials on this leg.
    pub ice: IceCredentials,
    /// Our `a=setup`.
    pub setup: Setup,
    /// The browser's `a=mid` (answers must echo it); `0` in our own offers.
    pub mid: String,
    /// The browser bundles (`a=group:BUNDLE`), so our SDP does too.
    pub bundle: bool,
    /// What the browser's SDP said, once it has spoken.
    pub remote: Option<RemoteParams>,
    /// Last counters the shell reported.
    pub counters: Counters,
    /// The browser's address ICE selected, as the shell reported it: the source of the
    /// nominating check (a TURN relay's address for a browser behind one).
    pub selected: Option<SocketAddr>,
}

/// What a bridge task reports about its leg as it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegReport {
    /// The leg's browser-facing address (its key).
    pub browser: SocketAddr,
    /// Its counters so far.
    pub counters: Counters,
    /// The browser's selected address, once a check nominated one.
    pub selected: Option<SocketAddr>,
}

/// What the shell must do for bridged legs, keyed by the browser-facing address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeOp {
    /// Open the browser-facing socket and the gateway's RTP/RTCP sockets, start a bridge, and
    /// answer with [`Engine::handle_bridge_opened`](crate::core::engine::Engine::handle_bridge_opened)
    /// (the offer's reply waits for it).
    Open {
        /// Echo in `handle_bridge_opened`.
        id: ControlId,
        /// Browser-facing address (also the key).
        browser: SocketAddr,
        /// Gateway socket address (RTP; RTCP on the next port).
        gateway: SocketAddr,
        /// Kernel anchor the gateway sends to (RTP; RTCP on the next port).
        kernel: SocketAddr,
        /// ICE credentials.
        ice: IceCredentials,
        /// The browser's parameters if its offer carried them.
        remote: Option<RemoteParams>,
    },
    /// The browser's answer arrived.
    Remote {
        /// Which bridge.
        browser: SocketAddr,
        /// Its parameters.
        remote: RemoteParams,
    },
    /// The call is gone: close the sockets.
    Close {
        /// Which bridge.
        browser: SocketAddr,
    },
}

/// The browser's side of an SDP exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserSdp {
    /// `a=fingerprint`.
    pub fingerprint: Fingerprint,
    /// `a=setup` (default `active` in an answer and `actpass` in an offer, RFC 5763 §5).
    pub setup: Option<Setup>,
    /// `a=mid`.
    pub mid: Option<String>,
    /// `a=group:BUNDLE` present.
    pub bundle: bool,
}

/// Reads what a browser's SDP says about its DTLS and bundling. A browser must send
/// `a=fingerprint` (RFC 8827 §6.5) and `a=rtcp-mux` (RFC 8834 §5.1.1).
pub fn browser_sdp(sdp: &Sdp) -> Result<BrowserSdp, String> {
    let fp = sdp
        .attribute("fingerprint")
        .ok_or("bad SDP: a UDP/TLS/RTP/SAVPF stream without a=fingerprint")?;
    let fingerprint = Fingerprint::parse(fp).map_err(|e| format!("bad SDP: {e}"))?;
    if sdp.attribute("rtcp-mux").is_none() {
        return Err(
            "bad SDP: a WebRTC stream without a=rtcp-mux (required, RFC 8834 §5.1.1)".into(),
        );
    }
    let setup = match sdp.attribute("setup") {
        None => None,
        Some(v) => Some(Setup::parse(v).ok_or_else(|| format!("bad SDP: a=setup:{v}"))?),
    };
    Ok(BrowserSdp {
        fingerprint,
        setup,
        mid: sdp.attribute("mid").map(str::to_owned),
        bundle: sdp
            .attribute("group")
            .is_some_and(|g| g.starts_with("BUNDLE")),
    })
}

/// Our `a=setup` in an offer to a browser.
pub fn offer_setup(flag: DtlsFlag) -> Setup {
    match flag {
        DtlsFlag::Default => Setup::ActPass,
        DtlsFlag::Passive => Setup::Passive,
        DtlsFlag::Active => Setup::Active,
    }
}

/// Our `a=setup` answering a browser that offered `theirs` (RFC 5763 §5: an `actpass` offer
/// lets us choose; we choose passive unless told otherwise, so we never send the first flight).
pub fn answer_setup(theirs: Option<Setup>, flag: DtlsFlag) -> Result<Setup, String> {
    let theirs = theirs.unwrap_or(Setup::ActPass);
    match (theirs, flag) {
        (Setup::ActPass, DtlsFlag::Active) => Ok(Setup::Active),
        (Setup::ActPass | Setup::Active, DtlsFlag::Default | DtlsFlag::Passive) => {
            Ok(Setup::Passive)
        }
        (Setup::Passive, DtlsFlag::Default | DtlsFlag::Active) => Ok(Setup::Active),
        (Setup::Active, DtlsFlag::Active) => {
            Err("DTLS=active, but the browser offered a=setup:active too".into())
        }
        (Setup::Passive, DtlsFlag::Passive) => {
            Err("DTLS=passive, but the browser offered a=setup:passive too".into())
        }
    }
}

/// Our role once the browser answered our offer made with `ours`.
pub fn role_after_answer(ours: Setup, theirs: Option<Setup>) -> Result<Role, String> {
    match (ours, theirs.unwrap_or(Setup::Active)) {
        (Setup::ActPass, Setup::Active) | (Setup::Passive, Setup::Active) => Ok(Role::Server),
        (Setup::ActPass, Setup::Passive) | (Setup::Active, Setup::Passive) => Ok(Role::Client),
        (o, t) => Err(format!(
            "bad SDP: the browser answered a=setup:{} to our a=setup:{}",
            t.as_str(),
            o.as_str()
        )),
    }
}

/// The SDP a browser receives: `sdp` (the other side's) anchored at `leg.browser`, as
/// `UDP/TLS/RTP/SAVPF` with our ICE-lite candidate, credentials, fingerprint, setup, mid and
/// rtcp-mux.
pub fn toward_browser(mut sdp: Sdp, leg: &WebrtcLeg, cfg: &WebrtcConfig, origin: bool) -> Vec<u8> {
    let at = leg.browser;
    sdp.remove_attributes(BROWSER_ONLY);
    sdp.remove_attributes(&["rtcp"]);
    sdp.anchor_audio(at.ip(), at.port());
    if origin {
        sdp.set_origin_address(at.ip());
    }
    sdp.set_audio_proto(SAVPF);
    // ICE-lite is a session-level attribute (RFC 8839 §5.3).
    sdp.push_session_attribute("ice-lite".into());
    if leg.bundle {
        sdp.push_session_attribute(format!("group:BUNDLE {}", leg.mid));
    }
    let fam = if at.is_ipv4() { "IP4" } else { "IP6" };
    for a in [
        format!("rtcp:{} IN {fam} {}", at.port(), at.ip()),
        format!("mid:{}", leg.mid),
        format!("ice-ufrag:{}", leg.ice.ufrag),
        format!("ice-pwd:{}", leg.ice.pwd),
        format!("fingerprint:{}", cfg.fingerprint),
        format!("setup:{}", leg.setup.as_str()),
        "rtcp-mux".into(),
        // One host candidate, component 1 (rtcp-mux), highest type preference (RFC 8445 §5.1.2).
        format!(
            "candidate:1 1 udp 2130706431 {} {} typ host",
            at.ip(),
            at.port()
        ),
        "end-of-candidates".into(),
    ] {
        sdp.push_audio_attribute(a);
    }
    sdp.to_bytes()
}

/// The SDP a plain phone receives from a browser: anchored at `local`, `RTP/AVP`, every
/// browser-transport attribute gone, RTCP on the next port (no rtcp-mux: the phone's side is
/// demultiplexed, rtpengine's `rtcp-mux-demux`).
pub fn toward_phone(mut sdp: Sdp, local: SocketAddr, origin: bool) -> Vec<u8> {
    sdp.remove_attributes(BROWSER_ONLY);
    sdp.anchor_audio(local.ip(), local.port());
    if origin {
        sdp.set_origin_address(local.ip());
    }
    sdp.set_audio_proto(AVP);
    sdp.to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AIORTC_OFFER: &str = "v=0\r\no=- 3913 3913 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\na=msid-semantic:WMS *\r\nm=audio 50000 UDP/TLS/RTP/SAVPF 0 8\r\n\
c=IN IP4 10.90.1.2\r\na=sendrecv\r\na=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=mid:0\r\na=msid:a b\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=rtcp-mux\r\na=ssrc:1 cname:x\r\n\
a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=candidate:a 1 udp 2130706431 10.90.1.2 50000 typ host\r\na=end-of-candidates\r\n\
a=ice-ufrag:brws\r\na=ice-pwd:browserpasswordbrowserpw\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\n";

    fn cfg() -> WebrtcConfig {
        WebrtcConfig {
            fingerprint: Fingerprint::parse(
                "sha-256 AA:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF",
            )
            .expect("fp"),
            kernel_address: "10.99.0.1".parse().expect("ip"),
            gateway: "10.99.0.2".parse().expect("ip"),
        }
    }

    #[test]
    fn a_browser_offer_is_read_and_reaches_the_phone_as_plain_rtp() {
        let sdp = Sdp::parse(AIORTC_OFFER.as_bytes()).expect("sdp");
        let b = browser_sdp(&sdp).expect("browser");
        assert_eq!(b.setup, Some(Setup::ActPass));
        assert_eq!(b.mid.as_deref(), Some("0"));
        assert!(b.bundle);
        let out = toward_phone(sdp, "10.77.2.1:30002".parse().expect("addr"), true);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("m=audio 30002 RTP/AVP 0 8\r\n"), "{text}");
        assert!(text.contains("c=IN IP4 10.77.2.1\r\n"), "{text}");
        assert!(text.contains("a=rtcp:30003 IN IP4 10.77.2.1\r\n"), "{text}");
        for gone in [
            "fingerprint",
            "setup",
            "rtcp-mux",
            "ice-",
            "candidate",
            "mid",
            "ssrc",
            "BUNDLE",
        ] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
    }

    #[test]
    fn the_browser_gets_ice_lite_dtls_and_rtcp_mux_in_our_sdp() {
        let phone = "v=0\r\no=bob 1 1 IN IP4 10.77.2.2\r\ns=-\r\nc=IN IP4 10.77.2.2\r\nt=0 0\r\n\
m=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=rtcp:40003\r\na=sendrecv\r\n";
        let leg = WebrtcLeg {
            browser: "10.90.1.1:30000".parse().expect("addr"),
            ice: IceCredentials {
                ufrag: "ufra".into(),
                pwd: "p".repeat(24),
            },
            setup: Setup::Passive,
            mid: "0".into(),
            bundle: true,
            remote: None,
            counters: Counters::default(),
            selected: None,
        };
        let sdp = Sdp::parse(phone.as_bytes()).expect("sdp");
        let text = String::from_utf8(toward_browser(sdp, &leg, &cfg(), true)).expect("utf8");
        let back = Sdp::parse(text.as_bytes()).expect("reparse");
        assert!(
            text.contains("m=audio 30000 UDP/TLS/RTP/SAVPF 0\r\n"),
            "{text}"
        );
        assert_eq!(back.attribute("ice-lite"), Some(""));
        assert_eq!(back.attribute("group"), Some("BUNDLE 0"));
        assert_eq!(back.attribute("setup"), Some("passive"));
        assert_eq!(back.attribute("rtcp-mux"), Some(""));
        assert_eq!(back.attribute("rtcp"), Some("30000 IN IP4 10.90.1.1"));
        assert_eq!(back.attribute("ice-ufrag"), Some("ufra"));
        assert_eq!(
            Fingerprint::parse(back.attribute("fingerprint").expect("fp")).expect("parse"),
            cfg().fingerprint
        );
        assert!(text.contains("a=candidate:1 1 udp 2130706431 10.90.1.1 30000 typ host\r\n"));
        assert!(text.contains("o=bob 1 1 IN IP4 10.90.1.1\r\n"), "{text}");
    }

    #[test]
    fn setup_negotiation_follows_rfc_5763_and_the_dtls_flag() {
        assert_eq!(
            answer_setup(Some(Setup::ActPass), DtlsFlag::Passive),
            Ok(Setup::Passive)
        );
        assert_eq!(answer_setup(None, DtlsFlag::Default), Ok(Setup::Passive));
        assert_eq!(
            answer_setup(Some(Setup::ActPass), DtlsFlag::Active),
            Ok(Setup::Active)
        );
        assert_eq!(
            answer_setup(Some(Setup::Passive), DtlsFlag::Default),
            Ok(Setup::Active)
        );
        assert!(answer_setup(Some(Setup::Passive), DtlsFlag::Passive).is_err());
        assert_eq!(
            role_after_answer(Setup::ActPass, Some(Setup::Active)),
            Ok(Role::Server)
        );
        assert_eq!(
            role_after_answer(Setup::ActPass, Some(Setup::Passive)),
            Ok(Role::Client)
        );
        assert!(role_after_answer(Setup::Passive, Some(Setup::Passive)).is_err());
        assert_eq!(offer_setup(DtlsFlag::Passive).role(), Some(Role::Server));
    }

    #[test]
    fn a_browser_sdp_without_fingerprint_or_rtcp_mux_is_refused() {
        let no_fp = AIORTC_OFFER.replace("a=fingerprint", "a=x-fingerprint");
        let sdp = Sdp::parse(no_fp.as_bytes()).expect("sdp");
        assert!(browser_sdp(&sdp)
            .expect_err("no fp")
            .contains("a=fingerprint"));
        let no_mux = AIORTC_OFFER.replace("a=rtcp-mux\r\n", "");
        let sdp = Sdp::parse(no_mux.as_bytes()).expect("sdp");
        assert!(browser_sdp(&sdp).expect_err("no mux").contains("rtcp-mux"));
    }
}
