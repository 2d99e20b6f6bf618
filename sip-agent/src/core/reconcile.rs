//! Restart reconciliation (sans-IO): after a restart, remove the fork-agent flows and forks of
//! calls this sip-agent no longer knows.
//!
//! Role: the call journal (core::call_journal) brings back every established call, but a call
//! can still be lost to a restart: one answered in the instant before the crash whose record
//! was not written yet, a journal that was deleted or unreadable, or a state directory that is
//! not configured. Its flows and fork would stay in fork-agent until its idle timeout. So at
//! start the agent asks fork-agent for its flows and forks twice:
//!
//! 1. **Survey**, at once: the owned flows no known call stands for have their ports reserved in
//!    the port pool ([`ReconcileOutput::Reserve`]), so no new call is handed a port whose old
//!    flow is still installed (fork-agent would refuse its `flow_add`).
//! 2. **Sweep**, after the grace period: the forks and flows still unknown are removed
//!    ([`ReconcileOutput::ForkStop`] first, then [`ReconcileOutput::FlowDel`]) and the reserved
//!    ports are given back ([`ReconcileOutput::Release`]). The grace period lets operations the
//!    previous instance had already written to the control socket finish, and fork-agent
//!    finish a restart of its own, before anything is judged.
//!
//! Only what sip-agent installed is touched: a flow is ours when its `local` is on one of our
//! media addresses inside our port range ([`Ownership`], the current configuration plus the
//! ranges the journal recorded for earlier ones); a fork is ours when one of its streams is on
//! such a flow. turn-server's offloaded channels are not in `show_flows` at all, and flows other
//! clients add on other addresses or ports are left alone.
//!
//! Inputs: [`Reconciler::handle_timeout`] (stepped `now`), [`Reconciler::handle_listing`] with
//! fork-agent's answers and the live calls' [`Known`] flows and forks at that moment.
//! Outputs: drain [`Reconciler::poll_output`] after each input; re-read
//! [`Reconciler::poll_timeout`]. A failed query is asked again after [`RETRY`].

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use control_api::{FlowRow, Fork};
use serde::{Deserialize, Serialize};

/// How long after a failed query (fork-agent unreachable or not ready) it is asked again.
pub const RETRY: Duration = Duration::from_secs(2);

/// The media addresses one configuration of sip-agent hands out: every `local` of its flows is
/// one of `ips` with a port in `first..=last` (RTCP included, it is RTP + 1 and inside the
/// range, core::port_pool).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner {
    /// `media.ip` and every route's `bind_media`.
    pub ips: Vec<IpAddr>,
    /// First port of `media.ports`.
    pub first: u16,
    /// Last port of `media.ports`.
    pub last: u16,
}

impl Owner {
    /// True when `local` is one of this configuration's media addresses.
    pub fn owns(&self, local: SocketAddr) -> bool {
        self.ips.contains(&local.ip()) && (self.first..=self.last).contains(&local.port())
    }
}

/// Every configuration whose flows count as ours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership(pub Vec<Owner>);

impl Ownership {
    /// True when `local` belongs to one of the configurations.
    pub fn owns(&self, local: SocketAddr) -> bool {
        self.0.iter().any(|o| o.owns(local))
    }
}

/// What the live calls stand for: flow `local`s and fork GUIDs (media layer's view, including
/// requests still queued towards fork-agent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// Flows asked for by live calls.
    pub flows: BTreeSet<SocketAddr>,
    /// Forks of live calls.
    pub forks: BTreeSet<String>,
}

/// fork-agent's flows and forks, as `show_flows` and `show_forks` list them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Every flow's `local`.
    pub flows: Vec<SocketAddr>,
    /// Every fork: its GUID and its streams' flows.
    pub forks: Vec<(String, Vec<SocketAddr>)>,
}

impl Listing {
    /// Reads the answers of `show_flows` and `show_forks`.
    pub fn from_answers(flows: &[FlowRow], forks: &[Fork]) -> Listing {
        Listing {
            flows: flows.iter().map(|f| f.local).collect(),
            forks: forks
                .iter()
                .map(|f| {
                    let locals = f.streams.iter().map(|(_, local)| *local).collect();
                    (f.spec.call_guid.clone(), locals)
                })
                .collect(),
        }
    }
}

/// The flows and forks of a listing that are ours and that no live call stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Orphans {
    /// Flows to delete.
    pub flows: Vec<SocketAddr>,
    /// Forks to stop (by GUID).
    pub forks: Vec<String>,
}

/// The decision, pure: a fork is an orphan when one of its streams is on an owned flow and no
/// live call has its GUID; a flow when it is owned and no live call asked for it.
pub fn orphans(listing: &Listing, known: &Known, owned: &Ownership) -> Orphans {
    Orphans {
        flows: listing
            .flows
            .iter()
            .filter(|l| owned.owns(**l) && !known.flows.contains(l))
            .copied()
            .collect(),
        forks: listing
            .forks
            .iter()
            .filter(|(guid, streams)| {
                streams.iter().any(|l| owned.owns(*l)) && !known.forks.contains(guid)
            })
            .map(|(guid, _)| guid.clone())
            .collect(),
    }
}

/// Which of the two queries a listing answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// At start: reserve the ports of unknown flows.
    Survey,
    /// After the grace period: remove them.
    Sweep,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileOutput {
    /// Ask fork-agent `show_flows` and `show_forks` and feed both answers back with this query.
    Ask(Query),
    /// Mark this RTP port in use in the port pool.
    Reserve(u16),
    /// Give a port reserved by [`ReconcileOutput::Reserve`] back.
    Release(u16),
    /// `fork_stop` this fork (reason `call_end`).
    ForkStop(String),
    /// `flow_del` this flow.
    FlowDel(SocketAddr),
    /// Reconciliation finished: this many forks and flows were removed.
    Done {
        /// Forks stopped.
        forks: usize,
        /// Flows deleted.
        flows: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Survey wanted at the instant (first, or a retry).
    SurveyDue(Instant),
    /// Survey asked, answer pending.
    Surveying,
    /// Waiting for the grace period to end.
    Grace,
    /// Sweep asked, answer pending.
    Sweeping,
    /// Sweep wanted again at the instant (after a failure).
    SweepDue(Instant),
    /// Finished.
    Done,
}

/// The reconciliation machine (see the module doc).
#[derive(Debug)]
pub struct Reconciler {
    owned: Ownership,
    state: State,
    /// End of the grace period.
    sweep_at: Instant,
    /// Ports reserved by the survey, given back by the sweep.
    reserved: BTreeSet<u16>,
    out: VecDeque<ReconcileOutput>,
}

impl Reconciler {
    /// Starts at `now`: the survey is due at once, the sweep at `now + grace`.
    pub fn new(now: Instant, grace: Duration, owned: Ownership) -> Self {
        Self {
            owned,
            state: State::SurveyDue(now),
            sweep_at: now + grace,
            reserved: BTreeSet::new(),
            out: VecDeque::new(),
        }
    }

    /// Next output; drain until `None` after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ReconcileOutput> {
        self.out.pop_front()
    }

    /// Next deadline; `None` while an answer is pending or when done.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::SurveyDue(at) => Some(at.min(self.sweep_at)),
            State::Grace => Some(self.sweep_at),
            State::SweepDue(at) => Some(at),
            State::Surveying | State::Sweeping | State::Done => None,
        }
    }

    /// True once the sweep is done.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Fires what is due; a call before any deadline does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            // The grace period ended before any survey succeeded: go straight to the sweep.
            State::SurveyDue(_) | State::Grace if now >= self.sweep_at => self.ask_sweep(),
            State::SurveyDue(at) if now >= at => {
                self.state = State::Surveying;
                self.out.push_back(ReconcileOutput::Ask(Query::Survey));
            }
            State::SweepDue(at) if now >= at => self.ask_sweep(),
            _ => {}
        }
    }

    /// The pool refused [`ReconcileOutput::Reserve`] of `port` (a call holds it already): it
    /// must not be released by the sweep either.
    pub fn handle_not_reserved(&mut self, port: u16) {
        self.reserved.remove(&port);
    }

    fn ask_sweep(&mut self) {
        self.state = State::Sweeping;
        self.out.push_back(ReconcileOutput::Ask(Query::Sweep));
    }

    /// fork-agent's answer to `query` (`Err`: it could not be asked or answered with an
    /// error), judged against what the live calls stand for now.
    pub fn handle_listing(
        &mut self,
        now: Instant,
        query: Query,
        listing: Result<Listing, String>,
        known: &Known,
    ) {
        match (query, self.state) {
            (Query::Survey, State::Surveying) => match listing {
                Ok(l) => {
                    for local in orphans(&l, known, &self.owned).flows {
                        // The RTP port of the pair (RTCP is the odd one above it).
                        let port = local.port() & !1;
                        if !self.reserved.contains(&port) {
                            self.reserved.insert(port);
                            self.out.push_back(ReconcileOutput::Reserve(port));
                        }
                    }
                    self.state = State::Grace;
                }
                Err(_) => self.state = State::SurveyDue(now + RETRY),
            },
            (Query::Sweep, State::Sweeping) => match listing {
                Ok(l) => {
                    let o = orphans(&l, known, &self.owned);
                    let (forks, flows) = (o.forks.len(), o.flows.len());
                    self.out
                        .extend(o.forks.into_iter().map(ReconcileOutput::ForkStop));
                    self.out
                        .extend(o.flows.into_iter().map(ReconcileOutput::FlowDel));
                    // After the deletes: the shell queues them first, so a call that gets one
                    // of these ports adds its flow after the old one is gone.
                    self.out.extend(
                        std::mem::take(&mut self.reserved)
                            .into_iter()
                            .map(ReconcileOutput::Release),
                    );
                    self.out.push_back(ReconcileOutput::Done { forks, flows });
                    self.state = State::Done;
                }
                Err(_) => self.state = State::SweepDue(now + RETRY),
            },
            // An answer to a query no longer pending (cannot happen with one shell): ignored.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::epoch;
    use serde_json::json;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn owned() -> Ownership {
        Ownership(vec![Owner {
            ips: vec!["10.77.1.1".parse().unwrap(), "10.77.2.1".parse().unwrap()],
            first: 30000,
            last: 30099,
        }])
    }

    fn drain(r: &mut Reconciler) -> Vec<ReconcileOutput> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    /// fork-agent holds: a known call (30000/30002 + RTCP, fork "known"), an unknown call
    /// (30010/30012 + RTCP, fork "lost"), another client's flow outside our range, and a flow
    /// on an address that is not ours.
    fn listing() -> Listing {
        Listing {
            flows: vec![
                sa("10.77.1.1:30000"),
                sa("10.77.2.1:30002"),
                sa("10.77.1.1:30001"),
                sa("10.77.2.1:30003"),
                sa("10.77.1.1:30010"),
                sa("10.77.2.1:30012"),
                sa("10.77.1.1:30011"),
                sa("10.77.1.1:31000"),
                sa("10.77.3.1:30020"),
            ],
            forks: vec![
                (
                    "known".into(),
                    vec![sa("10.77.1.1:30000"), sa("10.77.2.1:30002")],
                ),
                (
                    "lost".into(),
                    vec![sa("10.77.1.1:30010"), sa("10.77.2.1:30012")],
                ),
                ("foreign".into(), vec![sa("10.77.1.1:31000")]),
            ],
        }
    }

    fn known() -> Known {
        Known {
            flows: [
                "10.77.1.1:30000",
                "10.77.2.1:30002",
                "10.77.1.1:30001",
                "10.77.2.1:30003",
            ]
            .into_iter()
            .map(sa)
            .collect(),
            forks: ["known".to_string()].into_iter().collect(),
        }
    }

    #[test]
    fn only_owned_unknown_flows_and_forks_are_orphans() {
        let o = orphans(&listing(), &known(), &owned());
        assert_eq!(
            o.flows,
            vec![
                sa("10.77.1.1:30010"),
                sa("10.77.2.1:30012"),
                sa("10.77.1.1:30011")
            ]
        );
        assert_eq!(o.forks, vec!["lost".to_string()]);
        // Nothing is ours under another configuration.
        let other = Ownership(vec![Owner {
            ips: vec!["10.9.9.9".parse().unwrap()],
            first: 30000,
            last: 30099,
        }]);
        assert_eq!(
            orphans(&listing(), &Known::default(), &other),
            Orphans::default()
        );
    }

    #[test]
    fn survey_reserves_then_sweep_removes_after_the_grace_period() {
        let t0 = epoch();
        let grace = Duration::from_secs(30);
        let mut r = Reconciler::new(t0, grace, owned());
        assert_eq!(r.poll_timeout(), Some(t0));
        r.handle_timeout(t0);
        assert_eq!(drain(&mut r), vec![ReconcileOutput::Ask(Query::Survey)]);
        assert_eq!(r.poll_timeout(), None, "answer pending");
        r.handle_listing(t0, Query::Survey, Ok(listing()), &known());
        assert_eq!(
            drain(&mut r),
            vec![
                ReconcileOutput::Reserve(30010),
                ReconcileOutput::Reserve(30012)
            ]
        );
        assert_eq!(r.poll_timeout(), Some(t0 + grace));
        // Nothing happens before the grace period ends.
        r.handle_timeout(t0 + grace - Duration::from_millis(1));
        assert!(drain(&mut r).is_empty());
        r.handle_timeout(t0 + grace);
        assert_eq!(drain(&mut r), vec![ReconcileOutput::Ask(Query::Sweep)]);
        r.handle_listing(t0 + grace, Query::Sweep, Ok(listing()), &known());
        assert_eq!(
            drain(&mut r),
            vec![
                ReconcileOutput::ForkStop("lost".into()),
                ReconcileOutput::FlowDel(sa("10.77.1.1:30010")),
                ReconcileOutput::FlowDel(sa("10.77.2.1:30012")),
                ReconcileOutput::FlowDel(sa("10.77.1.1:30011")),
                ReconcileOutput::Release(30010),
                ReconcileOutput::Release(30012),
                ReconcileOutput::Done { forks: 1, flows: 3 },
            ]
        );
        assert!(r.is_done());
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn a_call_that_became_known_during_the_grace_period_is_kept() {
        let t0 = epoch();
        let mut r = Reconciler::new(t0, Duration::from_secs(5), owned());
        r.handle_timeout(t0);
        drain(&mut r);
        r.handle_listing(t0, Query::Survey, Ok(listing()), &Known::default());
        assert_eq!(drain(&mut r).len(), 4, "every owned flow's port reserved");
        // A new call had taken 30010 already: its port is not given back by the sweep.
        r.handle_not_reserved(30010);
        r.handle_timeout(t0 + Duration::from_secs(5));
        drain(&mut r);
        // By the sweep, the calls are known (e.g. a late journal entry, or a new call).
        r.handle_listing(
            t0 + Duration::from_secs(5),
            Query::Sweep,
            Ok(listing()),
            &known(),
        );
        let out = drain(&mut r);
        assert!(!out.contains(&ReconcileOutput::FlowDel(sa("10.77.1.1:30000"))));
        assert!(!out.contains(&ReconcileOutput::ForkStop("known".into())));
        assert!(out.contains(&ReconcileOutput::Release(30000)));
        assert!(!out.contains(&ReconcileOutput::Release(30010)));
    }

    #[test]
    fn failures_are_retried_and_the_grace_period_still_bounds_the_survey() {
        let t0 = epoch();
        let grace = Duration::from_secs(5);
        let mut r = Reconciler::new(t0, grace, owned());
        r.handle_timeout(t0);
        drain(&mut r);
        r.handle_listing(t0, Query::Survey, Err("not ready".into()), &known());
        assert_eq!(r.poll_timeout(), Some(t0 + RETRY));
        r.handle_timeout(t0 + RETRY);
        assert_eq!(drain(&mut r), vec![ReconcileOutput::Ask(Query::Survey)]);
        r.handle_listing(
            t0 + RETRY,
            Query::Survey,
            Err("unreachable".into()),
            &known(),
        );
        // The next retry would fall after the grace period: the sweep comes first.
        r.handle_timeout(t0 + grace);
        assert_eq!(drain(&mut r), vec![ReconcileOutput::Ask(Query::Sweep)]);
        r.handle_listing(
            t0 + grace,
            Query::Sweep,
            Err("unreachable".into()),
            &known(),
        );
        assert_eq!(r.poll_timeout(), Some(t0 + grace + RETRY));
        r.handle_timeout(t0 + grace + RETRY);
        assert_eq!(drain(&mut r), vec![ReconcileOutput::Ask(Query::Sweep)]);
        r.handle_listing(t0 + grace + RETRY, Query::Sweep, Ok(listing()), &known());
        assert!(r.is_done());
        // A stale answer changes nothing.
        r.handle_listing(t0 + grace + RETRY, Query::Survey, Ok(listing()), &known());
        assert!(drain(&mut r)
            .iter()
            .all(|o| !matches!(o, ReconcileOutput::Reserve(_))));
    }

    #[test]
    fn listings_are_read_from_fork_agents_answers() {
        // As fork-agent answers them (docs/control-api.md), read by control-api.
        let flows = json!([{"local":"10.77.1.1:30000","src":"10.77.2.1:30002","dst":"10.77.2.2:40000",
            "stream_id":1,"stats_index":0,"path":"idle","packets":0,"bytes":0,"forked":0,"lost":0,
            "out_of_order":0,"wrong_pt":0,"errors":0,"strict_drops":0,"passed":0,"dtmf":0,"rtcp":0,
            "ssrc":0,"last_seq":0,"idle_ms":null,"userspace_packets":0,"userspace_bytes":0,
            "userspace_forked":0,"userspace_fork_drops":0,"fallback":"bound"}]);
        let forks = json!([{"spec":{"call_guid":"g","server":"asr","codec":"PCMU","streams":[]},
                            "streams":[[1,"10.77.1.1:30000"],[2,"10.77.2.1:30002"]]}]);
        let flows: Vec<FlowRow> = serde_json::from_value(flows).expect("show_flows");
        let forks: Vec<Fork> = serde_json::from_value(forks).expect("show_forks");
        let l = Listing::from_answers(&flows, &forks);
        assert_eq!(l.flows, vec![sa("10.77.1.1:30000")]);
        assert_eq!(
            l.forks,
            vec![(
                "g".to_string(),
                vec![sa("10.77.1.1:30000"), sa("10.77.2.1:30002")]
            )]
        );
    }
}
