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

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use speech_proto::BotCommand;
use tokio::{net::UdpSocket, sync::mpsc};
use tracing::debug;

use crate::core::playout::{Output, Playout, PlayoutConfig, PlayoutStats, RtpStart};

/// Commands queued per playout before further ones are dropped (and counted): several
/// minutes of Twilio-sized `media` chunks; a bot that floods beyond it loses its newest audio,
/// never anyone else's.
pub const COMMAND_QUEUE: usize = 4096;

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
}

/// The service's side of one playout task.
#[derive(Debug)]
pub struct BotLink {
    /// The stream the bot talks on (its party hears it).
    pub stream_id: u32,
    tx: mpsc::Sender<BotCommand>,
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
}

/// Starts a playout for `stream_id`.
pub fn spawn(
    stream_id: u32,
    target: PlayoutTarget,
    events: mpsc::UnboundedSender<BotEvent>,
    counters: Arc<BotCounters>,
) -> BotLink {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let link = BotLink {
        stream_id,
        tx,
        counters: counters.clone(),
    };
    #[allow(clippy::disallowed_methods)] // io shell: one task per playout
    tokio::spawn(run(stream_id, target, rx, events, counters));
    link
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

async fn run(
    stream_id: u32,
    t: PlayoutTarget,
    mut rx: mpsc::Receiver<BotCommand>,
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
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        // The clock first: a bot flooding commands must not delay the packets on the wire.
        tokio::select! {
            biased;
            _ = sleep => core.handle_timeout(now()),
            cmd = rx.recv() => match cmd {
                Some(cmd) => core.handle_command(now(), cmd),
                None => break,
            },
        }
    }
    debug!(stream_id, stats = ?core.stats(), "playout ended");
}
