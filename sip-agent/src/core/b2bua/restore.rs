//! The journal record of an established call and its restoration after a restart
//! (docs/sip-state.md).
//!
//! Role: [`B2bua::snapshot`] turns a live call into a [`CallSnapshot`] the shell journals after
//! every change ([`B2bua::take_changed`]); [`B2bua::restore`] brings one back into a fresh
//! B2BUA, with its dialogs, ports and timers, without sending anything.
//! Inputs: a call handle (snapshot), a snapshot and `now` (restore). Outputs: the snapshot, or
//! a [`RestoreError`] for a record that cannot be restored.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{B2bua, Bind, BotLeg, Call, CallHandle, CallState, Leg, PortAllocator};
use crate::core::dialog::Dialog;
use crate::core::fork_request::ForkSequence;
use crate::core::sdp::AudioMedia;
use crate::core::session_timer::{self, CallTimer, CallTimers};

/// Why [`B2bua::restore`] refused a journalled call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// A live call already has this handle.
    #[error("call {0} exists already")]
    DuplicateCall(u32),
    /// A live call already has one of its dialogs (Call-ID and our tag).
    #[error("a dialog of call {0} belongs to another call")]
    DialogInUse(u32),
    /// A leg has no peer tag: the call was never established.
    #[error("call {0} has an unconfirmed dialog")]
    NotEstablished(u32),
    /// Its media port is in use or outside the port range.
    #[error("media port {port} of call {call} is taken or outside the range")]
    PortUnavailable {
        /// Call.
        call: u32,
        /// Port.
        port: u16,
    },
}

/// What the journal keeps of an established call (docs/sip-state.md): both dialogs (Call-IDs,
/// tags, CSeqs, remote targets, route sets and the transport peers the authorization rules
/// check), the anchored media and the fork sequence. It is enough to answer a BYE on one leg and
/// send one on the other, to refuse requests from outside the dialog exactly as before the
/// restart, and to go on relaying re-INVITEs and fork requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSnapshot {
    /// The [`CallHandle`] number.
    pub call: u32,
    /// Leg A's dialog.
    pub a: Dialog,
    /// Leg B's dialog.
    pub b: Dialog,
    /// Whether the route allows forking.
    pub route_forking: bool,
    /// Our RTP port per leg (A, B).
    pub ports: [u16; 2],
    /// Our addresses per leg.
    pub binds: [Bind; 2],
    /// Each leg's peer's audio, as last negotiated.
    pub media: [Option<AudioMedia>; 2],
    /// SDP `o=` version we last sent.
    pub sdp_version: u64,
    /// SDP `o=` session id.
    pub session_id: u64,
    /// The fork request sequence (active fork GUID, carrier).
    pub fork: ForkSequence,
    /// The leg the controller talks on.
    pub fork_leg: Option<Leg>,
    /// The call forked successfully once (licensing).
    pub enhanced: bool,
    /// The RFC 4028 interval in force, seconds.
    pub session_interval_secs: Option<u64>,
    /// CSeq of our INVITE on leg B (ACKs of its 2xx reuse it).
    pub b_invite_cseq: u32,
    /// A voice bot's call: leg B is the bot, a dialog with no SIP peer (docs/sip-agent.md
    /// "Voice bots"). Absent in journals of older versions: a normal call.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bot: bool,
}

impl<P: PortAllocator> B2bua<P> {
    /// The journal record of an established call; `None` for a call still being set up (not
    /// journalled: it has no flows yet) or gone.
    pub fn snapshot(&self, call: CallHandle) -> Option<CallSnapshot> {
        let c = self.calls.get(&call)?;
        if c.state != CallState::Established {
            return None;
        }
        Some(CallSnapshot {
            call: call.0,
            a: c.a.clone(),
            b: c.b.clone(),
            route_forking: c.route_forking,
            ports: c.ports,
            binds: c.binds,
            media: c.media.clone(),
            sdp_version: c.sdp_version,
            session_id: c.session_id,
            fork: c.fork.clone(),
            fork_leg: c.fork_leg,
            enhanced: c.enhanced,
            session_interval_secs: c.session_interval.map(|d| d.as_secs()),
            b_invite_cseq: c.b_invite_cseq,
            bot: c.bot.is_some(),
        })
    }

    /// Brings back an established call from the journal after a restart. Its dialogs go through
    /// the same matching and source rules as before ([`Config::security`](super::Config::security)), its ports are
    /// reserved in the allocator, and its session timer and maximum duration are armed again
    /// counting from `now` (the journal holds no clock reading, so a restart can only lengthen
    /// them). Emits nothing: its flows and fork are still in fork-agent.
    pub fn restore(&mut self, now: Instant, snap: CallSnapshot) -> Result<(), RestoreError> {
        let id = snap.call;
        let call = CallHandle(id);
        if self.calls.contains_key(&call) {
            return Err(RestoreError::DuplicateCall(id));
        }
        // A bot's leg B is no SIP dialog: no peer tag, no port, never matched by a request.
        if snap.a.remote_tag.is_none() || (!snap.bot && snap.b.remote_tag.is_none()) {
            return Err(RestoreError::NotEstablished(id));
        }
        let keys = [
            (snap.a.call_id.clone(), snap.a.local_tag.clone()),
            (snap.b.call_id.clone(), snap.b.local_tag.clone()),
        ];
        if keys[0] == keys[1] || keys.iter().any(|k| self.by_dialog.contains_key(k)) {
            return Err(RestoreError::DialogInUse(id));
        }
        let ports: Vec<u16> = snap
            .ports
            .iter()
            .copied()
            .filter(|&p| !(snap.bot && p == 0))
            .collect();
        for (i, &port) in ports.iter().enumerate() {
            if !self.ports.reserve(port) {
                for &p in &ports[..i] {
                    self.ports.release(p);
                }
                return Err(RestoreError::PortUnavailable { call: id, port });
            }
        }
        let [ka, kb] = keys;
        self.by_dialog.insert(ka, (call, Leg::A));
        if !snap.bot {
            self.by_dialog.insert(kb, (call, Leg::B));
        }
        self.next_call = self.next_call.max(id);
        self.counts.aggregate += 1;
        if snap.enhanced {
            self.counts.enhanced += 1;
        }
        self.counts.bump();
        let session_interval = snap.session_interval_secs.map(Duration::from_secs);
        self.calls.insert(
            call,
            Call {
                // Journalled once answered; the caller's ACK is taken as in (a BYE may follow).
                bot: snap.bot.then_some(BotLeg {
                    acked: true,
                    failed: false,
                }),
                state: CallState::Established,
                a: snap.a,
                b: snap.b,
                route_forking: snap.route_forking,
                a_invite: None,
                b_invite_tx: None,
                // Only a CANCEL uses these, and an established call is never cancelled.
                b_invite_via: String::new(),
                b_invite_to: String::new(),
                b_invite_cseq: snap.b_invite_cseq,
                b_provisional: true,
                cancel_pending: false,
                ports: snap.ports,
                binds: snap.binds,
                media: snap.media,
                sdp_version: snap.sdp_version,
                session_id: snap.session_id,
                fork: snap.fork,
                fork_leg: snap.fork_leg,
                enhanced: snap.enhanced,
                counted: true,
                timers: CallTimers::default(),
                session_interval,
            },
        );
        if let Some(interval) = session_interval {
            let at = session_timer::bye_deadline(now, interval);
            self.set_timer(call, CallTimer::SessionExpires, Some(at));
        }
        if let Some(max) = self.cfg.max_call_duration {
            self.set_timer(call, CallTimer::MaxDuration, Some(now + max));
        }
        Ok(())
    }
}
