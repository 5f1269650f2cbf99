//! Delivery: writing a publication or a direct message to this shard's own connections,
//! and routing a direct message to the shards that hold its target.
//!
//! Per recipient: one reference-count increment and a queue push; no allocation beyond
//! the queue's own growth, no encoding (frames are encoded once, by whoever published).
//! Wildcard subscriptions (protocol §8.3) are matched here, per shard, in the shard's
//! pattern trie (`router/patterns.rs`), only when the shard has any.

use std::{rc::Rc, sync::Arc};

use super::{handle::ConnHandle, outbound::Delivery, Shard};
use crate::{
    metrics::ShardCounters,
    router::{mesh::Source, Direct, Publication, ShardId, ShardMsg},
};

/// What [`Shard::send_direct`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DirectSent {
    /// Delivered locally and/or queued for the shards holding the peer.
    Sent,
    /// The peer has no connection (other than the sender's) anywhere: `peer_not_found`.
    NotFound,
    /// A shard holding the peer has its queue over `max_cross_shard_bytes`: nothing sent.
    Busy,
}

impl Shard {
    /// Writes a publication's frame to every local subscriber except its origin: the
    /// channel's exact subscribers, then (protocol §8.3) the connections with a matching
    /// pattern subscription, each connection once. [ext] At the channel's owner, one member
    /// of each queue group is picked first ([`Shard::deliver_groups`], protocol §8.2).
    pub(crate) fn deliver_publication(&self, p: &Arc<Publication>) {
        self.deliver_groups(p);
        let st = self.state.borrow();
        let skip = p.origin.filter(|o| o.shard == self.id).map(|o| o.conn);
        let mut n = 0;
        if st.patterns.is_empty() {
            // No pattern subscription on this shard: this branch is all the extension costs.
            let Some(subs) = st.index.get(p.app, &p.channel) else {
                return;
            };
            // Group members are picked at the owner instead: one flag test per subscriber
            // is all queue groups add to plain fan-out (no allocation per subscriber).
            for sub in subs.iter() {
                // `awaiting` (history, §8.1): a resuming subscriber waits for its replay.
                if Some(sub.conn) != skip
                    && !sub.awaiting
                    && !sub.grouped
                    && sub.handle.send(p.frame_for(sub.include_meta)) == Delivery::Queued
                {
                    n += 1;
                }
            }
        } else {
            // A connection may match through its exact subscription and several patterns:
            // every delivery stamps the connection with this publication's sequence number
            // and a stamped connection is skipped (no per-publication set is built). The
            // first subscription to match decides `includeSenderMetadata`: the exact one,
            // then the patterns in trie order.
            let seq = self.publication_seq.get() + 1;
            self.publication_seq.set(seq);
            let mut deliver = |conn, handle: &Rc<ConnHandle>, include_meta| {
                if Some(conn) != skip
                    && handle.first_delivery(seq)
                    && handle.send(p.frame_for(include_meta)) == Delivery::Queued
                {
                    n += 1;
                }
            };
            if let Some(subs) = st.index.get(p.app, &p.channel) {
                for sub in subs.iter().filter(|s| !s.awaiting && !s.grouped) {
                    deliver(sub.conn, &sub.handle, sub.include_meta);
                }
            }
            st.patterns.for_each_match(p.app, &p.channel, |m| {
                deliver(m.conn, &m.handle, m.include_meta)
            });
        }
        let c = self.counters();
        ShardCounters::add(&c.deliveries, n);
        if let Some(a) = c.app_deliveries.get(p.app.0 as usize) {
            ShardCounters::add(a, n);
        }
    }

    /// Writes a direct message to every local connection of its target except its origin.
    pub(crate) fn deliver_direct(&self, d: &Direct) {
        let st = self.state.borrow();
        let Some(conns) = st.local_peers[d.app.0 as usize].get(&*d.to) else {
            return;
        };
        let skip = d.origin.filter(|o| o.shard == self.id).map(|o| o.conn);
        for c in conns {
            if Some(*c) != skip {
                if let Some(e) = st.conns.get(c) {
                    e.handle.send(&d.frame);
                }
            }
        }
    }

    /// Routes a direct message to every connection of its target (but the sender's).
    pub(crate) fn send_direct(&self, d: Arc<Direct>) -> DirectSent {
        let remote = {
            let st = self.state.borrow();
            let app = d.app.0 as usize;
            let local = st.local_peers[app]
                .get(&*d.to)
                .map(|v| v.iter().any(|c| Some(*c) != d.origin.map(|o| o.conn)))
                .unwrap_or(false);
            let remote =
                st.directory[app].get(&*d.to).copied().unwrap_or(0) & !(1u128 << self.id.0);
            if !local && remote == 0 {
                return DirectSent::NotFound;
            }
            remote
        };
        let targets = || (0..self.shards() as u16).filter(move |s| remote & (1u128 << s) != 0);
        if !targets().all(|s| self.broker.mesh.has_room(ShardId(s))) {
            return DirectSent::Busy;
        }
        self.deliver_direct(&d);
        for s in targets() {
            self.broker.mesh.push(
                Source::Shard(self.id),
                ShardId(s),
                ShardMsg::Direct(d.clone()),
            );
        }
        DirectSent::Sent
    }
}
