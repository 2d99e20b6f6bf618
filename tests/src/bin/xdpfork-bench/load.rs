//! Load generator and counting receiver of the benchmarks.
//!
//! Input: a UDP socket in the caller namespace (connected to the relay's address, or unconnected
//! with a [`CallSet`] of destinations), the offered rate, the duration and a datagram template;
//! a socket in the callee namespace for the receiver. Output: [`GenStats`] (datagrams sent, the
//! generator thread's CPU time) and [`RecvStats`] (datagrams of this run received, per call,
//! their latencies, the receiver thread's CPU time). Call order: [`spawn_receiver`] first, then
//! [`generate`] (one destination) or [`generate_calls`] (many calls) on another thread, then set
//! the receiver's stop flag once the relay has drained and join it.
//!
//! Many calls: the offered rate is spread evenly over the first `n` calls of a [`CallSet`].
//! Datagram `k` of a run goes to call `k mod n`, so each call gets every `n`-th datagram, i.e.
//! `rate / n` per second evenly spaced, as `n` independent G.711 streams would at 50 pkt/s when
//! `rate = 50 n`. Each call has its own RTP sequence, timestamp and SSRC, and the call index is
//! written right after the stamp so the receiver counts per call.
//!
//! Every datagram carries a [`Stamp`] at a fixed offset: a magic word, the run id (so late
//! datagrams of the previous point are not counted), a sequence number and the send time on two
//! clocks. CLOCK_MONOTONIC is compared with the receiver's clock after `recvmmsg` returns
//! (application latency, includes the receiver's wake-up); CLOCK_REALTIME is compared with the
//! kernel's receive timestamp (`SO_TIMESTAMPNS`, taken when the callee's veth delivers the
//! packet to the stack), which is the relay's one-way latency without the receiver's scheduling.
//! Both clocks are the one host clock seen from every namespace.

use std::{
    net::UdpSocket,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use std::net::SocketAddr;

use anyhow::{bail, Result};
use nix::libc;

/// Datagrams per `sendmmsg`/`recvmmsg` call (unpaced generator, receiver).
pub const BATCH: usize = 64;
/// Largest `sendmmsg` of the paced generator: a late wake-up is caught up over several calls
/// rather than one long burst, which would queue datagrams behind each other in the stamp.
pub const PACED_BATCH: u64 = 16;
/// Bytes of the stamp.
pub const STAMP_LEN: usize = 32;
const MAGIC: u32 = 0x7864_6662; // "xdfb"

/// What the generator writes into every datagram at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub run: u32,
    pub seq: u64,
    pub mono_ns: u64,
    pub real_ns: u64,
}

impl Stamp {
    pub fn write(&self, buf: &mut [u8]) {
        buf[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        buf[4..8].copy_from_slice(&self.run.to_be_bytes());
        buf[8..16].copy_from_slice(&self.seq.to_be_bytes());
        buf[16..24].copy_from_slice(&self.mono_ns.to_be_bytes());
        buf[24..32].copy_from_slice(&self.real_ns.to_be_bytes());
    }

    pub fn read(buf: &[u8]) -> Option<Stamp> {
        let b = buf.get(..STAMP_LEN)?;
        let word =
            |r: std::ops::Range<usize>| b[r].iter().fold(0u64, |a, x| (a << 8) | u64::from(*x));
        if word(0..4) != u64::from(MAGIC) {
            return None;
        }
        Some(Stamp {
            run: word(4..8) as u32,
            seq: word(8..16),
            mono_ns: word(16..24),
            real_ns: word(24..32),
        })
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}
fn real_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}
/// CPU time of the calling thread (user + system), in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Nice −20 for the calling thread. This host is shared with other work (compilers, tests);
/// every task of the measurement (generator, receiver, every relay's threads) gets the same
/// boost so the background cannot decide who loses packets. Best effort.
pub fn boost_thread() {
    // SAFETY: setpriority on the calling thread (tid 0 = self) has no memory effects.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20) };
}

/// Nice −20 for every thread of process `pid` (see [`boost_thread`]).
pub fn boost_process(pid: i32) {
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if let Ok(tid) = t.file_name().to_string_lossy().parse::<u32>() {
                // SAFETY: as above, on another task by id.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, -20) };
            }
        }
    }
}

/// The datagram sent: `header` (RTP, ChannelData...) followed by the stamp and filler up to
/// `len` bytes. `patch` rewrites per-datagram header fields (RTP sequence and timestamp).
pub struct Template {
    pub bytes: Vec<u8>,
    /// Where the stamp goes in what the generator sends.
    pub stamp_at: usize,
    /// Rewrites header fields for datagram `seq`.
    pub patch: fn(&mut [u8], u64),
    /// Added to the sequence passed to `patch`, so a stream continues across points (an RTP
    /// sequence restarting at 0 every point would look like a new or replayed stream).
    pub seq_base: u64,
}

/// Destinations of a many-call load: call `i` is sent to `dests[i]`, with its own SSRC and RTP
/// sequence (continued across points, as a live stream would).
#[derive(Default)]
pub struct CallSet {
    pub dests: Vec<libc::sockaddr_in>,
    /// Next sequence handed to the template's `patch`, per call.
    pub next_seq: Vec<u64>,
    /// Offset of the 32-bit per-call identifier in the datagram (the RTP SSRC: 8), written as
    /// `ssrc_base + call index`.
    pub ssrc_at: usize,
    pub ssrc_base: u32,
}

impl CallSet {
    /// Calls sending to `dests` (IPv4) with RTP's SSRC at offset 8.
    pub fn rtp(dests: &[SocketAddr], ssrc_base: u32) -> Result<CallSet> {
        Ok(CallSet {
            dests: dests.iter().map(|a| sockaddr(*a)).collect::<Result<_>>()?,
            next_seq: vec![0; dests.len()],
            ssrc_at: 8,
            ssrc_base,
        })
    }

    pub fn len(&self) -> usize {
        self.dests.len()
    }
}

/// An IPv4 socket address as `sendmmsg` takes it.
pub fn sockaddr(a: SocketAddr) -> Result<libc::sockaddr_in> {
    let SocketAddr::V4(a) = a else {
        bail!("the benchmark load is IPv4 only: {a}");
    };
    // SAFETY: sockaddr_in is plain data; all-zero is valid before the fields are set.
    let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    Ok(s)
}

/// Datagrams of a run of `sent` datagrams over `n` calls that call `c` was sent (datagram `k`
/// goes to call `k mod n`).
pub fn sent_to_call(sent: u64, n: usize, c: usize) -> u64 {
    let n = n.max(1) as u64;
    sent / n + u64::from((c as u64) < sent % n)
}

/// Result of one generator run.
#[derive(Clone, Copy, Debug, Default)]
pub struct GenStats {
    pub sent: u64,
    pub send_errors: u64,
    pub elapsed: Duration,
    pub cpu_ns: u64,
}

/// Send `template` datagrams on the connected socket `sock` at `rate` per second (`None`: as
/// fast as possible) for `duration`, in `sendmmsg` batches of up to [`BATCH`]. Pacing: datagram
/// `k` is due at `start + k / rate`; the thread sleeps until the next one is due and then sends
/// every due datagram (so a late wake-up is caught up in a bigger batch, keeping the average).
pub fn generate(
    sock: &UdpSocket,
    template: &Template,
    run: u32,
    rate: Option<u64>,
    duration: Duration,
) -> Result<GenStats> {
    generate_inner(sock, template, None, run, rate, duration)
}

/// [`generate`] over the first `n` calls of `calls` on the unconnected socket `sock`: datagram
/// `k` of the run goes to call `k mod n` (see the module doc), carrying that call's SSRC, RTP
/// sequence and, after the stamp, its index. `calls.next_seq` is advanced by what was sent.
pub fn generate_calls(
    sock: &UdpSocket,
    template: &Template,
    calls: &mut CallSet,
    n: usize,
    run: u32,
    rate: Option<u64>,
    duration: Duration,
) -> Result<GenStats> {
    if n == 0 || n > calls.len() {
        bail!("{n} calls asked, {} set up", calls.len());
    }
    if template.bytes.len() < template.stamp_at + STAMP_LEN + 4
        || template.bytes.len() < calls.ssrc_at + 4
    {
        bail!("datagram too short for the stamp, the call index and the SSRC");
    }
    generate_inner(sock, template, Some((calls, n)), run, rate, duration)
}

fn generate_inner(
    sock: &UdpSocket,
    template: &Template,
    mut calls: Option<(&mut CallSet, usize)>,
    run: u32,
    rate: Option<u64>,
    duration: Duration,
) -> Result<GenStats> {
    boost_thread();
    // SAFETY: prctl with PR_SET_TIMERSLACK takes an integer; 1 µs slack sharpens the pacing sleeps.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64, 0u64, 0u64, 0u64) };
    let len = template.bytes.len();
    let mut bufs = vec![template.bytes.clone(); BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: len,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed is a valid "no name, no control" header.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    let mut stats = GenStats::default();
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let n = match rate {
            None => BATCH,
            Some(r) => {
                let due = (elapsed.as_nanos() * u128::from(r) / 1_000_000_000) as u64 + 1;
                let n = due.saturating_sub(stats.sent).min(PACED_BATCH) as usize;
                if n == 0 {
                    let next = Duration::from_nanos(
                        ((stats.sent as u128 * 1_000_000_000) / u128::from(r)) as u64,
                    );
                    std::thread::sleep(next.saturating_sub(elapsed));
                    continue;
                }
                n
            }
        };
        let (mono, real) = (mono_ns(), real_ns());
        for (i, (b, m)) in bufs.iter_mut().zip(msgs.iter_mut()).take(n).enumerate() {
            let seq = stats.sent + i as u64;
            match calls.as_mut() {
                None => (template.patch)(b, template.seq_base + seq),
                Some((set, ncalls)) => {
                    let c = (seq % *ncalls as u64) as usize;
                    // The call's own sequence; advanced below only for what was sent.
                    (template.patch)(b, set.next_seq[c]);
                    let ssrc = set.ssrc_base.wrapping_add(c as u32);
                    b[set.ssrc_at..set.ssrc_at + 4].copy_from_slice(&ssrc.to_be_bytes());
                    let at = template.stamp_at + STAMP_LEN;
                    b[at..at + 4].copy_from_slice(&(c as u32).to_be_bytes());
                    m.msg_hdr.msg_name = (&set.dests[c] as *const libc::sockaddr_in)
                        .cast_mut()
                        .cast();
                    m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                }
            }
            Stamp {
                run,
                seq,
                mono_ns: mono,
                real_ns: real,
            }
            .write(&mut b[template.stamp_at..]);
        }
        // SAFETY: msgs points at n valid iovecs over live buffers; the socket is connected, or
        // every header names a call's address in `calls`, which outlives the call.
        let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // The local stack pushing back: count it and go on (it is part of saturation).
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::ECONNREFUSED) => {
                    stats.send_errors += 1;
                    continue;
                }
                _ => bail!("sendmmsg: {e}"),
            }
        }
        if let Some((set, ncalls)) = calls.as_mut() {
            for i in 0..r as u64 {
                set.next_seq[((stats.sent + i) % *ncalls as u64) as usize] += 1;
            }
        }
        stats.sent += r as u64;
    }
    stats.elapsed = start.elapsed();
    stats.cpu_ns = thread_cpu_ns() - cpu0;
    Ok(stats)
}

/// Result of one receiver run.
#[derive(Debug, Default)]
pub struct RecvStats {
    /// Datagrams of this run received.
    pub received: u64,
    /// Datagrams received more than once (sequence seen before).
    pub duplicates: u64,
    /// Datagrams without this run's stamp (late ones of an earlier point, other traffic).
    pub foreign: u64,
    /// Kernel receive timestamp − send time (CLOCK_REALTIME), per datagram, ns.
    pub lat_kernel_ns: Vec<u32>,
    /// Receiver's CLOCK_MONOTONIC after `recvmmsg` − send time, per datagram, ns.
    pub lat_app_ns: Vec<u32>,
    /// Datagrams of this run received per call index (empty for a one-destination load).
    pub per_call: Vec<u64>,
    pub cpu_ns: u64,
}

impl RecvStats {
    /// (calls that lost at least one datagram, calls that received nothing) of a run of `sent`
    /// datagrams over `per_call.len()` calls.
    pub fn call_losses(&self, sent: u64) -> (usize, usize) {
        let n = self.per_call.len();
        let mut lossy = 0;
        let mut silent = 0;
        for (c, got) in self.per_call.iter().enumerate() {
            let want = sent_to_call(sent, n, c);
            lossy += usize::from(*got < want);
            silent += usize::from(*got == 0 && want > 0);
        }
        (lossy, silent)
    }
}

/// Receive on a thread until `stop` is set (checked every 20 ms), counting datagrams whose stamp
/// (at `stamp_at` in what arrives) carries `run`; with `calls > 0` also per call index (the
/// 32-bit word after the stamp, see [`generate_calls`]). The socket gets a 32 MiB receive
/// buffer (`SO_RCVBUFFORCE`) so that the receiver is never where datagrams are lost.
pub fn spawn_receiver(
    sock: UdpSocket,
    stamp_at: usize,
    calls: usize,
    run: u32,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<RecvStats>> {
    std::thread::spawn(move || receive(&sock, stamp_at, calls, run, &stop))
}

fn setsockopt_int(sock: &UdpSocket, level: i32, name: i32, value: i32) -> Result<()> {
    // SAFETY: an int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if r != 0 {
        bail!(
            "setsockopt({level}, {name}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// One iovec over each whole buffer, for `recvmmsg` (the buffers must outlive their use).
pub fn iovecs<const N: usize>(bufs: &mut [[u8; N]]) -> Vec<libc::iovec> {
    bufs.iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: N,
        })
        .collect()
}

/// Room for one SCM_TIMESTAMPNS control message.
const CMSG_SPACE: usize = 64;

fn receive(
    sock: &UdpSocket,
    stamp_at: usize,
    calls: usize,
    run: u32,
    stop: &AtomicBool,
) -> Result<RecvStats> {
    boost_thread();
    setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 32 << 20)?;
    setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let cpu0 = thread_cpu_ns();
    let mut stats = RecvStats {
        per_call: vec![0; calls],
        ..RecvStats::default()
    };
    let mut seen = Vec::<u64>::new(); // bitmap of sequence numbers
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut ctrl = vec![[0u8; CMSG_SPACE]; BATCH];
    let mut iovs = iovecs(&mut bufs);
    // SAFETY: mmsghdr is plain data.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    while !stop.load(Ordering::Relaxed) {
        for ((m, iov), c) in msgs.iter_mut().zip(iovs.iter_mut()).zip(ctrl.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = c.as_mut_ptr().cast();
            m.msg_hdr.msg_controllen = CMSG_SPACE as _;
        }
        // SAFETY: BATCH headers over live buffers; SO_RCVTIMEO bounds the wait.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let now_mono = mono_ns();
        if r < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                _ => bail!("recvmmsg: {e}"),
            }
        }
        for i in 0..r as usize {
            let len = msgs[i].msg_len as usize;
            let Some(st) = bufs[i].get(stamp_at..len).and_then(Stamp::read) else {
                stats.foreign += 1;
                continue;
            };
            if st.run != run {
                stats.foreign += 1;
                continue;
            }
            let (word, bit) = ((st.seq / 64) as usize, st.seq % 64);
            if seen.len() <= word {
                seen.resize(word + 1, 0);
            }
            if seen[word] & (1 << bit) != 0 {
                stats.duplicates += 1;
                continue;
            }
            seen[word] |= 1 << bit;
            stats.received += 1;
            if calls > 0 {
                let at = stamp_at + STAMP_LEN;
                if let Some(c) = bufs[i].get(at..at + 4).filter(|_| at + 4 <= len) {
                    let c = u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize;
                    if let Some(n) = stats.per_call.get_mut(c) {
                        *n += 1;
                    }
                }
            }
            stats
                .lat_app_ns
                .push(now_mono.saturating_sub(st.mono_ns).min(u64::from(u32::MAX)) as u32);
            if let Some(k) = kernel_timestamp(&msgs[i].msg_hdr) {
                stats
                    .lat_kernel_ns
                    .push(k.saturating_sub(st.real_ns).min(u64::from(u32::MAX)) as u32);
            }
        }
    }
    stats.cpu_ns = thread_cpu_ns() - cpu0;
    Ok(stats)
}

/// The SCM_TIMESTAMPNS of a received message, as ns since the epoch.
fn kernel_timestamp(h: &libc::msghdr) -> Option<u64> {
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, bounded by
    // msg_controllen; the timespec is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// The `q`-quantile (0..=1) of `v` in µs (sorts `v`); 0 when empty.
pub fn quantile_us(v: &mut [u32], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    f64::from(v[i]) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_rejects_other_bytes() {
        let s = Stamp {
            run: 7,
            seq: 1 << 40,
            mono_ns: 123,
            real_ns: u64::MAX - 1,
        };
        let mut b = [0u8; STAMP_LEN];
        s.write(&mut b);
        assert_eq!(Stamp::read(&b), Some(s));
        b[0] ^= 1;
        assert_eq!(Stamp::read(&b), None);
        assert_eq!(Stamp::read(&b[..10]), None);
    }

    #[test]
    fn calls_share_a_run_evenly_and_losses_are_per_call() {
        // 10 datagrams over 4 calls: calls 0 and 1 get 3, calls 2 and 3 get 2.
        let want: Vec<u64> = (0..4).map(|c| sent_to_call(10, 4, c)).collect();
        assert_eq!(want, [3, 3, 2, 2]);
        assert_eq!(want.iter().sum::<u64>(), 10);
        let r = RecvStats {
            per_call: vec![3, 2, 0, 2],
            ..RecvStats::default()
        };
        assert_eq!(r.call_losses(10), (2, 1), "call 1 short, call 2 silent");
    }

    #[test]
    fn generator_spreads_datagrams_over_calls_with_their_own_ssrc_and_sequence() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rx2 = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let dests = [
            rx.local_addr().expect("addr"),
            rx2.local_addr().expect("addr"),
        ];
        let mut calls = CallSet::rtp(&dests, 0x1000).expect("ipv4");
        let template = Template {
            bytes: vec![0u8; 12 + 160],
            stamp_at: 12,
            patch: |b, seq| b[2..4].copy_from_slice(&(seq as u16).to_be_bytes()),
            seq_base: 0,
        };
        // Paced at 2000/s for 200 ms: two sends need only the first 0.5 ms, so a loaded host
        // that deschedules the generator for a while still sends both calls' first datagrams
        // (5 ms sent only one under load). Later datagrams may overflow the receive buffers;
        // only the first of each call is read.
        let g = generate_calls(
            &tx,
            &template,
            &mut calls,
            2,
            9,
            Some(2_000),
            Duration::from_millis(200),
        )
        .expect("sends");
        assert!(g.sent >= 2, "sent {}", g.sent);
        assert_eq!(
            calls.next_seq,
            [sent_to_call(g.sent, 2, 0), sent_to_call(g.sent, 2, 1)]
        );
        let mut buf = [0u8; 256];
        for (c, s) in [&rx, &rx2].into_iter().enumerate() {
            let n = s.recv(&mut buf).expect("first datagram of the call");
            assert_eq!(n, 172);
            assert_eq!(&buf[8..12], &(0x1000 + c as u32).to_be_bytes(), "SSRC");
            assert_eq!(&buf[2..4], &[0, 0], "the call's own first sequence number");
            let st = Stamp::read(&buf[12..]).expect("stamp");
            assert_eq!((st.run, st.seq), (9, c as u64));
            assert_eq!(
                &buf[12 + STAMP_LEN..12 + STAMP_LEN + 4],
                &(c as u32).to_be_bytes()
            );
        }
        assert!(generate_calls(&tx, &template, &mut calls, 3, 9, None, Duration::ZERO).is_err());
    }

    #[test]
    fn quantiles() {
        let mut v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(quantile_us(&mut v, 0.5), 51.0);
        assert_eq!(quantile_us(&mut v, 0.99), 99.0);
        assert_eq!(quantile_us(&mut [], 0.5), 0.0);
    }
}
