//! Kernel counters in `query` and `delete` replies, in rtpengine's shape as far as it maps.
//!
//! Role: a `query` or `delete` of a call with flows asks fork-agent for those flows' counters
//! (control API `flow_stats`) and holds its reply until they are in; [`Engine::handle_control_answer`]
//! then adds them to the held reply: per stream `stats` (`packets`, `bytes`, `errors` of what
//! arrived at that stream's local port and was relayed, kernel and user-space fallback
//! together), an RTCP stream beside each RTP one, and `totals` → `RTP` / `RTCP`. A fork-agent
//! that cannot answer leaves the counters out with a `warning`: a `delete` never fails for it.
//!
//! Inputs: [`Engine::handle_control_answer`] (every fork-agent answer, in place of
//! `handle_control_result`). Mapping and limits: docs/ng-protocol.md "Counters".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use control_api::{Answer, FlowRow, Op};

use super::{plus_one, ControlId, Engine, OpKind, ReplyKey, Request, Value};

/// rtpengine's per-stream counter triple.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Triple {
    packets: u64,
    bytes: u64,
    errors: u64,
}

impl Triple {
    fn of(row: &FlowRow) -> Triple {
        Triple {
            packets: row.packets + row.userspace_packets,
            bytes: row.bytes + row.userspace_bytes,
            // Dropped rather than relayed: malformed, or from a source strict-source refuses.
            errors: row.errors + row.strict_drops,
        }
    }

    fn add(&mut self, o: Triple) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.errors += o.errors;
    }

    fn value(self) -> Value {
        let n = |v: u64| Value::Int(i64::try_from(v).unwrap_or(i64::MAX));
        Value::dict([
            ("packets", n(self.packets)),
            ("bytes", n(self.bytes)),
            ("errors", n(self.errors)),
        ])
    }
}

impl Engine {
    /// `query` with the call's counters to come.
    pub(super) fn query_with_counters(
        &mut self,
        req: &Request,
        key: &ReplyKey,
    ) -> Result<Value, String> {
        let reply = self.query(req)?;
        self.request_counters(&req.call_id, key);
        Ok(reply)
    }

    /// Asks fork-agent for the counters of `call_id`'s flows, holding the reply `key` until they
    /// are in (before any `flow_del` the same request causes: operations run in order).
    pub(super) fn request_counters(&mut self, call_id: &str, key: &ReplyKey) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        let locals: Vec<SocketAddr> = call.flows.keys().copied().collect();
        if locals.is_empty() {
            return;
        }
        self.control(
            call_id,
            OpKind::FlowStats,
            Op::FlowStats { locals },
            Some(key),
        );
    }

    /// fork-agent's answer to the operation `id` (`Err` carries its error text). Counters are
    /// added to the reply they were asked for; everything else goes on as
    /// [`Engine::handle_control_result`].
    pub fn handle_control_answer(
        &mut self,
        now: Instant,
        id: ControlId,
        result: Result<Answer, String>,
    ) {
        let stats_for = self
            .pending
            .get(&id)
            .filter(|p| p.kind == OpKind::FlowStats)
            .and_then(|p| p.reply.clone());
        let Some(key) = stats_for else {
            self.handle_control_result(now, id, result.map(|_| ()));
            return;
        };
        if let Some(held) = self.held.get_mut(&key) {
            match result {
                Ok(Answer::Flows(rows)) => add_counters(&mut held.ok, &rows),
                Ok(other) => warn(&mut held.ok, &format!("unexpected answer {other:?}")),
                Err(e) => warn(&mut held.ok, &e),
            }
        }
        // Missing counters never make the reply an error.
        self.handle_control_result(now, id, Ok(()));
    }
}

fn warn(reply: &mut Value, why: &str) {
    if let Value::Dict(d) = reply {
        d.insert(
            b"warning".to_vec(),
            Value::str(&format!("no packet counters: fork-agent: {why}")),
        );
    }
}

fn dict_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    match v {
        Value::Dict(d) => d.get_mut(key.as_bytes()),
        _ => None,
    }
}

fn local_of(stream: &Value) -> Option<SocketAddr> {
    let ip = stream.get("local address")?.as_str()?.parse().ok()?;
    let Some(Value::Int(port)) = stream.get("local port") else {
        return None;
    };
    Some(SocketAddr::new(ip, u16::try_from(*port).ok()?))
}

/// Adds `stats` to every stream of the `query` dictionary `reply` whose local address has a
/// row, an RTCP stream (local port + 1) beside each RTP one that has an RTCP row, and `totals`.
fn add_counters(reply: &mut Value, rows: &[FlowRow]) {
    let by_local: BTreeMap<SocketAddr, Triple> =
        rows.iter().map(|r| (r.local, Triple::of(r))).collect();
    let (mut rtp, mut rtcp) = (Triple::default(), Triple::default());
    if let Some(Value::Dict(tags)) = dict_mut(reply, "tags") {
        for tag in tags.values_mut() {
            let Some(Value::List(medias)) = dict_mut(tag, "medias") else {
                continue;
            };
            for media in medias {
                let Some(Value::List(streams)) = dict_mut(media, "streams") else {
                    continue;
                };
                let mut rtcp_streams = Vec::new();
                for stream in streams.iter_mut() {
                    let Some(local) = local_of(stream) else {
                        continue;
                    };
                    if let (Some(t), Value::Dict(d)) = (by_local.get(&local), &mut *stream) {
                        rtp.add(*t);
                        d.insert(b"stats".to_vec(), t.value());
                    }
                    let Some(rtcp_local) = plus_one(local) else {
                        continue;
                    };
                    if let Some(t) = by_local.get(&rtcp_local) {
                        rtcp.add(*t);
                        rtcp_streams.push(Value::dict([
                            ("local port", Value::Int(i64::from(rtcp_local.port()))),
                            ("local address", Value::str(&rtcp_local.ip().to_string())),
                            ("RTCP", Value::Int(1)),
                            ("stats", t.value()),
                        ]));
                    }
                }
                streams.extend(rtcp_streams);
            }
        }
    }
    if let Value::Dict(d) = reply {
        d.insert(
            b"totals".to_vec(),
            Value::dict([("RTP", rtp.value()), ("RTCP", rtcp.value())]),
        );
    }
}

#[cfg(test)]
mod tests {
    use control_api::FlowPath;

    use super::super::tests::{result, T};
    use super::super::Output;
    use super::*;

    fn row(local: &str, packets: u64, bytes: u64) -> FlowRow {
        FlowRow {
            local: local.parse().expect("addr"),
            src: "10.77.2.1:30002".parse().expect("addr"),
            dst: "10.77.2.2:40002".parse().expect("addr"),
            stream_id: None,
            stats_index: 0,
            path: FlowPath::Kernel,
            packets,
            bytes,
            forked: 0,
            lost: 0,
            out_of_order: 0,
            wrong_pt: 0,
            errors: 1,
            strict_drops: 0,
            passed: 0,
            dtmf: 0,
            rtcp: 0,
            ssrc: 0,
            last_seq: 0,
            idle_ms: None,
            userspace_packets: 2,
            userspace_bytes: 344,
            userspace_forked: 0,
            userspace_fork_drops: 0,
            fallback: "bound".into(),
        }
    }

    fn streams(reply: &Option<Value>, tag: &str) -> Vec<Value> {
        let media = match reply
            .as_ref()
            .and_then(|r| r.get("tags"))
            .and_then(|t| t.get(tag))
            .and_then(|t| t.get("medias"))
        {
            Some(Value::List(m)) => m[0].clone(),
            other => panic!("{other:?}"),
        };
        match media.get("streams") {
            Some(Value::List(s)) => s.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn triple(v: Option<&Value>) -> [i64; 3] {
        let n = |k| match v.and_then(|s| s.get(k)) {
            Some(Value::Int(n)) => *n,
            other => panic!("{k}: {other:?}"),
        };
        [n("packets"), n("bytes"), n("errors")]
    }

    fn query(t: &mut T) -> Option<Value> {
        let (r, ops) = t.send(vec![
            ("command", Value::str("query")),
            ("call-id", Value::str("call-1")),
        ]);
        assert!(ops.is_empty(), "{ops:?}");
        r
    }

    #[test]
    fn query_carries_each_streams_counters_and_totals() {
        let mut t = T::new();
        t.established();
        // Side A (tag-a) receives on 10.77.1.1:30000, side B on 10.77.2.1:30002; RTCP one up.
        t.rows = vec![
            row("10.77.1.1:30000", 100, 17_200),
            row("10.77.1.1:30001", 3, 300),
            row("10.77.2.1:30002", 50, 8_600),
            row("10.77.2.1:30003", 1, 100),
        ];
        let r = query(&mut t);
        assert_eq!(result(&r), "ok");
        let a = streams(&r, "tag-a");
        assert_eq!(a.len(), 2, "an RTP and an RTCP stream: {a:?}");
        assert_eq!(triple(a[0].get("stats")), [102, 17_544, 1]);
        assert_eq!(a[1].get("local port"), Some(&Value::Int(30001)));
        assert_eq!(triple(a[1].get("stats")), [5, 644, 1]);
        let b = streams(&r, "tag-b");
        assert_eq!(triple(b[0].get("stats")), [52, 8_944, 1]);
        let totals = r.as_ref().and_then(|v| v.get("totals"));
        assert_eq!(triple(totals.and_then(|t| t.get("RTP"))), [154, 26_488, 2]);
        assert_eq!(triple(totals.and_then(|t| t.get("RTCP"))), [8, 1_088, 2]);
    }

    #[test]
    fn delete_asks_for_counters_before_it_removes_the_flows() {
        let mut t = T::new();
        t.established();
        t.e.handle_datagram(
            t.now,
            0,
            "127.0.0.1:5070".parse().expect("addr"),
            b"c1 d7:command6:delete7:call-id6:call-18:from-tag5:tag-a12:delete-delayi0ee",
        );
        let mut ops = Vec::new();
        while let Some(o) = t.e.poll_output() {
            match o {
                Output::Control { id, op } => ops.push((id, op)),
                other => panic!("the reply waits for the counters: {other:?}"),
            }
        }
        assert!(
            matches!(ops[0].1, Op::FlowStats { ref locals } if locals.len() == 4),
            "{ops:?}"
        );
        assert!(ops[1..]
            .iter()
            .all(|(_, o)| matches!(o, Op::FlowDel { .. })));
        // fork-agent cannot answer: the delete still succeeds, saying why counters are missing.
        let (stats_id, _) = ops[0];
        t.e.handle_control_answer(t.now, stats_id, Err("unknown op".into()));
        let (r, _) = t.drain();
        assert_eq!(result(&r), "ok");
        let w = r
            .as_ref()
            .and_then(|v| v.get("warning"))
            .and_then(Value::as_str);
        assert_eq!(w, Some("no packet counters: fork-agent: unknown op"));
        assert!(r.as_ref().and_then(|v| v.get("totals")).is_none());
    }
}
