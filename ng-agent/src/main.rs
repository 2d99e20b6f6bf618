//! `ng-agent run --config FILE` serves the ng protocol; `ng-agent check-config --config FILE`
//! validates a configuration and exits (docs/ng-agent.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use daemon_ops::{cli_docs::GenerateDocsArgs, logging::LogArgs};
use ng_agent::config::Settings;

/// Where the packaged configuration lives.
const DEFAULT_CONFIG: &str = "/etc/xdpfork/ng-agent.toml";

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
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        log: LogArgs,
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
        "ng-agent",
        Settings::from_toml,
    )?)
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::GenerateDocs(args) => {
            daemon_ops::cli_docs::write(Cli::command(), &args.out_dir)?;
            Ok(())
        }
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
        Cmd::Run { config, log } => {
            let log = log.init("info")?;
            let (s, text) = load_text(&config)?;
            let mut reloader =
                daemon_ops::reload::Reloader::new("ng-agent", config, text, &[], log);
            reloader.apply_initial_log(&s.log);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(ng_agent::io::run(s, reloader))
        }
    }
}
