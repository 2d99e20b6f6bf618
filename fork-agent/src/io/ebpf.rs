//! The aya loader: loads fork-ebpf, pins every map and link under one bpffs directory, and on a
//! restart re-adopts what is pinned (maps by path, links by atomically swapping in the freshly
//! loaded program) so calls keep their audio while the agent is away.

use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray, XskMap},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use fork_common::{
    Config as KernelConfig, FlowAction, FlowKey, FlowStats, NeighKey, NeighValue, Reason,
    TurnAction, TurnChannelKey, TurnPeerKey, MAP_CONFIG, MAP_COUNTERS, MAP_FLOWS, MAP_FLOW_STATS,
    MAP_NEIGHBOURS, MAP_TURN_CHANNELS, MAP_TURN_PEERS, MAP_TX_PORTS, MAP_XSKS, PROG_DEVMAP_EGRESS,
    PROG_FORK_CAPTURE, PROG_MEDIA_RELAY,
};
use tracing::{info, warn};

use crate::{config::XdpAttachMode, io::netdev};

/// The fork-ebpf object, built by build.rs (with BTF) and embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fork-ebpf.o"));

enum Created {
    Pin(PathBuf),
    Veth(String),
}

/// bpffs magic from statfs(2).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// aya-log's reader of the programs' log ring buffer, forwarding to the `log` facade (tracing).
pub type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct DataPlane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    pub flows: HashMap<MapData, FlowKey, FlowAction>,
    pub flow_stats: Array<MapData, FlowStats>,
    pub counters: PerCpuArray<MapData, u64>,
    pub tx_ports: DevMapHash<MapData>,
    pub xsks: XskMap<MapData>,
    pub config: Array<MapData, KernelConfig>,
    pub neighbours: HashMap<MapData, NeighKey, NeighValue>,
    pub turn_channels: HashMap<MapData, TurnChannelKey, TurnAction>,
    pub turn_peers: HashMap<MapData, TurnPeerKey, TurnAction>,
    /// Pins and devices this process created, removed again if start-up fails half way.
    created: Vec<Created>,
    /// Keeps aya-log's ring buffer (and so the programs' log map) alive.
    logger: Option<Logger>,
}

/// Make sure `dir` is inside a mounted bpffs and exists.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(dir);
    let st = nix::sys::statfs::statfs(parent).with_context(|| {
        format!(
            "{} does not exist: mount bpffs with `mount -t bpf bpf /sys/fs/bpf`",
            parent.display()
        )
    })?;
    if st.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a bpf filesystem: run `mount -t bpf bpf /sys/fs/bpf` (pinned maps keep calls \
             alive across restarts, so fork-agent refuses to run without them)",
            parent.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(())
}

impl DataPlane {
    /// Load the programs, creating or re-adopting the pinned maps under `pin_dir`.
    pub fn load(pin_dir: &Path) -> Result<DataPlane> {
        ensure_bpffs(pin_dir)?;
        let paths: Vec<(&str, PathBuf)> = fork_common::ALL_MAPS
            .iter()
            .map(|m| (*m, pin_dir.join(m)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        // Maps pinned by this process (not adopted) are removed again if start-up fails.
        let created: Vec<Created> = paths
            .iter()
            .filter(|(_, p)| !p.exists())
            .map(|(_, p)| Created::Pin(p.clone()))
            .collect();
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object (is this kernel >= 5.16 with BTF?)")?;
        // The logger must outlive program loading: dropping it closes the log map's fd, and the
        // verifier then rejects the programs with "fd N is not pointing to valid bpf_map".
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("eBPF logging unavailable: {e}");
                None
            }
        };
        for name in [PROG_MEDIA_RELAY, PROG_DEVMAP_EGRESS, PROG_FORK_CAPTURE] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel verifier rejected {name}"))?;
        }
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        let flows = HashMap::try_from(take(MAP_FLOWS)?)?;
        let flow_stats = Array::try_from(take(MAP_FLOW_STATS)?)?;
        let counters = PerCpuArray::try_from(take(MAP_COUNTERS)?)?;
        let tx_ports = DevMapHash::try_from(take(MAP_TX_PORTS)?)?;
        let xsks = XskMap::try_from(take(MAP_XSKS)?)?;
        let config = Array::try_from(take(MAP_CONFIG)?)?;
        let neighbours = HashMap::try_from(take(MAP_NEIGHBOURS)?)?;
        let turn_channels = HashMap::try_from(take(MAP_TURN_CHANNELS)?)?;
        let turn_peers = HashMap::try_from(take(MAP_TURN_PEERS)?)?;
        Ok(DataPlane {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            flows,
            flow_stats,
            counters,
            tx_ports,
            xsks,
            config,
            neighbours,
            turn_channels,
            turn_peers,
            created,
            logger,
        })
    }

    /// A loaded program by name (fork_common::PROG_*), e.g. for `BPF_PROG_TEST_RUN` in tests.
    pub fn xdp(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?)
    }

    /// Attach `prog` to `ifname` through a pinned link, or swap it into the link a previous agent
    /// pinned (atomic: no packet sees a detached interface).
    fn attach_pinned(&mut self, prog: &str, ifname: &str, mode: XdpAttachMode) -> Result<()> {
        let link_path = self.pin_dir.join(format!("link_{ifname}"));
        let mode = match mode {
            XdpAttachMode::Native => XdpMode::Driver,
            XdpAttachMode::Skb => XdpMode::Skb,
        };
        if link_path.exists() {
            let fd_link: FdLink = PinnedLink::from_pin(&link_path)
                .with_context(|| format!("opening pinned link {}", link_path.display()))?
                .into();
            let xdp = self.xdp(prog)?;
            let link = XdpLink::try_from(fd_link)
                .with_context(|| format!("{} is not an XDP link", link_path.display()))?;
            xdp.attach_to_link(link)
                .with_context(|| format!("replacing the program on {ifname}"))?;
            info!(
                interface = ifname,
                program = prog,
                "re-adopted pinned XDP link"
            );
            return Ok(());
        }
        let xdp = self.xdp(prog)?;
        let id = xdp.attach(ifname, mode).with_context(|| {
            format!("attaching {prog} to {ifname} in {mode:?} mode (does the driver support it?)")
        })?;
        let link = xdp.take_link(id)?;
        let fd_link = FdLink::try_from(link).context(
            "the kernel gave a netlink XDP attachment; fork-agent needs bpf_link (>= 5.9)",
        )?;
        fd_link
            .pin(&link_path)
            .with_context(|| format!("pinning link at {}", link_path.display()))?;
        self.created.push(Created::Pin(link_path));
        info!(
            interface = ifname,
            program = prog,
            "attached XDP program (pinned link)"
        );
        Ok(())
    }

    /// Attach the relay to every media interface and the capture program to the fork veth peer,
    /// and fill `TX_PORTS` and `CONFIG`. On failure, whatever this call attached or created is
    /// removed again (links unpinned, a fork veth it made deleted), so a bad config leaves the
    /// host as it was.
    pub fn attach(
        &mut self,
        interfaces: &[String],
        fork_if: &str,
        mode: XdpAttachMode,
    ) -> Result<(u32, String)> {
        let result = self.try_attach(interfaces, fork_if, mode);
        if result.is_err() {
            self.rollback();
        }
        result
    }

    fn try_attach(
        &mut self,
        interfaces: &[String],
        fork_if: &str,
        mode: XdpAttachMode,
    ) -> Result<(u32, String)> {
        // Check every interface first: nothing is attached when one is missing.
        let ifindexes = interfaces
            .iter()
            .map(|i| netdev::ifindex(i))
            .collect::<Result<Vec<u32>>>()?;
        let fork_peer = format!("{fork_if}c");
        if netdev::ensure_fork_veth(fork_if, &fork_peer)? {
            self.created.push(Created::Veth(fork_if.to_owned()));
        }
        // Capture first, so the fork veth can take frames before any flow forks.
        self.attach_pinned(PROG_FORK_CAPTURE, &fork_peer, XdpAttachMode::Native)?;
        for (ifname, ifindex) in interfaces.iter().zip(ifindexes) {
            let egress_fd = self.xdp(PROG_DEVMAP_EGRESS)?.fd()?.try_clone()?;
            self.tx_ports
                .insert(ifindex, ifindex, Some(&egress_fd), 0)
                .with_context(|| format!("adding {ifname} to {MAP_TX_PORTS}"))?;
            self.attach_pinned(PROG_MEDIA_RELAY, ifname, mode)?;
        }
        let fork_ifindex = netdev::ifindex(fork_if)?;
        self.tx_ports
            .insert(fork_ifindex, fork_ifindex, None, 0)
            .with_context(|| format!("adding {fork_if} to {MAP_TX_PORTS}"))?;
        self.config.set(
            0,
            KernelConfig {
                fork_ifindex,
                _pad: 0,
            },
            0,
        )?;
        Ok((fork_ifindex, fork_peer))
    }

    /// Undo what this process created (start-up failed): links, map pins, the fork veth.
    pub fn rollback(&mut self) {
        for c in self.created.drain(..).rev() {
            match c {
                Created::Pin(p) => {
                    if let Err(e) = std::fs::remove_file(&p) {
                        warn!("cleanup: cannot unpin {}: {e}", p.display());
                    }
                }
                Created::Veth(name) => {
                    if let Err(e) = netdev::delete_link(&name) {
                        warn!("cleanup: cannot delete {name}: {e:#}");
                    }
                }
            }
        }
        // The directory too, when nothing else is pinned in it.
        let _ = std::fs::remove_dir(&self.pin_dir);
    }

    /// Register an AF_XDP socket for `queue` of the fork veth peer.
    pub fn set_xsk(&mut self, queue: u32, fd: impl AsRawFd) -> Result<()> {
        self.xsks
            .set(queue, fd, 0)
            .with_context(|| format!("registering the AF_XDP socket for queue {queue}"))
    }

    /// Global verdict counters summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Reason, u64)>> {
        let mut out = Vec::with_capacity(Reason::ALL.len());
        for r in Reason::ALL {
            let per_cpu = self.counters.get(&(r as u32), 0)?;
            out.push((r, per_cpu.iter().sum()));
        }
        Ok(out)
    }

    /// Hand the eBPF log reader to a task that flushes it; the task must keep it alive.
    pub fn take_logger(&mut self) -> Option<Logger> {
        self.logger.take()
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

/// Remove everything pinned under `pin_dir`: detaches the programs (the links go with their last
/// reference) and frees the maps. Calls in progress lose their kernel relay: for uninstall only.
pub fn unpin_all(pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(pin_dir)? {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    Ok(())
}
