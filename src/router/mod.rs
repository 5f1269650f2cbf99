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
//! Seams for later issues: history/resume assigns per-channel offsets at the owner shard
//! (publications would go through the owner first); queue groups add a group key to
//! [`index::Sub`] and pick one member per group at the owner.

pub mod fanout;
pub mod groups;
pub mod index;
#[allow(unsafe_code)] // The mesh's eventfd wake-ups are libc calls; each block has its SAFETY.
pub mod mesh;
pub mod patterns;

use std::sync::Arc;

use bytes::Bytes;

use crate::{auth::AppId, protocol::encode};

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
