//! `sip-agent run` runs the B2BUA; `sip-agent check-config` validates a configuration and
//! exits; `sip-agent ctl` asks a running agent (docs/sip-agent.md). `--config` defaults to
//! /etc/xdpfork/sip-agent.toml.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use daemon_ops::{cli_docs::GenerateDocsArgs, logging::LogArgs};
use sip_agent::config::{Settings, DEFAULT_ADMIN_SOCKET, DEFAULT_CONFIG};

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
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Unix socket answering `sip-agent ctl` (call and security counters); overrides the
        /// config's `[admin] socket`.
        #[arg(long)]
        admin_socket: Option<PathBuf>,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Ask a running agent over its admin socket: `show calls`, `show security` or `metrics`.
    Ctl {
        /// The agent's admin socket (`[admin] socket` of its config, or its `--admin-socket`).
        #[arg(long, default_value = DEFAULT_ADMIN_SOCKET)]
        socket: PathBuf,
        /// Command words, e.g. `show calls`.
        #[arg(required = true)]
        command: Vec<String>,
    },
    /// Validate a configuration file and print a summary.
    CheckConfig {
        /// TOML configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Write man pages and shell completions (for `cargo xtask install` and packaging).
    #[command(hide = true)]
    GenerateDocs(GenerateDocsArgs),
}

fn load(path: &Path) -> Result<Settings> {
    load_text(path).map(|(s, _)| s)
}

/// [`load`], with the text read (what a SIGHUP compares the file with).
fn load_text(path: &Path) -> Result<(Settings, String)> {
    Ok(daemon_ops::config_file::load(
        path,
        "sip-agent",
        Settings::from_toml,
    )?)
}

fn main() -> Result<()> {
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
        Cmd::GenerateDocs(args) => {
            daemon_ops::cli_docs::write(Cli::command(), &args.out_dir)?;
            Ok(())
        }
        Cmd::Run {
            config,
            admin_socket,
            log,
        } => {
            let log = log.init("info")?;
            let (s, text) = load_text(&config)?;
            let mut reloader =
                daemon_ops::reload::Reloader::new("sip-agent", config, text, &[], log);
            reloader.apply_initial_log(&s.log);
            let admin_socket = admin_socket.or_else(|| s.admin_socket.clone());
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(sip_agent::io::run(s, admin_socket, reloader))
        }
    }
}
