//! Submission: how an entry gets into the ring's submission queue without ever being
//! dropped. Each entry is a connection's armed receive or its one write in flight; losing
//! one would leave that connection stuck, so an entry the kernel cannot take yet waits in
//! the ring's backlog and is retried, oldest first, by the next flush or by the
//! housekeeping tick ([`Ring::retry`]).
//!
//! The queue is seen through the [`SubmissionQueue`] trait so that the backlog logic is
//! tested against a queue that fills up and refuses.

use std::{collections::VecDeque, io};

use io_uring::{squeue, IoUring};

use super::Ring;
use crate::{metrics::ShardCounters, shard::Shard};

/// A submission queue as [`enqueue`] sees it (the ring, or a test double).
pub(super) trait SubmissionQueue {
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
/// is never dropped. Returns false when the entry went to the backlog.
pub(super) fn enqueue(
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
pub(super) fn retry_backlog(sq: &mut impl SubmissionQueue, backlog: &mut VecDeque<squeue::Entry>) {
    while let Some(sqe) = backlog.front() {
        if sq.try_push(sqe) {
            backlog.pop_front();
        } else if sq.submit().is_err() {
            return;
        }
    }
}

impl Ring {
    /// Queues a submission ([`enqueue`]), counting one that went to the backlog.
    pub(super) fn push(&self, ring: &mut IoUring, counters: &ShardCounters, sqe: squeue::Entry) {
        if !enqueue(ring, &mut self.backlog.borrow_mut(), sqe) {
            ShardCounters::add(&counters.io_submit_errors, 1);
        }
    }

    /// Called by the housekeeping tick: submits what an earlier failed submit left behind,
    /// so no connection waits for traffic that may never come.
    pub(crate) fn retry(&self, shard: &Shard) {
        let stalled =
            !self.backlog.borrow().is_empty() || !self.ring.borrow_mut().submission().is_empty();
        if stalled {
            self.flush(shard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;

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
