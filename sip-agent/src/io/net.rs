//! SIP transports: UDP sockets, TCP and TLS connections (RFC 3261 §18), WebSocket connections
//! (RFC 7118).
//!
//! Role: listener and connection tasks turn bytes from the network into [`NetEvent`]s on one
//! bounded channel read by the task that owns the B2BUA; [`Net::send`] (called only by that
//! task) puts a core `Transmit` on the right socket or connection without awaiting.
//!
//! - UDP: one socket per configured address. A datagram leaves from the socket whose address the
//!   kernel would pick as source towards the destination (found once per destination IP with an
//!   unsent `connect`), so each leg of a call between two networks speaks from its own interface.
//! - TCP/TLS: one task per connection owns both halves; bytes are framed by
//!   [`StreamFramer`]. Connections are keyed by the remote address: requests to a peer reuse the
//!   connection it opened (§18.2.2), and an outbound one is opened on first use. A failed write or
//!   connect reports the transaction ([`NetEvent::SendFailed`]), so the core learns at once
//!   instead of at Timer B/F.
//! - WS: inbound only (SIP clients such as browsers connect to us); subprotocol `sip` is required
//!   (RFC 7118 §4.1) and each WebSocket message carries one SIP message (§5).
//! - Inbound TCP/TLS/WS connections pass one [`Gate`] (`[limits]`, docs/operations.md "Limits"):
//!   per-address and global connection limits across the three listener kinds, a deadline for
//!   the first complete SIP message (and an optional idle deadline), messages of at most
//!   `limits.max_message_bytes` (an oversize request gets a 413 before the close), and an accept
//!   loop that pauses on EMFILE. Client errors are logged by the gate, rate-limited.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use conn_limits::io::gate::{CloseCause, Conn, Gate, GateOptions, GateStats};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, trace, warn};

use crate::config::{Settings, TlsSettings};
use crate::core::framing::{Frame, FramingError, StreamFramer, PONG};
use crate::core::transaction::{Peer, Transmit, Transport, TxHandle};

/// Messages queued per connection before sends fail (a peer that stops reading must not grow
/// memory without bound).
pub const CONN_QUEUE: usize = 256;

/// Time allowed for an outbound TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest UDP datagram read (RFC 3261 §18.1.1 messages over UDP stay below the path MTU; 64 KiB
/// is the protocol ceiling).
const UDP_BUF: usize = 65_535;

/// Bytes read per `read` on a stream; a connection holds this plus at most one message.
const READ_CHUNK: usize = 8 * 1024;

/// After a 413 the rest of the oversize request is read and dropped for at most this long (and
/// [`DRAIN_MAX`] bytes) before the close, so the close is a FIN the client sees after the answer,
/// not a reset that may destroy it.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// See [`DRAIN_TIME`].
const DRAIN_MAX: usize = 1024 * 1024;

/// What the transport tasks tell the B2BUA task.
#[derive(Debug)]
pub enum NetEvent {
    /// A SIP message (or an unparseable datagram) from `peer`.
    Message {
        /// Sender.
        peer: Peer,
        /// Raw bytes.
        bytes: Vec<u8>,
    },
    /// An inbound connection is up; register its writer before its first message.
    Connected {
        /// Remote end.
        peer: Peer,
        /// Connection id (a later connection from the same address gets a new one).
        id: u64,
        /// Queue of the connection's writer.
        writer: mpsc::Sender<Outbound>,
    },
    /// A TLS connection's verified peer certificate names (subject CN, DNS SANs), sent after
    /// the handshake and before its first message (security.controller_tls_names).
    PeerNames {
        /// Remote end.
        peer: Peer,
        /// Connection id.
        id: u64,
        /// Names in the certificate; empty when it presented none.
        names: Vec<String>,
    },
    /// A connection ended.
    Closed {
        /// Remote end.
        peer: Peer,
        /// Its id.
        id: u64,
    },
    /// A transmit carrying this transaction could not be sent.
    SendFailed {
        /// The transaction.
        tx: TxHandle,
    },
}

/// One message for a connection's writer.
#[derive(Debug)]
pub struct Outbound {
    /// Serialised SIP message.
    pub bytes: Vec<u8>,
    /// Transaction to report if it cannot be written.
    pub tx: Option<TxHandle>,
}

/// The transports, owned by the B2BUA task.
pub struct Net {
    udp: Vec<Arc<UdpSocket>>,
    /// Destination IP → index in `udp`.
    udp_route: HashMap<IpAddr, usize>,
    conns: HashMap<Peer, (u64, mpsc::Sender<Outbound>)>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    events: mpsc::Sender<NetEvent>,
    tls_client: Option<tokio_rustls::TlsConnector>,
    gate: Option<Arc<GateStats>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing PEM certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

fn load_roots(path: &std::path::Path) -> Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .with_context(|| format!("adding a CA certificate from {}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

fn tls_server(t: &TlsSettings) -> Result<tokio_rustls::TlsAcceptor> {
    let certs = load_certs(&t.cert)?;
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .with_context(|| format!("reading the private key {}", t.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                load_roots(ca)?,
                provider(),
            )
            .build()
            .context("building the client certificate verifier (tls.client_ca)")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let cfg = builder
        .with_single_cert(certs, key)
        .context("tls.cert and tls.key do not form a usable pair")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

fn tls_client(t: &TlsSettings) -> Result<Option<tokio_rustls::TlsConnector>> {
    let Some(ca) = &t.ca else {
        return Ok(None);
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(load_roots(ca)?);
    // Present our certificate too, so a next hop that requires mutual TLS accepts us.
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .with_context(|| format!("reading the private key {}", t.key.display()))?;
    let cfg = builder
        .with_client_auth_cert(load_certs(&t.cert)?, key)
        .context("tls.cert and tls.key do not form a usable client identity")?;
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(cfg))))
}

impl Net {
    /// Binds every listener of `settings` and starts their tasks.
    #[allow(clippy::disallowed_methods)] // shell: listener tasks
    pub async fn start(settings: &Settings, events: mpsc::Sender<NetEvent>) -> Result<Net> {
        let next_id = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let acceptor = settings.tls.as_ref().map(tls_server).transpose()?;
        let tls_client = match &settings.tls {
            Some(t) => tls_client(t)?,
            None => None,
        };
        let mut udp = Vec::new();
        let mut streams: Vec<(TcpListener, Transport)> = Vec::new();
        for (t, addr) in &settings.listen {
            match t {
                Transport::Udp => {
                    let s = Arc::new(
                        UdpSocket::bind(addr)
                            .await
                            .with_context(|| format!("binding SIP UDP {addr} (sip.udp)"))?,
                    );
                    tokio::spawn(udp_reader(s.clone(), events.clone()));
                    udp.push(s);
                }
                Transport::Tcp | Transport::Tls | Transport::Ws => {
                    let l = TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding SIP {t:?} {addr}"))?;
                    if *t == Transport::Tls && acceptor.is_none() {
                        bail!("TLS listener without [tls] settings");
                    }
                    streams.push((l, *t));
                }
                Transport::Wss => bail!("WSS listeners are not supported"),
            }
            info!(transport = ?t, %addr, "listening");
        }
        let gate = if streams.is_empty() {
            None
        } else {
            let (listeners, kinds): (Vec<_>, Vec<_>) = streams.into_iter().unzip();
            let gate = Gate::new(GateOptions::new("sip"), listeners, settings.limits.sip);
            let stats = gate.stats();
            let events = events.clone();
            let next_id = next_id.clone();
            let max = settings.limits.max_message;
            tokio::spawn(gate.run(move |i, (stream, addr), conn| {
                let transport = kinds.get(i).copied().unwrap_or(Transport::Tcp);
                let id = next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(inbound(
                    stream,
                    Peer { addr, transport },
                    id,
                    acceptor.clone(),
                    events.clone(),
                    conn,
                    max,
                ));
            }));
            Some(stats)
        };
        Ok(Net {
            udp,
            udp_route: HashMap::new(),
            conns: HashMap::new(),
            next_id,
            events,
            tls_client,
            gate,
        })
    }

    /// Counters of the inbound connection gate (none without stream listeners).
    pub fn gate_stats(&self) -> Option<Arc<GateStats>> {
        self.gate.clone()
    }

    /// Registers a connection announced by [`NetEvent::Connected`].
    pub fn connected(&mut self, peer: Peer, id: u64, writer: mpsc::Sender<Outbound>) {
        self.conns.insert(peer, (id, writer));
    }

    /// Forgets a connection announced by [`NetEvent::Closed`] (unless a newer one replaced it).
    pub fn closed(&mut self, peer: Peer, id: u64) {
        if self.conns.get(&peer).is_some_and(|(i, _)| *i == id) {
            self.conns.remove(&peer);
        }
    }

    /// Sends a transmit without waiting. `Err` carries the transaction to report as failed (if
    /// the transmit had one).
    #[allow(clippy::disallowed_methods)] // shell: outbound connection tasks
    pub fn send(&mut self, t: Transmit) -> Result<(), Option<TxHandle>> {
        trace!(dest = ?t.dest, len = t.payload.len(), "send");
        match t.dest.transport {
            Transport::Udp => {
                let sock = self.udp_for(t.dest.addr).ok_or(t.tx)?;
                match sock.try_send_to(&t.payload, t.dest.addr) {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        warn!(dest = %t.dest.addr, error = %e, "UDP send failed");
                        Err(t.tx)
                    }
                }
            }
            Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => {
                if let Some((_, w)) = self.conns.get(&t.dest) {
                    return w
                        .try_send(Outbound {
                            bytes: t.payload,
                            tx: t.tx,
                        })
                        .map_err(|e| match e {
                            mpsc::error::TrySendError::Full(o)
                            | mpsc::error::TrySendError::Closed(o) => o.tx,
                        });
                }
                let connector = match t.dest.transport {
                    Transport::Tcp => None,
                    Transport::Tls => Some(self.tls_client.clone().ok_or_else(|| {
                        warn!(dest = %t.dest.addr, "no tls.ca configured for outbound TLS");
                        t.tx
                    })?),
                    // WebSocket peers connect to us; without their connection there is no path.
                    _ => return Err(t.tx),
                };
                let (w, rx) = mpsc::channel(CONN_QUEUE);
                let id = self
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Cannot fail: the receiver is alive and the queue empty.
                let _ = w.try_send(Outbound {
                    bytes: t.payload,
                    tx: t.tx,
                });
                self.conns.insert(t.dest, (id, w));
                tokio::spawn(connect(t.dest, id, connector, rx, self.events.clone()));
                Ok(())
            }
        }
    }

    fn udp_for(&mut self, dest: SocketAddr) -> Option<Arc<UdpSocket>> {
        if self.udp.len() <= 1 {
            return self.udp.first().cloned();
        }
        if let Some(i) = self.udp_route.get(&dest.ip()) {
            return self.udp.get(*i).cloned();
        }
        // Ask the kernel which source it would use: connect() on UDP sends nothing.
        let bind: SocketAddr = match dest {
            SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let src = std::net::UdpSocket::bind(bind)
            .and_then(|s| s.connect(dest).map(|_| s))
            .and_then(|s| s.local_addr())
            .ok()
            .map(|a| a.ip());
        let family_match =
            |s: &Arc<UdpSocket>| s.local_addr().is_ok_and(|a| a.is_ipv4() == dest.is_ipv4());
        let i = self
            .udp
            .iter()
            .position(|s| s.local_addr().is_ok_and(|a| Some(a.ip()) == src))
            .or_else(|| {
                self.udp.iter().position(|s| {
                    s.local_addr().is_ok_and(|a| a.ip().is_unspecified()) && family_match(s)
                })
            })
            .or_else(|| self.udp.iter().position(family_match))
            .unwrap_or(0);
        self.udp_route.insert(dest.ip(), i);
        self.udp.get(i).cloned()
    }
}

async fn udp_reader(sock: Arc<UdpSocket>, events: mpsc::Sender<NetEvent>) {
    let mut buf = vec![0u8; UDP_BUF];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let ev = NetEvent::Message {
                    peer: Peer {
                        addr: from,
                        transport: Transport::Udp,
                    },
                    bytes: buf[..n].to_vec(),
                };
                if events.send(ev).await.is_err() {
                    return;
                }
            }
            // ICMP errors surface here on Linux (ECONNREFUSED); they concern one peer only.
            Err(e) => debug!(error = %e, "UDP receive error"),
        }
    }
}

/// One admitted inbound connection: handshake (TLS or WebSocket), then the message loop. The
/// handshake counts against the first-message deadline too.
async fn inbound(
    stream: TcpStream,
    peer: Peer,
    id: u64,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    events: mpsc::Sender<NetEvent>,
    mut conn: Conn,
    max: usize,
) {
    let _ = stream.set_nodelay(true);
    let addr = peer.addr;
    let (w, rx) = mpsc::channel(CONN_QUEUE);
    match (peer.transport, acceptor) {
        (Transport::Tls, Some(a)) => {
            let hs = tokio::select! {
                r = tokio::time::timeout(CONNECT_TIMEOUT, a.accept(stream)) => r,
                () = conn.expired() => return,
            };
            match hs {
                Ok(Ok(tls)) => {
                    let names = super::cert_names::of_peer(tls.get_ref().1);
                    if announce(&events, peer, id, w).await
                        && announce_names(&events, peer, id, names).await
                    {
                        run_stream(tls, peer, id, rx, events, Some(conn), max).await
                    }
                }
                Ok(Err(e)) => {
                    conn.set_close_cause(CloseCause::Handshake);
                    debug!(%addr, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    conn.set_close_cause(CloseCause::Handshake);
                    debug!(%addr, "TLS handshake timed out");
                }
            }
        }
        (Transport::Ws, _) => {
            let hs = tokio::select! {
                r = accept_ws(stream, max) => r,
                () = conn.expired() => return,
            };
            match hs {
                Ok(ws) => {
                    if announce(&events, peer, id, w).await {
                        run_ws(ws, peer, id, rx, events, conn, max).await
                    }
                }
                Err(e) => {
                    conn.set_close_cause(CloseCause::Handshake);
                    debug!(%addr, error = %e, "WebSocket handshake failed");
                }
            }
        }
        _ => {
            if announce(&events, peer, id, w).await {
                run_stream(stream, peer, id, rx, events, Some(conn), max).await
            }
        }
    }
}

/// Resolves when the gate expires an inbound connection; never for outbound ones.
async fn expired(conn: &mut Option<Conn>) {
    match conn {
        Some(c) => c.expired().await,
        None => std::future::pending().await,
    }
}

async fn announce(
    events: &mpsc::Sender<NetEvent>,
    peer: Peer,
    id: u64,
    writer: mpsc::Sender<Outbound>,
) -> bool {
    events
        .send(NetEvent::Connected { peer, id, writer })
        .await
        .is_ok()
}

async fn announce_names(
    events: &mpsc::Sender<NetEvent>,
    peer: Peer,
    id: u64,
    names: Vec<String>,
) -> bool {
    events
        .send(NetEvent::PeerNames { peer, id, names })
        .await
        .is_ok()
}

async fn connect(
    peer: Peer,
    id: u64,
    tls: Option<tokio_rustls::TlsConnector>,
    mut rx: mpsc::Receiver<Outbound>,
    events: mpsc::Sender<NetEvent>,
) {
    let attempt = async {
        let s = TcpStream::connect(peer.addr).await?;
        let _ = s.set_nodelay(true);
        Ok::<_, std::io::Error>(s)
    };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(peer, id, &mut rx, &events, &e.to_string()).await,
        Err(_) => return fail(peer, id, &mut rx, &events, "connect timed out").await,
    };
    // Outbound connections go to configured next hops: not gated, the default size limit.
    let max = crate::core::framing::MAX_MESSAGE;
    match tls {
        None => run_stream(stream, peer, id, rx, events, None, max).await,
        Some(c) => {
            // The next hop is configured by address; its certificate must name that IP.
            let name = ServerName::IpAddress(peer.addr.ip().into());
            match tokio::time::timeout(CONNECT_TIMEOUT, c.connect(name, stream)).await {
                Ok(Ok(s)) => {
                    let names = super::cert_names::of_peer(s.get_ref().1);
                    if announce_names(&events, peer, id, names).await {
                        run_stream(s, peer, id, rx, events, None, max).await
                    }
                }
                Ok(Err(e)) => fail(peer, id, &mut rx, &events, &e.to_string()).await,
                Err(_) => fail(peer, id, &mut rx, &events, "TLS handshake timed out").await,
            }
        }
    }
}

async fn fail(
    peer: Peer,
    id: u64,
    rx: &mut mpsc::Receiver<Outbound>,
    events: &mpsc::Sender<NetEvent>,
    why: &str,
) {
    warn!(dest = %peer.addr, transport = ?peer.transport, error = why, "connection failed");
    finish(peer, id, rx, events).await;
}

/// Reports every queued transaction as failed and announces the close.
async fn finish(
    peer: Peer,
    id: u64,
    rx: &mut mpsc::Receiver<Outbound>,
    events: &mpsc::Sender<NetEvent>,
) {
    rx.close();
    while let Some(o) = rx.recv().await {
        if let Some(tx) = o.tx {
            let _ = events.send(NetEvent::SendFailed { tx }).await;
        }
    }
    let _ = events.send(NetEvent::Closed { peer, id }).await;
}

/// The message loop of one TCP/TLS connection. `conn` is the gate's link for inbound
/// connections (progress per message, expiry), `None` for outbound ones.
async fn run_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: Peer,
    id: u64,
    mut rx: mpsc::Receiver<Outbound>,
    events: mpsc::Sender<NetEvent>,
    mut conn: Option<Conn>,
    max: usize,
) {
    let (mut r, mut w) = tokio::io::split(stream);
    let mut framer = StreamFramer::with_max(max);
    let mut buf = vec![0u8; READ_CHUNK];
    // Keep-alive pings keep a connection alive only once it has sent a real message.
    let mut seen_message = false;
    let mut drain_after = false;
    'conn: loop {
        tokio::select! {
            n = r.read(&mut buf) => {
                let n = match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                framer.push(&buf[..n]);
                loop {
                    match framer.next_message() {
                        Ok(Some(Frame::Message(bytes))) => {
                            seen_message = true;
                            if let Some(c) = conn.as_mut() {
                                c.progress();
                            }
                            if events.send(NetEvent::Message { peer, bytes }).await.is_err() {
                                break 'conn;
                            }
                        }
                        Ok(Some(Frame::Ping)) => {
                            if seen_message {
                                if let Some(c) = conn.as_mut() {
                                    c.progress();
                                }
                            }
                            if w.write_all(PONG).await.is_err() {
                                break 'conn;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let cause = match e {
                                FramingError::TooLarge(_) => {
                                    if let Some(resp) = framer.too_large_response() {
                                        drain_after = w.write_all(&resp).await.is_ok();
                                    }
                                    CloseCause::TooLarge
                                }
                                _ => CloseCause::Malformed,
                            };
                            match conn.as_mut() {
                                // Inbound: the gate logs it, rate-limited.
                                Some(c) => {
                                    c.set_close_cause(cause);
                                    debug!(peer = %peer.addr, error = %e, "closing unframeable SIP stream");
                                }
                                None => warn!(peer = %peer.addr, error = %e, "closing unframeable SIP stream"),
                            }
                            break 'conn;
                        }
                    }
                }
            }
            out = rx.recv() => {
                let Some(o) = out else { break };
                if w.write_all(&o.bytes).await.is_err() {
                    if let Some(tx) = o.tx {
                        let _ = events.send(NetEvent::SendFailed { tx }).await;
                    }
                    break;
                }
            }
            () = expired(&mut conn) => break,
        }
    }
    let _ = w.shutdown().await;
    if drain_after {
        // Read (and drop) what the client still sends, so our close does not reset the
        // connection before it read the 413. Bounded in time and bytes.
        let drain = async {
            let mut total = 0;
            while total < DRAIN_MAX {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    }
    // The gate's slot is released only now that the socket is closed.
    drop(r);
    drop(w);
    finish(peer, id, &mut rx, &events).await;
    drop(conn);
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// RFC 7118 §4.1: the client offers the `sip` subprotocol and the server selects it; a client
/// that does not offer it is refused.
async fn accept_ws(stream: TcpStream, max: usize) -> Result<Ws> {
    // The closure's signature is tungstenite's `Callback`, so its error type is not ours to box.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let offered = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("sip"));
        if !offered {
            let mut e = ErrorResponse::new(Some("subprotocol sip required (RFC 7118)".into()));
            *e.status_mut() = StatusCode::BAD_REQUEST;
            return Err(e);
        }
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("sip"));
        Ok(resp)
    };
    // One SIP message per WebSocket message (RFC 7118 §5): the same limit as on streams. The
    // read buffer default (128 KiB) would cost more per idle connection than the message itself.
    let cfg = WebSocketConfig::default()
        .read_buffer_size(READ_CHUNK)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let ws = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(cfg)),
    )
    .await
    .context("WebSocket handshake timed out")??;
    Ok(ws)
}

/// One WebSocket connection; `max`: the message size limit the handshake configured.
async fn run_ws(
    mut ws: Ws,
    peer: Peer,
    id: u64,
    mut rx: mpsc::Receiver<Outbound>,
    events: mpsc::Sender<NetEvent>,
    mut conn: Conn,
    max: usize,
) {
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    use tokio_tungstenite::tungstenite::Error as WsError;
    loop {
        tokio::select! {
            m = ws.next() => {
                let bytes = match m {
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Err(WsError::Capacity(e))) => {
                        conn.set_close_cause(CloseCause::TooLarge);
                        debug!(peer = %peer.addr, error = %e, "closing WebSocket: message too large");
                        // The frame is refused from its length alone, so there are no headers
                        // to answer with a 413: the WebSocket's own answer is 1009 (RFC 6455
                        // §7.4.1).
                        let frame = CloseFrame {
                            code: CloseCode::Size,
                            reason: format!("SIP message larger than {max} bytes").into(),
                        };
                        let _ = ws.close(Some(frame)).await;
                        break;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue, // ping/pong are answered by tungstenite
                };
                conn.progress();
                if events.send(NetEvent::Message { peer, bytes }).await.is_err() {
                    break;
                }
            }
            out = rx.recv() => {
                let Some(o) = out else { break };
                // §5: SIP messages go as text frames when they are valid UTF-8.
                let msg = match String::from_utf8(o.bytes) {
                    Ok(s) => Message::text(s),
                    Err(e) => Message::binary(e.into_bytes()),
                };
                if ws.send(msg).await.is_err() {
                    if let Some(tx) = o.tx {
                        let _ = events.send(NetEvent::SendFailed { tx }).await;
                    }
                    break;
                }
            }
            () = conn.expired() => break,
        }
    }
    let _ = ws.close(None).await;
    drop(ws);
    finish(peer, id, &mut rx, &events).await;
    drop(conn);
}
