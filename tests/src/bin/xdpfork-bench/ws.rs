//! What the benchmarks' speech servers share: a thread that accepts fork-agent's WebSocket
//! connections, and the handshake that echoes the subprotocol (docs/speech-protocol.md §1).

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::WebSocketStream;

/// One thread with a current-thread tokio runtime: `prepare` runs first on it (inside the
/// runtime, so it may spawn tasks), then each connection accepted on `listener` until `stop`
/// is served by `serve` on a task of its own. `what` names the bench in errors.
pub fn spawn_acceptor<P, S, F>(
    what: &'static str,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    prepare: P,
    serve: S,
) -> JoinHandle<()>
where
    P: FnOnce() + Send + 'static,
    S: Fn(TcpStream) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("{what} bench: receiver runtime: {e}");
                return;
            }
        };
        rt.block_on(async move {
            prepare();
            let _ = listener.set_nonblocking(true);
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while !stop.load(Ordering::Relaxed) {
                let Ok(Ok((tcp, _))) =
                    tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
                else {
                    continue;
                };
                tokio::spawn(serve(tcp));
            }
        });
    })
}

/// The server side of fork-agent's WebSocket handshake, echoing the subprotocol.
pub async fn accept_speech(tcp: TcpStream) -> Option<WebSocketStream<TcpStream>> {
    // tungstenite's callback signature returns its (large) error response type.
    #[allow(clippy::result_large_err)]
    let cb = |_req: &Request, mut resp: Response| {
        if let Ok(v) = speech_proto::SUBPROTOCOL.parse() {
            resp.headers_mut().insert("Sec-WebSocket-Protocol", v);
        }
        Ok(resp)
    };
    tokio_tungstenite::accept_hdr_async(tcp, cb).await.ok()
}
