//! [ext] Queue groups (protocol §8.2), the shard side.
//!
//! - A member's own shard keeps, per connection, which group it joined on which channel
//!   ([`Memberships`]), and sends `GroupJoin` / `GroupLeave` to the channel's owner, which
//!   keeps the authoritative table (`router/groups.rs`). The member's subscription is in
//!   the index like any other (so presence treats it as any subscriber), flagged
//!   `grouped` so that plain fan-out skips it.
//! - The owner picks: every publication reaches every shard exactly once, so when it
//!   reaches the channel's owner ([`Shard::deliver_groups`], called by
//!   `deliver_publication`), the owner picks the next member of each group in round robin
//!   (never the publishing connection) and sends it a `GroupDeliver`, through the mesh or,
//!   for a member of its own, its local queue.
//! - The member's shard delivers if the connection is still a member of that group on that
//!   channel and its queue takes the frame; otherwise (it left, or is closing) it sends a
//!   `GroupBounce` back to the owner, which picks again. The leave travelled the same FIFO
//!   queue before the bounce, so the owner's table no longer has the member. A publication
//!   is dropped only when its group has no eligible member left or after [`MAX_PICKS`]
//!   picks, and counted (`ringcast_group_undelivered_total`).
//!
//! Mesh bound: a `GroupDeliver` push is never refused by `max_cross_shard_bytes` (it is
//! counted in the queued bytes like a publication). Refusing it would lose a publication
//! that was already accepted (and acknowledged) after passing the bound check at fan-out;
//! it is at most one push per publication per group (plus bounces), so the overshoot is
//! bounded by the publications in flight.
//!
//! Cost when no group exists on the channel: at the owner one hash lookup per publication,
//! elsewhere one `is_empty()` test; for plain fan-out one flag test per subscriber.

use std::{collections::HashMap, sync::atomic::Ordering, sync::Arc};

use ahash::RandomState;

use super::{outbound::Delivery, Shard};
use crate::{
    auth::AppId,
    metrics::ShardCounters,
    router::{owner_of, ConnId, ConnRef, Publication, ShardMsg},
};

/// Picks of one publication for one group before it is given up (and counted): bounces
/// only happen when members leave or close, so this bounds a pathological loop, not a
/// normal path.
pub(crate) const MAX_PICKS: u8 = 16;

/// (channel, group) of one membership.
type Membership = (Arc<str>, Arc<str>);

/// The group memberships of this shard's connections: connection → (channel, group)
/// pairs. Only connections that joined a group have an entry (at most
/// `max_channels_per_conn` pairs each, scanned linearly).
#[derive(Debug, Default)]
pub(crate) struct Memberships {
    by_conn: HashMap<ConnId, Vec<Membership>, RandomState>,
    len: usize,
}

impl Memberships {
    /// The group `conn` joined on `channel`, if any.
    pub(crate) fn group_of(&self, conn: ConnId, channel: &str) -> Option<&Arc<str>> {
        self.by_conn
            .get(&conn)?
            .iter()
            .find(|(c, _)| &**c == channel)
            .map(|(_, g)| g)
    }

    fn insert(&mut self, conn: ConnId, channel: Arc<str>, group: Arc<str>) {
        self.by_conn.entry(conn).or_default().push((channel, group));
        self.len += 1;
    }

    fn remove(&mut self, conn: ConnId, channel: &str) -> Option<Arc<str>> {
        let list = self.by_conn.get_mut(&conn)?;
        let i = list.iter().position(|(c, _)| &**c == channel)?;
        let (_, g) = list.swap_remove(i);
        if list.is_empty() {
            self.by_conn.remove(&conn);
        }
        self.len -= 1;
        Some(g)
    }
}

impl Shard {
    /// The group `conn` (a local connection) joined on `channel`, if any.
    pub(crate) fn group_of(&self, conn: ConnId, channel: &str) -> Option<Arc<str>> {
        self.state
            .borrow()
            .memberships
            .group_of(conn, channel)
            .cloned()
    }

    /// Records that local `conn` joined `group` on `channel` and tells the owner. The
    /// caller adds the (grouped) subscription itself.
    pub(crate) fn join_group(&self, app: AppId, channel: Arc<str>, group: Arc<str>, conn: ConnId) {
        {
            let mut st = self.state.borrow_mut();
            st.memberships.insert(conn, channel.clone(), group.clone());
            self.counters()
                .group_members
                .store(st.memberships.len as u64, Ordering::Relaxed);
        }
        if let Some(link) = &self.broker.cluster {
            link.group_interest(app, &channel, &group, true); // [ext] protocol §9
        }
        self.route(
            owner_of(app, &channel, self.shards()),
            ShardMsg::GroupJoin {
                app,
                channel,
                group,
                conn: self.conn_ref(conn),
            },
        );
    }

    /// Local `conn` left `channel` (unsubscribe or disconnect): if it was a group member,
    /// forgets it and tells the owner.
    pub(crate) fn leave_group(&self, app: AppId, channel: &Arc<str>, conn: ConnId) {
        let group = {
            let mut st = self.state.borrow_mut();
            let g = st.memberships.remove(conn, channel);
            self.counters()
                .group_members
                .store(st.memberships.len as u64, Ordering::Relaxed);
            g
        };
        if let Some(group) = group {
            if let Some(link) = &self.broker.cluster {
                link.group_interest(app, channel, &group, false); // [ext] protocol §9
            }
            self.route(
                owner_of(app, channel, self.shards()),
                ShardMsg::GroupLeave {
                    app,
                    channel: channel.clone(),
                    group,
                    conn: self.conn_ref(conn),
                },
            );
        }
    }

    /// At the channel's owner: picks one member per group of the publication's channel and
    /// sends it the publication (on a single node, or in a cluster while NATS is away). Elsewhere (and on the owner of a channel without groups)
    /// this is an `is_empty()` test or one hash lookup.
    pub(crate) fn deliver_groups(&self, p: &Arc<Publication>) {
        let mut st = self.state.borrow_mut();
        if st.groups.is_empty() {
            return;
        }
        // [ext] protocol §9: in a cluster NATS picks the node (its queue subscriptions),
        // and the publication comes back here as a `GroupBounce` if this node is picked.
        if self
            .broker
            .cluster
            .as_ref()
            .is_some_and(|l| l.picks_groups())
        {
            return;
        }
        let mut undelivered = 0;
        st.groups
            .pick_each(p.app, &p.channel, p.origin, |group, member| match member {
                Some(m) => self.send_to_member(p.clone(), group.clone(), m, 1),
                None => undelivered += 1,
            });
        drop(st);
        if undelivered > 0 {
            ShardCounters::add(&self.counters().group_undelivered, undelivered);
        }
    }

    /// Sends a picked publication to member `m`: its shard's queue, or this shard's local
    /// queue (delivered by [`Shard::pump_local`] in order, after the state borrow is gone).
    fn send_to_member(
        &self,
        publication: Arc<Publication>,
        group: Arc<str>,
        m: ConnRef,
        tries: u8,
    ) {
        self.route(
            m.shard,
            ShardMsg::GroupDeliver {
                publication,
                group,
                conn: m.conn,
                tries,
            },
        );
    }

    /// Handles the group messages of the mesh (`GroupJoin`/`GroupLeave`/`GroupBounce` at
    /// the owner, `GroupDeliver` at the member's shard).
    pub(crate) fn handle_group_msg(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::GroupJoin {
                app,
                channel,
                group,
                conn,
            } => {
                self.state
                    .borrow_mut()
                    .groups
                    .join(app, channel, group, conn);
            }
            ShardMsg::GroupLeave {
                app,
                channel,
                group,
                conn,
            } => {
                self.state
                    .borrow_mut()
                    .groups
                    .leave(app, &channel, &group, conn);
            }
            ShardMsg::GroupDeliver {
                publication,
                group,
                conn,
                tries,
            } => self.deliver_to_member(publication, group, conn, tries),
            ShardMsg::GroupBounce {
                publication: p,
                group,
                tries,
            } => {
                let picked = if tries < MAX_PICKS {
                    self.state
                        .borrow_mut()
                        .groups
                        .pick(p.app, &p.channel, &group, p.origin)
                } else {
                    None
                };
                match picked {
                    Some(m) => self.send_to_member(p, group, m, tries + 1),
                    None => ShardCounters::add(&self.counters().group_undelivered, 1),
                }
            }
            _ => {}
        }
    }

    /// At the member's shard: delivers the publication if `conn` is still a member of
    /// `group` on its channel and takes the frame; else bounces it to the owner.
    fn deliver_to_member(&self, p: Arc<Publication>, group: Arc<str>, conn: ConnId, tries: u8) {
        let delivered = {
            let st = self.state.borrow();
            st.memberships.group_of(conn, &p.channel) == Some(&group)
                && st
                    .index
                    .get(p.app, &p.channel)
                    .and_then(|s| s.get(conn))
                    .is_some_and(|sub| {
                        sub.handle.send(p.frame_for(sub.include_meta)) == Delivery::Queued
                    })
        };
        if delivered {
            let c = self.counters();
            ShardCounters::add(&c.deliveries, 1);
            if let Some(a) = c.app_deliveries.get(p.app.0 as usize) {
                ShardCounters::add(a, 1);
            }
        } else {
            let owner = owner_of(p.app, &p.channel, self.shards());
            self.route(
                owner,
                ShardMsg::GroupBounce {
                    publication: p,
                    group,
                    tries,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memberships_track_pairs_per_connection() {
        let mut m = Memberships::default();
        m.insert(ConnId(1), Arc::from("a"), Arc::from("g"));
        m.insert(ConnId(1), Arc::from("b"), Arc::from("h"));
        assert_eq!(m.group_of(ConnId(1), "b").map(|g| &**g), Some("h"));
        assert_eq!(m.group_of(ConnId(2), "a"), None);
        assert_eq!(m.remove(ConnId(1), "a").as_deref(), Some("g"));
        assert_eq!(m.remove(ConnId(1), "a"), None);
        assert_eq!(m.len, 1);
        m.remove(ConnId(1), "b");
        assert!(m.by_conn.is_empty());
    }
}
