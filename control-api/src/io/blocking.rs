//! Blocking client (std `UnixStream`): the `fork-agent ctl` CLI and the tests.
//!
//! One request at a time; event lines that arrive while waiting for an answer (after
//! [`Client::subscribe`]) are kept for [`Client::next_event`].

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::codec::{
    encode_request, finish, ClientDecoder, ClientError, Incoming, DEFAULT_ANSWER_TIMEOUT,
};
use crate::event::Event;
use crate::request::Op;
use crate::response::{Answer, Response};

/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;

/// One connection to fork-agent's control socket.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    decoder: ClientDecoder,
    events: VecDeque<Event>,
    timeout: Duration,
}

impl Client {
    /// Connects to `socket`; answers are waited for [`DEFAULT_ANSWER_TIMEOUT`].
    pub fn connect(socket: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|error| ClientError::Connect {
            socket: socket.to_owned(),
            error,
        })?;
        Ok(Client {
            stream,
            decoder: ClientDecoder::default(),
            events: VecDeque::new(),
            timeout: DEFAULT_ANSWER_TIMEOUT,
        })
    }

    /// Waits `timeout` for each answer instead.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Sends `op` and returns its typed answer.
    pub fn call(&mut self, op: &Op) -> Result<Answer, ClientError> {
        let resp = self.exchange(&encode_request(op))?;
        finish(op, resp)
    }

    /// Sends one raw line (`\n` added) and returns the answer line as it came: for tests of
    /// the server's refusals, and callers that build requests as JSON.
    pub fn call_line(&mut self, line: &str) -> Result<Response, ClientError> {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.exchange(&bytes)
    }

    /// `subscribe`: from now on events arrive too ([`Client::next_event`]).
    pub fn subscribe(&mut self) -> Result<(), ClientError> {
        self.call(&Op::Subscribe).map(|_| ())
    }

    /// The next event, waiting at most `wait`; `Ok(None)` when none came in time (the
    /// connection stays usable).
    pub fn next_event(&mut self, wait: Duration) -> Result<Option<Event>, ClientError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Ok(Some(ev));
            }
            match self.read_incoming(deadline) {
                Ok(Incoming::Event(ev)) => self.events.push_back(ev),
                Ok(Incoming::Response(r)) => {
                    return Err(ClientError::BadLine {
                        line: format!("{r:?}"),
                        error: "an answer to no request".into(),
                    })
                }
                Err(ClientError::Timeout(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    fn exchange(&mut self, bytes: &[u8]) -> Result<Response, ClientError> {
        self.stream.write_all(bytes)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.read_incoming(deadline)? {
                Incoming::Response(r) => return Ok(r),
                Incoming::Event(ev) => self.events.push_back(ev),
            }
        }
    }

    /// The next line, reading until `deadline`.
    fn read_incoming(&mut self, deadline: Instant) -> Result<Incoming, ClientError> {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if let Some(item) = self.decoder.poll_incoming() {
                return item;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout(self.timeout));
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.decoder.handle_bytes(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout(self.timeout))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
