//! A TCP connection for hyper whose writes are gathered and sent once per poll of the
//! connection task ([`Coalesced::flush_now`]), so that the answers to pipelined requests
//! leave in one `write` instead of one each.
//!
//! hyper writes and "flushes" every response as soon as it is built: with 16 pipelined
//! requests that is up to 16 `writev`s, each running the whole loopback TCP path (and
//! waking the client) once. hyper's own `pipeline_flush` option skips the flush while
//! its read buffer is not empty, which also skips it on the way to a shutdown (an error
//! answer after a bad request head would be lost), so it is not used. Here the bytes
//! hyper writes are copied into a buffer ([`CoalescedIo::poll_write`] never waits unless
//! over [`HIGH_WATER`]) and written out at the end of every poll of the connection future
//! by [`Coalesced`], before the task yields: no answer waits for anything but the socket.
//! A shutdown writes everything buffered first.

use std::{
    future::Future,
    io::{self, IoSlice},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};

/// Buffered bytes above which a write first sends what is buffered (and may wait for the
/// socket), so that a client that does not read cannot grow the buffer without bound.
const HIGH_WATER: usize = 64 * 1024;
/// Capacity kept after a drain; a larger buffer (a big `/metrics` answer) is released.
const KEEP_CAPACITY: usize = 16 * 1024;

/// The write half and what hyper wrote that is not yet sent.
#[derive(Debug)]
struct Out {
    half: OwnedWriteHalf,
    buf: Vec<u8>,
    /// Bytes of `buf` already sent.
    sent: usize,
    /// Bytes sent over the connection's life: progress, for the write timeout.
    total_sent: u64,
}

impl Out {
    /// Sends everything buffered; `Pending` (with the socket's write readiness registered
    /// for `cx`) when the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.half).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
            self.total_sent += n as u64;
        }
        self.buf.clear();
        self.sent = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf.shrink_to(KEEP_CAPACITY);
        }
        Poll::Ready(Ok(()))
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }
}

/// The output half, held by both [`CoalescedIo`] (hyper writes into it) and [`Flusher`]
/// (the connection task sends it).
type SharedOut = Arc<Mutex<Out>>;

fn lock(out: &SharedOut) -> MutexGuard<'_, Out> {
    // Only the connection's own task touches it, one poll at a time; never poisoned in
    // practice, and the state stays consistent if it were.
    out.lock().unwrap_or_else(|p| p.into_inner())
}

/// The I/O object handed to hyper: reads go straight to the socket, writes to the buffer.
#[derive(Debug)]
pub(crate) struct CoalescedIo {
    read: OwnedReadHalf,
    out: SharedOut,
}

/// Splits `stream` into the I/O object for hyper and the handle that sends its writes.
pub(crate) fn coalesced(stream: TcpStream) -> (CoalescedIo, Flusher) {
    let (read, half) = stream.into_split();
    let out = Arc::new(Mutex::new(Out {
        half,
        buf: Vec::new(),
        sent: 0,
        total_sent: 0,
    }));
    (
        CoalescedIo {
            read,
            out: out.clone(),
        },
        Flusher { out },
    )
}

impl AsyncRead for CoalescedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for CoalescedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut out = lock(&self.out);
        if out.pending() >= HIGH_WATER {
            ready!(out.poll_drain(cx))?;
        }
        out.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut out = lock(&self.out);
        if out.pending() >= HIGH_WATER {
            ready!(out.poll_drain(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            out.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// The bytes are sent by [`Flusher::poll_flush`] at the end of this poll of the task.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut out = lock(&self.out);
        ready!(out.poll_drain(cx))?;
        Pin::new(&mut out.half).poll_shutdown(cx)
    }
}

/// Sends what the connection's hyper side wrote; owned by the connection task.
#[derive(Debug)]
pub(crate) struct Flusher {
    out: SharedOut,
}

impl Flusher {
    /// Sends everything buffered; `Pending` when the socket is full (its write readiness
    /// then wakes the task).
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.out).poll_drain(cx)
    }

    /// Bytes sent so far over the connection's life.
    fn total_sent(&self) -> u64 {
        lock(&self.out).total_sent
    }

    /// Makes the socket's close a reset (`SO_LINGER` 0): what is still queued for a peer
    /// that does not read is discarded, instead of the kernel keeping it (and retrying)
    /// after the descriptor is gone.
    fn reset_on_close(&self) {
        let out = lock(&self.out);
        let sock = socket2::SockRef::from(out.half.as_ref());
        let _ = sock.set_linger(Some(std::time::Duration::ZERO));
    }
}

/// How a coalesced connection ended.
#[derive(Debug)]
pub(crate) enum End<E> {
    /// The connection future's own result.
    Conn(Result<(), E>),
    /// Sending buffered bytes failed (the peer went away).
    Write(io::Error),
    /// Buffered bytes could not be sent for the write timeout (the peer does not read);
    /// the socket is reset when dropped.
    WriteTimeout,
}

/// Polls `conn` (hyper's connection future over a [`CoalescedIo`]) and, after each poll,
/// calls `after_poll` (which wakes the shards the poll's requests pushed to) and sends what
/// it wrote. Ends when `conn` ends and its last bytes are sent, or when a send fails, or
/// when bytes stay buffered without any being sent for `write_timeout`: whatever hyper is
/// doing meanwhile (waiting in a write over [`HIGH_WATER`], reading more pipelined
/// requests, or awaiting a handler), a peer that stops reading cannot hold the connection
/// longer than that.
pub(crate) async fn serve<F, E>(
    conn: F,
    flusher: Flusher,
    write_timeout: Duration,
    after_poll: impl Fn(),
) -> End<E>
where
    F: Future<Output = Result<(), E>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut done: Option<Result<(), E>> = None;
    // Armed while bytes are stuck; re-armed whenever some are sent.
    let mut stall = std::pin::pin!(tokio::time::sleep(write_timeout));
    let mut stalled_at: Option<u64> = None;
    let end = std::future::poll_fn(|cx| {
        if done.is_none() {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                done = Some(r);
            }
            after_poll();
        }
        match flusher.poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(End::Write(e)),
            Poll::Ready(Ok(())) => {
                stalled_at = None;
                match done.take() {
                    Some(r) => Poll::Ready(End::Conn(r)),
                    None => Poll::Pending,
                }
            }
            Poll::Pending => {
                let sent = flusher.total_sent();
                if stalled_at != Some(sent) {
                    stalled_at = Some(sent);
                    stall
                        .as_mut()
                        .reset(tokio::time::Instant::now() + write_timeout);
                }
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(End::WriteTimeout),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    })
    .await;
    if matches!(end, End::WriteTimeout) {
        flusher.reset_on_close();
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn writes_leave_once_per_poll_and_shutdown_sends_the_rest() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let client = tokio::spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                let mut got = Vec::new();
                c.read_to_end(&mut got).await.unwrap();
                got
            });
            let (s, _) = l.accept().await.unwrap();
            let (mut io, flusher) = coalesced(s);
            // Written but not sent until the flusher runs.
            io.write_all(b"one ").await.unwrap();
            io.flush().await.unwrap();
            assert_eq!(lock(&io.out).pending(), 4);
            std::future::poll_fn(|cx| flusher.poll_flush(cx))
                .await
                .unwrap();
            assert_eq!(lock(&io.out).pending(), 0);
            // A large write goes out in pieces; shutdown sends the rest first.
            let big = vec![b'x'; 3 * HIGH_WATER];
            io.write_all(&big).await.unwrap();
            io.write_all(b" two").await.unwrap();
            io.shutdown().await.unwrap();
            let got = client.await.unwrap();
            assert_eq!(got.len(), 4 + big.len() + 4);
            assert!(got.starts_with(b"one x") && got.ends_with(b"x two"));
        });
    }

    #[test]
    fn a_peer_that_does_not_read_ends_the_connection_at_the_write_timeout() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            let (mut io, flusher) = coalesced(s);
            // More than the socket buffers hold; the client never reads.
            io.write_all(&vec![b'x'; 16 << 20]).await.unwrap();
            let t0 = std::time::Instant::now();
            let conn = std::future::pending::<Result<(), ()>>();
            let end = serve(conn, flusher, Duration::from_millis(200), || {}).await;
            assert!(matches!(end, End::WriteTimeout), "{end:?}");
            let took = t0.elapsed();
            assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(3));
            drop(client);
        });
    }
}
