//! fork-agent command line: the daemon (`run`), config validation and the control CLI.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use control_api::{
    BlockingClient, ClientError, FlowSpec, ForkSpec, Op, StreamServiceShow, StreamSpec,
};
use daemon_ops::{cli_docs::GenerateDocsArgs, logging::LogArgs};
use fork_agent::config::{
    Config, ForkPathSetting, DEFAULT_CONFIG, DEFAULT_CONTROL_SOCKET, FORK_PATH_ENV,
};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "fork-agent",
    version,
    about = "xdpfork fork-agent: kernel media relay and audio forking"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (needs CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW, CAP_PERFMON).
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Will xdpfork run on this kernel, and how? Loads every program variant, pins maps, attaches
    /// native XDP and forks one packet in a private network namespace; exits non-zero (with the
    /// verifier's last lines) when the product cannot run.
    CheckKernel {
        /// The fork path to judge: auto, metadata or headroom (default: $XDPFORK_FORK_PATH, else
        /// auto).
        #[arg(long, value_parser = ForkPathSetting::parse)]
        fork_path: Option<ForkPathSetting>,
        /// The agent's `dataplane.pin_dir`: whether the maps pinned there fit this build.
        #[arg(long, default_value = fork_common::PIN_DIR_DEFAULT)]
        pin_dir: PathBuf,
    },
    /// Validate a config file and exit.
    CheckConfig {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Talk to a running agent over its control socket.
    Ctl {
        /// The agent's control socket (`[control] socket` of its config).
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        /// Print the raw JSON response.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        cmd: CtlCmd,
    },
    /// Remove every pinned map and link (detaches the data plane; ends kernel relaying).
    Unpin {
        #[arg(long, default_value = fork_common::PIN_DIR_DEFAULT)]
        pin_dir: PathBuf,
        /// Also delete this fork veth (and its peer) if it exists, as a package removal does.
        #[arg(long)]
        fork_interface: Option<String>,
    },
    /// Write man pages and shell completions (for `cargo xtask install` and packaging).
    #[command(hide = true)]
    GenerateDocs(GenerateDocsArgs),
}

#[derive(Subcommand)]
enum CtlCmd {
    /// show flows | counters | forks | stream-service …
    Show {
        /// flows, counters, forks, or stream-service
        what: String,
        /// For stream-service: callid ID | connection | connection-history |
        /// connection-id N | server HOST:PORT | statistics
        args: Vec<String>,
    },
    /// clear stream-service connection-id N forced | clear stream-service statistics
    Clear {
        /// stream-service
        what: String,
        /// connection-id N forced | statistics
        args: Vec<String>,
    },
    /// Pause a fork's streams (reason: hold, codec_change, request).
    ForkPause {
        #[arg(long)]
        guid: String,
        #[arg(long, default_value = "request")]
        reason: String,
    },
    /// Resume a paused fork, optionally in another G.711 law.
    ForkResume {
        #[arg(long)]
        guid: String,
        #[arg(long)]
        codec: Option<String>,
    },
    /// Replace a fork's metadata (a JSON object).
    ForkUpdate {
        #[arg(long)]
        guid: String,
        #[arg(long)]
        metadata: String,
    },
    /// Print fork status events as they happen (Ctrl-C to stop).
    Subscribe,
    /// Install a relay flow in the kernel.
    FlowAdd {
        #[arg(long)]
        local: SocketAddr,
        #[arg(long)]
        src: SocketAddr,
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        expect: Option<SocketAddr>,
        #[arg(long)]
        rtcp: bool,
        #[arg(long)]
        dtmf_pt: Option<u8>,
    },
    /// Remove a relay flow.
    FlowDel {
        #[arg(long)]
        local: SocketAddr,
    },
    /// Start forking a call: one or two flows, caller and callee.
    ForkStart {
        #[arg(long)]
        guid: String,
        #[arg(long)]
        server: String,
        #[arg(long, default_value = "PCMU")]
        codec: String,
        #[arg(long)]
        caller_flow: Option<SocketAddr>,
        #[arg(long)]
        callee_flow: Option<SocketAddr>,
        #[arg(long, default_value = "")]
        call_id: String,
    },
    /// Stop forking a call.
    ForkStop {
        #[arg(long)]
        guid: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            // The whole chain (with a verifier's last lines) on stderr, which the journal keeps:
            // never just "Error: ".
            eprintln!("fork-agent: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<std::process::ExitCode> {
    match cli.cmd {
        Cmd::Run { config, log } => {
            let log = log.init("info")?;
            let (cfg, text) = Config::load_text(&config)?;
            let mut reloader = daemon_ops::reload::Reloader::new(
                "fork-agent",
                config.clone(),
                text,
                &["speech_server", "destinations"],
                log,
            );
            reloader.apply_initial_log(&cfg.log);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(fork_agent::io::agent::run(cfg, reloader))?;
        }
        Cmd::CheckKernel { fork_path, pin_dir } => {
            let setting = match (fork_path, std::env::var(FORK_PATH_ENV)) {
                (Some(s), _) => s,
                (None, Ok(v)) => ForkPathSetting::parse(&v)
                    .map_err(|e| anyhow::anyhow!("{FORK_PATH_ENV}: {e}"))?,
                (None, Err(_)) => ForkPathSetting::Auto,
            };
            let report = fork_agent::io::check_kernel::run(setting, &pin_dir);
            println!("{report}");
            if !report.runs() {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Cmd::CheckConfig { config } => {
            Config::load(&config)?;
            println!("{}: ok", config.display());
        }
        Cmd::Ctl { socket, json, cmd } => ctl(&socket, json, cmd)?,
        Cmd::Unpin {
            pin_dir,
            fork_interface,
        } => {
            fork_agent::io::ebpf::unpin_all(&pin_dir)?;
            if let Some(name) = fork_interface {
                // Over netlink, like everything fork-agent does to links: no `ip` needed.
                if fork_agent::io::netdev::ifindex(&name).is_ok() {
                    fork_agent::io::netdev::delete_link(&name)?;
                }
            }
        }
        Cmd::GenerateDocs(args) => {
            daemon_ops::cli_docs::write(Cli::command(), &args.out_dir)?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn ctl(socket: &std::path::Path, json: bool, cmd: CtlCmd) -> Result<()> {
    let mut table_kind = TableKind::Generic;
    let mut subscribe = false;
    let op = match cmd {
        CtlCmd::Show { what, args } => match what.as_str() {
            "flows" => Op::ShowFlows,
            "counters" => Op::ShowCounters,
            "forks" => Op::ShowForks,
            "stream-service" => {
                let (op, kind) = show_stream_service(&args)?;
                table_kind = kind;
                op
            }
            other => {
                bail!("unknown `show {other}`: use flows, counters, forks or stream-service")
            }
        },
        CtlCmd::Clear { what, args } => {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            match (what.as_str(), a.as_slice()) {
                ("stream-service", ["statistics"]) => Op::ClearStreamStatistics,
                ("stream-service", ["connection-id", n, rest @ ..]) => Op::ClearStreamConnection {
                    id: n.parse().with_context(|| format!("connection id `{n}` is not a number"))?,
                    forced: rest == ["forced"],
                },
                _ => bail!(
                    "use `clear stream-service connection-id N forced` or `clear stream-service statistics`"
                ),
            }
        }
        CtlCmd::ForkPause { guid, reason } => Op::ForkPause {
            call_guid: guid,
            reason: serde_json::from_value(Value::String(reason.clone())).with_context(|| {
                format!("pause reason `{reason}`: use hold, codec_change or request")
            })?,
        },
        CtlCmd::ForkResume { guid, codec } => Op::ForkResume {
            call_guid: guid,
            codec: match codec {
                Some(c) => Some(
                    speech_proto::Codec::from_name(&c)
                        .with_context(|| format!("Codec is not supported: {c} (PCMU or PCMA)"))?,
                ),
                None => None,
            },
        },
        CtlCmd::ForkUpdate { guid, metadata } => Op::ForkUpdate {
            call_guid: guid,
            metadata: serde_json::from_str(&metadata)
                .context("--metadata must be a JSON object")?,
        },
        CtlCmd::Subscribe => {
            subscribe = true;
            Op::Subscribe
        }
        CtlCmd::FlowAdd {
            local,
            src,
            dst,
            expect,
            rtcp,
            dtmf_pt,
        } => Op::FlowAdd {
            flow: FlowSpec {
                local,
                src,
                dst,
                expect,
                rtcp,
                payload_types: vec![0, 8],
                dtmf_pt,
                sink: false,
            },
        },
        CtlCmd::FlowDel { local } => Op::FlowDel { local },
        CtlCmd::ForkStart {
            guid,
            server,
            codec,
            caller_flow,
            callee_flow,
            call_id,
        } => {
            let codec = speech_proto::Codec::from_name(&codec)
                .with_context(|| format!("Codec is not supported: {codec} (PCMU or PCMA)"))?;
            let mut streams = Vec::new();
            if let Some(flow) = caller_flow {
                streams.push(StreamSpec {
                    channel: speech_proto::Channel::Caller,
                    flow,
                });
            }
            if let Some(flow) = callee_flow {
                streams.push(StreamSpec {
                    channel: speech_proto::Channel::Callee,
                    flow,
                });
            }
            Op::ForkStart {
                fork: ForkSpec {
                    destination: None,
                    call_guid: guid,
                    call_id,
                    from: String::new(),
                    to: String::new(),
                    server,
                    codec,
                    ptime_ms: 20,
                    metadata: Default::default(),
                    streams,
                    return_audio: None,
                },
            }
        }
        CtlCmd::ForkStop { guid } => Op::ForkStop {
            call_guid: guid,
            reason: speech_proto::StopReason::Request,
        },
    };
    let mut client = BlockingClient::connect(socket)?;
    let data = client.call(&op)?.to_value();
    if subscribe {
        // Event lines follow until the agent goes away.
        loop {
            match client.next_event(Duration::from_secs(3600)) {
                Ok(Some(ev)) => println!("{}", ev.to_line()),
                Ok(None) => {}
                Err(ClientError::Closed) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
    } else {
        match table_kind {
            TableKind::Generic => print_table(&data),
            kind => print!("{}", render_stream_service(kind, &data)),
        }
    }
    Ok(())
}

/// How `ctl show` prints the answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TableKind {
    Generic,
    Calls,
    Connections,
    ConnectionDetail,
    History,
    Statistics,
}

fn show_stream_service(args: &[String]) -> Result<(Op, TableKind)> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (what, arg, kind) = match a.as_slice() {
        ["callid"] => (StreamServiceShow::Callid, None, TableKind::Calls),
        ["callid", id] => (StreamServiceShow::Callid, Some(*id), TableKind::Calls),
        ["connection"] => (StreamServiceShow::Connection, None, TableKind::Connections),
        ["connection-history"] | ["connection", "history"] => (
            StreamServiceShow::ConnectionHistory,
            None,
            TableKind::History,
        ),
        ["connection-id", n] | ["connection", "id", n] => (
            StreamServiceShow::ConnectionId,
            Some(*n),
            TableKind::ConnectionDetail,
        ),
        ["server", hp] => (StreamServiceShow::Server, Some(*hp), TableKind::Connections),
        ["statistics"] => (StreamServiceShow::Statistics, None, TableKind::Statistics),
        _ => bail!(
            "use `show stream-service callid [ID] | connection | connection-history | \
             connection-id N | server HOST:PORT | statistics`"
        ),
    };
    Ok((
        Op::ShowStreamService {
            what,
            arg: arg.map(str::to_owned),
        },
        kind,
    ))
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Fixed-width table: header row, then one row per item.
fn table(rows: &[Value], cols: &[(&str, &str)]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|(k, _)| cell(&r.pointer(k).cloned().unwrap_or(Value::Null)))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (_, h))| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |vals: Vec<&str>| -> String {
        let parts: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        format!("{}\n", parts.join("  ").trim_end())
    };
    out += &line(cols.iter().map(|(_, h)| *h).collect());
    for r in &cells {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

/// Human rendering of the stream-service answers, in the spirit of CUBE's show output.
fn render_stream_service(kind: TableKind, data: &Value) -> String {
    let rows = data.as_array().cloned().unwrap_or_default();
    match kind {
        TableKind::Calls => {
            let mut out = String::new();
            for c in &rows {
                out += &format!(
                    "Call GUID: {}\nCall-ID: {}\nServer: {}\nConnection: {}\nState: {}{}\n",
                    cell(&c["call_guid"]),
                    cell(&c["call_id"]),
                    cell(&c["server"]),
                    cell(&c["connection"]),
                    cell(&c["state"]),
                    c["error"]
                        .as_str()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default(),
                );
                let streams = c["streams"].as_array().cloned().unwrap_or_default();
                out += &table(
                    &streams,
                    &[
                        ("/stream_id", "Stream"),
                        ("/channel", "Channel"),
                        ("/codec", "Codec"),
                        ("/state", "State"),
                        ("/frames", "Frames"),
                        ("/bytes", "Bytes"),
                        ("/dropped", "Dropped"),
                    ],
                );
                out += "\n";
            }
            if rows.is_empty() {
                out += "no forks\n";
            }
            out
        }
        TableKind::Connections => table(
            &rows,
            &[
                ("/id", "Id"),
                ("/server", "Server"),
                ("/server_address", "Address"),
                ("/state", "State"),
                ("/calls", "Calls"),
                ("/info/local", "Local"),
                ("/info/tls_version", "TLS"),
                ("/frames_sent", "Frames"),
                ("/audio_dropped", "Dropped"),
            ],
        ),
        TableKind::ConnectionDetail => {
            let i = &data["info"];
            format!(
                "Id: {}\nTotal session count: {}\nActive session count: {}\nSecure: {}\n\
                 TLS Version: {}\nCipher Suite: {}\nServer: {} {}\nLocal Address: {}\n\
                 Peer Address: {}\nState: {}\nConnected at (unix): {}\nFrames sent: {}\n\
                 Bytes sent: {}\nAudio dropped: {}\nCalls: {}\n",
                cell(&data["id"]),
                cell(&data["calls_total"]),
                cell(&data["calls"]),
                if i["tls_version"].is_string() {
                    "Yes"
                } else {
                    "No"
                },
                cell(&i["tls_version"]),
                cell(&i["cipher_suite"]),
                cell(&data["server"]),
                cell(&data["server_address"]),
                cell(&i["local"]),
                cell(&i["peer"]),
                cell(&data["state"]),
                cell(&i["connected_at"]),
                cell(&data["frames_sent"]),
                cell(&data["bytes_sent"]),
                cell(&data["audio_dropped"]),
                data["call_guids"]
                    .as_array()
                    .map(|a| a.iter().map(cell).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default(),
            )
        }
        TableKind::History => table(
            &rows,
            &[
                ("/id", "Id"),
                ("/server", "Server"),
                ("/connected_at", "Connected"),
                ("/closed_at", "Closed"),
                ("/calls", "Calls"),
                ("/reason", "Reason"),
            ],
        ),
        TableKind::Statistics => {
            let mut out = format!(
                "Forks: {}  Streams: {}  Connections: {} ({} open)\n",
                cell(&data["forks"]),
                cell(&data["streams"]),
                cell(&data["connections"]),
                cell(&data["connections_open"]),
            );
            for (k, label) in [
                ("tcp_failures", "TCP connection failures"),
                ("http_failures", "HTTP connection failures"),
                ("remote_ws_closures", "Remote WebSocket closures"),
                ("tcp_closures", "TCP closures"),
                ("protocol_errors", "speech protocol errors"),
            ] {
                out += &format!("{:>8} {label}\n", cell(&data["alarms"][k]));
            }
            if let Some(m) = data["media"].as_object() {
                for (k, v) in m {
                    out += &format!("{k}: {}\n", cell(v));
                }
            }
            let servers: Vec<Value> = data["servers"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(n, v)| {
                            let mut v = v.clone();
                            v["name"] = Value::String(n.clone());
                            v
                        })
                        .collect()
                })
                .unwrap_or_default();
            out += &table(
                &servers,
                &[
                    ("/name", "Server"),
                    ("/address", "Address"),
                    ("/calls", "Calls"),
                    ("/connects", "Connects"),
                    ("/connect_failures", "ConnFail"),
                    ("/remote_closes", "RemoteClose"),
                    ("/transport_closes", "TcpClose"),
                    ("/idle_closes", "Idle"),
                    ("/protocol_errors", "ProtoErr"),
                    ("/audio_dropped", "Dropped"),
                ],
            );
            out
        }
        TableKind::Generic => String::new(),
    }
}

/// Human view: one row per array element, `key=value` pairs for objects.
fn print_table(v: &Value) {
    match v {
        Value::Array(rows) => {
            for r in rows {
                print_table(r);
            }
        }
        Value::Object(m) => {
            let line: Vec<String> = m
                .iter()
                .map(|(k, v)| match v {
                    Value::Object(_) | Value::Array(_) => format!("{k}={v}"),
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            println!("{}", line.join("  "));
        }
        Value::Null => println!("ok"),
        other => println!("{other}"),
    }
}
