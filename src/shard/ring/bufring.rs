//! The provided-buffer ring: `count` buffers of `size` bytes in one anonymous mapping,
//! described to the kernel by a ring of `io_uring_buf` entries in a second one. Every
//! receive of the shard picks its buffer here (buffer group [`super::BGID`]); a buffer is
//! given back ([`BufRing::push`] + [`BufRing::publish`]) as soon as its bytes are handled.
//!
//! All the raw memory of the receive path lives here, with the `unsafe` that touches it.

use std::{
    cell::Cell,
    io,
    sync::atomic::{AtomicU16, Ordering},
};

use io_uring::types;

/// A ring of `count` provided buffers of `size` bytes, registered with one io_uring.
pub(super) struct BufRing {
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
    /// Maps the entries and the buffers, and hands every buffer to the ring.
    pub(super) fn new(count: u16, size: usize) -> io::Result<BufRing> {
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

    /// The address of the entries, for `register_buf_ring`.
    pub(super) fn entries_addr(&self) -> u64 {
        self.ring as u64
    }

    /// Number of buffers.
    pub(super) fn count(&self) -> u16 {
        self.count
    }

    /// Size of each buffer.
    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// Writes buffer `bid` into the next ring slot (not yet visible to the kernel).
    pub(super) fn push(&self, bid: u16) {
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
    pub(super) fn publish(&self) {
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
    pub(super) unsafe fn bytes(&self, bid: u16, len: usize) -> &[u8] {
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
        // registered with is dropped before this (field order in `Ring`), so the kernel no
        // longer uses them.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
            libc::munmap(self.mem.cast(), self.mem_len);
        }
    }
}
