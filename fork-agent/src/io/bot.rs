//! Playout tasks: one per fork with return audio (docs/speech-protocol.md §16), around the
//! sans-IO [`Playout`] core.
//!
//! Inputs: [`BotCommand`]s from the stream service (what the connection's dialect read from the
//! server), in order, on a bounded queue; the core's timer. Outputs: RTP datagrams sent from the
//! flow's anchored address (the user-space fallback's socket bound there, so the caller sees
//! the bot's audio come from the address it sends to, RFC 4961 symmetric RTP) to the party, and
//! [`BotEvent`]s back to the service (marks played). A UDP socket rather than AF_XDP TX: the
//! kernel's stack resolves the neighbour and checksums, and 50 packets a second per call is
//! nothing a socket cannot carry. The task ends when the service drops its [`BotLink`] (fork
//! stopped), after which nothing more is sent.
//!
//! Inject mode (the flow is relayed by the kernel): before a talkspurt the task asks the agent,
//! which owns the `FLOWS` map, to stop the relay ([`InjectRequest::TakeOver`]) and waits for its
//! answer; after it, and when the task ends, it hands the stream back
//! ([`InjectRequest::HandBack`]). So the relay and the bot never send on the stream at once.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use speech_proto::BotCommand;
use tokio::{
    net::UdpSocket,
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use crate::core::playout::{
    Output, Playout, PlayoutConfig, PlayoutStats, Relayed, RtpStart, StreamPosition,
};

/// Commands queued per playout before further ones are dropped (and counted): several
/// minutes of Twilio-sized `media` chunks; a bot that floods beyond it loses its newest audio,
/// never anyone else's.
pub const COMMAND_QUEUE: usize = 4096;

/// Party audio frames queued per mixing playout: the fork delivers one per packet time, so a
/// few cover any scheduling hiccup; beyond them the newest is dropped.
const PARTY_QUEUE: usize = 8;

/// How long a playout waits for the agent to stop the relay before it drops the talkspurt
/// rather than talk over the relay.
const TAKE_OVER_TIMEOUT: Duration = Duration::from_millis(500);

/// What an inject-mode playout asks of the agent (the owner of the `FLOWS` map).
#[derive(Debug)]
pub enum InjectRequest {
    /// Stop relaying on `flow` and say where the relayed stream stood (or why not).
    TakeOver {
        flow: SocketAddr,
        reply: oneshot::Sender<Result<Option<Relayed>, String>>,
    },
    /// Relay on `flow` again, continuing the stream from `at`.
    HandBack {
        flow: SocketAddr,
        at: StreamPosition,
    },
}

/// Where an inject-mode playout talks: the relayed flow, and the agent that switches it.
#[derive(Debug, Clone)]
pub struct InjectTo {
    /// `local` of the flow whose relay the bot replaces while it talks.
    pub flow: SocketAddr,
    /// The agent's queue.
    pub agent: mpsc::Sender<InjectRequest>,
}

/// What a playout reports to the stream service.
#[derive(Debug)]
pub enum BotEvent {
    /// Everything before the bot's mark was played (or cleared).
    MarkPlayed {
        /// The stream the bot talks on.
        stream_id: u32,
        /// The mark's name.
        name: String,
    },
}

/// Counters of all playouts (show counters, metrics).
#[derive(Debug, Default)]
pub struct BotCounters {
    /// RTP packets sent.
    pub packets: AtomicU64,
    /// Of them, silence while the bot was silent.
    pub silence_packets: AtomicU64,
    /// Sends the socket refused.
    pub send_errors: AtomicU64,
    /// Commands dropped because a playout's queue was full.
    pub commands_dropped: AtomicU64,
    /// Samples dropped because a playout's buffer was full.
    pub samples_dropped: AtomicU64,
    /// Inject mode: streams taken over from the kernel relay, and handed back to it.
    pub take_overs: AtomicU64,
    pub hand_backs: AtomicU64,
    /// Inject mode: talkspurts dropped because the relay could not be stopped.
    pub take_over_failures: AtomicU64,
}

impl BotCounters {
    /// `show_counters`' `return_audio` object.
    pub fn json(&self) -> serde_json::Value {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "packets": v(&self.packets),
            "silence_packets": v(&self.silence_packets),
            "send_errors": v(&self.send_errors),
            "commands_dropped": v(&self.commands_dropped),
            "samples_dropped": v(&self.samples_dropped),
            "take_overs": v(&self.take_overs),
            "hand_backs": v(&self.hand_backs),
            "take_over_failures": v(&self.take_over_failures),
        })
    }
}

/// Where and how one playout sends.
#[derive(Debug)]
pub struct PlayoutTarget {
    /// Socket bound to the flow's anchored address.
    pub socket: Arc<UdpSocket>,
    /// The party.
    pub dst: SocketAddr,
    /// Buffering and pacing.
    pub cfg: PlayoutConfig,
    /// The RTP stream's identity and law.
    pub rtp: RtpStart,
    /// Inject mode: the relayed flow the bot takes over while it talks.
    pub inject: Option<InjectTo>,
}

/// The service's side of one playout task.
#[derive(Debug)]
pub struct BotLink {
    /// The stream the bot talks on (its party hears it).
    pub stream_id: u32,
    /// Mix mode: the flow whose forked audio is summed into the bot's.
    pub mix_from: Option<SocketAddr>,
    tx: mpsc::Sender<BotCommand>,
    party: mpsc::Sender<Vec<u8>>,
    counters: Arc<BotCounters>,
}

impl BotLink {
    /// Queues a command; a full queue drops it (counted).
    pub fn send(&self, cmd: BotCommand) {
        if self.tx.try_send(cmd).is_err() {
            self.counters
                .commands_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Mix mode: one forked frame of the relayed party (G.711 payload). A full queue drops it:
    /// the bot's audio goes on without it.
    pub fn party(&self, payload: &[u8]) {
        let _ = self.party.try_send(payload.to_vec());
    }
}

/// Starts a playout for `stream_id`.
pub fn spawn(
    stream_id: u32,
    target: PlayoutTarget,
    events: mpsc::UnboundedSender<BotEvent>,
    counters: Arc<BotCounters>,
) -> BotLink {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (party, party_rx) = mpsc::channel(PARTY_QUEUE);
    let link = BotLink {
        stream_id,
        mix_from: target
            .inject
            .as_ref()
            .filter(|_| target.cfg.mix)
            .map(|i| i.flow),
        tx,
        party,
        counters: counters.clone(),
    };
    #[allow(clippy::disallowed_methods)] // io shell: one task per playout
    tokio::spawn(run(stream_id, target, rx, party_rx, events, counters));
    link
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Asks the agent to stop the relay; `Err` if it refused or did not answer in time.
async fn take_over(to: &InjectTo) -> Result<Option<Relayed>, String> {
    let (reply, answer) = oneshot::channel();
    to.agent
        .send(InjectRequest::TakeOver {
            flow: to.flow,
            reply,
        })
        .await
        .map_err(|_| "the agent is gone".to_owned())?;
    match tokio::time::timeout(TAKE_OVER_TIMEOUT, answer).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("the agent dropped the request".into()),
        Err(_) => Err(format!("no answer in {TAKE_OVER_TIMEOUT:?}")),
    }
}

/// Hands the stream back, in order with this playout's take-overs: both go on the one agent
/// queue from this task, so a barge-in's next take-over can never overtake the hand-back
/// before it (which would clear the hold while the bot talks: two senders). The queue is
/// bounded; a hand-back must not be lost, so this waits for room.
async fn hand_back(to: &InjectTo, at: StreamPosition) {
    let flow = to.flow;
    if to
        .agent
        .send(InjectRequest::HandBack { flow, at })
        .await
        .is_err()
    {
        warn!(%flow, "hand-back not delivered: the agent is gone");
    }
}

fn decode(codec: speech_proto::Codec, payload: &[u8]) -> Vec<i16> {
    payload
        .iter()
        .map(|&b| match codec {
            speech_proto::Codec::Pcmu => speech_proto::ulaw_to_linear(b),
            speech_proto::Codec::Pcma => speech_proto::alaw_to_linear(b),
        })
        .collect()
}

async fn run(
    stream_id: u32,
    t: PlayoutTarget,
    mut rx: mpsc::Receiver<BotCommand>,
    mut party: mpsc::Receiver<Vec<u8>>,
    events: mpsc::UnboundedSender<BotEvent>,
    counters: Arc<BotCounters>,
) {
    let mut core = Playout::new(now(), t.cfg, t.rtp);
    let mut last = PlayoutStats::default();
    loop {
        while let Some(out) = core.poll_output() {
            match out {
                Output::Rtp(pkt) => match t.socket.try_send_to(pkt.as_bytes(), t.dst) {
                    Ok(_) => {
                        counters.packets.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        counters.send_errors.fetch_add(1, Ordering::Relaxed);
                        debug!(stream_id, dst = %t.dst, "bot RTP send failed: {e}");
                    }
                },
                Output::MarkPlayed(name) => {
                    let _ = events.send(BotEvent::MarkPlayed { stream_id, name });
                }
                Output::Talkspurt(talking) => debug!(stream_id, talking, "bot talkspurt"),
                Output::TakeOver => {
                    let Some(to) = &t.inject else {
                        // Only inject-mode playouts ask; answer so the core is not stuck.
                        core.handle_taken_over(now(), None);
                        continue;
                    };
                    match take_over(to).await {
                        Ok(relayed) => {
                            counters.take_overs.fetch_add(1, Ordering::Relaxed);
                            core.handle_taken_over(now(), relayed);
                        }
                        Err(e) => {
                            counters.take_over_failures.fetch_add(1, Ordering::Relaxed);
                            warn!(stream_id, flow = %to.flow, "bot talkspurt dropped: the relay could not be stopped: {e}");
                            core.handle_take_over_failed(now());
                            // The agent may have stopped the relay after all: restore it.
                            hand_back(to, core.position()).await;
                        }
                    }
                }
                Output::HandBack(at) => {
                    if let Some(to) = &t.inject {
                        counters.hand_backs.fetch_add(1, Ordering::Relaxed);
                        hand_back(to, at).await;
                    }
                }
            }
        }
        let s = core.stats();
        counters
            .samples_dropped
            .fetch_add(s.samples_dropped - last.samples_dropped, Ordering::Relaxed);
        counters
            .silence_packets
            .fetch_add(s.silence_packets - last.silence_packets, Ordering::Relaxed);
        last = s;
        let deadline = core.poll_timeout();
        let sleep = crate::io::sleep_until(deadline);
        // The clock first: a bot flooding commands must not delay the packets on the wire.
        tokio::select! {
            biased;
            _ = sleep => core.handle_timeout(now()),
            cmd = rx.recv() => match cmd {
                Some(cmd) => core.handle_command(now(), cmd),
                None => break,
            },
            Some(payload) = party.recv() => core.handle_party_audio(&decode(t.rtp.codec, &payload)),
        }
    }
    // The fork stopped: a bot holding the stream lets the relay have it back.
    if let (Some(at), Some(to)) = (core.release(), &t.inject) {
        counters.hand_backs.fetch_add(1, Ordering::Relaxed);
        hand_back(to, at).await;
    }
    debug!(stream_id, stats = ?core.stats(), "playout ended");
}
