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
//! The queues are crossbeam `SegQueue`s: a push never fails and nothing is dropped here.
//! What bounds them: data (publications and direct messages, [`ShardMsg::data_bytes`]) is
//! counted per destination, and producers ask [`Mesh::has_room`] before pushing it: past
//! `max_data_bytes` a WebSocket publish or send is refused with `rate_limited` and a REST
//! publish with 503, so a destination that falls behind pushes back instead of growing
//! memory. Control messages (presence, directory, queries, shutdown) are never refused:
//! each is caused by a connection event or a REST request, which are bounded themselves.
//! The depth is observable through [`Mesh::depth`] and [`Mesh::data_bytes`].
//!
//! Fairness: [`Mesh::drain`] takes at most a per-source share of its budget from each queue
//! per round, starting one queue further at every call, so one source flooding a shard
//! cannot starve the other shards' queues, the REST queue or a shutdown.

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

struct Counts {
    /// Messages pushed but not yet drained (approximate, for metrics).
    depth: AtomicUsize,
    /// Bytes of data messages pushed but not yet drained (the bound's measure).
    data_bytes: AtomicUsize,
}

struct Inbox {
    /// `queues[src]` for src in 0..shards, then the external queue at index `shards`.
    queues: Vec<CachePadded<SegQueue<ShardMsg>>>,
    /// Set by the first producer after the consumer's last drain; see module docs.
    notified: CachePadded<AtomicBool>,
    /// What is queued; one cache line, since a data push updates both counts.
    counts: CachePadded<Counts>,
    /// The queue the next drain starts at (written by the consumer only).
    cursor: AtomicUsize,
    eventfd: RawFd,
}

/// All inboxes. Shared by `Arc` between every shard and the REST acceptor.
pub struct Mesh {
    inboxes: Vec<Inbox>,
    /// Data bytes a destination may have queued before producers are refused (0: no bound).
    max_data_bytes: usize,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("shards", &self.inboxes.len())
            .finish()
    }
}

impl Mesh {
    /// Builds the mesh for `shards` shards, creating one non-blocking eventfd per shard;
    /// `max_data_bytes` is the per-destination bound of [`Mesh::has_room`] (0: none).
    pub fn new(shards: usize, max_data_bytes: usize) -> io::Result<Mesh> {
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
                counts: CachePadded::new(Counts {
                    depth: AtomicUsize::new(0),
                    data_bytes: AtomicUsize::new(0),
                }),
                cursor: AtomicUsize::new(0),
                eventfd: fd,
            });
        }
        Ok(Mesh {
            inboxes,
            max_data_bytes,
        })
    }

    /// True when shard `to` may be sent more data: its queued data bytes are under the
    /// bound. Approximate by design (producers race): the bound is exceeded by at most one
    /// message per concurrent producer.
    pub(crate) fn has_room(&self, to: ShardId) -> bool {
        self.max_data_bytes == 0
            || self.inboxes[to.0 as usize]
                .counts
                .data_bytes
                .load(Ordering::Relaxed)
                < self.max_data_bytes
    }

    /// True when every shard but `except` has room ([`Mesh::has_room`]): a publication
    /// goes to all of them or to none.
    pub(crate) fn all_have_room(&self, except: Option<ShardId>) -> bool {
        self.max_data_bytes == 0
            || (0..self.inboxes.len() as u16)
                .map(ShardId)
                .all(|s| Some(s) == except || self.has_room(s))
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
    pub(crate) fn push_deferred(&self, from: Source, to: ShardId, msg: ShardMsg) -> bool {
        let inbox = &self.inboxes[to.0 as usize];
        let idx = match from {
            Source::Shard(s) => s.0 as usize,
            Source::External => self.inboxes.len(),
        };
        let data = msg.data_bytes();
        if data > 0 {
            inbox.counts.data_bytes.fetch_add(data, Ordering::Relaxed);
        }
        inbox.queues[idx].push(msg);
        inbox.counts.depth.fetch_add(1, Ordering::Relaxed);
        !inbox.notified.swap(true, Ordering::AcqRel)
    }

    /// Wakes shard `to` (one eventfd write); owed after a [`Mesh::push_deferred`] that
    /// returned true.
    pub(crate) fn wake(&self, to: ShardId) {
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
    pub(crate) fn arm(&self, me: ShardId) {
        self.inboxes[me.0 as usize]
            .notified
            .store(false, Ordering::Release);
        // The store must be visible before the drain reads the queues.
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Pops queued messages for `me`, in per-source FIFO order, up to `budget` messages.
    /// Round-robin: each round takes at most `budget / sources` (at least one) from every
    /// queue, and each call starts one queue further than the last, so a flooded queue
    /// never delays the others by more than one share. Returns how many were handled; when
    /// it equals `budget` more may be waiting.
    pub fn drain(&self, me: ShardId, budget: usize, mut f: impl FnMut(ShardMsg)) -> usize {
        let inbox = &self.inboxes[me.0 as usize];
        let sources = inbox.queues.len();
        let share = (budget / sources).max(1);
        let start = inbox.cursor.load(Ordering::Relaxed);
        inbox.cursor.store((start + 1) % sources, Ordering::Relaxed);
        let (mut n, mut data) = (0, 0);
        'rounds: loop {
            let mut took = false;
            for k in 0..sources {
                let q = &inbox.queues[(start + k) % sources];
                for _ in 0..share {
                    if n == budget {
                        break 'rounds;
                    }
                    let Some(m) = q.pop() else { break };
                    took = true;
                    n += 1;
                    data += m.data_bytes();
                    f(m);
                }
            }
            if !took {
                break;
            }
        }
        inbox.counts.depth.fetch_sub(n, Ordering::Relaxed);
        if data > 0 {
            inbox.counts.data_bytes.fetch_sub(data, Ordering::Relaxed);
        }
        n
    }

    /// The eventfd that becomes readable when shard `me` has mail.
    pub(crate) fn eventfd(&self, me: ShardId) -> RawFd {
        self.inboxes[me.0 as usize].eventfd
    }

    /// Approximate number of undelivered messages queued for `me`.
    pub(crate) fn depth(&self, me: ShardId) -> usize {
        self.inboxes[me.0 as usize]
            .counts
            .depth
            .load(Ordering::Relaxed)
    }

    /// Approximate bytes of undelivered data messages queued for `me`.
    pub(crate) fn data_bytes(&self, me: ShardId) -> usize {
        self.inboxes[me.0 as usize]
            .counts
            .data_bytes
            .load(Ordering::Relaxed)
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
        let mesh = Mesh::new(2, 0).unwrap();
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

    fn publication(bytes: usize) -> ShardMsg {
        ShardMsg::Publish(Arc::new(crate::router::Publication {
            app: AppId(0),
            channel: Arc::from("c"),
            origin: None,
            frame: bytes::Bytes::from(vec![0u8; bytes]),
            frame_with_meta: None,
        }))
    }

    #[test]
    fn a_flooding_source_does_not_starve_the_others() {
        let mesh = Mesh::new(2, 0).unwrap();
        let me = ShardId(1);
        for i in 0..10_000 {
            mesh.push(Source::Shard(ShardId(0)), me, up(i % 100));
        }
        mesh.push(Source::External, me, up(500));
        // The first drain of 1,024 takes the external message within its first round.
        let mut pos = None;
        let mut i = 0;
        mesh.drain(me, 1024, |m| {
            if let ShardMsg::PeerUp { shard, .. } = m {
                if shard.0 == 500 {
                    pos = Some(i);
                }
            }
            i += 1;
        });
        let pos = pos.expect("the external message was drained");
        assert!(pos <= 1024 / 3 + 1, "external message handled {pos}th");
    }

    #[test]
    fn data_bytes_bound_the_room_and_drain_gives_it_back() {
        let mesh = Mesh::new(2, 10_000).unwrap();
        let to = ShardId(1);
        assert!(mesh.has_room(to));
        for _ in 0..5 {
            mesh.push(Source::Shard(ShardId(0)), to, publication(2_000));
        }
        assert!(!mesh.has_room(to), "5 x 2,000 bytes reach the bound");
        assert!(mesh.has_room(ShardId(0)));
        assert!(mesh.all_have_room(Some(to)));
        assert!(!mesh.all_have_room(None));
        // Control messages do not count.
        mesh.push(Source::External, to, up(1));
        assert_eq!(mesh.data_bytes(to), 10_000);
        mesh.drain(to, usize::MAX, |_| {});
        assert_eq!(mesh.data_bytes(to), 0);
        assert!(mesh.has_room(to));
        assert!(
            Mesh::new(1, 0).unwrap().has_room(ShardId(0)),
            "0 means no bound"
        );
    }

    #[test]
    fn concurrent_producers_lose_nothing() {
        let mesh = Arc::new(Mesh::new(3, 0).unwrap());
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
