//! [ext] Queue groups (protocol §8.2), the owner side: for each (app, channel) this shard
//! owns ([`super::owner_of`]), its groups, each with its members (connections on any
//! shard) in join order and a round-robin cursor.
//!
//! Membership is authoritative here, like presence: a member's shard sends `GroupJoin` /
//! `GroupLeave` to the owner through the same FIFO queue it uses for everything else, so a
//! `GroupBounce` (the chosen member was gone when the publication reached its shard)
//! always arrives after the leave that explains it, and the re-pick cannot choose the same
//! connection again.
//!
//! Spread: round robin [decided]. Members keep their join order (removal preserves it) and
//! the cursor walks them, so over any run of `n` picks without membership changes (and
//! without a skipped publisher) each of the `n` members is picked exactly once. A
//! member that joins is appended at the end of the rotation. Joins and leaves are O(members)
//! (a linear scan and an order-preserving removal), a pick is O(1) unless it has to skip
//! the publishing connection.
//!
//! Data structure only: no sockets, no runtime.

use std::{collections::HashMap, sync::Arc};

use ahash::RandomState;

use super::{index::shrink_target, ConnRef};
use crate::auth::AppId;

/// One group of one channel.
#[derive(Debug)]
struct Group {
    name: Arc<str>,
    /// Members in join order (the rotation order).
    members: Vec<ConnRef>,
    /// Index of the member the next pick starts at (`< members.len()`, or 0 when empty).
    cursor: usize,
}

impl Group {
    /// The next member in rotation other than `skip`; advances the cursor past it.
    fn pick(&mut self, skip: Option<ConnRef>) -> Option<ConnRef> {
        let n = self.members.len();
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let m = self.members[i];
            if Some(m) != skip {
                self.cursor = (i + 1) % n;
                return Some(m);
            }
        }
        None
    }

    /// Removes `conn`, keeping the others' order and the cursor on the same next member.
    fn remove(&mut self, conn: ConnRef) -> bool {
        let Some(i) = self.members.iter().position(|m| *m == conn) else {
            return false;
        };
        self.members.remove(i);
        if i < self.cursor {
            self.cursor -= 1;
        }
        if self.cursor >= self.members.len() {
            self.cursor = 0;
        }
        if let Some(keep) = shrink_target(self.members.capacity(), self.members.len(), 16) {
            self.members.shrink_to(keep);
        }
        true
    }
}

/// The groups of every channel this shard owns.
#[derive(Debug, Default)]
pub struct GroupTable {
    /// (app, channel) → its groups (few per channel: a linear scan by name).
    channels: HashMap<(AppId, Arc<str>), Vec<Group>, RandomState>,
    /// Members over all groups of all channels here.
    members: usize,
}

impl GroupTable {
    /// True when this shard owns no group at all: the publication path's fast exit.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Members over all groups of all channels this shard owns.
    pub fn members(&self) -> usize {
        self.members
    }

    /// Adds `conn` to `group` of `channel`; false (nothing changes) when it already is one.
    pub fn join(&mut self, app: AppId, channel: Arc<str>, group: Arc<str>, conn: ConnRef) -> bool {
        let groups = self.channels.entry((app, channel)).or_default();
        let g = match groups.iter().position(|g| g.name == group) {
            Some(i) => &mut groups[i],
            None => {
                groups.push(Group {
                    name: group,
                    members: Vec::new(),
                    cursor: 0,
                });
                groups.last_mut().expect("just pushed")
            }
        };
        if g.members.contains(&conn) {
            return false;
        }
        g.members.push(conn);
        self.members += 1;
        true
    }

    /// Removes `conn` from `group` of `channel`; drops emptied groups and channels. False
    /// when it was not a member.
    pub fn leave(&mut self, app: AppId, channel: &Arc<str>, group: &str, conn: ConnRef) -> bool {
        let key = (app, channel.clone());
        let Some(groups) = self.channels.get_mut(&key) else {
            return false;
        };
        let Some(gi) = groups.iter().position(|g| &*g.name == group) else {
            return false;
        };
        if !groups[gi].remove(conn) {
            return false;
        }
        self.members -= 1;
        if groups[gi].members.is_empty() {
            groups.swap_remove(gi);
            if groups.is_empty() {
                self.channels.remove(&key);
                if let Some(n) = shrink_target(self.channels.capacity(), self.channels.len(), 64) {
                    self.channels.shrink_to(n);
                }
            }
        }
        true
    }

    /// For each group of `channel`, the next member in rotation other than `skip` (the
    /// publishing connection), or `None` when the group has no other member: `f(group,
    /// member)`. Nothing is called when the channel has no group here.
    pub fn pick_each(
        &mut self,
        app: AppId,
        channel: &Arc<str>,
        skip: Option<ConnRef>,
        mut f: impl FnMut(&Arc<str>, Option<ConnRef>),
    ) {
        if let Some(groups) = self.channels.get_mut(&(app, channel.clone())) {
            for g in groups {
                let m = g.pick(skip);
                f(&g.name, m);
            }
        }
    }

    /// The next member of one group in rotation other than `skip` (a re-pick after a
    /// bounce); `None` when the group has no other member (or no longer exists).
    pub fn pick(
        &mut self,
        app: AppId,
        channel: &Arc<str>,
        group: &str,
        skip: Option<ConnRef>,
    ) -> Option<ConnRef> {
        self.channels
            .get_mut(&(app, channel.clone()))?
            .iter_mut()
            .find(|g| &*g.name == group)?
            .pick(skip)
    }

    /// Members of one group, in rotation order (tests and diagnostics).
    #[cfg(test)]
    fn members_of(&self, app: AppId, channel: &str, group: &str) -> Vec<ConnRef> {
        self.channels
            .get(&(app, Arc::from(channel)))
            .and_then(|gs| gs.iter().find(|g| &*g.name == group))
            .map(|g| g.members.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{ConnId, ShardId};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn c(shard: u16, conn: u64) -> ConnRef {
        ConnRef {
            shard: ShardId(shard),
            conn: ConnId(conn),
        }
    }

    fn ch(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn round_robin_is_exact_over_a_cycle() {
        let mut t = GroupTable::default();
        let room = ch("room");
        for i in 0..5 {
            assert!(t.join(AppId(0), room.clone(), ch("g"), c((i % 2) as u16, i)));
        }
        assert!(
            !t.join(AppId(0), room.clone(), ch("g"), c(0, 0)),
            "idempotent"
        );
        let mut counts = BTreeMap::new();
        for _ in 0..500 {
            let m = t.pick(AppId(0), &room, "g", None).unwrap();
            *counts.entry(m.conn.0).or_insert(0) += 1;
        }
        assert!(counts.values().all(|&n| n == 100), "{counts:?}");
        assert_eq!(t.members(), 5);
    }

    #[test]
    fn the_publisher_is_skipped_and_a_lone_publisher_gets_none() {
        let mut t = GroupTable::default();
        let room = ch("room");
        t.join(AppId(0), room.clone(), ch("g"), c(0, 1));
        assert_eq!(t.pick(AppId(0), &room, "g", Some(c(0, 1))), None);
        t.join(AppId(0), room.clone(), ch("g"), c(1, 2));
        for _ in 0..4 {
            assert_eq!(t.pick(AppId(0), &room, "g", Some(c(0, 1))), Some(c(1, 2)));
        }
    }

    #[test]
    fn each_group_gets_one_pick() {
        let mut t = GroupTable::default();
        let room = ch("room");
        t.join(AppId(0), room.clone(), ch("a"), c(0, 1));
        t.join(AppId(0), room.clone(), ch("b"), c(1, 2));
        t.join(AppId(1), room.clone(), ch("a"), c(1, 3));
        let mut got = Vec::new();
        t.pick_each(AppId(0), &room, None, |g, m| got.push((g.to_string(), m)));
        got.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            got,
            [("a".into(), Some(c(0, 1))), ("b".into(), Some(c(1, 2)))]
        );
        let mut n = 0;
        t.pick_each(AppId(0), &ch("other"), None, |_, _| n += 1);
        assert_eq!(n, 0);
    }

    #[test]
    fn leaving_drops_empty_groups_and_channels() {
        let mut t = GroupTable::default();
        let room = ch("room");
        t.join(AppId(0), room.clone(), ch("g"), c(0, 1));
        assert!(!t.leave(AppId(0), &room, "g", c(0, 2)));
        assert!(!t.leave(AppId(0), &room, "h", c(0, 1)));
        assert!(t.leave(AppId(0), &room, "g", c(0, 1)));
        assert!(t.is_empty());
        assert_eq!(t.members(), 0);
        assert_eq!(t.pick(AppId(0), &room, "g", None), None);
    }

    #[test]
    fn removal_keeps_the_rotation() {
        let mut t = GroupTable::default();
        let room = ch("room");
        for i in 0..4 {
            t.join(AppId(0), room.clone(), ch("g"), c(0, i));
        }
        assert_eq!(t.pick(AppId(0), &room, "g", None), Some(c(0, 0)));
        assert_eq!(t.pick(AppId(0), &room, "g", None), Some(c(0, 1)));
        // Next is 2; removing an earlier member does not skip it.
        t.leave(AppId(0), &room, "g", c(0, 0));
        assert_eq!(t.pick(AppId(0), &room, "g", None), Some(c(0, 2)));
        // Next is 3; removing it moves on to the next one (wrapping).
        t.leave(AppId(0), &room, "g", c(0, 3));
        assert_eq!(t.pick(AppId(0), &room, "g", None), Some(c(0, 1)));
        assert_eq!(
            t.members_of(AppId(0), "room", "g"),
            [c(0, 1), c(0, 2)],
            "join order kept"
        );
    }

    proptest! {
        /// Any interleaving of joins, leaves and picks: a pick returns a current member,
        /// never the skipped one, `None` only when no other member exists; and between
        /// membership changes, picks visit every member once per cycle (counts differ
        /// by at most one).
        #[test]
        fn picks_are_members_and_even(ops in proptest::collection::vec((0u8..4, 0u64..8, 1usize..30), 0..120)) {
            let mut t = GroupTable::default();
            let room = ch("room");
            let mut model: Vec<ConnRef> = Vec::new();
            for (op, id, picks) in ops {
                let m = c((id % 2) as u16, id);
                match op {
                    0 | 1 => {
                        let new = t.join(AppId(0), room.clone(), ch("g"), m);
                        prop_assert_eq!(new, !model.contains(&m));
                        if new { model.push(m); }
                    }
                    2 => {
                        let had = model.contains(&m);
                        prop_assert_eq!(t.leave(AppId(0), &room, "g", m), had);
                        model.retain(|x| *x != m);
                    }
                    _ => {
                        let skip = (id % 3 == 0).then_some(m);
                        let eligible: Vec<_> = model.iter().copied().filter(|x| Some(*x) != skip).collect();
                        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
                        for _ in 0..picks {
                            let got = t.pick(AppId(0), &room, "g", skip);
                            match got {
                                None => prop_assert!(eligible.is_empty()),
                                Some(g) => {
                                    prop_assert!(eligible.contains(&g));
                                    *counts.entry(g.conn.0).or_default() += 1;
                                }
                            }
                        }
                        if !eligible.is_empty() {
                            let lo = picks / eligible.len();
                            for e in &eligible {
                                let n = counts.get(&e.conn.0).copied().unwrap_or(0);
                                prop_assert!(n == lo || n == lo + 1, "{} picks of {} members: {:?}", picks, eligible.len(), counts);
                            }
                        }
                    }
                }
                prop_assert_eq!(t.members(), model.len());
                prop_assert_eq!(t.members_of(AppId(0), "room", "g"), model.clone());
            }
        }
    }
}
