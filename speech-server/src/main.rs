//! speech-server: reference server for the `xdpfork.speech.v1` protocol (docs/speech-protocol.md).
//!
//! It accepts WebSocket connections (plain or TLS), checks the subprotocol and an optional
//! bearer token during the upgrade, validates every frame with `speech_proto::Validator`,
//! records each stream to `<out-dir>/<call_guid>-<channel>-<stream_id>.{wav,g711}` and on exit
//! prints and writes a JSON summary. Misbehaviour switches let tests exercise the client's
//! handling of stalled, closing, aborting and refusing servers.
//!
//! Call order: parse args → bind → one task per accepted connection (`conn::serve`) → wait for
//! SIGINT/SIGTERM, `--duration-secs` or `--exit-after-stops` → summary → exit.
#![forbid(unsafe_code)]

mod conn;
mod registry;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use conn::{Ctx, Misbehave};
use registry::Registry;

/// Reference speech server for xdpfork (WebSocket subprotocol xdpfork.speech.v1).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port; the bound address
    /// is printed as `listening on ADDR` on stdout).
    #[arg(long)]
    listen: String,
    /// PEM certificate chain: serve wss:// (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require `Authorization: Bearer TOKEN` on the upgrade request (else HTTP 401).
    #[arg(long)]
    token: Option<String>,
    /// Directory for the per-stream .wav and .g711 files (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
    /// Also write the JSON summary to this file on exit.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Exit after this many accepted `stop` messages (all connections together).
    #[arg(long)]
    exit_after_stops: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Test switch: stop reading a connection after N binary frames (socket stays open).
    #[arg(long)]
    stall_after_frames: Option<u64>,
    /// Test switch: close a connection with 1001 (going away) after N binary frames.
    #[arg(long)]
    close_after_frames: Option<u64>,
    /// Test switch: drop a connection's TCP socket without a close frame after N binary frames.
    #[arg(long)]
    abort_after_frames: Option<u64>,
    /// Test switch: answer every upgrade request with this HTTP status (e.g. 503).
    #[arg(long, value_parser = clap::value_parser!(u16).range(100..=599))]
    reject_handshake: Option<u16>,
    /// Test switch: right after each upgrade, send one frame a server may not send: `binary`,
    /// `text` (not JSON), `message` (a client-only message type), `oversize` (an `error` longer
    /// than the protocol allows), `bad-close` (Close with the reserved code 1005), `bad-frame`
    /// (reserved opcode), or `cycle` (each in turn, one kind per connection).
    #[arg(long, value_enum)]
    send_garbage: Option<conn::GarbageArg>,
    /// Require a TLS client certificate signed by a CA in this PEM file (wss only).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    #[command(flatten)]
    log: daemon_ops::logging::LogArgs,
}

fn tls_acceptor(
    cert: &PathBuf,
    key: &PathBuf,
    client_ca: Option<&PathBuf>,
) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read --tls-cert {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "--tls-cert {} is not a PEM certificate chain",
                cert.display()
            )
        })?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "cannot read a PEM private key from --tls-key {}",
            key.display()
        )
    })?;
    // Pick the provider explicitly: if several rustls providers are compiled into the
    // workspace, the process-wide default is ambiguous and `ServerConfig::builder()` panics.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read --tls-client-ca {}", ca.display()))?
            {
                let c = c.with_context(|| {
                    format!("--tls-client-ca {} is not PEM certificates", ca.display())
                })?;
                roots
                    .add(c)
                    .with_context(|| format!("bad CA certificate in {}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .context("building the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .context("certificate and key do not match or are unsupported")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// SIGINT and SIGTERM streams. Installed before the listen line is printed, so a test that
/// signals right after connecting never hits the default (kill) disposition.
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?,
        })
    }
}

async fn wait_for_exit(ctx: &Ctx, sig: &mut Signals, duration: Option<u64>) -> &'static str {
    let timer = async {
        match duration {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = sig.int.recv() => "SIGINT",
        _ = sig.term.recv() => "SIGTERM",
        _ = timer => "--duration-secs elapsed",
        _ = ctx.shutdown.notified() => "--exit-after-stops reached",
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init("info")?;

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls_acceptor(c, k, args.tls_client_ca.as_ref())?),
        _ => None,
    };
    let ctx = Arc::new(Ctx {
        token: args.token.clone(),
        misbehave: Misbehave {
            stall_after_frames: args.stall_after_frames,
            close_after_frames: args.close_after_frames,
            abort_after_frames: args.abort_after_frames,
            reject_handshake: args.reject_handshake,
            send_garbage: args.send_garbage,
        },
        registry: Mutex::new(Registry::new(&args.out_dir)?),
        exit_after_stops: args.exit_after_stops,
        shutdown: Notify::new(),
    });
    let listener = TcpListener::bind(&args.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (address in use? try port 0)",
            args.listen
        )
    })?;
    let local = listener.local_addr().context("listener address")?;
    let mut signals = Signals::install()?;
    // Tests parse this line to learn the port when --listen ends in :0.
    println!("listening on {local}");
    tracing::info!(%local, tls = tls.is_some(), "speech-server listening");

    let accept_ctx = Arc::clone(&ctx);
    #[allow(clippy::disallowed_methods)] // main.rs owns task spawning (clippy.toml guard)
    let accept_loop = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Audio frames are small and latency matters more than throughput.
            let _ = tcp.set_nodelay(true);
            let ctx = Arc::clone(&accept_ctx);
            let tls = tls.clone();
            #[allow(clippy::disallowed_methods)] // one task per connection, spawned here
            tokio::spawn(async move {
                match tls {
                    None => conn::serve(tcp, peer, false, ctx).await,
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(stream) => conn::serve(stream, peer, true, ctx).await,
                        Err(e) => {
                            tracing::info!(%peer, error = %e, "TLS handshake failed");
                            let mut reg = ctx.registry();
                            let id = reg.open_conn(peer, true);
                            reg.close_conn(id, format!("TLS handshake failed: {e}"));
                        }
                    },
                }
            });
        }
    });

    let why = wait_for_exit(&ctx, &mut signals, args.duration_secs).await;
    accept_loop.abort();
    tracing::info!(reason = why, "exiting");
    let summary = {
        let mut reg = ctx.registry();
        let mut s = reg.summary();
        s["exit_reason"] = serde_json::Value::from(why);
        s
    };
    let text = serde_json::to_string_pretty(&summary).context("summary serialization")?;
    println!("{text}");
    if let Some(path) = &args.summary {
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("cannot write --summary {}", path.display()))?;
    }
    Ok(())
}
