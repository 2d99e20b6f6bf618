//! A real WebRTC-style TURN client over UDP: coturn's turnutils_uclient authenticates with
//! long-term credentials (users file), allocates, binds channels and exchanges ChannelData
//! with turnutils_peer through the relay; every byte it sent comes back, and turn-server's
//! status view counts the same packets and bytes.

use crate::turn_support::*;
use anyhow::Result;

const N: u64 = 50;
const LEN: u64 = 120;

#[test]
fn udp_client_relays_channel_data_round_trip_with_matching_counts() -> Result<()> {
    let mut s = TurnScenario::start(ALLOW_TEST_PEERS)?;
    s.start_peer()?;
    let RoundTrip { status, .. } = channel_round_trip(&s, &[], N, LEN, |_| true)?;
    let c = &status["counters"];
    assert!(c["allocations_created"].as_u64() >= Some(1), "{status}");
    assert_eq!(c["bad_integrity"], 0, "{status}");
    // The data went over channels (uclient without -s): the shell logged the ChannelBound
    // event (the hook kernel offload will use) for a UDP client.
    let log = s.topo.log("turn-server");
    assert!(
        log.lines()
            .any(|l| l.contains("channel bound") && l.contains("\"udp\"")),
        "no ChannelBound event for a UDP client in the log:\n{log}"
    );
    assert_eq!(
        errors_sent(&status, 400),
        0,
        "no ChannelBind was refused: {status}"
    );
    Ok(())
}
