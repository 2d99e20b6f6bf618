//! `wss://` forking against real speech-server processes serving certificates the test makes
//! with rcgen: a CA given to fork-agent as `tls.ca_file`, a server certificate with an IP SAN
//! for the speech host (frames arrive over TLS), one for another address (wrong SAN), an
//! expired one, and one signed by a CA fork-agent does not trust. Each bad certificate fails
//! its fork with the reference's "Connection failed", counts a TCP failure, and leaves the
//! rustls reason in fork-agent's log.
//!
//! A second test runs a server that requires a client certificate (speech-server
//! `--tls-client-ca`): the fork whose server entry carries `tls.client_cert` streams, the one
//! without fails with "Connection failed".

// A test drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use xdpfork_tests::{
    control,
    fork_rig::{
        caller_flow, fork_caller, has, send_rtp, spawn_speech, speech_summary, start_fork_agent,
        Events, SPEECH_IP,
    },
    pki::{ca, leaf},
    Topology,
};

#[test]
fn wss_valid_certificate_carries_frames_and_bad_ones_fail() -> Result<()> {
    let mut t = Topology::new()?;
    let dir = t.dir.join("pki");
    std::fs::create_dir_all(&dir)?;
    let trusted = ca("xdpfork test CA")?;
    let stranger = ca("some other CA")?;
    std::fs::write(dir.join("ca.pem"), trusted.0.pem())?;

    let cases = [
        (
            "valid",
            9443,
            leaf(&dir, "valid", SPEECH_IP, &trusted, false)?,
        ),
        (
            "wrongsan",
            9444,
            leaf(&dir, "wrongsan", "10.77.3.99", &trusted, false)?,
        ),
        (
            "expired",
            9445,
            leaf(&dir, "expired", SPEECH_IP, &trusted, true)?,
        ),
        (
            "unknownca",
            9446,
            leaf(&dir, "unknownca", SPEECH_IP, &stranger, false)?,
        ),
    ];
    let mut servers = String::new();
    let mut summary = None;
    for (name, port, (crt, key)) in &cases {
        let s = spawn_speech(
            &mut t,
            &format!("speech-{name}"),
            *port,
            &["--tls-cert", crt, "--tls-key", key],
        )?;
        if *name == "valid" {
            summary = Some(s);
        }
        servers.push_str(&format!(
            "[[speech_server]]\nname = \"{name}\"\nurl = \"wss://{SPEECH_IP}:{port}/fork\"\n\
             max_connect_attempts = 1\nbackoff_initial_ms = 100\n\
             [speech_server.tls]\nca_file = \"{}\"\n",
            dir.join("ca.pem").display()
        ));
    }
    let summary = summary.context("valid server")?;
    let socket = start_fork_agent(&mut t, &servers)?;
    let mut ev = Events::subscribe(&socket)?;

    for (n, (name, _, _)) in cases.iter().enumerate() {
        let f = caller_flow(&socket, n as u16 + 1)?;
        fork_caller(&socket, &format!("g-{name}"), name, &f)?;
        if *name == "valid" {
            ev.until(Duration::from_secs(15), |s| {
                has(s, "g-valid", "started", None)
            })?;
            send_rtp(&t, &f, 50, Duration::from_millis(2))?;
        }
    }
    ev.until(Duration::from_secs(15), |s| {
        ["g-wrongsan", "g-expired", "g-unknownca"]
            .iter()
            .all(|g| has(s, g, "error", Some("Connection failed")))
    })?;
    assert!(
        !has(&ev.seen, "g-valid", "error", None),
        "the valid server's fork never fails: {:#?}",
        ev.seen
    );

    let conns = control(
        &socket,
        &json!({"v":1,"op":"show_stream_service","what":"connection"}),
    )?;
    let valid: Vec<&Value> = conns
        .as_array()
        .context("array")?
        .iter()
        .filter(|c| c["server"] == "valid")
        .collect();
    assert_eq!(valid.len(), 1, "{conns}");
    assert!(
        valid[0].to_string().contains("TLS"),
        "the connection reports its TLS version: {conns}"
    );
    let st = control(
        &socket,
        &json!({"v":1,"op":"show_stream_service","what":"statistics"}),
    )?;
    assert!(
        st["alarms"]["tcp_failures"].as_u64() >= Some(3),
        "three TLS failures count as TCP failures: {st}"
    );

    // Each failure is the certificate check it should be (rustls' reason in the log).
    let log = t.log("fork-agent");
    for reason in [
        "certificate not valid for name \"10.77.3.2\"",
        "certificate expired",
        "UnknownIssuer",
    ] {
        assert!(
            log.contains(reason),
            "fork-agent log lacks {reason}:\n{log}"
        );
    }

    // Every frame reached the server over TLS, on a TLS connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = control(&socket, &json!({"v":1,"op":"show_counters"}))?;
        if c["servers"]["valid"]["frames_sent"].as_u64() >= Some(50) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "fewer than 50 frames sent: {c}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let sum = speech_summary(&mut t, "speech-valid", &summary)?;
    let stream = sum["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["call_guid"] == "g-valid"))
        .with_context(|| format!("no g-valid stream: {sum}"))?;
    assert_eq!(stream["frames"], 50, "{stream}");
    let conns = sum["connections"].as_array().context("connections")?;
    assert!(
        conns
            .iter()
            .any(|c| c["tls"] == true && c["binary_frames"] == 50),
        "{sum}"
    );
    Ok(())
}

#[test]
fn wss_server_requiring_a_client_certificate() -> Result<()> {
    let mut t = Topology::new()?;
    let dir = t.dir.join("pki");
    std::fs::create_dir_all(&dir)?;
    let trusted = ca("xdpfork test CA")?;
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, trusted.0.pem())?;
    let (crt, key) = leaf(&dir, "server", SPEECH_IP, &trusted, false)?;
    let (client_crt, client_key) =
        leaf(&dir, "fork-agent.test", "fork-agent.test", &trusted, false)?;
    let ca_arg = ca_pem.to_string_lossy().into_owned();
    let summary = spawn_speech(
        &mut t,
        "speech-mtls",
        9447,
        &[
            "--tls-cert",
            &crt,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca_arg,
        ],
    )?;
    let entry = |name: &str, client: bool| {
        let mut e = format!(
            "[[speech_server]]\nname = \"{name}\"\nurl = \"wss://{SPEECH_IP}:9447/fork\"\n\
             max_connect_attempts = 1\nbackoff_initial_ms = 100\n\
             [speech_server.tls]\nca_file = \"{}\"\n",
            ca_pem.display()
        );
        if client {
            e.push_str(&format!(
                "client_cert = \"{client_crt}\"\nclient_key = \"{client_key}\"\n"
            ));
        }
        e
    };
    let servers = format!("{}{}", entry("withcert", true), entry("nocert", false));
    let socket = start_fork_agent(&mut t, &servers)?;
    let mut ev = Events::subscribe(&socket)?;

    let f1 = caller_flow(&socket, 1)?;
    fork_caller(&socket, "g-withcert", "withcert", &f1)?;
    ev.until(Duration::from_secs(15), |s| {
        has(s, "g-withcert", "started", None)
    })?;
    send_rtp(&t, &f1, 20, Duration::from_millis(2))?;
    let f2 = caller_flow(&socket, 2)?;
    fork_caller(&socket, "g-nocert", "nocert", &f2)?;
    ev.until(Duration::from_secs(15), |s| {
        has(s, "g-nocert", "error", Some("Connection failed"))
    })?;
    assert!(
        !has(&ev.seen, "g-withcert", "error", None),
        "the fork with a client certificate never fails: {:#?}",
        ev.seen
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = control(&socket, &json!({"v":1,"op":"show_counters"}))?;
        if c["servers"]["withcert"]["frames_sent"].as_u64() >= Some(20) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "fewer than 20 frames sent: {c}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let sum = speech_summary(&mut t, "speech-mtls", &summary)?;
    let stream = sum["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["call_guid"] == "g-withcert"))
        .with_context(|| format!("no g-withcert stream: {sum}"))?;
    assert_eq!(stream["frames"], 20, "{stream}");
    assert!(
        !sum.to_string().contains("g-nocert"),
        "the server must never see the fork without a client certificate: {sum}"
    );
    Ok(())
}
