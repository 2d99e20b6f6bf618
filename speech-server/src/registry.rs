//! Process-wide record of every stream and connection, and the files each stream writes.
//!
//! Role: connection tasks report accepted events here (after their per-connection
//! [`speech_proto::Validator`] has checked them); this module keeps the cross-connection view
//! that a single connection cannot have: a `start` with `"resumed": true` on a new connection
//! continues the stream (same files, same counters), a non-resumed `start` for a known id or
//! any `start` for a stopped id is refused. On exit [`Registry::summary`] renders the JSON
//! report. Writes go to buffered files; `stop` finalizes a stream's files immediately.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use speech_proto::{AudioEvent, Codec, SeqTracker, Start, StopReason};

/// Streams with more frames than this have no per-frame seq list in the summary.
const MAX_SEQ_LIST: usize = 100_000;

type Wav = hound::WavWriter<BufWriter<File>>;

/// Why the registry refused a `start` that the connection's validator accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRefusal {
    /// Non-resumed start for an id already known to the process.
    Duplicate,
    /// The id was stopped earlier (ids are never reused).
    Stopped,
}

struct StreamRecord {
    call_guid: String,
    call_id: String,
    channel: &'static str,
    from: String,
    to: String,
    codec: Codec,
    metadata: serde_json::Map<String, serde_json::Value>,
    frames: u64,
    payload_bytes: u64,
    last_seq: Option<u16>,
    seq: SeqTracker,
    pauses: u64,
    resumes: u64,
    updates: u64,
    dtmf: u64,
    resumed_starts: u64,
    stopped: Option<StopReason>,
    seqs: Vec<u16>,
    wav_path: PathBuf,
    raw_path: PathBuf,
    wav: Option<Wav>,
    raw: Option<BufWriter<File>>,
    /// Connection currently carrying the stream.
    conn: Option<u64>,
}

#[derive(Serialize)]
struct StreamSummary<'a> {
    call_guid: &'a str,
    call_id: &'a str,
    channel: &'a str,
    stream_id: u32,
    from: &'a str,
    to: &'a str,
    codec: &'a str,
    metadata: &'a serde_json::Map<String, serde_json::Value>,
    frames: u64,
    payload_bytes: u64,
    first_seq: Option<u16>,
    last_seq: Option<u16>,
    highest_seq: Option<u16>,
    lost: u64,
    out_of_order: u64,
    duplicates: u64,
    pauses: u64,
    resumes: u64,
    updates: u64,
    dtmf: u64,
    resumed_starts: u64,
    stopped: Option<&'static str>,
    wav: String,
    raw: String,
    seqs: Option<&'a [u16]>,
}

/// What is known about one accepted TCP connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnRecord {
    /// Sequential id, also used in logs.
    pub id: u64,
    /// Remote address.
    pub peer: String,
    /// Whether TLS was used.
    pub tls: bool,
    /// HTTP status answered to the upgrade (101 when accepted), None if the handshake failed
    /// before an answer (TLS or HTTP parse error).
    pub handshake_status: Option<u16>,
    /// None when no token is required, else whether the client sent the right one.
    pub token_ok: Option<bool>,
    /// Whether the client offered `xdpfork.speech.v1`.
    pub subprotocol_ok: bool,
    /// Binary frames received.
    pub binary_frames: u64,
    /// Text frames received.
    pub text_frames: u64,
    /// Every violation as "code: message", in order.
    pub violations: Vec<String>,
    /// How the connection ended (None while open).
    pub ended: Option<String>,
}

/// All streams and connections of this process.
pub struct Registry {
    out_dir: PathBuf,
    streams: BTreeMap<u32, StreamRecord>,
    conns: BTreeMap<u64, ConnRecord>,
    next_conn: u64,
    stops: u64,
}

/// Keeps `call_guid` from escaping the output directory or breaking file names.
fn sanitize(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.starts_with('.') {
        format!("_{cleaned}")
    } else {
        cleaned
    }
}

impl Registry {
    /// An empty registry writing into `out_dir` (created if missing).
    pub fn new(out_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("cannot create --out-dir {}", out_dir.display()))?;
        Ok(Self {
            out_dir: out_dir.to_owned(),
            streams: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            stops: 0,
        })
    }

    /// Registers a new TCP connection and returns its id.
    pub fn open_conn(&mut self, peer: SocketAddr, tls: bool) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            ConnRecord {
                id,
                peer: peer.to_string(),
                tls,
                handshake_status: None,
                token_ok: None,
                subprotocol_ok: false,
                binary_frames: 0,
                text_frames: 0,
                violations: Vec::new(),
                ended: None,
            },
        );
        id
    }

    /// Mutable access to a connection record.
    pub fn conn(&mut self, id: u64) -> Option<&mut ConnRecord> {
        self.conns.get_mut(&id)
    }

    /// Marks a connection ended and detaches its streams (they may resume elsewhere).
    pub fn close_conn(&mut self, id: u64, how: String) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.ended.get_or_insert(how);
        }
        for s in self.streams.values_mut() {
            if s.conn == Some(id) {
                s.conn = None;
                Self::flush(s);
            }
        }
    }

    /// Accepted `stop` messages so far.
    pub fn stops(&self) -> u64 {
        self.stops
    }

    /// Applies a validated `start`; refuses cross-connection rule breaks.
    pub fn start(&mut self, conn: u64, m: &Start) -> Result<(), StartRefusal> {
        if let Some(s) = self.streams.get_mut(&m.stream_id) {
            if s.stopped.is_some() {
                return Err(StartRefusal::Stopped);
            }
            if !m.resumed {
                return Err(StartRefusal::Duplicate);
            }
            // Continuation after a reconnect: same files, new sequence baseline. It takes the
            // stream over even if the old connection still looks alive here: the client has
            // already seen it die (a half-open TCP connection can take minutes to notice).
            if let Some(old) = s.conn.filter(|&c| c != conn) {
                tracing::info!(
                    stream = m.stream_id,
                    old_conn = old,
                    conn,
                    "stream taken over"
                );
            }
            s.conn = Some(conn);
            s.codec = m.codec;
            s.metadata = m.metadata.clone();
            s.resumed_starts += 1;
            s.seq.restart();
            return Ok(());
        }
        let base = format!(
            "{}-{}-{}",
            sanitize(&m.call_guid),
            m.channel.as_str(),
            m.stream_id
        );
        let wav_path = self.out_dir.join(format!("{base}.wav"));
        let raw_path = self.out_dir.join(format!("{base}.g711"));
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: speech_proto::SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let wav = match hound::WavWriter::create(&wav_path, spec) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(path = %wav_path.display(), error = %e, "cannot create wav file");
                None
            }
        };
        let raw = match File::create(&raw_path) {
            Ok(f) => Some(BufWriter::new(f)),
            Err(e) => {
                tracing::error!(path = %raw_path.display(), error = %e, "cannot create raw file");
                None
            }
        };
        self.streams.insert(
            m.stream_id,
            StreamRecord {
                call_guid: m.call_guid.clone(),
                call_id: m.call_id.clone(),
                channel: m.channel.as_str(),
                from: m.from.clone(),
                to: m.to.clone(),
                codec: m.codec,
                metadata: m.metadata.clone(),
                frames: 0,
                payload_bytes: 0,
                last_seq: None,
                seq: SeqTracker::new(),
                pauses: 0,
                resumes: 0,
                updates: 0,
                dtmf: 0,
                resumed_starts: u64::from(m.resumed),
                stopped: None,
                seqs: Vec::new(),
                wav_path,
                raw_path,
                wav,
                raw,
                conn: Some(conn),
            },
        );
        Ok(())
    }

    /// Records one validated audio frame: counters, raw bytes, decoded samples. Frames from a
    /// connection that no longer owns the stream (it was taken over) are ignored.
    pub fn audio(&mut self, conn: u64, ev: &AudioEvent<'_>) {
        let Some(s) = self.streams.get_mut(&ev.header.stream_id) else {
            return;
        };
        if s.conn != Some(conn) {
            tracing::debug!(
                stream = ev.header.stream_id,
                conn,
                "frame from a stale connection"
            );
            return;
        }
        s.frames += 1;
        s.payload_bytes += ev.payload.len() as u64;
        s.last_seq = Some(ev.header.seq);
        s.seq.record(ev.header.seq);
        if s.seqs.len() < MAX_SEQ_LIST {
            s.seqs.push(ev.header.seq);
        }
        if let Some(raw) = s.raw.as_mut() {
            if let Err(e) = raw.write_all(ev.payload) {
                tracing::error!(path = %s.raw_path.display(), error = %e, "raw write failed");
                s.raw = None;
            }
        }
        if let Some(wav) = s.wav.as_mut() {
            for &b in ev.payload {
                if let Err(e) = wav.write_sample(ev.codec.decode(b)) {
                    tracing::error!(path = %s.wav_path.display(), error = %e, "wav write failed");
                    s.wav = None;
                    break;
                }
            }
        }
    }

    /// Records a validated pause.
    pub fn pause(&mut self, stream_id: u32) {
        if let Some(s) = self.streams.get_mut(&stream_id) {
            s.pauses += 1;
        }
    }

    /// Records a validated resume (new codec, new sequence baseline).
    pub fn resume(&mut self, stream_id: u32, codec: Codec) {
        if let Some(s) = self.streams.get_mut(&stream_id) {
            s.resumes += 1;
            s.codec = codec;
            s.seq.restart();
        }
    }

    /// Records a validated update (metadata replaced).
    pub fn update(
        &mut self,
        stream_id: u32,
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) {
        if let Some(s) = self.streams.get_mut(&stream_id) {
            s.updates += 1;
            s.metadata = metadata.clone();
        }
    }

    /// Records a validated dtmf event.
    pub fn dtmf(&mut self, stream_id: u32) {
        if let Some(s) = self.streams.get_mut(&stream_id) {
            s.dtmf += 1;
        }
    }

    /// Records a validated stop and finalizes the stream's files.
    pub fn stop(&mut self, stream_id: u32, reason: StopReason) {
        if let Some(s) = self.streams.get_mut(&stream_id) {
            s.stopped = Some(reason);
            s.conn = None;
            Self::finalize(s);
            self.stops += 1;
        }
    }

    fn flush(s: &mut StreamRecord) {
        if let Some(raw) = s.raw.as_mut() {
            if let Err(e) = raw.flush() {
                tracing::error!(path = %s.raw_path.display(), error = %e, "raw flush failed");
            }
        }
        if let Some(wav) = s.wav.as_mut() {
            // hound rewrites the RIFF/data lengths on flush, so the file is valid between
            // reconnects too.
            if let Err(e) = wav.flush() {
                tracing::error!(path = %s.wav_path.display(), error = %e, "wav flush failed");
            }
        }
    }

    fn finalize(s: &mut StreamRecord) {
        if let Some(mut raw) = s.raw.take() {
            if let Err(e) = raw.flush() {
                tracing::error!(path = %s.raw_path.display(), error = %e, "raw flush failed");
            }
        }
        if let Some(wav) = s.wav.take() {
            if let Err(e) = wav.finalize() {
                tracing::error!(path = %s.wav_path.display(), error = %e, "wav finalize failed");
            }
        }
    }

    /// Finalizes every file and renders the JSON summary.
    pub fn summary(&mut self) -> serde_json::Value {
        for s in self.streams.values_mut() {
            Self::finalize(s);
        }
        let streams: Vec<StreamSummary<'_>> = self
            .streams
            .iter()
            .map(|(&stream_id, s)| StreamSummary {
                call_guid: &s.call_guid,
                call_id: &s.call_id,
                channel: s.channel,
                stream_id,
                from: &s.from,
                to: &s.to,
                codec: s.codec.as_str(),
                metadata: &s.metadata,
                frames: s.frames,
                payload_bytes: s.payload_bytes,
                first_seq: s.seq.first_seq(),
                last_seq: s.last_seq,
                highest_seq: s.seq.highest_seq(),
                lost: s.seq.lost(),
                out_of_order: s.seq.out_of_order(),
                duplicates: s.seq.duplicates(),
                pauses: s.pauses,
                resumes: s.resumes,
                updates: s.updates,
                dtmf: s.dtmf,
                resumed_starts: s.resumed_starts,
                stopped: s.stopped.map(StopReason::as_str),
                wav: s.wav_path.display().to_string(),
                raw: s.raw_path.display().to_string(),
                seqs: (s.frames as usize <= MAX_SEQ_LIST).then_some(&s.seqs[..]),
            })
            .collect();
        let conns: Vec<&ConnRecord> = self.conns.values().collect();
        serde_json::json!({
            "streams": streams,
            "connections": conns,
            "stops": self.stops,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_names_inside_out_dir() {
        assert_eq!(sanitize("../../etc/passwd"), "_.._.._etc_passwd");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize("AbC-12_3.x"), "AbC-12_3.x");
        assert_eq!(sanitize("a/b c"), "a_b_c");
    }
}
