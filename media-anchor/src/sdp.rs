//! SDP (RFC 8866) parsing and rewriting for media anchoring.
//!
//! Role: the B2BUA puts this host in the media path of every call. For each offer or answer it
//! (1) reads the negotiated audio stream (address, port, payload types, codec names, direction,
//! ptime, telephone-event) so the fork layer can program the relay, and (2) rewrites the SDP sent
//! to the other leg so that the audio's `c=` and `m=` point at this host and an allocated port.
//!
//! Inputs: body bytes ([`Sdp::parse`]), then rewrite calls ([`Sdp::anchor_audio`],
//! [`Sdp::set_origin`]). Outputs: [`Sdp::audio`] → [`AudioMedia`], and [`Sdp::to_bytes`].
//!
//! The SDP is kept as its lines, in order; only lines the rewrite is about are touched, so
//! everything else (attributes we do not know, bandwidth, extra formats) passes through intact.
//! Written by hand: rsip does not parse SDP and the workspace has no SDP crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Errors for an SDP body we cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body is not UTF-8 (SDP is US-ASCII/UTF-8 text, RFC 8866 §5).
    #[error("SDP is not UTF-8")]
    NotUtf8,
    /// The first line is not `v=0` (RFC 8866 §5.1).
    #[error("SDP does not start with v=0")]
    NoVersion,
    /// A line is not `<letter>=<value>` (RFC 8866 §5).
    #[error("malformed SDP line {line}")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
    },
    /// An `m=` line does not have media, port, proto and at least one format (RFC 8866 §5.14).
    #[error("malformed m= line {line}")]
    MalformedMedia {
        /// 1-based line number.
        line: usize,
    },
    /// A `c=` line is not `IN IP4|IP6 <address>` with a literal address (RFC 8866 §5.7).
    #[error("malformed c= line {line}")]
    MalformedConnection {
        /// 1-based line number.
        line: usize,
    },
}

/// Media direction (RFC 3264 §5.1, §8.4; RFC 8866 §6.7). Default when absent is `SendRecv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// `a=sendrecv`.
    SendRecv,
    /// `a=sendonly` (the usual "I put you on hold").
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    fn from_attr(a: &str) -> Option<Self> {
        match a {
            "sendrecv" => Some(Self::SendRecv),
            "sendonly" => Some(Self::SendOnly),
            "recvonly" => Some(Self::RecvOnly),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }
}

/// One payload format of a media line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Codec {
    /// RTP payload type (RFC 3550 §5.1).
    pub pt: u8,
    /// Encoding name, upper case (`PCMU`, `PCMA`, `G729`, `TELEPHONE-EVENT`, ...); from `a=rtpmap`
    /// or, for static types without one, RFC 3551 §6 table 4. `None` for an unknown dynamic type.
    pub name: Option<String>,
    /// Clock rate in Hz.
    pub clock_rate: Option<u32>,
    /// Channel count from rtpmap, if given.
    pub channels: Option<u8>,
    /// `a=fmtp` value for this payload type.
    pub fmtp: Option<String>,
}

impl Codec {
    /// True for G.711 µ-law or A-law, the only codecs forking supports.
    pub fn is_g711(&self) -> bool {
        matches!(self.name.as_deref(), Some("PCMU" | "PCMA")) && self.clock_rate == Some(8000)
    }

    /// True for RFC 4733 telephone events (DTMF).
    pub fn is_telephone_event(&self) -> bool {
        self.name.as_deref() == Some("TELEPHONE-EVENT")
    }
}

/// Static payload types of RFC 3551 §6 table 4 that calls meet in practice.
fn static_codec(pt: u8) -> Option<(&'static str, u32)> {
    match pt {
        0 => Some(("PCMU", 8000)),
        3 => Some(("GSM", 8000)),
        4 => Some(("G723", 8000)),
        8 => Some(("PCMA", 8000)),
        9 => Some(("G722", 8000)),
        13 => Some(("CN", 8000)),
        18 => Some(("G729", 8000)),
        _ => None,
    }
}

/// What a peer said about its audio stream: where it receives and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioMedia {
    /// Index of the `m=` section (0-based) among all media sections.
    pub index: usize,
    /// Connection address (media-level `c=`, else session-level). `0.0.0.0`/`::` means hold
    /// (RFC 3264 §8.4 legacy form).
    pub addr: IpAddr,
    /// RTP port; 0 means the stream is rejected/disabled (RFC 3264 §6).
    pub port: u16,
    /// Transport protocol of the `m=` line (`RTP/AVP`, `RTP/SAVP`, ...).
    pub proto: String,
    /// Payload types in preference order, with what we know about each.
    pub codecs: Vec<Codec>,
    /// Effective direction (media-level attribute, else session-level, else sendrecv).
    pub direction: Direction,
    /// `a=ptime` in ms.
    pub ptime: Option<u32>,
    /// `a=maxptime` in ms.
    pub maxptime: Option<u32>,
}

impl AudioMedia {
    /// First codec that is not telephone-event or comfort noise: the one media flows with.
    pub fn primary_codec(&self) -> Option<&Codec> {
        self.codecs
            .iter()
            .find(|c| !c.is_telephone_event() && c.name.as_deref() != Some("CN"))
    }

    /// Payload type of RFC 4733 telephone-event, if offered.
    pub fn telephone_event_pt(&self) -> Option<u8> {
        self.codecs
            .iter()
            .find(|c| c.is_telephone_event())
            .map(|c| c.pt)
    }

    /// Hold per RFC 3264 §8.4 (sendonly/inactive) or the RFC 2543 `c=0.0.0.0` form. A
    /// `recvonly` stream is the held side's answer, so it counts too: no audio flows from it.
    pub fn is_hold(&self) -> bool {
        self.addr.is_unspecified()
            || matches!(
                self.direction,
                Direction::SendOnly | Direction::Inactive | Direction::RecvOnly
            )
    }

    /// SRTP profiles (RFC 3711 §12): forking cannot read the payload, so it is an unsupported flow.
    pub fn is_srtp(&self) -> bool {
        self.proto.contains("SAVP")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    kind: u8,
    value: String,
}

impl Line {
    fn attr(&self) -> Option<(&str, Option<&str>)> {
        if self.kind != b'a' {
            return None;
        }
        Some(match self.value.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (self.value.as_str(), None),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Section {
    /// Lines of the section; for a media section, `lines[0]` is its `m=` line.
    lines: Vec<Line>,
}

/// A parsed SDP body that can be re-serialised with only targeted changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    session: Section,
    media: Vec<Section>,
}

/// Fields of an `m=` line.
struct MLine<'a> {
    media: &'a str,
    port: u16,
    /// `/<number of ports>` suffix, kept verbatim.
    port_count: Option<&'a str>,
    proto: &'a str,
    formats: Vec<&'a str>,
}

fn parse_mline(v: &str) -> Option<MLine<'_>> {
    let mut it = v.split(' ');
    let media = it.next().filter(|s| !s.is_empty())?;
    let port_s = it.next()?;
    let (port_s, port_count) = match port_s.split_once('/') {
        Some((p, n)) => (p, Some(n)),
        None => (port_s, None),
    };
    let port = port_s.parse().ok()?;
    let proto = it.next().filter(|s| !s.is_empty())?;
    let formats: Vec<&str> = it.filter(|s| !s.is_empty()).collect();
    if formats.is_empty() {
        return None;
    }
    Some(MLine {
        media,
        port,
        port_count,
        proto,
        formats,
    })
}

/// Parses `IN IP4 <addr>[/ttl]` or `IN IP6 <addr>`.
fn parse_conn(v: &str) -> Option<IpAddr> {
    let mut it = v.split(' ');
    if it.next()? != "IN" {
        return None;
    }
    let ty = it.next()?;
    let addr = it.next()?.split('/').next()?;
    if it.next().is_some() {
        return None;
    }
    match ty {
        "IP4" => addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        "IP6" => addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        _ => None,
    }
}

fn conn_value(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("IN IP4 {a}"),
        IpAddr::V6(a) => format!("IN IP6 {a}"),
    }
}

impl Sdp {
    /// Parses an SDP body. Accepts CRLF or bare LF line ends (RFC 8866 §5 asks receivers to be
    /// tolerant) and ignores a trailing empty line.
    pub fn parse(body: &[u8]) -> Result<Self, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
        let mut session = Section { lines: Vec::new() };
        let mut media: Vec<Section> = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let n = i + 1;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            if raw.is_empty() {
                continue;
            }
            let b = raw.as_bytes();
            if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
                return Err(SdpError::MalformedLine { line: n });
            }
            let line = Line {
                kind: b[0],
                value: raw[2..].to_string(),
            };
            // The first line that is not empty must be `v=0` (RFC 8866 §5). Checking line 1
            // instead let a body starting with an empty line skip the check, and the SDP we
            // then sent on (empty line dropped) was one we reject (found by fuzzing,
            // docs/fuzzing.md).
            if session.lines.is_empty() && !(line.kind == b'v' && line.value == "0") {
                return Err(SdpError::NoVersion);
            }
            match line.kind {
                b'm' => {
                    if parse_mline(&line.value).is_none() {
                        return Err(SdpError::MalformedMedia { line: n });
                    }
                    media.push(Section { lines: vec![line] });
                }
                b'c' => {
                    if parse_conn(&line.value).is_none() {
                        return Err(SdpError::MalformedConnection { line: n });
                    }
                    match media.last_mut() {
                        Some(m) => m.lines.push(line),
                        None => session.lines.push(line),
                    }
                }
                _ => match media.last_mut() {
                    Some(m) => m.lines.push(line),
                    None => session.lines.push(line),
                },
            }
        }
        if session.lines.is_empty() {
            return Err(SdpError::NoVersion);
        }
        Ok(Self { session, media })
    }

    /// Serialises with CRLF line ends (RFC 8866 §5).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        for l in self
            .session
            .lines
            .iter()
            .chain(self.media.iter().flat_map(|m| &m.lines))
        {
            out.push(l.kind as char);
            out.push('=');
            out.push_str(&l.value);
            out.push_str("\r\n");
        }
        out.into_bytes()
    }

    /// Number of `m=` sections.
    pub fn media_count(&self) -> usize {
        self.media.len()
    }

    /// Media type (`audio`, `video`, `image`, ...) of section `i`.
    pub fn media_type(&self, i: usize) -> Option<&str> {
        let m = self.media.get(i)?;
        parse_mline(&m.lines[0].value).map(|m| m.media)
    }

    fn session_conn(&self) -> Option<IpAddr> {
        self.session
            .lines
            .iter()
            .find(|l| l.kind == b'c')
            .and_then(|l| parse_conn(&l.value))
    }

    fn session_direction(&self) -> Option<Direction> {
        self.session
            .lines
            .iter()
            .filter_map(Line::attr)
            .find_map(|(n, _)| Direction::from_attr(n))
    }

    /// True when any section is fax (`m=image`, T.38): an unsupported flow for forking.
    pub fn has_fax(&self) -> bool {
        (0..self.media.len()).any(|i| self.media_type(i) == Some("image"))
    }

    /// The first `m=audio` section, read into an [`AudioMedia`]. `None` when there is no audio
    /// section or it has no connection address.
    pub fn audio(&self) -> Option<AudioMedia> {
        let index = (0..self.media.len()).find(|&i| self.media_type(i) == Some("audio"))?;
        let sec = &self.media[index];
        let m = parse_mline(&sec.lines[0].value)?;
        let addr = sec
            .lines
            .iter()
            .find(|l| l.kind == b'c')
            .and_then(|l| parse_conn(&l.value))
            .or_else(|| self.session_conn())?;
        let mut direction = None;
        let mut ptime = None;
        let mut maxptime = None;
        let mut rtpmaps: Vec<(u8, String, Option<u32>, Option<u8>)> = Vec::new();
        let mut fmtps: Vec<(u8, String)> = Vec::new();
        for (name, val) in sec.lines.iter().filter_map(Line::attr) {
            if let Some(d) = Direction::from_attr(name) {
                direction = Some(d);
                continue;
            }
            let Some(val) = val else { continue };
            match name {
                "ptime" => ptime = val.trim().parse().ok(),
                "maxptime" => maxptime = val.trim().parse().ok(),
                "rtpmap" => {
                    // a=rtpmap:<pt> <name>/<clock>[/<channels>] (RFC 8866 §6.6)
                    if let Some((pt, enc)) = val.split_once(' ') {
                        if let Ok(pt) = pt.parse::<u8>() {
                            let mut parts = enc.trim().split('/');
                            let name = parts.next().unwrap_or_default().to_ascii_uppercase();
                            let clock = parts.next().and_then(|c| c.parse().ok());
                            let ch = parts.next().and_then(|c| c.parse().ok());
                            rtpmaps.push((pt, name, clock, ch));
                        }
                    }
                }
                "fmtp" => {
                    if let Some((pt, p)) = val.split_once(' ') {
                        if let Ok(pt) = pt.parse::<u8>() {
                            fmtps.push((pt, p.trim().to_string()));
                        }
                    }
                }
                _ => {}
            }
        }
        let codecs = m
            .formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .filter(|pt| *pt < 128)
            .map(|pt| {
                let (name, clock_rate, channels) = match rtpmaps.iter().find(|(p, ..)| *p == pt) {
                    Some((_, n, c, ch)) => (Some(n.clone()), *c, *ch),
                    None => match static_codec(pt) {
                        Some((n, c)) => (Some(n.to_string()), Some(c), None),
                        None => (None, None, None),
                    },
                };
                Codec {
                    pt,
                    name,
                    clock_rate,
                    channels,
                    fmtp: fmtps.iter().find(|(p, _)| *p == pt).map(|(_, v)| v.clone()),
                }
            })
            .collect();
        Some(AudioMedia {
            index,
            addr,
            port: m.port,
            proto: m.proto.to_string(),
            codecs,
            direction: direction
                .or_else(|| self.session_direction())
                .unwrap_or(Direction::SendRecv),
            ptime,
            maxptime,
        })
    }

    /// Points the first audio stream at `addr:port` (this host's anchor).
    ///
    /// - The audio section gets its own `c=` line with `addr`; the session-level `c=` is set to
    ///   `addr` too (it may serve other sections, which are disabled below anyway).
    /// - A hold expressed as `c=0.0.0.0`/`::` is kept as an unspecified address of `addr`'s
    ///   family, so the hold reaches the other leg unchanged.
    /// - `a=rtcp` (RFC 3605) is rewritten to `port + 1` on `addr`, the RTCP port the allocator
    ///   reserves next to each RTP port (RFC 3550 §11).
    /// - ICE attributes (`a=candidate`, `a=ice-*`, `a=end-of-candidates`, `a=remote-candidates`)
    ///   are removed: they describe the far side's addresses, which the other leg must not use.
    /// - Every non-audio section gets port 0 (RFC 3264 §6 "rejected"), because only audio is
    ///   anchored; a stream we do not relay must not be offered.
    ///
    /// Returns false (and changes nothing) when there is no audio section.
    pub fn anchor_audio(&mut self, addr: IpAddr, port: u16) -> bool {
        let Some(audio) = self.audio() else {
            return false;
        };
        let held = audio.addr.is_unspecified();
        let c_addr = match (held, addr) {
            (false, a) => a,
            (true, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (true, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        for l in self.session.lines.iter_mut().filter(|l| l.kind == b'c') {
            l.value = conn_value(c_addr);
        }
        for (i, sec) in self.media.iter_mut().enumerate() {
            let Some(m) = parse_mline(&sec.lines[0].value) else {
                continue;
            };
            let new_port = if i == audio.index { port } else { 0 };
            let port_field = match m.port_count {
                Some(n) => format!("{new_port}/{n}"),
                None => new_port.to_string(),
            };
            let mline = format!(
                "{} {} {} {}",
                m.media,
                port_field,
                m.proto,
                m.formats.join(" ")
            );
            sec.lines[0].value = mline;
            if i != audio.index {
                continue;
            }
            sec.lines.retain(|l| {
                !matches!(
                    l.attr(),
                    Some((
                        "candidate"
                            | "end-of-candidates"
                            | "remote-candidates"
                            | "ice-ufrag"
                            | "ice-pwd"
                            | "ice-options"
                            | "ice-lite"
                            | "ice-mismatch",
                        _
                    ))
                )
            });
            match sec.lines.iter().position(|l| l.kind == b'c') {
                Some(p) => sec.lines[p].value = conn_value(c_addr),
                None => {
                    // c= goes after i= (RFC 8866 §5 order: m, i, c, b, k, a).
                    let at = sec
                        .lines
                        .iter()
                        .position(|l| l.kind != b'm' && l.kind != b'i');
                    let line = Line {
                        kind: b'c',
                        value: conn_value(c_addr),
                    };
                    match at {
                        Some(p) => sec.lines.insert(p, line),
                        None => sec.lines.push(line),
                    }
                }
            }
            for l in sec.lines.iter_mut() {
                if let Some(("rtcp", Some(_))) = l.attr() {
                    let rtcp_port = port.saturating_add(1);
                    l.value = format!("rtcp:{rtcp_port} {}", conn_value(c_addr));
                }
            }
        }
        true
    }

    /// Replaces the `o=` line with this host's origin (RFC 8866 §5.2). A B2BUA owns the session
    /// description on each leg, and RFC 3264 §8 requires `version` to grow on every change.
    pub fn set_origin(&mut self, username: &str, session_id: u64, version: u64, addr: IpAddr) {
        let value = format!("{username} {session_id} {version} {}", conn_value(addr));
        let line = Line { kind: b'o', value };
        match self.session.lines.iter().position(|l| l.kind == b'o') {
            Some(p) => self.session.lines[p] = line,
            None => self
                .session
                .lines
                .insert(1.min(self.session.lines.len()), line),
        }
    }

    /// Replaces only the address of the `o=` line (rtpengine's `replace-origin`): username,
    /// session id and version stay, so the far end sees the same session. Returns false when
    /// there is no well-formed `o=` line (RFC 8866 §5.2: six fields).
    pub fn set_origin_address(&mut self, addr: IpAddr) -> bool {
        let Some(line) = self.session.lines.iter_mut().find(|l| l.kind == b'o') else {
            return false;
        };
        let fields: Vec<&str> = line.value.split(' ').collect();
        let [user, id, version, _, _, _] = fields.as_slice() else {
            return false;
        };
        line.value = format!("{user} {id} {version} {}", conn_value(addr));
        true
    }

    /// The value of attribute `name` (`a=name:value`; `Some("")` for a flag `a=name`): the audio
    /// section's if it has one, else the session's (RFC 8866 §5: session attributes are
    /// defaults for every media section).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        let audio = self.audio()?;
        let find = |sec: &Section| -> Option<usize> {
            sec.lines
                .iter()
                .position(|l| matches!(l.attr(), Some((n, _)) if n == name))
        };
        let (sec, at) = match find(&self.media[audio.index]) {
            Some(at) => (&self.media[audio.index], at),
            None => (&self.session, find(&self.session)?),
        };
        Some(sec.lines[at].attr().and_then(|(_, v)| v).unwrap_or(""))
    }

    /// Drops every attribute named in `names` from the session and the audio section.
    pub fn remove_attributes(&mut self, names: &[&str]) {
        let Some(audio) = self.audio() else { return };
        let keep = |l: &Line| !matches!(l.attr(), Some((n, _)) if names.contains(&n));
        self.session.lines.retain(keep);
        self.media[audio.index].lines.retain(keep);
    }

    /// Appends `a=<value>` to the audio section.
    pub fn push_audio_attribute(&mut self, value: String) -> bool {
        let Some(audio) = self.audio() else {
            return false;
        };
        self.media[audio.index]
            .lines
            .push(Line { kind: b'a', value });
        true
    }

    /// Appends `a=<value>` to the session (after its other lines, before the first `m=`).
    pub fn push_session_attribute(&mut self, value: String) {
        self.session.lines.push(Line { kind: b'a', value });
    }

    /// Sets the audio `m=` line's transport protocol (`RTP/AVP`, `UDP/TLS/RTP/SAVPF`).
    pub fn set_audio_proto(&mut self, proto: &str) -> bool {
        let Some(audio) = self.audio() else {
            return false;
        };
        let sec = &mut self.media[audio.index];
        let Some(m) = parse_mline(&sec.lines[0].value) else {
            return false;
        };
        let port = match m.port_count {
            Some(n) => format!("{}/{n}", m.port),
            None => m.port.to_string(),
        };
        sec.lines[0].value = format!("{} {port} {proto} {}", m.media, m.formats.join(" "));
        true
    }

    /// Sets the audio section's direction attribute (replacing any direction attribute there and
    /// dropping session-level ones so they cannot contradict it).
    pub fn set_audio_direction(&mut self, dir: Direction) -> bool {
        let Some(audio) = self.audio() else {
            return false;
        };
        self.session
            .lines
            .retain(|l| !matches!(l.attr(), Some((n, None)) if Direction::from_attr(n).is_some()));
        let sec = &mut self.media[audio.index];
        sec.lines
            .retain(|l| !matches!(l.attr(), Some((n, None)) if Direction::from_attr(n).is_some()));
        sec.lines.push(Line {
            kind: b'a',
            value: dir.as_str().to_string(),
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_read_removed_and_added_on_the_audio_section() {
        let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
a=fingerprint:sha-256 AA\r\na=group:BUNDLE 0\r\nm=audio 5000 UDP/TLS/RTP/SAVPF 0\r\n\
a=mid:0\r\na=rtcp-mux\r\na=setup:actpass\r\n";
        let mut sdp = Sdp::parse(body).expect("sdp");
        assert_eq!(sdp.attribute("fingerprint"), Some("sha-256 AA"));
        assert_eq!(sdp.attribute("setup"), Some("actpass"));
        assert_eq!(sdp.attribute("rtcp-mux"), Some(""));
        assert_eq!(sdp.attribute("ice-ufrag"), None);
        sdp.remove_attributes(&["fingerprint", "setup", "rtcp-mux", "group"]);
        assert!(sdp.set_audio_proto("RTP/AVP"));
        assert!(sdp.push_audio_attribute("rtcp:5001".into()));
        sdp.push_session_attribute("ice-lite".into());
        let text = String::from_utf8(sdp.to_bytes()).expect("utf8");
        assert!(text.contains("m=audio 5000 RTP/AVP 0\r\n"), "{text}");
        assert!(text.contains("a=ice-lite\r\nm=audio"), "{text}");
        assert!(text.ends_with("a=mid:0\r\na=rtcp:5001\r\n"), "{text}");
        assert!(
            !text.contains("fingerprint") && !text.contains("setup"),
            "{text}"
        );
    }

    const OFFER: &str = "v=0\r\n\
o=CiscoSystemsSIP-GW-UserAgent 4242 1 IN IP4 198.51.100.7\r\n\
s=SIP Call\r\n\
c=IN IP4 198.51.100.7\r\n\
t=0 0\r\n\
m=audio 16384 RTP/AVP 0 8 18 101\r\n\
c=IN IP4 198.51.100.8\r\n\
b=AS:64\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=fmtp:18 annexb=no\r\n\
a=ptime:20\r\n\
a=rtcp:16385 IN IP4 198.51.100.8\r\n\
a=candidate:1 1 UDP 2130706431 198.51.100.8 16384 typ host\r\n\
a=x-unknown:keep me\r\n\
a=sendrecv\r\n\
m=video 0 RTP/AVP 97\r\n\
a=rtpmap:97 H264/90000\r\n";

    #[test]
    fn extracts_audio() {
        let sdp = Sdp::parse(OFFER.as_bytes()).expect("parse");
        let a = sdp.audio().expect("audio");
        assert_eq!(a.index, 0);
        assert_eq!(a.addr, "198.51.100.8".parse::<IpAddr>().expect("ip"));
        assert_eq!(a.port, 16384);
        assert_eq!(a.proto, "RTP/AVP");
        let names: Vec<_> = a.codecs.iter().map(|c| (c.pt, c.name.as_deref())).collect();
        assert_eq!(
            names,
            vec![
                (0, Some("PCMU")),
                (8, Some("PCMA")),
                (18, Some("G729")),
                (101, Some("TELEPHONE-EVENT"))
            ]
        );
        assert_eq!(a.codecs[2].fmtp.as_deref(), Some("annexb=no"));
        assert_eq!(a.telephone_event_pt(), Some(101));
        assert_eq!(a.primary_codec().map(|c| c.pt), Some(0));
        assert!(a.primary_codec().is_some_and(Codec::is_g711));
        assert_eq!(a.direction, Direction::SendRecv);
        assert_eq!(a.ptime, Some(20));
        assert!(!a.is_hold());
        assert!(!a.is_srtp());
        assert!(!sdp.has_fax());
    }

    #[test]
    fn dynamic_and_unknown_payload_types() {
        let s = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 96 97 8\r\na=rtpmap:96 opus/48000/2\r\n";
        let a = Sdp::parse(s.as_bytes())
            .expect("parse")
            .audio()
            .expect("audio");
        assert_eq!(a.codecs[0].name.as_deref(), Some("OPUS"));
        assert_eq!(a.codecs[0].clock_rate, Some(48000));
        assert_eq!(a.codecs[0].channels, Some(2));
        assert_eq!(a.codecs[1].name, None);
        assert_eq!(a.codecs[2].name.as_deref(), Some("PCMA"));
        assert!(!a.primary_codec().is_some_and(Codec::is_g711));
        // Session-level c= applies when the media section has none.
        assert_eq!(a.addr, "192.0.2.1".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn anchor_rewrites_only_what_it_must() {
        let mut sdp = Sdp::parse(OFFER.as_bytes()).expect("parse");
        let here: IpAddr = "203.0.113.5".parse().expect("ip");
        assert!(sdp.anchor_audio(here, 30000));
        sdp.set_origin("xdpfork", 77, 2, here);
        let out = String::from_utf8(sdp.to_bytes()).expect("utf8");
        let expected = "v=0\r\n\
o=xdpfork 77 2 IN IP4 203.0.113.5\r\n\
s=SIP Call\r\n\
c=IN IP4 203.0.113.5\r\n\
t=0 0\r\n\
m=audio 30000 RTP/AVP 0 8 18 101\r\n\
c=IN IP4 203.0.113.5\r\n\
b=AS:64\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=fmtp:18 annexb=no\r\n\
a=ptime:20\r\n\
a=rtcp:30001 IN IP4 203.0.113.5\r\n\
a=x-unknown:keep me\r\n\
a=sendrecv\r\n\
m=video 0 RTP/AVP 97\r\n\
a=rtpmap:97 H264/90000\r\n";
        assert_eq!(out, expected);
        // Round trip: re-parsing the output reads the anchor.
        let a = Sdp::parse(out.as_bytes())
            .expect("reparse")
            .audio()
            .expect("audio");
        assert_eq!((a.addr, a.port), (here, 30000));
    }

    #[test]
    fn anchor_inserts_media_c_line_and_keeps_hold() {
        let s = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\ni=voice\r\na=sendonly\r\n";
        let mut sdp = Sdp::parse(s.as_bytes()).expect("parse");
        assert!(sdp.audio().expect("audio").is_hold());
        assert!(sdp.anchor_audio("203.0.113.5".parse().expect("ip"), 30000));
        let out = String::from_utf8(sdp.to_bytes()).expect("utf8");
        assert!(
            out.contains("m=audio 30000 RTP/AVP 0\r\ni=voice\r\nc=IN IP4 0.0.0.0\r\na=sendonly")
        );
        assert!(sdp.audio().expect("audio").is_hold());
    }

    #[test]
    fn origin_address_only() {
        let mut sdp = Sdp::parse(OFFER.as_bytes()).expect("parse");
        assert!(sdp.set_origin_address("2001:db8::5".parse().expect("ip")));
        let out = String::from_utf8(sdp.to_bytes()).expect("utf8");
        assert!(out.contains("o=CiscoSystemsSIP-GW-UserAgent 4242 1 IN IP6 2001:db8::5\r\n"));
        let mut none = Sdp::parse(b"v=0\r\no=short\r\n").expect("parse");
        assert!(!none.set_origin_address("192.0.2.1".parse().expect("ip")));
    }

    #[test]
    fn ipv6() {
        let s = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 8\r\n";
        let mut sdp = Sdp::parse(s.as_bytes()).expect("parse");
        assert_eq!(
            sdp.audio().expect("audio").addr,
            "2001:db8::1".parse::<IpAddr>().expect("ip")
        );
        assert!(sdp.anchor_audio("2001:db8::5".parse().expect("ip"), 5000));
        let out = String::from_utf8(sdp.to_bytes()).expect("utf8");
        assert!(out.contains("c=IN IP6 2001:db8::5\r\n"));
        assert!(out.contains("m=audio 5000 RTP/AVP 8\r\n"));
    }

    #[test]
    fn hold_forms_and_direction() {
        let base = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n";
        for (extra, dir, hold) in [
            (
                "m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n",
                Direction::SendOnly,
                true,
            ),
            (
                "m=audio 4000 RTP/AVP 0\r\na=inactive\r\n",
                Direction::Inactive,
                true,
            ),
            (
                "m=audio 4000 RTP/AVP 0\r\na=recvonly\r\n",
                Direction::RecvOnly,
                true,
            ),
            (
                "a=sendonly\r\nm=audio 4000 RTP/AVP 0\r\n",
                Direction::SendOnly,
                true,
            ),
            (
                "a=sendonly\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n",
                Direction::SendRecv,
                false,
            ),
            ("m=audio 4000 RTP/AVP 0\r\n", Direction::SendRecv, false),
        ] {
            let a = Sdp::parse(format!("{base}{extra}").as_bytes())
                .expect("parse")
                .audio()
                .expect("audio");
            assert_eq!((a.direction, a.is_hold()), (dir, hold), "{extra}");
        }
        let mut sdp = Sdp::parse(format!("{base}a=inactive\r\nm=audio 1 RTP/AVP 0\r\n").as_bytes())
            .expect("parse");
        assert!(sdp.set_audio_direction(Direction::SendRecv));
        let out = String::from_utf8(sdp.to_bytes()).expect("utf8");
        assert!(!out.contains("inactive"));
        assert!(out.ends_with("a=sendrecv\r\n"));
    }

    #[test]
    fn srtp_and_fax_detection() {
        let s = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 4000 RTP/SAVP 0\r\nm=image 4002 udptl t38\r\n";
        let sdp = Sdp::parse(s.as_bytes()).expect("parse");
        assert!(sdp.audio().expect("audio").is_srtp());
        assert!(sdp.has_fax());
    }

    #[test]
    fn lf_only_and_errors() {
        let s = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 4000 RTP/AVP 0\n";
        assert_eq!(
            Sdp::parse(s.as_bytes())
                .expect("lf")
                .audio()
                .expect("audio")
                .port,
            4000
        );
        assert_eq!(Sdp::parse(b"o=x\r\n"), Err(SdpError::NoVersion));
        assert_eq!(Sdp::parse(b""), Err(SdpError::NoVersion));
        assert_eq!(Sdp::parse(&[0xff, 0xfe]), Err(SdpError::NotUtf8));
        assert_eq!(
            Sdp::parse(b"v=0\r\nbad\r\n"),
            Err(SdpError::MalformedLine { line: 2 })
        );
        assert_eq!(
            Sdp::parse(b"v=0\r\nm=audio x RTP/AVP 0\r\n"),
            Err(SdpError::MalformedMedia { line: 2 })
        );
        assert_eq!(
            Sdp::parse(b"v=0\r\nm=audio 1 RTP/AVP\r\n"),
            Err(SdpError::MalformedMedia { line: 2 })
        );
        assert_eq!(
            Sdp::parse(b"v=0\r\nc=IN IP4 host.example\r\n"),
            Err(SdpError::MalformedConnection { line: 2 })
        );
        // No audio: nothing to anchor.
        let mut v =
            Sdp::parse(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=video 1 RTP/AVP 97\r\n").expect("parse");
        assert!(v.audio().is_none());
        assert!(!v.anchor_audio("192.0.2.9".parse().expect("ip"), 2));
    }
}
