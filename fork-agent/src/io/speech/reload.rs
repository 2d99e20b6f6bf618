//! SIGHUP for the stream service: new `[[speech_server]]` and `[destinations]` settings,
//! applied by the service task between two inputs, so no fork sees half a change.
//!
//! - An unchanged server (same settings, same TLS file bytes) keeps its pool, connections and
//!   per-request destination pools: its calls never notice.
//! - A changed server gets a new pool under its name; its old pools (its own and its
//!   per-request destinations') retire: their streams go on, on their connections, until they
//!   stop; new forks use the new settings; a retired pool is dropped once idle.
//! - A removed server: new forks naming it are refused (`no speech_server named …`); its
//!   running streams go on and its pools retire the same way.
//! - `[destinations]` (allow-list, `max_active`) applies to the next fork check.
//!
//! Everything is built before anything is swapped: a new definition that cannot be built (a
//! TLS file that does not read) refuses the reload whole.

use std::{collections::HashMap, sync::Arc};

use anyhow::Result;
use rand::{rngs::StdRng, SeedableRng};
use tracing::info;

use super::{read, target, ServerEntry, ServerStats, Task};
use crate::{
    config::{DestinationsConfig, SpeechServerConfig},
    core::{destinations::AllowList, session::ServerId},
};

/// What a reload changed, by server name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Servers new in the file.
    pub added: Vec<String>,
    /// Servers whose settings (or TLS files) changed: new forks use the new definition.
    pub changed: Vec<String>,
    /// Servers no longer in the file.
    pub removed: Vec<String>,
    /// Pools still carrying streams under a replaced definition.
    pub retiring: usize,
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "speech servers added: {}; changed: {}; removed: {}; pools retiring: {}",
            list(&self.added),
            list(&self.changed),
            list(&self.removed),
            self.retiring
        )
    }
}

impl Task {
    /// Registers a configured server: its pool, its target and its counters (kept across a
    /// reload that changes it, so a server's counters never restart).
    pub(super) fn add_entry(&mut self, entry: &ServerEntry) -> Result<ServerId> {
        let s = &entry.cfg;
        let profile = s.protocol.profile;
        let id = self
            .core
            .add_server(
                &s.name,
                &entry.url.host_port(),
                s.pool_config_for(profile),
                profile.awaits_acceptance(),
                // Reconnect jitter from the OS generator: agents restarted together must not
                // share a seed.
                Box::new(StdRng::from_entropy()),
            )
            .map_err(|e| anyhow::anyhow!("speech_server {}: {e}", s.name))?;
        let stats = self
            .stats
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(s.name.clone())
            .or_insert_with(|| Arc::new(ServerStats::default()))
            .clone();
        let t = target(
            entry,
            entry.url.clone(),
            s.token.clone(),
            s.protocol.clone(),
            None,
            stats.frame_latency.clone(),
        );
        self.targets.insert(id, Arc::new(t));
        self.by_name.insert(s.name.clone(), (id, stats));
        Ok(id)
    }

    /// Applies new settings; see the module comment.
    pub(super) fn reload(
        &mut self,
        servers: &[SpeechServerConfig],
        destinations: &DestinationsConfig,
    ) -> Result<Changes> {
        let new = servers
            .iter()
            .map(ServerEntry::build)
            .collect::<Result<Vec<_>>>()?;
        let allow = AllowList::parse(&destinations.allow)
            .map_err(|e| anyhow::anyhow!("destinations.{e}"))?;
        let mut changes = Changes::default();
        let mut entries = HashMap::new();
        let mut stale = Vec::new();
        {
            let policy = read(&self.policy);
            for entry in &new {
                let name = &entry.cfg.name;
                match policy.servers.get(name) {
                    Some(old) if old.same_as(entry) => {}
                    Some(_) => {
                        changes.changed.push(name.clone());
                        stale.push(name.clone());
                    }
                    None => changes.added.push(name.clone()),
                }
            }
            for name in policy.servers.keys() {
                if !new.iter().any(|e| &e.cfg.name == name) {
                    changes.removed.push(name.clone());
                    stale.push(name.clone());
                }
            }
        }
        changes.removed.sort();
        for name in &stale {
            self.retire(name);
        }
        for entry in new {
            let name = entry.cfg.name.clone();
            if changes.added.contains(&name) || changes.changed.contains(&name) {
                self.add_entry(&entry)?;
            }
            entries.insert(name, entry);
        }
        {
            let mut policy = self.policy.write().unwrap_or_else(|e| e.into_inner());
            // Unchanged entries keep the TLS settings their pools were built with; removed
            // names are simply not carried over.
            let mut old = std::mem::take(&mut policy.servers);
            for (name, entry) in entries {
                let kept = old.remove(&name).filter(|o| o.same_as(&entry));
                policy.servers.insert(name, kept.unwrap_or(entry));
            }
            policy.allow = allow;
            policy.max_active = destinations.max_active;
        }
        let retired: Vec<ServerId> = self.retired.keys().copied().collect();
        for id in retired {
            self.drop_if_idle(id);
        }
        changes.retiring = self.retired.len();
        info!("reload: {changes}");
        Ok(changes)
    }

    /// Takes `name`'s pools (its own and its per-request destinations') out of use for new
    /// forks; they are dropped once idle. Views show them as `NAME (retired N)`, N counting
    /// retirements, so they never share a name with the pools that replaced them.
    fn retire(&mut self, name: &str) {
        let mut ids = Vec::new();
        if let Some((id, _)) = self.by_name.remove(name) {
            ids.push(id);
        }
        let dests: Vec<_> = self
            .dests
            .iter()
            .filter(|(k, _)| k.server == name)
            .map(|(k, id)| (k.clone(), *id))
            .collect();
        for (key, id) in dests {
            self.dests.remove(&key);
            self.dest_of.remove(&id);
            ids.push(id);
        }
        for id in ids {
            self.retirements += 1;
            let shown = format!(
                "{} (retired {})",
                self.core.server_name(id),
                self.retirements
            );
            self.core.rename_server(id, shown);
            self.retired.insert(id, name.to_owned());
        }
    }

    /// Drops the counters of a server no longer configured once none of its pools is left.
    pub(super) fn forget_stats_if_unused(&mut self, name: &str) {
        let in_use = self.by_name.contains_key(name) || self.retired.values().any(|n| n == name);
        if !in_use {
            self.stats
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
        }
    }
}
