//! Per-destination dialect settings: what `[[speech_server]]` (or a fork request) may say about
//! a profile, their defaults per profile, and the checks that name the offending field.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::Profile;

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
    /// `Authorization: Basic <base64(token)>` with a `user:password` token (RFC 7617; jambonz
    /// `listen` servers protected by `wsAuth`).
    Basic,
}

/// Sample encoding of the audio a dialect sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioEncoding {
    /// G.711 µ-law, one byte per sample.
    Ulaw,
    /// G.711 A-law, one byte per sample.
    Alaw,
    /// 16-bit signed linear PCM, little-endian.
    L16,
}

impl AudioEncoding {
    /// Config name.
    pub fn as_str(self) -> &'static str {
        match self {
            AudioEncoding::Ulaw => "ulaw",
            AudioEncoding::Alaw => "alaw",
            AudioEncoding::L16 => "l16",
        }
    }

    /// Bytes per sample and channel.
    pub fn sample_bytes(self) -> usize {
        match self {
            AudioEncoding::Ulaw | AudioEncoding::Alaw => 1,
            AudioEncoding::L16 => 2,
        }
    }
}

/// Which parties a connection carries, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Each party in its own message stream (Twilio `inbound` = caller, `outbound` = callee).
    PerTrack,
    /// The caller only, one channel.
    MonoCaller,
    /// The callee only, one channel.
    MonoCallee,
    /// Two interleaved channels: caller first (left), callee second (right).
    Stereo,
    /// One channel, the saturating sum of both parties.
    Mixed,
}

impl Layout {
    /// Config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::PerTrack => "per-track",
            Layout::MonoCaller => "mono-caller",
            Layout::MonoCallee => "mono-callee",
            Layout::Stereo => "stereo",
            Layout::Mixed => "mixed",
        }
    }

    /// Channels of one binary audio frame (a per-track message carries one).
    pub fn channels(self) -> usize {
        match self {
            Layout::Stereo => 2,
            _ => 1,
        }
    }
}

/// The audio a connection sends, resolved from [`ProfileConfig`] and the profile's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AudioFormat {
    /// Sample encoding.
    pub encoding: AudioEncoding,
    /// Samples per second and channel: 8000 or 16000.
    pub rate: u32,
    /// Parties and channels.
    pub layout: Layout,
}

/// What each profile accepts; the first entry of each list is the default.
struct Allowed {
    encodings: &'static [AudioEncoding],
    rates: &'static [u32],
    layouts: &'static [Layout],
}

fn allowed(profile: Profile) -> Option<Allowed> {
    use AudioEncoding::*;
    use Layout::*;
    match profile {
        // Our own protocol forwards the RTP payload as it is.
        Profile::Xdpfork => None,
        // Twilio Media Streams: "audio/x-mulaw", 8000 Hz, 1 channel per track.
        Profile::Twilio => Some(Allowed {
            encodings: &[Ulaw],
            rates: &[8000],
            layouts: &[PerTrack, MonoCaller, MonoCallee],
        }),
        // AudioHook v2: PCMU at 8000 Hz, stereo (external, internal) or one channel.
        Profile::Audiohook => Some(Allowed {
            encodings: &[Ulaw],
            rates: &[8000],
            layouts: &[Stereo, MonoCaller, MonoCallee],
        }),
        // jambonz `listen`: 16-bit PCM, mixType stereo / mono (caller) / mixed.
        Profile::Jambonz => Some(Allowed {
            encodings: &[L16],
            rates: &[8000, 16000],
            layouts: &[Stereo, MonoCaller, Mixed],
        }),
        Profile::Raw => Some(Allowed {
            encodings: &[Ulaw, Alaw, L16],
            rates: &[8000, 16000],
            layouts: &[Stereo, MonoCaller, MonoCallee, Mixed],
        }),
    }
}

/// Per-destination dialect settings (`[[speech_server]]` in fork-agent's config).
///
/// The profile-specific fields are read only by their profile and ignored by the others, so
/// one destination entry can be overridden to another profile by a fork request.
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
    /// Sample encoding sent (`ulaw`, `alaw`, `l16`); default per profile (docs/speech-protocol.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<AudioEncoding>,
    /// Sample rate sent, 8000 or 16000; default 8000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    /// Parties and channels sent (`per-track`, `mono-caller`, `mono-callee`, `stereo`,
    /// `mixed`); default per profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// twilio: the `accountSid` of `start` and `stop` (`AC` + 32 lowercase hex digits);
    /// default `AC` + 32 zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_sid: Option<String>,
    /// audiohook: the organization UUID (`Audiohook-Organization-Id`, `open.organizationId`);
    /// default the nil UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    /// audiohook: the `X-API-KEY`; without it the destination's token is the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// audiohook: the base64 client secret; when set, the upgrade carries an HTTP message
    /// signature (HMAC-SHA256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// audiohook: milliseconds between client `ping`s, 1000–60000; default 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_interval_ms: Option<u64>,
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

fn bad(field: &str, reason: impl Into<String>) -> ProfileConfigError {
    ProfileConfigError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Default AudioHook client ping interval (the reference client's `DEFAULT_PING_INTERVAL`).
pub const DEFAULT_PING_INTERVAL_MS: u64 = 5000;

/// Default Twilio account SID: no account.
pub const DEFAULT_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";

/// The nil UUID (RFC 9562 §5.9), AudioHook's "no organization".
pub const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Whether `s` is a UUID in its 8-4-4-4-12 hex text form.
pub(crate) fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn printable_ascii(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() || c == ' ')
}

impl ProfileConfig {
    /// Checks every setting; the error names the field.
    pub fn validate(&self) -> Result<(), ProfileConfigError> {
        for (i, (name, value)) in self.headers.iter().enumerate() {
            let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(token_char) {
                return Err(bad(
                    &format!("headers[{i}]"),
                    format!("{name:?} is not an HTTP header name (RFC 9110 §5.1)"),
                ));
            }
            if value.chars().any(|c| c.is_control() || !c.is_ascii()) {
                return Err(bad(
                    &format!("headers[{i}]"),
                    "value must be printable ASCII",
                ));
            }
        }
        if let AuthScheme::Header(h) = &self.auth {
            if h.is_empty() || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(bad("auth.header", format!("{h:?} is not a header name")));
            }
        }
        self.audio_format()?;
        match self.profile {
            Profile::Twilio => self.validate_twilio(),
            Profile::Audiohook => self.validate_audiohook(),
            _ => Ok(()),
        }
    }

    fn validate_twilio(&self) -> Result<(), ProfileConfigError> {
        if let Some(sid) = &self.account_sid {
            let ok = sid.len() == 34
                && sid.starts_with("AC")
                && sid[2..]
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
            if !ok {
                return Err(bad(
                    "account_sid",
                    format!("{sid:?} is not a Twilio account SID (AC + 32 lowercase hex digits)"),
                ));
            }
        }
        Ok(())
    }

    fn validate_audiohook(&self) -> Result<(), ProfileConfigError> {
        if let Some(org) = &self.organization_id {
            if !is_uuid(org) {
                return Err(bad(
                    "organization_id",
                    format!("{org:?} is not a UUID (8-4-4-4-12 hex digits)"),
                ));
            }
        }
        if let Some(key) = &self.api_key {
            if !printable_ascii(key) {
                return Err(bad("api_key", "must be printable ASCII, not empty"));
            }
        }
        if self.client_secret.is_some() {
            self.client_secret_bytes()?;
        }
        if let Some(ms) = self.ping_interval_ms {
            if !(1000..=60_000).contains(&ms) {
                return Err(bad(
                    "ping_interval_ms",
                    format!("{ms} is outside 1000..=60000"),
                ));
            }
        }
        Ok(())
    }

    /// The decoded AudioHook client secret, if one is set.
    pub(crate) fn client_secret_bytes(&self) -> Result<Option<Vec<u8>>, ProfileConfigError> {
        let Some(secret) = &self.client_secret else {
            return Ok(None);
        };
        match base64::engine::general_purpose::STANDARD.decode(secret.trim()) {
            Ok(bytes) if !bytes.is_empty() => Ok(Some(bytes)),
            Ok(_) => Err(bad("client_secret", "is empty")),
            Err(e) => Err(bad("client_secret", format!("is not base64 ({e})"))),
        }
    }

    /// The audio this configuration sends: `None` for xdpfork (it forwards RTP payloads as they
    /// are and takes no audio settings), else the settings or the profile's defaults.
    pub fn audio_format(&self) -> Result<Option<AudioFormat>, ProfileConfigError> {
        let Some(allowed) = allowed(self.profile) else {
            for (field, set) in [
                ("encoding", self.encoding.is_some()),
                ("rate", self.rate.is_some()),
                ("layout", self.layout.is_some()),
            ] {
                if set {
                    return Err(bad(
                        field,
                        format!(
                            "profile {} forwards RTP payloads as they are; remove it",
                            self.profile
                        ),
                    ));
                }
            }
            return Ok(None);
        };
        let names = |v: Vec<String>| v.join(", ");
        let encoding = self.encoding.unwrap_or(allowed.encodings[0]);
        if !allowed.encodings.contains(&encoding) {
            return Err(bad(
                "encoding",
                format!(
                    "{} is not spoken by profile {} (expected {})",
                    encoding.as_str(),
                    self.profile,
                    names(
                        allowed
                            .encodings
                            .iter()
                            .map(|e| e.as_str().to_owned())
                            .collect()
                    )
                ),
            ));
        }
        let rate = self.rate.unwrap_or(allowed.rates[0]);
        if !allowed.rates.contains(&rate) {
            return Err(bad(
                "rate",
                format!(
                    "{rate} Hz is not spoken by profile {} (expected {})",
                    self.profile,
                    names(allowed.rates.iter().map(u32::to_string).collect())
                ),
            ));
        }
        let layout = self.layout.unwrap_or(allowed.layouts[0]);
        if !allowed.layouts.contains(&layout) {
            return Err(bad(
                "layout",
                format!(
                    "{} is not spoken by profile {} (expected {})",
                    layout.as_str(),
                    self.profile,
                    names(
                        allowed
                            .layouts
                            .iter()
                            .map(|l| l.as_str().to_owned())
                            .collect()
                    )
                ),
            ));
        }
        Ok(Some(AudioFormat {
            encoding,
            rate,
            layout,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(profile: Profile) -> ProfileConfig {
        ProfileConfig {
            profile,
            ..ProfileConfig::default()
        }
    }

    #[test]
    fn defaults_per_profile() {
        let f = |p| cfg(p).audio_format().expect("valid");
        assert_eq!(f(Profile::Xdpfork), None);
        let want = |encoding, rate, layout| {
            Some(AudioFormat {
                encoding,
                rate,
                layout,
            })
        };
        use AudioEncoding::*;
        assert_eq!(f(Profile::Twilio), want(Ulaw, 8000, Layout::PerTrack));
        assert_eq!(f(Profile::Audiohook), want(Ulaw, 8000, Layout::Stereo));
        assert_eq!(f(Profile::Jambonz), want(L16, 8000, Layout::Stereo));
        assert_eq!(f(Profile::Raw), want(Ulaw, 8000, Layout::Stereo));
    }

    #[test]
    fn each_bad_setting_names_its_field() {
        let cases: Vec<(ProfileConfig, &str)> = vec![
            (
                ProfileConfig {
                    encoding: Some(AudioEncoding::L16),
                    ..cfg(Profile::Xdpfork)
                },
                "encoding",
            ),
            (
                ProfileConfig {
                    encoding: Some(AudioEncoding::Alaw),
                    ..cfg(Profile::Twilio)
                },
                "encoding",
            ),
            (
                ProfileConfig {
                    rate: Some(16000),
                    ..cfg(Profile::Audiohook)
                },
                "rate",
            ),
            (
                ProfileConfig {
                    rate: Some(44100),
                    ..cfg(Profile::Raw)
                },
                "rate",
            ),
            (
                ProfileConfig {
                    layout: Some(Layout::Mixed),
                    ..cfg(Profile::Audiohook)
                },
                "layout",
            ),
            (
                ProfileConfig {
                    layout: Some(Layout::MonoCallee),
                    ..cfg(Profile::Jambonz)
                },
                "layout",
            ),
            (
                ProfileConfig {
                    layout: Some(Layout::PerTrack),
                    ..cfg(Profile::Raw)
                },
                "layout",
            ),
            (
                ProfileConfig {
                    account_sid: Some("AC123".into()),
                    ..cfg(Profile::Twilio)
                },
                "account_sid",
            ),
            (
                ProfileConfig {
                    account_sid: Some(format!("AC{}", "F".repeat(32))),
                    ..cfg(Profile::Twilio)
                },
                "account_sid",
            ),
            (
                ProfileConfig {
                    organization_id: Some("not-a-uuid".into()),
                    ..cfg(Profile::Audiohook)
                },
                "organization_id",
            ),
            (
                ProfileConfig {
                    api_key: Some("tab\there".into()),
                    ..cfg(Profile::Audiohook)
                },
                "api_key",
            ),
            (
                ProfileConfig {
                    client_secret: Some("***".into()),
                    ..cfg(Profile::Audiohook)
                },
                "client_secret",
            ),
            (
                ProfileConfig {
                    ping_interval_ms: Some(10),
                    ..cfg(Profile::Audiohook)
                },
                "ping_interval_ms",
            ),
        ];
        for (c, field) in cases {
            assert_eq!(c.validate().expect_err("refused").field, field, "{c:?}");
        }
    }

    #[test]
    fn profile_specific_fields_are_ignored_by_other_profiles() {
        let c = ProfileConfig {
            account_sid: Some("bogus".into()),
            organization_id: Some("bogus".into()),
            ..cfg(Profile::Raw)
        };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn toml_names() {
        let c: ProfileConfig = serde_json::from_value(serde_json::json!({
            "profile": "raw", "encoding": "l16", "rate": 16000, "layout": "mono-callee",
            "auth": "basic"
        }))
        .expect("parse");
        assert_eq!(
            c.audio_format().expect("valid"),
            Some(AudioFormat {
                encoding: AudioEncoding::L16,
                rate: 16000,
                layout: Layout::MonoCallee
            })
        );
        assert_eq!(c.auth, AuthScheme::Basic);
        let unknown = serde_json::from_value::<ProfileConfig>(serde_json::json!({"rat": 8000}));
        assert!(unknown.is_err());
    }
}
