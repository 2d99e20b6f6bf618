//! Sans-IO core of ng-agent: no sockets, no clock reads, no tasks. Every input carries `now`,
//! outputs are drained with `poll_output`, deadlines come from `poll_timeout`
//! (../../../shared/style.md §2).
pub mod bencode;
pub mod engine;
pub mod ethtool;
pub mod rate;
pub mod request;
pub mod webrtc;

/// Origin of the tests' fake clock: std offers no other way to make an `Instant`; everything
/// after is `epoch() + offset`. The only use of `Instant::now` under `core/`.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
pub(crate) fn epoch() -> std::time::Instant {
    std::time::Instant::now()
}
