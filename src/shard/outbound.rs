//! A connection's shared half: its outbound frame queue (bounded in bytes), liveness
//! clocks and close state, and the shard's list of connections with frames to write.
//!
//! There is no writer task. [`ConnShared::send`] queues a frame and, if the connection is
//! not already listed, puts it on the shard's [`TxQueue`]; the shard's flusher
//! ([`super::rx::flusher`]) then submits one `send` (one frame) or `writev` (up to
//! [`MAX_IOV`] frames, coalesced) per listed connection to the receive ring and enters the
//! kernel once for all of them. The shared `Bytes` are handed to the kernel without copying.
//! One write is in flight per connection at most, so frames stay in order; its completion
//! (handled with the ring's receive completions) sends the rest.
//!
//! Held by `Rc` by the connection's reader, the shard's connection registry, the
//! subscription index, the flusher's list and an in-flight write; all on one shard thread,
//! hence `Cell`/`RefCell`.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    future::poll_fn,
    rc::Rc,
    task::{Poll, Waker},
    time::Instant,
};

use bytes::{Buf, Bytes};
use tokio_uring::net::TcpStream;

use crate::protocol::{close, encode};

/// Most frames handed to one `writev`.
const MAX_IOV: usize = 64;

/// What a queued frame costs against the cap beyond its bytes: its slot in the queue (a
/// `Bytes` is 32 bytes, and a `VecDeque` growing by doubling holds up to twice the slots it
/// uses), so a flood of two-byte pongs cannot hold many times the cap in memory.
pub const SLOT_BYTES: usize = 64;

/// Close progress of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseState {
    /// Frames are accepted.
    Open,
    /// A close frame is queued (or sent); nothing more is accepted. Carries the code.
    Closing(u16),
    /// The reader is gone: flush what is queued, then stop.
    Finished,
}

/// Outcome of [`ConnShared::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for writing.
    Queued,
    /// The connection is closing; the frame was not queued.
    Closed,
    /// The queue was over its byte cap: the connection is now closing with 4008.
    SlowConsumer,
}

/// The shard's list of connections with frames queued and no write in flight, and the
/// flusher task's waker.
#[derive(Default)]
pub struct TxQueue {
    pub(super) dirty: RefCell<Vec<Rc<ConnShared>>>,
    pub(super) waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for TxQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxQueue")
            .field("dirty", &self.dirty.borrow().len())
            .finish()
    }
}

/// The write a connection has in flight: its frames are kept alive until it completes.
#[derive(Default)]
pub enum Inflight {
    /// Nothing in flight.
    #[default]
    Idle,
    /// One frame (an IORING_OP_SEND).
    One(Bytes),
    /// Several frames (an IORING_OP_WRITEV) in a pooled batch.
    Many(Box<Batch>),
}

/// Up to [`MAX_IOV`] frames and their iovecs; pooled per shard so that connections hold
/// no write buffers while idle.
pub struct Batch {
    /// The frames, partly written ones advanced.
    pub frames: Vec<Bytes>,
    /// The iovecs handed to the kernel (valid while `frames` is unchanged).
    pub iov: Vec<libc::iovec>,
}

impl Batch {
    /// An empty batch with room for [`MAX_IOV`] frames.
    pub fn new() -> Batch {
        Batch {
            frames: Vec::with_capacity(MAX_IOV),
            iov: Vec::with_capacity(MAX_IOV),
        }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

/// Frames waiting to be written. A single frame (the common case: a connection that keeps
/// up) is held without allocating; a `VecDeque` exists only while frames pile up, and is
/// freed when they are all taken, so an idle connection holds no queue buffer.
#[derive(Default)]
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

    /// What the queued frames count against the cap ([`ConnShared::charge`]).
    fn charged(&self) -> usize {
        match self {
            FrameQueue::Empty => 0,
            FrameQueue::One(f) => ConnShared::charge(f),
            FrameQueue::Many(v) => v.iter().map(ConnShared::charge).sum(),
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

/// State shared by everything that talks to one connection.
pub struct ConnShared {
    /// The socket. Reads happen in the shard's receive ring, writes too (see module docs).
    pub stream: TcpStream,
    queue: RefCell<FrameQueue>,
    /// Bytes queued and not yet handed to the kernel. Bytes of a write in flight are not
    /// counted: its completion is reaped only when the shard next drains its ring, so
    /// counting them would charge a fast reader for data the kernel already took. A reader
    /// that stops is still caught: its socket buffer fills, the write stalls and the queue
    /// grows.
    queued_bytes: Cell<usize>,
    max_bytes: usize,
    /// Bytes of exempt frames (roster snapshots) not yet written: the cap is raised by this
    /// much until they are on the wire, so a large snapshot is delivered, not punished.
    allowance: Cell<usize>,
    state: Cell<CloseState>,
    /// When the close frame was queued, to enforce the close timeout.
    closing_since: Cell<Option<Instant>>,
    /// Last time anything arrived from the peer.
    pub last_seen: Cell<Instant>,
    /// Last time the server sent a WebSocket ping.
    pub last_ping: Cell<Instant>,
    /// The shard's flush list.
    tx: Rc<TxQueue>,
    /// On the flush list already.
    listed: Cell<bool>,
    /// A write failed (peer gone): nothing more is written.
    dead: Cell<bool>,
    /// The write in flight.
    pub(super) inflight: RefCell<Inflight>,
    /// Woken when the queue is flushed (teardown waits for it).
    drained: Cell<Option<Waker>>,
}

impl std::fmt::Debug for ConnShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnShared")
            .field("queued_bytes", &self.queued_bytes.get())
            .field("state", &self.state.get())
            .finish_non_exhaustive()
    }
}

impl ConnShared {
    /// Wraps an upgraded socket; its writes go through the shard's flush list `tx`.
    pub fn new(stream: TcpStream, max_bytes: usize, now: Instant, tx: Rc<TxQueue>) -> Self {
        ConnShared {
            stream,
            queue: RefCell::new(FrameQueue::Empty),
            queued_bytes: Cell::new(0),
            max_bytes,
            allowance: Cell::new(0),
            state: Cell::new(CloseState::Open),
            closing_since: Cell::new(None),
            last_seen: Cell::new(now),
            last_ping: Cell::new(now),
            tx,
            listed: Cell::new(false),
            dead: Cell::new(false),
            inflight: RefCell::new(Inflight::Idle),
            drained: Cell::new(None),
        }
    }

    /// Queues a frame (a clone of shared bytes: a reference-count increment, no copy).
    /// Over the byte cap the connection is closed as a slow consumer: what is queued is
    /// discarded and a 4008 close frame takes its place, so the stream ends visibly
    /// instead of losing frames from its middle.
    pub fn send(self: &Rc<Self>, frame: &Bytes) -> Delivery {
        self.admit(frame.clone(), 0)
    }

    /// Queues a frame of a presence snapshot. Snapshots count against the cap like every
    /// other frame, with one exception: while no other snapshot is waiting to be written,
    /// the cap is raised by the snapshot's size until it is on the wire, so a roster larger
    /// than the free room is still delivered once. A second snapshot queued behind an
    /// unwritten one gets no such allowance (a re-subscribe flood from a connection that
    /// does not read ends in 4008), so a connection holds at most `max_bytes` plus one
    /// snapshot (`snapshot_bytes`: the snapshot's total size, passed with its first frame).
    pub fn send_snapshot(self: &Rc<Self>, frame: &Bytes, snapshot_bytes: usize) -> Delivery {
        if snapshot_bytes > 0 && self.allowance.get() == 0 {
            return self.admit(frame.clone(), snapshot_bytes);
        }
        self.admit(frame.clone(), 0)
    }

    /// What one queued frame costs against the cap: its bytes plus its queue slot, so that
    /// a flood of tiny frames (pongs) is bounded in memory, not only in wire bytes.
    fn charge(frame: &Bytes) -> usize {
        frame.len() + SLOT_BYTES
    }

    /// Queues `frame` unless the connection is closing or over its cap (raised first by
    /// `allowance` bytes); over the cap it is closed 4008.
    fn admit(self: &Rc<Self>, frame: Bytes, allowance: usize) -> Delivery {
        if self.state.get() != CloseState::Open {
            return Delivery::Closed;
        }
        let after = self.queued_bytes.get() + Self::charge(&frame);
        if after > self.max_bytes + self.allowance.get() + allowance {
            self.close(close::SLOW_CONSUMER, "slow consumer", true);
            return Delivery::SlowConsumer;
        }
        self.allowance.set(self.allowance.get() + allowance);
        self.enqueue(frame);
        Delivery::Queued
    }

    /// Puts a frame on the queue and the connection on the flush list; no checks.
    fn enqueue(self: &Rc<Self>, frame: Bytes) {
        self.queued_bytes
            .set(self.queued_bytes.get() + Self::charge(&frame));
        self.queue.borrow_mut().push_back(frame);
        self.list();
    }

    /// Starts a server-initiated close: queues a close frame after the pending frames (or
    /// instead of them when `discard_pending`), and accepts nothing more.
    pub fn close(self: &Rc<Self>, code: u16, reason: &str, discard_pending: bool) {
        if self.state.get() != CloseState::Open {
            return;
        }
        if discard_pending {
            let mut q = self.queue.borrow_mut();
            let dropped = q.charged();
            *q = FrameQueue::Empty;
            self.queued_bytes.set(self.queued_bytes.get() - dropped);
            self.allowance.set(0);
        }
        // The close frame itself is never refused: one per connection.
        self.enqueue(encode::ws_close(code, reason));
        self.state.set(CloseState::Closing(code));
        self.closing_since.set(Some(Instant::now()));
    }

    /// Queues bytes produced by the WebSocket codec itself (pong and close replies) while
    /// the connection is open. They count against the cap like any frame: a client whose
    /// pings outrun its reading is closed 4008 like any slow consumer.
    pub fn push_raw(self: &Rc<Self>, frame: Bytes) {
        self.admit(frame, 0);
    }

    /// The reader has finished: flush what is queued, accept nothing more.
    pub fn finish(&self) {
        self.state.set(CloseState::Finished);
    }

    /// Current close state.
    pub fn state(&self) -> CloseState {
        self.state.get()
    }

    /// When a server-initiated close started, if one did.
    pub fn closing_since(&self) -> Option<Instant> {
        self.closing_since.get()
    }

    /// Bytes queued and not yet handed to the kernel.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    /// Frames and bytes not yet written: queued, plus the write in flight (reported when
    /// a shutdown drain times out).
    pub fn undelivered(&self) -> (usize, usize) {
        let q = self.queue.borrow();
        let (mut frames, mut bytes) = (q.len(), q.charged() - q.len() * SLOT_BYTES);
        match &*self.inflight.borrow() {
            Inflight::Idle => {}
            Inflight::One(f) => {
                frames += 1;
                bytes += f.len();
            }
            Inflight::Many(b) => {
                frames += b.frames.len();
                bytes += b.frames.iter().map(Bytes::len).sum::<usize>();
            }
        }
        (frames, bytes)
    }

    /// Aborts all I/O on the socket: pending reads return 0, pending writes fail.
    pub fn abort(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Puts the connection on the shard's flush list (once) and wakes the flusher.
    pub(super) fn list(self: &Rc<Self>) {
        if self.listed.get() || self.dead.get() {
            return;
        }
        self.listed.set(true);
        let mut d = self.tx.dirty.borrow_mut();
        if d.is_empty() {
            if let Some(w) = self.tx.waker.take() {
                w.wake();
            }
        }
        d.push(self.clone());
    }

    /// Taken off the flush list by the flusher.
    pub(super) fn unlist(&self) {
        self.listed.set(false);
    }

    /// True when a write may be started now: frames are queued, none is in flight, and
    /// the socket still works.
    pub(super) fn writable(&self) -> bool {
        !self.dead.get()
            && matches!(*self.inflight.borrow(), Inflight::Idle)
            && !self.queue.borrow().is_empty()
    }

    /// Moves the next frames into a write: one frame alone, or up to [`MAX_IOV`] into
    /// `batch`. They no longer count against the cap (see `queued_bytes`). Returns the
    /// frame count.
    pub(super) fn take_frames(&self, batch: impl FnOnce() -> Box<Batch>) -> usize {
        let mut q = self.queue.borrow_mut();
        let n = q.len().min(MAX_IOV);
        let taken = if n == 1 {
            let f = q.pop_front().unwrap_or_default();
            let len = Self::charge(&f);
            *self.inflight.borrow_mut() = Inflight::One(f);
            len
        } else {
            let mut b = batch();
            q.take_into(n, &mut b.frames);
            let len = b.frames.iter().map(Self::charge).sum();
            *self.inflight.borrow_mut() = Inflight::Many(b);
            len
        };
        self.queued_bytes.set(self.queued_bytes.get() - taken);
        self.allowance
            .set(self.allowance.get().saturating_sub(taken));
        n
    }

    /// A write completed with `res` (bytes written or -errno). Returns the batch to pool,
    /// if the write is over, and whether more is to be written now.
    pub(super) fn write_done(self: &Rc<Self>, res: i32) -> (Option<Box<Batch>>, bool) {
        let mut inflight = self.inflight.borrow_mut();
        if res <= 0 {
            // Peer gone or socket aborted: stop writing; the reader notices too.
            let old = std::mem::take(&mut *inflight);
            drop(inflight);
            self.dead.set(true);
            self.abort();
            *self.queue.borrow_mut() = FrameQueue::Empty;
            self.queued_bytes.set(0);
            self.wake_drained();
            return (
                match old {
                    Inflight::Many(b) => Some(b),
                    _ => None,
                },
                false,
            );
        }
        let mut left = res as usize;
        let finished = match &mut *inflight {
            Inflight::Idle => true,
            Inflight::One(f) => {
                f.advance(left.min(f.len()));
                f.is_empty()
            }
            Inflight::Many(b) => {
                let full = b.frames.iter().take_while(|f| {
                    let whole = f.len() <= left;
                    if whole {
                        left -= f.len();
                    }
                    whole
                });
                let k = full.count();
                b.frames.drain(..k);
                if let Some(first) = b.frames.first_mut() {
                    first.advance(left);
                }
                b.frames.is_empty()
            }
        };
        if !finished {
            return (None, true); // the rest of the same write goes again
        }
        let old = std::mem::take(&mut *inflight);
        drop(inflight);
        let more = !self.queue.borrow().is_empty();
        if !more {
            self.wake_drained();
        }
        (
            match old {
                Inflight::Many(b) => Some(b),
                _ => None,
            },
            more,
        )
    }

    /// True when nothing is left to write (or nothing can be written any more).
    pub fn is_drained(&self) -> bool {
        self.dead.get()
            || (matches!(*self.inflight.borrow(), Inflight::Idle) && self.queue.borrow().is_empty())
    }

    /// Resolves once everything queued is written (or the socket failed).
    pub async fn drained(&self) {
        poll_fn(|cx| {
            if self.is_drained() {
                Poll::Ready(())
            } else {
                self.drained.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    fn wake_drained(&self) {
        if let Some(w) = self.drained.take() {
            w.wake();
        }
    }
}
