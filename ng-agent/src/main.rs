//! `ng-agent run --config FILE` serves the ng protocol; `ng-agent check-config --config FILE`
//! validates a configuration and exits (docs/ng-agent.md).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ng_agent::config::Settings;

#[derive(Parser)]
#[command(
    name = "ng-agent",
    version,
    about = "rtpengine ng protocol for Kamailio/OpenSIPS: anchors plain-RTP calls in xdpfork's kernel relay and forks them to speech servers"
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
        .with_context(|| format!("{} is not a valid ng-agent config", path.display()))
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
            let names: Vec<&str> = s
                .engine
                .interfaces
                .iter()
                .map(|i| i.name.as_str())
                .collect();
            println!(
                "{}: ok (ng on {}, media ports {}-{}, interfaces {}, fork-agent {}, speech server {})",
                config.display(),
                s.listen,
                s.engine.ports.0,
                s.engine.ports.1,
                names.join(", "),
                s.control_socket.display(),
                s.engine.speech_server,
            );
            Ok(())
        }
        Cmd::Run { config } => {
            let s = load(&config)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(ng_agent::io::run(s))
        }
    }
}
