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
//! connection MUST be closed" when Content-Length is unusable).

/// Largest message accepted (headers plus body). Fork request bodies are at most 16 KiB
/// (docs/fork-request.md); SDP and a multipart envelope fit easily.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Why a stream cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Header block or whole message exceeds [`MAX_MESSAGE`].
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
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
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
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
    /// An empty framer.
    pub fn new() -> Self {
        Self::default()
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
            if self.buf.len() > MAX_MESSAGE {
                return Err(FramingError::TooLarge);
            }
            return Ok(None);
        };
        let head_len = end + 4;
        let body_len = content_length(&self.buf[..end])?;
        let total = head_len
            .checked_add(body_len)
            .filter(|t| *t <= MAX_MESSAGE)
            .ok_or(FramingError::TooLarge)?;
        if self.buf.len() < total {
            return Ok(None);
        }
        let msg: Vec<u8> = self.buf.drain(..total).collect();
        Ok(Some(Frame::Message(msg)))
    }
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
        assert_eq!(f.next_message(), Err(FramingError::TooLarge));
        let mut f = StreamFramer::new();
        f.push(&vec![b'a'; MAX_MESSAGE + 1]);
        assert_eq!(f.next_message(), Err(FramingError::TooLarge));
    }
}
