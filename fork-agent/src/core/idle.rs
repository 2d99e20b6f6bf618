//! Idle flows (sans-IO): which flows `[dataplane] flow_idle_timeout_secs` ends, and which
//! forks are left without a flow afterwards.
//!
//! Role: a call whose endpoints vanished without a BYE, or whose sip-agent lost it, would keep
//! its flows and fork forever. A flow is idle when no packet reached it for the timeout,
//! counted from its last packet or, if none ever came, from when it was installed (or adopted
//! by this agent). rtpengine's model, scaled to what fork-agent knows: rtpengine ends a call
//! after `--timeout` (60 s) without media, or `--silent-timeout` (3600 s) when the SDP put it
//! on hold; fork-agent sees no SDP, so its one timeout must be the hold-safe one
//! ([`DEFAULT_TIMEOUT_SECS`], docs/fork-agent.md "Idle flows").
//!
//! Inputs: the flows' last packet and install times (CLOCK_MONOTONIC ns, the clock
//! `bpf_ktime_get_ns` uses) and `now`. Outputs: the flows to remove ([`idle_flows`]) and then
//! the forks none of whose streams has a flow any more ([`forks_without_flows`]). The shell
//! removes them, publishes `flow_removed` and stops the forks (reason `call_end`).

use std::net::SocketAddr;

/// Default `flow_idle_timeout_secs`: one hour, rtpengine's `--silent-timeout` default. A call
/// on hold with `a=inactive` sends no RTP at all (and RTCP only if its endpoints send it), so a
/// shorter default would end parked calls.
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;

/// What the idle check needs of one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowActivity {
    /// The flow's `local`.
    pub local: SocketAddr,
    /// When its last packet arrived (`FLOW_STATS.last_seen_ns`), 0 if none yet.
    pub last_seen_ns: u64,
    /// When it was installed or adopted.
    pub installed_ns: u64,
}

/// The flows idle for longer than `timeout_ns` at `now_ns`; none when `timeout_ns` is 0
/// (idle removal off).
pub fn idle_flows(flows: &[FlowActivity], now_ns: u64, timeout_ns: u64) -> Vec<SocketAddr> {
    if timeout_ns == 0 {
        return Vec::new();
    }
    flows
        .iter()
        .filter(|f| now_ns.saturating_sub(f.last_seen_ns.max(f.installed_ns)) > timeout_ns)
        .map(|f| f.local)
        .collect()
}

/// GUIDs of the forks whose every stream flow is gone (`has_flow` says whether a flow is still
/// installed).
pub fn forks_without_flows<'a>(
    forks: impl Iterator<Item = (&'a str, &'a [(u32, SocketAddr)])>,
    has_flow: impl Fn(&SocketAddr) -> bool,
) -> Vec<String> {
    forks
        .filter(|(_, streams)| !streams.iter().any(|(_, l)| has_flow(l)))
        .map(|(g, _)| g.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn f(local: &str, last_seen: u64, installed: u64) -> FlowActivity {
        FlowActivity {
            local: local.parse().unwrap(),
            last_seen_ns: last_seen * S,
            installed_ns: installed * S,
        }
    }

    #[test]
    fn idle_counts_from_the_last_packet_or_else_from_install() {
        let flows = [
            f("10.0.0.1:30000", 100, 10), // last packet at 100 s
            f("10.0.0.1:30001", 0, 10),   // never a packet, installed at 10 s
            f("10.0.0.1:30002", 0, 50),   // never a packet, installed at 50 s
        ];
        let t = 60 * S;
        assert!(idle_flows(&flows, 60 * S, t).is_empty());
        assert_eq!(
            idle_flows(&flows, 71 * S, t),
            vec!["10.0.0.1:30001".parse().unwrap()]
        );
        // Exactly the timeout is not yet idle; one step past is.
        assert_eq!(idle_flows(&flows, 110 * S, t).len(), 1);
        assert_eq!(idle_flows(&flows, 111 * S, t).len(), 2);
        assert_eq!(idle_flows(&flows, 160 * S, t).len(), 2);
        assert_eq!(idle_flows(&flows, 161 * S, t).len(), 3);
        assert!(idle_flows(&flows, 10_000 * S, 0).is_empty(), "0 = never");
    }

    #[test]
    fn a_fork_ends_only_when_all_its_flows_are_gone() {
        let a: SocketAddr = "10.0.0.1:30000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:30002".parse().unwrap();
        let both = [(1, a), (2, b)];
        let one = [(3, b)];
        let forks = || [("g1", &both[..]), ("g2", &one[..])].into_iter();
        assert!(forks_without_flows(forks(), |_| true).is_empty());
        assert_eq!(forks_without_flows(forks(), |l| *l == a), vec!["g2"]);
        assert_eq!(forks_without_flows(forks(), |_| false), vec!["g1", "g2"]);
    }
}
