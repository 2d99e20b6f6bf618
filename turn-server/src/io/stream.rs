//! TCP and TLS client connections: admit, frame, forward.
//!
//! Role: accept connections on the TCP and TLS listen sockets through one
//! [`Gate`](conn_limits::io::gate::Gate) (`[limits]`: per-address and global connection
//! limits across both, a deadline for the connection's first allocation, an accept loop that
//! pauses on EMFILE), cut each byte stream into STUN and ChannelData frames with turn-core's
//! [`frame_len`] (RFC 8656 §12.5: ChannelData is padded to 4 bytes on streams), and pass frames
//! to the task that owns the core. A frame announcing more than `limits.max_frame_bytes`
//! closes the connection before it is buffered. Bytes the core wants to send on a connection
//! arrive on a bounded per-connection queue and are written in order.
//! Inputs: the listeners, the core task's input sender.
//! Outputs: [`Input::StreamOpened`] (with the connection's send queue and its gate handle, which
//! the core task uses to mark it authenticated when an allocation is made on it),
//! [`Input::StreamFrame`], [`Input::StreamClosed`] on EOF, error, expiry or an unframeable stream.
//! Call order: [`spawn_gate`] once at start; each admitted connection runs [`serve`] in its own
//! task.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use conn_limits::io::gate::{CloseCause, Conn, Gate, GateOptions, GateStats};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, trace};
use turn_core::{
    stun::{frame_len, Frame},
    FiveTuple, Transport,
};

use super::Input;
use crate::pii::Pii;

/// Frames queued towards one connection; beyond it transmits are dropped and counted, so one
/// slow client cannot hold memory or the core.
pub const STREAM_QUEUE: usize = 256;
/// Time a TLS client gets to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffer space made available per read; an idle connection holds this and nothing more.
const READ_CHUNK: usize = 4 * 1024;

/// Starts the gate over the TCP listeners (`tcp`) and the TLS listeners (`tls`, with their
/// acceptor); returns its counters.
#[allow(clippy::disallowed_methods)] // io shell: the gate task and one task per client connection
pub fn spawn_gate(
    tcp: Vec<TcpListener>,
    tls: Option<(Vec<TcpListener>, TlsAcceptor)>,
    inputs: mpsc::Sender<Input>,
    limits: crate::config::Limits,
) -> Arc<GateStats> {
    let n_tcp = tcp.len();
    let mut listeners = tcp;
    let acceptor = tls.map(|(l, a)| {
        listeners.extend(l);
        a
    });
    let opts = GateOptions {
        name: "turn",
        // Client addresses are personal data: shown only with --log-pii.
        show_key: |k: &std::net::IpAddr| Pii(k).to_string(),
    };
    let gate = Gate::new(opts, listeners, limits.streams);
    let stats = gate.stats();
    let max_frame = limits.max_frame;
    tokio::spawn(gate.run(move |i, (stream, peer): (TcpStream, SocketAddr), mut conn| {
        let inputs = inputs.clone();
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let tls = if i >= n_tcp { acceptor.clone() } else { None };
        let tuple = FiveTuple {
            transport: if tls.is_some() {
                Transport::Tls
            } else {
                Transport::Tcp
            },
            client: peer,
            server: local,
        };
        match tls {
            None => {
                tokio::spawn(serve(stream, tuple, inputs, conn, max_frame));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let hs = tokio::select! {
                        r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
                        () = conn.expired() => return,
                    };
                    match hs {
                        Ok(Ok(tls_stream)) => serve(tls_stream, tuple, inputs, conn, max_frame).await,
                        Ok(Err(e)) => {
                            conn.set_close_cause(CloseCause::Handshake);
                            debug!(client = %Pii(peer), error = %e, "TLS handshake failed");
                            let _ = inputs.try_send(Input::StreamRefused { tls_failed: true });
                        }
                        Err(_) => {
                            conn.set_close_cause(CloseCause::Handshake);
                            debug!(client = %Pii(peer), "TLS handshake timed out");
                            let _ = inputs.try_send(Input::StreamRefused { tls_failed: true });
                        }
                    }
                });
            }
        }
    }));
    stats
}

/// Runs one connection: registers it with the core, reads frames, writes queued bytes, and
/// reports the close.
#[allow(clippy::disallowed_methods)] // io shell: the writer half runs in its own task
async fn serve<S>(
    stream: S,
    tuple: FiveTuple,
    inputs: mpsc::Sender<Input>,
    mut conn: Conn,
    max_frame: usize,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    if inputs
        .send(Input::StreamOpened {
            tuple,
            tx,
            conn: conn.handle(),
        })
        .await
        .is_err()
    {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    // Grows only as far as one frame of at most `max_frame` bytes plus one read.
    let mut buf: Vec<u8> = Vec::new();
    'read: loop {
        buf.reserve(READ_CHUNK);
        let n = tokio::select! {
            n = rd.read_buf(&mut buf) => n,
            () = conn.expired() => break,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            let len = match frame_len(&buf) {
                Frame::Incomplete => break,
                Frame::Stun(len) | Frame::ChannelData(len) => len,
                Frame::Invalid => {
                    conn.set_close_cause(CloseCause::Malformed);
                    debug!(client = %Pii(tuple.client), "unframeable stream, closing");
                    break 'read;
                }
            };
            if len > max_frame {
                conn.set_close_cause(CloseCause::TooLarge);
                debug!(client = %Pii(tuple.client), len, max_frame, "frame over limits.max_frame_bytes, closing");
                break 'read;
            }
            if buf.len() < len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..len).collect();
            trace!(len, "stream frame");
            if inputs
                .send(Input::StreamFrame {
                    tuple,
                    bytes: frame,
                })
                .await
                .is_err()
            {
                break 'read;
            }
        }
    }
    drop(rd);
    let _ = inputs.send(Input::StreamClosed { tuple }).await;
    // The core drops its sender on StreamClosed, which ends the writer after it flushed.
    let _ = writer.await;
    // Only now is the socket closed: the gate's slot is freed last.
    drop(conn);
}

/// Binds `addr` for TCP (also used for TLS).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
