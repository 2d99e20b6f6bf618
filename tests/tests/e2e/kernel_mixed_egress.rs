//! A forked call and a plain call leaving by the same interface, their packets interleaved in
//! bursts so that one NAPI poll redirects both kinds to the same device. The kernel runs one
//! devmap program per device bulk queue (the one of the first frame queued in the poll), so the
//! plain relay and the fork broadcast must reach a device through entries with the same
//! program: a design that gave them different entries lost plain packets queued behind a forked
//! one (measured by `bench relay`: 40 % of the broadcast copies' egress runs dropped frames).
//! Every packet of both calls must arrive byte-identical, on the fork path in use.
//!
//! To put both kinds into one poll deterministically, fa0's receive path runs in a NAPI thread
//! pinned to the sender's CPU, and the sender runs each burst at SCHED_FIFO: the whole burst is
//! queued before the poll that relays it (otherwise veth polls right after each transmit, one
//! packet at a time, and the bug never shows).

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use nix::libc;
use serde_json::json;
use xdpfork_tests::{addrs::*, ns_run, rtp_packet, spawn_receiver, Host, Scenario};

fn napi_threads() -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.starts_with("napi/")) {
            out.insert(pid);
        }
    }
    out
}

fn pin_to_cpu0(pid: i32) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; plain syscall.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "sched_setaffinity({pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Run `f` on this thread at SCHED_FIFO (restored to SCHED_OTHER afterwards).
fn at_fifo<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let p = libc::sched_param { sched_priority: 10 };
    // SAFETY: plain syscalls on this thread with valid parameter structs.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } != 0 {
        bail!("SCHED_FIFO: {}", std::io::Error::last_os_error());
    }
    let r = f();
    let other = libc::sched_param { sched_priority: 0 };
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &other) };
    r
}

/// The plain call: caller → 10.77.1.1:30010 → (from 10.77.2.1:30012) → callee 10.77.2.2:40010.
const P_LOCAL: &str = "10.77.1.1:30010";
const P_SRC: &str = "10.77.2.1:30012";
const P_CALLER: &str = "10.77.1.2:40010";
const P_CALLEE: &str = "10.77.2.2:40010";

/// What the sender sent: the forked call's packets and the plain call's.
type Sent = (Vec<Vec<u8>>, Vec<Vec<u8>>);

const BURSTS: u16 = 20;
const PER_BURST: u16 = 16;

#[test]
fn forked_and_plain_packets_share_an_egress_without_loss() -> Result<()> {
    let s = Scenario::start()?;
    s.add_call_flows(false)?;
    s.ctl(json!({"v":1,"op":"flow_add","flow":{"local":P_LOCAL,"src":P_SRC,"dst":P_CALLEE}}))?;
    s.start_fork("guid-mixed", A_LOCAL, B_LOCAL)?;

    let n = usize::from(BURSTS * PER_BURST);
    let forked_tx = s.topo.udp_socket(Host::Caller, CALLER_RTP.parse()?)?;
    let plain_tx = s.topo.udp_socket(Host::Caller, P_CALLER.parse()?)?;
    let forked_rx = spawn_receiver(
        s.topo.udp_socket(Host::Callee, CALLEE_RTP.parse()?)?,
        n,
        Duration::from_secs(3),
    );
    let plain_rx = spawn_receiver(
        s.topo.udp_socket(Host::Callee, P_CALLEE.parse()?)?,
        n,
        Duration::from_secs(3),
    );
    let (fdst, pdst): (SocketAddr, SocketAddr) = (A_LOCAL.parse()?, P_LOCAL.parse()?);
    let (mut fsent, mut psent) = (Vec::new(), Vec::new());
    for b in 0..BURSTS {
        for k in 0..PER_BURST {
            let i = b * PER_BURST + k;
            let body: Vec<u8> = (0..160u16).map(|j| ((i + j) & 0xff) as u8).collect();
            fsent.push(rtp_packet(0, i, 160 * u32::from(i), 0x1111, &body));
            psent.push(rtp_packet(8, i, 160 * u32::from(i), 0x2222, &body));
        }
    }

    // fa0's receive path in a NAPI thread on CPU 0, like the sender below.
    let before = napi_threads();
    ns_run(
        &s.topo.ns(Host::Forker),
        "sh",
        &["-c", "echo 1 > /sys/class/net/fa0/threaded"],
    )?;
    let napi: Vec<i32> = napi_threads().difference(&before).copied().collect();
    ensure!(!napi.is_empty(), "no NAPI thread appeared for fa0");
    for pid in &napi {
        pin_to_cpu0(*pid)?;
    }
    let sender = std::thread::spawn(move || -> Result<Sent> {
        pin_to_cpu0(0)?;
        for b in 0..usize::from(BURSTS) {
            // Back to back at SCHED_FIFO: forked, plain, forked, ... all queued before fa0's
            // NAPI thread (same CPU, normal priority) polls them in one go.
            at_fifo(|| {
                for k in 0..usize::from(PER_BURST) {
                    let i = b * usize::from(PER_BURST) + k;
                    forked_tx.send_to(&fsent[i], fdst)?;
                    plain_tx.send_to(&psent[i], pdst)?;
                }
                Ok(())
            })?;
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok((fsent, psent))
    });
    let (fsent, psent) = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))?
        .context("sending the bursts")?;
    let fgot = forked_rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let pgot = plain_rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let c = s.counters()?;
    let k = &c["kernel"];
    ensure!(
        fgot == fsent && pgot == psent,
        "forked call: {} of {n} arrived, plain call: {} of {n}, byte-identical and in order \
         expected; kernel counters: {k}",
        fgot.len(),
        pgot.len()
    );
    ensure!(
        k["relayed_forked"] == n as u64 && k["relayed"] == n as u64,
        "every packet relayed in the kernel: {k}"
    );
    // Each forked copy for the egress is untagged and sent, each plain frame passes; nothing is
    // filtered or dropped there.
    ensure!(k["egress_sent"] == n as u64, "egress_sent: {k}");
    ensure!(k["egress_plain"] == n as u64, "egress_plain: {k}");
    ensure!(
        k["egress_filtered"] == 0 && k["egress_untag_failed"] == 0,
        "nothing dropped at the egress: {k}"
    );
    s.wait_frames_sent("asr", n as u64)?;
    Ok(())
}
