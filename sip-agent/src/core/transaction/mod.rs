//! SIP transaction layer, RFC 3261 §17 (with RFC 6026's Accepted states).
//!
//! Role: matches requests and responses to client and server transactions, retransmits over
//! unreliable transports, absorbs retransmissions, and times transactions out. Above it sits the
//! dialog/B2BUA layer (the "TU"), which only sees [`TxEvent`]s.
//!
//! Inputs (each takes `now`):
//! - [`TransactionLayer::handle_message`]: a parsed message from the network.
//! - [`TransactionLayer::send_request`], [`TransactionLayer::send_response`],
//!   [`TransactionLayer::send_stateless`]: TU actions.
//! - [`TransactionLayer::handle_timeout`]: timers due.
//! - [`TransactionLayer::handle_transport_error`]: the shell failed to send a `Transmit`.
//!
//! Outputs: [`TransactionLayer::poll_output`] (drain after every input) yields
//! [`Output::Transmit`] and [`Output::Event`]; [`TransactionLayer::poll_timeout`] gives the next
//! deadline.
//!
//! Keys (§17.1.3, §17.2.3): client transactions by top-Via branch + CSeq method; server
//! transactions by branch + sent-by + method, where ACK matches the INVITE. A CANCEL is its own
//! transaction ([`TransactionLayer::invite_for_cancel`] finds the INVITE it cancels). Server
//! keys also carry the source IP the request came from: Via is the sender's word, so without it
//! a third party that sends first with a peer's branch would have the peer's real request
//! absorbed as a "retransmission" (and its CANCEL match the peer's INVITE); docs/security.md.
//!
//! Deliberate simplifications, each marked where it happens:
//! - The INVITE server transaction sends `100 Trying` as soon as it is created (§17.2.1 allows it
//!   and a B2BUA forwarding to the next hop never answers within 200 ms).
//! - 2xx retransmission and ACK matching, a TU job in §13.3.1.4, is done by the server
//!   transaction in its RFC 6026 Accepted state, so the dialog layer never runs timers.
//! - Responses go back to the address the request came from (RFC 3581 symmetric response,
//!   what every NAT-facing SBC does) rather than to Via sent-by (§18.2.2).
//! - Timers are kept per transaction and `poll_timeout` scans them: fine for the few thousand
//!   live transactions of one agent; a heap is the next step if that grows.

pub mod timer;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rsip::{Method, Request, Response, SipMessage};
use tracing::trace;

use crate::core::message::{self, Keys};
pub use timer::{Timer, T1, T2, T4};

/// Transport a message travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP: unreliable, so this layer retransmits (§17.1.1.2).
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// SIP over WebSocket (RFC 7118).
    Ws,
    /// SIP over secure WebSocket.
    Wss,
}

impl Transport {
    /// Reliable transports get no request/response retransmissions and zero-length wait timers.
    pub fn is_reliable(self) -> bool {
        !matches!(self, Self::Udp)
    }
}

/// A remote address plus the transport to reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    /// Remote socket address.
    pub addr: SocketAddr,
    /// Transport.
    pub transport: Transport,
}

/// Opaque transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxHandle(pub u32);

/// Bytes the shell must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub dest: Peer,
    /// The serialised message.
    pub payload: Vec<u8>,
    /// Transaction that sent it, so a send failure can be reported back.
    pub tx: Option<TxHandle>,
}

/// Something the TU must know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxEvent {
    /// A new request created a server transaction (never a retransmission, never an ACK).
    Request {
        /// The new server transaction; answer with `send_response`.
        tx: TxHandle,
        /// Where it came from.
        from: Peer,
        /// The request.
        request: Request,
    },
    /// An ACK to a 2xx (a transaction of its own, §17.1.1.3). `tx` is the INVITE server
    /// transaction it acknowledged, `None` if no such transaction was found (late ACK).
    Ack {
        /// Acknowledged INVITE server transaction.
        tx: Option<TxHandle>,
        /// Where it came from.
        from: Peer,
        /// The ACK.
        request: Request,
    },
    /// A response for a client transaction (2xx retransmissions included, so the TU re-ACKs).
    Response {
        /// Client transaction.
        tx: TxHandle,
        /// The response.
        response: Response,
    },
    /// Timer B, F or H fired, or Timer L fired without an ACK to our 2xx (§13.3.1.4: the TU
    /// should then end the dialog with BYE).
    Timeout {
        /// Transaction that timed out.
        tx: TxHandle,
        /// Which timer.
        timer: Timer,
    },
    /// The shell reported a send failure for this transaction (§17.1.4, §17.2.4).
    TransportError {
        /// Affected transaction.
        tx: TxHandle,
    },
    /// The transaction is gone; its handle will not appear again.
    Terminated {
        /// Finished transaction.
        tx: TxHandle,
    },
}

/// Everything `poll_output` can return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send bytes.
    Transmit(Transmit),
    /// Tell the TU.
    Event(TxEvent),
}

/// API misuse by the TU (protocol failures are events, not errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The handle does not name a live transaction.
    #[error("unknown transaction")]
    UnknownTransaction,
    /// The message lacks a top Via with a `z9hG4bK` branch or a readable CSeq.
    #[error("message has no usable Via branch or CSeq")]
    MissingKeys,
    /// A client transaction with the same branch and method already exists.
    #[error("duplicate transaction key")]
    DuplicateKey,
    /// ACK is not sent through a client transaction (§17.1.1.3); use `send_stateless`.
    #[error("ACK is sent statelessly")]
    AckNotATransaction,
    /// `send_response` on a client transaction or after the final response.
    #[error("transaction cannot send this response in its state")]
    InvalidState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InviteClient,
    NonInviteClient,
    InviteServer,
    NonInviteServer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Calling,
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    branch: String,
    /// ACK is stored as INVITE so that it matches its INVITE (§17.2.3).
    method: String,
    /// Empty for client transactions (§17.1.3 does not use sent-by).
    sent_by: String,
    /// Server transactions: the IP the request came from (see module doc). `None` for client
    /// transactions.
    source: Option<IpAddr>,
}

impl Key {
    fn new(k: &Keys, source: Option<IpAddr>) -> Self {
        let method = if k.method == Method::Ack {
            Method::Invite
        } else {
            k.method
        };
        Self {
            branch: k.branch.clone(),
            method: method.to_string(),
            sent_by: if source.is_some() {
                k.sent_by.clone()
            } else {
                String::new()
            },
            source,
        }
    }

    fn client(k: &Keys) -> Self {
        Self::new(k, None)
    }

    fn server(k: &Keys, from: Peer) -> Self {
        Self::new(k, Some(from.addr.ip().to_canonical()))
    }
}

#[derive(Debug)]
struct Tx {
    kind: Kind,
    state: State,
    key: Key,
    peer: Peer,
    keys: Keys,
    /// Client: the request to retransmit. Server: unused.
    request_bytes: Vec<u8>,
    /// Server: last response sent, for retransmission.
    last_response: Option<Vec<u8>>,
    /// INVITE client: ACK for a non-2xx final, resent on retransmitted finals.
    ack_bytes: Option<Vec<u8>>,
    /// INVITE server in Accepted: To tag of our 2xx, and whether its ACK arrived.
    accepted_to_tag: Option<String>,
    acked: bool,
    timers: [Option<Instant>; Timer::COUNT],
    interval: Duration,
}

impl Tx {
    fn set(&mut self, t: Timer, at: Instant) {
        self.timers[t.index()] = Some(at);
    }
    fn clear(&mut self, t: Timer) {
        self.timers[t.index()] = None;
    }
    fn reliable(&self) -> bool {
        self.peer.transport.is_reliable()
    }
}

/// The transaction layer: all client and server transactions of one agent.
#[derive(Debug, Default)]
pub struct TransactionLayer {
    txs: BTreeMap<TxHandle, Tx>,
    by_key: HashMap<Key, TxHandle>,
    next: u32,
    out: VecDeque<Output>,
}

impl TransactionLayer {
    /// An empty layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Number of live transactions.
    pub fn count(&self) -> usize {
        self.txs.len()
    }

    /// Next transmit or event. Drain until `None` after every `handle_*` and `send_*` call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Earliest timer deadline; re-read after every input.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.txs
            .values()
            .flat_map(|t| t.timers.iter().flatten())
            .min()
            .copied()
    }

    /// For debugging: the transaction and timer behind [`Self::poll_timeout`].
    pub fn timeout_reason(&self) -> Option<(TxHandle, Timer, Instant)> {
        self.txs
            .iter()
            .flat_map(|(h, t)| {
                Timer::ALL
                    .iter()
                    .filter_map(move |tm| t.timers[tm.index()].map(|at| (*h, *tm, at)))
            })
            .min_by_key(|(_, _, at)| *at)
    }

    fn alloc(&mut self) -> TxHandle {
        self.next = self.next.wrapping_add(1);
        while self.txs.contains_key(&TxHandle(self.next)) {
            self.next = self.next.wrapping_add(1);
        }
        TxHandle(self.next)
    }

    fn transmit(&mut self, dest: Peer, payload: Vec<u8>, tx: Option<TxHandle>) {
        self.out
            .push_back(Output::Transmit(Transmit { dest, payload, tx }));
    }

    fn event(&mut self, e: TxEvent) {
        self.out.push_back(Output::Event(e));
    }

    fn terminate(&mut self, h: TxHandle) {
        if let Some(tx) = self.txs.remove(&h) {
            self.by_key.remove(&tx.key);
            self.event(TxEvent::Terminated { tx: h });
        }
    }

    /// Feeds a message received from `from`.
    pub fn handle_message(&mut self, now: Instant, from: Peer, msg: SipMessage) {
        let Some(k) = message::keys(&msg) else {
            trace!("dropping message without transaction keys");
            return;
        };
        match msg {
            SipMessage::Request(req) => self.on_request(now, from, k, req),
            SipMessage::Response(resp) => self.on_response(now, k, resp),
        }
    }

    fn on_request(&mut self, now: Instant, from: Peer, k: Keys, req: Request) {
        let key = Key::server(&k, from);
        let found = self.by_key.get(&key).copied();
        if req.method == Method::Ack {
            self.on_ack(now, from, k, req, found);
            return;
        }
        if let Some(h) = found {
            // Retransmission (§17.2.1, §17.2.2): answer with the last response, never re-deliver.
            let Some(tx) = self.txs.get(&h) else { return };
            let resend = match (tx.kind, tx.state) {
                (Kind::NonInviteServer, State::Trying) => None,
                _ => tx.last_response.clone(),
            };
            let peer = tx.peer;
            trace!(?h, "request retransmission absorbed");
            if let Some(bytes) = resend {
                self.transmit(peer, bytes, Some(h));
            }
            return;
        }
        let h = self.alloc();
        let invite = req.method == Method::Invite;
        let mut tx = Tx {
            kind: if invite {
                Kind::InviteServer
            } else {
                Kind::NonInviteServer
            },
            state: if invite {
                State::Proceeding
            } else {
                State::Trying
            },
            key: key.clone(),
            peer: from,
            keys: k,
            request_bytes: Vec::new(),
            last_response: None,
            ack_bytes: None,
            accepted_to_tag: None,
            acked: false,
            timers: [None; Timer::COUNT],
            interval: T1,
        };
        if invite {
            // §17.2.1: 100 Trying straight away (see module doc).
            let trying = message::encode(&SipMessage::Response(message::response_to(
                &req, 100, None, None,
            )));
            tx.last_response = Some(trying.clone());
            self.transmit(from, trying, Some(h));
        }
        self.txs.insert(h, tx);
        self.by_key.insert(key, h);
        let _ = now;
        self.event(TxEvent::Request {
            tx: h,
            from,
            request: req,
        });
    }

    fn on_ack(&mut self, now: Instant, from: Peer, k: Keys, req: Request, found: Option<TxHandle>) {
        // ACK to a non-2xx shares the INVITE's branch (§17.1.1.3).
        if let Some(h) = found {
            if let Some(tx) = self.txs.get_mut(&h) {
                match tx.state {
                    State::Completed => {
                        tx.state = State::Confirmed;
                        tx.clear(Timer::G);
                        tx.clear(Timer::H);
                        if tx.reliable() {
                            self.terminate(h);
                        } else {
                            tx.set(Timer::I, now + T4);
                        }
                        return;
                    }
                    State::Confirmed => return,
                    // Some UAs reuse the INVITE branch for the 2xx ACK; treat it as one.
                    State::Accepted => {}
                    _ => return,
                }
            }
        }
        // ACK to a 2xx: new branch, matched by dialog identifiers to the Accepted transaction.
        let accepted = self.txs.iter_mut().find(|(_, t)| {
            t.state == State::Accepted
                && t.kind == Kind::InviteServer
                && t.keys.call_id == k.call_id
                && t.keys.cseq == k.cseq
                && t.keys.from_tag == k.from_tag
                && t.accepted_to_tag.is_some()
                && t.accepted_to_tag == k.to_tag
        });
        match accepted {
            Some((h, t)) => {
                let h = *h;
                if t.acked {
                    trace!(?h, "ACK retransmission absorbed");
                    return;
                }
                t.acked = true;
                t.clear(Timer::G);
                self.event(TxEvent::Ack {
                    tx: Some(h),
                    from,
                    request: req,
                });
            }
            None => self.event(TxEvent::Ack {
                tx: None,
                from,
                request: req,
            }),
        }
    }

    fn on_response(&mut self, now: Instant, k: Keys, resp: Response) {
        let Some(h) = self.by_key.get(&Key::client(&k)).copied() else {
            trace!(branch = %k.branch, "stray response dropped");
            return;
        };
        let Some(tx) = self.txs.get_mut(&h) else {
            return;
        };
        let code = resp.status_code.code();
        let provisional = (100..200).contains(&code);
        let success = (200..300).contains(&code);
        match (tx.kind, tx.state) {
            (Kind::InviteClient, State::Calling | State::Proceeding) => {
                tx.clear(Timer::A);
                if provisional {
                    tx.state = State::Proceeding;
                    tx.clear(Timer::B);
                } else if success {
                    tx.state = State::Accepted;
                    tx.clear(Timer::B);
                    tx.set(Timer::M, now + timer::t1x64());
                } else {
                    tx.state = State::Completed;
                    tx.clear(Timer::B);
                    let ack = build_ack(&tx.request_bytes, &resp);
                    let peer = tx.peer;
                    tx.ack_bytes = ack.clone();
                    let reliable = tx.reliable();
                    if !reliable {
                        tx.set(Timer::D, now + timer::TIMER_D);
                    }
                    if let Some(a) = ack {
                        self.transmit(peer, a, Some(h));
                    }
                    self.event(TxEvent::Response {
                        tx: h,
                        response: resp,
                    });
                    if reliable {
                        self.terminate(h);
                    }
                    return;
                }
                self.event(TxEvent::Response {
                    tx: h,
                    response: resp,
                });
            }
            (Kind::InviteClient, State::Accepted) => {
                if success {
                    self.event(TxEvent::Response {
                        tx: h,
                        response: resp,
                    });
                }
            }
            (Kind::InviteClient, State::Completed) => {
                if !provisional && !success {
                    if let Some(a) = tx.ack_bytes.clone() {
                        let peer = tx.peer;
                        self.transmit(peer, a, Some(h));
                    }
                }
            }
            (Kind::NonInviteClient, State::Trying | State::Proceeding) => {
                if provisional {
                    tx.state = State::Proceeding;
                } else {
                    tx.state = State::Completed;
                    tx.clear(Timer::E);
                    tx.clear(Timer::F);
                    let reliable = tx.reliable();
                    if !reliable {
                        tx.set(Timer::K, now + T4);
                    }
                    self.event(TxEvent::Response {
                        tx: h,
                        response: resp,
                    });
                    if reliable {
                        self.terminate(h);
                    }
                    return;
                }
                self.event(TxEvent::Response {
                    tx: h,
                    response: resp,
                });
            }
            _ => trace!(?h, code, "response absorbed"),
        }
    }

    /// Starts a client transaction for `req` (not ACK) towards `dest`. The request must carry a
    /// top Via with a fresh `z9hG4bK` branch (the TU builds Via, it knows its own address).
    pub fn send_request(
        &mut self,
        now: Instant,
        dest: Peer,
        req: Request,
    ) -> Result<TxHandle, TxError> {
        if req.method == Method::Ack {
            return Err(TxError::AckNotATransaction);
        }
        let msg = SipMessage::Request(req);
        let k = message::keys(&msg).ok_or(TxError::MissingKeys)?;
        if !k.branch.starts_with(message::BRANCH_COOKIE) {
            return Err(TxError::MissingKeys);
        }
        let key = Key::client(&k);
        if self.by_key.contains_key(&key) {
            return Err(TxError::DuplicateKey);
        }
        let invite = k.method == Method::Invite;
        let bytes = message::encode(&msg);
        let h = self.alloc();
        let mut tx = Tx {
            kind: if invite {
                Kind::InviteClient
            } else {
                Kind::NonInviteClient
            },
            state: if invite {
                State::Calling
            } else {
                State::Trying
            },
            key: key.clone(),
            peer: dest,
            keys: k,
            request_bytes: bytes.clone(),
            last_response: None,
            ack_bytes: None,
            accepted_to_tag: None,
            acked: false,
            timers: [None; Timer::COUNT],
            interval: T1,
        };
        if !dest.transport.is_reliable() {
            tx.set(if invite { Timer::A } else { Timer::E }, now + T1);
        }
        tx.set(
            if invite { Timer::B } else { Timer::F },
            now + timer::t1x64(),
        );
        self.txs.insert(h, tx);
        self.by_key.insert(key, h);
        self.transmit(dest, bytes, Some(h));
        Ok(h)
    }

    /// Sends a response on server transaction `tx`.
    pub fn send_response(
        &mut self,
        now: Instant,
        h: TxHandle,
        resp: Response,
    ) -> Result<(), TxError> {
        let tx = self.txs.get_mut(&h).ok_or(TxError::UnknownTransaction)?;
        let code = resp.status_code.code();
        let provisional = (100..200).contains(&code);
        let success = (200..300).contains(&code);
        let to_tag = message::keys(&SipMessage::Response(resp.clone())).and_then(|k| k.to_tag);
        let bytes = message::encode(&SipMessage::Response(resp));
        let reliable = tx.reliable();
        let peer = tx.peer;
        match (tx.kind, tx.state) {
            (Kind::InviteServer, State::Proceeding) => {
                tx.last_response = Some(bytes.clone());
                if success {
                    // RFC 6026 Accepted; 2xx retransmitted on every transport (§13.3.1.4 makes
                    // no exception for reliable ones) until the ACK or Timer L.
                    tx.state = State::Accepted;
                    tx.accepted_to_tag = to_tag;
                    tx.interval = T1;
                    tx.set(Timer::G, now + T1);
                    tx.set(Timer::L, now + timer::t1x64());
                } else if !provisional {
                    tx.state = State::Completed;
                    tx.interval = T1;
                    if !reliable {
                        tx.set(Timer::G, now + T1);
                    }
                    tx.set(Timer::H, now + timer::t1x64());
                }
            }
            (Kind::NonInviteServer, State::Trying | State::Proceeding) => {
                tx.last_response = Some(bytes.clone());
                if provisional {
                    tx.state = State::Proceeding;
                } else {
                    tx.state = State::Completed;
                    if reliable {
                        self.transmit(peer, bytes, Some(h));
                        self.terminate(h);
                        return Ok(());
                    }
                    tx.set(Timer::J, now + timer::t1x64());
                }
            }
            _ => return Err(TxError::InvalidState),
        }
        self.transmit(peer, bytes, Some(h));
        Ok(())
    }

    /// Sends a message outside any transaction: the ACK for a 2xx (§17.1.1.3 / §13.2.2.4).
    pub fn send_stateless(&mut self, dest: Peer, msg: &SipMessage) {
        self.transmit(dest, message::encode(msg), None);
    }

    /// The INVITE server transaction a received CANCEL targets (§9.2: same branch, same
    /// sent-by, method INVITE), if the CANCEL came `from` the IP the INVITE came from.
    pub fn invite_for_cancel(&self, cancel: &Request, from: Peer) -> Option<TxHandle> {
        let mut k = message::keys(&SipMessage::Request(cancel.clone()))?;
        k.method = Method::Invite;
        let h = *self.by_key.get(&Key::server(&k, from))?;
        let tx = self.txs.get(&h)?;
        (tx.kind == Kind::InviteServer).then_some(h)
    }

    /// True while server transaction `h` can still send a final response.
    pub fn can_respond(&self, h: TxHandle) -> bool {
        self.txs.get(&h).is_some_and(|t| {
            matches!(
                (t.kind, t.state),
                (Kind::InviteServer, State::Proceeding)
                    | (Kind::NonInviteServer, State::Trying | State::Proceeding)
            )
        })
    }

    /// The shell could not send a transmit of `h`: report and terminate (§17.1.4, §17.2.4).
    pub fn handle_transport_error(&mut self, _now: Instant, h: TxHandle) {
        if self.txs.contains_key(&h) {
            self.event(TxEvent::TransportError { tx: h });
            self.terminate(h);
        }
    }

    /// Fires every timer due at `now`. A call with nothing due does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<(TxHandle, Timer)> = self
            .txs
            .iter()
            .flat_map(|(h, t)| {
                Timer::ALL
                    .iter()
                    .filter(move |tm| t.timers[tm.index()].is_some_and(|at| at <= now))
                    .map(move |tm| (*h, *tm))
            })
            .collect();
        for (h, tm) in due {
            self.fire(now, h, tm);
        }
    }

    fn fire(&mut self, now: Instant, h: TxHandle, tm: Timer) {
        let Some(tx) = self.txs.get_mut(&h) else {
            return;
        };
        if tx.timers[tm.index()].is_none() {
            return; // cleared by an earlier timer in the same batch
        }
        tx.clear(tm);
        match tm {
            Timer::A | Timer::E => {
                // A doubles without bound (§17.1.1.2); E caps at T2, and in Proceeding it
                // retransmits every T2 (§17.1.2.2).
                tx.interval = if tm == Timer::E && tx.state == State::Proceeding {
                    T2
                } else if tm == Timer::E {
                    (tx.interval * 2).min(T2)
                } else {
                    tx.interval * 2
                };
                let at = now + tx.interval;
                tx.set(tm, at);
                let (peer, bytes) = (tx.peer, tx.request_bytes.clone());
                self.transmit(peer, bytes, Some(h));
            }
            Timer::G => {
                tx.interval = (tx.interval * 2).min(T2);
                let at = now + tx.interval;
                tx.set(Timer::G, at);
                if let Some(bytes) = tx.last_response.clone() {
                    let peer = tx.peer;
                    self.transmit(peer, bytes, Some(h));
                }
            }
            Timer::B | Timer::F | Timer::H => {
                self.event(TxEvent::Timeout { tx: h, timer: tm });
                self.terminate(h);
            }
            Timer::L => {
                if !tx.acked {
                    self.event(TxEvent::Timeout { tx: h, timer: tm });
                }
                self.terminate(h);
            }
            Timer::D | Timer::I | Timer::J | Timer::K | Timer::M => self.terminate(h),
        }
    }
}

/// ACK for a non-2xx final response (§17.1.1.3): Request-URI, Call-ID, From, CSeq number and the
/// single top Via of the INVITE; To from the response; Route from the INVITE.
fn build_ack(invite_bytes: &[u8], resp: &Response) -> Option<Vec<u8>> {
    use rsip::Header;
    let SipMessage::Request(inv) = message::parse(invite_bytes).ok()? else {
        return None;
    };
    let mut headers = rsip::Headers::default();
    let mut via_done = false;
    for h in inv.headers.iter() {
        match h {
            Header::Via(_) if !via_done => {
                via_done = true;
                headers.push(h.clone());
            }
            Header::MaxForwards(_) | Header::From(_) | Header::CallId(_) | Header::Route(_) => {
                headers.push(h.clone())
            }
            Header::CSeq(c) => {
                let seq = rsip::headers::ToTypedHeader::typed(c).ok()?.seq;
                headers.push(Header::CSeq(
                    rsip::typed::CSeq {
                        seq,
                        method: Method::Ack,
                    }
                    .into(),
                ));
            }
            _ => {}
        }
    }
    let to = resp
        .headers
        .iter()
        .find(|h| matches!(h, Header::To(_)))?
        .clone();
    headers.push(to);
    Some(message::encode(&SipMessage::Request(Request {
        method: Method::Ack,
        uri: inv.uri.clone(),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    })))
}

#[cfg(test)]
mod tests;
