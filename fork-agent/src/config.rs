//! fork-agent's TOML configuration, validated at start. Every error names the field it is about,
//! so `fork-agent check-config` tells the operator exactly what to fix.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (daemon-ops' text, shared by every daemon).
    #[error(transparent)]
    Read(#[from] daemon_ops::config_file::ReadError),
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
    #[serde(default)]
    /// `[metrics]`: 127.0.0.1:9464 unless set (docs/operations.md "Metrics").
    pub metrics: daemon_ops::metrics::MetricsSection,
    #[serde(default)]
    pub destinations: DestinationsConfig,
    /// `[log] level`: re-applied on SIGHUP (docs/operations.md "Logs").
    #[serde(default)]
    pub log: daemon_ops::logging::LogSection,
    /// `[return_audio]`: playout of speech servers that talk back (docs/fork-agent.md
    /// "Return audio").
    #[serde(default)]
    pub return_audio: ReturnAudioConfig,
}

/// How a bot's audio is buffered before it is played (core::playout).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnAudioConfig {
    /// Most audio held per call; more is dropped (newest) and counted.
    #[serde(default = "default_max_buffer_ms")]
    pub max_buffer_ms: u32,
    /// Audio held before a talkspurt starts (rides out the bot's own jitter).
    #[serde(default = "default_prebuffer_ms")]
    pub prebuffer_ms: u32,
}

impl Default for ReturnAudioConfig {
    fn default() -> Self {
        Self {
            max_buffer_ms: default_max_buffer_ms(),
            prebuffer_ms: default_prebuffer_ms(),
        }
    }
}

fn default_max_buffer_ms() -> u32 {
    60_000
}
fn default_prebuffer_ms() -> u32 {
    40
}

/// Bounds of `[return_audio]`: at least one frame buffered, at most 10 minutes (4.8 MB per
/// call at 8 kHz); a prebuffer of 0 (play at once) up to 1 s.
const MAX_BUFFER_MS: std::ops::RangeInclusive<u32> = 20..=600_000;
const PREBUFFER_MS: std::ops::RangeInclusive<u32> = 0..=1000;

impl ReturnAudioConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (field, v, range) in [
            (
                "return_audio.max_buffer_ms",
                self.max_buffer_ms,
                MAX_BUFFER_MS,
            ),
            ("return_audio.prebuffer_ms", self.prebuffer_ms, PREBUFFER_MS),
        ] {
            if !range.contains(&v) {
                return Err(invalid(
                    field,
                    format!("{v} is outside {}-{}", range.start(), range.end()),
                ));
            }
        }
        Ok(())
    }
}

/// Which per-request speech destinations a controller may name (docs/fork-agent.md
/// "Destinations"). The configured servers' own URLs are always allowed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationsConfig {
    /// Rules `scheme://host[:port]` (core::destinations); empty: no per-request URL at all.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Per-request destinations (URL, token and profile) with a pool at the same time; a new
    /// one beyond this is refused until an idle one is dropped.
    #[serde(default = "default_max_destinations")]
    pub max_active: usize,
}

impl Default for DestinationsConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            max_active: default_max_destinations(),
        }
    }
}

fn default_max_destinations() -> usize {
    1024
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
    /// Seconds without a packet after which a flow is removed (0 = never); counted from its
    /// install when no packet ever came. Default one hour, safe for calls on hold
    /// (docs/fork-agent.md "Idle flows").
    #[serde(default = "default_flow_idle_timeout")]
    pub flow_idle_timeout_secs: u64,
    /// How forked packets carry their tag to the capture program (docs/maps.md "Fork path").
    /// The environment variable [`FORK_PATH_ENV`] overrides it (CI forces `headroom` with it).
    #[serde(default)]
    pub fork_path: ForkPathSetting,
}

/// Environment variable that overrides `dataplane.fork_path` (same values).
pub const FORK_PATH_ENV: &str = "XDPFORK_FORK_PATH";

/// `dataplane.fork_path`: which program set fork-agent loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForkPathSetting {
    /// Load the metadata programs; if the kernel refuses them, the headroom programs.
    #[default]
    Auto,
    /// Only the metadata programs (fails on kernels that refuse `bpf_xdp_adjust_meta`).
    Metadata,
    /// Only the headroom programs (need nothing optional).
    Headroom,
}

impl ForkPathSetting {
    /// The paths to try, in order: the first whose programs the kernel accepts is used.
    pub fn candidates(self) -> &'static [fork_common::ForkPath] {
        use fork_common::ForkPath;
        match self {
            ForkPathSetting::Auto => &ForkPath::ALL,
            ForkPathSetting::Metadata => &[ForkPath::Metadata],
            ForkPathSetting::Headroom => &[ForkPath::Headroom],
        }
    }

    /// Parse the value of [`FORK_PATH_ENV`] (or a CLI flag); the error names the values.
    pub fn parse(s: &str) -> Result<ForkPathSetting, String> {
        match s {
            "auto" => Ok(ForkPathSetting::Auto),
            "metadata" => Ok(ForkPathSetting::Metadata),
            "headroom" => Ok(ForkPathSetting::Headroom),
            other => Err(format!(
                "`{other}` is not a fork path: use auto, metadata or headroom"
            )),
        }
    }
}

impl Config {
    fn validate_control(&self) -> Result<(), ConfigError> {
        use conn_limits::ConfigProblem;
        let c = &self.control;
        if c.request_timeout_secs == 0 {
            return Err(invalid(
                "control.request_timeout_secs",
                "must be at least 1 (seconds a client has to send its first request)",
            ));
        }
        if !CONTROL_MAX_LINE.contains(&c.max_line_bytes) {
            return Err(invalid(
                "control.max_line_bytes",
                format!(
                    "{} is outside {}-{}",
                    c.max_line_bytes,
                    CONTROL_MAX_LINE.start(),
                    CONTROL_MAX_LINE.end()
                ),
            ));
        }
        c.admission().check().map_err(|p| {
            let field = match p {
                ConfigProblem::ZeroPerKey | ConfigProblem::PerKeyAboveTotal => {
                    "control.max_connections_per_user"
                }
                ConfigProblem::ZeroTotal => "control.max_connections",
                ConfigProblem::ZeroTimeout => "control.request_timeout_secs",
            };
            invalid(field, p.to_string())
        })
    }
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
    /// Connections one local user (uid) may hold on the control socket (docs/operations.md
    /// "Limits").
    #[serde(default = "default_control_per_user")]
    pub max_connections_per_user: usize,
    /// Connections all users together may hold.
    #[serde(default = "default_control_total")]
    pub max_connections: usize,
    /// A connection that sends no complete request line within this long is closed.
    #[serde(default = "default_control_request_timeout")]
    pub request_timeout_secs: u64,
    /// A connection idle this long after its last request is closed (0 = never: sip-agent keeps
    /// one connection open between calls).
    #[serde(default)]
    pub idle_timeout_secs: u64,
    /// Longest request line; a longer one gets an error answer and the connection is closed.
    #[serde(default = "default_control_max_line")]
    pub max_line_bytes: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: default_socket(),
            state_dir: default_state_dir(),
            max_connections_per_user: default_control_per_user(),
            max_connections: default_control_total(),
            request_timeout_secs: default_control_request_timeout(),
            idle_timeout_secs: 0,
            max_line_bytes: default_control_max_line(),
        }
    }
}

impl ControlConfig {
    /// The control socket's admission limits.
    pub fn admission(&self) -> conn_limits::AdmissionConfig {
        conn_limits::AdmissionConfig {
            max_per_key: self.max_connections_per_user,
            max_total: self.max_connections,
            pending_timeout: Some(std::time::Duration::from_secs(self.request_timeout_secs)),
            idle_timeout: (self.idle_timeout_secs > 0)
                .then(|| std::time::Duration::from_secs(self.idle_timeout_secs)),
        }
    }
}

fn default_control_per_user() -> usize {
    32
}
fn default_control_total() -> usize {
    128
}
fn default_control_request_timeout() -> u64 {
    10
}
/// Requests are a few hundred bytes; a fork_start with its metadata stays far below 64 KiB
/// (fork request bodies are at most 16 KiB, docs/fork-request.md).
fn default_control_max_line() -> usize {
    64 * 1024
}
/// Bounds for `control.max_line_bytes`: below 1 KiB a fork_start does not fit; above 16 MiB one
/// client could hold that much memory per connection.
const CONTROL_MAX_LINE: std::ops::RangeInclusive<usize> = 1024..=16 * 1024 * 1024;

/// The config file `run` and `check-config` read when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/xdpfork/fork-agent.toml";
/// `[control] socket` when the config does not say; also where `ctl` connects by default.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/xdpfork/fork-agent.sock";

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}
fn default_flow_idle_timeout() -> u64 {
    crate::core::idle::DEFAULT_TIMEOUT_SECS
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/xdpfork")
}

/// One speech server profile (CUBE `media profile stream-service`): where to connect and how.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeechServerConfig {
    pub name: String,
    /// `ws://host[:port]/path` or `wss://…`; a fork request may override it with its own URL.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`; a fork request may override it.
    #[serde(default)]
    pub token: Option<String>,
    /// Frames queued per connection; beyond it each new audio frame replaces the oldest queued
    /// one (counted; control is never dropped).
    #[serde(default = "default_queue")]
    pub queue_frames: usize,
    /// Calls per WebSocket connection, 1–20 (CUBE `connection calls-threshold`, default 3).
    #[serde(default = "default_calls_threshold")]
    pub calls_threshold: u32,
    /// Seconds an unused connection stays open (CUBE `connection idle-timeout`, 30 min).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Give up one connection attempt (DNS + TCP + proxy + TLS + upgrade) after this long.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// First reconnect delay (doubled per failure, with jitter).
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    /// Largest reconnect delay.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Failed attempts in a row before waiting forks fail ("Connection failed").
    #[serde(default = "default_max_attempts")]
    pub max_connect_attempts: u32,
    /// Close a connection whose queue stayed full this long.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout_ms: u64,
    /// Protocol errors (frames the server may not send), with no healthy period in between,
    /// before the server is held off (1–1000, default 3).
    #[serde(default = "default_protocol_error_limit")]
    pub protocol_error_limit: u32,
    /// First hold-off after `protocol_error_limit` protocol errors (doubled per further one,
    /// with jitter).
    #[serde(default = "default_protocol_backoff_initial")]
    pub protocol_backoff_initial_ms: u64,
    /// Largest hold-off.
    #[serde(default = "default_protocol_backoff_max")]
    pub protocol_backoff_max_ms: u64,
    /// A connection open this long with no protocol error clears the count and the hold-off.
    #[serde(default = "default_healthy_after")]
    pub healthy_after_ms: u64,
    /// Local address to connect from (CUBE `source-ip`).
    #[serde(default)]
    pub source_address: Option<std::net::IpAddr>,
    /// HTTP CONNECT proxy (CUBE `proxy host H port P`).
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
    /// TLS settings for `wss://`.
    #[serde(default)]
    pub tls: TlsConfig,
    /// The dialect this server speaks and its settings (docs/speech-protocol.md, "Profiles").
    #[serde(default)]
    pub protocol: speech_proto::ProfileConfig,
}

/// HTTP proxy reached with CONNECT (RFC 9110 §9.3.6).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsMinVersion {
    /// TLS 1.2 and 1.3 (the reference speaks 1.2 only).
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// "1.2" (default) or "1.3".
    #[serde(default)]
    pub min_version: TlsMinVersion,
    /// Allowed cipher suites (rustls names or `ecdhe-rsa-aes-gcm-sha2`-style groups); empty =
    /// rustls defaults (AES-GCM and ChaCha20-Poly1305).
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// PEM CA bundle; default: the system bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for servers that require one.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

fn default_queue() -> usize {
    4096
}
fn default_calls_threshold() -> u32 {
    3
}
fn default_idle_timeout() -> u64 {
    30 * 60
}
fn default_connect_timeout() -> u64 {
    10_000
}
fn default_backoff_initial() -> u64 {
    500
}
fn default_backoff_max() -> u64 {
    30_000
}
fn default_max_attempts() -> u32 {
    5
}
fn default_stall_timeout() -> u64 {
    10_000
}
fn default_protocol_error_limit() -> u32 {
    crate::core::ws_pool::DEFAULT_PROTOCOL_ERROR_LIMIT
}
fn default_protocol_backoff_initial() -> u64 {
    10_000
}
fn default_protocol_backoff_max() -> u64 {
    300_000
}
fn default_healthy_after() -> u64 {
    60_000
}

impl SpeechServerConfig {
    /// The pool policy for a destination speaking `profile` (the server's own, or the one a
    /// fork request named): dialects that name one call per socket get single-use connections.
    pub fn pool_config_for(
        &self,
        profile: speech_proto::Profile,
    ) -> crate::core::ws_pool::PoolConfig {
        let mut c = self.pool_config();
        if !profile.multiplexes_calls() {
            c.calls_threshold = 1;
            c.single_use = true;
        }
        c
    }

    /// The pool policy settings of this server, as configured.
    pub fn pool_config(&self) -> crate::core::ws_pool::PoolConfig {
        use std::time::Duration;
        crate::core::ws_pool::PoolConfig {
            calls_threshold: self.calls_threshold,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            stable_after: Duration::from_secs(10),
            max_connect_attempts: self.max_connect_attempts,
            send_queue_limit: self.queue_frames,
            stall_timeout: Duration::from_millis(self.stall_timeout_ms),
            protocol_error_limit: self.protocol_error_limit,
            protocol_backoff_initial: Duration::from_millis(self.protocol_backoff_initial_ms),
            protocol_backoff_max: Duration::from_millis(self.protocol_backoff_max_ms),
            healthy_after: Duration::from_millis(self.healthy_after_ms),
            single_use: false,
        }
    }
}

/// The `[[speech_server]]` key of a [`crate::core::ws_pool::PoolConfig`] field, for errors
/// that name what the operator wrote.
fn speech_server_key(pool_field: &'static str) -> &'static str {
    match pool_field {
        "idle_timeout" => "idle_timeout_secs",
        "connect_timeout" => "connect_timeout_ms",
        "backoff_initial" => "backoff_initial_ms",
        "backoff_max" => "backoff_max_ms",
        "send_queue_limit" => "queue_frames",
        "stall_timeout" => "stall_timeout_ms",
        "protocol_backoff_initial" => "protocol_backoff_initial_ms",
        "protocol_backoff_max" => "protocol_backoff_max_ms",
        "healthy_after" => "healthy_after_ms",
        same => same,
    }
}

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_text(path).map(|(c, _)| c)
    }

    /// [`Config::load`], with the text read (what a SIGHUP compares the file with).
    pub fn load_text(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = daemon_ops::config_file::read(path)?;
        let cfg = Config::parse_at(&text, path)?;
        Ok((cfg, text))
    }

    /// [`Config::parse`] of `path`'s text: a TOML error names the file.
    pub fn parse_at(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse(text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, std::env::var(FORK_PATH_ENV).ok().as_deref())
    }

    /// [`Config::parse`] with the value of [`FORK_PATH_ENV`] given (tests pass it explicitly).
    pub fn parse_with_env(text: &str, fork_path_env: Option<&str>) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
        })?;
        if let Some(v) = fork_path_env {
            cfg.dataplane.fork_path =
                ForkPathSetting::parse(v).map_err(|problem| invalid(FORK_PATH_ENV, problem))?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_control()?;
        self.return_audio.validate()?;
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
        if let Err(e) = crate::core::destinations::AllowList::parse(&self.destinations.allow) {
            return Err(invalid("destinations.allow", e));
        }
        if !(1..=100_000).contains(&self.destinations.max_active) {
            return Err(invalid(
                "destinations.max_active",
                "must be from 1 to 100000",
            ));
        }
        let mut names = HashSet::new();
        for (i, s) in self.speech_servers.iter().enumerate() {
            let f = |k: &str| format!("speech_server[{i}].{k}");
            if s.name.is_empty() || !names.insert(&s.name) {
                return Err(invalid(f("name"), "must be non-empty and unique"));
            }
            if let Err(e) = crate::core::ws_url::WsUrl::parse(&s.url) {
                return Err(invalid(f("url"), e));
            }
            if !(16..=1_000_000).contains(&s.queue_frames) {
                return Err(invalid(f("queue_frames"), "must be from 16 to 1000000"));
            }
            if let Err(e) = s.pool_config().validate() {
                let field = match e {
                    crate::core::ws_pool::PoolError::InvalidConfig { field, .. } => {
                        speech_server_key(field)
                    }
                    _ => "pool",
                };
                return Err(invalid(f(field), e.to_string()));
            }
            if s.tls.client_cert.is_some() != s.tls.client_key.is_some() {
                return Err(invalid(
                    f("tls.client_cert"),
                    "client_cert and client_key go together",
                ));
            }
            if let Err(e) = s.protocol.validate() {
                return Err(invalid(f(&format!("protocol.{}", e.field)), e.reason));
            }
            if let Some(p) = &s.proxy {
                if p.host.is_empty() || p.port == 0 {
                    return Err(invalid(f("proxy"), "needs a host and a non-zero port"));
                }
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
    #[test]
    fn return_audio_bounds_name_the_field() {
        let base = "[dataplane]\ninterfaces = [\"eth0\"]\n";
        let cfg = super::Config::parse_with_env(base, None).expect("defaults");
        assert_eq!(
            (
                cfg.return_audio.max_buffer_ms,
                cfg.return_audio.prebuffer_ms
            ),
            (60_000, 40)
        );
        for (section, field) in [
            ("max_buffer_ms = 10", "return_audio.max_buffer_ms"),
            ("prebuffer_ms = 5000", "return_audio.prebuffer_ms"),
        ] {
            let text = format!("{base}[return_audio]\n{section}\n");
            let e = super::Config::parse_with_env(&text, None).expect_err("refused");
            assert!(e.to_string().contains(field), "{e}");
        }
    }

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
        let pool = c.speech_servers[0].pool_config();
        assert_eq!(pool.protocol_error_limit, 3);
        assert_eq!(pool.protocol_backoff_initial.as_secs(), 10);
        assert_eq!(pool.protocol_backoff_max.as_secs(), 300);
        assert_eq!(pool.healthy_after.as_secs(), 60);
    }

    #[test]
    fn fork_path_defaults_to_auto_and_the_environment_overrides_it() {
        use fork_common::ForkPath;
        let c = Config::parse_with_env(GOOD, None).expect("valid");
        assert_eq!(c.dataplane.fork_path, ForkPathSetting::Auto);
        assert_eq!(
            c.dataplane.fork_path.candidates(),
            [ForkPath::Metadata, ForkPath::Headroom]
        );
        let with_field = format!("{GOOD}\n").replace(
            "interfaces = [\"eth0\", \"eth1\"]",
            "interfaces = [\"eth0\", \"eth1\"]\nfork_path = \"metadata\"",
        );
        let c = Config::parse_with_env(&with_field, None).expect("valid");
        assert_eq!(c.dataplane.fork_path.candidates(), [ForkPath::Metadata]);
        let c = Config::parse_with_env(&with_field, Some("headroom")).expect("valid");
        assert_eq!(c.dataplane.fork_path.candidates(), [ForkPath::Headroom]);
        let e = Config::parse_with_env(GOOD, Some("meta"))
            .expect_err("unknown value")
            .to_string();
        assert!(
            e.contains(FORK_PATH_ENV) && e.contains("auto, metadata or headroom"),
            "{e}"
        );
        let e = Config::parse_with_env(
            &GOOD.replace(
                "[[speech_server]]",
                "fork_path = \"fast\"\n[[speech_server]]",
            ),
            None,
        )
        .expect_err("unknown value")
        .to_string();
        assert!(e.contains("fork_path"), "{e}");
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
        let bad = GOOD.replace("stream\"", "stream\"\ncalls_threshold = 21");
        assert!(
            err_of(&bad).contains("speech_server[0].calls_threshold"),
            "{}",
            err_of(&bad)
        );
        for (line, field) in [
            (
                "protocol_error_limit = 0",
                "speech_server[0].protocol_error_limit",
            ),
            (
                "protocol_backoff_initial_ms = 0",
                "speech_server[0].protocol_backoff_initial_ms",
            ),
            (
                "protocol_backoff_max_ms = 1000",
                "speech_server[0].protocol_backoff_max_ms",
            ),
            ("healthy_after_ms = 0", "speech_server[0].healthy_after_ms"),
            (
                "backoff_initial_ms = 0",
                "speech_server[0].backoff_initial_ms",
            ),
        ] {
            let bad = GOOD.replace("stream\"", &format!("stream\"\n{line}"));
            let e = err_of(&bad);
            assert!(e.contains(field), "{line}: {e}");
        }
        let bad = GOOD.replace(
            "stream\"",
            "stream\"\n[speech_server.tls]\nmin_version = \"1.1\"",
        );
        assert!(err_of(&bad).contains("min_version"), "{}", err_of(&bad));
    }

    #[test]
    fn unknown_fields_and_types_are_reported_with_their_name() {
        let e = err_of("[dataplane]\ninterfaces = [\"a\"]\nbogus = 1");
        assert!(e.contains("bogus"), "{e}");
        let e = err_of("[dataplane]\ninterfaces = \"eth0\"");
        assert!(e.contains("interfaces"), "{e}");
    }

    #[test]
    fn control_limits_default_and_are_validated() {
        let c = Config::parse(GOOD).expect("valid");
        let a = c.control.admission();
        assert_eq!((a.max_per_key, a.max_total), (32, 128));
        assert_eq!(a.pending_timeout, Some(std::time::Duration::from_secs(10)));
        assert_eq!(a.idle_timeout, None);
        assert_eq!(c.control.max_line_bytes, 65536);
        for (line, field) in [
            (
                "max_connections_per_user = 0",
                "control.max_connections_per_user",
            ),
            (
                "max_connections_per_user = 200",
                "control.max_connections_per_user",
            ),
            ("max_connections = 0", "control.max_connections"),
            ("request_timeout_secs = 0", "control.request_timeout_secs"),
            ("max_line_bytes = 10", "control.max_line_bytes"),
        ] {
            let text = format!("[control]\n{line}\n{GOOD}");
            let e = err_of(&text);
            assert!(e.contains(field), "{line}: {e}");
        }
    }
}
