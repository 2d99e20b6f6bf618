//! Tap fan-out (sans-IO): which fork streams the packets of one kernel tap feed.
//!
//! Role: the kernel forks a flow under one tap id however many forks use it (core::flows); each
//! fork's speech server knows the fork's own stream ids. This table maps a tap to the streams
//! fed from it, so the stream service hands each fork its copy of a frame under its own id
//! (docs/speech-protocol.md §3, bytes 4–7).
//! Inputs: [`FanOut::add`] when the stream service takes a fork (its `(tap, stream)` pairs),
//! [`FanOut::remove`] when it stops. Output: [`FanOut::streams`], the streams of a tap, looked
//! up once per forked packet without allocating.

use std::collections::HashMap;

use super::IdMap;

/// Tap → stream ids, and each fork's pairs for removal. See the module docs.
#[derive(Debug, Default)]
pub struct FanOut {
    by_tap: IdMap<u32, Vec<u32>>,
    by_fork: HashMap<String, Vec<(u32, u32)>>,
}

impl FanOut {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The fork `guid` now takes `(tap, stream)` pairs (replacing what it had, for a fork
    /// re-announced after a restart).
    pub fn add(&mut self, guid: &str, pairs: impl IntoIterator<Item = (u32, u32)>) {
        self.remove(guid);
        let pairs: Vec<(u32, u32)> = pairs.into_iter().collect();
        for &(tap, stream) in &pairs {
            let streams = self.by_tap.entry(tap).or_default();
            if !streams.contains(&stream) {
                streams.push(stream);
            }
        }
        self.by_fork.insert(guid.to_owned(), pairs);
    }

    /// The fork `guid` stopped: its streams are no longer fed.
    pub fn remove(&mut self, guid: &str) {
        let Some(pairs) = self.by_fork.remove(guid) else {
            return;
        };
        for (tap, stream) in pairs {
            if let Some(streams) = self.by_tap.get_mut(&tap) {
                streams.retain(|s| *s != stream);
                if streams.is_empty() {
                    self.by_tap.remove(&tap);
                }
            }
        }
    }

    /// The streams fed from `tap`, in the order their forks started (empty for an unknown tap).
    pub fn streams(&self, tap: u32) -> &[u32] {
        self.by_tap.get(&tap).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fork_on_a_tap_is_fed_until_it_stops() {
        let mut f = FanOut::new();
        f.add("g1", [(1, 1), (2, 2)]);
        f.add("g2", [(1, 3), (2, 4)]);
        assert_eq!(f.streams(1), &[1, 3]);
        assert_eq!(f.streams(2), &[2, 4]);
        f.remove("g1");
        assert_eq!(f.streams(1), &[3]);
        // Re-announcing a fork does not feed it twice.
        f.add("g2", [(1, 3), (2, 4)]);
        assert_eq!(f.streams(2), &[4]);
        f.remove("g2");
        f.remove("g2");
        assert_eq!(f.streams(1), &[] as &[u32]);
        assert!(f.by_tap.is_empty() && f.by_fork.is_empty());
    }
}
