//! fork-agent command line: the daemon (`run`), config validation and the control CLI.
use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::PathBuf,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fork_agent::{
    config::Config,
    core::control_api::{FlowSpec, ForkSpec, Op, Request, StreamSpec, API_VERSION},
};
use serde_json::Value;

#[derive(Parser)]
#[command(
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
        #[arg(long, default_value = "/etc/xdpfork/fork-agent.toml")]
        config: PathBuf,
    },
    /// Validate a config file and exit.
    CheckConfig {
        #[arg(long, default_value = "/etc/xdpfork/fork-agent.toml")]
        config: PathBuf,
    },
    /// Talk to a running agent over its control socket.
    Ctl {
        #[arg(long, default_value = "/run/xdpfork/fork-agent.sock")]
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
    },
}

#[derive(Subcommand)]
enum CtlCmd {
    /// show flows | counters | forks
    Show { what: String },
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { config } => {
            init_tracing();
            let cfg = Config::load(&config)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(fork_agent::io::agent::run(cfg))
        }
        Cmd::CheckConfig { config } => {
            Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Cmd::Ctl { socket, json, cmd } => ctl(&socket, json, cmd),
        Cmd::Unpin { pin_dir } => fork_agent::io::ebpf::unpin_all(&pin_dir),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

fn ctl(socket: &PathBuf, json: bool, cmd: CtlCmd) -> Result<()> {
    let op = match cmd {
        CtlCmd::Show { what } => match what.as_str() {
            "flows" => Op::ShowFlows,
            "counters" => Op::ShowCounters,
            "forks" => Op::ShowForks,
            other => bail!("unknown `show {other}`: use flows, counters or forks"),
        },
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
                    call_guid: guid,
                    call_id,
                    from: String::new(),
                    to: String::new(),
                    server,
                    codec,
                    ptime_ms: 20,
                    metadata: Default::default(),
                    streams,
                },
            }
        }
        CtlCmd::ForkStop { guid } => Op::ForkStop { call_guid: guid },
    };
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to {} (is fork-agent running?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_string(&Request { v: API_VERSION, op })?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut resp = String::new();
    BufReader::new(&stream).read_line(&mut resp)?;
    let v: Value = serde_json::from_str(&resp).context("malformed response from the agent")?;
    if v.get("ok") != Some(&Value::Bool(true)) {
        bail!(
            "{}",
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("request failed")
        );
    }
    let data = v.get("data").cloned().unwrap_or(Value::Null);
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
    } else {
        print_table(&data);
    }
    Ok(())
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
