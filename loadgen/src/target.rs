//! One client, three brokers: ringcast (Metered v1 JSON), nats-server (NATS text protocol over
//! WebSocket) and mosquitto (MQTT 3.1.1 over WebSocket). Each adapter connects, subscribes,
//! builds publish/send frames around the same payload bytes, and turns received WebSocket
//! messages into delivered payloads.
//!
//! The WebSocket client is our own (RFC 6455, client side, no extensions): the generator must
//! not be the bottleneck, so a publisher encodes every frame that is due into one buffer and
//! writes it with one syscall ([`Conn::push_publish`], [`Conn::write_all`]), and a receiver
//! reads up to [`READ_CHUNK`] bytes per syscall and parses every frame in them
//! ([`Conn::recv`]). Each WebSocket frame still carries exactly one protocol message.

use std::{
    collections::VecDeque,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// Which broker is under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Ringcast,
    Nats,
    Mosquitto,
}

/// Everything a worker needs to open connections.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Endpoint {
    pub target: Target,
    pub addr: SocketAddr,
    pub key_id: String,
    pub key_secret: String,
    /// Source addresses to spread connections over (loopback only).
    pub src_ips: Vec<Ipv4Addr>,
    /// Ask for presence frames (ringcast).
    pub presence: bool,
    /// Where publishers connect, when not `addr` (another node of a cluster, protocol §9).
    #[serde(default)]
    pub pub_addr: Option<SocketAddr>,
    /// Where subscribers connect, round-robin, when not `addr` (the nodes of a cluster).
    #[serde(default)]
    pub sub_addrs: Vec<SocketAddr>,
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Bytes asked for per read (a receiver parses every frame they hold).
pub const READ_CHUNK: usize = 16 * 1024;
/// Largest WebSocket message accepted from a broker.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;

/// An open client connection.
pub struct Conn {
    s: TcpStream,
    pub target: Target,
    /// Bytes read from the socket; `rbuf[rpos..]` is not parsed yet.
    rbuf: Vec<u8>,
    rpos: usize,
    /// A fragmented message being reassembled (opcode, bytes).
    frag: Option<(u8, Vec<u8>)>,
    /// Whole messages parsed during setup but not consumed yet.
    pending: VecDeque<Vec<u8>>,
    /// Stream reassembly for NATS and MQTT (their messages may span WebSocket frames).
    buf: Vec<u8>,
    /// Pongs (WebSocket and NATS) to write.
    reply: Vec<u8>,
    /// This connection's masking key (RFC 6455 §5.3: client frames are masked).
    mask: [u8; 4],
    /// Scratch for one protocol message before it is framed.
    scratch: Vec<u8>,
    closed: bool,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    channels: [&'a str; 1],
    permissions: &'a [&'a str],
}

/// Mints an HS256 token for `peer` (header `kid` = the key id, HMAC key = the secret's bytes).
/// Without `presence` a connection receives no presence frames: with N subscribers on one
/// channel, presence would add N joined-events per subscribe (N² during setup).
pub fn mint(ep: &Endpoint, peer: &str) -> Result<String> {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(ep.key_id.clone());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3 * 3600;
    let key = jsonwebtoken::EncodingKey::from_secret(ep.key_secret.as_bytes());
    Ok(jsonwebtoken::encode(
        &h,
        &Claims {
            sub: peer,
            exp,
            channels: ["**"],
            permissions: if ep.presence {
                &["publish", "subscribe", "send", "presence"]
            } else {
                &["publish", "subscribe", "send"]
            },
        },
        &key,
    )?)
}

async fn tcp(ep: &Endpoint, n: usize) -> Result<TcpStream> {
    if !ep.addr.ip().is_loopback() {
        bail!("refusing to load a non-loopback address {}", ep.addr);
    }
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = ep.src_ips.get(n % ep.src_ips.len().max(1)) {
        sock.bind(SocketAddr::V4(SocketAddrV4::new(*ip, 0)))?;
    }
    let s = sock.connect(ep.addr).await.context("tcp connect")?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn mqtt_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Appends an MQTT packet of `kind` whose body is `parts` concatenated.
fn mqtt_packet_into(out: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    out.push(kind);
    let mut len: usize = parts.iter().map(|p| p.len()).sum();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    parts.iter().for_each(|p| out.extend_from_slice(p));
}

fn mqtt_packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    mqtt_packet_into(&mut out, kind, &[body]);
    out
}

/// MQTT topic / NATS subject for a channel or a peer inbox.
fn subject(target: Target, channel: &str) -> String {
    match target {
        Target::Mosquitto => channel.replace('.', "/"),
        _ => channel.replace('/', "."),
    }
}

/// Where direct messages to `peer` go on the pub/sub-only brokers.
pub fn inbox(peer: &str) -> String {
    format!("peer.{peer}")
}

/// Where a publish goes, pre-rendered once per publisher: the fixed bytes around the payload.
#[derive(Clone, Debug)]
pub struct Route {
    target: Target,
    /// ringcast: JSON before the payload; NATS: the subject; MQTT: the length-prefixed topic.
    head: Vec<u8>,
}

impl Route {
    /// A publish to `channel`.
    pub fn channel(target: Target, channel: &str) -> Route {
        let head = match target {
            Target::Ringcast => {
                format!("{{\"type\":\"publish\",\"channel\":\"{channel}\",\"data\":").into_bytes()
            }
            Target::Nats => subject(target, channel).into_bytes(),
            Target::Mosquitto => {
                let mut h = Vec::new();
                mqtt_str(&mut h, subject(target, channel).as_bytes());
                h
            }
        };
        Route { target, head }
    }

    /// A direct send to peer `to` (an inbox subject on NATS and MQTT).
    pub fn peer(target: Target, to: &str) -> Route {
        match target {
            Target::Ringcast => Route {
                target,
                head: format!("{{\"type\":\"send\",\"to\":\"{to}\",\"data\":").into_bytes(),
            },
            _ => Self::channel(target, &inbox(to)),
        }
    }
}

/// Appends one masked client frame (FIN set) carrying `payload` to `out`.
pub fn frame_into(out: &mut Vec<u8>, op: u8, mask: [u8; 4], payload: &[u8]) {
    out.push(0x80 | op);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let at = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[at..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A parsed frame header: opcode, FIN, mask key, payload start and end (relative to the slice).
struct Header {
    op: u8,
    fin: bool,
    mask: Option<[u8; 4]>,
    start: usize,
    end: usize,
}

fn parse_header(b: &[u8]) -> Result<Option<Header>> {
    if b.len() < 2 {
        return Ok(None);
    }
    let (fin, op, masked) = (b[0] & 0x80 != 0, b[0] & 0x0f, b[1] & 0x80 != 0);
    if b[0] & 0x70 != 0 {
        bail!("websocket frame with reserved bits set (no extension was negotiated)");
    }
    let (mut at, len) = match b[1] & 0x7f {
        126 => {
            let Some(x) = b.get(2..4) else {
                return Ok(None);
            };
            (4, u16::from_be_bytes([x[0], x[1]]) as u64)
        }
        127 => {
            let Some(x) = b.get(2..10) else {
                return Ok(None);
            };
            (10, u64::from_be_bytes(x.try_into().unwrap_or([0; 8])))
        }
        l => (2, l as u64),
    };
    if len > MAX_MESSAGE as u64 {
        bail!("websocket frame of {len} bytes");
    }
    let mask = if masked {
        let Some(x) = b.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([x[0], x[1], x[2], x[3]])
    } else {
        None
    };
    let end = at + len as usize;
    if b.len() < end {
        return Ok(None);
    }
    Ok(Some(Header {
        op,
        fin,
        mask,
        start: at,
        end,
    }))
}

fn key_for(n: usize) -> [u8; 4] {
    let x = (stats_seed() ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes();
    [x[0], x[3], x[5], x[7]]
}

fn stats_seed() -> u64 {
    crate::stats::mono_ns().wrapping_mul(0x2545_f491_4f6c_dd1d)
}

impl Conn {
    /// Opens connection number `n` (picks the source address) as `peer`, waits until the broker
    /// has accepted it (ringcast `welcome`, NATS `PONG`, MQTT `CONNACK`).
    pub async fn open(ep: &Endpoint, n: usize, peer: &str) -> Result<Conn> {
        let s = tcp(ep, n).await?;
        let path = match ep.target {
            Target::Ringcast => format!("/v1?token={}", mint(ep, peer)?),
            Target::Nats => "/".to_string(),
            Target::Mosquitto => "/mqtt".to_string(),
        };
        let mut c = Conn {
            s,
            target: ep.target,
            rbuf: Vec::new(),
            rpos: 0,
            frag: None,
            pending: VecDeque::new(),
            buf: Vec::new(),
            reply: Vec::new(),
            mask: key_for(n),
            scratch: Vec::new(),
            closed: false,
        };
        c.upgrade(ep, &path).await.context("websocket upgrade")?;
        match ep.target {
            Target::Ringcast => {
                let m = c.next_frame().await?;
                if !contains(&m, b"\"welcome\"") {
                    bail!("expected welcome, got {}", String::from_utf8_lossy(&m));
                }
            }
            Target::Nats => {
                let cmd = "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":false}\r\nPING\r\n";
                c.send(OP_BINARY, cmd.as_bytes()).await?;
                c.wait_nats_pong().await?;
            }
            Target::Mosquitto => {
                let mut body = Vec::new();
                mqtt_str(&mut body, b"MQTT");
                body.extend_from_slice(&[4, 0x02, 0, 0]); // level 4, clean session, keepalive off
                mqtt_str(&mut body, peer.as_bytes());
                c.send(OP_BINARY, &mqtt_packet(0x10, &body)).await?;
                let mut ok = false;
                while !ok {
                    let f = c.next_frame().await?;
                    c.buf.extend_from_slice(&f);
                    while let Some((kind, body)) = c.take_mqtt() {
                        if kind >> 4 == 2 {
                            if body.get(1) != Some(&0) {
                                bail!("CONNACK refused: {body:?}");
                            }
                            ok = true;
                        }
                    }
                }
            }
        }
        Ok(c)
    }

    /// The HTTP/1.1 upgrade; bytes after the response head stay in `rbuf` as frame data.
    async fn upgrade(&mut self, ep: &Endpoint, path: &str) -> Result<()> {
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let proto = if ep.target == Target::Mosquitto {
            "Sec-WebSocket-Protocol: mqtt\r\n"
        } else {
            ""
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{proto}\r\n",
            ep.addr
        );
        self.s.write_all(req.as_bytes()).await?;
        loop {
            if let Some(end) = self.rbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.rbuf[..end]).to_string();
                let status = head.lines().next().unwrap_or("");
                if !status.starts_with("HTTP/1.1 101") {
                    bail!("upgrade refused: {status}");
                }
                self.rpos = end + 4;
                return Ok(());
            }
            if self.rbuf.len() > 64 * 1024 {
                bail!("upgrade response head too long");
            }
            self.rbuf.reserve(4096);
            if self.s.read_buf(&mut self.rbuf).await? == 0 {
                bail!("connection ended during the upgrade");
            }
        }
    }

    /// Writes one frame now.
    async fn send(&mut self, op: u8, payload: &[u8]) -> Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        frame_into(&mut out, op, self.mask, payload);
        self.s.write_all(&out).await?;
        Ok(())
    }

    /// Writes `bytes` (frames built with [`Conn::push_publish`]) in as few syscalls as the
    /// socket allows: one when its send buffer has room.
    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes).await
    }

    /// Appends one frame publishing `data` along `route` to `out` (to be written with
    /// [`Conn::write_all`], together with the other frames that are due).
    pub fn push_publish(&mut self, out: &mut Vec<u8>, route: &Route, data: &[u8]) {
        let sc = &mut self.scratch;
        sc.clear();
        let op = match route.target {
            Target::Ringcast => {
                sc.extend_from_slice(&route.head);
                sc.extend_from_slice(data);
                sc.push(b'}');
                OP_TEXT
            }
            Target::Nats => {
                sc.extend_from_slice(b"PUB ");
                sc.extend_from_slice(&route.head);
                sc.extend_from_slice(format!(" {}\r\n", data.len()).as_bytes());
                sc.extend_from_slice(data);
                sc.extend_from_slice(b"\r\n");
                OP_BINARY
            }
            Target::Mosquitto => {
                mqtt_packet_into(sc, 0x30, &[&route.head, data]);
                OP_BINARY
            }
        };
        frame_into(out, op, self.mask, sc);
    }

    /// Sends a close frame (1000) and shuts the write side down.
    pub async fn close(&mut self) -> Result<()> {
        self.send(OP_CLOSE, &1000u16.to_be_bytes()).await?;
        self.s.shutdown().await?;
        Ok(())
    }

    /// Reads once (up to [`READ_CHUNK`] bytes) and calls `on` for every whole WebSocket data
    /// message parsed. Answers pings. Ok(false): the connection has ended or was closed.
    async fn read_messages(&mut self, on: &mut dyn FnMut(&[u8])) -> Result<bool> {
        if self.closed {
            return Ok(false);
        }
        // Whole messages already buffered (read together with the upgrade response or an
        // earlier message) first: no read until they are consumed.
        let mut any = false;
        self.parse(&mut |m| {
            any = true;
            on(m)
        })?;
        if any || self.closed || !self.reply.is_empty() {
            return self.flush_reply().await;
        }
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            // Keep only the unparsed tail, then make room for a full chunk.
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
            self.rbuf.reserve(READ_CHUNK);
        }
        if self.s.read_buf(&mut self.rbuf).await? == 0 {
            self.closed = true;
        }
        self.parse(on)?;
        self.flush_reply().await
    }

    /// Writes pending pongs; Ok(false) if the connection has ended or was closed.
    async fn flush_reply(&mut self) -> Result<bool> {
        if !self.reply.is_empty() {
            let r = std::mem::take(&mut self.reply);
            self.s.write_all(&r).await?;
        }
        Ok(!self.closed)
    }

    /// Parses the complete frames in `rbuf[rpos..]`.
    fn parse(&mut self, on: &mut dyn FnMut(&[u8])) -> Result<()> {
        while let Some(h) = parse_header(&self.rbuf[self.rpos..])? {
            let (start, end) = (self.rpos + h.start, self.rpos + h.end);
            self.rpos += h.end;
            if let Some(m) = h.mask {
                for (i, b) in self.rbuf[start..end].iter_mut().enumerate() {
                    *b ^= m[i & 3];
                }
            }
            let p = &self.rbuf[start..end];
            match h.op {
                OP_TEXT | OP_BINARY if h.fin && self.frag.is_none() => on(p),
                OP_TEXT | OP_BINARY => self.frag = Some((h.op, p.to_vec())),
                OP_CONT => {
                    let Some((_, f)) = self.frag.as_mut() else {
                        bail!("websocket continuation without a first frame");
                    };
                    f.extend_from_slice(p);
                    if f.len() > MAX_MESSAGE {
                        bail!("websocket message over {MAX_MESSAGE} bytes");
                    }
                    if h.fin {
                        if let Some((_, f)) = self.frag.take() {
                            on(&f);
                        }
                    }
                }
                OP_CLOSE => {
                    self.closed = true;
                    break;
                }
                OP_PING => {
                    let p = p.to_vec();
                    frame_into(&mut self.reply, 0x0a, self.mask, &p);
                }
                _ => {}
            }
        }
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
        Ok(())
    }

    /// The next whole WebSocket message (setup only: copies).
    async fn next_frame(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Ok(m);
            }
            let mut got = Vec::new();
            let open = self.read_messages(&mut |m| got.push(m.to_vec())).await?;
            self.pending.extend(got);
            if !open && self.pending.is_empty() {
                bail!("connection ended or closed by the broker");
            }
        }
    }

    async fn wait_nats_pong(&mut self) -> Result<()> {
        loop {
            let f = self.next_frame().await?;
            self.buf.extend_from_slice(&f);
            let (mut got, mut ping) = (false, false);
            self.drain_nats(&mut |_| {}, &mut got, &mut ping);
            if got {
                return Ok(());
            }
        }
    }

    /// ringcast: subscribes with `extra` JSON members spliced into the command (e.g.
    /// `,"pattern":true`, `,"group":"g"`, `,"since":{…}`) and returns the `ack` frame. Frames
    /// that arrive before the ack (deliveries on earlier subscriptions) stay queued for
    /// [`Conn::recv`].
    pub async fn subscribe_ext(&mut self, channel: &str, extra: &str) -> Result<Vec<u8>> {
        let cmd = format!(
            "{{\"type\":\"subscribe\",\"channel\":\"{channel}\",\"requestId\":\"s\"{extra}}}"
        );
        self.request(cmd.as_bytes(), b"\"requestId\":\"s\"").await
    }

    /// ringcast: writes `cmd` (one text frame) and returns the first frame carrying `tag`
    /// (e.g. its `requestId`: an `ack`, a `pong`); an `error` is an Err. Other frames stay queued
    /// for [`Conn::recv`].
    pub async fn request(&mut self, cmd: &[u8], tag: &[u8]) -> Result<Vec<u8>> {
        self.send(OP_TEXT, cmd).await?;
        let mut held = VecDeque::new();
        let r = loop {
            let f = match self.next_frame().await {
                Ok(f) => f,
                Err(e) => break Err(e),
            };
            if contains(&f, tag) && !f.starts_with(b"{\"type\":\"error\"") {
                break Ok(f);
            }
            if contains(&f, tag) {
                break Err(anyhow::anyhow!(
                    "{} refused: {}",
                    String::from_utf8_lossy(cmd),
                    String::from_utf8_lossy(&f)
                ));
            }
            held.push_back(f);
        };
        held.append(&mut self.pending);
        self.pending = held;
        r
    }

    /// Subscribes and waits for the broker to confirm.
    pub async fn subscribe(&mut self, channel: &str) -> Result<()> {
        match self.target {
            Target::Ringcast => self.subscribe_ext(channel, "").await.map(drop),
            Target::Nats => {
                let cmd = format!("SUB {} 1\r\nPING\r\n", subject(self.target, channel));
                self.send(OP_BINARY, cmd.as_bytes()).await?;
                self.wait_nats_pong().await
            }
            Target::Mosquitto => {
                let mut body = vec![0, 1];
                mqtt_str(&mut body, subject(self.target, channel).as_bytes());
                body.push(0);
                self.send(OP_BINARY, &mqtt_packet(0x82, &body)).await?;
                loop {
                    let f = self.next_frame().await?;
                    self.buf.extend_from_slice(&f);
                    while let Some((kind, _)) = self.take_mqtt() {
                        if kind >> 4 == 9 {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    fn take_mqtt(&mut self) -> Option<(u8, Vec<u8>)> {
        let (kind, start, end) = mqtt_next(&self.buf)?;
        let body = self.buf[start..end].to_vec();
        self.buf.drain(..end);
        Some((kind, body))
    }

    /// Calls `on` for every complete NATS `MSG` payload in the buffer; sets `pong` on `PONG`.
    fn drain_nats(&mut self, on: &mut dyn FnMut(&[u8]), pong: &mut bool, ping: &mut bool) {
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = &rest[..eol];
            if line.starts_with(b"MSG ") {
                let n: usize = std::str::from_utf8(line)
                    .ok()
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
                if rest.len() < eol + 2 + n + 2 {
                    break;
                }
                on(&rest[eol + 2..eol + 2 + n]);
                pos += eol + 2 + n + 2;
            } else {
                if line == b"PONG" {
                    *pong = true;
                } else if line == b"PING" {
                    *ping = true;
                }
                pos += eol + 2;
            }
        }
        self.buf.drain(..pos);
    }

    /// Reads once (many frames per read) and calls `on` for each delivered payload (or whole
    /// ringcast frame). Returns Ok(false) when the connection has ended.
    pub async fn recv(&mut self, on: &mut dyn FnMut(&[u8])) -> Result<bool> {
        // Messages parsed during setup but not consumed by it come first.
        let pending: Vec<Vec<u8>> = self.pending.drain(..).collect();
        let mut open = true;
        if pending.is_empty() {
            if self.target == Target::Ringcast {
                return self.read_messages(on).await;
            }
            let mut buf = std::mem::take(&mut self.buf);
            let r = self.read_messages(&mut |m| buf.extend_from_slice(m)).await;
            self.buf = buf;
            open = r?;
        } else {
            for m in &pending {
                match self.target {
                    Target::Ringcast => on(m),
                    _ => self.buf.extend_from_slice(m),
                }
            }
        }
        match self.target {
            Target::Ringcast => {}
            Target::Nats => {
                let (mut pong, mut ping) = (false, false);
                self.drain_nats(on, &mut pong, &mut ping);
                if ping {
                    self.send(OP_BINARY, b"PONG\r\n").await?;
                }
            }
            Target::Mosquitto => {
                let mut pos = 0;
                while let Some((kind, start, end)) = mqtt_next(&self.buf[pos..]) {
                    let body = &self.buf[pos + start..pos + end];
                    if kind >> 4 == 3 && body.len() >= 2 {
                        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                        // QoS 0: no packet id after the topic.
                        if let Some(p) = body.get(2 + tl..) {
                            on(p);
                        }
                    }
                    pos += end;
                }
                self.buf.drain(..pos);
            }
        }
        Ok(open)
    }
}

/// The next complete MQTT packet in `b`: (first byte, body start, body end).
fn mqtt_next(b: &[u8]) -> Option<(u8, usize, usize)> {
    let mut len = 0usize;
    let mut mul = 1usize;
    let mut i = 1;
    loop {
        let x = *b.get(i)?;
        len += (x & 0x7f) as usize * mul;
        mul *= 128;
        i += 1;
        if x & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return None;
        }
    }
    if b.len() < i + len {
        return None;
    }
    Some((b[0], i, i + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_masked_and_long() {
        for n in [0usize, 5, 125, 126, 1000, 70_000] {
            let p: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut out = Vec::new();
            frame_into(&mut out, OP_BINARY, [1, 2, 3, 4], &p);
            frame_into(&mut out, OP_TEXT, [9, 8, 7, 6], b"x");
            let h = parse_header(&out).unwrap().unwrap();
            assert_eq!((h.op, h.fin, h.end - h.start), (OP_BINARY, true, n));
            let m = h.mask.unwrap();
            let un: Vec<u8> = out[h.start..h.end]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ m[i & 3])
                .collect();
            assert_eq!(un, p);
            assert!(parse_header(&out[..h.end - 1]).unwrap().is_none());
            let h2 = parse_header(&out[h.end..]).unwrap().unwrap();
            assert_eq!((h2.op, h2.end - h2.start), (OP_TEXT, 1));
        }
    }

    #[test]
    fn mqtt_packets_parse() {
        let mut out = Vec::new();
        let mut topic = Vec::new();
        mqtt_str(&mut topic, b"peer/x");
        mqtt_packet_into(&mut out, 0x30, &[&topic, &[7u8; 200]]);
        let (k, s, e) = mqtt_next(&out).unwrap();
        assert_eq!((k, e - s, e), (0x30, 8 + 200, out.len()));
        assert!(mqtt_next(&out[..out.len() - 1]).is_none());
    }
}
