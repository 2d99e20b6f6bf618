//! `multipart/mixed` bodies (RFC 2046 §5.1, RFC 5621 for SIP): split and build.
//!
//! Role: a fork request may arrive as a re-INVITE whose body carries both the SDP offer and the
//! fork request JSON; this module splits such a body into parts and builds one when we need to
//! send SDP plus JSON. Inputs: the `Content-Type` header value and the body bytes. Outputs:
//! [`Part`]s, or a `(content_type, body)` pair from [`build`].
//!
//! Written by hand: rsip carries bodies as opaque bytes and has no MIME support.

/// Errors for a multipart body we cannot split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// The content type is not `multipart/*`, or has no `boundary` parameter (RFC 2046 §5.1.1).
    #[error("not a multipart content type with a boundary")]
    NoBoundary,
    /// The boundary is empty, longer than 70 characters, or ends in a space (RFC 2046 §5.1.1).
    #[error("invalid multipart boundary")]
    BadBoundary,
    /// The first delimiter line was not found.
    #[error("multipart body has no opening delimiter")]
    NoDelimiter,
    /// The closing `--boundary--` delimiter was not found.
    #[error("multipart body has no closing delimiter")]
    Unterminated,
    /// A part's header block is not `Name: value` lines followed by an empty line.
    #[error("malformed multipart part headers")]
    BadPartHeaders,
}

/// One body part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Part headers in order, names as received.
    pub headers: Vec<(String, String)>,
    /// Part content.
    pub body: Vec<u8>,
}

impl Part {
    /// A part with just a `Content-Type`.
    pub fn new(content_type: &str, body: Vec<u8>) -> Self {
        Self {
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }

    /// Value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Media type of the part without parameters, lower case. A part without `Content-Type` is
    /// `text/plain` (RFC 2046 §5.1.1).
    pub fn media_type(&self) -> String {
        media_type(self.header("Content-Type").unwrap_or("text/plain"))
    }
}

/// `type/subtype` of a Content-Type value, lower case, parameters removed.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Reads the `boundary` parameter of a `multipart/*` content type (quoted or token).
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let mut it = content_type.split(';');
    let mt = it.next().unwrap_or_default().trim().to_ascii_lowercase();
    if !mt.starts_with("multipart/") {
        return Err(MultipartError::NoBoundary);
    }
    for param in it {
        let Some((k, v)) = param.split_once('=') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("boundary") {
            continue;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(v);
        if v.is_empty() || v.len() > 70 || v.ends_with(' ') {
            return Err(MultipartError::BadBoundary);
        }
        return Ok(v.to_string());
    }
    Err(MultipartError::NoBoundary)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Splits a multipart body into its parts. Preamble and epilogue are ignored (RFC 2046 §5.1.1).
/// Bare-LF line ends are accepted as well as CRLF.
pub fn split(content_type: &str, body: &[u8]) -> Result<Vec<Part>, MultipartError> {
    let b = boundary(content_type)?;
    let delim = format!("--{b}").into_bytes();
    // The first delimiter may start the body directly (no preceding CRLF).
    let mut pos = if body.starts_with(&delim) {
        0
    } else {
        find(body, &[b"\n".as_slice(), &delim].concat(), 0)
            .map(|p| p + 1)
            .ok_or(MultipartError::NoDelimiter)?
    };
    let mut parts = Vec::new();
    loop {
        // `pos` is at a delimiter line.
        let after = pos + delim.len();
        if body[after..].starts_with(b"--") {
            return Ok(parts);
        }
        // Skip transport padding and the line end of the delimiter line.
        let line_end = find(body, b"\n", after).ok_or(MultipartError::Unterminated)?;
        let start = line_end + 1;
        let marker = [b"\n".as_slice(), &delim].concat();
        // Searching from the delimiter line's own LF finds an immediately following delimiter
        // too, which yields an empty part (rejected by parse_part: it has no header end).
        let next = find(body, &marker, line_end).ok_or(MultipartError::Unterminated)?;
        // The line end before the next delimiter belongs to the delimiter (RFC 2046 §5.1.1).
        let mut end = next;
        if end > start && body[end - 1] == b'\r' {
            end -= 1;
        }
        let content = &body[start.min(end)..end];
        parts.push(parse_part(content)?);
        pos = next + 1;
    }
}

fn parse_part(raw: &[u8]) -> Result<Part, MultipartError> {
    // Header block ends at the first empty line; a part may have no headers at all, in which
    // case it starts with the empty line.
    let (head, body) = if raw.starts_with(b"\r\n") {
        (&[][..], &raw[2..])
    } else if raw.starts_with(b"\n") {
        (&[][..], &raw[1..])
    } else if let Some(p) = find(raw, b"\r\n\r\n", 0) {
        (&raw[..p], &raw[p + 4..])
    } else if let Some(p) = find(raw, b"\n\n", 0) {
        (&raw[..p], &raw[p + 2..])
    } else {
        return Err(MultipartError::BadPartHeaders);
    };
    let head = std::str::from_utf8(head).map_err(|_| MultipartError::BadPartHeaders)?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Folded continuation of the previous header (RFC 5322 §2.2.3).
            let last = headers.last_mut().ok_or(MultipartError::BadPartHeaders)?;
            last.1.push(' ');
            last.1.push_str(line.trim());
            continue;
        }
        let (n, v) = line.split_once(':').ok_or(MultipartError::BadPartHeaders)?;
        if n.is_empty() || n.contains(' ') {
            return Err(MultipartError::BadPartHeaders);
        }
        headers.push((n.to_string(), v.trim().to_string()));
    }
    Ok(Part {
        headers,
        body: body.to_vec(),
    })
}

/// Builds a `multipart/mixed` body. The caller picks a `boundary` that does not occur in any
/// part (for SDP plus JSON a fixed token such as `xdpfork-boundary-<n>` is safe; this function
/// checks and returns `BadBoundary` otherwise). Returns the Content-Type value and the body.
pub fn build(boundary: &str, parts: &[Part]) -> Result<(String, Vec<u8>), MultipartError> {
    if boundary.is_empty()
        || boundary.len() > 70
        || boundary.ends_with(' ')
        || boundary.contains(['"', '\r', '\n'])
    {
        return Err(MultipartError::BadBoundary);
    }
    let delim = format!("--{boundary}");
    if parts
        .iter()
        .any(|p| find(&p.body, delim.as_bytes(), 0).is_some())
    {
        return Err(MultipartError::BadBoundary);
    }
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(delim.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (n, v) in &p.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&p.body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(delim.as_bytes());
    out.extend_from_slice(b"--\r\n");
    Ok((format!("multipart/mixed;boundary={boundary}"), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &[u8] = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n";
    const JSON: &[u8] = br#"{"type":"STOP","call-guid":"AB"}"#;

    #[test]
    fn build_then_split_round_trips() {
        let parts = vec![
            Part::new("application/sdp", SDP.to_vec()),
            Part::new("application/x-cisco-record+json", JSON.to_vec()),
        ];
        let (ct, body) = build("xdpfork-b1", &parts).expect("build");
        assert_eq!(ct, "multipart/mixed;boundary=xdpfork-b1");
        let back = split(&ct, &body).expect("split");
        assert_eq!(back, parts);
        assert_eq!(back[1].media_type(), "application/x-cisco-record+json");
    }

    #[test]
    fn splits_foreign_body_with_preamble_quotes_and_lf() {
        let body = b"preamble\r\n--abc\r\nContent-Type: Application/SDP\r\n\r\nv=0\r\n\r\n--abc\nContent-Type: application/x-cisco-record+json\n\n{}\n--abc--\r\nepilogue";
        let parts = split("Multipart/Mixed; boundary=\"abc\"", body).expect("split");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].media_type(), "application/sdp");
        assert_eq!(parts[0].body, b"v=0\r\n");
        assert_eq!(parts[1].body, b"{}");
    }

    #[test]
    fn part_without_headers_and_folded_header() {
        let body = b"--b\r\n\r\nplain\r\n--b\r\nContent-Type: application/sdp;\r\n  charset=x\r\n\r\nv=0\r\n--b--";
        let parts = split("multipart/mixed;boundary=b", body).expect("split");
        assert_eq!(parts[0].media_type(), "text/plain");
        assert_eq!(parts[0].body, b"plain");
        assert_eq!(
            parts[1].header("content-type"),
            Some("application/sdp; charset=x")
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            split("application/sdp", b""),
            Err(MultipartError::NoBoundary)
        );
        assert_eq!(
            split("multipart/mixed", b""),
            Err(MultipartError::NoBoundary)
        );
        assert_eq!(
            split("multipart/mixed;boundary=\"\"", b""),
            Err(MultipartError::BadBoundary)
        );
        assert_eq!(
            split("multipart/mixed;boundary=b", b"no delimiter"),
            Err(MultipartError::NoDelimiter)
        );
        assert_eq!(
            split(
                "multipart/mixed;boundary=b",
                b"--b\r\nContent-Type: a/b\r\n\r\nx"
            ),
            Err(MultipartError::Unterminated)
        );
        assert_eq!(
            split(
                "multipart/mixed;boundary=b",
                b"--b\r\nnot a header\r\n\r\nx\r\n--b--"
            ),
            Err(MultipartError::BadPartHeaders)
        );
        let p = Part::new("text/plain", b"--b inside".to_vec());
        assert_eq!(build("b", &[p]), Err(MultipartError::BadBoundary));
    }
}
