//! Speech-server protocol profiles: which WebSocket dialect a destination speaks.
//!
//! A contact center does not write a speech server for us; it runs one that already speaks a
//! published dialect. Each destination (a `[[speech_server]]` entry, or a fork request naming a
//! profile) picks one [`Profile`]. docs/speech-protocol.md has one section per profile with its
//! exact messages.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
}
