//! Speech-server protocol profiles: which WebSocket dialect a destination speaks.
//!
//! A contact center does not write a speech server for us; it runs one that already speaks a
//! published dialect. Each destination (a `[[speech_server]]` entry, or a fork request naming a
//! profile) picks one [`Profile`]. docs/speech-protocol.md has one section per profile with its
//! exact messages.
//!
//! [`Dialect`] is the per-connection translator (sans-IO): the stream service speaks one
//! internal language, the xdpfork [`Control`] messages and 16-byte-header audio frames
//! ([`crate::encode_audio`]); a connection's dialect turns them into the frames its server
//! expects, and checks what the server sends back.
//!
//! Inputs, in order, on one connection: [`Dialect::upgrade`] (headers of the HTTP upgrade),
//! [`Dialect::on_control`] for each control message and [`Dialect::on_audio`] for each audio
//! frame, [`Dialect::flush`] after each batch the service queued, [`Dialect::on_server_text`]
//! / [`Dialect::on_server_binary`] for each frame from the server, [`Dialect::on_timeout`] when
//! [`Dialect::poll_timeout`] is due, and [`Dialect::on_local_close`] before a local close.
//! Outputs: [`WireFrame`]s appended to the caller's vector, and a [`ServerSignal`] per server
//! frame. No sockets, no clock (every input takes `now`), no randomness (ids come in
//! [`UpgradeInfo`]).

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::{check_server_text, Control, ErrorMsg, ServerViolation, SUBPROTOCOL};

/// A WebSocket dialect spoken to a speech server.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// `xdpfork.speech.v1` (docs/speech-protocol.md §1–§6): many calls per connection, JSON
    /// control, 16-byte "XF" header on every audio frame.
    #[default]
    Xdpfork,
    /// Twilio Media Streams: JSON text frames only (`connected`, `start`, `media` with base64
    /// µ-law 8 kHz, `mark`, `stop`), one call per connection.
    Twilio,
    /// Genesys AudioHook protocol v2: `open`/`opened` handshake, binary PCMU frames (stereo:
    /// external = caller, internal = callee), one call per connection.
    Audiohook,
    /// jambonz `listen` / mod_audio_stream: one JSON metadata text frame, then binary L16.
    Jambonz,
    /// Binary audio only (µ-law, A-law or L16), e.g. ASR services with a plain binary socket.
    Raw,
}

impl Profile {
    /// Every profile, in documentation order.
    pub const ALL: [Profile; 5] = [
        Profile::Xdpfork,
        Profile::Twilio,
        Profile::Audiohook,
        Profile::Jambonz,
        Profile::Raw,
    ];

    /// Config and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Xdpfork => "xdpfork",
            Profile::Twilio => "twilio",
            Profile::Audiohook => "audiohook",
            Profile::Jambonz => "jambonz",
            Profile::Raw => "raw",
        }
    }

    /// Whether several calls may share one connection. Only our own protocol multiplexes; every
    /// other dialect names one call per socket.
    pub fn multiplexes_calls(self) -> bool {
        matches!(self, Profile::Xdpfork)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile name that is not one of [`Profile::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown speech profile {0:?} (expected one of xdpfork, twilio, audiohook, jambonz, raw)")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProfile(s.to_owned()))
    }
}

/// One WebSocket data frame to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFrame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

impl WireFrame {
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            WireFrame::Text(t) => t.len(),
            WireFrame::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it carries audio (dropped first under back-pressure, counted when lost).
    pub fn is_audio(&self) -> bool {
        matches!(self, WireFrame::Binary(_))
    }
}

/// How the token of a destination is presented in the HTTP upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthScheme {
    /// `Authorization: Bearer <token>` (RFC 6750 §2.1).
    #[default]
    Bearer,
    /// `Authorization: Token <token>` (Deepgram-style ASR services).
    Token,
    /// The token as the whole value of this header (e.g. `X-API-KEY`).
    Header(String),
}

/// Per-destination dialect settings (`[[speech_server]]` in fork-agent's config).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// The dialect.
    #[serde(default)]
    pub profile: Profile,
    /// How a token is presented.
    #[serde(default)]
    pub auth: AuthScheme,
    /// Extra headers sent with every upgrade request (name, value).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// A setting a profile cannot work with; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ProfileConfigError {
    /// The offending field, as written in the config.
    pub field: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

impl ProfileConfig {
    /// Checks every setting; the error names the field.
    pub fn validate(&self) -> Result<(), ProfileConfigError> {
        for (i, (name, value)) in self.headers.iter().enumerate() {
            let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(token_char) {
                return Err(ProfileConfigError {
                    field: format!("headers[{i}]"),
                    reason: format!("{name:?} is not an HTTP header name (RFC 9110 §5.1)"),
                });
            }
            if value.chars().any(|c| c.is_control() || !c.is_ascii()) {
                return Err(ProfileConfigError {
                    field: format!("headers[{i}]"),
                    reason: "value must be printable ASCII".into(),
                });
            }
        }
        if let AuthScheme::Header(h) = &self.auth {
            if h.is_empty() || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(ProfileConfigError {
                    field: "auth.header".into(),
                    reason: format!("{h:?} is not a header name"),
                });
            }
        }
        Ok(())
    }
}

/// Facts of one upgrade request a dialect may need.
#[derive(Debug, Clone, Copy)]
pub struct UpgradeInfo<'a> {
    /// `host[:port]` of the request URI.
    pub authority: &'a str,
    /// Path and query of the request URI.
    pub path_and_query: &'a str,
    /// The destination's token, if any.
    pub token: Option<&'a str>,
    /// Seconds since the Unix epoch (signatures carry it).
    pub unix_now: u64,
    /// 16 random bytes from the shell (session ids, signature nonces).
    pub nonce: [u8; 16],
}

/// What goes into the HTTP upgrade request besides the RFC 6455 headers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Upgrade {
    /// `Sec-WebSocket-Protocol` to offer; the server must echo it.
    pub subprotocol: Option<&'static str>,
    /// Further headers (name, value), in order.
    pub headers: Vec<(String, String)>,
}

/// What a server frame meant to the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerSignal {
    /// Allowed and needs no action.
    Nothing,
    /// The server reported an error (counted and logged, rate-limited); the connection stays.
    Error(ErrorMsg),
    /// The server accepted the call's streams (only dialects whose
    /// [`Profile::awaits_acceptance`] is true).
    Accepted,
    /// The server refused or ended the session in the dialect's own words; the shell closes
    /// the connection and the fork fails or reconnects as for a server close.
    Refused(String),
}

impl Profile {
    /// Whether the server confirms a session (AudioHook's `opened`) before the fork may be
    /// reported STARTED. For the others, the `start`/metadata message going out on an open
    /// connection is the confirmation.
    pub fn awaits_acceptance(self) -> bool {
        matches!(self, Profile::Audiohook)
    }
}

/// A dialect's translator for one connection. See the module docs.
#[derive(Debug)]
pub struct Dialect {
    inner: Inner,
    config: ProfileConfig,
}

#[derive(Debug)]
enum Inner {
    Xdpfork,
}

impl Dialect {
    /// A translator for a new connection to a destination configured with `config`.
    pub fn new(config: &ProfileConfig) -> Result<Dialect, ProfileConfigError> {
        config.validate()?;
        let inner = match config.profile {
            Profile::Xdpfork => Inner::Xdpfork,
            other => {
                return Err(ProfileConfigError {
                    field: "profile".into(),
                    reason: format!("{other} is not available in this build"),
                })
            }
        };
        Ok(Dialect {
            inner,
            config: config.clone(),
        })
    }

    /// The dialect spoken.
    pub fn profile(&self) -> Profile {
        self.config.profile
    }

    /// Subprotocol and headers of the upgrade request.
    pub fn upgrade(&self, info: &UpgradeInfo<'_>) -> Upgrade {
        let mut headers = self.config.headers.clone();
        if let Some(token) = info.token {
            match &self.config.auth {
                AuthScheme::Bearer => {
                    headers.push(("Authorization".into(), format!("Bearer {token}")))
                }
                AuthScheme::Token => {
                    headers.push(("Authorization".into(), format!("Token {token}")))
                }
                AuthScheme::Header(h) => headers.push((h.clone(), token.to_owned())),
            }
        }
        match self.inner {
            Inner::Xdpfork => Upgrade {
                subprotocol: Some(SUBPROTOCOL),
                headers,
            },
        }
    }

    /// One control message of the service, in order.
    pub fn on_control(&mut self, _now: Instant, msg: &Control, out: &mut Vec<WireFrame>) {
        match self.inner {
            Inner::Xdpfork => out.push(WireFrame::Text(msg.to_json())),
        }
    }

    /// One audio frame of the service (16-byte header and G.711 payload, docs/speech-protocol.md
    /// §3). Taken by value so our own dialect sends it without a copy.
    pub fn on_audio(&mut self, _now: Instant, frame: Vec<u8>, out: &mut Vec<WireFrame>) {
        match self.inner {
            Inner::Xdpfork => out.push(WireFrame::Binary(frame)),
        }
    }

    /// End of a batch of service messages (dialects that announce a call once, with all its
    /// streams, do it here).
    pub fn flush(&mut self, _now: Instant, _out: &mut Vec<WireFrame>) {
        match self.inner {
            Inner::Xdpfork => {}
        }
    }

    /// One text frame from the server.
    pub fn on_server_text(
        &mut self,
        _now: Instant,
        text: &str,
        _out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation> {
        match self.inner {
            Inner::Xdpfork => check_server_text(text).map(ServerSignal::Error),
        }
    }

    /// One binary frame from the server.
    pub fn on_server_binary(
        &mut self,
        _now: Instant,
        _data: &[u8],
        _out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation> {
        match self.inner {
            Inner::Xdpfork => Err(ServerViolation::BinaryFrame),
        }
    }

    /// When [`Dialect::on_timeout`] wants to run next (keep-alives).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.inner {
            Inner::Xdpfork => None,
        }
    }

    /// A due timer.
    pub fn on_timeout(&mut self, _now: Instant, _out: &mut Vec<WireFrame>) {
        match self.inner {
            Inner::Xdpfork => {}
        }
    }

    /// The connection is about to be closed by us: the dialect's goodbye, if it has one.
    pub fn on_local_close(&mut self, _now: Instant, _out: &mut Vec<WireFrame>) {
        match self.inner {
            Inner::Xdpfork => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_str_and_serde() {
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>(), Ok(p));
            let json = serde_json::to_string(&p).expect("json");
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<Profile>(&json).expect("parse"), p);
        }
        assert_eq!(
            "Twilio".parse::<Profile>(),
            Err(UnknownProfile("Twilio".into()))
        );
    }

    #[test]
    fn only_xdpfork_multiplexes() {
        let m: Vec<_> = Profile::ALL
            .into_iter()
            .filter(|p| p.multiplexes_calls())
            .collect();
        assert_eq!(m, vec![Profile::Xdpfork]);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn xdpfork_dialect_passes_frames_through_and_offers_the_subprotocol() {
        let cfg = ProfileConfig::default();
        let mut d = Dialect::new(&cfg).expect("dialect");
        let up = d.upgrade(&UpgradeInfo {
            authority: "asr:9000",
            path_and_query: "/fork",
            token: Some("t0k"),
            unix_now: 0,
            nonce: [0; 16],
        });
        assert_eq!(up.subprotocol, Some(SUBPROTOCOL));
        assert_eq!(
            up.headers,
            vec![("Authorization".to_owned(), "Bearer t0k".to_owned())]
        );
        let now = Instant::now();
        let mut out = Vec::new();
        let stop = Control::Stop(crate::Stop {
            stream_id: 3,
            reason: crate::StopReason::Request,
        });
        d.on_control(now, &stop, &mut out);
        d.on_audio(now, vec![1, 2, 3], &mut out);
        d.flush(now, &mut out);
        assert_eq!(
            out,
            vec![
                WireFrame::Text(stop.to_json()),
                WireFrame::Binary(vec![1, 2, 3])
            ]
        );
        assert_eq!(
            d.on_server_binary(now, &[0], &mut out),
            Err(ServerViolation::BinaryFrame)
        );
        assert!(matches!(
            d.on_server_text(
                now,
                r#"{"type":"error","code":"x","message":"y"}"#,
                &mut out
            ),
            Ok(ServerSignal::Error(_))
        ));
    }

    #[test]
    fn token_schemes_and_bad_headers() {
        let info = UpgradeInfo {
            authority: "a",
            path_and_query: "/",
            token: Some("k"),
            unix_now: 0,
            nonce: [0; 16],
        };
        for (auth, want) in [
            (AuthScheme::Token, ("Authorization", "Token k")),
            (AuthScheme::Header("X-API-KEY".into()), ("X-API-KEY", "k")),
        ] {
            let cfg = ProfileConfig {
                auth,
                ..ProfileConfig::default()
            };
            let up = Dialect::new(&cfg).expect("dialect").upgrade(&info);
            assert_eq!(up.headers, vec![(want.0.to_owned(), want.1.to_owned())]);
        }
        let bad = ProfileConfig {
            headers: vec![("Bad Name".into(), "v".into())],
            ..ProfileConfig::default()
        };
        assert_eq!(Dialect::new(&bad).expect_err("refused").field, "headers[0]");
    }
}
