//! Per-request destinations against real speech-server processes: a fork naming its own URL and
//! token reaches that server with that token (the configured URL has nobody listening), a
//! different token never rides the same connection ("Authentication token invalid" while the
//! right one streams), URLs outside `[destinations] allow` are refused before anything is
//! connected, and a destination's pool is dropped once nothing uses it. A `wss://` destination
//! with a token uses its server entry's TLS settings.

// A test drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use xdpfork_tests::{
    control,
    fork_rig::{
        caller_flow as flow, fork_caller_to as fork_to, has, send_rtp, spawn_speech,
        start_fork_agent, Events, SPEECH_IP as SPEECH,
    },
    pki::{ca, leaf},
    Topology,
};

#[test]
fn forks_reach_the_destination_and_token_the_request_names() -> Result<()> {
    let mut t = Topology::new()?;
    spawn_speech(&mut t, "speech-b", 9005, &["--token", "tok-B"])?;
    let socket = start_fork_agent(
        &mut t,
        &format!(
            "[destinations]\nallow = [\"ws://10.77.3.0/24:9005\"]\n\
             [[speech_server]]\nname = \"asr\"\nurl = \"ws://{SPEECH}:9000/fork\"\n\
             idle_timeout_secs = 1\nmax_connect_attempts = 1\nbackoff_initial_ms = 100\n"
        ),
    )?;
    let mut ev = Events::subscribe(&socket)?;

    let url = format!("ws://{SPEECH}:9005/x");
    let f1 = flow(&socket, 1)?;
    let f2 = flow(&socket, 2)?;
    fork_to(
        &socket,
        "g-ok",
        "asr",
        &f1,
        Some(json!({"url": url, "auth_token": "tok-B"})),
    )?;
    fork_to(
        &socket,
        "g-wrong",
        "asr",
        &f2,
        Some(json!({"url": url, "auth_token": "nope"})),
    )?;
    // Nothing listens at the configured URL: STARTED means the request's URL and token won.
    ev.until(Duration::from_secs(15), |s| {
        has(s, "g-ok", "started", None)
            && has(s, "g-wrong", "error", Some("Authentication token invalid"))
    })?;
    send_rtp(&t, &f1, 20, Duration::from_millis(2))?;

    // Outside the allow-list: refused by the control API, nothing connected.
    let f3 = flow(&socket, 3)?;
    for denied in [
        format!("ws://{SPEECH}:9006/x"),
        "ws://192.0.2.1:9005/x".to_owned(),
        "wss://speech.example.com/x".to_owned(),
    ] {
        let e = fork_to(
            &socket,
            "g-denied",
            "asr",
            &f3,
            Some(json!({ "url": denied })),
        )
        .expect_err("refused");
        assert!(
            format!("{e:#}").contains("destination not allowed"),
            "{denied}: {e:#}"
        );
    }

    let stats = |socket: &std::path::Path| -> Result<Value> {
        control(
            socket,
            &json!({"v":1,"op":"show_stream_service","what":"statistics"}),
        )
    };
    let key = format!("asr {url}");
    let st = stats(&socket)?;
    assert!(st["servers"].get(&key).is_some(), "{st}");
    let conns = control(
        &socket,
        &json!({"v":1,"op":"show_stream_service","what":"server","arg":format!("{SPEECH}:9005")}),
    )?;
    assert!(
        conns
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["frames_sent"].as_u64() >= Some(3))),
        "start and audio went to the request's server: {conns}"
    );

    // Stopped and idle (idle_timeout_secs = 1): the destination's pool goes away.
    for g in ["g-ok", "g-wrong"] {
        control(&socket, &json!({"v":1,"op":"fork_stop","call_guid":g}))?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = stats(&socket)?;
        if st["servers"].get(&key).is_none() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the destination's pool was not dropped: {st}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
fn a_wss_destination_with_a_token_uses_the_server_entrys_tls_settings() -> Result<()> {
    // The entry is plain ws:// (nobody listens there); the request names a wss:// server that
    // requires its token. The entry's CA verifies the server's certificate (IP SAN).
    let mut t = Topology::new()?;
    let dir = t.dir.join("pki");
    std::fs::create_dir_all(&dir)?;
    let trusted = ca("xdpfork test CA")?;
    std::fs::write(dir.join("ca.pem"), trusted.0.pem())?;
    let (crt, key) = leaf(&dir, "speech", SPEECH, &trusted, false)?;
    spawn_speech(
        &mut t,
        "speech-tls",
        9443,
        &["--tls-cert", &crt, "--tls-key", &key, "--token", "tls-tok"],
    )?;
    let socket = start_fork_agent(
        &mut t,
        &format!(
            "[destinations]\nallow = [\"wss://{SPEECH}:9443\"]\n\
             [[speech_server]]\nname = \"asr\"\nurl = \"ws://{SPEECH}:9000/fork\"\n\
             max_connect_attempts = 1\nbackoff_initial_ms = 100\n\
             [speech_server.tls]\nca_file = \"{}\"\n",
            dir.join("ca.pem").display()
        ),
    )?;
    let mut ev = Events::subscribe(&socket)?;
    let url = format!("wss://{SPEECH}:9443/fork?lang=en");
    let f1 = flow(&socket, 1)?;
    fork_to(
        &socket,
        "g-wss",
        "asr",
        &f1,
        Some(json!({"url": url, "auth_token": "tls-tok"})),
    )?;
    ev.until(Duration::from_secs(15), |s| {
        has(s, "g-wss", "started", None)
    })?;
    send_rtp(&t, &f1, 20, Duration::from_millis(2))?;
    let conns = control(
        &socket,
        &json!({"v":1,"op":"show_stream_service","what":"server","arg":format!("{SPEECH}:9443")}),
    )?;
    let c = conns
        .as_array()
        .and_then(|c| c.first())
        .cloned()
        .unwrap_or(Value::Null);
    assert!(c.to_string().contains("TLS"), "a TLS connection: {conns}");
    // A wss:// port the rules do not name is refused.
    let f2 = flow(&socket, 2)?;
    let e = fork_to(
        &socket,
        "g-other",
        "asr",
        &f2,
        Some(json!({"url": format!("wss://{SPEECH}:9444/fork")})),
    )
    .expect_err("refused");
    assert!(
        format!("{e:#}").contains("destination not allowed"),
        "{e:#}"
    );
    Ok(())
}
