//! `ping`: answered `pong` (carrying the ping's `requestId`, if any: it is the ping's one
//! answer). Not charged to the token bucket but to the ping budget, shared with WebSocket
//! pings ([`take_ping`]): over `max_pings_per_sec` the connection is closed 4011.

use std::time::Instant;

use super::Flow;
use crate::{
    protocol::{close, encode},
    shard::{conn::Conn, Shard},
};

pub(super) fn apply(shard: &Shard, conn: &mut Conn, request_id: Option<&str>) -> Flow {
    if !take_ping(shard, conn, Instant::now()) {
        return Flow::Stop;
    }
    conn.handle.send(&encode::pong_with(request_id));
    Flow::Continue
}

/// Counts one client ping (a `ping` message or a WebSocket ping); over `max_pings_per_sec`
/// the connection is closed 4011 (whatever `rate_limit_action` says: a ping has nothing to
/// answer an error to) and false returned.
pub(crate) fn take_ping(shard: &Shard, conn: &mut Conn, now: Instant) -> bool {
    let limit = shard.broker.limits.max_pings_per_sec;
    if conn.pings.try_take(shard.second(now), limit) {
        return true;
    }
    conn.handle
        .close(close::RATE_LIMITED, "ping rate exceeded", false);
    false
}
