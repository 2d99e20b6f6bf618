//! Sans-IO JSON-lines framing, shared by the server loop and both clients.
//!
//! Server: [`decode_request_line`] turns one [`Line`] of conn-limits' bounded [`LineReader`]
//! into an [`Op`] or the [`ApiError`] to answer; [`encode_response`] and [`Event::to_line`]
//! give the bytes to write.
//! Client: [`encode_request`] gives the bytes of a request; [`ClientDecoder`] takes the bytes
//! read and yields [`Incoming`] lines (answers and events); [`finish`] turns an answer into the
//! operation's typed [`Answer`] or a [`ClientError`].

use std::path::PathBuf;
use std::time::Duration;

use conn_limits::{Line, LineReader};

use crate::event::Event;
use crate::request::{parse_request, Op, API_VERSION};
use crate::response::{Answer, ApiError, Response};

/// Longest answer line a client reads (a `show_turn` of 65 536 channels is about 20 MB).
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// How long a client waits for an answer by default: fork-agent's longest operation is a 1.5 s
/// neighbour wait per direction of a `flow_add` or `turn_channel_add`.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Server: the request in one line, or the error to answer it with. `max` is the reader's limit
/// (named in the answer to a line that crossed it; the connection is then closed).
pub fn decode_request_line(line: Line, max: usize) -> Result<Op, ApiError> {
    match line {
        Line::Text(l) => parse_request(&l),
        Line::NotUtf8 => Err(ApiError::NotUtf8),
        Line::TooLong => Err(ApiError::LineTooLong { max }),
    }
}

/// Server: an answer line, `\n` included.
pub fn encode_response(resp: &Response) -> Vec<u8> {
    // `data` is a JSON value and `error` a string: serialising cannot fail; should it, the
    // client still gets one line saying so.
    let mut out = serde_json::to_vec(resp).unwrap_or_else(|e| {
        serde_json::to_vec(&Response::err(format!("cannot encode the answer: {e}")))
            .unwrap_or_else(|_| br#"{"ok":false}"#.to_vec())
    });
    out.push(b'\n');
    out
}

/// Server: an event line, `\n` included.
pub fn encode_event(ev: &Event) -> Vec<u8> {
    let mut out = ev.to_line().into_bytes();
    out.push(b'\n');
    out
}

/// Client: a request line, `\n` included.
pub fn encode_request(op: &Op) -> Vec<u8> {
    let mut out = op.to_line().into_bytes();
    out.push(b'\n');
    out
}

/// A line a client receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The answer to the oldest request without one.
    Response(Response),
    /// An event (after `subscribe`).
    Event(Event),
}

impl Incoming {
    /// Reads one line: an object with `event` is an event, anything else must be an answer.
    pub fn decode(line: &str) -> Result<Incoming, ClientError> {
        let bad = |e: serde_json::Error| ClientError::BadLine {
            line: line.chars().take(200).collect(),
            error: e.to_string(),
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(bad)?;
        if v.get("event").is_some() {
            serde_json::from_value(v).map(Incoming::Event).map_err(bad)
        } else {
            serde_json::from_value(v)
                .map(Incoming::Response)
                .map_err(bad)
        }
    }
}

/// Client: splits the bytes read into [`Incoming`] lines, never holding more than
/// [`MAX_ANSWER_BYTES`] (or the limit given) of one line.
#[derive(Debug)]
pub struct ClientDecoder {
    lines: LineReader,
}

impl Default for ClientDecoder {
    fn default() -> Self {
        ClientDecoder::new(MAX_ANSWER_BYTES)
    }
}

impl ClientDecoder {
    /// Lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        ClientDecoder {
            lines: LineReader::new(max),
        }
    }

    /// Takes one chunk read from the connection; drain [`ClientDecoder::poll_incoming`] after.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        self.lines.handle_bytes(bytes);
    }

    /// The next complete line, decoded. Call after every [`ClientDecoder::handle_bytes`] until
    /// `None`.
    #[must_use]
    pub fn poll_incoming(&mut self) -> Option<Result<Incoming, ClientError>> {
        Some(match self.lines.poll_line()? {
            Line::Text(l) => Incoming::decode(&l),
            Line::NotUtf8 => Err(ClientError::BadLine {
                line: String::new(),
                error: "not UTF-8".into(),
            }),
            Line::TooLong => Err(ClientError::AnswerTooLong {
                max: self.lines.max(),
            }),
        })
    }
}

/// Client: the typed result of `op` from its answer line.
pub fn finish(op: &Op, resp: Response) -> Result<Answer, ClientError> {
    let data = resp.into_result()?;
    Answer::decode(op, data).map_err(|e| ClientError::UnexpectedAnswer {
        op: op.name(),
        error: e.to_string(),
    })
}

/// Why a client did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be opened.
    // `error` is in the text rather than the source chain: callers log with `%e` as often as
    // they print the chain, and either way the OS error must show.
    #[error("cannot connect to {} ({error}): is fork-agent running, is this its [control] socket, and may this user open it?", socket.display())]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// What `connect` said.
        error: std::io::Error,
    },
    /// Reading or writing failed (the OS error in the text, not the source chain, as for
    /// `Connect`).
    #[error("control connection to fork-agent failed: {0}")]
    Io(std::io::Error),
    /// No answer in time; the connection is not usable any more (a late answer would be taken
    /// for the next request's).
    #[error("no answer from fork-agent within {0:?}")]
    Timeout(Duration),
    /// fork-agent closed the connection (stopping, restarting, or it closed an oversize line).
    #[error("fork-agent closed the control connection")]
    Closed,
    /// An answer longer than the client's limit.
    #[error("fork-agent's answer is longer than {max} bytes")]
    AnswerTooLong {
        /// The limit.
        max: usize,
    },
    /// A line that is neither an answer nor an event.
    #[error("fork-agent sent a line that is neither an answer nor an event ({error}): {line}")]
    BadLine {
        /// The line's start.
        line: String,
        /// Why it was not understood.
        error: String,
    },
    /// fork-agent refused the request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The answer's data is not the shape this client knows for the operation.
    #[error("fork-agent's answer to {op} is not what this client (control API version {API_VERSION}) expects ({error}): are fork-agent and this program from the same release?")]
    UnexpectedAnswer {
        /// The operation.
        op: &'static str,
        /// What did not match.
        error: String,
    },
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl ClientError {
    /// fork-agent refused the request (as opposed to: it could not be asked).
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api(e) => Some(e),
            _ => None,
        }
    }

    /// The connection must be dropped: anything but a refusal or an answer of an unknown shape
    /// leaves it in an unknown state.
    pub fn is_broken(&self) -> bool {
        !matches!(
            self,
            ClientError::Api(_) | ClientError::UnexpectedAnswer { .. }
        )
    }
}
