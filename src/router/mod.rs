//! Who receives what: shard and connection identities, the channel-owner function, the
//! typed cross-shard messages, the shard mesh and the per-shard subscription index.
//!
//! This module is data structures and messages only: no sockets, no runtime, no io_uring.
//!
//! # Routing rules
//! - A **publication** is encoded into WebSocket frames once ([`Publication::new`]) by the
//!   shard that received it (or the REST thread), and [`fanout::publish`] delivers it to
//!   that shard's local subscribers and pushes it as one `Arc<Publication>` to every other
//!   shard, which delivers the same bytes to its own subscribers.
//! - **Presence** for a channel is sequenced by the channel's owner shard
//!   ([`owner_of`]): subscribe/unsubscribe notices go there, and it answers with the roster
//!   snapshot and joined/left events through the same FIFO queues, which is what keeps
//!   "never `left` before `joined`" true across shards.
//! - **Direct sends** consult the shard's replica of the peer directory (which shards hold
//!   a connection of a peer), kept current by `PeerUp`/`PeerDown` broadcasts.
//!
//! - [ext] **History channels** (protocol §8.1) are sequenced by the channel's owner
//!   too: a publication goes to the owner first ([`ShardMsg::HistoryPublish`]), which
//!   gives it its offset, retains it and fans it out to every shard, itself included,
//!   through the FIFO queues; a subscribe's answer (ack, snapshot, replay) leaves the owner
//!   through the same queues, so the replay and the live stream meet with no gap and no
//!   duplicate.
//! - [ext] **Queue groups** (protocol §8.2): membership is kept by the channel's owner
//!   ([`groups`]), which picks one member per group for each publication it handles and
//!   sends it there (`ShardMsg::GroupDeliver`); plain fan-out skips group members.
//! - [ext] **Requests** (protocol §8.4) travel like direct sends; their replies go to the
//!   requester's shard, named by the request's `replyTo` (`crate::rpc`).

pub mod fanout;
pub mod groups;
pub mod index;
#[allow(unsafe_code)] // The mesh's eventfd wake-ups are libc calls; each block has its SAFETY.
pub mod mesh;
pub mod patterns;

use std::sync::Arc;

use bytes::Bytes;

use crate::{
    auth::{keys::HistoryRule, AppId},
    history::Since,
    protocol::encode,
};

/// Index of a shard (a pinned thread with its own runtime).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

/// A connection, unique within its shard for the life of the process (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A connection anywhere in the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// Shard owning the connection.
    pub shard: ShardId,
    /// Connection within that shard.
    pub conn: ConnId,
}

/// [ext] A connection anywhere in the cluster (protocol §9): its node's incarnation (0: this
/// node) and its place there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeConn {
    /// The node (`cluster::Link::origin`), 0 for this one.
    pub node: u64,
    /// The connection on that node.
    pub conn: ConnRef,
}

impl NodeConn {
    /// A connection of this node.
    pub fn here(conn: ConnRef) -> NodeConn {
        NodeConn { node: 0, conn }
    }
}

/// The shard that sequences presence (and, later, history offsets) for `channel` of `app`.
/// Pure and stable for a given shard count: every shard computes the same answer.
pub(crate) fn owner_of(app: AppId, channel: &str, shards: usize) -> ShardId {
    // Fixed seeds: the function must agree across threads and runs.
    let state = ahash::RandomState::with_seeds(0x7269_6e67, 0x6361_7374, 0x5f6f_776e, 0x6572_2121);
    let h = state.hash_one((app.0, channel));
    ShardId((h % shards.max(1) as u64) as u16)
}

/// One publication, encoded once and shared by every shard that has subscribers.
#[derive(Debug)]
pub struct Publication {
    /// Tenant.
    pub app: AppId,
    /// Channel name.
    pub channel: Arc<str>,
    /// The publishing connection, which does not receive its own message; `None` for REST.
    pub origin: Option<ConnRef>,
    /// The `message` frame without `fromMetadata`.
    pub frame: Bytes,
    /// The frame with `fromMetadata`, when the publisher has peer metadata; subscribers with
    /// `includeSenderMetadata` get this one.
    pub frame_with_meta: Option<Bytes>,
}

impl Publication {
    /// Encodes `data` from peer `from` on `channel` into its `message` frames, once: the
    /// frame without `fromMetadata`, and the one with it when the publisher has metadata
    /// (`metadata`, compact JSON). `origin` is the publishing connection (`None` for REST).
    pub fn new(
        app: AppId,
        channel: &str,
        from: &str,
        data: &[u8],
        metadata: Option<&[u8]>,
        origin: Option<ConnRef>,
    ) -> Publication {
        Publication {
            app,
            channel: Arc::from(channel),
            origin,
            frame: encode::message(channel, from, data, None),
            frame_with_meta: metadata.map(|m| encode::message(channel, from, data, Some(m))),
        }
    }

    /// The frame a subscriber gets, given its `includeSenderMetadata` flag.
    pub(crate) fn frame_for(&self, include_meta: bool) -> &Bytes {
        match (&self.frame_with_meta, include_meta) {
            (Some(f), true) => f,
            _ => &self.frame,
        }
    }
}

impl Publication {
    /// [ext] A publication on a history channel: the same frames with `"offset"`
    /// (`protocol::encode::history::message`), built by the channel's owner.
    pub fn sequenced(
        app: AppId,
        channel: &Arc<str>,
        from: &str,
        offset: u64,
        data: &[u8],
        metadata: Option<&[u8]>,
        origin: Option<ConnRef>,
    ) -> Publication {
        use encode::history::message;
        Publication {
            app,
            channel: channel.clone(),
            origin,
            frame: message(channel, from, offset, data, None),
            frame_with_meta: metadata.map(|m| message(channel, from, offset, data, Some(m))),
        }
    }
}

/// [ext] A subscribe to a history channel, as the channel's owner needs it to answer.
#[derive(Debug)]
pub struct HistoryJoin {
    /// The channel's history rule.
    pub rule: HistoryRule,
    /// Resume position, if the subscribe had `since`.
    pub since: Option<Since>,
    /// The subscribe's requestId: the owner encodes the ack (it carries the epoch and
    /// offset only the owner knows).
    pub request_id: Option<Box<str>>,
    /// `includeSenderMetadata`: which replayed frames to build.
    pub include_meta: bool,
}

/// [ext] The owner's answer to a [`HistoryJoin`], sent to the subscriber's shard with the
/// presence snapshot: the ack, then (after the snapshot) the replay.
#[derive(Debug)]
pub struct HistoryAnswer {
    /// The subscribe's `ack` (with `epoch`, `offset`, `recovered`), if it had a requestId.
    pub ack: Option<Bytes>,
    /// The replayed `message` frames, in offset order.
    pub replay: Vec<Bytes>,
}

/// [ext] A publication on a history channel, on its way to the channel's owner.
#[derive(Debug)]
pub struct HistoryPublish {
    /// Tenant.
    pub app: AppId,
    /// Channel.
    pub channel: Arc<str>,
    /// Its history rule.
    pub rule: HistoryRule,
    /// The publisher's peer id (or the REST body's `from`).
    pub from: Arc<str>,
    /// `data`, raw JSON.
    pub data: Bytes,
    /// The publisher's metadata, compact JSON.
    pub metadata: Option<Bytes>,
    /// The publishing connection (not delivered back to it); `None` for REST.
    pub origin: Option<ConnRef>,
    /// Where the outcome goes.
    pub answer: PublishAnswer,
}

/// [ext] Where the owner reports a history publication's outcome.
#[derive(Debug)]
pub enum PublishAnswer {
    /// To the publishing connection (`origin`): an ack with the offset when it had a
    /// requestId, `rate_limited` when the fan-out was refused.
    Conn {
        /// The publish's requestId.
        request_id: Option<Box<str>>,
    },
    /// To the REST thread: the offset, or busy.
    Rest(Reply<Result<u64, fanout::Busy>>),
}

/// [ext] A `history` query, on its way to the channel's owner.
#[derive(Debug)]
pub struct HistoryQuery {
    /// Tenant.
    pub app: AppId,
    /// Channel.
    pub channel: Arc<str>,
    /// Its history rule.
    pub rule: HistoryRule,
    /// List the messages after this offset (else the oldest first).
    pub since_offset: Option<u64>,
    /// At most this many.
    pub limit: u16,
    /// Where the answer goes.
    pub answer: QueryAnswer,
}

/// [ext] Where the owner sends a history query's answer.
#[derive(Debug)]
pub enum QueryAnswer {
    /// A WebSocket `history` command: an `ack` frame to this connection.
    Conn {
        /// The asking connection.
        conn: ConnRef,
        /// Its requestId.
        request_id: Box<str>,
    },
    /// REST: the JSON body.
    Rest(Reply<Vec<u8>>),
}

/// [ext] A responder's reply on its way to the requester's shard.
#[derive(Debug)]
pub struct ReplyMsg {
    /// The request there (from `replyTo`).
    pub n: u64,
    /// The responder's tenant.
    pub app: AppId,
    /// The responder's peer id (a reply is accepted only from the target peer).
    pub peer: Arc<str>,
    /// The responder connection (on another node when the request crossed NATS).
    pub from: NodeConn,
    /// `data`, raw JSON.
    pub data: Bytes,
    /// `final`.
    pub last: bool,
    /// The reply's own requestId (answered with `ack` or `request_not_found`).
    pub request_id: Option<Box<str>>,
}

/// One direct message, encoded once.
#[derive(Debug)]
pub struct Direct {
    /// Tenant.
    pub app: AppId,
    /// Target peer.
    pub to: Arc<str>,
    /// The sending connection (not delivered back to it).
    pub origin: Option<ConnRef>,
    /// The `direct` frame.
    pub frame: Bytes,
}

/// Messages between shards. Every variant is `Send`; payload frames are shared `Bytes`.
#[derive(Debug)]
pub enum ShardMsg {
    /// Deliver to local subscribers of the channel.
    Publish(Arc<Publication>),
    /// Deliver to every local connection of the target peer.
    Direct(Arc<Direct>),
    /// To the channel owner: a connection subscribed.
    PresenceJoin {
        /// Tenant.
        app: AppId,
        /// Channel.
        channel: Arc<str>,
        /// The subscribing peer.
        peer: Arc<str>,
        /// Its public metadata (compact JSON).
        metadata: Option<Bytes>,
        /// Where the connection lives; the snapshot goes back there.
        from: ConnRef,
        /// Whether the connection may receive presence (the snapshot is skipped otherwise).
        wants_presence: bool,
        /// [ext] Set for a history channel: the owner answers with the ack and replay.
        history: Option<Box<HistoryJoin>>,
    },
    /// To the channel owner: an already subscribed connection subscribed again and wants a
    /// fresh roster snapshot.
    PresenceResnapshot {
        /// Tenant.
        app: AppId,
        /// Channel.
        channel: Arc<str>,
        /// The subscribing peer (left out of its own snapshot).
        peer: Arc<str>,
        /// Where the snapshot goes.
        from: ConnRef,
        /// [ext] Set for a history channel: the owner answers with the ack and replay.
        history: Option<Box<HistoryJoin>>,
    },
    /// To the channel owner: a connection unsubscribed or went away.
    PresenceLeave {
        /// Tenant.
        app: AppId,
        /// Channel.
        channel: Arc<str>,
        /// The leaving peer.
        peer: Arc<str>,
        /// Shard of the leaving connection.
        from: ShardId,
    },
    /// From the owner: the roster snapshot for one newly subscribed connection.
    PresenceSnapshot {
        /// Tenant.
        app: AppId,
        /// Channel.
        channel: Arc<str>,
        /// The subscriber.
        conn: ConnId,
        /// The encoded `presence` frames: several when the roster is large (see
        /// `presence::SNAPSHOT_FRAME_BUDGET`), none when the connection may not see presence.
        frames: Vec<Bytes>,
        /// [ext] For a history channel: the ack (sent before the snapshot) and the replay
        /// (after it); the subscription receives live publications from then on.
        history: Option<Box<HistoryAnswer>>,
    },
    /// From the owner: a peer joined or left the channel.
    PresenceEvent {
        /// Tenant.
        app: AppId,
        /// Channel.
        channel: Arc<str>,
        /// The peer concerned (its own connections are not told about themselves).
        peer: Arc<str>,
        /// The encoded `presence` frame.
        frame: Bytes,
    },
    /// [ext] To a history channel's owner: sequence, retain and fan out a publication.
    HistoryPublish(Box<HistoryPublish>),
    /// [ext] To a history channel's owner: list retained messages.
    HistoryQuery(Box<HistoryQuery>),
    /// [ext] To a request's shard (protocol §8.4): a responder replied.
    Reply(Box<ReplyMsg>),
    /// [ext] To a responder's shard: a frame for one of its connections about request `n`
    /// of shard `of` (the reply's ack or `request_not_found`, or a `cancel`); with
    /// `release`, the connection no longer holds that request.
    ResponderFrame {
        /// The responder connection.
        conn: ConnId,
        /// The requester's node (0: this one).
        of_node: u64,
        /// The requester's shard.
        of: ShardId,
        /// The request there.
        n: u64,
        /// What to send it, if anything.
        frame: Option<Bytes>,
        /// The connection is done with the request.
        release: bool,
    },
    /// [ext] To a request's shard: the connection that took request `n` went away.
    ResponderGone {
        /// The request.
        n: u64,
        /// The connection that went away.
        conn: NodeConn,
    },
    /// [ext] From the cluster link, to a request's shard: the request, sent only to other
    /// nodes, reached no connection of its peer (`peer_not_found`), or no node answered
    /// (`internal_error`).
    RequestFailed {
        /// The request.
        n: u64,
        /// Why.
        code: crate::protocol::ErrorCode,
    },
    /// One frame for one local connection (an ack or error answered by another shard).
    ConnFrame {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: Bytes,
        /// A possibly large answer (a `history` ack): admitted past the outbound cap with
        /// the one-at-a-time allowance of a presence snapshot.
        large: bool,
    },
    /// Graceful shutdown: stop accepting, send `going_away`, close every connection 1001.
    Shutdown {
        /// `retryAfterMs` to announce.
        retry_after_ms: u64,
    },
    /// Peer directory: `shard` now holds at least one connection of `peer`.
    PeerUp {
        /// Tenant.
        app: AppId,
        /// Peer.
        peer: Arc<str>,
        /// Shard that gained it.
        shard: ShardId,
    },
    /// Peer directory: `shard` no longer holds any connection of `peer`.
    PeerDown {
        /// Tenant.
        app: AppId,
        /// Peer.
        peer: Arc<str>,
        /// Shard that lost it.
        shard: ShardId,
    },
    /// REST, to the channel's owner: the channel's presence roster (every shard's peers).
    PeersQuery {
        /// Tenant.
        app: AppId,
        /// Channel.
        channel: Arc<str>,
        /// Where the `(peerId, peerMetadata)` pairs go.
        reply: Reply<Vec<(Arc<str>, Option<Bytes>)>>,
    },
    /// Shutdown, to every shard once the drain timed out: what is still undelivered
    /// (connections still open, frames and bytes still queued for them).
    Undelivered {
        /// Receives `(connections, frames, bytes)`.
        reply: Reply<(u64, u64, u64)>,
    },
    /// REST, to every shard: close each local connection of `peer` with 4020.
    Kick {
        /// Tenant.
        app: AppId,
        /// The peer to disconnect.
        peer: Arc<str>,
        /// Receives how many connections this shard closed.
        reply: Reply<u32>,
    },
    /// [ext] To the channel owner: `conn` joined queue group `group` of the channel
    /// (protocol §8.2; `router/groups.rs`).
    GroupJoin {
        /// Tenant.
        app: AppId,
        /// Channel.
        channel: Arc<str>,
        /// Group name.
        group: Arc<str>,
        /// The member.
        conn: ConnRef,
    },
    /// [ext] To the channel owner: `conn` left the group (unsubscribe or disconnect).
    GroupLeave {
        /// Tenant.
        app: AppId,
        /// Channel.
        channel: Arc<str>,
        /// Group name.
        group: Arc<str>,
        /// The member.
        conn: ConnRef,
    },
    /// [ext] From the channel owner to a member's shard: deliver `publication` to `conn`,
    /// which the owner picked for `group`, if it is still a member; else bounce it back.
    GroupDeliver {
        /// The publication (the same `Arc` every shard got).
        publication: Arc<Publication>,
        /// The group it was picked for.
        group: Arc<str>,
        /// The chosen member, on the receiving shard.
        conn: ConnId,
        /// Picks so far for this publication and group (1 for the first).
        tries: u8,
    },
    /// [ext] From the cluster link, to a channel's owner (protocol §9): presence on another
    /// node.
    RemotePresence(Box<crate::cluster::RemotePresence>),
    /// [ext] From the cluster link, to every shard: node `origin` is gone (silent past
    /// `node_timeout_ms`, or restarted); its members leave every roster.
    NodeGone {
        /// The node's incarnation.
        origin: u64,
    },
    /// [ext] From the cluster link, to every shard: hand the link this node's membership of
    /// every channel the shard owns (the link reconnected, or another node asked).
    ClusterResync {
        /// Ask the other nodes for theirs too (this node reconnected).
        ask: bool,
    },
    /// [ext] Back to the channel owner: the chosen member had left; pick another.
    GroupBounce {
        /// The publication.
        publication: Arc<Publication>,
        /// The group to pick from again.
        group: Arc<str>,
        /// Picks so far.
        tries: u8,
    },
}

impl ShardMsg {
    /// Bytes of client data this message carries (publications and direct messages; 0 for
    /// control messages): what the mesh's per-destination bound counts.
    pub(crate) fn data_bytes(&self) -> usize {
        match self {
            ShardMsg::Publish(p) => {
                p.frame.len() + p.frame_with_meta.as_ref().map_or(0, |f| f.len())
            }
            ShardMsg::Direct(d) => d.frame.len(),
            ShardMsg::HistoryPublish(h) => h.data.len(),
            ShardMsg::Reply(r) => r.data.len(),
            ShardMsg::PresenceSnapshot {
                history: Some(h), ..
            } => h.replay.iter().map(|f| f.len()).sum(),
            ShardMsg::GroupDeliver { publication: p, .. }
            | ShardMsg::GroupBounce { publication: p, .. } => p.frame_for(true).len(),
            _ => 0,
        }
    }
}

/// The answer channel of a request carried by a [`ShardMsg`] (sent from a shard thread,
/// awaited by the REST thread). A dropped asker makes the send fail, which is ignored.
pub(crate) type Reply<T> = tokio::sync::oneshot::Sender<T>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_in_range() {
        for n in 1..8 {
            for i in 0..200 {
                let ch = format!("room/{i}");
                let a = owner_of(AppId(0), &ch, n);
                assert_eq!(a, owner_of(AppId(0), &ch, n));
                assert!((a.0 as usize) < n);
            }
        }
    }

    #[test]
    fn owner_spreads_channels() {
        let n = 4;
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner_of(AppId(1), &format!("c{i}"), n).0 as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread {counts:?}");
        }
    }
}
