//! Server → client frame encoding (protocol.md §2, §4): every function returns a
//! complete, unmasked WebSocket frame ready to be written to the socket.
//!
//! # Properties
//! * One allocation per frame: each encoder first measures the exact payload length
//!   (a dry run of the same writer code), then allocates one `BytesMut` of
//!   `10 + payload` bytes, writes the JSON after a 10-byte header gap, writes the real
//!   header (2, 4 or 10 bytes) right-aligned in the gap and advances past the unused
//!   prefix. Because the buffer is filled to capacity, `freeze` needs no second
//!   allocation. (Note: the first `Bytes::clone` of the result allocates the bytes
//!   crate's small shared ref-count header; that is a property of `bytes`.)
//! * Client-supplied JSON (`data`, metadata) is spliced verbatim, never re-encoded.
//!   Callers must only pass bytes that are one complete valid JSON value (what
//!   [`super::Parser`] returns as `data`, or serialized `peerMetadata`).
//! * Strings (channel, peerId, requestId, messages) are JSON-escaped by
//!   [`write_json_str`]: `"` → `\"`, `\` → `\\`, U+0000–U+001F → `\u00XX`; everything
//!   else, including non-ASCII UTF-8, passes through unchanged.
//! * Control frames (ping/pong/close) carry at most 125 payload bytes; longer inputs
//!   are truncated (close reasons at a UTF-8 character boundary), never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::ErrorCode;

pub mod history;
pub mod rpc;

/// WebSocket opcode: text frame.
pub(crate) const OP_TEXT: u8 = 0x1;
/// WebSocket opcode: connection close.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// WebSocket opcode: ping.
pub const OP_PING: u8 = 0x9;
/// WebSocket opcode: pong.
pub const OP_PONG: u8 = 0xA;
/// Maximum payload of a control frame (RFC 6455 §5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;
/// Maximum WebSocket frame header for an unmasked server frame.
pub(crate) const MAX_HEADER_LEN: usize = 10;

/// One peer in a `presence` frame's `joined` / `left` array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresencePeer<'a> {
    /// The peer's id (JSON-escaped on output).
    pub peer_id: &'a str,
    /// The peer's public `peerMetadata` as raw JSON; the key is omitted when `None`.
    pub metadata: Option<&'a [u8]>,
}

// ---------------------------------------------------------------------------------
// Escaping

/// Escape class per byte: 0 = literal, 1 = two-char escape, 2 = `\u00XX`.
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = 2;
        i += 1;
    }
    t[b'"' as usize] = 1;
    t[b'\\' as usize] = 1;
    t
};
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Exact length of `s` once written by [`write_json_str`], quotes included.
pub fn json_str_len(s: &str) -> usize {
    s.bytes().fold(2, |n, b| {
        n + match ESCAPE[b as usize] {
            0 => 1,
            1 => 2,
            _ => 6,
        }
    })
}

/// Appends `s` as a quoted, escaped JSON string to `out` (see module docs for the
/// escaping rules). Grows `out` if needed.
pub fn write_json_str(out: &mut BytesMut, s: &str) {
    out.reserve(json_str_len(s));
    write_json_str_unreserved(out, s);
}

fn write_json_str_unreserved(out: &mut BytesMut, s: &str) {
    out.put_u8(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let class = ESCAPE[b as usize];
        if class == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if class == 1 {
            out.extend_from_slice(&[b'\\', b]);
        } else {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xF) as usize],
            ]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.put_u8(b'"');
}

// ---------------------------------------------------------------------------------
// Two-pass writer: `Counter` measures, `BytesMut` writes. Each encoder body is written
// once, generically, so the measured length always matches what is written.

/// Object-safe so `build` can take one plain closure over `&mut dyn Sink`.
trait Sink {
    fn raw(&mut self, b: &[u8]);
    fn str(&mut self, s: &str);
    fn u64(&mut self, n: u64);
}

struct Counter(usize);

impl Sink for Counter {
    fn raw(&mut self, b: &[u8]) {
        self.0 += b.len();
    }
    fn str(&mut self, s: &str) {
        self.0 += json_str_len(s);
    }
    fn u64(&mut self, n: u64) {
        self.0 += u64_len(n);
    }
}

impl Sink for BytesMut {
    fn raw(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        write_json_str_unreserved(self, s);
    }
    fn u64(&mut self, n: u64) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut n = n;
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.extend_from_slice(&buf[i..]);
    }
}

fn u64_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// Writes the frame header for `payload_len` into the end of `hdr`, returning its length.
fn write_header(hdr: &mut [u8; MAX_HEADER_LEN], opcode: u8, payload_len: usize) -> usize {
    let first = 0x80 | (opcode & 0x0F);
    if payload_len <= 125 {
        hdr[8] = first;
        hdr[9] = payload_len as u8;
        2
    } else if payload_len <= 0xFFFF {
        hdr[6] = first;
        hdr[7] = 126;
        hdr[8..10].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        hdr[0] = first;
        hdr[1] = 127;
        hdr[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// Builds one frame: measures `body` with a [`Counter`], allocates once, writes it.
fn build(opcode: u8, body: impl Fn(&mut dyn Sink)) -> Bytes {
    let mut counter = Counter(0);
    body(&mut counter);
    let payload_len = counter.0;
    let mut buf = BytesMut::with_capacity(MAX_HEADER_LEN + payload_len);
    buf.put_bytes(0, MAX_HEADER_LEN);
    body(&mut buf);
    debug_assert_eq!(buf.len(), MAX_HEADER_LEN + payload_len, "length mismatch");
    finish(buf, opcode)
}

/// Writes the real header right-aligned into the 10-byte gap and drops the unused prefix.
fn finish(mut buf: BytesMut, opcode: u8) -> Bytes {
    let payload_len = buf.len().saturating_sub(MAX_HEADER_LEN);
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let hlen = write_header(&mut hdr, opcode, payload_len);
    let off = MAX_HEADER_LEN - hlen;
    buf[off..MAX_HEADER_LEN].copy_from_slice(&hdr[off..]);
    buf.advance(off);
    buf.freeze()
}

// ---------------------------------------------------------------------------------
// Server → client messages

/// `{"type":"message","channel":..,"from":..,"data":<raw>[,"fromMetadata":<raw>]}`
///
/// `data` and `from_metadata` are spliced verbatim.
pub fn message(channel: &str, from: &str, data: &[u8], from_metadata: Option<&[u8]>) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(br#"{"type":"message","channel":"#);
        s.str(channel);
        s.raw(br#","from":"#);
        s.str(from);
        s.raw(br#","data":"#);
        s.raw(data);
        if let Some(m) = from_metadata {
            s.raw(br#","fromMetadata":"#);
            s.raw(m);
        }
        s.raw(b"}");
    })
}

/// `{"type":"direct","from":..,"data":<raw>[,"fromMetadata":<raw>]}`
pub fn direct(from: &str, data: &[u8], from_metadata: Option<&[u8]>) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(br#"{"type":"direct","from":"#);
        s.str(from);
        s.raw(br#","data":"#);
        s.raw(data);
        if let Some(m) = from_metadata {
            s.raw(br#","fromMetadata":"#);
            s.raw(m);
        }
        s.raw(b"}");
    })
}

fn write_peers(s: &mut dyn Sink, peers: &[PresencePeer<'_>]) {
    s.raw(b"[");
    for (i, p) in peers.iter().enumerate() {
        if i > 0 {
            s.raw(b",");
        }
        s.raw(br#"{"peerId":"#);
        s.str(p.peer_id);
        if let Some(m) = p.metadata {
            s.raw(br#","metadata":"#);
            s.raw(m);
        }
        s.raw(b"}");
    }
    s.raw(b"]");
}

/// `{"type":"presence","channel":..,"joined":[{"peerId":..[,"metadata":<raw>]}..],"left":[..]}`
///
/// Both arrays are always present (possibly empty).
pub fn presence(channel: &str, joined: &[PresencePeer<'_>], left: &[PresencePeer<'_>]) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(br#"{"type":"presence","channel":"#);
        s.str(channel);
        s.raw(br#","joined":"#);
        write_peers(s, joined);
        s.raw(br#","left":"#);
        write_peers(s, left);
        s.raw(b"}");
    })
}

/// `{"type":"welcome","peerId":..,"expiresAt":<u64|null>,"serverTime":..,"maxMessageSize":..[,"metadata":<raw>]}`
///
/// `expires_at` / `server_time` are unix seconds; `metadata` (the token's private
/// `metadata` claim, raw JSON) is omitted when `None`.
pub(crate) fn welcome(
    peer_id: &str,
    expires_at: Option<u64>,
    server_time: u64,
    max_message_size: usize,
    metadata: Option<&[u8]>,
) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(br#"{"type":"welcome","peerId":"#);
        s.str(peer_id);
        s.raw(br#","expiresAt":"#);
        match expires_at {
            Some(t) => s.u64(t),
            None => s.raw(b"null"),
        }
        s.raw(br#","serverTime":"#);
        s.u64(server_time);
        s.raw(br#","maxMessageSize":"#);
        s.u64(max_message_size as u64);
        if let Some(m) = metadata {
            s.raw(br#","metadata":"#);
            s.raw(m);
        }
        s.raw(b"}");
    })
}

/// `{"type":"ack","requestId":..}`
pub(crate) fn ack(request_id: &str) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(br#"{"type":"ack","requestId":"#);
        s.str(request_id);
        s.raw(b"}");
    })
}

/// `{"type":"error","code":..[,"requestId":..][,"message":..]}`
pub fn error(code: ErrorCode, request_id: Option<&str>, message: Option<&str>) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(br#"{"type":"error","code":""#);
        s.raw(code.as_str().as_bytes()); // [a-z_] only: no escaping needed
        s.raw(b"\"");
        if let Some(r) = request_id {
            s.raw(br#","requestId":"#);
            s.str(r);
        }
        if let Some(m) = message {
            s.raw(br#","message":"#);
            s.str(m);
        }
        s.raw(b"}");
    })
}

/// `{"type":"pong"}` (answer to the app-level `ping`).
pub fn pong() -> Bytes {
    ws_text(br#"{"type":"pong"}"#)
}

/// `{"type":"pong"}`, or `{"type":"pong","requestId":..}` when the `ping` carried a
/// requestId (the reply that carries it, per protocol.md §3).
pub fn pong_with(request_id: Option<&str>) -> Bytes {
    match request_id {
        None => pong(),
        Some(r) => build(OP_TEXT, |s| {
            s.raw(br#"{"type":"pong","requestId":"#);
            s.str(r);
            s.raw(b"}");
        }),
    }
}

/// `{"type":"going_away","retryAfterMs":..}` (graceful shutdown, before close 1001).
pub(crate) fn going_away(retry_after_ms: u64) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(br#"{"type":"going_away","retryAfterMs":"#);
        s.u64(retry_after_ms);
        s.raw(b"}");
    })
}

// ---------------------------------------------------------------------------------
// Generic and control frames

/// A text frame around `json` (copied once; any length).
pub(crate) fn ws_text(json: &[u8]) -> Bytes {
    build(OP_TEXT, |s| s.raw(json))
}

/// A WebSocket ping control frame; `payload` is truncated to 125 bytes.
pub fn ws_ping(payload: &[u8]) -> Bytes {
    let p = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    build(OP_PING, |s| s.raw(p))
}

/// A WebSocket ping with an empty payload: the server's keepalive, one static frame shared
/// by every connection (no allocation per ping).
pub fn ws_ping_empty() -> Bytes {
    static PING: [u8; 2] = [0x89, 0x00];
    Bytes::from_static(&PING)
}

/// A WebSocket pong control frame; `payload` (normally the ping's) is truncated to 125 bytes.
pub fn ws_pong(payload: &[u8]) -> Bytes {
    let p = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    build(OP_PONG, |s| s.raw(p))
}

/// A WebSocket close frame: 2-byte big-endian `code` then `reason`, truncated at a
/// UTF-8 character boundary to fit 123 bytes. See [`super::close`] for codes.
pub(crate) fn ws_close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    build(OP_CLOSE, |s| {
        s.raw(&code.to_be_bytes());
        s.raw(reason);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::alloc_counter;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// Decodes an unmasked server frame: (fin, opcode, payload); asserts the header
    /// length field matches the actual payload length and minimal encoding.
    fn decode(frame: &[u8]) -> (bool, u8, Vec<u8>) {
        assert!(frame.len() >= 2);
        let fin = frame[0] & 0x80 != 0;
        assert_eq!(frame[0] & 0x70, 0, "RSV bits");
        let opcode = frame[0] & 0x0F;
        assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
        let (len, hlen) = match frame[1] & 0x7F {
            126 => {
                let l = u16::from_be_bytes([frame[2], frame[3]]) as usize;
                assert!(l >= 126, "non-minimal 16-bit length");
                (l, 4)
            }
            127 => {
                let l = u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize;
                assert!(l > 0xFFFF, "non-minimal 64-bit length");
                (l, 10)
            }
            l => (l as usize, 2),
        };
        assert_eq!(frame.len(), hlen + len, "header length mismatch");
        (fin, opcode, frame[hlen..].to_vec())
    }

    fn text_json(frame: &[u8]) -> Value {
        let (fin, op, payload) = decode(frame);
        assert!(fin);
        assert_eq!(op, OP_TEXT);
        serde_json::from_slice(&payload).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&payload));
        })
    }

    #[test]
    fn header_lengths() {
        for (len, hlen, second) in [
            (0usize, 2usize, 0u8),
            (1, 2, 1),
            (125, 2, 125),
            (126, 4, 126),
            (65535, 4, 126),
            (65536, 10, 127),
            (100_000, 10, 127),
        ] {
            let payload = vec![b'x'; len];
            let f = ws_text(&payload);
            assert_eq!(f.len(), hlen + len, "len {len}");
            assert_eq!(f[0], 0x81);
            assert_eq!(f[1], second);
            match hlen {
                4 => assert_eq!(u16::from_be_bytes([f[2], f[3]]) as usize, len),
                10 => assert_eq!(
                    u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
                    len
                ),
                _ => {}
            }
            let (_, _, p) = decode(&f);
            assert_eq!(p, payload);
        }
    }

    #[test]
    fn exact_bytes() {
        assert_eq!(&pong()[..], b"\x81\x0f{\"type\":\"pong\"}");
        assert_eq!(&ack("r1")[2..], br#"{"type":"ack","requestId":"r1"}"#);
        assert_eq!(pong_with(None), pong());
        assert_eq!(
            &pong_with(Some("p\n\"q"))[2..],
            br#"{"type":"pong","requestId":"p\u000a\"q"}"#
        );
        assert_eq!(
            &message("c", "alice", br#"{"a": [1, 2]}"#, None)[2..],
            br#"{"type":"message","channel":"c","from":"alice","data":{"a": [1, 2]}}"#
        );
        assert_eq!(
            &message("c", "a", b"null", Some(br#"{"n":1}"#))[2..],
            br#"{"type":"message","channel":"c","from":"a","data":null,"fromMetadata":{"n":1}}"#
        );
        assert_eq!(
            &direct("bob", b"1.50", None)[2..],
            br#"{"type":"direct","from":"bob","data":1.50}"#
        );
        assert_eq!(
            &direct("bob", b"[]", Some(b"{}"))[2..],
            br#"{"type":"direct","from":"bob","data":[],"fromMetadata":{}}"#
        );
        assert_eq!(
            &presence("c", &[], &[])[2..],
            br#"{"type":"presence","channel":"c","joined":[],"left":[]}"#
        );
        let j = [
            PresencePeer {
                peer_id: "a",
                metadata: Some(br#"{"x":1}"#),
            },
            PresencePeer {
                peer_id: "b",
                metadata: None,
            },
        ];
        assert_eq!(
            &presence("c", &j, &j[1..])[2..],
            br#"{"type":"presence","channel":"c","joined":[{"peerId":"a","metadata":{"x":1}},{"peerId":"b"}],"left":[{"peerId":"b"}]}"#
        );
        assert_eq!(
            &decode(&welcome("alice", Some(1715539200), 1715535600, 65536, Some(br#"{"plan":"pro"}"#))).2[..],
            br#"{"type":"welcome","peerId":"alice","expiresAt":1715539200,"serverTime":1715535600,"maxMessageSize":65536,"metadata":{"plan":"pro"}}"#
        );
        assert_eq!(
            &welcome("p", None, 0, 0, None)[2..],
            br#"{"type":"welcome","peerId":"p","expiresAt":null,"serverTime":0,"maxMessageSize":0}"#
        );
        assert_eq!(
            &error(ErrorCode::MalformedMessage, None, None)[2..],
            br#"{"type":"error","code":"malformed_message"}"#
        );
        assert_eq!(
            &error(ErrorCode::PeerNotFound, Some("r\"1"), Some("no \\ peer"))[2..],
            br#"{"type":"error","code":"peer_not_found","requestId":"r\"1","message":"no \\ peer"}"#
        );
        assert_eq!(
            &going_away(1000)[2..],
            br#"{"type":"going_away","retryAfterMs":1000}"#
        );
        assert_eq!(
            &going_away(u64::MAX)[2..],
            br#"{"type":"going_away","retryAfterMs":18446744073709551615}"#
        );
    }

    #[test]
    fn every_error_code_encodes() {
        for c in ErrorCode::ALL {
            let v = text_json(&error(c, Some("r"), Some("m")));
            assert_eq!(
                v,
                json!({"type":"error","code":c.as_str(),"requestId":"r","message":"m"})
            );
        }
    }

    #[test]
    fn escaping() {
        let mut b = BytesMut::new();
        write_json_str(&mut b, "a\"b\\c\n\t\u{0}\u{1f}\u{7f}é😀/");
        assert_eq!(
            &b[..],
            "\"a\\\"b\\\\c\\u000a\\u0009\\u0000\\u001f\u{7f}é😀/\"".as_bytes()
        );
        assert_eq!(json_str_len("a\"b\\c\n\t\u{0}\u{1f}\u{7f}é😀/"), b.len());
        let mut b = BytesMut::new();
        write_json_str(&mut b, "");
        assert_eq!(&b[..], b"\"\"");
    }

    #[test]
    fn control_frames() {
        let (fin, op, p) = decode(&ws_ping(b"abc"));
        assert!(fin && op == OP_PING && p == b"abc");
        let (fin, op, p) = decode(&ws_pong(&[7u8; 300]));
        assert!(fin && op == OP_PONG && p == [7u8; 125]);
        assert_eq!(&ws_ping(b"")[..], &[0x89, 0]);
        let c = ws_close(4008, "slow consumer");
        assert_eq!(&c[..4], &[0x88, 15, 0x0F, 0xA8]);
        assert_eq!(&c[4..], b"slow consumer");
        let (_, op, p) = decode(&ws_close(1001, ""));
        assert_eq!(op, OP_CLOSE);
        assert_eq!(p, [0x03, 0xE9]);
        // truncation at a char boundary: 61 × 'é' = 122 bytes, 62 would be 124
        let long = "é".repeat(100);
        let (_, _, p) = decode(&ws_close(1000, &long));
        assert_eq!(p.len(), 2 + 122);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        let (_, _, p) = decode(&ws_close(1000, &"a".repeat(500)));
        assert_eq!(p.len(), 125);
    }

    #[test]
    fn one_allocation_per_frame() {
        let data = vec![b'1'; 70_000];
        let peers = [PresencePeer {
            peer_id: "p\"q",
            metadata: Some(b"{}"),
        }; 3];
        type Case<'a> = (&'a str, Box<dyn Fn() -> Bytes + 'a>);
        let frames: Vec<Case<'_>> = vec![
            (
                "message",
                Box::new(|| message("c\n", "f", b"{}", Some(b"1"))),
            ),
            ("message-big", Box::new(|| message("c", "f", &data, None))),
            ("direct", Box::new(|| direct("f\u{1}", b"[1]", None))),
            ("presence", Box::new(|| presence("c", &peers, &peers[..1]))),
            (
                "welcome",
                Box::new(|| welcome("p", Some(9), 1, 65536, Some(b"{}"))),
            ),
            ("ack", Box::new(|| ack("r"))),
            (
                "error",
                Box::new(|| error(ErrorCode::RateLimited, Some("r"), Some("slow down"))),
            ),
            ("pong", Box::new(pong)),
            ("pong_with", Box::new(|| pong_with(Some("r")))),
            ("going_away", Box::new(|| going_away(1000))),
            ("ws_ping", Box::new(|| ws_ping(b"x"))),
            ("ws_pong", Box::new(|| ws_pong(b""))),
            ("ws_close", Box::new(|| ws_close(1000, "bye"))),
            ("ws_text", Box::new(|| ws_text(&data[..126]))),
        ];
        for (name, f) in &frames {
            let (b, allocs) = alloc_counter::count(f);
            assert_eq!(allocs, 1, "{name}");
            let _ = decode(&b);
            drop(b);
        }
    }

    fn arb_raw_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Strings heavy in control chars, quotes, backslashes and non-ASCII.
    fn nasty() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[\u{0}-\u{1f}\"\\\\\u{7f}-\u{9f}a-zé日😀\u{2028}]{0,40}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_frames_round_trip(
            channel in nasty(),
            from in nasty(),
            rid in nasty(),
            msg in nasty(),
            data in arb_raw_json(),
            meta in proptest::option::of(arb_raw_json()),
            pad in 0usize..70_000,
            t in any::<u64>(),
            exp in proptest::option::of(any::<u64>()),
        ) {
            let raw = serde_json::to_vec(&data).unwrap();
            let meta_raw = meta.as_ref().map(|m| serde_json::to_vec(m).unwrap());
            let m = meta_raw.as_deref();

            let v = text_json(&message(&channel, &from, &raw, m));
            let mut want = json!({"type":"message","channel":channel,"from":from,"data":data});
            if let Some(mm) = &meta { want["fromMetadata"] = mm.clone(); }
            prop_assert_eq!(v, want);

            let v = text_json(&direct(&from, &raw, m));
            let mut want = json!({"type":"direct","from":from,"data":data});
            if let Some(mm) = &meta { want["fromMetadata"] = mm.clone(); }
            prop_assert_eq!(v, want);

            let peers = [PresencePeer { peer_id: &from, metadata: m }, PresencePeer { peer_id: &channel, metadata: None }];
            let v = text_json(&presence(&channel, &peers, &peers[1..]));
            let p0 = match &meta { Some(mm) => json!({"peerId":from,"metadata":mm}), None => json!({"peerId":from}) };
            prop_assert_eq!(v, json!({"type":"presence","channel":channel,"joined":[p0, {"peerId":channel}],"left":[{"peerId":channel}]}));

            let v = text_json(&welcome(&from, exp, t, pad, m));
            let mut want = json!({"type":"welcome","peerId":from,"expiresAt":exp,"serverTime":t,"maxMessageSize":pad});
            if let Some(mm) = &meta { want["metadata"] = mm.clone(); }
            prop_assert_eq!(v, want);

            prop_assert_eq!(text_json(&ack(&rid)), json!({"type":"ack","requestId":rid}));
            prop_assert_eq!(text_json(&pong_with(Some(&rid))), json!({"type":"pong","requestId":rid}));
            prop_assert_eq!(
                text_json(&error(ErrorCode::BackendError, Some(&rid), Some(&msg))),
                json!({"type":"error","code":"backend_error","requestId":rid,"message":msg})
            );
            prop_assert_eq!(text_json(&going_away(t)), json!({"type":"going_away","retryAfterMs":t}));

            // large payloads cross the 7/16/64-bit length boundaries
            let big = "x".repeat(pad);
            let v = text_json(&message(&channel, &from, serde_json::to_vec(&big).unwrap().as_slice(), None));
            prop_assert_eq!(v, json!({"type":"message","channel":channel,"from":from,"data":big}));

            // write_json_str agrees with serde_json
            let mut b = BytesMut::new();
            write_json_str(&mut b, &channel);
            prop_assert_eq!(b.len(), json_str_len(&channel));
            prop_assert_eq!(serde_json::from_slice::<String>(&b).unwrap(), channel.clone());

            let (_, op, p) = decode(&ws_close(t as u16, &msg));
            prop_assert_eq!(op, OP_CLOSE);
            prop_assert!(p.len() <= 125);
            prop_assert!(std::str::from_utf8(&p[2..]).is_ok());
        }
    }

    #[test]
    fn the_empty_ping_is_a_ping_with_no_payload() {
        assert_eq!(ws_ping_empty(), ws_ping(b""));
    }
}
