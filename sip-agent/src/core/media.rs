//! Media layer: turns the B2BUA's [`SessionEvent`]s into fork-agent control API operations
//! (docs/control-api.md) and the operations' results into fork status reports.
//!
//! Role: keeps, per call, the two legs' negotiated media, the kernel flows asked for and the
//! fork's phase. Flows are reconciled, not scripted: after every media event the wanted flow set
//! is computed (caller → A anchor → from the B anchor → callee, the reverse, and the RTCP pair on
//! port + 1) and compared with what was installed, so a re-INVITE that moves an address, a hold
//! with `c=0.0.0.0` or a codec change each produce exactly the `flow_del`/`flow_add` needed.
//!
//! Inputs: [`MediaLayer::handle_session`] with every [`SessionEvent`] the B2BUA emits, in order;
//! [`MediaLayer::handle_control_result`] with each control operation's typed answer;
//! [`MediaLayer::handle_fork_event`] with fork-agent's `fork_status` events (they come on
//! another connection than the answers, so in any order relative to them).
//! Outputs: drain [`MediaLayer::poll_output`] after each input: [`MediaOutput::Control`] is one
//! control-api request for fork-agent (the shell must execute them in order on one connection, which
//! makes `fork_start` follow the flows it names); [`MediaOutput::Status`] goes to
//! `B2bua::handle_fork_status`, [`MediaOutput::ConnectionStatus`] to
//! `B2bua::handle_connection_status` (paced there).
//!
//! Fork phases (reference "Media Forking Session", PAUSE/RESUME): the START goes to fork-agent
//! as `fork_start` with the controller's destination (url with the port folded in, token,
//! profile) and the call's parties. fork-agent's answer is CONNECTING (with the streams' channel
//! ids), or ERROR with its refusal's reference string. STARTED is reported only on fork-agent's
//! `started` event, when the speech server has the streams; an `error` event before it is the
//! failed START (ERROR). After STARTED, a lost connection is RECONNECTING, the fork carried again
//! STARTED (without `request`), and fork-agent giving up ERROR: these are connection statuses.
//! A failed fork is stopped in fork-agent and forgotten, so a new START is allowed. Events that
//! overtake the `fork_start` answer wait for it (docs/fork-request.md "Status sequences";
//! media/status.rs).
//! A call may have several forks (`[forking] max_per_call`, each its own GUID, phase and
//! connection); every rule here applies to each fork on its own, and hold pauses them all.
//! Hold or a non-G.711 codec on an active fork sends `fork_pause`, and the way back
//! `fork_resume`; UPDATE sends `fork_update`. A fork-agent without these operations refuses
//! them; the refusal is logged and no PAUSED/RESUMED/UPDATED is reported, so the controller is
//! never told something that did not happen.
//!
//! This layer has no timers (fork-agent owns stream inactivity and reconnects; the B2BUA paces
//! the statuses), hence no clock input.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;

use control_api::request::DEFAULT_PTIME_MS;
use control_api::{
    Answer, Channel, ClientError, Codec, Destination, FlowSpec, ForkSpec, Op, PauseReason,
    ReturnAudio, StopReason, StreamSpec,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::core::b2bua::{CallHandle, CallParties, Leg, NegotiatedMedia, SessionEvent};
use crate::core::fork_request::{
    ForkCodec, ForkError, ForkKind, ForkRequest, ForkState, ReturnAudioRequest, StatusReport,
    StreamStatus,
};

mod bot;
mod status;

use status::{channel_ids, channels_of, fork_error, is_this_fork, streams_of, Link};
pub use status::{ForkEvent, DESTINATION_NOT_ALLOWED};

/// Static configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaConfig {
    /// `[[speech_server]]` name in fork-agent's config that forks go to.
    pub speech_server: String,
}

/// Opaque id of one control request, echoed in [`MediaLayer::handle_control_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per control request, never on the media path
pub enum MediaOutput {
    /// Send this request to fork-agent (in order) and report the answer with `job`.
    Control {
        /// Id to report the answer with.
        job: JobId,
        /// The request.
        op: Op,
    },
    /// Give this report to `B2bua::handle_fork_status`.
    Status {
        /// Call.
        call: CallHandle,
        /// Report.
        report: StatusReport,
    },
    /// Give this report, caused by the speech-server connection of a started fork (lost,
    /// carried again, given up), to `B2bua::handle_connection_status`.
    ConnectionStatus {
        /// Call.
        call: CallHandle,
        /// Report.
        report: StatusReport,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `fork_start` sent, no answer yet.
    Starting,
    /// Forking.
    Active,
    /// `fork_pause` sent.
    Pausing,
    /// Paused.
    Paused,
    /// `fork_resume` sent.
    Resuming,
}

#[derive(Debug, Clone)]
struct Fork {
    guid: String,
    phase: Phase,
    link: Link,
    /// The streams' channel ids, from the `fork_start` answer (reported from CONNECTING on).
    channels: Vec<StreamStatus>,
    /// G.711 law the fork runs with.
    codec: Codec,
    /// The law the START asked for (`codec`), if any: the fork only runs on that law.
    requested: Option<Codec>,
    /// The flows (by `local`) carrying the caller and callee streams.
    streams: [Option<SocketAddr>; 2],
}

/// What the journal keeps of a call's media layer state (docs/sip-state.md): the flows asked
/// for and the forks, so a restarted agent removes exactly those when the call ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SnapshotWire", into = "SnapshotWire")]
pub struct MediaSnapshot {
    /// Flows asked for, as sent in `flow_add`.
    pub flows: Vec<FlowSpec>,
    /// The call's forks started and not stopped, oldest first.
    pub forks: Vec<ForkSnapshot>,
}

/// [`MediaSnapshot`] as journalled: the first fork under `fork`, as before several forks per
/// call existed (a journal of single-fork calls reads the same both ways), further ones under
/// `more_forks`.
#[derive(Serialize, Deserialize)]
struct SnapshotWire {
    flows: Vec<FlowSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fork: Option<ForkSnapshot>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    more_forks: Vec<ForkSnapshot>,
}

impl From<SnapshotWire> for MediaSnapshot {
    fn from(w: SnapshotWire) -> Self {
        MediaSnapshot {
            flows: w.flows,
            forks: w.fork.into_iter().chain(w.more_forks).collect(),
        }
    }
}

impl From<MediaSnapshot> for SnapshotWire {
    fn from(m: MediaSnapshot) -> Self {
        let mut forks = m.forks.into_iter();
        SnapshotWire {
            flows: m.flows,
            fork: forks.next(),
            more_forks: forks.collect(),
        }
    }
}

/// A journalled fork.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkSnapshot {
    /// Call GUID.
    pub call_guid: String,
    /// G.711 law it runs with (`PCMU`/`PCMA`).
    pub codec: String,
    /// The law the START asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
    /// Paused (or being paused) rather than running.
    pub paused: bool,
    /// The flows (`local`) carrying the caller and callee streams.
    pub streams: [Option<SocketAddr>; 2],
    /// fork-agent's channel ids of the caller and callee streams (reported again in the
    /// STARTED after a reconnect).
    #[serde(default, skip_serializing_if = "is_none_pair")]
    pub channel_ids: [Option<u32>; 2],
}

fn is_none_pair(ids: &[Option<u32>; 2]) -> bool {
    ids.iter().all(Option::is_none)
}

/// A fork-agent flow sip-agent stopped asking for because fork-agent removed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovedFlow {
    /// The call it belonged to.
    pub call: CallHandle,
    /// An RTP flow (its removal means dead media); RTCP flows may idle out on a live call.
    pub rtp: bool,
}

/// A journalled law (`PCMU`/`PCMA`); anything else was never written, µ-law is the default.
fn law_name(s: &str) -> Codec {
    Codec::from_name(s).unwrap_or(Codec::Pcmu)
}

#[derive(Debug, Default)]
struct CallMedia {
    legs: [Option<NegotiatedMedia>; 2],
    /// Flows asked for (by `local`), as last sent.
    flows: BTreeMap<SocketAddr, FlowSpec>,
    /// Forks started and not stopped, oldest first.
    forks: Vec<Fork>,
}

impl CallMedia {
    fn fork_mut(&mut self, guid: &str) -> Option<&mut Fork> {
        self.forks.iter_mut().find(|f| f.guid == guid)
    }

    fn take_fork(&mut self, guid: &str) -> Option<Fork> {
        let i = self.forks.iter().position(|f| f.guid == guid)?;
        Some(self.forks.remove(i))
    }
}

#[derive(Debug, Clone)]
enum Purpose {
    FlowAdd(SocketAddr),
    FlowDel,
    Start(String),
    Stop(String),
    /// `fork_stop` of a fork that failed: fork-agent keeps a failed fork until told.
    Cleanup(String),
    Pause(String),
    Resume(String),
    Update(String),
}

/// The media layer.
#[derive(Debug)]
pub struct MediaLayer {
    cfg: MediaConfig,
    calls: HashMap<CallHandle, CallMedia>,
    jobs: HashMap<JobId, (CallHandle, Purpose)>,
    next_job: u64,
    out: VecDeque<MediaOutput>,
    /// Calls whose [`MediaSnapshot`] may have changed since [`MediaLayer::take_changed`].
    changed: BTreeSet<CallHandle>,
}

fn local(m: &NegotiatedMedia) -> SocketAddr {
    SocketAddr::new(m.local_ip, m.local_port)
}

fn plus_one(a: SocketAddr) -> Option<SocketAddr> {
    Some(SocketAddr::new(a.ip(), a.port().checked_add(1)?))
}

/// Why forking must be paused, if it must: hold on either leg, or a codec other than G.711
/// (reference: PAUSE "when the call is put on hold or the codec changes").
fn pause_reason(legs: &[Option<NegotiatedMedia>; 2]) -> Option<PauseReason> {
    let legs = || legs.iter().flatten();
    if legs().any(|m| m.hold || m.remote.is_none()) {
        Some(PauseReason::Hold)
    } else if legs().any(|m| !m.codec.as_ref().is_some_and(|c| c.is_g711())) {
        Some(PauseReason::CodecChange)
    } else {
        None
    }
}

/// The G.711 law flowing (both legs carry the answer's codec).
fn law(m: &NegotiatedMedia) -> Codec {
    match m.codec.as_ref().and_then(|k| k.name.as_deref()) {
        Some("PCMA") => Codec::Pcma,
        _ => Codec::Pcmu,
    }
}

/// Where a bridged call's return audio goes (inject mode). The flow named is the one whose leg
/// carries audio *to* the hearer, from the other party's anchor (see [`desired_flows`]): the
/// callee's packets arrive at `local(b)` and leave towards the caller, so the caller hears the
/// bot on the flow at `local(b)`, and the callee on the one at `local(a)`. The payload type is
/// the one the hearer's leg negotiated, what its phone expects.
fn inject(r: ReturnAudioRequest, a: &NegotiatedMedia, b: &NegotiatedMedia) -> ReturnAudio {
    let (hearer, peer) = match r.to {
        Channel::Caller => (a, b),
        Channel::Callee => (b, a),
    };
    ReturnAudio {
        to: r.to,
        flow: local(peer),
        payload_type: hearer.codec.as_ref().map(|k| k.pt),
        mode: r.mode,
    }
}

/// The payload types a flow passes: both G.711 laws, plus `codec`'s type when it is a dynamic
/// G.711 one.
fn g711_payload_types(codec: Option<&crate::core::sdp::Codec>) -> Vec<u8> {
    let mut payload_types = vec![0, 8];
    if let Some(c) = codec.filter(|c| c.is_g711() && !payload_types.contains(&c.pt)) {
        payload_types.push(c.pt);
    }
    payload_types
}

/// The flows a call wants: each leg's peer sends to that leg's anchor, and the packets leave
/// from the other leg's anchor towards the other peer (so both peers see symmetric RTP).
fn desired_flows(legs: &[Option<NegotiatedMedia>; 2]) -> BTreeMap<SocketAddr, FlowSpec> {
    let mut out = BTreeMap::new();
    let (Some(a), Some(b)) = (&legs[Leg::A as usize], &legs[Leg::B as usize]) else {
        return out;
    };
    for (from, to) in [(a, b), (b, a)] {
        // No destination while the far side holds with c=0.0.0.0 (RFC 3264 §8.4).
        let Some(dst) = to.remote else { continue };
        // Both G.711 laws (plus a dynamic G.711 type, if negotiated) whatever the current
        // codec: a re-INVITE switching µ-law ↔ A-law or to G.729 then leaves the flow as it is.
        // Replacing the flow would drop fork-agent's fork flag on it (a re-added flow starts
        // unforked), and the fork could not resume; pause/resume decide what is forked.
        let payload_types = g711_payload_types(from.codec.as_ref().or(to.codec.as_ref()));
        let rtp = FlowSpec {
            local: local(from),
            src: local(to),
            dst,
            expect: None,
            rtcp: false,
            payload_types,
            dtmf_pt: from.telephone_event.or(to.telephone_event),
            sink: false,
        };
        // RTCP on the next port up (RFC 3550 §11); SDP `a=rtcp` is not honoured (see
        // docs/sip-agent.md).
        if let (Some(l), Some(s), Some(d)) = (plus_one(rtp.local), plus_one(rtp.src), plus_one(dst))
        {
            out.insert(
                l,
                FlowSpec {
                    local: l,
                    src: s,
                    dst: d,
                    expect: None,
                    rtcp: true,
                    payload_types: Vec::new(),
                    dtmf_pt: None,
                    sink: false,
                },
            );
        }
        out.insert(rtp.local, rtp);
    }
    out
}

impl MediaLayer {
    /// A layer with no calls.
    pub fn new(cfg: MediaConfig) -> Self {
        Self {
            cfg,
            calls: HashMap::new(),
            jobs: HashMap::new(),
            next_job: 0,
            out: VecDeque::new(),
            changed: BTreeSet::new(),
        }
    }

    /// Calls whose [`MediaLayer::snapshot`] may have changed since the last call (the shell
    /// journals them with the B2BUA's part).
    #[must_use]
    pub fn take_changed(&mut self) -> Vec<CallHandle> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    /// The journal record of a call's flows and fork (empty for a call without media).
    pub fn snapshot(&self, call: CallHandle) -> MediaSnapshot {
        let Some(c) = self.calls.get(&call) else {
            return MediaSnapshot::default();
        };
        MediaSnapshot {
            flows: c.flows.values().cloned().collect(),
            forks: c
                .forks
                .iter()
                .map(|f| ForkSnapshot {
                    call_guid: f.guid.clone(),
                    codec: f.codec.as_str().to_owned(),
                    requested: f.requested.map(|c| c.as_str().to_owned()),
                    paused: matches!(f.phase, Phase::Pausing | Phase::Paused),
                    streams: f.streams,
                    channel_ids: channel_ids(&f.channels),
                })
                .collect(),
        }
    }

    /// Brings back a journalled call after a restart: its legs' media (from the restored
    /// B2BUA), the flows it had asked for and its forks, without sending anything (they are
    /// still in fork-agent). A fork caught between two states is taken as running or paused,
    /// and as started (its connection's events while this agent was down are lost); the next
    /// media event, fork-agent event or the call's end acts on it as usual.
    pub fn restore(
        &mut self,
        call: CallHandle,
        legs: [Option<NegotiatedMedia>; 2],
        snap: MediaSnapshot,
    ) {
        let forks = snap.forks.into_iter().map(|f| Fork {
            guid: f.call_guid,
            phase: if f.paused {
                Phase::Paused
            } else {
                Phase::Active
            },
            link: Link::Up,
            channels: channels_of(f.channel_ids),
            codec: law_name(&f.codec),
            requested: f.requested.as_deref().map(law_name),
            streams: f.streams,
        });
        self.calls.insert(
            call,
            CallMedia {
                legs,
                flows: snap.flows.into_iter().map(|f| (f.local, f)).collect(),
                forks: forks.collect(),
            },
        );
    }

    /// Every flow `local` and fork GUID the live calls stand for, as restart reconciliation
    /// must keep them (core::reconcile).
    pub fn known(&self) -> crate::core::reconcile::Known {
        let mut k = crate::core::reconcile::Known::default();
        for c in self.calls.values() {
            k.flows.extend(c.flows.keys().copied());
            for f in &c.forks {
                k.forks.insert(f.guid.clone());
                k.flows.extend(f.streams.iter().flatten().copied());
            }
        }
        k
    }

    /// fork-agent removed the flow at `local` on its own (idle timeout, its `flow_removed`
    /// event). The flow is forgotten, so the call's end does not ask to delete it again; the
    /// answer says whose it was and whether it carried RTP (the shell then releases the call).
    pub fn handle_flow_removed(&mut self, local: SocketAddr) -> Option<RemovedFlow> {
        let (&call, c) = self
            .calls
            .iter_mut()
            .find(|(_, c)| c.flows.contains_key(&local))?;
        let spec = c.flows.remove(&local)?;
        self.changed.insert(call);
        Some(RemovedFlow {
            call,
            rtp: !spec.rtcp,
        })
    }

    /// Next output; drain until `None` after every `handle_*` call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<MediaOutput> {
        self.out.pop_front()
    }

    /// Calls with media state.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Flows currently asked for across all calls.
    pub fn flow_count(&self) -> usize {
        self.calls.values().map(|c| c.flows.len()).sum()
    }

    fn control(&mut self, call: CallHandle, purpose: Purpose, op: Op) {
        self.changed.insert(call);
        self.next_job += 1;
        let job = JobId(self.next_job);
        self.jobs.insert(job, (call, purpose));
        self.out.push_back(MediaOutput::Control { job, op });
    }

    /// Feeds one session event from the B2BUA.
    pub fn handle_session(&mut self, ev: &SessionEvent) {
        match ev {
            SessionEvent::MediaUp { call, leg, media }
            | SessionEvent::MediaChanged { call, leg, media } => {
                let c = self.calls.entry(*call).or_default();
                c.legs[*leg as usize] = Some(media.clone());
                self.reconcile_flows(*call);
                self.reconcile_pause(*call);
            }
            SessionEvent::MediaDown { call } | SessionEvent::CallEnded { call, .. } => {
                self.teardown(*call)
            }
            SessionEvent::BotUp { call, bot } => self.on_bot(*call, bot),
            SessionEvent::ForkRequest {
                call,
                request,
                parties,
                ..
            } => self.on_fork(*call, request, parties),
        }
    }

    fn reconcile_flows(&mut self, call: CallHandle) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let want = desired_flows(&c.legs);
        // A forked stream's flow is kept while its destination is gone (hold with c=0.0.0.0):
        // fork-agent re-adds a deleted flow without the fork flag, so deleting it would leave
        // that stream unforked after the resume. It keeps relaying to the held party's last
        // address meanwhile, which the held party ignores.
        let forked = |l: &SocketAddr| c.forks.iter().any(|f| f.streams.contains(&Some(*l)));
        let dels: Vec<SocketAddr> = c
            .flows
            .iter()
            .filter(|(l, spec)| match want.get(l) {
                Some(w) => w != *spec,
                None => !forked(l),
            })
            .map(|(l, _)| *l)
            .collect();
        let adds: Vec<FlowSpec> = want
            .values()
            .filter(|spec| c.flows.get(&spec.local) != Some(spec))
            .cloned()
            .collect();
        for l in &dels {
            c.flows.remove(l);
        }
        for spec in &adds {
            c.flows.insert(spec.local, spec.clone());
        }
        for local in dels {
            self.control(call, Purpose::FlowDel, Op::FlowDel { local });
        }
        for flow in adds {
            self.control(call, Purpose::FlowAdd(flow.local), Op::FlowAdd { flow });
        }
    }

    /// Pauses or resumes every fork of the call as its media now wants (hold pauses them all).
    fn reconcile_pause(&mut self, call: CallHandle) {
        let guids: Vec<String> = self
            .calls
            .get(&call)
            .map(|c| c.forks.iter().map(|f| f.guid.clone()).collect())
            .unwrap_or_default();
        for guid in guids {
            self.reconcile_fork_pause(call, &guid);
        }
    }

    fn reconcile_fork_pause(&mut self, call: CallHandle, guid: &str) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let now_law = c.legs[Leg::B as usize].as_ref().map(law);
        let legs = c.legs.clone();
        let Some(f) = c.fork_mut(guid) else { return };
        // Reference "Pause and Resume Forking": a codec other than the one the fork runs with
        // pauses it, even between the two G.711 laws. A START that named its codec resumes only
        // on that law; one without a codec resumes on the new law (PAUSE then RESUME).
        let pause = pause_reason(&legs).or_else(|| {
            let wanted = match f.phase {
                Phase::Active | Phase::Pausing => f.requested.unwrap_or(f.codec),
                _ => f.requested?,
            };
            now_law
                .filter(|l| *l != wanted)
                .map(|_| PauseReason::CodecChange)
        });
        let guid = f.guid.clone();
        match (f.phase, pause) {
            (Phase::Active, Some(reason)) => {
                f.phase = Phase::Pausing;
                self.control(
                    call,
                    Purpose::Pause(guid.clone()),
                    Op::ForkPause {
                        call_guid: guid,
                        reason,
                    },
                );
            }
            (Phase::Paused, None) => {
                f.phase = Phase::Resuming;
                // Back on G.711, possibly the other law (reference RESUME).
                let codec = now_law.filter(|l| *l != f.codec);
                if let Some(l) = codec {
                    f.codec = l;
                }
                self.control(
                    call,
                    Purpose::Resume(guid.clone()),
                    Op::ForkResume {
                        call_guid: guid,
                        codec,
                    },
                );
            }
            // Starting/Pausing/Resuming: re-checked when the answer arrives.
            _ => {}
        }
    }

    fn teardown(&mut self, call: CallHandle) {
        let Some(c) = self.calls.remove(&call) else {
            return;
        };
        for f in c.forks {
            // The call is gone, so no status goes back (reference: forking stops with the call).
            self.control(
                call,
                Purpose::Stop(f.guid.clone()),
                Op::ForkStop {
                    call_guid: f.guid,
                    reason: StopReason::CallEnd,
                },
            );
        }
        for local in c.flows.into_keys() {
            self.control(call, Purpose::FlowDel, Op::FlowDel { local });
        }
    }

    fn on_fork(&mut self, call: CallHandle, request: &ForkRequest, parties: &CallParties) {
        let server = self.cfg.speech_server.clone();
        let Some(c) = self.calls.get_mut(&call) else {
            // The core only accepts fork requests on established calls, which have had MediaUp.
            warn!(?call, "fork request for a call without media");
            let guid = match request {
                ForkRequest::Start(s) => s.call_guid.clone(),
                ForkRequest::Stop { call_guid } | ForkRequest::Update { call_guid, .. } => {
                    call_guid.clone()
                }
            };
            let kind = match request {
                ForkRequest::Start(_) => ForkKind::Start,
                ForkRequest::Stop { .. } => ForkKind::Stop,
                ForkRequest::Update { .. } => ForkKind::Update,
            };
            self.status(
                call,
                &guid,
                Some(kind),
                ForkState::Error,
                Some(ForkError::InternalError),
                vec![],
            );
            return;
        };
        match request {
            ForkRequest::Start(s) => {
                let (Some(a), Some(b)) = (&c.legs[Leg::A as usize], &c.legs[Leg::B as usize])
                else {
                    return self.status(
                        call,
                        &s.call_guid,
                        Some(ForkKind::Start),
                        ForkState::Error,
                        Some(ForkError::InternalError),
                        vec![],
                    );
                };
                // The core checked the codec is G.711 before accepting the START.
                let codec = law(b);
                let fork = ForkSpec {
                    destination: Some(Destination {
                        url: s.server.url(),
                        auth_token: s.auth_token.clone(),
                        profile: s.profile,
                    }),
                    call_guid: s.call_guid.clone(),
                    call_id: parties.call_id.clone(),
                    from: parties.from.clone(),
                    to: parties.to.clone(),
                    server,
                    codec,
                    ptime_ms: a.ptime.or(b.ptime).unwrap_or(DEFAULT_PTIME_MS),
                    metadata: s.metadata.clone().unwrap_or_default(),
                    streams: vec![
                        StreamSpec {
                            channel: Channel::Caller,
                            flow: local(a),
                        },
                        StreamSpec {
                            channel: Channel::Callee,
                            flow: local(b),
                        },
                    ],
                    return_audio: s.return_audio.map(|r| inject(r, a, b)),
                };
                // The B2BUA's fork sequence allowed it: a new GUID within `max_per_call`.
                c.forks.push(Fork {
                    guid: s.call_guid.clone(),
                    phase: Phase::Starting,
                    link: Link::Requested {
                        early: VecDeque::new(),
                    },
                    channels: Vec::new(),
                    codec,
                    requested: s.codec.map(|k| match k {
                        ForkCodec::G711Ulaw => Codec::Pcmu,
                        ForkCodec::G711Alaw => Codec::Pcma,
                    }),
                    streams: [Some(local(a)), Some(local(b))],
                });
                // CONNECTING goes back with fork-agent's answer: it picks the connection when
                // it receives fork_start (reference: "When a connection is identified, CUBE
                // sends status information").
                self.control(
                    call,
                    Purpose::Start(s.call_guid.clone()),
                    Op::ForkStart { fork },
                );
            }
            ForkRequest::Stop { call_guid } => {
                c.take_fork(call_guid);
                self.control(
                    call,
                    Purpose::Stop(call_guid.clone()),
                    Op::ForkStop {
                        call_guid: call_guid.clone(),
                        reason: StopReason::Request,
                    },
                );
            }
            ForkRequest::Update {
                call_guid,
                metadata,
            } => self.control(
                call,
                Purpose::Update(call_guid.clone()),
                Op::ForkUpdate {
                    call_guid: call_guid.clone(),
                    metadata: metadata.clone(),
                },
            ),
        }
    }

    /// The answer to control request `job`: its typed data, or why fork-agent refused it or
    /// could not be asked.
    pub fn handle_control_result(&mut self, job: JobId, result: Result<Answer, ClientError>) {
        let Some((call, purpose)) = self.jobs.remove(&job) else {
            return;
        };
        self.changed.insert(call);
        let live = self.calls.contains_key(&call);
        match purpose {
            Purpose::FlowAdd(l) => {
                if let Err(e) = result {
                    warn!(?call, %l, error = %e, "flow_add refused");
                    // Forget it, so the next media event asks again.
                    if let Some(c) = self.calls.get_mut(&call) {
                        c.flows.remove(&l);
                    }
                }
            }
            Purpose::FlowDel => {
                if let Err(e) = result {
                    warn!(?call, error = %e, "flow_del refused");
                }
            }
            Purpose::Start(guid) => {
                let Some(c) = self.calls.get_mut(&call) else {
                    return; // call ended meanwhile; teardown already queued fork_stop
                };
                let current = c.fork_mut(&guid);
                match (result, current) {
                    (Ok(answer), Some(f)) => {
                        f.phase = Phase::Active;
                        f.channels = match answer {
                            Answer::ForkStarted(started) => streams_of(&started),
                            _ => Vec::new(),
                        };
                        let early = match std::mem::replace(&mut f.link, Link::Connecting) {
                            Link::Requested { early } => early,
                            other => {
                                f.link = other;
                                VecDeque::new()
                            }
                        };
                        let channels = f.channels.clone();
                        let channels_now = channels.clone();
                        self.status(
                            call,
                            &guid,
                            Some(ForkKind::Start),
                            ForkState::Connecting,
                            None,
                            channels,
                        );
                        // Events that overtook the answer, in the order they came; those of an
                        // earlier fork under this GUID are dropped.
                        for (e, fork_id) in early {
                            if is_this_fork(&channels_now, fork_id) {
                                self.on_link_event(call, &guid, e);
                            } else {
                                debug!(?call, %guid, ?fork_id, "early event of an earlier fork under this GUID; ignored");
                            }
                        }
                        self.reconcile_pause(call);
                    }
                    (Ok(_), None) => debug!(?call, "fork started after a STOP was queued"),
                    (Err(e), current) => {
                        warn!(?call, error = %e, "fork_start refused");
                        if current.is_some() {
                            c.take_fork(&guid);
                        }
                        self.status(
                            call,
                            &guid,
                            Some(ForkKind::Start),
                            ForkState::Error,
                            Some(fork_error(&e)),
                            vec![],
                        );
                    }
                }
            }
            Purpose::Cleanup(guid) => {
                if let Err(e) = result {
                    debug!(?call, %guid, error = %e, "fork_stop of a failed fork refused");
                }
            }
            Purpose::Stop(guid) => {
                if !live {
                    return;
                }
                match result {
                    Ok(_) => self.status(
                        call,
                        &guid,
                        Some(ForkKind::Stop),
                        ForkState::Stopped,
                        Some(ForkError::ForkingStopped),
                        vec![],
                    ),
                    Err(e) => self.status(
                        call,
                        &guid,
                        Some(ForkKind::Stop),
                        ForkState::Error,
                        Some(fork_error(&e)),
                        vec![],
                    ),
                }
            }
            Purpose::Pause(ref guid) | Purpose::Resume(ref guid) => {
                let resume = matches!(purpose, Purpose::Resume(_));
                let guid = guid.clone();
                let Some(f) = self.calls.get_mut(&call).and_then(|c| c.fork_mut(&guid)) else {
                    return;
                };
                match result {
                    Ok(_) => {
                        f.phase = if resume { Phase::Active } else { Phase::Paused };
                        let state = if resume {
                            ForkState::Resumed
                        } else {
                            ForkState::Paused
                        };
                        self.status(call, &guid, None, state, None, vec![]);
                    }
                    Err(e) => {
                        // Unsupported by this fork-agent or refused: the fork keeps running
                        // as it was; nothing is reported (see module doc).
                        warn!(?call, error = %e, resume, "fork pause/resume refused");
                        f.phase = if resume { Phase::Paused } else { Phase::Active };
                        return;
                    }
                }
                // Media may have changed again while the request was in flight.
                self.reconcile_fork_pause(call, &guid);
            }
            Purpose::Update(guid) => {
                if !live {
                    return;
                }
                match result {
                    Ok(_) => self.status(
                        call,
                        &guid,
                        Some(ForkKind::Update),
                        ForkState::Updated,
                        None,
                        vec![],
                    ),
                    Err(e) => self.status(
                        call,
                        &guid,
                        Some(ForkKind::Update),
                        ForkState::Error,
                        Some(fork_error(&e)),
                        vec![],
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod status_tests;
#[cfg(test)]
mod tests;
