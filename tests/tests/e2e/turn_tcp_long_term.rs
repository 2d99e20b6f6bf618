//! The same real client over TCP (RFC 8656 §12.5: ChannelData padded to 4 bytes on streams,
//! frames cut with turn-core's frame_len): byte counts match end to end, and while the client
//! runs the status view shows its relay under "connected via TCP".

use std::time::Duration;

use crate::turn_support::*;
use anyhow::Result;

const N: u64 = 100;
/// Not a multiple of 4, so every ChannelData frame on the stream carries padding.
const LEN: u64 = 101;

#[test]
fn tcp_client_relays_channel_data_round_trip_and_is_shown_as_tcp_relay() -> Result<()> {
    let mut s = TurnScenario::start(ALLOW_TEST_PEERS)?;
    s.start_peer()?;
    // 100 messages 20 ms apart: about 2 s during which the allocation is live.
    let RoundTrip {
        status,
        seen: seen_tcp,
        ..
    } = channel_round_trip(&s, &["-t"], N, LEN, |v| {
        v["relays_tcp"].as_u64() >= Some(1)
            && v["active"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["transport"] == "tcp"))
    })?;
    assert!(
        seen_tcp,
        "the status view never showed a relay connected via TCP; final status {status}"
    );
    assert_eq!(status["relays_udp"], 0, "{status}");
    // The connection closed when uclient exited, which ends its allocation (RFC 8656 §3.1).
    wait_until(
        Duration::from_secs(5),
        || Ok(s.status()?["relays_tcp"] == 0),
    )?;
    Ok(())
}
