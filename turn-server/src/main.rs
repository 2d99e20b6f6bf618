//! turn-server command line: the daemon (`run`), config validation (`check-config`), the status
//! view (`status`), the users file (`user add|del|list`) and TURN REST credentials
//! (`credential`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use daemon_ops::{cli_docs::GenerateDocsArgs, logging::LogArgs};
use turn_core::credentials::EntryKind;
use turn_server::{
    admin::{self, Added},
    config::{AuthSettings, Config, DEFAULT_CONFIG},
    io::control,
};

#[derive(Parser)]
#[command(
    name = "turn-server",
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
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print client and peer addresses and usernames in debug logs.
        #[arg(long)]
        log_pii: bool,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Validate a config file (and the users, secret and TLS files it names) and exit.
    CheckConfig {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show active allocations, relays by client transport, traffic and counters.
    Status {
        /// The server's control socket (`[control] socket` of its config).
        #[arg(long, default_value = turn_server::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Add, remove or list the static users of the config's users file (auth.users_file).
    ///
    /// Entries are stored as keys, MD5(user:realm:password), never as passwords. A running
    /// server applies a change on SIGHUP (`systemctl reload turn-server`).
    User {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Print a TURN REST API credential for USER, valid for --ttl seconds, signed with the
    /// config's shared secret (auth.rest_secret_file): username `EXPIRY:USER`, password
    /// base64(HMAC-SHA1(secret, username)), as coturn's use-auth-secret.
    Credential {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The user the credential is for (per-user quotas count against it).
        #[arg(long)]
        user: String,
        /// Seconds the credential stays valid.
        #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
        ttl: u64,
        /// Print `{"username", "password", "ttl"}` (the TURN REST API response fields).
        #[arg(long)]
        json: bool,
    },
    /// Write man pages and shell completions (for `cargo xtask install` and packaging).
    #[command(hide = true)]
    GenerateDocs(GenerateDocsArgs),
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add USER, or replace its key. Without --password-stdin a random password is generated
    /// and printed once.
    Add {
        user: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove USER.
    Del { user: String },
    /// List the users and whether each is stored as a key or a plain password.
    List,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            config,
            log_pii,
            log,
        } => {
            let mut log = log.init("info")?;
            turn_server::pii::set_enabled(log_pii);
            let cfg = Config::load(&config)?;
            if let Err(e) = log.apply(&cfg.log) {
                tracing::warn!("{e}");
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(turn_server::io::run(cfg, &config, log))
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
        Cmd::User { config, cmd } => user(&config, cmd),
        Cmd::Credential {
            config,
            user,
            ttl,
            json,
        } => {
            let settings = AuthSettings::load(&config)?;
            // The expiry is wall-clock time, as the server compares it (docs/turn.md).
            #[allow(clippy::disallowed_methods)]
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("the system clock is before 1970")?
                .as_secs();
            let c = admin::credential(&config, &settings, &user, ttl, now)?;
            if json {
                println!("{}", serde_json::to_string(&c)?);
            } else {
                println!("username: {}\npassword: {}", c.username, c.password);
            }
            Ok(())
        }
        Cmd::GenerateDocs(args) => {
            daemon_ops::cli_docs::write(Cli::command(), &args.out_dir)?;
            Ok(())
        }
    }
}

fn user(config: &std::path::Path, cmd: UserCmd) -> Result<()> {
    let settings = AuthSettings::load(config)?;
    match cmd {
        UserCmd::Add {
            user,
            password_stdin,
        } => {
            turn_core::credentials::check_username(&user)?;
            let (password, generated) = if password_stdin {
                (admin::read_password(std::io::stdin().lock())?, false)
            } else {
                // The one random draw of this command: a fresh password for the operator.
                #[allow(clippy::disallowed_methods)]
                let mut rng = rand::thread_rng();
                (admin::generate_password(&mut rng), true)
            };
            let added = admin::user_add(config, &settings, &user, &password)?;
            let file = settings.users_file.as_deref().unwrap_or(config);
            let verb = match added {
                Added::New => "added",
                Added::Replaced => "replaced the key of",
            };
            eprintln!(
                "{verb} {user} in {}; apply it with `systemctl reload turn-server` (SIGHUP)",
                file.display()
            );
            if generated {
                println!("password: {password}");
            }
        }
        UserCmd::Del { user } => {
            admin::user_del(config, &settings, &user)?;
            eprintln!("removed {user}; apply it with `systemctl reload turn-server` (SIGHUP)");
        }
        UserCmd::List => {
            for (name, kind) in admin::user_list(config, &settings)? {
                let kind = match kind {
                    EntryKind::Key => "key",
                    EntryKind::Password => "password",
                };
                println!("{name}\t{kind}");
            }
        }
    }
    Ok(())
}
