//! One ng request: the datagram framing (`<cookie> <bencoded dictionary>`) and the dictionary read
//! into a typed [`Request`], every key and flag sorted into supported, ignored (a warning in the
//! reply) or refused (an error naming it). docs/ng-protocol.md is the table this code follows.
//!
//! Inputs: the datagram bytes ([`split_cookie`]), then the decoded dictionary
//! ([`Request::from_dict`]). Output: a [`Request`] or a [`RequestError`] whose text becomes the
//! reply's `error-reason`.
//!
//! Key spelling: rtpengine accepts `-` and ` ` alike in key and flag names (`delete delay`,
//! `delete-delay`); both are folded to `-` here before any lookup.

use std::net::IpAddr;

use super::bencode::Value;
use super::webrtc::{DtlsFlag, AVP, SAVPF};

/// Longest cookie accepted (Kamailio's are `<pid>_<counter>`, rtpengine's own tests use a few
/// bytes; anything this long is not a cookie).
pub const MAX_COOKIE: usize = 64;

/// Why a datagram or dictionary was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No space after the cookie, or an empty, overlong or non-printable cookie.
    #[error("no valid cookie before the first space")]
    BadCookie,
    /// The document is not a dictionary.
    #[error("the message is not a bencoded dictionary")]
    NotDict,
    /// No `command` key, or not a string.
    #[error("no command")]
    NoCommand,
    /// A command this engine does not implement.
    #[error("unknown or unsupported command '{0}'")]
    UnknownCommand(String),
    /// A key the command needs is absent.
    #[error("missing key '{0}'")]
    Missing(&'static str),
    /// A key has a value of the wrong type or form.
    #[error("invalid value for '{key}': {why}")]
    BadValue {
        /// The key (folded spelling).
        key: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A key or flag that asks for something this engine does not do.
    #[error("unsupported: {flag} ({why})")]
    Refused {
        /// The flag as `key=value` or the bare flag.
        flag: String,
        /// What is missing.
        why: &'static str,
    },
}

/// Splits `<cookie> <document>`; the cookie is 1..=[`MAX_COOKIE`] printable ASCII bytes.
pub fn split_cookie(datagram: &[u8]) -> Result<(&[u8], &[u8]), RequestError> {
    let sp = datagram
        .iter()
        .take(MAX_COOKIE + 1)
        .position(|&b| b == b' ')
        .ok_or(RequestError::BadCookie)?;
    let cookie = &datagram[..sp];
    if cookie.is_empty() || !cookie.iter().all(|b| b.is_ascii_graphic()) {
        return Err(RequestError::BadCookie);
    }
    Ok((cookie, &datagram[sp + 1..]))
}

/// The commands of docs/ng-protocol.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `ping` → `pong`.
    Ping,
    /// `offer`: the offerer's SDP, rewritten toward the answerer.
    Offer,
    /// `answer`: the answerer's SDP, rewritten toward the offerer; installs the flows.
    Answer,
    /// `delete`: tears the call down (after `delete delay`).
    Delete,
    /// `query`: one call's state.
    Query,
    /// `list`: call-ids.
    List,
    /// `statistics`: engine counters.
    Statistics,
    /// `start forwarding`: fork the call's audio to a speech server (xdpfork's meaning).
    StartForwarding,
    /// `stop forwarding`: stop that fork.
    StopForwarding,
}

impl Command {
    fn from_name(name: &str) -> Option<Command> {
        Some(match name {
            "ping" => Command::Ping,
            "offer" => Command::Offer,
            "answer" => Command::Answer,
            "delete" => Command::Delete,
            "query" => Command::Query,
            "list" => Command::List,
            "statistics" => Command::Statistics,
            "start forwarding" | "start-forwarding" => Command::StartForwarding,
            "stop forwarding" | "stop-forwarding" => Command::StopForwarding,
            _ => return None,
        })
    }

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Offer => "offer",
            Command::Answer => "answer",
            Command::Delete => "delete",
            Command::Query => "query",
            Command::List => "list",
            Command::Statistics => "statistics",
            Command::StartForwarding => "start forwarding",
            Command::StopForwarding => "stop forwarding",
        }
    }

    /// Commands that name a call.
    fn needs_call_id(self) -> bool {
        !matches!(self, Command::Ping | Command::List | Command::Statistics)
    }
}

/// A request read from its dictionary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The command (`None` only in `Default`).
    pub command: Option<Command>,
    /// SIP Call-ID.
    pub call_id: String,
    /// SIP From tag (of the message that carried the request).
    pub from_tag: String,
    /// SIP To tag.
    pub to_tag: Option<String>,
    /// The SDP body (offer, answer).
    pub sdp: Option<Vec<u8>>,
    /// `replace` contains `origin`: the `o=` address becomes ours.
    pub replace_origin: bool,
    /// `direction` (or `from-interface`/`to-interface`): interface names, sender's side first.
    pub direction: Vec<String>,
    /// `received-from`: the SIP message's source address.
    pub received_from: Option<IpAddr>,
    /// `media-address`: overrides the SDP's connection address.
    pub media_address: Option<IpAddr>,
    /// Flag `SIP-source-address`: use `received-from` instead of the SDP address.
    pub sip_source_address: bool,
    /// Flag `strict-source`: relay only packets from the peer's address and port.
    pub strict_source: bool,
    /// `delete-delay` in seconds (0 = at once).
    pub delete_delay: Option<u32>,
    /// Flag `fatal` (delete): an unknown call is an error, not a warning.
    pub fatal: bool,
    /// `limit` (list).
    pub limit: Option<usize>,
    /// `destination` (start forwarding): a `ws://` / `wss://` URL.
    pub destination: Option<String>,
    /// `auth-token` (start forwarding).
    pub auth_token: Option<String>,
    /// `profile` (start forwarding): the speech dialect.
    pub profile: Option<speech_proto::Profile>,
    /// `call-guid` (start/stop forwarding): the fork's key; default the Call-ID.
    pub call_guid: Option<String>,
    /// `metadata` (start forwarding): passed to the speech server in `start`.
    pub metadata: Option<String>,
    /// `transport-protocol` (the `RTP/AVP` / `UDP/TLS/RTP/SAVPF` flags): what the receiving
    /// side of this SDP gets.
    pub transport_protocol: Option<String>,
    /// `ICE=force`: ICE(-lite) toward the receiving side; the engine refuses it when that side is
    /// not a browser or bridging is off.
    pub ice_force: bool,
    /// `DTLS=passive|active` (`off` leaves the default).
    pub dtls: DtlsFlag,
    /// `DTLS=off`: no DTLS toward the receiving side (refused when it is a browser).
    pub dtls_off: bool,
    /// Keys and flags accepted but without effect, for the reply's `warning`.
    pub ignored: Vec<String>,
}

fn fold(key: &[u8]) -> String {
    String::from_utf8_lossy(key).replace(' ', "-")
}

fn text<'a>(key: &str, v: &'a Value) -> Result<&'a str, RequestError> {
    v.as_str().ok_or_else(|| RequestError::BadValue {
        key: key.into(),
        why: "expected a UTF-8 string",
    })
}

fn list<'a>(key: &str, v: &'a Value) -> Result<Vec<&'a str>, RequestError> {
    match v {
        Value::List(items) => items.iter().map(|i| text(key, i)).collect(),
        // rtpengine also takes a single string where a list is expected.
        Value::Bytes(_) => Ok(vec![text(key, v)?]),
        _ => Err(RequestError::BadValue {
            key: key.into(),
            why: "expected a list of strings",
        }),
    }
}

fn int(key: &str, v: &Value) -> Result<i64, RequestError> {
    match v {
        Value::Int(i) => Ok(*i),
        // Kamailio sends most option values as strings; a decimal string counts.
        Value::Bytes(_) => text(key, v)?
            .trim()
            .parse()
            .map_err(|_| RequestError::BadValue {
                key: key.into(),
                why: "expected an integer",
            }),
        _ => Err(RequestError::BadValue {
            key: key.into(),
            why: "expected an integer",
        }),
    }
}

fn refuse(flag: String, why: &'static str) -> RequestError {
    RequestError::Refused { flag, why }
}

/// Why SDES-keyed SRTP options are refused: only browsers' DTLS-SRTP is bridged.
const NO_SRTP: &str =
    "SDES-keyed SRTP (RTP/SAVP) is not available; browsers (UDP/TLS/RTP/SAVPF, DTLS-SRTP) are bridged to RTP/AVP";
const NO_ICE: &str = "only ICE-lite toward a browser leg (ICE=force) or none (ICE=remove)";
const NO_TURN: &str =
    "the engine has no TURN relay of its own; give the browser a TURN server instead";

impl Request {
    /// Reads a request dictionary (see the module docs for the key spelling).
    pub fn from_dict(doc: &Value) -> Result<Request, RequestError> {
        let Value::Dict(dict) = doc else {
            return Err(RequestError::NotDict);
        };
        let command = dict
            .get(b"command".as_slice())
            .and_then(Value::as_str)
            .ok_or(RequestError::NoCommand)?;
        let command = Command::from_name(command)
            .ok_or_else(|| RequestError::UnknownCommand(command.to_owned()))?;
        let mut r = Request {
            command: Some(command),
            ..Request::default()
        };
        for (raw, v) in dict {
            let key = fold(raw);
            r.apply_key(command, &key, v)?;
        }
        if command.needs_call_id() && r.call_id.is_empty() {
            return Err(RequestError::Missing("call-id"));
        }
        let needs_from_tag = matches!(command, Command::Offer | Command::Answer | Command::Delete);
        if needs_from_tag && r.from_tag.is_empty() {
            return Err(RequestError::Missing("from-tag"));
        }
        if matches!(command, Command::Offer | Command::Answer) && r.sdp.is_none() {
            return Err(RequestError::Missing("sdp"));
        }
        if command == Command::Answer && r.to_tag.is_none() {
            return Err(RequestError::Missing("to-tag"));
        }
        Ok(r)
    }

    fn apply_key(&mut self, command: Command, key: &str, v: &Value) -> Result<(), RequestError> {
        match key {
            "command" => {}
            "call-id" => self.call_id = text(key, v)?.to_owned(),
            "from-tag" => self.from_tag = text(key, v)?.to_owned(),
            "to-tag" => self.to_tag = Some(text(key, v)?.to_owned()).filter(|t| !t.is_empty()),
            "sdp" => match v {
                Value::Bytes(b) => self.sdp = Some(b.clone()),
                _ => {
                    return Err(RequestError::BadValue {
                        key: key.into(),
                        why: "expected a string",
                    })
                }
            },
            "flags" => {
                for f in list(key, v)? {
                    self.apply_flag(&f.replace(' ', "-"))?;
                }
            }
            "replace" => {
                for item in list(key, v)? {
                    match item.replace(' ', "-").as_str() {
                        "origin" => self.replace_origin = true,
                        // The session-level c= always points at this host (media-anchor
                        // rewrites every c= line the audio could fall back to).
                        "session-connection" => {}
                        other => self.ignored.push(format!("replace={other}")),
                    }
                }
            }
            "direction" => self.direction = list(key, v)?.into_iter().map(str::to_owned).collect(),
            "from-interface" | "to-interface" => {
                let name = text(key, v)?.to_owned();
                let at = usize::from(key == "to-interface");
                if self.direction.len() <= at {
                    self.direction.resize(at + 1, String::new());
                }
                self.direction[at] = name;
            }
            "received-from" => {
                let l = list(key, v)?;
                let addr = match l.as_slice() {
                    [_family, addr] => addr.parse().ok(),
                    _ => None,
                };
                self.received_from = Some(addr.ok_or_else(|| RequestError::BadValue {
                    key: key.into(),
                    why: "expected [\"IP4\"|\"IP6\", address]",
                })?);
            }
            "media-address" => {
                self.media_address =
                    Some(text(key, v)?.parse().map_err(|_| RequestError::BadValue {
                        key: key.into(),
                        why: "expected an IP address",
                    })?)
            }
            "ICE" => match text(key, v)? {
                "remove" => {}
                "force" => self.ice_force = true,
                "force-relay" => return Err(refuse("ICE=force-relay".into(), NO_TURN)),
                other => return Err(refuse(format!("ICE={other}"), NO_ICE)),
            },
            "DTLS" => match text(key, v)? {
                "off" | "no" | "disable" => self.dtls_off = true,
                "passive" => self.dtls = DtlsFlag::Passive,
                "active" => self.dtls = DtlsFlag::Active,
                other => return Err(refuse(format!("DTLS={other}"), NO_SRTP)),
            },
            // rtpengine's rtcp-mux-* flags: the browser side always muxes, the plain side is
            // always demultiplexed (RTCP on the next port).
            "rtcp-mux" => {
                for item in list(key, v)? {
                    match item {
                        "demux" | "require" | "accept" => {}
                        other => self.ignored.push(format!("rtcp-mux-{other}")),
                    }
                }
            }
            "SDES" => {
                for item in list(key, v)? {
                    if !matches!(item, "off" | "no" | "disable") {
                        return Err(refuse(format!("SDES={item}"), NO_SRTP));
                    }
                }
            }
            "OSRTP" | "DTLS-fingerprint" | "DTLS-reverse" => {
                return Err(refuse(
                    format!("{key}={}", v.as_str().unwrap_or("…")),
                    NO_SRTP,
                ))
            }
            "ICE-lite" => return Err(refuse(key.to_owned(), NO_ICE)),
            "transport-protocol" => match text(key, v)? {
                p @ (AVP | SAVPF) => self.transport_protocol = Some(p.to_owned()),
                other => return Err(refuse(format!("transport-protocol={other}"), NO_SRTP)),
            },
            "delete-delay" => {
                let d = int(key, v)?;
                self.delete_delay = Some(u32::try_from(d).map_err(|_| RequestError::BadValue {
                    key: key.into(),
                    why: "expected 0 or a positive number of seconds",
                })?);
            }
            "limit" => {
                let n = int(key, v)?;
                self.limit = Some(usize::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
                    RequestError::BadValue {
                        key: key.into(),
                        why: "expected a number greater than 0",
                    }
                })?);
            }
            "destination" if command == Command::StartForwarding => {
                self.destination = Some(text(key, v)?.to_owned())
            }
            "auth-token" if command == Command::StartForwarding => {
                self.auth_token = Some(text(key, v)?.to_owned())
            }
            "profile" if command == Command::StartForwarding => {
                self.profile = Some(text(key, v)?.parse().map_err(|_| RequestError::BadValue {
                    key: key.into(),
                    why: "expected xdpfork, twilio, audiohook, jambonz or raw",
                })?)
            }
            "call-guid" => self.call_guid = Some(text(key, v)?.to_owned()),
            "metadata" => self.metadata = Some(text(key, v)?.to_owned()),
            "record-call" => match text(key, v)? {
                "no" | "off" => {}
                other => {
                    return Err(refuse(
                        format!("record-call={other}"),
                        "recording is not available; fork with 'start forwarding' instead",
                    ))
                }
            },
            "T.38" | "T38" => {
                return Err(refuse(
                    format!("T.38={}", list(key, v)?.join(",")),
                    "only audio is relayed",
                ))
            }
            "codec" => {
                return Err(refuse(
                    "codec".into(),
                    "codec manipulation and transcoding are not available",
                ))
            }
            // Flags left for the daemon to parse (newer modules, `rtpp_flags`): ignoring them
            // would silently drop every flag, so refuse.
            "rtpp-flags" | "rtpp_flags" => {
                return Err(refuse(
                    key.to_owned(),
                    "send the flags parsed into keys (the module's default), not as one string",
                ))
            }
            // Known rtpengine keys that change nothing here; reported in the reply's warning.
            "supports" => {}
            _ => self.ignored.push(key.to_owned()),
        }
        Ok(())
    }

    fn apply_flag(&mut self, flag: &str) -> Result<(), RequestError> {
        match flag {
            // The SDP address is trusted by default, as in rtpengine.
            "trust-address" | "symmetric" => {}
            "SIP-source-address" => self.sip_source_address = true,
            "strict-source" => self.strict_source = true,
            "fatal" => self.fatal = true,
            // Delete tears the whole call down; statistics are cheap and always sent.
            "fast" | "to-tag" | "directional" => {}
            "rtcp-mux-demux" | "rtcp-mux-require" | "rtcp-mux-accept" => {}
            "ICE-force-relay" => return Err(refuse(flag.to_owned(), NO_TURN)),
            "ICE-force" | "trickle-ICE" => return Err(refuse(flag.to_owned(), NO_ICE)),
            "SRTP" | "WebRTC" | "recrypt" | "pad-crypto" | "DTLS" => {
                return Err(refuse(flag.to_owned(), NO_SRTP))
            }
            "always-transcode" | "force-transcoding" | "allow-transcoding" => {
                return Err(refuse(
                    flag.to_owned(),
                    "codec manipulation and transcoding are not available",
                ))
            }
            "record-call" => {
                return Err(refuse(
                    flag.to_owned(),
                    "recording is not available; fork with 'start forwarding' instead",
                ))
            }
            other => self.ignored.push(other.to_owned()),
        }
        Ok(())
    }

    /// The reply's `warning` for ignored keys and flags, if any.
    pub fn warning(&self) -> Option<String> {
        (!self.ignored.is_empty()).then(|| format!("ignored: {}", self.ignored.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(items: Vec<(&str, Value)>) -> Result<Request, RequestError> {
        Request::from_dict(&Value::dict(items))
    }

    fn offer_with(extra: Vec<(&str, Value)>) -> Result<Request, RequestError> {
        let mut items = vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str("c1")),
            ("from-tag", Value::str("ft")),
            ("sdp", Value::str("v=0\r\n")),
        ];
        items.extend(extra);
        req(items)
    }

    #[test]
    fn cookie_framing() {
        assert_eq!(
            split_cookie(b"5323_1 d1:ae"),
            Ok((&b"5323_1"[..], &b"d1:ae"[..]))
        );
        assert_eq!(
            split_cookie(b"d7:command4:pinge"),
            Err(RequestError::BadCookie)
        );
        assert_eq!(split_cookie(b" d1:ae"), Err(RequestError::BadCookie));
        assert_eq!(split_cookie(b"a\x01b d1:ae"), Err(RequestError::BadCookie));
        let long = [vec![b'x'; MAX_COOKIE + 1], b" de".to_vec()].concat();
        assert_eq!(split_cookie(&long), Err(RequestError::BadCookie));
    }

    #[test]
    fn kamailio_offer_keys_are_read() {
        let r = offer_with(vec![
            ("ICE", Value::str("remove")),
            (
                "replace",
                Value::List(vec![Value::str("origin"), Value::str("session-connection")]),
            ),
            ("transport-protocol", Value::str("RTP/AVP")),
            (
                "direction",
                Value::List(vec![Value::str("pub"), Value::str("priv")]),
            ),
            (
                "received-from",
                Value::List(vec![Value::str("IP4"), Value::str("10.77.1.2")]),
            ),
            ("delete delay", Value::Int(0)),
            ("supports", Value::List(vec![Value::str("load limit")])),
            ("via-branch", Value::str("z9hG4bK")),
            (
                "flags",
                Value::List(vec![
                    Value::str("strict source"),
                    Value::str("port latching"),
                ]),
            ),
        ])
        .expect("offer");
        assert_eq!(r.command, Some(Command::Offer));
        assert!(r.replace_origin && r.strict_source);
        assert_eq!(r.direction, ["pub", "priv"]);
        assert_eq!(r.received_from, Some("10.77.1.2".parse().expect("ip")));
        assert_eq!(r.delete_delay, Some(0));
        assert_eq!(
            r.warning().as_deref(),
            Some("ignored: port-latching, via-branch")
        );
    }

    #[test]
    fn every_refused_flag_is_named() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("ICE", Value::str("force-relay"), "ICE=force-relay"),
            ("ICE", Value::str("default"), "ICE=default"),
            ("DTLS", Value::str("fingerprint"), "DTLS=fingerprint"),
            (
                "SDES",
                Value::List(vec![Value::str("only-AES_CM_128_HMAC_SHA1_80")]),
                "SDES=",
            ),
            (
                "transport-protocol",
                Value::str("RTP/SAVP"),
                "transport-protocol=RTP/SAVP",
            ),
            (
                "transport-protocol",
                Value::str("RTP/SAVPF"),
                "transport-protocol=RTP/SAVPF",
            ),
            ("OSRTP", Value::str("offer"), "OSRTP=offer"),
            ("ICE-lite", Value::str("forward"), "ICE-lite"),
            ("record call", Value::str("yes"), "record-call=yes"),
            (
                "T.38",
                Value::List(vec![Value::str("decode")]),
                "T.38=decode",
            ),
            (
                "codec",
                Value::dict([("strip", Value::List(vec![]))]),
                "codec",
            ),
            ("flags", Value::List(vec![Value::str("SRTP")]), "SRTP"),
            (
                "flags",
                Value::List(vec![Value::str("trickle ICE")]),
                "trickle-ICE",
            ),
            (
                "flags",
                Value::List(vec![Value::str("always transcode")]),
                "always-transcode",
            ),
        ];
        for (k, v, named) in cases {
            let e = offer_with(vec![(k, v)]).expect_err(k);
            let text = e.to_string();
            assert!(
                matches!(e, RequestError::Refused { .. }) && text.contains(named),
                "{k}: {text}"
            );
        }
        // The off forms are accepted.
        assert!(offer_with(vec![
            ("DTLS", Value::str("off")),
            ("SDES", Value::str("off"))
        ])
        .is_ok());
    }

    #[test]
    fn webrtc_flags_are_read() {
        let r = offer_with(vec![
            ("ICE", Value::str("force")),
            ("DTLS", Value::str("passive")),
            ("transport protocol", Value::str("UDP/TLS/RTP/SAVPF")),
            (
                "rtcp-mux",
                Value::List(vec![Value::str("demux"), Value::str("offer")]),
            ),
        ])
        .expect("offer");
        assert!(r.ice_force && !r.dtls_off);
        assert_eq!(r.dtls, DtlsFlag::Passive);
        assert_eq!(r.transport_protocol.as_deref(), Some("UDP/TLS/RTP/SAVPF"));
        assert_eq!(r.warning().as_deref(), Some("ignored: rtcp-mux-offer"));
        let r = offer_with(vec![("DTLS", Value::str("active"))]).expect("offer");
        assert_eq!(r.dtls, DtlsFlag::Active);
    }

    #[test]
    fn missing_and_bad_keys() {
        assert_eq!(req(vec![]), Err(RequestError::NoCommand));
        assert_eq!(
            req(vec![("command", Value::str("play media"))]),
            Err(RequestError::UnknownCommand("play media".into()))
        );
        assert_eq!(
            req(vec![
                ("command", Value::str("offer")),
                ("from-tag", Value::str("f"))
            ]),
            Err(RequestError::Missing("call-id"))
        );
        assert_eq!(
            req(vec![
                ("command", Value::str("offer")),
                ("call-id", Value::str("c"))
            ]),
            Err(RequestError::Missing("from-tag"))
        );
        assert_eq!(
            req(vec![
                ("command", Value::str("answer")),
                ("call-id", Value::str("c")),
                ("from-tag", Value::str("f")),
                ("sdp", Value::str("v=0")),
            ]),
            Err(RequestError::Missing("to-tag"))
        );
        assert!(matches!(
            offer_with(vec![(
                "received-from",
                Value::List(vec![Value::str("IP4")])
            )]),
            Err(RequestError::BadValue { .. })
        ));
        assert!(matches!(
            offer_with(vec![("delete-delay", Value::Int(-1))]),
            Err(RequestError::BadValue { .. })
        ));
        assert!(matches!(
            req(vec![
                ("command", Value::str("list")),
                ("limit", Value::Int(0))
            ]),
            Err(RequestError::BadValue { .. })
        ));
        assert_eq!(
            Request::from_dict(&Value::List(vec![])),
            Err(RequestError::NotDict)
        );
        let p = req(vec![("command", Value::str("ping"))]).expect("ping");
        assert_eq!(p.command, Some(Command::Ping));
    }

    #[test]
    fn forwarding_keys() {
        let r = req(vec![
            ("command", Value::str("start forwarding")),
            ("call-id", Value::str("c")),
            ("destination", Value::str("ws://10.77.3.2:9000/x")),
            ("auth-token", Value::str("t0k")),
            ("profile", Value::str("twilio")),
        ])
        .expect("start forwarding");
        assert_eq!(r.command, Some(Command::StartForwarding));
        assert_eq!(r.destination.as_deref(), Some("ws://10.77.3.2:9000/x"));
        assert_eq!(r.profile, Some(speech_proto::Profile::Twilio));
        assert!(matches!(
            req(vec![
                ("command", Value::str("start forwarding")),
                ("call-id", Value::str("c")),
                ("profile", Value::str("mp3")),
            ]),
            Err(RequestError::BadValue { .. })
        ));
    }
}
