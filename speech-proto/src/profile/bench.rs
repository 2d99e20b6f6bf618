//! A fixture for `cargo xtask bench`: the audio path of one dialect on a started two-party call.
//!
//! [`Bench::new`] builds a [`Dialect`], runs the upgrade, starts the caller (PCMU) and callee
//! (PCMA) streams, flushes, and for AudioHook answers `open` with `opened` selecting the first
//! offer, so that [`Bench::step`] measures only the per-frame work: one 20 ms frame of each
//! party through [`Dialect::on_audio`] (header parse, transcoding, alignment, resampling and
//! framing as the configuration asks). Time a loop of `step`s; divide by 2 × steps for the
//! cost per frame.

use std::time::Instant;

use serde_json::Value;

use crate::{encode_audio, AudioHeader, Channel, Codec, Control, Start, FLAG_FIRST};

use super::{
    Dialect, Profile, ProfileConfig, ProfileConfigError, ServerSignal, UpgradeInfo, WireFrame,
};

/// A started call on one dialect. See the module docs.
#[derive(Debug)]
pub struct Bench {
    dialect: Dialect,
    now: Instant,
    seq: u16,
    out: Vec<WireFrame>,
}

fn start(channel: Channel, stream_id: u32, codec: Codec) -> Control {
    Control::Start(Start {
        version: crate::VERSION,
        stream_id,
        call_guid: "8F3C21A0-1DD2-11B2-8001-A2D2D9E0E3C4".into(),
        call_id: "bench@127.0.0.1".into(),
        channel,
        from: "sip:1000@bench".into(),
        to: "sip:2000@bench".into(),
        codec,
        sample_rate: 8000,
        ptime_ms: 20,
        metadata: serde_json::Map::new(),
        resumed: false,
        return_audio: false,
    })
}

impl Bench {
    /// A call on a dialect configured by `config`, ready for [`Bench::step`].
    pub fn new(config: &ProfileConfig, now: Instant) -> Result<Bench, ProfileConfigError> {
        let mut dialect = Dialect::new(config)?;
        let _ = dialect.upgrade(&UpgradeInfo {
            authority: "bench",
            path_and_query: "/",
            token: Some("token"),
            unix_now: 0,
            nonce: [1; 16],
        });
        let mut out = Vec::new();
        dialect.on_control(now, &start(Channel::Caller, 1, Codec::Pcmu), &mut out);
        dialect.on_control(now, &start(Channel::Callee, 2, Codec::Pcma), &mut out);
        dialect.flush(now, &mut out);
        if config.profile == Profile::Audiohook {
            let open: Option<Value> = out.iter().find_map(|f| match f {
                WireFrame::Text(t) => serde_json::from_str(t).ok(),
                WireFrame::Binary(_) => None,
            });
            let (id, media) = open
                .as_ref()
                .and_then(|o| {
                    Some((
                        o.get("id")?.clone(),
                        o["parameters"]["media"].get(0)?.clone(),
                    ))
                })
                .expect("invariant: an AudioHook dialect sends open at the first flush");
            let opened = serde_json::json!({"version":"2","type":"opened","id":id,"seq":1,
                "clientseq":1,"parameters":{"media":[media]}});
            let signal = dialect.on_server_text(now, &opened.to_string(), &mut out);
            assert_eq!(
                signal,
                Ok(ServerSignal::Accepted),
                "invariant: opened accepted"
            );
        }
        Ok(Bench {
            dialect,
            now,
            seq: 0,
            out,
        })
    }

    /// One 20 ms frame of each party through the dialect; returns the bytes it produced.
    pub fn step(&mut self) -> usize {
        self.out.clear();
        self.seq = self.seq.wrapping_add(1);
        for (stream_id, codec) in [(1, Codec::Pcmu), (2, Codec::Pcma)] {
            let hdr = AudioHeader {
                stream_id,
                seq: self.seq,
                payload_type: codec.payload_type(),
                flags: if self.seq == 1 { FLAG_FIRST } else { 0 },
                timestamp: u32::from(self.seq) * 160,
            };
            let payload: [u8; 160] =
                std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ self.seq as u8);
            let mut frame = Vec::with_capacity(crate::AUDIO_HEADER_LEN + 160);
            encode_audio(&mut frame, &hdr, &payload);
            self.dialect.on_audio(self.now, frame, &mut self.out);
        }
        self.out.iter().map(WireFrame::len).sum()
    }

    /// The dialect, for its counters.
    pub fn dialect(&self) -> &Dialect {
        &self.dialect
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{AudioEncoding, Layout};

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn every_profile_produces_audio_and_drops_none() {
        let now = Instant::now();
        let cases = [
            (Profile::Xdpfork, None, None, None, 2 * (16 + 160)),
            (Profile::Twilio, None, None, None, 0),
            (Profile::Audiohook, None, None, None, 320),
            (Profile::Jambonz, None, Some(16000), None, 1280),
            (
                Profile::Raw,
                Some(AudioEncoding::L16),
                Some(16000),
                Some(Layout::Mixed),
                640,
            ),
        ];
        for (profile, encoding, rate, layout, bytes) in cases {
            let mut b = Bench::new(
                &ProfileConfig {
                    profile,
                    encoding,
                    rate,
                    layout,
                    ..ProfileConfig::default()
                },
                now,
            )
            .expect("bench");
            let sizes: Vec<usize> = (0..50).map(|_| b.step()).collect();
            if profile == Profile::Twilio {
                // Base64 in JSON: two media messages of about 375 bytes.
                assert!(sizes.iter().all(|&n| (700..800).contains(&n)), "{sizes:?}");
            } else {
                assert!(sizes.iter().all(|&n| n == bytes), "{profile}: {sizes:?}");
            }
            assert_eq!(b.dialect().dropped_audio(), 0, "{profile}");
            assert_eq!(b.dialect().stats().audio_in, 100, "{profile}");
        }
    }
}
