//! RFC 4028 session timers as a B2BUA in the middle of the dialog sees them, and the per-call
//! timers (session expiry, maximum call duration) the B2BUA keeps.
//!
//! Role: pure helpers with no state beyond [`CallTimers`]. sip-agent takes the part RFC 4028
//! gives a proxy (§8): it passes the negotiation between the legs, refuses intervals below its
//! own minimum, learns the interval from each 2xx to an INVITE, and ends the call when no
//! refresh came in time. It is never the refresher and sends no refresh itself: both ends
//! negotiate who refreshes, and that end's re-INVITE passes through.
//!
//! Inputs: the headers of a request ([`check_request`], then [`forward_request`]) and of a
//! response ([`forward_response`], [`SessionExpires::from_headers`]). Outputs: the headers to put
//! on the other leg, a verdict ([`RequestCheck`]) and BYE deadlines ([`bye_deadline`]). Call
//! order in the B2BUA: check an INVITE before acting on it, forward the headers it relays, and
//! re-arm [`CallTimer::SessionExpires`] from every 2xx to an INVITE.

use std::time::{Duration, Instant};

use rsip::Header;

use crate::core::message::header_values;

/// The smallest session interval RFC 4028 allows anyone to ask for (§4, §5: Min-SE "MUST NOT be
/// less than 90 seconds"), and the default of sip-agent's own minimum.
pub const MIN_SE_FLOOR: Duration = Duration::from_secs(90);

/// The option tag of the extension (§3), in Supported and Require.
pub const OPTION_TAG: &str = "timer";

/// The non-refresher sends BYE this long before expiry at most (§10: "the minimum of 32 seconds
/// and one third of the session interval").
pub const BYE_LEAD_MAX: Duration = Duration::from_secs(32);

/// Reason header (RFC 3326) on the BYEs sent when a session expired without a refresh; 408 is
/// the code §10 names for a session that timed out.
pub const REASON_SESSION_EXPIRED: &str = "SIP;cause=408;text=\"Session expired\"";

/// Reason header (RFC 3326) on the BYEs sent when a call reached the configured maximum
/// duration. Q.850 cause 102 is "recovery on timer expiry", which gateways use for a
/// locally enforced time limit.
pub const REASON_MAX_DURATION: &str = "Q.850;cause=102;text=\"Maximum call duration\"";

/// Which end refreshes (§4 `refresher` parameter), relative to the transaction that carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// The client of that transaction.
    Uac,
    /// The server of that transaction.
    Uas,
}

/// A parsed `Session-Expires` value (§4): `delta-seconds *(;param)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    /// The session interval.
    pub interval: Duration,
    /// Who refreshes, when stated.
    pub refresher: Option<Refresher>,
}

impl SessionExpires {
    /// Parses one header value; `None` when the delta is not a number.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(';');
        let secs: u64 = parts.next()?.trim().parse().ok()?;
        let mut refresher = None;
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("refresher") {
                    refresher = match v.trim().to_ascii_lowercase().as_str() {
                        "uac" => Some(Refresher::Uac),
                        "uas" => Some(Refresher::Uas),
                        _ => None,
                    };
                }
            }
        }
        Some(Self {
            interval: Duration::from_secs(secs),
            refresher,
        })
    }

    /// The first readable `Session-Expires` of a message (§4 allows one; the compact form `x` is
    /// expanded by the parser).
    pub fn from_headers(headers: &rsip::Headers) -> Option<Self> {
        header_values(headers, "Session-Expires")
            .iter()
            .find_map(|v| Self::parse(v))
    }

    /// The header value as it goes on the wire.
    pub fn to_value(self) -> String {
        let secs = self.interval.as_secs();
        match self.refresher {
            Some(Refresher::Uac) => format!("{secs};refresher=uac"),
            Some(Refresher::Uas) => format!("{secs};refresher=uas"),
            None => secs.to_string(),
        }
    }
}

/// The `Min-SE` of a message (§5), if readable.
pub fn min_se(headers: &rsip::Headers) -> Option<Duration> {
    header_values(headers, "Min-SE").iter().find_map(|v| {
        v.split(';')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .map(Duration::from_secs)
    })
}

/// True when a `Supported` or `Require` header (`name`) lists the `timer` option tag.
pub fn lists_timer(headers: &rsip::Headers, name: &str) -> bool {
    header_values(headers, name)
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(OPTION_TAG))
}

/// What to do with a session-refresh request (INVITE or re-INVITE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestCheck {
    /// Relay it.
    Accept,
    /// Answer 422 with `Min-SE: <min_se>` (§8.1: the interval is below our minimum and the
    /// client said it supports the extension, so it can retry with a longer one).
    TooSmall,
}

/// Checks a request's `Session-Expires` against our minimum (§8.1).
pub fn check_request(headers: &rsip::Headers, min_se: Duration) -> RequestCheck {
    match SessionExpires::from_headers(headers) {
        Some(se) if se.interval < min_se && lists_timer(headers, "Supported") => {
            RequestCheck::TooSmall
        }
        _ => RequestCheck::Accept,
    }
}

/// The `Min-SE` header to answer a 422 with.
pub fn min_se_header(min_se: Duration) -> Header {
    Header::Other("Min-SE".into(), min_se.as_secs().to_string())
}

/// Session-timer headers to put on the request relayed to the other leg (§8.1 for a proxy):
/// `Session-Expires` as received, raised to `min_se` when it is below and the client cannot take
/// a 422 (no `Supported: timer`); `Min-SE` as the larger of the request's and ours whenever the
/// request takes part in the negotiation, so the far end answers no shorter than we accept;
/// `Supported`/`Require` carrying only the `timer` tag (other extensions such as 100rel are not
/// implemented here and must not be offered on the caller's behalf).
pub fn forward_request(headers: &rsip::Headers, min_se_ours: Duration) -> Vec<Header> {
    let mut out = Vec::new();
    let se = SessionExpires::from_headers(headers);
    let supported = lists_timer(headers, "Supported");
    let theirs = min_se(headers);
    if let Some(mut se) = se {
        if se.interval < min_se_ours {
            // Only reached without Supported: timer (check_request refused the rest).
            se.interval = min_se_ours;
        }
        out.push(Header::Other("Session-Expires".into(), se.to_value()));
    }
    if se.is_some() || supported || theirs.is_some() {
        let floor = theirs.unwrap_or(MIN_SE_FLOOR).max(min_se_ours);
        out.push(min_se_header(floor));
    }
    if supported {
        out.push(Header::Other("Supported".into(), OPTION_TAG.into()));
    }
    if lists_timer(headers, "Require") {
        out.push(Header::Other("Require".into(), OPTION_TAG.into()));
    }
    out
}

/// Session-timer headers to copy onto the response relayed to the other leg: for a 2xx the
/// negotiated `Session-Expires` and a `Require`/`Supported` carrying `timer` (§9: the UAS puts
/// `Require: timer` in the 2xx when the client is to refresh), for a 422 its `Min-SE` so the
/// client can retry (§6).
pub fn forward_response(code: u16, headers: &rsip::Headers) -> Vec<Header> {
    let mut out = Vec::new();
    if (200..300).contains(&code) {
        if let Some(se) = SessionExpires::from_headers(headers) {
            out.push(Header::Other("Session-Expires".into(), se.to_value()));
        }
        for name in ["Require", "Supported"] {
            if lists_timer(headers, name) {
                out.push(Header::Other(name.into(), OPTION_TAG.into()));
            }
        }
    } else if code == 422 {
        if let Some(m) = min_se(headers) {
            out.push(min_se_header(m));
        }
    }
    out
}

/// When the non-refresher gives up on a session refreshed at `refreshed` with `interval`: expiry
/// minus the smaller of 32 s and a third of the interval (§10). Intervals below the RFC floor are
/// treated as the floor: a peer asking for less broke §4, and ending its call early for that
/// helps nobody.
pub fn bye_deadline(refreshed: Instant, interval: Duration) -> Instant {
    let interval = interval.max(MIN_SE_FLOOR);
    refreshed + interval - BYE_LEAD_MAX.min(interval / 3)
}

/// A per-call timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CallTimer {
    /// RFC 4028 §10: no refresh arrived before expiry minus min(32 s, interval/3).
    SessionExpires,
    /// The configured maximum call duration, counted from the answer.
    MaxDuration,
}

impl CallTimer {
    /// Number of timers (size of [`CallTimers`]).
    pub const COUNT: usize = 2;
    /// Every timer.
    pub const ALL: [CallTimer; Self::COUNT] = [CallTimer::SessionExpires, CallTimer::MaxDuration];

    /// The Reason header value (RFC 3326) for the BYEs this timer sends.
    pub fn reason_header(self) -> &'static str {
        match self {
            CallTimer::SessionExpires => REASON_SESSION_EXPIRED,
            CallTimer::MaxDuration => REASON_MAX_DURATION,
        }
    }
}

/// One call's timer table (style.md §2: an `[Option<Instant>; N]` per machine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallTimers([Option<Instant>; CallTimer::COUNT]);

impl CallTimers {
    /// When `t` fires, if armed.
    pub fn get(&self, t: CallTimer) -> Option<Instant> {
        self.0[t as usize]
    }

    /// Arms (`Some`) or stops (`None`) `t`; returns the previous deadline.
    pub fn set(&mut self, t: CallTimer, at: Option<Instant>) -> Option<Instant> {
        std::mem::replace(&mut self.0[t as usize], at)
    }

    /// The earliest armed timer.
    pub fn next(&self) -> Option<(Instant, CallTimer)> {
        CallTimer::ALL
            .iter()
            .filter_map(|t| self.get(*t).map(|at| (at, *t)))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message;
    use rsip::SipMessage;

    fn headers(extra: &str) -> rsip::Headers {
        let text = format!(
            "INVITE sip:a@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKst\r\n\
             From: <sip:b@192.0.2.2>;tag=1\r\nTo: <sip:a@192.0.2.1>\r\nCall-ID: st\r\n\
             CSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match message::parse(text.as_bytes()).expect("parses") {
            SipMessage::Request(r) => r.headers,
            SipMessage::Response(r) => r.headers,
        }
    }

    fn values(h: &[Header]) -> Vec<String> {
        h.iter().map(|h| h.to_string()).collect()
    }

    #[test]
    fn parses_session_expires_min_se_and_option_tags() {
        let h = headers(
            "Session-Expires: 1800 ; refresher=UAS\r\nMin-SE: 120\r\nSupported: 100rel, timer\r\n",
        );
        assert_eq!(
            SessionExpires::from_headers(&h),
            Some(SessionExpires {
                interval: Duration::from_secs(1800),
                refresher: Some(Refresher::Uas)
            })
        );
        assert_eq!(min_se(&h), Some(Duration::from_secs(120)));
        assert!(lists_timer(&h, "Supported"));
        assert!(!lists_timer(&h, "Require"));
        // Compact form `x` (§4) and a value without refresher.
        let h = headers("x: 90\r\n");
        assert_eq!(
            SessionExpires::from_headers(&h).map(|s| (s.interval.as_secs(), s.refresher)),
            Some((90, None))
        );
        assert_eq!(SessionExpires::parse("soon"), None);
    }

    #[test]
    fn below_min_se_is_422_only_for_clients_that_support_timer() {
        let min = Duration::from_secs(300);
        let h = headers("Session-Expires: 120\r\nSupported: timer\r\n");
        assert_eq!(check_request(&h, min), RequestCheck::TooSmall);
        let h = headers("Session-Expires: 300\r\nSupported: timer\r\n");
        assert_eq!(check_request(&h, min), RequestCheck::Accept);
        // Without Supported: timer the client cannot read a 422 (§8.1): raised on the way through.
        let h = headers("Session-Expires: 120;refresher=uac\r\nMin-SE: 100\r\n");
        assert_eq!(check_request(&h, min), RequestCheck::Accept);
        assert_eq!(
            values(&forward_request(&h, min)),
            vec!["Session-Expires: 300;refresher=uac", "Min-SE: 300"]
        );
    }

    #[test]
    fn forwards_only_the_timer_tag_and_the_larger_min_se() {
        let h = headers(
            "Session-Expires: 1800\r\nMin-SE: 600\r\nSupported: 100rel, timer, replaces\r\n\
             Require: timer\r\n",
        );
        assert_eq!(
            values(&forward_request(&h, MIN_SE_FLOOR)),
            vec![
                "Session-Expires: 1800",
                "Min-SE: 600",
                "Supported: timer",
                "Require: timer"
            ]
        );
        // Supported: timer alone: the far end may choose an interval, not below our floor.
        let h = headers("Supported: timer\r\n");
        assert_eq!(
            values(&forward_request(&h, Duration::from_secs(120))),
            vec!["Min-SE: 120", "Supported: timer"]
        );
        assert!(forward_request(&headers("Supported: 100rel\r\n"), MIN_SE_FLOOR).is_empty());
        let h = headers("Session-Expires: 900;refresher=uac\r\nRequire: timer\r\nMin-SE: 90\r\n");
        assert_eq!(
            values(&forward_response(200, &h)),
            vec!["Session-Expires: 900;refresher=uac", "Require: timer"]
        );
        assert_eq!(values(&forward_response(422, &h)), vec!["Min-SE: 90"]);
        assert!(forward_response(486, &h).is_empty());
    }

    #[test]
    fn bye_deadline_is_expiry_minus_min_32s_and_a_third() {
        let t0 = crate::core::testing::epoch();
        assert_eq!(
            bye_deadline(t0, Duration::from_secs(1800)),
            t0 + Duration::from_secs(1768)
        );
        assert_eq!(
            bye_deadline(t0, Duration::from_secs(90)),
            t0 + Duration::from_secs(60)
        );
        // Below the RFC floor counts as the floor.
        assert_eq!(
            bye_deadline(t0, Duration::from_secs(10)),
            t0 + Duration::from_secs(60)
        );
    }

    #[test]
    fn timer_table_reports_the_earliest() {
        let t0 = crate::core::testing::epoch();
        let mut t = CallTimers::default();
        assert_eq!(t.next(), None);
        t.set(CallTimer::MaxDuration, Some(t0 + Duration::from_secs(5)));
        t.set(CallTimer::SessionExpires, Some(t0 + Duration::from_secs(9)));
        assert_eq!(
            t.next(),
            Some((t0 + Duration::from_secs(5), CallTimer::MaxDuration))
        );
        assert_eq!(
            t.set(CallTimer::MaxDuration, None),
            Some(t0 + Duration::from_secs(5))
        );
        assert_eq!(
            t.next(),
            Some((t0 + Duration::from_secs(9), CallTimer::SessionExpires))
        );
    }
}
