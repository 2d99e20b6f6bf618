//! Helpers of the fork e2e tests that drive fork-agent's control API directly: speech-server
//! processes, one-flow calls, fork requests and the `fork_status` event stream.

use std::{
    io::BufRead,
    io::BufReader,
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use xdpfork_tests::{bin, control, rtp_packet, Host, Topology};

/// The speech host's address in the topology.
pub const SPEECH: &str = "10.77.3.2";

/// Starts a speech-server named `name` on SPEECH:`port` with `extra` switches.
pub fn speech(t: &mut Topology, name: &str, port: u16, extra: &[&str]) -> Result<()> {
    let out = t.dir.join(name);
    std::fs::create_dir_all(&out)?;
    let listen = format!("{SPEECH}:{port}");
    let out_s = out.to_string_lossy().into_owned();
    let mut args = vec![
        "--listen",
        &listen,
        "--out-dir",
        &out_s,
        "--duration-secs",
        "120",
    ];
    args.extend_from_slice(extra);
    t.spawn(name, Host::Speech, &bin("speech-server")?, &args)
}

/// One call's caller flow on its own port pair; returns the flow's local address.
pub fn flow(socket: &Path, n: u16) -> Result<String> {
    let local = format!("10.77.1.1:{}", 31000 + 2 * n);
    let src = format!("10.77.2.1:{}", 31000 + 2 * n);
    control(
        socket,
        &json!({"v":1,"op":"flow_add","flow":{"local":local,"src":src,"dst":format!("10.77.2.2:{}", 41000 + 2 * n)}}),
    )?;
    Ok(local)
}

/// `fork_start` of a one-stream call to `server`.
pub fn fork(socket: &Path, guid: &str, server: &str, flow: &str) -> Result<Value> {
    fork_to(socket, guid, server, flow, None)
}

/// `fork_start` with a per-request `destination` object (or none).
pub fn fork_to(
    socket: &Path,
    guid: &str,
    server: &str,
    flow: &str,
    destination: Option<Value>,
) -> Result<Value> {
    let mut fork = json!({"call_guid":guid,"server":server,"codec":"PCMU",
        "streams":[{"channel":"caller","flow":flow}]});
    if let Some(d) = destination {
        fork["destination"] = d;
    }
    control(socket, &json!({"v":1,"op":"fork_start","fork":fork}))
}

/// Sends `n` µ-law RTP packets from the caller to `to`.
pub fn send(t: &Topology, to: &str, n: u16) -> Result<()> {
    let tx = t.udp_socket(Host::Caller, "10.77.1.2:0".parse()?)?;
    let dst: SocketAddr = to.parse()?;
    for i in 0..n {
        tx.send_to(&rtp_packet(0, i, 160 * u32::from(i), 7, &[0xff; 160]), dst)?;
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Collects fork_status events until `done` holds (bounded by 15 s).
pub fn events_until(
    r: &mut BufReader<UnixStream>,
    seen: &mut Vec<Value>,
    done: impl Fn(&[Value]) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(seen) {
        if Instant::now() > deadline {
            bail!("events so far: {seen:#?}");
        }
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => bail!("control connection closed"),
            Ok(_) => {
                let v: Value = serde_json::from_str(&line)?;
                if v["event"] == "fork_status" {
                    seen.push(v);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub fn has(seen: &[Value], guid: &str, status: &str, error: Option<&str>) -> bool {
    seen.iter().any(|e| {
        e["call_guid"] == guid && e["status"] == status && error.is_none_or(|x| e["error"] == x)
    })
}
