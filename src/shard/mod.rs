//! A shard: one pinned thread running its own tokio-uring runtime, owning a disjoint set
//! of connections and all of their state (the per-core service of Seastar and glommio).
//! Everything here is `!Send`, per-core state; io_uring is touched only in [`ring`].
//!
//! A publication passes these files in this order: [`ring`] (receive) → [`conn`] → [`cmd`]
//! → `router::fanout` → [`deliver`] here, and through the mesh on every other shard
//! [`inbox`] → [`deliver`]; then [`handle`] → [`outbound`] → [`ring`] (send).
//!
//! - [`ring`]: the shard's io_uring: provided buffers, multishot receives, writes, the
//!   submission backlog, completion dispatch, the tasks driving it (the only `unsafe`);
//! - [`conn`]: one connection's life: upgrade, auth, `welcome`, WebSocket decoding of the
//!   bytes the ring received, teardown;
//! - [`cmd`]: the client commands, one file each, and the one dispatch point;
//! - [`deliver`]: writing publications and direct messages to this shard's connections;
//! - [`inbox`]: the task draining the shard's mesh queues, and every cross-shard message's
//!   handling;
//! - [`handle`]: a connection as the rest of the shard holds it (queue + writer + clocks);
//! - [`outbound`]: a connection's byte-bounded frame queue and close state (plain data);
//!
//! and around them: [`spawn`] (threads, pinning, SO_REUSEPORT listeners, runtime start),
//! [`housekeeping`] (server pings, idle drops, close deadlines, token expiry), [`pending`]
//! (the caps on pending handshakes), [`handshake`] and [`rate_limit`] (pure helpers).
//!
//! This file holds the shard itself: its state, the connection registry, subscriptions,
//! and routing to other shards.

pub(crate) mod cmd;
pub mod conn;
pub(crate) mod deliver;
pub(crate) mod groups;
pub(crate) mod handle;
pub mod handshake;
pub(crate) mod history;
pub(crate) mod housekeeping;
pub(crate) mod inbox;
pub(crate) mod outbound;
pub(crate) mod pending;
pub mod query;
pub mod rate_limit;
pub(crate) mod rpc;
// The shard's io_uring code, and the only place in the shard with `unsafe`.
#[allow(unsafe_code)]
pub(crate) mod ring;
pub mod spawn;

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, VecDeque},
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    time::Instant,
};

use ahash::RandomState;
use bytes::Bytes;

use crate::{
    admission::UpgradeThrottle,
    auth::{AppId, Authenticator},
    config::Limits,
    history::Histories,
    metrics::{Metrics, ShardCounters},
    presence::Rosters,
    protocol::parse::Parser,
    router::{
        index::{shrink_target, Index, PresenceState, Sub},
        mesh::{Mesh, Source},
        patterns::{Member, PatternIndex, TrieError},
        ConnId, ConnRef, HistoryJoin, ShardId, ShardMsg,
    },
    rpc::Requests,
};
use handle::{ConnHandle, TxQueue};

/// The broker's read-only state, shared by every shard and the REST thread (built once by
/// `main` and handed to [`spawn`]). Only atomics change in it.
#[derive(Debug)]
pub struct Broker {
    /// Cross-shard queues.
    pub mesh: Arc<Mesh>,
    /// Apps, keys and token verification.
    pub auth: Arc<Authenticator>,
    /// Resolved limits.
    pub limits: Limits,
    /// Live connections per app, across shards: checked at connect time only (the
    /// per-app cap, close 4010), never per message.
    pub app_conns: Vec<AtomicU32>,
    /// Upgrade attempts per source IP (IPv6 /64) (HTTP 429 over the limit): a lock-free
    /// sketch, touched once per upgrade attempt.
    pub admission: UpgradeThrottle,
    /// Set once shutdown starts: shards stop accepting.
    pub draining: AtomicBool,
    /// Highest value `app_conns[app]` reached (`peakConcurrent` of `GET /v1/usage`).
    pub app_peak: Vec<AtomicU32>,
    /// Per-shard counters (each written by its shard only) and the REST thread's.
    pub metrics: Metrics,
    /// [ext] The cluster link (protocol §9), when `[cluster]` is configured.
    pub cluster: Option<Arc<crate::cluster::Link>>,
}

impl Broker {
    /// Takes a connection slot for `app`; false (and nothing taken) when the cap is reached.
    pub(crate) fn try_admit(&self, app: AppId) -> bool {
        let cap = self.auth.app_max_connections(app).unwrap_or(u32::MAX);
        let slot = &self.app_conns[app.0 as usize];
        match slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < cap).then_some(n + 1)
        }) {
            Ok(before) => {
                if let Some(peak) = self.app_peak.get(app.0 as usize) {
                    peak.fetch_max(before + 1, Ordering::Relaxed);
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Returns a slot taken by [`Broker::try_admit`].
    pub(crate) fn release(&self, app: AppId) {
        self.app_conns[app.0 as usize].fetch_sub(1, Ordering::AcqRel);
    }
}

/// A live connection as the registry sees it.
#[derive(Debug)]
pub(crate) struct ConnEntry {
    /// Queue, socket and clocks.
    pub(crate) handle: Rc<ConnHandle>,
    /// Tenant.
    pub(crate) app: AppId,
    /// Peer id.
    pub(crate) peer: Arc<str>,
}

/// Mutable shard state. Borrowed only between awaits, never across one.
#[derive(Debug)]
pub(crate) struct State {
    /// Live connections of this shard.
    pub(crate) conns: HashMap<ConnId, ConnEntry, RandomState>,
    /// Channel → local subscribers.
    pub(crate) index: Index<Rc<ConnHandle>>,
    /// [ext] The local wildcard subscriptions (protocol §8.3), matched per publication.
    pub(crate) patterns: PatternIndex<Rc<ConnHandle>>,
    /// Presence rosters of the channels this shard owns.
    pub(crate) rosters: Rosters,
    /// [ext] Histories of the history channels this shard owns (protocol §8.1).
    pub(crate) histories: Histories,
    /// [ext] Requests whose requester is on this shard, and those this shard's connections
    /// took as responders (protocol §8.4).
    pub(crate) requests: Requests,
    /// `local_peers[app]`: peer → this shard's connections of it.
    pub(crate) local_peers: Vec<HashMap<Arc<str>, Vec<ConnId>, RandomState>>,
    /// `directory[app]`: peer → bit set of OTHER shards holding a connection of it.
    pub(crate) directory: Vec<HashMap<Arc<str>, u128, RandomState>>,
    /// [ext] Queue groups (protocol §8.2) of the channels this shard owns ([`groups`]).
    pub(crate) groups: crate::router::groups::GroupTable,
    /// [ext] Which group each local connection joined on which channel ([`groups`]).
    pub(crate) memberships: groups::Memberships,
}

/// One shard. Lives in an `Rc` on its own thread.
#[derive(Debug)]
pub(crate) struct Shard {
    /// This shard's id.
    pub(crate) id: ShardId,
    /// The broker's shared, read-only state.
    pub(crate) broker: Arc<Broker>,
    /// Mutable state.
    pub(crate) state: RefCell<State>,
    /// The JSON parser and its scratch buffers, reused by every connection of the shard.
    pub(crate) parser: RefCell<Parser>,
    /// The shard's io_uring: every registered connection's reads and writes.
    pub(crate) ring: ring::Ring,
    /// Connections with frames to write (drained by [`ring::run::flusher`]).
    pub(crate) tx: Rc<TxQueue>,
    /// Token expiry deadlines of this shard's connections, earliest first (one timer per
    /// shard: [`housekeeping::expiry`]). Entries of closed connections are skipped when due.
    pub(crate) expiries:
        RefCell<std::collections::BinaryHeap<std::cmp::Reverse<(Instant, ConnId)>>>,
    /// The expiry task's waker, woken when a new earliest deadline arrives.
    pub(crate) expiry_waker: RefCell<Option<std::task::Waker>>,
    /// [ext] The request-deadline task's waker ([`rpc::deadlines`]).
    pub(crate) request_waker: RefCell<Option<std::task::Waker>>,
    /// Accepted sockets not yet upgraded or refused, in total and per source key.
    pub(crate) pending: RefCell<pending::Pending>,
    /// Messages this shard sent to itself, handled in order by [`Shard::pump_local`].
    local: RefCell<VecDeque<ShardMsg>>,
    next_conn: Cell<u64>,
    /// Sequence number of the last publication delivered while the shard had pattern
    /// subscriptions (the connections' dedup stamp, [`ConnHandle::first_delivery`]).
    pub(crate) publication_seq: Cell<u64>,
    /// When the shard started: the origin of [`Shard::second`].
    started: Instant,
}

impl Shard {
    /// A shard with empty state. Fails when its receive ring cannot be set up.
    pub(crate) fn new(id: ShardId, broker: Arc<Broker>) -> std::io::Result<Shard> {
        let apps = broker.auth.app_count();
        let l = &broker.limits;
        let ring = ring::Ring::new(l.recv_buffers, l.read_buffer_size, 1024)?;
        Ok(Shard {
            id,
            state: RefCell::new(State {
                conns: HashMap::default(),
                index: Index::new(apps),
                patterns: PatternIndex::new(apps),
                rosters: Rosters::default(),
                requests: Requests::new(id),
                histories: Histories::new(id.0, l.history_max_bytes / broker.mesh.shards().max(1)),
                local_peers: (0..apps).map(|_| HashMap::default()).collect(),
                directory: (0..apps).map(|_| HashMap::default()).collect(),
                groups: Default::default(),
                memberships: Default::default(),
            }),
            parser: RefCell::new(Parser::new()),
            ring,
            tx: Rc::default(),
            expiries: RefCell::default(),
            expiry_waker: RefCell::new(None),
            request_waker: RefCell::new(None),
            pending: RefCell::default(),
            local: RefCell::new(VecDeque::new()),
            next_conn: Cell::new(1),
            publication_seq: Cell::new(0),
            started: Instant::now(),
            broker,
        })
    }

    /// Whole seconds since the shard started at `now` (the ping budget's windows).
    pub(crate) fn second(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.started).as_secs() as u32
    }

    /// Number of shards.
    pub(crate) fn shards(&self) -> usize {
        self.broker.mesh.shards()
    }

    /// Closes connection `id` with 4002 at `at` (its token's expiry less the lead), unless
    /// it is gone by then.
    pub(crate) fn expire_at(&self, at: Instant, id: ConnId) {
        let mut heap = self.expiries.borrow_mut();
        heap.push(std::cmp::Reverse((at, id)));
        if heap
            .peek()
            .is_some_and(|std::cmp::Reverse((t, c))| *t == at && *c == id)
        {
            if let Some(w) = self.expiry_waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Gives back the capacity of tables that a crowd of connections grew and then left (a
    /// reconnect storm, a mass disconnect): each is shrunk once it is over four times larger
    /// than needed. Called from the housekeeping tick; the check is a few comparisons, the
    /// rehash happens only after such a drop.
    pub(crate) fn shrink_tables(&self) {
        let oversized = |cap, len| shrink_target(cap, len, 1024);
        let mut st = self.state.borrow_mut();
        if let Some(n) = oversized(st.conns.capacity(), st.conns.len()) {
            st.conns.shrink_to(n);
        }
        for peers in &mut st.local_peers {
            if let Some(n) = oversized(peers.capacity(), peers.len()) {
                peers.shrink_to(n);
            }
        }
        for dir in &mut st.directory {
            if let Some(n) = oversized(dir.capacity(), dir.len()) {
                dir.shrink_to(n);
            }
        }
        st.index.shrink();
        st.patterns.shrink();
        self.pattern_gauges(&st);
        drop(st);
        self.ring.shrink_tables();
    }

    /// A fresh connection id.
    pub(crate) fn alloc_conn_id(&self) -> ConnId {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        ConnId(id)
    }

    /// Sends `msg` to shard `to`: through the mesh, or to the local queue for this shard.
    pub(crate) fn route(&self, to: ShardId, msg: ShardMsg) {
        if to == self.id {
            self.local.borrow_mut().push_back(msg);
        } else {
            self.broker.mesh.push(Source::Shard(self.id), to, msg);
        }
    }

    /// Sends `msg()` to every other shard.
    pub(crate) fn broadcast(&self, mut msg: impl FnMut() -> ShardMsg) {
        for s in 0..self.shards() as u16 {
            if s != self.id.0 {
                self.broker
                    .mesh
                    .push(Source::Shard(self.id), ShardId(s), msg());
            }
        }
    }

    /// True when this shard has no message queued for itself.
    pub(crate) fn local_is_empty(&self) -> bool {
        self.local.borrow().is_empty()
    }

    /// Handles the messages this shard sent itself, in order, until none are left.
    pub(crate) fn pump_local(&self) {
        loop {
            let next = self.local.borrow_mut().pop_front();
            match next {
                Some(m) => self.handle_msg(m),
                None => break,
            }
        }
    }

    /// This shard's metrics counters (written only by this thread).
    pub(crate) fn counters(&self) -> &ShardCounters {
        self.broker.metrics.shard(self.id.0 as usize)
    }

    /// Registers a new connection; announces the peer to other shards if it is the
    /// peer's first connection here.
    pub(crate) fn register(&self, id: ConnId, entry: ConnEntry) {
        let (app, peer) = (entry.app, entry.peer.clone());
        let first = {
            let mut st = self.state.borrow_mut();
            st.conns.insert(id, entry);
            let c = self.counters();
            c.connections
                .store(st.conns.len() as u64, Ordering::Relaxed);
            ShardCounters::add(&c.connections_opened, 1);
            let conns = st.local_peers[app.0 as usize]
                .entry(peer.clone())
                .or_default();
            conns.push(id);
            conns.len() == 1
        };
        if first {
            if let Some(link) = &self.broker.cluster {
                link.peer_interest(app, &peer, true); // [ext] protocol §9
            }
            self.broadcast(|| ShardMsg::PeerUp {
                app,
                peer: peer.clone(),
                shard: self.id,
            });
        }
    }

    /// Removes a connection: its subscriptions (with presence notices to the owners), its
    /// pattern subscriptions, and its registry and directory entries.
    pub(crate) fn unregister(&self, id: ConnId, channels: &[Arc<str>], patterns: &[Box<str>]) {
        let Some(entry) = self.state.borrow_mut().conns.remove(&id) else {
            return;
        };
        self.counters()
            .connections
            .store(self.state.borrow().conns.len() as u64, Ordering::Relaxed);
        for ch in channels {
            self.unsubscribe(entry.app, ch, id, &entry.peer);
        }
        for p in patterns {
            self.unsubscribe_pattern(entry.app, p, id);
        }
        self.requests_of_gone_conn(id);
        let last = {
            let mut st = self.state.borrow_mut();
            let map = &mut st.local_peers[entry.app.0 as usize];
            match map.get_mut(&entry.peer) {
                Some(v) => {
                    v.retain(|c| *c != id);
                    let empty = v.is_empty();
                    if empty {
                        map.remove(&entry.peer);
                    }
                    empty
                }
                None => false,
            }
        };
        if last {
            let (app, peer) = (entry.app, entry.peer.clone());
            if let Some(link) = &self.broker.cluster {
                link.peer_interest(app, &peer, false); // [ext] protocol §9
            }
            self.broadcast(|| ShardMsg::PeerDown {
                app,
                peer: peer.clone(),
                shard: self.id,
            });
            self.peer_maybe_gone(app, &peer);
        }
        self.pump_local();
    }

    /// Adds a new subscription of `sub.conn` to `channel` and tells the channel's owner,
    /// which answers with the roster snapshot (if the connection may see presence) and
    /// announces the peer. `metadata` is the peer's public metadata. [ext] `history` is set
    /// for a history channel: the owner's answer then carries the ack and the replay.
    pub(crate) fn subscribe(
        &self,
        app: AppId,
        channel: Arc<str>,
        sub: Sub<Rc<ConnHandle>>,
        metadata: Option<Bytes>,
        history: Option<Box<HistoryJoin>>,
    ) {
        let (conn, peer) = (sub.conn, sub.peer.clone());
        let wants_presence = sub.presence != PresenceState::NoPermission;
        self.state.borrow_mut().index.insert(app, &channel, sub);
        ShardCounters::add(&self.counters().subscriptions, 1);
        let owner = crate::router::owner_of(app, &channel, self.shards());
        self.route(
            owner,
            ShardMsg::PresenceJoin {
                app,
                channel,
                peer,
                metadata,
                from: self.conn_ref(conn),
                wants_presence,
                history,
            },
        );
    }

    /// Changes an existing subscription's `includeSenderMetadata`, and asks the channel's
    /// owner for a fresh roster snapshot (protocol §5: SDKs re-subscribe to reconcile their
    /// roster) unless one is already on its way, which then answers this one too.
    /// [ext] On a history channel (`history` set) the owner is always asked, since only it
    /// can answer the ack; with `since`, live publications wait for its replay.
    pub(crate) fn resubscribe(
        &self,
        app: AppId,
        channel: Arc<str>,
        conn: ConnId,
        peer: &Arc<str>,
        include_meta: bool,
        history: Option<Box<HistoryJoin>>,
    ) {
        let mut refresh = history.is_some();
        if let Some(sub) = self
            .state
            .borrow_mut()
            .index
            .get_mut(app, &channel)
            .and_then(|s| s.get_mut(conn))
        {
            sub.include_meta = include_meta;
            if sub.presence == PresenceState::Ready {
                sub.presence = PresenceState::Refreshing;
                refresh = true;
            }
            if history.as_ref().is_some_and(|h| h.since.is_some()) {
                sub.awaiting = true;
            }
        }
        if refresh {
            self.route(
                crate::router::owner_of(app, &channel, self.shards()),
                ShardMsg::PresenceResnapshot {
                    app,
                    channel,
                    peer: peer.clone(),
                    from: self.conn_ref(conn),
                    history,
                },
            );
        }
    }

    /// Removes one subscription and tells the channel's owner.
    pub(crate) fn unsubscribe(
        &self,
        app: AppId,
        channel: &Arc<str>,
        conn: ConnId,
        peer: &Arc<str>,
    ) -> bool {
        let removed = self.state.borrow_mut().index.remove(app, channel, conn);
        if removed.as_ref().is_some_and(|s| s.grouped) {
            self.leave_group(app, channel, conn); // [ext] protocol §8.2
        }
        let removed = removed.is_some();
        if removed {
            self.counters()
                .subscriptions
                .fetch_sub(1, Ordering::Relaxed);
            let owner = crate::router::owner_of(app, channel, self.shards());
            self.route(
                owner,
                ShardMsg::PresenceLeave {
                    app,
                    channel: channel.clone(),
                    peer: peer.clone(),
                    from: self.id,
                },
            );
        }
        removed
    }

    /// [ext] Adds (or, for the same connection and pattern text, replaces) a wildcard
    /// subscription. No presence: nothing is sent to any owner shard. True when new.
    pub(crate) fn subscribe_pattern(
        &self,
        app: AppId,
        pattern: &str,
        member: Member<Rc<ConnHandle>>,
    ) -> Result<bool, TrieError> {
        let mut st = self.state.borrow_mut();
        let new = st.patterns.insert(app, pattern, member)?;
        self.pattern_gauges(&st);
        if new {
            if let Some(link) = &self.broker.cluster {
                link.pattern_interest(app, pattern, true); // [ext] protocol §9
            }
        }
        Ok(new)
    }

    /// Updates the pattern gauges of `/metrics`.
    fn pattern_gauges(&self, st: &State) {
        let c = self.counters();
        c.pattern_subscriptions
            .store(st.patterns.len() as u64, Ordering::Relaxed);
        c.pattern_nodes
            .store(st.patterns.branch_nodes() as u64, Ordering::Relaxed);
    }

    /// [ext] Removes a wildcard subscription; true when there was one.
    pub(crate) fn unsubscribe_pattern(&self, app: AppId, pattern: &str, conn: ConnId) -> bool {
        let mut st = self.state.borrow_mut();
        let removed = st.patterns.remove(app, pattern, conn).is_some();
        self.pattern_gauges(&st);
        if removed {
            if let Some(link) = &self.broker.cluster {
                link.pattern_interest(app, pattern, false); // [ext] protocol §9
            }
        }
        removed
    }

    /// A reference to a local connection.
    /// [ext] This node's incarnation in a cluster (protocol §9), 0 on a single node: what
    /// `replyTo` names so that responders on other nodes find the requester.
    pub(crate) fn node(&self) -> u64 {
        self.broker.cluster.as_ref().map_or(0, |l| l.origin)
    }

    pub(crate) fn conn_ref(&self, conn: ConnId) -> ConnRef {
        ConnRef {
            shard: self.id,
            conn,
        }
    }
}
