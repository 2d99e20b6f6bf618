//! turn-server command line: the daemon (`run`), config validation (`check-config`) and the
//! status view (`status`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use turn_server::{config::Config, io::control};

#[derive(Parser)]
#[command(
    version,
    about = "xdpfork turn-server: STUN/TURN (RFC 8489/8656) for WebRTC clients"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (binding ports below 1024 needs CAP_NET_BIND_SERVICE).
    Run {
        #[arg(long, default_value = "/etc/xdpfork/turn-server.toml")]
        config: PathBuf,
        /// Print client and peer addresses and usernames in debug logs.
        #[arg(long)]
        log_pii: bool,
    },
    /// Validate a config file (and the users, secret and TLS files it names) and exit.
    CheckConfig {
        #[arg(long, default_value = "/etc/xdpfork/turn-server.toml")]
        config: PathBuf,
    },
    /// Show active allocations, relays by client transport, traffic and counters.
    Status {
        #[arg(long, default_value = turn_server::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { config, log_pii } => {
            init_tracing();
            turn_server::pii::set_enabled(log_pii);
            let cfg = Config::load(&config)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(turn_server::io::run(cfg))
        }
        Cmd::CheckConfig { config } => {
            Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Cmd::Status { socket, json } => {
            let report = control::query(&socket)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}
