//! The Unix control socket behind `turn-server status`.
//!
//! Role: accept local connections, read one JSON request line ([`ControlRequest`]), ask the
//! core task through its bounded command channel, and write one JSON response line
//! ([`ControlResponse`]). The socket file is created mode 0600 by umask-independent chmod so
//! only root (or the service user) can read allocation details.
//! Inputs: connections on the socket. Outputs: [`Command`]s to the core task, response lines.
//! Call order: [`bind`] at start (fails early if the path is unusable), then [`serve`] in its
//! own task; [`query`] is the client side used by the CLI.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    net::UnixListener,
    sync::{mpsc, oneshot},
};
use tracing::debug;

use super::Command;
use crate::status::{ControlRequest, ControlResponse, StatusReport};

/// Longest request line accepted.
const MAX_REQUEST: usize = 4096;
/// Time a control client gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the control socket, replacing a stale file from an earlier run.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("control.socket: cannot create {}", dir.display()))?;
    }
    // A socket file left by a crashed run would make bind fail with EADDRINUSE.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "control.socket: {} is in use by a running turn-server",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("control.socket: cannot remove stale {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("control.socket: cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("control.socket: cannot chmod {}", path.display()))?;
    Ok(l)
}

/// Serves control clients until the core task is gone.
#[allow(clippy::disallowed_methods)] // io shell: one task per control client
pub async fn serve(listener: UnixListener, commands: mpsc::Sender<Command>) {
    // EMFILE and friends: pause (bounded, growing) instead of spinning on the failing accept.
    let mut backoff = conn_limits::AcceptBackoff::default();
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => {
                backoff.handle_success();
                conn
            }
            Err(e) => {
                let pause = backoff.handle_error(conn_limits::core::backoff::is_resource_error(&e));
                debug!(error = %e, pause_ms = pause.as_millis() as u64, "control accept failed");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if commands.is_closed() {
            return;
        }
        let commands = commands.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(conn, commands).await {
                debug!(error = %e, "control client failed");
            }
        });
    }
}

async fn answer(conn: tokio::net::UnixStream, commands: mpsc::Sender<Command>) -> Result<()> {
    let (rd, mut wr) = conn.into_split();
    let mut line = String::new();
    let mut rd = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(rd, MAX_REQUEST as u64));
    tokio::time::timeout(REQUEST_TIMEOUT, rd.read_line(&mut line))
        .await
        .context("request timed out")??;
    let resp = match serde_json::from_str::<ControlRequest>(line.trim()) {
        Ok(ControlRequest::Status) => {
            let (tx, rx) = oneshot::channel();
            commands
                .send(Command::Status(tx))
                .await
                .context("server is shutting down")?;
            ControlResponse {
                ok: true,
                data: Some(rx.await.context("server is shutting down")?),
                error: None,
            }
        }
        Err(e) => ControlResponse {
            ok: false,
            data: None,
            error: Some(format!("bad request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    wr.write_all(&out).await?;
    Ok(())
}

/// Client side: asks a running server for its status.
pub fn query(socket: &Path) -> Result<StatusReport> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to {} (is turn-server running? is --socket its control.socket? are you root?)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = serde_json::to_vec(&ControlRequest::Status)?;
    req.push(b'\n');
    s.write_all(&req)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let resp: ControlResponse =
        serde_json::from_str(&line).context("turn-server sent an unreadable response")?;
    match (resp.ok, resp.data) {
        (true, Some(d)) => Ok(d),
        _ => bail!(
            "turn-server refused the request: {}",
            resp.error.unwrap_or_default()
        ),
    }
}
