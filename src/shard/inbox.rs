//! The shard's inbox: the task that drains the shard's mesh queues (woken by the mesh's
//! eventfd, read through io_uring: idle, it is one pending read, no spinning, no timer),
//! and [`Shard::handle_msg`], which handles each message from another shard, from the REST
//! thread or from this shard itself.

use std::{rc::Rc, sync::atomic::Ordering};

use super::{
    outbound::{CloseState, Delivery, SLOT_BYTES},
    ring::eventfd::EventFd,
    Shard, State,
};
use crate::{
    protocol::{close, encode},
    router::{index::PresenceState, ShardMsg},
};

/// Messages handled before yielding to connection tasks, so a flood of cross-shard traffic
/// cannot starve this shard's own sockets.
const BUDGET: usize = 1024;

/// Runs until the process exits.
pub(crate) async fn run(shard: Rc<Shard>) {
    let me = shard.id;
    // The mesh's eventfd stays open for the life of the process (the mesh outlives every
    // shard).
    let Ok(mut eventfd) = EventFd::dup(shard.broker.mesh.eventfd(me), me) else {
        tracing::error!(
            shard = me.0,
            "cannot dup eventfd; cross-shard messages will not arrive"
        );
        return;
    };
    loop {
        shard.broker.mesh.arm(me);
        loop {
            let n = shard.broker.mesh.drain(me, BUDGET, |m| shard.handle_msg(m));
            shard.pump_local();
            if n < BUDGET {
                break;
            }
            tokio::task::yield_now().await;
        }
        eventfd.wait().await;
    }
}

impl Shard {
    /// Handles one message from the mesh or from this shard itself.
    pub(crate) fn handle_msg(&self, msg: ShardMsg) {
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
                history,
            } => {
                let shards = self.shards();
                let mut st = self.state.borrow_mut();
                let answer = history.map(|h| self.history_answer(&mut st, app, &channel, &h));
                let joined = st.rosters.join(
                    app,
                    channel.clone(),
                    peer.clone(),
                    metadata.clone(),
                    from,
                    wants_presence,
                    answer,
                    shards,
                    |s, m| self.route(s, m),
                );
                // [ext] protocol §9: the first subscriber makes the node listen to the
                // channel and ask the other nodes for their members; a peer's first
                // subscription here is news for them.
                if let Some(link) = &self.broker.cluster {
                    if joined.first_here {
                        link.interest(app, &channel, true);
                        link.membership(app, &channel, vec![(peer, metadata)], true);
                    } else if joined.peer_first_here {
                        link.member(app, &channel, &peer, metadata, true);
                    }
                }
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
                let left = st
                    .rosters
                    .leave(app, channel.clone(), peer.clone(), from, |s, m| {
                        self.route(s, m)
                    });
                if let Some(link) = &self.broker.cluster {
                    // [ext] protocol §9
                    if left.peer_last_here {
                        link.member(app, &channel, &peer, None, false);
                    }
                    if left.last_here {
                        link.interest(app, &channel, false);
                    }
                }
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
                        if e.handle.state() == CloseState::Open {
                            e.handle.close(
                                close::ADMIN_DISCONNECT,
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
                history,
            } => {
                let mut st = self.state.borrow_mut();
                let State { index, conns, .. } = &mut *st;
                let Some(sub) = index.get_mut(app, &channel).and_then(|c| c.get_mut(conn)) else {
                    // Unsubscribed or gone meanwhile: a subscribe with a requestId still
                    // gets its ack.
                    if let (Some(h), Some(e)) = (history, conns.get(&conn)) {
                        if let Some(ack) = &h.ack {
                            e.handle.send(ack);
                        }
                    }
                    return;
                };
                // [ext] History channel: the ack first (protocol §8.1: ack, snapshot,
                // replay, live).
                if let Some(ack) = history.as_ref().and_then(|h| h.ack.as_ref()) {
                    sub.handle.send(ack);
                }
                let frames = if sub.presence != PresenceState::NoPermission {
                    sub.presence = PresenceState::Ready;
                    &frames[..]
                } else {
                    &[]
                };
                let replay = history.as_ref().map_or(&[][..], |h| &h.replay[..]);
                // Counted against the cap, with room for one snapshot (and replay) at a
                // time (`ConnHandle::send_snapshot`).
                let total = frames
                    .iter()
                    .chain(replay)
                    .map(|f| f.len() + SLOT_BYTES)
                    .sum();
                for (i, f) in frames.iter().chain(replay).enumerate() {
                    let owed = if i == 0 { total } else { 0 };
                    if sub.handle.send_snapshot(f, owed) != Delivery::Queued {
                        break;
                    }
                }
                if history.is_some() {
                    sub.awaiting = false;
                }
            }
            ShardMsg::PresenceResnapshot {
                app,
                channel,
                peer,
                from,
                history,
            } => {
                let mut st = self.state.borrow_mut();
                let answer = history.map(|h| self.history_answer(&mut st, app, &channel, &h));
                st.rosters
                    .resnapshot(app, channel, &peer, from, answer, |s, m| self.route(s, m));
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
            ShardMsg::HistoryPublish(m) => self.sequence(*m),
            ShardMsg::HistoryQuery(q) => self.answer_query(*q),
            ShardMsg::ConnFrame { conn, frame, large } => {
                if let Some(e) = self.state.borrow().conns.get(&conn) {
                    if large {
                        e.handle.send_snapshot(&frame, frame.len() + SLOT_BYTES);
                    } else {
                        e.handle.send(&frame);
                    }
                }
            }
            ShardMsg::Shutdown { retry_after_ms } => {
                let frame = encode::going_away(retry_after_ms);
                let st = self.state.borrow();
                for e in st.conns.values() {
                    e.handle.send(&frame);
                    e.handle
                        .close(close::GOING_AWAY, "server shutting down", false);
                }
            }
            ShardMsg::Undelivered { reply } => {
                let st = self.state.borrow();
                let (mut frames, mut bytes) = (0, 0);
                for e in st.conns.values() {
                    let (f, b) = e.handle.undelivered();
                    frames += f as u64;
                    bytes += b as u64;
                }
                let _ = reply.send((st.conns.len() as u64, frames, bytes));
            }
            m @ (ShardMsg::GroupJoin { .. }
            | ShardMsg::GroupLeave { .. }
            | ShardMsg::GroupDeliver { .. }
            | ShardMsg::GroupBounce { .. }) => self.handle_group_msg(m),
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
                drop(st);
                self.peer_maybe_gone(app, &peer);
            }
            ShardMsg::RemotePresence(r) => {
                let (app, channel) = (r.app, r.channel.clone());
                let mut st = self.state.borrow_mut();
                let mine = st.rosters.remote(*r, |s, m| self.route(s, m));
                if let (Some(members), Some(link)) = (mine, &self.broker.cluster) {
                    link.membership(app, &channel, members, false);
                }
            }
            ShardMsg::NodeGone { origin } => {
                let mut st = self.state.borrow_mut();
                st.rosters.node_gone(origin, |s, m| self.route(s, m));
                drop(st);
                self.requests_of_gone_node(origin);
            }
            ShardMsg::ClusterResync { ask } => {
                if let Some(link) = &self.broker.cluster {
                    for (app, channel, members) in self.state.borrow().rosters.memberships() {
                        link.membership(app, &channel, members, ask);
                    }
                }
            }
            ShardMsg::Reply(m) => self.on_reply(*m),
            ShardMsg::ResponderFrame {
                conn,
                of_node,
                of,
                n,
                frame,
                release,
            } => self.on_responder_frame(conn, of_node, of, n, frame, release),
            ShardMsg::RequestFailed { n, code } => self.on_request_failed(n, code),
            ShardMsg::ResponderGone { n, conn } => self.on_responder_gone(n, conn),
        }
    }
}
