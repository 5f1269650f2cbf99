//! A connection's shared half: its outbound frame queue (bounded in bytes), liveness
//! clocks, close state, and the writer task that drains the queue with one `writev` per
//! wake-up (frames coalesced, the shared `Bytes` handed to the kernel without copying).
//!
//! Held by `Rc` by the connection's reader task, its writer task, the shard's connection
//! registry and the subscription index; all on one shard thread, hence `Cell`/`RefCell`.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    future::poll_fn,
    rc::Rc,
    sync::Arc,
    task::{Poll, Waker},
    time::Instant,
};

use bytes::{Buf, Bytes};
use tokio_uring::net::TcpStream;

use crossbeam::utils::CachePadded;

use crate::{
    metrics::ShardCounters,
    protocol::{close, encode},
};

/// Most frames handed to one `writev`.
const MAX_IOV: usize = 64;

/// Close progress of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseState {
    /// Frames are accepted.
    Open,
    /// A close frame is queued (or sent); nothing more is accepted. Carries the code.
    Closing(u16),
    /// The reader is gone: flush what is queued, then stop.
    Finished,
}

/// Outcome of [`ConnShared::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for writing.
    Queued,
    /// The connection is closing; the frame was not queued.
    Closed,
    /// The queue was over its byte cap: the connection is now closing with 4008.
    SlowConsumer,
}

/// State shared by everything that talks to one connection.
pub struct ConnShared {
    /// The socket. Reads happen in the reader task, writes in the writer task.
    pub stream: TcpStream,
    queue: RefCell<VecDeque<Bytes>>,
    /// Bytes queued and not yet handed to the kernel. Bytes of a `writev` in flight are not
    /// counted: its completion is reaped only when the shard next polls io_uring, so counting
    /// them would charge a fast reader for data the kernel already took. A reader that stops
    /// is still caught: its socket buffer fills, the `writev` stalls and the queue grows.
    queued_bytes: Cell<usize>,
    max_bytes: usize,
    /// Bytes of exempt frames (roster snapshots) not yet written: the cap is raised by this
    /// much until they are on the wire, so a large snapshot is delivered, not punished.
    allowance: Cell<usize>,
    waker: Cell<Option<Waker>>,
    state: Cell<CloseState>,
    /// When the close frame was queued, to enforce the close timeout.
    closing_since: Cell<Option<Instant>>,
    /// Last time anything arrived from the peer.
    pub last_seen: Cell<Instant>,
    /// Last time the server sent a WebSocket ping.
    pub last_ping: Cell<Instant>,
}

impl std::fmt::Debug for ConnShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnShared")
            .field("queued_bytes", &self.queued_bytes.get())
            .field("state", &self.state.get())
            .finish_non_exhaustive()
    }
}

impl ConnShared {
    /// Wraps an upgraded socket.
    pub fn new(stream: TcpStream, max_bytes: usize, now: Instant) -> Self {
        ConnShared {
            stream,
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            max_bytes,
            allowance: Cell::new(0),
            waker: Cell::new(None),
            state: Cell::new(CloseState::Open),
            closing_since: Cell::new(None),
            last_seen: Cell::new(now),
            last_ping: Cell::new(now),
        }
    }

    /// Queues a frame (a clone of shared bytes: a reference-count increment, no copy).
    /// Over the byte cap the connection is closed as a slow consumer: what is queued is
    /// discarded and a 4008 close frame takes its place, so the stream ends visibly
    /// instead of losing frames from its middle.
    pub fn send(&self, frame: &Bytes) -> Delivery {
        if self.state.get() != CloseState::Open {
            return Delivery::Closed;
        }
        let after = self.queued_bytes.get() + frame.len();
        if after > self.max_bytes + self.allowance.get() {
            self.close(close::SLOW_CONSUMER, "slow consumer", true);
            return Delivery::SlowConsumer;
        }
        self.queued_bytes.set(after);
        self.queue.borrow_mut().push_back(frame.clone());
        self.wake();
        Delivery::Queued
    }

    /// Queues a frame the connection is owed whatever the queue holds (a presence roster
    /// snapshot, bounded by the channel's roster): not checked against the cap, and the cap
    /// is raised by its size until it is written.
    pub fn send_exempt(&self, frame: &Bytes) -> Delivery {
        if self.state.get() != CloseState::Open {
            return Delivery::Closed;
        }
        self.allowance.set(self.allowance.get() + frame.len());
        self.queued_bytes.set(self.queued_bytes.get() + frame.len());
        self.queue.borrow_mut().push_back(frame.clone());
        self.wake();
        Delivery::Queued
    }

    /// Starts a server-initiated close: queues a close frame after the pending frames (or
    /// instead of them when `discard_pending`), and accepts nothing more.
    pub fn close(&self, code: u16, reason: &str, discard_pending: bool) {
        if self.state.get() != CloseState::Open {
            return;
        }
        if discard_pending {
            let mut q = self.queue.borrow_mut();
            let dropped: usize = q.iter().map(Bytes::len).sum();
            q.clear();
            self.queued_bytes.set(self.queued_bytes.get() - dropped);
            self.allowance.set(0);
        }
        self.push_raw(encode::ws_close(code, reason));
        self.state.set(CloseState::Closing(code));
        self.closing_since.set(Some(Instant::now()));
    }

    /// Queues bytes produced by the WebSocket codec itself (pong and close replies) while
    /// the connection is open; not subject to the byte cap (they are tiny and one per
    /// inbound control frame, which the read path bounds).
    pub fn push_raw(&self, frame: Bytes) {
        if matches!(self.state.get(), CloseState::Open) {
            self.queued_bytes.set(self.queued_bytes.get() + frame.len());
            self.queue.borrow_mut().push_back(frame);
            self.wake();
        }
    }

    /// The reader has finished: flush what is queued, then let the writer stop.
    pub fn finish(&self) {
        self.state.set(CloseState::Finished);
        self.wake();
    }

    /// Current close state.
    pub fn state(&self) -> CloseState {
        self.state.get()
    }

    /// When a server-initiated close started, if one did.
    pub fn closing_since(&self) -> Option<Instant> {
        self.closing_since.get()
    }

    /// Bytes queued and not yet handed to the kernel.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    /// Aborts all I/O on the socket: pending reads return 0, pending writes fail.
    pub fn abort(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Moves up to [`MAX_IOV`] frames into `iov`; waits while the queue is empty.
    /// Resolves to false when there is nothing more to write, ever.
    async fn next_batch(&self, iov: &mut Vec<Bytes>) -> bool {
        poll_fn(|cx| {
            let mut q = self.queue.borrow_mut();
            if q.is_empty() {
                return match self.state.get() {
                    CloseState::Open => {
                        self.waker.set(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                    CloseState::Closing(_) | CloseState::Finished => Poll::Ready(false),
                };
            }
            let n = q.len().min(MAX_IOV);
            iov.extend(q.drain(..n));
            // Handed to the kernel: no longer counted against the cap (see `queued_bytes`).
            let taken: usize = iov.iter().map(Bytes::len).sum();
            self.queued_bytes.set(self.queued_bytes.get() - taken);
            self.allowance
                .set(self.allowance.get().saturating_sub(taken));
            Poll::Ready(true)
        })
        .await
    }
}

/// The writer task of one connection: drains the queue until the connection is done.
/// Counts frames and bytes written in its shard's `counters` (one add per `writev`).
pub async fn run_writer(conn: Rc<ConnShared>, counters: Arc<CachePadded<ShardCounters>>) {
    let mut iov: Vec<Bytes> = Vec::new();
    while conn.next_batch(&mut iov).await {
        ShardCounters::add(&counters.messages_out, iov.len() as u64);
        let mut total: usize = iov.iter().map(Bytes::len).sum();
        while total > 0 {
            let (res, mut v) = conn.stream.writev(std::mem::take(&mut iov)).await;
            let n = match res {
                Ok(n) if n > 0 => n,
                _ => {
                    // Peer gone or socket aborted: stop writing; the reader notices too.
                    conn.abort();
                    conn.queue.borrow_mut().clear();
                    conn.queued_bytes.set(0);
                    return;
                }
            };
            ShardCounters::add(&counters.bytes_out, n as u64);
            total -= n;
            // Drop fully written frames, advance into a partially written one.
            let mut left = n;
            let full = v.iter().take_while(|b| {
                let whole = b.len() <= left;
                if whole {
                    left -= b.len();
                }
                whole
            });
            let k = full.count();
            v.drain(..k);
            if let Some(first) = v.first_mut() {
                first.advance(left);
            }
            iov = v;
        }
        iov.clear();
        if iov.capacity() > MAX_IOV {
            iov.shrink_to(8);
        }
    }
}
