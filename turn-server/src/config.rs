//! turn-server's TOML configuration, validated at start.
//!
//! Role: turn the operator's file into the pieces the shell needs: a turn-core
//! [`ServerConfig`], [`Credentials`] (users file and/or REST shared secret), the relay port
//! allocator settings, listen addresses, the TLS server config, the control socket path and the
//! optional kernel offload (`[offload]`, fork-agent's control socket).
//! Every error names the field it is about (`listen.tls`, `auth.users_file`, `peers.allowed[1]`,
//! ...), so `turn-server check-config` tells the operator exactly what to fix.
//! Call order: [`Config::load`] at start, and again on SIGHUP, where [`crate::reload`] takes
//! only the credentials from the new file.
//!
//! Secrets (the REST shared secret, passwords in the users file) are only ever held in types
//! whose `Debug` prints `<redacted>`.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;
use turn_core::{
    server::{IpRange, RateLimit},
    Credentials, RestSecret, ServerConfig, UserDb,
};

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read (daemon-ops' text, shared by every daemon).
    #[error(transparent)]
    Read(#[from] daemon_ops::config_file::ReadError),
    /// TOML syntax or type error (the message names line and key).
    #[error("config file {path}: {source}")]
    Parse {
        /// File named on the command line.
        path: PathBuf,
        /// Underlying error.
        source: toml::de::Error,
    },
    /// A value is out of range, inconsistent, or names a file that is unusable.
    #[error("config field `{field}`: {problem}")]
    Invalid {
        /// Dotted path of the field, e.g. `relay.min_port`.
        field: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

fn invalid(field: impl Into<String>, problem: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.to_string(),
    }
}

/// A secret string from the config file; `Debug` never shows it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The file as written. See docs/turn.md "turn-server configuration" for every field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    realm: String,
    software: Option<String>,
    listen: RawListen,
    tls: Option<RawTls>,
    auth: RawAuth,
    relay: RawRelay,
    #[serde(default)]
    peers: RawPeers,
    #[serde(default)]
    quotas: RawQuotas,
    #[serde(default)]
    rate_limit: RawRateLimit,
    #[serde(default)]
    lifetimes: RawLifetimes,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    compat: RawCompat,
    offload: Option<RawOffload>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    metrics: daemon_ops::metrics::MetricsSection,
    #[serde(default)]
    log: daemon_ops::logging::LogSection,
}

/// `[limits]`: the TCP and TLS listeners' bounds (docs/operations.md "Limits").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default = "default_per_address")]
    max_connections_per_address: usize,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_unauthenticated_timeout")]
    unauthenticated_timeout_secs: u64,
    #[serde(default = "default_max_frame")]
    max_frame_bytes: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_connections_per_address: default_per_address(),
            max_connections: default_max_connections(),
            unauthenticated_timeout_secs: default_unauthenticated_timeout(),
            max_frame_bytes: default_max_frame(),
        }
    }
}

fn default_per_address() -> usize {
    64
}
fn default_max_connections() -> usize {
    4096
}
fn default_unauthenticated_timeout() -> u64 {
    10
}
fn default_max_frame() -> usize {
    8 * 1024
}
/// Bounds of `limits.max_frame_bytes`: an Allocate with its attributes needs a few hundred
/// bytes, 1 KiB leaves room; a STUN message is at most 20 + 65,535 bytes (RFC 8489 §5).
const MAX_FRAME_RANGE: std::ops::RangeInclusive<usize> = 1024..=65_555;
/// Longest `limits.unauthenticated_timeout_secs` accepted.
const MAX_UNAUTHENTICATED_SECS: u64 = 3600;

/// Validated `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// TCP and TLS listeners together: per client address, global, and the deadline for a
    /// connection's first allocation.
    pub streams: conn_limits::AdmissionConfig,
    /// Largest STUN or ChannelData frame on a stream; a larger one closes the connection.
    pub max_frame: usize,
}

impl RawLimits {
    fn validate(&self) -> Result<Limits, ConfigError> {
        use conn_limits::ConfigProblem;
        if !(1..=MAX_UNAUTHENTICATED_SECS).contains(&self.unauthenticated_timeout_secs) {
            return Err(invalid(
                "limits.unauthenticated_timeout_secs",
                format!("must be 1 to {MAX_UNAUTHENTICATED_SECS} seconds"),
            ));
        }
        if !MAX_FRAME_RANGE.contains(&self.max_frame_bytes) {
            return Err(invalid(
                "limits.max_frame_bytes",
                format!(
                    "must be {} to {} bytes",
                    MAX_FRAME_RANGE.start(),
                    MAX_FRAME_RANGE.end()
                ),
            ));
        }
        let streams = conn_limits::AdmissionConfig {
            max_per_key: self.max_connections_per_address,
            max_total: self.max_connections,
            pending_timeout: Some(Duration::from_secs(self.unauthenticated_timeout_secs)),
            idle_timeout: None,
        };
        streams.check().map_err(|p| {
            let field = match p {
                ConfigProblem::ZeroPerKey | ConfigProblem::PerKeyAboveTotal => {
                    "limits.max_connections_per_address"
                }
                ConfigProblem::ZeroTotal => "limits.max_connections",
                ConfigProblem::ZeroTimeout => "limits.unauthenticated_timeout_secs",
            };
            invalid(field, p)
        })?;
        Ok(Limits {
            streams,
            max_frame: self.max_frame_bytes,
        })
    }
}

/// `[offload]`: relay bound channels in fork-agent's XDP program (docs/turn.md "Relay offload
/// to XDP"). Absent: everything stays in user space.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOffload {
    fork_agent_socket: PathBuf,
    #[serde(default = "default_counters_interval_ms")]
    counters_interval_ms: u64,
}

fn default_counters_interval_ms() -> u64 {
    2000
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompat {
    #[serde(default)]
    rfc5766_channels: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    #[serde(default)]
    udp: Vec<SocketAddr>,
    #[serde(default)]
    tcp: Vec<SocketAddr>,
    #[serde(default)]
    tls: Vec<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    users_file: Option<PathBuf>,
    rest_secret: Option<Secret>,
    rest_secret_file: Option<PathBuf>,
    #[serde(default = "default_nonce_lifetime")]
    nonce_lifetime_secs: u64,
}

fn default_nonce_lifetime() -> u64 {
    600
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    #[serde(default = "default_min_port")]
    min_port: u16,
    #[serde(default = "default_max_port")]
    max_port: u16,
}

fn default_min_port() -> u16 {
    *turn_core::PortRangeAllocator::DEFAULT_PORTS.start()
}
fn default_max_port() -> u16 {
    *turn_core::PortRangeAllocator::DEFAULT_PORTS.end()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeers {
    #[serde(default)]
    allowed: Vec<String>,
    #[serde(default)]
    denied: Vec<String>,
    #[serde(default)]
    allow_private: bool,
    #[serde(default)]
    own_addresses: Vec<IpAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuotas {
    user: Option<usize>,
    total: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_burst")]
    burst: u32,
    #[serde(default = "default_per_second")]
    per_second: u32,
    #[serde(default = "default_max_sources")]
    max_sources: usize,
}

fn yes() -> bool {
    true
}
fn default_burst() -> u32 {
    20
}
fn default_per_second() -> u32 {
    10
}
fn default_max_sources() -> usize {
    65_536
}

impl Default for RawRateLimit {
    fn default() -> Self {
        RawRateLimit {
            enabled: true,
            burst: default_burst(),
            per_second: default_per_second(),
            max_sources: default_max_sources(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifetimes {
    #[serde(default = "default_lifetime")]
    default_secs: u64,
    #[serde(default = "default_max_lifetime")]
    max_secs: u64,
}

fn default_lifetime() -> u64 {
    600
}
fn default_max_lifetime() -> u64 {
    3600
}

impl Default for RawLifetimes {
    fn default() -> Self {
        RawLifetimes {
            default_secs: default_lifetime(),
            max_secs: default_max_lifetime(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    #[serde(default = "default_socket")]
    socket: PathBuf,
}

/// The config file every subcommand reads when `--config` is not given (the one
/// `cargo xtask install` puts there).
pub const DEFAULT_CONFIG: &str = "/etc/xdpfork/turn-server.toml";

/// Where `turn-server status` looks when `--socket` is not given: the default config's
/// `[control] socket`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/xdpfork/turn-server.sock";

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

impl Default for RawControl {
    fn default() -> Self {
        RawControl {
            socket: default_socket(),
        }
    }
}

/// Listen addresses per client transport.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listen {
    /// UDP listen sockets (3478 in the Expressway deployment).
    pub udp: Vec<SocketAddr>,
    /// TCP listen sockets (3478).
    pub tcp: Vec<SocketAddr>,
    /// TLS listen sockets (5349 by RFC 8656 §4; anything the operator chooses).
    pub tls: Vec<SocketAddr>,
}

/// Relay addresses and port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// IPv4 relay address (advertised in XOR-RELAYED-ADDRESS and bound).
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 relay address.
    pub ipv6: Option<Ipv6Addr>,
    /// Lowest relay port.
    pub min_port: u16,
    /// Highest relay port.
    pub max_port: u16,
}

/// Kernel offload of bound channels through fork-agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offload {
    /// fork-agent's control socket (its `[control] socket`).
    pub fork_agent_socket: PathBuf,
    /// How often kernel counters are read back into the allocations' counters.
    pub counters_interval: Duration,
}

/// Shortest and longest accepted `offload.counters_interval_ms`: faster polls load fork-agent
/// for nothing, slower ones leave `turn-server status` stale for a minute.
const COUNTERS_INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

/// A validated configuration.
pub struct Config {
    /// Listen addresses.
    pub listen: Listen,
    /// TLS server settings, present when `listen.tls` is non-empty.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Relay addresses and ports.
    pub relay: Relay,
    /// The core's settings (quotas, peers, lifetimes, rate limit, own addresses).
    pub server: ServerConfig,
    /// Users file and/or REST secret.
    pub credentials: Credentials,
    /// Unix control socket for `turn-server status`.
    pub control_socket: PathBuf,
    /// Kernel offload, when `[offload]` is present.
    pub offload: Option<Offload>,
    /// Connection and frame limits of the TCP/TLS listeners.
    pub limits: Limits,
    /// `[metrics] listen`: the Prometheus endpoint, if on.
    pub metrics_listen: Option<SocketAddr>,
    /// `[log] level`, re-applied on SIGHUP.
    pub log: daemon_ops::logging::LogSection,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("relay", &self.relay)
            .field("server", &self.server)
            .field("credentials", &self.credentials)
            .field("control_socket", &self.control_socket)
            .field("offload", &self.offload)
            .field("limits", &self.limits)
            .field("metrics_listen", &self.metrics_listen)
            .field("log", &self.log)
            .finish()
    }
}

impl Config {
    /// Reads and validates `path`, including the users file, secret file and TLS files it
    /// names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = daemon_ops::config_file::read(path)?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Validates config text (files it names are read relative to the working directory).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
        })?;
        raw.validate()
    }
}

/// What `turn-server user` and `turn-server credential` need from a config file: the realm,
/// the users file and the REST shared secret. The rest of the file is parsed (so a typo is
/// still reported) but not validated, and the users file is not read: `user add` may create it.
pub struct AuthSettings {
    /// `realm`.
    pub realm: String,
    /// `auth.users_file`.
    pub users_file: Option<PathBuf>,
    /// `auth.rest_secret` or `auth.rest_secret_file`.
    pub rest_secret: Option<RestSecret>,
}

impl AuthSettings {
    /// Reads `path` for its `realm` and `[auth]` settings.
    pub fn load(path: &Path) -> Result<AuthSettings, ConfigError> {
        let text = daemon_ops::config_file::read(path)?;
        let raw: RawConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        check_realm(&raw.realm)?;
        Ok(AuthSettings {
            rest_secret: rest_secret(&raw.auth)?,
            users_file: raw.auth.users_file,
            realm: raw.realm,
        })
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        check_realm(&self.realm)?;
        let listen = Listen {
            udp: self.listen.udp,
            tcp: self.listen.tcp,
            tls: self.listen.tls,
        };
        if listen.udp.is_empty() && listen.tcp.is_empty() && listen.tls.is_empty() {
            return Err(invalid(
                "listen",
                "no listen address: set listen.udp, listen.tcp and/or listen.tls (e.g. [\"0.0.0.0:3478\"])",
            ));
        }
        let tls = match (&self.tls, listen.tls.is_empty()) {
            (None, false) => {
                return Err(invalid(
                    "tls",
                    "listen.tls is set but there is no [tls] section with cert and key",
                ))
            }
            (Some(t), false) => Some(load_tls(&t.cert, &t.key)?),
            (_, true) => None,
        };
        let credentials = load_credentials(&self.realm, &self.auth)?;
        if self.auth.nonce_lifetime_secs == 0 {
            return Err(invalid("auth.nonce_lifetime_secs", "must be at least 1"));
        }

        let relay = Relay {
            ipv4: self.relay.ipv4,
            ipv6: self.relay.ipv6,
            min_port: self.relay.min_port,
            max_port: self.relay.max_port,
        };
        if relay.ipv4.is_none() && relay.ipv6.is_none() {
            return Err(invalid(
                "relay",
                "set relay.ipv4 and/or relay.ipv6 (the address peers send to)",
            ));
        }
        if relay.ipv4.is_some_and(|a| a.is_unspecified())
            || relay.ipv6.is_some_and(|a| a.is_unspecified())
        {
            return Err(invalid(
                "relay",
                "relay addresses are advertised to clients, so they cannot be 0.0.0.0 or ::",
            ));
        }
        if relay.min_port == 0 || relay.min_port > relay.max_port {
            return Err(invalid(
                "relay.min_port",
                format!(
                    "port range {}-{} is empty or starts at 0",
                    relay.min_port, relay.max_port
                ),
            ));
        }

        let allowed_peers = parse_ranges("peers.allowed", &self.peers.allowed)?;
        let denied_peers = parse_ranges("peers.denied", &self.peers.denied)?;
        for (field, q) in [
            ("quotas.user", self.quotas.user),
            ("quotas.total", self.quotas.total),
        ] {
            if q == Some(0) {
                return Err(invalid(
                    field,
                    "must be at least 1; leave it out for unlimited",
                ));
            }
        }
        let rl = &self.rate_limit;
        if rl.enabled && (rl.burst == 0 || rl.per_second == 0 || rl.max_sources == 0) {
            return Err(invalid(
                "rate_limit",
                "burst, per_second and max_sources must be at least 1 (or set enabled = false)",
            ));
        }

        let server = ServerConfig {
            software: self.software.or(ServerConfig::default().software),
            default_lifetime: Duration::from_secs(self.lifetimes.default_secs),
            max_lifetime: Duration::from_secs(self.lifetimes.max_secs),
            nonce_lifetime: Duration::from_secs(self.auth.nonce_lifetime_secs),
            user_quota: self.quotas.user,
            total_quota: self.quotas.total,
            server_addresses: own_addresses(&listen, &relay, &self.peers.own_addresses),
            allow_private_peers: self.peers.allow_private,
            denied_peers,
            allowed_peers,
            unauthenticated_rate: rl.enabled.then_some(RateLimit {
                burst: rl.burst,
                per_second: rl.per_second,
            }),
            max_rate_sources: rl.max_sources,
            rfc5766_channels: self.compat.rfc5766_channels,
            ..ServerConfig::default()
        };
        if self.lifetimes.default_secs == 0 || self.lifetimes.default_secs > self.lifetimes.max_secs
        {
            return Err(invalid(
                "lifetimes.default_secs",
                "must be at least 1 and at most lifetimes.max_secs",
            ));
        }
        if self.lifetimes.max_secs > u64::from(u32::MAX) {
            return Err(invalid(
                "lifetimes.max_secs",
                "does not fit the LIFETIME attribute",
            ));
        }
        if server.software.as_ref().is_some_and(|s| s.len() > 763) {
            return Err(invalid(
                "software",
                "longer than 763 bytes (RFC 8489 §14.14)",
            ));
        }
        let offload = self
            .offload
            .map(|o| validate_offload(o, &listen))
            .transpose()?;
        let limits = self.limits.validate()?;
        Ok(Config {
            log: self.log.clone(),
            listen,
            tls,
            relay,
            server,
            credentials,
            control_socket: self.control.socket,
            offload,
            limits,
            metrics_listen: self
                .metrics
                .listen(daemon_ops::metrics::TURN_SERVER_DEFAULT),
        })
    }
}

fn check_realm(realm: &str) -> Result<(), ConfigError> {
    // RFC 8489 §14.9: REALM is fewer than 128 characters.
    if realm.is_empty() || realm.chars().count() >= 128 {
        return Err(invalid("realm", "must be 1 to 127 characters"));
    }
    Ok(())
}

fn validate_offload(o: RawOffload, listen: &Listen) -> Result<Offload, ConfigError> {
    if !o.fork_agent_socket.is_absolute() {
        return Err(invalid(
            "offload.fork_agent_socket",
            format!(
                "{} must be an absolute path (fork-agent's [control] socket, e.g. /run/xdpfork/fork-agent.sock)",
                o.fork_agent_socket.display()
            ),
        ));
    }
    // The kernel relays UDP clients only, and matches the exact destination address of their
    // ChannelData: a wildcard listener has no address to match.
    if listen.udp.is_empty() {
        return Err(invalid(
            "offload",
            "only UDP clients are offloaded, but listen.udp is empty: add a UDP listener or remove [offload]",
        ));
    }
    if let Some(a) = listen.udp.iter().find(|a| a.ip().is_unspecified()) {
        return Err(invalid(
            "listen.udp",
            format!("{a} is a wildcard; with [offload] each UDP listener must name the address clients send to (the kernel matches it)"),
        ));
    }
    if !COUNTERS_INTERVAL_MS.contains(&o.counters_interval_ms) {
        return Err(invalid(
            "offload.counters_interval_ms",
            format!(
                "must be {} to {}",
                COUNTERS_INTERVAL_MS.start(),
                COUNTERS_INTERVAL_MS.end()
            ),
        ));
    }
    Ok(Offload {
        fork_agent_socket: o.fork_agent_socket,
        counters_interval: Duration::from_millis(o.counters_interval_ms),
    })
}

fn parse_ranges(field: &str, list: &[String]) -> Result<Vec<IpRange>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpRange>()
                .map_err(|e| invalid(format!("{field}[{i}]"), e))
        })
        .collect()
}

fn load_credentials(realm: &str, auth: &RawAuth) -> Result<Credentials, ConfigError> {
    let mut creds = Credentials::new(realm);
    if let Some(path) = &auth.users_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                "auth.users_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let users = UserDb::parse(&text)
            .map_err(|e| invalid("auth.users_file", format!("{}: {e}", path.display())))?;
        creds = creds
            .with_users(users)
            .map_err(|e| invalid("auth.users_file", format!("{}: {e}", path.display())))?;
    }
    if let Some(secret) = rest_secret(auth)? {
        creds = creds.with_rest_secret(secret);
    }
    if auth.users_file.is_none() && auth.rest_secret.is_none() && auth.rest_secret_file.is_none() {
        return Err(invalid(
            "auth",
            "no credentials: set auth.users_file and/or auth.rest_secret (or rest_secret_file)",
        ));
    }
    Ok(creds)
}

/// `auth.rest_secret` or the first line of `auth.rest_secret_file`, if either is set.
fn rest_secret(auth: &RawAuth) -> Result<Option<RestSecret>, ConfigError> {
    let secret = match (&auth.rest_secret, &auth.rest_secret_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "auth.rest_secret_file",
                "set either auth.rest_secret or auth.rest_secret_file, not both",
            ))
        }
        (Some(s), None) => Some(s.0.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    invalid(
                        "auth.rest_secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    match secret {
        Some(s) if s.is_empty() => Err(invalid("auth.rest_secret", "the shared secret is empty")),
        Some(s) => Ok(Some(RestSecret::new(s.into_bytes()))),
        None => Ok(None),
    }
}

fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid("tls.cert", format!("cannot read {}: {e}", cert.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                "tls.cert",
                format!("{} is not a PEM certificate chain: {e}", cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            "tls.cert",
            format!("{} holds no certificate", cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        invalid(
            "tls.key",
            format!("cannot read a PEM private key from {}: {e}", key.display()),
        )
    })?;
    // Name the provider: with several rustls providers in the build, the process default is
    // ambiguous and `ServerConfig::builder()` panics.
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid("tls", e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        invalid(
            "tls.key",
            format!("does not match tls.cert or is unsupported: {e}"),
        )
    })?;
    Ok(Arc::new(config))
}

/// The addresses peers may never be: concrete listen and relay addresses, the operator's
/// extra list, and, when a listen address is a wildcard, every address on this host's
/// interfaces (a client could otherwise relay to the server's own ports).
fn own_addresses(listen: &Listen, relay: &Relay, extra: &[IpAddr]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = extra.to_vec();
    let all = listen.udp.iter().chain(&listen.tcp).chain(&listen.tls);
    let mut wildcard = false;
    for a in all {
        if a.ip().is_unspecified() {
            wildcard = true;
        } else {
            v.push(a.ip());
        }
    }
    v.extend(relay.ipv4.map(IpAddr::V4));
    v.extend(relay.ipv6.map(IpAddr::V6));
    if wildcard {
        if let Ok(ifs) = nix::ifaddrs::getifaddrs() {
            for ifa in ifs {
                let Some(addr) = ifa.address else { continue };
                if let Some(sin) = addr.as_sockaddr_in() {
                    v.push(IpAddr::V4(sin.ip()));
                } else if let Some(sin6) = addr.as_sockaddr_in6() {
                    v.push(IpAddr::V6(sin6.ip()));
                }
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

/// A throwaway directory removed on drop (no extra dependency for one test helper).
#[cfg(test)]
pub(crate) mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new() -> Dir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path =
                std::env::temp_dir().join(format!("turn-server-cfg-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).expect("create temp dir");
            Dir { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests;
