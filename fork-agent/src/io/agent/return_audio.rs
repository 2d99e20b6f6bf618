//! The agent's side of return audio (docs/speech-protocol.md §16): a fork whose speech server
//! talks back gets a playout (io::bot) sending from the anchored address of the flow its
//! `return_audio` names. Endpoint mode only: that flow must be a sink (the call ends here).

use rand::Rng as _;

use super::*;
use crate::core::playout::{Idle, PlayoutConfig, RtpStart, MAX_PTIME_MS};
use crate::io::bot::{self, BotLink, PlayoutTarget};

impl Agent {
    /// Refuses a fork whose return audio cannot be played, before anything changes.
    pub(super) fn check_return_audio(&self, spec: &control_api::ForkSpec) -> Result<()> {
        let Some(ra) = &spec.return_audio else {
            return Ok(());
        };
        let Some(flow) = self.orch.table().flow(&ra.flow) else {
            anyhow::bail!("return_audio.flow: no flow {}", ra.flow);
        };
        if !flow.is_sink() {
            // Inject mode (the bot replaces a relayed party) is not implemented: refuse
            // rather than let two senders share the stream.
            anyhow::bail!(
                "return_audio.flow: {} is relayed; return audio needs a sink flow (endpoint mode)",
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
        let cfg = PlayoutConfig {
            ptime: Duration::from_millis(u64::from(fork.spec.ptime_ms)),
            max_buffer: Duration::from_millis(u64::from(self.return_audio.max_buffer_ms)),
            prebuffer: Duration::from_millis(u64::from(self.return_audio.prebuffer_ms)),
            idle: Idle::Silence,
        };
        info!(call_guid = %fork.spec.call_guid, stream_id, from = %flow.src, to = %flow.dst,
            "return audio: playout started");
        Ok(Some(bot::spawn(
            stream_id,
            PlayoutTarget {
                socket,
                dst: flow.dst,
                cfg,
                rtp,
            },
            self.speech.bot_events(),
            self.speech.bot_counters.clone(),
        )))
    }
}
