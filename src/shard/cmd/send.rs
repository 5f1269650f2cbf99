//! `send`: a direct message to every connection of a peer (but the sender's), wherever
//! they are ([`Shard::send_direct`]). Encoded once; `peer_not_found` when the peer has no
//! other connection, `rate_limited` when a shard holding it is over its queue bound.

use std::sync::Arc;

use super::{ack, count_message, refuse_overloaded, reply_error};
use crate::{
    auth::Actions,
    cluster::Answer,
    protocol::{encode, parse::validate_peer_id, ErrorCode},
    router::Direct,
    shard::{conn::Conn, deliver::DirectSent, Shard},
};

pub(super) fn apply(
    shard: &Shard,
    conn: &mut Conn,
    to: &str,
    data: &[u8],
    request_id: Option<&str>,
) {
    let id = &conn.identity;
    if validate_peer_id(to).is_err() {
        reply_error(
            conn,
            ErrorCode::InvalidPeerId,
            request_id,
            "invalid peer id",
        );
        return;
    }
    if !id.actions.contains(Actions::SEND) {
        reply_error(
            conn,
            ErrorCode::ActionNotPermitted,
            request_id,
            "send is not permitted",
        );
        return;
    }
    // One frame, one `Arc<str>` and one `Arc<Direct>` per send (shared by the target's
    // connections on every shard); nothing per recipient.
    let frame = encode::direct(&id.peer_id, data, id.peer_metadata_json.as_deref());
    let d = Arc::new(Direct {
        app: id.app,
        to: Arc::from(to),
        origin: Some(shard.conn_ref(conn.id)),
        frame,
    });
    let sent = shard.send_direct(d.clone());
    let link = shard.broker.cluster.as_ref();
    match (sent, link) {
        (DirectSent::Sent, _) => {
            // [ext] protocol §9: the target's connections on other nodes get it too.
            if let Some(link) = link {
                link.send_direct(&d, None);
            }
            count_message(shard, id.app, |c| &c.directs);
            ack(conn, request_id);
        }
        (DirectSent::NotFound, Some(link)) => {
            // [ext] None here: the link asks the other nodes, and the ack or
            // `peer_not_found` comes from it (through this shard's queue).
            let answer = Answer {
                conn: shard.conn_ref(conn.id),
                request_id: request_id.map(Into::into),
                request: None,
            };
            if link.send_direct(&d, Some(answer)) {
                count_message(shard, id.app, |c| &c.directs);
            } else {
                reply_error(
                    conn,
                    ErrorCode::PeerNotFound,
                    request_id,
                    "peer not connected to this node, and the cluster link is down",
                );
            }
        }
        (DirectSent::NotFound, None) => reply_error(
            conn,
            ErrorCode::PeerNotFound,
            request_id,
            "peer not connected",
        ),
        (DirectSent::Busy, _) => refuse_overloaded(shard, conn, request_id),
    }
}
