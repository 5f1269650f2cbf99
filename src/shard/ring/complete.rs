//! Completion dispatch: reaps the ring's completions in batches and hands each to its
//! owner by `user_data`: a write's (bit 0 set, [`super::send`]) or a connection's
//! receive ([`super::recv`]). After a drain, the receives that ended are re-armed and
//! everything the handlers queued is submitted in one syscall.

use std::rc::Rc;

use super::{recv::recv_id, send::WRITE_TAG, Ring};
use crate::shard::{handle::ConnHandle, Shard};

/// Completions handled before yielding to the shard's other tasks (writers, inbox).
pub(super) const BUDGET: usize = 4096;

impl Ring {
    /// Handles up to [`BUDGET`] completions; returns how many.
    pub(super) fn drain(&self, shard: &Shard) -> usize {
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
            for &(data, res, flags) in batch.iter() {
                self.complete(shard, data, res, flags);
            }
            // Handlers may have queued messages for this shard itself.
            shard.pump_local();
        }
        drop(batch);
        self.rearm(shard);
        // Writes started by the handlers, plus re-arms and follow-up writes: one syscall.
        self.flush(shard);
        handled
    }

    /// True when completions are waiting (e.g. flushed from an overflow after a drain).
    pub(super) fn pending(&self) -> bool {
        !self.ring.borrow_mut().completion().is_empty()
    }

    /// Handles one completion: a write's, or connection `data >> 1`'s receive.
    fn complete(&self, shard: &Shard, data: u64, res: i32, flags: u32) {
        if data & WRITE_TAG != 0 {
            // SAFETY: write `user_data` is made only by `send::write_sqe` from `Rc::into_raw`,
            // and each write completes exactly once, so this takes back that one reference.
            let c = unsafe { Rc::from_raw((data & !WRITE_TAG) as *const ConnHandle) };
            self.write_completed(shard, c, res);
        } else {
            self.recv_completed(shard, recv_id(data), res, flags);
        }
    }
}
