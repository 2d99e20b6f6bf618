//! Bounded line reading for line-based control sockets.
//!
//! Role: split a byte stream into `\n`-terminated lines without ever holding more than `max`
//! bytes of one line. A line that grows past `max` is reported as [`Line::TooLong`] as soon as it
//! does (the shell can answer and close at once) and the rest of it, up to its `\n`, is
//! discarded unread-into-memory. A line that is not UTF-8 is reported as [`Line::NotUtf8`] so
//! the shell can answer it instead of dropping the connection.
//!
//! Inputs: [`LineReader::handle_bytes`] with each chunk read. Outputs: [`LineReader::poll_line`]
//! until `None` after every chunk. At EOF an unterminated rest is dropped.

use std::collections::VecDeque;

/// One item from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its `\n` (a trailing `\r` is removed too).
    Text(String),
    /// A complete line that is not valid UTF-8.
    NotUtf8,
    /// A line longer than the limit (reported once, when it crossed the limit).
    TooLong,
}

/// Splits a stream into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineReader {
    max: usize,
    buf: Vec<u8>,
    discarding: bool,
    out: VecDeque<Line>,
}

impl LineReader {
    /// Lines of at most `max` bytes (without the terminator).
    pub fn new(max: usize) -> Self {
        LineReader {
            max,
            buf: Vec::new(),
            discarding: false,
            out: VecDeque::new(),
        }
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes of the current line held now (never more than `max`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes one chunk read from the stream.
    pub fn handle_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (seg, terminated, rest) = match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => (&bytes[..i], true, &bytes[i + 1..]),
                None => (bytes, false, &[][..]),
            };
            bytes = rest;
            if self.discarding {
                self.discarding = !terminated;
                continue;
            }
            if self.buf.len() + seg.len() > self.max {
                self.buf = Vec::new();
                self.discarding = !terminated;
                self.out.push_back(Line::TooLong);
                continue;
            }
            self.buf.extend_from_slice(seg);
            if terminated {
                let mut line = std::mem::take(&mut self.buf);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.out.push_back(match String::from_utf8(line) {
                    Ok(s) => Line::Text(s),
                    Err(_) => Line::NotUtf8,
                });
            }
        }
    }

    /// The next complete line, `None` when more bytes are needed.
    #[must_use]
    pub fn poll_line(&mut self) -> Option<Line> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(r: &mut LineReader) -> Vec<Line> {
        std::iter::from_fn(|| r.poll_line()).collect()
    }

    #[test]
    fn splits_lines_across_chunks() {
        let mut r = LineReader::new(16);
        r.handle_bytes(b"{\"op\":");
        assert!(lines(&mut r).is_empty());
        r.handle_bytes(b"1}\r\nsecond\nthi");
        assert_eq!(
            lines(&mut r),
            vec![Line::Text("{\"op\":1}".into()), Line::Text("second".into())]
        );
        r.handle_bytes(b"rd\n");
        assert_eq!(lines(&mut r), vec![Line::Text("third".into())]);
    }

    #[test]
    fn long_line_is_reported_once_and_never_buffered() {
        let mut r = LineReader::new(8);
        r.handle_bytes(b"12345");
        r.handle_bytes(b"6789");
        assert_eq!(
            lines(&mut r),
            vec![Line::TooLong],
            "reported when it crosses"
        );
        for _ in 0..1000 {
            r.handle_bytes(&[b'x'; 1000]);
            assert_eq!(r.buffered(), 0, "the rest is discarded");
        }
        assert!(lines(&mut r).is_empty(), "reported once");
        r.handle_bytes(b"xx\nok\n");
        assert_eq!(lines(&mut r), vec![Line::Text("ok".into())]);
        // Exactly max bytes is fine.
        r.handle_bytes(b"12345678\n");
        assert_eq!(lines(&mut r), vec![Line::Text("12345678".into())]);
    }

    #[test]
    fn non_utf8_line_is_reported_and_the_next_line_still_read() {
        let mut r = LineReader::new(64);
        r.handle_bytes(b"\xff\xfe\nshow\n");
        assert_eq!(
            lines(&mut r),
            vec![Line::NotUtf8, Line::Text("show".into())]
        );
    }
}
