//! The daemon's log lines as journald, a pipe and a log shipper see them: turn-server runs on
//! loopback with stderr to a pipe. Text lines carry no ANSI escape and a timestamp; with
//! `--log-format json` every line is a JSON object; when `JOURNAL_STREAM` names the pipe (as
//! systemd sets it for a journal stream), no line carries a timestamp.

// A test drives a real process against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The line turn-server logs once it serves; everything before it is the start-up log.
const READY: &str = "control socket ready";

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs turn-server until it logs [`READY`] (at most 20 s) and returns its stderr lines.
fn start_up_log(name: &str, args: &[&str], journal: bool) -> Vec<String> {
    let dir = Dir(std::env::temp_dir().join(format!("turn-log-{name}-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    let users = dir.0.join("users");
    std::fs::write(&users, "u:p\n").expect("users");
    let config = dir.0.join("turn-server.toml");
    std::fs::write(
        &config,
        format!(
            "realm = \"example.org\"\n[listen]\nudp = [\"127.0.0.1:0\"]\n[auth]\nusers_file = \"{}\"\n\
             [relay]\nipv4 = \"127.0.0.1\"\n[control]\nsocket = \"{}\"\n[metrics]\nlisten = \"\"\n",
            users.display(),
            dir.0.join("ctl.sock").display()
        ),
    )
    .expect("config");

    let (reader, writer) = std::io::pipe().expect("pipe");
    let pipe = std::fs::File::from(writer.as_fd().try_clone_to_owned().expect("dup"))
        .metadata()
        .expect("fstat pipe");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turn-server"));
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer);
    if journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", pipe.dev(), pipe.ino()));
    }
    let mut child = cmd.spawn().expect("start turn-server");
    // Our copy of the write end goes with `cmd`, so the reader sees EOF when the child exits.
    drop(cmd);

    let (tx, rx) = mpsc::channel();
    let lines = std::thread::spawn(move || {
        let mut out = Vec::new();
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if line.contains(READY) {
                let _ = tx.send(());
            }
            out.push(line);
        }
        out
    });
    let ready = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.join().expect("reader thread");
    assert!(
        ready.is_ok(),
        "turn-server never logged {READY:?}:\n{lines:#?}"
    );
    lines
}

fn starts_with_timestamp(line: &str) -> bool {
    // tracing's RFC 3339 UTC stamp: 2026-12-07T06:43:21.594450Z
    let b = line.as_bytes();
    b.len() > 20 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
}

#[test]
fn text_on_a_pipe_has_no_colour_and_a_timestamp() {
    let lines = start_up_log("text", &[], false);
    for l in &lines {
        assert!(!l.contains('\u{1b}'), "ANSI escape in {l:?}");
        assert!(starts_with_timestamp(l), "no timestamp: {l:?}");
    }
}

#[test]
fn json_lines_parse_as_json_objects() {
    let lines = start_up_log("json", &["--log-format", "json"], false);
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
        assert!(v["level"].is_string(), "{l}");
        assert!(v["fields"]["message"].is_string(), "{l}");
        assert!(v["timestamp"].is_string(), "{l}");
    }
    assert!(lines.iter().any(|l| l.contains(READY)));
}

#[test]
fn under_journald_no_line_carries_a_timestamp() {
    let text = start_up_log("journal-text", &[], true);
    for l in &text {
        assert!(!l.contains('\u{1b}'), "ANSI escape in {l:?}");
        assert!(
            l.trim_start().starts_with("INFO") || l.trim_start().starts_with("WARN"),
            "expected the level first, no timestamp: {l:?}"
        );
    }
    let json = start_up_log("journal-json", &["--log-format", "json"], true);
    for l in &json {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
        assert!(v.get("timestamp").is_none(), "{l}");
    }
}
