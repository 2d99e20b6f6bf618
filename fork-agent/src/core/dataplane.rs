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

use crate::core::flows::{FlowError, FlowTable, Fork};
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
            self.table.restore_fork(fork.clone());
            found.forks += 1;
            out.extend(self.sync(&fork));
            out.push(Action::StartStreams {
                fork: Box::new(fork),
                resumed: true,
            });
        }
        (found, out)
    }

    /// Plans a fork start. Nothing has happened outside the table yet; the shell hands
    /// `txn.fork` to the stream service, then writes `txn.writes` in order.
    pub fn begin_fork(&mut self, spec: ForkSpec) -> Result<ForkTxn, FlowError> {
        let (fork, writes) = self.table.start_fork(spec)?;
        Ok(ForkTxn { fork, writes })
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

    /// Stops a fork: the kernel stops forking its flows (relay untouched), the fallbacks too,
    /// the stream service says `stop`, the journal records it.
    pub fn stop_fork(
        &mut self,
        call_guid: &str,
        reason: StopReason,
    ) -> Result<Vec<Action>, FlowError> {
        let (fork, updates) = self.table.stop_fork(call_guid)?;
        let mut out: Vec<Action> = updates
            .into_iter()
            .map(|(key, action)| Action::WriteFlow { key, action })
            .collect();
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
}
