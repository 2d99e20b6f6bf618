//! sip-agent's TOML configuration: parsed, validated and turned into the cores' configs at
//! start, with every error naming the field it is about (`route[1].next_hop: ...`).
//!
//! Input: the file text ([`Settings::from_toml`]). Output: [`Settings`], or all problems found
//! at once as [`ConfigError`]. Next hops given as DNS names are resolved here, once, because the
//! B2BUA core does no DNS (see docs/sip-agent.md).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::core::authz::{Cidr, Policy};
use crate::core::b2bua::{self, Bind, BotRoute, Route, RoutePattern};
use crate::core::media::MediaConfig;
use crate::core::port_pool::parse_range;
use crate::core::reconcile::Owner;
use crate::core::session_timer::MIN_SE_FLOOR;
use crate::core::transaction::{Peer, Transport};

/// Default control socket of fork-agent (docs/control-api.md).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/xdpfork/fork-agent.sock";

/// Longest `calls.max_duration_secs` accepted (7 days): a larger value is almost certainly a
/// unit mistake (milliseconds), and the limit exists to catch calls nobody ended.
pub const MAX_DURATION_LIMIT_SECS: i64 = 7 * 24 * 3600;

/// Longest `calls.min_se_secs` accepted (1 day): a minimum this high would refuse most session
/// timers callers propose (RFC 4028 §4 suggests 1800 s).
pub const MIN_SE_LIMIT_SECS: i64 = 24 * 3600;

/// Default `state.dir`: the call journal lives here (the unit's `StateDirectory=`).
use crate::core::fork_request::MAX_FORKS_PER_CALL;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xdpfork/sip-agent";

/// Default `state.reconcile_grace_secs` (docs/sip-state.md "Reconciliation").
pub const DEFAULT_RECONCILE_GRACE_SECS: i64 = 30;

/// Longest `state.reconcile_grace_secs` accepted (1 hour): lost calls keep their flows this long.
pub const RECONCILE_GRACE_LIMIT_SECS: i64 = 3600;

/// Problems found in a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or does not have the expected shape (serde names the key).
    #[error("{0}")]
    Syntax(#[from] toml::de::Error),
    /// One line per invalid field: `field: problem`.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    sip: RawSip,
    media: RawMedia,
    fork_agent: RawForkAgent,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default, rename = "route")]
    routes: Vec<RawRoute>,
    #[serde(default, rename = "bot")]
    bots: Vec<RawBot>,
    #[serde(default)]
    calls: RawCalls,
    #[serde(default)]
    security: RawSecurity,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    forking: RawForking,
    #[serde(default)]
    metrics: daemon_ops::metrics::MetricsSection,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    log: daemon_ops::logging::LogSection,
}

/// `[admin]`: the Unix socket `sip-agent ctl` asks (docs/sip-agent.md "Call counts and the
/// admin socket"). Absent: no admin socket, unless `run --admin-socket` names one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default)]
    socket: Option<PathBuf>,
}

/// The config file `run` and `check-config` read when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/xdpfork/sip-agent.toml";
/// The admin socket of the default config (`[admin] socket`), where `ctl` asks by default.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/xdpfork/sip-agent.sock";

/// `[forking]`: how the controller may fork a call (docs/fork-request.md "Sequence rules").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForking {
    #[serde(default = "one")]
    max_per_call: i64,
}

impl Default for RawForking {
    fn default() -> Self {
        Self { max_per_call: 1 }
    }
}

fn one() -> i64 {
    1
}

/// `[state]`: the call journal and restart reconciliation (docs/sip-state.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default = "default_state_dir")]
    dir: String,
    #[serde(default = "yes")]
    reconcile: bool,
    #[serde(default = "default_grace")]
    reconcile_grace_secs: i64,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
            reconcile: true,
            reconcile_grace_secs: default_grace(),
        }
    }
}

fn default_state_dir() -> String {
    DEFAULT_STATE_DIR.into()
}

fn default_grace() -> i64 {
    DEFAULT_RECONCILE_GRACE_SECS
}

/// `[state]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSettings {
    /// Directory of `calls.jsonl`; `None` (`dir = ""`) keeps no journal.
    pub dir: Option<PathBuf>,
    /// Whether to reconcile with fork-agent at start.
    pub reconcile: bool,
    /// How long after start unknown flows and forks are removed.
    pub reconcile_grace: Duration,
    /// The media addresses this configuration hands out (what reconciliation may touch).
    pub owner: Owner,
}

/// `[security]`: who may send in-dialog and fork requests (docs/security.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    controllers: Vec<String>,
    #[serde(default)]
    controller_tls_names: Vec<String>,
}

/// `[limits]`: bounded resources on the TCP/TLS/WebSocket listeners and the admin socket
/// (docs/operations.md "Limits"). Signed so a negative value gets a message naming the field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default = "default_per_address")]
    max_connections_per_address: i64,
    #[serde(default = "default_max_connections")]
    max_connections: i64,
    #[serde(default = "default_first_message_timeout")]
    first_message_timeout_secs: i64,
    #[serde(default)]
    idle_timeout_secs: i64,
    #[serde(default = "default_max_message")]
    max_message_bytes: i64,
    #[serde(default = "default_admin_max_connections")]
    admin_max_connections: i64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_connections_per_address: default_per_address(),
            max_connections: default_max_connections(),
            first_message_timeout_secs: default_first_message_timeout(),
            idle_timeout_secs: 0,
            max_message_bytes: default_max_message(),
            admin_max_connections: default_admin_max_connections(),
        }
    }
}

fn default_per_address() -> i64 {
    32
}
fn default_max_connections() -> i64 {
    1024
}
fn default_first_message_timeout() -> i64 {
    10
}
fn default_max_message() -> i64 {
    crate::core::framing::MAX_MESSAGE as i64
}
fn default_admin_max_connections() -> i64 {
    16
}

/// Bounds of `limits.max_message_bytes`: an INVITE with SDP and a multipart fork request needs
/// a few KiB; the message parser never takes more than 64 KiB anyway.
const MAX_MESSAGE_RANGE: std::ops::RangeInclusive<i64> =
    2048..=crate::core::framing::MAX_MESSAGE as i64;
/// Longest `limits.*_timeout_secs` accepted (1 day).
const TIMEOUT_LIMIT_SECS: i64 = 24 * 3600;

/// Validated `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// TCP/TLS/WebSocket listeners together: per client address, global, first-message
    /// deadline, idle deadline.
    pub sip: conn_limits::AdmissionConfig,
    /// Largest SIP message (headers plus body) on a stream or WebSocket.
    pub max_message: usize,
    /// The admin socket: per uid and global (the same number), request deadline.
    pub admin: conn_limits::AdmissionConfig,
}

impl Default for Limits {
    fn default() -> Self {
        let mut errs = Vec::new();
        let l = RawLimits::default().validate(&mut errs);
        l.expect("invariant: the default limits are valid")
    }
}

impl RawLimits {
    fn validate(&self, errs: &mut Vec<String>) -> Option<Limits> {
        let before = errs.len();
        let count = |errs: &mut Vec<String>, name: &str, v: i64| -> usize {
            if v < 1 {
                errs.push(format!("limits.{name}: {v} must be at least 1"));
                return 1;
            }
            usize::try_from(v).unwrap_or(usize::MAX)
        };
        let per_address = count(
            errs,
            "max_connections_per_address",
            self.max_connections_per_address,
        );
        let total = count(errs, "max_connections", self.max_connections);
        let admin = count(errs, "admin_max_connections", self.admin_max_connections);
        let secs = |errs: &mut Vec<String>, name: &str, v: i64, zero_ok: bool| {
            let lo = if zero_ok { 0 } else { 1 };
            if !(lo..=TIMEOUT_LIMIT_SECS).contains(&v) {
                errs.push(format!(
                    "limits.{name}: {v} is outside {lo}-{TIMEOUT_LIMIT_SECS} (seconds{})",
                    if zero_ok { "; 0 turns it off" } else { "" }
                ));
                return None;
            }
            (v > 0).then(|| Duration::from_secs(v.unsigned_abs()))
        };
        let first = secs(
            errs,
            "first_message_timeout_secs",
            self.first_message_timeout_secs,
            false,
        );
        let idle = secs(errs, "idle_timeout_secs", self.idle_timeout_secs, true);
        if !MAX_MESSAGE_RANGE.contains(&self.max_message_bytes) {
            errs.push(format!(
                "limits.max_message_bytes: {} is outside {}-{}",
                self.max_message_bytes,
                MAX_MESSAGE_RANGE.start(),
                MAX_MESSAGE_RANGE.end()
            ));
        }
        let sip = conn_limits::AdmissionConfig {
            max_per_key: per_address,
            max_total: total,
            pending_timeout: first,
            idle_timeout: idle,
        };
        if errs.len() == before {
            if let Err(conn_limits::ConfigProblem::PerKeyAboveTotal) = sip.check() {
                errs.push(format!(
                    "limits.max_connections_per_address: {per_address} is above limits.max_connections ({total})"
                ));
            }
        }
        (errs.len() == before).then(|| Limits {
            sip,
            max_message: usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX),
            admin: conn_limits::AdmissionConfig {
                max_per_key: admin,
                max_total: admin,
                pending_timeout: first,
                idle_timeout: None,
            },
        })
    }
}

/// `[calls]`: limits on established calls. Signed so a negative value gets a message naming the
/// field instead of a type error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalls {
    #[serde(default)]
    max_duration_secs: i64,
    #[serde(default)]
    min_se_secs: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSip {
    #[serde(default)]
    udp: Vec<String>,
    #[serde(default)]
    tcp: Vec<String>,
    #[serde(default)]
    tls: Vec<String>,
    #[serde(default)]
    ws: Vec<String>,
    #[serde(default)]
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMedia {
    ip: String,
    ports: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForkAgent {
    #[serde(default)]
    socket: Option<PathBuf>,
    speech_server: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    client_ca: Option<PathBuf>,
    #[serde(default)]
    ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    next_hop: String,
    #[serde(default = "yes")]
    forking: bool,
    #[serde(default)]
    bind_sip: Option<String>,
    #[serde(default)]
    bind_media: Option<String>,
}

/// `[[bot]]`: a number answered by a voice bot (docs/sip-agent.md "Voice bots").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBot {
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    /// fork-agent `[[speech_server]]`; default `fork_agent.speech_server`.
    #[serde(default)]
    speech_server: Option<String>,
}

/// The pattern of `[[route]]` or `[[bot]]` number `i` (`what`): `pattern` or `prefix`.
fn pattern_of(
    what: &str,
    i: usize,
    pattern: &Option<String>,
    prefix: &Option<String>,
    errs: &mut Vec<String>,
) -> Option<RoutePattern> {
    match (pattern, prefix) {
        (Some(p), None) if !p.is_empty() => Some(RoutePattern::Pattern(p.clone())),
        (None, Some(p)) => Some(RoutePattern::Prefix(p.clone())),
        (Some(_), Some(_)) => {
            errs.push(format!("{what}[{i}]: set pattern or prefix, not both"));
            None
        }
        _ => {
            errs.push(format!(
                "{what}[{i}].pattern: missing (pattern = \"6XXX\" or prefix = \"6\")"
            ));
            None
        }
    }
}

fn yes() -> bool {
    true
}

/// TLS material (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Our certificate chain.
    pub cert: PathBuf,
    /// Our private key.
    pub key: PathBuf,
    /// When set, TLS clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// CA that outbound TLS next hops are verified against.
    pub ca: Option<PathBuf>,
}

/// Everything the shell needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sockets to listen on.
    pub listen: Vec<(Transport, SocketAddr)>,
    /// The B2BUA core's config.
    pub core: b2bua::Config,
    /// First and last port of the media range.
    pub media_ports: (u16, u16),
    /// fork-agent control socket.
    pub control_socket: PathBuf,
    /// The media layer's config.
    pub media: MediaConfig,
    /// TLS material, required when a TLS listener or next hop is configured.
    pub tls: Option<TlsSettings>,
    /// Connection, message and admin socket limits.
    pub limits: Limits,
    /// Call journal and restart reconciliation (`[state]`).
    pub state: StateSettings,
    /// `[admin] socket`: where `sip-agent ctl` asks, if anywhere.
    pub admin_socket: Option<PathBuf>,
    /// `[metrics] listen`: the Prometheus endpoint, if on.
    pub metrics_listen: Option<SocketAddr>,
    /// `[log] level`, re-applied on SIGHUP (the only section that reloads).
    pub log: daemon_ops::logging::LogSection,
}

fn parse_transport(s: &str) -> Option<Transport> {
    match s.to_ascii_lowercase().as_str() {
        "udp" => Some(Transport::Udp),
        "tcp" => Some(Transport::Tcp),
        "tls" => Some(Transport::Tls),
        "ws" => Some(Transport::Ws),
        _ => None,
    }
}

/// `host:port:transport`, host an IPv4 address, `[IPv6]` or a DNS name (resolved now).
fn parse_next_hop(s: &str) -> Result<Peer, String> {
    let (addr, transport) = s
        .rsplit_once(':')
        .ok_or("expected host:port:transport, e.g. 10.0.0.5:5060:udp")?;
    let transport = parse_transport(transport)
        .ok_or_else(|| format!("unknown transport {transport:?} (udp, tcp, tls, ws)"))?;
    if transport == Transport::Ws {
        return Err("ws next hops are not supported (WebSocket is inbound only)".into());
    }
    let addr = match addr.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => addr
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {addr:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr:?} resolves to no address"))?,
    };
    Ok(Peer { addr, transport })
}

fn concrete_ip(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address"))?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!(
            "{ip} cannot be advertised (unspecified or multicast)"
        ));
    }
    Ok(ip)
}

impl Settings {
    /// Parses and validates `text`.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        let mut errs = Vec::new();
        let mut listen = Vec::new();
        for (name, t, list) in [
            ("udp", Transport::Udp, &raw.sip.udp),
            ("tcp", Transport::Tcp, &raw.sip.tcp),
            ("tls", Transport::Tls, &raw.sip.tls),
            ("ws", Transport::Ws, &raw.sip.ws),
        ] {
            for (i, a) in list.iter().enumerate() {
                match a.parse::<SocketAddr>() {
                    Ok(sa) if sa.port() == 0 => {
                        errs.push(format!("sip.{name}[{i}]: port 0 cannot be advertised"))
                    }
                    Ok(sa) => listen.push((t, sa)),
                    Err(_) => errs.push(format!(
                        "sip.{name}[{i}]: {a:?} is not an ip:port socket address"
                    )),
                }
            }
        }
        if listen.is_empty() && errs.is_empty() {
            errs.push("sip: no listen address (set at least one of udp, tcp, tls, ws)".into());
        }
        let address = match &raw.sip.address {
            Some(a) => concrete_ip(a)
                .map_err(|e| errs.push(format!("sip.address: {e}")))
                .ok(),
            None => match listen.iter().find(|(_, a)| !a.ip().is_unspecified()) {
                Some((_, a)) => Some(a.ip()),
                None if !listen.is_empty() => {
                    errs.push(
                        "sip.address: required when every listen address is unspecified".into(),
                    );
                    None
                }
                None => None,
            },
        };
        let media_ip = concrete_ip(&raw.media.ip)
            .map_err(|e| errs.push(format!("media.ip: {e}")))
            .ok();
        let media_ports = parse_range(&raw.media.ports)
            .map_err(|e| errs.push(format!("media.ports: {e}")))
            .ok();
        if raw.fork_agent.speech_server.trim().is_empty() {
            errs.push(
                "fork_agent.speech_server: must name a [[speech_server]] of fork-agent".into(),
            );
        }
        let max_call_duration = match raw.calls.max_duration_secs {
            0 => None,
            s if (1..=MAX_DURATION_LIMIT_SECS).contains(&s) => {
                Some(Duration::from_secs(s.unsigned_abs()))
            }
            s => {
                errs.push(format!(
                    "calls.max_duration_secs: {s} is outside 0-{MAX_DURATION_LIMIT_SECS} \
                     (seconds; 0 turns the limit off)"
                ));
                None
            }
        };
        let min_se = match raw.calls.min_se_secs {
            None => MIN_SE_FLOOR,
            Some(s) if (MIN_SE_FLOOR.as_secs() as i64..=MIN_SE_LIMIT_SECS).contains(&s) => {
                Duration::from_secs(s.unsigned_abs())
            }
            Some(s) => {
                errs.push(format!(
                    "calls.min_se_secs: {s} is outside {}-{MIN_SE_LIMIT_SECS} (RFC 4028 §5: \
                     Min-SE is never below 90 seconds)",
                    MIN_SE_FLOOR.as_secs()
                ));
                MIN_SE_FLOOR
            }
        };
        let max_forks_per_call = match usize::try_from(raw.forking.max_per_call) {
            Ok(n @ 1..=MAX_FORKS_PER_CALL) => n,
            _ => {
                errs.push(format!(
                    "forking.max_per_call: {} is outside 1-{MAX_FORKS_PER_CALL} (1 is CUBE's \
                     one fork per call)",
                    raw.forking.max_per_call
                ));
                1
            }
        };
        let mut routes = Vec::new();
        if raw.routes.is_empty() && raw.bots.is_empty() {
            errs.push("route: at least one [[route]] (or [[bot]]) is needed".into());
        }
        let mut bots = Vec::new();
        for (i, b) in raw.bots.iter().enumerate() {
            let speech_server = b
                .speech_server
                .clone()
                .unwrap_or_else(|| raw.fork_agent.speech_server.clone());
            if speech_server.is_empty() {
                errs.push(format!("bot[{i}].speech_server: empty"));
            }
            if let Some(pattern) = pattern_of("bot", i, &b.pattern, &b.prefix, &mut errs) {
                bots.push(BotRoute {
                    pattern,
                    speech_server,
                });
            }
        }
        for (i, r) in raw.routes.iter().enumerate() {
            let pattern = pattern_of("route", i, &r.pattern, &r.prefix, &mut errs);
            let next_hop = parse_next_hop(&r.next_hop)
                .map_err(|e| errs.push(format!("route[{i}].next_hop: {e}")))
                .ok();
            let bind_sip = r.bind_sip.as_deref().map(concrete_ip).transpose();
            let bind_sip = bind_sip
                .map_err(|e| errs.push(format!("route[{i}].bind_sip: {e}")))
                .ok()
                .flatten();
            let bind_media = r.bind_media.as_deref().map(concrete_ip).transpose();
            let bind_media = bind_media
                .map_err(|e| errs.push(format!("route[{i}].bind_media: {e}")))
                .ok()
                .flatten();
            if let Some(hop) = next_hop {
                if hop.transport != Transport::Udp
                    && !listen.iter().any(|(t, _)| *t == hop.transport)
                {
                    errs.push(format!(
                        "route[{i}].next_hop: transport {:?} has no listener in [sip]",
                        hop.transport
                    ));
                }
                if hop.transport == Transport::Udp
                    && !listen.iter().any(|(t, _)| *t == Transport::Udp)
                {
                    errs.push(format!("route[{i}].next_hop: udp needs a sip.udp listener"));
                }
            }
            if let (Some(pattern), Some(next_hop), Some(a), Some(m)) =
                (pattern, next_hop, address, media_ip)
            {
                let bind = (bind_sip.is_some() || bind_media.is_some()).then(|| Bind {
                    sip_ip: bind_sip.unwrap_or(a),
                    media_ip: bind_media.unwrap_or(m),
                });
                routes.push(Route {
                    pattern,
                    next_hop,
                    forking: r.forking,
                    bind,
                });
            }
        }
        let needs_tls = listen.iter().any(|(t, _)| *t == Transport::Tls)
            || routes
                .iter()
                .any(|r| r.next_hop.transport == Transport::Tls);
        let tls = raw.tls.map(|t| TlsSettings {
            cert: t.cert,
            key: t.key,
            client_ca: t.client_ca,
            ca: t.ca,
        });
        if needs_tls && tls.is_none() {
            errs.push(
                "tls: a [tls] section (cert, key) is needed for TLS listeners or next hops".into(),
            );
        }
        if let Some(t) = &tls {
            for (name, p) in [("cert", Some(&t.cert)), ("key", Some(&t.key))]
                .into_iter()
                .chain([("client_ca", t.client_ca.as_ref()), ("ca", t.ca.as_ref())])
            {
                if let Some(p) = p {
                    if !p.is_file() {
                        errs.push(format!(
                            "tls.{name}: {} is not a readable file",
                            p.display()
                        ));
                    }
                }
            }
        }
        let security =
            security_policy(&raw.security, &raw.routes, &listen, tls.as_ref(), &mut errs);
        let limits = raw.limits.validate(&mut errs);
        let reconcile_grace = match raw.state.reconcile_grace_secs {
            s if (0..=RECONCILE_GRACE_LIMIT_SECS).contains(&s) => {
                Duration::from_secs(s.unsigned_abs())
            }
            s => {
                errs.push(format!(
                    "state.reconcile_grace_secs: {s} is outside 0-{RECONCILE_GRACE_LIMIT_SECS} \
                     (seconds after start before unknown flows are removed)"
                ));
                Duration::ZERO
            }
        };
        let state_dir = daemon_ops::config_file::state_dir(&raw.state.dir).unwrap_or_else(|e| {
            errs.push(e);
            None
        });
        if let Some(p) = raw.admin.socket.as_ref().filter(|p| !p.is_absolute()) {
            errs.push(format!(
                "admin.socket: {p:?} is not an absolute path (e.g. \"{DEFAULT_ADMIN_SOCKET}\"; leave it out for no admin socket)"
            ));
        }
        let (Some(address), Some(media_ip), Some(media_ports), Some(limits), true) =
            (address, media_ip, media_ports, limits, errs.is_empty())
        else {
            return Err(ConfigError::Invalid(errs));
        };
        let mut transport_ports = Vec::new();
        for (t, a) in &listen {
            if !transport_ports.iter().any(|(x, _)| x == t) {
                transport_ports.push((*t, a.port()));
            }
        }
        let sip_port = transport_ports.first().map(|(_, p)| *p).unwrap_or(5060);
        let mut media_ips = vec![media_ip];
        for ip in routes.iter().filter_map(|r| r.bind.map(|b| b.media_ip)) {
            if !media_ips.contains(&ip) {
                media_ips.push(ip);
            }
        }
        let state = StateSettings {
            dir: state_dir,
            reconcile: raw.state.reconcile,
            reconcile_grace,
            owner: Owner {
                ips: media_ips,
                first: media_ports.0,
                last: media_ports.1,
            },
        };
        Ok(Settings {
            log: raw.log,
            admin_socket: raw.admin.socket,
            metrics_listen: raw.metrics.listen(daemon_ops::metrics::SIP_AGENT_DEFAULT),
            listen,
            core: b2bua::Config {
                sip_addr: SocketAddr::new(address, sip_port),
                media_ip,
                routes,
                bots,
                transport_ports,
                security,
                min_se,
                max_call_duration,
                max_forks_per_call,
            },
            media_ports,
            control_socket: raw
                .fork_agent
                .socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            media: MediaConfig {
                speech_server: raw.fork_agent.speech_server,
            },
            tls,
            limits,
            state,
        })
    }
}

/// Parses and checks `[security]`: every entry is a CIDR or address, certificate names can be
/// verified (a TLS listener asking for client certificates, or a TLS next hop), and forking is
/// only on when somebody is allowed to ask for it.
fn security_policy(
    raw: &RawSecurity,
    routes: &[RawRoute],
    listen: &[(Transport, SocketAddr)],
    tls: Option<&TlsSettings>,
    errs: &mut Vec<String>,
) -> Policy {
    let mut cidrs = |field: &str, list: &[String]| -> Vec<Cidr> {
        list.iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.parse::<Cidr>()
                    .map_err(|e| errs.push(format!("security.{field}[{i}]: {s:?}: {e}")))
                    .ok()
            })
            .collect()
    };
    let trusted_proxies = cidrs("trusted_proxies", &raw.trusted_proxies);
    let controllers = cidrs("controllers", &raw.controllers);
    let mut names = Vec::new();
    for (i, n) in raw.controller_tls_names.iter().enumerate() {
        let n = n.trim();
        if n.is_empty() || n.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errs.push(format!(
                "security.controller_tls_names[{i}]: {n:?} is not a certificate name (subject CN \
                 or DNS SAN, e.g. \"cvp.example.com\")"
            ));
        } else {
            names.push(n.to_string());
        }
    }
    if !names.is_empty() {
        let tls_in = listen.iter().any(|(t, _)| *t == Transport::Tls)
            && tls.is_some_and(|t| t.client_ca.is_some());
        let tls_out = routes
            .iter()
            .any(|r| r.next_hop.to_ascii_lowercase().ends_with(":tls"));
        if !tls_in && !tls_out {
            errs.push(
                "security.controller_tls_names: no certificate to check (needs a sip.tls \
                 listener with tls.client_ca, so clients present certificates, or a tls next hop)"
                    .into(),
            );
        }
    }
    if let Some(i) = routes.iter().position(|r| r.forking) {
        if controllers.is_empty() && names.is_empty() && raw.controllers.is_empty() {
            errs.push(format!(
                "security.controllers: required when forking is enabled (route[{i}] has forking \
                 = true, the default): list the controller's addresses or CIDRs, e.g. \
                 controllers = [\"10.0.0.5\"], or set security.controller_tls_names, or set \
                 forking = false on every route"
            ));
        }
    }
    Policy {
        trusted_proxies,
        controllers,
        controller_tls_names: names,
    }
}

#[cfg(test)]
mod tests;
