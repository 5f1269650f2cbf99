//! [ext] `request` (protocol §8.4): asks every connection of a peer (but the sender's), on
//! any shard, with a broker-side deadline. Checks, in order: the peer id
//! (`invalid_peer_id`), the `send` action, `timeoutMs` (1..=`request_max_timeout_ms`,
//! default 30000, else `invalid_request`), the per-connection bound
//! (`max_requests_in_flight`: `too_many_requests`), a requestId already in flight on this
//! connection (`invalid_request`), then delivery (`peer_not_found` at once when no other
//! connection of the peer exists, `rate_limited` when a shard's queue is full). Success has
//! no ack: the answer is the reply, or an error carrying the requestId.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::reply_error;
use crate::{
    auth::Actions,
    cluster::Answer,
    metrics::ShardCounters,
    protocol::{encode::rpc, parse::validate_peer_id, ErrorCode},
    router::Direct,
    rpc::reply_to,
    shard::{conn::Conn, deliver::DirectSent, Shard},
};

/// `timeoutMs` of a request without one.
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 30_000;

pub(super) fn apply(
    shard: &Shard,
    conn: &mut Conn,
    to: &str,
    request_id: &str,
    data: &[u8],
    timeout_ms: Option<u64>,
) {
    let rid = Some(request_id);
    let id = &conn.identity;
    if validate_peer_id(to).is_err() {
        return reply_error(conn, ErrorCode::InvalidPeerId, rid, "invalid peer id");
    }
    if !id.actions.contains(Actions::SEND) {
        return reply_error(
            conn,
            ErrorCode::ActionNotPermitted,
            rid,
            "send is not permitted",
        );
    }
    let limits = &shard.broker.limits;
    let max_ms = u64::try_from(limits.request_max_timeout.as_millis()).unwrap_or(u64::MAX);
    // Without `timeoutMs`: 30 s, or the configured maximum when that is lower.
    let t = timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS.min(max_ms));
    if t == 0 || t > max_ms {
        return reply_error(
            conn,
            ErrorCode::InvalidRequest,
            rid,
            "timeoutMs must be from 1 to request_max_timeout_ms",
        );
    }
    let deadline = Instant::now() + Duration::from_millis(t);
    let n = {
        let mut st = shard.state.borrow_mut();
        if st.requests.count(conn.id) >= limits.max_requests_in_flight {
            drop(st);
            return reply_error(
                conn,
                ErrorCode::TooManyRequests,
                rid,
                "too many requests in flight on this connection",
            );
        }
        if st.requests.find(conn.id, request_id).is_some() {
            drop(st);
            return reply_error(
                conn,
                ErrorCode::InvalidRequest,
                rid,
                "a request with this requestId is already in flight",
            );
        }
        st.requests
            .insert(conn.id, request_id, id.app, Arc::from(to), deadline)
    };
    // One frame for every connection of the peer, on every shard (and node).
    let frame = rpc::request(
        &id.peer_id,
        &reply_to(shard.id, n, shard.node()),
        data,
        t,
        id.peer_metadata_json.as_deref(),
    );
    let d = Arc::new(Direct {
        app: id.app,
        to: Arc::from(to),
        origin: Some(shard.conn_ref(conn.id)),
        frame,
    });
    let sent = shard.send_direct(d.clone());
    let link = shard.broker.cluster.as_ref();
    // [ext] protocol §9: the peer's connections on other nodes are asked too. When this
    // node has none, the link learns whether any node has: if none, the request ends
    // `peer_not_found` (`ShardMsg::RequestFailed`).
    let remote = match (sent, link) {
        (DirectSent::Sent, Some(link)) => link.send_direct(&d, None),
        (DirectSent::NotFound, Some(link)) => link.send_direct(
            &d,
            Some(Answer {
                conn: shard.conn_ref(conn.id),
                request_id: None,
                request: Some(n),
            }),
        ),
        _ => false,
    };
    let mut st = shard.state.borrow_mut();
    if sent == DirectSent::Sent || (sent == DirectSent::NotFound && remote) {
        if let Some(r) = st.requests.get_mut(n) {
            r.remote = remote;
        }
        ShardCounters::add(&shard.counters().requests, 1);
        shard.deadline_added(&st, deadline);
        shard.request_gauge(&st);
        return;
    }
    st.requests.remove(n);
    drop(st);
    if sent == DirectSent::NotFound {
        reply_error(conn, ErrorCode::PeerNotFound, rid, "peer not connected");
    } else {
        super::refuse_overloaded(shard, conn, rid);
    }
}
