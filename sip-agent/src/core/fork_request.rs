//! Fork request JSON: strict parsing, per-call sequence validation and the status report body.
//!
//! Role: the controller (Unified CVP role) asks sip-agent to fork a call's audio by sending a JSON
//! document either as the body of a SIP INFO with `Content-Type: application/x-cisco-record+json`
//! or as the JSON part of a `multipart/mixed` re-INVITE (reference:
//! cube-websocket-media-forking.txt, "Forking Based on SIP Re-INVITE / INFO Message"). The
//! reference names the message types (START, STOP, UPDATE), the failure strings (its table 2) and
//! a few field facts (`call-guid` is mandatory, `"port": 8080` is valid and `"port": "8080"` is
//! not, `"codec": "g729"` is invalid), but not a full schema; the schema here is ours and is
//! documented field by field in docs/fork-request.md.
//!
//! Inputs and call order:
//! 1. [`ForkRequest::parse`] on the body bytes → a typed request or a [`ForkError`].
//! 2. [`ForkSequence::apply`] with the request and the [`Carrier`] it arrived in → the command the
//!    fork layer must run, or a [`ForkError`] for an out-of-sequence request. A request that fails
//!    either step changes no state.
//! 3. [`StatusReport::to_json`] builds the INFO body sent back to the controller.
//!
//! Outputs: [`ForkRequest`] (parsed, then passed by [`ForkSequence::apply`]), and [`ForkError::as_str`], which returns the
//! reference's error string verbatim (these strings are what the controller parses).

use control_api::ReturnMode;
use serde_json::{Map, Value};
use speech_proto::{Channel, Profile};

/// Content type of an INFO body (or multipart part) carrying a fork request or a status report
/// (reference: "CUBE supports the INFO message with content type application/x-cisco-record+json").
pub const CONTENT_TYPE: &str = "application/x-cisco-record+json";

/// Largest body we accept before even trying to parse: a fork request is a few hundred bytes and
/// a bound keeps a hostile controller from making us build a huge JSON tree.
pub const MAX_BODY_LEN: usize = 16 * 1024;

/// Longest call GUID accepted. UCCE GUIDs are 32 hex digits, sometimes with dashes.
pub const MAX_GUID_LEN: usize = 64;

/// Most forks one call may have at once (`[forking] max_per_call`): each is a speech-server
/// stream pair and a copy per packet, so a controller cannot multiply a call without bound.
pub const MAX_FORKS_PER_CALL: usize = 8;

/// Longest `auth-token` accepted (it goes into a WebSocket header, so it has to stay small).
pub const MAX_TOKEN_LEN: usize = 1024;

/// Every error string of the reference's "Error Strings in WebSockets" table (table 2), in its
/// order. These are the `status` values sent back to the controller; [`ForkError::as_str`] is the
/// exact wire text and must never be reworded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ForkError {
    /// The call's negotiated codec, or the `codec` of a request, is not G.711 µ-law or A-law.
    #[error("Codec is not supported")]
    CodecNotSupported,
    /// The WebSocket connection to the speech server could not be established.
    #[error("Connection failed")]
    ConnectionFailed,
    /// Internal processing of the fork failed (for example the data plane refused the flow).
    #[error("Internal error")]
    InternalError,
    /// An idle WebSocket connection was closed, locally, by the server or by an operator command.
    #[error("Connection closed")]
    ConnectionClosed,
    /// The speech server rejected the authentication token.
    #[error("Authentication token invalid")]
    AuthenticationTokenInvalid,
    /// The request body is not valid JSON.
    #[error("JSON parse failure")]
    JsonParseFailure,
    /// A parameter has an unexpected type or value (`"port": "8080"`, `"codec": "g729"`), or the
    /// document has an unknown key or is not a JSON object.
    #[error("Unexpected format or content in JSON")]
    UnexpectedFormat,
    /// A mandatory parameter (such as `call-guid`) is missing.
    #[error("Mandatory parameter missing in JSON")]
    MandatoryParameterMissing,
    /// The request type is not one we support in the place it arrived (for example an unknown
    /// `type`, or UPDATE inside a re-INVITE).
    #[error("Method not supported")]
    MethodNotSupported,
    /// START while a fork is already active on the call (with `[forking] max_per_call` above 1:
    /// while that many are, or one with the same GUID is).
    #[error("Invalid Start Fork Request")]
    InvalidStartForkRequest,
    /// STOP while no fork is active on the call.
    #[error("Invalid Stop Fork Request")]
    InvalidStopForkRequest,
    /// The speech server's host name did not resolve.
    #[error("DNS lookup failed")]
    DnsLookupFailed,
    /// The configured WebSocket proxy's host name did not resolve.
    #[error("Proxy DNS lookup failed")]
    ProxyDnsLookupFailed,
    /// The call uses something forking does not support (SRTP, fax, SIPREC, IPv6 media, a route
    /// without forking enabled, or mixing INFO and re-INVITE requests on one call).
    #[error("Unsupported flow")]
    UnsupportedFlow,
    /// Forking stopped because the controller sent STOP.
    #[error("Forking stopped")]
    ForkingStopped,
    /// The TCP connection to the speech server closed.
    #[error("TCP Connection closed")]
    TcpConnectionClosed,
    /// A high-availability switchover cleared the fork.
    #[error("High availability Switchover")]
    HighAvailabilitySwitchover,
    /// The `call-guid` of an UPDATE (or STOP) differs from the one of the START.
    #[error("GUID Mismatch")]
    GuidMismatch,
    /// UPDATE while no fork is active on the call.
    #[error("Invalid Update Fork Request")]
    InvalidUpdateForkRequest,
}

impl ForkError {
    /// All variants, in the reference table's order.
    pub const ALL: [ForkError; 19] = [
        Self::CodecNotSupported,
        Self::ConnectionFailed,
        Self::InternalError,
        Self::ConnectionClosed,
        Self::AuthenticationTokenInvalid,
        Self::JsonParseFailure,
        Self::UnexpectedFormat,
        Self::MandatoryParameterMissing,
        Self::MethodNotSupported,
        Self::InvalidStartForkRequest,
        Self::InvalidStopForkRequest,
        Self::DnsLookupFailed,
        Self::ProxyDnsLookupFailed,
        Self::UnsupportedFlow,
        Self::ForkingStopped,
        Self::TcpConnectionClosed,
        Self::HighAvailabilitySwitchover,
        Self::GuidMismatch,
        Self::InvalidUpdateForkRequest,
    ];

    /// The reference's error string, verbatim.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CodecNotSupported => "Codec is not supported",
            Self::ConnectionFailed => "Connection failed",
            Self::InternalError => "Internal error",
            Self::ConnectionClosed => "Connection closed",
            Self::AuthenticationTokenInvalid => "Authentication token invalid",
            Self::JsonParseFailure => "JSON parse failure",
            Self::UnexpectedFormat => "Unexpected format or content in JSON",
            Self::MandatoryParameterMissing => "Mandatory parameter missing in JSON",
            Self::MethodNotSupported => "Method not supported",
            Self::InvalidStartForkRequest => "Invalid Start Fork Request",
            Self::InvalidStopForkRequest => "Invalid Stop Fork Request",
            Self::DnsLookupFailed => "DNS lookup failed",
            Self::ProxyDnsLookupFailed => "Proxy DNS lookup failed",
            Self::UnsupportedFlow => "Unsupported flow",
            Self::ForkingStopped => "Forking stopped",
            Self::TcpConnectionClosed => "TCP Connection closed",
            Self::HighAvailabilitySwitchover => "High availability Switchover",
            Self::GuidMismatch => "GUID Mismatch",
            Self::InvalidUpdateForkRequest => "Invalid Update Fork Request",
        }
    }

    /// Inverse of [`ForkError::as_str`] (exact, case-sensitive match), for the fork-agent side and
    /// for tests that read a status report back.
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// The fork message type, the JSON `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForkKind {
    /// Start forking the call's two streams to a speech server.
    Start,
    /// Stop the active fork.
    Stop,
    /// Replace the metadata of the active fork (INFO only, reference "UPDATE Message").
    Update,
}

impl ForkKind {
    /// Wire spelling (`START`, `STOP`, `UPDATE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "START",
            Self::Stop => "STOP",
            Self::Update => "UPDATE",
        }
    }
}

/// The only codecs forking supports (reference: "WebSockets fork SIP-to-SIP calls using
/// G.711ulaw or G.711alaw").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForkCodec {
    /// G.711 µ-law, RTP static payload type 0 (RFC 3551 §6).
    G711Ulaw,
    /// G.711 A-law, RTP static payload type 8 (RFC 3551 §6).
    G711Alaw,
}

impl ForkCodec {
    /// Wire spelling in the request JSON (`g711ulaw`, `g711alaw`, the IOS codec names).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::G711Ulaw => "g711ulaw",
            Self::G711Alaw => "g711alaw",
        }
    }

    /// The static RTP payload type (RFC 3551 §6 table 4).
    pub fn payload_type(self) -> u8 {
        match self {
            Self::G711Ulaw => 0,
            Self::G711Alaw => 8,
        }
    }
}

/// WebSocket scheme of the speech server URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WsScheme {
    /// Plain `ws://`.
    Ws,
    /// `wss://` (the reference allows TLS 1.2 only; fork-agent also 1.3, docs/fork-request.md
    /// "Differences from CUBE").
    Wss,
}

impl WsScheme {
    /// The URL scheme (`ws`, `wss`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }

    /// The port a URL without one means (RFC 6455 §3: 80 for `ws`, 443 for `wss`).
    pub fn default_port(self) -> u16 {
        match self {
            Self::Ws => 80,
            Self::Wss => 443,
        }
    }
}

/// Where the speech server is, after validating `url` and `port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeechServer {
    /// `ws` or `wss`.
    pub scheme: WsScheme,
    /// IPv4 literal or DNS name (IPv6 is not supported for WebSocket forking, reference
    /// "Restrictions"); used for SNI when it is a name.
    pub host: String,
    /// TCP port: `port` field, else the URL's port, else 80/443 by scheme.
    pub port: u16,
    /// Path and query sent in the HTTP GET, starting with `/`.
    pub path: String,
}

impl SpeechServer {
    /// The URL with the effective port folded in, in canonical form: the port is written unless
    /// it is the scheme's default (RFC 3986 §6.2.3), the host is lower case. This is the
    /// `fork_start` destination's `url` (docs/control-api.md).
    pub fn url(&self) -> String {
        let port = if self.port == self.scheme.default_port() {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        format!(
            "{}://{}{port}{}",
            self.scheme.as_str(),
            self.host,
            self.path
        )
    }
}

/// A validated START request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// Call GUID, the key of the fork for its whole life.
    pub call_guid: String,
    /// Speech server to stream to.
    pub server: SpeechServer,
    /// Token presented to the speech server, if any.
    pub auth_token: Option<String>,
    /// The speech protocol dialect to speak (our extension `profile`); `None`: the one of
    /// fork-agent's `[[speech_server]]` entry.
    pub profile: Option<Profile>,
    /// Codec the controller expects; `None` means "whatever G.711 the call negotiated".
    pub codec: Option<ForkCodec>,
    /// Opaque metadata object forwarded to the speech server in the stream start message.
    pub metadata: Option<Map<String, Value>>,
    /// The speech server talks back and is heard by one party (our extension `return-audio`,
    /// inject mode); `None`: it only listens.
    pub return_audio: Option<ReturnAudioRequest>,
}

/// What a START's `return-audio` asks for (our extension): the bot's audio is played to one
/// party of the bridged call, in place of or mixed with the other party's (docs/fork-request.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnAudioRequest {
    /// The party that hears the bot (`to`, default `caller`).
    pub to: Channel,
    /// What that party hears of its peer while the bot talks (`mode`, default `replace`).
    pub mode: ReturnMode,
}

/// A validated fork request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForkRequest {
    /// Start forking.
    Start(StartRequest),
    /// Stop forking.
    Stop {
        /// Call GUID; must match the START's.
        call_guid: String,
    },
    /// Replace metadata.
    Update {
        /// Call GUID; must match the START's.
        call_guid: String,
        /// The new metadata object.
        metadata: Map<String, Value>,
    },
}

/// Keys allowed per type; anything else is "Unexpected format or content in JSON" so that a typo
/// (`"Port"`) is reported instead of silently ignored.
const START_KEYS: &[&str] = &[
    "type",
    "call-guid",
    "url",
    "port",
    "auth-token",
    "codec",
    "metadata",
    "profile",
    "return-audio",
];
/// Keys of a START's `return-audio` object.
const RETURN_AUDIO_KEYS: &[&str] = &["to", "mode"];
const STOP_KEYS: &[&str] = &["type", "call-guid"];
const UPDATE_KEYS: &[&str] = &["type", "call-guid", "metadata"];

impl ForkRequest {
    /// Parses and strictly validates a fork request body.
    ///
    /// Check order (first failure wins, so the reported string is deterministic): size and JSON
    /// syntax → top-level object → `type` → `call-guid` → unknown keys → per-type fields.
    pub fn parse(body: &[u8]) -> Result<Self, ForkError> {
        if body.len() > MAX_BODY_LEN {
            return Err(ForkError::JsonParseFailure);
        }
        let value: Value = serde_json::from_slice(body).map_err(|_| ForkError::JsonParseFailure)?;
        let Value::Object(obj) = value else {
            return Err(ForkError::UnexpectedFormat);
        };
        let kind = match obj.get("type") {
            None => return Err(ForkError::MandatoryParameterMissing),
            Some(Value::String(s)) => match s.as_str() {
                "START" => ForkKind::Start,
                "STOP" => ForkKind::Stop,
                "UPDATE" => ForkKind::Update,
                // PAUSE/RESUME are speech-server messages CUBE generates itself; a controller
                // asking for them, or for anything else, asked for an unsupported method.
                _ => return Err(ForkError::MethodNotSupported),
            },
            Some(_) => return Err(ForkError::UnexpectedFormat),
        };
        let call_guid = match obj.get("call-guid") {
            None => return Err(ForkError::MandatoryParameterMissing),
            Some(Value::String(s)) if valid_guid(s) => s.clone(),
            Some(_) => return Err(ForkError::UnexpectedFormat),
        };
        let allowed = match kind {
            ForkKind::Start => START_KEYS,
            ForkKind::Stop => STOP_KEYS,
            ForkKind::Update => UPDATE_KEYS,
        };
        if obj.keys().any(|k| !allowed.contains(&k.as_str())) {
            return Err(ForkError::UnexpectedFormat);
        }
        match kind {
            ForkKind::Stop => Ok(Self::Stop { call_guid }),
            ForkKind::Update => match obj.get("metadata") {
                None => Err(ForkError::MandatoryParameterMissing),
                Some(Value::Object(m)) => Ok(Self::Update {
                    call_guid,
                    metadata: m.clone(),
                }),
                Some(_) => Err(ForkError::UnexpectedFormat),
            },
            ForkKind::Start => parse_start(&obj, call_guid).map(Self::Start),
        }
    }

    /// The request's type.
    pub fn kind(&self) -> ForkKind {
        match self {
            Self::Start(_) => ForkKind::Start,
            Self::Stop { .. } => ForkKind::Stop,
            Self::Update { .. } => ForkKind::Update,
        }
    }

    /// The request's call GUID.
    pub fn call_guid(&self) -> &str {
        match self {
            Self::Start(s) => &s.call_guid,
            Self::Stop { call_guid } | Self::Update { call_guid, .. } => call_guid,
        }
    }
}

fn valid_guid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_GUID_LEN
        && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn parse_start(obj: &Map<String, Value>, call_guid: String) -> Result<StartRequest, ForkError> {
    let url = match obj.get("url") {
        None => return Err(ForkError::MandatoryParameterMissing),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ForkError::UnexpectedFormat),
    };
    // "port": 8080 is valid, "port": "8080" is not (reference table 2). as_u64 is None for
    // strings, floats and negatives, which is exactly the strictness asked for.
    let port_field = match obj.get("port") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(p @ 1..=65535) => Some(p as u16),
            _ => return Err(ForkError::UnexpectedFormat),
        },
    };
    let server = parse_ws_url(url, port_field)?;
    let auth_token = match obj.get("auth-token") {
        None => None,
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= MAX_TOKEN_LEN
                && s.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Some(s.clone())
        }
        Some(_) => return Err(ForkError::UnexpectedFormat),
    };
    let codec = match obj.get("codec") {
        None => None,
        Some(Value::String(s)) => match s.as_str() {
            "g711ulaw" => Some(ForkCodec::G711Ulaw),
            "g711alaw" => Some(ForkCodec::G711Alaw),
            // The reference lists `"codec": "g729"` under "Unexpected format or content in
            // JSON"; "Codec is not supported" is kept for the codec the call negotiated.
            _ => return Err(ForkError::UnexpectedFormat),
        },
        Some(_) => return Err(ForkError::UnexpectedFormat),
    };
    let metadata = match obj.get("metadata") {
        None => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return Err(ForkError::UnexpectedFormat),
    };
    // Exact lower-case names, like `codec`: `"Twilio"` is a typo to report, not to guess at.
    let profile = match obj.get("profile") {
        None => None,
        Some(Value::String(s)) => Some(s.parse().map_err(|_| ForkError::UnexpectedFormat)?),
        Some(_) => return Err(ForkError::UnexpectedFormat),
    };
    let return_audio = match obj.get("return-audio") {
        None => None,
        Some(Value::Object(ra)) => Some(parse_return_audio(ra)?),
        Some(_) => return Err(ForkError::UnexpectedFormat),
    };
    Ok(StartRequest {
        call_guid,
        server,
        auth_token,
        profile,
        codec,
        metadata,
        return_audio,
    })
}

/// `return-audio`: an object with optional `to` (`caller`/`callee`) and `mode`
/// (`replace`/`mix`), exact lower case like `codec` and `profile`; any other key or value is a
/// typo to report.
fn parse_return_audio(obj: &Map<String, Value>) -> Result<ReturnAudioRequest, ForkError> {
    if obj.keys().any(|k| !RETURN_AUDIO_KEYS.contains(&k.as_str())) {
        return Err(ForkError::UnexpectedFormat);
    }
    let to = one_of(
        obj.get("to"),
        Channel::Caller,
        &[("caller", Channel::Caller), ("callee", Channel::Callee)],
    )?;
    let mode = one_of(
        obj.get("mode"),
        ReturnMode::Replace,
        &[("replace", ReturnMode::Replace), ("mix", ReturnMode::Mix)],
    )?;
    Ok(ReturnAudioRequest { to, mode })
}

/// A string that must be one of `names` exactly; absent: `default`.
fn one_of<T: Copy>(v: Option<&Value>, default: T, names: &[(&str, T)]) -> Result<T, ForkError> {
    match v {
        None => Ok(default),
        Some(Value::String(s)) => names
            .iter()
            .find(|(n, _)| n == s)
            .map(|&(_, t)| t)
            .ok_or(ForkError::UnexpectedFormat),
        Some(_) => Err(ForkError::UnexpectedFormat),
    }
}

/// Parses `ws[s]://host[:port][/path]`. Written by hand because the workspace has no URL crate
/// and the grammar we accept is deliberately narrow: no userinfo, no fragment, no IPv6 literal
/// (WebSocket forking on IPv6 is unsupported, reference "Restrictions").
fn parse_ws_url(url: &str, port_field: Option<u16>) -> Result<SpeechServer, ForkError> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("wss://") {
        (WsScheme::Wss, r)
    } else if let Some(r) = url.strip_prefix("ws://") {
        (WsScheme::Ws, r)
    } else {
        return Err(ForkError::UnexpectedFormat);
    };
    if url.bytes().any(|b| !b.is_ascii_graphic()) || url.contains('#') {
        return Err(ForkError::UnexpectedFormat);
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') || authority.starts_with('[') {
        return Err(ForkError::UnexpectedFormat);
    }
    let (host, url_port) = match authority.rsplit_once(':') {
        // Canonical decimal only, so `:08080` is rejected rather than silently read as 8080.
        Some((h, p)) => match p.parse::<u16>() {
            Ok(n) if n != 0 && n.to_string() == p => (h, Some(n)),
            _ => return Err(ForkError::UnexpectedFormat),
        },
        None => (authority, None),
    };
    if !valid_host(host) {
        return Err(ForkError::UnexpectedFormat);
    }
    let port = match (port_field, url_port) {
        (Some(a), Some(b)) if a != b => return Err(ForkError::UnexpectedFormat),
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => scheme.default_port(),
    };
    Ok(SpeechServer {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
        path,
    })
}

/// An IPv4 dotted quad or an RFC 1123 host name.
fn valid_host(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host.parse::<std::net::Ipv4Addr>().is_ok();
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// Which SIP request carried the fork request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Carrier {
    /// INFO with `application/x-cisco-record+json`.
    Info,
    /// JSON part of a multipart re-INVITE.
    ReInvite,
}

/// Per-call sequence rules for fork requests (reference table 2 rows "Invalid Start/Stop/Update
/// Fork Request" and "GUID Mismatch", and the "Restrictions" and "UPDATE Message" sections).
///
/// CUBE allows one fork per call; with `max_forks` above 1 (our extension, `[forking]
/// max_per_call`) further STARTs with other GUIDs are accepted while forks are active, and
/// STOP/UPDATE name their fork by GUID. `apply` only moves state on success, so a rejected
/// request leaves the call as it was.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ForkSequence {
    /// GUIDs of the active forks, oldest first (journalled as one GUID or `null` while a call
    /// has at most one, as before several forks per call existed).
    #[serde(default, with = "guid_list")]
    active: Vec<String>,
    /// Carrier used by the first accepted request; the reference forbids mixing INFO and
    /// re-INVITE forking in one call.
    carrier: Option<Carrier>,
}

impl ForkSequence {
    /// A call with no fork yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// True while a fork is active (between an accepted START and STOP or [`Self::end`]).
    pub fn is_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// True while the fork `guid` is active.
    pub fn is_active_guid(&self, guid: &str) -> bool {
        self.active.iter().any(|g| g == guid)
    }

    /// Checks `req` against the call's fork state and, if it is in sequence, records it; at
    /// most `max_forks` forks are active at once. The request comes back when it is in
    /// sequence: what the fork layer must carry out.
    pub fn apply(
        &mut self,
        req: ForkRequest,
        carrier: Carrier,
        max_forks: usize,
    ) -> Result<ForkRequest, ForkError> {
        if let Some(c) = self.carrier {
            if c != carrier {
                return Err(ForkError::UnsupportedFlow);
            }
        }
        let cmd = match req {
            ForkRequest::Start(start) => {
                if self.active.len() >= max_forks || self.is_active_guid(&start.call_guid) {
                    return Err(ForkError::InvalidStartForkRequest);
                }
                self.active.push(start.call_guid.clone());
                ForkRequest::Start(start)
            }
            ForkRequest::Stop { call_guid } => {
                if self.active.is_empty() {
                    return Err(ForkError::InvalidStopForkRequest);
                }
                if !self.is_active_guid(&call_guid) {
                    return Err(ForkError::GuidMismatch);
                }
                self.active.retain(|g| *g != call_guid);
                ForkRequest::Stop { call_guid }
            }
            ForkRequest::Update {
                call_guid,
                metadata,
            } => {
                // "The UPDATE message is contained in the JSON body of a SIP INFO message."
                if carrier != Carrier::Info {
                    return Err(ForkError::MethodNotSupported);
                }
                if self.active.is_empty() {
                    return Err(ForkError::InvalidUpdateForkRequest);
                }
                if !self.is_active_guid(&call_guid) {
                    return Err(ForkError::GuidMismatch);
                }
                ForkRequest::Update {
                    call_guid,
                    metadata,
                }
            }
        };
        self.carrier = Some(carrier);
        Ok(cmd)
    }

    /// The fork `guid` ended for a reason other than STOP (it failed, the call ended); a new
    /// START is allowed afterwards.
    pub fn end(&mut self, guid: &str) {
        self.active.retain(|g| g != guid);
    }
}

/// [`ForkSequence::active`] in the call journal: `null` or one GUID for up to one fork (what
/// journals held before several forks per call), a list for more; any of them is read.
mod guid_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Wire {
        One(Option<String>),
        Many(Vec<String>),
    }

    pub fn serialize<S: Serializer>(guids: &[String], s: S) -> Result<S::Ok, S::Error> {
        match guids {
            [] => Wire::One(None).serialize(s),
            [one] => Wire::One(Some(one.clone())).serialize(s),
            many => Wire::Many(many.to_vec()).serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match Wire::deserialize(d)? {
            Wire::One(one) => one.into_iter().collect(),
            Wire::Many(many) => many,
        })
    }
}

/// State announced in a status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForkState {
    /// fork-agent accepted the fork (its streams have channel ids) and a WebSocket connection
    /// was chosen or is being opened (reference: "When a connection is identified, CUBE sends
    /// status information").
    Connecting,
    /// The speech server accepted the stream: the WebSocket is up and the START metadata went
    /// out (fork-agent's `started` event); media is flowing. Again, without `request`, when the
    /// fork is carried again after a lost connection.
    Started,
    /// The connection to the speech server was lost (`status`: `Connection closed` or `TCP
    /// Connection closed`); fork-agent keeps the fork and reconnects. `STARTED` follows when it
    /// is carried again, `ERROR` when fork-agent gives up. Our extension: the reference ends
    /// the fork here.
    Reconnecting,
    /// Forking paused (hold or codec change).
    Paused,
    /// Forking resumed after a pause.
    Resumed,
    /// Metadata updated.
    Updated,
    /// Forking stopped; `status` says why.
    Stopped,
    /// A request failed or the fork failed; `status` is the reference error string.
    Error,
}

impl ForkState {
    /// Wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "CONNECTING",
            Self::Started => "STARTED",
            Self::Reconnecting => "RECONNECTING",
            Self::Paused => "PAUSED",
            Self::Resumed => "RESUMED",
            Self::Updated => "UPDATED",
            Self::Stopped => "STOPPED",
            Self::Error => "ERROR",
        }
    }
}

/// Which party a forked stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Party {
    /// Audio sent by the calling party (the B2BUA's inbound leg).
    Calling,
    /// Audio sent by the called party (the outbound leg).
    Called,
}

impl Party {
    /// Wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Calling => "calling",
            Self::Called => "called",
        }
    }
}

/// One forked stream in a status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    /// Unique channel id of the stream (reference: "Each stream is identified by a unique channel
    /// identifier").
    pub channel_id: u32,
    /// Party the stream carries.
    pub party: Party,
}

/// Body of the INFO sent to the controller. The reference says status goes back "in INFO
/// messages" and lists the error strings, but shows no body; this format is ours (see
/// docs/fork-request.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// GUID of the request being reported on; `None` only when the request was so broken that no
    /// GUID could be read (the key is then omitted).
    pub call_guid: Option<String>,
    /// Type of the request this reports on, when known.
    pub request: Option<ForkKind>,
    /// New fork state.
    pub state: ForkState,
    /// Reference error string for `Error`, `Stopped` and `Reconnecting` states.
    pub status: Option<ForkError>,
    /// Streams of the fork (present from `Connecting` on).
    pub streams: Vec<StreamStatus>,
}

impl StatusReport {
    /// A report for a request that was rejected with `err`.
    pub fn rejected(call_guid: Option<String>, request: Option<ForkKind>, err: ForkError) -> Self {
        Self {
            call_guid,
            request,
            state: ForkState::Error,
            status: Some(err),
            streams: Vec::new(),
        }
    }

    /// Serialises the report (compact JSON, keys in the documented order).
    pub fn to_json(&self) -> Vec<u8> {
        // A serde struct rather than a serde_json::Map: Map is a BTreeMap without the
        // `preserve_order` feature and would sort the keys.
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(rename = "call-guid", skip_serializing_if = "Option::is_none")]
            call_guid: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            request: Option<&'static str>,
            state: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            status: Option<&'static str>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            streams: Vec<WireStream>,
        }
        #[derive(serde::Serialize)]
        struct WireStream {
            #[serde(rename = "channel-id")]
            channel_id: u32,
            party: &'static str,
        }
        let wire = Wire {
            kind: "STATUS",
            call_guid: self.call_guid.as_deref(),
            request: self.request.map(ForkKind::as_str),
            state: self.state.as_str(),
            status: self.status.map(ForkError::as_str),
            streams: self
                .streams
                .iter()
                .map(|s| WireStream {
                    channel_id: s.channel_id,
                    party: s.party.as_str(),
                })
                .collect(),
        };
        // Serialising plain strings and integers cannot fail; an empty object beats a panic if
        // serde_json ever changes that.
        serde_json::to_vec(&wire).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// Best-effort GUID extraction from a body that failed [`ForkRequest::parse`], so the error
/// report can still name the call.
pub fn guid_hint(body: &[u8]) -> Option<String> {
    if body.len() > MAX_BODY_LEN {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    match v.get("call-guid") {
        Some(Value::String(s)) if valid_guid(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
