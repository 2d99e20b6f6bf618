//! The status view: wire types of the control socket and their text rendering.
//!
//! Role: turn turn-core's [`Status`] and [`AllocationInfo`] snapshots (plus the shell's own
//! counters) into one serde document, and print it for operators the way Expressway's
//! "TURN server status" page does (active clients, relays by client transport, traffic).
//! Protocol on the Unix control socket: the client writes one JSON line `{"op":"status"}`, the
//! server answers one JSON line `{"ok":true,"data":<StatusReport>}` or
//! `{"ok":false,"error":"..."}`, then closes.
//! Call order: the shell builds a [`StatusReport`] with [`StatusReport::new`] on request;
//! `turn-server status` renders it with [`StatusReport::render`].

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};
use turn_core::{
    server::{AllocationCounters, AllocationInfo},
    Status, Transport,
};

/// One request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// The full status view.
    Status,
}

/// One response on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlResponse {
    /// Whether the request was understood.
    pub ok: bool,
    /// The status when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<StatusReport>,
    /// What went wrong when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Traffic in both directions (payload bytes, as relayed).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Traffic {
    /// Packets client → peer.
    pub to_peer_packets: u64,
    /// Payload bytes client → peer.
    pub to_peer_bytes: u64,
    /// Packets peer → client.
    pub from_peer_packets: u64,
    /// Payload bytes peer → client.
    pub from_peer_bytes: u64,
    /// Peer packets dropped because the peer had no permission.
    pub dropped_no_permission: u64,
}

impl From<AllocationCounters> for Traffic {
    fn from(c: AllocationCounters) -> Self {
        Traffic {
            to_peer_packets: c.to_peer_packets,
            to_peer_bytes: c.to_peer_bytes,
            from_peer_packets: c.from_peer_packets,
            from_peer_bytes: c.from_peer_bytes,
            dropped_no_permission: c.dropped_no_permission,
        }
    }
}

/// Counters kept by the tokio shell (things the core cannot see).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShellCounters {
    /// Transmits dropped because a socket buffer or connection queue was full, or the
    /// connection was gone.
    pub send_dropped: u64,
    /// Relay sockets that could not be set up after the allocator bound them.
    pub relay_setup_failed: u64,
    /// TCP and TLS client connections open now.
    pub stream_connections: u64,
    /// TCP/TLS connections refused because a connection limit was reached (both below).
    pub stream_refused: u64,
    /// ... of which the client's address held `limits.max_connections_per_address`.
    #[serde(default)]
    pub stream_refused_per_address: u64,
    /// ... of which `limits.max_connections` were open.
    #[serde(default)]
    pub stream_refused_global: u64,
    /// TCP/TLS connections closed without an allocation within
    /// `limits.unauthenticated_timeout_secs`.
    #[serde(default)]
    pub stream_unauthenticated_timeout: u64,
    /// TCP/TLS connections closed for a frame over `limits.max_frame_bytes`.
    #[serde(default)]
    pub stream_too_large: u64,
    /// Failed accepts on the TCP/TLS listeners (each followed by a pause).
    #[serde(default)]
    pub accept_errors: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failed: u64,
    /// SIGHUP reloads applied (the file was valid; its credentials, if changed, swapped in).
    #[serde(default)]
    pub reloads: u64,
    /// SIGHUP reloads refused because the file no longer validated (the running settings
    /// stay).
    #[serde(default)]
    pub reload_failed: u64,
}

/// Server-wide protocol counters (turn-core's `ServerCounters`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// STUN requests received.
    pub requests: u64,
    /// Inputs that were neither valid STUN nor ChannelData.
    pub malformed: u64,
    /// Unauthenticated responses dropped by the rate limit.
    pub rate_limited: u64,
    /// 401 challenges to requests without MESSAGE-INTEGRITY.
    pub challenges: u64,
    /// 401: unknown USERNAME.
    pub unknown_user: u64,
    /// 401: wrong REALM.
    pub wrong_realm: u64,
    /// 401: expired REST credential.
    pub expired_credentials: u64,
    /// 401: MESSAGE-INTEGRITY mismatch (wrong password; "431" on Expressway).
    pub bad_integrity: u64,
    /// 438 Stale Nonce sent.
    pub stale_nonce: u64,
    /// Error responses sent, by code (as a string key so JSON stays an object).
    pub errors_sent: BTreeMap<String, u64>,
    /// Data without an allocation, dropped.
    pub dropped_no_allocation: u64,
    /// Data without a permission, dropped.
    pub dropped_no_permission: u64,
    /// ChannelData on an unbound channel, dropped.
    pub dropped_no_channel: u64,
    /// Allocations created since start.
    pub allocations_created: u64,
    /// Allocations that ended by expiry.
    pub allocations_expired: u64,
}

/// One channel binding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelView {
    /// Channel number.
    pub channel: u16,
    /// Peer transport address.
    pub peer: SocketAddr,
}

/// One active allocation (relay).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllocationView {
    /// Allocation id.
    pub handle: u32,
    /// Client transport: `udp`, `tcp` or `tls`.
    pub transport: String,
    /// Client address as seen by the server.
    pub client: SocketAddr,
    /// Listen address the client talks to.
    pub server: SocketAddr,
    /// Relay transport address.
    pub relay: SocketAddr,
    /// Authenticated username.
    pub username: String,
    /// Seconds until expiry without a Refresh.
    pub expires_in_secs: u64,
    /// Peer IPs with a permission.
    pub permissions: Vec<IpAddr>,
    /// Channel bindings.
    pub channels: Vec<ChannelView>,
    /// Traffic so far (user space and kernel).
    pub traffic: Traffic,
    /// The part of `traffic` the XDP program relayed on offloaded channels (read back from
    /// fork-agent every `offload.counters_interval_ms`).
    #[serde(default)]
    pub kernel: Traffic,
}

/// Kernel offload through fork-agent (`[offload]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OffloadView {
    /// fork-agent's control socket.
    pub fork_agent_socket: String,
    /// Whether turn-server is connected to it now.
    pub connected: bool,
    /// Channels that should be relayed in the kernel now.
    pub channels: usize,
    /// Requests fork-agent refused (logged at warn).
    pub refused: u64,
    /// Failed connection attempts and lost connections.
    pub connection_failures: u64,
    /// Commands dropped on a full queue (a full resynchronisation followed).
    pub commands_dropped: u64,
}

/// The whole status view.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReport {
    /// Active allocations ("active TURN relays").
    pub allocations: usize,
    /// Distinct client IPs with an allocation ("active TURN clients").
    pub clients: usize,
    /// Relays whose client is connected via UDP.
    pub relays_udp: usize,
    /// Relays whose client is connected via TCP.
    pub relays_tcp: usize,
    /// Relays whose client is connected via TLS.
    pub relays_tls: usize,
    /// Installed permissions.
    pub permissions: usize,
    /// Bound channels.
    pub channels: usize,
    /// Traffic of live and finished allocations.
    pub traffic: Traffic,
    /// Protocol counters.
    pub counters: Counters,
    /// Shell counters.
    pub shell: ShellCounters,
    /// Every active allocation, by handle.
    pub active: Vec<AllocationView>,
    /// Kernel offload, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<OffloadView>,
}

/// Lower-case transport name used in the status view.
pub fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
    }
}

impl StatusReport {
    /// Builds the view from the core's snapshots and the shell's counters.
    pub fn new(status: &Status, list: &[AllocationInfo], shell: ShellCounters) -> StatusReport {
        let c = &status.counters;
        StatusReport {
            allocations: status.allocations,
            clients: status.clients,
            relays_udp: status.relays_udp,
            relays_tcp: status.relays_tcp,
            relays_tls: status.relays_tls,
            permissions: status.permissions,
            channels: status.channels,
            traffic: status.traffic.into(),
            counters: Counters {
                requests: c.requests,
                malformed: c.malformed,
                rate_limited: c.rate_limited,
                challenges: c.challenges,
                unknown_user: c.unknown_user,
                wrong_realm: c.wrong_realm,
                expired_credentials: c.expired_credentials,
                bad_integrity: c.bad_integrity,
                stale_nonce: c.stale_nonce,
                errors_sent: c
                    .errors_sent
                    .iter()
                    .map(|(code, n)| (code.to_string(), *n))
                    .collect(),
                dropped_no_allocation: c.dropped_no_allocation,
                dropped_no_permission: c.dropped_no_permission,
                dropped_no_channel: c.dropped_no_channel,
                allocations_created: c.allocations_created,
                allocations_expired: c.allocations_expired,
            },
            shell,
            active: list
                .iter()
                .map(|a| AllocationView {
                    handle: a.handle.0,
                    transport: transport_name(a.client.transport).to_owned(),
                    client: a.client.client,
                    server: a.client.server,
                    relay: a.relay,
                    username: a.username.clone(),
                    expires_in_secs: a.expires_in.as_secs(),
                    permissions: a.permissions.clone(),
                    channels: a
                        .channels
                        .iter()
                        .map(|(channel, peer)| ChannelView {
                            channel: *channel,
                            peer: *peer,
                        })
                        .collect(),
                    traffic: a.counters.into(),
                    kernel: Traffic::default(),
                })
                .collect(),
            offload: None,
        }
    }

    /// Human-readable rendering for `turn-server status`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let t = &self.traffic;
        let c = &self.counters;
        // Writing to a String cannot fail.
        let _ = writeln!(s, "TURN server status");
        let _ = writeln!(s, "  active TURN clients              {}", self.clients);
        let _ = writeln!(s, "  active TURN relays               {}", self.allocations);
        let _ = writeln!(s, "    connected via UDP              {}", self.relays_udp);
        let _ = writeln!(s, "    connected via TCP              {}", self.relays_tcp);
        let _ = writeln!(s, "    connected via TLS              {}", self.relays_tls);
        let _ = writeln!(s, "  permissions                      {}", self.permissions);
        let _ = writeln!(s, "  channels                         {}", self.channels);
        let _ = writeln!(
            s,
            "  client -> peer                   {} packets, {} bytes",
            t.to_peer_packets, t.to_peer_bytes
        );
        let _ = writeln!(
            s,
            "  peer -> client                   {} packets, {} bytes",
            t.from_peer_packets, t.from_peer_bytes
        );
        let _ = writeln!(
            s,
            "  requests {}  challenges {}  bad integrity {}  unknown user {}  wrong realm {}  expired {}  stale nonce {}  rate limited {}  malformed {}",
            c.requests,
            c.challenges,
            c.bad_integrity,
            c.unknown_user,
            c.wrong_realm,
            c.expired_credentials,
            c.stale_nonce,
            c.rate_limited,
            c.malformed
        );
        let errors: Vec<String> = c
            .errors_sent
            .iter()
            .map(|(code, n)| format!("{code}:{n}"))
            .collect();
        let _ = writeln!(s, "  errors sent                      {}", errors.join(" "));
        let _ = writeln!(
            s,
            "  allocations created {}  expired {}  send dropped {}  tcp/tls connections {}",
            c.allocations_created,
            c.allocations_expired,
            self.shell.send_dropped,
            self.shell.stream_connections
        );
        if let Some(o) = &self.offload {
            let k = self.active.iter().fold((0, 0), |(p, f), a| {
                (p + a.kernel.to_peer_packets, f + a.kernel.from_peer_packets)
            });
            let _ = writeln!(
                s,
                "  kernel offload                   {} via {}, {} channels, refused {}, connection failures {}",
                if o.connected { "connected" } else { "NOT connected" },
                o.fork_agent_socket,
                o.channels,
                o.refused,
                o.connection_failures
            );
            let _ = writeln!(
                s,
                "    kernel-relayed (live relays)   {} packets to peers, {} packets to clients",
                k.0, k.1
            );
        }
        if !self.active.is_empty() {
            let _ = writeln!(
                s,
                "\n{:>6} {:<4} {:<22} {:<22} {:<16} {:>6} {:>5} {:>5} {:>10} {:>12} {:>10} {:>12}",
                "id",
                "via",
                "client",
                "relay",
                "user",
                "left",
                "perms",
                "chans",
                "to pkts",
                "to bytes",
                "from pkts",
                "from bytes"
            );
            for a in &self.active {
                let _ = writeln!(
                    s,
                    "{:>6} {:<4} {:<22} {:<22} {:<16} {:>5}s {:>5} {:>5} {:>10} {:>12} {:>10} {:>12}",
                    a.handle,
                    a.transport,
                    a.client.to_string(),
                    a.relay.to_string(),
                    a.username,
                    a.expires_in_secs,
                    a.permissions.len(),
                    a.channels.len(),
                    a.traffic.to_peer_packets,
                    a.traffic.to_peer_bytes,
                    a.traffic.from_peer_packets,
                    a.traffic.from_peer_bytes
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format_is_op_tagged() {
        let r: ControlRequest = serde_json::from_str(r#"{"op":"status"}"#).expect("parses");
        assert_eq!(r, ControlRequest::Status);
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"reboot"}"#).is_err());
    }

    #[test]
    fn report_round_trips_and_renders_relays_by_transport() {
        let report = StatusReport {
            allocations: 2,
            clients: 1,
            relays_udp: 1,
            relays_tcp: 1,
            relays_tls: 0,
            permissions: 2,
            channels: 1,
            traffic: Traffic {
                to_peer_packets: 5,
                to_peer_bytes: 500,
                ..Traffic::default()
            },
            counters: Counters {
                errors_sent: [("401".to_owned(), 3)].into_iter().collect(),
                ..Counters::default()
            },
            shell: ShellCounters::default(),
            active: vec![AllocationView {
                handle: 7,
                transport: "udp".into(),
                client: "10.77.1.2:5000".parse().expect("addr"),
                server: "10.77.1.1:3478".parse().expect("addr"),
                relay: "10.77.2.1:24000".parse().expect("addr"),
                username: "turnuser".into(),
                expires_in_secs: 599,
                permissions: vec!["10.77.2.2".parse().expect("ip")],
                channels: vec![ChannelView {
                    channel: 0x4000,
                    peer: "10.77.2.2:3480".parse().expect("addr"),
                }],
                traffic: Traffic::default(),
                kernel: Traffic::default(),
            }],
            offload: None,
        };
        let json = serde_json::to_string(&report).expect("serialises");
        let back: StatusReport = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, report);
        let text = report.render();
        assert!(text.contains("connected via UDP              1"), "{text}");
        assert!(text.contains("connected via TCP              1"), "{text}");
        assert!(text.contains("5 packets, 500 bytes"), "{text}");
        assert!(text.contains("401:3"), "{text}");
        assert!(text.contains("10.77.2.1:24000"), "{text}");
        assert!(!text.contains("kernel offload"), "{text}");

        let mut with = report.clone();
        with.active[0].kernel.to_peer_packets = 4;
        with.offload = Some(OffloadView {
            fork_agent_socket: "/run/xdpfork/fork-agent.sock".into(),
            connected: true,
            channels: 1,
            refused: 0,
            connection_failures: 0,
            commands_dropped: 0,
        });
        let back: StatusReport =
            serde_json::from_str(&serde_json::to_string(&with).expect("serialises"))
                .expect("parses");
        assert_eq!(back, with);
        let text = with.render();
        assert!(
            text.contains("kernel offload                   connected via /run/xdpfork/fork-agent.sock, 1 channels"),
            "{text}"
        );
        assert!(text.contains("4 packets to peers"), "{text}");
    }
}
