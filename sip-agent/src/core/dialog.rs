//! One SIP dialog (RFC 3261 §12) as a B2BUA leg sees it, and the helpers to build requests in it.
//!
//! Role: holds the dialog state (Call-ID, tags, remote target, route set, CSeq counters) and
//! builds in-dialog requests (§12.2.1.1). It has no timers and sends nothing itself: the B2BUA
//! owns dialogs and hands the requests to the transaction layer.
//!
//! Header values are kept as the text we put on the wire (`local_header` goes in From,
//! `remote_header` in To), which keeps display names and URI parameters byte-exact.

use rsip::{Request, SipMessage};

use crate::core::message;
use crate::core::transaction::Peer;

/// State of one leg's dialog.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dialog {
    /// Call-ID of this leg.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag, once known (early/confirmed dialog).
    pub remote_tag: Option<String>,
    /// Value of From in requests we send (includes our tag).
    pub local_header: String,
    /// Value of To in requests we send (includes the peer's tag once known).
    pub remote_header: String,
    /// Request-URI for in-dialog requests: the peer's Contact URI (§12.1.1, §12.1.2).
    pub remote_target: String,
    /// Route set, in the order Route headers go out (§12.1.1 / §12.1.2 reversal applied).
    pub route_set: Vec<String>,
    /// Our CSeq counter (§12.2.1.1).
    pub local_cseq: u32,
    /// Highest CSeq seen from the peer (§12.2.2: lower ones are out of order).
    pub remote_cseq: Option<u32>,
    /// Where this leg's peer is reached. In-dialog requests go here; DNS resolution of the route
    /// set or remote target is the shell's job and not done in the core.
    pub peer: Peer,
}

/// What [`Dialog::request`] needs besides the dialog.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// Method token (`BYE`, `INFO`, `INVITE`, ...).
    pub method: &'a str,
    /// Full Via value (`SIP/2.0/UDP host:port;branch=z9hG4bK...`).
    pub via: &'a str,
    /// Contact value for target-refresh requests (INVITE), else `None`.
    pub contact: Option<&'a str>,
    /// `(content type, body)`.
    pub body: Option<(&'a str, &'a [u8])>,
    /// CSeq number to use instead of incrementing (ACK and CANCEL reuse the INVITE's).
    pub cseq: Option<u32>,
    /// Max-Forwards value (70 for requests we originate, §8.1.1.6; the caller's value minus
    /// one when continuing a caller's request, which keeps loop protection across the B2BUA).
    pub max_forwards: u32,
}

impl Dialog {
    /// Builds an in-dialog request (§12.2.1.1). Returns `None` only if the dialog holds text our
    /// own parser refuses, which would be a bug in how the dialog was created.
    pub fn request(&mut self, p: RequestParts<'_>) -> Option<Request> {
        let cseq = match p.cseq {
            Some(c) => c,
            None => {
                self.local_cseq = self.local_cseq.wrapping_add(1);
                self.local_cseq
            }
        };
        let mut text = format!(
            "{m} {target} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: {mf}\r\nFrom: {from}\r\n\
             To: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {m}\r\n",
            m = p.method,
            target = self.remote_target,
            via = p.via,
            mf = p.max_forwards,
            from = self.local_header,
            to = self.remote_header,
            cid = self.call_id,
        );
        for r in &self.route_set {
            text.push_str(&format!("Route: {r}\r\n"));
        }
        if let Some(c) = p.contact {
            text.push_str(&format!("Contact: {c}\r\n"));
        }
        let body = match p.body {
            Some((ct, b)) => {
                text.push_str(&format!("Content-Type: {ct}\r\n"));
                b
            }
            None => &[],
        };
        text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(body);
        match message::parse(&bytes).ok()? {
            SipMessage::Request(r) => Some(r),
            SipMessage::Response(_) => None,
        }
    }

    /// Checks and records the CSeq of a request from the peer (§12.2.2). False means out of
    /// order: answer 500.
    pub fn accept_remote_cseq(&mut self, cseq: u32) -> bool {
        match self.remote_cseq {
            Some(prev) if cseq <= prev => false,
            _ => {
                self.remote_cseq = Some(cseq);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::{header_values, uri_of};
    use crate::core::transaction::Transport;

    fn dialog() -> Dialog {
        Dialog {
            call_id: "c1@host".into(),
            local_tag: "l1".into(),
            remote_tag: Some("r1".into()),
            local_header: "<sip:6777@192.0.2.10>;tag=l1".into(),
            remote_header: "\"Alice\" <sip:alice@198.51.100.7>;tag=r1".into(),
            remote_target: "sip:alice@198.51.100.7:5070".into(),
            route_set: vec!["<sip:proxy.example;lr>".into()],
            local_cseq: 10,
            remote_cseq: Some(5),
            peer: Peer {
                addr: "198.51.100.7:5070".parse().expect("addr"),
                transport: Transport::Udp,
            },
        }
    }

    #[test]
    fn builds_in_dialog_request() {
        let mut d = dialog();
        let r = d
            .request(RequestParts {
                method: "INFO",
                via: "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx",
                contact: None,
                body: Some(("application/x-cisco-record+json", b"{}")),
                cseq: None,
                max_forwards: 70,
            })
            .expect("request");
        let k = message::keys(&SipMessage::Request(r.clone())).expect("keys");
        assert_eq!((k.cseq, k.call_id.as_str()), (11, "c1@host"));
        assert_eq!(
            (k.from_tag.as_deref(), k.to_tag.as_deref()),
            (Some("l1"), Some("r1"))
        );
        assert_eq!(r.uri.to_string(), "sip:alice@198.51.100.7:5070");
        assert_eq!(
            header_values(&r.headers, "Route"),
            vec!["<sip:proxy.example;lr>"]
        );
        assert_eq!(r.body, b"{}");
        assert_eq!(d.local_cseq, 11);
    }

    #[test]
    fn remote_cseq_order_and_uri_extraction() {
        let mut d = dialog();
        assert!(!d.accept_remote_cseq(5));
        assert!(d.accept_remote_cseq(6));
        assert!(!d.accept_remote_cseq(6));
        assert_eq!(
            uri_of("\"A\" <sip:a@b;transport=tcp>;expires=3"),
            "sip:a@b;transport=tcp"
        );
        assert_eq!(uri_of("sip:a@b;expires=3"), "sip:a@b");
    }
}
