//! The agent's TURN channel offload: kernel entries for channels turn-server hands over
//! (`turn_channel_add`/`turn_channel_del`, `show_turn`; decisions in core::turn_offload).

use super::*;

impl Agent {
    pub(super) fn turn_channel_add(&mut self, spec: ChannelSpec) -> Result<Value> {
        for addr in [spec.server, spec.relay] {
            if self.orch.table().flows().any(|f| f.local == addr) {
                anyhow::bail!("{addr} is a media flow's address, not a TURN address");
            }
        }
        let markers = self.turn.prepare(&spec)?;
        let to_peer_stats = self.orch.table_mut().reserve_stats(spec.client)?;
        let to_client_stats = match self.orch.table_mut().reserve_stats(spec.client) {
            Ok(s) => s,
            Err(e) => {
                self.orch.table_mut().release_stats(to_peer_stats);
                return Err(e.into());
            }
        };
        let written = self.write_turn_channel(&spec, &markers, to_peer_stats, to_client_stats);
        if let Err(e) = written {
            let _ = self
                .dp
                .turn_channels
                .remove(&turn_offload::channel_key(&spec));
            let _ = self.dp.turn_peers.remove(&turn_offload::peer_key(&spec));
            self.orch.table_mut().release_stats(to_peer_stats);
            self.orch.table_mut().release_stats(to_client_stats);
            return Err(e);
        }
        self.turn.commit(Offloaded {
            spec,
            to_peer_stats,
            to_client_stats,
        });
        info!(client = %spec.client, channel = spec.number, peer = %spec.peer, "TURN channel relayed in kernel");
        Ok(serde_json::to_value(ChannelAdded {
            to_peer_stats,
            to_client_stats,
        })?)
    }

    fn write_turn_channel(
        &mut self,
        spec: &ChannelSpec,
        markers: &[MapOp],
        to_peer_stats: u32,
        to_client_stats: u32,
    ) -> Result<()> {
        let mut to_peer = relay_action(spec.relay, spec.peer, to_peer_stats);
        (to_peer.egress_ifindex, to_peer.nexthop_be) = {
            let (i, hop) = self.prepare_egress(spec.peer.ip())?;
            (i, fork_common::addr_words(hop).1)
        };
        let mut to_client = relay_action(spec.server, spec.client, to_client_stats);
        (to_client.egress_ifindex, to_client.nexthop_be) = {
            let (i, hop) = self.prepare_egress(spec.client.ip())?;
            (i, fork_common::addr_words(hop).1)
        };
        for slot in [to_peer_stats, to_client_stats] {
            self.dp.flow_stats.set(slot, FlowStats::default(), 0)?;
        }
        // Channel entries before the markers: a packet that finds a marker finds its channel.
        self.dp.turn_channels.insert(
            turn_offload::channel_key(spec),
            TurnAction {
                flow: to_peer,
                channel_be: 0,
                _pad: [0; 2],
            },
            0,
        )?;
        self.dp.turn_peers.insert(
            turn_offload::peer_key(spec),
            TurnAction {
                flow: to_client,
                channel_be: spec.number.to_be(),
                _pad: [0; 2],
            },
            0,
        )?;
        self.apply_turn_ops(markers)
    }

    pub(super) fn apply_turn_ops(&mut self, ops: &[MapOp]) -> Result<()> {
        for op in ops {
            match op {
                MapOp::AddListener(k) | MapOp::AddRelay(k) => {
                    let flag = if matches!(op, MapOp::AddListener(_)) {
                        fork_common::FLOW_F_TURN_LISTENER
                    } else {
                        fork_common::FLOW_F_TURN_RELAY
                    };
                    let marker = fork_common::FlowAction {
                        family: k.family,
                        flags: flag,
                        ..Default::default()
                    };
                    self.dp
                        .flows
                        .insert(*k, marker, 0)
                        .context("marking a TURN address in FLOWS")?;
                }
                MapOp::DelRelay(k) => self
                    .dp
                    .flows
                    .remove(k)
                    .context("unmarking a TURN relayed address")?,
                MapOp::DelChannel(k) => self
                    .dp
                    .turn_channels
                    .remove(k)
                    .context("removing a TURN channel")?,
                MapOp::DelPeer(k) => self
                    .dp
                    .turn_peers
                    .remove(k)
                    .context("removing a TURN peer")?,
            }
        }
        Ok(())
    }

    pub(super) fn show_turn(&self) -> Result<Value> {
        let stat = |i: u32| {
            let s = self.dp.flow_stats.get(&i, 0).unwrap_or_default();
            TurnDirection {
                packets: s.packets,
                bytes: s.bytes,
                passed: s.passed,
            }
        };
        let rows: Vec<TurnRow> = self
            .turn
            .channels()
            .map(|o| TurnRow {
                client: o.spec.client,
                server: o.spec.server,
                channel: o.spec.number,
                relay: o.spec.relay,
                peer: o.spec.peer,
                to_peer: stat(o.to_peer_stats),
                to_client: stat(o.to_client_stats),
            })
            .collect();
        Ok(serde_json::to_value(rows)?)
    }
}
