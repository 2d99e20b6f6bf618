//! SIP message parsing and serialising: a thin, strict wrapper around `rsip` 0.4.
//!
//! Role: every byte string the shell receives goes through [`parse`], every message the cores
//! send goes through [`encode`]. Helpers read the header fields transactions and dialogs key on
//! (top Via branch and sent-by, CSeq, Call-ID, tags) and build responses (RFC 3261 §8.2.6).
//! Header helpers for everyone else: [`header_value`] / [`header_values`] (any header by name,
//! as text), [`content_type`], and [`uri_of`] (the URI inside a Contact or Route value).
//!
//! Where rsip 0.4 falls short we fix the input before it sees it, or bypass it on output:
//! - Compact header names (`v:`, `i:`, `f:`, `t:`, `m:`, `l:`, `c:`, `k:`, `s:`, `e:`,
//!   RFC 3261 §7.3.3) are not recognised (they land in `Header::Other`), so [`parse`] expands
//!   them first.
//! - Folded header lines (§7.3.1) are not unfolded; [`parse`] unfolds them.
//! - Several Via/Route/Record-Route values on one line stay one header; [`parse`] splits them
//!   (outside quotes and `<>`), so "top Via" means the first value as §8.1.1.7 intends.
//! - The body is "everything after the blank line"; [`parse`] applies Content-Length (§18.3: a
//!   datagram body longer than Content-Length is truncated, shorter is a 400).
//! - `Method` is a closed enum, so a request with an extension method fails to parse at all;
//!   [`parse`] reports [`ParseError::UnknownMethod`] with enough of the raw head to answer 501.
//! - Status reasons are replaced by variant names (`481 CallTransactionDoesNotExist`), and the
//!   body is printed with `from_utf8_lossy`; [`encode`] writes the start line and body itself and
//!   responses are built with `StatusCode::Other(code, reason)` so the RFC reason phrase goes out.

use rsip::headers::{ToTypedHeader, UntypedHeader};
use rsip::message::HeadersExt;
use rsip::{Header, Method, Request, Response, SipMessage, StatusCode};

/// Largest message accepted (a UDP datagram can carry at most 65 507 bytes anyway).
pub const MAX_MESSAGE_LEN: usize = 65_535;

/// The RFC 3261 §8.1.1.7 magic cookie every branch we accept and generate starts with.
pub const BRANCH_COOKIE: &str = "z9hG4bK";

/// Why a byte string is not a SIP message we can handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Empty, oversized, not text in the head, or no blank line after the headers.
    #[error("not a SIP message")]
    NotSip,
    /// A request whose method rsip does not know; `head` keeps the raw headers for a 501.
    #[error("unknown method {method}")]
    UnknownMethod {
        /// The method token.
        method: String,
        /// Raw head, for [`raw_response`].
        head: RawHead,
    },
    /// The message is SIP-shaped but malformed; `reason` goes into the 400's reason phrase and
    /// `head` (when it could be read) lets the caller answer.
    #[error("malformed message: {reason}")]
    Malformed {
        /// Short description, safe to put in a reason phrase.
        reason: &'static str,
        /// Raw head of a request, for [`raw_response`]; `None` for responses.
        head: Option<RawHead>,
    },
}

/// Start line and headers of a message, split by hand, used to answer requests that rsip cannot
/// represent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHead {
    /// First line, without CRLF.
    pub start_line: String,
    /// Headers after unfolding and compact-name expansion, in order.
    pub headers: Vec<(String, String)>,
}

impl RawHead {
    /// Values of every header named `name` (case-insensitive).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True when the start line is a request line.
    pub fn is_request(&self) -> bool {
        !self.start_line.starts_with("SIP/")
    }
}

/// RFC 3261 §7.3.3 compact forms.
fn expand_compact(name: &str) -> &str {
    match name.to_ascii_lowercase().as_str() {
        "v" => "Via",
        "i" => "Call-ID",
        "f" => "From",
        "t" => "To",
        "m" => "Contact",
        "l" => "Content-Length",
        "c" => "Content-Type",
        "k" => "Supported",
        "s" => "Subject",
        "e" => "Content-Encoding",
        // RFC 4028 §4.
        "x" => "Session-Expires",
        _ => name,
    }
}

/// Splits a header value on commas outside quoted strings and `<...>` (RFC 3261 §7.3.1).
fn split_commas(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut start) = (false, false, 0);
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                out.push(v[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(v[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits the head into lines, unfolds, expands compact names and splits multi-value headers.
fn read_head(bytes: &[u8]) -> Result<(RawHead, &[u8]), ParseError> {
    let (head_end, body_start) = match find(bytes, b"\r\n\r\n") {
        Some(p) => (p, p + 4),
        None => return Err(ParseError::NotSip),
    };
    let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| ParseError::NotSip)?;
    let mut lines = head.split("\r\n");
    let start_line = lines.next().unwrap_or_default().to_string();
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut bad = false;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            match headers.last_mut() {
                Some(last) => {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                None => bad = true,
            }
            continue;
        }
        match line.split_once(':') {
            Some((n, v)) if !n.trim().is_empty() && !n.trim().contains(' ') => {
                headers.push((expand_compact(n.trim()).to_string(), v.trim().to_string()))
            }
            _ => bad = true,
        }
    }
    let mut split: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (n, v) in headers {
        if ["via", "route", "record-route"].contains(&n.to_ascii_lowercase().as_str()) {
            for part in split_commas(&v) {
                split.push((n.clone(), part.to_string()));
            }
        } else {
            split.push((n, v));
        }
    }
    let raw = RawHead {
        start_line,
        headers: split,
    };
    if bad {
        let head = raw.is_request().then_some(raw);
        return Err(ParseError::Malformed {
            reason: "Malformed Header Line",
            head,
        });
    }
    Ok((raw, &bytes[body_start..]))
}

/// Parses one SIP message from a datagram or a framed stream message.
///
/// Checks beyond rsip's: the mandatory headers of §8.1.1 (Via, From, To, Call-ID, CSeq; Max-
/// Forwards is not enforced, a missing one is treated as 70), a Via with a `z9hG4bK` branch
/// (§8.1.1.7; RFC 2543 peers are not supported), a CSeq whose method equals the request method
/// (§8.1.1.5), readable From/To, and Content-Length against the body (§18.3).
pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
    if bytes.is_empty() || bytes.len() > MAX_MESSAGE_LEN {
        return Err(ParseError::NotSip);
    }
    let (raw, body) = read_head(bytes)?;
    let is_request = raw.is_request();
    let malformed = |reason: &'static str, raw: &RawHead| ParseError::Malformed {
        reason,
        head: is_request.then(|| raw.clone()),
    };
    if is_request {
        let method = raw.start_line.split(' ').next().unwrap_or_default();
        if !raw.start_line.ends_with(" SIP/2.0") || raw.start_line.split(' ').count() != 3 {
            return Err(malformed("Malformed Request-Line", &raw));
        }
        if method.parse::<Method>().is_err() {
            if method.bytes().all(|b| b.is_ascii_uppercase()) && !method.is_empty() {
                return Err(ParseError::UnknownMethod {
                    method: method.to_string(),
                    head: raw,
                });
            }
            return Err(malformed("Malformed Request-Line", &raw));
        }
    } else if !raw.start_line.starts_with("SIP/2.0 ") {
        return Err(ParseError::NotSip);
    }
    for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if raw.all(h).next().is_none() {
            return Err(malformed("Missing Mandatory Header", &raw));
        }
    }
    let body = match raw.all("Content-Length").next() {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= body.len() => &body[..n],
            Ok(_) => return Err(malformed("Content-Length Exceeds Body", &raw)),
            Err(_) => return Err(malformed("Bad Content-Length", &raw)),
        },
        None => body,
    };
    // Rebuild a canonical head for rsip: CRLF lines, long names, one value per Via line.
    let mut canon = String::with_capacity(bytes.len());
    canon.push_str(&raw.start_line);
    canon.push_str("\r\n");
    for (n, v) in &raw.headers {
        canon.push_str(n);
        canon.push_str(": ");
        canon.push_str(v);
        canon.push_str("\r\n");
    }
    canon.push_str("\r\n");
    let mut full = canon.into_bytes();
    full.extend_from_slice(body);
    let msg = SipMessage::try_from(full.as_slice())
        .map_err(|_| malformed("Unparseable Message", &raw))?;
    // Typed checks of what the transaction layer keys on.
    let via = msg
        .via_header()
        .ok()
        .and_then(|v| v.typed().ok())
        .ok_or_else(|| malformed("Bad Via", &raw))?;
    if !via
        .branch()
        .is_some_and(|b| b.to_string().starts_with(BRANCH_COOKIE))
    {
        return Err(malformed("Missing Via Branch", &raw));
    }
    let cseq = msg
        .cseq_header()
        .ok()
        .and_then(|c| c.typed().ok())
        .ok_or_else(|| malformed("Bad CSeq", &raw))?;
    if let SipMessage::Request(r) = &msg {
        if cseq.method != r.method {
            return Err(malformed("CSeq Method Mismatch", &raw));
        }
        if msg
            .from_header()
            .ok()
            .and_then(|f| f.typed().ok())
            .is_none()
        {
            return Err(malformed("Bad From", &raw));
        }
        if msg.to_header().ok().and_then(|t| t.typed().ok()).is_none() {
            return Err(malformed("Bad To", &raw));
        }
    }
    Ok(msg)
}

/// Serialises a message: start line, each header on its own line, a Content-Length that matches
/// the body (any existing one is replaced), blank line, body bytes untouched.
pub fn encode(msg: &SipMessage) -> Vec<u8> {
    let (start, headers, body) = match msg {
        SipMessage::Request(r) => (
            format!("{} {} {}", r.method, r.uri, r.version),
            &r.headers,
            &r.body,
        ),
        SipMessage::Response(r) => {
            let reason = match &r.status_code {
                StatusCode::Other(_, reason) => reason.clone(),
                other => reason_phrase(other.code()).to_string(),
            };
            (
                format!("{} {} {}", r.version, r.status_code.code(), reason),
                &r.headers,
                &r.body,
            )
        }
    };
    let mut out = start.into_bytes();
    out.extend_from_slice(b"\r\n");
    for h in headers.iter() {
        if matches!(h, Header::ContentLength(_)) {
            continue;
        }
        out.extend_from_slice(h.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// RFC 3261 §21 reason phrases for the codes this agent sends.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        422 => "Session Interval Too Small",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        _ => "Unknown",
    }
}

/// Status code carrying our reason phrase through rsip.
pub fn status(code: u16, reason: &str) -> StatusCode {
    StatusCode::Other(code, reason.to_string())
}

/// Builds a response to `req` per RFC 3261 §8.2.6.2: Via (all, in order), From, To (with
/// `to_tag` added when the To has none and the code is not 100), Call-ID, CSeq copied; no body.
pub fn response_to(
    req: &Request,
    code: u16,
    reason: Option<&str>,
    to_tag: Option<&str>,
) -> Response {
    let mut headers = rsip::Headers::default();
    for h in req.headers.iter() {
        match h {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(h.clone())
            }
            Header::To(to) => {
                let mut to = to.clone();
                if let (Some(tag), true) = (to_tag, code != 100) {
                    if to.tag().ok().flatten().is_none() {
                        if let Ok(t) = to.clone().with_tag(tag.to_string().into()) {
                            to = t;
                        }
                    }
                }
                headers.push(Header::To(to));
            }
            _ => {}
        }
    }
    Response {
        status_code: status(code, reason.unwrap_or(reason_phrase(code))),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

/// Builds response bytes from a raw head when rsip could not parse the request (400 for a
/// malformed request, 501 for an unknown method). `None` when the head lacks a Via to send it
/// along, or is itself a response or an ACK (never answered, §17.2.1).
pub fn raw_response(
    head: &RawHead,
    code: u16,
    reason: &str,
    extra: &[(&str, &str)],
) -> Option<Vec<u8>> {
    if !head.is_request() || head.start_line.starts_with("ACK ") || head.all("Via").next().is_none()
    {
        return None;
    }
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        for v in head.all(name) {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    for (n, v) in extra {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

/// Fields of a message the transaction and dialog layers key on, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Top Via branch.
    pub branch: String,
    /// Top Via sent-by (`host[:port]`) as written.
    pub sent_by: String,
    /// CSeq number.
    pub cseq: u32,
    /// CSeq method (for a request, equal to the method).
    pub method: Method,
    /// Call-ID.
    pub call_id: String,
    /// From tag.
    pub from_tag: Option<String>,
    /// To tag.
    pub to_tag: Option<String>,
}

/// Reads [`Keys`]; `None` if any part is unreadable (only possible for messages not produced by
/// [`parse`]).
pub fn keys(msg: &SipMessage) -> Option<Keys> {
    let via = msg.via_header().ok()?.typed().ok()?;
    let cseq = msg.cseq_header().ok()?.typed().ok()?;
    Some(Keys {
        branch: via.branch()?.to_string(),
        sent_by: via.uri.host_with_port.to_string(),
        cseq: cseq.seq,
        method: cseq.method,
        call_id: msg.call_id_header().ok()?.value().to_string(),
        from_tag: msg.from_header().ok()?.tag().ok()?.map(|t| t.to_string()),
        to_tag: msg.to_header().ok()?.tag().ok()?.map(|t| t.to_string()),
    })
}

/// Value of the first header named `name` (case-insensitive), for headers rsip keeps as
/// `Header::Other` or ones we only need as text.
pub fn header_value(headers: &rsip::Headers, name: &str) -> Option<String> {
    headers.iter().find_map(|h| {
        let s = h.to_string();
        let (n, v) = s.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The URI inside a Contact/Route value: between `<` and `>`, else up to the first `;`.
pub fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

/// Values of every header named `name` in a parsed message, in order (multi-value lines were
/// already split by [`parse`]).
pub fn header_values(headers: &rsip::Headers, name: &str) -> Vec<String> {
    headers
        .iter()
        .filter_map(|h| {
            let s = h.to_string();
            let (n, v) = s.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// The first `Content-Type` value.
pub fn content_type(headers: &rsip::Headers) -> Option<String> {
    header_values(headers, "Content-Type").into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:6777@192.0.2.10 SIP/2.0\r\n\
v: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK776asdhds, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKold\r\n\
Max-Forwards: 70\r\n\
t: <sip:6777@192.0.2.10>\r\n\
f: \"Alice\" <sip:alice@198.51.100.7>;tag=1928301774\r\n\
i: a84b4c76e66710@pc33\r\n\
CSeq: 314159 INVITE\r\n\
Subject: long\r\n  folded\r\n\
m: <sip:alice@198.51.100.7>\r\n\
c: application/sdp\r\n\
l: 4\r\n\
\r\n\
v=0\r\nEXTRA";

    #[test]
    fn parses_compact_folded_multi_via_and_truncates_body() {
        let msg = parse(INVITE.as_bytes()).expect("parse");
        let SipMessage::Request(req) = &msg else {
            panic!("request");
        };
        assert_eq!(req.method, Method::Invite);
        assert_eq!(req.body, b"v=0\r");
        let k = keys(&msg).expect("keys");
        assert_eq!(k.branch, "z9hG4bK776asdhds");
        assert_eq!(k.sent_by, "198.51.100.7:5060");
        assert_eq!((k.cseq, k.method), (314159, Method::Invite));
        assert_eq!(k.call_id, "a84b4c76e66710@pc33");
        assert_eq!(k.from_tag.as_deref(), Some("1928301774"));
        assert_eq!(k.to_tag, None);
        let vias = req
            .headers
            .iter()
            .filter(|h| matches!(h, Header::Via(_)))
            .count();
        assert_eq!(vias, 2);
        assert_eq!(
            header_value(&req.headers, "subject").as_deref(),
            Some("long folded")
        );
    }

    #[test]
    fn response_building_and_encoding() {
        let SipMessage::Request(req) = parse(INVITE.as_bytes()).expect("parse") else {
            panic!("request");
        };
        let resp = response_to(&req, 481, None, Some("abc"));
        let bytes = encode(&SipMessage::Response(resp));
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert!(
            text.starts_with("SIP/2.0 481 Call/Transaction Does Not Exist\r\n"),
            "{text}"
        );
        assert!(text.contains(";tag=abc"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        // What we send, we can read back.
        let back = parse(&bytes).expect("reparse");
        let k = keys(&back).expect("keys");
        assert_eq!(k.to_tag.as_deref(), Some("abc"));
        let SipMessage::Response(r) = back else {
            panic!("response")
        };
        assert_eq!(r.status_code.code(), 481);
        // 100 Trying never gets a To tag (§8.2.6.2).
        let t = encode(&SipMessage::Response(response_to(
            &req,
            100,
            None,
            Some("abc"),
        )));
        assert!(!String::from_utf8(t).expect("utf8").contains("tag=abc"));
    }

    #[test]
    fn request_encoding_keeps_body_bytes() {
        let SipMessage::Request(mut req) = parse(INVITE.as_bytes()).expect("parse") else {
            panic!("request");
        };
        req.body = vec![b'v', b'=', b'0', b'\r', b'\n', 0xC3, 0xA9];
        let bytes = encode(&SipMessage::Request(req.clone()));
        assert!(bytes.ends_with(&[b'\r', b'\n', 0xC3, 0xA9]));
        let SipMessage::Request(back) = parse(&bytes).expect("reparse") else {
            panic!("request")
        };
        assert_eq!(back.body, req.body);
    }

    #[test]
    fn malformed_and_unknown() {
        let cases: [(&str, &str); 6] = [
            ("INVITE sip:a@b SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 10\r\n\r\nabc", "Content-Length Exceeds Body"),
            ("INVITE sip:a@b SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@b>\r\nCall-ID: x\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", "Missing Mandatory Header"),
            ("INVITE sip:a@b SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@b>\r\nCall-ID: x\r\nCSeq: 1 BYE\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", "CSeq Method Mismatch"),
            ("INVITE sip:a@b SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nVia: SIP/2.0/UDP h;branch=abc\r\n\r\n", "Missing Via Branch"),
            ("INVITE sip:a@b SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@b>\r\nCall-ID: x\r\nCSeq: x INVITE\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", "Bad CSeq"),
            ("INVITE sip:a@b\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", "Malformed Request-Line"),
        ];
        for (text, want) in cases {
            match parse(text.as_bytes()) {
                Err(ParseError::Malformed {
                    reason,
                    head: Some(head),
                }) => {
                    assert_eq!(reason, want, "{text}");
                    let r = raw_response(&head, 400, reason, &[]).expect("answerable");
                    let r = String::from_utf8(r).expect("utf8");
                    assert!(
                        r.starts_with(&format!("SIP/2.0 400 {want}\r\nVia: SIP/2.0/UDP h;branch=")),
                        "{r}"
                    );
                }
                other => panic!("{want}: {other:?}"),
            }
        }
        let foo =
            "FOO sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: 1 FOO\r\n\r\n";
        let Err(ParseError::UnknownMethod { method, head }) = parse(foo.as_bytes()) else {
            panic!("unknown method");
        };
        assert_eq!(method, "FOO");
        let r =
            raw_response(&head, 501, "Not Implemented", &[("Allow", "INVITE, ACK")]).expect("501");
        assert!(String::from_utf8(r)
            .expect("utf8")
            .contains("Allow: INVITE, ACK\r\n"));
        assert_eq!(parse(b"hello"), Err(ParseError::NotSip));
        assert_eq!(parse(b""), Err(ParseError::NotSip));
    }
}
