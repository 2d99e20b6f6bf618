//! What the fork-agent-level voice-bot tests (bot_endpoint.rs, bot_inject.rs) share: a
//! topology with a dialect checker as the bot (`--bot-wav` with known speech), fork-agent
//! started against it, and the fork's status events.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use xdpfork_tests::bot::bot_speech;
use xdpfork_tests::dialects::{write_ulaw_as_wav, Checker, Dialect};
use xdpfork_tests::fork_rig::Events;
use xdpfork_tests::{Scenario, Topology};

/// Where the bot listens (speech namespace).
pub const CHECKER: &str = "10.77.3.2:9000";
/// Audio per message of the bot (each followed by a mark).
pub const CHUNK_MS: u64 = 100;

/// The bot (process `bot`) and the agent it talks to.
pub struct BotRig {
    pub s: Scenario,
    pub checker: Checker,
    pub ev: Events,
    /// The bot's utterance, µ-law, and as a WAV (what compare.py matches against).
    pub speech: Vec<u8>,
    pub bot_wav: PathBuf,
}

impl BotRig {
    /// Starts `dialect`'s checker as a bot speaking `speech_ms` of [`bot_speech`] in
    /// [`CHUNK_MS`] messages (plus `checker_args`), then fork-agent with it as `asr`, and
    /// subscribes to its events.
    pub fn start(dialect: &Dialect, speech_ms: usize, checker_args: &[&str]) -> Result<BotRig> {
        let mut topo = Topology::new()?;
        let dir = topo.dir.clone();
        let speech = bot_speech(speech_ms);
        let bot_wav = dir.join("bot.wav");
        write_ulaw_as_wav(&bot_wav, &speech)?;
        let wav_s = bot_wav.to_string_lossy().into_owned();
        let chunk = CHUNK_MS.to_string();
        let mut args = vec![
            "--bot-wav",
            wav_s.as_str(),
            "--bot-chunk-ms",
            chunk.as_str(),
        ];
        args.extend_from_slice(checker_args);
        let checker = dialect.spawn_checker(&mut topo, "bot", CHECKER, &dir, &args)?;
        let extra = format!(
            "backoff_initial_ms = 200\nbackoff_max_ms = 400\n{}",
            dialect.server_toml()
        );
        let s = Scenario::start_agent_in(topo, CHECKER, &extra)?;
        let ev = Events::subscribe(&s.socket)?;
        Ok(BotRig {
            s,
            checker,
            ev,
            speech,
            bot_wav,
        })
    }

    /// Waits (bounded) for fork `guid`'s next `status` event (a reconnection's with
    /// `reconnected`).
    pub fn wait_status(&mut self, guid: &str, status: &str, reconnected: bool) -> Result<()> {
        let n = self.ev.seen.len();
        let log = || self.s.topo.log_tail("fork-agent", 30);
        self.ev
            .until(Duration::from_secs(15), |s| {
                s[n..].iter().any(|e| {
                    e["call_guid"] == guid
                        && e["status"] == status
                        && (!reconnected || e["reconnected"] == true)
                })
            })
            .with_context(|| format!("fork-agent log:\n{}", log()))
    }

    /// Stops fork `guid` and the checker; its report.
    pub fn finish(&mut self, guid: &str) -> Result<Value> {
        self.s
            .ctl(json!({"v":1,"op":"fork_stop","call_guid":guid}))?;
        self.wait_status(guid, "stopped", false)?;
        self.checker
            .wait_closed(Duration::from_secs(10))
            .with_context(|| format!("checker log:\n{}", self.s.topo.log("bot")))?;
        self.s
            .topo
            .signal("bot", nix::sys::signal::Signal::SIGTERM)?;
        Ok(self.checker.read_report())
    }
}

/// A [`BotRig`] with a test's parties of the call (`P`: their sockets and state), reading as
/// the rig itself.
pub struct BotCall<P> {
    pub rig: BotRig,
    pub parties: P,
}

impl<P> std::ops::Deref for BotCall<P> {
    type Target = BotRig;
    fn deref(&self) -> &BotRig {
        &self.rig
    }
}

impl<P> std::ops::DerefMut for BotCall<P> {
    fn deref_mut(&mut self) -> &mut BotRig {
        &mut self.rig
    }
}

/// The marks a checker's bot sent on its first connection and those that came back, by name
/// (its report's `per_connection[0].bot`).
pub fn marks(r: &Value) -> (Vec<String>, Vec<String>) {
    let bot = &r["per_connection"][0]["bot"];
    let names = |v: &Value, f: fn(&Value) -> Option<&str>| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(f)
            .map(str::to_owned)
            .collect()
    };
    (
        names(&bot["marks_sent"], Value::as_str),
        names(&bot["marks_echoed"], |m| m["name"].as_str()),
    )
}
