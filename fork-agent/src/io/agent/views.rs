//! The agent's `show_flows`, `flow_stats` and `show_counters` answers: table rows from the flow
//! table and the kernel's counters.

use super::*;
use crate::core::flows::FlowEntry;

impl Agent {
    pub(super) fn show_flows(&self) -> Result<Value> {
        let now_ns = monotonic_ns();
        let rows: Vec<FlowRow> = self
            .orch
            .table()
            .flows()
            .map(|f| self.flow_row(f, now_ns))
            .collect();
        Ok(serde_json::to_value(rows)?)
    }

    /// `flow_stats`: the rows of the flows at `locals`, in that order; unknown ones left out.
    pub(super) fn flow_stats(&self, locals: &[SocketAddr]) -> Result<Value> {
        let now_ns = monotonic_ns();
        let table = self.orch.table();
        let rows: Vec<FlowRow> = locals
            .iter()
            .filter_map(|l| table.flow(l))
            .map(|f| self.flow_row(f, now_ns))
            .collect();
        Ok(serde_json::to_value(rows)?)
    }

    fn flow_row(&self, f: &FlowEntry, now_ns: u64) -> FlowRow {
        let s = self
            .dp
            .flow_stats
            .get(&f.stats_index, 0)
            .unwrap_or_default();
        let in_kernel = self
            .dp
            .flows
            .get(&fork_common::FlowKey::new(f.local), 0)
            .is_ok();
        // rtpengine operators' complaint: a call silently left in user space. Say which.
        let user = self.fallback.stats(&f.local);
        let user_packets = user.map_or(0, |u| u.packets.load(Ordering::Relaxed));
        let path = if !in_kernel {
            FlowPath::Missing
        } else if s.packets > 0 && user_packets == 0 && s.passed == 0 {
            FlowPath::Kernel
        } else if s.packets > 0 {
            FlowPath::KernelAndUserSpace
        } else if user_packets > 0 || s.passed > 0 {
            FlowPath::UserSpace
        } else {
            FlowPath::Idle
        };
        FlowRow {
            local: f.local,
            src: f.src,
            dst: f.dst,
            stream_id: f.stream_id,
            stats_index: f.stats_index,
            path,
            packets: s.packets,
            bytes: s.bytes,
            forked: s.forked,
            lost: s.lost,
            out_of_order: s.out_of_order,
            wrong_pt: s.wrong_pt,
            errors: s.errors,
            strict_drops: s.strict_drops,
            passed: s.passed,
            dtmf: s.dtmf,
            rtcp: s.rtcp,
            ssrc: s.ssrc,
            last_seq: s.last_seq,
            idle_ms: (s.last_seen_ns != 0)
                .then(|| now_ns.saturating_sub(s.last_seen_ns) / 1_000_000),
            userspace_packets: user_packets,
            userspace_bytes: user.map_or(0, |u| u.bytes.load(Ordering::Relaxed)),
            userspace_forked: user.map_or(0, |u| u.forked.load(Ordering::Relaxed)),
            userspace_fork_drops: user.map_or(0, |u| u.fork_drops.load(Ordering::Relaxed)),
            fallback: if user.is_some() {
                "bound"
            } else {
                "unavailable"
            }
            .to_owned(),
        }
    }

    pub(super) fn show_counters(&self) -> Result<Value> {
        let kernel: serde_json::Map<String, Value> = self
            .dp
            .counters()?
            .into_iter()
            .map(|(r, v)| (r.name().to_owned(), json!(v)))
            .collect();
        let st = &self.stats;
        let servers: serde_json::Map<String, Value> = self
            .speech
            .stats
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    json!({
                        "connected": s.connected.load(Ordering::Relaxed) > 0,
                        "connections_open": s.connected.load(Ordering::Relaxed),
                        "frames_sent": s.wire.frames_sent.load(Ordering::Relaxed),
                        "bytes_sent": s.wire.bytes_sent.load(Ordering::Relaxed),
                        "frames_dropped": s.frames_dropped.load(Ordering::Relaxed),
                        "connects": s.connects.load(Ordering::Relaxed),
                        "failures": s.failures.load(Ordering::Relaxed),
                        "protocol_errors": s.protocol_errors.load(Ordering::Relaxed),
                    }),
                )
            })
            .collect();
        let c = self.control_stats.snapshot();
        Ok(json!({
            "control_socket": {
                "open": c.open,
                "admitted": c.admitted,
                "refused_per_user": c.refused_per_address,
                "refused_global": c.refused_global,
                "expired_no_request": c.expired_pending,
                "expired_idle": c.expired_idle,
                "accept_errors": c.accept_errors,
                "closed_too_large": c.closed_too_large,
            },
            "kernel": kernel,
            "user": {
                "xsk_frames": st.xsk_frames.load(Ordering::Relaxed),
                "xsk_bad_frames": st.xsk_bad_frames.load(Ordering::Relaxed),
                "media_queue_drops": st.media_queue_drops.load(Ordering::Relaxed),
                "xsk_ring_drops": st.xsk_ring_drops.load(Ordering::Relaxed),
                "dtmf_events": st.dtmf_events.load(Ordering::Relaxed),
                // Packets the kernel handed to the stack and the fallback relayed.
                "userspace_relayed": self.fallback.total_packets(),
                "userspace_forked": self.fallback.total_forked(),
            },
            "servers": servers,
            "return_audio": self.speech.bot_counters.json(),
        }))
    }
}
