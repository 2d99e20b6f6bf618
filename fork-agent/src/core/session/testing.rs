//! Test fixture shared by the session unit tests: a service with one speech server
//! (calls threshold 2), fork requests, and helpers that read outputs.

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{Map, Value};
use speech_proto::{Channel, Codec};

use super::*;
use crate::core::ws_pool::PoolConfig;

/// Base instant for the fake clock; tests only add durations to it.
#[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
pub(super) fn epoch() -> Instant {
    Instant::now()
}

pub(super) fn service(max_attempts: u32) -> (ForkService, ServerId) {
    service_with(max_attempts, false)
}

/// [`service`] whose dialect confirms sessions before they count as started.
pub(super) fn service_with(max_attempts: u32, awaits_acceptance: bool) -> (ForkService, ServerId) {
    let mut svc = ForkService::new();
    let cfg = PoolConfig {
        calls_threshold: 2,
        max_connect_attempts: max_attempts,
        ..PoolConfig::default()
    };
    let id = svc
        .add_server(
            "asr",
            "10.0.0.1:9000",
            cfg,
            awaits_acceptance,
            Box::new(StdRng::seed_from_u64(1)),
        )
        .expect("valid");
    (svc, id)
}

pub(super) fn req(guid: &str, server: ServerId, first_id: u32) -> ForkRequest {
    ForkRequest {
        call_guid: guid.into(),
        call_id: format!("{guid}@pbx"),
        from: "1000".into(),
        to: "2000".into(),
        server,
        codec: Codec::Pcmu,
        ptime_ms: 20,
        metadata: Map::new(),
        streams: vec![(first_id, Channel::Caller), (first_id + 1, Channel::Callee)],
        resumed: false,
        return_audio: None,
    }
}

pub(super) fn drain(s: &mut ForkService) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

/// Message types sent, as "type:stream_id".
pub(super) fn sent(outs: &[Output]) -> Vec<String> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { msg, .. } => {
                let v: Value = serde_json::from_str(&msg.to_json()).expect("json");
                Some(format!(
                    "{}:{}",
                    v["type"].as_str().unwrap_or("?"),
                    v["stream_id"]
                ))
            }
            _ => None,
        })
        .collect()
}

pub(super) fn statuses(outs: &[Output]) -> Vec<(ForkStatus, Option<&'static str>)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Status(e) => Some((e.status, e.error.map(ForkFailure::as_str))),
            _ => None,
        })
        .collect()
}

pub(super) fn connect_id(outs: &[Output]) -> ConnId {
    outs.iter()
        .find_map(|o| match o {
            Output::Connect { conn, .. } => Some(*conn),
            _ => None,
        })
        .expect("a Connect output")
}
