//! Two media nodes behind one Kamailio rtpengine set (docs/operations.md "Scaling out with a
//! SIP proxy's rtpengine set"): each node is a namespace of its own running fork-agent (XDP on
//! its fa0/fb0) and ng-agent, the forker namespace is the SIP proxy host (Kamailio only), and
//! the caller's and callee's links become bridges every host is plugged into.
//!
//! ```text
//!  caller ns: br0 10.77.1.2 ── ca0 ── fa0 10.77.1.1   forker ns (Kamailio, SIP only)
//!                           ── n1a ── fa0 10.77.1.11  node 1 (fork-agent, ng-agent on :2223)
//!                           ── n2a ── fa0 10.77.1.12  node 2
//!  callee ns: br0 10.77.2.2 ── cb0 ── fb0 10.77.2.1   forker ns
//!                           ── n1b ── fb0 10.77.2.11  node 1
//!                           ── n2b ── fb0 10.77.2.12  node 2
//! ```
//!
//! Kamailio reaches the ng sockets over the caller's bridge, as a proxy reaches media hosts over
//! its LAN. Nothing is shared between the nodes.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ng_agent::core::bencode::Value;
use xdpfork_tests::{addrs::SPEECH_WS, bin, control, empty_dir, ns_run, run, Host, Scenario};

use super::{ng_request, spawn_kamailio, spawn_ng_agent, stop_kamailio, wait_kamailio, NgNode};
use crate::sip_support::SipTest;

/// Addresses of node `n` (1 or 2): the caller side, the callee side, the ng socket.
const NODES: [(&str, &str, &str); 2] = [
    ("10.77.1.11", "10.77.2.11", "10.77.1.11:2223"),
    ("10.77.1.12", "10.77.2.12", "10.77.1.12:2223"),
];
const NAMES: [(&str, &str); 2] = [
    ("fork-agent-n1", "ng-agent-n1"),
    ("fork-agent-n2", "ng-agent-n2"),
];

/// One media node.
pub struct Node {
    pub host: Host,
    /// Its fork-agent's control socket.
    pub socket: PathBuf,
    /// Its ng-agent's ng address.
    pub ng: &'static str,
    /// Its caller-side and callee-side addresses.
    pub caller_ip: &'static str,
    pub callee_ip: &'static str,
    pub fork_agent: &'static str,
    pub ng_agent: &'static str,
}

impl Node {
    /// fork-agent's `show_flows` (fails once the node is gone).
    pub fn flows(&self) -> Result<Vec<serde_json::Value>> {
        let f = control(&self.socket, &serde_json::json!({"v":1,"op":"show_flows"}))?;
        Ok(f.as_array().cloned().unwrap_or_default())
    }
}

/// The running cluster: the sipp caller and callee of sip_support (`t`; its [`Scenario`] names
/// node 1's fork-agent), two nodes, Kamailio; Kamailio is stopped on drop.
pub struct NgCluster {
    pub t: SipTest,
    pub nodes: [Node; 2],
}

impl NgCluster {
    /// Builds the topology, starts both nodes, then Kamailio with both ng sockets in one set.
    pub fn start() -> Result<NgCluster> {
        let mut topo = xdpfork_tests::Topology::new()?;
        let mut nodes = Vec::new();
        for (i, ((caller_ip, callee_ip, ng), (fork_agent, ng_agent))) in
            NODES.into_iter().zip(NAMES).enumerate()
        {
            let host = Host::Node(i as u8 + 1);
            topo.add_host(host)?;
            nodes.push(Node {
                host,
                socket: topo.dir.join(format!("{fork_agent}.sock")),
                ng,
                caller_ip,
                callee_ip,
                fork_agent,
                ng_agent,
            });
        }
        let nodes: [Node; 2] = match nodes.try_into() {
            Ok(n) => n,
            Err(_) => bail!("two nodes expected"),
        };
        wire(&topo, &nodes)?;
        let scenario = Scenario {
            config: topo.dir.join(format!("{}.toml", nodes[0].fork_agent)),
            socket: nodes[0].socket.clone(),
            speech_out: PathBuf::new(),
            summary: PathBuf::new(),
            topo,
        };
        let mut t = SipTest::without_sip_agent(scenario);
        for node in &nodes {
            start_fork_agent(&mut t, node)?;
            spawn_ng_agent(
                &mut t,
                &NgNode {
                    name: node.ng_agent,
                    host: node.host,
                    listen: node.ng,
                    caller_ip: node.caller_ip,
                    callee_ip: node.callee_ip,
                    control: node.socket.clone(),
                    extra: String::new(),
                },
            )?;
        }
        let set = nodes
            .iter()
            .map(|n| format!("udp:{}", n.ng))
            .collect::<Vec<_>>()
            .join(" ");
        spawn_kamailio(&mut t, &set)?;
        let c = NgCluster { t, nodes };
        wait_kamailio(&c.t)?;
        Ok(c)
    }

    /// One ng request to `node`'s ng-agent, sent from the proxy host.
    pub fn ng(&self, node: &Node, request: Value) -> Result<Value> {
        ng_request(&self.t.s.topo, Host::Forker, node.ng, request)
    }

    /// Calls `node`'s ng-agent created so far (`statistics`' `managedsessions`).
    pub fn managed_sessions(&self, node: &Node) -> Result<i64> {
        let r = self.ng(node, Value::dict([("command", Value::str("statistics"))]))?;
        match r
            .get("statistics")
            .and_then(|s| s.get("totalstatistics"))
            .and_then(|t| t.get("managedsessions"))
        {
            Some(Value::Int(n)) => Ok(*n),
            _ => bail!("statistics without managedsessions: {r:?}"),
        }
    }

    /// Waits (bounded) until no node holds a flow (every call's `delete` went through).
    pub fn wait_no_flows(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: usize = self
                .nodes
                .iter()
                .map(|n| n.flows().map(|f| f.len()))
                .sum::<Result<usize>>()?;
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{left} flows left after the calls\n{}", self.diag());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Logs of Kamailio and every node's daemons, plus the sipp message logs.
    pub fn diag(&self) -> String {
        let topo = &self.t.s.topo;
        let mut out = self.t.diag(None);
        for name in ["kamailio"]
            .into_iter()
            .chain(self.nodes.iter().flat_map(|n| [n.ng_agent, n.fork_agent]))
        {
            out += &format!("\n{name} log (tail):\n{}", topo.log_tail(name, 60));
        }
        out
    }
}

impl Drop for NgCluster {
    fn drop(&mut self) {
        stop_kamailio(&mut self.t);
    }
}

/// Turns the caller's and callee's links into bridges and plugs both nodes into them.
fn wire(topo: &xdpfork_tests::Topology, nodes: &[Node; 2]) -> Result<()> {
    for (h, own, link, side) in [
        (Host::Caller, "10.77.1.2/24", "ca0", 'a'),
        (Host::Callee, "10.77.2.2/24", "cb0", 'b'),
    ] {
        let ns = topo.ns(h);
        ns_run(&ns, "ip", &["link", "add", "br0", "type", "bridge"])?;
        ns_run(&ns, "ip", &["addr", "flush", "dev", link])?;
        ns_run(&ns, "ip", &["link", "set", link, "master", "br0"])?;
        for (i, node) in nodes.iter().enumerate() {
            let port = format!("n{}{side}", i + 1);
            let (inner, addr) = match side {
                'a' => ("fa0", node.caller_ip),
                _ => ("fb0", node.callee_ip),
            };
            let node_ns = topo.ns(node.host);
            run(
                "ip",
                &[
                    "link", "add", &port, "netns", &ns, "type", "veth", "peer", "name", inner,
                    "netns", &node_ns,
                ],
            )?;
            ns_run(&ns, "ip", &["link", "set", &port, "master", "br0"])?;
            ns_run(&ns, "ip", &["link", "set", &port, "up"])?;
            ns_run(
                &node_ns,
                "ip",
                &["addr", "add", &format!("{addr}/24"), "dev", inner],
            )?;
            ns_run(&node_ns, "ip", &["link", "set", inner, "up"])?;
            // As in Topology::build: NAPI for XDP_REDIRECT into the veth, and full checksums
            // from the hosts (veth would hand XDP only the pseudo-header sum).
            ns_run(&ns, "ethtool", &["-K", &port, "gro", "on", "tx", "off"])?;
            ns_run(&node_ns, "ethtool", &["-K", inner, "gro", "on"])?;
        }
        ns_run(&ns, "ip", &["addr", "add", own, "dev", "br0"])?;
        ns_run(&ns, "ethtool", &["-K", "br0", "tx", "off"])?;
        ns_run(&ns, "ip", &["link", "set", "br0", "up"])?;
    }
    Ok(())
}

/// fork-agent of `node`, with the standard config (XDP on the node's fa0/fb0, its own pin
/// directory and state), run with an empty PATH as [`Scenario::start_agent`] does.
fn start_fork_agent(t: &mut SipTest, node: &Node) -> Result<()> {
    let topo = &mut t.s.topo;
    let cfg = topo.dir.join(format!("{}.toml", node.fork_agent));
    // fork-agent creates its own pin directory, not its parent (the topology's).
    std::fs::create_dir_all(&topo.pin_dir)?;
    std::fs::write(
        &cfg,
        Scenario::fork_agent_config(
            &topo.pin_dir.join(node.fork_agent),
            &node.socket,
            &topo.dir.join(format!("{}-state", node.fork_agent)),
            SPEECH_WS,
        ),
    )?;
    let cfg_s = cfg.to_string_lossy().into_owned();
    let empty = empty_dir(&topo.dir.join("empty-path"))?;
    let empty = empty.to_string_lossy().into_owned();
    topo.spawn_env(
        node.fork_agent,
        node.host,
        &bin("fork-agent")?,
        &["run", "--config", &cfg_s],
        &[("PATH", &empty)],
    )?;
    topo.wait_fork_agent(&node.socket, node.fork_agent)
}
