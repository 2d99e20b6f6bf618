//! Forking through an HTTP CONNECT proxy (RFC 9110 §9.3.6): Debian's tinyproxy, started by the
//! test with its own configuration in the speech namespace, tunnels fork-agent to
//! speech-server (tinyproxy's log shows the CONNECT, fork-agent's connection peer is the proxy,
//! every frame arrives); a proxy name that does not resolve fails the fork with "Proxy DNS
//! lookup failed"; a CONNECT the proxy refuses (port not in its ConnectPort list, HTTP 403)
//! fails it with "Connection failed" and counts an HTTP failure (docs/fork-agent.md). A `wss://`
//! server behind the same proxy is reached too: the TLS session runs inside the tunnel and its
//! certificate (an IP SAN for the speech host, made with rcgen) is checked against the server's
//! address, not the proxy's.

// A test drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::json;
use xdpfork_tests::{
    control,
    fork_rig::{
        caller_flow, fork_caller, has, send_rtp, spawn_speech, speech_summary, start_fork_agent,
        Events, SPEECH_IP,
    },
    Host, Topology,
};

const PROXY_PORT: u16 = 3128;

/// A CA (written to `dir/ca.pem`) and a speech-host certificate it signed; (cert, key) paths.
fn pki(dir: &std::path::Path) -> Result<(String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![SPEECH_IP.to_owned()])?.signed_by(&key, &ca, &ca_key)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    let (crt, k) = (dir.join("speech.crt"), dir.join("speech.key"));
    std::fs::write(&crt, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    Ok((
        crt.to_string_lossy().into_owned(),
        k.to_string_lossy().into_owned(),
    ))
}

fn start_tinyproxy(t: &mut Topology) -> Result<std::path::PathBuf> {
    let conf = t.dir.join("tinyproxy.conf");
    let log = t.dir.join("tinyproxy-connect.log");
    // Runs as root inside the test (no privilege drop: the log is in the test's directory);
    // only 9000 and 9443 may be tunnelled.
    std::fs::write(
        &conf,
        format!(
            "User root\nGroup root\nPort {PROXY_PORT}\nListen {SPEECH_IP}\nTimeout 60\n\
             LogFile \"{}\"\nLogLevel Connect\nMaxClients 20\nAllow 10.77.3.0/24\n\
             ConnectPort 9000\nConnectPort 9443\n",
            log.display()
        ),
    )?;
    let conf_s = conf.to_string_lossy().into_owned();
    t.spawn(
        "tinyproxy",
        Host::Speech,
        std::path::Path::new("/usr/bin/tinyproxy"),
        &["-d", "-c", &conf_s],
    )?;
    // Ready when it logged its start-up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Reloading config file finished")
    {
        ensure!(
            Instant::now() < deadline,
            "tinyproxy did not start: {}",
            t.log("tinyproxy")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(log)
}

#[test]
fn connect_proxy_tunnels_and_its_failures_are_reported() -> Result<()> {
    let mut t = Topology::new()?;
    let proxy_log = start_tinyproxy(&mut t)?;
    let summary = spawn_speech(&mut t, "speech", 9000, &[])?;
    let pki_dir = t.dir.join("pki");
    let (crt, key) = pki(&pki_dir)?;
    spawn_speech(
        &mut t,
        "speech-tls",
        9443,
        &["--tls-cert", &crt, "--tls-key", &key],
    )?;
    let srv = |name: &str, port: u16, proxy_host: &str| {
        format!(
            "[[speech_server]]\nname = \"{name}\"\nurl = \"ws://{SPEECH_IP}:{port}/fork\"\n\
             max_connect_attempts = 1\nbackoff_initial_ms = 100\n\
             proxy = {{ host = \"{proxy_host}\", port = {PROXY_PORT} }}\n"
        )
    };
    let servers = [
        srv("viaproxy", 9000, SPEECH_IP),
        srv("nodnsproxy", 9000, "no-such-proxy.invalid"),
        srv("refused", 9001, SPEECH_IP),
        format!(
            "[[speech_server]]\nname = \"tlsproxy\"\nurl = \"wss://{SPEECH_IP}:9443/fork\"\n\
             max_connect_attempts = 1\n\
             proxy = {{ host = \"{SPEECH_IP}\", port = {PROXY_PORT} }}\n\
             [speech_server.tls]\nca_file = \"{}\"\n",
            pki_dir.join("ca.pem").display()
        ),
    ]
    .concat();
    let socket = start_fork_agent(&mut t, &servers)?;
    let mut ev = Events::subscribe(&socket)?;

    let f1 = caller_flow(&socket, 1)?;
    let f2 = caller_flow(&socket, 2)?;
    let f3 = caller_flow(&socket, 3)?;
    fork_caller(&socket, "g-proxy", "viaproxy", &f1)?;
    fork_caller(&socket, "g-nodns", "nodnsproxy", &f2)?;
    fork_caller(&socket, "g-refused", "refused", &f3)?;
    let f4 = caller_flow(&socket, 4)?;
    fork_caller(&socket, "g-tls", "tlsproxy", &f4)?;
    ev.until(Duration::from_secs(15), |s| {
        has(s, "g-proxy", "started", None)
            && has(s, "g-tls", "started", None)
            && has(s, "g-nodns", "error", Some("Proxy DNS lookup failed"))
            && has(s, "g-refused", "error", Some("Connection failed"))
    })?;
    send_rtp(&t, &f1, 50, Duration::from_millis(2))?;

    let log = std::fs::read_to_string(&proxy_log)?;
    assert!(
        log.contains(&format!("CONNECT {SPEECH_IP}:9000 HTTP/1.1")),
        "tinyproxy saw no CONNECT to the speech server:\n{log}"
    );
    assert!(
        log.contains(&format!("CONNECT {SPEECH_IP}:9001 HTTP/1.1")),
        "the refused CONNECT reached tinyproxy:\n{log}"
    );
    assert!(
        log.contains(&format!("CONNECT {SPEECH_IP}:9443 HTTP/1.1")),
        "the wss:// server was reached through tinyproxy:\n{log}"
    );
    let conns = control(
        &socket,
        &json!({"v":1,"op":"show_stream_service","what":"connection"}),
    )?;
    let tls = conns
        .as_array()
        .and_then(|a| a.iter().find(|c| c["server"] == "tlsproxy"))
        .with_context(|| format!("no tlsproxy connection: {conns}"))?;
    let tls_s = tls.to_string();
    assert!(
        tls_s.contains("TLSv1_3") && tls_s.contains(&format!("{SPEECH_IP}:{PROXY_PORT}")),
        "TLS inside the tunnel, TCP peer the proxy: {tls}"
    );
    let c = conns
        .as_array()
        .and_then(|a| a.iter().find(|c| c["server"] == "viaproxy"))
        .with_context(|| format!("no viaproxy connection: {conns}"))?;
    assert!(
        c.to_string().contains(&format!("{SPEECH_IP}:{PROXY_PORT}")),
        "the TCP peer is the proxy: {c}"
    );
    let st = control(
        &socket,
        &json!({"v":1,"op":"show_stream_service","what":"statistics"}),
    )?;
    assert!(
        st["alarms"]["http_failures"].as_u64() >= Some(1),
        "the 403 counts as an HTTP failure: {st}"
    );
    assert!(
        st["alarms"]["tcp_failures"].as_u64() >= Some(1),
        "the proxy DNS failure counts as a TCP failure: {st}"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = control(&socket, &json!({"v":1,"op":"show_counters"}))?;
        if c["servers"]["viaproxy"]["frames_sent"].as_u64() >= Some(50) {
            break;
        }
        ensure!(Instant::now() < deadline, "fewer than 50 frames sent: {c}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let sum = speech_summary(&mut t, "speech", &summary)?;
    let stream = sum["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["call_guid"] == "g-proxy"))
        .with_context(|| format!("no g-proxy stream: {sum}"))?;
    assert_eq!(stream["frames"], 50, "{stream}");
    Ok(())
}
