//! Async client (tokio `UnixStream`): sip-agent's control and event tasks, turn-server's
//! offload task.
//!
//! One request at a time; event lines that arrive while waiting for an answer (after
//! [`Client::subscribe`]) are kept for [`Client::next_event`]. A [`ClientError`] for which
//! [`ClientError::is_broken`] holds leaves the connection unusable: drop it and connect again.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

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
    buf: Vec<u8>,
}

impl Client {
    /// Connects to `socket`; answers are waited for [`DEFAULT_ANSWER_TIMEOUT`].
    pub async fn connect(socket: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|error| ClientError::Connect {
                socket: socket.to_owned(),
                error,
            })?;
        Ok(Client {
            stream,
            decoder: ClientDecoder::default(),
            events: VecDeque::new(),
            timeout: DEFAULT_ANSWER_TIMEOUT,
            buf: vec![0u8; READ_CHUNK],
        })
    }

    /// Waits `timeout` for each answer instead.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Sends `op` on `conn`, connecting to `socket` first (answers waited for `timeout`) when
    /// there is no connection: the loop of a daemon's control task, which drops `conn` after an
    /// error for which [`ClientError::is_broken`] holds and so reconnects for the next request.
    pub async fn call_connecting(
        conn: &mut Option<Client>,
        socket: &Path,
        timeout: Duration,
        op: &Op,
    ) -> Result<Answer, ClientError> {
        let c = match conn {
            Some(c) => c,
            None => conn.insert(Client::connect(socket).await?.with_timeout(timeout)),
        };
        c.call(op).await
    }

    /// Sends `op` and returns its typed answer.
    pub async fn call(&mut self, op: &Op) -> Result<Answer, ClientError> {
        let resp = self.exchange(&encode_request(op)).await?;
        finish(op, resp)
    }

    /// `subscribe`: from now on events arrive too ([`Client::next_event`]).
    pub async fn subscribe(&mut self) -> Result<(), ClientError> {
        self.call(&Op::Subscribe).await.map(|_| ())
    }

    /// The next event (no time limit: events come when they come). Cancel-safe: nothing read is
    /// lost when the future is dropped.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        if let Some(ev) = self.events.pop_front() {
            return Ok(ev);
        }
        match self.read_incoming().await? {
            Incoming::Event(ev) => Ok(ev),
            Incoming::Response(r) => Err(ClientError::BadLine {
                line: format!("{r:?}"),
                error: "an answer to no request".into(),
            }),
        }
    }

    async fn exchange(&mut self, bytes: &[u8]) -> Result<Response, ClientError> {
        let timeout = self.timeout;
        let exchange = async {
            self.stream.write_all(bytes).await?;
            loop {
                match self.read_incoming().await? {
                    Incoming::Response(r) => return Ok(r),
                    Incoming::Event(ev) => self.events.push_back(ev),
                }
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    async fn read_incoming(&mut self) -> Result<Incoming, ClientError> {
        loop {
            if let Some(item) = self.decoder.poll_incoming() {
                return item;
            }
            match self.stream.read(&mut self.buf).await? {
                0 => return Err(ClientError::Closed),
                n => self.decoder.handle_bytes(&self.buf[..n]),
            }
        }
    }
}
