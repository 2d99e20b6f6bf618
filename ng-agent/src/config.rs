//! ng-agent's TOML configuration (docs/ng-agent.md): parsed and validated at start, every
//! problem reported at once and naming its field (`interface[1].address: ...`).
//!
//! Input: the file text ([`Settings::from_toml`]). Output: [`Settings`] (the engine's
//! [`EngineConfig`] and the shell's own settings) or a [`ConfigError`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use media_anchor::port_pool::parse_range;
use serde::Deserialize;

use crate::core::bencode;
use crate::core::engine::{EngineConfig, Interface};

/// Default control socket of fork-agent (docs/control-api.md).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/xdpfork/fork-agent.sock";

/// Default `state.dir`: the call journal lives here (the unit's `StateDirectory=`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xdpfork/ng-agent";

/// The largest UDP payload: an ng message never needs more (rtpengine's own limit is lower).
pub const MAX_MESSAGE_LIMIT: usize = 65_507;

/// Problems found in a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not valid TOML or not the expected shape (serde names the key).
    #[error("{0}")]
    Syntax(#[from] toml::de::Error),
    /// One line per invalid field: `field: problem`.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    ng: RawNg,
    media: RawMedia,
    #[serde(rename = "interface")]
    interfaces: Vec<RawInterface>,
    fork_agent: RawForkAgent,
    #[serde(default)]
    log: daemon_ops::logging::LogSection,
    #[serde(default)]
    metrics: daemon_ops::metrics::MetricsSection,
    #[serde(default)]
    state: RawState,
    webrtc: Option<RawWebrtc>,
}

/// `[state]`: the restart journal (docs/ng-agent.md "Restart journal").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default = "default_state_dir")]
    dir: String,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            dir: default_state_dir(),
        }
    }
}

fn default_state_dir() -> String {
    DEFAULT_STATE_DIR.into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebrtc {
    gateway_netns: PathBuf,
    gateway_address: String,
    kernel_address: String,
    #[serde(default = "default_early_ms")]
    early_audio_ms: i64,
    #[serde(default = "default_early_packets")]
    early_audio_packets: i64,
}

fn default_early_ms() -> i64 {
    500
}
fn default_early_packets() -> i64 {
    25
}

/// Browser bridging settings (`[webrtc]`, docs/webrtc.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebrtcSettings {
    /// The gateway peer's network namespace (a file such as `/run/netns/xdpfork-gw`).
    pub gateway_netns: PathBuf,
    /// The gateway peer's address inside it.
    pub gateway_address: IpAddr,
    /// The host end of the gateway veth (one of fork-agent's `[dataplane] interfaces`).
    pub kernel_address: IpAddr,
    /// Early audio held before DTLS is up.
    pub early_audio: webrtc_bridge::EarlyAudio,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNg {
    listen: String,
    #[serde(default = "default_max_message")]
    max_message_bytes: i64,
    #[serde(default = "default_delete_delay")]
    delete_delay_secs: i64,
    #[serde(default = "default_max_calls")]
    max_calls: i64,
    #[serde(default = "default_rate")]
    requests_per_sec: i64,
    #[serde(default = "default_burst")]
    request_burst: i64,
}

fn default_max_message() -> i64 {
    MAX_MESSAGE_LIMIT as i64
}
fn default_delete_delay() -> i64 {
    30
}
fn default_max_calls() -> i64 {
    10_000
}
fn default_rate() -> i64 {
    1000
}
fn default_burst() -> i64 {
    2000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMedia {
    ports: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: String,
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForkAgent {
    #[serde(default = "default_socket")]
    socket: PathBuf,
    speech_server: String,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// UDP address the ng protocol is served on.
    pub listen: SocketAddr,
    /// fork-agent's control socket.
    pub control_socket: PathBuf,
    /// Directory of the call journal; `None` keeps none (`state.dir = ""`).
    pub state_dir: Option<PathBuf>,
    /// The engine's settings.
    /// The engine's settings (`engine.webrtc` is filled by the shell, which owns the
    /// certificate).
    pub engine: EngineConfig,
    /// `[log] level`, re-applied on SIGHUP (the only section that reloads).
    pub log: daemon_ops::logging::LogSection,
    /// `[metrics] listen`: the Prometheus endpoint, if on (127.0.0.1:9467 by default).
    pub metrics_listen: Option<SocketAddr>,
    /// `[webrtc]`, when browsers are bridged.
    pub webrtc: Option<WebrtcSettings>,
}

fn ranged(errs: &mut Vec<String>, field: &str, v: i64, lo: i64, hi: i64) -> i64 {
    if !(lo..=hi).contains(&v) {
        errs.push(format!("{field}: {v} is outside {lo}-{hi}"));
    }
    v.clamp(lo, hi)
}

impl Settings {
    /// Parses and validates `text`.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        let mut errs = Vec::new();
        let listen = raw
            .ng
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| errs.push("ng.listen: expected ip:port, e.g. 127.0.0.1:22222".into()))
            .ok();
        let max_message = ranged(
            &mut errs,
            "ng.max_message_bytes",
            raw.ng.max_message_bytes,
            512,
            MAX_MESSAGE_LIMIT as i64,
        );
        let delete_delay = ranged(
            &mut errs,
            "ng.delete_delay_secs",
            raw.ng.delete_delay_secs,
            0,
            3600,
        );
        let max_calls = ranged(&mut errs, "ng.max_calls", raw.ng.max_calls, 1, 1_000_000);
        let rate = ranged(
            &mut errs,
            "ng.requests_per_sec",
            raw.ng.requests_per_sec,
            1,
            1_000_000,
        );
        let burst = ranged(
            &mut errs,
            "ng.request_burst",
            raw.ng.request_burst,
            1,
            1_000_000,
        );
        let ports = parse_range(&raw.media.ports)
            .map_err(|e| errs.push(format!("media.ports: {e}")))
            .ok();
        if raw.interfaces.is_empty() {
            errs.push("interface: at least one [[interface]] is needed".into());
        }
        let mut interfaces = Vec::new();
        for (i, it) in raw.interfaces.iter().enumerate() {
            if it.name.is_empty() || it.name.contains(char::is_whitespace) {
                errs.push(format!("interface[{i}].name: must be a non-empty word"));
            }
            if raw.interfaces[..i].iter().any(|o| o.name == it.name) {
                errs.push(format!("interface[{i}].name: '{}' is used twice", it.name));
            }
            match it.address.parse::<IpAddr>() {
                Ok(a) if !a.is_unspecified() && !a.is_multicast() => interfaces.push(Interface {
                    name: it.name.clone(),
                    address: a,
                }),
                _ => errs.push(format!(
                    "interface[{i}].address: expected this host's unicast IP address"
                )),
            }
        }
        let webrtc = raw
            .webrtc
            .as_ref()
            .and_then(|w| webrtc_settings(&mut errs, w));
        if raw.fork_agent.speech_server.is_empty() {
            errs.push("fork_agent.speech_server: name a [[speech_server]] of fork-agent".into());
        }
        let state_dir = daemon_ops::config_file::state_dir(&raw.state.dir).unwrap_or_else(|e| {
            errs.push(e);
            None
        });
        let (Some(listen), Some(ports), true) = (listen, ports, errs.is_empty()) else {
            return Err(ConfigError::Invalid(errs));
        };
        Ok(Settings {
            log: raw.log,
            metrics_listen: raw.metrics.listen(daemon_ops::metrics::NG_AGENT_DEFAULT),
            listen,
            control_socket: raw.fork_agent.socket,
            state_dir,
            engine: EngineConfig {
                interfaces,
                ports,
                speech_server: raw.fork_agent.speech_server,
                delete_delay: Duration::from_secs(delete_delay as u64),
                max_calls: max_calls as usize,
                max_message_bytes: max_message as usize,
                // rtpengine keeps cookies 30 s; Kamailio retransmits within seconds.
                reply_cache_ttl: Duration::from_secs(30),
                reply_cache_max: 16_384,
                rate_per_sec: rate as u32,
                rate_burst: burst as u32,
                bencode: bencode::Limits::default(),
                webrtc: None,
                seed: 0,
            },
            webrtc,
        })
    }
}

fn webrtc_settings(errs: &mut Vec<String>, w: &RawWebrtc) -> Option<WebrtcSettings> {
    let addr = |errs: &mut Vec<String>, field: &str, v: &str| match v.parse::<IpAddr>() {
        Ok(a) if !a.is_unspecified() && !a.is_multicast() => Some(a),
        _ => {
            errs.push(format!("webrtc.{field}: expected a unicast IP address"));
            None
        }
    };
    let gateway = addr(errs, "gateway_address", &w.gateway_address);
    let kernel = addr(errs, "kernel_address", &w.kernel_address);
    if !w.gateway_netns.is_absolute() {
        errs.push(
            "webrtc.gateway_netns: expected an absolute path such as /run/netns/xdpfork-gw".into(),
        );
    }
    let ms = ranged(errs, "webrtc.early_audio_ms", w.early_audio_ms, 0, 5000);
    let packets = ranged(
        errs,
        "webrtc.early_audio_packets",
        w.early_audio_packets,
        0,
        500,
    );
    let (gateway, kernel) = (gateway?, kernel?);
    if gateway == kernel || gateway.is_ipv4() != kernel.is_ipv4() {
        errs.push(
            "webrtc.gateway_address: must differ from kernel_address and be of its family".into(),
        );
        return None;
    }
    Some(WebrtcSettings {
        gateway_netns: w.gateway_netns.clone(),
        gateway_address: gateway,
        kernel_address: kernel,
        early_audio: webrtc_bridge::EarlyAudio {
            max_packets: packets as usize,
            max_age: Duration::from_millis(ms as u64),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[ng]
listen = "127.0.0.1:22222"

[media]
ports = "30000-30099"

[[interface]]
name = "caller"
address = "10.77.1.1"

[[interface]]
name = "callee"
address = "10.77.2.1"

[fork_agent]
speech_server = "asr"
"#;

    #[test]
    fn good_config_with_defaults() {
        let s = Settings::from_toml(GOOD).expect("valid");
        assert_eq!(s.listen, "127.0.0.1:22222".parse().expect("addr"));
        assert_eq!(s.engine.ports, (30000, 30099));
        assert_eq!(s.engine.interfaces.len(), 2);
        assert_eq!(s.engine.delete_delay, Duration::from_secs(30));
        assert_eq!(s.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(s.state_dir, Some(PathBuf::from(DEFAULT_STATE_DIR)));
        let none = Settings::from_toml(&format!("{GOOD}\n[state]\ndir = \"\"\n")).expect("valid");
        assert_eq!(none.state_dir, None);
    }

    #[test]
    fn webrtc_section_is_validated() {
        let good = format!(
            "{GOOD}\n[webrtc]\ngateway_netns = \"/run/netns/gw\"\ngateway_address = \"10.99.0.2\"\nkernel_address = \"10.99.0.1\"\n"
        );
        let w = Settings::from_toml(&good)
            .expect("valid")
            .webrtc
            .expect("webrtc");
        assert_eq!(w.early_audio, webrtc_bridge::EarlyAudio::default());
        let bad = good
            .replace("/run/netns/gw", "gw")
            .replace("10.99.0.2", "10.99.0.1")
            .replace("[webrtc]", "[webrtc]\nearly_audio_ms = 9000");
        let text = Settings::from_toml(&bad).expect_err("invalid").to_string();
        for field in [
            "webrtc.gateway_netns",
            "webrtc.gateway_address",
            "webrtc.early_audio_ms",
        ] {
            assert!(text.contains(field), "{field}: {text}");
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = GOOD
            .replace("127.0.0.1:22222", "localhost")
            .replace("30000-30099", "30099-30000")
            .replace("10.77.2.1", "0.0.0.0")
            .replace("\"callee\"", "\"caller\"")
            .replace(
                "[ng]\n",
                "[ng]\ndelete_delay_secs = -1\nmax_message_bytes = 10\n",
            )
            .replace("\"asr\"", "\"\"")
            + "\n[state]\ndir = \"relative/dir\"\n";
        let Err(ConfigError::Invalid(errs)) = Settings::from_toml(&bad) else {
            panic!("accepted");
        };
        let text = errs.join("\n");
        for field in [
            "ng.listen",
            "ng.delete_delay_secs",
            "ng.max_message_bytes",
            "media.ports",
            "interface[1].address",
            "interface[1].name",
            "fork_agent.speech_server",
            "state.dir",
        ] {
            assert!(text.contains(field), "{field} not named in:\n{text}");
        }
        let unknown = GOOD.replace("[media]\n", "[media]\nportz = 1\n");
        let e = Settings::from_toml(&unknown)
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("portz"), "{e}");
    }
}
