//! The agent's side of return audio (docs/speech-protocol.md §16): a fork whose speech server
//! talks back gets a playout (io::bot) sending from the anchored address of the flow its
//! `return_audio` names. On a sink flow (endpoint mode) the playout owns the stream; on a
//! relayed flow (inject mode) it takes the stream over from the kernel relay per talkspurt and
//! hands it back after, through [`Agent::inject_request`]: the flow table holds the bot's hold
//! and numbering, so every write of the flow (a re-INVITE's replacement too) keeps them.

use rand::Rng as _;

use super::*;
use crate::core::flows::InjectChange;
use crate::core::playout::{Idle, PlayoutConfig, Relayed, RtpStart, MAX_PTIME_MS};
use crate::io::bot::{self, BotLink, InjectRequest, InjectTo, PlayoutTarget};

impl Agent {
    /// Refuses a fork whose return audio cannot be played, before anything changes.
    pub(super) fn check_return_audio(&self, spec: &control_api::ForkSpec) -> Result<()> {
        let Some(ra) = &spec.return_audio else {
            return Ok(());
        };
        let Some(flow) = self.orch.table().flow(&ra.flow) else {
            anyhow::bail!("return_audio.flow: no flow {}", ra.flow);
        };
        if flow.is_sink() && ra.mode == control_api::ReturnMode::Mix {
            anyhow::bail!(
                "return_audio.mode: {} is a sink flow (endpoint mode): there is no party to mix",
                ra.flow
            );
        }
        if ra.mode == control_api::ReturnMode::Mix
            && !spec.streams.iter().any(|s| s.flow == ra.flow)
        {
            // The mixer takes the party's audio from the fork.
            anyhow::bail!(
                "return_audio.mode: mix needs a stream of the fork on {} (the party it mixes in)",
                ra.flow
            );
        }
        if !(1..=MAX_PTIME_MS).contains(&spec.ptime_ms) {
            anyhow::bail!(
                "return_audio: ptime_ms {} is outside 1-{MAX_PTIME_MS}",
                spec.ptime_ms
            );
        }
        if ra.payload_type.is_some_and(|pt| pt > 127) {
            anyhow::bail!("return_audio.payload_type: RTP payload types are 0-127");
        }
        if self.fallback.socket(&flow.src).is_none() {
            anyhow::bail!(
                "return_audio.flow: no socket bound to {} to send from",
                flow.src
            );
        }
        Ok(())
    }

    /// Starts the playout of `fork`'s return audio, if it has any (its checks passed).
    pub(super) fn playout_for(&self, fork: &control_api::Fork) -> Result<Option<BotLink>> {
        let Some(ra) = fork.spec.return_audio else {
            return Ok(None);
        };
        let stream_id = fork
            .streams
            .iter()
            .zip(&fork.spec.streams)
            .find(|(_, s)| s.channel == ra.to)
            .map(|((id, _), _)| *id)
            .context("return_audio.to: the fork has no stream of that party")?;
        let flow = self
            .orch
            .table()
            .flow(&ra.flow)
            .with_context(|| format!("return_audio.flow: no flow {}", ra.flow))?;
        let socket = self
            .fallback
            .socket(&flow.src)
            .with_context(|| format!("return_audio.flow: no socket bound to {}", flow.src))?;
        // RFC 3550 §5.1: SSRC, first sequence number and timestamp are random.
        #[allow(clippy::disallowed_methods)] // io shell: the RTP stream's random start
        let mut rng = rand::thread_rng();
        let rtp = RtpStart {
            ssrc: rng.gen(),
            seq: rng.gen(),
            timestamp: rng.gen(),
            payload_type: ra
                .payload_type
                .unwrap_or_else(|| fork.spec.codec.payload_type()),
            codec: fork.spec.codec,
        };
        let inject = (!flow.is_sink()).then(|| InjectTo {
            flow: ra.flow,
            agent: self.inject_tx.clone(),
        });
        let cfg = PlayoutConfig {
            ptime: Duration::from_millis(u64::from(fork.spec.ptime_ms)),
            max_buffer: Duration::from_millis(u64::from(self.return_audio.max_buffer_ms)),
            prebuffer: Duration::from_millis(u64::from(self.return_audio.prebuffer_ms)),
            // Endpoint mode: the caller expects a steady stream; inject mode: the relay has it.
            idle: if inject.is_some() {
                Idle::HandBack
            } else {
                Idle::Silence
            },
            mix: ra.mode == control_api::ReturnMode::Mix,
        };
        info!(call_guid = %fork.spec.call_guid, stream_id, from = %flow.src, to = %flow.dst,
            inject = inject.is_some(), mode = ?ra.mode, "return audio: playout started");
        Ok(Some(bot::spawn(
            stream_id,
            PlayoutTarget {
                socket,
                dst: flow.dst,
                cfg,
                rtp,
                inject,
            },
            self.speech.bot_events(),
            self.speech.bot_counters.clone(),
        )))
    }
}

impl Agent {
    /// An inject-mode playout's request: stop or resume the kernel relay of a flow.
    pub(super) fn inject_request(&mut self, req: InjectRequest) {
        match req {
            InjectRequest::TakeOver { flow, reply } => {
                let _ = reply.send(self.take_over(flow).map_err(|e| format!("{e:#}")));
            }
            InjectRequest::HandBack { flow, at } => {
                let change = InjectChange::HandBack {
                    ssrc: at.ssrc,
                    seq: at.seq,
                    ts: at.timestamp,
                };
                match self.orch.inject(flow, change) {
                    Ok(actions) => {
                        if let Err(e) = self.perform_checked(actions) {
                            warn!(%flow, "hand-back to the kernel relay failed: {e:#}");
                        }
                    }
                    // The flow went away meanwhile (call ended): nothing to hand back.
                    Err(e) => tracing::debug!(%flow, "hand-back: {e}"),
                }
            }
        }
    }

    /// Stops the relay of `flow`, then reads where its stream stood: in that order, so no
    /// relayed packet leaves after the position the bot continues from.
    fn take_over(&mut self, flow: SocketAddr) -> Result<Option<Relayed>> {
        let actions = self.orch.inject(flow, InjectChange::TakeOver)?;
        self.perform_checked(actions)?;
        let slot = self
            .orch
            .table()
            .flow(&flow)
            .map(|f| f.stats_index)
            .with_context(|| format!("no flow {flow}"))?;
        let s = self
            .dp
            .flow_stats
            .get(&slot, 0)
            .context("reading FLOW_STATS")?;
        Ok((s.out_valid != 0).then(|| Relayed {
            ssrc: s.out_ssrc,
            seq: s.out_seq,
            timestamp: s.out_ts,
            age: Duration::from_nanos(monotonic_ns().saturating_sub(s.last_seen_ns)),
        }))
    }

    /// After a restart: a bot that was talking into a flow when the previous agent stopped
    /// left the relay stopped. Hand it back at once, on a fresh SSRC: where the bot's stream
    /// ended is not known, and a new SSRC is how RTP says so (RFC 3550 §8.2).
    pub(super) fn hand_back_stale_injects(&mut self) {
        for flow in self.orch.table().stale_injects() {
            #[allow(clippy::disallowed_methods)] // io shell: the new stream's random start
            let mut rng = rand::thread_rng();
            let change = InjectChange::HandBack {
                ssrc: rng.gen(),
                seq: rng.gen(),
                ts: rng.gen(),
            };
            match self.orch.inject(flow, change) {
                Ok(actions) => {
                    info!(%flow, "bot was talking when the previous agent stopped: relay restored");
                    self.perform(actions);
                }
                Err(e) => warn!(%flow, "relay not restored: {e}"),
            }
        }
    }

    /// Before a renumbered flow goes (a re-INVITE replaces it): the table learns where its
    /// stream stands, from the kernel's `FLOW_STATS`, so a replacement continues it.
    pub(super) fn keep_numbering(&mut self, local: SocketAddr) {
        let Some(slot) = self.orch.table().renumbered_slot(&local) else {
            return;
        };
        let Ok(s) = self.dp.flow_stats.get(&slot, 0) else {
            return;
        };
        if s.out_valid == 0 {
            return;
        }
        // The next packet's timestamp: whole packet times since the last one, at least one
        // (20 ms of 8 kHz G.711, RFC 3551's default: the relay does not know the call's ptime).
        const PTIME_NS: u64 = 20_000_000;
        let elapsed_ns = monotonic_ns().saturating_sub(s.last_seen_ns);
        let samples = (elapsed_ns.div_ceil(PTIME_NS).max(1) * 160) as u32;
        self.orch.table_mut().resume_numbering(
            local,
            s.out_ssrc,
            s.out_seq.wrapping_add(1),
            s.out_ts.wrapping_add(samples),
        );
    }
}
