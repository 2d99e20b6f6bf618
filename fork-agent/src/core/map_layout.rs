//! Layouts of the pinned maps across upgrades (docs/maps.md "Upgrades and layout changes").
//!
//! fork-agent re-adopts the maps a previous agent pinned, so calls keep their kernel relay while
//! it restarts. aya opens an existing pin without comparing it with the object, so this module
//! decides, for every map, what a start does with what it finds:
//!
//! - nothing pinned: the loader creates the map ([`Plan::Create`]);
//! - this build's layout: adopted as it is ([`Plan::Adopt`]);
//! - a layout in [`HISTORY`]: migrated with its entries converted ([`Plan::Migrate`]);
//! - anything else: the start is refused before a pin is touched ([`LayoutError`]).
//!
//! Inputs: this build's layout of each map (the shell reads it from the parsed eBPF object) and
//! what is pinned under the map's name and under [`old_pin_name`]. Outputs: a [`Plan`] per map,
//! and the converted bytes of each entry ([`Migration::convert_value`]). The shell reads and
//! writes the maps and renames the pins (io/ebpf/migrate.rs).
//!
//! Call order: [`plan`] for every map in `fork_common::ALL_MAPS`; if any is an `Err`, stop and
//! touch nothing. Otherwise, for each `Plan::Migrate`, feed every old entry's value through
//! `convert_value` (keys never changed so far; [`plan`] refuses a chain that would change one).
#![forbid(unsafe_code)]

use std::fmt;

use fork_common::{MAP_FLOWS, MAP_FLOW_STATS, MAP_TURN_CHANNELS, MAP_TURN_PEERS, MAX_FLOWS};

/// `BPF_MAP_TYPE_HASH` (include/uapi/linux/bpf.h, `enum bpf_map_type`; kernel ABI, never
/// renumbered).
pub const BPF_MAP_TYPE_HASH: u32 = 1;
/// `BPF_MAP_TYPE_ARRAY`.
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// What the kernel reports of a map (`bpf_map_info`) and the object defines: enough to know
/// whether the programs of this build can use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    /// `enum bpf_map_type`.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// `BPF_F_*` creation flags.
    pub flags: u32,
}

impl fmt::Display for MapLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {} key {} B value {} B max_entries {} flags {:#x}",
            type_name(self.map_type),
            self.key_size,
            self.value_size,
            self.max_entries,
            self.flags
        )
    }
}

/// `BPF_MAP_TYPE_DEVMAP` and `BPF_MAP_TYPE_DEVMAP_HASH`.
const BPF_MAP_TYPE_DEVMAP: u32 = 14;
const BPF_MAP_TYPE_DEVMAP_HASH: u32 = 25;
/// `BPF_F_RDONLY_PROG`.
const BPF_F_RDONLY_PROG: u32 = 1 << 7;

impl MapLayout {
    /// What the kernel reports for a map created with this definition: it adds
    /// `BPF_F_RDONLY_PROG` to every devmap (kernel/bpf/devmap.c `dev_map_init_map`: programs
    /// get a pointer straight into the entry and must not write through it).
    pub fn as_created(self) -> MapLayout {
        let flags = match self.map_type {
            BPF_MAP_TYPE_DEVMAP | BPF_MAP_TYPE_DEVMAP_HASH => self.flags | BPF_F_RDONLY_PROG,
            _ => self.flags,
        };
        MapLayout { flags, ..self }
    }
}

/// bpftool's name of a map type, for messages.
pub fn type_name(map_type: u32) -> String {
    // include/uapi/linux/bpf.h, `enum bpf_map_type`: the types fork-agent pins.
    match map_type {
        BPF_MAP_TYPE_HASH => "hash".into(),
        BPF_MAP_TYPE_ARRAY => "array".into(),
        6 => "percpu_array".into(),
        BPF_MAP_TYPE_DEVMAP => "devmap".into(),
        17 => "xskmap".into(),
        BPF_MAP_TYPE_DEVMAP_HASH => "devmap_hash".into(),
        other => format!("#{other}"),
    }
}

/// The pin an older map is moved to while its entries are copied into the new one. bpffs
/// refuses names with a dot ("reserved for future extensions", kernel/bpf/inode.c
/// `bpf_lookup`), hence `FLOWS-old` and not `FLOWS.old`; a dash never appears in a map name
/// (they are Rust statics).
pub fn old_pin_name(map: &str) -> String {
    format!("{map}-old")
}

/// Which entries of an older map are carried over, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carry {
    /// Every entry, before the new programs are loaded. For maps only fork-agent writes
    /// (`FLOWS`, `TURN_*`): nothing changes them while the agent is away.
    Entries,
    /// The `FLOW_STATS` slots a flow or TURN entry names (`stats_index`), as late as possible:
    /// just before the new relay program is swapped in, because the old one keeps counting into
    /// the old map until then. Free slots are zeroed by fork-agent when it assigns them, so
    /// their old contents do not matter.
    StatsSlots,
}

/// A layout a released build pinned, and how its entries become those of the next layout.
///
/// RULE: any change to the layout of a pinned map (a type in fork-common used as a key or value
/// of a map in `ALL_MAPS`, its size, its max_entries, or its type or flags) must add a row here
/// whose `from` is the layout being replaced and whose `to` is the new one, with a conversion
/// and a unit test of it; rows already here stay as they are (conversions chain). Without the
/// row, an upgrade refuses to start on a host that has the old pins.
#[derive(Clone, Copy)]
pub struct Historical {
    pub map: &'static str,
    /// The last commit of main whose maps have this layout (for readers; not checked).
    pub until: &'static str,
    pub from: MapLayout,
    pub to: MapLayout,
    pub carry: Carry,
    /// `from.value_size` bytes of a value → `to.value_size` bytes.
    convert: fn(&[u8]) -> Result<Vec<u8>, WrongLength>,
}

impl fmt::Debug for Historical {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Historical")
            .field("map", &self.map)
            .field("until", &self.until)
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

impl PartialEq for Historical {
    fn eq(&self, other: &Self) -> bool {
        (self.map, self.until, self.from, self.to) == (other.map, other.until, other.from, other.to)
    }
}

impl Eq for Historical {}

/// Sizes of the values at 398455e, the last commit before inject mode (69553fc) appended
/// `renumber` to `FlowAction` and the `out_*`/`rn_*` fields to `FlowStats`. History is frozen:
/// these are the numbers that commit's `fork_common` asserted, not derived from today's types.
mod v1 {
    /// `FlowAction` ended with `nexthop_be` at offset 88.
    pub const FLOW_ACTION: usize = 104;
    /// `FlowStats` ended with `seq_valid`, `_pad` at offsets 102, 103.
    pub const FLOW_STATS: usize = 104;
    /// `TurnAction { flow: FlowAction, channel_be: u16, _pad: [u8; 6] }`.
    pub const TURN_ACTION: usize = 112;
    pub const TURN_CHANNEL_OFFSET: usize = FLOW_ACTION;
}

/// The layouts inject mode (69553fc) introduced: v1 plus the appended fields.
mod v2 {
    /// v1 plus `renumber: Renumber` (12 B, zero = not renumbering).
    pub const FLOW_ACTION: usize = 116;
    /// v1 plus `out_ssrc` .. `_pad2` (24 B, zero = nothing relayed since / no epoch yet).
    pub const FLOW_STATS: usize = 128;
    /// `channel_be` moved behind the longer `FlowAction`; the padding shrank to 2 bytes.
    pub const TURN_ACTION: usize = 120;
    pub const TURN_CHANNEL_OFFSET: usize = FLOW_ACTION;
}

/// `FlowKey` (unchanged since the map exists).
const FLOW_KEY: u32 = 20;
/// `TurnChannelKey` and `TurnPeerKey` (unchanged since the maps exist).
const TURN_KEY: u32 = 40;
/// `MAX_TURN_CHANNELS` at 398455e (unchanged since).
const TURN_ENTRIES: u32 = 65_536;

const fn layout(map_type: u32, key_size: u32, value_size: usize, max_entries: u32) -> MapLayout {
    MapLayout {
        map_type,
        key_size,
        value_size: value_size as u32,
        max_entries,
        flags: 0,
    }
}

/// Every layout of a pinned map that a released build used and this one converts.
///
/// RULE (docs/maps.md "Upgrades and layout changes"): a change to a pinned map's layout adds a
/// row here (from the replaced layout to the new one), its conversion and a unit test; the rows
/// already here stay as they are.
pub const HISTORY: &[Historical] = &[
    Historical {
        map: MAP_FLOWS,
        until: "398455e",
        from: layout(BPF_MAP_TYPE_HASH, FLOW_KEY, v1::FLOW_ACTION, MAX_FLOWS),
        to: layout(BPF_MAP_TYPE_HASH, FLOW_KEY, v2::FLOW_ACTION, MAX_FLOWS),
        carry: Carry::Entries,
        convert: flow_action_v1_to_v2,
    },
    Historical {
        map: MAP_FLOW_STATS,
        until: "398455e",
        from: layout(BPF_MAP_TYPE_ARRAY, 4, v1::FLOW_STATS, MAX_FLOWS),
        to: layout(BPF_MAP_TYPE_ARRAY, 4, v2::FLOW_STATS, MAX_FLOWS),
        carry: Carry::StatsSlots,
        convert: flow_stats_v1_to_v2,
    },
    Historical {
        map: MAP_TURN_CHANNELS,
        until: "398455e",
        from: layout(BPF_MAP_TYPE_HASH, TURN_KEY, v1::TURN_ACTION, TURN_ENTRIES),
        to: layout(BPF_MAP_TYPE_HASH, TURN_KEY, v2::TURN_ACTION, TURN_ENTRIES),
        carry: Carry::Entries,
        convert: turn_action_v1_to_v2,
    },
    Historical {
        map: MAP_TURN_PEERS,
        until: "398455e",
        from: layout(BPF_MAP_TYPE_HASH, TURN_KEY, v1::TURN_ACTION, TURN_ENTRIES),
        to: layout(BPF_MAP_TYPE_HASH, TURN_KEY, v2::TURN_ACTION, TURN_ENTRIES),
        carry: Carry::Entries,
        convert: turn_action_v1_to_v2,
    },
];

/// A value whose length is not that of the layout it is converted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{got} bytes where the layout has {expected}")]
pub struct WrongLength {
    pub expected: usize,
    pub got: usize,
}

/// [`WrongLength`] of a value being migrated, with the map and layout it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a {map} value of {got} bytes cannot be converted from the {until} layout ({expected} bytes)"
)]
pub struct ConvertError {
    pub map: &'static str,
    pub until: &'static str,
    pub expected: usize,
    pub got: usize,
}

fn check_len(old: &[u8], expected: usize) -> Result<(), WrongLength> {
    if old.len() == expected {
        Ok(())
    } else {
        Err(WrongLength {
            expected,
            got: old.len(),
        })
    }
}

/// `FlowAction` v1 → v2: `renumber` appended, zero (`FLOW_F_RENUMBER` is never set in a v1
/// entry, so the kernel never reads it).
pub fn flow_action_v1_to_v2(old: &[u8]) -> Result<Vec<u8>, WrongLength> {
    check_len(old, v1::FLOW_ACTION)?;
    let mut new = old.to_vec();
    new.resize(v2::FLOW_ACTION, 0);
    Ok(new)
}

/// `FlowStats` v1 → v2: `out_*` and `rn_*` appended, zero (`out_valid` 0: no packet relayed
/// yet as far as inject mode knows; `rn_epoch` 0: no deltas in force).
pub fn flow_stats_v1_to_v2(old: &[u8]) -> Result<Vec<u8>, WrongLength> {
    check_len(old, v1::FLOW_STATS)?;
    let mut new = old.to_vec();
    new.resize(v2::FLOW_STATS, 0);
    Ok(new)
}

/// `TurnAction` v1 → v2: not an append. `flow` grows by `renumber`, so `channel_be` moves from
/// offset 104 to 116, and the tail padding shrinks from 6 to 2 bytes.
pub fn turn_action_v1_to_v2(old: &[u8]) -> Result<Vec<u8>, WrongLength> {
    check_len(old, v1::TURN_ACTION)?;
    let mut new = flow_action_v1_to_v2(&old[..v1::FLOW_ACTION])?;
    new.extend_from_slice(&old[v1::TURN_CHANNEL_OFFSET..v1::TURN_CHANNEL_OFFSET + 2]);
    debug_assert_eq!(new.len(), v2::TURN_CHANNEL_OFFSET + 2);
    new.resize(v2::TURN_ACTION, 0);
    Ok(new)
}

/// What a start does with one map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing pinned: the loader creates and pins it.
    Create,
    /// Pinned with this build's layout: adopted as it is.
    Adopt,
    /// Pinned with this build's layout, and an older copy left under [`old_pin_name`] by a start
    /// that stopped after creating the new map: entries the new map lacks are filled in from the
    /// old one (an entry already there is never overwritten), then the old pin is removed.
    Finish(Migration),
    /// Pinned with an older layout: moved to [`old_pin_name`], converted into a new map, and the
    /// old pin removed once the new programs run.
    Migrate(Migration),
    /// Nothing under its own name, an older copy under [`old_pin_name`] (a start stopped between
    /// moving the old pin and creating the new one): migrated from there.
    Resume(Migration),
}

/// The conversions from a pinned layout to this build's, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub map: &'static str,
    pub from: MapLayout,
    steps: Vec<&'static Historical>,
}

impl Migration {
    /// How the entries are carried (the first step's: a map does not change its nature).
    pub fn carry(&self) -> Carry {
        self.steps[0].carry
    }

    /// The commit whose layout is converted (its last one), for the log.
    pub fn until(&self) -> &'static str {
        self.steps[0].until
    }

    /// One value of the pinned layout in this build's layout.
    pub fn convert_value(&self, old: &[u8]) -> Result<Vec<u8>, ConvertError> {
        let mut value = old.to_vec();
        for step in &self.steps {
            value = (step.convert)(&value).map_err(|e| ConvertError {
                map: step.map,
                until: step.until,
                expected: e.expected,
                got: e.got,
            })?;
        }
        Ok(value)
    }
}

/// Why a start refuses the pins (it touches none of them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A pinned map whose layout is neither this build's nor one it converts (a newer build's,
    /// or a hand-made map).
    #[error(
        "pinned map {pin} has an unknown layout: pinned {pinned}, this build expects {expected}"
    )]
    Unknown {
        pin: String,
        pinned: MapLayout,
        expected: MapLayout,
    },
    /// Both the map's pin and its old pin hold an older layout: which one the kernel uses is
    /// unknown, so neither is converted.
    #[error(
        "pinned maps {map} ({pinned}) and {old} ({old_layout}) both have an older layout; this \
         build expects {expected}"
    )]
    TwoOld {
        map: &'static str,
        old: String,
        pinned: MapLayout,
        old_layout: MapLayout,
        expected: MapLayout,
    },
}

/// The chain of [`HISTORY`] rows that turns `from` into `expected` for `map`, if there is one.
fn chain(map: &'static str, from: &MapLayout, expected: &MapLayout) -> Option<Migration> {
    let mut steps = Vec::new();
    let mut at = *from;
    // Each row is used at most once, so the walk ends.
    for _ in 0..HISTORY.len() {
        if at == *expected {
            break;
        }
        let step = HISTORY.iter().find(|h| h.map == map && h.from == at)?;
        // Keys are carried over as they are.
        if step.to.key_size != step.from.key_size {
            return None;
        }
        steps.push(step);
        at = step.to;
    }
    (at == *expected && !steps.is_empty()).then_some(Migration {
        map,
        from: *from,
        steps,
    })
}

/// Decide what to do with `map` given this build's layout, what is pinned under its name and
/// what is pinned under [`old_pin_name`].
pub fn plan(
    map: &'static str,
    expected: &MapLayout,
    pinned: Option<&MapLayout>,
    old: Option<&MapLayout>,
) -> Result<Plan, LayoutError> {
    let unknown = |pin: String, pinned: &MapLayout| LayoutError::Unknown {
        pin,
        pinned: *pinned,
        expected: *expected,
    };
    let from_old =
        |old: &MapLayout| chain(map, old, expected).ok_or_else(|| unknown(old_pin_name(map), old));
    match (pinned, old) {
        (None, None) => Ok(Plan::Create),
        (Some(p), None) if p == expected => Ok(Plan::Adopt),
        (Some(p), Some(o)) if p == expected => from_old(o).map(Plan::Finish),
        (None, Some(o)) => from_old(o).map(Plan::Resume),
        (Some(p), None) => chain(map, p, expected)
            .map(Plan::Migrate)
            .ok_or_else(|| unknown(map.to_owned(), p)),
        (Some(p), Some(o)) => match chain(map, p, expected) {
            None => Err(unknown(map.to_owned(), p)),
            Some(_) => Err(LayoutError::TwoOld {
                map,
                old: old_pin_name(map),
                pinned: *p,
                old_layout: *o,
                expected: *expected,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use fork_common::{
        FlowAction, FlowKey, FlowStats, TurnAction, TurnChannelKey, TurnPeerKey, MAX_TURN_CHANNELS,
    };

    use super::*;

    /// This build's layout of the maps with history, from fork-common's types (what the object
    /// holds; the shell compares with the object itself).
    fn this_build(map: &str) -> MapLayout {
        let l = |t, k: usize, v: usize, n| layout(t, k as u32, v, n);
        match map {
            MAP_FLOWS => l(
                BPF_MAP_TYPE_HASH,
                size_of::<FlowKey>(),
                size_of::<FlowAction>(),
                MAX_FLOWS,
            ),
            MAP_FLOW_STATS => l(
                BPF_MAP_TYPE_ARRAY,
                size_of::<u32>(),
                size_of::<FlowStats>(),
                MAX_FLOWS,
            ),
            MAP_TURN_CHANNELS => l(
                BPF_MAP_TYPE_HASH,
                size_of::<TurnChannelKey>(),
                size_of::<TurnAction>(),
                MAX_TURN_CHANNELS,
            ),
            MAP_TURN_PEERS => l(
                BPF_MAP_TYPE_HASH,
                size_of::<TurnPeerKey>(),
                size_of::<TurnAction>(),
                MAX_TURN_CHANNELS,
            ),
            other => panic!("no history for {other}"),
        }
    }

    /// Fails when a pinned type changes without a HISTORY row: the rule on `Historical`.
    #[test]
    fn every_row_chains_to_this_builds_layout() {
        for h in HISTORY {
            let m = chain(h.map, &h.from, &this_build(h.map)).unwrap_or_else(|| {
                panic!(
                    "{}: the {} layout no longer converts to this build's ({}): a pinned map's \
                     layout changed; add a HISTORY row from the replaced layout, its conversion \
                     and a test (docs/maps.md \"Upgrades and layout changes\")",
                    h.map,
                    h.until,
                    this_build(h.map)
                )
            });
            let out = m
                .convert_value(&vec![0; h.from.value_size as usize])
                .expect("a value of the row's size converts");
            assert_eq!(out.len(), this_build(h.map).value_size as usize, "{h:?}");
        }
    }

    /// A tripwire for the rule on `Historical`, over every pinned map (with history or not):
    /// the sizes as last recorded here. When this fails, a pinned map's layout changed: add the
    /// HISTORY row, its conversion and test, then record the new sizes here.
    #[test]
    fn pinned_sizes_are_the_recorded_ones() {
        use fork_common::{
            Config, NeighKey, NeighValue, MAP_CONFIG, MAP_COUNTERS, MAP_NEIGHBOURS, MAP_TX_PORTS,
            MAP_XSKS, MAX_NEIGHBOURS, MAX_REASONS, MAX_TX_PORTS, MAX_XSKS,
        };
        let now = [
            (
                MAP_FLOWS,
                size_of::<FlowKey>(),
                size_of::<FlowAction>(),
                MAX_FLOWS,
            ),
            (MAP_FLOW_STATS, 4, size_of::<FlowStats>(), MAX_FLOWS),
            (MAP_TX_PORTS, 4, 8, MAX_TX_PORTS),
            (MAP_XSKS, 4, 4, MAX_XSKS),
            (MAP_COUNTERS, 4, 8, MAX_REASONS),
            (MAP_CONFIG, 4, size_of::<Config>(), 1),
            (
                MAP_NEIGHBOURS,
                size_of::<NeighKey>(),
                size_of::<NeighValue>(),
                MAX_NEIGHBOURS,
            ),
            (
                MAP_TURN_CHANNELS,
                size_of::<TurnChannelKey>(),
                size_of::<TurnAction>(),
                MAX_TURN_CHANNELS,
            ),
            (
                MAP_TURN_PEERS,
                size_of::<TurnPeerKey>(),
                size_of::<TurnAction>(),
                MAX_TURN_CHANNELS,
            ),
        ];
        let recorded = [
            (MAP_FLOWS, 20, 116, 65_536),
            (MAP_FLOW_STATS, 4, 128, 65_536),
            (MAP_TX_PORTS, 4, 8, 64),
            (MAP_XSKS, 4, 4, 64),
            (MAP_COUNTERS, 4, 8, 64),
            (MAP_CONFIG, 4, 8, 1),
            (MAP_NEIGHBOURS, 24, 16, 4096),
            (MAP_TURN_CHANNELS, 40, 120, 65_536),
            (MAP_TURN_PEERS, 40, 120, 65_536),
        ];
        assert_eq!(now.map(|m| m.0), fork_common::ALL_MAPS);
        for (n, r) in now.iter().zip(&recorded) {
            assert_eq!(
                n, r,
                "{}: a pinned map's layout changed (key, value, max_entries): add a HISTORY row \
                 from the recorded layout, its conversion and a test, then record the new one \
                 here (docs/maps.md \"Upgrades and layout changes\")",
                n.0
            );
        }
    }

    #[test]
    fn rows_only_for_maps_the_shell_copies() {
        // The shell reads and writes values of one entry at a time: per-CPU maps (a value per
        // CPU) and fd maps would need another copy path.
        for h in HISTORY {
            assert!(
                matches!(h.from.map_type, BPF_MAP_TYPE_HASH | BPF_MAP_TYPE_ARRAY)
                    && h.from.map_type == h.to.map_type,
                "{h:?}"
            );
        }
    }

    /// v1 prefix bytes: distinct values so a shifted copy shows.
    fn pattern(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(1))
            .collect()
    }

    #[test]
    fn flow_action_keeps_every_v1_byte_and_zero_renumber() {
        let old = pattern(v1::FLOW_ACTION);
        let new = flow_action_v1_to_v2(&old).unwrap();
        assert_eq!(new.len(), size_of::<FlowAction>());
        let at = offset_of!(FlowAction, renumber);
        assert_eq!(at, v1::FLOW_ACTION);
        assert_eq!(new[..at], old[..]);
        assert!(new[at..].iter().all(|b| *b == 0));
    }

    #[test]
    fn flow_stats_keeps_counters_and_zeroes_inject_state() {
        let old = pattern(v1::FLOW_STATS);
        let new = flow_stats_v1_to_v2(&old).unwrap();
        assert_eq!(new.len(), size_of::<FlowStats>());
        let at = offset_of!(FlowStats, out_ssrc);
        assert_eq!(new[..at], old[..]);
        assert!(new[at..].iter().all(|b| *b == 0));
    }

    #[test]
    fn turn_action_moves_the_channel_behind_the_longer_flow_action() {
        let mut old = pattern(v1::TURN_ACTION);
        // channel 0x4001 in network order at v1's offset, then v1's six padding bytes.
        old[104..106].copy_from_slice(&0x4001u16.to_be_bytes());
        old[106..].fill(0);
        let new = turn_action_v1_to_v2(&old).unwrap();
        assert_eq!(new.len(), size_of::<TurnAction>());
        let flow = offset_of!(TurnAction, flow);
        let renumber = flow + offset_of!(FlowAction, renumber);
        let channel = offset_of!(TurnAction, channel_be);
        assert_eq!(channel, 116);
        assert_eq!(new[flow..renumber], old[..104]);
        assert!(new[renumber..channel].iter().all(|b| *b == 0));
        assert_eq!(new[channel..channel + 2], 0x4001u16.to_be_bytes());
        assert!(new[channel + 2..].iter().all(|b| *b == 0));
    }

    #[test]
    fn wrong_length_is_a_typed_error_naming_the_map() {
        let flows = plan(
            MAP_FLOWS,
            &this_build(MAP_FLOWS),
            Some(&HISTORY[0].from),
            None,
        )
        .unwrap();
        let Plan::Migrate(m) = flows else {
            panic!("{flows:?}")
        };
        assert_eq!(
            m.convert_value(&[0; 100]),
            Err(ConvertError {
                map: MAP_FLOWS,
                until: "398455e",
                expected: 104,
                got: 100
            })
        );
        assert_eq!(turn_action_v1_to_v2(&[0; 120]).unwrap_err().got, 120);
        assert_eq!(flow_stats_v1_to_v2(&[]).unwrap_err().expected, 104);
    }

    #[test]
    fn plans() {
        let exp = this_build(MAP_FLOWS);
        let v1 = HISTORY[0].from;
        let mut odd = exp;
        odd.value_size = 100;
        assert_eq!(plan(MAP_FLOWS, &exp, None, None), Ok(Plan::Create));
        assert_eq!(plan(MAP_FLOWS, &exp, Some(&exp), None), Ok(Plan::Adopt));
        let migrate = |p: Result<Plan, LayoutError>| match p {
            Ok(Plan::Migrate(m)) => ("migrate", m.from),
            Ok(Plan::Resume(m)) => ("resume", m.from),
            Ok(Plan::Finish(m)) => ("finish", m.from),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            migrate(plan(MAP_FLOWS, &exp, Some(&v1), None)),
            ("migrate", v1)
        );
        assert_eq!(
            migrate(plan(MAP_FLOWS, &exp, None, Some(&v1))),
            ("resume", v1)
        );
        assert_eq!(
            migrate(plan(MAP_FLOWS, &exp, Some(&exp), Some(&v1))),
            ("finish", v1)
        );
        // Another map's history does not apply.
        let stats_v1 = HISTORY[1].from;
        assert!(matches!(
            plan(MAP_FLOWS, &exp, Some(&stats_v1), None),
            Err(LayoutError::Unknown { .. })
        ));
        assert_eq!(
            plan(MAP_FLOWS, &exp, Some(&odd), None),
            Err(LayoutError::Unknown {
                pin: "FLOWS".into(),
                pinned: odd,
                expected: exp
            })
        );
        assert!(matches!(
            plan(MAP_FLOWS, &exp, None, Some(&odd)),
            Err(LayoutError::Unknown { pin, .. }) if pin == "FLOWS-old"
        ));
        assert!(matches!(
            plan(MAP_FLOWS, &exp, Some(&v1), Some(&v1)),
            Err(LayoutError::TwoOld { .. })
        ));
        // A different max_entries is a different layout.
        let mut bigger = v1;
        bigger.max_entries *= 2;
        assert!(plan(MAP_FLOWS, &exp, Some(&bigger), None).is_err());
    }

    #[test]
    fn error_names_map_and_both_sizes() {
        let exp = this_build(MAP_FLOWS);
        let mut odd = exp;
        odd.value_size = 100;
        let e = plan(MAP_FLOWS, &exp, Some(&odd), None).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("FLOWS"), "{text}");
        assert!(text.contains("value 100 B"), "{text}");
        assert!(text.contains("value 116 B"), "{text}");
        assert!(text.contains("type hash"), "{text}");
    }

    #[test]
    fn the_kernel_marks_devmaps_read_only_for_programs() {
        let devmap = layout(BPF_MAP_TYPE_DEVMAP_HASH, 4, 8, 64);
        assert_eq!(devmap.as_created().flags, BPF_F_RDONLY_PROG);
        assert_eq!(HISTORY[0].from.as_created(), HISTORY[0].from);
    }

    #[test]
    fn old_pins_are_legal_bpffs_names() {
        assert_eq!(old_pin_name("FLOWS"), "FLOWS-old");
        assert!(!old_pin_name("TURN_PEERS").contains('.'));
    }
}
