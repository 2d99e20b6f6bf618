//! TCP and TLS client connections: accept, frame, forward.
//!
//! Role: accept connections on the TCP and TLS listen sockets, cut each byte stream into STUN
//! and ChannelData frames with turn-core's [`frame_len`] (RFC 8656 §12.5: ChannelData is padded
//! to 4 bytes on streams), and pass frames to the task that owns the core. Bytes the core wants
//! to send on a connection arrive on a bounded per-connection queue and are written in order.
//! Inputs: the listener, the core task's input sender.
//! Outputs: [`Input::StreamOpened`] (with the connection's send queue), [`Input::StreamFrame`],
//! [`Input::StreamClosed`] on EOF, error or an unframeable stream.
//! Call order: [`accept_loop`] runs per listen socket for the life of the server; each accepted
//! connection runs [`serve`] in its own task.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, trace, warn};
use turn_core::{
    stun::{frame_len, Frame},
    FiveTuple, Transport,
};

use super::Input;
use crate::pii::Pii;

/// Open TCP+TLS connections at most; further accepts are closed at once (and counted).
pub const MAX_STREAMS: usize = 16_384;
/// Frames queued towards one connection; beyond it transmits are dropped and counted, so one
/// slow client cannot hold memory or the core.
pub const STREAM_QUEUE: usize = 256;
/// Time a TLS client gets to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A STUN message is at most 20 + 65535 bytes; the buffer never needs to hold more than one
/// frame plus one read.
const READ_CHUNK: usize = 16 * 1024;

/// Shared count of open connections, for the limit and the status view.
#[derive(Debug, Clone, Default)]
pub struct StreamGauge(Arc<AtomicUsize>);

impl StreamGauge {
    /// Connections open now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Decrements the gauge when a connection task ends, however it ends.
struct GaugeGuard(StreamGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until the input channel closes (server shutdown).
#[allow(clippy::disallowed_methods)] // io shell: one task per client connection
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    inputs: mpsc::Sender<Input>,
    gauge: StreamGauge,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if inputs.is_closed() {
            return;
        }
        if gauge.0.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
            gauge.0.fetch_sub(1, Ordering::Relaxed);
            let _ = inputs.try_send(Input::StreamRefused { tls_failed: false });
            continue;
        }
        let guard = GaugeGuard(gauge.clone());
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let tuple = FiveTuple {
            transport,
            client: peer,
            server: local,
        };
        let inputs = inputs.clone();
        match tls.clone() {
            None => {
                tokio::spawn(async move {
                    let _guard = guard;
                    serve(stream, tuple, inputs).await;
                });
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let _guard = guard;
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls_stream)) => serve(tls_stream, tuple, inputs).await,
                        Ok(Err(e)) => {
                            debug!(client = %Pii(peer), error = %e, "TLS handshake failed");
                            let _ = inputs.try_send(Input::StreamRefused { tls_failed: true });
                        }
                        Err(_) => {
                            debug!(client = %Pii(peer), "TLS handshake timed out");
                            let _ = inputs.try_send(Input::StreamRefused { tls_failed: true });
                        }
                    }
                });
            }
        }
    }
}

/// Runs one connection: registers it with the core, reads frames, writes queued bytes, and
/// reports the close.
#[allow(clippy::disallowed_methods)] // io shell: the writer half runs in its own task
async fn serve<S>(stream: S, tuple: FiveTuple, inputs: mpsc::Sender<Input>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    if inputs
        .send(Input::StreamOpened { tuple, tx })
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
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    'read: loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let len = match frame_len(&buf) {
                Frame::Incomplete => break,
                Frame::Stun(len) | Frame::ChannelData(len) => len,
                Frame::Invalid => {
                    debug!(client = %Pii(tuple.client), "unframeable stream, closing");
                    break 'read;
                }
            };
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
    let _ = inputs.send(Input::StreamClosed { tuple }).await;
    // The core drops its sender on StreamClosed, which ends the writer after it flushed.
    let _ = writer.await;
}

/// Binds `addr` for TCP (also used for TLS).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
