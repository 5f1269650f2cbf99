//! One connection's life: its task does the HTTP upgrade (with deadline and caps),
//! authentication, registration and `welcome`, then hands the connection's [`Reader`] to
//! the shard's ring and ends. From then on [`on_recv`] decodes the WebSocket frames in the
//! bytes the ring received and passes each text message to the commands ([`super::cmd`]);
//! [`teardown`] runs once when the connection ends.
//!
//! tungstenite runs over an in-memory adapter ([`Feed`]): it is handed the bytes io_uring
//! read and answers `WouldBlock` when they run out; whatever it writes (pong and close
//! replies) is queued on the connection's outbound queue. Server frames carrying data are
//! encoded by [`crate::protocol::encode`] and never go through tungstenite.

use std::{
    io::{self, Read, Write},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use tokio_uring::net::TcpStream;
use tungstenite::{
    error::{CapacityError, Error as WsError},
    protocol::WebSocketContext,
    protocol::{Role, WebSocketConfig},
    Message,
};

use super::{
    cmd::{self, Flow},
    handle::ConnHandle,
    handshake::{self, Handshake},
    outbound::CloseState,
    pending::PendingSlot,
    rate_limit::{PingBudget, TokenBucket},
    ConnEntry, Shard,
};
use crate::{
    auth::{Actions, AppId, ChannelScope, Identity},
    clock::unix_now,
    metrics::{AuthFailure, ShardCounters},
    protocol::{close, encode},
    router::ConnId,
};

/// Serves one accepted socket until it closes. Never panics on peer input; every exit path
/// aborts the socket so no io_uring operation keeps it alive.
///
/// `pending` is the socket's place under the pending-handshake caps: given back once the
/// upgrade is answered (101 or an error status), or on any earlier exit.
pub(crate) async fn serve(shard: Rc<Shard>, stream: TcpStream, pending: PendingSlot) {
    let limits = &shard.broker.limits;
    let stream = Rc::new(stream);
    // 1. The upgrade request, under the handshake deadline.
    let mut head: Vec<u8> = Vec::new();
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    let mut buf = Vec::with_capacity(limits.read_buffer_size.min(4096));
    let req = loop {
        buf.clear();
        let (res, b) = match tokio::time::timeout_at(deadline, stream.read(buf)).await {
            Ok(r) => r,
            Err(_) => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
        };
        buf = b;
        match res {
            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
        match handshake::parse(&head, limits.max_header_bytes, limits.max_headers) {
            Handshake::Incomplete => continue,
            Handshake::Reject(r) => {
                let (_, _) = stream.write_all(handshake::error_response(r)).await;
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
            Handshake::Upgrade(u) => break u,
        }
    };
    // This future lives as long as the connection: free the handshake buffer now rather
    // than at the end of the scope (4 KiB per connection otherwise).
    drop(buf);
    if !shard.broker.admission.try_upgrade(
        pending.key(),
        limits.upgrades_per_ip,
        limits.upgrade_window,
        Instant::now(),
    ) {
        ShardCounters::add(&shard.counters().upgrades_throttled, 1);
        let r = handshake::Rejection {
            status: 429,
            reason: "too_many_requests",
        };
        let (_, _) = stream.write_all(handshake::error_response(r)).await;
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    let leftover = head.split_off(req.consumed);
    drop(head);
    let (res, _) = stream
        .write_all(handshake::switching_protocols(&req.accept_key, shard.id.0))
        .await;
    drop(pending); // upgraded: no longer a pending handshake
    if res.is_err() {
        return;
    }
    if limits.echo {
        // Conformance profile (Autobahn): no credentials, no protocol, just echo.
        echo(&shard, stream, leftover).await;
        return;
    }
    // 2. Credentials, checked after the upgrade so failures are WebSocket close codes.
    let identity =
        match shard
            .broker
            .auth
            .authenticate_ws(&req.query, req.origin.as_deref(), unix_now())
        {
            Ok(id) => id,
            Err(e) => {
                tracing::debug!(reason = e.reason(), "authentication failed");
                shard
                    .counters()
                    .auth_failure(AuthFailure::from_close_code(e.close_code()));
                reject(&stream, e.close_code(), e.reason(), limits.close_timeout).await;
                return;
            }
        };
    drop(req); // the query string holds the token: not kept for the connection's life
    if !shard.broker.try_admit(identity.app) {
        shard.counters().auth_failure(AuthFailure::ConnectionCap);
        reject(
            &stream,
            close::CONNECTION_CAP,
            "app connection limit reached",
            limits.close_timeout,
        )
        .await;
        return;
    }
    let app = identity.app;
    // 3. Registered: from here on every exit goes through `unregister` and `release`.
    let now = Instant::now();
    let id = shard.alloc_conn_id();
    let handle = Rc::new(ConnHandle::new(
        Rc::try_unwrap(stream).unwrap_or_else(|_| unreachable!("no other owner yet")),
        limits.max_outbound_bytes,
        now,
        shard.tx.clone(),
    ));
    handle.send(&encode::welcome(
        &identity.peer_id,
        identity.expires_at,
        unix_now(),
        limits.max_message_size,
        identity.metadata_json.as_deref().map(str::as_bytes),
    ));
    shard.register(
        id,
        ConnEntry {
            handle: handle.clone(),
            app,
            peer: identity.peer_id.clone(),
        },
    );
    if let Some(exp) = identity.expires_at {
        // `verify` caps `exp` (jwt::MAX_EXP_HORIZON_SEC); checked anyway: a panic here
        // would leak the app's connection slot.
        let wall = UNIX_EPOCH.checked_add(Duration::from_secs(exp));
        let left = wall
            .and_then(|w| w.duration_since(SystemTime::now()).ok())
            .unwrap_or_default()
            .saturating_sub(limits.expiry_lead);
        shard.expire_at(now.checked_add(left).unwrap_or(now), id);
    }
    let conn = Conn {
        id,
        handle,
        identity: identity.into(),
        channels: Vec::new(),
        patterns: None,
        bucket: TokenBucket::new(limits.rate_limit_per_sec, limits.rate_limit_burst, now),
        pings: PingBudget::default(),
    };
    let reader = Box::new(Reader {
        conn,
        ws: WebSocketContext::new(
            Role::Server,
            Some(ws_config(limits.max_message_size, limits.read_buffer_size)),
        ),
        done: false,
    });
    // From here on the shard's receive ring reads the connection; this task ends.
    shard.ring.attach(&shard, reader, &leftover);
}

/// A registered connection's read side, driven by the shard's receive ring
/// ([`super::ring`]): its WebSocket state and the handles its teardown needs.
pub(crate) struct Reader {
    conn: Conn,
    ws: WebSocketContext,
    /// Teardown has started: bytes still arriving are ignored.
    done: bool,
}

impl Reader {
    /// The connection id (the receive ring's `user_data`).
    pub(crate) fn id(&self) -> u64 {
        self.conn.id.0
    }

    /// The socket.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.conn.handle.stream().as_raw_fd()
    }

    /// True once teardown has started.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }
}

/// A WebSocket pong with an empty payload, as tungstenite writes it.
const EMPTY_PONG: [u8; 2] = [0x8A, 0x00];

/// Feeds bytes read from the socket to the connection: WebSocket frames are decoded and each
/// text message handled. Returns false when the connection is finished (the close
/// handshake completed or the stream is broken): teardown has started.
pub(crate) fn on_recv(shard: &Shard, r: &mut Reader, bytes: &[u8]) -> bool {
    if r.done {
        return false;
    }
    let now = Instant::now();
    r.conn.handle.last_seen.set(now);
    ShardCounters::add(&shard.counters().bytes_in, bytes.len() as u64);
    // What tungstenite writes (pong and close replies) is moved to the outbound queue at
    // once, so this stays empty (unallocated) unless a control frame arrives.
    let mut out = Vec::new();
    let mut feed = Feed {
        input: bytes,
        output: &mut out,
    };
    loop {
        let res = r.ws.read(&mut feed);
        if feed.output.as_slice() == EMPTY_PONG {
            // The answer to an empty ping (the usual keepalive, and what a ping flood sends):
            // shared static bytes, so each queued pong costs only its queue slot.
            feed.output.clear();
            r.conn.handle.push_raw(Bytes::from_static(&EMPTY_PONG));
        } else if !feed.output.is_empty() {
            r.conn
                .handle
                .push_raw(Bytes::from(std::mem::take(feed.output)));
        }
        match res {
            Ok(Message::Text(text)) => {
                ShardCounters::add(&shard.counters().messages_in, 1);
                if r.conn.handle.state() != CloseState::Open {
                    continue; // closing: ignore data, wait for the peer's close
                }
                // On `Flow::Stop` a close frame is already queued (state `Closing`), so the
                // frames still buffered are ignored by the check above. Do not stop feeding
                // early: tungstenite pulls bytes from `feed` in small chunks, and bytes left
                // behind would be lost, corrupting the stream we must keep reading until the
                // peer's close frame arrives.
                let _flow: Flow = cmd::handle(shard, &mut r.conn, text.as_bytes());
                shard.pump_local();
            }
            Ok(Message::Binary(_)) => {
                r.conn.handle.close(
                    close::UNSUPPORTED_DATA,
                    "binary frames are not supported",
                    false,
                );
            }
            Ok(Message::Ping(_)) => {
                // Answered by tungstenite (the pong is queued on the next read, against the
                // outbound cap); counted against the connection's ping budget.
                if r.conn.handle.state() == CloseState::Open {
                    cmd::take_ping(shard, &mut r.conn, now);
                }
            }
            Ok(_) => {} // pong, close (reply queued)
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                teardown(shard, r);
                return false;
            }
            Err(e) => {
                let (code, reason) = ws_error_close(&e);
                tracing::debug!(cause = %e, code, "closing connection on WebSocket error");
                r.conn.handle.close(code, reason, false);
                teardown(shard, r);
                return false;
            }
        }
    }
}

/// Unregisters the connection, lets the writer flush (bounded by the close timeout), then
/// shuts the socket down. Runs once per connection: when the stream ends (end of stream,
/// reset, shut down) or the WebSocket closes.
pub(crate) fn teardown(shard: &Shard, r: &mut Reader) {
    if r.done {
        return;
    }
    r.done = true;
    let handle = r.conn.handle.clone();
    if let CloseState::Closing(code) = handle.state() {
        shard.counters().server_close(code);
    }
    shard.unregister(r.conn.id, &r.conn.channels, r.conn.patterns());
    r.conn.channels = Vec::new();
    r.conn.patterns = None;
    shard.broker.release(r.conn.identity.app);
    handle.finish();
    let wait = shard.broker.limits.close_timeout;
    // Give the queue the close timeout to flush (e.g. a close reply), then cut the socket,
    // which also ends the multishot receive.
    tokio_uring::spawn(async move {
        let _ = tokio::time::timeout(wait, handle.drained()).await;
        handle.abort();
    });
}

/// Sends a close frame before `welcome` and waits (bounded) for the peer's answer.
async fn reject(stream: &TcpStream, code: u16, reason: &str, wait: Duration) {
    let (res, _) = stream.write_all(encode::ws_close(code, reason)).await;
    if res.is_ok() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut buf = vec![0u8; 256];
        let _ = tokio::time::timeout(wait, async {
            loop {
                let (r, b) = stream.read(buf).await;
                buf = b;
                if !matches!(r, Ok(n) if n > 0) {
                    break;
                }
            }
        })
        .await;
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// The reader's private per-connection state: what the commands ([`cmd`]) act on.
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    /// The connection's queue, socket and clocks.
    pub(crate) handle: Rc<ConnHandle>,
    pub(crate) identity: Peer,
    /// Subscribed channels (at most `max_channels_per_conn`; a linear scan is fine).
    pub(crate) channels: Vec<Arc<str>>,
    /// [ext] Wildcard subscriptions, as written by the client (protocol §8.3). They count
    /// toward `max_channels_per_conn` together with `channels`.
    /// Wildcard subscriptions (protocol §8.3). Boxed and absent until the first one, so a
    /// connection without patterns (nearly all) pays 8 bytes for them, not 24.
    #[allow(clippy::box_collection)] // 8 bytes per connection instead of 24: see `sizes`
    patterns: Option<Box<Vec<Box<str>>>>,
    /// The rate limit of every command but `ping`.
    pub(crate) bucket: TokenBucket,
    /// Client pings this second (WebSocket pings and `ping` messages).
    pub(crate) pings: PingBudget,
}

impl Conn {
    /// The connection's wildcard subscriptions.
    pub(crate) fn patterns(&self) -> &[Box<str>] {
        self.patterns.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The connection's wildcard subscriptions, for changing them.
    pub(crate) fn patterns_mut(&mut self) -> &mut Vec<Box<str>> {
        self.patterns.get_or_insert_with(Default::default)
    }
}

/// The parts of the connection's [`Identity`] its commands need (the rest, such as the
/// private `metadata`, is only for `welcome` and is dropped after it).
pub(crate) struct Peer {
    pub(crate) app: AppId,
    pub(crate) actions: Actions,
    pub(crate) peer_id: Arc<str>,
    pub(crate) scope: ChannelScope,
    pub(crate) peer_metadata_json: Option<Bytes>,
}

impl From<Identity> for Peer {
    fn from(i: Identity) -> Peer {
        Peer {
            app: i.app,
            actions: i.actions,
            peer_id: i.peer_id,
            scope: i.scope,
            peer_metadata_json: i.peer_metadata_json,
        }
    }
}

/// What tungstenite sees as its stream: the bytes of the last read, then `WouldBlock`.
/// Public so that the fuzz target `ws_read` drives the exact same adapter.
#[derive(Debug)]
pub struct Feed<'a> {
    /// Bytes not yet handed to tungstenite.
    pub input: &'a [u8],
    /// What tungstenite wrote (pong and close replies), to be queued for the socket.
    pub output: &'a mut Vec<u8>,
}

impl Read for Feed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Feed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The tungstenite configuration of the read path (also used by the fuzz target `ws_read`).
/// tungstenite's `read_buffer_size` is only the chunk it pulls from our in-memory [`Feed`]
/// per call, but it is allocated eagerly per connection, so it is kept small: frames larger
/// than it are still read whole (tungstenite reserves each frame's length).
pub fn ws_config(max_message_size: usize, read_buffer_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_size.min(64))
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
        .accept_unmasked_frames(false)
}

/// The close code and reason a WebSocket read error closes the connection with.
pub fn ws_error_close(e: &WsError) -> (u16, &'static str) {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            (close::MESSAGE_TOO_BIG, "message too big")
        }
        WsError::Capacity(_) => (close::MESSAGE_TOO_BIG, "frame too big"),
        WsError::Utf8(_) => (close::INVALID_PAYLOAD, "invalid UTF-8"),
        WsError::Protocol(_) => (close::PROTOCOL_ERROR, "protocol error"),
        _ => (close::INTERNAL_ERROR, "internal error"),
    }
}

/// The conformance profile's connection: every text and binary message is sent back
/// unchanged (the Autobahn testsuite's echo-server contract). Not registered with the shard,
/// not authenticated, not rate limited; bounded by `max_message_size` and
/// `max_outbound_bytes` like any connection.
async fn echo(shard: &Shard, stream: Rc<TcpStream>, leftover: Vec<u8>) {
    let limits = &shard.broker.limits;
    let handle = Rc::new(ConnHandle::new(
        Rc::try_unwrap(stream).unwrap_or_else(|_| unreachable!("no other owner yet")),
        limits.max_outbound_bytes,
        Instant::now(),
        shard.tx.clone(),
    ));
    // Echoed frames are written through tungstenite, so its write cap must fit the largest
    // message (the protocol path only writes control replies through it).
    let config = ws_config(limits.max_message_size, limits.read_buffer_size)
        .max_write_buffer_size(limits.max_message_size + encode::MAX_HEADER_LEN + 1);
    let mut ws = WebSocketContext::new(Role::Server, Some(config));
    let mut out: Vec<u8> = Vec::new();
    let mut buf = leftover;
    let mut first = true;
    'conn: loop {
        if !first {
            buf.clear();
            if buf.capacity() < limits.read_buffer_size {
                buf.reserve_exact(limits.read_buffer_size);
            }
            let (res, b) = handle.stream().read(buf).await;
            buf = b;
            if !matches!(res, Ok(n) if n > 0) {
                break;
            }
        }
        first = false;
        let mut feed = Feed {
            input: &buf,
            output: &mut out,
        };
        loop {
            let r = ws.read(&mut feed);
            if !feed.output.is_empty() {
                handle.push_raw(Bytes::from(std::mem::take(feed.output)));
            }
            match r {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                    if handle.state() != CloseState::Open {
                        continue;
                    }
                    if ws.write(&mut feed, m).is_err() || ws.flush(&mut feed).is_err() {
                        handle.close(close::INTERNAL_ERROR, "internal error", false);
                    }
                    let frame = Bytes::from(std::mem::take(feed.output));
                    if !frame.is_empty() {
                        handle.send(&frame);
                    }
                }
                Ok(_) => {}
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => break 'conn,
                Err(e) => {
                    let (code, reason) = ws_error_close(&e);
                    handle.close(code, reason, false);
                    break 'conn;
                }
            }
        }
        if handle.state() == CloseState::Finished {
            break;
        }
    }
    handle.finish();
    let _ = tokio::time::timeout(limits.close_timeout, handle.drained()).await;
    handle.abort();
}

#[cfg(test)]
mod sizes {
    /// Every connection holds one boxed `Reader` and one `Rc<ConnHandle>`; mimalloc serves
    /// them from size classes (…, 224, 256, …, 448, 512, …), so a few bytes more can cost
    /// a whole class per connection (measured: +24 B on `Reader` and +8 B on `ConnHandle`
    /// pushed idle RSS from 1,826 to 2,060 B per connection). Growing past these bounds must
    /// be a decision.
    #[test]
    fn per_connection_structs_stay_in_their_allocation_classes() {
        let reader = std::mem::size_of::<super::Reader>();
        let handle = std::mem::size_of::<crate::shard::handle::ConnHandle>() + 16; // Rc counts
        eprintln!("Reader {reader} B, Rc<ConnHandle> {handle} B");
        assert!(reader <= 448, "Reader is {reader} B");
        assert!(handle <= 240, "Rc<ConnHandle> is {handle} B");
    }
}
