//! SIP message framing on stream transports (TCP, TLS), RFC 3261 §18.3.
//!
//! Role: a byte stream carries messages back to back; each ends after its header block
//! (`CRLF CRLF`) plus `Content-Length` body bytes, and Content-Length is mandatory on streams.
//! Bare CRLFs between messages are keep-alives (RFC 5626 §3.5.1: a double-CRLF "ping" is
//! answered with a single-CRLF "pong").
//!
//! Inputs: [`StreamFramer::push`] with each chunk read from the connection.
//! Outputs: [`StreamFramer::next_message`] until `Ok(None)` after every push; it yields whole
//! messages (header and body bytes, ready for the B2BUA) and keep-alive pings. An `Err` means the
//! stream can no longer be framed and the connection must be closed (§18.3: "the transport
//! connection MUST be closed" when Content-Length is unusable). Before closing for
//! [`FramingError::TooLarge`], the shell sends [`StreamFramer::too_large_response`] when the
//! message held is a request: a 413 (RFC 3261 §21.4.11) tells the client why.

/// Largest message accepted by default (headers plus body), and the most `limits.max_message_bytes`
/// may allow. Fork request bodies are at most 16 KiB (docs/fork-request.md); SDP and a
/// multipart envelope fit easily.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Why a stream cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Header block or whole message exceeds the framer's limit.
    #[error("message larger than the {0}-byte limit")]
    TooLarge(usize),
    /// No Content-Length header (mandatory on streams, §18.3 / §20.14).
    #[error("missing Content-Length on a stream transport")]
    MissingContentLength,
    /// Content-Length not a number.
    #[error("unreadable Content-Length")]
    BadContentLength,
}

/// One item taken off the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete SIP message.
    Message(Vec<u8>),
    /// A double-CRLF keep-alive; answer with [`PONG`].
    Ping,
}

/// Keep-alive answer (RFC 5626 §3.5.1).
pub const PONG: &[u8] = b"\r\n";

/// Reassembles messages from a byte stream.
#[derive(Debug)]
pub struct StreamFramer {
    buf: Vec<u8>,
    max: usize,
}

impl Default for StreamFramer {
    fn default() -> Self {
        StreamFramer::with_max(MAX_MESSAGE)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Content-Length from a header block: the long form or the compact `l` (§7.3.3), any case.
fn content_length(head: &[u8]) -> Result<usize, FramingError> {
    let text = String::from_utf8_lossy(head);
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            return value
                .trim()
                .parse()
                .map_err(|_| FramingError::BadContentLength);
        }
    }
    Err(FramingError::MissingContentLength)
}

impl StreamFramer {
    /// An empty framer with the default limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty framer taking messages of at most `max` bytes.
    pub fn with_max(max: usize) -> Self {
        StreamFramer {
            buf: Vec::new(),
            max,
        }
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not yet form a message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete item, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Frame>, FramingError> {
        if self.buf.starts_with(b"\r\n\r\n") {
            self.buf.drain(..4);
            return Ok(Some(Frame::Ping));
        }
        // A lone CRLF (a pong, or padding) carries nothing; wait if it may become a ping.
        let lead = self
            .buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        if lead == self.buf.len() {
            // Only line ends so far: keep up to 3 bytes, which may still become a ping.
            if lead >= 4 {
                self.buf.clear();
            }
            return Ok(None);
        }
        self.buf.drain(..lead);
        let Some(end) = find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > self.max {
                return Err(FramingError::TooLarge(self.max));
            }
            return Ok(None);
        };
        let head_len = end + 4;
        let body_len = content_length(&self.buf[..end])?;
        let total = head_len
            .checked_add(body_len)
            .filter(|t| *t <= self.max)
            .ok_or(FramingError::TooLarge(self.max))?;
        if self.buf.len() < total {
            return Ok(None);
        }
        let msg: Vec<u8> = self.buf.drain(..total).collect();
        Ok(Some(Frame::Message(msg)))
    }

    /// After [`FramingError::TooLarge`]: a `413 Request Entity Too Large` for the request held,
    /// or `None` when what is held does not start with a request line (a response, garbage) or
    /// is an ACK (never answered, §17.2.3 / §8.2.6.1). The response copies the Via, From, To,
    /// Call-ID and CSeq lines that arrived complete (§8.2.6.2), so the client can match it to
    /// its transaction; To gets a tag if it had none.
    pub fn too_large_response(&self) -> Option<Vec<u8>> {
        too_large_response(&self.buf)
    }
}

/// `METHOD SP Request-URI SP SIP/2.0` (RFC 3261 §7.1), returning the method.
fn request_method(line: &[u8]) -> Option<&[u8]> {
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next()?;
    let uri = parts.next()?;
    let version = parts.next()?;
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(b);
    (parts.next().is_none()
        && !method.is_empty()
        && method.iter().all(token)
        && !uri.is_empty()
        && version == b"SIP/2.0")
        .then_some(method)
}

fn too_large_response(held: &[u8]) -> Option<Vec<u8>> {
    let first_end = find(held, b"\r\n")?;
    let method = request_method(&held[..first_end])?;
    if method == b"ACK" {
        return None;
    }
    let mut out = b"SIP/2.0 413 Request Entity Too Large\r\n".to_vec();
    let mut rest = &held[first_end + 2..];
    // Only whole lines: the last one may have been cut by the limit.
    while let Some(end) = find(rest, b"\r\n") {
        let line = &rest[..end];
        rest = &rest[end + 2..];
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon])
            .trim()
            .to_ascii_lowercase();
        if !matches!(
            name.as_str(),
            "via" | "v" | "from" | "f" | "to" | "t" | "call-id" | "i" | "cseq"
        ) {
            continue;
        }
        out.extend_from_slice(line);
        if matches!(name.as_str(), "to" | "t") {
            let value = String::from_utf8_lossy(&line[colon + 1..]).to_ascii_lowercase();
            if !value.contains(";tag=") {
                out.extend_from_slice(b";tag=413");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &[u8] = b"INFO sip:a@b SIP/2.0\r\nContent-Length: 4\r\n\r\nbody";

    fn all(f: &mut StreamFramer) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Ok(Some(x)) = f.next_message() {
            out.push(x);
        }
        out
    }

    #[test]
    fn splits_back_to_back_messages_and_partial_reads() {
        let mut f = StreamFramer::new();
        let mut stream = INFO.to_vec();
        stream.extend_from_slice(INFO);
        // Byte at a time: nothing comes out until a message is complete.
        let mut got = Vec::new();
        for b in &stream {
            f.push(&[*b]);
            got.extend(all(&mut f));
        }
        assert_eq!(
            got,
            vec![Frame::Message(INFO.to_vec()), Frame::Message(INFO.to_vec())]
        );
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn compact_content_length_and_keepalives() {
        let mut f = StreamFramer::new();
        f.push(b"\r\n\r\nBYE sip:x SIP/2.0\r\nl: 0\r\n\r\n\r\n");
        assert_eq!(f.next_message(), Ok(Some(Frame::Ping)));
        assert!(
            matches!(f.next_message(), Ok(Some(Frame::Message(m))) if m.ends_with(b"l: 0\r\n\r\n"))
        );
        // A trailing pong-sized CRLF is held, not an error.
        assert_eq!(f.next_message(), Ok(None));
        f.push(b"\r\n");
        assert_eq!(f.next_message(), Ok(Some(Frame::Ping)));
    }

    #[test]
    fn unframeable_streams_are_errors() {
        let mut f = StreamFramer::new();
        f.push(b"BYE sip:x SIP/2.0\r\nCall-ID: 1\r\n\r\n");
        assert_eq!(f.next_message(), Err(FramingError::MissingContentLength));
        let mut f = StreamFramer::new();
        f.push(b"BYE sip:x SIP/2.0\r\nContent-Length: x\r\n\r\n");
        assert_eq!(f.next_message(), Err(FramingError::BadContentLength));
        let mut f = StreamFramer::new();
        f.push(b"BYE sip:x SIP/2.0\r\nContent-Length: 999999\r\n\r\n");
        assert_eq!(f.next_message(), Err(FramingError::TooLarge(MAX_MESSAGE)));
        let mut f = StreamFramer::new();
        f.push(&vec![b'a'; MAX_MESSAGE + 1]);
        assert_eq!(f.next_message(), Err(FramingError::TooLarge(MAX_MESSAGE)));
        assert_eq!(f.too_large_response(), None, "no request line: no answer");
    }

    #[test]
    fn configured_limit_applies_and_oversize_request_gets_413() {
        let mut f = StreamFramer::with_max(4096);
        f.push(
            b"INVITE sip:2000@b SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK1\r\n\
              From: <sip:1000@a>;tag=1\r\nTo: <sip:2000@b>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\
              Max-Forwards: 70\r\nContent-Length: 5000\r\n\r\n",
        );
        assert_eq!(f.next_message(), Err(FramingError::TooLarge(4096)));
        let r = String::from_utf8(f.too_large_response().expect("a request")).expect("utf8");
        assert!(
            r.starts_with("SIP/2.0 413 Request Entity Too Large\r\n"),
            "{r}"
        );
        for h in [
            "Via: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK1\r\n",
            "From: <sip:1000@a>;tag=1\r\n",
            "To: <sip:2000@b>;tag=413\r\n",
            "Call-ID: c1\r\n",
            "CSeq: 1 INVITE\r\n",
        ] {
            assert!(r.contains(h), "{h:?} missing in {r}");
        }
        assert!(!r.contains("Max-Forwards"), "{r}");
        assert!(r.ends_with("Content-Length: 0\r\n\r\n"), "{r}");
        // The same header block without end: the request line still earns a 413.
        let mut f = StreamFramer::with_max(4096);
        f.push(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: c2\r\nX-Pad: ");
        f.push(&[b'a'; 5000]);
        assert_eq!(f.next_message(), Err(FramingError::TooLarge(4096)));
        let r = String::from_utf8(f.too_large_response().expect("a request")).expect("utf8");
        assert!(r.contains("Call-ID: c2\r\n") && !r.contains("X-Pad"), "{r}");
        // An ACK and a response are never answered.
        let mut f = StreamFramer::with_max(4096);
        f.push(b"ACK sip:x SIP/2.0\r\nContent-Length: 9000\r\n\r\n");
        assert!(f.next_message().is_err());
        assert_eq!(f.too_large_response(), None);
        let mut f = StreamFramer::with_max(4096);
        f.push(b"SIP/2.0 200 OK\r\nContent-Length: 9000\r\n\r\n");
        assert!(f.next_message().is_err());
        assert_eq!(f.too_large_response(), None);
    }
}
