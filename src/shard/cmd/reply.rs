//! [ext] `reply` (protocol §8.4): a responder answers a request. The reply travels to the
//! requester's shard (named by `replyTo`), which accepts it only from the connection that
//! took the request (the first of the target peer's connections to reply) and answers the
//! reply's own requestId with `ack`, or `request_not_found` when the request is over or
//! taken by another connection. A `replyTo` this broker did not make is `request_not_found`
//! at once. No action is needed: answering what one was asked is not a new message.
//! [ext] In a cluster the `replyTo` names the requester's node; a reply for another node
//! goes there through the cluster link (protocol §9).

use bytes::Bytes;

use super::reply_error;
use crate::{
    cluster::rpc::RemoteReply,
    protocol::ErrorCode,
    router::{NodeConn, ReplyMsg, ShardMsg},
    rpc::parse_reply_to,
    shard::{conn::Conn, Shard},
};

pub(super) fn apply(
    shard: &Shard,
    conn: &mut Conn,
    reply_to: &str,
    data: &[u8],
    last: bool,
    request_id: Option<&str>,
) {
    // A `replyTo` naming this node is a local one.
    let me = shard.node();
    let parsed = parse_reply_to(reply_to).map(|(node, of, n)| {
        let node = if node == me { 0 } else { node };
        (node, of, n)
    });
    let Some((node, of, n)) =
        parsed.filter(|(node, s, _)| *node != 0 || usize::from(s.0) < shard.shards())
    else {
        return reply_error(
            conn,
            ErrorCode::RequestNotFound,
            request_id,
            "no such request in flight",
        );
    };
    if node == 0 && of != shard.id && !shard.broker.mesh.has_room(of) {
        return super::refuse_overloaded(shard, conn, request_id);
    }
    {
        // Remember what this connection holds, so that its disconnect fails the request
        // with `responder_gone`; a final reply releases it.
        let mut st = shard.state.borrow_mut();
        if last {
            st.requests.released(conn.id, (node, of, n));
        } else {
            st.requests.took(conn.id, (node, of, n));
        }
    }
    let id = &conn.identity;
    // One copy of `data` per reply: the requester's shard encodes the frame.
    let data = Bytes::copy_from_slice(data);
    if node != 0 {
        // [ext] protocol §9: the requester is on another node.
        let sent = shard.broker.cluster.as_ref().is_some_and(|link| {
            link.reply(RemoteReply {
                node,
                of,
                n,
                app: id.app,
                peer: id.peer_id.clone(),
                from: shard.conn_ref(conn.id),
                data,
                last,
                request_id: request_id.map(Into::into),
            })
        });
        if !sent {
            shard
                .state
                .borrow_mut()
                .requests
                .released(conn.id, (node, of, n));
            reply_error(
                conn,
                ErrorCode::RequestNotFound,
                request_id,
                "the requester's node cannot be reached",
            );
        }
        return;
    }
    shard.route(
        of,
        ShardMsg::Reply(Box::new(ReplyMsg {
            n,
            app: id.app,
            peer: id.peer_id.clone(),
            from: NodeConn::here(shard.conn_ref(conn.id)),
            data,
            last,
            request_id: request_id.map(Into::into),
        })),
    );
}
