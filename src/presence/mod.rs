//! Presence rosters, kept by each channel's owner shard ([`crate::router::owner_of`]).
//!
//! The roster is per peerId, not per socket: a peer's first subscribed connection
//! (on any shard) announces `joined`, its last one leaving announces `left`. Because the
//! owner alone sequences a channel's presence and every shard receives the owner's
//! messages through one FIFO queue, all shards see one order of events; a new subscriber's
//! snapshot travels through that same queue, so events it must not see yet (already in
//! the snapshot) arrive before it and are withheld by its shard (see
//! [`crate::router::index::PresenceState`]).

use std::{collections::HashMap, sync::Arc};

use ahash::RandomState;
use bytes::Bytes;

use crate::{
    auth::AppId,
    protocol::encode::{self, PresencePeer},
    router::{ConnRef, HistoryAnswer, ShardId, ShardMsg},
};

#[derive(Debug)]
struct PeerEntry {
    /// Subscribed connections of this peer, across all shards of this node.
    conns: u32,
    /// Public metadata (compact JSON), from the peer's first connection.
    metadata: Option<Bytes>,
    /// [ext] Other nodes (protocol §9) with a subscribed connection of this peer: each
    /// node's origin and the generation of the membership that listed it (0 for a `joined`).
    /// Empty (no allocation) on a single node.
    nodes: Vec<(u64, u64)>,
}

impl PeerEntry {
    /// In the roster: subscribed here or on another node.
    fn present(&self) -> bool {
        self.conns > 0 || !self.nodes.is_empty()
    }
}

/// What a local join changed, for the cluster link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The channel had no subscriber on this node before.
    pub first_here: bool,
    /// It is the peer's first subscribed connection on this node.
    pub peer_first_here: bool,
}

/// What a local leave changed, for the cluster link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// That was the channel's last subscriber on this node.
    pub last_here: bool,
    /// That was the peer's last subscribed connection on this node.
    pub peer_last_here: bool,
}

#[derive(Debug)]
struct ChannelRoster {
    peers: HashMap<Arc<str>, PeerEntry, RandomState>,
    /// Subscribed connections per shard: where joined/left events must go.
    shard_subs: Vec<u32>,
    /// The last snapshot encoded and whom it was for (a snapshot leaves out its receiver).
    /// Reused until the roster changes, so a peer re-subscribing in a loop costs the owner
    /// a `Vec` of `Bytes` clones instead of an O(members) encode each time.
    cached: Option<(Arc<str>, Vec<Bytes>)>,
}

impl ChannelRoster {
    /// Another node holds `peer`; `joined` when that makes the peer present.
    fn add_remote(
        &mut self,
        app: AppId,
        channel: &Arc<str>,
        peer: Arc<str>,
        metadata: Option<Bytes>,
        (origin, gen): (u64, u64),
        send: &mut impl FnMut(ShardId, ShardMsg),
    ) {
        let entry = self.peers.entry(peer.clone()).or_insert(PeerEntry {
            conns: 0,
            metadata,
            nodes: Vec::new(),
        });
        let was = entry.present();
        match entry.nodes.iter_mut().find(|(o, _)| *o == origin) {
            Some(slot) => slot.1 = gen,
            None => entry.nodes.push((origin, gen)),
        }
        if !was {
            self.cached = None;
            let frame = event(channel, &peer, entry.metadata.as_deref(), true);
            broadcast(&self.shard_subs, app, channel, &peer, frame, send);
        }
    }

    /// Node `origin` no longer holds the peers `which` selects; `left` for each that is
    /// then present nowhere.
    fn drop_remote(
        &mut self,
        app: AppId,
        channel: &Arc<str>,
        which: impl Fn(&Arc<str>, &PeerEntry) -> bool,
        origin: u64,
        send: &mut impl FnMut(ShardId, ShardMsg),
    ) {
        let mut gone = Vec::new();
        for (p, e) in self.peers.iter_mut() {
            if which(p, e) && e.nodes.iter().any(|(o, _)| *o == origin) {
                e.nodes.retain(|(o, _)| *o != origin);
                if !e.present() {
                    gone.push(p.clone());
                }
            }
        }
        for peer in gone {
            self.cached = None;
            if let Some(e) = self.peers.remove(&peer) {
                let frame = event(channel, &peer, e.metadata.as_deref(), false);
                broadcast(&self.shard_subs, app, channel, &peer, frame, send);
            }
        }
    }

    /// The peers subscribed on this node.
    fn local_members(&self) -> Vec<crate::cluster::Member> {
        self.peers
            .iter()
            .filter(|(_, e)| e.conns > 0)
            .map(|(p, e)| (p.clone(), e.metadata.clone()))
            .collect()
    }

    /// The snapshot for `peer`: the cached one when it was made for `peer` and the roster
    /// has not changed since, else a fresh encode (which becomes the cached one).
    fn snapshot(&mut self, channel: &str, peer: &Arc<str>) -> Vec<Bytes> {
        if let Some((p, frames)) = &self.cached {
            if p == peer {
                return frames.clone();
            }
        }
        let frames = snapshot_frames(self, channel, peer);
        self.cached = Some((peer.clone(), frames.clone()));
        frames
    }
}

/// The rosters of every channel this shard owns.
#[derive(Debug, Default)]
pub struct Rosters {
    channels: HashMap<(AppId, Arc<str>), ChannelRoster, RandomState>,
}

impl Rosters {
    /// A connection of `peer` on `from` subscribed to `channel`. Emits the snapshot for it and,
    /// for the peer's first connection (here or on another node), a `joined` event to every
    /// shard with subscribers.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
    pub fn join(
        &mut self,
        app: AppId,
        channel: Arc<str>,
        peer: Arc<str>,
        metadata: Option<Bytes>,
        from: ConnRef,
        wants_presence: bool,
        history: Option<Box<HistoryAnswer>>,
        shards: usize,
        mut send: impl FnMut(ShardId, ShardMsg),
    ) -> Joined {
        let mut new = false;
        let roster = self
            .channels
            .entry((app, channel.clone()))
            .or_insert_with(|| {
                new = true;
                ChannelRoster {
                    peers: HashMap::default(),
                    shard_subs: vec![0; shards],
                    cached: None,
                }
            });
        // Snapshot first: it must precede any event this join causes on the same queue.
        let frames = if wants_presence {
            roster.snapshot(&channel, &peer)
        } else {
            Vec::new()
        };
        send(
            from.shard,
            ShardMsg::PresenceSnapshot {
                app,
                channel: channel.clone(),
                conn: from.conn,
                frames,
                history,
            },
        );
        roster.shard_subs[from.shard.0 as usize] += 1;
        let entry = roster.peers.entry(peer.clone()).or_insert(PeerEntry {
            conns: 0,
            metadata,
            nodes: Vec::new(),
        });
        let was = entry.present();
        entry.conns += 1;
        if !was {
            roster.cached = None;
            let frame = event(&channel, &peer, entry.metadata.as_deref(), true);
            broadcast(&roster.shard_subs, app, &channel, &peer, frame, &mut send);
        }
        Joined {
            first_here: new,
            peer_first_here: entry.conns == 1,
        }
    }

    /// An already subscribed connection subscribed again: it gets a fresh snapshot (every
    /// successful subscribe is followed by one), and nobody else hears anything.
    pub fn resnapshot(
        &mut self,
        app: AppId,
        channel: Arc<str>,
        peer: &Arc<str>,
        from: ConnRef,
        history: Option<Box<HistoryAnswer>>,
        mut send: impl FnMut(ShardId, ShardMsg),
    ) {
        let frames = match self.channels.get_mut(&(app, channel.clone())) {
            Some(roster) => roster.snapshot(&channel, peer),
            None => vec![encode::presence(&channel, &[], &[])],
        };
        send(
            from.shard,
            ShardMsg::PresenceSnapshot {
                app,
                channel,
                conn: from.conn,
                frames,
                history,
            },
        );
    }

    /// A connection of `peer` on `from` left `channel`. For the peer's last connection (here
    /// and on every other node), emits `left` to every shard that still has subscribers.
    /// With the channel's last subscriber on this node, the roster goes (the other nodes'
    /// members with it: this node stops listening to the channel).
    pub fn leave(
        &mut self,
        app: AppId,
        channel: Arc<str>,
        peer: Arc<str>,
        from: ShardId,
        mut send: impl FnMut(ShardId, ShardMsg),
    ) -> Left {
        let mut out = Left {
            last_here: false,
            peer_last_here: false,
        };
        let key = (app, channel);
        let Some(roster) = self.channels.get_mut(&key) else {
            return out;
        };
        let slot = &mut roster.shard_subs[from.0 as usize];
        *slot = slot.saturating_sub(1);
        if let Some(entry) = roster.peers.get_mut(&peer).filter(|e| e.conns > 0) {
            entry.conns -= 1;
            if entry.conns == 0 {
                out.peer_last_here = true;
                if entry.nodes.is_empty() {
                    roster.cached = None;
                    let entry = roster.peers.remove(&peer).expect("present above");
                    let frame = event(&key.1, &peer, entry.metadata.as_deref(), false);
                    broadcast(&roster.shard_subs, app, &key.1, &peer, frame, &mut send);
                }
            }
        }
        if roster.shard_subs.iter().all(|&n| n == 0) {
            self.channels.remove(&key);
            out.last_here = true;
        }
        out
    }

    /// [ext] Presence on another node (protocol §9). Returns this node's own members of the
    /// channel when the other node asked for them (and this node has subscribers there).
    pub fn remote(
        &mut self,
        r: crate::cluster::RemotePresence,
        mut send: impl FnMut(ShardId, ShardMsg),
    ) -> Option<Vec<crate::cluster::Member>> {
        use crate::cluster::RemoteChange;
        let key = (r.app, r.channel);
        // No subscriber here: this node does not keep the channel's roster (a message that
        // crossed an unsubscribe, or came through a pattern's wider subject).
        let roster = self.channels.get_mut(&key)?;
        let origin = r.origin;
        match r.change {
            RemoteChange::Member { peer, metadata, on } => {
                if on {
                    roster.add_remote(r.app, &key.1, peer, metadata, (origin, 0), &mut send);
                } else {
                    roster.drop_remote(r.app, &key.1, |p, _| **p == *peer, origin, &mut send);
                }
                None
            }
            RemoteChange::Membership {
                members,
                gen,
                last,
                ask,
            } => {
                for (peer, metadata) in members {
                    roster.add_remote(r.app, &key.1, peer, metadata, (origin, gen), &mut send);
                }
                if !last {
                    return None;
                }
                // Whoever the membership did not list under `gen` is no longer there.
                roster.drop_remote(
                    r.app,
                    &key.1,
                    |_, e| e.nodes.iter().any(|&(o, g)| o == origin && g != gen),
                    origin,
                    &mut send,
                );
                ask.then(|| roster.local_members())
            }
        }
    }

    /// [ext] Node `origin` is gone (protocol §9): its members leave every roster here.
    pub fn node_gone(&mut self, origin: u64, mut send: impl FnMut(ShardId, ShardMsg)) {
        for ((app, channel), roster) in self.channels.iter_mut() {
            roster.drop_remote(*app, channel, |_, _| true, origin, &mut send);
        }
    }

    /// [ext] This node's members of every channel it owns and has subscribers on, for the
    /// cluster link to send again.
    pub fn memberships(&self) -> Vec<(AppId, Arc<str>, Vec<crate::cluster::Member>)> {
        self.channels
            .iter()
            .map(|((app, ch), r)| (*app, ch.clone(), r.local_members()))
            .collect()
    }

    /// The roster of a channel: (peerId, metadata) pairs, for the REST peers endpoint.
    pub fn roster(&self, app: AppId, channel: &str) -> Vec<(Arc<str>, Option<Bytes>)> {
        self.channels
            .get(&(app, Arc::from(channel)))
            .map(|r| {
                r.peers
                    .iter()
                    .map(|(p, e)| (p.clone(), e.metadata.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True when `channel` has at least one subscribed connection (on any shard).
    pub fn contains(&self, app: AppId, channel: &str) -> bool {
        self.channels.contains_key(&(app, Arc::from(channel)))
    }

    /// Channels with at least one subscribed peer.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// True when this shard owns no populated channel.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

/// Payload budget of one snapshot frame. A large roster is split over several `presence`
/// frames (each with `left: []`) so that no frame exceeds what clients accept: Metered's
/// SDKs refuse inbound frames over 1 MiB, and a peer's metadata is at most 4 KiB.
pub const SNAPSHOT_FRAME_BUDGET: usize = 64 * 1024;

/// The roster of `roster` minus `peer`, as one or more `presence` frames (always at least one,
/// so an empty roster still yields a snapshot).
fn snapshot_frames(roster: &ChannelRoster, channel: &str, peer: &Arc<str>) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut chunk: Vec<PresencePeer<'_>> = Vec::new();
    let mut size = 0;
    for (p, e) in roster.peers.iter().filter(|(p, _)| *p != peer) {
        let len = p.len() + e.metadata.as_ref().map_or(0, |m| m.len()) + 32;
        if !chunk.is_empty() && size + len > SNAPSHOT_FRAME_BUDGET {
            frames.push(encode::presence(channel, &chunk, &[]));
            chunk.clear();
            size = 0;
        }
        size += len;
        chunk.push(PresencePeer {
            peer_id: p,
            metadata: e.metadata.as_deref(),
        });
    }
    if !chunk.is_empty() || frames.is_empty() {
        frames.push(encode::presence(channel, &chunk, &[]));
    }
    frames
}

/// A `joined` (or `left`) event for one peer.
fn event(channel: &str, peer: &str, metadata: Option<&[u8]>, joined: bool) -> Bytes {
    let me = [PresencePeer {
        peer_id: peer,
        metadata,
    }];
    if joined {
        encode::presence(channel, &me, &[])
    } else {
        encode::presence(channel, &[], &me)
    }
}

fn broadcast(
    shard_subs: &[u32],
    app: AppId,
    channel: &Arc<str>,
    peer: &Arc<str>,
    frame: Bytes,
    send: &mut impl FnMut(ShardId, ShardMsg),
) {
    for (s, &n) in shard_subs.iter().enumerate() {
        if n > 0 {
            send(
                ShardId(s as u16),
                ShardMsg::PresenceEvent {
                    app,
                    channel: channel.clone(),
                    peer: peer.clone(),
                    frame: frame.clone(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::ConnId;

    fn at(s: u16, c: u64) -> ConnRef {
        ConnRef {
            shard: ShardId(s),
            conn: ConnId(c),
        }
    }

    #[test]
    fn joined_and_left_once_per_peer() {
        let mut r = Rosters::default();
        let ch: Arc<str> = Arc::from("room");
        let alice: Arc<str> = Arc::from("alice");
        let mut log = vec![];
        let mut rec = |s: ShardId, m: ShardMsg| {
            log.push(match m {
                ShardMsg::PresenceSnapshot { conn, .. } => format!("snap{}@{}", conn.0, s.0),
                ShardMsg::PresenceEvent { frame, .. } => {
                    let v: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
                    format!(
                        "j{}l{}@{}",
                        v["joined"].as_array().unwrap().len(),
                        v["left"].as_array().unwrap().len(),
                        s.0
                    )
                }
                _ => unreachable!(),
            })
        };
        r.join(
            AppId(0),
            ch.clone(),
            alice.clone(),
            None,
            at(0, 1),
            true,
            None,
            2,
            &mut rec,
        );
        r.join(
            AppId(0),
            ch.clone(),
            alice.clone(),
            None,
            at(1, 2),
            true,
            None,
            2,
            &mut rec,
        );
        r.leave(AppId(0), ch.clone(), alice.clone(), ShardId(0), &mut rec);
        r.leave(AppId(0), ch.clone(), alice.clone(), ShardId(1), &mut rec);
        assert_eq!(log, ["snap1@0", "j1l0@0", "snap2@1"]);
        assert!(r.is_empty());
    }

    #[test]
    fn resnapshot_reuses_the_encoding_until_the_roster_changes() {
        let mut r = Rosters::default();
        let ch: Arc<str> = Arc::from("room");
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let snaps = std::cell::RefCell::new(Vec::<Vec<Bytes>>::new());
        let rec = |_: ShardId, m: ShardMsg| {
            if let ShardMsg::PresenceSnapshot { frames, .. } = m {
                snaps.borrow_mut().push(frames)
            }
        };
        r.join(
            AppId(0),
            ch.clone(),
            a.clone(),
            None,
            at(0, 1),
            true,
            None,
            1,
            rec,
        );
        r.resnapshot(AppId(0), ch.clone(), &a, at(0, 1), None, rec);
        r.resnapshot(AppId(0), ch.clone(), &a, at(0, 1), None, rec);
        // Same receiver, same roster: the very same bytes (shared, not re-encoded).
        let first = snaps.borrow()[1][0].as_ptr();
        assert_eq!(first, snaps.borrow()[2][0].as_ptr());
        r.join(
            AppId(0),
            ch.clone(),
            b.clone(),
            None,
            at(0, 2),
            true,
            None,
            1,
            rec,
        );
        r.resnapshot(AppId(0), ch.clone(), &a, at(0, 1), None, rec);
        let snaps = snaps.into_inner();
        let last = snaps.last().unwrap();
        assert_ne!(last[0].as_ptr(), first);
        let v: serde_json::Value = serde_json::from_slice(&last[0][2..]).unwrap();
        assert_eq!(v["joined"][0]["peerId"], "b");
    }

    #[test]
    fn large_roster_snapshot_is_split_and_complete() {
        let mut r = Rosters::default();
        let ch: Arc<str> = Arc::from("big");
        let meta = Bytes::from(format!("{{\"blob\":\"{}\"}}", "y".repeat(3900)));
        for i in 0..300u64 {
            let p: Arc<str> = Arc::from(format!("m{i:03}"));
            r.join(
                AppId(0),
                ch.clone(),
                p,
                Some(meta.clone()),
                at(0, i),
                false,
                None,
                1,
                |_, _| {},
            );
        }
        let mut frames = vec![];
        r.resnapshot(
            AppId(0),
            ch.clone(),
            &Arc::from("m000"),
            at(0, 999),
            None,
            |_, m| {
                if let ShardMsg::PresenceSnapshot { frames: f, .. } = m {
                    frames = f
                }
            },
        );
        assert!(frames.len() > 1, "{} frames", frames.len());
        let mut seen = std::collections::BTreeSet::new();
        for f in &frames {
            assert!(
                f.len() < SNAPSHOT_FRAME_BUDGET + 8192,
                "frame of {} bytes",
                f.len()
            );
            let hdr = if f[1] == 126 { 4 } else { 2 };
            let v: serde_json::Value = serde_json::from_slice(&f[hdr..]).unwrap();
            assert_eq!(v["left"], serde_json::json!([]));
            for j in v["joined"].as_array().unwrap() {
                assert!(seen.insert(j["peerId"].as_str().unwrap().to_string()));
            }
        }
        assert_eq!(seen.len(), 299);
        assert!(!seen.contains("m000"));
    }
}
