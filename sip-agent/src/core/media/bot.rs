//! A voice bot's call (endpoint mode, docs/sip-agent.md "Voice bots"): the caller's flow is a
//! sink (forked, never relayed: the call ends here) and one fork with return audio goes to the
//! bot's speech server, whose RTP fork-agent sends back from the caller's anchor.
//!
//! Input: [`SessionEvent::BotUp`](crate::core::b2bua::SessionEvent::BotUp). Outputs: `flow_add`
//! (sink) then `fork_start` (return audio to the caller), on the ordered control connection.
//! The call's end tears both down as for any call.

use std::collections::VecDeque;

use control_api::{Channel, FlowSpec, ForkSpec, Op, ReturnAudio, ReturnMode, StreamSpec};
use tracing::warn;

use super::{
    g711_payload_types, law, local, Fork, Link, MediaLayer, Phase, Purpose, DEFAULT_PTIME_MS,
};
use crate::core::b2bua::{BotCall, CallHandle, Leg};

impl MediaLayer {
    pub(super) fn on_bot(&mut self, call: CallHandle, b: &BotCall) {
        let BotCall {
            media,
            route: bot,
            guid,
            parties,
        } = b;
        let Some(dst) = media.remote else {
            // The B2BUA answers only offers with an address.
            warn!(
                ?call,
                "bot call without the caller's address: nothing to send to"
            );
            return;
        };
        let c = self.calls.entry(call).or_default();
        c.legs[Leg::A as usize] = Some(media.clone());
        let anchor = local(media);
        let codec = law(media);
        // The answer's codec is G.711 (b2bua/bot.rs answers nothing else).
        let payload_types = g711_payload_types(media.codec.as_ref());
        let flow = FlowSpec {
            local: anchor,
            src: anchor,
            dst,
            expect: None,
            rtcp: false,
            payload_types,
            dtmf_pt: media.telephone_event,
            sink: true,
        };
        c.flows.insert(anchor, flow.clone());
        let fork = ForkSpec {
            call_guid: guid.to_owned(),
            call_id: parties.call_id.clone(),
            from: parties.from.clone(),
            to: parties.to.clone(),
            server: bot.speech_server.clone(),
            destination: None,
            codec,
            ptime_ms: media.ptime.unwrap_or(DEFAULT_PTIME_MS),
            metadata: Default::default(),
            streams: vec![StreamSpec {
                channel: Channel::Caller,
                flow: anchor,
            }],
            return_audio: Some(ReturnAudio {
                to: Channel::Caller,
                flow: anchor,
                payload_type: media.codec.as_ref().map(|k| k.pt),
                mode: ReturnMode::Replace,
            }),
        };
        c.forks.push(Fork {
            guid: guid.to_owned(),
            phase: Phase::Starting,
            link: Link::Requested {
                early: VecDeque::new(),
            },
            channels: Vec::new(),
            codec,
            requested: None,
            streams: [Some(anchor), None],
        });
        self.control(call, Purpose::FlowAdd(anchor), Op::FlowAdd { flow });
        self.control(
            call,
            Purpose::Start(guid.to_owned()),
            Op::ForkStart { fork },
        );
    }
}
