//! Upgrading fork-agent over maps a previous build pinned with another layout
//! (docs/maps.md "Upgrades and layout changes"). The old maps are made with bpftool, as the
//! build before inject mode (398455e) left them: `FlowAction` 104 bytes, `FlowStats` 104,
//! `TurnAction` 112 with the channel at offset 104.
//!
//! - Known older layout: the real fork-agent starts on those pins, migrates every entry (read
//!   back here through typed maps), removes the `-old` pins, and the kernel relays the call's
//!   packets per the migrated flow, its counters continuing from the migrated ones.
//! - Unknown layout: fork-agent exits non-zero naming the map and both layouts, and every pin is
//!   left as it was.

use std::{
    collections::BTreeSet,
    mem::size_of,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, MapInfo};
use fork_agent::core::{
    flows::relay_action,
    turn_offload::{channel_key, peer_key, ChannelSpec},
};
use fork_common::{
    addr_words, FlowAction, FlowKey, FlowStats, NeighKey, NeighValue, TurnAction, TurnChannelKey,
    TurnPeerKey, FAMILY_V4,
};
use xdpfork_tests::{addrs::*, bin, empty_dir, ns_run, run, Host, Scenario, Topology};

/// The 398455e value sizes (what `bpftool map show` printed on a host running that build).
const OLD_FLOW_ACTION: usize = 104;
const OLD_FLOW_STATS: usize = 104;
const OLD_TURN_ACTION: usize = 112;

const STATS_FLOW: u32 = 5;
const STATS_TO_PEER: u32 = 6;
const STATS_TO_CLIENT: u32 = 7;
/// A slot no entry names: not carried over (fork-agent zeroes a slot when it assigns it).
const STATS_FREE: u32 = 9;
const SSRC: u32 = 0x00c0_ffee;
/// Packets the old build had counted on the flow.
const OLD_PACKETS: u64 = 1000;
const N: u16 = 50;
const CHANNEL: u16 = 0x4001;

/// The bytes of a fork-common boundary type as the kernel stores it.
fn bytes<T: aya::Pod>(v: &T) -> Vec<u8> {
    // SAFETY: fork-common's Pod types are #[repr(C)] integers with explicit padding fields, so
    // every one of their size_of bytes is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

fn hex(b: &[u8]) -> Vec<String> {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn bpftool_create(path: &Path, kind: &str, key: usize, value: usize, entries: u32) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('-').next())
        .context("pin name")?;
    run(
        "bpftool",
        &[
            "map",
            "create",
            &path.to_string_lossy(),
            "type",
            kind,
            "key",
            &key.to_string(),
            "value",
            &value.to_string(),
            "entries",
            &entries.to_string(),
            "name",
            name,
        ],
    )?;
    Ok(())
}

fn bpftool_update(path: &Path, key: &[u8], value: &[u8]) -> Result<()> {
    let path = path.to_string_lossy();
    let mut args = vec!["map", "update", "pinned", &path, "key", "hex"];
    let (k, v) = (hex(key), hex(value));
    args.extend(k.iter().map(String::as_str));
    args.extend(["value", "hex"]);
    args.extend(v.iter().map(String::as_str));
    run("bpftool", &args)?;
    Ok(())
}

/// A value as the 398455e build stored it: this build's bytes cut back to the old prefix.
fn old_flow_action(a: &FlowAction) -> Vec<u8> {
    bytes(a)[..OLD_FLOW_ACTION].to_vec()
}

/// `TurnAction` at 398455e: `flow` (104 B), `channel_be` at offset 104, 6 bytes of padding.
fn old_turn_action(t: &TurnAction) -> Vec<u8> {
    let mut v = old_flow_action(&t.flow);
    v.extend_from_slice(&t.channel_be.to_ne_bytes());
    v.resize(OLD_TURN_ACTION, 0);
    v
}

fn ifindex(topo: &Topology, h: Host, dev: &str) -> Result<u32> {
    xdpfork_tests::kernel::ifindex(&topo.ns(h), dev)
}

fn mac(topo: &Topology, h: Host, dev: &str) -> Result<[u8; 6]> {
    let s = ns_run(
        &topo.ns(h),
        "cat",
        &[&format!("/sys/class/net/{dev}/address")],
    )?;
    let mut m = [0u8; 6];
    for (i, part) in s.trim().split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(m)
}

fn pins(dir: &Path) -> Result<BTreeSet<String>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// `fork-agent check-kernel --pin-dir DIR` (PATH an empty directory under `scratch`): the
/// pinned-maps row of its report.
fn check_kernel_pinned_row(dir: &Path, scratch: &Path) -> Result<String> {
    let empty = empty_dir(&scratch.join("empty-check-path"))?;
    let out = Command::new(bin("fork-agent")?)
        .env("PATH", &empty)
        .args(["check-kernel", "--pin-dir"])
        .arg(dir)
        .output()
        .context("running fork-agent check-kernel")?;
    let _ = std::fs::remove_dir(&empty);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    report
        .lines()
        .find(|l| l.trim_start().starts_with("pinned maps ("))
        .map(str::to_owned)
        .with_context(|| format!("no pinned maps row:\n{report}"))
}

/// The flow and TURN channel the old build had installed, in this build's types.
struct OldState {
    key: FlowKey,
    flow: FlowAction,
    spec: ChannelSpec,
    to_peer: TurnAction,
    to_client: TurnAction,
}

fn old_state(topo: &Topology) -> Result<OldState> {
    let fb0 = ifindex(topo, Host::Forker, "fb0")?;
    let fa0 = ifindex(topo, Host::Forker, "fa0")?;
    let callee: SocketAddr = CALLEE_RTP.parse()?;
    let mut flow = relay_action(B_LOCAL.parse()?, callee, STATS_FLOW);
    flow.egress_ifindex = fb0;
    flow.nexthop_be = addr_words(callee.ip()).1;
    let spec = ChannelSpec {
        client: "10.77.1.2:50000".parse()?,
        server: "10.77.1.1:3478".parse()?,
        number: CHANNEL,
        relay: "10.77.2.1:49200".parse()?,
        peer: "10.77.2.2:60000".parse()?,
    };
    let turn = |src, dst: SocketAddr, stats, ifindex| {
        let mut flow = relay_action(src, dst, stats);
        flow.egress_ifindex = ifindex;
        flow.nexthop_be = addr_words(dst.ip()).1;
        TurnAction {
            flow,
            channel_be: CHANNEL.to_be(),
            _pad: [0; 2],
        }
    };
    Ok(OldState {
        key: FlowKey::new(A_LOCAL.parse()?),
        flow,
        to_peer: turn(spec.relay, spec.peer, STATS_TO_PEER, fb0),
        to_client: turn(spec.server, spec.client, STATS_TO_CLIENT, fa0),
        spec,
    })
}

fn old_stats(packets: u64) -> FlowStats {
    FlowStats {
        packets,
        bytes: packets * 172,
        last_seen_ns: 1,
        ssrc: SSRC,
        // The test's packets start at sequence 0: the next one after 65535, no loss.
        last_seq: u16::MAX,
        seq_valid: 1,
        ..FlowStats::default()
    }
}

/// Pin the maps as a 398455e fork-agent left them, with one relayed flow, its counters and one
/// bound TURN channel. `TURN_PEERS` sits under `TURN_PEERS-old`, as a start that stopped after
/// moving it aside leaves it. `NEIGHBOURS` (unchanged layout) holds the callee's MAC, as the
/// old agent had resolved it.
fn pin_old_build(topo: &Topology, st: &OldState) -> Result<()> {
    let dir = &topo.pin_dir;
    std::fs::create_dir_all(dir)?;
    let flows = dir.join("FLOWS");
    bpftool_create(&flows, "hash", 20, OLD_FLOW_ACTION, 65_536)?;
    bpftool_update(&flows, &bytes(&st.key), &old_flow_action(&st.flow))?;

    let stats = dir.join("FLOW_STATS");
    bpftool_create(&stats, "array", 4, OLD_FLOW_STATS, 65_536)?;
    for (slot, packets) in [
        (STATS_FLOW, OLD_PACKETS),
        (STATS_TO_PEER, 20),
        (STATS_TO_CLIENT, 30),
        (STATS_FREE, 77),
    ] {
        let old = bytes(&old_stats(packets))[..OLD_FLOW_STATS].to_vec();
        bpftool_update(&stats, &slot.to_ne_bytes(), &old)?;
    }

    let channels = dir.join("TURN_CHANNELS");
    bpftool_create(&channels, "hash", 40, OLD_TURN_ACTION, 65_536)?;
    bpftool_update(
        &channels,
        &bytes(&channel_key(&st.spec)),
        &old_turn_action(&st.to_peer),
    )?;
    let peers = dir.join("TURN_PEERS-old");
    bpftool_create(&peers, "hash", 40, OLD_TURN_ACTION, 65_536)?;
    bpftool_update(
        &peers,
        &bytes(&peer_key(&st.spec)),
        &old_turn_action(&st.to_client),
    )?;

    let neighbours = dir.join("NEIGHBOURS");
    bpftool_create(&neighbours, "hash", 24, 16, 4096)?;
    let fb0 = ifindex(topo, Host::Forker, "fb0")?;
    bpftool_update(
        &neighbours,
        &bytes(&NeighKey {
            addr_be: st.flow.nexthop_be,
            ifindex: fb0,
            family: FAMILY_V4,
            _pad: [0; 3],
        }),
        &bytes(&NeighValue {
            dmac: mac(topo, Host::Callee, "cb0")?,
            smac: mac(topo, Host::Forker, "fb0")?,
            _pad: [0; 4],
        }),
    )?;
    Ok(())
}

#[test]
fn older_layout_is_migrated_and_the_kernel_keeps_relaying() -> Result<()> {
    let topo = Topology::new()?;
    let st = old_state(&topo)?;
    pin_old_build(&topo, &st)?;
    let dir: PathBuf = topo.pin_dir.clone();

    // check-kernel only reads the pins and says what a start will do.
    let row = check_kernel_pinned_row(&dir, &topo.dir)?;
    ensure!(
        row.contains("note") && row.contains("FLOWS (from the 398455e layout)"),
        "{row}"
    );
    ensure!(
        row.contains("TURN_PEERS (from the 398455e layout)"),
        "{row}"
    );
    ensure!(
        pins(&dir)?.contains("TURN_PEERS-old"),
        "check-kernel moved a pin"
    );

    let s = Scenario::start_agent_in(topo, SPEECH_WS, "")?;

    // Every pin has this build's sizes, and no old pin is left.
    let info = |name: &str| MapInfo::from_pin(dir.join(name));
    for (name, value) in [
        ("FLOWS", size_of::<FlowAction>()),
        ("FLOW_STATS", size_of::<FlowStats>()),
        ("TURN_CHANNELS", size_of::<TurnAction>()),
        ("TURN_PEERS", size_of::<TurnAction>()),
    ] {
        ensure!(
            info(name)?.value_size() as usize == value,
            "{name}: value {} B, want {value}",
            info(name)?.value_size()
        );
    }
    let left = pins(&dir)?;
    ensure!(
        !left.iter().any(|p| p.ends_with("-old")),
        "old pins left: {left:?}"
    );

    // The entries, read back through this build's types.
    let open = |name: &str| MapData::from_pin(dir.join(name));
    let flows: HashMap<MapData, FlowKey, FlowAction> =
        HashMap::try_from(Map::HashMap(open("FLOWS")?))?;
    ensure!(flows.get(&st.key, 0)? == st.flow, "FLOWS entry differs");
    let channels: HashMap<MapData, TurnChannelKey, TurnAction> =
        HashMap::try_from(Map::HashMap(open("TURN_CHANNELS")?))?;
    let got = channels.get(&channel_key(&st.spec), 0)?;
    ensure!(
        got == st.to_peer && u16::from_be(got.channel_be) == CHANNEL,
        "TURN_CHANNELS entry differs: {got:?}"
    );
    let peers: HashMap<MapData, TurnPeerKey, TurnAction> =
        HashMap::try_from(Map::HashMap(open("TURN_PEERS")?))?;
    ensure!(
        peers.get(&peer_key(&st.spec), 0)? == st.to_client,
        "TURN_PEERS entry differs"
    );
    let stats: Array<MapData, FlowStats> = Array::try_from(Map::Array(open("FLOW_STATS")?))?;
    for (slot, packets) in [(STATS_TO_PEER, 20), (STATS_TO_CLIENT, 30)] {
        ensure!(
            stats.get(&slot, 0)? == old_stats(packets),
            "FLOW_STATS[{slot}]"
        );
    }
    ensure!(
        stats.get(&STATS_FREE, 0)? == FlowStats::default(),
        "a free slot was carried over"
    );

    let log = s.topo.log("fork-agent");
    // One entry each; FLOW_STATS: the three slots the entries name.
    for (map, copied) in [
        ("FLOWS", 1),
        ("FLOW_STATS", 3),
        ("TURN_CHANNELS", 1),
        ("TURN_PEERS", 1),
    ] {
        ensure!(
            log.lines().any(|l| l.contains("migrated pinned map")
                && l.contains(&format!("map=\"{map}\""))
                && l.contains(&format!("copied={copied} "))),
            "no migration line for {map} with {copied} entries:\n{log}"
        );
    }

    // The call's packets, relayed by the kernel per the migrated flow; its counters continue.
    let (sent, got) = s
        .play_caller_audio(N, 0, SSRC, Duration::from_millis(2))?
        .finish()?;
    ensure!(
        got == sent,
        "the callee got {} of {} packets (byte-identical, in order)\ncounters {}\nflows {}",
        got.len(),
        sent.len(),
        s.counters()?,
        s.flows()?
    );
    let a = s.flow(A_LOCAL)?;
    assert_eq!(a["path"], "kernel", "{a}");
    assert_eq!(a["packets"], OLD_PACKETS + u64::from(N), "{a}");
    assert_eq!(a["lost"], 0, "{a}");
    let c = s.counters()?;
    assert_eq!(c["kernel"]["relayed"], u64::from(N), "{c}");
    assert_eq!(c["user"]["userspace_relayed"], 0, "{c}");
    Ok(())
}

/// fork-agent with the standard config as `edit` changes it, expected to exit non-zero; its log.
fn start_expecting_failure(
    topo: &mut Topology,
    edit: impl FnOnce(String) -> String,
) -> Result<String> {
    let socket = topo.dir.join("fork-agent.sock");
    let config = topo.dir.join("fork-agent.toml");
    std::fs::write(
        &config,
        edit(Scenario::fork_agent_config(
            &topo.pin_dir,
            &socket,
            &topo.dir.join("state"),
            SPEECH_WS,
        )),
    )?;
    let empty = empty_dir(&topo.dir.join("empty-path"))?;
    topo.spawn_env(
        "fork-agent",
        Host::Forker,
        &bin("fork-agent")?,
        &["run", "--config", &config.to_string_lossy()],
        &[("PATH", &empty.to_string_lossy())],
    )?;
    let status = topo.wait_exit("fork-agent", Duration::from_secs(30))?;
    let log = topo.log("fork-agent");
    ensure!(!status.success(), "fork-agent started:\n{log}");
    Ok(log)
}

/// Name, id and value size of every map pinned under `dir`.
fn pinned_maps(dir: &Path) -> Result<Vec<(String, u32, u32)>> {
    pins(dir)?
        .into_iter()
        .map(|n| {
            let info = MapInfo::from_pin(dir.join(&n))?;
            Ok((n, info.id(), info.value_size()))
        })
        .collect()
}

#[test]
fn a_start_failing_before_the_swap_puts_the_old_pins_back() -> Result<()> {
    let mut topo = Topology::new()?;
    let st = old_state(&topo)?;
    pin_old_build(&topo, &st)?;
    let before = pinned_maps(&topo.pin_dir)?;

    let log = start_expecting_failure(&mut topo, |c| {
        c.replace(r#"["fa0", "fb0"]"#, r#"["fa0", "fb0", "nosuchdev0"]"#)
    })?;
    // It got as far as loading the programs over the new maps, then failed to attach.
    ensure!(
        log.contains("XDP programs loaded") && log.contains("`nosuchdev0` does not exist"),
        "failed for another reason:\n{log}"
    );
    let after = pinned_maps(&topo.pin_dir)?;
    ensure!(
        after == before,
        "pins after the failed start {after:?}, before {before:?}"
    );
    let dump = run(
        "bpftool",
        &[
            "map",
            "dump",
            "pinned",
            &topo.pin_dir.join("FLOWS").to_string_lossy(),
        ],
    )?;
    ensure!(dump.contains("Found 1 element"), "FLOWS:\n{dump}");
    Ok(())
}

#[test]
fn unknown_layout_refuses_to_start_and_leaves_the_pins() -> Result<()> {
    let mut topo = Topology::new()?;
    let dir = topo.pin_dir.clone();
    std::fs::create_dir_all(&dir)?;
    // FLOWS with a value size no build had, one entry in it; FLOW_STATS in this build's layout.
    let flows = dir.join("FLOWS");
    bpftool_create(&flows, "hash", 20, 100, 65_536)?;
    bpftool_update(&flows, &[7; 20], &[9; 100])?;
    bpftool_create(
        &dir.join("FLOW_STATS"),
        "array",
        4,
        size_of::<FlowStats>(),
        65_536,
    )?;
    let before = pins(&dir)?;
    let ids = |d: &Path| -> Result<Vec<u32>> {
        ["FLOWS", "FLOW_STATS"]
            .iter()
            .map(|n| Ok(MapInfo::from_pin(d.join(n))?.id()))
            .collect()
    };
    let ids_before = ids(&dir)?;

    let row = check_kernel_pinned_row(&dir, &topo.dir)?;
    ensure!(
        row.contains("FAIL") && row.contains("FLOWS") && row.contains("fork-agent unpin"),
        "{row}"
    );

    let log = start_expecting_failure(&mut topo, |c| c)?;
    for want in [
        "pinned map FLOWS has an unknown layout",
        "value 100 B",
        &format!("value {} B", size_of::<FlowAction>()),
        &format!("fork-agent unpin --pin-dir {}", dir.display()),
        "lose their kernel relay",
    ] {
        ensure!(log.contains(want), "the error lacks `{want}`:\n{log}");
    }

    ensure!(pins(&dir)? == before, "pins changed: {:?}", pins(&dir)?);
    ensure!(ids(&dir)? == ids_before, "a pinned map was replaced");
    let dump = run(
        "bpftool",
        &["map", "dump", "pinned", &flows.to_string_lossy()],
    )?;
    ensure!(dump.contains("Found 1 element"), "FLOWS changed:\n{dump}");
    Ok(())
}
