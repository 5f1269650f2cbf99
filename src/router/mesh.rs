//! The shard mesh: one lock-free queue per (source, destination) pair plus one shared
//! "external" queue per destination (REST acceptor, main thread), and one eventfd per
//! destination shard to wake it.
//!
//! Wake-up protocol (at most one eventfd write per consumer wake-up, no spinning):
//! - producer: push, then `if !notified.swap(true) { write(eventfd, 1) }`;
//! - consumer: `notified.store(false)`, drain every queue, then wait on the eventfd.
//!
//! A push that lands after the consumer cleared the flag either is seen by the drain that
//! follows, or finds the flag clear and writes the eventfd, so nothing is left unseen.
//! The queues are crossbeam `SegQueue`s: unbounded, so a push never fails and nothing is
//! dropped here; memory is bounded upstream (per-connection outbound caps, rate limits) and
//! the depth is observable through [`Mesh::depth`].

use std::{
    io,
    os::fd::RawFd,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

use crossbeam::{queue::SegQueue, utils::CachePadded};

use super::{ShardId, ShardMsg};

/// Where a message comes from: another shard, or outside the shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A shard thread.
    Shard(ShardId),
    /// A non-shard thread (REST acceptor, signal handler).
    External,
}

struct Inbox {
    /// `queues[src]` for src in 0..shards, then the external queue at index `shards`.
    queues: Vec<CachePadded<SegQueue<ShardMsg>>>,
    /// Set by the first producer after the consumer's last drain; see module docs.
    notified: CachePadded<AtomicBool>,
    /// Messages pushed but not yet drained (approximate, for metrics).
    depth: CachePadded<AtomicUsize>,
    eventfd: RawFd,
}

/// All inboxes. Shared by `Arc` between every shard and the REST acceptor.
pub struct Mesh {
    inboxes: Vec<Inbox>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("shards", &self.inboxes.len())
            .finish()
    }
}

impl Mesh {
    /// Builds the mesh for `shards` shards, creating one non-blocking eventfd per shard.
    pub fn new(shards: usize) -> io::Result<Mesh> {
        let mut inboxes = Vec::with_capacity(shards);
        for _ in 0..shards {
            // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            inboxes.push(Inbox {
                queues: (0..=shards)
                    .map(|_| CachePadded::new(SegQueue::new()))
                    .collect(),
                notified: CachePadded::new(AtomicBool::new(false)),
                depth: CachePadded::new(AtomicUsize::new(0)),
                eventfd: fd,
            });
        }
        Ok(Mesh { inboxes })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Queues `msg` for shard `to` and wakes it if it may be waiting. Never blocks, never fails.
    pub fn push(&self, from: Source, to: ShardId, msg: ShardMsg) {
        if self.push_deferred(from, to, msg) {
            self.wake(to);
        }
    }

    /// Queues `msg` for shard `to` like [`Mesh::push`] but leaves the eventfd write to the
    /// caller: true means the caller owes `to` a [`Mesh::wake`], soon (the shard may be
    /// asleep and will not look at the queue until woken). A producer that pushes in bursts
    /// (the REST thread, many pipelined publishes per connection poll) wakes each shard once
    /// per burst instead of once per consumer drain, so the consumer is not scheduled in the
    /// middle of the burst.
    pub fn push_deferred(&self, from: Source, to: ShardId, msg: ShardMsg) -> bool {
        let inbox = &self.inboxes[to.0 as usize];
        let idx = match from {
            Source::Shard(s) => s.0 as usize,
            Source::External => self.inboxes.len(),
        };
        inbox.queues[idx].push(msg);
        inbox.depth.fetch_add(1, Ordering::Relaxed);
        !inbox.notified.swap(true, Ordering::AcqRel)
    }

    /// Wakes shard `to` (one eventfd write); owed after a [`Mesh::push_deferred`] that
    /// returned true.
    pub fn wake(&self, to: ShardId) {
        let one: u64 = 1;
        // SAFETY: `eventfd` is a valid eventfd owned by the mesh for its whole life and
        // `one` is an 8-byte readable buffer, as eventfd writes require. A failed write
        // (EAGAIN: counter saturated) still leaves the fd readable, so it can be ignored.
        let _ = unsafe {
            libc::write(
                self.inboxes[to.0 as usize].eventfd,
                (&one as *const u64).cast(),
                8,
            )
        };
    }

    /// Clears the wake flag of shard `me`; call right before [`Mesh::drain`].
    pub fn arm(&self, me: ShardId) {
        self.inboxes[me.0 as usize]
            .notified
            .store(false, Ordering::Release);
        // The store must be visible before the drain reads the queues.
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Pops every queued message for `me`, in per-source FIFO order, up to `budget` messages.
    /// Returns how many were handled; when it equals `budget` more may be waiting.
    pub fn drain(&self, me: ShardId, budget: usize, mut f: impl FnMut(ShardMsg)) -> usize {
        let inbox = &self.inboxes[me.0 as usize];
        let mut n = 0;
        for q in &inbox.queues {
            while n < budget {
                match q.pop() {
                    Some(m) => {
                        n += 1;
                        f(m)
                    }
                    None => break,
                }
            }
        }
        inbox.depth.fetch_sub(n, Ordering::Relaxed);
        n
    }

    /// The eventfd that becomes readable when shard `me` has mail.
    pub fn eventfd(&self, me: ShardId) -> RawFd {
        self.inboxes[me.0 as usize].eventfd
    }

    /// Approximate number of undelivered messages queued for `me`.
    pub fn depth(&self, me: ShardId) -> usize {
        self.inboxes[me.0 as usize].depth.load(Ordering::Relaxed)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for inbox in &self.inboxes {
            // SAFETY: the fd was created in `new`, is owned only by the mesh and is closed once.
            unsafe { libc::close(inbox.eventfd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AppId;
    use std::sync::Arc;

    fn up(n: u16) -> ShardMsg {
        ShardMsg::PeerUp {
            app: AppId(0),
            peer: Arc::from(format!("p{n}")),
            shard: ShardId(n),
        }
    }

    #[test]
    fn fifo_per_source_and_wake_flag() {
        let mesh = Mesh::new(2).unwrap();
        mesh.arm(ShardId(1));
        for i in 0..10 {
            mesh.push(Source::Shard(ShardId(0)), ShardId(1), up(i));
        }
        assert_eq!(mesh.depth(ShardId(1)), 10);
        let mut got = vec![];
        mesh.arm(ShardId(1));
        mesh.drain(ShardId(1), usize::MAX, |m| {
            if let ShardMsg::PeerUp { shard, .. } = m {
                got.push(shard.0)
            }
        });
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(mesh.depth(ShardId(1)), 0);
        // The eventfd was written exactly once (counter == 1) despite 10 pushes.
        let mut v: u64 = 0;
        // SAFETY: valid eventfd and 8-byte buffer.
        let r = unsafe { libc::read(mesh.eventfd(ShardId(1)), (&mut v as *mut u64).cast(), 8) };
        assert_eq!(r, 8);
        assert_eq!(v, 1);
    }

    #[test]
    fn concurrent_producers_lose_nothing() {
        let mesh = Arc::new(Mesh::new(3).unwrap());
        let hs: Vec<_> = (0..2u16)
            .map(|s| {
                let m = mesh.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        m.push(Source::Shard(ShardId(s)), ShardId(2), up(i % 100));
                    }
                })
            })
            .collect();
        let mut total = 0;
        while total < 20_000 {
            mesh.arm(ShardId(2));
            total += mesh.drain(ShardId(2), 1000, |_| {});
        }
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(total, 20_000);
    }
}
