//! The real client over TLS (turnutils_uclient -S -t to port 5349, tokio-rustls on the server):
//! long-term credentials, channel data round trip with matching counts, and the relay listed
//! under "connected via TLS" while it runs.

use crate::turn_support::*;
use anyhow::Result;

const N: u64 = 60;
const LEN: u64 = 100;

#[test]
fn tls_client_relays_channel_data_round_trip() -> Result<()> {
    let mut s = TurnScenario::start_tls(ALLOW_TEST_PEERS)?;
    s.start_peer()?;
    let RoundTrip {
        status,
        seen: seen_tls,
        ..
    } = channel_round_trip(&s, &["-S", "-t", "-p", "5349"], N, LEN, |v| {
        v["relays_tls"].as_u64() >= Some(1)
    })?;
    assert!(
        seen_tls,
        "the status view never showed a TLS relay; final {status}"
    );
    // uclient first probes with old TLS versions, which rustls refuses (TLS 1.2 and 1.3 only):
    // those attempts are counted, each one named in the debug log.
    let log = s.topo.log("turn-server");
    let refused = log.matches("TLS handshake failed").count() as u64;
    assert_eq!(status["shell"]["tls_handshake_failed"], refused, "{status}");
    assert!(
        log.lines()
            .any(|l| l.contains("channel bound") && l.contains("\"tls\"")),
        "no ChannelBound event for a TLS client:\n{log}"
    );
    Ok(())
}
