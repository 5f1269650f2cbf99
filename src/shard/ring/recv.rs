//! Receives: one multishot `recv` per connection, armed when the connection is attached
//! and re-armed whenever the kernel ends it early, and the handling of its completions.
//!
//! Per receive completion:
//! - bytes: fed to the connection ([`conn::on_recv`]); the buffer is recycled at once;
//! - no `IORING_CQE_F_MORE` flag: the multishot ended (buffers ran out, completion queue
//!   overflow, end of stream or error): re-armed after the drain if the connection is still
//!   reading, otherwise the reader is dropped ([`conn::teardown`] starts first).

use std::os::fd::RawFd;

use io_uring::{cqueue, opcode, squeue, types};

use super::{Ring, BGID};
use crate::{
    metrics::ShardCounters,
    shard::{
        conn::{self, Reader},
        Shard,
    },
};

/// `user_data` of a receive: the connection id, shifted so that bit 0 is clear.
fn recv_data(id: u64) -> u64 {
    id << 1
}

/// The connection id of a receive completion's `user_data`.
pub(super) fn recv_id(data: u64) -> u64 {
    data >> 1
}

/// The connection's multishot receive.
fn recv_sqe(id: u64, fd: RawFd) -> squeue::Entry {
    opcode::RecvMulti::new(types::Fd(fd), BGID)
        .build()
        .user_data(recv_data(id))
}

impl Ring {
    /// Hands a freshly upgraded connection to the ring: the bytes that came with the upgrade
    /// request are handled first, then its multishot `recv` is armed.
    pub(crate) fn attach(&self, shard: &Shard, mut r: Box<Reader>, leftover: &[u8]) {
        if !leftover.is_empty() && !conn::on_recv(shard, &mut r, leftover) {
            return; // already closed by the peer; teardown started, nothing to arm
        }
        let (id, fd) = (r.id(), r.fd());
        self.readers.borrow_mut().insert(id, r);
        self.push(
            &mut self.ring.borrow_mut(),
            shard.counters(),
            recv_sqe(id, fd),
        );
        self.flush(shard); // submits the receive, and writes `welcome`
    }

    /// Re-arms the receives whose multishot ended during the drain.
    pub(super) fn rearm(&self, shard: &Shard) {
        let mut rearm = self.rearm.borrow_mut();
        let mut ring = self.ring.borrow_mut();
        for (id, fd) in rearm.drain(..) {
            self.push(&mut ring, shard.counters(), recv_sqe(id, fd));
        }
    }

    /// Connection `id`'s receive completed with `res` (bytes or -errno) and `flags`.
    pub(super) fn recv_completed(&self, shard: &Shard, id: u64, res: i32, flags: u32) {
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
