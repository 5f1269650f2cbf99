//! A connection's handle: what everything but its reader holds of it (the shard's
//! registry, the subscription index, the flush list, a write in flight), all on one shard
//! thread, hence `Rc` and `Cell`/`RefCell`.
//!
//! It joins the connection's [`Outbound`] queue (bounded frames and close state) to its
//! [`Writer`] (the socket and the write in flight, driven by the ring). There is no writer
//! task: [`ConnHandle::send`] queues a frame and, if the connection is not already listed,
//! puts it on the shard's flush list ([`TxQueue`]); the ring then writes every listed
//! connection and enters the kernel once for all of them (after its drain, or in the
//! flusher task [`super::ring::run::flusher`] for frames queued from anywhere else). The
//! shared `Bytes` are handed to the kernel without copying.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    task::Waker,
    time::Instant,
};

use bytes::Bytes;
use tokio_uring::net::TcpStream;

use super::{
    outbound::{CloseState, Delivery, Outbound},
    ring::send::Writer,
};

/// The shard's flush list: connections with frames queued since the last flush (each once,
/// however many frames it got), and the flusher task's waker.
#[derive(Default)]
pub(crate) struct TxQueue {
    pub(crate) dirty: RefCell<Vec<Rc<ConnHandle>>>,
    pub(crate) waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for TxQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxQueue")
            .field("dirty", &self.dirty.borrow().len())
            .finish()
    }
}

/// The flush-list bit of [`ConnHandle::marks`].
const LISTED: u64 = 1 << 63;

/// State shared by everything that talks to one connection.
pub(crate) struct ConnHandle {
    /// Frames waiting to be written, and the close state.
    pub(super) out: RefCell<Outbound>,
    /// The socket and its write in flight (see [`super::ring::send`]).
    pub(super) writer: Writer,
    /// The shard's flush list.
    tx: Rc<TxQueue>,
    /// Two marks in one word (a `bool` beside a `u64` would cost 8 bytes of padding per
    /// connection, and a larger allocation class): bit 63 ([`LISTED`]) is set while the
    /// connection is on the flush list; bits 0..=62 hold the shard's number of the last
    /// publication queued to it while the shard has pattern subscriptions, so a publication
    /// that matches several of its subscriptions is queued once (protocol §8.3). 2^63
    /// publications do not wrap.
    marks: Cell<u64>,
    /// Last time anything arrived from the peer.
    pub(crate) last_seen: Cell<Instant>,
    /// Last time the server sent a WebSocket ping.
    pub(crate) last_ping: Cell<Instant>,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let out = self.out.borrow();
        f.debug_struct("ConnHandle")
            .field("queued_bytes", &out.queued_bytes())
            .field("state", &out.state())
            .finish_non_exhaustive()
    }
}

impl ConnHandle {
    /// Wraps an upgraded socket; its writes go through the shard's flush list `tx`.
    pub(crate) fn new(stream: TcpStream, max_bytes: usize, now: Instant, tx: Rc<TxQueue>) -> Self {
        ConnHandle {
            out: RefCell::new(Outbound::new(max_bytes)),
            writer: Writer::new(stream),
            tx,
            marks: Cell::new(0),
            last_seen: Cell::new(now),
            last_ping: Cell::new(now),
        }
    }

    /// Queues a frame (a clone of shared bytes: a reference-count increment, no copy).
    /// Over the byte cap the connection is closed as a slow consumer (see [`Outbound`]).
    pub(crate) fn send(self: &Rc<Self>, frame: &Bytes) -> Delivery {
        let d = self.out.borrow_mut().send(frame.clone());
        self.listed_if(d)
    }

    /// Marks publication `seq` as delivered to this connection; false when it already was
    /// (then the caller does not queue it again).
    pub(crate) fn first_delivery(&self, seq: u64) -> bool {
        let m = self.marks.get();
        if m & !LISTED == seq {
            return false;
        }
        self.marks.set((m & LISTED) | seq);
        true
    }

    /// Queues a frame of a presence snapshot ([`Outbound::send_snapshot`]).
    pub(crate) fn send_snapshot(self: &Rc<Self>, frame: &Bytes, snapshot_bytes: usize) -> Delivery {
        let d = self
            .out
            .borrow_mut()
            .send_snapshot(frame.clone(), snapshot_bytes);
        self.listed_if(d)
    }

    /// Queues bytes produced by the WebSocket codec itself (pong and close replies) while
    /// the connection is open. They count against the cap like any frame: a client whose
    /// pings outrun its reading is closed 4008 like any slow consumer.
    pub(crate) fn push_raw(self: &Rc<Self>, frame: Bytes) {
        let d = self.out.borrow_mut().send(frame);
        self.listed_if(d);
    }

    /// Lists the connection for the next flush when something was queued (a frame, or the
    /// close frame that replaced everything).
    fn listed_if(self: &Rc<Self>, d: Delivery) -> Delivery {
        if d != Delivery::Closed {
            self.list();
        }
        d
    }

    /// Puts the connection on the shard's flush list (once) and wakes the flusher; not
    /// once its socket failed.
    fn list(self: &Rc<Self>) {
        if self.marks.get() & LISTED != 0 || self.writer.is_dead() {
            return;
        }
        self.marks.set(self.marks.get() | LISTED);
        let mut d = self.tx.dirty.borrow_mut();
        if d.is_empty() {
            if let Some(w) = self.tx.waker.take() {
                w.wake();
            }
        }
        d.push(self.clone());
    }

    /// Taken off the flush list by the flush.
    pub(crate) fn unlist(&self) {
        self.marks.set(self.marks.get() & !LISTED);
    }

    /// Starts a server-initiated close: queues a close frame after the pending frames (or
    /// instead of them when `discard_pending`), and accepts nothing more.
    pub(crate) fn close(self: &Rc<Self>, code: u16, reason: &str, discard_pending: bool) {
        if self.out.borrow_mut().close(code, reason, discard_pending) {
            self.list();
        }
    }

    /// The reader has finished: flush what is queued, accept nothing more.
    pub(crate) fn finish(&self) {
        self.out.borrow_mut().finish();
    }

    /// Current close state.
    pub(crate) fn state(&self) -> CloseState {
        self.out.borrow().state()
    }

    /// When a server-initiated close started, if one did.
    pub(crate) fn closing_since(&self) -> Option<Instant> {
        self.out.borrow().closing_since()
    }

    /// Frames and bytes not yet written: queued, plus the write in flight (reported when
    /// a shutdown drain times out).
    pub(crate) fn undelivered(&self) -> (usize, usize) {
        let (frames, bytes) = self.out.borrow().undelivered();
        let (f, b) = self.writer.in_flight();
        (frames + f, bytes + b)
    }

    /// The socket.
    pub(crate) fn stream(&self) -> &TcpStream {
        self.writer.stream()
    }

    /// Aborts all I/O on the socket: pending reads return 0, pending writes fail.
    pub(crate) fn abort(&self) {
        self.writer.abort();
    }

    /// True when nothing is left to write (or nothing can be written any more).
    pub(crate) fn is_drained(&self) -> bool {
        self.writer.is_dead() || (self.writer.is_idle() && self.out.borrow().is_empty())
    }

    /// Resolves once everything queued is written (or the socket failed).
    pub(crate) async fn drained(&self) {
        std::future::poll_fn(|cx| {
            if self.is_drained() {
                std::task::Poll::Ready(())
            } else {
                self.writer.wake_when_drained(cx.waker());
                std::task::Poll::Pending
            }
        })
        .await
    }
}
