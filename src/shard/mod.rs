//! A shard: one pinned thread running its own tokio-uring runtime, owning a disjoint set
//! of connections and all of their state. This folder is the only place that touches
//! io_uring (sockets, the eventfd); everything here is `!Send`, per-core state.
//!
//! - [`spawn`]: threads, pinning, SO_REUSEPORT listeners, runtime start;
//! - [`conn`]: one connection's reader task (upgrade, auth, WebSocket, commands);
//! - [`rx`]: the shard's receive ring: one multishot `recv` per connection, provided
//!   buffers shared by the shard (no per-connection read buffer or reader task);
//! - [`outbound`]: its bounded outbound queue, written through the receive ring;
//! - [`inbox`]: the task that drains the shard's mesh queues (woken by eventfd);
//! - [`housekeeping`]: server pings, idle drops, close deadlines;
//! - [`pending`]: the caps on pending handshakes (per shard, per source IP);
//! - [`handshake`], [`rate_limit`]: pure helpers.

pub mod conn;
pub mod handshake;
pub mod housekeeping;
#[allow(unsafe_code)] // Temporary (issue 10): goes when the io_uring code moves to ring/.
pub mod inbox;
pub mod outbound;
pub mod pending;
pub mod rate_limit;
#[allow(unsafe_code)] // Temporary (issue 10): goes when the io_uring code moves to ring/.
pub mod rx;
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

use crate::{
    admission::UpgradeThrottle,
    auth::{AppId, Authenticator},
    config::Limits,
    metrics::{Metrics, ShardCounters},
    presence::Rosters,
    protocol::parse::Parser,
    router::{
        index::{shrink_target, Index, PresenceState},
        mesh::{Mesh, Source},
        ConnId, ConnRef, Direct, Publication, ShardId, ShardMsg,
    },
};
use outbound::ConnShared;

/// Read-only state shared by every shard (built once by [`spawn`]).
#[derive(Debug)]
pub struct Shared {
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
}

impl Shared {
    /// Takes a connection slot for `app`; false (and nothing taken) when the cap is reached.
    pub fn try_admit(&self, app: AppId) -> bool {
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

    /// Returns a slot taken by [`Shared::try_admit`].
    pub fn release(&self, app: AppId) {
        self.app_conns[app.0 as usize].fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`Shard::send_direct`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectSent {
    /// Delivered locally and/or queued for the shards holding the peer.
    Sent,
    /// The peer has no connection (other than the sender's) anywhere: `peer_not_found`.
    NotFound,
    /// A shard holding the peer has its queue over `max_cross_shard_bytes`: nothing sent.
    Busy,
}

/// A live connection as the registry sees it.
#[derive(Debug)]
pub struct ConnEntry {
    /// Queue, socket and clocks.
    pub shared: Rc<ConnShared>,
    /// Tenant.
    pub app: AppId,
    /// Peer id.
    pub peer: Arc<str>,
}

/// Mutable shard state. Borrowed only between awaits, never across one.
#[derive(Debug)]
pub struct State {
    /// Live connections of this shard.
    pub conns: HashMap<ConnId, ConnEntry, RandomState>,
    /// Channel → local subscribers.
    pub index: Index<Rc<ConnShared>>,
    /// Presence rosters of the channels this shard owns.
    pub rosters: Rosters,
    /// `local_peers[app]`: peer → this shard's connections of it.
    pub local_peers: Vec<HashMap<Arc<str>, Vec<ConnId>, RandomState>>,
    /// `directory[app]`: peer → bit set of OTHER shards holding a connection of it.
    pub directory: Vec<HashMap<Arc<str>, u128, RandomState>>,
}

/// One shard. Lives in an `Rc` on its own thread.
#[derive(Debug)]
pub struct Shard {
    /// This shard's id.
    pub id: ShardId,
    /// Shared, read-only broker state.
    pub shared: Arc<Shared>,
    /// Mutable state.
    pub state: RefCell<State>,
    /// The JSON parser and its scratch buffers, reused by every connection of the shard.
    pub parser: RefCell<Parser>,
    /// The receive ring: every registered connection's reads and writes.
    pub rx: rx::Rx,
    /// Connections with frames to write (drained by [`rx::flusher`]).
    pub tx: Rc<outbound::TxQueue>,
    /// Token expiry deadlines of this shard's connections, earliest first (one timer per
    /// shard: [`housekeeping::expiry`]). Entries of closed connections are skipped when due.
    pub expiries: RefCell<std::collections::BinaryHeap<std::cmp::Reverse<(Instant, ConnId)>>>,
    /// The expiry task's waker, woken when a new earliest deadline arrives.
    pub expiry_waker: RefCell<Option<std::task::Waker>>,
    /// Accepted sockets not yet upgraded or refused, in total and per source key.
    pub pending: RefCell<pending::Pending>,
    /// Messages this shard sent to itself, handled in order by [`Shard::pump_local`].
    local: RefCell<VecDeque<ShardMsg>>,
    next_conn: Cell<u64>,
    /// When the shard started: the origin of [`Shard::second`].
    started: Instant,
}

impl Shard {
    /// A shard with empty state. Fails when its receive ring cannot be set up.
    pub fn new(id: ShardId, shared: Arc<Shared>) -> std::io::Result<Shard> {
        let apps = shared.auth.app_count();
        let l = &shared.limits;
        let rx = rx::Rx::new(l.recv_buffers, l.read_buffer_size, 1024)?;
        Ok(Shard {
            id,
            state: RefCell::new(State {
                conns: HashMap::default(),
                index: Index::new(apps),
                rosters: Rosters::default(),
                local_peers: (0..apps).map(|_| HashMap::default()).collect(),
                directory: (0..apps).map(|_| HashMap::default()).collect(),
            }),
            parser: RefCell::new(Parser::new()),
            rx,
            tx: Rc::default(),
            expiries: RefCell::default(),
            expiry_waker: RefCell::new(None),
            pending: RefCell::default(),
            local: RefCell::new(VecDeque::new()),
            next_conn: Cell::new(1),
            started: Instant::now(),
            shared,
        })
    }

    /// Whole seconds since the shard started at `now` (the ping budget's windows).
    pub fn second(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.started).as_secs() as u32
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shared.mesh.shards()
    }

    /// Closes connection `id` with 4002 at `at` (its token's expiry less the lead), unless
    /// it is gone by then.
    pub fn expire_at(&self, at: Instant, id: ConnId) {
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
    pub fn shrink_tables(&self) {
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
        drop(st);
        self.rx.shrink_tables();
    }

    /// A fresh connection id.
    pub fn alloc_conn_id(&self) -> ConnId {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        ConnId(id)
    }

    /// Sends `msg` to shard `to`: through the mesh, or to the local queue for this shard.
    pub fn route(&self, to: ShardId, msg: ShardMsg) {
        if to == self.id {
            self.local.borrow_mut().push_back(msg);
        } else {
            self.shared.mesh.push(Source::Shard(self.id), to, msg);
        }
    }

    /// Sends `msg()` to every other shard.
    pub fn broadcast(&self, mut msg: impl FnMut() -> ShardMsg) {
        for s in 0..self.shards() as u16 {
            if s != self.id.0 {
                self.shared
                    .mesh
                    .push(Source::Shard(self.id), ShardId(s), msg());
            }
        }
    }

    /// Handles the messages this shard sent itself, in order, until none are left.
    pub fn pump_local(&self) {
        loop {
            let next = self.local.borrow_mut().pop_front();
            match next {
                Some(m) => self.handle_msg(m),
                None => break,
            }
        }
    }

    /// Handles one message from the mesh or from this shard itself.
    pub fn handle_msg(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish(p) => self.deliver_publication(&p),
            ShardMsg::Direct(d) => self.deliver_direct(&d),
            ShardMsg::PresenceJoin {
                app,
                channel,
                peer,
                metadata,
                from,
                wants_presence,
            } => {
                let shards = self.shards();
                let mut st = self.state.borrow_mut();
                st.rosters.join(
                    app,
                    channel,
                    peer,
                    metadata,
                    from,
                    wants_presence,
                    shards,
                    |s, m| self.route(s, m),
                );
                self.counters()
                    .channels
                    .store(st.rosters.len() as u64, Ordering::Relaxed);
            }
            ShardMsg::PresenceLeave {
                app,
                channel,
                peer,
                from,
            } => {
                let mut st = self.state.borrow_mut();
                st.rosters
                    .leave(app, channel, peer, from, |s, m| self.route(s, m));
                self.counters()
                    .channels
                    .store(st.rosters.len() as u64, Ordering::Relaxed);
            }
            ShardMsg::PeersQuery {
                app,
                channel,
                reply,
            } => {
                let roster = self.state.borrow().rosters.roster(app, &channel);
                let _ = reply.send(roster); // the asker may have timed out
            }
            ShardMsg::Kick { app, peer, reply } => {
                let st = self.state.borrow();
                let mut closed = 0u32;
                for c in st.local_peers[app.0 as usize]
                    .get(&peer)
                    .into_iter()
                    .flatten()
                {
                    if let Some(e) = st.conns.get(c) {
                        if e.shared.state() == outbound::CloseState::Open {
                            e.shared.close(
                                crate::protocol::close::ADMIN_DISCONNECT,
                                "disconnected by the server",
                                false,
                            );
                            closed += 1;
                        }
                    }
                }
                let _ = reply.send(closed);
            }
            ShardMsg::PresenceSnapshot {
                app,
                channel,
                conn,
                frames,
            } => {
                let mut st = self.state.borrow_mut();
                if let Some(sub) = st
                    .index
                    .get_mut(app, &channel)
                    .and_then(|c| c.get_mut(conn))
                {
                    if sub.presence != PresenceState::NoPermission {
                        sub.presence = PresenceState::Ready;
                        // Counted against the cap, with room for one snapshot at a time
                        // (`ConnShared::send_snapshot`).
                        let total = frames.iter().map(|f| f.len() + outbound::SLOT_BYTES).sum();
                        for (i, f) in frames.iter().enumerate() {
                            let owed = if i == 0 { total } else { 0 };
                            if sub.handle.send_snapshot(f, owed) != outbound::Delivery::Queued {
                                break;
                            }
                        }
                    }
                }
            }
            ShardMsg::PresenceResnapshot {
                app,
                channel,
                peer,
                from,
            } => {
                let mut st = self.state.borrow_mut();
                st.rosters
                    .resnapshot(app, channel, &peer, from, |s, m| self.route(s, m));
            }
            ShardMsg::PresenceEvent {
                app,
                channel,
                peer,
                frame,
            } => {
                let st = self.state.borrow();
                if let Some(subs) = st.index.get(app, &channel) {
                    for sub in subs.iter() {
                        if matches!(
                            sub.presence,
                            PresenceState::Ready | PresenceState::Refreshing
                        ) && sub.peer != peer
                        {
                            sub.handle.send(&frame);
                        }
                    }
                }
            }
            ShardMsg::Shutdown { retry_after_ms } => {
                let frame = crate::protocol::encode::going_away(retry_after_ms);
                let st = self.state.borrow();
                for e in st.conns.values() {
                    e.shared.send(&frame);
                    e.shared.close(
                        crate::protocol::close::GOING_AWAY,
                        "server shutting down",
                        false,
                    );
                }
            }
            ShardMsg::Undelivered { reply } => {
                let st = self.state.borrow();
                let (mut frames, mut bytes) = (0, 0);
                for e in st.conns.values() {
                    let (f, b) = e.shared.undelivered();
                    frames += f as u64;
                    bytes += b as u64;
                }
                let _ = reply.send((st.conns.len() as u64, frames, bytes));
            }
            ShardMsg::PeerUp { app, peer, shard } => {
                let mut st = self.state.borrow_mut();
                *st.directory[app.0 as usize].entry(peer).or_insert(0) |= 1u128 << shard.0;
            }
            ShardMsg::PeerDown { app, peer, shard } => {
                let mut st = self.state.borrow_mut();
                let dir = &mut st.directory[app.0 as usize];
                if let Some(bits) = dir.get_mut(&peer) {
                    *bits &= !(1u128 << shard.0);
                    if *bits == 0 {
                        dir.remove(&peer);
                    }
                }
            }
        }
    }

    /// Writes a publication's frame to every local subscriber except its origin.
    /// Per subscriber: one reference-count increment and a queue push; no allocation
    /// beyond the queue's own growth, no encoding.
    pub fn deliver_publication(&self, p: &Publication) {
        let st = self.state.borrow();
        let Some(subs) = st.index.get(p.app, &p.channel) else {
            return;
        };
        let skip = p.origin.filter(|o| o.shard == self.id).map(|o| o.conn);
        let mut n = 0;
        for sub in subs.iter() {
            if Some(sub.conn) != skip
                && sub.handle.send(p.frame_for(sub.include_meta)) == outbound::Delivery::Queued
            {
                n += 1;
            }
        }
        let c = self.counters();
        ShardCounters::add(&c.deliveries, n);
        if let Some(a) = c.app_deliveries.get(p.app.0 as usize) {
            ShardCounters::add(a, n);
        }
    }

    /// This shard's metrics counters (written only by this thread).
    pub fn counters(&self) -> &ShardCounters {
        self.shared.metrics.shard(self.id.0 as usize)
    }

    /// Writes a direct message to every local connection of its target except its origin.
    pub fn deliver_direct(&self, d: &Direct) {
        let st = self.state.borrow();
        let Some(conns) = st.local_peers[d.app.0 as usize].get(&*d.to) else {
            return;
        };
        let skip = d.origin.filter(|o| o.shard == self.id).map(|o| o.conn);
        for c in conns {
            if Some(*c) != skip {
                if let Some(e) = st.conns.get(c) {
                    e.shared.send(&d.frame);
                }
            }
        }
    }

    /// Routes a direct message to every connection of its target (but the sender's).
    pub fn send_direct(&self, d: Direct) -> DirectSent {
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
        if !targets().all(|s| self.shared.mesh.has_room(ShardId(s))) {
            return DirectSent::Busy;
        }
        let d = Arc::new(d);
        self.deliver_direct(&d);
        for s in targets() {
            self.shared.mesh.push(
                Source::Shard(self.id),
                ShardId(s),
                ShardMsg::Direct(d.clone()),
            );
        }
        DirectSent::Sent
    }

    /// Delivers a publication locally and hands it to every other shard.
    pub fn publish(&self, p: Publication) {
        let p = Arc::new(p);
        self.deliver_publication(&p);
        self.broadcast(|| ShardMsg::Publish(p.clone()));
    }

    /// Registers a new connection; announces the peer to other shards if it is the
    /// peer's first connection here.
    pub fn register(&self, id: ConnId, entry: ConnEntry) {
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
            self.broadcast(|| ShardMsg::PeerUp {
                app,
                peer: peer.clone(),
                shard: self.id,
            });
        }
    }

    /// Removes a connection: its subscriptions (with presence notices to the owners) and
    /// its registry and directory entries.
    pub fn unregister(&self, id: ConnId, channels: &[Arc<str>]) {
        let Some(entry) = self.state.borrow_mut().conns.remove(&id) else {
            return;
        };
        self.counters()
            .connections
            .store(self.state.borrow().conns.len() as u64, Ordering::Relaxed);
        for ch in channels {
            self.unsubscribe(entry.app, ch, id, &entry.peer);
        }
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
            self.broadcast(|| ShardMsg::PeerDown {
                app,
                peer: peer.clone(),
                shard: self.id,
            });
        }
        self.pump_local();
    }

    /// Removes one subscription and tells the channel's owner.
    pub fn unsubscribe(
        &self,
        app: AppId,
        channel: &Arc<str>,
        conn: ConnId,
        peer: &Arc<str>,
    ) -> bool {
        let removed = self
            .state
            .borrow_mut()
            .index
            .remove(app, channel, conn)
            .is_some();
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

    /// A reference to a local connection.
    pub fn conn_ref(&self, conn: ConnId) -> ConnRef {
        ConnRef {
            shard: self.id,
            conn,
        }
    }
}
