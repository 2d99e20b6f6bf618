//! CPU accounting of the benchmarks: which tasks do the relaying, and how much CPU they used.
//!
//! Input: process ids (every thread of each is summed) and kernel NAPI threads. Output: a
//! [`Sample`] per task group in nanoseconds of CPU (the scheduler's `sum_exec_runtime` from
//! `/proc/<pid>/task/<tid>/schedstat`), and the machine's busy time from `/proc/stat`. Call
//! order: [`thread_napi`] once per namespace when the topology is up, then [`Tasks::sample`]
//! before and after each measured point; the difference is that point's CPU.
//!
//! Why per-task and threaded NAPI: this kernel has no `CONFIG_IRQ_TIME_ACCOUNTING`, so softirq
//! work (where XDP and the veth receive path normally run) is charged to whichever task it
//! interrupted (usually the load generator), and `/proc/stat`'s softirq column is only sampled
//! at the tick. With threaded NAPI every veth's receive path, XDP program included, runs in its
//! own `napi/<dev>-<id>` kernel thread whose CPU time is exact. The threads get SCHED_FIFO 50 (the
//! priority of threaded interrupt handlers) so they run as promptly as softirqs would.

use std::{collections::BTreeSet, fs, path::Path};

use anyhow::{bail, Context, Result};
use nix::libc;
use xdpfork_tests::ns_run;

/// Pids of kernel NAPI threads (`napi/<dev>-<id>`).
fn napi_pids() -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.starts_with("napi/")) {
            out.insert(pid);
        }
    }
    out
}

/// Switch every interface of namespace `ns` (except `lo`) to threaded NAPI, give the new NAPI
/// threads SCHED_FIFO 50, and return their pids. Run it for one namespace at a time (the new
/// threads are told apart from existing ones by appearing).
pub fn thread_napi(ns: &str) -> Result<Vec<i32>> {
    let before = napi_pids();
    let links = ns_run(ns, "ip", &["-o", "link", "show"])?;
    for line in links.lines() {
        // "2: fa0@if3: <...>"
        let Some(dev) = line.split(": ").nth(1) else {
            continue;
        };
        let dev = dev.split('@').next().unwrap_or(dev);
        if dev == "lo" {
            continue;
        }
        // A veth without NAPI (no GRO, no XDP: it only transmits) refuses; its peer's
        // receive path is the one that matters and is threaded in its own namespace.
        let _ = ns_run(
            ns,
            "sh",
            &["-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")],
        );
    }
    let new: Vec<i32> = napi_pids().difference(&before).copied().collect();
    if new.is_empty() {
        bail!("no NAPI thread appeared in {ns}: is GRO or XDP on its veths?");
    }
    for pid in &new {
        let p = libc::sched_param { sched_priority: 50 };
        // SAFETY: plain syscall on a pid with a valid parameter struct.
        if unsafe { libc::sched_setscheduler(*pid, libc::SCHED_FIFO, &p) } != 0 {
            bail!(
                "SCHED_FIFO for NAPI thread {pid}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(new)
}

/// Processes in namespace `ns` whose command name is `comm`.
pub fn pids_in_ns(ns: &str, comm: &str) -> Result<Vec<i32>> {
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata(format!("/run/netns/{ns}"))
        .with_context(|| format!("namespace {ns}"))?
        .ino();
    let want = format!("net:[{ino}]");
    let mut out = Vec::new();
    for e in fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let same_ns = fs::read_link(e.path().join("ns/net"))
            .is_ok_and(|l| l.to_string_lossy() == want.as_str());
        if same_ns && fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == comm)
        {
            out.push(pid);
        }
    }
    Ok(out)
}

/// CPU nanoseconds of all threads of `pid` (threads that exited are not counted, which is why
/// the measured processes are long-running with stable thread pools).
pub fn process_cpu_ns(pid: i32) -> u64 {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    rd.flatten()
        .map(|t| schedstat_ns(&t.path().join("schedstat")))
        .sum()
}

fn schedstat_ns(p: &Path) -> u64 {
    fs::read_to_string(p)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|w| w.parse().ok()))
        .unwrap_or(0)
}

/// A named group of tasks whose CPU is summed.
#[derive(Clone, Debug)]
pub struct Group {
    pub name: String,
    pub pids: Vec<i32>,
}

/// The task groups of one variant.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    pub groups: Vec<Group>,
}

/// CPU nanoseconds per group at one instant, plus the machine's `/proc/stat` jiffies.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub groups: Vec<u64>,
    pub stat: ProcStat,
}

impl Tasks {
    pub fn add(&mut self, name: &str, pids: Vec<i32>) {
        self.groups.push(Group {
            name: name.to_owned(),
            pids,
        });
    }

    pub fn sample(&self) -> Sample {
        Sample {
            groups: self
                .groups
                .iter()
                .map(|g| g.pids.iter().map(|p| process_cpu_ns(*p)).sum())
                .collect(),
            stat: ProcStat::read(),
        }
    }
}

/// Busy and total jiffies of all CPUs (`cpu` line of `/proc/stat`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStat {
    pub busy: u64,
    pub total: u64,
}

impl ProcStat {
    pub fn read() -> ProcStat {
        fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().next().map(ProcStat::parse))
            .unwrap_or_default()
    }

    /// user nice system idle iowait irq softirq steal ...: busy = user+nice+system+irq+softirq.
    fn parse(line: &str) -> ProcStat {
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        let get = |i: usize| v.get(i).copied().unwrap_or(0);
        ProcStat {
            busy: get(0) + get(1) + get(2) + get(5) + get(6),
            total: v.iter().take(8).sum(),
        }
    }

    /// Nanoseconds per jiffy (USER_HZ).
    pub fn ns_per_jiffy() -> u64 {
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        1_000_000_000 / hz.max(1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_counts_user_nice_system_irq_softirq() {
        let s = ProcStat::parse("cpu  100 1 20 500 7 3 4 9 0 0");
        assert_eq!(s.busy, 100 + 1 + 20 + 3 + 4);
        assert_eq!(s.total, 100 + 1 + 20 + 500 + 7 + 3 + 4 + 9);
    }

    #[test]
    fn own_process_has_cpu_time() {
        let pid = std::process::id() as i32;
        let spin: u64 = (0..200_000u64).map(|x| x.wrapping_mul(x)).sum();
        assert!(spin > 0);
        assert!(process_cpu_ns(pid) > 0);
    }
}
