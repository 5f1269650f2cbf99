//! The shard's io_uring: every socket read and write of the shard's registered
//! connections goes through one second io_uring instance (driven through the `io-uring`
//! crate, since tokio-uring 0.5 has no multishot or provided buffers). This folder is the
//! only place in the shard that submits to it or reads its completions, and it owns every
//! `unsafe` block that this needs.
//!
//! - [`bufring`]: the provided-buffer ring shared by every receive of the shard;
//! - [`recv`]: one multishot `recv` per connection: arming, re-arming, its completions;
//! - [`send`]: writes (`send` of one frame, `writev` of up to 64) and the per-connection
//!   write state machine, with the shard's pool of write batches and its flush list;
//! - [`submit`]: queueing submissions without ever dropping one (backlog and retry);
//! - [`complete`]: reaping completions and dispatching each to [`recv`] or [`send`];
//! - [`run`]: the tasks that drive the ring (the completion loop and the flusher);
//! - [`eventfd`]: waiting on an eventfd through tokio-uring (the ring's and the mesh's).
//!
//! Why: with one-shot reads every idle connection holds a pending read, its own buffer and
//! a reader task (about 2 KB together). Here an idle connection holds nothing but its
//! armed `recv`: the kernel picks a buffer from the shard's ring only when bytes arrive,
//! the bytes are fed to the connection's [`Reader`] right away and the buffer goes
//! straight back to the ring. Writes share the ring, so one submission syscall per flush
//! serves every connection that writes.
//!
//! `user_data` of a submission: a receive carries the connection id shifted left by one
//! (bit 0 clear); a write carries the `Rc<ConnHandle>` pointer it holds, with bit 0 set
//! ([`send::WRITE_TAG`]).
//!
//! Lifetime rule: a [`Reader`] (which owns a reference to the socket) stays in
//! [`Ring::readers`] until its multishot's last completion, so the kernel never holds a
//! `recv` on a descriptor that was closed and reused. Teardown ends the multishot by
//! shutting the socket down, which completes it with 0.

mod bufring;
mod complete;
pub(crate) mod eventfd;
mod recv;
pub(crate) mod run;
pub(crate) mod send;
mod submit;

use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    rc::Rc,
};

use ahash::RandomState;
use io_uring::{squeue, IoUring};

use super::{conn::Reader, handle::ConnHandle};
use crate::router::index::shrink_target;
use bufring::BufRing;
use send::Batch;

/// The provided-buffer group id used by every `recv` of the ring.
const BGID: u16 = 0;

/// Completion queue size (the kernel's maximum).
const CQ_ENTRIES: u32 = 65_536;

/// One shard's io_uring, its provided buffers, its readers and its write state.
pub(crate) struct Ring {
    /// Declared before `bufs` so that it is dropped (unregistering the buffers) first.
    ring: RefCell<IoUring>,
    bufs: BufRing,
    /// Registered with the ring: readable when completions were posted ([`run::run`]).
    eventfd: OwnedFd,
    /// Every connection with an armed `recv`, by connection id (the completions'
    /// `user_data`). A reader is taken out while it handles bytes, so handlers never see
    /// this map borrowed.
    readers: RefCell<HashMap<u64, Box<Reader>, RandomState>>,
    /// Readers whose multishot ended but who are still reading: re-armed after the drain.
    rearm: RefCell<Vec<(u64, RawFd)>>,
    /// Scratch copy of a batch of completions (`user_data`, `result`, `flags`).
    batch: RefCell<Vec<(u64, i32, u32)>>,
    /// Write batches not in use (see [`Batch`]); at most [`send::POOL_MAX`] are kept. Boxed:
    /// a connection holds its in-flight batch by pointer, so that idle ones hold 8 bytes.
    #[allow(clippy::vec_box)] // needed as long as in-flight batches are held by pointer
    pool: RefCell<Vec<Box<Batch>>>,
    /// The flush list taken by the last flush, kept for its capacity.
    spare: RefCell<Vec<Rc<ConnHandle>>>,
    /// Submissions the kernel could not take yet (see [`submit::enqueue`]); retried first by
    /// every flush and by the housekeeping tick ([`Ring::retry`]). At most two per
    /// connection (its armed receive and its one write), so bounded by the shard's
    /// connections.
    backlog: RefCell<VecDeque<squeue::Entry>>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("readers", &self.readers.borrow().len())
            .field("buffers", &self.bufs.count())
            .field("buffer_size", &self.bufs.size())
            .finish()
    }
}

impl Ring {
    /// A ring with `buffers` provided buffers of `buffer_size` bytes, sized for `entries`
    /// submissions per batch.
    pub(crate) fn new(buffers: u16, buffer_size: usize, entries: u32) -> io::Result<Ring> {
        let mut b = IoUring::builder();
        // The completion queue must hold a completion for every write in flight (one per
        // connection at most: a fan-out to 10,000 subscribers puts 10,000 in flight at once)
        // plus the receives: the kernel's maximum, 65,536 entries (1 MiB, touched only as
        // used). On overflow the kernel keeps completions aside (FEAT_NODROP, allocating) and
        // ends multishots, which are re-armed; `ringcast_io_cq_overflows_total` counts it.
        b.setup_cqsize(CQ_ENTRIES.max(entries * 2));
        // Not IORING_SETUP_COOP_TASKRUN: the shard sleeps in tokio-uring's ring, not in
        // this one, and with it completions of this ring were posted seconds late (measured:
        // 1 -> 1 at 1,000 msg/s went from ~1 ms to ~2.5 s p50).
        let ring = b.build(entries)?;
        let bufs = BufRing::new(buffers, buffer_size)?;
        // SAFETY: the ring and buffer memory live in `bufs`, which outlives the ring (field
        // order in `Ring`), and are never unmapped while registered.
        unsafe {
            ring.submitter()
                .register_buf_ring(bufs.entries_addr(), buffers, BGID)?;
        }
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(Ring {
            ring: RefCell::new(ring),
            bufs,
            eventfd,
            readers: RefCell::new(HashMap::default()),
            rearm: RefCell::new(Vec::new()),
            batch: RefCell::new(Vec::with_capacity(256)),
            pool: RefCell::new(Vec::new()),
            spare: RefCell::new(Vec::new()),
            backlog: RefCell::new(VecDeque::new()),
        })
    }

    /// Shrinks the reader map after a crowd of connections left (see
    /// [`crate::shard::Shard::shrink_tables`]).
    pub(crate) fn shrink_tables(&self) {
        let mut readers = self.readers.borrow_mut();
        if let Some(n) = shrink_target(readers.capacity(), readers.len(), 1024) {
            readers.shrink_to(n);
        }
        let mut spare = self.spare.borrow_mut();
        if spare.capacity() > 4096 {
            *spare = Vec::new();
        }
    }
}
