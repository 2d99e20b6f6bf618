//! `bench dialects`: what each speech dialect costs per forked audio frame on fork-agent's send
//! path, against our own dialect (which passes the frame through) in the same run.
//!
//! Method: one call with two streams through `speech_proto::Dialect` exactly as a connection
//! task drives it (speech-proto's `profile::bench::Bench`: `start` for both streams, `flush`,
//! for AudioHook the server's `opened`), then 20 ms G.711 frames of the two parties (caller
//! µ-law, callee A-law), each built as the AF_XDP reader builds it (16-byte header + 160
//! payload bytes). Per setting: CPU time per input frame (median of the
//! repetitions, single thread, the calling thread's CPU clock), heap allocations per input frame
//! inside `on_audio` (a counting allocator; the frame handed to the socket is one of them), and
//! bytes out per input frame. Nothing here needs the network; the numbers are of the dialect
//! code alone, so they add to `bench fork`'s per-frame cost.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use speech_proto::profile::bench::Bench;
use speech_proto::ProfileConfig;

use crate::Report;

/// Counts every allocation of the process (the bench driver only; the daemons are separate
/// processes), so the dialect's allocations per frame can be read around `on_audio`.
pub struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The settings measured: name, `[speech_server.protocol]` as TOML.
const SETTINGS: [(&str, &str); 8] = [
    ("xdpfork (baseline)", "profile = \"xdpfork\""),
    ("twilio", "profile = \"twilio\""),
    ("audiohook stereo PCMU", "profile = \"audiohook\""),
    ("jambonz stereo L16 8 kHz", "profile = \"jambonz\""),
    (
        "jambonz stereo L16 16 kHz",
        "profile = \"jambonz\"\nrate = 16000",
    ),
    ("raw stereo µ-law 8 kHz", "profile = \"raw\""),
    (
        "raw mixed L16 16 kHz",
        "profile = \"raw\"\nencoding = \"l16\"\nrate = 16000\nlayout = \"mixed\"",
    ),
    ("raw stereo A-law", "profile = \"raw\"\nencoding = \"alaw\""),
];

/// Frames per repetition (both parties together).
const FRAMES: u64 = 200_000;

/// One repetition: CPU ns per frame, allocations per frame, bytes out per frame.
fn rep(cfg: &ProfileConfig) -> Result<(f64, f64, f64)> {
    // speech-proto's fixture: the call started (and for AudioHook accepted) the way a
    // connection task does it; each step is one frame of each party.
    let mut b = Bench::new(cfg, Instant::now()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let steps = FRAMES / 2;
    let mut bytes = 0u64;
    let a0 = ALLOCS.load(Ordering::Relaxed);
    let cpu0 = thread_cpu_ns();
    for _ in 0..steps {
        bytes += b.step() as u64;
    }
    let cpu = thread_cpu_ns().saturating_sub(cpu0);
    // Each step builds the two frames the AF_XDP reader would have built: not the dialect's.
    let allocs = (ALLOCS.load(Ordering::Relaxed) - a0).saturating_sub(2 * steps);
    let n = FRAMES as f64;
    Ok((cpu as f64 / n, allocs as f64 / n, bytes as f64 / n))
}

/// CPU time of the calling thread.
fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Runs every setting `reps` times.
pub fn run(reps: usize) -> Result<Report> {
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut baseline = None;
    for (name, toml_text) in SETTINGS {
        let cfg: ProfileConfig =
            toml::from_str(toml_text).with_context(|| format!("setting {name}"))?;
        let mut ns = Vec::new();
        let (mut allocs, mut bytes) = (0.0, 0.0);
        for _ in 0..reps {
            let (t, a, b) = rep(&cfg)?;
            ns.push(t);
            allocs = a;
            bytes = b;
        }
        ns.sort_by(f64::total_cmp);
        let median = ns[ns.len() / 2];
        let base = *baseline.get_or_insert(median);
        raw.push(
            json!({"setting": name, "ns_per_frame": ns, "allocs_per_frame": allocs,
            "bytes_per_frame": bytes}),
        );
        rows.push(format!(
            "| {name} | {median:.0} | {:+.0} | {allocs:.2} | {bytes:.0} |",
            median - base
        ));
    }
    let markdown = format!(
        "## bench dialects: per-frame cost of each speech dialect\n\n\
         {FRAMES} frames per repetition (two parties alternating, 160-byte G.711 payloads), \
         {reps} repetitions, median CPU time of the one thread. Allocations exclude the input frames \
         (the AF_XDP reader's); the frames handed to the socket are among them.\n\n\
         | setting | ns/frame | vs xdpfork | allocations/frame | bytes out/frame |\n\
         |---|---:|---:|---:|---:|\n{}\n",
        rows.join("\n")
    );
    Ok(Report {
        markdown,
        raw: Value::Array(raw),
    })
}
