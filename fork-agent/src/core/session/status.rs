//! Fork status reporting: what the controller hears about each fork.
//!
//! Role: the reference's error strings ([`ForkFailure`], "Error Strings in WebSocket Forking")
//! and the `fork_status` event ([`StatusEvent`]) sip-agent turns into a status INFO.
//! Inputs: the service's own transitions (start sent, pause, resume, stop, connection lost,
//! pool gave up, connection cleared).
//! Outputs: [`Output::Status`](super::Output::Status), queued in order with the `Send`s that
//! caused it.

use serde::Serialize;

use super::{ForkService, Output};

/// The reference's error strings ("Error Strings in WebSocket Forking"), as reported to the
/// controller in status events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ForkFailure {
    /// "Codec is not supported".
    CodecNotSupported,
    /// "Connection failed": no WebSocket could be established.
    ConnectionFailed,
    /// "Internal error".
    InternalError,
    /// "Connection closed": closed by the server, for idleness, or by a clear command.
    ConnectionClosed,
    /// "Authentication token invalid": the upgrade got 401 or 403.
    AuthenticationTokenInvalid,
    /// "DNS lookup failed" for the speech server's name.
    DnsLookupFailed,
    /// "Proxy DNS lookup failed" for the configured proxy's name.
    ProxyDnsLookupFailed,
    /// "Forking stopped" on a STOP request.
    ForkingStopped,
    /// "TCP Connection closed": the TCP connection broke without a WebSocket close.
    TcpConnectionClosed,
}

impl ForkFailure {
    /// The exact string of the reference's table.
    pub fn as_str(self) -> &'static str {
        match self {
            ForkFailure::CodecNotSupported => "Codec is not supported",
            ForkFailure::ConnectionFailed => "Connection failed",
            ForkFailure::InternalError => "Internal error",
            ForkFailure::ConnectionClosed => "Connection closed",
            ForkFailure::AuthenticationTokenInvalid => "Authentication token invalid",
            ForkFailure::DnsLookupFailed => "DNS lookup failed",
            ForkFailure::ProxyDnsLookupFailed => "Proxy DNS lookup failed",
            ForkFailure::ForkingStopped => "Forking stopped",
            ForkFailure::TcpConnectionClosed => "TCP Connection closed",
        }
    }
}

/// A fork status change for the controller (sip-agent turns it into a status INFO).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusEvent {
    /// The fork.
    pub call_guid: String,
    /// What happened.
    pub status: ForkStatus,
    /// The reference error string, for `error` and `stopped`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_failure"
    )]
    pub error: Option<ForkFailure>,
    /// `started` again after a reconnect (streams re-announced with `resumed: true`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reconnected: bool,
    /// The fork's first stream id while it exists (control-api `fork_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fork_id: Option<u32>,
}

fn ser_failure<S: serde::Serializer>(f: &Option<ForkFailure>, s: S) -> Result<S::Ok, S::Error> {
    match f {
        Some(f) => s.serialize_str(f.as_str()),
        None => s.serialize_none(),
    }
}

/// Fork status values of the `fork_status` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForkStatus {
    /// `start` was sent for the streams (first time, or again after a reconnect).
    Started,
    /// `pause` was sent (or will be, once connected).
    Paused,
    /// `resume` was sent.
    Resumed,
    /// The fork ended.
    Stopped,
    /// Something failed; `error` says what.
    Error,
}

/// The control API's event line for a status change (docs/control-api.md "subscribe").
impl From<StatusEvent> for control_api::Event {
    fn from(e: StatusEvent) -> Self {
        control_api::Event::ForkStatus {
            call_guid: e.call_guid,
            status: match e.status {
                ForkStatus::Started => control_api::ForkStatus::Started,
                ForkStatus::Paused => control_api::ForkStatus::Paused,
                ForkStatus::Resumed => control_api::ForkStatus::Resumed,
                ForkStatus::Stopped => control_api::ForkStatus::Stopped,
                ForkStatus::Error => control_api::ForkStatus::Error,
            },
            error: e.error.map(|f| f.as_str().to_owned()),
            reconnected: e.reconnected,
            snapshot: false,
            fork_id: e.fork_id,
        }
    }
}

impl ForkService {
    pub(super) fn status(
        &mut self,
        call_guid: &str,
        status: ForkStatus,
        error: Option<ForkFailure>,
        reconnected: bool,
    ) {
        let fork_id = self
            .by_guid
            .get(call_guid)
            .and_then(|k| self.sessions.get(k))
            .and_then(|s| s.req.streams.first())
            .map(|(id, _)| *id);
        self.outputs.push_back(Output::Status(StatusEvent {
            call_guid: call_guid.to_owned(),
            status,
            error,
            reconnected,
            fork_id,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{connect_id, drain, epoch, req, service};
    use super::super::*;

    /// The `fork_id` of every status output, in order.
    fn fork_ids(outs: &[Output]) -> Vec<(ForkStatus, Option<u32>)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Status(e) => Some((e.status, e.fork_id)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn status_events_name_the_forks_first_stream_so_a_reused_guid_is_told_apart() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        s.handle_fork_start(t0, req("g", srv, 10)).expect("ok");
        let c = connect_id(&drain(&mut s));
        s.handle_connected(t0, c, ConnInfo::default()).expect("ok");
        drain(&mut s);
        s.handle_starts_written(t0, c, &[10, 11]).expect("ok");
        assert_eq!(fork_ids(&drain(&mut s)), [(ForkStatus::Started, Some(10))]);
        s.handle_fork_stop(t0, "g", speech_proto::StopReason::Request)
            .expect("ok");
        drain(&mut s);
        // The same GUID again is another fork, with other streams.
        s.handle_fork_start(t0, req("g", srv, 20)).expect("ok");
        drain(&mut s);
        s.handle_starts_written(t0, c, &[20, 21]).expect("ok");
        assert_eq!(fork_ids(&drain(&mut s)), [(ForkStatus::Started, Some(20))]);
    }

    #[test]
    fn status_event_json_uses_reference_strings() {
        let e = StatusEvent {
            call_guid: "g".into(),
            status: ForkStatus::Error,
            error: Some(ForkFailure::ProxyDnsLookupFailed),
            reconnected: false,
            fork_id: None,
        };
        assert_eq!(
            serde_json::to_value(&e).expect("json"),
            serde_json::json!({"call_guid":"g","status":"error","error":"Proxy DNS lookup failed"})
        );
    }
}
