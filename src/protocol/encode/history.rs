//! [ext] Frames of history channels (protocol.md §8.1): `message` with `offset`, the
//! acks with `epoch`/`offset`/`recovered`, and the `history` answer (WebSocket and REST).
//!
//! Layout of a history `message`, fixed so that the history store can slice `from`,
//! `data` and `fromMetadata` back out of a retained frame without parsing it:
//! `{"type":"message","channel":C,"from":F,"offset":N,"data":D[,"fromMetadata":M]}`.

use bytes::{Bytes, BytesMut};

use super::{build, json_str_len, u64_len, write_json_str_unreserved, Sink, OP_TEXT};

/// `{"type":"message","channel":"` … up to the channel string.
const MSG_HEAD: &[u8] = br#"{"type":"message","channel":"#;
/// Between the channel and the `from` string.
const MSG_FROM: &[u8] = br#","from":"#;
/// Between `from` and the offset.
const MSG_OFFSET: &[u8] = br#","offset":"#;
/// Between the offset and `data`.
const MSG_DATA: &[u8] = br#","data":"#;
/// Before the publisher's metadata.
pub(crate) const MSG_META: &[u8] = br#","fromMetadata":"#;

/// The `message` frame of a history channel (see the module docs for the layout).
pub fn message(
    channel: &str,
    from: &str,
    offset: u64,
    data: &[u8],
    from_metadata: Option<&[u8]>,
) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(MSG_HEAD);
        s.str(channel);
        s.raw(MSG_FROM);
        s.str(from);
        s.raw(MSG_OFFSET);
        s.u64(offset);
        s.raw(MSG_DATA);
        s.raw(data);
        if let Some(m) = from_metadata {
            s.raw(MSG_META);
            s.raw(m);
        }
        s.raw(b"}");
    })
}

/// Where the parts of a history `message` payload (the JSON, without the WebSocket
/// header) start and end, computed from the channel, the peer id and the offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageLayout {
    /// `from` as JSON text (quoted, escaped): `json[from.0..from.1]`.
    pub from: (usize, usize),
    /// Start of `data`.
    pub data_at: usize,
}

impl MessageLayout {
    /// The layout of the payload of `message(channel, from, offset, …)`.
    pub fn of(channel: &str, from: &str, offset: u64) -> MessageLayout {
        let from_at = MSG_HEAD.len() + json_str_len(channel) + MSG_FROM.len();
        let from_end = from_at + json_str_len(from);
        MessageLayout {
            from: (from_at, from_end),
            data_at: from_end + MSG_OFFSET.len() + u64_len(offset) + MSG_DATA.len(),
        }
    }

    /// Same as [`MessageLayout::of`] with the `from` JSON length already known.
    pub fn with_from_len(channel_json_len: usize, from_json_len: usize, offset: u64) -> Self {
        let from_at = MSG_HEAD.len() + channel_json_len + MSG_FROM.len();
        let from_end = from_at + from_json_len;
        MessageLayout {
            from: (from_at, from_end),
            data_at: from_end + MSG_OFFSET.len() + u64_len(offset) + MSG_DATA.len(),
        }
    }
}

/// The JSON payload of a server frame (the bytes after its WebSocket header).
pub fn payload(frame: &[u8]) -> &[u8] {
    let hlen = match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(hlen..).unwrap_or(&[])
}

/// A text frame whose payload is `head` followed by `tail` (a retained message without
/// its `fromMetadata`: the payload up to it, then `}`).
pub(crate) fn text_parts(head: &[u8], tail: &[u8]) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(head);
        s.raw(tail);
    })
}

/// The subscribe `ack` of a history channel:
/// `{"type":"ack","requestId":R,"epoch":E,"offset":K[,"recovered":B]}`.
pub(crate) fn subscribe_ack(
    request_id: &str,
    epoch: &str,
    offset: u64,
    recovered: Option<bool>,
) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(br#"{"type":"ack","requestId":"#);
        s.str(request_id);
        s.raw(br#","epoch":"#);
        s.str(epoch);
        s.raw(br#","offset":"#);
        s.u64(offset);
        match recovered {
            Some(true) => s.raw(br#","recovered":true"#),
            Some(false) => s.raw(br#","recovered":false"#),
            None => {}
        }
        s.raw(b"}");
    })
}

/// The publish `ack` of a history channel: `{"type":"ack","requestId":R,"offset":N}`.
pub(crate) fn publish_ack(request_id: &str, offset: u64) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(br#"{"type":"ack","requestId":"#);
        s.str(request_id);
        s.raw(br#","offset":"#);
        s.u64(offset);
        s.raw(b"}");
    })
}

/// One retained message as the `history` answer lists it: raw JSON parts sliced out of
/// the retained frame.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    /// Its offset.
    pub offset: u64,
    /// `from` as JSON text (quoted).
    pub from: &'a [u8],
    /// `data`, raw JSON.
    pub data: &'a [u8],
    /// `fromMetadata`, raw JSON.
    pub meta: Option<&'a [u8]>,
}

fn items(s: &mut dyn Sink, items: &[Item<'_>]) {
    s.raw(b"[");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            s.raw(b",");
        }
        s.raw(br#"{"offset":"#);
        s.u64(it.offset);
        s.raw(br#","from":"#);
        s.raw(it.from);
        s.raw(br#","data":"#);
        s.raw(it.data);
        if let Some(m) = it.meta {
            s.raw(MSG_META);
            s.raw(m);
        }
        s.raw(b"}");
    }
    s.raw(b"]");
}

/// The `history` command's answer:
/// `{"type":"ack","requestId":R,"epoch":E,"offset":K,"messages":[…]}`.
pub(crate) fn history_ack(request_id: &str, epoch: &str, offset: u64, list: &[Item<'_>]) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(br#"{"type":"ack","requestId":"#);
        s.str(request_id);
        s.raw(br#","epoch":"#);
        s.str(epoch);
        s.raw(br#","offset":"#);
        s.u64(offset);
        s.raw(br#","messages":"#);
        items(s, list);
        s.raw(b"}");
    })
}

/// The REST history answer body: `{"channel":C,"epoch":E,"offset":K,"messages":[…]}`.
pub fn history_body(channel: &str, epoch: &str, offset: u64, list: &[Item<'_>]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.extend_from_slice(br#"{"channel":"#);
    out.reserve(json_str_len(channel));
    write_json_str_unreserved(&mut out, channel);
    out.extend_from_slice(br#","epoch":"#);
    out.reserve(json_str_len(epoch));
    write_json_str_unreserved(&mut out, epoch);
    out.extend_from_slice(br#","offset":"#);
    Sink::u64(&mut out, offset);
    out.extend_from_slice(br#","messages":"#);
    items(&mut out, list);
    out.extend_from_slice(b"}");
    out.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(frame: &[u8]) -> Value {
        serde_json::from_slice(payload(frame)).unwrap()
    }

    #[test]
    fn message_layout_slices_the_parts() {
        for (ch, from, off) in [("c", "p", 1u64), ("a\"b\\c", "x\u{1}y", 123_456_789)] {
            let f = message(ch, from, off, br#"{"k":[1,2]}"#, Some(br#"{"m":1}"#));
            let v = parse(&f);
            assert_eq!(v["offset"], json!(off));
            assert_eq!(v["from"], json!(from));
            assert_eq!(v["fromMetadata"], json!({"m":1}));
            let p = payload(&f);
            let l = MessageLayout::of(ch, from, off);
            let from_json: Value = serde_json::from_slice(&p[l.from.0..l.from.1]).unwrap();
            assert_eq!(from_json, json!(from));
            assert!(p[l.data_at..].starts_with(br#"{"k":[1,2]}"#));
        }
    }

    #[test]
    fn acks_and_answers_are_json() {
        let a = parse(&subscribe_ack("r", "e1", 5, Some(false)));
        assert_eq!(
            a,
            json!({"type":"ack","requestId":"r","epoch":"e1","offset":5,"recovered":false})
        );
        let a = parse(&subscribe_ack("r", "e1", 0, None));
        assert_eq!(
            a,
            json!({"type":"ack","requestId":"r","epoch":"e1","offset":0})
        );
        let a = parse(&publish_ack("r", 7));
        assert_eq!(a, json!({"type":"ack","requestId":"r","offset":7}));
        let list = [
            Item {
                offset: 1,
                from: br#""a""#,
                data: b"null",
                meta: None,
            },
            Item {
                offset: 2,
                from: br#""b""#,
                data: b"[1]",
                meta: Some(br#"{"x":1}"#),
            },
        ];
        let a = parse(&history_ack("r", "e", 2, &list));
        assert_eq!(
            a["messages"],
            json!([{"offset":1,"from":"a","data":null},{"offset":2,"from":"b","data":[1],"fromMetadata":{"x":1}}])
        );
        let b: Value = serde_json::from_slice(&history_body("c", "e", 2, &list)).unwrap();
        assert_eq!(b["channel"], "c");
        assert_eq!(b["messages"].as_array().unwrap().len(), 2);
        let big = vec![b'1'; 70_000];
        let f = text_parts(&big, b"");
        assert_eq!(payload(&f).len(), 70_000);
    }
}
