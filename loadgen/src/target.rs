//! One client, three brokers: ringcast (Metered v1 JSON), nats-server (NATS text protocol over
//! WebSocket) and mosquitto (MQTT 3.1.1 over WebSocket). Each adapter connects, subscribes,
//! builds publish/send frames around the same payload bytes, and turns received WebSocket
//! messages into delivered payloads.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};
use tokio_tungstenite::WebSocketStream;

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
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// An open client connection.
pub struct Conn {
    pub ws: WebSocketStream<TcpStream>,
    pub target: Target,
    /// Stream reassembly for NATS and MQTT (their messages may span WebSocket frames).
    buf: Vec<u8>,
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

fn mqtt_packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    let mut len = body.len();
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
    out.extend_from_slice(body);
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

impl Conn {
    /// Opens connection number `n` (picks the source address) as `peer`, waits until the broker
    /// has accepted it (ringcast `welcome`, NATS `PONG`, MQTT `CONNACK`).
    pub async fn open(ep: &Endpoint, n: usize, peer: &str) -> Result<Conn> {
        let stream = tcp(ep, n).await?;
        let url = match ep.target {
            Target::Ringcast => format!("ws://{}/v1?token={}", ep.addr, mint(ep, peer)?),
            Target::Nats => format!("ws://{}/", ep.addr),
            Target::Mosquitto => format!("ws://{}/mqtt", ep.addr),
        };
        let mut req = url.into_client_request()?;
        if ep.target == Target::Mosquitto {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        }
        let (ws, _) = tokio_tungstenite::client_async(req, stream)
            .await
            .context("websocket upgrade")?;
        let mut c = Conn {
            ws,
            target: ep.target,
            buf: Vec::new(),
        };
        match ep.target {
            Target::Ringcast => {
                let m = c.next_frame().await?;
                if !contains(&m, b"\"welcome\"") {
                    bail!("expected welcome, got {}", String::from_utf8_lossy(&m));
                }
            }
            Target::Nats => {
                let cmd = "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":false}\r\nPING\r\n";
                c.ws.send(Message::binary(cmd.as_bytes().to_vec())).await?;
                c.wait_nats_pong().await?;
            }
            Target::Mosquitto => {
                let mut body = Vec::new();
                mqtt_str(&mut body, b"MQTT");
                body.extend_from_slice(&[4, 0x02, 0, 0]); // level 4, clean session, keepalive off
                mqtt_str(&mut body, peer.as_bytes());
                c.ws.send(Message::binary(mqtt_packet(0x10, &body))).await?;
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

    async fn next_frame(&mut self) -> Result<Vec<u8>> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t.as_bytes().to_vec()),
                Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
                Some(Ok(Message::Close(f))) => bail!("closed by broker: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("connection ended"),
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

    /// Subscribes and waits for the broker to confirm.
    pub async fn subscribe(&mut self, channel: &str) -> Result<()> {
        match self.target {
            Target::Ringcast => {
                let cmd = format!(
                    "{{\"type\":\"subscribe\",\"channel\":\"{channel}\",\"requestId\":\"s\"}}"
                );
                self.ws.send(Message::text(cmd)).await?;
                loop {
                    let f = self.next_frame().await?;
                    if contains(&f, b"\"ack\"") {
                        return Ok(());
                    }
                    if contains(&f, b"\"error\"") {
                        bail!("subscribe refused: {}", String::from_utf8_lossy(&f));
                    }
                }
            }
            Target::Nats => {
                let cmd = format!("SUB {} 1\r\nPING\r\n", subject(self.target, channel));
                self.ws.send(Message::binary(cmd.into_bytes())).await?;
                self.wait_nats_pong().await
            }
            Target::Mosquitto => {
                let mut body = vec![0, 1];
                mqtt_str(&mut body, subject(self.target, channel).as_bytes());
                body.push(0);
                self.ws
                    .send(Message::binary(mqtt_packet(0x82, &body)))
                    .await?;
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

    /// A publish of `data` (a JSON object) to `channel`.
    pub fn publish_msg(target: Target, channel: &str, data: &str) -> Message {
        match target {
            Target::Ringcast => Message::text(format!(
                "{{\"type\":\"publish\",\"channel\":\"{channel}\",\"data\":{data}}}"
            )),
            Target::Nats => Message::binary(
                format!(
                    "PUB {} {}\r\n{}\r\n",
                    subject(target, channel),
                    data.len(),
                    data
                )
                .into_bytes(),
            ),
            Target::Mosquitto => {
                let mut body = Vec::with_capacity(data.len() + channel.len() + 2);
                mqtt_str(&mut body, subject(target, channel).as_bytes());
                body.extend_from_slice(data.as_bytes());
                Message::binary(mqtt_packet(0x30, &body))
            }
        }
    }

    /// A direct send of `data` to peer `to` (an inbox subject on NATS and MQTT).
    pub fn send_msg(target: Target, to: &str, data: &str) -> Message {
        match target {
            Target::Ringcast => Message::text(format!(
                "{{\"type\":\"send\",\"to\":\"{to}\",\"data\":{data}}}"
            )),
            _ => Self::publish_msg(target, &inbox(to), data),
        }
    }

    fn take_mqtt(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut len = 0usize;
        let mut mul = 1usize;
        let mut i = 1;
        loop {
            let b = *self.buf.get(i)?;
            len += (b & 0x7f) as usize * mul;
            mul *= 128;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if self.buf.len() < i + len {
            return None;
        }
        let kind = self.buf[0];
        let body = self.buf[i..i + len].to_vec();
        self.buf.drain(..i + len);
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

    /// Reads the next WebSocket message and calls `on` for each delivered payload (or whole
    /// ringcast frame). Returns Ok(false) when the connection has ended.
    pub async fn recv(&mut self, on: &mut dyn FnMut(&[u8])) -> Result<bool> {
        let m = match self.ws.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(anyhow!(e)),
            None => return Ok(false),
        };
        let bytes: &[u8] = match &m {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            Message::Close(_) => return Ok(false),
            _ => return Ok(true),
        };
        match self.target {
            Target::Ringcast => on(bytes),
            Target::Nats => {
                self.buf.extend_from_slice(bytes);
                let (mut pong, mut ping) = (false, false);
                self.drain_nats(on, &mut pong, &mut ping);
                if ping {
                    self.ws.send(Message::binary(b"PONG\r\n".to_vec())).await?;
                }
            }
            Target::Mosquitto => {
                self.buf.extend_from_slice(bytes);
                while let Some((kind, body)) = self.take_mqtt() {
                    if kind >> 4 == 3 && body.len() >= 2 {
                        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                        // QoS 0: no packet id after the topic.
                        if let Some(p) = body.get(2 + tl..) {
                            on(p);
                        }
                    }
                }
            }
        }
        Ok(true)
    }
}
