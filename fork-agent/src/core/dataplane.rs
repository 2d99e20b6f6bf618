//! fork-agent's orchestration: what a fork start or stop, an idle flow, or a restart means for
//! the kernel maps, the stream service, the user-space fallback and the fork journal.
//!
//! Role: the decisions `io/agent.rs` used to take inline, as a sans-IO core. It owns the
//! [`FlowTable`] and the time each flow was installed, and turns inputs into [`Action`]s that
//! the shell performs in order. A fork start is a transaction: [`Orchestrator::begin_fork`]
//! plans it, the shell hands the streams to the stream service and writes the planned map
//! entries one by one, then calls [`Orchestrator::commit_fork`] or, on the first failure,
//! [`Orchestrator::abort_fork`] with the keys it did write: all or nothing, so the kernel never
//! forks a flow the table does not know and the speech server is told the fork ended.
//!
//! Several forks (call GUIDs) may fork the same flows: the kernel forks a flow under one tap
//! id while any of them runs (core::flows), so only the first start and the last stop write
//! `FLOWS`; the stream service fans each tap out to the forks' own stream ids
//! ([`Action::StartStreams`] `taps`). Undoing a later fork's start therefore writes nothing.
//!
//! Inputs: [`Orchestrator::adopt`] (pinned flows and journalled forks after a restart),
//! [`Orchestrator::begin_fork`] / [`Orchestrator::commit_fork`] / [`Orchestrator::abort_fork`],
//! [`Orchestrator::stop_fork`], [`Orchestrator::expire_idle`] (with each flow's last packet
//! time, read from the kernel by the shell), and flow add/remove through [`Orchestrator::table`].
//! Outputs: [`Action`] lists. Time comes in as monotonic nanoseconds; nothing here touches a
//! map, a socket or a clock.

use std::collections::HashMap;
use std::net::SocketAddr;

use control_api::{Event, FlowRemovedReason, ForkSpec, ForkStarted, StartedStream};
use fork_common::{FlowAction, FlowKey};
use speech_proto::StopReason;

use crate::core::flows::{FlowError, FlowTable, Fork, InjectChange};
use crate::core::fork_journal::Entry;
use crate::core::idle;

/// Something the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this entry into the kernel's `FLOWS` map.
    WriteFlow {
        /// Key.
        key: FlowKey,
        /// Value.
        action: FlowAction,
    },
    /// Delete this entry from `FLOWS`.
    RemoveFlow {
        /// Key.
        key: FlowKey,
    },
    /// Close the user-space fallback socket of a removed flow.
    RemoveFallback {
        /// The flow's `local`.
        local: SocketAddr,
        /// Its `src`.
        src: SocketAddr,
    },
    /// Give the fallback relay of `local` the flow's current action (fork on or off).
    SyncFallback {
        /// The flow's `local`.
        local: SocketAddr,
        /// Its action now.
        action: FlowAction,
    },
    /// Hand the fork to the stream service (`resumed`: re-announce after a restart).
    StartStreams {
        /// The fork.
        fork: Box<Fork>,
        /// The kernel tap each of its streams is fed from (order of `fork.streams`).
        taps: Vec<u32>,
        /// Announce with `resumed: true`.
        resumed: bool,
    },
    /// Tell the stream service the fork ended.
    StopStreams {
        /// The fork's GUID.
        call_guid: String,
        /// Why.
        reason: StopReason,
    },
    /// Append to the fork journal.
    Journal(Entry),
    /// Tell `subscribe`rs.
    Publish(Event),
}

/// A fork start in progress (from [`Orchestrator::begin_fork`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ForkTxn {
    /// The fork as the table now holds it (stream ids allocated).
    pub fork: Fork,
    /// The kernel tap each stream is fed from (order of `fork.streams`): the stream's own id
    /// on a flow no other fork uses, else the tap already there.
    pub taps: Vec<u32>,
    /// Map entries to write, in order, after the stream service has the fork.
    pub writes: Vec<(FlowKey, FlowAction)>,
}

/// What a restart found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Adopted {
    /// Relay flows taken over from the pinned map.
    pub flows: usize,
    /// Forks restored from the journal.
    pub forks: usize,
}

/// The orchestration core. See the module docs.
#[derive(Debug)]
pub struct Orchestrator {
    table: FlowTable,
    installed_ns: HashMap<SocketAddr, u64>,
}

impl Default for Orchestrator {
    fn default() -> Self {
        Self::new()
    }
}

impl Orchestrator {
    /// An empty core.
    pub fn new() -> Self {
        Orchestrator {
            table: FlowTable::new(),
            installed_ns: HashMap::new(),
        }
    }

    /// The flow table (flow add/remove and TURN statistics slots go through it directly).
    pub fn table(&self) -> &FlowTable {
        &self.table
    }

    /// The flow table, for flow add/remove and TURN statistics slots.
    pub fn table_mut(&mut self) -> &mut FlowTable {
        &mut self.table
    }

    /// A flow was written to the kernel at `now_ns`: its idle time starts here.
    pub fn flow_installed(&mut self, local: SocketAddr, now_ns: u64) {
        self.installed_ns.insert(local, now_ns);
    }

    /// When `local` was installed (or adopted).
    pub fn installed_ns(&self, local: &SocketAddr) -> Option<u64> {
        self.installed_ns.get(local).copied()
    }

    /// A flow was removed on request (`flow_del`): returns its key and source, or why not.
    pub fn remove_flow(&mut self, local: SocketAddr) -> Result<Vec<Action>, FlowError> {
        let src = self.table.flow(&local).map(|f| f.src);
        let key = self.table.remove(local)?;
        self.installed_ns.remove(&local);
        let mut out = vec![Action::RemoveFlow { key }];
        if let Some(src) = src {
            out.push(Action::RemoveFallback { local, src });
        }
        Ok(out)
    }

    /// After a restart: take over the relay flows found pinned (`flows`, TURN entries already
    /// filtered out) and the forks the journal kept. Every adopted flow counts as installed at
    /// `now_ns`; every fork is re-announced (`resumed`) and its flows' fallback relays forked.
    /// Where the map and the journal disagree (the agent died between the two writes), the
    /// journal wins: its forks' flows fork, other flows stop forking.
    pub fn adopt(
        &mut self,
        flows: impl IntoIterator<Item = (FlowKey, FlowAction)>,
        forks: impl IntoIterator<Item = Fork>,
        now_ns: u64,
    ) -> (Adopted, Vec<Action>) {
        let mut found = Adopted::default();
        for (key, action) in flows {
            self.installed_ns.insert(key.socket_addr(), now_ns);
            self.table.adopt(key, action);
            found.flows += 1;
        }
        let mut out = Vec::new();
        for fork in forks {
            // A journalled fork whose flows all vanished (flushed maps) has nothing to fork.
            if !fork
                .streams
                .iter()
                .any(|(_, l)| self.table.flow(l).is_some())
            {
                out.push(Action::Journal(Entry::Stop {
                    call_guid: fork.spec.call_guid.clone(),
                }));
                continue;
            }
            let repaired = self.table.restore_fork(fork.clone());
            out.extend(Self::writes(repaired));
            found.forks += 1;
            out.extend(self.sync(&fork));
            out.push(Action::StartStreams {
                taps: self.table.taps_of(&fork),
                fork: Box::new(fork),
                resumed: true,
            });
        }
        let unused = self.table.drop_unused_taps();
        for (key, action) in &unused {
            out.push(Action::SyncFallback {
                local: key.socket_addr(),
                action: *action,
            });
        }
        out.extend(Self::writes(unused));
        (found, out)
    }

    /// Plans a fork start. Nothing has happened outside the table yet; the shell hands
    /// `txn.fork` to the stream service, then writes `txn.writes` in order.
    pub fn begin_fork(&mut self, spec: ForkSpec) -> Result<ForkTxn, FlowError> {
        let (fork, writes) = self.table.start_fork(spec)?;
        let taps = self.table.taps_of(&fork);
        Ok(ForkTxn { fork, taps, writes })
    }

    /// Every write succeeded: the fallback relays fork too, the journal records it, and the
    /// answer names the stream ids.
    pub fn commit_fork(&mut self, txn: &ForkTxn) -> (ForkStarted, Vec<Action>) {
        let mut out = self.sync(&txn.fork);
        out.push(Action::Journal(Entry::Start(txn.fork.clone())));
        let streams = txn
            .fork
            .streams
            .iter()
            .zip(&txn.fork.spec.streams)
            .map(|((id, _), s)| StartedStream {
                stream_id: *id,
                channel: s.channel,
            })
            .collect();
        (ForkStarted { streams }, out)
    }

    /// The start failed after `written` (a prefix of `txn.writes`) reached the kernel, or the
    /// stream service refused it (`streams_started` false): undo exactly that.
    pub fn abort_fork(
        &mut self,
        txn: &ForkTxn,
        written: &[FlowKey],
        streams_started: bool,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if let Ok((_, undo)) = self.table.stop_fork(&txn.fork.spec.call_guid) {
            out.extend(
                undo.into_iter()
                    .filter(|(k, _)| written.contains(k))
                    .map(|(key, action)| Action::WriteFlow { key, action }),
            );
        }
        if streams_started {
            out.push(Action::StopStreams {
                call_guid: txn.fork.spec.call_guid.clone(),
                reason: StopReason::Error,
            });
        }
        out
    }

    /// Stops a fork: the kernel stops forking the flows no other fork uses (relay untouched),
    /// the fallbacks too, the stream service says `stop`, the journal records it.
    pub fn stop_fork(
        &mut self,
        call_guid: &str,
        reason: StopReason,
    ) -> Result<Vec<Action>, FlowError> {
        let (fork, updates) = self.table.stop_fork(call_guid)?;
        let mut out = Self::writes(updates);
        out.extend(self.sync(&fork));
        out.push(Action::StopStreams {
            call_guid: fork.spec.call_guid.clone(),
            reason,
        });
        out.push(Action::Journal(Entry::Stop {
            call_guid: fork.spec.call_guid,
        }));
        Ok(out)
    }

    /// A voice bot takes a relayed flow over or hands it back (inject mode): one `FLOWS` write,
    /// and the fallback relay follows so it does not send while the bot does.
    pub fn inject(
        &mut self,
        local: SocketAddr,
        change: InjectChange,
    ) -> Result<Vec<Action>, FlowError> {
        let (key, action) = self.table.set_inject(local, change)?;
        Ok(vec![
            Action::WriteFlow { key, action },
            Action::SyncFallback { local, action },
        ])
    }

    /// The flows whose idle time the shell must read: `(local, stats_index)`.
    pub fn idle_candidates(&self) -> Vec<(SocketAddr, u32)> {
        self.table
            .flows()
            .map(|f| (f.local, f.stats_index))
            .collect()
    }

    /// Removes the flows with no packet for `timeout_ns` (`last_seen`: each candidate's last
    /// packet time from the kernel, 0 for never), tells subscribers (`flow_removed`, so
    /// sip-agent releases the call), and stops the forks left without any flow (`call_end`):
    /// a media-dead call must not keep its fork either.
    pub fn expire_idle(
        &mut self,
        now_ns: u64,
        timeout_ns: u64,
        last_seen: &[(SocketAddr, u64)],
    ) -> Vec<Action> {
        let activity: Vec<idle::FlowActivity> = last_seen
            .iter()
            .map(|&(local, last_seen_ns)| idle::FlowActivity {
                local,
                last_seen_ns,
                installed_ns: self.installed_ns.get(&local).copied().unwrap_or(now_ns),
            })
            .collect();
        let mut out = Vec::new();
        for local in idle::idle_flows(&activity, now_ns, timeout_ns) {
            if let Ok(mut removed) = self.remove_flow(local) {
                out.append(&mut removed);
                out.push(Action::Publish(Event::FlowRemoved {
                    local,
                    reason: FlowRemovedReason::Idle,
                }));
            }
        }
        let orphaned = idle::forks_without_flows(
            self.table
                .forks()
                .map(|f| (f.spec.call_guid.as_str(), f.streams.as_slice())),
            |l| self.table.flow(l).is_some(),
        );
        for guid in orphaned {
            if let Ok(mut stopped) = self.stop_fork(&guid, StopReason::CallEnd) {
                out.append(&mut stopped);
            }
        }
        out
    }

    fn writes(updates: Vec<(FlowKey, FlowAction)>) -> Vec<Action> {
        updates
            .into_iter()
            .map(|(key, action)| Action::WriteFlow { key, action })
            .collect()
    }

    /// The fallback relays of a fork's flows, with their current actions.
    fn sync(&self, fork: &Fork) -> Vec<Action> {
        fork.streams
            .iter()
            .filter_map(|(_, local)| {
                self.table.flow(local).map(|f| Action::SyncFallback {
                    local: *local,
                    action: f.action,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use control_api::{FlowSpec, StreamSpec};
    use fork_common::FLOW_F_FORK;
    use speech_proto::{Channel, Codec};

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn add(o: &mut Orchestrator, local: &str, now_ns: u64) {
        let spec = FlowSpec {
            local: sa(local),
            src: sa("10.0.2.1:30002"),
            dst: sa("10.0.2.2:5000"),
            expect: None,
            rtcp: false,
            payload_types: vec![0, 8],
            dtmf_pt: None,
            sink: false,
        };
        o.table_mut().add(&spec).expect("flow");
        o.flow_installed(spec.local, now_ns);
    }

    fn spec(guid: &str) -> ForkSpec {
        ForkSpec {
            destination: None,
            call_guid: guid.into(),
            call_id: String::new(),
            from: String::new(),
            to: String::new(),
            server: "asr".into(),
            codec: Codec::Pcmu,
            ptime_ms: 20,
            metadata: Default::default(),
            streams: vec![
                StreamSpec {
                    channel: Channel::Caller,
                    flow: sa("10.0.1.1:30000"),
                },
                StreamSpec {
                    channel: Channel::Callee,
                    flow: sa("10.0.1.1:30002"),
                },
            ],
            return_audio: None,
        }
    }

    fn call(o: &mut Orchestrator) {
        add(o, "10.0.1.1:30000", 0);
        add(o, "10.0.1.1:30002", 0);
    }

    #[test]
    fn a_committed_fork_forks_the_fallbacks_journals_and_answers_its_stream_ids() {
        let mut o = Orchestrator::new();
        call(&mut o);
        let txn = o.begin_fork(spec("g1")).expect("plan");
        assert_eq!(txn.writes.len(), 2);
        assert!(txn.writes.iter().all(|(_, a)| a.flags & FLOW_F_FORK != 0));
        let (answer, actions) = o.commit_fork(&txn);
        assert_eq!(
            answer
                .streams
                .iter()
                .map(|s| s.stream_id)
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(
            matches!(actions.last(), Some(Action::Journal(Entry::Start(f))) if f.spec.call_guid == "g1")
        );
        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::SyncFallback { action, .. } if action.flags & FLOW_F_FORK != 0))
                .count(),
            2
        );
    }

    #[test]
    fn a_failed_map_write_undoes_exactly_what_was_written_and_stops_the_streams() {
        let mut o = Orchestrator::new();
        call(&mut o);
        let txn = o.begin_fork(spec("g1")).expect("plan");
        // The first write reached the kernel, the second failed.
        let written = [txn.writes[0].0];
        let undo = o.abort_fork(&txn, &written, true);
        assert_eq!(undo.len(), 2, "{undo:?}");
        match &undo[0] {
            Action::WriteFlow { key, action } => {
                assert_eq!(*key, txn.writes[0].0);
                assert_eq!(action.flags & FLOW_F_FORK, 0, "fork flag cleared");
            }
            other => panic!("expected the undo write first, got {other:?}"),
        }
        assert_eq!(
            undo[1],
            Action::StopStreams {
                call_guid: "g1".into(),
                reason: StopReason::Error
            }
        );
        assert_eq!(o.table().fork_count(), 0);
        assert!(o.table().flows().all(|f| f.stream_id.is_none()));
        // The same GUID can start again, on the same flows.
        assert!(o.begin_fork(spec("g1")).is_ok());
    }

    #[test]
    fn a_stream_service_refusal_undoes_the_plan_without_touching_the_kernel() {
        let mut o = Orchestrator::new();
        call(&mut o);
        let txn = o.begin_fork(spec("g1")).expect("plan");
        assert_eq!(o.abort_fork(&txn, &[], false), vec![]);
        assert_eq!(o.table().fork_count(), 0);
    }

    #[test]
    fn stop_clears_the_fork_flag_tells_the_service_and_journals() {
        let mut o = Orchestrator::new();
        call(&mut o);
        let txn = o.begin_fork(spec("g1")).expect("plan");
        o.commit_fork(&txn);
        let acts = o.stop_fork("g1", StopReason::Request).expect("stop");
        let writes = acts
            .iter()
            .filter(|a| matches!(a, Action::WriteFlow { action, .. } if action.flags & FLOW_F_FORK == 0))
            .count();
        assert_eq!(writes, 2);
        assert!(acts.contains(&Action::StopStreams {
            call_guid: "g1".into(),
            reason: StopReason::Request
        }));
        assert!(
            matches!(acts.last(), Some(Action::Journal(Entry::Stop { call_guid })) if call_guid == "g1")
        );
        assert_eq!(
            o.stop_fork("g1", StopReason::Request),
            Err(FlowError::UnknownFork { guid: "g1".into() })
        );
    }

    #[test]
    fn restart_adopts_flows_and_resumes_journalled_forks_with_flows_left() {
        // A first agent forks a call, then dies; the next one reads the map and the journal.
        let mut first = Orchestrator::new();
        call(&mut first);
        let txn = first.begin_fork(spec("g1")).expect("plan");
        first.commit_fork(&txn);
        let pinned: Vec<(FlowKey, FlowAction)> = first
            .table()
            .flows()
            .map(|f| (FlowKey::new(f.local), f.action))
            .collect();
        let mut gone = spec("g2");
        gone.streams = vec![StreamSpec {
            channel: Channel::Caller,
            flow: sa("10.0.1.1:39000"),
        }];
        let orphan = Fork {
            spec: gone,
            streams: vec![(9, sa("10.0.1.1:39000"))],
        };
        let mut o = Orchestrator::new();
        let t = 500 * SEC;
        let (found, acts) = o.adopt(pinned, [txn.fork.clone(), orphan], t);
        assert_eq!(found, Adopted { flows: 2, forks: 1 });
        assert!(acts.contains(&Action::StartStreams {
            fork: Box::new(txn.fork.clone()),
            taps: vec![1, 2],
            resumed: true
        }));
        assert!(acts.contains(&Action::Journal(Entry::Stop {
            call_guid: "g2".into()
        })));
        assert_eq!(o.installed_ns(&sa("10.0.1.1:30000")), Some(t));
        // New stream ids continue after the adopted ones.
        add(&mut o, "10.0.1.1:31000", t);
        let mut next = spec("g3");
        next.streams.truncate(1);
        next.streams[0].flow = sa("10.0.1.1:31000");
        assert_eq!(o.begin_fork(next).expect("plan").fork.streams[0].0, 3);
    }

    #[test]
    fn idle_flows_expire_on_a_stepped_clock_and_take_their_orphaned_fork_along() {
        let mut o = Orchestrator::new();
        call(&mut o);
        let txn = o.begin_fork(spec("g1")).expect("plan");
        o.commit_fork(&txn);
        let timeout = 60 * SEC;
        let a = sa("10.0.1.1:30000");
        let b = sa("10.0.1.1:30002");
        // At 50 s nothing is idle yet (never seen, installed at 0).
        assert_eq!(o.expire_idle(50 * SEC, timeout, &[(a, 0), (b, 0)]), vec![]);
        // At 70 s: `a` saw a packet at 40 s, `b` never did: only `b` goes, the fork stays.
        let acts = o.expire_idle(70 * SEC, timeout, &[(a, 40 * SEC), (b, 0)]);
        assert!(acts.contains(&Action::Publish(Event::FlowRemoved {
            local: b,
            reason: FlowRemovedReason::Idle
        })));
        assert!(!acts.iter().any(|x| matches!(x, Action::StopStreams { .. })));
        // At 101 s `a` is idle too: removed, and the fork without flows stops as call_end.
        let acts = o.expire_idle(101 * SEC, timeout, &[(a, 40 * SEC)]);
        assert!(acts.contains(&Action::RemoveFlow {
            key: FlowKey::new(a)
        }));
        assert!(acts.contains(&Action::StopStreams {
            call_guid: "g1".into(),
            reason: StopReason::CallEnd
        }));
        assert_eq!(o.table().fork_count(), 0);
        assert_eq!(o.table().flows().count(), 0);
    }

    /// The `FLOWS` writes among `acts`: (local, forked, tap).
    fn kernel_writes(acts: &[Action]) -> Vec<(SocketAddr, bool, u32)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::WriteFlow { key, action } => Some((
                    key.socket_addr(),
                    action.flags & FLOW_F_FORK != 0,
                    action.stream_id,
                )),
                _ => None,
            })
            .collect()
    }

    /// g1 then g2 on the same call, both committed.
    fn forked_twice(o: &mut Orchestrator) -> (ForkTxn, ForkTxn) {
        call(o);
        let t1 = o.begin_fork(spec("g1")).expect("plan g1");
        o.commit_fork(&t1);
        let t2 = o.begin_fork(spec("g2")).expect("plan g2");
        o.commit_fork(&t2);
        (t1, t2)
    }

    #[test]
    fn a_second_fork_of_a_call_gets_its_own_streams_fed_from_the_first_forks_taps() {
        let mut o = Orchestrator::new();
        let (t1, t2) = forked_twice(&mut o);
        assert_eq!(t2.writes, vec![], "the kernel already forks both flows");
        assert_eq!(t1.taps, vec![1, 2]);
        assert_eq!(t2.taps, vec![1, 2]);
        let (answer, _) = o.commit_fork(&t2);
        let ids: Vec<u32> = answer.streams.iter().map(|s| s.stream_id).collect();
        assert_eq!(
            ids,
            vec![3, 4],
            "the second server sees stream ids of its own"
        );
        assert_eq!(
            o.begin_fork(spec("g2")),
            Err(FlowError::ForkExists { guid: "g2".into() })
        );
    }

    #[test]
    fn stopping_one_of_two_forks_leaves_the_kernel_forking_until_the_last_stops() {
        let mut o = Orchestrator::new();
        forked_twice(&mut o);
        let acts = o.stop_fork("g1", StopReason::Request).expect("stop g1");
        assert_eq!(kernel_writes(&acts), vec![]);
        assert!(acts.contains(&Action::StopStreams {
            call_guid: "g1".into(),
            reason: StopReason::Request
        }));
        // The fallbacks keep forking under the taps too.
        assert!(acts.iter().all(|a| !matches!(a,
            Action::SyncFallback { action, .. } if action.flags & FLOW_F_FORK == 0)));
        assert!(o.table().flows().all(|f| f.stream_id.is_some()));
        let acts = o.stop_fork("g2", StopReason::CallEnd).expect("stop g2");
        assert_eq!(
            kernel_writes(&acts),
            vec![
                (sa("10.0.1.1:30000"), false, 0),
                (sa("10.0.1.1:30002"), false, 0)
            ]
        );
        assert_eq!(
            acts.iter()
                .filter(|a| matches!(a, Action::SyncFallback { action, .. } if action.flags & FLOW_F_FORK == 0))
                .count(),
            2
        );
    }

    #[test]
    fn a_rolled_back_second_fork_leaves_the_first_untouched() {
        let mut o = Orchestrator::new();
        call(&mut o);
        let t1 = o.begin_fork(spec("g1")).expect("plan g1");
        o.commit_fork(&t1);
        let t2 = o.begin_fork(spec("g2")).expect("plan g2");
        // The stream service took it, then the start failed: nothing of g1 is undone.
        let undo = o.abort_fork(&t2, &[], true);
        assert_eq!(
            undo,
            vec![Action::StopStreams {
                call_guid: "g2".into(),
                reason: StopReason::Error
            }]
        );
        assert_eq!(o.table().fork_count(), 1);
        assert!(o.table().flows().all(|f| f.action.flags & FLOW_F_FORK != 0));
        // g1's stop is still the one that ends the kernel fork.
        let acts = o.stop_fork("g1", StopReason::Request).expect("stop g1");
        assert_eq!(kernel_writes(&acts).len(), 2);
    }

    #[test]
    fn restart_adopts_both_forks_of_a_call_and_feeds_them_from_the_pinned_taps() {
        let mut first = Orchestrator::new();
        let (t1, t2) = forked_twice(&mut first);
        let pinned: Vec<(FlowKey, FlowAction)> = first
            .table()
            .flows()
            .map(|f| (FlowKey::new(f.local), f.action))
            .collect();
        let mut o = Orchestrator::new();
        let (found, acts) = o.adopt(pinned, [t1.fork.clone(), t2.fork.clone()], SEC);
        assert_eq!(found, Adopted { flows: 2, forks: 2 });
        assert_eq!(kernel_writes(&acts), vec![], "map and journal agree");
        for t in [&t1, &t2] {
            assert!(acts.contains(&Action::StartStreams {
                fork: Box::new(t.fork.clone()),
                taps: vec![1, 2],
                resumed: true
            }));
        }
        // After the restart, stopping one still keeps the other's audio in the kernel.
        let acts = o.stop_fork("g2", StopReason::Request).expect("stop g2");
        assert_eq!(kernel_writes(&acts), vec![]);
        let acts = o.stop_fork("g1", StopReason::Request).expect("stop g1");
        assert_eq!(kernel_writes(&acts).len(), 2);
    }

    #[test]
    fn idle_flows_take_every_fork_of_the_call_along() {
        let mut o = Orchestrator::new();
        forked_twice(&mut o);
        let (a, b) = (sa("10.0.1.1:30000"), sa("10.0.1.1:30002"));
        let acts = o.expire_idle(100 * SEC, 60 * SEC, &[(a, 0), (b, 0)]);
        let stopped: Vec<&str> = acts
            .iter()
            .filter_map(|x| match x {
                Action::StopStreams { call_guid, reason } => {
                    assert_eq!(*reason, StopReason::CallEnd);
                    Some(call_guid.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(stopped, vec!["g1", "g2"]);
        assert_eq!(o.table().fork_count(), 0);
        // A re-added flow is plain: no tap outlived its forks.
        add(&mut o, "10.0.1.1:30000", 100 * SEC);
        assert!(o.table().flows().all(|f| f.stream_id.is_none()));
    }
}
