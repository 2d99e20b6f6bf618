//! The aya loader: loads fork-ebpf, pins every map and link under one bpffs directory, and on a
//! restart re-adopts what is pinned (maps by path, links by atomically swapping in the freshly
//! loaded program) so calls keep their audio while the agent is away. Pinned maps are checked
//! against this build's layouts first, and those of an older layout migrated ([`migrate`]).

pub mod migrate;

use std::{
    collections::BTreeSet,
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
    Config as KernelConfig, FlowAction, FlowKey, FlowStats, ForkPath, NeighKey, NeighValue, Reason,
    TurnAction, TurnChannelKey, TurnPeerKey, MAP_CONFIG, MAP_COUNTERS, MAP_FLOWS, MAP_FLOW_STATS,
    MAP_NEIGHBOURS, MAP_TURN_CHANNELS, MAP_TURN_PEERS, MAP_TX_PORTS, MAP_XSKS,
};
use tracing::{info, warn};

use crate::{
    config::{ForkPathSetting, XdpAttachMode},
    io::netdev,
};

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
    /// The fork path whose programs are loaded.
    path: ForkPath,
    /// Paths tried before `path` whose programs the kernel refused (`auto` only).
    refused: Vec<Refusal>,
    /// Pinned maps of an older layout being migrated, finished when the relay is swapped in.
    migrations: migrate::Migrations,
}

/// A program the kernel refused to load, with what the verifier said.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub path: ForkPath,
    pub program: &'static str,
    /// The syscall's error and the verifier log's last [`VERIFIER_TAIL_LINES`] lines.
    pub detail: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the kernel verifier rejected {} ({} fork path): {}",
            self.program,
            self.path.name(),
            self.detail
        )
    }
}

/// How much of a verifier log an error carries: the reason is at the end, and a whole log can
/// run to thousands of lines.
pub const VERIFIER_TAIL_LINES: usize = 20;

/// The syscall error plus the last lines of the verifier log of a failed program load.
fn refusal_detail(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = &lines[lines.len().saturating_sub(VERIFIER_TAIL_LINES)..];
            format!(
                "{io_error}; verifier log (last {} lines):\n  {}",
                tail.len(),
                tail.join("\n  ")
            )
        }
        other => format!("{other:#}"),
    }
}

/// Load the programs of `path` into `ebpf`; on a refusal, unload whatever of the set was loaded.
fn load_path(ebpf: &mut Ebpf, path: ForkPath) -> std::result::Result<(), Refusal> {
    let p = path.programs();
    let names = [p.relay, p.egress, p.capture];
    for (i, &name) in names.iter().enumerate() {
        let refused = |detail: String| Refusal {
            path,
            program: name,
            detail,
        };
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| refused("missing from the eBPF object".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| refused(e.to_string()))?;
        if let Err(e) = prog.load() {
            let refusal = refused(refusal_detail(&e));
            for done in &names[..i] {
                if let Some(Ok(x)) = ebpf.program_mut(done).map(<&mut Xdp>::try_from) {
                    let _ = x.unload();
                }
            }
            return Err(refusal);
        }
    }
    Ok(())
}

/// Load the eBPF object (maps pinned under `pin_dir` when given) and the program set of the first
/// candidate path the kernel accepts.
fn load_object(
    pin_dir: Option<&Path>,
    setting: ForkPathSetting,
) -> Result<(Ebpf, Option<Logger>, ForkPath, Vec<Refusal>)> {
    let mut loader = EbpfLoader::new();
    if let Some(dir) = pin_dir {
        for name in fork_common::ALL_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
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
    let mut refused = Vec::new();
    for &path in setting.candidates() {
        match load_path(&mut ebpf, path) {
            Ok(()) => return Ok((ebpf, logger, path, refused)),
            Err(r) => {
                warn!(fork_path = path.name(), "{r}");
                refused.push(r);
            }
        }
    }
    let why: Vec<String> = refused.iter().map(ToString::to_string).collect();
    bail!("{}", why.join("\n"))
}

/// Whether the kernel accepted one program of one fork path.
#[derive(Debug, Clone)]
pub struct ProgramProbe {
    pub path: ForkPath,
    pub program: &'static str,
    /// The verifier's refusal (syscall error and the log's last lines).
    pub result: std::result::Result<(), String>,
}

/// Try to load every program of every fork path (maps unpinned, freed on return): what
/// `check-kernel` reports. One entry per program, in [`ForkPath::ALL`] order.
pub fn probe_programs() -> Result<Vec<ProgramProbe>> {
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .context("loading the eBPF object (maps, BTF)")?;
    let _logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
    let mut out = Vec::new();
    for path in ForkPath::ALL {
        let p = path.programs();
        for name in [p.relay, p.egress, p.capture] {
            let res = match ebpf.program_mut(name).map(<&mut Xdp>::try_from) {
                None => Err("missing from the eBPF object".to_owned()),
                Some(Err(e)) => Err(e.to_string()),
                Some(Ok(prog)) => prog.load().map_err(|e| refusal_detail(&e)),
            };
            out.push(ProgramProbe {
                path,
                program: name,
                result: res,
            });
        }
    }
    Ok(out)
}

/// What a start would do with each map pinned under `pin_dir` (`check-kernel`); reads only.
pub fn pinned_plans(pin_dir: &Path) -> Result<migrate::MapPlans> {
    migrate::plans(pin_dir, EBPF_OBJECT)
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
    /// Load the programs of the first fork path in `setting` the kernel accepts, creating or
    /// re-adopting the pinned maps under `pin_dir`. Pinned maps whose layout this build does not
    /// know refuse the start, untouched; those of an older layout are migrated (finished by
    /// [`DataPlane::attach`]).
    pub fn load(pin_dir: &Path, setting: ForkPathSetting) -> Result<DataPlane> {
        ensure_bpffs(pin_dir)?;
        let mut migrations = migrate::Migrations::prepare(pin_dir, EBPF_OBJECT)?;
        match DataPlane::load_checked(pin_dir, setting, &mut migrations) {
            Ok(mut dp) => {
                dp.migrations = migrations;
                Ok(dp)
            }
            Err(e) => {
                migrations.rollback();
                Err(e)
            }
        }
    }

    fn load_checked(
        pin_dir: &Path,
        setting: ForkPathSetting,
        migrations: &mut migrate::Migrations,
    ) -> Result<DataPlane> {
        // Maps pinned by this process (not adopted) are removed again if start-up fails; new
        // maps of a migration are the migration's to undo.
        let created: Vec<Created> = fork_common::ALL_MAPS
            .iter()
            .filter(|m| !migrations.has(m))
            .map(|m| pin_dir.join(m))
            .filter(|p| !p.exists())
            .map(Created::Pin)
            .collect();
        let (mut ebpf, logger, path, refused) = load_object(Some(pin_dir), setting)?;
        migrations.fill_entries()?;
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
            path,
            refused,
            migrations: migrate::Migrations::default(),
        })
    }

    /// The fork path whose programs are loaded.
    pub fn fork_path(&self) -> ForkPath {
        self.path
    }

    /// Paths `auto` tried first and the kernel refused, with why.
    pub fn refused(&self) -> &[Refusal] {
        &self.refused
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
        let fork_ifindex = netdev::ifindex(fork_if)?;
        let progs = self.path.programs();
        // Every media interface with the egress program of this path, before any relay can
        // broadcast (a restarted agent overwrites the entries, so the egress program always
        // matches the relay about to be swapped in); then the fork veth, without one.
        for (ifname, ifindex) in interfaces.iter().zip(&ifindexes) {
            let egress_fd = self.xdp(progs.egress)?.fd()?.try_clone()?;
            self.tx_ports
                .insert(*ifindex, *ifindex, Some(&egress_fd), 0)
                .with_context(|| format!("adding {ifname} to {MAP_TX_PORTS}"))?;
        }
        self.tx_ports
            .insert(fork_ifindex, fork_ifindex, None, 0)
            .with_context(|| format!("adding {fork_if} to {MAP_TX_PORTS}"))?;
        // Capture next, so the fork veth can take frames before any flow forks.
        self.attach_pinned(progs.capture, &fork_peer, XdpAttachMode::Native)?;
        // Migrated counters are copied as late as possible: the old relay counts until the
        // swap (docs/maps.md "Upgrades and layout changes").
        let slots = if self.migrations.wants_slots() {
            self.stats_slots()?
        } else {
            BTreeSet::new()
        };
        self.migrations.before_swap(&slots)?;
        for ifname in interfaces {
            self.attach_pinned(progs.relay, ifname, mode)?;
        }
        self.migrations.finish();
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

    /// The `FLOW_STATS` slots that flows and TURN channels name.
    fn stats_slots(&self) -> Result<BTreeSet<u32>> {
        let mut slots = BTreeSet::new();
        for item in self.flows.iter() {
            slots.insert(item.context("reading FLOWS")?.1.stats_index);
        }
        for item in self.turn_channels.iter() {
            slots.insert(item.context("reading TURN_CHANNELS")?.1.flow.stats_index);
        }
        for item in self.turn_peers.iter() {
            slots.insert(item.context("reading TURN_PEERS")?.1.flow.stats_index);
        }
        Ok(slots)
    }

    /// Undo what this process created (start-up failed): links, map pins, the fork veth, and a
    /// migration not yet committed (the old pins go back).
    pub fn rollback(&mut self) {
        self.migrations.rollback();
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
