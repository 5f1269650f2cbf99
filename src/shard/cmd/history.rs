//! [ext] `history` (protocol §8.1): lists a history channel's retained messages. Needs
//! the `subscribe` action and the channel in scope; the query goes to the channel's owner
//! shard, which answers the `ack` (with `epoch`, `offset` and `messages`) straight to this
//! connection. The parser already refused a missing requestId and a bad `limit` or
//! `sinceOffset` (`invalid_request`).

use std::sync::Arc;

use super::{authorize, reply_error};
use crate::{
    auth::Actions,
    protocol::ErrorCode,
    router::{owner_of, HistoryQuery, QueryAnswer, ShardMsg},
    shard::{conn::Conn, Shard},
};

pub(super) fn apply(
    shard: &Shard,
    conn: &mut Conn,
    channel: &str,
    request_id: &str,
    since_offset: Option<u64>,
    limit: u16,
) {
    if let Err((code, why)) = authorize(conn, channel, Actions::SUBSCRIBE) {
        return reply_error(conn, code, Some(request_id), why);
    }
    let app = conn.identity.app;
    let Some(rule) = shard.broker.auth.history_rule(app, channel) else {
        return reply_error(
            conn,
            ErrorCode::HistoryNotEnabled,
            Some(request_id),
            "this channel has no history",
        );
    };
    let owner = owner_of(app, channel, shard.shards());
    shard.route(
        owner,
        ShardMsg::HistoryQuery(Box::new(HistoryQuery {
            app,
            channel: Arc::from(channel),
            rule,
            since_offset,
            limit,
            answer: QueryAnswer::Conn {
                conn: shard.conn_ref(conn.id),
                request_id: request_id.into(),
            },
        })),
    );
}
