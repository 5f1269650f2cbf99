//! The shard's receive side: one multishot `recv` per connection on a second io_uring
//! instance (through the `io-uring` crate, since tokio-uring 0.5 has no multishot or
//! provided buffers), with one ring of provided buffers shared by every connection of the
//! shard. The same ring carries every write of the shard's connections (see
//! [`super::outbound`]): one submission syscall per flush, however many connections write.
//!
//! Why: with one-shot reads every idle connection holds a pending read, its own buffer and
//! a reader task (about 2 KB together). Here an idle connection holds nothing but its
//! armed `recv`: the kernel picks a buffer from the shard's ring only when bytes arrive,
//! the bytes are fed to the connection's [`Reader`] right away and the buffer goes
//! straight back to the ring.
//!
//! Wake-up: the ring has an eventfd registered; the [`run`] task waits on it through
//! tokio-uring (one pending read), then drains every completion. Per completion:
//! - bytes: fed to the connection ([`conn::on_recv`]); the buffer is recycled at once;
//! - no `IORING_CQE_F_MORE` flag: the multishot ended (buffers ran out, completion queue
//!   overflow, end of stream or error): re-armed if the connection is still reading,
//!   otherwise the reader is dropped ([`conn::teardown`] starts first).
//!
//! Lifetime rule: a [`Reader`] (which owns a reference to the socket) stays in
//! [`Rx::readers`] until its multishot's last completion, so the kernel never holds a
//! `recv` on a descriptor that was closed and reused. Teardown ends the multishot by
//! shutting the socket down, which completes it with 0.

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, VecDeque},
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    rc::Rc,
    sync::atomic::{AtomicU16, Ordering},
};

use ahash::RandomState;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{
    conn::{self, Reader},
    outbound::{Batch, ConnShared, Inflight},
    Shard,
};
use crate::{metrics::ShardCounters, router::index::shrink_target};

/// The provided-buffer group id used by every `recv` of the ring.
const BGID: u16 = 0;

/// Completion queue size (the kernel's maximum).
const CQ_ENTRIES: u32 = 65_536;

/// Completions handled before yielding to the shard's other tasks (writers, inbox).
const BUDGET: usize = 4096;

/// A ring of `count` provided buffers of `size` bytes, registered with one io_uring.
struct BufRing {
    /// The `io_uring_buf` entries (page-aligned anonymous mapping, shared with the kernel).
    ring: *mut types::BufRingEntry,
    ring_len: usize,
    /// The buffers themselves (one anonymous mapping, `count * size` bytes).
    mem: *mut u8,
    mem_len: usize,
    count: u16,
    size: usize,
    /// Our copy of the ring's tail (the kernel reads the shared one).
    tail: Cell<u16>,
}

/// Maps `len` bytes of anonymous, zeroed, page-aligned memory.
fn map_anon(len: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
    // result is checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

impl BufRing {
    fn new(count: u16, size: usize) -> io::Result<BufRing> {
        assert!(count.is_power_of_two(), "validated by config");
        let ring_len = count as usize * std::mem::size_of::<types::BufRingEntry>();
        let ring = map_anon(ring_len)?.cast::<types::BufRingEntry>();
        let mem_len = count as usize * size;
        let mem = match map_anon(mem_len) {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: `ring` was mapped above with `ring_len` bytes and is not used again.
                unsafe { libc::munmap(ring.cast(), ring_len) };
                return Err(e);
            }
        };
        let b = BufRing {
            ring,
            ring_len,
            mem,
            mem_len,
            count,
            size,
            tail: Cell::new(0),
        };
        for bid in 0..count {
            b.push(bid);
        }
        b.publish();
        Ok(b)
    }

    /// Writes buffer `bid` into the next ring slot (not yet visible to the kernel).
    fn push(&self, bid: u16) {
        let tail = self.tail.get();
        let slot = (tail & (self.count - 1)) as usize;
        // SAFETY: `slot < count`, so the entry lies inside the ring mapping. The kernel only
        // reads entries between its head and the published tail; this slot is past the
        // published tail (the buffer it described was consumed), so nobody reads it now.
        let e = unsafe { &mut *self.ring.add(slot) };
        // SAFETY: `bid < count`, so the buffer lies inside `mem`.
        e.set_addr(unsafe { self.mem.add(bid as usize * self.size) } as u64);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail.set(tail.wrapping_add(1));
    }

    /// Makes every pushed entry visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field lies in the first entry of the live ring mapping; the kernel
        // reads it with acquire semantics, so a release store orders the entries before it.
        let tail = unsafe { &*(types::BufRingEntry::tail(self.ring) as *const AtomicU16) };
        tail.store(self.tail.get(), Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`, which a completion just handed us.
    ///
    /// # Safety
    /// `bid` must come from a completion whose buffer has not been recycled yet, so the
    /// kernel does not write to it while the slice lives.
    unsafe fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        assert!(
            bid < self.count && len <= self.size,
            "kernel-provided buffer id"
        );
        // SAFETY: in bounds (checked above); not written by the kernel until recycled
        // (the caller's contract).
        unsafe { std::slice::from_raw_parts(self.mem.add(bid as usize * self.size), len) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both regions were mapped in `new` with these lengths; the ring they were
        // registered with is dropped before this (field order in `Rx`), so the kernel no
        // longer uses them.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
            libc::munmap(self.mem.cast(), self.mem_len);
        }
    }
}

/// One shard's receive ring and its readers.
pub struct Rx {
    /// Declared before `bufs` so that it is dropped (unregistering the buffers) first.
    ring: RefCell<IoUring>,
    bufs: BufRing,
    eventfd: OwnedFd,
    /// Every connection with an armed `recv`, by connection id (the completions'
    /// `user_data`). A reader is taken out while it handles bytes, so handlers never see
    /// this map borrowed.
    readers: RefCell<HashMap<u64, Box<Reader>, RandomState>>,
    /// Readers whose multishot ended but who are still reading: re-armed after the drain.
    rearm: RefCell<Vec<(u64, RawFd)>>,
    /// Scratch copy of a batch of completions (`user_data`, `result`, `flags`).
    batch: RefCell<Vec<(u64, i32, u32)>>,
    /// Write batches not in use (see [`Batch`]); at most [`POOL_MAX`] are kept. Boxed: a
    /// connection holds its in-flight batch by pointer, so that idle ones hold 8 bytes.
    #[allow(clippy::vec_box)]
    pool: RefCell<Vec<Box<Batch>>>,
    /// The flush list taken by the last flush, kept for its capacity.
    spare: RefCell<Vec<Rc<ConnShared>>>,
    /// Submissions the kernel could not take yet (see [`enqueue`]); retried first by every
    /// flush and by the housekeeping tick ([`Rx::retry`]). At most two per connection (its
    /// armed receive and its one write), so bounded by the shard's connections.
    backlog: RefCell<VecDeque<squeue::Entry>>,
}

/// Most idle write batches a shard keeps (about 3 KiB each).
const POOL_MAX: usize = 256;

/// `user_data` of a receive completion: the connection id, shifted so that bit 0 is clear.
fn recv_data(id: u64) -> u64 {
    id << 1
}

/// `user_data` bit marking a write completion; the rest is the `Rc<ConnShared>` pointer the
/// write holds (allocations are at least 8-byte aligned, so bit 0 is free).
const WRITE_TAG: u64 = 1;

impl std::fmt::Debug for Rx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rx")
            .field("readers", &self.readers.borrow().len())
            .field("buffers", &self.bufs.count)
            .field("buffer_size", &self.bufs.size)
            .finish()
    }
}

impl Rx {
    /// A receive ring with `buffers` provided buffers of `buffer_size` bytes, sized for
    /// `entries` submissions per batch.
    pub fn new(buffers: u16, buffer_size: usize, entries: u32) -> io::Result<Rx> {
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
        // order in `Rx`), and are never unmapped while registered.
        unsafe {
            ring.submitter()
                .register_buf_ring(bufs.ring as u64, buffers, BGID)?;
        }
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(Rx {
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
    /// [`Shard::shrink_tables`]).
    pub fn shrink_tables(&self) {
        let mut readers = self.readers.borrow_mut();
        if let Some(n) = shrink_target(readers.capacity(), readers.len(), 1024) {
            readers.shrink_to(n);
        }
        let mut spare = self.spare.borrow_mut();
        if spare.capacity() > 4096 {
            *spare = Vec::new();
        }
    }

    /// Hands a freshly upgraded connection to the ring: the bytes that came with the upgrade
    /// request are handled first, then its multishot `recv` is armed.
    pub fn attach(&self, shard: &Shard, mut r: Box<Reader>, leftover: &[u8]) {
        if !leftover.is_empty() && !conn::on_recv(shard, &mut r, leftover) {
            return; // already closed by the peer; teardown started, nothing to arm
        }
        let (id, fd) = (r.id(), r.fd());
        self.readers.borrow_mut().insert(id, r);
        self.push(&mut self.ring.borrow_mut(), shard, recv_sqe(id, fd));
        self.flush(shard); // submits the receive, and writes `welcome`
    }

    /// Handles up to [`BUDGET`] completions; returns how many.
    fn drain(&self, shard: &Shard) -> usize {
        let mut handled = 0;
        let mut batch = self.batch.borrow_mut();
        while handled < BUDGET {
            batch.clear();
            {
                let mut ring = self.ring.borrow_mut();
                let cq = ring.completion();
                let room = batch.capacity();
                batch.extend(
                    cq.take(room)
                        .map(|c| (c.user_data(), c.result(), c.flags())),
                );
            }
            if batch.is_empty() {
                break;
            }
            handled += batch.len();
            for &(id, res, flags) in batch.iter() {
                self.complete(shard, id, res, flags);
            }
            // Handlers may have queued messages for this shard itself.
            shard.pump_local();
        }
        drop(batch);
        {
            let mut rearm = self.rearm.borrow_mut();
            let mut ring = self.ring.borrow_mut();
            for (id, fd) in rearm.drain(..) {
                self.push(&mut ring, shard, recv_sqe(id, fd));
            }
        }
        // Writes started by the handlers, plus re-arms and follow-up writes: one syscall.
        self.flush(shard);
        handled
    }

    /// Starts a write on every connection of the shard's flush list that can write now,
    /// then submits everything queued in one syscall.
    pub fn flush(&self, shard: &Shard) {
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
            if c.writable() {
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
            // the housekeeping tick ([`Rx::retry`]) submits them.
            if let Err(e) = ring.submit() {
                ShardCounters::add(&counters.io_submit_errors, 1);
                tracing::warn!(cause = %e, "io_uring submit failed; retried on the next flush");
            }
        }
    }

    /// Called by the housekeeping tick: submits what an earlier failed submit left behind,
    /// so no connection waits for traffic that may never come.
    pub fn retry(&self, shard: &Shard) {
        let stalled =
            !self.backlog.borrow().is_empty() || !self.ring.borrow_mut().submission().is_empty();
        if stalled {
            self.flush(shard);
        }
    }

    /// Queues a submission ([`enqueue`]), counting a refused submit.
    fn push(&self, ring: &mut IoUring, shard: &Shard, sqe: squeue::Entry) {
        if !enqueue(ring, &mut self.backlog.borrow_mut(), sqe) {
            ShardCounters::add(&shard.counters().io_submit_errors, 1);
        }
    }

    /// Moves the connection's next frames into a write and queues its submission.
    fn start_write(&self, ring: &mut IoUring, counters: &ShardCounters, c: Rc<ConnShared>) {
        let n = c.take_frames(|| self.pool.borrow_mut().pop().unwrap_or_default());
        ShardCounters::add(&counters.messages_out, n as u64);
        if let Some(sqe) = write_sqe(c) {
            if !enqueue(ring, &mut self.backlog.borrow_mut(), sqe) {
                ShardCounters::add(&counters.io_submit_errors, 1);
            }
        }
    }

    /// A write of the connection `c` completed.
    fn write_completed(&self, shard: &Shard, c: Rc<ConnShared>, res: i32) {
        if res > 0 {
            ShardCounters::add(&shard.counters().bytes_out, res as u64);
        }
        let (batch, more) = c.write_done(res);
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
            if matches!(*c.inflight.borrow(), Inflight::Idle) {
                self.start_write(&mut ring, shard.counters(), c);
            } else if let Some(sqe) = write_sqe(c) {
                self.push(&mut ring, shard, sqe); // the unwritten rest of the same frames
            }
        }
    }

    /// True when completions are waiting (e.g. flushed from an overflow after a drain).
    fn pending(&self) -> bool {
        !self.ring.borrow_mut().completion().is_empty()
    }

    /// Handles one completion: a write's, or connection `data >> 1`'s receive.
    fn complete(&self, shard: &Shard, data: u64, res: i32, flags: u32) {
        if data & WRITE_TAG != 0 {
            // SAFETY: write `user_data` is made only by `submit_write` from `Rc::into_raw`, and
            // each write completes exactly once, so this takes back that one reference.
            let c = unsafe { Rc::from_raw((data & !WRITE_TAG) as *const ConnShared) };
            self.write_completed(shard, c, res);
            return;
        }
        let id = data >> 1;
        let more = cqueue::more(flags);
        // A completion may carry a buffer whatever its result (an end-of-stream completion
        // can consume one too): every buffer it names goes back to the ring once handled.
        let bid = cqueue::buffer_select(flags);
        let taken = self.readers.borrow_mut().remove(&id);
        let Some(mut r) = taken else {
            // Cannot happen (a reader stays until its last completion).
            self.recycle(bid);
            return;
        };
        if res > 0 {
            match bid {
                Some(bid) if !r.is_done() => {
                    // SAFETY: `bid` was just handed to us by this completion and is recycled
                    // only after the slice is no longer used.
                    let bytes = unsafe { self.bufs.bytes(bid, res as usize) };
                    conn::on_recv(shard, &mut r, bytes);
                }
                Some(_) => {} // teardown under way: the bytes are not wanted
                None => {
                    tracing::error!("recv completion without a buffer");
                    conn::teardown(shard, &mut r);
                }
            }
            self.recycle(bid);
            if !more {
                if r.is_done() {
                    return; // teardown is under way and nothing is armed: drop the reader
                }
                self.rearm.borrow_mut().push((id, r.fd()));
            }
            self.readers.borrow_mut().insert(id, r);
            return;
        }
        self.recycle(bid);
        if more {
            // Not expected (errors end the multishot); keep the reader until the last one.
            self.readers.borrow_mut().insert(id, r);
        } else if res == -libc::ENOBUFS && !r.is_done() {
            // Every buffer was in use: recycled by the end of this drain, so read again then.
            ShardCounters::add(&shard.counters().recv_buffers_exhausted, 1);
            self.rearm.borrow_mut().push((id, r.fd()));
            self.readers.borrow_mut().insert(id, r);
        } else {
            // End of stream, reset, shutdown by teardown: the multishot is over.
            conn::teardown(shard, &mut r);
        }
    }

    /// Gives a buffer a completion named back to the kernel.
    fn recycle(&self, bid: Option<u16>) {
        if let Some(bid) = bid {
            self.bufs.push(bid);
            self.bufs.publish();
        }
    }
}

/// A submission queue as [`enqueue`] sees it (the ring, or a test double).
trait SubmissionQueue {
    /// Puts an entry in the queue; false when the queue is full.
    fn try_push(&mut self, sqe: &squeue::Entry) -> bool;
    /// Hands the queued entries to the kernel.
    fn submit(&mut self) -> io::Result<usize>;
}

impl SubmissionQueue for IoUring {
    fn try_push(&mut self, sqe: &squeue::Entry) -> bool {
        // SAFETY: every entry made here refers to memory that outlives the request: receive
        // buffers come from the registered ring (which outlives the ring itself), and a
        // write's frames and iovecs are owned by the connection that its `user_data` keeps
        // alive until the completion.
        unsafe { self.submission().push(sqe) }.is_ok()
    }

    fn submit(&mut self) -> io::Result<usize> {
        IoUring::submit(self)
    }
}

/// Queues a submission, handing the full queue to the kernel first when needed. If the
/// kernel refuses (`io_uring_enter` failed), or entries are already waiting, the entry goes
/// to `backlog` instead, which [`retry_backlog`] empties first at the next flush: an entry
/// is never dropped, because each one is a connection's armed receive or its one write in
/// flight, and losing it would leave that connection stuck. Returns false when the entry
/// went to the backlog.
fn enqueue(
    sq: &mut impl SubmissionQueue,
    backlog: &mut VecDeque<squeue::Entry>,
    sqe: squeue::Entry,
) -> bool {
    if backlog.is_empty() {
        loop {
            if sq.try_push(&sqe) {
                return true;
            }
            if let Err(e) = sq.submit() {
                tracing::warn!(cause = %e, "io_uring submit failed; entry kept for the next flush");
                break;
            }
        }
    }
    backlog.push_back(sqe);
    false
}

/// Moves backlogged entries into the submission queue, oldest first, submitting when it is
/// full; stops (keeping the rest) if the kernel refuses again.
fn retry_backlog(sq: &mut impl SubmissionQueue, backlog: &mut VecDeque<squeue::Entry>) {
    while let Some(sqe) = backlog.front() {
        if sq.try_push(sqe) {
            backlog.pop_front();
        } else if sq.submit().is_err() {
            return;
        }
    }
}

fn recv_sqe(id: u64, fd: RawFd) -> squeue::Entry {
    opcode::RecvMulti::new(types::Fd(fd), BGID)
        .build()
        .user_data(recv_data(id))
}

/// The submission of the connection's in-flight write (none when nothing is in flight). The
/// write holds a reference to the connection (its `user_data`) until it completes, so the
/// socket and the frames outlive the kernel's use of them.
fn write_sqe(c: Rc<ConnShared>) -> Option<squeue::Entry> {
    let fd = types::Fd(c.stream.as_raw_fd());
    let sqe = match &mut *c.inflight.borrow_mut() {
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

/// The shard's flusher: starts the writes of connections that got frames from anywhere
/// other than the ring's own drain (mesh inbox, timers, new connections), once per
/// scheduler pass however many frames were queued.
pub async fn flusher(shard: Rc<Shard>) {
    loop {
        std::future::poll_fn(|cx| {
            if shard.tx.dirty.borrow().is_empty() {
                shard.tx.waker.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        shard.rx.flush(&shard);
    }
}

/// Waits on the ring's eventfd and drains completions, until the process exits.
pub async fn run(shard: Rc<Shard>) {
    let rx = &shard.rx;
    // SAFETY: `dup` of the ring's eventfd, which lives as long as the shard; the duplicate
    // is owned by `file` alone.
    let fd = unsafe { libc::dup(rx.eventfd.as_raw_fd()) };
    if fd < 0 {
        tracing::error!(
            shard = shard.id.0,
            "cannot dup eventfd; connections will not be read"
        );
        return;
    }
    // SAFETY: `fd` is a fresh, valid descriptor owned by nobody else.
    let file = tokio_uring::fs::File::from_std(unsafe { File::from_raw_fd(fd) });
    let mut buf = vec![0u8; 8];
    loop {
        // Reset the counter before draining: a completion posted during the drain makes the
        // next read return at once, so none is left unseen.
        let (res, b) = file.read_at(buf, 0).await;
        buf = b;
        if let Err(e) = res {
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(shard = shard.id.0, cause = %e, "eventfd read failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        while rx.drain(&shard) >= BUDGET || rx.pending() {
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A submission queue of `room` slots whose submits fail while `refuse` is set.
    struct Flaky {
        queued: Vec<u64>,
        room: usize,
        refuse: bool,
        submitted: Vec<u64>,
    }

    impl SubmissionQueue for Flaky {
        fn try_push(&mut self, sqe: &squeue::Entry) -> bool {
            if self.queued.len() == self.room {
                return false;
            }
            self.queued.push(sqe.get_user_data());
            true
        }
        fn submit(&mut self) -> io::Result<usize> {
            if self.refuse {
                return Err(io::Error::from_raw_os_error(libc::EAGAIN));
            }
            let n = self.queued.len();
            self.submitted.append(&mut self.queued);
            Ok(n)
        }
    }

    fn nop(data: u64) -> squeue::Entry {
        opcode::Nop::new().build().user_data(data)
    }

    #[test]
    fn refused_submissions_are_kept_and_retried_in_order() {
        let mut sq = Flaky {
            queued: vec![],
            room: 2,
            refuse: false,
            submitted: vec![],
        };
        let mut backlog = VecDeque::new();
        for i in 0..3 {
            assert!(enqueue(&mut sq, &mut backlog, nop(i)));
        }
        assert_eq!(
            sq.submitted,
            [0, 1],
            "a full queue is submitted, not dropped"
        );
        sq.refuse = true;
        assert!(enqueue(&mut sq, &mut backlog, nop(3)));
        assert!(
            !enqueue(&mut sq, &mut backlog, nop(4)),
            "refused: backlogged"
        );
        assert!(
            !enqueue(&mut sq, &mut backlog, nop(5)),
            "kept behind the backlog"
        );
        assert_eq!(backlog.len(), 2);
        retry_backlog(&mut sq, &mut backlog);
        assert_eq!(backlog.len(), 2, "still refused: nothing lost");
        sq.refuse = false;
        retry_backlog(&mut sq, &mut backlog);
        sq.submit().unwrap();
        assert!(backlog.is_empty());
        assert_eq!(sq.submitted, [0, 1, 2, 3, 4, 5]);
    }
}
