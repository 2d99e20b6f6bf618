//! `xdpfork-bench turn`: TURN ChannelData relayed client → peer (RFC 8656 §12.5), xdpfork's
//! kernel channel offload against coturn's `turnserver`, side by side in one run.
//!
//! Input: the sweep options. Output: a [`Report`]. Call order: build the fork-agent topology and
//! install one channel through the control API (`turn_channel_add`, what turn-server does on
//! ChannelBind when offload is on); build a plain topology, start coturn in its forker
//! namespace with long-term credentials, then Allocate (401 challenge, authenticated retry,
//! RFC 8489 §9.2) and ChannelBind (RFC 8656 §11) from the client socket with turn-core's codec;
//! then blast ChannelData from that socket through both and count what the peer receives.
//!
//! ```text
//!  caller ns (client 10.77.1.2:50000) → 10.77.1.1:3478 [forker] 10.77.2.1:24000 → peer 10.77.2.2:60000
//! ```

use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::json;
use turn_core::{
    stun::{long_term_key, Attribute, Class, Message, MessageBuilder, Method, TransactionId},
    RustCrypto,
};
use xdpfork_tests::{Host, Scenario, Topology};

use crate::{
    connected, host_facts, load::Template, one_pid, summarize, sweep, thread_all, warm_up,
    xdp_run_time, Opts, Report, Variant, XdpRow,
};

const CLIENT: &str = "10.77.1.2:50000";
const SERVER: &str = "10.77.1.1:3478";
const RELAY_IP: &str = "10.77.2.1";
const K_RELAY: &str = "10.77.2.1:24000";
const PEER: &str = "10.77.2.2:60000";
const CHANNEL: u16 = 0x4001;
const REALM: &str = "bench.example";
const USER: &str = "bench";
const PASSWORD: &str = "bench-pw";

/// ChannelData (RFC 8656 §12.4) carrying a 172-byte RTP-sized payload; the peer receives the
/// payload alone, with the stamp at its start.
fn channel_template() -> Template {
    let mut bytes = CHANNEL.to_be_bytes().to_vec();
    bytes.extend_from_slice(&172u16.to_be_bytes());
    bytes.extend(std::iter::repeat_n(0xd5u8, 172));
    Template {
        bytes,
        stamp_at: 4,
        patch: |_, _| {},
        seq_base: 0,
    }
}

/// What the benchmark needs from a STUN response.
struct StunResp {
    class: Class,
    code: Option<u16>,
    nonce: Option<String>,
    relayed: Option<SocketAddr>,
}

/// One STUN request/response exchange on `sock` (bounded to 3 s).
fn exchange(
    sock: &UdpSocket,
    server: SocketAddr,
    method: Method,
    attrs: &[Attribute<'_>],
    nonce: Option<&str>,
    txn: u32,
) -> Result<StunResp> {
    let mut id = [0x42u8; 12];
    id[..4].copy_from_slice(&txn.to_be_bytes());
    let txid = TransactionId(id);
    let mut b = MessageBuilder::new(Class::Request, method, txid);
    for a in attrs {
        b.add(a)?;
    }
    if let Some(nonce) = nonce {
        b.add(&Attribute::Username(USER))?;
        b.add(&Attribute::Realm(REALM))?;
        b.add(&Attribute::Nonce(nonce))?;
        b.add_integrity(
            &long_term_key(&RustCrypto, USER, REALM, PASSWORD),
            &RustCrypto,
        )?;
    }
    sock.send_to(&b.finish(), server)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Ok(n) = sock.recv(&mut buf) else {
            continue;
        };
        let Ok(m) = Message::parse(&buf[..n]) else {
            continue;
        };
        if m.transaction_id() != txid {
            continue;
        }
        return Ok(StunResp {
            class: m.class(),
            code: m.error_code()?.map(|(c, _)| c),
            nonce: m.nonce()?.map(str::to_owned),
            relayed: m.xor_relayed_address()?,
        });
    }
    bail!("no STUN response from {server} within 3 s")
}

/// Allocate with long-term credentials and bind [`CHANNEL`] to [`PEER`]; returns the relayed
/// address.
fn allocate_and_bind(sock: &UdpSocket, server: SocketAddr) -> Result<SocketAddr> {
    let transport = [Attribute::RequestedTransport(17)];
    let r = exchange(sock, server, Method::ALLOCATE, &transport, None, 1)?;
    let nonce = match (r.code, r.nonce) {
        (Some(401), Some(n)) => n,
        other => bail!("expected a 401 challenge with a nonce, got {other:?}"),
    };
    let r = exchange(sock, server, Method::ALLOCATE, &transport, Some(&nonce), 2)?;
    let relayed = match (r.class, r.relayed) {
        (Class::Success, Some(a)) => a,
        (class, _) => bail!("Allocate failed: {class:?} {:?}", r.code),
    };
    let bind = [
        Attribute::ChannelNumber(CHANNEL),
        Attribute::XorPeerAddress(PEER.parse()?),
    ];
    let r = exchange(sock, server, Method::CHANNEL_BIND, &bind, Some(&nonce), 3)?;
    if r.class != Class::Success {
        bail!("ChannelBind failed: {:?} {:?}", r.class, r.code);
    }
    Ok(relayed)
}

/// Start coturn in the forker namespace of `t`: UDP only, long-term credentials, relay ports on
/// the callee side.
fn start_coturn(t: &mut Topology) -> Result<()> {
    let pidfile = t.dir.join("turnserver.pid");
    let user = format!("--user={USER}:{PASSWORD}");
    let realm = format!("--realm={REALM}");
    let pid = format!("--pidfile={}", pidfile.display());
    let relay_ip = format!("--relay-ip={RELAY_IP}");
    let args = [
        "-n", // no configuration file
        "--listening-ip=10.77.1.1",
        "--listening-port=3478",
        &relay_ip,
        "--min-port=24000",
        "--max-port=24099",
        "--lt-cred-mech",
        &user,
        &realm,
        "--no-tcp",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--no-tcp-relay",
        "--allowed-peer-ip=10.77.2.2",
        "--log-file=stdout",
        "--simple-log",
        &pid,
    ];
    t.spawn(
        "turnserver",
        Host::Forker,
        Path::new("/usr/bin/turnserver"),
        &args,
    )
    .context("starting coturn's turnserver (apt-get install coturn)")
}

pub fn run(opts: &Opts) -> Result<Report> {
    let facts = host_facts();
    eprintln!("xdpfork-bench turn: building topologies");
    let s = Scenario::start()?;
    s.ctl(json!({"v":1,"op":"turn_channel_add","channel":{
        "client": CLIENT, "server": SERVER, "number": CHANNEL, "relay": K_RELAY, "peer": PEER
    }}))?;
    let k_napi = thread_all(&s.topo, &[Host::Forker, Host::Callee])?;
    let mut u = Topology::new()?;
    start_coturn(&mut u)?;
    let u_napi = thread_all(&u, &[Host::Forker, Host::Callee])?;
    let client = u.udp_socket(Host::Caller, CLIENT.parse()?)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let relayed = loop {
        match allocate_and_bind(&client, SERVER.parse()?) {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline && u.is_running("turnserver") => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.context(format!("coturn log:\n{}", u.log("turnserver")))),
        }
    };
    client.connect(SERVER)?;

    let agent = one_pid(&s.topo, Host::Forker, "fork-agent")?;
    let turnserver = one_pid(&u, Host::Forker, "turnserver")?;
    for pid in [agent, turnserver] {
        crate::load::boost_process(pid);
    }
    let napi = |v: &[(Host, Vec<i32>)], h: Host| -> Vec<i32> {
        v.iter()
            .filter(|(x, _)| *x == h)
            .flat_map(|(_, p)| p.clone())
            .collect()
    };
    let tasks = |threads: &[(Host, Vec<i32>)], name: &str, pid: i32| {
        let mut relay = crate::cpu::Tasks::default();
        relay.add("napi threads (forker ns)", napi(threads, Host::Forker));
        relay.add(name, vec![pid]);
        let mut other = crate::cpu::Tasks::default();
        other.add("napi threads (callee ns)", napi(threads, Host::Callee));
        (relay, other)
    };
    let (relay, other) = tasks(&k_napi, "fork-agent", agent);
    let kernel = Variant {
        name: "xdpfork XDP channel offload".into(),
        tx: connected(&s.topo, Host::Caller, CLIENT, SERVER.parse()?)?,
        rx: s.topo.udp_socket(Host::Callee, PEER.parse()?)?,
        template: channel_template(),
        rx_stamp_at: 0,
        relay,
        other,
        sent: Default::default(),
        ns: [Host::Caller, Host::Forker, Host::Callee].map(|h| s.topo.ns(h)),
    };
    let (relay, other) = tasks(&u_napi, "turnserver", turnserver);
    let coturn = Variant {
        name: "coturn turnserver".into(),
        tx: client,
        rx: u.udp_socket(Host::Callee, PEER.parse()?)?,
        template: channel_template(),
        rx_stamp_at: 0,
        relay,
        other,
        sent: Default::default(),
        ns: [Host::Caller, Host::Forker, Host::Callee].map(|h| u.ns(h)),
    };
    let variants = [kernel, coturn];
    let mut run = 1000u32;
    for v in &variants {
        run += 1;
        warm_up(v, run).with_context(|| format!("warming up {}", v.name))?;
    }
    let points = sweep(&variants, opts, &mut run)?;
    run += 1;
    let xdp = xdp_run_time(
        &variants[0],
        &s.topo.ns(Host::Forker),
        100_000,
        opts.secs,
        run,
    )?;
    let names: Vec<String> = variants.iter().map(|v| v.name.clone()).collect();
    let mut md = format!(
        "## `cargo xtask bench turn`\n\n{facts}\nChannelData (4-byte header + 172 bytes) client → peer, one channel (coturn allocated relay {relayed}, the kernel channel relays from {K_RELAY}); {} repetitions × {} s per point, medians shown.\n\n",
        opts.reps, opts.secs
    );
    md.push_str(&summarize(&points, &names, &opts.rates, "msg"));
    md.push_str("\nXDP program run time (bpf_stats, separate pass at 100k msg/s):\n\n| device | program | runs | ns per run | runs per delivered message |\n|---|---|---|---|---|\n");
    for XdpRow {
        dev,
        prog,
        runs,
        ns_per_run: ns,
        runs_per_delivered: per,
    } in &xdp
    {
        md.push_str(&format!(
            "| {dev} | {prog} | {runs} | {ns:.0} | {per:.2} |\n"
        ));
    }
    let counters = s.counters()?;
    Ok(Report {
        markdown: md,
        raw: json!({
            "facts": facts,
            "points": points.iter().map(crate::Point::json).collect::<Vec<_>>(),
            "xdp": xdp.iter().map(XdpRow::json).collect::<Vec<_>>(),
            "fork_agent_kernel_counters": counters["kernel"],
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_template_is_header_plus_payload() {
        let t = channel_template();
        assert_eq!(&t.bytes[..4], &[0x40, 0x01, 0, 172]);
        assert_eq!(t.bytes.len(), 4 + 172);
        assert_eq!(t.stamp_at, 4);
    }
}
