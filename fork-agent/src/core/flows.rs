//! Flow and fork bookkeeping (sans-IO). Inputs: flow and fork requests from the control API, and
//! the entries found in the pinned `FLOWS` map when an agent restarts. Outputs: the
//! `fork_common` key/value to write into `FLOWS`, the `FLOW_STATS` slot to zero, and the stream
//! ids of a fork. The shell performs the map writes; this module only decides.
//!
//! Several forks may share a flow (a call forked to transcription and to recording). The
//! kernel knows one *tap* id per flow (`FlowAction::stream_id`, copied into every forked
//! packet's tag): the stream id of the first fork that forked the flow, kept while any fork
//! uses it, so `FLOWS` is written only on the first fork's start and the last one's stop. Each
//! fork keeps stream ids of its own (unique in the process, what its speech server sees); the
//! stream service fans a tap's frames out to them ([`FlowTable::taps_of`]).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use fork_common::{
    addr_words, FlowAction, FlowKey, Renumber, FLOW_F_FORK, FLOW_F_INJECT, FLOW_F_RENUMBER,
    FLOW_F_RTCP, FLOW_F_SINK, FLOW_F_STRICT_SOURCE, MAX_FLOWS, NO_PT,
};
use serde::{Deserialize, Serialize};

use control_api::{FlowSpec, ForkSpec};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// `local`, `src` and `dst` must share one address family (no v4/v6 translation in kernel).
    #[error("flow {local}: local, src and dst must all be IPv4 or all IPv6")]
    FamilyMismatch { local: SocketAddr },
    /// Port 0 cannot be anchored or sent to.
    #[error("flow {local}: port 0 is not allowed")]
    ZeroPort { local: SocketAddr },
    /// RTP payload types are 7 bits.
    #[error("flow {local}: payload type {pt} is out of range 0-127")]
    BadPayloadType { local: SocketAddr, pt: u8 },
    /// A flow for this local address already exists.
    #[error("flow {local} already exists")]
    Exists { local: SocketAddr },
    /// No flow for this local address.
    #[error("no flow for {local}")]
    Unknown { local: SocketAddr },
    /// All `FLOW_STATS` slots are in use.
    #[error("flow table full ({MAX_FLOWS} flows)")]
    Full,
    /// A fork with this call GUID is already running.
    #[error("call {guid} is already forking")]
    ForkExists { guid: String },
    /// No fork with this call GUID.
    #[error("no fork for call {guid}")]
    UnknownFork { guid: String },
    /// A fork needs one or two streams with different channels.
    #[error("a fork needs one stream per channel (caller, callee)")]
    BadStreams,
    /// Inject mode needs a relayed flow; a sink flow has nothing to hand back to.
    #[error("flow {local} is a sink flow: nothing is relayed to inject into")]
    SinkInject { local: SocketAddr },
}

/// A flow as the table keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEntry {
    pub local: SocketAddr,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub stats_index: u32,
    /// The tap id the kernel forks this flow under (`None`: not forked).
    pub stream_id: Option<u32>,
    #[serde(skip)]
    pub action: FlowAction,
}

impl FlowEntry {
    /// Whether the call ends on this host (`FLOW_F_SINK`: forked, never relayed).
    pub fn is_sink(&self) -> bool {
        self.action.flags & FLOW_F_SINK != 0
    }

    /// The strict-source address, if the flow has one.
    pub fn expect(&self) -> Option<SocketAddr> {
        (self.action.flags & FLOW_F_STRICT_SOURCE != 0).then(|| {
            SocketAddr::new(
                fork_common::words_addr(self.action.family, self.action.expect_addr_be),
                u16::from_be(self.action.expect_port_be),
            )
        })
    }
}

/// A running fork: which stream id each flow's audio goes out as (the `show_forks` entry and
/// the fork journal's record, hence control-api's type).
pub use control_api::Fork;

/// The kernel action that sends a packet from `src` to `dst`, counted in `stats_index` (no fork,
/// no strict source; egress and next hop are filled in by the shell).
pub fn relay_action(src: SocketAddr, dst: SocketAddr, stats_index: u32) -> FlowAction {
    let (family, src_addr_be) = addr_words(src.ip());
    FlowAction {
        src_addr_be,
        dst_addr_be: addr_words(dst.ip()).1,
        src_port_be: src.port().to_be(),
        dst_port_be: dst.port().to_be(),
        family,
        stats_index,
        pt_mask: FlowAction::mask_of(&[0, 8]),
        dtmf_pt: NO_PT,
        ..FlowAction::default()
    }
}

#[derive(Debug, Default)]
pub struct FlowTable {
    flows: BTreeMap<SocketAddr, FlowEntry>,
    used_slots: HashMap<u32, SocketAddr>,
    next_slot: u32,
    forks: BTreeMap<String, Fork>,
    /// Forked flows (by `local`): their tap id and how many fork streams use it. Outlives a
    /// removed flow while a fork still names it (a re-INVITE replaces flows one by one).
    taps: BTreeMap<SocketAddr, Tap>,
    next_stream: u32,
    /// Flows a voice bot talks into (inject mode), by `local`. Like a tap, it outlives a flow
    /// replaced while a fork names it, so the replacement keeps the bot's hold and numbering.
    inject: BTreeMap<SocketAddr, Inject>,
}

/// A voice bot's hold on a relayed flow (inject mode, docs/maps.md "Inject mode").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Inject {
    /// The bot is talking: the kernel relays nothing (`FLOW_F_INJECT`).
    talking: bool,
    /// Where relayed RTP continues since the last hand-back (`FLOW_F_RENUMBER`).
    renumber: Option<Renumber>,
}

impl Inject {
    fn apply(&self, action: &mut FlowAction) {
        action.flags &= !(FLOW_F_INJECT | FLOW_F_RENUMBER);
        if self.talking {
            action.flags |= FLOW_F_INJECT;
        }
        action.renumber = self.renumber.unwrap_or_default();
        if self.renumber.is_some() {
            action.flags |= FLOW_F_RENUMBER;
        }
    }
}

/// A bot taking a relayed flow over or handing it back (one `FLOWS` update each, so the kernel
/// relay and the bot never send at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectChange {
    /// The bot starts a talkspurt: stop relaying.
    TakeOver,
    /// The bot stopped: relay again, continuing the bot's stream (the first relayed packet
    /// leaves with `ssrc`, `seq` and `ts`).
    HandBack { ssrc: u32, seq: u16, ts: u32 },
}

/// One forked flow's tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tap {
    /// The id the kernel writes into the fork tag.
    id: u32,
    /// Fork streams on this flow.
    users: u32,
}

impl FlowTable {
    pub fn new() -> Self {
        FlowTable {
            next_stream: 1,
            ..Default::default()
        }
    }

    /// Reserve a `FLOW_STATS` slot for something other than a flow (a TURN channel direction).
    pub fn reserve_stats(&mut self, owner: SocketAddr) -> Result<u32, FlowError> {
        let slot = self.alloc_slot()?;
        self.used_slots.insert(slot, owner);
        Ok(slot)
    }

    /// Mark a slot found in use in the pinned maps after a restart.
    pub fn adopt_stats(&mut self, slot: u32, owner: SocketAddr) {
        self.used_slots.insert(slot, owner);
    }

    /// Give back a slot from [`FlowTable::reserve_stats`].
    pub fn release_stats(&mut self, slot: u32) {
        self.used_slots.remove(&slot);
    }

    fn alloc_slot(&mut self) -> Result<u32, FlowError> {
        for _ in 0..MAX_FLOWS {
            let s = self.next_slot;
            self.next_slot = (self.next_slot + 1) % MAX_FLOWS;
            if !self.used_slots.contains_key(&s) {
                return Ok(s);
            }
        }
        Err(FlowError::Full)
    }

    /// Set the egress interface and next hop the shell resolved for a flow (before writing it to
    /// the kernel).
    pub fn set_egress(
        &mut self,
        local: SocketAddr,
        ifindex: u32,
        nexthop: std::net::IpAddr,
    ) -> Result<FlowAction, FlowError> {
        let e = self
            .flows
            .get_mut(&local)
            .ok_or(FlowError::Unknown { local })?;
        e.action.egress_ifindex = ifindex;
        e.action.nexthop_be = addr_words(nexthop).1;
        Ok(e.action)
    }

    /// Validate `spec` and reserve a stats slot. The caller writes the returned key/value into
    /// `FLOWS` after zeroing `FLOW_STATS[stats_index]`.
    pub fn add(&mut self, spec: &FlowSpec) -> Result<(FlowKey, FlowEntry), FlowError> {
        let local = spec.local;
        let v4 = local.is_ipv4();
        let all_same = [Some(spec.src), Some(spec.dst), spec.expect]
            .into_iter()
            .flatten()
            .all(|a| a.is_ipv4() == v4);
        if !all_same {
            return Err(FlowError::FamilyMismatch { local });
        }
        if [spec.local, spec.src, spec.dst]
            .iter()
            .any(|a| a.port() == 0)
        {
            return Err(FlowError::ZeroPort { local });
        }
        if let Some(&pt) = spec
            .payload_types
            .iter()
            .chain(spec.dtmf_pt.iter())
            .find(|pt| **pt > 127)
        {
            return Err(FlowError::BadPayloadType { local, pt });
        }
        if self.flows.contains_key(&local) {
            return Err(FlowError::Exists { local });
        }
        let stats_index = self.alloc_slot()?;
        let (family, src_addr_be) = addr_words(spec.src.ip());
        let (_, dst_addr_be) = addr_words(spec.dst.ip());
        let mut flags = 0;
        let (mut expect_addr_be, mut expect_port_be) = ([0; 4], 0);
        if let Some(e) = spec.expect {
            flags |= FLOW_F_STRICT_SOURCE;
            expect_addr_be = addr_words(e.ip()).1;
            expect_port_be = e.port().to_be();
        }
        if spec.rtcp {
            flags |= FLOW_F_RTCP;
        }
        if spec.sink {
            flags |= FLOW_F_SINK;
        }
        let action = FlowAction {
            src_addr_be,
            dst_addr_be,
            expect_addr_be,
            src_port_be: spec.src.port().to_be(),
            dst_port_be: spec.dst.port().to_be(),
            expect_port_be,
            family,
            flags,
            stream_id: 0,
            stats_index,
            pt_mask: FlowAction::mask_of(&spec.payload_types),
            dtmf_pt: spec.dtmf_pt.unwrap_or(NO_PT),
            _pad: [0; 3],
            egress_ifindex: 0,
            nexthop_be: [0; 4],
            renumber: Renumber::default(),
        };
        // Running forks keep their streams when a re-INVITE replaces a flow (new destination,
        // new source): the replacement is forked under the same tap id.
        let mut action = action;
        let stream_id = self.taps.get(&local).map(|t| t.id);
        if let Some(id) = stream_id {
            action.flags |= FLOW_F_FORK;
            action.stream_id = id;
        }
        if let Some(i) = self.inject.get(&local) {
            i.apply(&mut action);
        }
        let entry = FlowEntry {
            local,
            src: spec.src,
            dst: spec.dst,
            stats_index,
            stream_id,
            action,
        };
        self.used_slots.insert(stats_index, local);
        self.flows.insert(local, entry.clone());
        Ok((FlowKey::new(local), entry))
    }

    /// Take over a flow found in the pinned map after a restart.
    pub fn adopt(&mut self, key: FlowKey, action: FlowAction) {
        let local = key.socket_addr();
        let addr = |w| fork_common::words_addr(action.family, w);
        let entry = FlowEntry {
            local,
            src: SocketAddr::new(addr(action.src_addr_be), u16::from_be(action.src_port_be)),
            dst: SocketAddr::new(addr(action.dst_addr_be), u16::from_be(action.dst_port_be)),
            stats_index: action.stats_index,
            stream_id: (action.flags & FLOW_F_FORK != 0).then_some(action.stream_id),
            action,
        };
        if action.flags & FLOW_F_FORK != 0 {
            self.next_stream = self.next_stream.max(action.stream_id.wrapping_add(1));
            // Its users are the restored forks that name it ([`FlowTable::restore_fork`]).
            self.taps.insert(
                local,
                Tap {
                    id: action.stream_id,
                    users: 0,
                },
            );
        }
        if action.flags & (FLOW_F_INJECT | FLOW_F_RENUMBER) != 0 {
            self.inject.insert(
                local,
                Inject {
                    talking: action.flags & FLOW_F_INJECT != 0,
                    renumber: (action.flags & FLOW_F_RENUMBER != 0).then_some(action.renumber),
                },
            );
        }
        self.used_slots.insert(action.stats_index, local);
        self.flows.insert(local, entry);
    }

    /// Forget a flow; returns its key (to delete from `FLOWS`). A fork using it keeps running on
    /// its other stream.
    pub fn remove(&mut self, local: SocketAddr) -> Result<FlowKey, FlowError> {
        let entry = self
            .flows
            .remove(&local)
            .ok_or(FlowError::Unknown { local })?;
        self.used_slots.remove(&entry.stats_index);
        if !self.taps.contains_key(&local) {
            self.inject.remove(&local);
        }
        Ok(FlowKey::new(local))
    }

    /// A bot takes `local` over or hands it back; returns the kernel update. Only a relayed
    /// flow can be injected into.
    pub fn set_inject(
        &mut self,
        local: SocketAddr,
        change: InjectChange,
    ) -> Result<(FlowKey, FlowAction), FlowError> {
        let entry = self
            .flows
            .get_mut(&local)
            .ok_or(FlowError::Unknown { local })?;
        if entry.action.flags & FLOW_F_SINK != 0 {
            return Err(FlowError::SinkInject { local });
        }
        let state = self.inject.entry(local).or_default();
        match change {
            InjectChange::TakeOver => state.talking = true,
            InjectChange::HandBack { ssrc, seq, ts } => {
                // A new epoch makes the kernel derive new deltas; 0 means "none yet".
                let epoch = state.renumber.map_or(1, |r| r.epoch.wrapping_add(1).max(1));
                state.talking = false;
                state.renumber = Some(Renumber {
                    ssrc,
                    ts,
                    seq,
                    epoch,
                });
            }
        }
        state.apply(&mut entry.action);
        Ok((FlowKey::new(local), entry.action))
    }

    /// The `FLOW_STATS` slot of `local` when its relayed RTP is renumbered (a bot handed it
    /// back): before the flow is replaced, the shell reads there where its stream stands.
    pub fn renumbered_slot(&self, local: &SocketAddr) -> Option<u32> {
        self.inject.get(local)?.renumber?;
        self.flows.get(local).map(|f| f.stats_index)
    }

    /// The renumbered stream of `local` stands at `ssrc`/`seq`/`ts` (the next packet's numbers):
    /// a replacement flow continues from there, under a new epoch. Its new `FLOW_STATS` slot
    /// starts empty, so without this the kernel would derive its deltas afresh from the last
    /// hand-back's numbers and the stream would step back.
    pub fn resume_numbering(&mut self, local: SocketAddr, ssrc: u32, seq: u16, ts: u32) {
        if let Some(state) = self.inject.get_mut(&local) {
            let epoch = state.renumber.map_or(1, |r| r.epoch.wrapping_add(1).max(1));
            state.renumber = Some(Renumber {
                ssrc,
                ts,
                seq,
                epoch,
            });
        }
    }

    /// Flows a bot was talking into when the previous agent stopped (adopted with
    /// `FLOW_F_INJECT`): nobody plays into them now, so they must be handed back.
    pub fn stale_injects(&self) -> Vec<SocketAddr> {
        self.inject
            .iter()
            .filter(|(l, i)| i.talking && self.flows.contains_key(l))
            .map(|(l, _)| *l)
            .collect()
    }

    /// Start a fork: allocate its stream ids and return the flows to rewrite with the fork flag
    /// (only those no other fork taps yet).
    pub fn start_fork(
        &mut self,
        spec: ForkSpec,
    ) -> Result<(Fork, Vec<(FlowKey, FlowAction)>), FlowError> {
        if self.forks.contains_key(&spec.call_guid) {
            return Err(FlowError::ForkExists {
                guid: spec.call_guid,
            });
        }
        let n = spec.streams.len();
        if n == 0 || n > 2 || (n == 2 && spec.streams[0].channel == spec.streams[1].channel) {
            return Err(FlowError::BadStreams);
        }
        if let Some(s) = spec
            .streams
            .iter()
            .find(|s| !self.flows.contains_key(&s.flow))
        {
            return Err(FlowError::Unknown { local: s.flow });
        }
        let mut updates = Vec::with_capacity(n);
        let mut streams = Vec::with_capacity(n);
        for s in &spec.streams {
            let id = self.next_stream;
            self.next_stream = self.next_stream.wrapping_add(1).max(1);
            if let Some(update) = self.tap(s.flow, id) {
                updates.push(update);
            }
            streams.push((id, s.flow));
        }
        let fork = Fork { spec, streams };
        self.forks.insert(fork.spec.call_guid.clone(), fork.clone());
        Ok((fork, updates))
    }

    /// One more fork stream on `local`: the first one makes `stream` the flow's tap and returns
    /// the kernel update; later ones share the tap.
    fn tap(&mut self, local: SocketAddr, stream: u32) -> Option<(FlowKey, FlowAction)> {
        if let Some(t) = self.taps.get_mut(&local) {
            t.users += 1;
            return None;
        }
        self.taps.insert(
            local,
            Tap {
                id: stream,
                users: 1,
            },
        );
        let entry = self.flows.get_mut(&local)?;
        entry.stream_id = Some(stream);
        entry.action.flags |= FLOW_F_FORK;
        entry.action.stream_id = stream;
        Some((FlowKey::new(local), entry.action))
    }

    /// One fork stream less on `local`: the last one clears the fork flag (relay untouched) and
    /// returns the kernel update.
    fn untap(&mut self, local: SocketAddr) -> Option<(FlowKey, FlowAction)> {
        let t = self.taps.get_mut(&local)?;
        t.users = t.users.saturating_sub(1);
        if t.users > 0 {
            return None;
        }
        self.taps.remove(&local);
        let entry = self.flows.get_mut(&local)?;
        entry.stream_id = None;
        entry.action.flags &= !FLOW_F_FORK;
        entry.action.stream_id = 0;
        Some((FlowKey::new(local), entry.action))
    }

    /// Stop a fork: the flows no other fork uses stop forking (relay untouched).
    pub fn stop_fork(
        &mut self,
        guid: &str,
    ) -> Result<(Fork, Vec<(FlowKey, FlowAction)>), FlowError> {
        let fork = self
            .forks
            .remove(guid)
            .ok_or_else(|| FlowError::UnknownFork {
                guid: guid.to_owned(),
            })?;
        let updates = fork
            .streams
            .iter()
            .filter_map(|(_, local)| self.untap(*local))
            .collect();
        Ok((fork, updates))
    }

    /// Re-register a fork from saved state after a restart (its flows were adopted already).
    /// A flow the journal says is forked but the pinned map does not (the agent died between
    /// the two writes) is returned, to be forked again.
    pub fn restore_fork(&mut self, fork: Fork) -> Vec<(FlowKey, FlowAction)> {
        let mut updates = Vec::new();
        for &(id, local) in &fork.streams {
            self.next_stream = self.next_stream.max(id.wrapping_add(1));
            updates.extend(self.tap(local, id));
        }
        self.forks.insert(fork.spec.call_guid.clone(), fork);
        updates
    }

    /// After [`FlowTable::restore_fork`]: adopted flows forked in the kernel that no restored
    /// fork uses (the agent died between the map write and the journal) stop forking.
    pub fn drop_unused_taps(&mut self) -> Vec<(FlowKey, FlowAction)> {
        let unused: Vec<SocketAddr> = self
            .taps
            .iter()
            .filter(|(_, t)| t.users == 0)
            .map(|(l, _)| *l)
            .collect();
        unused.into_iter().filter_map(|l| self.untap(l)).collect()
    }

    /// The tap id each of a fork's streams is fed from, in the order of `fork.streams` (the
    /// stream service's fan-out). A stream of a fork the table does not hold maps to itself.
    pub fn taps_of(&self, fork: &Fork) -> Vec<u32> {
        fork.streams
            .iter()
            .map(|(id, local)| self.taps.get(local).map_or(*id, |t| t.id))
            .collect()
    }

    pub fn flows(&self) -> impl Iterator<Item = &FlowEntry> {
        self.flows.values()
    }

    pub fn forks(&self) -> impl Iterator<Item = &Fork> {
        self.forks.values()
    }

    pub fn flow(&self, local: &SocketAddr) -> Option<&FlowEntry> {
        self.flows.get(local)
    }

    pub fn fork_count(&self) -> usize {
        self.forks.len()
    }
}

#[cfg(test)]
mod tests {
    use speech_proto::{Channel, Codec};

    use super::*;
    use control_api::StreamSpec;

    fn spec(local: &str) -> FlowSpec {
        FlowSpec {
            local: local.parse().expect("addr"),
            src: "10.0.2.1:30002".parse().expect("addr"),
            dst: "10.0.2.2:5000".parse().expect("addr"),
            expect: None,
            rtcp: false,
            payload_types: vec![0, 8],
            dtmf_pt: Some(101),
            sink: false,
        }
    }

    fn fork(guid: &str, flows: &[(&str, Channel)]) -> ForkSpec {
        ForkSpec {
            destination: None,
            call_guid: guid.into(),
            call_id: "c1".into(),
            from: "a".into(),
            to: "b".into(),
            server: "asr".into(),
            codec: Codec::Pcmu,
            ptime_ms: 20,
            metadata: Default::default(),
            streams: flows
                .iter()
                .map(|(f, c)| StreamSpec {
                    channel: *c,
                    flow: f.parse().expect("addr"),
                })
                .collect(),
            return_audio: None,
        }
    }

    #[test]
    fn add_builds_kernel_action() {
        let mut t = FlowTable::new();
        let (key, e) = t.add(&spec("10.0.1.1:30000")).expect("add");
        assert_eq!(key.socket_addr(), "10.0.1.1:30000".parse().expect("addr"));
        assert_eq!(u16::from_be(e.action.dst_port_be), 5000);
        assert!(e.action.pt_allowed(0) && e.action.pt_allowed(8) && !e.action.pt_allowed(18));
        assert_eq!(e.action.dtmf_pt, 101);
        assert_eq!(e.action.flags, 0);
        assert_eq!(
            t.add(&spec("10.0.1.1:30000")),
            Err(FlowError::Exists {
                local: "10.0.1.1:30000".parse().expect("addr")
            })
        );
        let (_, e2) = t.add(&spec("10.0.1.1:30004")).expect("add");
        assert_ne!(e.stats_index, e2.stats_index);
    }

    #[test]
    fn rejects_bad_specs() {
        let mut t = FlowTable::new();
        let mut s = spec("[fd00::1]:30000");
        assert!(matches!(t.add(&s), Err(FlowError::FamilyMismatch { .. })));
        s = spec("10.0.1.1:0");
        assert!(matches!(t.add(&s), Err(FlowError::ZeroPort { .. })));
        s = spec("10.0.1.1:30000");
        s.payload_types = vec![200];
        assert!(matches!(
            t.add(&s),
            Err(FlowError::BadPayloadType { pt: 200, .. })
        ));
        s.payload_types = vec![0];
        s.expect = Some("10.0.0.9:4000".parse().expect("addr"));
        let (_, e) = t.add(&s).expect("strict source flow");
        assert_eq!(e.action.flags & FLOW_F_STRICT_SOURCE, FLOW_F_STRICT_SOURCE);
    }

    #[test]
    fn fork_lifecycle_sets_and_clears_the_flag() {
        let mut t = FlowTable::new();
        t.add(&spec("10.0.1.1:30000")).expect("add");
        t.add(&spec("10.0.2.1:30002")).expect("add");
        let f = fork(
            "g1",
            &[
                ("10.0.1.1:30000", Channel::Caller),
                ("10.0.2.1:30002", Channel::Callee),
            ],
        );
        let (fk, updates) = t.start_fork(f.clone()).expect("start");
        assert_eq!(updates.len(), 2);
        assert!(updates.iter().all(|(_, a)| a.flags & FLOW_F_FORK != 0));
        assert_ne!(fk.streams[0].0, fk.streams[1].0);
        assert!(matches!(
            t.start_fork(f.clone()),
            Err(FlowError::ForkExists { .. })
        ));
        let (_, updates) = t.stop_fork("g1").expect("stop");
        assert!(updates
            .iter()
            .all(|(_, a)| a.flags & FLOW_F_FORK == 0 && a.stream_id == 0));
        assert!(matches!(
            t.stop_fork("g1"),
            Err(FlowError::UnknownFork { .. })
        ));
        let bad = fork(
            "g3",
            &[
                ("10.0.1.1:30000", Channel::Caller),
                ("10.0.2.1:30002", Channel::Caller),
            ],
        );
        assert_eq!(t.start_fork(bad).unwrap_err(), FlowError::BadStreams);
    }

    fn forked(t: &FlowTable, local: &str) -> Option<u32> {
        let e = t.flow(&local.parse().expect("addr")).expect("flow");
        assert_eq!(e.stream_id.is_some(), e.action.flags & FLOW_F_FORK != 0);
        e.stream_id
            .inspect(|id| assert_eq!(*id, e.action.stream_id))
    }

    #[test]
    fn two_forks_share_the_flows_tap_and_only_the_first_start_and_last_stop_touch_the_kernel() {
        let mut t = FlowTable::new();
        t.add(&spec("10.0.1.1:30000")).expect("add");
        t.add(&spec("10.0.2.1:30002")).expect("add");
        let both = [
            ("10.0.1.1:30000", Channel::Caller),
            ("10.0.2.1:30002", Channel::Callee),
        ];
        let (f1, w1) = t.start_fork(fork("g1", &both)).expect("first");
        assert_eq!(w1.len(), 2);
        // A second call GUID on the same flows: its own stream ids, no kernel write.
        let (f2, w2) = t.start_fork(fork("g2", &both)).expect("second");
        assert_eq!(w2, vec![]);
        let ids: std::collections::BTreeSet<u32> = f1
            .streams
            .iter()
            .chain(&f2.streams)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(ids.len(), 4, "stream ids are unique in the process");
        // Both are fed from the first fork's ids, the kernel's taps.
        let taps: Vec<u32> = f1.streams.iter().map(|(id, _)| *id).collect();
        assert_eq!(t.taps_of(&f1), taps);
        assert_eq!(t.taps_of(&f2), taps);
        assert_eq!(forked(&t, "10.0.1.1:30000"), Some(taps[0]));
        // The same GUID twice is still refused.
        assert!(matches!(
            t.start_fork(fork("g2", &both)),
            Err(FlowError::ForkExists { .. })
        ));
        // The first stops: nothing changes in the kernel, the second keeps the first's taps.
        let (_, w) = t.stop_fork("g1").expect("stop g1");
        assert_eq!(w, vec![]);
        assert_eq!(t.taps_of(&f2), taps);
        assert_eq!(forked(&t, "10.0.2.1:30002"), Some(taps[1]));
        // A third fork joins the taps still in use.
        let (f3, w3) = t
            .start_fork(fork("g3", &[("10.0.2.1:30002", Channel::Callee)]))
            .expect("third");
        assert_eq!((w3, t.taps_of(&f3)), (vec![], vec![taps[1]]));
        // The last user of a flow clears its fork flag, the other flow stays forked.
        let (_, w) = t.stop_fork("g2").expect("stop g2");
        assert_eq!(w.len(), 1);
        assert_eq!(
            w[0].0.socket_addr(),
            "10.0.1.1:30000".parse().expect("addr")
        );
        assert_eq!((w[0].1.flags & FLOW_F_FORK, w[0].1.stream_id), (0, 0));
        assert_eq!(forked(&t, "10.0.1.1:30000"), None);
        assert_eq!(forked(&t, "10.0.2.1:30002"), Some(taps[1]));
        let (_, w) = t.stop_fork("g3").expect("stop g3");
        assert_eq!(w.len(), 1);
        assert_eq!(forked(&t, "10.0.2.1:30002"), None);
        // A new fork on the idle flows gets a fresh tap.
        let (f4, w4) = t.start_fork(fork("g4", &both)).expect("fourth");
        assert_eq!(w4.len(), 2);
        assert!(t.taps_of(&f4).iter().all(|id| !ids.contains(id)));
    }

    #[test]
    fn a_replaced_flow_stays_forked_under_its_stream_id() {
        let mut t = FlowTable::new();
        t.add(&spec("10.0.1.1:30000")).expect("add");
        let (fk, _) = t
            .start_fork(fork("g1", &[("10.0.1.1:30000", Channel::Caller)]))
            .expect("start");
        t.remove("10.0.1.1:30000".parse().expect("addr"))
            .expect("remove");
        let mut moved = spec("10.0.1.1:30000");
        moved.dst = "10.0.2.9:6000".parse().expect("addr");
        let (_, e) = t.add(&moved).expect("re-add");
        assert_eq!(e.stream_id, Some(fk.streams[0].0));
        assert_eq!(e.action.flags & FLOW_F_FORK, FLOW_F_FORK);
        assert_eq!(e.action.stream_id, fk.streams[0].0);
        // Once the fork stops, a re-added flow is plain.
        t.stop_fork("g1").expect("stop");
        t.remove("10.0.1.1:30000".parse().expect("addr"))
            .expect("remove");
        let (_, e) = t.add(&moved).expect("re-add");
        assert_eq!(e.stream_id, None);
        assert_eq!(e.action.flags & FLOW_F_FORK, 0);
    }

    #[test]
    fn adopt_restores_stream_counter_and_slots() {
        let mut t = FlowTable::new();
        t.add(&spec("10.0.1.1:30000")).expect("add");
        let (fk, updates) = t
            .start_fork(fork("g1", &[("10.0.1.1:30000", Channel::Caller)]))
            .expect("start");
        let (key, action) = updates[0];
        let mut t2 = FlowTable::new();
        t2.adopt(key, action);
        assert_eq!(t2.restore_fork(fk.clone()), vec![]);
        assert_eq!(t2.drop_unused_taps(), vec![]);
        let e = t2.flows().next().expect("adopted").clone();
        assert_eq!(e.stream_id, Some(fk.streams[0].0));
        assert_eq!(e.dst, "10.0.2.2:5000".parse().expect("addr"));
        // New flows do not reuse the adopted slot, new streams do not reuse the adopted id.
        let (_, e2) = t2.add(&spec("10.0.1.1:30008")).expect("add");
        assert_ne!(e2.stats_index, e.stats_index);
        t2.add(&spec("10.0.1.1:30010")).expect("add");
        let (f2, _) = t2
            .start_fork(fork("g2", &[("10.0.1.1:30010", Channel::Caller)]))
            .expect("start");
        assert!(f2.streams[0].0 > fk.streams[0].0);
    }

    #[test]
    fn restart_repairs_taps_the_map_and_the_journal_disagree_on() {
        let mut t = FlowTable::new();
        t.add(&spec("10.0.1.1:30000")).expect("add");
        t.add(&spec("10.0.1.1:30002")).expect("add");
        let (f1, w) = t
            .start_fork(fork("g1", &[("10.0.1.1:30000", Channel::Caller)]))
            .expect("start");
        let plain = t
            .flow(&"10.0.1.1:30002".parse().expect("addr"))
            .expect("flow")
            .action;
        // Restart: 30000 forked in the map but journalled by nobody, 30002 plain in the map
        // but journalled for g2.
        let mut t2 = FlowTable::new();
        t2.adopt(w[0].0, w[0].1);
        t2.adopt(FlowKey::new("10.0.1.1:30002".parse().expect("addr")), plain);
        let g2 = Fork {
            spec: fork("g2", &[("10.0.1.1:30002", Channel::Callee)]),
            streams: vec![(7, "10.0.1.1:30002".parse().expect("addr"))],
        };
        let fixed = t2.restore_fork(g2.clone());
        assert_eq!(fixed.len(), 1);
        assert_eq!(
            (fixed[0].1.flags & FLOW_F_FORK, fixed[0].1.stream_id),
            (FLOW_F_FORK, 7)
        );
        let cleared = t2.drop_unused_taps();
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].0, w[0].0);
        assert_eq!(cleared[0].1.flags & FLOW_F_FORK, 0);
        assert_eq!(t2.taps_of(&g2), vec![7]);
        assert_eq!(forked(&t2, "10.0.1.1:30000"), None);
        // New ids continue after both the adopted tap and the journalled streams.
        assert!(f1.streams[0].0 < 7);
        t2.add(&spec("10.0.1.1:30010")).expect("add");
        let (f3, _) = t2
            .start_fork(fork("g3", &[("10.0.1.1:30010", Channel::Caller)]))
            .expect("start");
        assert_eq!(f3.streams[0].0, 8);
    }

    #[test]
    fn a_bot_takes_a_flow_over_and_hands_it_back_in_one_update_each() {
        let mut t = FlowTable::new();
        let local: SocketAddr = "10.0.1.1:30000".parse().expect("addr");
        t.add(&spec("10.0.1.1:30000")).expect("add");
        let (_, a) = t
            .set_inject(local, InjectChange::TakeOver)
            .expect("take over");
        assert_eq!(a.flags & (FLOW_F_INJECT | FLOW_F_RENUMBER), FLOW_F_INJECT);
        let back = InjectChange::HandBack {
            ssrc: 7,
            seq: 100,
            ts: 16_000,
        };
        let (_, a) = t.set_inject(local, back).expect("hand back");
        assert_eq!(a.flags & (FLOW_F_INJECT | FLOW_F_RENUMBER), FLOW_F_RENUMBER);
        assert_eq!(
            a.renumber,
            Renumber {
                ssrc: 7,
                ts: 16_000,
                seq: 100,
                epoch: 1
            }
        );
        // The next talkspurt keeps the numbering and adds the hold; its hand-back is a new epoch.
        let (_, a) = t.set_inject(local, InjectChange::TakeOver).expect("again");
        assert_eq!(
            a.flags & (FLOW_F_INJECT | FLOW_F_RENUMBER),
            FLOW_F_INJECT | FLOW_F_RENUMBER
        );
        let (_, a) = t.set_inject(local, back).expect("hand back");
        assert_eq!((a.renumber.epoch, a.flags & FLOW_F_INJECT), (2, 0));
        assert_eq!(t.flow(&local).expect("flow").action, a);
    }

    #[test]
    fn inject_state_follows_a_replaced_forked_flow_and_survives_a_restart() {
        let mut t = FlowTable::new();
        let local: SocketAddr = "10.0.1.1:30000".parse().expect("addr");
        t.add(&spec("10.0.1.1:30000")).expect("add");
        t.start_fork(fork("g", &[("10.0.1.1:30000", Channel::Callee)]))
            .expect("fork");
        t.set_inject(local, InjectChange::TakeOver)
            .expect("take over");
        // A re-INVITE replaces the flow while the bot talks: the replacement is held too.
        t.remove(local).expect("remove");
        let (key, e) = t.add(&spec("10.0.1.1:30000")).expect("re-add");
        assert_ne!(e.action.flags & FLOW_F_INJECT, 0);
        // A restarted agent finds it pinned that way and must hand it back.
        let mut after = FlowTable::new();
        after.adopt(key, e.action);
        assert_eq!(after.stale_injects(), vec![local]);
        let (_, a) = after
            .set_inject(
                local,
                InjectChange::HandBack {
                    ssrc: 1,
                    seq: 2,
                    ts: 3,
                },
            )
            .expect("hand back");
        assert_eq!(a.flags & FLOW_F_INJECT, 0);
        assert!(after.stale_injects().is_empty());
        // Without a fork naming it, a removed flow forgets the bot.
        let mut t = FlowTable::new();
        t.add(&spec("10.0.1.1:30000")).expect("add");
        t.set_inject(local, InjectChange::TakeOver)
            .expect("take over");
        t.remove(local).expect("remove");
        let (_, e) = t.add(&spec("10.0.1.1:30000")).expect("re-add");
        assert_eq!(e.action.flags & (FLOW_F_INJECT | FLOW_F_RENUMBER), 0);
    }

    #[test]
    fn inject_is_refused_on_sink_and_unknown_flows() {
        let mut t = FlowTable::new();
        let mut s = spec("10.0.1.1:30000");
        s.sink = true;
        t.add(&s).expect("add");
        let local = s.local;
        assert_eq!(
            t.set_inject(local, InjectChange::TakeOver),
            Err(FlowError::SinkInject { local })
        );
        let other: SocketAddr = "10.0.1.1:30002".parse().expect("addr");
        assert_eq!(
            t.set_inject(other, InjectChange::TakeOver),
            Err(FlowError::Unknown { local: other })
        );
    }

    #[test]
    fn a_replaced_renumbered_flow_continues_from_where_its_stream_stood() {
        let mut t = FlowTable::new();
        let local: SocketAddr = "10.0.1.1:30000".parse().expect("addr");
        t.add(&spec("10.0.1.1:30000")).expect("add");
        t.start_fork(fork("g", &[("10.0.1.1:30000", Channel::Callee)]))
            .expect("fork");
        assert_eq!(t.renumbered_slot(&local), None, "not renumbered yet");
        t.set_inject(local, InjectChange::TakeOver)
            .expect("take over");
        let back = InjectChange::HandBack {
            ssrc: 7,
            seq: 100,
            ts: 16_000,
        };
        let (_, a) = t.set_inject(local, back).expect("hand back");
        assert_eq!(t.renumbered_slot(&local), Some(a.stats_index));
        // The relay went on for a while; then a re-INVITE replaces the flow.
        t.resume_numbering(local, 7, 150, 24_000);
        t.remove(local).expect("remove");
        let (_, e) = t.add(&spec("10.0.1.1:30000")).expect("re-add");
        assert_eq!(
            e.action.renumber,
            Renumber {
                ssrc: 7,
                ts: 24_000,
                seq: 150,
                epoch: 2
            }
        );
        assert_eq!(e.action.flags & FLOW_F_RENUMBER, FLOW_F_RENUMBER);
    }
}
