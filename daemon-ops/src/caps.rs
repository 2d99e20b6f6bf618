//! Dropping capabilities after start: a daemon that needs a privilege only to set itself up (ng-agent's
//! `[webrtc]` enters a namespace) gives it up before it serves.
//!
//! Capabilities belong to a thread, not to the process: capset(2) changes the calling thread's
//! sets only (glibc does not broadcast it, as it does setuid), so every thread that holds some must
//! call [`drop_all`] itself, and a thread started later inherits its creator's. [`held_by_any`]
//! checks the whole process afterwards.

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3` (linux/capability.h): two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties the calling thread's effective, permitted and inheritable sets (and so its ambient
/// set, which must stay within the permitted one). A thread cannot get them back: with
/// no-new-privileges and no file capabilities, not even through exec.
pub fn drop_all() -> io::Result<()> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data::default(); 2];
    // SAFETY: the header and the two data words are the layout capset(2) reads for version 3;
    // both outlive the call, and pid 0 names the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The threads of this process (their `/proc/self/task` ids) whose effective or permitted set is
/// not empty.
pub fn held_by_any() -> io::Result<Vec<u32>> {
    let mut holding = Vec::new();
    for e in std::fs::read_dir("/proc/self/task")? {
        let e = e?;
        let status = std::fs::read_to_string(e.path().join("status"))?;
        if holds(&status) {
            holding.push(e.file_name().to_string_lossy().parse().unwrap_or(0));
        }
    }
    Ok(holding)
}

/// Whether a `/proc/PID/status` text shows a non-empty effective or permitted set (a line it
/// cannot read counts as holding: the check must not pass by mistake).
fn holds(status: &str) -> bool {
    ["CapEff:", "CapPrm:"].iter().any(|key| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            != Some(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_holds_capabilities_when_either_set_is_not_empty() {
        let s = |eff: &str, prm: &str| format!("Name:\tx\nCapPrm:\t{prm}\nCapEff:\t{eff}\n");
        assert!(!holds(&s("0000000000000000", "0000000000000000")));
        assert!(holds(&s("0000000000000000", "0000000000200000")));
        assert!(holds(&s("0000000000001000", "0000000000001000")));
        assert!(holds("Name:\tx\n"), "unreadable counts as holding");
    }

    #[test]
    fn a_dropping_thread_holds_nothing_and_others_keep_theirs() {
        // On a thread of its own: the test runner's threads must keep what they have.
        let after = std::thread::spawn(|| -> io::Result<String> {
            drop_all()?;
            std::fs::read_to_string("/proc/thread-self/status")
        })
        .join()
        .expect("invariant: the thread does not panic")
        .expect("capset to empty sets is always allowed");
        assert!(!holds(&after), "{after}");
    }
}
