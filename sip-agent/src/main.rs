//! `sip-agent run --config FILE` runs the B2BUA; `sip-agent check-config --config FILE`
//! validates a configuration and exits (docs/sip-agent.md).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sip_agent::config::Settings;

#[derive(Parser)]
#[command(
    name = "sip-agent",
    version,
    about = "SIP B2BUA that anchors media and forks calls to speech servers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent.
    Run {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Unix socket answering `sip-agent ctl` (call and security counters); off when absent.
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Ask a running agent over its admin socket: `show calls`, `show security` or `metrics`.
    Ctl {
        /// The agent's `--admin-socket`.
        #[arg(long)]
        socket: PathBuf,
        /// Command words, e.g. `show calls`.
        #[arg(required = true)]
        command: Vec<String>,
    },
    /// Validate a configuration file and print a summary.
    CheckConfig {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn load(path: &PathBuf) -> Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (is the path right?)", path.display()))?;
    Settings::from_toml(&text)
        .with_context(|| format!("{} is not a valid sip-agent config", path.display()))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().cmd {
        Cmd::CheckConfig { config } => {
            let s = load(&config)?;
            let max = match s.core.max_call_duration {
                Some(d) => format!("{} s", d.as_secs()),
                None => "off".into(),
            };
            let sec = &s.core.security;
            println!(
                "{}: ok ({} listeners, {} routes, media {}:{}-{}, fork-agent {}, min-SE {} s, \
                 max call duration {max}, {} controller addresses, {} controller TLS names, \
                 {} trusted proxies)",
                config.display(),
                s.listen.len(),
                s.core.routes.len(),
                s.core.media_ip,
                s.media_ports.0,
                s.media_ports.1,
                s.control_socket.display(),
                s.core.min_se.as_secs(),
                sec.controllers.len(),
                sec.controller_tls_names.len(),
                sec.trusted_proxies.len(),
            );
            Ok(())
        }
        Cmd::Ctl { socket, command } => {
            use std::io::{Read, Write};
            let mut c = std::os::unix::net::UnixStream::connect(&socket)
                .with_context(|| format!("connecting to {}", socket.display()))?;
            c.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            c.write_all(format!("{}\n", command.join(" ")).as_bytes())?;
            let mut out = String::new();
            c.read_to_string(&mut out)?;
            print!("{out}");
            if out.starts_with("error:") {
                anyhow::bail!("the agent refused the command");
            }
            Ok(())
        }
        Cmd::Run {
            config,
            admin_socket,
        } => {
            let s = load(&config)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(sip_agent::io::run(s, admin_socket))
        }
    }
}
