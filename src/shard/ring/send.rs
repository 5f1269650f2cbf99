//! Sends: the write side of every connection of the shard. Per connection at most one
//! write is in flight (so frames stay in order): an `IORING_OP_SEND` of one frame, or an
//! `IORING_OP_WRITEV` of up to [`MAX_IOV`] frames coalesced in a pooled [`Batch`]. Its
//! completion sends the unwritten rest, or the frames queued meanwhile.
//!
//! [`Ring::flush`] takes the shard's flush list ([`crate::shard::handle::TxQueue`]: the
//! connections that got frames since), starts their writes and submits them all in one
//! syscall. A write holds a
//! reference to its connection (its `user_data`) until it completes, so the socket and the
//! frames outlive the kernel's use of them.

use std::{
    cell::{Cell, RefCell},
    os::fd::AsRawFd,
    rc::Rc,
    task::Waker,
};

use bytes::{Buf, Bytes};
use io_uring::{opcode, squeue, types, IoUring};
use tokio_uring::net::TcpStream;

use super::{submit::retry_backlog, Ring};
use crate::{
    metrics::ShardCounters,
    shard::{handle::ConnHandle, Shard},
};

/// Most frames handed to one `writev`.
const MAX_IOV: usize = 64;

/// Most idle write batches a shard keeps (about 3 KiB each).
pub(super) const POOL_MAX: usize = 256;

/// `user_data` bit marking a write completion; the rest is the `Rc<ConnHandle>` pointer the
/// write holds (allocations are at least 8-byte aligned, so bit 0 is free).
pub(super) const WRITE_TAG: u64 = 1;

/// The write a connection has in flight: its frames are kept alive until it completes.
#[derive(Default)]
enum Inflight {
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
pub(super) struct Batch {
    /// The frames, partly written ones advanced.
    frames: Vec<Bytes>,
    /// The iovecs handed to the kernel (valid while `frames` is unchanged).
    iov: Vec<libc::iovec>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            frames: Vec::with_capacity(MAX_IOV),
            iov: Vec::with_capacity(MAX_IOV),
        }
    }
}

/// A connection's socket and write state.
pub(crate) struct Writer {
    /// The socket. Reads happen in the shard's ring too ([`super::recv`]).
    stream: TcpStream,
    /// A write failed (peer gone): nothing more is written.
    dead: Cell<bool>,
    /// The write in flight.
    inflight: RefCell<Inflight>,
    /// Woken when the queue is flushed (teardown waits for it).
    drained: Cell<Option<Waker>>,
}

impl Writer {
    /// The write side of `stream`.
    pub(crate) fn new(stream: TcpStream) -> Writer {
        Writer {
            stream,
            dead: Cell::new(false),
            inflight: RefCell::new(Inflight::Idle),
            drained: Cell::new(None),
        }
    }

    /// The socket.
    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// True when a write failed: nothing can be written any more.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.get()
    }

    /// True when no write is in flight.
    pub(crate) fn is_idle(&self) -> bool {
        matches!(*self.inflight.borrow(), Inflight::Idle)
    }

    /// Frames and bytes of the write in flight, not yet confirmed written.
    pub(crate) fn in_flight(&self) -> (usize, usize) {
        match &*self.inflight.borrow() {
            Inflight::Idle => (0, 0),
            Inflight::One(f) => (1, f.len()),
            Inflight::Many(b) => (
                b.frames.len(),
                b.frames.iter().map(Bytes::len).sum::<usize>(),
            ),
        }
    }

    /// Aborts all I/O on the socket: pending reads return 0, pending writes fail.
    pub(crate) fn abort(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Wakes `w` once the connection's queue is written (or the socket failed).
    pub(crate) fn wake_when_drained(&self, w: &Waker) {
        self.drained.set(Some(w.clone()));
    }

    fn wake_drained(&self) {
        if let Some(w) = self.drained.take() {
            w.wake();
        }
    }
}

/// True when a write may be started now: frames are queued, none is in flight, and the
/// socket still works.
fn writable(c: &ConnHandle) -> bool {
    !c.writer.dead.get() && c.writer.is_idle() && !c.out.borrow().is_empty()
}

/// Moves the next frames into a write: one frame alone, or up to [`MAX_IOV`] into a batch
/// from `batch`. They no longer count against the cap. Returns the frame count.
fn take_frames(c: &ConnHandle, batch: impl FnOnce() -> Box<Batch>) -> usize {
    let mut out = c.out.borrow_mut();
    let n = out.len().min(MAX_IOV);
    let next = if n == 1 {
        Inflight::One(out.take_one())
    } else {
        let mut b = batch();
        out.take_into(n, &mut b.frames);
        Inflight::Many(b)
    };
    *c.writer.inflight.borrow_mut() = next;
    n
}

/// A write of `c` completed with `res` (bytes written or -errno). Returns the batch to
/// pool, if the write is over, and whether more is to be written now.
fn write_done(c: &ConnHandle, res: i32) -> (Option<Box<Batch>>, bool) {
    let w = &c.writer;
    let mut inflight = w.inflight.borrow_mut();
    if res <= 0 {
        // Peer gone or socket aborted: stop writing; the reader notices too.
        let old = std::mem::take(&mut *inflight);
        drop(inflight);
        w.dead.set(true);
        w.abort();
        c.out.borrow_mut().discard();
        w.wake_drained();
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
    let more = !c.out.borrow().is_empty();
    if !more {
        w.wake_drained();
    }
    (
        match old {
            Inflight::Many(b) => Some(b),
            _ => None,
        },
        more,
    )
}

/// The submission of the connection's in-flight write (none when nothing is in flight). The
/// write holds a reference to the connection (its `user_data`) until it completes, so the
/// socket and the frames outlive the kernel's use of them.
fn write_sqe(c: Rc<ConnHandle>) -> Option<squeue::Entry> {
    let fd = types::Fd(c.writer.stream.as_raw_fd());
    let sqe = match &mut *c.writer.inflight.borrow_mut() {
        Inflight::Idle => return None,
        Inflight::One(f) => opcode::Send::new(fd, f.as_ptr(), f.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build(),
        Inflight::Many(b) => {
            b.iov.clear();
            b.iov.extend(b.frames.iter().map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            }));
            opcode::Writev::new(fd, b.iov.as_ptr(), b.iov.len() as u32).build()
        }
    };
    let data = Rc::into_raw(c) as u64;
    debug_assert_eq!(data & WRITE_TAG, 0);
    Some(sqe.user_data(data | WRITE_TAG))
}

impl Ring {
    /// Starts a write on every connection of the shard's flush list that can write now,
    /// then submits everything queued in one syscall.
    pub(crate) fn flush(&self, shard: &Shard) {
        let mut list = {
            let mut dirty = shard.tx.dirty.borrow_mut();
            let mut spare = self.spare.borrow_mut();
            std::mem::swap(&mut *dirty, &mut *spare);
            std::mem::take(&mut *spare)
        };
        let mut ring = self.ring.borrow_mut();
        let counters = shard.counters();
        retry_backlog(&mut *ring, &mut self.backlog.borrow_mut());
        for c in list.drain(..) {
            c.unlist();
            if writable(&c) {
                self.start_write(&mut ring, counters, c);
            }
        }
        // Keep the list's capacity for the next flush (no allocation per flush).
        *self.spare.borrow_mut() = list;
        let overflow = ring.submission().cq_overflow();
        if overflow {
            ShardCounters::add(&counters.io_cq_overflows, 1);
        }
        if !ring.submission().is_empty() || overflow {
            // With an overflow this also lets the kernel flush the completions it kept aside.
            // A failed submit leaves the entries in the submission queue: the next flush or
            // the housekeeping tick ([`Ring::retry`]) submits them.
            if let Err(e) = ring.submit() {
                ShardCounters::add(&counters.io_submit_errors, 1);
                tracing::warn!(cause = %e, "io_uring submit failed; retried on the next flush");
            }
        }
    }

    /// Moves the connection's next frames into a write and queues its submission.
    fn start_write(&self, ring: &mut IoUring, counters: &ShardCounters, c: Rc<ConnHandle>) {
        let n = take_frames(&c, || self.pool.borrow_mut().pop().unwrap_or_default());
        ShardCounters::add(&counters.messages_out, n as u64);
        if let Some(sqe) = write_sqe(c) {
            self.push(ring, counters, sqe);
        }
    }

    /// A write of the connection `c` completed.
    pub(super) fn write_completed(&self, shard: &Shard, c: Rc<ConnHandle>, res: i32) {
        let counters = shard.counters();
        if res > 0 {
            ShardCounters::add(&counters.bytes_out, res as u64);
        }
        let (batch, more) = write_done(&c, res);
        if let Some(mut b) = batch {
            b.frames.clear();
            b.iov.clear();
            let mut pool = self.pool.borrow_mut();
            if pool.len() < POOL_MAX {
                pool.push(b);
            }
        }
        if more {
            let mut ring = self.ring.borrow_mut();
            if c.writer.is_idle() {
                self.start_write(&mut ring, counters, c);
            } else if let Some(sqe) = write_sqe(c) {
                self.push(&mut ring, counters, sqe); // the unwritten rest of the same frames
            }
        }
    }
}
