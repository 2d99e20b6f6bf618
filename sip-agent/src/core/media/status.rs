//! What the controller hears about a fork, from fork-agent's `fork_start` answer and its
//! `fork_status` events (docs/fork-request.md "Status sequences").
//!
//! Role: the fork's [`Link`] (requested, connecting, up, reconnecting) moves on fork-agent's
//! `started` and `error` events; events that overtake the `fork_start` answer wait in the link
//! until it came. STARTED and a START's failure answer the controller's START
//! ([`MediaOutput::Status`]); a lost connection, the fork carried again and fork-agent giving
//! up are connection statuses ([`MediaOutput::ConnectionStatus`], paced by the B2BUA). A
//! failed fork is stopped in fork-agent and forgotten.
//! Inputs: [`MediaLayer::handle_fork_event`]; the `fork_start` answer (media.rs). Outputs:
//! status reports and the clean-up `fork_stop` through the layer's output queue.

use std::collections::VecDeque;

use control_api::{ApiError, Channel, ClientError, ForkStarted, ForkStatus, Op, StopReason};
use speech_proto::{Profile, ReturnAudioError};
use tracing::{debug, warn};

use super::{MediaLayer, MediaOutput, Purpose};
use crate::core::b2bua::CallHandle;
use crate::core::fork_request::{
    ForkError, ForkKind, ForkState, Party, StatusReport, StreamStatus,
};

/// fork-agent's `fork_status` event (control-api `Event::ForkStatus`), as the shell forwards
/// it (docs/control-api.md "subscribe").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkEvent {
    /// The fork.
    pub call_guid: String,
    /// What happened.
    pub status: ForkStatus,
    /// The reference's error string, for `error` (and `stopped`).
    pub error: Option<String>,
    /// `started` again after a lost connection.
    pub reconnected: bool,
    /// fork-agent's statement of the fork's current state after a (re)subscription, not a
    /// change: acted on only where it differs from what sip-agent believes.
    pub snapshot: bool,
    /// The fork's first stream id: an event whose id is not one of the fork's streams is
    /// another fork under the same GUID (a START after a STOP) and is ignored.
    pub fork_id: Option<u32>,
}

/// What of a `fork_status` event the media layer acts on. `paused`, `resumed` and `stopped`
/// are not: they follow our own requests, whose answers are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkEvent {
    /// The `start`s went out: the speech server has the streams.
    Started {
        /// After a lost connection.
        reconnected: bool,
    },
    /// Something failed; the reference string (`Internal error` when fork-agent sent none
    /// this version knows).
    Error(ForkError),
}

impl LinkEvent {
    pub(super) fn of(ev: &ForkEvent) -> Option<Self> {
        match ev.status {
            ForkStatus::Started => Some(Self::Started {
                reconnected: ev.reconnected,
            }),
            ForkStatus::Error => Some(Self::Error(
                ev.error
                    .as_deref()
                    .and_then(ForkError::from_wire)
                    .unwrap_or(ForkError::InternalError),
            )),
            ForkStatus::Paused | ForkStatus::Resumed | ForkStatus::Stopped => None,
        }
    }
}

/// Status events kept for a fork whose `fork_start` answer has not arrived; beyond this
/// (fork-agent reconnecting again and again before answering) the first and the newest are
/// kept.
pub(super) const EARLY_EVENTS: usize = 8;

/// Where a fork's speech-server connection stands, as fork-agent's answer and events tell it.
#[derive(Debug, Clone)]
pub(super) enum Link {
    /// `fork_start` sent, no answer yet; events that overtook the answer wait here.
    Requested {
        /// In arrival order, with the fork id each named (checked once the answer names the
        /// fork's streams).
        early: VecDeque<(LinkEvent, Option<u32>)>,
    },
    /// fork-agent accepted the fork (CONNECTING reported), no `started` yet.
    Connecting,
    /// The speech server has the streams (STARTED reported).
    Up,
    /// The connection was lost and fork-agent reconnects (RECONNECTING reported).
    Reconnecting,
}

/// fork-agent refuses a `fork_start` whose destination its `[destinations] allow` list does
/// not name with this text and the reason after a colon (docs/control-api.md "fork_start").
/// The controller hears `Connection failed`: the media host would not connect there.
pub use control_api::DESTINATION_NOT_ALLOWED;

/// The reference's error string fork-agent refused with; `Connection failed` for a
/// destination it does not allow; `Unsupported flow` for return audio asked of a profile that
/// has none (AudioHook, raw); else "Internal error" (a refusal without one, or fork-agent not
/// reachable).
pub(super) fn fork_error(e: &ClientError) -> ForkError {
    match e.api() {
        Some(ApiError::Refused(text)) => ForkError::from_wire(text)
            .or_else(|| {
                text.starts_with(DESTINATION_NOT_ALLOWED)
                    .then_some(ForkError::ConnectionFailed)
            })
            .or_else(|| no_return_audio(text).then_some(ForkError::UnsupportedFlow)),
        _ => None,
    }
    .unwrap_or(ForkError::InternalError)
}

/// Whether fork-agent's refusal is the speech protocol's "this profile has no return audio"
/// (speech-proto's [`ReturnAudioError`], which fork-agent passes on as its text, possibly
/// after a context).
fn no_return_audio(text: &str) -> bool {
    Profile::ALL
        .into_iter()
        .any(|p| text.contains(&ReturnAudioError::NotInProfile(p).to_string()))
}

/// Whether an event naming `fork_id` is about the fork whose streams are `channels` (an event
/// without one, from an older fork-agent, is taken as it is).
pub(super) fn is_this_fork(channels: &[StreamStatus], fork_id: Option<u32>) -> bool {
    fork_id.is_none_or(|id| channels.iter().any(|c| c.channel_id == id))
}

/// The caller and callee channel ids of `channels`.
pub(super) fn channel_ids(channels: &[StreamStatus]) -> [Option<u32>; 2] {
    let id = |p: Party| channels.iter().find(|s| s.party == p).map(|s| s.channel_id);
    [id(Party::Calling), id(Party::Called)]
}

/// [`channel_ids`] as status streams again.
pub(super) fn channels_of(ids: [Option<u32>; 2]) -> Vec<StreamStatus> {
    [Party::Calling, Party::Called]
        .into_iter()
        .zip(ids)
        .filter_map(|(party, id)| id.map(|channel_id| StreamStatus { channel_id, party }))
        .collect()
}

impl MediaLayer {
    pub(super) fn status(
        &mut self,
        call: CallHandle,
        guid: &str,
        request: Option<ForkKind>,
        state: ForkState,
        status: Option<ForkError>,
        streams: Vec<StreamStatus>,
    ) {
        let report = report(guid, request, state, status, streams);
        self.out.push_back(MediaOutput::Status { call, report });
    }

    /// A status caused by the connection of a started fork (paced by the B2BUA); it answers no
    /// request of the controller's.
    fn connection_status(
        &mut self,
        call: CallHandle,
        guid: &str,
        state: ForkState,
        status: Option<ForkError>,
        streams: Vec<StreamStatus>,
    ) {
        let report = report(guid, None, state, status, streams);
        self.out
            .push_back(MediaOutput::ConnectionStatus { call, report });
    }

    /// fork-agent's `fork_status` event. An event for a fork no call has (stopped, failed, or
    /// another agent's) is ignored.
    pub fn handle_fork_event(&mut self, ev: &ForkEvent) {
        let Some(e) = LinkEvent::of(ev) else {
            return;
        };
        let call = self
            .calls
            .iter()
            .find(|(_, c)| c.forks.iter().any(|f| f.guid == ev.call_guid))
            .map(|(&call, _)| call);
        let Some(call) = call else {
            debug!(call_guid = %ev.call_guid, ?e, "fork_status event for no fork of ours");
            return;
        };
        let Some(f) = self
            .calls
            .get_mut(&call)
            .and_then(|c| c.fork_mut(&ev.call_guid))
        else {
            return;
        };
        if let Link::Requested { early } = &mut f.link {
            // The first decides the START's outcome; of the rest, the newest matter.
            if early.len() == EARLY_EVENTS {
                early.remove(1);
            }
            early.push_back((e, ev.fork_id));
            return;
        }
        if !is_this_fork(&f.channels, ev.fork_id) {
            debug!(call_guid = %ev.call_guid, ?e, fork_id = ?ev.fork_id, "fork_status event of an earlier fork under this GUID; ignored");
            return;
        }
        if ev.snapshot {
            self.on_snapshot(call, &ev.call_guid, e)
        } else {
            self.on_link_event(call, &ev.call_guid, e)
        }
    }

    /// fork-agent's snapshot of a fork after a (re)subscription: acted on only where it
    /// differs from the link's state, so a state already reported is never reported twice and
    /// a connection still being re-established is not taken for fork-agent giving up.
    fn on_snapshot(&mut self, call: CallHandle, guid: &str, e: LinkEvent) {
        let Some(f) = self.calls.get_mut(&call).and_then(|c| c.fork_mut(guid)) else {
            return;
        };
        let lost = |e: &LinkEvent| {
            matches!(
                e,
                LinkEvent::Error(ForkError::ConnectionClosed | ForkError::TcpConnectionClosed)
            )
        };
        match (&f.link, e) {
            // Already what the controller heard.
            (Link::Up, LinkEvent::Started { .. }) => {}
            (Link::Reconnecting, e) if lost(&e) => {}
            // It started and has lost its connection since, both while we were away: the
            // START is answered STARTED, then the loss reported.
            (Link::Connecting, e) if lost(&e) => {
                self.on_link_event(call, guid, LinkEvent::Started { reconnected: false });
                self.on_link_event(call, guid, e);
            }
            // Started while we were away (again, after a lost connection), or failed for good:
            // as the event itself.
            _ => self.on_link_event(call, guid, e),
        }
    }

    pub(super) fn on_link_event(&mut self, call: CallHandle, guid: &str, e: LinkEvent) {
        let Some(f) = self.calls.get_mut(&call).and_then(|c| c.fork_mut(guid)) else {
            return;
        };
        let guid = f.guid.clone();
        let channels = f.channels.clone();
        match (&mut f.link, e) {
            (Link::Requested { early }, e) => {
                if early.len() == EARLY_EVENTS {
                    early.remove(1);
                }
                early.push_back((e, None));
            }
            (Link::Connecting, LinkEvent::Started { .. }) => {
                f.link = Link::Up;
                self.changed.insert(call);
                let start = Some(ForkKind::Start);
                self.status(call, &guid, start, ForkState::Started, None, channels);
            }
            // The START failed: fork-agent gave up connecting.
            (Link::Connecting, LinkEvent::Error(err)) => {
                self.fork_failed(call, &guid, Some(ForkKind::Start), err)
            }
            (Link::Up, LinkEvent::Started { reconnected: false }) => {
                debug!(?call, %guid, "fork started again without a reconnect; nothing to report")
            }
            // Carried again ("resumed after reconnect"); from Up when the loss's event was lost.
            (Link::Up | Link::Reconnecting, LinkEvent::Started { .. }) => {
                f.link = Link::Up;
                self.connection_status(call, &guid, ForkState::Started, None, channels);
            }
            (
                Link::Up,
                LinkEvent::Error(
                    err @ (ForkError::ConnectionClosed | ForkError::TcpConnectionClosed),
                ),
            ) => {
                f.link = Link::Reconnecting;
                self.connection_status(call, &guid, ForkState::Reconnecting, Some(err), vec![]);
            }
            // Given up while reconnecting, or any other failure of a started fork.
            (Link::Up | Link::Reconnecting, LinkEvent::Error(err)) => {
                self.fork_failed(call, &guid, None, err)
            }
        }
    }

    /// The fork is over on fork-agent's side: ERROR with the reason, the fork forgotten (a new
    /// START is allowed) and stopped in fork-agent, which keeps failed forks until told.
    /// `request` is START for a START that never started, else `None` (a connection status).
    fn fork_failed(
        &mut self,
        call: CallHandle,
        guid: &str,
        request: Option<ForkKind>,
        err: ForkError,
    ) {
        let Some(f) = self.calls.get_mut(&call).and_then(|c| c.take_fork(guid)) else {
            return;
        };
        warn!(?call, call_guid = %f.guid, error = err.as_str(), "fork failed");
        match request {
            Some(_) => self.status(call, &f.guid, request, ForkState::Error, Some(err), vec![]),
            None => self.connection_status(call, &f.guid, ForkState::Error, Some(err), vec![]),
        }
        self.control(
            call,
            Purpose::Cleanup(f.guid.clone()),
            Op::ForkStop {
                call_guid: f.guid,
                reason: StopReason::Request,
            },
        );
    }
}

/// A status report on fork `guid`.
fn report(
    guid: &str,
    request: Option<ForkKind>,
    state: ForkState,
    status: Option<ForkError>,
    streams: Vec<StreamStatus>,
) -> StatusReport {
    StatusReport {
        call_guid: Some(guid.to_string()),
        request,
        state,
        status,
        streams,
    }
}

/// `fork_start`'s answer as status streams.
pub(super) fn streams_of(started: &ForkStarted) -> Vec<StreamStatus> {
    started
        .streams
        .iter()
        .map(|s| StreamStatus {
            channel_id: s.stream_id,
            party: match s.channel {
                Channel::Caller => Party::Calling,
                Channel::Callee => Party::Called,
            },
        })
        .collect()
}
