//! [ext] `subscribe` with `"group"` (protocol.md §8.2): joins a queue group of a channel.
//! The subscription goes into the index like a plain one (presence: snapshot, joined/left)
//! but flagged `grouped`, and the membership is recorded and sent to the channel's owner
//! ([`Shard::join_group`]), which picks one member per group for each publication.
//!
//! A connection holds at most one subscription per channel: a group subscribe to a channel
//! it already has plainly, or in another group, answers `subscription_conflict` and
//! changes nothing. The same group again is an idempotent re-subscribe (new
//! `includeSenderMetadata`, fresh presence snapshot), like a plain one. `unsubscribe`
//! leaves the group ([`Shard::unsubscribe`]), and so does a disconnect.

use std::sync::Arc;

use super::{
    ack, authorize, reply_error,
    subscribe::{history_join, new_sub},
};
use crate::{
    auth::Actions,
    protocol::ErrorCode,
    shard::{conn::Conn, Shard},
};

pub(super) fn subscribe(
    shard: &Shard,
    conn: &mut Conn,
    channel: &str,
    include_sender_metadata: bool,
    group: &str,
    request_id: Option<&str>,
) {
    if let Err((code, why)) = authorize(conn, channel, Actions::SUBSCRIBE) {
        return reply_error(conn, code, request_id, why);
    }
    let id = &conn.identity;
    // [ext] On a history channel (§8.1) the owner answers the ack (epoch and offset);
    // `since` with `group` was refused by the parser.
    let history = shard
        .broker
        .auth
        .history_rule(id.app, channel)
        .map(|rule| history_join(rule, None, request_id, include_sender_metadata));
    let answered_by_owner = history.is_some();
    let existing = conn.channels.iter().find(|c| &***c == channel).cloned();
    if let Some(ch) = existing {
        if shard.group_of(conn.id, channel).as_deref() != Some(group) {
            return reply_error(
                conn,
                ErrorCode::SubscriptionConflict,
                request_id,
                "the connection already has a different subscription to this channel",
            );
        }
        shard.resubscribe(
            id.app,
            ch,
            conn.id,
            &id.peer_id,
            include_sender_metadata,
            history,
        );
        if !answered_by_owner {
            ack(conn, request_id);
        }
        return;
    }
    if conn.channels.len() + conn.patterns().len() >= shard.broker.limits.max_channels_per_conn {
        return reply_error(
            conn,
            ErrorCode::ChannelLimitExceeded,
            request_id,
            "too many channels on this connection",
        );
    }
    let ch: Arc<str> = Arc::from(channel);
    let sub = new_sub(conn, include_sender_metadata, answered_by_owner, true);
    // The presence notice (with the history answer) goes to the owner before the group
    // join: on a history channel the member's ack comes before any publication it is
    // picked for.
    shard.subscribe(
        id.app,
        ch.clone(),
        sub,
        id.peer_metadata_json.clone(),
        history,
    );
    shard.join_group(id.app, ch.clone(), Arc::from(group), conn.id);
    conn.channels.push(ch);
    if !answered_by_owner {
        ack(conn, request_id);
    }
}
