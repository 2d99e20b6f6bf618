//! Binary audio only, for ASR services with a plain binary WebSocket (Deepgram-style): no
//! subprotocol, no text frames from us, µ-law, A-law or little-endian L16 at 8 or 16 kHz,
//! layout `mono-caller`, `mono-callee`, `stereo` (caller first) or `mixed`.
//!
//! One connection carries one call (the issue asked for one connection per stream: a
//! destination with `mono-caller` and one with `mono-callee` give exactly that). The token
//! goes in the `auth` scheme (`token` for `Authorization: Token …`), the rest of the service's
//! options in the URL's query string and `headers`.
//!
//! Server → client: text (transcripts, results) is accepted, not read, and counted; a binary
//! frame is a violation, as in our own protocol: audio flows one way, and a server echoing or
//! playing audio back is not what this profile is for.

use std::time::Instant;

use crate::{Control, ServerViolation};

use super::call::{Call, Change};
use super::media::MediaPipe;
use super::{AudioFormat, DialectStats, Profile, ServerSignal, Speaker, WireFrame};

/// raw dialect state of one connection. See the module docs.
#[derive(Debug)]
pub(super) struct Raw {
    call: Call,
    pipe: MediaPipe,
    stats: DialectStats,
}

impl Raw {
    pub fn new(format: AudioFormat) -> Self {
        Raw {
            call: Call::default(),
            pipe: MediaPipe::new(format),
            stats: DialectStats::default(),
        }
    }
}

impl Speaker for Raw {
    fn on_control(&mut self, _now: Instant, msg: &Control, out: &mut Vec<WireFrame>) {
        let change = self.call.apply(msg);
        if matches!(
            change,
            Change::Updated(_) | Change::Dtmf(..) | Change::Ignored
        ) {
            self.stats.controls_not_sent += 1;
        }
        self.pipe.follow(&change, out);
    }

    fn on_audio(&mut self, _now: Instant, frame: Vec<u8>, out: &mut Vec<WireFrame>) {
        self.pipe.route(&self.call, &frame, &mut self.stats, out);
    }

    fn flush(&mut self, _now: Instant, _out: &mut Vec<WireFrame>) {}

    fn on_server_text(
        &mut self,
        _now: Instant,
        text: &str,
        _out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation> {
        if text.len() > Profile::Raw.max_server_message() {
            return Err(ServerViolation::TooLarge);
        }
        self.stats.server_messages_ignored += 1;
        Ok(ServerSignal::Nothing)
    }

    fn stats(&self) -> DialectStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::call::testing::*;
    use crate::profile::{AudioEncoding, AuthScheme, Dialect, Layout, ProfileConfig, UpgradeInfo};
    use crate::{linear_to_alaw, ulaw_to_linear, Channel, Codec, StopReason};

    fn dialect(encoding: AudioEncoding, layout: Layout) -> Dialect {
        Dialect::new(&ProfileConfig {
            profile: Profile::Raw,
            encoding: Some(encoding),
            layout: Some(layout),
            auth: AuthScheme::Token,
            headers: vec![("X-Model".into(), "nova".into())],
            ..ProfileConfig::default()
        })
        .expect("dialect")
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn binary_audio_only() {
        let t0 = Instant::now();
        let mut d = dialect(AudioEncoding::Alaw, Layout::Mixed);
        let up = d.upgrade(&UpgradeInfo {
            authority: "asr",
            path_and_query: "/v1/listen?encoding=alaw",
            token: Some("k"),
            unix_now: 0,
            nonce: [0; 16],
        });
        assert_eq!(up.subprotocol, None);
        assert_eq!(
            up.headers,
            vec![
                ("X-Model".into(), "nova".into()),
                ("Authorization".into(), "Token k".into())
            ]
        );
        let mut out = Vec::new();
        d.on_control(t0, &start(Channel::Caller, Codec::Pcmu), &mut out);
        d.on_control(t0, &start(Channel::Callee, Codec::Pcmu), &mut out);
        d.flush(t0, &mut out);
        assert!(out.is_empty(), "no text frames at all");
        d.on_audio(
            t0,
            frame(Channel::Caller, Codec::Pcmu, 1, 0, true, &[0xF0; 160]),
            &mut out,
        );
        d.on_audio(
            t0,
            frame(Channel::Callee, Codec::Pcmu, 1, 0, true, &[0xF0; 160]),
            &mut out,
        );
        let mixed = linear_to_alaw(2 * ulaw_to_linear(0xF0));
        assert_eq!(out, vec![WireFrame::Binary(vec![mixed; 160])]);
        out.clear();
        // The callee hangs up: the caller goes out alone, at once.
        d.on_control(t0, &stop(Channel::Callee, StopReason::CallEnd), &mut out);
        d.on_audio(
            t0,
            frame(Channel::Caller, Codec::Pcmu, 2, 160, false, &[0xF0; 160]),
            &mut out,
        );
        assert_eq!(
            out,
            vec![WireFrame::Binary(vec![
                linear_to_alaw(ulaw_to_linear(0xF0));
                160
            ])]
        );
        d.on_control(
            t0,
            &update(Channel::Caller, serde_json::json!({})),
            &mut out,
        );
        d.on_local_close(t0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(d.stats().controls_not_sent, 1);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn server_text_is_counted_and_binary_refused() {
        let t0 = Instant::now();
        let mut d = dialect(AudioEncoding::L16, Layout::MonoCallee);
        let mut out = Vec::new();
        assert_eq!(
            d.on_server_text(t0, r#"{"transcript":"hello"}"#, &mut out),
            Ok(ServerSignal::Nothing)
        );
        assert_eq!(
            d.on_server_text(t0, "not even json", &mut out),
            Ok(ServerSignal::Nothing)
        );
        assert_eq!(d.stats().server_messages_ignored, 2);
        assert_eq!(
            d.on_server_text(t0, &"x".repeat(70_000), &mut out),
            Err(ServerViolation::TooLarge)
        );
        assert_eq!(
            d.on_server_binary(t0, &[0; 4], &mut out),
            Err(ServerViolation::BinaryFrame)
        );
    }
}
