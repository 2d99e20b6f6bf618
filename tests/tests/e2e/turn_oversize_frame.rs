//! A TCP client announcing a frame larger than `limits.max_frame_bytes` (here 60 KB of a
//! ChannelData message, the size that used to be buffered per connection) is closed before
//! the frame is buffered; 32 such connections leave turn-server's RSS where it was, and are
//! counted in the status view.
#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::{io::Write, net::IpAddr, time::Duration};

use crate::limits_support::*;
use crate::turn_support::*;
use anyhow::Result;
use xdpfork_tests::Host;

#[test]
fn oversize_frames_close_the_connection_unbuffered() -> Result<()> {
    let s = TurnScenario::start(ALLOW_TEST_PEERS)?;
    let pid = pid_of(&s.topo.dir.join("turn-server.toml").to_string_lossy())?;
    let rss0 = vm_rss_kib(pid)?;
    let addrs = ["10.77.1.3", "10.77.1.4", "10.77.1.5", "10.77.1.6"];
    let mut conns = Vec::new();
    for a in addrs {
        add_caller_address(&s.topo, a)?;
        let ip: IpAddr = a.parse()?;
        conns.extend(tcp_connect_many(
            &s.topo,
            Host::Caller,
            ip,
            SERVER.parse()?,
            8,
        )?);
    }
    // ChannelData header for 60,000 bytes, then 30,000 of them: a partial frame.
    let mut partial = channel_data(0x4000, &[]);
    partial[2..4].copy_from_slice(&60_000u16.to_be_bytes());
    partial.extend(vec![0u8; 30_000]);
    for c in &mut conns {
        // The server may close while we write.
        let _ = c.write_all(&partial);
    }
    wait_for(
        "oversize-frame connections closed",
        Duration::from_secs(5),
        || Ok(count_open(&conns) == 0),
    )?;
    let rss1 = vm_rss_kib(pid)?;
    eprintln!("turn-server VmRSS {rss0} KiB -> {rss1} KiB after 32 partial 60 KB frames");
    assert!(rss1 < rss0 + 8 * 1024, "RSS grew by {} KiB", rss1 - rss0);
    let st = s.status()?;
    assert_eq!(st["shell"]["stream_too_large"], 32, "{st}");
    Ok(())
}
