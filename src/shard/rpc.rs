//! [ext] Requests and replies (protocol §8.4): the shard's half. The requester's shard
//! owns each request (`crate::rpc::Requests`): it delivers the request to every connection
//! of the target peer, accepts the first responder, numbers the replies, and ends the
//! request exactly once (final reply, deadline, cancel, requester gone, responder gone).
//!
//! Deadlines: one timer task per shard ([`deadlines`]) sleeping until the earliest one, as
//! token expiry does; an idle connection costs nothing.

use std::{
    future::{poll_fn, Future},
    rc::Rc,
    sync::{atomic::Ordering, Arc},
    task::Poll,
    time::Instant,
};

use super::{Shard, State};
use crate::{
    auth::AppId,
    metrics::ShardCounters,
    protocol::{
        encode::{
            self,
            rpc::{self as enc, CancelReason},
        },
        ErrorCode,
    },
    router::{ConnId, Direct, NodeConn, ReplyMsg, ShardId, ShardMsg},
    rpc::{reply_to, InFlight},
};

impl Shard {
    /// Sends `frame` to every connection of `peer` on every shard but `except` and the
    /// local connection `requester` (cancels to the responders that did not take a request;
    /// the requester, which may be a connection of the same peer, never held it); with
    /// `remote`, on the other nodes too (protocol §9).
    #[allow(clippy::too_many_arguments)] // the request's parts, named at each call site
    pub(crate) fn to_peer(
        &self,
        st: &State,
        app: AppId,
        peer: &Arc<str>,
        except: Option<NodeConn>,
        requester: ConnId,
        frame: bytes::Bytes,
        remote: bool,
    ) {
        let except_here = except.filter(|e| e.node == 0).map(|e| e.conn);
        let d = Arc::new(Direct {
            app,
            to: peer.clone(),
            origin: except_here,
            frame,
        });
        if remote {
            if let Some(link) = &self.broker.cluster {
                link.send_direct_except(&d, except.filter(|e| e.node != 0));
            }
        }
        let others =
            st.directory[app.0 as usize].get(peer).copied().unwrap_or(0) & !(1u128 << self.id.0);
        for s in (0..self.shards() as u16).filter(|s| others & (1u128 << s) != 0) {
            self.broker.mesh.push(
                super::Source::Shard(self.id),
                ShardId(s),
                ShardMsg::Direct(d.clone()),
            );
        }
        if let Some(conns) = st.local_peers[app.0 as usize].get(peer) {
            let skip = except_here.filter(|o| o.shard == self.id).map(|o| o.conn);
            for c in conns {
                if Some(*c) != skip && *c != requester {
                    if let Some(e) = st.conns.get(c) {
                        e.handle.send(&d.frame);
                    }
                }
            }
        }
    }

    /// Sends a frame about request `n` of this shard to the responder connection `to`, on
    /// whichever node it is; with `release`, it no longer holds the request.
    fn to_responder(&self, to: NodeConn, n: u64, frame: Option<bytes::Bytes>, release: bool) {
        if to.node == 0 {
            return self.route(
                to.conn.shard,
                ShardMsg::ResponderFrame {
                    conn: to.conn.conn,
                    of_node: 0,
                    of: self.id,
                    n,
                    frame,
                    release,
                },
            );
        }
        if let Some(link) = &self.broker.cluster {
            // Dropped (and counted) when NATS is down: the responder's own request
            // bookkeeping ends with its connection.
            link.to_responder(to, self.id, n, frame, release);
        }
    }

    /// Tells whoever still holds request `n` (its taker, or every connection of the peer
    /// when nobody took it) to stop.
    fn cancel_holders(&self, st: &State, n: u64, r: &InFlight, reason: CancelReason) {
        let frame = enc::cancel(&reply_to(self.id, n, self.node()), reason);
        match r.taken() {
            Some(taker) => self.to_responder(taker, n, Some(frame), true),
            None => self.to_peer(st, r.app, &r.peer, None, r.conn, frame, r.remote),
        }
    }

    /// Ends request `n` with the error `code` (saying `why`) to its requester; the request,
    /// when it was still in flight.
    fn end_request(st: &mut State, n: u64, code: ErrorCode, why: &str) -> Option<InFlight> {
        let r = st.requests.remove(n)?;
        Self::to_requester(st, &r, &encode::error(code, Some(&r.request_id), Some(why)));
        Some(r)
    }

    /// Sends `frame` to the requesting connection of `r`, if it is still there.
    fn to_requester(st: &State, r: &InFlight, frame: &bytes::Bytes) {
        if let Some(e) = st.conns.get(&r.conn) {
            e.handle.send(frame);
        }
    }

    /// Publishes the in-flight gauge.
    pub(crate) fn request_gauge(&self, st: &State) {
        self.counters()
            .requests_in_flight
            .store(st.requests.len() as u64, Ordering::Relaxed);
    }

    /// Wakes the deadline task when `at` is now the earliest deadline.
    pub(crate) fn deadline_added(&self, st: &State, at: Instant) {
        if st.requests.next_deadline().is_some_and(|t| t >= at) {
            if let Some(w) = self.request_waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// A reply for request `n` of this shard arrived.
    pub(crate) fn on_reply(&self, m: ReplyMsg) {
        let mut st = self.state.borrow_mut();
        let ok = st.requests.get_mut(m.n).is_some_and(|r| {
            r.app == m.app
                && r.peer == m.peer
                && m.from != NodeConn::here(self.conn_ref(r.conn))
                && r.taken().is_none_or(|t| t == m.from)
        });
        if !ok {
            drop(st);
            let refused = encode::error(
                ErrorCode::RequestNotFound,
                m.request_id.as_deref(),
                Some("no such request in flight (finished, timed out, cancelled, or taken by another connection)"),
            );
            return self.to_responder(m.from, m.n, Some(refused), true);
        }
        let r = st.requests.get_mut(m.n).expect("checked above");
        let first = r.taken().is_none();
        r.seq += 1;
        let frame = enc::reply(&r.request_id, &m.peer, &m.data, m.last, r.seq);
        let (requester, remote) = (r.conn, r.remote);
        if first {
            st.requests.take(m.n, m.from);
        }
        let st = &mut *st;
        let (app, peer) = (m.app, m.peer.clone());
        if let Some(e) = st.conns.get(&requester) {
            e.handle.send(&frame);
        }
        if first {
            let cancel = enc::cancel(&reply_to(self.id, m.n, self.node()), CancelReason::Taken);
            self.to_peer(st, app, &peer, Some(m.from), requester, cancel, remote);
        }
        if m.last {
            st.requests.remove(m.n);
            self.request_gauge(st);
        }
        if let Some(rid) = m.request_id {
            self.to_responder(m.from, m.n, Some(encode::ack(&rid)), m.last);
        }
    }

    /// The connection that took request `n` went away before its final reply.
    pub(crate) fn on_responder_gone(&self, n: u64, conn: NodeConn) {
        let mut st = self.state.borrow_mut();
        if st
            .requests
            .get_mut(n)
            .is_some_and(|r| r.taken() == Some(conn))
        {
            Self::end_request(
                &mut st,
                n,
                ErrorCode::ResponderGone,
                "the responder went away before its final reply",
            );
            self.request_gauge(&st);
        }
    }

    /// [ext] The cluster link found no node holding the peer of request `n` (sent only to
    /// other nodes), or no node answered: the request ends, unless a reply came meanwhile.
    pub(crate) fn on_request_failed(&self, n: u64, code: ErrorCode) {
        let mut st = self.state.borrow_mut();
        if st.requests.get_mut(n).is_none_or(|r| r.taken().is_some()) {
            return;
        }
        let why = if code == ErrorCode::PeerNotFound {
            "peer not connected to any node"
        } else {
            "no node answered in time"
        };
        Self::end_request(&mut st, n, code, why);
        self.request_gauge(&st);
    }

    /// [ext] Node `node` is gone (protocol §9): the requests its connections took fail
    /// `responder_gone`, and this shard's connections holding requests from it are told
    /// `cancel` `requester_gone`.
    pub(crate) fn requests_of_gone_node(&self, node: u64) {
        let mut st = self.state.borrow_mut();
        for n in st.requests.taken_on(node) {
            Self::end_request(
                &mut st,
                n,
                ErrorCode::ResponderGone,
                "the responder's node went away",
            );
        }
        for (conn, (node, of, n)) in st.requests.held_from(node) {
            if let Some(e) = st.conns.get(&conn) {
                e.handle.send(&enc::cancel(
                    &reply_to(of, n, node),
                    CancelReason::RequesterGone,
                ));
            }
        }
        self.request_gauge(&st);
    }

    /// A frame for a local responder connection about request `n` of shard `of` of node
    /// `of_node` (0: this one).
    pub(crate) fn on_responder_frame(
        &self,
        conn: ConnId,
        of_node: u64,
        of: ShardId,
        n: u64,
        frame: Option<bytes::Bytes>,
        release: bool,
    ) {
        let mut st = self.state.borrow_mut();
        if release {
            st.requests.released(conn, (of_node, of, n));
        }
        if let (Some(f), Some(e)) = (frame, st.conns.get(&conn)) {
            e.handle.send(&f);
        }
    }

    /// Ends every request of a departing connection (`requester_gone` to their holders) and
    /// fails the requests it took (`responder_gone` to their requesters, on any node).
    pub(crate) fn requests_of_gone_conn(&self, conn: ConnId) {
        let mut st = self.state.borrow_mut();
        for n in st.requests.of_conn(conn) {
            if let Some(r) = st.requests.remove(n) {
                self.cancel_holders(&st, n, &r, CancelReason::RequesterGone);
            }
        }
        let me = self.conn_ref(conn);
        for held in st.requests.took_by(conn) {
            let (node, of, n) = held;
            if node == 0 {
                self.route(
                    of,
                    ShardMsg::ResponderGone {
                        n,
                        conn: NodeConn::here(me),
                    },
                );
            } else if let Some(link) = &self.broker.cluster {
                link.responder_gone(held, me);
            }
        }
        self.request_gauge(&st);
    }

    /// `peer` may have lost its last connection anywhere: the requests of this shard that
    /// wait for it and that nobody took fail with `responder_gone`.
    pub(crate) fn peer_maybe_gone(&self, app: AppId, peer: &Arc<str>) {
        let mut st = self.state.borrow_mut();
        if !st.requests.waits_for(app, peer) {
            return;
        }
        let elsewhere = st.directory[app.0 as usize]
            .get(peer)
            .is_some_and(|b| *b != 0);
        if elsewhere {
            return;
        }
        for n in st.requests.untaken_to(app, peer) {
            // [ext] Also asked on other nodes: it ends with a reply or its deadline.
            if st.requests.get_mut(n).is_some_and(|r| r.remote) {
                continue;
            }
            // Gone for this request when no connection of the peer but its requester (which
            // may be a connection of the same peer) is left.
            let requester = st.requests.get_mut(n).map(|r| r.conn);
            let left = st.local_peers[app.0 as usize]
                .get(peer)
                .is_some_and(|v| v.iter().any(|c| Some(*c) != requester));
            if left {
                continue;
            }
            Self::end_request(
                &mut st,
                n,
                ErrorCode::ResponderGone,
                "no connection of the peer is left to answer",
            );
        }
        self.request_gauge(&st);
    }

    /// Times out the requests whose deadline passed.
    fn expire_requests(&self, now: Instant) {
        let mut st = self.state.borrow_mut();
        let due = st.requests.due(now);
        if due.is_empty() {
            return;
        }
        for n in due {
            let why = "no final reply before the deadline";
            if let Some(r) = Self::end_request(&mut st, n, ErrorCode::RequestTimeout, why) {
                ShardCounters::add(&self.counters().request_timeouts, 1);
                self.cancel_holders(&st, n, &r, CancelReason::Timeout);
            }
        }
        self.request_gauge(&st);
        drop(st);
        self.pump_local();
    }

    /// Cancels request `n` on its requester's behalf (`cancel` command).
    pub(crate) fn cancel_request(&self, n: u64) {
        let mut st = self.state.borrow_mut();
        if let Some(r) = st.requests.remove(n) {
            self.cancel_holders(&st, n, &r, CancelReason::Cancelled);
        }
        self.request_gauge(&st);
    }
}

/// Fires request deadlines: one timer per shard, sleeping until the earliest deadline.
/// Runs until the process exits.
pub(crate) async fn deadlines(shard: Rc<Shard>) {
    loop {
        let next = shard.state.borrow().requests.next_deadline();
        match next {
            None => {
                poll_fn(|cx| {
                    if shard.state.borrow().requests.next_deadline().is_none() {
                        *shard.request_waker.borrow_mut() = Some(cx.waker().clone());
                        Poll::Pending
                    } else {
                        Poll::Ready(())
                    }
                })
                .await
            }
            Some(at) => {
                let sleep = tokio::time::sleep_until(at.into());
                tokio::pin!(sleep);
                poll_fn(|cx| {
                    if shard
                        .state
                        .borrow()
                        .requests
                        .next_deadline()
                        .is_some_and(|t| t < at)
                    {
                        return Poll::Ready(()); // an earlier deadline arrived: sleep on that
                    }
                    *shard.request_waker.borrow_mut() = Some(cx.waker().clone());
                    sleep.as_mut().poll(cx)
                })
                .await;
                shard.expire_requests(Instant::now());
            }
        }
    }
}
