//! [ext] Requests in flight (protocol.md §8.4), kept by the requester's shard.
//!
//! The requester's shard is the one place that decides a request's fate: which responder
//! connection took it, the order of its replies (`seq`), its deadline, its cancellation.
//! Responders' replies travel to it: the `replyTo` handed to responders names the shard and
//! the request (`"<shard>.<n>"`), and a reply is accepted only from a connection of the
//! target peer.
//!
//! One table per shard, a per-connection index (for cancel, the per-connection bound and
//! disconnects), a per-peer index of the requests nobody took yet (to fail them when the
//! peer's last connection goes), and one deadline heap per shard: an idle connection costs
//! nothing here, and a finished request leaves only its heap entry until that is due (the
//! heap is rebuilt when stale entries outnumber live ones).
//!
//! The responder side keeps, per connection, the requests it took and has not finished, so
//! that its disconnect fails them with `responder_gone`.
//!
//! Pure data structure: no sockets, no runtime.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::Arc,
    time::Instant,
};

use ahash::RandomState;
use slab::Slab;

use crate::{
    auth::AppId,
    router::{ConnId, ConnRef, NodeConn, ShardId},
};

/// One request in flight: 72 bytes (plus its `requestId`'s allocation), kept small because
/// a shard may hold many thousands (docs/protocol.md: about 200 bytes per request in all).
/// Its deadline lives only in the deadline heap.
#[derive(Debug)]
pub struct InFlight {
    /// The requesting connection (on this shard).
    pub conn: ConnId,
    /// The responder connection that replied first, packed (shard << 48 | connection); 0
    /// while nobody took it (connection ids start at 1). See [`InFlight::taken`].
    taken: u64,
    /// Its number: the generation (high 32 bits) and its slot in the slab (low 32 bits), so
    /// that a stale number (a late reply, a deadline already passed) never finds the request
    /// that reuses the slot.
    n: u64,
    /// [ext] The node of the connection that took it (0: this node or nobody yet).
    taken_node: u64,
    /// `seq` of the last reply delivered (0: none yet).
    pub seq: u32,
    /// [ext] Also delivered to other nodes (protocol §9): cancels go there too, and the
    /// peer's last connection here leaving does not end it.
    pub remote: bool,
    /// Tenant.
    pub app: AppId,
    /// Its `requestId`.
    pub request_id: Box<str>,
    /// The target peer.
    pub peer: Arc<str>,
}

impl InFlight {
    /// The responder connection that replied first, once one has.
    pub fn taken(&self) -> Option<NodeConn> {
        (self.taken != 0).then_some(NodeConn {
            node: self.taken_node,
            conn: ConnRef {
                shard: ShardId((self.taken >> 48) as u16),
                conn: ConnId(self.taken & ((1 << 48) - 1)),
            },
        })
    }
}

/// Packs a connection for [`InFlight::taken`] (a shard's connection ids stay below 2^48:
/// one new connection per nanosecond would take three days to get there).
fn pack(c: ConnRef) -> u64 {
    (u64::from(c.shard.0) << 48) | (c.conn.0 & ((1 << 48) - 1))
}

/// The requests of one shard.
#[derive(Debug)]
pub struct Requests {
    shard: ShardId,
    next: u64,
    /// The requests, by slot. A slab, not a hash map keyed by number: its entries are dense,
    /// so the pages it touches are `64 B × high water` (a hash table's buckets are scattered
    /// over a table up to twice the entries, and every page of it is touched). Its capacity
    /// stays at the shard's high water, which `max_requests_in_flight` × connections bounds.
    table: Slab<InFlight>,
    by_conn: HashMap<ConnId, Vec<u64>, RandomState>,
    untaken_by_peer: HashMap<(AppId, Arc<str>), Vec<u64>, RandomState>,
    /// (deadline in ms since `started`, request). Entries of finished requests stay until
    /// they come up or the heap holds twice the live requests plus 1,024.
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    started: Instant,
    /// Responder side: per local connection, the requests it took.
    took: HashMap<ConnId, Vec<Held>, RandomState>,
}

/// A request a responder connection holds: the requester's node (0: this one), shard and
/// request number.
pub type Held = (u64, ShardId, u64);

/// `replyTo` of request `n` of shard `shard`: `"<shard>.<n>"`, and in a cluster (protocol §9)
/// `"<shard>.<n>.<node>"` with the requester's node incarnation in 16 hex digits, so that a
/// responder on any node knows where its reply goes.
pub fn reply_to(shard: ShardId, n: u64, node: u64) -> String {
    if node == 0 {
        format!("{}.{}", shard.0, n)
    } else {
        format!("{}.{}.{:016x}", shard.0, n, node)
    }
}

/// The node (0 when not named), shard and request a `replyTo` names; `None` for anything
/// this broker did not make.
pub fn parse_reply_to(x: &str) -> Option<Held> {
    let mut parts = x.split('.');
    let (s, n, node) = (parts.next()?, parts.next()?, parts.next());
    if parts.next().is_some() {
        return None;
    }
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(s) || !digits(n) {
        return None;
    }
    let node = match node {
        None => 0,
        Some(h) if h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(h, 16).ok()?
        }
        Some(_) => return None,
    };
    Some((node, ShardId(s.parse().ok()?), n.parse().ok()?))
}

fn remove_from<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Vec<u64>, RandomState>,
    key: &K,
    n: u64,
) {
    if let Some(v) = map.get_mut(key) {
        v.retain(|x| *x != n);
        if v.is_empty() {
            map.remove(key);
        }
    }
}

impl Requests {
    /// An empty table for `shard`.
    pub fn new(shard: ShardId) -> Requests {
        Requests {
            shard,
            next: 1,
            table: Slab::new(),
            by_conn: HashMap::default(),
            untaken_by_peer: HashMap::default(),
            deadlines: BinaryHeap::new(),
            started: Instant::now(),
            took: HashMap::default(),
        }
    }

    /// `t` in ms since the table was created, rounded up (a deadline never fires early).
    fn ms(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.started);
        (d.as_nanos().div_ceil(1_000_000)) as u64
    }

    /// The instant `ms` after the table was created.
    fn at(&self, ms: u64) -> Instant {
        self.started + std::time::Duration::from_millis(ms)
    }

    /// Requests in flight on this shard.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Requests in flight of `conn`.
    pub fn count(&self, conn: ConnId) -> usize {
        self.by_conn.get(&conn).map_or(0, Vec::len)
    }

    /// The request of `conn` with this `requestId`.
    pub fn find(&self, conn: ConnId, request_id: &str) -> Option<u64> {
        self.by_conn
            .get(&conn)?
            .iter()
            .copied()
            .find(|n| self.get(*n).is_some_and(|r| *r.request_id == *request_id))
    }

    /// Records a new request; returns its number (for `replyTo`).
    pub fn insert(
        &mut self,
        conn: ConnId,
        request_id: &str,
        app: AppId,
        peer: Arc<str>,
        deadline: Instant,
    ) -> u64 {
        let deadline_ms = self.ms(deadline);
        let entry = self.table.vacant_entry();
        // Slots stay far below 2^32: `max_requests_in_flight` x connections bounds them.
        let n = (self.next << 32) | entry.key() as u64;
        self.next = (self.next + 1) & 0xffff_ffff;
        self.by_conn.entry(conn).or_default().push(n);
        self.untaken_by_peer
            .entry((app, peer.clone()))
            .or_default()
            .push(n);
        self.deadlines.push(Reverse((deadline_ms, n)));
        entry.insert(InFlight {
            conn,
            taken: 0,
            taken_node: 0,
            n,
            seq: 0,
            remote: false,
            app,
            request_id: request_id.into(),
            peer,
        });
        n
    }

    /// The request numbered `n`.
    fn get(&self, n: u64) -> Option<&InFlight> {
        self.table
            .get((n & 0xffff_ffff) as usize)
            .filter(|r| r.n == n)
    }

    /// The request numbered `n`.
    pub fn get_mut(&mut self, n: u64) -> Option<&mut InFlight> {
        self.table
            .get_mut((n & 0xffff_ffff) as usize)
            .filter(|r| r.n == n)
    }

    /// Marks request `n` taken by `by` (it is no longer waiting for any responder).
    pub fn take(&mut self, n: u64, by: NodeConn) {
        if let Some(r) = self.get_mut(n) {
            if r.taken == 0 {
                r.taken = pack(by.conn);
                r.taken_node = by.node;
                let key = (r.app, r.peer.clone());
                remove_from(&mut self.untaken_by_peer, &key, n);
            }
        }
    }

    /// Forgets request `n` (finished, timed out, cancelled, or its requester gone).
    pub fn remove(&mut self, n: u64) -> Option<InFlight> {
        self.get(n)?;
        let r = self.table.remove((n & 0xffff_ffff) as usize);
        remove_from(&mut self.by_conn, &r.conn, n);
        if r.taken == 0 {
            remove_from(&mut self.untaken_by_peer, &(r.app, r.peer.clone()), n);
        }
        if self.deadlines.len() > 2 * self.table.len() + 1024 {
            // Finished requests left their deadlines behind: keep the live ones.
            let table = &self.table;
            self.deadlines.retain(|Reverse((_, n))| {
                table
                    .get((n & 0xffff_ffff) as usize)
                    .is_some_and(|r| r.n == *n)
            });
        }
        Some(r)
    }

    /// The earliest deadline, if any (it may belong to a finished request).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((t, _))| self.at(*t))
    }

    /// The requests whose deadline is at or before `now`, removed from the heap (but not
    /// from the table: the caller times them out).
    pub fn due(&mut self, now: Instant) -> Vec<u64> {
        let mut out = Vec::new();
        let now = now.saturating_duration_since(self.started).as_millis() as u64;
        while let Some(Reverse((t, n))) = self.deadlines.peek().copied() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            // A live number is its own request (the deadline never changes).
            if self.get(n).is_some() {
                out.push(n);
            }
        }
        out
    }

    /// The requests of `conn` (its disconnect).
    pub fn of_conn(&self, conn: ConnId) -> Vec<u64> {
        self.by_conn.get(&conn).cloned().unwrap_or_default()
    }

    /// The requests to `peer` that no connection took yet.
    pub fn untaken_to(&self, app: AppId, peer: &Arc<str>) -> Vec<u64> {
        self.untaken_by_peer
            .get(&(app, peer.clone()))
            .cloned()
            .unwrap_or_default()
    }

    /// True when some request of this shard is waiting for `peer`.
    pub fn waits_for(&self, app: AppId, peer: &Arc<str>) -> bool {
        !self.untaken_by_peer.is_empty() && self.untaken_by_peer.contains_key(&(app, peer.clone()))
    }

    /// This shard's number.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Responder side: local connection `conn` sent a non-final reply to request `held` (it
    /// took it, or tries to).
    pub fn took(&mut self, conn: ConnId, held: Held) {
        let v = self.took.entry(conn).or_default();
        if !v.contains(&held) {
            v.push(held);
        }
    }

    /// Responder side: `conn` is done with request `held` (final reply, refused, cancelled).
    pub fn released(&mut self, conn: ConnId, held: Held) {
        if let Some(v) = self.took.get_mut(&conn) {
            v.retain(|x| *x != held);
            if v.is_empty() {
                self.took.remove(&conn);
            }
        }
    }

    /// Responder side: the requests `conn` took and did not finish (its disconnect).
    pub fn took_by(&mut self, conn: ConnId) -> Vec<Held> {
        self.took.remove(&conn).unwrap_or_default()
    }

    /// [ext] Node `node` is gone (protocol §9): the requests of this shard its connections
    /// took (they fail `responder_gone`). A scan: nodes do not go often.
    pub fn taken_on(&self, node: u64) -> Vec<u64> {
        self.table
            .iter()
            .filter(|(_, r)| r.taken != 0 && r.taken_node == node)
            .map(|(_, r)| r.n)
            .collect()
    }

    /// [ext] Node `node` is gone: the requests from it that this shard's connections hold,
    /// forgotten and returned (their holders get `cancel` `requester_gone`).
    pub fn held_from(&mut self, node: u64) -> Vec<(ConnId, Held)> {
        let mut out = Vec::new();
        self.took.retain(|conn, v| {
            v.retain(|h| {
                if h.0 == node {
                    out.push((*conn, *h));
                    false
                } else {
                    true
                }
            });
            !v.is_empty()
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reply_to_round_trips_and_refuses_anything_else() {
        assert_eq!(
            parse_reply_to(&reply_to(ShardId(3), 77, 0)),
            Some((0, ShardId(3), 77))
        );
        let node = 0xfedc_ba98_7654_3210;
        let named = reply_to(ShardId(3), 77, node);
        assert_eq!(named, "3.77.fedcba9876543210");
        assert_eq!(parse_reply_to(&named), Some((node, ShardId(3), 77)));
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "a.1",
            "1.1.1",
            "1.1.",
            "1.1.0123456789abcdeg",
            "1.1.0123456789abcdef.1",
            "1.-1",
            "99999999.1",
            "1.99999999999999999999",
        ] {
            assert_eq!(parse_reply_to(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_path_frees_the_indexes() {
        let mut r = Requests::new(ShardId(0));
        let t = Instant::now();
        let p: Arc<str> = Arc::from("p");
        let a = r.insert(
            ConnId(1),
            "a",
            AppId(0),
            p.clone(),
            t + Duration::from_secs(1),
        );
        let b = r.insert(
            ConnId(1),
            "b",
            AppId(0),
            p.clone(),
            t + Duration::from_secs(2),
        );
        assert_eq!(r.count(ConnId(1)), 2);
        assert_eq!(r.find(ConnId(1), "b"), Some(b));
        assert_eq!(r.untaken_to(AppId(0), &p), [a, b]);
        r.take(
            b,
            NodeConn::here(ConnRef {
                shard: ShardId(1),
                conn: ConnId(9),
            }),
        );
        assert_eq!(r.untaken_to(AppId(0), &p), [a]);
        assert_eq!(r.due(t + Duration::from_millis(1500)), [a]);
        r.remove(a);
        assert!(!r.waits_for(AppId(0), &p));
        r.remove(b);
        assert!(r.is_empty());
        assert_eq!(r.count(ConnId(1)), 0);
        assert!(r.by_conn.is_empty() && r.untaken_by_peer.is_empty());
        assert_eq!(
            r.due(t + Duration::from_secs(5)),
            Vec::<u64>::new(),
            "finished: skipped"
        );
    }

    #[test]
    fn an_in_flight_request_is_72_bytes_and_packs_its_taker() {
        assert_eq!(std::mem::size_of::<InFlight>(), 72);
        let c = NodeConn {
            node: 42,
            conn: ConnRef {
                shard: ShardId(127),
                conn: ConnId((1 << 48) - 1),
            },
        };
        let mut r = Requests::new(ShardId(0));
        let n = r.insert(ConnId(1), "a", AppId(0), Arc::from("p"), Instant::now());
        assert_eq!(r.get_mut(n).unwrap().taken(), None);
        r.take(n, c);
        assert_eq!(r.get_mut(n).unwrap().taken(), Some(c));
    }

    #[test]
    fn a_stale_number_never_finds_the_request_reusing_its_slot() {
        let mut r = Requests::new(ShardId(0));
        let t = Instant::now();
        let p: Arc<str> = Arc::from("p");
        let a = r.insert(
            ConnId(1),
            "a",
            AppId(0),
            p.clone(),
            t + Duration::from_millis(10),
        );
        r.remove(a);
        let b = r.insert(
            ConnId(1),
            "b",
            AppId(0),
            p.clone(),
            t + Duration::from_secs(60),
        );
        assert_eq!(a & 0xffff_ffff, b & 0xffff_ffff, "the slot is reused");
        assert_ne!(a, b);
        assert!(r.get_mut(a).is_none());
        assert!(r.remove(a).is_none());
        assert_eq!(
            r.due(t + Duration::from_secs(1)),
            Vec::<u64>::new(),
            "a's deadline is stale"
        );
        assert_eq!(r.get_mut(b).map(|x| &*x.request_id), Some("b"));
        assert_eq!(r.due(t + Duration::from_secs(61)), [b]);
    }

    #[test]
    fn stale_deadlines_do_not_pile_up() {
        let mut r = Requests::new(ShardId(0));
        let t = Instant::now() + Duration::from_secs(300);
        for i in 0..10_000u64 {
            let n = r.insert(ConnId(i % 7), "x", AppId(0), Arc::from("p"), t);
            r.remove(n);
        }
        assert!(r.deadlines.len() <= 1024 + 1);
    }

    #[test]
    fn responder_side_tracks_what_it_took() {
        let mut r = Requests::new(ShardId(1));
        r.took(ConnId(5), (0, ShardId(0), 1));
        r.took(ConnId(5), (0, ShardId(0), 1));
        r.took(ConnId(5), (0, ShardId(0), 2));
        r.took(ConnId(5), (9, ShardId(0), 2));
        r.took(ConnId(6), (9, ShardId(1), 3));
        r.released(ConnId(5), (0, ShardId(0), 1));
        let mut from9 = r.held_from(9);
        from9.sort();
        assert_eq!(
            from9,
            [
                (ConnId(5), (9, ShardId(0), 2)),
                (ConnId(6), (9, ShardId(1), 3))
            ]
        );
        assert_eq!(r.took_by(ConnId(5)), [(0, ShardId(0), 2)]);
        assert_eq!(r.took_by(ConnId(6)), []);
        assert!(r.took.is_empty());
    }
}
