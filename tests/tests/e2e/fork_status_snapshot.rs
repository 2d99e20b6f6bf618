//! A new `subscribe` starts with every live fork's current state (docs/control-api.md
//! "subscribe", snapshot): a subscriber that was away learns that a fork started, or lost its
//! connection, without waiting for the next change; a stopped fork is not in it; later changes
//! follow as ordinary events.

// A test drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::signal::Signal;
use serde_json::json;
use xdpfork_tests::{
    control,
    fork_rig::{
        caller_flow as flow, fork_caller as fork, has, spawn_speech, start_fork_agent, Events,
        SPEECH_IP as SPEECH,
    },
    Topology,
};

/// A `fork_status` line as (guid, status, error, snapshot).
type Line = (String, String, Option<String>, bool);

/// The `fork_status` lines a fresh subscription gets within `limit`.
fn fresh_subscription(socket: &Path, limit: Duration) -> Result<Vec<Line>> {
    let mut client = control_api::BlockingClient::connect(socket)?;
    client.subscribe()?;
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(control_api::Event::ForkStatus {
            call_guid,
            status,
            error,
            snapshot,
            ..
        }) = client.next_event(Duration::from_millis(100))?
        {
            let status = serde_json::to_value(status)?
                .as_str()
                .unwrap_or_default()
                .to_owned();
            out.push((call_guid, status, error, snapshot));
        }
    }
    Ok(out)
}

#[test]
fn a_new_subscriber_gets_each_live_forks_state_first() -> Result<()> {
    let mut t = Topology::new()?;
    spawn_speech(&mut t, "speech", 9000, &[])?;
    let socket = start_fork_agent(
        &mut t,
        &format!(
            "[[speech_server]]\nname = \"asr\"\nurl = \"ws://{SPEECH}:9000/fork\"\n\
             backoff_initial_ms = 5000\nbackoff_max_ms = 5000\n"
        ),
    )?;
    let mut ev = Events::subscribe(&socket)?;
    let (f1, f2) = (flow(&socket, 1)?, flow(&socket, 2)?);
    fork(&socket, "g1", "asr", &f1)?;
    fork(&socket, "g2", "asr", &f2)?;
    ev.until(Duration::from_secs(15), |s| {
        has(s, "g1", "started", None) && has(s, "g2", "started", None)
    })?;
    control(&socket, &json!({"v":1,"op":"fork_stop","call_guid":"g2"}))?;
    ev.until(Duration::from_secs(5), |s| has(s, "g2", "stopped", None))?;

    let seen = fresh_subscription(&socket, Duration::from_millis(500))?;
    assert_eq!(
        seen,
        vec![("g1".into(), "started".into(), None, true)],
        "only the live fork, as a snapshot"
    );

    // The server goes away: g1 is reconnecting (backoff 5 s), and a fresh subscriber says so.
    t.signal("speech", Signal::SIGKILL)?;
    ev.until(Duration::from_secs(10), |s| has(s, "g1", "error", None))?;
    let seen = fresh_subscription(&socket, Duration::from_millis(500))?;
    let Some((guid, status, error, true)) = seen.first().cloned() else {
        bail!("no snapshot line: {seen:?}");
    };
    assert_eq!(
        (guid.as_str(), status.as_str()),
        ("g1", "error"),
        "{seen:?}"
    );
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("Connection closed")),
        "{error:?}"
    );
    // The server is back: the reconnect reaches the subscriber (as a change, or, should the
    // 5 s backoff have run out before it subscribed, in its snapshot).
    spawn_speech(&mut t, "speech-again", 9000, &[])?;
    let mut client = control_api::BlockingClient::connect(&socket)?;
    client.subscribe()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if Instant::now() > deadline {
            bail!("no `started` after the server came back");
        }
        if let Some(control_api::Event::ForkStatus {
            status: control_api::ForkStatus::Started,
            reconnected,
            ..
        }) = client.next_event(Duration::from_millis(200))?
        {
            assert!(reconnected, "the second `started` of g1 is a reconnect");
            break;
        }
    }
    Ok(())
}
