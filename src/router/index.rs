//! The per-shard subscription index: (app, channel) → the shard's local subscribers.
//!
//! Generic over the subscriber handle `H` (the shard stores its outbound queue there) so
//! the index stays a plain data structure, testable without sockets. Subscribers live in
//! a dense `Vec` for fan-out (the per-subscriber step is one slice iteration) with a
//! `ConnId → position` map for O(1) removal.

use std::{collections::HashMap, sync::Arc};

use ahash::RandomState;

use super::ConnId;
use crate::auth::AppId;

/// Presence state of one subscription.
/// The one shrink rule for tables that a crowd grew and then left: a table whose capacity is
/// over four times its length plus `floor` should shrink to twice its length plus `floor`.
/// At least half of what is left must go before the next shrink, so the rehash cost is
/// amortised over the removals.
pub(crate) fn shrink_target(capacity: usize, len: usize, floor: usize) -> Option<usize> {
    (capacity > 4 * len + floor).then_some(2 * len + floor)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceState {
    /// The connection lacks the `presence` action: it never receives presence frames.
    NoPermission,
    /// Subscribed; waiting for the owner's roster snapshot. Events are withheld until then.
    Pending,
    /// Snapshot delivered; receives joined/left events.
    Ready,
    /// Ready, and a re-subscribe asked the owner for a fresh snapshot that has not arrived
    /// yet: further re-subscribes do not ask again (the one on its way answers them all),
    /// so a re-subscribe loop costs the owner one snapshot per round trip at most.
    Refreshing,
}

/// One local subscription.
#[derive(Debug)]
pub struct Sub<H> {
    /// Subscribing connection.
    pub conn: ConnId,
    /// Its peer id (presence events about a peer are not sent to that peer).
    pub peer: Arc<str>,
    /// `includeSenderMetadata`.
    pub include_meta: bool,
    /// Presence delivery state.
    pub presence: PresenceState,
    /// [ext] A subscribe to a history channel waiting for its owner's answer (protocol
    /// §8.1): live publications are not delivered to it until then, because the owner's
    /// answer replays every one it sequenced before answering, and every later one
    /// arrives behind the answer.
    pub awaiting: bool,
    /// [ext] A queue-group member (protocol §8.2): plain fan-out skips it (the channel's
    /// owner picks one member per group instead); presence treats it like any subscriber.
    /// Sits in what was padding: `Sub` keeps its size.
    pub grouped: bool,
    /// Handle to deliver frames (the connection's outbound queue).
    pub handle: H,
}

/// All local subscribers of one channel.
#[derive(Debug)]
pub struct ChannelSubs<H> {
    subs: Vec<Sub<H>>,
    pos: HashMap<ConnId, u32, RandomState>,
}

impl<H> ChannelSubs<H> {
    /// Subscribers, for fan-out.
    pub fn iter(&self) -> std::slice::Iter<'_, Sub<H>> {
        self.subs.iter()
    }
    /// Number of local subscribers.
    pub fn len(&self) -> usize {
        self.subs.len()
    }
    /// True when no local connection is subscribed.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }
    /// The subscription of `conn`, if any.
    pub(crate) fn get(&self, conn: ConnId) -> Option<&Sub<H>> {
        self.subs.get(*self.pos.get(&conn)? as usize)
    }
    /// The subscription of `conn`, if any.
    pub(crate) fn get_mut(&mut self, conn: ConnId) -> Option<&mut Sub<H>> {
        let i = *self.pos.get(&conn)? as usize;
        self.subs.get_mut(i)
    }
}

/// The index of one shard.
#[derive(Debug)]
pub struct Index<H> {
    /// `apps[app]`: channel name → subscribers.
    apps: Vec<HashMap<Box<str>, ChannelSubs<H>, RandomState>>,
}

impl<H> Index<H> {
    /// An empty index for `apps` tenants.
    pub fn new(apps: usize) -> Self {
        Index {
            apps: (0..apps).map(|_| HashMap::default()).collect(),
        }
    }

    /// Subscribers of a channel.
    pub fn get(&self, app: AppId, channel: &str) -> Option<&ChannelSubs<H>> {
        self.apps.get(app.0 as usize)?.get(channel)
    }

    /// Mutable subscribers of a channel.
    pub(crate) fn get_mut(&mut self, app: AppId, channel: &str) -> Option<&mut ChannelSubs<H>> {
        self.apps.get_mut(app.0 as usize)?.get_mut(channel)
    }

    /// Adds or replaces the subscription of `sub.conn`. Returns true if it was new.
    pub fn insert(&mut self, app: AppId, channel: &str, sub: Sub<H>) -> bool {
        let map = &mut self.apps[app.0 as usize];
        let subs = match map.get_mut(channel) {
            Some(s) => s,
            None => map.entry(channel.into()).or_insert_with(|| ChannelSubs {
                subs: Vec::new(),
                pos: HashMap::default(),
            }),
        };
        if let Some(&i) = subs.pos.get(&sub.conn) {
            subs.subs[i as usize] = sub;
            false
        } else {
            subs.pos.insert(sub.conn, subs.subs.len() as u32);
            subs.subs.push(sub);
            true
        }
    }

    /// Removes the subscription of `conn`; drops the channel entry when it empties.
    pub(crate) fn remove(&mut self, app: AppId, channel: &str, conn: ConnId) -> Option<Sub<H>> {
        let map = self.apps.get_mut(app.0 as usize)?;
        let subs = map.get_mut(channel)?;
        let i = subs.pos.remove(&conn)? as usize;
        let removed = subs.subs.swap_remove(i);
        if let Some(moved) = subs.subs.get(i) {
            subs.pos.insert(moved.conn, i as u32);
        }
        if subs.subs.is_empty() {
            map.remove(channel);
        } else if let Some(keep) = shrink_target(subs.subs.capacity(), subs.subs.len(), 64) {
            // A crowd left this channel: give back its capacity.
            subs.subs.shrink_to(keep);
            subs.pos.shrink_to(keep);
        }
        Some(removed)
    }

    /// Shrinks the per-app channel maps that a crowd of channels grew and then left.
    pub(crate) fn shrink(&mut self) {
        for m in &mut self.apps {
            if let Some(n) = shrink_target(m.capacity(), m.len(), 1024) {
                m.shrink_to(n);
            }
        }
    }

    /// Number of channels with at least one local subscriber, all apps.
    pub fn channel_count(&self) -> usize {
        self.apps.iter().map(|m| m.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn sub(c: u64) -> Sub<()> {
        Sub {
            conn: ConnId(c),
            peer: Arc::from("p"),
            include_meta: false,
            presence: PresenceState::Pending,
            awaiting: false,
            grouped: false,
            handle: (),
        }
    }

    /// The `grouped` flag (queue groups) sits in what was padding: fan-out walks `Sub`s, so
    /// growing them costs cache lines per publication.
    #[test]
    fn sub_stays_five_words() {
        assert_eq!(std::mem::size_of::<Sub<std::rc::Rc<()>>>(), 40);
    }

    proptest! {
        /// Any sequence of subscribe/unsubscribe agrees with a plain map-of-sets model.
        #[test]
        fn matches_reference_model(ops in proptest::collection::vec((any::<bool>(), 0u8..4, 0u64..6), 0..200)) {
            let mut idx: Index<()> = Index::new(2);
            let mut model: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
            for (add, ch, conn) in ops {
                let ch = format!("c{ch}");
                let app = AppId((conn % 2) as u16);
                let key = format!("{}/{ch}", app.0);
                if add {
                    let new = idx.insert(app, &ch, sub(conn));
                    prop_assert_eq!(new, model.entry(key).or_default().insert(conn));
                } else {
                    let removed = idx.remove(app, &ch, ConnId(conn)).is_some();
                    let m = model.get_mut(&key).map(|s| s.remove(&conn)).unwrap_or(false);
                    model.retain(|_, s| !s.is_empty());
                    prop_assert_eq!(removed, m);
                }
            }
            for app in 0..2u16 {
                for ch in 0..4 {
                    let ch = format!("c{ch}");
                    let got: BTreeSet<u64> = idx.get(AppId(app), &ch).map(|s| s.iter().map(|s| s.conn.0).collect()).unwrap_or_default();
                    let want = model.get(&format!("{app}/{ch}")).cloned().unwrap_or_default();
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(idx.channel_count(), model.len());
        }
    }
}
