//! A connection's outbound queue: the frames waiting to be written, bounded in bytes, and
//! the connection's close state. Plain data: no socket, no ring, no `Rc`; what to do once
//! a frame is queued (list the connection for the next flush) is up to its owner
//! ([`super::handle::ConnHandle`]), and writing is [`super::ring::send`]'s.
//!
//! The bound: every queued frame costs its bytes plus [`SLOT_BYTES`] against
//! `max_bytes`. A frame that would go over closes the connection as a slow consumer: what
//! is queued is discarded and a 4008 close frame takes its place, so the stream ends
//! visibly instead of losing frames from its middle. The close frame itself is never
//! refused (one per connection). A presence snapshot may go over the bound once at a time
//! ([`Outbound::send_snapshot`]).

use std::{collections::VecDeque, time::Instant};

use bytes::Bytes;

use crate::protocol::{close, encode};

/// What a queued frame costs against the cap beyond its bytes: its slot in the queue (a
/// `Bytes` is 32 bytes, and a `VecDeque` growing by doubling holds up to twice the slots it
/// uses), so a flood of two-byte pongs cannot hold many times the cap in memory.
pub(crate) const SLOT_BYTES: usize = 64;

/// Close progress of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseState {
    /// Frames are accepted.
    Open,
    /// A close frame is queued (or sent); nothing more is accepted. Carries the code.
    Closing(u16),
    /// The reader is gone: flush what is queued, then stop.
    Finished,
}

/// Outcome of queueing a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Queued for writing.
    Queued,
    /// The connection is closing; the frame was not queued.
    Closed,
    /// The queue was over its byte cap: the connection is now closing with 4008 (its close
    /// frame is queued in place of everything else).
    SlowConsumer,
}

/// What one queued frame costs against the cap: its bytes plus its queue slot, so that a
/// flood of tiny frames (pongs) is bounded in memory, not only in wire bytes.
fn charge(frame: &Bytes) -> usize {
    frame.len() + SLOT_BYTES
}

/// Frames waiting to be written. A single frame (the common case: a connection that keeps
/// up) is held without allocating; a `VecDeque` exists only while frames pile up, and is
/// freed when they are all taken, so an idle connection holds no queue buffer.
#[derive(Debug, Default)]
enum FrameQueue {
    #[default]
    Empty,
    One(Bytes),
    /// Never empty.
    Many(VecDeque<Bytes>),
}

impl FrameQueue {
    fn push_back(&mut self, f: Bytes) {
        match self {
            FrameQueue::Empty => *self = FrameQueue::One(f),
            FrameQueue::One(_) => {
                let FrameQueue::One(first) = std::mem::take(self) else {
                    unreachable!()
                };
                let mut v = VecDeque::with_capacity(4);
                v.push_back(first);
                v.push_back(f);
                *self = FrameQueue::Many(v);
            }
            FrameQueue::Many(v) => v.push_back(f),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, FrameQueue::Empty)
    }

    fn len(&self) -> usize {
        match self {
            FrameQueue::Empty => 0,
            FrameQueue::One(_) => 1,
            FrameQueue::Many(v) => v.len(),
        }
    }

    /// What the queued frames count against the cap ([`charge`]).
    fn charged(&self) -> usize {
        match self {
            FrameQueue::Empty => 0,
            FrameQueue::One(f) => charge(f),
            FrameQueue::Many(v) => v.iter().map(charge).sum(),
        }
    }

    fn pop_front(&mut self) -> Option<Bytes> {
        match self {
            FrameQueue::Empty => None,
            FrameQueue::One(_) => match std::mem::take(self) {
                FrameQueue::One(f) => Some(f),
                _ => unreachable!(),
            },
            FrameQueue::Many(v) => {
                let f = v.pop_front();
                if v.is_empty() {
                    *self = FrameQueue::Empty;
                }
                f
            }
        }
    }

    /// Moves the first `n` frames into `out`.
    fn take_into(&mut self, n: usize, out: &mut Vec<Bytes>) {
        match self {
            FrameQueue::Many(v) => {
                let n = n.min(v.len());
                out.extend(v.drain(..n));
                if v.is_empty() {
                    *self = FrameQueue::Empty;
                }
            }
            _ => {
                if n > 0 {
                    out.extend(self.pop_front());
                }
            }
        }
    }
}

/// A connection's bounded frame queue and close state.
#[derive(Debug)]
pub(crate) struct Outbound {
    queue: FrameQueue,
    /// Bytes queued and not yet taken for a write. Bytes of a write in flight are not
    /// counted: its completion is reaped only when the shard next drains its ring, so
    /// counting them would charge a fast reader for data the kernel already took. A reader
    /// that stops is still caught: its socket buffer fills, the write stalls and the queue
    /// grows.
    queued_bytes: usize,
    max_bytes: usize,
    /// Bytes of exempt frames (roster snapshots) not yet taken for writing: the cap is
    /// raised by this much until they are on their way, so a large snapshot is delivered,
    /// not punished.
    allowance: usize,
    state: CloseState,
    /// When the close frame was queued, to enforce the close timeout.
    closing_since: Option<Instant>,
}

impl Outbound {
    /// An empty, open queue of at most `max_bytes` (frames plus their slots).
    pub(crate) fn new(max_bytes: usize) -> Outbound {
        Outbound {
            queue: FrameQueue::Empty,
            queued_bytes: 0,
            max_bytes,
            allowance: 0,
            state: CloseState::Open,
            closing_since: None,
        }
    }

    /// Queues a frame. Over the byte cap the connection is closed as a slow consumer.
    pub(crate) fn send(&mut self, frame: Bytes) -> Delivery {
        self.admit(frame, 0)
    }

    /// Queues a frame of a presence snapshot. Snapshots count against the cap like every
    /// other frame, with one exception: while no other snapshot is waiting to be written,
    /// the cap is raised by the snapshot's size until it is on the wire, so a roster larger
    /// than the free room is still delivered once. A second snapshot queued behind an
    /// unwritten one gets no such allowance (a re-subscribe flood from a connection that
    /// does not read ends in 4008), so a connection holds at most `max_bytes` plus one
    /// snapshot (`snapshot_bytes`: the snapshot's total size, passed with its first frame).
    pub(crate) fn send_snapshot(&mut self, frame: Bytes, snapshot_bytes: usize) -> Delivery {
        if snapshot_bytes > 0 && self.allowance == 0 {
            return self.admit(frame, snapshot_bytes);
        }
        self.admit(frame, 0)
    }

    /// Queues `frame` unless the connection is closing or over its cap (raised first by
    /// `allowance` bytes); over the cap it is closed 4008.
    fn admit(&mut self, frame: Bytes, allowance: usize) -> Delivery {
        if self.state != CloseState::Open {
            return Delivery::Closed;
        }
        let after = self.queued_bytes + charge(&frame);
        if after > self.max_bytes + self.allowance + allowance {
            self.close(close::SLOW_CONSUMER, "slow consumer", true);
            return Delivery::SlowConsumer;
        }
        self.allowance += allowance;
        self.enqueue(frame);
        Delivery::Queued
    }

    /// Puts a frame on the queue; no checks.
    fn enqueue(&mut self, frame: Bytes) {
        self.queued_bytes += charge(&frame);
        self.queue.push_back(frame);
    }

    /// Starts a server-initiated close: queues a close frame after the pending frames (or
    /// instead of them when `discard_pending`), and accepts nothing more. Returns false
    /// (nothing queued) when the connection was not open.
    pub(crate) fn close(&mut self, code: u16, reason: &str, discard_pending: bool) -> bool {
        if self.state != CloseState::Open {
            return false;
        }
        if discard_pending {
            let dropped = self.queue.charged();
            self.queue = FrameQueue::Empty;
            self.queued_bytes -= dropped;
            self.allowance = 0;
        }
        // The close frame itself is never refused: one per connection.
        self.enqueue(encode::ws_close(code, reason));
        self.state = CloseState::Closing(code);
        self.closing_since = Some(Instant::now());
        true
    }

    /// The reader has finished: flush what is queued, accept nothing more.
    pub(crate) fn finish(&mut self) {
        self.state = CloseState::Finished;
    }

    /// Current close state.
    pub(crate) fn state(&self) -> CloseState {
        self.state
    }

    /// When a server-initiated close started, if one did.
    pub(crate) fn closing_since(&self) -> Option<Instant> {
        self.closing_since
    }

    /// Bytes queued (frames plus slots) and not yet taken for a write.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Number of queued frames.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no frame is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Frames and wire bytes queued (not counting a write in flight).
    pub(crate) fn undelivered(&self) -> (usize, usize) {
        let n = self.queue.len();
        (n, self.queue.charged() - n * SLOT_BYTES)
    }

    /// Takes the first frame for a write; it no longer counts against the cap.
    pub(crate) fn take_one(&mut self) -> Bytes {
        let f = self.queue.pop_front().unwrap_or_default();
        self.taken(charge(&f));
        f
    }

    /// Moves the first `n` frames into `out` for a write; they no longer count against the
    /// cap.
    pub(crate) fn take_into(&mut self, n: usize, out: &mut Vec<Bytes>) {
        let before = out.len();
        self.queue.take_into(n, out);
        let taken = out[before..].iter().map(charge).sum();
        self.taken(taken);
    }

    fn taken(&mut self, bytes: usize) {
        self.queued_bytes -= bytes;
        self.allowance = self.allowance.saturating_sub(bytes);
    }

    /// Drops every queued frame (the socket failed: nothing can be written any more).
    pub(crate) fn discard(&mut self) {
        self.queue = FrameQueue::Empty;
        self.queued_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn each_frame_costs_its_length_plus_a_slot() {
        let mut q = Outbound::new(10_000);
        assert_eq!(q.send(frame(100)), Delivery::Queued);
        assert_eq!(q.send(Bytes::from_static(b"ab")), Delivery::Queued);
        assert_eq!(q.queued_bytes(), 100 + 2 + 2 * SLOT_BYTES);
        assert_eq!(q.undelivered(), (2, 102));
        let f = q.take_one();
        assert_eq!(f.len(), 100);
        assert_eq!(q.queued_bytes(), 2 + SLOT_BYTES);
        let mut out = Vec::new();
        q.take_into(8, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(q.queued_bytes(), 0);
        assert!(q.is_empty());
        assert_eq!(q.undelivered(), (0, 0));
    }

    #[test]
    fn over_the_cap_discards_everything_for_a_4008_close() {
        let cap = 3 * (100 + SLOT_BYTES);
        let mut q = Outbound::new(cap);
        for _ in 0..3 {
            assert_eq!(q.send(frame(100)), Delivery::Queued);
        }
        assert_eq!(q.queued_bytes(), cap, "exactly at the cap is allowed");
        assert_eq!(q.send(frame(1)), Delivery::SlowConsumer);
        assert_eq!(q.state(), CloseState::Closing(close::SLOW_CONSUMER));
        assert!(q.closing_since().is_some());
        assert_eq!(q.len(), 1, "only the close frame is left");
        let close_frame = encode::ws_close(close::SLOW_CONSUMER, "slow consumer");
        assert_eq!(q.queued_bytes(), close_frame.len() + SLOT_BYTES);
        assert_eq!(q.take_one(), close_frame);
        assert_eq!(
            q.send(frame(1)),
            Delivery::Closed,
            "nothing after the close"
        );
        assert!(q.is_empty());
    }

    #[test]
    fn the_close_frame_is_never_refused() {
        let mut q = Outbound::new(0);
        assert!(q.close(close::GOING_AWAY, "bye", false));
        assert_eq!(q.len(), 1, "queued although the cap is 0");
        assert!(!q.close(close::GOING_AWAY, "bye", false), "one close only");
        assert_eq!(q.len(), 1);
        q.finish();
        assert_eq!(q.state(), CloseState::Finished);
        assert_eq!(q.send(frame(1)), Delivery::Closed);
    }

    #[test]
    fn close_keeps_pending_frames_unless_told_to_discard() {
        let mut q = Outbound::new(10_000);
        q.send(frame(10));
        assert!(q.close(close::GOING_AWAY, "bye", false));
        assert_eq!(q.len(), 2);
        let mut q = Outbound::new(10_000);
        q.send(frame(10));
        assert!(q.close(close::GOING_AWAY, "bye", true));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn one_snapshot_at_a_time_may_go_over_the_cap() {
        let cap = 200;
        let mut q = Outbound::new(cap);
        let frames = [frame(150), frame(150)];
        let total: usize = frames.iter().map(|f| f.len() + SLOT_BYTES).sum();
        assert_eq!(q.send_snapshot(frames[0].clone(), total), Delivery::Queued);
        assert_eq!(q.send_snapshot(frames[1].clone(), 0), Delivery::Queued);
        assert_eq!(q.queued_bytes(), total);
        // A second snapshot behind the unwritten first gets no allowance of its own: it
        // must fit in the cap beside the first.
        assert_eq!(
            q.send_snapshot(frame(cap), cap + SLOT_BYTES),
            Delivery::SlowConsumer
        );
        assert_eq!(q.state(), CloseState::Closing(close::SLOW_CONSUMER));
    }

    #[test]
    fn the_allowance_ends_once_the_snapshot_is_taken() {
        let cap = 200;
        let mut q = Outbound::new(cap);
        let snap = frame(300);
        assert_eq!(q.send_snapshot(snap, 300 + SLOT_BYTES), Delivery::Queued);
        q.take_one();
        assert_eq!(q.queued_bytes(), 0);
        // A new snapshot gets its own allowance again.
        assert_eq!(
            q.send_snapshot(frame(300), 300 + SLOT_BYTES),
            Delivery::Queued
        );
        q.take_one();
        // An ordinary frame over the cap is refused as before.
        assert_eq!(q.send(frame(cap)), Delivery::SlowConsumer);
    }
}
