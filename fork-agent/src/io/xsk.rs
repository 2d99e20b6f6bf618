//! AF_XDP receive path: one socket on the fork veth peer's queue, a page-aligned UMEM, and a
//! blocking reader thread that hands each forked frame to a callback and recycles the buffer.

use std::{
    alloc::Layout,
    ffi::CString,
    num::NonZeroU32,
    os::fd::RawFd,
    ptr::NonNull,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use xdpilone::{DeviceQueue, IfInfo, RingRx, Socket, SocketConfig, Umem, UmemConfig, User};

const FRAME_SIZE: u32 = 2048;

/// Page-aligned UMEM memory, freed on drop (after the socket that uses it).
struct UmemArea {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // SAFETY: allocated in `XskReader::open` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: the area is only accessed through the reader that owns it.
unsafe impl Send for UmemArea {}

/// Where [`XskReader::run`] hands the frames.
pub trait RxSink {
    /// One frame, valid until the call returns.
    fn frame(&mut self, bytes: &[u8]);
    /// The ring was drained (after zero or more frames); `ring_drops` packets were dropped by
    /// the kernel since the last call because the ring was full or had no free frame.
    fn drained(&mut self, ring_drops: u64);
}

pub struct XskReader {
    // Field order is drop order: rings and socket before the memory they map.
    rx: RingRx,
    fq: DeviceQueue,
    user: User,
    _umem: Umem,
    area: UmemArea,
    frames: u32,
}

// SAFETY: the rings are used from one thread at a time (moved into the reader thread).
unsafe impl Send for XskReader {}

/// `XDP_ZEROCOPY` bind flag (linux/if_xdp.h): fail instead of falling back to copy mode.
pub const XDP_ZEROCOPY: u16 = 1 << 2;

impl XskReader {
    pub fn open(ifname: &str, queue: u32, frames: u32) -> Result<XskReader> {
        XskReader::open_with(ifname, queue, frames, 0)
    }

    /// [`XskReader::open`] with `XDP_*` bind flags (e.g. [`XDP_ZEROCOPY`]).
    pub fn open_with(ifname: &str, queue: u32, frames: u32, bind_flags: u16) -> Result<XskReader> {
        let size = (frames * FRAME_SIZE) as usize;
        let layout =
            Layout::from_size_align(size, 4096).map_err(|e| anyhow!("UMEM layout: {e}"))?;
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
            .context("allocating the AF_XDP UMEM")?;
        let area = UmemArea { ptr, layout };
        let mem = NonNull::slice_from_raw_parts(ptr, size);
        let cfg = UmemConfig {
            fill_size: frames,
            complete_size: frames,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: `mem` is page-aligned, lives in `area`, which outlives the Umem.
        let umem = unsafe { Umem::new(cfg, mem) }.map_err(|e| anyhow!("creating UMEM: {e:?}"))?;
        let mut info = IfInfo::invalid();
        let cname = CString::new(ifname)?;
        info.from_name(&cname)
            .map_err(|e| anyhow!("interface {ifname} for AF_XDP: {e:?}"))?;
        info.set_queue(queue);
        let sock = Socket::with_shared(&info, &umem)
            .map_err(|e| anyhow!("AF_XDP socket on {ifname} (needs CAP_NET_RAW): {e:?}"))?;
        let mut fq = umem
            .fq_cq(&sock)
            .map_err(|e| anyhow!("AF_XDP fill/completion rings: {e:?}"))?;
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(frames),
                    tx_size: None,
                    bind_flags,
                },
            )
            .map_err(|e| anyhow!("AF_XDP rx ring: {e:?}"))?;
        let rx = user
            .map_rx()
            .map_err(|e| anyhow!("mapping AF_XDP rx ring: {e:?}"))?;
        umem.bind(&user)
            .map_err(|e| anyhow!("binding AF_XDP socket to {ifname} queue {queue}: {e:?}"))?;
        {
            let mut w = fq.fill(frames);
            w.insert((0..frames).map(|i| u64::from(i) * u64::from(FRAME_SIZE)));
            w.commit();
        }
        Ok(XskReader {
            rx,
            fq,
            user,
            _umem: umem,
            area,
            frames,
        })
    }

    /// The socket to put into `XSKS`.
    pub fn fd(&self) -> RawFd {
        self.user.as_raw_fd()
    }

    /// Read frames until `stop` is set, handing each frame's bytes (fork tag first) to `sink`
    /// and calling [`RxSink::drained`] after each drain of the ring. While frames keep coming,
    /// drains are at least `coalesce` apart (the thread sleeps the rest): the reader and
    /// whoever it wakes meet once per batch, not once per frame. Wakes at least every 100 ms
    /// to check `stop`.
    pub fn run(mut self, stop: Arc<AtomicBool>, coalesce: Duration, sink: &mut impl RxSink) {
        let base = self.area.ptr.as_ptr();
        let mut recycle = Vec::with_capacity(self.frames as usize);
        let mut last_drain: Option<std::time::Instant> = None;
        // The kernel's drop counters of this socket, as last read.
        let mut ring_drops = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if let Some(at) = last_drain.take() {
                // Packets came last time: let the next batch gather.
                let gap = at.elapsed();
                if gap < coalesce {
                    std::thread::sleep(coalesce - gap);
                }
            }
            let mut pfd = libc::pollfd {
                fd: self.rx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, Duration::from_millis(100).as_millis() as i32) };
            {
                let mut r = self.rx.receive(self.frames);
                while let Some(desc) = r.read() {
                    let off = desc.addr as usize;
                    let len = desc.len as usize;
                    if off + len <= self.area.layout.size() {
                        // SAFETY: the kernel wrote this frame inside our UMEM and hands it to us
                        // until we give it back through the fill ring below.
                        let frame = unsafe { std::slice::from_raw_parts(base.add(off), len) };
                        sink.frame(frame);
                    }
                    recycle.push(desc.addr - desc.addr % u64::from(FRAME_SIZE));
                }
                r.release();
            }
            if !recycle.is_empty() {
                #[allow(clippy::disallowed_methods)] // io shell: one clock read per drain
                let now = std::time::Instant::now();
                last_drain = Some(now);
            }
            // One getsockopt per drain (at most one per `coalesce` under load).
            let dropped = self
                .user
                .statistics_v2()
                .map_or(ring_drops, |st| st.rx_ring_full + st.rx_dropped);
            sink.drained(dropped.saturating_sub(ring_drops));
            ring_drops = dropped;
            if !recycle.is_empty() {
                let mut w = self.fq.fill(recycle.len() as u32);
                let n = w.insert(recycle.iter().copied());
                w.commit();
                recycle.drain(..n as usize);
            }
        }
    }
}
