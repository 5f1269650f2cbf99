//! What crosses NATS for one publication or direct message (protocol §9): the frames the
//! sending node encoded, so that a message is encoded once cluster-wide and the receiving
//! node delivers the same bytes. Binary, length-prefixed, versioned:
//!
//! ```text
//! u8 version (1) | u8 kind (b'P' publication, b'D' direct) | u64 origin node | u64 sequence
//! | u16 app id length | app id | u16 name length | name (the channel, or the target peer)
//! | u32 frame length | frame | u32 metadata frame length (u32::MAX: none) | metadata frame
//! | [u16 shard | u64 connection: the publishing connection, optional]
//! ```
//!
//! The origin (a hash of the sending node's id) and its sequence number identify a message:
//! a node whose subscriptions overlap (a channel and a pattern covering it) receives it
//! twice and delivers it once.
//!
//! Presence and liveness use the same envelope:
//!
//! - `J` / `L` (a peer's first subscribed connection on the node came / its last went) and
//!   `M` (the node's whole membership of a channel, in parts): the name is the channel and
//!   the frame is a member list ([`encode_members`]): `u8 flags (1: last part, 2: ask the
//!   others for theirs) | u64 generation | u32 count | count × (u16 peer length | peer |
//!   u32 metadata length (u32::MAX: none) | metadata)`;
//! - `H` (heartbeat: the name is the node's id) and `R` (resynchronise: the name is the node
//!   asked, empty for every node), both with an empty app and frame;
//! - `Q` (a question for every node: the app, the name it is about, the opcode as the frame)
//!   and `A` (an answer: the body as the frame), see [`super::query`].
//!
//! Lengths are big-endian. Anything that does not parse is dropped and counted by the link.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::router::{ConnId, ConnRef, ShardId};

const VERSION: u8 = 1;
const NONE: u32 = u32::MAX;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A publication on a channel.
    Publication,
    /// A direct message to a peer.
    Direct,
    /// A peer's first subscribed connection on the sending node.
    Joined,
    /// A peer's last subscribed connection on the sending node went.
    Left,
    /// A part of the sending node's whole membership of a channel.
    Membership,
    /// The sending node is alive.
    Heartbeat,
    /// The sending node asks one node (or every node) to send its memberships again.
    Resync,
    /// A question for every node ([`super::query`]).
    Query,
    /// A node's answer to a question.
    Answer,
    /// A responder's reply, to the requester's node ([`super::rpc`]).
    Reply,
    /// A frame for a responder connection, to its node.
    ToResponder,
    /// The responder connection that took a request went away, to the requester's node.
    ResponderGone,
}

const KINDS: [(Kind, u8); 12] = [
    (Kind::Publication, b'P'),
    (Kind::Direct, b'D'),
    (Kind::Joined, b'J'),
    (Kind::Left, b'L'),
    (Kind::Membership, b'M'),
    (Kind::Heartbeat, b'H'),
    (Kind::Resync, b'R'),
    (Kind::Query, b'Q'),
    (Kind::Answer, b'A'),
    (Kind::Reply, b'Y'),
    (Kind::ToResponder, b'F'),
    (Kind::ResponderGone, b'G'),
];

impl Kind {
    fn byte(self) -> u8 {
        KINDS
            .iter()
            .find(|(k, _)| *k == self)
            .map_or(0, |(_, b)| *b)
    }

    fn from_byte(b: u8) -> Option<Kind> {
        KINDS.iter().find(|(_, x)| *x == b).map(|(k, _)| *k)
    }
}

/// Flag of a member list: the last part of a membership.
pub const LAST: u8 = 1;
/// Flag of a member list: the sender asks the other nodes for their memberships.
pub const ASK: u8 = 2;

/// A decoded member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// [`LAST`], [`ASK`].
    pub flags: u8,
    /// The membership's generation (every part of one membership has the same).
    pub gen: u64,
    /// `(peerId, metadata)` pairs.
    pub members: Vec<crate::cluster::Member>,
}

/// Encodes a member list (the frame of `J`, `L` and `M`).
pub fn encode_members(flags: u8, gen: u64, members: &[crate::cluster::Member]) -> Bytes {
    let size: usize = members
        .iter()
        .map(|(p, m)| 6 + p.len() + m.as_ref().map_or(0, |m| m.len()))
        .sum();
    let mut b = BytesMut::with_capacity(13 + size);
    b.put_u8(flags);
    b.put_u64(gen);
    b.put_u32(members.len() as u32);
    for (p, m) in members {
        // Peer ids are at most 128 bytes, metadata at most 4 KiB.
        b.put_u16(p.len() as u16);
        b.put_slice(p.as_bytes());
        match m {
            Some(m) => {
                b.put_u32(m.len() as u32);
                b.put_slice(m);
            }
            None => b.put_u32(NONE),
        }
    }
    b.freeze()
}

/// Decodes a member list; `None` when malformed. Metadata are slices of `frame`.
pub fn decode_members(mut frame: Bytes) -> Option<Members> {
    if frame.remaining() < 13 {
        return None;
    }
    let flags = frame.get_u8();
    let gen = frame.get_u64();
    let n = frame.get_u32() as usize;
    // Each member takes at least 6 bytes: a count past that is a lie, not an allocation.
    if n > frame.remaining() / 6 {
        return None;
    }
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        if frame.remaining() < 2 {
            return None;
        }
        let len = frame.get_u16() as usize;
        if frame.remaining() < len + 4 {
            return None;
        }
        let peer = std::str::from_utf8(&frame.split_to(len)).ok()?.into();
        let meta = match frame.get_u32() {
            NONE => None,
            m if frame.remaining() >= m as usize => Some(frame.split_to(m as usize)),
            _ => return None,
        };
        members.push((peer, meta));
    }
    frame.is_empty().then_some(Members {
        flags,
        gen,
        members,
    })
}

/// A message as it crosses NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMsg {
    /// Publication or direct.
    pub kind: Kind,
    /// The sending node (a hash of its id) and the message's number there.
    pub id: (u64, u64),
    /// The app's configured id (apps are matched by id across nodes).
    pub app: String,
    /// The channel (publication) or the target peer (direct).
    pub name: String,
    /// The `message` frame (WebSocket header included).
    pub frame: Bytes,
    /// The frame with `fromMetadata`, when the publisher had metadata.
    pub frame_with_meta: Option<Bytes>,
    /// The sending connection on the origin node, when the sender said.
    pub sender: Option<ConnRef>,
}

/// Encodes a message; one allocation, sized up front.
pub fn encode(
    kind: Kind,
    id: (u64, u64),
    app: &str,
    name: &str,
    frame: &[u8],
    frame_with_meta: Option<&[u8]>,
) -> Bytes {
    encode_from(kind, id, app, name, frame, frame_with_meta, None)
}

/// [`encode`] with the sending connection at the end (a publication's publisher: a queue
/// group's pick skips it when the publication comes back to its node, protocol §8.2).
pub fn encode_from(
    kind: Kind,
    id: (u64, u64),
    app: &str,
    name: &str,
    frame: &[u8],
    frame_with_meta: Option<&[u8]>,
    sender: Option<ConnRef>,
) -> Bytes {
    let mut b = BytesMut::with_capacity(
        10 + 2
            + 16
            + 2
            + app.len()
            + 2
            + name.len()
            + 4
            + frame.len()
            + 4
            + frame_with_meta.map_or(0, <[u8]>::len),
    );
    b.put_u8(VERSION);
    b.put_u8(kind.byte());
    b.put_u64(id.0);
    b.put_u64(id.1);
    // Both fit: app ids are config strings, channel names are at most 256 bytes and peer
    // ids 128.
    b.put_u16(app.len() as u16);
    b.put_slice(app.as_bytes());
    b.put_u16(name.len() as u16);
    b.put_slice(name.as_bytes());
    b.put_u32(frame.len() as u32);
    b.put_slice(frame);
    match frame_with_meta {
        Some(f) => {
            b.put_u32(f.len() as u32);
            b.put_slice(f);
        }
        None => b.put_u32(NONE),
    }
    if let Some(c) = sender {
        b.put_u16(c.shard.0);
        b.put_u64(c.conn.0);
    }
    b.freeze()
}

/// Decodes a payload; `None` for anything malformed (wrong version, short, bad UTF-8).
/// The frames are slices of `payload` (no copy).
pub fn decode(mut payload: Bytes) -> Option<WireMsg> {
    fn take(p: &mut Bytes, n: usize) -> Option<Bytes> {
        (p.remaining() >= n).then(|| p.split_to(n))
    }
    fn text(p: &mut Bytes) -> Option<String> {
        if p.remaining() < 2 {
            return None;
        }
        let n = p.get_u16() as usize;
        String::from_utf8(take(p, n)?.to_vec()).ok()
    }
    if payload.remaining() < 2 || payload.get_u8() != VERSION {
        return None;
    }
    let kind = Kind::from_byte(payload.get_u8())?;
    if payload.remaining() < 16 {
        return None;
    }
    let id = (payload.get_u64(), payload.get_u64());
    let app = text(&mut payload)?;
    let name = text(&mut payload)?;
    if payload.remaining() < 4 {
        return None;
    }
    let n = payload.get_u32() as usize;
    let frame = take(&mut payload, n)?;
    if payload.remaining() < 4 {
        return None;
    }
    let frame_with_meta = match payload.get_u32() {
        NONE => None,
        n => Some(take(&mut payload, n as usize)?),
    };
    let sender = match payload.remaining() {
        0 => None,
        10 => Some(ConnRef {
            shard: ShardId(payload.get_u16()),
            conn: ConnId(payload.get_u64()),
        }),
        _ => return None,
    };
    Some(WireMsg {
        kind,
        id,
        app,
        name,
        frame,
        frame_with_meta,
        sender,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn round_trips_with_and_without_metadata() {
        for (kind, meta) in [
            (Kind::Publication, None),
            (Kind::Direct, Some(&b"\x81\x02{}"[..])),
        ] {
            let b = encode(kind, (7, 9), "app", "a/b", b"\x81\x05hello", meta);
            let w = decode(b).unwrap();
            assert_eq!(w.kind, kind);
            assert_eq!(w.id, (7, 9));
            assert_eq!(w.app, "app");
            assert_eq!(w.name, "a/b");
            assert_eq!(&w.frame[..], b"\x81\x05hello");
            assert_eq!(w.frame_with_meta.as_deref(), meta);
        }
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let good = encode(Kind::Publication, (1, 2), "app", "c", b"f", Some(b"g"));
        for n in 0..good.len() {
            assert_eq!(decode(good.slice(..n)), None, "truncated at {n}");
        }
        let from = ConnRef {
            shard: ShardId(1),
            conn: ConnId(99),
        };
        let with = encode_from(
            Kind::Publication,
            (1, 2),
            "app",
            "c",
            b"f",
            None,
            Some(from),
        );
        assert_eq!(decode(with).unwrap().sender, Some(from));
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(decode(Bytes::from(long)), None, "trailing byte");
        let mut v2 = good.to_vec();
        v2[0] = 2;
        assert_eq!(decode(Bytes::from(v2)), None, "unknown version");
        let mut kind = good.to_vec();
        kind[1] = b'X';
        assert_eq!(decode(Bytes::from(kind)), None, "unknown kind");
        let mut huge = encode(Kind::Direct, (1, 2), "app", "c", b"f", None).to_vec();
        let at = 2 + 16 + 2 + 3 + 2 + 1;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(Bytes::from(huge)), None, "length past the end");
    }

    #[test]
    fn member_lists_round_trip_and_refuse_malformed() {
        let members: Vec<crate::cluster::Member> = vec![
            (Arc::from("alice"), Some(Bytes::from_static(b"{\"a\":1}"))),
            (Arc::from("bob"), None),
        ];
        let b = encode_members(LAST | ASK, 42, &members);
        let m = decode_members(b.clone()).unwrap();
        assert_eq!((m.flags, m.gen), (LAST | ASK, 42));
        assert_eq!(m.members, members);
        for n in 0..b.len() {
            assert_eq!(decode_members(b.slice(..n)), None, "truncated at {n}");
        }
        let mut liar = b.to_vec();
        liar[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode_members(Bytes::from(liar)),
            None,
            "count past the end"
        );
        for kind in [
            Kind::Joined,
            Kind::Left,
            Kind::Membership,
            Kind::Heartbeat,
            Kind::Resync,
        ] {
            let w = decode(encode(kind, (1, 2), "", "n1", &[], None)).unwrap();
            assert_eq!(w.kind, kind);
        }
    }
}
