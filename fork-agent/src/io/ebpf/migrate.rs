//! The shell around `core::map_layout`: reads what is pinned, refuses pins this build cannot
//! use before touching any, and migrates those of an older layout with their entries while the
//! old programs keep relaying (docs/maps.md "Upgrades and layout changes").
//!
//! Call order, driven by `DataPlane`: [`Migrations::prepare`] before the object is loaded (checks
//! every map, reads and converts the entries of maps that carry [`Carry::Entries`], then moves
//! each old pin to `NAME-old` so the loader creates the new map under `NAME`);
//! [`Migrations::fill_entries`] once the loader made the new maps; [`Migrations::before_swap`]
//! just before the new relay is swapped into the pinned links (copies `FLOW_STATS` slots);
//! [`Migrations::finish`] after the swap (removes the `-old` pins). [`Migrations::rollback`]
//! puts the old pins back if the start fails before the swap.

use std::{
    collections::{BTreeSet, HashMap},
    io,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::maps::{MapData, MapInfo};
use aya_obj::generated::bpf_cmd;
use tracing::{info, warn};

use crate::core::map_layout::{
    old_pin_name, plan, Carry, LayoutError, MapLayout, Migration, Plan, BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_HASH,
};

/// This build's layout of every pinned map, from the eBPF object the loader will load (so what
/// the loader would create, not numbers typed here).
pub fn expected_layouts(object: &[u8]) -> Result<HashMap<&'static str, MapLayout>> {
    let obj = aya_obj::Object::parse(object).context("parsing the embedded eBPF object")?;
    fork_common::ALL_MAPS
        .iter()
        .map(|&name| {
            let m = obj
                .maps
                .get(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))?;
            let defined = MapLayout {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
                flags: m.map_flags(),
            };
            Ok((name, defined.as_created()))
        })
        .collect()
}

/// The layout of the map pinned at `path`, or `None` when nothing is pinned there.
pub fn pinned_layout(path: &Path) -> Result<Option<MapLayout>> {
    if !path.exists() {
        return Ok(None);
    }
    let info = MapInfo::from_pin(path)
        .with_context(|| format!("{} is pinned but is not a readable map", path.display()))?;
    Ok(Some(layout_of(&info)))
}

fn layout_of(info: &MapInfo) -> MapLayout {
    MapLayout {
        // aya names the types it knows; one it does not know is no layout of ours anyway.
        map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    }
}

/// Each map's name and what a start does with it.
pub type MapPlans = Vec<(&'static str, Result<Plan, LayoutError>)>;

/// What a start would do with every pinned map (`check-kernel` shows it; `prepare` acts on it).
pub fn plans(pin_dir: &Path, object: &[u8]) -> Result<MapPlans> {
    let expected = expected_layouts(object)?;
    fork_common::ALL_MAPS
        .iter()
        .map(|&name| {
            let pinned = pinned_layout(&pin_dir.join(name))?;
            let old = pinned_layout(&pin_dir.join(old_pin_name(name)))?;
            Ok((
                name,
                plan(name, &expected[name], pinned.as_ref(), old.as_ref()),
            ))
        })
        .collect()
}

/// The error a start refuses unusable pins with: what does not fit, and the way out.
fn refusal(pin_dir: &Path, errors: &[LayoutError]) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
    anyhow::anyhow!(
        "the maps pinned under {dir} do not fit this build, and nothing was changed:\n{}\n\
         Start the build that pinned them, or remove the pins with `fork-agent unpin --pin-dir \
         {dir}` and start again: that detaches the XDP programs, so calls in progress lose their \
         kernel relay (their audio stops) until sip-agent or ng-agent re-add their flows \
         (docs/maps.md \"Upgrades and layout changes\")",
        lines.join("\n"),
        dir = pin_dir.display()
    )
}

/// One map being migrated.
struct Migrating {
    migration: Migration,
    /// The old map, whatever its pin is called now.
    old: RawMap,
    /// This start moved the old pin to `NAME-old` (a rollback moves it back).
    moved_here: bool,
    /// Nothing was pinned under `NAME` when this start began: the loader made the new map.
    new_created: bool,
    /// Converted entries waiting for the new map ([`Carry::Entries`]).
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Entries written into the new map.
    copied: usize,
    /// Entries the new map held already (a migration that stopped half way), left as they are.
    kept: usize,
}

/// The migrations of one start.
#[derive(Default)]
pub struct Migrations {
    pin_dir: PathBuf,
    maps: Vec<Migrating>,
    /// The new relay runs (or is about to): the old pins are no longer restored.
    committed: bool,
    /// When `FLOW_STATS` was copied: the old relay's counts from then to the swap are lost.
    copied_at: Option<std::time::Instant>,
}

impl Migrations {
    /// Check every map under `pin_dir` against `object`; refuse (touching nothing) if one does
    /// not fit; otherwise read and convert what migrates and move the old pins aside.
    pub fn prepare(pin_dir: &Path, object: &[u8]) -> Result<Migrations> {
        let mut errors = Vec::new();
        let mut found = Vec::new();
        // (migration, read from the old pin, the loader makes the new map)
        for (_, plan) in plans(pin_dir, object)? {
            match plan {
                Ok(Plan::Create | Plan::Adopt) => {}
                Ok(Plan::Migrate(m)) => found.push((m, false, false)),
                Ok(Plan::Resume(m)) => found.push((m, true, true)),
                Ok(Plan::Finish(m)) => found.push((m, true, false)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(refusal(pin_dir, &errors));
        }
        // Everything is read and converted before the first pin moves, so a failure here
        // leaves the pins as they were.
        let mut maps = Vec::new();
        for (migration, at_old, new_created) in found {
            let name = migration.map;
            let pin = if at_old {
                pin_dir.join(old_pin_name(name))
            } else {
                pin_dir.join(name)
            };
            let old = RawMap::open(&pin)?;
            let mut entries = Vec::new();
            if migration.carry() == Carry::Entries {
                for (k, v) in old
                    .entries()
                    .with_context(|| format!("reading {}", pin.display()))?
                {
                    entries.push((k, migration.convert_value(&v)?));
                }
            }
            maps.push(Migrating {
                migration,
                old,
                moved_here: !at_old,
                new_created,
                entries,
                copied: 0,
                kept: 0,
            });
        }
        let mut this = Migrations {
            pin_dir: pin_dir.to_owned(),
            maps,
            committed: false,
            copied_at: None,
        };
        for i in 0..this.maps.len() {
            if !this.maps[i].moved_here {
                continue;
            }
            let name = this.maps[i].migration.map;
            let (from, to) = (pin_dir.join(name), pin_dir.join(old_pin_name(name)));
            if let Err(e) = std::fs::rename(&from, &to) {
                // Those moved already go back.
                this.maps.truncate(i);
                this.rollback();
                return Err(e)
                    .with_context(|| format!("moving {} to {}", from.display(), to.display()));
            }
        }
        Ok(this)
    }

    /// Whether `name` is being migrated (its new pin is this module's to remove on rollback).
    pub fn has(&self, name: &str) -> bool {
        self.maps.iter().any(|m| m.migration.map == name)
    }

    /// Whether [`Migrations::before_swap`] needs the `FLOW_STATS` slots in use.
    pub fn wants_slots(&self) -> bool {
        self.maps
            .iter()
            .any(|m| m.migration.carry() == Carry::StatsSlots)
    }

    /// Write the converted entries into the new maps the loader created (or found).
    pub fn fill_entries(&mut self) -> Result<()> {
        for m in &mut self.maps {
            if m.migration.carry() != Carry::Entries {
                continue;
            }
            let pin = self.pin_dir.join(m.migration.map);
            let new = RawMap::open(&pin)?;
            for (k, v) in std::mem::take(&mut m.entries) {
                // Never over an entry the new map has: a start that stopped after the swap left
                // the live one there.
                match new.update(&k, &v, BPF_NOEXIST) {
                    Ok(()) => m.copied += 1,
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => m.kept += 1,
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("writing a converted entry into {}", pin.display())
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// Copy the `FLOW_STATS` slots in `slots` from the old map, as late as possible: the old
    /// relay counts into it until it is swapped out right after this. A slot the new map has
    /// counted into already (a start that stopped after the swap) is left as it is.
    pub fn before_swap(&mut self, slots: &BTreeSet<u32>) -> Result<()> {
        for m in &mut self.maps {
            if m.migration.carry() != Carry::StatsSlots {
                continue;
            }
            let pin = self.pin_dir.join(m.migration.map);
            let new = RawMap::open(&pin)?;
            let mut old_value = vec![0u8; m.old.value_size];
            let mut new_value = vec![0u8; new.value_size];
            for slot in slots {
                let key = slot.to_ne_bytes();
                if !m.old.lookup(&key, &mut old_value)? || !new.lookup(&key, &mut new_value)? {
                    continue;
                }
                if new_value.iter().any(|b| *b != 0) {
                    m.kept += 1;
                    continue;
                }
                let converted = m.migration.convert_value(&old_value)?;
                new.update(&key, &converted, BPF_ANY)
                    .with_context(|| format!("writing slot {slot} of {}", pin.display()))?;
                m.copied += 1;
            }
        }
        self.committed = true;
        #[allow(clippy::disallowed_methods)]
        // io shell: a duration for the log, nothing waits on it
        let now = std::time::Instant::now();
        self.copied_at = Some(now);
        Ok(())
    }

    /// The new programs run: drop the old pins (their maps go with the old programs) and say
    /// what was migrated.
    pub fn finish(&mut self) {
        self.committed = true;
        let window_us = self.copied_at.map_or(0, |t| t.elapsed().as_micros() as u64);
        for m in self.maps.drain(..) {
            let old = self.pin_dir.join(old_pin_name(m.migration.map));
            if let Err(e) = std::fs::remove_file(&old) {
                warn!("migration: cannot unpin {}: {e}", old.display());
            }
            // For the counters: the old relay's counts between the copy and the swap are lost.
            let window_us = (m.migration.carry() == Carry::StatsSlots).then_some(window_us);
            info!(
                map = m.migration.map,
                from_layout = m.migration.until(),
                old = %m.migration.from,
                copied = m.copied,
                already_there = m.kept,
                counts_window_us = window_us,
                "migrated pinned map to this build's layout (docs/maps.md \"Upgrades and layout changes\")"
            );
        }
    }

    /// Start-up failed: before the swap, put every old pin back where it was (the old programs
    /// still use those maps); after it, leave the `-old` pins for the next start to finish.
    pub fn rollback(&mut self) {
        if self.committed {
            for m in &self.maps {
                warn!(
                    map = m.migration.map,
                    "migration interrupted after the new relay ran: the next start finishes it"
                );
            }
            return;
        }
        for m in self.maps.drain(..) {
            let name = m.migration.map;
            let (new, old) = (
                self.pin_dir.join(name),
                self.pin_dir.join(old_pin_name(name)),
            );
            let undo = if m.moved_here {
                // Replaces the new map's pin in one step.
                std::fs::rename(&old, &new)
            } else if m.new_created && new.exists() {
                std::fs::remove_file(&new)
            } else {
                Ok(())
            };
            if let Err(e) = undo {
                warn!("migration rollback: {name}: {e}");
            }
        }
    }
}

/// `BPF_ANY` / `BPF_NOEXIST` update flags (include/uapi/linux/bpf.h).
const BPF_ANY: u64 = aya_obj::generated::BPF_ANY as u64;
const BPF_NOEXIST: u64 = aya_obj::generated::BPF_NOEXIST as u64;

/// A map of any key and value size (an older layout has no Rust type), accessed through the
/// element commands of bpf(2). aya's typed maps need the sizes at compile time.
struct RawMap {
    data: MapData,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
}

/// The part of `union bpf_attr` that `BPF_MAP_{LOOKUP,UPDATE}_ELEM` and `BPF_MAP_GET_NEXT_KEY`
/// read (include/uapi/linux/bpf.h); the kernel zeroes the rest of a shorter attr.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value` or `next_key`.
    value: u64,
    flags: u64,
}

impl RawMap {
    fn open(path: &Path) -> Result<RawMap> {
        let data =
            MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
        let info = data.info()?;
        let l = layout_of(&info);
        // A per-CPU map's value is one per CPU; fd maps hold ids. Neither is copied this way.
        if !matches!(l.map_type, BPF_MAP_TYPE_HASH | BPF_MAP_TYPE_ARRAY) {
            bail!("{}: cannot copy the entries of a {l} map", path.display());
        }
        Ok(RawMap {
            data,
            key_size: l.key_size as usize,
            value_size: l.value_size as usize,
            max_entries: l.max_entries,
        })
    }

    fn call(&self, cmd: bpf_cmd, key: Option<&[u8]>, value: *mut u8, flags: u64) -> io::Result<()> {
        let attr = ElemAttr {
            map_fd: self.data.fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: key.map_or(0, |k| k.as_ptr() as u64),
            value: value as u64,
            flags,
        };
        // SAFETY: `attr` is an initialised prefix of `union bpf_attr` for the element commands,
        // passed with its size. Every caller checks that `key` has this map's key size and that
        // `value` points at a buffer of the key size (next key) or value size (lookup, update),
        // the sizes the kernel reads or writes for this fd.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd as libc::c_long,
                &attr as *const ElemAttr,
                std::mem::size_of::<ElemAttr>() as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn check(&self, key: &[u8], value_len: usize, value_size: usize) -> io::Result<()> {
        if key.len() != self.key_size || value_len != value_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "key {} B / value {} B for a map of key {} B / value {} B",
                    key.len(),
                    value_len,
                    self.key_size,
                    value_size
                ),
            ));
        }
        Ok(())
    }

    /// The value under `key` into `value`; false when there is none.
    fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
        self.check(key, value.len(), self.value_size)?;
        match self.call(
            bpf_cmd::BPF_MAP_LOOKUP_ELEM,
            Some(key),
            value.as_mut_ptr(),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn update(&self, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
        self.check(key, value.len(), self.value_size)?;
        // The kernel only reads through `value` for an update.
        self.call(
            bpf_cmd::BPF_MAP_UPDATE_ELEM,
            Some(key),
            value.as_ptr().cast_mut(),
            flags,
        )
    }

    /// Every entry (key, value). Only for maps nobody writes meanwhile: a hash map's walk starts
    /// over when the key it stands on is deleted.
    fn entries(&self) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut key: Option<Vec<u8>> = None;
        // A map holds at most max_entries keys; the bound only guards against a walk that
        // never ends.
        for _ in 0..=self.max_entries {
            let mut next = vec![0u8; self.key_size];
            if let Some(k) = &key {
                self.check(k, next.len(), self.key_size)?;
            }
            match self.call(
                bpf_cmd::BPF_MAP_GET_NEXT_KEY,
                key.as_deref(),
                next.as_mut_ptr(),
                0,
            ) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(e) => return Err(e),
            }
            let mut value = vec![0u8; self.value_size];
            if self.lookup(&next, &mut value)? {
                out.push((next.clone(), value));
            }
            key = Some(next);
        }
        Ok(out)
    }
}
