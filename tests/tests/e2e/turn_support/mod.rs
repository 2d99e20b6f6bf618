//! Shared pieces of the turn_* tests: a turn-server running in the netns topology, coturn's
//! real clients (`turnutils_uclient`, `turnutils_peer`), a minimal STUN/TURN client built on
//! turn-core's codec for crafted requests, and the status view.
//!
//! ```text
//!  caller ns (client)         forker ns (turn-server)             callee ns (peer)
//!  10.77.1.2  ───────────── 10.77.1.1:3478 udp/tcp   10.77.2.1 ─── 10.77.2.2:3480 turnutils_peer
//!                            relay 10.77.2.1:24000-24099
//! ```
//!
//! Kept in `tests/tests/turn_support/` (a module each turn_* file includes) rather than in the
//! harness library, so the TURN tests own their helpers.

// Each test file uses a different subset.
// A test runner drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use turn_core::{
    stun::{long_term_key, Attribute, Class, Message, MessageBuilder, Method, TransactionId},
    RustCrypto,
};
use xdpfork_tests::{bin, Host, Topology};

pub const REALM: &str = "example.org";
pub const USER: &str = "turnuser";
pub const PASSWORD: &str = "cisco";
/// A second static user (quota and 441 tests).
pub const OTHER_USER: &str = "other";
pub const OTHER_PASSWORD: &str = "pw2";
pub const SERVER: &str = "10.77.1.1:3478";
pub const TLS_SERVER: &str = "10.77.1.1:5349";
pub const CLIENT_IP: &str = "10.77.1.2";
pub const PEER_IP: &str = "10.77.2.2";
pub const PEER_PORT: u16 = 3480;
pub const RELAY_IP: &str = "10.77.2.1";
/// The callee-side network the tests allow explicitly (private, so denied by default).
pub const ALLOW_TEST_PEERS: &str = "[peers]\nallowed = [\"10.77.0.0/16\"]\n";

/// turn-server in the forker namespace, optionally a turnutils_peer in the callee namespace.
pub struct TurnScenario {
    pub topo: Topology,
    pub socket: PathBuf,
}

impl TurnScenario {
    /// Builds the topology and starts turn-server with the base config plus `extra` TOML
    /// (whole sections, appended), then waits for its control socket.
    pub fn start(extra: &str) -> Result<TurnScenario> {
        TurnScenario::start_with("", extra)
    }

    /// Like [`TurnScenario::start`], with `auth_lines` added inside the `[auth]` section.
    pub fn start_with(auth_lines: &str, extra: &str) -> Result<TurnScenario> {
        TurnScenario::start_opts(auth_lines, extra, false)
    }

    /// Also listens for TLS on 10.77.1.1:5349 with a self-signed certificate made by openssl.
    pub fn start_tls(extra: &str) -> Result<TurnScenario> {
        TurnScenario::start_opts("", extra, true)
    }

    fn start_opts(auth_lines: &str, extra: &str, tls: bool) -> Result<TurnScenario> {
        require_coturn_tools()?;
        let mut topo = Topology::new()?;
        // coturn's turnutils_uclient picks channel numbers from RFC 5766's 0x4000-0x7FFF.
        let socket = spawn_turn_server(&mut topo, auth_lines, extra, tls, true)?;
        Ok(TurnScenario { topo, socket })
    }

    /// Starts coturn's UDP echo peer on 10.77.2.2:3480 in the callee namespace.
    pub fn start_peer(&mut self) -> Result<()> {
        let peer = which("turnutils_peer")?;
        self.topo.spawn(
            "turnutils_peer",
            Host::Callee,
            &peer,
            &["-L", PEER_IP, "-p", &PEER_PORT.to_string()],
        )?;
        // It binds at once; a short bounded wait avoids racing the first relayed packet.
        wait_until(Duration::from_secs(5), || {
            Ok(xdpfork_tests::ns_run(
                &self.topo.ns(Host::Callee),
                "ss",
                &["-Hlun", "sport", "=", &format!(":{PEER_PORT}")],
            )?
            .contains(&format!("{PEER_IP}:{PEER_PORT}")))
        })
        .context("turnutils_peer did not bind")
    }

    /// `turn-server status --json`, parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        turn_status(&self.socket)
    }

    /// Runs turnutils_uclient in the caller namespace against the server, bounded by
    /// `timeout`; returns (exit success, combined output).
    pub fn uclient(&self, args: &[&str], timeout: Duration) -> Result<(bool, String)> {
        let uclient = which("turnutils_uclient")?;
        let mut cmd = Command::new("timeout");
        cmd.arg(format!("{}", timeout.as_secs()))
            .arg("ip")
            .args(["netns", "exec", &self.topo.ns(Host::Caller)])
            .arg(uclient)
            .args(args)
            .args(["-L", CLIENT_IP, "10.77.1.1"]);
        let out = cmd.output().context("running turnutils_uclient")?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    /// A UDP socket in the caller namespace for crafted requests.
    pub fn client_socket(&self) -> Result<StunClient> {
        stun_client(&self.topo)
    }
}

/// `turn-server status --json` on `socket`, parsed.
pub fn turn_status(socket: &std::path::Path) -> Result<serde_json::Value> {
    let out = Command::new(bin("turn-server")?)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()?;
    if !out.status.success() {
        bail!(
            "turn-server status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A [`StunClient`] on a UDP socket in `topo`'s caller namespace, talking to [`SERVER`].
pub fn stun_client(topo: &Topology) -> Result<StunClient> {
    let sock = topo.udp_socket(Host::Caller, format!("{CLIENT_IP}:0").parse()?)?;
    sock.set_read_timeout(Some(Duration::from_secs(3)))?;
    Ok(StunClient {
        sock,
        server: SERVER.parse()?,
        next_txid: 1,
    })
}

/// Writes a turn-server config into `topo` and starts turn-server in the forker namespace:
/// the base config plus `extra` (whole sections, appended), `auth_lines` inside `[auth]`, TLS on
/// 10.77.1.1:5349 with an openssl self-signed certificate when `tls`, and `[compat]
/// rfc5766_channels` as given; then waits for its control socket, whose path it returns.
pub fn spawn_turn_server(
    topo: &mut Topology,
    auth_lines: &str,
    extra: &str,
    tls: bool,
    rfc5766_channels: bool,
) -> Result<PathBuf> {
    spawn_turn_server_env(topo, auth_lines, extra, tls, rfc5766_channels, &[])
}

/// [`spawn_turn_server`] with extra environment variables (e.g. `NOTIFY_SOCKET`).
pub fn spawn_turn_server_env(
    topo: &mut Topology,
    auth_lines: &str,
    extra: &str,
    tls: bool,
    rfc5766_channels: bool,
    env: &[(&str, &str)],
) -> Result<PathBuf> {
    let config = write_turn_config(topo, auth_lines, extra, tls, rfc5766_channels)?;
    start_turn_server(topo, &config, env)
}

/// Writes the test users file and a turn-server config into `topo` (see [`spawn_turn_server`]
/// for the arguments); returns the config's path.
pub fn write_turn_config(
    topo: &Topology,
    auth_lines: &str,
    extra: &str,
    tls: bool,
    rfc5766_channels: bool,
) -> Result<PathBuf> {
    write_turn_config_on(
        topo,
        (SERVER, RELAY_IP),
        auth_lines,
        extra,
        tls,
        rfc5766_channels,
    )
}

/// [`write_turn_config`] listening (UDP and TCP) on `listen` and relaying from `relay_ip`
/// instead of [`SERVER`] and [`RELAY_IP`].
pub fn write_turn_config_on(
    topo: &Topology,
    (listen, relay_ip): (&str, &str),
    auth_lines: &str,
    extra: &str,
    tls: bool,
    rfc5766_channels: bool,
) -> Result<PathBuf> {
    let (tls_listen, tls_section) = if tls {
        let (cert, key) = (topo.dir.join("turn.crt"), topo.dir.join("turn.key"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=turn.test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl (apt-get install openssl) to make a test certificate")?;
        if !out.status.success() {
            bail!("openssl failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        (
            format!("tls = [\"{TLS_SERVER}\"]"),
            format!(
                "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            ),
        )
    } else {
        (String::new(), String::new())
    };
    let users = topo.dir.join("turn-users");
    std::fs::write(
        &users,
        format!("# test users\nrealm={REALM}\n{USER}:{PASSWORD}\n{OTHER_USER}:{OTHER_PASSWORD}\n"),
    )?;
    let socket = turn_socket(topo);
    let config = topo.dir.join("turn-server.toml");
    std::fs::write(
        &config,
        format!(
            r#"realm = "{REALM}"

[listen]
udp = ["{listen}"]
tcp = ["{listen}"]
{tls_listen}

{tls_section}
[auth]
users_file = "{users}"
{auth_lines}

[relay]
ipv4 = "{relay_ip}"
min_port = 24000
max_port = 24099

[control]
socket = "{sock}"

[compat]
rfc5766_channels = {rfc5766_channels}

{extra}"#,
            users = users.display(),
            sock = socket.display(),
        ),
    )?;
    Ok(config)
}

/// The control socket a config written by [`write_turn_config`] names.
pub fn turn_socket(topo: &Topology) -> PathBuf {
    topo.dir.join("turn-server.sock")
}

/// Checks `config` with `turn-server check-config`, starts turn-server on it in the forker
/// namespace and waits for its control socket, whose path it returns.
pub fn start_turn_server(
    topo: &mut Topology,
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> Result<PathBuf> {
    let socket = turn_socket(topo);
    // Debug logs carry the lifecycle events (allocation, permission, channel) the tests
    // look for; a RUST_LOG of the caller's own wins.
    let filter = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| "info,turn_server=debug,turn_core=debug".to_owned());
    let server = bin("turn-server")?;
    let cfg = config.to_string_lossy().into_owned();
    let out = Command::new(&server)
        .args(["check-config", "--config", &cfg])
        .output()?;
    if !out.status.success() {
        bail!(
            "turn-server check-config rejected the test config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    topo.spawn_env(
        "turn-server",
        Host::Forker,
        &server,
        &["run", "--config", &cfg, "--log-pii"],
        &[&[("RUST_LOG", filter.as_str())], env].concat(),
    )?;
    topo.wait_for_path(&socket, "turn-server control socket", "turn-server")?;
    Ok(socket)
}

/// Polls `turn-server status --json` on a thread (every 50 ms, at most 30 s) while a client
/// runs; the handle yields whether `pred` ever held.
pub fn watch_status(
    socket: PathBuf,
    pred: impl Fn(&serde_json::Value) -> bool + Send + 'static,
) -> std::thread::JoinHandle<Result<bool>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let out = Command::new(bin("turn-server")?)
                .args(["status", "--json", "--socket"])
                .arg(&socket)
                .output()?;
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                if pred(&v) {
                    return Ok(true);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(false)
    })
}

/// What one channel round trip of the real client gave.
pub struct RoundTrip {
    /// `turn-server status --json` right after the client exited.
    pub status: serde_json::Value,
    /// Whether the status view matched the watch predicate while the client ran.
    pub seen: bool,
}

/// Runs turnutils_uclient with the test user's long-term credentials against the echo peer
/// (10.77.2.2:3480): `n` messages of `len` bytes over channels, `transport` options first
/// (none for UDP, `-t` for TCP, `-S -t -p 5349` for TLS), while `watch` polls the status view.
/// Checks what every transport must give: the client succeeded, every message and byte came
/// back, none was lost, and the server's traffic counters match in both directions.
pub fn channel_round_trip(
    s: &TurnScenario,
    transport: &[&str],
    n: u64,
    len: u64,
    watch: impl Fn(&serde_json::Value) -> bool + Send + 'static,
) -> Result<RoundTrip> {
    channel_round_trip_as(s, (USER, PASSWORD), transport, n, len, watch)
}

/// [`channel_round_trip`] with other long-term credentials (user, password).
pub fn channel_round_trip_as(
    s: &TurnScenario,
    (user, password): (&str, &str),
    transport: &[&str],
    n: u64,
    len: u64,
    watch: impl Fn(&serde_json::Value) -> bool + Send + 'static,
) -> Result<RoundTrip> {
    let watcher = watch_status(s.socket.clone(), watch);
    let (n_s, len_s) = (n.to_string(), len.to_string());
    let mut args = transport.to_vec();
    args.extend([
        "-u", user, "-w", password, "-e", PEER_IP, "-r", "3480", "-n", &n_s, "-l", &len_s, "-c",
    ]);
    let (ok, out) = s.uclient(&args, Duration::from_secs(60))?;
    let seen = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("status watcher panicked"))??;
    let status = s.status()?;
    if !ok {
        bail!(
            "uclient failed:\n{out}\nserver:\n{}",
            s.topo.log("turn-server")
        );
    }
    let stats = parse_uclient_stats(&out)?;
    assert_eq!(
        (stats.send_msgs, stats.recv_msgs),
        (n, n),
        "every message echoed back:\n{out}"
    );
    assert_eq!(stats.send_bytes, n * len, "{out}");
    assert_eq!(stats.recv_bytes, stats.send_bytes, "{out}");
    assert_eq!(stats.lost, 0, "{out}");
    // Payload bytes, without the 4-byte ChannelData header (or its stream padding).
    let t = &status["traffic"];
    assert_eq!(t["to_peer_packets"], n, "{status}");
    assert_eq!(t["to_peer_bytes"], n * len, "{status}");
    assert_eq!(t["from_peer_packets"], n, "{status}");
    assert_eq!(t["from_peer_bytes"], n * len, "{status}");
    Ok(RoundTrip { status, seen })
}

/// Runs `turn-server ARGS` with `stdin`; returns stdout, failing with stderr.
pub fn turn_cli(args: &[&str], stdin: &str) -> Result<String> {
    let mut child = Command::new(bin("turn-server")?)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running turn-server")?;
    std::io::Write::write_all(
        &mut child.stdin.take().context("piped stdin")?,
        stdin.as_bytes(),
    )?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "turn-server {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails with an actionable message instead of skipping when coturn's tools are missing.
pub fn require_coturn_tools() -> Result<()> {
    for tool in ["turnutils_uclient", "turnutils_peer"] {
        which(tool)?;
    }
    Ok(())
}

fn which(tool: &str) -> Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = PathBuf::from(dir).join(tool);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{tool} is not installed: `apt-get install coturn` (the tests need its client tools)")
}

/// Polls `f` every 50 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("condition not met within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// uclient's closing statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UclientStats {
    pub send_msgs: u64,
    pub recv_msgs: u64,
    pub send_bytes: u64,
    pub recv_bytes: u64,
    pub lost: u64,
}

/// Parses the last `tot_send_msgs=N, tot_recv_msgs=M` and `tot_send_bytes ~ N,
/// tot_recv_bytes ~ M` lines and `Total lost packets N` that turnutils_uclient prints at exit.
pub fn parse_uclient_stats(out: &str) -> Result<UclientStats> {
    fn num_after(line: &str, key: &str) -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        let digits: String = rest
            .trim_start_matches([' ', '~', '='])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }
    let mut msgs = None;
    let mut bytes = None;
    let mut lost = None;
    for line in out.lines() {
        if line.contains("tot_send_msgs=") && !line.contains("msz=") {
            msgs = num_after(line, "tot_send_msgs=").zip(num_after(line, "tot_recv_msgs="));
        }
        if line.contains("tot_send_bytes ~") && !line.contains("msz=") {
            bytes = num_after(line, "tot_send_bytes").zip(num_after(line, "tot_recv_bytes"));
        }
        if line.contains("Total lost packets") {
            lost = num_after(line, "Total lost packets");
        }
    }
    match (msgs, bytes, lost) {
        (Some((send_msgs, recv_msgs)), Some((send_bytes, recv_bytes)), Some(lost)) => {
            Ok(UclientStats {
                send_msgs,
                recv_msgs,
                send_bytes,
                recv_bytes,
                lost,
            })
        }
        _ => bail!("no statistics in turnutils_uclient output:\n{out}"),
    }
}

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub class: Class,
    pub code: Option<u16>,
    pub realm: Option<String>,
    pub nonce: Option<String>,
    /// Whether the response carried MESSAGE-INTEGRITY that verified under the request's key.
    pub integrity_ok: bool,
    pub has_integrity: bool,
}

/// Credentials for one request.
#[derive(Debug, Clone, Copy)]
pub struct Creds<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub nonce: &'a str,
}

/// A minimal STUN/TURN client over one UDP socket (one outstanding request at a time).
pub struct StunClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    next_txid: u32,
}

impl StunClient {
    /// Builds a request; with `creds`, USERNAME/REALM/NONCE and MESSAGE-INTEGRITY are added
    /// last (RFC 8489 §9.2.3).
    pub fn build(
        &mut self,
        method: Method,
        attrs: &[Attribute<'_>],
        creds: Option<Creds<'_>>,
    ) -> Result<(TransactionId, Vec<u8>)> {
        self.next_txid += 1;
        let mut id = [0x5Au8; 12];
        id[..4].copy_from_slice(&self.next_txid.to_be_bytes());
        id[4..8].copy_from_slice(&std::process::id().to_be_bytes());
        let txid = TransactionId(id);
        let mut b = MessageBuilder::new(Class::Request, method, txid);
        for a in attrs {
            b.add(a)?;
        }
        if let Some(c) = creds {
            b.add(&Attribute::Username(c.user))?;
            b.add(&Attribute::Realm(REALM))?;
            b.add(&Attribute::Nonce(c.nonce))?;
            let key = long_term_key(&RustCrypto, c.user, REALM, c.password);
            b.add_integrity(&key, &RustCrypto)?;
        }
        Ok((txid, b.finish()))
    }

    /// Sends raw bytes and waits (bounded) for the response to `txid`.
    pub fn exchange(
        &self,
        txid: TransactionId,
        bytes: &[u8],
        key_of: Option<Creds<'_>>,
    ) -> Result<Resp> {
        self.sock.send_to(bytes, self.server)?;
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e.into()),
            };
            let Ok(m) = Message::parse(&buf[..n]) else {
                continue;
            };
            if m.transaction_id() != txid {
                continue;
            }
            let key = key_of.map(|c| long_term_key(&RustCrypto, c.user, REALM, c.password));
            return Ok(Resp {
                class: m.class(),
                code: m.error_code()?.map(|(c, _)| c),
                realm: m.realm()?.map(str::to_owned),
                nonce: m.nonce()?.map(str::to_owned),
                has_integrity: m.has_integrity(),
                integrity_ok: key.is_some_and(|k| {
                    matches!(
                        m.check_integrity(&k, &RustCrypto),
                        turn_core::stun::IntegrityCheck::Valid(_)
                    )
                }),
            });
        }
        bail!("no response from {} within 3 s", self.server)
    }

    /// Builds, sends and waits.
    pub fn request(
        &mut self,
        method: Method,
        attrs: &[Attribute<'_>],
        creds: Option<Creds<'_>>,
    ) -> Result<Resp> {
        let (txid, bytes) = self.build(method, attrs, creds)?;
        self.exchange(txid, &bytes, creds)
    }

    /// The unauthenticated first round trip: 401 with REALM and NONCE (RFC 8489 §9.2.4).
    pub fn challenge(&mut self) -> Result<String> {
        let r = self.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)], None)?;
        if r.code != Some(401) || r.realm.as_deref() != Some(REALM) {
            bail!("expected 401 with realm {REALM}, got {r:?}");
        }
        r.nonce.context("401 without NONCE")
    }

    /// Challenge plus authenticated Allocate as `user`; returns the nonce and the response.
    pub fn allocate(&mut self, user: &str, password: &str) -> Result<(String, Resp)> {
        let nonce = self.challenge()?;
        let r = self.request(
            Method::ALLOCATE,
            &[Attribute::RequestedTransport(17)],
            Some(Creds {
                user,
                password,
                nonce: &nonce,
            }),
        )?;
        Ok((nonce, r))
    }
}

/// A ChannelData message (RFC 8656 §12.4), unpadded.
pub fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut p = channel.to_be_bytes().to_vec();
    p.extend_from_slice(&(data.len() as u16).to_be_bytes());
    p.extend_from_slice(data);
    p
}

/// fork-agent `show_counters` kernel counter `name`.
pub fn kernel_counter(s: &xdpfork_tests::Scenario, name: &str) -> Result<u64> {
    s.counters()?["kernel"][name]
        .as_u64()
        .with_context(|| format!("fork-agent show_counters has no kernel.{name}"))
}

/// fork-agent `show_turn` rows.
pub fn show_turn(s: &xdpfork_tests::Scenario) -> Result<Vec<serde_json::Value>> {
    let v = s.ctl(serde_json::json!({"v":1,"op":"show_turn"}))?;
    v.as_array().cloned().context("show_turn is not an array")
}

/// Waits (bounded: 10 s, 50 ms steps) until `pred` holds.
pub fn wait(what: &str, mut pred: impl FnMut() -> Result<bool>) -> Result<()> {
    wait_until(Duration::from_secs(10), &mut pred).with_context(|| format!("waiting for {what}"))
}

/// Allocate, CreatePermission and ChannelBind `channel` to `peer` as [`USER`]; returns the
/// nonce for later requests.
pub fn bind_channel(c: &mut StunClient, channel: u16, peer: SocketAddr) -> Result<String> {
    let (nonce, r) = c.allocate(USER, PASSWORD)?;
    if r.class != Class::Success {
        bail!("Allocate failed: {r:?}");
    }
    let creds = Creds {
        user: USER,
        password: PASSWORD,
        nonce: &nonce,
    };
    let r = c.request(
        Method::CREATE_PERMISSION,
        &[Attribute::XorPeerAddress(peer)],
        Some(creds),
    )?;
    if r.class != Class::Success {
        bail!("CreatePermission failed: {r:?}");
    }
    let r = c.request(
        Method::CHANNEL_BIND,
        &[
            Attribute::ChannelNumber(channel),
            Attribute::XorPeerAddress(peer),
        ],
        Some(creds),
    )?;
    if r.class != Class::Success {
        bail!("ChannelBind failed: {r:?}");
    }
    Ok(nonce)
}

/// `status.counters.errors_sent[code]`, 0 when absent.
pub fn errors_sent(status: &serde_json::Value, code: u16) -> u64 {
    status["counters"]["errors_sent"][code.to_string()]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn uclient_statistics_are_parsed() {
    let out = "0: : start_mclient: msz=1, tot_send_msgs=0, tot_recv_msgs=0, tot_send_bytes ~ 0, tot_recv_bytes ~ 0\n\
               3: : start_mclient: tot_send_msgs=20, tot_recv_msgs=19\n\
               3: : start_mclient: tot_send_bytes ~ 2000, tot_recv_bytes ~ 1900\n\
               3: : Total lost packets 1 (5.000000%), total send dropped 0 (0.000000%)\n";
    assert_eq!(
        parse_uclient_stats(out).expect("parses"),
        UclientStats {
            send_msgs: 20,
            recv_msgs: 19,
            send_bytes: 2000,
            recv_bytes: 1900,
            lost: 1
        }
    );
    assert!(parse_uclient_stats("ERROR: Cannot complete Allocation").is_err());
}
