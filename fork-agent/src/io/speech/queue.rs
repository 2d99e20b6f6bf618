//! The bounded queues of the forked-frame path, both drop-oldest.
//!
//! - [`MediaQueue`]: AF_XDP reader thread (and the fallback relay) → stream service task. A
//!   producer hands over everything it drained in one go, under one lock, and wakes the task
//!   once; the task takes the whole queue in one swap. So the reader and the task meet once per
//!   batch, not once per frame. Beyond its limit the oldest frames are dropped and counted: the
//!   newest audio is the one worth delivering late.
//! - [`ConnQueue`]: stream service → one connection's writer task. Control items are never
//!   dropped; audio is bounded by the pool's admission (core::ws_pool `Admit`): a full queue
//!   trades its oldest audio frame for the new one ([`ConnQueue::push_evicting`]).
//!
//! Both use a `std` mutex held for a few pointer moves (never across an await) and a tokio
//! `Notify`, which keeps one wake-up permit when nobody waits, so a push between the waiter's
//! check and its wait is never lost.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard},
};

use tokio::sync::Notify;

use super::conn::Outgoing;
use super::Media;

/// Reader → service queue of forked packets.
#[derive(Debug)]
pub struct MediaQueue {
    items: Mutex<MediaItems>,
    limit: usize,
    ready: Notify,
}

#[derive(Debug, Default)]
struct MediaItems {
    items: VecDeque<Media>,
    /// Dropped since the service last took the queue.
    dropped: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding it left plain data behind: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MediaQueue {
    /// A queue of at most `limit` packets.
    pub fn new(limit: usize) -> Self {
        MediaQueue {
            items: Mutex::new(MediaItems {
                items: VecDeque::with_capacity(limit.min(4096)),
                dropped: 0,
            }),
            limit: limit.max(1),
            ready: Notify::new(),
        }
    }

    /// Queues a batch and wakes the service once; returns how many of the oldest queued
    /// packets were dropped to stay within the limit.
    pub fn push_batch(&self, batch: impl IntoIterator<Item = Media>) -> u64 {
        let dropped = {
            let mut q = lock(&self.items);
            q.items.extend(batch);
            let over = q.items.len().saturating_sub(self.limit);
            q.items.drain(..over);
            q.dropped += over as u64;
            over as u64
        };
        self.ready.notify_one();
        dropped
    }

    /// Packets lost before they could be queued (the AF_XDP ring was full): reported with the
    /// next take like the queue's own drops.
    pub fn note_dropped(&self, n: u64) {
        lock(&self.items).dropped += n;
    }

    /// Waits until something is queued, then moves all of it into `out` (which must be empty:
    /// the two buffers swap, so both keep their capacity) and returns how many packets were
    /// dropped since the last take (the service alarms an overflow). Cancel-safe: nothing is
    /// taken before the swap.
    pub async fn take(&self, out: &mut VecDeque<Media>) -> u64 {
        debug_assert!(out.is_empty());
        loop {
            {
                let mut q = lock(&self.items);
                if !q.items.is_empty() {
                    std::mem::swap(&mut q.items, out);
                    return std::mem::take(&mut q.dropped);
                }
            }
            self.ready.notified().await;
        }
    }
}

/// Service → writer queue of one connection.
#[derive(Debug, Default)]
pub struct ConnQueue {
    inner: Mutex<ConnItems>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct ConnItems {
    items: VecDeque<Outgoing>,
    /// The writer ended: nothing more is queued.
    closed: bool,
}

impl ConnQueue {
    /// Queues `item`; false (and `item` dropped) when the writer already ended.
    pub fn push(&self, item: Outgoing) -> bool {
        {
            let mut q = lock(&self.inner);
            if q.closed {
                return false;
            }
            q.items.push_back(item);
        }
        self.ready.notify_one();
        true
    }

    /// Queues audio `frame` in place of the oldest queued audio frame and returns the frame
    /// dropped: that one, or `frame` itself when no audio is queued (all of it is being
    /// written) or the writer ended.
    pub fn push_evicting(&self, frame: Outgoing) -> Outgoing {
        let evicted = {
            let mut q = lock(&self.inner);
            if q.closed {
                return frame;
            }
            let Some(at) = q
                .items
                .iter()
                .position(|i| matches!(i, Outgoing::Audio { .. }))
            else {
                return frame;
            };
            let Some(old) = q.items.remove(at) else {
                return frame;
            };
            q.items.push_back(frame);
            old
        };
        self.ready.notify_one();
        evicted
    }

    /// Waits until something is queued, then moves all of it into `out` (empty; the buffers
    /// swap). Cancel-safe.
    pub async fn take(&self, out: &mut VecDeque<Outgoing>) {
        debug_assert!(out.is_empty());
        loop {
            {
                let mut q = lock(&self.inner);
                if !q.items.is_empty() {
                    std::mem::swap(&mut q.items, out);
                    return;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Moves what is queued into `out` without waiting.
    pub fn take_now(&self, out: &mut VecDeque<Outgoing>) {
        out.append(&mut lock(&self.inner).items);
    }

    /// The writer ends: later pushes are refused; returns what was still queued.
    pub fn close(&self) -> VecDeque<Outgoing> {
        let mut q = lock(&self.inner);
        q.closed = true;
        std::mem::take(&mut q.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(tag: u8) -> Outgoing {
        Outgoing::Audio {
            frame: vec![tag],
            at: std::time::Instant::now(),
        }
    }

    fn tag(o: &Outgoing) -> Option<u8> {
        match o {
            Outgoing::Audio { frame, .. } => frame.first().copied(),
            _ => None,
        }
    }

    #[tokio::test]
    async fn media_queue_keeps_the_newest_within_its_limit() {
        let q = MediaQueue::new(3);
        let dtmf = |event| {
            Media::Dtmf(speech_proto::Dtmf {
                stream_id: 1,
                event,
                end: false,
                duration: 0,
                timestamp: 0,
            })
        };
        assert_eq!(q.push_batch([dtmf(1), dtmf(2)]), 0);
        assert_eq!(q.push_batch([dtmf(3), dtmf(4)]), 1, "the oldest goes");
        let mut out = VecDeque::new();
        assert_eq!(q.take(&mut out).await, 1, "drops since the last take");
        let events: Vec<u8> = out
            .iter()
            .map(|m| match m {
                Media::Dtmf(d) => d.event,
                Media::Audio { .. } => 0,
            })
            .collect();
        assert_eq!(events, [2, 3, 4]);
    }

    #[tokio::test]
    async fn conn_queue_evicts_the_oldest_audio_never_control() {
        let q = ConnQueue::default();
        assert!(q.push(Outgoing::Flush));
        assert!(q.push(audio(1)));
        assert!(q.push(audio(2)));
        assert_eq!(tag(&q.push_evicting(audio(3))), Some(1));
        let mut out = VecDeque::new();
        q.take(&mut out).await;
        let tags: Vec<Option<u8>> = out.iter().map(tag).collect();
        assert_eq!(tags, [None, Some(2), Some(3)], "control stays, order kept");
        // Nothing queued (all being written): the new frame is the one dropped.
        assert_eq!(tag(&q.push_evicting(audio(4))), Some(4));
        // After close everything is refused and the rest handed back.
        assert!(q.push(audio(5)));
        assert_eq!(q.close().len(), 1);
        assert!(!q.push(audio(6)));
        assert_eq!(tag(&q.push_evicting(audio(7))), Some(7));
    }
}
