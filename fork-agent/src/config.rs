//! fork-agent's TOML configuration, validated at start. Every error names the field it is about,
//! so `fork-agent check-config` tells the operator exactly what to fix.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax or type error (the message names line and field).
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("config field `{field}`: {problem}")]
    Invalid { field: String, problem: String },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default, rename = "speech_server")]
    pub speech_servers: Vec<SpeechServerConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Driver (native) XDP: the fast path; required in production.
    Native,
    /// Generic (skb) XDP: works on any device, slower; for testing only.
    Skb,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// bpffs directory for pinned maps and links.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Media interfaces: the relay program is attached to each.
    pub interfaces: Vec<String>,
    /// Name of the fork veth fork-agent creates; its peer is `<name>c`.
    #[serde(default = "default_fork_interface")]
    pub fork_interface: String,
    #[serde(default = "default_mode")]
    pub xdp_mode: XdpAttachMode,
    /// Frames in the AF_XDP UMEM (power of two).
    #[serde(default = "default_umem_frames")]
    pub umem_frames: u32,
    /// Seconds without a packet after which a flow is removed (0 = never).
    #[serde(default)]
    pub flow_idle_timeout_secs: u64,
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from(fork_common::PIN_DIR_DEFAULT)
}
fn default_fork_interface() -> String {
    "xfork0".into()
}
fn default_mode() -> XdpAttachMode {
    XdpAttachMode::Native
}
fn default_umem_frames() -> u32 {
    4096
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Unix socket of the control API (docs/control-api.md).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Where fork state is kept so a restarted agent resumes its streams.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: default_socket(),
            state_dir: default_state_dir(),
        }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/xdpfork/fork-agent.sock")
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/xdpfork")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeechServerConfig {
    pub name: String,
    /// `ws://host:port/path` (wss comes with the TLS work of the fork-agent issue).
    pub url: String,
    /// Frames queued per connection before new audio is dropped (counted).
    #[serde(default = "default_queue")]
    pub queue_frames: usize,
}

fn default_queue() -> usize {
    4096
}

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.dataplane;
        if d.interfaces.is_empty() {
            return Err(invalid(
                "dataplane.interfaces",
                "list at least one media interface",
            ));
        }
        let mut seen = HashSet::new();
        for (i, name) in d.interfaces.iter().enumerate() {
            check_ifname(&format!("dataplane.interfaces[{i}]"), name)?;
            if !seen.insert(name) {
                return Err(invalid(
                    format!("dataplane.interfaces[{i}]"),
                    format!("`{name}` is listed twice"),
                ));
            }
        }
        check_ifname("dataplane.fork_interface", &d.fork_interface)?;
        if d.fork_interface.len() + 1 > IFNAME_MAX {
            return Err(invalid(
                "dataplane.fork_interface",
                format!(
                    "at most {} characters (the peer is named `<name>c`)",
                    IFNAME_MAX - 1
                ),
            ));
        }
        if d.interfaces.contains(&d.fork_interface) {
            return Err(invalid(
                "dataplane.fork_interface",
                "must not be one of dataplane.interfaces",
            ));
        }
        if !d.pin_dir.is_absolute() {
            return Err(invalid(
                "dataplane.pin_dir",
                "must be an absolute path in bpffs",
            ));
        }
        if !d.umem_frames.is_power_of_two() || !(64..=65536).contains(&d.umem_frames) {
            return Err(invalid(
                "dataplane.umem_frames",
                "must be a power of two from 64 to 65536",
            ));
        }
        let mut names = HashSet::new();
        for (i, s) in self.speech_servers.iter().enumerate() {
            let f = |k: &str| format!("speech_server[{i}].{k}");
            if s.name.is_empty() || !names.insert(&s.name) {
                return Err(invalid(f("name"), "must be non-empty and unique"));
            }
            if !s.url.starts_with("ws://") {
                return Err(invalid(f("url"), "must start with ws://"));
            }
            if s.url["ws://".len()..]
                .split('/')
                .next()
                .unwrap_or("")
                .is_empty()
            {
                return Err(invalid(f("url"), "has no host"));
            }
            if !(16..=1_000_000).contains(&s.queue_frames) {
                return Err(invalid(f("queue_frames"), "must be from 16 to 1000000"));
            }
        }
        Ok(())
    }
}

fn check_ifname(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['/', ' ', '\0']) {
        return Err(invalid(
            field,
            format!("`{name}` is not a valid interface name (1-{IFNAME_MAX} characters, no '/' or spaces)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [dataplane]
        interfaces = ["eth0", "eth1"]
        [[speech_server]]
        name = "asr"
        url = "ws://127.0.0.1:9000/stream"
    "#;

    #[test]
    fn good_config_gets_defaults() {
        let c = Config::parse(GOOD).expect("valid");
        assert_eq!(c.dataplane.fork_interface, "xfork0");
        assert_eq!(c.dataplane.xdp_mode, XdpAttachMode::Native);
        assert_eq!(c.speech_servers[0].queue_frames, 4096);
    }

    fn err_of(text: &str) -> String {
        Config::parse(text)
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err_of("[dataplane]\ninterfaces = []").contains("dataplane.interfaces"));
        assert!(err_of("[dataplane]\ninterfaces = [\"a\", \"a\"]").contains("interfaces[1]"));
        assert!(
            err_of("[dataplane]\ninterfaces = [\"a\"]\nfork_interface = \"a\"")
                .contains("dataplane.fork_interface")
        );
        assert!(
            err_of("[dataplane]\ninterfaces = [\"a\"]\numem_frames = 100")
                .contains("dataplane.umem_frames")
        );
        let bad_url = GOOD.replace("ws://127.0.0.1:9000/stream", "http://x");
        assert!(err_of(&bad_url).contains("speech_server[0].url"));
    }

    #[test]
    fn unknown_fields_and_types_are_reported_with_their_name() {
        let e = err_of("[dataplane]\ninterfaces = [\"a\"]\nbogus = 1");
        assert!(e.contains("bogus"), "{e}");
        let e = err_of("[dataplane]\ninterfaces = \"eth0\"");
        assert!(e.contains("interfaces"), "{e}");
    }
}
