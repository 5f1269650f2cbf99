//! [ext] `cancel` (protocol §8.4): the requester gives up one of its requests in flight.
//! Whoever holds it (its taker, or every connection of the peer when nobody took it yet)
//! receives `cancel` with reason `cancelled`; the requester gets `ack`, or
//! `request_not_found` when no request of this connection has that requestId.

use super::{ack, reply_error};
use crate::{
    protocol::ErrorCode,
    shard::{conn::Conn, Shard},
};

pub(super) fn apply(shard: &Shard, conn: &mut Conn, request_id: &str) {
    let found = shard.state.borrow().requests.find(conn.id, request_id);
    match found {
        Some(n) => {
            shard.cancel_request(n);
            ack(conn, Some(request_id));
        }
        None => reply_error(
            conn,
            ErrorCode::RequestNotFound,
            Some(request_id),
            "no such request in flight",
        ),
    }
}
