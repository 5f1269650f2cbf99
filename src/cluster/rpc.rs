//! Requests across nodes (protocol §8.4 over §9): what crosses NATS between a requester's
//! node and a responder's. The request itself travels as a direct message to the target
//! peer (its `replyTo` names the requester's node, shard and request, see
//! [`crate::rpc::reply_to`]); everything after it goes node to node on the receiving node's
//! rpc subject (`{prefix}.rpc.{node}`, [`super::subject::rpc_subject`]):
//!
//! - `Y` a responder's reply, to the requester's node: the app, the responder's peer id, the
//!   reply's `data` as the frame, and a header `u16 requester shard | u64 request | u16
//!   responder shard | u64 responder connection | u8 final | requestId` (UTF-8, to the end);
//! - `F` a frame for a responder connection (the reply's ack or `request_not_found`, or a
//!   `cancel`), to the responder's node: header `u16 responder shard | u64 connection | u16
//!   requester shard | u64 request | u8 release | u8 has frame`, the frame as the frame;
//! - `G` the responder connection that took a request went away, to the requester's node:
//!   header `u16 requester shard | u64 request | u16 responder shard | u64 connection`.
//!
//! The sending node is the message's origin ([`super::wire::WireMsg::id`]). A direct that
//! must skip one connection (a `cancel` `taken` to the connections that did not take the
//! request) carries it in the metadata slot: `u64 node | u16 shard | u64 connection`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::router::{ConnId, ConnRef, NodeConn, ShardId};

/// A reply on its way to the requester's node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReply {
    /// The requester's node.
    pub node: u64,
    /// The requester's shard there.
    pub of: ShardId,
    /// The request.
    pub n: u64,
    /// The responder's app (its configured id crosses).
    pub app: crate::auth::AppId,
    /// The responder's peer id.
    pub peer: std::sync::Arc<str>,
    /// The responder connection (on the sending node).
    pub from: ConnRef,
    /// `data`.
    pub data: Bytes,
    /// `final`.
    pub last: bool,
    /// The reply's own requestId.
    pub request_id: Option<Box<str>>,
}

/// The header of a `Y` message.
pub fn reply_header(r: &RemoteReply) -> Bytes {
    let rid = r.request_id.as_deref().unwrap_or("");
    let mut b = BytesMut::with_capacity(21 + rid.len());
    b.put_u16(r.of.0);
    b.put_u64(r.n);
    put_conn(&mut b, r.from);
    b.put_u8(u8::from(r.last) | if r.request_id.is_some() { 2 } else { 0 });
    b.put_slice(rid.as_bytes());
    b.freeze()
}

/// A decoded `Y` header: requester shard, request, responder connection, final, requestId.
pub type ReplyHeader = (ShardId, u64, ConnRef, bool, Option<Box<str>>);

/// Decodes a `Y` header.
pub fn decode_reply_header(mut h: Bytes) -> Option<ReplyHeader> {
    if h.len() < 21 {
        return None;
    }
    let of = ShardId(h.get_u16());
    let n = h.get_u64();
    let from = get_conn(&mut h);
    let flags = h.get_u8();
    let rid = if flags & 2 != 0 {
        Some(std::str::from_utf8(&h).ok()?.into())
    } else if h.is_empty() {
        None
    } else {
        return None;
    };
    Some((of, n, from, flags & 1 != 0, rid))
}

/// The header of an `F` message.
pub fn frame_header(to: ConnRef, of: ShardId, n: u64, release: bool, has_frame: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(22);
    put_conn(&mut b, to);
    b.put_u16(of.0);
    b.put_u64(n);
    b.put_u8(u8::from(release));
    b.put_u8(u8::from(has_frame));
    b.freeze()
}

/// Decodes an `F` header: responder connection, requester shard, request, release, has frame.
pub fn decode_frame_header(mut h: Bytes) -> Option<(ConnRef, ShardId, u64, bool, bool)> {
    if h.len() != 22 {
        return None;
    }
    let to = get_conn(&mut h);
    let of = ShardId(h.get_u16());
    let n = h.get_u64();
    Some((to, of, n, h.get_u8() != 0, h.get_u8() != 0))
}

/// The header of a `G` message.
pub fn gone_header(of: ShardId, n: u64, conn: ConnRef) -> Bytes {
    let mut b = BytesMut::with_capacity(20);
    b.put_u16(of.0);
    b.put_u64(n);
    put_conn(&mut b, conn);
    b.freeze()
}

/// Decodes a `G` header: requester shard, request, the responder connection that went.
pub fn decode_gone_header(mut h: Bytes) -> Option<(ShardId, u64, ConnRef)> {
    if h.len() != 20 {
        return None;
    }
    let of = ShardId(h.get_u16());
    let n = h.get_u64();
    Some((of, n, get_conn(&mut h)))
}

/// The connection a direct skips, for its metadata slot.
pub fn except_bytes(e: NodeConn) -> Bytes {
    let mut b = BytesMut::with_capacity(18);
    b.put_u64(e.node);
    put_conn(&mut b, e.conn);
    b.freeze()
}

/// Decodes the connection a direct skips.
pub fn decode_except(mut b: Bytes) -> Option<NodeConn> {
    if b.len() != 18 {
        return None;
    }
    let node = b.get_u64();
    Some(NodeConn {
        node,
        conn: get_conn(&mut b),
    })
}

fn put_conn(b: &mut BytesMut, c: ConnRef) {
    b.put_u16(c.shard.0);
    b.put_u64(c.conn.0);
}

fn get_conn(b: &mut Bytes) -> ConnRef {
    ConnRef {
        shard: ShardId(b.get_u16()),
        conn: ConnId(b.get_u64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_refuse_wrong_sizes() {
        let c = ConnRef {
            shard: ShardId(3),
            conn: ConnId(77),
        };
        for rid in [None, Some("r-1"), Some("")] {
            let r = RemoteReply {
                node: 9,
                of: ShardId(1),
                n: 5 << 32 | 4,
                app: crate::auth::AppId(0),
                peer: "p".into(),
                from: c,
                data: Bytes::new(),
                last: rid.is_some(),
                request_id: rid.map(Into::into),
            };
            let h = decode_reply_header(reply_header(&r)).unwrap();
            assert_eq!(h, (r.of, r.n, c, r.last, r.request_id.clone()));
        }
        assert_eq!(decode_reply_header(Bytes::from_static(&[0; 20])), None);
        let f = frame_header(c, ShardId(2), 8, true, false);
        assert_eq!(
            decode_frame_header(f),
            Some((c, ShardId(2), 8, true, false))
        );
        assert_eq!(
            decode_gone_header(gone_header(ShardId(2), 8, c)),
            Some((ShardId(2), 8, c))
        );
        let e = NodeConn { node: 1, conn: c };
        assert_eq!(decode_except(except_bytes(e)), Some(e));
        assert_eq!(decode_except(Bytes::from_static(&[0; 17])), None);
    }
}
